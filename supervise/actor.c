/* SPDX-License-Identifier: MIT */
/*
 * actor.c: actors (semantics in keel/supervisor.h): a task that receives
 * envelopes from its mailbox and calls the behaviour on each.
 *
 * Every message is an envelope (keel__shared_calloc: malloc'd, as any
 * thread may send it, but reused by the loop that freed it); an ask's
 * envelope holds a reference on a oneshot whose receiver is the asking
 * task, so a reply reaches exactly its own request and nothing else: once
 * the asker gave up, sends to the slot fail and are counted as late.
 *
 * Going down happens in one place, actor_down(), registered on the actor
 * task's defer stack at spawn, so it runs whether the task exits, panics
 * (the defers of an aborted task run) or is torn down with its loop. It
 * marks the actor down, closes the mailbox, fails the ask being handled and
 * every ask still queued with -EPIPE, and wakes blocked senders.
 *
 * Invariants:
 * - Every envelope ends exactly once: handled (then freed after the
 *   behaviour returns), or dropped (the mailbox's on_drop, or drained at
 *   down); an ask's slot is answered or failed in each case.
 * - No lost messages at down: a sender queues, then looks at `down`;
 *   actor_down() sets `down`, then drains. Both sides use sequentially
 *   consistent read-modify-writes on `down` (full barriers, which
 *   ThreadSanitizer understands, unlike fences), so one sees the other. A
 *   sender that sees `down` after queueing schedules one more drain on the
 *   actor's loop, so a message that slipped past the close is failed there
 *   rather than left until the handle goes.
 * - No lost wake-ups for sends waiting for room (`blocked`, under `lock`:
 *   tell_await and ask envelopes on a full KEEL_MB_BLOCK mailbox): a sender
 *   queues its envelope, then retries once; the actor takes a message,
 *   then looks at `nblocked` (the same kind of barrier) and wakes the
 *   first one, whose retry runs on its sender's loop.
 * - A waiting envelope (struct envelope_box) is owned by two sides, its
 *   sender's and, once posted, the mailbox's: the actor may handle it
 *   while its sender's wake is still on the way. It goes with the last.
 *
 * Supervised actors (supervise/supervisor.c) have incarnations: when one
 * goes down, its supervisor may start another behind the same handle
 * (keel__actor_start_supervised). Each incarnation has a new `generation`;
 * an ask carries the one it was sent to, so an ask queued for an
 * incarnation that went down fails with -EPIPE instead of reaching the
 * next. With `keep_mailbox`, the tells still queued when it went down are
 * kept in `carry` (in order) and handed to the next incarnation first;
 * without, they are dropped like any left-over message. While down, tells
 * and asks fail at once with -EPIPE, as for any actor that is down.
 */
#include "core.h"
#include "supervise.h"

#include <errno.h>
#include <keel/loop.h>
#include <keel/supervisor.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define LOAD(p)	      __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define COUNT(p)      __atomic_add_fetch((p), 1, __ATOMIC_RELAXED)
#define READ_COUNT(p) __atomic_load_n((p), __ATOMIC_RELAXED)

/* keel_envelope.flags */
#define ENV_ASK	  0x1u
#define ENV_BOXED 0x2u /* inside a struct envelope_box */

/* A blocked send's "not settled yet" (any positive non-result). */
#define MUST_WAIT 1000

struct keel_actor {
	uint32_t refs; /* atomic */
	int down;      /* atomic: set by actor_down(), cleared by a restart */
	uint32_t generation; /* atomic: a new one per incarnation */
	struct keel_loop *loop;
	struct keel_mailbox *mb;
	struct keel_actor_spec spec;
	/* The actor's loop only. */
	struct keel_actor_ctx ctx;
	struct keel_envelope *current; /* being handled */
	bool started;		       /* on_start succeeded */
	int exit_status;	       /* atomic, written before `down` */
	bool supervised;	       /* may be restarted (immutable) */
	bool keep_mailbox;	       /* queued tells survive a restart */
	/* Tells kept for the next incarnation (keep_mailbox), oldest at
	 * carry[carry_head]: the actor's loop, or whoever holds the last
	 * reference once no incarnation can follow. */
	struct keel_envelope **carry; /* under `lock` */
	uint32_t carry_head, carry_len, carry_cap;
	bool retired; /* no incarnation will follow: keep nothing */
	/* The incarnation's supervisor hears when on_start succeeded. */
	void (*on_ready)(void *arg);
	void *ready_arg;
	uint64_t next_request; /* atomic */
	uint64_t handled, asks, replies, late_replies, unanswered,
	    panic_drops; /* relaxed atomic counters */
	/* Sends waiting for room (struct envelope_box), from any loop. */
	pthread_mutex_t lock;
	struct keel__waitq blocked;
	uint32_t nblocked; /* atomic hint read without the lock */
	struct keel__remote_item stop_item;
	int stop_posted;
	struct keel__remote_item drain_item;
	int drain_posted;
};

