/* SPDX-License-Identifier: MIT */
/*
 * test_http_accesslog.c: libkeel-http's access log (http/accesslog.c) on a
 * real loop with a shard filled in by hand and a pipe as the log's fd.
 * Lines arrive in order, in the common log format plus the time taken,
 * with the request's bytes escaped; a pipe nobody reads does not hold the
 * loop back: lines are dropped and counted, and keel__http_log_stop()
 * still ends the log task; a shutdown (the loop's root token cancelled)
 * does not lose the lines logged after it.
 *
 * The exchange is this file's own (exchange.c's is private): the file
 * defines the accessors the log uses (keel_http_method, _path, _query,
 * _version, keel__http_fd and keel__http_peer) over a struct of its own,
 * so that exchange.c is not linked in.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "helpers/keel_test.h"
#include "internal.h"

/* ---- an exchange of our own ---------------------------------------- */

struct keel_http_exchange {
	const char *method;
	const char *path;
	size_t path_len;
	const char *query;
	int version;
	const char *peer; /* NULL: keel__http_peer fails */
};

const char *keel_http_method(const struct keel_http_exchange *x)
{
	return x->method;
}

const char *keel_http_path(const struct keel_http_exchange *x, size_t *len)
{
	const char *p = x->path ? x->path : "";

	if (len)
		*len = x->path_len ? x->path_len : strlen(p);
	return p;
}

const char *keel_http_query(const struct keel_http_exchange *x, size_t *len)
{
	const char *q = x->query ? x->query : "";

	if (len)
		*len = strlen(q);
	return q;
}

int keel_http_version(const struct keel_http_exchange *x)
{
	return x->version;
}

/* accesslog.c's own stand-in for keel__http_peer() uses it; this file's
 * keel__http_peer() replaces that one. */
int keel__http_fd(const struct keel_http_exchange *x)
{
	return -1;
}

int keel__http_peer(const struct keel_http_exchange *x, char *buf, size_t len)
{
	if (!x->peer)
		return -ENOTCONN;
	if (strlen(x->peer) >= len)
		return -ENOSPC;
	strcpy(buf, x->peer);
	return (int)strlen(buf);
}

/* ---- a shard by hand, a pipe as the log ------------------------------ */

static struct keel_http_server g_srv;
static struct keel__http_shard g_sh;
static int g_pipe[2];

static void setup(void)
{
	memset(&g_srv, 0, sizeof(g_srv));
	memset(&g_sh, 0, sizeof(g_sh));
	cr_assert_eq(pipe2(g_pipe, O_CLOEXEC), 0);
	g_srv.opts.access_log_fd = g_pipe[1];
	g_srv.opts.drain_timeout_ns = KT_MS(10000);
	g_sh.srv = &g_srv;
	g_sh.loop = kt_loop_new(NULL);
}

static void teardown(void)
{
	keel_loop_destroy(g_sh.loop);
	close(g_pipe[0]);
	close(g_pipe[1]);
}

static uint64_t dropped(void)
{
	return __atomic_load_n(&g_sh.stats.log_dropped, __ATOMIC_RELAXED);
}

/* Everything in the pipe now (the write end stays open). */
static char *drain_pipe(size_t *len)
{
	size_t cap = 1 << 20, n = 0;
	char *buf = malloc(cap + 1);
	ssize_t r;

	cr_assert_not_null(buf);
	cr_assert_eq(fcntl(g_pipe[0], F_SETFL, O_NONBLOCK), 0);
	while (n < cap && (r = read(g_pipe[0], buf + n, cap - n)) > 0)
		n += (size_t)r;
	buf[n] = '\0';
	*len = n;
	return buf;
}

static unsigned count_lines(const char *s)
{
	unsigned n = 0;

	for (; *s; s++)
		n += *s == '\n';
	return n;
}

/* "[06/Dec/2026:06:00:00 +0000]": the shape, and a month name. */
static void expect_stamp(const char *s)
{
	static const char *const months[] = {"Jan", "Feb", "Mar", "Apr",
					     "May", "Jun", "Jul", "Aug",
					     "Sep", "Oct", "Nov", "Dec"};
	const char *shape = "[00/MMM/0000:00:00:00 +0000]";
	bool month = false;

	for (int i = 0; shape[i]; i++) {
		if (shape[i] == '0')
			cr_expect(s[i] >= '0' && s[i] <= '9', "%.28s", s);
		else if (shape[i] != 'M')
			cr_expect_eq(s[i], shape[i], "%.28s", s);
	}
	for (int m = 0; m < 12; m++)
		month |= strncmp(s + 4, months[m], 3) == 0;
	cr_expect(month, "%.28s", s);
}

/* ---- lines arrive --------------------------------------------------- */

struct driver {
	struct keel_task task;
	int i;
	int n; /* lines to log, one per turn */
	struct keel_shield shield;
};

