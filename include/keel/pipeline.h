/* SPDX-License-Identifier: MIT */
/*
 * keel/pipeline.h: stream pipelines, source -> stage... -> sink, on one
 * loop: each stage is `concurrency` tasks running a user routine, fed by
 * a bounded input queue with a backpressure strategy; an error strategy
 * per stage; ordered or unordered output; counters per stage (also as
 * Prometheus text and in the trace).
 *
 * Items are `void *` (what they point to is the holder's). The source is
 * a routine that produces one item per call; each stage's routine turns
 * its input item (ctx->in) into an output item (ctx->out, which may be
 * the same pointer); the last stage is the sink: what it returns is not
 * passed on, and an item it processed is "delivered". No item is lost
 * silently: each one the source produced is delivered or counted in one
 * of a stage's dropped, timed_out, failed or abandoned counters, and
 * handed to the pipeline's on_drop (which may free it):
 *
 *	produced = delivered + sum over stages (dropped + timed_out +
 *	           failed + abandoned) + the source's abandoned
 *
 * Routines: a source or stage function is a nested routine
 * (KEEL_AWAIT_CALL) whose resume state is ctx->r: it starts with
 * KEEL_BEGIN(&ctx->r), may await anything (an op, a sleep, a mailbox) and
 * ends with KEEL_ROUTINE_RETURN(&ctx->r, t, result). What must survive
 * its awaits lives in ctx->state (stage_opts.state_size bytes per worker,
 * zeroed, the pipeline's) or in the item. Result: a stage returns >= 0
 * with ctx->out set (the input is then the function's: free it or pass it
 * on), or a negative errno, the input still the pipeline's (it may be
 * tried again); a source returns 0 with ctx->out set, KEEL_PIPE_END when
 * it has no more, or a negative errno, which stops the pipeline.
 *
 * Backpressure, what a stage's input does when full (`queue` items):
 *   KEEL_PIPE_BLOCK        the producer waits for room (FIFO);
 *   KEEL_PIPE_WAIT         it waits at most wait_ns, then the item is
 *                          dropped and counted in timed_out;
 *   KEEL_PIPE_DROP_NEWEST  the item sent is dropped (dropped);
 *   KEEL_PIPE_DROP_OLDEST  the oldest waiting item is dropped (dropped);
 *   KEEL_PIPE_BUFFER       up to `buffer` items more are held (each such
 *                          send counts as backpressure); beyond that, the
 *                          `overflow` strategy (one of the above) applies.
 * Every send that finds the input full counts one backpressure event.
 *
 * Errors, what a stage does when its function fails for an item:
 *   KEEL_PIPE_STOP     the item is failed and the pipeline ends with that
 *                      error (every stage is cancelled);
 *   KEEL_PIPE_SKIP     the item is failed and counted; go on;
 *   KEEL_PIPE_RETRY    try again with `retry`'s backoff (keel_retry); when
 *                      the retry gives up, the item is failed, go on;
 *   KEEL_PIPE_BREAKER  each call goes through `breaker`
 *                      (keel_breaker_acquire/record); while it is open,
 *                      items fail fast (counted in rejected and failed);
 *                      a failed call fails its item; go on.
 *
 * Order: KEEL_PIPE_ORDERED (the default) passes a concurrent stage's items
 * on in their input order (a reorder window of 2 * concurrency items: a
 * worker does not start an item further ahead of the oldest one not yet
 * passed on); KEEL_PIPE_UNORDERED passes each on when done.
 *
 * Completion: the source's end closes the first stage's input; each stage
 * closes the next one's when its input is drained and its workers are
 * done. keel_pipeline_run() awaits all of that and returns 0, the first
 * error (a STOP, a failing source, -ENOMEM) or the cancellation cause
 * (keel_pipeline_cancel(), or the running task's token): cancellation
 * stops every stage at its next await; items still held are abandoned.
 *
 * Trace: each stage input is traced as a mailbox (KEEL_EV_MB_RECV per
 * item taken, with its depth; KEEL_EV_MB_FULL and KEEL_EV_MB_DROP), with
 * an id from 2^32 up; the workers are tasks named "pipe_worker".
 *
 * One loop: a pipeline and its tasks live on the loop it was made for;
 * everything here is called from that loop's thread.
 */
#ifndef KEEL_PIPELINE_H
#define KEEL_PIPELINE_H

#include <keel/resilience.h>
#include <keel/task.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct keel_loop;
struct keel_pipeline;

/* A source's result when it has nothing more. */
#define KEEL_PIPE_END 1

/* Latency histogram buckets: <= 1 us, 10 us, ... 1 s, and above. */
#define KEEL_PIPE_LATENCY_BUCKETS 8

enum keel_pipe_backpressure {
	KEEL_PIPE_BLOCK = 0,
	KEEL_PIPE_WAIT = 1,
	KEEL_PIPE_DROP_NEWEST = 2,
	KEEL_PIPE_DROP_OLDEST = 3,
	KEEL_PIPE_BUFFER = 4,
};

enum keel_pipe_on_error {
	KEEL_PIPE_STOP = 0,
	KEEL_PIPE_SKIP = 1,
	KEEL_PIPE_RETRY = 2,
	KEEL_PIPE_BREAKER = 3,
};

enum keel_pipe_order {
	KEEL_PIPE_ORDERED = 0,
	KEEL_PIPE_UNORDERED = 1,
};

