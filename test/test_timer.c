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

/*
 * The timing wheel (core/timer.c), on a virtual clock (the simulated
 * kernel's hook: every clock read of keel reads it), so that deadlines
 * across every level, and the overflow beyond them, are reached in an
 * instant. The loop's timeout (keel_loop_timeout_ns()) must be the next
 * deadline to the ns, whatever level holds it.
 */
#include "core.h"

#define TICK   (1ull << KEEL__TICK_SHIFT)
#define LEVEL0 (TICK << 6) /* level 0 spans this; level L, 64^L of it */

static uint64_t g_vclock;

static struct keel_loop *virtual_loop(uint64_t start)
{
	g_vclock = start;
	keel__virtual_clock = &g_vclock;
	return kt_loop_new(NULL);
}

static void virtual_done(struct keel_loop *loop)
{
	keel_loop_destroy(loop);
	keel__virtual_clock = NULL;
}

/* Move the clock to `t` and take one turn that does not wait. */
static void step_at(struct keel_loop *loop, uint64_t t)
{
	g_vclock = t;
	cr_assert_geq(keel_loop_step(loop, 0), 0);
}

static void log_id(struct keel_loop *loop, struct keel_timer *timer, void *arg)
{
	kt_log_push(&g_log, (int)(intptr_t)arg);
	if (keel_loop_now(loop) < timer->deadline)
		g_early++;
}

/* A deadline `far` ns ahead on each level, the overflow, and the heap. */
static const uint64_t g_far[] = {
    0,
    TICK / 2,
    TICK,
    LEVEL0 - 1,
    LEVEL0,
    LEVEL0 + 1,
    LEVEL0 << 6,
    (LEVEL0 << 6) + TICK + 3,
    LEVEL0 << 12,
    LEVEL0 << 18,
    (LEVEL0 << 24) - 1,
    LEVEL0 << 24,
    (LEVEL0 << 30) - TICK,
    LEVEL0 << 30, /* past the span: the overflow */
    (LEVEL0 << 30) * 3 + 17,
};
#define NFAR (sizeof(g_far) / sizeof(g_far[0]))

Test(timer, wheel_timeout_is_the_next_deadline_to_the_ns_on_every_level,
     .timeout = 10)
{
	/* Not on a tick boundary: a timer a tick ahead is in the next. */
	uint64_t t0 = (1ull << 40) + 12345;
	struct keel_loop *loop = virtual_loop(t0);
	struct keel_timer timers[NFAR];

	/* Armed farthest first, then fired nearest first. */
	for (int i = (int)NFAR - 1; i >= 0; i--) {
		keel_timer_init(&timers[i], log_id, (void *)(intptr_t)i);
		cr_assert_eq(keel_timer_arm(loop, &timers[i], t0 + g_far[i]),
			     0);
	}
	for (unsigned i = 0; i < NFAR; i++) {
		uint64_t d = t0 + g_far[i];

		if (d > g_vclock) {
			g_vclock = d - 1;
			cr_assert_eq(keel_loop_timeout_ns(loop), 1,
				     "timer %u: timeout %lld, not 1 ns", i,
				     (long long)keel_loop_timeout_ns(loop));
			step_at(loop, d - 1);
			cr_assert_eq(g_log.n, (int)i, "timer %u fired early",
				     i);
		}
		step_at(loop, d);
		cr_assert_eq(g_log.n, (int)i + 1, "timer %u did not fire", i);
		cr_assert_eq(g_log.v[i], (int)i);
	}
	cr_assert_eq(keel_loop_timeout_ns(loop), -1);
	cr_assert_eq(g_early, 0);
	virtual_done(loop);
}

Test(timer, wheel_a_1ms_sleep_waits_1ms_not_a_tick_more, .timeout = 10)
{
	struct keel_loop *loop = virtual_loop((1ull << 40) + 999);
	struct keel_timer a, b;

	keel_timer_init(&a, log_id, (void *)1);
	keel_timer_init(&b, log_id, (void *)2);
	cr_assert_eq(keel_timer_arm_after(loop, &a, KT_MS(1)), 0);
	cr_assert_eq(keel_loop_timeout_ns(loop), (int64_t)KT_MS(1));
	cr_assert_eq(keel_timer_arm_after(loop, &b, KT_MS(10000)), 0);
	cr_assert_eq(keel_loop_timeout_ns(loop), (int64_t)KT_MS(1));
	keel_timer_cancel(loop, &a);
	cr_assert_eq(keel_loop_timeout_ns(loop), (int64_t)KT_MS(10000));
	virtual_done(loop);
}

