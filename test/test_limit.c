/* SPDX-License-Identifier: MIT */
/*
 * test_limit.c: keel/limit.h. The rate limiter's accuracy over a second
 * of a hand-driven clock, of the simulated kernel's virtual clock (each
 * grant at its exact conforming time) and of a real one (counting
 * admissions only); an acquire whose deadline comes first fails at once
 * and takes nothing; a cancelled head lets the next waiter through. The
 * bulkhead's bound, queue bound, queue timeout and a cancelled waiter; the
 * shedder's CoDel rule, and a bulkhead feeding it its queueing delays.
 *
 * Tasks report through globals: a frame is gone once its task exits.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <keel.h>
#include <keel/limit.h>

#include "helpers/keel_test.h"

#define MS	  1000000ull
#define MAX_TASKS 8
#define NOT_DONE  (-9999)

static uint64_t g_clock; /* the hand-driven clock */

static uint64_t hand_clock(void *arg)
{
	(void)arg;
	return g_clock;
}

/* ---- a simulated machine, for exact times ------------------------------- */

static struct keel_sim *g_sim;
static uint64_t g_t0;

static struct keel_loop *sim_setup(void)
{
	struct keel_sim_opts o = {.seed = 5};
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

/* ---- rate limiter ------------------------------------------------------- */

static struct keel_ratelimit *g_rl;

Test(limit, ratelimit_try_admits_rate_plus_burst_over_a_virtual_second,
     .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_ratelimit_opts o = {
	    .rate = 100, .burst = 10, .clock = hand_clock};
	struct keel_ratelimit_stats st;
	uint64_t wait = 0;
	int admitted = 0;

	g_clock = 1000 * MS;
	cr_assert_eq(keel_ratelimit_new(loop, &o, &g_rl), 0);
	cr_expect_eq(keel_ratelimit_try(g_rl, 0, NULL), -EINVAL);
	cr_expect_eq(keel_ratelimit_try(g_rl, 11, NULL), -EINVAL);
	/* Every millisecond of one second, take all that conforms. */
	for (uint64_t ms = 0; ms <= 1000; ms++) {
		g_clock = 1000 * MS + ms * MS;
		while (keel_ratelimit_try(g_rl, 1, &wait) == 0)
			admitted++;
		if (ms == 0)
			cr_expect_eq(wait, 10 * MS, "wait %llu",
				     (unsigned long long)wait);
	}
	/* The burst at once, then one per 10 ms: 10 + 100. */
	cr_expect_eq(admitted, 110, "admitted %d", admitted);
	keel_ratelimit_stats(g_rl, &st);
	cr_expect_eq(st.admitted, 110);
	cr_expect_eq(st.rejected, 1001);
	/* n tokens at once: conform when n intervals have come in. */
	g_clock += 40 * MS;
	cr_expect_eq(keel_ratelimit_try(g_rl, 5, &wait), -EAGAIN);
	cr_expect_eq(wait, 10 * MS);
	g_clock += 10 * MS;
	cr_expect_eq(keel_ratelimit_try(g_rl, 5, &wait), 0);
	keel_ratelimit_free(g_rl);
	keel_loop_destroy(loop);
}

struct acq_log {
	int n;
	int res[256];
	uint64_t at[256]; /* ns after g_t0 (virtual) or 0 */
};

static struct acq_log g_acq;

/* Acquire `n` tokens with `deadline` until an error; log each. */
struct acquirer {
	struct keel_task task;
	uint32_t n;
	uint64_t deadline;
	int once;
};

static int acquirer_step(struct keel_task *t)
{
	struct acquirer *a = keel_container_of(t, struct acquirer, task);

	KEEL_BEGIN(t);
	do {
		KEEL_AWAIT(t,
			   keel_ratelimit_acquire(t, g_rl, a->n, a->deadline));
		g_acq.res[g_acq.n] = keel_res(t);
		g_acq.at[g_acq.n] = keel_loop_now(keel_task_loop(t)) - g_t0;
		g_acq.n++;
	} while (keel_res(t) == 0 && !a->once && g_acq.n < 256);
	KEEL_END(t);
}

static KEEL_TASK_TYPE(acquirer_task, struct acquirer, task, acquirer_step);

Test(limit, ratelimit_acquire_sleeps_exactly_until_conforming, .timeout = 10)
{
	struct keel_loop *loop = sim_setup();
	struct keel_ratelimit_opts o = {.rate = 100, .burst = 10};
	struct keel_ratelimit_stats st;
	struct acquirer *a;

	cr_assert_eq(keel_ratelimit_new(loop, &o, &g_rl), 0);
	a = kt_spawn(loop, &acquirer_task, KEEL_PRIO_NORMAL);
	a->n = 1;
	a->deadline = g_t0 + 1000 * MS;
	cr_assert_eq(keel_sim_run(g_sim, 0), 0);
	/* 10 at once, then one every 10 ms up to the deadline: 110; the
	 * 111th would come at 1010 ms, after it: refused at once. */
	cr_assert_eq(g_acq.n, 111, "acquires %d", g_acq.n);
	for (int i = 0; i < 110; i++) {
		uint64_t want = i < 10 ? 0 : (uint64_t)(i - 9) * 10 * MS;

		cr_expect_eq(g_acq.res[i], 0);
		cr_expect_eq(g_acq.at[i], want, "acquire %d at %llu", i,
			     (unsigned long long)g_acq.at[i]);
	}
	cr_expect_eq(g_acq.res[110], -ETIMEDOUT);
	cr_expect_eq(g_acq.at[110], 1000 * MS);
	keel_ratelimit_stats(g_rl, &st);
	cr_expect_eq(st.admitted, 110);
	cr_expect_eq(st.waited, 100);
	cr_expect_eq(st.timed_out, 1);
	cr_expect_eq(st.waiting, 0);
	keel_ratelimit_free(g_rl);
	sim_teardown(loop);
}

Test(limit, ratelimit_admits_rate_plus_burst_over_a_real_second, .timeout = 30)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_ratelimit_opts o = {.rate = 100, .burst = 10};
	struct acquirer *a;
	int admitted = 0;

