/* SPDX-License-Identifier: MIT */
/*
 * refuse_submits.h: the kernel taking none of a full SQ (io_uring_enter's
 * -EAGAIN when it has no memory for requests), on demand. This binary's
 * io_uring_submit() stands in front of liburing's and refuses while
 * g_refuse_submits is set (counted in g_refused), so that a request keel
 * queues finds no SQE. Include it in one file of a test binary.
 */
#ifndef KEEL_TEST_REFUSE_SUBMITS_H
#define KEEL_TEST_REFUSE_SUBMITS_H

#include <errno.h>
#include <liburing.h>
#include <stdbool.h>

bool g_refuse_submits;
unsigned g_refused;

int io_uring_submit(struct io_uring *ring)
{
	if (g_refuse_submits) {
		g_refused++;
		return -EAGAIN;
	}
	return io_uring_submit_and_wait(ring, 0);
}

#endif
