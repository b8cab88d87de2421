/* SPDX-License-Identifier: MIT */
/*
 * proxy.c: a TCP proxy between clients and an echo backend, with resets
 * on both sides. For each client the proxy connects to the backend and
 * runs a pair of copy tasks in a scope (client to backend, backend to
 * client); the first to end (EOF, an error) cancels the other, then both
 * sockets are closed. Clients send a 4-byte id, then a stream whose
 * content says where each byte belongs, and read the echo back; some
 * reset their connection mid-transfer, and the backend resets some
 * connections after a PRNG-chosen number of bytes (it knows which client
 * a connection serves from the id).
 *
 * Checked: a client whose path had no reset gets exactly what it sent;
 * any client gets a correct prefix of it (never a wrong byte); the copy
 * tasks end only with EOF, a reset, a broken pipe or the cancellation by
 * their sibling; everything is closed at the end.
 */
#include "scenario.h"

#include <errno.h>
#include <string.h>

#define PROXY_PORT   7100
#define BACKEND_PORT 7101
#define MAX_CLIENTS  16

struct plan {
	bool client_reset;  /* the client resets at client_at bytes */
	bool backend_reset; /* the backend resets at backend_at bytes */
	uint64_t total, client_at, backend_at;
};

struct proxy {
	struct scn *s;
	int proxy_lfd, backend_lfd;
	unsigned clients_left;
	struct keel_task *acceptors[2]; /* NULL once exited */
	struct plan plans[MAX_CLIENTS + 1];
};

/* An acceptor for the proxy's or the backend's listener. */
struct acceptor {
	struct keel_task task;
	struct proxy *p;
	int which; /* 0: proxy, 1: backend */
	struct keel_accept_stream as;
};

struct backend_conn {
	struct keel_task task;
	struct proxy *p;
	int fd;
	uint32_t id;
	unsigned hgot;
	uint64_t echoed;
	size_t n;
	char buf[4096];
};

struct pair {
	struct keel_task task;
	struct proxy *p;
	int cfd, bfd;
	struct keel_scope scope;
	struct sockaddr_storage ss;
	socklen_t sslen;
};

struct copy {
	struct keel_task task;
	struct proxy *p;
	int from, to;
	char buf[8192];
};

struct client {
	struct keel_task task;
	struct proxy *p;
	uint32_t id;
	int fd;
	uint64_t got, delay;
	unsigned hgot;
	uint32_t hdr;
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
	uint32_t hdr;
	char wbuf[8192];
};

static int acceptor_step(struct keel_task *t);
static int backend_step(struct keel_task *t);
static int pair_step(struct keel_task *t);
static int copy_step(struct keel_task *t);
static int client_step(struct keel_task *t);
static int writer_step(struct keel_task *t);
static KEEL_TASK_TYPE(proxy_acceptor, struct acceptor, task, acceptor_step);
static KEEL_TASK_TYPE(proxy_backend, struct backend_conn, task, backend_step);
static KEEL_TASK_TYPE(proxy_pair, struct pair, task, pair_step);
static KEEL_TASK_TYPE(proxy_copy, struct copy, task, copy_step);
static KEEL_TASK_TYPE(proxy_client, struct client, task, client_step);
static KEEL_TASK_TYPE(proxy_writer, struct writer, task, writer_step);

static bool benign(int res)
{
	return res >= 0 || res == -ECONNRESET || res == -EPIPE ||
	       res == -ECANCELED;
}

static int acceptor_step(struct keel_task *t)
{
	struct acceptor *a = keel_container_of(t, struct acceptor, task);
	struct proxy *p = a->p;
	int lfd = a->which ? p->backend_lfd : p->proxy_lfd;
	int err;

	KEEL_BEGIN(t);
	err = keel_accept_stream_open(t, &a->as, lfd, 0);
	if (err) {
		scn_fail(p->s, "accept_stream_open: %s", keel_strerror(err));
		goto out;
	}
	for (;;) {
		KEEL_AWAIT(t, keel_accept_next(t, &a->as));
		if (keel_res(t) < 0)
			break;
		if (a->which) {
			struct backend_conn *b =
			    keel_spawn(keel_task_loop(t), &proxy_backend,
				       KEEL_PRIO_NORMAL);

			if (b) {
				b->p = p;
				b->fd = keel_res(t);
				continue;
			}
		} else {
			struct pair *q = keel_spawn(
			    keel_task_loop(t), &proxy_pair, KEEL_PRIO_NORMAL);

			if (q) {
				q->p = p;
				q->cfd = keel_res(t);
				q->bfd = -1;
				continue;
			}
		}
		scn_fail(p->s, "out of memory");
		KEEL_AWAIT(t, keel_close(t, keel_res(t)));
	}
	if (keel_res(t) != -ECANCELED && !scn_faulted(p->s, keel_res(t)))
		scn_fail(p->s, "accept stream ended: %s",
			 keel_strerror(keel_res(t)));
out:
	keel_accept_stream_close(&a->as);
	p->acceptors[a->which] = NULL;
	KEEL_AWAIT(t, keel_close(t, a->which ? p->backend_lfd : p->proxy_lfd));
	KEEL_END(t);
}

