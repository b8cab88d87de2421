/* SPDX-License-Identifier: MIT */
/*
 * keel-micro: keel's per-operation microbenchmarks, printed in the format of
 * the peer harness (bench/peers/micro in the shared folder) so that keel is
 * one more column next to tokio, Go and raw liburing:
 *
 *   RESULT name=<bench> ns_per_op=<median> ops=<ops per run>
 *   INFO name=<bench> runs_ns_per_op=<r1,...,r5>
 *   INFO name=<bench> turns_per_op=... enters_per_op=... steps_per_op=...
 *
 * The method is the peers' (c_micro.c): each benchmark is calibrated until
 * one run takes >= 0.3 s, then runs 5 times; the median is reported. One run
 * is: spawn a driver task on the benchmark's loop, keel_loop_run() until the
 * loop is idle again; wall (and process CPU) time is taken around that. The
 * loop is created once per benchmark and reused by its runs, like a server's.
 * The thread is pinned to CPU 0, as the peers' single-thread columns are.
 *
 * Benchmarks (names shared with the peers where the operation matches):
 *   spawn_join        a task spawns 1000 empty joinable tasks, then joins
 *                     them all; per task
 *   spawn_yield_join  the same, each child yields once first; per task
 *   yield             one task yielding in a loop; per yield
 *   await_ready       an await whose result is ready at once (a join that
 *                     fails with -EDEADLK: the task joins itself); per await
 *   timer_arm_cancel  arm a keel_timer 100-163 ms ahead, cancel it; per pair
 *   timer_arm_cancel_heap1k   the same with 1000 other timers armed an
 *                     hour ahead (the name is from when timers were a
 *                     heap, where each arm sifted to the top and each
 *                     cancel took the top out; on the wheel both are O(1))
 *   timer_100k_wall   100k tasks spawned, each keel_sleep()s a random
 *                     0-10 ms, all joined; wall ns per timer, spawn included
 *   timer_100k_cpu    the same run, process CPU ns per timer
 *   nop_b1 .. b128    B tasks each awaiting keel_nop() in a loop (B = 1, 8,
 *                     32, 128: B NOPs per loop turn); per NOP
 *   ratelimit_acquire one task awaiting keel_ratelimit_acquire() of one
 *                     token on a limiter that always conforms (a rate
 *                     far above what a task can take): the cost of the
 *                     admission itself (clock read, GCRA, a ready await);
 *                     per acquire
 *   ratelimit_try     keel_ratelimit_try() of one token, the same limiter;
 *                     per try
 *   mb_recv_ready     one task sends itself a message (keel_mb_try_send)
 *                     and takes it with keel_mb_recv(), ready at once;
 *                     per message
 *   select_mb2        the same, taken with a keel_select() over two
 *                     mailboxes, the first ready (init, two branches,
 *                     the select); per message
 *   mutex_lock_unlock an uncontended keel_mutex_lock() (a ready await) and
 *                     keel_mutex_unlock(); per pair
 *   read_4k           one task awaiting keel_read() of 4 KiB at random
 *                     offsets of a 1 MiB page-cached file (made under
 *                     $TMPDIR or /tmp, removed at once); per read (and
 *                     read_4k_cpu, process CPU per read)
 *   read_fixed_4k     the same with keel_read_fixed() into a registered
 *                     buffer (keel_buffers_register); per read
 *   task_header_bytes INFO only: sizeof(struct keel_task)
 *   loop_fresh_rss    INFO only: RSS in KiB per loop of FRESH_LOOPS
 *                     loops just created (kib=: rings, loop struct; the
 *                     process's code and jemalloc already warm from one
 *                     loop used and destroyed before), and per loop
 *                     once each has run one empty task (used_kib=: its
 *                     frame arena, made at the first frame)
 *
 * usage: keel-micro [--quick] [--callgrind N] [FILTER]
 *   FILTER       run the benchmarks whose name contains it ("=name": only
 *                the one with exactly that name)
 *   --quick      runs of >= 50 ms instead of 0.3 s (also BENCH_QUICK=1)
 *   --callgrind N  no calibration, no pinning: run each benchmark once with
 *                exactly N ops (rounded up to whole iterations), for
 *                instruction counts under valgrind (also KEEL_MICRO_OPS=N)
 */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <keel.h>

#define RUNS		5
#define BATCH		1000   /* tasks spawned before they are all joined */
#define TIMERS		100000 /* tasks (timers) per timer_100k round */
#define TIMER_WINDOW_NS 10000000ull /* sleeps are uniform in [0, 10 ms) */
#define HEAP_TIMERS	1000	    /* other timers armed in ..._heap1k */
#define MS		1000000ull

/* Run lengths; --quick shortens them. */
static uint64_t run_min_ns = 300 * MS;	  /* every run at least this long */
static uint64_t run_target_ns = 330 * MS; /* what calibration aims for */
static uint64_t calib_ns = 30 * MS;	  /* calibration stops above this */

static void die(const char *what, int err)
{
	fprintf(stderr, "keel-micro: %s: %s\n", what, strerror(err));
	exit(1);
}

