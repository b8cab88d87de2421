/* SPDX-License-Identifier: MIT */
/*
 * http/exchange.c: one request and its response. The exchange's life
 * (taken from the loop's free list at a request's first byte, reset for a
 * pipelined successor, back to the list when the connection is idle), the
 * request accessors, the response head, the handler task and the
 * keel_http_* routines a handler awaits (respond, stream, body reads).
 *
 * The routines keep their resume point in x->r (one call at a time per
 * exchange, as the header says) and their state in the exchange, never in
 * the handler's frame. A handler reads the body itself: from the chunk
 * the connection holds (c->buf from c->off), then with keel_recv_try()
 * from the connection's stream, and when nothing is there it waits on
 * x->body_ev, which the stream's notify hook (conn.c) sets.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>

#include "conn.h"

#define DATA_INITIAL 1024	 /* request bytes an exchange starts with */
#define HDRS_INITIAL 16		 /* header slots it starts with */
#define FREE_KEEP    1024	 /* idle exchanges a loop keeps */
#define EXTRA_MAX    4096	 /* headers a handler may add */
#define OUT_KEEP     (64 * 1024) /* a larger head buffer is freed */

/* ---- life ------------------------------------------------------------- */

static void x_clear(struct keel_http_exchange *x)
{
	x->route = NULL;
	x->flags = 0;
	x->err = 0;
	x->data_len = 0;
	x->url_len = x->path_len = 0;
	x->nhdrs = 0;
	x->head_bytes = x->line_len = 0;
	x->last = 0;
	x->content_length = 0;
	x->body_seen = 0;
	x->piece = NULL;
	x->piece_len = 0;
	x->body_err = 0;
	x->body_all_len = 0;
	x->status = 0;
	x->body_sent = 0;
	x->extra_len = 0;
	x->out_len = 0;
	x->handler = NULL;
	x->handler_status = 0;
	x->r.at = NULL;
	if (x->scratch) {
		free(x->scratch);
		x->scratch = NULL;
		x->scratch_size = 0;
	}
	http_parser_init(&x->parser, HTTP_REQUEST);
	x->parser.data = x;
	x->start_ns = keel_loop_now(x->sh->loop);
}

struct keel_http_exchange *keel__http_x_get(struct keel__http_conn *c)
{
	struct keel__http_core *core = keel__http_core(c->sh);
	struct keel_http_exchange *x = core->free_x;

	if (x) {
		core->free_x = x->next_free;
		core->nfree--;
	} else {
		x = calloc(1, sizeof(*x));
		if (!x)
			return NULL;
		x->data = malloc(DATA_INITIAL);
		x->hdrs = malloc(HDRS_INITIAL * sizeof(*x->hdrs));
		if (!x->data || !x->hdrs) {
			free(x->data);
			free(x->hdrs);
			free(x);
			return NULL;
		}
		x->data_cap = DATA_INITIAL;
		x->hdrs_cap = HDRS_INITIAL;
		x->out = x->out_inline;
		x->out_cap = sizeof(x->out_inline);
	}
	x->c = c;
	x->sh = c->sh;
	x_clear(x);
	return x;
}

void keel__http_x_reset(struct keel_http_exchange *x)
{
	if (x->tok) {
		keel_token_release(x->tok);
		x->tok = NULL;
	}
	x_clear(x);
}

static void x_free(struct keel_http_exchange *x)
{
	free(x->data);
	free(x->hdrs);
	free(x->extra);
	free(x->body_all);
	free(x->scratch);
	if (x->out != x->out_inline)
		free(x->out);
	if (x->body_ev)
		keel_event_free(x->body_ev);
	if (x->done_ev)
		keel_event_free(x->done_ev);
	free(x);
}

