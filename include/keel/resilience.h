/* SPDX-License-Identifier: MIT */
/*
 * keel/resilience.h: a circuit breaker, and retry with exponential backoff
 * and jitter, both usable around any await of a keel task.
 *
 * A breaker guards a dependency: before the await, keel_breaker_acquire()
 * says whether the call may go ahead (or fails fast with -EAGAIN); after
 * it, keel_breaker_record() reports how it went. A retry is a small state
 * machine in the task's frame: after each attempt, keel_retry_backoff()
 * decides whether to try again and sleeps the backoff (cancellably), as a
 * nested routine. Together, dialing a peer that may be down:
 *
 *	static struct keel_breaker br;	// keel_breaker_init() once
 *	static const struct keel_retry_policy policy = {
 *		.initial_ns = 10000000,	  // 10 ms
 *		.max_ns = 2000000000,	  // 2 s
 *		.multiplier = 2.0,
 *		.max_attempts = 8,
 *		.jitter = KEEL_RETRY_JITTER_FULL,
 *	};
 *
 *	struct dial {
 *		struct keel_task task;
 *		struct keel_routine r;
 *		struct keel_retry retry;
 *		struct keel_breaker_permit permit;
 *		const struct sockaddr *sa;
 *		socklen_t len;
 *		int fd;
 *		int res;
 *	};
 *
 *	// One attempt, any await(s): a fresh socket, connected or closed.
 *	static int dial_once(struct keel_task *t, struct dial *d)
 *	{
 *		KEEL_BEGIN(&d->r);
 *		d->fd = keel_tcp_socket(d->sa->sa_family);
 *		if (d->fd < 0)
 *			KEEL_ROUTINE_RETURN(&d->r, t, d->fd);
 *		KEEL_AWAIT(&d->r, keel_connect(t, d->fd, d->sa, d->len));
 *		if (keel_res(t) < 0)
 *			close(d->fd);
 *		KEEL_ROUTINE_RETURN(&d->r, t, keel_res(t));
 *	}
 *
 *	static int dial_step(struct keel_task *t)
 *	{
 *		struct dial *d = keel_container_of(t, struct dial, task);
 *
 *		KEEL_BEGIN(t);
 *		keel_retry_begin(&d->retry, &policy);
 *		do {
 *			d->res = keel_breaker_acquire(&br, &d->permit);
 *			if (d->res == 0) {	// else -EAGAIN: rejected
 *				KEEL_AWAIT_CALL(t, dial_once(t, d));
 *				d->res = keel_res(t);
 *				keel_breaker_record(&br, &d->permit, d->res);
 *			}
 *			KEEL_AWAIT_CALL(t, keel_retry_backoff(t, &d->retry,
 *							      d->res));
 *		} while (!keel_retry_done(&d->retry));
 *		if (keel_res(t) < 0)	// the last error, or -ECANCELED
 *			KEEL_EXIT(t, keel_res(t));
 *		// d->fd is connected
 *		KEEL_END(t);
 *	}
 *
 * Time: both read a clock given in their options (default: the running
 * loop's keel_loop_now(), else CLOCK_MONOTONIC), so tests can drive time
 * by hand. Both are plain caller-owned structs used from one loop: they
 * are not thread-safe; give each loop its own breaker (or send the calls
 * to the breaker's loop). They hold no resources: nothing to free.
 */
#ifndef KEEL_RESILIENCE_H
#define KEEL_RESILIENCE_H

#include <keel/task.h>
#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* A monotonic clock in ns; the breaker and the retry's deadline read it. */
typedef uint64_t (*keel_clock_fn)(void *arg);