/* The actor's task. */
struct actor_frame {
	struct keel_task task;
	struct keel_actor *actor;
	void *msg;
	struct keel_envelope *kept; /* a tell kept from the last incarnation */
	unsigned batch;		    /* kept tells handled since a yield */
	int status;
	bool stopping; /* `status` is final: a normal exit */
	bool down_registered;
};

/*
 * The envelope of a send that may wait for room (tell_await, ask): while
 * the mailbox is full it waits in the actor's `blocked` FIFO, and each
 * retry runs on the sender's loop, so that it keeps its place after that
 * sender's earlier messages. `wait.task` is the task to complete once it
 * is queued (tell_await), or NULL (an ask: its task awaits the reply).
 *
 * Two sides own it: the sender's (until the send is settled, which may be
 * after the actor took the envelope: a wake can still be on its way) and
 * the mailbox's (from its post until the actor is done with the
 * envelope). Hence `refs`; envelope_free() drops one.
 */
struct envelope_box {
	struct keel_envelope env; /* first */
	struct keel__waiter wait;
	struct keel_loop *from;
	uint32_t refs; /* atomic */
};

/*
 * An ask: its box and its reply slot in one allocation. The slot holds a
 * reference on the box until its own last one goes (the behaviour may keep
 * the slot past the envelope: keel_envelope_take_reply()).
 */
struct ask_box {
	struct envelope_box box; /* first */
	struct keel_oneshot reply;
};

static uint32_t next_generation;

static int actor_step(struct keel_task *t);
static void carry_drop(struct keel_actor *a);
static KEEL_TASK_TYPE(keel_actor_task, struct actor_frame, task, actor_step);

/* ---- the handle --------------------------------------------------------- */

struct keel_actor *keel_actor_ref(struct keel_actor *a)
{
	__atomic_add_fetch(&a->refs, 1, __ATOMIC_RELAXED);
	return a;
}

void keel_actor_release(struct keel_actor *a)
{
	if (__atomic_sub_fetch(&a->refs, 1, __ATOMIC_ACQ_REL))
		return;
	/* Envelopes still queued (the task never ran), or kept for an
	 * incarnation that will not come, go to on_drop. */
	__atomic_store_n(&a->down, 1, __ATOMIC_SEQ_CST);
	carry_drop(a);
	free(a->carry);
	keel_mailbox_release(a->mb);
	pthread_mutex_destroy(&a->lock);
	free((char *)a->spec.name);
	free(a);
}

bool keel_actor_alive(const struct keel_actor *a)
{
	return !LOAD(&a->down);
}

const char *keel_actor_name(const struct keel_actor *a)
{
	return a->spec.name ? a->spec.name : "actor";
}

uint32_t keel_actor_generation(const struct keel_actor *a)
{
	return LOAD(&a->generation);
}

void keel_actor_stats(struct keel_actor *a, struct keel_actor_stats *out)
{
	out->handled = READ_COUNT(&a->handled);
	out->asks = READ_COUNT(&a->asks);
	out->replies = READ_COUNT(&a->replies);
	out->late_replies = READ_COUNT(&a->late_replies);
	out->unanswered = READ_COUNT(&a->unanswered);
	out->panic_drops = READ_COUNT(&a->panic_drops);
	keel_mb_stats(a->mb, &out->mailbox);
	out->alive = keel_actor_alive(a);
	out->exit_status =
	    out->alive ? 0 : __atomic_load_n(&a->exit_status, __ATOMIC_RELAXED);
}

/* ---- envelopes ---------------------------------------------------------- */

/* `size`: of the envelope, or of the box around it (a blocking send).
 * Inline, as box_new(), so that the size is a constant where the block is
 * zeroed (a few stores, not a `rep stos`). */
static inline __attribute__((always_inline)) struct keel_envelope *
envelope_new(struct keel_actor *a, void *payload, size_t size)
{
	struct keel_envelope *env = keel__shared_calloc(size);

	if (env) {
		env->payload = payload;
		env->actor = a;
		env->generation = LOAD(&a->generation);
		env->deadline = UINT64_MAX;
	}
	return env;
}

/* Done with an envelope: free it, or drop a reference on its box. Its
 * size, for keel__shared_free(), is its kind's (box_new's callers). */
static void envelope_free(struct keel_envelope *env)
{
	size_t size = sizeof(*env);

	if (env->flags & ENV_BOXED) {
		struct envelope_box *box =
		    keel_container_of(env, struct envelope_box, env);

		if (__atomic_sub_fetch(&box->refs, 1, __ATOMIC_ACQ_REL))
			return;
		size = env->flags & ENV_ASK ? sizeof(struct ask_box)
					    : sizeof(*box);
	}
	keel__shared_free(env, size);
}

