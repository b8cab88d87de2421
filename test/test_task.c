/* SPDX-License-Identifier: MIT */
/*
 * test_task.c: tasks. Spawn, join and exit ordering (exit status to the
 * joiner, join errors, joining a task that already exited), nested routines
 * (KEEL_AWAIT_CALL), the defer stack (LIFO at exit, unwind and drop down to
 * a mark), KEEL_YIELD interleaving, the task header's size and the
 * spawned/exited counters.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <keel.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "helpers/keel_test.h"
#include "io.h"

/* Every test runs in its own process, so these start zeroed. */
static struct kt_log g_log;
static int g_release; /* lets a waiting child exit */
static int g_exited;  /* children that reached their exit */

/*
 * A child: awaits `nops` no-ops (or, with `wait_release`, yields until
 * g_release is set), logs 100 + status, exits with `status`.
 */
struct child {
	struct keel_task task;
	int status;
	int nops;
	int wait_release;
	int join_self;
	int i;
};

static int child_step(struct keel_task *t);
static KEEL_TASK_TYPE(child_task, struct child, task, child_step);

static int child_step(struct keel_task *t)
{
	struct child *c = keel_container_of(t, struct child, task);

	KEEL_BEGIN(t);
	if (c->join_self) {
		KEEL_AWAIT(t, keel_join(t, t));
		c->status = keel_res(t);
	}
	for (c->i = 0; c->i < c->nops; c->i++) {
		KEEL_AWAIT(t, keel_nop(t));
		if (keel_res(t) != 0)
			KEEL_EXIT(t, -1000);
	}
	/* Bounded, so that a broken join cannot hang the test. */
	for (c->i = 0; c->wait_release && !g_release && c->i < 10000; c->i++)
		KEEL_YIELD(t);
	kt_log_push(&g_log, 100 + c->status);
	g_exited++;
	KEEL_EXIT(t, c->status);
}

static struct child *spawn_child(struct keel_task *t, unsigned flags,
				 int status, int nops)
{
	struct child *c = keel_spawn(keel_task_loop(t), &child_task,
				     KEEL_PRIO_NORMAL | flags);

	if (c) {
		c->status = status;
		c->nops = nops;
	}
	return c;
}

/* Spawns `n` joinable children and joins them in spawn order. */
struct parent {
	struct keel_task task;
	int n;
	int i;
	struct child *kids[16];
};

static int parent_step(struct keel_task *t);
static KEEL_TASK_TYPE(parent_task, struct parent, task, parent_step);

static int parent_step(struct keel_task *t)
{
	struct parent *p = keel_container_of(t, struct parent, task);

	KEEL_BEGIN(t);
	for (p->i = 0; p->i < p->n; p->i++) {
		/* Later children await fewer ops, so they exit first. */
		p->kids[p->i] = spawn_child(t, KEEL_SPAWN_JOINABLE, 10 + p->i,
					    2 * (p->n - p->i));
		if (!p->kids[p->i])
			KEEL_EXIT(t, -ENOMEM);
	}
	for (p->i = 0; p->i < p->n; p->i++) {
		KEEL_AWAIT(
		    t, keel_join(t, keel_task_of(&child_task, p->kids[p->i])));
		kt_log_push(&g_log, 200 + keel_res(t));
	}
	KEEL_END(t);
}

static struct keel_loop *run_parent(int n)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct parent *p = kt_spawn(loop, &parent_task, KEEL_PRIO_NORMAL);

	p->n = n;
	kt_loop_run(loop);
	return loop;
}

Test(task, join_delivers_child_exit_status_after_child_exits, .timeout = 10)
{
	struct keel_loop *loop = run_parent(1);
	const int want[] = {110, 210};

	kt_log_expect(&g_log, want, 2);
	keel_loop_destroy(loop);
}

Test(task, joins_of_several_children_return_each_ones_status, .timeout = 10)
{
	struct keel_loop *loop = run_parent(5);
	int joined = 0;

	cr_assert_eq(g_log.n, 10);
	/* Children exit in reverse order (fewer ops)... */
	for (int i = 0; i < 5; i++)
		cr_assert_eq(g_log.v[i], 100 + 14 - i, "exit %d: %d", i,
			     g_log.v[i]);
	/* ...but each join returns the status of the child it names. */
	for (int i = 0; i < g_log.n; i++) {
		if (g_log.v[i] < 200)
			continue;
		cr_assert_eq(g_log.v[i], 210 + joined, "join %d gave %d",
			     joined, g_log.v[i] - 200);
		cr_assert_lt(kt_log_find(&g_log, g_log.v[i] - 100), i,
			     "child %d joined before it exited", joined);
		joined++;
	}
	cr_assert_eq(joined, 5);
	keel_loop_destroy(loop);
}

