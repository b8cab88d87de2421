/* SPDX-License-Identifier: MIT */
/*
 * keel/loop.h: the loop (run by keel's runtime or embedded in a host
 * program), its timers, the multi-thread runtime and introspection (task
 * dumps, stall detector, metrics).
 */
#ifndef KEEL_LOOP_H
#define KEEL_LOOP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- loop ---- */
/*
 * the per-thread event loop, run by keel or embedded in a host.
 *
 * A loop owns one io_uring ring, its run queues, timers, op ledger and
 * allocator arena. It is used from one thread only (the ring is created
 * SINGLE_ISSUER). keel_loop_run() drives it until no work is left; a host
 * program can instead call keel_loop_step() from its own loop and poll
 * keel_loop_fd() in its own epoll set.
 */
struct keel_loop;

/* keel_loop_opts.flags */
#define KEEL_LOOP_SQPOLL   0x1u /* kernel SQ polling thread (opt-in) */
#define KEEL_LOOP_NO_DEFER 0x2u /* do not ask for DEFER_TASKRUN */
#define KEEL_LOOP_RESTRICT 0x4u /* a least-privilege ring: restrict_ops */
/*
 * Keep an idle recv stream's multishot recv armed. By default a recv
 * stream that has received nothing for one to two idle_ms (250-500 ms by
 * default) trades its armed recv for a poll for readability, and arms the
 * recv again when data comes: an armed multishot recv costs the kernel
 * about 600 bytes more per socket than a poll (io_uring's per-request
 * async data), which is most of what an idle connection costs it. With this
 * flag a connection that wakes up saves the poll's completion and the re-arm
 * instead.
 */
#define KEEL_LOOP_NO_IDLE_POLL 0x8u

/*
 * keel_loop_opts.restrict_ops: the op classes a KEEL_LOOP_RESTRICT ring
 * allows (0: all of them, every op keel offers). Keel's own machinery
 * (nop, close, cancels, linked timeouts, cross-loop posts) is always
 * allowed; a sleep or timer needs no kernel op. See keel_loop_create(3).
 */
#define KEEL_OPS_NET 0x1u /* socket, accept, connect, send, recv, streams */
#define KEEL_OPS_FILES                                                         \
	0x2u /* openat, read, write, readv, writev, fsync, statx */
#define KEEL_OPS_PIPES 0x4u /* splice, tee */

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
	 * Completion batching under load: when recent wake-ups each brought
	 * several CQEs (>= 4 on average), wait up to this long for as many
	 * again (at most a third of the ops in flight) before handling the
	 * first, so that one io_uring_enter serves more requests; where the
	 * kernel has min-wait (Linux 6.12) it then returns with what came, or
	 * waits on for the first CQE. Loops with one CQE per wake-up never wait
	 * for more. 0: the default bound (20 us); KEEL_BATCH_WAIT_OFF: never
	 * wait for a batch.
	 */
	unsigned batch_wait_ns;
	/* With KEEL_LOOP_RESTRICT: KEEL_OPS_* allowed, 0: every class. */
	unsigned restrict_ops;
	/*
	 * Who executes the loop's I/O: KEEL_BACKEND_AUTO (0: the
	 * KEEL_BACKEND environment variable, else io_uring with a fallback
	 * to epoll where io_uring is refused), KEEL_BACKEND_IO_URING or
	 * KEEL_BACKEND_EPOLL. keel_loop_create(3), NOTES, says what differs.
	 */
	unsigned backend;
	/*
	 * The idle sweep's period: a recv stream that received nothing for
	 * one to two of them parks on a poll (or, opened with
	 * KEEL_RECV_IDLE_RETURN, has keel_recv_next() return -EAGAIN). 0:
	 * 250 ms. Shorter frees idle connections' memory sooner (with
	 * keel_hibernate(): their tasks too); each sweep walks the ops in
	 * flight.
	 */
	unsigned idle_ms;
};

/* keel_loop_opts.batch_wait_ns: no completion batching. */
#define KEEL_BATCH_WAIT_OFF 0xffffffffu

