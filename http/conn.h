/* SPDX-License-Identifier: MIT */
/*
 * http/conn.h: the connection task's frame, the exchange (one request and
 * its response) and each loop's core state, shared by server.c, conn.c
 * and exchange.c only (the other modules see the exchange through
 * internal.h's accessors).
 *
 * Memory: an idle keep-alive connection is its frame (struct
 * keel__http_conn, at most 256 bytes, checked at compile time) and holds
 * no ring buffer and no exchange. An exchange is taken from the loop's
 * free list when a request's first byte arrives and goes back when the
 * connection is idle again; it keeps the request line and the header
 * section (offsets into one growing buffer, never pointers, so that it
 * can grow), the parser and the response's state.
 */
#ifndef KEEL_HTTP_CONN_H
#define KEEL_HTTP_CONN_H

#include <http_parser.h>
#include <sys/uio.h>

#include "internal.h"

/* What a connection is doing: which deadline applies. */
enum keel__http_phase {
	KEEL__HTTP_IDLE,    /* waiting for a request: the idle timeout */
	KEEL__HTTP_HEAD,    /* a request's head is arriving: the header one */
	KEEL__HTTP_BODY,    /* its body is being read: the body one */
	KEEL__HTTP_HANDLER, /* a handler runs, not reading: none */
	KEEL__HTTP_SEND,    /* a response is being sent: the send one */
	KEEL__HTTP_LINGER,  /* closing after an error: discard what comes */
};

/* keel__http_conn.flags */
#define KEEL__HTTP_C_CLOSE    0x01 /* close after this response */
#define KEEL__HTTP_C_ENDED    0x02 /* the recv stream ended (end: result) */
#define KEEL__HTTP_C_TIMEDOUT 0x04 /* cut by the sweep */
#define KEEL__HTTP_C_KILLED   0x08 /* cancelled by the sweep or the drain */
#define KEEL__HTTP_C_LINGER   0x10 /* closing: drop what the client sends */
#define KEEL__HTTP_C_TLS      0x20 /* a TLS connection (struct keel__https) */
#define KEEL__HTTP_C_SECURE   0x40 /* ... whose handshake is done */

/*
 * The connection task's frame. A TLS connection's frame is bigger (struct
 * keel__https in tls.c, which embeds this one first); its `rs` is unused
 * (the TLS stream has its own) and `buf` holds plaintext (ring NULL).
 */
struct keel__http_conn {
	struct keel_task task;
	struct keel_recv_stream rs;
	struct keel__http_shard *sh;
	struct keel_http_exchange *x; /* the request in progress, or NULL */
	struct keel_buf buf;	      /* the chunk being parsed (len 0: none) */
	uint64_t deadline;	      /* of the phase; UINT64_MAX: none */
	uint32_t off;		      /* bytes of buf already parsed */
	uint32_t slot;		      /* index in the core's conns[] */
	int fd;
	int32_t end; /* the stream's final result, once C_ENDED */
	uint8_t phase;
	uint8_t flags;
};

/* One header: offsets into the exchange's data. */
struct keel__http_hdr {
	uint32_t name, name_len, value, value_len;
};

