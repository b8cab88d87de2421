/* SPDX-License-Identifier: MIT */
/*
 * session.c: the proxy's data path: a loop's acceptor, a session per
 * client connection (the connect race, then one pump per direction), and
 * the pumps (buffers or splice mode). See main.c for the whole picture.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <keel/tls.h>

#include "proxy.h"

struct pump {
	struct keel_task task;
	struct shard *shard;
	uint64_t *bytes; /* the session's count of this direction */
	uint64_t *total; /* the loop's */
	int from, to;
	int result; /* 0: end of file passed on; < 0: the error */
	/* buffers mode */
	struct keel_recv_stream rs;
	struct keel_buf bufs[GATHER];
	struct iovec iov[GATHER];
	struct msghdr msg;
	unsigned n;
	/* splice mode */
	int pipe[2];
	int moved, left;
};

/* The two sides of a session's connect race (see the top). */
enum { RACE_CONNECT, RACE_WATCH };

/* Connects the backend socket; exits with connect's result. */
struct connector {
	struct keel_task task;
	int fd;
	socklen_t len;
	struct sockaddr_storage addr; /* handed to the kernel: in the frame */
};

/* Waits for the client to speak or go; exits with WATCH_SPOKE, 0 (end of
 * file), or recv's error (-ECANCELED, -ETIMEDOUT: the race was ended). */
#define WATCH_SPOKE 1
struct watcher {
	struct keel_task task;
	int fd;
	char byte; /* MSG_PEEK's target: handed to the kernel, in the frame */
};

/* PROXY protocol v2: the fixed part (16 bytes) and the longest address
 * block this proxy sends (two IPv6 addresses and ports). */
#define PROXY_V2_MAX (16 + 36)

struct session {
	struct keel_task task;
	struct shard *shard;
	int client, backend;
	struct backend *be;	      /* being tried, then the one connected */
	uint64_t tried;		      /* bit i: backend i was tried */
	unsigned attempts;	      /* connects started */
	uint64_t started;	      /* when this connect started */
	struct sockaddr_storage addr; /* this connect's backend address */
	socklen_t addrlen;
	struct keel_scope race; /* connect vs. the client going */
	uint32_t seen;		/* race results read */
	int connected;		/* connect's result */
	bool client_gone;
	uint64_t bytes[2]; /* this session's: up, down */
	/* --proxy-protocol: the header, handed to the kernel: in the frame */
	uint8_t header[PROXY_V2_MAX];
	unsigned header_len;
	struct pump *pumps[2];
	unsigned i;
	struct tls_side *tls; /* TLS to one side, or NULL (see below) */
	/* --idle-timeout: on the shard's list while the pumps run */
	struct session *next, **pprev;
	uint64_t moved;	      /* bytes[0] + bytes[1] at the last sweep */
	uint64_t quiet_since; /* when the sweep last saw them change */
	bool idled;	      /* closed for it */
	uint64_t spawned;     /* --shed-target: its spawn (mono_now()) */
};

/*
 * TLS on one side of a session (--cert: the client's; --backend-tls: the
 * backend's). The session task does that side's handshake and then
 * receives from it (it owns the stream's recv stream, as keel/tls.h
 * wants), sending the plaintext on from `buf`; a tls_pump moves the other
 * direction, encrypting into this stream. Everything the kernel touches
 * is in this frame (the stream's output, `buf`) or the loop's ring, so
 * the session joins that pump before it goes, whatever happens.
 */
struct tls_side {
	struct keel_tls *engine;
	struct keel_tls_stream ts;
	bool open;	       /* ts is open */
	int fd, plain;	       /* the TLS socket; the other one */
	unsigned dir;	       /* the session's direction: 0 up, 1 down */
	int result;	       /* how it ended: 0 (close_notify) or < 0 */
	unsigned len;	       /* plaintext in buf */
	struct tls_pump *pump; /* the other direction */
	struct keel_shield shield;
	char sni[256];
	unsigned char buf[16384];
};

struct tls_session {
	struct session s;
	struct tls_side x;
};

/* The plain side's direction: recv chunks from the ring, encrypted into
 * the session's stream. */
struct tls_pump {
	struct keel_task task;
	struct shard *shard;
	uint64_t *bytes, *total;
	int from;		    /* the plain socket */
	struct keel_tls_stream *to; /* in the session's frame */
	int result;
	struct keel_recv_stream rs;
	struct keel_buf buf;
};

/* A loop's idle sweep (--idle-timeout). */
struct sweeper {
	struct keel_task task;
	struct shard *shard;
	uint64_t period;
};

#define PAUSE_NS (10ull * 1000 * 1000) /* full: look again this often */

struct acceptor {
	struct keel_task task;
	struct shard *shard;
	struct keel_accept_stream as;
	bool open;	    /* the accept stream is armed */
	bool reported;	    /* this pause's line was printed */
	int waiting;	    /* accepted over the cap, waits for room; or -1 */
	unsigned open_seen; /* sessions open at the last look (paused) */
	uint64_t stalled_since; /* none has ended since (paused) */
	unsigned drained;	/* clients refused by this drain */
};

struct main_frame {
	struct keel_task task;
	unsigned i;
};

