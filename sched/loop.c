/* SPDX-License-Identifier: MIT */
/*
 * loop.c: the per-thread loop and its turn.
 *
 * A turn is a list of steps, always in this order (loop_turn()):
 *   1. run ready tasks, at most `budget` steps, by priority shares;
 *   2. submit queued SQEs and wait, in one io_uring_enter, as long as
 *      turn_timeout() says: not at all if tasks are ready or the inbox has
 *      items, else until a completion, a doorbell, the nearest timer or the
 *      caller's limit;
 *   3. reap completions, each waking the task that owns it;
 *   4. fire expired timers (which wake sleepers);
 *   5. drain the inbox: what other threads posted (sched/remote.c).
 * Everything that wakes a task happens after the wait, and woken tasks run
 * in step 1 of the next turn. The inbox is drained once, last: what other
 * threads post while the loop waits runs in the very next turn; what they
 * post while tasks run is seen when the loop parks (step 2), which then
 * does not block, and is drained in step 5 of the same turn.
 *
 * Two questions have one answer each, for the turn, keel_loop_run(),
 * keel_loop_step() and embedders alike: loop_alive() ("is there work")
 * and loop_timeout() ("how long may the loop sleep").
 *
 * Fairness (step 1): each priority class first gets its share of the budget
 * (critical 8/15, high 4/15, normal 2/15, low 1/15, at least one step), then
 * what is left goes to the classes in priority order. A task that yields
 * goes to the tail of its class, so a spinning task cannot starve its class,
 * lower classes, or I/O: the turn always reaches step 2.
 */
#include "loop.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static const unsigned class_weight[KEEL_PRIO_CLASSES] = {1, 2, 4, 8};
#define WEIGHT_SUM 15u

/* Completion batching (see batching()): CQEs per wake-up, on average,
 * from which the loop waits for a batch; the default bound of that wait
 * (measured: see keel_loop_create(3)). */
#define BATCH_MIN_CQES	      4u
#define BATCH_WAIT_DEFAULT_NS 20000u

struct keel_loop *keel_loop_current(void)
{
	/* The core is the first member of its loop (see core.h). */
	return (struct keel_loop *)keel__current_core;
}

/* The shutdown grace has passed with holds left: stop everything. */
static void grace_passed(struct keel_loop *loop, struct keel_timer *timer,
			 void *arg)
{
	keel_token_cancel(keel_loop_token(loop));
	(void)timer;
	(void)arg;
}

int keel_loop_create(struct keel_loop **out, const struct keel_loop_opts *opts)
{
	return keel__loop_create_on(out, opts, NULL);
}

int keel__loop_create_on(struct keel_loop **out,
			 const struct keel_loop_opts *opts,
			 struct keel__backend *backend)
{
	struct keel_loop *loop = calloc(1, sizeof(*loop));
	int err;

	if (!loop)
		return -ENOMEM;
	keel__trace_env(); /* KEEL_TRACE=<file> starts the tracer */
	err = keel__core_init(&loop->io.core);
	if (!err)
		err = keel__io_init(&loop->io, opts, backend);
	if (!err)
		err = keel__inject_env(&loop->io); /* KEEL_FAULTS */
	loop->io.core.hooks.remote_post = keel__remote_post;
	if (!err)
		err = keel_token_new(loop, NULL, &loop->stop_tok);
	if (err) {
		keel_token_release(loop->stop_tok);
		keel__io_fini(&loop->io);
		keel__core_fini(&loop->io.core);
		free(loop);
		return err;
	}
	/* Attach to a running trace now, so that spawns before the first
	 * turn are recorded; and let the stall watchdog see the loop. */
	keel__trace_turn(&loop->io.core);
	keel__watchdog_add(loop);
	loop->budget = opts && opts->budget ? opts->budget : 256;
	for (int p = 0; p < KEEL_PRIO_CLASSES; p++) {
		loop->share[p] = loop->budget * class_weight[p] / WEIGHT_SUM;
		if (!loop->share[p])
			loop->share[p] = 1;
	}
	loop->spin_ns = opts ? opts->spin_ns : 0;
	loop->batch_wait_ns =
	    !opts || !opts->batch_wait_ns		 ? BATCH_WAIT_DEFAULT_NS
	    : opts->batch_wait_ns == KEEL_BATCH_WAIT_OFF ? 0
							 : opts->batch_wait_ns;
	loop->io.core.now = keel__clock_now();
	keel_timer_init(&loop->grace, grace_passed, NULL);
	*out = loop;
	return 0;
}

