/* SPDX-License-Identifier: MIT */
/*
 * wait.h: the wait queue that the one-loop primitives share (core/sync.c's
 * semaphore, mutex, rwlock, condition variable...; core/ticker.c;
 * supervise/limit.c's limiters). The mechanism is described in
 * core/wait.c.
 */
#ifndef KEEL_CORE_WAIT_H
#define KEEL_CORE_WAIT_H

#include "core.h"

struct keel__wq {
	struct keel__waitq q;
	struct keel_loop *loop;
	/* A waiter left early (after its task was completed). May be NULL. */
	void (*left)(struct keel__wq *wq, struct keel__waiter *w);
	/*
	 * Replaces the generic early leave (remove, complete with `res`,
	 * `left`) when set: for a wait that must do more than end (a condition
	 * variable's waiter goes on to wait for its mutex). May be NULL.
	 */
	void (*leave)(struct keel__wq *wq, struct keel__waiter *w, int res);
	/*
	 * Who can end waiter `w`'s wait (deadlock detection, core.h's
	 * struct keel__wf): its kind's answer. NULL: a wait of keel's whose
	 * releaser is not known (no edge).
	 */
	void (*waits_for)(struct keel__wq *wq, struct keel__waiter *w,
			  struct keel__wf *out);
	/* Waiters' payload is a struct keel__timed_wait (or NULL). */
	bool timed;
	/* Timed, and every waiter gets one, stamped with when it queued. */
	bool stamped;
};

/* A waiter's deadline: the loop's timer, allocated per timed wait. */
struct keel__timed_wait {
	struct keel_timer timer;
	struct keel_task *task;
	uint64_t since; /* when it queued (`stamped` queues) */
};

void keel__wq_init(struct keel__wq *wq, struct keel_loop *loop,
		   void (*left)(struct keel__wq *, struct keel__waiter *));
/* Whether the calling thread may touch a primitive of `loop`. */
bool keel__wq_on_loop(struct keel_loop *loop);
/* Complete a waiter already taken off its queue (cancels its deadline). */
void keel__wq_end(struct keel__wq *wq, struct keel__waiter *w, int res);
/* Drop a timed waiter's deadline, if it has one (keel__wq_end does). */
void keel__wq_untime(struct keel__wq *wq, struct keel__waiter *w);
bool keel__wq_wake_one(struct keel__wq *wq, int res);
void keel__wq_wake_all(struct keel__wq *wq, int res);
/* The waiter's cancellation hook (wait_cancel) for a queue wait. */
void keel__wq_cancelled(struct keel_task *t);
/* Suspend `t` at the tail of `wq` (after keel__wq_prepare()). */
int keel__wq_begin(struct keel_task *t, struct keel__wq *wq, int request,
		   void *payload);
/* The same with a deadline (UINT64_MAX: none), for a timed queue. */
int keel__wq_begin_until(struct keel_task *t, struct keel__wq *wq, int request,
			 uint64_t deadline);
/* The ext a wait needs (its waiter node): false when out of memory. */
static inline bool keel__wq_prepare(struct keel_task *t)
{
	return keel__task_ext(t) != NULL;
}
/* A deadline `timeout_ns` from now, saturating at "none". */
uint64_t keel__wq_deadline_after(uint64_t timeout_ns);

#endif
