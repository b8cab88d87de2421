/* SPDX-License-Identifier: MIT */
/*
 * core.h: private core of a loop: run queues, the frame allocator, the task
 * table and task bookkeeping. Knows nothing of io_uring.
 *
 * Layering: struct keel_loop (sched/) embeds struct keel__io (io/) as its
 * first member, which embeds struct keel__core as its first member, so each
 * layer reaches its own part from a loop pointer without knowing the layers
 * above it (keel__core_of()).
 */
#ifndef KEEL_CORE_H
#define KEEL_CORE_H

#include "list.h"

#include <keel/loop.h>
#include <keel/sync.h>
#include <keel/task.h>
#include <keel/trace.h>
#include <setjmp.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

/*
 * The abort frame's jump buffer (sched/loop.c sets it before running
 * steps; core/abort.c and sched/faults.c jump to it): the compiler's
 * __builtin_setjmp, which stores the frame, the stack pointer and the
 * resume address (three moves) where libc's _setjmp is a call of some 30
 * instructions, paid on every turn that runs a task. It takes
 * __builtin_longjmp, from another function, as both jumps are. The
 * sanitizers intercept libc's setjmp and longjmp to keep their view of the
 * stack right, so their builds use those; so does clang off x86, which
 * may not implement the builtins.
 */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define KEEL__LIBC_SETJMP 1
#elif defined(__clang__) && !defined(__x86_64__)
#define KEEL__LIBC_SETJMP 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define KEEL__LIBC_SETJMP 1
#endif
#endif
#ifdef KEEL__LIBC_SETJMP
typedef jmp_buf keel__abort_buf;
#define KEEL__ABORT_SET(buf)  setjmp(buf)
#define KEEL__ABORT_JUMP(buf) longjmp((buf), 1)
#else
typedef void *keel__abort_buf[5];
#define KEEL__ABORT_SET(buf)  __builtin_setjmp(buf)
#define KEEL__ABORT_JUMP(buf) __builtin_longjmp((buf), 1)
#endif

/* Task state bits (struct keel_task.flags). */
#define KEEL__T_QUEUED	 0x01 /* on a run queue */
#define KEEL__T_WAITING	 0x02 /* suspended until an op or event wakes it */
#define KEEL__T_JOINABLE 0x04 /* keeps its status until joined/detached */
#define KEEL__T_EXITED	 0x08 /* ran its last step; runs no more code */
#define KEEL__T_RELEASED 0x10 /* joined or detached: free when ops drain */
#define KEEL__T_EXTERNAL 0x20 /* waits on another thread (a mailbox) */
#define KEEL__T_KILLED	 0x40 /* killed: runs no more code (core/kill.c) */
#define KEEL__T_SELECT	 0x80 /* waits in a keel_select (io/select_wait.c) */

/* What a step function returns after KEEL_EXIT. */
#define KEEL__EXITED 2

/*
 * A FIFO of tasks linked through keel_task.next. Not a keel__list (list.h):
 * the run queues are the hottest lists and a task sits on at most one, so
 * one pointer in the 64-byte task header does; a prev pointer would not fit
 * there. Only a kill takes a task out of the middle (a walk, kill.c).
 */
struct keel__taskq {
	struct keel_task *head;
	struct keel_task *tail; /* the last task; stale while head is NULL */
};

/*
 * Frame allocator: small frames (up to 4 KiB, in 16-byte classes from 64
 * bytes up) are carved from 64 KiB slabs of a per-loop jemalloc arena and
 * recycled through per-class free lists; larger ones come from the arena
 * itself (mallocx/sdallocx with the loop's arena and explicit tcache).
 * 16-byte classes: a frame wastes 8 bytes on average, not 32 (an idle
 * connection's frame is most of what it costs); and frames are aligned as
 * malloc's are (16 bytes), as in the sanitizer builds (calloc).
 */
#define KEEL__FRAME_CLASS_SHIFT 4
#define KEEL__FRAME_CLASSES	256
#define KEEL__SLAB_BYTES	(64u * 1024)

/* The class of a block of `size` bytes (at least 64 bytes: the inline
 * zeroing below stores 64 at a time). */
static inline size_t keel__alloc_class(size_t size)
{
	return size <= 64 ? 64 >> KEEL__FRAME_CLASS_SHIFT
			  : (size + (1u << KEEL__FRAME_CLASS_SHIFT) - 1) >>
				KEEL__FRAME_CLASS_SHIFT;
}

/* Shared blocks (keel__shared_calloc): 16-byte classes up to 256 bytes,
 * at most KEEL__SHARED_KEEP of each kept per loop. */
#define KEEL__SHARED_CLASSES 16
#define KEEL__SHARED_KEEP    64

struct keel__alloc {
	void *cached[KEEL__FRAME_CLASSES]; /* free frames, linked by 1st word */
	void *slabs;			   /* all slabs, linked by 1st word */
	char *bump; /* uncarved rest of the newest slab */
	size_t bump_left;
	int mallocx_flags;
	unsigned arena;
	unsigned tcache;
	bool arena_made; /* arena and tcache asked for (at first use) */
	bool have_arena;
	bool have_tcache;
	bool leaked;   /* a frame was leaked: keep the slabs and arena */
	uint64_t live; /* blocks handed out and not freed (loop stats) */
	/* Freed shared blocks (keel__shared_calloc), linked by 1st word. */
	void *shared[KEEL__SHARED_CLASSES];
	uint8_t nshared[KEEL__SHARED_CLASSES];
	size_t slab_bytes;  /* slabs held, free frames included */
	size_t large_bytes; /* frames beyond the classes (libc: all frames) */
};

