/* SPDX-License-Identifier: MIT */
/*
 * sync.c: the primitives of keel/sync.h: oneshot, broadcast, semaphore,
 * mutex, rwlock, condition variable, event, barrier and latch.
 *
 * All but the oneshot belong to one loop and share one mechanism, the wait
 * queue of core/wait.c (`struct keel__wq`): a FIFO of waiting tasks that a
 * satisfier completes from one side and a cancellation or a timeout from
 * the other.
 *
 * The rwlock and the condition variable are here, next to the mutex,
 * because the condition variable hands its waiters to the mutex's queue.
 *
 * The oneshot is the one cross-thread primitive: its state is a word of
 * bits changed with compare-and-swap. The sender sets SENT or CLOSED; the
 * receiver sets WAITING (before suspending) or GONE (giving up). Only the
 * side that sees the other's bit acts on it: a sender that finds WAITING
 * wakes the receiver (on its loop: directly, or through the loop's inbox);
 * a receiver that finds SENT/CLOSED while giving up takes the outcome
 * instead. The receiver's own fields (task, out, timer) are touched only
 * on its loop's thread.
 */
#include "wait.h"

#include <errno.h>
#include <keel/sync.h>
#include <limits.h>
#include <stdlib.h>

#define LOAD(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)

/* ---- oneshot ------------------------------------------------------------ */

#define OS_SENT	   0x01u /* a value is in the slot */
#define OS_CLOSED  0x02u /* the sender gave up: the receiver gets `err` */
#define OS_WAITING 0x04u /* a receiver waits: whoever finishes wakes it */
#define OS_GONE	   0x08u /* the receiver gave up: sends fail */
#define OS_TAKEN   0x10u /* the value was received */

static void oneshot_wake_run(struct keel_loop *loop,
			     struct keel__remote_item *it);

void keel__oneshot_init(struct keel_oneshot *os, struct keel_loop *loop,
			void (*done)(struct keel_oneshot *os))
{
	os->loop = loop;
	os->refs = 1;
	os->err = -EPIPE;
	os->done = done;
	keel_timer_init(&os->timer, NULL, os);
	os->wake.run = oneshot_wake_run;
}

int keel_oneshot_new(struct keel_loop *loop, keel_mb_drop_fn on_drop,
		     void *drop_arg, struct keel_oneshot **out)
{
	struct keel_oneshot *os = calloc(1, sizeof(*os));

	if (!os)
		return -ENOMEM;
	keel__oneshot_init(os, loop, NULL);
	os->on_drop = on_drop;
	os->drop_arg = drop_arg;
	*out = os;
	return 0;
}

/*
 * The reference counting and try_recv here are inline for this file's own
 * calls: an exported function of a -fPIC library is called through its
 * symbol, never inlined (it could be interposed), and an ask made three
 * such calls here.
 */
static inline void oneshot_ref(struct keel_oneshot *os)
{
	__atomic_add_fetch(&os->refs, 1, __ATOMIC_RELAXED);
}

struct keel_oneshot *keel_oneshot_ref(struct keel_oneshot *os)
{
	oneshot_ref(os);
	return os;
}

/* The last reference went. */
static __attribute__((noinline)) void oneshot_free(struct keel_oneshot *os)
{
	unsigned s = LOAD(&os->state);

	if ((s & OS_SENT) && !(s & OS_TAKEN) && os->on_drop)
		os->on_drop(os->value, os->drop_arg);
	if (os->done)
		os->done(os);
	else
		free(os);
}

static inline void oneshot_release(struct keel_oneshot *os)
{
	if (!__atomic_sub_fetch(&os->refs, 1, __ATOMIC_ACQ_REL))
		oneshot_free(os);
}

void keel_oneshot_release(struct keel_oneshot *os)
{
	oneshot_release(os);
}

/* The outcome for the receiver once SENT or CLOSED is set; takes it. */
static int oneshot_take(struct keel_oneshot *os, void **out)
{
	unsigned s = LOAD(&os->state);

	if (s & OS_SENT) {
		if (s & OS_TAKEN)
			return -EPIPE;
		*out = os->value;
		__atomic_fetch_or(&os->state, OS_TAKEN, __ATOMIC_RELAXED);
		return 0;
	}
	return os->err;
}

/* End the receiver's wait with `res` (its loop). Drops the wait's ref. */
static void oneshot_wait_end(struct keel_oneshot *os, int res)
{
	struct keel_task *t = os->receiver;

	os->receiver = NULL;
	os->out = NULL;
	if (keel_timer_armed(&os->timer))
		keel_timer_cancel(os->loop, &os->timer);
	t->ext->wait_cancel = NULL;
	keel__task_complete(t, res);
	oneshot_release(os);
}

/* The sender finished: hand the waiting receiver its outcome. */
static void oneshot_deliver(struct keel_oneshot *os)
{
	if (os->receiver)
		oneshot_wait_end(os, oneshot_take(os, os->out));
}

static void oneshot_wake_run(struct keel_loop *loop,
			     struct keel__remote_item *it)
{
	struct keel_oneshot *os =
	    keel_container_of(it, struct keel_oneshot, wake);

	(void)loop;
	/* The receiver may have given up meanwhile and taken the outcome
	 * itself: then there is nobody to deliver to. */
	oneshot_deliver(os);
	oneshot_release(os); /* the reference the waker took */
}

