/* SPDX-License-Identifier: MIT */
/*
 * executor.c: the bounded task executor of keel/executor.h: its priority
 * queue of jobs, the task each started job runs in, the submitters
 * blocked for room, and the metrics.
 *
 * Next to the limiters (supervise/limit.c) because it is one: a bulkhead
 * that owns its jobs, with a priority queue in front. It queues tasks on
 * core's wait queue (core/wait.h), as they do.
 *
 * Invariants:
 * - A job is in exactly one state: BLOCKED (on `blocked`, its submitter
 *   waiting on `room`), QUEUED (on `queue[prio]`, its deadline timer
 *   armed if it has one), RUNNING (`task` set, its own token) or DONE
 *   (`res` final, `ex` NULL: a done job never points at its executor).
 * - A job is queued only while `max_running` jobs run (dispatch() starts
 *   the head whenever one ends), and blocked only while, besides, the
 *   queue is full.
 * - A job's memory goes when it is DONE and its handle is given up: by an
 *   await that returns its result, or a detach.
 * - The executor's memory goes at free when nothing runs, else when the
 *   last running job ends (its task reads the executor until then).
 */
#include "prom.h"
#include "wait.h"

#include <errno.h>
#include <keel/executor.h>
#include <stdlib.h>
#include <string.h>

enum job_state { JOB_BLOCKED, JOB_QUEUED, JOB_RUNNING, JOB_DONE };

struct keel_job {
	struct keel__link link; /* queue[prio] or blocked */
	struct keel_executor *ex;
	struct keel_job_opts opts;
	struct keel_retry_policy retry;
	struct keel_timer timer;     /* the deadline, while queued */
	struct keel__wq done;	     /* its one awaiter */
	struct keel_task *task;	     /* while running */
	struct keel_token *token;    /* while running */
	struct keel_task *submitter; /* while blocked */
	struct keel_job **out;	     /* while blocked: the submitter's */
	int state;
	int res;
	bool ran;      /* the task set `res` itself */
	bool detached; /* the handle was given up */
};

struct keel_executor {
	struct keel_loop *loop;
	struct keel_token *token; /* the running jobs' tokens' parent */
	struct keel__list queue[KEEL_PRIO_CLASSES];
	struct keel__list blocked;
	struct keel__wq room; /* blocked submitters, FIFO with `blocked` */
	struct keel__wq idle; /* keel_executor_join()'s waiters */
	struct keel_executor_opts opts;
	struct keel_executor_stats stats;
	char name[64];
	bool closed;  /* shut down: no more submits */
	bool freeing; /* freed while jobs ran */
};

struct job_frame {
	struct keel_task task;
	struct keel_routine r;
	struct keel_job *job;
	struct keel_retry retry;
	int res;
};

static int job_step(struct keel_task *t);
static KEEL_TASK_TYPE(keel_job_task, struct job_frame, task, job_step);

static bool deadline_none(uint64_t d)
{
	return d == 0 || d == UINT64_MAX;
}

static bool ex_idle(const struct keel_executor *ex)
{
	return !ex->stats.queued && !ex->stats.running && !ex->stats.blocked;
}

static void ex_destroy(struct keel_executor *ex)
{
	keel_token_release(ex->token);
	free(ex);
}

/* The handle's last word: wake its awaiter with the result (the handle
 * goes with that), or free it if given up, or keep it for a later await. */
static void job_settle(struct keel_job *job)
{
	struct keel__waiter *w = keel__waitq_pop(&job->done.q);

	if (w) {
		keel__wq_end(&job->done, w, job->res);
		free(job);
	} else if (job->detached) {
		free(job);
	}
}

static void job_done(struct keel_job *job, int res)
{
	job->state = JOB_DONE;
	job->res = res;
	job->ex = NULL;
	job_settle(job);
}

static void job_unqueue(struct keel_executor *ex, struct keel_job *job)
{
	keel__list_remove(&ex->queue[job->opts.prio], &job->link);
	ex->stats.queued--;
	keel_timer_cancel(ex->loop, &job->timer);
}

static void ex_settled(struct keel_executor *ex);
static void room_left(struct keel__wq *wq, struct keel__waiter *w);

/* A queued job that never starts: expired, dropped or cancelled. */
static void job_fail_queued(struct keel_executor *ex, struct keel_job *job,
			    int res)
{
	job_unqueue(ex, job);
	job_done(job, res);
}

