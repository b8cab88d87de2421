/* SPDX-License-Identifier: MIT */
/*
 * test_scope.c: structured concurrency. Gather (every status, finishing
 * order, spawn index), fail-fast (the first failure cancels the sleeping
 * siblings at once), collect (keeps going, every failure reported),
 * join_any in finishing order and a race (first result, cancel the rest),
 * a scope timeout (wait_for) and one that is not reached, a panic in a
 * child reported with its message, the owner's token reaching the
 * children, nested scopes, tasks spawned by a child, empty scopes, a
 * thousand children, and an owner that panics with its children running.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <keel.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "helpers/keel_test.h"

#define MAXK 1024

/* What each child saw (by id), and what the owner got. */
static struct {
	int done;
	int sleep_res;
	uint64_t ns;
	int inner_join; /* K_NESTED: its own scope's join */
} g_kid[MAXK + 8];

static struct {
	int init;
	int join;
	uint64_t join_ns;
	int any[MAXK + 8];
	int nany;
	uint32_t n;
	struct {
		uint32_t index;
		int status;
		char msg[128];
		const char *file;
		int line;
		int signal;
		int has_msg;
	} res[MAXK + 8];
	int after; /* a nop after the join */
	int done;
} g_own;

static int g_panic_line;
static uint64_t g_total_ns;

/* A child of a scope. */
enum kid_mode {
	K_SLEEP,   /* sleep `ns`, then exit with `status` */
	K_PANIC,   /* sleep `ns`, then panic */
	K_NESTED,  /* a scope of its own with two 5 s sleepers, joined */
	K_SPAWNER, /* spawn a plain task sleeping 5 s, then as K_SLEEP */
};

struct kid_spec {
	int mode;
	uint64_t ns;
	int status;
};

struct kid {
	struct keel_task task;
	int mode;
	int id;
	uint64_t ns;
	int status;
	uint64_t t0;
	struct keel_scope inner;
};

static int kid_step(struct keel_task *t);
static KEEL_TASK_TYPE(kid_task, struct kid, task, kid_step);

static struct kid *spawn_kid(struct keel_scope *scope, int id,
			     const struct kid_spec *spec)
{
	struct kid *k = keel_scope_spawn(scope, &kid_task, KEEL_PRIO_NORMAL);

	if (k) {
		k->id = id;
		k->mode = spec->mode;
		k->ns = spec->ns;
		k->status = spec->status;
	}
	return k;
}

static int kid_step(struct keel_task *t)
{
	struct kid *k = keel_container_of(t, struct kid, task);
	static const struct kid_spec sleeper = {K_SLEEP, KT_MS(5000), 0};
	struct kid *g;

	KEEL_BEGIN(t);
	k->t0 = kt_now_ns();
	if (k->mode == K_NESTED) {
		if (keel_scope_init(t, &k->inner, KEEL_SCOPE_COLLECT))
			KEEL_EXIT(t, -ENOMEM);
		for (int i = 0; i < 2; i++)
			if (!spawn_kid(&k->inner, MAXK + i, &sleeper))
				KEEL_EXIT(t, -ENOMEM);
		KEEL_AWAIT(t, keel_scope_join(t, &k->inner));
		g_kid[k->id].inner_join = keel_res(t);
		keel_scope_fini(&k->inner);
		g_kid[k->id].done = 1;
		KEEL_EXIT(t, g_kid[k->id].inner_join);
	}
	if (k->mode == K_SPAWNER) {
		/* A plain task spawned by a child observes the scope's
		 * token too. */
		g = keel_spawn(keel_task_loop(t), &kid_task, KEEL_PRIO_NORMAL);
		if (!g)
			KEEL_EXIT(t, -ENOMEM);
		g->id = MAXK + 2;
		g->mode = K_SLEEP;
		g->ns = KT_MS(5000);
	}
	KEEL_AWAIT(t, keel_sleep(t, k->ns));
	g_kid[k->id].sleep_res = keel_res(t);
	g_kid[k->id].ns = kt_now_ns() - k->t0;
	g_kid[k->id].done = 1;
	if (keel_res(t) < 0)
		KEEL_EXIT(t, keel_res(t));
	if (k->mode == K_PANIC) {
		g_panic_line = __LINE__ + 1;
		keel_panic("kid %d gives up", k->id);
	}
	KEEL_EXIT(t, k->status);
}

