/* SPDX-License-Identifier: MIT */
/*
 * timer.c: the loop's clock and timers: a hierarchical timing wheel for
 * what is not due yet; for what is due up to the wheel's cursor, a sorted
 * run of one tick's timers and a 4-ary min-heap of (deadline, arming
 * order).
 *
 * They are core's because every layer arms timers: token deadlines and
 * timed waits (core), sleeps and stream back-offs (io), the turn that fires
 * them (sched). The loop turn sets the clock (c->now) once per turn and
 * calls keel__timers_expire(); nothing here knows of io_uring.
 *
 * The wheel: 6 levels of 64 slots; a tick is 2^16 ns (65.5 us), so level 0
 * spans 4.2 ms, level L 64^L ticks a slot, and the six 52 days; what lies
 * further out waits in an overflow slot. A timer goes to the level of the
 * highest 6-bit group in which its tick differs from the cursor (`base`),
 * as in Linux's and tokio's wheels; a bitmap per level finds the nearest
 * slot without a walk. Arm and cancel are O(1): a slot is an array, and a
 * timer knows its place in it. When the cursor reaches a slot, its timers
 * go down a level or, once their tick is the cursor's, into the run or the
 * heap.
 *
 * The run and the heap are the exact part: timers fire from them alone,
 * in deadline order and ties in arming order, and never early (the
 * deadline, not the tick, is compared with the clock); the nearer of
 * their heads is the loop's next deadline, to the ns (keel__timers_next()),
 * so a 1 ms sleep takes 1 ms and a simulated run wakes when it did before
 * the wheel. The run is a level-0 slot's timers, sorted at once when the
 * cursor reaches it (run_fill()); the heap takes the rest that are due by
 * the cursor (those armed at or before it, a slot that came due while the
 * run was not empty), so it stays small and in cache where one heap of
 * every timer missed it at each level. Every timer has room reserved in
 * the heap: a wheel slot or a run that cannot grow sends its timers there
 * (still exact, see next_slow()), so only arming can fail.
 *
 * Why a slot keeps arming order unless a cancel breaks it: arming appends
 * (the newest last); a cascade appends a slot's timers in its order, and
 * only to slots that were empty (the cursor reaches a slot before any
 * timer can be armed into the slots it splits into).
 */
#include "core.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

__thread const uint64_t *keel__virtual_clock
    __attribute__((tls_model("initial-exec")));

#define ARITY	  4
#define NOT_ARMED KEEL__TIMER_NOT_ARMED

#define TICK_SHIFT    KEEL__TICK_SHIFT
#define LEVEL_BITS    6
#define SLOTS	      (1u << LEVEL_BITS)
#define LEVELS	      6
#define SPAN_BITS     (LEVELS * LEVEL_BITS)
#define OVERFLOW_SLOT (LEVELS * SLOTS) /* beyond the span: level LEVELS */
#define IN_HEAP	      (OVERFLOW_SLOT + 1)
#define IN_RUN	      (OVERFLOW_SLOT + 2)
#define IN_FRESH      KEEL__TIMER_FRESH

_Static_assert(LEVELS == KEEL__TIMER_LEVELS, "core.h sizes the bitmaps");
_Static_assert(IN_FRESH == OVERFLOW_SLOT + 3, "core.h places the fresh");

/* A wheel slot: its timers, in no order (the heap sorts them). */
struct keel__timer_slot {
	struct keel_timer **v;
	uint32_t n;
	uint32_t cap;
};

static inline uint64_t tick_of(uint64_t deadline)
{
	return deadline >> TICK_SHIFT;
}

/*
 * The run fires in deadline order, which is no order in memory: with
 * 100k timers each one and what its callback reads (its `arg`: a sleep's
 * task) miss the cache. Those of the entries a few ahead are fetched
 * meanwhile: the timer RUN_AHEAD entries on, the arg of the one half as
 * far (its timer fetched by then), the last RUN_AHEAD of a run not: a
 * run is hundreds. An armed timer's memory is live, and a cancelled
 * one's entry is NULL, so the load of `arg` is safe. (Always
 * inline: GCC 12 drops the call of a function that only prefetches, as
 * if it did nothing.)
 */