void keel__http_x_put(struct keel_http_exchange *x)
{
	struct keel__http_core *core = keel__http_core(x->sh);

	if (x->tok) {
		keel_token_release(x->tok);
		x->tok = NULL;
	}
	if (core->nfree >= FREE_KEEP) {
		x_free(x);
		return;
	}
	/* What a large request or response grew is not kept idle. */
	if (x->out != x->out_inline && x->out_cap > OUT_KEEP) {
		free(x->out);
		x->out = x->out_inline;
		x->out_cap = sizeof(x->out_inline);
	}
	if (x->body_all) {
		free(x->body_all);
		x->body_all = NULL;
		x->body_all_cap = 0;
	}
	x->c = NULL;
	x->next_free = core->free_x;
	core->free_x = x;
	core->nfree++;
}

void keel__http_x_fini(struct keel__http_shard *sh)
{
	struct keel__http_core *core = keel__http_core(sh);

	while (core->free_x) {
		struct keel_http_exchange *x = core->free_x;

		core->free_x = x->next_free;
		x_free(x);
	}
	core->nfree = 0;
}

int keel__http_x_append(struct keel_http_exchange *x, const char *p, size_t len,
			size_t limit)
{
	if ((size_t)x->data_len + len > limit)
		return -ENOSPC;
	if (x->data_len + len > x->data_cap) {
		size_t cap = x->data_cap;

		while (cap < x->data_len + len)
			cap *= 2;
		char *d = realloc(x->data, cap);

		if (!d)
			return -ENOMEM;
		x->data = d;
		x->data_cap = (uint32_t)cap;
	}
	memcpy(x->data + x->data_len, p, len);
	x->data_len += (uint32_t)len;
	return 0;
}

int keel__http_x_out_reserve(struct keel_http_exchange *x, size_t len)
{
	if (len <= x->out_cap)
		return 0;
	size_t cap = x->out_cap * 2 > len ? x->out_cap * 2 : len;
	char *o = x->out == x->out_inline ? malloc(cap) : realloc(x->out, cap);

	if (!o)
		return -ENOMEM;
	/* What was built inline (a head before its large body) moves too. */
	if (x->out == x->out_inline)
		memcpy(o, x->out_inline, x->out_cap);
	x->out = o;
	x->out_cap = cap;
	return 0;
}

void keel__http_x_done(struct keel_http_exchange *x)
{
	struct keel__http_shard *sh = x->sh;

	/* Counted once, and only what got an answer (or began one). */
	if (!x->status || (x->flags & KEEL__HTTP_X_COUNTED))
		return;
	x->flags |= KEEL__HTTP_X_COUNTED;
	uint64_t ns = keel_loop_now(sh->loop) - x->start_ns;

	KEEL__HTTP_COUNT(sh, requests, 1);
	if (x->status >= 500)
		KEEL__HTTP_COUNT(sh, responses_5xx, 1);
	else if (x->status >= 400)
		KEEL__HTTP_COUNT(sh, responses_4xx, 1);
	keel__http_observe(sh, x->route, x->status, ns);
	if (sh->log)
		keel__http_log(sh, x, x->status, x->body_sent, ns);
}

bool keel__http_x_closing(const struct keel_http_exchange *x)
{
	return x->c->flags & KEEL__HTTP_C_CLOSE;
}

/* ---- what other modules use ------------------------------------------ */

struct keel__http_shard *keel__http_shard(const struct keel_http_exchange *x)
{
	return x->sh;
}

int keel__http_fd(const struct keel_http_exchange *x)
{
	return x->c->fd;
}

bool keel__http_is_head(const struct keel_http_exchange *x)
{
	return x->flags & KEEL__HTTP_X_HEAD;
}

void *keel__http_scratch(struct keel_http_exchange *x, size_t size)
{
	if (x->scratch && x->scratch_size >= size)
		return x->scratch;
	void *p = calloc(1, size);

	if (!p)
		return NULL;
	free(x->scratch);
	x->scratch = p;
	x->scratch_size = size;
	return p;
}

struct keel_routine *keel__http_routine(struct keel_http_exchange *x)
{
	return &x->r;
}

/* Copy `len` bytes at *off when they fit in cap; count them anyway. */
static void app(char *buf, size_t cap, size_t *off, const char *s, size_t len)
{
	if (*off + len <= cap)
		memcpy(buf + *off, s, len);
	*off += len;
}

