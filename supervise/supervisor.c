/* SPDX-License-Identifier: MIT */
/*
 * supervisor.c: the supervisor task (semantics in keel/supervisor.h): its
 * start, OTP's restart decisions (do_restart, add_restart, the four
 * strategies, auto_shutdown), backoff, requests, and its shutdown.
 *
 * The task has a single await: it waits for a kick (a link's notice, a
 * request, its timer, its token's cancellation) and then runs sup_run(),
 * plain code that takes in the notices and carries its plan on as far as
 * it can without waiting. A plan is a list of steps (start this child,
 * stop that one) done in order, each waiting for the child's start or
 * exit: the initial start, a restart, a request and the shutdown are
 * plans. Exits that come in meanwhile are queued and decided after the
 * plan, in order, as OTP's supervisor handles its messages one at a time.
 *
 * Invariants:
 * - A child has a link exactly while it may be running (STARTING, RUNNING,
 *   STOPPING); a notice whose link is not its child's current one is stale
 *   (the child was stopped and restarted meanwhile) and is ignored.
 * - Its own token never interrupts the supervisor: a shield is up for its
 *   whole life, and the cancellation of the token it had is seen by a
 *   callback, which starts an orderly shutdown (reverse start order).
 * - Restarts are time-stamped when they are decided (add_restart),
 *   whatever the backoff, so a delay cannot hide one from the intensity
 *   check; a failed restart attempt is decided, and stamped, again.
 * - Fields that snapshots read are written under `lock`; user code (start
 *   functions, a killed child's defers) never runs with it held.
 */
#include "supervise.h"

#include <errno.h>
#include <keel/loop.h>
#include <stdlib.h>
#include <string.h>

#define SUP_WAIT 0
#define SUP_DONE 1

#define WORKER_SHUTDOWN_MS 5000 /* OTP's default for a worker */

struct sup_frame {
	struct keel_task task;
	struct keel_sup *sup; /* NULL: its creation failed, exit at once */
};

static int sup_step(struct keel_task *t);
static KEEL_TASK_TYPE(keel_sup_task, struct sup_frame, task, sup_step);

static void lock(struct keel_sup *s)
{
	pthread_mutex_lock(&s->lock);
}

static void unlock(struct keel_sup *s)
{
	pthread_mutex_unlock(&s->lock);
}

/* The clock of restart intensity. */
static uint64_t sup_now(const struct keel_sup *s)
{
	return s->now ? s->now(s->loop) : keel_loop_now(s->loop);
}

static int64_t shutdown_of(const struct keel_child_spec *spec)
{
	if (spec->shutdown_ms != KEEL_SHUTDOWN_DEFAULT)
		return spec->shutdown_ms;
	return spec->type == KEEL_SUPERVISOR ? KEEL_SHUTDOWN_INFINITY
					     : WORKER_SHUTDOWN_MS;
}

/* ---- the child table ---------------------------------------------------- */

struct keel__sup_child *keel__sup_lookup(struct keel_sup *s,
					 struct keel_child_id id)
{
	struct keel__sup_child *ch;

	if (!id.gen || id.slot >= s->nslots)
		return NULL;
	ch = s->slots[id.slot];
	return ch && ch->id.gen == id.gen ? ch : NULL;
}

static struct keel__sup_child *find_by_name(struct keel_sup *s,
					    const char *name)
{
	for (uint32_t i = 0; i < s->norder; i++) {
		struct keel__sup_child *ch = s->slots[s->order[i]];

		if (!strcmp(ch->spec.name, name))
			return ch;
	}
	return NULL;
}

static bool grow(void **p, uint32_t cap, size_t size)
{
	void *q = realloc(*p, cap * size);

	if (!q)
		return false;
	*p = q;
	return true;
}

/* Room for one more slot (the three slot arrays grow together). */
static bool slots_grow(struct keel_sup *s)
{
	uint32_t cap = s->slots_cap ? s->slots_cap * 2 : 8;

	if (s->nslots < s->slots_cap)
		return true;
	if (!grow((void **)&s->slots, cap, sizeof(*s->slots)) ||
	    !grow((void **)&s->slot_gen, cap, sizeof(*s->slot_gen)) ||
	    !grow((void **)&s->free_slots, cap, sizeof(*s->free_slots)))
		return false;
	s->slots_cap = cap;
	return true;
}

/* A new child in a free slot (lock held, or nobody else sees `s` yet). */
static struct keel__sup_child *child_new(struct keel_sup *s,
					 const struct keel_child_spec *spec,
					 bool dynamic, void *extra)
{
	struct keel__sup_child *ch = calloc(1, sizeof(*ch));
	uint32_t slot;

	if (!ch)
		return NULL;
	ch->spec = *spec;
	ch->spec.name = strdup(spec->name);
	if (!ch->spec.name)
		goto fail;
	if (!s->nfree) {
		if (!slots_grow(s))
			goto fail;
		s->slots[s->nslots] = NULL;
		s->slot_gen[s->nslots] = 0;
		s->free_slots[s->nfree++] = s->nslots++;
	}
	if (!dynamic && s->norder == s->order_cap) {
		uint32_t cap = s->order_cap ? s->order_cap * 2 : 8;

		if (!grow((void **)&s->order, cap, sizeof(*s->order)))
			goto fail;
		s->order_cap = cap;
	}
	slot = s->free_slots[--s->nfree];
	if (++s->slot_gen[slot] == 0)
		s->slot_gen[slot] = 1; /* 0 is never a valid generation */
	ch->id.slot = slot;
	ch->id.gen = s->slot_gen[slot];
	ch->dynamic = dynamic;
	ch->extra = extra;
	s->slots[slot] = ch;
	if (dynamic)
		s->ndynamic++;
	else
		s->order[s->norder++] = slot;
	return ch;
fail:
	free((char *)ch->spec.name);
	free(ch);
	return NULL;
}

/* Take a child out of the table (lock held); child_destroy() frees it. */
static void child_unlink(struct keel_sup *s, struct keel__sup_child *ch)
{
	s->slots[ch->id.slot] = NULL;
	s->free_slots[s->nfree++] = ch->id.slot;
	if (ch->dynamic) {
		s->ndynamic--;
	} else {
		for (uint32_t i = 0; i < s->norder; i++)
			if (s->order[i] == ch->id.slot) {
				memmove(s->order + i, s->order + i + 1,
					(s->norder - i - 1) *
					    sizeof(*s->order));
				s->norder--;
				break;
			}
	}
	if (ch->state == SUP_CH_RESTARTING)
		s->nrestarting--;
	if (ch->actor)
		s->dropped_gone += keel__actor_panic_drops(ch->actor);
}

