/* SPDX-License-Identifier: MIT */
/*
 * workq.c: the bounded MPMC work queue (semantics in keel/workq.h).
 *
 * One mutex guards the ring and both waiter queues, so "the queue is empty,
 * I sleep" and "I push, is anyone asleep?" are each one critical section:
 * no wakeup can be lost between them. The critical sections only move
 * pointers; wakes are posted after the unlock, and user code never runs
 * under the lock. (A lock-free ring would still need the waiter queues
 * under a lock, and a push would then have to re-check for sleepers.)
 *
 * A popper is woken without an item: the wake, run on the popper's loop
 * (its inbox; the doorbell rings if the loop is parked), retries the pop.
 * So a popper cancelled while its wake travels takes nothing and passes
 * the wake on, and an item taken meanwhile by a running popper only sends
 * the woken one back to sleep: the item is never in flight, hence never
 * lost. A blocked pusher is the other way round: a pop that frees room
 * moves the first pusher's item in under the lock (FIFO, and the room
 * cannot be stolen), and the wake only completes the pusher with 0.
 *
 * Waiters use their task's waiter node (its `wake` item is posted to the
 * task's loop); what a timed wait needs besides (its timer, the out
 * pointer) is allocated per sleep, on the slow path only.
 */
#include "core.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>

#include <keel/workq.h>

struct keel_workq {
	pthread_mutex_t lock;
	void **ring;
	uint32_t cap, head, count;
	int closed;
	struct keel__waitq poppers; /* sleeping, FIFO */
	struct keel__waitq pushers; /* sleeping, FIFO; payload: the item */
	uint32_t refs;
	uint64_t pushed, popped, full; /* under the lock */
};

/* A sleeping wait's state besides the waiter node (task's loop only). */
struct wq_wait {
	struct keel_timer timer;
	struct keel_task *task;
	void **out;   /* a popper's */
	void *item;   /* a pusher's */
	bool timed;   /* the timer is armed */
	bool expired; /* it fired while a wake was in flight */
};

int keel_workq_new(uint32_t capacity, struct keel_workq **out)
{
	struct keel_workq *q;

	if (!capacity || capacity > (1u << 30))
		return -EINVAL;
	q = calloc(1, sizeof(*q));
	if (!q)
		return -ENOMEM;
	q->ring = calloc(capacity, sizeof(*q->ring));
	if (!q->ring) {
		free(q);
		return -ENOMEM;
	}
	q->cap = capacity;
	q->refs = 1;
	pthread_mutex_init(&q->lock, NULL);
	*out = q;
	return 0;
}

struct keel_workq *keel_workq_ref(struct keel_workq *q)
{
	__atomic_add_fetch(&q->refs, 1, __ATOMIC_RELAXED);
	return q;
}

void keel_workq_release(struct keel_workq *q)
{
	if (__atomic_sub_fetch(&q->refs, 1, __ATOMIC_ACQ_REL))
		return;
	pthread_mutex_destroy(&q->lock);
	free(q->ring);
	free(q);
}

/* ---- under the lock ----------------------------------------------------- */

static void ring_put(struct keel_workq *q, void *item)
{
	q->ring[(q->head + q->count) % q->cap] = item;
	q->count++;
	q->pushed++;
}

/* Queue `item` if there is room; the popper to wake, if one sleeps. */
static int put_locked(struct keel_workq *q, void *item,
		      struct keel__waiter **wake)
{
	if (q->closed)
		return -EPIPE;
	if (q->count == q->cap)
		return -EAGAIN;
	ring_put(q, item);
	*wake = keel__waitq_pop(&q->poppers);
	if (*wake)
		(*wake)->state = KEEL__WAIT_WAKING;
	return 0;
}

/* Take the oldest item; the pusher whose item moved in, to wake. */
static int take_locked(struct keel_workq *q, void **out,
		       struct keel__waiter **wake)
{
	if (!q->count)
		return q->closed ? -EPIPE : -EAGAIN;
	*out = q->ring[q->head];
	q->head = (q->head + 1) % q->cap;
	q->count--;
	q->popped++;
	*wake = keel__waitq_pop(&q->pushers);
	if (*wake) {
		struct wq_wait *st = (*wake)->payload;

		ring_put(q, st->item);
		(*wake)->state = KEEL__WAIT_SENT;
		(*wake)->result = 0;
	}
	return 0;
}

/* ---- wakes and the end of a wait ---------------------------------------- */

/* Post `w`'s wake to its task's loop (after the unlock). */
static void post_wake(struct keel_workq *q, struct keel__waiter *w)
{
	struct keel_loop *loop = w->task->loop;

	keel_workq_ref(q); /* held until the wake ran */
	keel__core_of(loop)->hooks.remote_post(loop, &w->wake);
}

