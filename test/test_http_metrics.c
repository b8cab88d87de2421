/* SPDX-License-Identifier: MIT */
/*
 * test_http_metrics.c: libkeel-http's per-route metrics (http/metrics.c)
 * on a server and shards filled in by hand (internal.h's structs, two
 * real loops): what keel__http_observe() counts (status classes, bucket
 * edges, route="none", two routes sharing a path), the text
 * keel__http_metrics_render() makes of it (keel's own metrics first, then
 * the server's counters, then the per-route families; snprintf's contract
 * on a short buffer), read back by python3-prometheus-client's parser;
 * and the routes keel_http_route_metrics() and
 * keel_http_route_health() register (through a stand-in for router.c's
 * keel__http_route_add, which this file defines).
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "helpers/keel_test.h"
#include "internal.h"

/* ---- a stand-in for router.c: record the route ---------------------- */

static struct keel__http_route g_added;
static char g_added_method[16], g_added_path[64];
static int g_adds;

int keel__http_route_add(struct keel_http_server *srv,
			 const struct keel__http_route *r)
{
	g_adds++;
	g_added = *r;
	snprintf(g_added_method, sizeof(g_added_method), "%s",
		 r->method ? r->method : "(any)");
	snprintf(g_added_path, sizeof(g_added_path), "%s", r->path);
	return 0;
}

/* ---- a server by hand ----------------------------------------------- */

static char p_hello[] = "/hello", p_api[] = "/api", p_weird[] = "/we\"ird\\";
static char m_get[] = "GET", m_post[] = "POST";
static struct keel__http_route g_routes[] = {
    {.path = p_hello, .flags = KEEL_HTTP_EXACT, .index = 0},
    {.method = m_get, .path = p_api, .index = 1},
    {.method = m_post, .path = p_api, .index = 2},
    {.path = p_weird, .flags = KEEL_HTTP_PREFIX, .index = 3},
};
#define NROUTES (sizeof(g_routes) / sizeof(g_routes[0]))

struct fixture {
	struct keel_http_server srv;
	struct keel__http_shard sh[2];
	struct keel_loop *loops[2];
};

static void fixture_init(struct fixture *f)
{
	memset(f, 0, sizeof(*f));
	f->srv.routes = g_routes;
	f->srv.nroutes = NROUTES;
	f->srv.nshards = 2;
	for (int i = 0; i < 2; i++) {
		f->loops[i] = kt_loop_new(NULL);
		f->sh[i].srv = &f->srv;
		f->sh[i].loop = f->loops[i];
		f->srv.shards[i] = &f->sh[i];
		cr_assert_eq(keel__http_metrics_init(&f->sh[i]), 0);
	}
}

static void fixture_fini(struct fixture *f)
{
	for (int i = 0; i < 2; i++) {
		keel__http_metrics_fini(&f->sh[i]);
		cr_assert_null(f->sh[i].metrics);
		keel_loop_destroy(f->loops[i]);
	}
}

/* The whole text, malloc'ed; checks the sizing call and the NUL. */
static char *render(struct fixture *f)
{
	size_t n = keel__http_metrics_render(&f->srv, NULL, 0);
	char *text = malloc(n + 1);

	cr_assert_not_null(text);
	cr_assert_eq(keel__http_metrics_render(&f->srv, text, n + 1), n);
	cr_assert_eq(strlen(text), n);
	return text;
}

#define US(n) ((uint64_t)(n)*1000ull)

static void expect_line(const char *text, const char *line)
{
	char want[512];

	snprintf(want, sizeof(want), "\n%s\n", line);
	cr_expect_not_null(strstr(text, want), "no line \"%s\" in:\n%s", line,
			   text);
}

/* ---- counting ------------------------------------------------------- */