/* Free an unlinked child (no lock: an actor's on_drop may run). */
static void child_destroy(struct keel__sup_child *ch)
{
	if (ch->link)
		keel__sup_link_release(ch->link);
	if (ch->actor) {
		keel__actor_retire(ch->actor);
		keel_actor_release(ch->actor);
	}
	if (ch->child_sup)
		keel_sup_release(ch->child_sup);
	free((char *)ch->spec.name);
	free(ch);
}

static void child_remove(struct keel_sup *s, struct keel__sup_child *ch)
{
	lock(s);
	child_unlink(s, ch);
	unlock(s);
	child_destroy(ch);
}

static void set_state(struct keel_sup *s, struct keel__sup_child *ch,
		      enum keel__sup_child_state st)
{
	lock(s);
	if (ch->state == SUP_CH_RESTARTING)
		s->nrestarting--;
	if (st == SUP_CH_RESTARTING)
		s->nrestarting++;
	ch->state = st;
	unlock(s);
}

/* ---- creating a supervisor ---------------------------------------------- */

static int check_child(const struct keel_child_spec *c,
		       enum keel_auto_shutdown auto_shutdown)
{
	if (!c->name || !c->start)
		return -EINVAL;
	if ((unsigned)c->restart > KEEL_TEMPORARY ||
	    (unsigned)c->type > KEEL_SUPERVISOR ||
	    c->shutdown_ms < KEEL_SHUTDOWN_INFINITY)
		return -EINVAL;
	/* OTP: significant children end, so they are never permanent, and
	 * they mean nothing without auto_shutdown. */
	if (c->significant && (c->restart == KEEL_PERMANENT ||
			       auto_shutdown == KEEL_AUTO_SHUTDOWN_NEVER))
		return -EINVAL;
	return 0;
}

static int check_spec(const struct keel_sup_spec *spec)
{
	if (!spec || (unsigned)spec->strategy > KEEL_SIMPLE_ONE_FOR_ONE ||
	    !spec->period_ms ||
	    (unsigned)spec->auto_shutdown > KEEL_AUTO_SHUTDOWN_ALL_SIGNIFICANT)
		return -EINVAL;
	if (spec->nchildren && !spec->children)
		return -EINVAL;
	if (spec->strategy == KEEL_SIMPLE_ONE_FOR_ONE && spec->nchildren != 1)
		return -EINVAL;
	if (spec->backoff.jitter_pct > 100 ||
	    (spec->backoff.max_ms &&
	     spec->backoff.max_ms < spec->backoff.min_ms))
		return -EINVAL;
	for (uint32_t i = 0; i < spec->nchildren; i++) {
		int err = check_child(&spec->children[i], spec->auto_shutdown);

		if (err)
			return err;
		for (uint32_t j = 0; j < i; j++)
			if (!strcmp(spec->children[i].name,
				    spec->children[j].name))
				return -EINVAL;
	}
	return 0;
}

void keel__sup_free(struct keel_sup *s)
{
	for (uint32_t i = 0; i < s->nslots; i++)
		if (s->slots[i])
			child_destroy(s->slots[i]);
	free(s->slots);
	free(s->slot_gen);
	free(s->free_slots);
	free(s->order);
	free(s->stamps);
	free(s->exits);
	free(s->plan);
	free((char *)s->tmpl.name);
	free(s->name);
	pthread_mutex_destroy(&s->lock);
	free(s);
}

struct keel_sup *keel_sup_ref(struct keel_sup *s)
{
	__atomic_add_fetch(&s->refs, 1, __ATOMIC_RELAXED);
	return s;
}

void keel_sup_release(struct keel_sup *s)
{
	if (s && !__atomic_sub_fetch(&s->refs, 1, __ATOMIC_ACQ_REL))
		keel__sup_free(s);
}

static void sup_teardown(void *arg);
static void wake_run(struct keel_loop *loop, struct keel__remote_item *it);

int keel__sup_create(struct keel_loop *loop, const struct keel_sup_spec *spec,
		     struct keel__sup_link *parent,
		     int (*attach)(struct keel_task *t, void *arg),
		     void *attach_arg, struct keel_sup **out)
{
	struct keel_sup *s;
	struct sup_frame *f;
	int err = check_spec(spec);

	if (err)
		return err;
	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	pthread_mutex_init(&s->lock, NULL);
	s->refs = 2; /* the caller's, and the task's */
	s->loop = loop;
	s->name = strdup(spec->name ? spec->name : "supervisor");
	s->strategy = spec->strategy;
	s->intensity = spec->intensity;
	s->period_ns = (uint64_t)spec->period_ms * 1000000u;
	s->auto_shutdown = spec->auto_shutdown;
	s->backoff = spec->backoff;
	if (!s->backoff.max_ms)
		s->backoff.max_ms = s->backoff.min_ms;
	s->now = spec->now;
	/* Any seed will do for splitmix64, zero included. */
	s->rng = spec->seed ? spec->seed
			    : keel__clock_now() ^ (uint64_t)(uintptr_t)s;
	s->parent_link = parent;
	s->wake_item.run = wake_run;
	s->state = KEEL_SUP_STARTING;
	if (!s->name)
		goto nomem;
	if (spec->strategy == KEEL_SIMPLE_ONE_FOR_ONE) {
		s->tmpl = spec->children[0];
		s->tmpl.name = strdup(spec->children[0].name);
		if (!s->tmpl.name)
			goto nomem;
	} else {
		for (uint32_t i = 0; i < spec->nchildren; i++)
			if (!child_new(s, &spec->children[i], false, NULL))
				goto nomem;
	}
	f = keel_spawn(loop, &keel_sup_task, KEEL_PRIO_HIGH);
	if (!f)
		goto nomem;
	if (attach && attach(&f->task, attach_arg))
		goto orphan;
	/* Pushed now, not at its first step: whatever ends the task (even a
	 * kill before it ran, or its loop torn down) tears it down. */
	if (keel_defer(&f->task, sup_teardown, s))
		goto orphan;
	f->sup = s;
	s->task = &f->task;
	*out = s;
	return 0;
orphan:
	/* The task runs once, sees no supervisor and exits with -ENOMEM. */
	err = -ENOMEM;
	keel__sup_free(s);
	return err;
nomem:
	keel__sup_free(s);
	return -ENOMEM;
}

