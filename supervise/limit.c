/* SPDX-License-Identifier: MIT */
/*
 * limit.c: the admission limits of keel/limit.h: the CoDel-style load
 * shedder, the GCRA rate limiter and the bulkhead.
 *
 * Next to the breaker because they are the same kind of thing (a policy
 * in front of a dependency); the two that queue tasks use core's wait
 * queue (core/wait.h), as the semaphore does.
 *
 * Invariants:
 * - Rate limiter: `tat` (the theoretical arrival time) only moves forward,
 *   and only when tokens are granted; a request of n conforms at `now`
 *   iff max(tat, now) + n * T - now <= burst * T. Its timer is armed
 *   exactly while a task waits, for when the head of the queue conforms;
 *   nobody behind the head is granted before it (FIFO).
 * - Bulkhead: a task waits only while all `max_concurrent` permits are
 *   out; a release hands its permit to the head directly, so `in_flight`
 *   only drops when nobody waits.
 * - Shedder: `shedding` starts only from a sample, after samples have
 *   stayed above target for an interval; it ends on a sample at or below
 *   target or an interval without any.
 */
#include "wait.h"

#include <errno.h>
#include <keel/limit.h>
#include <stdlib.h>
#include <string.h>

#define MS 1000000ull

static uint64_t clock_read(keel_clock_fn fn, void *arg)
{
	return fn ? fn(arg) : keel__clock_now();
}

/* ---- load shedding ------------------------------------------------------ */

int keel_shed_init(struct keel_shed *s, const struct keel_shed_opts *opts)
{
	if (!s)
		return -EINVAL;
	memset(s, 0, sizeof(*s));
	if (opts)
		s->opts = *opts;
	if (!s->opts.target_ns)
		s->opts.target_ns = 5 * MS;
	if (!s->opts.interval_ns)
		s->opts.interval_ns = 100 * MS;
	if (s->opts.target_ns >= s->opts.interval_ns)
		return -EINVAL;
	return 0;
}

/* An interval without a sample: nothing queues any more. */
static void shed_idle(struct keel_shed *s, uint64_t now)
{
	if (s->shedding && now - s->last_sample >= s->opts.interval_ns) {
		s->shedding = false;
		s->above = false;
	}
}

void keel_shed_record(struct keel_shed *s, uint64_t delay_ns)
{
	uint64_t now = clock_read(s->opts.clock, s->opts.clock_arg);

	s->stats.samples++;
	s->stats.last_ns = delay_ns;
	s->last_sample = now;
	if (delay_ns <= s->opts.target_ns) {
		s->above = false;
		s->shedding = false;
		return;
	}
	if (!s->above) {
		s->above = true;
		s->above_since = now;
	} else if (!s->shedding &&
		   now - s->above_since >= s->opts.interval_ns) {
		s->shedding = true;
		s->stats.episodes++;
	}
}

bool keel_shed_shedding(struct keel_shed *s)
{
	shed_idle(s, clock_read(s->opts.clock, s->opts.clock_arg));
	return s->shedding;
}

int keel_shed_admit(struct keel_shed *s)
{
	if (keel_shed_shedding(s)) {
		s->stats.shed++;
		return -EBUSY;
	}
	s->stats.admitted++;
	return 0;
}

void keel_shed_stats(const struct keel_shed *s, struct keel_shed_stats *out)
{
	*out = s->stats;
}

/* ---- rate limiter (GCRA) ------------------------------------------------ */

struct keel_ratelimit {
	struct keel__wq wq;	 /* timed; waiter result: the tokens asked */
	struct keel_timer timer; /* when the head conforms */
	struct keel_ratelimit_opts opts;
	uint64_t interval; /* T: ns per token */
	uint64_t tau;	   /* burst * T */
	uint64_t tat;	   /* theoretical arrival time */
	struct keel_ratelimit_stats stats;
};

static uint64_t rl_now(const struct keel_ratelimit *rl)
{
	return clock_read(rl->opts.clock, rl->opts.clock_arg);
}

/*
 * Take n tokens at `now` if they conform (true); else leave the limiter
 * as it is and set *wait to how long until they would.
 */
static bool rl_conform(struct keel_ratelimit *rl, uint32_t n, uint64_t now,
		       uint64_t *wait)
{
	uint64_t tat = rl->tat > now ? rl->tat : now;
	uint64_t next = tat + n * rl->interval;

	if (next - now <= rl->tau) {
		rl->tat = next;
		*wait = 0;
		return true;
	}
	*wait = next - rl->tau - now;
	return false;
}

/*
 * Grant the waiters at the head while they conform; arm the timer for the
 * first that does not. Also the queue's `left` hook: a head that leaves
 * (timed out, cancelled) may let the next one through.
 */