/* ==== circuit breaker ====================================================
 *
 * The model, that of resilience4j's count-based breaker and gobreaker:
 *
 * CLOSED: calls go ahead. It opens when `failure_threshold` calls in a row
 *   have failed, or, with a window (`window_size` > 0), when at least
 *   `window_min_calls` of the last `window_size` calls have been recorded
 *   and `failure_rate` percent or more of them failed. A success resets
 *   the run of failures (not the window).
 * OPEN: keel_breaker_acquire() fails fast with -EAGAIN, for `open_ns`
 *   (the recovery timeout); then the next acquire or state query moves it
 *   to HALF_OPEN.
 * HALF_OPEN: at most `half_open_max_calls` trial calls (probes) are in
 *   flight at a time; an acquire beyond that fails with -EAGAIN too.
 *   `success_threshold` probe successes close it (counts reset); any probe
 *   failure opens it again for another `open_ns`. With `half_open_max_ns`,
 *   a half-open state that has not closed by then opens again (so a probe
 *   whose result never comes cannot wedge it).
 *
 * What a result means is the classifier's call: by default a result >= 0
 * is a success, -ECANCELED is ignored (the caller gave up: it says nothing
 * about the dependency) and any other negative errno, -ETIMEDOUT included,
 * is a failure. An ignored result only gives back its probe slot.
 *
 * Every permit belongs to a generation (a state, from one transition to
 * the next); a result recorded after the breaker has moved on counts in
 * the stats but does not move the state (gobreaker does the same), so a
 * slow call granted while closed cannot close or open a later half-open
 * state.
 */

enum keel_breaker_state {
	KEEL_BREAKER_CLOSED = 0,
	KEEL_BREAKER_OPEN = 1,
	KEEL_BREAKER_HALF_OPEN = 2,
};

/* What a call's result counts as (a classifier's answer). */
enum keel_breaker_outcome {
	KEEL_BREAKER_SUCCESS = 0,
	KEEL_BREAKER_FAILURE = 1,
	KEEL_BREAKER_IGNORE = 2,
};

/* The largest window_size: the window is a bitmap in the breaker. */
#define KEEL_BREAKER_WINDOW_MAX 256

struct keel_breaker;

typedef enum keel_breaker_outcome (*keel_breaker_classify_fn)(int result,
							      void *arg);

/*
 * Called after each state change, once the breaker is in its new state. It
 * may read the breaker (state, stats) but must not acquire or record.
 */
typedef void (*keel_breaker_fn)(struct keel_breaker *b,
				enum keel_breaker_state from,
				enum keel_breaker_state to, void *arg);

struct keel_breaker_opts {
	/* CLOSED -> OPEN after this many failures in a row (>= 1;
	 * UINT32_MAX with a window: trip on the failure rate alone). */
	uint32_t failure_threshold;
	/* The failure rate over the last window_size calls (0: off; at most
	 * KEEL_BREAKER_WINDOW_MAX); counted once window_min_calls (1 ..
	 * window_size) are in it; trips at failure_rate percent (1 .. 100). */
	uint32_t window_size;
	uint32_t window_min_calls;
	uint32_t failure_rate;
	/* OPEN -> HALF_OPEN after this long (the recovery timeout, >= 1). */
	uint64_t open_ns;
	/* HALF_OPEN: probes in flight at most (>= 1), probe successes that
	 * close it (>= 1), and how long it may stay (0: no limit). */
	uint32_t half_open_max_calls;
	uint32_t success_threshold;
	uint64_t half_open_max_ns;
	/* Optional (NULL: the defaults described above). */
	keel_breaker_classify_fn classify;
	void *classify_arg;
	keel_breaker_fn on_state_change;
	void *on_state_change_arg;
	keel_clock_fn clock;
	void *clock_arg;
};

struct keel_breaker_stats {
	uint64_t calls;	      /* permits granted */
	uint64_t successes;   /* results recorded as a success */
	uint64_t failures;    /* ... as a failure */
	uint64_t ignored;     /* ... ignored by the classifier */
	uint64_t stale;	      /* of those, from an earlier generation */
	uint64_t rejections;  /* acquires refused (-EAGAIN) */
	uint64_t transitions; /* state changes */
	uint64_t opened;      /* of which, into OPEN */
};

