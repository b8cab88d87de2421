/* SPDX-License-Identifier: MIT */
/*
 * test_http_files.c: the static-file responder's pure parts (http/files.h):
 * the request path's decoding and the checks that keep it beneath the
 * root, Range (one range, suffix, open-ended, unsatisfiable, and what
 * nginx ignores), entity tags and If-None-Match's weak comparison, HTTP
 * dates in the three forms RFC 9110 has a recipient accept, and content
 * types by extension. Then end to end, a server on a loop thread and a
 * plain client on loopback: validators, 304s, ranges, HEAD, large files
 * by splice, directories, what must stay outside the root, the cache's
 * revalidation and eviction, and clients that leave mid-file.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <keel.h>
#include <keel/http.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "files.h"
#include "helpers/keel_test.h"

/* ---- the path ----------------------------------------------------------- */

static int decode(const char *in, char *out, size_t cap)
{
	return keel__http_path_decode(in, strlen(in), true, out, cap);
}

static void expect_path(const char *in, const char *want)
{
	char out[256];
	int n = decode(in, out, sizeof(out));

	cr_expect_eq(n, (int)strlen(want), "%s: %d", in, n);
	if (n >= 0)
		cr_expect_str_eq(out, want, "%s", in);
}

Test(http_files, path_is_relative_with_empty_and_dot_segments_dropped)
{
	expect_path("/index.html", "index.html");
	expect_path("a/b.txt", "a/b.txt");
	expect_path("//a///b", "a/b");
	expect_path("/./a/./b/.", "a/b/");
	expect_path("", "");
	expect_path("/", "");
	expect_path("/dir/", "dir/");
	expect_path("/.../x", ".../x");
	expect_path("/..a/b..", "..a/b..");
}

Test(http_files, path_is_percent_decoded_in_both_cases)
{
	expect_path("/a%20b", "a b");
	expect_path("/%41%6a%4A", "AjJ");
	expect_path("/a%2fb", "a/b");
	expect_path("/%2e/x", "x");
}

Test(http_files, path_refuses_dotdot_nul_and_bad_escapes)
{
	static const char *const bad[] = {
	    "/..",    "/../etc/passwd", "/a/../../b", "/a/..",
	    "..",     "/%2e%2e/x",	"/%2E%2e",    "/a%2f..%2fb",
	    "/.%2e/", "/a%00b",		"/a%00",      "/%",
	    "/%4",    "/%zz",		"/%4g",	      "/x%",
	};
	char out[64];

	for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++)
		cr_expect_eq(decode(bad[i], out, sizeof(out)), -EINVAL, "%s",
			     bad[i]);
	/* a raw NUL inside the given length */
	cr_expect_eq(keel__http_path_decode("/a\0b", 4, true, out, sizeof(out)),
		     -EINVAL);
}

Test(http_files, file_name_is_taken_as_is_but_still_checked)
{
	char out[64];

	cr_expect_eq(
	    keel__http_path_decode("a%41/b", 6, false, out, sizeof(out)), 6);
	cr_expect_str_eq(out, "a%41/b");
	cr_expect_eq(
	    keel__http_path_decode("a/../b", 6, false, out, sizeof(out)),
	    -EINVAL);
	cr_expect_eq(
	    keel__http_path_decode("%2e%2e", 6, false, out, sizeof(out)), 6,
	    "a file named %%2e%%2e is no escape");
}

Test(http_files, path_longer_than_the_buffer_is_enametoolong)
{
	char out[8];

	cr_expect_eq(decode("/abcdefg", out, sizeof(out)), 7);
	cr_expect_eq(decode("/abcdefgh", out, sizeof(out)), -ENAMETOOLONG);
	cr_expect_eq(decode("/abc/defg", out, sizeof(out)), -ENAMETOOLONG);
	cr_expect_eq(decode("/abcdef/", out, sizeof(out)), 7);
	cr_expect_eq(decode("/abcdefg/", out, sizeof(out)), -ENAMETOOLONG);
	cr_expect_eq(decode("/a", out, 0), -ENAMETOOLONG);
}

/* ---- Range ----------------------------------------------------------------
 */

static int range(const char *v, uint64_t size, uint64_t *a, uint64_t *b)
{
	*a = *b = 12345;
	return keel__http_range_parse(v, strlen(v), size, a, b);
}