/* The backend: read the id, then echo; reset where the plan says. */
static int backend_step(struct keel_task *t)
{
	struct backend_conn *b =
	    keel_container_of(t, struct backend_conn, task);
	const struct plan *pl;

	KEEL_BEGIN(t);
	while (b->hgot < 4) {
		KEEL_AWAIT(t, keel_recv(t, b->fd, (char *)&b->id + b->hgot,
					4 - b->hgot, 0));
		if (keel_res(t) <= 0)
			goto out;
		b->hgot += (unsigned)keel_res(t);
	}
	if (b->id == 0 || b->id > MAX_CLIENTS) {
		scn_fail(b->p->s, "backend: client id %u", b->id);
		goto out;
	}
	KEEL_AWAIT(t, keel_send_all(t, b->fd, &b->id, 4, MSG_NOSIGNAL));
	if (keel_res(t) < 0)
		goto out;
	for (;;) {
		pl = &b->p->plans[b->id];
		b->n = sizeof(b->buf);
		if (pl->backend_reset) {
			if (b->echoed >= pl->backend_at) {
				keel_sim_reset(b->p->s->sim, b->fd);
				break;
			}
			if (b->n > pl->backend_at - b->echoed)
				b->n = (size_t)(pl->backend_at - b->echoed);
		}
		KEEL_AWAIT(t, keel_recv(t, b->fd, b->buf, b->n, 0));
		if (keel_res(t) <= 0)
			break;
		b->n = (size_t)keel_res(t);
		KEEL_AWAIT(t,
			   keel_send_all(t, b->fd, b->buf, b->n, MSG_NOSIGNAL));
		if (keel_res(t) < 0)
			break;
		b->echoed += b->n;
	}
out:
	if (!benign(keel_res(t)) && !scn_faulted(b->p->s, keel_res(t)))
		scn_fail(b->p->s, "backend: %s", keel_strerror(keel_res(t)));
	KEEL_AWAIT(t, keel_close(t, b->fd));
	KEEL_END(t);
}

static int copy_step(struct keel_task *t)
{
	struct copy *c = keel_container_of(t, struct copy, task);

	KEEL_BEGIN(t);
	for (;;) {
		KEEL_AWAIT(t, keel_recv(t, c->from, c->buf, sizeof(c->buf), 0));
		if (keel_res(t) <= 0)
			break;
		KEEL_AWAIT(t, keel_send_all(t, c->to, c->buf,
					    (size_t)keel_res(t), MSG_NOSIGNAL));
		if (keel_res(t) < 0)
			break;
	}
	if (!benign(keel_res(t)) && !scn_faulted(c->p->s, keel_res(t)))
		scn_fail(c->p->s, "copy: %s", keel_strerror(keel_res(t)));
	KEEL_EXIT(t, keel_res(t) < 0 ? keel_res(t) : 0);
}

static bool spawn_copy(struct pair *q, int from, int to)
{
	struct copy *c =
	    keel_scope_spawn(&q->scope, &proxy_copy, KEEL_PRIO_NORMAL);

	if (!c)
		return false;
	c->p = q->p;
	c->from = from;
	c->to = to;
	return true;
}