static int lines_step(struct keel_task *t)
{
	struct driver *d = keel_container_of(t, struct driver, task);
	static char path[64];
	struct keel_http_exchange x = {
	    .method = "GET", .path = path, .version = 11, .peer = "127.0.0.1"};

	KEEL_BEGIN(t);
	cr_assert_eq(keel__http_log_start(&g_sh), 0);
	cr_assert_not_null(g_sh.log);
	for (d->i = 0; d->i < d->n; d->i++) {
		snprintf(path, sizeof(path), "/n/%d", d->i);
		keel__http_log(&g_sh, &x, 200, 5, 13999);
		/* Some turns log two: lines join in the buffer. */
		if (d->i % 3 == 0)
			continue;
		KEEL_AWAIT(t, keel_nop(t));
	}
	keel__http_log_stop(&g_sh);
	KEEL_END(t);
}

static KEEL_TASK_TYPE(lines_task, struct driver, task, lines_step);

Test(http_accesslog, lines_arrive_in_order_in_common_log_format, .init = setup,
     .fini = teardown, .timeout = 30)
{
	struct driver *d = kt_spawn(g_sh.loop, &lines_task, 0);
	size_t len;

	d->n = 300;
	kt_loop_run(g_sh.loop);
	/* The log task exited: the shard has no log any more. */
	cr_expect_null(g_sh.log);
	cr_expect_eq(dropped(), 0);

	char *text = drain_pipe(&len);
	const char *line = text;

	cr_assert_eq(count_lines(text), 300, "%s", text);
	for (int i = 0; i < 300; i++) {
		char want[128];
		const char *nl = strchr(line, '\n');

		cr_assert_not_null(nl);
		cr_assert_eq(strncmp(line, "127.0.0.1 - - ", 14), 0, "%.*s",
			     (int)(nl - line), line);
		expect_stamp(line + 14);
		snprintf(want, sizeof(want),
			 " \"GET /n/%d HTTP/1.1\" 200 5 13us\n", i);
		cr_assert_eq(strncmp(line + 42, want, strlen(want)), 0,
			     "line %d: %.*s", i, (int)(nl - line), line);
		line = nl + 1;
	}
	free(text);
}

/* ---- the request's bytes -------------------------------------------- */

static int odd_step(struct keel_task *t)
{
	static const char path[] = "/a\"b\\c\x01\xff d";
	struct keel_http_exchange x10 = {.method = "POST",
					 .path = path,
					 .path_len = sizeof(path) - 1,
					 .query = "q=1&r",
					 .version = 10,
					 .peer = "::1"};
	struct keel_http_exchange nopeer = {
	    .method = "HEAD", .path = "/", .version = 11};
	struct keel_http_exchange refused = {.peer = "127.0.0.1"};
	static char huge[40 * 1024];
	struct keel_http_exchange big = {
	    .method = "GET", .path = huge, .version = 11, .peer = "10.0.0.1"};

	KEEL_BEGIN(t);
	cr_assert_eq(keel__http_log_start(&g_sh), 0);
	keel__http_log(&g_sh, &x10, 404, 0, 999);
	keel__http_log(&g_sh, &nopeer, 200, 123456789012ull, 2500000);
	/* A line longer than a half can never fit: dropped, counted. */
	memset(huge, 'a', sizeof(huge) - 1);
	huge[0] = '/';
	keel__http_log(&g_sh, &big, 200, 1, 1);
	cr_expect_eq(dropped(), 1);
	/* Refused before the request line was whole: no method yet. */
	keel__http_log(&g_sh, &refused, 414, 0, 1000);
	KEEL_AWAIT(t, keel_nop(t));
	keel__http_log_stop(&g_sh);
	KEEL_END(t);
}

static KEEL_TASK_TYPE(odd_task, struct driver, task, odd_step);

Test(http_accesslog, request_bytes_are_escaped_and_a_missing_peer_is_a_dash,
     .init = setup, .fini = teardown, .timeout = 30)
{
	size_t len;

	kt_spawn(g_sh.loop, &odd_task, 0);
	kt_loop_run(g_sh.loop);

	char *text = drain_pipe(&len);
	char *second = strchr(text, '\n');

	cr_assert_eq(count_lines(text), 3, "%s", text);
	cr_expect_eq(strncmp(text, "::1 - - [", 9), 0, "%s", text);
	const char *want =
	    " \"POST /a\\x22b\\x5Cc\\x01\\xFF d?q=1&r HTTP/1.0\" "
	    "404 0 0us\n";

	cr_expect_eq(strncmp(text + 4 + 4 + 28, want, strlen(want)), 0, "%s",
		     text);
	cr_expect_eq(strncmp(second + 1, "- - - [", 7), 0, "%s", text);
	want = " \"HEAD / HTTP/1.1\" 200 123456789012 2500us\n127.0.0.1 - - [";
	cr_expect_eq(strncmp(second + 1 + 6 + 28, want, strlen(want)), 0, "%s",
		     text);
	cr_expect(strstr(text, "] \"-\" 414 0 1us\n"), "%s", text);
	cr_expect_eq(dropped(), 1);
	free(text);
}

/* ---- a pipe nobody reads -------------------------------------------- */

static int g_ticks; /* turns of another task while the log is stuck */