Test(http_files, range_first_last_open_and_suffix)
{
	uint64_t a, b;

	cr_expect_eq(range("bytes=0-99", 1000, &a, &b), 1);
	cr_expect(a == 0 && b == 99);
	cr_expect_eq(range("bytes=500-", 1000, &a, &b), 1);
	cr_expect(a == 500 && b == 999);
	cr_expect_eq(range("bytes=-100", 1000, &a, &b), 1);
	cr_expect(a == 900 && b == 999);
	cr_expect_eq(range("bytes=999-999", 1000, &a, &b), 1);
	cr_expect(a == 999 && b == 999);
	cr_expect_eq(range("Bytes=1-2", 1000, &a, &b), 1);
	cr_expect(a == 1 && b == 2);
	cr_expect_eq(range(" bytes= 3-4 ", 1000, &a, &b), 1);
	cr_expect(a == 3 && b == 4);
}

Test(http_files, range_past_the_end_is_clamped_or_whole)
{
	uint64_t a, b;

	cr_expect_eq(range("bytes=10-5000", 1000, &a, &b), 1);
	cr_expect(a == 10 && b == 999);
	cr_expect_eq(range("bytes=-5000", 1000, &a, &b), 1);
	cr_expect(a == 0 && b == 999);
	cr_expect_eq(range("bytes=0-18446744073709551615", 1000, &a, &b), 0,
		     "a number over 2^63 does not parse: ignored");
}

Test(http_files, range_unsatisfiable_is_416)
{
	uint64_t a, b;

	cr_expect_eq(range("bytes=1000-", 1000, &a, &b), -1);
	cr_expect_eq(range("bytes=1000-2000", 1000, &a, &b), -1);
	cr_expect_eq(range("bytes=-0", 1000, &a, &b), -1);
	cr_expect_eq(range("bytes=0-", 0, &a, &b), -1);
	cr_expect_eq(range("bytes=-5", 0, &a, &b), -1);
}

Test(http_files, range_several_or_garbage_is_ignored)
{
	static const char *const ignored[] = {
	    "bytes=0-1,5-6",
	    "bytes=0-1, 5-6",
	    "bytes=-1,-2",
	    "items=0-1",
	    "bytes=",
	    "bytes=-",
	    "bytes=a-b",
	    "bytes=5-1",
	    "bytes=1-2x",
	    "bytes 0-1",
	    "",
	    "bytes=--1",
	    "bytes=1",
	    "bytes=0x1-2",
	};
	uint64_t a, b;

	for (size_t i = 0; i < sizeof(ignored) / sizeof(*ignored); i++)
		cr_expect_eq(range(ignored[i], 1000, &a, &b), 0, "%s",
			     ignored[i]);
}

Test(http_files, range_reads_only_the_given_length)
{
	uint64_t a, b;

	/* the value is not NUL-terminated: what follows must not count */
	cr_expect_eq(keel__http_range_parse("bytes=0-9,1-2", 9, 100, &a, &b),
		     1);
	cr_expect(a == 0 && b == 9);
}

/* ---- entity tags ------------------------------------------------------ */

static bool inm(const char *v, const char *etag)
{
	return keel__http_etag_match(v, strlen(v), etag, strlen(etag));
}

Test(http_files, etag_is_mtime_ns_and_size_in_hex)
{
	char buf[64];
	size_t n =
	    keel__http_etag(buf, sizeof(buf), 0x1234567890abcdefull, 4096);

	cr_expect_str_eq(buf, "\"1234567890abcdef-1000\"");
	cr_expect_eq(n, strlen(buf));
	n = keel__http_etag(buf, sizeof(buf), UINT64_MAX, UINT64_MAX);
	cr_expect_leq(n, 36);
}

Test(http_files, if_none_match_weak_comparison_lists_and_star)
{
	const char *e = "\"5f-10\"";

	cr_expect(inm("\"5f-10\"", e));
	cr_expect(inm("W/\"5f-10\"", e));
	cr_expect(inm("\"x\", W/\"5f-10\"", e));
	cr_expect(inm("\"x\",\"5f-10\"", e));
	cr_expect(inm(" \"a\" ,\t\"b\" , \"5f-10\" ", e));
	cr_expect(inm("*", e));
	cr_expect(inm("\"5f-10\"", "W/\"5f-10\""));
	cr_expect_not(inm("\"5f-11\"", e));
	cr_expect_not(inm("\"5f-10", e));
	cr_expect_not(inm("5f-10", e));
	cr_expect_not(inm("", e));
	cr_expect_not(inm("\"a\" \"5f-10\"", e), "members need a comma");
	cr_expect_not(inm("w/\"5f-10\"", e), "W/ is case-sensitive");
	cr_expect_not(inm("\"5f-10x\"", e));
}

/* ---- dates -------------------------------------------------------------- */

static int date(const char *v, int64_t *t)
{
	return keel__http_date_parse(v, strlen(v), t);
}