/* Rarely needed per-task state, allocated on first use. */
struct keel__defer_entry {
	keel_defer_fn fn;
	void *arg;
};

/* Wakes a task from a wait that is not an op (a join): unregisters it. */
typedef void (*keel__wait_cancel_fn)(struct keel_task *t);

/*
 * An item for a loop's inbox (sched/remote.c): work another thread hands
 * to the loop, run on the loop's thread in step 2 of its turn. Embedded in
 * whatever it concerns (a mailbox, a waiter, a spawn request).
 */
struct keel__remote_item;
typedef void (*keel__remote_fn)(struct keel_loop *loop,
				struct keel__remote_item *item);
struct keel__remote_item {
	struct keel__remote_item *next;
	keel__remote_fn run;
};

/*
 * A task waiting in a queue (a blocked send, a semaphore...): at most one
 * per task, so it lives in the task's ext. Linked into a FIFO keel__waitq.
 */
struct keel__waiter {
	struct keel__link link; /* its keel__waitq */
	struct keel_task *task;
	void *payload; /* what the wait carries (a message to send) */
	void *owner;   /* the object waited on */
	int state;     /* keel__waiter_state, atomic across loops */
	int result;
	struct keel__remote_item wake; /* to wake it from another loop */
};

enum keel__waiter_state {
	KEEL__WAIT_IDLE = 0,
	KEEL__WAIT_QUEUED = 1,
	KEEL__WAIT_WAKING = 2, /* taken off the queue, a wake is in flight */
	KEEL__WAIT_SENT = 3,   /* done meanwhile; the wake only completes it */
};

struct keel__waitq {
	struct keel__list list;
	uint32_t len;
};

static inline void keel__waitq_push(struct keel__waitq *q,
				    struct keel__waiter *w)
{
	keel__list_push_back(&q->list, &w->link);
	q->len++;
}

static inline void keel__waitq_remove(struct keel__waitq *q,
				      struct keel__waiter *w)
{
	keel__list_remove(&q->list, &w->link);
	q->len--;
}

/* The longest waiting, or NULL. */
static inline struct keel__waiter *keel__waitq_first(struct keel__waitq *q)
{
	struct keel__link *n = q->list.first;

	return n ? keel__list_entry(n, struct keel__waiter, link) : NULL;
}

static inline struct keel__waiter *keel__waitq_pop(struct keel__waitq *q)
{
	struct keel__waiter *w = keel__waitq_first(q);

	if (w)
		keel__waitq_remove(q, w);
	return w;
}
struct keel__task_ext {
	struct keel_task *task;
	struct keel__defer_entry *defers;
	unsigned ndefers;
	unsigned cap;
	/* The token observed (a reference); NULL: the loop's root token. */
	struct keel_token *token;
	struct keel__link tok_link;	  /* the token's observer list */
	keel__wait_cancel_fn wait_cancel; /* set while in such a wait */
	struct keel_task *join_target;	  /* while waiting in keel_join */
	struct keel_scope *scope;	  /* the scope the task belongs to */
	struct keel_shield *shield;	  /* innermost shield up */
	struct keel_scope *owned;	  /* open scopes it owns */
	uint32_t scope_index;
	struct keel_abort abort;	/* why it aborted (message owned) */
	struct keel_abort joined_abort; /* last joined task's (owned) */
	struct keel__waiter waiter;	/* its queue wait, if any */
	/* A killed task whose wait could not be undone at once finishes
	 * dying from its own loop's inbox when that wait ends (kill.c). */
	struct keel__remote_item kill_item;
	bool kill_pending;
	/* While KEEL__T_SELECT: the select, and how a mailbox or a join
	 * that its task armed tells it that it won (io/select_wait.c). */
	struct keel_select *select;
	void (*select_wake)(struct keel_task *t, void *what, int res);
};

/* A cancellation token (see keel/task.h). */
struct keel_token {
	struct keel_loop *loop;
	struct keel_token *parent;   /* holds a reference */
	struct keel__list children;  /* weak: of their sibling links */
	struct keel__link sibling;   /* in the parent's children */
	struct keel__list observers; /* task exts, by tok_link */
	struct keel__list callbacks; /* keel_token_cb, by link */
	uint64_t deadline;	     /* own; UINT64_MAX: none */
	struct keel_timer timer;
	uint32_t refs;
	int cause;
	bool loop_gone; /* the root's: its loop was destroyed first */
};

/*
 * Services the layers above core provide to it (set at loop creation).
 * Hooks, not calls, because what they do is above core by nature: a task's
 * ops are io_uring requests (io/ledger.c installs cancel_ops), and waking
 * another loop's thread rings its ring (sched/remote.c). Core only decides
 * when; the layer that owns the mechanism says how.
 */
struct keel__core_hooks {
	void (*cancel_ops)(struct keel_task *t);
	/* Hand `item` to `loop` from any thread (sched/remote.c). */
	void (*remote_post)(struct keel_loop *loop,
			    struct keel__remote_item *item);
};

/* Heap entries carry the deadline inline so that sifting rarely touches
 * the timers themselves (only to break ties). */
struct keel__heap_entry {
	uint64_t deadline;
	struct keel_timer *timer;
};

