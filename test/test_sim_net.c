/* SPDX-License-Identifier: MIT */
/*
 * test_sim_net.c: the simulated kernel's objects on their own, without a
 * ring: sockets on the loopback (listen backlog, connect/accept, bounded
 * buffers, short transfers, half-close, close and reset), pipes, and the
 * in-memory file system. Each test drives struct sim_file_ops directly and
 * checks results, readiness (poll), wake-ups and the byte counters, and
 * the entry points the engine and keel/sim.h call.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <keel.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>

#include "model.h"

#include "sim.h"

#define SNDBUF 4096

/* A machine of its own per test; the models are driven directly. */
static struct keel_sim *g_sim;
static struct keel__sim *g_s;
static struct sim_net *g_n;
static struct sim_fs *g_fs;

static void setup(void)
{
	struct keel_sim_opts o = {.seed = 7, .sndbuf = SNDBUF};

	cr_assert_eq(keel_sim_create(&g_sim, &o), 0);
	g_s = (struct keel__sim *)g_sim;
	g_n = sim__net(g_s);
	g_fs = sim__fs(g_s);
	cr_assert(g_n && g_fs);
}

static void teardown(void)
{
	keel_sim_destroy(g_sim);
}

TestSuite(sim_net, .init = setup, .fini = teardown);

static struct sockaddr_in inet_addr_of(uint16_t port)
{
	struct sockaddr_in in = {.sin_family = AF_INET,
				 .sin_port = htons(port)};

	in.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	return in;
}

static struct sim_file *listener(uint16_t port, int backlog)
{
	struct sockaddr_in in = inet_addr_of(port);
	struct sim_file *l = NULL;

	cr_assert_eq(sim__sock_listen(g_n, (struct sockaddr *)&in, sizeof(in),
				      backlog, &l),
		     0);
	cr_assert_eq(l->refs, 1);
	return l;
}

static struct sim_file *sock(void)
{
	struct sim_file *s = NULL;

	cr_assert_eq(sim__sock_create(g_n, AF_INET, SOCK_STREAM, &s), 0);
	return s;
}

static int connect_to(struct sim_file *s, uint16_t port)
{
	struct sockaddr_in in = inet_addr_of(port);

	return s->ops->connect(s, (struct sockaddr *)&in, sizeof(in));
}

static struct sim_file *accept_one(struct sim_file *l)
{
	struct sim_file *c = NULL;

	cr_assert_eq(l->ops->accept(l, &c), 0);
	cr_assert_not_null(c);
	return c;
}

/* A connected pair on a fresh listener: client and server ends. */
static void pair(struct sim_file **client, struct sim_file **server)
{
	static uint16_t port = 9000;
	struct sim_file *l = listener(port, 8);

	*client = sock();
	cr_assert_eq(connect_to(*client, port), 0);
	*server = accept_one(l);
	l->ops->release(l);
	port++;
}

static void release(struct sim_file *f)
{
	sim__file_put(f);
}

static int send_str(struct sim_file *f, const char *s)
{
	return f->ops->send(f, s, strlen(s), MSG_NOSIGNAL);
}

static void expect_recv(struct sim_file *f, const char *want)
{
	char buf[256];
	int n = f->ops->recv(f, buf, sizeof(buf), 0);

	cr_assert_eq(n, (int)strlen(want), "recv gave %d, expected %zu", n,
		     strlen(want));
	cr_assert(!memcmp(buf, want, strlen(want)));
}

static int recv_res(struct sim_file *f)
{
	char buf[256];

	return f->ops->recv(f, buf, sizeof(buf), 0);
}

static void expect_net_ok(void)
{
	char why[160];

	cr_assert_eq(sim__net_check(g_n, why, sizeof(why)), 0, "%s", why);
}

Test(sim_net, connect_without_listener_is_refused)
{
	struct sim_file *s = sock();

	cr_expect_eq(connect_to(s, 4242), -ECONNREFUSED);
	cr_expect_eq(recv_res(s), -ENOTCONN);
	cr_expect_eq(send_str(s, "x"), -EPIPE);
	release(s);
	expect_net_ok();
}