static void job_expired(struct keel_loop *loop, struct keel_timer *timer,
			void *arg)
{
	struct keel_job *job = arg;
	struct keel_executor *ex = job->ex;

	(void)loop;
	(void)timer;
	ex->stats.expired++;
	job_fail_queued(ex, job, -ETIMEDOUT);
	ex_settled(ex);
}

/* Spawn the job's task, observing a token of its own with its deadline. */
static void job_start(struct keel_executor *ex, struct keel_job *job)
{
	struct job_frame *f;
	struct keel_token *tok = NULL;
	int err = -ENOMEM;

	f = keel_spawn(ex->loop, &keel_job_task, job->opts.prio);
	if (!f)
		goto fail;
	if (keel_token_new(ex->loop, ex->token, &tok) ||
	    (!deadline_none(job->opts.deadline_ns) &&
	     keel_token_set_deadline(tok, job->opts.deadline_ns)) ||
	    keel_task_set_token(&f->task, tok)) {
		/* It has not run: make its first step end it at once. */
		f->job = NULL;
		if (tok)
			keel_token_release(tok);
		goto fail;
	}
	f->job = job;
	job->task = &f->task;
	job->token = tok;
	job->state = JOB_RUNNING;
	ex->stats.started++;
	ex->stats.running++;
	return;
fail:
	ex->stats.failed++;
	job_done(job, err);
}

/* Start queued jobs while there is room, highest class first. */
static void dispatch(struct keel_executor *ex)
{
	while (ex->stats.running < ex->opts.max_running && ex->stats.queued) {
		struct keel_job *job = NULL;

		for (int p = KEEL_PRIO_CLASSES - 1; p >= 0; p--) {
			if (!keel__list_empty(&ex->queue[p])) {
				job = keel__list_entry(ex->queue[p].first,
						       struct keel_job, link);
				break;
			}
		}
		if (!deadline_none(job->opts.deadline_ns) &&
		    job->opts.deadline_ns <= keel__clock_now()) {
			ex->stats.expired++;
			job_fail_queued(ex, job, -ETIMEDOUT);
			continue;
		}
		job_unqueue(ex, job);
		job_start(ex, job);
	}
}

static void job_enqueue(struct keel_executor *ex, struct keel_job *job)
{
	keel__list_push_back(&ex->queue[job->opts.prio], &job->link);
	job->state = JOB_QUEUED;
	ex->stats.queued++;
	/* Without a timer (-ENOMEM) dispatch() still finds it expired. */
	if (!deadline_none(job->opts.deadline_ns))
		(void)keel_timer_arm(ex->loop, &job->timer,
				     job->opts.deadline_ns);
}

/* Place an accepted job: start it, or queue it. */
static void job_admit(struct keel_executor *ex, struct keel_job *job)
{
	ex->stats.submitted++;
	if (ex->stats.running < ex->opts.max_running && !ex->stats.queued)
		job_start(ex, job);
	else
		job_enqueue(ex, job);
}

/* The blocked submitter whose task is `t` (FIFO: usually the first). */
static struct keel_job *blocked_of(struct keel_executor *ex,
				   const struct keel_task *t)
{
	struct keel__link *it;

	keel__list_for_each (it, &ex->blocked) {
		struct keel_job *job =
		    keel__list_entry(it, struct keel_job, link);

		if (job->submitter == t)
			return job;
	}
	return NULL;
}

static bool has_room(const struct keel_executor *ex)
{
	return ex->stats.running < ex->opts.max_running ||
	       ex->stats.queued < ex->opts.max_queue;
}

/* Something changed: start what may start, let blocked submitters in,
 * tell the joiners if nothing is left. */
static void ex_settled(struct keel_executor *ex)
{
	struct keel__waiter *w;

	dispatch(ex);
	while (has_room(ex) && (w = keel__waitq_pop(&ex->room.q))) {
		struct keel_job *job = blocked_of(ex, w->task);

		keel__list_remove(&ex->blocked, &job->link);
		ex->stats.blocked--;
		job->submitter = NULL;
		if (job->out)
			*job->out = job;
		job_admit(ex, job);
		keel__wq_end(&ex->room, w, 0);
	}
	if (ex_idle(ex))
		keel__wq_wake_all(&ex->idle, 0);
}