int keel_sup_start(struct keel_loop *loop, const struct keel_sup_spec *spec,
		   struct keel_sup **out)
{
	if (keel__current_core && keel__current_core != keel__core_of(loop))
		return -EXDEV;
	return keel__sup_create(loop, spec, NULL, NULL, NULL, out);
}

const char *keel_sup_name(const struct keel_sup *s)
{
	return s->name;
}

struct keel_loop *keel_sup_loop(const struct keel_sup *s)
{
	return s->loop;
}

/* ---- waiting and being woken -------------------------------------------- */

void keel__sup_kick(struct keel_sup *s)
{
	struct keel_task *t = s->task;

	if (!t)
		return;
	if (!s->waiting) {
		s->kick =
		    true; /* it is running: it looks again before waiting */
		return;
	}
	s->waiting = false;
	t->ext->wait_cancel = NULL;
	keel__task_complete(t, 0);
}

/* Only a kill gets here: the shield keeps cancellations out. */
static void sup_wait_cancelled(struct keel_task *t)
{
	struct keel_sup *s = t->ext->waiter.owner;

	s->waiting = false;
	t->ext->wait_cancel = NULL;
	keel__task_complete(t, keel__task_cancel_cause(t));
}

static int sup_wait(struct keel_task *t, struct keel_sup *s)
{
	struct keel__task_ext *x = t->ext; /* it has a defer stack */

	if (s->kick) {
		s->kick = false;
		return keel__task_ready(t, 0);
	}
	x->waiter.owner = s;
	x->wait_cancel = sup_wait_cancelled;
	s->waiting = true;
	/* Requests and notices come from other threads too. */
	return keel__task_suspend_external(t);
}

static void wake_run(struct keel_loop *loop, struct keel__remote_item *it)
{
	struct keel_sup *s = keel_container_of(it, struct keel_sup, wake_item);

	(void)loop;
	__atomic_store_n(&s->wake_posted, 0, __ATOMIC_SEQ_CST);
	keel__sup_kick(s);
	keel_sup_release(s); /* the poster's */
}

void keel__sup_wake(struct keel_sup *s)
{
	if (keel__current_core == keel__core_of(s->loop)) {
		keel__sup_kick(s);
		return;
	}
	if (__atomic_exchange_n(&s->wake_posted, 1, __ATOMIC_SEQ_CST))
		return;
	keel_sup_ref(s);
	keel__remote_post(s->loop, &s->wake_item);
}

void keel_sup_stop(struct keel_sup *s)
{
	bool exited;

	lock(s);
	exited = s->exited;
	unlock(s);
	if (exited ||
	    __atomic_exchange_n(&s->stop_requested, 1, __ATOMIC_SEQ_CST))
		return;
	keel__sup_wake(s);
}

void keel__sup_notice(struct keel_sup *s, struct keel__sup_link *l,
		      unsigned what)
{
	if (!s->task)
		return; /* the supervisor is gone */
	l->notices |= what;
	if (!l->queued) {
		l->queued = true;
		__atomic_add_fetch(&l->refs, 1, __ATOMIC_RELAXED);
		keel__list_push_back(&s->notices, &l->notice_link);
	}
	keel__sup_kick(s);
}

static void sup_timer_fired(struct keel_loop *loop, struct keel_timer *timer,
			    void *arg)
{
	(void)loop;
	(void)timer;
	keel__sup_kick(arg);
}

static void begin_stopping(struct keel_sup *s, int status)
{
	if (s->stopping)
		return;
	s->stopping = true;
	s->stop_status = status;
}

static void sup_cancelled(struct keel_token *tok, int cause, void *arg)
{
	struct keel_sup *s = arg;

	(void)tok;
	(void)cause;
	begin_stopping(s, -ESHUTDOWN);
	keel__sup_kick(s);
}

/* ---- taking notices in -------------------------------------------------- */

static void exits_push(struct keel_sup *s, struct keel_child_id id)
{
	if (s->exits_len == s->exits_cap) {
		/* Unwrap the ring into a bigger one. */
		uint32_t cap = s->exits_cap ? s->exits_cap * 2 : 16;
		struct keel_child_id *v = malloc(cap * sizeof(*v));

		if (!v) {
			/* It cannot be decided about: stop, rather than leave
			 * a permanent child down unnoticed. */
			begin_stopping(s, -ENOMEM);
			return;
		}
		for (uint32_t i = 0; i < s->exits_len; i++)
			v[i] = s->exits[(s->exits_head + i) % s->exits_cap];
		free(s->exits);
		s->exits = v;
		s->exits_cap = cap;
		s->exits_head = 0;
	}
	s->exits[(s->exits_head + s->exits_len++) % s->exits_cap] = id;
}

static bool exits_pop(struct keel_sup *s, struct keel_child_id *id)
{
	if (!s->exits_len)
		return false;
	*id = s->exits[s->exits_head];
	s->exits_head = (s->exits_head + 1) % s->exits_cap;
	s->exits_len--;
	return true;
}

static void apply_started(struct keel_sup *s, struct keel__sup_child *ch,
			  struct keel__sup_link *l)
{
	struct keel_sup *old_sup = NULL;
	struct keel__sup_link *drop = NULL;
	int r = l->start_result;

	if (ch->state != SUP_CH_STARTING)
		return;
	lock(s);
	if (l->new_actor && !ch->actor) {
		ch->actor = l->new_actor;
		l->new_actor = NULL;
	}
	if (l->new_sup) {
		old_sup = ch->child_sup;
		ch->child_sup = l->new_sup;
		l->new_sup = NULL;
	}
	ch->start_result = r;
	ch->loop_stopping = l->start_refused;
	if (r == 0) {
		ch->state = SUP_CH_RUNNING;
		ch->started_at = sup_now(s);
	} else {
		ch->state = SUP_CH_STOPPED;
		ch->uptime = 0;
		drop = ch->link;
		ch->link = NULL;
		if (r < 0 && !l->start_refused) {
			ch->start_failures++;
			s->start_failures++;
		}
	}
	unlock(s);
	if (old_sup)
		keel_sup_release(old_sup);
	if (drop)
		keel__sup_link_release(drop);
}

static void apply_exited(struct keel_sup *s, struct keel__sup_child *ch,
			 struct keel__sup_link *l)
{
	bool asked = ch->state == SUP_CH_STOPPING;
	enum keel_exit_kind kind = keel_exit_kind_of(l->exit_status);