static int pump_step(struct keel_task *t);
static int splice_pump_step(struct keel_task *t);
static int connector_step(struct keel_task *t);
static int watcher_step(struct keel_task *t);
static int session_step(struct keel_task *t);
static int acceptor_step(struct keel_task *t);
static int sweeper_step(struct keel_task *t);
static int tls_pump_step(struct keel_task *t);

static KEEL_TASK_TYPE(pump_task, struct pump, task, pump_step);
static KEEL_TASK_TYPE(splice_pump_task, struct pump, task, splice_pump_step);
static KEEL_TASK_TYPE(connector_task, struct connector, task, connector_step);
static KEEL_TASK_TYPE(watcher_task, struct watcher, task, watcher_step);
static KEEL_TASK_TYPE(session_task, struct session, task, session_step);
static KEEL_TASK_TYPE(tls_session_task, struct tls_session, s.task,
		      session_step);
static KEEL_TASK_TYPE(tls_pump_task, struct tls_pump, task, tls_pump_step);
KEEL_TASK_TYPE(acceptor_task, struct acceptor, task, acceptor_step);
static KEEL_TASK_TYPE(sweeper_task, struct sweeper, task, sweeper_step);

static void release_all(struct pump *p)
{
	for (unsigned i = 0; i < p->n; i++)
		keel_buf_release(&p->bufs[i]);
	p->n = 0;
}

/* End of a direction: pass a clean end on as a half-close; after an
 * error, stop both directions (the other pump then sees its end too). */
static void pump_finish(struct pump *p)
{
	if (p->result == 0) {
		shutdown(p->to, SHUT_WR);
	} else {
		p->shard->resets++;
		shutdown(p->from, SHUT_RDWR);
		shutdown(p->to, SHUT_RDWR);
	}
}

static int pump_step(struct keel_task *t)
{
	struct pump *p = keel_container_of(t, struct pump, task);

	KEEL_BEGIN(t);
	p->result = keel_recv_stream_open(t, &p->rs, p->from, p->shard->ring,
					  KEEL_RECV_BUNDLE);
	if (p->result)
		goto out;
	for (;;) {
		KEEL_AWAIT(t, keel_recv_next(t, &p->rs, &p->bufs[0]));
		if (keel_res(t) <= 0) {
			p->result = keel_res(t);
			break;
		}
		/* Gather what else has arrived into one sendmsg. */
		p->n = 1;
		while (p->n < GATHER &&
		       keel_recv_try(&p->rs, &p->bufs[p->n]) > 0)
			p->n++;
		size_t total = 0;

		for (unsigned i = 0; i < p->n; i++) {
			p->iov[i].iov_base = p->bufs[i].data;
			p->iov[i].iov_len = p->bufs[i].len;
			total += p->bufs[i].len;
		}
		*p->bytes += total;
		*p->total += total;
		if (p->n == 1) {
			/* One chunk: a plain send (no msghdr to copy). */
			KEEL_AWAIT(t,
				   keel_send_all(t, p->to, p->bufs[0].data,
						 p->bufs[0].len, MSG_NOSIGNAL));
		} else {
			memset(&p->msg, 0, sizeof(p->msg));
			p->msg.msg_iov = p->iov;
			p->msg.msg_iovlen = p->n;
			KEEL_AWAIT(t, keel_sendmsg_all(t, p->to, &p->msg,
						       MSG_NOSIGNAL));
		}
		release_all(p);
		if (keel_res(t) < 0) {
			p->result = keel_res(t);
			break;
		}
	}
	keel_recv_stream_close(&p->rs);
out:
	pump_finish(p);
	KEEL_END(t);
}

static int splice_pump_step(struct keel_task *t)
{
	struct pump *p = keel_container_of(t, struct pump, task);

	KEEL_BEGIN(t);
	if (pipe2(p->pipe, O_CLOEXEC) < 0) {
		p->result = -errno;
		goto out;
	}
	for (;;) {
		KEEL_AWAIT(t, keel_splice(t, p->from, -1, p->pipe[1], -1,
					  SPLICE_CHUNK, SPLICE_F_MOVE));
		if (keel_res(t) <= 0) {
			p->result = keel_res(t);
			break;
		}
		p->left = keel_res(t);
		*p->bytes += (uint64_t)p->left;
		*p->total += (uint64_t)p->left;
		while (p->left > 0) {
			KEEL_AWAIT(t, keel_splice(t, p->pipe[0], -1, p->to, -1,
						  (unsigned)p->left,
						  SPLICE_F_MOVE));
			if (keel_res(t) <= 0) {
				p->result = keel_res(t) ? keel_res(t) : -EPIPE;
				goto done;
			}
			p->left -= keel_res(t);
		}
	}
done:
	close(p->pipe[0]);
	close(p->pipe[1]);
out:
	pump_finish(p);
	KEEL_END(t);
}

/* Whether a report last made at *last may be made again: once a second. */
bool report_due(time_t *last)
{
	time_t now = time(NULL);

	if (now == *last)
		return false;
	*last = now;
	return true;
}

/* At most one line a second, however many backends fail. */
static void report_backend_failure(struct shard *s, const struct backend *b,
				   int err)
{
	static _Thread_local time_t last;

	s->backend_failures++;
	if (report_due(&last))
		fprintf(stderr,
			"proxy: backend %s: %s (%llu failures on this loop)\n",
			backend_name(b), keel_strerror(err),
			(unsigned long long)s->backend_failures);
}