/* Join-error probes: `mode` picks which misuse to try. */
enum { PROBE_NOT_JOINABLE, PROBE_SELF, PROBE_BUSY, PROBE_EXITED };

struct prober {
	struct keel_task task;
	int mode;
	int rc;
	int i;
	struct child *c;
	struct keel_task *target;
};

static int prober_step(struct keel_task *t);
static KEEL_TASK_TYPE(prober_task, struct prober, task, prober_step);

static int prober_step(struct keel_task *t)
{
	struct prober *p = keel_container_of(t, struct prober, task);
	struct keel_loop_stats s;

	KEEL_BEGIN(t);
	switch (p->mode) {
	case PROBE_NOT_JOINABLE:
		/* A detached child that stays alive until released. */
		p->c = spawn_child(t, 0, 1, 0);
		if (!p->c)
			KEEL_EXIT(t, -ENOMEM);
		p->c->wait_release = 1;
		KEEL_AWAIT(t, keel_join(t, keel_task_of(&child_task, p->c)));
		kt_log_push(&g_log, keel_res(t));
		g_release = 1;
		break;
	case PROBE_SELF:
		/* The child joins itself; its status is what join gave. */
		p->c = spawn_child(t, KEEL_SPAWN_JOINABLE, 0, 0);
		if (!p->c)
			KEEL_EXIT(t, -ENOMEM);
		p->c->join_self = 1;
		KEEL_AWAIT(t, keel_join(t, keel_task_of(&child_task, p->c)));
		kt_log_push(&g_log, keel_res(t));
		break;
	case PROBE_BUSY:
		/* Join a child that waits; a second joiner must get EBUSY. */
		p->c = spawn_child(t, KEEL_SPAWN_JOINABLE, 5, 0);
		if (!p->c)
			KEEL_EXIT(t, -ENOMEM);
		p->c->wait_release = 1;
		p->target = keel_task_of(&child_task, p->c);
		{
			struct prober *second = keel_spawn(
			    keel_task_loop(t), &prober_task, KEEL_PRIO_NORMAL);

			if (!second)
				KEEL_EXIT(t, -ENOMEM);
			second->mode = -1;
			second->target = p->target;
		}
		KEEL_AWAIT(t, keel_join(t, p->target));
		kt_log_push(&g_log, keel_res(t));
		break;
	case PROBE_EXITED:
		p->c = spawn_child(t, KEEL_SPAWN_JOINABLE, 7, 0);
		if (!p->c)
			KEEL_EXIT(t, -ENOMEM);
		for (p->i = 0; !g_exited && p->i < 10000; p->i++)
			KEEL_YIELD(t);
		/* Exited but not joined: no longer live, frame still kept. */
		keel_loop_stats(keel_task_loop(t), &s);
		kt_log_push(&g_log, (int)s.tasks_live);
		kt_log_push(&g_log, (int)s.exited);
		KEEL_AWAIT(
		    t, (p->rc = keel_join(t, keel_task_of(&child_task, p->c))));
		kt_log_push(&g_log, p->rc);
		kt_log_push(&g_log, keel_res(t));
		break;
	default:
		/* The second joiner of PROBE_BUSY. */
		KEEL_AWAIT(t, keel_join(t, p->target));
		kt_log_push(&g_log, keel_res(t));
		g_release = 1;
		break;
	}
	KEEL_END(t);
}

static void run_prober(int mode)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct prober *p = kt_spawn(loop, &prober_task, KEEL_PRIO_NORMAL);

	p->mode = mode;
	kt_loop_run(loop);
	keel_loop_destroy(loop);
}

Test(task, join_of_non_joinable_task_gives_einval, .timeout = 10)
{
	run_prober(PROBE_NOT_JOINABLE);
	cr_assert_geq(g_log.n, 1);
	cr_assert_eq(g_log.v[0], -EINVAL, "join gave %d", g_log.v[0]);
	/* The child still ran to its own exit, once released. */
	cr_assert_eq(kt_log_find(&g_log, 101), 1);
}

