/* SPDX-License-Identifier: MIT */
/*
 * scenario.h: what the simulation runner (runner.c) and its scenarios
 * share. A scenario is a function that builds keel programs on a simulated
 * machine (keel/sim.h) from a seed and runs them to the end; the runner
 * gives it the machine, then checks the invariants every scenario must
 * keep (trace.c validates the trace).
 *
 * Everything a scenario decides comes from its seed (scn_rand) or from the
 * machine's own PRNG: no real time, no addresses, so that the same seed
 * replays the same run, event for event.
 */
#ifndef KEEL_SIM_SCENARIO_H
#define KEEL_SIM_SCENARIO_H

#include <keel.h>
#include <keel/sim.h>
#include <stdbool.h>
#include <stdint.h>

#define SCN_MAX_LOOPS 4
#define MS	      1000000ull /* ns */
#define SEC	      1000000000ull

/* One seed's run of one scenario. */
struct scn {
	struct keel_sim *sim;
	uint64_t seed;
	uint64_t rng; /* the scenario's own PRNG state (splitmix64) */
	struct keel_loop *loops[SCN_MAX_LOOPS];
	unsigned nloops;
	bool failed;
	char why[256];		/* the first failure */
	uint64_t bytes_checked; /* bytes a scenario checked end to end */
	uint64_t transfers;	/* transfers that reported success */
	/* The machine runs under injected faults (keel_sim_opts.faults):
	 * an error is an outcome then, not a failure (scn_faulted). */
	bool faults;
	uint64_t faulted;	  /* transfers or setups an error ended */
	uint64_t faults_injected; /* of every kind, by the loops (stats) */
	/* The most zombies (exited tasks with ops in flight) seen at once. */
	uint64_t zombies_seen;
	void *world; /* scn_world(): freed after the loops */
	/* The trace starts with the first loop (scn_loop), so that it reads
	 * the machine's virtual clock from its first event. */
	const char *trace_path;
	bool tracing;
};

struct scenario {
	const char *name;
	const char *what; /* one line, for --list */
	void (*run)(struct scn *s);
};

/* The scenarios, in the order `make sim` runs them. */
extern const struct scenario scn_echo, scn_proxy, scn_supervise, scn_mailbox,
    scn_cancel, scn_zombie, scn_idle, scn_embedded;

/* A loop on the scenario's machine (the runner checks and destroys it at
 * the end). Fails the seed and returns NULL on error. */
struct keel_loop *scn_loop(struct scn *s);
/*
 * The scenario's state, zeroed, which its tasks point to: it lives until
 * the runner has destroyed the loops (a destroy runs the defers of tasks
 * left, which may touch it). One per run. Fails the seed and returns NULL
 * when out of memory.
 */
void *scn_world(struct scn *s, size_t size);
/* Record a failure (the first one is the seed's reason). */
void scn_fail(struct scn *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
#define SCN_CHECK(s, cond)                                                     \
	do {                                                                   \
		if (!(cond))                                                   \
			scn_fail((s), "%s:%d: %s", __FILE__, __LINE__, #cond); \
	} while (0)

/*
 * An op ended with `res` (an error, or 0: an EOF that came early) where
 * the scenario expects none without faults. Under injected faults that is
 * an outcome if `res` is an error a fault can cause (the ones a fault spec
 * injects, and what follows from them: a reset, a broken pipe, a refused
 * connection, a timeout): counted (faulted), true, and the scenario winds
 * the transfer down (what arrived before was checked all the same).
 * Without faults, or for any other error: false, the caller fails the
 * seed.
 */
bool scn_faulted(struct scn *s, int res);

/*
 * A client's writer task failed its send (`t`'s result) on `fd`, not
 * cancelled: under faults the error (EPIPE, ECANCELED, EIO... injected)
 * leaves the connection with bytes that will never come, so it is reset,
 * as the real failure would have, and the client's reader sees the reset
 * instead of waiting forever. Returns the result to exit with.
 */
int scn_writer_failed(struct keel_task *t, struct scn *s, int fd);

/* The scenario's PRNG: a value, one below n (n > 0), lo..hi inclusive,
 * true with `pct` percent. */
uint64_t scn_rand(struct scn *s);
uint64_t scn_below(struct scn *s, uint64_t n);
uint64_t scn_range(struct scn *s, uint64_t lo, uint64_t hi);
bool scn_pct(struct scn *s, unsigned pct);

/*
 * keel_sim_run() for at most `for_ns` of virtual time; anything but "all
 * done" fails the seed (a deadlock, or time running out, is a hang of the
 * program under test). Returns keel_sim_run()'s result.
 */
int scn_run(struct scn *s, uint64_t for_ns);

/* Sample the machine's loops (zombies_seen). */
void scn_sample(struct scn *s);

/*
 * The content of byte stream `stream` at offset `off`: senders fill, and
 * receivers check, so a byte lost, duplicated or reordered shows at the
 * first offset where it happens. scn_verify returns the index of the
 * first byte that differs, or len.
 */
void scn_fill(uint64_t stream, uint64_t off, void *buf, size_t len);
size_t scn_verify(uint64_t stream, uint64_t off, const void *buf, size_t len);

/* "127.0.0.1:port" into a sockaddr for keel_connect. */
void scn_addr(uint16_t port, struct sockaddr_storage *ss, socklen_t *len);
/* The same as text for keel_sim_listen. */
const char *scn_addr_text(uint16_t port, char buf[32]);

/*
 * What the scenarios over connected pairs set up before their main task:
 * a ring of 2, 8 or 64 buffers of 1 KiB (the PRNG's pick) and a listener
 * on `port` with a backlog of `backlog`. Fails the seed and returns false
 * on error.
 */
bool scn_ring_and_listener(struct scn *s, struct keel_loop *loop, uint16_t port,
			   unsigned backlog, struct keel_bufring **ring,
			   int *lfd);

#endif
