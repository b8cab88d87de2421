/* SPDX-License-Identifier: MIT */
/*
 * test_executor.c: keel/executor.h. Jobs start by class, FIFO within one;
 * no more than max_running run at once; each full policy (reject, drop
 * the oldest of the lowest class, block the submitter with and without a
 * deadline); a deadline passing in the queue (the job never runs) and
 * while running (its sleep is cut); a retry policy's attempts counted;
 * shutdown with queued jobs (cancel and drain; the sanitizer build checks
 * nothing leaks), a free with a job still running, and the metrics text.
 *
 * Jobs report through their argument (struct jarg, static) and globals:
 * a job task's frame is gone once it exits.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <keel.h>
#include <keel/executor.h>
#include <string.h>
#include <time.h>

#include "helpers/keel_test.h"

#define MS	 1000000ull
#define NOT_DONE (-9999)
#define NJOBS	 16

struct jarg {
	int id;
	uint64_t sleep_ns;
	int fail_times; /* attempts that fail with -EAGAIN first */
	int result;
	int attempts;
};

static struct kt_log g_order; /* ids, as jobs start */
static int g_running, g_max_running;
static struct jarg g_args[NJOBS];
static int g_res[NJOBS]; /* what keel_job_await gave, by id */
static struct keel_executor *g_ex;

static int job_fn(struct keel_task *t, struct keel_routine *r, void *arg)
{
	struct jarg *a = arg;

	KEEL_BEGIN(r);
	if (!a->attempts++)
		kt_log_push(&g_order, a->id);
	if (++g_running > g_max_running)
		g_max_running = g_running;
	KEEL_AWAIT(r, keel_sleep(t, a->sleep_ns));
	g_running--;
	if (keel_res(t) < 0)
		KEEL_ROUTINE_RETURN(r, t, keel_res(t));
	if (a->attempts <= a->fail_times)
		KEEL_ROUTINE_RETURN(r, t, -EAGAIN);
	KEEL_ROUTINE_RETURN(r, t, a->result);
}

static void reset(void)
{
	memset(&g_order, 0, sizeof(g_order));
	memset(g_args, 0, sizeof(g_args));
	g_running = g_max_running = 0;
	for (int i = 0; i < NJOBS; i++) {
		g_args[i].id = i;
		g_res[i] = NOT_DONE;
	}
}

static struct keel_job_opts jopts(int id, enum keel_prio prio)
{
	struct keel_job_opts o = {
	    .fn = job_fn, .arg = &g_args[id], .prio = prio};
	return o;
}

/* Awaits one handle and records its result. */
struct awaiter {
	struct keel_task task;
	struct keel_job *job;
	int id;
};

static int awaiter_step(struct keel_task *t)
{
	struct awaiter *a = keel_container_of(t, struct awaiter, task);

	KEEL_BEGIN(t);
	KEEL_AWAIT(t, keel_job_await(t, a->job));
	g_res[a->id] = keel_res(t);
	KEEL_END(t);
}

static KEEL_TASK_TYPE(awaiter_task, struct awaiter, task, awaiter_step);

static void await_later(struct keel_loop *loop, struct keel_job *job, int id)
{
	struct awaiter *a = kt_spawn(loop, &awaiter_task, KEEL_PRIO_NORMAL);

	a->job = job;
	a->id = id;
}

/* Submit from outside the loop (before it runs): try_submit. */
static void submit_now(struct keel_loop *loop, int id, enum keel_prio prio,
		       int want)
{
	struct keel_job_opts o = jopts(id, prio);
	struct keel_job *job = NULL;

	cr_assert_eq(keel_executor_try_submit(g_ex, &o, &job), want, "job %d",
		     id);
	if (want == 0)
		await_later(loop, job, id);
	else
		cr_assert_null(job);
}

