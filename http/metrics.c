/* SPDX-License-Identifier: MIT */
/*
 * http/metrics.c: per-route request counts and latency histograms, the
 * /metrics body, and the METRICS and HEALTH routes (conn.c answers them
 * inline).
 *
 * Each shard owns a table of counters, one row per route plus one for
 * requests no route matched (route="none"). Only the shard's own thread
 * writes its table (keel__http_observe(), on the connection's loop); any
 * thread reads every table (keel__http_metrics_render(), from the loop that
 * serves /metrics). A row's counters are therefore single-writer relaxed
 * atomics: a load and a store, no locked add, and a reader sees each value
 * whole, if a request or two behind.
 *
 * The histogram keeps one count per bucket, not cumulative counts: an
 * observation touches one bucket, and the renderer sums them up. Because
 * the renderer loads each bucket once and derives _count from the same
 * loads, what it prints is consistent (cumulative, _count equal to the +Inf
 * bucket) however the writers move meanwhile.
 *
 * Label values are only the routes' registered paths (and "none"), so the
 * number of series is bounded by the routes the program added, never by
 * what clients send. Two routes with the same path (GET and POST /x) share
 * their series: a family cannot hold the same label set twice.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <keel/tls.h>

#include "internal.h"

/* Upper bounds of the latency buckets (le, inclusive), then +Inf. From
 * 10 us: a request answered inline takes a few microseconds here. */
static const uint64_t bucket_ns[] = {
    10000,     25000,	  50000,     100000,	 250000,     500000,
    1000000,   2500000,	  5000000,   10000000,	 25000000,   50000000,
    100000000, 250000000, 500000000, 1000000000, 2500000000, 10000000000,
};
static const char *const bucket_le[] = {
    "1e-05",  "2.5e-05", "5e-05", "0.0001", "0.00025", "0.0005", "0.001",
    "0.0025", "0.005",	 "0.01",  "0.025",  "0.05",    "0.1",	 "0.25",
    "0.5",    "1",	 "2.5",	  "10",	    "+Inf",
};
#define FINITE_BUCKETS (sizeof(bucket_ns) / sizeof(bucket_ns[0]))
#define BUCKETS	       (FINITE_BUCKETS + 1)

_Static_assert(sizeof(bucket_le) / sizeof(bucket_le[0]) == BUCKETS,
	       "a label per bucket, +Inf last");

/* Status classes 1xx..5xx; anything outside 100..599 is counted with the
 * nearest (a status below 200 as 1xx, 600 and up as 5xx). */
#define CLASSES 5

struct route_counts {
	uint64_t by_class[CLASSES];
	uint64_t buckets[BUCKETS]; /* each bucket's own count */
	uint64_t sum_ns;
};

struct metrics {
	unsigned nroutes; /* rows 0..nroutes-1 are routes, then "none" */
	struct route_counts rows[];
};

int keel__http_metrics_init(struct keel__http_shard *sh)
{
	/* Routes are frozen once the server starts, which is before any
	 * shard exists: the table never grows. */
	unsigned n = sh->srv->nroutes;
	struct metrics *m =
	    calloc(1, sizeof(*m) + (n + 1) * sizeof(struct route_counts));

	if (!m)
		return -ENOMEM;
	m->nroutes = n;
	sh->metrics = m;
	return 0;
}

void keel__http_metrics_fini(struct keel__http_shard *sh)
{
	free(sh->metrics);
	sh->metrics = NULL;
}

/* Only the shard's thread writes: a relaxed load and store are enough, and
 * cheaper than a locked add on the hot path. */
static inline void bump(uint64_t *c, uint64_t n)
{
	__atomic_store_n(c, __atomic_load_n(c, __ATOMIC_RELAXED) + n,
			 __ATOMIC_RELAXED);
}

static inline uint64_t get(const uint64_t *c)
{
	return __atomic_load_n(c, __ATOMIC_RELAXED);
}

