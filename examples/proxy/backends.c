/* SPDX-License-Identifier: MIT */
/*
 * backends.c: the proxy's backends: the list given with -b, what each
 * name resolves to (at start, then again every --resolve-every on the
 * blocking pool), the choice of a backend for a new session (--balance
 * rr or leastconn, over the backends that are up), and the counters
 * that /metrics shows (metrics.c). health.c decides what is up.
 *
 * Every loop reads a backend; few write its state. So:
 * - counters are relaxed atomics, each backend on its own cache lines,
 *   so that loops using different backends do not share one;
 * - `up` is an atomic flag: written by the backend's health task (or
 *   the resolver, when checks are off), read by every pick;
 * - the address is a seqlock over atomic words, written only by the
 *   resolver task on loop 0 (and by main() before the loops run): a
 *   reader copies it and retries if a write overlapped. Nothing is ever
 *   freed while the loops run, and every access is atomic, so
 *   ThreadSanitizer has nothing to object to.
 *
 * A name resolves to the first IPv4 address getaddrinfo gives, else its
 * first IPv6 one (as haproxy's default, resolve-prefer ipv4): "localhost"
 * is 127.0.0.1 where a backend listens on that alone. A name that does
 * not resolve at start leaves its backend down, with the reason; the
 * proxy starts if any backend resolved and exits 1 if none did. A later
 * failure to resolve keeps the last good address (counted; reported at
 * most once a second).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backends.h"

struct backends_config backends_conf = {
    .balance = BALANCE_RR,
    .resolve_every_ns = 30000ull * 1000 * 1000,
    .health = HEALTH_DEFAULT,
    .health_path = "/",
    .health_every_ns = 2000ull * 1000 * 1000,
    .health_timeout_ns = 1000ull * 1000 * 1000,
    .rise = 2,
    .fall = 3,
};

struct backend backends[MAX_BACKENDS];
unsigned nbackends;

/* Connect latency buckets (seconds), for the histogram metrics.c shows. */
const double latency_bounds[LATENCY_BUCKETS] = {
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
    0.025,  0.05,    0.1,    0.25,  0.5,    1,     2.5,
};

int backends_add(const char *arg)
{
	if (nbackends == MAX_BACKENDS)
		return -E2BIG;
	struct backend *b = &backends[nbackends];
	const char *colon = strrchr(arg, ':'), *host = arg;
	char *end;
	long port;
	size_t hlen;

	if (!colon || colon == arg)
		return -EINVAL;
	errno = 0;
	port = strtol(colon + 1, &end, 10);
	if (errno || end == colon + 1 || *end || port <= 0 || port > 65535)
		return -EINVAL;
	hlen = (size_t)(colon - arg);
	if (arg[0] == '[' && hlen > 2 && colon[-1] == ']') { /* [v6]:port */
		host++;
		hlen -= 2;
	}
	if (hlen >= sizeof(b->host) || strlen(arg) >= sizeof(b->name))
		return -ENAMETOOLONG;
	memcpy(b->host, host, hlen);
	b->host[hlen] = '\0';
	memcpy(b->name, arg, strlen(arg) + 1);
	b->port = (uint16_t)port;
	b->index = nbackends++;
	return 0;
}

/* Whether the host is a numeric address (then it is never resolved). */
static bool backend_numeric(struct backend *b, struct sockaddr_storage *ss,
			    socklen_t *len)
{
	return keel_net_parse_addr(b->host, b->port, ss, len) == 0;
}

/* ---- the address: a seqlock over atomic words ------------------------ */

void backend_set_addr(struct backend *b, const struct sockaddr_storage *ss,
		      socklen_t len)
{
	uint64_t w[ADDR_WORDS] = {0};
	unsigned seq = atomic_load_explicit(&b->addr_seq, memory_order_relaxed);

	memcpy(w, ss, len < sizeof(w) ? len : sizeof(w));
	/* Odd while writing: a reader that sees it, or sees it change,
	 * copies again. The fence orders the odd count before the words. */
	atomic_store_explicit(&b->addr_seq, seq + 1, memory_order_relaxed);
	atomic_thread_fence(memory_order_release);
	for (unsigned i = 0; i < ADDR_WORDS; i++)
		atomic_store_explicit(&b->addr[i], w[i], memory_order_relaxed);
	atomic_store_explicit(&b->addr_len, (unsigned)len,
			      memory_order_relaxed);
	atomic_store_explicit(&b->addr_seq, seq + 2, memory_order_release);
}

