/* SPDX-License-Identifier: MIT */
/*
 * test_sync.c: keel/sync.h. For each primitive: the normal path, FIFO
 * order, a cancelled waiter leaving no trace (what it waited for goes to
 * the next waiter), timeouts; the oneshot from another thread (one send,
 * then a stress of many with racing sends), barrier reuse over several
 * generations, broadcast lag and close, level-triggered cancellation
 * (an await on a cancelled token fails even when the result is ready),
 * and -EXDEV for a task of another loop.
 *
 * Tasks record what they saw in globals (results by task id, an event
 * log); a `script` task drives each test in stages, a yield (or a sleep)
 * apart, and never reads a frame of a task that may have exited.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <keel.h>
#include <keel/sync.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include "helpers/keel_test.h"

#define MAX_TASKS 16
#define NOT_DONE  (-9999)

static struct kt_log g_log;
static int g_res[MAX_TASKS];		    /* each task's await result */
static void *g_val[MAX_TASKS];		    /* what it received */
static int g_done[MAX_TASKS];		    /* set when the task recorded */
static struct keel_task *g_task[MAX_TASKS]; /* to cancel while waiting */
static int g_unlock[MAX_TASKS];		    /* mutex holders' unlock results */
static uint64_t g_elapsed[MAX_TASKS];

static void reset(void)
{
	for (int i = 0; i < MAX_TASKS; i++)
		g_res[i] = NOT_DONE;
}

static void record(int id, int res, void *val)
{
	g_res[id] = res;
	g_val[id] = val;
	g_done[id] = 1;
	kt_log_push(&g_log, id);
}

/* ---- a scripted driver -------------------------------------------------- */

/* Called at each stage; spawned last, so stage 0 runs after the others
 * reached their first await. */
static void (*g_script)(struct keel_task *t, int stage);
static int g_stages;
static uint64_t g_stage_sleep; /* ns between stages; 0: a yield */

struct script {
	struct keel_task task;
	int stage;
};

static int script_step(struct keel_task *t)
{
	struct script *s = keel_container_of(t, struct script, task);

	KEEL_BEGIN(t);
	for (s->stage = 0; s->stage < g_stages; s->stage++) {
		g_script(t, s->stage);
		if (g_stage_sleep)
			KEEL_AWAIT(t, keel_sleep(t, g_stage_sleep));
		else
			KEEL_YIELD(t);
	}
	KEEL_END(t);
}

static KEEL_TASK_TYPE(script_task, struct script, task, script_step);

static void run_script(struct keel_loop *loop,
		       void (*fn)(struct keel_task *, int), int stages)
{
	g_script = fn;
	g_stages = stages;
	kt_spawn(loop, &script_task, KEEL_PRIO_NORMAL);
	kt_loop_run(loop);
}

/* ---- semaphore users ---------------------------------------------------- */

struct sem_user {
	struct keel_task task;
	struct keel_semaphore *s;
	int id;
	uint32_t n;
	int keep; /* exit holding the permits */
};

static int sem_user_step(struct keel_task *t)
{
	struct sem_user *u = keel_container_of(t, struct sem_user, task);

	KEEL_BEGIN(t);
	KEEL_AWAIT(t, keel_semaphore_acquire(t, u->s, u->n));
	record(u->id, keel_res(t), NULL);
	if (keel_res(t) == 0 && !u->keep) {
		KEEL_YIELD(t);
		keel_semaphore_release(u->s, u->n);
	}
	KEEL_END(t);
}

static KEEL_TASK_TYPE(sem_user_task, struct sem_user, task, sem_user_step);

static void spawn_sem_user(struct keel_loop *loop, struct keel_semaphore *s,
			   int id, uint32_t n, int keep)
{
	struct sem_user *u = kt_spawn(loop, &sem_user_task, KEEL_PRIO_NORMAL);

	u->s = s;
	u->id = id;
	u->n = n;
	u->keep = keep;
	g_task[id] = keel_task_of(&sem_user_task, u);
}

static struct keel_semaphore *g_sem;

Test(sync, semaphore_acquire_and_release_pass_permits_around, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);

	reset();
	cr_assert_eq(keel_semaphore_new(loop, 2, &g_sem), 0);
	for (int i = 0; i < 6; i++)
		spawn_sem_user(loop, g_sem, i, 1, 0);
	kt_loop_run(loop);
	for (int i = 0; i < 6; i++)
		cr_expect_eq(g_res[i], 0, "user %d: %d", i, g_res[i]);
	const int want[] = {0, 1, 2, 3, 4, 5};

	kt_log_expect(&g_log, want, 6);
	cr_expect_eq(keel_semaphore_available(g_sem), 2);
	cr_expect_eq(keel_semaphore_try_acquire(g_sem, 2), 0);
	cr_expect_eq(keel_semaphore_try_acquire(g_sem, 1), -EAGAIN);
	cr_expect_eq(keel_semaphore_release(g_sem, 2), 0);
	keel_semaphore_free(g_sem);
	keel_loop_destroy(loop);
}

static int g_try_while_queued;

static void sem_fifo_script(struct keel_task *t, int stage)
{
	switch (stage) {
	case 0: /* A (3) and B (1) wait; one permit must not go to B */
		keel_semaphore_release(g_sem, 1);
		g_try_while_queued = keel_semaphore_try_acquire(g_sem, 1);
		/* Nor to a newcomer: C queues behind B. */
		spawn_sem_user(t->loop, g_sem, 2, 1, 1);
		break;
	case 1:
		cr_expect_eq(g_done[1], 0, "B barged past A");
		cr_expect_eq(g_done[2], 0, "C barged past A and B");
		keel_semaphore_release(g_sem, 2); /* A: 3 */
		break;
	case 2:
		cr_expect_eq(g_done[0], 1);
		cr_expect_eq(g_done[1], 0);
		keel_semaphore_release(g_sem, 1); /* B */
		break;
	case 3:
		cr_expect_eq(g_done[2], 0);
		keel_semaphore_release(g_sem, 1); /* C */
		break;
	}
}

Test(sync, semaphore_serves_waiters_in_fifo_order_without_barging,
     .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);

	reset();
	cr_assert_eq(keel_semaphore_new(loop, 0, &g_sem), 0);
	spawn_sem_user(loop, g_sem, 0, 3, 1);
	spawn_sem_user(loop, g_sem, 1, 1, 1);
	run_script(loop, sem_fifo_script, 5);
	cr_expect_eq(g_try_while_queued, -EAGAIN);
	for (int i = 0; i < 3; i++)
		cr_expect_eq(g_res[i], 0);
	const int want[] = {0, 1, 2};

	kt_log_expect(&g_log, want, 3);
	cr_expect_eq(keel_semaphore_available(g_sem), 0);
	keel_semaphore_free(g_sem);
	keel_loop_destroy(loop);
}

static void sem_cancel_script(struct keel_task *t, int stage)
{
	(void)t;
	switch (stage) {
	case 0: /* 0, 1, 2 wait for one permit each: cancel 1 */
		keel_task_cancel(g_task[1]);
		break;
	case 1:
		keel_semaphore_release(g_sem, 1); /* to 0 */
		break;
	case 2:
		keel_semaphore_release(g_sem, 1); /* to 2, not 1 */
		break;
	}
}

Test(sync, semaphore_cancelled_waiter_leaves_no_trace, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);

	reset();
	cr_assert_eq(keel_semaphore_new(loop, 0, &g_sem), 0);
	for (int i = 0; i < 3; i++)
		spawn_sem_user(loop, g_sem, i, 1, 1);
	run_script(loop, sem_cancel_script, 3);
	cr_expect_eq(g_res[1], -ECANCELED);
	cr_expect_eq(g_res[0], 0);
	cr_expect_eq(g_res[2], 0);
	const int want[] = {1, 0, 2};

	kt_log_expect(&g_log, want, 3);
	cr_expect_eq(keel_semaphore_available(g_sem), 0);
	/* Nobody is left queued: a released permit can be taken at once. */
	cr_expect_eq(keel_semaphore_release(g_sem, 1), 0);
	cr_expect_eq(keel_semaphore_try_acquire(g_sem, 1), 0);
	keel_semaphore_free(g_sem);
	keel_loop_destroy(loop);
}

