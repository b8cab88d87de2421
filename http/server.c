/* SPDX-License-Identifier: MIT */
/*
 * http/server.c: the server: options and their defaults, start (per loop:
 * a SO_REUSEPORT listener, a buffer ring and an acceptor task), the
 * counters, the drain, the per-loop sweep (timeouts) and the Date cache.
 *
 * Shutdown: each loop's server holds the loop (keel_loop_hold()) from its
 * start until its last connection has closed after a drain, so a runtime
 * shutdown first cancels only the loop's stop token: a callback on it
 * cancels the acceptor, which ends accepting and begins the loop's drain.
 * The drain closes the idle connections at once, lets the others finish
 * their request with "Connection: close", and cuts each one left (and its
 * handler) when drain_timeout_ns has passed. Connections observe the
 * loop's root token, with no token of their own, so an idle connection
 * costs no task extension; the root is cancelled once the hold is released
 * (or the runtime's shutdown grace has passed: then every connection
 * ends at once).
 *
 * The sweep is a loop timer, every 100 ms: it compares each connection's
 * deadline (set by the connection when it changes phase: no timer op per
 * request) with the loop's clock, notices a keel_http_server_drain() made
 * on another thread, and ends once the drain is over (no timer left, so
 * the loop can end).
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "conn.h"

#define NS_PER_S (1000ull * 1000 * 1000)
#define PAUSE_NS (10ull * 1000 * 1000) /* over max_conns: poll */

/* ---- options ------------------------------------------------------------ */

static uint64_t or_default(uint64_t v, uint64_t def)
{
	return v ? v : def;
}

static unsigned default_max_conns(void)
{
	struct rlimit rl;

	/* Leave room for the listeners, the log, files being served. */
	if (getrlimit(RLIMIT_NOFILE, &rl) || rl.rlim_cur == RLIM_INFINITY ||
	    rl.rlim_cur > 1u << 24)
		return 1u << 20;
	return rl.rlim_cur > 64 ? (unsigned)rl.rlim_cur - 32 : 16;
}

int keel_http_server_new(const struct keel_http_opts *opts,
			 struct keel_http_server **out)
{
	struct keel_http_opts o = opts ? *opts : (struct keel_http_opts){0};
	struct keel_http_server *srv;

	if (!out)
		return -EINVAL;
	*out = NULL;
	o.backlog = (unsigned)or_default(o.backlog, 1024);
	o.max_conns = o.max_conns ? o.max_conns : default_max_conns();
	o.max_request_line = (uint32_t)or_default(o.max_request_line, 8192);
	o.max_header_bytes = (uint32_t)or_default(o.max_header_bytes, 16384);
	o.max_headers = (uint32_t)or_default(o.max_headers, 100);
	o.max_body = or_default(o.max_body, 1024 * 1024);
	o.header_timeout_ns = or_default(o.header_timeout_ns, 10 * NS_PER_S);
	o.body_timeout_ns = or_default(o.body_timeout_ns, 30 * NS_PER_S);
	o.idle_timeout_ns = or_default(o.idle_timeout_ns, 60 * NS_PER_S);
	o.send_timeout_ns = or_default(o.send_timeout_ns, 30 * NS_PER_S);
	o.drain_timeout_ns = or_default(o.drain_timeout_ns, 10 * NS_PER_S);
	o.bufs = (unsigned)or_default(o.bufs, 1024);
	o.buf_size = (unsigned)or_default(o.buf_size, 4096);
	if (o.shed_target_ns) {
		o.shed_interval_ns =
		    or_default(o.shed_interval_ns, NS_PER_S / 10);
		if (o.shed_target_ns >= o.shed_interval_ns)
			return -EINVAL;
	}
	if ((o.bufs & (o.bufs - 1)) || o.bufs > 32768 ||
	    o.buf_size > 16u << 20 || o.max_request_line > 1u << 20 ||
	    o.max_header_bytes > 1u << 24 || o.max_headers > 1u << 16 ||
	    o.access_log_fd < 0)
		return -EINVAL;
	srv = calloc(1, sizeof(*srv));
	if (!srv)
		return -ENOMEM;
	srv->host = strdup(o.host ? o.host : "127.0.0.1");
	if (!srv->host) {
		free(srv);
		return -ENOMEM;
	}
	o.host = srv->host;
	srv->opts = o;
	*out = srv;
	return 0;
}

/* ---- the Date line ------------------------------------------------------ */

