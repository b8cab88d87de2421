/* SPDX-License-Identifier: MIT */
/*
 * child.c: a supervisor's links to its children, one per incarnation,
 * which carry the start, the stop, the kill and the notices (started,
 * exited) between the supervisor's loop and the child's; and the API of
 * start functions (keel_child_spawn and friends).
 *
 * A child on the supervisor's own loop is reached by direct calls; one on
 * another loop through items posted to that loop's inbox (sched/remote.c),
 * and its notices come back the same way. Each item is embedded in the
 * link, posted at most once, and holds a reference on the link until it
 * has run.
 *
 * Invariants:
 * - link->task is set from the spawn to the exit, on the child's loop
 *   only: a stop or kill that arrives after the exit finds it NULL.
 * - The exited notice is sent from the child's defer stack after every
 *   cleanup pushed before it (an actor is already down by then), with the
 *   exit status (keel_res() during the defers), the panic's message, and
 *   whether it was killed.
 * - A start that fails leaves nothing running: what the start function
 *   spawned before failing is killed.
 */
#include "supervise.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* What a start function gets (keel/supervisor.h). */
struct keel_child_start {
	struct keel__sup_link *link;
	struct keel_loop *loop;
	struct keel_token *token; /* the child's, made before its spawn */
	bool spawned;
};

static bool on_loop(struct keel_loop *loop)
{
	return keel__current_core == keel__core_of(loop);
}

static void post(struct keel_loop *loop, struct keel__remote_item *it)
{
	keel__remote_post(loop, it);
}

static struct keel__sup_link *link_ref(struct keel__sup_link *l)
{
	__atomic_add_fetch(&l->refs, 1, __ATOMIC_RELAXED);
	return l;
}

void keel__sup_link_release(struct keel__sup_link *l)
{
	if (__atomic_sub_fetch(&l->refs, 1, __ATOMIC_ACQ_REL))
		return;
	keel__abort_clear(&l->abort);
	/* A start that succeeded handed these over; a stale one did not. */
	if (l->new_actor)
		keel_actor_release(l->new_actor);
	if (l->new_sup)
		keel_sup_release(l->new_sup);
	keel_sup_release(l->sup);
	free(l);
}

/* ---- notices, to the supervisor's loop ---------------------------------- */

static void started_run(struct keel_loop *loop, struct keel__remote_item *it)
{
	struct keel__sup_link *l =
	    keel_container_of(it, struct keel__sup_link, started_item);

	(void)loop;
	keel__sup_notice(l->sup, l, SUP_NOTICE_STARTED);
	keel__sup_link_release(l); /* the item's */
}

static void exited_run(struct keel_loop *loop, struct keel__remote_item *it)
{
	struct keel__sup_link *l =
	    keel_container_of(it, struct keel__sup_link, exited_item);

	(void)loop;
	keel__sup_notice(l->sup, l, SUP_NOTICE_EXITED);
	keel__sup_link_release(l); /* the item's */
}

static void notify(struct keel__sup_link *l, unsigned what)
{
	struct keel_loop *sup_loop = l->sup->loop;

	if (on_loop(sup_loop)) {
		keel__sup_notice(l->sup, l, what);
		return;
	}
	link_ref(l);
	post(sup_loop,
	     what == SUP_NOTICE_STARTED ? &l->started_item : &l->exited_item);
}

void keel__sup_link_ready(struct keel__sup_link *l)
{
	l->start_result = 0;
	notify(l, SUP_NOTICE_STARTED);
}

static void actor_ready(void *arg)
{
	keel__sup_link_ready(arg);
}

/* ---- the child's side: exit --------------------------------------------- */

