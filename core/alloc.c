/* SPDX-License-Identifier: MIT */
/*
 * alloc.c: the frame allocator. Each loop allocates task frames from its own
 * jemalloc arena through its own explicit tcache, so loops on different
 * threads never contend.
 *
 * Small frames (up to 4 KiB) are carved from 64 KiB slabs of that arena and
 * recycled through free lists per 16-byte size class: mallocx/sdallocx with
 * explicit arena and tcache flags miss jemalloc's fast path (~140
 * instructions each, measured with callgrind), a free-list pop is a few.
 * Larger frames go straight to the arena with mallocx/sdallocx.
 *
 * Slabs are aligned to their size, so a frame's slab is its address rounded
 * down. The lists do not count free bytes (that would cost the fast paths);
 * keel__alloc_trim() does, rarely: from the loop's idle sweep, when free
 * frames outweigh live ones (idle connections that hibernated leave their
 * frames free), it gives back every slab whose frames are all free and has
 * the arena purge them, so that RSS drops rather than stay at its peak.
 *
 * Invariant: the explicit tcache and the slabs are used by one thread only;
 * a loop is, so this holds as long as frames are allocated and freed on the
 * loop's thread.
 *
 * The fast paths (a free-list pop or push) are inline in core.h
 * (keel__alloc_try, keel__alloc_free); this file has the rest.
 *
 * Sanitizer builds (KEEL_ALLOC_LIBC) use calloc/free instead, so that ASan
 * and TSan see the lifetime of every frame.
 */
#include "core.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#ifndef KEEL_ALLOC_LIBC
#include <jemalloc/jemalloc.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

#define CLASS_BYTES(cls) ((size_t)(cls) << KEEL__FRAME_CLASS_SHIFT)

/* A slab's first class-sized block. */
struct slab {
	struct slab *next; /* all slabs (keel__alloc.slabs) */
	uint32_t carved;   /* bytes carved into frames */
	uint32_t free;	   /* keel__alloc_trim(): free bytes on the lists */
};
_Static_assert(sizeof(struct slab) == CLASS_BYTES(1),
	       "the slab header is one class-sized block");

static inline struct slab *slab_of(const void *p)
{
	return (struct slab *)((uintptr_t)p &
			       ~(uintptr_t)(KEEL__SLAB_BYTES - 1));
}
#endif

int keel__alloc_init(struct keel__alloc *a)
{
	memset(a, 0, sizeof(*a));
	return 0;
}

#ifndef KEEL_ALLOC_LIBC
/*
 * The arena and its tcache are made at the first mallocx, not with the
 * loop: an arena's metadata is about 84 KiB of RSS (176 KiB for the
 * process's first), most of what a fresh loop cost before anything ran on
 * it. On the loop's thread, like every allocation here.
 */
static void arena_make(struct keel__alloc *a)
{
	size_t sz = sizeof(unsigned);

	a->arena_made = true;
	if (mallctl("arenas.create", &a->arena, &sz, NULL, 0) == 0) {
		a->have_arena = true;
		a->mallocx_flags |= MALLOCX_ARENA(a->arena);
	}
	sz = sizeof(unsigned);
	if (mallctl("tcache.create", &a->tcache, &sz, NULL, 0) == 0) {
		a->have_tcache = true;
		a->mallocx_flags |= MALLOCX_TCACHE(a->tcache);
	}
}

static inline int arena_flags(struct keel__alloc *a)
{
	if (!a->arena_made)
		arena_make(a);
	return a->mallocx_flags;
}

static inline int slab_flags(struct keel__alloc *a)
{
	return arena_flags(a) | MALLOCX_ALIGN(KEEL__SLAB_BYTES);
}
#endif

