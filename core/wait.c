/* SPDX-License-Identifier: MIT */
/*
 * wait.c: the wait queue of the one-loop primitives (core/wait.h): the
 * semaphore, mutex, rwlock and the rest of core/sync.c, the ticker, the
 * limiters of supervise/limit.c.
 *
 * `struct keel__wq` is a FIFO of the waiting tasks' ext->waiter (a task
 * waits on one thing at a time, so that node is free), whose `owner` points
 * back at the queue. Whoever satisfies a waiter takes it off the queue and
 * completes its task (keel__wq_end); a cancellation or a timeout takes it
 * off from the other side (wait_leave) and then calls the queue's `left`
 * hook, so that the primitive can hand what the leaver held back to the
 * next waiter (a semaphore's permits, a barrier arrival). Invariants:
 * - a waiter is on its queue exactly while its task waits there, with
 *   ext->wait_cancel set; nothing else points at it;
 * - a task is never completed from inside its own await call (the awaits
 *   return keel__task_ready() instead), so a task is never both queued
 *   to run and waiting.
 */
#include "wait.h"

#include <errno.h>

void keel__wq_init(struct keel__wq *wq, struct keel_loop *loop,
		   void (*left)(struct keel__wq *, struct keel__waiter *))
{
	keel__list_init(&wq->q.list);
	wq->q.len = 0;
	wq->loop = loop;
	wq->left = left;
	wq->leave = NULL;
	wq->waits_for = NULL;
	wq->timed = false;
	wq->stamped = false;
}

/*
 * Whether the calling thread may touch a primitive of `loop`: it runs no
 * loop (set-up before keel_loop_run, or a host between steps: the caller's
 * word), or it runs this one.
 */
bool keel__wq_on_loop(struct keel_loop *loop)
{
	return !keel__current_core || keel__current_core == keel__core_of(loop);
}

/* Complete a waiter that has already been taken off its queue. */
void keel__wq_untime(struct keel__wq *wq, struct keel__waiter *w)
{
	if (wq->timed && w->payload) {
		struct keel__core *c = keel__core_of(wq->loop);
		struct keel__timed_wait *tw = w->payload;

		keel_timer_cancel(wq->loop, &tw->timer);
		keel__alloc_free(&c->alloc, tw, sizeof(*tw));
		w->payload = NULL;
	}
}

/* Complete a waiter that has already been taken off its queue. */
void keel__wq_end(struct keel__wq *wq, struct keel__waiter *w, int res)
{
	struct keel_task *t = w->task;

	keel__wq_untime(wq, w);
	w->state = KEEL__WAIT_IDLE;
	w->owner = NULL;
	t->ext->wait_cancel = NULL;
	keel__task_complete(t, res);
}

/* Pop the first waiter and complete it with `res`; false if none. */
bool keel__wq_wake_one(struct keel__wq *wq, int res)
{
	struct keel__waiter *w = keel__waitq_pop(&wq->q);

	if (w)
		keel__wq_end(wq, w, res);
	return w != NULL;
}

void keel__wq_wake_all(struct keel__wq *wq, int res)
{
	while (keel__wq_wake_one(wq, res))
		;
}

/* `t` leaves its queue before being satisfied (cancelled, timed out). */
static void wait_leave(struct keel_task *t, int res)
{
	struct keel__waiter *w = &t->ext->waiter;
	struct keel__wq *wq = w->owner;

	if (wq->leave) {
		wq->leave(wq, w, res);
		return;
	}
	keel__waitq_remove(&wq->q, w);
	keel__wq_end(wq, w, res);
	if (wq->left)
		wq->left(wq, w);
}

void keel__wq_cancelled(struct keel_task *t)
{
	wait_leave(t, keel__task_cancel_cause(t));
}

static void wait_timed_out(struct keel_loop *loop, struct keel_timer *timer,
			   void *arg)
{
	struct keel__timed_wait *tw = arg;

	(void)loop;
	wait_leave(tw->task, -ETIMEDOUT);
}

/*
 * Suspend `t` at the tail of `wq`; its ext must exist (keel__wq_prepare()).
 * `request` is kept in the waiter's `result` (what it asks for: permits),
 * `payload` in its payload. Cannot fail, so a caller may commit to the
 * wait before calling it.
 */
int keel__wq_begin(struct keel_task *t, struct keel__wq *wq, int request,
		   void *payload)
{
	struct keel__task_ext *x = t->ext;
	struct keel__waiter *w = &x->waiter;

	w->task = t;
	w->owner = wq;
	w->payload = payload;
	w->result = request;
	w->state = KEEL__WAIT_QUEUED;
	keel__waitq_push(&wq->q, w);
	x->wait_cancel = keel__wq_cancelled;
	return keel__task_suspend(t);
}

/* A deadline `timeout_ns` from now, saturating at "none". */
uint64_t keel__wq_deadline_after(uint64_t timeout_ns)
{
	uint64_t now = keel__clock_now();

	if (timeout_ns == UINT64_MAX || timeout_ns > UINT64_MAX - now)
		return UINT64_MAX;
	return now + timeout_ns;
}

/*
 * Suspend on `wq` until satisfied or `deadline` (UINT64_MAX: none); after
 * keel__wq_prepare().
 */
int keel__wq_begin_until(struct keel_task *t, struct keel__wq *wq, int request,
			 uint64_t deadline)
{
	struct keel__core *c = keel__core_of(t->loop);
	struct keel__timed_wait *tw = NULL;

	if (deadline != UINT64_MAX || wq->stamped) {
		tw = keel__alloc_zeroed(&c->alloc, sizeof(*tw));
		if (!tw)
			return keel__task_ready(t, -ENOMEM);
		tw->task = t;
		tw->since = keel__clock_now();
		keel_timer_init(&tw->timer, wait_timed_out, tw);
		if (deadline != UINT64_MAX &&
		    keel_timer_arm(t->loop, &tw->timer, deadline)) {
			keel__alloc_free(&c->alloc, tw, sizeof(*tw));
			return keel__task_ready(t, -ENOMEM);
		}
	}
	return keel__wq_begin(t, wq, request, tw);
}