/* Set SENT or CLOSED unless the slot is done; wake a waiting receiver. */
static int oneshot_finish(struct keel_oneshot *os, unsigned bit)
{
	unsigned old = __atomic_load_n(&os->state, __ATOMIC_RELAXED);

	do {
		if (old & (OS_SENT | OS_CLOSED | OS_GONE))
			return -EPIPE;
	} while (!__atomic_compare_exchange_n(&os->state, &old, old | bit, true,
					      __ATOMIC_ACQ_REL,
					      __ATOMIC_RELAXED));
	if (!(old & OS_WAITING))
		return 0; /* the receiver will find it when it looks */
	if (keel__current_core == keel__core_of(os->loop)) {
		oneshot_deliver(os);
	} else {
		oneshot_ref(os); /* held until the wake ran */
		keel__core_of(os->loop)->hooks.remote_post(os->loop, &os->wake);
	}
	return 0;
}

int keel_oneshot_send(struct keel_oneshot *os, void *value)
{
	/* Look first, so that a second send cannot overwrite the value the
	 * receiver may be reading. */
	if (LOAD(&os->state) & (OS_SENT | OS_CLOSED | OS_GONE))
		return -EPIPE;
	os->value = value;
	return oneshot_finish(os, OS_SENT);
}

void keel_oneshot_fail(struct keel_oneshot *os, int err)
{
	if (LOAD(&os->state) & (OS_SENT | OS_CLOSED | OS_GONE))
		return;
	os->err = err < 0 ? err : -EPIPE;
	oneshot_finish(os, OS_CLOSED);
}

void keel_oneshot_close(struct keel_oneshot *os)
{
	keel_oneshot_fail(os, -EPIPE);
}

/*
 * The receiver gives up with `res` (its loop). If the sender finished
 * first, the receiver gets that outcome instead. Returns the result.
 */
static int oneshot_give_up(struct keel_oneshot *os, void **out, int res)
{
	unsigned old = __atomic_load_n(&os->state, __ATOMIC_RELAXED);

	do {
		if (old & (OS_SENT | OS_CLOSED))
			return oneshot_take(os, out);
	} while (!__atomic_compare_exchange_n(
	    &os->state, &old, (old & ~OS_WAITING) | OS_GONE, true,
	    __ATOMIC_ACQ_REL, __ATOMIC_RELAXED));
	return res;
}

static void oneshot_recv_cancelled(struct keel_task *t)
{
	struct keel_oneshot *os = t->ext->waiter.owner;

	oneshot_wait_end(
	    os, oneshot_give_up(os, os->out, keel__task_cancel_cause(t)));
}

static void oneshot_timed_out(struct keel_loop *loop, struct keel_timer *timer,
			      void *arg)
{
	struct keel_oneshot *os = arg;

	(void)loop;
	if (os->receiver)
		oneshot_wait_end(os, oneshot_give_up(os, os->out, -ETIMEDOUT));
}

static inline int oneshot_try_recv(struct keel_oneshot *os, void **out)
{
	unsigned s = LOAD(&os->state);

	if (s & (OS_SENT | OS_CLOSED))
		return oneshot_take(os, out);
	return s & OS_GONE ? -EPIPE : -EAGAIN;
}

int keel_oneshot_try_recv(struct keel_oneshot *os, void **out)
{
	return oneshot_try_recv(os, out);
}

bool keel_oneshot_is_closed(const struct keel_oneshot *os)
{
	return LOAD(&os->state) & (OS_SENT | OS_CLOSED | OS_GONE);
}

int keel_oneshot_recv_until(struct keel_task *t, struct keel_oneshot *os,
			    void **out, uint64_t deadline_ns)
{
	if (t->loop != os->loop)
		return keel__task_ready(t, -EXDEV);
	if (os->receiver)
		return keel__task_ready(t, -EBUSY);
	int cause = keel__task_cancel_cause(t);

	if (cause) {
		/* Level-triggered: the cause, whatever is in the slot (a value
		 * left there goes to on_drop); the receiver is retired. */
		__atomic_fetch_or(&os->state, OS_GONE, __ATOMIC_ACQ_REL);
		return keel__task_ready(t, cause);
	}
	int r = oneshot_try_recv(os, out);

	if (r != -EAGAIN)
		return keel__task_ready(t, r);
	if (deadline_ns != UINT64_MAX && deadline_ns <= keel__clock_now())
		return keel__task_ready(t,
					oneshot_give_up(os, out, -ETIMEDOUT));
	struct keel__task_ext *x = keel__task_ext(t);

	if (!x)
		return keel__task_ready(t, -ENOMEM);
	if (deadline_ns != UINT64_MAX) {
		os->timer.fn = oneshot_timed_out;
		if (keel_timer_arm(t->loop, &os->timer, deadline_ns))
			return keel__task_ready(t, -ENOMEM);
	}
	os->receiver = t;
	os->out = out;
	/* Publish WAITING; if the sender finished meanwhile, take that. */
	unsigned old = __atomic_load_n(&os->state, __ATOMIC_RELAXED);

	do {
		if (old & (OS_SENT | OS_CLOSED | OS_GONE)) {
			os->receiver = NULL;
			os->out = NULL;
			keel_timer_cancel(t->loop, &os->timer);
			return keel__task_ready(t, oneshot_try_recv(os, out));
		}
	} while (!__atomic_compare_exchange_n(
	    &os->state, &old, old | OS_WAITING, true, __ATOMIC_ACQ_REL,
	    __ATOMIC_RELAXED));
	oneshot_ref(os); /* the wait's: dropped by oneshot_wait_end */
	x->waiter.owner = os;
	x->wait_cancel = oneshot_recv_cancelled;
	/* The sender may be another thread: the loop must not give up. */
	return keel__task_suspend_external(t);
}

