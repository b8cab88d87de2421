/* SPDX-License-Identifier: MIT */
/*
 * test_pipeline.c: keel/pipeline.h on the simulated kernel's virtual
 * clock. Each backpressure strategy under overload (a fast source, a slow
 * sink): BLOCK delivers everything in order, DROP_NEWEST keeps the first
 * items, DROP_OLDEST the last, WAIT drops after its deadline, BUFFER holds
 * its extra bound then overflows; each error strategy (stop, skip, retry,
 * retry exhausted, breaker); an ordered stage of 4 workers with random
 * delays keeps the input order (and an unordered one does not, so the
 * check can fail); cancellation mid-stream frees every item; the
 * Prometheus text. Every item is a malloc'd int freed by the sink or
 * on_drop (so LSan sees a lost one), and every test checks that the
 * counters add up to what the source produced.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <keel.h>
#include <keel/pipeline.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "helpers/keel_test.h"

#define MS	  1000000ull
#define MAX_ITEMS 1024

static struct keel_sim *g_sim;

static struct keel_loop *sim_setup(void)
{
	struct keel_sim_opts o = {.seed = 7};
	struct keel_loop *loop;

	cr_assert_eq(keel_sim_create(&g_sim, &o), 0);
	cr_assert_eq(keel_sim_loop_create(g_sim, &loop, NULL), 0);
	return loop;
}

static void sim_teardown(struct keel_loop *loop)
{
	char why[128];

	keel_loop_destroy(loop);
	cr_assert_eq(keel_sim_check(g_sim, why, sizeof(why)), 0, "%s", why);
	keel_sim_destroy(g_sim);
}

/* What the test asks of the source and the stages. */
enum fail_mode {
	FAIL_NONE,
	FAIL_MOD5,  /* items whose value % 5 == 0: -EIO */
	FAIL_TWICE, /* every item's first two attempts: -EAGAIN */
	FAIL_AGAIN, /* every attempt: -EAGAIN */
	FAIL_IO,    /* every attempt: -EIO */
};

static struct {
	int n;		     /* items the source makes; 0: no end */
	uint64_t src_sleep;  /* before each item */
	uint64_t sink_sleep; /* before each item */
	bool random_delay;   /* the middle stage sleeps 0-3 ms per item */
	enum fail_mode fail;
	int res; /* keel_pipeline_run's */
	int ndelivered;
	int delivered[MAX_ITEMS];
	int freed; /* items on_drop had */
} g;

static struct keel_pipeline *g_p;

static void drop_item(void *item, void *arg)
{
	(void)arg;
	g.freed++;
	free(item);
}

struct src_state {
	int next;
};

static int src_fn(struct keel_task *t, struct keel_pipe_ctx *ctx)
{
	struct src_state *s = ctx->state;
	int *item;

	KEEL_BEGIN(&ctx->r);
	if (g.src_sleep) {
		KEEL_AWAIT(&ctx->r, keel_sleep(t, g.src_sleep));
		if (keel_res(t) < 0)
			KEEL_ROUTINE_RETURN(&ctx->r, t, keel_res(t));
	}
	if (g.n && s->next >= g.n)
		KEEL_ROUTINE_RETURN(&ctx->r, t, KEEL_PIPE_END);
	item = malloc(sizeof(*item));
	if (!item)
		KEEL_ROUTINE_RETURN(&ctx->r, t, -ENOMEM);
	*item = ++s->next;
	ctx->out = item;
	KEEL_ROUTINE_RETURN(&ctx->r, t, 0);
}

static uint64_t delay_of(int v)
{
	return (((uint32_t)v * 2654435761u) >> 13) % 4 * MS;
}

