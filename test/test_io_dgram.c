/* SPDX-License-Identifier: MIT */
/*
 * test_io_dgram.c: datagrams and the rest of the socket ops, on loopback
 * (127.0.0.1 and ::1) only: a UDP echo with keel_recvmsg/keel_sendmsg
 * (addresses checked both ways, v4 and v6), MSG_TRUNC reported by the
 * single-shot op and by the multishot recvmsg stream, the stream taking
 * many datagrams from two senders through a ring too small for them (the
 * -ENOBUFS re-arm) with every source address checked, the stream's open
 * refused (-EBUSY) on a struct that holds one still, keel_shutdown's
 * half close, TCP over ::1 end to end, Unix stream sockets (a path and an
 * abstract name; a stale socket file removed, a live one and a plain file
 * left alone), and the simulated kernel saying -EOPNOTSUPP for datagrams.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <keel.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "helpers/keel_test.h"

/* The port of a sockaddr_in or sockaddr_in6. */
static uint16_t port_of(const struct sockaddr *sa)
{
	if (sa->sa_family == AF_INET)
		return ntohs(((const struct sockaddr_in *)sa)->sin_port);
	return ntohs(((const struct sockaddr_in6 *)sa)->sin6_port);
}

static bool is_loopback(const struct sockaddr *sa)
{
	if (sa->sa_family == AF_INET)
		return ((const struct sockaddr_in *)sa)->sin_addr.s_addr ==
		       htonl(INADDR_LOOPBACK);
	return sa->sa_family == AF_INET6 &&
	       IN6_IS_ADDR_LOOPBACK(
		   &((const struct sockaddr_in6 *)sa)->sin6_addr);
}

/* ---- single-shot UDP echo ------------------------------------------- */

#define ECHO_ROUNDS 20

struct echo_result {
	int rounds_ok;	 /* client: replies equal to what it sent */
	int bad_src;	 /* replies (client) or requests (server) whose
			  * source was not the peer */
	int err;	 /* first unexpected result */
	int trunc_res;	 /* a 100-byte datagram into 10 bytes */
	int trunc_flags; /* its msg_flags */
	int full_res;	 /* the same with MSG_TRUNC in flags */
	uint16_t cli_port;
};

struct udp_srv {
	struct keel_task task;
	int fd;
	int i;
	char buf[256];
	struct iovec iov;
	struct sockaddr_storage peer;
	struct msghdr msg;
	struct echo_result *out;
};

static int udp_srv_step(struct keel_task *t);
static KEEL_TASK_TYPE(udp_srv_task, struct udp_srv, task, udp_srv_step);

static int udp_srv_step(struct keel_task *t)
{
	struct udp_srv *s = keel_container_of(t, struct udp_srv, task);

	KEEL_BEGIN(t);
	for (s->i = 0; s->i < ECHO_ROUNDS; s->i++) {
		s->iov = (struct iovec){s->buf, sizeof(s->buf)};
		s->msg = (struct msghdr){.msg_name = &s->peer,
					 .msg_namelen = sizeof(s->peer),
					 .msg_iov = &s->iov,
					 .msg_iovlen = 1};
		KEEL_AWAIT(t, keel_recvmsg(t, s->fd, &s->msg, 0));
		if (keel_res(t) < 0) {
			s->out->err = keel_res(t);
			break;
		}
		if (!is_loopback((struct sockaddr *)&s->peer) ||
		    port_of((struct sockaddr *)&s->peer) != s->out->cli_port)
			s->out->bad_src++;
		/* Echo it to where it came from. */
		s->iov.iov_len = (size_t)keel_res(t);
		KEEL_AWAIT(t, keel_sendmsg(t, s->fd, &s->msg, 0));
		if (keel_res(t) != (int)s->iov.iov_len) {
			s->out->err = keel_res(t);
			break;
		}
	}
	KEEL_END(t);
}

struct udp_cli {
	struct keel_task task;
	int fd;
	int i;
	char tx[64];
	char rx[256];
	char big[100];
	struct iovec iov;
	struct sockaddr_storage srv, from;
	socklen_t srvlen;
	struct msghdr msg;
	struct echo_result *out;
};

static int udp_cli_step(struct keel_task *t);
static KEEL_TASK_TYPE(udp_cli_task, struct udp_cli, task, udp_cli_step);

