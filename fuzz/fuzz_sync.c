/* SPDX-License-Identifier: MIT */
/*
 * fuzz_sync.c: the primitives of keel/sync.h (semaphore, mutex, event,
 * barrier, latch, broadcast, oneshot) driven by a program the input spells,
 * on one loop with up to MAX_WORKERS tasks. Each byte group is a command:
 * make or free a primitive (sizes from the input); have a worker acquire,
 * try, release, lock (no wait, a timeout that passes at the next turn, no
 * limit), unlock, wait for the event, barrier or latch, receive from its
 * broadcast subscription or the oneshot (deadline none or past), or panic;
 * from the driver: release permits, close the semaphore, set or clear the
 * event, count the latch down, send on, close, subscribe a worker to or
 * unsubscribe it from the broadcast, send, fail or close the oneshot;
 * cancel a worker's token, give it an expired deadline, cancel or kill the
 * task, give it a fresh token; run loop turns.
 *
 * After each call it checks the promises of sync.h: documented results
 * only; permits counted exactly, waiters served in order without barging;
 * one mutex holder, holder() agreeing; a wait that returns 0 had its
 * condition met (the event set, the barrier's generation released, the
 * latch at zero); one barrier leader per generation; every broadcast
 * receiver sees every message in order or is told it lagged by exactly how
 * many; each broadcast message and the oneshot's value go to on_drop at
 * most once and never after being received. After quiet turns no waiter
 * may be left whose condition holds (a lost wake-up), and at the end every
 * waiter is woken by the frees and every task ends.
 */
#include <keel/sync.h>

#include "program.h"

#define MAX_WORKERS 6
#define MAX_BC_MSGS 512

enum worker_op {
	W_ACQUIRE,
	W_TRY_ACQUIRE,
	W_RELEASE,
	W_LOCK,
	W_TRY_LOCK,
	W_UNLOCK,
	W_EVENT_WAIT,
	W_BARRIER_WAIT,
	W_LATCH_WAIT,
	W_BC_RECV,
	W_BC_TRY_RECV,
	W_ONESHOT_RECV,
	W_PANIC,
	W_OPS
};

struct worker;

struct slot {
	struct worker *w; /* NULL: no worker */
	struct keel_task *t;
	struct keel_token *tok;
	struct keel_event *go; /* set: a command (or quit) waits */
	bool busy, quit;
	int op;
	uint32_t n;	 /* permits; the lock's timeout */
	uint64_t queued; /* its await suspended: the order it did (or 0) */
	uint64_t since;	 /* what the wait started with: sets, generation */
	bool was_set;	 /* the event was set when the wait began */
	uint32_t held;	 /* semaphore permits it holds */
	uint32_t made;	 /* the primitive's `made` when the command ran */
	struct keel_broadcast_rx *rx;
	uint64_t rx_next; /* the next broadcast sequence number it reads */
};

struct worker {
	struct keel_task task;
	struct slot *s;
	void *got;
};

static struct slot slots[MAX_WORKERS];
/* Primitives made so far, by kind: a result about one freed since (and
 * perhaps made anew) tells nothing about the one there now. */
static uint32_t made[7];
static uint64_t suspensions; /* orders the waiters */
static struct keel_token *root;

/* The primitives, one of each at a time, and what the model knows. */
static struct {
	struct keel_semaphore *s;
	uint64_t avail;
	bool closed;
} sem;

#define FREE   (-1)
#define HANDED (-2) /* unlocked with waiters: to the first not cancelled */
#define DEAD   (-3) /* its holder ended holding it: locked for good */

static struct {
	struct keel_mutex *m;
	int holder; /* a slot, or one of the above */
} mtx;

static struct {
	struct keel_event *e;
	bool set;
	uint64_t sets;
} ev;

static struct {
	struct keel_barrier *b;
	uint32_t parties;
	uint64_t leaders; /* KEEL_BARRIER_LEADER results seen */
} bar;

static struct {
	struct keel_latch *l;
	uint32_t count;
} lat;

enum { BM_NONE, BM_HELD, BM_DROPPED }; /* a broadcast message's fate */

static struct {
	struct keel_broadcast *bc;
	bool closed;
	uint32_t cap;
	uint64_t nseq;		       /* messages the channel took */
	uint32_t msg[MAX_BC_MSGS];     /* by sequence number: its id */
	uint8_t fate[MAX_BC_MSGS + 1]; /* by id */
	uint32_t ids;		       /* ids given */
	int rxs;		       /* receivers not unsubscribed */
} bcast;