int keel_oneshot_recv(struct keel_task *t, struct keel_oneshot *os, void **out)
{
	return keel_oneshot_recv_until(t, os, out, UINT64_MAX);
}

/* ---- broadcast ---------------------------------------------------------- */

struct keel_broadcast {
	struct keel__wq wq; /* caught-up receivers; waiter payload: the rx */
	void **ring;
	uint32_t cap;
	uint32_t receivers;
	uint32_t refs; /* the sending side's + one per receiver */
	bool closed;
	uint64_t next_seq; /* sequence number of the next message */
	keel_mb_drop_fn on_drop;
	void *drop_arg;
};

struct keel_broadcast_rx {
	struct keel_broadcast *bc;
	uint64_t next;	 /* sequence number of the next message to read */
	uint64_t lagged; /* skipped by the last -EOVERFLOW */
	void **out;	 /* while a task awaits */
	bool waiting;
};

static void broadcast_left(struct keel__wq *wq, struct keel__waiter *w)
{
	struct keel_broadcast_rx *rx = w->payload;

	(void)wq;
	rx->waiting = false;
	rx->out = NULL;
}

int keel_broadcast_new(struct keel_loop *loop, uint32_t capacity,
		       keel_mb_drop_fn on_drop, void *drop_arg,
		       struct keel_broadcast **out)
{
	struct keel_broadcast *bc;

	if (!capacity)
		return -EINVAL;
	bc = calloc(1, sizeof(*bc));
	if (!bc)
		return -ENOMEM;
	bc->ring = calloc(capacity, sizeof(*bc->ring));
	if (!bc->ring) {
		free(bc);
		return -ENOMEM;
	}
	keel__wq_init(&bc->wq, loop, broadcast_left);
	bc->cap = capacity;
	bc->refs = 1;
	bc->on_drop = on_drop;
	bc->drop_arg = drop_arg;
	*out = bc;
	return 0;
}

static uint64_t broadcast_oldest(const struct keel_broadcast *bc)
{
	return bc->next_seq > bc->cap ? bc->next_seq - bc->cap : 0;
}

static void broadcast_release(struct keel_broadcast *bc)
{
	if (--bc->refs)
		return;
	for (uint64_t seq = broadcast_oldest(bc); seq < bc->next_seq; seq++)
		if (bc->on_drop)
			bc->on_drop(bc->ring[seq % bc->cap], bc->drop_arg);
	free(bc->ring);
	free(bc);
}

void keel_broadcast_close(struct keel_broadcast *bc)
{
	struct keel__waiter *w;

	bc->closed = true;
	/* Waiters are caught up: nothing is left for them to drain. Each
	 * receiver is free again (its next receive, its unsubscribe), as
	 * after a send. */
	while ((w = keel__waitq_pop(&bc->wq.q))) {
		broadcast_left(&bc->wq, w);
		keel__wq_end(&bc->wq, w, -EPIPE);
	}
}

void keel_broadcast_free(struct keel_broadcast *bc)
{
	keel_broadcast_close(bc);
	broadcast_release(bc);
}

int keel_broadcast_subscribe(struct keel_broadcast *bc,
			     struct keel_broadcast_rx **out)
{
	struct keel_broadcast_rx *rx;

	if (bc->closed)
		return -EPIPE;
	rx = calloc(1, sizeof(*rx));
	if (!rx)
		return -ENOMEM;
	rx->bc = bc;
	rx->next = bc->next_seq;
	bc->refs++;
	bc->receivers++;
	*out = rx;
	return 0;
}

int keel_broadcast_unsubscribe(struct keel_broadcast_rx *rx)
{
	if (rx->waiting)
		return -EBUSY;
	rx->bc->receivers--;
	broadcast_release(rx->bc);
	free(rx);
	return 0;
}

int keel_broadcast_send(struct keel_broadcast *bc, void *msg)
{
	struct keel__waiter *w;

	if (!keel__wq_on_loop(bc->wq.loop))
		return -EXDEV;
	if (bc->closed)
		return -EPIPE;
	if (!bc->receivers)
		return 0;
	uint64_t seq = bc->next_seq++;
	uint32_t slot = (uint32_t)(seq % bc->cap);

	/* The message `cap` older leaves the ring now. */
	if (seq >= bc->cap && bc->on_drop)
		bc->on_drop(bc->ring[slot], bc->drop_arg);
	bc->ring[slot] = msg;
	/* Every waiter was caught up: this message is its next one. */
	while ((w = keel__waitq_pop(&bc->wq.q))) {
		struct keel_broadcast_rx *rx = w->payload;

		*rx->out = msg;
		rx->next = seq + 1;
		rx->waiting = false;
		rx->out = NULL;
		keel__wq_end(&bc->wq, w, 0);
	}
	return (int)(bc->receivers > INT_MAX ? INT_MAX : bc->receivers);
}