static int udp_cli_step(struct keel_task *t)
{
	struct udp_cli *c = keel_container_of(t, struct udp_cli, task);

	KEEL_BEGIN(t);
	for (c->i = 0; c->i < ECHO_ROUNDS; c->i++) {
		int n = snprintf(c->tx, sizeof(c->tx), "datagram %d", c->i);

		c->iov = (struct iovec){c->tx, (size_t)n};
		c->msg = (struct msghdr){.msg_name = &c->srv,
					 .msg_namelen = c->srvlen,
					 .msg_iov = &c->iov,
					 .msg_iovlen = 1};
		KEEL_AWAIT(t, keel_sendmsg(t, c->fd, &c->msg, 0));
		if (keel_res(t) != (int)c->iov.iov_len) {
			c->out->err = keel_res(t);
			break;
		}
		c->iov = (struct iovec){c->rx, sizeof(c->rx)};
		c->msg = (struct msghdr){.msg_name = &c->from,
					 .msg_namelen = sizeof(c->from),
					 .msg_iov = &c->iov,
					 .msg_iovlen = 1};
		KEEL_AWAIT(t, keel_recvmsg(t, c->fd, &c->msg, 0));
		if (keel_res(t) < 0) {
			c->out->err = keel_res(t);
			break;
		}
		if (c->msg.msg_namelen != c->srvlen ||
		    memcmp(&c->from, &c->srv, c->srvlen))
			c->out->bad_src++;
		if ((size_t)keel_res(t) == strlen(c->tx) &&
		    !memcmp(c->rx, c->tx, strlen(c->tx)))
			c->out->rounds_ok++;
	}
	KEEL_END(t);
}

/* A bound UDP socket on `host` and its address. */
static int udp_bound(const char *host, struct sockaddr_storage *ss,
		     socklen_t *len)
{
	int fd = keel_udp_bind(host, 0, 0);

	cr_assert_geq(fd, 0, "keel_udp_bind(%s): %s", host, strerror(-fd));
	*len = sizeof(*ss);
	cr_assert_eq(getsockname(fd, (struct sockaddr *)ss, len), 0);
	return fd;
}

static void udp_echo(const char *host, int family)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct echo_result res = {0};
	struct udp_srv *s = kt_spawn(loop, &udp_srv_task, KEEL_PRIO_NORMAL);
	struct udp_cli *c = kt_spawn(loop, &udp_cli_task, KEEL_PRIO_NORMAL);
	struct sockaddr_storage cli;
	socklen_t clilen;

	int sfd = s->fd = udp_bound(host, &c->srv, &c->srvlen);

	s->out = &res;
	/* The client binds too, so that the server knows its port. */
	int cfd = c->fd = udp_bound(host, &cli, &clilen);

	c->out = &res;
	res.cli_port = port_of((struct sockaddr *)&cli);
	cr_assert_eq(c->srv.ss_family, family);
	kt_loop_run(loop);
	cr_expect_eq(res.err, 0, "%s", strerror(-res.err));
	cr_expect_eq(res.rounds_ok, ECHO_ROUNDS);
	cr_expect_eq(res.bad_src, 0);
	close(sfd);
	close(cfd);
	keel_loop_destroy(loop);
}

Test(io_dgram, udp_echo_over_ipv4_with_addresses, .timeout = 10)
{
	udp_echo("127.0.0.1", AF_INET);
}

Test(io_dgram, udp_echo_over_ipv6_with_addresses, .timeout = 10)
{
	udp_echo("::1", AF_INET6);
}

/* ---- truncation, single shot ---------------------------------------- */

struct trunc {
	struct keel_task task;
	int fd;
	char small[10];
	struct iovec iov;
	struct msghdr msg;
	struct echo_result *out;
};

static int trunc_step(struct keel_task *t);
static KEEL_TASK_TYPE(trunc_task, struct trunc, task, trunc_step);

static int trunc_step(struct keel_task *t)
{
	struct trunc *x = keel_container_of(t, struct trunc, task);

	KEEL_BEGIN(t);
	x->iov = (struct iovec){x->small, sizeof(x->small)};
	x->msg = (struct msghdr){.msg_iov = &x->iov, .msg_iovlen = 1};
	KEEL_AWAIT(t, keel_recvmsg(t, x->fd, &x->msg, 0));
	x->out->trunc_res = keel_res(t);
	x->out->trunc_flags = x->msg.msg_flags;
	x->msg = (struct msghdr){.msg_iov = &x->iov, .msg_iovlen = 1};
	KEEL_AWAIT(t, keel_recvmsg(t, x->fd, &x->msg, MSG_TRUNC));
	x->out->full_res = keel_res(t);
	KEEL_END(t);
}