/* The job's task is exiting (ended, aborted or killed). */
static void job_exited(void *arg)
{
	struct keel_job *job = arg;
	struct keel_executor *ex = job->ex;
	int res = job->ran ? job->res : keel_res(job->task);

	if (res >= 0) {
		ex->stats.completed++;
	} else {
		ex->stats.failed++;
		if (res == -ETIMEDOUT &&
		    keel_token_cause(job->token) == -ETIMEDOUT)
			ex->stats.expired++;
	}
	keel_token_release(job->token);
	job->token = NULL;
	job->task = NULL;
	ex->stats.running--;
	job_done(job, res);
	if (ex->freeing) {
		if (!ex->stats.running)
			ex_destroy(ex);
		return;
	}
	ex_settled(ex);
}

static int job_step(struct keel_task *t)
{
	struct job_frame *f = keel_container_of(t, struct job_frame, task);

	KEEL_BEGIN(t);
	if (!f->job) /* job_start() failed after the spawn */
		KEEL_END(t);
	if (keel_defer(t, job_exited, f->job)) {
		f->job->ran = true;
		f->job->res = -ENOMEM;
		job_exited(f->job);
		KEEL_END(t);
	}
	if (f->job->opts.retry)
		keel_retry_begin(&f->retry, &f->job->retry);
	for (;;) {
		f->r.at = NULL;
		KEEL_AWAIT_CALL(t, f->job->opts.fn(t, &f->r, f->job->opts.arg));
		f->res = keel_res(t);
		if (!f->job->opts.retry)
			break;
		KEEL_AWAIT_CALL(t, keel_retry_backoff(t, &f->retry, f->res));
		if (keel_retry_done(&f->retry)) {
			f->res = keel_retry_result(&f->retry);
			break;
		}
		f->job->ex->stats.retried++;
	}
	f->job->ran = true;
	f->job->res = f->res;
	KEEL_END(t); /* job_exited() runs as the defer */
}

/* ---- the API ------------------------------------------------------------ */

int keel_executor_new(struct keel_loop *loop,
		      const struct keel_executor_opts *opts,
		      struct keel_executor **out)
{
	struct keel_executor *ex;

	if (!opts || !opts->max_running ||
	    (unsigned)opts->full > KEEL_EXEC_BLOCK)
		return -EINVAL;
	ex = calloc(1, sizeof(*ex));
	if (!ex)
		return -ENOMEM;
	if (keel_token_new(loop, NULL, &ex->token)) {
		free(ex);
		return -ENOMEM;
	}
	ex->loop = loop;
	ex->opts = *opts;
	if (opts->name) {
		strncpy(ex->name, opts->name, sizeof(ex->name) - 1);
	} else {
		strcpy(ex->name, "executor");
	}
	ex->opts.name = ex->name;
	for (int p = 0; p < KEEL_PRIO_CLASSES; p++)
		keel__list_init(&ex->queue[p]);
	keel__list_init(&ex->blocked);
	keel__wq_init(&ex->room, loop, room_left);
	ex->room.timed = true;
	keel__wq_init(&ex->idle, loop, NULL);
	*out = ex;
	return 0;
}

/* A blocked submitter's wait is over without room (timed out, cancelled,
 * shut down): its job was never accepted. */
static void blocked_drop(struct keel_executor *ex, struct keel_job *job)
{
	keel__list_remove(&ex->blocked, &job->link);
	ex->stats.blocked--;
	ex->stats.rejected++;
	if (job->out)
		*job->out = NULL;
	free(job);
}

static void room_left(struct keel__wq *wq, struct keel__waiter *w)
{
	struct keel_executor *ex =
	    keel_container_of(wq, struct keel_executor, room);

	blocked_drop(ex, blocked_of(ex, w->task));
	if (ex_idle(ex))
		keel__wq_wake_all(&ex->idle, 0);
}

void keel_executor_shutdown(struct keel_executor *ex,
			    enum keel_exec_shutdown how)
{
	struct keel__waiter *w;