/* Caller-owned; its fields are private. */
struct keel_breaker {
	struct keel_breaker_opts opts;
	struct keel_breaker_stats stats;
	uint64_t generation; /* bumped by every state change */
	uint64_t since;	     /* when the current state began */
	uint32_t run;	     /* CLOSED: failures in a row */
	uint32_t probes;     /* HALF_OPEN: permits out */
	uint32_t probe_successes;
	uint16_t window_next; /* the window's next slot */
	uint16_t window_calls;
	uint16_t window_failures;
	uint8_t state; /* enum keel_breaker_state */
	uint64_t window[KEEL_BREAKER_WINDOW_MAX / 64]; /* 1 bit: a failure */
};

/* A granted call; keep it in the frame from acquire to record. */
struct keel_breaker_permit {
	uint64_t generation;
	bool held; /* granted and not yet recorded */
};

/*
 * Fill `opts` with defaults (gobreaker's, with resilience4j's recovery
 * timeout): 5 failures in a row, no window, 60 s open, 1 probe at a time,
 * 1 success to close, no half-open limit, default classifier and clock.
 * Ownership: writes into the caller's `opts`.
 */
void keel_breaker_opts_default(struct keel_breaker_opts *opts);

/*
 * Initialise a closed breaker with a copy of `opts`. Returns 0, or -EINVAL
 * (NULL, a zero threshold or timeout, a window out of range).
 * Ownership: the caller owns the breaker; it holds nothing to release.
 */
int keel_breaker_init(struct keel_breaker *b,
		      const struct keel_breaker_opts *opts);

/*
 * Ask to make a call, before its await. Returns 0 (go ahead; `permit` is
 * held: record the result with keel_breaker_record()), -EAGAIN (OPEN, or
 * HALF_OPEN with its probes all out: rejected fast, nothing to record) or
 * -EINVAL (NULL, or a permit still held).
 * Ownership: `permit` is the caller's; while held it must be recorded once.
 */
int keel_breaker_acquire(struct keel_breaker *b,
			 struct keel_breaker_permit *permit);

/*
 * Report the result of a permitted call (a negative errno or >= 0; what
 * it counts as is the classifier's call) and release the permit. Returns
 * 0, or -EINVAL (NULL, or the permit is not held). A held permit must be
 * recorded once, or a half-open breaker keeps its probe slot (until
 * half_open_max_ns, if set). If the task may abort between the two,
 * register a keel_defer() cleanup that records -ECANCELED (ignored by the
 * default classifier: it only frees the slot); after a normal record it
 * is a harmless -EINVAL.
 * Ownership: the permit is released; the breaker keeps nothing of it.
 */
int keel_breaker_record(struct keel_breaker *b,
			struct keel_breaker_permit *permit, int result);

/*
 * The current state. Moves OPEN to HALF_OPEN when the recovery timeout has
 * passed (or HALF_OPEN back to OPEN after half_open_max_ns), running the
 * state-change callback, as an acquire would. NULL: KEEL_BREAKER_OPEN
 * (nothing to call).
 * Ownership: reads (and may advance) the breaker; nothing changes hands.
 */
enum keel_breaker_state keel_breaker_state(struct keel_breaker *b);

/*
 * "closed", "open" or "half-open".
 * Ownership: a constant string, never freed.
 */
const char *keel_breaker_state_name(enum keel_breaker_state state);

/*
 * A snapshot of the counters (kept across transitions and resets). Does
 * nothing if either is NULL.
 * Ownership: a copy into the caller's `out`.
 */
void keel_breaker_stats(const struct keel_breaker *b,
			struct keel_breaker_stats *out);

/*
 * Back to CLOSED with clean counts, whatever the state (an operator's
 * override); permits out become stale. NULL: does nothing.
 * Ownership: nothing changes hands.
 */
void keel_breaker_reset(struct keel_breaker *b);

