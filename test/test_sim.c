/* SPDX-License-Identifier: MIT */
/*
 * test_sim.c: the simulated kernel's ring engine (keel/sim.h) through
 * keel's public API on simulated loops: virtual time, links and linked
 * timeouts, ASYNC_CANCEL and its race, CQ overflow, MSG_RING between the
 * machine's loops, provided buffers and multishot, injected results, and
 * determinism (the same seed gives the same trace).
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <keel.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "helpers/keel_test.h"
#include "sim.h"

static struct keel_sim *sim_new(uint64_t seed)
{
	struct keel_sim_opts o = {.seed = seed};
	struct keel_sim *sim;

	cr_assert_eq(keel_sim_create(&sim, &o), 0);
	return sim;
}

static struct keel_loop *sim_loop(struct keel_sim *sim,
				  const struct keel_loop_opts *opts)
{
	struct keel_loop *loop;

	cr_assert_eq(keel_sim_loop_create(sim, &loop, opts), 0);
	return loop;
}

static void sim_done(struct keel_sim *sim, struct keel_loop *loop)
{
	char why[128];

	keel_loop_destroy(loop);
	cr_assert_eq(keel_sim_check(sim, why, sizeof(why)), 0, "%s", why);
	keel_sim_destroy(sim);
}

/* ---- virtual time ---- */

struct sleeper {
	struct keel_task task;
	uint64_t ns;
	int n;
	int i;
	int res;
	uint64_t woke;
};

static int sleeper_step(struct keel_task *t);
static KEEL_TASK_TYPE(sleeper_task, struct sleeper, task, sleeper_step);

static int sleeper_step(struct keel_task *t)
{
	struct sleeper *s = keel_container_of(t, struct sleeper, task);

	KEEL_BEGIN(t);
	for (s->i = 0; s->i < s->n; s->i++) {
		KEEL_AWAIT(t, keel_sleep(t, s->ns));
		s->res = keel_res(t);
	}
	s->woke = keel_loop_now(keel_task_loop(t));
	KEEL_END(t);
}

Test(sim, ten_virtual_minutes_of_sleep_take_no_real_time, .timeout = 10)
{
	struct keel_sim *sim = sim_new(1);
	struct keel_loop *loop = sim_loop(sim, NULL);
	uint64_t start = keel_sim_now(sim);
	uint64_t real = kt_now_ns();
	struct sleeper *s = kt_spawn(loop, &sleeper_task, KEEL_PRIO_NORMAL);

	s->ns = 60ull * 1000000000u;
	s->n = 10;
	cr_assert_eq(keel_sim_run(sim, 0), 0);
	cr_assert_eq(s->res, 0);
	cr_assert_geq(keel_sim_now(sim) - start, 600ull * 1000000000u);
	cr_assert_lt(keel_sim_now(sim) - start, 601ull * 1000000000u);
	/* A generous bound: only a hang or real sleeping would exceed it. */
	cr_assert_lt(kt_now_ns() - real, 5ull * 1000000000u);
	sim_done(sim, loop);
}
