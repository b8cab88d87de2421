/* SPDX-License-Identifier: MIT */
/*
 * test_deadlock.c: keel_loop_deadlocks(), the wait-for graph's cycles.
 * Two mutexes taken in opposite order, two tasks blocked on each other's
 * full BLOCK mailboxes, two tasks joining each other, a reader reading
 * again behind a queued writer: each one cycle naming both tasks and both
 * await sites. A chain that ends in a sleeping task is no cycle; a cycle
 * broken by a timeout is gone from the next check; a cycle still there is
 * counted once (keel_deadlocks_detected_total); a task dump ends with it.
 *
 * A `checker` task spawned last looks once the others are blocked, then
 * ends the cycle (cancels its tasks) so that the loop can finish.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <keel.h>
#include <keel/sync.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "helpers/keel_test.h"

#define MS 1000000ull

static struct keel_task *g_t[4]; /* the tasks of a test */
static uint32_t g_id[4];	 /* their ids, taken while they live */
static int g_line[4];		 /* the line each one blocks at */
static int g_res[4];		 /* each one's last result */
static char g_report[4096];
static int g_cycles, g_cycles_after;

/* `report` has "file:line `" of task i's await site. */
static void expect_site(const char *report, int i)
{
	char site[128];

	snprintf(site, sizeof(site), "test_deadlock.c:%d `", g_line[i]);
	cr_expect(strstr(report, site), "no site %s in: %s", site, report);
}

static void expect_task(const char *report, int i, const char *name)
{
	char who[128];

	snprintf(who, sizeof(who), "task %u (%s)", g_id[i], name);
	cr_expect(strstr(report, who), "no %s in: %s", who, report);
}

/* ---- the checker ------------------------------------------------------ */

static void (*g_check)(struct keel_task *t);
static void (*g_recheck)(struct keel_task *t);
static uint64_t g_recheck_after; /* ns; 0: no second look */

struct checker {
	struct keel_task task;
	int i;
};

static int checker_step(struct keel_task *t)
{
	struct checker *c = keel_container_of(t, struct checker, task);

	KEEL_BEGIN(t);
	/* Everything here is on one loop and nothing waits for the
	 * kernel: a few turns get every task to where it blocks. */
	for (c->i = 0; c->i < 8; c->i++)
		KEEL_YIELD(t);
	g_check(t);
	if (g_recheck_after) {
		KEEL_AWAIT(t, keel_sleep(t, g_recheck_after));
		g_recheck(t);
	}
	KEEL_END(t);
}

static KEEL_TASK_TYPE(checker_task, struct checker, task, checker_step);

static void run(struct keel_loop *loop, void (*check)(struct keel_task *),
		void (*recheck)(struct keel_task *), uint64_t after)
{
	g_check = check;
	g_recheck = recheck;
	g_recheck_after = after;
	kt_spawn(loop, &checker_task, KEEL_PRIO_NORMAL);
	kt_loop_run(loop);
}

static void check_now(struct keel_task *t)
{
	for (int i = 0; i < 4; i++)
		if (g_t[i])
			g_id[i] = g_t[i]->id;
	g_cycles =
	    keel_loop_deadlocks(keel_task_loop(t), g_report, sizeof(g_report));
}

static void check_again(struct keel_task *t)
{
	char buf[4096];

	g_cycles_after =
	    keel_loop_deadlocks(keel_task_loop(t), buf, sizeof(buf));
	cr_expect_str_empty(buf);
}

/* Look, then cancel tasks 0 and 1 so that the loop can end. */
static void check_and_break(struct keel_task *t)
{
	check_now(t);
	keel_task_cancel(g_t[0]);
	keel_task_cancel(g_t[1]);
}

static void setup(void)
{
	memset(g_t, 0, sizeof(g_t));
	memset(g_line, 0, sizeof(g_line));
	memset(g_report, 0, sizeof(g_report));
	for (int i = 0; i < 4; i++)
		g_res[i] = 1;
	g_cycles = g_cycles_after = -1;
}

/* ---- mutexes ------------------------------------------------------------ */

struct locker {
	struct keel_task task;
	struct keel_mutex *first, *second;
	uint64_t timeout; /* of the second lock */
	uint64_t hold;	  /* sleep this long holding `first` (0: none) */
	int i;
};

