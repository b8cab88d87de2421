/* SPDX-License-Identifier: MIT */
/*
 * test_hibernate.c: idle connections without a task (keel_hibernate) and
 * the idle return that leads to it (KEEL_RECV_IDLE_RETURN), over loopback
 * TCP, each test on the kernel's io_uring and on the epoll backend:
 *
 * - a stream opened with KEEL_RECV_IDLE_RETURN returns -EAGAIN once it
 *   went idle, nothing queued; the next keel_recv_next receives again,
 *   every byte (also bytes that came while it was stopped);
 * - a task hibernates its socket and ends (no frame, no task left); data
 *   wakes the callback with POLLIN, and the task it spawns echoes it;
 * - the peer's end of file wakes it too, and the new task reads 0;
 * - 600 tasks that hibernate at once leave their frames to one more idle
 *   sweep, which gives the slabs back (keel_loop_stats.frame_bytes);
 * - keel_hibernate_cancel wakes one with -ECANCELED (the others stay);
 *   a second cancel, an unknown id: -ENOENT;
 * - keel_loop_run returns with sockets hibernated, and keel_loop_destroy
 *   wakes each with -ECANCELED (the callback closes it; ASan: no leak);
 *   keel_hibernate from that callback is refused;
 * - 600 sockets readable at once each wake once, with their own
 *   descriptor (the io_uring backend's epoll set, drained in bounded
 *   batches);
 * - callbacks that hibernate a socket again while it is readable: every
 *   step returns, and every socket is woken again in its turn (io_uring);
 * - a socket closed while hibernated never wakes for the socket that gets
 *   its number next; its cancel wakes it with -ECANCELED;
 * - a cancel after the socket became readable wakes it once, with
 *   -ECANCELED; it hibernates again and wakes for data;
 * - a regular file, which epoll refuses, is polled alone, and wakes;
 * - a task waiting for what a wake does is no deadlock: the loop waits
 *   for the poll;
 * - bad input: fd < 0 or no callback (-EINVAL), unknown stream flags.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <keel.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "helpers/keel_test.h"
#include "helpers/refuse_submits.h"
#include "io.h"

#define IDLE_MS 20

static const unsigned backends[] = {KEEL_BACKEND_IO_URING, KEEL_BACKEND_EPOLL};
#define NBACKENDS (sizeof(backends) / sizeof(backends[0]))

static const char *backend_name(unsigned b)
{
	return b == KEEL_BACKEND_EPOLL ? "epoll" : "io_uring";
}

static struct keel_loop *loop_on(unsigned backend)
{
	struct keel_loop_opts o = {.backend = backend, .idle_ms = IDLE_MS};

	return kt_loop_new(&o);
}

static struct keel_bufring *ring_new(struct keel_loop *loop)
{
	struct keel_bufring_opts o = {.count = 8, .size = 256};
	struct keel_bufring *r = NULL;

	cr_assert_eq(keel_bufring_create(loop, &o, &r), 0);
	return r;
}

/* Step `loop` until `done` holds: 10 ms steps, 20 s at most (a loaded
 * machine delays the idle sweep's timer). */
#define STEP_UNTIL(loop, done)                                                 \
	for (int k_ = 0; k_ < 2000 && !(done); k_++)                           \
	cr_assert_geq(keel_loop_step(loop, 10 * 1000 * 1000), 0)

static uint64_t hibernated(struct keel_loop *loop)
{
	return kt_stats(loop).hibernated;
}

/* What the tasks and callbacks saw. */
static struct {
	int idle;	 /* the first keel_recv_next: -EAGAIN */
	int after;	 /* the one after it */
	char got[32];	 /* what `after` received */
	int hibernate;	 /* keel_hibernate's result */
	int wakes;	 /* callbacks run */
	int wake_res;	 /* the last one's result */
	int echoed;	 /* the woken task's receive (sent back if > 0) */
	bool try_again;	 /* the callback hibernates again, at -ECANCELED */
	int again;	 /* ... and got this */
	int bad_flags;	 /* keel_recv_stream_open with an unknown flag */
	bool closed[64]; /* the callback closed this socket */
} g;

static void reset(void)
{
	memset(&g, 0, sizeof(g));
	g.idle = g.after = g.hibernate = g.echoed = g.again = g.bad_flags = 99;
}

