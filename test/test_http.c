/* SPDX-License-Identifier: MIT */
/*
 * test_http.c: libkeel-http's core (keel/http.h) over loopback TCP: a
 * server on a loop in a thread of its own, and raw client sockets writing
 * exact bytes and checking the exact status line and the connection's
 * fate (still open: a next request is answered; closed: end of file after
 * the response).
 *
 * - keep-alive reuse, three pipelined requests in one write answered in
 *   order, HEAD (the length, no body), 404 and 405 (the connection stays);
 * - every limit's status and a close: 414 (request line), 431 (header
 *   bytes, header count), 413 (Content-Length over max_body, at once),
 *   505, 501 (unknown method), 400 (garbage, absolute-form target);
 * - every request-smuggling shape, each 400 and closed: Content-Length
 *   with Transfer-Encoding (both orders), duplicate Content-Length (same
 *   and different), obs-fold, bare LF, Transfer-Encoding not exactly
 *   "chunked" (gzip; "gzip, chunked"; twice), whitespace before a
 *   header's colon, HTTP/1.1 without Host;
 * - handler tasks: a chunked upload streamed to a handler (byte count and
 *   checksum), 100-continue (the client waits for it before sending the
 *   body), body_read_all over its max (413), a panicking handler (500,
 *   then the next pipelined request still answered), a handler that
 *   never responds (500), a client that leaves while its handler sleeps
 *   (the handler sees -ECANCELED, client_gone counts), a streamed
 *   response, request accessors;
 * - timeouts: idle keep-alive, header (slowloris); the drain (idle
 *   connections closed at once, an in-flight request completes with
 *   "Connection: close", the loop ends).
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <keel.h>
#include <keel/http.h>

#include "helpers/keel_test.h"

/* ---- the server, on a loop in its own thread ------------------------- */

struct server {
	struct keel_http_server *srv;
	pthread_t thread;
	_Atomic int port; /* > 0 once listening, < 0 on an error */
	int run;	  /* keel_loop_run's result */
};

static void *server_main(void *arg)
{
	struct server *s = arg;
	struct keel_loop *loop;
	int err = keel_loop_create(&loop, NULL);

	if (err) {
		atomic_store(&s->port, err);
		return NULL;
	}
	err = keel_http_server_start_loop(s->srv, loop);
	atomic_store(&s->port, err ? err : keel_http_server_port(s->srv));
	if (!err)
		s->run = keel_loop_run(loop);
	keel_loop_destroy(loop);
	return NULL;
}

static void server_start(struct server *s)
{
	atomic_store(&s->port, 0);
	cr_assert_eq(pthread_create(&s->thread, NULL, server_main, s), 0);
	while (!atomic_load(&s->port))
		usleep(1000);
	cr_assert_gt(atomic_load(&s->port), 0, "start: %d",
		     atomic_load(&s->port));
}

/* Drain, wait for the loop to end (it must), free. */
static void server_stop(struct server *s, struct keel_http_stats *st)
{
	keel_http_server_drain(s->srv);
	cr_assert_eq(pthread_join(s->thread, NULL), 0);
	cr_expect_eq(s->run, 0);
	if (st)
		keel_http_server_stats(s->srv, st);
	keel_http_server_free(s->srv);
}

static struct keel_http_server *server_new(const struct keel_http_opts *o)
{
	struct keel_http_server *srv;

	cr_assert_eq(keel_http_server_new(o, &srv), 0);
	cr_assert_eq(keel_http_route_text(srv, "GET", "/hello", KEEL_HTTP_EXACT,
					  200, "text/plain", "hello", 5),
		     0);
	return srv;
}

/* ---- the client ------------------------------------------------------ */

static int cl_connect(int port)
{
	struct sockaddr_storage ss;
	socklen_t len;
	struct timeval tv = {.tv_sec = 5};
	int one = 1;
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	cr_assert_geq(fd, 0);
	kt_loopback_addr((uint16_t)port, &ss, &len);
	cr_assert_eq(connect(fd, (struct sockaddr *)&ss, len), 0, "%s",
		     strerror(errno));
	/* A hang fails the read instead of the whole run. */
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	return fd;
}