/* A client closed for want of a backend: every one was tried (or as
 * many as --retries allows), or none is healthy. */
static void report_no_backend(struct shard *s)
{
	static _Thread_local time_t last;

	s->no_backend++;
	if (report_due(&last))
		fprintf(stderr,
			"proxy: no backend left to try: closing the client "
			"(%llu on this loop)\n",
			(unsigned long long)s->no_backend);
}

/* Room for one more session (all loops together)? Takes it if so. */
static bool session_admit(void)
{
	if (atomic_fetch_add_explicit(&open_sessions, 1, memory_order_relaxed) <
	    max_sessions)
		return true;
	atomic_fetch_sub_explicit(&open_sessions, 1, memory_order_relaxed);
	return false;
}

static void session_leave(void)
{
	atomic_fetch_sub_explicit(&open_sessions, 1, memory_order_relaxed);
}

/* Pauses are reported once a second at most, all loops together: a
 * resume is reported when its pause was. */
static _Atomic time_t last_pause_report;

static bool pause_report_due(void)
{
	time_t now = time(NULL);
	time_t last =
	    atomic_load_explicit(&last_pause_report, memory_order_relaxed);

	return now != last && atomic_compare_exchange_strong_explicit(
				  &last_pause_report, &last, now,
				  memory_order_relaxed, memory_order_relaxed);
}

static void report_pause(struct acceptor *a)
{
	a->reported = pause_report_due();
	if (a->reported)
		fprintf(stderr,
			"proxy: %u sessions open (--max-conns): not accepting "
			"until %u are; new clients wait in the listen queue\n",
			max_sessions, low_water);
}

static void report_resume(struct acceptor *a)
{
	if (a->reported)
		fprintf(
		    stderr, "proxy: %u sessions open: accepting again\n",
		    atomic_load_explicit(&open_sessions, memory_order_relaxed));
	a->reported = false;
}

static void report_refusal(struct shard *s, unsigned n)
{
	static _Thread_local time_t last;

	s->refused += n;
	if (report_due(&last))
		fprintf(stderr,
			"proxy: %u sessions open (--max-conns) and none has "
			"ended for %llu ms: refused the %u clients waiting "
			"(%llu on this loop)\n",
			max_sessions,
			(unsigned long long)(connect_timeout_ns / 1000000), n,
			(unsigned long long)s->refused);
}

/* A pump for one direction (0: up, client -> backend; 1: down). */
static struct pump *start_pump(struct session *ss, int from, int to,
			       unsigned dir)
{
	struct pump *p =
	    keel_spawn(keel_task_loop(&ss->task),
		       splice_mode ? &splice_pump_task : &pump_task,
		       KEEL_PRIO_NORMAL | KEEL_SPAWN_JOINABLE);

	if (p) {
		p->shard = ss->shard;
		p->from = from;
		p->to = to;
		p->bytes = &ss->bytes[dir];
		p->total = dir ? &ss->shard->down : &ss->shard->up;
	}
	return p;
}

static int connector_step(struct keel_task *t)
{
	struct connector *c = keel_container_of(t, struct connector, task);

	KEEL_BEGIN(t);
	KEEL_AWAIT(t,
		   keel_connect(t, c->fd, (struct sockaddr *)&c->addr, c->len));
	KEEL_EXIT(t, keel_res(t));
	KEEL_END(t);
}

static int watcher_step(struct keel_task *t)
{
	struct watcher *w = keel_container_of(t, struct watcher, task);

	KEEL_BEGIN(t);
	/* A peek: a cancel that comes too late has consumed nothing. */
	KEEL_AWAIT(t, keel_recv(t, w->fd, &w->byte, 1, MSG_PEEK));
	KEEL_EXIT(t, keel_res(t) > 0 ? WATCH_SPOKE : keel_res(t));
	KEEL_END(t);
}

/*
 * Whether the client has gone already (a reset, or end of file before it
 * sent anything): a non-blocking peek, which consumes nothing. Such a
 * client is not connected onward: a connection that would outlive it is
 * what keeps a loop of proxies going after its client has left.
 */
static bool client_gone_now(int fd)
{
	char c;
	/* The system call itself, not libc's recv(): ThreadSanitizer's model
	 * of descriptors sees socket(2) on one loop but not the ring's close
	 * and accept, so a number another loop reuses looked like a data
	 * race (a false report, which failed the TSan pass). */
	ssize_t n = syscall(SYS_recvfrom, fd, &c, 1, MSG_PEEK | MSG_DONTWAIT,
			    NULL, NULL);

	return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK &&
			  errno != EINTR);
}

/* Start the connect race in its scope, with its deadline; false: out of
 * memory (whoever started must still be joined). */
static bool race_start(struct session *ss)
{
	struct connector *c;
	struct watcher *w;

	c = keel_scope_spawn(&ss->race, &connector_task, KEEL_PRIO_NORMAL);
	if (c) {
		c->fd = ss->backend;
		c->addr = ss->addr;
		c->len = ss->addrlen;
	}
	w = keel_scope_spawn(&ss->race, &watcher_task, KEEL_PRIO_NORMAL);
	if (w)
		w->fd = ss->client;
	return c && w && !keel_scope_set_timeout(&ss->race, connect_timeout_ns);
}