static int work_fn(struct keel_task *t, struct keel_pipe_ctx *ctx)
{
	int v = *(int *)ctx->in;

	KEEL_BEGIN(&ctx->r);
	if (g.random_delay) {
		KEEL_AWAIT(&ctx->r, keel_sleep(t, delay_of(*(int *)ctx->in)));
		if (keel_res(t) < 0)
			KEEL_ROUTINE_RETURN(&ctx->r, t, keel_res(t));
		v = *(int *)ctx->in;
	}
	if ((g.fail == FAIL_MOD5 && v % 5 == 0) || g.fail == FAIL_IO)
		KEEL_ROUTINE_RETURN(&ctx->r, t, -EIO);
	if ((g.fail == FAIL_TWICE && ctx->attempt <= 2) || g.fail == FAIL_AGAIN)
		KEEL_ROUTINE_RETURN(&ctx->r, t, -EAGAIN);
	ctx->out = ctx->in;
	KEEL_ROUTINE_RETURN(&ctx->r, t, 0);
}

static int sink_fn(struct keel_task *t, struct keel_pipe_ctx *ctx)
{
	KEEL_BEGIN(&ctx->r);
	if (g.sink_sleep) {
		KEEL_AWAIT(&ctx->r, keel_sleep(t, g.sink_sleep));
		if (keel_res(t) < 0)
			KEEL_ROUTINE_RETURN(&ctx->r, t, keel_res(t));
	}
	if (g.ndelivered < MAX_ITEMS)
		g.delivered[g.ndelivered++] = *(int *)ctx->in;
	free(ctx->in);
	KEEL_ROUTINE_RETURN(&ctx->r, t, 0);
}

struct driver {
	struct keel_task task;
};

static int driver_step(struct keel_task *t)
{
	KEEL_BEGIN(t);
	KEEL_AWAIT_CALL(t, keel_pipeline_run(t, g_p));
	g.res = keel_res(t);
	KEEL_END(t);
}

static KEEL_TASK_TYPE(driver_task, struct driver, task, driver_step);

/* Cancels the pipeline after `after` ns. */
struct canceller {
	struct keel_task task;
	uint64_t after;
};

static int canceller_step(struct keel_task *t)
{
	struct canceller *c = keel_container_of(t, struct canceller, task);

	KEEL_BEGIN(t);
	KEEL_AWAIT(t, keel_sleep(t, c->after));
	keel_pipeline_cancel(g_p);
	KEEL_END(t);
}

static KEEL_TASK_TYPE(canceller_task, struct canceller, task, canceller_step);

/* Cancels token `tok` after `after` ns. */
struct token_canceller {
	struct keel_task task;
	struct keel_token *tok;
	uint64_t after;
};

static int token_canceller_step(struct keel_task *t)
{
	struct token_canceller *c =
	    keel_container_of(t, struct token_canceller, task);

	KEEL_BEGIN(t);
	KEEL_AWAIT(t, keel_sleep(t, c->after));
	keel_token_cancel(c->tok);
	KEEL_END(t);
}

static KEEL_TASK_TYPE(token_canceller_task, struct token_canceller, task,
		      token_canceller_step);

static struct keel_loop *setup(void)
{
	struct keel_loop *loop = sim_setup();
	struct keel_pipeline_opts o = {
	    .name = "p",
	    .source = src_fn,
	    .source_state = sizeof(struct src_state),
	    .on_drop = drop_item,
	};

	memset(&g, 0, sizeof(g));
	g.res = 1;
	cr_assert_eq(keel_pipeline_new(loop, &o, &g_p), 0);
	return loop;
}

static void run(struct keel_loop *loop)
{
	kt_spawn(loop, &driver_task, KEEL_PRIO_NORMAL);
	cr_assert_eq(keel_sim_run(g_sim, 0), 0);
	cr_assert_neq(g.res, 1, "the run did not end");
}

static struct keel_pipe_stage_stats stats(uint32_t stage)
{
	struct keel_pipe_stage_stats s;

	cr_assert_eq(keel_pipeline_stage_stats(g_p, stage, &s), 0);
	return s;
}