	/* Stopped on purpose: any exit but a panic is the shutdown asked. */
	if (asked && kind != KEEL_EXIT_ABORTED)
		kind = KEEL_EXIT_SHUTDOWN;
	lock(s);
	keel__sup_exit_info(&ch->last_exit, kind, l->exit_status, l->killed,
			    &l->abort);
	ch->exited = true;
	if (l->killed) {
		ch->kills++;
		s->kills++;
	}
	ch->link = NULL;
	ch->loop_stopping = l->loop_stopping;
	switch (ch->state) {
	case SUP_CH_STARTING:
		/* It died before it was up: the start failed (an actor's
		 * on_start, a supervisor's own start). */
		ch->state = SUP_CH_STOPPED;
		ch->uptime = 0;
		ch->start_result =
		    l->exit_status < 0 ? l->exit_status : -ECHILD;
		if (!l->loop_stopping) {
			ch->start_failures++;
			s->start_failures++;
		}
		break;
	case SUP_CH_RUNNING:
		ch->state = SUP_CH_EXITED;
		ch->uptime = sup_now(s) - ch->started_at;
		break;
	case SUP_CH_STOPPING:
		/* The stop step decides where it goes next. */
		ch->state = SUP_CH_STOPPED;
		ch->stop_finished = true;
		break;
	default:
		break;
	}
	unlock(s);
	if (ch->state == SUP_CH_EXITED)
		exits_push(s, ch->id);
	keel__sup_link_release(l); /* the supervisor's */
}

static struct keel__sup_child *step_child(struct keel_sup *s)
{
	return keel__sup_lookup(s, s->plan[s->plan_pos].id);
}

/* Kill what outstayed its shutdown timeout. */
static void enforce_deadlines(struct keel_sup *s)
{
	uint64_t now;

	if (!s->step_active)
		return;
	now = keel__clock_now();
	if (s->plan[s->plan_pos].kind == SUP_STEP_STOP) {
		struct keel__sup_child *ch = step_child(s);

		if (ch && ch->state == SUP_CH_STOPPING && !ch->kill_sent &&
		    now >= ch->stop_deadline) {
			ch->kill_sent = true;
			keel__sup_link_kill(ch->link);
		}
	} else if (s->plan[s->plan_pos].kind == SUP_STEP_STOP_DYNAMIC &&
		   !s->dyn_killed && now >= s->dyn_deadline) {
		s->dyn_killed = true;
		for (uint32_t i = 0; i < s->nslots; i++) {
			struct keel__sup_child *ch = s->slots[i];

			if (ch && ch->dynamic && ch->state == SUP_CH_STOPPING &&
			    !ch->kill_sent) {
				ch->kill_sent = true;
				keel__sup_link_kill(ch->link);
			}
		}
	}
}

static void absorb(struct keel_sup *s)
{
	struct keel__link *n;

	if (__atomic_load_n(&s->stop_requested, __ATOMIC_ACQUIRE))
		begin_stopping(s, 0);
	while ((n = keel__list_pop_front(&s->notices))) {
		struct keel__sup_link *l =
		    keel__list_entry(n, struct keel__sup_link, notice_link);
		unsigned what = l->notices;
		struct keel__sup_child *ch = keel__sup_lookup(s, l->id);

		l->queued = false;
		l->notices = 0;
		if (ch && ch->link == l && (what & SUP_NOTICE_STARTED))
			apply_started(s, ch, l);
		if (ch && ch->link == l && (what & SUP_NOTICE_EXITED))
			apply_exited(s, ch, l);
		keel__sup_link_release(l); /* the queue's */
	}
	enforce_deadlines(s);
}

/* ---- plans -------------------------------------------------------------- */

static void plan_reset(struct keel_sup *s, enum keel__sup_purpose purpose)
{
	s->plan_len = s->plan_pos = 0;
	s->plan_active = true;
	s->step_active = false;
	s->purpose = purpose;
}

static void plan_push(struct keel_sup *s, enum keel__sup_step_kind kind,
		      struct keel_child_id id, enum keel__sup_then then)
{
	if (s->plan_len == s->plan_cap) {
		uint32_t cap = s->plan_cap ? s->plan_cap * 2 : 8;

		if (!grow((void **)&s->plan, cap, sizeof(*s->plan))) {
			/* Out of memory: this step is lost; stopping the
			 * supervisor keeps the tree consistent. */
			begin_stopping(s, -ENOMEM);
			return;
		}
		s->plan_cap = cap;
	}
	s->plan[s->plan_len].kind = kind;
	s->plan[s->plan_len].id = id;
	s->plan[s->plan_len].then = then;
	s->plan_len++;
}

/* ---- OTP's restart decisions -------------------------------------------- */

/* Make room for one more stamp, unwrapping the ring into a bigger one. */
static bool stamps_grow(struct keel_sup *s)
{
	uint64_t want = (uint64_t)s->intensity + 1;
	uint32_t cap = s->stamps_cap ? s->stamps_cap * 2 : 8;
	uint64_t *v;

	if (cap > want)
		cap = (uint32_t)want;
	v = malloc(cap * sizeof(*v));
	if (!v)
		return false;
	for (uint32_t i = 0; i < s->nstamps; i++)
		v[i] = s->stamps[(s->stamp_head + i) % s->stamps_cap];
	free(s->stamps);
	s->stamps = v;
	s->stamps_cap = cap;
	s->stamp_head = 0;
	return true;
}

/*
 * OTP's add_restart: stamp this restart; forget the stamps older than the
 * period (one exactly `period` old is kept, as OTP keeps R >= Now -
 * Period); false when more than `intensity` remain. The ring holds at
 * most intensity + 1 stamps: one more than that is already too many.
 */
static bool add_restart(struct keel_sup *s)
{
	uint64_t now = sup_now(s);

	while (s->nstamps && now - s->stamps[s->stamp_head] > s->period_ns) {
		s->stamp_head = (s->stamp_head + 1) % s->stamps_cap;
		s->nstamps--;
	}
	if (s->nstamps == s->stamps_cap &&
	    (s->stamps_cap > s->intensity || !stamps_grow(s))) {
		if (s->stamps_cap <= s->intensity)
			return false; /* no memory to count: fail safe */
		s->stamp_head = (s->stamp_head + 1) % s->stamps_cap;
		s->nstamps--;
	}
	s->stamps[(s->stamp_head + s->nstamps++) % s->stamps_cap] = now;
	return s->nstamps <= s->intensity;
}

