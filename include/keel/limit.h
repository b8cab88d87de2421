/* SPDX-License-Identifier: MIT */
/*
 * keel/limit.h: admission limits for the work a loop takes on: a rate
 * limiter (GCRA: a rate and a burst), a concurrency limiter (a bulkhead:
 * at most N in flight, a bounded queue with a queue timeout) and a load
 * shedder (CoDel-style: reject new work while the queueing delay stays
 * above a target).
 *
 * Beside keel/resilience.h rather than in it: the breaker and the retry
 * are caller-owned structs that never wait on a loop, whereas the rate
 * limiter and the bulkhead queue tasks (they are loop objects, made with
 * _new and freed, like keel/sync.h's primitives). The shedder is a
 * caller-owned struct again: it only decides, and a bulkhead can consult
 * it (keel_bulkhead_opts.shed).
 *
 * Every wait is an await with keel's usual contract (keel/sync.h): FIFO,
 * keel_res() 0 or a negative errno, cancellable by the task's token (a
 * cancelled waiter leaves no trace: what it waited for goes to the next),
 * -EXDEV from another loop than the limiter's. Deadlines are
 * CLOCK_MONOTONIC ns (keel_loop_now()), UINT64_MAX: none.
 *
 * Time: the rate limiter and the shedder read the clock given in their
 * options (keel_clock_fn, as the breaker's; default keel's clock:
 * CLOCK_MONOTONIC, or the virtual clock of a simulated kernel), so tests
 * drive time by hand; a rate limiter's waits sleep the difference on the
 * loop's timers. All are used from one loop, as the breaker: give each
 * loop its own.
 */
#ifndef KEEL_LIMIT_H
#define KEEL_LIMIT_H

#include <keel/resilience.h>
#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct keel_loop;
struct keel_task;

/* ==== load shedding (CoDel-style) =========================================
 *
 * Feed it each job's queueing delay (from enqueue to start) with
 * keel_shed_record(); ask keel_shed_admit() before taking new work. As in
 * CoDel (Nichols & Jacobson, RFC 8289), a delay above `target_ns` alone is
 * no reason to act (a burst queues for a moment); a delay that has stayed
 * above it for a whole `interval_ns` (no sample at or below target in that
 * time) is a standing queue: the shedder then rejects new work (-EBUSY)
 * until a sample at or below target comes, or no sample comes for an
 * interval (the queue has drained: nothing is waiting any more).
 * Defaults: target 5 ms, interval 100 ms (CoDel's).
 *
 * Using it in a server: record the delay when a request starts being
 * served, and answer a rejected one at once with 503 and Retry-After (the
 * HTTP server does: keel_http_opts.shed_target_ns; elsewhere call
 * keel_shed_admit() first thing in the handler, or guard the handler
 * with a bulkhead whose opts.shed is set, which records the delays
 * itself).
 */
struct keel_shed_opts {
	uint64_t target_ns;   /* default 5 ms */
	uint64_t interval_ns; /* default 100 ms */
	keel_clock_fn clock;  /* optional */
	void *clock_arg;
};

struct keel_shed_stats {
	uint64_t samples;  /* delays recorded */
	uint64_t admitted; /* keel_shed_admit() said yes */
	uint64_t shed;	   /* ... said -EBUSY */
	uint64_t episodes; /* times it started shedding */
	uint64_t last_ns;  /* the last delay recorded */
};

/* Caller-owned; its fields are private. */
struct keel_shed {
	struct keel_shed_opts opts;
	struct keel_shed_stats stats;
	uint64_t above_since; /* the first of a run of samples above target */
	uint64_t last_sample; /* when the last sample came */
	bool above;	      /* in such a run */
	bool shedding;
};

/*
 * Initialise (opts NULL or zero fields: the defaults). Returns 0 or
 * -EINVAL (NULL `s`, target >= interval).
 * Ownership: the caller owns `s`; it holds nothing to release.
 */
int keel_shed_init(struct keel_shed *s, const struct keel_shed_opts *opts);

/*
 * Record a job's queueing delay (its start minus its enqueue).
 * Ownership: nothing changes hands.
 */
void keel_shed_record(struct keel_shed *s, uint64_t delay_ns);

/*
 * May new work come in? 0, or -EBUSY while shedding.
 * Ownership: nothing changes hands.
 */
int keel_shed_admit(struct keel_shed *s);

/*
 * Whether it sheds now (moving the state on, as an admit does).
 * Ownership: reads (and may advance) `s`; nothing changes hands.
 */
bool keel_shed_shedding(struct keel_shed *s);

/* Ownership: a copy into the caller's `out`. */
void keel_shed_stats(const struct keel_shed *s, struct keel_shed_stats *out);

/* ==== rate limiter (GCRA) =================================================
 *
 * The generic cell rate algorithm (ATM's, as in redis-cell and Go's
 * x/time/rate): tokens come in at `rate` per second, and up to `burst`
 * may be taken at once; a request for n tokens conforms when the
 * theoretical arrival time (TAT) advanced by n emission intervals is no
 * more than `burst` intervals ahead of now. It keeps one timestamp, not a
 * bucket: a try is a few arithmetic operations, and a wait knows exactly
 * when it will conform. Over any span T from a full burst it admits at
 * most burst + rate * T tokens.
 */
struct keel_ratelimit;

struct keel_ratelimit_opts {
	double rate;	/* tokens per second (> 0; below 1: one per 1/rate s) */
	uint32_t burst; /* the most taken at once (>= 1) */
	keel_clock_fn clock; /* optional */
	void *clock_arg;
};

