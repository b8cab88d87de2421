/* SPDX-License-Identifier: MIT */
/*
 * mt_mailbox.c: mailboxes, the runtime and the blocking pool across
 * threads, for ThreadSanitizer (a plain program: Criterion cannot start
 * under TSan, Criterion issue #274). Scenarios, each checked for loss and
 * duplication:
 *   - stream: loops on threads stream sequence-numbered messages into one
 *     receiver through a BLOCK mailbox of capacity 4 (owner-loop senders,
 *     other loops' senders, and a plain thread's try_send loop);
 *   - pingpong: request/reply between two loops of a runtime through two
 *     capacity-2 mailboxes;
 *   - cancel_close: a blocked remote sender cancelled, another woken by
 *     close with -EPIPE, the receiver draining then -EPIPE;
 *   - shutdown: a runtime whose loops hold sleeping tasks, receivers on
 *     empty mailboxes and tasks spawned from a plain thread, shut down
 *     from a plain thread;
 *   - pool: blocking jobs from every loop of a runtime, and a cancelled
 *     task that still waits for its job.
 * A watchdog ends the program (as a failure) if a scenario stalls.
 * Prints "mt_mailbox: N passed, M failed".
 */
#include <errno.h>
#include <keel.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "helpers/scenario.h"

#define MSG(v) ((void *)(uintptr_t)(v))
#define VAL(p) ((uintptr_t)(p))

/*
 * Plain helper threads stay alive until the end: a thread's doorbell ring
 * is unmapped when it exits, and liburing maps rings with raw syscalls
 * TSan does not see, so a new thread's ring at the same address would
 * look like a race with the old one.
 */
#define MAX_HELPERS 8
static pthread_t helpers[MAX_HELPERS];
static int nhelpers;
static int helpers_idle; /* helpers whose work is done */
static int exiting;

static void start_helper(void *(*fn)(void *))
{
	if (nhelpers < MAX_HELPERS &&
	    pthread_create(&helpers[nhelpers], NULL, fn, NULL) == 0)
		nhelpers++;
	else
		CHECK(!"cannot start a helper thread");
}

/* A helper's work is done: it only waits for the end now. */
static void *helper_done(void)
{
	kt_add(&helpers_idle, 1);
	while (!kt_load(&exiting))
		usleep(1000);
	return NULL;
}

/* Wait until every helper started so far is done with what it uses. */
static void wait_helpers(void)
{
	while (kt_load(&helpers_idle) < nhelpers)
		usleep(1000);
}

/* ---- loops on plain threads ------------------------------------------------
 */

#define MAX_LOOPS 4

static struct kt_lthread lts[MAX_LOOPS];

/* ---- stream ----------------------------------------------------------------
 */

#define STREAM_LOOPS	3
#define STREAM_PER_LOOP 2
#define STREAM_SENDERS	(STREAM_LOOPS * STREAM_PER_LOOP + 1)
#define STREAM_N	3000
#define STREAM_PLAIN_ID (STREAM_SENDERS - 1)

static struct keel_mailbox *stream_mb;
static uint64_t stream_last[STREAM_SENDERS];
static uint64_t stream_total, stream_bad;

struct seq_sender {
	struct keel_task task;
	uint64_t id, seq;
};

static int seq_sender_step(struct keel_task *t);
static KEEL_TASK_TYPE(seq_sender_task, struct seq_sender, task,
		      seq_sender_step);

static int seq_sender_step(struct keel_task *t)
{
	struct seq_sender *s = keel_container_of(t, struct seq_sender, task);

	KEEL_BEGIN(t);
	for (s->seq = 1; s->seq <= STREAM_N; s->seq++) {
		KEEL_AWAIT(
		    t, keel_mb_send(t, stream_mb, MSG(s->id << 32 | s->seq)));
		if (keel_res(t)) {
			CHECK_EQ(keel_res(t), 0);
			break;
		}
	}
	KEEL_END(t);
}

struct seq_receiver {
	struct keel_task task;
	void *msg;
	uint64_t n;
};

static int seq_receiver_step(struct keel_task *t);
static KEEL_TASK_TYPE(seq_receiver_task, struct seq_receiver, task,
		      seq_receiver_step);