static void sem_cancel_head_script(struct keel_task *t, int stage)
{
	(void)t;
	switch (stage) {
	case 0: /* 0 wants 3 and holds back 1 (wants 1) */
		keel_semaphore_release(g_sem, 1);
		break;
	case 1:
		cr_expect_eq(g_done[1], 0);
		keel_task_cancel(g_task[0]); /* 1 may now go */
		break;
	}
}

Test(sync, semaphore_cancelled_head_lets_the_next_waiter_in, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);

	reset();
	cr_assert_eq(keel_semaphore_new(loop, 0, &g_sem), 0);
	spawn_sem_user(loop, g_sem, 0, 3, 1);
	spawn_sem_user(loop, g_sem, 1, 1, 1);
	run_script(loop, sem_cancel_head_script, 2);
	cr_expect_eq(g_res[0], -ECANCELED);
	cr_expect_eq(g_res[1], 0);
	cr_expect_eq(keel_semaphore_available(g_sem), 0);
	keel_semaphore_free(g_sem);
	keel_loop_destroy(loop);
}

static void sem_close_script(struct keel_task *t, int stage)
{
	(void)t;
	if (stage == 0)
		keel_semaphore_close(g_sem);
}

Test(sync, semaphore_close_wakes_waiters_with_epipe, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);

	reset();
	cr_assert_eq(keel_semaphore_new(loop, 0, &g_sem), 0);
	spawn_sem_user(loop, g_sem, 0, 1, 1);
	spawn_sem_user(loop, g_sem, 1, 1, 1);
	run_script(loop, sem_close_script, 1);
	cr_expect_eq(g_res[0], -EPIPE);
	cr_expect_eq(g_res[1], -EPIPE);
	cr_expect_eq(keel_semaphore_try_acquire(g_sem, 0), -EPIPE);
	keel_semaphore_free(g_sem);
	keel_loop_destroy(loop);
}

/* ---- mutex -------------------------------------------------------------- */

static struct keel_mutex *g_mutex;
static int g_inside; /* tasks inside the critical section */
static int g_max_inside;

struct locker {
	struct keel_task task;
	int id;
	uint64_t timeout;
	uint64_t hold_ns; /* sleep while holding; 0: two yields */
	uint64_t start;
};

static int locker_step(struct keel_task *t)
{
	struct locker *l = keel_container_of(t, struct locker, task);

	KEEL_BEGIN(t);
	l->start = kt_now_ns();
	KEEL_AWAIT(t, keel_mutex_lock(t, g_mutex, l->timeout));
	g_elapsed[l->id] = kt_now_ns() - l->start;
	record(l->id, keel_res(t), NULL);
	if (keel_res(t) != 0)
		KEEL_EXIT(t, 0);
	if (++g_inside > g_max_inside)
		g_max_inside = g_inside;
	if (l->hold_ns) {
		KEEL_AWAIT(t, keel_sleep(t, l->hold_ns));
	} else {
		KEEL_YIELD(t);
		KEEL_YIELD(t);
	}
	g_inside--;
	g_unlock[l->id] = keel_mutex_unlock(t, g_mutex);
	KEEL_END(t);
}

static KEEL_TASK_TYPE(locker_task, struct locker, task, locker_step);

static void spawn_locker(struct keel_loop *loop, int id, uint64_t timeout,
			 uint64_t hold_ns)
{
	struct locker *l = kt_spawn(loop, &locker_task, KEEL_PRIO_NORMAL);

	l->id = id;
	l->timeout = timeout;
	l->hold_ns = hold_ns;
	g_task[id] = keel_task_of(&locker_task, l);
}

Test(sync, mutex_is_exclusive_and_hands_off_in_fifo_order, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);

	reset();
	cr_assert_eq(keel_mutex_new(loop, &g_mutex), 0);
	for (int i = 0; i < 5; i++)
		spawn_locker(loop, i, UINT64_MAX, 0);
	kt_loop_run(loop);
	const int want[] = {0, 1, 2, 3, 4};

	kt_log_expect(&g_log, want, 5);
	cr_expect_eq(g_max_inside, 1);
	for (int i = 0; i < 5; i++) {
		cr_expect_eq(g_res[i], 0);
		cr_expect_eq(g_unlock[i], 0);
	}
	cr_expect_null(keel_mutex_holder(g_mutex));
	keel_mutex_free(g_mutex);
	keel_loop_destroy(loop);
}

Test(sync, mutex_lock_times_out_and_leaves_no_trace, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);

	reset();
	cr_assert_eq(keel_mutex_new(loop, &g_mutex), 0);
	spawn_locker(loop, 0, UINT64_MAX, KT_MS(80)); /* holds 80 ms */
	spawn_locker(loop, 1, KT_MS(20), 0);	      /* gives up at 20 */
	spawn_locker(loop, 2, UINT64_MAX, 0);	      /* gets it from 0 */
	kt_loop_run(loop);
	cr_expect_eq(g_res[0], 0);
	cr_expect_eq(g_res[1], -ETIMEDOUT);
	cr_expect_geq(g_elapsed[1], KT_MS(20));
	cr_expect_lt(g_elapsed[1], KT_MS(80));
	cr_expect_eq(g_res[2], 0);
	cr_expect_geq(g_elapsed[2], KT_MS(70));
	const int want[] = {0, 1, 2};

	kt_log_expect(&g_log, want, 3);
	cr_expect_eq(g_unlock[2], 0);
	cr_expect_null(keel_mutex_holder(g_mutex));
	keel_mutex_free(g_mutex);
	keel_loop_destroy(loop);
}

static void mutex_cancel_script(struct keel_task *t, int stage)
{
	(void)t;
	if (stage == 0) /* 0 holds (sleeping), 1 and 2 wait: cancel 1 */
		keel_task_cancel(g_task[1]);
}

Test(sync, mutex_cancelled_waiter_leaves_no_trace, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);

	reset();
	cr_assert_eq(keel_mutex_new(loop, &g_mutex), 0);
	spawn_locker(loop, 0, UINT64_MAX, KT_MS(10));
	spawn_locker(loop, 1, KT_MS(5000), 0); /* timed: its timer goes too */
	spawn_locker(loop, 2, UINT64_MAX, 0);
	uint64_t start = kt_now_ns();

	run_script(loop, mutex_cancel_script, 1);
	/* Its 5 s timer went with it, or the loop would still be running. */
	cr_expect_lt(kt_now_ns() - start, KT_MS(1000));
	cr_expect_eq(g_res[1], -ECANCELED);
	cr_expect_eq(g_res[0], 0);
	cr_expect_eq(g_res[2], 0);
	const int want[] = {0, 1, 2};

	kt_log_expect(&g_log, want, 3);
	cr_expect_eq(kt_stats(loop).timers_armed, 0);
	cr_expect_null(keel_mutex_holder(g_mutex));
	keel_mutex_free(g_mutex);
	keel_loop_destroy(loop);
}

struct misuser {
	struct keel_task task;
	int step;
};

static int g_misuse[8];
static struct keel_task g_other; /* a task that never holds the mutex */

static int misuser_step(struct keel_task *t)
{
	KEEL_BEGIN(t);
	KEEL_AWAIT(t, keel_mutex_lock(t, g_mutex, UINT64_MAX));
	g_misuse[0] = keel_res(t);
	KEEL_AWAIT(t, keel_mutex_lock(t, g_mutex, UINT64_MAX));
	g_misuse[1] = keel_res(t); /* -EDEADLK */
	g_misuse[2] = keel_mutex_try_lock(t, g_mutex);
	g_misuse[3] = keel_mutex_unlock(&g_other, g_mutex); /* not held */
	g_misuse[4] = keel_mutex_unlock(t, g_mutex);
	g_misuse[5] = keel_mutex_try_lock(t, g_mutex);
	g_misuse[6] = keel_mutex_unlock(t, g_mutex);
	KEEL_END(t);
}

static KEEL_TASK_TYPE(misuser_task, struct misuser, task, misuser_step);