Test(sim_net, connect_and_accept_pair_with_addresses)
{
	struct sim_file *l = listener(8080, 4);
	struct sim_file *c = sock(), *a = NULL;

	cr_expect_eq(l->ops->accept(l, &a), -EAGAIN);
	cr_expect_eq(l->ops->poll(l) & POLLIN, 0);
	cr_assert_eq(connect_to(c, 8080), 0);
	cr_expect_eq(g_n->conns, 1);
	cr_expect(l->ops->poll(l) & POLLIN);
	a = accept_one(l);
	cr_expect_eq(l->ops->accept(l, &a), -EAGAIN);

	struct sockaddr_in cl, cp, al, ap;
	socklen_t len = sizeof(cl);

	cr_assert_eq(sim__sock_name(c, false, (struct sockaddr *)&cl, &len), 0);
	cr_expect_eq(len, sizeof(cl));
	len = sizeof(cp);
	cr_assert_eq(sim__sock_name(c, true, (struct sockaddr *)&cp, &len), 0);
	len = sizeof(al);
	cr_assert_eq(sim__sock_name(a, false, (struct sockaddr *)&al, &len), 0);
	len = sizeof(ap);
	cr_assert_eq(sim__sock_name(a, true, (struct sockaddr *)&ap, &len), 0);
	cr_expect_eq(ntohs(cp.sin_port), 8080);
	cr_expect_eq(ntohs(al.sin_port), 8080);
	cr_expect_eq(ap.sin_port, cl.sin_port);
	cr_expect_neq(ntohs(cl.sin_port), 8080);
	cr_expect_eq(ap.sin_addr.s_addr, htonl(INADDR_LOOPBACK));
	cr_expect_eq(connect_to(c, 8080), -EISCONN);
	cr_expect(c->ops->poll(c) & POLLOUT);

	cr_expect_eq(send_str(c, "ping"), 4);
	expect_recv(a, "ping");
	cr_expect_eq(send_str(a, "pong"), 4);
	expect_recv(c, "pong");
	release(c);
	release(a);
	release(l);
	expect_net_ok();
}

Test(sim_net, listen_on_a_taken_port_fails)
{
	struct sim_file *l = listener(8081, 1), *l2 = NULL;
	struct sockaddr_in in = inet_addr_of(8081);

	cr_expect_eq(
	    sim__sock_listen(g_n, (struct sockaddr *)&in, sizeof(in), 1, &l2),
	    -EADDRINUSE);
	release(l);
}

/* Linux queues backlog + 1; a connect beyond waits for an accept. */
Test(sim_net, connect_beyond_backlog_waits_for_accept)
{
	struct sim_file *l = listener(8082, 1);
	struct sim_file *c[3];

	for (int i = 0; i < 3; i++)
		c[i] = sock();
	cr_expect_eq(connect_to(c[0], 8082), 0);
	cr_expect_eq(connect_to(c[1], 8082), 0);
	cr_expect_eq(connect_to(c[2], 8082), -EAGAIN);
	cr_expect_eq(c[2]->ops->connect(c[2], NULL, 0), -EAGAIN);
	cr_expect_eq(send_str(c[2], "x"), -EAGAIN);
	cr_expect_eq(g_n->conns, 2);

	unsigned w = g_n->wakes;
	struct sim_file *a0 = accept_one(l);

	cr_expect_gt(g_n->wakes, w, "the waiting connect is woken");
	cr_expect_eq(g_n->conns, 3);
	/* The retry of the waiting connect reports it, once. */
	cr_expect_eq(c[2]->ops->connect(c[2], NULL, 0), 0);
	cr_expect_eq(connect_to(c[2], 8082), -EISCONN);
	cr_expect_eq(send_str(c[2], "third"), 5);

	struct sim_file *a1 = accept_one(l), *a2 = accept_one(l);

	expect_recv(a2, "third");
	release(a0);
	release(a1);
	release(a2);
	for (int i = 0; i < 3; i++)
		release(c[i]);
	release(l);
	expect_net_ok();
}