static int seq_receiver_step(struct keel_task *t)
{
	struct seq_receiver *r =
	    keel_container_of(t, struct seq_receiver, task);

	KEEL_BEGIN(t);
	for (r->n = 0; r->n < (uint64_t)STREAM_SENDERS * STREAM_N; r->n++) {
		KEEL_AWAIT(t, keel_mb_recv(t, stream_mb, &r->msg));
		if (keel_res(t)) {
			CHECK_EQ(keel_res(t), 0);
			break;
		}
		uint64_t id = VAL(r->msg) >> 32, seq = VAL(r->msg) & 0xffffffff;

		if (id >= STREAM_SENDERS || seq != stream_last[id] + 1)
			stream_bad++;
		else
			stream_last[id] = seq;
		stream_total++;
	}
	CHECK_EQ(keel_mb_try_recv(stream_mb, &r->msg), -EAGAIN);
	KEEL_END(t);
}

static void stream_setup(struct keel_loop *loop, int index)
{
	for (int i = 0; i < STREAM_PER_LOOP; i++) {
		struct seq_sender *s =
		    keel_spawn(loop, &seq_sender_task, KEEL_PRIO_NORMAL);

		CHECK(s != NULL);
		if (s)
			s->id = (uint64_t)(index * STREAM_PER_LOOP + i);
	}
}

static void *stream_plain_sender(void *arg)
{
	(void)arg;
	for (uint64_t seq = 1; seq <= STREAM_N; seq++) {
		int r;

		while ((r = keel_mb_try_send(
			    stream_mb, MSG((uint64_t)STREAM_PLAIN_ID << 32 |
					   seq))) == -EAGAIN)
			sched_yield();
		CHECK_EQ(r, 0);
	}
	return helper_done();
}

static void scenario_stream(void)
{
	struct keel_mailbox_opts o = {.capacity = 4, .policy = KEEL_MB_BLOCK};
	struct keel_loop *loop = NULL;
	struct keel_mb_stats st;

	CHECK_EQ(keel_loop_create(&loop, NULL), 0);
	if (!loop)
		return;
	kt_watch_loop(loop, true);
	CHECK_EQ(keel_mailbox_new(loop, &o, &stream_mb), 0);
	CHECK(keel_spawn(loop, &seq_receiver_task, KEEL_PRIO_NORMAL) != NULL);
	stream_setup(loop, 0);
	kt_lthreads_start(lts, STREAM_LOOPS, stream_setup);
	start_helper(stream_plain_sender);
	CHECK_EQ(keel_loop_run(loop), 0);
	kt_lthreads_join(lts, STREAM_LOOPS);
	CHECK_EQ(stream_total, (uint64_t)STREAM_SENDERS * STREAM_N);
	CHECK_EQ(stream_bad, 0);
	for (int i = 0; i < STREAM_SENDERS; i++)
		CHECK_EQ(stream_last[i], STREAM_N);
	keel_mb_stats(stream_mb, &st);
	CHECK_EQ(st.sent, (uint64_t)STREAM_SENDERS * STREAM_N);
	CHECK_EQ(st.received, st.sent);
	CHECK_EQ(st.depth, 0);
	wait_helpers(); /* the plain sender is out of the mailbox */
	keel_mailbox_release(stream_mb);
	kt_watch_loop(loop, false);
	keel_loop_destroy(loop);
}

/* ---- pingpong (a runtime)
 * ----------------------------------------------------- */

#define PING_ROUNDS 2000

static struct keel_runtime *rt;
static struct keel_mailbox *ping_mb, *pong_mb;
static int ping_ready;
static int ping_bad;

/* On loop 1: owns ping_mb, answers each request v with 2v + 1. */
struct ponger {
	struct keel_task task;
	void *msg;
	int n;
};

static int ponger_step(struct keel_task *t);
static KEEL_TASK_TYPE(ponger_task, struct ponger, task, ponger_step);