static struct keel_executor *new_ex(struct keel_loop *loop, uint32_t running,
				    uint32_t queue, enum keel_exec_full full)
{
	struct keel_executor_opts o = {.max_running = running,
				       .max_queue = queue,
				       .full = full,
				       .name = "t"};
	struct keel_executor *ex = NULL;

	cr_assert_eq(keel_executor_new(loop, &o, &ex), 0);
	return ex;
}

static struct keel_executor_stats stats(void)
{
	struct keel_executor_stats st;

	keel_executor_stats(g_ex, &st);
	return st;
}

/* CLOCK_MONOTONIC now, the base of every keel deadline. */
static uint64_t clock_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

Test(executor, rejects_bad_options)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_executor_opts o = {.max_running = 0};
	struct keel_job_opts jo = {.fn = NULL};
	struct keel_executor *ex;

	cr_expect_eq(keel_executor_new(loop, &o, &ex), -EINVAL);
	cr_expect_eq(keel_executor_new(loop, NULL, &ex), -EINVAL);
	g_ex = new_ex(loop, 1, 1, KEEL_EXEC_REJECT);
	cr_expect_eq(keel_executor_try_submit(g_ex, &jo, NULL), -EINVAL);
	keel_executor_free(g_ex);
	keel_loop_destroy(loop);
}

Test(executor, starts_by_class_then_fifo, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	static const int want[] = {0, 4, 3, 6, 2, 1, 5};

	reset();
	g_ex = new_ex(loop, 1, 8, KEEL_EXEC_REJECT);
	g_args[0].sleep_ns = 5 * MS; /* holds the one slot while we queue */
	submit_now(loop, 0, KEEL_PRIO_NORMAL, 0);
	submit_now(loop, 1, KEEL_PRIO_LOW, 0);
	submit_now(loop, 2, KEEL_PRIO_NORMAL, 0);
	submit_now(loop, 3, KEEL_PRIO_HIGH, 0);
	submit_now(loop, 4, KEEL_PRIO_CRITICAL, 0);
	submit_now(loop, 5, KEEL_PRIO_LOW, 0);
	submit_now(loop, 6, KEEL_PRIO_HIGH, 0);
	cr_expect_eq(stats().queued, 6);
	cr_expect_eq(stats().running, 1);
	kt_loop_run(loop);
	kt_log_expect(&g_order, want, 7);
	for (int i = 0; i < 7; i++)
		cr_expect_eq(g_res[i], 0, "job %d: %d", i, g_res[i]);
	cr_expect_eq(stats().completed, 7);
	keel_executor_free(g_ex);
	keel_loop_destroy(loop);
}

Test(executor, runs_at_most_max_running, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_executor_stats st;

	reset();
	g_ex = new_ex(loop, 3, NJOBS, KEEL_EXEC_REJECT);
	for (int i = 0; i < 12; i++) {
		g_args[i].sleep_ns = (1 + i % 3) * MS;
		g_args[i].result = 100 + i;
		submit_now(loop, i, KEEL_PRIO_NORMAL, 0);
	}
	kt_loop_run(loop);
	cr_expect_eq(g_max_running, 3);
	for (int i = 0; i < 12; i++)
		cr_expect_eq(g_res[i], 100 + i);
	st = stats();
	cr_expect_eq(st.submitted, 12);
	cr_expect_eq(st.started, 12);
	cr_expect_eq(st.completed, 12);
	cr_expect_eq(st.running, 0);
	cr_expect_eq(st.queued, 0);
	keel_executor_free(g_ex);
	keel_loop_destroy(loop);
}

Test(executor, full_reject, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);

	reset();
	g_ex = new_ex(loop, 1, 2, KEEL_EXEC_REJECT);
	for (int i = 0; i < 3; i++)
		submit_now(loop, i, KEEL_PRIO_NORMAL, 0);
	/* One runs, two wait: full, whatever the class. */
	submit_now(loop, 3, KEEL_PRIO_CRITICAL, -EAGAIN);
	cr_expect_eq(stats().rejected, 1);
	kt_loop_run(loop);
	for (int i = 0; i < 3; i++)
		cr_expect_eq(g_res[i], 0);
	cr_expect_eq(g_args[3].attempts, 0);
	keel_executor_free(g_ex);
	keel_loop_destroy(loop);
}

