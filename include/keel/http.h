/* SPDX-License-Identifier: MIT */
/*
 * keel/http.h: an HTTP/1.1 server on keel (libkeel-http, pkg-config
 * keel-http; not part of keel.h: the core needs only liburing and jemalloc).
 *
 * A server listens on every loop of a runtime (one SO_REUSEPORT listener
 * per loop) or on one loop. Each connection is one task: it receives into
 * the loop's provided-buffer ring (an idle keep-alive connection holds no
 * buffer and at most 256 bytes), parses with http-parser (Node's
 * http_parser, from Debian), routes, answers, and takes the next request.
 * Pipelined requests are answered strictly in order (one at a time).
 *
 * Routes are a method and a path, exact or a prefix, first match in the
 * order added (keel_http_route()). What answers a route is one of:
 *   - a responder built into the library, run inline by the connection's
 *     task without a task of its own: a fixed body (keel_http_route_text),
 *     static files under a directory (keel_http_route_files), the
 *     Prometheus metrics (keel_http_route_metrics), a health check
 *     (keel_http_route_health);
 *   - a handler task (keel_http_route_task): a keel task spawned for the
 *     request. It can await anything (an actor's ask, a file, an upstream,
 *     a mailbox); it is cancelled (its token) when its client goes away or
 *     the drain deadline passes; if it panics, the client gets a 500 (when
 *     no byte of the response was sent; otherwise the connection is
 *     closed), the connection goes on with its next request, and the panic
 *     is counted (keel_http_stats.handler_panics).
 *
 * Limits answer as HTTP says: request line or target too long 414, header
 * bytes or count over the limit 431, body over the limit 413, malformed
 * 400 (and every request-smuggling shape: Content-Length with
 * Transfer-Encoding, duplicate or differing Content-Length, obs-fold, bare
 * LF), unsupported version 505, absolute-form target 400, unknown method
 * 501, no route 404, method not allowed 405. Each error response but 404
 * and 405 (which keep a keep-alive connection: the request was well
 * formed) carries `Connection: close` and the connection is closed after
 * it. A connection
 * over keel_http_opts.max_conns is not accepted until the count falls below
 * the low-water mark.
 *
 * Timeouts (all settable, 0 = the default, UINT64_MAX = none): the header
 * (from a request's first byte to its last header byte: a slowloris client
 * is cut off and holds at most its header limit), the body (between two
 * reads of it), keep-alive idle, and a response's send (a client that does
 * not read). They are enforced by a per-loop sweep (resolution 100 ms) so a
 * request costs no timer operation.
 *
 * In a handler task, await every keel_http_* call that takes the task
 * with KEEL_AWAIT_CALL (they are routines whose state lives in the
 * exchange; one at a time per exchange):
 *
 *	KEEL_AWAIT_CALL(t, keel_http_respond(t, h->x, 200, "text/plain",
 *					     "hi\n", 3));
 *
 * Drain (keel_http_server_drain, or SIGINT/SIGTERM through the runtime's
 * shutdown): stop accepting, close idle keep-alive connections, let
 * in-flight requests finish with `Connection: close` on their responses,
 * and after the drain deadline cancel what is left.
 */
#ifndef KEEL_HTTP_H
#define KEEL_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <keel/task.h>