/* On the child task's defer stack: its incarnation is over. */
static void link_task_exited(void *arg)
{
	struct keel__sup_link *l = arg;
	struct keel_task *t = l->task;

	l->exit_status = keel_res(t);
	l->killed = (t->flags & KEEL__T_KILLED) != 0;
	l->loop_stopping = keel_token_cancelled(keel_loop_token(l->loop));
	if (l->exit_status == KEEL_ABORTED && t->ext && t->ext->abort.file) {
		const char *msg = t->ext->abort.message;

		l->abort = t->ext->abort;
		l->abort.message = strdup(msg ? msg : "");
	}
	l->task = NULL;
	keel_token_release(l->token);
	l->token = NULL;
	notify(l, SUP_NOTICE_EXITED);
	keel__sup_link_release(l); /* the task's */
}

/* The spawned task is this incarnation: give it its token, keep it. */
static void attach(struct keel_child_start *cs, struct keel_task *t)
{
	struct keel__sup_link *l = cs->link;

	/* Its ext exists (the exit defer was pushed): this cannot fail. */
	keel_task_set_token(t, cs->token);
	l->token = keel_token_ref(cs->token);
	l->task = t;
	link_ref(l); /* the task's, dropped by link_task_exited */
	cs->spawned = true;
}

/* ---- the child's side: start, stop, kill -------------------------------- */

static void stop_run(struct keel_loop *loop, struct keel__remote_item *it);
static void kill_run(struct keel_loop *loop, struct keel__remote_item *it);

static void start_run(struct keel_loop *loop, struct keel__remote_item *it)
{
	struct keel__sup_link *l =
	    keel_container_of(it, struct keel__sup_link, start_item);
	struct keel_child_start cs = {.link = l, .loop = loop};
	int r;

	if (keel_token_cancelled(keel_loop_token(loop))) {
		/* The loop is shutting down: nothing may start on it. */
		l->start_refused = true;
		r = -ESHUTDOWN;
	} else {
		r = keel_token_new(loop, NULL, &cs.token);
		if (!r) {
			r = l->start(&cs, l->arg);
			if (r > 0)
				r = KEEL_CHILD_IGNORE;
			else if (r == 0 && !cs.spawned)
				r = -EINVAL; /* "started" nothing */
			keel_token_release(cs.token);
		}
	}
	l->start_result = r;
	/* An actor or a supervisor says when it is up; else it is now. */
	if (r != 0 || !l->ready_later)
		notify(l, SUP_NOTICE_STARTED);
	/* Failed after spawning: take back what it left running (after the
	 * notice, so that the supervisor hears of the failure first). */
	if (r != 0 && l->task)
		keel_task_kill(l->task);
	keel__sup_link_release(l); /* the item's */
}

int keel__sup_link_start(struct keel_sup *s, struct keel__sup_child *ch)
{
	struct keel__sup_link *l = calloc(1, sizeof(*l));

	if (!l)
		return -ENOMEM;
	l->refs = 2; /* the supervisor's, and the start's */
	l->sup = keel_sup_ref(s);
	l->loop = ch->spec.loop ? ch->spec.loop : s->loop;
	l->id = ch->id;
	l->start = ch->spec.start;
	l->arg = ch->spec.arg;
	l->extra = ch->extra;
	l->restarts = ch->restarts;
	l->keep_mailbox = ch->spec.keep_mailbox;
	l->actor = ch->actor;
	l->start_item.run = start_run;
	l->stop_item.run = stop_run;
	l->kill_item.run = kill_run;
	l->started_item.run = started_run;
	l->exited_item.run = exited_run;
	ch->link = l;
	if (on_loop(l->loop))
		start_run(l->loop, &l->start_item);
	else
		post(l->loop, &l->start_item);
	return 0;
}

static void stop_run(struct keel_loop *loop, struct keel__remote_item *it)
{
	struct keel__sup_link *l =
	    keel_container_of(it, struct keel__sup_link, stop_item);

	(void)loop;
	if (l->task && l->token) {
		keel_token_cancel(l->token);
		/* Cancelled already: this only tells the child, through its
		 * token, how long its cleanup has before the kill. */
		if (l->stop_deadline != UINT64_MAX)
			keel_token_set_deadline(l->token, l->stop_deadline);
	}
	keel__sup_link_release(l); /* the item's */
}