static int ponger_step(struct keel_task *t)
{
	struct ponger *p = keel_container_of(t, struct ponger, task);
	struct keel_mailbox_opts o = {.capacity = 2, .policy = KEEL_MB_BLOCK};

	KEEL_BEGIN(t);
	CHECK_EQ(keel_mailbox_new(keel_task_loop(t), &o, &ping_mb), 0);
	kt_store(&ping_ready, 1);
	for (p->n = 0; p->n < PING_ROUNDS; p->n++) {
		KEEL_AWAIT(t, keel_mb_recv(t, ping_mb, &p->msg));
		if (keel_res(t)) {
			CHECK_EQ(keel_res(t), 0);
			break;
		}
		KEEL_AWAIT(t,
			   keel_mb_send(t, pong_mb, MSG(2 * VAL(p->msg) + 1)));
		CHECK_EQ(keel_res(t), 0);
	}
	KEEL_END(t);
}

/* On loop 2: owns pong_mb, sends 1..PING_ROUNDS, checks the answers. */
struct pinger {
	struct keel_task task;
	void *msg;
	int n, i;
};

static int pinger_step(struct keel_task *t);
static KEEL_TASK_TYPE(pinger_task, struct pinger, task, pinger_step);

static int pinger_step(struct keel_task *t)
{
	struct pinger *p = keel_container_of(t, struct pinger, task);

	KEEL_BEGIN(t);
	for (p->i = 0; !kt_load(&ping_ready) && p->i < 10000; p->i++)
		KEEL_AWAIT(t, keel_sleep(t, KT_MS(1)));
	CHECK(kt_load(&ping_ready));
	for (p->n = 1; p->n <= PING_ROUNDS; p->n++) {
		KEEL_AWAIT(t, keel_mb_send(t, ping_mb, MSG(p->n)));
		CHECK_EQ(keel_res(t), 0);
		KEEL_AWAIT(t, keel_mb_recv(t, pong_mb, &p->msg));
		CHECK_EQ(keel_res(t), 0);
		if (VAL(p->msg) != 2 * (uintptr_t)p->n + 1)
			kt_add(&ping_bad, 1);
	}
	KEEL_EXIT(t, p->n - 1);
}

struct ping_main {
	struct keel_task task;
	struct pinger *pinger;
};

static int ping_main_step(struct keel_task *t);
static KEEL_TASK_TYPE(ping_main_task, struct ping_main, task, ping_main_step);

static int pinger_status;

struct pinger_joiner {
	struct keel_task task;
	struct pinger *p;
};

static int pinger_joiner_step(struct keel_task *t);
static KEEL_TASK_TYPE(pinger_joiner_task, struct pinger_joiner, task,
		      pinger_joiner_step);

/* On loop 2: creates pong_mb, runs the pinger and joins it. */
static int pinger_joiner_step(struct keel_task *t)
{
	struct pinger_joiner *j =
	    keel_container_of(t, struct pinger_joiner, task);
	struct keel_mailbox_opts o = {.capacity = 2, .policy = KEEL_MB_BLOCK};

	KEEL_BEGIN(t);
	CHECK_EQ(keel_mailbox_new(keel_task_loop(t), &o, &pong_mb), 0);
	j->p = keel_spawn(keel_task_loop(t), &pinger_task,
			  KEEL_PRIO_NORMAL | KEEL_SPAWN_JOINABLE);
	CHECK(j->p != NULL);
	KEEL_AWAIT(t, keel_join(t, &j->p->task));
	kt_store(&pinger_status, keel_res(t));
	KEEL_END(t);
}

static int ping_main_step(struct keel_task *t)
{
	struct ping_main *m = keel_container_of(t, struct ping_main, task);

	KEEL_BEGIN(t);
	(void)m;
	CHECK_EQ(keel_spawn_on(keel_runtime_loop(rt, 2), &pinger_joiner_task,
			       KEEL_PRIO_NORMAL, NULL, NULL),
		 0);
	CHECK_EQ(keel_spawn_on(keel_runtime_loop(rt, 1), &ponger_task,
			       KEEL_PRIO_NORMAL, NULL, NULL),
		 0);
	while (!kt_load(&pinger_status))
		KEEL_AWAIT(t, keel_sleep(t, KT_MS(1)));
	KEEL_EXIT(t, kt_load(&pinger_status));
}

