/* SPDX-License-Identifier: MIT */
/*
 * test_sim_io.c: keel's socket and file ops end to end on the simulated
 * kernel: keel tasks on a sim loop use the public API (accept streams,
 * recv streams on a buffer ring (also parked on a poll while idle, or
 * hibernated: keel_hibernate, the task gone until the socket is readable),
 * keel_send_all, keel_socket/connect,
 * keel_accept, keel_send_zc, openat/read/write/fsync/statx/close), the
 * ring engine executes them on the models (sim/net.c, sim/fs.c), and the
 * machine's byte counters and invariants must agree with what the tasks
 * saw.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <keel.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "helpers/keel_test.h"
#include "sim.h"

#define PORT 7000

static struct keel_sim *sim_new(uint64_t seed, unsigned short_ppm,
				unsigned sndbuf)
{
	struct keel_sim_opts o = {
	    .seed = seed, .short_ppm = short_ppm, .sndbuf = sndbuf};
	struct keel_sim *sim;

	cr_assert_eq(keel_sim_create(&sim, &o), 0);
	return sim;
}

static struct keel_loop *sim_loop(struct keel_sim *sim)
{
	struct keel_loop *loop;

	cr_assert_eq(keel_sim_loop_create(sim, &loop, NULL), 0);
	return loop;
}

static void sim_done(struct keel_sim *sim, struct keel_loop *loop)
{
	char why[160];

	keel_loop_destroy(loop);
	cr_assert_eq(keel_sim_check(sim, why, sizeof(why)), 0, "%s", why);
	keel_sim_destroy(sim);
}

static struct sockaddr_in loopback(uint16_t port)
{
	struct sockaddr_in in = {.sin_family = AF_INET,
				 .sin_port = htons(port)};

	in.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	return in;
}

/* ---- an echo server: accept stream, recv streams, send_all ---- */

struct echo_conn {
	struct keel_task task;
	int fd;
	struct keel_bufring *ring;
	struct keel_recv_stream rs;
	struct keel_buf buf;
	int end; /* the stream's last result */
};

static int echo_conn_step(struct keel_task *t);
static KEEL_TASK_TYPE(echo_conn_task, struct echo_conn, task, echo_conn_step);

/* Connections hibernate when idle (KEEL_RECV_IDLE_RETURN), counted here. */
static struct {
	bool on;
	int hibernations, wakes, bad_wakes;
} g_hib;

/* Readable again (data or the end): a fresh task for it. */
static void echo_wake(struct keel_loop *loop, int fd, int res, void *ring)
{
	struct echo_conn *c =
	    res > 0 ? keel_spawn(loop, &echo_conn_task, KEEL_PRIO_NORMAL)
		    : NULL;

	if (!c) {
		g_hib.bad_wakes++; /* its socket stays open: the check says */
		return;
	}
	g_hib.wakes++;
	c->fd = fd;
	c->ring = ring;
}

static int echo_conn_step(struct keel_task *t)
{
	struct echo_conn *c = keel_container_of(t, struct echo_conn, task);

	KEEL_BEGIN(t);
	c->end = keel_recv_stream_open(t, &c->rs, c->fd, c->ring,
				       g_hib.on ? KEEL_RECV_IDLE_RETURN : 0);
	if (c->end)
		goto out;
	for (;;) {
		KEEL_AWAIT(t, keel_recv_next(t, &c->rs, &c->buf));
		c->end = keel_res(t);
		if (c->end == -EAGAIN &&
		    !keel_hibernate(keel_task_loop(t), c->fd, echo_wake,
				    c->ring, NULL)) {
			keel_recv_stream_close(&c->rs);
			g_hib.hibernations++;
			KEEL_EXIT(t, 0);
		}
		if (c->end <= 0)
			break;
		KEEL_AWAIT(t, keel_send_all(t, c->fd, c->buf.data, c->buf.len,
					    MSG_NOSIGNAL));
		keel_buf_release(&c->buf);
		if (keel_res(t) < 0) {
			c->end = keel_res(t);
			break;
		}
	}
	keel_recv_stream_close(&c->rs);
out:
	KEEL_AWAIT(t, keel_close(t, c->fd));
	KEEL_END(t);
}