void keel__alloc_fini(struct keel__alloc *a)
{
	for (size_t cls = 0; cls < KEEL__SHARED_CLASSES; cls++) {
		while (a->shared[cls]) {
			void *p = a->shared[cls];

			a->shared[cls] = *(void **)p;
			free(p);
		}
	}
#ifndef KEEL_ALLOC_LIBC
	/*
	 * A frame left to the kernel (an op it never returned) lives in a
	 * slab or straight in the arena: leave both alone, all of it, since
	 * the kernel may still write there; only the tcache goes (it holds
	 * free memory only, which it hands back to the arena).
	 */
	if (a->leaked) {
		if (a->have_tcache)
			mallctl("tcache.destroy", NULL, NULL, &a->tcache,
				sizeof(a->tcache));
		memset(a, 0, sizeof(*a));
		return;
	}
	while (a->slabs) {
		void *slab = a->slabs;

		a->slabs = *(void **)slab;
		sdallocx(slab, KEEL__SLAB_BYTES, slab_flags(a));
	}
	if (a->have_tcache)
		mallctl("tcache.destroy", NULL, NULL, &a->tcache,
			sizeof(a->tcache));
	if (a->have_arena) {
		/* Every frame is freed by now; give the arena back. */
		char name[64];

		snprintf(name, sizeof(name), "arena.%u.destroy", a->arena);
		mallctl(name, NULL, NULL, NULL, 0);
	}
#endif
	memset(a, 0, sizeof(*a));
}

#ifndef KEEL_ALLOC_LIBC
/* Carve a frame of class `cls` from the newest slab, or a new one. */
static void *slab_carve(struct keel__alloc *a, size_t cls)
{
	size_t bytes = CLASS_BYTES(cls);

	if (a->bump_left < bytes) {
		struct slab *slab =
		    mallocx(KEEL__SLAB_BYTES, slab_flags(a) | MALLOCX_ZERO);

		if (!slab)
			return NULL;
		slab->next = a->slabs;
		a->slabs = slab;
		a->slab_bytes += KEEL__SLAB_BYTES;
		a->bump = (char *)slab + sizeof(*slab);
		a->bump_left = KEEL__SLAB_BYTES - sizeof(*slab);
	}
	void *p = a->bump;

	slab_of(p)->carved += (uint32_t)bytes;
	a->bump += bytes;
	a->bump_left -= bytes;
	return p; /* fresh slab memory is zeroed (MALLOCX_ZERO) */
}
#endif

static void *alloc_zeroed(struct keel__alloc *a, size_t size, size_t zero)
{
#ifdef KEEL_ALLOC_LIBC
	void *p;

	p = zero >= size ? calloc(1, size) : malloc(size);
	if (!p)
		return NULL;
	a->large_bytes += size;
	return memset(p, 0, zero);
#else
	size_t cls = keel__alloc_class(size);

	if (cls >= KEEL__FRAME_CLASSES) {
		/* Not MALLOCX_ZERO: jemalloc zeroes a recycled large extent
		 * with madvise(MADV_DONTNEED), which costs a system call and
		 * a page fault per page touched again: a TLS connection's
		 * 36 KB frame paid 1 madvise and ~2.3 faults per connection
		 * (about twice nginx's system time per full handshake). A
		 * memset of memory that is already mapped is cheaper. */
		void *big = mallocx(size, arena_flags(a));

		if (!big)
			return NULL;
		a->large_bytes += size;
		return memset(big, 0, zero);
	}
	void *p = a->cached[cls];

	if (!p)
		return slab_carve(a, cls);
	a->cached[cls] = *(void **)p;
	return memset(p, 0, zero < CLASS_BYTES(cls) ? zero : CLASS_BYTES(cls));
#endif
}

void *keel__alloc_zeroed(struct keel__alloc *a, size_t size)
{
	return keel__alloc_part(a, size, size);
}

void *keel__alloc_part_slow(struct keel__alloc *a, size_t size, size_t zero)
{
	void *p = alloc_zeroed(a, size, zero < size ? zero : size);

	/* Counted so that a frame never freed shows (the simulation
	 * runner checks it is 0 at the end of every seed). */
	if (p)
		a->live++;
	return p;
}