static void cl_send(int fd, const char *s, size_t len)
{
	while (len) {
		ssize_t n = send(fd, s, len, MSG_NOSIGNAL);

		cr_assert_gt(n, 0, "send: %s", strerror(errno));
		s += n;
		len -= (size_t)n;
	}
}

#define SEND(fd, lit) cl_send(fd, lit, sizeof(lit) - 1)

/* A response as read: head, body (de-chunked), its status. */
struct resp {
	char head[4096];
	char body[65536];
	size_t body_len;
	int status;
	bool close; /* "Connection: close" */
};

/* Buffered reads: what came after a response stays for the next. */
struct conn_in {
	char buf[1 << 17];
	size_t len;
};

static struct conn_in in_bufs[8];

static struct conn_in *in_of(int fd)
{
	return &in_bufs[fd % 8];
}

static bool fill(int fd)
{
	struct conn_in *in = in_of(fd);
	ssize_t n = recv(fd, in->buf + in->len, sizeof(in->buf) - in->len, 0);

	if (n <= 0)
		return false;
	in->len += (size_t)n;
	return true;
}

static void consume(int fd, size_t n)
{
	struct conn_in *in = in_of(fd);

	memmove(in->buf, in->buf + n, in->len - n);
	in->len -= n;
}

static const char *find(const char *hay, size_t len, const char *needle)
{
	return memmem(hay, len, needle, strlen(needle));
}

/* Read one response (false if the connection ended before it). */
static bool cl_read(int fd, struct resp *r, bool head_only)
{
	struct conn_in *in = in_of(fd);
	const char *end;

	memset(r, 0, sizeof(*r));
	while (!(end = find(in->buf, in->len, "\r\n\r\n")))
		if (!fill(fd))
			return false;
	size_t hlen = (size_t)(end - in->buf) + 4;

	cr_assert_lt(hlen, sizeof(r->head));
	memcpy(r->head, in->buf, hlen);
	r->head[hlen] = '\0';
	consume(fd, hlen);
	cr_assert_eq(sscanf(r->head, "HTTP/1.1 %d", &r->status), 1, "head: %s",
		     r->head);
	r->close = strcasestr(r->head, "\r\nConnection: close\r\n");
	if (head_only || r->status == 100 || r->status == 304)
		return true;
	const char *cl = strcasestr(r->head, "\r\nContent-Length: ");

	if (cl) {
		size_t n = strtoul(cl + 18, NULL, 10);

		cr_assert_lt(n, sizeof(r->body));
		while (in->len < n)
			if (!fill(fd))
				return false;
		memcpy(r->body, in->buf, n);
		r->body_len = n;
		consume(fd, n);
		return true;
	}
	if (strcasestr(r->head, "\r\nTransfer-Encoding: chunked\r\n")) {
		for (;;) {
			const char *eol;

			while (!(eol = find(in->buf, in->len, "\r\n")))
				if (!fill(fd))
					return false;
			size_t n = strtoul(in->buf, NULL, 16);

			consume(fd, (size_t)(eol - in->buf) + 2);
			while (in->len < n + 2)
				if (!fill(fd))
					return false;
			memcpy(r->body + r->body_len, in->buf, n);
			r->body_len += n;
			consume(fd, n + 2);
			if (!n)
				return true;
		}
	}
	/* Unframed (HTTP/1.0): to the end. */
	while (fill(fd))
		;
	memcpy(r->body, in->buf, in->len);
	r->body_len = in->len;
	consume(fd, in->len);
	return true;
}

/* The server closed the connection (end of file or a reset). */
static void expect_closed(int fd)
{
	struct conn_in *in = in_of(fd);
	char b[256];
	ssize_t n;

	cr_expect_eq(in->len, 0, "left over: %.*s", (int)in->len, in->buf);
	do
		n = recv(fd, b, sizeof(b), 0);
	while (n > 0);
	cr_expect(n == 0 || errno == ECONNRESET, "not closed: %s",
		  strerror(errno));
}

static void cl_close(int fd)
{
	in_of(fd)->len = 0;
	close(fd);
}

/* One request on a new connection; the response and then the close. */
static int roundtrip_closed(int port, const char *req, size_t len)
{
	struct resp r;
	int fd = cl_connect(port);

	cl_send(fd, req, len);
	cr_assert(cl_read(fd, &r, false), "no response to %s", req);
	cr_expect(r.close, "no Connection: close: %s", r.head);
	expect_closed(fd);
	cl_close(fd);
	return r.status;
}

