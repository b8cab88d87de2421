/* SPDX-License-Identifier: MIT */
/*
 * test_health.c: keel/health.h. States and their reasons, the worst-of
 * (and back when a component recovers or goes), misuse; the JSON (exact
 * text, escaping of quotes, backslashes, control characters and bytes
 * that are not UTF-8, a reason cut on a character boundary, the snprintf
 * contract); supervisor watches: restarts of a child beyond the threshold
 * within the period make it degraded (and not at the threshold), the
 * burst stops counting a period later, an escalation makes it unhealthy,
 * a second observer is refused, freeing the registry detaches it.
 * Reporting from several threads: mt_health.c.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <keel.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "helpers/keel_test.h"

static struct keel_health *reg_new(void)
{
	struct keel_health *reg;

	cr_assert_eq(keel_health_new(&reg), 0);
	return reg;
}

static const char *json(struct keel_health *reg)
{
	static char buf[4096];
	size_t n = keel_health_render_json(reg, buf, sizeof(buf));

	cr_assert_lt(n, sizeof(buf));
	return buf;
}

Test(health, worst_of_the_components)
{
	struct keel_health *reg = reg_new();
	char why[64];

	cr_expect_eq(keel_health_overall(reg), KEEL_HEALTH_HEALTHY);
	cr_expect_eq(
	    keel_health_set(reg, "db", KEEL_HEALTH_DEGRADED, "replica lag 3 s"),
	    0);
	cr_expect_eq(keel_health_set(reg, "cache", KEEL_HEALTH_HEALTHY, NULL),
		     0);
	cr_expect_eq(keel_health_overall(reg), KEEL_HEALTH_DEGRADED);
	cr_expect_eq(keel_health_set(reg, "queue", KEEL_HEALTH_UNHEALTHY,
				     "broker unreachable"),
		     0);
	cr_expect_eq(keel_health_overall(reg), KEEL_HEALTH_UNHEALTHY);
	cr_expect_eq(keel_health_get(reg, "db", why, sizeof(why)),
		     KEEL_HEALTH_DEGRADED);
	cr_expect_str_eq(why, "replica lag 3 s");
	/* Recovering or going lowers the worst. */
	cr_expect_eq(keel_health_set(reg, "queue", KEEL_HEALTH_HEALTHY, NULL),
		     0);
	cr_expect_eq(keel_health_overall(reg), KEEL_HEALTH_DEGRADED);
	cr_expect_eq(keel_health_remove(reg, "db"), 0);
	cr_expect_eq(keel_health_overall(reg), KEEL_HEALTH_HEALTHY);
	cr_expect_eq(keel_health_remove(reg, "db"), -ENOENT);
	cr_expect_eq(keel_health_get(reg, "db", NULL, 0), -ENOENT);
	cr_expect_str_eq(json(reg), "{\"status\":\"healthy\",\"components\":["
				    "{\"name\":\"cache\",\"status\":"
				    "\"healthy\"},{\"name\":\"queue\","
				    "\"status\":\"healthy\"}]}");
	keel_health_free(reg);
}

Test(health, misuse_is_refused)
{
	struct keel_health *reg = reg_new();
	char longname[KEEL_HEALTH_NAME_MAX + 1];

	memset(longname, 'n', sizeof(longname) - 1);
	longname[sizeof(longname) - 1] = '\0';
	cr_expect_eq(keel_health_set(reg, NULL, KEEL_HEALTH_HEALTHY, NULL),
		     -EINVAL);
	cr_expect_eq(keel_health_set(reg, "", KEEL_HEALTH_HEALTHY, NULL),
		     -EINVAL);
	cr_expect_eq(keel_health_set(reg, longname, KEEL_HEALTH_HEALTHY, NULL),
		     -EINVAL);
	cr_expect_eq(keel_health_set(reg, "x", (enum keel_health_state)3, NULL),
		     -EINVAL);
	cr_expect_str_eq(keel_health_state_name(KEEL_HEALTH_DEGRADED),
			 "degraded");
	cr_expect_str_eq(keel_health_state_name((enum keel_health_state)9),
			 "unknown");
	keel_health_free(reg);
	keel_health_free(NULL);
}

