/* SPDX-License-Identifier: MIT */
/*
 * metrics.c: --metrics [ADDR:]PORT: Prometheus text (0.0.4) at GET
 * /metrics, served by libkeel-http on loop 0: per backend (the label
 * backend="host:port"), its state, sessions, bytes, connect failures and
 * latency, health checks and resolutions, then keel's own metrics of
 * every loop (keel_metrics_render). Everything read here is an atomic of
 * backends.c, or a loop's published copy: a scrape never stops a loop.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <keel/http.h>

#include "backends.h"

static struct keel_http_server *server;
static struct keel_loop **loops;
static unsigned nloops;

/* A growing text; on out of memory it stops growing and says so. */
struct text {
	char *p;
	size_t len, cap;
	bool oom;
};

static bool text_room(struct text *s, size_t more)
{
	if (s->oom)
		return false;
	if (s->len + more + 1 <= s->cap)
		return true;
	size_t cap = s->cap ? s->cap : 4096;

	while (cap < s->len + more + 1)
		cap *= 2;
	char *p = realloc(s->p, cap);

	if (!p) {
		s->oom = true;
		return false;
	}
	s->p = p;
	s->cap = cap;
	return true;
}

__attribute__((format(printf, 2, 3))) static void
text_add(struct text *s, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n < 0 || !text_room(s, (size_t)n))
		return;
	va_start(ap, fmt);
	vsnprintf(s->p + s->len, s->cap - s->len, fmt, ap);
	va_end(ap);
	s->len += (size_t)n;
}

/* A label value as Prometheus quotes it: \\, \" and \n escaped. */
static const char *label(const char *v, char *out, size_t len)
{
	size_t o = 0;

	for (; *v && o + 3 < len; v++) {
		if (*v == '\\' || *v == '"' || *v == '\n')
			out[o++] = '\\';
		out[o++] = *v == '\n' ? 'n' : *v;
	}
	out[o] = '\0';
	return out;
}

static uint64_t load(_Atomic uint64_t *v)
{
	return atomic_load_explicit(v, memory_order_relaxed);
}