/* Every item produced was delivered or counted (and freed). */
static void expect_accounted(void)
{
	struct keel_pipe_stage_stats src = stats(KEEL_PIPE_SOURCE);
	unsigned n = keel_pipeline_stages(g_p);
	uint64_t lost = src.abandoned;

	for (unsigned i = 0; i < n; i++) {
		struct keel_pipe_stage_stats s = stats(i);

		lost += s.dropped + s.timed_out + s.failed + s.abandoned;
		cr_expect_eq(s.depth, 0);
	}
	cr_expect_eq(stats(n - 1).processed, (uint64_t)g.ndelivered);
	cr_expect_eq(src.processed, (uint64_t)g.ndelivered + lost,
		     "produced %llu, delivered %d, counted %llu",
		     (unsigned long long)src.processed, g.ndelivered,
		     (unsigned long long)lost);
	cr_expect_eq((uint64_t)g.freed, lost, "freed %d, counted %llu", g.freed,
		     (unsigned long long)lost);
}

static void finish(struct keel_loop *loop)
{
	keel_pipeline_free(g_p);
	g_p = NULL;
	sim_teardown(loop);
}

static void add_sink(uint32_t queue, enum keel_pipe_backpressure bp,
		     uint64_t wait_ns)
{
	struct keel_pipe_stage_opts s = {
	    .name = "sink",
	    .fn = sink_fn,
	    .queue = queue,
	    .backpressure = bp,
	    .wait_ns = wait_ns,
	};

	int n = (int)keel_pipeline_stages(g_p);

	cr_assert_eq(keel_pipeline_add_stage(g_p, &s), n);
}

/* ---- backpressure under overload ---------------------------------------- */

Test(pipeline, block_delivers_everything_in_order_to_a_slow_sink, .timeout = 30)
{
	struct keel_loop *loop = setup();

	g.n = 20;
	g.sink_sleep = 5 * MS;
	add_sink(2, KEEL_PIPE_BLOCK, 0);
	run(loop);
	cr_expect_eq(g.res, 0);
	cr_assert_eq(g.ndelivered, 20);
	for (int i = 0; i < 20; i++)
		cr_expect_eq(g.delivered[i], i + 1);
	cr_expect_gt(stats(0).backpressure, 0);
	cr_expect_eq(stats(0).depth_max, 2);
	cr_expect_eq(stats(KEEL_PIPE_SOURCE).emitted, 20);
	expect_accounted();
	finish(loop);
}

Test(pipeline, drop_newest_keeps_the_first_items, .timeout = 30)
{
	struct keel_loop *loop = setup();

	g.n = 20;
	g.sink_sleep = 5 * MS;
	add_sink(4, KEEL_PIPE_DROP_NEWEST, 0);
	run(loop);
	cr_expect_eq(g.res, 0);
	/* The source made all 20 in one step: the input kept the first 4
	 * (5 if the sink took one first). */
	cr_assert(g.ndelivered == 4 || g.ndelivered == 5, "%d", g.ndelivered);
	for (int i = 0; i < g.ndelivered; i++)
		cr_expect_eq(g.delivered[i], i + 1);
	cr_expect_eq(stats(0).dropped, (uint64_t)(20 - g.ndelivered));
	cr_expect_eq(stats(0).backpressure, stats(0).dropped);
	expect_accounted();
	finish(loop);
}

Test(pipeline, drop_oldest_keeps_the_last_items, .timeout = 30)
{
	struct keel_loop *loop = setup();

	g.n = 20;
	g.sink_sleep = 5 * MS;
	add_sink(4, KEEL_PIPE_DROP_OLDEST, 0);
	run(loop);
	cr_expect_eq(g.res, 0);
	cr_assert(g.ndelivered == 4 || g.ndelivered == 5, "%d", g.ndelivered);
	for (int i = 0; i < 4; i++)
		cr_expect_eq(g.delivered[g.ndelivered - 4 + i], 17 + i);
	cr_expect_eq(stats(0).dropped, (uint64_t)(20 - g.ndelivered));
	expect_accounted();
	finish(loop);
}

