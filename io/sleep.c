/* SPDX-License-Identifier: MIT */
/*
 * sleep.c: keel_sleep() and keel_sleep_until(): a timer (core/timer.c) that
 * completes a user-space op in the ledger.
 *
 * The op is why sleeps live in io and not with the timers: cancelling a
 * task's ops cancels its sleep too, keel_op_timeout() bounds a sleep like
 * any other op, and a task dump shows it like any other wait.
 */
#include "io.h"

#include <errno.h>

/* The timer fired: the sleep is over (res: 0, or -ETIMEDOUT when an op
 * timeout cut it short). Its arg is the task, not the op: the timers fetch
 * a due timer's arg ahead of firing it (core/timer.c), and waking the task
 * is what missed the cache; the op is the timer's neighbour. */
static void sleep_fired(struct keel_loop *loop, struct keel_timer *timer,
			void *arg)
{
	struct keel__op *op =
	    keel_container_of(timer, struct keel__op, u.user.timer);

	(void)arg;
	keel__op_user_done(keel__io_of(loop), op, op->res);
}

static void sleep_cancel(struct keel__op *op)
{
	struct keel_loop *loop = op->task->loop;

	keel_timer_cancel(loop, &op->u.user.timer);
	keel__op_user_done(keel__io_of(loop), op, -ECANCELED);
}

/*
 * The ledger's free list is in the order ops ended: after 100k sleeps
 * ended in deadline order, each op slot it hands out misses the cache,
 * and the next one's address is in the slot (a chain of misses, one per
 * sleep). The list is fetched two slots ahead: the next slot's link was
 * fetched by the sleep before (one step ago: on its way, if not here), the
 * slot after it is fetched now, and the next slot's timer, which its sleep
 * writes. (Always inline: see run_prefetch() in core/timer.c.)
 */
static inline __attribute__((always_inline)) void
sleep_prefetch(struct keel__ledger *l)
{
	struct keel__op *next = l->free;

	if (next) {
		__builtin_prefetch(&next->u.user.timer, 1);
		if (next->free_next)
			__builtin_prefetch(next->free_next, 1);
	}
}

/* Inline in both entry points: keel_sleep() is the common one, and a
 * call more on its path was a tenth of what it costs. */
static inline __attribute__((always_inline)) int
sleep_until(struct keel_task *t, uint64_t deadline_ns)
{
	struct keel_loop *loop = t->loop;
	struct keel__io *io = keel__io_of(loop);
	int cause = keel__task_cancel_cause(t);

	if (cause) {
		keel__op_timeout_drop(io, t);
		return keel__task_ready(t, cause);
	}
	struct keel__op *op =
	    keel__op_new(io, t, KEEL__OP_USER, IORING_OP_TIMEOUT);

	if (!op) {
		keel__op_timeout_drop(io, t);
		return keel__task_ready(t, -ENOMEM);
	}
	sleep_prefetch(&io->ledger);
	op->pending = 1;
	op->res = 0;
	op->u.user.cancel = sleep_cancel;
	/* A deadline from keel_op_timeout() that comes first wins. */
	if (io->timeout_task == t) {
		uint64_t op_deadline = keel__clock_now() + io->timeout_ns;

		io->timeout_task = NULL;
		if (op_deadline < deadline_ns) {
			deadline_ns = op_deadline;
			op->res = -ETIMEDOUT;
		}
	}
	if (keel__timer_start(loop, &op->u.user.timer, sleep_fired, t,
			      deadline_ns)) {
		keel__op_user_done(io, op, -ENOMEM);
		return KEEL_PENDING;
	}
	return keel__task_suspend(t);
}

int keel_sleep_until(struct keel_task *t, uint64_t deadline_ns)
{
	return sleep_until(t, deadline_ns);
}

/* From the clock now, not the turn's cached time: a sleep lasts at least
 * `ns` from the call however long the turn has run. */
int keel_sleep(struct keel_task *t, uint64_t ns)
{
	return sleep_until(t, keel__clock_now() + ns);
}
