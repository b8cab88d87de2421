/* SPDX-License-Identifier: MIT */
/*
 * mailbox.c: bounded mailboxes (semantics in keel/sync.h).
 *
 * Two queues feed one receiver on the owner loop:
 * - `local`: a plain ring for senders on the owner loop (no atomics);
 * - `remote`: a bounded lock-free queue (Vyukov's, with a sequence word per
 *   slot) for senders on other threads. It is multi-consumer so that a
 *   remote DROP_OLDEST sender can take the oldest message out itself.
 * A remote send marks the mailbox `notified` and, only if it was not yet,
 * posts the mailbox's item to the owner loop's inbox; the inbox rings the
 * loop's doorbell only when the loop is parked. So a burst of sends costs
 * one notification and at most one wake-up.
 *
 * Blocked senders wait in FIFO queues: owner-loop tasks in `local_senders`
 * (the receiver moves a waiting sender's message in as room frees), tasks
 * of other loops in `remote_senders` under `lock` (the receiver posts a
 * wake to the sender's loop, which retries its send there).
 *
 * Invariant (no lost notification): the receiver clears `notified` before
 * it looks at the remote queue; a sender queues before it looks at
 * `notified`. Both with sequentially consistent atomics.
 */
#include "core.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define LOAD(p)		  __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define STORE(p, v)	  __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#define RELAXED_ADD(p, v) __atomic_add_fetch((p), (v), __ATOMIC_RELAXED)
/*
 * A 64-bit counter only the owner loop writes: no lock prefix, but whole
 * values for stats read from other threads. As relaxed atomics that is a
 * load, an add and a store (GCC fuses no atomic accesses); on x86-64 one
 * `incq` to memory is the same single store of a whole value, two
 * instructions less per message. TSan's builds keep the atomics, which it
 * sees (it cannot see into an asm).
 */
#if defined(__SANITIZE_THREAD__)
#define MB_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define MB_TSAN 1
#endif
#endif
#if defined(__x86_64__) && !defined(MB_TSAN)
#define OWNER_INC(p) __asm__ volatile("incq %0" : "+m"(*(uint64_t *)(p)))
#else
#define OWNER_INC(p)                                                           \
	__atomic_store_n((p), __atomic_load_n((p), __ATOMIC_RELAXED) + 1,      \
			 __ATOMIC_RELAXED)
#endif

struct mb_slot {
	uint64_t seq;
	void *msg;
};

struct keel_mailbox {
	struct keel_loop *owner;
	/* The owner while open, NULL once closed (atomic: any sender reads
	 * it): a send's fast path tests both with one compare. */
	struct keel_loop *open_owner;
	uint32_t cap;
	int policy;
	keel_mb_drop_fn on_drop;
	void *drop_arg;
	uint32_t refs;
	int closed;
	/* Owner-loop senders. */
	void **local;
	uint32_t lhead;
	uint32_t lcount;
	/* Other threads' senders: Vyukov bounded MPMC queue. */
	struct mb_slot *remote;
	uint64_t rmask;
	uint64_t renq __attribute__((aligned(64)));
	uint64_t rdeq __attribute__((aligned(64)));
	int notified __attribute__((aligned(64)));
	struct keel__remote_item ready;
	/* The receiving task. */
	struct keel_task *receiver;
	void **recv_out;
	/*
	 * The task that last received, and its table slot's generation then:
	 * whom a blocked sender waits for, in the wait-for graph. The
	 * generation is taken when the receiver changes (a compare on the
	 * fast path) and at each suspending receive, so that a new task in a
	 * freed one's frame (a restarted actor) is known after its first
	 * wait, and a stale record draws no edge.
	 */
	struct keel_task *rx;
	uint32_t rx_gen;
	bool take_remote_first; /* alternate the two queues when both fill */
	struct keel__waitq local_senders;
	pthread_mutex_t lock; /* remote_senders */
	struct keel__waitq remote_senders;
	uint32_t nremote_senders; /* atomic hint read without the lock */
	/*
	 * A message sent by the owner loop is received, still queued, or
	 * dropped queued (DROP_OLDEST): it needs no count of its own, so a
	 * local message costs one count, not two (keel_mb_stats()).
	 */
	uint64_t received;	  /* by the owner loop (OWNER_INC) */
	uint64_t received_remote; /* of them, from the remote queue */
	uint64_t dropped_local;	  /* queued local messages dropped */
	uint64_t sent_remote;	  /* by other threads (atomic add) */
	uint64_t dropped, full;
};