Test(sim_net, closing_a_listener_resets_queued_and_refuses_waiting)
{
	struct sim_file *l = listener(8083, 0);
	struct sim_file *queued = sock(), *waiting = sock();

	cr_assert_eq(connect_to(queued, 8083), 0);
	cr_assert_eq(connect_to(waiting, 8083), -EAGAIN);
	cr_expect_eq(send_str(queued, "lost"), 4);
	release(l);

	cr_expect_eq(recv_res(queued), -ECONNRESET);
	cr_expect_eq(send_str(queued, "x"), -EPIPE);
	cr_expect_eq(recv_res(queued), 0);
	cr_expect_eq(waiting->ops->connect(waiting, NULL, 0), -ECONNREFUSED);

	struct sim_conn_bytes out, in;

	cr_assert_eq(sim__sock_bytes(queued, &out, &in), 0);
	cr_expect_eq(out.sent, 4);
	cr_expect_eq(out.lost, 4);
	cr_expect_eq(g_n->bytes.lost, 4);
	release(queued);
	release(waiting);
	expect_net_ok();
}

Test(sim_net, full_buffer_makes_send_wait_until_the_peer_reads)
{
	struct sim_file *c, *s;
	static char big[3 * SNDBUF], sink[3 * SNDBUF];

	pair(&c, &s);
	memset(big, 'a', sizeof(big));
	cr_expect_eq(c->ops->send(c, big, sizeof(big), 0), SNDBUF,
		     "a send takes what fits");
	cr_expect_eq(c->ops->send(c, big, 1, 0), -EAGAIN);
	cr_expect_eq(c->ops->poll(c) & POLLOUT, 0);

	unsigned w = g_n->wakes;

	cr_expect_eq(s->ops->recv(s, sink, 100, 0), 100);
	cr_expect_gt(g_n->wakes, w, "the sender is woken");
	cr_expect(c->ops->poll(c) & POLLOUT);
	cr_expect_eq(c->ops->send(c, big, sizeof(big), 0), 100);
	cr_expect_eq(s->ops->recv(s, sink, sizeof(sink), 0), SNDBUF,
		     "a recv takes what is there");
	cr_expect_eq(recv_res(s), -EAGAIN);
	release(c);
	release(s);
	expect_net_ok();
}

Test(sim_net, short_ppm_cuts_transfers_short)
{
	struct sim_file *c, *s;
	char buf[64], out[64];

	g_n->short_ppm = 1000000;
	pair(&c, &s);
	memset(buf, 'b', sizeof(buf));
	for (int i = 0; i < 20; i++) {
		int n = c->ops->send(c, buf, sizeof(buf), 0);

		cr_assert(n >= 1 && n < (int)sizeof(buf), "send %d", n);
		int total = 0;

		while (total < n) {
			int k = s->ops->recv(s, out, sizeof(out), 0);

			cr_assert(k >= 1 && k <= n - total, "recv %d", k);
			total += k;
		}
		cr_expect_eq(s->ops->recv(s, out, sizeof(out), 0), -EAGAIN);
	}
	/* One byte cannot be cut. */
	cr_expect_eq(c->ops->send(c, buf, 1, 0), 1);
	cr_expect_eq(s->ops->recv(s, out, 1, 0), 1);
	release(c);
	release(s);
	expect_net_ok();
}

Test(sim_net, shutdown_wr_gives_the_peer_the_rest_then_eof)
{
	struct sim_file *c, *s;

	pair(&c, &s);
	cr_expect_eq(send_str(c, "tail"), 4);
	cr_expect_eq(c->ops->shutdown(c, SHUT_WR), 0);
	cr_expect_eq(send_str(c, "x"), -EPIPE);
	cr_expect(s->ops->poll(s) & POLLRDHUP);
	expect_recv(s, "tail");
	cr_expect_eq(recv_res(s), 0);
	cr_expect_eq(recv_res(s), 0);
	/* The other direction still works. */
	cr_expect_eq(send_str(s, "back"), 4);
	expect_recv(c, "back");
	cr_expect_eq(c->ops->shutdown(c, 42), -EINVAL);
	release(s);
	cr_expect_eq(recv_res(c), 0, "then the peer's close: EOF");
	release(c);
	expect_net_ok();
}