Test(io_dgram, recvmsg_reports_truncation, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct echo_result res = {0};
	struct trunc *x = kt_spawn(loop, &trunc_task, KEEL_PRIO_NORMAL);
	struct sockaddr_storage ss;
	socklen_t len;
	char big[100];

	int fd = x->fd = udp_bound("127.0.0.1", &ss, &len);

	x->out = &res;
	int tx = keel_udp_socket(AF_INET);

	cr_assert_geq(tx, 0);
	memset(big, 'x', sizeof(big));
	for (int i = 0; i < 2; i++)
		cr_assert_eq(sendto(tx, big, sizeof(big), 0,
				    (struct sockaddr *)&ss, len),
			     (ssize_t)sizeof(big));
	kt_loop_run(loop);
	cr_expect_eq(res.trunc_res, 10);
	cr_expect(res.trunc_flags & MSG_TRUNC, "msg_flags %#x",
		  res.trunc_flags);
	cr_expect_eq(res.full_res, 100);
	close(tx);
	close(fd);
	keel_loop_destroy(loop);
}

/* ---- the multishot recvmsg stream ----------------------------------- */

#define SENDERS	  2
#define BURST	  16
#define BURSTS	  8
#define DGRAMS	  (SENDERS * BURST * BURSTS)
#define BIG_DGRAM 300 /* more than a 256-byte buffer holds */

struct ms_result {
	int got;	     /* datagrams taken */
	int in_order;	     /* per sender, sequence numbers as sent */
	int bad_src;	     /* a source that was not the sender's socket */
	int bad_payload;     /* a payload that was not what was sent */
	int end;	     /* the result that ended the receive loop */
	int trunc_len;	     /* the big datagram: bytes delivered */
	uint32_t trunc_full; /* its full length */
	int trunc_flags;
	uint64_t enobufs;
};

struct ms_srv {
	struct keel_task task;
	int fd;
	int ack_fd;
	struct keel_bufring *ring;
	struct keel_recvmsg_stream rs;
	struct keel_datagram d;
	int next[SENDERS];
	uint16_t ports[SENDERS];
	int in_burst;
	struct sockaddr_storage acks[SENDERS];
	socklen_t acklen;
	struct ms_result *out;
};

static int ms_srv_step(struct keel_task *t);
static KEEL_TASK_TYPE(ms_srv_task, struct ms_srv, task, ms_srv_step);

/* Payload: "<sender> <seq>" padded with the seq's low byte. */
static int dgram_fill(char *buf, int sender, int seq)
{
	int n = snprintf(buf, 32, "%d %d ", sender, seq);
	int len = 20 + seq % 40;

	memset(buf + n, 'a' + seq % 26, (size_t)(len - n));
	return len;
}

static int ms_srv_step(struct keel_task *t)
{
	struct ms_srv *s = keel_container_of(t, struct ms_srv, task);
	int sender, seq;
	char want[64];

	KEEL_BEGIN(t);
	{
		int err =
		    keel_recvmsg_stream_open(t, &s->rs, s->fd, s->ring, 0);

		if (err) {
			s->out->end = err;
			KEEL_EXIT(t, err);
		}
	}
	while (s->out->got < DGRAMS + 1) {
		KEEL_AWAIT(t, keel_recvmsg_next(t, &s->rs, &s->d));
		if (keel_res(t) < 0) {
			s->out->end = keel_res(t);
			break;
		}
		if (s->d.len == BIG_DGRAM || (s->d.flags & MSG_TRUNC)) {
			s->out->trunc_len = keel_res(t);
			s->out->trunc_full = s->d.full_len;
			s->out->trunc_flags = s->d.flags;
			s->out->got++;
			continue;
		}
		if (sscanf(s->d.data, "%d %d", &sender, &seq) != 2 ||
		    sender < 0 || sender >= SENDERS) {
			s->out->bad_payload++;
			continue;
		}
		s->out->got++;
		if (seq == s->next[sender])
			s->out->in_order++;
		s->next[sender] = seq + 1;
		if (keel_res(t) != dgram_fill(want, sender, seq) ||
		    memcmp(s->d.data, want, s->d.len))
			s->out->bad_payload++;
		if (!s->d.addr || !is_loopback(s->d.addr) ||
		    port_of(s->d.addr) != s->ports[sender])
			s->out->bad_src++;
		/* A burst from both is in: let the senders go on. */
		if (++s->in_burst == SENDERS * BURST) {
			s->in_burst = 0;
			for (int i = 0; i < SENDERS; i++)
				sendto(s->ack_fd, "k", 1, 0,
				       (struct sockaddr *)&s->acks[i],
				       s->acklen);
		}
	}
	keel_buf_release(&s->d.buf);
	keel_recvmsg_stream_close(&s->rs);
	KEEL_END(t);
}