/* The owner: opens a scope, spawns the children, and joins one way. */
enum owner_mode {
	O_JOIN,	   /* join */
	O_RACE,	   /* join_any, cancel the rest, join, join_any to the end */
	O_ANY_ALL, /* join_any until -ECHILD, then join */
};

struct owner {
	struct keel_task task;
	int mode;
	int policy;
	int nkids;
	uint64_t timeout;
	const struct kid_spec *spec;
	struct keel_scope scope;
	uint64_t t0;
	int i;
};

static int owner_step(struct keel_task *t);
static KEEL_TASK_TYPE(owner_task, struct owner, task, owner_step);

static void record_results(const struct keel_scope *scope)
{
	const struct keel_scope_result *r = keel_scope_results(scope, &g_own.n);

	for (uint32_t i = 0; i < g_own.n && i < MAXK + 8; i++) {
		g_own.res[i].index = r[i].index;
		g_own.res[i].status = r[i].status;
		g_own.res[i].file = r[i].abort.file;
		g_own.res[i].line = r[i].abort.line;
		g_own.res[i].signal = r[i].abort.signal;
		g_own.res[i].has_msg = r[i].abort.message != NULL;
		if (r[i].abort.message)
			snprintf(g_own.res[i].msg, sizeof(g_own.res[i].msg),
				 "%s", r[i].abort.message);
	}
}

static int owner_step(struct keel_task *t)
{
	struct owner *o = keel_container_of(t, struct owner, task);

	KEEL_BEGIN(t);
	g_own.init = keel_scope_init(t, &o->scope, o->policy);
	if (g_own.init)
		KEEL_EXIT(t, g_own.init);
	if (o->timeout && keel_scope_set_timeout(&o->scope, o->timeout))
		KEEL_EXIT(t, -ENOMEM);
	for (o->i = 0; o->i < o->nkids; o->i++)
		if (!spawn_kid(&o->scope, o->i, &o->spec[o->i]))
			KEEL_EXIT(t, -ENOMEM);
	o->t0 = kt_now_ns();
	if (o->mode == O_RACE) {
		KEEL_AWAIT(t, keel_scope_join_any(t, &o->scope));
		g_own.any[g_own.nany++] = keel_res(t);
		keel_scope_cancel(&o->scope);
	}
	if (o->mode == O_ANY_ALL) {
		do {
			KEEL_AWAIT(t, keel_scope_join_any(t, &o->scope));
			g_own.any[g_own.nany++] = keel_res(t);
		} while (keel_res(t) != -ECHILD && g_own.nany < MAXK + 4);
	}
	KEEL_AWAIT(t, keel_scope_join(t, &o->scope));
	g_own.join = keel_res(t);
	g_own.join_ns = kt_now_ns() - o->t0;
	if (o->mode == O_RACE) {
		do {
			KEEL_AWAIT(t, keel_scope_join_any(t, &o->scope));
			g_own.any[g_own.nany++] = keel_res(t);
		} while (keel_res(t) != -ECHILD && g_own.nany < MAXK + 4);
	}
	record_results(&o->scope);
	keel_scope_fini(&o->scope);
	KEEL_AWAIT(t, keel_nop(t));
	g_own.after = keel_res(t);
	g_own.done = 1;
	KEEL_END(t);
}

static void cancel_token_cb(struct keel_loop *loop, struct keel_timer *tm,
			    void *arg)
{
	keel_token_cancel(arg);
}

/*
 * Run an owner with `n` children; `cancel_ms` > 0 cancels the owner's
 * token that many ms in. Returns the loop's stats at the end.
 */
