/* SPDX-License-Identifier: MIT */
/*
 * scenario.c: scenarios, their watchdog, watched loops and loops on plain
 * threads (see scenario.h).
 *
 * The watchdog only reads: the scenario's name and a generation bumped at
 * each change (atomics), and the watched loops' inbox fields (atomics of
 * the loop, sched/remote.c) under the registry's lock, so it can look at a
 * program that is stuck anywhere without taking part in the stall.
 */
#include "helpers/scenario.h"

#include <stdio.h>
#include <unistd.h>

#include "loop.h" /* struct keel_loop's inbox, shown when a scenario stalls */

static const char *program = "test";
static const char *current; /* the current scenario, or NULL */
static int generation;	    /* bumped at each begin */
static int failures_before; /* kt_failures() when it began */
static int passed, failed;

/* ---- watched loops ------------------------------------------------------- */

#define MAX_WATCHED 8
static struct keel_loop *watched[MAX_WATCHED];
static pthread_mutex_t watched_lock = PTHREAD_MUTEX_INITIALIZER;

void kt_watch_loop(struct keel_loop *loop, bool on)
{
	pthread_mutex_lock(&watched_lock);
	for (int i = 0; i < MAX_WATCHED; i++) {
		if (on && !watched[i]) {
			watched[i] = loop;
			break;
		}
		if (!on && watched[i] == loop) {
			watched[i] = NULL;
			break;
		}
	}
	pthread_mutex_unlock(&watched_lock);
}

static void show_loops(void)
{
	pthread_mutex_lock(&watched_lock);
	for (int i = 0; i < MAX_WATCHED; i++) {
		struct keel__inbox *in = watched[i] ? &watched[i]->inbox : NULL;

		if (!in)
			continue;
		fprintf(stderr,
			"  loop %p: parked %d, wake_pending %d, inbox %s, "
			"%llu doorbells\n",
			(void *)watched[i],
			__atomic_load_n(&in->parked, __ATOMIC_SEQ_CST),
			__atomic_load_n(&in->wake_pending, __ATOMIC_SEQ_CST),
			__atomic_load_n(&in->head, __ATOMIC_SEQ_CST)
			    ? "NOT empty"
			    : "empty",
			(unsigned long long)__atomic_load_n(&in->doorbells,
							    __ATOMIC_RELAXED));
	}
	pthread_mutex_unlock(&watched_lock);
}

/* ---- scenarios and the watchdog ------------------------------------------ */

static void *watchdog(void *arg)
{
	int seen = -1, ticks = 0;

	(void)arg;
	for (;;) {
		sleep(1);
		int gen = kt_load(&generation);

		if (gen != seen) {
			seen = gen;
			ticks = 0;
			continue;
		}
		if (++ticks < KT_STALL_S)
			continue;
		fprintf(stderr, "%s: scenario %s stalled for %d s\n", program,
			__atomic_load_n(&current, __ATOMIC_ACQUIRE),
			KT_STALL_S);
		show_loops();
		printf("%s: %d passed, %d failed\n", program, kt_load(&passed),
		       kt_load(&failed) + 1);
		fflush(stdout);
		_exit(1);
	}
	return NULL;
}

void kt_scenarios_start(const char *name)
{
	pthread_t wd;

	program = name;
	if (pthread_create(&wd, NULL, watchdog, NULL) == 0)
		pthread_detach(wd);
	else
		fprintf(stderr, "%s: no watchdog\n", program);
}

void kt_scenario_end(void)
{
	const char *name = __atomic_load_n(&current, __ATOMIC_ACQUIRE);
	bool ok = kt_failures() == failures_before;

	if (!name)
		return;
	fprintf(stderr, "%s %s\n", ok ? "ok  " : "FAIL", name);
	kt_add(ok ? &passed : &failed, 1);
	__atomic_store_n(&current, NULL, __ATOMIC_RELEASE);
	kt_check_context(NULL);
}

void kt_scenario_begin(const char *name)
{
	kt_scenario_end();
	failures_before = kt_failures();
	__atomic_store_n(&current, name, __ATOMIC_RELEASE);
	kt_check_context(name);
	kt_add(&generation, 1);
}

void kt_scenario_run(const char *name, void (*fn)(void))
{
	kt_scenario_begin(name);
	fn();
	kt_scenario_end();
}

int kt_scenarios_finish(void)
{
	kt_scenario_end();
	printf("%s: %d passed, %d failed\n", program, kt_load(&passed),
	       kt_load(&failed));
	return kt_load(&failed) ? 1 : 0;
}

/* ---- loops on plain threads ---------------------------------------------- */

static void *lthread_main(void *arg)
{
	struct kt_lthread *lt = arg;
	struct keel_loop *loop = NULL;

	lt->create_err = keel_loop_create(&loop, NULL);
	if (lt->create_err)
		return NULL;
	kt_watch_loop(loop, true);
	lt->setup(loop, lt->index);
	lt->run_err = keel_loop_run(loop);
	keel_loop_stats(loop, &lt->st);
	kt_watch_loop(loop, false);
	keel_loop_destroy(loop);
	return NULL;
}

void kt_lthreads_start(struct kt_lthread *lts, int n, kt_lthread_setup_fn setup)
{
	for (int i = 1; i < n; i++) {
		int err;

		lts[i].index = i;
		lts[i].setup = setup;
		err = pthread_create(&lts[i].th, NULL, lthread_main, &lts[i]);
		CHECK_EQ(err, 0);
		lts[i].started = err == 0;
	}
}

void kt_lthreads_join(struct kt_lthread *lts, int n)
{
	for (int i = 1; i < n; i++) {
		if (!lts[i].started)
			continue;
		pthread_join(lts[i].th, NULL);
		lts[i].started = false;
		CHECK_EQ(lts[i].create_err, 0);
		CHECK_EQ(lts[i].run_err, 0);
		CHECK_EQ(lts[i].st.tasks_live, 0);
		CHECK_EQ(lts[i].st.zombies, 0);
		CHECK_EQ(lts[i].st.ops_inflight, 0);
	}
}
