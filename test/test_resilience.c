/* SPDX-License-Identifier: MIT */
/*
 * test_resilience.c: keel/resilience.h.
 *
 * The breaker, on a clock the test moves by hand: closed -> open at exactly
 * the failure threshold (and by the failure-rate window, evictions
 * included), fast rejections while open, open -> half-open exactly at the
 * recovery timeout, the probe budget, half-open -> closed after the
 * success threshold and -> open on a probe failure, the half-open time
 * limit, ignored and classified results, stale results of an earlier
 * state, stats, the state-change callback, reset, and bad input.
 *
 * The retry: computed delays within their bounds for every attempt and
 * jitter (never 0, never above max, never below the jitter's floor), their
 * growth, the same delays for the same seed, max attempts, the overall
 * deadline (by a hand-driven clock), non-retryable errors and bad input;
 * then in tasks: retrying around an await, a cancel during the backoff
 * sleep ending the retry with -ECANCELED (a 60 s sleep: only a prompt end
 * lets the test finish within its timeout), the task's own cancellation
 * never retried, a token deadline the sleep would outlast; and end to end,
 * a task dialing a loopback port through a breaker, with retries, until
 * another task starts listening there.
 *
 * No wall-clock duration is asserted anywhere.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <keel.h>
#include <math.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "helpers/keel_test.h"

/* ---- the breaker, on a hand-driven clock -------------------------------- */

static uint64_t g_now;
static struct kt_log g_log;

static uint64_t fake_clock(void *arg)
{
	return *(const uint64_t *)arg;
}

/* Logs each transition as from * 10 + to. */
static void log_transition(struct keel_breaker *b, enum keel_breaker_state from,
			   enum keel_breaker_state to, void *arg)
{
	struct keel_breaker_stats s;

	keel_breaker_stats(b, &s);
	/* The breaker is already in its new state when the callback runs. */
	cr_assert_eq(keel_breaker_state(b), to);
	cr_assert_neq(from, to);
	kt_log_push(arg, (int)from * 10 + (int)to);
}

#define C  KEEL_BREAKER_CLOSED
#define O  KEEL_BREAKER_OPEN
#define HO KEEL_BREAKER_HALF_OPEN

static struct keel_breaker_opts breaker_opts(uint32_t failures, uint64_t open)
{
	struct keel_breaker_opts o;

	keel_breaker_opts_default(&o);
	o.failure_threshold = failures;
	o.open_ns = open;
	o.clock = fake_clock;
	o.clock_arg = &g_now;
	o.on_state_change = log_transition;
	o.on_state_change_arg = &g_log;
	return o;
}

/* One call through the breaker with `result`; returns acquire's answer. */
static int call(struct keel_breaker *b, int result)
{
	struct keel_breaker_permit p = {0};
	int err = keel_breaker_acquire(b, &p);

	if (err == 0)
		cr_assert_eq(keel_breaker_record(b, &p, result), 0);
	return err;
}

static struct keel_breaker_stats stats_of(const struct keel_breaker *b)
{
	struct keel_breaker_stats s;

	memset(&s, 0xff, sizeof(s));
	keel_breaker_stats(b, &s);
	return s;
}

Test(breaker, opens_at_exactly_the_failure_threshold, .timeout = 10)
{
	struct keel_breaker_opts o = breaker_opts(3, 1000);
	struct keel_breaker b;

	cr_assert_eq(keel_breaker_init(&b, &o), 0);
	cr_assert_eq(keel_breaker_state(&b), C);
	/* Two failures, then a success: the run starts again. */
	cr_assert_eq(call(&b, -EIO), 0);
	cr_assert_eq(call(&b, -ECONNREFUSED), 0);
	cr_assert_eq(call(&b, 12), 0);
	cr_assert_eq(call(&b, -EIO), 0);
	cr_assert_eq(call(&b, -ETIMEDOUT), 0);
	cr_assert_eq(keel_breaker_state(&b), C, "opened one failure early");
	cr_assert_eq(g_log.n, 0);
	cr_assert_eq(call(&b, -EIO), 0);
	cr_assert_eq(keel_breaker_state(&b), O);
	kt_log_expect(&g_log, (const int[]){C * 10 + O}, 1);

	struct keel_breaker_stats s = stats_of(&b);

	cr_assert_eq(s.calls, 6);
	cr_assert_eq(s.successes, 1);
	cr_assert_eq(s.failures, 5);
	cr_assert_eq(s.ignored, 0);
	cr_assert_eq(s.stale, 0);
	cr_assert_eq(s.rejections, 0);
	cr_assert_eq(s.transitions, 1);
	cr_assert_eq(s.opened, 1);
}

Test(breaker, rejects_fast_while_open_until_the_recovery_timeout, .timeout = 10)
{
	struct keel_breaker_opts o = breaker_opts(1, 5000);
	struct keel_breaker b;
	struct keel_breaker_permit p = {0};

	g_now = 100000;
	cr_assert_eq(keel_breaker_init(&b, &o), 0);
	cr_assert_eq(call(&b, -EIO), 0);
	cr_assert_eq(keel_breaker_state(&b), O);
	for (int i = 0; i < 10; i++) {
		g_now += 499; /* up to 104990: still inside the timeout */
		cr_assert_eq(keel_breaker_acquire(&b, &p), -EAGAIN);
		cr_assert_not(p.held);
	}
	g_now = 100000 + 4999;
	cr_assert_eq(keel_breaker_state(&b), O);
	cr_assert_eq(keel_breaker_acquire(&b, &p), -EAGAIN);
	/* A rejected permit is not held: recording it is an error. */
	cr_assert_eq(keel_breaker_record(&b, &p, 0), -EINVAL);
	g_now = 100000 + 5000;
	cr_assert_eq(keel_breaker_state(&b), HO);
	cr_assert_eq(keel_breaker_acquire(&b, &p), 0);
	cr_assert(p.held);
	kt_log_expect(&g_log, (const int[]){C * 10 + O, O * 10 + HO}, 2);
	cr_assert_eq(stats_of(&b).rejections, 11);
	cr_assert_eq(stats_of(&b).calls, 2);
	cr_assert_eq(keel_breaker_record(&b, &p, 0), 0);
	cr_assert_eq(keel_breaker_state(&b), C);
}

Test(breaker, acquire_moves_open_to_half_open_without_a_state_query,
     .timeout = 10)
{
	struct keel_breaker_opts o = breaker_opts(1, 10);
	struct keel_breaker b;
	struct keel_breaker_permit p = {0};

	cr_assert_eq(keel_breaker_init(&b, &o), 0);
	cr_assert_eq(call(&b, -EIO), 0);
	g_now += 10;
	cr_assert_eq(keel_breaker_acquire(&b, &p), 0);
	kt_log_expect(&g_log, (const int[]){C * 10 + O, O * 10 + HO}, 2);
}