/* One metric for every backend: HELP and TYPE, then a line each. */
static void per_backend(struct text *s, const char *name, const char *type,
			const char *help, size_t field)
{
	char l[2 * sizeof(backends[0].name)];

	text_add(s, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
	for (unsigned i = 0; i < nbackends; i++) {
		struct backend *b = &backends[i];
		uint64_t v =
		    field == SIZE_MAX
			? (uint64_t)backend_is_up(b)
			: load((_Atomic uint64_t *)((char *)b + field));

		text_add(s, "%s{backend=\"%s\"} %llu\n", name,
			 label(b->name, l, sizeof(l)), (unsigned long long)v);
	}
}

static void latency(struct text *s)
{
	static const char name[] = "proxy_backend_connect_seconds";
	char l[2 * sizeof(backends[0].name)];

	text_add(s,
		 "# HELP %s Time to connect to the backend (successful "
		 "connects).\n# TYPE %s histogram\n",
		 name, name);
	for (unsigned i = 0; i < nbackends; i++) {
		struct backend *b = &backends[i];
		uint64_t sum = 0;

		label(b->name, l, sizeof(l));
		for (unsigned k = 0; k <= LATENCY_BUCKETS; k++) {
			sum += load(&b->latency[k]);
			if (k < LATENCY_BUCKETS)
				text_add(s,
					 "%s_bucket{backend=\"%s\",le=\"%g\"} "
					 "%llu\n",
					 name, l, latency_bounds[k],
					 (unsigned long long)sum);
		}
		text_add(s, "%s_bucket{backend=\"%s\",le=\"+Inf\"} %llu\n", name,
			 l, (unsigned long long)sum);
		text_add(s, "%s_sum{backend=\"%s\"} %.9f\n", name, l,
			 (double)load(&b->latency_ns) / 1e9);
		text_add(s, "%s_count{backend=\"%s\"} %llu\n", name, l,
			 (unsigned long long)sum);
	}
}

#define FIELD(f) offsetof(struct backend, f)

/* The whole text; NULL when out of memory. */
static char *render(size_t *len)
{
	struct text s = {0};

	per_backend(&s, "proxy_backend_up", "gauge",
		    "Whether the backend is in the rotation.", SIZE_MAX);
	per_backend(&s, "proxy_backend_transitions_total", "counter",
		    "Changes of the backend's state (up, down).",
		    FIELD(transitions));
	per_backend(&s, "proxy_backend_sessions_total", "counter",
		    "Sessions sent to the backend.", FIELD(sessions));
	per_backend(&s, "proxy_backend_active_sessions", "gauge",
		    "Sessions on the backend now.", FIELD(active));
	per_backend(&s, "proxy_backend_bytes_up_total", "counter",
		    "Bytes sent to the backend (by sessions that ended).",
		    FIELD(bytes_up));
	per_backend(&s, "proxy_backend_bytes_down_total", "counter",
		    "Bytes received from the backend (by sessions that "
		    "ended).",
		    FIELD(bytes_down));
	per_backend(&s, "proxy_backend_connect_failures_total", "counter",
		    "Connects to the backend that failed.",
		    FIELD(connect_failures));
	latency(&s);
	per_backend(&s, "proxy_backend_health_checks_total", "counter",
		    "Health checks of the backend.", FIELD(checks));
	per_backend(&s, "proxy_backend_health_check_failures_total",
		    "counter", "Health checks of the backend that failed.",
		    FIELD(check_failures));
	per_backend(&s, "proxy_backend_resolve_failures_total", "counter",
		    "Times the backend's name did not resolve.",
		    FIELD(resolve_failures));
	while (!s.oom) {
		size_t room = s.cap - s.len;
		size_t n = keel_metrics_render(loops, nloops, s.p + s.len, room);

		if (n < room) {
			s.len += n;
			break;
		}
		if (!text_room(&s, n))
			break;
	}
	if (s.oom) {
		free(s.p);
		return NULL;
	}
	*len = s.len;
	return s.p;
}

struct scrape {
	struct keel_http_handler h;
	char *body;
	size_t len;
};

static int scrape_step(struct keel_task *t);
static KEEL_HTTP_HANDLER_TYPE(scrape_type, struct scrape, h, scrape_step);

static int scrape_step(struct keel_task *t)
{
	struct scrape *m = keel_container_of(t, struct scrape, h.task);

	KEEL_BEGIN(t);
	m->body = render(&m->len);
	if (m->body && keel_defer(t, free, m->body)) {
		free(m->body);
		m->body = NULL;
	}
	if (!m->body) {
		KEEL_AWAIT_CALL(t, keel_http_respond(t, m->h.x, 503,
						     "text/plain",
						     "out of memory\n", 14));
		KEEL_EXIT(t, 0);
	}
	KEEL_AWAIT_CALL(t, keel_http_respond(t, m->h.x, 200,
					     "text/plain; version=0.0.4; "
					     "charset=utf-8",
					     m->body, m->len));
	KEEL_END(t);
}

int metrics_start(struct keel_runtime *rt)
{
	struct keel_http_opts opts = {
	    .host = backends_conf.metrics_host,
	    .port = backends_conf.metrics_port,
	    .max_conns = 64,
	    .bufs = 16,
	};
	int err;

	if (!backends_conf.metrics_host)
		return 0;
	nloops = keel_runtime_size(rt);
	loops = calloc(nloops, sizeof(*loops));
	if (!loops)
		return -ENOMEM;
	for (unsigned i = 0; i < nloops; i++)
		loops[i] = keel_runtime_loop(rt, i);
	err = keel_http_server_new(&opts, &server);
	if (!err)
		err = keel_http_route_task(server, "GET", "/metrics",
					   KEEL_HTTP_EXACT, &scrape_type, NULL);
	if (!err)
		err = keel_http_server_start_loop(server, loops[0]);
	return err;
}

int metrics_port(void)
{
	return keel_http_server_port(server);
}

void metrics_free(void)
{
	keel_http_server_free(server);
	server = NULL;
	free(loops);
	loops = NULL;
}