void keel__http_observe(struct keel__http_shard *sh,
			const struct keel__http_route *route, int status,
			uint64_t ns)
{
	struct metrics *m = sh->metrics;
	struct route_counts *row;
	unsigned c, b;

	if (!m)
		return;
	row = &m->rows[route && route->index < m->nroutes ? route->index
							  : m->nroutes];
	c = status < 200   ? 0
	    : status < 300 ? 1
	    : status < 400 ? 2
	    : status < 500 ? 3
			   : 4;
	bump(&row->by_class[c], 1);
	/* Most requests are fast: the linear search ends in the first few. */
	for (b = 0; b < FINITE_BUCKETS && ns > bucket_ns[b]; b++)
		;
	bump(&row->buckets[b], 1);
	bump(&row->sum_ns, ns);
}

/* ---- the Prometheus text (0.0.4) ------------------------------------ */

/* An snprintf-like writer: `need` counts every byte of the text, only what
 * fits (and a terminating NUL) is written. */
struct out {
	char *buf;
	size_t len;
	size_t need;
};

static void put(struct out *o, const char *s, size_t n)
{
	if (o->need + 1 < o->len) {
		size_t room = o->len - 1 - o->need;

		memcpy(o->buf + o->need, s, n < room ? n : room);
	}
	o->need += n;
}

static void puts_(struct out *o, const char *s)
{
	put(o, s, strlen(s));
}

