/* SPDX-License-Identifier: MIT */
/*
 * test_timer.c: the loop's timers. Deadline order, ties broken by arming
 * order (also among a million timers), cancel and re-arm, a callback that
 * re-arms its own timer, a deadline in the past, keel_sleep() sleeping at
 * least as long as asked (lower bounds only: no upper-bound timing), and a
 * sleep that goes away with the task that started it.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <keel.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "helpers/keel_test.h"

static struct kt_log g_log;

/*
 * Logs the timer's id (its arg) and counts fires before the deadline the
 * test recorded for that id, by the real clock.
 */
static int g_early;
static uint64_t g_deadline[128];

static void record_fire(struct keel_loop *loop, struct keel_timer *timer,
			void *arg)
{
	int id = (int)(intptr_t)arg;

	kt_log_push(&g_log, id);
	if (kt_now_ns() < g_deadline[id])
		g_early++;
}

Test(timer, timers_fire_in_deadline_order, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	/* delay in ms of timer i, armed in index order */
	const int delay[10] = {7, 2, 9, 1, 5, 10, 3, 8, 6, 4};
	struct keel_timer timers[10];
	uint64_t base = kt_now_ns();
	int want[10];

	for (int i = 0; i < 10; i++) {
		keel_timer_init(&timers[i], record_fire, (void *)(intptr_t)i);
		cr_assert_not(keel_timer_armed(&timers[i]));
		g_deadline[i] = base + KT_MS(delay[i]);
		cr_assert_eq(keel_timer_arm(loop, &timers[i], g_deadline[i]),
			     0);
		cr_assert(keel_timer_armed(&timers[i]));
		want[delay[i] - 1] = i;
	}
	cr_assert_eq(kt_stats(loop).timers_armed, 10);
	kt_loop_run(loop);
	kt_log_expect(&g_log, want, 10);
	cr_assert_eq(g_early, 0, "a timer fired before its deadline");
	for (int i = 0; i < 10; i++)
		cr_assert_not(keel_timer_armed(&timers[i]));
	cr_assert_eq(kt_stats(loop).timers_fired, 10);
	cr_assert_eq(kt_stats(loop).timers_armed, 0);
	keel_loop_destroy(loop);
}

Test(timer, timers_with_equal_deadlines_fire_in_arming_order, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	static struct keel_timer timers[100];
	uint64_t deadline = kt_now_ns() + KT_MS(2);
	int want[100];

	/* Arm in an order unlike the array's, so address order cannot pass. */
	for (int i = 0; i < 100; i++) {
		int idx = (i * 37) % 100;

		keel_timer_init(&timers[idx], record_fire,
				(void *)(intptr_t)idx);
		cr_assert_eq(keel_timer_arm(loop, &timers[idx], deadline), 0);
		want[i] = idx;
	}
	kt_loop_run(loop);
	kt_log_expect(&g_log, want, 100);
	keel_loop_destroy(loop);
}

Test(timer, cancel_prevents_firing_and_reports_whether_armed, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_timer victim, witness;

	keel_timer_init(&victim, record_fire, (void *)1);
	keel_timer_init(&witness, record_fire, (void *)2);
	cr_assert_not(keel_timer_cancel(loop, &victim), "never armed");
	cr_assert_eq(keel_timer_arm_after(loop, &victim, KT_MS(1)), 0);
	cr_assert_eq(keel_timer_arm_after(loop, &witness, KT_MS(3)), 0);
	cr_assert(keel_timer_cancel(loop, &victim));
	cr_assert_not(keel_timer_armed(&victim));
	cr_assert_not(keel_timer_cancel(loop, &victim), "cancelled twice");
	cr_assert_eq(kt_stats(loop).timers_armed, 1);
	kt_loop_run(loop);
	kt_log_expect(&g_log, (const int[]){2}, 1);
	/* A timer that has fired is no longer armed. */
	cr_assert_not(keel_timer_cancel(loop, &witness));
	keel_loop_destroy(loop);
}

Test(timer, rearming_moves_timer_and_it_fires_once, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_timer a, b, c;
	uint64_t base = kt_now_ns();
	const int want[] = {1, 2, 3};

	keel_timer_init(&a, record_fire, (void *)1);
	keel_timer_init(&b, record_fire, (void *)2);
	keel_timer_init(&c, record_fire, (void *)3);
	cr_assert_eq(keel_timer_arm(loop, &a, base + KT_MS(50)), 0);
	cr_assert_eq(keel_timer_arm(loop, &b, base + KT_MS(10)), 0);
	cr_assert_eq(keel_timer_arm(loop, &c, base + KT_MS(1)), 0);
	/* a moves earlier than b; c moves later than b. */
	cr_assert_eq(keel_timer_arm(loop, &a, base + KT_MS(1)), 0);
	cr_assert_eq(keel_timer_arm(loop, &c, base + KT_MS(20)), 0);
	cr_assert_eq(kt_stats(loop).timers_armed, 3);
	kt_loop_run(loop);
	kt_log_expect(&g_log, want, 3);
	cr_assert_eq(kt_stats(loop).timers_fired, 3);
	keel_loop_destroy(loop);
}