/*
 * One racer has finished with `status`: whether the race is decided
 * (ss->connected, or ss->client_gone). A client that has spoken stays
 * (its data goes on once connected); a watcher ended by the deadline or
 * a cancel leaves the verdict to the connector, which sees the same.
 */
static bool race_decided(struct session *ss, int status)
{
	uint32_t n;
	const struct keel_scope_result *r = keel_scope_results(&ss->race, &n);

	if (ss->seen == n) { /* -ECHILD: nobody left (not expected) */
		ss->connected = -ECANCELED;
		return true;
	}
	if (r[ss->seen++].index == RACE_CONNECT) {
		ss->connected = status;
		return true;
	}
	if (status == WATCH_SPOKE || status == -ECANCELED ||
	    status == -ETIMEDOUT)
		return false;
	ss->client_gone = true;
	return true;
}

/*
 * --idle-timeout. The pumps count the bytes they move anyway; the
 * sweep, a task per loop that wakes every period (a quarter of the
 * timeout, at most 100 ms), compares each session's count with what it
 * saw last time: a count that has stood still for the timeout ends the
 * session. So the data path pays nothing for it (no timer re-armed per
 * recv, not even a clock read), and a session closes between the
 * timeout and a period after it.
 */
static void idle_watch(struct session *ss)
{
	struct shard *s = ss->shard;

	if (!idle_timeout_ns)
		return;
	ss->moved = 0;
	ss->quiet_since = keel_loop_now(keel_task_loop(&ss->task));
	ss->next = s->sessions;
	if (ss->next)
		ss->next->pprev = &ss->next;
	ss->pprev = &s->sessions;
	s->sessions = ss;
}

static void idle_unwatch(struct session *ss)
{
	if (!ss->pprev)
		return;
	*ss->pprev = ss->next;
	if (ss->next)
		ss->next->pprev = ss->pprev;
	ss->pprev = NULL;
}

static void idle_sweep(struct shard *s, uint64_t now)
{
	for (struct session *ss = s->sessions; ss; ss = ss->next) {
		uint64_t moved = ss->bytes[0] + ss->bytes[1];

		if (moved != ss->moved) {
			ss->moved = moved;
			ss->quiet_since = now;
		} else if (!ss->idled &&
			   now - ss->quiet_since >= idle_timeout_ns) {
			/* Both pumps see their end: the session ends. */
			ss->idled = true;
			s->idle_closed++;
			shutdown(ss->client, SHUT_RDWR);
			shutdown(ss->backend, SHUT_RDWR);
		}
	}
}

static int sweeper_step(struct keel_task *t)
{
	struct sweeper *w = keel_container_of(t, struct sweeper, task);

	KEEL_BEGIN(t);
	for (;;) {
		KEEL_AWAIT(t, keel_sleep(t, w->period));
		if (keel_res(t) < 0)
			break; /* the shutdown */
		idle_sweep(w->shard, keel_loop_now(keel_task_loop(t)));
	}
	KEEL_END(t);
}

/* Start the loop's sweep, if --idle-timeout asks for one. */
static int sweeper_start(struct keel_task *acceptor, struct shard *s)
{
	struct sweeper *w;

	if (!idle_timeout_ns)
		return 0;
	w = keel_spawn(keel_task_loop(acceptor), &sweeper_task, KEEL_PRIO_HIGH);
	if (!w)
		return -ENOMEM;
	w->shard = s;
	w->period = idle_timeout_ns / 4;
	if (w->period > 100 * 1000 * 1000)
		w->period = 100 * 1000 * 1000;
	if (!w->period)
		w->period = 1;
	return 0;
}

/*
 * --proxy-protocol: the PROXY protocol v2 header (haproxy's
 * proxy-protocol.txt, section 2.2) for client `fd`, into `out`: the
 * 12-byte signature; version 2 and the PROXY command; TCP over IPv4 or
 * IPv6; the address block's length; then the client's address and the
 * address it connected to (ours), and their ports, in network order. An
 * IPv4 client of an IPv6 listener (a v4-mapped address) is sent as IPv4.
 * Returns the length, or 0 when the client's addresses cannot be read
 * (it has gone).
 */