/* ==== retry with exponential backoff ======================================
 *
 * Attempt n (1, 2, ...) that fails with a retryable error is followed by a
 * delay before attempt n + 1, from the exponential step
 *	cap(n) = min(max_ns, initial_ns * multiplier^(n - 1))
 * and the jitter, as in the AWS Architecture Blog's "Exponential Backoff
 * And Jitter":
 *	NONE          cap(n)
 *	FULL          uniform in [0, cap(n)]        (the blog's choice)
 *	EQUAL         cap(n)/2 + uniform in [0, cap(n)/2]
 *	DECORRELATED  min(max_ns, uniform in [initial_ns, prev * multiplier])
 *	              where prev is the previous delay (initially initial_ns);
 *	              the blog uses multiplier 3.
 * Every delay is at least 1 ns (a full-jitter 0 still yields) and at most
 * max_ns.
 *
 * It stops (keel_retry_done()) when an attempt succeeds (result >= 0), its
 * error is not retryable, max_attempts attempts (the first included) have
 * been made, the next delay would end past max_elapsed_ns after
 * keel_retry_begin() (then it gives up at once with the last error rather
 * than sleep in vain), or, in keel_retry_backoff(), the task's token is
 * cancelled: before or during the sleep, its cause (-ECANCELED or
 * -ETIMEDOUT) ends the retry, never retried. keel_retry_backoff() also
 * gives up at once when the sleep would outlast the token's deadline.
 *
 * Randomness: `random` (64 random bits per call), else a splitmix64
 * generator seeded with `seed`, else (seed 0) from getrandom(2); so tests
 * inject a seed or a function and get the same delays every run.
 */

enum keel_retry_jitter {
	KEEL_RETRY_JITTER_FULL = 0,
	KEEL_RETRY_JITTER_EQUAL = 1,
	KEEL_RETRY_JITTER_DECORRELATED = 2,
	KEEL_RETRY_JITTER_NONE = 3,
};

/* Why a retry stopped (keel_retry_stop_reason()). */
enum keel_retry_stop {
	KEEL_RETRY_RUNNING = 0,	      /* not stopped: try again */
	KEEL_RETRY_SUCCEEDED = 1,     /* an attempt gave a result >= 0 */
	KEEL_RETRY_NOT_RETRYABLE = 2, /* the predicate said no */
	KEEL_RETRY_EXHAUSTED = 3,     /* max_attempts made */
	KEEL_RETRY_DEADLINE = 4,      /* the next delay would pass a deadline */
	KEEL_RETRY_CANCELLED = 5,     /* the task's token was cancelled */
	KEEL_RETRY_ERROR = 6,	      /* a bad policy, or the sleep failed */
};

/* Whether to retry after error `err` (< 0). */
typedef bool (*keel_retry_retryable_fn)(int err, void *arg);

/* 64 uniformly random bits. */
typedef uint64_t (*keel_random_fn)(void *arg);

struct keel_retry_policy {
	uint64_t initial_ns;   /* the first delay's cap (>= 1) */
	uint64_t max_ns;       /* no delay is longer (>= initial_ns) */
	double multiplier;     /* growth per attempt (>= 1.0) */
	uint32_t max_attempts; /* attempts in all, the first included (>= 1) */
	enum keel_retry_jitter jitter;
	uint64_t max_elapsed_ns; /* overall budget from begin (0: none) */
	/* Optional (NULL: keel_retry_transient). Never asked about a token's
	 * own cancellation in keel_retry_backoff(). */
	keel_retry_retryable_fn retryable;
	void *retryable_arg;
	keel_random_fn random; /* optional; else seed */
	void *random_arg;
	uint64_t seed;	     /* 0: seeded from getrandom(2) */
	keel_clock_fn clock; /* optional; for max_elapsed_ns */
	void *clock_arg;
};