size_t keel__http_head(struct keel_http_exchange *x, int status,
		       const char *content_type, int64_t content_length,
		       char *buf, size_t cap)
{
	struct keel__http_conn *c = x->c;
	char line[16];
	size_t off = 0, dlen;
	const char *date = keel__http_date(x->sh, &dlen);

	if (content_length < 0 && x->parser.http_minor == 0)
		c->flags |= KEEL__HTTP_C_CLOSE; /* HTTP/1.0: unframed */
	bool last = keel__http_conn_last(c, x);

	/* By hand, not snprintf: this runs for every response a handler or
	 * the files responder sends (snprintf was ~40 % of a 4 KiB file's
	 * user-space instructions). */
	const char *reason = keel_http_reason(status);
	size_t rlen = strlen(reason);

	if (status < 100 || status > 999)
		status = 500;
	memcpy(line, "HTTP/1.1 ", 9);
	line[9] = (char)('0' + status / 100);
	line[10] = (char)('0' + status / 10 % 10);
	line[11] = (char)('0' + status % 10);
	line[12] = ' ';
	app(buf, cap, &off, line, 13);
	app(buf, cap, &off, reason, rlen);
	app(buf, cap, &off, "\r\n", 2);
	app(buf, cap, &off, date, dlen);
	if (content_type) {
		app(buf, cap, &off, "Content-Type: ", 14);
		app(buf, cap, &off, content_type, strlen(content_type));
		app(buf, cap, &off, "\r\n", 2);
	}
	if (content_length >= 0) {
		char digits[24];
		size_t nd = 0;
		uint64_t v = (uint64_t)content_length;

		do
			digits[sizeof(digits) - ++nd] = (char)('0' + v % 10);
		while ((v /= 10));
		app(buf, cap, &off, "Content-Length: ", 16);
		app(buf, cap, &off, digits + sizeof(digits) - nd, nd);
		app(buf, cap, &off, "\r\n", 2);
	} else if (x->parser.http_minor > 0) {
		app(buf, cap, &off, "Transfer-Encoding: chunked\r\n", 28);
	}
	if (last)
		app(buf, cap, &off, "Connection: close\r\n", 19);
	else
		app(buf, cap, &off, "Connection: keep-alive\r\n", 24);
	if (x->extra_len)
		app(buf, cap, &off, x->extra, x->extra_len);
	app(buf, cap, &off, "\r\n", 2);
	x->flags |= KEEL__HTTP_X_STARTED;
	x->status = status;
	return off;
}

void keel__http_sent(struct keel_http_exchange *x, int status,
		     uint64_t body_bytes, int err)
{
	x->status = status;
	x->body_sent = body_bytes;
	x->flags |= KEEL__HTTP_X_STARTED;
	if (err < 0)
		x->flags |= KEEL__HTTP_X_BROKEN;
	else
		x->flags |= KEEL__HTTP_X_FINISHED;
}

/* ---- the request ------------------------------------------------------- */

const char *keel_http_method(const struct keel_http_exchange *x)
{
	/* "" until the request line's method was parsed (a request refused
	 * before it: the access log writes "-"). */
	if (!x->url_len)
		return "";
	return http_method_str(x->parser.method);
}

const char *keel_http_path(const struct keel_http_exchange *x, size_t *len)
{
	if (len)
		*len = x->path_len;
	return x->data;
}

const char *keel_http_query(const struct keel_http_exchange *x, size_t *len)
{
	if (x->path_len == x->url_len) {
		if (len)
			*len = 0;
		return "";
	}
	if (len)
		*len = x->url_len - x->path_len - 1;
	return x->data + x->path_len + 1;
}

int keel_http_version(const struct keel_http_exchange *x)
{
	return x->parser.http_major * 10 + x->parser.http_minor;
}