/* ---- the two-phase stop --------------------------------------------- */

struct keel_token *keel_loop_stop_token(struct keel_loop *loop)
{
	return loop->stop_tok;
}

void keel_loop_hold(struct keel_loop *loop)
{
	loop->holds++;
}

void keel_loop_release(struct keel_loop *loop)
{
	if (loop->holds && --loop->holds == 0 && loop->stopping) {
		keel_timer_cancel(loop, &loop->grace);
		keel_token_cancel(keel_loop_token(loop));
	}
}

void keel__loop_begin_stop(struct keel_loop *loop, uint64_t grace_ns)
{
	if (loop->stopping)
		return;
	loop->stopping = true;
	keel_token_cancel(loop->stop_tok);
	/* What holds the loop may have let go from the stop token's own
	 * callbacks: look at the count only now. */
	if (!loop->holds)
		keel_token_cancel(keel_loop_token(loop));
	else if (grace_ns != UINT64_MAX)
		keel_timer_arm_after(loop, &loop->grace, grace_ns);
}

/* A step returned KEEL__EXITED: release the task, cancel what it left. */
static void task_exited(struct keel_loop *loop, struct keel_task *t)
{
	bool had_ops = t->inflight != 0;

	/* Counts a zombie, or frees the frame if nothing holds it. */
	keel__task_after_exit(t);
	/* Ops left behind are cancelled; the frame goes after their CQEs
	 * (a cancelled sleep completes at once and may free it here). */
	if (had_ops)
		keel__io_cancel_task(&loop->io, t);
}

#ifdef KEEL_NO_TRACE
#define STEP_TRACED(c) 0u
#else
#define STEP_TRACED(c) (uintptr_t)(c)->trace
#endif

/*
 * A step returned `r` with the watchdog's stall flag set, or while
 * tracing: the stall's report, then the step's end and its wait if it did
 * not exit. (Not inlined: the step loop tests both at once and calls this.)
 * The site the step resumed from is still the core's current_site: the
 * step loop alone sets it, and keeps it in no register of its own.
 */
static __attribute__((noinline)) void step_end_slow(struct keel_loop *loop,
						    struct keel_task *t, int r)
{
	struct keel__core *c = &loop->io.core;

	if (__atomic_load_n(&c->stall_flag, __ATOMIC_RELAXED))
		keel__stall_after_step(
		    loop, t,
		    __atomic_load_n(&c->current_site, __ATOMIC_RELAXED));
	KEEL__TRACE(c, KEEL_EV_STEP_END, 0, t->id, r == KEEL__EXITED ? 2 : 1,
		    0);
	if (r != KEEL__EXITED)
		KEEL__TRACE(c, KEEL_EV_WAIT, 0, t->id,
			    keel__trace_str_site(c, t->at), 0);
}

/*
 * Run at most `limit` steps of the tasks queued in class `prio`. Inline in
 * run_class(), which has no setjmp of its own (run_turns() has it): one
 * call and one set of register saves per class run, not two.
 */
static inline __attribute__((always_inline)) void
run_steps(struct keel_loop *loop, unsigned prio, unsigned limit)
{
	struct keel__core *c = &loop->io.core;
	struct keel__taskq *q = &c->runq[prio];
	/* The loop is the counter's one writer: no load per step. */
	uint64_t steps = c->count.steps;

	for (unsigned ran = 0; ran < limit; ran++) {
		struct keel_task *t = keel__taskq_pop(q);

		if (!t)
			break;
		c->runnable--;
		t->flags &= (uint8_t)~KEEL__T_QUEUED;
		c->ready_budget = KEEL__READY_PER_STEP;
		/* Relaxed stores: the stall watchdog reads these. (The type in
		 * a local: a relaxed store makes the compiler load it again.)
		 */
		const struct keel_task_type *type = t->type;

		__atomic_store_n(&c->current, t, __ATOMIC_RELAXED);
		__atomic_store_n(&c->current_type, type, __ATOMIC_RELAXED);
		__atomic_store_n(&c->current_site, t->at, __ATOMIC_RELAXED);
		__atomic_store_n(&c->count.steps, ++steps, __ATOMIC_RELAXED);
		KEEL__TRACE(c, KEEL_EV_STEP_BEGIN, 0, t->id, 0, 0);
		int r = type->step(t);

		__atomic_store_n(&c->current, NULL, __ATOMIC_RELAXED);
		/* One test for a stall and both trace events. */
		if (__builtin_expect(
			__atomic_load_n(&c->stall_flag, __ATOMIC_RELAXED) |
			    STEP_TRACED(c),
			0))
			step_end_slow(loop, t, r);
		if (r == KEEL__EXITED)
			task_exited(loop, t);
		/* keel_op_timeout() covers one op of the step that set it. */
		loop->io.timeout_task = NULL;
		c->op_slow.why.timeout = 0;
	}
}

