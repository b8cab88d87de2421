/* SPDX-License-Identifier: MIT */
/*
 * keel/introspect.h: task dumps, the stall detector, and metrics.
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
 * step, for every stalled step). Step durations themselves are in traces.
 *
 * Metrics are rendered in the Prometheus text format 0.0.4: counters end
 * in _total, durations are in seconds, the only label is the loop index.
 */
#ifndef KEEL_INTROSPECT_H
#define KEEL_INTROSPECT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct keel_loop;
struct keel_task;

/*
 * Write a task dump of `loop` to `fd` (e.g. STDERR_FILENO). Returns the
 * number of tasks listed or a negative errno.
 */
int keel_loop_dump(struct keel_loop *loop, int fd);

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
 */
void keel_loop_set_stall(struct keel_loop *loop, uint64_t threshold_ns,
			 keel_stall_fn fn, void *arg);

/*
 * Render the metrics of `n` loops (label loop="0".."n-1") into `buf` in
 * Prometheus text format 0.0.4. Returns the length the full text needs
 * (as snprintf: if it is >= len, the output was cut).
 */
size_t keel_metrics_render(struct keel_loop *const *loops, unsigned n,
			   char *buf, size_t len);

#ifdef __cplusplus
}
#endif
#endif
