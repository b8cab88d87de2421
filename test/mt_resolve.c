/* SPDX-License-Identifier: MIT */
/*
 * mt_resolve.c: keel_resolve()'s hand-over between a loop and the blocking
 * pool under ThreadSanitizer. Loops on several threads start lookups whose
 * getaddrinfo (wrapped: -Wl,--wrap, see the Makefile) takes 0 to 2 ms, with
 * deadlines of about as long and cancels at random, so that a lookup is
 * left while queued, while running, and after its answer was posted back
 * but before the loop took it; loops are destroyed with lookups still
 * running. Every await ends once with an answer or its cause, and every
 * answer getaddrinfo made is freed exactly once, by whichever side was last.
 * A plain program (Criterion cannot start under TSan).
 */
#include <errno.h>
#include <keel.h>
#include <netdb.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "helpers/scenario.h"

#define THREADS 4
#define TASKS	16
#define ROUNDS	20

int __real_getaddrinfo(const char *host, const char *service,
		       const struct addrinfo *hints, struct addrinfo **res);
void __real_freeaddrinfo(struct addrinfo *ai);
int __wrap_getaddrinfo(const char *host, const char *service,
		       const struct addrinfo *hints, struct addrinfo **res);
void __wrap_freeaddrinfo(struct addrinfo *ai);

static int g_answered;	  /* answers getaddrinfo made (atomic) */
static int g_outcomes[4]; /* answered, timed out, cancelled, queue full */
static int g_freed;	  /* ... freed */

/* "slow.keel.test": 127.0.0.1 after 0 to 2 ms. */
int __wrap_getaddrinfo(const char *host, const char *service,
		       const struct addrinfo *hints, struct addrinfo **res)
{
	if (!host || strcmp(host, "slow.keel.test") ||
	    (hints->ai_flags & AI_NUMERICHOST))
		return __real_getaddrinfo(host, service, hints, res);
	unsigned seed = (unsigned)(uintptr_t)res ^ (unsigned)kt_now_ns();

	nanosleep(&(struct timespec){0, (long)(rand_r(&seed) % 1000) * 1000},
		  NULL);
	int gai = __real_getaddrinfo("127.0.0.1", service, hints, res);

	if (!gai)
		kt_add(&g_answered, 1);
	return gai;
}

void __wrap_freeaddrinfo(struct addrinfo *ai)
{
	kt_add(&g_freed, 1);
	__real_freeaddrinfo(ai);
}

static int outcome(int res)
{
	switch (res) {
	case 1:
		return 0;
	case -ETIMEDOUT:
		return 1;
	case -ECANCELED:
		return 2;
	default:
		return 3;
	}
}

struct looker {
	struct keel_task task;
	struct keel_resolve_req req;
	unsigned seed;
	int round;
	int *ended;
	bool *alive; /* cleared as it exits: the canceller looks first */
};

static int looker_step(struct keel_task *t)
{
	struct looker *l = keel_container_of(t, struct looker, task);

	KEEL_BEGIN(t);
	for (l->round = 0; l->round < ROUNDS; l->round++) {
		memset(&l->req, 0, sizeof(l->req));
		l->req.host = "slow.keel.test";
		l->req.service = "80";
		l->req.timeout_ns = 500000 + rand_r(&l->seed) % 4000000;
		KEEL_AWAIT(t, keel_resolve(t, &l->req));
		int res = keel_res(t);

		CHECK(res == 1 || res == -ETIMEDOUT || res == -ECANCELED ||
		      res == -EAGAIN);
		kt_add(&g_outcomes[outcome(res)], 1);
		if (res == 1)
			CHECK(l->req.count == 1 &&
			      l->req.addrs[0].ss_family == AF_INET);
		else
			CHECK(l->req.count == 0);
		if (res == -ECANCELED)
			break; /* cancelled for good */
		(*l->ended)++;
	}
	*l->alive = false;
	KEEL_END(t);
}