Test(breaker, half_open_enforces_the_probe_budget_and_closes_after_successes,
     .timeout = 10)
{
	struct keel_breaker_opts o = breaker_opts(1, 10);
	struct keel_breaker b;
	struct keel_breaker_permit p[4] = {{0}};

	o.half_open_max_calls = 2;
	o.success_threshold = 3;
	cr_assert_eq(keel_breaker_init(&b, &o), 0);
	cr_assert_eq(call(&b, -EIO), 0);
	g_now += 10;
	cr_assert_eq(keel_breaker_acquire(&b, &p[0]), 0);
	cr_assert_eq(keel_breaker_acquire(&b, &p[1]), 0);
	/* Two probes out: a third is refused, however often it asks. */
	cr_assert_eq(keel_breaker_acquire(&b, &p[2]), -EAGAIN);
	cr_assert_eq(keel_breaker_acquire(&b, &p[2]), -EAGAIN);
	cr_assert_eq(keel_breaker_state(&b), HO);
	/* A permit still held cannot be acquired again. */
	cr_assert_eq(keel_breaker_acquire(&b, &p[0]), -EINVAL);
	/* A success gives its slot back: one more probe may go. */
	cr_assert_eq(keel_breaker_record(&b, &p[0], 0), 0);
	cr_assert_eq(keel_breaker_state(&b), HO);
	cr_assert_eq(keel_breaker_acquire(&b, &p[2]), 0);
	cr_assert_eq(keel_breaker_acquire(&b, &p[3]), -EAGAIN);
	cr_assert_eq(keel_breaker_record(&b, &p[1], 5), 0);
	cr_assert_eq(keel_breaker_state(&b), HO, "closed after 2 of 3");
	cr_assert_eq(keel_breaker_record(&b, &p[2], 0), 0);
	cr_assert_eq(keel_breaker_state(&b), C);
	kt_log_expect(&g_log,
		      (const int[]){C * 10 + O, O * 10 + HO, HO * 10 + C}, 3);
	/* Closed again: calls go ahead, no budget. */
	for (int i = 0; i < 4; i++)
		cr_assert_eq(keel_breaker_acquire(&b, &p[i]), 0);
	for (int i = 0; i < 4; i++)
		cr_assert_eq(keel_breaker_record(&b, &p[i], 0), 0);
	cr_assert_eq(stats_of(&b).rejections, 3);
	cr_assert_eq(stats_of(&b).transitions, 3);
}

Test(breaker, probe_failure_reopens_and_restarts_the_recovery_timeout,
     .timeout = 10)
{
	struct keel_breaker_opts o = breaker_opts(2, 100);
	struct keel_breaker b;
	struct keel_breaker_permit p = {0}, q = {0};

	o.half_open_max_calls = 3;
	o.success_threshold = 2;
	cr_assert_eq(keel_breaker_init(&b, &o), 0);
	cr_assert_eq(call(&b, -EIO), 0);
	cr_assert_eq(call(&b, -EIO), 0);
	g_now += 100;
	cr_assert_eq(keel_breaker_acquire(&b, &p), 0);
	cr_assert_eq(keel_breaker_acquire(&b, &q), 0);
	cr_assert_eq(keel_breaker_record(&b, &p, 0), 0); /* 1 of 2 */
	g_now += 7;
	cr_assert_eq(keel_breaker_record(&b, &q, -ECONNRESET), 0);
	cr_assert_eq(keel_breaker_state(&b), O);
	/* Its timeout runs from the probe's failure, not the first open. */
	g_now += 99;
	cr_assert_eq(keel_breaker_acquire(&b, &p), -EAGAIN);
	g_now += 1;
	cr_assert_eq(keel_breaker_acquire(&b, &p), 0);
	/* The successes before the reopening do not count any more. */
	cr_assert_eq(keel_breaker_record(&b, &p, 0), 0);
	cr_assert_eq(keel_breaker_state(&b), HO);
	cr_assert_eq(call(&b, 0), 0);
	cr_assert_eq(keel_breaker_state(&b), C);
	const int want[] = {C * 10 + O, O * 10 + HO, HO * 10 + O, O * 10 + HO,
			    HO * 10 + C};

	kt_log_expect(&g_log, want, 5);
	cr_assert_eq(stats_of(&b).opened, 2);
	cr_assert_eq(stats_of(&b).transitions, 5);
}

Test(breaker, half_open_time_limit_reopens_a_breaker_whose_probe_never_ends,
     .timeout = 10)
{
	struct keel_breaker_opts o = breaker_opts(1, 100);
	struct keel_breaker b;
	struct keel_breaker_permit lost = {0}, p = {0};

	o.half_open_max_ns = 50;
	cr_assert_eq(keel_breaker_init(&b, &o), 0);
	cr_assert_eq(call(&b, -EIO), 0);
	g_now += 100;
	cr_assert_eq(keel_breaker_acquire(&b, &lost), 0);
	g_now += 49;
	cr_assert_eq(keel_breaker_acquire(&b, &p), -EAGAIN);
	g_now += 1;
	cr_assert_eq(keel_breaker_state(&b), O);
	g_now += 100;
	cr_assert_eq(keel_breaker_acquire(&b, &p), 0, "wedged by a lost probe");
	/* The lost probe turning up late is stale: it decides nothing. */
	cr_assert_eq(keel_breaker_record(&b, &lost, -EIO), 0);
	cr_assert_eq(keel_breaker_state(&b), HO);
	cr_assert_eq(stats_of(&b).stale, 1);
	cr_assert_eq(keel_breaker_record(&b, &p, 0), 0);
	cr_assert_eq(keel_breaker_state(&b), C);
}

Test(breaker, stale_results_of_an_earlier_state_do_not_move_it, .timeout = 10)
{
	struct keel_breaker_opts o = breaker_opts(2, 10);
	struct keel_breaker b;
	struct keel_breaker_permit slow_fail = {0}, slow_ok = {0}, probe = {0};

	cr_assert_eq(keel_breaker_init(&b, &o), 0);
	/* Two slow calls granted while closed, then the breaker trips. */
	cr_assert_eq(keel_breaker_acquire(&b, &slow_fail), 0);
	cr_assert_eq(keel_breaker_acquire(&b, &slow_ok), 0);
	cr_assert_eq(call(&b, -EIO), 0);
	cr_assert_eq(call(&b, -EIO), 0);
	g_now += 10;
	cr_assert_eq(keel_breaker_acquire(&b, &probe), 0);
	/* Their results arrive during the half-open state. */
	cr_assert_eq(keel_breaker_record(&b, &slow_ok, 0), 0);
	cr_assert_eq(keel_breaker_state(&b), HO, "a stale success closed it");
	cr_assert_eq(keel_breaker_record(&b, &slow_fail, -EIO), 0);
	cr_assert_eq(keel_breaker_state(&b), HO, "a stale failure opened it");
	cr_assert_eq(keel_breaker_record(&b, &probe, 0), 0);
	cr_assert_eq(keel_breaker_state(&b), C);

	struct keel_breaker_stats s = stats_of(&b);

	cr_assert_eq(s.stale, 2);
	cr_assert_eq(s.calls, 5);
	cr_assert_eq(s.successes, 2);
	cr_assert_eq(s.failures, 3);
}

static enum keel_breaker_outcome enoent_is_fine(int result, void *arg)
{
	(*(int *)arg)++;
	if (result >= 0 || result == -ENOENT)
		return KEEL_BREAKER_SUCCESS;
	if (result == -EPERM)
		return KEEL_BREAKER_IGNORE;
	return KEEL_BREAKER_FAILURE;
}

