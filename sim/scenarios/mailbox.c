/* SPDX-License-Identifier: MIT */
/*
 * mailbox.c: bounded mailboxes and actor asks between two or three loops
 * of one machine. Producers on one or two loops send numbered messages to
 * a small BLOCK mailbox owned by a consumer on another loop, which is
 * slow at PRNG-chosen times (backpressure: senders wait for room); they
 * also ask an actor on the consumer's loop, with short deadlines. A killer
 * cancels producers at random moments. When the last producer is done it
 * spawns, across loops, a closer that closes the mailbox and stops the
 * actor.
 *
 * Checked: every message whose send reported success arrives once, in
 * each producer's order, and none other (a cancelled send queued nothing);
 * every reply is the actor's answer to that ask; asks end only with a
 * reply, their deadline or a cancellation.
 */
#include "scenario.h"

#include <errno.h>
#include <string.h>

#define MAX_PRODUCERS 8

struct world {
	struct scn *s;
	struct keel_loop *owner;
	struct keel_mailbox *mb;
	struct keel_actor *actor;
	unsigned producers_left;
	struct keel_task *producers[MAX_PRODUCERS]; /* on loop 0; NULL: gone */
	uint32_t next_seq[MAX_PRODUCERS];
	uint64_t sent, received, asks, replies;
};

struct producer {
	struct keel_task task;
	struct world *w;
	uint32_t id, seq, count;
	void *reply;
	uint64_t value;
};

struct consumer {
	struct keel_task task;
	struct world *w;
	void *msg;
};

struct killer {
	struct keel_task task;
	struct world *w;
	unsigned rounds;
};

struct closer {
	struct keel_task task;
	struct world *w;
};

static int producer_step(struct keel_task *t);
static int consumer_step(struct keel_task *t);
static int killer_step(struct keel_task *t);
static int closer_step(struct keel_task *t);
static KEEL_TASK_TYPE(mb_producer, struct producer, task, producer_step);
static KEEL_TASK_TYPE(mb_consumer, struct consumer, task, consumer_step);
static KEEL_TASK_TYPE(mb_killer, struct killer, task, killer_step);
static KEEL_TASK_TYPE(mb_closer, struct closer, task, closer_step);

static void closer_init(void *frame, void *arg)
{
	((struct closer *)frame)->w = arg;
}

static int closer_step(struct keel_task *t)
{
	struct closer *c = keel_container_of(t, struct closer, task);

	KEEL_BEGIN(t);
	keel_mb_close(c->w->mb);
	keel_actor_stop(c->w->actor);
	KEEL_END(t);
}

static void producer_done(struct producer *p)
{
	struct world *w = p->w;

	if (p->id < MAX_PRODUCERS)
		w->producers[p->id] = NULL;
	if (--w->producers_left)
		return;
	if (keel_spawn_on(w->owner, &mb_closer, KEEL_PRIO_NORMAL, closer_init,
			  w))
		scn_fail(w->s, "keel_spawn_on failed");
}

static int producer_step(struct keel_task *t)
{
	struct producer *p = keel_container_of(t, struct producer, task);
	struct world *w = p->w;
	struct scn *s = w->s;

	KEEL_BEGIN(t);
	for (p->seq = 1; p->seq <= p->count; p->seq++) {
		if (scn_pct(s, 10)) {
			p->value = scn_below(s, 1u << 20) + 1;
			w->asks++;
			KEEL_AWAIT(
			    t, keel_actor_ask(t, w->actor,
					      (void *)(uintptr_t)p->value,
					      keel_loop_now(keel_task_loop(t)) +
						  scn_range(s, 1, 20) * MS,
					      &p->reply));
			if (keel_res(t) == 0) {
				w->replies++;
				if ((uintptr_t)p->reply != p->value + 1)
					scn_fail(s, "ask %llu: reply %llu",
						 (unsigned long long)p->value,
						 (unsigned long long)(uintptr_t)
						     p->reply);
			} else if (keel_res(t) != -ETIMEDOUT &&
				   keel_res(t) != -ECANCELED) {
				scn_fail(s, "ask: %s",
					 keel_strerror(keel_res(t)));
			}
			if (keel_res(t) == -ECANCELED)
				break;
		}
		if (scn_pct(s, 10))
			KEEL_AWAIT(t, keel_sleep(t, scn_below(s, 5 * MS)));
		KEEL_AWAIT(
		    t, keel_mb_send(t, w->mb,
				    (void *)(uintptr_t)((uint64_t)p->id << 32 |
							p->seq)));
		if (keel_res(t) == 0) {
			w->sent++;
			continue;
		}
		if (keel_res(t) != -ECANCELED)
			scn_fail(s, "producer %u: send: %s", p->id,
				 keel_strerror(keel_res(t)));
		break;
	}
	producer_done(p);
	KEEL_END(t);
}