/* The near heap: a 4-ary min-heap of (deadline, arming order). */
struct keel__timer_heap {
	struct keel__heap_entry *v; /* entry i's children: 4i+1 .. 4i+4 */
	void *block;		    /* v - 3, 64-byte aligned: see timer.c */
	uint32_t n;
	uint32_t cap;
};

/* The run: one tick's timers, sorted by (deadline, arming order) when
 * their wheel slot came due (core/timer.c). [head, n) are still to fire;
 * a cancelled one's entry keeps a NULL timer, never at the head. */
struct keel__timer_run {
	struct keel__heap_entry *v;
	struct keel__heap_entry *tmp; /* the sort's other half (same block) */
	uint32_t head;
	uint32_t n;
	uint32_t cap;
};

/* The timing wheel's levels (of 64 slots) and its overflow. */
#define KEEL__TIMER_LEVELS 6
struct keel__timer_slot;

/* The loop's timers (core/timer.c): a timing wheel for what is not due
 * yet, the run and the near heap for what is due up to the wheel's
 * cursor. */
struct keel__timers {
	struct keel__timer_heap heap;
	struct keel__timer_run run;
	struct keel__timer_slot *slots; /* allocated with the first use */
	/* Armed since the wheel last took them in (timer.c: settle()); a
	 * cancelled one leaves a NULL behind (fresh_holes of them) unless
	 * it was the newest. */
	struct keel_timer **fresh;
	uint32_t nfresh;
	uint32_t fresh_cap;
	uint32_t fresh_holes;
	uint64_t occupied[KEEL__TIMER_LEVELS + 1]; /* bit s: slot s has some */
	uint32_t levels;			   /* bit L: occupied[L] != 0 */
	uint32_t n;				   /* armed, in all */
	uint64_t base;	/* the wheel's cursor, in ticks: see timer.c */
	uint64_t seq;	/* arming counter: ties fire in arming order */
	uint64_t fired; /* timers fired so far */
	/* No timer the wheel has taken in is due before it: the next
	 * deadline's computation sets it, taking timers in resets it to 0.
	 * A turn before it, with no fresh timer, has none to fire and skips
	 * keel__timers_expire(). */
	uint64_t due_floor;
};

/* Task table slot: lets a dump walk every live task and gives handles. */
struct keel__task_slot {
	struct keel_task *task; /* NULL when free */
	uint32_t gen;		/* bumped on every reuse */
	uint32_t next_free;	/* free-list link (index + 1, 0 = end) */
};

struct keel__core_counters {
	uint64_t steps;
	uint64_t spawned;
	uint64_t exited;
	uint64_t zombies; /* now */
			  /* Live now: spawned - exited (keel__tasks_live()). */
};

/*
 * A sleep's record (io/sleep.c): one per task slot, made when a task in
 * that slot first sleeps, in chunks of KEEL__SLEEP_CHUNK that never move
 * (the wheel points at the timers). One cache line: a sleep touches it
 * and its task, where a ledger op took two or three lines and kept the
 * timers' walks in the order ops ended (no order in memory).
 */
struct keel__sleep {
	struct keel_timer timer; /* arg: the task */
	uint64_t start_ns;	 /* the loop's clock at the call (dumps) */
	uint64_t trace_ns;	 /* the trace clock then, 0: not traced */
	int32_t res;		 /* 0, or -ETIMEDOUT: keel_op_timeout's */
} __attribute__((aligned(64)));

#define KEEL__SLEEP_CHUNK_SHIFT 8
#define KEEL__SLEEP_CHUNK	(1u << KEEL__SLEEP_CHUNK_SHIFT)

struct keel__core {
	struct keel__taskq runq[KEEL_PRIO_CLASSES];
	uint32_t runnable;    /* tasks on the run queues */
	int32_t ready_budget; /* ready-at-once awaits left to this step (<= 0:
				 none) */
	struct keel__alloc alloc;
	/* The task table: slots [0, nslots) have been handed out at least
	 * once; the rest of the allocation (cap_slots) is left untouched, so
	 * that it costs no memory until used. */
	struct keel__task_slot *slots;
	uint32_t nslots;
	uint32_t free_slot; /* index + 1, 0 = none */
	uint32_t cap_slots;
	struct keel__core_counters count;
	/* The loop's clock, CLOCK_MONOTONIC ns: set once per turn. */
	uint64_t now;
	struct keel__timers timers;
	/* Sleep records by task slot (chunk id >> KEEL__SLEEP_CHUNK_SHIFT,
	 * NULL until a task of it sleeps): sleep_chunks of them. */
	struct keel__sleep **sleeps;
	uint32_t sleep_chunks;
	uint32_t external_waits; /* tasks another thread may wake */
	struct keel__core_hooks hooks;
	struct keel_token *root; /* the loop's root token */
	/* Tokens of this loop cancelled and not yet freed: while none is,
	 * no task's is either (a task observes a token of its own loop). */
	uint32_t cancelled;
	/*
	 * Why an op's start may need more than its fast path, a byte for each
	 * reason, all tested as one word (io/io.h: keel__op_begin(),
	 * keel__op_commit()): a token of the loop cancelled (cancelled != 0),
	 * tracing on, a deadline for the next op (keel_op_timeout(); cleared
	 * after each step, and only a hint: the slow path compares), a
	 * restricted ring. any == 0: none of them.
	 */
	union {
		uint32_t any;
		struct {
			uint8_t cancelled, trace, timeout, restricted;
		} why;
	} op_slow;
	/* Abort frames (core/abort.c): where a panic in a step jumps to. */
	struct keel_task *current;   /* the task whose step is running */
	struct keel_task *unwinding; /* the aborted task whose defers run */
	keel__abort_buf abort_env;
	bool abort_armed; /* abort_env is set up by the running loop */
	int fault_mode;	  /* enum keel_fault_mode */
	struct keel_abort panic;
	char panic_msg[256];
	uint64_t aborted;
	uint64_t fault_recoveries;
	/* Tracing (core/trace.c): NULL when off. */
	struct keel__trace_loop *trace;
	uint32_t trace_gen;
	/*
	 * Read by the stall watchdog thread (sched/introspect.c): the step
	 * counter and the running task's resume site, written with relaxed
	 * atomic stores (plain moves on x86) before each step.
	 */
	const struct keel_await_point *current_site;
	const struct keel_task_type *current_type;
	uint64_t stall_flag; /* set by the watchdog: the step stalled (ns) */
	/* Deadlock checks (core/deadlock.c): cycles first seen, and the
	 * signatures of those the last check found (so that a cycle still
	 * there is counted once). */
	uint64_t deadlocks;
	uint64_t deadlock_seen[16];
	uint32_t deadlock_nseen;
};

