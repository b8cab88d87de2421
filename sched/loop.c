/* SPDX-License-Identifier: MIT */
/*
 * loop.c: the per-thread loop and its turn.
 *
 * A turn has five steps, always in this order (loop_turn()):
 *   1. run ready tasks, at most `budget` steps, by priority shares;
 *   2. drain cross-loop messages (the multi-thread runtime's; a lone loop
 *      has none);
 *   3. submit queued SQEs and wait, in one io_uring_enter: no wait if tasks
 *      are ready, else until a completion, the nearest timer or the caller's
 *      limit;
 *   4. reap completions, each waking the task that owns it;
 *   5. fire expired timers (which wake sleepers).
 * Woken tasks run in step 1 of the next turn.
 *
 * Fairness (step 1): each priority class first gets its share of the budget
 * (critical 8/15, high 4/15, normal 2/15, low 1/15, at least one step), then
 * what is left goes to the classes in priority order. A task that yields
 * goes to the tail of its class, so a spinning task cannot starve its class,
 * lower classes, or I/O: the turn always reaches step 3.
 */
#include "loop.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static const unsigned class_weight[KEEL_PRIO_CLASSES] = {1, 2, 4, 8};
#define WEIGHT_SUM 15u

struct keel_loop *keel_loop_current(void)
{
	/* The core is the first member of its loop (see core.h). */
	return (struct keel_loop *)keel__current_core;
}