/* Many timers on one deadline, armed before and after the wheel moved its
 * cursor past some of their slot's levels: all in arming order. */
Test(timer, wheel_equal_deadlines_fire_in_arming_order_across_cascades,
     .timeout = 10)
{
	uint64_t t0 = 1ull << 40;
	struct keel_loop *loop = virtual_loop(t0);
	static struct keel_timer timers[300];
	uint64_t d = t0 + (LEVEL0 << 7) + 5; /* level 2 at first */
	int want[300];

	for (int i = 0; i < 300; i++) {
		keel_timer_init(&timers[i], log_id, (void *)(intptr_t)i);
		want[i] = i;
		if (i == 100)
			step_at(loop, d - (LEVEL0 << 2)); /* now on level 1 */
		if (i == 200)
			step_at(loop, d - TICK / 2); /* now in the heap */
		cr_assert_eq(keel_timer_arm(loop, &timers[i], d), 0);
	}
	cr_assert_eq(g_log.n, 0);
	step_at(loop, d);
	kt_log_expect(&g_log, want, 300);
	virtual_done(loop);
}

Test(timer, wheel_cancel_from_every_level_and_the_overflow, .timeout = 10)
{
	uint64_t t0 = (1ull << 40) + 7;
	struct keel_loop *loop = virtual_loop(t0);
	struct keel_timer timers[NFAR];
	int want[NFAR], n = 0;

	for (unsigned i = 0; i < NFAR; i++) {
		keel_timer_init(&timers[i], log_id, (void *)(intptr_t)i);
		cr_assert_eq(keel_timer_arm(loop, &timers[i], t0 + g_far[i]),
			     0);
	}
	for (unsigned i = 0; i < NFAR; i++)
		if (i % 2)
			cr_assert(keel_timer_cancel(loop, &timers[i]));
		else
			want[n++] = (int)i;
	for (unsigned i = 0; i < NFAR; i++)
		cr_assert_eq(keel_timer_armed(&timers[i]), i % 2 == 0);
	cr_assert_eq(kt_stats(loop).timers_armed, (uint64_t)n);
	step_at(loop, t0 + g_far[NFAR - 1] + 1);
	kt_log_expect(&g_log, want, n);
	cr_assert_eq(kt_stats(loop).timers_armed, 0);
	virtual_done(loop);
}

/* A callback re-arms its own timer for now (next turn, not this one) and
 * moves a later one, still in the wheel, to before it. */
static struct keel_timer g_other;

static void rearm_now_and_pull(struct keel_loop *loop, struct keel_timer *t,
			       void *arg)
{
	kt_log_push(&g_log, (int)(intptr_t)arg);
	if (g_log.n == 1) {
		cr_assert_eq(keel_timer_arm(loop, t, keel_loop_now(loop)), 0);
		cr_assert_eq(
		    keel_timer_arm(loop, &g_other, keel_loop_now(loop) - 1), 0);
	}
}

Test(timer, wheel_rearm_while_firing_waits_for_the_next_turn, .timeout = 10)
{
	uint64_t t0 = 1ull << 40;
	struct keel_loop *loop = virtual_loop(t0);
	struct keel_timer self;

	keel_timer_init(&self, rearm_now_and_pull, (void *)1);
	keel_timer_init(&g_other, log_id, (void *)2);
	cr_assert_eq(keel_timer_arm(loop, &self, t0 + LEVEL0 * 3), 0);
	cr_assert_eq(keel_timer_arm(loop, &g_other, t0 + (LEVEL0 << 12)), 0);
	step_at(loop, t0 + LEVEL0 * 3);
	kt_log_expect(&g_log, (const int[]){1}, 1);
	cr_assert_eq(keel_loop_timeout_ns(loop), 0);
	/* By deadline: the moved timer is due 1 ns before the re-armed. */
	step_at(loop, t0 + LEVEL0 * 3);
	kt_log_expect(&g_log, (const int[]){1, 2, 1}, 3);
	virtual_done(loop);
}