/* A sender: bursts of BURST datagrams (plain sendto, all at once, so that
 * they wait in the socket together), each burst after the server's ack. */
struct ms_cli {
	struct keel_task task;
	int id;
	int fd;
	int burst;
	char ack[8];
	struct sockaddr_storage srv;
	socklen_t srvlen;
	int *err;
};

static int ms_cli_step(struct keel_task *t);
static KEEL_TASK_TYPE(ms_cli_task, struct ms_cli, task, ms_cli_step);

static int ms_cli_step(struct keel_task *t)
{
	struct ms_cli *c = keel_container_of(t, struct ms_cli, task);

	KEEL_BEGIN(t);
	for (c->burst = 0; c->burst < BURSTS; c->burst++) {
		for (int i = 0; i < BURST; i++) {
			char buf[64];
			int seq = c->burst * BURST + i;
			int n = dgram_fill(buf, c->id, seq);

			if (sendto(c->fd, buf, (size_t)n, 0,
				   (struct sockaddr *)&c->srv, c->srvlen) != n)
				*c->err = -errno;
		}
		KEEL_AWAIT(t, keel_recv(t, c->fd, c->ack, sizeof(c->ack), 0));
		if (keel_res(t) != 1) {
			*c->err = keel_res(t);
			break;
		}
	}
	if (c->id == 0) {
		char big[BIG_DGRAM];

		memset(big, 'B', sizeof(big));
		sendto(c->fd, big, sizeof(big), 0, (struct sockaddr *)&c->srv,
		       c->srvlen);
	}
	KEEL_END(t);
}

static void multishot(const char *host)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct ms_result res = {0};
	struct keel_bufring_opts ro = {.count = 8, .size = 256};
	struct ms_srv *s = kt_spawn(loop, &ms_srv_task, KEEL_PRIO_NORMAL);
	struct ms_cli *c[SENDERS];
	struct sockaddr_storage srv;
	socklen_t srvlen;
	int cli_err = 0, fds[SENDERS + 1];
	struct keel_bufring *ring;

	cr_assert_eq(keel_bufring_create(loop, &ro, &ring), 0);
	s->ring = ring;
	s->fd = fds[SENDERS] = udp_bound(host, &srv, &srvlen);
	s->ack_fd = s->fd;
	s->out = &res;
	for (int i = 0; i < SENDERS; i++) {
		c[i] = kt_spawn(loop, &ms_cli_task, KEEL_PRIO_NORMAL);
		c[i]->id = i;
		c[i]->fd = fds[i] = udp_bound(host, &s->acks[i], &s->acklen);
		c[i]->srv = srv;
		c[i]->srvlen = srvlen;
		c[i]->err = &cli_err;
		s->ports[i] = port_of((struct sockaddr *)&s->acks[i]);
	}
	kt_loop_run(loop);

	struct keel_bufring_stats st;

	keel_bufring_stats(ring, &st);
	cr_expect_eq(cli_err, 0, "sender: %s", strerror(-cli_err));
	cr_expect_eq(res.end, 0, "stream ended with %s", strerror(-res.end));
	cr_expect_eq(res.got, DGRAMS + 1);
	cr_expect_eq(res.in_order, DGRAMS);
	cr_expect_eq(res.bad_src, 0);
	cr_expect_eq(res.bad_payload, 0);
	/* 256 bytes less the header (16) and the name's room (128). */
	cr_expect_eq(res.trunc_len, 256 - 16 - 128);
	cr_expect_eq(res.trunc_full, BIG_DGRAM);
	cr_expect(res.trunc_flags & MSG_TRUNC);
	/* Bursts of 32 into 8 buffers: the ring ran dry and the stream
	 * re-armed when buffers came back, losing nothing. */
	cr_expect_gt(st.enobufs, 0);
	cr_expect_eq(st.lent, 0);
	cr_log_info("%s: %d datagrams, ring empty %llu times", host, res.got,
		    (unsigned long long)st.enobufs);
	for (int i = 0; i <= SENDERS; i++)
		close(fds[i]);
	keel_loop_destroy(loop);
}

Test(io_dgram, recvmsg_stream_ipv4_many_datagrams_with_sources, .timeout = 10)
{
	multishot("127.0.0.1");
}