Test(sync, mutex_reports_relock_and_foreign_unlock, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	cr_assert_eq(keel_mutex_new(loop, &g_mutex), 0);
	kt_spawn(loop, &misuser_task, KEEL_PRIO_NORMAL);
	kt_loop_run(loop);
	cr_expect_eq(g_misuse[0], 0);
	cr_expect_eq(g_misuse[1], -EDEADLK);
	cr_expect_eq(g_misuse[2], -EBUSY);
	cr_expect_eq(g_misuse[3], -EPERM);
	cr_expect_eq(g_misuse[4], 0);
	cr_expect_eq(g_misuse[5], 0);
	cr_expect_eq(g_misuse[6], 0);
	keel_mutex_free(g_mutex);
	keel_loop_destroy(loop);
}

/* ---- waiters on event, barrier, latch, oneshot, broadcast -------------- */

enum wait_kind { W_EVENT, W_BARRIER, W_LATCH, W_ONESHOT, W_BROADCAST };

struct waiter {
	struct keel_task task;
	int id;
	enum wait_kind kind;
	void *obj;
	uint64_t deadline;
	int rounds; /* barrier: waits in a row */
	int round;
	void *out;
};

static int g_leaders;

static int waiter_await(struct keel_task *t, struct waiter *w)
{
	switch (w->kind) {
	case W_EVENT:
		return keel_event_wait(t, w->obj);
	case W_BARRIER:
		return keel_barrier_wait(t, w->obj);
	case W_LATCH:
		return keel_latch_wait(t, w->obj);
	case W_ONESHOT:
		return keel_oneshot_recv_until(t, w->obj, &w->out, w->deadline);
	case W_BROADCAST:
		return keel_broadcast_recv(t, w->obj, &w->out);
	}
	return keel_yield(t);
}

static int waiter_step(struct keel_task *t)
{
	struct waiter *w = keel_container_of(t, struct waiter, task);

	KEEL_BEGIN(t);
	if (w->kind == W_BARRIER) {
		for (w->round = 0; w->round < w->rounds; w->round++) {
			KEEL_AWAIT(t, keel_barrier_wait(t, w->obj));
			if (keel_res(t) == KEEL_BARRIER_LEADER)
				g_leaders++;
			else if (keel_res(t) != 0)
				break;
			kt_log_push(&g_log, 100 * w->round + w->id);
		}
		g_res[w->id] = keel_res(t);
		g_done[w->id] = 1;
		KEEL_EXIT(t, 0);
	}
	KEEL_AWAIT(t, waiter_await(t, w));
	record(w->id, keel_res(t), w->out);
	KEEL_END(t);
}

static KEEL_TASK_TYPE(waiter_task, struct waiter, task, waiter_step);

static struct waiter *spawn_waiter(struct keel_loop *loop, int id,
				   enum wait_kind kind, void *obj)
{
	struct waiter *w = kt_spawn(loop, &waiter_task, KEEL_PRIO_NORMAL);

	w->id = id;
	w->kind = kind;
	w->obj = obj;
	w->deadline = UINT64_MAX;
	w->rounds = 1;
	g_task[id] = keel_task_of(&waiter_task, w);
	return w;
}

/* ---- event -------------------------------------------------------------- */

static struct keel_event *g_event;

static void event_script(struct keel_task *t, int stage)
{
	switch (stage) {
	case 0: /* 0, 1, 2 wait; 1 is cancelled */
		keel_task_cancel(g_task[1]);
		break;
	case 1:
		cr_expect_eq(g_done[0] + g_done[2], 0, "woken before set");
		cr_expect_eq(keel_event_set(g_event), 0);
		break;
	case 2: /* level-triggered: a later wait returns at once */
		cr_expect_eq(g_done[0] + g_done[2], 2);
		spawn_waiter(t->loop, 3, W_EVENT, g_event);
		break;
	case 3:
		cr_expect_eq(g_done[3], 1);
		cr_expect_eq(keel_event_clear(g_event), 0);
		spawn_waiter(t->loop, 4, W_EVENT, g_event);
		break;
	case 4:
		cr_expect_eq(g_done[4], 0, "a cleared event let a waiter by");
		keel_event_set(g_event);
		break;
	}
}

Test(sync, event_set_wakes_every_waiter_and_stays_set_until_cleared,
     .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);

	reset();
	cr_assert_eq(keel_event_new(loop, &g_event), 0);
	for (int i = 0; i < 3; i++)
		spawn_waiter(loop, i, W_EVENT, g_event);
	run_script(loop, event_script, 5);
	cr_expect_eq(g_res[0], 0);
	cr_expect_eq(g_res[1], -ECANCELED);
	cr_expect_eq(g_res[2], 0);
	cr_expect_eq(g_res[3], 0);
	cr_expect_eq(g_res[4], 0);
	/* FIFO wake order: 0 before 2. */
	cr_expect_lt(kt_log_find(&g_log, 0), kt_log_find(&g_log, 2));
	cr_expect(keel_event_is_set(g_event));
	keel_event_free(g_event);
	keel_loop_destroy(loop);
}

/* ---- barrier ------------------------------------------------------------ */

static struct keel_barrier *g_barrier;

Test(sync, barrier_releases_all_at_the_last_arrival_and_is_reusable,
     .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	enum { PARTIES = 3, ROUNDS = 4 };

	reset();
	cr_assert_eq(keel_barrier_new(loop, PARTIES, &g_barrier), 0);
	for (int i = 0; i < PARTIES; i++)
		spawn_waiter(loop, i, W_BARRIER, g_barrier)->rounds = ROUNDS;
	kt_loop_run(loop);
	cr_expect_eq(keel_barrier_generation(g_barrier), ROUNDS);
	cr_expect_eq(g_leaders, ROUNDS, "one leader per generation");
	cr_assert_eq(g_log.n, PARTIES * ROUNDS);
	/* Nobody passes round r + 1 before everyone passed round r. */
	for (int i = 0; i < g_log.n; i++)
		cr_expect_eq(g_log.v[i] / 100, i / PARTIES,
			     "entry %d is round %d", i, g_log.v[i] / 100);
	for (int i = 0; i < PARTIES; i++)
		cr_expect_geq(g_res[i], 0);
	keel_barrier_free(g_barrier);
	keel_loop_destroy(loop);
}

static void barrier_cancel_script(struct keel_task *t, int stage)
{
	switch (stage) {
	case 0: /* 0 arrived (1 of 2); cancel it: its arrival goes too */
		keel_task_cancel(g_task[0]);
		break;
	case 1:
		spawn_waiter(t->loop, 1, W_BARRIER, g_barrier);
		break;
	case 2:
		cr_expect_eq(g_done[1], 0, "released by a withdrawn arrival");
		spawn_waiter(t->loop, 2, W_BARRIER, g_barrier);
		break;
	}
}

Test(sync, barrier_cancelled_waiter_withdraws_its_arrival, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);

	reset();
	cr_assert_eq(keel_barrier_new(loop, 2, &g_barrier), 0);
	spawn_waiter(loop, 0, W_BARRIER, g_barrier);
	run_script(loop, barrier_cancel_script, 3);
	cr_expect_eq(g_res[0], -ECANCELED);
	cr_expect_eq(g_res[1], 0);
	cr_expect_eq(g_res[2], KEEL_BARRIER_LEADER);
	cr_expect_eq(keel_barrier_generation(g_barrier), 1);
	keel_barrier_free(g_barrier);
	keel_loop_destroy(loop);
}

/* ---- latch -------------------------------------------------------------- */

static struct keel_latch *g_latch;
static int64_t g_counts[4];

static void latch_script(struct keel_task *t, int stage)
{
	switch (stage) {
	case 0:
		g_counts[0] = keel_latch_count_down(g_latch, 1);
		break;
	case 1:
		g_counts[1] = keel_latch_count_down(g_latch, 1);
		cr_expect_eq(g_done[0] + g_done[1], 0);
		break;
	case 2:
		g_counts[2] = keel_latch_count_down(g_latch, 5); /* to 0 */
		break;
	case 3:
		cr_expect_eq(g_done[0] + g_done[1], 2);
		spawn_waiter(t->loop, 2, W_LATCH, g_latch);
		g_counts[3] = keel_latch_count_down(g_latch, 1);
		break;
	}
}