/* ---- the idle return ---- */

struct idler {
	struct keel_task task;
	struct keel_recv_stream rs;
	struct keel_buf buf;
	struct keel_bufring *ring;
	int fd, peer;
};

static int idler_step(struct keel_task *t)
{
	struct idler *c = keel_container_of(t, struct idler, task);

	KEEL_BEGIN(t);
	g.bad_flags = keel_recv_stream_open(t, &c->rs, c->fd, c->ring, 0x80);
	if (keel_recv_stream_open(t, &c->rs, c->fd, c->ring,
				  KEEL_RECV_IDLE_RETURN))
		KEEL_EXIT(t, 1);
	KEEL_AWAIT(t, keel_recv_next(t, &c->rs, &c->buf));
	g.idle = keel_res(t);
	/* Sent while the stream is stopped: it waits in the socket. */
	cr_assert_eq(write(c->peer, "after", 5), 5);
	KEEL_AWAIT(t, keel_recv_next(t, &c->rs, &c->buf));
	g.after = keel_res(t);
	if (g.after > 0)
		memcpy(g.got, c->buf.data, c->buf.len < 31 ? c->buf.len : 31);
	keel_buf_release(&c->buf);
	keel_recv_stream_close(&c->rs);
	KEEL_END(t);
}

static KEEL_TASK_TYPE(idler_task, struct idler, task, idler_step);

Test(hibernate, idle_return_gives_eagain_then_receives_again, .timeout = 60)
{
	for (size_t b = 0; b < NBACKENDS; b++) {
		struct keel_loop *loop = loop_on(backends[b]);
		struct keel_bufring *ring = ring_new(loop);
		struct idler *c;
		int fds[2];

		reset();
		kt_tcp_pair(fds);
		c = kt_spawn(loop, &idler_task, KEEL_PRIO_NORMAL);
		c->fd = fds[0];
		c->peer = fds[1];
		c->ring = ring;
		kt_loop_run(loop);
		cr_assert_eq(g.idle, -EAGAIN, "%s: idle: %d",
			     backend_name(backends[b]), g.idle);
		cr_assert_eq(g.after, 5, "%s: after: %d",
			     backend_name(backends[b]), g.after);
		cr_assert_str_eq(g.got, "after");
		cr_assert_eq(g.bad_flags, -EINVAL);
		cr_assert_eq(kt_stats(loop).idle_polls, 0,
			     "the stream parked instead of returning");
		close(fds[0]);
		close(fds[1]);
		keel_bufring_destroy(ring);
		keel_loop_destroy(loop);
	}
}

/* ---- hibernate, wake, echo ---- */

struct conn {
	struct keel_task task;
	struct keel_recv_stream rs;
	struct keel_buf buf;
	struct keel_bufring *ring;
	int fd;
	bool idle_return; /* hibernate when idle */
};

static int conn_step(struct keel_task *t);
static KEEL_TASK_TYPE(conn_task, struct conn, task, conn_step);

static void on_wake(struct keel_loop *loop, int fd, int res, void *arg)
{
	struct conn *c;

	g.wakes++;
	g.wake_res = res;
	if (res > 0) {
		c = kt_spawn(loop, &conn_task, KEEL_PRIO_NORMAL);
		c->fd = fd;
		c->ring = arg;
		return;
	}
	if (g.try_again)
		g.again = keel_hibernate(loop, fd, on_wake, arg, NULL);
	if (fd < 64)
		g.closed[fd] = true;
	close(fd);
}

static int conn_step(struct keel_task *t)
{
	struct conn *c = keel_container_of(t, struct conn, task);

	KEEL_BEGIN(t);
	if (keel_recv_stream_open(t, &c->rs, c->fd, c->ring,
				  c->idle_return ? KEEL_RECV_IDLE_RETURN : 0))
		KEEL_EXIT(t, 1);
	KEEL_AWAIT(t, keel_recv_next(t, &c->rs, &c->buf));
	if (keel_res(t) == -EAGAIN) {
		g.hibernate = keel_hibernate(keel_task_loop(t), c->fd, on_wake,
					     c->ring, NULL);
		keel_recv_stream_close(&c->rs);
		KEEL_EXIT(t, 0); /* the socket is the loop's */
	}
	g.echoed = keel_res(t);
	if (keel_res(t) > 0)
		KEEL_AWAIT(t, keel_send_all(t, c->fd, c->buf.data, c->buf.len,
					    MSG_NOSIGNAL));
	keel_buf_release(&c->buf);
	keel_recv_stream_close(&c->rs);
	KEEL_END(t);
}

