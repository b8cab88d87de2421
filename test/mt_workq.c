/* SPDX-License-Identifier: MIT */
/*
 * mt_workq.c: the MPMC work queue across loops on threads, for
 * ThreadSanitizer (a plain program: Criterion cannot start under TSan).
 * Scenarios:
 *   - spread: 4 loops with 2 poppers each; producers on two of the loops
 *     push 10^5 items each (and a plain thread some with try_push): every
 *     item popped exactly once (a bitmap) and the sum matches; the queue
 *     closes only once all are popped, so a lost wakeup stalls it;
 *   - close: poppers of 4 loops asleep on an empty queue and a pusher
 *     asleep on a full one: close wakes every one with -EPIPE, the queued
 *     item stays for a pop;
 *   - deadline: pop on an empty queue and push on a full one from another
 *     loop end with -ETIMEDOUT and leave no waiter behind;
 *   - cancel: poppers on 3 loops cancelled over and over while a producer
 *     pushes: none loses an item (all are popped, once, before the close).
 * A watchdog ends the program (as a failure) if a scenario stalls.
 * Prints "mt_workq: N passed, M failed".
 */
#include <errno.h>
#include <keel.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "helpers/scenario.h"

#define ITEM(v) ((void *)(uintptr_t)(v))
#define VAL(p)	((uintptr_t)(p))

#define LOOPS 4

static struct kt_lthread lts[LOOPS];
static struct keel_workq *wq;

/* Items are 1 .. n: seen[v] counts its pops. */
static uint8_t *seen;
static uint64_t seen_n, popped_sum, popped_n, dups, strays;

static void seen_reset(uint64_t n)
{
	free(seen);
	seen = calloc(n + 1, 1);
	CHECK(seen != NULL);
	seen_n = n;
	popped_sum = popped_n = dups = strays = 0;
}

static void seen_pop(void *item)
{
	uint64_t v = VAL(item);

	if (!v || v > seen_n) {
		__atomic_add_fetch(&strays, 1, __ATOMIC_RELAXED);
		return;
	}
	if (__atomic_fetch_add(&seen[v], 1, __ATOMIC_RELAXED))
		__atomic_add_fetch(&dups, 1, __ATOMIC_RELAXED);
	__atomic_add_fetch(&popped_sum, v, __ATOMIC_RELAXED);
	__atomic_add_fetch(&popped_n, 1, __ATOMIC_RELAXED);
}

static void seen_check(void)
{
	uint64_t missing = 0;

	for (uint64_t v = 1; v <= seen_n; v++)
		missing += seen[v] != 1;
	CHECK_EQ(missing, 0);
	CHECK_EQ(dups, 0);
	CHECK_EQ(strays, 0);
	CHECK_EQ(popped_n, seen_n);
	CHECK_EQ(popped_sum, seen_n * (seen_n + 1) / 2);
}

/* A popper: pops until the queue is closed and drained. */
struct popper {
	struct keel_task task;
	void *item;
	int end;
};

static int popper_step(struct keel_task *t);
static KEEL_TASK_TYPE(popper_task, struct popper, task, popper_step);

static int popper_end[LOOPS * 2];
static int npopper_end;

static int popper_step(struct keel_task *t)
{
	struct popper *p = keel_container_of(t, struct popper, task);

	KEEL_BEGIN(t);
	for (;;) {
		KEEL_AWAIT(t, keel_workq_pop(t, wq, &p->item));
		if (keel_res(t))
			break;
		seen_pop(p->item);
	}
	int i = __atomic_fetch_add(&npopper_end, 1, __ATOMIC_RELAXED);

	if (i < LOOPS * 2)
		kt_store(&popper_end[i], keel_res(t));
	KEEL_END(t);
}

static void popper_ends_check(int n, int want)
{
	CHECK_EQ(kt_load(&npopper_end), n);
	for (int i = 0; i < n && i < LOOPS * 2; i++)
		CHECK_EQ(kt_load(&popper_end[i]), want);
}

/* Wait until every item was popped (a bounded wait), then close. */
struct closer {
	struct keel_task task;
	int i;
};

static int closer_step(struct keel_task *t);
static KEEL_TASK_TYPE(closer_task, struct closer, task, closer_step);

static int closer_step(struct keel_task *t)
{
	struct closer *c = keel_container_of(t, struct closer, task);

	KEEL_BEGIN(t);
	for (c->i = 0; __atomic_load_n(&popped_n, __ATOMIC_RELAXED) < seen_n &&
		       c->i < 50000;
	     c->i++)
		KEEL_AWAIT(t, keel_sleep(t, KT_MS(1)));
	CHECK_EQ(__atomic_load_n(&popped_n, __ATOMIC_RELAXED), seen_n);
	keel_workq_close(wq);
	KEEL_END(t);
}

