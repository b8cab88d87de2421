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
#include <sys/uio.h>
#include <unistd.h>

#include "proxy.h"

struct pump {
	struct keel_task task;
	struct shard *shard;
	uint64_t *bytes;
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
	const struct sockaddr_storage *addr; /* the session's copy */
	socklen_t len;
};

/* Waits for the client to speak or go; exits with WATCH_SPOKE, 0 (end of
 * file), or recv's error (-ECANCELED, -ETIMEDOUT: the race was ended). */
#define WATCH_SPOKE 1
struct watcher {
	struct keel_task task;
	int fd;
	char byte; /* MSG_PEEK's target: handed to the kernel, in the frame */
};

struct session {
	struct keel_task task;
	struct shard *shard;
	int client, backend;
	struct backend *b; /* backend_pick()'s, until backend_release() */
	struct sockaddr_storage addr;
	socklen_t addr_len;
	uint64_t started; /* the connect's start, for its latency */
	uint64_t up, down;
	struct keel_scope race; /* connect vs. the client going */
	uint32_t seen;		/* race results read */
	int connected;		/* connect's result */
	bool client_gone;
	struct pump *pumps[2];
	unsigned i;
};

struct acceptor {
	struct keel_task task;
	struct shard *shard;
	struct keel_accept_stream as;
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

static KEEL_TASK_TYPE(pump_task, struct pump, task, pump_step);
static KEEL_TASK_TYPE(splice_pump_task, struct pump, task, splice_pump_step);
static KEEL_TASK_TYPE(connector_task, struct connector, task, connector_step);
static KEEL_TASK_TYPE(watcher_task, struct watcher, task, watcher_step);
static KEEL_TASK_TYPE(session_task, struct session, task, session_step);
KEEL_TASK_TYPE(acceptor_task, struct acceptor, task, acceptor_step);

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
static void report_backend_failure(struct shard *s, const char *name, int err)
{
	static _Thread_local time_t last;

	s->backend_failures++;
	if (report_due(&last))
		fprintf(stderr,
			"proxy: backend %s: %s (%llu failures on this loop)\n",
			name, keel_strerror(err),
			(unsigned long long)s->backend_failures);
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

static void report_refusal(struct shard *s)
{
	static _Thread_local time_t last;

	s->refused++;
	if (report_due(&last))
		fprintf(stderr,
			"proxy: %u sessions open (--max-conns): refusing "
			"connections (%llu on this loop)\n",
			max_sessions, (unsigned long long)s->refused);
}

static struct pump *start_pump(struct session *ss, int from, int to,
			       uint64_t *bytes)
{
	struct pump *p =
	    keel_spawn(keel_task_loop(&ss->task),
		       splice_mode ? &splice_pump_task : &pump_task,
		       KEEL_PRIO_NORMAL | KEEL_SPAWN_JOINABLE);

	if (p) {
		p->shard = ss->shard;
		p->from = from;
		p->to = to;
		p->bytes = bytes;
	}
	return p;
}

static int connector_step(struct keel_task *t)
{
	struct connector *c = keel_container_of(t, struct connector, task);

	KEEL_BEGIN(t);
	KEEL_AWAIT(t,
		   keel_connect(t, c->fd, (struct sockaddr *)c->addr, c->len));
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
	ssize_t n = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);

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
		c->addr = &ss->addr;
		c->len = ss->addr_len;
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

static int session_step(struct keel_task *t)
{
	struct session *ss = keel_container_of(t, struct session, task);

	KEEL_BEGIN(t);
	if (client_gone_now(ss->client)) {
		ss->shard->abandoned++;
		goto close_client;
	}
	ss->b = backend_pick(0, &ss->addr, &ss->addr_len);
	if (!ss->b) {
		report_backend_failure(ss->shard, "(any)", -EHOSTUNREACH);
		goto close_client;
	}
	ss->backend = keel_tcp_socket(ss->addr.ss_family);
	if (ss->backend < 0) {
		report_backend_failure(ss->shard, backend_name(ss->b),
				       ss->backend);
		goto release;
	}
	if (keel_scope_init(t, &ss->race, KEEL_SCOPE_COLLECT)) {
		report_backend_failure(ss->shard, backend_name(ss->b), -ENOMEM);
		goto close_both;
	}
	ss->started = keel_loop_now(keel_task_loop(t));
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
	if (ss->client_gone) {
		ss->shard->abandoned++;
		goto close_both;
	}
	if (ss->connected != -ECANCELED)
		backend_connected(ss->b, ss->connected,
				  keel_loop_now(keel_task_loop(t)) -
				      ss->started);
	if (ss->connected < 0) {
		if (ss->connected != -ECANCELED)
			report_backend_failure(ss->shard, backend_name(ss->b),
					       ss->connected);
		goto close_both;
	}
	keel_tcp_nodelay(ss->backend);
	ss->pumps[0] = start_pump(ss, ss->client, ss->backend, &ss->up);
	ss->pumps[1] = start_pump(ss, ss->backend, ss->client, &ss->down);
	if (!ss->pumps[0] || !ss->pumps[1]) {
		/* Out of memory: end the one that started. */
		shutdown(ss->client, SHUT_RDWR);
		shutdown(ss->backend, SHUT_RDWR);
	}
	for (ss->i = 0; ss->i < 2; ss->i++) {
		if (!ss->pumps[ss->i])
			continue;
		KEEL_AWAIT(t, keel_join(t, &ss->pumps[ss->i]->task));
		/* A pump exits 0; anything else is the join's own error
		 * (the shutdown): let the pump go when it is done. */
		if (keel_res(t) != 0) {
			/* It outlives this frame: it counts on the shard. */
			ss->pumps[ss->i]->bytes =
			    ss->i ? &ss->shard->down : &ss->shard->up;
			keel_task_detach(&ss->pumps[ss->i]->task);
		}
	}
close_both:
	KEEL_AWAIT(t, keel_close(t, ss->backend));
release:
	ss->shard->up += ss->up;
	ss->shard->down += ss->down;
	backend_release(ss->b, ss->up, ss->down);
close_client:
	KEEL_AWAIT(t, keel_close(t, ss->client));
	session_leave();
	KEEL_END(t);
}

static int acceptor_step(struct keel_task *t)
{
	struct acceptor *a = keel_container_of(t, struct acceptor, task);
	struct shard *s = a->shard;

	KEEL_BEGIN(t);
	if (!splice_mode)
		s->error = keel_bufring_create(keel_task_loop(t), &ring_opts,
					       &s->ring);
	if (!s->error)
		s->error = keel_accept_stream_open(t, &a->as, s->listen_fd, 0);
	if (s->error) {
		keel_runtime_shutdown(keel_runtime_current());
		goto done;
	}
	for (;;) {
		KEEL_AWAIT(t, keel_accept_next(t, &a->as));
		int fd = keel_res(t);

		if (fd < 0) {
			if (fd != -ECANCELED && fd != -ETIMEDOUT) {
				s->error = fd;
				keel_runtime_shutdown(keel_runtime_current());
			}
			break;
		}
		if (!session_admit()) {
			/* Closing it also ends a chain of proxies pointed at
			 * each other (see the top). */
			close(fd);
			report_refusal(s);
			continue;
		}
		keel_tcp_nodelay(fd);
		struct session *ss = keel_spawn(
		    keel_task_loop(t), &session_task, KEEL_PRIO_NORMAL);

		if (!ss) {
			session_leave();
			close(fd);
			continue;
		}
		ss->shard = s;
		ss->client = fd;
		s->connections++;
	}
	keel_accept_stream_close(&a->as);
done:
	KEEL_AWAIT(t, keel_close(t, s->listen_fd));
	KEEL_END(t);
}

void init_acceptor(void *frame, void *arg)
{
	((struct acceptor *)frame)->shard = arg;
}
