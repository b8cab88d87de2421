/* SPDX-License-Identifier: MIT */
/*
 * alloc.c: the frame allocator. Each loop allocates task frames from its own
 * jemalloc arena through its own explicit tcache (mallocx/sdallocx), so that
 * loops on different threads never contend and a frame's size class is
 * known at free time without a lookup.
 *
 * Invariant: an explicit tcache is used by one thread only; a loop is, so
 * this holds as long as frames are allocated and freed on the loop's thread.
 *
 * Sanitizer builds (KEEL_ALLOC_LIBC) use calloc/free instead, so that ASan
 * and TSan see the lifetime of every frame.
 */
#include "core.h"

#include <errno.h>
#include <stdlib.h>

#ifndef KEEL_ALLOC_LIBC
#include <jemalloc/jemalloc.h>
#include <stdio.h>
#endif

int keel__alloc_init(struct keel__alloc *a)
{
	a->mallocx_flags = 0;
	a->have_arena = false;
	a->have_tcache = false;
#ifndef KEEL_ALLOC_LIBC
	size_t sz = sizeof(unsigned);

	if (mallctl("arenas.create", &a->arena, &sz, NULL, 0) == 0) {
		a->have_arena = true;
		a->mallocx_flags |= MALLOCX_ARENA(a->arena);
	}
	sz = sizeof(unsigned);
	if (mallctl("tcache.create", &a->tcache, &sz, NULL, 0) == 0) {
		a->have_tcache = true;
		a->mallocx_flags |= MALLOCX_TCACHE(a->tcache);
	}
#endif
	return 0;
}

void keel__alloc_fini(struct keel__alloc *a)
{
#ifndef KEEL_ALLOC_LIBC
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
	a->have_arena = a->have_tcache = false;
}

void *keel__alloc_zeroed(struct keel__alloc *a, size_t size)
{
#ifdef KEEL_ALLOC_LIBC
	(void)a;
	return calloc(1, size);
#else
	return mallocx(size, a->mallocx_flags | MALLOCX_ZERO);
#endif
}

void keel__alloc_free(struct keel__alloc *a, void *p, size_t size)
{
#ifdef KEEL_ALLOC_LIBC
	(void)a;
	(void)size;
	free(p);
#else
	sdallocx(p, size, a->mallocx_flags);
#endif
}
