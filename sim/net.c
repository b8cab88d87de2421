/* SPDX-License-Identifier: MIT */
/*
 * net.c: TCP-like sockets on the simulated machine's loopback.
 *
 * A connection is two endpoints, each with a bounded receive queue (the
 * peer's send buffer and our receive buffer in one: sndbuf bytes per
 * direction). A send copies into the peer's queue or returns -EAGAIN when
 * it is full; a recv takes from our own. Addresses are keys on the
 * loopback: the port for AF_INET and AF_INET6 (any IP is this machine),
 * the path for AF_UNIX.
 *
 * What keel can tell apart follows Linux (net/ipv4/tcp.c, tcp_input.c):
 *   - a listener queues up to backlog + 1 established connections
 *     (sk_acceptq_is_full is "more than backlog"); a connect beyond that
 *     stays pending (its SYN is dropped and retried) until an accept makes
 *     room, and gets -ECONNREFUSED if the listener is closed first;
 *   - connections queued and never accepted are reset when the listener
 *     closes (inet_csk_listen_stop);
 *   - close with unread data sends an RST (the unread bytes are lost),
 *     otherwise a FIN: the peer reads what is queued, then 0;
 *   - an RST makes the next recv (once the queue is drained) or send fail
 *     with the pending error, -ECONNRESET (-EPIPE if the peer had already
 *     sent its FIN, tcp_reset in CLOSE_WAIT), and every send after that
 *     -EPIPE; a recv then returns 0;
 *   - a send to a peer that has closed is accepted (and lost): the RST it
 *     draws makes the next send fail.
 * Flags: MSG_PEEK copies without taking; MSG_NOSIGNAL changes nothing
 * (nothing here raises a signal); MSG_DONTWAIT is the engine's (it does
 * not park the op); MSG_WAITALL is not honoured (keel does not use it): a
 * recv returns what is queued. A PRNG draw (short_ppm) may cut any send or
 * recv of more than one byte short, as a real stack does under load.
 * Every change that can make a parked op succeed calls sim__file_wake().
 */
#include "model.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <keel/io.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>

#define EPHEMERAL_FIRST	  32768
#define SOMAXCONN_DEFAULT 4096

enum sock_state {
	S_NEW,	       /* socket(2), not connected */
	S_LISTEN,      /* bound and listening */
	S_SYN_SENT,    /* connect pending: the listener's queue is full */
	S_ESTABLISHED, /* connected (the peer may have closed: peer NULL) */
	S_CLOSED,      /* reset, or a listener shut down */
};

/* A loopback address: the port (inet) or the path (AF_UNIX) is the key. */
struct sim_addr {
	sa_family_t family;
	uint16_t port;
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
};

/* What both ends of a connection share: the counters, per direction. */
struct sim_conn {
	struct sim_conn_bytes dir[2]; /* [0]: client to server */
	unsigned ends;
};

struct sim_sock {
	struct sim_file file; /* first: the engine sees a sim_file */
	struct sim_net *net;
	int family;
	uint8_t state;
	bool rx_eof;	       /* the peer's FIN arrived (after rx) */
	bool rd_shut;	       /* RCV_SHUTDOWN: shutdown(SHUT_RD) or RST */
	bool wr_shut;	       /* SEND_SHUTDOWN: shutdown(SHUT_WR) or RST */
	bool connect_reported; /* the connect's 0 was returned */
	int err;	       /* pending sk_err, reported once */
	struct sim_addr local, remote;
	struct sim_sock *peer;	/* NULL once the peer is released or reset */
	struct sim_conn *conn;	/* shared with the peer */
	unsigned dir;		/* conn->dir[] index this end sends on */
	struct sim_bq rx;	/* bytes from the peer, not yet received */
	struct sim_sock *owner; /* the listener whose queue holds us */
	struct keel__link link; /* net->listeners, owner's acceptq or synq */
	struct keel__link node; /* net->socks */
	/* A listener: */
	int backlog;
	uint32_t queued;	   /* on acceptq */
	struct keel__list acceptq; /* established, not yet accepted */
	struct keel__list synq;	   /* connects waiting for room */
};