Test(executor, full_drop_oldest_of_lowest_class, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_executor_stats st;

	reset();
	g_ex = new_ex(loop, 1, 2, KEEL_EXEC_DROP_OLDEST);
	submit_now(loop, 0, KEEL_PRIO_NORMAL, 0); /* runs */
	submit_now(loop, 1, KEEL_PRIO_LOW, 0);
	submit_now(loop, 2, KEEL_PRIO_LOW, 0);
	submit_now(loop, 3, KEEL_PRIO_NORMAL, 0); /* drops 1 */
	submit_now(loop, 4, KEEL_PRIO_LOW, 0);	  /* drops 2 */
	submit_now(loop, 5, KEEL_PRIO_HIGH, 0);	  /* drops 4 */
	/* Queued: 3 (normal), 5 (high); nothing at or below LOW. */
	submit_now(loop, 6, KEEL_PRIO_LOW, -EAGAIN);
	st = stats();
	cr_expect_eq(st.dropped, 3);
	cr_expect_eq(st.rejected, 1);
	kt_loop_run(loop);
	cr_expect_eq(g_res[1], -EAGAIN);
	cr_expect_eq(g_res[2], -EAGAIN);
	cr_expect_eq(g_res[4], -EAGAIN);
	cr_expect_eq(g_res[0], 0);
	cr_expect_eq(g_res[3], 0);
	cr_expect_eq(g_res[5], 0);
	for (int i = 1; i <= 6; i++)
		if (i != 3 && i != 5)
			cr_expect_eq(g_args[i].attempts, 0, "job %d ran", i);
	keel_executor_free(g_ex);
	keel_loop_destroy(loop);
}

/* Submits jobs [first, first + n) with BLOCK, each awaited at once
 * after the submit; records the submit's result as -1000 - errno. */
struct submitter {
	struct keel_task task;
	struct keel_job *job;
	uint64_t submit_deadline;
	int first, n, i;
};

static int g_submit_res[NJOBS];
static uint32_t g_blocked_seen;

static int submitter_step(struct keel_task *t)
{
	struct submitter *s = keel_container_of(t, struct submitter, task);

	KEEL_BEGIN(t);
	for (s->i = s->first; s->i < s->first + s->n; s->i++) {
		struct keel_job_opts o = jopts(s->i, KEEL_PRIO_NORMAL);

		o.submit_deadline_ns = s->submit_deadline;
		KEEL_AWAIT(t, keel_executor_submit(t, g_ex, &o, &s->job));
		g_submit_res[s->i] = keel_res(t);
		if (keel_res(t) == 0)
			await_later(keel_task_loop(t), s->job, s->i);
		else
			cr_expect_null(s->job);
	}
	KEEL_END(t);
}

static KEEL_TASK_TYPE(submitter_task, struct submitter, task, submitter_step);

/* Samples the blocked count while the jobs run. */
static int blocked_probe(struct keel_task *t, struct keel_routine *r, void *arg)
{
	(void)arg;
	KEEL_BEGIN(r);
	KEEL_AWAIT(r, keel_sleep(t, 2 * MS));
	if (stats().blocked > g_blocked_seen)
		g_blocked_seen = stats().blocked;
	KEEL_ROUTINE_RETURN(r, t, 0);
}

