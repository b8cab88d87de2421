/* SPDX-License-Identifier: MIT */
/*
 * test_sched.c: the scheduler. Priority classes within a turn, the per-turn
 * budget (a spinning task cannot starve a low-priority task, a sleeper, or
 * anyone when its awaits are ready at once), and the embedding API: a host
 * drives the loop from its own epoll set with keel_loop_step(),
 * keel_loop_fd() and keel_loop_timeout_ns().
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <keel.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "helpers/keel_test.h"

static struct kt_log g_log;

/* Priorities: each task logs its class and the turn it ran in, then exits. */
struct prio {
	struct keel_task task;
	int prio;
};

static int prio_step(struct keel_task *t);
static KEEL_TASK_TYPE(prio_task, struct prio, task, prio_step);

static uint64_t g_turn_seen[64];

static int prio_step(struct keel_task *t)
{
	struct prio *p = keel_container_of(t, struct prio, task);
	struct keel_loop_stats s;

	KEEL_BEGIN(t);
	keel_loop_stats(keel_task_loop(t), &s);
	if (g_log.n < 64)
		g_turn_seen[g_log.n] = s.turns;
	kt_log_push(&g_log, p->prio);
	KEEL_AWAIT(t, keel_nop(t));
	KEEL_END(t);
}

Test(sched, first_turn_runs_critical_then_high_then_normal_then_low,
     .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	const int order[] = {KEEL_PRIO_LOW, KEEL_PRIO_NORMAL, KEEL_PRIO_HIGH,
			     KEEL_PRIO_CRITICAL};
	int want[12];

	/* Spawned lowest first, so spawn order alone cannot pass this. */
	for (int round = 0; round < 3; round++) {
		for (int i = 0; i < 4; i++) {
			struct prio *p = kt_spawn(loop, &prio_task, order[i]);

			p->prio = order[i];
		}
	}
	for (int i = 0; i < 12; i++)
		want[i] = KEEL_PRIO_CRITICAL - i / 3;
	kt_loop_run(loop);
	kt_log_expect(&g_log, want, 12);
	for (int i = 1; i < 12; i++)
		cr_assert_eq(g_turn_seen[i], g_turn_seen[0],
			     "task %d ran in turn %lu, the first in %lu", i,
			     (unsigned long)g_turn_seen[i],
			     (unsigned long)g_turn_seen[0]);
	keel_loop_destroy(loop);
}

/*
 * Budget: spinners yield forever until g_stop; the tasks that must not
 * starve raise g_done, and the last one sets g_stop. A spinner gives up
 * after two seconds, so that starvation fails the test instead of hanging
 * it.
 */
static int g_stop;
static int g_done;
static int g_need;
static int g_gave_up;
static uint64_t g_spins;
static uint64_t g_spins_when_done[4];
static uint64_t g_slept_ns;

#define SPIN_LIMIT_NS KT_MS(2000)

struct spinner {
	struct keel_task task;
	uint64_t deadline;
	int mode; /* 0: KEEL_YIELD; 1: keel_join(self), ready at once */
};

static int spinner_step(struct keel_task *t);
static KEEL_TASK_TYPE(spinner_task, struct spinner, task, spinner_step);

static int spinner_step(struct keel_task *t)
{
	struct spinner *s = keel_container_of(t, struct spinner, task);

	KEEL_BEGIN(t);
	s->deadline = kt_now_ns() + SPIN_LIMIT_NS;
	while (!g_stop) {
		g_spins++;
		if (kt_now_ns() > s->deadline) {
			g_gave_up = 1;
			break;
		}
		if (s->mode == 0)
			KEEL_YIELD(t);
		else
			KEEL_AWAIT(t, keel_join(t, t));
	}
	KEEL_END(t);
}

static void finish_one(void)
{
	if (g_done < 4)
		g_spins_when_done[g_done] = g_spins;
	if (++g_done == g_need)
		g_stop = 1;
}

/* Yields `n` times (or awaits a nop, then yields), then finishes. */
struct worker {
	struct keel_task task;
	int n;
	int i;
	uint64_t t0;
	int sleep;
};

static int worker_step(struct keel_task *t);
static KEEL_TASK_TYPE(worker_task, struct worker, task, worker_step);