const char *keel__http_date(struct keel__http_shard *sh, size_t *len)
{
	uint64_t now = keel_loop_now(sh->loop);

	if (now >= sh->date_next) {
		static const char days[7][4] = {"Sun", "Mon", "Tue", "Wed",
						"Thu", "Fri", "Sat"};
		static const char months[12][4] = {"Jan", "Feb", "Mar", "Apr",
						   "May", "Jun", "Jul", "Aug",
						   "Sep", "Oct", "Nov", "Dec"};
		struct timespec ts;
		struct tm tm;

		clock_gettime(CLOCK_REALTIME, &ts);
		gmtime_r(&ts.tv_sec, &tm);
		snprintf(sh->date, sizeof(sh->date),
			 "Date: %s, %02d %s %04d %02d:%02d:%02d GMT\r\n",
			 days[tm.tm_wday % 7], tm.tm_mday,
			 months[tm.tm_mon % 12], tm.tm_year + 1900, tm.tm_hour,
			 tm.tm_min, tm.tm_sec);
		sh->date_sec = (uint64_t)ts.tv_sec;
		/* Until the wall clock's next second. */
		sh->date_next = now + (NS_PER_S - (uint64_t)ts.tv_nsec);
	}
	*len = 37;
	return sh->date;
}

/* ---- the drain and the sweep -------------------------------------------- */

/* Begin this loop's drain (idempotent). */
static void shard_drain(struct keel__http_shard *sh)
{
	struct keel__http_core *core = keel__http_core(sh);
	uint64_t now = keel_loop_now(sh->loop);
	uint64_t t = sh->srv->opts.drain_timeout_ns;

	if (core->draining)
		return;
	core->draining = true;
	atomic_store(&sh->srv->draining, true);
	core->drain_deadline =
	    t == UINT64_MAX || now + t < now ? UINT64_MAX : now + t;
	if (core->acceptor)
		keel_task_cancel(core->acceptor);
	keel__http_conns_drain(sh);
}

/* The loop's server work is over: give back what it holds on the loop. */
static void shard_stop(struct keel__http_shard *sh)
{
	struct keel__http_core *core = keel__http_core(sh);

	core->stopped = true;
	if (sh->log)
		keel__http_log_stop(sh);
	keel__http_files_fini(sh);
	keel__http_x_fini(sh);
	keel_token_cb_remove(&core->stop_cb);
	if (core->held) {
		/* Last: in a runtime shutdown this cancels the loop's root
		 * token. */
		core->held = false;
		keel_loop_release(sh->loop);
	}
}

static void sweep_fired(struct keel_loop *loop, struct keel_timer *timer,
			void *arg)
{
	struct keel__http_shard *sh = arg;
	struct keel__http_core *core = keel__http_core(sh);
	uint64_t now = keel_loop_now(loop);

	(void)timer;
	if (atomic_load_explicit(&sh->srv->draining, memory_order_relaxed))
		shard_drain(sh);
	if (core->draining && !core->drain_cancelled &&
	    now >= core->drain_deadline) {
		/* What is left is cut: connections and handlers. */
		core->drain_cancelled = true;
		keel__http_conns_cut(sh);
	}
	keel__http_conns_sweep(sh, now);
	if (core->draining && !core->nconns && !core->acceptor) {
		shard_stop(sh);
		return;
	}
	keel_timer_arm_after(loop, &core->sweep, KEEL__HTTP_SWEEP_NS);
}

/* ---- the acceptor -------------------------------------------------------- */

struct acceptor {
	struct keel_task task;
	struct keel__http_shard *sh;
	struct keel_accept_stream as;
	bool open; /* the accept stream is open */
};

static int acceptor_step(struct keel_task *t);
static KEEL_TASK_TYPE(acceptor_task, struct acceptor, task, acceptor_step);

/* A runtime shutdown has begun: stop accepting; the acceptor drains. */
static void stop_cancelled(struct keel_token *tok, int cause, void *arg)
{
	struct keel__http_core *core = keel__http_core(arg);

	if (core->acceptor)
		keel_task_cancel(core->acceptor);
	(void)tok;
	(void)cause;
}