	cr_assert_eq(keel_ratelimit_new(loop, &o, &g_rl), 0);
	a = kt_spawn(loop, &acquirer_task, KEEL_PRIO_NORMAL);
	a->n = 1;
	a->deadline = kt_now_ns() + 1000 * MS;
	kt_loop_run(loop);
	for (int i = 0; i < g_acq.n; i++)
		admitted += g_acq.res[i] == 0;
	cr_expect_eq(g_acq.res[g_acq.n - 1], -ETIMEDOUT);
	/* 100/s over 1 s admits 100 +- the burst; counted, not timed. */
	cr_expect(admitted >= 90 && admitted <= 121, "admitted %d", admitted);
	keel_ratelimit_free(g_rl);
	keel_loop_destroy(loop);
}

Test(limit, ratelimit_deadline_first_fails_at_once_taking_nothing,
     .timeout = 10)
{
	struct keel_loop *loop = sim_setup();
	struct keel_ratelimit_opts o = {.rate = 100, .burst = 2};
	struct acquirer *a, *b;

	cr_assert_eq(keel_ratelimit_new(loop, &o, &g_rl), 0);
	cr_assert_eq(keel_ratelimit_try(g_rl, 2, NULL), 0);
	/* 2 conform at 20 ms: a deadline at 5 ms is refused now. */
	a = kt_spawn(loop, &acquirer_task, KEEL_PRIO_NORMAL);
	a->n = 2;
	a->deadline = g_t0 + 5 * MS;
	a->once = 1;
	/* Had a's tokens been taken, this one would wait until 30 ms. */
	b = kt_spawn(loop, &acquirer_task, KEEL_PRIO_NORMAL);
	b->n = 1;
	b->deadline = UINT64_MAX;
	b->once = 1;
	cr_assert_eq(keel_sim_run(g_sim, 0), 0);
	cr_assert_eq(g_acq.n, 2);
	cr_expect_eq(g_acq.res[0], -ETIMEDOUT);
	cr_expect_eq(g_acq.at[0], 0);
	cr_expect_eq(g_acq.res[1], 0);
	cr_expect_eq(g_acq.at[1], 10 * MS);
	keel_ratelimit_free(g_rl);
	sim_teardown(loop);
}

struct killer {
	struct keel_task task;
	struct keel_task *victim;
	uint64_t after;
};

