/* SPDX-License-Identifier: MIT */
/*
 * test_https.c: libkeel-http over TLS (keel_http_opts.tls), with a client
 * made of keel's TLS engine (keel/tls.h, sans I/O) over a blocking socket,
 * for what external clients cannot do (test_https_clients.sh has curl,
 * openssl s_client and python3):
 *
 * - a GET over TLS, and a small response is ONE record (the head and the
 *   body gathered before encryption);
 * - pipelined requests in one record, answered in order;
 * - a request body streamed to a handler task in several records;
 * - a record cut in the middle of a request, then the end of the stream:
 *   the connection closes, the truncation is counted, nothing was
 *   answered, other clients are served;
 * - the drain: an idle keep-alive TLS connection gets close_notify; a
 *   connection in the middle of its handshake (a long handshake timeout)
 *   is cancelled, so the loop ends at once and nothing leaks (ASan).
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
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
#include <keel/tls.h>

#include "helpers/keel_test.h"

/* ---- certificates, made once per test in a temporary directory -------- */

static char tmp[256];
static char cert_path[300], key_path[300];

static void certs_make(void)
{
	char cmd[1024];

	kt_tmpdir_make(tmp, sizeof(tmp));
	snprintf(cert_path, sizeof(cert_path), "%s/cert.pem", tmp);
	snprintf(key_path, sizeof(key_path), "%s/key.pem", tmp);
	snprintf(cmd, sizeof(cmd),
		 "openssl req -x509 -newkey ec -pkeyopt "
		 "ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost "
		 "-addext subjectAltName=DNS:localhost -keyout %s -out %s "
		 ">/dev/null 2>&1",
		 key_path, cert_path);
	cr_assert_eq(system(cmd), 0, "openssl req failed");
}

static struct keel_tls_ctx *ctx_new(enum keel_tls_role role,
				    uint64_t handshake_ns, bool no_tickets)
{
	struct keel_tls_opts o = {
	    .role = role,
	    .alpn = "http/1.1",
	    .handshake_timeout_ns = handshake_ns,
	    .no_tickets = no_tickets,
	};
	struct keel_tls_ctx *ctx;
	char why[256] = "";

	if (role == KEEL_TLS_SERVER) {
		o.cert_file = cert_path;
		o.key_file = key_path;
	} else {
		o.ca_file = cert_path;
	}
	cr_assert_eq(keel_tls_ctx_create(&ctx, &o, why, sizeof(why)), 0, "%s",
		     why);
	return ctx;
}

/* ---- the server, on a loop in its own thread ------------------------- */

