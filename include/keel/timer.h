/* SPDX-License-Identifier: MIT */
/*
 * keel/timer.h: the loop's timers, and sleeping in a task.
 *
 * Timers live on a 4-ary min-heap keyed by (deadline, arming order): arm and
 * cancel are O(log n), timers due together fire in the order they were
 * armed, and a loop holds millions of them. Deadlines are absolute
 * CLOCK_MONOTONIC nanoseconds (keel_loop_now() is the loop's clock).
 */
#ifndef KEEL_TIMER_H
#define KEEL_TIMER_H

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct keel_loop;
struct keel_task;
struct keel_timer;

/* Runs on the loop's thread when the timer fires; it may re-arm it. */
typedef void (*keel_timer_fn)(struct keel_loop *loop, struct keel_timer *timer,
			      void *arg);

/* Caller-owned; its fields are private. */
struct keel_timer {
	uint64_t deadline;
	uint64_t seq;	     /* arming order, breaks ties */
	uint32_t heap_index; /* UINT32_MAX when not armed */
	keel_timer_fn fn;
	void *arg;
};

/* Prepare a timer (not armed). */
void keel_timer_init(struct keel_timer *timer, keel_timer_fn fn, void *arg);

/*
 * Arm (or move) the timer to fire at `deadline_ns`. A deadline already past
 * fires on the next turn. Returns 0 or -ENOMEM.
 * Ownership: the timer must stay valid until it fires or is cancelled.
 */
int keel_timer_arm(struct keel_loop *loop, struct keel_timer *timer,
		   uint64_t deadline_ns);

/* Arm the timer `delay_ns` after the loop's current time. */
int keel_timer_arm_after(struct keel_loop *loop, struct keel_timer *timer,
			 uint64_t delay_ns);

/* Disarm; returns true if the timer was armed. */
bool keel_timer_cancel(struct keel_loop *loop, struct keel_timer *timer);

static inline bool keel_timer_armed(const struct keel_timer *timer)
{
	return timer->heap_index != UINT32_MAX;
}

/* Await `ns` nanoseconds; keel_res() is 0 (or a negative errno). */
int keel_sleep(struct keel_task *t, uint64_t ns);

/* Await an absolute CLOCK_MONOTONIC deadline. */
int keel_sleep_until(struct keel_task *t, uint64_t deadline_ns);

#ifdef __cplusplus
}
#endif
#endif