Test(sync, latch_releases_waiters_at_zero_and_stays_open, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);

	reset();
	cr_assert_eq(keel_latch_new(loop, 3, &g_latch), 0);
	spawn_waiter(loop, 0, W_LATCH, g_latch);
	spawn_waiter(loop, 1, W_LATCH, g_latch);
	run_script(loop, latch_script, 5);
	cr_expect_eq(g_counts[0], 2);
	cr_expect_eq(g_counts[1], 1);
	cr_expect_eq(g_counts[2], 0);
	cr_expect_eq(g_counts[3], 0);
	for (int i = 0; i < 3; i++)
		cr_expect_eq(g_res[i], 0, "waiter %d: %d", i, g_res[i]);
	cr_expect_eq(keel_latch_count(g_latch), 0);
	keel_latch_free(g_latch);
	keel_loop_destroy(loop);
}

/* ---- oneshot ------------------------------------------------------------ */

static struct keel_oneshot *g_os;
static int g_send_res[4];

static void oneshot_local_script(struct keel_task *t, int stage)
{
	(void)t;
	if (stage == 1) {
		cr_expect_eq(g_done[0], 0);
		g_send_res[0] = keel_oneshot_send(g_os, (void *)(uintptr_t)42);
		g_send_res[1] = keel_oneshot_send(g_os, (void *)(uintptr_t)43);
	}
}

Test(sync, oneshot_recv_waits_for_the_value_sent_on_the_same_loop,
     .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);

	reset();
	cr_assert_eq(keel_oneshot_new(loop, NULL, NULL, &g_os), 0);
	spawn_waiter(loop, 0, W_ONESHOT, g_os);
	run_script(loop, oneshot_local_script, 2);
	cr_expect_eq(g_res[0], 0);
	cr_expect_eq((uintptr_t)g_val[0], 42);
	cr_expect_eq(g_send_res[0], 0);
	cr_expect_eq(g_send_res[1], -EPIPE, "a second send must fail");
	void *v;

	cr_expect_eq(keel_oneshot_try_recv(g_os, &v), -EPIPE, "taken");
	keel_oneshot_release(g_os);
	keel_loop_destroy(loop);
}

Test(sync, oneshot_value_sent_first_is_received_at_once, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	void *v = NULL;

	reset();
	cr_assert_eq(keel_oneshot_new(loop, NULL, NULL, &g_os), 0);
	cr_expect_eq(keel_oneshot_try_recv(g_os, &v), -EAGAIN);
	cr_expect_eq(keel_oneshot_send(g_os, (void *)(uintptr_t)7), 0);
	spawn_waiter(loop, 0, W_ONESHOT, g_os);
	kt_loop_run(loop);
	cr_expect_eq(g_res[0], 0);
	cr_expect_eq((uintptr_t)g_val[0], 7);
	keel_oneshot_release(g_os);
	keel_loop_destroy(loop);
}

static void oneshot_fail_script(struct keel_task *t, int stage)
{
	(void)t;
	if (stage == 0) {
		keel_oneshot_fail(g_os, -ECONNRESET);
		g_send_res[0] = keel_oneshot_send(g_os, NULL);
	}
}

Test(sync, oneshot_close_or_fail_reaches_the_waiting_receiver, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_oneshot *closed;
	void *v;

	reset();
	cr_assert_eq(keel_oneshot_new(loop, NULL, NULL, &g_os), 0);
	spawn_waiter(loop, 0, W_ONESHOT, g_os);
	run_script(loop, oneshot_fail_script, 1);
	cr_expect_eq(g_res[0], -ECONNRESET);
	cr_expect_eq(g_send_res[0], -EPIPE);
	keel_oneshot_release(g_os);
	cr_assert_eq(keel_oneshot_new(loop, NULL, NULL, &closed), 0);
	keel_oneshot_close(closed);
	cr_expect_eq(keel_oneshot_try_recv(closed, &v), -EPIPE);
	keel_oneshot_release(closed);
	keel_loop_destroy(loop);
}

static void oneshot_late_script(struct keel_task *t, int stage)
{
	(void)t;
	if (stage == 1) { /* 40 ms on: the receiver gave up at 10 */
		cr_expect_eq(g_res[0], -ETIMEDOUT);
		g_send_res[0] = keel_oneshot_send(g_os, (void *)(uintptr_t)1);
	}
}

Test(sync, oneshot_recv_times_out_and_a_late_send_fails, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);

	reset();
	cr_assert_eq(keel_oneshot_new(loop, NULL, NULL, &g_os), 0);
	spawn_waiter(loop, 0, W_ONESHOT, g_os)->deadline =
	    kt_now_ns() + KT_MS(10);
	g_stage_sleep = KT_MS(40);
	run_script(loop, oneshot_late_script, 2);
	cr_expect_eq(g_res[0], -ETIMEDOUT);
	cr_expect_eq(g_send_res[0], -EPIPE);
	keel_oneshot_release(g_os);
	keel_loop_destroy(loop);
}

static void oneshot_cancel_script(struct keel_task *t, int stage)
{
	(void)t;
	if (stage == 0)
		keel_task_cancel(g_task[0]);
	else if (stage == 1)
		g_send_res[0] = keel_oneshot_send(g_os, (void *)(uintptr_t)1);
}

Test(sync, oneshot_cancelled_receiver_retires_the_slot, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);

	reset();
	cr_assert_eq(keel_oneshot_new(loop, NULL, NULL, &g_os), 0);
	spawn_waiter(loop, 0, W_ONESHOT, g_os);
	run_script(loop, oneshot_cancel_script, 2);
	cr_expect_eq(g_res[0], -ECANCELED);
	cr_expect_eq(g_send_res[0], -EPIPE);
	keel_oneshot_release(g_os);
	keel_loop_destroy(loop);
}

static int g_drops;
static uintptr_t g_dropped_sum;

static void count_drop(void *msg, void *arg)
{
	(void)arg;
	g_drops++;
	g_dropped_sum += (uintptr_t)msg;
}

Test(sync, oneshot_value_never_received_goes_to_on_drop, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_oneshot *os;

	cr_assert_eq(keel_oneshot_new(loop, count_drop, NULL, &os), 0);
	cr_expect_eq(
	    keel_oneshot_send(keel_oneshot_ref(os), (void *)(uintptr_t)5), 0);
	keel_oneshot_release(os); /* the sender's */
	cr_expect_eq(g_drops, 0);
	keel_oneshot_release(os); /* the receiver's, never received */
	cr_expect_eq(g_drops, 1);
	cr_expect_eq(g_dropped_sum, 5);
	keel_loop_destroy(loop);
}

/* A plain thread sends after a delay; the loop waits for it. */
static void *late_sender(void *arg)
{
	usleep(20000);
	g_send_res[0] = keel_oneshot_send(arg, (void *)(uintptr_t)99);
	keel_oneshot_release(arg);
	return NULL;
}

Test(sync, oneshot_send_from_a_plain_thread_wakes_the_receiver, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	pthread_t th;

	reset();
	cr_assert_eq(keel_oneshot_new(loop, NULL, NULL, &g_os), 0);
	spawn_waiter(loop, 0, W_ONESHOT, g_os);
	cr_assert_eq(
	    pthread_create(&th, NULL, late_sender, keel_oneshot_ref(g_os)), 0);
	kt_loop_run(loop); /* must not stop while the receiver waits */
	pthread_join(th, NULL);
	cr_expect_eq(g_res[0], 0);
	cr_expect_eq((uintptr_t)g_val[0], 99);
	cr_expect_eq(g_send_res[0], 0);
	keel_oneshot_release(g_os);
	keel_loop_destroy(loop);
}

/* Many slots, each sent by another thread as its receiver arrives. */
#define STRESS 500

static struct keel_oneshot *g_slots[STRESS];
static int g_published;
static int g_stress_ok;