/* A connection whose task hibernates its socket and ends. */
static struct keel_loop *hibernated_conn(unsigned backend,
					 struct keel_bufring **ring, int fds[2])
{
	struct keel_loop *loop = loop_on(backend);
	struct conn *c;

	*ring = ring_new(loop);
	kt_tcp_pair(fds);
	c = kt_spawn(loop, &conn_task, KEEL_PRIO_NORMAL);
	c->fd = fds[0];
	c->ring = *ring;
	c->idle_return = true;
	/* Runs until the task has ended: nothing but the poll is left. */
	kt_loop_run(loop);
	cr_assert_eq(g.hibernate, 0, "%s: keel_hibernate: %d",
		     backend_name(backend), g.hibernate);
	cr_assert_eq(hibernated(loop), 1);
	cr_assert_eq(kt_stats(loop).tasks_live, 0);
	cr_assert_eq(kt_stats(loop).frames_live, 0, "the task's frame stayed");
	cr_assert_eq(kt_stats(loop).ops_inflight, 0);
	cr_assert_eq(g.wakes, 0);
	return loop;
}

Test(hibernate, data_wakes_it_and_a_new_task_echoes, .timeout = 60)
{
	for (size_t b = 0; b < NBACKENDS; b++) {
		struct keel_bufring *ring;
		int fds[2];
		char back[8] = {0};
		struct keel_loop *loop;

		reset();
		loop = hibernated_conn(backends[b], &ring, fds);
		cr_assert_eq(write(fds[1], "ping", 4), 4);
		STEP_UNTIL(loop, g.echoed != 99);
		cr_assert_eq(g.wakes, 1);
		cr_assert(g.wake_res > 0 && (g.wake_res & POLLIN),
			  "%s: wake: %#x", backend_name(backends[b]),
			  g.wake_res);
		cr_assert_eq(g.echoed, 4);
		kt_loop_run(loop);
		cr_assert_eq(read(fds[1], back, sizeof(back)), 4);
		cr_assert_str_eq(back, "ping");
		cr_assert_eq(hibernated(loop), 0);
		close(fds[0]);
		close(fds[1]);
		keel_bufring_destroy(ring);
		keel_loop_destroy(loop);
		cr_assert_eq(g.wakes, 1, "a callback ran at destroy");
	}
}

Test(hibernate, peer_close_wakes_it_and_the_new_task_reads_eof, .timeout = 60)
{
	for (size_t b = 0; b < NBACKENDS; b++) {
		struct keel_bufring *ring;
		int fds[2];
		struct keel_loop *loop;

		reset();
		loop = hibernated_conn(backends[b], &ring, fds);
		close(fds[1]);
		STEP_UNTIL(loop, g.echoed != 99);
		cr_assert_eq(g.wakes, 1);
		cr_assert_gt(g.wake_res, 0, "%s: wake: %d",
			     backend_name(backends[b]), g.wake_res);
		cr_assert_eq(g.echoed, 0, "end of file: %d", g.echoed);
		kt_loop_run(loop);
		close(fds[0]);
		keel_bufring_destroy(ring);
		keel_loop_destroy(loop);
	}
}

/* ---- the frames they leave ---- */

/* Keeps the loop going, as an acceptor would. */
struct keeper {
	struct keel_task task;
};

static int keeper_step(struct keel_task *t)
{
	KEEL_BEGIN(t);
	KEEL_AWAIT(t, keel_sleep(t, 60ull * 1000 * 1000 * 1000));
	KEEL_END(t);
}

static KEEL_TASK_TYPE(keeper_task, struct keeper, task, keeper_step);

enum { MANY = 600 };

/*
 * Many connections go idle at once and their tasks end to hibernate: the
 * last recv stream closes, and one more idle sweep gives their frames back
 * (slabs whose frames are all free; with libc's allocator in sanitizer
 * builds, each frame as it is freed), then stops: only the keeper's timer
 * is left.
 */