static const struct sim_file_ops sock_ops;

static struct sim_sock *sock_of(struct sim_file *f)
{
	return (struct sim_sock *)f;
}

bool sim__is_sock(const struct sim_file *f)
{
	return f && f->ops == &sock_ops;
}

/* Byte queues (shared with pipe.c). */

int sim__bq_init(struct sim_bq *q, uint32_t cap)
{
	q->data = malloc(cap ? cap : 1);
	q->cap = cap;
	q->head = 0;
	q->len = 0;
	return q->data ? 0 : -ENOMEM;
}

void sim__bq_free(struct sim_bq *q)
{
	free(q->data);
	q->data = NULL;
	q->cap = q->len = 0;
}

size_t sim__bq_put(struct sim_bq *q, const void *src, size_t n)
{
	uint32_t tail = (q->head + q->len) % q->cap;
	size_t first = q->cap - tail;

	assert(n <= q->cap - q->len);
	if (first > n)
		first = n;
	memcpy(q->data + tail, src, first);
	memcpy(q->data, (const char *)src + first, n - first);
	q->len += (uint32_t)n;
	return n;
}

size_t sim__bq_get(struct sim_bq *q, void *dst, size_t n, bool peek)
{
	size_t first = q->cap - q->head;

	if (n > q->len)
		n = q->len;
	if (first > n)
		first = n;
	memcpy(dst, q->data + q->head, first);
	memcpy((char *)dst + first, q->data, n - first);
	if (!peek) {
		q->head = (uint32_t)((q->head + n) % q->cap);
		q->len -= (uint32_t)n;
	}
	return n;
}

size_t sim__short(struct keel__sim *s, unsigned ppm, size_t n)
{
	/* Only draw when shorts are on, so that a machine without them
	 * makes the same draws whatever the transfers are. */
	if (!ppm || n < 2 || sim__rand(s) % 1000000 >= ppm)
		return n;
	return 1 + (size_t)(sim__rand(s) % (n - 1));
}

/* The loopback. */

struct sim_net *sim__net(struct keel__sim *s)
{
	struct sim_net *n = s->net;

	if (n)
		return n;
	n = calloc(1, sizeof(*n));
	if (!n)
		return NULL;
	n->sim = s;
	n->sndbuf = s->opts.sndbuf ? s->opts.sndbuf : 65536;
	n->short_ppm = s->opts.short_ppm;
	n->next_port = EPHEMERAL_FIRST;
	keel__list_init(&n->listeners);
	keel__list_init(&n->socks);
	keel__list_init(&n->pipes);
	s->net = n;
	return n;
}

void sim__net_wake(struct sim_net *n, struct sim_file *f)
{
	n->wakes++;
	sim__file_wake(f);
}

/* The machine's counters (keel_sim_stats) follow the model's. */
static void sync_stats(struct sim_net *n)
{
	struct sim_model_stats *m = &n->sim->model;

	m->conns = n->conns;
	m->bytes_sent = n->bytes.sent;
	m->bytes_received = n->bytes.received;
	m->bytes_lost = n->bytes.lost;
}

void sim__net_count(struct sim_net *n, uint64_t sent, uint64_t received,
		    uint64_t lost)
{
	n->bytes.sent += sent;
	n->bytes.received += received;
	n->bytes.lost += lost;
	n->bytes.buffered += sent;
	n->bytes.buffered -= received + lost;
	sync_stats(n);
}