static unsigned proxy_v2_header(int fd, uint8_t *out)
{
	static const uint8_t sig[12] = {0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d,
					0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a};
	struct sockaddr_storage src, dst;
	socklen_t slen = sizeof(src), dlen = sizeof(dst);
	const uint8_t *sa, *da;
	uint16_t sport, dport;
	unsigned alen;

	if (getpeername(fd, (struct sockaddr *)&src, &slen) ||
	    getsockname(fd, (struct sockaddr *)&dst, &dlen) ||
	    src.ss_family != dst.ss_family)
		return 0;
	memcpy(out, sig, sizeof(sig));
	out[12] = 0x21; /* version 2, PROXY */
	if (src.ss_family == AF_INET) {
		struct sockaddr_in *s4 = (struct sockaddr_in *)&src;
		struct sockaddr_in *d4 = (struct sockaddr_in *)&dst;

		sa = (const uint8_t *)&s4->sin_addr;
		da = (const uint8_t *)&d4->sin_addr;
		sport = s4->sin_port;
		dport = d4->sin_port;
		alen = 4;
	} else if (src.ss_family == AF_INET6) {
		struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&src;
		struct sockaddr_in6 *d6 = (struct sockaddr_in6 *)&dst;
		bool mapped = IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr) &&
			      IN6_IS_ADDR_V4MAPPED(&d6->sin6_addr);

		sa = (const uint8_t *)&s6->sin6_addr + (mapped ? 12 : 0);
		da = (const uint8_t *)&d6->sin6_addr + (mapped ? 12 : 0);
		sport = s6->sin6_port;
		dport = d6->sin6_port;
		alen = mapped ? 4 : 16;
	} else {
		return 0;
	}
	out[13] = alen == 4 ? 0x11 : 0x21; /* AF_INET(6) << 4 | STREAM */
	out[14] = 0;
	out[15] = (uint8_t)(2 * alen + 4); /* the address block */
	memcpy(out + 16, sa, alen);
	memcpy(out + 16 + alen, da, alen);
	memcpy(out + 16 + 2 * alen, &sport, 2);
	memcpy(out + 18 + 2 * alen, &dport, 2);
	return 16 + 2 * alen + 4;
}

/* ---- TLS ---------------------------------------------------------------- */

static int tls_pump_step(struct keel_task *t)
{
	struct tls_pump *p = keel_container_of(t, struct tls_pump, task);

	KEEL_BEGIN(t);
	p->result = keel_recv_stream_open(t, &p->rs, p->from, p->shard->ring,
					  KEEL_RECV_BUNDLE);
	if (p->result)
		goto out;
	for (;;) {
		KEEL_AWAIT(t, keel_recv_next(t, &p->rs, &p->buf));
		if (keel_res(t) <= 0) {
			p->result = keel_res(t);
			break;
		}
		*p->bytes += p->buf.len;
		*p->total += p->buf.len;
		KEEL_AWAIT_CALL(
		    t, keel_tls_send(t, p->to, p->buf.data, p->buf.len));
		keel_buf_release(&p->buf);
		if (keel_res(t) < 0) {
			p->result = keel_res(t);
			break;
		}
	}
	keel_recv_stream_close(&p->rs);
	if (p->result == 0) {
		/* The plain side's end: close_notify, then our FIN. */
		KEEL_AWAIT_CALL(t, keel_tls_shutdown(t, p->to));
		if (keel_res(t) == 0) {
			shutdown(p->to->fd, SHUT_WR);
			KEEL_EXIT(t, 0);
		}
		p->result = keel_res(t);
	}
out:
	p->shard->resets++;
	shutdown(p->from, SHUT_RDWR);
	shutdown(p->to->fd, SHUT_RDWR);
	KEEL_END(t);
}

/* A failed handshake with a client, counted; one line a second. */
static void report_tls_failure(struct shard *s, int err)
{
	static _Thread_local time_t last;

	s->tls_failed++;
	if (report_due(&last))
		fprintf(stderr,
			"proxy: a client's TLS handshake failed: %s (%llu on "
			"this loop)\n",
			keel_strerror(err), (unsigned long long)s->tls_failed);
}

/* The name to send and check (SNI) for this session's backend:
 * --backend-sni, else the backend's host when it is a name. */
static const char *tls_backend_name(struct session *ss)
{
	struct tls_side *x = ss->tls;
	const char *name = backend_name(ss->be);
	const char *colon = strrchr(name, ':');
	struct sockaddr_storage ignored;
	socklen_t len;

	if (backend_sni)
		return backend_sni;
	if (!colon || name[0] == '[' ||
	    (size_t)(colon - name) >= sizeof(x->sni))
		return NULL; /* a bracketed IPv6 address */
	memcpy(x->sni, name, (size_t)(colon - name));
	x->sni[colon - name] = '\0';
	if (!keel_net_parse_addr(x->sni, 1, &ignored, &len))
		return NULL; /* numeric: no SNI */
	return x->sni;
}

/* Open TLS on socket `fd` (the session receives from it). */
static int tls_open(struct session *ss, struct keel_tls_ctx *ctx,
		    const char *name, int fd)
{
	struct tls_side *x = ss->tls;
	int err = keel_tls_new(ctx, name, &x->engine);

	if (err)
		return err;
	x->fd = fd;
	err = keel_tls_stream_open(&ss->task, &x->ts, x->engine, fd,
				   ss->shard->ring);
	if (err) {
		keel_tls_free(x->engine);
		x->engine = NULL;
		return err;
	}
	x->open = true;
	return 0;
}

/* Undo tls_open (safe when nothing is open). */
static void tls_close(struct session *ss)
{
	struct tls_side *x = ss->tls;

	if (!x || !x->engine)
		return;
	if (x->open)
		keel_tls_stream_close(&x->ts);
	x->open = false;
	keel_tls_free(x->engine);
	x->engine = NULL;
}