Test(http_metrics, status_classes_and_the_unmatched_route_are_counted)
{
	struct fixture f;

	fixture_init(&f);
	keel__http_observe(&f.sh[0], &g_routes[0], 200, US(3));
	keel__http_observe(&f.sh[0], &g_routes[0], 204, US(3));
	keel__http_observe(&f.sh[1], &g_routes[0], 200, US(3));
	keel__http_observe(&f.sh[1], &g_routes[0], 304, US(3));
	keel__http_observe(&f.sh[1], &g_routes[0], 101, US(3));
	keel__http_observe(&f.sh[0], &g_routes[0], 503, US(3));
	keel__http_observe(&f.sh[0], &g_routes[0], 599, US(3));
	/* No route: 404 and a 400 before routing, on both shards. */
	keel__http_observe(&f.sh[0], NULL, 404, US(3));
	keel__http_observe(&f.sh[1], NULL, 400, US(3));

	char *text = render(&f);

	expect_line(text, "keel_http_requests_total{route=\"/hello\","
			  "code=\"1xx\"} 1");
	expect_line(text, "keel_http_requests_total{route=\"/hello\","
			  "code=\"2xx\"} 3");
	expect_line(text, "keel_http_requests_total{route=\"/hello\","
			  "code=\"3xx\"} 1");
	expect_line(text, "keel_http_requests_total{route=\"/hello\","
			  "code=\"4xx\"} 0");
	expect_line(text, "keel_http_requests_total{route=\"/hello\","
			  "code=\"5xx\"} 2");
	expect_line(text, "keel_http_requests_total{route=\"none\","
			  "code=\"4xx\"} 2");
	expect_line(text, "keel_http_requests_total{route=\"/api\","
			  "code=\"2xx\"} 0");
	free(text);
	fixture_fini(&f);
}

Test(http_metrics, a_latency_on_a_bucket_bound_is_counted_in_that_bucket)
{
	struct fixture f;

	fixture_init(&f);
	keel__http_observe(&f.sh[0], &g_routes[0], 200, US(10));     /* le */
	keel__http_observe(&f.sh[0], &g_routes[0], 200, US(10) + 1); /* > */
	keel__http_observe(&f.sh[1], &g_routes[0], 200, 0);
	keel__http_observe(&f.sh[1], &g_routes[0], 200, 1000000000ull);
	keel__http_observe(&f.sh[1], &g_routes[0], 200, 3600000000000ull);

	char *text = render(&f);
	const char *b = "keel_http_request_duration_seconds_bucket"
			"{route=\"/hello\",le=";

	char line[256];

#define BUCKET(le, n)                                                          \
	snprintf(line, sizeof(line), "%s\"%s\"} %d", b, le, n);                \
	expect_line(text, line)
	BUCKET("1e-05", 2);
	BUCKET("2.5e-05", 3);
	BUCKET("0.5", 3);
	BUCKET("1", 4);
	BUCKET("10", 4);
	BUCKET("+Inf", 5);
#undef BUCKET
	expect_line(text, "keel_http_request_duration_seconds_count"
			  "{route=\"/hello\"} 5");
	/* 20 us + 1 ns + 1 s + 3600 s, exactly. */
	expect_line(text, "keel_http_request_duration_seconds_sum"
			  "{route=\"/hello\"} 3601.000020001");
	free(text);
	fixture_fini(&f);
}

Test(http_metrics, routes_that_share_a_path_share_their_series)
{
	struct fixture f;

	fixture_init(&f);
	keel__http_observe(&f.sh[0], &g_routes[1], 200, US(1)); /* GET */
	keel__http_observe(&f.sh[1], &g_routes[2], 201, US(1)); /* POST */
	keel__http_observe(&f.sh[1], &g_routes[2], 400, US(1));

	char *text = render(&f);

	expect_line(text, "keel_http_requests_total{route=\"/api\","
			  "code=\"2xx\"} 2");
	expect_line(text, "keel_http_requests_total{route=\"/api\","
			  "code=\"4xx\"} 1");
	expect_line(text, "keel_http_request_duration_seconds_count"
			  "{route=\"/api\"} 3");
	/* One series per label set: "/api" once per class. */
	int n = 0;

	for (const char *p = text;
	     (p = strstr(p, "{route=\"/api\",code=\"2xx\"}")); p++)
		n++;
	cr_expect_eq(n, 1, "%s", text);
	free(text);
	fixture_fini(&f);
}

Test(http_metrics, a_shard_without_a_table_counts_nothing_and_renders)
{
	struct fixture f;

	fixture_init(&f);
	keel__http_metrics_fini(&f.sh[1]);
	keel__http_observe(&f.sh[1], &g_routes[0], 200, US(1));
	keel__http_observe(&f.sh[0], &g_routes[0], 200, US(1));

	char *text = render(&f);

	expect_line(text, "keel_http_requests_total{route=\"/hello\","
			  "code=\"2xx\"} 1");
	free(text);
	fixture_fini(&f);
}

/* ---- the text ------------------------------------------------------- */

