/* SPDX-License-Identifier: MIT */
/*
 * test_close_detached.c: keel_close_detached(), closing a descriptor
 * without a task, over loopback TCP, on the kernel's io_uring and on the
 * epoll backend:
 *
 * - a plain socket with a recv in flight: the recv ends with -ECANCELED,
 *   the descriptor is closed and the peer reads end of file (the recv
 *   does not keep the socket open in the kernel);
 * - a direct descriptor (KEEL_ACCEPT_DIRECT) with a recv in flight: the
 *   same, its slot released (io_uring);
 * - the SQ full and the kernel taking nothing: a plain socket is closed at
 *   once with close(2); a direct one answers -EAGAIN and stays usable;
 * - from a keel_hibernate() callback run by keel_loop_destroy(): closed;
 * - queued with nothing in flight (no step enters for it), then the loop
 *   destroyed: still closed;
 * - bad input: fd < 0 is -EBADF.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <keel.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "helpers/keel_test.h"
#include "helpers/refuse_submits.h"

static const unsigned backends[] = {KEEL_BACKEND_IO_URING, KEEL_BACKEND_EPOLL};
#define NBACKENDS (sizeof(backends) / sizeof(backends[0]))

/* Step `loop` until `done` holds: 10 ms steps, 10 s at most. */
#define STEP_UNTIL(loop, done)                                                 \
	for (int k_ = 0; k_ < 1000 && !(done); k_++)                           \
	cr_assert_geq(keel_loop_step(loop, 10 * 1000 * 1000), 0)

/* Whether the peer of `fd` has been closed: `fd` reads end of file
 * within 5 s (nothing is ever sent on these sockets). */
static bool peer_closed(int fd)
{
	struct pollfd p = {.fd = fd, .events = POLLIN};
	char c;

	return poll(&p, 1, 5000) == 1 && read(fd, &c, 1) == 0;
}

/* What the receiver saw (its frame goes when it ends). */
#define NOT_YET	 1000
#define INFLIGHT 1001
static struct {
	int fd;	 /* the accepted direct descriptor */
	int res; /* INFLIGHT while the recv is in flight */
} g_r;

/* A task that receives on g_r.fd (accepted first, direct, when `lfd` is
 * set) until the receive ends. */
struct receiver {
	struct keel_task task;
	struct keel_accept_stream as;
	int lfd;
	char buf[16];
};

static int receiver_step(struct keel_task *t)
{
	struct receiver *r = keel_container_of(t, struct receiver, task);

	KEEL_BEGIN(t);
	if (r->lfd >= 0) {
		int err = keel_accept_stream_open(t, &r->as, r->lfd,
						  KEEL_ACCEPT_DIRECT);

		if (err) {
			g_r.res = err;
			KEEL_EXIT(t, 0);
		}
		KEEL_AWAIT(t, keel_accept_next(t, &r->as));
		keel_accept_stream_close(&r->as);
		g_r.fd = keel_res(t);
		if (g_r.fd < 0) {
			g_r.res = g_r.fd;
			KEEL_EXIT(t, 0);
		}
	}
	g_r.res = INFLIGHT;
	KEEL_AWAIT(t, keel_recv(t, g_r.fd, r->buf, sizeof(r->buf), 0));
	g_r.res = keel_res(t);
	KEEL_END(t);
}

static KEEL_TASK_TYPE(receiver_task, struct receiver, task, receiver_step);

static void receiver_on(struct keel_loop *loop, int lfd, int fd)
{
	struct receiver *r = kt_spawn(loop, &receiver_task, KEEL_PRIO_NORMAL);

	r->lfd = lfd;
	g_r.fd = fd;
	g_r.fd = fd;
	g_r.res = NOT_YET;
}

Test(close_detached, a_plain_socket_with_a_recv_in_flight)
{
	for (unsigned b = 0; b < NBACKENDS; b++) {
		struct keel_loop_opts o = {.backend = backends[b]};
		struct keel_loop *loop = kt_loop_new(&o);
		int fds[2];

		kt_tcp_pair(fds);
		receiver_on(loop, -1, fds[0]);
		STEP_UNTIL(loop, kt_stats(loop).ops_inflight == 1);
		cr_assert_eq(g_r.res, INFLIGHT);
		cr_assert_eq(keel_close_detached(loop, fds[0]), 0);
		STEP_UNTIL(loop, g_r.res != INFLIGHT);
		cr_assert_eq(g_r.res, -ECANCELED, "backend %u: recv gave %d", b,
			     g_r.res);
		STEP_UNTIL(loop, fcntl(fds[0], F_GETFD) == -1);
		cr_assert_eq(fcntl(fds[0], F_GETFD), -1, "backend %u: open", b);
		cr_assert(peer_closed(fds[1]), "backend %u: peer sees no EOF",
			  b);
		close(fds[1]);
		keel_loop_destroy(loop);
	}
}