Test(health, json_escapes_every_string)
{
	struct keel_health *reg = reg_new();

	keel_health_set(reg, "we\"ird\\name", KEEL_HEALTH_UNHEALTHY,
			"line1\nline2\t\x01 caf\xc3\xa9 bad\xff byte");
	cr_expect_str_eq(json(reg),
			 "{\"status\":\"unhealthy\",\"components\":[{\"name\":"
			 "\"we\\\"ird\\\\name\",\"status\":\"unhealthy\","
			 "\"reason\":\"line1\\nline2\\t\\u0001 "
			 "caf\xc3\xa9 bad\\ufffd byte\"}]}");
	keel_health_free(reg);
}

Test(health, json_follows_snprintf_and_cuts_reasons_on_characters)
{
	struct keel_health *reg = reg_new();
	char reason[KEEL_HEALTH_REASON_MAX + 8], got[KEEL_HEALTH_REASON_MAX];
	char small[8];

	/* 'x' then two-byte characters across the limit: the cut never
	 * leaves half of one. */
	reason[0] = 'x';
	for (size_t i = 1; i + 2 < sizeof(reason); i += 2)
		memcpy(reason + i, "\xc3\xa9", 2);
	reason[sizeof(reason) - 1] = '\0';
	cr_assert_eq(keel_health_set(reg, "c", KEEL_HEALTH_DEGRADED, reason),
		     0);
	keel_health_get(reg, "c", got, sizeof(got));
	cr_expect_lt(strlen(got), (size_t)KEEL_HEALTH_REASON_MAX);
	cr_expect_eq(strlen(got) % 2, 1, "cut inside a character: %zu bytes",
		     strlen(got));

	size_t need = keel_health_render_json(reg, NULL, 0);
	size_t n = keel_health_render_json(reg, small, sizeof(small));

	cr_expect_eq(n, need);
	cr_expect_gt(need, sizeof(small));
	cr_expect_eq(strlen(small), sizeof(small) - 1);
	cr_expect_eq(strncmp(small, "{\"statu", 7), 0);
	keel_health_free(reg);
}

/* ---- supervisor watches ---------------------------------------------- */

#define SUP_THRESHOLD 3

/* Each incarnation of the child: what the registry said when it started
 * (after `incarnation` restarts), then fail, or stop everything. */
struct flaky {
	struct keel_task task;
};

static struct keel_health *g_reg;
static struct keel_sup *g_sup;
static int g_incarnation;
static int g_fail_times; /* incarnations that fail; then stop the sup */
static int g_seen[16];	 /* overall state at each incarnation's start */
static char g_reason[16][KEEL_HEALTH_REASON_MAX];

static int flaky_step(struct keel_task *t);
static KEEL_TASK_TYPE(flaky_task, struct flaky, task, flaky_step);

static int flaky_step(struct keel_task *t)
{
	int i = g_incarnation++;

	if (i < 16) {
		g_seen[i] = (int)keel_health_overall(g_reg);
		keel_health_get(g_reg, "tree", g_reason[i],
				sizeof(g_reason[i]));
	}
	if (i < g_fail_times)
		return keel_task_exit(t, -EIO);
	keel_sup_stop(g_sup);
	return keel_task_exit(t, 0);
}

static int flaky_start(struct keel_child_start *start, void *arg)
{
	(void)arg;
	return keel_child_spawn(start, &flaky_task, KEEL_PRIO_NORMAL) ? 0
								      : -ENOMEM;
}