static int worker_step(struct keel_task *t)
{
	struct worker *w = keel_container_of(t, struct worker, task);

	KEEL_BEGIN(t);
	if (w->sleep) {
		w->t0 = kt_now_ns();
		KEEL_AWAIT(t, keel_sleep(t, KT_MS(1)));
		g_slept_ns = kt_now_ns() - w->t0;
		kt_log_push(&g_log, keel_res(t));
	} else {
		KEEL_AWAIT(t, keel_nop(t));
		for (w->i = 0; w->i < w->n; w->i++)
			KEEL_YIELD(t);
	}
	finish_one();
	KEEL_END(t);
}

static void spawn_spinners(struct keel_loop *loop, int n, unsigned prio,
			   int mode)
{
	for (int i = 0; i < n; i++) {
		struct spinner *s = kt_spawn(loop, &spinner_task, prio);

		s->mode = mode;
	}
}

static void spawn_worker(struct keel_loop *loop, unsigned prio, int n,
			 int sleep)
{
	struct worker *w = kt_spawn(loop, &worker_task, prio);

	w->n = n;
	w->sleep = sleep;
}

static void assert_nobody_starved(void)
{
	cr_assert_eq(g_gave_up, 0, "a spinner ran 2 s: others were starved");
	cr_assert_eq(g_done, g_need);
	/* The spinner was spinning while the others got their turns. */
	cr_assert_gt(g_spins_when_done[0], 0);
}

Test(sched, yield_spinner_starves_neither_low_task_nor_sleeper, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);

	g_need = 2;
	spawn_spinners(loop, 1, KEEL_PRIO_CRITICAL, 0);
	spawn_worker(loop, KEEL_PRIO_LOW, 20, 0);
	spawn_worker(loop, KEEL_PRIO_NORMAL, 0, 1);
	kt_loop_run(loop);
	assert_nobody_starved();
	cr_assert_eq(g_log.n, 1);
	cr_assert_eq(g_log.v[0], 0, "keel_sleep gave %d", g_log.v[0]);
	cr_assert_geq(g_slept_ns, KT_MS(1), "slept %lu ns of 1 ms asked",
		      (unsigned long)g_slept_ns);
	keel_loop_destroy(loop);
}

Test(sched, critical_spinners_beyond_budget_do_not_starve_low_task,
     .timeout = 10)
{
	struct keel_loop_opts opts = {.budget = 32};
	struct keel_loop *loop = kt_loop_new(&opts);

	/* More always-ready critical tasks than a turn's budget. */
	g_need = 2;
	spawn_spinners(loop, 100, KEEL_PRIO_CRITICAL, 0);
	spawn_worker(loop, KEEL_PRIO_LOW, 5, 0);
	spawn_worker(loop, KEEL_PRIO_LOW, 0, 1);
	kt_loop_run(loop);
	assert_nobody_starved();
	keel_loop_destroy(loop);
}

Test(sched, spinner_on_ready_at_once_awaits_does_not_starve_others,
     .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);

	/* keel_join(self) is an await that is ready at once (-EDEADLK). */
	g_need = 2;
	spawn_spinners(loop, 1, KEEL_PRIO_NORMAL, 1);
	spawn_worker(loop, KEEL_PRIO_NORMAL, 3, 0);
	spawn_worker(loop, KEEL_PRIO_LOW, 0, 1);
	kt_loop_run(loop);
	assert_nobody_starved();
	keel_loop_destroy(loop);
}

/*
 * Joining many children that have already exited: each join is ready at
 * once, yet an observer task must get turns in the middle of the joins.
 */
#define JOIN_KIDS 1000

static int g_kids_exited;
static int g_join_index = -1;
static int g_saw_mid_join;
static long g_join_sum;

struct kid {
	struct keel_task task;
	int status;
};

static int kid_step(struct keel_task *t);
static KEEL_TASK_TYPE(kid_task, struct kid, task, kid_step);

static int kid_step(struct keel_task *t)
{
	struct kid *k = keel_container_of(t, struct kid, task);

	KEEL_BEGIN(t);
	KEEL_AWAIT(t, keel_nop(t));
	g_kids_exited++;
	KEEL_EXIT(t, k->status);
}

struct observer {
	struct keel_task task;
	int i;
};

static int observer_step(struct keel_task *t);
static KEEL_TASK_TYPE(observer_task, struct observer, task, observer_step);

static int observer_step(struct keel_task *t)
{
	struct observer *o = keel_container_of(t, struct observer, task);

	KEEL_BEGIN(t);
	for (o->i = 0; o->i < 100000 && g_join_index < JOIN_KIDS; o->i++) {
		if (g_join_index > 0 && g_join_index < JOIN_KIDS - 1)
			g_saw_mid_join = 1;
		KEEL_YIELD(t);
	}
	KEEL_END(t);
}