const char *keel_http_header(const struct keel_http_exchange *x,
			     const char *name, size_t *len)
{
	size_t nlen = strlen(name);

	for (uint32_t i = 0; i < x->nhdrs; i++) {
		const struct keel__http_hdr *h = &x->hdrs[i];

		if (h->name_len == nlen &&
		    !strncasecmp(x->data + h->name, name, nlen)) {
			if (len)
				*len = h->value_len;
			return x->data + h->value;
		}
	}
	return NULL;
}

unsigned keel_http_header_count(const struct keel_http_exchange *x)
{
	return x->nhdrs;
}

int keel_http_header_at(const struct keel_http_exchange *x, unsigned i,
			const char **name, size_t *name_len, const char **value,
			size_t *value_len)
{
	if (i >= x->nhdrs)
		return -ERANGE;
	const struct keel__http_hdr *h = &x->hdrs[i];

	if (name)
		*name = x->data + h->name;
	if (name_len)
		*name_len = h->name_len;
	if (value)
		*value = x->data + h->value;
	if (value_len)
		*value_len = h->value_len;
	return 0;
}

int64_t keel_http_body_length(const struct keel_http_exchange *x)
{
	return x->content_length;
}

/* ---- the body ----------------------------------------------------------- */

static const char continue_100[] = "HTTP/1.1 100 Continue\r\n\r\n";

static void set_phase(struct keel_http_exchange *x, enum keel__http_phase ph,
		      uint64_t timeout)
{
	struct keel__http_conn *c = x->c;
	uint64_t now = keel_loop_now(x->sh->loop);

	c->phase = (uint8_t)ph;
	c->deadline = timeout == UINT64_MAX || now + timeout < now
			  ? UINT64_MAX
			  : now + timeout;
}

static int body_read(struct keel_task *t, struct keel_http_exchange *x,
		     struct keel_routine *r, const char **data)
{
	struct keel__http_conn *c = x->c;
	const struct keel_http_opts *o = &x->sh->srv->opts;
	int res;

	KEEL_BEGIN(r);
	if ((x->flags & KEEL__HTTP_X_EXPECT) &&
	    !(x->flags & KEEL__HTTP_X_CONTINUED) &&
	    !(x->flags & KEEL__HTTP_X_STARTED)) {
		/* The client waits for this before sending the body. */
		x->flags |= KEEL__HTTP_X_CONTINUED;
		set_phase(x, KEEL__HTTP_SEND, o->send_timeout_ns);
		KEEL__HTTP_SEND(r, t, x->c, continue_100,
				sizeof(continue_100) - 1);
		set_phase(x, KEEL__HTTP_HANDLER, UINT64_MAX);
		if (keel_res(t) < 0) {
			x->flags |= KEEL__HTTP_X_BROKEN;
			KEEL_ROUTINE_RETURN(r, t, keel_res(t));
		}
	}
	for (;;) {
		c = x->c;
		if (x->flags & KEEL__HTTP_X_COMPLETE)
			KEEL_ROUTINE_RETURN(r, t, 0);
		res = keel__http_conn_body(x);
		if (res < 0) {
			c->flags |= KEEL__HTTP_C_CLOSE;
			KEEL_ROUTINE_RETURN(r, t, res);
		}
		if (res > 0) {
			*data = x->piece;
			KEEL_ROUTINE_RETURN(r, t, (int)x->piece_len);
		}
		if (x->flags & KEEL__HTTP_X_COMPLETE)
			KEEL_ROUTINE_RETURN(r, t, 0);
		/* The chunk is used up: the next one, or wait for it. */
		keel_buf_release(&c->buf);
		c->buf.len = 0;
		c->off = 0;
		if (!(c->flags & KEEL__HTTP_C_TLS)) {
			res = keel_recv_try(&c->rs, &c->buf);
			if (res > 0)
				continue;
			c->buf.len = 0;
		}
		if (x->body_err) {
			c->flags |= KEEL__HTTP_C_CLOSE;
			KEEL_ROUTINE_RETURN(r, t, x->body_err);
		}
		if (c->flags & KEEL__HTTP_C_ENDED) {
			c->flags |= KEEL__HTTP_C_CLOSE;
			KEEL_ROUTINE_RETURN(r, t,
					    c->end < 0 ? c->end : -ECONNRESET);
		}
		set_phase(x, KEEL__HTTP_BODY, o->body_timeout_ns);
		x->flags |= KEEL__HTTP_X_BODY_WAIT;
		keel_event_clear(x->body_ev);
		if (c->flags & KEEL__HTTP_C_TLS) {
			/* Only the connection's task reads its TLS stream:
			 * wake it to receive (conn.c), then body_ev. */
			x->flags |= KEEL__HTTP_X_WANT_BODY;
			keel_event_set(x->done_ev);
		}
		KEEL_AWAIT(r, keel_event_wait(t, x->body_ev));
		x->flags &= ~KEEL__HTTP_X_BODY_WAIT;
		if (x->c->phase == KEEL__HTTP_BODY)
			set_phase(x, KEEL__HTTP_HANDLER, UINT64_MAX);
		if (keel_res(t) < 0)
			KEEL_ROUTINE_RETURN(r, t, keel_res(t));
	}
}