Test(pipeline, wait_drops_an_item_after_its_deadline, .timeout = 30)
{
	struct keel_loop *loop = setup();
	struct keel_pipe_stage_stats s;

	g.n = 20;
	g.sink_sleep = 10 * MS;
	add_sink(2, KEEL_PIPE_WAIT, 3 * MS);
	run(loop);
	cr_expect_eq(g.res, 0);
	s = stats(0);
	/* Room comes every 10 ms; a send waits 3 ms: most time out. */
	cr_expect_gt(s.timed_out, 0);
	cr_expect_gt(g.ndelivered, 2);
	cr_expect_eq(s.dropped, 0);
	cr_expect_eq(s.timed_out + (uint64_t)g.ndelivered, 20);
	for (int i = 1; i < g.ndelivered; i++)
		cr_expect_gt(g.delivered[i], g.delivered[i - 1]);
	expect_accounted();
	finish(loop);
}

Test(pipeline, buffer_holds_its_bound_then_overflows, .timeout = 30)
{
	struct keel_loop *loop = setup();
	struct keel_pipe_stage_opts s = {
	    .name = "sink",
	    .fn = sink_fn,
	    .queue = 2,
	    .backpressure = KEEL_PIPE_BUFFER,
	    .buffer = 3,
	    .overflow = KEEL_PIPE_DROP_NEWEST,
	};

	g.n = 20;
	g.sink_sleep = 5 * MS;
	cr_assert_eq(keel_pipeline_add_stage(g_p, &s), 0);
	run(loop);
	cr_expect_eq(g.res, 0);
	cr_assert(g.ndelivered == 5 || g.ndelivered == 6, "%d", g.ndelivered);
	for (int i = 0; i < g.ndelivered; i++)
		cr_expect_eq(g.delivered[i], i + 1);
	cr_expect_eq(stats(0).depth_max, 5);
	cr_expect_eq(stats(0).dropped, (uint64_t)(20 - g.ndelivered));
	expect_accounted();
	finish(loop);
}

/* ---- error strategies --------------------------------------------------- */

static void add_work(enum keel_pipe_on_error on_error, uint32_t concurrency,
		     enum keel_pipe_order order, struct keel_breaker *br)
{
	struct keel_pipe_stage_opts s = {
	    .name = "work",
	    .fn = work_fn,
	    .concurrency = concurrency,
	    .queue = 8,
	    .on_error = on_error,
	    .breaker = br,
	    .order = order,
	    .retry =
		{
		    .initial_ns = 1 * MS,
		    .max_ns = 4 * MS,
		    .multiplier = 2.0,
		    .max_attempts = 3,
		    .jitter = KEEL_RETRY_JITTER_NONE,
		},
	};

	cr_assert_eq(keel_pipeline_add_stage(g_p, &s), 0);
}

Test(pipeline, skip_counts_the_failed_items_and_goes_on, .timeout = 30)
{
	struct keel_loop *loop = setup();

	g.n = 20;
	g.fail = FAIL_MOD5;
	add_work(KEEL_PIPE_SKIP, 1, KEEL_PIPE_ORDERED, NULL);
	add_sink(4, KEEL_PIPE_BLOCK, 0);
	run(loop);
	cr_expect_eq(g.res, 0);
	cr_expect_eq(g.ndelivered, 16);
	for (int i = 0; i < g.ndelivered; i++)
		cr_expect_neq(g.delivered[i] % 5, 0);
	cr_expect_eq(stats(0).errors, 4);
	cr_expect_eq(stats(0).failed, 4);
	cr_expect_eq(stats(0).emitted, 16);
	expect_accounted();
	finish(loop);
}