static int locker_step(struct keel_task *t)
{
	struct locker *l = keel_container_of(t, struct locker, task);

	KEEL_BEGIN(t);
	KEEL_AWAIT(t, keel_mutex_lock(t, l->first, UINT64_MAX));
	cr_assert_eq(keel_res(t), 0);
	if (l->hold) {
		KEEL_AWAIT(t, keel_sleep(t, l->hold));
	} else {
		KEEL_YIELD(t);
	}
	if (l->second) {
		g_line[l->i] = __LINE__ + 1;
		KEEL_AWAIT(t, keel_mutex_lock(t, l->second, l->timeout));
		g_res[l->i] = keel_res(t);
		if (!keel_res(t))
			keel_mutex_unlock(t, l->second);
	}
	keel_mutex_unlock(t, l->first);
	KEEL_END(t);
}

static KEEL_TASK_TYPE(locker_task, struct locker, task, locker_step);

static void spawn_locker(struct keel_loop *loop, int i, struct keel_mutex *a,
			 struct keel_mutex *b, uint64_t timeout, uint64_t hold)
{
	struct locker *l = kt_spawn(loop, &locker_task, KEEL_PRIO_NORMAL);

	l->first = a;
	l->second = b;
	l->timeout = timeout;
	l->hold = hold;
	l->i = i;
	g_t[i] = keel_task_of(&locker_task, l);
}

Test(deadlock, two_mutexes_in_opposite_order_are_one_cycle_with_both_sites,
     .init = setup, .timeout = 30)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_mutex *m1, *m2;

	cr_assert_eq(keel_mutex_new(loop, &m1), 0);
	cr_assert_eq(keel_mutex_new(loop, &m2), 0);
	spawn_locker(loop, 0, m1, m2, UINT64_MAX, 0);
	spawn_locker(loop, 1, m2, m1, UINT64_MAX, 0);
	run(loop, check_and_break, NULL, 0);
	cr_expect_eq(g_cycles, 1, "%s", g_report);
	cr_expect(strncmp(g_report, "deadlock: task ", 15) == 0, "%s",
		  g_report);
	expect_task(g_report, 0, "locker_task");
	expect_task(g_report, 1, "locker_task");
	expect_site(g_report, 0);
	expect_site(g_report, 1);
	cr_expect(strstr(g_report, "keel_mutex_lock(t, l->second"), "%s",
		  g_report);
	char m1s[32], m2s[32];

	snprintf(m1s, sizeof(m1s), "mutex %p held by", (void *)m1);
	snprintf(m2s, sizeof(m2s), "mutex %p held by", (void *)m2);
	cr_expect(strstr(g_report, m1s) && strstr(g_report, m2s), "%s",
		  g_report);
	/* One line: one cycle. */
	cr_expect(strchr(g_report, '\n') == g_report + strlen(g_report) - 1);
	cr_expect_eq(g_res[0], -ECANCELED);
	cr_expect_eq(g_res[1], -ECANCELED);
	keel_mutex_free(m1);
	keel_mutex_free(m2);
	keel_loop_destroy(loop);
}

/* Still there at the second look: counted once; the dump shows it. */
static void check_twice_and_dump(struct keel_task *t)
{
	struct keel_loop *loop = keel_task_loop(t);
	FILE *f = tmpfile();
	char text[8192] = "";

	cr_assert(f);
	check_now(t);
	g_cycles_after = keel_loop_deadlocks(loop, NULL, 0);
	cr_expect_eq(kt_stats(loop).deadlocks, 1);
	cr_expect_geq(keel_loop_dump(loop, fileno(f)), 3);
	rewind(f);
	size_t n = fread(text, 1, sizeof(text) - 1, f);

	text[n] = '\0';
	fclose(f);
	cr_expect(strstr(text, g_report), "dump without the cycle: %s", text);
	char *prom = malloc(1 << 16);

	cr_assert(prom);
	keel_metrics_render(&loop, 1, prom, 1 << 16);
	cr_expect(strstr(prom, "keel_deadlocks_detected_total{loop=\"0\"} 1"),
		  "%s", prom);
	free(prom);
	keel_task_cancel(g_t[0]);
	keel_task_cancel(g_t[1]);
}

Test(deadlock, a_cycle_still_there_is_counted_once_and_dumped, .init = setup,
     .timeout = 30)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_mutex *m1, *m2;

	cr_assert_eq(keel_mutex_new(loop, &m1), 0);
	cr_assert_eq(keel_mutex_new(loop, &m2), 0);
	spawn_locker(loop, 0, m1, m2, UINT64_MAX, 0);
	spawn_locker(loop, 1, m2, m1, UINT64_MAX, 0);
	run(loop, check_twice_and_dump, NULL, 0);
	cr_expect_eq(g_cycles, 1);
	cr_expect_eq(g_cycles_after, 1);
	cr_expect_eq(kt_stats(loop).deadlocks, 1);
	keel_mutex_free(m1);
	keel_mutex_free(m2);
	keel_loop_destroy(loop);
}