/*
 * Run at most `limit` steps of one class, in `phase` 0 (shares) or 1 (the
 * rest) of run_ready(); returns how many ran (counted from the step
 * counter, which a panic's jump does not lose). The abort frame that
 * catches a panic in one of them is run_turns()'s, which then resumes the
 * batch where this call left it (run_ready_resume()). Not inlined: one
 * copy of the step loop, not one per call site of the unrolled
 * run_ready_from().
 */
static __attribute__((noinline)) unsigned
run_class(struct keel_loop *loop, unsigned prio, unsigned limit, unsigned phase)
{
	struct keel__core *c = &loop->io.core;
	const uint64_t steps0 = c->count.steps;

	/* The budget is spent (an empty class, run_ready() does not call
	 * for). */
	if (!limit)
		return 0;
	loop->resume_class = phase * KEEL_PRIO_CLASSES + prio;
	loop->resume_end = steps0 + limit;
	c->abort_armed = true;
	run_steps(loop, prio, limit);
	c->abort_armed = false;
	c->ready_budget = 0;
	return (unsigned)(c->count.steps - steps0);
}

/*
 * Step 1 of the turn: each class's share, then the rest by priority; from
 * class `p` of `phase` on, with `left` of the budget (run_ready() starts
 * at the top). An empty class is skipped here, not in run_class(): four
 * tests of a head.
 */
static inline __attribute__((always_inline)) void
run_ready_from(struct keel_loop *loop, unsigned left, unsigned phase, int p)
{
	const struct keel__core *c = &loop->io.core;

	if (phase == 0) {
		/* Unrolled: four tests of a head, not a loop's counter and
		 * index around each (some 20 instructions a turn). */
#pragma GCC unroll 4
		for (; p >= 0; p--) {
			unsigned share = loop->share[p];

			if (c->runq[p].head)
				left -=
				    run_class(loop, (unsigned)p,
					      share < left ? share : left, 0);
		}
		p = KEEL_PRIO_CLASSES - 1;
	}
	for (; p >= 0 && left && c->runnable; p--)
		if (c->runq[p].head)
			left -= run_class(loop, (unsigned)p, left, 1);
}

static void run_ready(struct keel_loop *loop)
{
	loop->turn_steps0 = loop->io.core.count.steps;
	run_ready_from(loop, loop->budget, 0, KEEL_PRIO_CLASSES - 1);
}

#ifndef KEEL_NO_ABORT_FRAME
/*
 * After a panic in a step of run_class(): the rest of that call's steps,
 * then the rest of run_ready(), with what is left of the turn's budget: the
 * batch goes on as if the task had returned.
 */
static __attribute__((noinline, cold)) void
run_ready_resume(struct keel_loop *loop)
{
	const struct keel__core *c = &loop->io.core;
	unsigned phase = loop->resume_class / KEEL_PRIO_CLASSES;
	int p = (int)(loop->resume_class % KEEL_PRIO_CLASSES);

	if (loop->resume_end > c->count.steps && c->runq[p].head)
		run_class(loop, (unsigned)p,
			  (unsigned)(loop->resume_end - c->count.steps), phase);
	run_ready_from(
	    loop, loop->budget - (unsigned)(c->count.steps - loop->turn_steps0),
	    phase, p - 1);
}
#endif

/*
 * Whether anything outside this loop's ready tasks can still wake it: an
 * op in flight, an armed timer, or another thread (a task waits on one, or
 * a runtime loop waits for spawns); or, while tasks live, a hibernated
 * socket's poll (which alone does not keep the loop going).
 */
