/* SPDX-License-Identifier: MIT */
/*
 * test_http_ops.c: /metrics, /health and the access log through a real
 * server on one loop, with a plain client thread over loopback: the
 * metrics response is a whole HTTP response whose body counts the requests
 * before it, /health answers "ok", and the access log (a pipe) gets a line
 * per request with the client's address.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "helpers/keel_test.h"
#include "internal.h"

static struct keel_http_server *g_srv;
static char *g_answers[4];
static const char *const g_paths[4] = {"/hello", "/health", "/nope",
				       "/metrics"};

/* One request on its own connection; the whole answer, malloc'ed. */
static char *fetch(uint16_t port, const char *path)
{
	struct sockaddr_storage ss;
	socklen_t sl;
	char req[256];
	size_t cap = 1 << 20, n = 0;
	char *buf = malloc(cap + 1);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	ssize_t r;

	if (!buf || fd < 0)
		return NULL;
	kt_loopback_addr(port, &ss, &sl);
	if (connect(fd, (struct sockaddr *)&ss, sl)) {
		close(fd);
		free(buf);
		return NULL;
	}
	snprintf(req, sizeof(req),
		 "GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
		 path);
	if (write(fd, req, strlen(req)) != (ssize_t)strlen(req))
		n = 0;
	while (n < cap && (r = read(fd, buf + n, cap - n)) > 0)
		n += (size_t)r;
	buf[n] = '\0';
	close(fd);
	return buf;
}

static void *client(void *arg)
{
	int port;

	while ((port = keel_http_server_port(g_srv)) <= 0)
		usleep(1000);
	for (int i = 0; i < 4; i++)
		g_answers[i] = fetch((uint16_t)port, g_paths[i]);
	keel_http_server_drain(g_srv);
	return NULL;
}

Test(http_ops, metrics_health_and_the_access_log_through_a_server,
     .timeout = 30)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	int log[2];
	pthread_t th;

	cr_assert_eq(pipe2(log, O_CLOEXEC), 0);

	struct keel_http_opts o = {.access_log_fd = log[1]};

	cr_assert_eq(keel_http_server_new(&o, &g_srv), 0);
	cr_assert_eq(keel_http_route_text(g_srv, "GET", "/hello",
					  KEEL_HTTP_EXACT, 200, "text/plain",
					  "hello", 5),
		     0);
	cr_assert_eq(keel_http_route_health(g_srv, "/health"), 0);
	cr_assert_eq(keel_http_route_metrics(g_srv, "/metrics"), 0);
	cr_assert_eq(keel_http_server_start_loop(g_srv, loop), 0);
	cr_assert_eq(pthread_create(&th, NULL, client, NULL), 0);
	kt_loop_run(loop);
	pthread_join(th, NULL);

	for (int i = 0; i < 4; i++)
		cr_assert_not_null(g_answers[i], "%s", g_paths[i]);
	cr_expect_eq(strncmp(g_answers[1], "HTTP/1.1 200 OK\r\n", 17), 0, "%s",
		     g_answers[1]);
	cr_expect(strstr(g_answers[1], "\r\n\r\nok\n"), "%s", g_answers[1]);
	cr_expect_eq(strncmp(g_answers[2], "HTTP/1.1 404 ", 13), 0, "%s",
		     g_answers[2]);
	/* The metrics: a whole response, its body the Prometheus text. */
	cr_expect_eq(strncmp(g_answers[3], "HTTP/1.1 200 OK\r\n", 17), 0,
		     "%.200s", g_answers[3]);
	cr_expect(strstr(g_answers[3], "Content-Type: text/plain; "
				       "version=0.0.4"),
		  "%.300s", g_answers[3]);
	cr_expect(strstr(g_answers[3], "\r\n\r\n# HELP keel_"), "%.300s",
		  g_answers[3]);
	cr_expect(strstr(g_answers[3], "\nkeel_http_requests_total{route="
				       "\"/hello\",code=\"2xx\"} 1\n"),
		  "%s", g_answers[3]);
	cr_expect(strstr(g_answers[3], "\nkeel_http_requests_total{route="
				       "\"none\",code=\"4xx\"} 1\n"),
		  "%s", g_answers[3]);
	cr_expect(strstr(g_answers[3], "\nkeel_http_connections_total 4\n"),
		  "%s", g_answers[3]);

	/* The log: a line per request, in order, with the peer's address. */
	char text[4096];
	ssize_t n;

	cr_assert_eq(fcntl(log[0], F_SETFL, O_NONBLOCK), 0);
	n = read(log[0], text, sizeof(text) - 1);
	cr_assert_gt(n, 0);
	text[n] = '\0';

	const char *line = text;
	static const char *const want[4] = {
	    "\"GET /hello HTTP/1.1\" 200 5 ", "\"GET /health HTTP/1.1\" 200 3 ",
	    "\"GET /nope HTTP/1.1\" 404 ", "\"GET /metrics HTTP/1.1\" 200 "};

	for (int i = 0; i < 4; i++) {
		const char *nl = strchr(line, '\n');

		cr_assert_not_null(nl, "%s", text);
		cr_expect_eq(strncmp(line, "127.0.0.1 - - [", 15), 0, "%s",
			     text);
		cr_expect_eq(strncmp(line + 15 + 28, want[i], strlen(want[i])),
			     0, "%s", text);
		line = nl + 1;
	}
	cr_expect_eq(*line, '\0', "%s", text);
	for (int i = 0; i < 4; i++)
		free(g_answers[i]);
	keel_http_server_free(g_srv);
	keel_loop_destroy(loop);
	close(log[0]);
	close(log[1]);
}
