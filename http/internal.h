/* SPDX-License-Identifier: MIT */
/*
 * http/internal.h: what the modules of libkeel-http share (not installed).
 *
 *   server.c    options, start (per loop: listener, buffer ring, acceptor),
 *               stats, drain, the timeout sweep, the Date cache
 *   conn.c      the connection task: parse (http_parser), limits,
 *               pipelining, dispatch, error responses, keep-alive
 *   exchange.c  one request and its response: accessors, body reads,
 *               respond, stream, head building; handler tasks
 *   router.c    routes (keel_http_route_*), matching
 *   files.c     static files (keel_http_route_files, keel_http_send_file)
 *   metrics.c   per-route counts and latency histograms, /metrics, /health
 *   accesslog.c the per-loop access-log task
 *   tls.c       the TLS transport (keel/tls.h): handshake, plaintext in,
 *               records out, close_notify
 *
 * libkeel-http uses keel's public API only.
 */
#ifndef KEEL_HTTP_INTERNAL_H
#define KEEL_HTTP_INTERNAL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include <keel.h>
#include <keel/http.h>
#include <keel/limit.h>

#define KEEL__HTTP_MAX_LOOPS 256

struct keel__http_shard;

/* ---- routes (router.c) --------------------------------------------- */

enum keel__http_route_kind {
	KEEL__HTTP_R_TASK,    /* spawn `type` per request */
	KEEL__HTTP_R_TEXT,    /* fixed status/content type/body */
	KEEL__HTTP_R_FILES,   /* static files under root_fd */
	KEEL__HTTP_R_METRICS, /* keel__http_metrics_render() */
	KEEL__HTTP_R_HEALTH,  /* 200 ok / 503 draining */
};

struct keel__http_route {
	char *method; /* NULL: any */
	size_t method_len;
	char *path;
	size_t path_len;
	unsigned flags; /* KEEL_HTTP_EXACT or KEEL_HTTP_PREFIX */
	enum keel__http_route_kind kind;
	unsigned index; /* position in srv->routes (metrics) */
	const struct keel_task_type *type; /* TASK */
	/* TASK, with opts.shed_target_ns: `type` with keel__http_shed_step
	 * in front (the handler's first step decides). */
	struct keel_task_type shed_type;
	void *arg;	    /* TASK */
	int status;	    /* TEXT */
	char *content_type; /* TEXT */
	char *body;	    /* TEXT */
	size_t body_len;    /* TEXT */
	/* TEXT: the response head up to Date: the status line, Content-Type
	 * and Content-Length (the fast path copies it, then the Date and
	 * Connection lines). */
	char *head;
	size_t head_len;
	int root_fd; /* FILES: O_PATH|O_DIRECTORY */
};

/* A shed_type's step: on a handler's first step, record its queueing
 * delay (since its spawn) and, if the shedder says so, exit at once with
 * the exchange marked shed; then (and otherwise) the route's own step. */
int keel__http_shed_step(struct keel_task *t);

/* Add a route (copies method and path). 0, -EINVAL, -ENOMEM, -EBUSY. */
int keel__http_route_add(struct keel_http_server *srv,
			 const struct keel__http_route *r);

/*
 * The first route whose path and method match; NULL with *status 404
 * (no path matches) or 405 (a path matches, not the method). A GET route
 * answers HEAD.
 */
const struct keel__http_route *
keel__http_route_find(const struct keel_http_server *srv, const char *method,
		      size_t method_len, const char *path, size_t path_len,
		      int *status);

/* Free the server's routes (keel_http_server_free). */
void keel__http_routes_free(struct keel_http_server *srv);

/*
 * The methods the routes for `path` answer, "GET, HEAD, POST" (a 405's
 * Allow header, which RFC 9110 requires), into buf (NUL-terminated; what
 * does not fit is left out). Returns its length.
 */
size_t keel__http_route_allow(const struct keel_http_server *srv,
			      const char *path, size_t path_len, char *buf,
			      size_t cap);

/* ---- the server (server.c) ----------------------------------------- */

struct keel_http_server {
	struct keel_http_opts opts; /* defaults applied */
	char *host;		    /* opts.host points here */
	struct keel__http_route *routes;
	unsigned nroutes, routes_cap;
	_Atomic int port;     /* bound port, 0 before start */
	_Atomic bool started; /* routes are frozen */
	_Atomic bool draining;
	_Atomic unsigned conns; /* open, all loops (max_conns) */
	_Atomic unsigned nshards;
	struct keel__http_shard *shards[KEEL__HTTP_MAX_LOOPS];
	struct keel_runtime *rt; /* or NULL (start_loop) */
};

/* Per loop; touched only by its loop's thread but for the counters,
 * which other threads read (stats, /metrics) with relaxed atomics. */
struct keel__http_shard {
	struct keel_http_server *srv;
	struct keel_loop *loop;
	int listen_fd;
	struct keel_bufring *ring;
	struct keel_http_stats stats; /* written with __atomic relaxed */
	/* "Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n" for the current second */
	char date[40];
	uint64_t date_sec;
	uint64_t date_next; /* loop clock (ns) at which to refresh it */
	int error;	    /* the loop could not serve (its ring, accept) */
	void *metrics;	    /* metrics.c's per-route counters */
	void *log;	    /* accesslog.c's state, or NULL */
	void *files;	    /* files.c's open-file cache, or NULL */
	void *core;	    /* server.c/conn.c's own (connection list, sweep) */
	struct keel_shed shed; /* opts.shed_target_ns: this loop's shedder */
};