static void run_tree(uint32_t intensity, uint32_t period_ms, int fail_times)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_child_spec kid = {
	    .name = "worker",
	    .start = flaky_start,
	    .restart = KEEL_PERMANENT,
	    .shutdown_ms = 1000,
	};
	struct keel_sup_spec spec = {
	    .name = "tree",
	    .strategy = KEEL_ONE_FOR_ONE,
	    .intensity = intensity,
	    .period_ms = period_ms,
	    .children = &kid,
	    .nchildren = 1,
	};

	g_incarnation = 0;
	g_fail_times = fail_times;
	memset(g_seen, -1, sizeof(g_seen));
	cr_assert_eq(keel_sup_start(loop, &spec, &g_sup), 0);
	cr_assert_eq(
	    keel_health_watch_supervisor(g_reg, g_sup, "tree", SUP_THRESHOLD),
	    0);
	/* One observer per supervisor. */
	cr_expect_eq(keel_health_watch_supervisor(g_reg, g_sup, "again", 1),
		     -EBUSY);
	kt_loop_run(loop);
	keel_loop_destroy(loop);
}

Test(health, restarts_beyond_the_threshold_degrade_and_escalation_kills,
     .timeout = 20)
{
	char why[KEEL_HEALTH_REASON_MAX];

	g_reg = reg_new();
	/* Five failures, intensity 10 in an hour: no escalation. */
	run_tree(10, 3600 * 1000, 5);
	cr_expect_eq(g_incarnation, 6);
	/* The threshold itself is fine; one more is not. */
	for (int i = 0; i <= SUP_THRESHOLD; i++)
		cr_expect_eq(g_seen[i], KEEL_HEALTH_HEALTHY,
			     "after %d restarts: %d (%s)", i, g_seen[i],
			     g_reason[i]);
	cr_expect_eq(g_seen[SUP_THRESHOLD + 1], KEEL_HEALTH_DEGRADED);
	cr_expect_str_eq(g_reason[SUP_THRESHOLD + 1],
			 "child 'worker' restarted 4 times within 3600000 ms "
			 "(threshold 3)");
	cr_expect_eq(g_seen[5], KEEL_HEALTH_DEGRADED);
	/* Stopped, not escalated: still degraded by the burst. */
	cr_expect_eq(keel_health_get(g_reg, "tree", NULL, 0),
		     KEEL_HEALTH_DEGRADED);
	keel_sup_release(g_sup);
	keel_health_free(g_reg);

	g_reg = reg_new();
	/* Always failing, intensity 2: the third failure escalates. */
	run_tree(2, 3600 * 1000, 100);
	cr_expect_eq(g_incarnation, 3);
	cr_expect_eq(keel_health_get(g_reg, "tree", why, sizeof(why)),
		     KEEL_HEALTH_UNHEALTHY);
	cr_expect_str_eq(why, "supervisor 'tree' escalated: restart "
			      "intensity exceeded");
	cr_expect_eq(keel_health_overall(g_reg), KEEL_HEALTH_UNHEALTHY);
	cr_expect_eq(keel_health_set(g_reg, "tree", KEEL_HEALTH_HEALTHY, NULL),
		     -EBUSY);
	/* Removing the watch detaches it: the supervisor takes another. */
	cr_expect_eq(keel_health_remove(g_reg, "tree"), 0);
	cr_expect_eq(keel_health_overall(g_reg), KEEL_HEALTH_HEALTHY);
	cr_expect_eq(keel_health_watch_supervisor(g_reg, g_sup, "tree2", 0), 0);
	keel_health_free(g_reg); /* detaches that one too */
	cr_expect_eq(keel_sup_observe(g_sup, NULL, NULL), 0);
	keel_sup_release(g_sup);
}

Test(health, a_burst_stops_counting_a_period_later, .timeout = 20)
{
	struct timespec ms5 = {0, 5 * 1000 * 1000};

	g_reg = reg_new();
	/* Threshold 3, a 1 ms period: four quick restarts may or may not
	 * fall within it, but 5 ms later none does. */
	run_tree(100, 1, 4);
	nanosleep(&ms5, NULL);
	cr_expect_eq(keel_health_get(g_reg, "tree", NULL, 0),
		     KEEL_HEALTH_HEALTHY);
	keel_sup_release(g_sup);
	keel_health_free(g_reg);
}