Test(timer, wheel_now_or_past_fires_next_turn_and_boundaries_are_exact,
     .timeout = 10)
{
	/* The clock one ns before a level-2 boundary. */
	uint64_t t0 = (LEVEL0 << 20) - 1;
	struct keel_loop *loop = virtual_loop(t0);
	struct keel_timer now, past, at, after;

	keel_timer_init(&now, log_id, (void *)1);
	keel_timer_init(&past, log_id, (void *)2);
	keel_timer_init(&at, log_id, (void *)3);
	keel_timer_init(&after, log_id, (void *)4);
	cr_assert_eq(keel_timer_arm(loop, &now, t0), 0);
	cr_assert_eq(keel_timer_arm(loop, &past, t0 - (LEVEL0 << 6)), 0);
	cr_assert_eq(keel_timer_arm(loop, &at, t0 + 1), 0);
	cr_assert_eq(keel_timer_arm(loop, &after, t0 + 2), 0);
	cr_assert_eq(keel_loop_timeout_ns(loop), 0);
	step_at(loop, t0);
	kt_log_expect(&g_log, (const int[]){2, 1}, 2);
	cr_assert_eq(keel_loop_timeout_ns(loop), 1);
	step_at(loop, t0 + 1);
	kt_log_expect(&g_log, (const int[]){2, 1, 3}, 3);
	step_at(loop, t0 + 2);
	kt_log_expect(&g_log, (const int[]){2, 1, 3, 4}, 4);
	virtual_done(loop);
}

/*
 * 10^6 random arms, re-arms and cancels of 1024 timers, with deadlines
 * on every level, the overflow and the past, against a reference model
 * of the old 4-ary heap's semantics: at each turn every armed timer due by
 * the clock fires, by deadline, ties by arming order, never early; and
 * the loop's timeout is the nearest deadline to the ns.
 */
#define MODEL_TIMERS 1024u
#define MODEL_OPS    1000000u

struct model {
	struct keel_timer t[MODEL_TIMERS];
	uint64_t deadline[MODEL_TIMERS];
	uint64_t seq[MODEL_TIMERS];
	bool armed[MODEL_TIMERS];
	uint32_t due[MODEL_TIMERS];
	uint32_t fired[MODEL_TIMERS];
	uint32_t nfired;
	uint64_t nseq; /* arms so far */
};

static struct model *g_model;

static void model_fired(struct keel_loop *loop, struct keel_timer *timer,
			void *arg)
{
	struct model *m = g_model;

	cr_assert_lt(m->nfired, MODEL_TIMERS);
	m->fired[m->nfired++] = (uint32_t)(timer - m->t);
}

static uint64_t rnd(uint64_t *x)
{
	*x ^= *x << 13;
	*x ^= *x >> 7;
	*x ^= *x << 17;
	return *x;
}

static int by_deadline_seq(const void *a, const void *b)
{
	const struct model *m = g_model;
	uint32_t i = *(const uint32_t *)a, j = *(const uint32_t *)b;

	if (m->deadline[i] != m->deadline[j])
		return m->deadline[i] < m->deadline[j] ? -1 : 1;
	return m->seq[i] < m->seq[j] ? -1 : 1;
}

static void model_turn(struct keel_loop *loop, struct model *m, uint64_t t)
{
	uint32_t ndue = 0;
	uint64_t next = UINT64_MAX;

	for (uint32_t i = 0; i < MODEL_TIMERS; i++)
		if (m->armed[i] && m->deadline[i] <= t)
			m->due[ndue++] = i;
	qsort(m->due, ndue, sizeof(m->due[0]), by_deadline_seq);
	m->nfired = 0;
	step_at(loop, t);
	cr_assert_eq(m->nfired, ndue, "at %llu: %u fired, %u due",
		     (unsigned long long)t, m->nfired, ndue);
	for (uint32_t k = 0; k < ndue; k++) {
		cr_assert_eq(m->fired[k], m->due[k], "fire %u of %u", k, ndue);
		m->armed[m->due[k]] = false;
	}
	for (uint32_t i = 0; i < MODEL_TIMERS; i++) {
		cr_assert_eq(keel_timer_armed(&m->t[i]), m->armed[i]);
		if (m->armed[i] && m->deadline[i] < next)
			next = m->deadline[i];
	}
	cr_assert_eq(keel_loop_timeout_ns(loop),
		     next == UINT64_MAX ? -1 : (int64_t)(next - t));
}