/* The delay before this restart of `ch` (ns): see keel_backoff. */
static uint64_t backoff_delay(struct keel_sup *s, struct keel__sup_child *ch)
{
	uint64_t min = (uint64_t)s->backoff.min_ms * 1000000u;
	uint64_t max = (uint64_t)s->backoff.max_ms * 1000000u;
	uint64_t base = min, delay;

	if (!min)
		return 0;
	/* Its last life was longer than the longest delay: not a crash loop
	 * (as Akka's backoff resets once the child ran for a while). A start
	 * that failed lasted no time at all. */
	if (ch->backoff_level && ch->uptime > max)
		ch->backoff_level = 0;
	for (uint32_t i = 0; i < ch->backoff_level && base < max; i++)
		base *= 2;
	if (base > max)
		base = max;
	if (ch->backoff_level < 64)
		ch->backoff_level++;
	delay = base;
	if (s->backoff.jitter_pct) {
		uint64_t span = base / 100 * s->backoff.jitter_pct;

		delay = base - span + keel__rand64(&s->rng) % (2 * span + 1);
	}
	return delay < min ? min : delay > max ? max : delay;
}

static void mark_restarting(struct keel_sup *s, struct keel__sup_child *ch,
			    uint64_t at)
{
	lock(s);
	if (ch->state != SUP_CH_RESTARTING)
		s->nrestarting++;
	ch->state = SUP_CH_RESTARTING;
	ch->restart_at = at;
	unlock(s);
}

/* Tell the observer, if any (with the lock held, so that removing it
 * waits for a call in progress). */
static void observe(struct keel_sup *s, enum keel_sup_event_kind kind,
		    const struct keel__sup_child *ch)
{
	if (!s->observer)
		return;
	struct keel_sup_event ev = {
	    .kind = kind,
	    .sup_name = s->name,
	    .child = ch ? ch->spec.name : NULL,
	    .id = ch ? ch->id : (struct keel_child_id){0, 0},
	    .restarts = ch ? ch->restarts : 0,
	    .period_ns = s->period_ns,
	};
	s->observer(s->observer_arg, s, &ev);
}

int keel_sup_observe(struct keel_sup *s, keel_sup_observer_fn fn, void *arg)
{
	int err = 0;

	if (!s)
		return -EINVAL;
	lock(s);
	if (fn && s->observer)
		err = -EBUSY;
	else if (!fn && s->observer_arg != arg)
		err = -ENOENT;
	else {
		s->observer = fn;
		s->observer_arg = fn ? arg : NULL;
	}
	unlock(s);
	return err;
}

static void escalate(struct keel_sup *s)
{
	struct keel__core *c = keel__core_of(s->loop);

	lock(s);
	s->escalated = true;
	observe(s, KEEL_SUP_EV_ESCALATE, NULL);
	unlock(s);
	KEEL__TRACE(c, KEEL_EV_SUP_ESCALATE, 0, s->task->id,
		    keel__trace_str_once(c, s->name), 0);
	begin_stopping(s, -ESHUTDOWN);
}

/* The children a restart of `ch` stops and starts again, by strategy. */
static bool in_group(struct keel_sup *s, uint32_t pos, uint32_t failed_pos)
{
	return s->strategy == KEEL_ONE_FOR_ALL || pos > failed_pos;
}

/*
 * OTP's restart/2: `ch` must be restarted (it exited, or a restart of it
 * failed). Returns true when it built a new plan (group strategies).
 */
static bool sup_restart(struct keel_sup *s, struct keel__sup_child *ch)
{
	struct keel__core *c = keel__core_of(s->loop);
	uint64_t at;
	uint32_t failed_pos = 0;
	bool within;

	lock(s); /* snapshots read the stamps' count */
	within = add_restart(s);
	unlock(s);
	if (!within) {
		set_state(s, ch, SUP_CH_STOPPED);
		if (ch->dynamic)
			child_remove(s, ch);
		escalate(s);
		return false;
	}
	lock(s);
	ch->restarts++;
	s->restarts++;
	ch->backoff_ns = backoff_delay(s, ch);
	observe(s, KEEL_SUP_EV_RESTART, ch);
	unlock(s);
	KEEL__TRACE(c, KEEL_EV_SUP_RESTART, 0, s->task->id,
		    keel__trace_str_once(c, ch->spec.name), ch->restarts);
	at = keel__clock_now() + ch->backoff_ns;
	if (s->strategy == KEEL_ONE_FOR_ONE ||
	    s->strategy == KEEL_SIMPLE_ONE_FOR_ONE) {
		mark_restarting(s, ch, at);
		return false;
	}
	/* one_for_all, rest_for_one: stop the group in reverse order (the
	 * temporary ones for good), then start it again in order. */
	for (uint32_t i = 0; i < s->norder; i++)
		if (s->order[i] == ch->id.slot)
			failed_pos = i;
	plan_reset(s, SUP_PLAN_RESTART);
	s->plan_restart_at = at;
	for (uint32_t i = s->norder; i-- > 0;) {
		struct keel__sup_child *sib = s->slots[s->order[i]];

		if (sib == ch || !in_group(s, i, failed_pos))
			continue;
		plan_push(s, SUP_STEP_STOP, sib->id,
			  sib->spec.restart == KEEL_TEMPORARY
			      ? SUP_THEN_REMOVE
			      : SUP_THEN_RESTART);
	}
	mark_restarting(s, ch, at);
	return true;
}

/* OTP's do_auto_shutdown, after a significant child ended for good. */
static void auto_shutdown(struct keel_sup *s)
{
	if (s->auto_shutdown == KEEL_AUTO_SHUTDOWN_ANY_SIGNIFICANT) {
		begin_stopping(s, -ESHUTDOWN);
		return;
	}
	if (s->strategy == KEEL_SIMPLE_ONE_FOR_ONE) {
		if (!s->ndynamic)
			begin_stopping(s, -ESHUTDOWN);
		return;
	}
	for (uint32_t i = 0; i < s->norder; i++) {
		struct keel__sup_child *ch = s->slots[s->order[i]];

		if (ch->spec.significant && ch->state != SUP_CH_STOPPED)
			return;
	}
	begin_stopping(s, -ESHUTDOWN);
}

/* OTP's do_restart: `ch` exited by itself; its last_exit says how. */
static void decide(struct keel_sup *s, struct keel__sup_child *ch)
{
	enum keel_exit_kind kind = ch->last_exit.kind;
	bool significant = ch->spec.significant;
	bool again =
	    ch->spec.restart == KEEL_PERMANENT ||
	    (ch->spec.restart == KEEL_TRANSIENT && keel_exit_abnormal(kind));

	/* Its loop is shutting down (the runtime stops): nothing restarts
	 * there; the supervisor's own stop follows. */
	if (ch->loop_stopping)
		again = false;
	if (again) {
		sup_restart(s, ch);
		return;
	}
	if (ch->dynamic || ch->spec.restart == KEEL_TEMPORARY)
		child_remove(s, ch);
	else
		set_state(s, ch, SUP_CH_STOPPED);
	if (significant && s->auto_shutdown != KEEL_AUTO_SHUTDOWN_NEVER)
		auto_shutdown(s);
}

