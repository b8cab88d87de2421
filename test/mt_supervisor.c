/* SPDX-License-Identifier: MIT */
/*
 * mt_supervisor.c: supervision across the loops of a three-thread runtime,
 * as a plain program for ThreadSanitizer (Criterion cannot start under it).
 *
 * The tree, its supervisor on loop 0 and the children spread out:
 *   top (one_for_one, loop 0)
 *     actor     an actor on loop 1 that panics on one message; asked from
 *               all three loops at once while it panics and restarts
 *     flaky     a worker on loop 2 that fails its first three lives
 *     stubborn  a worker on loop 1 that ignores its cancellation (a recv
 *               behind a shield): killed from loop 0 after 20 ms
 *     pool      simple_one_for_one on loop 2, its children on loop 1,
 *               started and terminated from loop 0
 *     doomed    a transient supervisor on loop 2 whose worker (loop 1)
 *               always fails: it escalates, and stays down
 * Then the runtime shuts down (SIGTERM's path): the tree stops in order
 * and nothing is restarted on the way out.
 */
#include <errno.h>
#include <keel.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "helpers/scenario.h"

#define M_PANIC 1000000
#define ASKS	300
#define POOL	40

static struct keel_runtime *rt;
static struct keel_sup *top;

/* ---- the actor ---------------------------------------------------------- */

static int behave(struct keel_actor_ctx *ctx, struct keel_envelope *m)
{
	uintptr_t v = (uintptr_t)m->payload;

	(void)ctx;
	if (v == M_PANIC)
		keel_panic("asked to panic");
	if (keel_envelope_is_ask(m))
		keel_actor_reply(m, (void *)(v + 1));
	return 0;
}

static int actor_start(struct keel_child_start *cs, void *arg)
{
	struct keel_actor_spec spec = {.name = "mt-actor",
				       .behaviour = behave,
				       .mailbox = {.capacity = 8}};

	(void)arg;
	return keel_child_spawn_actor(cs, &spec, NULL);
}

/* ---- workers ------------------------------------------------------------ */

enum { W_RUN, W_FAIL, W_STUBBORN };

struct worker {
	struct keel_task task;
	int mode;
	int fds[2];
	char buf[16];
	struct keel_shield shield;
};

static int stubborn_cleanups; /* atomic */
static int wrong_loop;	      /* atomic */

static void stubborn_cleanup(void *arg)
{
	struct worker *w = arg;

	close(w->fds[0]);
	close(w->fds[1]);
	__atomic_add_fetch(&stubborn_cleanups, 1, __ATOMIC_RELAXED);
}

static int worker_step(struct keel_task *t)
{
	struct worker *w = keel_container_of(t, struct worker, task);

	KEEL_BEGIN(t);
	if (w->mode == W_FAIL)
		KEEL_EXIT(t, -EIO);
	if (w->mode == W_STUBBORN) {
		if (socketpair(AF_UNIX, SOCK_STREAM, 0, w->fds))
			KEEL_EXIT(t, -errno);
		keel_defer(t, stubborn_cleanup, w);
		keel_shield_begin(t, &w->shield, UINT64_MAX);
		for (;;)
			KEEL_AWAIT(t, keel_recv(t, w->fds[0], w->buf,
						sizeof(w->buf), 0));
	}
	KEEL_AWAIT(t, keel_sleep(t, KT_MS(3600000)));
	KEEL_END(t);
}

static KEEL_TASK_TYPE(worker_task, struct worker, task, worker_step);

static int flaky_starts; /* atomic */

/* arg: the mode; "flaky" fails its first three lives. */
static int worker_start(struct keel_child_start *cs, void *arg)
{
	struct worker *w;
	int mode = (int)(intptr_t)arg;

	if (keel_loop_current() != keel_child_start_loop(cs))
		__atomic_add_fetch(&wrong_loop, 1, __ATOMIC_RELAXED);
	if (mode == -1)
		mode =
		    __atomic_fetch_add(&flaky_starts, 1, __ATOMIC_RELAXED) < 3
			? W_FAIL
			: W_RUN;
	w = keel_child_spawn(cs, &worker_task, 0);
	if (!w)
		return -ENOMEM;
	w->mode = mode;
	return 0;
}

static int sup_start(struct keel_child_start *cs, void *arg)
{
	return keel_child_spawn_supervisor(cs, arg);
}

/* ---- askers on every loop ----------------------------------------------- */

static int asks_ok, asks_down, asks_bad; /* atomics */
static int askers_done;			 /* atomic */

struct asker {
	struct keel_task task;
	struct keel_actor *a;
	int i;
	uintptr_t v; /* what it asks: it must survive the await */
	void *reply;
};

