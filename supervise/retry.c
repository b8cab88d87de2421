/* SPDX-License-Identifier: MIT */
/*
 * retry.c: retry with exponential backoff and jitter (keel/resilience.h).
 *
 * keel_retry_next() is the whole decision, pure but for the policy's clock
 * and random source: given an attempt's result, stop (and say why) or hand
 * out the next delay. keel_retry_backoff() wraps it in a nested routine
 * that adds what only a task knows: its cancellation token, whose cause
 * ends the retry before or during the sleep, and whose deadline the sleep
 * must not outlast.
 *
 * Invariants:
 * - Once `stop` is set it stays set, and `result` no longer changes: a
 *   finished retry answers every later call with 0 (no delay).
 * - Every delay handed out is in [1, max_ns]; `cap` stays in [initial_ns,
 *   max_ns] and `prev` in [initial_ns, max_ns] (all <= INT64_MAX, so the
 *   delay fits the int64_t return and range sums do not wrap).
 */
#include "core.h"

#include <errno.h>
#include <keel/loop.h>
#include <keel/resilience.h>
#include <keel/task.h>
#include <math.h>
#include <string.h>
#include <sys/random.h>

static uint64_t now(const struct keel_retry_policy *p)
{
	struct keel_loop *loop;

	if (p->clock)
		return p->clock(p->clock_arg);
	loop = keel_loop_current();
	return loop ? keel_loop_now(loop) : keel__clock_now();
}

static uint64_t random64(struct keel_retry *r)
{
	if (r->policy.random)
		return r->policy.random(r->policy.random_arg);
	return keel__rand64(&r->rng);
}

/* Uniform in [lo, hi] (lo <= hi <= INT64_MAX, so hi - lo + 1 cannot wrap;
 * the modulo's bias is below 2^-63 per draw). */
static uint64_t uniform(struct keel_retry *r, uint64_t lo, uint64_t hi)
{
	return lo + random64(r) % (hi - lo + 1);
}

/*
 * x * m, saturating at `limit` (x <= limit, m >= 1). In double, which
 * cannot wrap; its rounding of a huge x must not make the step shrink.
 */
static uint64_t scale(uint64_t x, double m, uint64_t limit)
{
	double y = (double)x * m;
	uint64_t v;

	if (y >= (double)limit)
		return limit;
	v = (uint64_t)y;
	return v < x ? x : v;
}

void keel_retry_policy_default(struct keel_retry_policy *policy)
{
	if (!policy)
		return;
	memset(policy, 0, sizeof(*policy));
	policy->initial_ns = 100ull * 1000000ull;
	policy->max_ns = 10ull * 1000000000ull;
	policy->multiplier = 2.0;
	policy->max_attempts = 5;
	policy->jitter = KEEL_RETRY_JITTER_FULL;
}

bool keel_retry_transient(int err)
{
	switch (err) {
	case -EAGAIN:
	case -EINTR:
	case -ETIMEDOUT:
	case -ECONNREFUSED:
	case -ECONNRESET:
	case -ECONNABORTED:
	case -ENETUNREACH:
	case -EHOSTUNREACH:
		return true;
	default:
		return false;
	}
}

static bool policy_valid(const struct keel_retry_policy *p)
{
	/* `!(m >= 1.0)` also refuses a NaN. */
	if (!p->initial_ns || p->max_ns < p->initial_ns ||
	    p->max_ns > (uint64_t)INT64_MAX || !(p->multiplier >= 1.0) ||
	    isinf(p->multiplier) || !p->max_attempts)
		return false;
	switch (p->jitter) {
	case KEEL_RETRY_JITTER_FULL:
	case KEEL_RETRY_JITTER_EQUAL:
	case KEEL_RETRY_JITTER_DECORRELATED:
	case KEEL_RETRY_JITTER_NONE:
		return true;
	}
	return false;
}

static uint64_t seed_from_kernel(const struct keel_retry *r)
{
	uint64_t seed = 0;

	if (getrandom(&seed, sizeof(seed), GRND_NONBLOCK) != sizeof(seed))
		seed = keel__clock_now() ^ (uint64_t)(uintptr_t)r;
	return seed;
}

static void stop(struct keel_retry *r, int result, enum keel_retry_stop why)
{
	r->result = result;
	r->stop = why;
}

int keel_retry_begin(struct keel_retry *r,
		     const struct keel_retry_policy *policy)
{
	if (!r)
		return -EINVAL;
	memset(r, 0, sizeof(*r));
	r->attempts = 1;
	if (!policy || !policy_valid(policy)) {
		stop(r, -EINVAL, KEEL_RETRY_ERROR);
		return -EINVAL;
	}
	r->policy = *policy;
	r->start = now(policy);
	r->cap = policy->initial_ns;
	r->prev = policy->initial_ns;
	if (!policy->random)
		r->rng = policy->seed ? policy->seed : seed_from_kernel(r);
	return 0;
}