Test(sim_net, close_gives_the_peer_eof_then_a_send_draws_an_rst)
{
	struct sim_file *c, *s;

	pair(&c, &s);
	cr_expect_eq(send_str(s, "bye"), 3);
	release(s);
	expect_recv(c, "bye");
	cr_expect_eq(recv_res(c), 0);
	/* The first send reaches a closed socket: accepted, and lost. */
	cr_expect_eq(send_str(c, "late"), 4);
	cr_expect_eq(send_str(c, "x"), -EPIPE);
	cr_expect_eq(send_str(c, "x"), -EPIPE);
	cr_expect_eq(recv_res(c), 0);
	cr_expect_eq(g_n->bytes.lost, 4);
	release(c);
	expect_net_ok();
}

Test(sim_net, close_with_unread_data_resets_the_peer)
{
	struct sim_file *c, *s;

	pair(&c, &s);
	cr_expect_eq(send_str(c, "unread"), 6);
	cr_expect_eq(send_str(s, "for c"), 5);
	release(s);
	cr_expect(c->ops->poll(c) & POLLERR);
	/* What had arrived is still readable, then the reset. */
	expect_recv(c, "for c");
	cr_expect_eq(recv_res(c), -ECONNRESET);
	cr_expect_eq(recv_res(c), 0);
	cr_expect_eq(send_str(c, "x"), -EPIPE);

	struct sim_conn_bytes out, in;

	cr_assert_eq(sim__sock_bytes(c, &out, &in), 0);
	cr_expect_eq(out.sent, 6);
	cr_expect_eq(out.received, 0);
	cr_expect_eq(out.lost, 6);
	cr_expect_eq(in.sent, 5);
	cr_expect_eq(in.received, 5);
	cr_expect_eq(in.lost, 0);
	release(c);
	expect_net_ok();
}

Test(sim_net, send_after_reset_reports_the_reset_then_epipe)
{
	struct sim_file *c, *s;

	pair(&c, &s);
	cr_expect_eq(send_str(c, "unread"), 6);
	release(s);
	cr_expect_eq(send_str(c, "x"), -ECONNRESET);
	cr_expect_eq(send_str(c, "x"), -EPIPE);
	cr_expect_eq(recv_res(c), 0);
	release(c);
	expect_net_ok();
}

Test(sim_net, injected_reset_hits_both_ends)
{
	struct sim_file *c, *s;

	pair(&c, &s);
	cr_expect_eq(send_str(c, "queued"), 6);
	cr_expect_eq(sim__sock_reset(c), 0);
	cr_expect_eq(sim__sock_reset(c), -ENOTCONN);
	expect_recv(s, "queued");
	cr_expect_eq(recv_res(s), -ECONNRESET);
	cr_expect_eq(send_str(s, "x"), -EPIPE);
	cr_expect_eq(recv_res(c), -ECONNRESET);
	cr_expect_eq(send_str(c, "x"), -EPIPE);
	cr_expect(c->ops->poll(c) & POLLHUP);
	release(c);
	release(s);
	expect_net_ok();
}

Test(sim_net, reset_after_the_peers_fin_reports_epipe)
{
	struct sim_file *c, *s;

	pair(&c, &s);
	cr_expect_eq(s->ops->shutdown(s, SHUT_WR), 0);
	cr_expect_eq(sim__sock_reset(s), 0);
	/* c was in CLOSE_WAIT: tcp_reset reports EPIPE; its recv sees the
	 * FIN first (0). */
	cr_expect_eq(recv_res(c), 0);
	cr_expect_eq(send_str(c, "x"), -EPIPE);
	release(c);
	release(s);
}

Test(sim_net, peek_leaves_the_data)
{
	struct sim_file *c, *s;
	char buf[8];

	pair(&c, &s);
	cr_expect_eq(send_str(c, "abc"), 3);
	cr_expect_eq(s->ops->recv(s, buf, sizeof(buf), MSG_PEEK), 3);
	cr_expect_eq(g_n->bytes.received, 0);
	expect_recv(s, "abc");
	cr_expect_eq(g_n->bytes.received, 3);
	release(c);
	release(s);
	expect_net_ok();
}