struct server {
	struct keel_http_server *srv;
	struct keel_tls_ctx *tls;
	pthread_t thread;
	_Atomic int port;
	int run;
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

/* A sum of the request body: the handler reads it piece by piece. */
struct sum_handler {
	struct keel_http_handler h;
	const char *piece;
	uint64_t total;
	char reply[32];
	size_t len;
};

static int sum_step(struct keel_task *t)
{
	struct sum_handler *s = keel_container_of(t, struct sum_handler, h.task);

	KEEL_BEGIN(t);
	for (;;) {
		KEEL_AWAIT_CALL(t, keel_http_body_read(t, s->h.x, &s->piece));
		if (keel_res(t) <= 0)
			break;
		for (int i = 0; i < keel_res(t); i++)
			s->total += (unsigned char)s->piece[i];
	}
	if (keel_res(t) < 0)
		KEEL_EXIT(t, 0);
	s->len = (size_t)snprintf(s->reply, sizeof(s->reply), "%llu",
				  (unsigned long long)s->total);
	KEEL_AWAIT_CALL(t, keel_http_respond(t, s->h.x, 200, "text/plain",
					     s->reply, s->len));
	KEEL_END(t);
}

static KEEL_HTTP_HANDLER_TYPE(sum_type, struct sum_handler, h, sum_step);

static void server_start(struct server *s, uint64_t handshake_ns,
			 bool no_tickets)
{
	struct keel_http_opts o = {0};

	certs_make();
	s->tls = ctx_new(KEEL_TLS_SERVER, handshake_ns, no_tickets);
	o.tls = s->tls;
	cr_assert_eq(keel_http_server_new(&o, &s->srv), 0);
	cr_assert_eq(keel_http_route_text(s->srv, "GET", "/hello",
					  KEEL_HTTP_EXACT, 200, "text/plain",
					  "hello", 5),
		     0);
	cr_assert_eq(keel_http_route_task(s->srv, "POST", "/sum",
					  KEEL_HTTP_EXACT, &sum_type, NULL),
		     0);
	atomic_store(&s->port, 0);
	cr_assert_eq(pthread_create(&s->thread, NULL, server_main, s), 0);
	while (!atomic_load(&s->port))
		usleep(1000);
	cr_assert_gt(atomic_load(&s->port), 0);
}

/* Drain, wait for the loop to end, free; the stats of both. */
static void server_stop(struct server *s, struct keel_http_stats *st,
			struct keel_tls_stats *ts)
{
	keel_http_server_drain(s->srv);
	cr_assert_eq(pthread_join(s->thread, NULL), 0);
	cr_expect_eq(s->run, 0);
	keel_http_server_stats(s->srv, st);
	keel_tls_ctx_stats(s->tls, ts);
	keel_http_server_free(s->srv);
	keel_tls_ctx_free(s->tls);
	kt_tmpdir_remove(tmp);
}

/* ---- the client: keel's engine over a blocking socket ----------------- */

struct client {
	struct keel_tls_ctx *ctx;
	struct keel_tls *tls;
	int fd;
	size_t in_len;
	char in[1 << 16];
	char out[KEEL_TLS_STREAM_OUT];
	char plain[1 << 16];
	size_t plain_len;
};

static void cl_connect(struct client *c, int port)
{
	struct sockaddr_storage ss;
	socklen_t len;
	struct timeval tv = {.tv_sec = 5};
	int one = 1;

	c->fd = socket(AF_INET, SOCK_STREAM, 0);
	cr_assert_geq(c->fd, 0);
	kt_loopback_addr((uint16_t)port, &ss, &len);
	cr_assert_eq(connect(c->fd, (struct sockaddr *)&ss, len), 0);
	setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

static void cl_send_raw(struct client *c, const void *p, size_t len)
{
	const char *s = p;

	while (len) {
		ssize_t n = send(c->fd, s, len, MSG_NOSIGNAL);

		cr_assert_gt(n, 0, "send: %s", strerror(errno));
		s += n;
		len -= (size_t)n;
	}
}

/* Send the output window's ciphertext and reset it. */
static void cl_flush(struct client *c)
{
	cl_send_raw(c, c->out, keel_tls_output_len(c->tls));
	keel_tls_output(c->tls, c->out, sizeof(c->out));
}

/* More ciphertext from the server into the engine; false at the end. */
static bool cl_fill(struct client *c)
{
	ssize_t n;

	cr_assert_eq(keel_tls_input_left(c->tls), 0);
	n = recv(c->fd, c->in, sizeof(c->in), 0);
	if (n <= 0)
		return false;
	keel_tls_input(c->tls, c->in, (size_t)n);
	return true;
}

static void cl_handshake(struct client *c, int port)
{
	int r;

	c->ctx = ctx_new(KEEL_TLS_CLIENT, 0, false);
	cr_assert_eq(keel_tls_new(c->ctx, "localhost", &c->tls), 0);
	cl_connect(c, port);
	keel_tls_output(c->tls, c->out, sizeof(c->out));
	while ((r = keel_tls_handshake_step(c->tls)) != 0) {
		cl_flush(c);
		if (r == -ENOBUFS)
			continue;
		cr_assert_eq(r, -EAGAIN, "handshake: %d", r);
		cr_assert(cl_fill(c), "the server closed in the handshake");
	}
	cl_flush(c);
}

static void cl_write(struct client *c, const char *s, size_t len)
{
	while (len) {
		int n = keel_tls_write(c->tls, s, len);

		if (n == -ENOBUFS) {
			cl_flush(c);
			continue;
		}
		cr_assert_gt(n, 0, "write: %d", n);
		s += n;
		len -= (size_t)n;
	}
	cl_flush(c);
}

/* Plaintext until `want` is in it (true) or the stream ends (false);
 * *records counts the records that carried plaintext. */
static bool cl_read_until(struct client *c, const char *want, int *records)
{
	for (;;) {
		if (memmem(c->plain, c->plain_len, want, strlen(want)))
			return true;
		int n = keel_tls_read(c->tls, c->plain + c->plain_len,
				      sizeof(c->plain) - c->plain_len);

		if (n > 0) {
			c->plain_len += (size_t)n;
			if (records)
				(*records)++;
			continue;
		}
		if (n == -ENOBUFS) {
			cl_flush(c);
			continue;
		}
		if (n != -EAGAIN || !cl_fill(c))
			return false;
	}
}

/* What the server's stream ends with: 0 close_notify, else an errno;
 * plaintext on the way is counted in plain_len. */
static int cl_read_end(struct client *c)
{
	for (;;) {
		char b[4096];
		int n = keel_tls_read(c->tls, b, sizeof(b));

		if (n > 0) {
			c->plain_len += (size_t)n;
			continue;
		}
		if (n == -ENOBUFS) {
			cl_flush(c);
			continue;
		}
		if (n != -EAGAIN)
			return n;
		if (!cl_fill(c))
			return -ECONNRESET;
	}
}

static void cl_free(struct client *c)
{
	if (c->fd >= 0)
		close(c->fd);
	keel_tls_free(c->tls);
	keel_tls_ctx_free(c->ctx);
}

static const char get_hello[] = "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n";

/* ---- the tests --------------------------------------------------------- */

Test(https, hello_is_one_record)
{
	struct server s = {0};
	struct client c = {.fd = -1};
	struct keel_http_stats st;
	struct keel_tls_stats ts;
	int records = 0;

	/* No tickets: nothing but the response comes after the
	 * handshake, so the records counted are the response's. */
	server_start(&s, 0, true);
	cl_handshake(&c, s.port);
	cr_expect_str_eq(keel_tls_alpn(c.tls), "http/1.1");
	cl_write(&c, get_hello, sizeof(get_hello) - 1);
	cr_assert(cl_read_until(&c, "\r\n\r\nhello", &records));
	cr_expect_eq(records, 1, "the head and body in %d records", records);
	cr_expect(memmem(c.plain, c.plain_len, "HTTP/1.1 200 OK\r\n", 17));
	cl_free(&c);
	server_stop(&s, &st, &ts);
	cr_expect_eq(st.requests, 1);
	cr_expect_eq(st.active, 0);
	cr_expect_eq(ts.handshakes, 1);
}

Test(https, pipelined_in_one_record)
{
	struct server s = {0};
	struct client c = {.fd = -1};
	struct keel_http_stats st;
	struct keel_tls_stats ts;
	static const char three[] =
	    "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"
	    "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
	    "GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

	server_start(&s, 0, false);
	cl_handshake(&c, s.port);
	cl_write(&c, three, sizeof(three) - 1);
	cr_assert(cl_read_until(&c, "Connection: close\r\n\r\nhello", NULL));
	c.plain[c.plain_len] = '\0';
	const char *a = strstr(c.plain, "200 OK");
	const char *b = strstr(c.plain, "404 Not Found");

	cr_expect(a && b && a < b && strstr(b, "200 OK"), "%s", c.plain);
	/* The server closes with close_notify. */
	cr_expect_eq(cl_read_end(&c), 0);
	cl_free(&c);
	server_stop(&s, &st, &ts);
	cr_expect_eq(st.requests, 3);
	cr_expect_eq(st.active, 0);
}

Test(https, body_to_handler_in_many_records)
{
	struct server s = {0};
	struct client c = {.fd = -1};
	struct keel_http_stats st;
	struct keel_tls_stats ts;
	static char body[100000];
	char head[128];
	uint64_t want = 0;

	for (size_t i = 0; i < sizeof(body); i++) {
		body[i] = (char)(i * 31 + 7);
		want += (unsigned char)body[i];
	}
	server_start(&s, 0, false);
	cl_handshake(&c, s.port);
	int n = snprintf(head, sizeof(head),
			 "POST /sum HTTP/1.1\r\nHost: x\r\n"
			 "Content-Length: %zu\r\n\r\n",
			 sizeof(body));

	cl_write(&c, head, (size_t)n);
	/* In pieces, so that the handler waits for records. */
	for (size_t off = 0; off < sizeof(body); off += 10000) {
		cl_write(&c, body + off, 10000);
		usleep(2000);
	}
	char expect[40];

	snprintf(expect, sizeof(expect), "\r\n\r\n%llu",
		 (unsigned long long)want);
	cr_assert(cl_read_until(&c, expect, NULL), "%.*s", (int)c.plain_len,
		  c.plain);
	cl_free(&c);
	server_stop(&s, &st, &ts);
	cr_expect_eq(st.requests, 1);
}

Test(https, truncated_record_mid_request)
{
	struct server s = {0};
	struct client c = {.fd = -1}, d = {.fd = -1};
	struct keel_http_stats st;
	struct keel_tls_stats ts;

	server_start(&s, 0, false);
	cl_handshake(&c, s.port);
	/* Encrypt the request, send half of its record, then end the
	 * stream (no close_notify). */
	cr_assert_gt(keel_tls_write(c.tls, get_hello, sizeof(get_hello) - 1),
		     0);
	size_t len = keel_tls_output_len(c.tls);

	cr_assert_gt(len, 20);
	cl_send_raw(&c, c.out, len / 2);
	usleep(20000);
	shutdown(c.fd, SHUT_WR);
	/* The server closes without an answer (what comes is its session
	 * tickets, maybe a close_notify: no plaintext). */
	cr_expect_leq(cl_read_end(&c), 0);
	cr_expect_eq(c.plain_len, 0);
	/* Others are served. */
	cl_handshake(&d, s.port);
	cl_write(&d, get_hello, sizeof(get_hello) - 1);
	cr_expect(cl_read_until(&d, "\r\n\r\nhello", NULL));
	cl_free(&d);
	cl_free(&c);
	server_stop(&s, &st, &ts);
	cr_expect_eq(st.requests, 1, "only the other client's: %llu",
		     (unsigned long long)st.requests);
	cr_expect_geq(ts.truncated, 1);
	cr_expect_eq(st.active, 0);
}

Test(https, drain_sends_close_notify_to_idle)
{
	struct server s = {0};
	struct client c = {.fd = -1};
	struct keel_http_stats st;
	struct keel_tls_stats ts;

	server_start(&s, 0, false);
	cl_handshake(&c, s.port);
	cl_write(&c, get_hello, sizeof(get_hello) - 1);
	cr_assert(cl_read_until(&c, "\r\n\r\nhello", NULL));
	keel_http_server_drain(s.srv);
	cr_expect_eq(cl_read_end(&c), 0, "not close_notify");
	cl_free(&c);
	server_stop(&s, &st, &ts);
	cr_expect_eq(st.requests, 1);
}

Test(https, drain_cancels_a_handshake)
{
	struct server s = {0};
	struct client c = {.fd = -1};
	struct keel_http_stats st;
	struct keel_tls_stats ts;
	uint64_t t0;

	/* A minute's handshake timeout: only the drain can end it. */
	server_start(&s, 60ull * 1000 * 1000 * 1000, false);
	c.ctx = ctx_new(KEEL_TLS_CLIENT, 0, false);
	cr_assert_eq(keel_tls_new(c.ctx, "localhost", &c.tls), 0);
	cl_connect(&c, s.port);
	keel_tls_output(c.tls, c.out, sizeof(c.out));
	cr_assert_eq(keel_tls_handshake_step(c.tls), -EAGAIN);
	/* Half a ClientHello: the server waits for the rest. */
	cl_send_raw(&c, c.out, keel_tls_output_len(c.tls) / 2);
	usleep(50000);
	t0 = kt_now_ns();
	server_stop(&s, &st, &ts);
	cr_expect_lt(kt_now_ns() - t0, 5ull * 1000 * 1000 * 1000,
		     "the drain waited for the handshake");
	cr_expect_eq(ts.handshakes, 0);
	cr_expect_eq(st.connections, 1);
	cr_expect_eq(st.active, 0);
	cl_free(&c);
}