/* Start the plain side's pump (direction `dir`) into the stream. */
static struct tls_pump *tls_pump_start(struct session *ss, int from,
				       unsigned dir)
{
	struct tls_pump *p =
	    keel_spawn(keel_task_loop(&ss->task), &tls_pump_task,
		       KEEL_PRIO_NORMAL | KEEL_SPAWN_JOINABLE);

	if (p) {
		p->shard = ss->shard;
		p->from = from;
		p->to = &ss->tls->ts;
		p->bytes = &ss->bytes[dir];
		p->total = dir ? &ss->shard->down : &ss->shard->up;
	}
	return p;
}

/*
 * The connect race has failed with `err` (not a cancel): whether to try
 * the next backend. Nothing has been sent to this one (nothing is,
 * before the connect completes), so moving on is safe for any client.
 */
static bool retry_next(struct session *ss, int err)
{
	backend_connected(ss->be, err,
			  keel_loop_now(keel_task_loop(&ss->task)) -
			      ss->started);
	report_backend_failure(ss->shard, ss->be, err);
	backend_release(ss->be, 0, 0);
	ss->be = NULL;
	return ss->attempts <= retries;
}

/* Shedding's clock: a fresh reading, not the loop's (keel_loop_now() is
 * the turn's, and a session often starts in the turn of its spawn). */
static uint64_t mono_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/*
 * --shed-target: a session's queueing delay is the time from its spawn
 * (its accept's completion) to its first step, how long it waited behind
 * the loop's other work. While the loop's shedder sheds, a new client is
 * closed before anything else is done for it: no handshake, no backend
 * connect. (The proxy speaks TCP, not HTTP, so a close is all it can
 * say; a client that retries later finds the queue gone.)
 */
static bool session_shed(struct session *ss)
{
	struct shard *s = ss->shard;
	bool shed;

	if (!shed_target_ns)
		return false;
	/* Ask before recording: an interval without a session means the
	 * queue drained, which this session's own sample (above target
	 * when the target is tiny) would otherwise hide. */
	shed = keel_shed_admit(&s->shed) != 0;
	keel_shed_record(&s->shed, mono_now() - ss->spawned);
	if (shed)
		s->shed_closed++;
	return shed;
}