Test(deadlock, a_cycle_broken_by_a_timeout_is_gone_from_the_next_check,
     .init = setup, .timeout = 30)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_mutex *m1, *m2;

	cr_assert_eq(keel_mutex_new(loop, &m1), 0);
	cr_assert_eq(keel_mutex_new(loop, &m2), 0);
	spawn_locker(loop, 0, m1, m2, UINT64_MAX, 0);
	spawn_locker(loop, 1, m2, m1, 100 * MS, 0);
	run(loop, check_now, check_again, 400 * MS);
	cr_expect_eq(g_cycles, 1, "%s", g_report);
	cr_expect_eq(g_cycles_after, 0);
	cr_expect_eq(g_res[1], -ETIMEDOUT);
	cr_expect_eq(g_res[0], 0); /* it got m2 once 1 gave up */
	keel_mutex_free(m1);
	keel_mutex_free(m2);
	keel_loop_destroy(loop);
}

/* 0 waits for 1, 1 for 2, and 2 sleeps holding what 1 waits for. */
Test(deadlock, a_chain_ending_in_a_sleeping_task_is_no_cycle, .init = setup,
     .timeout = 30)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_mutex *m[3];

	for (int i = 0; i < 3; i++)
		cr_assert_eq(keel_mutex_new(loop, &m[i]), 0);
	spawn_locker(loop, 2, m[2], NULL, UINT64_MAX, 200 * MS);
	spawn_locker(loop, 1, m[1], m[2], UINT64_MAX, 0);
	spawn_locker(loop, 0, m[0], m[1], UINT64_MAX, 0);
	run(loop, check_now, NULL, 0);
	cr_expect_eq(g_cycles, 0, "%s", g_report);
	cr_expect_str_empty(g_report);
	cr_expect_eq(g_res[0], 0);
	cr_expect_eq(g_res[1], 0);
	for (int i = 0; i < 3; i++)
		keel_mutex_free(m[i]);
	keel_loop_destroy(loop);
}

/* ---- mailboxes ------------------------------------------------------------
 */

/* An actor-like task: receives from its own mailbox once, then sends
 * to its peer's until that blocks for good. */
struct peer {
	struct keel_task task;
	struct keel_mailbox *own, *peer;
	void *msg;
	int i, n;
};

static int peer_step(struct keel_task *t)
{
	struct peer *p = keel_container_of(t, struct peer, task);

	KEEL_BEGIN(t);
	KEEL_AWAIT(t, keel_mb_recv(t, p->own, &p->msg));
	cr_assert_eq(keel_res(t), 0);
	for (p->n = 0; p->n < 4; p->n++) {
		g_line[p->i] = __LINE__ + 1;
		KEEL_AWAIT(t, keel_mb_send(t, p->peer, p->msg));
		g_res[p->i] = keel_res(t);
		if (keel_res(t))
			break;
	}
	KEEL_END(t);
}

static KEEL_TASK_TYPE(peer_task, struct peer, task, peer_step);

Test(deadlock, two_tasks_blocked_on_each_others_full_mailboxes_are_a_cycle,
     .init = setup, .timeout = 30)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_mailbox_opts o = {.capacity = 1, .policy = KEEL_MB_BLOCK};
	struct keel_mailbox *mb[2];

	for (int i = 0; i < 2; i++) {
		cr_assert_eq(keel_mailbox_new(loop, &o, &mb[i]), 0);
		cr_assert_eq(keel_mb_try_send(mb[i], (void *)1), 0);
	}
	for (int i = 0; i < 2; i++) {
		struct peer *p = kt_spawn(loop, &peer_task, KEEL_PRIO_NORMAL);

		p->own = mb[i];
		p->peer = mb[1 - i];
		p->i = i;
		g_t[i] = keel_task_of(&peer_task, p);
	}
	run(loop, check_and_break, NULL, 0);
	cr_expect_eq(g_cycles, 1, "%s", g_report);
	expect_task(g_report, 0, "peer_task");
	expect_task(g_report, 1, "peer_task");
	expect_site(g_report, 0);
	expect_site(g_report, 1);
	char s[64];

	snprintf(s, sizeof(s), "mailbox %p received by", (void *)mb[0]);
	cr_expect(strstr(g_report, s), "%s", g_report);
	cr_expect_eq(g_res[0], -ECANCELED);
	cr_expect_eq(g_res[1], -ECANCELED);
	for (int i = 0; i < 2; i++)
		keel_mailbox_release(mb[i]);
	keel_loop_destroy(loop);
}