Test(hibernate, frames_of_hibernated_tasks_are_given_back, .timeout = 120)
{
	static int fds[MANY][2];

	for (size_t b = 0; b < NBACKENDS; b++) {
		struct keel_loop *loop = loop_on(backends[b]);
		struct keel_bufring *ring = ring_new(loop);
		uint64_t peak;

		reset();
		kt_spawn(loop, &keeper_task, KEEL_PRIO_NORMAL);
		for (int i = 0; i < MANY; i++) {
			struct conn *c =
			    kt_spawn(loop, &conn_task, KEEL_PRIO_NORMAL);

			kt_tcp_pair(fds[i]);
			c->fd = fds[i][0];
			c->ring = ring;
			c->idle_return = true;
		}
		peak = kt_stats(loop).frame_bytes;
		STEP_UNTIL(loop, hibernated(loop) == MANY &&
				     kt_stats(loop).timers_armed == 1);
		cr_assert_eq(hibernated(loop), MANY, "%s",
			     backend_name(backends[b]));
		cr_assert_eq(kt_stats(loop).timers_armed, 1,
			     "%s: the idle sweep still armed",
			     backend_name(backends[b]));
		cr_assert_eq(kt_stats(loop).frames_live, 1);
#ifndef KEEL_ALLOC_LIBC
		cr_assert_geq(peak, 2ull * KEEL__SLAB_BYTES);
		cr_assert_eq(kt_stats(loop).frame_bytes, KEEL__SLAB_BYTES,
			     "%s: %llu of %llu bytes of frames kept",
			     backend_name(backends[b]),
			     (unsigned long long)kt_stats(loop).frame_bytes,
			     (unsigned long long)peak);
#else
		/* libc's frames: frame_bytes is the live frames' size. */
		cr_assert_geq(peak, keeper_task.frame_size +
					(uint64_t)MANY * conn_task.frame_size);
		cr_assert_eq(kt_stats(loop).frame_bytes,
			     keeper_task.frame_size);
#endif
		keel_bufring_destroy(ring);
		keel_loop_destroy(loop);
		for (int i = 0; i < MANY; i++)
			close(fds[i][1]);
	}
}

/* ---- cancel, destroy, bad input ---- */

enum { N = 8 };

/* Hibernate N sockets from the loop's thread (no task needed). */
static void hibernate_n(struct keel_loop *loop, int fds[N][2], uint64_t id[N])
{
	for (int i = 0; i < N; i++) {
		cr_assert_eq(
		    socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds[i]),
		    0);
		cr_assert_lt(fds[i][0], 64);
		id[i] = 0;
		cr_assert_eq(
		    keel_hibernate(loop, fds[i][0], on_wake, NULL, &id[i]), 0);
		cr_assert_neq(id[i], 0);
	}
	cr_assert_eq(hibernated(loop), N);
}

Test(hibernate, cancel_wakes_one_with_ecanceled, .timeout = 60)
{
	for (size_t b = 0; b < NBACKENDS; b++) {
		struct keel_loop *loop = loop_on(backends[b]);
		int fds[N][2];
		uint64_t id[N];

		reset();
		hibernate_n(loop, fds, id);
		cr_assert_eq(keel_hibernate_cancel(loop, id[3]), 0);
		cr_assert_eq(keel_hibernate_cancel(loop, id[3]), 0,
			     "a second cancel while the first is under way");
		STEP_UNTIL(loop, g.wakes);
		cr_assert_eq(g.wakes, 1);
		cr_assert_eq(g.wake_res, -ECANCELED, "%s: wake: %d",
			     backend_name(backends[b]), g.wake_res);
		cr_assert(g.closed[fds[3][0]]);
		cr_assert_eq(hibernated(loop), N - 1);
		cr_assert_eq(keel_hibernate_cancel(loop, id[3]), -ENOENT);
		cr_assert_eq(keel_hibernate_cancel(loop, 0), -ENOENT);
		cr_assert_eq(keel_hibernate_cancel(loop, id[4] + (1ull << 32)),
			     -ENOENT);
		/* The others still sleep: nothing woke them. */
		for (int k = 0; k < 5; k++)
			cr_assert_geq(keel_loop_step(loop, 1000 * 1000), 0);
		cr_assert_eq(g.wakes, 1);
		keel_loop_destroy(loop);
		cr_assert_eq(g.wakes, N);
		for (int i = 0; i < N; i++) {
			cr_assert(g.closed[fds[i][0]]);
			close(fds[i][1]);
		}
	}
}