Test(executor, full_block_waits_for_room, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct submitter *s;

	reset();
	g_blocked_seen = 0;
	g_ex = new_ex(loop, 1, 1, KEEL_EXEC_BLOCK);
	for (int i = 0; i < 6; i++)
		g_args[i].sleep_ns = MS;
	s = kt_spawn(loop, &submitter_task, KEEL_PRIO_NORMAL);
	s->first = 0;
	s->n = 6;
	/* The probe fills the slot first, so the submitter blocks. */
	struct keel_job_opts probe = {.fn = blocked_probe};

	cr_assert_eq(keel_executor_try_submit(g_ex, &probe, NULL), 0);
	kt_loop_run(loop);
	cr_expect_eq(g_blocked_seen, 1);
	for (int i = 0; i < 6; i++) {
		cr_expect_eq(g_submit_res[i], 0);
		cr_expect_eq(g_res[i], 0);
	}
	cr_expect_eq(stats().rejected, 0);
	cr_expect_eq(stats().completed, 7);
	/* A try on a full BLOCK executor refuses. */
	keel_executor_free(g_ex);
	keel_loop_destroy(loop);
}

Test(executor, full_block_gives_up_at_its_deadline, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct submitter *s;

	reset();
	g_ex = new_ex(loop, 1, 1, KEEL_EXEC_BLOCK);
	g_args[0].sleep_ns = 50 * MS;
	g_args[1].sleep_ns = MS;
	submit_now(loop, 0, KEEL_PRIO_NORMAL, 0);
	submit_now(loop, 1, KEEL_PRIO_NORMAL, 0);
	submit_now(loop, 2, KEEL_PRIO_NORMAL, -EAGAIN); /* try: no block */
	s = kt_spawn(loop, &submitter_task, KEEL_PRIO_NORMAL);
	s->first = 3;
	s->n = 1;
	s->submit_deadline = keel_loop_now(loop) + 5 * MS;
	kt_loop_run(loop);
	cr_expect_eq(g_submit_res[3], -ETIMEDOUT);
	cr_expect_eq(g_args[3].attempts, 0);
	cr_expect_eq(g_res[0], 0);
	cr_expect_eq(g_res[1], 0);
	cr_expect_eq(stats().rejected, 2);
	cr_expect_eq(stats().blocked, 0);
	keel_executor_free(g_ex);
	keel_loop_destroy(loop);
}

Test(executor, deadline_in_queue_and_while_running, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_executor_stats st;
	struct keel_job_opts o;
	struct keel_job *job;

	reset();
	g_ex = new_ex(loop, 1, 4, KEEL_EXEC_REJECT);
	/* 0 runs past its deadline: its 10 s sleep is cut at 20 ms. The
	 * deadlines are read off the clock, not the loop's (set at its
	 * creation): the executor checks them against the clock, and a loaded
	 * machine can let 20 ms pass in between (seen in CI). */
	g_args[0].sleep_ns = 10000 * MS;
	o = jopts(0, KEEL_PRIO_NORMAL);
	o.deadline_ns = clock_now() + 20 * MS;
	cr_assert_eq(keel_executor_try_submit(g_ex, &o, &job), 0);
	await_later(loop, job, 0);
	/* 1 waits behind it and expires first, without running. */
	o = jopts(1, KEEL_PRIO_NORMAL);
	o.deadline_ns = clock_now() + 5 * MS;
	cr_assert_eq(keel_executor_try_submit(g_ex, &o, &job), 0);
	await_later(loop, job, 1);
	/* 2 has no deadline and runs after 0. */
	submit_now(loop, 2, KEEL_PRIO_NORMAL, 0);
	/* A deadline already past: refused. */
	o = jopts(3, KEEL_PRIO_NORMAL);
	o.deadline_ns = clock_now() - 1;
	cr_expect_eq(keel_executor_try_submit(g_ex, &o, &job), -ETIMEDOUT);
	kt_loop_run(loop);
	cr_expect_eq(g_res[0], -ETIMEDOUT);
	cr_expect_eq(g_res[1], -ETIMEDOUT);
	cr_expect_eq(g_args[1].attempts, 0);
	cr_expect_eq(g_res[2], 0);
	st = stats();
	cr_expect_eq(st.expired, 3);
	cr_expect_eq(st.failed, 1);
	cr_expect_eq(st.completed, 1);
	cr_expect_eq(st.started, 2);
	keel_executor_free(g_ex);
	keel_loop_destroy(loop);
}