static int killer_step(struct keel_task *t)
{
	struct killer *k = keel_container_of(t, struct killer, task);

	KEEL_BEGIN(t);
	KEEL_AWAIT(t, keel_sleep(t, k->after));
	keel_task_cancel(k->victim);
	KEEL_END(t);
}

static KEEL_TASK_TYPE(killer_task, struct killer, task, killer_step);

Test(limit, ratelimit_cancelled_head_lets_the_next_waiter_through,
     .timeout = 10)
{
	struct keel_loop *loop = sim_setup();
	struct keel_ratelimit_opts o = {.rate = 100, .burst = 5};
	struct keel_ratelimit_stats st;
	struct acquirer *a, *b;
	struct killer *k;

	cr_assert_eq(keel_ratelimit_new(loop, &o, &g_rl), 0);
	cr_assert_eq(keel_ratelimit_try(g_rl, 5, NULL), 0);
	a = kt_spawn(loop, &acquirer_task, KEEL_PRIO_NORMAL); /* 5: 50 ms */
	a->n = 5;
	a->deadline = UINT64_MAX;
	a->once = 1;
	b = kt_spawn(loop, &acquirer_task, KEEL_PRIO_NORMAL); /* behind */
	b->n = 1;
	b->deadline = UINT64_MAX;
	b->once = 1;
	k = kt_spawn(loop, &killer_task, KEEL_PRIO_NORMAL);
	k->victim = keel_task_of(&acquirer_task, a);
	k->after = 5 * MS;
	cr_assert_eq(keel_sim_run(g_sim, 0), 0);
	cr_assert_eq(g_acq.n, 2);
	cr_expect_eq(g_acq.res[0], -ECANCELED);
	cr_expect_eq(g_acq.at[0], 5 * MS);
	cr_expect_eq(g_acq.res[1], 0);
	cr_expect_eq(g_acq.at[1], 10 * MS); /* its own time, not after a's */
	keel_ratelimit_stats(g_rl, &st);
	cr_expect_eq(st.waited, 1);
	cr_expect_eq(st.waiting, 0);
	cr_expect_eq(kt_stats(loop).timers_armed, 0);
	keel_ratelimit_free(g_rl);
	sim_teardown(loop);
}

/* ---- bulkhead ----------------------------------------------------------- */

static struct keel_bulkhead *g_bh;
static int g_res[MAX_TASKS];
static uint64_t g_bh_at[MAX_TASKS];
static int g_release[MAX_TASKS];
static int g_in, g_max_in;
static struct keel_task *g_task[MAX_TASKS];

struct bh_user {
	struct keel_task task;
	int id;
	uint64_t hold_ns; /* sleep while holding; 0: until g_release */
};

static int bh_user_step(struct keel_task *t)
{
	struct bh_user *u = keel_container_of(t, struct bh_user, task);

	KEEL_BEGIN(t);
	KEEL_AWAIT(t, keel_bulkhead_acquire(t, g_bh));
	g_res[u->id] = keel_res(t);
	g_bh_at[u->id] = keel_loop_now(keel_task_loop(t));
	if (keel_res(t) != 0)
		KEEL_EXIT(t, 0);
	if (++g_in > g_max_in)
		g_max_in = g_in;
	if (u->hold_ns)
		KEEL_AWAIT(t, keel_sleep(t, u->hold_ns));
	else
		while (!g_release[u->id])
			KEEL_YIELD(t);
	g_in--;
	cr_expect_eq(keel_bulkhead_release(g_bh), 0);
	KEEL_END(t);
}

static KEEL_TASK_TYPE(bh_user_task, struct bh_user, task, bh_user_step);

static void spawn_bh(struct keel_loop *loop, int id, uint64_t hold_ns)
{
	struct bh_user *u = kt_spawn(loop, &bh_user_task, KEEL_PRIO_NORMAL);

	u->id = id;
	u->hold_ns = hold_ns;
	g_res[id] = NOT_DONE;
	g_task[id] = keel_task_of(&bh_user_task, u);
}

/* Lets everyone go after checking the counts at the first stage. */
struct bh_script {
	struct keel_task task;
	int stage;
	int cancel; /* task id to cancel first, or -1 */
};

static struct keel_bulkhead_stats g_mid;