static struct {
	struct keel_oneshot *os;
	uintptr_t value; /* sent, 0: none */
	int err;	 /* failed with, 0: not */
	bool taken, dropped, gone;
} one;

/* ---- the model's checks ------------------------------------------------- */

static bool waiting(const struct slot *s, int op)
{
	return s->w && s->busy && s->op == op && s->queued && !s->w->got;
}

/* The waiter of `op` that suspended first, or NULL. */
static struct slot *first_waiter(int op)
{
	struct slot *first = NULL;

	for (int i = 0; i < MAX_WORKERS; i++)
		if (waiting(&slots[i], op) &&
		    (!first || slots[i].queued < first->queued))
			first = &slots[i];
	return first;
}

static void bc_drop(void *p, void *arg)
{
	uintptr_t id = (uintptr_t)p;

	if (arg != &bcast)
		violation("broadcast on_drop: drop_arg %p", arg);
	if (id == 0 || id > bcast.ids || bcast.fate[id] != BM_HELD)
		violation("broadcast on_drop: message %lu not held by the "
			  "channel",
			  (unsigned long)id);
	bcast.fate[id] = BM_DROPPED;
}

static void oneshot_drop(void *p, void *arg)
{
	if (arg != &one)
		violation("oneshot on_drop: drop_arg %p", arg);
	if ((uintptr_t)p != one.value || one.taken || one.dropped)
		violation("oneshot on_drop: value %p (sent %lu, taken %d, "
			  "dropped %d)",
			  p, (unsigned long)one.value, one.taken, one.dropped);
	one.dropped = true;
}

/* Workers with a command `op` given and not done. */
static int busy_with(int op)
{
	int n = 0;

	for (int i = 0; i < MAX_WORKERS; i++)
		n += slots[i].w && slots[i].busy && slots[i].op == op;
	return n;
}

/* A broadcast receive's result against the receiver's model. */
static void bc_received(struct slot *s, int res, void *got)
{
	uint64_t oldest = bcast.nseq > bcast.cap ? bcast.nseq - bcast.cap : 0;

	switch (res) {
	case 0:
		if (s->rx_next >= bcast.nseq ||
		    (uintptr_t)got != bcast.msg[s->rx_next % MAX_BC_MSGS])
			violation("broadcast: got %p, expected #%llu of %llu",
				  got, (unsigned long long)s->rx_next,
				  (unsigned long long)bcast.nseq);
		s->rx_next++;
		break;
	case -EOVERFLOW:
		if (s->rx_next >= oldest ||
		    keel_broadcast_lagged(s->rx) != oldest - s->rx_next)
			violation(
			    "broadcast: lagged %llu at #%llu, oldest "
			    "#%llu",
			    (unsigned long long)keel_broadcast_lagged(s->rx),
			    (unsigned long long)s->rx_next,
			    (unsigned long long)oldest);
		s->rx_next = oldest;
		break;
	case -EAGAIN:
	case -EPIPE:
		if (s->rx_next < oldest || s->rx_next != bcast.nseq ||
		    (res == -EPIPE) != bcast.closed)
			violation("broadcast: %d at #%llu of %llu (closed %d)",
				  res, (unsigned long long)s->rx_next,
				  (unsigned long long)bcast.nseq, bcast.closed);
		break;
	}
}

static void oneshot_received(int res, void *got)
{
	if (res == 0) {
		if (!one.value || (uintptr_t)got != one.value || one.taken ||
		    one.dropped)
			violation("oneshot: received %p (sent %lu, taken %d)",
				  got, (unsigned long)one.value, one.taken);
		one.taken = true;
	} else if (res == -EPIPE || res == one.err) {
		/* Another receiver may have given up, not counted yet. */
		if (!one.err && !one.taken && !one.gone && !one.value &&
		    busy_with(W_ONESHOT_RECV) < 2)
			violation("oneshot: %d, but the slot is open", res);
	}
	if (res == -ECANCELED || res == -ETIMEDOUT)
		one.gone = true; /* a later send fails */
}