	ex->closed = true;
	while ((w = keel__waitq_pop(&ex->room.q))) {
		blocked_drop(ex, blocked_of(ex, w->task));
		keel__wq_end(&ex->room, w, -EPIPE);
	}
	if (how == KEEL_EXEC_CANCEL) {
		for (int p = 0; p < KEEL_PRIO_CLASSES; p++) {
			while (!keel__list_empty(&ex->queue[p])) {
				struct keel_job *job = keel__list_entry(
				    ex->queue[p].first, struct keel_job, link);

				ex->stats.cancelled++;
				job_fail_queued(ex, job, -ECANCELED);
			}
		}
		keel_token_cancel(ex->token);
	}
	if (ex_idle(ex))
		keel__wq_wake_all(&ex->idle, 0);
}

void keel_executor_free(struct keel_executor *ex)
{
	keel_executor_shutdown(ex, KEEL_EXEC_CANCEL);
	keel__wq_wake_all(&ex->idle, -EPIPE);
	if (ex->stats.running)
		ex->freeing = true;
	else
		ex_destroy(ex);
}

/* Accept, queue or refuse `job` under the full policy. 0: placed;
 * 1: a BLOCK submitter must wait; else a negative errno (job freed). */
static int submit(struct keel_executor *ex, struct keel_job *job,
		  bool may_block)
{
	if (ex->closed) {
		free(job);
		return -EPIPE;
	}
	if (!deadline_none(job->opts.deadline_ns) &&
	    job->opts.deadline_ns <= keel__clock_now()) {
		ex->stats.expired++;
		free(job);
		return -ETIMEDOUT;
	}
	if (!ex->stats.blocked && has_room(ex)) {
		job_admit(ex, job);
		return 0;
	}
	switch (ex->opts.full) {
	case KEEL_EXEC_DROP_OLDEST:
		for (unsigned p = 0; p <= (unsigned)job->opts.prio; p++) {
			if (keel__list_empty(&ex->queue[p]))
				continue;
			ex->stats.dropped++;
			job_fail_queued(ex,
					keel__list_entry(ex->queue[p].first,
							 struct keel_job, link),
					-EAGAIN);
			job_admit(ex, job);
			return 0;
		}
		break;
	case KEEL_EXEC_BLOCK:
		if (may_block)
			return 1;
		break;
	default:
		break;
	}
	ex->stats.rejected++;
	free(job);
	return -EAGAIN;
}

static struct keel_job *job_new(struct keel_executor *ex,
				const struct keel_job_opts *opts, int *err)
{
	struct keel_job *job;

	if (!opts || !opts->fn || (unsigned)opts->prio >= KEEL_PRIO_CLASSES) {
		*err = -EINVAL;
		return NULL;
	}
	job = calloc(1, sizeof(*job));
	if (!job) {
		*err = -ENOMEM;
		return NULL;
	}
	job->ex = ex;
	job->opts = *opts;
	if (opts->retry) {
		job->retry = *opts->retry;
		job->opts.retry = &job->retry;
	}
	keel_timer_init(&job->timer, job_expired, job);
	keel__wq_init(&job->done, ex->loop, NULL);
	return job;
}

int keel_executor_try_submit(struct keel_executor *ex,
			     const struct keel_job_opts *opts,
			     struct keel_job **out)
{
	struct keel_job *job;
	int err;

	if (out)
		*out = NULL;
	if (!keel__wq_on_loop(ex->loop))
		return -EXDEV;
	job = job_new(ex, opts, &err);
	if (!job)
		return err;
	job->detached = !out;
	err = submit(ex, job, false);
	if (err)
		return err;
	if (out)
		*out = job;
	return 0;
}

int keel_executor_submit(struct keel_task *t, struct keel_executor *ex,
			 const struct keel_job_opts *opts,
			 struct keel_job **out)
{
	struct keel_job *job;
	int err;

	if (out)
		*out = NULL;
	if (t->loop != ex->loop)
		return keel__task_ready(t, -EXDEV);
	err = keel__task_cancel_cause(t);
	if (err)
		return keel__task_ready(t, err);
	job = job_new(ex, opts, &err);
	if (!job)
		return keel__task_ready(t, err);
	job->detached = !out;
	if (!keel__wq_prepare(t)) {
		free(job);
		return keel__task_ready(t, -ENOMEM);
	}
	err = submit(ex, job, true);
	if (err <= 0) {
		if (!err && out)
			*out = job;
		return keel__task_ready(t, err);
	}
	/* Wait for room; ex_settled() admits it and sets *out. */
	job->state = JOB_BLOCKED;
	job->submitter = t;
	job->out = out;
	keel__list_push_back(&ex->blocked, &job->link);
	ex->stats.blocked++;
	return keel__wq_begin_until(t, &ex->room, 0,
				    deadline_none(opts->submit_deadline_ns)
					? UINT64_MAX
					: opts->submit_deadline_ns);
}

