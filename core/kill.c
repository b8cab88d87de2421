/* SPDX-License-Identifier: MIT */
/*
 * kill.c: killing a task from outside (keel_task_kill): what a supervisor's
 * brutal_kill needs when a child ignores its cancellation.
 *
 * A kill undoes the task's wait, then unwinds it as an abort would: its
 * defers run (LIFO), it exits with -ECANCELED, its joiner or supervisor is
 * told, and its ops in flight are cancelled; the frame goes when the kernel
 * has returned them (the zombie path of core/task.c).
 *
 * Invariants:
 * - A killed task runs no more code: it is off the run queues from the
 *   kill on, and a wake that reaches it finishes the kill instead of
 *   queueing it (keel__task_wake).
 * - Nothing keeps a pointer to it once it is freed: every wait that is not
 *   an op is undone first. Most waits undo at once (their wait_cancel);
 *   a wait on another thread (a blocked cross-loop send, a oneshot) may
 *   have its wake already posted, and the task must outlive that wake: it
 *   is marked killed and finishes dying, through its own loop's inbox,
 *   when the wake arrives. The kill cancels the task's token first, so
 *   that such a wake gives up instead of going on.
 * - Ops in flight need no undoing: the ledger owns them, and an exited
 *   task with ops is a zombie until their last CQE.
 */
#include "core.h"

#include <errno.h>

/* Take a queued task off its run queue (a walk: kills are rare). */
static void runq_remove(struct keel__core *c, struct keel_task *t)
{
	struct keel__taskq *q = &c->runq[t->prio];
	struct keel_task *prev = NULL;

	for (struct keel_task *p = q->head; p; prev = p, p = p->next) {
		if (p != t)
			continue;
		if (prev)
			prev->next = t->next;
		else
			q->head = t->next;
		if (q->tail == t)
			q->tail = prev;
		c->runnable--;
		t->next = NULL;
		t->flags &= (uint8_t)~KEEL__T_QUEUED;
		return;
	}
}

/* The task no longer waits: forget that another thread may wake it. */
static void unwait(struct keel__core *c, struct keel_task *t)
{
	if (t->flags & KEEL__T_EXTERNAL)
		c->external_waits--;
	t->flags &= (uint8_t) ~(KEEL__T_WAITING | KEEL__T_EXTERNAL);
}

/* Unwind a killed task that nothing points at any more. */
static void kill_finish(struct keel_task *t)
{
	struct keel__core *c = keel__core_of(t->loop);
	struct keel_task *outer = c->unwinding;
	bool had_ops = t->inflight != 0;

	unwait(c, t);
	/* As for an abort: the cleanups see the status, and a panic inside
	 * one is fatal (it may run inside another task's step). */
	t->res = -ECANCELED;
	c->unwinding = t;
	keel__task_run_defers(t);
	c->unwinding = outer;
	keel_task_exit(t, -ECANCELED);
	/* Counts a zombie or frees the frame; then the ops are cancelled (a
	 * user op completes at once and may free the frame here). */
	keel__task_after_exit(t);
	if (had_ops)
		c->hooks.cancel_ops(t);
}

static void kill_item_run(struct keel_loop *loop, struct keel__remote_item *it)
{
	struct keel__task_ext *x =
	    keel_container_of(it, struct keel__task_ext, kill_item);

	(void)loop;
	kill_finish(x->task);
}

void keel__task_kill_later(struct keel_task *t)
{
	struct keel__core *c = keel__core_of(t->loop);
	struct keel__task_ext *x = t->ext; /* allocated by keel_task_kill */

	if (x->kill_pending)
		return;
	x->kill_pending = true;
	unwait(c, t);
	/* Not now: the wake may come from deep inside another object (a
	 * mailbox delivering), which the task's defers may touch again. */
	x->kill_item.run = kill_item_run;
	c->hooks.remote_post(t->loop, &x->kill_item);
}

int keel_task_kill(struct keel_task *t)
{
	struct keel__core *c = keel__core_of(t->loop);
	struct keel__task_ext *x;
	bool wait_undoable;
	int err;

	if (t->flags & KEEL__T_EXITED)
		return -ESRCH;
	if (t->flags & KEEL__T_KILLED)
		return 0; /* already dying */
	if (keel__current_core && keel__current_core != c)
		return -EXDEV;
	if (t == c->current || t == c->unwinding)
		return -EDEADLK;
	x = keel__task_ext(t);
	if (!x)
		return -ENOMEM;
	/* Shields would keep the cancellation below from reaching its wait. */
	while (x->shield)
		keel_shield_end(t, x->shield);
	wait_undoable =
	    (t->flags & KEEL__T_WAITING) && !t->inflight && x->wait_cancel;
	/* Undoes the wait (a completed wait queues the task) or cancels its
	 * ops; a wake already on its way will see the cause and give up. */
	err = keel_task_cancel(t);
	if (err)
		return err;
	t->flags |= KEEL__T_KILLED;
	if (t->flags & KEEL__T_QUEUED)
		runq_remove(c, t);
	/* Its wait could not be undone here: its wake finishes the kill. */
	if (wait_undoable && (t->flags & KEEL__T_WAITING))
		return 0;
	kill_finish(t);
	return 0;
}