struct keel_ratelimit_stats {
	uint64_t admitted;  /* requests granted (try or acquire) */
	uint64_t rejected;  /* tries refused (-EAGAIN) */
	uint64_t waited;    /* acquires granted after sleeping */
	uint64_t timed_out; /* acquires that ended -ETIMEDOUT */
	uint32_t waiting;   /* tasks waiting now */
};

/*
 * A limiter on `loop` (whose tasks await it), starting with its full
 * burst. 0, -EINVAL (no opts, rate <= 0 or below one per 2^63 ns, burst
 * 0) or -ENOMEM.
 * Ownership: the caller owns it: keel_ratelimit_free().
 */
int keel_ratelimit_new(struct keel_loop *loop,
		       const struct keel_ratelimit_opts *opts,
		       struct keel_ratelimit **out);

/*
 * Free it; waiting tasks are woken with -EPIPE.
 * Ownership: `rl` is freed.
 */
void keel_ratelimit_free(struct keel_ratelimit *rl);

/*
 * Take `n` tokens now: 0, or -EAGAIN (they do not conform yet, or tasks
 * wait: they go first) with *wait_ns (may be NULL) set to how long until
 * n would conform (not counting the waiting tasks' tokens); -EINVAL when
 * n is 0 or above the burst (it never conforms).
 * Ownership: nothing changes hands.
 */
int keel_ratelimit_try(struct keel_ratelimit *rl, uint32_t n,
		       uint64_t *wait_ns);

/*
 * Await `n` tokens: sleeps exactly until they conform (FIFO behind other
 * waiters). keel_res: 0 (taken), -ETIMEDOUT when `deadline_ns` comes
 * first (at once when it is known that it will: nobody waits ahead and n
 * conforms after the deadline; no token is taken), the cancellation
 * cause, -EINVAL (n 0 or above the burst), -EPIPE (freed while t waited),
 * -ENOMEM, -EXDEV.
 * Ownership: nothing changes hands.
 */
int keel_ratelimit_acquire(struct keel_task *t, struct keel_ratelimit *rl,
			   uint32_t n, uint64_t deadline_ns);

/* Ownership: a copy into the caller's `out`. */
void keel_ratelimit_stats(const struct keel_ratelimit *rl,
			  struct keel_ratelimit_stats *out);

/* ==== concurrency limiter (bulkhead) ======================================
 *
 * At most `max_concurrent` permits out at a time; beyond that, up to
 * `max_queue` tasks wait for one (FIFO) for at most `queue_timeout_ns`
 * each; a task finding the queue full is rejected at once. A release
 * hands the permit to the first waiter directly. With `shed`, an acquire
 * is refused with -EBUSY while the shedder sheds, and every grant records
 * its queueing delay (0 for one granted at once) into it.
 * (resilience4j's Bulkhead, with CoDel shedding in front of its queue.)
 */
struct keel_bulkhead;

struct keel_bulkhead_opts {
	uint32_t max_concurrent;   /* >= 1 */
	uint32_t max_queue;	   /* waiting tasks at most (0: no queue) */
	uint64_t queue_timeout_ns; /* 0: no limit */
	struct keel_shed *shed;	   /* optional, the caller's */
};

struct keel_bulkhead_stats {
	uint32_t in_flight; /* permits out now */
	uint32_t queued;    /* tasks waiting now */
	uint64_t admitted;  /* permits granted */
	uint64_t rejected;  /* refused: queue full (-EAGAIN) */
	uint64_t shed;	    /* refused by the shedder (-EBUSY) */
	uint64_t timed_out; /* waits that reached the queue timeout */
};

/*
 * A bulkhead on `loop`. 0, -EINVAL (no opts, max_concurrent 0) or
 * -ENOMEM.
 * Ownership: the caller owns it: keel_bulkhead_free(); a shedder given
 * stays the caller's and must outlive it.
 */
int keel_bulkhead_new(struct keel_loop *loop,
		      const struct keel_bulkhead_opts *opts,
		      struct keel_bulkhead **out);

/*
 * Free it; waiting tasks are woken with -EPIPE; permits out are forgotten.
 * Ownership: `bh` is freed.
 */
void keel_bulkhead_free(struct keel_bulkhead *bh);

/*
 * Await a permit. keel_res: 0 (t holds one: keel_bulkhead_release() it),
 * -EAGAIN (all out and the queue full), -EBUSY (shedding), -ETIMEDOUT
 * (waited queue_timeout_ns), the cancellation cause, -EPIPE, -ENOMEM,
 * -EXDEV.
 * Ownership: on 0 the task holds the permit until it releases it (an exit
 * does not: keel_defer()).
 */
int keel_bulkhead_acquire(struct keel_task *t, struct keel_bulkhead *bh);

/*
 * A permit now: 0, -EAGAIN (all out, or tasks wait), -EBUSY (shedding).
 * Ownership: as keel_bulkhead_acquire().
 */
int keel_bulkhead_try_acquire(struct keel_bulkhead *bh);

/*
 * Give a permit back (to the first waiter, if any): 0, -EPERM (none is
 * out), -EXDEV.
 * Ownership: the permit goes back to the bulkhead.
 */
int keel_bulkhead_release(struct keel_bulkhead *bh);

/* Ownership: a copy into the caller's `out`. */
void keel_bulkhead_stats(const struct keel_bulkhead *bh,
			 struct keel_bulkhead_stats *out);

#ifdef __cplusplus
}
#endif
#endif