static int ticker_step(struct keel_task *t)
{
	struct driver *d = keel_container_of(t, struct driver, task);

	KEEL_BEGIN(t);
	for (d->i = 0; d->i < 1000; d->i++) {
		KEEL_AWAIT(t, keel_nop(t));
		g_ticks++;
	}
	KEEL_END(t);
}

static KEEL_TASK_TYPE(ticker_task, struct driver, task, ticker_step);

static int flood_step(struct keel_task *t)
{
	struct driver *d = keel_container_of(t, struct driver, task);
	struct keel_http_exchange x = {.method = "GET",
				       .path = "/flood/0123456789abcdef",
				       .version = 11,
				       .peer = "127.0.0.1"};

	KEEL_BEGIN(t);
	cr_assert_eq(keel__http_log_start(&g_sh), 0);
	for (d->i = 0; d->i < d->n; d->i++) {
		keel__http_log(&g_sh, &x, 200, 5, 1000);
		if (d->i % 16 == 0)
			KEEL_AWAIT(t, keel_nop(t));
	}
	/* The pipe (64 KiB) and both halves are full long before this. */
	cr_expect_gt(dropped(), 0);
	keel__http_log_stop(&g_sh);
	KEEL_END(t);
}

static KEEL_TASK_TYPE(flood_task, struct driver, task, flood_step);

Test(http_accesslog, a_log_nobody_reads_drops_lines_and_never_holds_the_loop,
     .init = setup, .fini = teardown, .timeout = 60)
{
	struct driver *d = kt_spawn(g_sh.loop, &flood_task, 0);
	size_t len;

	d->n = 20000; /* about 1.6 MB of lines */
	g_ticks = 0;
	kt_spawn(g_sh.loop, &ticker_task, 0);
	/* Ends: the log task gives up its stuck write after the stop's
	 * flush deadline. */
	kt_loop_run(g_sh.loop);
	cr_expect_eq(g_ticks, 1000);
	cr_expect_null(g_sh.log);

	char *text = drain_pipe(&len);
	unsigned got = count_lines(text);

	/* Every line either arrived or was counted; a write cut off by the
	 * deadline counts its whole half, so the sum may exceed. */
	cr_expect_gt(got, 0);
	cr_expect_lt(got, 20000);
	cr_expect_geq(got + dropped(), 20000, "got %u dropped %llu", got,
		      (unsigned long long)dropped());
	free(text);
}

/* ---- a shutdown does not lose the last lines ------------------------- */

static int shutdown_step(struct keel_task *t)
{
	struct driver *d = keel_container_of(t, struct driver, task);
	struct keel_http_exchange x = {.method = "GET",
				       .path = "/before",
				       .version = 11,
				       .peer = "1.2.3.4"};

	KEEL_BEGIN(t);
	cr_assert_eq(keel__http_log_start(&g_sh), 0);
	keel__http_log(&g_sh, &x, 200, 0, 0);
	KEEL_AWAIT(t, keel_nop(t));
	/* What keel_runtime_shutdown() does to each loop; the server's drain
	 * goes on and its requests still log. */
	keel_token_cancel(keel_loop_token(keel_task_loop(t)));
	x.path = "/during";
	keel__http_log(&g_sh, &x, 200, 0, 0);
	cr_assert_eq(keel_shield_begin(t, &d->shield, KT_MS(10000)), 0);
	for (d->i = 0; d->i < 10; d->i++)
		KEEL_AWAIT(t, keel_nop(t));
	x.path = "/last";
	keel__http_log(&g_sh, &x, 503, 0, 0);
	keel__http_log_stop(&g_sh);
	keel_shield_end(t, &d->shield);
	KEEL_END(t);
}

static KEEL_TASK_TYPE(shutdown_task, struct driver, task, shutdown_step);

Test(http_accesslog, lines_logged_during_a_shutdown_are_written, .init = setup,
     .fini = teardown, .timeout = 30)
{
	size_t len;

	kt_spawn(g_sh.loop, &shutdown_task, 0);
	kt_loop_run(g_sh.loop);

	char *text = drain_pipe(&len);

	cr_expect_eq(count_lines(text), 3, "%s", text);
	cr_expect(strstr(text, "\"GET /before HTTP/1.1\" 200"), "%s", text);
	cr_expect(strstr(text, "\"GET /during HTTP/1.1\" 200"), "%s", text);
	cr_expect(strstr(text, "\"GET /last HTTP/1.1\" 503"), "%s", text);
	cr_expect_eq(dropped(), 0);
	cr_expect_null(g_sh.log);
	free(text);
}

/* ---- no log --------------------------------------------------------- */

Test(http_accesslog, no_fd_no_task_and_logging_is_a_no_op, .init = setup,
     .fini = teardown)
{
	struct keel_http_exchange x = {.method = "GET", .path = "/"};

	g_srv.opts.access_log_fd = 0;
	cr_expect_eq(keel__http_log_start(&g_sh), 0);
	cr_expect_null(g_sh.log);
	keel__http_log(&g_sh, &x, 200, 0, 0);
	keel__http_log_stop(&g_sh);
	cr_expect_eq(dropped(), 0);
	kt_loop_run(g_sh.loop); /* nothing to run: returns */
}