static void put_u64(struct out *o, uint64_t v)
{
	char tmp[20];
	size_t i = sizeof(tmp);

	do {
		tmp[--i] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	put(o, tmp + i, sizeof(tmp) - i);
}

/* A label value: backslash, double quote and newline escaped. */
static void put_label_value(struct out *o, const char *s)
{
	for (; *s; s++) {
		if (*s == '\\')
			puts_(o, "\\\\");
		else if (*s == '"')
			puts_(o, "\\\"");
		else if (*s == '\n')
			puts_(o, "\\n");
		else
			put(o, s, 1);
	}
}

static void family(struct out *o, const char *name, const char *type,
		   const char *help)
{
	puts_(o, "# HELP ");
	puts_(o, name);
	puts_(o, " ");
	puts_(o, help);
	puts_(o, "\n# TYPE ");
	puts_(o, name);
	puts_(o, " ");
	puts_(o, type);
	puts_(o, "\n");
}

/* ---- the server's counters ------------------------------------------ */

struct counter {
	const char *name;
	const char *type;
	const char *help;
	size_t off; /* in struct keel_http_stats */
};

/*
 * keel_http_stats as series. requests, responses_4xx and responses_5xx are
 * not here: keel_http_requests_total{route,code} holds them (its sums), and
 * one family name cannot be both.
 */
static const struct counter counters[] = {
    {"keel_http_connections_total", "counter", "Connections accepted.",
     offsetof(struct keel_http_stats, connections)},
    {"keel_http_connections_refused_total", "counter",
     "Connections refused (over max_conns or out of memory).",
     offsetof(struct keel_http_stats, refused)},
    {"keel_http_connections_active", "gauge", "Connections open now.",
     offsetof(struct keel_http_stats, active)},
    {"keel_http_handler_panics_total", "counter",
     "Handler tasks that panicked (answered 500).",
     offsetof(struct keel_http_stats, handler_panics)},
    {"keel_http_timeouts_total", "counter",
     "Connections cut by a timeout (header, body, idle, send).",
     offsetof(struct keel_http_stats, timeouts)},
    {"keel_http_client_gone_total", "counter",
     "Handlers cancelled because their client went away.",
     offsetof(struct keel_http_stats, client_gone)},
    {"keel_http_log_dropped_total", "counter",
     "Access-log lines dropped (the log's buffer was full).",
     offsetof(struct keel_http_stats, log_dropped)},
    {"keel_http_shed_total", "counter",
     "Requests answered 503 by the load shedder (queueing delay).",
     offsetof(struct keel_http_stats, shed)},
};

static unsigned shard_count(const struct keel_http_server *srv)
{
	unsigned n = atomic_load_explicit(&srv->nshards, memory_order_acquire);

	return n < KEEL__HTTP_MAX_LOOPS ? n : KEEL__HTTP_MAX_LOOPS;
}

static void render_counters(struct keel_http_server *srv, struct out *o)
{
	unsigned ns = shard_count(srv);

	for (size_t i = 0; i < sizeof(counters) / sizeof(counters[0]); i++) {
		uint64_t v = 0;

		for (unsigned s = 0; s < ns; s++) {
			const struct keel__http_shard *sh = srv->shards[s];

			if (sh)
				v += get((
				    const uint64_t *)((const char *)&sh->stats +
						      counters[i].off));
		}
		family(o, counters[i].name, counters[i].type, counters[i].help);
		puts_(o, counters[i].name);
		puts_(o, " ");
		put_u64(o, v);
		puts_(o, "\n");
	}
}

/* ---- per-route series ----------------------------------------------- */

/* Row `row`'s label: the route's path, or "none" past the routes. */
static const char *row_label(const struct keel_http_server *srv, unsigned row)
{
	return row < srv->nroutes ? srv->routes[row].path : "none";
}

/* The first row with row's label: rows with the same path are summed into
 * it, and only it is rendered. */
static unsigned row_owner(const struct keel_http_server *srv, unsigned row)
{
	for (unsigned j = 0; j < row && row < srv->nroutes; j++)
		if (strcmp(srv->routes[j].path, srv->routes[row].path) == 0)
			return j;
	return row;
}

/* Add up every shard's rows into sums[owner]. */
static void sum_rows(const struct keel_http_server *srv, const unsigned *owner,
		     struct route_counts *sums)
{
	unsigned ns = shard_count(srv);

	for (unsigned s = 0; s < ns; s++) {
		const struct keel__http_shard *sh = srv->shards[s];
		const struct metrics *m = sh ? sh->metrics : NULL;

		for (unsigned r = 0; m && r <= m->nroutes; r++) {
			/* m->nroutes is srv->nroutes (frozen); its last
			 * row is "none" all the same. */
			unsigned row = r == m->nroutes || r >= srv->nroutes
					   ? srv->nroutes
					   : r;
			const struct route_counts *c = &m->rows[r];
			struct route_counts *sum = &sums[owner[row]];

			for (unsigned k = 0; k < CLASSES; k++)
				sum->by_class[k] += get(&c->by_class[k]);
			for (unsigned k = 0; k < BUCKETS; k++)
				sum->buckets[k] += get(&c->buckets[k]);
			sum->sum_ns += get(&c->sum_ns);
		}
	}
}

static void sample_start(struct out *o, const char *name, const char *label)
{
	puts_(o, name);
	puts_(o, "{route=\"");
	put_label_value(o, label);
	puts_(o, "\"");
}

static void render_requests(struct keel_http_server *srv, struct out *o,
			    const unsigned *owner,
			    const struct route_counts *sums)
{
	static const char *const classes[CLASSES] = {"1xx", "2xx", "3xx", "4xx",
						     "5xx"};

	family(o, "keel_http_requests_total", "counter",
	       "HTTP requests answered, by route and status class.");
	for (unsigned row = 0; row <= srv->nroutes; row++) {
		if (owner[row] != row)
			continue;
		for (unsigned k = 0; k < CLASSES; k++) {
			sample_start(o, "keel_http_requests_total",
				     row_label(srv, row));
			puts_(o, ",code=\"");
			puts_(o, classes[k]);
			puts_(o, "\"} ");
			put_u64(o, sums[row].by_class[k]);
			puts_(o, "\n");
		}
	}
}

static void render_durations(struct keel_http_server *srv, struct out *o,
			     const unsigned *owner,
			     const struct route_counts *sums)
{
	const char *name = "keel_http_request_duration_seconds";

	family(o, name, "histogram",
	       "Time taken to answer a request, by route.");
	for (unsigned row = 0; row <= srv->nroutes; row++) {
		const struct route_counts *c = &sums[row];
		const char *label = row_label(srv, row);
		uint64_t cumulative = 0;

		if (owner[row] != row)
			continue;
		for (unsigned k = 0; k < BUCKETS; k++) {
			cumulative += c->buckets[k];
			sample_start(o,
				     "keel_http_request_duration_seconds_"
				     "bucket",
				     label);
			puts_(o, ",le=\"");
			puts_(o, bucket_le[k]);
			puts_(o, "\"} ");
			put_u64(o, cumulative);
			puts_(o, "\n");
		}
		/* Seconds from nanoseconds, exactly: no floating point. */
		sample_start(o, "keel_http_request_duration_seconds_sum",
			     label);
		puts_(o, "} ");
		put_u64(o, c->sum_ns / 1000000000u);
		char frac[11] = ".000000000";
		uint64_t f = c->sum_ns % 1000000000u;

		for (int d = 9; d > 0; d--, f /= 10)
			frac[d] = (char)('0' + f % 10);
		put(o, frac, 10);
		puts_(o, "\n");
		sample_start(o, "keel_http_request_duration_seconds_count",
			     label);
		puts_(o, "} ");
		put_u64(o, cumulative);
		puts_(o, "\n");
	}
}

/* The TLS context's counters (handshakes, failures, resumptions...),
 * keel_tls_render_metrics()'s text. */
static void render_tls(struct keel_http_server *srv, struct out *o)
{
	char small[4096], *text = small;
	size_t cap = sizeof(small);
	int n;

	while ((n = keel_tls_render_metrics(srv->opts.tls, "keel_http", text,
					    cap)) == -ENOSPC &&
	       cap < (1u << 20)) {
		if (text != small)
			free(text);
		cap *= 4;
		text = malloc(cap);
		if (!text)
			return;
	}
	if (n > 0)
		put(o, text, (size_t)n);
	if (text != small)
		free(text);
}

size_t keel__http_metrics_render(struct keel_http_server *srv, char *buf,
				 size_t len)
{
	struct keel_loop *loops[KEEL__HTTP_MAX_LOOPS];
	unsigned n = 0;

	if (srv->rt) {
		n = keel_runtime_size(srv->rt);
		if (n > KEEL__HTTP_MAX_LOOPS)
			n = KEEL__HTTP_MAX_LOOPS;
		for (unsigned i = 0; i < n; i++)
			loops[i] = keel_runtime_loop(srv->rt, i);
	} else {
		unsigned ns = shard_count(srv);

		for (unsigned i = 0; i < ns; i++)
			if (srv->shards[i] && srv->shards[i]->loop)
				loops[n++] = srv->shards[i]->loop;
	}

	struct out o = {.buf = buf, .len = len};
	unsigned nrows = srv->nroutes + 1;
	struct route_counts *sums = calloc(nrows, sizeof(*sums));
	unsigned *owner = calloc(nrows, sizeof(*owner));

	o.need = keel_metrics_render(loops, n, buf, len);
	render_counters(srv, &o);
	/* Each shard's counters are loaded once, into one sum per label,
	 * for both families. */
	if (sums && owner) {
		for (unsigned row = 0; row < nrows; row++)
			owner[row] = row_owner(srv, row);
		sum_rows(srv, owner, sums);
		render_requests(srv, &o, owner, sums);
		render_durations(srv, &o, owner, sums);
	}
	free(sums);
	free(owner);
	if (srv->opts.tls)
		render_tls(srv, &o);
	if (o.len)
		o.buf[o.need < o.len ? o.need : o.len - 1] = '\0';
	return o.need;
}

/* ---- the routes ----------------------------------------------------- */

static int add(struct keel_http_server *srv, const char *path,
	       enum keel__http_route_kind kind)
{
	struct keel__http_route r = {
	    .method = (char *)"GET", /* copied; a GET route also answers HEAD */
	    .path = (char *)path,
	    .path_len = path ? strlen(path) : 0,
	    .flags = KEEL_HTTP_EXACT,
	    .kind = kind,
	    .root_fd = -1,
	};

	if (!srv || !path)
		return -EINVAL;
	return keel__http_route_add(srv, &r);
}

int keel_http_route_metrics(struct keel_http_server *srv, const char *path)
{
	return add(srv, path, KEEL__HTTP_R_METRICS);
}

int keel_http_route_health(struct keel_http_server *srv, const char *path)
{
	return add(srv, path, KEEL__HTTP_R_HEALTH);
}

int keel_http_route_health_registry(struct keel_http_server *srv,
				    const char *path, struct keel_health *reg)
{
	struct keel__http_route r = {
	    .method = (char *)"GET",
	    .path = (char *)path,
	    .path_len = path ? strlen(path) : 0,
	    .flags = KEEL_HTTP_EXACT,
	    .kind = KEEL__HTTP_R_HEALTH,
	    .arg = reg,
	    .root_fd = -1,
	};

	if (!srv || !path || !reg)
		return -EINVAL;
	return keel__http_route_add(srv, &r);
}