/* The loop's side of the start: ring, core state, hold, timer. */
static int shard_setup(struct acceptor *a)
{
	struct keel__http_shard *sh = a->sh;
	const struct keel_http_opts *o = &sh->srv->opts;
	struct keel_bufring_opts ro = {.count = o->bufs, .size = o->buf_size};
	struct keel__http_core *core = keel__http_core(sh);
	int err;

	/* The ring is registered from the loop's own thread. */
	err = keel_bufring_create(sh->loop, &ro, &sh->ring);
	if (err)
		return err;
	core->acceptor = &a->task;
	keel_timer_init(&core->sweep, sweep_fired, sh);
	err = keel_timer_arm_after(sh->loop, &core->sweep, KEEL__HTTP_SWEEP_NS);
	if (err)
		return err;
	/* The sweep ends with shard_stop(), which releases the hold. The
	 * acceptor keeps observing the root token: connections inherit its
	 * token, and must have none of their own. */
	keel_loop_hold(sh->loop);
	core->held = true;
	keel_token_on_cancel(keel_loop_stop_token(sh->loop), &core->stop_cb,
			     stop_cancelled, sh);
	err = keel__http_metrics_init(sh);
	if (!err && o->access_log_fd > 0)
		err = keel__http_log_start(sh);
	return err;
}

/* Room for one more connection (all loops)? Takes it if so. */
static bool admit(struct keel_http_server *srv)
{
	if (atomic_fetch_add_explicit(&srv->conns, 1, memory_order_relaxed) <
	    srv->opts.max_conns)
		return true;
	atomic_fetch_sub_explicit(&srv->conns, 1, memory_order_relaxed);
	return false;
}

static bool below_low_water(struct keel_http_server *srv)
{
	unsigned n = atomic_load_explicit(&srv->conns, memory_order_relaxed);

	return n < srv->opts.max_conns - srv->opts.max_conns / 8;
}

static int acceptor_step(struct keel_task *t)
{
	struct acceptor *a = keel_container_of(t, struct acceptor, task);
	struct keel__http_shard *sh = a->sh;
	struct keel_http_server *srv = sh->srv;
	int fd;

	KEEL_BEGIN(t);
	sh->error = shard_setup(a);
	if (sh->error)
		goto out;
	for (;;) {
		if (!a->open) {
			sh->error = keel_accept_stream_open(t, &a->as,
							    sh->listen_fd, 0);
			if (sh->error)
				break;
			a->open = true;
		}
		/* EMFILE & co pause the stream by themselves (backoff). */
		KEEL_AWAIT(t, keel_accept_next(t, &a->as));
		fd = keel_res(t);
		if (fd < 0) {
			if (fd != -ECANCELED && fd != -ETIMEDOUT)
				sh->error = fd;
			break; /* the drain, the shutdown, or a fatal error */
		}
		struct keel__http_conn *c = NULL;

		if (admit(srv)) {
			c = keel__http_conn_spawn(sh);
			if (!c)
				atomic_fetch_sub_explicit(&srv->conns, 1,
							  memory_order_relaxed);
		}
		if (!c) {
			KEEL__HTTP_COUNT(sh, refused, 1);
			close(fd);
		} else {
			keel_tcp_nodelay(fd);
			c->sh = sh;
			c->fd = fd;
			KEEL__HTTP_COUNT(sh, connections, 1);
			KEEL__HTTP_COUNT(sh, active, 1);
		}
		if (below_low_water(srv) ||
		    atomic_load(&srv->conns) < srv->opts.max_conns)
			continue;
		/* At the cap: stop accepting (the kernel's backlog holds
		 * the next ones) until the count falls below 7/8 of it, and
		 * for one pause at least: the stream opens again once the
		 * kernel has returned its cancelled accept (-EBUSY before). */
		keel_accept_stream_close(&a->as);
		a->open = false;
		do {
			KEEL_AWAIT(t, keel_sleep(t, PAUSE_NS));
			if (keel_res(t) < 0)
				goto out;
		} while (!below_low_water(srv));
	}
out:
	if (a->open) {
		keel_accept_stream_close(&a->as);
		a->open = false;
	}
	keel__http_core(sh)->acceptor = NULL;
	if (keel__http_core(sh)->held)
		shard_drain(sh);
	KEEL_AWAIT(t, keel_close(t, sh->listen_fd));
	sh->listen_fd = -1;
	KEEL_END(t);
}

static void acceptor_init(void *frame, void *arg)
{
	struct acceptor *a = frame;

	a->sh = arg;
}

/* ---- start, stop -------------------------------------------------------- */

static int shard_new(struct keel_http_server *srv, struct keel_loop *loop,
		     struct keel__http_shard **out)
{
	unsigned i = atomic_load(&srv->nshards);
	int port = atomic_load(&srv->port);
	int fd;

	if (!port)
		port = srv->opts.port; /* the first listener: as asked */