Test(breaker, cancelled_results_are_ignored_and_a_classifier_decides,
     .timeout = 10)
{
	struct keel_breaker_opts o = breaker_opts(2, 10);
	struct keel_breaker b;
	struct keel_breaker_permit p = {0};
	int asked = 0;

	cr_assert_eq(keel_breaker_init(&b, &o), 0);
	/* -ECANCELED neither breaks nor extends a run of failures. */
	cr_assert_eq(call(&b, -EIO), 0);
	cr_assert_eq(call(&b, -ECANCELED), 0);
	cr_assert_eq(call(&b, -ECANCELED), 0);
	cr_assert_eq(keel_breaker_state(&b), C);
	cr_assert_eq(call(&b, -EIO), 0);
	cr_assert_eq(keel_breaker_state(&b), O);
	/* In half-open an ignored probe only gives back its slot. */
	g_now += 10;
	cr_assert_eq(keel_breaker_acquire(&b, &p), 0);
	cr_assert_eq(keel_breaker_record(&b, &p, -ECANCELED), 0);
	cr_assert_eq(keel_breaker_state(&b), HO);
	cr_assert_eq(keel_breaker_acquire(&b, &p), 0, "slot not given back");
	cr_assert_eq(keel_breaker_record(&b, &p, 0), 0);
	cr_assert_eq(keel_breaker_state(&b), C);
	cr_assert_eq(stats_of(&b).ignored, 3);

	/* A classifier: -ENOENT is an answer, -EPERM says nothing. */
	o.classify = enoent_is_fine;
	o.classify_arg = &asked;
	cr_assert_eq(keel_breaker_init(&b, &o), 0);
	for (int i = 0; i < 5; i++)
		cr_assert_eq(call(&b, -ENOENT), 0);
	cr_assert_eq(call(&b, -EIO), 0);
	cr_assert_eq(call(&b, -EPERM), 0);
	cr_assert_eq(keel_breaker_state(&b), C);
	cr_assert_eq(call(&b, -ECANCELED), 0); /* a failure, to this one */
	cr_assert_eq(keel_breaker_state(&b), O);
	cr_assert_eq(asked, 8);
	cr_assert_eq(stats_of(&b).successes, 5);
	cr_assert_eq(stats_of(&b).ignored, 1);
	cr_assert_eq(stats_of(&b).failures, 2);
}

Test(breaker, failure_rate_window_trips_only_with_enough_calls, .timeout = 10)
{
	struct keel_breaker_opts o = breaker_opts(UINT32_MAX, 10);
	struct keel_breaker b;

	o.window_size = 10;
	o.window_min_calls = 5;
	o.failure_rate = 50;
	cr_assert_eq(keel_breaker_init(&b, &o), 0);
	/* 4 failures of 4: 100 %, but fewer than window_min_calls. */
	for (int i = 0; i < 4; i++)
		cr_assert_eq(call(&b, -EIO), 0);
	cr_assert_eq(keel_breaker_state(&b), C);
	/* The fifth call, a success, makes 4 of 5: 80 % >= 50 %. */
	cr_assert_eq(call(&b, 0), 0);
	cr_assert_eq(keel_breaker_state(&b), O);

	/* Below the rate it stays closed over many calls: 1 failure in 3. */
	cr_assert_eq(keel_breaker_init(&b, &o), 0);
	for (int i = 0; i < 30; i++)
		cr_assert_eq(call(&b, i % 3 == 0 ? -EIO : 0), 0);
	cr_assert_eq(keel_breaker_state(&b), C);
}

Test(breaker, failure_rate_window_forgets_the_oldest_call, .timeout = 10)
{
	struct keel_breaker_opts o = breaker_opts(UINT32_MAX, 10);
	struct keel_breaker b;
	/* window 4, trips at 75 %: each step's resulting window is noted. */
	const int seq[] = {-EIO, -EIO, 0, 0, /* F F S S: 50 % */
			   0,		     /* F S S S: 25 % */
			   -EIO, -EIO,	     /* S S F F: 50 % */
			   -EIO};	     /* S F F F: 75 %, trips */

	o.window_size = 4;
	o.window_min_calls = 4;
	o.failure_rate = 75;
	cr_assert_eq(keel_breaker_init(&b, &o), 0);
	for (int i = 0; i < 7; i++) {
		cr_assert_eq(call(&b, seq[i]), 0);
		cr_assert_eq(keel_breaker_state(&b), C, "tripped at call %d",
			     i);
	}
	cr_assert_eq(call(&b, seq[7]), 0);
	cr_assert_eq(keel_breaker_state(&b), O);

	/* A window as large as it goes: 200 successes, then 56 failures
	 * make 56 of 256 (21 %); one more evicts a success: 57 (22 %). */
	o.window_size = KEEL_BREAKER_WINDOW_MAX;
	o.window_min_calls = KEEL_BREAKER_WINDOW_MAX;
	o.failure_rate = 22;
	cr_assert_eq(keel_breaker_init(&b, &o), 0);
	for (int i = 0; i < 200; i++)
		cr_assert_eq(call(&b, 0), 0);
	for (int i = 0; i < 56; i++)
		cr_assert_eq(call(&b, -EIO), 0);
	cr_assert_eq(keel_breaker_state(&b), C);
	cr_assert_eq(call(&b, -EIO), 0);
	cr_assert_eq(keel_breaker_state(&b), O);
}

Test(breaker, consecutive_threshold_and_window_both_apply, .timeout = 10)
{
	struct keel_breaker_opts o = breaker_opts(3, 10);
	struct keel_breaker b;

	o.window_size = 100;
	o.window_min_calls = 100;
	o.failure_rate = 90;
	cr_assert_eq(keel_breaker_init(&b, &o), 0);
	for (int i = 0; i < 2; i++)
		cr_assert_eq(call(&b, -EIO), 0);
	cr_assert_eq(keel_breaker_state(&b), C);
	cr_assert_eq(call(&b, -EIO), 0);
	cr_assert_eq(keel_breaker_state(&b), O);
}

Test(breaker, callback_and_stats_follow_every_transition_and_reset,
     .timeout = 10)
{
	struct keel_breaker_opts o = breaker_opts(1, 10);
	struct keel_breaker b;
	struct keel_breaker_permit stale = {0};

	cr_assert_eq(keel_breaker_init(&b, &o), 0);
	/* A reset of a closed breaker changes no state: no callback. */
	keel_breaker_reset(&b);
	cr_assert_eq(g_log.n, 0);
	cr_assert_eq(keel_breaker_acquire(&b, &stale), 0);
	cr_assert_eq(call(&b, -EIO), 0);
	cr_assert_eq(call(&b, 0), -EAGAIN);
	keel_breaker_reset(&b); /* open -> closed */
	cr_assert_eq(keel_breaker_state(&b), C);
	cr_assert_eq(call(&b, 0), 0);
	/* The permit from before the trip is stale after the reset. */
	cr_assert_eq(keel_breaker_record(&b, &stale, -EIO), 0);
	cr_assert_eq(keel_breaker_state(&b), C);
	kt_log_expect(&g_log, (const int[]){C * 10 + O, O * 10 + C}, 2);

	struct keel_breaker_stats s = stats_of(&b);

	cr_assert_eq(s.calls, 3);
	cr_assert_eq(s.successes, 1);
	cr_assert_eq(s.failures, 2);
	cr_assert_eq(s.stale, 1);
	cr_assert_eq(s.rejections, 1);
	cr_assert_eq(s.transitions, 2);
	cr_assert_eq(s.opened, 1);
	cr_assert_str_eq(keel_breaker_state_name(C), "closed");
	cr_assert_str_eq(keel_breaker_state_name(O), "open");
	cr_assert_str_eq(keel_breaker_state_name(HO), "half-open");
}

