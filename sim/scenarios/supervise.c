/* SPDX-License-Identifier: MIT */
/*
 * supervise.c: a supervision tree whose workers panic, fail, exit and
 * refuse to stop, at PRNG-chosen times. A root supervisor (one_for_one)
 * supervises one or two child supervisors (one_for_one, one_for_all or
 * rest_for_one, low restart intensity), each with a few workers of random
 * restart types and shutdown timeouts. When a child supervisor's
 * intensity is exceeded it stops its children and exits: escalation to
 * the root, which restarts it, until the root's own intensity runs out
 * or a stopper task stops the tree.
 *
 * Checked: the tree ends (keel_sup_wait returns 0 or -ESHUTDOWN); every
 * worker incarnation started has ended (its defer ran: panicked, killed,
 * cancelled or exited) once the root has exited; nothing is left on the
 * loop.
 */
#include "scenario.h"

#include <errno.h>
#include <string.h>

#define MAX_WORKERS 5

enum fate { PANIC, FAIL, DONE, LOOP, STUBBORN, NFATES };

struct tree {
	struct scn *s;
	unsigned live; /* worker incarnations not yet ended */
	uint64_t started, ended;
	struct keel_sup *root;
	struct keel_child_spec workers[2][MAX_WORKERS];
	struct keel_sup_spec child_specs[2];
	struct keel_child_spec root_children[2];
};

struct worker {
	struct keel_task task;
	struct tree *tr;
	enum fate fate;
	unsigned rounds;
	struct keel_shield shield;
};

struct stopper {
	struct keel_task task;
	struct tree *tr;
	uint64_t after;
};

static int worker_step(struct keel_task *t);
static int stopper_step(struct keel_task *t);
static KEEL_TASK_TYPE(sup_worker, struct worker, task, worker_step);
static KEEL_TASK_TYPE(sup_stopper, struct stopper, task, stopper_step);

static void worker_gone(void *arg)
{
	struct tree *tr = arg;

	tr->live--;
	tr->ended++;
}

static int worker_step(struct keel_task *t)
{
	struct worker *w = keel_container_of(t, struct worker, task);
	struct scn *s = w->tr->s;

	KEEL_BEGIN(t);
	for (;;) {
		if (scn_pct(s, 30)) {
			keel_op_timeout(t, scn_range(s, 1, 50) * MS);
			KEEL_AWAIT(t, keel_nop(t));
		}
		KEEL_AWAIT(t, keel_sleep(t, scn_range(s, 1, 300) * MS));
		if (keel_res(t) < 0)
			KEEL_EXIT(t, keel_res(t)); /* told to stop */
		if (w->rounds++ < 3 && w->fate == LOOP)
			continue;
		switch (w->fate) {
		case PANIC:
			keel_panic("worker panics on purpose");
		case FAIL:
			KEEL_EXIT(t, -EIO);
		case STUBBORN:
			/* Ignores its cancellation: only a kill stops it. */
			if (keel_shield_begin(t, &w->shield, UINT64_MAX))
				KEEL_EXIT(t, -ENOMEM);
			KEEL_AWAIT(t, keel_sleep(t, 3600 * SEC));
			keel_shield_end(t, &w->shield);
			KEEL_EXIT(t, 0);
		default:
			KEEL_EXIT(t, 0);
		}
	}
}

static int start_worker(struct keel_child_start *start, void *arg)
{
	struct tree *tr = arg;
	struct worker *w =
	    keel_child_spawn(start, &sup_worker, KEEL_PRIO_NORMAL);

	if (!w)
		return -ENOMEM;
	w->tr = tr;
	w->fate = (enum fate)scn_below(tr->s, NFATES);
	/* Here, not in its first step: a brutal kill may come first. Out
	 * of memory, it is not counted and fails at its first chance. */
	if (keel_defer(keel_task_of(&sup_worker, w), worker_gone, tr)) {
		w->fate = FAIL;
		return 0;
	}
	tr->live++;
	tr->started++;
	return 0;
}

static int start_child_sup(struct keel_child_start *start, void *arg)
{
	return keel_child_spawn_supervisor(start, arg);
}