Test(sim_net, read_and_write_on_a_socket_are_recv_and_send)
{
	struct sim_file *c, *s;
	char buf[8];

	pair(&c, &s);
	cr_expect_eq(c->ops->write(c, "hi", 2, -1), 2);
	cr_expect_eq(s->ops->read(s, buf, sizeof(buf), 0), 2);
	cr_expect_eq(s->ops->fsync(s), -EINVAL);
	release(c);
	release(s);
}

Test(sim_net, byte_counters_add_up_on_a_transfer)
{
	struct sim_file *c, *s;
	static char data[20000], got[20000];
	size_t sent = 0, recvd = 0;

	g_n->short_ppm = 300000;
	pair(&c, &s);
	for (size_t i = 0; i < sizeof(data); i++)
		data[i] = (char)(i * 7);
	while (recvd < sizeof(data)) {
		int n = c->ops->send(c, data + sent, sizeof(data) - sent, 0);

		if (n > 0)
			sent += (size_t)n;
		else
			cr_assert(n == -EAGAIN || sent == sizeof(data));
		const struct sim_bytes *b = &g_n->bytes;

		cr_assert_eq(b->sent, b->received + b->lost + b->buffered);
		cr_assert_eq(b->buffered, sent - recvd);
		n = s->ops->recv(s, got + recvd, sizeof(got) - recvd, 0);
		if (n > 0)
			recvd += (size_t)n;
	}
	cr_expect(!memcmp(data, got, sizeof(data)));

	struct sim_conn_bytes out, in;

	cr_assert_eq(sim__sock_bytes(c, &out, &in), 0);
	cr_expect_eq(out.sent, sizeof(data));
	cr_expect_eq(out.received, sizeof(data));
	cr_expect_eq(out.lost, 0);
	cr_expect_eq(g_n->bytes.sent, sizeof(data));
	cr_expect_eq(g_n->bytes.buffered, 0);
	release(c);
	release(s);
	expect_net_ok();
}

Test(sim_net, check_reports_open_sockets)
{
	struct sim_file *s = sock();
	char why[160];

	cr_expect_eq(sim__net_check(g_n, why, sizeof(why)), -1);
	cr_expect(strstr(why, "open"), "%s", why);
	release(s);
	expect_net_ok();
}

Test(sim_net, unix_sockets_connect_by_path)
{
	struct sockaddr_un un = {.sun_family = AF_UNIX};
	struct sim_file *l = NULL, *c = NULL;

	strcpy(un.sun_path, "/run/sim.sock");
	cr_assert_eq(
	    sim__sock_listen(g_n, (struct sockaddr *)&un, sizeof(un), 4, &l),
	    0);
	cr_assert_eq(sim__sock_create(g_n, AF_UNIX, SOCK_STREAM, &c), 0);
	cr_expect_eq(c->ops->connect(c, (struct sockaddr *)&un, sizeof(un)), 0);

	struct sim_file *a = accept_one(l);
	struct sockaddr_un name;
	socklen_t len = sizeof(name);

	cr_assert_eq(sim__sock_name(c, true, (struct sockaddr *)&name, &len),
		     0);
	cr_expect_str_eq(name.sun_path, "/run/sim.sock");
	cr_expect_eq(send_str(a, "u"), 1);
	expect_recv(c, "u");

	struct sockaddr_in in = inet_addr_of(1);
	struct sim_file *c2 = NULL;

	cr_assert_eq(sim__sock_create(g_n, AF_UNIX, SOCK_STREAM, &c2), 0);
	cr_expect_eq(c2->ops->connect(c2, (struct sockaddr *)&in, sizeof(in)),
		     -EAFNOSUPPORT);
	release(c2);
	release(a);
	release(c);
	release(l);
	expect_net_ok();
}

Test(sim_net, unaccept_keeps_the_connection_queued)
{
	struct sim_file *l = listener(8084, 1), *c = sock();

	cr_assert_eq(connect_to(c, 8084), 0);
	struct sim_file *a = accept_one(l);

	cr_expect_eq(sim__sock_unaccept(l, a), 0);
	cr_expect(l->ops->poll(l) & POLLIN);
	struct sim_file *again = accept_one(l);

	cr_expect_eq(again, a);
	release(a);
	release(c);
	release(l);
	expect_net_ok();
}