int sim__net_check(const struct sim_net *n, char *why, size_t len)
{
	const struct sim_bytes *b = &n->bytes;

	if (b->sent != b->received + b->lost + b->buffered) {
		snprintf(why, len,
			 "bytes: %llu sent != %llu received + %llu lost + "
			 "%llu buffered",
			 (unsigned long long)b->sent,
			 (unsigned long long)b->received,
			 (unsigned long long)b->lost,
			 (unsigned long long)b->buffered);
		return -1;
	}
	if (n->open) {
		snprintf(why, len, "%u sockets or pipe ends still open",
			 n->open);
		return -1;
	}
	return 0;
}

static int addr_from(struct sim_addr *a, int family, const struct sockaddr *sa,
		     socklen_t len)
{
	memset(a, 0, sizeof(*a));
	if (!sa || len < sizeof(sa_family_t))
		return -EINVAL;
	if (sa->sa_family != family)
		return -EAFNOSUPPORT;
	a->family = (sa_family_t)family;
	switch (family) {
	case AF_INET:
		if (len < sizeof(struct sockaddr_in))
			return -EINVAL;
		a->port = ntohs(((const struct sockaddr_in *)sa)->sin_port);
		return 0;
	case AF_INET6:
		if (len < sizeof(struct sockaddr_in6))
			return -EINVAL;
		a->port = ntohs(((const struct sockaddr_in6 *)sa)->sin6_port);
		return 0;
	case AF_UNIX: {
		size_t n = len - offsetof(struct sockaddr_un, sun_path);

		if (n > sizeof(a->path) - 1)
			n = sizeof(a->path) - 1;
		memcpy(a->path, ((const struct sockaddr_un *)sa)->sun_path, n);
		return a->path[0] ? 0 : -EINVAL;
	}
	}
	return -EAFNOSUPPORT;
}

/* The sockaddr of `a` as a socket of `family` reports it: loopback IPs. */
static socklen_t addr_to(const struct sim_addr *a, int family,
			 struct sockaddr_storage *ss)
{
	memset(ss, 0, sizeof(*ss));
	ss->ss_family = (sa_family_t)family;
	if (family == AF_INET) {
		struct sockaddr_in *in = (struct sockaddr_in *)ss;

		in->sin_port = htons(a->port);
		in->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		return sizeof(*in);
	}
	if (family == AF_INET6) {
		struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;

		in6->sin6_port = htons(a->port);
		in6->sin6_addr = in6addr_loopback;
		return sizeof(*in6);
	}
	struct sockaddr_un *un = (struct sockaddr_un *)ss;
	size_t n = strlen(a->path);

	/* An unnamed AF_UNIX socket (a client) reports just the family. */
	memcpy(un->sun_path, a->path, n);
	return (socklen_t)(offsetof(struct sockaddr_un, sun_path) +
			   (n ? n + 1 : 0));
}

static bool addr_same_key(const struct sim_addr *a, const struct sim_addr *b)
{
	bool inet_a = a->family != AF_UNIX, inet_b = b->family != AF_UNIX;

	if (inet_a != inet_b)
		return false;
	return inet_a ? a->port == b->port : !strcmp(a->path, b->path);
}

static struct sim_sock *find_listener(struct sim_net *n,
				      const struct sim_addr *a)
{
	struct keel__link *it;

	keel__list_for_each (it, &n->listeners) {
		struct sim_sock *l =
		    keel__list_entry(it, struct sim_sock, link);

		if (addr_same_key(&l->local, a))
			return l;
	}
	return NULL;
}

static bool port_in_use(struct sim_net *n, uint16_t port)
{
	struct sim_addr a = {.family = AF_INET, .port = port};

	return find_listener(n, &a) != NULL;
}

/* An ephemeral port: the next one no listener holds. Clients' ports are
 * not kept unique (nothing keys on them), they only name the peer. */
static uint16_t ephemeral_port(struct sim_net *n)
{
	for (;;) {
		uint16_t p = n->next_port++;

		if (n->next_port == 0)
			n->next_port = EPHEMERAL_FIRST;
		if (!port_in_use(n, p))
			return p;
	}
}