static bool remote_push(struct keel_mailbox *mb, void *msg)
{
	uint64_t pos = __atomic_load_n(&mb->renq, __ATOMIC_RELAXED);

	for (;;) {
		struct mb_slot *s = &mb->remote[pos & mb->rmask];

		/* The ring is a power of two of at least two slots: keep to the
		 * capacity (exact for one sender; racing senders may each pass
		 * this check, bounded by the ring). */
		if (pos - __atomic_load_n(&mb->rdeq, __ATOMIC_ACQUIRE) >=
		    mb->cap)
			return false;
		uint64_t seq = LOAD(&s->seq);
		int64_t dif = (int64_t)(seq - pos);

		if (dif == 0) {
			if (__atomic_compare_exchange_n(
				&mb->renq, &pos, pos + 1, true,
				__ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
				s->msg = msg;
				STORE(&s->seq, pos + 1);
				return true;
			}
		} else if (dif < 0) {
			return false; /* full */
		} else {
			pos = __atomic_load_n(&mb->renq, __ATOMIC_RELAXED);
		}
	}
}

static bool remote_pop(struct keel_mailbox *mb, void **msg)
{
	uint64_t pos = __atomic_load_n(&mb->rdeq, __ATOMIC_RELAXED);

	for (;;) {
		struct mb_slot *s = &mb->remote[pos & mb->rmask];
		uint64_t seq = LOAD(&s->seq);
		int64_t dif = (int64_t)(seq - (pos + 1));

		if (dif == 0) {
			if (__atomic_compare_exchange_n(
				&mb->rdeq, &pos, pos + 1, true,
				__ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
				*msg = s->msg;
				STORE(&s->seq, pos + mb->rmask + 1);
				return true;
			}
		} else if (dif < 0) {
			return false; /* empty */
		} else {
			pos = __atomic_load_n(&mb->rdeq, __ATOMIC_RELAXED);
		}
	}
}

static bool on_owner(const struct keel_mailbox *mb)
{
	return keel__current_core == keel__core_of(mb->owner);
}

static void drop(struct keel_mailbox *mb, void *msg)
{
	RELAXED_ADD(&mb->dropped, 1);
	if (mb->on_drop)
		mb->on_drop(msg, mb->drop_arg);
}

static void ready_run(struct keel_loop *loop, struct keel__remote_item *it);

int keel_mailbox_new(struct keel_loop *owner,
		     const struct keel_mailbox_opts *opts,
		     struct keel_mailbox **out)
{
	uint32_t cap = opts && opts->capacity ? opts->capacity : 1024;
	struct keel_mailbox *mb;

	if (opts && (opts->policy < KEEL_MB_BLOCK ||
		     opts->policy > KEEL_MB_DROP_OLDEST))
		return -EINVAL;
	if (cap > (1u << 30))
		return -EINVAL;
	mb = calloc(1, sizeof(*mb));
	if (!mb)
		return -ENOMEM;
	uint64_t rsize = 2; /* Vyukov's queue needs two slots at least */

	while (rsize < cap)
		rsize <<= 1;
	mb->local = calloc(cap, sizeof(*mb->local));
	mb->remote = calloc(rsize, sizeof(*mb->remote));
	if (!mb->local || !mb->remote) {
		free(mb->local);
		free(mb->remote);
		free(mb);
		return -ENOMEM;
	}
	for (uint64_t i = 0; i < rsize; i++)
		mb->remote[i].seq = i;
	mb->rmask = rsize - 1;
	mb->owner = owner;
	mb->open_owner = owner;
	mb->cap = cap;
	mb->policy = opts ? (int)opts->policy : KEEL_MB_BLOCK;
	mb->on_drop = opts ? opts->on_drop : NULL;
	mb->drop_arg = opts ? opts->drop_arg : NULL;
	mb->refs = 1;
	mb->ready.run = ready_run;
	pthread_mutex_init(&mb->lock, NULL);
	*out = mb;
	return 0;
}

struct keel_mailbox *keel_mailbox_ref(struct keel_mailbox *mb)
{
	RELAXED_ADD(&mb->refs, 1);
	return mb;
}

void keel_mailbox_release(struct keel_mailbox *mb)
{
	void *msg;

	if (__atomic_sub_fetch(&mb->refs, 1, __ATOMIC_ACQ_REL))
		return;
	while (mb->lcount) {
		msg = mb->local[mb->lhead];
		mb->lhead = (mb->lhead + 1) % mb->cap;
		mb->lcount--;
		if (mb->on_drop)
			mb->on_drop(msg, mb->drop_arg);
	}
	while (remote_pop(mb, &msg))
		if (mb->on_drop)
			mb->on_drop(msg, mb->drop_arg);
	pthread_mutex_destroy(&mb->lock);
	free(mb->local);
	free(mb->remote);
	free(mb);
}

/* ---- the receiving side (owner loop) ---------------------------------- */

/* Ring indexes wrap with a compare, not `% cap`: a division is some 25
 * cycles, twice per message. */
static inline void local_push(struct keel_mailbox *mb, void *msg)
{
	uint32_t i = mb->lhead + mb->lcount;

	mb->local[i >= mb->cap ? i - mb->cap : i] = msg;
	mb->lcount++;
}

static inline void *local_pop(struct keel_mailbox *mb)
{
	void *msg = mb->local[mb->lhead];
	uint32_t h = mb->lhead + 1;

	mb->lhead = h == mb->cap ? 0 : h;
	mb->lcount--;
	return msg;
}

/* Nothing in the remote queue (nor claimed by a sender still writing).
 * Acquire loads, as remote_pop()'s: after ready_run() clears `notified`,
 * this look must not move before the clear. */
static inline bool remote_empty(struct keel_mailbox *mb)
{
	return LOAD(&mb->renq) == LOAD(&mb->rdeq);
}

static void wake_remote_sender(struct keel_mailbox *mb);

/*
 * After freeing a slot: is a remote sender blocked? A plain load could be
 * ordered before the slot's release store, and a sender that queued itself
 * meanwhile would retry, find no room, and sleep: a sequentially consistent
 * read-modify-write orders it (a fence would do, but TSan cannot see one).
 */
static bool remote_senders_waiting(struct keel_mailbox *mb)
{
	return __atomic_fetch_add(&mb->nremote_senders, 0, __ATOMIC_SEQ_CST);
}

/* Take the next message, refilling from blocked senders. */
static bool take(struct keel_mailbox *mb, void **msg)
{
	bool got = false;

	if (mb->take_remote_first || !mb->lcount)
		got = !remote_empty(mb) && remote_pop(mb, msg);
	if (got) {
		OWNER_INC(&mb->received_remote);
		if (remote_senders_waiting(mb))
			wake_remote_sender(mb);
	} else if (mb->lcount) {
		*msg = local_pop(mb);
		got = true;
		/* Room: the first blocked local sender's message moves in. */
		struct keel__waiter *w = keel__waitq_pop(&mb->local_senders);

		if (w) {
			local_push(mb, w->payload);
			w->state = KEEL__WAIT_IDLE;
			w->task->ext->wait_cancel = NULL;
			keel__task_complete(w->task, 0);
		}
	} else if (!mb->take_remote_first) {
		got = !remote_empty(mb) && remote_pop(mb, msg);
		if (got) {
			OWNER_INC(&mb->received_remote);
			if (remote_senders_waiting(mb))
				wake_remote_sender(mb);
		}
	}
	mb->take_remote_first = !mb->take_remote_first;
	if (got)
		OWNER_INC(&mb->received);
	return got;
}

/* A receiver is waiting: give it a message, or -EPIPE once closed. */
static void deliver(struct keel_mailbox *mb)
{
	struct keel_task *r = mb->receiver;
	void *msg;
	int res = 0;

	if (!r)
		return;
	if (take(mb, &msg))
		*mb->recv_out = msg;
	else if (LOAD(&mb->closed))
		res = -EPIPE;
	else
		return;
	mb->receiver = NULL;
	/* A select's branch: the select decides what its task learns. */
	if (r->flags & KEEL__T_SELECT) {
		r->ext->select_wake(r, mb, res);
		return;
	}
	r->ext->wait_cancel = NULL;
	keel__task_complete(r, res);
}

/* The owner loop's inbox ran the mailbox's item: remote messages came. */
static void ready_run(struct keel_loop *loop, struct keel__remote_item *it)
{
	struct keel_mailbox *mb =
	    keel_container_of(it, struct keel_mailbox, ready);

	(void)loop;
	__atomic_store_n(&mb->notified, 0, __ATOMIC_SEQ_CST);
	deliver(mb);
	keel_mailbox_release(mb); /* the reference the notifier took */
}

static void mb_set_receiver(struct keel_mailbox *mb, struct keel_task *t)
{
	mb->rx = t;
	mb->rx_gen = keel__core_of(t->loop)->slots[t->id].gen;
}

static void recv_cancelled(struct keel_task *t)
{
	struct keel_mailbox *mb = t->ext->waiter.owner;

	mb->receiver = NULL;
	t->ext->wait_cancel = NULL;
	keel__task_complete(t, keel__task_cancel_cause(t));
}

/*
 * Make `t`, the mailbox's `rx` already, the waiting receiver: a message
 * (or the close) completes it. A new task in a freed one's frame is the
 * same pointer (see `rx`), so its slot generation is taken again, but
 * only when the task's last wait was not on this mailbox: a new task's
 * ext is new (zeroed), and a task that keeps receiving here has it already.
 */
static inline int recv_wait(struct keel__core *c, struct keel_task *t,
			    struct keel__task_ext *x, struct keel_mailbox *mb,
			    void **out)
{
	if (x->waiter.owner != mb) {
		x->waiter.owner = mb;
		mb->rx_gen = c->slots[t->id].gen;
	}
	x->wait_cancel = recv_cancelled;
	mb->receiver = t;
	mb->recv_out = out;
	return keel__task_suspend_external_in(c, t);
}

static __attribute__((noinline)) int
recv_slow(struct keel_task *t, struct keel_mailbox *mb, void **out)
{
	void *msg;

	int cause = keel__task_cancel_cause(t);

	/* Level-triggered: a cancelled task takes nothing (the message stays
	 * for the next receiver). */
	if (cause)
		return keel__task_ready(t, cause);
	if (mb->receiver)
		return keel__task_ready(t, -EBUSY);
	if (__builtin_expect(mb->rx != t, 0))
		mb_set_receiver(mb, t);
	if (take(mb, &msg)) {
		*out = msg;
		return keel__task_ready(t, 0);
	}
	if (LOAD(&mb->closed))
		return keel__task_ready(t, -EPIPE);
	struct keel__task_ext *x = keel__task_ext(t);

	if (!x)
		return keel__task_ready(t, -ENOMEM);
	return recv_wait(keel__core_of(t->loop), t, x, mb, out);
}

/*
 * The common receives, as recv_slow() would do them with no call, by the
 * same task as last time with nobody else receiving: a local message first
 * in line (the remote queue empty or not its turn) with no blocked local
 * sender to move in is taken; or, both queues empty and the mailbox open,
 * the task waits (its ext was made by its first wait: the first receive of
 * a task goes the general way, as rx is not yet the task). Anything else
 * goes the general way.
 */
int keel_mb_recv(struct keel_task *t, struct keel_mailbox *mb, void **out)
{
	struct keel__core *c = keel__core_of(t->loop);
	struct keel__task_ext *x = t->ext;

	if (keel__task_cancel_cause(t) || mb->receiver || mb->rx != t)
		return recv_slow(t, mb, out);
	if (mb->lcount) {
		if ((mb->take_remote_first && !remote_empty(mb)) ||
		    mb->local_senders.list.first)
			return recv_slow(t, mb, out);
		*out = local_pop(mb);
		mb->take_remote_first = !mb->take_remote_first;
		OWNER_INC(&mb->received);
		return keel__task_ready_in(c, t, 0);
	}
	if (!x || !remote_empty(mb) || LOAD(&mb->closed))
		return recv_slow(t, mb, out);
	/* As take() of nothing: the turn passes all the same. */
	mb->take_remote_first = !mb->take_remote_first;
	return recv_wait(c, t, x, mb, out);
}

int keel_mb_try_recv(struct keel_mailbox *mb, void **out)
{
	if (take(mb, out))
		return 0;
	return LOAD(&mb->closed) ? -EPIPE : -EAGAIN;
}

/* A select's receive: the same as keel_mb_recv() without the await. */
int keel__mb_select_take(struct keel_mailbox *mb, void **out)
{
	if (mb->receiver)
		return -EBUSY;
	return keel_mb_try_recv(mb, out);
}

int keel__mb_select_arm(struct keel_task *t, struct keel_mailbox *mb,
			void **out)
{
	if (mb->receiver)
		return -EBUSY;
	mb->receiver = t;
	mb->recv_out = out;
	return 0;
}

void keel__mb_select_disarm(struct keel_mailbox *mb, struct keel_task *t)
{
	if (mb->receiver == t)
		mb->receiver = NULL;
}

/* ---- the sending side --------------------------------------------------- */

/* Tell the owner loop that remote messages wait (once per burst). */
static void notify(struct keel_mailbox *mb)
{
	/* A read-modify-write, not a load: the slot's release store before
	 * it must not pass it (the receiver clears `notified`, then looks). */
	if (__atomic_fetch_or(&mb->notified, 0, __ATOMIC_SEQ_CST) ||
	    __atomic_exchange_n(&mb->notified, 1, __ATOMIC_SEQ_CST))
		return;
	keel_mailbox_ref(mb); /* held until the owner ran the item */
	keel__core_of(mb->owner)->hooks.remote_post(mb->owner, &mb->ready);
}

/* Send from the owner loop: 0, KEEL_MB_DROPPED, -EAGAIN, -EPIPE, or 1000
 * ("full, must wait") for BLOCK. */
#define MUST_WAIT 1000

/*
 * The mailbox is full: FAIL and DROP_NEWEST end the send here; for
 * DROP_OLDEST and BLOCK (MUST_WAIT) the caller's path decides.
 */
static int full_send(struct keel_mailbox *mb, void *msg)
{
	RELAXED_ADD(&mb->full, 1);
	if (mb->policy == KEEL_MB_FAIL)
		return -EAGAIN;
	if (mb->policy == KEEL_MB_DROP_NEWEST) {
		drop(mb, msg);
		return KEEL_MB_DROPPED;
	}
	return MUST_WAIT;
}

/*
 * Whether a send on the owner loop may hand its message straight to the
 * waiting receiver `r`, as local_push() then deliver() would: not in a
 * select, not killed, and the local ring empty. (An empty local ring has no
 * blocked local sender: senders block only on a full one, and take() moves
 * one in per message taken. A remote message that came meanwhile is the
 * receiver's next: order is kept per sender, and the turn passes on.)
 */
static inline bool can_hand_over(const struct keel_mailbox *mb,
				 const struct keel_task *r)
{
	return !mb->lcount && !(r->flags & (KEEL__T_SELECT | KEEL__T_KILLED));
}

/*
 * Wake the waiting receiver `r` of the owner loop (core `c`) with `msg`.
 * Its state is known, so the wake is keel__task_enqueue() less its tests:
 * recv_wait() parked it WAITING and EXTERNAL; nothing but its mailbox
 * queues such a task (the ledger leaves an op's result to it, a kill
 * clears both bits but marks it KILLED, which can_hand_over() rules out),
 * so one xor clears both and sets QUEUED.
 */
static inline void hand_over(struct keel__core *c, struct keel_mailbox *mb,
			     struct keel_task *r, void *msg)
{
	*mb->recv_out = msg;
	mb->take_remote_first = !mb->take_remote_first;
	OWNER_INC(&mb->received);
	mb->receiver = NULL;
	r->ext->wait_cancel = NULL;
	r->res = 0;
	c->external_waits--;
	r->flags ^= KEEL__T_WAITING | KEEL__T_EXTERNAL | KEEL__T_QUEUED;
	keel__taskq_push(&c->runq[r->prio], r);
	c->runnable++;
}

static int local_send(struct keel_mailbox *mb, void *msg)
{
	struct keel_task *rx = mb->receiver;

	if (mb->lcount < mb->cap) {
		if (rx && can_hand_over(mb, rx)) {
			hand_over(keel__core_of(mb->owner), mb, rx, msg);
			return 0;
		}
		local_push(mb, msg);
		if (rx) /* not directly (a select...): deliver() decides */
			deliver(mb);
		return 0;
	}
	int r = full_send(mb, msg);

	if (r != MUST_WAIT || mb->policy != KEEL_MB_DROP_OLDEST)
		return r;
	drop(mb, local_pop(mb));
	OWNER_INC(&mb->dropped_local);
	local_push(mb, msg);
	return KEEL_MB_DROPPED;
}

static int remote_send(struct keel_mailbox *mb, void *msg)
{
	if (remote_push(mb, msg)) {
		RELAXED_ADD(&mb->sent_remote, 1);
		notify(mb);
		return 0;
	}
	int r = full_send(mb, msg);

	if (r != MUST_WAIT || mb->policy != KEEL_MB_DROP_OLDEST)
		return r;
	/* Racing other senders: take one out, retry, a few times. */
	for (int i = 0; i < 64; i++) {
		void *old;

		if (remote_pop(mb, &old))
			drop(mb, old);
		if (remote_push(mb, msg)) {
			RELAXED_ADD(&mb->sent_remote, 1);
			notify(mb);
			return KEEL_MB_DROPPED;
		}
	}
	drop(mb, msg);
	return KEEL_MB_DROPPED;
}

static int send_now(struct keel_mailbox *mb, void *msg)
{
	if (LOAD(&mb->closed))
		return -EPIPE;
	return on_owner(mb) ? local_send(mb, msg) : remote_send(mb, msg);
}

int keel_mb_try_send(struct keel_mailbox *mb, void *msg)
{
	int r = send_now(mb, msg);

	return r == MUST_WAIT ? -EAGAIN : r;
}

static void local_send_cancelled(struct keel_task *t)
{
	struct keel__waiter *w = &t->ext->waiter;
	struct keel_mailbox *mb = w->owner;

	keel__waitq_remove(&mb->local_senders, w);
	w->state = KEEL__WAIT_IDLE;
	t->ext->wait_cancel = NULL;
	keel__task_complete(t, keel__task_cancel_cause(t));
}

static void remote_send_cancelled(struct keel_task *t)
{
	struct keel__waiter *w = &t->ext->waiter;
	struct keel_mailbox *mb = w->owner;
	bool queued;

	pthread_mutex_lock(&mb->lock);
	queued = w->state == KEEL__WAIT_QUEUED;
	if (queued) {
		keel__waitq_remove(&mb->remote_senders, w);
		__atomic_sub_fetch(&mb->nremote_senders, 1, __ATOMIC_RELEASE);
		w->state = KEEL__WAIT_IDLE;
	}
	pthread_mutex_unlock(&mb->lock);
	/* Else its wake is on the way: the retry sees the cancellation. */
	if (queued) {
		t->ext->wait_cancel = NULL;
		keel__task_complete(t, keel__task_cancel_cause(t));
	}
}

/*
 * Queue `t` as a blocked remote sender; false if room appeared and the
 * message went in. If a wake was posted meanwhile, the message is in but
 * `t` must still wait for that wake (its item is in flight and may not be
 * reused until it ran): state SENT, and true.
 */
static bool remote_wait(struct keel_mailbox *mb, struct keel_task *t)
{
	struct keel__waiter *w = &t->ext->waiter;

	pthread_mutex_lock(&mb->lock);
	w->state = KEEL__WAIT_QUEUED;
	keel__waitq_push(&mb->remote_senders, w);
	__atomic_add_fetch(&mb->nremote_senders, 1, __ATOMIC_SEQ_CST);
	pthread_mutex_unlock(&mb->lock);
	/* The receiver may have made room before it saw us: retry once. */
	if (remote_push(mb, w->payload)) {
		pthread_mutex_lock(&mb->lock);
		bool still = w->state == KEEL__WAIT_QUEUED;

		if (still) {
			keel__waitq_remove(&mb->remote_senders, w);
			__atomic_sub_fetch(&mb->nremote_senders, 1,
					   __ATOMIC_RELEASE);
			w->state = KEEL__WAIT_IDLE;
		} else {
			w->state = KEEL__WAIT_SENT;
		}
		pthread_mutex_unlock(&mb->lock);
		RELAXED_ADD(&mb->sent_remote, 1);
		notify(mb);
		return !still;
	}
	return true;
}

/* On the sender's loop: the receiver made room (or closed); retry. */
static void remote_sender_woken(struct keel_loop *loop,
				struct keel__remote_item *it)
{
	struct keel__waiter *w =
	    keel_container_of(it, struct keel__waiter, wake);
	struct keel_task *t = w->task;
	struct keel_mailbox *mb = w->owner;
	int cause = keel__task_cancel_cause(t);

	(void)loop;
	if (w->state == KEEL__WAIT_SENT) {
		w->state = KEEL__WAIT_IDLE;
		t->ext->wait_cancel = NULL;
		keel__task_complete(t, 0);
		keel_mailbox_release(mb);
		return;
	}
	w->state = KEEL__WAIT_IDLE;
	if (cause || LOAD(&mb->closed)) {
		t->ext->wait_cancel = NULL;
		keel__task_complete(t, cause ? cause : -EPIPE);
		keel_mailbox_release(mb);
		return;
	}
	int r = remote_send(mb, w->payload);

	keel_mailbox_release(mb); /* this wake's reference */
	if (r == MUST_WAIT && remote_wait(mb, t))
		return; /* waiting again (or a new wake will complete it) */
	t->ext->wait_cancel = NULL;
	keel__task_complete(t, r == MUST_WAIT ? 0 : r);
}

/* The receiver took a remote message: wake the first blocked sender. */
static void wake_remote_sender(struct keel_mailbox *mb)
{
	pthread_mutex_lock(&mb->lock);
	struct keel__waiter *w = keel__waitq_pop(&mb->remote_senders);

	if (w) {
		__atomic_sub_fetch(&mb->nremote_senders, 1, __ATOMIC_RELEASE);
		w->state = KEEL__WAIT_WAKING;
	}
	pthread_mutex_unlock(&mb->lock);
	if (w) {
		struct keel_loop *loop = w->task->loop;

		keel_mailbox_ref(mb); /* held until the wake ran */
		keel__core_of(loop)->hooks.remote_post(loop, &w->wake);
	}
}

static __attribute__((noinline)) int
send_slow(struct keel_task *t, struct keel_mailbox *mb, void *msg)
{
	int cause = keel__task_cancel_cause(t);

	if (cause)
		return keel__task_ready(t, cause);
	int r = send_now(mb, msg);

	if (r != MUST_WAIT)
		return keel__task_ready(t, r);
	struct keel__task_ext *x = keel__task_ext(t);

	if (!x)
		return keel__task_ready(t, -ENOMEM);
	struct keel__waiter *w = &x->waiter;

	w->task = t;
	w->owner = mb;
	w->payload = msg;
	if (on_owner(mb)) {
		/* The waiter now names mb, so recv_wait() will not take the
		 * generation: take it here for a receiver sending to its own
		 * mailbox (which may be a new task in the receiver's frame). */
		if (mb->rx == t)
			mb_set_receiver(mb, t);
		w->state = KEEL__WAIT_QUEUED;
		keel__waitq_push(&mb->local_senders, w);
		x->wait_cancel = local_send_cancelled;
		return keel__task_suspend(t);
	}
	w->wake.run = remote_sender_woken;
	if (!remote_wait(mb, t))
		return keel__task_ready(t, 0);
	x->wait_cancel = remote_send_cancelled;
	return keel__task_suspend_external(t);
}

/*
 * The common sends from a task of the owner loop to an open mailbox, with
 * no call: room and nobody receiving, the message is queued; or a receiver
 * waits, and the message goes straight to it (can_hand_over()). Anything
 * else goes the general way.
 */
int keel_mb_send(struct keel_task *t, struct keel_mailbox *mb, void *msg)
{
	struct keel__core *c = keel__core_of(t->loop);

	if (keel__task_cancel_cause(t) ||
	    t->loop != __atomic_load_n(&mb->open_owner, __ATOMIC_RELAXED))
		return send_slow(t, mb, msg);
	/* Only now: the receiver field is the owner loop's, not to be read by
	 * a sender on another loop (a data race, seen by TSan). */
	struct keel_task *r = mb->receiver;

	if (!r) {
		if (mb->lcount >= mb->cap)
			return send_slow(t, mb, msg);
		local_push(mb, msg);
	} else {
		if (!can_hand_over(mb, r))
			return send_slow(t, mb, msg);
		hand_over(c, mb, r, msg);
	}
	return keel__task_ready_in(c, t, 0);
}

void keel_mb_close(struct keel_mailbox *mb)
{
	struct keel__waiter *w;

	if (__atomic_exchange_n(&mb->closed, 1, __ATOMIC_SEQ_CST))
		return;
	__atomic_store_n(&mb->open_owner, NULL, __ATOMIC_RELAXED);
	while ((w = keel__waitq_pop(&mb->local_senders))) {
		w->state = KEEL__WAIT_IDLE;
		w->task->ext->wait_cancel = NULL;
		keel__task_complete(w->task, -EPIPE);
	}
	/* Remote senders retry on their loops and find it closed. */
	while (LOAD(&mb->nremote_senders))
		wake_remote_sender(mb);
	deliver(mb);
}

bool keel_mb_is_closed(const struct keel_mailbox *mb)
{
	return LOAD(&mb->closed);
}

void keel__mb_reopen(struct keel_mailbox *mb)
{
	/* Closing woke every blocked sender with -EPIPE: none is left. */
	__atomic_store_n(&mb->open_owner, mb->owner, __ATOMIC_RELAXED);
	__atomic_store_n(&mb->closed, 0, __ATOMIC_SEQ_CST);
}

void keel_mb_stats(struct keel_mailbox *mb, struct keel_mb_stats *out)
{
	uint64_t renq = __atomic_load_n(&mb->renq, __ATOMIC_RELAXED);
	uint64_t rdeq = __atomic_load_n(&mb->rdeq, __ATOMIC_RELAXED);

	uint64_t received = __atomic_load_n(&mb->received, __ATOMIC_RELAXED);
	uint32_t lcount = mb->lcount;

	/* Local: received, queued or dropped queued (see `received`). */
	out->sent =
	    received - __atomic_load_n(&mb->received_remote, __ATOMIC_RELAXED) +
	    lcount + __atomic_load_n(&mb->dropped_local, __ATOMIC_RELAXED) +
	    __atomic_load_n(&mb->sent_remote, __ATOMIC_RELAXED);
	out->received = received;
	out->dropped = __atomic_load_n(&mb->dropped, __ATOMIC_RELAXED);
	out->full = __atomic_load_n(&mb->full, __ATOMIC_RELAXED);
	out->depth = lcount + (uint32_t)(renq - rdeq);
	out->capacity = mb->cap;
}

/* ---- wait-for graph ----------------------------------------------------- */

/*
 * A sender blocked on a full mailbox waits for its receiver: the task that
 * last received from it, if it is still the same task (slot generation).
 * Only on the sender's own loop: another loop's task table is its own.
 */
bool keel__mb_waits_for(struct keel_task *t, struct keel__wf *out)
{
	struct keel__task_ext *x = t->ext;
	struct keel_mailbox *mb = x->waiter.owner;
	if (x->wait_cancel == remote_send_cancelled) {
		out->what = "mailbox";
		out->obj = mb;
		out->note = "its receiver runs on another loop";
		return true;
	}
	if (x->wait_cancel != local_send_cancelled)
		return false;
	out->what = "mailbox";
	out->obj = mb;
	out->rel = "received by";
	if (mb->rx) {
		out->by[out->n] = mb->rx;
		out->by_gen[out->n++] = mb->rx_gen;
	} else {
		out->note = "no task has received from it";
	}
	return true;
}