static void *stress_sender(void *arg)
{
	(void)arg;
	for (int i = 0; i < STRESS; i++) {
		while (__atomic_load_n(&g_published, __ATOMIC_ACQUIRE) <= i)
			;
		struct keel_oneshot *os = g_slots[i];

		if (i % 3 == 0)
			usleep(50); /* let the receiver wait first */
		keel_oneshot_send(os, (void *)(uintptr_t)(i + 1));
		keel_oneshot_release(os);
	}
	return NULL;
}

struct stress_rx {
	struct keel_task task;
	int i;
	struct keel_oneshot *os;
	void *out;
};

static int stress_rx_step(struct keel_task *t)
{
	struct stress_rx *r = keel_container_of(t, struct stress_rx, task);

	KEEL_BEGIN(t);
	for (r->i = 0; r->i < STRESS; r->i++) {
		if (keel_oneshot_new(t->loop, NULL, NULL, &r->os))
			KEEL_EXIT(t, -ENOMEM);
		g_slots[r->i] = keel_oneshot_ref(r->os);
		__atomic_store_n(&g_published, r->i + 1, __ATOMIC_RELEASE);
		if (r->i % 2)
			KEEL_YIELD(t); /* let the send race ahead */
		KEEL_AWAIT(t, keel_oneshot_recv(t, r->os, &r->out));
		if (keel_res(t) == 0 &&
		    (uintptr_t)r->out == (uintptr_t)r->i + 1)
			g_stress_ok++;
		keel_oneshot_release(r->os);
	}
	KEEL_END(t);
}

static KEEL_TASK_TYPE(stress_rx_task, struct stress_rx, task, stress_rx_step);

Test(sync, oneshot_many_cross_thread_sends_each_arrive_once, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	pthread_t th;

	kt_spawn(loop, &stress_rx_task, KEEL_PRIO_NORMAL);
	cr_assert_eq(pthread_create(&th, NULL, stress_sender, NULL), 0);
	kt_loop_run(loop);
	pthread_join(th, NULL);
	cr_expect_eq(g_stress_ok, STRESS);
	keel_loop_destroy(loop);
}

/* ---- broadcast ---------------------------------------------------------- */

static struct keel_broadcast *g_bc;
static struct keel_broadcast_rx *g_rx[MAX_TASKS];

/* Receives until the channel ends; logs 100 * id + message. */
struct bc_reader {
	struct keel_task task;
	int id;
	void *out;
};

static int bc_reader_step(struct keel_task *t)
{
	struct bc_reader *r = keel_container_of(t, struct bc_reader, task);

	KEEL_BEGIN(t);
	for (;;) {
		KEEL_AWAIT(t, keel_broadcast_recv(t, g_rx[r->id], &r->out));
		if (keel_res(t) != 0)
			break;
		kt_log_push(&g_log, 100 * r->id + (int)(uintptr_t)r->out);
	}
	g_res[r->id] = keel_res(t);
	keel_broadcast_unsubscribe(g_rx[r->id]);
	KEEL_END(t);
}

static KEEL_TASK_TYPE(bc_reader_task, struct bc_reader, task, bc_reader_step);

static int g_bc_send[4];

static void broadcast_script(struct keel_task *t, int stage)
{
	(void)t;
	switch (stage) {
	case 0: /* every reader waits */
		g_bc_send[0] = keel_broadcast_send(g_bc, (void *)(uintptr_t)1);
		break;
	case 1: /* two at once: readers take the second without waiting */
		keel_broadcast_send(g_bc, (void *)(uintptr_t)2);
		keel_broadcast_send(g_bc, (void *)(uintptr_t)3);
		keel_broadcast_free(g_bc); /* readers drain, then -EPIPE */
		break;
	}
}

Test(sync, broadcast_every_receiver_sees_every_message_in_order, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);

	reset();
	cr_assert_eq(keel_broadcast_new(loop, 8, NULL, NULL, &g_bc), 0);
	for (int i = 0; i < 3; i++) {
		struct bc_reader *r =
		    kt_spawn(loop, &bc_reader_task, KEEL_PRIO_NORMAL);

		r->id = i;
		cr_assert_eq(keel_broadcast_subscribe(g_bc, &g_rx[i]), 0);
	}
	run_script(loop, broadcast_script, 2);
	cr_expect_eq(g_bc_send[0], 3, "three receivers");
	for (int i = 0; i < 3; i++) {
		int seen[3], n = 0;

		for (int k = 0; k < g_log.n; k++)
			if (g_log.v[k] / 100 == i && n < 3)
				seen[n++] = g_log.v[k] % 100;
		cr_expect_eq(n, 3, "reader %d saw %d", i, n);
		for (int k = 0; k < n; k++)
			cr_expect_eq(seen[k], k + 1);
		cr_expect_eq(g_res[i], -EPIPE);
	}
	keel_loop_destroy(loop);
}

Test(sync, broadcast_slow_receiver_lags_then_reads_the_oldest_kept,
     .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_broadcast_rx *slow, *fast;
	void *v;

	cr_assert_eq(keel_broadcast_new(loop, 4, count_drop, NULL, &g_bc), 0);
	cr_expect_eq(keel_broadcast_send(g_bc, (void *)(uintptr_t)1), 0,
		     "no receiver: not queued");
	cr_assert_eq(keel_broadcast_subscribe(g_bc, &slow), 0);
	cr_assert_eq(keel_broadcast_subscribe(g_bc, &fast), 0);
	for (uintptr_t i = 1; i <= 10; i++) {
		cr_expect_eq(keel_broadcast_send(g_bc, (void *)i), 2);
		cr_expect_eq(keel_broadcast_try_recv(fast, &v), 0);
		cr_expect_eq((uintptr_t)v, i);
	}
	cr_expect_eq(g_drops, 6, "pushed out of the ring");
	cr_expect_eq(keel_broadcast_try_recv(slow, &v), -EOVERFLOW);
	cr_expect_eq(keel_broadcast_lagged(slow), 6);
	for (uintptr_t i = 7; i <= 10; i++) {
		cr_expect_eq(keel_broadcast_try_recv(slow, &v), 0);
		cr_expect_eq((uintptr_t)v, i);
	}
	cr_expect_eq(keel_broadcast_try_recv(slow, &v), -EAGAIN);
	keel_broadcast_close(g_bc);
	cr_expect_eq(keel_broadcast_try_recv(slow, &v), -EPIPE);
	cr_expect_eq(keel_broadcast_send(g_bc, NULL), -EPIPE);
	keel_broadcast_free(g_bc);
	cr_expect_eq(keel_broadcast_unsubscribe(slow), 0);
	cr_expect_eq(g_drops, 6, "still held for a receiver");
	cr_expect_eq(keel_broadcast_unsubscribe(fast), 0);
	cr_expect_eq(g_drops, 10);
	keel_loop_destroy(loop);
}

static void broadcast_lag_await_script(struct keel_task *t, int stage)
{
	(void)t;
	if (stage == 0) /* the reader waits: cancel it, then overrun */
		keel_task_cancel(g_task[0]);
	if (stage == 1) {
		g_bc_send[0] = keel_broadcast_unsubscribe(g_rx[1]);
		for (uintptr_t i = 1; i <= 5; i++)
			keel_broadcast_send(g_bc, (void *)i);
		spawn_waiter(t->loop, 2, W_BROADCAST, g_rx[0]);
	}
	if (stage == 2)
		spawn_waiter(t->loop, 3, W_BROADCAST, g_rx[0]);
}

Test(sync, broadcast_cancelled_receiver_can_receive_again_and_lags,
     .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);

	reset();
	cr_assert_eq(keel_broadcast_new(loop, 2, NULL, NULL, &g_bc), 0);
	cr_assert_eq(keel_broadcast_subscribe(g_bc, &g_rx[0]), 0);
	cr_assert_eq(keel_broadcast_subscribe(g_bc, &g_rx[1]), 0);
	spawn_waiter(loop, 0, W_BROADCAST, g_rx[0]);
	run_script(loop, broadcast_lag_await_script, 3);
	cr_expect_eq(g_res[0], -ECANCELED);
	cr_expect_eq(g_bc_send[0], 0, "the waiter left: not busy");
	cr_expect_eq(g_res[2], -EOVERFLOW);
	cr_expect_eq(keel_broadcast_lagged(g_rx[0]), 3);
	cr_expect_eq(g_res[3], 0);
	cr_expect_eq((uintptr_t)g_val[3], 4);
	cr_expect_eq(keel_broadcast_unsubscribe(g_rx[0]), 0);
	keel_broadcast_free(g_bc);
	keel_loop_destroy(loop);
}