Test(sim_net, bad_socket_arguments)
{
	struct sim_file *s = NULL;

	cr_expect_eq(sim__sock_create(g_n, AF_PACKET, SOCK_STREAM, &s),
		     -EAFNOSUPPORT);
	cr_expect_eq(sim__sock_create(g_n, AF_INET, SOCK_DGRAM, &s), -EINVAL);
	s = sock();
	struct sockaddr_in in = inet_addr_of(80);

	cr_expect_eq(s->ops->connect(s, (struct sockaddr *)&in, 4), -EINVAL);
	cr_expect_eq(s->ops->shutdown(s, SHUT_WR), -ENOTCONN);
	struct sim_file *out = NULL;

	cr_expect_eq(s->ops->accept(s, &out), -EINVAL);
	release(s);
	expect_net_ok();
}

/* Pipes. */

static void make_pipe(struct sim_file **rd, struct sim_file **wr)
{
	cr_assert_eq(sim__pipe_create(g_n, rd, wr), 0);
}

Test(sim_net, pipe_carries_bytes_then_eof)
{
	struct sim_file *rd, *wr;
	char buf[16];

	make_pipe(&rd, &wr);
	cr_expect_eq(rd->ops->read(rd, buf, sizeof(buf), -1), -EAGAIN);
	cr_expect_eq(wr->ops->write(wr, "hello", 5, -1), 5);
	cr_expect(rd->ops->poll(rd) & POLLIN);
	cr_expect_eq(rd->ops->read(rd, buf, sizeof(buf), -1), 5);
	cr_expect(!memcmp(buf, "hello", 5));
	cr_expect_eq(wr->ops->read(wr, buf, 1, -1), -EBADF);
	cr_expect_eq(rd->ops->write(rd, "x", 1, -1), -EBADF);
	cr_expect_null(rd->ops->recv, "recv on a pipe: the engine's -ENOTSOCK");
	cr_expect_eq(wr->ops->write(wr, "end", 3, -1), 3);

	unsigned w = g_n->wakes;

	release(wr);
	cr_expect_gt(g_n->wakes, w);
	cr_expect(rd->ops->poll(rd) & POLLHUP);
	cr_expect_eq(rd->ops->read(rd, buf, sizeof(buf), -1), 3);
	cr_expect_eq(rd->ops->read(rd, buf, sizeof(buf), -1), 0);
	release(rd);
	expect_net_ok();
}

Test(sim_net, pipe_full_waits_and_small_writes_are_atomic)
{
	struct sim_file *rd, *wr;
	static char buf[2 * SNDBUF];

	make_pipe(&rd, &wr);
	cr_expect_eq(wr->ops->write(wr, buf, SNDBUF - 10, -1), SNDBUF - 10);
	cr_expect_eq(wr->ops->write(wr, buf, 20, -1), -EAGAIN,
		     "PIPE_BUF or less: all or wait");
	cr_expect_eq(wr->ops->poll(wr) & POLLOUT, 0);
	cr_expect_eq(rd->ops->read(rd, buf, SNDBUF - 10, -1), SNDBUF - 10);
	cr_expect_eq(wr->ops->write(wr, buf, sizeof(buf), -1), SNDBUF,
		     "a long write may be partial");
	cr_expect_eq(wr->ops->write(wr, buf, sizeof(buf), -1), -EAGAIN);
	release(rd);
	cr_expect_eq(g_n->bytes.lost, SNDBUF);
	cr_expect_eq(wr->ops->write(wr, buf, 1, -1), -EPIPE);
	cr_expect(wr->ops->poll(wr) & POLLERR);
	release(wr);
	expect_net_ok();
}

/* Files. */

static struct sim_file *open_ok(const char *path, int flags)
{
	struct sim_file *f = NULL;

	cr_assert_eq(sim__fs_open(g_fs, path, flags, &f), 0, "open %s", path);
	return f;
}