/* What a source or stage routine gets; one per worker, in its frame. */
struct keel_pipe_ctx {
	struct keel_routine r; /* the routine's resume state */
	void *in;	       /* a stage's input item (NULL for the source) */
	void *out;	       /* the item produced */
	void *arg;	       /* the stage's (or source's) arg */
	void *state;	       /* state_size zeroed bytes, or NULL */
	uint32_t worker;       /* 0 .. concurrency - 1 */
	uint32_t attempt;      /* 1, 2, ...: calls for this item */
};

typedef int (*keel_pipe_fn)(struct keel_task *t, struct keel_pipe_ctx *ctx);

struct keel_pipeline_opts {
	const char *name; /* the "pipeline" label; default "pipeline" */
	keel_pipe_fn source;
	void *source_arg;
	size_t source_state; /* bytes of ctx->state for the source */
	/* Items dropped, failed or abandoned (may be NULL). */
	void (*on_drop)(void *item, void *arg);
	void *drop_arg;
};

struct keel_pipe_stage_opts {
	const char *name; /* the "stage" label; default "stage<N>" */
	keel_pipe_fn fn;
	void *arg;
	size_t state_size;    /* bytes of ctx->state per worker */
	uint32_t concurrency; /* workers; 0: 1 */
	uint32_t queue;	      /* the input's bound; 0: 64 */
	enum keel_pipe_backpressure backpressure;
	uint64_t wait_ns;		      /* WAIT (and a WAIT overflow) */
	uint32_t buffer;		      /* BUFFER: items beyond queue */
	enum keel_pipe_backpressure overflow; /* BUFFER: then this */
	enum keel_pipe_on_error on_error;
	struct keel_retry_policy retry; /* RETRY */
	struct keel_breaker *breaker;	/* BREAKER: the caller's */
	enum keel_pipe_order order;
};

struct keel_pipe_stage_stats {
	uint64_t received;     /* items taken from the input */
	uint64_t processed;    /* the function succeeded (sink: delivered) */
	uint64_t emitted;      /* queued at the next stage's input */
	uint64_t dropped;      /* dropped at the input (DROP_*) */
	uint64_t timed_out;    /* dropped at the input after wait_ns */
	uint64_t backpressure; /* sends that found the input full */
	uint64_t errors;       /* failed calls of the function */
	uint64_t retries;      /* calls made again (RETRY) */
	uint64_t failed;       /* items given up after an error */
	uint64_t rejected;     /* of those, refused by the open breaker */
	uint64_t abandoned;    /* held when the pipeline stopped */
	uint32_t depth;	       /* items in the input now */
	uint32_t depth_max;
	/* The function's time per item (successes and failures). */
	uint64_t latency_count;
	uint64_t latency_sum_ns;
	uint64_t latency_max_ns;
	/* Per bucket, not cumulative. */
	uint64_t latency_buckets[KEEL_PIPE_LATENCY_BUCKETS];
};

/*
 * A pipeline on `loop` with its source; add stages, then run it.
 * Returns 0, -EINVAL (no source) or -ENOMEM.
 * Ownership: the caller owns it: keel_pipeline_free(); `name` is copied.
 */
int keel_pipeline_new(struct keel_loop *loop,
		      const struct keel_pipeline_opts *opts,
		      struct keel_pipeline **out);

/*
 * Append a stage (the last one added is the sink). Returns its index
 * (0, 1, ...), -EINVAL (no fn, a bad strategy, BREAKER without a
 * breaker, a bad retry policy), -EBUSY (running or ran) or -ENOMEM.
 * Ownership: opts are copied (the name too); a breaker stays the
 * caller's and must outlive the pipeline.
 */
int keel_pipeline_add_stage(struct keel_pipeline *p,
			    const struct keel_pipe_stage_opts *opts);

/*
 * A nested routine (KEEL_AWAIT_CALL) in task `t` of the pipeline's loop:
 * run the pipeline to its end. keel_res: 0 (the source ended and every
 * item was delivered or counted), the first error, the cancellation cause,
 * -EINVAL (no stage), -EBUSY (already run), -EXDEV, -ENOMEM. A pipeline
 * runs once.
 * Ownership: the workers are children of a scope owned by `t`; the run's
 * resume state is in `p`, which must outlive the await.
 */
int keel_pipeline_run(struct keel_task *t, struct keel_pipeline *p);

/*
 * Cancel the pipeline (every stage; a run not yet started returns
 * -ECANCELED at once). From the loop's thread.
 * Ownership: nothing changes hands.
 */
void keel_pipeline_cancel(struct keel_pipeline *p);

/*
 * Free it, after its run has returned (or if it never ran); items still
 * held go to on_drop.
 * Ownership: `p` is freed.
 */
void keel_pipeline_free(struct keel_pipeline *p);

/* Stages added. Ownership: reads `p`. */
unsigned keel_pipeline_stages(const struct keel_pipeline *p);

/*
 * A stage's counters (stage: an index; KEEL_PIPE_SOURCE: the source's,
 * whose `processed` is the items it produced). 0 or -EINVAL.
 * Ownership: a copy into the caller's `out`.
 */
#define KEEL_PIPE_SOURCE UINT32_MAX
int keel_pipeline_stage_stats(const struct keel_pipeline *p, uint32_t stage,
			      struct keel_pipe_stage_stats *out);

/*
 * Render the counters of `n` pipelines in Prometheus text format 0.0.4
 * (labels: pipeline and stage names; latency as a histogram in seconds).
 * Returns the length the full text needs (as snprintf).
 * Ownership: writes into the caller's `buf`; `ps` is only read.
 */
size_t keel_pipeline_metrics_render(struct keel_pipeline *const *ps, unsigned n,
				    char *buf, size_t len);

#ifdef __cplusplus
}
#endif
#endif