static int kind_of(int op)
{
	static const int kinds[W_OPS] = {
	    [W_ACQUIRE] = 0,	[W_TRY_ACQUIRE] = 0,  [W_RELEASE] = 0,
	    [W_LOCK] = 1,	[W_TRY_LOCK] = 1,     [W_UNLOCK] = 1,
	    [W_EVENT_WAIT] = 2, [W_BARRIER_WAIT] = 3, [W_LATCH_WAIT] = 4,
	    [W_BC_RECV] = 5,	[W_BC_TRY_RECV] = 5,  [W_ONESHOT_RECV] = 6,
	};
	return kinds[op];
}

/* What the worker's command returned (it ran, or its wait ended). */
static void done(struct slot *s, int res, void *got)
{
	int self = (int)(s - slots);

	/* A broadcast receiver outlives its channel's free (it drains what
	 * was sent) and `bcast` keeps the model until the last receiver is
	 * gone: its results always count. */
	if (s->op != W_PANIC && kind_of(s->op) != 5 &&
	    s->made != made[kind_of(s->op)])
		return; /* its primitive was freed since */
	switch (s->op) {
	case W_ACQUIRE:
	case W_TRY_ACQUIRE:
		if (s->op == W_ACQUIRE)
			EXPECT_RES("keel_semaphore_acquire", res, 0, -EPIPE,
				   -ECANCELED, -ETIMEDOUT);
		else
			EXPECT_RES("keel_semaphore_try_acquire", res, 0,
				   -EAGAIN, -EPIPE);
		if (res == 0) {
			if (!s->queued && s->n > sem.avail)
				violation("semaphore: %u permits granted, %llu "
					  "free",
					  s->n, (unsigned long long)sem.avail);
			sem.avail -= s->n;
			s->held += s->n;
		}
		if (res == -EAGAIN && !first_waiter(W_ACQUIRE) &&
		    sem.avail >= s->n)
			violation("semaphore: try_acquire(%u) -EAGAIN with "
				  "%llu free and nobody waiting",
				  s->n, (unsigned long long)sem.avail);
		break;
	case W_RELEASE:
		EXPECT_RES("keel_semaphore_release", res, 0);
		break;
	case W_LOCK:
	case W_TRY_LOCK:
		if (s->op == W_LOCK)
			EXPECT_RES("keel_mutex_lock", res, 0, -ETIMEDOUT,
				   -EDEADLK, -ECANCELED, -EPIPE);
		else
			EXPECT_RES("keel_mutex_try_lock", res, 0, -EBUSY);
		if (res == 0) {
			if ((mtx.holder >= 0 && mtx.holder != self) ||
			    mtx.holder == DEAD)
				violation("mutex: worker %d locked it while "
					  "%d holds it",
					  self, mtx.holder);
			mtx.holder = self;
		}
		/* A dead holder's frame may be reused by a new task. */
		if (res == -EDEADLK && mtx.holder != self && mtx.holder != DEAD)
			violation("mutex: -EDEADLK for a non-holder");
		if ((res == -EBUSY || (res == -ETIMEDOUT && !s->queued)) &&
		    mtx.holder == FREE)
			violation("mutex: %d but it is free", res);
		break;
	case W_UNLOCK:
		EXPECT_RES("keel_mutex_unlock", res, 0, -EPERM);
		if ((res == 0) != (mtx.holder == self))
			violation("mutex: unlock by worker %d returned %d, "
				  "holder %d",
				  self, res, mtx.holder);
		if (res == 0)
			mtx.holder = first_waiter(W_LOCK) ? HANDED : FREE;
		break;
	case W_EVENT_WAIT:
		EXPECT_RES("keel_event_wait", res, 0, -ECANCELED, -ETIMEDOUT,
			   -EPIPE);
		if (res == 0 && !s->was_set && ev.sets == s->since)
			violation("event: a wait returned 0, never set since");
		break;
	case W_BARRIER_WAIT:
		EXPECT_RES("keel_barrier_wait", res, 0, KEEL_BARRIER_LEADER,
			   -ECANCELED, -ETIMEDOUT, -EPIPE);
		if (res == KEEL_BARRIER_LEADER)
			bar.leaders++;
		if (res == 0 && bar.b &&
		    keel_barrier_generation(bar.b) == s->since)
			violation("barrier: a wait returned 0 in the same "
				  "generation");
		break;
	case W_LATCH_WAIT:
		EXPECT_RES("keel_latch_wait", res, 0, -ECANCELED, -ETIMEDOUT,
			   -EPIPE);
		if (res == 0 && lat.count)
			violation("latch: a wait returned 0 at count %u",
				  lat.count);
		break;
	case W_BC_RECV:
	case W_BC_TRY_RECV:
		if (s->op == W_BC_RECV)
			EXPECT_RES("keel_broadcast_recv", res, 0, -EOVERFLOW,
				   -EPIPE, -ECANCELED, -ETIMEDOUT);
		else
			EXPECT_RES("keel_broadcast_try_recv", res, 0,
				   -EOVERFLOW, -EAGAIN, -EPIPE);
		bc_received(s, res, got);
		break;
	case W_ONESHOT_RECV:
		if (res != one.err)
			EXPECT_RES("keel_oneshot_recv_until", res, 0, -EPIPE,
				   -ETIMEDOUT, -ECANCELED, -EBUSY);
		oneshot_received(res, got);
		break;
	}
}