int keel_http_body_read(struct keel_task *t, struct keel_http_exchange *x,
			const char **data)
{
	return body_read(t, x, &x->r, data);
}

int keel_http_body_read_all(struct keel_task *t, struct keel_http_exchange *x,
			    size_t max, const char **data)
{
	struct keel_routine *r = &x->r;
	const char *piece;

	KEEL_BEGIN(r);
	x->body_all_len = 0;
	for (;;) {
		KEEL_AWAIT_CALL(r, body_read(t, x, &x->r_inner, &piece));
		if (keel_res(t) < 0)
			KEEL_ROUTINE_RETURN(r, t, keel_res(t));
		if (keel_res(t) == 0)
			break;
		size_t n = (size_t)keel_res(t);

		if (x->body_all_len + n > max) {
			x->c->flags |= KEEL__HTTP_C_CLOSE;
			KEEL_ROUTINE_RETURN(r, t, -EMSGSIZE);
		}
		if (x->body_all_len + n > x->body_all_cap) {
			size_t cap = x->body_all_cap ? x->body_all_cap : 4096;

			while (cap < x->body_all_len + n)
				cap *= 2;
			char *b = realloc(x->body_all, cap);

			if (!b)
				KEEL_ROUTINE_RETURN(r, t, -ENOMEM);
			x->body_all = b;
			x->body_all_cap = cap;
		}
		memcpy(x->body_all + x->body_all_len, piece, n);
		x->body_all_len += n;
	}
	*data = x->body_all ? x->body_all : "";
	KEEL_ROUTINE_RETURN(r, t, (int)x->body_all_len);
}

/* ---- the response ------------------------------------------------------- */

int keel_http_add_header(struct keel_http_exchange *x, const char *name,
			 const char *value)
{
	static const char *const ours[] = {
	    "content-length", "transfer-encoding", "date", "connection"};

	if (!x || !name || !value || !*name ||
	    (x->flags & KEEL__HTTP_X_STARTED) || strpbrk(name, ":\r\n \t") ||
	    strpbrk(value, "\r\n"))
		return -EINVAL;
	for (size_t i = 0; i < sizeof(ours) / sizeof(ours[0]); i++)
		if (!strcasecmp(name, ours[i]))
			return -EINVAL;
	size_t nl = strlen(name), vl = strlen(value);
	size_t need = x->extra_len + nl + 2 + vl + 2;

	if (need > EXTRA_MAX)
		return -ENOSPC;
	if (!x->extra) {
		x->extra = malloc(EXTRA_MAX);
		if (!x->extra)
			return -ENOMEM;
	}
	char *p = x->extra + x->extra_len;

	memcpy(p, name, nl);
	memcpy(p + nl, ": ", 2);
	memcpy(p + nl + 2, value, vl);
	memcpy(p + nl + 2 + vl, "\r\n", 2);
	x->extra_len = (uint32_t)need;
	return 0;
}