#define RUN_AHEAD 8

static inline __attribute__((always_inline)) void
run_prefetch(const struct keel__timer_run *r)
{
	uint32_t near = r->head + RUN_AHEAD / 2, far = r->head + RUN_AHEAD;

	if (far < r->n) {
		__builtin_prefetch(r->v[far].timer, 1);
		if (r->v[near].timer)
			__builtin_prefetch(r->v[near].timer->arg, 1);
	}
}

/* A walk over an array of timers (arming order: no order in memory)
 * reads each: fetch the one RUN_AHEAD on. (A NULL is fetched harmlessly:
 * a prefetch never faults.) */
static inline __attribute__((always_inline)) void
walk_prefetch(struct keel_timer *const *v, uint32_t i, uint32_t n)
{
	if (i + RUN_AHEAD < n)
		__builtin_prefetch(v[i + RUN_AHEAD], 1);
}

static inline bool earlier(const struct keel__heap_entry *a,
			   const struct keel__heap_entry *b)
{
	return a->deadline < b->deadline ||
	       (a->deadline == b->deadline && a->timer->seq < b->timer->seq);
}

static inline void place(struct keel__timer_heap *h, uint32_t i,
			 struct keel__heap_entry e)
{
	h->v[i] = e;
	e.timer->index = i;
}

static void sift_up(struct keel__timer_heap *h, uint32_t i)
{
	struct keel__heap_entry e = h->v[i];

	while (i > 0) {
		uint32_t parent = (i - 1) / ARITY;

		if (!earlier(&e, &h->v[parent]))
			break;
		place(h, i, h->v[parent]);
		i = parent;
	}
	place(h, i, e);
}

static void sift_down(struct keel__timer_heap *h, uint32_t i)
{
	struct keel__heap_entry e = h->v[i];

	for (;;) {
		uint32_t first = i * ARITY + 1, best = i;
		const struct keel__heap_entry *min = &e;

		if (first >= h->n)
			break;
		uint32_t last = first + ARITY < h->n ? first + ARITY : h->n;

		for (uint32_t c = first; c < last; c++)
			if (earlier(&h->v[c], min)) {
				min = &h->v[c];
				best = c;
			}
		if (best == i)
			break;
		place(h, i, h->v[best]);
		i = best;
	}
	place(h, i, e);
}

static __attribute__((noinline)) void heap_remove(struct keel__timer_heap *h,
						  uint32_t i)
{
	struct keel_timer *gone = h->v[i].timer;

	h->n--;
	if (i != h->n) {
		place(h, i, h->v[h->n]);
		sift_down(h, i);
		sift_up(h, h->v[i].timer->index);
	}
	gone->where = NOT_ARMED;
}

/*
 * The children of entry i are 4i+1 .. 4i+4: with the array starting three
 * entries (48 bytes) past a 64-byte boundary, every group of four siblings
 * (16 bytes each) fills exactly one cache line, so each level of a sift
 * touches one line. With 100k timers the heap outgrows L2 and these misses
 * are most of the cost.
 */
#define HEAP_PAD 3

static int heap_grow(struct keel__timer_heap *h)
{
	uint32_t cap = h->cap ? h->cap * 2 : 256;
	size_t bytes = (cap + HEAP_PAD) * sizeof(struct keel__heap_entry);
	void *block = aligned_alloc(64, (bytes + 63) & ~(size_t)63);

	if (!block)
		return -ENOMEM;
	struct keel__heap_entry *v =
	    (struct keel__heap_entry *)block + HEAP_PAD;

	if (h->n)
		memcpy(v, h->v, h->n * sizeof(*v));
	free(h->block);
	h->block = block;
	h->v = v;
	h->cap = cap;
	return 0;
}

/* Room reserved: see the top of the file. Out of line: the wheel's path
 * is the one to keep short. */
static __attribute__((noinline)) void heap_push(struct keel__timer_heap *h,
						struct keel_timer *timer)
{
	h->v[h->n] = (struct keel__heap_entry){timer->deadline, timer};
	timer->where = IN_HEAP;
	timer->index = h->n++;
	sift_up(h, timer->index);
}

