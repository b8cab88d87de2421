/* SPDX-License-Identifier: MIT */
/*
 * sim.h: private interface of the simulated kernel (keel/sim.h), between
 * its ring engine and the objects behind its descriptors.
 *
 * Who owns what (three branches built it at once):
 *   sim-ring: this header, sim/kernel.c (virtual clock, event queue, PRNG,
 *             the backend's setup/enter/register/teardown, SQE dispatch
 *             for every opcode through struct sim_file_ops, CQE posting
 *             and overflow, links and linked timeouts, ASYNC_CANCEL and
 *             its race, multishot, provided-buffer selection, MSG_RING,
 *             NOP and injected results, timeouts, the descriptor tables),
 *             sim/api.c (include/keel/sim.h), test/test_sim.c.
 *   sim-net:  the objects: sim/net.c (sockets on an in-memory loopback),
 *             sim/pipe.c, sim/fs.c, and the model's entry points declared
 *             under "The model" below; test/test_sim_net.c.
 *   sim-run:  the runner and scenarios (make sim).
 * sim/model_stub.c holds placeholder model entry points (all -EOPNOTSUPP)
 * so that the engine links before the objects land: sim-net deletes it in
 * the commit that defines them.
 *
 * Determinism: no real time, no real randomness, no pointer in a decision;
 * lists are walked in insertion order. sim__rand() is the one PRNG.
 */
#ifndef KEEL_SIM_PRIV_H
#define KEEL_SIM_PRIV_H

#include "loop.h"

#include <keel/sim.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/stat.h>

struct keel__sim;
struct sim_file;
struct sim_ring;

/* ---- objects behind descriptors (implemented by sim-net) ---- */
struct sim_file_ops {
	/* Each tries the operation now: result >= 0, or -errno; -EAGAIN
	 * means "not ready": the engine parks the op on the file and retries
	 * it when the file wakes it (kernel-style poll retry). */
	int (*recv)(struct sim_file *f, void *buf, size_t len, int msg_flags);
	int (*send)(struct sim_file *f, const void *buf, size_t len,
		    int msg_flags);
	/* off -1: the current position */
	int (*read)(struct sim_file *f, void *buf, size_t len, int64_t off);
	int (*write)(struct sim_file *f, const void *buf, size_t len,
		     int64_t off);
	/* A new connection in *out (one reference: the engine installs it
	 * as a descriptor). */
	int (*accept)(struct sim_file *f, struct sim_file **out);
	/* -EINPROGRESS is not used: -EAGAIN until established. The engine
	 * calls it again on each retry: the second call of an established
	 * connect returns 0. */
	int (*connect)(struct sim_file *f, const struct sockaddr *sa,
		       socklen_t len);
	int (*shutdown)(struct sim_file *f, int how);
	int (*fsync)(struct sim_file *f);
	int (*statx)(struct sim_file *f, struct statx *st);
	unsigned (*poll)(struct sim_file *f); /* POLLIN | POLLOUT | ... */
	void (*release)(struct sim_file *f);  /* last reference gone */
};

struct sim_file {
	/* NULL entries: -EOPNOTSUPP / -ENOTSOCK / -EINVAL as the kernel */
	const struct sim_file_ops *ops;
	struct keel__sim *sim;
	uint32_t refs;		   /* descriptors + ops in flight */
	struct keel__list waiters; /* ops parked on -EAGAIN (engine's) */
	/* model-private data follows (embed struct sim_file first) */
};

/* Set up the engine's part of a new object (refs = 1, no waiters). */
void sim__file_init(struct sim_file *f, struct keel__sim *s,
		    const struct sim_file_ops *ops);
void sim__file_get(struct sim_file *f);
/* Drop a reference; the last one calls ops->release. */
void sim__file_put(struct sim_file *f);
/*
 * The object's readiness may have changed: the engine retries the ops
 * parked on it, each at a PRNG-chosen virtual time soon after, so that
 * completion order varies with the seed. Safe to call from inside an op.
 */
void sim__file_wake(struct sim_file *f);

/* Plain descriptors start here: never mistaken for a real one. */
#define SIM_FD_BASE (1 << 24)
/* Rings are named (MSG_RING) by numbers above the descriptor space. */
#define SIM_RING_FD_BASE (SIM_FD_BASE + (1 << 22))