/* keel_loop_opts.backend */
#define KEEL_BACKEND_AUTO     0u
#define KEEL_BACKEND_IO_URING 1u
#define KEEL_BACKEND_EPOLL    2u

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
 * return them, drops its blocking jobs still queued (their awaits end with
 * -ECANCELED) and waits for those running, however long they take (a job
 * cannot be stopped, and its result goes to this loop; a keel_resolve()
 * lookup is the exception: its await ends and the lookup, left behind,
 * no longer needs the loop), runs the defer
 * stacks of tasks that never exited, frees all frames, closes the ring.
 * A frame whose op the kernel still holds after a second is leaked, with
 * the loop's frame memory, since the kernel may yet write into it.
 * Must be called on the loop's thread. A NULL loop is a no-op.
 * Ownership: frees the loop and every frame, ring and timer it held;
 * pointers into them die here.
 */
void keel_loop_destroy(struct keel_loop *loop);

/*
 * Run until there is nothing left to do (no live task, no op in flight, no
 * armed timer) or keel_loop_stop() is called. Returns 0 or a negative errno
 * from the ring.
 * Ownership: nothing changes hands; the caller still owns the loop.
 */
int keel_loop_run(struct keel_loop *loop);

/*
 * One loop turn: run ready tasks, submit, wait for completions at most
 * `timeout_ns` (0: do not wait; negative: until something happens) or until
 * the nearest timer, reap completions, fire expired timers.
 * Returns 1 if work remains, 0 if the loop is idle with nothing pending, or
 * a negative errno.
 * Ownership: nothing changes hands.
 */
int keel_loop_step(struct keel_loop *loop, int64_t timeout_ns);

/*
 * Make keel_loop_run() return after the current turn.
 * Ownership: nothing changes hands.
 */
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
 * are ready, other threads have posted work to the loop, a stop was asked
 * for or requests are queued for the kernel; else the time to the nearest
 * timer in ns, or -1 when only keel_loop_fd() can wake the loop (a
 * completion, or another thread's post: between steps the loop stays
 * parked, so a post rings its doorbell and makes the fd readable). The
 * same answer the loop's own turn uses.
 * Ownership: reads the loop; nothing changes hands.
 */
int64_t keel_loop_timeout_ns(const struct keel_loop *loop);

/*
 * The loop's clock: CLOCK_MONOTONIC in ns, read once per turn.
 * Ownership: reads the loop; nothing changes hands.
 */
uint64_t keel_loop_now(const struct keel_loop *loop);

/*
 * The loop the calling thread is currently running, or NULL.
 * Ownership: not a reference: valid while that loop exists.
 */
struct keel_loop *keel_loop_current(void);

/*
 * A one-line, actionable explanation of a keel_loop_create() error.
 * Ownership: a constant string, never freed.
 */
const char *keel_loop_explain(int err);

/*
 * Describe the ring: the setup flags in use and every downgrade with its
 * reason, e.g. "flags: SINGLE_ISSUER DEFER_TASKRUN ...". Writes at most
 * `len` bytes (NUL-terminated) and returns the length it needed.
 * Ownership: writes into the caller's `buf`.
 */
size_t keel_loop_describe(const struct keel_loop *loop, char *buf, size_t len);

/*
 * Whether the kernel supports an io_uring opcode (IORING_OP_*) and, on a
 * restricted ring (KEEL_LOOP_RESTRICT), the ring allows it.
 * Ownership: reads the loop; nothing changes hands.
 */
int keel_loop_has_op(const struct keel_loop *loop, unsigned opcode);

/*
 * Inject faults into this loop's I/O, to test how a program copes: `spec`
 * is a comma-separated list of `op:kind[:probability]` rules, e.g.
 * "recv:reset:0.01,send:short:0.05,accept:emfile:0.001". `op` is an opcode
 * as keel_opcode_name() spells it (recv, send, accept, connect, read,
 * write, ...) or `*` (every op; a close is never failed). `kind` is an
 * error, a shorthand (reset, pipe, again, nobufs, io, nomem, canceled,
 * emfile, refused, timedout) or an errno name (ECONNRESET): the op fails
 * with it; `short`: a send, recv, read or write asks for fewer bytes;
 * `delay=<n>(ns|us|ms|s)`: the op reaches the kernel that much later;
 * `reorder`: one enter later (ops issued after it may overtake it). The
 * probability is in [0,1] (default 1); draws come from a PRNG seeded with
 * `seed`, so a run repeats. Faults are counted in
 * keel_loop_stats.faults_injected and traced as KEEL_EV_FAULT. Rewrites
 * requests just before they are submitted, on any backend; off, it costs
 * one predictable branch per enter. The environment variable KEEL_FAULTS
 * (seed: KEEL_FAULTS_SEED) applies a spec to every loop created.
 * NULL or "" turns injection off (ops held back still go out). Returns 0;
 * -EINVAL for a bad spec (nothing changed); -EOPNOTSUPP when the kernel
 * cannot inject a result into a NOP (IORING_NOP_INJECT_RESULT, Linux
 * 6.10); -ENOMEM.
 * Ownership: `spec` is only read during the call.
 */
