/* SPDX-License-Identifier: MIT */
/*
 * echo.c: an echo server under churn. The server keeps an accept stream
 * on a simulated listener (its sockets sometimes direct descriptors) and
 * gives each connection a task with a recv stream (a shared provided-buffer
 * ring, sometimes tiny, so that -ENOBUFS happens; sometimes with bundles)
 * that echoes every chunk with send_all (or send_zc and its notification).
 * Clients arrive at PRNG-chosen times, send a PRNG-chosen amount (from nothing
 * to a few hundred KiB, in chunks of random sizes, from a writer task while
 * they read), and check every byte that comes back against the stream's
 * content. Half of them stay to the end; the others leave mid-transfer,
 * closing with data unread or resetting the connection.
 *
 * Checked: a client that stays gets exactly what it sent, in order; a
 * server connection ends with EOF or the peer's reset, nothing else; the
 * last client to finish stops the server, and everything is closed.
 */
#include "scenario.h"

#include <errno.h>
#include <string.h>

#define PORT	    7000
#define MAX_CLIENTS 24

enum leave { STAY, CLOSE_EARLY, RESET };

struct echo {
	struct scn *s;
	struct keel_bufring *ring;
	int lfd;
	unsigned clients_left;
	struct keel_task *acceptor; /* NULL once it exited */
	unsigned accepted;
	bool direct; /* accepted sockets are direct descriptors */
	bool zc;     /* the server echoes with keel_send_zc */
	bool bundle; /* recv streams ask for bundles */
};

struct acceptor {
	struct keel_task task;
	struct echo *e;
	struct keel_accept_stream as;
};

struct conn {
	struct keel_task task;
	struct echo *e;
	int fd;
	struct keel_recv_stream rs;
	struct keel_buf buf;
};

struct client {
	struct keel_task task;
	struct echo *e;
	unsigned id;
	int fd;
	enum leave leave;
	uint64_t total, leave_at, got;
	uint64_t delay;
	struct keel_task *writer;
	struct sockaddr_storage ss;
	socklen_t sslen;
	char rbuf[8192];
};

struct writer {
	struct keel_task task;
	struct client *c;
	uint64_t sent;
	size_t n;
	char wbuf[16384];
};

static int acceptor_step(struct keel_task *t);
static int conn_step(struct keel_task *t);
static int client_step(struct keel_task *t);
static int writer_step(struct keel_task *t);
static KEEL_TASK_TYPE(echo_acceptor, struct acceptor, task, acceptor_step);
static KEEL_TASK_TYPE(echo_conn, struct conn, task, conn_step);
static KEEL_TASK_TYPE(echo_client, struct client, task, client_step);
static KEEL_TASK_TYPE(echo_writer, struct writer, task, writer_step);

static int acceptor_step(struct keel_task *t)
{
	struct acceptor *a = keel_container_of(t, struct acceptor, task);
	struct echo *e = a->e;
	int err;

	KEEL_BEGIN(t);
	err = keel_accept_stream_open(t, &a->as, e->lfd,
				      e->direct ? KEEL_ACCEPT_DIRECT : 0);
	if (err) {
		scn_fail(e->s, "accept_stream_open: %s", keel_strerror(err));
		goto out;
	}
	for (;;) {
		KEEL_AWAIT(t, keel_accept_next(t, &a->as));
		if (keel_res(t) < 0)
			break;
		struct conn *c =
		    keel_spawn(keel_task_loop(t), &echo_conn, KEEL_PRIO_NORMAL);

		if (!c) {
			scn_fail(e->s, "out of memory");
			/* not ours to close with a plain close(2) */
			KEEL_AWAIT(t, keel_close(t, keel_res(t)));
			continue;
		}
		c->e = e;
		c->fd = keel_res(t);
		e->accepted++;
	}
	/* Only the last client stops it, by cancelling it. */
	if (keel_res(t) != -ECANCELED && !scn_faulted(e->s, keel_res(t)))
		scn_fail(e->s, "accept stream ended: %s",
			 keel_strerror(keel_res(t)));
out:
	keel_accept_stream_close(&a->as);
	e->acceptor = NULL;
	KEEL_AWAIT(t, keel_close(t, e->lfd));
	KEEL_END(t);
}

