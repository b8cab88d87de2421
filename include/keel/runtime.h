/* SPDX-License-Identifier: MIT */
/*
 * keel/runtime.h: N loops on N threads, shared-nothing, and the blocking
 * pool.
 *
 * keel_runtime_create() starts one loop per thread (default: as many as
 * the CPUs the process may use), each with its own ring, allocator arena,
 * timers and run queues, optionally pinned to a CPU. keel_runtime_run()
 * runs a main task on loop 0 (on the calling thread) and returns when it
 * exits, after a graceful shutdown of every loop.
 *
 * Shutdown: every loop's root token is cancelled, so every task sees
 * -ECANCELED at its await and its ops are cancelled; each loop runs until
 * its tasks have exited and the kernel has returned their ops; the threads
 * are joined. SIGINT or SIGTERM start it (unless opts.no_signals); a second
 * one kills the process. SIGUSR1 writes a task dump of every loop to
 * stderr.
 *
 * Loops talk through mailboxes (keel/mailbox.h); a task can be spawned on
 * any loop from any thread with keel_spawn_on().
 */
#ifndef KEEL_RUNTIME_H
#define KEEL_RUNTIME_H

#include <keel/loop.h>
#include <stdbool.h>

#ifdef __cplusplus
extern "C" {
#endif

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
};

/*
 * Create the loops and their threads (loop 0 on the calling thread, which
 * must then call keel_runtime_run). Returns 0 or a negative errno (a loop's
 * ring setup error: see keel_loop_explain()).
 */
int keel_runtime_create(struct keel_runtime **out,
			const struct keel_runtime_opts *opts);

/* Free a runtime after keel_runtime_run returned. */
void keel_runtime_destroy(struct keel_runtime *rt);

unsigned keel_runtime_size(const struct keel_runtime *rt);

/*
 * Loop i's counters: a snapshot while the runtime runs (read from another
 * thread: each value is current or a little old), its final counters after
 * keel_runtime_run() returned. -EINVAL for a bad index.
 */
int keel_runtime_loop_stats(struct keel_runtime *rt, unsigned i,
			    struct keel_loop_stats *out);
struct keel_loop *keel_runtime_loop(struct keel_runtime *rt, unsigned i);

/* The runtime of the calling thread's loop, or NULL. */
struct keel_runtime *keel_runtime_current(void);

/* Fills a new task's frame on its loop's thread, before its first step. */
typedef void (*keel_init_fn)(void *frame, void *arg);

/*
 * Spawn a task on `loop` from any thread (a task of another loop, or a
 * plain thread). The frame is allocated and `init(frame, arg)` runs on the
 * loop's own thread, then the task runs. Returns 0 or -ENOMEM; the spawn
 * itself happens asynchronously (spawning on the calling task's own loop
 * happens at once).
 */
int keel_spawn_on(struct keel_loop *loop, const struct keel_task_type *type,
		  unsigned flags, keel_init_fn init, void *arg);

/*
 * Run `main_type` on loop 0 (init fills its frame) and every other loop on
 * its thread; return the main task's exit status once it has exited and
 * every loop has shut down. Returns a negative errno if the runtime could
 * not run.
 */
int keel_runtime_run(struct keel_runtime *rt,
		     const struct keel_task_type *main_type, keel_init_fn init,
		     void *arg);

/* Start a graceful shutdown (from any thread). */
void keel_runtime_shutdown(struct keel_runtime *rt);

/* ---- the blocking pool --------------------------------------------------
 * For work io_uring cannot do (getaddrinfo, heavy CPU): it runs on a pool
 * thread and the awaiting task is woken on its own loop with the result.
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

/* Size the process's blocking pool before its first use. */
int keel_blocking_pool_config(unsigned threads, unsigned queue);

#ifdef __cplusplus
}
#endif
#endif