struct reaper {
	struct keel_task task;
	int i;
	struct kid *kids[JOIN_KIDS];
};

static int reaper_step(struct keel_task *t);
static KEEL_TASK_TYPE(reaper_task, struct reaper, task, reaper_step);

static int reaper_step(struct keel_task *t)
{
	struct reaper *r = keel_container_of(t, struct reaper, task);

	KEEL_BEGIN(t);
	for (r->i = 0; r->i < JOIN_KIDS; r->i++) {
		r->kids[r->i] =
		    keel_spawn(keel_task_loop(t), &kid_task,
			       KEEL_PRIO_NORMAL | KEEL_SPAWN_JOINABLE);
		if (!r->kids[r->i])
			KEEL_EXIT(t, -ENOMEM);
		r->kids[r->i]->status = r->i;
	}
	for (r->i = 0; g_kids_exited < JOIN_KIDS && r->i < 100000; r->i++)
		KEEL_YIELD(t);
	if (!keel_spawn(keel_task_loop(t), &observer_task, KEEL_PRIO_NORMAL))
		KEEL_EXIT(t, -ENOMEM);
	for (r->i = 0; r->i < JOIN_KIDS; r->i++) {
		g_join_index = r->i;
		KEEL_AWAIT(
		    t, keel_join(t, keel_task_of(&kid_task, r->kids[r->i])));
		g_join_sum += keel_res(t);
	}
	g_join_index = JOIN_KIDS;
	KEEL_END(t);
}

Test(sched, joins_ready_at_once_do_not_starve_other_tasks, .timeout = 10)
{
	struct keel_loop_opts opts = {.budget = 32};
	struct keel_loop *loop = kt_loop_new(&opts);

	kt_spawn(loop, &reaper_task, KEEL_PRIO_NORMAL);
	kt_loop_run(loop);
	cr_assert_eq(g_kids_exited, JOIN_KIDS);
	cr_assert_eq(g_join_index, JOIN_KIDS);
	cr_assert_eq(g_join_sum, (long)JOIN_KIDS * (JOIN_KIDS - 1) / 2);
	cr_assert(g_saw_mid_join,
		  "the observer never ran while the joins were going on");
	keel_loop_destroy(loop);
}

/* Embedding: a host's epoll loop drives keel. */
static int g_embed_done;
static char g_embed_rx[32];
static int g_embed_rx_len;

struct embed {
	struct keel_task task;
	int role; /* 0: sleeper, 1: receiver, 2: sender, 3: receiver */
	int fd;
	uint64_t t0;
	char buf[32];
};

static int embed_step(struct keel_task *t);
static KEEL_TASK_TYPE(embed_task, struct embed, task, embed_step);

static int embed_step(struct keel_task *t)
{
	struct embed *e = keel_container_of(t, struct embed, task);

	KEEL_BEGIN(t);
	switch (e->role) {
	case 0:
		e->t0 = kt_now_ns();
		KEEL_AWAIT(t, keel_sleep(t, KT_MS(5)));
		if (keel_res(t) == 0 && kt_now_ns() - e->t0 >= KT_MS(5))
			g_embed_done |= 1;
		break;
	case 3:
		/* Written by a thread outside the loop: only the ring fd
		 * can tell the host that this completed. */
		KEEL_AWAIT(t, keel_recv(t, e->fd, e->buf, sizeof(e->buf), 0));
		if (keel_res(t) == 8 && memcmp(e->buf, "external", 8) == 0)
			g_embed_done |= 8;
		break;
	case 1:
		KEEL_AWAIT(t, keel_recv(t, e->fd, e->buf, sizeof(e->buf), 0));
		g_embed_rx_len = keel_res(t);
		if (g_embed_rx_len > 0) {
			memcpy(g_embed_rx, e->buf, (size_t)g_embed_rx_len);
			g_embed_done |= 2;
		}
		break;
	case 2:
		KEEL_AWAIT(t, keel_sleep(t, KT_MS(2)));
		memcpy(e->buf, "embedded", 8);
		KEEL_AWAIT(t, keel_send(t, e->fd, e->buf, 8, 0));
		if (keel_res(t) == 8)
			g_embed_done |= 4;
		break;
	}
	KEEL_END(t);
}