Test(breaker, bad_input_is_einval_never_a_crash, .timeout = 10)
{
	struct keel_breaker_opts good = breaker_opts(1, 10), o;
	struct keel_breaker b;
	struct keel_breaker_permit p = {0};

	cr_assert_eq(keel_breaker_init(NULL, &good), -EINVAL);
	cr_assert_eq(keel_breaker_init(&b, NULL), -EINVAL);
	o = good;
	o.failure_threshold = 0;
	cr_assert_eq(keel_breaker_init(&b, &o), -EINVAL);
	o = good;
	o.open_ns = 0;
	cr_assert_eq(keel_breaker_init(&b, &o), -EINVAL);
	o = good;
	o.half_open_max_calls = 0;
	cr_assert_eq(keel_breaker_init(&b, &o), -EINVAL);
	o = good;
	o.success_threshold = 0;
	cr_assert_eq(keel_breaker_init(&b, &o), -EINVAL);
	o = good;
	o.window_size = KEEL_BREAKER_WINDOW_MAX + 1;
	o.window_min_calls = 1;
	o.failure_rate = 50;
	cr_assert_eq(keel_breaker_init(&b, &o), -EINVAL);
	o.window_size = 10;
	o.window_min_calls = 11;
	cr_assert_eq(keel_breaker_init(&b, &o), -EINVAL);
	o.window_min_calls = 0;
	cr_assert_eq(keel_breaker_init(&b, &o), -EINVAL);
	o.window_min_calls = 10;
	o.failure_rate = 0;
	cr_assert_eq(keel_breaker_init(&b, &o), -EINVAL);
	o.failure_rate = 101;
	cr_assert_eq(keel_breaker_init(&b, &o), -EINVAL);
	o.failure_rate = 100;
	cr_assert_eq(keel_breaker_init(&b, &o), 0);

	cr_assert_eq(keel_breaker_acquire(NULL, &p), -EINVAL);
	cr_assert_eq(keel_breaker_acquire(&b, NULL), -EINVAL);
	cr_assert_eq(keel_breaker_record(NULL, &p, 0), -EINVAL);
	cr_assert_eq(keel_breaker_record(&b, NULL, 0), -EINVAL);
	cr_assert_eq(keel_breaker_record(&b, &p, 0), -EINVAL, "never held");
	cr_assert_eq(keel_breaker_acquire(&b, &p), 0);
	cr_assert_eq(keel_breaker_record(&b, &p, 0), 0);
	cr_assert_eq(keel_breaker_record(&b, &p, 0), -EINVAL, "twice");
	keel_breaker_stats(NULL, NULL);
	keel_breaker_stats(&b, NULL);
	keel_breaker_reset(NULL);
	keel_breaker_opts_default(NULL);
	cr_assert_eq(keel_breaker_state(NULL), O);
	cr_assert_str_eq(keel_breaker_state_name((enum keel_breaker_state)7),
			 "unknown");
	/* Defaults are valid as they are. */
	keel_breaker_opts_default(&o);
	cr_assert_eq(keel_breaker_init(&b, &o), 0);
	cr_assert_eq(o.failure_threshold, 5);
	cr_assert_eq(o.half_open_max_calls, 1);
	cr_assert_eq(o.success_threshold, 1);
}

/* ---- retry: the computed delays ----------------------------------------- */

static struct keel_retry_policy retry_policy(uint64_t initial, uint64_t max,
					     double mult, uint32_t attempts,
					     enum keel_retry_jitter jitter)
{
	struct keel_retry_policy p;

	keel_retry_policy_default(&p);
	p.initial_ns = initial;
	p.max_ns = max;
	p.multiplier = mult;
	p.max_attempts = attempts;
	p.jitter = jitter;
	p.seed = 1;
	p.clock = fake_clock;
	p.clock_arg = &g_now;
	return p;
}

Test(retry, without_jitter_grows_exponentially_up_to_max, .timeout = 10)
{
	struct keel_retry_policy p =
	    retry_policy(10, 100, 2.0, 8, KEEL_RETRY_JITTER_NONE);
	struct keel_retry r;
	const int64_t want[] = {10, 20, 40, 80, 100, 100, 100};

	cr_assert_eq(keel_retry_begin(&r, &p), 0);
	cr_assert_eq(keel_retry_attempts(&r), 1);
	for (int i = 0; i < 7; i++) {
		cr_assert_eq(keel_retry_next(&r, -EAGAIN), want[i], "delay %d",
			     i);
		cr_assert_not(keel_retry_done(&r));
		cr_assert_eq(keel_retry_attempts(&r), (uint32_t)i + 2);
	}
	/* The eighth attempt was the last. */
	cr_assert_eq(keel_retry_next(&r, -ECONNRESET), 0);
	cr_assert(keel_retry_done(&r));
	cr_assert_eq(keel_retry_stop_reason(&r), KEEL_RETRY_EXHAUSTED);
	cr_assert_eq(keel_retry_result(&r), -ECONNRESET);
	cr_assert_eq(keel_retry_attempts(&r), 8);
	cr_assert_eq(r.slept_ns, 450);
	/* Over is over: later calls change nothing. */
	cr_assert_eq(keel_retry_next(&r, 0), 0);
	cr_assert_eq(keel_retry_result(&r), -ECONNRESET);

	/* A fractional multiplier, and 1.0: a constant delay. */
	p = retry_policy(1000, 5000, 1.5, 6, KEEL_RETRY_JITTER_NONE);
	cr_assert_eq(keel_retry_begin(&r, &p), 0);
	const int64_t want15[] = {1000, 1500, 2250, 3375, 5000};

	for (int i = 0; i < 5; i++)
		cr_assert_eq(keel_retry_next(&r, -EAGAIN), want15[i]);
	p = retry_policy(7, 7, 1.0, 4, KEEL_RETRY_JITTER_NONE);
	cr_assert_eq(keel_retry_begin(&r, &p), 0);
	for (int i = 0; i < 3; i++)
		cr_assert_eq(keel_retry_next(&r, -EAGAIN), 7);
	cr_assert_eq(keel_retry_next(&r, -EAGAIN), 0);
}

/* The exponential step before attempt n + 1 (n >= 1). */
static uint64_t step_cap(const struct keel_retry_policy *p, int n)
{
	double c = (double)p->initial_ns * pow(p->multiplier, n - 1);

	return c >= (double)p->max_ns ? p->max_ns : (uint64_t)c;
}