Test(executor, retries_by_its_policy, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_retry_policy rp;
	struct keel_job_opts o;
	struct keel_job *job;

	reset();
	keel_retry_policy_default(&rp);
	rp.initial_ns = MS;
	rp.max_ns = 2 * MS;
	rp.max_attempts = 3;
	rp.jitter = KEEL_RETRY_JITTER_NONE;
	g_ex = new_ex(loop, 2, 4, KEEL_EXEC_REJECT);
	/* 0 fails twice, then succeeds on its third and last attempt. */
	g_args[0].fail_times = 2;
	g_args[0].result = 7;
	o = jopts(0, KEEL_PRIO_NORMAL);
	o.retry = &rp;
	cr_assert_eq(keel_executor_try_submit(g_ex, &o, &job), 0);
	await_later(loop, job, 0);
	/* 1 always fails: three attempts, then its error. */
	g_args[1].fail_times = 100;
	o = jopts(1, KEEL_PRIO_NORMAL);
	o.retry = &rp;
	cr_assert_eq(keel_executor_try_submit(g_ex, &o, &job), 0);
	await_later(loop, job, 1);
	kt_loop_run(loop);
	cr_expect_eq(g_res[0], 7);
	cr_expect_eq(g_args[0].attempts, 3);
	cr_expect_eq(g_res[1], -EAGAIN);
	cr_expect_eq(g_args[1].attempts, 3);
	cr_expect_eq(stats().retried, 4);
	cr_expect_eq(stats().completed, 1);
	cr_expect_eq(stats().failed, 1);
	keel_executor_free(g_ex);
	keel_loop_destroy(loop);
}

/* Shuts the executor down after `delay`, then joins it. */
struct stopper {
	struct keel_task task;
	uint64_t delay;
	enum keel_exec_shutdown how;
};

static int g_join_res, g_after_submit;

static int stopper_step(struct keel_task *t)
{
	struct stopper *s = keel_container_of(t, struct stopper, task);

	KEEL_BEGIN(t);
	KEEL_AWAIT(t, keel_sleep(t, s->delay));
	keel_executor_shutdown(g_ex, s->how);
	g_after_submit = keel_executor_try_submit(
	    g_ex, &(struct keel_job_opts){.fn = job_fn, .arg = &g_args[15]},
	    NULL);
	KEEL_AWAIT(t, keel_executor_join(t, g_ex));
	g_join_res = keel_res(t);
	KEEL_END(t);
}

static KEEL_TASK_TYPE(stopper_task, struct stopper, task, stopper_step);

static void shutdown_case(enum keel_exec_shutdown how)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct stopper *s;

	reset();
	g_join_res = g_after_submit = NOT_DONE;
	g_ex = new_ex(loop, 1, 8, KEEL_EXEC_REJECT);
	for (int i = 0; i < 6; i++) {
		g_args[i].sleep_ns = (i == 0 ? 50 : 1) * MS;
		/* Half awaited, half detached: both must be freed. */
		if (i % 2)
			cr_assert_eq(keel_executor_try_submit(
					 g_ex,
					 &(struct keel_job_opts){
					     .fn = job_fn, .arg = &g_args[i]},
					 NULL),
				     0);
		else
			submit_now(loop, i, KEEL_PRIO_NORMAL, 0);
	}
	s = kt_spawn(loop, &stopper_task, KEEL_PRIO_NORMAL);
	s->delay = 5 * MS;
	s->how = how;
	kt_loop_run(loop);
	cr_expect_eq(g_join_res, 0);
	cr_expect_eq(g_after_submit, -EPIPE);
	cr_expect_eq(stats().queued, 0);
	cr_expect_eq(stats().running, 0);
	if (how == KEEL_EXEC_CANCEL) {
		cr_expect_eq(g_res[0], -ECANCELED); /* cut while running */
		cr_expect_eq(g_res[2], -ECANCELED);
		cr_expect_eq(g_res[4], -ECANCELED);
		for (int i = 1; i < 6; i++)
			cr_expect_eq(g_args[i].attempts, 0);
		cr_expect_eq(stats().cancelled, 5);
	} else {
		for (int i = 0; i < 6; i++) {
			cr_expect_eq(g_args[i].attempts, 1);
			if (!(i % 2))
				cr_expect_eq(g_res[i], 0);
		}
		cr_expect_eq(stats().completed, 6);
	}
	keel_executor_free(g_ex);
	keel_loop_destroy(loop);
}