/* Fail an unanswered ask with `err` and drop its slot reference. */
static void envelope_fail_ask(struct keel_envelope *env, int err)
{
	if (!env->reply)
		return;
	keel_oneshot_fail(env->reply, err);
	keel_oneshot_release(env->reply);
	env->reply = NULL;
	COUNT(&env->actor->unanswered);
}

/* A message that will never be handled: fail it, hand on the payload. */
static void envelope_discard(struct keel_envelope *env, int err)
{
	struct keel_actor *a = env->actor;

	envelope_fail_ask(env, err);
	if (a->spec.mailbox.on_drop)
		a->spec.mailbox.on_drop(env->payload, a->spec.mailbox.drop_arg);
	envelope_free(env);
}

/* The mailbox's on_drop: a DROP policy, or left over when it is freed. */
static void envelope_dropped(void *msg, void *arg)
{
	struct keel_actor *a = arg;

	envelope_discard(msg, LOAD(&a->down) ? -EPIPE : -ENOBUFS);
}

int keel_actor_reply(struct keel_envelope *msg, void *value)
{
	int r;

	if (!msg->reply)
		return (msg->flags & ENV_ASK) ? -EALREADY : -EINVAL;
	/* Past the deadline the slot is retired even if the asker's timer
	 * has not fired yet (it may run on this very loop): fail it with
	 * what the timer would give, so the asker sees the same either way. */
	if (msg->deadline != UINT64_MAX && keel__clock_now() >= msg->deadline) {
		keel_oneshot_fail(msg->reply, -ETIMEDOUT);
		r = -ETIMEDOUT;
	} else {
		r = keel_oneshot_send(msg->reply, value);
	}
	keel_oneshot_release(msg->reply);
	msg->reply = NULL;
	COUNT(r ? &msg->actor->late_replies : &msg->actor->replies);
	return r;
}

struct keel_oneshot *keel_envelope_take_reply(struct keel_envelope *msg)
{
	struct keel_oneshot *os = msg->reply;

	msg->reply = NULL;
	return os;
}

bool keel_envelope_is_ask(const struct keel_envelope *msg)
{
	return msg->flags & ENV_ASK;
}

uint64_t keel_envelope_request_id(const struct keel_envelope *msg)
{
	return msg->request_id;
}

uint64_t keel_envelope_deadline(const struct keel_envelope *msg)
{
	return msg->deadline;
}

/* ---- down: one exit path ------------------------------------------------ */

/* Fail whatever is still in the mailbox (the actor's loop). */
/* Keep a tell for the next incarnation; false: drop it instead. */
static bool carry_push(struct keel_actor *a, struct keel_envelope *env)
{
	bool kept = false;

	pthread_mutex_lock(&a->lock);
	if (a->retired)
		goto out;
	if (a->carry_len == a->carry_cap && a->carry_head) {
		a->carry_len -= a->carry_head;
		memmove(a->carry, a->carry + a->carry_head,
			a->carry_len * sizeof(*a->carry));
		a->carry_head = 0;
	}
	if (a->carry_len == a->carry_cap) {
		uint32_t cap = a->carry_cap ? a->carry_cap * 2 : 16;
		struct keel_envelope **c = realloc(a->carry, cap * sizeof(*c));

		if (!c)
			goto out;
		a->carry = c;
		a->carry_cap = cap;
	}
	a->carry[a->carry_len++] = env;
	kept = true;
out:
	pthread_mutex_unlock(&a->lock);
	return kept;
}

/* The oldest kept tell, or NULL. */
static struct keel_envelope *carry_pop(struct keel_actor *a)
{
	struct keel_envelope *env = NULL;

	pthread_mutex_lock(&a->lock);
	if (a->carry_head < a->carry_len)
		env = a->carry[a->carry_head++];
	if (a->carry_head == a->carry_len)
		a->carry_head = a->carry_len = 0;
	pthread_mutex_unlock(&a->lock);
	return env;
}

/* Drop every kept tell (to on_drop), outside the lock: on_drop is the
 * user's and may send to this actor. */
static void carry_drop(struct keel_actor *a)
{
	struct keel_envelope *env;

	while ((env = carry_pop(a)))
		envelope_discard(env, -EPIPE);
}

/* Fail whatever is still in the mailbox (the actor's loop); with
 * keep_mailbox, tells are kept for the next incarnation instead. */
static void drain_mailbox(struct keel_actor *a)
{
	void *msg;

	while (keel_mb_try_recv(a->mb, &msg) == 0) {
		struct keel_envelope *env = msg;

		if (a->keep_mailbox && !(env->flags & ENV_ASK) &&
		    carry_push(a, env))
			continue;
		envelope_discard(env, -EPIPE);
	}
}

