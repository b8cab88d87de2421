/* SPDX-License-Identifier: MIT */
/*
 * test_workq.c: the MPMC work queue's contracts on one loop (the
 * cross-loop cases run in mt_workq.c under TSan): capacity checks; try
 * variants and stats; a bounded push that waits, FIFO, with the item moved
 * in as room frees; close (waiting pushers -EPIPE, poppers drain then
 * -EPIPE); deadlines (now, and while asleep) leaving no waiter behind;
 * cancellation of a sleeping popper and pusher (nothing taken, nothing
 * queued); a popper cancelled while its wake is in flight passes the item
 * on to the next popper; level-triggered cancellation.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <keel.h>
#include <stdint.h>

#include "helpers/keel_test.h"

#define ITEM(v) ((void *)(uintptr_t)(v))
#define VAL(p)	((uintptr_t)(p))
#define UNSET	12345

static struct keel_workq *q;

/* What each op task saw, by its index. */
#define MAXT 8
static int g_res[MAXT];
static uintptr_t g_got[MAXT];
static int g_order[MAXT], g_norder; /* indexes, in completion order */

static void reset(void)
{
	for (int i = 0; i < MAXT; i++) {
		g_res[i] = UNSET;
		g_got[i] = 0;
	}
	g_norder = 0;
}

/* One push or pop, with a deadline; records its result. */
struct op {
	struct keel_task task;
	int idx;
	bool pop;
	void *item;
	uint64_t deadline;
};

static int op_step(struct keel_task *t);
static KEEL_TASK_TYPE(op_task, struct op, task, op_step);

static int op_step(struct keel_task *t)
{
	struct op *o = keel_container_of(t, struct op, task);

	KEEL_BEGIN(t);
	if (o->pop)
		KEEL_AWAIT(t,
			   keel_workq_pop_until(t, q, &o->item, o->deadline));
	else
		KEEL_AWAIT(t,
			   keel_workq_push_until(t, q, o->item, o->deadline));
	g_res[o->idx] = keel_res(t);
	if (o->pop && keel_res(t) == 0)
		g_got[o->idx] = VAL(o->item);
	if (g_norder < MAXT)
		g_order[g_norder++] = o->idx;
	KEEL_END(t);
}

static struct op *spawn_op(struct keel_loop *loop, int idx, bool pop,
			   uintptr_t item, uint64_t deadline)
{
	struct op *o = keel_spawn(loop, &op_task, KEEL_PRIO_NORMAL);

	cr_assert_not_null(o);
	o->idx = idx;
	o->pop = pop;
	o->item = ITEM(item);
	o->deadline = deadline;
	return o;
}

static struct keel_loop *setup(uint32_t cap)
{
	struct keel_loop *loop = NULL;

	reset();
	cr_assert_eq(keel_loop_create(&loop, NULL), 0);
	cr_assert_eq(keel_workq_new(cap, &q), 0);
	return loop;
}

static void teardown(struct keel_loop *loop)
{
	keel_workq_release(q);
	keel_loop_destroy(loop);
}

/* A script: runs `fn` in stages, one per step, yielding in between. */
struct script {
	struct keel_task task;
	void (*fn)(struct keel_task *t, int stage);
	int stage, stages;
};

static int script_step(struct keel_task *t);
static KEEL_TASK_TYPE(script_task, struct script, task, script_step);

static int script_step(struct keel_task *t)
{
	struct script *s = keel_container_of(t, struct script, task);

	KEEL_BEGIN(t);
	for (s->stage = 0; s->stage < s->stages; s->stage++) {
		s->fn(t, s->stage);
		KEEL_AWAIT(t, keel_sleep(t, 1000000));
	}
	KEEL_END(t);
}

static void spawn_script(struct keel_loop *loop,
			 void (*fn)(struct keel_task *t, int stage), int stages)
{
	struct script *s = keel_spawn(loop, &script_task, KEEL_PRIO_LOW);

	cr_assert_not_null(s);
	s->fn = fn;
	s->stages = stages;
}

Test(workq, new_checks_capacity, .timeout = 10)
{
	struct keel_workq *w = NULL;

	cr_assert_eq(keel_workq_new(0, &w), -EINVAL);
	cr_assert_eq(keel_workq_new((1u << 30) + 1, &w), -EINVAL);
	cr_assert_eq(keel_workq_new(1, &w), 0);
	keel_workq_release(keel_workq_ref(w));
	keel_workq_release(w);
}