/*
 * The same cycle, where peer 0 is a new task in the frame of one that
 * received from mb[0] and exited: the mailbox's receiver is the same
 * pointer, and only its slot generation, taken again when peer 0 first
 * waits there, makes peer 1's wait an edge to peer 0.
 */
static int once_step(struct keel_task *t)
{
	struct peer *p = keel_container_of(t, struct peer, task);

	KEEL_BEGIN(t);
	KEEL_AWAIT(t, keel_mb_recv(t, p->own, &p->msg));
	cr_assert_eq(keel_res(t), 0);
	KEEL_END(t);
}

static KEEL_TASK_TYPE(once_task, struct peer, task, once_step);

static int poke_step(struct keel_task *t)
{
	struct peer *p = keel_container_of(t, struct peer, task);

	KEEL_BEGIN(t);
	KEEL_AWAIT(t, keel_mb_send(t, p->peer, (void *)1));
	cr_assert_eq(keel_res(t), 0);
	KEEL_END(t);
}

static KEEL_TASK_TYPE(poke_task, struct peer, task, poke_step);

Test(deadlock, a_new_task_in_a_receivers_freed_frame_is_the_receiver,
     .init = setup, .timeout = 30)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_mailbox_opts o = {.capacity = 1, .policy = KEEL_MB_BLOCK};
	struct keel_mailbox *mb[2];
	struct peer *old, *p;

	for (int i = 0; i < 2; i++)
		cr_assert_eq(keel_mailbox_new(loop, &o, &mb[i]), 0);
	old = kt_spawn(loop, &once_task, KEEL_PRIO_NORMAL);
	old->own = mb[0];
	p = kt_spawn(loop, &poke_task, KEEL_PRIO_NORMAL);
	p->peer = mb[0];
	kt_loop_run(loop); /* old waits in mb[0], gets 1, exits */
	cr_assert_eq(keel_mb_try_send(mb[1], (void *)1), 0);
	for (int i = 0; i < 2; i++) {
		p = kt_spawn(loop, &peer_task, KEEL_PRIO_NORMAL);
		p->own = mb[i];
		p->peer = mb[1 - i];
		p->i = i;
		g_t[i] = keel_task_of(&peer_task, p);
		if (i == 0 && p != old)
			fprintf(stderr,
				"a_new_task_in_a_receivers_freed_frame: "
				"the frame was not reused (a libc "
				"allocator): no stale receiver\n");
	}
	run(loop, check_and_break, NULL, 0);
	cr_expect_eq(g_cycles, 1, "%s", g_report);
	expect_task(g_report, 0, "peer_task");
	expect_task(g_report, 1, "peer_task");
	cr_expect_eq(g_res[0], -ECANCELED);
	cr_expect_eq(g_res[1], -ECANCELED);
	for (int i = 0; i < 2; i++)
		keel_mailbox_release(mb[i]);
	keel_loop_destroy(loop);
}

/* ---- joins ----------------------------------------------------------------
 */

struct joiner {
	struct keel_task task;
	int i;
};

static int joiner_step(struct keel_task *t)
{
	struct joiner *j = keel_container_of(t, struct joiner, task);

	KEEL_BEGIN(t);
	g_line[j->i] = __LINE__ + 1;
	KEEL_AWAIT(t, keel_join(t, g_t[1 - j->i]));
	g_res[j->i] = keel_res(t);
	KEEL_END(t);
}

static KEEL_TASK_TYPE(joiner_task, struct joiner, task, joiner_step);

/* Cancel 0 only: it exits, which ends 1's join of it. */
static void check_and_break_first(struct keel_task *t)
{
	check_now(t);
	keel_task_cancel(g_t[0]);
}