int keel_loop_inject_faults(struct keel_loop *loop, const char *spec,
			    uint64_t seed);

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
	uint64_t ops_inflight; /* requests the kernel still owns: ledger
				* entries, and idle streams' polls */
	uint64_t timers_armed; /* timers armed now */
	uint64_t aborted;      /* tasks aborted by a panic or a fault */
	uint64_t fault_recoveries; /* faults turned into task aborts */
	uint64_t stalls;	   /* steps longer than the stall threshold */
	/* The fast network path (keel/io.h, keel_send_zc). */
	uint64_t zc_sends;	   /* SEND_ZC requests */
	uint64_t zc_copied;	   /* ... the kernel copied anyway (loopback) */
	uint64_t multishot_rearms; /* streams re-armed after a final CQE */
	uint64_t enobufs;	  /* recv streams that found their ring empty */
	uint64_t idle_polls;	  /* idle recv streams parked on a poll */
	uint64_t accept_backoffs; /* accepts paused by EMFILE & co */
	uint64_t chunks_lent;	  /* received chunks handed to tasks */
	uint64_t bufs_in_use;	  /* ring buffers out of the kernel's hands */
	uint64_t faults_injected; /* keel_loop_inject_faults(), KEEL_FAULTS */
	/* Frames (and waiters) of the loop's allocator not yet freed: 0
	 * once every task has exited and the kernel returned its ops. */
	uint64_t frames_live;
	/* Ops and registrations a restricted ring refused (KEEL_LOOP_RESTRICT)
	 * before they reached the kernel. */
	uint64_t ops_refused;
	/* Wait-for cycles found by deadlock checks (each counted when first
	 * found: keel_loop_deadlocks()). */
	uint64_t deadlocks;
	/* Enters that waited for a batch of completions (batch_wait_ns). */
	uint64_t batch_waits;
	/* ... of them, those whose bound ran out before the batch came: each
	 * held its first completion up to batch_wait_ns. */
	uint64_t batch_short;
	/* Bytes the loop's frame allocator holds: its 64 KiB slabs of small
	 * frames, free ones included, and the larger frames live. Slabs
	 * whose frames are all free are given back by the idle sweep once
	 * free frames outweigh live ones. */
	uint64_t frame_bytes;
	/* Sockets hibernated now (keel_hibernate(): a record and a poll
	 * each, no task). */
	uint64_t hibernated;
};

/*
 * A snapshot of the loop's counters.
 * Ownership: a copy into the caller's `out`.
 */
void keel_loop_stats(const struct keel_loop *loop, struct keel_loop_stats *out);

/* ---- timer ---- */
/*
 * the loop's timers, and sleeping in a task.
 *
 * Timers live on a hierarchical timing wheel: arm and cancel are O(1),
 * timers fire by deadline (to the ns, never early), those due together in
 * the order they were armed, and a loop holds millions of them. Deadlines
 * are absolute CLOCK_MONOTONIC nanoseconds (keel_loop_now() is the loop's
 * clock).
 */
struct keel_loop;
struct keel_task;
struct keel_timer;

/* Runs on the loop's thread when the timer fires; it may re-arm it. */
typedef void (*keel_timer_fn)(struct keel_loop *loop, struct keel_timer *timer,
			      void *arg);

/* Caller-owned; its fields are private. */
struct keel_timer {
	uint64_t deadline;
	uint64_t seq;	/* arming order, breaks ties */
	uint32_t where; /* UINT32_MAX when not armed; else a wheel slot,
			 * the run, the near heap or the timers armed
			 * since the last turn (core/timer.c) */
	uint32_t index; /* its place there */
	keel_timer_fn fn;
	void *arg;
};

/*
 * Prepare a timer (not armed).
 * Ownership: `timer` and `arg` are the caller's; keel keeps no pointer until
 * the timer is armed.
 */
void keel_timer_init(struct keel_timer *timer, keel_timer_fn fn, void *arg);

/*
 * Arm (or move) the timer to fire at `deadline_ns`. A deadline already past
 * fires on the next turn. Returns 0 or -ENOMEM.
 * Ownership: the timer must stay valid until it fires or is cancelled.
 */
