/* SPDX-License-Identifier: MIT */
/*
 * mt_http_metrics.c: libkeel-http's per-route counters (http/metrics.c)
 * written by two shard threads while a third renders /metrics over and
 * over, as a server's loops and its /metrics route do. Each render must be
 * consistent on its own (every histogram cumulative, its _count its +Inf
 * bucket) and never go back from the one before; the last one, once the
 * writers are done, must hold every observation. Under ThreadSanitizer
 * (SANITIZE=thread make tests) it also checks that the single-writer
 * relaxed atomics are the only sharing. A plain program: Criterion cannot
 * start under ThreadSanitizer.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "helpers/scenario.h"
#include "internal.h"

#define OBSERVES 2000000

/* metrics.o also holds keel_http_route_metrics(), which registers through
 * router.c: a stand-in keeps router.c out of this program. */
int keel__http_route_add(struct keel_http_server *srv,
			 const struct keel__http_route *r)
{
	return 0;
}

static char p_a[] = "/a", p_b[] = "/b";
static struct keel__http_route g_routes[] = {
    {.path = p_a, .index = 0},
    {.path = p_b, .index = 1},
};
static struct keel_http_server g_srv;
static struct keel__http_shard g_sh[2];
static int g_writers_done;

static void *writer(void *arg)
{
	struct keel__http_shard *sh = arg;

	for (uint64_t i = 0; i < OBSERVES; i++) {
		const struct keel__http_route *r =
		    i % 3 == 2 ? NULL : &g_routes[i % 3];

		keel__http_observe(sh, r, i % 7 ? 200 : 500, (i % 1000) * 1000);
	}
	kt_add(&g_writers_done, 1);
	return NULL;
}

/* The value of the sample whose line starts with `series` ("name{...}"). */
static uint64_t value(const char *text, const char *series)
{
	char want[256];
	const char *p;

	snprintf(want, sizeof(want), "\n%s ", series);
	p = strstr(text, want);
	CHECK(p != NULL);
	return p ? strtoull(p + strlen(want), NULL, 10) : 0;
}

/* One render's totals for a route, from the histogram (returned) and from
 * the status classes (*requests); checks the histogram's consistency. */
static uint64_t route_total(const char *text, const char *route,
			    uint64_t *requests_out)
{
	static const char *const classes[] = {"1xx", "2xx", "3xx", "4xx",
					      "5xx"};
	char series[256];
	uint64_t requests = 0, last = 0, count;
	const char *p;

	for (int k = 0; k < 5; k++) {
		snprintf(series, sizeof(series),
			 "keel_http_requests_total{route=\"%s\",code=\"%s\"}",
			 route, classes[k]);
		requests += value(text, series);
	}
	snprintf(series, sizeof(series),
		 "\nkeel_http_request_duration_seconds_bucket{route=\"%s\",",
		 route);
	for (p = text; (p = strstr(p, series)); p++) {
		uint64_t v = strtoull(strchr(p, '}') + 2, NULL, 10);

		CHECK(v >= last); /* cumulative */
		last = v;
	}
	snprintf(series, sizeof(series),
		 "keel_http_request_duration_seconds_count{route=\"%s\"}",
		 route);
	count = value(text, series);
	CHECK_EQ(count, last); /* _count is the +Inf bucket */
	*requests_out = requests;
	return count;
}

static char *render(void)
{
	size_t n = keel__http_metrics_render(&g_srv, NULL, 0);
	char *text = malloc(n + 4096);

	CHECK(text != NULL);
	if (!text)
		return NULL;
	/* Counters grow between the two calls: the room to spare. */
	n = keel__http_metrics_render(&g_srv, text, n + 4096);
	CHECK(n < n + 4096);
	return text;
}

static void concurrent_render(void)
{
	pthread_t th[2];
	uint64_t prev[3] = {0, 0, 0}, requests[3] = {0, 0, 0};
	const char *routes[3] = {"/a", "/b", "none"};
	int renders = 0;

	g_srv.routes = g_routes;
	g_srv.nroutes = 2;
	for (int i = 0; i < 2; i++) {
		g_sh[i].srv = &g_srv;
		CHECK_EQ(keel__http_metrics_init(&g_sh[i]), 0);
		g_srv.shards[i] = &g_sh[i];
	}
	__atomic_store_n(&g_srv.nshards, 2, __ATOMIC_RELEASE);
	for (int i = 0; i < 2; i++)
		CHECK(pthread_create(&th[i], NULL, writer, &g_sh[i]) == 0);
	for (;;) {
		bool done = kt_load(&g_writers_done) == 2;
		char *text = render();

		if (!text)
			break;
		for (int r = 0; r < 3; r++) {
			uint64_t c = route_total(text, routes[r], &requests[r]);

			CHECK(c >= prev[r]); /* never back */
			prev[r] = c;
		}
		free(text);
		renders++;
		if (done)
			break;
	}
	for (int i = 0; i < 2; i++)
		pthread_join(th[i], NULL);
	/* The last render began after both writers were done. */
	CHECK_EQ(prev[0] + prev[1] + prev[2], 2 * OBSERVES);
	CHECK_EQ(prev[2], 2 * (OBSERVES / 3));
	/* The classes are loaded apart from the buckets, so they agree only
	 * once the writers are done. */
	for (int r = 0; r < 3; r++)
		CHECK_EQ(requests[r], prev[r]);
	CHECK(renders >= 1);
	for (int i = 0; i < 2; i++)
		keel__http_metrics_fini(&g_sh[i]);
}

int main(void)
{
	kt_scenarios_start("mt_http_metrics");
	kt_scenario_run("two shard threads count while a third renders",
			concurrent_render);
	return kt_scenarios_finish();
}