Test(deadlock, two_tasks_joining_each_other_are_a_cycle, .init = setup,
     .timeout = 30)
{
	struct keel_loop *loop = kt_loop_new(NULL);

	for (int i = 0; i < 2; i++) {
		struct joiner *j = kt_spawn(
		    loop, &joiner_task, KEEL_PRIO_NORMAL | KEEL_SPAWN_JOINABLE);

		j->i = i;
		g_t[i] = keel_task_of(&joiner_task, j);
	}
	run(loop, check_and_break_first, NULL, 0);
	cr_expect_eq(g_cycles, 1, "%s", g_report);
	expect_task(g_report, 0, "joiner_task");
	expect_task(g_report, 1, "joiner_task");
	expect_site(g_report, 0);
	expect_site(g_report, 1);
	cr_expect(strstr(g_report, "for the exit of task"), "%s", g_report);
	cr_expect_eq(g_res[0], -ECANCELED);
	/* 1's join ended when 0 exited: 0's status. */
	cr_expect_eq(g_res[1], 0);
	keel_loop_destroy(loop);
}

/* ---- rwlock ------------------------------------------------------------- */

static struct keel_rwlock *g_rw;

/* 0 reads, then reads again (behind 1); 1 wants to write. */
struct rw_user {
	struct keel_task task;
	int i;
};

static int rw_user_step(struct keel_task *t)
{
	struct rw_user *u = keel_container_of(t, struct rw_user, task);

	KEEL_BEGIN(t);
	if (u->i == 0) {
		KEEL_AWAIT(t, keel_rwlock_read_lock(t, g_rw, UINT64_MAX));
		cr_assert_eq(keel_res(t), 0);
		KEEL_YIELD(t);
		KEEL_YIELD(t);
		g_line[0] = __LINE__ + 1;
		KEEL_AWAIT(t, keel_rwlock_read_lock(t, g_rw, UINT64_MAX));
		g_res[0] = keel_res(t);
		if (!keel_res(t))
			keel_rwlock_read_unlock(g_rw);
		keel_rwlock_read_unlock(g_rw);
	} else {
		KEEL_YIELD(t);
		g_line[1] = __LINE__ + 1;
		KEEL_AWAIT(t, keel_rwlock_write_lock(t, g_rw, UINT64_MAX));
		g_res[1] = keel_res(t);
		if (!keel_res(t))
			keel_rwlock_write_unlock(t, g_rw);
	}
	KEEL_END(t);
}

static KEEL_TASK_TYPE(rw_user_task, struct rw_user, task, rw_user_step);

/* Cancel the writer only: the reader then reads again and finishes. */
static void check_and_break_writer(struct keel_task *t)
{
	check_now(t);
	keel_task_cancel(g_t[1]);
}

Test(deadlock, a_reader_reading_again_behind_a_queued_writer_is_a_cycle,
     .init = setup, .timeout = 30)
{
	struct keel_loop *loop = kt_loop_new(NULL);

	cr_assert_eq(keel_rwlock_new(loop, &g_rw), 0);
	for (int i = 0; i < 2; i++) {
		struct rw_user *u =
		    kt_spawn(loop, &rw_user_task, KEEL_PRIO_NORMAL);

		u->i = i;
		g_t[i] = keel_task_of(&rw_user_task, u);
	}
	run(loop, check_and_break_writer, NULL, 0);
	cr_expect_eq(g_cycles, 1, "%s", g_report);
	expect_task(g_report, 0, "rw_user_task");
	expect_task(g_report, 1, "rw_user_task");
	expect_site(g_report, 0);
	expect_site(g_report, 1);
	cr_expect(strstr(g_report, "for rwlock"), "%s", g_report);
	cr_expect_eq(g_res[0], 0);
	cr_expect_eq(g_res[1], -ECANCELED);
	cr_expect_eq(keel_rwlock_readers(g_rw), 0);
	keel_rwlock_free(g_rw);
	keel_loop_destroy(loop);
}

/* ---- scopes ------------------------------------------------------------- */

static struct keel_mutex *g_m;

struct scoped {
	struct keel_task task;
	struct keel_scope scope;
	int child;
};

static int scoped_step(struct keel_task *t);
static KEEL_TASK_TYPE(scoped_task, struct scoped, task, scoped_step);

/* The owner holds g_m and joins its scope; its child wants g_m. */
static int scoped_step(struct keel_task *t)
{
	struct scoped *s = keel_container_of(t, struct scoped, task);

	KEEL_BEGIN(t);
	if (s->child) {
		g_line[1] = __LINE__ + 1;
		KEEL_AWAIT(t, keel_mutex_lock(t, g_m, UINT64_MAX));
		g_res[1] = keel_res(t);
		if (!keel_res(t))
			keel_mutex_unlock(t, g_m);
		KEEL_EXIT(t, 0);
	}
	cr_assert_eq(keel_mutex_try_lock(t, g_m), 0);
	cr_assert_eq(keel_scope_init(t, &s->scope, KEEL_SCOPE_COLLECT), 0);
	struct scoped *kid =
	    keel_scope_spawn(&s->scope, &scoped_task, KEEL_PRIO_NORMAL);

	cr_assert(kid);
	kid->child = 1;
	g_t[1] = keel_task_of(&scoped_task, kid);
	g_line[0] = __LINE__ + 1;
	KEEL_AWAIT(t, keel_scope_join(t, &s->scope));
	g_res[0] = keel_res(t);
	keel_scope_fini(&s->scope);
	keel_mutex_unlock(t, g_m);
	KEEL_END(t);
}

