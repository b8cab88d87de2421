/* SPDX-License-Identifier: MIT */
/*
 * ticker.c: the interval timer of keel/sync.h (keel_ticker_*): a schedule
 * of ticks (`next`, every `interval`), one loop timer armed for the next
 * tick while a task waits, and the missed-tick policies.
 *
 * Invariants:
 * - `next` is the deadline of the next tick not yet delivered; a wait at or
 *   after it is satisfied at once, else the waiter sleeps on the timer
 *   until it (a timer firing late counts as a late wait: the policy
 *   decides).
 * - The timer is armed exactly while a task waits (one at a time).
 * - A tick is "missed" when it is delivered a whole interval or more after
 *   it was due: with SKIP or DELAY, a wait k intervals late takes k + 1
 *   ticks of which k missed; BURST delivers the same k + 1 one per wait,
 *   the first k of them counted missed.
 */
#include "wait.h"

#include <errno.h>
#include <keel/sync.h>
#include <stdlib.h>

struct keel_ticker {
	struct keel__wq wq;
	struct keel_timer timer;
	uint64_t interval;
	uint64_t next;
	uint64_t missed;
	enum keel_tick_policy policy;
};

/*
 * The ticks delivered by a wait at `now` (>= next), moving the schedule
 * on: 1 + the ticks missed since, or 1 with BURST (which keeps the rest
 * due at once).
 */
static int ticker_take(struct keel_ticker *tk, uint64_t now)
{
	uint64_t late = (now - tk->next) / tk->interval; /* ticks missed */

	switch (tk->policy) {
	case KEEL_TICK_BURST:
		/* A tick a whole interval late is a missed one, as below. */
		tk->missed += late != 0;
		tk->next += tk->interval;
		return 1;
	case KEEL_TICK_DELAY:
		tk->missed += late;
		tk->next = now + tk->interval;
		break;
	case KEEL_TICK_SKIP:
		tk->missed += late;
		tk->next += (late + 1) * tk->interval;
		break;
	}
	return late >= INT32_MAX ? INT32_MAX : (int)(late + 1);
}

static void ticker_fired(struct keel_loop *loop, struct keel_timer *timer,
			 void *arg)
{
	struct keel_ticker *tk = arg;
	uint64_t now = keel__clock_now();

	(void)timer;
	(void)loop;
	/* A timer fires at its deadline or after: never count from before. */
	keel__wq_wake_one(&tk->wq,
			  ticker_take(tk, now > tk->next ? now : tk->next));
}

/* The waiter gave up: nobody needs the tick now. */
static void ticker_left(struct keel__wq *wq, struct keel__waiter *w)
{
	struct keel_ticker *tk = keel_container_of(wq, struct keel_ticker, wq);

	(void)w;
	keel_timer_cancel(wq->loop, &tk->timer);
}

int keel_ticker_new(struct keel_loop *loop, uint64_t interval_ns,
		    enum keel_tick_policy policy, struct keel_ticker **out)
{
	struct keel_ticker *tk;

	if (!interval_ns || interval_ns > UINT64_MAX / 4 ||
	    (policy != KEEL_TICK_BURST && policy != KEEL_TICK_DELAY &&
	     policy != KEEL_TICK_SKIP))
		return -EINVAL;
	tk = calloc(1, sizeof(*tk));
	if (!tk)
		return -ENOMEM;
	keel__wq_init(&tk->wq, loop, ticker_left);
	keel_timer_init(&tk->timer, ticker_fired, tk);
	tk->interval = interval_ns;
	tk->policy = policy;
	tk->next = keel__clock_now() + interval_ns;
	*out = tk;
	return 0;
}

void keel_ticker_free(struct keel_ticker *tk)
{
	tk->wq.left = NULL;
	keel_timer_cancel(tk->wq.loop, &tk->timer);
	keel__wq_wake_all(&tk->wq, -EPIPE);
	free(tk);
}

void keel_ticker_reset(struct keel_ticker *tk)
{
	tk->next = keel__clock_now() + tk->interval;
	if (keel_timer_armed(&tk->timer))
		keel_timer_arm(tk->wq.loop, &tk->timer, tk->next);
}

uint64_t keel_ticker_next(const struct keel_ticker *tk)
{
	return tk->next;
}

uint64_t keel_ticker_missed(const struct keel_ticker *tk)
{
	return tk->missed;
}

int keel_ticker_wait(struct keel_task *t, struct keel_ticker *tk)
{
	if (t->loop != tk->wq.loop)
		return keel__task_ready(t, -EXDEV);
	if (tk->wq.q.len)
		return keel__task_ready(t, -EBUSY);
	int cause = keel__task_cancel_cause(t);

	if (cause)
		return keel__task_ready(t, cause);
	uint64_t now = keel__clock_now();

	if (now >= tk->next)
		return keel__task_ready(t, ticker_take(tk, now));
	if (!keel__wq_prepare(t))
		return keel__task_ready(t, -ENOMEM);
	if (keel_timer_arm(t->loop, &tk->timer, tk->next))
		return keel__task_ready(t, -ENOMEM);
	return keel__wq_begin(t, &tk->wq, 0, NULL);
}