Test(pipeline, stop_ends_the_pipeline_with_the_error, .timeout = 30)
{
	struct keel_loop *loop = setup();

	g.n = 20;
	g.fail = FAIL_MOD5;
	add_work(KEEL_PIPE_STOP, 1, KEEL_PIPE_ORDERED, NULL);
	add_sink(4, KEEL_PIPE_BLOCK, 0);
	run(loop);
	cr_expect_eq(g.res, -EIO);
	cr_expect_eq(stats(0).failed, 1);
	cr_expect_lt(g.ndelivered, 5);
	for (int i = 0; i < g.ndelivered; i++)
		cr_expect_eq(g.delivered[i], i + 1);
	expect_accounted();
	finish(loop);
}

Test(pipeline, retry_tries_again_with_backoff, .timeout = 30)
{
	struct keel_loop *loop = setup();

	g.n = 20;
	g.fail = FAIL_TWICE;
	add_work(KEEL_PIPE_RETRY, 2, KEEL_PIPE_ORDERED, NULL);
	add_sink(4, KEEL_PIPE_BLOCK, 0);
	run(loop);
	cr_expect_eq(g.res, 0);
	cr_assert_eq(g.ndelivered, 20);
	for (int i = 0; i < 20; i++)
		cr_expect_eq(g.delivered[i], i + 1);
	cr_expect_eq(stats(0).errors, 40);
	cr_expect_eq(stats(0).retries, 40);
	cr_expect_eq(stats(0).failed, 0);
	expect_accounted();
	finish(loop);
}

Test(pipeline, retry_gives_up_after_its_attempts, .timeout = 30)
{
	struct keel_loop *loop = setup();

	g.n = 10;
	g.fail = FAIL_AGAIN;
	add_work(KEEL_PIPE_RETRY, 1, KEEL_PIPE_ORDERED, NULL);
	add_sink(4, KEEL_PIPE_BLOCK, 0);
	run(loop);
	cr_expect_eq(g.res, 0);
	cr_expect_eq(g.ndelivered, 0);
	cr_expect_eq(stats(0).errors, 30); /* 3 attempts each */
	cr_expect_eq(stats(0).retries, 20);
	cr_expect_eq(stats(0).failed, 10);
	expect_accounted();
	finish(loop);
}

Test(pipeline, breaker_fails_items_fast_while_open, .timeout = 30)
{
	struct keel_loop *loop = setup();
	struct keel_breaker br;
	struct keel_breaker_opts bo;

	keel_breaker_opts_default(&bo);
	bo.failure_threshold = 3;
	bo.open_ns = 3600000 * MS;
	cr_assert_eq(keel_breaker_init(&br, &bo), 0);
	g.n = 20;
	g.fail = FAIL_IO;
	add_work(KEEL_PIPE_BREAKER, 1, KEEL_PIPE_ORDERED, &br);
	add_sink(4, KEEL_PIPE_BLOCK, 0);
	run(loop);
	cr_expect_eq(g.res, 0);
	cr_expect_eq(g.ndelivered, 0);
	cr_expect_eq(stats(0).errors, 3);
	cr_expect_eq(stats(0).rejected, 17);
	cr_expect_eq(stats(0).failed, 20);
	cr_expect_eq(keel_breaker_state(&br), KEEL_BREAKER_OPEN);
	expect_accounted();
	finish(loop);
}

/* ---- order -------------------------------------------------------------- */

static bool in_order(void)
{
	for (int i = 0; i < g.ndelivered; i++)
		if (g.delivered[i] != i + 1)
			return false;
	return true;
}

Test(pipeline, ordered_stage_of_4_keeps_the_input_order, .timeout = 30)
{
	struct keel_loop *loop = setup();

	g.n = 200;
	g.random_delay = true;
	add_work(KEEL_PIPE_SKIP, 4, KEEL_PIPE_ORDERED, NULL);
	add_sink(4, KEEL_PIPE_BLOCK, 0);
	run(loop);
	cr_expect_eq(g.res, 0);
	cr_expect_eq(g.ndelivered, 200);
	cr_expect(in_order());
	expect_accounted();
	finish(loop);
}