/* The cached "Date: ...\r\n" line (38 bytes), refreshed once a second. */
const char *keel__http_date(struct keel__http_shard *sh, size_t *len);

/* Add `n` to a shard counter (relaxed atomic; read by other threads). */
#define KEEL__HTTP_COUNT(sh, field, n)                                         \
	__atomic_fetch_add(&(sh)->stats.field, (n), __ATOMIC_RELAXED)

/* ---- one request and its response (exchange.c) ---------------------- */

/*
 * The exchange is private to exchange.c and conn.c; the other modules use
 * keel/http.h's accessors and these:
 */
struct keel__http_shard *keel__http_shard(const struct keel_http_exchange *x);
/* The client socket. */
int keel__http_fd(const struct keel_http_exchange *x);
/* The connection speaks TLS (tls.c): no splice, sends through these
 * routines (awaited with KEEL_AWAIT_CALL; see conn.h). */
bool keel__http_is_tls(const struct keel_http_exchange *x);
int keel__http_x_tls_sendv(struct keel_task *t, struct keel_http_exchange *x,
			   const struct iovec *iov, unsigned iovcnt);
int keel__http_x_tls_sendfile(struct keel_task *t, struct keel_http_exchange *x,
			      const void *head, size_t head_len, int fd,
			      uint64_t off, uint64_t len);
/* The request is HEAD (send headers, no body). */
bool keel__http_is_head(const struct keel_http_exchange *x);
/*
 * Build the response head into buf: status line, Date, Content-Type (when
 * not NULL), Content-Length (content_length >= 0) or Transfer-Encoding:
 * chunked (-1; HTTP/1.0: none, and the connection closes), Connection
 * (close when this is the connection's last response), the headers added
 * with keel_http_add_header(), and the blank line. Returns its length; if
 * that is more than cap, nothing usable was written (grow and retry).
 * Marks the response started.
 */
size_t keel__http_head(struct keel_http_exchange *x, int status,
		       const char *content_type, int64_t content_length,
		       char *buf, size_t cap);
/*
 * The response is complete (`err` 0) or broke off (`err` < 0: the
 * connection closes): `status` and the body bytes sent, for the counters,
 * the per-route metrics and the access log.
 */
void keel__http_sent(struct keel_http_exchange *x, int status,
		     uint64_t body_bytes, int err);
/*
 * A zeroed scratch block of `size` bytes that lives until the exchange
 * ends (a responder routine's state across its awaits), and the routine
 * resume point that goes with it. NULL when out of memory.
 */
void *keel__http_scratch(struct keel_http_exchange *x, size_t size);
struct keel_routine *keel__http_routine(struct keel_http_exchange *x);

/* ---- static files (files.c) ---------------------------------------- */

/*
 * The FILES responder, a routine (KEEL_AWAIT_CALL) run by the connection's
 * task or a handler task: serve `path` (`len` bytes, still
 * percent-encoded) beneath directory `dirfd`. keel_res() is 0 when a
 * response was sent (any status), or a negative errno when the connection
 * must close. Its state lives in keel__http_scratch().
 */
int keel__http_files_serve(struct keel_task *t, struct keel_http_exchange *x,
			   int dirfd, const char *path, size_t len);
/* Free the shard's open-file cache (the loop is stopping). */
void keel__http_files_fini(struct keel__http_shard *sh);

/* ---- metrics and health (metrics.c) --------------------------------- */

int keel__http_metrics_init(struct keel__http_shard *sh);
void keel__http_metrics_fini(struct keel__http_shard *sh);
/* One answered request on `route` (NULL: none matched). */
void keel__http_observe(struct keel__http_shard *sh,
			const struct keel__http_route *route, int status,
			uint64_t ns);
/*
 * The /metrics body: keel_metrics_render() over the server's loops, then
 * keel_http_* counters (the server's stats), per-route request counts by
 * status class and latency histograms. Returns the length needed (like
 * snprintf: nothing past len is written).
 */
size_t keel__http_metrics_render(struct keel_http_server *srv, char *buf,
				 size_t len);

/* ---- the access log (accesslog.c) ----------------------------------- */

/*
 * Start the shard's log task when opts.access_log_fd > 0 (sets sh->log;
 * nothing and 0 otherwise), on the shard's loop. Returns 0, -ENOMEM.
 */
int keel__http_log_start(struct keel__http_shard *sh);
/*
 * Append a line for an answered request, from the shard's loop (a no-op
 * when sh->log is NULL). Dropped and counted (stats.log_dropped) when the
 * buffer is full. A request refused before its request line was whole
 * (keel_http_method() NULL or "", or an empty path) is logged as "-".
 */
void keel__http_log(struct keel__http_shard *sh,
		    const struct keel_http_exchange *x, int status,
		    uint64_t body_bytes, uint64_t ns);
/*
 * Flush what is buffered and let the log task exit, within 1 s (a reader
 * that stopped reading cannot hold the loop longer); sh->log is NULL once
 * it has. Call it when the shard's drain is over: the task keeps the loop
 * running until then (after the root token's cancellation too, for at
 * most drain_timeout_ns + 1 s, so that the drain's last requests log).
 */
void keel__http_log_stop(struct keel__http_shard *sh);
/*
 * The client's address for the log, "127.0.0.1" or "::1" (no port), NUL
 * terminated in buf. Returns its length, or a negative errno (-ENOSPC:
 * len too small; the log then writes "-"). For exchange.c to implement
 * from the accept's address; accesslog.c has a weak stand-in that calls
 * getpeername(2) on keel__http_fd() until it does.
 */
int keel__http_peer(const struct keel_http_exchange *x, char *buf, size_t len);

#endif
