/* SPDX-License-Identifier: MIT */
/*
 * test_abort.c: abort frames. A panic aborts one task: its defers run LIFO
 * (all of them, marks respected), its ops are cancelled and its frame is
 * kept until their CQEs (a zombie whose recv buffer lives in the frame),
 * its joiner gets KEEL_ABORTED with the message and site, and the other
 * tasks of the batch go on; ten thousand tasks of which a seeded tenth
 * panic at various points; KEEL_ASSERT; panics in routines and in defers;
 * panics outside any task step abort the process (forked children); and
 * hardware faults: recovered as an abort with KEEL_FAULTS_RECOVER, fatal by
 * default, reported then fatal with KEEL_FAULTS_REPORT; a fault outside any
 * task goes to the handler that was there before, and recovery stays on.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <keel.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helpers/keel_test.h"

#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif
#ifndef UNDER_ASAN
#define UNDER_ASAN 0
#endif

/* Every test runs in its own process, so these start zeroed. */
static struct kt_log g_log;
static int g_panic_line;

static void defer_log(void *arg)
{
	kt_log_push(&g_log, (int)(intptr_t)arg);
}

static int push_defer(struct keel_task *t, int v)
{
	return keel_defer(t, defer_log, (void *)(intptr_t)v);
}

/* What a joiner learnt from keel_task_joined_abort(). */
struct abort_copy {
	int res;
	int has;
	char msg[256];
	const char *file;
	int line;
	int signal;
};

static void copy_abort(struct keel_task *self, struct abort_copy *c)
{
	const struct keel_abort *a = keel_task_joined_abort(self);

	c->res = keel_res(self);
	c->has = a != NULL;
	if (!a)
		return;
	snprintf(c->msg, sizeof(c->msg), "%s", a->message ? a->message : "");
	c->file = a->file;
	c->line = a->line;
	c->signal = a->signal;
}

/*
 * A task that panics with a recv in flight into its own frame. A watcher
 * that runs right after it in the same turn snapshots the stats (and may
 * send the recv some data); the parent joins it.
 */
struct reckless {
	struct keel_task task;
	int fd;
	int linked; /* give the recv a long linked timeout */
	char buf[512];
};

static int g_not_pending;

static int reckless_step(struct keel_task *t)
{
	struct reckless *r = keel_container_of(t, struct reckless, task);

	push_defer(t, 1);
	if (r->linked)
		keel_op_timeout(t, KT_MS(30000));
	/* Started, not awaited: the panic comes with the recv in flight. */
	if (keel_recv(t, r->fd, r->buf, sizeof(r->buf), 0) != KEEL_PENDING)
		g_not_pending = 1;
	g_panic_line = __LINE__ + 1;
	keel_panic("recv in flight on fd %d", r->fd);
}

static KEEL_TASK_TYPE(reckless_task, struct reckless, task, reckless_step);

static struct keel_loop_stats g_seen;

struct watcher {
	struct keel_task task;
	int peer_fd; /* >= 0: send the reckless recv some data */
};

static int watcher_step(struct keel_task *t)
{
	struct watcher *w = keel_container_of(t, struct watcher, task);

	keel_loop_stats(keel_task_loop(t), &g_seen);
	kt_log_push(&g_log, 2);
	if (w->peer_fd >= 0 && write(w->peer_fd, "zz", 2) != 2)
		g_not_pending = 2;
	KEEL_EXIT(t, 0);
}

static KEEL_TASK_TYPE(watcher_task, struct watcher, task, watcher_step);

static struct abort_copy g_joined;

struct rparent {
	struct keel_task task;
	int fd;
	int peer_fd;
	int linked;
	struct reckless *r;
};

static int rparent_step(struct keel_task *t);
static KEEL_TASK_TYPE(rparent_task, struct rparent, task, rparent_step);

static int rparent_step(struct keel_task *t)
{
	struct rparent *p = keel_container_of(t, struct rparent, task);
	struct watcher *w;

	KEEL_BEGIN(t);
	p->r = keel_spawn(keel_task_loop(t), &reckless_task,
			  KEEL_PRIO_NORMAL | KEEL_SPAWN_JOINABLE);
	w = keel_spawn(keel_task_loop(t), &watcher_task, KEEL_PRIO_NORMAL);
	if (!p->r || !w)
		KEEL_EXIT(t, -ENOMEM);
	p->r->fd = p->fd;
	p->r->linked = p->linked;
	w->peer_fd = p->peer_fd;
	KEEL_AWAIT(t, keel_join(t, keel_task_of(&reckless_task, p->r)));
	copy_abort(t, &g_joined);
	kt_log_push(&g_log, 3);
	KEEL_END(t);
}