static void drain_run(struct keel_loop *loop, struct keel__remote_item *it)
{
	struct keel_actor *a =
	    keel_container_of(it, struct keel_actor, drain_item);

	(void)loop;
	__atomic_store_n(&a->drain_posted, 0, __ATOMIC_SEQ_CST);
	/* Up again (a supervisor restarted it meanwhile): what came in is
	 * the new incarnation's to handle. */
	if (LOAD(&a->down))
		drain_mailbox(a);
	keel_actor_release(a); /* the poster's */
}

/* A message went in after the actor went down: drain on its loop. */
static void schedule_drain(struct keel_actor *a)
{
	if (__atomic_exchange_n(&a->drain_posted, 1, __ATOMIC_SEQ_CST))
		return;
	keel_actor_ref(a);
	if (keel__current_core == keel__core_of(a->loop))
		drain_run(a->loop, &a->drain_item);
	else
		keel__remote_post(a->loop, &a->drain_item);
}

/* Queue an envelope: the mailbox's status. On an error it was not taken. */
static int post(struct keel_actor *a, struct keel_envelope *env)
{
	int r = keel_mb_try_send(a->mb, env);

	if (r < 0)
		return r;
	/* A read-modify-write, ordered after the send like a full fence:
	 * either it sees actor_down()'s exchange, or that drain sees the
	 * message. */
	if (__atomic_fetch_or(&a->down, 0, __ATOMIC_SEQ_CST))
		schedule_drain(a);
	return r;
}

static void wake_blocked_sender(struct keel_actor *a);

static void actor_down(void *arg)
{
	struct actor_frame *f = arg;
	struct keel_actor *a = f->actor;
	struct keel__core *c = keel__core_of(a->loop);
	/* Unwound without stopping: a panic, or a kill (whose status is the
	 * cancellation's), or a loop torn down under it. */
	bool panicked =
	    c->unwinding == &f->task && !(f->task.flags & KEEL__T_KILLED);
	int status = f->stopping ? f->status
		     : panicked	 ? KEEL_ABORTED
				 : -ECANCELED;

	__atomic_store_n(&a->exit_status, status, __ATOMIC_RELAXED);
	__atomic_exchange_n(&a->down, 1, __ATOMIC_SEQ_CST); /* see post() */
	keel_mb_close(a->mb);
	/* The behaviour panicked mid-message: its asker must not wait. */
	if (a->current) {
		COUNT(&a->panic_drops);
		envelope_fail_ask(a->current, -EPIPE);
		envelope_free(a->current);
		a->current = NULL;
	}
	if (a->started && a->spec.on_stop)
		a->spec.on_stop(&a->ctx, status);
	drain_mailbox(a);
	while (LOAD(&a->nblocked))
		wake_blocked_sender(a); /* they retry and find it closed */
	a->ctx.task = NULL;
	keel_actor_release(a); /* the task's reference */
}

/* ---- the actor's task --------------------------------------------------- */

/* Call the behaviour on one envelope; returns what it returned. */
static int handle(struct keel_actor *a, struct keel_envelope *env)
{
	int rc;

	if (env->generation != LOAD(&a->generation) &&
	    (!a->keep_mailbox || (env->flags & ENV_ASK))) {
		/* For an earlier incarnation (a restart): not ours, unless
		 * it is a tell and the mailbox is meant to survive. */
		envelope_discard(env, -EPIPE);
		return 0;
	}
	a->current = env;
	rc = a->spec.behaviour(&a->ctx, env);
	a->current = NULL;
	COUNT(&a->handled);
	envelope_fail_ask(env,
			  rc < 0 || rc == KEEL_ACTOR_STOP ? -EPIPE : -ENOMSG);
	envelope_free(env);
	return rc;
}