/* The same unordered does reorder: the check above can fail. */
Test(pipeline, unordered_stage_of_4_passes_items_on_as_done, .timeout = 30)
{
	struct keel_loop *loop = setup();
	bool seen[201] = {0};

	g.n = 200;
	g.random_delay = true;
	add_work(KEEL_PIPE_SKIP, 4, KEEL_PIPE_UNORDERED, NULL);
	add_sink(4, KEEL_PIPE_BLOCK, 0);
	run(loop);
	cr_expect_eq(g.res, 0);
	cr_assert_eq(g.ndelivered, 200);
	cr_expect(!in_order());
	for (int i = 0; i < 200; i++)
		seen[g.delivered[i]] = true;
	for (int i = 1; i <= 200; i++)
		cr_expect(seen[i], "item %d lost", i);
	expect_accounted();
	finish(loop);
}

/* A concurrent sink passes nothing on: its workers take items without a
 * reorder window (which would never move). */
Test(pipeline, concurrent_sink_takes_every_item, .timeout = 30)
{
	struct keel_loop *loop = setup();
	struct keel_pipe_stage_opts s = {
	    .name = "sink",
	    .fn = sink_fn,
	    .concurrency = 3,
	    .queue = 2,
	};

	g.n = 30;
	g.sink_sleep = 2 * MS;
	cr_assert_eq(keel_pipeline_add_stage(g_p, &s), 0);
	run(loop);
	cr_expect_eq(g.res, 0);
	cr_expect_eq(g.ndelivered, 30);
	expect_accounted();
	finish(loop);
}

/* ---- cancellation ------------------------------------------------------- */

Test(pipeline, cancel_mid_stream_stops_every_stage_and_frees_all, .timeout = 30)
{
	struct keel_loop *loop = setup();
	struct canceller *c;

	g.n = 0; /* no end */
	g.src_sleep = 1 * MS;
	g.sink_sleep = 5 * MS;
	g.random_delay = true;
	add_work(KEEL_PIPE_SKIP, 3, KEEL_PIPE_ORDERED, NULL);
	add_sink(4, KEEL_PIPE_BLOCK, 0);
	c = kt_spawn(loop, &canceller_task, KEEL_PRIO_NORMAL);
	c->after = 100 * MS;
	run(loop);
	cr_expect_eq(g.res, -ECANCELED);
	cr_expect_gt(g.ndelivered, 5);
	for (int i = 0; i < g.ndelivered; i++)
		cr_expect_eq(g.delivered[i], i + 1);
	cr_expect_gt(stats(0).abandoned + stats(1).abandoned +
			 stats(KEEL_PIPE_SOURCE).abandoned,
		     0);
	expect_accounted();
	finish(loop);
}

/* Cancelling the token the running task observes stops the pipeline. */
Test(pipeline, cancelling_the_running_tasks_token_stops_the_pipeline,
     .timeout = 30)
{
	struct keel_loop *loop = setup();
	struct keel_token *tok;
	struct driver *d;
	struct token_canceller *c;

	g.n = 0;
	g.src_sleep = 1 * MS;
	g.sink_sleep = 2 * MS;
	add_sink(4, KEEL_PIPE_BLOCK, 0);
	cr_assert_eq(keel_token_new(loop, NULL, &tok), 0);
	d = kt_spawn(loop, &driver_task, KEEL_PRIO_NORMAL);
	cr_assert_eq(keel_task_set_token(keel_task_of(&driver_task, d), tok),
		     0);
	c = kt_spawn(loop, &token_canceller_task, KEEL_PRIO_NORMAL);
	c->tok = tok;
	c->after = 50 * MS;
	cr_assert_eq(keel_sim_run(g_sim, 0), 0);
	cr_expect_eq(g.res, -ECANCELED);
	cr_expect_gt(g.ndelivered, 5);
	expect_accounted();
	keel_token_release(tok);
	finish(loop);
}

