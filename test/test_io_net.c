/* SPDX-License-Identifier: MIT */
/*
 * test_io_net.c: the socket ops over loopback TCP (127.0.0.1 only):
 * listen/accept/connect, socket through the ring, recv/send/send_all with a
 * 1 MiB payload checked byte for byte, end of stream, keel_close() of an fd
 * with a recv in flight, linked timeouts (expiry and not), a task that exits
 * with a recv in flight (a zombie until the kernel returns the op; also with
 * a linked timeout, and joined by its parent), a refused connection, an
 * accept that times out, and an op deadline taken by a send that ends at
 * once (it does not move on to the next op), and keel_poll on both
 * backends.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <keel.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "helpers/keel_test.h"

#define MIB (1024 * 1024)

/*
 * A transfer: the client connects and sends `len` bytes (pattern seed 1),
 * the server accepts, receives and checks them, sends `len` bytes back
 * (seed 2) and then expects end of stream when the client closes.
 */
struct side_result {
	int fd;		   /* accept / socket result */
	int connect;	   /* connect result (client) */
	int sent;	   /* send_all result */
	size_t got;	   /* bytes received */
	int pieces;	   /* recv calls that returned data */
	int last_recv;	   /* the recv that ended the receive loop */
	size_t mismatch;   /* first bad byte, or SIZE_MAX */
	int eof;	   /* the recv after the transfer (server) */
	int close;	   /* keel_close result */
	int peer_loopback; /* accept's address is 127.0.0.1 */
};

static struct side_result g_srv, g_cli;

struct xfer {
	struct keel_task task;
	int is_client;
	int ring_socket; /* client: socket through the ring */
	int lfd;
	int fd;
	size_t len;
	size_t got;
	char *tx;
	char *rx;
	struct sockaddr_storage addr;
	socklen_t addrlen;
	struct side_result *out;
};

static int xfer_step(struct keel_task *t);
static KEEL_TASK_TYPE(xfer_task, struct xfer, task, xfer_step);

static void small_buffers(int fd)
{
	int sz = 16384;

	/* Small socket buffers: sends go short, recvs come in pieces. */
	setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
	setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof(sz));
}

static int xfer_step(struct keel_task *t)
{
	struct xfer *x = keel_container_of(t, struct xfer, task);
	const struct sockaddr_in *sin;

	KEEL_BEGIN(t);
	if (x->is_client) {
		if (x->ring_socket) {
			KEEL_AWAIT(t,
				   keel_socket(t, AF_INET,
					       SOCK_STREAM | SOCK_CLOEXEC, 0));
			x->fd = keel_res(t);
		} else {
			x->fd = keel_tcp_socket(AF_INET);
		}
		x->out->fd = x->fd;
		if (x->fd < 0)
			KEEL_EXIT(t, 1);
		small_buffers(x->fd);
		KEEL_AWAIT(t,
			   keel_connect(t, x->fd, (struct sockaddr *)&x->addr,
					x->addrlen));
		x->out->connect = keel_res(t);
		if (keel_res(t) < 0)
			KEEL_EXIT(t, 1);
	} else {
		x->addrlen = sizeof(x->addr);
		KEEL_AWAIT(t,
			   keel_accept(t, x->lfd, (struct sockaddr *)&x->addr,
				       &x->addrlen, SOCK_CLOEXEC));
		x->fd = keel_res(t);
		x->out->fd = x->fd;
		if (x->fd < 0)
			KEEL_EXIT(t, 1);
		sin = (const struct sockaddr_in *)&x->addr;
		x->out->peer_loopback =
		    x->addrlen == sizeof(*sin) && sin->sin_family == AF_INET &&
		    sin->sin_addr.s_addr == htonl(INADDR_LOOPBACK);
	}

	/* The client sends first; the server receives first. */
	if (x->is_client && x->len) {
		KEEL_AWAIT(t, keel_send_all(t, x->fd, x->tx, x->len, 0));
		x->out->sent = keel_res(t);
	}
	x->got = 0;
	while (x->got < x->len) {
		KEEL_AWAIT(
		    t, keel_recv(t, x->fd, x->rx + x->got, x->len - x->got, 0));
		x->out->last_recv = keel_res(t);
		if (keel_res(t) <= 0)
			break;
		x->got += (size_t)keel_res(t);
		x->out->pieces++;
	}
	x->out->got = x->got;
	x->out->mismatch =
	    kt_pattern_mismatch(x->rx, x->got, 0, x->is_client ? 2 : 1);
	if (!x->is_client && x->len) {
		KEEL_AWAIT(t, keel_send_all(t, x->fd, x->tx, x->len, 0));
		x->out->sent = keel_res(t);
	}
	if (!x->is_client) {
		KEEL_AWAIT(t, keel_recv(t, x->fd, x->rx, 1, 0));
		x->out->eof = keel_res(t);
	}
	KEEL_AWAIT(t, keel_close(t, x->fd));
	x->out->close = keel_res(t);
	KEEL_END(t);
}