int keel_loop_create(struct keel_loop **out, const struct keel_loop_opts *opts)
{
	struct keel_loop *loop = calloc(1, sizeof(*loop));
	int err;

	if (!loop)
		return -ENOMEM;
	keel__trace_env(); /* KEEL_TRACE=<file> starts the tracer */
	err = keel__core_init(&loop->io.core);
	if (!err)
		err = keel__io_init(&loop->io, opts);
	loop->io.core.hooks.remote_post = keel__remote_post;
	if (err) {
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
	loop->spin_ns = opts ? opts->spin_ns : 0;
	loop->batch_wait_ns = opts ? opts->batch_wait_ns : 0;
	loop->io.core.now = keel__clock_now();
	*out = loop;
	return 0;
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

/*
 * Run at most `limit` steps of one class; returns how many ran.
 *
 * The abort frame: setjmp once per call, not per step, so that a resume
 * costs nothing extra; a panic in any step of the batch longjmps back here,
 * the task is unwound, and the batch goes on. `ran` changes after setjmp
 * and is read after a longjmp, hence volatile; the running task is in the
 * core (c->current), not in a local.
 */
static unsigned run_class(struct keel_loop *loop, unsigned prio, unsigned limit)
{
	struct keel__core *c = &loop->io.core;
	struct keel__taskq *q = &c->runq[prio];
	volatile unsigned ran = 0;

	/* Most classes are empty most turns: no abort frame for them. */
	if (!q->head || !limit)
		return 0;
#ifndef KEEL_NO_ABORT_FRAME /* only to measure what the frame costs */
	if (setjmp(c->abort_env)) {
		struct keel_task *t = c->current;

		__atomic_store_n(&c->current, NULL, __ATOMIC_RELAXED);
		loop->io.timeout_task = NULL;
		keel__task_aborted(c, t); /* traces ABORT, STEP_END 3, EXIT */
		task_exited(loop, t);
	}
	c->abort_armed = true;
#endif
	while (ran < limit) {
		struct keel_task *t = keel__taskq_pop(q);

		if (!t)
			break;
		ran++;
		c->runnable--;
		t->flags &= (uint8_t)~KEEL__T_QUEUED;
		c->ready_budget = KEEL__READY_PER_STEP;
		/* Relaxed stores: the stall watchdog reads these. */
		const struct keel_await_point *resumed_from = t->at;

		__atomic_store_n(&c->current, t, __ATOMIC_RELAXED);
		__atomic_store_n(&c->current_type, t->type, __ATOMIC_RELAXED);
		__atomic_store_n(&c->current_site, resumed_from,
				 __ATOMIC_RELAXED);
		__atomic_store_n(&c->count.steps, c->count.steps + 1,
				 __ATOMIC_RELAXED);
		KEEL__TRACE(c, KEEL_EV_STEP_BEGIN, 0, t->id, 0, 0);
		int r = t->type->step(t);

		__atomic_store_n(&c->current, NULL, __ATOMIC_RELAXED);
		if (__builtin_expect(
			__atomic_load_n(&c->stall_flag, __ATOMIC_RELAXED), 0))
			keel__stall_after_step(loop, t, resumed_from);
		KEEL__TRACE(c, KEEL_EV_STEP_END, 0, t->id,
			    r == KEEL__EXITED ? 2 : 1, 0);
		if (r != KEEL__EXITED)
			KEEL__TRACE(c, KEEL_EV_WAIT, 0, t->id,
				    keel__trace_str_site(c, t->at), 0);
		if (r == KEEL__EXITED)
			task_exited(loop, t);
		/* keel_op_timeout() covers one op of the step that set it. */
		loop->io.timeout_task = NULL;
	}
	c->abort_armed = false;
	c->ready_budget = 0;
	return ran;
}

/* Step 1 of the turn: each class's share, then the rest by priority. */
static void run_ready(struct keel_loop *loop)
{
	unsigned left = loop->budget;

	for (int p = KEEL_PRIO_CLASSES - 1; p >= 0; p--) {
		unsigned share = loop->budget * class_weight[p] / WEIGHT_SUM;

		if (!share)
			share = 1;
		left -=
		    run_class(loop, (unsigned)p, share < left ? share : left);
	}
	for (int p = KEEL_PRIO_CLASSES - 1; p >= 0 && left; p--)
		left -= run_class(loop, (unsigned)p, left);
}

/* Anything that can still make progress: tasks, ops or timers. */
static bool has_work(const struct keel_loop *loop)
{
	const struct keel__core *c = &loop->io.core;

	return c->runnable || c->count.live || c->count.zombies ||
	       loop->io.ledger.inuse || c->timers.n ||
	       (loop->persistent && !loop->stop);
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ __volatile__("yield");
#endif
}

/* Spin until the inbox has work (return 0: do not wait) or spin_ns pass. */
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

static int submit_and_wait(struct keel_loop *loop, int64_t max_wait_ns)
{
	struct keel__io *io = &loop->io;
	struct io_uring *ring = &io->ring;
	uint64_t next = keel__timers_next(loop);
	int64_t wait = max_wait_ns;
	struct io_uring_cqe *cqe;
	int ret;

	if (next != UINT64_MAX) {
		int64_t until =
		    next > io->core.now ? (int64_t)(next - io->core.now) : 0;

		if (wait < 0 || until < wait)
			wait = until;
	}
	/* Tasks ready or a stop requested: do not wait. Nothing in
	 * flight and no timer: waiting would hang. */
	if (io->core.runnable || loop->stop ||
	    (!io->ledger.inuse && wait < 0 && !io->core.external_waits &&
	     !loop->persistent))
		wait = 0;
	/* Opt-in: poll the inbox a while before blocking. Not parked yet,
	 * so posters ring no doorbell; what they post shows up here. */
	if (wait != 0 && loop->spin_ns && !io->ledger.inuse)
		wait = spin_for_work(loop, wait);
	/* About to block: park, then look at the inbox once more (a poster
	 * pushes, then looks at `parked`: one of us sees the other). */
	bool parked = wait != 0;

	if (parked) {
		keel__remote_park(loop, true);
		if (keel__remote_pending(loop))
			wait = 0;
	}
	/* Not waiting, nothing to submit, nothing in flight: the kernel has
	 * nothing for us, so save the system call (a yield loop, or a task
	 * woken from another thread, goes straight on). */
	if (wait == 0 && !io_uring_sq_ready(ring) && !io->ledger.inuse &&
	    !io_uring_cq_ready(ring)) {
		if (parked)
			keel__remote_park(loop, false);
		return 0;
	}
	io->count.sqes += io_uring_sq_ready(ring);
	io->count.enters++;
	if (wait)
		KEEL__TRACE(&io->core, KEEL_EV_LOOP_IDLE, 0, UINT32_MAX, wait,
			    0);
	/* Opt-in batching (batch_wait_ns): busy, with several CQEs per
	 * wake-up lately, wait a little for as many again, so that one enter
	 * serves more requests. At worst a wake is batch_wait_ns late, and
	 * only while the loop is busy. */
	unsigned want = loop->batch_avg / 16;

	if (wait != 0 && want >= 2 && loop->batch_wait_ns) {
		int64_t bw = loop->batch_wait_ns;
		struct __kernel_timespec ts;

		if (wait > 0 && wait < bw)
			bw = wait;
		ts.tv_sec = 0;
		ts.tv_nsec = bw;
		ret = io_uring_submit_and_wait_timeout(
		    ring, &cqe, want > 32 ? 32 : want, &ts, NULL);
		/* Nothing came at all: wait as usual next turn. */
		if (ret == -ETIME && !io_uring_cq_ready(ring))
			loop->batch_avg = 0;
	} else if (wait == 0) {
		ret = io_uring_submit_and_get_events(ring);
	} else if (wait < 0) {
		ret = io_uring_submit_and_wait(ring, 1);
	} else {
		struct __kernel_timespec ts = {
		    .tv_sec = wait / 1000000000,
		    .tv_nsec = wait % 1000000000,
		};

		ret =
		    io_uring_submit_and_wait_timeout(ring, &cqe, 1, &ts, NULL);
	}
	if (parked)
		keel__remote_park(loop, false);
	/* A timeout, a signal or a busy CQ are not errors of the loop. */
	if (ret == -ETIME || ret == -EINTR || ret == -EAGAIN || ret == -EBUSY)
		ret = 0;
	return ret < 0 ? ret : 0;
}

/* Histogram bucket of a wake that reaped `n` CQEs: le 0, 1, 2, 4, ... */
static unsigned wake_bucket(uint64_t n)
{
	unsigned b = n <= 1 ? (unsigned)n
			    : 1u + (64u - (unsigned)__builtin_clzll(n - 1));

	return b < KEEL__WAKE_BUCKETS ? b : KEEL__WAKE_BUCKETS - 1;
}

static int loop_turn(struct keel_loop *loop, int64_t max_wait_ns)
{
	struct keel__core *outer = keel__current_core;
	int err;

	keel__current_core = &loop->io.core;
	keel__trace_turn(&loop->io.core);
	loop->turns++;
	/* 1. Run ready tasks. */
	run_ready(loop);
	/* 2. Drain the inbox: cross-loop messages, wakes, spawns. */
	keel__remote_drain(loop);
	/* 3. Submit and wait. */
	err = submit_and_wait(loop, max_wait_ns);
	loop->io.core.now = keel__clock_now();
	/* 4. Reap completions (first resetting a host's eventfd: completions
	 * after this point signal it again). */
	keel__io_event_fd_drain(&loop->io);
	uint64_t cqes = loop->io.count.cqes;

	keel__io_reap(&loop->io);
	cqes = loop->io.count.cqes - cqes;
	loop->cqes_per_wake[wake_bucket(cqes)]++;
	if (cqes) {
		int avg = (int)loop->batch_avg;

		avg += ((int)(cqes > 64 ? 64 : cqes) * 16 - avg) / 8;
		loop->batch_avg = (unsigned)avg;
	}
	KEEL__TRACE(&loop->io.core, KEEL_EV_LOOP_WAKE, 0, UINT32_MAX, cqes, 0);
	KEEL__TRACE(&loop->io.core, KEEL_EV_INFLIGHT, 0, UINT32_MAX,
		    loop->io.ledger.inuse, 0);
	/* 5. Fire expired timers. */
	keel__timers_expire(loop);
	/* What other threads posted while we waited: drained now, so the
	 * tasks it wakes run at the start of the next turn, not a turn later.
	 */
	keel__remote_drain(loop);
	keel__current_core = outer;
	return err;
}

int keel_loop_run(struct keel_loop *loop)
{
	loop->stop = false;
	while (!loop->stop && has_work(loop)) {
		const struct keel__core *c = &loop->io.core;

		/* Every task waits and nothing in flight can wake one: the
		 * tasks wait on each other (a join cycle). */
		if (!c->runnable && !loop->io.ledger.inuse && !c->timers.n &&
		    !c->external_waits && !loop->persistent)
			return -EDEADLK;
		int err = loop_turn(loop, -1);

		if (err)
			return err;
	}
	return 0;
}

int keel_loop_step(struct keel_loop *loop, int64_t timeout_ns)
{
	int err = loop_turn(loop, timeout_ns);

	if (err)
		return err;
	return has_work(loop) ? 1 : 0;
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
	uint64_t next = keel__timers_next(loop);

	if (loop->io.core.runnable || io_uring_sq_ready(&loop->io.ring))
		return 0;
	if (next == UINT64_MAX)
		return -1;
	uint64_t now = keel__clock_now();

	return next > now ? (int64_t)(next - now) : 0;
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
	out->timers_fired = c->timers.fired;
	out->tasks_live = c->count.live;
	out->zombies = c->count.zombies;
	out->ops_inflight = io->ledger.inuse;
	out->timers_armed = c->timers.n;
	out->aborted = c->aborted;
	out->fault_recoveries = c->fault_recoveries;
	out->stalls = __atomic_load_n(&loop->watch.stalls, __ATOMIC_RELAXED);
	out->zc_sends = io->count.zc_sends;
	out->zc_copied = io->count.zc_copied;
	out->multishot_rearms = io->count.multishot_rearms;
	out->enobufs = io->count.enobufs;
	out->accept_backoffs = io->count.accept_backoffs;
	out->chunks_lent = io->count.bufs_lent;
	out->bufs_in_use = keel__bufrings_in_use(io);
}

/*
 * Teardown: cancel every op and wait (bounded) for the kernel to return
 * them, so no frame is freed while the kernel may still write into it.
 */
static void drain_ops(struct keel_loop *loop)
{
	struct keel__io *io = &loop->io;

	io->closing = true; /* streams close instead of ending */
	keel__io_cancel_all(io);
	for (int i = 0; i < 100 && io->ledger.inuse; i++) {
		struct __kernel_timespec ts = {.tv_nsec = 10 * 1000 * 1000};
		struct io_uring_cqe *cqe;

		io_uring_submit_and_wait_timeout(&io->ring, &cqe, 1, &ts, NULL);
		keel__io_reap(io);
		keel__io_cancel_all(io);
	}
}

void keel_loop_destroy(struct keel_loop *loop)
{
	struct keel__core *c = &loop->io.core;
	struct keel__core *outer = keel__current_core;

	if (!loop)
		return;
	keel__current_core = c;
	keel__watchdog_remove(loop);
	/* Items posted by other threads hold references (a mailbox waiting
	 * to be served, a spawn request): run them, so nothing is left. */
	keel__remote_drain(loop);
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
	}
	keel__faults_fini(loop);
	keel__timers_fini(&c->timers);
	keel__io_fini(&loop->io);
	keel__core_fini(c);
	keel__current_core = outer;
	free(loop);
}
