/* SPDX-License-Identifier: MIT */
/*
 * test_ticker.c: keel_ticker_* (keel/sync.h) on the simulated kernel's
 * virtual clock, so that every tick's time is exact: on-time ticks, each
 * missed-tick policy after one late wait (what the late wait and the ones
 * after it return, and when), a cancelled wait, a second waiter, reset,
 * bad arguments.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <keel.h>

#include "helpers/keel_test.h"

#define MS 1000000ull

struct tick_log {
	int n;
	int res[16];
	uint64_t at[16]; /* virtual ns after t0 */
};

static struct keel_ticker *g_tk;
static uint64_t g_t0;

/* Wait once on time, sleep `late` ns, then wait `waits` times more. */
struct ticking {
	struct keel_task task;
	uint64_t late;
	int waits;
	int i;
	struct tick_log *log;
};

static void log_tick(struct tick_log *l, int res, uint64_t now)
{
	l->res[l->n] = res;
	l->at[l->n] = now - g_t0;
	l->n++;
}

static int ticking_step(struct keel_task *t)
{
	struct ticking *k = keel_container_of(t, struct ticking, task);

	KEEL_BEGIN(t);
	KEEL_AWAIT(t, keel_ticker_wait(t, g_tk));
	log_tick(k->log, keel_res(t), keel_loop_now(keel_task_loop(t)));
	if (k->late)
		KEEL_AWAIT(t, keel_sleep(t, k->late));
	for (k->i = 0; k->i < k->waits; k->i++) {
		KEEL_AWAIT(t, keel_ticker_wait(t, g_tk));
		log_tick(k->log, keel_res(t), keel_loop_now(keel_task_loop(t)));
	}
	KEEL_END(t);
}

static KEEL_TASK_TYPE(ticking_task, struct ticking, task, ticking_step);

static struct keel_sim *g_sim;

static struct keel_loop *sim_setup(void)
{
	struct keel_sim_opts o = {.seed = 3};
	struct keel_loop *loop;

	cr_assert_eq(keel_sim_create(&g_sim, &o), 0);
	cr_assert_eq(keel_sim_loop_create(g_sim, &loop, NULL), 0);
	g_t0 = keel_sim_now(g_sim);
	return loop;
}

static void sim_teardown(struct keel_loop *loop)
{
	char why[128];

	keel_loop_destroy(loop);
	cr_assert_eq(keel_sim_check(g_sim, why, sizeof(why)), 0, "%s", why);
	keel_sim_destroy(g_sim);
}

/* Ticks every 10 ms; one wait on time (at 10), a sleep to 35, `waits`. */
static struct keel_loop *run_late(enum keel_tick_policy policy, int waits,
				  struct tick_log *log)
{
	struct keel_loop *loop = sim_setup();
	struct ticking *k;

	cr_assert_eq(keel_ticker_new(loop, 10 * MS, policy, &g_tk), 0);
	k = kt_spawn(loop, &ticking_task, KEEL_PRIO_NORMAL);
	k->late = 25 * MS;
	k->waits = waits;
	k->log = log;
	cr_assert_eq(keel_sim_run(g_sim, 0), 0);
	cr_assert_eq(log->n, waits + 1);
	cr_expect_eq(log->res[0], 1);
	cr_expect_eq(log->at[0], 10 * MS);
	return loop;
}

Test(ticker, ticks_on_time_every_interval, .timeout = 10)
{
	struct keel_loop *loop = sim_setup();
	struct tick_log log = {0};
	struct ticking *k;

	cr_assert_eq(keel_ticker_new(loop, 7 * MS, KEEL_TICK_BURST, &g_tk), 0);
	k = kt_spawn(loop, &ticking_task, KEEL_PRIO_NORMAL);
	k->waits = 5;
	k->log = &log;
	cr_assert_eq(keel_sim_run(g_sim, 0), 0);
	for (int i = 0; i < 6; i++) {
		cr_expect_eq(log.res[i], 1, "tick %d: %d", i, log.res[i]);
		cr_expect_eq(log.at[i], 7 * MS * (uint64_t)(i + 1),
			     "tick %d at %llu", i,
			     (unsigned long long)log.at[i]);
	}
	cr_expect_eq(keel_ticker_missed(g_tk), 0);
	cr_expect_eq(kt_stats(loop).timers_armed, 0);
	keel_ticker_free(g_tk);
	sim_teardown(loop);
}