static void run_transfer(size_t len, int ring_socket)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	char *bufs = malloc(4 * (len ? len : 1));
	struct xfer *srv, *cli;
	uint16_t port;
	int lfd = kt_listen(&port);

	cr_assert_not_null(bufs);
	g_srv.eof = g_cli.eof = 12345;
	srv = kt_spawn(loop, &xfer_task, KEEL_PRIO_NORMAL);
	srv->lfd = lfd;
	srv->len = len;
	srv->tx = bufs;
	srv->rx = bufs + len;
	srv->out = &g_srv;
	kt_pattern_fill(srv->tx, len, 0, 2);
	cli = kt_spawn(loop, &xfer_task, KEEL_PRIO_NORMAL);
	cli->is_client = 1;
	cli->ring_socket = ring_socket;
	cli->len = len;
	cli->tx = bufs + 2 * len;
	cli->rx = bufs + 3 * len;
	cli->out = &g_cli;
	kt_pattern_fill(cli->tx, len, 0, 1);
	kt_loopback_addr(port, &cli->addr, &cli->addrlen);

	kt_loop_run(loop);
	cr_assert_eq(kt_stats(loop).ops_inflight, 0);
	cr_assert_eq(kt_stats(loop).tasks_live, 0);
	keel_loop_destroy(loop);
	close(lfd);
	free(bufs);

	cr_assert_geq(g_srv.fd, 0, "accept: %s", strerror(-g_srv.fd));
	cr_assert_geq(g_cli.fd, 0, "socket: %s", strerror(-g_cli.fd));
	cr_assert_eq(g_cli.connect, 0, "connect: %s", strerror(-g_cli.connect));
	cr_assert(g_srv.peer_loopback, "accept's address is not 127.0.0.1");
	cr_assert_eq(g_cli.close, 0);
	cr_assert_eq(g_srv.close, 0);
	cr_assert_eq(g_srv.eof, 0, "recv after the peer closed gave %d",
		     g_srv.eof);
}

Test(io_net, one_mib_crosses_loopback_both_ways_byte_for_byte, .timeout = 10)
{
	run_transfer(MIB, 0);
	cr_assert_eq(g_cli.sent, MIB, "client send_all: %d", g_cli.sent);
	cr_assert_eq(g_srv.sent, MIB, "server send_all: %d", g_srv.sent);
	cr_assert_eq(g_srv.got, MIB, "server got %zu (last recv %d)", g_srv.got,
		     g_srv.last_recv);
	cr_assert_eq(g_cli.got, MIB, "client got %zu (last recv %d)", g_cli.got,
		     g_cli.last_recv);
	cr_assert_eq(g_srv.mismatch, SIZE_MAX, "server: bad byte at %zu",
		     g_srv.mismatch);
	cr_assert_eq(g_cli.mismatch, SIZE_MAX, "client: bad byte at %zu",
		     g_cli.mismatch);
	cr_log_info("1 MiB came in %d and %d pieces", g_srv.pieces,
		    g_cli.pieces);
}