Test(http_files, date_formats_imf_fixdate)
{
	char buf[30];

	keel__http_date_format(buf, 784111777);
	cr_expect_str_eq(buf, "Sun, 06 Nov 1994 08:49:37 GMT");
	keel__http_date_format(buf, 0);
	cr_expect_str_eq(buf, "Thu, 01 Jan 1970 00:00:00 GMT");
	keel__http_date_format(buf, 951782400); /* a leap day */
	cr_expect_str_eq(buf, "Tue, 29 Feb 2000 00:00:00 GMT");
	keel__http_date_format(buf, 4102444799);
	cr_expect_str_eq(buf, "Thu, 31 Dec 2099 23:59:59 GMT");
	keel__http_date_format(buf, INT64_MAX); /* four digits: clamped */
	cr_expect_str_eq(buf, "Fri, 31 Dec 9999 23:59:59 GMT");
	keel__http_date_format(buf, INT64_MIN);
	cr_expect_str_eq(buf, "Sat, 01 Jan 0000 00:00:00 GMT");
}

Test(http_files, date_format_agrees_with_gmtime_for_many_seconds)
{
	static const char *const wd[] = {"Sun", "Mon", "Tue", "Wed",
					 "Thu", "Fri", "Sat"};
	static const char *const mo[] = {"Jan", "Feb", "Mar", "Apr",
					 "May", "Jun", "Jul", "Aug",
					 "Sep", "Oct", "Nov", "Dec"};

	for (int64_t t = 0; t < 4102444800; t += 86400 * 37 + 3599) {
		char buf[30], want[64];
		time_t tt = (time_t)t;
		struct tm tm;
		int64_t back;

		gmtime_r(&tt, &tm);
		snprintf(want, sizeof(want),
			 "%s, %02d %s %04d %02d:%02d:%02d GMT", wd[tm.tm_wday],
			 tm.tm_mday, mo[tm.tm_mon], tm.tm_year + 1900,
			 tm.tm_hour, tm.tm_min, tm.tm_sec);
		keel__http_date_format(buf, t);
		cr_assert_str_eq(buf, want);
		cr_assert_eq(date(buf, &back), 0, "%s", buf);
		cr_assert_eq(back, t, "%s", buf);
	}
}

Test(http_files, date_parses_the_three_forms_rfc9110_accepts)
{
	int64_t t = 0;

	cr_expect_eq(date("Sun, 06 Nov 1994 08:49:37 GMT", &t), 0);
	cr_expect_eq(t, 784111777);
	t = 0;
	cr_expect_eq(date("Sunday, 06-Nov-94 08:49:37 GMT", &t), 0);
	cr_expect_eq(t, 784111777);
	t = 0;
	cr_expect_eq(date("Sun Nov  6 08:49:37 1994", &t), 0);
	cr_expect_eq(t, 784111777);
	cr_expect_eq(date("Thursday, 01-Jan-26 00:00:00 GMT", &t), 0);
	cr_expect_eq(t, 1767225600, "two-digit 26 is 2026");
	cr_expect_eq(date("Thu Jan 15 10:00:00 2026", &t), 0);
	cr_expect_eq(t, 1768471200);
}

Test(http_files, date_garbage_is_einval)
{
	static const char *const bad[] = {
	    "",
	    "Sun",
	    "Sun, 06 Nov 1994 08:49:37",
	    "Sun, 06 Nov 1994 08:49:37 UTC",
	    "Sun, 6 Nov 1994 08:49:37 GMT",
	    "Sun, 06 Nob 1994 08:49:37 GMT",
	    "Sun, 06 Nov 1994 24:49:37 GMT",
	    "Sun, 06 Nov 1994 08:60:37 GMT",
	    "Sun, 32 Nov 1994 08:49:37 GMT",
	    "Sun, 06 Nov 1994 08:49:37 GMTx",
	    "Sun, 06 Nov 94 08:49:37 GMT",
	    "Xyz, 06 Nov 1994 08:49:37 GMT",
	    "Sunday, 06-Nov-1994 08:49:37 GMT",
	    "Sunda, 06-Nov-94 08:49:37 GMT",
	    "Sun Nov 6 08:49:37 1994",
	    "Sun Nov  6 08:49:37 94",
	    "1994-11-06T08:49:37Z",
	};
	int64_t t;

	for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++)
		cr_expect_eq(date(bad[i], &t), -EINVAL, "%s", bad[i]);
	/* only the given length counts */
	cr_expect_eq(
	    keel__http_date_parse("Sun, 06 Nov 1994 08:49:37 GMT", 28, &t),
	    -EINVAL);
}

/* ---- content types ------------------------------------------------------ */