Test(task, join_of_self_gives_edeadlk, .timeout = 10)
{
	const int want[] = {100 - EDEADLK, -EDEADLK};

	run_prober(PROBE_SELF);
	kt_log_expect(&g_log, want, 2);
}

Test(task, second_joiner_of_same_task_gives_ebusy, .timeout = 10)
{
	/* Second joiner fails, the child exits, the first joiner gets 5. */
	const int want[] = {-EBUSY, 105, 5};

	run_prober(PROBE_BUSY);
	kt_log_expect(&g_log, want, 3);
}

Test(task, join_of_already_exited_task_returns_status_at_once, .timeout = 10)
{
	/* child exit; tasks_live 1; exited 1; join READY; status 7 */
	const int want[] = {107, 1, 1, KEEL_READY, 7};

	run_prober(PROBE_EXITED);
	kt_log_expect(&g_log, want, 5);
}

/* Nested routines: their resume state lives in the task's frame. */
struct rt {
	struct keel_task task;
	struct keel_routine outer;
	struct keel_routine inner;
	int arg;
	int inner_i;
	int nops_done;
	int acc;
	int mode;
};

/* Awaits `arg` no-ops, then returns arg * 10. */
static int count_nops(struct keel_task *t, struct rt *f)
{
	KEEL_BEGIN(&f->inner);
	for (f->inner_i = 0; f->inner_i < f->arg; f->inner_i++) {
		KEEL_AWAIT(&f->inner, keel_nop(t));
		if (keel_res(t) != 0)
			KEEL_ROUTINE_RETURN(&f->inner, t, -1000);
		f->nops_done++;
	}
	KEEL_ROUTINE_RETURN(&f->inner, t, f->arg * 10);
}

/* One await of its own, then count_nops(2) and count_nops(3): 51. */
static int outer_routine(struct keel_task *t, struct rt *f)
{
	KEEL_BEGIN(&f->outer);
	KEEL_AWAIT(&f->outer, keel_nop(t));
	f->nops_done++;
	f->arg = 2;
	KEEL_AWAIT_CALL(&f->outer, count_nops(t, f));
	f->acc = keel_res(t);
	f->arg = 3;
	KEEL_AWAIT_CALL(&f->outer, count_nops(t, f));
	f->acc += keel_res(t);
	KEEL_ROUTINE_RETURN(&f->outer, t, f->acc + 1);
}

static int rt_step(struct keel_task *t);
static KEEL_TASK_TYPE(rt_task, struct rt, task, rt_step);

static int rt_step(struct keel_task *t)
{
	struct rt *f = keel_container_of(t, struct rt, task);

	KEEL_BEGIN(t);
	if (f->mode == 0) {
		/* The same routine three times, the last without awaiting. */
		f->arg = 3;
		KEEL_AWAIT_CALL(t, count_nops(t, f));
		kt_log_push(&g_log, keel_res(t));
		f->arg = 1;
		KEEL_AWAIT_CALL(t, count_nops(t, f));
		kt_log_push(&g_log, keel_res(t));
		f->arg = 0;
		KEEL_AWAIT_CALL(t, count_nops(t, f));
		kt_log_push(&g_log, keel_res(t));
	} else {
		KEEL_AWAIT_CALL(t, outer_routine(t, f));
		kt_log_push(&g_log, keel_res(t));
	}
	/* The task's own awaits still work after the routines. */
	KEEL_AWAIT(t, keel_nop(t));
	kt_log_push(&g_log, keel_res(t));
	kt_log_push(&g_log, f->nops_done);
	KEEL_END(t);
}

static void run_rt(int mode)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct rt *f = kt_spawn(loop, &rt_task, KEEL_PRIO_NORMAL);

	f->mode = mode;
	kt_loop_run(loop);
	keel_loop_destroy(loop);
}

Test(task, routine_called_again_starts_over_with_its_own_awaits, .timeout = 10)
{
	/* 30, 10, 0 from the routine; the nop's 0; 4 nops in routines */
	const int want[] = {30, 10, 0, 0, 4};

	run_rt(0);
	kt_log_expect(&g_log, want, 5);
}

Test(task, routine_nested_two_levels_resumes_innermost_await, .timeout = 10)
{
	/* 20 + 30 + 1; the nop's 0; 1 + 2 + 3 nops */
	const int want[] = {51, 0, 6};

	run_rt(1);
	kt_log_expect(&g_log, want, 3);
}

/* The defer stack. */
static void defer_log(void *arg)
{
	kt_log_push(&g_log, (int)(intptr_t)arg);
}