Test(io_net, socket_through_ring_connects_and_exchanges_data, .timeout = 10)
{
	run_transfer(4, 1);
	cr_assert_eq(g_cli.sent, 4);
	cr_assert_eq(g_srv.got, 4);
	cr_assert_eq(g_cli.got, 4);
	cr_assert_eq(g_srv.mismatch, SIZE_MAX);
	cr_assert_eq(g_cli.mismatch, SIZE_MAX);
}

Test(io_net, recv_returns_zero_when_peer_closes, .timeout = 10)
{
	/* No payload: the client connects and closes at once. */
	run_transfer(0, 0);
	cr_assert_eq(g_srv.pieces, 0);
}

/* Tasks on one end of a connected pair: a recv, a close, a late send. */
static struct kt_log g_log;
static int g_recv_res = 12345;
static int g_close_res = 12345;
static int g_recv_done;
static int g_had_to_unblock;
static char g_rx[16];
static uint64_t g_recv_ns;

enum { ROLE_RECV, ROLE_CLOSER, ROLE_LATE_SEND, ROLE_TIMED_RECV };

struct end {
	struct keel_task task;
	int role;
	int fd;
	int peer_fd;
	uint64_t delay;	  /* closer / sender: wait before acting */
	uint64_t timeout; /* timed recv: linked timeout of the first recv */
	int second;	  /* timed recv: then a recv without a timeout */
	int i;
	uint64_t t0;
	char buf[16];
};

static int end_step(struct keel_task *t);
static KEEL_TASK_TYPE(end_task, struct end, task, end_step);

static int end_step(struct keel_task *t)
{
	struct end *e = keel_container_of(t, struct end, task);

	KEEL_BEGIN(t);
	switch (e->role) {
	case ROLE_RECV:
		KEEL_AWAIT(t, keel_recv(t, e->fd, e->buf, sizeof(e->buf), 0));
		g_recv_res = keel_res(t);
		g_recv_done = 1;
		kt_log_push(&g_log, 1);
		break;
	case ROLE_CLOSER:
		KEEL_AWAIT(t, keel_sleep(t, e->delay));
		KEEL_AWAIT(t, keel_close(t, e->fd));
		g_close_res = keel_res(t);
		kt_log_push(&g_log, 2);
		/* If the recv was not cancelled, unblock it and say so. */
		for (e->i = 0; !g_recv_done && e->i < 200; e->i++)
			KEEL_AWAIT(t, keel_sleep(t, KT_MS(5)));
		if (!g_recv_done) {
			g_had_to_unblock = 1;
			if (write(e->peer_fd, "u", 1) != 1)
				g_had_to_unblock = 2;
		}
		break;
	case ROLE_LATE_SEND:
		KEEL_AWAIT(t, keel_sleep(t, e->delay));
		memcpy(e->buf, "late", 4);
		KEEL_AWAIT(t, keel_send(t, e->fd, e->buf, 4, 0));
		kt_log_push(&g_log, keel_res(t));
		break;
	case ROLE_TIMED_RECV:
		e->t0 = kt_now_ns();
		keel_op_timeout(t, e->timeout);
		KEEL_AWAIT(t, keel_recv(t, e->fd, e->buf, sizeof(e->buf), 0));
		g_recv_ns = kt_now_ns() - e->t0;
		g_recv_res = keel_res(t);
		if (g_recv_res > 0)
			memcpy(g_rx, e->buf, (size_t)g_recv_res);
		if (!e->second)
			break;
		/* The timeout was for that op only: this one waits. */
		KEEL_AWAIT(t, keel_recv(t, e->fd, e->buf, sizeof(e->buf), 0));
		kt_log_push(&g_log, keel_res(t));
		if (keel_res(t) > 0)
			memcpy(g_rx, e->buf, (size_t)keel_res(t));
		break;
	}
	KEEL_END(t);
}

static struct end *spawn_end(struct keel_loop *loop, int role, int fd)
{
	struct end *e = kt_spawn(loop, &end_task, KEEL_PRIO_NORMAL);