static int pair_step(struct keel_task *t)
{
	struct pair *q = keel_container_of(t, struct pair, task);
	struct scn *s = q->p->s;

	KEEL_BEGIN(t);
	KEEL_AWAIT(t, keel_socket(t, AF_INET, SOCK_STREAM, 0));
	if (keel_res(t) < 0) {
		if (!scn_faulted(s, keel_res(t)))
			scn_fail(s, "proxy: socket: %s",
				 keel_strerror(keel_res(t)));
		goto out;
	}
	q->bfd = keel_res(t);
	scn_addr(BACKEND_PORT, &q->ss, &q->sslen);
	KEEL_AWAIT(
	    t, keel_connect(t, q->bfd, (struct sockaddr *)&q->ss, q->sslen));
	if (keel_res(t) < 0) {
		if (!scn_faulted(s, keel_res(t)))
			scn_fail(s, "proxy: connect: %s",
				 keel_strerror(keel_res(t)));
		goto out;
	}
	if (keel_scope_init(t, &q->scope, KEEL_SCOPE_COLLECT) ||
	    !spawn_copy(q, q->cfd, q->bfd) || !spawn_copy(q, q->bfd, q->cfd)) {
		scn_fail(s, "out of memory");
		keel_scope_cancel(&q->scope);
	} else {
		/* The first direction to end ends the other. */
		KEEL_AWAIT(t, keel_scope_join_any(t, &q->scope));
		keel_scope_cancel(&q->scope);
	}
	KEEL_AWAIT(t, keel_scope_join(t, &q->scope));
	keel_scope_fini(&q->scope);
out:
	if (q->bfd >= 0)
		KEEL_AWAIT(t, keel_close(t, q->bfd));
	KEEL_AWAIT(t, keel_close(t, q->cfd));
	KEEL_END(t);
}

static int writer_step(struct keel_task *t)
{
	struct writer *w = keel_container_of(t, struct writer, task);
	struct client *c = w->c;
	const struct plan *pl = &c->p->plans[c->id];

	KEEL_BEGIN(t);
	w->hdr = c->id;
	KEEL_AWAIT(t, keel_send_all(t, c->fd, &w->hdr, 4, MSG_NOSIGNAL));
	if (keel_res(t) < 0)
		KEEL_EXIT(t, scn_writer_failed(t, c->p->s, c->fd));
	while (w->sent < pl->total) {
		w->n = (size_t)scn_range(c->p->s, 1, sizeof(w->wbuf));
		if (w->n > pl->total - w->sent)
			w->n = (size_t)(pl->total - w->sent);
		scn_fill(c->id, w->sent, w->wbuf, w->n);
		KEEL_AWAIT(
		    t, keel_send_all(t, c->fd, w->wbuf, w->n, MSG_NOSIGNAL));
		if (keel_res(t) < 0)
			KEEL_EXIT(t, scn_writer_failed(t, c->p->s, c->fd));
		w->sent += w->n;
	}
	KEEL_END(t);
}

static void client_done(struct client *c)
{
	if (--c->p->clients_left)
		return;
	for (int i = 0; i < 2; i++)
		if (c->p->acceptors[i])
			keel_task_cancel(c->p->acceptors[i]);
}