static bool loop_wakeable(const struct keel_loop *loop)
{
	return loop->io.ledger.inuse || loop->io.core.timers.n ||
	       loop->io.core.external_waits || loop->persistent ||
	       (loop->io.hib_live && keel__tasks_live(&loop->io.core));
}

/*
 * "Is there work": tasks (ready, waiting or zombie), ops in flight, armed
 * timers, items in the inbox, or a runtime loop not told to stop. The one
 * answer for keel_loop_run() and keel_loop_step().
 */
static bool loop_alive(const struct keel_loop *loop)
{
	const struct keel__core *c = &loop->io.core;

	return c->runnable || keel__tasks_live(c) || c->count.zombies ||
	       loop->io.ledger.inuse || loop->io.core.timers.n ||
	       (loop->persistent && !loop->stop) || keel__remote_pending(loop);
}

/*
 * "How long may the loop sleep", as of `now`: 0 when it has work at once
 * (ready tasks, items in its inbox, a stop asked for), else until the
 * nearest timer, or -1 when only a completion or a doorbell can wake it.
 * The one answer for the turn (step 2) and for embedders
 * (keel_loop_timeout_ns()).
 */
/* inline: on the turn's path; a call there costs a dozen instructions. */
static inline int64_t loop_timeout(const struct keel_loop *loop, uint64_t now)
{
	uint64_t next;

	if (loop->io.core.runnable || loop->stop || keel__remote_pending(loop))
		return 0;
	next = keel__timers_next(loop);
	if (next == UINT64_MAX)
		return -1;
	return next > now ? (int64_t)(next - now) : 0;
}

/*
 * The wait of this turn's step 2: loop_timeout(), capped by the caller's
 * limit (keel_loop_step()'s timeout_ns; negative: none); 0 when nothing
 * could ever end an unbounded wait (no op, no timer, no other thread).
 */
static int64_t turn_timeout(const struct keel_loop *loop, int64_t max_wait_ns)
{
	int64_t wait = loop_timeout(loop, loop->io.core.now);

	if (max_wait_ns >= 0 && (wait < 0 || max_wait_ns < wait))
		wait = max_wait_ns;
	if (wait < 0 && !loop_wakeable(loop))
		wait = 0;
	return wait;
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ __volatile__("yield");
#endif
}

/*
 * Opt-in (spin_ns): poll the inbox a while before blocking. Not parked
 * yet, so posters ring no doorbell; what they post shows up here. Returns
 * 0 (do not wait) if something came, else `wait`.
 */
static int64_t spin_for_work(struct keel_loop *loop, int64_t wait)
{
	uint64_t until = keel__clock_now() + loop->spin_ns;

	if (io_uring_sq_ready(&loop->io.ring))
		keel__io_submit(&loop->io);
	do {
		for (int i = 0; i < 64; i++) {
			if (keel__remote_pending(loop))
				return 0;
			cpu_relax();
		}
	} while (keel__clock_now() < until);
	return wait;
}

/*
 * Completion batching (keel_loop_opts.batch_wait_ns), on by default: when
 * recent wake-ups each brought several CQEs (BATCH_MIN_CQES on average),
 * the loop is busy enough that waiting a little for as many again costs
 * the first one at most `batch_wait_ns` and saves enters: one enter then
 * serves more requests. A loop with one CQE per wake-up (a lone
 * connection, a ping-pong) never waits for more.
 *
 * With the kernel's min-wait (Linux 6.12) the kernel does the rest: up to
 * the bound it waits for the batch, then returns with whatever came, or,
 * if nothing did, waits on for the first CQE in the same enter. Without it
 * (older kernels, the epoll and simulated backends, fault injection), the
 * wait for the batch times out after the bound with what came; if nothing
 * came the average is reset, so the next turn waits as usual.
 *
 * The batch to wait for: what recent wake-ups brought, but at most a
 * third of the ops in flight (a connection has its receive, and often a
 * send, in flight), or half the open receive streams if that is more (a
 * stream is one connection however many sends it has in flight: at 64
 * echo connections that let the batch grow from about 25 to 32, and
 * enters per request fell from 0.056-0.060 to 0.037-0.054). Several CQEs
 * per wake-up do not prove the loop busy: a few connections in a closed
 * loop (each client waits for its answer) bring their CQEs close
 * together, and a wait for as many again holds the first answers until
 * the last client has sent: every client slows down (measured: 4
 * connections lost 10-20 % of their requests a second). Waiting for a
 * small share of what is in flight leaves the rest to come at its own
 * pace. 0: no batch worth waiting for.
 */