	e->role = role;
	e->fd = fd;
	return e;
}

Test(io_net, close_cancels_recv_in_flight_on_that_fd, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct end *closer;
	int fds[2];

	kt_tcp_pair(fds);
	spawn_end(loop, ROLE_RECV, fds[0]);
	closer = spawn_end(loop, ROLE_CLOSER, fds[0]);
	closer->delay = KT_MS(5);
	closer->peer_fd = fds[1];
	kt_loop_run(loop);
	cr_assert_eq(g_had_to_unblock, 0,
		     "keel_close left the recv in flight (it got %d)",
		     g_recv_res);
	cr_assert_eq(g_recv_res, -ECANCELED, "recv gave %d", g_recv_res);
	cr_assert_eq(g_close_res, 0, "close gave %d", g_close_res);
	/* The recv's owner hears of the cancel before the closer resumes. */
	kt_log_expect(&g_log, (const int[]){1, 2}, 2);
	cr_assert_eq(fcntl(fds[0], F_GETFD), -1, "fd still open");
	cr_assert_eq(kt_stats(loop).ops_inflight, 0);
	close(fds[1]);
	keel_loop_destroy(loop);
}

Test(io_net, linked_timeout_expires_idle_recv_with_etimedout, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct end *rx, *tx;
	int fds[2];

	kt_tcp_pair(fds);
	rx = spawn_end(loop, ROLE_TIMED_RECV, fds[0]);
	rx->timeout = KT_MS(10);
	rx->second = 1;
	/* Late enough that a timeout leaking onto the 2nd recv would fire. */
	tx = spawn_end(loop, ROLE_LATE_SEND, fds[1]);
	tx->delay = KT_MS(60);
	kt_loop_run(loop);
	cr_assert_eq(g_recv_res, -ETIMEDOUT, "recv gave %d", g_recv_res);
	cr_assert_geq(g_recv_ns, KT_MS(10), "timed out after %lu ns",
		      (unsigned long)g_recv_ns);
	/* The sender sent 4, then the second recv got them. */
	kt_log_expect(&g_log, (const int[]){4, 4}, 2);
	cr_assert_arr_eq(g_rx, "late", 4);
	cr_assert_eq(kt_stats(loop).ops_inflight, 0);
	close(fds[0]);
	close(fds[1]);
	keel_loop_destroy(loop);
}

Test(io_net, linked_timeout_not_reached_leaves_recv_result, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct end *rx, *tx;
	int fds[2];

	kt_tcp_pair(fds);
	/*
	 * 30 s: if the loop waited for the linked timeout's own completion,
	 * the test's 10 s timeout would catch it.
	 */
	rx = spawn_end(loop, ROLE_TIMED_RECV, fds[0]);
	rx->timeout = KT_MS(30000);
	tx = spawn_end(loop, ROLE_LATE_SEND, fds[1]);
	tx->delay = KT_MS(5);
	kt_loop_run(loop);
	cr_assert_eq(g_recv_res, 4, "recv gave %d", g_recv_res);
	cr_assert_arr_eq(g_rx, "late", 4);
	cr_assert_eq(kt_stats(loop).ops_inflight, 0);
	close(fds[0]);
	close(fds[1]);
	keel_loop_destroy(loop);
}

/*
 * A task that exits with its recv in flight: it becomes a zombie, and its
 * frame (which holds the recv's buffer) must outlive it until the kernel
 * has returned the op. Under ASan a use after free of the frame shows.
 */
struct quitter {
	struct keel_task task;
	int fd;
	int linked; /* give the recv a (long) linked timeout */
	char buf[256];
};

static int g_not_pending;

static int quitter_step(struct keel_task *t)
{
	struct quitter *q = keel_container_of(t, struct quitter, task);

	/* One step, no await: exit with the recv still in flight. */
	if (q->linked)
		keel_op_timeout(t, KT_MS(30000));
	if (keel_recv(t, q->fd, q->buf, sizeof(q->buf), 0) == KEEL_PENDING)
		KEEL_EXIT(t, 0);
	g_not_pending = 1;
	KEEL_EXIT(t, 1);
}