/* Build the head into x->out (grown as needed). */
static int build_head(struct keel_http_exchange *x, int status,
		      const char *content_type, int64_t length)
{
	size_t n = keel__http_head(x, status, content_type, length, x->out,
				   x->out_cap);

	if (n > x->out_cap) {
		if (keel__http_x_out_reserve(x, n))
			return -ENOMEM;
		n = keel__http_head(x, status, content_type, length, x->out,
				    x->out_cap);
	}
	x->out_len = n;
	return 0;
}

/* Set x->msg to send x->iov[0..iovcnt) (then KEEL__HTTP_SENDMSG). */
static void send_msg(struct keel_http_exchange *x, unsigned iovcnt)
{
	memset(&x->msg, 0, sizeof(x->msg));
	x->msg.msg_iov = x->iov;
	x->msg.msg_iovlen = iovcnt;
	set_phase(x, KEEL__HTTP_SEND, x->sh->srv->opts.send_timeout_ns);
}

/* After a send: the phase goes back, a failure breaks the response. */
static int sent(struct keel_http_exchange *x, int res)
{
	set_phase(x, KEEL__HTTP_HANDLER, UINT64_MAX);
	if (res < 0) {
		x->flags |= KEEL__HTTP_X_BROKEN;
		return res;
	}
	return 0;
}

int keel_http_respond(struct keel_task *t, struct keel_http_exchange *x,
		      int status, const char *content_type, const void *body,
		      size_t len)
{
	struct keel_routine *r = &x->r;
	unsigned n;

	KEEL_BEGIN(r);
	if (x->flags & KEEL__HTTP_X_STARTED)
		KEEL_ROUTINE_RETURN(r, t, -EALREADY);
	if (x->flags & KEEL__HTTP_X_BROKEN)
		KEEL_ROUTINE_RETURN(r, t, -EPIPE);
	if (status < 100 || status > 999 ||
	    (content_type && strpbrk(content_type, "\r\n")))
		KEEL_ROUTINE_RETURN(r, t, -EINVAL);
	if (build_head(x, status, content_type, (int64_t)len))
		KEEL_ROUTINE_RETURN(r, t, -ENOMEM);
	x->iov[0].iov_base = x->out;
	x->iov[0].iov_len = x->out_len;
	n = 1;
	if (len && !(x->flags & KEEL__HTTP_X_HEAD)) {
		x->iov[1].iov_base = (void *)body;
		x->iov[1].iov_len = len;
		n = 2;
		x->body_sent = len;
	}
	send_msg(x, n);
	KEEL__HTTP_SENDMSG(r, t, x->c, &x->msg);
	if (sent(x, keel_res(t)) < 0)
		KEEL_ROUTINE_RETURN(r, t, keel_res(t));
	x->flags |= KEEL__HTTP_X_FINISHED;
	KEEL_ROUTINE_RETURN(r, t, 0);
}

int keel_http_stream_begin(struct keel_task *t, struct keel_http_exchange *x,
			   int status, const char *content_type)
{
	struct keel_routine *r = &x->r;

	KEEL_BEGIN(r);
	if (x->flags & KEEL__HTTP_X_STARTED)
		KEEL_ROUTINE_RETURN(r, t, -EALREADY);
	if (status < 100 || status > 999 ||
	    (content_type && strpbrk(content_type, "\r\n")))
		KEEL_ROUTINE_RETURN(r, t, -EINVAL);
	if (build_head(x, status, content_type, -1))
		KEEL_ROUTINE_RETURN(r, t, -ENOMEM);
	x->flags |= KEEL__HTTP_X_STREAMING;
	x->iov[0].iov_base = x->out;
	x->iov[0].iov_len = x->out_len;
	send_msg(x, 1);
	KEEL__HTTP_SENDMSG(r, t, x->c, &x->msg);
	KEEL_ROUTINE_RETURN(r, t, sent(x, keel_res(t)));
}