static int session_step(struct keel_task *t)
{
	struct session *ss = keel_container_of(t, struct session, task);

	KEEL_BEGIN(t);
	if (session_shed(ss))
		goto close_client;
	if (client_gone_now(ss->client)) {
		ss->shard->abandoned++;
		goto close_client;
	}
	if (tls_server) {
		/* TLS termination: the handshake comes first, so that a
		 * client that never completes it costs no backend
		 * connection. Its deadline is the context's. */
		ss->connected = tls_open(ss, tls_server, NULL, ss->client);
		if (!ss->connected) {
			KEEL_AWAIT_CALL(t, keel_tls_handshake(t, &ss->tls->ts));
			ss->connected = keel_res(t);
		}
		if (ss->connected < 0) {
			if (ss->connected != -ECANCELED)
				report_tls_failure(ss->shard, ss->connected);
			goto close_client;
		}
		ss->tls->plain = -1; /* the backend's, once connected */
	}
next_backend:
	ss->be = backend_pick(ss->tried, &ss->addr, &ss->addrlen);
	if (!ss->be) {
		report_no_backend(ss->shard);
		goto close_client;
	}
	if (backend_index(ss->be) < 64)
		ss->tried |= 1ull << backend_index(ss->be);
	if (ss->attempts++)
		ss->shard->retried++;
	ss->backend = keel_tcp_socket(ss->addr.ss_family);
	if (ss->backend < 0) {
		/* Ours (descriptors, memory), not the backend's. */
		report_backend_failure(ss->shard, ss->be, ss->backend);
		backend_release(ss->be, 0, 0);
		goto close_client;
	}
	ss->seen = 0;
	ss->connected = 0;
	ss->started = keel_loop_now(keel_task_loop(t));
	if (keel_scope_init(t, &ss->race, KEEL_SCOPE_COLLECT)) {
		report_backend_failure(ss->shard, ss->be, -ENOMEM);
		backend_release(ss->be, 0, 0);
		goto close_both;
	}
	if (race_start(ss)) {
		do
			KEEL_AWAIT(t, keel_scope_join_any(t, &ss->race));
		while (!race_decided(ss, keel_res(t)));
	} else {
		ss->connected = -ENOMEM;
	}
	/* The loser is cancelled (the ledger cancels its op); the join
	 * waits until it has gone. */
	keel_scope_cancel(&ss->race);
	KEEL_AWAIT(t, keel_scope_join(t, &ss->race));
	keel_scope_fini(&ss->race);
	if (ss->client_gone || ss->connected == -ECANCELED) {
		/* Gone, or the proxy is shutting down: nobody's
		 * failure. */
		if (ss->client_gone)
			ss->shard->abandoned++;
		backend_release(ss->be, 0, 0);
		goto close_both;
	}
	if (ss->connected < 0) {
		if (!retry_next(ss, ss->connected)) {
			report_no_backend(ss->shard);
			goto close_both;
		}
		KEEL_AWAIT(t, keel_close(t, ss->backend));
		goto next_backend;
	}
	keel_tcp_nodelay(ss->backend);
	if (proxy_protocol) {
		/* Before any byte of the client's, in one send (the spec
		 * asks for the header in one segment). */
		ss->header_len = proxy_v2_header(ss->client, ss->header);
		if (!ss->header_len) {
			ss->shard->abandoned++;
			backend_release(ss->be, 0, 0);
			goto close_both;
		}
		KEEL_AWAIT(t, keel_send_all(t, ss->backend, ss->header,
					    ss->header_len, MSG_NOSIGNAL));
		if (keel_res(t) < 0) {
			ss->shard->resets++;
			backend_release(ss->be, 0, 0);
			goto close_both;
		}
	}
	if (tls_client) {
		/* TLS origination: a handshake that fails moves on to the
		 * next backend like a failed connect (nothing of the
		 * client's has been sent). */
		ss->connected =
		    tls_open(ss, tls_client, tls_backend_name(ss), ss->backend);
		if (!ss->connected) {
			KEEL_AWAIT_CALL(t, keel_tls_handshake(t, &ss->tls->ts));
			ss->connected = keel_res(t);
		}
		if (ss->connected == -ECANCELED) {
			backend_release(ss->be, 0, 0);
			goto close_both;
		}
		if (ss->connected < 0) {
			tls_close(ss);
			if (!retry_next(ss, ss->connected)) {
				report_no_backend(ss->shard);
				goto close_both;
			}
			KEEL_AWAIT(t, keel_close(t, ss->backend));
			goto next_backend;
		}
	}
	backend_connected(ss->be, 0,
			  keel_loop_now(keel_task_loop(t)) - ss->started);
	if (ss->tls)
		goto tls_pumps;
	ss->pumps[0] = start_pump(ss, ss->client, ss->backend, 0);
	ss->pumps[1] = start_pump(ss, ss->backend, ss->client, 1);
	if (!ss->pumps[0] || !ss->pumps[1]) {
		/* Out of memory: end the one that started. */
		shutdown(ss->client, SHUT_RDWR);
		shutdown(ss->backend, SHUT_RDWR);
	}
	idle_watch(ss);
	for (ss->i = 0; ss->i < 2; ss->i++) {
		if (!ss->pumps[ss->i])
			continue;
		KEEL_AWAIT(t, keel_join(t, &ss->pumps[ss->i]->task));
		/* A pump exits 0; anything else is the join's own error
		 * (the shutdown): let the pump go when it is done,
		 * counting into the shard from now on (this frame goes
		 * first). */
		if (keel_res(t) != 0) {
			ss->pumps[ss->i]->bytes = &ss->shard->detached;
			keel_task_detach(&ss->pumps[ss->i]->task);
		}
	}
	goto done;

tls_pumps:
	/* The TLS side's direction is this task's; the plain side's is a
	 * pump's (see struct tls_side). */
	ss->tls->plain = tls_server ? ss->backend : ss->client;
	ss->tls->dir = tls_server ? 0 : 1;
	ss->tls->pump = tls_pump_start(ss, ss->tls->plain, 1 - ss->tls->dir);
	if (!ss->tls->pump) {
		backend_release(ss->be, 0, 0);
		goto close_both;
	}
	idle_watch(ss);
	for (;;) {
		KEEL_AWAIT_CALL(t, keel_tls_recv(t, &ss->tls->ts, ss->tls->buf,
						 sizeof(ss->tls->buf)));
		if (keel_res(t) <= 0) {
			ss->tls->result = keel_res(t);
			break;
		}
		ss->tls->len = (unsigned)keel_res(t);
		ss->bytes[ss->tls->dir] += ss->tls->len;
		*(ss->tls->dir ? &ss->shard->down : &ss->shard->up) +=
		    ss->tls->len;
		KEEL_AWAIT(t, keel_send_all(t, ss->tls->plain, ss->tls->buf,
					    ss->tls->len, MSG_NOSIGNAL));
		if (keel_res(t) < 0) {
			ss->tls->result = keel_res(t);
			break;
		}
	}
	if (ss->tls->result == 0) {
		/* close_notify: the plain side's writing half ends. */
		shutdown(ss->tls->plain, SHUT_WR);
	} else {
		/* An error, a truncated stream (no close_notify), or the
		 * shutdown: both directions end. */
		ss->shard->resets++;
		shutdown(ss->tls->fd, SHUT_RDWR);
		shutdown(ss->tls->plain, SHUT_RDWR);
	}
	KEEL_AWAIT(t, keel_join(t, &ss->tls->pump->task));
	if (keel_res(t) != 0) {
		/* The join's own error (the shutdown). The pump encrypts
		 * into this frame: it must have ended before the frame
		 * goes, so wait for it behind a shield (it ends at once:
		 * it is cancelled too, and both sockets are shut down). */
		shutdown(ss->tls->fd, SHUT_RDWR);
		shutdown(ss->tls->plain, SHUT_RDWR);
		if (keel_shield_begin(t, &ss->tls->shield, UINT64_MAX)) {
			/* No memory for a shield: closing the sockets
			 * below cancels its ops first (keel_close). */
			ss->tls->pump->bytes = &ss->shard->detached;
			keel_task_detach(&ss->tls->pump->task);
		} else {
			KEEL_AWAIT(t, keel_join(t, &ss->tls->pump->task));
			keel_shield_end(t, &ss->tls->shield);
		}
	}
done:
	idle_unwatch(ss);
	backend_release(ss->be, ss->bytes[0], ss->bytes[1]);
close_both:
	tls_close(ss);
	KEEL_AWAIT(t, keel_close(t, ss->backend));
close_client:
	tls_close(ss);
	KEEL_AWAIT(t, keel_close(t, ss->client));
	session_leave();
	KEEL_END(t);
}