static struct keel_loop_stats run_owner(int mode, int policy,
					const struct kid_spec *spec, int n,
					uint64_t timeout, int cancel_ms)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_token *tok = NULL;
	struct keel_loop_stats s;
	struct keel_timer tm;
	struct owner *o = kt_spawn(loop, &owner_task, KEEL_PRIO_NORMAL);
	uint64_t t0;

	o->mode = mode;
	o->policy = policy;
	o->spec = spec;
	o->nkids = n;
	o->timeout = timeout;
	if (cancel_ms) {
		cr_assert_eq(keel_token_new(loop, NULL, &tok), 0);
		cr_assert_eq(
		    keel_task_set_token(keel_task_of(&owner_task, o), tok), 0);
		keel_timer_init(&tm, cancel_token_cb, tok);
		cr_assert_eq(keel_timer_arm_after(loop, &tm, KT_MS(cancel_ms)),
			     0);
	}
	t0 = kt_now_ns();
	kt_loop_run(loop);
	g_total_ns = kt_now_ns() - t0;
	cr_assert(g_own.done, "the owner did not finish");
	cr_assert_eq(g_own.init, 0);
	s = kt_stats(loop);
	cr_assert_eq(s.tasks_live, 0);
	cr_assert_eq(s.zombies, 0);
	cr_assert_eq(s.ops_inflight, 0);
	cr_assert_eq(s.timers_armed, 0);
	if (tok)
		keel_token_release(tok);
	keel_loop_destroy(loop);
	return s;
}

/* The result of the child spawned `index`-th. */
static int status_of(uint32_t index)
{
	for (uint32_t i = 0; i < g_own.n; i++)
		if (g_own.res[i].index == index)
			return g_own.res[i].status;
	cr_assert_fail("no result for child %u", index);
	return 0;
}

static void expect_order(const uint32_t *want, uint32_t n)
{
	cr_assert_eq(g_own.n, n, "%u results, expected %u", g_own.n, n);
	for (uint32_t i = 0; i < n; i++)
		cr_assert_eq(g_own.res[i].index, want[i],
			     "result %u is child %u, expected %u", i,
			     g_own.res[i].index, want[i]);
}

Test(scope, gather_returns_every_status_in_finishing_order, .timeout = 10)
{
	const struct kid_spec spec[] = {
	    {K_SLEEP, KT_MS(40), 10},
	    {K_SLEEP, KT_MS(10), 11},
	    {K_SLEEP, KT_MS(30), 12},
	    {K_SLEEP, KT_MS(20), 13},
	};

	run_owner(O_JOIN, KEEL_SCOPE_FAIL_FAST, spec, 4, 0, 0);
	cr_assert_eq(g_own.join, 0, "join gave %d", g_own.join);
	/* The join waited for the slowest child. */
	cr_assert_geq(g_own.join_ns, KT_MS(40));
	expect_order((const uint32_t[]){1, 3, 2, 0}, 4);
	for (uint32_t i = 0; i < 4; i++) {
		cr_assert_eq(status_of(i), 10 + (int)i);
		cr_assert_null(g_own.res[i].file);
	}
	cr_assert_eq(g_own.after, 0);
}

Test(scope, fail_fast_cancels_sleeping_siblings_at_once, .timeout = 10)
{
	const struct kid_spec spec[] = {
	    {K_SLEEP, KT_MS(5000), 1},
	    {K_SLEEP, KT_MS(20), -EIO},
	    {K_SLEEP, KT_MS(5000), 2},
	    {K_SLEEP, KT_MS(5), 7},
	};

	run_owner(O_JOIN, KEEL_SCOPE_FAIL_FAST, spec, 4, 0, 0);
	cr_assert_eq(g_own.join, -EIO, "join gave %d", g_own.join);
	cr_assert_lt(g_own.join_ns, KT_MS(1000), "join took %lu ns",
		     (unsigned long)g_own.join_ns);
	cr_assert_lt(g_total_ns, KT_MS(1000));
	cr_assert_eq(g_own.n, 4);
	/* The one that had finished first kept its status. */
	cr_assert_eq(g_own.res[0].index, 3);
	cr_assert_eq(g_own.res[1].index, 1);
	cr_assert_eq(status_of(3), 7);
	cr_assert_eq(status_of(1), -EIO);
	cr_assert_eq(status_of(0), -ECANCELED);
	cr_assert_eq(status_of(2), -ECANCELED);
	cr_assert_eq(g_kid[0].sleep_res, -ECANCELED);
	cr_assert_lt(g_kid[0].ns, KT_MS(1000));
}