int keel_timer_arm(struct keel_loop *loop, struct keel_timer *timer,
		   uint64_t deadline_ns);

/*
 * Arm the timer `delay_ns` after the loop's current time.
 * Ownership: as keel_timer_arm(): `timer` stays valid until it fires or is
 * cancelled.
 */
int keel_timer_arm_after(struct keel_loop *loop, struct keel_timer *timer,
			 uint64_t delay_ns);

/*
 * Disarm; returns true if the timer was armed.
 * Ownership: `timer` is the caller's again (free to reuse or free).
 */
bool keel_timer_cancel(struct keel_loop *loop, struct keel_timer *timer);

/* Ownership: reads the timer; nothing changes hands. */
static inline bool keel_timer_armed(const struct keel_timer *timer)
{
	return timer->where != UINT32_MAX;
}

/*
 * Await `ns` nanoseconds; keel_res() is 0 (or a negative errno).
 * Ownership: nothing changes hands.
 */
int keel_sleep(struct keel_task *t, uint64_t ns);

/*
 * Await an absolute CLOCK_MONOTONIC deadline.
 * Ownership: nothing changes hands.
 */
int keel_sleep_until(struct keel_task *t, uint64_t deadline_ns);

/* ---- runtime ---- */
/*
 * N loops on N threads, shared-nothing, and the blocking
 * pool.
 *
 * keel_runtime_create() starts one loop per thread (default: as many as
 * the CPUs the process may use), each with its own ring, allocator arena,
 * timers and run queues, optionally pinned to a CPU. keel_runtime_run()
 * runs a main task on loop 0 (on the calling thread) and returns when it
 * exits, after a graceful shutdown of every loop.
 *
 * Shutdown, in two phases (ask, wait, then stop): on every loop the stop
 * token (keel_loop_stop_token()) is cancelled first; a service that wants
 * to finish its work holds the loop (keel_loop_hold()) and watches that
 * token. A loop without holds then has its root token cancelled at once;
 * one with holds when its last hold is released, or when
 * opts.shutdown_grace_ns has passed, whichever comes first. Cancelling the
 * root token makes every task see -ECANCELED at its await and cancels its
 * ops; each loop runs until its tasks have exited and the kernel has
 * returned their ops; the threads are joined. The main task's exit,
 * keel_runtime_shutdown(), SIGINT or SIGTERM start it (the signals unless
 * opts.no_signals); a second SIGINT or SIGTERM kills the process. SIGUSR1
 * writes a task dump of every loop to stderr.
 *
 * Loops talk through mailboxes (keel/sync.h); a task can be spawned on
 * any loop from any thread with keel_spawn_on().
 */
struct keel_runtime;
struct keel_task;
struct keel_task_type;

struct keel_runtime_opts {
	unsigned threads; /* loops; 0: the CPUs this process may use */
	bool pin;	  /* pin loop i to the i-th allowed CPU */
	bool no_signals;  /* leave SIGINT/SIGTERM/SIGUSR1 alone */
	struct keel_loop_opts loop; /* for every loop */
	unsigned blocking_threads;  /* blocking pool size (default 4) */
	unsigned blocking_queue;    /* its queue bound (default 1024) */
	/* How long a shutdown waits for the loops' holds before it cancels
	 * their root tokens; 0: 30 s, UINT64_MAX: no limit. */
	uint64_t shutdown_grace_ns;
};

/*
 * Create the loops and their threads (loop 0 on the calling thread, which
 * must then call keel_runtime_run). Returns 0 or a negative errno (a loop's
 * ring setup error: see keel_loop_explain()).
 * Ownership: the caller owns the runtime: keel_runtime_run(), then
 * keel_runtime_destroy().
 */
int keel_runtime_create(struct keel_runtime **out,
			const struct keel_runtime_opts *opts);

/*
 * Free a runtime after keel_runtime_run returned.
 * Ownership: `rt` and its loops are freed.
 */
void keel_runtime_destroy(struct keel_runtime *rt);

/* Ownership: reads the runtime; nothing changes hands. */
unsigned keel_runtime_size(const struct keel_runtime *rt);

/*
 * Loop i's counters: a snapshot while the runtime runs, its final counters
 * once that loop has stopped (also during shutdown) and after
 * keel_runtime_run() returned. -EINVAL for a bad index. On the loop's own
 * thread the snapshot is current; from another thread it is the copy the
 * loop made when last asked (each call asks for a fresh one), so it can
 * be a call old, and all zeros before the loop first ran.
 * Ownership: a copy into the caller's `out`.
 */