Test(io_dgram, recvmsg_stream_ipv6_many_datagrams_with_sources, .timeout = 10)
{
	multishot("::1");
}

/* ---- misuse ---------------------------------------------------------- */

struct misuse_result {
	int small_open, good_open, raw_next, raw_try, open_again, open_closing;
};

struct misuse {
	struct keel_task task;
	int fd;
	struct keel_bufring *small, *good;
	struct keel_recvmsg_stream rs;
	struct keel_buf b;
	struct misuse_result *out;
};

static int misuse_step(struct keel_task *t);
static KEEL_TASK_TYPE(misuse_task, struct misuse, task, misuse_step);

static int misuse_step(struct keel_task *t)
{
	struct misuse *m = keel_container_of(t, struct misuse, task);

	KEEL_BEGIN(t);
	m->out->small_open =
	    keel_recvmsg_stream_open(t, &m->rs, m->fd, m->small, 0);
	m->out->good_open =
	    keel_recvmsg_stream_open(t, &m->rs, m->fd, m->good, 0);
	/* Open: the struct is the stream's until its request is back. */
	m->out->open_again =
	    keel_recvmsg_stream_open(t, &m->rs, m->fd, m->good, 0);
	/* Its items are datagrams: the raw recv calls refuse it. */
	m->out->raw_try = keel_recv_try(&m->rs.rs, &m->b);
	KEEL_AWAIT(t, keel_recv_next(t, &m->rs.rs, &m->b));
	m->out->raw_next = keel_res(t);
	keel_recvmsg_stream_close(&m->rs);
	keel_recvmsg_stream_close(&m->rs); /* twice is fine */
	m->out->open_closing =
	    keel_recvmsg_stream_open(t, &m->rs, m->fd, m->good, 0);
	KEEL_END(t);
}

Test(io_dgram, recvmsg_stream_refuses_small_rings_and_raw_takes, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_bufring_opts so = {.count = 8, .size = 128};
	struct keel_bufring_opts go = {.count = 8, .size = 4096};
	struct misuse *m = kt_spawn(loop, &misuse_task, KEEL_PRIO_NORMAL);
	struct sockaddr_storage ss;
	socklen_t len;

	cr_assert_eq(keel_bufring_create(loop, &so, &m->small), 0);
	cr_assert_eq(keel_bufring_create(loop, &go, &m->good), 0);
	struct misuse_result r = {0};
	int fd = m->fd = udp_bound("127.0.0.1", &ss, &len);

	m->out = &r;
	kt_loop_run(loop);
	cr_expect_eq(r.small_open, -EINVAL);
	cr_expect_eq(r.good_open, 0);
	cr_expect_eq(r.open_again, -EBUSY, "open of an open stream: %d",
		     r.open_again);
	cr_expect_eq(r.open_closing, -EBUSY, "open while closing: %d",
		     r.open_closing);
	cr_expect_eq(r.raw_try, -EINVAL);
	cr_expect_eq(r.raw_next, -EINVAL);
	close(fd);
	keel_loop_destroy(loop);
}

/* ---- TCP over ::1, with a half close ---------------------------------- */

struct v6_result {
	int accept_fd, connect, peer_v6_loopback;
	int srv_got, srv_eof, srv_sent, cli_shutdown, cli_got;
	char cli_buf[32];
};

struct v6 {
	struct keel_task task;
	bool client;
	int lfd, fd;
	char buf[32];
	struct sockaddr_storage addr;
	socklen_t addrlen;
	struct v6_result *out;
};

static int v6_step(struct keel_task *t);
static KEEL_TASK_TYPE(v6_task, struct v6, task, v6_step);

