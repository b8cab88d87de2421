/* SPDX-License-Identifier: MIT */
/*
 * keel/sim.h: a deterministic simulated kernel for keel's loops.
 *
 * A simulated machine runs keel loops on an in-memory io_uring: a virtual
 * clock (sleeps, timeouts and deadlines fire in virtual time, so a
 * ten-minute scenario runs in well under a second), in-memory sockets,
 * pipes and files, provided-buffer rings, multishot ops, ASYNC_CANCEL with
 * its race, MSG_RING between the machine's loops and CQ overflow. One
 * seeded PRNG decides completion order and timing: the same seed gives the
 * same run. All of a machine's loops live on the thread that created it.
 */
#ifndef KEEL_SIM_H
#define KEEL_SIM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct keel_loop;
struct keel_loop_opts;

/* one simulated machine: its clock, PRNG, descriptors and loops */
struct keel_sim;

struct keel_sim_opts {
	uint64_t seed;
	/* Each completion lands 0..this after its op is ready (virtual
	 * time), PRNG-chosen; 0: the default, 50 us. */
	uint64_t max_latency_ns;
	unsigned short_ppm; /* chance (per million) a transfer is cut short */
	unsigned sndbuf;    /* socket buffer bytes per direction (65536) */
	unsigned fd_limit;  /* descriptors before -EMFILE (1024) */
	/* A KEEL_FAULTS spec applied to every loop of the machine, or NULL
	 * (until fault injection is in, keel_sim_create refuses one with
	 * -EOPNOTSUPP). */
	const char *faults;
};

/* A machine; `opts` NULL: seed 0 and the defaults. 0 or a negative errno. */
int keel_sim_create(struct keel_sim **out, const struct keel_sim_opts *opts);
/* Free the machine. Its loops must have been destroyed first (a machine
 * with loops left is not freed and the call aborts with a message). */
void keel_sim_destroy(struct keel_sim *sim);
/* A loop on the machine (keel_loop_destroy() frees it as usual). */
int keel_sim_loop_create(struct keel_sim *sim, struct keel_loop **out,
			 const struct keel_loop_opts *opts);
/* The machine's virtual clock, in ns (what keel's clock reads on its
 * loops). */
uint64_t keel_sim_now(const struct keel_sim *sim);
/*
 * Run every loop of the machine (keel_loop_step() without waiting, in a
 * PRNG order) and move virtual time to the next event whenever no loop can
 * make progress, until no loop is alive or virtual `for_ns` has passed
 * (0: no limit). 0: all done; -ETIME: time ran out; -EDEADLK: loops are
 * alive but nothing can ever happen; another negative errno from a step.
 */
int keel_sim_run(struct keel_sim *sim, uint64_t for_ns);

/* Simulated descriptors for scenario code: a listening socket on the
 * machine's loopback ("127.0.0.1:8080"), a file with the given content.
 * The descriptor, or a negative errno. */
int keel_sim_listen(struct keel_sim *sim, const char *addr, int backlog);
int keel_sim_file(struct keel_sim *sim, const char *path, const void *data,
		  size_t len);
/* Reset the connection of `fd` now: both ends see it as Linux would. */
int keel_sim_reset(struct keel_sim *sim, int fd);

struct keel_sim_stats {
	uint64_t ops;	     /* SQEs executed */
	uint64_t cqes;	     /* CQEs posted */
	uint64_t virtual_ns; /* the clock */
	uint64_t fds_open;
	uint64_t conns;
	uint64_t bytes_sent;
	uint64_t bytes_received;
	uint64_t bytes_lost;
	uint64_t cancels_raced; /* cancels that found their op completing */
	uint64_t overflows;	/* CQEs that went to the overflow list */
	uint64_t faults;	/* injected results executed */
};

void keel_sim_stats(const struct keel_sim *sim, struct keel_sim_stats *out);
/* The machine's own invariants (descriptors closed, no op in flight, byte
 * counts agree): 0, or -1 and a one-line reason in `why`. */
int keel_sim_check(const struct keel_sim *sim, char *why, size_t len);

#ifdef __cplusplus
}
#endif

#endif