#define SEEDS	 2000
#define ATTEMPTS 12

/*
 * Every delay of every seed within [lo(n), cap(n)], and at most max_ns and
 * at least 1; returns per attempt the smallest and largest seen.
 */
static void sweep(struct keel_retry_policy *p, uint64_t lo_seen[ATTEMPTS],
		  uint64_t hi_seen[ATTEMPTS], double mean[ATTEMPTS])
{
	for (int n = 1; n < ATTEMPTS; n++) {
		lo_seen[n] = UINT64_MAX;
		hi_seen[n] = 0;
		mean[n] = 0;
	}
	for (uint64_t seed = 1; seed <= SEEDS; seed++) {
		struct keel_retry r;
		uint64_t prev = p->initial_ns;

		p->seed = seed;
		cr_assert_eq(keel_retry_begin(&r, p), 0);
		for (int n = 1; n < ATTEMPTS; n++) {
			int64_t d = keel_retry_next(&r, -ETIMEDOUT);
			uint64_t cap = step_cap(p, n), lo, hi;

			switch (p->jitter) {
			case KEEL_RETRY_JITTER_FULL:
				lo = 1;
				hi = cap;
				break;
			case KEEL_RETRY_JITTER_EQUAL:
				lo = cap - cap / 2;
				hi = cap;
				break;
			case KEEL_RETRY_JITTER_DECORRELATED:
				lo = p->initial_ns;
				hi = (uint64_t)((double)prev * p->multiplier);
				if (hi > p->max_ns)
					hi = p->max_ns;
				break;
			default:
				lo = cap;
				hi = cap;
				break;
			}
			cr_assert(d >= 1 && (uint64_t)d <= p->max_ns,
				  "seed %lu attempt %d: %ld",
				  (unsigned long)seed, n, (long)d);
			cr_assert((uint64_t)d >= lo && (uint64_t)d <= hi,
				  "seed %lu attempt %d: %ld not in [%lu, %lu]",
				  (unsigned long)seed, n, (long)d,
				  (unsigned long)lo, (unsigned long)hi);
			if ((uint64_t)d < lo_seen[n])
				lo_seen[n] = (uint64_t)d;
			if ((uint64_t)d > hi_seen[n])
				hi_seen[n] = (uint64_t)d;
			mean[n] += (double)d / SEEDS;
			prev = (uint64_t)d;
		}
	}
}

Test(retry, full_jitter_delays_stay_in_bounds_and_grow, .timeout = 10)
{
	struct keel_retry_policy p =
	    retry_policy(1000, 100000, 2.0, 100, KEEL_RETRY_JITTER_FULL);
	uint64_t lo[ATTEMPTS], hi[ATTEMPTS];
	double mean[ATTEMPTS];

	sweep(&p, lo, hi, mean);
	for (int n = 1; n < ATTEMPTS; n++) {
		uint64_t cap = step_cap(&p, n);

		/* 2000 uniform draws span their range: deterministic here
		 * (fixed seeds), and a broken spread would show. */
		cr_assert_lt(lo[n], cap / 20, "attempt %d low %lu", n,
			     (unsigned long)lo[n]);
		cr_assert_gt(hi[n], cap - cap / 20, "attempt %d high %lu", n,
			     (unsigned long)hi[n]);
		cr_assert(fabs(mean[n] - cap / 2.0) < cap * 0.05,
			  "attempt %d mean %f cap %lu", n, mean[n],
			  (unsigned long)cap);
	}
	/* Growth: the mean doubles until the cap reaches max_ns (attempt
	 * 8: 1000 * 2^7 > 100000), then stays. */
	for (int n = 2; n <= 7; n++)
		cr_assert_gt(mean[n], mean[n - 1] * 1.8);
}

Test(retry, equal_jitter_delays_stay_in_the_upper_half, .timeout = 10)
{
	struct keel_retry_policy p =
	    retry_policy(1001, 64000, 2.0, 100, KEEL_RETRY_JITTER_EQUAL);
	uint64_t lo[ATTEMPTS], hi[ATTEMPTS];
	double mean[ATTEMPTS];

	sweep(&p, lo, hi, mean);
	for (int n = 1; n < ATTEMPTS; n++) {
		uint64_t cap = step_cap(&p, n);

		cr_assert_lt(lo[n], cap / 2 + cap / 20);
		cr_assert_gt(hi[n], cap - cap / 20);
	}
}

Test(retry, decorrelated_jitter_stays_between_initial_and_max, .timeout = 10)
{
	struct keel_retry_policy p =
	    retry_policy(1000, 50000, 3.0, 100, KEEL_RETRY_JITTER_DECORRELATED);
	uint64_t lo[ATTEMPTS], hi[ATTEMPTS];
	double mean[ATTEMPTS];

	/* sweep() checks each delay against [initial, min(max, prev * 3)]. */
	sweep(&p, lo, hi, mean);
	cr_assert_lt(lo[1], 1100);
	cr_assert_gt(hi[1], 2900);
	/* Later attempts reach max_ns; none passes it (checked above). */
	cr_assert_eq(hi[ATTEMPTS - 1], 50000);
}

Test(retry, same_seed_gives_the_same_delays_and_others_differ, .timeout = 10)
{
	struct keel_retry_policy p =
	    retry_policy(1000, 1000000, 2.0, 20, KEEL_RETRY_JITTER_FULL);
	struct keel_retry a, b, c;
	int differ = 0;

	cr_assert_eq(keel_retry_begin(&a, &p), 0);
	cr_assert_eq(keel_retry_begin(&b, &p), 0);
	p.seed = 2;
	cr_assert_eq(keel_retry_begin(&c, &p), 0);
	for (int i = 0; i < 19; i++) {
		int64_t da = keel_retry_next(&a, -EAGAIN);

		cr_assert_eq(da, keel_retry_next(&b, -EAGAIN));
		differ += da != keel_retry_next(&c, -EAGAIN);
	}
	cr_assert_gt(differ, 15);

	/* seed 0: seeded by the kernel; still in bounds. */
	p.seed = 0;
	cr_assert_eq(keel_retry_begin(&a, &p), 0);
	for (int n = 1; n < 20; n++) {
		int64_t d = keel_retry_next(&a, -EAGAIN);

		cr_assert(d >= 1 && (uint64_t)d <= step_cap(&p, n));
	}
}

static uint64_t g_rand_value;

static uint64_t scripted_random(void *arg)
{
	(*(int *)arg)++;
	return g_rand_value;
}

Test(retry, injected_random_source_sets_the_jitter, .timeout = 10)
{
	struct keel_retry_policy p =
	    retry_policy(100, 800, 2.0, 10, KEEL_RETRY_JITTER_FULL);
	struct keel_retry r;
	int draws = 0;

	p.random = scripted_random;
	p.random_arg = &draws;
	/* Full jitter's draw of 0 is still a delay: 1 ns, never "stop". */
	g_rand_value = 0;
	cr_assert_eq(keel_retry_begin(&r, &p), 0);
	cr_assert_eq(keel_retry_next(&r, -EAGAIN), 1);
	/* uniform(0, cap) is draw % (cap + 1): cap itself is reachable. */
	g_rand_value = 200;
	cr_assert_eq(keel_retry_next(&r, -EAGAIN), 200);
	g_rand_value = UINT64_MAX; /* % 401 */
	cr_assert_eq(keel_retry_next(&r, -EAGAIN), (int64_t)(UINT64_MAX % 401));
	cr_assert_eq(draws, 3);
	/* No jitter draws nothing. */
	p.jitter = KEEL_RETRY_JITTER_NONE;
	cr_assert_eq(keel_retry_begin(&r, &p), 0);
	cr_assert_eq(keel_retry_next(&r, -EAGAIN), 100);
	cr_assert_eq(draws, 3);
}