static int actor_step(struct keel_task *t)
{
	struct actor_frame *f = keel_container_of(t, struct actor_frame, task);
	struct keel_actor *a = f->actor;
	int rc;

	KEEL_BEGIN(t);
	if (!a) /* a supervised start that ran out of memory */
		KEEL_EXIT(t, -ENOMEM);
	if (!f->down_registered) {
		f->status = -ENOMEM;
		f->stopping = true;
		actor_down(f);
		KEEL_EXIT(t, -ENOMEM);
	}
	if (a->spec.on_start) {
		rc = a->spec.on_start(&a->ctx);
		if (rc < 0 || rc == KEEL_ACTOR_STOP) { /* not started */
			f->status = rc < 0 ? rc : 0;
			goto out;
		}
	}
	a->started = true;
	if (a->on_ready) {
		a->on_ready(a->ready_arg);
		a->on_ready = NULL;
	}
	/* Tells kept from the last incarnation come before any newer one. */
	while ((f->kept = carry_pop(a))) {
		rc = handle(a, f->kept);
		if (rc) {
			f->status = rc == KEEL_ACTOR_STOP ? 0 : rc;
			goto out;
		}
		if (++f->batch == 64) {
			f->batch = 0;
			KEEL_YIELD(t);
		}
	}
	for (;;) {
		KEEL_AWAIT(t, keel_mb_recv(t, a->mb, &f->msg));
		if (keel_res(t) < 0) {
			/* Stopped (closed, drained) or cancelled. */
			f->status = keel_res(t) == -EPIPE ? 0 : keel_res(t);
			break;
		}
		wake_blocked_sender(a);
		rc = handle(a, f->msg);
		if (rc) {
			f->status = rc == KEEL_ACTOR_STOP ? 0 : rc;
			break;
		}
	}
out:
	f->stopping = true;
	KEEL_EXIT(t, f->status); /* runs actor_down() */
}

/* Fill a new actor task's frame (on the actor's loop). */
static void actor_init(void *frame, void *arg)
{
	struct actor_frame *f = frame;
	struct keel_actor *a = arg;

	f->actor = a;
	a->ctx.task = &f->task;
	/* Now, not at the first step: a loop destroyed before the task ran
	 * still runs its defers. */
	f->down_registered = keel_defer(&f->task, actor_down, f) == 0;
}

static void stop_run(struct keel_loop *loop, struct keel__remote_item *it);

static uint32_t new_generation(void)
{
	return __atomic_add_fetch(&next_generation, 1, __ATOMIC_RELAXED);
}

/* A handle with two references: the caller's and the task's. */
static int actor_new(struct keel_loop *loop, const struct keel_actor_spec *spec,
		     void *state, struct keel_actor **out)
{
	struct keel_mailbox_opts opts;
	struct keel_actor *a;
	int err;

	if (!spec || !spec->behaviour ||
	    (unsigned)spec->prio >= KEEL_PRIO_CLASSES)
		return -EINVAL;
	a = calloc(1, sizeof(*a));
	if (!a)
		return -ENOMEM;
	a->spec = *spec;
	/* The spec is copied, its name too: callers build names on the
	 * stack (as for supervisors and child specs). */
	if (spec->name && !(a->spec.name = strdup(spec->name))) {
		free(a);
		return -ENOMEM;
	}
	opts = spec->mailbox;
	opts.on_drop = envelope_dropped;
	opts.drop_arg = a;
	err = keel_mailbox_new(loop, &opts, &a->mb);
	if (err) {
		free((char *)a->spec.name);
		free(a);
		return err;
	}
	a->refs = 2;
	a->generation = new_generation();
	a->loop = loop;
	a->ctx.self = a;
	a->ctx.state = state;
	a->ctx.loop = loop;
	a->stop_item.run = stop_run;
	a->drain_item.run = drain_run;
	pthread_mutex_init(&a->lock, NULL);
	*out = a;
	return 0;
}

int keel_actor_spawn(struct keel_loop *loop, const struct keel_actor_spec *spec,
		     void *state, struct keel_actor **out)
{
	struct keel_actor *a;
	void *frame;
	int err;

	if (keel__current_core && keel__current_core != keel__core_of(loop))
		return -EXDEV;
	err = actor_new(loop, spec, state, &a);
	if (err)
		return err;
	frame = keel_spawn(loop, &keel_actor_task, (unsigned)spec->prio);
	if (!frame) {
		keel_actor_release(a);
		keel_actor_release(a);
		return -ENOMEM;
	}
	actor_init(frame, a);
	*out = a;
	return 0;
}

int keel_actor_spawn_on(struct keel_loop *loop,
			const struct keel_actor_spec *spec, void *state,
			struct keel_actor **out)
{
	struct keel_actor *a;
	int err = actor_new(loop, spec, state, &a);

	if (err)
		return err;
	err = keel_spawn_on(loop, &keel_actor_task, (unsigned)spec->prio,
			    actor_init, a);
	if (err) {
		keel_actor_release(a);
		keel_actor_release(a);
		return err;
	}
	*out = a;
	return 0;
}

/* ---- supervised incarnations (supervise/supervise.h) -------------------- */

/* A down supervised actor becomes a new incarnation (its loop). */
static void reincarnate(struct keel_actor *a,
			const struct keel_actor_spec *spec, void *state)
{
	/* Only the fields the actor's own loop reads: other threads read the
	 * name and the mailbox options, which stay as they were. */
	a->spec.behaviour = spec->behaviour;
	a->spec.on_start = spec->on_start;
	a->spec.on_stop = spec->on_stop;
	a->ctx.state = state;
	a->current = NULL;
	a->started = false;
	__atomic_store_n(&a->generation, new_generation(), __ATOMIC_RELEASE);
	keel__mb_reopen(a->mb); /* a graceful stop closed it */
}