static int bh_script_step(struct keel_task *t)
{
	struct bh_script *s = keel_container_of(t, struct bh_script, task);

	KEEL_BEGIN(t);
	if (s->cancel >= 0)
		keel_task_cancel(g_task[s->cancel]);
	KEEL_YIELD(t);
	keel_bulkhead_stats(g_bh, &g_mid);
	for (s->stage = 0; s->stage < MAX_TASKS; s->stage++) {
		g_release[s->stage] = 1;
		KEEL_YIELD(t);
		KEEL_YIELD(t);
	}
	KEEL_END(t);
}

static KEEL_TASK_TYPE(bh_script_task, struct bh_script, task, bh_script_step);

static void run_bh_script(struct keel_loop *loop, int cancel)
{
	struct bh_script *s = kt_spawn(loop, &bh_script_task, KEEL_PRIO_NORMAL);

	s->cancel = cancel;
}

Test(limit, bulkhead_bounds_in_flight_and_its_queue, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_bulkhead_opts o = {.max_concurrent = 2, .max_queue = 1};
	struct keel_bulkhead_stats st;

	cr_assert_eq(keel_bulkhead_new(loop, &o, &g_bh), 0);
	for (int i = 0; i < 4; i++)
		spawn_bh(loop, i, 0);
	run_bh_script(loop, -1);
	kt_loop_run(loop);
	/* 0 and 1 in, 2 queued, 3 refused: the queue holds one. */
	cr_expect_eq(g_mid.in_flight, 2);
	cr_expect_eq(g_mid.queued, 1);
	cr_expect_eq(g_mid.rejected, 1);
	cr_expect_eq(g_res[0], 0);
	cr_expect_eq(g_res[1], 0);
	cr_expect_eq(g_res[2], 0);
	cr_expect_eq(g_res[3], -EAGAIN);
	cr_expect_eq(g_max_in, 2);
	keel_bulkhead_stats(g_bh, &st);
	cr_expect_eq(st.admitted, 3);
	cr_expect_eq(st.in_flight, 0);
	cr_expect_eq(st.queued, 0);
	cr_expect_eq(keel_bulkhead_release(g_bh), -EPERM);
	cr_expect_eq(keel_bulkhead_try_acquire(g_bh), 0);
	cr_expect_eq(keel_bulkhead_try_acquire(g_bh), 0);
	cr_expect_eq(keel_bulkhead_try_acquire(g_bh), -EAGAIN);
	keel_bulkhead_free(g_bh);
	keel_loop_destroy(loop);
}

Test(limit, bulkhead_queue_timeout_and_a_cancelled_waiter, .timeout = 10)
{
	struct keel_loop *loop = sim_setup();
	struct keel_bulkhead_opts o = {
	    .max_concurrent = 1, .max_queue = 4, .queue_timeout_ns = 20 * MS};
	struct keel_bulkhead_stats st;
	struct killer *k;

	cr_assert_eq(keel_bulkhead_new(loop, &o, &g_bh), 0);
	spawn_bh(loop, 0, 50 * MS); /* holds 50 ms */
	spawn_bh(loop, 1, 0);	    /* times out at 20 */
	spawn_bh(loop, 2, 0);	    /* cancelled at 5 */
	g_release[1] = g_release[2] = 1;
	k = kt_spawn(loop, &killer_task, KEEL_PRIO_NORMAL);
	k->victim = g_task[2];
	k->after = 5 * MS;
	cr_assert_eq(keel_sim_run(g_sim, 0), 0);
	cr_expect_eq(g_res[0], 0);
	cr_expect_eq(g_res[1], -ETIMEDOUT);
	cr_expect_eq(g_bh_at[1] - g_t0, 20 * MS);
	cr_expect_eq(g_res[2], -ECANCELED);
	cr_expect_eq(g_bh_at[2] - g_t0, 5 * MS);
	keel_bulkhead_stats(g_bh, &st);
	cr_expect_eq(st.timed_out, 1);
	cr_expect_eq(st.admitted, 1);
	cr_expect_eq(st.in_flight, 0);
	cr_expect_eq(st.queued, 0);
	cr_expect_eq(kt_stats(loop).timers_armed, 0);
	keel_bulkhead_free(g_bh);
	sim_teardown(loop);
}