static int asker_step(struct keel_task *t)
{
	struct asker *k = keel_container_of(t, struct asker, task);

	KEEL_BEGIN(t);
	for (k->i = 1; k->i <= ASKS; k->i++) {
		k->v = k->i % 50 == 0 ? M_PANIC : (uintptr_t)k->i;
		KEEL_AWAIT(t, keel_actor_ask(t, k->a, (void *)k->v,
					     kt_now_ns() + KT_MS(2000),
					     &k->reply));
		if (keel_res(t) == 0 && (uintptr_t)k->reply == k->v + 1)
			__atomic_add_fetch(&asks_ok, 1, __ATOMIC_RELAXED);
		else if (keel_res(t) == -EPIPE)
			__atomic_add_fetch(&asks_down, 1, __ATOMIC_RELAXED);
		else
			__atomic_add_fetch(&asks_bad, 1, __ATOMIC_RELAXED);
		if (keel_res(t) == -EPIPE)
			KEEL_AWAIT(t, keel_sleep(t, KT_MS(1) / 10));
	}
	keel_actor_release(k->a);
	__atomic_add_fetch(&askers_done, 1, __ATOMIC_RELEASE);
	KEEL_END(t);
}

static KEEL_TASK_TYPE(asker_task, struct asker, task, asker_step);

static void asker_init(void *frame, void *arg)
{
	((struct asker *)frame)->a = arg;
}

/* ---- main --------------------------------------------------------------- */

static struct keel_child_info find(struct keel_sup *s, const char *name)
{
	struct keel_child_info c[16];
	uint32_t n = keel_sup_which_children(s, c, 16);

	for (uint32_t i = 0; i < n && i < 16; i++)
		if (!strcmp(c[i].name, name))
			return c[i];
	memset(&c[0], 0, sizeof(c[0]));
	return c[0];
}

struct main_frame {
	struct keel_task task;
	struct keel_child_id ids[POOL];
	struct keel_child_id id;
	struct keel_sup *pool;
	struct keel_actor *actor;
	int i, polls;
	uint64_t restarts_before;
	struct keel_shield shield;
};

static int main_step(struct keel_task *t)
{
	struct main_frame *m = keel_container_of(t, struct main_frame, task);
	struct keel_child_info ci;
	struct keel_sup_stats st;

	KEEL_BEGIN(t);
	kt_scenario_begin(
	    "the tree starts across loops, flaky restarted there");
	/* Up: every child running, flaky through its failures. */
	while (m->polls++ < 5000 &&
	       !((ci = find(top, "flaky")).state == KEEL_CHILD_RUNNING &&
		 ci.restarts == 3 &&
		 find(top, "pool").state == KEEL_CHILD_RUNNING &&
		 find(top, "actor").state == KEEL_CHILD_RUNNING))
		KEEL_AWAIT(t, keel_sleep(t, KT_MS(1)));
	CHECK(find(top, "flaky").restarts == 3);
	CHECK(find(top, "stubborn").state == KEEL_CHILD_RUNNING);
	kt_scenario_begin(
	    "the actor's stable handle, to askers on three loops");
	/* Askers on all three loops, at the actor on loop 1. */
	keel_sup_child_id(top, "actor", &m->id);
	for (m->i = 0; m->i < 3; m->i++) {
		struct keel_actor *a = keel_sup_child_actor(top, m->id);

		CHECK(a != NULL);
		if (a)
			keel_spawn_on(keel_runtime_loop(rt, (unsigned)m->i),
				      &asker_task, 0, asker_init, a);
	}
	kt_scenario_begin("a pool on loop 2, its children on loop 1, driven "
			  "from loop 0");
	/* Meanwhile the pool on loop 2: children on loop 1. */
	keel_sup_child_id(top, "pool", &m->id);
	m->pool = keel_sup_child_sup(top, m->id);
	CHECK(m->pool != NULL);
	for (m->i = 0; m->pool && m->i < POOL; m->i++) {
		KEEL_AWAIT(
		    t, keel_sup_start_child(t, m->pool, NULL, &m->ids[m->i]));
		CHECK(keel_res(t) == 0);
	}
	for (m->i = 0; m->pool && m->i < POOL; m->i += 2) {
		KEEL_AWAIT(t,
			   keel_sup_terminate_child(t, m->pool, m->ids[m->i]));
		CHECK(keel_res(t) == 0);
	}
	if (m->pool) {
		keel_sup_stats(m->pool, &st);
		CHECK(st.workers == POOL / 2);
		CHECK(st.active == POOL / 2);
	}
	while (__atomic_load_n(&askers_done, __ATOMIC_ACQUIRE) < 3 &&
	       m->polls++ < 20000)
		KEEL_AWAIT(t, keel_sleep(t, KT_MS(1)));
	kt_scenario_begin(
	    "asks from three loops to an actor child that panics");
	/* Every ask answered: a reply, or -EPIPE while the actor was down
	 * (never a timeout, never someone else's reply). Each panic cost one
	 * restart and dropped the message it was handling. */
	CHECK(__atomic_load_n(&asks_bad, __ATOMIC_RELAXED) == 0);
	CHECK(asks_ok + asks_down == 3 * ASKS);
	ci = find(top, "actor");
	CHECK(ci.restarts >= 1 && ci.restarts <= 3 * (ASKS / 50));
	CHECK(ci.dropped == (uint64_t)ci.restarts);
	CHECK(asks_down >= (int)ci.restarts);
	CHECK(asks_ok >= 3 * ASKS / 2);
	kt_scenario_begin("a child supervisor escalates across loops");
	/* doomed escalated, and being transient stays down. */
	ci = find(top, "doomed");
	CHECK(ci.state == KEEL_CHILD_STOPPED);
	CHECK(ci.last_exit.kind == KEEL_EXIT_SHUTDOWN);
	CHECK(ci.last_exit.status == -ESHUTDOWN);
	keel_sup_stats(top, &st);
	m->restarts_before = st.restarts;
	kt_scenario_begin("runtime shutdown: in order, nothing restarted, the "
			  "stubborn child killed across threads");
	/* The runtime's shutdown: this task's own token goes too. */
	keel_runtime_shutdown(rt);
	keel_shield_begin(t, &m->shield, UINT64_MAX);
	KEEL_AWAIT(t, keel_sup_wait(t, top));
	CHECK(keel_res(t) == -ESHUTDOWN);
	keel_shield_end(t, &m->shield);
	keel_sup_stats(top, &st);
	CHECK(st.restarts == m->restarts_before);
	CHECK(st.state == KEEL_SUP_EXITED);
	ci = find(top, "stubborn");
	CHECK(ci.kills == 1);
	CHECK(ci.last_exit.killed);
	if (m->pool)
		keel_sup_release(m->pool);
	KEEL_END(t);
}