/* ---- steps -------------------------------------------------------------- */

static void begin_start(struct keel_sup *s, struct keel__sup_child *ch)
{
	int err;

	if (ch->state != SUP_CH_STOPPED && ch->state != SUP_CH_RESTARTING)
		return; /* running already: the step is a no-op */
	set_state(s, ch, SUP_CH_STARTING);
	ch->start_result = 0;
	err = keel__sup_link_start(s, ch);
	if (err) {
		lock(s);
		ch->state = SUP_CH_STOPPED;
		ch->uptime = 0;
		ch->start_result = err;
		ch->start_failures++;
		s->start_failures++;
		unlock(s);
	}
}

static void begin_stop(struct keel_sup *s, struct keel__sup_child *ch,
		       uint64_t deadline)
{
	int64_t sd = shutdown_of(ch->dynamic ? &s->tmpl : &ch->spec);

	switch (ch->state) {
	case SUP_CH_RUNNING:
		ch->stop_finished = false;
		ch->kill_sent = false;
		set_state(s, ch, SUP_CH_STOPPING);
		if (sd == KEEL_SHUTDOWN_BRUTAL_KILL) {
			ch->kill_sent = true;
			keel__sup_link_kill(ch->link);
			break;
		}
		if (!deadline)
			deadline =
			    sd == KEEL_SHUTDOWN_INFINITY
				? UINT64_MAX
				: keel__clock_now() + (uint64_t)sd * 1000000u;
		ch->stop_deadline = deadline;
		keel__sup_link_stop(ch->link, deadline);
		break;
	case SUP_CH_EXITED:	/* it exited by itself: that was its stop */
	case SUP_CH_RESTARTING: /* down: no restart now */
		set_state(s, ch, SUP_CH_STOPPED);
		break;
	default:
		break;
	}
}

static void step_begin(struct keel_sup *s)
{
	struct keel__sup_step *st = &s->plan[s->plan_pos];
	struct keel__sup_child *ch = keel__sup_lookup(s, st->id);

	s->step_active = true;
	if (st->kind == SUP_STEP_STOP_DYNAMIC) {
		int64_t sd = shutdown_of(&s->tmpl);

		/* All at once, under one deadline (OTP's
		 * terminate_dynamic_children). */
		s->dyn_killed = sd == KEEL_SHUTDOWN_INFINITY;
		s->dyn_deadline =
		    sd > 0 ? keel__clock_now() + (uint64_t)sd * 1000000u
			   : UINT64_MAX;
		for (uint32_t i = 0; i < s->nslots; i++) {
			struct keel__sup_child *c = s->slots[i];

			if (c && c->dynamic)
				begin_stop(s, c, s->dyn_deadline);
		}
		return;
	}
	if (!ch)
		return;
	if (st->kind == SUP_STEP_START)
		begin_start(s, ch);
	else
		begin_stop(s, ch, 0);
}

static bool step_done(struct keel_sup *s)
{
	struct keel__sup_step *st = &s->plan[s->plan_pos];
	struct keel__sup_child *ch;

	if (st->kind == SUP_STEP_STOP_DYNAMIC) {
		for (uint32_t i = 0; i < s->nslots; i++) {
			ch = s->slots[i];
			if (ch && ch->dynamic && ch->state == SUP_CH_STOPPING)
				return false;
		}
		return true;
	}
	ch = keel__sup_lookup(s, st->id);
	if (!ch)
		return true;
	return st->kind == SUP_STEP_START ? ch->state != SUP_CH_STARTING
					  : ch->state != SUP_CH_STOPPING;
}

/* The plan's request learns how its start went. */
static void request_started(struct keel_sup *s, struct keel__sup_child *ch)
{
	struct keel__sup_cmd *cmd = s->cmd;
	int r = ch->state == SUP_CH_RUNNING ? 0 : ch->start_result;

	cmd->result = r;
	cmd->id = ch->id;
	/* A dynamic child, or a spec added, that did not start is not kept
	 * (OTP keeps an ignored static one, unless temporary). */
	if ((r < 0 && cmd->kind != SUP_CMD_RESTART_CHILD) ||
	    (r == KEEL_CHILD_IGNORE &&
	     (ch->dynamic || ch->spec.restart == KEEL_TEMPORARY)))
		child_remove(s, ch);
}

/* A start in a restart plan failed: OTP's try_again_restart. Returns
 * true when a new plan replaced this one. */
static bool restart_failed(struct keel_sup *s, struct keel__sup_child *ch)
{
	if (ch->start_result == KEEL_CHILD_IGNORE || ch->loop_stopping) {
		if (ch->spec.restart == KEEL_TEMPORARY || ch->dynamic)
			child_remove(s, ch);
		return false;
	}
	return sup_restart(s, ch);
}

static void step_end(struct keel_sup *s)
{
	struct keel__sup_step st = s->plan[s->plan_pos];
	struct keel__sup_child *ch = keel__sup_lookup(s, st.id);

	s->step_active = false;
	s->plan_pos++;
	if (st.kind == SUP_STEP_STOP_DYNAMIC) {
		for (uint32_t i = 0; i < s->nslots; i++)
			if (s->slots[i] && s->slots[i]->dynamic)
				child_remove(s, s->slots[i]);
		return;
	}
	if (!ch)
		return;
	if (st.kind == SUP_STEP_STOP) {
		if (st.then == SUP_THEN_REMOVE)
			child_remove(s, ch);
		else if (st.then == SUP_THEN_RESTART)
			mark_restarting(s, ch, s->plan_restart_at);
		else
			set_state(s, ch, SUP_CH_STOPPED);
		if (s->purpose == SUP_PLAN_REQUEST)
			s->cmd->result = 0;
		return;
	}
	if (s->purpose == SUP_PLAN_REQUEST) {
		request_started(s, ch);
		return;
	}
	if (ch->state == SUP_CH_RUNNING)
		return;
	if (s->purpose == SUP_PLAN_INIT) {
		if (ch->start_result < 0) {
			/* OTP: the supervisor fails to start, and says why. */
			begin_stopping(s, ch->start_result);
			s->plan_len = s->plan_pos;
		} else if (ch->spec.restart == KEEL_TEMPORARY) {
			child_remove(s, ch); /* ignored and temporary */
		}
		return;
	}
	if (s->purpose == SUP_PLAN_RESTART && restart_failed(s, ch))
		return; /* a new plan replaced this one */
}