/*
 * While a run is sorted, its entries' `deadline` holds a key: the
 * deadline's 16 bits below the tick (a run's timers all have one tick)
 * above the arming order, as an offset into the last 2^48 arms (a slot
 * with a timer armed longer ago than that goes to the heap). Up to
 * RUN_SMALL timers are sorted by insertion on the whole key; more, by two
 * stable radix passes over its deadline bits, when the slot was in arming
 * order (see the top of the file; else the heap sorts them): insertion
 * costs the square of the count, the radix passes a fixed 512 counters.
 */
#define RUN_SMALL    32
#define KEY_SEQ_BITS 48
#define KEY_LO(key)  ((key) >> KEY_SEQ_BITS & 255)
#define KEY_HI(key)  ((key) >> (KEY_SEQ_BITS + 8))

static int run_grow(struct keel__timer_run *r, uint32_t n)
{
	uint32_t cap = r->cap ? r->cap : 64;
	struct keel__heap_entry *v;

	while (cap < n)
		cap *= 2;
	v = malloc(2 * (size_t)cap * sizeof(*v));
	if (!v)
		return -ENOMEM;
	free(r->v);
	r->v = v;
	r->tmp = v + cap;
	r->cap = cap;
	return 0;
}

static void run_insertion(struct keel__heap_entry *e, uint32_t n)
{
	for (uint32_t i = 1; i < n; i++) {
		struct keel__heap_entry x = e[i];
		uint32_t j = i;

		for (; j > 0 && e[j - 1].deadline > x.deadline; j--)
			e[j] = e[j - 1];
		e[j] = x;
	}
}

/* Stable: `e` (in arming order) by its keys' deadline bits, through
 * `tmp`. */
static void run_radix(struct keel__heap_entry *e, struct keel__heap_entry *tmp,
		      uint32_t n)
{
	uint32_t lo[256] = {0}, hi[256] = {0}, sum_lo = 0, sum_hi = 0;

	for (uint32_t i = 0; i < n; i++) {
		lo[KEY_LO(e[i].deadline)]++;
		hi[KEY_HI(e[i].deadline)]++;
	}
	for (unsigned k = 0; k < 256; k++) {
		uint32_t l = lo[k], h = hi[k];

		lo[k] = sum_lo;
		hi[k] = sum_hi;
		sum_lo += l;
		sum_hi += h;
	}
	for (uint32_t i = 0; i < n; i++)
		tmp[lo[KEY_LO(e[i].deadline)]++] = e[i];
	for (uint32_t i = 0; i < n; i++)
		e[hi[KEY_HI(tmp[i].deadline)]++] = tmp[i];
}

/*
 * A level-0 slot has come due: its timers all have the cursor's tick.
 * Through the heap each would cost a sift up and a sift down through
 * hundreds (100k sleepers over 10 ms: 650 a tick); sorted at once into
 * the run, a few passes over the slot. The run must be empty (it is, but
 * for a cursor an empty wheel moved back); false (nothing done) when it
 * is not, when the keys cannot sort the slot or there is no memory for
 * the run: the heap takes its timers then.
 */
static bool run_fill(struct keel__timers *h, const struct keel__timer_slot *sl)
{
	struct keel__timer_run *r = &h->run;
	uint64_t span = (1ull << KEY_SEQ_BITS) - 1, prev = 0;
	uint64_t seq0 = h->seq > span ? h->seq - span : 0;
	uint32_t n = sl->n;
	struct keel__heap_entry *e;
	bool ordered = true;

	if (r->head < r->n || (r->cap < n && run_grow(r, n)))
		return false;
	e = r->tmp;
	for (uint32_t i = 0; i < n; i++) {
		struct keel_timer *t = sl->v[i];

		walk_prefetch(sl->v, i, n);
		if (t->seq < seq0)
			return false;
		ordered &= t->seq > prev;
		prev = t->seq;
		e[i] = (struct keel__heap_entry){
		    (t->deadline & ((1ull << TICK_SHIFT) - 1)) << KEY_SEQ_BITS |
			(t->seq - seq0),
		    t};
	}
	if (n <= RUN_SMALL)
		run_insertion(e, n);
	else if (ordered)
		run_radix(e, r->v, n);
	else
		return false;
	for (uint32_t k = 0; k < n; k++) {
		struct keel_timer *t = e[k].timer;

		r->v[k] = (struct keel__heap_entry){t->deadline, t};
		t->where = IN_RUN;
		t->index = k;
	}
	r->head = 0;
	r->n = n;
	return true;
}