Test(sim_net, missing_file_is_enoent_and_excl_is_eexist)
{
	struct sim_file *f = NULL;
	struct statx st;

	cr_expect_eq(sim__fs_open(g_fs, "/nope", O_RDONLY, &f), -ENOENT);
	cr_expect_eq(sim__fs_statx(g_fs, "/nope", &st), -ENOENT);
	f = open_ok("/new", O_RDWR | O_CREAT | O_EXCL);
	cr_expect_eq(sim__fs_open(g_fs, "/new", O_RDWR | O_CREAT | O_EXCL, &f),
		     -EEXIST);
	cr_expect_eq(g_fs->open, 1);
	release(f);
	cr_expect_eq(g_fs->open, 0);
	cr_expect_eq(sim__fs_statx(g_fs, "/new", &st), 0);
	cr_expect_eq(st.stx_size, 0);
}

Test(sim_net, file_read_write_at_offsets_and_position)
{
	struct sim_file *f = open_ok("/f", O_RDWR | O_CREAT);
	char buf[32] = {0};
	struct statx st;

	cr_expect_eq(f->ops->write(f, "hello", 5, -1), 5);
	cr_expect_eq(f->ops->write(f, " world", 6, -1), 6);
	cr_expect_eq(f->ops->read(f, buf, sizeof(buf), -1), 0, "at the end");
	cr_expect_eq(f->ops->read(f, buf, sizeof(buf), 0), 11);
	cr_expect(!memcmp(buf, "hello world", 11));
	cr_expect_eq(f->ops->write(f, "J", 1, 6), 1);
	cr_expect_eq(f->ops->read(f, buf, 5, 6), 5);
	cr_expect(!memcmp(buf, "Jorld", 5));
	/* A write past the end leaves zeros in the gap. */
	cr_expect_eq(f->ops->write(f, "!", 1, 20), 1);
	cr_expect_eq(f->ops->statx(f, &st), 0);
	cr_expect_eq(st.stx_size, 21);
	cr_expect(S_ISREG(st.stx_mode));
	cr_expect_eq(f->ops->read(f, buf, 10, 11), 10);
	for (int i = 0; i < 9; i++)
		cr_expect_eq(buf[i], 0);
	cr_expect_eq(f->ops->fsync(f), 0);
	cr_expect_null(f->ops->recv);
	release(f);
}

Test(sim_net, file_open_flags)
{
	struct sim_file *f;
	char buf[32];
	struct statx st;

	cr_assert_eq(sim__fs_put(g_fs, "/conf", "0123456789", 10), 0);
	f = open_ok("/conf", O_RDONLY);
	cr_expect_eq(f->ops->write(f, "x", 1, 0), -EBADF);
	cr_expect_eq(f->ops->read(f, buf, 4, -1), 4);
	cr_expect_eq(f->ops->read(f, buf, 4, -1), 4);
	cr_expect(!memcmp(buf, "4567", 4));
	release(f);

	f = open_ok("/conf", O_WRONLY | O_APPEND);
	cr_expect_eq(f->ops->read(f, buf, 1, 0), -EBADF);
	cr_expect_eq(f->ops->write(f, "ab", 2, 0), 2, "appends anyway");
	cr_expect_eq(sim__fs_statx(g_fs, "/conf", &st), 0);
	cr_expect_eq(st.stx_size, 12);
	release(f);

	f = open_ok("/conf", O_WRONLY | O_TRUNC);
	cr_expect_eq(sim__fs_statx(g_fs, "/conf", &st), 0);
	cr_expect_eq(st.stx_size, 0);
	release(f);
}

/* The entry points the engine and keel/sim.h use. */

Test(sim_net, listen_addresses_parse)
{
	struct sim_file *f = NULL;
	struct sockaddr_in6 in6;
	socklen_t len = sizeof(in6);

	cr_expect_eq(sim__listen(g_s, "127.0.0.1", 1, &f), -EINVAL);
	cr_expect_eq(sim__listen(g_s, "127.0.0.1:", 1, &f), -EINVAL);
	cr_expect_eq(sim__listen(g_s, "127.0.0.1:70000", 1, &f), -EINVAL);
	cr_expect_eq(sim__listen(g_s, "nohost:80", 1, &f), -EINVAL);
	cr_assert_eq(sim__listen(g_s, "[::1]:8443", 1, &f), 0);
	cr_assert_eq(sim__sock_name(f, false, (struct sockaddr *)&in6, &len),
		     0);
	cr_expect_eq(in6.sin6_family, AF_INET6);
	cr_expect_eq(ntohs(in6.sin6_port), 8443);

	struct sim_file *g = NULL, *c = NULL;

	cr_expect_eq(sim__listen(g_s, "127.0.0.1:8443", 1, &g), -EADDRINUSE,
		     "one port space for both families");
	cr_assert_eq(sim__listen(g_s, "/tmp/k.sock", 1, &g), 0);
	cr_assert_eq(sim__socket(g_s, AF_INET6, SOCK_STREAM | SOCK_CLOEXEC,
				 IPPROTO_TCP, &c),
		     0);
	cr_expect_eq(sim__socket(g_s, AF_INET, SOCK_STREAM, IPPROTO_UDP, &c),
		     -EPROTONOSUPPORT);
	release(c);
	release(g);
	release(f);
}