Test(http_metrics, server_counters_follow_keel_metrics_and_sum_the_shards)
{
	struct fixture f;

	fixture_init(&f);
	KEEL__HTTP_COUNT(&f.sh[0], connections, 5);
	KEEL__HTTP_COUNT(&f.sh[1], connections, 7);
	KEEL__HTTP_COUNT(&f.sh[0], active, 2);
	KEEL__HTTP_COUNT(&f.sh[1], active, 1);
	KEEL__HTTP_COUNT(&f.sh[1], handler_panics, 1);
	KEEL__HTTP_COUNT(&f.sh[0], log_dropped, 9);
	/* A connection counted on one shard and closed: active back to 1. */
	KEEL__HTTP_COUNT(&f.sh[0], active, (uint64_t)-1);

	char *text = render(&f);
	size_t keel_len = keel_metrics_render(f.loops, 2, NULL, 0);

	/* keel's own text comes first, as keel_metrics_render() makes it. */
	char *keel_text = malloc(keel_len + 1);

	cr_assert_not_null(keel_text);
	keel_metrics_render(f.loops, 2, keel_text, keel_len + 1);
	cr_expect_eq(strncmp(text, keel_text, keel_len), 0);
	cr_expect(strstr(keel_text, "loop=\"1\""), "two loops: %s", keel_text);
	free(keel_text);
	expect_line(text, "keel_http_connections_total 12");
	expect_line(text, "keel_http_connections_active 2");
	expect_line(text, "# TYPE keel_http_connections_active gauge");
	expect_line(text, "keel_http_handler_panics_total 1");
	expect_line(text, "keel_http_log_dropped_total 9");
	expect_line(text, "keel_http_timeouts_total 0");
	expect_line(text, "# TYPE keel_http_requests_total counter");
	expect_line(text, "# TYPE keel_http_request_duration_seconds "
			  "histogram");
	free(text);
	fixture_fini(&f);
}

Test(http_metrics, a_short_buffer_gets_the_start_of_the_text_and_a_nul)
{
	struct fixture f;

	fixture_init(&f);
	keel__http_observe(&f.sh[0], &g_routes[3], 200, US(1));

	char *full = render(&f);
	size_t n = strlen(full);
	size_t lens[] = {1, 2, 100, n / 2, n - 1, n};

	for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
		char *buf = malloc(lens[i] + 8);

		cr_assert_not_null(buf);
		memset(buf, 'x', lens[i] + 8);
		cr_expect_eq(keel__http_metrics_render(&f.srv, buf, lens[i]),
			     n);
		cr_expect_eq(strlen(buf), lens[i] - 1, "len %zu", lens[i]);
		cr_expect_eq(strncmp(buf, full, lens[i] - 1), 0, "len %zu",
			     lens[i]);
		/* Nothing past len. */
		cr_expect_eq(buf[lens[i]], 'x', "len %zu", lens[i]);
		free(buf);
	}
	free(full);
	fixture_fini(&f);
}

/* A python3 that has the parser ("python3" first, then Debian's own). */
static const char *python_with_parser(void)
{
	static const char *const pythons[] = {"python3", "/usr/bin/python3"};
	char cmd[256];

	for (size_t i = 0; i < sizeof(pythons) / sizeof(pythons[0]); i++) {
		snprintf(cmd, sizeof(cmd),
			 "%s -c 'import prometheus_client.parser' "
			 ">/dev/null 2>&1",
			 pythons[i]);
		if (system(cmd) == 0)
			return pythons[i];
	}
	return NULL;
}

/*
 * Parse the file; fail on a counter sample not ending in _total, a
 * duplicate series, a histogram whose buckets are not cumulative or whose
 * _count is not its +Inf bucket; print the keel_http_* families with their
 * types, then each route label value as JSON.
 */
