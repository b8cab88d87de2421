/* SPDX-License-Identifier: MIT */
/*
 * remote.c: a loop's inbox: how other threads hand it work (a mailbox with
 * new messages, a task to wake, a task to spawn), and how they wake it.
 *
 * The inbox is a lock-free LIFO stack (one CAS per post); the loop takes it
 * whole in the last step of its turn and runs the items in posting order.
 *
 * Waking: a loop about to block in io_uring_enter sets `parked`, then looks
 * at the inbox once more; a poster pushes, then looks at `parked` (both
 * sequentially consistent, so one of them sees the other). Only a poster
 * that finds the loop parked rings the doorbell, and `wake_pending` makes
 * a burst ring it once: an IORING_OP_MSG_RING from the poster's own ring,
 * or, for a thread that runs no loop, one sent without a ring
 * (IORING_REGISTER_SEND_MSG_RING, Linux 6.13), else from a small ring of
 * the thread's own.
 * An embedded loop stays parked between keel_loop_step() calls, while its
 * host may sleep on keel_loop_fd(): the doorbell's CQE wakes the host.
 */
#include "loop.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define SEQ_LOAD(p) __atomic_load_n((p), __ATOMIC_SEQ_CST)

/* A ring for threads that run no loop, used only to ring doorbells. */
static pthread_key_t doorbell_key;
static pthread_once_t doorbell_once = PTHREAD_ONCE_INIT;

static void doorbell_ring_free(void *p)
{
	keel__ring_unmapped();
	io_uring_queue_exit(p);
	free(p);
}

static void doorbell_key_init(void)
{
	pthread_key_create(&doorbell_key, doorbell_ring_free);
}

static struct io_uring *thread_doorbell_ring(void)
{
	pthread_once(&doorbell_once, doorbell_key_init);
	struct io_uring *ring = pthread_getspecific(doorbell_key);

	if (ring)
		return ring;
	ring = calloc(1, sizeof(*ring));
	if (!ring)
		return NULL;
	if (io_uring_queue_init(8, ring, 0)) {
		free(ring);
		return NULL;
	}
	keel__ring_mapped();
	pthread_setspecific(doorbell_key, ring);
	return ring;
}

/*
 * A doorbell from a thread that runs no loop, without a ring of its own:
 * io_uring_register(-1, IORING_REGISTER_SEND_MSG_RING) takes one MSG_RING
 * SQE. Measured on 6.18 against the thread's own ring and io_uring_submit:
 * 0.80-0.83x the sender's CPU per doorbell, and no ring (its mappings and
 * a descriptor) per sending thread. Tried once per process: a kernel
 * without it says -EINVAL (6.12 and older: -EBADF, for the fd of -1), and
 * the thread's ring is used from then on. Library code: errno is kept.
 */
static int blind_msg_ring; /* -1: not on this kernel */

static bool ring_doorbell_blind(struct keel_loop *target)
{
	struct io_uring_sqe sqe;
	int saved = errno;
	long ret;

	if (__atomic_load_n(&blind_msg_ring, __ATOMIC_RELAXED) < 0)
		return false;
	memset(&sqe, 0, sizeof(sqe));
	/* No sqe->flags: the kernel refuses any; no CQE for the sender. */
	io_uring_prep_msg_ring(&sqe, target->io.ring.ring_fd, 0, KEEL__UD_WAKE,
			       0);
	ret = syscall(__NR_io_uring_register, -1,
		      KEEL_IORING_REGISTER_SEND_MSG_RING, &sqe, 1);
	if (ret < 0 && (errno == EINVAL || errno == EBADF || errno == ENOSYS))
		__atomic_store_n(&blind_msg_ring, -1, __ATOMIC_RELAXED);
	errno = saved;
	return ret >= 0;
}

static void prep_doorbell(struct io_uring_sqe *sqe, struct keel_loop *target)
{
	io_uring_prep_msg_ring(sqe, target->io.ring.ring_fd, 0, KEEL__UD_WAKE,
			       0);
	io_uring_sqe_set_data64(sqe, KEEL__UD_INTERNAL);
	sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
}

static void ring_doorbell(struct keel_loop *target)
{
	struct keel__core *self = keel__current_core;
	struct keel__backend *tb = target->io.backend;

	__atomic_add_fetch(&target->inbox.doorbells, 1, __ATOMIC_RELAXED);
	/* A backend with a doorbell of its own (epoll): from any thread. */
	if (tb && tb->post) {
		tb->post(tb, KEEL__UD_WAKE, 0);
		return;
	}
	/* MSG_RING from a loop goes to a ring of the same kind only. */
	if (self && self != &target->io.core &&
	    !((struct keel__io *)self)->backend == !tb) {
		/* From a loop: its next io_uring_enter carries it. */
		struct io_uring_sqe *sqe =
		    keel__io_sqe((struct keel__io *)self);

		if (sqe) {
			prep_doorbell(sqe, target);
			return;
		}
	}
	/* A backend's ring is named by a number no kernel knows. */
	if (!tb && ring_doorbell_blind(target))
		return;
	struct io_uring *ring = thread_doorbell_ring();
	struct io_uring_sqe *sqe = ring ? io_uring_get_sqe(ring) : NULL;

	if (!sqe)
		return; /* out of memory: the loop wakes at its next timer */
	prep_doorbell(sqe, target);
	io_uring_submit(ring);
}

void keel__remote_post(struct keel_loop *loop, struct keel__remote_item *it)
{
	struct keel__inbox *in = &loop->inbox;
	struct keel__remote_item *head =
	    __atomic_load_n(&in->head, __ATOMIC_RELAXED);

	do {
		it->next = head;
	} while (!__atomic_compare_exchange_n(
	    &in->head, &head, it, true, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED));
	if (SEQ_LOAD(&in->parked) &&
	    !__atomic_exchange_n(&in->wake_pending, 1, __ATOMIC_SEQ_CST))
		ring_doorbell(loop);
}

void keel__remote_drain(struct keel_loop *loop)
{
	/* Empty nearly every turn: a load, not a locked exchange, for that. */
	if (!__atomic_load_n(&loop->inbox.head, __ATOMIC_RELAXED))
		return;
	struct keel__remote_item *it =
	    __atomic_exchange_n(&loop->inbox.head, NULL, __ATOMIC_ACQUIRE);
	struct keel__remote_item *fifo = NULL;

	/* The stack is newest first: reverse it into posting order. */
	while (it) {
		struct keel__remote_item *next = it->next;

		it->next = fifo;
		fifo = it;
		it = next;
	}
	while (fifo) {
		struct keel__remote_item *next = fifo->next;

		fifo->run(loop, fifo);
		fifo = next;
	}
}