Test(ticker, burst_delivers_the_missed_ticks_back_to_back, .timeout = 10)
{
	struct tick_log log = {0};

	struct keel_loop *loop = run_late(KEEL_TICK_BURST, 3, &log);
	/* At 35: ticks 20 and 30 at once, one per wait; then 40 on time. */
	const uint64_t at[] = {10 * MS, 35 * MS, 35 * MS, 40 * MS};

	for (int i = 0; i < 4; i++) {
		cr_expect_eq(log.res[i], 1, "wait %d: %d", i, log.res[i]);
		cr_expect_eq(log.at[i], at[i], "wait %d at %llu", i,
			     (unsigned long long)log.at[i]);
	}
	cr_expect_eq(keel_ticker_missed(g_tk), 1); /* 20, 15 ms late */
	cr_expect_eq(keel_ticker_next(g_tk) - g_t0, 50 * MS);
	keel_ticker_free(g_tk);
	sim_teardown(loop);
}

Test(ticker, delay_folds_the_missed_ticks_and_slides_the_schedule,
     .timeout = 10)
{
	struct tick_log log = {0};
	struct keel_loop *loop = run_late(KEEL_TICK_DELAY, 2, &log);

	/* At 35: ticks 20 and 30 in one wait; the next one interval on. */
	cr_expect_eq(log.res[1], 2);
	cr_expect_eq(log.at[1], 35 * MS);
	cr_expect_eq(log.res[2], 1);
	cr_expect_eq(log.at[2], 45 * MS);
	cr_expect_eq(keel_ticker_missed(g_tk), 1);
	keel_ticker_free(g_tk);
	sim_teardown(loop);
}

Test(ticker, skip_folds_the_missed_ticks_and_keeps_the_schedule, .timeout = 10)
{
	struct tick_log log = {0};
	struct keel_loop *loop = run_late(KEEL_TICK_SKIP, 2, &log);

	/* At 35: ticks 20 and 30 in one wait; the next is 40, on the grid. */
	cr_expect_eq(log.res[1], 2);
	cr_expect_eq(log.at[1], 35 * MS);
	cr_expect_eq(log.res[2], 1);
	cr_expect_eq(log.at[2], 40 * MS);
	cr_expect_eq(keel_ticker_missed(g_tk), 1);
	keel_ticker_free(g_tk);
	sim_teardown(loop);
}

/* Cancels the waiting ticker task, then checks a new wait works. */
struct canceller {
	struct keel_task task;
	struct keel_task *victim;
};

static int g_busy; /* the frame is gone when the test looks */

static int canceller_step(struct keel_task *t)
{
	struct canceller *c = keel_container_of(t, struct canceller, task);

	KEEL_BEGIN(t);
	/* The victim waits: a second waiter is refused. */
	KEEL_AWAIT(t, keel_ticker_wait(t, g_tk));
	g_busy = keel_res(t);
	KEEL_AWAIT(t, keel_sleep(t, 3 * MS));
	keel_task_cancel(c->victim);
	KEEL_END(t);
}

static KEEL_TASK_TYPE(canceller_task, struct canceller, task, canceller_step);

Test(ticker, a_cancelled_wait_leaves_and_disarms, .timeout = 10)
{
	struct keel_loop *loop = sim_setup();
	struct tick_log log = {0};
	struct ticking *k;
	struct canceller *c;

	cr_assert_eq(keel_ticker_new(loop, 10 * MS, KEEL_TICK_SKIP, &g_tk), 0);
	k = kt_spawn(loop, &ticking_task, KEEL_PRIO_NORMAL);
	k->log = &log;
	c = kt_spawn(loop, &canceller_task, KEEL_PRIO_NORMAL);
	c->victim = keel_task_of(&ticking_task, k);
	cr_assert_eq(keel_sim_run(g_sim, 0), 0);
	cr_expect_eq(g_busy, -EBUSY);
	cr_assert_eq(log.n, 1);
	cr_expect_eq(log.res[0], -ECANCELED);
	cr_expect_eq(log.at[0], 3 * MS);
	/* Its timer went with the wait (the run ended at 3 ms, not 10). */
	cr_expect_eq(keel_sim_now(g_sim) - g_t0, 3 * MS);
	cr_expect_eq(kt_stats(loop).timers_armed, 0);
	keel_ticker_free(g_tk);
	sim_teardown(loop);
}

Test(ticker, reset_restarts_the_schedule_and_bad_arguments_fail, .timeout = 10)
{
	struct keel_loop *loop = sim_setup();
	struct keel_ticker *tk;

	cr_expect_eq(keel_ticker_new(loop, 0, KEEL_TICK_SKIP, &tk), -EINVAL);
	cr_expect_eq(keel_ticker_new(loop, 1, (enum keel_tick_policy)7, &tk),
		     -EINVAL);
	cr_assert_eq(keel_ticker_new(loop, 10 * MS, KEEL_TICK_SKIP, &tk), 0);
	cr_expect_eq(keel_ticker_next(tk) - g_t0, 10 * MS);
	keel_ticker_reset(tk);
	cr_expect_eq(keel_ticker_next(tk) - g_t0, 10 * MS);
	keel_ticker_free(tk);
	sim_teardown(loop);
}