Test(scope, collect_keeps_going_and_reports_every_failure, .timeout = 10)
{
	const struct kid_spec spec[] = {
	    {K_SLEEP, KT_MS(10), -EIO}, {K_SLEEP, KT_MS(20), -EPIPE},
	    {K_SLEEP, KT_MS(60), 5},	{K_PANIC, KT_MS(30), 0},
	    {K_SLEEP, KT_MS(40), 6},
	};
	struct keel_loop_stats s;

	s = run_owner(O_JOIN, KEEL_SCOPE_COLLECT, spec, 5, 0, 0);
	cr_assert_eq(g_own.join, -ECHILD, "join gave %d", g_own.join);
	cr_assert_geq(g_own.join_ns, KT_MS(60));
	expect_order((const uint32_t[]){0, 1, 3, 4, 2}, 5);
	cr_assert_eq(status_of(0), -EIO);
	cr_assert_eq(status_of(1), -EPIPE);
	cr_assert_eq(status_of(2), 5);
	cr_assert_eq(status_of(3), KEEL_ABORTED);
	cr_assert_eq(status_of(4), 6);
	/* The others were not cancelled by the failures. */
	cr_assert_eq(g_kid[2].sleep_res, 0);
	cr_assert_eq(g_kid[4].sleep_res, 0);
	cr_assert_str_eq(g_own.res[2].msg, "kid 3 gives up");
	cr_assert_eq(s.aborted, 1);
}

Test(scope, join_any_gives_each_child_in_finishing_order_then_echild,
     .timeout = 10)
{
	const struct kid_spec spec[] = {
	    {K_SLEEP, KT_MS(30), 1},
	    {K_SLEEP, KT_MS(10), 2},
	    {K_SLEEP, KT_MS(20), -EIO},
	};

	/* COLLECT: the failure does not cancel the last one. */
	run_owner(O_ANY_ALL, KEEL_SCOPE_COLLECT, spec, 3, 0, 0);
	cr_assert_eq(g_own.nany, 4);
	cr_assert_eq(g_own.any[0], 2);
	cr_assert_eq(g_own.any[1], -EIO);
	cr_assert_eq(g_own.any[2], 1);
	cr_assert_eq(g_own.any[3], -ECHILD);
	cr_assert_eq(g_own.join, -ECHILD);
	expect_order((const uint32_t[]){1, 2, 0}, 3);
}

Test(scope, race_takes_first_result_then_cancels_the_rest, .timeout = 10)
{
	const struct kid_spec spec[] = {
	    {K_SLEEP, KT_MS(3000), 1},
	    {K_SLEEP, KT_MS(10), 2},
	    {K_SLEEP, KT_MS(5000), 3},
	};

	run_owner(O_RACE, KEEL_SCOPE_FAIL_FAST, spec, 3, 0, 0);
	cr_assert_eq(g_own.any[0], 2, "join_any gave %d", g_own.any[0]);
	/* The losers were cancelled: the whole race took ~10 ms. */
	cr_assert_lt(g_total_ns, KT_MS(1000), "took %lu ns",
		     (unsigned long)g_total_ns);
	cr_assert_eq(g_own.join, -ECANCELED, "join gave %d", g_own.join);
	cr_assert_eq(status_of(1), 2);
	cr_assert_eq(status_of(0), -ECANCELED);
	cr_assert_eq(status_of(2), -ECANCELED);
	/* join_any goes on with what it had not reported yet. */
	cr_assert_eq(g_own.nany, 4);
	cr_assert_eq(g_own.any[1], -ECANCELED);
	cr_assert_eq(g_own.any[2], -ECANCELED);
	cr_assert_eq(g_own.any[3], -ECHILD);
	cr_assert_eq(g_own.res[0].index, 1);
}

Test(scope, timeout_cuts_scope_with_etimedout, .timeout = 10)
{
	const struct kid_spec spec[] = {
	    {K_SLEEP, KT_MS(5), 1},
	    {K_SLEEP, KT_MS(5000), 2},
	    {K_SLEEP, KT_MS(5000), 3},
	};

	run_owner(O_JOIN, KEEL_SCOPE_COLLECT, spec, 3, KT_MS(30), 0);
	cr_assert_eq(g_own.join, -ETIMEDOUT, "join gave %d", g_own.join);
	cr_assert_geq(g_own.join_ns, KT_MS(25));
	cr_assert_lt(g_own.join_ns, KT_MS(1000));
	cr_assert_eq(status_of(0), 1);
	cr_assert_eq(status_of(1), -ETIMEDOUT);
	cr_assert_eq(status_of(2), -ETIMEDOUT);
	cr_assert_eq(g_kid[1].sleep_res, -ETIMEDOUT);
	/* The owner's own token was not touched. */
	cr_assert_eq(g_own.after, 0);
}