static unsigned batch_want(const struct keel_loop *loop)
{
	/* Parked streams are idle connections: they send nothing. */
	unsigned want = loop->batch_avg / 16,
		 cap = (loop->io.ledger.inuse - loop->io.parked_polls) / 3,
		 conns = (loop->io.recv_streams - loop->io.parked_polls) / 2;

	if (cap < conns)
		cap = conns;

	if (want > cap)
		want = cap;
	if (want > 32)
		want = 32;
	return want >= BATCH_MIN_CQES ? want : 0;
}

/* The average's own test first: the caps only lower the batch, so a loop
 * whose wake-ups bring few CQEs (at one op in flight, every turn) is told
 * by one compare. */
static bool batching(const struct keel_loop *loop, int64_t wait)
{
	return loop->batch_avg >= BATCH_MIN_CQES * 16 && wait != 0 &&
	       loop->batch_wait_ns && batch_want(loop);
}

/*
 * Wait for the batch, counted in receives: the SQEs this enter submits
 * (mostly sends, which complete inside the enter) add their own CQEs, and
 * a batch counted in CQEs would then be half sends (at 64 echo
 * connections, 33 CQEs per wake-up were 16 requests). But never for more
 * than all the ops in flight: a batch of NOPs all completing at once must
 * not then wait out the bound.
 */
static int enter_batched(struct keel_loop *loop, int64_t wait)
{
	unsigned want = batch_want(loop) + io_uring_sq_ready(&loop->io.ring),
		 most = loop->io.ledger.inuse - loop->io.parked_polls;
	int64_t bw = loop->batch_wait_ns;
	int ret;

	if (want > most)
		want = most;
	if (wait > 0 && wait < bw)
		bw = wait;
	if (keel__io_has_min_wait(&loop->io))
		ret = keel__io_enter_min_wait(&loop->io, want, bw, wait);
	else
		ret = keel__io_enter(&loop->io, want, bw);
	if (io_uring_cq_ready(&loop->io.ring) < want)
		loop->batch_short++;
	/* Nothing came at all (without min-wait, or a timer was due within
	 * the bound): wait as usual next turn. */
	if (ret == -ETIME && !io_uring_cq_ready(&loop->io.ring))
		loop->batch_avg = 0;
	return ret;
}

/* The one place that folds the enter's result: a timeout, a signal or a
 * busy CQ are not errors of the loop. */
static int enter_result(int ret)
{
	/* The common case first: one test, not five. */
	if (__builtin_expect(ret >= 0, 1))
		return 0;
	if (ret == -ETIME || ret == -EINTR || ret == -EAGAIN || ret == -EBUSY)
		return 0;
	return ret < 0 ? ret : 0;
}

/*
 * Whether the loop's wait timer (keel__io_wait_timer()) ends a wait of
 * `wait` ns from the turn's clock, arming it if it has to: on the kernel's
 * own ring without SQPOLL (where keel__io_enter_wait() is) and a real
 * clock. Backends, fault injection and the simulated clock keep a timeout
 * per enter.
 */
static bool wait_timer_covers(struct keel_loop *loop, int64_t wait)
{
	struct keel__io *io = &loop->io;

	if (io->enter_slow || (io->setup_flags & IORING_SETUP_SQPOLL) ||
	    keel__virtual_clock)
		return false;
	return keel__io_wait_timer(io, io->core.now + (uint64_t)wait);
}

/*
 * One io_uring_enter: submit the queued SQEs, wait at most `wait` ns
 * (`own`: a wait the loop's timers set, not its caller's bound, which
 * keeps a timeout of its own enter).
 * Not waiting, nothing to submit, nothing in flight: the kernel has
 * nothing for us, so save the system call (a yield loop, or a task woken
 * from another thread, goes straight on).
 */