static struct sim_sock *sock_new(struct sim_net *n, int family)
{
	struct sim_sock *s = calloc(1, sizeof(*s));

	if (!s)
		return NULL;
	sim__file_init(&s->file, n->sim, &sock_ops);
	s->net = n;
	s->family = family;
	s->state = S_NEW;
	keel__list_init(&s->acceptq);
	keel__list_init(&s->synq);
	keel__list_push_back(&n->socks, &s->node);
	n->open++;
	return s;
}

int sim__sock_create(struct sim_net *n, int domain, int type,
		     struct sim_file **out)
{
	if (domain != AF_INET && domain != AF_INET6 && domain != AF_UNIX)
		return -EAFNOSUPPORT;
	if ((type & ~(SOCK_NONBLOCK | SOCK_CLOEXEC)) != SOCK_STREAM)
		return -EINVAL;
	struct sim_sock *s = sock_new(n, domain);

	if (!s)
		return -ENOMEM;
	*out = &s->file;
	return 0;
}

int sim__sock_listen(struct sim_net *n, const struct sockaddr *sa,
		     socklen_t len, int backlog, struct sim_file **out)
{
	struct sim_addr a;
	int err = sa ? addr_from(&a, sa->sa_family, sa, len) : -EINVAL;

	if (err)
		return err;
	if (a.family != AF_UNIX && a.port == 0)
		a.port = ephemeral_port(n);
	if (find_listener(n, &a))
		return -EADDRINUSE;
	struct sim_sock *s = sock_new(n, a.family);

	if (!s)
		return -ENOMEM;
	s->local = a;
	s->state = S_LISTEN;
	/* listen(2) caps the backlog at somaxconn, negative included. */
	s->backlog = backlog < 0 || backlog > SOMAXCONN_DEFAULT
			 ? SOMAXCONN_DEFAULT
			 : backlog;
	keel__list_push_back(&n->listeners, &s->link);
	*out = &s->file;
	return 0;
}

static void wake(struct sim_sock *s)
{
	sim__net_wake(s->net, &s->file);
}

/* Both ends of a new connection: `client` connects to `l`, which queues
 * the server end for accept. */
static int establish(struct sim_sock *l, struct sim_sock *client)
{
	struct sim_net *n = l->net;
	struct sim_sock *child = sock_new(n, l->family);
	struct sim_conn *conn = calloc(1, sizeof(*conn));

	if (!child || !conn || sim__bq_init(&child->rx, n->sndbuf) ||
	    sim__bq_init(&client->rx, n->sndbuf)) {
		if (child) {
			sim__bq_free(&child->rx);
			keel__list_remove(&n->socks, &child->node);
			n->open--;
			free(child);
		}
		free(conn);
		sim__bq_free(&client->rx);
		return -ENOMEM;
	}
	conn->ends = 2;
	child->state = S_ESTABLISHED;
	child->connect_reported = true;
	child->local = l->local;
	child->remote = client->local;
	child->conn = conn;
	child->dir = 1;
	child->peer = client;
	client->state = S_ESTABLISHED;
	client->conn = conn;
	client->dir = 0;
	client->peer = child;
	child->owner = l;
	keel__list_push_back(&l->acceptq, &child->link);
	l->queued++;
	n->conns++;
	sync_stats(n);
	wake(l);
	return 0;
}

static bool acceptq_full(const struct sim_sock *l)
{
	return l->queued > (uint32_t)l->backlog;
}

/* Room in the accept queue: the first pending connect gets in (its SYN
 * retransmit is answered). */
static void admit_waiting(struct sim_sock *l)
{
	while (!acceptq_full(l) && !keel__list_empty(&l->synq)) {
		struct sim_sock *c =
		    keel__list_entry(l->synq.first, struct sim_sock, link);

		keel__list_remove(&l->synq, &c->link);
		c->owner = NULL;
		if (establish(l, c)) {
			c->state = S_CLOSED;
			c->err = ENOMEM;
		}
		wake(c);
	}
}

