/* SPDX-License-Identifier: MIT */
/*
 * keel/workq.h: a bounded MPMC work queue shared by the loops of one
 * process: tasks of any loop push and pop `void *` items, so work spreads
 * over whichever loops have a popper free (crossbeam's bounded channel,
 * asyncio.Queue shared across threads).
 *
 * Items are pointers (the caller owns what they point to): the queue never
 * copies or frees them. Each item pushed is popped exactly once, FIFO.
 * A popper sleeping on another loop is woken through that loop's doorbell,
 * never by polling.
 */
#ifndef KEEL_WORKQ_H
#define KEEL_WORKQ_H

#include <keel/task.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct keel_workq;

struct keel_workq_stats {
	uint64_t pushed;
	uint64_t popped;
	uint64_t full; /* pushes that found the queue full */
	uint32_t depth;
	uint32_t capacity;
	uint32_t poppers; /* tasks waiting to pop */
	uint32_t pushers; /* tasks waiting for room */
};

/*
 * Create a queue of `capacity` items (1 .. 2^30): 0 or -EINVAL, -ENOMEM.
 * Ownership: *out holds one reference (keel_workq_release()).
 */
int keel_workq_new(uint32_t capacity, struct keel_workq **out);
struct keel_workq *keel_workq_ref(struct keel_workq *q);
/* Drop a reference; the last frees the queue (items left are dropped
 * unseen: drain it first if they own memory). */
void keel_workq_release(struct keel_workq *q);

/*
 * Await room and push `item`, from a task of any loop. keel_res: 0 (the
 * item is queued, or handed to a waiting popper), -EPIPE (closed, the
 * item stays the caller's), -ETIMEDOUT when `deadline_ns` passes
 * (absolute, keel_loop_now() clock; UINT64_MAX: none), the cancellation
 * cause, -ENOMEM. On any error the item was not queued.
 */
int keel_workq_push_until(struct keel_task *t, struct keel_workq *q, void *item,
			  uint64_t deadline_ns);
int keel_workq_push(struct keel_task *t, struct keel_workq *q, void *item);
/* Push without waiting, from any thread: 0, -EAGAIN (full), -EPIPE. */
int keel_workq_try_push(struct keel_workq *q, void *item);

/*
 * Await an item, from a task of any loop. keel_res: 0 with *out set,
 * -EPIPE (closed and drained), -ETIMEDOUT, the cancellation cause (a
 * cancelled popper takes nothing), -ENOMEM. `out` must stay valid until
 * the await returns (keep it in the frame).
 */
int keel_workq_pop_until(struct keel_task *t, struct keel_workq *q, void **out,
			 uint64_t deadline_ns);
int keel_workq_pop(struct keel_task *t, struct keel_workq *q, void **out);
/* Pop without waiting, from any thread: 0, -EAGAIN (empty), -EPIPE
 * (closed and drained). */
int keel_workq_try_pop(struct keel_workq *q, void **out);

/*
 * Close (any thread; idempotent): pushes fail with -EPIPE, waiting
 * pushers get -EPIPE, poppers drain what is queued, then get -EPIPE.
 */
void keel_workq_close(struct keel_workq *q);

void keel_workq_stats(struct keel_workq *q, struct keel_workq_stats *out);

#ifdef __cplusplus
}
#endif

#endif