static int stopper_step(struct keel_task *t)
{
	struct stopper *st = keel_container_of(t, struct stopper, task);
	struct tree *tr = st->tr;
	struct keel_sup_stats ss;

	KEEL_BEGIN(t);
	KEEL_AWAIT(t, keel_sleep(t, st->after));
	keel_sup_stop(tr->root);
	KEEL_AWAIT(t, keel_sup_wait(t, tr->root));
	if (keel_res(t) != 0 && keel_res(t) != -ESHUTDOWN)
		scn_fail(tr->s, "root supervisor: %s",
			 keel_strerror(keel_res(t)));
	keel_sup_stats(tr->root, &ss);
	if (ss.state != KEEL_SUP_EXITED || ss.active)
		scn_fail(tr->s, "root supervisor: state %d, %u active",
			 (int)ss.state, ss.active);
	if (tr->live)
		scn_fail(tr->s, "%u of %llu workers never ended", tr->live,
			 (unsigned long long)tr->started);
	tr->s->transfers += ss.restarts;
	keel_sup_release(tr->root);
	tr->root = NULL;
	KEEL_END(t);
}

static void supervise_run(struct scn *s)
{
	static const enum keel_sup_strategy strategies[] = {
	    KEEL_ONE_FOR_ONE, KEEL_ONE_FOR_ALL, KEEL_REST_FOR_ONE};
	static const enum keel_restart restarts[] = {
	    KEEL_PERMANENT, KEEL_TRANSIENT, KEEL_TEMPORARY};
	static const int64_t shutdowns[] = {KEEL_SHUTDOWN_BRUTAL_KILL, 20, 100};
	static const char *const names[2][MAX_WORKERS] = {
	    {"a0", "a1", "a2", "a3", "a4"}, {"b0", "b1", "b2", "b3", "b4"}};
	struct tree *tr = scn_world(s, sizeof(*tr));
	struct keel_sup_spec root = {0};
	struct keel_loop *loop = scn_loop(s);
	unsigned nsups = (unsigned)scn_range(s, 1, 2);
	int err;

	if (!tr || !loop)
		return;
	tr->s = s;
	for (unsigned k = 0; k < nsups; k++) {
		unsigned n = (unsigned)scn_range(s, 1, MAX_WORKERS);

		for (unsigned i = 0; i < n; i++) {
			struct keel_child_spec *c = &tr->workers[k][i];

			c->name = names[k][i];
			c->start = start_worker;
			c->arg = tr;
			c->restart = restarts[scn_below(s, 3)];
			c->shutdown_ms = shutdowns[scn_below(s, 3)];
		}
		tr->child_specs[k] = (struct keel_sup_spec){
		    .name = k ? "sup_b" : "sup_a",
		    .strategy = strategies[scn_below(s, 3)],
		    .intensity = (uint32_t)scn_range(s, 1, 3),
		    .period_ms = (uint32_t)scn_range(s, 100, 1000),
		    .children = tr->workers[k],
		    .nchildren = n,
		    .seed = s->seed,
		};
		tr->root_children[k] = (struct keel_child_spec){
		    .name = k ? "sup_b" : "sup_a",
		    .start = start_child_sup,
		    .arg = &tr->child_specs[k],
		    .restart = KEEL_PERMANENT,
		    .shutdown_ms = KEEL_SHUTDOWN_INFINITY,
		    .type = KEEL_SUPERVISOR,
		};
	}
	root.name = "root";
	root.strategy = KEEL_ONE_FOR_ONE;
	root.intensity = (uint32_t)scn_range(s, 1, 4);
	root.period_ms = 2000;
	root.children = tr->root_children;
	root.nchildren = nsups;
	root.seed = s->seed;
	err = keel_sup_start(loop, &root, &tr->root);
	if (err) {
		scn_fail(s, "keel_sup_start: %s", keel_strerror(err));
		return;
	}
	struct stopper *st = keel_spawn(loop, &sup_stopper, KEEL_PRIO_NORMAL);

	if (!st) {
		scn_fail(s, "out of memory");
		keel_sup_release(tr->root);
		return;
	}
	st->tr = tr;
	st->after = scn_range(s, 100, 5000) * MS;
	scn_run(s, 600 * SEC);
	if (tr->root) /* the run failed before the stopper was done */
		keel_sup_release(tr->root);
}

const struct scenario scn_supervise = {
    .name = "supervise",
    .what = "supervision trees: panics, failures, stubborn children, "
	    "escalation",
    .run = supervise_run,
};