/* The model's timers, on a virtual loop at `t`. */
static struct model *model_new(struct keel_loop **loop, uint64_t t)
{
	struct model *m = calloc(1, sizeof(*m));

	cr_assert(m);
	*loop = virtual_loop(t);
	g_model = m;
	for (uint32_t i = 0; i < MODEL_TIMERS; i++)
		keel_timer_init(&m->t[i], model_fired, NULL);
	return m;
}

static void model_arm(struct keel_loop *loop, struct model *m, uint32_t i,
		      uint64_t d)
{
	cr_assert_eq(keel_timer_arm(loop, &m->t[i], d), 0);
	m->deadline[i] = d;
	m->seq[i] = ++m->nseq;
	m->armed[i] = true;
}

Test(timer, wheel_matches_the_heap_model_over_a_million_random_ops,
     .timeout = 10)
{
	uint64_t t = (1ull << 41) + 4321, x = 0x9e3779b97f4a7c15ull;
	struct keel_loop *loop;
	struct model *m = model_new(&loop, t);

	for (uint32_t op = 0; op < MODEL_OPS; op++) {
		uint64_t r = rnd(&x);
		uint32_t i = (uint32_t)(r % MODEL_TIMERS);

		if (op % 64 == 63) {
			/* The clock moves: a little, to a deadline, or far. */
			uint64_t s = rnd(&x), jump;

			switch (s % 4) {
			case 0:
				jump = s >> 2 & (TICK * 4 - 1);
				break;
			case 1:
				jump = m->armed[i] && m->deadline[i] > t
					   ? m->deadline[i] - t
					   : 0;
				break;
			case 2:
				jump =
				    (s >> 2) % (LEVEL0 << (6 * (s >> 8 & 3)));
				break;
			default:
				jump = 0;
			}
			t += jump;
			model_turn(loop, m, t);
		} else if (r >> 32 & 1 && m->armed[i]) {
			cr_assert(keel_timer_cancel(loop, &m->t[i]));
			m->armed[i] = false;
		} else {
			/* A level (or the overflow, or the past), then an
			 * offset in it; sometimes a tick boundary exactly. */
			uint64_t s = rnd(&x);
			unsigned level = (unsigned)(s % 9);
			uint64_t d;

			if (level == 8)
				d = t - (s >> 8) % (LEVEL0 << 6);
			else
				d = t + (s >> 8) % (TICK << (6 * level));
			if (s >> 60 == 0)
				d &= ~(TICK - 1);
			model_arm(loop, m, i, d);
		}
	}
	model_turn(loop, m, t + (LEVEL0 << 42));
	virtual_done(loop);
	free(m);
}

/*
 * The same model, crowded: the timers on a few ticks just ahead (hundreds
 * a level-0 slot: a due slot is sorted at once into the run), a fifth on
 * a few shared deadlines, the clock on by a fraction of a tick at a time.
 * Odd rounds also move and cancel some (a slot that lost its arming order
 * to one goes through the heap instead): both paths, and both at once.
 */
Test(timer, wheel_crowded_ticks_match_the_heap_model, .timeout = 10)
{
	uint64_t t = (1ull << 41) + 4321, x = 0x2545f4914f6cdd1dull;
	struct keel_loop *loop;
	struct model *m = model_new(&loop, t);

	for (uint32_t round = 0; round < 300; round++) {
		for (uint32_t i = 0; i < MODEL_TIMERS; i++) {
			uint64_t s = rnd(&x), d;

			if (m->armed[i] && (round % 2 == 0 || s % 8))
				continue;
			d = t + TICK / 2 + (s >> 8) % (TICK * 4);
			if (s >> 60 < 3)
				d = t + TICK * 2 + (s >> 20) % 4 * 1000;
			model_arm(loop, m, i, d);
		}
		for (uint32_t k = 0; round % 2 && k < 16; k++) {
			uint32_t i = (uint32_t)(rnd(&x) % MODEL_TIMERS);

			cr_assert_eq(keel_timer_cancel(loop, &m->t[i]),
				     m->armed[i]);
			m->armed[i] = false;
		}
		for (uint32_t k = 0; k < 4; k++) {
			t += TICK / 3 + rnd(&x) % 1000;
			model_turn(loop, m, t);
		}
	}
	model_turn(loop, m, t + (LEVEL0 << 42));
	virtual_done(loop);
	free(m);
}