static KEEL_TASK_TYPE(main_task, struct main_frame, task, main_step);

static void main_init(void *frame, void *arg)
{
	static struct keel_child_spec doomed_kid, pool_tmpl;
	static struct keel_sup_spec doomed, pool;
	struct keel_child_spec kids[5];
	struct keel_sup_spec spec;
	struct keel_loop *l1 = keel_runtime_loop(rt, 1);
	struct keel_loop *l2 = keel_runtime_loop(rt, 2);

	(void)frame;
	(void)arg;
	doomed_kid = (struct keel_child_spec){.name = "always-fails",
					      .start = worker_start,
					      .arg = (void *)(intptr_t)W_FAIL,
					      .loop = l1};
	doomed = (struct keel_sup_spec){.name = "doomed",
					.intensity = 1,
					.period_ms = 60000,
					.children = &doomed_kid,
					.nchildren = 1};
	pool_tmpl = (struct keel_child_spec){.name = "pooled",
					     .start = worker_start,
					     .arg = (void *)(intptr_t)W_RUN,
					     .restart = KEEL_TEMPORARY,
					     .loop = l1};
	pool = (struct keel_sup_spec){.name = "pool",
				      .strategy = KEEL_SIMPLE_ONE_FOR_ONE,
				      .intensity = 10,
				      .period_ms = 1000,
				      .children = &pool_tmpl,
				      .nchildren = 1};
	kids[0] = (struct keel_child_spec){.name = "actor",
					   .start = actor_start,
					   .keep_mailbox = true,
					   .loop = l1};
	kids[1] = (struct keel_child_spec){.name = "flaky",
					   .start = worker_start,
					   .arg = (void *)(intptr_t)-1,
					   .loop = l2};
	kids[2] = (struct keel_child_spec){.name = "stubborn",
					   .start = worker_start,
					   .arg = (void *)(intptr_t)W_STUBBORN,
					   .shutdown_ms = 20,
					   .loop = l1};
	kids[3] = (struct keel_child_spec){.name = "pool",
					   .start = sup_start,
					   .arg = &pool,
					   .type = KEEL_SUPERVISOR,
					   .loop = l2};
	kids[4] = (struct keel_child_spec){.name = "doomed",
					   .start = sup_start,
					   .arg = &doomed,
					   .restart = KEEL_TRANSIENT,
					   .type = KEEL_SUPERVISOR,
					   .loop = l2};
	spec = (struct keel_sup_spec){.name = "top",
				      .intensity = 1000,
				      .period_ms = 1000,
				      .children = kids,
				      .nchildren = 5};
	CHECK(keel_sup_start(keel_runtime_loop(rt, 0), &spec, &top) == 0);
}

int main(void)
{
	struct keel_runtime_opts o = {.threads = 3, .no_signals = true};
	int st;

	kt_scenarios_start("mt_supervisor");
	if (keel_runtime_create(&rt, &o))
		return 1;
	st = keel_runtime_run(rt, &main_task, main_init, NULL);
	keel_runtime_destroy(rt);
	CHECK(st == 0);
	CHECK(__atomic_load_n(&stubborn_cleanups, __ATOMIC_RELAXED) == 1);
	CHECK(__atomic_load_n(&wrong_loop, __ATOMIC_RELAXED) == 0);
	printf("asks ok %d, down %d, bad %d; flaky starts %d\n", asks_ok,
	       asks_down, asks_bad, flaky_starts);
	if (top)
		keel_sup_release(top);
	return kt_scenarios_finish();
}