/*
 * Cancels while the SQ is full and the kernel takes none of it
 * (helpers/refuse_submits.h). A socket in the loop's epoll set is woken by a
 * NOP: with no SQE free it waits for one, as a cancel does, and
 * keel_hibernate_cancel() still returns 0 (it returned -EAGAIN). N cancels
 * on a 4-entry SQ: the fifth finds it full.
 */
Test(hibernate, cancel_with_the_sq_full_still_wakes_with_ecanceled,
     .timeout = 60)
{
	struct keel_loop_opts o = {.backend = KEEL_BACKEND_IO_URING,
				   .idle_ms = IDLE_MS,
				   .sq_entries = 4};
	struct keel_loop *loop = kt_loop_new(&o);
	int fds[N][2];
	uint64_t id[N];

	reset();
	hibernate_n(loop, fds, id);
	/* The set's poll reaches the kernel: the SQ is empty. */
	cr_assert_geq(keel_loop_step(loop, 0), 0);
	g_refused = 0;
	g_refuse_submits = true;
	for (int i = 0; i < N; i++)
		cr_assert_eq(keel_hibernate_cancel(loop, id[i]), 0,
			     "cancel %d with the SQ full", i);
	g_refuse_submits = false;
	cr_assert_gt(g_refused, 0, "no submit was refused");
	cr_assert_gt(keel__io_of(loop)->ledger.nlater, 0,
		     "no wake waited for an SQE");
	cr_assert_eq(keel_loop_timeout_ns(loop), 0, "a host must step at once");
	STEP_UNTIL(loop, g.wakes == N);
	cr_assert_eq(g.wakes, N);
	cr_assert_eq(g.wake_res, -ECANCELED);
	cr_assert_eq(hibernated(loop), 0);
	for (int i = 0; i < N; i++) {
		cr_assert(g.closed[fds[i][0]]);
		close(fds[i][1]);
	}
	keel_loop_destroy(loop);
}

Test(hibernate, loop_destroy_wakes_every_one_with_ecanceled, .timeout = 60)
{
	for (size_t b = 0; b < NBACKENDS; b++) {
		struct keel_loop *loop = loop_on(backends[b]);
		int fds[N][2];
		uint64_t id[N];

		reset();
		g.try_again = true;
		hibernate_n(loop, fds, id);
		/* Hibernated sockets alone do not keep the loop running. */
		kt_loop_run(loop);
		cr_assert_eq(g.wakes, 0);
		keel_loop_destroy(loop);
		cr_assert_eq(g.wakes, N, "%s: %d callbacks",
			     backend_name(backends[b]), g.wakes);
		cr_assert_eq(g.wake_res, -ECANCELED);
		cr_assert_eq(g.again, -ECANCELED,
			     "keel_hibernate while the loop goes: %d", g.again);
		for (int i = 0; i < N; i++) {
			cr_assert(g.closed[fds[i][0]]);
			cr_assert_eq(fcntl(fds[i][0], F_GETFD), -1,
				     "socket %d left open", i);
			close(fds[i][1]);
		}
	}
}

/* ---- many at once, a socket closed while hibernated, a late cancel ---- */

/* Each wake, by the record's index in `arg`. */
static struct {
	int wakes[MANY];
	int res[MANY];
	int fd[MANY];
} w;

static void on_wake_note(struct keel_loop *loop, int fd, int res, void *arg)
{
	int i = (int)(intptr_t)arg;

	(void)loop;
	w.wakes[i]++;
	w.res[i] = res;
	w.fd[i] = fd;
}

static int woken(void)
{
	int n = 0;

	for (int i = 0; i < MANY; i++)
		n += w.wakes[i];
	return n;
}

/*
 * MANY sockets hibernated, then readable together: the io_uring backend's
 * epoll set reports them in batches, at most a bounded number a
 * completion, and the rest on the next turns; each wakes once, with its
 * own descriptor.
 */