/*
 * After quiet turns every woken worker has run: a waiter whose condition
 * holds was not woken.
 */
static void check_quiet(void)
{
	struct slot *w;

	if (sem.s) {
		if (keel_semaphore_available(sem.s) != sem.avail)
			violation(
			    "semaphore: %llu available, expected %llu",
			    (unsigned long long)keel_semaphore_available(sem.s),
			    (unsigned long long)sem.avail);
		w = first_waiter(W_ACQUIRE);
		if (w && w->n <= sem.avail)
			violation("semaphore: worker %td waits for %u with "
				  "%llu free",
				  w - slots, w->n,
				  (unsigned long long)sem.avail);
	}
	if (mtx.m) {
		struct keel_task *h = keel_mutex_holder(mtx.m);

		/* Handed to a waiter: it has run since, unless every waiter
		 * had been cancelled meanwhile. */
		if (mtx.holder == HANDED && h)
			violation("mutex: handed over, the new holder never "
				  "ran");
		if (mtx.holder == HANDED)
			mtx.holder = FREE;
		if (mtx.holder != DEAD &&
		    h != (mtx.holder >= 0 ? slots[mtx.holder].t : NULL))
			violation("mutex: holder() disagrees");
		if (!h && first_waiter(W_LOCK))
			violation("mutex: free, and a worker waits");
	}
	if (ev.e && ev.set && first_waiter(W_EVENT_WAIT))
		violation("event: set, and a worker waits");
	if (bar.b) {
		uint32_t n = 0;

		for (int i = 0; i < MAX_WORKERS; i++)
			n += waiting(&slots[i], W_BARRIER_WAIT);
		if (n >= bar.parties)
			violation("barrier: %u waiters for %u parties", n,
				  bar.parties);
		if (keel_barrier_generation(bar.b) != bar.leaders)
			violation(
			    "barrier: generation %llu, %llu leaders",
			    (unsigned long long)keel_barrier_generation(bar.b),
			    (unsigned long long)bar.leaders);
	}
	if (lat.l) {
		if (keel_latch_count(lat.l) != lat.count)
			violation("latch: count %u, expected %u",
				  keel_latch_count(lat.l), lat.count);
		if (!lat.count && first_waiter(W_LATCH_WAIT))
			violation("latch: at zero, and a worker waits");
	}
}

/* ---- workers ------------------------------------------------------------ */

static void worker_gone(void *arg)
{
	struct slot *s = arg;

	/* A kill ends a wait: what it was handed (a broadcast message is
	 * borrowed; a oneshot value would be lost with the frame) counts. */
	if (s->busy && s->w && s->w->got &&
	    (s->op == W_BC_RECV || s->op == W_ONESHOT_RECV))
		done(s, 0, s->w->got);
	else if (s->busy && s->op == W_ONESHOT_RECV && s->queued &&
		 s->made == made[6])
		one.gone = true; /* its receive was undone: it gave up */
	if (mtx.holder == s - slots)
		mtx.holder = DEAD;

	if (s->rx) {
		if (keel_broadcast_unsubscribe(s->rx))
			violation("unsubscribe of an ended worker failed");
		bcast.rxs--;
	}
	keel_token_release(s->tok);
	keel_event_free(s->go);
	memset(s, 0, sizeof(*s));
}

static int suspends(struct slot *s, int r)
{
	if (r == KEEL_PENDING)
		s->queued = ++suspensions;
	return r;
}