/*
 * 40 timers of one tick (a sorted run), armed latest deadline first, in
 * pairs on one deadline. While they fire, one cancels the next due (the
 * run's head then) and one further on, and moves a third out of the tick:
 * none of those fires with the rest; the moved one fires later.
 */
#define CROWD 40
static struct keel_timer g_crowd[CROWD];

static void cancel_neighbours(struct keel_loop *loop, struct keel_timer *t,
			      void *arg)
{
	log_id(loop, t, arg);
	if ((intptr_t)arg == 10) {
		cr_assert(keel_timer_cancel(loop, &g_crowd[11]));
		cr_assert(keel_timer_cancel(loop, &g_crowd[20]));
		cr_assert_eq(keel_timer_arm(loop, &g_crowd[30],
					    keel_loop_now(loop) + TICK * 2),
			     0);
	}
}

Test(timer, wheel_cancel_in_a_crowded_tick_while_it_fires, .timeout = 10)
{
	uint64_t t0 = 1ull << 40, d0 = t0 + TICK * 3;
	struct keel_loop *loop = virtual_loop(t0);
	int want[CROWD], n = 0;

	/* Pair k (timers 2k, 2k+1) on deadline k, armed pair by pair from
	 * the last, 2k first: timer i fires i-th. */
	for (int i = CROWD - 1; i >= 0; i--) {
		int id = i % 2 ? i - 1 : i + 1;

		keel_timer_init(&g_crowd[id], cancel_neighbours,
				(void *)(intptr_t)id);
		cr_assert_eq(keel_timer_arm(loop, &g_crowd[id],
					    d0 + (uint64_t)(i / 2) * 1000),
			     0);
	}
	for (int i = 0; i < CROWD; i++)
		if (i != 11 && i != 20 && i != 30)
			want[n++] = i;
	step_at(loop, d0 + TICK - 1);
	kt_log_expect(&g_log, want, n);
	want[n++] = 30;
	step_at(loop, d0 + TICK * 3);
	kt_log_expect(&g_log, want, n);
	cr_assert_eq(g_early, 0);
	virtual_done(loop);
}

/*
 * Thousands of arms, moves and cancels between two turns: the timers
 * armed since the last turn wait in an array (core/timer.c: settle()) that
 * grows, and loses its holes when they are half of it; then the model's
 * order, as above.
 */
Test(timer, wheel_many_arms_and_cancels_within_one_turn_match_the_model,
     .timeout = 10)
{
	uint64_t t = (1ull << 41) + 99, x = 0x853c49e6748fea9bull;
	struct keel_loop *loop;
	struct model *m = model_new(&loop, t);

	for (uint32_t round = 0; round < 60; round++) {
		for (uint32_t op = 0; op < 3000; op++) {
			uint64_t r = rnd(&x);
			uint32_t i = (uint32_t)(r % MODEL_TIMERS);

			if (r >> 32 & 1 && m->armed[i]) {
				cr_assert(keel_timer_cancel(loop, &m->t[i]));
				m->armed[i] = false;
			} else {
				model_arm(loop, m, i,
					  t - LEVEL0 +
					      (r >> 34) % (LEVEL0 * 4));
			}
		}
		t += (rnd(&x) % 3) * LEVEL0;
		model_turn(loop, m, t);
	}
	model_turn(loop, m, t + (LEVEL0 << 42));
	virtual_done(loop);
	free(m);
}

/*
 * The loop's wait timer (io/ring.c): a blocking wait has no timeout of its
 * own, one kernel timeout is kept armed for the earliest deadline. A timer
 * armed while the loop waits on nothing else must still wake it, and one
 * pulled earlier than the kernel timeout armed for a later deadline must
 * fire at its new time: otherwise the loop sleeps out the later one (a
 * minute here, past the test's timeout).
 */