/* Install `f` (takes the caller's reference): the fd, or -EMFILE. */
int sim__fd_install(struct keel__sim *s, struct sim_file *f);
/* Borrowed, or NULL. */
struct sim_file *sim__fd_get(struct keel__sim *s, int fd);
/* Remove a descriptor (close): 0 or -EBADF. Drops its reference. */
int sim__fd_close(struct keel__sim *s, int fd);

uint64_t sim__now(const struct keel__sim *s);
/* The machine's one seeded PRNG. */
uint64_t sim__rand(struct keel__sim *s);
/* True with probability ppm / 1e6 (draws once). */
bool sim__chance(struct keel__sim *s, unsigned ppm);

/* ---- the model (sim-net) ---- */
/* Counters the model keeps (keel_sim_stats, keel_sim_check). */
struct sim_model_stats {
	uint64_t conns; /* connections established */
	uint64_t bytes_sent;
	uint64_t bytes_received;
	uint64_t bytes_lost;
};

/* IORING_OP_SOCKET: a new unconnected socket in *out (one reference). */
int sim__socket(struct keel__sim *s, int domain, int type, int protocol,
		struct sim_file **out);
/* keel_sim_listen: a listening socket on `addr` ("127.0.0.1:8080"). */
int sim__listen(struct keel__sim *s, const char *addr, int backlog,
		struct sim_file **out);
/* keel_sim_reset: reset the connection of `f` now (both ends). */
int sim__reset(struct sim_file *f);
/* IORING_OP_OPENAT (path relative to the machine's root; dfd ignored). */
int sim__open(struct keel__sim *s, const char *path, int flags, unsigned mode,
	      struct sim_file **out);
/* keel_sim_file: create (or replace) a file with this content. */
int sim__file_create(struct keel__sim *s, const char *path, const void *data,
		     size_t len);
/* The model's invariants at the end of a run: 0, or -1 and a reason. */
int sim__model_check(const struct keel__sim *s, char *why, size_t len);
/* keel_sim_destroy: free what the model keeps on the machine. */
void sim__model_fini(struct keel__sim *s);

/* ---- the machine ---- */
struct sim_event; /* kernel.c */

struct keel__sim {
	uint64_t now; /* the virtual clock, ns */
	uint64_t rng; /* splitmix64 state */
	uint64_t seq; /* event sequence: ties broken in insertion order */
	struct keel_sim_opts opts;
	/* Event queue: binary heap of pending engine events (kernel.c). */
	struct sim_event **heap;
	uint32_t nheap, heap_cap;
	/* Descriptor table: files[fd - SIM_FD_BASE]; a free slot is NULL. */
	struct sim_file **files;
	uint32_t nfiles;   /* slots in use or ever used */
	uint32_t fds_open; /* installed */
	/* The machine's rings (one per loop), by ring id. */
	struct sim_ring **rings;
	uint32_t nrings;
	uint32_t loops; /* alive */
	bool running;	/* inside keel_sim_run */
	/* The thread's clock before the machine's loops set it to `now`. */
	const uint64_t *outer_clock;
	struct sim_model_stats model;
	void *net; /* sim-net's state (sim/net.c) */
	void *fs;  /* sim-net's state (sim/fs.c) */
	struct {
		uint64_t ops, cqes, cancels_raced, overflows, faults;
		uint64_t inflight; /* ops executing or parked */
	} count;
};

/* The ring engine as a keel backend (kernel.c). */
struct keel__backend *sim__backend_new(struct keel__sim *s);
/* Undo sim__backend_new() when the loop's setup failed (no teardown). */
void sim__backend_drop(struct keel__backend *b);
/* The loop on ring `id`, or NULL. */
struct keel_loop *sim__ring_loop(struct keel__sim *s, uint32_t id);
void sim__ring_set_loop(struct keel__backend *b, struct keel_loop *loop);
/* Time of the earliest pending engine event, or UINT64_MAX. */
uint64_t sim__next_event(const struct keel__sim *s);
/* Run every event due at the clock's time; returns how many ran. */
unsigned sim__run_due(struct keel__sim *s);
/* Whether the ring of `loop` has CQEs (or overflow) to reap. */
bool sim__ring_has_cqes(struct keel_loop *loop);
/* Free the engine's part of the machine (heap, tables). */
void sim__kernel_fini(struct keel__sim *s);

#endif