/* keel_http_exchange.flags */
#define KEEL__HTTP_X_HEADERS_DONE 0x0001   /* on_headers_complete ran */
#define KEEL__HTTP_X_COMPLETE	  0x0002   /* the whole message was parsed */
#define KEEL__HTTP_X_HEAD	  0x0004   /* a HEAD request */
#define KEEL__HTTP_X_KEEP_ALIVE	  0x0008   /* the client keeps it open */
#define KEEL__HTTP_X_EXPECT	  0x0010   /* Expect: 100-continue */
#define KEEL__HTTP_X_CONTINUED	  0x0020   /* "100 Continue" was sent */
#define KEEL__HTTP_X_AFTER_LF	  0x0040   /* the last byte scanned was LF */
#define KEEL__HTTP_X_IN_FIELD	  0x0080   /* parsing a header name */
#define KEEL__HTTP_X_IN_VALUE	  0x0100   /* parsing a header value */
#define KEEL__HTTP_X_STARTED	  0x0200   /* the response has begun */
#define KEEL__HTTP_X_FINISHED	  0x0400   /* the response is complete */
#define KEEL__HTTP_X_SINK	  0x0800   /* on_body hands the piece over */
#define KEEL__HTTP_X_STREAMING	  0x1000   /* a chunked response is open */
#define KEEL__HTTP_X_BROKEN	  0x2000   /* a send failed: close */
#define KEEL__HTTP_X_HANDLER_DONE 0x4000   /* the handler task has exited */
#define KEEL__HTTP_X_BODY_WAIT	  0x8000   /* the handler waits for body */
#define KEEL__HTTP_X_COUNTED	  0x10000  /* keel__http_x_done() ran */
#define KEEL__HTTP_X_GATHER	  0x20000  /* send x->msg (head + body) */
#define KEEL__HTTP_X_WANT_BODY	  0x40000  /* TLS: the handler asks for body */
#define KEEL__HTTP_X_BEGAN	  0x80000  /* the handler's first step ran */
#define KEEL__HTTP_X_SHED	  0x100000 /* shed: the handler did not run */

/* A fixed body up to this is copied after the head (one send); a larger
 * one is the second iovec of one sendmsg. */
#define KEEL__HTTP_COPY_MAX 1024

/* The response head is built here when it fits (the fast path). */
#define KEEL__HTTP_OUT_INLINE 1024

struct keel_http_exchange {
	struct keel_http_exchange *next_free;
	struct keel__http_conn *c;
	struct keel__http_shard *sh;
	http_parser parser;
	const struct keel__http_route *route;
	uint64_t start_ns; /* the request's first byte (loop clock) */
	uint64_t spawn_ns; /* its handler's spawn (shedding; CLOCK_MONOTONIC) */
	uint32_t flags;
	int err; /* a status found while parsing (400, 414, 431...) */

	/* The request: url, then each header's name and value. */
	char *data;
	uint32_t data_len, data_cap;
	uint32_t url_len;  /* at offset 0 */
	uint32_t path_len; /* url up to '?' */
	struct keel__http_hdr *hdrs;
	uint32_t nhdrs, hdrs_cap;
	uint32_t head_bytes;	/* parsed since the message began */
	uint32_t line_len;	/* the request line, once its LF was seen */
	char last;		/* the last head byte scanned */
	int64_t content_length; /* -1: chunked */
	uint64_t body_seen;	/* body bytes parsed */

	/* The body piece for a handler (inside the connection's chunk). */
	const char *piece;
	uint32_t piece_len;
	int body_err;	/* set by the sweep (-ETIMEDOUT) for a waiting read */
	char *body_all; /* keel_http_body_read_all's buffer */
	size_t body_all_len, body_all_cap;

	/* The response. */
	int status;
	uint64_t body_sent;
	char *extra; /* headers added by the handler, "Name: value\r\n"... */
	uint32_t extra_len;
	char *out; /* the head (and a small body): out_inline or malloc'd */
	size_t out_len, out_cap;
	struct msghdr msg;
	struct iovec iov[3];
	char chunk_head[24]; /* a streamed piece's "%zx\r\n" */

	/* The handler task and what it waits on. */
	struct keel_task *handler;
	struct keel_token *tok;	    /* the handler's, a child of the conn's */
	struct keel_event *done_ev; /* set when the handler has exited */
	struct keel_event *body_ev; /* set when body data or its end came */
	struct keel_shield shield;  /* the conn's wait after a cancel */
	int handler_status;
	struct keel_routine r;	     /* the keel_http_* routine in progress */
	struct keel_routine r_inner; /* body_read_all's body read */
	void *scratch;		     /* keel__http_scratch() */
	size_t scratch_size;

	char out_inline[KEEL__HTTP_OUT_INLINE];
};