/* Entry i of the run goes; the head moves past those gone. */
static void run_remove(struct keel__timer_run *r, uint32_t i)
{
	r->v[i].timer = NULL;
	while (r->head < r->n && !r->v[r->head].timer)
		r->head++;
	if (r->head == r->n)
		r->head = r->n = 0;
}

/* The run's head fires: the head moves past it and those gone (its
 * entry is left as it is: nothing reads those before the head). */
static inline void run_pop(struct keel__timer_run *r)
{
	uint32_t i = r->head + 1;

	while (i < r->n && !r->v[i].timer)
		i++;
	if (i == r->n)
		r->head = r->n = 0;
	else
		r->head = i;
}

/* The nearest of the run's head and the heap's top, or NULL. */
static inline struct keel__heap_entry *due_top(struct keel__timers *h)
{
	struct keel__heap_entry *run =
	    h->run.head < h->run.n ? &h->run.v[h->run.head] : NULL;

	if (!h->heap.n || (run && earlier(run, &h->heap.v[0])))
		return run;
	return &h->heap.v[0];
}

/* The slot of a timer at `tick` (> base): the level of the highest group
 * of bits in which it differs from the cursor, and its group there. */
static inline uint32_t slot_of(uint64_t base, uint64_t tick)
{
	unsigned level =
	    (63u - (unsigned)__builtin_clzll(tick ^ base)) / LEVEL_BITS;

	if (level >= LEVELS)
		return OVERFLOW_SLOT;
	return level * SLOTS + (uint32_t)(tick >> (level * LEVEL_BITS)) % SLOTS;
}

/* A full slot: out of the arming path. */
static __attribute__((noinline)) int slot_grow(struct keel__timer_slot *sl)
{
	uint32_t cap = sl->cap ? sl->cap * 2 : 8;
	struct keel_timer **v = realloc(sl->v, cap * sizeof(*v));

	if (!v)
		return -ENOMEM;
	sl->v = v;
	sl->cap = cap;
	return 0;
}

/* Append to slot `id` (`sl`), which has room. */
static inline void slot_push(struct keel__timers *h,
			     struct keel__timer_slot *sl, uint32_t id,
			     struct keel_timer *timer)
{
	uint32_t i = sl->n++;

	sl->v[i] = timer;
	timer->where = id;
	timer->index = i;
	/* An occupied slot's bits are set already (slot_clear() clears them
	 * when it empties): with hundreds a slot, most pushes. */
	if (!i) {
		h->occupied[id / SLOTS] |= 1ull << id % SLOTS;
		h->levels |= 1u << id / SLOTS;
	}
}

/* Due by the cursor: the heap; else its wheel slot, or the heap if that
 * has no room. The slots exist (the first arm made them). */
static inline void insert(struct keel__timers *h, struct keel_timer *timer)
{
	uint64_t tick = tick_of(timer->deadline), base = h->base;
	uint32_t id;
	struct keel__timer_slot *sl;

	if (tick <= base)
		goto heap;
	id = slot_of(base, tick);
	sl = &h->slots[id];
	if (__builtin_expect(sl->n == sl->cap, 0) && slot_grow(sl))
		goto heap;
	slot_push(h, sl, id, timer);
	return;
heap:
	heap_push(&h->heap, timer);
}

static void slot_clear(struct keel__timers *h, uint32_t id)
{
	uint32_t level = id / SLOTS;

	h->occupied[level] &= ~(1ull << id % SLOTS);
	if (!h->occupied[level])
		h->levels &= ~(1u << level);
}

/* An armed timer in a wheel slot leaves it: its slot's last takes its
 * place. */
static inline void slot_unlink(struct keel__timers *h, struct keel_timer *timer)
{
	struct keel__timer_slot *sl = &h->slots[timer->where];
	struct keel_timer *last = sl->v[--sl->n];

	sl->v[timer->index] = last;
	last->index = timer->index;
	if (!sl->n)
		slot_clear(h, timer->where);
	timer->where = NOT_ARMED;
	h->n--;
}