struct echo_server {
	struct keel_task task;
	int lfd;
	int conns; /* to accept before closing the listener */
	unsigned flags;
	struct keel_bufring *ring;
	struct keel_accept_stream as;
	int i;
	int *err; /* the test's: the frame is gone after the run */
};

static int echo_server_step(struct keel_task *t);
static KEEL_TASK_TYPE(echo_server_task, struct echo_server, task,
		      echo_server_step);

static int echo_server_step(struct keel_task *t)
{
	struct echo_server *s = keel_container_of(t, struct echo_server, task);
	struct keel_bufring_opts ro = {.count = 8, .size = 512};

	KEEL_BEGIN(t);
	*s->err = keel_bufring_create(keel_task_loop(t), &ro, &s->ring);
	if (!*s->err)
		*s->err = keel_accept_stream_open(t, &s->as, s->lfd, s->flags);
	if (*s->err)
		goto out;
	for (s->i = 0; s->i < s->conns; s->i++) {
		KEEL_AWAIT(t, keel_accept_next(t, &s->as));
		if (keel_res(t) < 0) {
			*s->err = keel_res(t);
			break;
		}

		struct echo_conn *c = keel_spawn(
		    keel_task_loop(t), &echo_conn_task, KEEL_PRIO_NORMAL);

		if (!c) {
			*s->err = -ENOMEM;
			break;
		}
		c->fd = keel_res(t);
		c->ring = s->ring;
	}
	keel_accept_stream_close(&s->as);
out:
	KEEL_AWAIT(t, keel_close(t, s->lfd));
	KEEL_END(t);
}

/* A client: connect, then `rounds` times send a piece and read it back. */
#define PIECE 3000

struct client_out {
	int err;
	size_t sent; /* bytes sent and read back intact */
};

struct echo_client {
	struct keel_task task;
	struct client_out *out; /* the test's */
	int id;
	int rounds;
	uint64_t pause_ns; /* before each round after the first */
	int fd;
	int r;
	int err;
	size_t got;
	struct sockaddr_in addr;
	char data[PIECE];
	char in[PIECE];
};

static int echo_client_step(struct keel_task *t);
static KEEL_TASK_TYPE(echo_client_task, struct echo_client, task,
		      echo_client_step);

static int echo_client_step(struct keel_task *t)
{
	struct echo_client *c = keel_container_of(t, struct echo_client, task);

	KEEL_BEGIN(t);
	KEEL_AWAIT(t, keel_socket(t, AF_INET, SOCK_STREAM, 0));
	c->fd = keel_res(t);
	if (c->fd < 0) {
		c->out->err = c->fd;
		KEEL_EXIT(t, 0);
	}
	c->addr = loopback(PORT);
	KEEL_AWAIT(t, keel_connect(t, c->fd, (struct sockaddr *)&c->addr,
				   sizeof(c->addr)));
	c->err = keel_res(t);
	for (c->r = 0; !c->err && c->r < c->rounds; c->r++) {
		if (c->r && c->pause_ns)
			KEEL_AWAIT(t, keel_sleep(t, c->pause_ns));
		for (size_t i = 0; i < PIECE; i++)
			c->data[i] = (char)(c->id * 31 + c->r * 7 + i);
		KEEL_AWAIT(t, keel_send_all(t, c->fd, c->data, PIECE, 0));
		if (keel_res(t) != PIECE) {
			c->err = keel_res(t) < 0 ? keel_res(t) : -EIO;
			break;
		}
		for (c->got = 0; c->got < PIECE;) {
			KEEL_AWAIT(t, keel_recv(t, c->fd, c->in + c->got,
						PIECE - c->got, 0));
			if (keel_res(t) <= 0) {
				c->err = keel_res(t) ? keel_res(t) : -EPIPE;
				break;
			}
			c->got += (size_t)keel_res(t);
		}
		if (c->err || memcmp(c->in, c->data, PIECE)) {
			c->err = c->err ? c->err : -EBADMSG;
			break;
		}
		c->out->sent += PIECE;
	}
	c->out->err = c->err;
	KEEL_AWAIT(t, keel_close(t, c->fd));
	KEEL_END(t);
}