static int g_defer_failures;

static void push_defer(struct keel_task *t, int v)
{
	if (keel_defer(t, defer_log, (void *)(intptr_t)v) != 0)
		g_defer_failures++;
}

enum { DEFER_LIFO, DEFER_UNWIND, DEFER_DROP, DEFER_NESTED };

struct deferrer {
	struct keel_task task;
	int mode;
	unsigned mark;
	unsigned mark2;
	unsigned mark0;
};

static int deferrer_step(struct keel_task *t);
static KEEL_TASK_TYPE(deferrer_task, struct deferrer, task, deferrer_step);

static int deferrer_step(struct keel_task *t)
{
	struct deferrer *d = keel_container_of(t, struct deferrer, task);

	KEEL_BEGIN(t);
	switch (d->mode) {
	case DEFER_LIFO:
		push_defer(t, 1);
		/* Defers survive awaits. */
		KEEL_AWAIT(t, keel_nop(t));
		push_defer(t, 2);
		KEEL_YIELD(t);
		push_defer(t, 3);
		/* Nothing runs before the exit. */
		kt_log_push(&g_log, -(int)keel_defer_mark(t));
		break;
	case DEFER_UNWIND:
		push_defer(t, 1);
		d->mark = keel_defer_mark(t);
		push_defer(t, 2);
		KEEL_AWAIT(t, keel_nop(t));
		push_defer(t, 3);
		keel_defer_unwind(t, d->mark);
		/* After the unwind the depth is back to the mark. */
		kt_log_push(&g_log, -(int)keel_defer_mark(t));
		push_defer(t, 4);
		break;
	case DEFER_DROP:
		push_defer(t, 1);
		d->mark = keel_defer_mark(t);
		push_defer(t, 2);
		push_defer(t, 3);
		keel_defer_drop(t, d->mark);
		kt_log_push(&g_log, -(int)keel_defer_mark(t));
		break;
	case DEFER_NESTED:
		d->mark0 = keel_defer_mark(t);
		push_defer(t, 1);
		d->mark = keel_defer_mark(t);
		push_defer(t, 2);
		d->mark2 = keel_defer_mark(t);
		push_defer(t, 3);
		keel_defer_unwind(t, d->mark2); /* runs 3 */
		keel_defer_drop(t, d->mark);	/* discards 2 */
		keel_defer_unwind(t, d->mark0); /* runs 1 */
		kt_log_push(&g_log, -(int)keel_defer_mark(t));
		push_defer(t, 4);
		break;
	}
	KEEL_END(t);
}

static void run_deferrer(int mode)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct deferrer *d = kt_spawn(loop, &deferrer_task, KEEL_PRIO_NORMAL);

	d->mode = mode;
	kt_loop_run(loop);
	cr_assert_eq(g_defer_failures, 0, "keel_defer failed");
	keel_loop_destroy(loop);
}

Test(task, defers_run_last_in_first_out_at_exit, .timeout = 10)
{
	/* depth 3 before exit, then 3, 2, 1 */
	const int want[] = {-3, 3, 2, 1};

	run_deferrer(DEFER_LIFO);
	kt_log_expect(&g_log, want, 4);
}

Test(task, defer_unwind_runs_only_cleanups_above_mark, .timeout = 10)
{
	/* unwind to 1: 3, 2; depth 1; at exit 4, 1 */
	const int want[] = {3, 2, -1, 4, 1};

	run_deferrer(DEFER_UNWIND);
	kt_log_expect(&g_log, want, 5);
}

Test(task, defer_drop_discards_cleanups_without_running_them, .timeout = 10)
{
	const int want[] = {-1, 1};

	run_deferrer(DEFER_DROP);
	kt_log_expect(&g_log, want, 2);
}

Test(task, defer_nested_marks_unwind_and_drop_compose, .timeout = 10)
{
	/* 3 run, 2 dropped, 1 run; depth 0; 4 at exit */
	const int want[] = {3, 1, 0, 4};

	run_deferrer(DEFER_NESTED);
	kt_log_expect(&g_log, want, 4);
}

/* KEEL_YIELD: tasks of one class take turns. */
struct yielder {
	struct keel_task task;
	int id;
	int i;
};

static int yielder_step(struct keel_task *t);
static KEEL_TASK_TYPE(yielder_task, struct yielder, task, yielder_step);