/* An RST arrives at `s` (tcp_reset, then tcp_done). */
static void rst_arrives(struct sim_sock *s)
{
	s->err = s->rx_eof ? EPIPE : ECONNRESET;
	s->state = S_CLOSED;
	s->rd_shut = s->wr_shut = true;
	s->peer = NULL;
	wake(s);
}

/* Unread bytes in `s`'s queue are destroyed (they were the peer's). */
static void drop_rx(struct sim_sock *s)
{
	uint32_t n = s->rx.len;

	if (!n)
		return;
	if (s->conn)
		s->conn->dir[!s->dir].lost += n;
	sim__net_count(s->net, 0, 0, n);
	s->rx.len = 0;
}

static int take_err(struct sim_sock *s)
{
	int err = s->err;

	s->err = 0;
	return -err;
}

static void conn_put(struct sim_sock *s)
{
	if (s->conn && --s->conn->ends == 0)
		free(s->conn);
	s->conn = NULL;
}

/* close(2) of a connected end: an RST with unread data, else a FIN. */
static void close_conn(struct sim_sock *s, bool force_rst)
{
	struct sim_sock *p = s->peer;
	bool rst = force_rst || s->rx.len;

	drop_rx(s);
	if (p) {
		p->peer = NULL;
		if (rst) {
			rst_arrives(p);
		} else {
			p->rx_eof = true;
			wake(p);
		}
	}
	s->peer = NULL;
}

static void sock_free(struct sim_sock *s)
{
	sim__bq_free(&s->rx);
	conn_put(s);
	keel__list_remove(&s->net->socks, &s->node);
	s->net->open--;
	free(s);
}

/* A listener stops: queued connections are reset, pending connects
 * refused. */
static void stop_listening(struct sim_sock *l)
{
	struct keel__link *it;

	keel__list_remove(&l->net->listeners, &l->link);
	l->state = S_CLOSED;
	while ((it = keel__list_pop_front(&l->acceptq))) {
		struct sim_sock *child =
		    keel__list_entry(it, struct sim_sock, link);

		child->owner = NULL;
		close_conn(child, true);
		sock_free(child);
	}
	l->queued = 0;
	while ((it = keel__list_pop_front(&l->synq))) {
		struct sim_sock *c =
		    keel__list_entry(it, struct sim_sock, link);

		c->owner = NULL;
		c->state = S_CLOSED;
		c->err = ECONNREFUSED;
		wake(c);
	}
	wake(l);
}

static void sock_release(struct sim_file *f)
{
	struct sim_sock *s = sock_of(f);

	switch (s->state) {
	case S_LISTEN:
		stop_listening(s);
		break;
	case S_SYN_SENT:
		keel__list_remove(&s->owner->synq, &s->link);
		break;
	case S_ESTABLISHED:
	case S_CLOSED:
		close_conn(s, false);
		break;
	}
	sock_free(s);
}

static int sock_connect(struct sim_file *f, const struct sockaddr *sa,
			socklen_t len)
{
	struct sim_sock *s = sock_of(f);

	switch (s->state) {
	case S_SYN_SENT:
		return -EAGAIN;
	case S_ESTABLISHED:
		/* The retry of a connect that waited for room reports the
		 * connection once; a second connect is an error. */
		if (!s->connect_reported) {
			s->connect_reported = true;
			return 0;
		}
		return -EISCONN;
	case S_CLOSED:
		return s->err ? take_err(s) : -EISCONN;
	case S_LISTEN:
		return -EISCONN;
	}
	struct sim_addr a;
	int err = addr_from(&a, s->family, sa, len);

	if (err)
		return err;
	struct sim_sock *l = find_listener(s->net, &a);

	if (!l || l->state != S_LISTEN)
		return -ECONNREFUSED;
	s->remote = l->local;
	s->local.family = (sa_family_t)s->family;
	if (s->family != AF_UNIX)
		s->local.port = ephemeral_port(s->net);
	if (!acceptq_full(l)) {
		err = establish(l, s);
		if (!err)
			s->connect_reported = true;
		return err;
	}
	s->state = S_SYN_SENT;
	s->owner = l;
	keel__list_push_back(&l->synq, &s->link);
	return -EAGAIN;
}