static void run_echo_paused(uint64_t seed, unsigned short_ppm, unsigned flags,
			    uint64_t pause_ns)
{
	enum { CLIENTS = 4, ROUNDS = 6 };
	struct keel_sim *sim = sim_new(seed, short_ppm, 4096);
	struct keel_loop *loop = sim_loop(sim);
	struct echo_server *srv;
	struct echo_client *cl;
	struct client_out out[CLIENTS] = {0};
	int srv_err = 0;

	srv = kt_spawn(loop, &echo_server_task, KEEL_PRIO_NORMAL);
	srv->err = &srv_err;
	srv->lfd = keel_sim_listen(sim, "127.0.0.1:7000", 2);
	cr_assert_geq(srv->lfd, 0);
	srv->conns = CLIENTS;
	srv->flags = flags;
	for (int i = 0; i < CLIENTS; i++) {
		cl = kt_spawn(loop, &echo_client_task, KEEL_PRIO_NORMAL);
		cl->out = &out[i];
		cl->id = i;
		cl->rounds = ROUNDS;
		cl->pause_ns = pause_ns;
	}
	cr_assert_eq(keel_sim_run(sim, 60ull * 1000000000u), 0);
	cr_expect_eq(srv_err, 0, "server: %s", strerror(-srv_err));
	for (int i = 0; i < CLIENTS; i++) {
		cr_expect_eq(out[i].err, 0, "client %d: %s", i,
			     strerror(-out[i].err));
		cr_expect_eq(out[i].sent, (size_t)ROUNDS * PIECE);
	}

	struct keel_sim_stats st;

	keel_sim_stats(sim, &st);
	cr_expect_eq(st.conns, CLIENTS);
	/* Every byte went out and came back once: no loss, no copy. */
	cr_expect_eq(st.bytes_sent, 2ull * CLIENTS * ROUNDS * PIECE);
	cr_expect_eq(st.bytes_received, st.bytes_sent);
	cr_expect_eq(st.bytes_lost, 0);
	cr_expect_eq(st.fds_open, 0);
	/* A pause of a second: every server connection's stream went idle
	 * and parked on a poll (POLL_ADD), once per pause. */
	if (pause_ns >= 1000000000u && g_hib.on) {
		/* Hibernated instead, once per pause, and woken for the next
		 * round or the end of file. */
		cr_expect_geq(g_hib.hibernations, CLIENTS * (ROUNDS - 1));
		cr_expect_leq(g_hib.hibernations, CLIENTS * ROUNDS);
		cr_expect_eq(g_hib.wakes, g_hib.hibernations);
		cr_expect_eq(g_hib.bad_wakes, 0);
		cr_expect_eq(kt_stats(loop).idle_polls, 0);
	} else if (pause_ns >= 1000000000u) {
		uint64_t polls = kt_stats(loop).idle_polls;

		cr_expect_geq(polls, (uint64_t)CLIENTS * (ROUNDS - 1),
			      "%" PRIu64 " idle polls", polls);
		cr_expect_leq(polls, (uint64_t)CLIENTS * ROUNDS,
			      "%" PRIu64 " idle polls", polls);
	}
	sim_done(sim, loop);
}

static void run_echo(uint64_t seed, unsigned short_ppm, unsigned flags)
{
	run_echo_paused(seed, short_ppm, flags, 0);
}

Test(sim_io, echo_through_streams_keeps_every_byte, .timeout = 30)
{
	run_echo(1, 0, 0);
}

Test(sim_io, echo_with_short_transfers_keeps_every_byte, .timeout = 30)
{
	for (uint64_t seed = 1; seed <= 8; seed++)
		run_echo(seed, 300000, 0);
}

Test(sim_io, echo_on_direct_descriptors, .timeout = 30)
{
	run_echo(3, 100000, KEEL_ACCEPT_DIRECT);
}

/* Idle a second between rounds: each connection's recv stream parks on a
 * poll and wakes for the next round, byte for byte, on several seeds. */
Test(sim_io, echo_with_idle_pauses_parks_streams_on_a_poll, .timeout = 30)
{
	for (uint64_t seed = 1; seed <= 4; seed++)
		run_echo_paused(seed, seed & 1 ? 200000 : 0, 0, 1000000000u);
	run_echo_paused(5, 100000, KEEL_ACCEPT_DIRECT, 1000000000u);
}

/* The same with KEEL_RECV_IDLE_RETURN: each idle connection hibernates its
 * socket and its task ends; the next round (or the client's end of file)
 * wakes it into a fresh task, byte for byte. */