int keel_http_stream_write(struct keel_task *t, struct keel_http_exchange *x,
			   const void *data, size_t len)
{
	struct keel_routine *r = &x->r;
	int n;

	KEEL_BEGIN(r);
	if (!(x->flags & KEEL__HTTP_X_STREAMING))
		KEEL_ROUTINE_RETURN(r, t, -EINVAL);
	if (x->flags & KEEL__HTTP_X_BROKEN)
		KEEL_ROUTINE_RETURN(r, t, -EPIPE);
	if (!len || (x->flags & KEEL__HTTP_X_HEAD))
		KEEL_ROUTINE_RETURN(r, t, 0);
	x->body_sent += len;
	if (x->parser.http_minor == 0) {
		/* HTTP/1.0: the body unframed; the close ends it. */
		x->iov[0].iov_base = (void *)data;
		x->iov[0].iov_len = len;
		send_msg(x, 1);
		KEEL__HTTP_SENDMSG(r, t, x->c, &x->msg);
	} else {
		n = snprintf(x->chunk_head, sizeof(x->chunk_head), "%zx\r\n",
			     len);
		x->iov[0].iov_base = x->chunk_head;
		x->iov[0].iov_len = (size_t)n;
		x->iov[1].iov_base = (void *)data;
		x->iov[1].iov_len = len;
		x->iov[2].iov_base = (void *)"\r\n";
		x->iov[2].iov_len = 2;
		send_msg(x, 3);
		KEEL__HTTP_SENDMSG(r, t, x->c, &x->msg);
	}
	KEEL_ROUTINE_RETURN(r, t, sent(x, keel_res(t)));
}

int keel_http_stream_end(struct keel_task *t, struct keel_http_exchange *x)
{
	struct keel_routine *r = &x->r;

	KEEL_BEGIN(r);
	if (!(x->flags & KEEL__HTTP_X_STREAMING))
		KEEL_ROUTINE_RETURN(r, t, -EINVAL);
	if (x->flags & KEEL__HTTP_X_BROKEN)
		KEEL_ROUTINE_RETURN(r, t, -EPIPE);
	x->flags &= ~KEEL__HTTP_X_STREAMING;
	if (x->parser.http_minor > 0 && !(x->flags & KEEL__HTTP_X_HEAD)) {
		x->iov[0].iov_base = (void *)"0\r\n\r\n";
		x->iov[0].iov_len = 5;
		send_msg(x, 1);
		KEEL__HTTP_SENDMSG(r, t, x->c, &x->msg);
		if (sent(x, keel_res(t)) < 0)
			KEEL_ROUTINE_RETURN(r, t, keel_res(t));
	}
	x->flags |= KEEL__HTTP_X_FINISHED;
	KEEL_ROUTINE_RETURN(r, t, 0);
}

/* ---- the handler task --------------------------------------------------- */

/* The handler's last defer (pushed first): it has exited, aborted or
 * been killed; keel_res() is its exit status. */
static void handler_exited(void *arg)
{
	struct keel_http_exchange *x = arg;

	x->handler_status = keel_res(x->handler);
	x->handler = NULL;
	x->flags |= KEEL__HTTP_X_HANDLER_DONE;
	keel_event_set(x->done_ev);
}

/* Shedding's clock: a fresh reading, not the loop's (keel_loop_now()
 * is the turn's, and a handler often starts in the turn of its spawn). */
static uint64_t mono_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