/* The awaits; each records whether it suspended. */
static int await_op(struct keel_task *t, struct slot *s)
{
	static const uint64_t timeouts[] = {0, 1, UINT64_MAX};

	s->queued = 0;
	s->w->got = NULL;
	s->made = made[kind_of(s->op)];
	switch (s->op) {
	case W_ACQUIRE:
		return suspends(s, keel_semaphore_acquire(t, sem.s, s->n));
	case W_LOCK:
		return suspends(s,
				keel_mutex_lock(t, mtx.m, timeouts[s->n % 3]));
	case W_EVENT_WAIT:
		s->since = ev.sets;
		s->was_set = ev.set;
		return suspends(s, keel_event_wait(t, ev.e));
	case W_BARRIER_WAIT:
		s->since = keel_barrier_generation(bar.b);
		return suspends(s, keel_barrier_wait(t, bar.b));
	case W_LATCH_WAIT:
		return suspends(s, keel_latch_wait(t, lat.l));
	case W_BC_RECV:
		return suspends(s, keel_broadcast_recv(t, s->rx, &s->w->got));
	case W_ONESHOT_RECV:
		return suspends(
		    s, keel_oneshot_recv_until(t, one.os, &s->w->got,
					       s->n & 1 ? 0 : UINT64_MAX));
	}
	return KEEL_READY;
}

/* The commands that do not wait. */
static int now_op(struct keel_task *t, struct slot *s)
{
	void *got = NULL;
	int res = 0;

	s->made = made[kind_of(s->op)];
	switch (s->op) {
	case W_TRY_ACQUIRE:
		return keel_semaphore_try_acquire(sem.s, s->n);
	case W_RELEASE:
		res = keel_semaphore_release(sem.s, s->held);
		if (res == 0) {
			sem.avail += s->held;
			s->held = 0;
		}
		return res;
	case W_TRY_LOCK:
		return keel_mutex_try_lock(t, mtx.m);
	case W_UNLOCK:
		return keel_mutex_unlock(t, mtx.m);
	case W_BC_TRY_RECV:
		res = keel_broadcast_try_recv(s->rx, &got);
		s->w->got = got;
		return res;
	case W_PANIC:
		keel_panic("fuzz: a worker panics");
	}
	return 0;
}

static bool is_await(int op)
{
	return op == W_ACQUIRE || op == W_LOCK || op == W_EVENT_WAIT ||
	       op == W_BARRIER_WAIT || op == W_LATCH_WAIT || op == W_BC_RECV ||
	       op == W_ONESHOT_RECV;
}

static bool usable(const struct slot *s, int op);

static int worker_step(struct keel_task *t)
{
	struct worker *w = keel_container_of(t, struct worker, task);
	struct slot *s = w->s;

	KEEL_BEGIN(t);
	if (keel_defer(t, worker_gone, s))
		violation("keel_defer failed");
	for (;;) {
		/* Idle until the driver sets `go`; a cancelled worker runs
		 * the command it has, then ends. */
		KEEL_AWAIT(t, keel_event_wait(t, s->go));
		if (s->quit || (keel_res(t) && !s->busy))
			KEEL_EXIT(t, 0);
		keel_event_clear(s->go);
		if (!s->busy)
			continue;
		/* Freed since it was given: nothing to do. */
		if (!usable(s, s->op)) {
			s->busy = false;
			continue;
		}
		if (is_await(s->op)) {
			KEEL_AWAIT(t, await_op(t, s));
			done(s, keel_res(t), w->got);
		} else {
			done(s, now_op(t, s), w->got);
		}
		w->got = NULL;
		s->busy = false;
	}
}

static KEEL_TASK_TYPE(worker_task, struct worker, task, worker_step);

/* ---- the driver --------------------------------------------------------- */

static struct slot *pick_slot(struct program *pr)
{
	struct slot *s = &slots[next_byte(pr) % MAX_WORKERS];

	return s->w ? s : NULL;
}

static void spawn_worker(struct program *pr)
{
	struct slot *s = &slots[next_byte(pr) % MAX_WORKERS];
	struct worker *w;

	if (s->w)
		return;
	w = keel_spawn(fuzz_loop(), &worker_task, next_byte(pr) % 4);
	if (!w)
		violation("keel_spawn failed");
	w->s = s;
	s->w = w;
	s->t = keel_task_of(&worker_task, w);
	if (keel_event_new(fuzz_loop(), &s->go) ||
	    keel_token_new(fuzz_loop(), root, &s->tok) ||
	    keel_task_set_token(s->t, s->tok))
		violation("keel_event_new, token_new or set_token failed");
}