int keel__actor_start_supervised(struct keel_loop *loop, struct keel_actor **ap,
				 struct keel__actor_incarnation *inc)
{
	const struct keel_actor_spec *spec = inc->spec;
	struct keel_actor *a = *ap;
	struct actor_frame *f;
	int err;

	if (keel__current_core != keel__core_of(loop))
		return -EXDEV;
	if (!spec || !spec->behaviour ||
	    (unsigned)spec->prio >= KEEL_PRIO_CLASSES)
		return -EINVAL;
	if (a && (!LOAD(&a->down) || a->ctx.task || a->loop != loop))
		return a->loop != loop ? -EXDEV : -EBUSY;
	if (!a) {
		err = actor_new(loop, spec, inc->state, &a);
		if (err)
			return err;
		a->supervised = true;
		a->keep_mailbox = inc->keep_mailbox;
	} else {
		keel_actor_ref(a); /* the new task's */
		reincarnate(a, spec, inc->state);
	}
	f = keel_spawn(loop, &keel_actor_task, (unsigned)spec->prio);
	if (!f)
		goto fail;
	/* The supervisor's cleanup first, so that it runs after the actor's
	 * own (LIFO): it then reports the final status and drop count. If it
	 * cannot be pushed, the task exits at its first step, unsupervised
	 * and harmless (no actor attached). */
	if (inc->on_exit && keel_defer(&f->task, inc->on_exit, inc->exit_arg))
		goto fail;
	a->on_ready = inc->on_ready;
	a->ready_arg = inc->ready_arg;
	actor_init(f, a);
	if (*ap) /* up again: senders may send */
		__atomic_exchange_n(&a->down, 0, __ATOMIC_SEQ_CST);
	*ap = a;
	inc->task = &f->task;
	return 0;
fail:
	keel_actor_release(a); /* the task's */
	if (!*ap)
		keel_actor_release(a); /* the caller's */
	return -ENOMEM;
}

void keel__actor_retire(struct keel_actor *a)
{
	pthread_mutex_lock(&a->lock);
	a->retired = true;
	pthread_mutex_unlock(&a->lock);
	carry_drop(a);
}

uint64_t keel__actor_panic_drops(const struct keel_actor *a)
{
	return READ_COUNT(&a->panic_drops);
}

static void stop_run(struct keel_loop *loop, struct keel__remote_item *it)
{
	struct keel_actor *a =
	    keel_container_of(it, struct keel_actor, stop_item);

	(void)loop;
	/* Done with the item: a restarted actor can be stopped again. */
	__atomic_store_n(&a->stop_posted, 0, __ATOMIC_RELEASE);
	/* The task drains what is queued, then its receive gets -EPIPE. */
	keel_mb_close(a->mb);
	keel_actor_release(a); /* the stopper's */
}

void keel_actor_stop(struct keel_actor *a)
{
	if (LOAD(&a->down) ||
	    __atomic_exchange_n(&a->stop_posted, 1, __ATOMIC_ACQ_REL))
		return;
	keel_actor_ref(a);
	if (keel__current_core == keel__core_of(a->loop))
		stop_run(a->loop, &a->stop_item);
	else
		keel__remote_post(a->loop, &a->stop_item);
}

/* ---- sending ------------------------------------------------------------ */

int keel_actor_tell(struct keel_actor *a, void *payload)
{
	struct keel_envelope *env;
	int r;

	if (LOAD(&a->down))
		return -EPIPE;
	env = envelope_new(a, payload, sizeof(*env));
	if (!env)
		return -ENOMEM;
	r = post(a, env);
	if (r < 0)
		keel__shared_free(env, sizeof(*env));
	return r;
}

/*
 * A blocked send settled with `r` (the envelope is queued when r >= 0):
 * complete its task, if one waits for it; a failed envelope is freed (and
 * an ask's slot told why).
 */
static void blocked_finish(struct envelope_box *box, int r)
{
	struct keel_task *t = box->wait.task;

	if (r < 0) {
		envelope_fail_ask(&box->env, r);
		/* A tell's payload goes back to its task; an ask's asker only
		 * hears of the failure: its payload is dropped. */
		if (!t && box->env.actor->spec.mailbox.on_drop)
			box->env.actor->spec.mailbox.on_drop(
			    box->env.payload,
			    box->env.actor->spec.mailbox.drop_arg);
	}
	envelope_free(&box->env); /* the sender's side */
	if (t) {
		t->ext->wait_cancel = NULL;
		keel__task_complete(t, r);
	}
}