bool backend_current(const struct backend *b, struct sockaddr_storage *ss,
		  socklen_t *len)
{
	uint64_t w[ADDR_WORDS];
	unsigned seq, l;

	for (;;) {
		seq = atomic_load_explicit(&b->addr_seq, memory_order_acquire);
		if (seq & 1)
			continue;
		for (unsigned i = 0; i < ADDR_WORDS; i++)
			w[i] = atomic_load_explicit(&b->addr[i],
						    memory_order_relaxed);
		l = atomic_load_explicit(&b->addr_len, memory_order_relaxed);
		atomic_thread_fence(memory_order_acquire);
		if (atomic_load_explicit(&b->addr_seq, memory_order_relaxed) ==
		    seq)
			break;
	}
	if (!l)
		return false;
	memset(ss, 0, sizeof(*ss));
	memcpy(ss, w, l);
	*len = l;
	return true;
}

/* ---- resolution ------------------------------------------------------ */

/* getaddrinfo's answer for b: 0 and the address, or an EAI_* code. */
static int resolve_now(const char *host, uint16_t port,
		       struct sockaddr_storage *ss, socklen_t *len)
{
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM};
	struct addrinfo *res, *pick = NULL;
	int gai = getaddrinfo(host, NULL, &hints, &res);

	if (gai)
		return gai;
	for (struct addrinfo *a = res; a; a = a->ai_next) {
		if (a->ai_family == AF_INET) {
			pick = a;
			break;
		}
		if (a->ai_family == AF_INET6 && !pick)
			pick = a;
	}
	if (!pick) {
		freeaddrinfo(res);
		return EAI_NONAME;
	}
	memset(ss, 0, sizeof(*ss));
	memcpy(ss, pick->ai_addr, pick->ai_addrlen);
	*len = pick->ai_addrlen;
	if (ss->ss_family == AF_INET)
		((struct sockaddr_in *)ss)->sin_port = htons(port);
	else
		((struct sockaddr_in6 *)ss)->sin6_port = htons(port);
	freeaddrinfo(res);
	return 0;
}

static const char *resolve_error(int gai, int err)
{
	return gai == EAI_SYSTEM ? strerror(err) : gai_strerror(gai);
}

/* "ADDR" or "[ADDR]" for a v6 one, and the port: for messages. */
void addr_text(const struct sockaddr_storage *ss, char *out, size_t len)
{
	char a[INET6_ADDRSTRLEN];

	if (ss->ss_family == AF_INET) {
		const struct sockaddr_in *in = (const void *)ss;

		inet_ntop(AF_INET, &in->sin_addr, a, sizeof(a));
		snprintf(out, len, "%s:%u", a, ntohs(in->sin_port));
	} else {
		const struct sockaddr_in6 *in6 = (const void *)ss;

		inet_ntop(AF_INET6, &in6->sin6_addr, a, sizeof(a));
		snprintf(out, len, "[%s]:%u", a, ntohs(in6->sin6_port));
	}
}

unsigned backends_resolve_all(void)
{
	unsigned resolved = 0;

	for (unsigned i = 0; i < nbackends; i++) {
		struct backend *b = &backends[i];
		struct sockaddr_storage ss;
		socklen_t len;
		int gai = 0;

		if (backend_numeric(b, &ss, &len)) {
			b->numeric = true;
		} else {
			gai = resolve_now(b->host, b->port, &ss, &len);
		}
		if (gai) {
			atomic_store(&b->resolve_failures, 1);
			snprintf(b->reason, sizeof(b->reason), "resolve: %s",
				 resolve_error(gai, errno));
			fprintf(stderr, "proxy: backend %s is DOWN (%s)\n",
				b->name, b->reason);
			continue;
		}
		backend_set_addr(b, &ss, len);
		atomic_store(&b->up, true);
		resolved++;
	}
	return resolved;
}

/* The resolver task (loop 0): every --resolve-every, each name again. */
struct resolver {
	struct keel_task task;
	unsigned i;
	/* The blocking job's arguments and answer: the pool's until the
	 * await returns, so in the frame. */
	struct resolve_job {
		const char *host;
		uint16_t port;
		struct sockaddr_storage ss;
		socklen_t len;
		int gai, err;
	} job;
};

static int resolve_job_run(void *arg)
{
	struct resolve_job *j = arg;

	j->gai = resolve_now(j->host, j->port, &j->ss, &j->len);
	j->err = errno;
	return j->gai ? -EHOSTUNREACH : 0;
}

/* A name resolved again: follow a change; keep the last good address
 * on a failure (counted, one line a second at most). */
static void resolve_done(struct backend *b, struct resolve_job *j, int res)
{
	static time_t last;
	struct sockaddr_storage old;
	socklen_t olen;
	bool had = backend_current(b, &old, &olen);
	char text[INET6_ADDRSTRLEN + 16];

	if (res < 0) {
		uint64_t n = atomic_fetch_add_explicit(
				 &b->resolve_failures, 1, memory_order_relaxed) +
			     1;

		if (report_due(&last))
			fprintf(stderr,
				"proxy: backend %s: cannot resolve: %s (%llu "
				"failures; %s)\n",
				b->name,
				j->gai ? resolve_error(j->gai, j->err)
				       : keel_strerror(res),
				(unsigned long long)n,
				had ? "keeping its last address" : "down");
		return;
	}
	if (had && olen == j->len && !memcmp(&old, &j->ss, olen))
		return;
	backend_set_addr(b, &j->ss, j->len);
	addr_text(&j->ss, text, sizeof(text));
	fprintf(stderr, "proxy: backend %s resolves to %s\n", b->name, text);
	/* Without checks, an address is all it takes to be up. */
	if (!had && !health_on())
		backend_set_up(b, true, NULL);
}