void keel__alloc_free_slow(struct keel__alloc *a, void *p, size_t size)
{
	a->live--;
#ifdef KEEL_ALLOC_LIBC
	a->large_bytes -= size;
	free(p);
#else
	size_t cls = keel__alloc_class(size);

	if (cls >= KEEL__FRAME_CLASSES) {
		a->large_bytes -= size;
		sdallocx(p, size, a->mallocx_flags);
		return;
	}
	*(void **)p = a->cached[cls];
	a->cached[cls] = p;
#endif
}

#ifndef KEEL_ALLOC_LIBC
/*
 * Whether a trim may pay: free frames could fill a slab and outweigh the
 * live ones. From the counters only (each live block is 64 bytes or
 * more), so a loop whose slabs are mostly live does not walk its lists.
 */
static bool trim_may_pay(const struct keel__alloc *a)
{
	size_t live_floor = (size_t)a->live * 64;

	return !a->leaked && a->slab_bytes >= KEEL__SLAB_BYTES + live_floor &&
	       a->slab_bytes >= 2 * live_floor;
}

/* Sum each slab's free bytes (slab->free); returns the total. */
static size_t count_free(struct keel__alloc *a, size_t *carved)
{
	size_t total = 0;

	*carved = 0;
	for (struct slab *s = a->slabs; s; s = s->next) {
		s->free = 0;
		*carved += s->carved;
	}
	for (size_t cls = 0; cls < KEEL__FRAME_CLASSES; cls++)
		for (void *p = a->cached[cls]; p; p = *(void **)p) {
			slab_of(p)->free += (uint32_t)CLASS_BYTES(cls);
			total += CLASS_BYTES(cls);
		}
	return total;
}

static inline bool slab_unused(const struct slab *s)
{
	return s->free == s->carved;
}

/* jemalloc keeps freed extents resident until they decay (seconds): purge
 * the loop's arena now, one madvise per run of freed slabs. */
static void arena_purge(struct keel__alloc *a)
{
	char name[64];

	if (!a->have_arena)
		return;
	snprintf(name, sizeof(name), "arena.%u.purge", a->arena);
	mallctl(name, NULL, NULL, NULL, 0);
}

#define GRANULE	 CLASS_BYTES(1)
#define GRANULES (KEEL__SLAB_BYTES / GRANULE)

/* The byte just past `s`'s last live frame: its carved part less its
 * longest free tail (`is_free`: a bit per granule, set where a free frame
 * lies). */
static size_t live_end(const struct slab *s, const uint64_t *is_free)
{
	size_t g = (sizeof(*s) + s->carved) / GRANULE;

	while (g > sizeof(*s) / GRANULE &&
	       (is_free[(g - 1) / 64] >> ((g - 1) % 64) & 1))
		g--;
	return g * GRANULE;
}

static int slab_cmp(const void *x, const void *y)
{
	uintptr_t a = (uintptr_t) * (struct slab *const *)x;
	uintptr_t b = (uintptr_t) * (struct slab *const *)y;

	return (a > b) - (a < b);
}

/*
 * A peak leaves the slab that stays (the oldest frames, long-lived tasks,
 * are at its start) carved to its end and resident, its frames free: the
 * trim cannot give it back, and after a peak of 2,000 connections that
 * hibernated it was 60 KiB of the 200 KiB they left. So when no slab is
 * being carved (the trim gave it back) the one with the longest free tail
 * is carved again from the end of its last live frame: the free frames past
 * there leave their lists, its whole pages past there go back to the kernel
 * (they read as zeros again, as a fresh slab's do: slab_carve() relies on
 * it), and it becomes the slab being carved. Off the hot path, like the
 * trim: one walk of the lists.
 */