static int v6_step(struct keel_task *t)
{
	struct v6 *x = keel_container_of(t, struct v6, task);

	KEEL_BEGIN(t);
	if (x->client) {
		x->fd = keel_tcp_socket(AF_INET6);
		KEEL_AWAIT(t,
			   keel_connect(t, x->fd, (struct sockaddr *)&x->addr,
					x->addrlen));
		x->out->connect = keel_res(t);
		KEEL_AWAIT(t, keel_send_all(t, x->fd, "ping over v6", 12, 0));
		/* Half close: the server reads to end of file, then answers
		 * on the side still open. */
		KEEL_AWAIT(t, keel_shutdown(t, x->fd, SHUT_WR));
		x->out->cli_shutdown = keel_res(t);
		KEEL_AWAIT(t, keel_recv(t, x->fd, x->out->cli_buf,
					sizeof(x->out->cli_buf) - 1, 0));
		x->out->cli_got = keel_res(t);
		KEEL_AWAIT(t, keel_close(t, x->fd));
		KEEL_EXIT(t, 0);
	}
	x->addrlen = sizeof(x->addr);
	KEEL_AWAIT(t, keel_accept(t, x->lfd, (struct sockaddr *)&x->addr,
				  &x->addrlen, 0));
	x->out->accept_fd = x->fd = keel_res(t);
	if (x->fd < 0)
		KEEL_EXIT(t, x->fd);
	x->out->peer_v6_loopback = x->addr.ss_family == AF_INET6 &&
				   is_loopback((struct sockaddr *)&x->addr);
	for (;;) {
		KEEL_AWAIT(
		    t, keel_recv(t, x->fd, x->buf + x->out->srv_got,
				 sizeof(x->buf) - (size_t)x->out->srv_got, 0));
		if (keel_res(t) <= 0)
			break;
		x->out->srv_got += keel_res(t);
	}
	x->out->srv_eof = keel_res(t);
	KEEL_AWAIT(t, keel_send_all(t, x->fd, "pong", 4, 0));
	x->out->srv_sent = keel_res(t);
	KEEL_AWAIT(t, keel_close(t, x->fd));
	KEEL_END(t);
}

Test(io_dgram, tcp_over_ipv6_loopback_with_shutdown, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct v6_result res = {.accept_fd = -1};
	struct v6 *srv = kt_spawn(loop, &v6_task, KEEL_PRIO_NORMAL);
	struct v6 *cli = kt_spawn(loop, &v6_task, KEEL_PRIO_NORMAL);
	int lfd = keel_tcp_listen("::1", 0, 16, 0);

	cr_assert_geq(lfd, 0, "listen on ::1: %s", strerror(-lfd));
	srv->lfd = lfd;
	srv->out = cli->out = &res;
	cli->client = true;
	cr_assert_eq(keel_net_parse_addr("::1",
					 (uint16_t)keel_net_local_port(lfd),
					 &cli->addr, &cli->addrlen),
		     0);
	kt_loop_run(loop);
	cr_expect_geq(res.accept_fd, 0);
	cr_expect_eq(res.connect, 0);
	cr_expect(res.peer_v6_loopback);
	cr_expect_eq(res.srv_got, 12);
	cr_expect_eq(res.srv_eof, 0, "the FIN after shutdown: %d", res.srv_eof);
	cr_expect_eq(res.cli_shutdown, 0);
	cr_expect_eq(res.srv_sent, 4);
	cr_expect_eq(res.cli_got, 4);
	cr_expect_str_eq(res.cli_buf, "pong");
	close(lfd);
	keel_loop_destroy(loop);
}

/* ---- Unix stream sockets ---------------------------------------------- */

struct ux_result {
	int connect, got, accepted;
	char buf[32];
};

struct ux {
	struct keel_task task;
	bool client;
	int lfd, fd;
	char buf[32];
	struct sockaddr_storage addr;
	socklen_t addrlen;
	struct ux_result *out;
};

static int ux_step(struct keel_task *t);
static KEEL_TASK_TYPE(ux_task, struct ux, task, ux_step);

/* The client sends "hello unix", the server echoes what it reads. */
static int ux_step(struct keel_task *t)
{
	struct ux *x = keel_container_of(t, struct ux, task);

	KEEL_BEGIN(t);
	if (x->client) {
		KEEL_AWAIT(t, keel_socket(t, AF_UNIX, SOCK_STREAM, 0));
		x->fd = keel_res(t);
		if (x->fd < 0)
			KEEL_EXIT(t, x->fd);
		KEEL_AWAIT(t,
			   keel_connect(t, x->fd, (struct sockaddr *)&x->addr,
					x->addrlen));
		x->out->connect = keel_res(t);
		KEEL_AWAIT(t, keel_send_all(t, x->fd, "hello unix", 10, 0));
		KEEL_AWAIT(t, keel_recv(t, x->fd, x->out->buf,
					sizeof(x->out->buf) - 1, MSG_WAITALL));
		x->out->got = keel_res(t);
		KEEL_AWAIT(t, keel_close(t, x->fd));
		KEEL_EXIT(t, 0);
	}
	KEEL_AWAIT(t, keel_accept(t, x->lfd, NULL, NULL, 0));
	x->fd = keel_res(t);
	x->out->accepted = x->fd >= 0;
	if (x->fd < 0)
		KEEL_EXIT(t, x->fd);
	KEEL_AWAIT(t, keel_recv(t, x->fd, x->buf, 10, MSG_WAITALL));
	if (keel_res(t) > 0)
		KEEL_AWAIT(
		    t, keel_send_all(t, x->fd, x->buf, (size_t)keel_res(t), 0));
	KEEL_AWAIT(t, keel_shutdown(t, x->fd, SHUT_WR));
	KEEL_AWAIT(t, keel_close(t, x->fd));
	KEEL_END(t);
}