/* The delay before the next attempt, by the jitter, moving the steps on. */
static uint64_t draw_delay(struct keel_retry *r)
{
	const struct keel_retry_policy *p = &r->policy;
	uint64_t cap = r->cap;
	uint64_t d;

	switch (p->jitter) {
	case KEEL_RETRY_JITTER_FULL:
		d = uniform(r, 0, cap);
		break;
	case KEEL_RETRY_JITTER_EQUAL:
		d = cap - cap / 2 + uniform(r, 0, cap / 2);
		break;
	case KEEL_RETRY_JITTER_DECORRELATED:
		/* The blog's min(cap, random_between(base, sleep * 3)). */
		d = uniform(r, p->initial_ns,
			    scale(r->prev, p->multiplier, INT64_MAX));
		if (d > p->max_ns)
			d = p->max_ns;
		r->prev = d;
		break;
	default:
		d = cap;
		break;
	}
	r->cap = scale(cap, p->multiplier, p->max_ns);
	return d ? d : 1; /* 0 would read as "stop" */
}

/*
 * The decision, with `budget_ns` the time left before a deadline the
 * caller knows of (UINT64_MAX: none).
 */
static int64_t decide(struct keel_retry *r, int result, uint64_t budget_ns)
{
	const struct keel_retry_policy *p = &r->policy;
	uint64_t delay;

	if (r->stop)
		return 0;
	r->result = result;
	if (result >= 0) {
		stop(r, result, KEEL_RETRY_SUCCEEDED);
		return 0;
	}
	if (!(p->retryable ? p->retryable(result, p->retryable_arg)
			   : keel_retry_transient(result))) {
		stop(r, result, KEEL_RETRY_NOT_RETRYABLE);
		return 0;
	}
	if (r->attempts >= p->max_attempts) {
		stop(r, result, KEEL_RETRY_EXHAUSTED);
		return 0;
	}
	delay = draw_delay(r);
	if (p->max_elapsed_ns) {
		uint64_t spent = now(p) - r->start;
		uint64_t left =
		    spent < p->max_elapsed_ns ? p->max_elapsed_ns - spent : 0;

		if (left < budget_ns)
			budget_ns = left;
	}
	if (delay > budget_ns) {
		stop(r, result, KEEL_RETRY_DEADLINE);
		return 0;
	}
	r->attempts++;
	r->delay = delay;
	r->slept_ns += delay;
	return (int64_t)delay;
}

int64_t keel_retry_next(struct keel_retry *r, int result)
{
	if (!r)
		return -EINVAL;
	return decide(r, result, UINT64_MAX);
}

/* The time left before the token's deadline, by the loop's clock. */
static uint64_t token_budget(struct keel_task *t, struct keel_token *tok)
{
	uint64_t deadline = keel_token_deadline(tok);
	uint64_t at = keel_loop_now(keel_task_loop(t));

	if (deadline == UINT64_MAX)
		return UINT64_MAX;
	return deadline > at ? deadline - at : 0;
}

int keel_retry_backoff(struct keel_task *t, struct keel_retry *r, int result)
{
	struct keel_token *tok;
	int cause;

	if (!t)
		return -EINVAL; /* not KEEL_PENDING: the await goes on */
	if (!r) {
		t->res = -EINVAL;
		return KEEL_READY;
	}
	KEEL_BEGIN(&r->routine);
	tok = keel_task_token(t);
	cause = keel_token_cause(tok);
	/* A success stands (a connected fd must reach the caller); a failure
	 * under a cancelled token is the cancellation, never retried. */
	if (cause && result < 0 && !r->stop)
		stop(r, cause, KEEL_RETRY_CANCELLED);
	if (decide(r, result, token_budget(t, tok)) == 0)
		KEEL_ROUTINE_RETURN(&r->routine, t, r->result);
	KEEL_AWAIT(&r->routine, keel_sleep(t, r->delay));
	if (keel_res(t) < 0) {
		/* Woken by the token (its cause), or the sleep could not
		 * start (-ENOMEM). The next attempt never began. */
		r->attempts--;
		cause = keel_token_cause(keel_task_token(t));
		if (cause)
			stop(r, cause, KEEL_RETRY_CANCELLED);
		else
			stop(r, keel_res(t), KEEL_RETRY_ERROR);
		KEEL_ROUTINE_RETURN(&r->routine, t, r->result);
	}
	KEEL_ROUTINE_RETURN(&r->routine, t, 0);
}