/* ---- retry: when it stops ----------------------------------------------- */

static bool only_eio(int err, void *arg)
{
	(*(int *)arg)++;
	return err == -EIO;
}

Test(retry, stops_at_once_on_success_or_a_non_retryable_error, .timeout = 10)
{
	struct keel_retry_policy p =
	    retry_policy(10, 100, 2.0, 5, KEEL_RETRY_JITTER_NONE);
	struct keel_retry r;
	int asked = 0;

	cr_assert_eq(keel_retry_begin(&r, &p), 0);
	cr_assert_eq(keel_retry_next(&r, -EAGAIN), 10);
	cr_assert_eq(keel_retry_next(&r, 42), 0);
	cr_assert_eq(keel_retry_stop_reason(&r), KEEL_RETRY_SUCCEEDED);
	cr_assert_eq(keel_retry_result(&r), 42);
	cr_assert_eq(keel_retry_attempts(&r), 2);

	const int fatal[] = {-ENOENT, -EBADF, -EINVAL, -ECANCELED, -EPIPE};

	for (int i = 0; i < 5; i++) {
		cr_assert_eq(keel_retry_begin(&r, &p), 0);
		cr_assert_eq(keel_retry_next(&r, fatal[i]), 0);
		cr_assert_eq(keel_retry_stop_reason(&r),
			     KEEL_RETRY_NOT_RETRYABLE);
		cr_assert_eq(keel_retry_result(&r), fatal[i]);
		cr_assert_eq(keel_retry_attempts(&r), 1);
	}
	const int transient[] = {-EAGAIN,	-EINTR,	      -ETIMEDOUT,
				 -ECONNREFUSED, -ECONNRESET,  -ECONNABORTED,
				 -ENETUNREACH,	-EHOSTUNREACH};

	for (int i = 0; i < 8; i++)
		cr_assert(keel_retry_transient(transient[i]));
	cr_assert_not(keel_retry_transient(-ECANCELED));
	cr_assert_not(keel_retry_transient(0));

	/* A predicate of one's own replaces the default. */
	p.retryable = only_eio;
	p.retryable_arg = &asked;
	cr_assert_eq(keel_retry_begin(&r, &p), 0);
	cr_assert_eq(keel_retry_next(&r, -EIO), 10);
	cr_assert_eq(keel_retry_next(&r, -EAGAIN), 0);
	cr_assert_eq(keel_retry_stop_reason(&r), KEEL_RETRY_NOT_RETRYABLE);
	cr_assert_eq(asked, 2);
}

Test(retry, max_attempts_one_never_retries, .timeout = 10)
{
	struct keel_retry_policy p =
	    retry_policy(10, 100, 2.0, 1, KEEL_RETRY_JITTER_FULL);
	struct keel_retry r;

	cr_assert_eq(keel_retry_begin(&r, &p), 0);
	cr_assert_eq(keel_retry_next(&r, -EAGAIN), 0);
	cr_assert_eq(keel_retry_stop_reason(&r), KEEL_RETRY_EXHAUSTED);
	cr_assert_eq(keel_retry_result(&r), -EAGAIN);
}

Test(retry, overall_deadline_stops_before_a_sleep_past_it, .timeout = 10)
{
	struct keel_retry_policy p =
	    retry_policy(30, 30, 1.0, 100, KEEL_RETRY_JITTER_NONE);
	struct keel_retry r;

	p.max_elapsed_ns = 100;
	g_now = 5000;
	cr_assert_eq(keel_retry_begin(&r, &p), 0);
	/* Attempts at 5000, 5030, 5060, 5090; a sleep to 5120 would end
	 * 120 ns after the start: it gives up instead, with the error. */
	for (int i = 0; i < 3; i++) {
		cr_assert_eq(keel_retry_next(&r, -ETIMEDOUT), 30);
		g_now += 30;
	}
	cr_assert_eq(keel_retry_next(&r, -ECONNREFUSED), 0);
	cr_assert_eq(keel_retry_stop_reason(&r), KEEL_RETRY_DEADLINE);
	cr_assert_eq(keel_retry_result(&r), -ECONNREFUSED);
	cr_assert_eq(keel_retry_attempts(&r), 4);

	/* A sleep ending exactly at the deadline is allowed. */
	p.max_elapsed_ns = 90;
	cr_assert_eq(keel_retry_begin(&r, &p), 0);
	g_now += 60;
	cr_assert_eq(keel_retry_next(&r, -EAGAIN), 30);
	g_now += 1000; /* an attempt that took long: past the deadline */
	cr_assert_eq(keel_retry_next(&r, -EAGAIN), 0);
	cr_assert_eq(keel_retry_stop_reason(&r), KEEL_RETRY_DEADLINE);
}

Test(retry, bad_policy_is_einval_and_the_retry_ends, .timeout = 10)
{
	struct keel_retry_policy good =
	    retry_policy(10, 100, 2.0, 5, KEEL_RETRY_JITTER_FULL);
	struct keel_retry_policy bad[8];
	struct keel_retry r;

	for (int i = 0; i < 8; i++)
		bad[i] = good;
	bad[0].initial_ns = 0;
	bad[1].max_ns = 9;
	bad[2].multiplier = 0.5;
	bad[3].multiplier = NAN;
	bad[4].multiplier = INFINITY;
	bad[5].max_attempts = 0;
	bad[6].jitter = (enum keel_retry_jitter)42;
	bad[7].max_ns = UINT64_MAX;
	for (int i = 0; i < 8; i++) {
		cr_assert_eq(keel_retry_begin(&r, &bad[i]), -EINVAL, "bad %d",
			     i);
		cr_assert(keel_retry_done(&r));
		cr_assert_eq(keel_retry_stop_reason(&r), KEEL_RETRY_ERROR);
		cr_assert_eq(keel_retry_result(&r), -EINVAL);
		cr_assert_eq(keel_retry_next(&r, -EAGAIN), 0);
		cr_assert_eq(keel_retry_result(&r), -EINVAL);
	}
	cr_assert_eq(keel_retry_begin(&r, NULL), -EINVAL);
	cr_assert(keel_retry_done(&r));
	cr_assert_eq(keel_retry_begin(NULL, &good), -EINVAL);
	cr_assert_eq(keel_retry_next(NULL, -EAGAIN), -EINVAL);
	keel_retry_policy_default(NULL);
	keel_retry_policy_default(&good);
	cr_assert_eq(keel_retry_begin(&r, &good), 0);
}

/* ---- retry in tasks ----------------------------------------------------- */