int keel_broadcast_try_recv(struct keel_broadcast_rx *rx, void **out)
{
	struct keel_broadcast *bc = rx->bc;
	uint64_t oldest = broadcast_oldest(bc);

	if (rx->next < oldest) {
		rx->lagged = oldest - rx->next;
		rx->next = oldest;
		return -EOVERFLOW;
	}
	if (rx->next < bc->next_seq) {
		*out = bc->ring[rx->next % bc->cap];
		rx->next++;
		return 0;
	}
	return bc->closed ? -EPIPE : -EAGAIN;
}

int keel_broadcast_recv(struct keel_task *t, struct keel_broadcast_rx *rx,
			void **out)
{
	struct keel_broadcast *bc = rx->bc;

	if (t->loop != bc->wq.loop)
		return keel__task_ready(t, -EXDEV);
	if (rx->waiting)
		return keel__task_ready(t, -EBUSY);
	int cause = keel__task_cancel_cause(t);

	if (cause)
		return keel__task_ready(t, cause);
	int r = keel_broadcast_try_recv(rx, out);

	if (r != -EAGAIN)
		return keel__task_ready(t, r);
	if (!keel__wq_prepare(t))
		return keel__task_ready(t, -ENOMEM);
	rx->out = out;
	rx->waiting = true;
	return keel__wq_begin(t, &bc->wq, 0, rx);
}

uint64_t keel_broadcast_lagged(const struct keel_broadcast_rx *rx)
{
	return rx->lagged;
}

/* ---- semaphore ---------------------------------------------------------- */

struct keel_semaphore {
	struct keel__wq wq; /* waiter result: the permits it asks for */
	uint64_t permits;
	bool closed;
};

/* Serve waiters in order while the head's request fits. */
static void semaphore_grant(struct keel__wq *wq, struct keel__waiter *left)
{
	struct keel_semaphore *s =
	    keel_container_of(wq, struct keel_semaphore, wq);
	struct keel__waiter *w;

	(void)left;
	while ((w = keel__waitq_first(&wq->q)) &&
	       s->permits >= (uint64_t)w->result) {
		s->permits -= (uint64_t)w->result;
		keel__waitq_remove(&wq->q, w);
		keel__wq_end(wq, w, 0);
	}
}

/* Who holds permits is not recorded (they are counted): no edge. */
static void semaphore_waits_for(struct keel__wq *wq, struct keel__waiter *w,
				struct keel__wf *out)
{
	(void)w;
	out->what = "semaphore";
	out->obj = keel_container_of(wq, struct keel_semaphore, wq);
	out->note = "its permit holders are not tracked";
}

int keel_semaphore_new(struct keel_loop *loop, uint32_t permits,
		       struct keel_semaphore **out)
{
	struct keel_semaphore *s = calloc(1, sizeof(*s));

	if (!s)
		return -ENOMEM;
	/* A waiter that leaves may have been the head holding others back. */
	keel__wq_init(&s->wq, loop, semaphore_grant);
	s->wq.waits_for = semaphore_waits_for;
	s->permits = permits;
	*out = s;
	return 0;
}

void keel_semaphore_close(struct keel_semaphore *s)
{
	s->closed = true;
	keel__wq_wake_all(&s->wq, -EPIPE);
}

void keel_semaphore_free(struct keel_semaphore *s)
{
	keel_semaphore_close(s);
	free(s);
}

int keel_semaphore_acquire(struct keel_task *t, struct keel_semaphore *s,
			   uint32_t n)
{
	if (t->loop != s->wq.loop)
		return keel__task_ready(t, -EXDEV);
	if (n > INT32_MAX)
		return keel__task_ready(t, -EINVAL);
	int cause = keel__task_cancel_cause(t);

	if (cause)
		return keel__task_ready(t, cause);
	if (s->closed)
		return keel__task_ready(t, -EPIPE);
	/* FIFO: with others waiting, even a fitting request queues. */
	if (!s->wq.q.len && s->permits >= n) {
		s->permits -= n;
		return keel__task_ready(t, 0);
	}
	if (!keel__wq_prepare(t))
		return keel__task_ready(t, -ENOMEM);
	return keel__wq_begin(t, &s->wq, (int)n, NULL);
}

int keel_semaphore_try_acquire(struct keel_semaphore *s, uint32_t n)
{
	if (s->closed)
		return -EPIPE;
	if (s->wq.q.len || s->permits < n)
		return -EAGAIN;
	s->permits -= n;
	return 0;
}

int keel_semaphore_release(struct keel_semaphore *s, uint32_t n)
{
	if (!keel__wq_on_loop(s->wq.loop))
		return -EXDEV;
	s->permits += n;
	semaphore_grant(&s->wq, NULL);
	return 0;
}

uint64_t keel_semaphore_available(const struct keel_semaphore *s)
{
	return s->permits;
}

/* ---- mutex -------------------------------------------------------------- */

struct keel_mutex {
	struct keel__wq wq; /* timed: waiter payload is its deadline */
	struct keel_task *holder;
};