/* An armed timer not yet taken in leaves its hole; the holes at the end
 * go (all of them when the newest is cancelled, as a timer armed and
 * cancelled within one turn is). */
static inline void fresh_unlink(struct keel__timers *h,
				struct keel_timer *timer)
{
	if (timer->index + 1 == h->nfresh) {
		h->nfresh--;
		while (h->fresh_holes && !h->fresh[h->nfresh - 1]) {
			h->nfresh--;
			h->fresh_holes--;
		}
	} else {
		h->fresh[timer->index] = NULL;
		h->fresh_holes++;
	}
	timer->where = NOT_ARMED;
	h->n--;
}

/* An armed timer in the heap or the run leaves it: out of the cancelling
 * path (a timer is most often cancelled before it is due). */
static __attribute__((noinline)) void due_unlink(struct keel__timers *h,
						 struct keel_timer *timer)
{
	if (timer->where == IN_HEAP)
		heap_remove(&h->heap, timer->index);
	else
		run_remove(&h->run, timer->index);
	timer->where = NOT_ARMED;
	h->n--;
}

static inline void unlink_timer(struct keel__timers *h,
				struct keel_timer *timer)
{
	if (timer->where == IN_FRESH)
		fresh_unlink(h, timer);
	else if (__builtin_expect(timer->where <= OVERFLOW_SLOT, 1))
		slot_unlink(h, timer);
	else
		due_unlink(h, timer);
}

/* The cursor has reached slot `id`: its timers go down (never to the
 * same slot: they differ from the cursor in lower bits only), or to the
 * heap. The overflow's may go back to it, so its array is taken first. */
static void cascade(struct keel__timers *h, uint32_t id)
{
	struct keel__timer_slot *sl = &h->slots[id];
	struct keel__timer_slot was = *sl;

	slot_clear(h, id);
	if (id < SLOTS && run_fill(h, sl)) {
		sl->n = 0;
		return;
	}
	if (id == OVERFLOW_SLOT)
		*sl = (struct keel__timer_slot){0};
	sl->n = 0;
	for (uint32_t i = 0; i < was.n; i++) {
		walk_prefetch(was.v, i, was.n);
		insert(h, was.v[i]);
	}
	if (id == OVERFLOW_SLOT) {
		if (sl->v)
			free(was.v);
		else
			*sl = (struct keel__timer_slot){was.v, 0, was.cap};
	}
}

/*
 * Move the cursor on to `target` (> base), or to the start of the nearest
 * occupied slot if that comes first, and cascade that slot. The nearest
 * slot is on the lowest occupied level (a level's slots all lie past the
 * level below's), and on it the first occupied (the cursor never passes
 * one): two bit scans. The overflow's "slot" starts the next span.
 */
static void advance(struct keel__timers *h, uint64_t target)
{
	uint64_t start;
	uint32_t level, id;

	if (!h->levels) {
		h->base = target;
		return;
	}
	level = (uint32_t)__builtin_ctz(h->levels);
	if (level == LEVELS) {
		start = (h->base | ((1ull << SPAN_BITS) - 1)) + 1;
		id = OVERFLOW_SLOT;
	} else {
		unsigned shift = level * LEVEL_BITS;
		uint32_t s = (uint32_t)__builtin_ctzll(h->occupied[level]);

		start = (h->base & ~((1ull << (shift + LEVEL_BITS)) - 1)) |
			(uint64_t)s << shift;
		id = level * SLOTS + s;
	}
	if (start > target) {
		h->base = target;
		return;
	}
	h->base = start;
	cascade(h, id);
}

/* An empty wheel may take any cursor: the clock's keeps the heap for what
 * is due (a cursor moved on to a far timer would send every nearer one
 * there). */
static inline uint64_t arm_base(const struct keel__core *c)
{
	return c->timers.levels ? c->timers.base : tick_of(c->now);
}

/*
 * The wheel takes in the timers armed since it last did, in arming order:
 * once a turn (keel__timers_expire(), keel__timers_next()), not at each
 * arm, so that a timer armed and cancelled within a turn (a deadline that
 * did not come: most of them) never touches the wheel.
 */
