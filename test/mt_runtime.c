/* SPDX-License-Identifier: MIT */
/*
 * mt_runtime.c: a thread that keeps reading every loop's counters with
 * keel_runtime_loop_stats() while a three-loop runtime runs, shuts down
 * and destroys its loops, as a plain program for ThreadSanitizer
 * (Criterion cannot start under it). The reader must neither race with a
 * loop's own counters nor touch a loop once it is destroyed.
 */
#include <keel.h>
#include <pthread.h>
#include <sched.h>

#include "helpers/scenario.h"

#define LOOPS  3
#define ROUNDS 5

static struct keel_runtime *rt;
static int stop;
static int polls;

struct main_task {
	struct keel_task task;
	int i;
};

/* A few turns on loop 0 with the reader running, then shutdown. */
static int main_step(struct keel_task *t)
{
	struct main_task *m = keel_container_of(t, struct main_task, task);

	KEEL_BEGIN(t);
	for (m->i = 0; m->i < 10; m->i++)
		KEEL_AWAIT(t, keel_sleep(t, KT_MS(1)));
	KEEL_END(t);
}

static KEEL_TASK_TYPE(main_task, struct main_task, task, main_step);

static void *poller(void *arg)
{
	(void)arg;
	while (!kt_load(&stop)) {
		for (unsigned i = 0; i < LOOPS; i++) {
			struct keel_loop_stats st;

			CHECK_EQ(keel_runtime_loop_stats(rt, i, &st), 0);
			CHECK(st.exited <= st.spawned);
		}
		kt_add(&polls, 1);
	}
	return NULL;
}

static void scenario_stats_during_shutdown(void)
{
	for (int round = 0; round < ROUNDS; round++) {
		struct keel_runtime_opts o = {.threads = LOOPS,
					      .no_signals = true};
		struct keel_loop_stats st;
		pthread_t th;

		CHECK_EQ(keel_runtime_create(&rt, &o), 0);
		kt_store(&stop, 0);
		CHECK_EQ(pthread_create(&th, NULL, poller, NULL), 0);
		CHECK_EQ(keel_runtime_run(rt, &main_task, NULL, NULL), 0);
		/* Still reading, now the final counters. */
		for (int start = kt_load(&polls); kt_load(&polls) < start + 10;)
			sched_yield();
		kt_store(&stop, 1);
		pthread_join(th, NULL);
		CHECK_EQ(keel_runtime_loop_stats(rt, 0, &st), 0);
		CHECK(st.spawned >= 1 && st.exited == st.spawned);
		keel_runtime_destroy(rt);
	}
}

int main(void)
{
	kt_scenarios_start("mt_runtime");
	kt_scenario_run("stats_during_shutdown",
			scenario_stats_during_shutdown);
	return kt_scenarios_finish();
}