/*
 * The core of the loop running on this thread, or NULL. Initial-exec, as
 * keel__virtual_clock below: one load from the thread pointer, not a call
 * to __tls_get_addr from libkeel.so (every try_send, tell and oneshot
 * send asks which loop runs).
 * glibc places such a library's variables in the static TLS block, or
 * when it is dlopen'ed late, in that block's reserve (some hundreds of
 * bytes: these are two pointers).
 */
extern __thread struct keel__core *keel__current_core
    __attribute__((tls_model("initial-exec")));

/*
 * The simulated kernel's virtual clock, when this thread runs simulated
 * loops (sim/): every clock read of keel (timers, deadlines, linked
 * timeouts, supervisor restart times, trace timestamps) then reads it, so
 * that a simulated run is the same run every time. NULL otherwise.
 * Initial-exec: one load from the thread pointer, no call.
 */
extern __thread const uint64_t *keel__virtual_clock
    __attribute__((tls_model("initial-exec")));

/* CLOCK_MONOTONIC in ns: keel's only clock (a vDSO call), or the virtual
 * clock of a simulated kernel. */
static inline uint64_t keel__clock_now(void)
{
	struct timespec ts;

	if (__builtin_expect(keel__virtual_clock != NULL, 0))
		return *keel__virtual_clock;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* keel's one PRNG for jitter (retry, supervisor backoff): splitmix64
 * (Steele, Lea, Flood 2014), any seed, one add and a mix per draw. */
static inline uint64_t keel__rand64(uint64_t *state)
{
	uint64_t z = (*state += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static inline struct keel__core *keel__core_of(struct keel_loop *loop)
{
	return (struct keel__core *)loop;
}

/* Tasks spawned and not exited: derived, not counted (two counters fewer
 * to move per task). */
static inline uint64_t keel__tasks_live(const struct keel__core *c)
{
	return c->count.spawned - c->count.exited;
}

/* Queue `t`, whose `next` is NULL already (a zeroed frame). Emptiness is
 * the head's, so that a pop that empties the queue leaves the tail be. */
static inline void keel__taskq_append(struct keel__taskq *q,
				      struct keel_task *t)
{
	if (q->head)
		q->tail->next = t;
	else
		q->head = t;
	q->tail = t;
}

static inline void keel__taskq_push(struct keel__taskq *q, struct keel_task *t)
{
	t->next = NULL;
	keel__taskq_append(q, t);
}

/* The first task, taken off; its `next` is left stale: only a queue's
 * walk reads it, and a push sets it. */
static inline struct keel_task *keel__taskq_pop(struct keel__taskq *q)
{
	struct keel_task *t = q->head;

	if (t)
		q->head = t->next;
	return t;
}

/* Tracing (core/trace.c). Events per buffer handed to the writer. */
#define KEEL__TRACE_BUF 4096
struct keel__trace_loop;
void keel__trace_env(void);
/* A turn begins: attach to a trace started since, or detach from one
 * stopped; while tracing, take a buffer if the loop had none. Inline for
 * the turns of a loop not traced, nothing changed: two loads. */
extern uint32_t keel__tracer_gen;
void keel__trace_turn_slow(struct keel__core *c);
static inline void keel__trace_turn(struct keel__core *c)
{
	if (__atomic_load_n(&keel__tracer_gen, __ATOMIC_ACQUIRE) !=
		c->trace_gen ||
	    c->trace)
		keel__trace_turn_slow(c);
}
/* ns since the trace started, on the trace's clock (cheap while tracing). */
uint64_t keel__trace_clock(void);
void keel__trace_detach(struct keel__core *c);
void keel__trace_emit(struct keel__core *c, uint8_t type, uint8_t op,
		      uint32_t task, uint64_t a, uint64_t b);
uint64_t keel__trace_str_name(struct keel__core *c, const char *name);
uint64_t keel__trace_str_site(struct keel__core *c,
			      const struct keel_await_point *at);
uint64_t keel__trace_str_once(struct keel__core *c, const char *text);

/* An event site: one predictable branch when tracing is off; the
 * arguments are evaluated only when it is on. (KEEL_NO_TRACE compiles the
 * sites out: only to measure what the branches cost.) */
#ifdef KEEL_NO_TRACE
#define KEEL__TRACE(c, type, op, task, a, b) ((void)(c))
#else
#define KEEL__TRACE(c, type, op, task, a, b)                                   \
	do {                                                                   \
		if (__builtin_expect((c)->trace != NULL, 0))                   \
			keel__trace_emit((c), (type), (op), (task),            \
					 (uint64_t)(a), (uint64_t)(b));        \
	} while (0)
#endif

/* Timers (core/timer.c): fire every timer due at c->now (step 5 of the
 * turn); free them (at teardown, before the frames holding timers). */
void keel__timers_expire(struct keel_loop *loop);
void keel__timers_fini(struct keel__timers *h);
uint64_t keel__timers_next_slow(struct keel__core *c);

/* A timer's `where` when not armed, and while it waits among the timers
 * armed since the wheel last took them in (core/timer.c: settle()). */
#define KEEL__TIMER_NOT_ARMED UINT32_MAX
#define KEEL__TIMER_FRESH     (KEEL__TIMER_LEVELS * 64 + 3)

static inline void keel__timer_fresh_push(struct keel__timers *h,
					  struct keel_timer *timer)
{
	timer->where = KEEL__TIMER_FRESH;
	timer->index = h->nfresh;
	h->fresh[h->nfresh++] = timer;
}

/* Every arm but the common one (core/timer.c). */
int keel__timer_arm_slow(struct keel__core *c, struct keel_timer *timer,
			 uint64_t deadline_ns);

/* keel_timer_arm(): the common case (a timer not armed, room in the fresh
 * array and in the heap) inline, so that a sleep arms without a call. */
static inline int keel__timer_arm(struct keel__core *c,
				  struct keel_timer *timer,
				  uint64_t deadline_ns)
{
	struct keel__timers *h = &c->timers;

	if (__builtin_expect(timer->where != KEEL__TIMER_NOT_ARMED ||
				 h->heap.cap <= h->n ||
				 h->nfresh == h->fresh_cap,
			     0))
		return keel__timer_arm_slow(c, timer, deadline_ns);
	timer->deadline = deadline_ns;
	timer->seq = ++h->seq;
	h->n++;
	keel__timer_fresh_push(h, timer);
	return 0;
}

/* keel_timer_init() and keel_timer_arm() in one, for a timer of keel's
 * own that is not armed (a sleep's). */
static inline int keel__timer_start(struct keel_loop *loop,
				    struct keel_timer *timer, keel_timer_fn fn,
				    void *arg, uint64_t deadline_ns)
{
	timer->where = KEEL__TIMER_NOT_ARMED;
	timer->fn = fn;
	timer->arg = arg;
	return keel__timer_arm(keel__core_of(loop), timer, deadline_ns);
}

/* The sleep record of task slot `id`, or NULL if its chunk is not made
 * yet (keel__sleep_make() makes it). */
static inline struct keel__sleep *keel__sleep_at(const struct keel__core *c,
						 uint32_t id)
{
	uint32_t chunk = id >> KEEL__SLEEP_CHUNK_SHIFT;

	if (chunk >= c->sleep_chunks || !c->sleeps[chunk])
		return NULL;
	return &c->sleeps[chunk][id & (KEEL__SLEEP_CHUNK - 1)];
}

/* `t`'s sleep, if it sleeps (its record's timer is armed for it). */
static inline struct keel__sleep *keel__sleep_of(const struct keel__core *c,
						 const struct keel_task *t)
{
	struct keel__sleep *s = keel__sleep_at(c, t->id);

	return s && s->timer.where != KEEL__TIMER_NOT_ARMED && s->timer.arg == t
		   ? s
		   : NULL;
}

/* keel__sleep_at(), making the chunk if it must: NULL without memory.
 * keel__sleeps_fini() frees them all (the loop's teardown). */
struct keel__sleep *keel__sleep_make(struct keel__core *c, uint32_t id);
void keel__sleeps_fini(struct keel__core *c);

/* A tick of the timing wheel: 2^16 ns (65.5 us). See timer.c. */
#define KEEL__TICK_SHIFT 16

/*
 * The deadline of the nearest timer, or UINT64_MAX: exact, so that the
 * loop's wait ends at the first deadline, not at a tick's edge. Inline for
 * the common case: the nearer of the run's head and the near heap's top is
 * due by the wheel's cursor, so it is the nearest. Otherwise (or with
 * timers armed since the wheel last took them in) the wheel takes them in
 * and moves its cursor on to its nearest slot first (which changes nothing
 * anyone can see: hence the cast). It sets h->due_floor to the answer.
 */
static inline uint64_t keel__timers_next(const struct keel_loop *loop)
{
	struct keel__core *c = (struct keel__core *)(uintptr_t)loop;
	struct keel__timers *h = &c->timers;
	uint64_t next = UINT64_MAX;

	if (!h->n)
		return h->due_floor = UINT64_MAX;
	if (h->heap.n)
		next = h->heap.v[0].deadline;
	if (h->run.head < h->run.n && h->run.v[h->run.head].deadline < next)
		next = h->run.v[h->run.head].deadline;
	if (!(!h->nfresh && next != UINT64_MAX &&
	      next >> KEEL__TICK_SHIFT <= h->base))
		next = keel__timers_next_slow(c);
	return h->due_floor = next;
}

/* Tokens (core/cancel.c). */
int keel__tokens_init(struct keel__core *c, struct keel_loop *loop);
void keel__tokens_fini(struct keel__core *c);
/* The cause of the token `t` observes: 0 if not cancelled. One test while
 * no token of the loop is cancelled (every await asks). */
static inline int keel__task_cancel_cause(const struct keel_task *t)
{
	const struct keel__core *c = (const struct keel__core *)t->loop;

	if (__builtin_expect(!c->cancelled, 1))
		return 0;
	if (t->ext && t->ext->token)
		return t->ext->token->cause;
	return c->root->cause;
}
/* Count `n` tokens of the loop more (or fewer) cancelled. */
static inline void keel__cancelled_add(struct keel__core *c, int n)
{
	c->cancelled += (uint32_t)n;
	c->op_slow.why.cancelled = c->cancelled != 0;
}
/* Make an exiting task stop observing its token. */
void keel__task_drop_token(struct keel_task *t);
/* Give a new task the token of the task spawning it, if any. */
int keel__task_inherit_token(struct keel_task *child,
			     const struct keel_task *parent);
/* The ext of `t`, allocated on first use; NULL when out of memory. Inline:
 * every wait that can be cancelled asks, and all but a task's first find
 * it there. */
struct keel__task_ext *keel__task_ext_new(struct keel_task *t);
static inline struct keel__task_ext *keel__task_ext(struct keel_task *t)
{
	return __builtin_expect(t->ext != NULL, 1) ? t->ext
						   : keel__task_ext_new(t);
}

/* Abort frames (core/abort.c). */
/* The step of c->current panicked: unwind it (defers, exit, joiner). */
void keel__task_aborted(struct keel__core *c, struct keel_task *t);
/* Hand an exited task's abort record to whoever collects its status. */
void keel__abort_transfer(struct keel_task *from, struct keel_abort *to);
void keel__abort_clear(struct keel_abort *a);

/*
 * Oneshots (core/sync.c; semantics in keel/sync.h). Defined here so that
 * one can live inside another object: an actor's ask holds its reply slot
 * in its envelope's allocation (supervise/actor.c).
 */
struct keel_oneshot {
	struct keel_loop *loop; /* the receiver's */
	unsigned state;		/* OS_* bits (sync.c), atomic */
	uint32_t refs;		/* atomic */
	void *value;		/* written before SENT is published */
	int err;		/* written before CLOSED is published */
	keel_mb_drop_fn on_drop;
	void *drop_arg;
	/* Instead of free() when the last reference goes (embedded). */
	void (*done)(struct keel_oneshot *os);
	/* The receiver's side: its loop's thread only. */
	struct keel_task *receiver;
	void **out;
	struct keel_timer timer; /* the receive's deadline */
	struct keel__remote_item wake;
};

/* Make a oneshot in zeroed memory, holding one reference (no on_drop);
 * `done`, if not NULL, runs instead of free() when the last one goes. */
void keel__oneshot_init(struct keel_oneshot *os, struct keel_loop *loop,
			void (*done)(struct keel_oneshot *os));

/* Mailboxes (core/mailbox.c): open a closed mailbox again (owner loop;
 * nobody may be blocked on it). For actors that a supervisor restarts. */
void keel__mb_reopen(struct keel_mailbox *mb);

/*
 * For a select (io/select_wait.c), which arms several waits of one task.
 * keel__mb_select_take: take a message now: 0 (in *out), -EPIPE (closed
 * and empty), -EAGAIN (empty), -EBUSY (someone receives). arm: make `t`
 * the receiver; a message (or the close) goes to *out and is reported
 * through t->ext->select_wake(t, mb, res). disarm: stop receiving.
 */
int keel__mb_select_take(struct keel_mailbox *mb, void **out);
int keel__mb_select_arm(struct keel_task *t, struct keel_mailbox *mb,
			void **out);
void keel__mb_select_disarm(struct keel_mailbox *mb, struct keel_task *t);
/*
 * keel__join_select_check: 1 if `target` exited (joined: *status holds its
 * exit status, its frame is released), 0 if not yet, or keel_join()'s
 * -EINVAL / -EBUSY / -EDEADLK. A select then arms by making `self` the
 * joiner: the exit is reported through self->ext->select_wake(self,
 * target, status), after the same release.
 */
int keel__join_select_check(struct keel_task *self, struct keel_task *target,
			    int *status);
/*
 * Deadlock detection (core/deadlock.c): what a waiting task waits for, and
 * which tasks can end that wait (the edges of the wait-for graph). Each
 * kind of wait answers for itself, from the primitive's own bookkeeping;
 * `by` may hold a task that has exited meanwhile (a mutex left locked):
 * deadlock.c checks each against the loop's task table before use.
 */
#define KEEL__WF_MAX 6
struct keel__wf {
	const char *what; /* "mutex", "mailbox"...; NULL: no wait of keel's */
	const void *obj;  /* the primitive (printed as an address) */
	const char *rel;  /* how `by` relate to it: "held by", "received by" */
	const char *note; /* why there is no edge, or NULL */
	struct keel_task *by[KEEL__WF_MAX];
	/* Nonzero: by[i] only if its task table slot is in this generation
	 * (the task may have exited, and another taken its frame). */
	uint32_t by_gen[KEEL__WF_MAX];
	unsigned n;
	bool last_ahead; /* by[n - 1] is not a holder but queued ahead */
};
/* Each fills `out` and returns true if `t` (waiting) waits in its kind. */
bool keel__sync_waits_for(struct keel_task *t, struct keel__wf *out);
bool keel__mb_waits_for(struct keel_task *t, struct keel__wf *out);
bool keel__join_waits_for(struct keel_task *t, struct keel__wf *out);
/*
 * Find the cycles of `loop`'s wait-for graph (its thread only); write one
 * line per cycle into `buf` (as snprintf; may be NULL with len 0) and
 * return the number of cycles, or -ENOMEM. Cycles not found by the
 * previous check are counted in `deadlocks`.
 */
int keel__deadlock_check(struct keel_loop *loop, char *buf, size_t len,
			 size_t *need);

/* Scopes (core/scope.c): a child of a scope exited with `status`. */
void keel__scope_child_exited(struct keel_task *t, int status);
void keel__scope_orphan_all(struct keel_task *owner);

/* Allocator (core/alloc.c). */
int keel__alloc_init(struct keel__alloc *a);
void keel__alloc_fini(struct keel__alloc *a);
void *keel__alloc_zeroed(struct keel__alloc *a, size_t size);
/* keel__alloc_part() and keel__alloc_free() beyond their fast paths. */
void *keel__alloc_part_slow(struct keel__alloc *a, size_t size, size_t zero);
void keel__alloc_free_slow(struct keel__alloc *a, void *p, size_t size);
/* Give back the slabs whose frames are all free, when free frames outweigh
 * live ones (off the hot path: the loop's periodic work calls it). Returns
 * the number of slabs given back. */
size_t keel__alloc_trim(struct keel__alloc *a);

/* Frames zeroed inline, in 64-byte stores, up to this size. */
#define KEEL__ZERO_INLINE 256u

/*
 * The allocator's fast path, inline because every spawn takes it: a small
 * block, wholly zeroed (`zero` >= `size`), off its class's free list; NULL
 * when it does not apply (the caller then takes keel__alloc_part_slow()).
 * It is zeroed with fixed-size 64-byte stores, the last one ending at the
 * class's end (overlapping the one before): a memset whose length the
 * compiler only bounds becomes `rep stos`, which costs some 30 cycles to
 * start (more than the rest of a spawn). (A partly zeroed block goes the
 * slow way: its tail must stay as it was.)
 */
static inline void *keel__alloc_try(struct keel__alloc *a, size_t size,
				    size_t zero)
{
#ifndef KEEL_ALLOC_LIBC
	size_t cls = keel__alloc_class(size);
	size_t end = cls << KEEL__FRAME_CLASS_SHIFT;
	char *p;

	/* Up to KEEL__ZERO_INLINE bytes: a small class (one test for both). */
	_Static_assert(KEEL__ZERO_INLINE >> KEEL__FRAME_CLASS_SHIFT <
			   KEEL__FRAME_CLASSES,
		       "inline-zeroed blocks are of small classes");
	if (size > KEEL__ZERO_INLINE || zero < size || !(p = a->cached[cls]))
		return NULL;
	a->cached[cls] = *(void **)p;
	a->live++;
	__builtin_memset(p, 0, 64);
	if (end > 64) {
		__builtin_memset(p + end - 64, 0, 64);
		if (end > 128) {
			__builtin_memset(p + 64, 0, 64);
			if (end > 192)
				__builtin_memset(p + 128, 0, 64);
		}
	}
	return p;
#else
	(void)a;
	(void)size;
	(void)zero;
	return NULL;
#endif
}

/* A block of `size` bytes with the first `zero` zeroed, or NULL. */
static inline void *keel__alloc_part(struct keel__alloc *a, size_t size,
				     size_t zero)
{
	void *p = keel__alloc_try(a, size, zero);

	return p ? p : keel__alloc_part_slow(a, size, zero);
}

static inline void keel__alloc_free(struct keel__alloc *a, void *p, size_t size)
{
#ifndef KEEL_ALLOC_LIBC
	size_t cls = keel__alloc_class(size);

	if (__builtin_expect(cls < KEEL__FRAME_CLASSES, 1)) {
		a->live--;
		*(void **)p = a->cached[cls];
		a->cached[cls] = p;
		return;
	}
#endif
	keel__alloc_free_slow(a, p, size);
}

/*
 * Blocks that any thread may free (an actor's envelopes: a tell to another
 * loop's actor is freed there): malloc'd, so that free() is always right;
 * but a loop keeps up to KEEL__SHARED_KEEP blocks of each class that were
 * freed on its thread, and hands them out again zeroed: a pop and some
 * stores instead of jemalloc's calloc and free, about 150 instructions an
 * ask (callgrind). The lists are the running loop's (keel__current_core),
 * so they take no lock; a thread running no loop, a block over 256 bytes,
 * an empty or a full list go to calloc or free. Every block of a class is
 * allocated with the class's size, so any of them serves any request of
 * that class. keel__shared_free() takes the size that was asked for.
 */
/* Under ASan (and UBSan) blocks go to calloc and free, so that it sees
 * each one's lifetime; TSan's builds keep the lists, so that it checks
 * that only their loop's thread uses them. */
#if defined(KEEL_ALLOC_LIBC) && !defined(__SANITIZE_THREAD__)
#if !defined(__has_feature)
#define KEEL__SHARED_LIBC 1
#elif !__has_feature(thread_sanitizer)
#define KEEL__SHARED_LIBC 1
#endif
#endif

static inline size_t keel__shared_class(size_t size)
{
	return (size - 1) >> KEEL__FRAME_CLASS_SHIFT;
}

static inline void *keel__shared_calloc(size_t size)
{
#ifndef KEEL__SHARED_LIBC
	struct keel__core *c = keel__current_core;
	size_t cls = keel__shared_class(size);
	void **p;

	if (cls < KEEL__SHARED_CLASSES) {
		if (c && (p = c->alloc.shared[cls])) {
			c->alloc.shared[cls] = *p;
			c->alloc.nshared[cls]--;
			return __builtin_memset(p, 0, size);
		}
		size = (cls + 1) << KEEL__FRAME_CLASS_SHIFT;
	}
#endif
	return calloc(1, size);
}

static inline void keel__shared_free(void *p, size_t size)
{
#ifndef KEEL__SHARED_LIBC
	struct keel__core *c = keel__current_core;
	size_t cls = keel__shared_class(size);

	if (c && cls < KEEL__SHARED_CLASSES &&
	    c->alloc.nshared[cls] < KEEL__SHARED_KEEP) {
		*(void **)p = c->alloc.shared[cls];
		c->alloc.shared[cls] = p;
		c->alloc.nshared[cls]++;
		return;
	}
#else
	(void)size;
#endif
	free(p);
}

/* Tasks (core/task.c). */
/* keel_spawn(), optionally with the task's ext allocated (or failing). */
void *keel__spawn(struct keel_loop *loop, const struct keel_task_type *type,
		  unsigned flags, bool with_ext);
int keel__core_init(struct keel__core *c);
void keel__core_fini(struct keel__core *c);

/* Queue a task that is not queued (a wake, a yield). */
static inline void keel__task_enqueue(struct keel__core *c, struct keel_task *t)
{
	if (t->flags & KEEL__T_EXTERNAL)
		c->external_waits--;
	t->flags =
	    (uint8_t)((t->flags & ~(KEEL__T_WAITING | KEEL__T_EXTERNAL)) |
		      KEEL__T_QUEUED);
	keel__taskq_push(&c->runq[t->prio], t);
	c->runnable++;
}

/* keel__task_wake() of a task queued, exited or killed. */
void keel__task_wake_other(struct keel_task *t);

/*
 * Make a waiting task runnable (no-op if it already is, or has exited; a
 * killed task finishes dying instead). Inline: every wake on the loop's
 * own thread (a mailbox, a join, a lock) comes here.
 */
static inline void keel__task_wake(struct keel_task *t)
{
	if (__builtin_expect(
		t->flags & (KEEL__T_QUEUED | KEEL__T_EXITED | KEEL__T_KILLED),
		0))
		keel__task_wake_other(t);
	else
		keel__task_enqueue(keel__core_of(t->loop), t);
}

/* A killed task's last wait ended: finish killing it (core/kill.c). */
void keel__task_kill_later(struct keel_task *t);

/* Wake `t` with `res` as the result of its await. */
static inline void keel__task_complete(struct keel_task *t, int res)
{
	t->res = res;
	keel__task_wake(t);
}

/* Ready-at-once awaits one step may complete before it must yield. */
#define KEEL__READY_PER_STEP 64

/*
 * An await whose result `res` is known at once does not suspend while the
 * step's allowance lasts (as tokio's coop budget); then it yields, so a task
 * whose awaits are always ready cannot starve the others.
 */
static inline int keel__task_ready_in(struct keel__core *c, struct keel_task *t,
				      int res)
{
	t->res = res;
	/* Spent (or below: it stays there until the next step) means yield;
	 * the decrement first is one instruction with its test. */
	if (__builtin_expect(--c->ready_budget < 0, 0))
		return keel_yield(t);
	return KEEL_READY;
}

/* keel__task_ready_in() for a caller that has not got t's core at hand
 * (one that has passes it: stores in between make the compiler load
 * t->loop again). */
static inline int keel__task_ready(struct keel_task *t, int res)
{
	return keel__task_ready_in(keel__core_of(t->loop), t, res);
}

/*
 * Suspend on something only another thread may complete (a mailbox fed by
 * other loops): the loop may then block with nothing in flight.
 */
static inline int keel__task_suspend_external_in(struct keel__core *c,
						 struct keel_task *t)
{
	c->external_waits++;
	t->flags |= KEEL__T_EXTERNAL | KEEL__T_WAITING;
	return KEEL_PENDING;
}

static inline int keel__task_suspend_external(struct keel_task *t)
{
	return keel__task_suspend_external_in(keel__core_of(t->loop), t);
}

/* Mark the task suspended; the await returns KEEL_PENDING. */
static inline int keel__task_suspend(struct keel_task *t)
{
	t->flags |= KEEL__T_WAITING;
	return KEEL_PENDING;
}

/*
 * Called by the ledger when the kernel returned the last op of an exited
 * task (a zombie): frees its frame if nothing else holds it.
 */
void keel__task_ops_drained(struct keel_task *t);

/* Run every remaining defer of `t` (LIFO). */
void keel__task_run_defers(struct keel_task *t);

/* Free a task's frame and table slot (no ops may be in flight). */
void keel__task_free(struct keel_task *t);

/* Called by the loop after a step returned KEEL__EXITED: count a zombie,
 * or free the frame if neither the kernel nor a joiner holds it. */
static inline void keel__task_after_exit(struct keel_task *t)
{
	if (t->inflight)
		keel__core_of(t->loop)->count.zombies++;
	else if ((t->flags & (KEEL__T_JOINABLE | KEEL__T_RELEASED)) !=
		 KEEL__T_JOINABLE)
		keel__task_free(t);
}

#endif