static int resolver_step(struct keel_task *t);
static KEEL_TASK_TYPE(resolver_task, struct resolver, task, resolver_step);

static int resolver_step(struct keel_task *t)
{
	struct resolver *r = keel_container_of(t, struct resolver, task);

	KEEL_BEGIN(t);
	for (;;) {
		KEEL_AWAIT(t, keel_sleep(t, backends_conf.resolve_every_ns));
		if (keel_res(t) < 0)
			break; /* cancelled: the proxy stops */
		for (r->i = 0; r->i < nbackends; r->i++) {
			if (backends[r->i].numeric)
				continue;
			memset(&r->job, 0, sizeof(r->job));
			r->job.host = backends[r->i].host;
			r->job.port = backends[r->i].port;
			KEEL_AWAIT(t,
				   keel_blocking(t, resolve_job_run, &r->job));
			if (keel_token_cancelled(keel_task_token(t)))
				KEEL_EXIT(t, 0);
			resolve_done(&backends[r->i], &r->job, keel_res(t));
		}
	}
	KEEL_END(t);
}

bool health_on(void)
{
	return backends_conf.health == HEALTH_TCP ||
	       backends_conf.health == HEALTH_HTTP;
}

int backends_start(struct keel_runtime *rt)
{
	bool named = false;

	for (unsigned i = 0; i < nbackends; i++)
		named |= !backends[i].numeric;
	if (named &&
	    !keel_spawn(keel_runtime_loop(rt, 0), &resolver_task,
			KEEL_PRIO_LOW))
		return -ENOMEM;
	return health_start(rt);
}

/* ---- state ----------------------------------------------------------- */

void backend_set_up(struct backend *b, bool up, const char *why)
{
	atomic_store_explicit(&b->up, up, memory_order_relaxed);
	atomic_fetch_add_explicit(&b->transitions, 1, memory_order_relaxed);
	fprintf(stderr, "proxy: backend %s is %s%s%s%s\n", b->name,
		up ? "UP" : "DOWN", why ? " (" : "", why ? why : "",
		why ? ")" : "");
}

bool backend_is_up(const struct backend *b)
{
	return atomic_load_explicit(&b->up, memory_order_relaxed);
}

/* ---- the seam with session.c ----------------------------------------- */

/* Each loop rotates on its own: no cache line shared by every pick. */
static _Thread_local unsigned rr_next;

struct backend *backend_pick(uint64_t tried, struct sockaddr_storage *addr,
			     socklen_t *len)
{
	struct backend *best = NULL;
	uint64_t best_active = UINT64_MAX;
	unsigned start = rr_next++;

	for (unsigned k = 0; k < nbackends; k++) {
		struct backend *b = &backends[(start + k) % nbackends];

		if ((tried >> b->index & 1) || !backend_is_up(b))
			continue;
		if (backends_conf.balance == BALANCE_RR) {
			best = b;
			break;
		}
		/* leastconn: the fewest sessions on it; the rotation breaks
		 * ties, so equal backends still take turns. */
		uint64_t active = atomic_load_explicit(&b->active,
						       memory_order_relaxed);

		if (active < best_active) {
			best = b;
			best_active = active;
		}
	}
	if (!best || !backend_current(best, addr, len))
		return NULL;
	if (backends_conf.balance == BALANCE_RR)
		rr_next = best->index + 1;
	atomic_fetch_add_explicit(&best->active, 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&best->sessions, 1, memory_order_relaxed);
	return best;
}

unsigned backend_index(const struct backend *b)
{
	return b->index;
}

const char *backend_name(const struct backend *b)
{
	return b->name;
}

void backend_connected(struct backend *b, int result, uint64_t ns)
{
	if (result < 0) {
		atomic_fetch_add_explicit(&b->connect_failures, 1,
					  memory_order_relaxed);
		return;
	}
	unsigned i = 0;

	while (i < LATENCY_BUCKETS && (double)ns > latency_bounds[i] * 1e9)
		i++;
	atomic_fetch_add_explicit(&b->latency[i], 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&b->latency_ns, ns, memory_order_relaxed);
}

void backend_release(struct backend *b, uint64_t up, uint64_t down)
{
	atomic_fetch_sub_explicit(&b->active, 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&b->bytes_up, up, memory_order_relaxed);
	atomic_fetch_add_explicit(&b->bytes_down, down, memory_order_relaxed);
}