Test(pipeline, cancelled_before_it_runs_returns_at_once, .timeout = 30)
{
	struct keel_loop *loop = setup();

	g.n = 5;
	add_sink(4, KEEL_PIPE_BLOCK, 0);
	keel_pipeline_cancel(g_p);
	run(loop);
	cr_expect_eq(g.res, -ECANCELED);
	cr_expect_eq(stats(KEEL_PIPE_SOURCE).processed, 0);
	finish(loop);
}

/* On a real loop (io_uring or epoll), with real short sleeps. */
Test(pipeline, real_loop_delivers_everything_through_two_stages, .timeout = 30)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_pipeline_opts o = {
	    .name = "real",
	    .source = src_fn,
	    .source_state = sizeof(struct src_state),
	    .on_drop = drop_item,
	};

	memset(&g, 0, sizeof(g));
	g.res = 1;
	g.n = 50;
	g.random_delay = true;
	g.sink_sleep = 100000; /* 0.1 ms */
	cr_assert_eq(keel_pipeline_new(loop, &o, &g_p), 0);
	add_work(KEEL_PIPE_SKIP, 4, KEEL_PIPE_ORDERED, NULL);
	add_sink(2, KEEL_PIPE_BLOCK, 0);
	kt_spawn(loop, &driver_task, KEEL_PRIO_NORMAL);
	kt_loop_run(loop);
	cr_expect_eq(g.res, 0);
	cr_expect_eq(g.ndelivered, 50);
	cr_expect(in_order());
	expect_accounted();
	keel_pipeline_free(g_p);
	g_p = NULL;
	keel_loop_destroy(loop);
}

/* ---- set-up errors and metrics ------------------------------------------ */

Test(pipeline, bad_options_are_refused, .timeout = 30)
{
	struct keel_loop *loop = setup();
	struct keel_pipe_stage_opts s = {.fn = sink_fn};

	s.backpressure = KEEL_PIPE_BUFFER;
	s.overflow = KEEL_PIPE_BUFFER;
	cr_expect_eq(keel_pipeline_add_stage(g_p, &s), -EINVAL);
	s.backpressure = KEEL_PIPE_BLOCK;
	s.on_error = KEEL_PIPE_BREAKER;
	cr_expect_eq(keel_pipeline_add_stage(g_p, &s), -EINVAL);
	s.on_error = KEEL_PIPE_RETRY; /* a zero retry policy */
	cr_expect_eq(keel_pipeline_add_stage(g_p, &s), -EINVAL);
	s.on_error = KEEL_PIPE_SKIP;
	s.fn = NULL;
	cr_expect_eq(keel_pipeline_add_stage(g_p, &s), -EINVAL);
	cr_expect_eq(keel_pipeline_stages(g_p), 0);
	run(loop); /* no stage */
	cr_expect_eq(g.res, -EINVAL);
	finish(loop);
}