static void unix_echo(const char *name, int lfd)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct ux_result res = {0};
	struct ux *srv = kt_spawn(loop, &ux_task, KEEL_PRIO_NORMAL);
	struct ux *cli = kt_spawn(loop, &ux_task, KEEL_PRIO_NORMAL);

	srv->lfd = lfd;
	srv->out = cli->out = &res;
	cli->client = true;
	cr_assert_eq(keel_unix_addr(name, &cli->addr, &cli->addrlen), 0);
	kt_loop_run(loop);
	cr_expect(res.accepted);
	cr_expect_eq(res.connect, 0, "connect %s: %s", name,
		     strerror(-res.connect));
	cr_expect_eq(res.got, 10);
	cr_expect_str_eq(res.buf, "hello unix");
	keel_loop_destroy(loop);
}

Test(io_dgram, unix_socket_echo_on_a_path, .timeout = 10)
{
	char dir[256], path[300];

	kt_tmpdir_make(dir, sizeof(dir));
	snprintf(path, sizeof(path), "%s/s.sock", dir);
	int lfd = keel_unix_listen(path, 0, 0);

	cr_assert_geq(lfd, 0, "%s", strerror(-lfd));
	unix_echo(path, lfd);
	close(lfd);
	unlink(path);
	kt_tmpdir_remove(dir);
}

Test(io_dgram, unix_socket_echo_on_an_abstract_name, .timeout = 10)
{
	char name[64];

	snprintf(name, sizeof(name), "@keel-test-%d", (int)getpid());
	int lfd = keel_unix_listen(name, 0, 0);

	cr_assert_geq(lfd, 0, "%s", strerror(-lfd));
	/* Abstract: no file anywhere. */
	unix_echo(name, lfd);
	/* The name is taken while the socket lives. */
	cr_expect_eq(keel_unix_listen(name, 0, KEEL_NET_UNLINK_STALE),
		     -EADDRINUSE);
	close(lfd);
}