static void run_reckless(int send_data, int linked)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct rparent *p = kt_spawn(loop, &rparent_task, KEEL_PRIO_NORMAL);
	struct keel_loop_stats s;
	char want[64];
	uint64_t t0;
	int fds[2];

	kt_tcp_pair(fds);
	p->fd = fds[0];
	p->peer_fd = send_data ? fds[1] : -1;
	p->linked = linked;
	t0 = kt_now_ns();
	kt_loop_run(loop);
	/* Nothing the aborted task left (a 30 s linked timeout) held on. */
	cr_assert_lt(kt_now_ns() - t0, KT_MS(2000));
	cr_assert_eq(g_not_pending, 0);
	/* Right after the panic: aborted, exited, its frame still held. */
	cr_assert_eq(g_seen.zombies, 1, "zombies = %lu",
		     (unsigned long)g_seen.zombies);
	cr_assert_eq(g_seen.aborted, 1);
	cr_assert_geq(g_seen.ops_inflight, 1);
	cr_assert_eq(g_seen.tasks_live, 2, "the parent and the watcher");
	/* The defer ran before anything else saw the task gone. */
	kt_log_expect(&g_log, (const int[]){1, 2, 3}, 3);
	cr_assert_eq(g_joined.res, KEEL_ABORTED, "join gave %d", g_joined.res);
	cr_assert(g_joined.has);
	snprintf(want, sizeof(want), "recv in flight on fd %d", fds[0]);
	cr_assert_str_eq(g_joined.msg, want);
	cr_assert_str_eq(g_joined.file, __FILE__);
	cr_assert_eq(g_joined.line, g_panic_line);
	cr_assert_eq(g_joined.signal, 0);
	/* Once the kernel returned the recv, everything is released. */
	s = kt_stats(loop);
	cr_assert_eq(s.zombies, 0);
	cr_assert_eq(s.ops_inflight, 0);
	cr_assert_eq(s.tasks_live, 0);
	cr_assert_eq(s.aborted, 1);
	cr_assert_eq(s.exited, 3);
	keel_loop_destroy(loop);
	close(fds[0]);
	close(fds[1]);
}

Test(abort, panic_with_recv_in_flight_keeps_frame_until_cqe, .timeout = 10)
{
	run_reckless(0, 0);
}

Test(abort, panic_with_recv_that_completes_with_data_into_frame, .timeout = 10)
{
	/* The data arrives before the cancel: the kernel writes into the
	 * aborted task's frame, which must still be there. */
	run_reckless(1, 0);
}

Test(abort, panic_with_linked_recv_in_flight_cancels_both, .timeout = 10)
{
	run_reckless(0, 1);
}

/* Defers on panic: LIFO, all of them, marks respected. */
struct deferrer {
	struct keel_task task;
	unsigned mark;
	int fd;
	int mode;
};

enum { D_PANIC, D_PANIC_IN_DEFER_AT_EXIT };

static void defer_panic(void *arg)
{
	kt_log_push(&g_log, (int)(intptr_t)arg);
	keel_panic("defer %d", (int)(intptr_t)arg);
}

static void defer_close(void *arg)
{
	kt_log_push(&g_log, 50);
	close((int)(intptr_t)arg);
}

static int deferrer_step(struct keel_task *t);
static KEEL_TASK_TYPE(deferrer_task, struct deferrer, task, deferrer_step);

static int deferrer_step(struct keel_task *t)
{
	struct deferrer *d = keel_container_of(t, struct deferrer, task);

	KEEL_BEGIN(t);
	if (d->mode == D_PANIC_IN_DEFER_AT_EXIT) {
		push_defer(t, 1);
		keel_defer(t, defer_panic, (void *)(intptr_t)2);
		push_defer(t, 3);
		KEEL_AWAIT(t, keel_nop(t));
		/* The exit runs 3, then 2 panics: the task is aborted and
		 * what is left (1) runs in the unwind. */
		KEEL_EXIT(t, 77);
	}
	push_defer(t, 1);
	d->mark = keel_defer_mark(t);
	push_defer(t, 9);
	keel_defer_unwind(t, d->mark); /* runs 9 now, not again later */
	keel_defer(t, defer_close, (void *)(intptr_t)d->fd);
	KEEL_AWAIT(t, keel_nop(t));
	push_defer(t, 2);
	KEEL_YIELD(t);
	push_defer(t, 3);
	push_defer(t, 4);
	keel_panic("after %u defers", keel_defer_mark(t));
}

struct djoiner {
	struct keel_task task;
	int mode;
	int fd;
	struct deferrer *d;
};

static int djoiner_step(struct keel_task *t);
static KEEL_TASK_TYPE(djoiner_task, struct djoiner, task, djoiner_step);

static int djoiner_step(struct keel_task *t)
{
	struct djoiner *j = keel_container_of(t, struct djoiner, task);

	KEEL_BEGIN(t);
	j->d = keel_spawn(keel_task_loop(t), &deferrer_task,
			  KEEL_PRIO_NORMAL | KEEL_SPAWN_JOINABLE);
	if (!j->d)
		KEEL_EXIT(t, -ENOMEM);
	j->d->mode = j->mode;
	j->d->fd = j->fd;
	KEEL_AWAIT(t, keel_join(t, keel_task_of(&deferrer_task, j->d)));
	copy_abort(t, &g_joined);
	kt_log_push(&g_log, 1000);
	KEEL_END(t);
}

static struct keel_loop_stats run_djoiner(int mode, int fd)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct djoiner *j = kt_spawn(loop, &djoiner_task, KEEL_PRIO_NORMAL);
	struct keel_loop_stats s;

	j->mode = mode;
	j->fd = fd;
	kt_loop_run(loop);
	s = kt_stats(loop);
	cr_assert_eq(s.tasks_live, 0);
	cr_assert_eq(s.zombies, 0);
	keel_loop_destroy(loop);
	return s;
}