static int enter(struct keel_loop *loop, int64_t wait, bool own)
{
	struct keel__io *io = &loop->io;
	struct io_uring *ring = &io->ring;
	int ret;

	if (wait == 0 && !io_uring_sq_ready(ring) && !io->ledger.inuse &&
	    !io_uring_cq_ready(ring))
		return 0;
	io->count.sqes += io_uring_sq_ready(ring);
	io->count.enters++;
	if (wait)
		KEEL__TRACE(&io->core, KEEL_EV_LOOP_IDLE, 0, UINT32_MAX, wait,
			    0);
	if (batching(loop, wait)) {
		loop->batch_waits++;
		ret = enter_batched(loop, wait);
	} else if (wait > 0 && own && wait_timer_covers(loop, wait))
		ret = keel__io_enter_wait(io, 1);
	else
		ret = keel__io_enter(io, 1, wait);
	return enter_result(ret);
}

/*
 * Step 2: submit and wait, in one io_uring_enter. About to block, the loop
 * parks (other threads' posts then ring its doorbell) and unparks after;
 * parking finds what was posted before it, and then the loop does not
 * block.
 */
static int submit_and_wait(struct keel_loop *loop, int64_t wait, bool own)
{
	bool parked;
	int err;

	if (wait != 0 && loop->spin_ns && !loop->io.ledger.inuse)
		wait = spin_for_work(loop, wait);
	parked = wait != 0;
	if (parked && !keel__remote_park(loop))
		wait = 0;
	err = enter(loop, wait, own);
	if (parked)
		keel__remote_unpark(loop);
	return err;
}

/* Histogram bucket of a wake that reaped `n` CQEs: le 0, 1, 2, 4, ... */
static unsigned wake_bucket(uint64_t n)
{
	unsigned b = n <= 1 ? (unsigned)n
			    : 1u + (64u - (unsigned)__builtin_clzll(n - 1));

	return b < KEEL__WAKE_BUCKETS ? b : KEEL__WAKE_BUCKETS - 1;
}

/* Statistics of a wake that reaped `cqes`: the histogram, the average that
 * batching goes by, and the trace's wake and in-flight samples. */
static void count_wake(struct keel_loop *loop, uint64_t cqes)
{
	loop->cqes_per_wake[wake_bucket(cqes)]++;
	if (cqes) {
		int avg = (int)loop->batch_avg;

		avg += ((int)(cqes > 64 ? 64 : cqes) * 16 - avg) / 8;
		loop->batch_avg = (unsigned)avg;
	}
	KEEL__TRACE(&loop->io.core, KEEL_EV_LOOP_WAKE, 0, UINT32_MAX, cqes, 0);
	KEEL__TRACE(&loop->io.core, KEEL_EV_INFLIGHT, 0, UINT32_MAX,
		    loop->io.ledger.inuse, 0);
}

/*
 * Step 3: the clock moves on; reap completions, each waking its task
 * (first resetting a host's eventfd: completions after this point signal
 * it again). Returns how many were reaped.
 */
static uint64_t reap_completions(struct keel_loop *loop)
{
	uint64_t cqes = loop->io.count.cqes;

	loop->io.core.now = keel__clock_now();
	if (loop->io.event_fd >= 0)
		keel__io_event_fd_drain(&loop->io);
	keel__io_reap(&loop->io);
	return loop->io.count.cqes - cqes;
}

/* Before the steps: count the turn; the tracer's turn marker (which also
 * attaches the loop to a trace started since). */
static void turn_begin(struct keel_loop *loop)
{
	keel__trace_turn(&loop->io.core);
	loop->turns++;
}

/* Steps 2 to 5 of a turn: what follows the steps of its ready tasks. */
static int turn_io(struct keel_loop *loop, int64_t max_wait_ns)
{
	int err;

	/* 2. Submit and wait (as long as turn_timeout() says). */
	err = submit_and_wait(loop, turn_timeout(loop, max_wait_ns),
			      max_wait_ns < 0);
	/* 3. Reap completions, then count what this wake brought. */
	count_wake(loop, reap_completions(loop));
	/* 4. Fire expired timers (which wake sleepers). The tests here save
	 * the calls in the turns that have none (most, when busy; a turn
	 * before the nearest deadline, while the idle sweep's timer waits:
	 * 142 instructions a request of echo at one connection). */
	if (loop->io.core.timers.n &&
	    (loop->io.core.now >= loop->io.core.timers.due_floor ||
	     loop->io.core.timers.nfresh))
		keel__timers_expire(loop);
	/* 5. Drain the inbox: cross-loop messages, wakes, spawns. */
	if (keel__remote_pending(loop))
		keel__remote_drain(loop);
	return err;
}

