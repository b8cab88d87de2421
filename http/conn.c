/* SPDX-License-Identifier: MIT */
/*
 * http/conn.c: the connection task. It owns the socket, the multishot
 * recv stream into the loop's buffer ring and the chunk being parsed; it
 * parses each request with http_parser straight out of the ring buffer,
 * enforces the limits and the smuggling rules, answers the built-in
 * routes inline (no task per request: the fast path), runs a handler task
 * for the others, and takes the next request (keep-alive, pipelining:
 * one request at a time, so responses go out in order).
 *
 * Invariants:
 * - the parser is paused at every message boundary (on_headers_complete,
 *   on_message_complete), so bytes of the next pipelined request stay in
 *   the chunk (c->buf from c->off) until this one is answered;
 * - a chunk is released as soon as it is parsed to its end, before the
 *   response is sent, so an idle connection holds no ring buffer;
 * - the exchange (c->x) exists from a request's first byte to its end;
 *   the connection is idle (IDLE phase, no exchange, no chunk) between
 *   requests;
 * - while a handler runs, it (not this task) reads the body from the
 *   chunk and the stream (keel_recv_try): this task waits for its exit
 *   (x->done_ev, set by a defer on the handler, which is detached);
 *   the stream's notify hook tells the handler about new data and this
 *   connection about the client going away.
 *
 * What http_parser 2.9.4 lets through and this file refuses (each with
 * 400 and close): a bare LF ending a line of the head, obs-fold (a header
 * line starting with SP or HT), whitespace between a header name and its
 * colon, Transfer-Encoding other than exactly "chunked" (or twice), a
 * missing or repeated Host in HTTP/1.1, and targets not in origin form.
 * It already refuses Content-Length with Transfer-Encoding (either
 * order), a repeated Content-Length (same value or not) and a list.
 */
#include <errno.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "conn.h"

_Static_assert(sizeof(struct keel__http_conn) <= 256,
	       "an idle connection holds at most 256 bytes");

/* What conn_feed() found. */
enum feed {
	FEED_MORE,  /* the head is not complete: receive more */
	FEED_HEAD,  /* the head is complete: route and answer */
	FEED_ERROR, /* x->err holds the status to answer, then close */
	FEED_NOMEM, /* no exchange: close */
};

/* ---- http_parser callbacks ----------------------------------------- */

static struct keel_http_exchange *x_of(http_parser *p)
{
	return p->data;
}

static size_t head_limit(const struct keel_http_exchange *x)
{
	const struct keel_http_opts *o = &x->sh->srv->opts;

	return (size_t)o->max_request_line + o->max_header_bytes;
}

static int on_url(http_parser *p, const char *at, size_t len)
{
	struct keel_http_exchange *x = x_of(p);

	if (x->url_len + len > x->sh->srv->opts.max_request_line ||
	    keel__http_x_append(x, at, len, head_limit(x))) {
		x->err = 414;
		return -1;
	}
	x->url_len += (uint32_t)len;
	return 0;
}

static int on_header_field(http_parser *p, const char *at, size_t len)
{
	struct keel_http_exchange *x = x_of(p);

	if (x->flags & KEEL__HTTP_X_HEADERS_DONE)
		return 0; /* a trailer of a chunked body: not kept */
	if (!(x->flags & KEEL__HTTP_X_IN_FIELD)) {
		if (x->nhdrs == x->sh->srv->opts.max_headers) {
			x->err = 431;
			return -1;
		}
		if (x->nhdrs == x->hdrs_cap) {
			uint32_t cap = x->hdrs_cap * 2;
			struct keel__http_hdr *h =
			    realloc(x->hdrs, cap * sizeof(*h));

			if (!h) {
				x->err = 503;
				return -1;
			}
			x->hdrs = h;
			x->hdrs_cap = cap;
		}
		x->hdrs[x->nhdrs++] = (struct keel__http_hdr){
		    .name = x->data_len,
		    .value = x->data_len,
		};
		x->flags =
		    (x->flags & ~KEEL__HTTP_X_IN_VALUE) | KEEL__HTTP_X_IN_FIELD;
	}
	/* http_parser takes "Name :" (whitespace before the colon), which
	 * RFC 9112 says to refuse: a proxy may read the name otherwise. */
	if (len && (at[len - 1] == ' ' || at[len - 1] == '\t')) {
		x->err = 400;
		return -1;
	}
	if (keel__http_x_append(x, at, len, head_limit(x))) {
		x->err = 431;
		return -1;
	}
	x->hdrs[x->nhdrs - 1].name_len += (uint32_t)len;
	return 0;
}

static int on_header_value(http_parser *p, const char *at, size_t len)
{
	struct keel_http_exchange *x = x_of(p);
	struct keel__http_hdr *h;

	if (x->flags & KEEL__HTTP_X_HEADERS_DONE)
		return 0;
	h = &x->hdrs[x->nhdrs - 1];
	if (!(x->flags & KEEL__HTTP_X_IN_VALUE)) {
		h->value = x->data_len;
		x->flags =
		    (x->flags & ~KEEL__HTTP_X_IN_FIELD) | KEEL__HTTP_X_IN_VALUE;
	}
	if (keel__http_x_append(x, at, len, head_limit(x))) {
		x->err = 431;
		return -1;
	}
	h->value_len += (uint32_t)len;
	return 0;
}