Test(abort, defers_run_lifo_and_all_on_panic, .timeout = 10)
{
	int fds[2];
	struct keel_loop_stats s;

	kt_tcp_pair(fds);
	s = run_djoiner(D_PANIC, fds[0]);
	/* 9 at its unwind; then 4, 3, 2, close, 1; then the joiner. */
	kt_log_expect(&g_log, (const int[]){9, 4, 3, 2, 50, 1, 1000}, 7);
	cr_assert_eq(g_joined.res, KEEL_ABORTED);
	cr_assert_str_eq(g_joined.msg, "after 5 defers");
	cr_assert_eq(fcntl(fds[0], F_GETFD), -1, "the defer did not close");
	cr_assert_eq(s.aborted, 1);
	close(fds[1]);
}

Test(abort, panic_in_defer_at_exit_aborts_task_and_runs_the_rest, .timeout = 10)
{
	struct keel_loop_stats s = run_djoiner(D_PANIC_IN_DEFER_AT_EXIT, -1);

	kt_log_expect(&g_log, (const int[]){3, 2, 1, 1000}, 4);
	cr_assert_eq(g_joined.res, KEEL_ABORTED, "join gave %d", g_joined.res);
	cr_assert_str_eq(g_joined.msg, "defer 2");
	cr_assert_eq(s.aborted, 1);
	cr_assert_eq(s.exited, 2);
}

/* KEEL_ASSERT, and a panic inside a nested routine. */
struct asserter {
	struct keel_task task;
	struct keel_routine r;
	int mode;
	int value;
};

static int g_asserts_passed;

static int panicking_routine(struct keel_task *t, struct asserter *a)
{
	KEEL_BEGIN(&a->r);
	KEEL_AWAIT(&a->r, keel_nop(t));
	g_panic_line = __LINE__ + 1;
	keel_panic("in routine, value %d", a->value);
}

static int asserter_step(struct keel_task *t);
static KEEL_TASK_TYPE(asserter_task, struct asserter, task, asserter_step);

static int asserter_step(struct keel_task *t)
{
	struct asserter *a = keel_container_of(t, struct asserter, task);

	KEEL_BEGIN(t);
	push_defer(t, 7);
	a->value = 42;
	KEEL_ASSERT(a->value == 42);
	g_asserts_passed++;
	KEEL_AWAIT(t, keel_nop(t));
	if (a->mode == 1)
		KEEL_AWAIT_CALL(t, panicking_routine(t, a));
	a->value = 41;
	g_panic_line = __LINE__ + 1;
	KEEL_ASSERT(a->value == 42);
	g_asserts_passed++;
	KEEL_END(t);
}

struct ajoiner {
	struct keel_task task;
	int mode;
	struct asserter *a;
};

static int ajoiner_step(struct keel_task *t);
static KEEL_TASK_TYPE(ajoiner_task, struct ajoiner, task, ajoiner_step);

static int ajoiner_step(struct keel_task *t)
{
	struct ajoiner *j = keel_container_of(t, struct ajoiner, task);

	KEEL_BEGIN(t);
	j->a = keel_spawn(keel_task_loop(t), &asserter_task,
			  KEEL_PRIO_NORMAL | KEEL_SPAWN_JOINABLE);
	if (!j->a)
		KEEL_EXIT(t, -ENOMEM);
	j->a->mode = j->mode;
	KEEL_AWAIT(t, keel_join(t, keel_task_of(&asserter_task, j->a)));
	copy_abort(t, &g_joined);
	KEEL_END(t);
}

static void run_ajoiner(int mode)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct ajoiner *j = kt_spawn(loop, &ajoiner_task, KEEL_PRIO_NORMAL);

	j->mode = mode;
	kt_loop_run(loop);
	cr_assert_eq(kt_stats(loop).aborted, 1);
	cr_assert_eq(kt_stats(loop).tasks_live, 0);
	keel_loop_destroy(loop);
	cr_assert_eq(g_joined.res, KEEL_ABORTED, "join gave %d", g_joined.res);
	cr_assert(g_joined.has);
	cr_assert_str_eq(g_joined.file, __FILE__);
	cr_assert_eq(g_joined.line, g_panic_line);
	cr_assert_eq(g_joined.signal, 0);
	kt_log_expect(&g_log, (const int[]){7}, 1);
}

Test(abort, keel_assert_aborts_task_with_condition_text, .timeout = 10)
{
	run_ajoiner(0);
	cr_assert_eq(g_asserts_passed, 1,
		     "a true assertion aborted or a "
		     "false one did not");
	cr_assert_str_eq(g_joined.msg, "assertion failed: a->value == 42");
}

Test(abort, panic_inside_nested_routine_aborts_task, .timeout = 10)
{
	run_ajoiner(1);
	cr_assert_eq(g_asserts_passed, 1);
	cr_assert_str_eq(g_joined.msg, "in routine, value 42");
}

/*
 * keel_task_joined_abort: set by a join of an aborted task (also one that
 * had exited before the join), NULL otherwise.
 */
struct early {
	struct keel_task task;
	int panic;
	int status;
};

static int g_early_exited;