/* A direct descriptor accepted by a receiver (g_r.fd), its recv in
 * flight; the client's end in *cfd. */
static void direct_receiver(struct keel_loop *loop, int *cfd)
{
	struct sockaddr_storage ss;
	socklen_t len;
	uint16_t port;
	int lfd = kt_listen(&port);

	receiver_on(loop, lfd, -1);

	*cfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	kt_loopback_addr(port, &ss, &len);
	cr_assert_eq(connect(*cfd, (struct sockaddr *)&ss, len), 0);
	STEP_UNTIL(loop, g_r.res != NOT_YET);
	close(lfd);
	cr_assert_eq(g_r.res, INFLIGHT, "accept gave %d", g_r.res);
	cr_assert(keel_fd_is_fixed(g_r.fd));
}

Test(close_detached, a_direct_descriptor_with_a_recv_in_flight)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	int cfd;

	direct_receiver(loop, &cfd);

	cr_assert_eq(keel_close_detached(loop, g_r.fd), 0);
	STEP_UNTIL(loop, g_r.res != INFLIGHT);
	cr_assert_eq(g_r.res, -ECANCELED, "recv gave %d", g_r.res);
	/* The slot held the socket's last reference. */
	cr_assert(peer_closed(cfd), "the client sees no end of file");
	close(cfd);
	keel_loop_destroy(loop);
}

Test(close_detached, the_sq_full_closes_a_plain_one_at_once)
{
	struct keel_loop_opts o = {.backend = KEEL_BACKEND_IO_URING,
				   .sq_entries = 4};
	struct keel_loop *loop = kt_loop_new(&o);
	int fds[2], direct_client;

	direct_receiver(loop, &direct_client);

	kt_tcp_pair(fds);
	g_refused = 0;
	g_refuse_submits = true;
	for (int i = 0; i < 4; i++) /* fill the SQ */
		keel_close_detached(loop, dup(fds[1]));
	cr_assert_eq(keel_close_detached(loop, fds[0]), 0);
	cr_assert_eq(fcntl(fds[0], F_GETFD), -1, "not closed at once");
	cr_assert_eq(keel_close_detached(loop, g_r.fd), -EAGAIN);
	g_refuse_submits = false;
	cr_assert_gt(g_refused, 0, "no submit was refused");
	cr_assert(peer_closed(fds[1]), "the peer sees no end of file");
	close(fds[1]);
	/* The direct one was not closed: it still receives. */
	cr_assert_eq(write(direct_client, "x", 1), 1);
	STEP_UNTIL(loop, g_r.res != INFLIGHT);
	cr_assert_eq(g_r.res, 1, "recv gave %d", g_r.res);
	/* Nothing in flight: one step submits it. */
	cr_assert_eq(keel_close_detached(loop, g_r.fd), 0);
	cr_assert_geq(keel_loop_step(loop, 0), 0);
	cr_assert(peer_closed(direct_client));
	close(direct_client);
	keel_loop_destroy(loop);
}

static void close_on_wake(struct keel_loop *loop, int fd, int res, void *arg)
{
	*(int *)arg = res;
	cr_assert_eq(keel_close_detached(loop, fd), 0);
}

Test(close_detached, from_a_hibernation_woken_by_the_loop_destroy)
{
	for (unsigned b = 0; b < NBACKENDS; b++) {
		struct keel_loop_opts o = {.backend = backends[b]};
		struct keel_loop *loop = kt_loop_new(&o);
		int fds[2], res = 0;

		kt_tcp_pair(fds);
		cr_assert_eq(
		    keel_hibernate(loop, fds[0], close_on_wake, &res, NULL), 0);
		cr_assert_geq(keel_loop_step(loop, 0), 0);
		keel_loop_destroy(loop);
		cr_assert_eq(res, -ECANCELED, "backend %u: woken with %d", b,
			     res);
		cr_assert_eq(fcntl(fds[0], F_GETFD), -1, "backend %u: open", b);
		cr_assert(peer_closed(fds[1]), "backend %u: no EOF", b);
		close(fds[1]);
	}
}

Test(close_detached, queued_with_nothing_in_flight_goes_out_at_destroy)
{
	for (unsigned b = 0; b < NBACKENDS; b++) {
		struct keel_loop_opts o = {.backend = backends[b]};
		struct keel_loop *loop = kt_loop_new(&o);
		int fds[2];

		kt_tcp_pair(fds);
		cr_assert_eq(keel_close_detached(loop, fds[0]), 0);
		keel_loop_destroy(loop);
		cr_assert_eq(fcntl(fds[0], F_GETFD), -1, "backend %u: open", b);
		close(fds[1]);
	}
}

Test(close_detached, bad_input)
{
	struct keel_loop *loop = kt_loop_new(NULL);

	cr_assert_eq(keel_close_detached(loop, -1), -EBADF);
	cr_assert_eq(keel_close_detached(loop, -EBADF), -EBADF);
	keel_loop_destroy(loop);
}