static int ns_to_ms_up(int64_t ns)
{
	if (ns < 0)
		return -1;
	if (ns > (int64_t)KT_MS(60000))
		return 60000;
	return (int)((ns + 999999) / 1000000);
}

static void *write_later(void *arg)
{
	int fd = *(int *)arg;
	struct timespec ts = {.tv_nsec = 30 * 1000 * 1000};

	nanosleep(&ts, NULL);
	if (write(fd, "external", 8) != 8)
		return arg;
	return NULL;
}

/*
 * The host's loop: step, then sleep in epoll_wait() as long as
 * keel_loop_timeout_ns() allows, until the loop is idle.
 */
static void host_loop(const struct keel_loop_opts *opts)
{
	struct keel_loop *loop = kt_loop_new(opts);
	struct epoll_event ev = {.events = EPOLLIN};
	uint64_t deadline = kt_now_ns() + KT_MS(5000);
	int sv[2], ext[2], ep, rc, waits = 0, ring_wakes = 0;
	pthread_t writer;
	void *writer_res;

	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, ext),
		     0);
	ep = epoll_create1(EPOLL_CLOEXEC);
	cr_assert_geq(ep, 0);
	ev.data.fd = keel_loop_fd(loop);
	cr_assert_geq(ev.data.fd, 0);
	cr_assert_eq(epoll_ctl(ep, EPOLL_CTL_ADD, ev.data.fd, &ev), 0);
	for (int role = 0; role < 4; role++) {
		struct embed *e = kt_spawn(loop, &embed_task, KEEL_PRIO_NORMAL);

		e->role = role;
		e->fd = role == 1 ? sv[0] : role == 3 ? ext[0] : sv[1];
	}
	cr_assert_eq(pthread_create(&writer, NULL, write_later, &ext[1]), 0);
	for (;;) {
		struct epoll_event out;
		int ms, n;

		rc = keel_loop_step(loop, 0);
		cr_assert_geq(rc, 0, "keel_loop_step: %s", strerror(-rc));
		if (rc == 0)
			break;
		cr_assert(kt_now_ns() < deadline, "the host loop ran 5 s");
		ms = ns_to_ms_up(keel_loop_timeout_ns(loop));
		/* -1: only the ring fd can wake us; cap it to detect a miss. */
		n = epoll_wait(ep, &out, 1, ms < 0 ? 2000 : ms);
		/* Without DEFER_TASKRUN, a completion's task work interrupts
		 * the wait instead: the host is woken all the same. */
		if (n < 0 && errno == EINTR)
			n = 1;
		cr_assert_geq(n, 0, "epoll_wait: %s", strerror(errno));
		cr_assert(n > 0 || ms >= 0,
			  "the loop's fd did not become readable in 2 s while "
			  "a recv completed (done %#x)",
			  g_embed_done);
		if (n > 0 && ms < 0)
			ring_wakes++;
		waits++;
	}
	cr_assert_eq(pthread_join(writer, &writer_res), 0);
	cr_assert_null(writer_res);
	cr_assert_eq(g_embed_done, 15, "done %#x", g_embed_done);
	cr_assert_eq(g_embed_rx_len, 8);
	cr_assert_eq(memcmp(g_embed_rx, "embedded", 8), 0);
	cr_assert_gt(waits, 0);
	/* The thread's write woke the host through the loop's fd alone. */
	cr_assert_gt(ring_wakes, 0);
	/* Idle now, and it stays idle. */
	cr_assert_eq(keel_loop_step(loop, 0), 0);
	cr_assert_eq(kt_stats(loop).tasks_live, 0);
	close(ep);
	close(sv[0]);
	close(sv[1]);
	close(ext[0]);
	close(ext[1]);
	keel_loop_destroy(loop);
}

/*
 * The run queue stays FIFO when a kill takes out its tail or its head and
 * when running empties it (its tail is then stale: a spawn or wake after
 * it must not link to the task that was last). Each task logs its number.
 */
struct numbered {
	struct keel_task task;
	int n;
};

static int numbered_step(struct keel_task *t)
{
	KEEL_BEGIN(t);
	kt_log_push(&g_log, keel_container_of(t, struct numbered, task)->n);
	KEEL_END(t);
}
static KEEL_TASK_TYPE(numbered_task, struct numbered, task, numbered_step);

static struct numbered *spawn_numbered(struct keel_loop *loop, int n)
{
	struct numbered *f = kt_spawn(loop, &numbered_task, KEEL_PRIO_NORMAL);