static int early_step(struct keel_task *t)
{
	struct early *e = keel_container_of(t, struct early, task);

	g_early_exited++;
	if (e->panic)
		keel_panic("early %d", e->status);
	KEEL_EXIT(t, e->status);
}

static KEEL_TASK_TYPE(early_task, struct early, task, early_step);

static struct {
	int before_null;
	struct abort_copy first;  /* the aborted task, joined after its exit */
	struct abort_copy second; /* a normal task joined next */
	int third_res;		  /* another aborted task, joined while live */
	struct abort_copy third;
} g_ja;

struct jprobe {
	struct keel_task task;
	struct early *a;
	struct early *b;
	struct early *c;
	int i;
};

static int jprobe_step(struct keel_task *t);
static KEEL_TASK_TYPE(jprobe_task, struct jprobe, task, jprobe_step);

static struct early *spawn_early(struct keel_task *t, int panic, int status)
{
	struct early *e = keel_spawn(keel_task_loop(t), &early_task,
				     KEEL_PRIO_NORMAL | KEEL_SPAWN_JOINABLE);

	if (e) {
		e->panic = panic;
		e->status = status;
	}
	return e;
}

static int jprobe_step(struct keel_task *t)
{
	struct jprobe *p = keel_container_of(t, struct jprobe, task);

	KEEL_BEGIN(t);
	g_ja.before_null = keel_task_joined_abort(t) == NULL;
	p->a = spawn_early(t, 1, 1);
	p->b = spawn_early(t, 0, 5);
	if (!p->a || !p->b)
		KEEL_EXIT(t, -ENOMEM);
	for (p->i = 0; g_early_exited < 2 && p->i < 100; p->i++)
		KEEL_YIELD(t);
	/* Both have exited: the joins return at once. */
	KEEL_AWAIT(t, keel_join(t, keel_task_of(&early_task, p->a)));
	copy_abort(t, &g_ja.first);
	KEEL_AWAIT(t, keel_join(t, keel_task_of(&early_task, p->b)));
	copy_abort(t, &g_ja.second);
	p->c = spawn_early(t, 1, 3);
	if (!p->c)
		KEEL_EXIT(t, -ENOMEM);
	KEEL_AWAIT(t, keel_join(t, keel_task_of(&early_task, p->c)));
	copy_abort(t, &g_ja.third);
	KEEL_END(t);
}

Test(abort, joined_abort_of_exited_task_then_null_after_normal_join,
     .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);

	kt_spawn(loop, &jprobe_task, KEEL_PRIO_NORMAL);
	kt_loop_run(loop);
	cr_assert_eq(kt_stats(loop).aborted, 2);
	cr_assert_eq(kt_stats(loop).tasks_live, 0);
	keel_loop_destroy(loop);
	cr_assert(g_ja.before_null);
	cr_assert_eq(g_ja.first.res, KEEL_ABORTED);
	cr_assert(g_ja.first.has);
	cr_assert_str_eq(g_ja.first.msg, "early 1");
	cr_assert_eq(g_ja.third.res, KEEL_ABORTED);
	cr_assert_str_eq(g_ja.third.msg, "early 3");
	cr_assert_eq(g_ja.second.res, 5);
	/* task.h: "NULL otherwise" after a join that was not aborted. */
	cr_assert(!g_ja.second.has,
		  "joined_abort after a normal join still gives \"%s\"",
		  g_ja.second.msg);
}

/* A panic in a batch of steps: the tasks after it in the batch still run
 * in the same turn. */
struct batcher {
	struct keel_task task;
	int id;
	int panic;
	int i;
};

static uint64_t g_batch_turn[4];
static int g_batch_done[4];

static int batcher_step(struct keel_task *t);
static KEEL_TASK_TYPE(batcher_task, struct batcher, task, batcher_step);

static int batcher_step(struct keel_task *t)
{
	struct batcher *b = keel_container_of(t, struct batcher, task);
	struct keel_loop_stats s;

	KEEL_BEGIN(t);
	keel_loop_stats(keel_task_loop(t), &s);
	g_batch_turn[b->id] = s.turns;
	if (b->panic)
		keel_panic("batch %d", b->id);
	for (b->i = 0; b->i < 10; b->i++)
		KEEL_AWAIT(t, keel_nop(t));
	g_batch_done[b->id] = 1;
	KEEL_END(t);
}

Test(abort, panic_does_not_stop_the_rest_of_the_batch, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_loop_stats s;

	for (int i = 0; i < 4; i++) {
		struct batcher *b =
		    kt_spawn(loop, &batcher_task, KEEL_PRIO_NORMAL);

		b->id = i;
		b->panic = i == 1 || i == 2;
	}
	kt_loop_run(loop);
	s = kt_stats(loop);
	for (int i = 1; i < 4; i++)
		cr_assert_eq(g_batch_turn[i], g_batch_turn[0],
			     "task %d ran in turn %lu, not %lu", i,
			     (unsigned long)g_batch_turn[i],
			     (unsigned long)g_batch_turn[0]);
	cr_assert(g_batch_done[0]);
	cr_assert(!g_batch_done[1]);
	cr_assert(!g_batch_done[2]);
	cr_assert(g_batch_done[3]);
	cr_assert_eq(s.aborted, 2);
	cr_assert_eq(s.exited, 4);
	cr_assert_eq(s.tasks_live, 0);
	keel_loop_destroy(loop);
}