Test(executor, shutdown_cancel_fails_queued_jobs, .timeout = 10)
{
	shutdown_case(KEEL_EXEC_CANCEL);
}

Test(executor, shutdown_drain_runs_queued_jobs, .timeout = 10)
{
	shutdown_case(KEEL_EXEC_DRAIN);
}

/* Frees the executor while a job runs: the job is cancelled, and the
 * executor's memory goes when it ends (ASan checks). */
struct freer {
	struct keel_task task;
};

static int freer_step(struct keel_task *t)
{
	KEEL_BEGIN(t);
	KEEL_AWAIT(t, keel_sleep(t, 2 * MS));
	keel_executor_free(g_ex);
	g_ex = NULL;
	KEEL_END(t);
}

static KEEL_TASK_TYPE(freer_task, struct freer, task, freer_step);

Test(executor, free_with_a_job_running, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);

	reset();
	g_ex = new_ex(loop, 1, 4, KEEL_EXEC_REJECT);
	g_args[0].sleep_ns = 10000 * MS;
	submit_now(loop, 0, KEEL_PRIO_NORMAL, 0);
	submit_now(loop, 1, KEEL_PRIO_NORMAL, 0);
	kt_spawn(loop, &freer_task, KEEL_PRIO_NORMAL);
	kt_loop_run(loop);
	cr_expect_eq(g_res[0], -ECANCELED);
	cr_expect_eq(g_res[1], -ECANCELED);
	cr_expect_eq(g_args[1].attempts, 0);
	keel_loop_destroy(loop);
}

Test(executor, metrics_text, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	char buf[4096];
	size_t n;

	reset();
	g_ex = new_ex(loop, 1, 1, KEEL_EXEC_REJECT);
	submit_now(loop, 0, KEEL_PRIO_NORMAL, 0);
	submit_now(loop, 1, KEEL_PRIO_NORMAL, 0);
	submit_now(loop, 2, KEEL_PRIO_NORMAL, -EAGAIN);
	n = keel_executor_metrics_render(&g_ex, 1, buf, sizeof(buf));
	cr_assert_lt(n, sizeof(buf));
	cr_expect_not_null(strstr(buf,
				  "# TYPE keel_executor_jobs_rejected_total "
				  "counter\n"));
	cr_expect_not_null(strstr(
	    buf, "keel_executor_jobs_rejected_total{executor=\"t\"} 1\n"));
	cr_expect_not_null(
	    strstr(buf, "keel_executor_queued{executor=\"t\"} 1\n"));
	cr_expect_not_null(
	    strstr(buf, "keel_executor_running{executor=\"t\"} 1\n"));
	kt_loop_run(loop);
	keel_executor_metrics_render(&g_ex, 1, buf, sizeof(buf));
	cr_expect_not_null(strstr(
	    buf, "keel_executor_jobs_completed_total{executor=\"t\"} 2\n"));
	cr_expect_not_null(
	    strstr(buf, "keel_executor_running{executor=\"t\"} 0\n"));
	keel_executor_free(g_ex);
	keel_loop_destroy(loop);
}