	f->n = n;
	return f;
}

struct killer {
	struct keel_task task;
};

static int killer_step(struct keel_task *t)
{
	struct keel_loop *loop = keel_task_loop(t);
	struct numbered *f[3];

	KEEL_BEGIN(t);
	for (int i = 0; i < 3; i++)
		f[i] = spawn_numbered(loop, i + 1);
	cr_assert_eq(keel_task_kill(&f[2]->task), 0); /* the tail */
	spawn_numbered(loop, 4);
	cr_assert_eq(keel_task_kill(&f[0]->task), 0); /* the head */
	spawn_numbered(loop, 5);
	KEEL_END(t);
}
static KEEL_TASK_TYPE(killer_task, struct killer, task, killer_step);

Test(sched, run_queue_stays_fifo_after_kills_and_once_emptied, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	const int want[] = {2, 4, 5, 6, 7, 8};

	kt_spawn(loop, &killer_task, KEEL_PRIO_NORMAL);
	kt_loop_run(loop);
	for (int n = 6; n <= 8; n++)
		spawn_numbered(loop, n);
	kt_loop_run(loop);
	kt_log_expect(&g_log, want, 6);
	keel_loop_destroy(loop);
}

Test(sched, epoll_host_drives_loop_with_step_fd_and_timeout, .timeout = 10)
{
	host_loop(NULL);
}

Test(sched, epoll_host_drives_loop_without_defer_taskrun, .timeout = 10)
{
	struct keel_loop_opts opts = {.flags = KEEL_LOOP_NO_DEFER};

	host_loop(&opts);
}

Test(sched, step_on_idle_loop_returns_zero, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);

	cr_assert_eq(keel_loop_step(loop, 0), 0);
	/* With nothing pending, even a waiting step must not block. */
	cr_assert_eq(keel_loop_step(loop, -1), 0);
	keel_loop_destroy(loop);
}

static void count_fire(struct keel_loop *loop, struct keel_timer *timer,
		       void *arg)
{
	(*(int *)arg)++;
}

Test(sched, timeout_ns_is_zero_with_ready_task_else_nearest_timer,
     .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_timer timer;
	int fired = 0;
	int64_t ns;

	keel_timer_init(&timer, count_fire, &fired);
	cr_assert_eq(keel_timer_arm_after(loop, &timer, KT_MS(1000)), 0);
	ns = keel_loop_timeout_ns(loop);
	cr_assert(ns > 0 && ns <= (int64_t)KT_MS(1000), "timeout %ld",
		  (long)ns);
	kt_spawn(loop, &prio_task, KEEL_PRIO_NORMAL);
	cr_assert_eq(keel_loop_timeout_ns(loop), 0);
	cr_assert(keel_timer_cancel(loop, &timer));
	kt_loop_run(loop);
	cr_assert_eq(fired, 0);
	keel_loop_destroy(loop);
}

Test(sched, timeout_ns_is_minus_one_when_only_io_can_wake, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct embed *e = kt_spawn(loop, &embed_task, KEEL_PRIO_NORMAL);
	int sv[2];

	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	e->role = 1;
	e->fd = sv[0];
	/* After one turn the receiver waits on the socket and nothing else. */
	cr_assert_eq(keel_loop_step(loop, 0), 1);
	cr_assert_eq(keel_loop_timeout_ns(loop), -1);
	cr_assert_eq(write(sv[1], "x", 1), 1);
	kt_loop_run(loop);
	cr_assert_eq(g_embed_rx_len, 1);
	close(sv[0]);
	close(sv[1]);
	keel_loop_destroy(loop);
}

Test(sched, step_with_negative_timeout_waits_for_nearest_timer, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_timer timer;
	int fired = 0, steps = 0;
	uint64_t t0 = kt_now_ns();

	keel_timer_init(&timer, count_fire, &fired);
	cr_assert_eq(keel_timer_arm_after(loop, &timer, KT_MS(5)), 0);
	while (!fired && steps < 3) {
		cr_assert_geq(keel_loop_step(loop, -1), 0);
		steps++;
	}
	cr_assert_eq(fired, 1, "timer not fired after %d steps", steps);
	cr_assert_geq(kt_now_ns() - t0, KT_MS(5));
	cr_assert_eq(keel_loop_step(loop, 0), 0);
	keel_loop_destroy(loop);
}

