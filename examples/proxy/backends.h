/* SPDX-License-Identifier: MIT */
/*
 * backends.h: what backends.c, health.c and metrics.c share: a backend's
 * state and counters, and the settings main.c parses for them. The
 * sessions see only the seam in proxy.h.
 */
#ifndef PROXY_BACKENDS_H
#define PROXY_BACKENDS_H

#include "proxy.h"

#define MAX_BACKENDS	64 /* the bits of a session's `tried` */
#define ADDR_WORDS	4  /* a sockaddr_in6, in 8-byte words */
#define LATENCY_BUCKETS 14 /* finite bounds; one more for +Inf */

enum balance { BALANCE_RR, BALANCE_LEASTCONN };
enum health_kind { HEALTH_DEFAULT, HEALTH_OFF, HEALTH_TCP, HEALTH_HTTP };

struct backends_config {
	enum balance balance;
	uint64_t resolve_every_ns;
	enum health_kind health;
	const char *health_path; /* HEALTH_HTTP: the GET's target */
	uint64_t health_every_ns;
	uint64_t health_timeout_ns;
	unsigned rise, fall;
	const char *metrics_host; /* --metrics; NULL: no /metrics */
	uint16_t metrics_port;
};

/* Aligned so that two backends never share a cache line. */
struct backend {
	/* Set before the loops run, then only read. */
	char name[128]; /* "host:port" as given */
	char host[112];
	uint16_t port;
	unsigned index;
	bool numeric; /* an address, never resolved */
	/* The address: a seqlock (backends.c); addr_len 0: none yet. */
	_Alignas(64) atomic_uint addr_seq;
	atomic_uint addr_len;
	_Atomic uint64_t addr[ADDR_WORDS];
	atomic_bool up;
	/* Written at start (an unresolved name), then by its health task. */
	char reason[96];
	/* Counters (relaxed). */
	_Alignas(64) _Atomic uint64_t active;
	_Atomic uint64_t sessions;
	_Atomic uint64_t bytes_up, bytes_down;
	_Atomic uint64_t connect_failures;
	_Atomic uint64_t latency[LATENCY_BUCKETS + 1];
	_Atomic uint64_t latency_ns;
	_Atomic uint64_t transitions;
	_Atomic uint64_t resolve_failures;
	_Atomic uint64_t checks, check_failures;
} __attribute__((aligned(64)));

extern struct backends_config backends_conf;
extern struct backend backends[MAX_BACKENDS];
extern unsigned nbackends;
extern const double latency_bounds[LATENCY_BUCKETS];

/* main.c: -b adds one (0, -EINVAL: not HOST:PORT, -E2BIG: over 64,
 * -ENAMETOOLONG); at start, resolve every name (blocking: before the
 * loops run), print each that does not resolve and return how many did;
 * from the main task, start the resolver and health tasks; the /metrics
 * server (metrics.c) before the runtime runs, freed after. */
int backends_add(const char *arg);
unsigned backends_resolve_all(void);
int backends_start(struct keel_runtime *rt);
int metrics_start(struct keel_runtime *rt);
int metrics_port(void);
void metrics_free(void);

/* backends.c */
bool backend_current(const struct backend *b, struct sockaddr_storage *ss,
		  socklen_t *len);
void backend_set_addr(struct backend *b, const struct sockaddr_storage *ss,
		      socklen_t len);
void backend_set_up(struct backend *b, bool up, const char *why);
bool backend_is_up(const struct backend *b);
bool health_on(void);
void addr_text(const struct sockaddr_storage *ss, char *out, size_t len);

/* health.c: a check task per backend, spread over the loops. */
int health_start(struct keel_runtime *rt);

#endif