/* Whether the primitive `op` works on exists (and the worker can use it). */
static bool usable(const struct slot *s, int op)
{
	switch (op) {
	case W_ACQUIRE:
	case W_TRY_ACQUIRE:
	case W_RELEASE:
		return sem.s;
	case W_LOCK:
	case W_TRY_LOCK:
	case W_UNLOCK:
		return mtx.m;
	case W_EVENT_WAIT:
		return ev.e;
	case W_BARRIER_WAIT:
		return bar.b;
	case W_LATCH_WAIT:
		return lat.l;
	case W_BC_RECV:
	case W_BC_TRY_RECV:
		return s->rx;
	case W_ONESHOT_RECV:
		return one.os;
	}
	return true;
}

static void command(struct program *pr)
{
	struct slot *s = pick_slot(pr);
	uint8_t b = next_byte(pr);
	int op = b % W_OPS;

	if (!s || s->busy || !usable(s, op))
		return;
	s->op = op;
	s->n = b >> 4; /* 0..15 permits; the lock's timeout */
	s->busy = true;
	keel_event_set(s->go);
}

/* Free what waiters may wait on; they are woken with -EPIPE. */
static void free_sem(void)
{
	keel_semaphore_free(sem.s);
	memset(&sem, 0, sizeof(sem));
	for (int i = 0; i < MAX_WORKERS; i++)
		slots[i].held = 0; /* forgotten with it */
}

static void free_bcast(void)
{
	keel_broadcast_free(bcast.bc);
	bcast.bc = NULL;
	bcast.closed = true;
}

static void make_or_free(struct program *pr)
{
	struct keel_loop *loop = fuzz_loop();
	uint8_t b = next_byte(pr);
	uint32_t n = b >> 3 & 7;
	int err = 0;

	switch (b % 7) {
	case 0:
		if (sem.s) {
			free_sem();
			break;
		}
		err = keel_semaphore_new(loop, n, &sem.s);
		sem.avail = n;
		break;
	case 1:
		if (mtx.m) {
			keel_mutex_free(mtx.m);
			mtx.m = NULL;
			break;
		}
		err = keel_mutex_new(loop, &mtx.m);
		mtx.holder = FREE;
		break;
	case 2:
		if (ev.e) {
			keel_event_free(ev.e);
			memset(&ev, 0, sizeof(ev));
			break;
		}
		err = keel_event_new(loop, &ev.e);
		break;
	case 3:
		if (bar.b) {
			keel_barrier_free(bar.b);
			memset(&bar, 0, sizeof(bar));
			break;
		}
		err = keel_barrier_new(loop, 1 + n % 4, &bar.b);
		bar.parties = 1 + n % 4;
		break;
	case 4:
		if (lat.l) {
			keel_latch_free(lat.l);
			memset(&lat, 0, sizeof(lat));
			break;
		}
		err = keel_latch_new(loop, n, &lat.l);
		lat.count = n;
		break;
	case 5:
		if (bcast.bc) { /* its receivers live on, and drain it */
			free_bcast();
			return;
		}
		if (bcast.rxs) /* the old channel's receivers first */
			break;
		memset(&bcast, 0, sizeof(bcast));
		bcast.cap = 1 + n % 4;
		err = keel_broadcast_new(loop, bcast.cap, bc_drop, &bcast,
					 &bcast.bc);
		break;
	case 6:
		if (one.os) { /* a waiting receiver holds its own reference */
			keel_oneshot_release(one.os);
			one.os = NULL;
			return; /* what it then gets still counts */
		}
		memset(&one, 0, sizeof(one));
		err = keel_oneshot_new(loop, oneshot_drop, &one, &one.os);
		break;
	}
	if (err)
		violation("making a primitive failed: %d", err);
	made[b % 7]++; /* made or freed: a new instance either way */
}