static KEEL_TASK_TYPE(quitter_task, struct quitter, task, quitter_step);

/* Runs right after the quitter, in the same turn: snapshots the stats. */
static struct keel_loop_stats g_seen;

struct watcher {
	struct keel_task task;
	int peer_fd; /* >= 0: also send the quitter's recv some data */
};

static int watcher_step(struct keel_task *t)
{
	struct watcher *w = keel_container_of(t, struct watcher, task);

	keel_loop_stats(keel_task_loop(t), &g_seen);
	if (w->peer_fd >= 0 && write(w->peer_fd, "zz", 2) != 2)
		g_not_pending = 2;
	KEEL_EXIT(t, 0);
}

static KEEL_TASK_TYPE(watcher_task, struct watcher, task, watcher_step);

static void run_quitter(int send_data, int linked)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_loop_stats s;
	struct quitter *q;
	struct watcher *w;
	uint64_t deadline;
	int fds[2];

	kt_tcp_pair(fds);
	q = kt_spawn(loop, &quitter_task, KEEL_PRIO_NORMAL);
	q->fd = fds[0];
	q->linked = linked;
	w = kt_spawn(loop, &watcher_task, KEEL_PRIO_NORMAL);
	w->peer_fd = send_data ? fds[1] : -1;

	/* Step until the zombie is gone; unblock it (and fail) after 2 s. */
	deadline = kt_now_ns() + KT_MS(2000);
	do {
		cr_assert_geq(keel_loop_step(loop, KT_MS(10)), 0);
		s = kt_stats(loop);
	} while (s.zombies && kt_now_ns() < deadline);
	if (s.zombies && write(fds[1], "u", 1) == 1)
		kt_loop_run(loop);
	cr_assert_eq(s.zombies, 0, "the zombie's recv was never cancelled");
	kt_loop_run(loop);

	cr_assert_eq(g_not_pending, 0);
	/* The watcher saw the quitter exited, its frame still held. */
	cr_assert_eq(g_seen.zombies, 1, "zombies = %lu",
		     (unsigned long)g_seen.zombies);
	cr_assert_eq(g_seen.exited, 1);
	cr_assert_eq(g_seen.tasks_live, 1, "only the watcher is live");
	cr_assert_geq(g_seen.ops_inflight, 1);
	/* And once the kernel returned the op, all is released. */
	s = kt_stats(loop);
	cr_assert_eq(s.zombies, 0);
	cr_assert_eq(s.ops_inflight, 0);
	cr_assert_eq(s.tasks_live, 0);
	cr_assert_eq(s.exited, 2);
	close(fds[0]);
	close(fds[1]);
	keel_loop_destroy(loop);
}

Test(io_net, task_exiting_with_recv_in_flight_is_zombie_until_cqe,
     .timeout = 10)
{
	run_quitter(0, 0);
}

Test(io_net, zombie_recv_with_linked_timeout_is_cancelled_with_it,
     .timeout = 10)
{
	/* The 30 s linked timeout must go with the recv, not hold the loop. */
	run_quitter(0, 1);
}

Test(io_net, zombie_frame_survives_recv_that_completes_with_data, .timeout = 10)
{
	run_quitter(1, 0);
}

/* A joinable task that exits with a recv in flight, joined by its parent. */
struct quit_parent {
	struct keel_task task;
	int fd;
	struct quitter *q;
};

static int quit_parent_step(struct keel_task *t);
static KEEL_TASK_TYPE(quit_parent_task, struct quit_parent, task,
		      quit_parent_step);

