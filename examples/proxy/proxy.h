/* SPDX-License-Identifier: MIT */
/*
 * proxy.h: what the proxy's modules share: the per-loop shard, the
 * settings main.c parses, and the tasks each module starts.
 */
#ifndef PROXY_H
#define PROXY_H

#include <netinet/in.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
#include <time.h>

#include <keel.h>
#include <keel/limit.h>

#define LISTEN_BACKLOG 1024
#define GATHER	       8	   /* chunks per sendmsg */
#define SPLICE_CHUNK   (64 * 1024) /* bytes per splice */
/* Descriptors not for sessions: stdio, the signalfd, and per loop its
 * ring, its listener and one for a client it holds or refuses. */
#define FD_RESERVE	    32
#define FD_RESERVE_PER_LOOP 3

/* One per loop, touched only by that loop's thread while it runs. */
struct shard {
	int listen_fd;
	struct keel_bufring *ring;
	uint64_t connections;
	uint64_t up, down; /* bytes client->backend, backend->client */
	uint64_t backend_failures;
	uint64_t resets;    /* directions ended by an error */
	uint64_t abandoned; /* clients gone while connecting */
	uint64_t refused;   /* connections over --max-conns */
	/* --retries */
	uint64_t retried;    /* connects moved on to the next backend */
	uint64_t no_backend; /* clients closed: no backend left to try */
	uint64_t detached;   /* what pumps whose session has gone count */
	uint64_t tls_failed; /* clients whose TLS handshake failed */
	/* --idle-timeout */
	struct session *sessions; /* those whose pumps run (session.c) */
	uint64_t idle_closed;	  /* sessions ended by it */
	/* --shed-target: this loop's shedder, and the clients it closed */
	struct keel_shed shed;
	uint64_t shed_closed;
	int error;
};

/* Settings (main.c), read by every loop once they run. */
extern struct shard *shards;
extern unsigned nshards;
extern bool splice_mode;
extern struct keel_bufring_opts ring_opts;
extern uint64_t connect_timeout_ns;
extern unsigned max_sessions;	  /* --max-conns, or the fds' room */
extern atomic_uint open_sessions; /* all loops together */

/* --- session.c's settings (main.c parses them) --- */
extern unsigned retries;	 /* --retries: backends tried after the first */
extern uint64_t idle_timeout_ns; /* --idle-timeout; 0: off */
extern bool proxy_protocol;	 /* --proxy-protocol: v2 to the backend */
extern unsigned low_water;	 /* --low-water: accept again at this many */
extern uint64_t shed_target_ns;	 /* --shed-target; 0: off */
extern uint64_t shed_interval_ns; /* --shed-interval */
/* TLS: termination (--cert), origination (--backend-tls); NULL: off */
struct keel_tls_ctx;
extern struct keel_tls_ctx *tls_server, *tls_client;
extern const char *backend_sni; /* --backend-sni */
/* --- end of session.c's settings --- */

/* session.c: a loop's acceptor, which starts a session per connection;
 * init_acceptor() is keel_spawn_on()'s init, its arg the loop's shard. */
extern const struct keel_task_type acceptor_task;
void init_acceptor(void *frame, void *arg);

/* Whether a report last made at *last may be made again: once a second. */
bool report_due(time_t *last);

/* ---- backends (backends.c, health.c, metrics.c) ----
 * The seam between the sessions and the backends. */
struct backend; /* one configured backend (a name or address, and what it
		 * resolved to) */
/* The backend a new session should try next: a healthy one not in `tried`
 * (bit i set: backend i was tried already by this session), chosen by the
 * --balance policy (rr, leastconn); NULL when none is left. Its current
 * address is copied to *addr and *len (re-resolution may change it later; the
 * copy stays the session's). Counts a session as on it until
 * backend_release(). */
struct backend *backend_pick(uint64_t tried, struct sockaddr_storage *addr,
			     socklen_t *len);
unsigned backend_index(const struct backend *b);   /* its bit in `tried` */
const char *backend_name(const struct backend *b); /* "host:port" as given */
/* A connect's outcome: 0 or -errno, after ns (the latency metric; a
 * failure is counted). */
void backend_connected(struct backend *b, int result, uint64_t ns);
/* The session on it ended having moved these bytes. */
void backend_release(struct backend *b, uint64_t up, uint64_t down);

#endif