static int client_step(struct keel_task *t)
{
	struct client *c = keel_container_of(t, struct client, task);
	struct proxy *p = c->p;
	const struct plan *pl = &p->plans[c->id];
	struct scn *s = p->s;
	size_t len, ok;
	bool reset = pl->client_reset || pl->backend_reset;

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
	scn_addr(PROXY_PORT, &c->ss, &c->sslen);
	KEEL_AWAIT(t,
		   keel_connect(t, c->fd, (struct sockaddr *)&c->ss, c->sslen));
	if (keel_res(t) < 0) {
		if (!scn_faulted(s, keel_res(t)))
			scn_fail(s, "client %u: connect: %s", c->id,
				 keel_strerror(keel_res(t)));
		goto close;
	}
	struct writer *w = keel_spawn(keel_task_loop(t), &proxy_writer,
				      KEEL_PRIO_NORMAL | KEEL_SPAWN_JOINABLE);

	if (!w) {
		scn_fail(s, "out of memory");
		goto close;
	}
	w->c = c;
	c->writer = keel_task_of(&proxy_writer, w);
	while (c->hgot < 4) {
		KEEL_AWAIT(t, keel_recv(t, c->fd, (char *)&c->hdr + c->hgot,
					4 - c->hgot, 0));
		if (keel_res(t) <= 0)
			goto end;
		c->hgot += (unsigned)keel_res(t);
	}
	if (c->hdr != c->id) {
		scn_fail(s, "client %u: got the id %u back", c->id, c->hdr);
		goto end;
	}
	while (c->got < pl->total) {
		if (pl->client_reset && c->got >= pl->client_at) {
			keel_sim_reset(s->sim, c->fd);
			break;
		}
		len = (size_t)scn_range(s, 1, sizeof(c->rbuf));
		if (len > pl->total - c->got)
			len = (size_t)(pl->total - c->got);
		KEEL_AWAIT(t, keel_recv(t, c->fd, c->rbuf, len, 0));
		if (keel_res(t) <= 0)
			break;
		ok = scn_verify(c->id, c->got, c->rbuf, (size_t)keel_res(t));
		if (ok != (size_t)keel_res(t)) {
			scn_fail(s, "client %u: byte %llu differs", c->id,
				 (unsigned long long)(c->got + ok));
			break;
		}
		c->got += (uint64_t)keel_res(t);
	}
end:
	/* Only a reset on the path may cut the echo short. */
	if (c->got < pl->total && !reset && !s->failed &&
	    !scn_faulted(s, keel_res(t)))
		scn_fail(s, "client %u: echo ends after %llu of %llu: %s",
			 c->id, (unsigned long long)c->got,
			 (unsigned long long)pl->total,
			 keel_res(t) < 0 ? keel_strerror(keel_res(t)) : "EOF");
	if (c->got < pl->total)
		keel_task_cancel(c->writer);
	KEEL_AWAIT(t, keel_join(t, c->writer));
	if (c->got == pl->total && !reset) {
		if (keel_res(t) != 0)
			scn_fail(s, "client %u: writer: %s", c->id,
				 keel_strerror(keel_res(t)));
		s->transfers++;
		s->bytes_checked += pl->total;
	}
close:
	KEEL_AWAIT(t, keel_close(t, c->fd));
	client_done(c);
	KEEL_END(t);
}

static bool spawn_acceptor(struct keel_loop *loop, struct proxy *p, int which)
{
	struct acceptor *a =
	    keel_spawn(loop, &proxy_acceptor, KEEL_PRIO_NORMAL);

	if (!a)
		return false;
	a->p = p;
	a->which = which;
	p->acceptors[which] = keel_task_of(&proxy_acceptor, a);
	return true;
}

static void proxy_run(struct scn *s)
{
	struct proxy *p = scn_world(s, sizeof(*p));
	struct keel_loop *loop = scn_loop(s);
	char addr[32];

	if (!p || !loop)
		return;
	p->s = s;
	p->proxy_lfd = keel_sim_listen(s->sim, scn_addr_text(PROXY_PORT, addr),
				       (int)scn_range(s, 1, 16));
	p->backend_lfd =
	    keel_sim_listen(s->sim, scn_addr_text(BACKEND_PORT, addr),
			    (int)scn_range(s, 1, 16));
	if (p->proxy_lfd < 0 || p->backend_lfd < 0) {
		scn_fail(s, "keel_sim_listen: %s",
			 keel_strerror(p->proxy_lfd < 0 ? p->proxy_lfd
							: p->backend_lfd));
		return;
	}
	if (!spawn_acceptor(loop, p, 0) || !spawn_acceptor(loop, p, 1)) {
		scn_fail(s, "out of memory");
		return;
	}
	p->clients_left = (unsigned)scn_range(s, 1, MAX_CLIENTS);
	for (uint32_t i = 1; i <= p->clients_left; i++) {
		struct plan *pl = &p->plans[i];
		struct client *c =
		    keel_spawn(loop, &proxy_client, KEEL_PRIO_NORMAL);

		if (!c) {
			scn_fail(s, "out of memory");
			return;
		}
		pl->total = scn_pct(s, 20) ? scn_below(s, 192 * 1024)
					   : scn_below(s, 8192);
		pl->client_reset = scn_pct(s, 20);
		pl->client_at = scn_below(s, pl->total + 1);
		pl->backend_reset = scn_pct(s, 20);
		pl->backend_at = scn_below(s, pl->total + 1);
		c->p = p;
		c->id = i;
		c->fd = -1;
		c->delay = scn_below(s, 50 * MS);
	}
	scn_run(s, 600 * SEC);
}

const struct scenario scn_proxy = {
    .name = "proxy",
    .what = "proxy pairs between clients and an echo backend, resets on "
	    "both sides",
    .run = proxy_run,
};
