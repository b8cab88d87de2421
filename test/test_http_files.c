/* SPDX-License-Identifier: MIT */
/*
 * test_http_files.c: the static-file responder's pure parts (http/files.h):
 * the request path's decoding and the checks that keep it beneath the
 * root, Range (one range, suffix, open-ended, unsatisfiable, and what
 * nginx ignores), entity tags and If-None-Match's weak comparison, HTTP
 * dates in the three forms RFC 9110 has a recipient accept, and content
 * types by extension.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "files.h"

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