static void slab_uncarve(struct keel__alloc *a)
{
	struct slab *best = NULL;
	size_t best_end = 0, page = (size_t)sysconf(_SC_PAGESIZE);
	uint64_t(*is_free)[GRANULES / 64];
	size_t nslabs = 0, i;
	struct slab **v;

	if (a->bump || !a->slabs)
		return;
	for (struct slab *s = a->slabs; s; s = s->next)
		nslabs++;
	v = malloc(nslabs * sizeof(*v));
	is_free = calloc(nslabs, sizeof(*is_free));
	if (!v || !is_free)
		goto out;
	i = 0;
	for (struct slab *s = a->slabs; s; s = s->next)
		v[i++] = s;
	qsort(v, nslabs, sizeof(*v), slab_cmp);
	/* Mark every free frame in its slab's bitmap. */
	for (size_t cls = 0; cls < KEEL__FRAME_CLASSES; cls++)
		for (char *p = a->cached[cls]; p; p = *(char **)p) {
			struct slab *s = slab_of(p), **at;
			size_t g = (size_t)(p - (char *)s) / GRANULE;

			at = bsearch(&s, v, nslabs, sizeof(*v), slab_cmp);
			i = (size_t)(at - v);
			for (size_t k = 0; k < cls; k++, g++)
				is_free[i][g / 64] |= 1ull << (g % 64);
		}
	for (i = 0; i < nslabs; i++) {
		size_t end = live_end(v[i], is_free[i]);

		if (!best || end < best_end) {
			best = v[i];
			best_end = end;
		}
	}
	/* Worth it when a page at least goes back. */
	if ((best_end + page - 1) / page * page >= KEEL__SLAB_BYTES)
		goto out;
	for (size_t cls = 0; cls < KEEL__FRAME_CLASSES; cls++) {
		void **link = &a->cached[cls];

		while (*link)
			if (slab_of(*link) == best &&
			    (size_t)((char *)*link - (char *)best) >= best_end)
				*link = *(void **)*link;
			else
				link = *link;
	}
	size_t keep = (best_end + page - 1) / page * page;

	best->carved = (uint32_t)(best_end - sizeof(*best));
	memset((char *)best + best_end, 0, keep - best_end);
	madvise((char *)best + keep, KEEL__SLAB_BYTES - keep, MADV_DONTNEED);
	a->bump = (char *)best + best_end;
	a->bump_left = KEEL__SLAB_BYTES - best_end;
out:
	free(v);
	free(is_free);
}
#endif

size_t keel__alloc_trim(struct keel__alloc *a)
{
#ifdef KEEL_ALLOC_LIBC
	(void)a; /* every frame went back to libc when freed */
	return 0;
#else
	size_t carved, free_bytes, n = 0;

	if (!trim_may_pay(a))
		return 0;
	free_bytes = count_free(a, &carved);
	if (free_bytes < KEEL__SLAB_BYTES || free_bytes < carved - free_bytes)
		return 0;
	/* Unlink the frames of the slabs that go from their lists. */
	for (size_t cls = 0; cls < KEEL__FRAME_CLASSES; cls++) {
		void **link = &a->cached[cls];

		while (*link)
			if (slab_unused(slab_of(*link)))
				*link = *(void **)*link;
			else
				link = *link;
	}
	for (struct slab **link = (struct slab **)&a->slabs; *link;) {
		struct slab *s = *link;

		if (!slab_unused(s)) {
			link = &s->next;
			continue;
		}
		*link = s->next;
		/* The slab being carved: the next frame takes a new one. */
		if (a->bump && slab_of(a->bump - 1) == s) {
			a->bump = NULL;
			a->bump_left = 0;
		}
		sdallocx(s, KEEL__SLAB_BYTES, slab_flags(a));
		a->slab_bytes -= KEEL__SLAB_BYTES;
		n++;
	}
	if (n)
		arena_purge(a);
	slab_uncarve(a);
	return n;
#endif
}