Test(workq, try_variants_bounded_fifo_and_stats, .timeout = 10)
{
	struct keel_workq_stats st;
	void *item;

	cr_assert_eq(keel_workq_new(3, &q), 0);
	cr_assert_eq(keel_workq_try_pop(q, &item), -EAGAIN);
	for (int i = 1; i <= 3; i++)
		cr_assert_eq(keel_workq_try_push(q, ITEM(i)), 0);
	cr_assert_eq(keel_workq_try_push(q, ITEM(4)), -EAGAIN);
	keel_workq_stats(q, &st);
	cr_assert_eq(st.depth, 3);
	cr_assert_eq(st.capacity, 3);
	cr_assert_eq(st.full, 1);
	cr_assert_eq(st.pushed, 3);
	for (int i = 1; i <= 3; i++) {
		cr_assert_eq(keel_workq_try_pop(q, &item), 0);
		cr_assert_eq(VAL(item), (uintptr_t)i);
	}
	cr_assert_eq(keel_workq_try_pop(q, &item), -EAGAIN);
	/* Wraps around the ring. */
	cr_assert_eq(keel_workq_try_push(q, ITEM(5)), 0);
	cr_assert_eq(keel_workq_try_pop(q, &item), 0);
	cr_assert_eq(VAL(item), 5);
	keel_workq_stats(q, &st);
	cr_assert_eq(st.popped, 4);
	cr_assert_eq(st.depth, 0);
	keel_workq_release(q);
}

static void drain_one_per_stage(struct keel_task *t, int stage)
{
	void *item;

	(void)t;
	if (stage == 0) {
		struct keel_workq_stats st;

		keel_workq_stats(q, &st);
		cr_expect_eq(st.pushers, 2);
		cr_expect_eq(st.full, 2);
		return;
	}
	cr_expect_eq(keel_workq_try_pop(q, &item), 0);
	g_got[7 - stage] = VAL(item);
}

Test(workq, full_push_waits_and_moves_in_fifo, .timeout = 10)
{
	struct keel_loop *loop = setup(1);

	cr_assert_eq(keel_workq_try_push(q, ITEM(1)), 0);
	spawn_op(loop, 0, false, 2, UINT64_MAX);
	spawn_op(loop, 1, false, 3, UINT64_MAX);
	spawn_script(loop, drain_one_per_stage, 4);
	cr_assert_eq(keel_loop_run(loop), 0);
	cr_assert_eq(g_res[0], 0);
	cr_assert_eq(g_res[1], 0);
	cr_assert_eq(g_order[0], 0);
	cr_assert_eq(g_order[1], 1);
	cr_assert_eq(g_got[6], 1);
	cr_assert_eq(g_got[5], 2);
	cr_assert_eq(g_got[4], 3);
	teardown(loop);
}

static void close_at_stage_0(struct keel_task *t, int stage)
{
	struct keel_workq_stats st;

	(void)t;
	(void)stage;
	keel_workq_stats(q, &st);
	cr_expect_eq(st.pushers, 1);
	keel_workq_close(q);
	cr_expect_eq(keel_workq_try_push(q, ITEM(9)), -EPIPE);
}

Test(workq, close_fails_pushers_poppers_drain_then_epipe, .timeout = 10)
{
	struct keel_loop *loop = setup(1);

	cr_assert_eq(keel_workq_try_push(q, ITEM(1)), 0);
	spawn_op(loop, 0, false, 2, UINT64_MAX);
	spawn_script(loop, close_at_stage_0, 1);
	cr_assert_eq(keel_loop_run(loop), 0);
	cr_assert_eq(g_res[0], -EPIPE);
	spawn_op(loop, 1, true, 0, UINT64_MAX);
	spawn_op(loop, 2, true, 0, UINT64_MAX);
	cr_assert_eq(keel_loop_run(loop), 0);
	cr_assert_eq(g_res[1], 0);
	cr_assert_eq(g_got[1], 1);
	cr_assert_eq(g_res[2], -EPIPE);
	teardown(loop);
}

static void close_sleeping_poppers(struct keel_task *t, int stage)
{
	struct keel_workq_stats st;

	(void)t;
	(void)stage;
	keel_workq_stats(q, &st);
	cr_expect_eq(st.poppers, 2);
	keel_workq_close(q);
}

Test(workq, close_wakes_sleeping_poppers, .timeout = 10)
{
	struct keel_loop *loop = setup(4);

	spawn_op(loop, 0, true, 0, UINT64_MAX);
	spawn_op(loop, 1, true, 0, UINT64_MAX);
	spawn_script(loop, close_sleeping_poppers, 1);
	cr_assert_eq(keel_loop_run(loop), 0);
	cr_assert_eq(g_res[0], -EPIPE);
	cr_assert_eq(g_res[1], -EPIPE);
	teardown(loop);
}

Test(workq, deadlines_time_out_and_leave_no_waiter, .timeout = 10)
{
	struct keel_loop *loop = setup(1);
	struct keel_workq_stats st;
	uint64_t now = keel_loop_now(loop);

	spawn_op(loop, 0, true, 0, now + 5000000);
	spawn_op(loop, 1, true, 0, now); /* already passed */
	cr_assert_eq(keel_loop_run(loop), 0);
	cr_assert_eq(g_res[0], -ETIMEDOUT);
	cr_assert_eq(g_res[1], -ETIMEDOUT);
	cr_assert_eq(keel_workq_try_push(q, ITEM(1)), 0);
	now = keel_loop_now(loop);
	spawn_op(loop, 2, false, 2, now + 5000000);
	spawn_op(loop, 3, false, 3, now);
	cr_assert_eq(keel_loop_run(loop), 0);
	cr_assert_eq(g_res[2], -ETIMEDOUT);
	cr_assert_eq(g_res[3], -ETIMEDOUT);
	keel_workq_stats(q, &st);
	cr_assert_eq(st.poppers, 0);
	cr_assert_eq(st.pushers, 0);
	cr_assert_eq(st.depth, 1);
	teardown(loop);
}