static void settle(struct keel__core *c)
{
	struct keel__timers *h = &c->timers;

	if (!h->nfresh)
		return;
	struct keel_timer **fresh = h->fresh;
	uint32_t n = h->nfresh;

	h->base = arm_base(c);
	for (uint32_t i = 0; i < n; i++) {
		walk_prefetch(fresh, i, n);
		if (fresh[i])
			insert(h, fresh[i]);
	}
	h->nfresh = h->fresh_holes = 0;
	/* Taken in: the turns' test no longer sees them as fresh. */
	h->due_floor = 0;
}

/*
 * The heap's top is the nearest timer when its tick is the cursor's or
 * before (every wheel timer's is after). If not, move the cursor on until
 * it is: to the top's tick, or to the wheel's nearest slot first.
 */
uint64_t keel__timers_next_slow(struct keel__core *c)
{
	struct keel__timers *h = &c->timers;

	settle(c);
	for (;;) {
		struct keel__heap_entry *top = due_top(h);

		if (top && tick_of(top->deadline) <= h->base)
			return top->deadline;
		if (!h->levels)
			return top ? top->deadline : UINT64_MAX;
		advance(h, top ? tick_of(top->deadline) : UINT64_MAX);
	}
}

void keel_timer_init(struct keel_timer *timer, keel_timer_fn fn, void *arg)
{
	timer->deadline = 0;
	timer->seq = 0;
	timer->where = NOT_ARMED;
	timer->index = 0;
	timer->fn = fn;
	timer->arg = arg;
}

/* The fresh array is full: without its holes if they are half of it (so
 * that it holds at most twice the timers in it), else twice as large. */
static int fresh_room(struct keel__timers *h)
{
	struct keel_timer **v;
	uint32_t cap, k = 0;

	if (h->fresh_holes && h->fresh_holes >= h->nfresh / 2) {
		for (uint32_t i = 0; i < h->nfresh; i++)
			if (h->fresh[i]) {
				h->fresh[k] = h->fresh[i];
				h->fresh[k]->index = k;
				k++;
			}
		h->nfresh = k;
		h->fresh_holes = 0;
		return 0;
	}
	cap = h->fresh_cap ? h->fresh_cap * 2 : 64;
	v = realloc(h->fresh, cap * sizeof(*v));
	if (!v)
		return -ENOMEM;
	h->fresh = v;
	h->fresh_cap = cap;
	return 0;
}

/*
 * Every arm but the common one: a timer armed already, a heap to grow
 * (the first arm too: the slots come with it), a full fresh array (with
 * no memory to grow it, the timer goes into the wheel at once). Out of
 * line, so that the common one is a leaf that saves no registers.
 */
__attribute__((noinline)) int keel__timer_arm_slow(struct keel__core *c,
						   struct keel_timer *timer,
						   uint64_t deadline_ns)
{
	struct keel__timers *h = &c->timers;

	if (timer->where != NOT_ARMED)
		unlink_timer(h, timer);
	if (!h->slots) {
		h->slots = calloc(OVERFLOW_SLOT + 1, sizeof(*h->slots));
		if (!h->slots)
			return -ENOMEM;
	}
	if (h->heap.cap <= h->n && heap_grow(&h->heap))
		return -ENOMEM;
	timer->deadline = deadline_ns;
	timer->seq = ++h->seq;
	h->n++;
	if (h->nfresh == h->fresh_cap && fresh_room(h)) {
		h->base = arm_base(c);
		insert(h, timer);
		h->due_floor = 0; /* not fresh: see settle() */
		return 0;
	}
	keel__timer_fresh_push(h, timer);
	return 0;
}

int keel_timer_arm(struct keel_loop *loop, struct keel_timer *timer,
		   uint64_t deadline_ns)
{
	return keel__timer_arm(keel__core_of(loop), timer, deadline_ns);
}

int keel_timer_arm_after(struct keel_loop *loop, struct keel_timer *timer,
			 uint64_t delay_ns)
{
	struct keel__core *c = keel__core_of(loop);

	return keel__timer_arm(c, timer, c->now + delay_ns);
}