Test(limit, bulkhead_hands_a_released_permit_to_the_next_waiter, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_bulkhead_opts o = {.max_concurrent = 1, .max_queue = 4};

	cr_assert_eq(keel_bulkhead_new(loop, &o, &g_bh), 0);
	for (int i = 0; i < 4; i++)
		spawn_bh(loop, i, 0);
	run_bh_script(loop, 1); /* 1 leaves; 2 and 3 follow 0 in order */
	kt_loop_run(loop);
	cr_expect_eq(g_mid.queued, 2);
	cr_expect_eq(g_res[0], 0);
	cr_expect_eq(g_res[1], -ECANCELED);
	cr_expect_eq(g_res[2], 0);
	cr_expect_eq(g_res[3], 0);
	cr_expect_eq(g_max_in, 1);
	keel_bulkhead_free(g_bh);
	keel_loop_destroy(loop);
}

/* ---- load shedding ------------------------------------------------------ */

Test(limit, shed_acts_on_a_standing_queue_not_a_burst, .timeout = 10)
{
	struct keel_shed s;
	struct keel_shed_opts o = {.clock = hand_clock};
	struct keel_shed_stats st;

	g_clock = 5000 * MS;
	cr_assert_eq(keel_shed_init(&s, &o), 0);
	/* Above target for less than an interval: a burst, admitted. */
	keel_shed_record(&s, 10 * MS);
	g_clock += 60 * MS;
	keel_shed_record(&s, 30 * MS);
	cr_expect_eq(keel_shed_admit(&s), 0);
	/* Still above a whole interval later: shed. */
	g_clock += 40 * MS;
	keel_shed_record(&s, 12 * MS);
	cr_expect_eq(keel_shed_admit(&s), -EBUSY);
	g_clock += 10 * MS;
	cr_expect_eq(keel_shed_admit(&s), -EBUSY);
	/* One delay at or below target ends it. */
	keel_shed_record(&s, 5 * MS);
	cr_expect_eq(keel_shed_admit(&s), 0);
	/* Again; then no sample for an interval: drained, admitted. */
	keel_shed_record(&s, 20 * MS);
	g_clock += 100 * MS;
	keel_shed_record(&s, 20 * MS);
	cr_expect(keel_shed_shedding(&s));
	g_clock += 99 * MS;
	cr_expect_eq(keel_shed_admit(&s), -EBUSY);
	g_clock += 1 * MS;
	cr_expect_eq(keel_shed_admit(&s), 0);
	keel_shed_stats(&s, &st);
	cr_expect_eq(st.episodes, 2);
	cr_expect_eq(st.samples, 6);
	cr_expect_eq(st.shed, 3);
	cr_expect_eq(st.admitted, 3);
	o.target_ns = 100 * MS;
	cr_expect_eq(keel_shed_init(&s, &o), -EINVAL);
}

Test(limit, bulkhead_feeds_its_queueing_delays_to_a_shedder, .timeout = 10)
{
	struct keel_loop *loop = sim_setup();
	struct keel_shed shed;
	struct keel_shed_opts so = {.clock = hand_clock};
	struct keel_bulkhead_opts o = {
	    .max_concurrent = 1, .max_queue = 4, .shed = &shed};
	struct keel_shed_stats st;
	struct keel_bulkhead_stats bst;

	g_clock = 1000 * MS;
	cr_assert_eq(keel_shed_init(&shed, &so), 0);
	cr_assert_eq(keel_bulkhead_new(loop, &o, &g_bh), 0);
	spawn_bh(loop, 0, 30 * MS);
	spawn_bh(loop, 1, 1 * MS); /* queued 30 ms */
	cr_assert_eq(keel_sim_run(g_sim, 0), 0);
	keel_shed_stats(&shed, &st);
	cr_expect_eq(st.samples, 2);
	cr_expect_eq(st.last_ns, 30 * MS);
	/* Drive it into shedding: the bulkhead refuses with -EBUSY. */
	for (int i = 0; i < 3; i++) {
		keel_shed_record(&shed, 50 * MS);
		g_clock += 60 * MS;
	}
	cr_expect(keel_shed_shedding(&shed));
	cr_expect_eq(keel_bulkhead_try_acquire(g_bh), -EBUSY);
	keel_bulkhead_stats(g_bh, &bst);
	cr_expect_eq(bst.shed, 1);
	keel_bulkhead_free(g_bh);
	sim_teardown(loop);
}