Test(scope, timeout_not_reached_leaves_results_and_releases_timer,
     .timeout = 10)
{
	const struct kid_spec spec[] = {
	    {K_SLEEP, KT_MS(5), 1},
	    {K_SLEEP, KT_MS(10), 2},
	};

	/* A 5 s scope deadline: the loop must not wait for it. */
	run_owner(O_JOIN, KEEL_SCOPE_FAIL_FAST, spec, 2, KT_MS(5000), 0);
	cr_assert_eq(g_own.join, 0);
	cr_assert_eq(status_of(0), 1);
	cr_assert_eq(status_of(1), 2);
	cr_assert_lt(g_total_ns, KT_MS(1000), "took %lu ns",
		     (unsigned long)g_total_ns);
}

Test(scope, panic_in_child_is_reported_with_its_message, .timeout = 10)
{
	const struct kid_spec spec[] = {
	    {K_SLEEP, KT_MS(5000), 1},
	    {K_PANIC, KT_MS(10), 0},
	};
	struct keel_loop_stats s;

	s = run_owner(O_JOIN, KEEL_SCOPE_FAIL_FAST, spec, 2, 0, 0);
	cr_assert_eq(g_own.join, KEEL_ABORTED, "join gave %d", g_own.join);
	cr_assert_lt(g_own.join_ns, KT_MS(1000));
	cr_assert_eq(g_own.n, 2);
	cr_assert_eq(g_own.res[0].index, 1);
	cr_assert_eq(g_own.res[0].status, KEEL_ABORTED);
	cr_assert(g_own.res[0].has_msg);
	cr_assert_str_eq(g_own.res[0].msg, "kid 1 gives up");
	cr_assert_not_null(g_own.res[0].file);
	cr_assert_str_eq(g_own.res[0].file, __FILE__);
	cr_assert_eq(g_own.res[0].line, g_panic_line);
	cr_assert_eq(g_own.res[0].signal, 0);
	/* The sibling was cancelled and has no abort record. */
	cr_assert_eq(g_own.res[1].status, -ECANCELED);
	cr_assert(!g_own.res[1].has_msg);
	cr_assert_eq(s.aborted, 1);
}

Test(scope, owner_token_cancel_reaches_children_and_join_waits, .timeout = 10)
{
	const struct kid_spec spec[] = {
	    {K_SLEEP, KT_MS(5000), 1},
	    {K_SLEEP, KT_MS(5000), 2},
	    {K_SLEEP, KT_MS(5), 3},
	};

	run_owner(O_JOIN, KEEL_SCOPE_COLLECT, spec, 3, 0, 20);
	cr_assert_lt(g_total_ns, KT_MS(1000));
	/* The join was not cut short: it has every child's result. */
	cr_assert_eq(g_own.n, 3);
	cr_assert_eq(g_own.join, -ECHILD, "join gave %d", g_own.join);
	cr_assert_eq(status_of(0), -ECANCELED);
	cr_assert_eq(status_of(1), -ECANCELED);
	cr_assert_eq(status_of(2), 3);
	cr_assert_eq(g_own.after, -ECANCELED);
}

Test(scope, nested_scope_is_cut_by_outer_timeout, .timeout = 10)
{
	const struct kid_spec spec[] = {
	    {K_NESTED, 0, 0},
	    {K_SLEEP, KT_MS(5), 4},
	};

	run_owner(O_JOIN, KEEL_SCOPE_FAIL_FAST, spec, 2, KT_MS(30), 0);
	cr_assert_lt(g_total_ns, KT_MS(1000));
	cr_assert_eq(g_kid[MAXK].sleep_res, -ETIMEDOUT);
	cr_assert_eq(g_kid[MAXK + 1].sleep_res, -ETIMEDOUT);
	cr_assert_eq(g_kid[0].inner_join, -ETIMEDOUT, "inner join gave %d",
		     g_kid[0].inner_join);
	cr_assert_eq(status_of(0), -ETIMEDOUT);
	cr_assert_eq(status_of(1), 4);
	cr_assert_eq(g_own.join, -ETIMEDOUT);
}