Test(sim_net, machine_stats_and_check_follow_the_model)
{
	int lfd = keel_sim_listen(g_sim, "127.0.0.1:7000", 4);
	struct sim_file *c = NULL;
	char why[160];

	cr_assert_geq(lfd, SIM_FD_BASE);
	cr_assert_eq(sim__socket(g_s, AF_INET, SOCK_STREAM, 0, &c), 0);
	cr_assert_eq(connect_to(c, 7000), 0);

	struct sim_file *l = sim__fd_get(g_s, lfd), *a = accept_one(l);
	int afd = sim__fd_install(g_s, a);

	cr_assert_geq(afd, SIM_FD_BASE);
	cr_expect_eq(send_str(c, "0123456789"), 10);
	expect_recv(a, "0123456789");
	cr_expect_eq(send_str(c, "unread"), 6);
	cr_expect_eq(keel_sim_reset(g_sim, afd), 0);

	struct keel_sim_stats st;

	keel_sim_stats(g_sim, &st);
	cr_expect_eq(st.conns, 1);
	cr_expect_eq(st.bytes_sent, 16);
	cr_expect_eq(st.bytes_received, 10);
	cr_expect_eq(st.bytes_lost, 0);
	cr_expect_eq(keel_sim_check(g_sim, why, sizeof(why)), -1);
	cr_expect_eq(sim__fd_close(g_s, afd), 0);
	keel_sim_stats(g_sim, &st);
	cr_expect_eq(st.bytes_lost, 6, "closed with 6 bytes unread");
	cr_expect_eq(sim__fd_close(g_s, lfd), 0);
	cr_expect_eq(sim__model_check(g_s, why, sizeof(why)), -1);
	cr_expect(strstr(why, "1 sockets"), "%s", why);
	release(c);
	cr_expect_eq(keel_sim_check(g_sim, why, sizeof(why)), 0, "%s", why);
}

Test(sim_net, files_through_the_entry_points)
{
	int fd = keel_sim_file(g_sim, "/etc/motd", "hi\n", 3);
	struct sim_file *f;
	char buf[8], why[160];

	cr_assert_geq(fd, SIM_FD_BASE);
	f = sim__fd_get(g_s, fd);
	cr_expect_eq(f->ops->read(f, buf, sizeof(buf), -1), 3);
	cr_expect_eq(f->ops->write(f, "x", 1, -1), -EBADF, "opened read-only");
	cr_expect_eq(sim__open(g_s, "/missing", O_RDONLY, 0, &f), -ENOENT);
	cr_expect_eq(sim__model_check(g_s, why, sizeof(why)), -1);
	cr_expect(strstr(why, "files"), "%s", why);
	cr_expect_eq(sim__fd_close(g_s, fd), 0);
	cr_expect_eq(sim__model_check(g_s, why, sizeof(why)), 0);
}

/* Whatever is left open when the machine goes is freed with it (the
 * sanitizer builds check there is no leak). */
Test(sim_net, destroy_frees_what_is_left_open)
{
	struct sim_file *c, *s, *rd, *wr, *f;

	pair(&c, &s);
	cr_expect_eq(send_str(c, "left"), 4);
	make_pipe(&rd, &wr);
	cr_expect_eq(wr->ops->write(wr, "p", 1, -1), 1);
	f = open_ok("/left", O_RDWR | O_CREAT);
	cr_expect_eq(f->ops->write(f, "f", 1, -1), 1);
	listener(9999, 1);
}