/*
 * Ten thousand tasks; a seeded random tenth panic, at one of five points
 * (first step, after a nop, after a sleep, with a sleep in flight, with a
 * nop in flight). The rest do a nop, a sleep of 0-1 ms and return a value
 * computed from their index.
 */
#define NTASKS 10000
#define NPANIC (NTASKS / 10)

static unsigned char g_phase[NTASKS]; /* 0: no panic, else 1 + point */

static struct {
	int ok;
	int aborted;
	int aborted_expected;
	int bad;
	int first_bad;
	int bad_status;
	int bad_msg;
} g_mass;

static int worker_value(int i)
{
	return (int)(((unsigned)i * 2654435761u) % 100000u) + 1;
}

struct worker {
	struct keel_task task;
	int i;
	uint64_t ns;
};

static int worker_step(struct keel_task *t);
static KEEL_TASK_TYPE(worker_task, struct worker, task, worker_step);

static int worker_step(struct keel_task *t)
{
	struct worker *w = keel_container_of(t, struct worker, task);

	KEEL_BEGIN(t);
	if (g_phase[w->i] == 1)
		keel_panic("worker %d at point %d", w->i, 1);
	KEEL_AWAIT(t, keel_nop(t));
	if (keel_res(t) != 0)
		KEEL_EXIT(t, -1);
	if (g_phase[w->i] == 2)
		keel_panic("worker %d at point %d", w->i, 2);
	if (g_phase[w->i] == 4) {
		keel_sleep(t, KT_MS(5000));
		keel_panic("worker %d at point %d", w->i, 4);
	}
	if (g_phase[w->i] == 5) {
		keel_nop(t);
		keel_panic("worker %d at point %d", w->i, 5);
	}
	KEEL_AWAIT(t, keel_sleep(t, w->ns));
	if (keel_res(t) != 0)
		KEEL_EXIT(t, -2);
	if (g_phase[w->i] == 3)
		keel_panic("worker %d at point %d", w->i, 3);
	KEEL_EXIT(t, worker_value(w->i));
}

struct mass {
	struct keel_task task;
	int i;
	struct worker *w[NTASKS];
};

static int mass_step(struct keel_task *t);
static KEEL_TASK_TYPE(mass_task, struct mass, task, mass_step);

static void mass_check(struct keel_task *t, int i)
{
	const struct keel_abort *a = keel_task_joined_abort(t);
	char want[64];
	int ok;

	if (keel_res(t) == KEEL_ABORTED) {
		g_mass.aborted++;
		snprintf(want, sizeof(want), "worker %d at point %d", i,
			 g_phase[i]);
		ok = g_phase[i] && a && a->message &&
		     strcmp(a->message, want) == 0 && a->file &&
		     strcmp(a->file, __FILE__) == 0 && a->signal == 0;
		if (!ok)
			g_mass.bad_msg++;
	} else {
		ok = !g_phase[i] && keel_res(t) == worker_value(i);
		if (!ok)
			g_mass.bad_status++;
		else
			g_mass.ok++;
	}
	if (!ok && !g_mass.bad++)
		g_mass.first_bad = i;
}

static int mass_step(struct keel_task *t)
{
	struct mass *m = keel_container_of(t, struct mass, task);

	KEEL_BEGIN(t);
	for (m->i = 0; m->i < NTASKS; m->i++) {
		m->w[m->i] = keel_spawn(keel_task_loop(t), &worker_task,
					(unsigned)(m->i % KEEL_PRIO_CLASSES) |
					    KEEL_SPAWN_JOINABLE);
		if (!m->w[m->i])
			KEEL_EXIT(t, -ENOMEM);
		m->w[m->i]->i = m->i;
		m->w[m->i]->ns = (uint64_t)(m->i * 7919 % 1001) * 1000;
	}
	for (m->i = 0; m->i < NTASKS; m->i++) {
		KEEL_AWAIT(
		    t, keel_join(t, keel_task_of(&worker_task, m->w[m->i])));
		mass_check(t, m->i);
	}
	KEEL_END(t);
}

static uint32_t xorshift(uint32_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 17;
	*s ^= *s << 5;
	return *s;
}

Test(abort, ten_thousand_tasks_a_seeded_tenth_panic, .timeout = 60)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	static int idx[NTASKS];
	struct keel_loop_stats s;
	uint32_t seed = 20240601;

	/* A partial Fisher-Yates shuffle picks exactly NPANIC tasks. */
	for (int i = 0; i < NTASKS; i++)
		idx[i] = i;
	for (int i = 0; i < NPANIC; i++) {
		int j = i + (int)(xorshift(&seed) % (uint32_t)(NTASKS - i));
		int tmp = idx[i];

		idx[i] = idx[j];
		idx[j] = tmp;
		g_phase[idx[i]] = (unsigned char)(1 + xorshift(&seed) % 5);
	}
	kt_spawn(loop, &mass_task, KEEL_PRIO_NORMAL);
	kt_loop_run(loop);
	s = kt_stats(loop);
	cr_assert_eq(g_mass.bad, 0,
		     "%d bad joins (%d statuses, %d messages), first task %d",
		     g_mass.bad, g_mass.bad_status, g_mass.bad_msg,
		     g_mass.first_bad);
	cr_assert_eq(g_mass.aborted, NPANIC, "%d aborted joins",
		     g_mass.aborted);
	cr_assert_eq(g_mass.ok, NTASKS - NPANIC);
	cr_assert_eq(s.aborted, NPANIC);
	cr_assert_eq(s.spawned, NTASKS + 1);
	cr_assert_eq(s.exited, NTASKS + 1);
	cr_assert_eq(s.tasks_live, 0);
	cr_assert_eq(s.zombies, 0);
	cr_assert_eq(s.ops_inflight, 0);
	cr_assert_eq(s.timers_armed, 0);
	keel_loop_destroy(loop);
}