Test(pipeline, prometheus_text_has_every_stage_counter, .timeout = 30)
{
	struct keel_loop *loop = setup();
	static char buf[16384];
	size_t need;

	g.n = 20;
	g.fail = FAIL_MOD5;
	g.sink_sleep = 1 * MS;
	add_work(KEEL_PIPE_SKIP, 2, KEEL_PIPE_ORDERED, NULL);
	add_sink(2, KEEL_PIPE_BLOCK, 0);
	run(loop);
	cr_expect_eq(g.res, 0);
	need = keel_pipeline_metrics_render(&g_p, 1, buf, sizeof(buf));
	cr_assert_lt(need, sizeof(buf));
	cr_expect_eq(keel_pipeline_metrics_render(&g_p, 1, NULL, 0), need);
	cr_expect(
	    strstr(buf, "# TYPE keel_pipeline_processed_total counter\n"));
	cr_expect(strstr(buf, "keel_pipeline_processed_total{pipeline=\"p\","
			      "stage=\"source\"} 20\n"),
		  "%s", buf);
	cr_expect(strstr(buf, "keel_pipeline_processed_total{pipeline=\"p\","
			      "stage=\"sink\"} 16\n"));
	cr_expect(strstr(buf, "keel_pipeline_failed_total{pipeline=\"p\","
			      "stage=\"work\"} 4\n"));
	cr_expect(strstr(buf, "keel_pipeline_errors_total{pipeline=\"p\","
			      "stage=\"work\"} 4\n"));
	cr_expect(strstr(buf, "keel_pipeline_backpressure_total{pipeline=\"p\","
			      "stage=\"sink\"} "));
	cr_expect(strstr(buf, "keel_pipeline_dropped_total{pipeline=\"p\","
			      "stage=\"sink\"} 0\n"));
	cr_expect(strstr(buf, "keel_pipeline_queue_depth{pipeline=\"p\","
			      "stage=\"work\"} 0\n"));
	cr_expect(
	    strstr(buf, "# TYPE keel_pipeline_latency_seconds histogram\n"));
	cr_expect(strstr(buf, "keel_pipeline_latency_seconds_bucket{pipeline="
			      "\"p\",stage=\"sink\",le=\"+Inf\"} 16\n"));
	/* Each sink call slept 1 ms: 16 ms in all. */
	cr_expect(strstr(buf, "keel_pipeline_latency_seconds_sum{pipeline="
			      "\"p\",stage=\"sink\"} 0.016"),
		  "%s", buf);
	cr_expect(strstr(buf, "keel_pipeline_latency_seconds_count{pipeline="
			      "\"p\",stage=\"work\"} 20\n"));
	expect_accounted();
	finish(loop);
}

/* Count the trace's stage-input events (mailbox events with an id from
 * 2^32): a minimal reader of the format in keel/trace.h. */
static void count_events(const char *path, uint64_t counts[32])
{
	FILE *f = fopen(path, "rb");
	unsigned char hdr[32];
	uint32_t rec[4];

	cr_assert(f);
	cr_assert_eq(fread(hdr, 1, sizeof(hdr), f), sizeof(hdr));
	cr_assert_eq(memcmp(hdr, KEEL_TRACE_MAGIC, 8), 0);
	while (fread(rec, sizeof(rec), 1, f) == 1) {
		if (rec[0] == KEEL_TRACE_REC_STRING) {
			cr_assert_eq(fseek(f, (rec[2] + 7) / 8 * 8, SEEK_CUR),
				     0);
			continue;
		}
		if (rec[0] != KEEL_TRACE_REC_EVENTS)
			continue;
		for (uint32_t i = 0; i < rec[2]; i++) {
			struct keel_trace_event ev;

			cr_assert_eq(fread(&ev, sizeof(ev), 1, f), 1);
			if (ev.type < 32 && ev.a >= 1ull << 32)
				counts[ev.type]++;
		}
	}
	fclose(f);
}

Test(pipeline, trace_has_an_event_per_item_taken_and_per_drop, .timeout = 30)
{
	char dir[256], path[300];
	uint64_t counts[32] = {0};
	struct keel_loop *loop;

	kt_tmpdir_make(dir, sizeof(dir));
	snprintf(path, sizeof(path), "%s/trace", dir);
	cr_assert_eq(keel_trace_start(path), 0);
	loop = setup();
	g.n = 20;
	g.sink_sleep = 5 * MS;
	add_sink(4, KEEL_PIPE_DROP_NEWEST, 0);
	run(loop);
	cr_expect_eq(g.res, 0);
	expect_accounted();
	finish(loop);
	cr_assert_eq(keel_trace_stop(), 0);
	count_events(path, counts);
	kt_tmpdir_remove(dir);
	cr_expect_eq(counts[KEEL_EV_MB_RECV], (uint64_t)g.ndelivered);
	cr_expect_eq(counts[KEEL_EV_MB_DROP], (uint64_t)(20 - g.ndelivered));
	cr_expect_eq(counts[KEEL_EV_MB_FULL], (uint64_t)(20 - g.ndelivered));
}