/* Re-arms itself 1 ms later until it has fired five times. */
static void rearm_self(struct keel_loop *loop, struct keel_timer *timer,
		       void *arg)
{
	int *count = arg;

	(*count)++;
	kt_log_push(&g_log, keel_timer_armed(timer));
	if (*count < 5 && keel_timer_arm_after(loop, timer, KT_MS(1)) != 0)
		kt_log_push(&g_log, -1);
}

Test(timer, callback_can_rearm_its_own_timer, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_timer timer;
	int count = 0;
	uint64_t t0 = kt_now_ns();

	keel_timer_init(&timer, rearm_self, &count);
	cr_assert_eq(keel_timer_arm_after(loop, &timer, KT_MS(1)), 0);
	kt_loop_run(loop);
	cr_assert_eq(count, 5);
	/* The timer is disarmed when its callback runs. */
	kt_log_expect(&g_log, (const int[]){0, 0, 0, 0, 0}, 5);
	cr_assert_not(keel_timer_armed(&timer));
	cr_assert_geq(kt_now_ns() - t0, KT_MS(5));
	cr_assert_eq(kt_stats(loop).timers_fired, 5);
	keel_loop_destroy(loop);
}

Test(timer, deadline_in_the_past_fires_on_next_turn, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_timer timer;

	keel_timer_init(&timer, record_fire, (void *)7);
	cr_assert_eq(keel_timer_arm(loop, &timer, kt_now_ns() - KT_MS(10)), 0);
	cr_assert_eq(g_log.n, 0, "fired while being armed");
	cr_assert_geq(keel_loop_step(loop, 0), 0);
	kt_log_expect(&g_log, (const int[]){7}, 1);
	cr_assert_eq(keel_loop_step(loop, 0), 0);
	keel_loop_destroy(loop);
}

/*
 * A million timers with pseudo-random deadlines over ~20 ms, many equal:
 * all fire, by deadline, ties in arming (here: index) order.
 */
#define MANY 1000000u

static struct keel_timer *g_many;
static uint64_t *g_many_deadline;
static uint32_t *g_fired;
static uint32_t g_nfired;

static void record_many(struct keel_loop *loop, struct keel_timer *timer,
			void *arg)
{
	uint32_t i = (uint32_t)(timer - g_many);

	if (g_nfired < MANY)
		g_fired[g_nfired] = i;
	g_nfired++;
	if (kt_now_ns() < g_many_deadline[i])
		g_early++;
}

/*
 * About 1 s here, 2 s under ASan. Its timeout stays 10 like every other
 * test's: Criterion 2.4.1's runner leaks (and LSan fails the binary) when a
 * test with a longer timeout runs beside ones with a shorter one.
 */
Test(timer, million_timers_fire_by_deadline_then_arming_order, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	uint64_t *deadline = calloc(MANY, sizeof(*deadline));
	uint64_t base = kt_now_ns() + KT_MS(5);
	uint64_t x = 0x2545f4914f6cdd1dull;
	struct keel_loop_stats s;

	g_many_deadline = deadline;
	g_many = calloc(MANY, sizeof(*g_many));
	g_fired = calloc(MANY, sizeof(*g_fired));
	cr_assert(deadline && g_many && g_fired);
	for (uint32_t i = 0; i < MANY; i++) {
		/* xorshift64; 2000 distinct deadlines 10 us apart */
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		deadline[i] = base + (x % 2000) * 10000;
		keel_timer_init(&g_many[i], record_many, NULL);
		if (keel_timer_arm(loop, &g_many[i], deadline[i]) != 0)
			cr_assert_fail("arming timer %u failed", i);
	}
	s = kt_stats(loop);
	cr_assert_eq(s.timers_armed, MANY, "timers_armed = %lu",
		     (unsigned long)s.timers_armed);
	kt_loop_run(loop);
	cr_assert_eq(g_nfired, MANY, "%u fired", g_nfired);
	cr_assert_eq(g_early, 0, "%d timers fired before their deadline",
		     g_early);
	for (uint32_t i = 1; i < MANY; i++) {
		uint32_t p = g_fired[i - 1], c = g_fired[i];

		if (deadline[p] < deadline[c] ||
		    (deadline[p] == deadline[c] && p < c))
			continue;
		cr_assert_fail("fire %u: timer %u (deadline +%lu ns) after "
			       "timer %u (deadline +%lu ns)",
			       i, c, (unsigned long)(deadline[c] - base), p,
			       (unsigned long)(deadline[p] - base));
	}
	s = kt_stats(loop);
	cr_assert_eq(s.timers_armed, 0);
	cr_assert_eq(s.timers_fired, MANY);
	keel_loop_destroy(loop);
	free(deadline);
	free(g_many);
	free(g_fired);
}