/*
 * Forked children: what must take the process down. The child's stderr
 * comes back through a pipe; it gets 5 s (SIGALRM) to die as expected.
 */
struct died {
	int status;
	char err[8192];
};

static void run_forked(void (*fn)(void), struct died *out)
{
	int pfd[2];
	size_t n = 0;
	ssize_t r;
	pid_t pid;

	cr_assert_eq(pipe(pfd), 0);
	fflush(stdout);
	fflush(stderr);
	pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		struct rlimit none = {0, 0};

		setrlimit(RLIMIT_CORE, &none);
		dup2(pfd[1], STDERR_FILENO);
		close(pfd[0]);
		close(pfd[1]);
		alarm(5);
		fn();
		_exit(0); /* survived */
	}
	close(pfd[1]);
	while ((r = read(pfd[0], out->err + n, sizeof(out->err) - 1 - n)) > 0)
		n += (size_t)r;
	out->err[n] = '\0';
	close(pfd[0]);
	cr_assert_eq(waitpid(pid, &out->status, 0), pid);
}

static void expect_signal(const struct died *d, int sig)
{
	cr_assert(WIFSIGNALED(d->status),
		  "the child did not die of a signal (exit %d); stderr: %s",
		  WIFEXITED(d->status) ? WEXITSTATUS(d->status) : -1, d->err);
	cr_assert_eq(WTERMSIG(d->status), sig, "died of signal %d; stderr: %s",
		     WTERMSIG(d->status), d->err);
}

/* A fault under ASan may end in its own report and a non-zero exit. */
static void expect_fault_death(const struct died *d)
{
	if (UNDER_ASAN && WIFEXITED(d->status)) {
		cr_assert_neq(WEXITSTATUS(d->status), 0,
			      "the child survived; stderr: %s", d->err);
		return;
	}
	expect_signal(d, SIGSEGV);
}

static struct keel_loop *child_loop(void)
{
	struct keel_loop *loop = NULL;

	if (keel_loop_create(&loop, NULL))
		_exit(3);
	return loop;
}

static void timer_panics(struct keel_loop *loop, struct keel_timer *tm,
			 void *arg)
{
	keel_panic("from a timer, %d", 7);
}

static void child_timer_panic(void)
{
	struct keel_loop *loop = child_loop();
	struct keel_timer tm;

	keel_timer_init(&tm, timer_panics, NULL);
	keel_timer_arm_after(loop, &tm, KT_MS(1));
	keel_loop_run(loop);
	_exit(0);
}

Test(abort, panic_in_timer_callback_aborts_process, .timeout = 10)
{
	static struct died d;

	run_forked(child_timer_panic, &d);
	expect_signal(&d, SIGABRT);
	cr_assert_not_null(strstr(d.err, "panic outside a task step"), "%s",
			   d.err);
	cr_assert_not_null(strstr(d.err, "from a timer, 7"), "%s", d.err);
}

static void token_cb_panics(struct keel_token *tok, int cause, void *arg)
{
	keel_panic("from a token callback, cause %d", cause);
}

static void child_token_panic(void)
{
	struct keel_loop *loop = child_loop();
	struct keel_token *tok;
	struct keel_token_cb cb;

	if (keel_token_new(loop, NULL, &tok))
		_exit(3);
	keel_token_on_cancel(tok, &cb, token_cb_panics, NULL);
	keel_token_set_timeout(tok, KT_MS(1));
	keel_loop_run(loop);
	_exit(0);
}

Test(abort, panic_in_deadline_callback_aborts_process, .timeout = 10)
{
	static struct died d;

	run_forked(child_token_panic, &d);
	expect_signal(&d, SIGABRT);
	cr_assert_not_null(strstr(d.err, "from a token callback"), "%s", d.err);
}

static void child_loopless_panic(void)
{
	keel_panic("no loop at all");
}

Test(abort, panic_with_no_loop_aborts_process, .timeout = 10)
{
	static struct died d;

	run_forked(child_loopless_panic, &d);
	expect_signal(&d, SIGABRT);
	cr_assert_not_null(strstr(d.err, "no loop at all"), "%s", d.err);
}

static void defer_panics(void *arg)
{
	keel_panic("from a defer during an abort");
}

struct dbl {
	struct keel_task task;
};

static int double_step(struct keel_task *t)
{
	keel_defer(t, defer_panics, NULL);
	keel_panic("first");
}

static KEEL_TASK_TYPE(double_task, struct dbl, task, double_step);