static int yielder_step(struct keel_task *t)
{
	struct yielder *y = keel_container_of(t, struct yielder, task);

	KEEL_BEGIN(t);
	for (y->i = 0; y->i < 10; y->i++) {
		kt_log_push(&g_log, y->id);
		KEEL_YIELD(t);
	}
	KEEL_END(t);
}

Test(task, yield_alternates_tasks_strictly, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	int want[30];

	for (int id = 1; id <= 3; id++) {
		struct yielder *y =
		    kt_spawn(loop, &yielder_task, KEEL_PRIO_NORMAL);

		y->id = id;
	}
	for (int i = 0; i < 30; i++)
		want[i] = 1 + i % 3;
	kt_loop_run(loop);
	kt_log_expect(&g_log, want, 30);
	keel_loop_destroy(loop);
}

Test(task, task_header_is_at_most_64_bytes, .timeout = 10)
{
	cr_assert_leq(sizeof(struct keel_task), 64, "sizeof = %zu",
		      sizeof(struct keel_task));
}

/* A task that spawns `n` detached children of its own. */
struct spawner {
	struct keel_task task;
	int n;
	int i;
};

static int g_names_ok;

static int spawner_step(struct keel_task *t);
static KEEL_TASK_TYPE(spawner_task, struct spawner, task, spawner_step);

static int spawner_step(struct keel_task *t)
{
	struct spawner *s = keel_container_of(t, struct spawner, task);

	KEEL_BEGIN(t);
	if (strcmp(keel_task_name(t), "spawner_task") == 0)
		g_names_ok++;
	for (s->i = 0; s->i < s->n; s->i++) {
		if (!spawn_child(t, 0, 0, 1))
			KEEL_EXIT(t, -ENOMEM);
		KEEL_AWAIT(t, keel_nop(t));
	}
	KEEL_END(t);
}

Test(task, stats_count_spawned_and_exited_tasks, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_loop_stats s;

	for (int i = 0; i < 10; i++) {
		struct spawner *sp =
		    kt_spawn(loop, &spawner_task, KEEL_PRIO_NORMAL);

		sp->n = 3;
	}
	s = kt_stats(loop);
	cr_assert_eq(s.spawned, 10);
	cr_assert_eq(s.tasks_live, 10);
	cr_assert_eq(s.exited, 0);
	kt_loop_run(loop);
	s = kt_stats(loop);
	cr_assert_eq(s.spawned, 40, "spawned = %lu", (unsigned long)s.spawned);
	cr_assert_eq(s.exited, 40, "exited = %lu", (unsigned long)s.exited);
	cr_assert_eq(s.tasks_live, 0);
	cr_assert_eq(s.zombies, 0);
	cr_assert_eq(s.ops_inflight, 0);
	cr_assert_eq(g_exited, 30);
	/* keel_task_name() gave the type's name in every spawner. */
	cr_assert_eq(g_names_ok, 10);
	keel_loop_destroy(loop);
}

/* A frame with a body to check that spawn hands out zeroed memory. */
struct scribbler {
	struct keel_task task;
	unsigned char body[512];
};

static int scribbler_step(struct keel_task *t);
static KEEL_TASK_TYPE(scribbler_task, struct scribbler, task, scribbler_step);

static int scribbler_step(struct keel_task *t)
{
	struct scribbler *s = keel_container_of(t, struct scribbler, task);

	KEEL_BEGIN(t);
	/* (clang rejects a KEEL_BEGIN with no await after it.) */
	KEEL_AWAIT(t, keel_nop(t));
	memset(s->body, 0xa5, sizeof(s->body));
	KEEL_END(t);
}

static int all_zero(const unsigned char *p, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (p[i])
			return 0;
	return 1;
}

Test(task, spawn_returns_zeroed_frame_even_from_recycled_memory, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct scribbler *s;

	for (int round = 0; round < 3; round++) {
		for (int i = 0; i < 8; i++) {
			s = kt_spawn(loop, &scribbler_task, KEEL_PRIO_NORMAL);
			cr_assert(all_zero(s->body, sizeof(s->body)),
				  "round %d: frame %d not zeroed", round, i);
			cr_assert_eq(
			    keel_task_loop(keel_task_of(&scribbler_task, s)),
			    loop);
		}
		kt_loop_run(loop);
	}
	keel_loop_destroy(loop);
}