/*
 * A task that retries one await (a nop, whose result it replaces with the
 * next of `script`, as a flaky dependency would answer) and records how
 * the retry ended.
 */
struct flaky {
	struct keel_task task;
	struct keel_retry retry;
	struct keel_retry_policy policy;
	const int *script;
	int nscript;
	int i;
	int res;	 /* the attempt's result */
	int cancel_self; /* cancel its own token before the first attempt */
};

static struct {
	int done;
	int res;  /* keel_res after the retry */
	int stop; /* its stop reason */
	uint32_t attempts;
	uint64_t slept_ns;	       /* the delays it handed out */
	int results_after_backoff[16]; /* keel_res while still going */
} g_flaky;

static int flaky_step(struct keel_task *t)
{
	struct flaky *f = keel_container_of(t, struct flaky, task);

	KEEL_BEGIN(t);
	if (f->cancel_self)
		keel_task_cancel(t);
	keel_retry_begin(&f->retry, &f->policy);
	do {
		KEEL_AWAIT(t, keel_nop(t));
		f->res = keel_res(t);
		if (f->res == 0) /* the nop went through: the script answers */
			f->res = f->i < f->nscript ? f->script[f->i] : -EIO;
		f->i++;
		KEEL_AWAIT_CALL(t, keel_retry_backoff(t, &f->retry, f->res));
		if (!keel_retry_done(&f->retry) && f->i <= 16)
			g_flaky.results_after_backoff[f->i - 1] = keel_res(t);
	} while (!keel_retry_done(&f->retry));
	g_flaky.done = 1;
	g_flaky.res = keel_res(t);
	g_flaky.stop = keel_retry_stop_reason(&f->retry);
	g_flaky.attempts = keel_retry_attempts(&f->retry);
	g_flaky.slept_ns = f->retry.slept_ns;
	KEEL_END(t);
}

static KEEL_TASK_TYPE(flaky_task, struct flaky, task, flaky_step);

static struct flaky *spawn_flaky(struct keel_loop *loop, const int *script,
				 int n, uint64_t delay, uint32_t attempts)
{
	struct flaky *f = kt_spawn(loop, &flaky_task, KEEL_PRIO_NORMAL);

	keel_retry_policy_default(&f->policy);
	f->policy.initial_ns = delay;
	f->policy.max_ns = delay;
	f->policy.multiplier = 1.0;
	f->policy.max_attempts = attempts;
	f->policy.jitter = KEEL_RETRY_JITTER_NONE;
	f->script = script;
	f->nscript = n;
	return f;
}

Test(retry_task, backoff_retries_an_await_until_it_succeeds, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	static const int script[] = {-EAGAIN, -ECONNRESET, -ETIMEDOUT, 7};

	spawn_flaky(loop, script, 4, KT_MS(1), 10);
	kt_loop_run(loop);
	cr_assert(g_flaky.done);
	cr_assert_eq(g_flaky.res, 7);
	cr_assert_eq(g_flaky.stop, KEEL_RETRY_SUCCEEDED);
	cr_assert_eq(g_flaky.attempts, 4);
	cr_assert_eq(g_flaky.slept_ns, 3 * KT_MS(1));
	for (int i = 0; i < 3; i++)
		cr_assert_eq(g_flaky.results_after_backoff[i], 0);
	/* Three backoff sleeps, each a timer that fired. */
	cr_assert_eq(kt_stats(loop).timers_fired, 3);
	cr_assert_eq(kt_stats(loop).timers_armed, 0);
	keel_loop_destroy(loop);
}

Test(retry_task, backoff_gives_up_after_max_attempts_with_the_last_error,
     .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	static const int script[] = {-EAGAIN, -EAGAIN, -ECONNREFUSED, 0};

	spawn_flaky(loop, script, 4, 1000, 3);
	kt_loop_run(loop);
	cr_assert_eq(g_flaky.res, -ECONNREFUSED);
	cr_assert_eq(g_flaky.stop, KEEL_RETRY_EXHAUSTED);
	cr_assert_eq(g_flaky.attempts, 3);
	cr_assert_eq(kt_stats(loop).timers_fired, 2);
	keel_loop_destroy(loop);
}

static void cancel_task_cb(struct keel_loop *loop, struct keel_timer *tm,
			   void *arg)
{
	cr_assert_eq(keel_task_cancel(arg), 0);
}

Test(retry_task, cancel_during_the_backoff_sleep_ends_it_with_ecanceled,
     .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	static const int script[] = {-ECONNREFUSED};
	struct flaky *f = spawn_flaky(loop, script, 1, KT_MS(60000), 5);
	struct keel_timer tm;

	/* The backoff sleeps 60 s: the test ends in time only if the cancel
	 * (20 ms in) wakes it. */
	keel_timer_init(&tm, cancel_task_cb, keel_task_of(&flaky_task, f));
	cr_assert_eq(keel_timer_arm_after(loop, &tm, KT_MS(20)), 0);
	kt_loop_run(loop);
	cr_assert(g_flaky.done);
	cr_assert_eq(g_flaky.res, -ECANCELED);
	cr_assert_eq(g_flaky.stop, KEEL_RETRY_CANCELLED);
	cr_assert_eq(g_flaky.attempts, 1, "the second attempt never began");
	/* The cancel's timer fired; the backoff's sleep did not. */
	cr_assert_eq(kt_stats(loop).timers_fired, 1);
	keel_loop_destroy(loop);
}

static bool everything(int err, void *arg)
{
	return true;
}

Test(retry_task, the_tasks_own_cancellation_is_never_retried, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct flaky *f = spawn_flaky(loop, NULL, 0, KT_MS(60000), 5);

	/* Even a predicate that retries everything, -ECANCELED included,
	 * does not get to retry the token's own cancellation. */
	f->policy.retryable = everything;
	f->cancel_self = 1;
	kt_loop_run(loop);
	cr_assert(g_flaky.done);
	cr_assert_eq(g_flaky.res, -ECANCELED);
	cr_assert_eq(g_flaky.stop, KEEL_RETRY_CANCELLED);
	cr_assert_eq(g_flaky.attempts, 1);
	cr_assert_eq(g_flaky.slept_ns, 0, "it drew a backoff delay");
	cr_assert_eq(kt_stats(loop).timers_fired, 0, "it slept");
	keel_loop_destroy(loop);
}

Test(retry_task, backoff_does_not_sleep_past_the_tokens_deadline, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	static const int script[] = {-ECONNREFUSED};
	struct flaky *f = spawn_flaky(loop, script, 1, KT_MS(60000), 5);
	struct keel_token *tok = NULL;

	/* A 10 s deadline, a 60 s backoff: give up now, with the error. */
	cr_assert_eq(keel_token_new(loop, NULL, &tok), 0);
	cr_assert_eq(keel_token_set_timeout(tok, KT_MS(10000)), 0);
	cr_assert_eq(keel_task_set_token(keel_task_of(&flaky_task, f), tok), 0);
	keel_token_release(tok); /* the task holds its own reference */
	kt_loop_run(loop);
	cr_assert_eq(g_flaky.res, -ECONNREFUSED);
	cr_assert_eq(g_flaky.stop, KEEL_RETRY_DEADLINE);
	cr_assert_eq(g_flaky.attempts, 1);
	cr_assert_eq(kt_stats(loop).timers_fired, 0);
	keel_loop_destroy(loop);
}