Test(hibernate, many_woken_together_each_once, .timeout = 60)
{
	static int fds[MANY][2];

	for (size_t b = 0; b < NBACKENDS; b++) {
		struct keel_loop *loop = loop_on(backends[b]);

		memset(&w, 0, sizeof(w));
		for (int i = 0; i < MANY; i++) {
			cr_assert_eq(socketpair(AF_UNIX,
						SOCK_STREAM | SOCK_CLOEXEC, 0,
						fds[i]),
				     0);
			cr_assert_eq(keel_hibernate(loop, fds[i][0],
						    on_wake_note,
						    (void *)(intptr_t)i, NULL),
				     0);
		}
		cr_assert_geq(keel_loop_step(loop, 0), 0);
		cr_assert_eq(woken(), 0);
		for (int i = 0; i < MANY; i++)
			cr_assert_eq(write(fds[i][1], "x", 1), 1);
		STEP_UNTIL(loop, woken() == MANY);
		cr_assert_eq(woken(), MANY, "%s: %d of %d woke",
			     backend_name(backends[b]), woken(), MANY);
		for (int i = 0; i < MANY; i++) {
			cr_assert_eq(w.wakes[i], 1);
			cr_assert(w.res[i] > 0 && (w.res[i] & POLLIN),
				  "%s: %d: %#x", backend_name(backends[b]), i,
				  w.res[i]);
			cr_assert_eq(w.fd[i], fds[i][0]);
		}
		cr_assert_eq(hibernated(loop), 0);
		keel_loop_destroy(loop);
		cr_assert_eq(woken(), MANY, "a callback ran at destroy");
		for (int i = 0; i < MANY; i++) {
			close(fds[i][0]);
			close(fds[i][1]);
		}
	}
}

static void on_wake_again(struct keel_loop *loop, int fd, int res, void *arg)
{
	on_wake_note(loop, fd, res, arg);
	if (res > 0)
		cr_assert_eq(keel_hibernate(loop, fd, on_wake_again, arg, NULL),
			     0);
}

/*
 * Callbacks that hibernate their socket again without reading it: each
 * is readable at once, yet every step returns (the io_uring backend's
 * epoll set hands out a bounded number of wakes a turn) and every socket
 * keeps being woken in its turn. Not on the epoll backend: there, as with
 * a POLL_ADD per socket (before the set), a re-armed poll of a readable
 * socket completes within the same reap, and the step never returns.
 */
Test(hibernate, hibernated_again_while_readable_every_step_returns,
     .timeout = 60)
{
	static int fds[MANY][2];
	struct keel_loop *loop = loop_on(KEEL_BACKEND_IO_URING);
	int least = 0;

	memset(&w, 0, sizeof(w));
	for (int i = 0; i < MANY; i++) {
		cr_assert_eq(
		    socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds[i]),
		    0);
		cr_assert_eq(write(fds[i][1], "x", 1), 1);
		cr_assert_eq(keel_hibernate(loop, fds[i][0], on_wake_again,
					    (void *)(intptr_t)i, NULL),
			     0);
	}
	for (int k = 0; k < 2000 && least < 3; k++) {
		cr_assert_geq(keel_loop_step(loop, 10 * 1000 * 1000), 0);
		least = w.wakes[0];
		for (int i = 1; i < MANY; i++)
			if (w.wakes[i] < least)
				least = w.wakes[i];
	}
	cr_assert_geq(least, 3, "a socket was woken %d times", least);
	cr_assert_eq(hibernated(loop), MANY);
	keel_loop_destroy(loop);
	for (int i = 0; i < MANY; i++) {
		cr_assert_eq(w.res[i], -ECANCELED);
		close(fds[i][0]);
		close(fds[i][1]);
	}
}

/*
 * A socket closed while hibernated (the caller's error) leaves the kernel's
 * watch with it (an epoll item goes at the file's last close: the io_uring
 * backend's set, the epoll backend's): a new socket that gets its number
 * and hibernates wakes alone, and the stale record waits for its cancel
 * (or the loop's destroy), which wakes it with -ECANCELED.
 */