/* Caller-owned, in the task's frame; its fields are private. */
struct keel_retry {
	struct keel_routine routine; /* keel_retry_backoff()'s resume point */
	struct keel_retry_policy policy;
	uint64_t start;	   /* clock at keel_retry_begin() */
	uint64_t cap;	   /* the exponential step for the next delay */
	uint64_t prev;	   /* DECORRELATED: the previous delay */
	uint64_t rng;	   /* splitmix64 state */
	uint64_t delay;	   /* the delay being slept */
	uint64_t slept_ns; /* the sum of the delays handed out */
	uint32_t attempts; /* attempts started, the current one included */
	int result;	   /* the last attempt's result, or the stop cause */
	int stop;	   /* enum keel_retry_stop */
};

/*
 * Fill `policy` with defaults: 100 ms initial, 10 s max, multiplier 2, 5
 * attempts, full jitter, no overall deadline, keel_retry_transient.
 * Ownership: writes into the caller's `policy`.
 */
void keel_retry_policy_default(struct keel_retry_policy *policy);

/*
 * The default predicate: the transient errors -EAGAIN, -EINTR, -ETIMEDOUT,
 * -ECONNREFUSED, -ECONNRESET, -ECONNABORTED, -ENETUNREACH, -EHOSTUNREACH.
 * Never -ECANCELED.
 * Ownership: nothing changes hands.
 */
bool keel_retry_transient(int err);

/*
 * Start a retry: the first attempt is next. Copies `policy`. Returns 0,
 * or -EINVAL (NULL, initial_ns 0, max_ns < initial_ns, multiplier < 1,
 * max_attempts 0, an unknown jitter); then `r` (if not NULL) is already
 * stopped with KEEL_RETRY_ERROR and result -EINVAL, so a loop around it
 * makes one attempt and ends.
 * Ownership: `r` is the caller's; the policy is copied into it.
 */
int keel_retry_begin(struct keel_retry *r,
		     const struct keel_retry_policy *policy);

/*
 * Report an attempt's result (not an await: the building block for those
 * who sleep by other means). Returns the delay in ns (> 0) to wait before
 * the next attempt, 0 when the retry is over (keel_retry_result() has the
 * outcome), or -EINVAL (NULL).
 * Ownership: nothing changes hands.
 */
int64_t keel_retry_next(struct keel_retry *r, int result);

/*
 * A nested routine (KEEL_AWAIT_CALL): report an attempt's result and, if
 * it is to be retried, sleep the delay. `result` is read on the first
 * call only (on resume the argument is ignored), so passing keel_res(t)
 * is fine. Afterwards: keel_retry_done(r) says whether to stop; if so,
 * keel_res(t) is keel_retry_result(r), else 0. The sleep is an ordinary
 * keel_sleep(): cancelling the task's token wakes it at once, and the
 * retry ends with the cause.
 * A NULL `r` gives keel_res(t) -EINVAL.
 * Ownership: `r` must stay in the frame until the routine has returned.
 */
int keel_retry_backoff(struct keel_task *t, struct keel_retry *r, int result);

/* Ownership: reads `r`; nothing changes hands. */
static inline bool keel_retry_done(const struct keel_retry *r)
{
	return r->stop != KEEL_RETRY_RUNNING;
}

/*
 * The outcome once done: the successful result, the last error, or the
 * cancellation cause (KEEL_RETRY_CANCELLED).
 * Ownership: reads `r`; nothing changes hands.
 */
static inline int keel_retry_result(const struct keel_retry *r)
{
	return r->result;
}

static inline enum keel_retry_stop
/* Ownership: reads `r`; nothing changes hands. */
keel_retry_stop_reason(const struct keel_retry *r)
{
	return (enum keel_retry_stop)r->stop;
}

/*
 * Attempts made or under way (1 after keel_retry_begin()).
 * Ownership: reads `r`; nothing changes hands.
 */
static inline uint32_t keel_retry_attempts(const struct keel_retry *r)
{
	return r->attempts;
}

#ifdef __cplusplus
}
#endif
#endif