/*
 * A host that follows keel/loop.h to the letter: step, then sleep in
 * epoll_wait() on keel_loop_fd() as long as keel_loop_timeout_ns() says
 * (-1 here: nothing but the fd can wake the loop). A pool thread finishes
 * the task's job; its result must wake the host through the fd, not wait
 * for some other wake-up. -1 is capped at 2 s, so a missed wake fails the
 * bound below instead of hanging.
 */
static int sleepy_job(void *arg)
{
	struct timespec ts = {.tv_nsec = 50 * 1000 * 1000};

	nanosleep(&ts, NULL);
	return *(int *)arg;
}

struct blocker {
	struct keel_task task;
	int arg;
};

/* The frame is gone once the task exits: the result goes here. */
static int g_block_res;
static uint64_t g_block_done_ns;

static int blocker_step(struct keel_task *t);
static KEEL_TASK_TYPE(blocker_task, struct blocker, task, blocker_step);

static int blocker_step(struct keel_task *t)
{
	struct blocker *b = keel_container_of(t, struct blocker, task);

	KEEL_BEGIN(t);
	KEEL_AWAIT(t, keel_blocking(t, sleepy_job, &b->arg));
	g_block_res = keel_res(t);
	g_block_done_ns = kt_now_ns();
	KEEL_END(t);
}

static void host_awaits_blocking_job(const struct keel_loop_opts *opts)
{
	struct keel_loop *loop = kt_loop_new(opts);
	struct epoll_event ev = {.events = EPOLLIN};
	struct blocker *b;
	uint64_t t0, bound = KT_MS(2000);
	int ep, rc;

	ep = epoll_create1(EPOLL_CLOEXEC);
	cr_assert_geq(ep, 0);
	ev.data.fd = keel_loop_fd(loop);
	cr_assert_geq(ev.data.fd, 0);
	cr_assert_eq(epoll_ctl(ep, EPOLL_CTL_ADD, ev.data.fd, &ev), 0);
	b = kt_spawn(loop, &blocker_task, KEEL_PRIO_NORMAL);
	b->arg = 42;
	g_block_res = -1;
	t0 = kt_now_ns();
	for (;;) {
		struct epoll_event out;
		int64_t ns;
		int n;

		rc = keel_loop_step(loop, 0);
		cr_assert_geq(rc, 0, "keel_loop_step: %s", strerror(-rc));
		if (rc == 0)
			break;
		cr_assert(kt_now_ns() - t0 < bound,
			  "the host was not woken for the job's result");
		ns = keel_loop_timeout_ns(loop);
		n = epoll_wait(ep, &out, 1, ns < 0 ? 2000 : ns_to_ms_up(ns));
		cr_assert(n >= 0 || errno == EINTR, "epoll_wait: %s",
			  strerror(errno));
	}
	cr_assert_eq(g_block_res, 42);
	cr_assert_lt(g_block_done_ns - t0, bound);
	close(ep);
	keel_loop_destroy(loop);
}

Test(sched, epoll_host_is_woken_by_another_threads_post, .timeout = 10)
{
	host_awaits_blocking_job(NULL);
}

Test(sched, epoll_host_is_woken_by_another_threads_post_without_defer,
     .timeout = 10)
{
	struct keel_loop_opts opts = {.flags = KEEL_LOOP_NO_DEFER};

	host_awaits_blocking_job(&opts);
}

/*
 * keel_loop_timeout_ns() counts the inbox: once the pool thread has posted
 * the job's result, a host must not sleep (it used to get -1 here, and
 * sleep until only its own timeout woke it).
 */
Test(sched, timeout_ns_is_zero_once_another_thread_posted, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct blocker *b = kt_spawn(loop, &blocker_task, KEEL_PRIO_NORMAL);
	uint64_t t0 = kt_now_ns();
	struct timespec ms = {.tv_nsec = 1000 * 1000};

	b->arg = 7;
	g_block_res = -1;
	/* The task hands its job to the pool and waits. */
	cr_assert_eq(keel_loop_step(loop, 0), 1);
	while (keel_loop_timeout_ns(loop) != 0) {
		cr_assert_eq(g_block_res, -1);
		cr_assert(kt_now_ns() - t0 < KT_MS(2000),
			  "the job's result never showed in the timeout");
		nanosleep(&ms, NULL);
	}
	kt_loop_run(loop);
	cr_assert_eq(g_block_res, 7);
	keel_loop_destroy(loop);
}