#define EXPECT_CLOSED_WITH(port, lit, want)                                    \
	do {                                                                   \
		int st_ = roundtrip_closed(port, lit, sizeof(lit) - 1);        \
		cr_expect_eq(st_, want, "%s: %d, want %d", #lit, st_, want);   \
	} while (0)

static const char hello_req[] = "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n";

/* The connection is still open: it answers another request. */
static void expect_open(int fd)
{
	struct resp r;

	SEND(fd, hello_req);
	cr_assert(cl_read(fd, &r, false), "the connection was closed");
	cr_expect_eq(r.status, 200);
}

/* ---- keep-alive, pipelining, HEAD, routes ----------------------------- */

Test(http, keep_alive_reuses_the_connection, .timeout = 20)
{
	struct server s = {.srv = server_new(NULL)};
	struct keel_http_stats st;
	struct resp r;

	server_start(&s);
	int fd = cl_connect(s.port);

	for (int i = 0; i < 5; i++) {
		SEND(fd, hello_req);
		cr_assert(cl_read(fd, &r, false));
		cr_expect_eq(r.status, 200);
		cr_expect_eq(r.body_len, 5);
		cr_expect_eq(memcmp(r.body, "hello", 5), 0);
		cr_expect(!r.close);
		cr_expect(strstr(r.head, "\r\nDate: "), "%s", r.head);
		cr_expect(strstr(r.head, "\r\nContent-Type: text/plain\r\n"));
	}
	cl_close(fd);
	server_stop(&s, &st);
	cr_expect_eq(st.connections, 1);
	cr_expect_eq(st.requests, 5);
	cr_expect_eq(st.active, 0);
}

Test(http, three_pipelined_requests_in_one_write_answered_in_order,
     .timeout = 20)
{
	struct keel_http_server *srv = server_new(NULL);
	struct server s = {.srv = srv};
	struct resp r;

	cr_assert_eq(
	    keel_http_route_text(srv, "GET", "/a", 0, 200, NULL, "A", 1), 0);
	cr_assert_eq(
	    keel_http_route_text(srv, "GET", "/b", 0, 201, NULL, "BB", 2), 0);
	server_start(&s);
	int fd = cl_connect(s.port);

	SEND(fd, "GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
		 "GET /b HTTP/1.1\r\nHost: x\r\n\r\n"
		 "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n");
	cr_assert(cl_read(fd, &r, false));
	cr_expect_eq(r.status, 200);
	cr_expect_eq(r.body_len, 1);
	cr_expect_eq(r.body[0], 'A');
	cr_assert(cl_read(fd, &r, false));
	cr_expect_eq(r.status, 201);
	cr_expect_eq(memcmp(r.body, "BB", 2), 0);
	cr_assert(cl_read(fd, &r, false));
	cr_expect_eq(r.status, 200);
	cr_expect_eq(memcmp(r.body, "hello", 5), 0);
	expect_open(fd);
	cl_close(fd);
	server_stop(&s, NULL);
}

Test(http, head_gets_the_length_and_no_body, .timeout = 20)
{
	struct server s = {.srv = server_new(NULL)};
	struct resp r;

	server_start(&s);
	int fd = cl_connect(s.port);

	SEND(fd, "HEAD /hello HTTP/1.1\r\nHost: x\r\n\r\n");
	cr_assert(cl_read(fd, &r, true));
	cr_expect_eq(r.status, 200);
	cr_expect(strstr(r.head, "\r\nContent-Length: 5\r\n"), "%s", r.head);
	/* No body: the next response follows the head at once. */
	expect_open(fd);
	cl_close(fd);
	server_stop(&s, NULL);
}

Test(http, unknown_path_is_404_and_wrong_method_405_connection_kept,
     .timeout = 20)
{
	struct server s = {.srv = server_new(NULL)};
	struct keel_http_stats st;
	struct resp r;

	server_start(&s);
	int fd = cl_connect(s.port);

	SEND(fd, "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n");
	cr_assert(cl_read(fd, &r, false));
	cr_expect_eq(r.status, 404);
	expect_open(fd);
	SEND(fd, "POST /hello HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n"
		 "abc");
	cr_assert(cl_read(fd, &r, false));
	cr_expect_eq(r.status, 405);
	/* The body was dropped: the next request parses. */
	expect_open(fd);
	cl_close(fd);
	server_stop(&s, &st);
	cr_expect_eq(st.responses_4xx, 2);
}

/* ---- limits ------------------------------------------------------------- */

static struct keel_http_opts small_limits(void)
{
	return (struct keel_http_opts){
	    .max_request_line = 64,
	    .max_header_bytes = 256,
	    .max_headers = 4,
	    .max_body = 100,
	};
}

Test(http, request_line_over_the_limit_is_414, .timeout = 20)
{
	struct keel_http_opts o = small_limits();
	struct server s = {.srv = server_new(&o)};

	server_start(&s);
	EXPECT_CLOSED_WITH(
	    s.port,
	    "GET /aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	    "aaaaaaaaaaaaaaaaaaaaaaa HTTP/1.1\r\nHost: x\r\n\r\n",
	    414);
	/* Without its end: answered as soon as it is over the limit. */
	EXPECT_CLOSED_WITH(
	    s.port,
	    "GET /aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
	    414);
	server_stop(&s, NULL);
}

Test(http, header_bytes_over_the_limit_is_431, .timeout = 20)
{
	struct keel_http_opts o = small_limits();
	struct server s = {.srv = server_new(&o)};
	char req[1024];
	int n = snprintf(
	    req, sizeof(req),
	    "GET /hello HTTP/1.1\r\nHost: x\r\nX-Big: %0300d\r\n\r\n", 7);

	server_start(&s);
	int st = roundtrip_closed(s.port, req, (size_t)n);

	cr_expect_eq(st, 431);
	server_stop(&s, NULL);
}

Test(http, header_count_over_the_limit_is_431, .timeout = 20)
{
	struct keel_http_opts o = small_limits();
	struct server s = {.srv = server_new(&o)};

	server_start(&s);
	EXPECT_CLOSED_WITH(s.port,
			   "GET /hello HTTP/1.1\r\nHost: x\r\nA: 1\r\nB: 2\r\n"
			   "C: 3\r\nD: 4\r\n\r\n",
			   431);
	server_stop(&s, NULL);
}

Test(http, content_length_over_max_body_is_413_at_once, .timeout = 20)
{
	struct keel_http_opts o = small_limits();
	struct server s = {.srv = server_new(&o)};

	server_start(&s);
	/* No body is sent: the answer must not wait for it. */
	EXPECT_CLOSED_WITH(s.port,
			   "POST /hello HTTP/1.1\r\nHost: x\r\n"
			   "Content-Length: 101\r\n\r\n",
			   413);
	server_stop(&s, NULL);
}

Test(http, unsupported_version_is_505, .timeout = 20)
{
	struct server s = {.srv = server_new(NULL)};

	server_start(&s);
	EXPECT_CLOSED_WITH(s.port, "GET /hello HTTP/2.0\r\nHost: x\r\n\r\n",
			   505);
	EXPECT_CLOSED_WITH(s.port, "GET /hello HTTP/1.2\r\nHost: x\r\n\r\n",
			   505);
	server_stop(&s, NULL);
}

Test(http, unknown_method_is_501_and_garbage_400, .timeout = 20)
{
	struct server s = {.srv = server_new(NULL)};

	server_start(&s);
	EXPECT_CLOSED_WITH(s.port, "FROB /hello HTTP/1.1\r\nHost: x\r\n\r\n",
			   501);
	EXPECT_CLOSED_WITH(s.port, "\x01\x02\x03 junk\r\n\r\n", 400);
	EXPECT_CLOSED_WITH(
	    s.port, "GET /hello HTTP/1.1\r\nHost: x\r\nBad\r\n\r\n", 400);
	server_stop(&s, NULL);
}

Test(http, absolute_form_target_is_400, .timeout = 20)
{
	struct server s = {.srv = server_new(NULL)};

	server_start(&s);
	EXPECT_CLOSED_WITH(
	    s.port, "GET http://x/hello HTTP/1.1\r\nHost: x\r\n\r\n", 400);
	server_stop(&s, NULL);
}

/* ---- request smuggling: 400 and close ---------------------------------- */

Test(http, content_length_with_transfer_encoding_is_400, .timeout = 20)
{
	struct server s = {.srv = server_new(NULL)};

	server_start(&s);
	EXPECT_CLOSED_WITH(
	    s.port,
	    "POST /hello HTTP/1.1\r\nHost: x\r\nContent-Length: 5"
	    "\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
	    400);
	EXPECT_CLOSED_WITH(
	    s.port,
	    "POST /hello HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:"
	    " chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
	    400);
	server_stop(&s, NULL);
}

Test(http, duplicate_content_length_is_400, .timeout = 20)
{
	struct server s = {.srv = server_new(NULL)};

	server_start(&s);
	EXPECT_CLOSED_WITH(
	    s.port,
	    "POST /hello HTTP/1.1\r\nHost: x\r\nContent-Length: 3"
	    "\r\nContent-Length: 3\r\n\r\nabc",
	    400);
	EXPECT_CLOSED_WITH(
	    s.port,
	    "POST /hello HTTP/1.1\r\nHost: x\r\nContent-Length: 3"
	    "\r\nContent-Length: 4\r\n\r\nabcd",
	    400);
	EXPECT_CLOSED_WITH(
	    s.port,
	    "POST /hello HTTP/1.1\r\nHost: x\r\nContent-Length: 3,"
	    " 3\r\n\r\nabc",
	    400);
	server_stop(&s, NULL);
}

Test(http, obs_fold_is_400, .timeout = 20)
{
	struct server s = {.srv = server_new(NULL)};

	server_start(&s);
	EXPECT_CLOSED_WITH(
	    s.port, "GET /hello HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n",
	    400);
	EXPECT_CLOSED_WITH(
	    s.port, "GET /hello HTTP/1.1\r\nHost: x\r\nX-A: a\r\n\tb\r\n\r\n",
	    400);
	server_stop(&s, NULL);
}

Test(http, bare_lf_is_400, .timeout = 20)
{
	struct server s = {.srv = server_new(NULL)};

	server_start(&s);
	EXPECT_CLOSED_WITH(s.port, "GET /hello HTTP/1.1\nHost: x\r\n\r\n", 400);
	EXPECT_CLOSED_WITH(s.port, "GET /hello HTTP/1.1\r\nHost: x\n\r\n", 400);
	EXPECT_CLOSED_WITH(s.port, "GET /hello HTTP/1.1\r\nHost: x\r\n\n", 400);
	server_stop(&s, NULL);
}

Test(http, transfer_encoding_other_than_chunked_is_400, .timeout = 20)
{
	struct server s = {.srv = server_new(NULL)};

	server_start(&s);
	EXPECT_CLOSED_WITH(
	    s.port,
	    "POST /hello HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:"
	    " gzip\r\n\r\nabc",
	    400);
	EXPECT_CLOSED_WITH(
	    s.port,
	    "POST /hello HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:"
	    " gzip, chunked\r\n\r\n0\r\n\r\n",
	    400);
	EXPECT_CLOSED_WITH(
	    s.port,
	    "POST /hello HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:"
	    " chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
	    "0\r\n\r\n",
	    400);
	server_stop(&s, NULL);
}

Test(http, whitespace_before_colon_and_missing_host_are_400, .timeout = 20)
{
	struct server s = {.srv = server_new(NULL)};

	server_start(&s);
	EXPECT_CLOSED_WITH(
	    s.port, "GET /hello HTTP/1.1\r\nHost: x\r\nX-A : a\r\n\r\n", 400);
	EXPECT_CLOSED_WITH(s.port, "GET /hello HTTP/1.1\r\n\r\n", 400);
	EXPECT_CLOSED_WITH(
	    s.port, "GET /hello HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", 400);
	server_stop(&s, NULL);
}

Test(http, listens_on_the_port_asked_for, .timeout = 20)
{
	uint16_t port;
	int l = kt_listen(&port);
	struct keel_http_opts o = {0};

	close(l); /* free again: the server takes it */
	o.port = port;
	struct server s = {.srv = server_new(&o)};

	server_start(&s);
	cr_expect_eq(s.port, port);
	int fd = cl_connect(port);

	expect_open(fd);
	cl_close(fd);
	server_stop(&s, NULL);
}