static void mutex_waits_for(struct keel__wq *wq, struct keel__waiter *w,
			    struct keel__wf *out)
{
	struct keel_mutex *m = keel_container_of(wq, struct keel_mutex, wq);

	(void)w;
	out->what = "mutex";
	out->obj = m;
	out->rel = "held by";
	if (m->holder)
		out->by[out->n++] = m->holder;
}

int keel_mutex_new(struct keel_loop *loop, struct keel_mutex **out)
{
	struct keel_mutex *m = calloc(1, sizeof(*m));

	if (!m)
		return -ENOMEM;
	keel__wq_init(&m->wq, loop, NULL);
	m->wq.timed = true;
	m->wq.waits_for = mutex_waits_for;
	*out = m;
	return 0;
}

void keel_mutex_free(struct keel_mutex *m)
{
	keel__wq_wake_all(&m->wq, -EPIPE);
	free(m);
}

int keel_mutex_lock(struct keel_task *t, struct keel_mutex *m,
		    uint64_t timeout_ns)
{
	if (t->loop != m->wq.loop)
		return keel__task_ready(t, -EXDEV);
	int cause = keel__task_cancel_cause(t);

	if (cause)
		return keel__task_ready(t, cause);
	if (m->holder == t)
		return keel__task_ready(t, -EDEADLK);
	if (!m->holder) {
		m->holder = t;
		return keel__task_ready(t, 0);
	}
	if (!timeout_ns)
		return keel__task_ready(t, -ETIMEDOUT);
	if (!keel__wq_prepare(t))
		return keel__task_ready(t, -ENOMEM);
	return keel__wq_begin_until(t, &m->wq, 0,
				    keel__wq_deadline_after(timeout_ns));
}

int keel_mutex_try_lock(struct keel_task *t, struct keel_mutex *m)
{
	if (m->holder)
		return -EBUSY;
	m->holder = t;
	return 0;
}

/*
 * Hand the free mutex to the first waiter that can take it. A waiter's
 * `result` is what its wait returns once it holds the mutex: 0 for a
 * locker, a condition variable's outcome for a waiter it handed over. A
 * killed task (only such a handed-over waiter stays queued once killed)
 * finishes dying instead of taking it.
 */
static void mutex_hand_over(struct keel_mutex *m)
{
	struct keel__waiter *w;

	m->holder = NULL;
	while ((w = keel__waitq_pop(&m->wq.q))) {
		if (w->task->flags & KEEL__T_KILLED) {
			keel__wq_end(&m->wq, w, -ECANCELED);
			continue;
		}
		m->holder = w->task;
		keel__wq_end(&m->wq, w, w->result);
		return;
	}
}

int keel_mutex_unlock(struct keel_task *t, struct keel_mutex *m)
{
	if (!keel__wq_on_loop(m->wq.loop))
		return -EXDEV;
	if (m->holder != t)
		return -EPERM;
	/* Hand it over: the first waiter holds it before it even runs. */
	mutex_hand_over(m);
	return 0;
}

struct keel_task *keel_mutex_holder(const struct keel_mutex *m)
{
	return m->holder;
}

/* ---- rwlock ------------------------------------------------------------- */

#define RW_READ	 0 /* a waiter's request */
#define RW_WRITE 1

/* Read holders recorded by task, for the wait-for graph. */
#define RW_TRACKED 4

struct keel_rwlock {
	struct keel__wq wq; /* timed; waiter result: RW_READ or RW_WRITE */
	struct keel_task *writer;
	uint32_t readers; /* read holds out */
	/*
	 * The first RW_TRACKED read holders. A read unlock names no task, so
	 * it is matched with the task running it; when that fails (more
	 * holders than slots, an unlock from outside the holder's step) the
	 * record is `lost` until the readers are all gone: then no edge is
	 * drawn, rather than a stale one.
	 */
	struct keel_task *rd[RW_TRACKED];
	uint8_t nrd;
	bool rd_lost;
};

static void rwlock_track(struct keel_rwlock *rw, struct keel_task *t)
{
	if (t && rw->nrd < RW_TRACKED)
		rw->rd[rw->nrd++] = t;
	else
		rw->rd_lost = true;
}

static void rwlock_untrack(struct keel_rwlock *rw)
{
	struct keel_task *t =
	    keel__current_core ? keel__current_core->current : NULL;

	if (!rw->readers) {
		rw->nrd = 0;
		rw->rd_lost = false;
		return;
	}
	for (unsigned i = 0; i < rw->nrd; i++)
		if (rw->rd[i] == t) {
			rw->rd[i] = rw->rd[--rw->nrd];
			return;
		}
	rw->rd_lost = true;
}

/*
 * A waiter waits for the holders (the writer, or the readers), and also
 * for the nearest writer queued ahead of it: a writer goes first, so a
 * reader that reads again while a writer queues waits for that writer.
 */
static void rwlock_waits_for(struct keel__wq *wq, struct keel__waiter *w,
			     struct keel__wf *out)
{
	struct keel_rwlock *rw = keel_container_of(wq, struct keel_rwlock, wq);
	struct keel__waiter *ahead = NULL;