static void broadcast_close_script(struct keel_task *t, int stage)
{
	if (stage == 0) /* the reader waits: close the channel under it */
		keel_broadcast_close(g_bc);
	if (stage == 1) /* a second receive on the drained receiver */
		spawn_waiter(t->loop, 1, W_BROADCAST, g_rx[0]);
}

/* Found by fuzz/fuzz_sync.c: the receiver stayed "awaited on" for good. */
Test(sync, broadcast_receiver_woken_by_close_is_no_longer_busy, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);

	reset();
	cr_assert_eq(keel_broadcast_new(loop, 2, NULL, NULL, &g_bc), 0);
	cr_assert_eq(keel_broadcast_subscribe(g_bc, &g_rx[0]), 0);
	spawn_waiter(loop, 0, W_BROADCAST, g_rx[0]);
	run_script(loop, broadcast_close_script, 3);
	cr_expect_eq(g_res[0], -EPIPE);
	cr_expect_eq(g_res[1], -EPIPE, "not -EBUSY: %d", g_res[1]);
	cr_expect_eq(keel_broadcast_unsubscribe(g_rx[0]), 0);
	keel_broadcast_free(g_bc);
	keel_loop_destroy(loop);
}

/* ---- level-triggered cancellation -------------------------------------- */

static struct keel_oneshot *g_ready_os;
static struct keel_broadcast_rx *g_ready_rx;
static int g_cancelled_res[6];

/* Cancels itself, then awaits primitives that are all ready. */
struct cancelled_awaiter {
	struct keel_task task;
	void *out;
};

static int cancelled_awaiter_step(struct keel_task *t)
{
	struct cancelled_awaiter *c =
	    keel_container_of(t, struct cancelled_awaiter, task);

	KEEL_BEGIN(t);
	keel_task_cancel(t);
	KEEL_AWAIT(t, keel_event_wait(t, g_event));
	g_cancelled_res[0] = keel_res(t);
	KEEL_AWAIT(t, keel_latch_wait(t, g_latch));
	g_cancelled_res[1] = keel_res(t);
	KEEL_AWAIT(t, keel_semaphore_acquire(t, g_sem, 1));
	g_cancelled_res[2] = keel_res(t);
	KEEL_AWAIT(t, keel_broadcast_recv(t, g_ready_rx, &c->out));
	g_cancelled_res[3] = keel_res(t);
	KEEL_AWAIT(t, keel_oneshot_recv(t, g_ready_os, &c->out));
	g_cancelled_res[4] = keel_res(t);
	KEEL_END(t);
}

static KEEL_TASK_TYPE(cancelled_awaiter_task, struct cancelled_awaiter, task,
		      cancelled_awaiter_step);

Test(sync, await_on_a_cancelled_token_returns_the_cause_even_when_ready,
     .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	void *v;

	cr_assert_eq(keel_event_new(loop, &g_event), 0);
	cr_assert_eq(keel_latch_new(loop, 0, &g_latch), 0);
	cr_assert_eq(keel_semaphore_new(loop, 1, &g_sem), 0);
	cr_assert_eq(keel_broadcast_new(loop, 2, NULL, NULL, &g_bc), 0);
	cr_assert_eq(keel_broadcast_subscribe(g_bc, &g_ready_rx), 0);
	cr_assert_eq(keel_oneshot_new(loop, count_drop, NULL, &g_ready_os), 0);
	keel_event_set(g_event);
	keel_broadcast_send(g_bc, (void *)(uintptr_t)1);
	keel_oneshot_send(g_ready_os, (void *)(uintptr_t)3);
	kt_spawn(loop, &cancelled_awaiter_task, KEEL_PRIO_NORMAL);
	kt_loop_run(loop);
	for (int i = 0; i < 5; i++)
		cr_expect_eq(g_cancelled_res[i], -ECANCELED, "await %d: %d", i,
			     g_cancelled_res[i]);
	/* Nothing was taken. */
	cr_expect_eq(keel_semaphore_available(g_sem), 1);
	cr_expect_eq(keel_broadcast_try_recv(g_ready_rx, &v), 0);
	cr_expect_eq((uintptr_t)v, 1);
	cr_expect_eq(g_drops, 0);
	keel_oneshot_release(g_ready_os); /* the unreceived value: on_drop */
	cr_expect_eq(g_drops, 1);
	cr_expect_eq(g_dropped_sum, 3);
	keel_broadcast_unsubscribe(g_ready_rx);
	keel_broadcast_free(g_bc);
	keel_semaphore_free(g_sem);
	keel_latch_free(g_latch);
	keel_event_free(g_event);
	keel_loop_destroy(loop);
}

/* ---- one loop's primitive, another loop's task -------------------------- */

Test(sync, await_from_another_loop_fails_with_exdev, .timeout = 10)
{
	struct keel_loop *a = kt_loop_new(NULL);
	struct keel_loop *b = kt_loop_new(NULL);

	reset();
	cr_assert_eq(keel_semaphore_new(a, 1, &g_sem), 0);
	cr_assert_eq(keel_event_new(a, &g_event), 0);
	spawn_sem_user(b, g_sem, 0, 1, 1);
	spawn_waiter(b, 1, W_EVENT, g_event);
	kt_loop_run(b);
	cr_expect_eq(g_res[0], -EXDEV);
	cr_expect_eq(g_res[1], -EXDEV);
	cr_expect_eq(keel_semaphore_available(g_sem), 1);
	keel_semaphore_free(g_sem);
	keel_event_free(g_event);
	keel_loop_destroy(b);
	keel_loop_destroy(a);
}

/* ---- rwlock ------------------------------------------------------------- */

static struct keel_rwlock *g_rw;
static int g_readers_in, g_writers_in, g_max_readers, g_overlap;

struct rw_user {
	struct keel_task task;
	int id;
	int write;
	uint64_t deadline;
	int hold; /* yields while holding; -1: until g_release[id] */
};

static int g_release[MAX_TASKS];

static int rw_user_step(struct keel_task *t)
{
	struct rw_user *u = keel_container_of(t, struct rw_user, task);

	KEEL_BEGIN(t);
	if (u->write)
		KEEL_AWAIT(t, keel_rwlock_write_lock(t, g_rw, u->deadline));
	else
		KEEL_AWAIT(t, keel_rwlock_read_lock(t, g_rw, u->deadline));
	record(u->id, keel_res(t), NULL);
	if (keel_res(t) != 0)
		KEEL_EXIT(t, 0);
	if (u->write) {
		if (g_readers_in || g_writers_in)
			g_overlap++;
		g_writers_in++;
		cr_expect_eq(keel_rwlock_writer(g_rw), t);
	} else {
		if (g_writers_in)
			g_overlap++;
		if (++g_readers_in > g_max_readers)
			g_max_readers = g_readers_in;
	}
	while (u->hold > 0 || (u->hold < 0 && !g_release[u->id])) {
		if (u->hold > 0)
			u->hold--;
		KEEL_YIELD(t);
	}
	if (u->write) {
		g_writers_in--;
		g_unlock[u->id] = keel_rwlock_write_unlock(t, g_rw);
	} else {
		g_readers_in--;
		g_unlock[u->id] = keel_rwlock_read_unlock(g_rw);
	}
	KEEL_END(t);
}

static KEEL_TASK_TYPE(rw_user_task, struct rw_user, task, rw_user_step);

static void spawn_rw(struct keel_loop *loop, int id, int write, int hold,
		     uint64_t deadline)
{
	struct rw_user *u = kt_spawn(loop, &rw_user_task, KEEL_PRIO_NORMAL);

	u->id = id;
	u->write = write;
	u->hold = hold;
	u->deadline = deadline;
	g_task[id] = keel_task_of(&rw_user_task, u);
}