/* End `t`'s wait with `res` (its loop; the waiter is off the queue). */
static void wait_end(struct keel_task *t, int res)
{
	struct keel__waiter *w = &t->ext->waiter;
	struct wq_wait *st = w->payload;
	struct keel_workq *q = w->owner;

	if (st->timed)
		keel_timer_cancel(t->loop, &st->timer);
	free(st);
	w->payload = NULL;
	w->state = KEEL__WAIT_IDLE;
	t->ext->wait_cancel = NULL;
	keel__task_complete(t, res);
	keel_workq_release(q); /* the wait's reference */
}

/* A woken popper gave up: wake the next if items wait for one. */
static void pass_on(struct keel_workq *q)
{
	struct keel__waiter *w = NULL;

	pthread_mutex_lock(&q->lock);
	if (q->count)
		w = keel__waitq_pop(&q->poppers);
	if (w)
		w->state = KEEL__WAIT_WAKING;
	pthread_mutex_unlock(&q->lock);
	if (w)
		post_wake(q, w);
}

/* On the popper's loop: items came (or the queue closed); retry. */
static void popper_woken(struct keel_loop *loop, struct keel__remote_item *it)
{
	struct keel__waiter *w =
	    keel_container_of(it, struct keel__waiter, wake);
	struct keel_task *t = w->task;
	struct keel_workq *q = w->owner;
	struct wq_wait *st = w->payload;
	struct keel__waiter *pusher = NULL;
	int cause = keel__task_cancel_cause(t);
	int r;

	(void)loop;
	if (!cause && (t->flags & KEEL__T_KILLED))
		cause = -ECANCELED;
	if (cause) {
		/* It takes nothing: the item it was woken for stays queued. */
		keel_workq_ref(q);
		wait_end(t, cause);
		pass_on(q);
		keel_workq_release(q);
		keel_workq_release(q); /* the wake's */
		return;
	}
	pthread_mutex_lock(&q->lock);
	r = take_locked(q, st->out, &pusher);
	if (r == -EAGAIN && !st->expired) {
		/* Another popper was quicker: sleep again. */
		w->state = KEEL__WAIT_QUEUED;
		keel__waitq_push(&q->poppers, w);
	}
	pthread_mutex_unlock(&q->lock);
	if (pusher)
		post_wake(q, pusher);
	if (r != -EAGAIN || st->expired)
		wait_end(t, r == -EAGAIN ? -ETIMEDOUT : r);
	keel_workq_release(q); /* the wake's */
}

/* On the pusher's loop: its item went in (0) or the queue closed. */
static void pusher_woken(struct keel_loop *loop, struct keel__remote_item *it)
{
	struct keel__waiter *w =
	    keel_container_of(it, struct keel__waiter, wake);
	struct keel_workq *q = keel_workq_ref(w->owner);

	(void)loop;
	wait_end(w->task, w->result);
	keel_workq_release(q);
	keel_workq_release(q); /* the wake's */
}

/* Cancelled or timed out: leave the queue if still on it. */
static void wait_leave(struct keel_task *t, int res)
{
	struct keel__waiter *w = &t->ext->waiter;
	struct wq_wait *st = w->payload;
	struct keel_workq *q = w->owner;
	bool queued;

	pthread_mutex_lock(&q->lock);
	queued = w->state == KEEL__WAIT_QUEUED;
	if (queued)
		keel__waitq_remove(
		    w->wake.run == popper_woken ? &q->poppers : &q->pushers, w);
	pthread_mutex_unlock(&q->lock);
	if (queued)
		wait_end(t, res);
	else if (res == -ETIMEDOUT)
		st->expired = true; /* the wake in flight decides */
	/* Else a wake is in flight: a popper's sees the cancellation, a
	 * pusher's item already went in (0). */
}

static void wait_cancelled(struct keel_task *t)
{
	wait_leave(t, keel__task_cancel_cause(t));
}

static void wait_timed_out(struct keel_loop *loop, struct keel_timer *timer,
			   void *arg)
{
	struct wq_wait *st = arg;

	(void)loop;
	(void)timer;
	st->timed = false; /* fired: nothing to cancel */
	wait_leave(st->task, -ETIMEDOUT);
}

/*
 * Prepare `t` to sleep (before taking the lock): its waiter and state.
 * Returns NULL when out of memory.
 */
static struct wq_wait *wait_prepare(struct keel_task *t, struct keel_workq *q,
				    keel__remote_fn run)
{
	struct keel__task_ext *x = keel__task_ext(t);
	struct wq_wait *st;

	if (!x)
		return NULL;
	st = calloc(1, sizeof(*st));
	if (!st)
		return NULL;
	st->task = t;
	keel_timer_init(&st->timer, wait_timed_out, st);
	x->waiter.task = t;
	x->waiter.owner = q;
	x->waiter.payload = st;
	x->waiter.wake.run = run;
	return st;
}