Test(io_dgram, unix_listen_removes_only_a_stale_socket_file)
{
	char dir[256], path[300], plain[300];
	struct sockaddr_storage ss;
	socklen_t len;

	kt_tmpdir_make(dir, sizeof(dir));
	snprintf(path, sizeof(path), "%s/s.sock", dir);
	snprintf(plain, sizeof(plain), "%s/plain", dir);

	/* A socket file whose process is gone. */
	int old = socket(AF_UNIX, SOCK_STREAM, 0);

	cr_assert_eq(keel_unix_addr(path, &ss, &len), 0);
	cr_assert_eq(bind(old, (struct sockaddr *)&ss, len), 0);
	close(old);
	cr_expect_eq(keel_unix_listen(path, 0, 0), -EADDRINUSE);
	int lfd = keel_unix_listen(path, 0, KEEL_NET_UNLINK_STALE);

	cr_expect_geq(lfd, 0, "stale: %s", strerror(-lfd));
	/* Now live: never removed from under its owner. */
	cr_expect_eq(keel_unix_listen(path, 0, KEEL_NET_UNLINK_STALE),
		     -EADDRINUSE);
	close(lfd);
	unlink(path);

	/* Not a socket: left alone. */
	int f = open(plain, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
	struct stat st;

	cr_assert_geq(f, 0);
	close(f);
	cr_expect_eq(keel_unix_listen(plain, 0, KEEL_NET_UNLINK_STALE),
		     -EADDRINUSE);
	cr_expect_eq(stat(plain, &st), 0);
	unlink(plain);
	cr_expect_eq(keel_unix_addr("", &ss, &len), -EINVAL);
	char longp[200];

	memset(longp, 'x', sizeof(longp) - 1);
	longp[sizeof(longp) - 1] = '\0';
	cr_expect_eq(keel_unix_addr(longp, &ss, &len), -ENAMETOOLONG);
	kt_tmpdir_remove(dir);
}

/* ---- the simulated kernel --------------------------------------------- */

struct sim_probe {
	struct keel_task task;
	int fd;
	char buf[8];
	struct iovec iov;
	struct sockaddr_storage to;
	struct msghdr msg;
	int *out; /* recvmsg's result, sendmsg's to an address */
};

static int sim_probe_step(struct keel_task *t);
static KEEL_TASK_TYPE(sim_probe_task, struct sim_probe, task, sim_probe_step);

static int sim_probe_step(struct keel_task *t)
{
	struct sim_probe *p = keel_container_of(t, struct sim_probe, task);

	KEEL_BEGIN(t);
	KEEL_AWAIT(t, keel_socket(t, AF_INET, SOCK_STREAM, 0));
	p->fd = keel_res(t);
	p->iov = (struct iovec){p->buf, sizeof(p->buf)};
	p->msg = (struct msghdr){.msg_iov = &p->iov, .msg_iovlen = 1};
	KEEL_AWAIT(t, keel_recvmsg(t, p->fd, &p->msg, 0));
	p->out[0] = keel_res(t);
	p->to.ss_family = AF_INET;
	p->msg = (struct msghdr){.msg_name = &p->to,
				 .msg_namelen = sizeof(struct sockaddr_in),
				 .msg_iov = &p->iov,
				 .msg_iovlen = 1};
	KEEL_AWAIT(t, keel_sendmsg(t, p->fd, &p->msg, 0));
	p->out[1] = keel_res(t);
	KEEL_AWAIT(t, keel_close(t, p->fd));
	KEEL_END(t);
}

Test(io_dgram, simulated_kernel_has_no_datagrams, .timeout = 10)
{
	struct keel_sim_opts o = {.seed = 1};
	struct keel_sim *sim;
	struct keel_loop *loop;

	cr_assert_eq(keel_sim_create(&sim, &o), 0);
	cr_assert_eq(keel_sim_loop_create(sim, &loop, NULL), 0);
	struct sim_probe *p = kt_spawn(loop, &sim_probe_task, KEEL_PRIO_NORMAL);
	int out[2] = {0, 0};

	p->out = out;
	cr_assert_eq(keel_sim_run(sim, 1000000000u), 0);
	cr_expect_eq(out[0], -EOPNOTSUPP);
	cr_expect_eq(out[1], -EOPNOTSUPP);
	keel_loop_destroy(loop);
	keel_sim_destroy(sim);
}

/*
 * An op the backend lacks completes at once with -EOPNOTSUPP, as a ready
 * await: past the step's allowance of ready awaits the task yields, and
 * must then stop its step (it ran on while queued, and was stepped again
 * after it had ended).
 */
struct sim_many {
	struct keel_task task;
	int fd, i, *unsupported, *done;
	char buf[8];
	struct iovec iov;
	struct msghdr msg;
};

static int sim_many_step(struct keel_task *t);
static KEEL_TASK_TYPE(sim_many_task, struct sim_many, task, sim_many_step);

static int sim_many_step(struct keel_task *t)
{
	struct sim_many *m = keel_container_of(t, struct sim_many, task);

	KEEL_BEGIN(t);
	KEEL_AWAIT(t, keel_socket(t, AF_INET, SOCK_STREAM, 0));
	m->fd = keel_res(t);
	m->iov = (struct iovec){m->buf, sizeof(m->buf)};
	m->msg = (struct msghdr){.msg_iov = &m->iov, .msg_iovlen = 1};
	for (m->i = 0; m->i < 200; m->i++) {
		KEEL_AWAIT(t, keel_recvmsg(t, m->fd, &m->msg, 0));
		*m->unsupported += keel_res(t) == -EOPNOTSUPP;
	}
	KEEL_AWAIT(t, keel_close(t, m->fd));
	(*m->done)++;
	KEEL_END(t);
}

Test(io_dgram, many_missing_ops_in_one_step_yield_and_stop, .timeout = 10)
{
	struct keel_sim_opts o = {.seed = 1};
	struct keel_sim *sim;
	struct keel_loop *loop;
	int done = 0, unsupported = 0;

	cr_assert_eq(keel_sim_create(&sim, &o), 0);
	cr_assert_eq(keel_sim_loop_create(sim, &loop, NULL), 0);
	struct sim_many *m = kt_spawn(loop, &sim_many_task, KEEL_PRIO_NORMAL);

	m->done = &done;
	m->unsupported = &unsupported;
	cr_assert_eq(keel_sim_run(sim, 1000000000u), 0);
	cr_assert_eq(done, 1, "the task ended %d times", done);
	cr_assert_eq(unsupported, 200);
	keel_loop_destroy(loop);
	keel_sim_destroy(sim);
}