static void rl_grant(struct keel__wq *wq, struct keel__waiter *left)
{
	struct keel_ratelimit *rl =
	    keel_container_of(wq, struct keel_ratelimit, wq);
	struct keel__waiter *w;
	uint64_t wait;

	if (left && left->task->res == -ETIMEDOUT)
		rl->stats.timed_out++;
	while ((w = keel__waitq_first(&wq->q))) {
		if (!rl_conform(rl, (uint32_t)w->result, rl_now(rl), &wait)) {
			keel_timer_arm(wq->loop, &rl->timer,
				       keel__clock_now() + wait);
			return;
		}
		rl->stats.admitted++;
		rl->stats.waited++;
		keel__waitq_remove(&wq->q, w);
		keel__wq_end(wq, w, 0);
	}
	keel_timer_cancel(wq->loop, &rl->timer);
}

static void rl_fired(struct keel_loop *loop, struct keel_timer *timer,
		     void *arg)
{
	struct keel_ratelimit *rl = arg;

	(void)loop;
	(void)timer;
	rl_grant(&rl->wq, NULL);
}

int keel_ratelimit_new(struct keel_loop *loop,
		       const struct keel_ratelimit_opts *opts,
		       struct keel_ratelimit **out)
{
	struct keel_ratelimit *rl;
	double t;

	/* `!(rate > 0)` also refuses a NaN. */
	if (!opts || !(opts->rate > 0) || !opts->burst)
		return -EINVAL;
	t = 1e9 / opts->rate;
	/* burst * T must fit with room to add a clock reading. */
	if (!(t * opts->burst < 0x1p62))
		return -EINVAL;
	rl = calloc(1, sizeof(*rl));
	if (!rl)
		return -ENOMEM;
	keel__wq_init(&rl->wq, loop, rl_grant);
	rl->wq.timed = true;
	keel_timer_init(&rl->timer, rl_fired, rl);
	rl->opts = *opts;
	rl->interval = t < 1 ? 1 : (uint64_t)(t + 0.5);
	rl->tau = rl->interval * opts->burst;
	*out = rl;
	return 0;
}

void keel_ratelimit_free(struct keel_ratelimit *rl)
{
	rl->wq.left = NULL;
	keel_timer_cancel(rl->wq.loop, &rl->timer);
	keel__wq_wake_all(&rl->wq, -EPIPE);
	free(rl);
}

int keel_ratelimit_try(struct keel_ratelimit *rl, uint32_t n, uint64_t *wait_ns)
{
	uint64_t wait = 0;
	bool ok;

	if (!n || n > rl->opts.burst)
		return -EINVAL;
	if (rl->wq.q.len) {
		/* They go first: look, but take nothing. */
		uint64_t tat = rl->tat;

		rl_conform(rl, n, rl_now(rl), &wait);
		rl->tat = tat;
		ok = false;
	} else {
		ok = rl_conform(rl, n, rl_now(rl), &wait);
	}
	if (wait_ns)
		*wait_ns = wait;
	if (!ok) {
		rl->stats.rejected++;
		return -EAGAIN;
	}
	rl->stats.admitted++;
	return 0;
}

int keel_ratelimit_acquire(struct keel_task *t, struct keel_ratelimit *rl,
			   uint32_t n, uint64_t deadline_ns)
{
	uint64_t wait = 0, now;

	if (t->loop != rl->wq.loop)
		return keel__task_ready(t, -EXDEV);
	if (!n || n > rl->opts.burst)
		return keel__task_ready(t, -EINVAL);
	int cause = keel__task_cancel_cause(t);

	if (cause)
		return keel__task_ready(t, cause);
	/* One clock read on the way through: a read is most of its cost. */
	now = rl_now(rl);
	if (!rl->wq.q.len) {
		if (rl_conform(rl, n, now, &wait)) {
			rl->stats.admitted++;
			return keel__task_ready(t, 0);
		}
	}
	/* Deadlines and timers are on keel's clock. */
	if (rl->opts.clock)
		now = keel__clock_now();
	/* Known to come first: do not sleep in vain. */
	if (deadline_ns != UINT64_MAX &&
	    (deadline_ns <= now || deadline_ns - now < wait)) {
		rl->stats.timed_out++;
		return keel__task_ready(t, -ETIMEDOUT);
	}
	if (!keel__wq_prepare(t))
		return keel__task_ready(t, -ENOMEM);
	if (!rl->wq.q.len && keel_timer_arm(t->loop, &rl->timer, now + wait))
		return keel__task_ready(t, -ENOMEM);
	int r = keel__wq_begin_until(t, &rl->wq, (int)n, deadline_ns);

	if (!rl->wq.q.len)
		keel_timer_cancel(t->loop, &rl->timer); /* -ENOMEM */
	return r;
}

