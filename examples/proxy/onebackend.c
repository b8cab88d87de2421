/* SPDX-License-Identifier: MIT */
/*
 * onebackend.c: the seam of proxy.h (backend_pick() and the rest) over
 * the one numeric backend address main.c parses from -b. It stands in for
 * backends.c (several backends, names, health checks, balancing,
 * metrics), which replaces this file: then it goes.
 *
 * Its one backend is always healthy; the counters are relaxed atomics
 * because every loop's sessions share it.
 */
#include <stdatomic.h>
#include <string.h>

#include "proxy.h"

struct backend {
	atomic_uint sessions; /* picked and not yet released */
};

static struct backend the_backend;

struct backend *backend_pick(uint64_t tried, struct sockaddr_storage *addr,
			     socklen_t *len)
{
	if (tried & 1)
		return NULL;
	memcpy(addr, &backend_addr, sizeof(*addr));
	*len = backend_len;
	atomic_fetch_add_explicit(&the_backend.sessions, 1,
				  memory_order_relaxed);
	return &the_backend;
}

unsigned backend_index(const struct backend *b)
{
	(void)b;
	return 0;
}

const char *backend_name(const struct backend *b)
{
	(void)b;
	return backend_text;
}

void backend_connected(struct backend *b, int result, uint64_t ns)
{
	(void)b;
	(void)result;
	(void)ns;
}

void backend_release(struct backend *b, uint64_t up, uint64_t down)
{
	(void)up;
	(void)down;
	atomic_fetch_sub_explicit(&b->sessions, 1, memory_order_relaxed);
}
