/* SPDX-License-Identifier: MIT */
/*
 * keel/executor.h: a bounded task executor: jobs (a routine and its
 * argument) submitted with a priority, a deadline and a retry policy, at
 * most N of them running at a time, the rest in a bounded queue with a
 * policy for when it is full. (The seeds' TaskExecutor; Java's
 * ThreadPoolExecutor with a bounded priority queue, on one loop.)
 *
 * A job is a nested routine (KEEL_AWAIT_CALL) run by a task of its own
 * that the executor spawns when the job starts:
 *
 *	static int fetch(struct keel_task *t, struct keel_routine *r,
 *			 void *arg)
 *	{
 *		struct fetch *f = arg;	// the job's state lives here
 *
 *		KEEL_BEGIN(r);
 *		KEEL_AWAIT(r, keel_sleep(t, 1000000));
 *		KEEL_ROUTINE_RETURN(r, t, keel_res(t) < 0 ? keel_res(t) : 42);
 *	}
 *
 *	struct keel_job_opts jo = {.fn = fetch, .arg = f,
 *				   .prio = KEEL_PRIO_HIGH,
 *				   .deadline_ns = keel_loop_now(loop) + 50 *
 *MS}; KEEL_AWAIT(t, keel_executor_submit(t, ex, &jo, &c->job)); if (keel_res(t)
 *== 0) KEEL_AWAIT(t, keel_job_await(t, c->job)); // keel_res: 42
 *
 * The job's task observes a token of its own (a child of the executor's),
 * whose deadline is the job's: a job still queued at its deadline fails
 * with -ETIMEDOUT without running; a running one past it sees its awaits
 * fail with -ETIMEDOUT (the routine should return that). With a retry
 * policy (keel/resilience.h) a failed attempt is retried after its
 * backoff while the policy allows and the deadline has room.
 *
 * Priorities are keel's classes (enum keel_prio): a higher class always
 * starts first, FIFO within a class; the job's task runs in its class.
 * Everything happens on the executor's loop: its calls from another
 * loop's thread give -EXDEV.
 *
 * Results (keel_job_await()): the routine's last result (>= 0 or a
 * negative errno), -ETIMEDOUT (expired in the queue, or while running),
 * -EAGAIN (dropped from a full queue for a newer job), -ECANCELED
 * (cancelled, or the executor shut down with KEEL_EXEC_CANCEL or was
 * freed), KEEL_ABORTED (the routine panicked), -ENOMEM.
 */
#ifndef KEEL_EXECUTOR_H
#define KEEL_EXECUTOR_H

#include <keel/resilience.h>
#include <keel/task.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct keel_loop;
struct keel_executor;
struct keel_job;

/*
 * A job: a nested routine of the job's task `t`, resumed through `r`
 * (reset before each attempt); it ends with KEEL_ROUTINE_RETURN(r, t,
 * result). `arg` is the submitter's (keep what it must remember there,
 * not in locals).
 */
typedef int (*keel_job_fn)(struct keel_task *t, struct keel_routine *r,
			   void *arg);

/* What a submit does when max_running jobs run and max_queue wait. */
enum keel_exec_full {
	/* Refuse the new job: -EAGAIN. */
	KEEL_EXEC_REJECT = 0,
	/* Drop the oldest queued job of the lowest class at or below the
	 * new one's (it fails with -EAGAIN) and queue the new one; if every
	 * queued job has a higher class, refuse the new one (-EAGAIN). */
	KEEL_EXEC_DROP_OLDEST = 1,
	/* The submitter waits for room until the job's submit deadline
	 * (keel_job_opts.submit_deadline_ns), FIFO with other submitters;
	 * then -ETIMEDOUT. keel_executor_try_submit() refuses instead. */
	KEEL_EXEC_BLOCK = 2,
};

enum keel_exec_shutdown {
	/* Refuse new jobs (-EPIPE); queued and running ones go on. */
	KEEL_EXEC_DRAIN = 0,
	/* Also fail the queued jobs (-ECANCELED) and cancel the running
	 * ones' tokens. */
	KEEL_EXEC_CANCEL = 1,
};

struct keel_executor_opts {
	uint32_t max_running; /* >= 1 */
	uint32_t max_queue;   /* queued (not yet started) jobs at most */
	enum keel_exec_full full;
	const char *name; /* the metrics' `executor` label; copied */
};

struct keel_job_opts {
	keel_job_fn fn; /* required */
	void *arg;	/* the submitter's; must outlive the job */
	enum keel_prio prio;
	/* Absolute keel_loop_now() ns; 0 or UINT64_MAX: none. */
	uint64_t deadline_ns;
	/* NULL: one attempt. Copied. */
	const struct keel_retry_policy *retry;
	/* KEEL_EXEC_BLOCK: how long the submitter may wait for room
	 * (absolute ns; 0 or UINT64_MAX: none). */
	uint64_t submit_deadline_ns;
};