static uint64_t clock_ns(clockid_t id)
{
	struct timespec ts;

	clock_gettime(id, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t xorshift(uint64_t *state)
{
	uint64_t x = *state;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	*state = x;
	return x;
}

static struct keel_task *spawn_or_die(struct keel_loop *loop,
				      const struct keel_task_type *type,
				      unsigned flags)
{
	void *frame = keel_spawn(loop, type, flags);

	if (!frame)
		die("keel_spawn", ENOMEM);
	return keel_task_of(type, frame);
}

/* ---- child tasks ---------------------------------------------------------
 * A step function without awaits needs no KEEL_BEGIN (it has no resume
 * point to jump to).
 */
struct empty_frame {
	struct keel_task task;
};

static int empty_step(struct keel_task *t)
{
	KEEL_END(t);
}
static KEEL_TASK_TYPE(empty_task, struct empty_frame, task, empty_step);

static int yield_once_step(struct keel_task *t)
{
	KEEL_BEGIN(t);
	KEEL_YIELD(t);
	KEEL_END(t);
}
static KEEL_TASK_TYPE(yield_once_task, struct empty_frame, task,
		      yield_once_step);

struct sleeper_frame {
	struct keel_task task;
	uint64_t ns;
};

static int sleeper_step(struct keel_task *t)
{
	struct sleeper_frame *f =
	    keel_container_of(t, struct sleeper_frame, task);

	KEEL_BEGIN(t);
	KEEL_AWAIT(t, keel_sleep(t, f->ns));
	KEEL_EXIT(t, keel_res(t));
}
static KEEL_TASK_TYPE(sleeper_task, struct sleeper_frame, task, sleeper_step);

struct nop_frame {
	struct keel_task task;
	uint64_t n, i;
};

static int nop_step(struct keel_task *t)
{
	struct nop_frame *f = keel_container_of(t, struct nop_frame, task);

	KEEL_BEGIN(t);
	for (f->i = 0; f->i < f->n; f->i++) {
		KEEL_AWAIT(t, keel_nop(t));
		if (keel_res(t) != 0)
			KEEL_EXIT(t, keel_res(t));
	}
	KEEL_END(t);
}
static KEEL_TASK_TYPE(nop_task, struct nop_frame, task, nop_step);

/* ---- drivers: one per benchmark, spawned by each run ----------------------
 */

/* spawn_join, spawn_yield_join: batches of BATCH children, then join all. */
struct spawn_join_frame {
	struct keel_task task;
	const struct keel_task_type *child;
	uint64_t batches, b;
	unsigned i;
	struct keel_task *kids[BATCH];
};

static int spawn_join_step(struct keel_task *t)
{
	struct spawn_join_frame *f =
	    keel_container_of(t, struct spawn_join_frame, task);

	KEEL_BEGIN(t);
	for (f->b = 0; f->b < f->batches; f->b++) {
		for (f->i = 0; f->i < BATCH; f->i++)
			f->kids[f->i] = spawn_or_die(
			    keel_task_loop(t), f->child,
			    KEEL_PRIO_NORMAL | KEEL_SPAWN_JOINABLE);
		for (f->i = 0; f->i < BATCH; f->i++) {
			KEEL_AWAIT(t, keel_join(t, f->kids[f->i]));
			if (keel_res(t) != 0)
				die("spawn_join: child exit status",
				    -keel_res(t));
		}
	}
	KEEL_END(t);
}
static KEEL_TASK_TYPE(spawn_join_task, struct spawn_join_frame, task,
		      spawn_join_step);

/* yield and await_ready: one task, n awaits. */
struct loop_frame {
	struct keel_task task;
	uint64_t n, i;
};

static int yield_step(struct keel_task *t)
{
	struct loop_frame *f = keel_container_of(t, struct loop_frame, task);

	KEEL_BEGIN(t);
	for (f->i = 0; f->i < f->n; f->i++)
		KEEL_YIELD(t);
	KEEL_END(t);
}
static KEEL_TASK_TYPE(yield_task, struct loop_frame, task, yield_step);

static int await_ready_step(struct keel_task *t)
{
	struct loop_frame *f = keel_container_of(t, struct loop_frame, task);

	KEEL_BEGIN(t);
	for (f->i = 0; f->i < f->n; f->i++) {
		KEEL_AWAIT(t, keel_join(t, t));
		if (keel_res(t) != -EDEADLK)
			die("await_ready: keel_join(self) should fail with "
			    "-EDEADLK",
			    keel_res(t) < 0 ? -keel_res(t) : EPROTO);
	}
	KEEL_END(t);
}
static KEEL_TASK_TYPE(await_ready_task, struct loop_frame, task,
		      await_ready_step);

/* ratelimit_acquire / ratelimit_try: one task, n admissions. */
struct ratelimit_frame {
	struct keel_task task;
	struct keel_ratelimit *rl;
	uint64_t n, i;
	bool try_only;
};

static int ratelimit_step(struct keel_task *t)
{
	struct ratelimit_frame *f =
	    keel_container_of(t, struct ratelimit_frame, task);

	KEEL_BEGIN(t);
	for (f->i = 0; f->i < f->n; f->i++) {
		if (f->try_only) {
			if (keel_ratelimit_try(f->rl, 1, NULL))
				die("ratelimit_try: refused", EPROTO);
			continue;
		}
		KEEL_AWAIT(t, keel_ratelimit_acquire(t, f->rl, 1, UINT64_MAX));
		if (keel_res(t) != 0)
			die("ratelimit_acquire", -keel_res(t));
	}
	keel_ratelimit_free(f->rl);
	KEEL_END(t);
}
static KEEL_TASK_TYPE(ratelimit_task, struct ratelimit_frame, task,
		      ratelimit_step);

/* mb_recv_ready / select_mb2: one task sends itself a message and takes
 * it with keel_mb_recv(), or with a keel_select() over two mailboxes of
 * which only the first holds one (the other is looked at, not armed). */
struct select_mb_frame {
	struct keel_task task;
	struct keel_mailbox *mb[2];
	struct keel_select sel;
	void *msg[2];
	uint64_t n, i;
	bool select;
};

static int select_mb_step(struct keel_task *t)
{
	struct select_mb_frame *f =
	    keel_container_of(t, struct select_mb_frame, task);

	KEEL_BEGIN(t);
	for (f->i = 0; f->i < f->n; f->i++) {
		if (keel_mb_try_send(f->mb[0], (void *)(uintptr_t)(f->i + 1)))
			die("keel_mb_try_send", EPROTO);
		if (!f->select) {
			KEEL_AWAIT(t, keel_mb_recv(t, f->mb[0], &f->msg[0]));
			if (keel_res(t) != 0)
				die("keel_mb_recv", -keel_res(t));
			continue;
		}
		keel_select_init(&f->sel, t, 0);
		keel_select_recv(&f->sel, f->mb[0], &f->msg[0]);
		keel_select_recv(&f->sel, f->mb[1], &f->msg[1]);
		KEEL_AWAIT(t, keel_select(t, &f->sel));
		if (keel_res(t) != 0)
			die("keel_select", -keel_res(t));
	}
	keel_mailbox_release(f->mb[0]);
	keel_mailbox_release(f->mb[1]);
	KEEL_END(t);
}
static KEEL_TASK_TYPE(select_mb_task, struct select_mb_frame, task,
		      select_mb_step);

/* mutex_lock_unlock: an uncontended keel_mutex taken and given back (the
 * wait-for graph's bookkeeping rides on this path). */
struct mutex_frame {
	struct keel_task task;
	struct keel_mutex *m;
	uint64_t n, i;
};

static int mutex_step(struct keel_task *t)
{
	struct mutex_frame *f = keel_container_of(t, struct mutex_frame, task);

	KEEL_BEGIN(t);
	for (f->i = 0; f->i < f->n; f->i++) {
		KEEL_AWAIT(t, keel_mutex_lock(t, f->m, UINT64_MAX));
		if (keel_res(t))
			die("keel_mutex_lock", -keel_res(t));
		if (keel_mutex_unlock(t, f->m))
			die("keel_mutex_unlock", EPERM);
	}
	keel_mutex_free(f->m);
	KEEL_END(t);
}
static KEEL_TASK_TYPE(mutex_task, struct mutex_frame, task, mutex_step);

/* timer_arm_cancel[_heap1k]: arm, cancel, n times, in one step. */
struct arm_cancel_frame {
	struct keel_task task;
	uint64_t n;
	unsigned others; /* timers kept armed meanwhile */
	struct keel_timer timer;
	struct keel_timer *other;
};

static void timer_fired(struct keel_loop *loop, struct keel_timer *timer,
			void *arg)
{
	die("timer_arm_cancel: a timer fired", EPROTO);
}

static int arm_cancel_step(struct keel_task *t)
{
	struct arm_cancel_frame *f =
	    keel_container_of(t, struct arm_cancel_frame, task);
	struct keel_loop *loop = keel_task_loop(t);
	uint64_t i;

	/* Others an hour ahead, spread (on a heap: really 1k deep). */
	for (i = 0; i < f->others; i++) {
		keel_timer_init(&f->other[i], timer_fired, NULL);
		if (keel_timer_arm_after(loop, &f->other[i],
					 3600000 * MS + i * MS))
			die("keel_timer_arm_after", ENOMEM);
	}
	keel_timer_init(&f->timer, timer_fired, NULL);
	for (i = 0; i < f->n; i++) {
		if (keel_timer_arm_after(loop, &f->timer,
					 100 * MS + (i & 63) * MS))
			die("keel_timer_arm_after", ENOMEM);
		if (!keel_timer_cancel(loop, &f->timer))
			die("keel_timer_cancel: timer was not armed", EPROTO);
	}
	for (i = 0; i < f->others; i++)
		keel_timer_cancel(loop, &f->other[i]);
	KEEL_END(t);
}
static KEEL_TASK_TYPE(arm_cancel_task, struct arm_cancel_frame, task,
		      arm_cancel_step);

/* timer_100k: rounds of TIMERS sleepers, each joined. */
static struct keel_task *sleepers[TIMERS];

struct timers_frame {
	struct keel_task task;
	uint64_t rounds, r, rng;
	unsigned i;
};

static int timers_step(struct keel_task *t)
{
	struct timers_frame *f =
	    keel_container_of(t, struct timers_frame, task);
	struct sleeper_frame *s;

	KEEL_BEGIN(t);
	for (f->r = 0; f->r < f->rounds; f->r++) {
		for (f->i = 0; f->i < TIMERS; f->i++) {
			s = keel_spawn(keel_task_loop(t), &sleeper_task,
				       KEEL_PRIO_NORMAL | KEEL_SPAWN_JOINABLE);
			if (!s)
				die("keel_spawn", ENOMEM);
			s->ns = xorshift(&f->rng) % TIMER_WINDOW_NS;
			sleepers[f->i] = keel_task_of(&sleeper_task, s);
		}
		for (f->i = 0; f->i < TIMERS; f->i++) {
			KEEL_AWAIT(t, keel_join(t, sleepers[f->i]));
			if (keel_res(t) != 0)
				die("timer_100k: keel_sleep", -keel_res(t));
		}
	}
	KEEL_END(t);
}
static KEEL_TASK_TYPE(timers_task, struct timers_frame, task, timers_step);

/* nop_bB: B nop tasks of n NOPs each, joined. */
struct nops_frame {
	struct keel_task task;
	uint64_t n;
	unsigned width, i;
	struct keel_task *kids[128];
};

static int nops_step(struct keel_task *t)
{
	struct nops_frame *f = keel_container_of(t, struct nops_frame, task);
	struct nop_frame *c;

	KEEL_BEGIN(t);
	for (f->i = 0; f->i < f->width; f->i++) {
		c = keel_spawn(keel_task_loop(t), &nop_task,
			       KEEL_PRIO_NORMAL | KEEL_SPAWN_JOINABLE);
		if (!c)
			die("keel_spawn", ENOMEM);
		c->n = f->n;
		f->kids[f->i] = keel_task_of(&nop_task, c);
	}
	for (f->i = 0; f->i < f->width; f->i++) {
		KEEL_AWAIT(t, keel_join(t, f->kids[f->i]));
		if (keel_res(t) != 0)
			die("keel_nop", -keel_res(t));
	}
	KEEL_END(t);
}
static KEEL_TASK_TYPE(nops_task, struct nops_frame, task, nops_step);

/* ---- mailboxes --------------------------------------------------------------
 * chan_*: a producer task sends n messages to a consumer task through a
 * mailbox of 1024 (BLOCK); pingpong_*: a message goes there and back
 * through two mailboxes (one round trip per op). *_2tasks: both tasks on
 * one loop. *_cross_thread / *_xthread: one loop per thread, threads pinned
 * to CPUs 0 and 1, as the peers measure it.
 */
struct chan_frame {
	struct keel_task task;
	struct keel_mailbox *in;  /* received from */
	struct keel_mailbox *out; /* sent to */
	uint64_t n, i;
	void *msg;
};

static int producer_step(struct keel_task *t)
{
	struct chan_frame *f = keel_container_of(t, struct chan_frame, task);

	KEEL_BEGIN(t);
	for (f->i = 0; f->i < f->n; f->i++) {
		KEEL_AWAIT(
		    t, keel_mb_send(t, f->out, (void *)(uintptr_t)(f->i + 1)));
		if (keel_res(t))
			die("keel_mb_send", -keel_res(t));
	}
	KEEL_END(t);
}

static int consumer_step(struct keel_task *t)
{
	struct chan_frame *f = keel_container_of(t, struct chan_frame, task);

	KEEL_BEGIN(t);
	for (f->i = 0; f->i < f->n; f->i++) {
		KEEL_AWAIT(t, keel_mb_recv(t, f->in, &f->msg));
		if (keel_res(t) || (uintptr_t)f->msg != f->i + 1)
			die("keel_mb_recv (order)", EPROTO);
	}
	KEEL_END(t);
}

static int pinger_step(struct keel_task *t)
{
	struct chan_frame *f = keel_container_of(t, struct chan_frame, task);

	KEEL_BEGIN(t);
	for (f->i = 0; f->i < f->n; f->i++) {
		KEEL_AWAIT(
		    t, keel_mb_send(t, f->out, (void *)(uintptr_t)(f->i + 1)));
		KEEL_AWAIT(t, keel_mb_recv(t, f->in, &f->msg));
		if (keel_res(t) || (uintptr_t)f->msg != f->i + 1)
			die("ping", EPROTO);
	}
	KEEL_END(t);
}

static int ponger_step(struct keel_task *t)
{
	struct chan_frame *f = keel_container_of(t, struct chan_frame, task);

	KEEL_BEGIN(t);
	for (f->i = 0; f->i < f->n; f->i++) {
		KEEL_AWAIT(t, keel_mb_recv(t, f->in, &f->msg));
		if (keel_res(t))
			die("pong", -keel_res(t));
		KEEL_AWAIT(t, keel_mb_send(t, f->out, f->msg));
	}
	KEEL_END(t);
}

static KEEL_TASK_TYPE(producer_task, struct chan_frame, task, producer_step);
static KEEL_TASK_TYPE(consumer_task, struct chan_frame, task, consumer_step);
static KEEL_TASK_TYPE(pinger_task, struct chan_frame, task, pinger_step);
static KEEL_TASK_TYPE(ponger_task, struct chan_frame, task, ponger_step);

static struct keel_mailbox *new_mailbox(struct keel_loop *owner)
{
	struct keel_mailbox_opts o = {.capacity = 1024,
				      .policy = KEEL_MB_BLOCK};
	struct keel_mailbox *mb;
	int err = keel_mailbox_new(owner, &o, &mb);

	if (err)
		die("keel_mailbox_new", -err);
	return mb;
}

static struct chan_frame *spawn_chan(struct keel_loop *loop,
				     const struct keel_task_type *type,
				     struct keel_mailbox *in,
				     struct keel_mailbox *out, uint64_t n)
{
	struct chan_frame *f = keel_spawn(loop, type, KEEL_PRIO_NORMAL);

	if (!f)
		die("keel_spawn", ENOMEM);
	f->in = in;
	f->out = out;
	f->n = n;
	return f;
}

/* Two threads (CPU 0 and 1), each running a loop with one task. */
struct xside {
	pthread_t thread;
	int cpu;
	unsigned spin_ns;
	const struct keel_task_type *type;
	struct keel_loop *loop;
	struct keel_mailbox *inbox; /* owned by this side's loop */
	struct xside *peer;
	uint64_t n;
};

static pthread_barrier_t xready;
static struct xside xsides[2];

static void *xside_main(void *arg)
{
	struct xside *s = arg;
	struct keel_loop_opts o = {.spin_ns = s->spin_ns};
	cpu_set_t set;
	int err;

	CPU_ZERO(&set);
	CPU_SET(s->cpu, &set);
	pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
	err = keel_loop_create(&s->loop, &o);
	if (err)
		die("keel_loop_create", -err);
	s->inbox = new_mailbox(s->loop);
	pthread_barrier_wait(&xready); /* both inboxes exist */
	spawn_chan(s->loop, s->type, s->inbox, s->peer->inbox, s->n);
	err = keel_loop_run(s->loop);
	if (err < 0)
		die("keel_loop_run", -err);
	pthread_barrier_wait(&xready); /* nobody sends any more */
	keel_mailbox_release(s->inbox);
	keel_loop_destroy(s->loop);
	return NULL;
}

/* ---- cancellation and aborts ------------------------------------------------
 * cancel_sleep: a child sleeps (a user-space wait), the parent cancels it
 * (keel_task_cancel) and joins it. cancel_recv: the same with the child in
 * a recv on an idle socketpair (an IORING_OP_ASYNC_CANCEL round trip).
 * panic_join: the child panics at once; the parent joins it (the abort:
 * longjmp, defers, exit, join). Each op includes its spawn and join.
 */
struct victim_frame {
	struct keel_task task;
	int mode; /* 0 sleep, 1 recv, 2 panic */
	int fd;
	char buf[8];
};

static int victim_step(struct keel_task *t)
{
	struct victim_frame *v =
	    keel_container_of(t, struct victim_frame, task);

	KEEL_BEGIN(t);
	if (v->mode == 2)
		keel_panic("bench");
	if (v->mode == 1)
		KEEL_AWAIT(t, keel_recv(t, v->fd, v->buf, sizeof(v->buf), 0));
	else
		KEEL_AWAIT(t, keel_sleep(t, 60 * 1000 * MS));
	KEEL_EXIT(t, keel_res(t));
}

static KEEL_TASK_TYPE(victim_task, struct victim_frame, task, victim_step);

struct canceller_frame {
	struct keel_task task;
	int mode;
	int fds[2];
	uint64_t n, i;
	struct victim_frame *v;
};

static int canceller_step(struct keel_task *t)
{
	struct canceller_frame *f =
	    keel_container_of(t, struct canceller_frame, task);

	KEEL_BEGIN(t);
	for (f->i = 0; f->i < f->n; f->i++) {
		f->v = keel_spawn(t->loop, &victim_task,
				  KEEL_PRIO_NORMAL | KEEL_SPAWN_JOINABLE);
		if (!f->v)
			die("keel_spawn", ENOMEM);
		f->v->mode = f->mode;
		f->v->fd = f->fds[0];
		if (f->mode != 2) {
			KEEL_YIELD(t); /* the victim starts waiting */
			keel_task_cancel(&f->v->task);
		}
		KEEL_AWAIT(t, keel_join(t, &f->v->task));
		if (keel_res(t) != (f->mode == 2 ? KEEL_ABORTED : -ECANCELED))
			die("cancel result", EPROTO);
	}
	close(f->fds[0]);
	close(f->fds[1]);
	KEEL_END(t);
}

static KEEL_TASK_TYPE(canceller_task, struct canceller_frame, task,
		      canceller_step);

/* ---- actors
 * ------------------------------------------------------------------
 * ask_2tasks: a task asks an actor on the same loop, which replies with the
 * payload (one ask round trip per op, deadline included).
 */
static int echo_behaviour(struct keel_actor_ctx *ctx, struct keel_envelope *m)
{
	(void)ctx;
	keel_actor_reply(m, m->payload);
	return 0;
}

struct asker_frame {
	struct keel_task task;
	struct keel_actor *actor;
	uint64_t n, i;
	void *reply;
};

static int asker_step(struct keel_task *t)
{
	struct asker_frame *f = keel_container_of(t, struct asker_frame, task);

	KEEL_BEGIN(t);
	for (f->i = 0; f->i < f->n; f->i++) {
		KEEL_AWAIT(t, keel_actor_ask(t, f->actor,
					     (void *)(uintptr_t)(f->i + 1),
					     UINT64_MAX, &f->reply));
		if (keel_res(t) || (uintptr_t)f->reply != f->i + 1)
			die("keel_actor_ask", EPROTO);
	}
	keel_actor_stop(f->actor);
	keel_actor_release(f->actor);
	KEEL_END(t);
}

static KEEL_TASK_TYPE(asker_task, struct asker_frame, task, asker_step);

struct bench;
static void start_ask(struct keel_loop *loop, const struct bench *b,
		      uint64_t n);
static void start_cancel(struct keel_loop *loop, const struct bench *b,
			 uint64_t n);
static void start_local_chan(struct keel_loop *loop, const struct bench *b,
			     uint64_t n);
static void start_xthread(struct keel_loop *loop, const struct bench *b,
			  uint64_t n);
static void finish_xthread(const struct bench *b);

/* ---- file reads ------------------------------------------------------------
 * read_4k / read_fixed_4k: keel_read vs keel_read_fixed of 4 KiB at random
 * offsets of a page-cached file (tools/keel-fixedread.c has the full A/B:
 * O_DIRECT, depth, raw liburing).
 */
#define FILE_BLOCKS 256 /* 4 KiB each: 1 MiB */

static int file_fd = -1;
static char file_buf[4096] __attribute__((aligned(4096)));

struct file_read_frame {
	struct keel_task task;
	uint64_t n, rng;
	bool fixed;
};

static int file_read_step(struct keel_task *t)
{
	struct file_read_frame *f =
	    keel_container_of(t, struct file_read_frame, task);

	KEEL_BEGIN(t);
	while (f->n--) {
		uint64_t off =
		    xorshift(&f->rng) % FILE_BLOCKS * sizeof(file_buf);

		if (f->fixed)
			KEEL_AWAIT(t,
				   keel_read_fixed(t, file_fd, file_buf,
						   sizeof(file_buf), off, 0));
		else
			KEEL_AWAIT(t, keel_read(t, file_fd, file_buf,
						sizeof(file_buf), off));
		if (keel_res(t) != (int)sizeof(file_buf))
			die("keel_read", keel_res(t) < 0 ? -keel_res(t) : EIO);
	}
	KEEL_END(t);
}
static KEEL_TASK_TYPE(file_read_task, struct file_read_frame, task,
		      file_read_step);

/* The file, once per process, written whole (so it is page-cached). */
static void file_make(void)
{
	const char *dir = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
	char path[4096];

	snprintf(path, sizeof(path), "%s/keel-micro.XXXXXX", dir);
	file_fd = mkstemp(path);
	if (file_fd < 0)
		die(path, errno);
	unlink(path);
	for (unsigned i = 0; i < FILE_BLOCKS; i++) {
		memset(file_buf, (int)i, sizeof(file_buf));
		if (pwrite(file_fd, file_buf, sizeof(file_buf),
			   (off_t)(i * sizeof(file_buf))) != sizeof(file_buf))
			die("pwrite", errno);
	}
}

struct bench {
	const char *name;
	const char *cpu_name; /* also report CPU ns per op under this name */
	uint64_t ops_per_iter;
	unsigned param;
	void (*start)(struct keel_loop *loop, const struct bench *b,
		      uint64_t n);
	void (*finish)(const struct bench *b); /* after the run; timed too */
};

static void start_spawn_join(struct keel_loop *loop, const struct bench *b,
			     uint64_t n)
{
	struct spawn_join_frame *f =
	    keel_spawn(loop, &spawn_join_task, KEEL_PRIO_NORMAL);

	if (!f)
		die("keel_spawn", ENOMEM);
	f->child = b->param ? &yield_once_task : &empty_task;
	f->batches = n;
}

static void start_loop(struct keel_loop *loop, const struct bench *b,
		       uint64_t n)
{
	const struct keel_task_type *type =
	    b->param ? &await_ready_task : &yield_task;
	struct loop_frame *f = keel_spawn(loop, type, KEEL_PRIO_NORMAL);

	if (!f)
		die("keel_spawn", ENOMEM);
	f->n = n;
}

static void start_ratelimit(struct keel_loop *loop, const struct bench *b,
			    uint64_t n)
{
	/* 1e12/s: one token per ns (the emission interval's floor), and a
	 * burst of 2^20: no admission can ever have to wait. */
	const struct keel_ratelimit_opts o = {.rate = 1e12, .burst = 1u << 20};
	struct ratelimit_frame *f =
	    keel_spawn(loop, &ratelimit_task, KEEL_PRIO_NORMAL);
	int err;

	if (!f)
		die("keel_spawn", ENOMEM);
	err = keel_ratelimit_new(loop, &o, &f->rl);
	if (err)
		die("keel_ratelimit_new", -err);
	f->n = n;
	f->try_only = b->param;
}

static struct keel_mailbox *new_mailbox(struct keel_loop *owner);

static void start_select_mb(struct keel_loop *loop, const struct bench *b,
			    uint64_t n)
{
	struct select_mb_frame *f =
	    keel_spawn(loop, &select_mb_task, KEEL_PRIO_NORMAL);

	if (!f)
		die("keel_spawn", ENOMEM);
	f->mb[0] = new_mailbox(loop);
	f->mb[1] = new_mailbox(loop);
	f->n = n;
	f->select = b->param;
}

static void start_mutex(struct keel_loop *loop, const struct bench *b,
			uint64_t n)
{
	struct mutex_frame *f = keel_spawn(loop, &mutex_task, KEEL_PRIO_NORMAL);
	int err;

	(void)b;
	if (!f)
		die("keel_spawn", ENOMEM);
	err = keel_mutex_new(loop, &f->m);
	if (err)
		die("keel_mutex_new", -err);
	f->n = n;
}

static void start_arm_cancel(struct keel_loop *loop, const struct bench *b,
			     uint64_t n)
{
	static struct keel_timer others[HEAP_TIMERS];
	struct arm_cancel_frame *f =
	    keel_spawn(loop, &arm_cancel_task, KEEL_PRIO_NORMAL);

	if (!f)
		die("keel_spawn", ENOMEM);
	f->n = n;
	f->others = b->param;
	f->other = others;
}

static void start_timers(struct keel_loop *loop, const struct bench *b,
			 uint64_t n)
{
	static uint64_t seed = 0x9e3779b97f4a7c15ull;
	struct timers_frame *f =
	    keel_spawn(loop, &timers_task, KEEL_PRIO_NORMAL);

	if (!f)
		die("keel_spawn", ENOMEM);
	seed = seed * 6364136223846793005ull + 1; /* new delays every run */
	f->rounds = n;
	f->rng = seed | 1;
}

static void start_nops(struct keel_loop *loop, const struct bench *b,
		       uint64_t n)
{
	struct nops_frame *f = keel_spawn(loop, &nops_task, KEEL_PRIO_NORMAL);

	if (!f)
		die("keel_spawn", ENOMEM);
	f->n = n;
	f->width = b->param;
}

/* param: 0 one-way stream, 1 ping-pong; +2 spin before parking. */
static struct keel_mailbox *local_mb[2];

static void start_local_chan(struct keel_loop *loop, const struct bench *b,
			     uint64_t n)
{
	if (!local_mb[0]) {
		local_mb[0] = new_mailbox(loop);
		local_mb[1] = new_mailbox(loop);
	}
	if (b->param & 1) {
		spawn_chan(loop, &ponger_task, local_mb[0], local_mb[1], n);
		spawn_chan(loop, &pinger_task, local_mb[1], local_mb[0], n);
	} else {
		spawn_chan(loop, &consumer_task, local_mb[0], NULL, n);
		spawn_chan(loop, &producer_task, NULL, local_mb[0], n);
	}
}

static void start_xthread(struct keel_loop *loop, const struct bench *b,
			  uint64_t n)
{
	bool pingpong = b->param & 1;

	(void)loop;
	pthread_barrier_init(&xready, NULL, 2);
	for (int i = 0; i < 2; i++) {
		struct xside *s = &xsides[i];

		s->cpu = i;
		s->spin_ns = b->param & 2 ? 200000 : 0;
		s->peer = &xsides[1 - i];
		s->n = n;
	}
	xsides[0].type = pingpong ? &pinger_task : &consumer_task;
	xsides[1].type = pingpong ? &ponger_task : &producer_task;
	for (int i = 0; i < 2; i++)
		if (pthread_create(&xsides[i].thread, NULL, xside_main,
				   &xsides[i]))
			die("pthread_create", EAGAIN);
}

static void finish_xthread(const struct bench *b)
{
	(void)b;
	for (int i = 0; i < 2; i++)
		pthread_join(xsides[i].thread, NULL);
	pthread_barrier_destroy(&xready);
}

static void start_ask(struct keel_loop *loop, const struct bench *b, uint64_t n)
{
	struct keel_actor_spec spec = {.name = "echo",
				       .behaviour = echo_behaviour};
	struct asker_frame *f = keel_spawn(loop, &asker_task, KEEL_PRIO_NORMAL);
	int err;

	(void)b;
	if (!f)
		die("keel_spawn", ENOMEM);
	err = keel_actor_spawn(loop, &spec, NULL, &f->actor);
	if (err)
		die("keel_actor_spawn", -err);
	f->n = n;
}

static void start_cancel(struct keel_loop *loop, const struct bench *b,
			 uint64_t n)
{
	struct canceller_frame *f =
	    keel_spawn(loop, &canceller_task, KEEL_PRIO_NORMAL);

	if (!f)
		die("keel_spawn", ENOMEM);
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, f->fds))
		die("socketpair", errno);
	f->mode = (int)b->param;
	f->n = n;
}