/* Post a box: the mailbox's reference first, as the actor may take the
 * envelope and be done with it before this returns. */
static int post_box(struct keel_actor *a, struct envelope_box *box)
{
	__atomic_add_fetch(&box->refs, 1, __ATOMIC_RELAXED);
	int r = post(a, &box->env);

	if (r < 0) /* not taken; the sender still holds its own */
		__atomic_sub_fetch(&box->refs, 1, __ATOMIC_RELAXED);
	return r;
}

/*
 * Queue a box whose send found the mailbox full, then retry once: the
 * actor may have made room before it could see the box. Returns MUST_WAIT
 * (queued, or settled while a wake is already on its way: the wake
 * reports it), or the retry's result (nothing freed).
 */
static int block(struct keel_actor *a, struct envelope_box *box)
{
	struct keel__waiter *w = &box->wait;

	pthread_mutex_lock(&a->lock);
	if (LOAD(&a->down)) {
		pthread_mutex_unlock(&a->lock);
		return -EPIPE;
	}
	w->state = KEEL__WAIT_QUEUED;
	keel__waitq_push(&a->blocked, w);
	__atomic_add_fetch(&a->nblocked, 1, __ATOMIC_SEQ_CST);
	pthread_mutex_unlock(&a->lock);
	int r = post_box(a, box);

	if (r == -EAGAIN)
		return MUST_WAIT;
	pthread_mutex_lock(&a->lock);
	bool queued = w->state == KEEL__WAIT_QUEUED;

	if (queued) {
		keel__waitq_remove(&a->blocked, w);
		__atomic_sub_fetch(&a->nblocked, 1, __ATOMIC_RELEASE);
		w->state = KEEL__WAIT_IDLE;
	} else {
		w->state = KEEL__WAIT_SENT;
		w->result = r;
	}
	pthread_mutex_unlock(&a->lock);
	return queued ? r : MUST_WAIT;
}

/* Whether a woken box should give up rather than retry: its error. */
static int blocked_abandoned(struct envelope_box *box)
{
	struct keel_envelope *env = &box->env;
	int cause =
	    box->wait.task ? keel__task_cancel_cause(box->wait.task) : 0;

	if (cause)
		return cause;
	if (LOAD(&env->actor->down))
		return -EPIPE;
	if (env->reply && keel_oneshot_is_closed(env->reply))
		return -EPIPE; /* the asker gave up */
	if (env->deadline != UINT64_MAX && keel__clock_now() >= env->deadline)
		return -ETIMEDOUT;
	return 0;
}

/* On the sender's loop: the actor made room (or went down): retry. */
static void blocked_woken(struct keel_loop *loop, struct keel__remote_item *it)
{
	struct keel__waiter *w =
	    keel_container_of(it, struct keel__waiter, wake);
	struct envelope_box *box =
	    keel_container_of(w, struct envelope_box, wait);
	struct keel_actor *a = box->env.actor;
	int r;

	(void)loop;
	if (w->state == KEEL__WAIT_SENT) {
		r = w->result;
	} else {
		w->state = KEEL__WAIT_IDLE;
		r = blocked_abandoned(box);
		if (!r)
			r = block(a, box);
	}
	if (r != MUST_WAIT) {
		w->state = KEEL__WAIT_IDLE;
		blocked_finish(box, r);
	}
	keel_actor_release(a); /* the waker's */
}

/* A task in keel_actor_tell_await was cancelled. */
static void tell_await_cancelled(struct keel_task *t)
{
	struct envelope_box *box = t->ext->waiter.payload;
	struct keel__waiter *w = &box->wait;
	struct keel_actor *a = box->env.actor;
	bool queued;

	pthread_mutex_lock(&a->lock);
	queued = w->state == KEEL__WAIT_QUEUED;
	if (queued) {
		keel__waitq_remove(&a->blocked, w);
		__atomic_sub_fetch(&a->nblocked, 1, __ATOMIC_RELEASE);
		w->state = KEEL__WAIT_IDLE;
	}
	pthread_mutex_unlock(&a->lock);
	/* Else a wake is on its way: it sees the cancellation (or reports
	 * the send that got in first). */
	if (queued)
		blocked_finish(box, keel__task_cancel_cause(t));
}

/* The actor took a message (its loop): wake the first blocked send. */
static void wake_blocked_sender(struct keel_actor *a)
{
	struct keel__waiter *w;

	/* A read-modify-write, ordered after the take like a full fence: it
	 * sees a sender that queued before its retry found no room. */
	if (!__atomic_fetch_add(&a->nblocked, 0, __ATOMIC_SEQ_CST))
		return;
	pthread_mutex_lock(&a->lock);
	w = keel__waitq_pop(&a->blocked);
	if (w) {
		__atomic_sub_fetch(&a->nblocked, 1, __ATOMIC_RELEASE);
		w->state = KEEL__WAIT_WAKING;
	}
	pthread_mutex_unlock(&a->lock);
	if (w) {
		struct envelope_box *box =
		    keel_container_of(w, struct envelope_box, wait);

		keel_actor_ref(a); /* held until the wake ran */
		keel__remote_post(box->from, &w->wake);
	}
}