Test(sync, rwlock_readers_share_writers_exclude, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);

	reset();
	cr_assert_eq(keel_rwlock_new(loop, &g_rw), 0);
	spawn_rw(loop, 0, 0, 3, UINT64_MAX);
	spawn_rw(loop, 1, 0, 3, UINT64_MAX);
	spawn_rw(loop, 2, 0, 3, UINT64_MAX);
	spawn_rw(loop, 3, 1, 2, UINT64_MAX);
	spawn_rw(loop, 4, 1, 2, UINT64_MAX);
	kt_loop_run(loop);
	for (int i = 0; i < 5; i++) {
		cr_expect_eq(g_res[i], 0, "user %d: %d", i, g_res[i]);
		cr_expect_eq(g_unlock[i], 0, "user %d unlock", i);
	}
	cr_expect_eq(g_max_readers, 3);
	cr_expect_eq(g_overlap, 0);
	cr_expect_null(keel_rwlock_writer(g_rw));
	cr_expect_eq(keel_rwlock_readers(g_rw), 0);
	keel_rwlock_free(g_rw);
	keel_loop_destroy(loop);
}

static int g_try_rw[4];

static void rw_pref_script(struct keel_task *t, int stage)
{
	switch (stage) {
	case 0: /* reader 0 holds, writer 1 waits: reader 2 must queue */
		g_try_rw[0] = keel_rwlock_try_read_lock(g_rw);
		g_try_rw[1] = keel_rwlock_try_write_lock(t, g_rw);
		spawn_rw(t->loop, 2, 0, 0, UINT64_MAX);
		break;
	case 2:
		cr_expect_eq(g_done[2], 0, "a reader barged past a writer");
		cr_expect_eq(g_done[1], 0);
		cr_expect_eq(keel_rwlock_readers(g_rw), 1);
		g_release[0] = 1;
		break;
	}
}

Test(sync, rwlock_waiting_writer_blocks_new_readers, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);

	reset();
	cr_assert_eq(keel_rwlock_new(loop, &g_rw), 0);
	spawn_rw(loop, 0, 0, -1, UINT64_MAX);
	spawn_rw(loop, 1, 1, 1, UINT64_MAX);
	run_script(loop, rw_pref_script, 3);
	cr_expect_eq(g_try_rw[0], -EBUSY);
	cr_expect_eq(g_try_rw[1], -EBUSY);
	for (int i = 0; i < 3; i++)
		cr_expect_eq(g_res[i], 0);
	/* The writer before the reader that came after it. */
	const int want[] = {0, 1, 2};

	kt_log_expect(&g_log, want, 3);
	cr_expect_eq(g_overlap, 0);
	keel_rwlock_free(g_rw);
	keel_loop_destroy(loop);
}

static void rw_cancel_script(struct keel_task *t, int stage)
{
	(void)t;
	switch (stage) {
	case 0: /* 0 reads; 1 (writer) waits; 2, 3 (readers) queue behind */
		cr_expect_eq(g_done[2], 0);
		keel_task_cancel(g_task[1]);
		break;
	case 1: /* the writer left: both readers are in, with 0 */
		cr_expect_eq(keel_rwlock_readers(g_rw), 3);
		g_release[0] = g_release[2] = g_release[3] = 1;
		break;
	}
}

Test(sync, rwlock_cancelled_writer_leaves_and_lets_readers_in, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);

	reset();
	cr_assert_eq(keel_rwlock_new(loop, &g_rw), 0);
	spawn_rw(loop, 0, 0, -1, UINT64_MAX);
	spawn_rw(loop, 1, 1, 0, UINT64_MAX);
	spawn_rw(loop, 2, 0, -1, UINT64_MAX);
	spawn_rw(loop, 3, 0, -1, UINT64_MAX);
	run_script(loop, rw_cancel_script, 2);
	cr_expect_eq(g_res[1], -ECANCELED);
	cr_expect_eq(g_res[0], 0);
	cr_expect_eq(g_res[2], 0);
	cr_expect_eq(g_res[3], 0);
	cr_expect_null(keel_rwlock_writer(g_rw));
	cr_expect_eq(keel_rwlock_readers(g_rw), 0);
	keel_rwlock_free(g_rw);
	keel_loop_destroy(loop);
}

static void rw_timeout_script(struct keel_task *t, int stage)
{
	(void)t;
	if (stage == 1) { /* the writer timed out and left */
		cr_expect_eq(g_res[1], -ETIMEDOUT);
		cr_expect_eq(keel_rwlock_try_read_lock(g_rw), 0);
		cr_expect_eq(keel_rwlock_read_unlock(g_rw), 0);
		g_release[0] = 1;
	}
}

Test(sync, rwlock_write_lock_times_out_and_leaves_no_trace, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);

	reset();
	cr_assert_eq(keel_rwlock_new(loop, &g_rw), 0);
	spawn_rw(loop, 0, 0, -1, UINT64_MAX);
	spawn_rw(loop, 1, 1, 0, kt_now_ns() + KT_MS(20));
	g_stage_sleep = KT_MS(60);
	run_script(loop, rw_timeout_script, 2);
	g_stage_sleep = 0;
	cr_expect_eq(g_res[0], 0);
	cr_expect_eq(g_res[1], -ETIMEDOUT);
	cr_expect_eq(kt_stats(loop).timers_armed, 0);
	cr_expect_eq(keel_rwlock_readers(g_rw), 0);
	keel_rwlock_free(g_rw);
	keel_loop_destroy(loop);
}

static int g_rw_misuse[6];

static int rw_misuser_step(struct keel_task *t)
{
	KEEL_BEGIN(t);
	KEEL_AWAIT(t, keel_rwlock_write_lock(t, g_rw, UINT64_MAX));
	g_rw_misuse[0] = keel_res(t);
	KEEL_AWAIT(t, keel_rwlock_write_lock(t, g_rw, UINT64_MAX));
	g_rw_misuse[1] = keel_res(t); /* -EDEADLK */
	KEEL_AWAIT(t, keel_rwlock_read_lock(t, g_rw, UINT64_MAX));
	g_rw_misuse[2] = keel_res(t); /* -EDEADLK */
	g_rw_misuse[3] = keel_rwlock_write_unlock(&g_other, g_rw);
	g_rw_misuse[4] = keel_rwlock_read_unlock(g_rw); /* no read hold */
	g_rw_misuse[5] = keel_rwlock_write_unlock(t, g_rw);
	KEEL_END(t);
}

static KEEL_TASK_TYPE(rw_misuser_task, struct misuser, task, rw_misuser_step);

Test(sync, rwlock_reports_relock_and_foreign_unlock, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);

	cr_assert_eq(keel_rwlock_new(loop, &g_rw), 0);
	kt_spawn(loop, &rw_misuser_task, KEEL_PRIO_NORMAL);
	kt_loop_run(loop);
	cr_expect_eq(g_rw_misuse[0], 0);
	cr_expect_eq(g_rw_misuse[1], -EDEADLK);
	cr_expect_eq(g_rw_misuse[2], -EDEADLK);
	cr_expect_eq(g_rw_misuse[3], -EPERM);
	cr_expect_eq(g_rw_misuse[4], -EPERM);
	cr_expect_eq(g_rw_misuse[5], 0);
	keel_rwlock_free(g_rw);
	keel_loop_destroy(loop);
}

/* ---- condition variable ------------------------------------------------- */

static struct keel_cond *g_cv;
static int g_ready; /* the predicate, under g_mutex */
static struct keel_task *g_holder_after[MAX_TASKS];

struct cv_user {
	struct keel_task task;
	int id;
	uint64_t deadline;
};

/* Lock, wait until g_ready (or an error), record, unlock. */
static int cv_waiter_step(struct keel_task *t)
{
	struct cv_user *u = keel_container_of(t, struct cv_user, task);

	KEEL_BEGIN(t);
	KEEL_AWAIT(t, keel_mutex_lock(t, g_mutex, UINT64_MAX));
	cr_assert_eq(keel_res(t), 0);
	if (++g_inside > g_max_inside)
		g_max_inside = g_inside;
	while (!g_ready) {
		g_inside--;
		KEEL_AWAIT(t, keel_cond_wait(t, g_cv, g_mutex, u->deadline));
		if (++g_inside > g_max_inside)
			g_max_inside = g_inside;
		g_holder_after[u->id] = keel_mutex_holder(g_mutex);
		if (keel_res(t) != 0)
			break;
	}
	record(u->id, keel_res(t), NULL);
	KEEL_YIELD(t); /* hold it a while: the others queue for it */
	g_inside--;
	g_unlock[u->id] = keel_mutex_unlock(t, g_mutex);
	KEEL_END(t);
}

