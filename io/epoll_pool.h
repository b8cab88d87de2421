/* SPDX-License-Identifier: MIT */
/*
 * epoll_pool.h: the epoll backend's threads for ops without readiness
 * (io/epoll_pool.c).
 */
#ifndef KEEL_IO_EPOLL_POOL_H
#define KEEL_IO_EPOLL_POOL_H

#include <stdbool.h>
#include <stdint.h>

/* Threads of the pool, started on first use and shared by every loop. */
#define KEEL__EP_POOL_THREADS 4
/* Jobs queued at most; a full queue makes the caller run the op itself. */
#define KEEL__EP_POOL_QUEUE 1024

struct keel__ep_job {
	struct keel__ep_job *next; /* in the queue */
	/* On a worker: do the job and hand it back to its owner. */
	void (*run)(struct keel__ep_job *job);
	const void *owner; /* for keel__ep_pool_drain() */
	uint8_t state;	   /* under the pool's lock */
};

/* Queue `job`: 0, or -EAGAIN (the queue is full, or no thread starts). */
int keel__ep_pool_submit(struct keel__ep_job *job);
/* Take `job` out if no worker has started it: true, and it never runs. */
bool keel__ep_pool_unqueue(struct keel__ep_job *job);
/*
 * `owner` is going away: its queued jobs are dropped (never run), and
 * this returns once no worker runs one of its jobs any more, so none
 * touches the owner afterwards.
 */
void keel__ep_pool_drain(const void *owner);

#endif