/* Each loop's core state (sh->core). */
struct keel__http_core {
	struct keel__http_conn **conns; /* open connections, for the sweep */
	unsigned nconns, conns_cap;
	struct keel_http_exchange *free_x; /* idle exchanges */
	unsigned nfree;
	struct keel_timer sweep;      /* every 100 ms: deadlines, the drain */
	struct keel_token_cb stop_cb; /* the loop's stop token: drain */
	struct keel_task *acceptor;   /* NULL once it has exited */
	uint64_t drain_deadline;
	bool held;	      /* the loop is held; the sweep runs */
	bool draining;	      /* this loop's drain has begun */
	bool drain_cancelled; /* its deadline passed: connections cut */
	bool stopped;	      /* the sweep is over; the loop may end */
};

#define KEEL__HTTP_SWEEP_NS (100ull * 1000 * 1000)

static inline struct keel__http_core *
keel__http_core(struct keel__http_shard *sh)
{
	return sh->core;
}

/* ---- conn.c ---------------------------------------------------------- */

extern const struct keel_task_type keel__http_conn_task;
/* The step of both connection task types (tls.c's frame embeds the plain
 * one first). */
int keel__http_conn_step(struct keel_task *t);

/* Whether this response is the connection's last (then it says
 * "Connection: close"): the client's wish, an error, the drain. */
bool keel__http_conn_last(struct keel__http_conn *c,
			  struct keel_http_exchange *x);
/*
 * Parse body bytes from the connection's chunk for a handler: 1 with a
 * piece in x->piece, 0 when the chunk is used up or the body complete,
 * or a negative errno (-EMSGSIZE over max_body, -EPROTO malformed).
 */
int keel__http_conn_body(struct keel_http_exchange *x);
/* Add / remove a connection for the sweep. */
int keel__http_conn_track(struct keel__http_conn *c);
void keel__http_conn_untrack(struct keel__http_conn *c);
/* The sweep: time out connections past their deadline. */
void keel__http_conns_sweep(struct keel__http_shard *sh, uint64_t now);
/* The drain: close the idle connections now. */
void keel__http_conns_drain(struct keel__http_shard *sh);
/* The drain's deadline: cut every connection (and its handler) left. */
void keel__http_conns_cut(struct keel__http_shard *sh);

/* ---- tls.c: the TLS transport ------------------------------------------ */

/*
 * A connection reads requests and sends responses through a transport:
 * plain, the socket itself (a recv stream into the loop's ring, parsed in
 * place; sendmsg; splice), or TLS (keel_tls_stream: ciphertext read in
 * place from the ring by the engine, plaintext into the connection's
 * buffer; responses gathered into one record's worth of plaintext and
 * encrypted straight into the stream's output). The plain path stays as
 * it was: a flag test picks the TLS routines, which are awaited with
 * KEEL_AWAIT_CALL (their state is in the TLS frame).
 */
extern const struct keel_task_type keel__https_conn_task;

/* Spawn a connection task for the accepted `fd`: TLS when the server has
 * a TLS context. NULL when out of memory. */
struct keel__http_conn *keel__http_conn_spawn(struct keel__http_shard *sh);
/* Open the TLS stream and run the handshake (routine; keel_res() 0 or a
 * negative errno: close). */
int keel__http_tls_open(struct keel_task *t, struct keel__http_conn *c);
/* Plaintext into c->buf (ring NULL), from offset 0 (routine; keel_res():
 * bytes, 0 at close_notify, or a negative errno). Only when c->buf is
 * parsed to its end. */
int keel__http_tls_recv(struct keel_task *t, struct keel__http_conn *c);
/* Send the bytes of `iov` (routine, from the connection's task or its
 * handler, one at a time): gathered into as few records as fit, one
 * send each. keel_res(): the total, or a negative errno. */
int keel__http_tls_sendv(struct keel_task *t, struct keel__http_conn *c,
			 const struct iovec *iov, unsigned iovcnt);