	out->what = "rwlock";
	out->obj = rw;
	out->rel = "held by";
	if (rw->writer) {
		out->by[out->n++] = rw->writer;
	} else if (rw->readers && rw->rd_lost) {
		out->note = "its readers are not all tracked";
	} else {
		/* Not itself: a reader reading again waits for the writer
		 * ahead, not for its own hold. */
		for (unsigned i = 0; i < rw->nrd; i++)
			if (rw->rd[i] != w->task)
				out->by[out->n++] = rw->rd[i];
	}
	struct keel__link *it;

	keel__list_for_each (it, &wq->q.list) {
		struct keel__waiter *x =
		    keel__list_entry(it, struct keel__waiter, link);

		if (x == w)
			break;
		if (x->result == RW_WRITE)
			ahead = x;
	}
	if (ahead && out->n < KEEL__WF_MAX) {
		out->by[out->n++] = ahead->task;
		out->last_ahead = true;
	}
}

/*
 * Admit waiters from the head while they fit: a writer when the lock is
 * free, then nothing more; readers while no writer holds it, up to the
 * first queued writer. Also the queue's `left` hook: a writer leaving the
 * head may let the readers behind it in.
 */
static void rwlock_admit(struct keel__wq *wq, struct keel__waiter *left)
{
	struct keel_rwlock *rw = keel_container_of(wq, struct keel_rwlock, wq);
	struct keel__waiter *w;

	(void)left;
	while (!rw->writer && (w = keel__waitq_first(&wq->q))) {
		if (w->result == RW_WRITE) {
			if (rw->readers)
				return;
			rw->writer = w->task;
		} else {
			rw->readers++;
			rwlock_track(rw, w->task);
		}
		keel__waitq_remove(&wq->q, w);
		keel__wq_end(wq, w, 0);
	}
}

int keel_rwlock_new(struct keel_loop *loop, struct keel_rwlock **out)
{
	struct keel_rwlock *rw = calloc(1, sizeof(*rw));

	if (!rw)
		return -ENOMEM;
	keel__wq_init(&rw->wq, loop, rwlock_admit);
	rw->wq.timed = true;
	rw->wq.waits_for = rwlock_waits_for;
	*out = rw;
	return 0;
}

void keel_rwlock_free(struct keel_rwlock *rw)
{
	rw->wq.left = NULL;
	keel__wq_wake_all(&rw->wq, -EPIPE);
	free(rw);
}

/* The common await: `request` is RW_READ or RW_WRITE. */
static int rwlock_lock(struct keel_task *t, struct keel_rwlock *rw, int request,
		       uint64_t deadline_ns)
{
	if (t->loop != rw->wq.loop)
		return keel__task_ready(t, -EXDEV);
	int cause = keel__task_cancel_cause(t);

	if (cause)
		return keel__task_ready(t, cause);
	if (rw->writer == t)
		return keel__task_ready(t, -EDEADLK);
	/* Writer preference: anyone queued (a writer, or readers behind
	 * one) goes first. */
	if (!rw->writer && !rw->wq.q.len) {
		if (request == RW_READ) {
			rw->readers++;
			rwlock_track(rw, t);
			return keel__task_ready(t, 0);
		}
		if (!rw->readers) {
			rw->writer = t;
			return keel__task_ready(t, 0);
		}
	}
	if (deadline_ns != UINT64_MAX && deadline_ns <= keel__clock_now())
		return keel__task_ready(t, -ETIMEDOUT);
	if (!keel__wq_prepare(t))
		return keel__task_ready(t, -ENOMEM);
	return keel__wq_begin_until(t, &rw->wq, request, deadline_ns);
}

int keel_rwlock_read_lock(struct keel_task *t, struct keel_rwlock *rw,
			  uint64_t deadline_ns)
{
	return rwlock_lock(t, rw, RW_READ, deadline_ns);
}

int keel_rwlock_write_lock(struct keel_task *t, struct keel_rwlock *rw,
			   uint64_t deadline_ns)
{
	return rwlock_lock(t, rw, RW_WRITE, deadline_ns);
}

int keel_rwlock_try_read_lock(struct keel_rwlock *rw)
{
	if (rw->writer || rw->wq.q.len)
		return -EBUSY;
	rw->readers++;
	rwlock_track(rw,
		     keel__current_core ? keel__current_core->current : NULL);
	return 0;
}

int keel_rwlock_try_write_lock(struct keel_task *t, struct keel_rwlock *rw)
{
	if (rw->writer || rw->readers || rw->wq.q.len)
		return -EBUSY;
	rw->writer = t;
	return 0;
}

int keel_rwlock_read_unlock(struct keel_rwlock *rw)
{
	if (!keel__wq_on_loop(rw->wq.loop))
		return -EXDEV;
	if (!rw->readers)
		return -EPERM;
	rw->readers--;
	rwlock_untrack(rw);
	if (!rw->readers)
		rwlock_admit(&rw->wq, NULL);
	return 0;
}

int keel_rwlock_write_unlock(struct keel_task *t, struct keel_rwlock *rw)
{
	if (!keel__wq_on_loop(rw->wq.loop))
		return -EXDEV;
	if (rw->writer != t)
		return -EPERM;
	rw->writer = NULL;
	rwlock_admit(&rw->wq, NULL);
	return 0;
}

struct keel_task *keel_rwlock_writer(const struct keel_rwlock *rw)
{
	return rw->writer;
}