static int consumer_step(struct keel_task *t)
{
	struct consumer *c = keel_container_of(t, struct consumer, task);
	struct world *w = c->w;
	uint64_t v;
	uint32_t id, seq;

	KEEL_BEGIN(t);
	for (;;) {
		if (scn_pct(w->s, 20))
			KEEL_AWAIT(t, keel_sleep(t, scn_below(w->s, 10 * MS)));
		KEEL_AWAIT(t, keel_mb_recv(t, w->mb, &c->msg));
		if (keel_res(t) < 0)
			break;
		v = (uint64_t)(uintptr_t)c->msg;
		id = (uint32_t)(v >> 32);
		seq = (uint32_t)v;
		if (id >= MAX_PRODUCERS || seq != w->next_seq[id] + 1) {
			scn_fail(w->s, "producer %u: message %u after %u", id,
				 seq, id < MAX_PRODUCERS ? w->next_seq[id] : 0);
			break;
		}
		w->next_seq[id] = seq;
		w->received++;
	}
	if (keel_res(t) < 0 && keel_res(t) != -EPIPE)
		scn_fail(w->s, "consumer: %s", keel_strerror(keel_res(t)));
	if (w->received != w->sent)
		scn_fail(w->s, "%llu messages sent, %llu received",
			 (unsigned long long)w->sent,
			 (unsigned long long)w->received);
	w->s->transfers += w->received;
	keel_mailbox_release(w->mb);
	w->mb = NULL;
	keel_actor_release(w->actor);
	w->actor = NULL;
	KEEL_END(t);
}

static int killer_step(struct keel_task *t)
{
	struct killer *k = keel_container_of(t, struct killer, task);
	struct world *w = k->w;
	struct keel_task *victim;

	KEEL_BEGIN(t);
	for (; k->rounds; k->rounds--) {
		KEEL_AWAIT(t, keel_sleep(t, scn_below(w->s, 20 * MS)));
		victim = w->producers[scn_below(w->s, MAX_PRODUCERS)];
		if (victim)
			keel_task_cancel(victim);
	}
	KEEL_END(t);
}

static int actor_answer(struct keel_actor_ctx *ctx, struct keel_envelope *msg)
{
	int err = keel_actor_reply(msg, (void *)((uintptr_t)msg->payload + 1));

	/* Late: the asker's deadline passed while the ask waited. */
	return err == -ETIMEDOUT || err == -EPIPE ? 0 : err;
}

static bool spawn_producer(struct world *w, struct keel_loop *loop, uint32_t id,
			   bool on_zero)
{
	struct producer *p = keel_spawn(loop, &mb_producer, KEEL_PRIO_NORMAL);

	if (!p)
		return false;
	p->w = w;
	p->id = id;
	p->count = (uint32_t)scn_range(w->s, 0, 400);
	if (on_zero)
		w->producers[id] = keel_task_of(&mb_producer, p);
	w->producers_left++;
	return true;
}

static void mailbox_run(struct scn *s)
{
	struct world *w = scn_world(s, sizeof(*w));
	struct keel_loop *loops[3];
	unsigned nloops = (unsigned)scn_range(s, 2, 3);
	struct keel_mailbox_opts mo = {0};
	struct keel_actor_spec as = {0};
	int err;

	if (!w)
		return;
	w->s = s;
	for (unsigned i = 0; i < nloops; i++)
		if (!(loops[i] = scn_loop(s)))
			return;
	w->owner = loops[1];
	mo.capacity = (uint32_t)scn_range(s, 1, 8);
	mo.policy = KEEL_MB_BLOCK;
	err = keel_mailbox_new(w->owner, &mo, &w->mb);
	if (err) {
		scn_fail(s, "keel_mailbox_new: %s", keel_strerror(err));
		return;
	}
	as.name = "adder";
	as.behaviour = actor_answer;
	as.mailbox.capacity = (uint32_t)scn_range(s, 1, 4);
	err = keel_actor_spawn(w->owner, &as, NULL, &w->actor);
	if (err) {
		scn_fail(s, "keel_actor_spawn: %s", keel_strerror(err));
		keel_mailbox_release(w->mb);
		return;
	}
	struct consumer *c =
	    keel_spawn(w->owner, &mb_consumer, KEEL_PRIO_NORMAL);
	struct killer *k = keel_spawn(loops[0], &mb_killer, KEEL_PRIO_NORMAL);

	if (!c || !k) {
		scn_fail(s, "out of memory");
		return;
	}
	c->w = w;
	k->w = w;
	k->rounds = (unsigned)scn_range(s, 0, 4);
	for (uint32_t id = 0, n = (uint32_t)scn_range(s, 1, MAX_PRODUCERS);
	     id < n; id++) {
		bool zero = nloops == 2 || scn_pct(s, 50);

		if (!spawn_producer(w, zero ? loops[0] : loops[2], id, zero)) {
			scn_fail(s, "out of memory");
			return;
		}
	}
	scn_run(s, 600 * SEC);
}

const struct scenario scn_mailbox = {
    .name = "mailbox",
    .what = "bounded mailboxes and actor asks between 2-3 loops, with "
	    "cancelled senders",
    .run = mailbox_run,
};