/* ---- choosing what to do next ------------------------------------------- */

static void plan_shutdown(struct keel_sup *s)
{
	s->phase = SUP_PHASE_SHUTDOWN;
	lock(s);
	s->state = KEEL_SUP_STOPPING;
	unlock(s);
	plan_reset(s, SUP_PLAN_SHUTDOWN);
	for (uint32_t i = s->norder; i-- > 0;)
		plan_push(s, SUP_STEP_STOP, s->slots[s->order[i]]->id,
			  SUP_THEN_STOPPED);
	if (s->ndynamic)
		plan_push(s, SUP_STEP_STOP_DYNAMIC, (struct keel_child_id){0},
			  SUP_THEN_REMOVE);
}

/* Start, in order, the children whose restart time has come. */
static bool plan_due_restarts(struct keel_sup *s)
{
	uint64_t now = keel__clock_now();
	bool any = false;

	if (!s->nrestarting)
		return false;
	plan_reset(s, SUP_PLAN_RESTART);
	for (uint32_t i = 0; i < s->norder; i++) {
		struct keel__sup_child *ch = s->slots[s->order[i]];

		if (ch->state == SUP_CH_RESTARTING && ch->restart_at <= now) {
			plan_push(s, SUP_STEP_START, ch->id, SUP_THEN_STOPPED);
			any = true;
		}
	}
	for (uint32_t i = 0; s->ndynamic && i < s->nslots; i++) {
		struct keel__sup_child *ch = s->slots[i];

		if (ch && ch->dynamic && ch->state == SUP_CH_RESTARTING &&
		    ch->restart_at <= now) {
			plan_push(s, SUP_STEP_START, ch->id, SUP_THEN_STOPPED);
			any = true;
		}
	}
	s->plan_active = any;
	return any;
}

static bool begin_request(struct keel_sup *s, struct keel__sup_cmd *cmd);

static bool plan_next(struct keel_sup *s)
{
	struct keel_child_id id;
	struct keel__sup_cmd *cmd;
	struct keel__link *n;

	for (;;) {
		if (s->stopping) {
			if (s->phase == SUP_PHASE_RUNNING ||
			    s->phase == SUP_PHASE_INIT) {
				plan_shutdown(s);
				return true;
			}
			return false;
		}
		if (exits_pop(s, &id)) {
			struct keel__sup_child *ch = keel__sup_lookup(s, id);

			/* Stale when a stop consumed the exit meanwhile. */
			if (!ch || ch->state != SUP_CH_EXITED)
				continue;
			decide(s, ch);
			if (s->plan_active)
				return true;
			continue;
		}
		if (plan_due_restarts(s))
			return true;
		lock(s);
		n = keel__list_pop_front(&s->cmds);
		unlock(s);
		cmd =
		    n ? keel__list_entry(n, struct keel__sup_cmd, link) : NULL;
		if (!cmd)
			return false;
		if (begin_request(s, cmd))
			return true;
	}
}

static void plan_end(struct keel_sup *s)
{
	enum keel__sup_purpose purpose = s->purpose;

	s->plan_active = false;
	s->plan_len = s->plan_pos = 0;
	if (purpose == SUP_PLAN_INIT && !s->stopping) {
		s->phase = SUP_PHASE_RUNNING;
		lock(s);
		s->state = KEEL_SUP_RUNNING;
		unlock(s);
		if (s->parent_link)
			keel__sup_link_ready(s->parent_link);
	} else if (purpose == SUP_PLAN_REQUEST) {
		struct keel__sup_cmd *cmd = s->cmd;

		s->cmd = NULL;
		keel__sup_reply(cmd, cmd->result);
	} else if (purpose == SUP_PLAN_SHUTDOWN) {
		s->phase = SUP_PHASE_EXIT;
	}
}

/* ---- requests, on the supervisor's loop --------------------------------- */

static bool plan_request(struct keel_sup *s, struct keel__sup_cmd *cmd,
			 enum keel__sup_step_kind kind,
			 struct keel__sup_child *ch, enum keel__sup_then then)
{
	plan_reset(s, SUP_PLAN_REQUEST);
	s->cmd = cmd;
	plan_push(s, kind, ch->id, then);
	return true;
}

/* Carry out or answer a request; true when it became the plan. */
static bool begin_request(struct keel_sup *s, struct keel__sup_cmd *cmd)
{
	bool simple = s->strategy == KEEL_SIMPLE_ONE_FOR_ONE;
	struct keel__sup_child *ch = NULL;
	int r = 0;

	cmd->result = -ESHUTDOWN;
	switch (cmd->kind) {
	case SUP_CMD_START_CHILD:
	case SUP_CMD_ADD_CHILD:
		if (simple != (cmd->kind == SUP_CMD_START_CHILD)) {
			r = -EOPNOTSUPP;
			break;
		}
		if (!simple && (check_child(&cmd->spec, s->auto_shutdown) ||
				find_by_name(s, cmd->spec.name))) {
			r = check_child(&cmd->spec, s->auto_shutdown) ? -EINVAL
								      : -EEXIST;
			break;
		}
		lock(s);
		ch = child_new(s, simple ? &s->tmpl : &cmd->spec, simple,
			       cmd->extra);
		unlock(s);
		if (!ch) {
			r = -ENOMEM;
			break;
		}
		return plan_request(s, cmd, SUP_STEP_START, ch,
				    SUP_THEN_STOPPED);
	case SUP_CMD_TERMINATE_CHILD:
		ch = keel__sup_lookup(s, cmd->id);
		if (!ch) {
			r = -ENOENT;
			break;
		}
		return plan_request(s, cmd, SUP_STEP_STOP, ch,
				    ch->dynamic ||
					    ch->spec.restart == KEEL_TEMPORARY
					? SUP_THEN_REMOVE
					: SUP_THEN_STOPPED);
	case SUP_CMD_RESTART_CHILD:
	case SUP_CMD_DELETE_CHILD:
		ch = keel__sup_lookup(s, cmd->id);
		if (simple)
			r = -EOPNOTSUPP;
		else if (!ch)
			r = -ENOENT;
		else if (ch->state == SUP_CH_RESTARTING ||
			 ch->state == SUP_CH_EXITED)
			r = -EINPROGRESS;
		else if (ch->state != SUP_CH_STOPPED)
			r = cmd->kind == SUP_CMD_RESTART_CHILD ? -EALREADY
							       : -EBUSY;
		else if (cmd->kind == SUP_CMD_RESTART_CHILD)
			return plan_request(s, cmd, SUP_STEP_START, ch,
					    SUP_THEN_STOPPED);
		else
			child_remove(s, ch);
		break;
	}
	keel__sup_reply(cmd, r);
	return false;
}