/* Cancel the child only: the owner's join then ends. */
static void check_and_break_child(struct keel_task *t)
{
	check_now(t);
	keel_task_cancel(g_t[1]);
}

Test(deadlock, an_owner_joining_a_child_that_waits_for_it_is_a_cycle,
     .init = setup, .timeout = 30)
{
	struct keel_loop *loop = kt_loop_new(NULL);

	cr_assert_eq(keel_mutex_new(loop, &g_m), 0);
	g_t[0] = keel_task_of(&scoped_task,
			      kt_spawn(loop, &scoped_task, KEEL_PRIO_NORMAL));
	run(loop, check_and_break_child, NULL, 0);
	cr_expect_eq(g_cycles, 1, "%s", g_report);
	expect_task(g_report, 0, "scoped_task");
	expect_task(g_report, 1, "scoped_task");
	expect_site(g_report, 0);
	expect_site(g_report, 1);
	cr_expect(strstr(g_report, "with child task"), "%s", g_report);
	cr_expect_eq(g_res[1], -ECANCELED);
	cr_expect_eq(g_res[0], 0); /* COLLECT: the child exited with 0 */
	keel_mutex_free(g_m);
	keel_loop_destroy(loop);
}

/* ---- the stall detector ------------------------------------------------- */

/* Busy in one step until the watchdog flags it; after that step the
 * loop checks for cycles and, with the default reporter, prints them. */
struct staller {
	struct keel_task task;
	int i;
};

static int staller_step(struct keel_task *t)
{
	struct staller *s = keel_container_of(t, struct staller, task);

	KEEL_BEGIN(t);
	for (s->i = 0; s->i < 8; s->i++)
		KEEL_YIELD(t);
	for (int i = 0; i < 4; i++)
		if (g_t[i])
			g_id[i] = g_t[i]->id;
	uint64_t start = kt_now_ns();

	while (!kt_stats(keel_task_loop(t)).stalls &&
	       kt_now_ns() - start < KT_MS(2000))
		;
	KEEL_YIELD(t);
	g_cycles = (int)kt_stats(keel_task_loop(t)).deadlocks;
	keel_task_cancel(g_t[0]);
	keel_task_cancel(g_t[1]);
	KEEL_END(t);
}

static KEEL_TASK_TYPE(staller_task, struct staller, task, staller_step);

Test(deadlock, a_stall_report_names_the_cycles_too, .init = setup,
     .timeout = 30)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_mutex *m1, *m2;
	FILE *err = tmpfile();
	char text[8192] = "";

	cr_assert(err);
	fflush(stderr);
	int saved = dup(STDERR_FILENO);

	cr_assert(saved >= 0);
	cr_assert(dup2(fileno(err), STDERR_FILENO) >= 0);
	keel_loop_set_stall(loop, KT_MS(5), NULL, NULL);
	cr_assert_eq(keel_mutex_new(loop, &m1), 0);
	cr_assert_eq(keel_mutex_new(loop, &m2), 0);
	spawn_locker(loop, 0, m1, m2, UINT64_MAX, 0);
	spawn_locker(loop, 1, m2, m1, UINT64_MAX, 0);
	kt_spawn(loop, &staller_task, KEEL_PRIO_NORMAL);
	kt_loop_run(loop);
	fflush(stderr);
	dup2(saved, STDERR_FILENO);
	close(saved);
	rewind(err);
	size_t n = fread(text, 1, sizeof(text) - 1, err);

	text[n] = '\0';
	fclose(err);
	cr_expect_eq(g_cycles, 1, "%s", text);
	cr_expect(strstr(text, "keel: stall: "), "%s", text);
	cr_expect(strstr(text, "deadlock: task "), "%s", text);
	expect_task(text, 0, "locker_task");
	expect_task(text, 1, "locker_task");
	expect_site(text, 0);
	expect_site(text, 1);
	keel_mutex_free(m1);
	keel_mutex_free(m2);
	keel_loop_destroy(loop);
}