static int quit_parent_step(struct keel_task *t)
{
	struct quit_parent *p = keel_container_of(t, struct quit_parent, task);

	KEEL_BEGIN(t);
	p->q = keel_spawn(keel_task_loop(t), &quitter_task,
			  KEEL_PRIO_NORMAL | KEEL_SPAWN_JOINABLE);
	if (!p->q)
		KEEL_EXIT(t, 1);
	p->q->fd = p->fd;
	p->q->buf[0] = 7;
	KEEL_YIELD(t);
	KEEL_AWAIT(t, keel_join(t, keel_task_of(&quitter_task, p->q)));
	kt_log_push(&g_log, keel_res(t));
	KEEL_END(t);
}

Test(io_net, joined_zombie_is_freed_only_after_its_last_cqe, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct quit_parent *p;
	struct keel_loop_stats s;
	int fds[2];

	kt_tcp_pair(fds);
	p = kt_spawn(loop, &quit_parent_task, KEEL_PRIO_NORMAL);
	p->fd = fds[0];
	kt_loop_run(loop);
	/* The join gave the quitter's exit status, 0. */
	kt_log_expect(&g_log, (const int[]){0}, 1);
	cr_assert_eq(g_not_pending, 0);
	s = kt_stats(loop);
	cr_assert_eq(s.zombies, 0);
	cr_assert_eq(s.ops_inflight, 0);
	cr_assert_eq(s.exited, 2);
	close(fds[0]);
	close(fds[1]);
	keel_loop_destroy(loop);
}

/* Connect to a port nobody listens on; accept with no client. */
struct lonely {
	struct keel_task task;
	int accept_fd; /* >= 0: accept on it with a 10 ms timeout */
	int fd;
	struct sockaddr_storage addr;
	socklen_t addrlen;
};

static int lonely_step(struct keel_task *t);
static KEEL_TASK_TYPE(lonely_task, struct lonely, task, lonely_step);

static int lonely_step(struct keel_task *t)
{
	struct lonely *l = keel_container_of(t, struct lonely, task);

	KEEL_BEGIN(t);
	if (l->accept_fd >= 0) {
		keel_op_timeout(t, KT_MS(10));
		KEEL_AWAIT(t, keel_accept(t, l->accept_fd, NULL, NULL, 0));
		kt_log_push(&g_log, keel_res(t));
		KEEL_END(t);
	}
	l->fd = keel_tcp_socket(AF_INET);
	if (l->fd < 0)
		KEEL_EXIT(t, 1);
	KEEL_AWAIT(
	    t, keel_connect(t, l->fd, (struct sockaddr *)&l->addr, l->addrlen));
	kt_log_push(&g_log, keel_res(t));
	KEEL_AWAIT(t, keel_close(t, l->fd));
	kt_log_push(&g_log, keel_res(t));
	KEEL_END(t);
}

Test(io_net, connect_to_closed_port_gives_econnrefused, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct lonely *l;
	uint16_t port;

	/* A port that was just bound, then released: nobody listens. */
	close(kt_listen(&port));
	l = kt_spawn(loop, &lonely_task, KEEL_PRIO_NORMAL);
	l->accept_fd = -1;
	kt_loopback_addr(port, &l->addr, &l->addrlen);
	kt_loop_run(loop);
	kt_log_expect(&g_log, (const int[]){-ECONNREFUSED, 0}, 2);
	keel_loop_destroy(loop);
}

Test(io_net, accept_with_linked_timeout_and_no_client_times_out, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct lonely *l;
	uint16_t port;
	int lfd = kt_listen(&port);

	l = kt_spawn(loop, &lonely_task, KEEL_PRIO_NORMAL);
	l->accept_fd = lfd;
	kt_loop_run(loop);
	kt_log_expect(&g_log, (const int[]){-ETIMEDOUT}, 1);
	cr_assert_eq(kt_stats(loop).ops_inflight, 0);
	close(lfd);
	keel_loop_destroy(loop);
}

/*
 * keel_op_timeout() before a send_all that ends at once (nothing to send):
 * the deadline was that send's, so the sleep after it runs its full time
 * instead of being cut short by it.
 */
struct untimed {
	struct keel_task task;
	int fd;
};

static int untimed_step(struct keel_task *t);
static KEEL_TASK_TYPE(untimed_task, struct untimed, task, untimed_step);