static const char *ctype(const char *path)
{
	return keel__http_content_type(path, strlen(path));
}

Test(http_files, content_type_by_extension_case_insensitive)
{
	cr_expect_str_eq(ctype("index.html"), "text/html; charset=utf-8");
	cr_expect_str_eq(ctype("a/B.HTML"), "text/html; charset=utf-8");
	cr_expect_str_eq(ctype("s.css"), "text/css; charset=utf-8");
	cr_expect_str_eq(ctype("app.js"), "text/javascript; charset=utf-8");
	cr_expect_str_eq(ctype("x.json"), "application/json");
	cr_expect_str_eq(ctype("r.txt"), "text/plain; charset=utf-8");
	cr_expect_str_eq(ctype("i.png"), "image/png");
	cr_expect_str_eq(ctype("i.jpg"), "image/jpeg");
	cr_expect_str_eq(ctype("i.jpeg"), "image/jpeg");
	cr_expect_str_eq(ctype("i.gif"), "image/gif");
	cr_expect_str_eq(ctype("i.svg"), "image/svg+xml");
	cr_expect_str_eq(ctype("favicon.ico"), "image/x-icon");
	cr_expect_str_eq(ctype("m.wasm"), "application/wasm");
	cr_expect_str_eq(ctype("d.pdf"), "application/pdf");
}

Test(http_files, content_type_default_is_octet_stream)
{
	cr_expect_str_eq(ctype("README"), "application/octet-stream");
	cr_expect_str_eq(ctype("a.tar.gz"), "application/octet-stream");
	cr_expect_str_eq(ctype("dir.html/file"), "application/octet-stream");
	cr_expect_str_eq(ctype("x.htmlx"), "application/octet-stream");
	cr_expect_str_eq(ctype("x."), "application/octet-stream");
	cr_expect_str_eq(ctype(""), "application/octet-stream");
}

/* ---- end to end: a server on a loop thread, a blocking client ------------ */

/*
 * The server runs on its own thread (a loop is created, run and destroyed
 * on one thread); the test's thread is a plain HTTP/1.1 client on one
 * keep-alive connection, so a 304 or HEAD that wrongly carried a body
 * would break the next response's framing.
 */
struct server {
	char dir[256];
	int dirfd; /* the handler's keel_http_send_file() */
	struct keel_http_server *srv;
	pthread_t thread;
	atomic_int ready; /* 1: started, -errno: failed */
};

static struct server S;

/* GET /send: keel_http_send_file() from a handler task, any method. */
struct send_handler {
	struct keel_http_handler h;
};

static int send_step(struct keel_task *t)
{
	struct send_handler *s =
	    keel_container_of(t, struct send_handler, h.task);

	KEEL_BEGIN(t);
	KEEL_AWAIT_CALL(
	    t, keel_http_send_file(t, s->h.x, S.dirfd, "dir/index.html"));
	KEEL_END(t);
}

static KEEL_HTTP_HANDLER_TYPE(send_type, struct send_handler, h, send_step);

static void *server_thread(void *arg)
{
	struct server *s = arg;
	struct keel_loop *loop;
	int err = keel_loop_create(&loop, NULL);

	if (!err)
		err = keel_http_server_start_loop(s->srv, loop);
	atomic_store(&s->ready, err ? err : 1);
	if (!err)
		keel_loop_run(loop);
	if (loop)
		keel_loop_destroy(loop);
	return NULL;
}

static void put_file(const char *name, const void *data, size_t len)
{
	char path[512];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", S.dir, name);
	f = fopen(path, "wb");
	cr_assert_not_null(f, "%s: %s", path, strerror(errno));
	cr_assert_eq(fwrite(data, 1, len, f), len);
	cr_assert_eq(fclose(f), 0);
}

static void put_pattern(const char *name, size_t len, unsigned seed)
{
	char *buf = malloc(len);

	cr_assert_not_null(buf);
	kt_pattern_fill(buf, len, 0, seed);
	put_file(name, buf, len);
	free(buf);
}