/*
 * One turn: the list of its steps (see the top of this file). Not inlined
 * into run_turns(): after its setjmp every local of that function lives in
 * memory (a resume clobbers every register).
 */
static __attribute__((noinline)) int loop_turn(struct keel_loop *loop,
					       int64_t max_wait_ns)
{
	turn_begin(loop);
	/* 1. Run ready tasks, at most `budget` steps. */
	run_ready(loop);
	return turn_io(loop, max_wait_ns);
}

/*
 * Turns, with the loop current on this thread: one (`once`, for
 * keel_loop_step()), or while the loop has work (keel_loop_run()).
 *
 * The abort frame is set here, once per call, not per turn or per batch
 * of steps: a function that calls setjmp saves and restores every
 * callee-saved register and keeps its locals in memory, some 40
 * instructions that a turn of one step paid every time. A panic in a step
 * (run_class() arms the frame only around steps) jumps back here: the task
 * is unwound, the batch goes on with what is left of it, then the turn.
 */
static __attribute__((noinline)) int run_turns(struct keel_loop *loop,
					       int64_t max_wait_ns, bool once)
{
	struct keel__core *c = &loop->io.core;
	struct keel__core *outer = keel__current_core;
	int err = 0;

	keel__current_core = c;
#ifndef KEEL_NO_ABORT_FRAME /* only to measure what the frame costs */
	if (KEEL__ABORT_SET(c->abort_env)) {
		struct keel_task *t = c->current;

		__atomic_store_n(&c->current, NULL, __ATOMIC_RELAXED);
		loop->io.timeout_task = NULL;
		c->op_slow.why.timeout = 0;
		c->abort_armed = false;
		c->ready_budget = 0;
		keel__task_aborted(c, t); /* traces ABORT, STEP_END 3, EXIT */
		task_exited(loop, t);
		run_ready_resume(loop);
		err = turn_io(loop, max_wait_ns);
		if (err || once)
			goto out;
	}
#endif
	if (once) {
		err = loop_turn(loop, max_wait_ns);
		goto out;
	}
	while (!loop->stop && loop_alive(loop)) {
		/* Every task waits and nothing can wake one: the tasks wait
		 * on each other (a join cycle). */
		if (!c->runnable && !loop_wakeable(loop) &&
		    !keel__remote_pending(loop)) {
			err = -EDEADLK;
			break;
		}
		err = loop_turn(loop, max_wait_ns);
		if (err)
			break;
	}
out:
	keel__current_core = outer;
	return err;
}

int keel_loop_run(struct keel_loop *loop)
{
	loop->stop = false;
	keel__remote_unpark(loop); /* a host's last step left it parked */
	return run_turns(loop, -1, false);
}

/*
 * A host sleeps between steps (on keel_loop_fd(), as long as
 * keel_loop_timeout_ns() says), so the loop stays parked from the end of
 * one step to the start of the next: other threads' posts then ring its
 * doorbell, whose CQE makes the fd readable. What was posted before the
 * park, keel_loop_timeout_ns() sees (it returns 0).
 */
int keel_loop_step(struct keel_loop *loop, int64_t timeout_ns)
{
	int err;

	keel__remote_unpark(loop);
	err = run_turns(loop, timeout_ns, true);
	keel__remote_park(loop);
	if (err)
		return err;
	return loop_alive(loop) ? 1 : 0;
}

void keel_loop_stop(struct keel_loop *loop)
{
	loop->stop = true;
}

int keel_loop_fd(struct keel_loop *loop)
{
	return keel__io_event_fd(&loop->io);
}

int64_t keel_loop_timeout_ns(const struct keel_loop *loop)
{
	/* SQEs queued between turns (a re-arm, a timer's cancel) reach the
	 * kernel only in a step's enter, and so do cancels that found the SQ
	 * full: the host must step first. */
	if (io_uring_sq_ready(&loop->io.ring) || loop->io.ledger.nlater)
		return 0;
	return loop_timeout(loop, keel__clock_now());
}