/* What the driver does itself (between turns: a plain thread to keel). */
static void driver_op(struct program *pr)
{
	uint8_t b = next_byte(pr);
	uint32_t n = b >> 4;
	struct slot *s;
	int res;

	switch (b % 10) {
	case 0:
		if (!sem.s)
			break;
		res = keel_semaphore_release(sem.s, n);
		EXPECT_RES("keel_semaphore_release", res, 0);
		sem.avail += n;
		break;
	case 1:
		if (!sem.s)
			break;
		keel_semaphore_close(sem.s);
		sem.closed = true;
		break;
	case 2:
		if (!ev.e)
			break;
		res = n & 1 ? keel_event_clear(ev.e) : keel_event_set(ev.e);
		EXPECT_RES("keel_event_set/clear", res, 0);
		ev.set = !(n & 1);
		ev.sets += ev.set;
		if (keel_event_is_set(ev.e) != ev.set)
			violation("event: is_set() disagrees");
		break;
	case 3: {
		int64_t left;

		if (!lat.l)
			break;
		left = keel_latch_count_down(lat.l, n);
		lat.count -= n < lat.count ? n : lat.count;
		if (left != lat.count)
			violation("latch: count_down returned %lld, expected "
				  "%u",
				  (long long)left, lat.count);
		break;
	}
	case 4: {
		uint32_t id;

		if (!bcast.bc || bcast.ids == MAX_BC_MSGS)
			break;
		id = ++bcast.ids;
		bcast.fate[id] = BM_HELD;
		res = keel_broadcast_send(bcast.bc, (void *)(uintptr_t)id);
		if (res < 0)
			EXPECT_RES("keel_broadcast_send", res, -EPIPE);
		if ((res == -EPIPE) != bcast.closed ||
		    (res >= 0 && res != bcast.rxs))
			violation("broadcast: send returned %d, %d receivers "
				  "(closed %d)",
				  res, bcast.rxs, bcast.closed);
		if (res > 0)
			bcast.msg[bcast.nseq++ % MAX_BC_MSGS] = id;
		else
			bcast.fate[id] = BM_NONE; /* still ours */
		break;
	}
	case 5:
		if (!bcast.bc)
			break;
		keel_broadcast_close(bcast.bc);
		bcast.closed = true;
		break;
	case 6: /* subscribe a worker, or unsubscribe it */
		if (!(s = pick_slot(pr)) || !bcast.bc ||
		    (s->busy && (s->op == W_BC_RECV || s->op == W_BC_TRY_RECV)))
			break;
		if (s->rx) {
			res = keel_broadcast_unsubscribe(s->rx);
			EXPECT_RES("keel_broadcast_unsubscribe", res, 0);
			s->rx = NULL;
			bcast.rxs--;
			break;
		}
		res = keel_broadcast_subscribe(bcast.bc, &s->rx);
		EXPECT_RES("keel_broadcast_subscribe", res, 0, -EPIPE);
		if ((res == -EPIPE) != bcast.closed)
			violation("broadcast: subscribe %d, closed %d", res,
				  bcast.closed);
		if (res == 0) {
			s->rx_next = bcast.nseq;
			bcast.rxs++;
		}
		break;
	case 7:
	case 8:
		if (!one.os)
			break;
		if (b % 10 == 7) {
			bool closed = one.value || one.err || one.gone;

			res = keel_oneshot_send(one.os, (void *)(uintptr_t)7);
			EXPECT_RES("keel_oneshot_send", res, 0, -EPIPE);
			if ((res == -EPIPE) != closed &&
			    !(res == -EPIPE && busy_with(W_ONESHOT_RECV)))
				violation("oneshot: send returned %d", res);
			if (res == 0)
				one.value = 7;
		} else if (!one.value && !one.err && !one.gone) {
			one.err = n & 1 ? -ECONNRESET : -EPIPE;
			keel_oneshot_fail(one.os, one.err);
		}
		break;
	case 9:
		if (one.os)
			(void)keel_oneshot_is_closed(one.os);
		break;
	}
}