static KEEL_TASK_TYPE(cv_waiter_task, struct cv_user, task, cv_waiter_step);

static void spawn_cv_waiter(struct keel_loop *loop, int id, uint64_t deadline)
{
	struct cv_user *u = kt_spawn(loop, &cv_waiter_task, KEEL_PRIO_NORMAL);

	u->id = id;
	u->deadline = deadline;
	g_task[id] = keel_task_of(&cv_waiter_task, u);
}

/* Takes the mutex (queued behind a waiter that holds it), sets the
 * predicate, signals once or broadcasts, unlocks. */
struct cv_setter {
	struct keel_task task;
	int broadcast;
	int woken;
};

static int g_woken;

static int cv_setter_step(struct keel_task *t)
{
	struct cv_setter *s = keel_container_of(t, struct cv_setter, task);

	KEEL_BEGIN(t);
	KEEL_AWAIT(t, keel_mutex_lock(t, g_mutex, UINT64_MAX));
	cr_assert_eq(keel_res(t), 0);
	g_ready = 1;
	g_woken =
	    s->broadcast ? keel_cond_broadcast(g_cv) : keel_cond_signal(g_cv);
	keel_mutex_unlock(t, g_mutex);
	KEEL_END(t);
}

static KEEL_TASK_TYPE(cv_setter_task, struct cv_setter, task, cv_setter_step);

Test(sync, cond_wait_hands_the_mutex_over_and_misses_no_signal, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);

	reset();
	cr_assert_eq(keel_mutex_new(loop, &g_mutex), 0);
	cr_assert_eq(keel_cond_new(loop, &g_cv), 0);
	/* The waiter holds the mutex when the setter asks for it: only the
	 * wait's release lets the setter in, and its signal must land. */
	spawn_cv_waiter(loop, 0, UINT64_MAX);
	struct cv_setter *s = kt_spawn(loop, &cv_setter_task, KEEL_PRIO_NORMAL);

	s->broadcast = 0;
	kt_loop_run(loop);
	cr_expect_eq(g_woken, 1);
	cr_expect_eq(g_res[0], 0);
	cr_expect_eq(g_holder_after[0], g_task[0]);
	cr_expect_eq(g_unlock[0], 0);
	cr_expect_null(keel_mutex_holder(g_mutex));
	keel_cond_free(g_cv);
	keel_mutex_free(g_mutex);
	keel_loop_destroy(loop);
}

Test(sync, cond_broadcast_wakes_all_and_each_takes_the_mutex_in_turn,
     .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);

	reset();
	cr_assert_eq(keel_mutex_new(loop, &g_mutex), 0);
	cr_assert_eq(keel_cond_new(loop, &g_cv), 0);
	for (int i = 0; i < 4; i++)
		spawn_cv_waiter(loop, i, UINT64_MAX);
	struct cv_setter *s = kt_spawn(loop, &cv_setter_task, KEEL_PRIO_NORMAL);

	s->broadcast = 1;
	kt_loop_run(loop);
	cr_expect_eq(g_woken, 4);
	for (int i = 0; i < 4; i++) {
		cr_expect_eq(g_res[i], 0, "waiter %d: %d", i, g_res[i]);
		cr_expect_eq(g_holder_after[i], g_task[i]);
		cr_expect_eq(g_unlock[i], 0);
	}
	cr_expect_eq(g_max_inside, 1);
	const int want[] = {0, 1, 2, 3};

	kt_log_expect(&g_log, want, 4);
	keel_cond_free(g_cv);
	keel_mutex_free(g_mutex);
	keel_loop_destroy(loop);
}

/* Holds the mutex across the waiter's deadline, then lets go. */
static void cv_timeout_script(struct keel_task *t, int stage)
{
	switch (stage) {
	case 0:
		cr_assert_eq(keel_mutex_try_lock(t, g_mutex), 0);
		break;
	case 1: /* the deadline passed: the waiter waits for the mutex */
		cr_expect_eq(g_done[0], 0, "returned without the mutex");
		cr_expect_eq(keel_mutex_unlock(t, g_mutex), 0);
		break;
	}
}

Test(sync, cond_wait_timeout_returns_holding_the_mutex, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);

	reset();
	cr_assert_eq(keel_mutex_new(loop, &g_mutex), 0);
	cr_assert_eq(keel_cond_new(loop, &g_cv), 0);
	spawn_cv_waiter(loop, 0, kt_now_ns() + KT_MS(10));
	g_stage_sleep = KT_MS(40);
	run_script(loop, cv_timeout_script, 2);
	g_stage_sleep = 0;
	cr_expect_eq(g_res[0], -ETIMEDOUT);
	cr_expect_eq(g_holder_after[0], g_task[0]);
	cr_expect_eq(g_unlock[0], 0);
	cr_expect_eq(kt_stats(loop).timers_armed, 0);
	keel_cond_free(g_cv);
	keel_mutex_free(g_mutex);
	keel_loop_destroy(loop);
}

static void cv_cancel_script(struct keel_task *t, int stage)
{
	(void)t;
	if (stage == 0) /* 0 and 1 wait: cancel 0, signal: 1 gets it */
		keel_task_cancel(g_task[0]);
	if (stage == 1) {
		g_ready = 1;
		cr_expect_eq(keel_cond_signal(g_cv), 1);
	}
}

Test(sync, cond_cancelled_waiter_returns_holding_the_mutex, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);

	reset();
	cr_assert_eq(keel_mutex_new(loop, &g_mutex), 0);
	cr_assert_eq(keel_cond_new(loop, &g_cv), 0);
	spawn_cv_waiter(loop, 0, UINT64_MAX);
	spawn_cv_waiter(loop, 1, UINT64_MAX);
	run_script(loop, cv_cancel_script, 2);
	cr_expect_eq(g_res[0], -ECANCELED);
	cr_expect_eq(g_holder_after[0], g_task[0]);
	cr_expect_eq(g_unlock[0], 0);
	cr_expect_eq(g_res[1], 0);
	cr_expect_eq(g_holder_after[1], g_task[1]);
	cr_expect_eq(g_max_inside, 1);
	keel_cond_free(g_cv);
	keel_mutex_free(g_mutex);
	keel_loop_destroy(loop);
}

static int g_cv_misuse[3];

static int cv_misuser_step(struct keel_task *t)
{
	KEEL_BEGIN(t);
	KEEL_AWAIT(t, keel_cond_wait(t, g_cv, g_mutex, UINT64_MAX));
	g_cv_misuse[0] = keel_res(t); /* -EPERM: not held */
	KEEL_AWAIT(t, keel_mutex_lock(t, g_mutex, UINT64_MAX));
	KEEL_AWAIT(t, keel_cond_wait(t, g_cv, g_mutex, kt_now_ns()));
	g_cv_misuse[1] = keel_res(t); /* -ETIMEDOUT at once, still held */
	g_cv_misuse[2] = keel_mutex_unlock(t, g_mutex);
	KEEL_END(t);
}

static KEEL_TASK_TYPE(cv_misuser_task, struct misuser, task, cv_misuser_step);

Test(sync, cond_wait_refuses_a_mutex_not_held, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);

	cr_assert_eq(keel_mutex_new(loop, &g_mutex), 0);
	cr_assert_eq(keel_cond_new(loop, &g_cv), 0);
	kt_spawn(loop, &cv_misuser_task, KEEL_PRIO_NORMAL);
	kt_loop_run(loop);
	cr_expect_eq(g_cv_misuse[0], -EPERM);
	cr_expect_eq(g_cv_misuse[1], -ETIMEDOUT);
	cr_expect_eq(g_cv_misuse[2], 0);
	keel_cond_free(g_cv);
	keel_mutex_free(g_mutex);
	keel_loop_destroy(loop);
}