/*
 * KEEL_TASK_TYPE_TAIL: the frame is zeroed up to its tail and no further.
 * The step scribbles over all of it; the next spawn of the type gets the
 * same memory back from keel's allocator (a small frame's size class is a
 * LIFO cache) with the head zeroed and the tail as it was left. Sanitizer
 * builds allocate frames with malloc (KEEL_ALLOC_LIBC), so there only the
 * head is checked.
 */
struct tailed {
	struct keel_task task;
	int fields[8];
	struct {
		int len;
		unsigned char bytes[600];
	} buf;
};

static int tailed_step(struct keel_task *t);
static KEEL_TASK_TYPE_TAIL(tailed_task, struct tailed, task, tailed_step,
			   buf.bytes);

static int tailed_step(struct keel_task *t)
{
	struct tailed *s = keel_container_of(t, struct tailed, task);

	KEEL_BEGIN(t);
	KEEL_AWAIT(t, keel_nop(t));
	memset(s->fields, 0xa5, sizeof(s->fields));
	s->buf.len = -1;
	memset(s->buf.bytes, 0xa5, sizeof(s->buf.bytes));
	KEEL_END(t);
}

Test(task, tail_type_zeroes_the_frame_up_to_its_tail_only, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct tailed *s;

	cr_assert_eq(tailed_task.zero_size, offsetof(struct tailed, buf.bytes));
	for (int round = 0; round < 3; round++) {
		s = kt_spawn(loop, &tailed_task, KEEL_PRIO_NORMAL);
		cr_assert(all_zero((const unsigned char *)s->fields,
				   sizeof(s->fields)),
			  "round %d: head not zeroed", round);
		cr_assert_eq(s->buf.len, 0, "round %d: head not zeroed", round);
		cr_assert_eq(keel_task_loop(keel_task_of(&tailed_task, s)),
			     loop);
#ifndef KEEL_ALLOC_LIBC
		if (round > 0)
			for (size_t i = 0; i < sizeof(s->buf.bytes); i++)
				cr_assert_eq(s->buf.bytes[i], 0xa5,
					     "round %d: tail byte %zu zeroed",
					     round, i);
#endif
		kt_loop_run(loop);
	}
	/* A plain type still zeroes everything (zero_size 0: all). */
	cr_assert_eq(scribbler_task.zero_size, 0);
	keel_loop_destroy(loop);
}

/*
 * A frame over the allocator's small classes (4 KiB) goes to the arena and
 * back: joined once it has exited (the join that frees the frame at once),
 * round after round, each new frame zeroed and each status delivered.
 */
struct big_child {
	struct keel_task task;
	unsigned char body[8192];
};

static int big_child_step(struct keel_task *t)
{
	struct big_child *b = keel_container_of(t, struct big_child, task);
	int zeroed = all_zero(b->body, sizeof(b->body));

	memset(b->body, 0x5a, sizeof(b->body));
	KEEL_EXIT(t, zeroed ? 7 : 1);
}
static KEEL_TASK_TYPE(big_child_task, struct big_child, task, big_child_step);

struct big_parent {
	struct keel_task task;
	struct keel_task *kid;
	int round;
};

static int g_big_status[3];

static int big_parent_step(struct keel_task *t)
{
	struct big_parent *p = keel_container_of(t, struct big_parent, task);

	KEEL_BEGIN(t);
	for (p->round = 0; p->round < 3; p->round++) {
		p->kid = keel_task_of(
		    &big_child_task,
		    keel_spawn(keel_task_loop(t), &big_child_task,
			       KEEL_PRIO_NORMAL | KEEL_SPAWN_JOINABLE));
		/* Let the child run and exit before the join. */
		KEEL_YIELD(t);
		KEEL_AWAIT(t, keel_join(t, p->kid));
		g_big_status[p->round] = keel_res(t);
	}
	KEEL_END(t);
}
static KEEL_TASK_TYPE(big_parent_task, struct big_parent, task,
		      big_parent_step);

Test(task, join_of_an_exited_task_frees_a_large_frame_for_reuse_zeroed,
     .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_loop_stats st;

	kt_spawn(loop, &big_parent_task, KEEL_PRIO_NORMAL);
	kt_loop_run(loop);
	for (int i = 0; i < 3; i++)
		cr_expect_eq(g_big_status[i], 7, "round %d: status %d", i,
			     g_big_status[i]);
	st = kt_stats(loop);
	cr_expect_eq(st.frames_live, 0);
	keel_loop_destroy(loop);
}