/* ---- spread --------------------------------------------------------------
 */

#define SPREAD_N     100000
#define SPREAD_PLAIN 5000
#define SPREAD_TOTAL (2 * SPREAD_N + SPREAD_PLAIN)

static int producers_left;

struct producer {
	struct keel_task task;
	uint64_t first, n, i;
};

static int producer_step(struct keel_task *t);
static KEEL_TASK_TYPE(producer_task, struct producer, task, producer_step);

static void producer_done(struct keel_loop *loop)
{
	if (__atomic_sub_fetch(&producers_left, 1, __ATOMIC_ACQ_REL) == 0)
		CHECK(keel_spawn(loop, &closer_task, KEEL_PRIO_NORMAL) != NULL);
}

static int producer_step(struct keel_task *t)
{
	struct producer *p = keel_container_of(t, struct producer, task);

	KEEL_BEGIN(t);
	for (p->i = 0; p->i < p->n; p->i++) {
		KEEL_AWAIT(t, keel_workq_push(t, wq, ITEM(p->first + p->i)));
		if (keel_res(t)) {
			CHECK_EQ(keel_res(t), 0);
			break;
		}
	}
	producer_done(t->loop);
	KEEL_END(t);
}

static void spawn_poppers(struct keel_loop *loop, int n)
{
	for (int i = 0; i < n; i++)
		CHECK(keel_spawn(loop, &popper_task, KEEL_PRIO_NORMAL) != NULL);
}

static void spread_setup(struct keel_loop *loop, int index)
{
	spawn_poppers(loop, 2);
	if (index < 2) {
		struct producer *p =
		    keel_spawn(loop, &producer_task, KEEL_PRIO_NORMAL);

		CHECK(p != NULL);
		if (p) {
			p->first = 1 + (uint64_t)index * SPREAD_N;
			p->n = SPREAD_N;
		}
	}
}

static struct keel_loop *spread_loop;

static void *spread_plain(void *arg)
{
	(void)arg;
	for (uint64_t v = 2 * SPREAD_N + 1; v <= SPREAD_TOTAL; v++) {
		int r;

		while ((r = keel_workq_try_push(wq, ITEM(v))) == -EAGAIN)
			sched_yield();
		CHECK_EQ(r, 0);
	}
	/* The closer waits for every item popped, these too. */
	return NULL;
}

static void scenario_spread(void)
{
	struct keel_workq_stats st;
	pthread_t th;

	seen_reset(SPREAD_TOTAL);
	npopper_end = 0;
	producers_left = 2; /* the tasks; the last spawns the closer */
	CHECK_EQ(keel_workq_new(64, &wq), 0);
	CHECK_EQ(keel_loop_create(&spread_loop, NULL), 0);
	if (!spread_loop || !wq)
		return;
	kt_watch_loop(spread_loop, true);
	CHECK_EQ(pthread_create(&th, NULL, spread_plain, NULL), 0);
	spread_setup(spread_loop, 0);
	kt_lthreads_start(lts, LOOPS, spread_setup);
	CHECK_EQ(keel_loop_run(spread_loop), 0);
	kt_lthreads_join(lts, LOOPS);
	pthread_join(th, NULL);
	seen_check();
	popper_ends_check(LOOPS * 2, -EPIPE);
	keel_workq_stats(wq, &st);
	CHECK_EQ(st.pushed, SPREAD_TOTAL);
	CHECK_EQ(st.popped, SPREAD_TOTAL);
	CHECK_EQ(st.depth, 0);
	CHECK_EQ(st.poppers, 0);
	CHECK_EQ(st.pushers, 0);
	keel_workq_release(wq);
	kt_watch_loop(spread_loop, false);
	keel_loop_destroy(spread_loop);
}

/* ---- close ---------------------------------------------------------------
 */

static struct keel_workq *full_q;
static int close_push_res;

struct blocked_pusher {
	struct keel_task task;
};

static int blocked_pusher_step(struct keel_task *t);
static KEEL_TASK_TYPE(blocked_pusher_task, struct blocked_pusher, task,
		      blocked_pusher_step);

static int blocked_pusher_step(struct keel_task *t)
{
	KEEL_BEGIN(t);
	KEEL_AWAIT(t, keel_workq_push(t, full_q, ITEM(2)));
	kt_store(&close_push_res, keel_res(t));
	KEEL_END(t);
}

/* On loop 0: once everyone sleeps, close both queues. */
struct close_script {
	struct keel_task task;
	int i;
};

static int close_script_step(struct keel_task *t);
static KEEL_TASK_TYPE(close_script_task, struct close_script, task,
		      close_script_step);