void keel_loop_stats(const struct keel_loop *loop, struct keel_loop_stats *out)
{
	const struct keel__io *io = &loop->io;
	const struct keel__core *c = &io->core;

	memset(out, 0, sizeof(*out));
	out->turns = loop->turns;
	out->steps = c->count.steps;
	out->enters = io->count.enters;
	out->sqes = io->count.sqes;
	out->cqes = io->count.cqes;
	out->stale_cqes = io->count.stale_cqes;
	out->sq_full = io->count.sq_full;
	out->cq_overflows = io->count.cq_overflows;
	out->spawned = c->count.spawned;
	out->exited = c->count.exited;
	out->timers_fired = loop->io.core.timers.fired;
	out->tasks_live = keel__tasks_live(c);
	out->zombies = c->count.zombies;
	out->ops_inflight = io->ledger.inuse;
	out->timers_armed = loop->io.core.timers.n;
	out->aborted = c->aborted;
	out->fault_recoveries = c->fault_recoveries;
	out->stalls = __atomic_load_n(&loop->watch.stalls, __ATOMIC_RELAXED);
	out->deadlocks = c->deadlocks;
	out->zc_sends = io->count.zc_sends;
	out->zc_copied = io->count.zc_copied;
	out->multishot_rearms = io->count.multishot_rearms;
	out->enobufs = io->count.enobufs;
	out->idle_polls = io->count.idle_polls;
	out->accept_backoffs = io->count.accept_backoffs;
	out->chunks_lent = io->count.bufs_lent;
	out->bufs_in_use = keel__bufrings_in_use(io);
	out->faults_injected = io->count.faults_injected;
	out->frames_live = c->alloc.live;
	out->ops_refused = io->count.ops_refused;
	out->batch_waits = loop->batch_waits;
	out->batch_short = loop->batch_short;
	out->frame_bytes = c->alloc.slab_bytes + c->alloc.large_bytes;
	out->hibernated = io->hib_live;
}

/*
 * Teardown: cancel every op and wait (bounded) for the kernel to return
 * them, so no frame is freed while the kernel may still write into it.
 */
static void drain_ops(struct keel_loop *loop)
{
	struct keel__io *io = &loop->io;

	/* Helper requests queued with nothing in flight (a detached close:
	 * the loop would not enter for them) go out first. */
	if (io_uring_sq_ready(&io->ring))
		keel__io_submit(io);
	keel__io_cancel_all(io);
	for (int i = 0; i < 100 && io->ledger.inuse; i++) {
		keel__io_enter(io, 1, 10 * 1000 * 1000);
		keel__io_reap(io);
		keel__io_cancel_all(io);
	}
}

void keel_loop_destroy(struct keel_loop *loop)
{
	struct keel__core *c, *outer = keel__current_core;

	if (!loop)
		return;
	c = &loop->io.core;
	keel__current_core = c;
	keel__watchdog_remove(loop);
	/* Items posted by other threads hold references (a mailbox waiting
	 * to be served, a spawn request): run them, so nothing is left. */
	keel__remote_drain(loop);
	/* From here, streams close instead of ending, and what the cancels
	 * wake closes at once (keel_close_detached()). */
	loop->io.closing = true;
	keel__blocking_drain(loop);
	drain_ops(loop);
	keel__trace_detach(c);
	/* Tasks that never exited still get their cleanups run. */
	for (uint32_t i = 0; i < c->nslots; i++) {
		struct keel_task *t = c->slots[i].task;

		if (!t)
			continue;
		if (!(t->flags & KEEL__T_EXITED))
			keel__task_run_defers(t);
		/* An op the kernel never returned: leak its frame rather
		 * than free memory the kernel may still write into. */
		if (!t->inflight)
			keel__task_free(t);
		else
			c->alloc.leaked = true;
	}
	keel__faults_fini(loop);
	keel__inject_fini(&loop->io); /* its timer: before the timers go */
	if (keel_timer_armed(&loop->grace))
		keel_timer_cancel(loop, &loop->grace);
	keel_token_release(loop->stop_tok);
	keel__timers_fini(&loop->io.core.timers);
	keel__io_fini(&loop->io);
	keel__core_fini(c);
	keel__current_core = outer;
	free(loop);
}