/*
 * The frame allocator's trim (keel__alloc_trim(), which the loop's idle
 * sweep calls). Frames of three size classes, so that the free lists it
 * walks are several. Each task fills its frame past the header, then
 * yields while `hold` is set. Sanitizer builds take frames from libc
 * (KEEL_ALLOC_LIBC): nothing to trim there.
 */
struct trimmed {
	struct keel_task task;
	int hold;
	unsigned size; /* of bytes[] */
	unsigned char bytes[];
};

#ifndef KEEL_ALLOC_LIBC
static int trimmed_step(struct keel_task *t);

#define TRIMMED_TYPE(extra)                                                    \
	{                                                                      \
		trimmed_step, (uint32_t)(sizeof(struct trimmed) + (extra)),    \
		    (uint32_t)offsetof(struct trimmed, task), "trimmed", 0     \
	}
static const struct keel_task_type trimmed_types[] = {
    TRIMMED_TYPE(48), TRIMMED_TYPE(600), TRIMMED_TYPE(2000)};

static int trimmed_step(struct keel_task *t)
{
	struct trimmed *f = keel_container_of(t, struct trimmed, task);

	KEEL_BEGIN(t);
	memset(f->bytes, 0xa5, f->size);
	while (f->hold)
		KEEL_YIELD(t);
	KEEL_END(t);
}

#define TRIM_SLAB ((uint64_t)KEEL__SLAB_BYTES)

/* The i-th frame of a batch, checked zeroed (the first spawns carve fresh
 * slabs, the later ones reuse frames or take slabs made after a trim). */
static struct trimmed *spawn_trimmed(struct keel_loop *loop, int i)
{
	const struct keel_task_type *type = &trimmed_types[i % 3];
	struct trimmed *f = kt_spawn(loop, type, KEEL_PRIO_NORMAL);

	f->size = type->frame_size - (unsigned)sizeof(*f);
	cr_assert(all_zero(f->bytes, f->size), "frame %d not zeroed", i);
	return f;
}

static size_t trim(struct keel_loop *loop)
{
	return keel__alloc_trim(&keel__io_of(loop)->core.alloc);
}
#endif /* !KEEL_ALLOC_LIBC */

Test(task, trim_gives_back_the_slabs_whose_frames_are_all_free, .timeout = 10)
{
#ifdef KEEL_ALLOC_LIBC
	cr_skip("sanitizer build: frames come from libc");
#else
	struct keel_loop *loop = kt_loop_new(NULL);
	uint64_t held;

	for (int round = 0; round < 2; round++) {
		for (int i = 0; i < 300; i++)
			spawn_trimmed(loop, i);
		held = kt_stats(loop).frame_bytes;
		cr_assert_geq(held, 4 * TRIM_SLAB, "300 frames in %llu bytes",
			      (unsigned long long)held);
		/* Every frame live: nothing to give back. */
		cr_assert_eq(trim(loop), 0);
		cr_assert_eq(kt_stats(loop).frame_bytes, held);
		kt_loop_run(loop);
		cr_assert_eq(kt_stats(loop).frames_live, 0);
		/* All free: every slab goes, the one being carved too. */
		cr_assert_eq(trim(loop), held / TRIM_SLAB);
		cr_assert_eq(kt_stats(loop).frame_bytes, 0);
		cr_assert_eq(trim(loop), 0);
	}
	keel_loop_destroy(loop);
#endif
}

#ifndef KEEL_ALLOC_LIBC
/* Whether the frames `a` and `b` share no byte. */
static bool apart(const struct trimmed *a, const struct trimmed *b)
{
	return (const unsigned char *)a + sizeof(*a) + a->size <=
		   (const unsigned char *)b ||
	       (const unsigned char *)b + sizeof(*b) + b->size <=
		   (const unsigned char *)a;
}

static bool all_a5(const unsigned char *p, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (p[i] != 0xa5)
			return false;
	return true;
}

/* Run every task to its end: all frames free, the trim gives back every
 * slab; then destroy the loop. */
static void run_and_trim_all(struct keel_loop *loop)
{
	uint64_t held;

	kt_loop_run(loop);
	cr_assert_eq(kt_stats(loop).frames_live, 0);
	held = kt_stats(loop).frame_bytes;
	cr_assert_eq(trim(loop), held / TRIM_SLAB);
	cr_assert_eq(kt_stats(loop).frame_bytes, 0);
	keel_loop_destroy(loop);
}
#endif

/*
 * After a peak, the slab that stays (its first frame live) is carved to its
 * end: the trim carves it again from the end of its live frame, its pages
 * past there leave RSS (mincore), and new frames come from there, zeroed.
 */