static KEEL_TASK_TYPE(looker_task, struct looker, task, looker_step);

/* Cancels lookers at random while they wait. */
struct chaos {
	struct keel_task task;
	struct looker **lookers;
	bool *alive;
	unsigned seed;
	int i;
};

static int chaos_step(struct keel_task *t)
{
	struct chaos *c = keel_container_of(t, struct chaos, task);

	KEEL_BEGIN(t);
	for (c->i = 0; c->i < TASKS / 2; c->i++) {
		KEEL_AWAIT(t, keel_sleep(t, rand_r(&c->seed) % 1000000));
		unsigned i = rand_r(&c->seed) % TASKS;

		if (c->alive[i])
			keel_task_cancel(&c->lookers[i]->task);
	}
	KEEL_END(t);
}

static KEEL_TASK_TYPE(chaos_task, struct chaos, task, chaos_step);

/* Lookers and a canceller on a loop of their own, run to the end; on odd
 * threads, the loop is destroyed early, with lookups still running. */
static void *thread_main(void *arg)
{
	bool early_destroy = (uintptr_t)arg & 1;
	struct looker *lookers[TASKS];
	bool alive[TASKS];
	struct keel_loop *loop;
	int ended = 0;

	CHECK(keel_loop_create(&loop, NULL) == 0);
	keel_loop_set_stall(loop, 0, NULL, NULL);
	for (int i = 0; i < TASKS; i++) {
		lookers[i] = keel_spawn(loop, &looker_task, KEEL_PRIO_NORMAL);
		CHECK(lookers[i] != NULL);
		lookers[i]->seed = (unsigned)((uintptr_t)arg * TASKS + i);
		lookers[i]->ended = &ended;
		lookers[i]->alive = &alive[i];
		alive[i] = true;
	}
	struct chaos *c = keel_spawn(loop, &chaos_task, KEEL_PRIO_NORMAL);

	c->lookers = lookers;
	c->alive = alive;
	c->seed = (unsigned)(uintptr_t)arg;
	if (early_destroy) {
		for (int i = 0; i < 200; i++)
			CHECK(keel_loop_step(loop, 1000000) >= 0);
	} else {
		CHECK(keel_loop_run(loop) == 0);
		struct keel_loop_stats s;

		keel_loop_stats(loop, &s);
		CHECK(s.tasks_live == 0 && s.ops_inflight == 0);
		CHECK(ended > 0);
	}
	keel_loop_destroy(loop); /* early: with lookups still running */
	return NULL;
}

static void run_threads(void)
{
	pthread_t th[THREADS];

	for (uintptr_t i = 0; i < THREADS; i++)
		CHECK(pthread_create(&th[i], NULL, thread_main,
				     (void *)(i + 1)) == 0);
	for (int i = 0; i < THREADS; i++)
		pthread_join(th[i], NULL);
}

int main(void)
{
	kt_scenarios_start("mt_resolve");
	CHECK(keel_blocking_pool_config(4, 48) == 0);
	kt_scenario_run("lookups left while queued, running and posted, on "
			"four loops at once",
			run_threads);
	kt_scenario_begin("every answer is freed once the pool is idle");
	for (int i = 0; i < 5000 && kt_load(&g_freed) < kt_load(&g_answered);
	     i++)
		nanosleep(&(struct timespec){0, 1000000}, NULL);
	/* The mix happened: answers, deadlines, cancels, and lookups that
	 * getaddrinfo answered after their await had ended. */
	CHECK(kt_load(&g_outcomes[0]) > 0);
	CHECK(kt_load(&g_outcomes[1]) > 0);
	CHECK(kt_load(&g_outcomes[2]) > 0);
	CHECK(kt_load(&g_answered) > kt_load(&g_outcomes[0]));
	CHECK(kt_load(&g_freed) == kt_load(&g_answered));
	return kt_scenarios_finish();
}