/* ---- the task ----------------------------------------------------------- */

/* The nearest deadline it must wake for: a kill, or a restart. */
static void arm_timer(struct keel_sup *s)
{
	uint64_t next = UINT64_MAX;

	if (s->step_active) {
		struct keel__sup_step *st = &s->plan[s->plan_pos];
		struct keel__sup_child *ch = keel__sup_lookup(s, st->id);

		if (st->kind == SUP_STEP_STOP && ch &&
		    ch->state == SUP_CH_STOPPING && !ch->kill_sent)
			next = ch->stop_deadline;
		else if (st->kind == SUP_STEP_STOP_DYNAMIC && !s->dyn_killed)
			next = s->dyn_deadline;
	} else if (!s->plan_active && s->nrestarting) {
		/* Restarts wait while a plan runs: only then do they count. */
		for (uint32_t i = 0; i < s->nslots; i++) {
			struct keel__sup_child *ch = s->slots[i];

			if (ch && ch->state == SUP_CH_RESTARTING &&
			    ch->restart_at < next)
				next = ch->restart_at;
		}
	}
	if (next == UINT64_MAX)
		keel_timer_cancel(s->loop, &s->timer);
	else if (keel_timer_arm(s->loop, &s->timer, next))
		s->kick = true; /* no timer: look again at once */
}

/* Move on as far as possible without waiting. */
static int sup_run(struct keel_sup *s)
{
	for (;;) {
		absorb(s);
		if (s->step_active) {
			if (!step_done(s)) {
				arm_timer(s);
				return SUP_WAIT;
			}
			step_end(s);
			continue;
		}
		if (s->plan_active) {
			/* A stop request cuts a plan short, but not the
			 * shutdown's own. */
			if (s->plan_pos < s->plan_len &&
			    !(s->stopping && s->purpose != SUP_PLAN_SHUTDOWN))
				step_begin(s);
			else
				plan_end(s);
			continue;
		}
		if (s->phase == SUP_PHASE_EXIT)
			return SUP_DONE;
		if (!plan_next(s)) {
			arm_timer(s);
			return SUP_WAIT;
		}
	}
}

static int sup_setup(struct keel_sup *s, struct keel_task *t)
{
	struct keel_token *tok;

	keel_timer_init(&s->timer, sup_timer_fired, s);
	if (keel_shield_begin(t, &s->shield, UINT64_MAX))
		return -ENOMEM;
	s->shield_up = true;
	/* The token it had before the shield: cancelling it stops it. */
	tok = s->shield.saved ? s->shield.saved : keel_loop_token(t->loop);
	s->cb_registered = true;
	keel_token_on_cancel(tok, &s->cancel_cb, sup_cancelled, s);
	s->phase = SUP_PHASE_INIT;
	plan_reset(s, SUP_PLAN_INIT);
	for (uint32_t i = 0; i < s->norder; i++)
		plan_push(s, SUP_STEP_START, s->slots[s->order[i]]->id,
			  SUP_THEN_STOPPED);
	return 0;
}

static int sup_step(struct keel_task *t)
{
	struct sup_frame *f = keel_container_of(t, struct sup_frame, task);
	struct keel_sup *s = f->sup;

	KEEL_BEGIN(t);
	if (!s || sup_setup(s, t))
		KEEL_EXIT(t, -ENOMEM);
	while (sup_run(s) == SUP_WAIT)
		KEEL_AWAIT(t, sup_wait(t, s));
	KEEL_EXIT(t, s->stop_status);
}

/*
 * On the supervisor's defer stack: whatever ended it. Normally every child
 * has stopped by now; if it was killed (or its loop torn down), the
 * children still running are killed, as linked processes die with their
 * supervisor.
 */
static void sup_teardown(void *arg)
{
	struct keel_sup *s = arg;
	struct keel_task *t = s->task;
	int status = keel_res(t);
	struct keel__list cmds;
	struct keel__link *n, *next;
	struct keel__sup_link *l;
	struct keel__waiter *w;

	if (s->cb_registered)
		keel_token_cb_remove(&s->cancel_cb);
	if (keel_timer_armed(&s->timer))
		keel_timer_cancel(s->loop, &s->timer);
	if (s->shield_up && t->ext->shield == &s->shield)
		keel_shield_end(t, &s->shield);
	s->waiting = false;
	s->task = NULL; /* notices from now on are dropped */
	for (uint32_t i = 0; i < s->nslots; i++) {
		struct keel__sup_child *ch = s->slots[i];

		if (!ch || !ch->link)
			continue;
		l = ch->link;
		ch->link = NULL;
		keel__sup_link_kill(l);
		keel__sup_link_release(l);
	}
	while ((n = keel__list_pop_front(&s->notices)))
		keel__sup_link_release(
		    keel__list_entry(n, struct keel__sup_link, notice_link));
	lock(s);
	s->state = KEEL_SUP_EXITED;
	s->exited = true;
	s->exit_status = status;
	keel__list_move(&cmds, &s->cmds);
	unlock(s);
	if (s->cmd) {
		keel__sup_reply(s->cmd, -ESHUTDOWN);
		s->cmd = NULL;
	}
	keel__list_for_each_safe (n, next, &cmds)
		keel__sup_reply(keel__list_entry(n, struct keel__sup_cmd, link),
				-ESHUTDOWN);
	while ((w = keel__waitq_pop(&s->waiters))) {
		w->task->ext->wait_cancel = NULL;
		keel__task_complete(w->task, status);
	}
	/* The records stay (stopped) for snapshots until the last handle
	 * goes; messages kept for a restart are dropped now. */
	lock(s);
	for (uint32_t i = 0; i < s->nslots; i++)
		if (s->slots[i])
			s->slots[i]->state = SUP_CH_STOPPED;
	s->nrestarting = 0;
	unlock(s);
	for (uint32_t i = 0; i < s->nslots; i++)
		if (s->slots[i] && s->slots[i]->actor)
			keel__actor_retire(s->slots[i]->actor);
	keel_sup_release(s); /* the task's */
}