Test(sim_io, echo_with_idle_pauses_hibernates_connections, .timeout = 30)
{
	for (uint64_t seed = 1; seed <= 4; seed++) {
		memset(&g_hib, 0, sizeof(g_hib));
		g_hib.on = true;
		run_echo_paused(seed, seed & 1 ? 200000 : 0,
				seed == 4 ? KEEL_ACCEPT_DIRECT : 0,
				1000000000u);
	}
	g_hib.on = false;
}

/* ---- connection ends: refused, reset, EOF, close with unread data ---- */

enum script {
	REFUSED,     /* connect to a port nobody listens on */
	ACCEPT_ADDR, /* keel_accept fills the peer's address */
	PEER_EOF,    /* the server closes: the client reads the rest, then 0 */
	PEER_RST,    /* the server closes with unread data: ECONNRESET */
	INJECTED,    /* keel_sim_reset on the server's socket */
	ZEROCOPY,    /* keel_send_zc and keel_sendmsg_all */
	NO_FDS,	     /* accept without a free descriptor */
};

/* What a pair task leaves for the test (its frame is gone by then). */
struct pair_out {
	int res[8];
	int n;
	struct sockaddr_in peer;
	socklen_t peer_len;
	char buf[256];
};

struct pair_task {
	struct keel_task task;
	struct pair_out *o; /* the test's */
	enum script script;
	struct keel_sim *sim;
	int lfd, cfd, sfd, xfd;
	struct sockaddr_in addr;
	struct iovec iov[3];
	struct msghdr msg;
};

static int pair_step(struct keel_task *t);
static KEEL_TASK_TYPE(pair_task_type, struct pair_task, task, pair_step);

static void note(struct pair_task *p, int res)
{
	if (p->o->n < 8)
		p->o->res[p->o->n] = res;
	p->o->n++;
}

static int pair_step(struct keel_task *t)
{
	struct pair_task *p = keel_container_of(t, struct pair_task, task);

	KEEL_BEGIN(t);
	KEEL_AWAIT(t, keel_socket(t, AF_INET, SOCK_STREAM, 0));
	p->cfd = keel_res(t);
	p->addr = loopback(p->script == REFUSED ? PORT + 1 : PORT);
	KEEL_AWAIT(t, keel_connect(t, p->cfd, (struct sockaddr *)&p->addr,
				   sizeof(p->addr)));
	note(p, keel_res(t));
	if (keel_res(t))
		goto close_client;
	if (p->script == NO_FDS) {
		/* The table is full: the connection stays queued (its data
		 * too) until a descriptor is free. */
		KEEL_AWAIT(t, keel_send_all(t, p->cfd, "early", 5, 0));
		note(p, keel_res(t));
		KEEL_AWAIT(t, keel_accept(t, p->lfd, NULL, NULL, 0));
		note(p, keel_res(t));
		KEEL_AWAIT(t, keel_close(t, p->xfd));
	}
	p->o->peer_len = sizeof(p->o->peer);
	KEEL_AWAIT(t, keel_accept(t, p->lfd, (struct sockaddr *)&p->o->peer,
				  &p->o->peer_len, 0));
	p->sfd = keel_res(t);
	switch (p->script) {
	case ACCEPT_ADDR:
		break;
	case NO_FDS:
		KEEL_AWAIT(
		    t, keel_recv(t, p->sfd, p->o->buf, sizeof(p->o->buf), 0));
		note(p, keel_res(t));
		break;
	case PEER_EOF:
		KEEL_AWAIT(t, keel_send_all(t, p->sfd, "bye", 3, 0));
		note(p, keel_res(t));
		KEEL_AWAIT(t, keel_close(t, p->sfd));
		KEEL_AWAIT(
		    t, keel_recv(t, p->cfd, p->o->buf, sizeof(p->o->buf), 0));
		note(p, keel_res(t));
		KEEL_AWAIT(
		    t, keel_recv(t, p->cfd, p->o->buf, sizeof(p->o->buf), 0));
		note(p, keel_res(t));
		break;
	case PEER_RST:
		KEEL_AWAIT(t, keel_send_all(t, p->cfd, "unread", 6, 0));
		note(p, keel_res(t));
		KEEL_AWAIT(t, keel_close(t, p->sfd));
		KEEL_AWAIT(
		    t, keel_recv(t, p->cfd, p->o->buf, sizeof(p->o->buf), 0));
		note(p, keel_res(t));
		KEEL_AWAIT(t, keel_send(t, p->cfd, "x", 1, 0));
		note(p, keel_res(t));
		break;
	case INJECTED:
		KEEL_AWAIT(t, keel_send_all(t, p->cfd, "queued", 6, 0));
		note(p, keel_res(t));
		note(p, keel_sim_reset(p->sim, p->sfd));
		KEEL_AWAIT(
		    t, keel_recv(t, p->sfd, p->o->buf, sizeof(p->o->buf), 0));
		note(p, keel_res(t));
		KEEL_AWAIT(
		    t, keel_recv(t, p->sfd, p->o->buf, sizeof(p->o->buf), 0));
		note(p, keel_res(t));
		KEEL_AWAIT(t, keel_send(t, p->cfd, "x", 1, 0));
		note(p, keel_res(t));
		break;
	case ZEROCOPY:
		keel_loop_set_zc_threshold(keel_task_loop(t), 1);
		KEEL_AWAIT(t, keel_send_zc(t, p->cfd, "zero-copy", 9, 0));
		note(p, keel_res(t));
		p->iov[0] = (struct iovec){(void *)"gat", 3};
		p->iov[1] = (struct iovec){(void *)"her", 3};
		p->iov[2] = (struct iovec){(void *)"ed", 2};
		p->msg.msg_iov = p->iov;
		p->msg.msg_iovlen = 3;
		KEEL_AWAIT(t, keel_sendmsg_all(t, p->cfd, &p->msg, 0));
		note(p, keel_res(t));
		KEEL_AWAIT(t, keel_recv(t, p->sfd, p->o->buf, 17, 0));
		note(p, keel_res(t));
		break;
	default:
		break;
	}
	if (p->script != PEER_EOF && p->script != PEER_RST)
		KEEL_AWAIT(t, keel_close(t, p->sfd));
close_client:
	KEEL_AWAIT(t, keel_close(t, p->cfd));
	KEEL_AWAIT(t, keel_close(t, p->lfd));
	KEEL_END(t);
}