int keel__http_handler_spawn(struct keel_http_exchange *x)
{
	struct keel__http_conn *c = x->c;
	struct keel_loop *loop = c->sh->loop;
	const struct keel__http_route *route = x->route;
	struct keel_token *tok = NULL;

	if (!x->body_ev && keel_event_new(loop, &x->body_ev))
		return -ENOMEM;
	if (!x->done_ev && keel_event_new(loop, &x->done_ev))
		return -ENOMEM;
	keel_event_clear(x->done_ev);
	/* Its own token, a child of the connection's: cancelled alone when
	 * the client goes, with the connection by the drain's deadline. */
	if (keel_token_new(loop, keel_task_token(&c->task), &tok))
		return -ENOMEM;
	/* Detached: the loop frees its frame; the connection learns of its
	 * end from handler_exited(), whatever the exit status says. */
	const struct keel_task_type *type =
	    c->sh->srv->opts.shed_target_ns ? &route->shed_type : route->type;
	void *frame = keel_spawn(loop, type, KEEL_PRIO_NORMAL);

	if (!frame) {
		keel_token_release(tok);
		return -ENOMEM;
	}
	struct keel_task *ht = keel_task_of(type, frame);
	struct keel_http_handler *h =
	    keel_container_of(ht, struct keel_http_handler, task);

	h->x = x;
	h->arg = route->arg;
	if (keel_defer(ht, handler_exited, x)) {
		/* Without it nobody would know when it is done: it must
		 * not run (it has not yet: killing it runs no code). */
		keel_task_kill(ht);
		keel_token_release(tok);
		return -ENOMEM;
	}
	if (keel_task_set_token(ht, tok)) {
		/* It observes the connection's token: still cancelled by
		 * the drain, not when the client goes. */
		keel_token_release(tok);
		tok = NULL;
	}
	x->tok = tok;
	x->handler = ht;
	if (type != route->type)
		x->spawn_ns = mono_now();
	if ((c->flags & KEEL__HTTP_C_ENDED) && tok) {
		/* The client went away before its handler began (the end
		 * came while the request was being parsed). */
		KEEL__HTTP_COUNT(c->sh, client_gone, 1);
		keel_token_cancel(tok);
	}
	return 0;
}

/*
 * Load shedding's measure: the time from a handler's spawn to its first
 * step is how long it queued behind the loop's other work (CoDel's
 * sojourn time). A shed handler exits before its own step runs; the
 * connection answers 503 for it.
 */
int keel__http_shed_step(struct keel_task *t)
{
	struct keel_http_handler *h =
	    keel_container_of(t, struct keel_http_handler, task);
	struct keel_http_exchange *x = h->x;

	if (!(x->flags & KEEL__HTTP_X_BEGAN)) {
		struct keel__http_shard *sh = x->sh;

		x->flags |= KEEL__HTTP_X_BEGAN;
		keel_shed_record(&sh->shed, mono_now() - x->spawn_ns);
		if (keel_shed_admit(&sh->shed)) {
			x->flags |= KEEL__HTTP_X_SHED;
			return keel_task_exit(t, 0);
		}
	}
	return x->route->type->step(t);
}

/* ---- reason phrases ----------------------------------------------------- */

const char *keel_http_reason(int status)
{
	switch (status) {
	case 100:
		return "Continue";
	case 101:
		return "Switching Protocols";
	case 200:
		return "OK";
	case 201:
		return "Created";
	case 202:
		return "Accepted";
	case 204:
		return "No Content";
	case 206:
		return "Partial Content";
	case 301:
		return "Moved Permanently";
	case 302:
		return "Found";
	case 303:
		return "See Other";
	case 304:
		return "Not Modified";
	case 307:
		return "Temporary Redirect";
	case 308:
		return "Permanent Redirect";
	case 400:
		return "Bad Request";
	case 401:
		return "Unauthorized";
	case 403:
		return "Forbidden";
	case 404:
		return "Not Found";
	case 405:
		return "Method Not Allowed";
	case 408:
		return "Request Timeout";
	case 409:
		return "Conflict";
	case 410:
		return "Gone";
	case 411:
		return "Length Required";
	case 412:
		return "Precondition Failed";
	case 413:
		return "Content Too Large";
	case 414:
		return "URI Too Long";
	case 415:
		return "Unsupported Media Type";
	case 416:
		return "Range Not Satisfiable";
	case 417:
		return "Expectation Failed";
	case 429:
		return "Too Many Requests";
	case 431:
		return "Request Header Fields Too Large";
	case 500:
		return "Internal Server Error";
	case 501:
		return "Not Implemented";
	case 502:
		return "Bad Gateway";
	case 503:
		return "Service Unavailable";
	case 504:
		return "Gateway Timeout";
	case 505:
		return "HTTP Version Not Supported";
	default:
		return "";
	}
}