void keel__sup_link_stop(struct keel__sup_link *l, uint64_t deadline)
{
	if (l->stop_posted)
		return;
	l->stop_posted = true;
	l->stop_deadline = deadline;
	link_ref(l);
	if (on_loop(l->loop))
		stop_run(l->loop, &l->stop_item);
	else
		post(l->loop, &l->stop_item);
}

static void kill_run(struct keel_loop *loop, struct keel__remote_item *it)
{
	struct keel__sup_link *l =
	    keel_container_of(it, struct keel__sup_link, kill_item);

	if (l->task && keel_task_kill(l->task) == -ENOMEM) {
		post(loop, it); /* keep the reference: try again next turn */
		return;
	}
	keel__sup_link_release(l); /* the item's */
}

void keel__sup_link_kill(struct keel__sup_link *l)
{
	if (l->kill_posted)
		return;
	l->kill_posted = true;
	link_ref(l);
	if (on_loop(l->loop))
		kill_run(l->loop, &l->kill_item);
	else
		post(l->loop, &l->kill_item);
}

/* ---- inside a start function -------------------------------------------- */

void *keel_child_spawn(struct keel_child_start *cs,
		       const struct keel_task_type *type, unsigned flags)
{
	void *frame;
	struct keel_task *t;

	if (!cs || cs->spawned || !cs->token)
		return NULL;
	frame = keel__spawn(cs->loop, type, flags & KEEL_SPAWN_PRIO_MASK, true);
	if (!frame)
		return NULL;
	t = keel_task_of(type, frame);
	if (keel_defer(t, link_task_exited, cs->link)) {
		keel_task_kill(t); /* it never ran: nothing of it runs */
		return NULL;
	}
	attach(cs, t);
	return frame;
}

int keel_child_spawn_actor(struct keel_child_start *cs,
			   const struct keel_actor_spec *spec, void *state)
{
	struct keel__sup_link *l;
	struct keel_actor *a;
	int err;

	if (!cs || cs->spawned || !cs->token)
		return -EINVAL;
	l = cs->link;
	a = l->actor;
	struct keel__actor_incarnation inc = {
	    .spec = spec,
	    .state = state,
	    .keep_mailbox = l->keep_mailbox,
	    .on_exit = link_task_exited,
	    .exit_arg = l,
	    .on_ready = actor_ready,
	    .ready_arg = l,
	};

	err = keel__actor_start_supervised(cs->loop, &a, &inc);
	if (err)
		return err;
	if (!l->actor)
		l->new_actor = a; /* the first incarnation: the handle's born */
	l->ready_later = true;
	attach(cs, inc.task);
	return 0;
}

/* Called by keel__sup_create() on the new supervisor's task, before its own
 * teardown is pushed (so that the exit notice goes after it). */
static int attach_supervisor(struct keel_task *t, void *arg)
{
	struct keel_child_start *cs = arg;

	if (keel_defer(t, link_task_exited, cs->link))
		return -ENOMEM;
	attach(cs, t);
	return 0;
}

int keel_child_spawn_supervisor(struct keel_child_start *cs,
				const struct keel_sup_spec *spec)
{
	struct keel_sup *sup;
	int err;

	if (!cs || cs->spawned || !cs->token)
		return -EINVAL;
	err = keel__sup_create(cs->loop, spec, cs->link, attach_supervisor, cs,
			       &sup);
	if (err)
		return err;
	cs->link->new_sup = sup;
	cs->link->ready_later = true;
	return 0;
}

void *keel_child_start_extra(const struct keel_child_start *cs)
{
	return cs->link->extra;
}

uint32_t keel_child_start_restarts(const struct keel_child_start *cs)
{
	return cs->link->restarts;
}

struct keel_loop *keel_child_start_loop(const struct keel_child_start *cs)
{
	return cs->loop;
}

struct keel_child_id keel_child_start_id(const struct keel_child_start *cs)
{
	return cs->link->id;
}

struct keel_sup *keel_child_start_sup(const struct keel_child_start *cs)
{
	return cs->link->sup; /* the link holds a reference */
}