#ifdef __cplusplus
extern "C" {
#endif

struct keel_loop;
struct keel_runtime;
struct keel_tls_ctx;
struct keel_http_server;
struct keel_http_exchange;

/* ---- the server ------------------------------------------------------ */

struct keel_http_opts {
	const char *host;   /* listen address (default "127.0.0.1") */
	uint16_t port;	    /* 0: any free port (keel_http_server_port) */
	unsigned backlog;   /* listen(2) backlog (default 1024) */
	unsigned max_conns; /* per server, all loops (default from
			     * RLIMIT_NOFILE); accepting stops at it and
			     * resumes below 7/8 of it */
	uint32_t max_request_line; /* request line, incl. target: 414
				    * (default 8 KiB) */
	uint32_t max_header_bytes; /* all header lines: 431 (default 16 KiB) */
	uint32_t max_headers;	   /* header count: 431 (default 100) */
	uint64_t max_body;	   /* request body bytes: 413 (default 1 MiB) */
	uint64_t header_timeout_ns; /* default 10 s */
	uint64_t body_timeout_ns;   /* between body reads; default 30 s */
	uint64_t idle_timeout_ns;   /* keep-alive idle; default 60 s */
	uint64_t send_timeout_ns;   /* a response's send; default 30 s */
	uint64_t drain_timeout_ns;  /* then cancel what is left; default 10 s */
	unsigned bufs;		    /* each loop's buffer ring: count (1024) */
	unsigned buf_size;	    /* ... and size (default 4 KiB) */
	/* > 0: an access log, one line per request (common log format plus
	 * the time taken), written to this fd by a per-loop log task; lines
	 * are dropped and counted when its buffer is full, so the loop never
	 * blocks on it. 0: none (fd 0 is never a log). */
	int access_log_fd;
	/*
	 * HTTPS: a TLS context (keel/tls.h, libkeel-tls; a server role,
	 * created with alpn "http/1.1") shared by every loop; NULL: plain
	 * HTTP. Each connection does its handshake first, bounded by the
	 * context's handshake timeout (a failure or a timeout is closed and
	 * counted in the context's stats), then serves HTTP/1.1 as plain
	 * does (a client offering only "h2" gets no ALPN and HTTP/1.1).
	 * Files are read and encrypted (no splice). Closing a
	 * connection sends close_notify first. The context must outlive the
	 * server; /metrics adds its counters.
	 */
	struct keel_tls_ctx *tls;
	/*
	 * Load shedding (CoDel-style, keel/limit.h's shedder, one per loop):
	 * > 0: a request's queueing delay is the time from its handler
	 * task's spawn to the task's first step (how long it waited behind
	 * the loop's other work); while that has stayed above this target
	 * for shed_interval_ns, a handler is not run: its request is
	 * answered at once with 503 and "Retry-After: 1", and closed
	 * (stats.shed). 0: off.
	 */
	uint64_t shed_target_ns;
	uint64_t shed_interval_ns; /* default 100 ms; > shed_target_ns */
};

/*
 * Create a server (routes are added before it starts).
 * Returns 0 or a negative errno (-EINVAL: bad options; -ENOMEM).
 * Ownership: the caller owns it: keel_http_server_free() once stopped.
 */
int keel_http_server_new(const struct keel_http_opts *opts,
			 struct keel_http_server **out);

/*
 * Start serving on every loop of `rt` (call before keel_runtime_run() or
 * from a task on one of its loops) or on one `loop`. Each loop gets its
 * own SO_REUSEPORT listener, buffer ring and acceptor task.
 * Returns 0 or a negative errno (the listen or ring error).
 * Ownership: the server must outlive the runtime's run (or the loop's).
 */
int keel_http_server_start(struct keel_http_server *srv,
			   struct keel_runtime *rt);
int keel_http_server_start_loop(struct keel_http_server *srv,
				struct keel_loop *loop);

/* The port the listeners are bound to (after start), or -ENOTCONN. */
int keel_http_server_port(const struct keel_http_server *srv);

/*
 * Begin a graceful drain (thread-safe; also begun by the loop's stop
 * token being cancelled, as keel_runtime_shutdown() does first: the
 * server holds each loop (keel_loop_hold) until its last connection is
 * closed, so the runtime's root-token cancel comes after the drain, or at
 * its shutdown_grace_ns). The server's tasks exit when the last
 * connection is closed. A root-token cancel alone (a hard stop) ends
 * every connection at once.
 */
void keel_http_server_drain(struct keel_http_server *srv);

/* Free a server whose loops have stopped. Safe on NULL. */
void keel_http_server_free(struct keel_http_server *srv);

struct keel_http_stats {
	uint64_t connections;	 /* accepted */
	uint64_t refused;	 /* over max_conns or out of memory */
	uint64_t active;	 /* open now */
	uint64_t requests;	 /* answered (any status) */
	uint64_t responses_4xx;	 /* client errors (incl. limits) */
	uint64_t responses_5xx;	 /* server errors (incl. panics) */
	uint64_t handler_panics; /* handler tasks that panicked */
	uint64_t timeouts;	 /* connections cut by a timeout */
	uint64_t client_gone;	 /* handlers cancelled: client went away */
	uint64_t log_dropped;	 /* access-log lines dropped (buffer full) */
	uint64_t shed;		 /* requests answered 503 by the shedder */
};

/* Sum of every loop's counters (approximate while running). */
void keel_http_server_stats(const struct keel_http_server *srv,
			    struct keel_http_stats *out);

/* ---- routes ----------------------------------------------------------- */

#define KEEL_HTTP_EXACT	 0x0u /* the path equals the route's */
#define KEEL_HTTP_PREFIX 0x1u /* the path starts with the route's */

/* A handler task's frame embeds this (first or anywhere; see
 * KEEL_HTTP_HANDLER_TYPE). The library fills it before the task runs. */
struct keel_http_handler {
	struct keel_task task;
	struct keel_http_exchange *x; /* the request and its response */
	void *arg;		      /* the route's arg */
};

/* Define a handler task type: `frame_type` embeds a keel_http_handler as
 * `member`; `step_fn` is its step function. */
#define KEEL_HTTP_HANDLER_TYPE(var, frame_type, member, step_fn)               \
	KEEL_TASK_TYPE(var, frame_type, member.task, step_fn)

/*
 * Routes, matched in the order added; `method` is "GET", "POST"... or NULL
 * for any (a GET route also answers HEAD, without the body). A path that
 * matches some route but not its method gets 405, no match 404.
 * Each returns 0 or a negative errno (-EINVAL, -ENOMEM, -EBUSY: started).
 * Ownership: the strings are copied; `arg` and `type` stay the caller's
 * and must outlive the server.
 */
int keel_http_route_task(struct keel_http_server *srv, const char *method,
			 const char *path, unsigned flags,
			 const struct keel_task_type *type, void *arg);
/* A fixed response: `status`, `content_type`, `body` (copied). */
int keel_http_route_text(struct keel_http_server *srv, const char *method,
			 const char *path, unsigned flags, int status,
			 const char *content_type, const void *body,
			 size_t len);
/*
 * Static files under `root` (opened now as a directory) for GET and HEAD
 * under the prefix `path`: the rest of the request path, percent-decoded,
 * names a file beneath root (no "..", no symlink out of root: openat2
 * RESOLVE_BENEATH), with ETag and Last-Modified, If-None-Match and
 * If-Modified-Since (304), a single Range (206, 416), Content-Type by
 * extension, "index.html" for a directory. Bodies go by splice through a
 * pipe (zero-copy) from the kernel's page cache when large, else in the
 * same sendmsg as the headers. Over TLS (keel_http_opts.tls) a large body
 * is read into the connection's buffer and encrypted (no splice).
 */
int keel_http_route_files(struct keel_http_server *srv, const char *path,
			  const char *root);
/* keel's Prometheus text (every loop of the runtime) plus the server's
 * counters, per-route request counts and latency histograms. */
int keel_http_route_metrics(struct keel_http_server *srv, const char *path);
/* 200 "ok\n" while serving, 503 "draining\n" during a drain. */
int keel_http_route_health(struct keel_http_server *srv, const char *path);
/* The health registry's JSON (keel_health_render_json, keel/health.h):
 * 200 while it is healthy or degraded, 503 when unhealthy, and 503
 * "draining\n" during a drain. The registry must outlive the server. */
struct keel_health;
int keel_http_route_health_registry(struct keel_http_server *srv,
				    const char *path, struct keel_health *reg);

/* ---- inside a handler task: the request ------------------------------- */

/* "GET", "POST"... */
const char *keel_http_method(const struct keel_http_exchange *x);
/* The path (before '?', not decoded) and the query (after '?', "" when
 * none); `len` may be NULL. Valid until the handler exits. */
const char *keel_http_path(const struct keel_http_exchange *x, size_t *len);
const char *keel_http_query(const struct keel_http_exchange *x, size_t *len);
/* 10 for HTTP/1.0, 11 for HTTP/1.1. */
int keel_http_version(const struct keel_http_exchange *x);
/*
 * The value of the first header named `name` (case-insensitive), or NULL.
 * `len` may be NULL. Valid until the handler exits.
 */
const char *keel_http_header(const struct keel_http_exchange *x,
			     const char *name, size_t *len);
/* Header `i` (0..count-1) in the order received. Returns -ERANGE past the
 * end. */
unsigned keel_http_header_count(const struct keel_http_exchange *x);
int keel_http_header_at(const struct keel_http_exchange *x, unsigned i,
			const char **name, size_t *name_len, const char **value,
			size_t *value_len);
/* Content-Length, -1 for a chunked body, 0 for none. */
int64_t keel_http_body_length(const struct keel_http_exchange *x);

/*
 * Await the next piece of the request body (streamed, as received; chunked
 * framing removed): keel_res() is its length (> 0) with `*data` set, 0 at
 * the end of the body, or a negative errno (-EMSGSIZE: over max_body;
 * -ETIMEDOUT; -ECONNRESET; the task's cancellation cause). The first read
 * sends "100 Continue" when the client asked for it. The piece is valid
 * until the next read or the response.
 */
int keel_http_body_read(struct keel_task *t, struct keel_http_exchange *x,
			const char **data);
/*
 * Await the whole body into one buffer of at most `max` bytes (-EMSGSIZE
 * over it): keel_res() is its length, `*data` valid until the handler
 * exits.
 */
int keel_http_body_read_all(struct keel_task *t, struct keel_http_exchange *x,
			    size_t max, const char **data);

/* ---- inside a handler task: the response ------------------------------ */

/* Add a response header (copied; Content-Length, Transfer-Encoding, Date,
 * Connection are the library's and refused with -EINVAL). Before the
 * response starts. Returns 0, -EINVAL, -ENOSPC (over 4 KiB of headers). */
int keel_http_add_header(struct keel_http_exchange *x, const char *name,
			 const char *value);

/*
 * Await sending the whole response: status, headers, `body` (`len` bytes,
 * borrowed until the await ends) in one sendmsg. For HEAD the body is not
 * sent (its length is). keel_res() is 0 or a negative errno (the
 * connection is then closed).
 */
int keel_http_respond(struct keel_task *t, struct keel_http_exchange *x,
		      int status, const char *content_type, const void *body,
		      size_t len);

/* A streamed (chunked) response: begin, write pieces (each awaited, the
 * piece borrowed until then; an empty write does nothing), end. HTTP/1.0
 * clients get the body unframed and the connection closed at the end. */
int keel_http_stream_begin(struct keel_task *t, struct keel_http_exchange *x,
			   int status, const char *content_type);
int keel_http_stream_write(struct keel_task *t, struct keel_http_exchange *x,
			   const void *data, size_t len);
int keel_http_stream_end(struct keel_task *t, struct keel_http_exchange *x);

/* Await sending the file `path` beneath directory `dirfd` as
 * keel_http_route_files() would (conditional, Range, HEAD; 404/403 when it
 * cannot). `path` is a file name, not a request target: it is not
 * percent-decoded, and a ".." in it is refused (400). */
int keel_http_send_file(struct keel_task *t, struct keel_http_exchange *x,
			int dirfd, const char *path);

/* The reason phrase of a status ("OK", "Not Found"...), "" if unknown. */
const char *keel_http_reason(int status);

#ifdef __cplusplus
}
#endif
#endif