bool keel_timer_cancel(struct keel_loop *loop, struct keel_timer *timer)
{
	if (timer->where == NOT_ARMED)
		return false;
	unlink_timer(&keel__core_of(loop)->timers, timer);
	return true;
}

void keel__timers_fini(struct keel__timers *h)
{
	for (uint32_t i = 0; i < h->heap.n; i++)
		h->heap.v[i].timer->where = NOT_ARMED;
	free(h->heap.block);
	for (uint32_t i = h->run.head; i < h->run.n; i++)
		if (h->run.v[i].timer)
			h->run.v[i].timer->where = NOT_ARMED;
	free(h->run.v);
	for (uint32_t i = 0; i < h->nfresh; i++)
		if (h->fresh[i])
			h->fresh[i]->where = NOT_ARMED;
	free(h->fresh);
	for (uint32_t id = 0; h->slots && id <= OVERFLOW_SLOT; id++) {
		for (uint32_t i = 0; i < h->slots[id].n; i++)
			h->slots[id].v[i]->where = NOT_ARMED;
		free(h->slots[id].v);
	}
	free(h->slots);
	*h = (struct keel__timers){.seq = h->seq, .fired = h->fired};
}

void keel__timers_expire(struct keel_loop *loop)
{
	struct keel__core *c = keel__core_of(loop);
	struct keel__timers *h = &c->timers;
	uint64_t now = c->now, now_tick = tick_of(now);
	/* Timers armed by the callbacks below wait for the next turn, so a
	 * callback that re-arms itself at `now` cannot loop forever. */
	uint64_t last_seq = h->seq;

	settle(c);

	while (h->n) {
		struct keel__heap_entry *top = due_top(h);
		uint64_t target = now_tick;

		if (top && tick_of(top->deadline) <= h->base) {
			struct keel_timer *timer = top->timer;

			if (top->deadline > now || timer->seq > last_seq)
				break;
			if (timer->where == IN_RUN) {
				run_prefetch(&h->run);
				run_pop(&h->run);
			} else {
				heap_remove(&h->heap, 0);
			}
			timer->where = NOT_ARMED;
			h->n--;
			h->fired++;
			KEEL__TRACE(c, KEEL_EV_TIMER_FIRE, 0, UINT32_MAX,
				    now - timer->deadline, 0);
			timer->fn(loop, timer, timer->arg);
			continue;
		}
		/* The wheel's due slots, one at a time: the heap holds one
		 * tick's timers, not all that are due. */
		if (top && tick_of(top->deadline) < target)
			target = tick_of(top->deadline);
		if (h->base >= target)
			break;
		advance(h, target);
	}
}

struct keel__sleep *keel__sleep_make(struct keel__core *c, uint32_t id)
{
	uint32_t chunk = id >> KEEL__SLEEP_CHUNK_SHIFT;
	struct keel__sleep *v;

	if (chunk >= c->sleep_chunks) {
		uint32_t n = c->sleep_chunks ? c->sleep_chunks : 4;
		struct keel__sleep **t;

		while (n <= chunk)
			n *= 2;
		t = realloc(c->sleeps, n * sizeof(*t));
		if (!t)
			return NULL;
		memset(t + c->sleep_chunks, 0,
		       (n - c->sleep_chunks) * sizeof(*t));
		c->sleeps = t;
		c->sleep_chunks = n;
	}
	if (!c->sleeps[chunk]) {
		v = aligned_alloc(64, KEEL__SLEEP_CHUNK * sizeof(*v));
		if (!v)
			return NULL;
		for (uint32_t i = 0; i < KEEL__SLEEP_CHUNK; i++)
			keel_timer_init(&v[i].timer, NULL, NULL);
		c->sleeps[chunk] = v;
	}
	return keel__sleep_at(c, id);
}

void keel__sleeps_fini(struct keel__core *c)
{
	for (uint32_t i = 0; i < c->sleep_chunks; i++)
		free(c->sleeps[i]);
	free(c->sleeps);
	c->sleeps = NULL;
	c->sleep_chunks = 0;
}

uint64_t keel_loop_now(const struct keel_loop *loop)
{
	return ((const struct keel__core *)loop)->now;
}