static struct keel_runtime *rt_new(unsigned threads)
{
	struct keel_runtime_opts o = {.threads = threads, .no_signals = true};
	struct keel_runtime *r = NULL;

	CHECK_EQ(keel_runtime_create(&r, &o), 0);
	return r;
}

static void scenario_pingpong(void)
{
	rt = rt_new(3);
	if (!rt)
		return;
	CHECK_EQ(keel_runtime_run(rt, &ping_main_task, NULL, NULL),
		 PING_ROUNDS);
	CHECK_EQ(ping_bad, 0);
	keel_runtime_destroy(rt);
	keel_mailbox_release(ping_mb);
	keel_mailbox_release(pong_mb);
}

/* ---- cancel_close
 * ------------------------------------------------------------- */

static struct keel_mailbox *cc_mb;
static int cc_phase;
static int cc_cancelled_res, cc_closed_res, cc_after_res, cc_recv_end;
static int cc_got[8], cc_ngot;

struct one_sender {
	struct keel_task task;
	int v;
};

static int one_sender_step(struct keel_task *t);
static KEEL_TASK_TYPE(one_sender_task, struct one_sender, task,
		      one_sender_step);

static int one_sender_step(struct keel_task *t)
{
	struct one_sender *s = keel_container_of(t, struct one_sender, task);

	KEEL_BEGIN(t);
	KEEL_AWAIT(t, keel_mb_send(t, cc_mb, MSG(s->v)));
	KEEL_EXIT(t, keel_res(t));
}

/*
 * On loop 1: fills the remote queue (2), sender A waits with 100 and is
 * cancelled; sender B waits with 200 and is failed by the close.
 */
struct cc_script {
	struct keel_task task;
	struct one_sender *a, *b;
	int i;
};

static int cc_script_step(struct keel_task *t);
static KEEL_TASK_TYPE(cc_script_task, struct cc_script, task, cc_script_step);

static int cc_script_step(struct keel_task *t)
{
	struct cc_script *s = keel_container_of(t, struct cc_script, task);

	KEEL_BEGIN(t);
	for (s->i = 1; s->i <= 2; s->i++) {
		KEEL_AWAIT(t, keel_mb_send(t, cc_mb, MSG(s->i)));
		CHECK_EQ(keel_res(t), 0);
	}
	s->a = keel_spawn(t->loop, &one_sender_task,
			  KEEL_PRIO_NORMAL | KEEL_SPAWN_JOINABLE);
	s->b = keel_spawn(t->loop, &one_sender_task,
			  KEEL_PRIO_NORMAL | KEEL_SPAWN_JOINABLE);
	CHECK(s->a && s->b);
	s->a->v = 100;
	s->b->v = 200;
	KEEL_YIELD(t);
	CHECK_EQ(keel_task_cancel(&s->a->task), 0);
	KEEL_AWAIT(t, keel_join(t, &s->a->task));
	cc_cancelled_res = keel_res(t);
	kt_store(&cc_phase, 1);
	KEEL_AWAIT(t, keel_join(t, &s->b->task));
	cc_closed_res = keel_res(t);
	KEEL_AWAIT(t, keel_mb_send(t, cc_mb, MSG(300)));
	cc_after_res = keel_res(t);
	KEEL_END(t);
}

static void cc_setup(struct keel_loop *loop, int index)
{
	(void)index;
	CHECK(keel_spawn(loop, &cc_script_task, KEEL_PRIO_NORMAL) != NULL);
}

/* On loop 0: once A is cancelled, closes, then drains. */
struct cc_owner {
	struct keel_task task;
	void *msg;
	int i;
};

static int cc_owner_step(struct keel_task *t);
static KEEL_TASK_TYPE(cc_owner_task, struct cc_owner, task, cc_owner_step);