static int close_script_step(struct keel_task *t)
{
	struct close_script *c =
	    keel_container_of(t, struct close_script, task);
	struct keel_workq_stats a, b;

	KEEL_BEGIN(t);
	for (c->i = 0; c->i < 50000; c->i++) {
		keel_workq_stats(wq, &a);
		keel_workq_stats(full_q, &b);
		if (a.poppers == LOOPS * 2 && b.pushers == 1)
			break;
		KEEL_AWAIT(t, keel_sleep(t, KT_MS(1)));
	}
	keel_workq_stats(wq, &a);
	keel_workq_stats(full_q, &b);
	CHECK_EQ(a.poppers, LOOPS * 2);
	CHECK_EQ(b.pushers, 1);
	keel_workq_close(wq);
	keel_workq_close(full_q);
	keel_workq_close(wq); /* idempotent */
	KEEL_END(t);
}

static void close_setup(struct keel_loop *loop, int index)
{
	spawn_poppers(loop, 2);
	if (index == 1)
		CHECK(keel_spawn(loop, &blocked_pusher_task,
				 KEEL_PRIO_NORMAL) != NULL);
}

static void scenario_close(void)
{
	struct keel_loop *loop = NULL;
	void *item = NULL;

	seen_reset(1);
	npopper_end = 0;
	close_push_res = 1;
	CHECK_EQ(keel_workq_new(4, &wq), 0);
	CHECK_EQ(keel_workq_new(1, &full_q), 0);
	CHECK_EQ(keel_loop_create(&loop, NULL), 0);
	if (!loop || !wq || !full_q)
		return;
	CHECK_EQ(keel_workq_try_push(full_q, ITEM(1)), 0);
	CHECK_EQ(keel_workq_try_push(full_q, ITEM(3)), -EAGAIN);
	kt_watch_loop(loop, true);
	close_setup(loop, 0);
	CHECK(keel_spawn(loop, &close_script_task, KEEL_PRIO_NORMAL) != NULL);
	kt_lthreads_start(lts, LOOPS, close_setup);
	CHECK_EQ(keel_loop_run(loop), 0);
	kt_lthreads_join(lts, LOOPS);
	popper_ends_check(LOOPS * 2, -EPIPE);
	CHECK_EQ(close_push_res, -EPIPE);
	/* Closed: pushes fail, what was queued is still popped, once. */
	CHECK_EQ(keel_workq_try_push(full_q, ITEM(4)), -EPIPE);
	CHECK_EQ(keel_workq_try_pop(full_q, &item), 0);
	CHECK_EQ(VAL(item), 1);
	CHECK_EQ(keel_workq_try_pop(full_q, &item), -EPIPE);
	keel_workq_release(full_q);
	keel_workq_release(wq);
	kt_watch_loop(loop, false);
	keel_loop_destroy(loop);
}

/* ---- deadline --------------------------------------------------------------
 */

static int dl_pop_res, dl_push_res;

struct dl_waiter {
	struct keel_task task;
	void *item;
};

static int dl_waiter_step(struct keel_task *t);
static KEEL_TASK_TYPE(dl_waiter_task, struct dl_waiter, task, dl_waiter_step);

static int dl_waiter_step(struct keel_task *t)
{
	struct dl_waiter *d = keel_container_of(t, struct dl_waiter, task);

	KEEL_BEGIN(t);
	KEEL_AWAIT(t, keel_workq_pop_until(t, wq, &d->item,
					   keel_loop_now(t->loop) + KT_MS(20)));
	kt_store(&dl_pop_res, keel_res(t));
	KEEL_AWAIT(t,
		   keel_workq_push_until(t, full_q, ITEM(9),
					 keel_loop_now(t->loop) + KT_MS(20)));
	kt_store(&dl_push_res, keel_res(t));
	KEEL_END(t);
}

static void dl_setup(struct keel_loop *loop, int index)
{
	(void)index;
	CHECK(keel_spawn(loop, &dl_waiter_task, KEEL_PRIO_NORMAL) != NULL);
}

static void scenario_deadline(void)
{
	struct keel_loop *loop = NULL;
	struct keel_workq_stats st;

	CHECK_EQ(keel_workq_new(2, &wq), 0);
	CHECK_EQ(keel_workq_new(1, &full_q), 0);
	CHECK_EQ(keel_loop_create(&loop, NULL), 0);
	if (!loop || !wq || !full_q)
		return;
	CHECK_EQ(keel_workq_try_push(full_q, ITEM(1)), 0);
	kt_watch_loop(loop, true);
	kt_lthreads_start(lts, 2, dl_setup);
	CHECK_EQ(keel_loop_run(loop), 0);
	kt_lthreads_join(lts, 2);
	CHECK_EQ(dl_pop_res, -ETIMEDOUT);
	CHECK_EQ(dl_push_res, -ETIMEDOUT);
	keel_workq_stats(wq, &st);
	CHECK_EQ(st.poppers, 0);
	CHECK_EQ(st.depth, 0);
	keel_workq_stats(full_q, &st);
	CHECK_EQ(st.pushers, 0);
	CHECK_EQ(st.depth, 1);
	CHECK_EQ(st.full, 1);
	keel_workq_release(full_q);
	keel_workq_release(wq);
	kt_watch_loop(loop, false);
	keel_loop_destroy(loop);
}

