/* SPDX-License-Identifier: MIT */
/*
 * mt_loops.c: several loops on several threads at once, each running
 * spawn/join trees, sleeps, nops and a loopback TCP echo. What it checks is
 * that loops share nothing by accident: the current-loop pointer, the
 * per-loop jemalloc arenas and tcaches, the rings. It is a plain program (no
 * Criterion) because Criterion cannot start under ThreadSanitizer (its
 * BoxFort arena fails to map: Criterion issue #274); this is what
 * `SANITIZE=thread make test` runs.
 */
#include <errno.h>
#include <keel.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "helpers/scenario.h"

#define THREADS	 4
#define CHILDREN 200
#define ROUNDS	 50

struct child {
	struct keel_task task;
	int n;
};

static int child_step(struct keel_task *t)
{
	struct child *c = keel_container_of(t, struct child, task);

	KEEL_BEGIN(t);
	KEEL_AWAIT(t, keel_nop(t));
	KEEL_AWAIT(t, keel_sleep(t, (uint64_t)(c->n % 5) * 100000));
	KEEL_YIELD(t);
	KEEL_EXIT(t, c->n);
}

static KEEL_TASK_TYPE(child_task, struct child, task, child_step);

struct echo_peer {
	struct keel_task task;
	int fd;
	int round;
	int client;
	char out[64];
	char in[64];
};

static int echo_peer_step(struct keel_task *t)
{
	struct echo_peer *e = keel_container_of(t, struct echo_peer, task);

	KEEL_BEGIN(t);
	for (e->round = 0; e->round < ROUNDS; e->round++) {
		if (e->client) {
			snprintf(e->out, sizeof(e->out), "round %d", e->round);
			KEEL_AWAIT(t, keel_send_all(t, e->fd, e->out,
						    sizeof(e->out), 0));
			CHECK(keel_res(t) == (int)sizeof(e->out));
		}
		KEEL_AWAIT(
		    t, keel_recv(t, e->fd, e->in, sizeof(e->in), MSG_WAITALL));
		CHECK(keel_res(t) == (int)sizeof(e->in));
		if (e->client) {
			CHECK(memcmp(e->in, e->out, sizeof(e->in)) == 0);
		} else {
			memcpy(e->out, e->in, sizeof(e->out));
			KEEL_AWAIT(t, keel_send_all(t, e->fd, e->out,
						    sizeof(e->out), 0));
		}
	}
	KEEL_AWAIT(t, keel_close(t, e->fd));
	KEEL_END(t);
}

static KEEL_TASK_TYPE(echo_peer_task, struct echo_peer, task, echo_peer_step);

struct parent {
	struct keel_task task;
	struct child *kids[CHILDREN];
	int i;
	long sum;
};

static int parent_step(struct keel_task *t)
{
	struct parent *p = keel_container_of(t, struct parent, task);

	KEEL_BEGIN(t);
	for (p->i = 0; p->i < CHILDREN; p->i++) {
		p->kids[p->i] =
		    keel_spawn(t->loop, &child_task,
			       KEEL_PRIO_NORMAL | KEEL_SPAWN_JOINABLE);
		CHECK(p->kids[p->i] != NULL);
		p->kids[p->i]->n = p->i;
	}
	for (p->i = 0; p->i < CHILDREN; p->i++) {
		KEEL_AWAIT(t, keel_join(t, &p->kids[p->i]->task));
		p->sum += keel_res(t);
	}
	CHECK(p->sum == (long)CHILDREN * (CHILDREN - 1) / 2);
	KEEL_END(t);
}

static KEEL_TASK_TYPE(parent_task, struct parent, task, parent_step);

static void *thread_main(void *arg)
{
	struct keel_loop *loop;
	struct keel_loop_stats s;
	int sv[2];

	(void)arg;
	CHECK(keel_loop_create(&loop, NULL) == 0);
	CHECK(keel_loop_current() == NULL);
	CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
	keel_spawn(loop, &parent_task, KEEL_PRIO_NORMAL);
	for (int i = 0; i < 2; i++) {
		struct echo_peer *e =
		    keel_spawn(loop, &echo_peer_task, KEEL_PRIO_HIGH);

		e->fd = sv[i];
		e->client = i == 0;
	}
	CHECK(keel_loop_run(loop) == 0);
	keel_loop_stats(loop, &s);
	CHECK(s.tasks_live == 0 && s.zombies == 0 && s.ops_inflight == 0);
	CHECK(s.exited == CHILDREN + 3);
	keel_loop_destroy(loop);
	return NULL;
}

int main(void)
{
	pthread_t th[THREADS];

	kt_scenarios_start("mt_loops");
	kt_scenario_begin("a loop on each of four threads at once");
	for (int i = 0; i < THREADS; i++)
		CHECK(pthread_create(&th[i], NULL, thread_main, NULL) == 0);
	for (int i = 0; i < THREADS; i++)
		pthread_join(th[i], NULL);
	return kt_scenarios_finish();
}