Test(scope, task_spawned_by_child_observes_scope_token, .timeout = 10)
{
	const struct kid_spec spec[] = {
	    {K_SPAWNER, KT_MS(5000), 1},
	};

	run_owner(O_RACE, KEEL_SCOPE_COLLECT, spec, 1, KT_MS(20), 0);
	/* The plain task outlives the scope's join but not its deadline. */
	cr_assert(g_kid[MAXK + 2].done);
	cr_assert_eq(g_kid[MAXK + 2].sleep_res, -ETIMEDOUT, "it gave %d",
		     g_kid[MAXK + 2].sleep_res);
	cr_assert_lt(g_total_ns, KT_MS(1000));
	cr_assert_eq(g_own.any[0], -ETIMEDOUT);
}

Test(scope, empty_scope_joins_at_once, .timeout = 10)
{
	run_owner(O_ANY_ALL, KEEL_SCOPE_FAIL_FAST, NULL, 0, 0, 0);
	cr_assert_eq(g_own.nany, 1);
	cr_assert_eq(g_own.any[0], -ECHILD);
	cr_assert_eq(g_own.join, 0);
	cr_assert_eq(g_own.n, 0);
}

Test(scope, thousand_children_each_reported_once, .timeout = 30)
{
	static struct kid_spec spec[MAXK];
	int seen[MAXK] = {0};

	for (int i = 0; i < MAXK; i++) {
		spec[i].mode = i % 97 == 5 ? K_PANIC : K_SLEEP;
		spec[i].ns = (uint64_t)(i * 37 % 1000) * 1000;
		spec[i].status = i % 10 == 3 ? -(i % 100) - 1000 : i;
	}
	run_owner(O_JOIN, KEEL_SCOPE_COLLECT, spec, MAXK, 0, 0);
	cr_assert_eq(g_own.join, -ECHILD);
	cr_assert_eq(g_own.n, MAXK);
	for (uint32_t i = 0; i < MAXK; i++) {
		uint32_t idx = g_own.res[i].index;
		int want =
		    spec[idx].mode == K_PANIC ? KEEL_ABORTED : spec[idx].status;

		cr_assert_lt(idx, MAXK);
		cr_assert_eq(seen[idx]++, 0, "child %u reported twice", idx);
		cr_assert_eq(g_own.res[i].status, want, "child %u: %d", idx,
			     g_own.res[i].status);
		if (want == KEEL_ABORTED) {
			char msg[64];

			snprintf(msg, sizeof(msg), "kid %u gives up", idx);
			cr_assert_str_eq(g_own.res[i].msg, msg);
		}
	}
}

/*
 * An owner that panics with its scope's children still running: its frame
 * (which holds the scope) is freed by the abort, yet the children report
 * to the scope when they finish. They must be cancelled and finish without
 * touching freed memory (ASan checks).
 */
struct rash_owner {
	struct keel_task task;
	struct keel_scope scope;
};

static int rash_owner_step(struct keel_task *t);
static KEEL_TASK_TYPE(rash_owner_task, struct rash_owner, task,
		      rash_owner_step);

static int rash_owner_step(struct keel_task *t)
{
	struct rash_owner *o = keel_container_of(t, struct rash_owner, task);
	const struct kid_spec spec = {K_SLEEP, KT_MS(300), 9};

	KEEL_BEGIN(t);
	if (keel_scope_init(t, &o->scope, KEEL_SCOPE_FAIL_FAST))
		KEEL_EXIT(t, -ENOMEM);
	for (int i = 0; i < 2; i++)
		if (!spawn_kid(&o->scope, i, &spec))
			KEEL_EXIT(t, -ENOMEM);
	KEEL_AWAIT(t, keel_nop(t));
	keel_panic("owner gives up with its scope open");
}

Test(scope, owner_panic_with_children_running_cancels_them, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_loop_stats s;

	kt_spawn(loop, &rash_owner_task, KEEL_PRIO_NORMAL);
	kt_loop_run(loop);
	s = kt_stats(loop);
	cr_assert_eq(s.aborted, 1);
	cr_assert_eq(s.tasks_live, 0);
	cr_assert_eq(s.zombies, 0);
	for (int i = 0; i < 2; i++) {
		cr_assert(g_kid[i].done);
		cr_assert_eq(g_kid[i].sleep_res, -ECANCELED,
			     "child %d was not cancelled by its owner's abort "
			     "(sleep gave %d)",
			     i, g_kid[i].sleep_res);
	}
	keel_loop_destroy(loop);
}