static int sock_accept(struct sim_file *f, struct sim_file **out)
{
	struct sim_sock *l = sock_of(f);

	if (l->state != S_LISTEN)
		return -EINVAL;
	struct keel__link *it = keel__list_pop_front(&l->acceptq);

	if (!it)
		return -EAGAIN;
	struct sim_sock *child = keel__list_entry(it, struct sim_sock, link);

	child->owner = NULL;
	l->queued--;
	admit_waiting(l);
	*out = &child->file;
	return 0;
}

int sim__sock_unaccept(struct sim_file *lf, struct sim_file *cf)
{
	struct sim_sock *l = sock_of(lf), *child = sock_of(cf);

	if (l->state != S_LISTEN) {
		/* The listener went away meanwhile: as if it had been
		 * queued when it closed. */
		close_conn(child, true);
		sock_free(child);
		return -EINVAL;
	}
	child->owner = l;
	keel__list_push_front(&l->acceptq, &child->link);
	l->queued++;
	return 0;
}

static int sock_send(struct sim_file *f, const void *buf, size_t len,
		     int msg_flags)
{
	struct sim_sock *s = sock_of(f);
	struct sim_net *n = s->net;

	if (s->state == S_SYN_SENT)
		return s->err ? take_err(s) : -EAGAIN;
	/* sk_stream_error: a pending error first, else a broken pipe. */
	if (s->state != S_ESTABLISHED || s->wr_shut)
		return s->err ? take_err(s) : -EPIPE;
	if (s->err)
		return take_err(s);
	if (!len)
		return 0;
	struct sim_sock *p = s->peer;
	size_t room = p ? p->rx.cap - p->rx.len : n->sndbuf;

	if (!room)
		return -EAGAIN;
	size_t k = sim__short(n->sim, n->short_ppm, len < room ? len : room);
	struct sim_conn_bytes *c = &s->conn->dir[s->dir];

	c->sent += k;
	if (!p) {
		/* The peer has closed: these bytes reach a dead socket,
		 * whose RST makes the next send fail. */
		c->lost += k;
		sim__net_count(n, k, 0, k);
		rst_arrives(s);
		return (int)k;
	}
	sim__bq_put(&p->rx, buf, k);
	sim__net_count(n, k, 0, 0);
	wake(p);
	return (int)k;
}

static int sock_recv(struct sim_file *f, void *buf, size_t len, int msg_flags)
{
	struct sim_sock *s = sock_of(f);
	struct sim_net *n = s->net;

	if (s->rx.len && len) {
		bool peek = msg_flags & MSG_PEEK;
		size_t k = len < s->rx.len ? len : s->rx.len;

		k = sim__bq_get(&s->rx, buf,
				sim__short(n->sim, n->short_ppm, k), peek);
		if (peek)
			return (int)k;
		s->conn->dir[!s->dir].received += k;
		sim__net_count(n, 0, k, 0);
		if (s->peer)
			wake(s->peer);
		return (int)k;
	}
	/* tcp_recvmsg's order: the peer's FIN, a pending error, our own
	 * shutdown, then an unconnected socket. */
	if (s->rx_eof)
		return 0;
	if (s->err)
		return take_err(s);
	if (s->rd_shut || s->state == S_CLOSED)
		return 0;
	if (s->state == S_NEW || s->state == S_LISTEN)
		return -ENOTCONN;
	return len ? -EAGAIN : 0;
}

