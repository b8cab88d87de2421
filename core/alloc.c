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
 * The cost is that slab memory is kept at its peak until the loop is
 * destroyed, as in Seastar's per-shard pools. Larger frames go straight to
 * the arena with mallocx/sdallocx.
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

#define CLASS_BYTES(cls) ((size_t)(cls) << KEEL__FRAME_CLASS_SHIFT)
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
		sdallocx(slab, KEEL__SLAB_BYTES, a->mallocx_flags);
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
		char *slab =
		    mallocx(KEEL__SLAB_BYTES, arena_flags(a) | MALLOCX_ZERO);

		if (!slab)
			return NULL;
		/* The first class-sized block links the slab list. */
		*(void **)slab = a->slabs;
		a->slabs = slab;
		a->bump = slab + CLASS_BYTES(1);
		a->bump_left = KEEL__SLAB_BYTES - CLASS_BYTES(1);
	}
	void *p = a->bump;

	a->bump += bytes;
	a->bump_left -= bytes;
	return p; /* fresh slab memory is zeroed (MALLOCX_ZERO) */
}
#endif

static void *alloc_zeroed(struct keel__alloc *a, size_t size, size_t zero)
{
#ifdef KEEL_ALLOC_LIBC
	void *p;

	(void)a;
	if (zero >= size)
		return calloc(1, size);
	p = malloc(size);
	return p ? memset(p, 0, zero) : NULL;
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

		return big ? memset(big, 0, zero) : NULL;
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
	(void)a;
	(void)size;
	free(p);
#else
	size_t cls = keel__alloc_class(size);

	if (cls >= KEEL__FRAME_CLASSES) {
		sdallocx(p, size, a->mallocx_flags);
		return;
	}
	*(void **)p = a->cached[cls];
	a->cached[cls] = p;
#endif
}