/* The wait is queued: arm its deadline and suspend. */
static int wait_sleep(struct keel_task *t, struct keel_workq *q,
		      struct wq_wait *st, uint64_t deadline)
{
	keel_workq_ref(q); /* the wait's: dropped by wait_end */
	t->ext->wait_cancel = wait_cancelled;
	if (deadline != UINT64_MAX &&
	    keel_timer_arm(t->loop, &st->timer, deadline) == 0)
		st->timed = true;
	return keel__task_suspend_external(t);
}

/* ---- the API ------------------------------------------------------------ */

int keel_workq_try_push(struct keel_workq *q, void *item)
{
	struct keel__waiter *w = NULL;
	int r;

	pthread_mutex_lock(&q->lock);
	r = put_locked(q, item, &w);
	if (r == -EAGAIN)
		q->full++;
	pthread_mutex_unlock(&q->lock);
	if (w)
		post_wake(q, w);
	return r;
}

/*
 * The awaiting push (`item`) or pop (into `out`): try at once; when the queue
 * is full (push) or empty (pop), try again and queue the task in one locked
 * section, so that no wake can slip between the try and the sleep.
 * Level-triggered cancellation: a cancelled task takes and puts nothing.
 */
static int await_turn(struct keel_task *t, struct keel_workq *q, bool push,
		      void *item, void **out, uint64_t deadline_ns)
{
	int cause = keel__task_cancel_cause(t);

	if (cause)
		return keel__task_ready(t, cause);
	int r =
	    push ? keel_workq_try_push(q, item) : keel_workq_try_pop(q, out);

	if (r != -EAGAIN)
		return keel__task_ready(t, r);
	if (deadline_ns != UINT64_MAX && deadline_ns <= keel__clock_now())
		return keel__task_ready(t, -ETIMEDOUT);
	struct wq_wait *st =
	    wait_prepare(t, q, push ? pusher_woken : popper_woken);
	struct keel__waiter *w = NULL;

	if (!st)
		return keel__task_ready(t, -ENOMEM);
	st->item = item;
	st->out = out;
	pthread_mutex_lock(&q->lock);
	r = push ? put_locked(q, item, &w) : take_locked(q, out, &w);
	if (r == -EAGAIN) {
		t->ext->waiter.state = KEEL__WAIT_QUEUED;
		keel__waitq_push(push ? &q->pushers : &q->poppers,
				 &t->ext->waiter);
	}
	pthread_mutex_unlock(&q->lock);
	if (w)
		post_wake(q, w);
	if (r != -EAGAIN) {
		t->ext->waiter.payload = NULL;
		free(st);
		return keel__task_ready(t, r);
	}
	return wait_sleep(t, q, st, deadline_ns);
}

int keel_workq_push_until(struct keel_task *t, struct keel_workq *q, void *item,
			  uint64_t deadline_ns)
{
	return await_turn(t, q, true, item, NULL, deadline_ns);
}

int keel_workq_push(struct keel_task *t, struct keel_workq *q, void *item)
{
	return keel_workq_push_until(t, q, item, UINT64_MAX);
}

int keel_workq_try_pop(struct keel_workq *q, void **out)
{
	struct keel__waiter *w = NULL;
	int r;

	pthread_mutex_lock(&q->lock);
	r = take_locked(q, out, &w);
	pthread_mutex_unlock(&q->lock);
	if (w)
		post_wake(q, w);
	return r;
}

int keel_workq_pop_until(struct keel_task *t, struct keel_workq *q, void **out,
			 uint64_t deadline_ns)
{
	return await_turn(t, q, false, NULL, out, deadline_ns);
}

int keel_workq_pop(struct keel_task *t, struct keel_workq *q, void **out)
{
	return keel_workq_pop_until(t, q, out, UINT64_MAX);
}

void keel_workq_close(struct keel_workq *q)
{
	struct keel__waitq wake = {0};
	struct keel__waiter *w;

	pthread_mutex_lock(&q->lock);
	if (!q->closed) {
		q->closed = 1;
		/* Pushers fail; poppers retry: they drain, then see it closed.
		 */
		while ((w = keel__waitq_pop(&q->pushers))) {
			w->state = KEEL__WAIT_WAKING;
			w->result = -EPIPE;
			keel__waitq_push(&wake, w);
		}
		while ((w = keel__waitq_pop(&q->poppers))) {
			w->state = KEEL__WAIT_WAKING;
			keel__waitq_push(&wake, w);
		}
	}
	pthread_mutex_unlock(&q->lock);
	while ((w = keel__waitq_pop(&wake)))
		post_wake(q, w);
}

void keel_workq_stats(struct keel_workq *q, struct keel_workq_stats *out)
{
	pthread_mutex_lock(&q->lock);
	out->pushed = q->pushed;
	out->popped = q->popped;
	out->full = q->full;
	out->depth = q->count;
	out->capacity = q->cap;
	out->poppers = q->poppers.len;
	out->pushers = q->pushers.len;
	pthread_mutex_unlock(&q->lock);
}