static int sock_read(struct sim_file *f, void *buf, size_t len, int64_t off)
{
	return sock_recv(f, buf, len, 0);
}

static int sock_write(struct sim_file *f, const void *buf, size_t len,
		      int64_t off)
{
	return sock_send(f, buf, len, 0);
}

static int sock_shutdown(struct sim_file *f, int how)
{
	struct sim_sock *s = sock_of(f);

	if (how != SHUT_RD && how != SHUT_WR && how != SHUT_RDWR)
		return -EINVAL;
	if (s->state == S_LISTEN) {
		/* inet_shutdown: SHUT_RD on a listener stops it. */
		if (how != SHUT_WR)
			stop_listening(s);
		return 0;
	}
	if (s->state != S_ESTABLISHED)
		return -ENOTCONN;
	if (how != SHUT_RD && !s->wr_shut) {
		s->wr_shut = true;
		if (s->peer) {
			s->peer->rx_eof = true;
			wake(s->peer);
		}
	}
	if (how != SHUT_WR)
		s->rd_shut = true;
	wake(s);
	return 0;
}

static int sock_statx(struct sim_file *f, struct statx *st)
{
	memset(st, 0, sizeof(*st));
	st->stx_mask = STATX_TYPE | STATX_MODE | STATX_NLINK | STATX_SIZE;
	st->stx_mode = S_IFSOCK | 0777;
	st->stx_nlink = 1;
	st->stx_blksize = 4096;
	return 0;
}

static int sock_fsync(struct sim_file *f)
{
	return -EINVAL;
}

static unsigned sock_poll(struct sim_file *f)
{
	struct sim_sock *s = sock_of(f);
	unsigned mask = s->err ? POLLERR : 0;

	switch (s->state) {
	case S_NEW:
		return mask | POLLOUT | POLLHUP;
	case S_LISTEN:
		return mask | (keel__list_empty(&s->acceptq) ? 0 : POLLIN);
	case S_SYN_SENT:
		return mask;
	}
	if (s->state == S_CLOSED || (s->rd_shut && s->wr_shut))
		mask |= POLLHUP;
	if (s->rx_eof || s->rd_shut)
		mask |= POLLIN | POLLRDHUP;
	if (s->rx.len)
		mask |= POLLIN;
	/* A send that would fail does not block either. */
	if (s->wr_shut || !s->peer || s->peer->rx.len < s->peer->rx.cap)
		mask |= POLLOUT;
	return mask;
}

int sim__sock_name(struct sim_file *f, bool peer, struct sockaddr *sa,
		   socklen_t *len)
{
	if (!sim__is_sock(f))
		return -ENOTSOCK;
	struct sim_sock *s = sock_of(f);
	struct sockaddr_storage ss;

	if (peer && s->state != S_ESTABLISHED)
		return -ENOTCONN;
	socklen_t full = addr_to(peer ? &s->remote : &s->local, s->family, &ss);

	if (!peer && s->state == S_NEW && s->family == AF_UNIX)
		full = sizeof(sa_family_t);
	memcpy(sa, &ss, *len < full ? *len : full);
	*len = full;
	return 0;
}

int sim__sock_reset(struct sim_file *f)
{
	if (!sim__is_sock(f))
		return -ENOTSOCK;
	struct sim_sock *s = sock_of(f);
	struct sim_sock *p = s->peer;

	if (s->state != S_ESTABLISHED)
		return -ENOTCONN;
	/* An RST at each end: what each has queued stays readable, as on
	 * Linux (tcp_reset purges the write queue, not the receive one). */
	rst_arrives(s);
	if (p)
		rst_arrives(p);
	return 0;
}

int sim__sock_bytes(struct sim_file *f, struct sim_conn_bytes *out,
		    struct sim_conn_bytes *in)
{
	if (!sim__is_sock(f))
		return -ENOTSOCK;
	struct sim_sock *s = sock_of(f);