static int untimed_step(struct keel_task *t)
{
	struct untimed *u = keel_container_of(t, struct untimed, task);

	KEEL_BEGIN(t);
	keel_op_timeout(t, KT_MS(1));
	KEEL_AWAIT(t, keel_send_all(t, u->fd, "", 0, 0));
	kt_log_push(&g_log, keel_res(t));
	KEEL_AWAIT(t, keel_sleep(t, KT_MS(20)));
	kt_log_push(&g_log, keel_res(t));
	KEEL_END(t);
}

Test(io_net, op_timeout_is_taken_by_an_op_that_ends_at_once, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct untimed *u;
	int fds[2];

	kt_tcp_pair(fds);
	u = kt_spawn(loop, &untimed_task, KEEL_PRIO_NORMAL);
	u->fd = fds[0];
	kt_loop_run(loop);
	kt_log_expect(&g_log, (const int[]){0, 0}, 2);
	cr_assert_eq(kt_stats(loop).ops_inflight, 0);
	close(fds[0]);
	close(fds[1]);
	keel_loop_destroy(loop);
}

/*
 * keel_poll (one POLL_ADD), on io_uring and on the epoll backend: a
 * connected socket is writable at once; readable only once the peer
 * wrote, and the poll waits until then (the peer writes from a second
 * task after the first poll was queued); keel_poll never reads.
 */
static int g_poll_out, g_poll_in, g_poll_after;

struct poller {
	struct keel_task task;
	int fd;
	int peer;
};

struct poke {
	struct keel_task task;
	int fd;
};

static int poke_step(struct keel_task *t)
{
	struct poke *p = keel_container_of(t, struct poke, task);

	KEEL_BEGIN(t);
	KEEL_YIELD(t);
	cr_assert_eq(g_poll_in, -1, "the poll ended before the peer wrote");
	cr_assert_eq(write(p->fd, "x", 1), 1);
	KEEL_END(t);
}
static KEEL_TASK_TYPE(poke_task, struct poke, task, poke_step);

static int poller_step(struct keel_task *t)
{
	struct poller *p = keel_container_of(t, struct poller, task);
	struct poke *k;

	KEEL_BEGIN(t);
	KEEL_AWAIT(t, keel_poll(t, p->fd, POLLOUT));
	g_poll_out = keel_res(t);
	k = keel_spawn(keel_task_loop(t), &poke_task, KEEL_PRIO_NORMAL);
	cr_assert(k);
	k->fd = p->peer;
	g_poll_in = -1;
	KEEL_AWAIT(t, keel_poll(t, p->fd, POLLIN));
	g_poll_in = keel_res(t);
	KEEL_AWAIT(t, keel_poll(t, p->fd, POLLIN));
	g_poll_after = keel_res(t); /* the byte is still there */
	KEEL_END(t);
}
static KEEL_TASK_TYPE(poller_task, struct poller, task, poller_step);

static void poll_on(unsigned backend)
{
	struct keel_loop_opts o = {.backend = backend};
	struct keel_loop *loop = kt_loop_new(&o);
	struct poller *p = kt_spawn(loop, &poller_task, KEEL_PRIO_NORMAL);
	int fds[2];

	kt_tcp_pair(fds);
	p->fd = fds[0];
	p->peer = fds[1];
	kt_loop_run(loop);
	cr_assert(g_poll_out & POLLOUT, "POLLOUT: %d", g_poll_out);
	cr_assert(g_poll_in > 0 && (g_poll_in & POLLIN), "POLLIN: %d",
		  g_poll_in);
	cr_assert(g_poll_after & POLLIN);
	keel_loop_destroy(loop);
	close(fds[0]);
	close(fds[1]);
}

Test(io_net, poll_waits_for_readiness_io_uring, .timeout = 10)
{
	poll_on(KEEL_BACKEND_IO_URING);
}

Test(io_net, poll_waits_for_readiness_epoll, .timeout = 10)
{
	poll_on(KEEL_BACKEND_EPOLL);
}