static const char parse_py[] =
    "import json, sys\n"
    "from prometheus_client.parser import text_string_to_metric_families\n"
    "seen, routes = set(), set()\n"
    "for f in text_string_to_metric_families(open(sys.argv[1]).read()):\n"
    "    if f.name.startswith('keel_http'):\n"
    "        print('family', f.name, f.type)\n"
    "    hist = {}\n"
    "    for s in f.samples:\n"
    "        key = (s.name, tuple(sorted(s.labels.items())))\n"
    "        if key in seen:\n"
    "            sys.exit('duplicate %s' % (key,))\n"
    "        seen.add(key)\n"
    "        if f.type == 'counter' and not s.name.endswith('_total'):\n"
    "            sys.exit('counter sample %s' % s.name)\n"
    "        if 'route' in s.labels:\n"
    "            routes.add(s.labels['route'])\n"
    "        if f.type == 'histogram':\n"
    "            k = [i for i in s.labels.items() if i[0] != 'le']\n"
    "            h = hist.setdefault(tuple(sorted(k)), [])\n"
    "            h.append((s.name, s.labels.get('le'), s.value))\n"
    "    for r, h in hist.items():\n"
    "        b = [v for n, le, v in h if n.endswith('_bucket')]\n"
    "        c = [v for n, le, v in h if n.endswith('_count')]\n"
    "        if b != sorted(b) or c != [b[-1]] or h[len(b) - 1][1] != "
    "'+Inf':\n"
    "            sys.exit('histogram %s: %s' % (r, h))\n"
    "for r in sorted(routes):\n"
    "    print(json.dumps(r))\n";

Test(http_metrics, the_whole_text_parses_as_prometheus_text, .timeout = 30)
{
	const char *py = python_with_parser();
	char dir[256], path[320], script[320], cmd[1024], out[8192];
	struct fixture f;

	if (!py)
		cr_skip_test("python3-prometheus-client is not installed");
	fixture_init(&f);
	for (unsigned i = 0; i < NROUTES; i++)
		keel__http_observe(&f.sh[i & 1], &g_routes[i], 200 + (int)i,
				   US(100) * i);
	keel__http_observe(&f.sh[0], NULL, 404, US(7));
	KEEL__HTTP_COUNT(&f.sh[0], connections, 3);

	char *text = render(&f);

	kt_tmpdir_make(dir, sizeof(dir));
	snprintf(path, sizeof(path), "%s/metrics.txt", dir);
	snprintf(script, sizeof(script), "%s/parse.py", dir);
	FILE *fp = fopen(script, "w");

	cr_assert_not_null(fp);
	fputs(parse_py, fp);
	fclose(fp);
	fp = fopen(path, "w");
	cr_assert_not_null(fp);
	fputs(text, fp);
	fclose(fp);
	snprintf(cmd, sizeof(cmd), "%s '%s' '%s' 2>&1", py, script, path);
	fp = popen(cmd, "r");
	cr_assert_not_null(fp);

	size_t got = fread(out, 1, sizeof(out) - 1, fp);

	out[got] = '\0';
	cr_assert_eq(pclose(fp), 0, "parser: %s", out);
	/* The parser names a counter family without its _total. */
	cr_expect(strstr(out, "family keel_http_requests counter\n"), "%s",
		  out);
	cr_expect(strstr(out, "family keel_http_request_duration_seconds "
			      "histogram\n"),
		  "%s", out);
	cr_expect(strstr(out, "family keel_http_connections counter\n"), "%s",
		  out);
	cr_expect(strstr(out, "family keel_http_connections_active gauge\n"),
		  "%s", out);
	/* Every route's path as registered, quote and backslash included,
	 * and "none"; nothing else. */
	cr_expect(strstr(out, "\n\"/api\"\n\"/hello\"\n\"/we\\\"ird\\\\\"\n"
			      "\"none\"\n"),
		  "%s", out);
	free(text);
	fixture_fini(&f);
	kt_tmpdir_remove(dir);
}

/* ---- the routes ----------------------------------------------------- */

Test(http_metrics, the_helpers_register_exact_get_routes_of_their_kind)
{
	struct keel_http_server srv = {0};

	g_adds = 0;
	cr_expect_eq(keel_http_route_metrics(&srv, "/metrics"), 0);
	cr_expect_eq(g_added.kind, KEEL__HTTP_R_METRICS);
	cr_expect_str_eq(g_added_method, "GET");
	cr_expect_str_eq(g_added_path, "/metrics");
	cr_expect_eq(g_added.path_len, 8);
	cr_expect_eq(g_added.flags, KEEL_HTTP_EXACT);
	cr_expect_eq(keel_http_route_health(&srv, "/health"), 0);
	cr_expect_eq(g_added.kind, KEEL__HTTP_R_HEALTH);
	cr_expect_str_eq(g_added_method, "GET");
	cr_expect_str_eq(g_added_path, "/health");
	cr_expect_eq(g_adds, 2);
	cr_expect_eq(keel_http_route_metrics(NULL, "/metrics"), -EINVAL);
	cr_expect_eq(keel_http_route_health(&srv, NULL), -EINVAL);
	cr_expect_eq(g_adds, 2);
}