/* Start a session for client `fd`, admitted already. */
static void session_start(struct acceptor *a, int fd)
{
	bool tls = tls_server || tls_client;
	struct session *ss = keel_spawn(keel_task_loop(&a->task),
					tls ? &tls_session_task : &session_task,
					KEEL_PRIO_NORMAL);

	if (ss && tls)
		ss->tls = &((struct tls_session *)ss)->x;
	if (!ss) {
		session_leave();
		close(fd);
		return;
	}
	keel_tcp_nodelay(fd);
	ss->shard = a->shard;
	ss->client = fd;
	if (shed_target_ns)
		ss->spawned = mono_now();
	a->shard->connections++;
}

/* Room again: at or below the low-water mark (a client waiting here
 * takes its place first). */
static bool room_again(struct acceptor *a)
{
	if (atomic_load_explicit(&open_sessions, memory_order_relaxed) >
	    low_water)
		return false;
	if (a->waiting >= 0) {
		if (!session_admit())
			return false; /* other loops were quicker */
		session_start(a, a->waiting);
		a->waiting = -1;
	}
	return true;
}

/* While paused: whether the sessions open have stood still for the
 * connect timeout (then the clients waiting are refused: see the top). */
static bool stalled(struct acceptor *a)
{
	uint64_t now = keel_loop_now(keel_task_loop(&a->task));
	unsigned n = atomic_load_explicit(&open_sessions, memory_order_relaxed);

	if (n < a->open_seen)
		a->stalled_since = now;
	a->open_seen = n;
	return now - a->stalled_since >= connect_timeout_ns;
}

static int acceptor_step(struct keel_task *t)
{
	struct acceptor *a = keel_container_of(t, struct acceptor, task);
	struct shard *s = a->shard;
	int fd;

	KEEL_BEGIN(t);
	a->waiting = -1;
	if (shed_target_ns) {
		struct keel_shed_opts so = {.target_ns = shed_target_ns,
					    .interval_ns = shed_interval_ns};

		s->error = keel_shed_init(&s->shed, &so);
		if (s->error)
			goto out;
	}
	if (!splice_mode)
		s->error = keel_bufring_create(keel_task_loop(t), &ring_opts,
					       &s->ring);
	if (!s->error)
		s->error = sweeper_start(t, s);
	if (s->error)
		goto out;
	for (;;) {
		if (!a->open) {
			s->error =
			    keel_accept_stream_open(t, &a->as, s->listen_fd, 0);
			if (s->error)
				goto out;
			a->open = true;
		}
		KEEL_AWAIT(t, keel_accept_next(t, &a->as));
		fd = keel_res(t);
		if (fd < 0) {
			if (fd != -ECANCELED && fd != -ETIMEDOUT)
				s->error = fd;
			break;
		}
		if (!session_admit()) {
			/* Another loop took the last place: this one
			 * waits here for room, the next in the queue. */
			a->waiting = fd;
		} else {
			session_start(a, fd);
			if (atomic_load_explicit(&open_sessions,
						 memory_order_relaxed) <
			    max_sessions)
				continue;
		}
		/* Full: stop accepting (the listen queue holds the next
		 * clients) until the sessions open fall to the low-water
		 * mark. */
		keel_accept_stream_close(&a->as);
		a->open = false;
		report_pause(a);
		a->open_seen = max_sessions;
		a->stalled_since = keel_loop_now(keel_task_loop(t));
		while (!room_again(a)) {
			KEEL_AWAIT(t, keel_sleep(t, PAUSE_NS));
			if (keel_res(t) < 0)
				goto out; /* the shutdown */
			if (!stalled(a))
				continue;
			/* Refuse the clients waiting: the one held here and
			 * those in the listen queue (each accept waits a
			 * millisecond at most for one). */
			a->drained = 0;
			if (a->waiting >= 0) {
				close(a->waiting);
				a->waiting = -1;
				a->drained++;
			}
			while (a->drained < LISTEN_BACKLOG) {
				keel_op_timeout(t, 1000 * 1000);
				KEEL_AWAIT(t, keel_accept(t, s->listen_fd, NULL,
							  NULL, SOCK_CLOEXEC));
				if (keel_res(t) < 0)
					break;
				close(keel_res(t));
				a->drained++;
			}
			if (a->drained)
				report_refusal(s, a->drained);
			a->stalled_since = keel_loop_now(keel_task_loop(t));
		}
		report_resume(a);
	}
out:
	if (a->open)
		keel_accept_stream_close(&a->as);
	if (a->waiting >= 0)
		close(a->waiting);
	if (s->error)
		keel_runtime_shutdown(keel_runtime_current());
	KEEL_AWAIT(t, keel_close(t, s->listen_fd));
	KEEL_END(t);
}

void init_acceptor(void *frame, void *arg)
{
	((struct acceptor *)frame)->shard = arg;
}