static struct pair_out *run_pair(enum script script, uint64_t *lost)
{
	static struct pair_out out;
	struct keel_sim_opts o = {.seed = 5, .fd_limit = 3};
	struct keel_sim *sim;

	cr_assert_eq(keel_sim_create(&sim, &o), 0);
	struct keel_loop *loop = sim_loop(sim);
	struct pair_task *p = kt_spawn(loop, &pair_task_type, KEEL_PRIO_NORMAL);

	memset(&out, 0, sizeof(out));
	p->o = &out;
	p->script = script;
	p->sim = sim;
	p->lfd = keel_sim_listen(sim, "127.0.0.1:7000", 4);
	cr_assert_geq(p->lfd, 0);
	p->xfd = -1;
	if (script == NO_FDS) {
		p->xfd = keel_sim_file(sim, "/x", "x", 1);
		cr_assert_geq(p->xfd, 0);
	}
	cr_assert_eq(keel_sim_run(sim, 10ull * 1000000000u), 0);

	struct keel_sim_stats st;

	keel_sim_stats(sim, &st);
	*lost = st.bytes_lost;
	sim_done(sim, loop);
	return &out;
}

static void expect_res(const struct pair_out *p, const int *want, int n)
{
	cr_assert_eq(p->n, n, "%d results, expected %d", p->n, n);
	for (int i = 0; i < n; i++)
		cr_expect_eq(p->res[i], want[i], "op %d gave %d (%s), not %d",
			     i, p->res[i],
			     p->res[i] < 0 ? strerror(-p->res[i]) : "",
			     want[i]);
}

Test(sim_io, connect_without_listener_is_refused)
{
	uint64_t lost;
	struct pair_out *p = run_pair(REFUSED, &lost);

	expect_res(p, (int[]){-ECONNREFUSED}, 1);
}

Test(sim_io, close_gives_the_peer_the_rest_then_eof)
{
	uint64_t lost;
	struct pair_out *p = run_pair(PEER_EOF, &lost);

	expect_res(p, (int[]){0, 3, 3, 0}, 4);
	cr_expect(!memcmp(p->buf, "bye", 3));
	cr_expect_eq(lost, 0);
}

