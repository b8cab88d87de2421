/* SPDX-License-Identifier: MIT */
/*
 * timer.c: the loop's clock and timers: a 4-ary min-heap of (deadline,
 * arming order).
 *
 * They are core's because every layer arms timers: token deadlines and
 * timed waits (core), sleeps and stream back-offs (io), the turn that fires
 * them (sched). The loop turn sets the clock (c->now) once per turn and
 * calls keel__timers_expire(); nothing here knows of io_uring.
 *
 * Arm and cancel are O(log n); a 4-ary heap halves the depth of a binary
 * one and keeps siblings in one cache line. Each timer knows its heap index,
 * so cancel needs no search.
 */
#include "core.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

__thread const uint64_t *keel__virtual_clock
    __attribute__((tls_model("initial-exec")));

#define ARITY	  4
#define NOT_ARMED UINT32_MAX

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
	e.timer->heap_index = i;
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

static void heap_remove(struct keel__timer_heap *h, uint32_t i)
{
	struct keel_timer *gone = h->v[i].timer;

	h->n--;
	if (i != h->n) {
		place(h, i, h->v[h->n]);
		sift_down(h, i);
		sift_up(h, h->v[i].timer->heap_index);
	}
	gone->heap_index = NOT_ARMED;
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

void keel_timer_init(struct keel_timer *timer, keel_timer_fn fn, void *arg)
{
	timer->deadline = 0;
	timer->seq = 0;
	timer->heap_index = NOT_ARMED;
	timer->fn = fn;
	timer->arg = arg;
}

int keel_timer_arm(struct keel_loop *loop, struct keel_timer *timer,
		   uint64_t deadline_ns)
{
	struct keel__timer_heap *h = &keel__core_of(loop)->timers;

	if (timer->heap_index != NOT_ARMED)
		heap_remove(h, timer->heap_index);
	if (h->n == h->cap && heap_grow(h))
		return -ENOMEM;
	timer->deadline = deadline_ns;
	timer->seq = ++h->seq;
	h->v[h->n] = (struct keel__heap_entry){deadline_ns, timer};
	timer->heap_index = h->n++;
	sift_up(h, timer->heap_index);
	return 0;
}

int keel_timer_arm_after(struct keel_loop *loop, struct keel_timer *timer,
			 uint64_t delay_ns)
{
	return keel_timer_arm(loop, timer, keel__core_of(loop)->now + delay_ns);
}

bool keel_timer_cancel(struct keel_loop *loop, struct keel_timer *timer)
{
	if (timer->heap_index == NOT_ARMED)
		return false;
	heap_remove(&keel__core_of(loop)->timers, timer->heap_index);
	return true;
}

void keel__timers_fini(struct keel__timer_heap *h)
{
	for (uint32_t i = 0; i < h->n; i++)
		h->v[i].timer->heap_index = NOT_ARMED;
	free(h->block);
	h->block = NULL;
	h->v = NULL;
	h->n = h->cap = 0;
}

void keel__timers_expire(struct keel_loop *loop)
{
	struct keel__core *c = keel__core_of(loop);
	struct keel__timer_heap *h = &c->timers;
	uint64_t now = c->now;
	/* Timers armed by the callbacks below wait for the next turn, so a
	 * callback that re-arms itself at `now` cannot loop forever. */
	uint64_t last_seq = h->seq;

	while (h->n && h->v[0].deadline <= now &&
	       h->v[0].timer->seq <= last_seq) {
		struct keel_timer *timer = h->v[0].timer;

		heap_remove(h, 0);
		h->fired++;
		KEEL__TRACE(c, KEEL_EV_TIMER_FIRE, 0, UINT32_MAX,
			    now - timer->deadline, 0);
		timer->fn(loop, timer, timer->arg);
	}
}

uint64_t keel_loop_now(const struct keel_loop *loop)
{
	return ((const struct keel__core *)loop)->now;
}
