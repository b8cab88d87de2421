/* SPDX-License-Identifier: MIT */
/*
 * test_watchdog.c: the stall watchdog's thread lives exactly as long as
 * there are loops: it starts with the first loop, stays while any loop
 * does, is joined when the last one is destroyed (no thread left behind,
 * which valgrind reported as "possibly lost"), and a loop created after
 * that gets a new one that still reports stalls. It sleeps while every
 * loop waits in the kernel, and wakes (and reports) when one runs again.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <keel.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "helpers/keel_test.h"
#include "loop.h"

/* The process's threads, io_uring's own workers (iou-*) left out. */
static int threads(void)
{
	DIR *d = opendir("/proc/self/task");
	struct dirent *e;
	int n = 0;

	cr_assert_not_null(d);
	while ((e = readdir(d))) {
		char path[300], comm[64] = "";
		FILE *f;

		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/proc/self/task/%s/comm",
			 e->d_name);
		f = fopen(path, "r");
		if (!f)
			continue; /* it has just exited */
		if (!fgets(comm, sizeof(comm), f))
			comm[0] = '\0';
		fclose(f);
		if (strncmp(comm, "iou-", 4) != 0)
			n++;
	}
	closedir(d);
	return n;
}

/*
 * The thread count once it has settled at `want`: a thread that pthread_join
 * saw exit may stay listed for a moment. Gives up after 2 s.
 */
static int threads_settled(int want)
{
	int n = threads();

	for (int i = 0; n != want && i < 200; i++) {
		usleep(10 * 1000);
		n = threads();
	}
	return n;
}

Test(watchdog, thread_goes_with_the_last_loop, .timeout = 20)
{
	int base = threads();
	struct keel_loop *a = kt_loop_new(NULL), *b;

	cr_assert_eq(threads_settled(base + 1), base + 1,
		     "one watchdog thread with the first loop");
	b = kt_loop_new(NULL);
	cr_assert_eq(threads_settled(base + 1), base + 1,
		     "still one watchdog thread with two loops");
	keel_loop_destroy(a);
	cr_assert_eq(threads_settled(base + 1), base + 1,
		     "the watchdog stays while a loop does");
	keel_loop_destroy(b);
	/* Joined by keel_loop_destroy(): it has exited already. */
	cr_assert_eq(threads_settled(base), base,
		     "no watchdog thread once the last loop is gone");
	for (int i = 0; i < 3; i++) {
		a = kt_loop_new(NULL);
		cr_assert_eq(threads_settled(base + 1), base + 1);
		keel_loop_destroy(a);
		cr_assert_eq(threads_settled(base), base);
	}
}

static int g_stalls;

static void on_stall(struct keel_loop *loop, const char *task_name,
		     const char *resumed_from, uint64_t step_ns, void *arg)
{
	g_stalls++;
}

/* Busy in one step until the watchdog has flagged it (at most 2 s). */
struct staller {
	struct keel_task task;
};

static int staller_step(struct keel_task *t)
{
	KEEL_BEGIN(t);
	KEEL_YIELD(t);
	uint64_t start = kt_now_ns();

	while (!kt_stats(keel_task_loop(t)).stalls &&
	       kt_now_ns() - start < KT_MS(2000))
		;
	KEEL_END(t);
}
static KEEL_TASK_TYPE(staller_task, struct staller, task, staller_step);

Test(watchdog, restarted_watchdog_still_reports_stalls, .timeout = 20)
{
	for (int round = 0; round < 2; round++) {
		struct keel_loop *loop = kt_loop_new(NULL);

		g_stalls = 0;
		keel_loop_set_stall(loop, KT_MS(5), on_stall, NULL);
		kt_spawn(loop, &staller_task, KEEL_PRIO_NORMAL);
		kt_loop_run(loop);
		cr_assert_eq(g_stalls, 1, "round %d: %d stalls reported", round,
			     g_stalls);
		keel_loop_destroy(loop);
	}
}

/* Sleeps 300 ms first (the loop waits in the kernel), then stalls. */
static uint64_t g_idle_ticks; /* the watchdog's while the task slept */

static int idle_staller_step(struct keel_task *t)
{
	KEEL_BEGIN(t);
	g_idle_ticks = keel__watchdog_ticks();
	KEEL_AWAIT(t, keel_sleep(t, KT_MS(300)));
	g_idle_ticks = keel__watchdog_ticks() - g_idle_ticks;
	uint64_t start = kt_now_ns();

	while (!kt_stats(keel_task_loop(t)).stalls &&
	       kt_now_ns() - start < KT_MS(2000))
		;
	KEEL_END(t);
}
static KEEL_TASK_TYPE(idle_staller_task, struct staller, task,
		      idle_staller_step);

/*
 * Sampling every 2.5 ms, the watchdog would wake ~120 times in 300 ms;
 * idle, a few (the samples before it sees the loop parked, and the one
 * after the loop wakes it). The stall after the sleep is still reported.
 */
Test(watchdog, sleeps_while_the_loop_waits_and_still_reports_stalls_after,
     .timeout = 20)
{
	struct keel_loop *loop = kt_loop_new(NULL);

	g_stalls = 0;
	keel_loop_set_stall(loop, KT_MS(5), on_stall, NULL);
	kt_spawn(loop, &idle_staller_task, KEEL_PRIO_NORMAL);
	kt_loop_run(loop);
	cr_assert_leq(g_idle_ticks, 20,
		      "the watchdog woke %llu times in 300 ms idle",
		      (unsigned long long)g_idle_ticks);
	cr_assert_eq(g_stalls, 1, "%d stalls reported", g_stalls);
	keel_loop_destroy(loop);
}