Test(sim_io, close_with_unread_data_resets_the_peer)
{
	uint64_t lost;
	struct pair_out *p = run_pair(PEER_RST, &lost);

	expect_res(p, (int[]){0, 6, -ECONNRESET, -EPIPE}, 4);
	cr_expect_eq(lost, 6, "the unread bytes are counted lost");
}

Test(sim_io, injected_reset_hits_both_ends)
{
	uint64_t lost;
	struct pair_out *p = run_pair(INJECTED, &lost);

	expect_res(p, (int[]){0, 6, 0, 6, -ECONNRESET, -ECONNRESET}, 6);
}

Test(sim_io, send_zc_and_sendmsg_deliver_every_byte)
{
	uint64_t lost;
	struct pair_out *p = run_pair(ZEROCOPY, &lost);

	expect_res(p, (int[]){0, 9, 8, 17}, 4);
	cr_expect(!memcmp(p->buf, "zero-copygathered", 17));
}

Test(sim_io, accept_fills_the_peer_address)
{
	uint64_t lost;
	struct pair_out *p = run_pair(ACCEPT_ADDR, &lost);

	expect_res(p, (int[]){0}, 1);
	cr_expect_eq(p->peer_len, sizeof(struct sockaddr_in));
	cr_expect_eq(p->peer.sin_family, AF_INET);
	cr_expect_eq(p->peer.sin_addr.s_addr, htonl(INADDR_LOOPBACK));
	cr_expect_geq(ntohs(p->peer.sin_port), 32768, "an ephemeral port");
}

Test(sim_io, accept_without_a_descriptor_leaves_the_connection_queued)
{
	uint64_t lost;
	struct pair_out *p = run_pair(NO_FDS, &lost);

	expect_res(p, (int[]){0, 5, -EMFILE, 5}, 4);
	cr_expect(!memcmp(p->buf, "early", 5));
	cr_expect_eq(lost, 0);
}

/* ---- files ---- */

struct file_out {
	int res[16];
	int n;
	char buf[64];
	char a[4], b[8];
	struct statx st, st2;
};

struct file_task {
	struct keel_task task;
	struct file_out *o; /* the test's */
	int fd;
	struct iovec iov[2];
};

static int file_step(struct keel_task *t);
static KEEL_TASK_TYPE(file_task_type, struct file_task, task, file_step);

static void fnote(struct file_task *f, int res)
{
	if (f->o->n < 16)
		f->o->res[f->o->n] = res;
	f->o->n++;
}

static int file_step(struct keel_task *t)
{
	struct file_task *f = keel_container_of(t, struct file_task, task);

	KEEL_BEGIN(t);
	KEEL_AWAIT(t, keel_openat(t, AT_FDCWD, "/missing", O_RDONLY, 0));
	fnote(f, keel_res(t));
	KEEL_AWAIT(t,
		   keel_openat(t, AT_FDCWD, "/data", O_RDWR | O_CREAT, 0644));
	f->fd = keel_res(t);
	fnote(f, f->fd >= 0);
	KEEL_AWAIT(t, keel_write(t, f->fd, "hello", 5, KEEL_OFF_CURRENT));
	fnote(f, keel_res(t));
	KEEL_AWAIT(t, keel_write(t, f->fd, " world", 6, KEEL_OFF_CURRENT));
	fnote(f, keel_res(t));
	KEEL_AWAIT(t, keel_write(t, f->fd, "J", 1, 6));
	fnote(f, keel_res(t));
	KEEL_AWAIT(t, keel_read(t, f->fd, f->o->buf, sizeof(f->o->buf), 0));
	fnote(f, keel_res(t));
	f->iov[0] = (struct iovec){f->o->a, sizeof(f->o->a)};
	f->iov[1] = (struct iovec){f->o->b, sizeof(f->o->b)};
	KEEL_AWAIT(t, keel_readv(t, f->fd, f->iov, 2, 2));
	fnote(f, keel_res(t));
	KEEL_AWAIT(t, keel_writev(t, f->fd, f->iov, 2, 11));
	fnote(f, keel_res(t));
	KEEL_AWAIT(t, keel_fsync(t, f->fd, 0));
	fnote(f, keel_res(t));
	KEEL_AWAIT(t, keel_statx(t, f->fd, "", AT_EMPTY_PATH, STATX_BASIC_STATS,
				 &f->o->st));
	fnote(f, keel_res(t));
	KEEL_AWAIT(t, keel_close(t, f->fd));
	fnote(f, keel_res(t));
	KEEL_AWAIT(t, keel_statx(t, AT_FDCWD, "/data", 0, STATX_BASIC_STATS,
				 &f->o->st2));
	fnote(f, keel_res(t));
	KEEL_AWAIT(t, keel_openat(t, AT_FDCWD, "/data",
				  O_WRONLY | O_CREAT | O_EXCL, 0644));
	fnote(f, keel_res(t));
	KEEL_END(t);
}