static int cc_owner_step(struct keel_task *t)
{
	struct cc_owner *o = keel_container_of(t, struct cc_owner, task);

	KEEL_BEGIN(t);
	for (o->i = 0; !kt_load(&cc_phase) && o->i < 20000; o->i++)
		KEEL_AWAIT(t, keel_sleep(t, KT_MS(1)));
	CHECK(kt_load(&cc_phase));
	KEEL_AWAIT(t, keel_sleep(t, KT_MS(5))); /* B waits by now */
	keel_mb_close(cc_mb);
	for (;;) {
		KEEL_AWAIT(t, keel_mb_recv(t, cc_mb, &o->msg));
		if (keel_res(t))
			break;
		if (cc_ngot < 8)
			cc_got[cc_ngot] = (int)VAL(o->msg);
		cc_ngot++;
	}
	cc_recv_end = keel_res(t);
	KEEL_END(t);
}

static void scenario_cancel_close(void)
{
	struct keel_mailbox_opts o = {.capacity = 2, .policy = KEEL_MB_BLOCK};
	struct keel_loop *loop = NULL;

	CHECK_EQ(keel_loop_create(&loop, NULL), 0);
	if (!loop)
		return;
	kt_watch_loop(loop, true);
	CHECK_EQ(keel_mailbox_new(loop, &o, &cc_mb), 0);
	CHECK(keel_spawn(loop, &cc_owner_task, KEEL_PRIO_NORMAL) != NULL);
	kt_lthreads_start(lts, 2, cc_setup);
	CHECK_EQ(keel_loop_run(loop), 0);
	kt_lthreads_join(lts, 2);
	CHECK_EQ(cc_cancelled_res, -ECANCELED);
	CHECK_EQ(cc_closed_res, -EPIPE);
	CHECK_EQ(cc_after_res, -EPIPE);
	CHECK_EQ(cc_recv_end, -EPIPE);
	CHECK_EQ(cc_ngot, 2);
	CHECK_EQ(cc_got[0], 1);
	CHECK_EQ(cc_got[1], 2);
	keel_mailbox_release(cc_mb);
	kt_watch_loop(loop, false);
	keel_loop_destroy(loop);
}

/* ---- shutdown (a runtime) ---------------------------------------------------
 */

#define SD_LOOPS 3

static int sd_started;
static int sd_sleep_res[SD_LOOPS], sd_recv_res[SD_LOOPS];
static int sd_spawned_res[SD_LOOPS];
static int sd_main_res;

struct sd_task {
	struct keel_task task;
	int i, kind;
	struct keel_mailbox *mb;
	void *msg;
};

static int sd_task_step(struct keel_task *t);
static KEEL_TASK_TYPE(sd_task_type, struct sd_task, task, sd_task_step);

static int sd_task_step(struct keel_task *t)
{
	struct sd_task *s = keel_container_of(t, struct sd_task, task);

	KEEL_BEGIN(t);
	if (s->kind == 1) {
		/* A receiver on an empty mailbox of its own loop. */
		CHECK_EQ(keel_mailbox_new(keel_task_loop(t), NULL, &s->mb), 0);
		kt_add(&sd_started, 1);
		KEEL_AWAIT(t, keel_mb_recv(t, s->mb, &s->msg));
		kt_store(&sd_recv_res[s->i], keel_res(t));
		keel_mailbox_release(s->mb);
		KEEL_END(t);
	}
	kt_add(&sd_started, 1);
	KEEL_AWAIT(t, keel_sleep(t, KT_MS(3600 * 1000)));
	kt_store(s->kind == 0 ? &sd_sleep_res[s->i] : &sd_spawned_res[s->i],
		 keel_res(t));
	KEEL_END(t);
}

struct sd_arg {
	int i, kind;
};

static struct sd_arg sd_args[SD_LOOPS][3];

static void sd_init(void *frame, void *arg)
{
	struct sd_task *s = frame;
	struct sd_arg *a = arg;

	s->i = a->i;
	s->kind = a->kind;
}

/* A plain thread: spawns kind-2 sleepers on every loop. */
static void *sd_spawner(void *arg)
{
	(void)arg;
	for (int i = 0; i < SD_LOOPS; i++)
		CHECK_EQ(keel_spawn_on(keel_runtime_loop(rt, (unsigned)i),
				       &sd_task_type, KEEL_PRIO_NORMAL, sd_init,
				       &sd_args[i][2]),
			 0);
	return helper_done();
}