uint32_t keel_rwlock_readers(const struct keel_rwlock *rw)
{
	return rw->readers;
}

/* ---- condition variable ------------------------------------------------- */

struct keel_cond {
	struct keel__wq wq;	  /* timed; the waiters for a signal */
	struct keel_mutex *mutex; /* theirs, while any waits */
};

/*
 * A waiter handed over to the mutex's queue cannot be cancelled (it must
 * hold the mutex when its wait returns). A kill still ends it: the mutex
 * then skips it (mutex_hand_over), and the kill finishes with that wake.
 */
static void cond_relock_cancelled(struct keel_task *t)
{
	(void)t;
}

/*
 * Move waiter `w`, already off the condition variable's queue, to its
 * mutex: it holds it at once if it is free, else it queues for it; its
 * wait returns `res` once it holds it.
 */
static void cond_hand_to_mutex(struct keel_cond *cv, struct keel__waiter *w,
			       int res)
{
	struct keel_mutex *m = cv->mutex;

	keel__wq_untime(&cv->wq, w);
	if (!cv->wq.q.len)
		cv->mutex = NULL;
	if (!m->holder) {
		m->holder = w->task;
		keel__wq_end(&cv->wq, w, res);
		return;
	}
	w->owner = &m->wq;
	w->result = res;
	keel__waitq_push(&m->wq.q, w);
	w->task->ext->wait_cancel = cond_relock_cancelled;
}

/* A waiter gave up (timeout, cancellation): it takes the mutex back. */
static void cond_leave(struct keel__wq *wq, struct keel__waiter *w, int res)
{
	struct keel_cond *cv = keel_container_of(wq, struct keel_cond, wq);

	keel__waitq_remove(&wq->q, w);
	cond_hand_to_mutex(cv, w, res);
}

/* Any task may signal: no edge. (Handed over to the mutex, a waiter
 * waits for the mutex: the mutex's queue answers.) */
static void cond_waits_for(struct keel__wq *wq, struct keel__waiter *w,
			   struct keel__wf *out)
{
	(void)w;
	out->what = "condition variable";
	out->obj = keel_container_of(wq, struct keel_cond, wq);
	out->note = "any task may signal it";
}

int keel_cond_new(struct keel_loop *loop, struct keel_cond **out)
{
	struct keel_cond *cv = calloc(1, sizeof(*cv));

	if (!cv)
		return -ENOMEM;
	keel__wq_init(&cv->wq, loop, NULL);
	cv->wq.leave = cond_leave;
	cv->wq.waits_for = cond_waits_for;
	cv->wq.timed = true;
	*out = cv;
	return 0;
}

/* Wake up to `n` waiters with `res`; returns how many. */
static int cond_wake(struct keel_cond *cv, int n, int res)
{
	struct keel__waiter *w;
	int woken = 0;

	while (woken < n && (w = keel__waitq_pop(&cv->wq.q))) {
		cond_hand_to_mutex(cv, w, res);
		woken++;
	}
	return woken;
}

void keel_cond_free(struct keel_cond *cv)
{
	cond_wake(cv, INT_MAX, -EPIPE);
	free(cv);
}

int keel_cond_signal(struct keel_cond *cv)
{
	if (!keel__wq_on_loop(cv->wq.loop))
		return -EXDEV;
	return cond_wake(cv, 1, 0);
}

int keel_cond_broadcast(struct keel_cond *cv)
{
	if (!keel__wq_on_loop(cv->wq.loop))
		return -EXDEV;
	return cond_wake(cv, INT_MAX, 0);
}

int keel_cond_wait(struct keel_task *t, struct keel_cond *cv,
		   struct keel_mutex *m, uint64_t deadline_ns)
{
	if (t->loop != cv->wq.loop || t->loop != m->wq.loop)
		return keel__task_ready(t, -EXDEV);
	if (m->holder != t)
		return keel__task_ready(t, -EPERM);
	if (cv->mutex && cv->mutex != m)
		return keel__task_ready(t, -EINVAL);
	int cause = keel__task_cancel_cause(t);

	if (cause)
		return keel__task_ready(t, cause);
	if (deadline_ns != UINT64_MAX && deadline_ns <= keel__clock_now())
		return keel__task_ready(t, -ETIMEDOUT);
	if (!keel__wq_prepare(t))
		return keel__task_ready(t, -ENOMEM);
	/* Queue first, then unlock: both before anyone else runs, so no
	 * signal can fall between them. */
	int r = keel__wq_begin_until(t, &cv->wq, 0, deadline_ns);

	if (t->ext->waiter.owner != &cv->wq)
		return r; /* -ENOMEM: still holding the mutex */
	cv->mutex = m;
	mutex_hand_over(m);
	return r;
}

/* ---- event -------------------------------------------------------------- */

struct keel_event {
	struct keel__wq wq;
	bool set;
};

int keel_event_new(struct keel_loop *loop, struct keel_event **out)
{
	struct keel_event *ev = calloc(1, sizeof(*ev));

	if (!ev)
		return -ENOMEM;
	keel__wq_init(&ev->wq, loop, NULL);
	*out = ev;
	return 0;
}

void keel_event_free(struct keel_event *ev)
{
	keel__wq_wake_all(&ev->wq, -EPIPE);
	free(ev);
}