int keel_runtime_loop_stats(struct keel_runtime *rt, unsigned i,
			    struct keel_loop_stats *out);
/*
 * Ownership: the runtime's loop, valid from keel_runtime_create() until
 * keel_runtime_run() returns; not a reference.
 */
struct keel_loop *keel_runtime_loop(struct keel_runtime *rt, unsigned i);

/*
 * The runtime of the calling thread's loop, or NULL.
 * Ownership: not a reference: valid while that runtime runs.
 */
struct keel_runtime *keel_runtime_current(void);

/* Fills a new task's frame on its loop's thread, before its first step. */
typedef void (*keel_init_fn)(void *frame, void *arg);

/*
 * Spawn a task on `loop` from any thread (a task of another loop, or a
 * plain thread). The frame is allocated and `init(frame, arg)` runs on the
 * loop's own thread, then the task runs. Returns 0 or -ENOMEM; the spawn
 * itself happens asynchronously (spawning on the calling task's own loop
 * happens at once).
 * Ownership: `arg` is only passed to `init`, and must stay valid until
 * init has run: on another loop that is later, at a time the caller does
 * not learn, and never if that loop cannot allocate the frame (the spawn is
 * then dropped silently). So pass static data, or heap memory that init
 * frees (it leaks in that out-of-memory case), never a local or a field of
 * a frame that may be freed first. `type` must outlive the task.
 */
int keel_spawn_on(struct keel_loop *loop, const struct keel_task_type *type,
		  unsigned flags, keel_init_fn init, void *arg);

/*
 * Run `main_type` on loop 0 (init fills its frame) and every other loop on
 * its thread; return the main task's exit status once it has exited and
 * every loop has shut down. Returns a negative errno if the runtime could
 * not run. With `main_type` NULL there is no main task: the loops serve
 * (the tasks spawned on them before, e.g. a server's) until a shutdown,
 * and the result is 0.
 * Ownership: `arg` is passed to `init` on loop 0 and must stay valid until
 * init ran (keel_runtime_run() returning is late enough); `main_type` must
 * outlive the run.
 */
int keel_runtime_run(struct keel_runtime *rt,
		     const struct keel_task_type *main_type, keel_init_fn init,
		     void *arg);

/*
 * Start a graceful shutdown (from any thread).
 * Ownership: nothing changes hands.
 */
void keel_runtime_shutdown(struct keel_runtime *rt);

/*
 * The loop's stop token: a child of its root token (so cancelling the root
 * cancels it too), cancelled alone when a runtime shutdown begins. An
 * embedded loop's is cancelled only by its host (keel_token_cancel()).
 * Ownership: the loop's; no reference is taken (keel_token_ref() to keep it
 * for a task or callback of the loop).
 */
struct keel_token *keel_loop_stop_token(struct keel_loop *loop);

/*
 * Hold the loop: a runtime shutdown cancels its root token only once every
 * hold is released (or the shutdown grace has passed). A count; call both
 * on the loop's own thread. Releasing the last hold of a stopping loop
 * cancels its root token at once.
 * Ownership: the caller owns the hold until keel_loop_release().
 */
void keel_loop_hold(struct keel_loop *loop);
/* Ownership: gives back one hold taken with keel_loop_hold(). */
void keel_loop_release(struct keel_loop *loop);

/* ---- the blocking pool --------------------------------------------------
 * For work io_uring cannot do (getaddrinfo, heavy CPU): it runs on a pool
 * thread and the awaiting task is woken on its own loop with the result.
 * For host names, keel_resolve() (keel/io.h) is ready-made, and a cancel
 * or its deadline ends its await at once.
 */
typedef int (*keel_blocking_fn)(void *arg);

/*
 * Await fn(arg) on a pool thread; keel_res is its return value. The queue
 * is bounded: -EAGAIN when it is full (try later, or shed load).
 * Ownership: `arg` belongs to the pool until the await returns, even when
 * the task is cancelled (a running job cannot be stopped; the task then
 * gets the job's result when it finishes).
 */
int keel_blocking(struct keel_task *t, keel_blocking_fn fn, void *arg);

/*
 * Size the process's blocking pool before its first use.
 * Ownership: the pool is the process's; nothing changes hands.
 */
int keel_blocking_pool_config(unsigned threads, unsigned queue);