	memset(out, 0, sizeof(*out));
	memset(in, 0, sizeof(*in));
	if (s->conn) {
		*out = s->conn->dir[s->dir];
		*in = s->conn->dir[!s->dir];
	}
	return 0;
}

static const struct sim_file_ops sock_ops = {
    .recv = sock_recv,
    .send = sock_send,
    .read = sock_read,
    .write = sock_write,
    .accept = sock_accept,
    .connect = sock_connect,
    .shutdown = sock_shutdown,
    .fsync = sock_fsync,
    .statx = sock_statx,
    .poll = sock_poll,
    .release = sock_release,
};

/* The model's entry points (sim.h). */

int sim__socket(struct keel__sim *s, int domain, int type, int protocol,
		struct sim_file **out)
{
	struct sim_net *n = sim__net(s);

	if (!n)
		return -ENOMEM;
	if (protocol && protocol != IPPROTO_TCP)
		return -EPROTONOSUPPORT;
	return sim__sock_create(n, domain, type, out);
}

/* "127.0.0.1:8080", "[::1]:8080", or an AF_UNIX path ("/run/x.sock"). */
static int parse_listen_addr(const char *addr, struct sockaddr_storage *ss,
			     socklen_t *len)
{
	if (!addr)
		return -EINVAL;
	if (addr[0] == '/') {
		struct sockaddr_un *un = (struct sockaddr_un *)ss;

		if (strlen(addr) >= sizeof(un->sun_path))
			return -ENAMETOOLONG;
		memset(ss, 0, sizeof(*ss));
		un->sun_family = AF_UNIX;
		strcpy(un->sun_path, addr);
		*len = sizeof(*un);
		return 0;
	}
	const char *colon = strrchr(addr, ':');
	char host[64];
	char *end;

	if (!colon || colon == addr)
		return -EINVAL;
	size_t hlen = (size_t)(colon - addr);

	if (addr[0] == '[' && colon[-1] == ']') {
		addr++;
		hlen -= 2;
	}
	if (hlen >= sizeof(host))
		return -EINVAL;
	memcpy(host, addr, hlen);
	host[hlen] = 0;
	unsigned long port = strtoul(colon + 1, &end, 10);

	if (!colon[1] || *end || port > 65535)
		return -EINVAL;
	return keel_net_parse_addr(host, (uint16_t)port, ss, len);
}

int sim__listen(struct keel__sim *s, const char *addr, int backlog,
		struct sim_file **out)
{
	struct sim_net *n = sim__net(s);
	struct sockaddr_storage ss;
	socklen_t len;
	int err = parse_listen_addr(addr, &ss, &len);

	if (err)
		return err;
	if (!n)
		return -ENOMEM;
	return sim__sock_listen(n, (struct sockaddr *)&ss, len, backlog, out);
}

int sim__reset(struct sim_file *f)
{
	return sim__sock_reset(f);
}

int sim__model_check(const struct keel__sim *s, char *why, size_t len)
{
	const struct sim_net *n = s->net;
	const struct sim_fs *fs = s->fs;

	if (n && sim__net_check(n, why, len))
		return -1;
	if (fs && fs->open) {
		snprintf(why, len, "%u files still open", fs->open);
		return -1;
	}
	return 0;
}

/* The machine goes away: free what is left, without waking anyone (the
 * engine is going too). */
void sim__model_fini(struct keel__sim *s)
{
	struct sim_net *n = s->net;
	struct keel__link *it;

	if (n) {
		while ((it = keel__list_pop_front(&n->socks))) {
			struct sim_sock *k =
			    keel__list_entry(it, struct sim_sock, node);

			sim__bq_free(&k->rx);
			conn_put(k);
			free(k);
		}
		while (n->pipes.first)
			sim__pipe_free(n, n->pipes.first);
		free(n);
		s->net = NULL;
	}
	if (s->fs) {
		sim__fs_fini(s->fs);
		s->fs = NULL;
	}
}