int keel_job_await(struct keel_task *t, struct keel_job *job)
{
	if (!keel__wq_on_loop(t->loop) || t->loop != job->done.loop)
		return keel__task_ready(t, -EXDEV);
	if (job->state == JOB_DONE) {
		int res = job->res;

		free(job);
		return keel__task_ready(t, res);
	}
	if (job->done.q.len)
		return keel__task_ready(t, -EBUSY);
	int cause = keel__task_cancel_cause(t);

	if (cause)
		return keel__task_ready(t, cause);
	if (!keel__wq_prepare(t))
		return keel__task_ready(t, -ENOMEM);
	return keel__wq_begin(t, &job->done, 0, NULL);
}

void keel_job_detach(struct keel_job *job)
{
	if (job->state == JOB_DONE)
		free(job);
	else
		job->detached = true;
}

int keel_job_cancel(struct keel_job *job)
{
	struct keel_executor *ex = job->ex;

	switch (job->state) {
	case JOB_QUEUED:
		ex->stats.cancelled++;
		job_fail_queued(ex, job, -ECANCELED);
		ex_settled(ex);
		return 0;
	case JOB_RUNNING:
		keel_token_cancel(job->token);
		return 0;
	default: /* a blocked one has no handle yet */
		return -EALREADY;
	}
}

int keel_executor_join(struct keel_task *t, struct keel_executor *ex)
{
	if (t->loop != ex->loop)
		return keel__task_ready(t, -EXDEV);
	if (ex_idle(ex))
		return keel__task_ready(t, 0);
	int cause = keel__task_cancel_cause(t);

	if (cause)
		return keel__task_ready(t, cause);
	if (!keel__wq_prepare(t))
		return keel__task_ready(t, -ENOMEM);
	return keel__wq_begin(t, &ex->idle, 0, NULL);
}

void keel_executor_stats(const struct keel_executor *ex,
			 struct keel_executor_stats *out)
{
	*out = ex->stats;
}

/* ---- metrics ------------------------------------------------------------ */

static const struct {
	const char *name;
	const char *help;
	size_t off;
	bool gauge;
} metrics[] = {
#define C(f, h)                                                                \
	{                                                                      \
		"keel_executor_jobs_" #f "_total", h,                          \
		    offsetof(struct keel_executor_stats, f), false             \
	}
#define G(f, h)                                                                \
	{                                                                      \
		"keel_executor_" #f, h,                                        \
		    offsetof(struct keel_executor_stats, f), true              \
	}
    C(submitted, "Jobs accepted."),
    C(started, "Jobs started."),
    C(completed, "Started jobs that succeeded."),
    C(failed, "Started jobs that failed."),
    C(retried, "Attempts after a job's first."),
    C(rejected, "Submits refused: the queue was full."),
    C(dropped, "Queued jobs dropped for newer ones."),
    C(expired, "Jobs past their deadline."),
    C(cancelled, "Queued jobs cancelled."),
    G(queued, "Jobs waiting to start."),
    G(running, "Jobs running."),
    G(blocked, "Submitters waiting for room."),
#undef C
#undef G
};

size_t keel_executor_metrics_render(struct keel_executor *const *exs,
				    unsigned n, char *buf, size_t len)
{
	struct keel__prom p;

	keel__prom_init(&p, buf, len);
	for (size_t m = 0; m < sizeof(metrics) / sizeof(metrics[0]); m++) {
		keel__prom_family(&p, metrics[m].name,
				  metrics[m].gauge ? KEEL__PROM_GAUGE
						   : KEEL__PROM_COUNTER,
				  metrics[m].help);
		for (unsigned i = 0; i < n; i++) {
			const char *s = (const char *)&exs[i]->stats;
			uint64_t v;

			if (metrics[m].gauge)
				v = *(const uint32_t *)(s + metrics[m].off);
			else
				v = *(const uint64_t *)(s + metrics[m].off);
			keel__prom_sample(&p, metrics[m].name, NULL);
			keel__prom_label(&p, "executor", exs[i]->name);
			keel__prom_value(&p, v);
		}
	}
	return keel__prom_end(&p);
}
