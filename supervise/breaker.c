/* SPDX-License-Identifier: MIT */
/*
 * breaker.c: the circuit breaker of keel/resilience.h (closed, open,
 * half-open; consecutive failures and an optional failure-rate window).
 *
 * Time moves the breaker only lazily: OPEN becomes HALF_OPEN (and a
 * half-open state past half_open_max_ns becomes OPEN) when someone looks,
 * in acquire or a state query; no timer is armed, so a breaker needs no
 * loop and holds nothing.
 *
 * Invariants:
 * - Every state change goes through transition(), which bumps `generation`
 *   and resets the new state's counts before the callback runs; a permit
 *   counts towards the state only while its generation is current.
 * - HALF_OPEN: `probes` is the number of permits of this generation not yet
 *   recorded; 0 <= probes <= half_open_max_calls.
 * - CLOSED: the window holds window_calls <= window_size results, of which
 *   window_failures are failures; `run` counts the current run of failures.
 * - OPEN grants no permit.
 */
#include "core.h"

#include <errno.h>
#include <keel/loop.h>
#include <keel/resilience.h>
#include <string.h>

static uint64_t now(const struct keel_breaker *b)
{
	struct keel_loop *loop;

	if (b->opts.clock)
		return b->opts.clock(b->opts.clock_arg);
	loop = keel_loop_current();
	return loop ? keel_loop_now(loop) : keel__clock_now();
}

static enum keel_breaker_outcome classify(const struct keel_breaker *b,
					  int result)
{
	if (b->opts.classify)
		return b->opts.classify(result, b->opts.classify_arg);
	if (result >= 0)
		return KEEL_BREAKER_SUCCESS;
	return result == -ECANCELED ? KEEL_BREAKER_IGNORE
				    : KEEL_BREAKER_FAILURE;
}

void keel_breaker_opts_default(struct keel_breaker_opts *opts)
{
	if (!opts)
		return;
	memset(opts, 0, sizeof(*opts));
	opts->failure_threshold = 5;
	opts->open_ns = 60ull * 1000000000ull;
	opts->half_open_max_calls = 1;
	opts->success_threshold = 1;
}

static bool opts_valid(const struct keel_breaker_opts *o)
{
	if (!o->failure_threshold || !o->open_ns || !o->half_open_max_calls ||
	    !o->success_threshold)
		return false;
	if (!o->window_size)
		return true;
	return o->window_size <= KEEL_BREAKER_WINDOW_MAX &&
	       o->window_min_calls >= 1 &&
	       o->window_min_calls <= o->window_size && o->failure_rate >= 1 &&
	       o->failure_rate <= 100;
}

static void window_clear(struct keel_breaker *b)
{
	memset(b->window, 0, sizeof(b->window));
	b->window_next = 0;
	b->window_calls = 0;
	b->window_failures = 0;
}

/* Push one result into the ring of the last window_size results. */
static void window_push(struct keel_breaker *b, bool failed)
{
	uint32_t i = b->window_next;
	uint64_t bit = 1ull << (i % 64);
	uint64_t *word = &b->window[i / 64];

	/* Full: the slot's old result leaves as the new one comes in. */
	if (b->window_calls == b->opts.window_size)
		b->window_failures -= (*word & bit) != 0;
	else
		b->window_calls++;
	*word = failed ? *word | bit : *word & ~bit;
	b->window_failures += failed;
	b->window_next = (uint16_t)((i + 1) % b->opts.window_size);
}

static bool should_trip(const struct keel_breaker *b)
{
	if (b->run >= b->opts.failure_threshold)
		return true;
	if (!b->opts.window_size || b->window_calls < b->opts.window_min_calls)
		return false;
	return (uint64_t)b->window_failures * 100 >=
	       (uint64_t)b->opts.failure_rate * b->window_calls;
}

static void transition(struct keel_breaker *b, enum keel_breaker_state to,
		       uint64_t at)
{
	enum keel_breaker_state from = (enum keel_breaker_state)b->state;

	b->state = (uint8_t)to;
	b->since = at;
	b->generation++;
	b->run = 0;
	b->probes = 0;
	b->probe_successes = 0;
	window_clear(b);
	if (from == to)
		return; /* a reset of a closed breaker: not a transition */
	b->stats.transitions++;
	if (to == KEEL_BREAKER_OPEN)
		b->stats.opened++;
	if (b->opts.on_state_change)
		b->opts.on_state_change(b, from, to,
					b->opts.on_state_change_arg);
}

/*
 * Apply what time alone changes: the end of the recovery timeout, and of
 * the half-open time limit. Returns the state after that.
 */