/* keel__http_tls_sendv() of one piece. */
int keel__http_tls_send(struct keel_task *t, struct keel__http_conn *c,
			const void *buf, size_t len);
/* The head, then `len` bytes of file `fd` from `off`, read into the
 * frame's staging buffer and encrypted (no splice: the kernel cannot
 * encrypt). keel_res(): body bytes sent, or a negative errno. */
int keel__http_tls_sendfile(struct keel_task *t, struct keel__http_conn *c,
			    const void *head, size_t head_len, int fd,
			    uint64_t off, uint64_t len);
/* close_notify (routine, shielded: it runs after a cancel too, within a
 * second); then what the client still sends is dropped as for plain. */
int keel__http_tls_close(struct keel_task *t, struct keel__http_conn *c);
/* Close the TLS stream and free the engine (the fd stays open). */
void keel__http_tls_fini(struct keel__http_conn *c);

/* Await the next request bytes into c->buf: keel_res() > 0, 0 at the
 * end, < 0 an error. In a task step (`co` the task) or routine. */
#define KEEL__HTTP_RECV(co, t, c)                                              \
	do {                                                                   \
		if ((c)->flags & KEEL__HTTP_C_TLS)                             \
			KEEL_AWAIT_CALL(co, keel__http_tls_recv(t, c));        \
		else                                                           \
			KEEL_AWAIT(co,                                         \
				   keel_recv_next(t, &(c)->rs, &(c)->buf));    \
	} while (0)

/* Await sending `len` bytes at `buf`: keel_res() `len` or < 0. */
#define KEEL__HTTP_SEND(co, t, c, buf, len)                                    \
	do {                                                                   \
		if ((c)->flags & KEEL__HTTP_C_TLS)                             \
			KEEL_AWAIT_CALL(co,                                    \
					keel__http_tls_send(t, c, buf, len));  \
		else                                                           \
			KEEL_AWAIT(co, keel_send_all(t, (c)->fd, buf, len,     \
						     MSG_NOSIGNAL));           \
	} while (0)

/* Await sending every byte of `msg`'s iovecs. */
#define KEEL__HTTP_SENDMSG(co, t, c, msg)                                      \
	do {                                                                   \
		if ((c)->flags & KEEL__HTTP_C_TLS)                             \
			KEEL_AWAIT_CALL(co, keel__http_tls_sendv(              \
						t, c, (msg)->msg_iov,          \
						(unsigned)(msg)->msg_iovlen)); \
		else                                                           \
			KEEL_AWAIT(co, keel_sendmsg_all(t, (c)->fd, msg,       \
							MSG_NOSIGNAL));        \
	} while (0)

/* ---- exchange.c ------------------------------------------------------ */

/* An exchange for a new request on `c` (from the free list), or NULL. */
struct keel_http_exchange *keel__http_x_get(struct keel__http_conn *c);
/* Reset `x` for the next request on the same connection. */
void keel__http_x_reset(struct keel_http_exchange *x);
/* Back to the free list (the connection is idle or closes). */
void keel__http_x_put(struct keel_http_exchange *x);
/* Free the loop's idle exchanges (the loop is stopping). */
void keel__http_x_fini(struct keel__http_shard *sh);
/* Append request bytes to x->data; -ENOSPC over `limit`. */
int keel__http_x_append(struct keel_http_exchange *x, const char *p, size_t len,
			size_t limit);
/* Make room for a head of `len` bytes in x->out. */
int keel__http_x_out_reserve(struct keel_http_exchange *x, size_t len);
/* Spawn the route's handler task for x; 0 or a negative errno. */
int keel__http_handler_spawn(struct keel_http_exchange *x);
/* The request is answered or broke off: counters, metrics, log. */
void keel__http_x_done(struct keel_http_exchange *x);
/* True while the response has bytes to send before the request ends. */
bool keel__http_x_closing(const struct keel_http_exchange *x);

#endif