/* ---- cancel ----------------------------------------------------------------
 */

#define CANCEL_N      20000
#define CANCEL_ROUNDS 300

static int cancelled_ok, cancelled_bad;

/* A popper that is cancelled at some point: it counts what it took. */
struct victim {
	struct keel_task task;
	void *item;
};

static int victim_step(struct keel_task *t);
static KEEL_TASK_TYPE(victim_task, struct victim, task, victim_step);

static int victim_step(struct keel_task *t)
{
	struct victim *v = keel_container_of(t, struct victim, task);

	KEEL_BEGIN(t);
	for (;;) {
		KEEL_AWAIT(t, keel_workq_pop(t, wq, &v->item));
		if (keel_res(t))
			break;
		seen_pop(v->item);
	}
	KEEL_EXIT(t, keel_res(t));
}

/* On loops 1..3: spawn a victim, let it sleep or run, cancel it. */
struct canceller {
	struct keel_task task;
	struct victim *v;
	int round;
};

static int canceller_step(struct keel_task *t);
static KEEL_TASK_TYPE(canceller_task, struct canceller, task, canceller_step);

static int canceller_step(struct keel_task *t)
{
	struct canceller *c = keel_container_of(t, struct canceller, task);

	KEEL_BEGIN(t);
	for (c->round = 0; c->round < CANCEL_ROUNDS; c->round++) {
		c->v = keel_spawn(t->loop, &victim_task,
				  KEEL_PRIO_NORMAL | KEEL_SPAWN_JOINABLE);
		CHECK(c->v != NULL);
		if (!c->v)
			break;
		if (c->round % 3)
			KEEL_YIELD(t);
		if (c->round % 3 == 2)
			KEEL_AWAIT(t, keel_sleep(t, 100000));
		CHECK_EQ(keel_task_cancel(&c->v->task), 0);
		KEEL_AWAIT(t, keel_join(t, &c->v->task));
		/* Cancelled, or (rarely) the queue closed first. */
		if (keel_res(t) == -ECANCELED || keel_res(t) == -EPIPE)
			kt_add(&cancelled_ok, 1);
		else
			kt_add(&cancelled_bad, 1);
	}
	KEEL_END(t);
}

static void cancel_setup(struct keel_loop *loop, int index)
{
	if (index == 0) {
		struct producer *p =
		    keel_spawn(loop, &producer_task, KEEL_PRIO_NORMAL);

		CHECK(p != NULL);
		if (p) {
			p->first = 1;
			p->n = CANCEL_N;
		}
		return;
	}
	/* One steady popper per loop, so that all items are popped even
	 * when every victim is gone. */
	spawn_poppers(loop, 1);
	CHECK(keel_spawn(loop, &canceller_task, KEEL_PRIO_NORMAL) != NULL);
}

static void scenario_cancel(void)
{
	struct keel_loop *loop = NULL;

	seen_reset(CANCEL_N);
	npopper_end = 0;
	producers_left = 1;
	cancelled_ok = cancelled_bad = 0;
	CHECK_EQ(keel_workq_new(8, &wq), 0);
	CHECK_EQ(keel_loop_create(&loop, NULL), 0);
	if (!loop || !wq)
		return;
	kt_watch_loop(loop, true);
	cancel_setup(loop, 0);
	kt_lthreads_start(lts, LOOPS, cancel_setup);
	CHECK_EQ(keel_loop_run(loop), 0);
	kt_lthreads_join(lts, LOOPS);
	seen_check();
	popper_ends_check(LOOPS - 1, -EPIPE);
	CHECK_EQ(cancelled_ok, (LOOPS - 1) * CANCEL_ROUNDS);
	CHECK_EQ(cancelled_bad, 0);
	keel_workq_release(wq);
	kt_watch_loop(loop, false);
	keel_loop_destroy(loop);
}

int main(void)
{
	kt_scenarios_start("mt_workq");
	kt_scenario_run("spread", scenario_spread);
	kt_scenario_run("close", scenario_close);
	kt_scenario_run("deadline", scenario_deadline);
	kt_scenario_run("cancel", scenario_cancel);
	free(seen);
	return kt_scenarios_finish();
}