static void start_file_read(struct keel_loop *loop, const struct bench *b,
			    uint64_t n)
{
	const struct iovec iov = {file_buf, sizeof(file_buf)};
	struct file_read_frame *f;
	int err;

	if (file_fd < 0)
		file_make();
	/* Once per loop: -EBUSY is this loop's own table. */
	err = keel_buffers_register(loop, &iov, 1);
	if (err && err != -EBUSY)
		die("keel_buffers_register", -err);
	f = keel_spawn(loop, &file_read_task, KEEL_PRIO_NORMAL);
	if (!f)
		die("keel_spawn", ENOMEM);
	f->n = n;
	f->rng = 0x9e3779b97f4a7c15ull;
	f->fixed = b->param;
}

static const struct bench benches[] = {
    {"spawn_join", NULL, BATCH, 0, start_spawn_join, NULL},
    {"spawn_yield_join", NULL, BATCH, 1, start_spawn_join, NULL},
    {"yield", NULL, 1, 0, start_loop, NULL},
    {"await_ready", NULL, 1, 1, start_loop, NULL},
    {"timer_arm_cancel", NULL, 1, 0, start_arm_cancel, NULL},
    {"timer_arm_cancel_heap1k", NULL, 1, HEAP_TIMERS, start_arm_cancel, NULL},
    {"timer_100k_wall", "timer_100k_cpu", TIMERS, 0, start_timers, NULL},
    {"nop_b1", NULL, 1, 1, start_nops, NULL},
    {"nop_b8", NULL, 8, 8, start_nops, NULL},
    {"nop_b32", NULL, 32, 32, start_nops, NULL},
    {"nop_b128", NULL, 128, 128, start_nops, NULL},
    {"cancel_sleep", NULL, 1, 0, start_cancel, NULL},
    {"cancel_recv", NULL, 1, 1, start_cancel, NULL},
    {"panic_join", NULL, 1, 2, start_cancel, NULL},
    {"ask_2tasks", NULL, 1, 0, start_ask, NULL},
    {"chan_2tasks", NULL, 1, 0, start_local_chan, NULL},
    {"pingpong_2tasks", NULL, 1, 1, start_local_chan, NULL},
    {"chan_cross_thread", NULL, 1, 0, start_xthread, finish_xthread},
    {"pingpong_xthread", NULL, 1, 1, start_xthread, finish_xthread},
    {"pingpong_xthread_spin", NULL, 1, 3, start_xthread, finish_xthread},
    {"ratelimit_acquire", NULL, 1, 0, start_ratelimit, NULL},
    {"ratelimit_try", NULL, 1, 1, start_ratelimit, NULL},
    {"mb_recv_ready", NULL, 1, 0, start_select_mb, NULL},
    {"select_mb2", NULL, 1, 1, start_select_mb, NULL},
    {"mutex_lock_unlock", NULL, 1, 0, start_mutex, NULL},
    {"read_4k", "read_4k_cpu", 1, 0, start_file_read, NULL},
    {"read_fixed_4k", "read_fixed_4k_cpu", 1, 1, start_file_read, NULL},
};