Test(sim_io, file_ops_on_the_in_memory_file_system)
{
	struct keel_sim *sim = sim_new(9, 0, 0);
	struct keel_loop *loop = sim_loop(sim);
	struct file_task *t = kt_spawn(loop, &file_task_type, KEEL_PRIO_NORMAL);
	static struct file_out out;
	struct file_out *f = &out;

	t->o = f;
	cr_assert_eq(keel_sim_run(sim, 10ull * 1000000000u), 0);

	int want[] = {-ENOENT, 1, 5, 6, 1, 11, 9, 12, 0, 0, 0, 0, -EEXIST};

	cr_assert_eq(f->n, 13);
	for (int i = 0; i < 13; i++)
		cr_expect_eq(f->res[i], want[i], "op %d gave %d, not %d", i,
			     f->res[i], want[i]);
	cr_expect(!memcmp(f->buf, "hello Jorld", 11));
	cr_expect(!memcmp(f->a, "llo ", 4));
	cr_expect(!memcmp(f->b, "Jorld", 5));
	cr_expect_eq(f->st.stx_size, 23);
	cr_expect_eq(f->st2.stx_size, 23);
	cr_expect(S_ISREG(f->st2.stx_mode));
	sim_done(sim, loop);
}

/* ---- ops Linux runs at issue ---- */

struct issue_task {
	struct keel_task task;
	int fd;
	int *res; /* the test's: close, socket, openat */
};

/*
 * Each under a linked timeout that fires 1 ns on: a close, a socket and
 * an openat run at issue on Linux (a close cannot be cancelled once
 * submitted), so the timeout always comes too late.
 */
static int issue_step(struct keel_task *t)
{
	struct issue_task *it = keel_container_of(t, struct issue_task, task);

	KEEL_BEGIN(t);
	keel_op_timeout(t, 1);
	KEEL_AWAIT(t, keel_close(t, it->fd));
	it->res[0] = keel_res(t);
	keel_op_timeout(t, 1);
	KEEL_AWAIT(t, keel_socket(t, AF_INET, SOCK_STREAM, 0));
	it->res[1] = keel_res(t);
	if (keel_res(t) >= 0)
		KEEL_AWAIT(t, keel_close(t, it->res[1]));
	keel_op_timeout(t, 1);
	KEEL_AWAIT(t, keel_openat(t, AT_FDCWD, "/f", O_RDONLY, 0));
	it->res[2] = keel_res(t);
	if (keel_res(t) >= 0)
		KEEL_AWAIT(t, keel_close(t, it->res[2]));
	KEEL_END(t);
}

static KEEL_TASK_TYPE(issue_task_type, struct issue_task, task, issue_step);

Test(sim_io, a_close_under_a_linked_timeout_still_closes, .timeout = 30)
{
	for (uint64_t seed = 1; seed <= 20; seed++) {
		struct keel_sim *sim = sim_new(seed, 0, 0);
		struct keel_loop *loop = sim_loop(sim);
		struct issue_task *it =
		    kt_spawn(loop, &issue_task_type, KEEL_PRIO_NORMAL);
		int res[3] = {1, -1, -1};

		it->res = res;
		it->fd = keel_sim_file(sim, "/f", "x", 1);
		cr_assert_geq(it->fd, 0);
		cr_assert_eq(keel_sim_run(sim, 1000000000u), 0);
		cr_expect_eq(res[0], 0, "seed %" PRIu64 ": close gave %d", seed,
			     res[0]);
		cr_expect_geq(res[1], 0, "seed %" PRIu64 ": socket gave %d",
			      seed, res[1]);
		cr_expect_geq(res[2], 0, "seed %" PRIu64 ": openat gave %d",
			      seed, res[2]);
		sim_done(sim, loop);
	}
}