/* ---- introspect ---- */
/*
 * task dumps, the stall detector, and metrics.
 *
 * A task dump lists every live task of a loop with its state, where it
 * waits (source site and the awaited expression), and its ops in flight
 * with opcode and age; stackless frames make it cheap. Call it from the
 * loop's thread (between turns, or from a task); the multi-thread runtime
 * also dumps on SIGUSR1.
 *
 * The stall detector reports a step that runs longer than the threshold,
 * with the task's name and the site it resumed from. It costs the loop no
 * clock read: a watchdog thread samples each loop's step counter every half
 * threshold, so a step that never returns is reported too (one stderr line
 * at most once a second per loop; a custom reporter is called, after the
 * step, for every stalled step). A task's first step is its startup work
 * (e.g. creating a buffer ring with MAP_POPULATE, an actor's on_start): it
 * is reported only when it runs longer than ten times the threshold. Step
 * durations themselves are in traces.
 *
 * Metrics are rendered in the Prometheus text format 0.0.4: counters end
 * in _total, durations are in seconds, the only label is the loop index.
 */
struct keel_loop;
struct keel_task;

/*
 * Write a task dump of `loop` to `fd` (e.g. STDERR_FILENO), in one piece:
 * the dumps of loops on other threads to the same `fd` are written before
 * or after it, never in the middle. Returns the number of tasks listed or a
 * negative errno.
 * Ownership: `fd` stays the caller's.
 */
int keel_loop_dump(struct keel_loop *loop, int fd);

/*
 * Deadlock detection. Every wait of keel's own kind knows whom it waits
 * for: a mutex its holder, an rwlock its writer or its read holders (the
 * first four, by task) and the writer queued ahead, a BLOCK send to a full
 * mailbox the task that last received from it, a join its target. A
 * semaphore's permits and a condition variable's signal have no known
 * releaser and add no edge; nor do ops, timers, or anything on another
 * loop (a cycle across loops is not seen). The check walks that wait-for
 * graph of the loop and reports each cycle, one line each:
 *   deadlock: task 3 (a) waits at f.c:40 `keel_mutex_lock(t, m2, ...)`
 *   for mutex 0x... held by task 4 (b), which waits at f.c:40 `...` for
 *   mutex 0x... held by task 3 (a)
 * Task dumps end with these lines, and a stall report checks too; the
 * tasks in a cycle stay as they are and the rest of the loop runs on
 * (break a cycle with a timeout or a cancellation). Cycles found for the
 * first time are counted (keel_deadlocks_detected_total).
 *
 * Check `loop` (from its thread, as a dump): write the lines into `buf` (as
 * snprintf: cut at `len`, always terminated if len > 0; buf may be NULL
 * with len 0) and return the number of cycles, or -ENOMEM.
 * Ownership: writes into the caller's `buf`; nothing changes hands.
 */
int keel_loop_deadlocks(struct keel_loop *loop, char *buf, size_t len);

/* The default stall threshold: a low-latency loop should not run a step
 * for longer than this. */
#define KEEL_STALL_DEFAULT_NS (10ull * 1000 * 1000)

/* Called (on the loop's thread, after the step) for a reported stall. */
typedef void (*keel_stall_fn)(struct keel_loop *loop, const char *task_name,
			      const char *resumed_from, uint64_t step_ns,
			      void *arg);

/*
 * Set the stall threshold (0 turns the detector off) and the reporter
 * (NULL: one line on stderr, "keel: stall: ..."). On by default at
 * KEEL_STALL_DEFAULT_NS with the stderr reporter.
 * Ownership: `arg` stays the caller's and must stay valid while `fn` is set
 * on the loop.
 */
void keel_loop_set_stall(struct keel_loop *loop, uint64_t threshold_ns,
			 keel_stall_fn fn, void *arg);

/*
 * Render the metrics of `n` loops (label loop="0".."n-1") into `buf` in
 * Prometheus text format 0.0.4. Returns the length the full text needs
 * (as snprintf: if it is >= len, the output was cut). Thread-safe for the
 * loops of the calling thread's runtime: another loop's counters are the
 * copy it last published (keel_runtime_loop_stats()), and its
 * keel_ring_cqes_per_wake histogram is left out.
 * Ownership: writes into the caller's `buf`; `loops` is only read during the
 * call.
 */
size_t keel_metrics_render(struct keel_loop *const *loops, unsigned n,
			   char *buf, size_t len);

#ifdef __cplusplus
}
#endif
#endif
