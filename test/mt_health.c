/* SPDX-License-Identifier: MIT */
/*
 * mt_health.c: one health registry reported into from several threads at
 * once. A supervisor on a loop thread restarts a failing child hundreds of
 * times (its observer writes the watch's stamps under the supervisor's
 * lock, then the registry's), two threads report components and render
 * the JSON in a loop, and the main thread renders too, then removes the
 * supervisor's watch while restarts are still being decided (detaching
 * must wait for an observer call in progress, never race with it). Checks:
 * every rendering is whole, the final states are the last reported. A
 * plain program (no Criterion), so that it runs under ThreadSanitizer.
 */
#include <errno.h>
#include <keel.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "helpers/scenario.h"

#define RESTARTS 300
#define REPORTS	 3000

static struct keel_health *g_reg;
static struct keel_sup *g_sup;
static atomic_int g_incarnations;
static atomic_bool g_watching;
static pthread_barrier_t g_start;

struct flaky {
	struct keel_task task;
};

static int flaky_step(struct keel_task *t)
{
	if (atomic_fetch_add(&g_incarnations, 1) < RESTARTS)
		return keel_task_exit(t, -EIO);
	keel_sup_stop(g_sup);
	return keel_task_exit(t, 0);
}

static KEEL_TASK_TYPE(flaky_task, struct flaky, task, flaky_step);

static int flaky_start(struct keel_child_start *start, void *arg)
{
	(void)arg;
	return keel_child_spawn(start, &flaky_task, KEEL_PRIO_NORMAL) ? 0
								      : -ENOMEM;
}

static void *sup_main(void *arg)
{
	struct keel_loop *loop;
	struct keel_child_spec kid = {
	    .name = "worker",
	    .start = flaky_start,
	    .restart = KEEL_PERMANENT,
	    .shutdown_ms = 1000,
	};
	struct keel_sup_spec spec = {
	    .name = "tree",
	    .intensity = 10 * RESTARTS,
	    .period_ms = 3600 * 1000,
	    .children = &kid,
	    .nchildren = 1,
	};

	(void)arg;
	CHECK(keel_loop_create(&loop, NULL) == 0);
	CHECK(keel_sup_start(loop, &spec, &g_sup) == 0);
	CHECK(keel_health_watch_supervisor(g_reg, g_sup, "tree", 10) == 0);
	atomic_store(&g_watching, true);
	pthread_barrier_wait(&g_start);
	CHECK(keel_loop_run(loop) == 0);
	keel_loop_destroy(loop);
	return NULL;
}

static bool whole(const char *json, size_t n, size_t cap)
{
	return n < cap && json[n - 1] == '}' &&
	       !strncmp(json, "{\"status\":\"", 11);
}

static void *reporter_main(void *arg)
{
	const char *name = arg;
	char json[4096];

	pthread_barrier_wait(&g_start);
	for (int i = 0; i < REPORTS; i++) {
		enum keel_health_state st = (enum keel_health_state)(i % 3);
		char why[32];

		snprintf(why, sizeof(why), "report %d", i);
		CHECK(keel_health_set(g_reg, name, st, why) == 0);
		if (i % 16 == 0) {
			size_t n =
			    keel_health_render_json(g_reg, json, sizeof(json));

			CHECK(whole(json, n, sizeof(json)));
		}
	}
	/* The last word: healthy. */
	CHECK(keel_health_set(g_reg, name, KEEL_HEALTH_HEALTHY, "done") == 0);
	return NULL;
}

static char g_alpha[] = "alpha", g_beta[] = "beta";

int main(void)
{
	pthread_t sup, rep[2];
	char json[4096];

	kt_scenarios_start("mt_health");
	kt_scenario_begin("a supervisor and two threads report, all render");
	CHECK(keel_health_new(&g_reg) == 0);
	CHECK(pthread_barrier_init(&g_start, NULL, 4) == 0);
	CHECK(pthread_create(&sup, NULL, sup_main, NULL) == 0);
	CHECK(pthread_create(&rep[0], NULL, reporter_main, g_alpha) == 0);
	CHECK(pthread_create(&rep[1], NULL, reporter_main, g_beta) == 0);
	pthread_barrier_wait(&g_start);
	/* Render while the restarts go on, then detach the watch midway. */
	while (atomic_load(&g_incarnations) < RESTARTS / 2) {
		size_t n = keel_health_render_json(g_reg, json, sizeof(json));

		CHECK(whole(json, n, sizeof(json)));
		(void)keel_health_overall(g_reg);
	}
	CHECK(keel_health_remove(g_reg, "tree") == 0);
	for (int i = 0; i < 2; i++)
		pthread_join(rep[i], NULL);
	pthread_join(sup, NULL);
	CHECK_EQ(atomic_load(&g_incarnations), RESTARTS + 1);
	CHECK_EQ(keel_health_get(g_reg, "alpha", NULL, 0), KEEL_HEALTH_HEALTHY);
	CHECK_EQ(keel_health_get(g_reg, "beta", NULL, 0), KEEL_HEALTH_HEALTHY);
	CHECK_EQ(keel_health_get(g_reg, "tree", NULL, 0), -ENOENT);
	CHECK_EQ(keel_health_overall(g_reg), KEEL_HEALTH_HEALTHY);
	/* The watch is gone: the supervisor takes another observer. */
	CHECK(keel_health_watch_supervisor(g_reg, g_sup, "tree", 1) == 0);
	keel_health_free(g_reg);
	keel_sup_release(g_sup);
	pthread_barrier_destroy(&g_start);
	kt_scenario_end();
	return kt_scenarios_finish();
}