static void child_double_panic(void)
{
	struct keel_loop *loop = child_loop();

	keel_spawn(loop, &double_task, KEEL_PRIO_NORMAL);
	keel_loop_run(loop);
	_exit(0);
}

Test(abort, panic_in_defer_during_abort_aborts_process, .timeout = 10)
{
	static struct died d;

	run_forked(child_double_panic, &d);
	expect_signal(&d, SIGABRT);
	cr_assert_not_null(strstr(d.err, "from a defer during an abort"), "%s",
			   d.err);
}

/* Hardware faults. g_bad is a page nobody may touch. */
static volatile char *g_bad;

static void map_bad_page(void)
{
	void *p =
	    mmap(NULL, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	cr_assert_neq(p, MAP_FAILED);
	g_bad = p;
}

struct segv {
	struct keel_task task;
	int id;
};

static int g_segv_reached[4];
static int g_segv_survived[4];
static int g_segv_line;

static int segv_step(struct keel_task *t);
static KEEL_TASK_TYPE(segv_task, struct segv, task, segv_step);

static int segv_step(struct keel_task *t)
{
	struct segv *s = keel_container_of(t, struct segv, task);

	KEEL_BEGIN(t);
	push_defer(t, 100 + s->id);
	g_segv_line = __LINE__ + 1;
	KEEL_AWAIT(t, keel_nop(t));
	g_segv_reached[s->id] = 1;
	g_bad[s->id] = 1; /* SIGSEGV */
	g_segv_survived[s->id] = 1;
	KEEL_END(t);
}

/* Busy tasks that keep running while the faulting ones are recovered. */
struct busy {
	struct keel_task task;
	int i;
};

static int g_busy_done;

static int busy_step(struct keel_task *t);
static KEEL_TASK_TYPE(busy_task, struct busy, task, busy_step);

static int busy_step(struct keel_task *t)
{
	struct busy *b = keel_container_of(t, struct busy, task);

	KEEL_BEGIN(t);
	for (b->i = 0; b->i < 200; b->i++)
		KEEL_AWAIT(t, keel_nop(t));
	KEEL_AWAIT(t, keel_sleep(t, KT_MS(5)));
	g_busy_done++;
	KEEL_END(t);
}

static struct abort_copy g_fault[2];

struct fdriver {
	struct keel_task task;
	int i;
	struct segv *s;
};

static int fdriver_step(struct keel_task *t);
static KEEL_TASK_TYPE(fdriver_task, struct fdriver, task, fdriver_step);

static int fdriver_step(struct keel_task *t)
{
	struct fdriver *d = keel_container_of(t, struct fdriver, task);

	KEEL_BEGIN(t);
	for (d->i = 0; d->i < 2; d->i++) {
		d->s = keel_spawn(keel_task_loop(t), &segv_task,
				  KEEL_PRIO_NORMAL | KEEL_SPAWN_JOINABLE);
		if (!d->s)
			KEEL_EXIT(t, -ENOMEM);
		d->s->id = d->i;
		KEEL_AWAIT(t, keel_join(t, keel_task_of(&segv_task, d->s)));
		copy_abort(t, &g_fault[d->i]);
		/* The loop still does I/O between the two faults. */
		KEEL_AWAIT(t, keel_nop(t));
		if (keel_res(t) != 0)
			KEEL_EXIT(t, -EIO);
	}
	KEEL_END(t);
}

Test(abort, fault_in_task_is_recovered_as_abort_when_opted_in, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_loop_stats s;

	map_bad_page();
	cr_assert_eq(keel_loop_set_faults(loop, KEEL_FAULTS_RECOVER), 0);
	for (int i = 0; i < 3; i++)
		kt_spawn(loop, &busy_task, KEEL_PRIO_NORMAL);
	kt_spawn(loop, &fdriver_task, KEEL_PRIO_NORMAL);
	kt_loop_run(loop);
	s = kt_stats(loop);
	for (int i = 0; i < 2; i++) {
		cr_assert(g_segv_reached[i]);
		cr_assert(!g_segv_survived[i], "the fault did not happen");
		cr_assert_eq(g_fault[i].res, KEEL_ABORTED, "join %d gave %d", i,
			     g_fault[i].res);
		cr_assert(g_fault[i].has);
		cr_assert_eq(g_fault[i].signal, SIGSEGV);
		cr_assert_not_null(strstr(g_fault[i].msg, "SIGSEGV"), "%s",
				   g_fault[i].msg);
		cr_assert_not_null(strstr(g_fault[i].msg, "segv_task"), "%s",
				   g_fault[i].msg);
		/* The site is where the task last resumed from. */
		cr_assert_str_eq(g_fault[i].file, __FILE__);
		cr_assert_eq(g_fault[i].line, g_segv_line);
	}
	/* The defers ran, and the other tasks finished their work. */
	kt_log_expect(&g_log, (const int[]){100, 101}, 2);
	cr_assert_eq(g_busy_done, 3);
	cr_assert_eq(s.fault_recoveries, 2);
	cr_assert_eq(s.aborted, 2);
	cr_assert_eq(s.tasks_live, 0);
	cr_assert_eq(s.zombies, 0);
	keel_loop_destroy(loop);
}

Test(abort, set_faults_rejects_unknown_mode, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);

	cr_assert_eq(keel_loop_set_faults(loop, (enum keel_fault_mode)7),
		     -EINVAL);
	cr_assert_eq(keel_loop_set_faults(loop, KEEL_FAULTS_DIE), 0);
	keel_loop_destroy(loop);
}