	if (i >= KEEL__HTTP_MAX_LOOPS)
		return -ENOSPC;
	fd = keel_tcp_listen(srv->host, (uint16_t)port, (int)srv->opts.backlog,
			     KEEL_NET_REUSEPORT);
	if (fd < 0)
		return fd;
	if (!port) {
		port = keel_net_local_port(fd);
		if (port < 0) {
			close(fd);
			return port;
		}
	}
	struct keel__http_shard *sh = calloc(1, sizeof(*sh));
	struct keel__http_core *core = calloc(1, sizeof(*core));

	if (!sh || !core) {
		free(sh);
		free(core);
		close(fd);
		return -ENOMEM;
	}
	sh->srv = srv;
	sh->loop = loop;
	sh->listen_fd = fd;
	if (srv->opts.shed_target_ns) {
		struct keel_shed_opts so = {
		    .target_ns = srv->opts.shed_target_ns,
		    .interval_ns = srv->opts.shed_interval_ns,
		};

		keel_shed_init(&sh->shed, &so); /* checked at _new */
	}
	sh->core = core;
	srv->shards[i] = sh;
	atomic_store(&srv->port, port);
	atomic_store(&srv->nshards, i + 1);
	*out = sh;
	return 0;
}

static int start_on(struct keel_http_server *srv, struct keel_loop *loop)
{
	struct keel__http_shard *sh;
	int err = shard_new(srv, loop, &sh);

	if (err)
		return err;
	atomic_store(&srv->started, true);
	/* On the caller's own loop (or one it is about to run) at once;
	 * another loop's thread fills the frame in itself. */
	struct keel_loop *cur = keel_loop_current();

	if (cur == loop || (!cur && !srv->rt)) {
		struct acceptor *a =
		    keel_spawn(loop, &acceptor_task, KEEL_PRIO_NORMAL);

		if (!a)
			return -ENOMEM;
		a->sh = sh;
		return 0;
	}
	return keel_spawn_on(loop, &acceptor_task, KEEL_PRIO_NORMAL,
			     acceptor_init, sh);
}

int keel_http_server_start(struct keel_http_server *srv,
			   struct keel_runtime *rt)
{
	if (!srv || !rt || atomic_load(&srv->started))
		return -EINVAL;
	srv->rt = rt;
	for (unsigned i = 0; i < keel_runtime_size(rt); i++) {
		int err = start_on(srv, keel_runtime_loop(rt, i));

		if (err)
			return err;
	}
	return 0;
}

int keel_http_server_start_loop(struct keel_http_server *srv,
				struct keel_loop *loop)
{
	if (!srv || !loop || atomic_load(&srv->started))
		return -EINVAL;
	return start_on(srv, loop);
}

int keel_http_server_port(const struct keel_http_server *srv)
{
	int port = srv ? atomic_load(&srv->port) : 0;

	return port ? port : -ENOTCONN;
}

void keel_http_server_drain(struct keel_http_server *srv)
{
	/* Each loop's sweep notices within 100 ms (this may be another
	 * thread: nothing of a loop is touched here). */
	if (srv)
		atomic_store(&srv->draining, true);
}

void keel_http_server_stats(const struct keel_http_server *srv,
			    struct keel_http_stats *out)
{
	memset(out, 0, sizeof(*out));
	if (!srv)
		return;
	unsigned n = atomic_load(&srv->nshards);

	for (unsigned i = 0; i < n; i++) {
		const struct keel_http_stats *s = &srv->shards[i]->stats;
#define SUM(f) out->f += __atomic_load_n(&s->f, __ATOMIC_RELAXED)
		SUM(connections);
		SUM(refused);
		SUM(active);
		SUM(requests);
		SUM(responses_4xx);
		SUM(responses_5xx);
		SUM(handler_panics);
		SUM(timeouts);
		SUM(client_gone);
		SUM(log_dropped);
		SUM(shed);
#undef SUM
	}
}

void keel_http_server_free(struct keel_http_server *srv)
{
	if (!srv)
		return;
	unsigned n = atomic_load(&srv->nshards);

	for (unsigned i = 0; i < n; i++) {
		struct keel__http_shard *sh = srv->shards[i];
		struct keel__http_core *core = keel__http_core(sh);

		if (sh->listen_fd >= 0)
			close(sh->listen_fd);
		keel__http_metrics_fini(sh);
		free(core->conns);
		free(core);
		free(sh);
	}
	keel__http_routes_free(srv);
	free(srv->host);
	free(srv);
}