static int on_headers_complete(http_parser *p)
{
	struct keel_http_exchange *x = x_of(p);

	x->flags |= KEEL__HTTP_X_HEADERS_DONE;
	/* A body follows: stop here, the request is routed before its body
	 * is parsed. Without one the message ends with the next byte: go
	 * on to on_message_complete (one parser call for a plain GET). */
	if ((p->flags & F_CHUNKED) ||
	    (p->content_length != ULLONG_MAX && p->content_length > 0))
		http_parser_pause(p, 1);
	return 0;
}

static int on_body(http_parser *p, const char *at, size_t len)
{
	struct keel_http_exchange *x = x_of(p);

	x->body_seen += len;
	if (x->body_seen > x->sh->srv->opts.max_body) {
		x->err = 413;
		return -1;
	}
	if (x->flags & KEEL__HTTP_X_SINK) {
		/* A handler reads the body: hand it this piece (it stays in
		 * the chunk, which is not released before the next read). */
		x->piece = at;
		x->piece_len = (uint32_t)len;
		http_parser_pause(p, 1);
	}
	return 0;
}

static int on_message_complete(http_parser *p)
{
	struct keel_http_exchange *x = x_of(p);

	x->flags |= KEEL__HTTP_X_COMPLETE;
	/* What follows is the next pipelined request: leave it. */
	http_parser_pause(p, 1);
	return 0;
}