static void child_fault(int mode)
{
	struct keel_loop *loop = child_loop();

	if (mode != KEEL_FAULTS_DIE &&
	    keel_loop_set_faults(loop, (enum keel_fault_mode)mode))
		_exit(4);
	keel_spawn(loop, &busy_task, KEEL_PRIO_NORMAL);
	keel_spawn(loop, &segv_task, KEEL_PRIO_NORMAL);
	keel_loop_run(loop);
	_exit(0);
}

static void child_fault_die(void)
{
	child_fault(KEEL_FAULTS_DIE);
}

static void child_fault_report(void)
{
	child_fault(KEEL_FAULTS_REPORT);
}

/* Recovery turned on, then off again: the handler stays, but passes. */
static void child_fault_recover_then_die(void)
{
	struct keel_loop *loop = child_loop();

	if (keel_loop_set_faults(loop, KEEL_FAULTS_RECOVER) ||
	    keel_loop_set_faults(loop, KEEL_FAULTS_DIE))
		_exit(4);
	keel_spawn(loop, &segv_task, KEEL_PRIO_NORMAL);
	keel_loop_run(loop);
	_exit(0);
}

Test(abort, fault_kills_process_by_default, .timeout = 10)
{
	static struct died d;

	map_bad_page();
	run_forked(child_fault_die, &d);
	expect_fault_death(&d);
	cr_assert_null(strstr(d.err, "keel: SIGSEGV"), "%s", d.err);
}

Test(abort, fault_report_mode_prints_task_then_dies, .timeout = 10)
{
	static struct died d;

	map_bad_page();
	run_forked(child_fault_report, &d);
	expect_fault_death(&d);
	cr_assert_not_null(strstr(d.err, "keel: SIGSEGV"), "stderr: %s", d.err);
	cr_assert_not_null(strstr(d.err, "segv_task"), "stderr: %s", d.err);
}

Test(abort, fault_kills_after_recovery_is_turned_off_again, .timeout = 10)
{
	static struct died d;

	map_bad_page();
	run_forked(child_fault_recover_then_die, &d);
	expect_fault_death(&d);
	cr_assert_null(strstr(d.err, "keel: SIGSEGV"), "%s", d.err);
}

/* With recovery on, a fault outside a task step still kills. */
static void timer_faults(struct keel_loop *loop, struct keel_timer *tm,
			 void *arg)
{
	g_bad[0] = 1;
}

static void child_fault_in_timer(void)
{
	struct keel_loop *loop = child_loop();
	struct keel_timer tm;

	if (keel_loop_set_faults(loop, KEEL_FAULTS_RECOVER))
		_exit(4);
	keel_timer_init(&tm, timer_faults, NULL);
	keel_timer_arm_after(loop, &tm, KT_MS(1));
	keel_loop_run(loop);
	_exit(0);
}

Test(abort, fault_outside_task_step_kills_even_when_recovering, .timeout = 10)
{
	static struct died d;

	map_bad_page();
	run_forked(child_fault_in_timer, &d);
	expect_fault_death(&d);
}

/*
 * A fault keel does not handle goes to the handler that was there before,
 * for that fault only: the next fault, in a task, is recovered again.
 */
static sigjmp_buf g_outside_env;
static volatile sig_atomic_t g_outside_armed;
static volatile sig_atomic_t g_outside_faults;

static void outside_handler(int sig, siginfo_t *si, void *uctx)
{
	static const char msg[] = "the test's handler got a task's fault\n";

	g_outside_faults++;
	if (!g_outside_armed) {
		/* keel's handler is gone: say so, and fail the test. */
		if (write(STDERR_FILENO, msg, sizeof(msg) - 1) < 0)
			_exit(98);
		_exit(99);
	}
	g_outside_armed = 0;
	siglongjmp(g_outside_env, 1);
}

Test(abort, fault_outside_task_goes_to_previous_handler_and_recovery_stays,
     .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct sigaction sa;
	struct keel_loop_stats s;

	map_bad_page();
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = outside_handler;
	sa.sa_flags = SA_SIGINFO;
	sigemptyset(&sa.sa_mask);
	cr_assert_eq(sigaction(SIGSEGV, &sa, NULL), 0);
	cr_assert_eq(keel_loop_set_faults(loop, KEEL_FAULTS_RECOVER), 0);
	/* Outside any task step: not keel's to recover. */
	g_outside_armed = 1;
	if (!sigsetjmp(g_outside_env, 1))
		g_bad[3] = 1;
	cr_assert_eq(g_outside_faults, 1);
	/* In a task step: still recovered, twice. */
	kt_spawn(loop, &fdriver_task, KEEL_PRIO_NORMAL);
	kt_loop_run(loop);
	s = kt_stats(loop);
	cr_assert_eq(g_outside_faults, 1);
	for (int i = 0; i < 2; i++)
		cr_assert_eq(g_fault[i].res, KEEL_ABORTED, "join %d gave %d", i,
			     g_fault[i].res);
	cr_assert_eq(s.fault_recoveries, 2);
	keel_loop_destroy(loop);
}
