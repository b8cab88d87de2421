/* SPDX-License-Identifier: MIT */
/*
 * scenario.h: what multi-thread tests share beyond checks (check.h): loops
 * on plain threads, and, for the mt_* programs, named scenarios with a
 * watchdog and the closing line that test/run.sh counts.
 *
 * A scenario passes when none of the checks made while it was current
 * failed. The watchdog ends the program as a failure when the current
 * scenario has not changed for KT_STALL_S seconds, after writing which
 * scenario stalled and the inbox state of every watched loop: a stall
 * under ThreadSanitizer is then a report, not a timeout. Nothing here
 * depends on Criterion.
 */
#ifndef KEEL_TEST_SCENARIO_H
#define KEEL_TEST_SCENARIO_H

#include <keel.h>
#include <pthread.h>
#include <stdbool.h>

#include "helpers/check.h"

#define KT_STALL_S 60

/* Start the watchdog of program `name` (for messages and the last line). */
void kt_scenarios_start(const char *name);

/* Make `name` the current scenario (ending the one before); any thread. */
void kt_scenario_begin(const char *name);

/* End the current scenario, counting it as passed or failed. */
void kt_scenario_end(void);

/* kt_scenario_begin(name), fn(), kt_scenario_end(). */
void kt_scenario_run(const char *name, void (*fn)(void));

/* End the current scenario, print "name: N passed, M failed" on stdout
 * and return the program's exit status (0: none failed). */
int kt_scenarios_finish(void);

/* Show (on) or stop showing (off) a loop's inbox when a scenario stalls. */
void kt_watch_loop(struct keel_loop *loop, bool on);

/*
 * Loops on plain threads, as an embedding host would run them: each thread
 * creates a loop, lets `setup` spawn its tasks, runs it to the end and
 * keeps its result and counters. Index 0 is the caller's own loop, so the
 * threads are 1 .. n-1.
 */
typedef void (*kt_lthread_setup_fn)(struct keel_loop *loop, int index);

struct kt_lthread {
	pthread_t th;
	int index;
	kt_lthread_setup_fn setup;
	bool started; /* the thread runs: join it */
	int create_err;
	int run_err;
	struct keel_loop_stats st;
};

/* Start threads 1 .. n-1 of lts[]; a thread that cannot start is a failed
 * check. */
void kt_lthreads_start(struct kt_lthread *lts, int n,
		       kt_lthread_setup_fn setup);

/* Join threads 1 .. n-1; each loop must have been created, run without
 * error and left no task, zombie or op behind (failed checks if not). */
void kt_lthreads_join(struct kt_lthread *lts, int n);

#endif