static const http_parser_settings settings = {
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* ---- the head: limits and what http_parser lets through ------------ */

static bool is_ws(char ch)
{
	return ch == ' ' || ch == '\t';
}

/*
 * Check the `n` head bytes at `p` http_parser just took: every LF ends a
 * CRLF (no bare LF) and no line starts with SP or HT (obs-fold); the
 * request line and the header section within their limits. Returns 0 or
 * the status to answer.
 */
static int scan_head(struct keel_http_exchange *x, const char *p, size_t n)
{
	const struct keel_http_opts *o = &x->sh->srv->opts;
	const char *end = p + n, *lf = p;

	if (n && (x->flags & KEEL__HTTP_X_AFTER_LF) && is_ws(p[0]))
		return 400; /* obs-fold across two chunks */
	x->flags &= ~KEEL__HTTP_X_AFTER_LF;
	while ((lf = memchr(lf, '\n', (size_t)(end - lf)))) {
		char prev = lf > p ? lf[-1] : x->last;

		if (prev != '\r')
			return 400;
		if (!x->line_len)
			x->line_len = x->head_bytes + (uint32_t)(lf - p) + 1;
		if (lf + 1 == end)
			x->flags |= KEEL__HTTP_X_AFTER_LF;
		else if (is_ws(lf[1]))
			return 400;
		lf++;
	}
	x->head_bytes += (uint32_t)n;
	if (n)
		x->last = end[-1];
	/* The request line's CRLF is not part of its limit. */
	if (!x->line_len ? x->head_bytes > o->max_request_line + 1u
			 : x->line_len > o->max_request_line + 2u)
		return 414;
	if (x->line_len && x->head_bytes - x->line_len > o->max_header_bytes)
		return 431;
	return 0;
}

/* The status for a parser error. */
static int parse_error_status(struct keel_http_exchange *x, enum http_errno e,
			      const char *p, size_t len)
{
	if (x->err)
		return x->err;
	if (e == HPE_INVALID_METHOD && x->head_bytes == 0) {
		/* A well-formed token the parser does not know is a method
		 * we do not implement; anything else is garbage. */
		size_t i = 0;

		while (i < len && i < 32 &&
		       ((p[i] >= 'A' && p[i] <= 'Z') || p[i] == '-' ||
			p[i] == '_'))
			i++;
		if (i > 0 && i < len && p[i] == ' ')
			return 501;
	}
	if (e == HPE_HEADER_OVERFLOW)
		return 431;
	return 400;
}

/*
 * Parse the head from the chunk. A request without a body is parsed to
 * its end (on_message_complete pauses after the blank line's LF); one with
 * a body pauses at the end of the head with that LF not taken.
 */
static enum feed conn_feed(struct keel__http_conn *c)
{
	struct keel_http_exchange *x = c->x;
	const char *p = c->buf.data + c->off;
	size_t len = c->buf.len - c->off;
	size_t n = http_parser_execute(&x->parser, &settings, p, len);
	enum http_errno e = HTTP_PARSER_ERRNO(&x->parser);
	bool ended = (x->flags & KEEL__HTTP_X_COMPLETE) && n;
	int st = scan_head(x, p, ended ? n - 1 : n);

	c->off += (uint32_t)n;
	if (e == HPE_PAUSED)
		http_parser_pause(&x->parser, 0);
	else if (e != HPE_OK)
		st = st ? st : parse_error_status(x, e, p, len);
	if (!st && (x->flags & KEEL__HTTP_X_HEADERS_DONE)) {
		/* The blank line's LF, after a CR (scanned last). */
		char lf = ended ? p[n - 1] : n < len ? p[n] : 0;

		if (lf != '\n' || x->last != '\r')
			st = 400;
	}
	if (st) {
		x->err = st;
		return FEED_ERROR;
	}
	return (x->flags & KEEL__HTTP_X_HEADERS_DONE) ? FEED_HEAD : FEED_MORE;
}

/* The headers that frame the request, found in one pass over the head
 * (by length first: a request's other headers cost one compare each). */
struct framing {
	const struct keel__http_hdr *te, *expect;
	unsigned host, te_count, cl_count;
};

static void find_framing(const struct keel_http_exchange *x, struct framing *f)
{
	memset(f, 0, sizeof(*f));
	for (uint32_t i = 0; i < x->nhdrs; i++) {
		const struct keel__http_hdr *h = &x->hdrs[i];
		const char *name = x->data + h->name;

		switch (h->name_len) {
		case 4:
			f->host += !strncasecmp(name, "host", 4);
			break;
		case 6:
			if (!f->expect && !strncasecmp(name, "expect", 6))
				f->expect = h;
			break;
		case 14:
			f->cl_count += !strncasecmp(name, "content-length", 14);
			break;
		case 17:
			if (!strncasecmp(name, "transfer-encoding", 17)) {
				f->te = h;
				f->te_count++;
			}
			break;
		}
	}
}

/* Trim OWS and compare case-insensitively. */
static bool value_is(const struct keel_http_exchange *x,
		     const struct keel__http_hdr *h, const char *want)
{
	const char *v = x->data + h->value;
	size_t len = h->value_len, wlen = strlen(want);

	while (len && is_ws(v[len - 1]))
		len--;
	while (len && is_ws(*v)) {
		v++;
		len--;
	}
	return len == wlen && !strncasecmp(v, want, len);
}

/*
 * The head is complete: check what the parser leaves to us, set the
 * exchange's view of the request and find its route. Returns 0 (x->route
 * set) or the status to answer (404 and 405 keep the connection).
 */
static int conn_request(struct keel__http_conn *c, struct keel_http_exchange *x)
{
	struct keel_http_server *srv = c->sh->srv;
	http_parser *p = &x->parser;
	struct framing f;
	int status;

	if (p->http_major != 1 || p->http_minor > 1)
		return p->http_major == 0 ? 400 : 505;
	if (p->method == HTTP_CONNECT)
		return 501;
	/* Origin form only ("*" for OPTIONS): an absolute-form target is
	 * refused rather than trusted to name this server. */
	if (!x->url_len ||
	    (x->data[0] != '/' && !(x->url_len == 1 && x->data[0] == '*' &&
				    p->method == HTTP_OPTIONS)))
		return 400;
	find_framing(x, &f);
	if (f.host > 1 || (f.host == 0 && p->http_minor == 1))
		return 400;
	if (f.te_count > 1 || (f.te && !value_is(x, f.te, "chunked")))
		return 400;
	if (f.cl_count > 1 || (f.cl_count && (p->flags & F_CHUNKED)))
		return 400; /* the parser says so too; never trust one check */
	if (p->flags & F_CHUNKED)
		x->content_length = -1;
	else if (p->content_length != ULLONG_MAX)
		x->content_length = (int64_t)p->content_length;
	if (x->content_length > 0 &&
	    (uint64_t)x->content_length > srv->opts.max_body)
		return 413;
	if (f.expect && value_is(x, f.expect, "100-continue") &&
	    x->content_length)
		x->flags |= KEEL__HTTP_X_EXPECT;
	if (http_should_keep_alive(p))
		x->flags |= KEEL__HTTP_X_KEEP_ALIVE;
	if (p->method == HTTP_HEAD)
		x->flags |= KEEL__HTTP_X_HEAD;
	const char *q = memchr(x->data, '?', x->url_len);

	x->path_len = q ? (uint32_t)(q - x->data) : x->url_len;
	const char *m = http_method_str(p->method);

	x->route = keel__http_route_find(srv, m, strlen(m), x->data,
					 x->path_len, &status);
	return x->route ? 0 : status;
}

/* ---- responses built here ------------------------------------------ */

static size_t put(char *dst, const char *src, size_t len)
{
	memcpy(dst, src, len);
	return len;
}

bool keel__http_conn_last(struct keel__http_conn *c,
			  struct keel_http_exchange *x)
{
	if (!(x->flags & KEEL__HTTP_X_KEEP_ALIVE) || c->sh->srv->draining ||
	    keel__http_core(c->sh)->draining)
		c->flags |= KEEL__HTTP_C_CLOSE;
	return c->flags & KEEL__HTTP_C_CLOSE;
}

/*
 * The fast path: a TEXT route's prebuilt head, the cached Date line, the
 * Connection line and (small bodies) the body, in x->out. One copy of a
 * hundred-odd bytes; then one send.
 */
static int build_text(struct keel__http_conn *c, struct keel_http_exchange *x)
{
	const struct keel__http_route *r = x->route;
	size_t dlen;
	const char *date = keel__http_date(c->sh, &dlen);
	bool body = !(x->flags & KEEL__HTTP_X_HEAD) && r->body_len;
	static const char keep[] = "Connection: keep-alive\r\n\r\n";
	static const char close_[] = "Connection: close\r\n\r\n";
	bool last = keel__http_conn_last(c, x);
	/* A large body is sent from the route itself (a second iovec of
	 * the same sendmsg), never copied. */
	bool gather = body && r->body_len > KEEL__HTTP_COPY_MAX;
	size_t need = r->head_len + dlen + sizeof(keep) +
		      (body && !gather ? r->body_len : 0);

	if (keel__http_x_out_reserve(x, need))
		return -ENOMEM;
	char *o = x->out;

	o += put(o, r->head, r->head_len);
	o += put(o, date, dlen);
	o += last ? put(o, close_, sizeof(close_) - 1)
		  : put(o, keep, sizeof(keep) - 1);
	if (body && !gather)
		o += put(o, r->body, r->body_len);
	x->out_len = (size_t)(o - x->out);
	if (gather) {
		x->iov[0].iov_base = x->out;
		x->iov[0].iov_len = x->out_len;
		x->iov[1].iov_base = r->body;
		x->iov[1].iov_len = r->body_len;
		memset(&x->msg, 0, sizeof(x->msg));
		x->msg.msg_iov = x->iov;
		x->msg.msg_iovlen = 2;
		x->flags |= KEEL__HTTP_X_GATHER;
	}
	x->status = r->status;
	x->body_sent = body ? r->body_len : 0;
	x->flags |= KEEL__HTTP_X_STARTED | KEEL__HTTP_X_FINISHED;
	return 0;
}

/* A response of the library's own (errors, 404, /health...). */
static int build_simple(struct keel__http_conn *c, struct keel_http_exchange *x,
			int status, const char *content_type, const char *body,
			size_t len)
{
	keel__http_conn_last(c, x);
	size_t need = keel__http_head(x, status, content_type, (int64_t)len,
				      x->out, x->out_cap);

	if (need > x->out_cap) {
		if (keel__http_x_out_reserve(x, need + len))
			return -ENOMEM;
		keel__http_head(x, status, content_type, (int64_t)len, x->out,
				x->out_cap);
	}
	if (keel__http_x_out_reserve(x, need + len))
		return -ENOMEM;
	x->out_len = need;
	if (!(x->flags & KEEL__HTTP_X_HEAD) && len) {
		memcpy(x->out + need, body, len);
		x->out_len += len;
		x->body_sent = len;
	}
	x->status = status;
	x->flags |= KEEL__HTTP_X_FINISHED;
	return 0;
}

/* A health registry's JSON: 503 when it is unhealthy (a load balancer
 * takes the instance out), 200 when healthy or degraded (still serving). */
static int build_health(struct keel__http_conn *c, struct keel_http_exchange *x,
			struct keel_health *reg)
{
	char small[1024], *body = small;
	size_t len = keel_health_render_json(reg, small, sizeof(small));

	if (len >= sizeof(small)) {
		body = malloc(len + 1);
		if (!body)
			return -ENOMEM;
		/* Components may have changed meanwhile: cut, never overrun. */
		size_t again = keel_health_render_json(reg, body, len + 1);

		len = again < len ? again : len;
	}
	/* The status as rendered, so that the body and the code agree. */
	static const char unhealthy[] = "{\"status\":\"unhealthy\"";
	int status =
	    strncmp(body, unhealthy, sizeof(unhealthy) - 1) ? 200 : 503;
	int err = build_simple(c, x, status, "application/json", body, len);

	if (body != small)
		free(body);
	return err;
}

static int build_error(struct keel__http_conn *c, struct keel_http_exchange *x,
		       int status)
{
	char body[64];
	int n = snprintf(body, sizeof(body), "%d %s\n", status,
			 keel_http_reason(status));

	/* An error found before conn_request() looked at the method (a bad
	 * version, a missing Host...) still answers HEAD without a body:
	 * the method is known once the request line's target began. */
	if (x->url_len && x->parser.method == HTTP_HEAD)
		x->flags |= KEEL__HTTP_X_HEAD;
	if (status == 405) {
		char allow[128];

		if (keel__http_route_allow(c->sh->srv, x->data, x->path_len,
					   allow, sizeof(allow)))
			keel_http_add_header(x, "Allow", allow);
	}
	return build_simple(c, x, status, "text/plain", body, (size_t)n);
}

/* An inline answer for the route (TEXT, METRICS, HEALTH). */
static int build_inline(struct keel__http_conn *c, struct keel_http_exchange *x)
{
	struct keel_http_server *srv = c->sh->srv;

	switch (x->route->kind) {
	case KEEL__HTTP_R_TEXT:
		return build_text(c, x);
	case KEEL__HTTP_R_HEALTH:
		if (srv->draining)
			return build_simple(c, x, 503, "text/plain",
					    "draining\n", 9);
		if (x->route->arg)
			return build_health(c, x, x->route->arg);
		return build_simple(c, x, 200, "text/plain", "ok\n", 3);
	case KEEL__HTTP_R_METRICS: {
		char *body = NULL;
		size_t cap = 16384, len;

		for (;;) {
			char *b = realloc(body, cap);

			if (!b) {
				free(body);
				return build_error(c, x, 503);
			}
			body = b;
			len = keel__http_metrics_render(srv, body, cap);
			if (len < cap)
				break;
			cap = len + 1;
		}
		int err = build_simple(c, x, 200,
				       "text/plain; version=0.0.4; "
				       "charset=utf-8",
				       body, len);

		free(body);
		return err;
	}
	default:
		return build_error(c, x, 500);
	}
}

/* ---- the connection's life ------------------------------------------ */

static void conn_phase(struct keel__http_conn *c, enum keel__http_phase phase,
		       uint64_t timeout)
{
	uint64_t now = keel_loop_now(c->sh->loop);

	c->phase = (uint8_t)phase;
	c->deadline = timeout == UINT64_MAX || now + timeout < now
			  ? UINT64_MAX
			  : now + timeout;
}

/* The chunk is parsed to its end: give it back to the ring now. */
static void conn_release_if_done(struct keel__http_conn *c)
{
	if (c->buf.len && c->off == c->buf.len) {
		keel_buf_release(&c->buf);
		c->buf.len = 0;
		c->off = 0;
	}
}

/*
 * Parse (and drop) the rest of the body of a request nobody reads. Returns
 * FEED_HEAD when the message is complete, FEED_MORE to receive more,
 * FEED_ERROR (x->err) when it cannot be.
 */
static enum feed conn_discard(struct keel__http_conn *c)
{
	struct keel_http_exchange *x = c->x;
	const char *p = c->buf.data + c->off;
	size_t len = c->buf.len - c->off;

	x->flags &= ~KEEL__HTTP_X_SINK;
	if (x->flags & KEEL__HTTP_X_COMPLETE)
		return FEED_HEAD; /* what is left is the next request */
	if (len) {
		size_t n = http_parser_execute(&x->parser, &settings, p, len);
		enum http_errno e = HTTP_PARSER_ERRNO(&x->parser);

		c->off += (uint32_t)n;
		if (e == HPE_PAUSED) {
			http_parser_pause(&x->parser, 0);
		} else if (e != HPE_OK) {
			x->err = x->err ? x->err : 400;
			return FEED_ERROR;
		}
	}
	return (x->flags & KEEL__HTTP_X_COMPLETE) ? FEED_HEAD : FEED_MORE;
}

int keel__http_conn_body(struct keel_http_exchange *x)
{
	struct keel__http_conn *c = x->c;

	if (c->off == c->buf.len)
		return 0;
	const char *p = c->buf.data + c->off;
	size_t len = c->buf.len - c->off;

	x->flags |= KEEL__HTTP_X_SINK;
	x->piece_len = 0;
	size_t n = http_parser_execute(&x->parser, &settings, p, len);
	enum http_errno e = HTTP_PARSER_ERRNO(&x->parser);

	x->flags &= ~KEEL__HTTP_X_SINK;
	c->off += (uint32_t)n;
	if (e == HPE_PAUSED) {
		http_parser_pause(&x->parser, 0);
	} else if (e != HPE_OK) {
		if (!x->err)
			x->err = 400;
		return x->err == 413 ? -EMSGSIZE : -EPROTO;
	}
	return x->piece_len ? 1 : 0;
}

/* The stream's end reached the connection while it did not wait for it
 * (a handler runs): the client went away. */
static void conn_notify(struct keel_recv_stream *s, int res)
{
	struct keel__http_conn *c =
	    keel_container_of(s, struct keel__http_conn, rs);
	struct keel_http_exchange *x = c->x;

	if (res <= 0) {
		c->flags |= KEEL__HTTP_C_ENDED;
		c->end = res;
	}
	if (!x || !x->handler)
		return;
	if (x->flags & KEEL__HTTP_X_BODY_WAIT) {
		keel_event_set(x->body_ev);
		return;
	}
	if (res <= 0 && x->tok && !keel_token_cancelled(x->tok)) {
		KEEL__HTTP_COUNT(c->sh, client_gone, 1);
		keel_token_cancel(x->tok);
	}
}

static int conn_open(struct keel__http_conn *c)
{
	int err;

	c->slot = UINT32_MAX;
	/* It observes the loop's root token (no token of its own, so an
	 * idle connection has no task extension): a runtime shutdown holds
	 * off cancelling it while the server holds the loop (see server.c),
	 * and the drain's deadline cuts each one left (conn_kill). */
	err = keel__http_conn_track(c);
	if (!err && !(c->flags & KEEL__HTTP_C_TLS))
		err = keel_recv_stream_open(&c->task, &c->rs, c->fd,
					    c->sh->ring, 0);
	if (!err && !(c->flags & KEEL__HTTP_C_TLS))
		keel_recv_stream_notify(&c->rs, conn_notify);
	return err;
}

int keel__http_conn_step(struct keel_task *t)
{
	struct keel__http_conn *c =
	    keel_container_of(t, struct keel__http_conn, task);
	struct keel__http_shard *sh = c->sh;
	const struct keel_http_opts *o = &sh->srv->opts;
	struct keel_http_exchange *x = c->x;
	enum feed f;

	KEEL_BEGIN(t);
	if (conn_open(c))
		goto close;
	conn_phase(c, KEEL__HTTP_IDLE, o->idle_timeout_ns);
	if (c->flags & KEEL__HTTP_C_TLS) {
		/* The handshake first, bounded by the TLS context's own
		 * timeout; a drain cuts it like an idle connection. */
		KEEL_AWAIT_CALL(t, keel__http_tls_open(t, c));
		if (keel_res(t) < 0)
			goto close;
		conn_phase(c, KEEL__HTTP_IDLE, o->idle_timeout_ns);
	}
	for (;;) {
		/* ---- the head ---- */
		if (c->off == c->buf.len) {
			conn_release_if_done(c);
			if (!c->x && keel__http_core(sh)->draining)
				goto close;
			KEEL__HTTP_RECV(t, t, c);
			if (keel_res(t) <= 0)
				goto close;
			c->off = 0;
		}
		if (!c->x) {
			c->x = x = keel__http_x_get(c);
			if (!x)
				goto close;
			conn_phase(c, KEEL__HTTP_HEAD, o->header_timeout_ns);
		}
		f = conn_feed(c);
		if (f == FEED_MORE)
			continue;
		if (f == FEED_ERROR)
			goto error;
		x->err = conn_request(c, x);
		if (x->err && x->err != 404 && x->err != 405)
			goto error;

		if (!x->err && x->route->kind == KEEL__HTTP_R_TASK)
			goto handler;
		if (!x->err && x->route->kind == KEEL__HTTP_R_FILES)
			goto files;

		/* ---- inline: drop the body, then answer ---- */
		if (x->flags & KEEL__HTTP_X_EXPECT) {
			/* The client waits for "100 Continue" before sending
			 * the body: answer now and close instead. */
			c->flags |= KEEL__HTTP_C_CLOSE;
		} else {
			while ((f = conn_discard(c)) == FEED_MORE) {
				conn_release_if_done(c);
				conn_phase(c, KEEL__HTTP_BODY,
					   o->body_timeout_ns);
				KEEL__HTTP_RECV(t, t, c);
				if (keel_res(t) <= 0)
					goto close;
				c->off = 0;
			}
			if (f == FEED_ERROR)
				goto error;
		}
		if (x->err ? build_error(c, x, x->err) : build_inline(c, x))
			goto close;
		conn_release_if_done(c);
		conn_phase(c, KEEL__HTTP_SEND, o->send_timeout_ns);
		if (x->flags & KEEL__HTTP_X_GATHER)
			KEEL__HTTP_SENDMSG(t, t, c, &c->x->msg);
		else
			KEEL__HTTP_SEND(t, t, c, c->x->out, c->x->out_len);
		if (keel_res(t) < 0) {
			c->x->flags |= KEEL__HTTP_X_BROKEN;
			goto close;
		}
		goto done;

	files:
		/* Static files: files.c's routine, on this task. */
		conn_phase(c, KEEL__HTTP_SEND, o->send_timeout_ns);
		KEEL_AWAIT_CALL(t, keel__http_files_serve(
				       t, c->x, c->x->route->root_fd,
				       c->x->data + c->x->route->path_len,
				       c->x->path_len - c->x->route->path_len));
		x = c->x;
		if (keel_res(t) < 0) {
			x->flags |= KEEL__HTTP_X_BROKEN;
			goto close;
		}
		goto after_handler;

	handler:
		if (keel__http_handler_spawn(x)) {
			x->err = 503;
			goto error;
		}
		conn_phase(c, KEEL__HTTP_HANDLER, UINT64_MAX);
		while (!(c->x->flags & KEEL__HTTP_X_HANDLER_DONE)) {
			if (c->x->flags & KEEL__HTTP_X_WANT_BODY) {
				/* TLS: the handler waits for body bytes, which
				 * only this task can decrypt (it owns the
				 * stream): receive them into c->buf for it. */
				c->x->flags &= ~KEEL__HTTP_X_WANT_BODY;
				keel_event_clear(c->x->done_ev);
				conn_phase(c, KEEL__HTTP_BODY,
					   o->body_timeout_ns);
				KEEL__HTTP_RECV(t, t, c);
				x = c->x;
				if (keel_res(t) <= 0) {
					c->flags |= KEEL__HTTP_C_ENDED;
					c->end = keel_res(t);
				} else {
					c->off = 0;
				}
				conn_phase(c, KEEL__HTTP_HANDLER, UINT64_MAX);
				keel_event_set(x->body_ev);
				continue;
			}
			KEEL_AWAIT(t, keel_event_wait(t, c->x->done_ev));
			x = c->x;
			if (keel_res(t) >= 0 ||
			    (x->flags & KEEL__HTTP_X_HANDLER_DONE))
				continue;
			/* This task was cancelled (a timeout, the drain's
			 * deadline): so is the handler, and it must have
			 * exited before its exchange goes. */
			if (x->tok)
				keel_token_cancel(x->tok);
			if (!x->shield.own &&
			    keel_shield_begin(t, &x->shield, UINT64_MAX))
				goto handler_lost;
		}
		x = c->x;
		if (x->shield.own)
			keel_shield_end(t, &x->shield);
		if (x->flags & KEEL__HTTP_X_SHED) {
			/* Its body, if any, is unread: answer and close. */
			KEEL__HTTP_COUNT(sh, shed, 1);
			keel_http_add_header(x, "Retry-After", "1");
			c->flags |= KEEL__HTTP_C_CLOSE;
			x->err = 503;
			goto answer_error;
		}
		if (x->handler_status == KEEL_ABORTED) {
			KEEL__HTTP_COUNT(sh, handler_panics, 1);
			if (!(x->flags & KEEL__HTTP_X_STARTED)) {
				x->err = 500;
				goto answer_error;
			}
			x->flags |= KEEL__HTTP_X_BROKEN;
		} else if (!(x->flags & KEEL__HTTP_X_STARTED)) {
			/* Exited without a response: the client's fault when
			 * its body was malformed or over the limit (the
			 * handler's read failed on it; the framing is lost,
			 * so the connection closes), else the handler's. */
			if (x->err == 400 || x->err == 413) {
				c->flags |= KEEL__HTTP_C_CLOSE;
			} else {
				KEEL__HTTP_COUNT(sh, handler_panics, 1);
				x->err = 500;
			}
			goto answer_error;
		}
		if (!(x->flags & KEEL__HTTP_X_FINISHED) ||
		    (x->flags & KEEL__HTTP_X_BROKEN) ||
		    (c->flags & (KEEL__HTTP_C_KILLED | KEEL__HTTP_C_ENDED)))
			goto close;
		goto after_handler;

	answer_error:
		if ((c->flags & (KEEL__HTTP_C_KILLED | KEEL__HTTP_C_ENDED)))
			goto close;
		/* Nothing was sent: the client gets a 500 (or the 400/413
		 * its body earned) and the connection goes on with its next
		 * request (not after a 400/413: C_CLOSE). */
		if (build_error(c, x, x->err))
			goto close;
		conn_phase(c, KEEL__HTTP_SEND, o->send_timeout_ns);
		KEEL__HTTP_SEND(t, t, c, c->x->out, c->x->out_len);
		x = c->x;
		if (keel_res(t) < 0) {
			x->flags |= KEEL__HTTP_X_BROKEN;
			goto close;
		}
		goto after_handler;

	after_handler:
		/* The body the handler left: drop it (within max_body),
		 * unless the client still waits for "100 Continue". */
		if (!(x->flags & KEEL__HTTP_X_COMPLETE) &&
		    !(c->flags & KEEL__HTTP_C_CLOSE)) {
			if ((x->flags & KEEL__HTTP_X_EXPECT) &&
			    !(x->flags & KEEL__HTTP_X_CONTINUED)) {
				c->flags |= KEEL__HTTP_C_CLOSE;
				goto done;
			}
			while ((f = conn_discard(c)) == FEED_MORE) {
				conn_release_if_done(c);
				conn_phase(c, KEEL__HTTP_BODY,
					   o->body_timeout_ns);
				KEEL__HTTP_RECV(t, t, c);
				if (keel_res(t) <= 0)
					goto close;
				c->off = 0;
			}
			x = c->x;
			if (f == FEED_ERROR) {
				c->flags |= KEEL__HTTP_C_CLOSE;
				goto done;
			}
		}

	done:
		/* ---- the request is answered ---- */
		x = c->x;
		keel__http_x_done(x);
		if (keel__http_conn_last(c, x))
			goto close;
		conn_release_if_done(c);
		if (c->buf.len) {
			/* Pipelined: the next request is in the chunk. */
			keel__http_x_reset(x);
			conn_phase(c, KEEL__HTTP_HEAD, o->header_timeout_ns);
		} else {
			keel__http_x_put(x);
			c->x = NULL;
			conn_phase(c, KEEL__HTTP_IDLE, o->idle_timeout_ns);
		}
		continue;

	error:
		/* ---- a limit or a malformed request: answer, close ---- */
		x = c->x;
		c->flags |= KEEL__HTTP_C_CLOSE;
		if (build_error(c, x, x->err))
			goto close;
		conn_release_if_done(c);
		conn_phase(c, KEEL__HTTP_SEND, o->send_timeout_ns);
		KEEL__HTTP_SEND(t, t, c, c->x->out, c->x->out_len);
		x = c->x;
		if (keel_res(t) < 0)
			x->flags |= KEEL__HTTP_X_BROKEN;
		goto close;
	}

handler_lost:
	/* No memory for a shield: the handler still runs on the exchange,
	 * so it is left to the loop (never freed under it). */
	keel__http_conn_untrack(c);
	if (c->flags & KEEL__HTTP_C_TLS)
		keel__http_tls_fini(c);
	else
		keel_recv_stream_close(&c->rs);
	KEEL_AWAIT(t, keel_close(t, c->fd));
	KEEL_END(t);

close:
	c->phase = KEEL__HTTP_LINGER;
	if ((c->flags & KEEL__HTTP_C_SECURE) &&
	    !(c->flags & KEEL__HTTP_C_ENDED) &&
	    !(c->x && (c->x->flags & KEEL__HTTP_X_BROKEN))) {
		/* A TLS connection says close_notify before its FIN (also
		 * when the drain or a timeout cut it: the routine is
		 * shielded). */
		KEEL_AWAIT_CALL(t, keel__http_tls_close(t, c));
	}
	if (c->x) {
		keel__http_x_done(c->x);
		/* A response went out: the client reads it before the close
		 * (a FIN, then what it still sends is dropped, not answered
		 * with a reset that could destroy the response). */
		if ((c->x->flags & KEEL__HTTP_X_FINISHED) &&
		    !(c->x->flags & KEEL__HTTP_X_BROKEN) &&
		    !(c->flags & (KEEL__HTTP_C_KILLED | KEEL__HTTP_C_ENDED)) &&
		    !shutdown(c->fd, SHUT_WR))
			c->flags |= KEEL__HTTP_C_LINGER;
		keel__http_x_put(c->x);
		c->x = NULL;
	}
	keel_buf_release(&c->buf);
	c->buf.len = 0;
	c->off = 0;
	if (c->flags & KEEL__HTTP_C_LINGER) {
		/* Linger: drop what the client still sends until it closes
		 * (or the linger time is over), so that our response is not
		 * destroyed by a reset. */
		conn_phase(c, KEEL__HTTP_LINGER, 2ull * 1000 * 1000 * 1000);
		for (;;) {
			KEEL__HTTP_RECV(t, t, c);
			if (keel_res(t) <= 0)
				break;
			c->off = c->buf.len;
		}
		keel_buf_release(&c->buf);
		c->buf.len = 0;
	}
	keel__http_conn_untrack(c);
	if (c->flags & KEEL__HTTP_C_TLS)
		keel__http_tls_fini(c);
	else
		keel_recv_stream_close(&c->rs);
	KEEL_AWAIT(t, keel_close(t, c->fd));
	KEEL__HTTP_COUNT(c->sh, active, (uint64_t)-1);
	atomic_fetch_sub_explicit(&c->sh->srv->conns, 1, memory_order_relaxed);
	KEEL_END(t);
}

KEEL_TASK_TYPE(keel__http_conn_task, struct keel__http_conn, task,
	       keel__http_conn_step);

/* ---- the loop's connections: the sweep and the drain ----------------- */

int keel__http_conn_track(struct keel__http_conn *c)
{
	struct keel__http_core *core = keel__http_core(c->sh);

	if (core->nconns == core->conns_cap) {
		unsigned cap = core->conns_cap ? core->conns_cap * 2 : 64;
		struct keel__http_conn **v =
		    realloc(core->conns, cap * sizeof(*v));

		if (!v)
			return -ENOMEM;
		core->conns = v;
		core->conns_cap = cap;
	}
	c->slot = core->nconns;
	core->conns[core->nconns++] = c;
	return 0;
}

void keel__http_conn_untrack(struct keel__http_conn *c)
{
	struct keel__http_core *core = keel__http_core(c->sh);

	if (c->slot == UINT32_MAX)
		return;
	struct keel__http_conn *last = core->conns[--core->nconns];

	core->conns[c->slot] = last;
	last->slot = c->slot;
	c->slot = UINT32_MAX;
}

/* Cut a connection: its task's awaits end with -ECANCELED; a handler's
 * too. */
static void conn_kill(struct keel__http_conn *c)
{
	if (c->flags & KEEL__HTTP_C_KILLED)
		return;
	c->flags |= KEEL__HTTP_C_KILLED;
	if (c->x && c->x->tok)
		keel_token_cancel(c->x->tok);
	keel_task_cancel(&c->task);
}

void keel__http_conns_sweep(struct keel__http_shard *sh, uint64_t now)
{
	struct keel__http_core *core = keel__http_core(sh);

	for (unsigned i = 0; i < core->nconns; i++) {
		struct keel__http_conn *c = core->conns[i];
		struct keel_http_exchange *x = c->x;

		if (now < c->deadline || (c->flags & KEEL__HTTP_C_KILLED))
			continue;
		c->deadline = UINT64_MAX;
		if (c->phase == KEEL__HTTP_LINGER) {
			conn_kill(c);
			continue;
		}
		KEEL__HTTP_COUNT(sh, timeouts, 1);
		c->flags |= KEEL__HTTP_C_TIMEDOUT;
		if (c->phase == KEEL__HTTP_BODY && x && x->handler &&
		    (x->flags & KEEL__HTTP_X_BODY_WAIT) &&
		    !(c->flags & KEEL__HTTP_C_TLS)) {
			/* A handler waits for body bytes: its read says
			 * -ETIMEDOUT; the connection closes after it. */
			x->body_err = -ETIMEDOUT;
			c->flags |= KEEL__HTTP_C_CLOSE;
			keel_event_set(x->body_ev);
			continue;
		}
		conn_kill(c);
	}
}

void keel__http_conns_drain(struct keel__http_shard *sh)
{
	struct keel__http_core *core = keel__http_core(sh);

	for (unsigned i = 0; i < core->nconns; i++) {
		struct keel__http_conn *c = core->conns[i];

		if (c->phase == KEEL__HTTP_IDLE && !c->x)
			conn_kill(c);
	}
}

void keel__http_conns_cut(struct keel__http_shard *sh)
{
	struct keel__http_core *core = keel__http_core(sh);

	for (unsigned i = 0; i < core->nconns; i++)
		conn_kill(core->conns[i]);
}