static int conn_step(struct keel_task *t)
{
	struct conn *c = keel_container_of(t, struct conn, task);
	int err;

	KEEL_BEGIN(t);
	err = keel_recv_stream_open(t, &c->rs, c->fd, c->e->ring,
				    c->e->bundle ? KEEL_RECV_BUNDLE : 0);
	/* Accepted as the last client left: the acceptor, cancelled since,
	 * spawned it under its cancelled token (seed 456). */
	if (err == -ECANCELED)
		goto out;
	if (err) {
		scn_fail(c->e->s, "recv_stream_open: %s", keel_strerror(err));
		goto out;
	}
	for (;;) {
		KEEL_AWAIT(t, keel_recv_next(t, &c->rs, &c->buf));
		if (keel_res(t) <= 0)
			break;
		if (c->e->zc)
			KEEL_AWAIT(t, keel_send_zc(t, c->fd, c->buf.data,
						   c->buf.len, MSG_NOSIGNAL));
		else
			KEEL_AWAIT(t, keel_send_all(t, c->fd, c->buf.data,
						    c->buf.len, MSG_NOSIGNAL));
		keel_buf_release(&c->buf);
		if (keel_res(t) < 0)
			break;
	}
	/* EOF, or the client left: its reset, or our send into it. */
	if (keel_res(t) < 0 && keel_res(t) != -ECONNRESET &&
	    keel_res(t) != -EPIPE && !scn_faulted(c->e->s, keel_res(t)))
		scn_fail(c->e->s, "server connection: %s",
			 keel_strerror(keel_res(t)));
out:
	keel_buf_release(&c->buf);
	keel_recv_stream_close(&c->rs);
	KEEL_AWAIT(t, keel_close(t, c->fd));
	KEEL_END(t);
}

static int writer_step(struct keel_task *t)
{
	struct writer *w = keel_container_of(t, struct writer, task);
	struct client *c = w->c;

	KEEL_BEGIN(t);
	while (w->sent < c->total) {
		w->n = (size_t)scn_range(c->e->s, 1, sizeof(w->wbuf));
		if (w->n > c->total - w->sent)
			w->n = (size_t)(c->total - w->sent);
		scn_fill(c->id, w->sent, w->wbuf, w->n);
		KEEL_AWAIT(
		    t, keel_send_all(t, c->fd, w->wbuf, w->n, MSG_NOSIGNAL));
		if (keel_res(t) < 0)
			KEEL_EXIT(t, scn_writer_failed(t, c->e->s, c->fd));
		w->sent += w->n;
	}
	KEEL_END(t);
}

static void client_done(struct client *c)
{
	if (--c->e->clients_left == 0 && c->e->acceptor)
		keel_task_cancel(c->e->acceptor);
}