struct puller {
	struct keel_task task;
};

/* Not in the task: `near` outlives it. */
static struct keel_timer g_pull_later, g_pull_near;

static int puller_step(struct keel_task *t);
static KEEL_TASK_TYPE(puller_task, struct puller, task, puller_step);

static int puller_step(struct keel_task *t)
{
	struct keel_loop *loop = keel_task_loop(t);

	KEEL_BEGIN(t);
	/* This turn's wait arms the kernel's timeout for `far`. */
	KEEL_AWAIT(t, keel_nop(t));
	g_deadline[2] = kt_now_ns() + KT_MS(2);
	cr_assert_eq(keel_timer_arm(loop, &g_pull_near, g_deadline[2]), 0);
	cr_assert(keel_timer_cancel(loop, &g_pull_later));
	KEEL_END(t);
}

Test(timer, wait_timer_wakes_for_a_lone_timer_and_one_pulled_earlier,
     .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_timer lone;

	g_deadline[3] = kt_now_ns() + KT_MS(1);
	keel_timer_init(&lone, record_fire, (void *)3);
	cr_assert_eq(keel_timer_arm(loop, &lone, g_deadline[3]), 0);
	kt_loop_run(loop);
	kt_spawn(loop, &puller_task, KEEL_PRIO_NORMAL);
	keel_timer_init(&g_pull_later, record_fire, (void *)1);
	keel_timer_init(&g_pull_near, record_fire, (void *)2);
	cr_assert_eq(keel_timer_arm_after(loop, &g_pull_later, KT_MS(60000)),
		     0);
	kt_loop_run(loop);
	kt_log_expect(&g_log, (const int[]){3, 2}, 2);
	cr_assert_eq(g_early, 0, "a timer fired before its deadline");
	keel_loop_destroy(loop);
}

/* Keeps the loop busy (runnable: no turn computes the next deadline) until
 * g_spin is cleared, a step per turn. */
static int g_spin;

struct spinner {
	struct keel_task task;
};

static int spinner_step(struct keel_task *t)
{
	KEEL_BEGIN(t);
	while (g_spin)
		KEEL_YIELD(t);
	KEEL_END(t);
}
static KEEL_TASK_TYPE(spinner_task, struct spinner, task, spinner_step);

/*
 * A turn skips the timers when the clock is before the nearest deadline it
 * last computed (and no timer was armed since): a timer armed nearer, while
 * the loop is busy (so no turn computes the deadline again), must still
 * fire at its own deadline, not the far one's.
 */
Test(timer, a_nearer_timer_armed_while_the_loop_is_busy_fires_on_time,
     .timeout = 10)
{
	uint64_t t0 = 1ull << 40;
	struct keel_loop *loop = virtual_loop(t0);
	struct keel_timer far, near;

	keel_timer_init(&far, log_id, (void *)1);
	keel_timer_init(&near, log_id, (void *)2);
	cr_assert_eq(keel_timer_arm(loop, &far, t0 + KT_MS(10000)), 0);
	/* The nearest deadline, computed: the far one. */
	cr_assert_eq(keel_loop_timeout_ns(loop), (int64_t)KT_MS(10000));
	g_spin = 1;
	kt_spawn(loop, &spinner_task, KEEL_PRIO_NORMAL);
	step_at(loop, t0 + KT_MS(1));
	cr_assert_eq(keel_timer_arm(loop, &near, t0 + KT_MS(3)), 0);
	for (uint64_t ms = 2; ms <= 5; ms++)
		step_at(loop, t0 + KT_MS(ms));
	kt_log_expect(&g_log, (const int[]){2}, 1);
	for (uint64_t ms = 6; ms <= 10; ms++)
		step_at(loop, t0 + KT_MS(ms));
	kt_log_expect(&g_log, (const int[]){2}, 1);
	g_spin = 0;
	keel_timer_cancel(loop, &far);
	kt_loop_run(loop);
	cr_assert_eq(g_early, 0, "a timer fired before its deadline");
	virtual_done(loop);
}