/* ---- harness ----------------------------------------------------------------
 */

struct sample {
	uint64_t wall_ns;
	uint64_t cpu_ns;
};

/*
 * One run: n iterations of the benchmark on `loop`. Not inlined, so that a
 * profile shows the runs under one name.
 */
static __attribute__((noinline)) struct sample
run_once(struct keel_loop *loop, const struct bench *b, uint64_t n)
{
	struct sample s;
	uint64_t c0 = clock_ns(CLOCK_PROCESS_CPUTIME_ID);
	uint64_t t0 = clock_ns(CLOCK_MONOTONIC);
	int err;

	b->start(loop, b, n);
	err = keel_loop_run(loop);
	if (err < 0)
		die("keel_loop_run", -err);
	if (b->finish)
		b->finish(b);
	s.wall_ns = clock_ns(CLOCK_MONOTONIC) - t0;
	s.cpu_ns = clock_ns(CLOCK_PROCESS_CPUTIME_ID) - c0;
	return s;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

static void report(const char *name, uint64_t ops, const double *runs)
{
	double sorted[RUNS];
	int i;

	memcpy(sorted, runs, sizeof(sorted));
	qsort(sorted, RUNS, sizeof(double), cmp_double);
	printf("RESULT name=%s ns_per_op=%.1f ops=%llu\n", name,
	       sorted[RUNS / 2], (unsigned long long)ops);
	printf("INFO name=%s runs_ns_per_op=", name);
	for (i = 0; i < RUNS; i++)
		printf("%s%.1f", i ? "," : "", runs[i]);
	printf("\n");
}

/* What the loop did per op over the measured runs: turns, enters, steps. */
static void report_loop(const char *name, const struct keel_loop_stats *a,
			const struct keel_loop_stats *b, uint64_t ops)
{
	double d = ops ? (double)ops : 1.0;

	printf("INFO name=%s turns_per_op=%.3f enters_per_op=%.3f "
	       "steps_per_op=%.3f sqes_per_op=%.3f\n",
	       name, (double)(b->turns - a->turns) / d,
	       (double)(b->enters - a->enters) / d,
	       (double)(b->steps - a->steps) / d,
	       (double)(b->sqes - a->sqes) / d);
}

static uint64_t scale(uint64_t n, uint64_t want_ns, uint64_t took_ns)
{
	return (uint64_t)((double)n * (double)want_ns /
			  (double)(took_ns ? took_ns : 1)) +
	       1;
}

/* The peers' method: calibrate to runs of >= run_min_ns, median of 5. */
static void measure(struct keel_loop *loop, const struct bench *b)
{
	struct keel_loop_stats st0, st1;
	double wall[RUNS], cpu[RUNS];
	uint64_t n = 1, f, ops = 0;
	struct sample s;
	int i;

	for (;;) {
		s = run_once(loop, b, n);
		if (s.wall_ns >= calib_ns)
			break;
		f = s.wall_ns ? 2 * calib_ns / s.wall_ns : 100;
		n *= f < 2 ? 2 : f > 100 ? 100 : f;
	}
	n = scale(n, run_target_ns, s.wall_ns);
	keel_loop_stats(loop, &st0);
	for (i = 0; i < RUNS; i++) {
		s = run_once(loop, b, n);
		ops += n * b->ops_per_iter;
		while (s.wall_ns <
		       run_min_ns) { /* got faster: lengthen, redo */
			n = scale(n, run_target_ns, s.wall_ns);
			s = run_once(loop, b, n);
			ops += n * b->ops_per_iter;
		}
		wall[i] = (double)s.wall_ns / (double)(n * b->ops_per_iter);
		cpu[i] = (double)s.cpu_ns / (double)(n * b->ops_per_iter);
	}
	keel_loop_stats(loop, &st1);
	report(b->name, n * b->ops_per_iter, wall);
	if (b->cpu_name)
		report(b->cpu_name, n * b->ops_per_iter, cpu);
	report_loop(b->name, &st0, &st1, ops);
	fflush(stdout);
}

/* Fixed count, no calibration: for instruction counts under callgrind. */
static void run_fixed(struct keel_loop *loop, const struct bench *b,
		      uint64_t ops)
{
	uint64_t n = (ops + b->ops_per_iter - 1) / b->ops_per_iter;
	struct sample s;

	if (n == 0)
		n = 1;
	s = run_once(loop, b, n);
	printf("RESULT name=%s ns_per_op=%.1f ops=%llu\n", b->name,
	       (double)s.wall_ns / (double)(n * b->ops_per_iter),
	       (unsigned long long)(n * b->ops_per_iter));
	fflush(stdout);
}

/* ---- loop_fresh_rss ---------------------------------------------------- */
#define FRESH_LOOPS 8

/* Resident set in KiB (/proc/self/statm). */
static double rss_kib(void)
{
	unsigned long size = 0, resident = 0;
	FILE *f = fopen("/proc/self/statm", "r");

	if (!f)
		die("/proc/self/statm", errno);
	if (fscanf(f, "%lu %lu", &size, &resident) != 2)
		die("/proc/self/statm", EPROTO);
	fclose(f);
	return (double)resident * (double)sysconf(_SC_PAGESIZE) / 1024.0;
}

static struct keel_loop *fresh_loop(void)
{
	struct keel_loop *loop;
	int err = keel_loop_create(&loop, NULL);

	if (err < 0) {
		fprintf(stderr, "keel-micro: keel_loop_create: %s\n",
			keel_loop_explain(err));
		exit(1);
	}
	return loop;
}

static void fresh_rss(void)
{
	struct keel_loop *loops[FRESH_LOOPS];
	double r0, r1, r2;

	/* Code paths and jemalloc warm (its first arena costs more). */
	loops[0] = fresh_loop();
	if (!keel_spawn(loops[0], &empty_task, KEEL_PRIO_NORMAL) ||
	    keel_loop_run(loops[0]) < 0)
		die("warm-up loop", EIO);
	keel_loop_destroy(loops[0]);
	r0 = rss_kib();
	for (int i = 0; i < FRESH_LOOPS; i++)
		loops[i] = fresh_loop();
	r1 = rss_kib();
	for (int i = 0; i < FRESH_LOOPS; i++) {
		if (!keel_spawn(loops[i], &empty_task, KEEL_PRIO_NORMAL) ||
		    keel_loop_run(loops[i]) < 0)
			die("empty task", EIO);
	}
	r2 = rss_kib();
	printf("INFO name=loop_fresh_rss kib=%.1f used_kib=%.1f loops=%d\n",
	       (r1 - r0) / FRESH_LOOPS, (r2 - r0) / FRESH_LOOPS, FRESH_LOOPS);
	for (int i = 0; i < FRESH_LOOPS; i++)
		keel_loop_destroy(loops[i]);
}

static int wanted(const char *name, const char *filter)
{
	if (filter[0] == '=')
		return strcmp(name, filter + 1) == 0;
	return strstr(name, filter) != NULL;
}

static void pin_cpu0(void)
{
	cpu_set_t set;

	if (sysconf(_SC_NPROCESSORS_ONLN) < 2)
		return; /* one CPU: nothing to choose */
	CPU_ZERO(&set);
	CPU_SET(0, &set);
	if (sched_setaffinity(0, sizeof(set), &set))
		fprintf(stderr, "keel-micro: sched_setaffinity(0): %s\n",
			strerror(errno));
}

static void set_quick(void)
{
	run_min_ns = 50 * MS;
	run_target_ns = 55 * MS;
	calib_ns = 10 * MS;
}

static void usage(void)
{
	fprintf(stderr, "usage: keel-micro [--quick] [--callgrind N] "
			"[FILTER | =NAME]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	const char *filter = "", *env;
	uint64_t fixed_ops = 0;
	struct keel_loop *loop;
	unsigned i;
	int a, err, described = 0;
	char desc[256];

	env = getenv("KEEL_MICRO_OPS");
	if (env && *env)
		fixed_ops = strtoull(env, NULL, 10);
	env = getenv("BENCH_QUICK");
	if (env && strcmp(env, "1") == 0)
		set_quick();
	for (a = 1; a < argc; a++) {
		if (strcmp(argv[a], "--quick") == 0) {
			set_quick();
		} else if (strcmp(argv[a], "--callgrind") == 0) {
			if (++a == argc)
				usage();
			fixed_ops = strtoull(argv[a], NULL, 10);
			if (!fixed_ops)
				usage();
		} else if (argv[a][0] == '-' && argv[a][1] == '-') {
			usage();
		} else {
			filter = argv[a];
		}
	}
	if (!fixed_ops)
		pin_cpu0();

	if (wanted("task_header_bytes", filter))
		printf("INFO name=task_header_bytes bytes=%zu\n",
		       sizeof(struct keel_task));
	if (wanted("loop_fresh_rss", filter) && !fixed_ops)
		fresh_rss();
	for (i = 0; i < sizeof(benches) / sizeof(benches[0]); i++) {
		const struct bench *b = &benches[i];

		if (!wanted(b->name, filter) &&
		    !(b->cpu_name && wanted(b->cpu_name, filter)))
			continue;
		err = keel_loop_create(&loop, NULL);
		if (err < 0) {
			fprintf(stderr, "keel-micro: keel_loop_create: %s\n",
				keel_loop_explain(err));
			return 1;
		}
		if (!described) {
			keel_loop_describe(loop, desc, sizeof(desc));
			fprintf(stderr, "keel-micro: ring: %s\n", desc);
			described = 1;
		}
		/* Under callgrind a step runs some 50 times slower: the 100k
		 * spawns trip the stall detector, whose reports (each with a
		 * deadlock check) would land in the count a varying number of
		 * times. */
		if (fixed_ops) {
			keel_loop_set_stall(loop, 0, NULL, NULL);
			run_fixed(loop, b, fixed_ops);
		} else {
			measure(loop, b);
		}
		keel_loop_destroy(loop);
	}
	return 0;
}