static int client_step(struct keel_task *t)
{
	struct client *c = keel_container_of(t, struct client, task);
	struct scn *s = c->e->s;
	size_t len, ok;

	KEEL_BEGIN(t);
	KEEL_AWAIT(t, keel_sleep(t, c->delay));
	KEEL_AWAIT(t, keel_socket(t, AF_INET, SOCK_STREAM, 0));
	if (keel_res(t) < 0) {
		if (!scn_faulted(s, keel_res(t)))
			scn_fail(s, "client %u: socket: %s", c->id,
				 keel_strerror(keel_res(t)));
		client_done(c);
		KEEL_EXIT(t, keel_res(t));
	}
	c->fd = keel_res(t);
	scn_addr(PORT, &c->ss, &c->sslen);
	KEEL_AWAIT(t,
		   keel_connect(t, c->fd, (struct sockaddr *)&c->ss, c->sslen));
	if (keel_res(t) < 0) {
		if (!scn_faulted(s, keel_res(t)))
			scn_fail(s, "client %u: connect: %s", c->id,
				 keel_strerror(keel_res(t)));
		goto close;
	}
	struct writer *w = keel_spawn(keel_task_loop(t), &echo_writer,
				      KEEL_PRIO_NORMAL | KEEL_SPAWN_JOINABLE);

	if (!w) {
		scn_fail(s, "out of memory");
		goto close;
	}
	w->c = c;
	c->writer = keel_task_of(&echo_writer, w);
	while (c->got < c->total) {
		if (c->leave != STAY && c->got >= c->leave_at)
			break;
		len = (size_t)scn_range(s, 1, sizeof(c->rbuf));
		if (len > c->total - c->got)
			len = (size_t)(c->total - c->got);
		KEEL_AWAIT(t, keel_recv(t, c->fd, c->rbuf, len, 0));
		if (keel_res(t) <= 0) {
			if (!scn_faulted(s, keel_res(t)))
				scn_fail(s,
					 "client %u: recv after %llu of %llu: "
					 "%s",
					 c->id, (unsigned long long)c->got,
					 (unsigned long long)c->total,
					 keel_res(t)
					     ? keel_strerror(keel_res(t))
					     : "EOF");
			break;
		}
		ok = scn_verify(c->id, c->got, c->rbuf, (size_t)keel_res(t));
		if (ok != (size_t)keel_res(t)) {
			scn_fail(s, "client %u: byte %llu differs", c->id,
				 (unsigned long long)(c->got + ok));
			break;
		}
		c->got += (uint64_t)keel_res(t);
	}
	if (c->got < c->total) {
		if (c->leave == RESET)
			keel_sim_reset(s->sim, c->fd);
		keel_task_cancel(c->writer);
	}
	KEEL_AWAIT(t, keel_join(t, c->writer));
	if (c->got == c->total) {
		if (keel_res(t) != 0)
			scn_fail(s, "client %u: writer: %s", c->id,
				 keel_strerror(keel_res(t)));
		s->transfers++;
		s->bytes_checked += c->total;
	}
close:
	KEEL_AWAIT(t, keel_close(t, c->fd));
	client_done(c);
	KEEL_END(t);
}

static void echo_run(struct scn *s)
{
	static const uint32_t counts[] = {4, 16, 256};
	static const uint32_t sizes[] = {64, 1024, 4096};
	struct echo *e = scn_world(s, sizeof(*e));
	struct keel_bufring_opts ro = {0};
	struct keel_loop *loop = scn_loop(s);
	char addr[32];
	int err;

	if (!e || !loop)
		return;
	e->s = s;
	e->direct = scn_pct(s, 30);
	e->zc = scn_pct(s, 30);
	e->bundle = scn_pct(s, 30);
	if (e->zc) /* every echo zero-copy: the notification path */
		keel_loop_set_zc_threshold(loop, 1);
	ro.count = counts[scn_below(s, 3)];
	ro.size = sizes[scn_below(s, 3)];
	err = keel_bufring_create(loop, &ro, &e->ring);
	if (err) {
		scn_fail(s, "bufring_create: %s", keel_strerror(err));
		return;
	}
	e->lfd = keel_sim_listen(s->sim, scn_addr_text(PORT, addr),
				 (int)scn_range(s, 1, 16));
	if (e->lfd < 0) {
		scn_fail(s, "keel_sim_listen: %s", keel_strerror(e->lfd));
		return;
	}
	struct acceptor *a = keel_spawn(loop, &echo_acceptor, KEEL_PRIO_NORMAL);

	if (!a) {
		scn_fail(s, "out of memory");
		return;
	}
	a->e = e;
	e->acceptor = keel_task_of(&echo_acceptor, a);
	e->clients_left = (unsigned)scn_range(s, 1, MAX_CLIENTS);
	for (unsigned i = 0, n = e->clients_left; i < n; i++) {
		struct client *c =
		    keel_spawn(loop, &echo_client, KEEL_PRIO_NORMAL);

		if (!c) {
			scn_fail(s, "out of memory");
			return;
		}
		c->e = e;
		c->id = i + 1;
		c->fd = -1;
		c->delay = scn_below(s, 50 * MS);
		/* Mostly small; a few large enough to fill the buffers. */
		c->total = scn_pct(s, 20) ? scn_below(s, 256 * 1024)
					  : scn_below(s, 8192);
		c->leave = scn_pct(s, 50)
			       ? STAY
			       : (scn_pct(s, 50) ? CLOSE_EARLY : RESET);
		c->leave_at = scn_below(s, c->total + 1);
	}
	scn_run(s, 600 * SEC);
}

const struct scenario scn_echo = {
    .name = "echo",
    .what = "echo server under churn: clients leave mid-transfer, reset",
    .run = echo_run,
};