/* keel_sleep / keel_sleep_until from a task. */
struct sleeper {
	struct keel_task task;
	uint64_t ns;
	uint64_t t0;
	uint64_t loop_t0;
	int until;
};

static uint64_t g_slept;
static uint64_t g_loop_slept;

static int sleeper_step(struct keel_task *t);
static KEEL_TASK_TYPE(sleeper_task, struct sleeper, task, sleeper_step);

static int sleeper_step(struct keel_task *t)
{
	struct sleeper *s = keel_container_of(t, struct sleeper, task);

	KEEL_BEGIN(t);
	s->t0 = kt_now_ns();
	s->loop_t0 = keel_loop_now(keel_task_loop(t));
	if (s->until)
		KEEL_AWAIT(t, keel_sleep_until(t, s->t0 + s->ns));
	else
		KEEL_AWAIT(t, keel_sleep(t, s->ns));
	g_slept = kt_now_ns() - s->t0;
	g_loop_slept = keel_loop_now(keel_task_loop(t)) - s->loop_t0;
	kt_log_push(&g_log, keel_res(t));
	KEEL_END(t);
}

static void run_sleeper(uint64_t ns, int until, uint64_t host_busy_ns)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct sleeper *s;
	uint64_t busy_until = kt_now_ns() + host_busy_ns;

	/* The host may do other work between creating and running a loop. */
	while (kt_now_ns() < busy_until)
		;
	s = kt_spawn(loop, &sleeper_task, KEEL_PRIO_NORMAL);

	s->ns = ns;
	s->until = until;
	kt_loop_run(loop);
	kt_log_expect(&g_log, (const int[]){0}, 1);
	cr_assert_geq(g_slept, ns, "slept %lu ns of %lu asked",
		      (unsigned long)g_slept, (unsigned long)ns);
	keel_loop_destroy(loop);
}

Test(timer, sleep_lasts_at_least_the_requested_time, .timeout = 10)
{
	run_sleeper(KT_MS(20), 0, 0);
	/* The loop's own clock moved at least as far. */
	cr_assert_geq(g_loop_slept, KT_MS(20));
}

Test(timer, sleep_until_lasts_until_the_deadline, .timeout = 10)
{
	run_sleeper(KT_MS(15), 1, 0);
}

Test(timer, sleep_of_zero_returns_zero, .timeout = 10)
{
	run_sleeper(0, 0, 0);
}

Test(timer, sleep_started_after_host_was_busy_lasts_the_requested_time,
     .timeout = 10)
{
	/* 30 ms pass between keel_loop_create() and the first turn. */
	run_sleeper(KT_MS(20), 0, KT_MS(30));
}

/* A task that exits while its sleep is pending: the sleep goes with it. */
struct napper {
	struct keel_task task;
};

static int napper_step(struct keel_task *t)
{
	/* One step, no await: a 30 s sleep left behind. */
	if (keel_sleep(t, KT_MS(30000)) == KEEL_PENDING)
		KEEL_EXIT(t, 0);
	kt_log_push(&g_log, -1);
	KEEL_EXIT(t, 1);
}

static KEEL_TASK_TYPE(napper_task, struct napper, task, napper_step);

Test(timer, task_exiting_during_sleep_leaves_no_timer_behind, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_loop_stats s;

	kt_spawn(loop, &napper_task, KEEL_PRIO_NORMAL);
	/* If the sleep outlived its task, this would wait 30 s. */
	kt_loop_run(loop);
	cr_assert_eq(g_log.n, 0, "keel_sleep did not return KEEL_PENDING");
	s = kt_stats(loop);
	cr_assert_eq(s.timers_armed, 0);
	cr_assert_eq(s.zombies, 0);
	cr_assert_eq(s.ops_inflight, 0);
	cr_assert_eq(s.exited, 1);
	keel_loop_destroy(loop);
}
