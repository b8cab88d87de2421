/* SPDX-License-Identifier: MIT */
/*
 * keel/loop.h: the per-thread event loop, run by keel or embedded in a host.
 *
 * A loop owns one io_uring ring, its run queues, timers, op ledger and
 * allocator arena. It is used from one thread only (the ring is created
 * SINGLE_ISSUER). keel_loop_run() drives it until no work is left; a host
 * program can instead call keel_loop_step() from its own loop and poll
 * keel_loop_fd() in its own epoll set.
 */
#ifndef KEEL_LOOP_H
#define KEEL_LOOP_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct keel_loop;

/* keel_loop_opts.flags */
#define KEEL_LOOP_SQPOLL   0x1u /* kernel SQ polling thread (opt-in) */
#define KEEL_LOOP_NO_DEFER 0x2u /* do not ask for DEFER_TASKRUN */

struct keel_loop_opts {
	unsigned sq_entries; /* submission queue size (default 256) */
	unsigned cq_entries; /* completion queue size (default 4 x sq) */
	unsigned budget;     /* task steps per turn (default 256) */
	unsigned flags;	     /* KEEL_LOOP_* */
	/*
	 * Spin before parking (opt-in): when idle, poll for cross-loop work
	 * for up to this many ns before blocking in the kernel. Trades CPU
	 * for latency: a cross-thread round trip then costs about a cache
	 * line exchange instead of two thread wake-ups (~7 us here).
	 */
	unsigned spin_ns;
	/*
	 * Completion batching under load (opt-in, 0: off): when recent
	 * wake-ups each brought several CQEs (>= 2 on average), wait up to
	 * this long for as many again before handling the first, so that one
	 * io_uring_enter serves more requests. Loops with one CQE per wake-up
	 * never wait for more. Measured on echo (50000 ns): at 64 busy
	 * connections 0.03-0.05 enters per request instead of 0.2-0.4 and
	 * less CPU per request; at 4-16 connections it cost throughput, hence
	 * off by default.
	 */
	unsigned batch_wait_ns;
};

/*
 * Create a loop on the calling thread. `opts` may be NULL for defaults.
 * Returns 0 and sets *out, or a negative errno:
 *   -EPERM   io_uring is disabled (kernel.io_uring_disabled, seccomp)
 *   -ENOSYS  the kernel has no io_uring
 *   -ENOMEM  memlock limit too small, or out of memory
 *   -EINVAL  bad options
 * keel_loop_explain() turns these into a one-line actionable message.
 * Ownership: the caller owns the loop; keel_loop_destroy() releases it.
 */
int keel_loop_create(struct keel_loop **out, const struct keel_loop_opts *opts);

/*
 * Destroy a loop: cancels every op in flight and waits for the kernel to
 * return them, runs the defer stacks of tasks that never exited, frees all
 * frames, closes the ring. Must be called on the loop's thread.
 */
void keel_loop_destroy(struct keel_loop *loop);

/*
 * Run until there is nothing left to do (no live task, no op in flight, no
 * armed timer) or keel_loop_stop() is called. Returns 0 or a negative errno
 * from the ring.
 */
int keel_loop_run(struct keel_loop *loop);

/*
 * One loop turn: run ready tasks, submit, wait for completions at most
 * `timeout_ns` (0: do not wait; negative: until something happens) or until
 * the nearest timer, reap completions, fire expired timers.
 * Returns 1 if work remains, 0 if the loop is idle with nothing pending, or
 * a negative errno.
 */
int keel_loop_step(struct keel_loop *loop, int64_t timeout_ns);

/* Make keel_loop_run() return after the current turn. */
void keel_loop_stop(struct keel_loop *loop);

/*
 * A file descriptor for a host's epoll: readable when completions are
 * waiting; then call keel_loop_step(loop, 0), which also resets it. It is
 * an eventfd registered with the ring (created on the first call), not the
 * ring fd: with DEFER_TASKRUN the kernel does not wake pollers of the ring
 * fd for completions. Returns the fd or a negative errno; the loop owns it.
 */
int keel_loop_fd(struct keel_loop *loop);

/*
 * How long a host may sleep before the next keel_loop_step(): 0 when tasks
 * are ready, the time to the nearest timer in ns, or -1 when only I/O (the
 * ring fd) can wake the loop.
 */
int64_t keel_loop_timeout_ns(const struct keel_loop *loop);

/* The loop's clock: CLOCK_MONOTONIC in ns, read once per turn. */
uint64_t keel_loop_now(const struct keel_loop *loop);

/* The loop the calling thread is currently running, or NULL. */
struct keel_loop *keel_loop_current(void);

/* A one-line, actionable explanation of a keel_loop_create() error. */
const char *keel_loop_explain(int err);

/*
 * Describe the ring: the setup flags in use and every downgrade with its
 * reason, e.g. "flags: SINGLE_ISSUER DEFER_TASKRUN ...". Writes at most
 * `len` bytes (NUL-terminated) and returns the length it needed.
 */
size_t keel_loop_describe(const struct keel_loop *loop, char *buf, size_t len);

/* Whether the kernel supports an io_uring opcode (IORING_OP_*). */
int keel_loop_has_op(const struct keel_loop *loop, unsigned opcode);

struct keel_loop_stats {
	uint64_t turns;	       /* loop turns */
	uint64_t steps;	       /* task steps run */
	uint64_t enters;       /* io_uring_enter calls made by the loop */
	uint64_t sqes;	       /* SQEs submitted */
	uint64_t cqes;	       /* CQEs reaped */
	uint64_t stale_cqes;   /* CQEs of a stale generation, dropped */
	uint64_t sq_full;      /* submits forced by a full SQ */
	uint64_t cq_overflows; /* times the CQ had overflowed (none lost) */
	uint64_t spawned;      /* tasks spawned */
	uint64_t exited;       /* tasks exited */
	uint64_t timers_fired; /* timers fired (sleeps included) */
	uint64_t tasks_live;   /* tasks spawned and not yet exited */
	uint64_t zombies;      /* exited tasks whose ops are still in flight */
	uint64_t ops_inflight; /* ledger entries the kernel still owns */
	uint64_t timers_armed; /* timers armed now */
	uint64_t aborted;      /* tasks aborted by a panic or a fault */
	uint64_t fault_recoveries; /* faults turned into task aborts */
	uint64_t stalls;	   /* steps longer than the stall threshold */
	/* The fast network path (keel/buf.h, keel_send_zc). */
	uint64_t zc_sends;	   /* SEND_ZC requests */
	uint64_t zc_copied;	   /* ... the kernel copied anyway (loopback) */
	uint64_t multishot_rearms; /* streams re-armed after a final CQE */
	uint64_t enobufs;	  /* recv streams that found their ring empty */
	uint64_t accept_backoffs; /* accepts paused by EMFILE & co */
	uint64_t chunks_lent;	  /* received chunks handed to tasks */
	uint64_t bufs_in_use;	  /* ring buffers out of the kernel's hands */
};

/* A snapshot of the loop's counters. */
void keel_loop_stats(const struct keel_loop *loop, struct keel_loop_stats *out);

#ifdef __cplusplus
}
#endif
#endif