/* A plain thread: waits for every task, then shuts the runtime down. */
static void *sd_stopper(void *arg)
{
	(void)arg;
	for (int i = 0; kt_load(&sd_started) < 3 * SD_LOOPS && i < 100000; i++)
		usleep(1000);
	CHECK_EQ(kt_load(&sd_started), 3 * SD_LOOPS);
	usleep(10000);
	keel_runtime_shutdown(rt);
	keel_runtime_shutdown(rt); /* twice is harmless */
	return helper_done();
}

struct sd_main {
	struct keel_task task;
	int i;
};

static int sd_main_step(struct keel_task *t);
static KEEL_TASK_TYPE(sd_main_task, struct sd_main, task, sd_main_step);

static int sd_main_step(struct keel_task *t)
{
	struct sd_main *m = keel_container_of(t, struct sd_main, task);

	KEEL_BEGIN(t);
	for (m->i = 0; m->i < SD_LOOPS; m->i++) {
		for (int k = 0; k < 3; k++) {
			sd_args[m->i][k].i = m->i;
			sd_args[m->i][k].kind = k;
		}
		for (int k = 0; k < 2; k++)
			CHECK_EQ(
			    keel_spawn_on(keel_runtime_loop(rt, (unsigned)m->i),
					  &sd_task_type, KEEL_PRIO_NORMAL,
					  sd_init, &sd_args[m->i][k]),
			    0);
	}
	start_helper(sd_spawner);
	start_helper(sd_stopper);
	KEEL_AWAIT(t, keel_sleep(t, KT_MS(3600 * 1000)));
	sd_main_res = keel_res(t);
	KEEL_EXIT(t, 11);
}

static void scenario_shutdown(void)
{
	rt = rt_new(SD_LOOPS);
	if (!rt)
		return;
	CHECK_EQ(keel_runtime_run(rt, &sd_main_task, NULL, NULL), 11);
	wait_helpers(); /* they are done with rt */
	CHECK_EQ(sd_main_res, -ECANCELED);
	for (int i = 0; i < SD_LOOPS; i++) {
		CHECK_EQ(sd_sleep_res[i], -ECANCELED);
		CHECK_EQ(sd_recv_res[i], -ECANCELED);
		CHECK_EQ(sd_spawned_res[i], -ECANCELED);
	}
	keel_runtime_destroy(rt);
}

/* ---- pool (a runtime) -------------------------------------------------------
 */

#define POOL_LOOPS 3
#define POOL_TASKS 3
#define POOL_JOBS  20

static int pool_ok, pool_bad, pool_release, pool_job_done;
static int pool_cancel_res = 12345, pool_done_at_resume = -1;
static int pool_cancel_after = 12345;

struct pool_arg {
	int in, out;
};

static int square_job(void *p)
{
	struct pool_arg *a = p;

	a->out = a->in * a->in;
	return a->out + 1;
}

struct pool_user {
	struct keel_task task;
	struct pool_arg *arg;
	struct keel_loop *home;
	int i;
};

static int pool_user_step(struct keel_task *t);
static KEEL_TASK_TYPE(pool_user_task, struct pool_user, task, pool_user_step);

static int pool_user_step(struct keel_task *t)
{
	struct pool_user *u = keel_container_of(t, struct pool_user, task);

	KEEL_BEGIN(t);
	u->home = keel_loop_current();
	for (u->i = 0; u->i < POOL_JOBS; u->i++) {
		u->arg = malloc(sizeof(*u->arg));
		CHECK(u->arg != NULL);
		u->arg->in = u->i + 3;
		u->arg->out = -1;
		KEEL_AWAIT(t, keel_blocking(t, square_job, u->arg));
		if (keel_res(t) == u->arg->in * u->arg->in + 1 &&
		    u->arg->out == u->arg->in * u->arg->in &&
		    keel_loop_current() == u->home)
			kt_add(&pool_ok, 1);
		else
			kt_add(&pool_bad, 1);
		free(u->arg);
	}
	KEEL_END(t);
}