static void server_start(void)
{
	struct keel_http_opts opts = {.port = 0};
	char path[512];

	signal(SIGPIPE, SIG_IGN); /* the client closes early in one test */
	kt_tmpdir_make(S.dir, sizeof(S.dir));
	put_file("index.html", "<p>root</p>\n", 12);
	put_file("hello.txt", "hello\n", 6);
	put_file("empty.txt", "", 0);
	put_pattern("small.bin", 4096, 1);
	put_pattern("big.bin", 1 << 20, 2);
	put_pattern("huge.bin", 16 << 20, 3);
	snprintf(path, sizeof(path), "%s/dir", S.dir);
	cr_assert_eq(mkdir(path, 0755), 0);
	put_file("dir/index.html", "<p>dir</p>\n", 11);
	snprintf(path, sizeof(path), "%s/empty", S.dir);
	cr_assert_eq(mkdir(path, 0755), 0);
	snprintf(path, sizeof(path), "%s/fifo", S.dir);
	cr_assert_eq(mkfifo(path, 0644), 0);
	snprintf(path, sizeof(path), "%s/out", S.dir);
	cr_assert_eq(symlink("/etc/hostname", path), 0);

	S.dirfd = open(S.dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
	cr_assert_geq(S.dirfd, 0);
	cr_assert_eq(keel_http_server_new(&opts, &S.srv), 0);
	cr_assert_eq(keel_http_route_task(S.srv, NULL, "/send", KEEL_HTTP_EXACT,
					  &send_type, NULL),
		     0);
	cr_assert_eq(keel_http_route_files(S.srv, "/", S.dir), 0);
	atomic_store(&S.ready, 0);
	cr_assert_eq(pthread_create(&S.thread, NULL, server_thread, &S), 0);
	while (!atomic_load(&S.ready))
		usleep(1000);
	cr_assert_eq(atomic_load(&S.ready), 1, "start: %d",
		     atomic_load(&S.ready));
}

static void server_stop(void)
{
	keel_http_server_drain(S.srv);
	pthread_join(S.thread, NULL);
	keel_http_server_free(S.srv);
	close(S.dirfd);
	kt_tmpdir_remove(S.dir);
}

static int client(void)
{
	struct sockaddr_storage ss;
	socklen_t len;
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct timeval tv = {.tv_sec = 10}; /* catches a hang, not a time */

	cr_assert_geq(fd, 0);
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	kt_loopback_addr((uint16_t)keel_http_server_port(S.srv), &ss, &len);
	cr_assert_eq(connect(fd, (struct sockaddr *)&ss, len), 0, "%s",
		     strerror(errno));
	return fd;
}

struct response {
	int status;
	char head[4096];
	char *body;
	size_t len;
};

/* The value of header `name` in r->head ("" if none), into a static. */
static const char *hdr(const struct response *r, const char *name)
{
	static char v[256];
	size_t n = strlen(name);
	const char *p = r->head;

	v[0] = '\0';
	while ((p = strstr(p, "\r\n")) != NULL) {
		p += 2;
		if (!strncasecmp(p, name, n) && p[n] == ':') {
			const char *e = strstr(p, "\r\n");

			p += n + 1;
			while (*p == ' ')
				p++;
			snprintf(v, sizeof(v), "%.*s", (int)(e - p), p);
			break;
		}
	}
	return v;
}

/* Send a request (`extra` header lines end in \r\n) and read one response;
 * the body is read by Content-Length unless `no_body` (HEAD, 304). */
static void request(int fd, const char *method, const char *target,
		    const char *extra, bool no_body, struct response *r)
{
	char req[2048];
	size_t have = 0, want;
	char *end;
	int n;

	n = snprintf(req, sizeof(req), "%s %s HTTP/1.1\r\nHost: t\r\n%s\r\n",
		     method, target, extra ? extra : "");
	cr_assert_eq(send(fd, req, (size_t)n, MSG_NOSIGNAL), n);
	memset(r, 0, sizeof(*r));
	/* One byte at a time up to the blank line: nothing of the body or
	 * the next response is consumed with the head. */
	while (!(end = strstr(r->head, "\r\n\r\n"))) {
		cr_assert_lt(have, sizeof(r->head) - 1);
		cr_assert_eq(recv(fd, r->head + have, 1, 0), 1,
			     "%s %s: head cut at %zu: %s", method, target, have,
			     r->head);
		have++;
	}
	cr_assert_eq(sscanf(r->head, "HTTP/1.1 %d", &r->status), 1);
	want = no_body ? 0 : strtoull(hdr(r, "Content-Length"), NULL, 10);
	r->body = malloc(want + 1);
	cr_assert_not_null(r->body);
	while (r->len < want) {
		ssize_t k = recv(fd, r->body + r->len, want - r->len, 0);

		cr_assert_gt(k, 0, "%s %s: body cut at %zu of %zu", method,
			     target, r->len, want);
		r->len += (size_t)k;
	}
	r->body[r->len] = '\0';
}

static void response_free(struct response *r)
{
	free(r->body);
	r->body = NULL;
}

/* GET on a fresh connection: the status. */
static int status_of(const char *target)
{
	struct response r;
	int fd = client(), status;

	request(fd, "GET", target, NULL, false, &r);
	status = r.status;
	response_free(&r);
	close(fd);
	return status;
}

TestSuite(http_files_server, .init = server_start, .fini = server_stop,
	  .timeout = 60);

Test(http_files_server, small_file_has_its_bytes_validators_and_type)
{
	struct response r;
	int fd = client();

	request(fd, "GET", "/small.bin", NULL, false, &r);
	cr_expect_eq(r.status, 200);
	cr_expect_eq(r.len, 4096);
	cr_expect_eq(kt_pattern_mismatch(r.body, r.len, 0, 1), SIZE_MAX);
	cr_expect_str_eq(hdr(&r, "Content-Type"), "application/octet-stream");
	cr_expect_str_eq(hdr(&r, "Accept-Ranges"), "bytes");
	cr_expect_eq(hdr(&r, "ETag")[0], '"');
	cr_expect_str_neq(hdr(&r, "Last-Modified"), "");
	response_free(&r);
	/* again on the same connection: from the cache, the same answer */
	request(fd, "GET", "/hello.txt", NULL, false, &r);
	cr_expect_eq(r.status, 200);
	cr_expect_str_eq(r.body, "hello\n");
	cr_expect_str_eq(hdr(&r, "Content-Type"), "text/plain; charset=utf-8");
	response_free(&r);
	request(fd, "GET", "/hello.txt", NULL, false, &r);
	cr_expect_str_eq(r.body, "hello\n");
	response_free(&r);
	close(fd);
}

Test(http_files_server, large_file_by_splice_is_whole_and_in_order)
{
	struct response r;
	int fd = client();

	for (int i = 0; i < 3; i++) { /* the pooled pipe is reused */
		request(fd, "GET", "/big.bin", NULL, false, &r);
		cr_expect_eq(r.status, 200);
		cr_assert_eq(r.len, 1 << 20);
		cr_expect_eq(kt_pattern_mismatch(r.body, r.len, 0, 2),
			     SIZE_MAX);
		response_free(&r);
	}
	request(fd, "GET", "/hello.txt", NULL, false, &r);
	cr_expect_str_eq(r.body, "hello\n", "the connection goes on");
	response_free(&r);
	close(fd);
}

Test(http_files_server, empty_file_is_200_with_no_body_and_416_for_a_range)
{
	struct response r;
	int fd = client();

	request(fd, "GET", "/empty.txt", NULL, false, &r);
	cr_expect_eq(r.status, 200);
	cr_expect_str_eq(hdr(&r, "Content-Length"), "0");
	response_free(&r);
	request(fd, "GET", "/empty.txt", "Range: bytes=0-\r\n", false, &r);
	cr_expect_eq(r.status, 416);
	cr_expect_str_eq(hdr(&r, "Content-Range"), "bytes */0");
	response_free(&r);
	request(fd, "GET", "/hello.txt", NULL, false, &r);
	cr_expect_str_eq(r.body, "hello\n");
	response_free(&r);
	close(fd);
}

Test(http_files_server, head_has_the_length_and_no_body)
{
	struct response r;
	int fd = client();

	request(fd, "HEAD", "/big.bin", NULL, true, &r);
	cr_expect_eq(r.status, 200);
	cr_expect_str_eq(hdr(&r, "Content-Length"), "1048576");
	response_free(&r);
	request(fd, "HEAD", "/small.bin", NULL, true, &r);
	cr_expect_str_eq(hdr(&r, "Content-Length"), "4096");
	response_free(&r);
	request(fd, "GET", "/hello.txt", NULL, false, &r);
	cr_expect_str_eq(r.body, "hello\n", "no stray body before this");
	response_free(&r);
	close(fd);
}

Test(http_files_server, if_none_match_and_if_modified_since_give_304)
{
	char etag[128], lm[128], line[512];
	struct response r;
	int fd = client();

	request(fd, "GET", "/small.bin", NULL, false, &r);
	snprintf(etag, sizeof(etag), "%s", hdr(&r, "ETag"));
	snprintf(lm, sizeof(lm), "%s", hdr(&r, "Last-Modified"));
	response_free(&r);

	snprintf(line, sizeof(line), "If-None-Match: %s\r\n", etag);
	request(fd, "GET", "/small.bin", line, true, &r);
	cr_expect_eq(r.status, 304);
	cr_expect_str_eq(hdr(&r, "ETag"), etag);
	response_free(&r);
	snprintf(line, sizeof(line), "If-None-Match: \"x\", W/%s\r\n", etag);
	request(fd, "GET", "/small.bin", line, true, &r);
	cr_expect_eq(r.status, 304, "a list, weak comparison");
	response_free(&r);
	request(fd, "GET", "/small.bin", "If-None-Match: *\r\n", true, &r);
	cr_expect_eq(r.status, 304);
	response_free(&r);
	snprintf(line, sizeof(line), "If-Modified-Since: %s\r\n", lm);
	request(fd, "GET", "/small.bin", line, true, &r);
	cr_expect_eq(r.status, 304);
	response_free(&r);
	request(fd, "GET", "/small.bin",
		"If-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT\r\n", false,
		&r);
	cr_expect_eq(r.status, 200, "modified since 1994");
	cr_expect_eq(r.len, 4096);
	response_free(&r);
	snprintf(line, sizeof(line),
		 "If-None-Match: \"other\"\r\nIf-Modified-Since: %s\r\n", lm);
	request(fd, "GET", "/small.bin", line, false, &r);
	cr_expect_eq(r.status, 200, "If-Modified-Since only without INM");
	cr_expect_eq(r.len, 4096);
	response_free(&r);
	close(fd);
}

Test(http_files_server, one_range_is_206_past_the_end_416_several_200)
{
	struct response r;
	int fd = client();

	request(fd, "GET", "/small.bin", "Range: bytes=100-199\r\n", false, &r);
	cr_expect_eq(r.status, 206);
	cr_expect_str_eq(hdr(&r, "Content-Range"), "bytes 100-199/4096");
	cr_expect_eq(r.len, 100);
	cr_expect_eq(kt_pattern_mismatch(r.body, r.len, 100, 1), SIZE_MAX);
	response_free(&r);
	request(fd, "GET", "/big.bin", "Range: bytes=-10\r\n", false, &r);
	cr_expect_eq(r.status, 206);
	cr_expect_str_eq(hdr(&r, "Content-Range"),
			 "bytes 1048566-1048575/1048576");
	cr_expect_eq(kt_pattern_mismatch(r.body, r.len, 1048566, 2), SIZE_MAX);
	response_free(&r);
	request(fd, "GET", "/big.bin", "Range: bytes=1000000-\r\n", false, &r);
	cr_expect_eq(r.status, 206);
	cr_expect_eq(r.len, 48576);
	cr_expect_eq(kt_pattern_mismatch(r.body, r.len, 1000000, 2), SIZE_MAX);
	response_free(&r);
	request(fd, "GET", "/small.bin", "Range: bytes=4096-\r\n", false, &r);
	cr_expect_eq(r.status, 416);
	cr_expect_str_eq(hdr(&r, "Content-Range"), "bytes */4096");
	response_free(&r);
	request(fd, "GET", "/small.bin", "Range: bytes=0-1,5-6\r\n", false, &r);
	cr_expect_eq(r.status, 200);
	cr_expect_eq(r.len, 4096);
	response_free(&r);
	request(fd, "GET", "/small.bin", "Range: lines=1-2\r\n", false, &r);
	cr_expect_eq(r.status, 200);
	response_free(&r);
	close(fd);
}

Test(http_files_server, directories_serve_their_index_or_403)
{
	struct response r;
	int fd = client();

	request(fd, "GET", "/dir/", NULL, false, &r);
	cr_expect_eq(r.status, 200);
	cr_expect_str_eq(r.body, "<p>dir</p>\n");
	cr_expect_str_eq(hdr(&r, "Content-Type"), "text/html; charset=utf-8");
	response_free(&r);
	request(fd, "GET", "/", NULL, false, &r);
	cr_expect_eq(r.status, 200);
	cr_expect_str_eq(r.body, "<p>root</p>\n");
	response_free(&r);
	close(fd);
	cr_expect_eq(status_of("/empty/"), 403);
	cr_expect_eq(status_of("/hello.txt/"), 404, "a file is no directory");
}

Test(http_files_server, nothing_outside_the_root_and_nothing_but_files)
{
	cr_expect_eq(status_of("/missing"), 404);
	cr_expect_eq(status_of("/../etc/passwd"), 400);
	cr_expect_eq(status_of("/dir/../../etc/passwd"), 400);
	cr_expect_eq(status_of("/%2e%2e/etc/passwd"), 400);
	cr_expect_eq(status_of("/dir/%2E%2E/hello.txt"), 400);
	cr_expect_eq(status_of("/hello.txt%00.html"), 400);
	cr_expect_eq(status_of("/hel%6co.txt"), 200, "decoded");
	cr_expect_eq(status_of("/out"), 403, "a symlink out of the root");
	cr_expect_eq(status_of("/fifo"), 403, "not a regular file");
}

Test(http_files_server, send_file_from_a_handler_task)
{
	struct response r;
	int fd = client();

	request(fd, "GET", "/send", NULL, false, &r);
	cr_expect_eq(r.status, 200);
	cr_expect_str_eq(r.body, "<p>dir</p>\n");
	cr_expect_str_eq(hdr(&r, "Content-Type"), "text/html; charset=utf-8");
	response_free(&r);
	request(fd, "HEAD", "/send", NULL, true, &r);
	cr_expect_eq(r.status, 200);
	cr_expect_str_eq(hdr(&r, "Content-Length"), "11");
	response_free(&r);
	request(fd, "DELETE", "/send", NULL, false, &r);
	cr_expect_eq(r.status, 405);
	cr_expect_str_eq(hdr(&r, "Allow"), "GET, HEAD");
	response_free(&r);
	request(fd, "GET", "/send", NULL, false, &r);
	cr_expect_eq(r.status, 200, "the connection goes on");
	response_free(&r);
	close(fd);
}

Test(http_files_server, other_methods_on_a_files_route_are_405)
{
	struct response r;
	int fd = client();

	request(fd, "DELETE", "/hello.txt", NULL, false, &r);
	cr_expect_eq(r.status, 405);
	response_free(&r);
	close(fd);
}

Test(http_files_server, a_changed_file_is_seen_after_the_cache_s_second)
{
	struct response r;
	int fd = client();

	put_file("change.txt", "one\n", 4);
	request(fd, "GET", "/change.txt", NULL, false, &r);
	cr_expect_str_eq(r.body, "one\n");
	response_free(&r);
	put_file("change.txt", "two!!\n", 6);
	/* Past the cache's validity (1 s): not a timing assertion, the
	 * answer must be the new file whatever the machine's speed. */
	usleep(1200 * 1000);
	request(fd, "GET", "/change.txt", NULL, false, &r);
	cr_expect_str_eq(r.body, "two!!\n");
	response_free(&r);
	close(fd);
}

Test(http_files_server, more_files_than_the_cache_holds)
{
	char name[64], want[64];
	struct response r;
	int fd = client();

	for (int i = 0; i < 300; i++) {
		snprintf(name, sizeof(name), "m%d.txt", i);
		snprintf(want, sizeof(want), "file %d\n", i);
		put_file(name, want, strlen(want));
	}
	for (int round = 0; round < 2; round++)
		for (int i = 0; i < 300; i++) {
			snprintf(name, sizeof(name), "/m%d.txt", i);
			snprintf(want, sizeof(want), "file %d\n", i);
			request(fd, "GET", name, NULL, false, &r);
			cr_assert_str_eq(r.body, want);
			response_free(&r);
		}
	close(fd);
}

Test(http_files_server, a_client_gone_mid_file_leaves_no_bytes_for_the_next)
{
	struct response r;
	char buf[1024];
	int rcv = 4096;

	/* Clients that read a little of a large file and close: their
	 * splices break off with bytes still in the pipe, which must not be
	 * pooled (the next response would send them). */
	for (int i = 0; i < 4; i++) {
		int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		struct sockaddr_storage ss;
		socklen_t len;
		const char *req = "GET /huge.bin HTTP/1.1\r\nHost: t\r\n\r\n";

		setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof(rcv));
		kt_loopback_addr((uint16_t)keel_http_server_port(S.srv), &ss,
				 &len);
		cr_assert_eq(connect(fd, (struct sockaddr *)&ss, len), 0);
		cr_assert_eq(send(fd, req, strlen(req), MSG_NOSIGNAL),
			     (ssize_t)strlen(req));
		cr_assert_gt(recv(fd, buf, sizeof(buf), MSG_WAITALL), 0);
		close(fd);
	}
	for (int i = 0; i < 3; i++) {
		int fd = client();

		request(fd, "GET", "/big.bin", NULL, false, &r);
		cr_expect_eq(r.status, 200);
		cr_assert_eq(r.len, 1 << 20);
		cr_expect_eq(kt_pattern_mismatch(r.body, r.len, 0, 2),
			     SIZE_MAX);
		response_free(&r);
		close(fd);
	}
}

Test(http_files, route_files_needs_a_directory)
{
	struct keel_http_opts opts = {.port = 0};
	struct keel_http_server *srv;

	cr_assert_eq(keel_http_server_new(&opts, &srv), 0);
	cr_expect_eq(keel_http_route_files(srv, "/", "/nonexistent-dir"),
		     -ENOENT);
	cr_expect_eq(keel_http_route_files(srv, "/", "/etc/hostname"),
		     -ENOTDIR);
	cr_expect_eq(keel_http_route_files(srv, "/", "/"), 0);
	keel_http_server_free(srv);
}