Test(hibernate, closed_while_hibernated_never_fires_for_its_number,
     .timeout = 60)
{
	for (size_t b = 0; b < NBACKENDS; b++) {
		struct keel_loop *loop = loop_on(backends[b]);
		int a[2], c[2];
		uint64_t ida, idc;

		memset(&w, 0, sizeof(w));
		cr_assert_eq(
		    socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, a), 0);
		cr_assert_eq(
		    keel_hibernate(loop, a[0], on_wake_note, (void *)0, &ida),
		    0);
		cr_assert_geq(keel_loop_step(loop, 0), 0);
		close(a[0]);
		cr_assert_eq(
		    socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, c), 0);
		cr_assert_eq(c[0], a[0], "the number was not reused");
		cr_assert_eq(
		    keel_hibernate(loop, c[0], on_wake_note, (void *)1, &idc),
		    0);
		cr_assert_eq(write(c[1], "x", 1), 1);
		close(a[1]);
		STEP_UNTIL(loop, w.wakes[1]);
		for (int k = 0; k < 5; k++)
			cr_assert_geq(keel_loop_step(loop, 1000 * 1000), 0);
		cr_assert_eq(w.wakes[1], 1);
		cr_assert(w.res[1] > 0 && (w.res[1] & POLLIN), "%s: %#x",
			  backend_name(backends[b]), w.res[1]);
		cr_assert_eq(w.wakes[0], 0,
			     "%s: the closed socket's record woke: %d",
			     backend_name(backends[b]), w.res[0]);
		cr_assert_eq(hibernated(loop), 1);
		cr_assert_eq(keel_hibernate_cancel(loop, ida), 0);
		STEP_UNTIL(loop, w.wakes[0]);
		cr_assert_eq(w.wakes[0], 1);
		cr_assert_eq(w.res[0], -ECANCELED);
		cr_assert_eq(hibernated(loop), 0);
		keel_loop_destroy(loop);
		cr_assert_eq(woken(), 2);
		close(c[0]);
		close(c[1]);
	}
}

/*
 * keel_hibernate_cancel after the socket became readable, before the loop
 * saw it: one wake, with -ECANCELED; then the same socket hibernates
 * again (its watch re-armed) and wakes for data; a cancel after its wake:
 * -ENOENT.
 */