struct keel_executor_stats {
	uint64_t submitted; /* jobs accepted (queued or started) */
	uint64_t started;   /* jobs whose task was spawned */
	uint64_t completed; /* started jobs that ended >= 0 */
	uint64_t failed;    /* started jobs that ended < 0 */
	uint64_t retried;   /* attempts after the first */
	uint64_t rejected;  /* submits refused (full, or a BLOCK timed out) */
	uint64_t dropped;   /* queued jobs dropped for newer ones */
	uint64_t expired;   /* jobs past their deadline (queued or running) */
	uint64_t cancelled; /* queued jobs failed by cancel or shutdown */
	uint32_t queued;    /* jobs waiting to start now */
	uint32_t running;   /* jobs running now */
	uint32_t blocked;   /* submitters waiting for room now */
};

/*
 * An executor on `loop`. 0, -EINVAL (no opts, max_running 0, an unknown
 * policy) or -ENOMEM.
 * Ownership: the caller owns it: keel_executor_free().
 */
int keel_executor_new(struct keel_loop *loop,
		      const struct keel_executor_opts *opts,
		      struct keel_executor **out);

/*
 * Free it: as keel_executor_shutdown(KEEL_EXEC_CANCEL), and joiners are
 * woken with -EPIPE; the memory goes when the last running job has
 * answered its cancellation (the loop must keep running until then).
 * Ownership: `ex` is the caller's no more; job handles stay valid (a
 * handle never points at its executor once its job is done).
 */
void keel_executor_free(struct keel_executor *ex);

/*
 * Submit a job (an await). keel_res: 0 (accepted: *out, if `out` is not
 * NULL, is its handle; a NULL `out` detaches it), -EAGAIN (full), -ETIMEDOUT
 * (the deadline has passed already, or a BLOCK submit waited until its
 * submit deadline), -EPIPE (shut down), -EINVAL (no fn), -ENOMEM, -EXDEV,
 * or the submitter's cancellation cause (BLOCK). On an error *out is
 * NULL.
 * Ownership: `opts` is copied; `arg` must outlive the job; `out` must stay
 * valid until the await ends (keep it in the frame); the handle is the
 * caller's: keel_job_await() or keel_job_detach() it, once.
 */
int keel_executor_submit(struct keel_task *t, struct keel_executor *ex,
			 const struct keel_job_opts *opts,
			 struct keel_job **out);

/*
 * Submit without waiting, from a task or callback on the loop's thread:
 * returns what keel_executor_submit() would, a full BLOCK executor
 * refusing with -EAGAIN.
 * Ownership: as keel_executor_submit().
 */
int keel_executor_try_submit(struct keel_executor *ex,
			     const struct keel_job_opts *opts,
			     struct keel_job **out);

/*
 * Await the job's end: keel_res is its result (see the top). Then the
 * handle is freed. An await cut short by the waiter's own cancellation
 * returns the cause and leaves the handle valid (await or detach it
 * again). keel_res -EBUSY: another task awaits it; -EXDEV.
 * Ownership: the handle is freed when the result is returned.
 */
int keel_job_await(struct keel_task *t, struct keel_job *job);

/*
 * Give up the handle: the job runs on, and is freed when done.
 * Ownership: the handle is the executor's from here on.
 */
void keel_job_detach(struct keel_job *job);

/*
 * Cancel a job: a queued one fails with -ECANCELED at once, a running
 * one's token is cancelled. 0, or -EALREADY (it is done).
 * Ownership: nothing changes hands.
 */
int keel_job_cancel(struct keel_job *job);

/*
 * Refuse new jobs from now on (submits give -EPIPE, blocked submitters
 * are woken with -EPIPE); with KEEL_EXEC_CANCEL also fail the queued
 * jobs and cancel the running ones.
 * Ownership: nothing changes hands.
 */
void keel_executor_shutdown(struct keel_executor *ex,
			    enum keel_exec_shutdown how);

/*
 * Await the executor's idleness: no job queued or running, no submitter
 * blocked (after a shutdown: its end). keel_res 0, -EPIPE (freed), the
 * cancellation cause, -ENOMEM, -EXDEV.
 * Ownership: nothing changes hands.
 */
int keel_executor_join(struct keel_task *t, struct keel_executor *ex);

/* Ownership: a copy into the caller's `out`. */
void keel_executor_stats(const struct keel_executor *ex,
			 struct keel_executor_stats *out);

/*
 * The executors' stats as Prometheus text (exposition format 0.0.4), one
 * sample per executor labelled executor="<name>": counters
 * keel_executor_jobs_{submitted,started,completed,failed,retried,
 * rejected,dropped,expired,cancelled}_total and gauges
 * keel_executor_{queued,running,blocked}. Writes at most `len` bytes
 * (NUL-terminated, cut like snprintf) and returns the length the whole
 * text needs.
 * Ownership: writes into the caller's `buf`; nothing else changes hands.
 */
size_t keel_executor_metrics_render(struct keel_executor *const *exs,
				    unsigned n, char *buf, size_t len);

#ifdef __cplusplus
}
#endif
#endif