Test(retry_task, backoff_with_bad_arguments_is_einval, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct flaky *f = spawn_flaky(loop, NULL, 0, 0, 5); /* initial 0 */

	kt_loop_run(loop);
	/* keel_retry_begin refused the policy: one attempt, then -EINVAL. */
	cr_assert_eq(g_flaky.res, -EINVAL);
	cr_assert_eq(g_flaky.stop, KEEL_RETRY_ERROR);
	cr_assert_eq(g_flaky.attempts, 1);
	(void)f;
	cr_assert_eq(keel_retry_backoff(NULL, NULL, 0), -EINVAL);
	keel_loop_destroy(loop);
}

/* ---- end to end: dial through a breaker until the peer listens ---------- */

/*
 * The port is bound (reserved) from the start but not listening, so a
 * connect is refused; the listener task calls listen() only after the
 * dialer's second refusal, then accepts. The dialer is the header's
 * example: a fresh socket per attempt, a breaker (opens after 2 failures,
 * 5 ms recovery) in front of each, and retries with full jitter.
 */
static struct keel_breaker g_br;
static struct keel_latch *g_refusals;

static struct {
	int refused;  /* attempts the peer refused */
	int rejected; /* attempts the breaker refused */
	int other;    /* any other failure */
	int res;      /* the dialer's outcome */
	int stop;
	uint32_t attempts;
	int listen_res;
	int accept_res;
} g_e2e;

struct dial {
	struct keel_task task;
	struct keel_routine r;
	struct keel_retry retry;
	struct keel_retry_policy policy;
	struct keel_breaker_permit permit;
	struct sockaddr_storage ss;
	socklen_t len;
	int fd;
	int res;
};

/* One attempt: a fresh socket, connected or closed again. */
static int dial_once(struct keel_task *t, struct dial *d)
{
	KEEL_BEGIN(&d->r);
	d->fd = keel_tcp_socket(AF_INET);
	if (d->fd < 0)
		KEEL_ROUTINE_RETURN(&d->r, t, d->fd);
	KEEL_AWAIT(&d->r,
		   keel_connect(t, d->fd, (struct sockaddr *)&d->ss, d->len));
	if (keel_res(t) < 0)
		close(d->fd);
	KEEL_ROUTINE_RETURN(&d->r, t, keel_res(t));
}

static int dial_step(struct keel_task *t)
{
	struct dial *d = keel_container_of(t, struct dial, task);

	KEEL_BEGIN(t);
	keel_retry_begin(&d->retry, &d->policy);
	do {
		d->res = keel_breaker_acquire(&g_br, &d->permit);
		if (d->res == 0) {
			KEEL_AWAIT_CALL(t, dial_once(t, d));
			d->res = keel_res(t);
			keel_breaker_record(&g_br, &d->permit, d->res);
			if (d->res == -ECONNREFUSED) {
				g_e2e.refused++;
				keel_latch_count_down(g_refusals, 1);
			} else if (d->res < 0) {
				g_e2e.other++;
			}
		} else {
			g_e2e.rejected++;
		}
		KEEL_AWAIT_CALL(t, keel_retry_backoff(t, &d->retry, d->res));
	} while (!keel_retry_done(&d->retry));
	g_e2e.res = keel_res(t);
	g_e2e.stop = keel_retry_stop_reason(&d->retry);
	g_e2e.attempts = keel_retry_attempts(&d->retry);
	if (keel_res(t) >= 0)
		KEEL_AWAIT(t, keel_close(t, d->fd));
	KEEL_END(t);
}

static KEEL_TASK_TYPE(dial_task, struct dial, task, dial_step);

struct listener {
	struct keel_task task;
	int fd;
};

static int listener_step(struct keel_task *t)
{
	struct listener *l = keel_container_of(t, struct listener, task);

	KEEL_BEGIN(t);
	KEEL_AWAIT(t, keel_latch_wait(t, g_refusals));
	g_e2e.listen_res = listen(l->fd, 16) == 0 ? 0 : -errno;
	KEEL_AWAIT(t, keel_accept(t, l->fd, NULL, NULL, 0));
	g_e2e.accept_res = keel_res(t);
	if (keel_res(t) >= 0)
		close(keel_res(t));
	close(l->fd);
	KEEL_END(t);
}

static KEEL_TASK_TYPE(listener_task, struct listener, task, listener_step);

Test(resilience, retry_and_breaker_dial_until_the_peer_listens, .timeout = 30)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_breaker_opts o;
	struct sockaddr_in sin = {.sin_family = AF_INET};
	socklen_t slen = sizeof(sin);
	struct listener *l;
	struct dial *d;
	int fd;

	/* Bound, not listening: connects to it are refused. */
	fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	cr_assert_geq(fd, 0);
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	cr_assert_eq(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	cr_assert_eq(getsockname(fd, (struct sockaddr *)&sin, &slen), 0);

	keel_breaker_opts_default(&o);
	o.failure_threshold = 2;
	o.open_ns = KT_MS(5);
	o.on_state_change = log_transition;
	o.on_state_change_arg = &g_log;
	cr_assert_eq(keel_breaker_init(&g_br, &o), 0);
	cr_assert_eq(keel_latch_new(loop, 2, &g_refusals), 0);

	l = kt_spawn(loop, &listener_task, KEEL_PRIO_NORMAL);
	l->fd = fd;
	d = kt_spawn(loop, &dial_task, KEEL_PRIO_NORMAL);
	keel_retry_policy_default(&d->policy);
	d->policy.initial_ns = KT_MS(1);
	d->policy.max_ns = KT_MS(4);
	d->policy.max_attempts = 1000;
	d->policy.seed = 42;
	kt_loopback_addr(ntohs(sin.sin_port), &d->ss, &d->len);
	kt_loop_run(loop);

	cr_assert_eq(g_e2e.listen_res, 0);
	cr_assert_eq(g_e2e.res, 0, "dial: %s", strerror(-g_e2e.res));
	cr_assert_eq(g_e2e.stop, KEEL_RETRY_SUCCEEDED);
	cr_assert_geq(g_e2e.accept_res, 0);
	/* Refused twice; the breaker opened on the second refusal and kept
	 * the dialer off the peer until a probe, which connected. */
	cr_assert_eq(g_e2e.refused, 2);
	cr_assert_eq(g_e2e.other, 0);
	cr_assert_eq(g_e2e.attempts, (uint32_t)(2 + g_e2e.rejected + 1));
	kt_log_expect(&g_log,
		      (const int[]){C * 10 + O, O * 10 + HO, HO * 10 + C}, 3);

	struct keel_breaker_stats s = stats_of(&g_br);

	cr_assert_eq(s.calls, 3);
	cr_assert_eq(s.failures, 2);
	cr_assert_eq(s.successes, 1);
	cr_assert_eq(s.rejections, (uint64_t)g_e2e.rejected);
	cr_assert_eq(keel_breaker_state(&g_br), C);
	keel_latch_free(g_refusals);
	keel_loop_destroy(loop);
}