void keel_ratelimit_stats(const struct keel_ratelimit *rl,
			  struct keel_ratelimit_stats *out)
{
	*out = rl->stats;
	out->waiting = rl->wq.q.len;
}

/* ---- bulkhead ----------------------------------------------------------- */

struct keel_bulkhead {
	struct keel__wq wq; /* stamped: each waiter knows when it queued */
	struct keel_bulkhead_opts opts;
	uint32_t in_flight;
	struct keel_bulkhead_stats stats;
};

/* A waiter gave up: it held nothing, only the count changes. */
static void bh_left(struct keel__wq *wq, struct keel__waiter *w)
{
	struct keel_bulkhead *bh =
	    keel_container_of(wq, struct keel_bulkhead, wq);

	if (w->task->res == -ETIMEDOUT)
		bh->stats.timed_out++;
}

int keel_bulkhead_new(struct keel_loop *loop,
		      const struct keel_bulkhead_opts *opts,
		      struct keel_bulkhead **out)
{
	struct keel_bulkhead *bh;

	if (!opts || !opts->max_concurrent)
		return -EINVAL;
	bh = calloc(1, sizeof(*bh));
	if (!bh)
		return -ENOMEM;
	keel__wq_init(&bh->wq, loop, bh_left);
	bh->wq.timed = true;
	bh->wq.stamped = opts->shed != NULL;
	bh->opts = *opts;
	*out = bh;
	return 0;
}

void keel_bulkhead_free(struct keel_bulkhead *bh)
{
	bh->wq.left = NULL;
	keel__wq_wake_all(&bh->wq, -EPIPE);
	free(bh);
}

/* A permit goes out at once: 0 or the shedder's -EBUSY first. */
static int bh_admit(struct keel_bulkhead *bh)
{
	if (bh->opts.shed && keel_shed_admit(bh->opts.shed)) {
		bh->stats.shed++;
		return -EBUSY;
	}
	return 0;
}

static void bh_granted(struct keel_bulkhead *bh, uint64_t delay_ns)
{
	bh->stats.admitted++;
	if (bh->opts.shed)
		keel_shed_record(bh->opts.shed, delay_ns);
}

int keel_bulkhead_try_acquire(struct keel_bulkhead *bh)
{
	int r = bh_admit(bh);

	if (r)
		return r;
	if (bh->in_flight >= bh->opts.max_concurrent || bh->wq.q.len) {
		bh->stats.rejected++;
		return -EAGAIN;
	}
	bh->in_flight++;
	bh_granted(bh, 0);
	return 0;
}

int keel_bulkhead_acquire(struct keel_task *t, struct keel_bulkhead *bh)
{
	if (t->loop != bh->wq.loop)
		return keel__task_ready(t, -EXDEV);
	int cause = keel__task_cancel_cause(t);

	if (cause)
		return keel__task_ready(t, cause);
	int r = bh_admit(bh);

	if (r)
		return keel__task_ready(t, r);
	if (bh->in_flight < bh->opts.max_concurrent && !bh->wq.q.len) {
		bh->in_flight++;
		bh_granted(bh, 0);
		return keel__task_ready(t, 0);
	}
	if (bh->wq.q.len >= bh->opts.max_queue) {
		bh->stats.rejected++;
		return keel__task_ready(t, -EAGAIN);
	}
	if (!keel__wq_prepare(t))
		return keel__task_ready(t, -ENOMEM);
	return keel__wq_begin_until(
	    t, &bh->wq, 0,
	    bh->opts.queue_timeout_ns
		? keel__wq_deadline_after(bh->opts.queue_timeout_ns)
		: UINT64_MAX);
}

int keel_bulkhead_release(struct keel_bulkhead *bh)
{
	struct keel__waiter *w;

	if (!keel__wq_on_loop(bh->wq.loop))
		return -EXDEV;
	if (!bh->in_flight)
		return -EPERM;
	w = keel__waitq_pop(&bh->wq.q);
	if (!w) {
		bh->in_flight--;
		return 0;
	}
	/* Handed over: in_flight stays, the waiter holds the permit. */
	if (bh->opts.shed) {
		struct keel__timed_wait *tw = w->payload;

		bh_granted(bh, keel__clock_now() - tw->since);
	} else {
		bh_granted(bh, 0);
	}
	keel__wq_end(&bh->wq, w, 0);
	return 0;
}

void keel_bulkhead_stats(const struct keel_bulkhead *bh,
			 struct keel_bulkhead_stats *out)
{
	*out = bh->stats;
	out->in_flight = bh->in_flight;
	out->queued = bh->wq.q.len;
}