Test(hibernate, cancel_after_it_fired_wakes_once, .timeout = 60)
{
	for (size_t b = 0; b < NBACKENDS; b++) {
		struct keel_loop *loop = loop_on(backends[b]);
		uint64_t id;
		char x;
		int fds[2];

		memset(&w, 0, sizeof(w));
		cr_assert_eq(
		    socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
		cr_assert_eq(
		    keel_hibernate(loop, fds[0], on_wake_note, (void *)0, &id),
		    0);
		cr_assert_geq(keel_loop_step(loop, 0), 0);
		cr_assert_eq(write(fds[1], "x", 1), 1);
		cr_assert_eq(keel_hibernate_cancel(loop, id), 0);
		STEP_UNTIL(loop, w.wakes[0]);
		for (int k = 0; k < 5; k++)
			cr_assert_geq(keel_loop_step(loop, 1000 * 1000), 0);
		cr_assert_eq(w.wakes[0], 1, "%s", backend_name(backends[b]));
		cr_assert_eq(w.res[0], -ECANCELED, "%s: %d",
			     backend_name(backends[b]), w.res[0]);
		cr_assert_eq(keel_hibernate_cancel(loop, id), -ENOENT);

		cr_assert_eq(read(fds[0], &x, 1), 1);
		cr_assert_eq(
		    keel_hibernate(loop, fds[0], on_wake_note, (void *)1, &id),
		    0);
		for (int k = 0; k < 5; k++)
			cr_assert_geq(keel_loop_step(loop, 1000 * 1000), 0);
		cr_assert_eq(w.wakes[1], 0, "woke with nothing to read");
		cr_assert_eq(write(fds[1], "y", 1), 1);
		STEP_UNTIL(loop, w.wakes[1]);
		cr_assert_eq(w.wakes[1], 1);
		cr_assert(w.res[1] > 0 && (w.res[1] & POLLIN), "%s: %#x",
			  backend_name(backends[b]), w.res[1]);
		cr_assert_eq(keel_hibernate_cancel(loop, id), -ENOENT);
		cr_assert_eq(hibernated(loop), 0);
		keel_loop_destroy(loop);
		cr_assert_eq(woken(), 2);
		close(fds[0]);
		close(fds[1]);
	}
}

/* A regular file, which epoll refuses (EPERM): on io_uring it gets a
 * POLL_ADD of its own, which completes at once (a file is always
 * readable), and it can be cancelled like any other. */
Test(hibernate, a_descriptor_epoll_refuses_is_polled_alone, .timeout = 60)
{
	for (size_t b = 0; b < NBACKENDS; b++) {
		struct keel_loop *loop = loop_on(backends[b]);
		FILE *f = tmpfile();
		uint64_t id;

		cr_assert_not_null(f);
		memset(&w, 0, sizeof(w));
		cr_assert_eq(keel_hibernate(loop, fileno(f), on_wake_note,
					    (void *)0, NULL),
			     0);
		STEP_UNTIL(loop, w.wakes[0]);
		cr_assert_eq(w.wakes[0], 1);
		cr_assert(w.res[0] > 0 && (w.res[0] & POLLIN), "%s: %#x",
			  backend_name(backends[b]), w.res[0]);
		cr_assert_eq(w.fd[0], fileno(f));
		/* Cancelled before the loop submits its poll. */
		cr_assert_eq(keel_hibernate(loop, fileno(f), on_wake_note,
					    (void *)1, &id),
			     0);
		cr_assert_eq(keel_hibernate_cancel(loop, id), 0);
		STEP_UNTIL(loop, w.wakes[1]);
		cr_assert_eq(w.wakes[1], 1);
		cr_assert_eq(w.res[1], -ECANCELED, "%s: %d",
			     backend_name(backends[b]), w.res[1]);
		cr_assert_eq(hibernated(loop), 0);
		keel_loop_destroy(loop);
		fclose(f);
	}
}

/* A task that waits for what a wake does (an event the callback sets):
 * the loop waits for the poll with it, it is no deadlock. */
static struct keel_event *g_ev;

static void on_wake_set(struct keel_loop *loop, int fd, int res, void *arg)
{
	(void)loop;
	(void)fd;
	(void)arg;
	g.wakes++;
	g.wake_res = res;
	keel_event_set(g_ev);
}

struct waiter {
	struct keel_task task;
};

static int waiter_step(struct keel_task *t)
{
	KEEL_BEGIN(t);
	KEEL_AWAIT(t, keel_event_wait(t, g_ev));
	KEEL_END(t);
}

static KEEL_TASK_TYPE(waiter_task, struct waiter, task, waiter_step);

static void *writer(void *arg)
{
	usleep(50 * 1000);
	if (write(*(int *)arg, "x", 1) != 1)
		abort();
	return NULL;
}

Test(hibernate, a_task_waiting_for_a_wake_is_no_deadlock, .timeout = 60)
{
	for (size_t b = 0; b < NBACKENDS; b++) {
		struct keel_loop *loop = loop_on(backends[b]);
		pthread_t th;
		int fds[2];

		reset();
		cr_assert_eq(
		    socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
		cr_assert_eq(keel_event_new(loop, &g_ev), 0);
		cr_assert_eq(
		    keel_hibernate(loop, fds[0], on_wake_set, NULL, NULL), 0);
		kt_spawn(loop, &waiter_task, KEEL_PRIO_NORMAL);
		cr_assert_eq(pthread_create(&th, NULL, writer, &fds[1]), 0);
		kt_loop_run(loop); /* not -EDEADLK */
		pthread_join(th, NULL);
		cr_assert_eq(g.wakes, 1);
		cr_assert(g.wake_res > 0 && (g.wake_res & POLLIN), "%s: %#x",
			  backend_name(backends[b]), g.wake_res);
		keel_event_free(g_ev);
		keel_loop_destroy(loop);
		close(fds[0]);
		close(fds[1]);
	}
}

Test(hibernate, bad_input)
{
	struct keel_loop *loop = loop_on(KEEL_BACKEND_IO_URING);
	uint64_t id = 7;

	cr_assert_eq(keel_hibernate(loop, -1, on_wake, NULL, &id), -EINVAL);
	cr_assert_eq(keel_hibernate(loop, 0, NULL, NULL, &id), -EINVAL);
	cr_assert_eq(id, 7, "id written on failure");
	cr_assert_eq(keel_hibernate_cancel(loop, 12345), -ENOENT);
	cr_assert_eq(hibernated(loop), 0);
	keel_loop_destroy(loop);
}