static struct op *g_victim, *g_victim2;

static void cancel_sleepers(struct keel_task *t, int stage)
{
	struct keel_workq_stats st;

	(void)t;
	if (stage == 0) {
		keel_workq_stats(q, &st);
		cr_expect_eq(st.poppers + st.pushers, 1);
		cr_expect_eq(keel_task_cancel(&g_victim->task), 0);
		return;
	}
	keel_workq_stats(q, &st);
	cr_expect_eq(st.poppers + st.pushers, 0);
}

Test(workq, cancelled_sleeping_popper_takes_nothing, .timeout = 10)
{
	struct keel_loop *loop = setup(2);
	void *item;

	g_victim = spawn_op(loop, 0, true, 0, UINT64_MAX);
	spawn_script(loop, cancel_sleepers, 2);
	cr_assert_eq(keel_loop_run(loop), 0);
	cr_assert_eq(g_res[0], -ECANCELED);
	cr_assert_eq(keel_workq_try_push(q, ITEM(7)), 0);
	cr_assert_eq(keel_workq_try_pop(q, &item), 0);
	cr_assert_eq(VAL(item), 7);
	teardown(loop);
}

Test(workq, cancelled_sleeping_pusher_queues_nothing, .timeout = 10)
{
	struct keel_loop *loop = setup(1);
	void *item;

	cr_assert_eq(keel_workq_try_push(q, ITEM(1)), 0);
	g_victim = spawn_op(loop, 0, false, 2, UINT64_MAX);
	spawn_script(loop, cancel_sleepers, 2);
	cr_assert_eq(keel_loop_run(loop), 0);
	cr_assert_eq(g_res[0], -ECANCELED);
	cr_assert_eq(keel_workq_try_pop(q, &item), 0);
	cr_assert_eq(VAL(item), 1);
	cr_assert_eq(keel_workq_try_pop(q, &item), -EAGAIN);
	teardown(loop);
}

/*
 * Two poppers sleep, the victim first. One push wakes the victim (its wake
 * goes through the loop's inbox), which is cancelled before the wake runs:
 * the item must reach the other popper (without the hand-on it would sit
 * in the queue with a popper asleep, until the deadline).
 */
static void push_then_cancel(struct keel_task *t, int stage)
{
	(void)t;
	if (stage)
		return;
	cr_expect_eq(keel_workq_try_push(q, ITEM(42)), 0);
	cr_expect_eq(keel_task_cancel(&g_victim->task), 0);
}

Test(workq, popper_cancelled_while_woken_passes_the_item_on, .timeout = 10)
{
	struct keel_loop *loop = setup(2);
	uint64_t now = keel_loop_now(loop);

	g_victim = spawn_op(loop, 0, true, 0, UINT64_MAX);
	spawn_op(loop, 1, true, 0, now + 2000000000ull);
	spawn_script(loop, push_then_cancel, 1);
	cr_assert_eq(keel_loop_run(loop), 0);
	cr_assert_eq(g_res[0], -ECANCELED);
	cr_assert_eq(g_res[1], 0);
	cr_assert_eq(g_got[1], 42);
	teardown(loop);
}

/* Level-triggered: a task already cancelled pops and pushes nothing. */
static void cancel_then_ops(struct keel_task *t, int stage)
{
	(void)t;
	if (stage)
		return;
	cr_expect_eq(keel_task_cancel(&g_victim->task), 0);
	cr_expect_eq(keel_task_cancel(&g_victim2->task), 0);
}

Test(workq, cancelled_task_takes_and_queues_nothing, .timeout = 10)
{
	struct keel_loop *loop = setup(2);
	struct keel_workq_stats st;

	cr_assert_eq(keel_workq_try_push(q, ITEM(1)), 0);
	/* The script runs first (high class) and cancels both. */
	g_victim = spawn_op(loop, 0, true, 0, UINT64_MAX);
	g_victim2 = spawn_op(loop, 1, false, 2, UINT64_MAX);
	struct script *s = keel_spawn(loop, &script_task, KEEL_PRIO_HIGH);

	cr_assert_not_null(s);
	s->fn = cancel_then_ops;
	s->stages = 1;
	cr_assert_eq(keel_loop_run(loop), 0);
	cr_assert_eq(g_res[0], -ECANCELED);
	cr_assert_eq(g_res[1], -ECANCELED);
	keel_workq_stats(q, &st);
	cr_assert_eq(st.depth, 1);
	cr_assert_eq(st.popped, 0);
	cr_assert_eq(st.pushed, 1);
	teardown(loop);
}