/* An envelope that may have to wait for room, sent by a task of `from`;
 * `size`: of the box, or of what holds it (an ask_box). */
static inline __attribute__((always_inline)) struct envelope_box *
box_new(struct keel_actor *a, void *payload, struct keel_loop *from,
	size_t size)
{
	struct envelope_box *box =
	    (struct envelope_box *)envelope_new(a, payload, size);

	if (box) {
		box->env.flags = ENV_BOXED;
		box->from = from;
		box->wait.wake.run = blocked_woken;
		box->wait.owner = a;
		box->refs = 1; /* the sender's */
	}
	return box;
}

int keel_actor_tell_await(struct keel_task *t, struct keel_actor *a,
			  void *payload)
{
	struct envelope_box *box;
	int cause = keel__task_cancel_cause(t);
	int r;

	if (cause)
		return keel__task_ready(t, cause);
	if (LOAD(&a->down))
		return keel__task_ready(t, -EPIPE);
	box = box_new(a, payload, t->loop, sizeof(*box));
	if (!box)
		return keel__task_ready(t, -ENOMEM);
	r = post_box(a, box);
	if (r != -EAGAIN || a->spec.mailbox.policy != KEEL_MB_BLOCK) {
		envelope_free(&box->env); /* the sender's */
		return keel__task_ready(t, r);
	}
	struct keel__task_ext *x = keel__task_ext(t);

	if (!x) {
		envelope_free(&box->env);
		return keel__task_ready(t, -ENOMEM);
	}
	box->wait.task = t;
	x->waiter.payload = box;
	r = block(a, box);
	if (r != MUST_WAIT) {
		envelope_free(&box->env);
		return keel__task_ready(t, r);
	}
	x->wait_cancel = tell_await_cancelled;
	/* The actor may run on another loop: this one must not give up. */
	return keel__task_suspend_external(t);
}

/* An ask's reply slot has no reference left: nor has the box, of it. */
static void ask_reply_done(struct keel_oneshot *os)
{
	struct ask_box *ab = keel_container_of(os, struct ask_box, reply);

	envelope_free(&ab->box.env);
}

int keel_actor_ask(struct keel_task *t, struct keel_actor *a, void *payload,
		   uint64_t deadline_ns, void **reply)
{
	struct envelope_box *box;
	struct keel_oneshot *os;
	int cause = keel__task_cancel_cause(t);
	int r;

	if (cause)
		return keel__task_ready(t, cause);
	if (LOAD(&a->down))
		return keel__task_ready(t, -EPIPE);
	if (deadline_ns != UINT64_MAX && deadline_ns <= keel__clock_now())
		return keel__task_ready(t, -ETIMEDOUT);
	if (!keel__task_ext(t) ||
	    !(box = box_new(a, payload, t->loop, sizeof(struct ask_box))))
		return keel__task_ready(t, -ENOMEM);
	/* The asker's reference on the slot, and the slot's on the box. */
	os = &((struct ask_box *)box)->reply;
	keel__oneshot_init(os, t->loop, ask_reply_done);
	box->refs++;
	box->env.flags |= ENV_ASK;
	box->env.deadline = deadline_ns;
	box->env.reply = keel_oneshot_ref(os);
	box->env.request_id =
	    __atomic_add_fetch(&a->next_request, 1, __ATOMIC_RELAXED);
	r = post_box(a, box);
	/* No room: the envelope waits for some (retried on this loop, so it
	 * keeps its place after this task's earlier messages) while the task
	 * waits for the reply; the deadline bounds both. Waiting, the box
	 * keeps the sender's reference until it is settled. */
	if (r == -EAGAIN && a->spec.mailbox.policy == KEEL_MB_BLOCK)
		r = block(a, box);
	if (r < 0) {
		keel_oneshot_release(box->env.reply);
		box->env.reply = NULL;
		envelope_free(&box->env); /* the sender's */
		keel_oneshot_release(os); /* the last: it frees the box */
		return keel__task_ready(t, r);
	}
	if (r != MUST_WAIT)
		envelope_free(&box->env); /* queued: the sender is done */
	COUNT(&a->asks);
	/* Dropped by a DROP policy: the slot already holds -ENOBUFS. */
	r = keel_oneshot_recv_until(t, os, reply, deadline_ns);
	keel_oneshot_release(os); /* a pending wait holds its own */
	return r;
}