static void token_op(struct program *pr)
{
	uint8_t op = next_byte(pr) % 5;
	struct slot *s = pick_slot(pr);
	struct keel_token *tok;

	if (!s)
		return;
	switch (op) {
	case 0:
		keel_token_cancel(s->tok);
		break;
	case 1:
		if (keel_token_set_deadline(s->tok, 0))
			violation("keel_token_set_deadline failed");
		break;
	case 2:
		if (keel_task_cancel(s->t))
			violation("keel_task_cancel failed");
		break;
	case 3:
		/*
		 * Permits or a mutex handed to a waiter that has not run
		 * yet die with it, unseen: let woken waiters run first, so
		 * that the kill finds them waiting or done.
		 */
		if (s->busy && (s->op == W_ACQUIRE || s->op == W_LOCK)) {
			run_turns(fuzz_loop(), 2);
			if (!s->w)
				break;
		}
		EXPECT_RES("keel_task_kill", keel_task_kill(s->t), 0);
		if (s->w) { /* it never ran: nothing was handed to it */
			s->w = NULL;
			worker_gone(s);
		}
		break;
	case 4:
		if (keel_token_new(fuzz_loop(), root, &tok) ||
		    keel_task_set_token(s->t, tok))
			violation("keel_token_new or set_token failed");
		keel_token_release(s->tok);
		s->tok = tok;
		break;
	}
}

static void run_program(struct program *pr)
{
	while (pr->n) {
		uint8_t op = next_byte(pr);

		switch (op % 8) {
		case 0:
			make_or_free(pr);
			break;
		case 1:
			spawn_worker(pr);
			break;
		case 2:
		case 3:
			command(pr);
			break;
		case 4:
			driver_op(pr);
			break;
		case 5:
			token_op(pr);
			break;
		default: /* turns; after three quiet ones, no wake is owed */
			run_turns(fuzz_loop(), 1 + op % 4);
			if (op % 4 >= 2)
				check_quiet();
			break;
		}
	}
}

/* Free everything: every waiter must be woken, every worker end. */
static void finish(void)
{
	struct keel_loop *loop = fuzz_loop();
	struct keel_loop_stats st;
	bool orphan[MAX_WORKERS];

	run_turns(loop, 3);
	check_quiet();
	/* A oneshot whose every reference the driver let go can keep its
	 * receiver waiting: sync.h says so. */
	for (int i = 0; i < MAX_WORKERS; i++)
		orphan[i] = slots[i].op == W_ONESHOT_RECV &&
			    (!one.os || slots[i].made != made[6]);
	for (int i = 0; i < 7; i++)
		made[i]++;
	if (sem.s)
		free_sem();
	if (mtx.m)
		keel_mutex_free(mtx.m);
	if (ev.e)
		keel_event_free(ev.e);
	if (bar.b)
		keel_barrier_free(bar.b);
	if (lat.l)
		keel_latch_free(lat.l);
	if (bcast.bc)
		free_bcast();
	if (one.os) {
		if (!one.value && !one.err && !one.gone)
			one.err = -EPIPE;
		keel_oneshot_close(one.os);
	}
	run_turns(loop, 3);
	for (int i = 0; i < MAX_WORKERS; i++) {
		struct slot *s = &slots[i];

		if (s->w && s->busy && !orphan[i])
			violation("worker %d still waits (command %d) after "
				  "everything was freed",
				  i, s->op);
		if (s->w) {
			s->quit = true;
			keel_event_set(s->go);
		}
	}
	keel_token_cancel(root); /* that receiver */
	for (int i = 0; i < 10; i++) {
		keel_loop_stats(loop, &st);
		if (!st.tasks_live)
			break;
		run_turns(loop, 1);
	}
	if (one.os) {
		keel_oneshot_release(one.os);
		one.os = NULL;
	}
	if (one.value && one.taken == one.dropped)
		violation("oneshot: value taken %d, dropped %d", one.taken,
			  one.dropped);
	for (uint32_t id = 1; id <= bcast.ids; id++)
		if (bcast.fate[id] == BM_HELD)
			violation("broadcast: message %u never dropped", id);
	keel_token_cancel(root);
	keel_token_release(root);
	run_turns(loop, 1);
	expect_clean_loop(loop);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct program pr = {data, size};

	memset(slots, 0, sizeof(slots));
	memset(&sem, 0, sizeof(sem));
	memset(&mtx, 0, sizeof(mtx));
	memset(&ev, 0, sizeof(ev));
	memset(&bar, 0, sizeof(bar));
	memset(&lat, 0, sizeof(lat));
	memset(&bcast, 0, sizeof(bcast));
	memset(&one, 0, sizeof(one));
	if (keel_token_new(fuzz_loop(), NULL, &root))
		violation("keel_token_new failed");
	run_program(&pr);
	finish();
	return 0;
}
