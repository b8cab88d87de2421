/* SPDX-License-Identifier: MIT */
/*
 * mt_actor.c: actors, asks and oneshots across threads, as a plain program for
 * ThreadSanitizer (Criterion cannot start under it): cross-loop asks and
 * waiting tells through a 2-slot mailbox, tells from plain threads, and 2,000
 * cross-thread oneshots.
 */
#include <errno.h>
#include <keel.h>
#include <keel/supervisor.h>
#include <keel/sync.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "helpers/scenario.h"

static uint64_t handled;
static int behave(struct keel_actor_ctx *ctx, struct keel_envelope *m)
{
	uintptr_t v = (uintptr_t)m->payload;
	(void)ctx;
	handled++;
	if (v == 999999)
		return KEEL_ACTOR_STOP;
	if (keel_envelope_is_ask(m))
		keel_actor_reply(m, (void *)(v + 1));
	return 0;
}

static struct keel_actor *actor;
static int asks_ok, tells_ok;

struct asker {
	struct keel_task task;
	int i;
	int id;
	void *reply;
};
static int asker_step(struct keel_task *t)
{
	struct asker *a = keel_container_of(t, struct asker, task);
	KEEL_BEGIN(t);
	for (a->i = 0; a->i < 300; a->i++) {
		KEEL_AWAIT(t, keel_actor_ask(t, actor, (void *)(uintptr_t)a->i,
					     kt_now_ns() + 2000000000ull,
					     &a->reply));
		if (keel_res(t) == 0 &&
		    (uintptr_t)a->reply == (uintptr_t)a->i + 1)
			__atomic_add_fetch(&asks_ok, 1, __ATOMIC_RELAXED);
		else
			fprintf(stderr, "ask %d: %d\n", a->i, keel_res(t));
		KEEL_AWAIT(
		    t, keel_actor_tell_await(t, actor, (void *)(uintptr_t)5));
		if (keel_res(t) == 0)
			__atomic_add_fetch(&tells_ok, 1, __ATOMIC_RELAXED);
	}
	KEEL_END(t);
}
static KEEL_TASK_TYPE(asker_task, struct asker, task, asker_step);

static void *thread_teller(void *arg)
{
	(void)arg;
	for (int i = 0; i < 2000; i++) {
		int r;
		while ((r = keel_actor_tell(actor, (void *)(uintptr_t)7)) ==
		       -EAGAIN)
			sched_yield();
		CHECK(r == 0);
	}
	return NULL;
}

struct main_t {
	struct keel_task task;
	struct keel_runtime *rt;
	int i;
	pthread_t th[2];
	struct keel_latch *l;
};
static int main_step(struct keel_task *t)
{
	struct main_t *m = keel_container_of(t, struct main_t, task);
	struct keel_actor_spec s = {.behaviour = behave,
				    .mailbox = {.capacity = 2}};
	KEEL_BEGIN(t);
	CHECK(keel_actor_spawn_on(keel_runtime_loop(m->rt, 1), &s, NULL,
				  &actor) == 0);
	for (m->i = 0; m->i < 3; m->i++)
		keel_spawn_on(keel_runtime_loop(m->rt, m->i % 3), &asker_task,
			      0, NULL, NULL);
	pthread_create(&m->th[0], NULL, thread_teller, NULL);
	pthread_create(&m->th[1], NULL, thread_teller, NULL);
	while (__atomic_load_n(&asks_ok, __ATOMIC_RELAXED) + 0 < 900 &&
	       m->i++ < 3000)
		KEEL_AWAIT(t, keel_sleep(t, 2000000));
	pthread_join(m->th[0], NULL);
	pthread_join(m->th[1], NULL);
	keel_actor_stop(actor);
	KEEL_AWAIT(t, keel_sleep(t, 20000000));
	CHECK(!keel_actor_alive(actor));
	keel_actor_release(actor);
	KEEL_END(t);
}
static KEEL_TASK_TYPE(main_task, struct main_t, task, main_step);
static void init(void *f, void *arg)
{
	((struct main_t *)f)->rt = arg;
}

/* oneshots from a plain thread */
static struct keel_oneshot *slots[2000];
static int published;
static void *os_sender(void *arg)
{
	(void)arg;
	for (int i = 0; i < 2000; i++) {
		while (__atomic_load_n(&published, __ATOMIC_ACQUIRE) <= i)
			;
		keel_oneshot_send(slots[i], (void *)(uintptr_t)(i + 1));
		keel_oneshot_release(slots[i]);
	}
	return NULL;
}
static int os_ok;
struct rx {
	struct keel_task task;
	int i;
	struct keel_oneshot *os;
	void *out;
};
static int rx_step(struct keel_task *t)
{
	struct rx *r = keel_container_of(t, struct rx, task);
	KEEL_BEGIN(t);
	for (r->i = 0; r->i < 2000; r->i++) {
		keel_oneshot_new(t->loop, NULL, NULL, &r->os);
		slots[r->i] = keel_oneshot_ref(r->os);
		__atomic_store_n(&published, r->i + 1, __ATOMIC_RELEASE);
		if (r->i & 1)
			KEEL_YIELD(t);
		/* every 4th: a deadline that may beat the send */
		KEEL_AWAIT(t, keel_oneshot_recv_until(t, r->os, &r->out,
						      (r->i % 4 == 0)
							  ? kt_now_ns() + 1000
							  : UINT64_MAX));
		if (keel_res(t) == 0 &&
		    (uintptr_t)r->out == (uintptr_t)r->i + 1)
			os_ok++;
		else
			CHECK_EQ(keel_res(t),
				 -ETIMEDOUT); /* or a wrong value */
		keel_oneshot_release(r->os);
	}
	KEEL_END(t);
}
static KEEL_TASK_TYPE(rx_task, struct rx, task, rx_step);

int main(void)
{
	struct keel_runtime_opts o = {.threads = 3, .no_signals = true};
	struct keel_runtime *rt;

	kt_scenarios_start("mt_actor");
	kt_scenario_begin("asks and tells across loops and threads");
	if (keel_runtime_create(&rt, &o))
		return 1;
	int st = keel_runtime_run(rt, &main_task, init, rt);
	keel_runtime_destroy(rt);
	CHECK(st == 0);
	CHECK(asks_ok == 900);
	CHECK(tells_ok == 900);
	printf("asks %d tells %d handled %lu\n", asks_ok, tells_ok, handled);

	kt_scenario_begin("oneshots sent from a plain thread");
	struct keel_loop *loop;
	keel_loop_create(&loop, NULL);
	keel_spawn(loop, &rx_task, 0);
	pthread_t th;
	pthread_create(&th, NULL, os_sender, NULL);
	keel_loop_run(loop);
	pthread_join(th, NULL);
	keel_loop_destroy(loop);
	printf("oneshot ok %d\n", os_ok);
	return kt_scenarios_finish();
}