int keel_event_set(struct keel_event *ev)
{
	if (!keel__wq_on_loop(ev->wq.loop))
		return -EXDEV;
	ev->set = true;
	keel__wq_wake_all(&ev->wq, 0);
	return 0;
}

int keel_event_clear(struct keel_event *ev)
{
	if (!keel__wq_on_loop(ev->wq.loop))
		return -EXDEV;
	ev->set = false;
	return 0;
}

bool keel_event_is_set(const struct keel_event *ev)
{
	return ev->set;
}

int keel_event_wait(struct keel_task *t, struct keel_event *ev)
{
	if (t->loop != ev->wq.loop)
		return keel__task_ready(t, -EXDEV);
	int cause = keel__task_cancel_cause(t);

	if (cause)
		return keel__task_ready(t, cause);
	if (ev->set)
		return keel__task_ready(t, 0);
	if (!keel__wq_prepare(t))
		return keel__task_ready(t, -ENOMEM);
	return keel__wq_begin(t, &ev->wq, 0, NULL);
}

/* ---- barrier ------------------------------------------------------------ */

struct keel_barrier {
	struct keel__wq wq;
	uint32_t parties;
	uint32_t arrived; /* in the current generation */
	uint64_t generation;
};

/* A waiter cancelled before the release takes its arrival back. */
static void barrier_left(struct keel__wq *wq, struct keel__waiter *w)
{
	struct keel_barrier *b = keel_container_of(wq, struct keel_barrier, wq);

	(void)w;
	b->arrived--;
}

int keel_barrier_new(struct keel_loop *loop, uint32_t parties,
		     struct keel_barrier **out)
{
	struct keel_barrier *b;

	if (!parties)
		return -EINVAL;
	b = calloc(1, sizeof(*b));
	if (!b)
		return -ENOMEM;
	keel__wq_init(&b->wq, loop, barrier_left);
	b->parties = parties;
	*out = b;
	return 0;
}

void keel_barrier_free(struct keel_barrier *b)
{
	/* Not an early leave: no arrival to take back. */
	b->wq.left = NULL;
	keel__wq_wake_all(&b->wq, -EPIPE);
	free(b);
}

int keel_barrier_wait(struct keel_task *t, struct keel_barrier *b)
{
	if (t->loop != b->wq.loop)
		return keel__task_ready(t, -EXDEV);
	int cause = keel__task_cancel_cause(t);

	if (cause)
		return keel__task_ready(t, cause);
	if (b->arrived + 1 < b->parties) {
		if (!keel__wq_prepare(t))
			return keel__task_ready(t, -ENOMEM);
		b->arrived++;
		return keel__wq_begin(t, &b->wq, 0, NULL);
	}
	/* The last arrival: release this generation, start the next. The
	 * released waiters are off the queue before anyone can arrive. */
	b->arrived = 0;
	b->generation++;
	keel__wq_wake_all(&b->wq, 0);
	return keel__task_ready(t, KEEL_BARRIER_LEADER);
}

uint64_t keel_barrier_generation(const struct keel_barrier *b)
{
	return b->generation;
}

/* ---- countdown latch ---------------------------------------------------- */

struct keel_latch {
	struct keel__wq wq;
	uint32_t count;
};

int keel_latch_new(struct keel_loop *loop, uint32_t count,
		   struct keel_latch **out)
{
	struct keel_latch *l = calloc(1, sizeof(*l));

	if (!l)
		return -ENOMEM;
	keel__wq_init(&l->wq, loop, NULL);
	l->count = count;
	*out = l;
	return 0;
}

void keel_latch_free(struct keel_latch *l)
{
	keel__wq_wake_all(&l->wq, -EPIPE);
	free(l);
}

int64_t keel_latch_count_down(struct keel_latch *l, uint32_t n)
{
	if (!keel__wq_on_loop(l->wq.loop))
		return -EXDEV;
	if (!l->count)
		return 0;
	l->count -= n < l->count ? n : l->count;
	if (!l->count)
		keel__wq_wake_all(&l->wq, 0);
	return l->count;
}

int keel_latch_wait(struct keel_task *t, struct keel_latch *l)
{
	if (t->loop != l->wq.loop)
		return keel__task_ready(t, -EXDEV);
	int cause = keel__task_cancel_cause(t);

	if (cause)
		return keel__task_ready(t, cause);
	if (!l->count)
		return keel__task_ready(t, 0);
	if (!keel__wq_prepare(t))
		return keel__task_ready(t, -ENOMEM);
	return keel__wq_begin(t, &l->wq, 0, NULL);
}

uint32_t keel_latch_count(const struct keel_latch *l)
{
	return l->count;
}

/* ---- wait-for graph ----------------------------------------------------- */

bool keel__sync_waits_for(struct keel_task *t, struct keel__wf *out)
{
	struct keel__task_ext *x = t->ext;
	struct keel__wq *wq;

	if (x->wait_cancel != keel__wq_cancelled &&
	    x->wait_cancel != cond_relock_cancelled)
		return false;
	wq = x->waiter.owner;
	out->what = "wait queue";
	out->obj = wq;
	if (wq->waits_for)
		wq->waits_for(wq, &x->waiter, out);
	else
		out->note = "its releaser is not tracked";
	return true;
}