/* A job that holds its arg until released. */
static int slow_job(void *p)
{
	int *v = p;

	for (int i = 0; i < 20000 && !kt_load(&pool_release); i++)
		usleep(500);
	usleep(10000);
	*v = 99; /* the arg is still the job's */
	kt_store(&pool_job_done, 1);
	return 99;
}

struct pool_victim {
	struct keel_task task;
	int *arg;
};

static int pool_victim_step(struct keel_task *t);
static KEEL_TASK_TYPE(pool_victim_task, struct pool_victim, task,
		      pool_victim_step);

static int pool_victim_step(struct keel_task *t)
{
	struct pool_victim *v = keel_container_of(t, struct pool_victim, task);

	KEEL_BEGIN(t);
	v->arg = malloc(sizeof(*v->arg));
	CHECK(v->arg != NULL);
	*v->arg = 0;
	KEEL_AWAIT(t, keel_blocking(t, slow_job, v->arg));
	pool_done_at_resume = kt_load(&pool_job_done);
	pool_cancel_res = keel_res(t);
	free(v->arg);
	KEEL_AWAIT(t, keel_nop(t));
	pool_cancel_after = keel_res(t);
	KEEL_END(t);
}

struct pool_main {
	struct keel_task task;
	struct pool_victim *victim;
	int i, k, want;
};

static int pool_main_step(struct keel_task *t);
static KEEL_TASK_TYPE(pool_main_task, struct pool_main, task, pool_main_step);

static int pool_main_step(struct keel_task *t)
{
	struct pool_main *m = keel_container_of(t, struct pool_main, task);

	KEEL_BEGIN(t);
	for (m->i = 0; m->i < POOL_LOOPS; m->i++)
		for (m->k = 0; m->k < POOL_TASKS; m->k++)
			CHECK_EQ(
			    keel_spawn_on(keel_runtime_loop(rt, (unsigned)m->i),
					  &pool_user_task, KEEL_PRIO_NORMAL,
					  NULL, NULL),
			    0);
	m->victim = keel_spawn(keel_task_loop(t), &pool_victim_task,
			       KEEL_PRIO_NORMAL | KEEL_SPAWN_JOINABLE);
	CHECK(m->victim != NULL);
	KEEL_AWAIT(t, keel_sleep(t, KT_MS(20))); /* its job runs */
	CHECK_EQ(keel_task_cancel(&m->victim->task), 0);
	KEEL_AWAIT(t, keel_sleep(t, KT_MS(20)));
	CHECK_EQ(pool_cancel_res, 12345); /* not resumed: the job holds */
	kt_store(&pool_release, 1);
	KEEL_AWAIT(t, keel_join(t, &m->victim->task));
	m->want = POOL_LOOPS * POOL_TASKS * POOL_JOBS;
	for (m->i = 0;
	     kt_load(&pool_ok) + kt_load(&pool_bad) < m->want && m->i < 20000;
	     m->i++)
		KEEL_AWAIT(t, keel_sleep(t, KT_MS(1)));
	KEEL_EXIT(t, kt_load(&pool_ok));
}

static void scenario_pool(void)
{
	rt = rt_new(POOL_LOOPS);
	if (!rt)
		return;
	CHECK_EQ(keel_runtime_run(rt, &pool_main_task, NULL, NULL),
		 POOL_LOOPS * POOL_TASKS * POOL_JOBS);
	CHECK_EQ(pool_bad, 0);
	CHECK_EQ(pool_done_at_resume, 1);
	CHECK(pool_cancel_res == 99 || pool_cancel_res == -ECANCELED);
	CHECK_EQ(pool_cancel_after, -ECANCELED);
	keel_runtime_destroy(rt);
}

int main(void)
{
	kt_scenarios_start("mt_mailbox");
	kt_scenario_run("stream", scenario_stream);
	kt_scenario_run("pingpong", scenario_pingpong);
	kt_scenario_run("cancel_close", scenario_cancel_close);
	kt_scenario_run("shutdown", scenario_shutdown);
	kt_scenario_run("pool", scenario_pool);
	kt_store(&exiting, 1);
	for (int i = 0; i < nhelpers; i++)
		pthread_join(helpers[i], NULL);
	return kt_scenarios_finish();
}