Test(task, trim_uncarves_the_free_tail_of_the_slab_that_stays, .timeout = 10)
{
#ifdef KEEL_ALLOC_LIBC
	cr_skip("sanitizer build: frames come from libc");
#else
	struct keel_loop *loop = kt_loop_new(NULL);
	struct trimmed *first = NULL, *f;
	size_t page = (size_t)sysconf(_SC_PAGESIZE);
	unsigned char in_core[KEEL__SLAB_BYTES / 4096];
	unsigned char *slab;
	uint64_t held;
	int steps = 0, reused = 0;

	for (int i = 0; i < 300; i++) {
		f = spawn_trimmed(loop, i);
		if (!first)
			first = f;
	}
	slab =
	    (unsigned char *)((uintptr_t)first & ~(uintptr_t)(TRIM_SLAB - 1));
	first->hold = 1;
	held = kt_stats(loop).frame_bytes;
	while (kt_stats(loop).tasks_live > 1 && steps++ < 1000)
		cr_assert_eq(keel_loop_step(loop, 0), 1);
	cr_assert_eq(kt_stats(loop).frames_live, 1);
	/* Was the oldest slab resident to its end? (It was carved whole.) */
	cr_assert_eq(mincore(slab, TRIM_SLAB, in_core), 0);
	cr_assert(in_core[TRIM_SLAB / page - 1] & 1,
		  "a carved page not in RSS");
	cr_assert_eq(trim(loop), held / TRIM_SLAB - 1);
	cr_assert_eq(kt_stats(loop).frame_bytes, TRIM_SLAB);
	cr_assert(all_a5(first->bytes, first->size), "the live frame changed");
	/* Past the live frame's page, the slab is out of RSS. */
	cr_assert_eq(mincore(slab, TRIM_SLAB, in_core), 0);
	for (size_t p = page; p < TRIM_SLAB; p += page)
		cr_assert_eq(in_core[p / page] & 1, 0, "page at %zu in RSS", p);
	/* New frames: zeroed (spawn_trimmed), apart from the live one, the
	 * first ones from the slab's uncarved rest. */
	for (int i = 0; i < 300; i++) {
		f = spawn_trimmed(loop, i);
		cr_assert(apart(f, first), "frame %d overlaps the live one", i);
		if ((unsigned char *)f > slab &&
		    (unsigned char *)f < slab + TRIM_SLAB)
			reused++;
	}
	cr_assert_gt(reused, 10, "%d new frames in the uncarved slab", reused);
	first->hold = 0;
	run_and_trim_all(loop);
#endif
}

Test(task, trim_keeps_a_slab_with_a_live_frame, .timeout = 10)
{
#ifdef KEEL_ALLOC_LIBC
	cr_skip("sanitizer build: frames come from libc");
#else
	struct keel_loop *loop = kt_loop_new(NULL);
	struct trimmed *first = NULL, *last = NULL, *f;
	uint64_t held;
	int steps = 0;

	for (int i = 0; i < 300; i++) {
		f = spawn_trimmed(loop, i);
		if (i == 0)
			first = f;
		last = f;
	}
	/* The first frame's slab is the oldest, the last's the one being
	 * carved: both stay, the ones between go. */
	first->hold = last->hold = 1;
	held = kt_stats(loop).frame_bytes;
	while (kt_stats(loop).tasks_live > 2 && steps++ < 1000)
		cr_assert_eq(keel_loop_step(loop, 0), 1);
	cr_assert_eq(kt_stats(loop).frames_live, 2);
	cr_assert_eq(trim(loop), held / TRIM_SLAB - 2);
	cr_assert_eq(kt_stats(loop).frame_bytes, 2 * TRIM_SLAB);
	cr_assert_eq(kt_stats(loop).frames_live, 2);
	cr_assert(all_a5(first->bytes, first->size), "a live frame changed");
	cr_assert(all_a5(last->bytes, last->size), "a live frame changed");
	/* New frames: from what is left of the kept slabs' lists, the rest
	 * of the slab being carved, then new slabs; zeroed, apart from the
	 * live ones. */
	for (int i = 0; i < 300; i++) {
		f = spawn_trimmed(loop, i);
		cr_assert(apart(f, first) && apart(f, last),
			  "frame %d overlaps a live one", i);
	}
	first->hold = last->hold = 0;
	run_and_trim_all(loop);
#endif
}
