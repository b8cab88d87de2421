/* SPDX-License-Identifier: MIT */
/*
 * sleep.c: keel_sleep() and keel_sleep_until(): a timer (core/timer.c) in
 * the sleeping task's record (struct keel__sleep, one per task slot).
 *
 * A sleep is an op in all that can be seen of it, without a ledger slot:
 * it counts in its task's inflight and in the ledger's inuse (the loop
 * waits for it, a dump and keel_loop_stats show it), cancelling a task's
 * ops (keel__io_cancel_task(), which finds the record by the task's slot)
 * cancels it, keel_op_timeout() bounds it, and tracing sees it complete
 * as an IORING_OP_TIMEOUT op. The one place that needs a real op is a
 * keel_select op branch, which knows its op by ledger index: a sleep
 * started there takes one (sleep_op()).
 */
#include "io.h"

#include <errno.h>

/* The deadline keel_op_timeout() gave the op, if it comes first: then
 * the sleep's result is -ETIMEDOUT. */
static inline int sleep_bound(struct keel__io *io, struct keel_task *t,
			      uint64_t *deadline_ns)
{
	if (io->timeout_task == t) {
		uint64_t op_deadline = keel__clock_now() + io->timeout_ns;

		io->timeout_task = NULL;
		if (op_deadline < *deadline_ns) {
			*deadline_ns = op_deadline;
			return -ETIMEDOUT;
		}
	}
	return 0;
}

/* The sleep of `t` (record `s`) is over with `res`: as a user op's end
 * (io/ledger.c: op_done()), and the same one test for the common case. */
static void sleep_end(struct keel__io *io, struct keel_task *t,
		      const struct keel__sleep *s, int res)
{
	t->inflight--;
	io->ledger.inuse--;
	KEEL__TRACE(&io->core, KEEL_EV_OP_COMPLETE, IORING_OP_TIMEOUT, t->id,
		    (int64_t)res,
		    s->trace_ns ? keel__trace_clock() - s->trace_ns : 0);
	if (__builtin_expect(
		(t->flags & (KEEL__T_EXITED | KEEL__T_SELECT | KEEL__T_QUEUED |
			     KEEL__T_KILLED | KEEL__T_EXTERNAL)) ||
		    res == -ECANCELED,
		0)) {
		keel__op_tell_task(t, 0, res);
		return;
	}
	t->res = res;
	keel__task_enqueue(&io->core, t);
}

/* The timer fired. Its arg is the task: the timers fetch a due timer's
 * arg ahead of firing it (core/timer.c), and the record is the timer. */
static void sleep_fired(struct keel_loop *loop, struct keel_timer *timer,
			void *arg)
{
	const struct keel__sleep *s =
	    keel_container_of(timer, struct keel__sleep, timer);

	sleep_end(keel__io_of(loop), arg, s, s->res);
}

static void sleep_cancel(struct keel__io *io, struct keel__sleep *s)
{
	struct keel_task *t = s->timer.arg;

	keel_timer_cancel(t->loop, &s->timer);
	sleep_end(io, t, s, -ECANCELED);
}

void keel__sleep_cancel(struct keel__io *io, uint32_t id)
{
	struct keel__sleep *s = keel__sleep_at(&io->core, id);

	if (s && s->timer.where != KEEL__TIMER_NOT_ARMED)
		sleep_cancel(io, s);
}

void keel__sleep_cancel_all(struct keel__io *io)
{
	struct keel__core *c = &io->core;

	for (uint32_t i = 0; i < c->sleep_chunks; i++)
		for (uint32_t k = 0; c->sleeps[i] && k < KEEL__SLEEP_CHUNK; k++)
			if (c->sleeps[i][k].timer.where !=
			    KEEL__TIMER_NOT_ARMED)
				sleep_cancel(io, &c->sleeps[i][k]);
}

/* A select's op branch: a sleep in a ledger op, which the select knows
 * by its index. */
static void op_fired(struct keel_loop *loop, struct keel_timer *timer,
		     void *arg)
{
	struct keel__op *op =
	    keel_container_of(timer, struct keel__op, u.user.timer);

	(void)arg;
	keel__op_user_done(keel__io_of(loop), op, op->res);
}

static void op_cancel(struct keel__op *op)
{
	struct keel_loop *loop = op->task->loop;

	keel_timer_cancel(loop, &op->u.user.timer);
	keel__op_user_done(keel__io_of(loop), op, -ECANCELED);
}

static __attribute__((noinline)) int sleep_op(struct keel_task *t,
					      uint64_t deadline_ns)
{
	struct keel_loop *loop = t->loop;
	struct keel__io *io = keel__io_of(loop);
	struct keel__op *op =
	    keel__op_new(io, t, KEEL__OP_USER, IORING_OP_TIMEOUT);

	if (!op) {
		keel__op_timeout_drop(io, t);
		return keel__task_ready(t, -ENOMEM);
	}
	op->pending = 1;
	op->res = sleep_bound(io, t, &deadline_ns);
	op->u.user.cancel = op_cancel;
	if (keel__timer_start(loop, &op->u.user.timer, op_fired, t,
			      deadline_ns)) {
		keel__op_user_done(io, op, -ENOMEM);
		return KEEL_PENDING;
	}
	return keel__task_suspend(t);
}

/* Inline in both entry points: keel_sleep() is the common one, and a
 * call more on its path was a tenth of what it costs. */
static inline __attribute__((always_inline)) int
sleep_until(struct keel_task *t, uint64_t deadline_ns)
{
	struct keel_loop *loop = t->loop;
	struct keel__io *io = keel__io_of(loop);
	struct keel__core *c = &io->core;
	int cause = keel__task_cancel_cause(t);
	struct keel__sleep *s;

	if (cause) {
		keel__op_timeout_drop(io, t);
		return keel__task_ready(t, cause);
	}
	if (__builtin_expect(t->flags & KEEL__T_SELECT, 0))
		return sleep_op(t, deadline_ns);
	s = keel__sleep_at(c, t->id);
	if (__builtin_expect(!s, 0) && !(s = keel__sleep_make(c, t->id))) {
		keel__op_timeout_drop(io, t);
		return keel__task_ready(t, -ENOMEM);
	}
	s->res = sleep_bound(io, t, &deadline_ns);
	s->start_ns = c->now;
	s->trace_ns = c->trace ? keel__trace_clock() : 0;
	if (keel__timer_start(loop, &s->timer, sleep_fired, t, deadline_ns))
		return keel__task_ready(t, -ENOMEM);
	t->inflight++;
	io->ledger.inuse++;
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