static enum keel_breaker_state advance(struct keel_breaker *b, uint64_t t)
{
	if (b->state == KEEL_BREAKER_OPEN && t - b->since >= b->opts.open_ns)
		transition(b, KEEL_BREAKER_HALF_OPEN, t);
	else if (b->state == KEEL_BREAKER_HALF_OPEN &&
		 b->opts.half_open_max_ns &&
		 t - b->since >= b->opts.half_open_max_ns)
		transition(b, KEEL_BREAKER_OPEN, t);
	return (enum keel_breaker_state)b->state;
}

int keel_breaker_init(struct keel_breaker *b,
		      const struct keel_breaker_opts *opts)
{
	if (!b || !opts || !opts_valid(opts))
		return -EINVAL;
	memset(b, 0, sizeof(*b));
	b->opts = *opts;
	b->state = KEEL_BREAKER_CLOSED;
	b->since = now(b);
	return 0;
}

int keel_breaker_acquire(struct keel_breaker *b,
			 struct keel_breaker_permit *permit)
{
	if (!b || !permit || permit->held)
		return -EINVAL;
	switch (advance(b, now(b))) {
	case KEEL_BREAKER_CLOSED:
		break;
	case KEEL_BREAKER_HALF_OPEN:
		if (b->probes < b->opts.half_open_max_calls) {
			b->probes++;
			break;
		}
		b->stats.rejections++; /* the probes are all out */
		return -EAGAIN;
	case KEEL_BREAKER_OPEN:
		b->stats.rejections++;
		return -EAGAIN;
	}
	permit->generation = b->generation;
	permit->held = true;
	b->stats.calls++;
	return 0;
}

/* A result of the current generation, while CLOSED. */
static void record_closed(struct keel_breaker *b,
			  enum keel_breaker_outcome outcome)
{
	bool failed = outcome == KEEL_BREAKER_FAILURE;

	b->run = failed ? b->run + 1 : 0;
	if (b->opts.window_size)
		window_push(b, failed);
	/* A success can trip it too: the one that fills window_min_calls. */
	if (should_trip(b))
		transition(b, KEEL_BREAKER_OPEN, now(b));
}

/* A probe's result, while HALF_OPEN. */
static void record_probe(struct keel_breaker *b,
			 enum keel_breaker_outcome outcome)
{
	b->probes--;
	if (outcome == KEEL_BREAKER_FAILURE)
		transition(b, KEEL_BREAKER_OPEN, now(b));
	else if (++b->probe_successes >= b->opts.success_threshold)
		transition(b, KEEL_BREAKER_CLOSED, now(b));
}

int keel_breaker_record(struct keel_breaker *b,
			struct keel_breaker_permit *permit, int result)
{
	enum keel_breaker_outcome outcome;

	if (!b || !permit || !permit->held)
		return -EINVAL;
	permit->held = false;
	outcome = classify(b, result);
	switch (outcome) {
	case KEEL_BREAKER_SUCCESS:
		b->stats.successes++;
		break;
	case KEEL_BREAKER_FAILURE:
		b->stats.failures++;
		break;
	default:
		b->stats.ignored++;
		outcome = KEEL_BREAKER_IGNORE;
		break;
	}
	if (permit->generation != b->generation) {
		b->stats.stale++;
		return 0;
	}
	if (b->state == KEEL_BREAKER_HALF_OPEN) {
		if (outcome == KEEL_BREAKER_IGNORE)
			b->probes--; /* gives its slot back, nothing else */
		else
			record_probe(b, outcome);
	} else if (outcome != KEEL_BREAKER_IGNORE) {
		record_closed(b, outcome); /* OPEN has no permits */
	}
	return 0;
}

enum keel_breaker_state keel_breaker_state(struct keel_breaker *b)
{
	if (!b)
		return KEEL_BREAKER_OPEN; /* nothing to call */
	return advance(b, now(b));
}

const char *keel_breaker_state_name(enum keel_breaker_state state)
{
	switch (state) {
	case KEEL_BREAKER_CLOSED:
		return "closed";
	case KEEL_BREAKER_OPEN:
		return "open";
	case KEEL_BREAKER_HALF_OPEN:
		return "half-open";
	}
	return "unknown";
}

void keel_breaker_stats(const struct keel_breaker *b,
			struct keel_breaker_stats *out)
{
	if (b && out)
		*out = b->stats;
}

void keel_breaker_reset(struct keel_breaker *b)
{
	if (b)
		transition(b, KEEL_BREAKER_CLOSED, now(b));
}
