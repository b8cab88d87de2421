/* SPDX-License-Identifier: MIT */
/*
 * backend.h: the seam under the op ledger: who executes keel's requests.
 *
 * The seam is the io_uring ABI itself. The ledger, the ops, the streams and
 * the buffer rings write `struct io_uring_sqe` into the SQ of `io->ring` and
 * read `struct io_uring_cqe` from its CQ with liburing's inline helpers,
 * which only touch memory (sq.sqes, sq.khead, cq.cqes, cq.ktail, ...). What
 * a backend supplies is what io_uring's three system calls do:
 *
 *   setup     lay out the SQ and CQ memory of a `struct io_uring`, in the
 *             kernel's format, and say which features and opcodes it has;
 *   enter     take every queued SQE (sq.sqe_head up to sq.sqe_tail),
 *             execute it, post CQEs at cq.ktail, and wait for completions;
 *   register  what io_uring_register() does for keel: provided-buffer
 *             rings, the sparse direct-descriptor table, an eventfd.
 *
 * So everything above the seam runs unchanged on every backend. The
 * kernel's io_uring is the default and is not behind a function pointer:
 * io->backend is NULL and io/ring.c calls liburing directly, one
 * predictable branch per enter. The simulated kernel (sim/) is a backend,
 * and so is epoll (io/epoll.c), for where io_uring is refused.
 */
#ifndef KEEL_IO_BACKEND_H
#define KEEL_IO_BACKEND_H

#include <liburing.h>
#include <stdint.h>

struct keel__backend {
	const char *name; /* for keel_loop_describe() */
	/*
	 * Point `ring`'s SQ and CQ at memory for at least `sq` and `cq`
	 * entries (powers of two, ring_mask = entries - 1), with *khead ==
	 * *ktail == 0, sq.sqe_head == sq.sqe_tail == 0, ring->flags (setup
	 * flags as the kernel would report them; never SQPOLL or CQE32),
	 * ring->features (IORING_FEAT_*), and ring->ring_fd: a number other
	 * rings' MSG_RING SQEs name this ring by (never a real descriptor of
	 * this process's). Set ops[] bit n when opcode n is executed. Returns
	 * 0 or a negative errno.
	 */
	int (*setup)(struct keel__backend *b, struct io_uring *ring,
		     unsigned sq, unsigned cq, uint64_t ops[2]);
	/*
	 * Execute every queued SQE (those between sq.sqe_head and
	 * sq.sqe_tail, in order; then sq.sqe_head = sq.sqe_tail and *sq.khead
	 * = *sq.ktail = sq.sqe_tail), then, when `want` > 0, wait until at
	 * least `want` CQEs are in the CQ, at most `wait_ns` (0: do not wait,
	 * < 0: no limit). CQEs that do not fit in the CQ are kept in order
	 * and IORING_SQ_CQ_OVERFLOW is set in *sq.kflags until an enter has
	 * moved them all in (FEAT_NODROP). Returns the SQEs taken, or
	 * -ETIME when the wait ran out, or another negative errno.
	 */
	int (*enter)(struct keel__backend *b, struct io_uring *ring,
		     unsigned want, int64_t wait_ns);
	/*
	 * io_uring_register(2) for the opcodes keel uses:
	 * IORING_REGISTER_PBUF_RING / IORING_UNREGISTER_PBUF_RING (arg: a
	 * struct io_uring_buf_reg; the ring memory stays the caller's),
	 * IORING_REGISTER_FILES2 (arg: struct io_uring_rsrc_register with
	 * IORING_RSRC_REGISTER_SPARSE and nr slots), IORING_REGISTER_EVENTFD
	 * (arg: int fd, signalled when CQEs are posted) and
	 * IORING_UNREGISTER_EVENTFD, IORING_REGISTER_BUFFERS (arg: nr_args
	 * iovecs; a copy is kept, keel__fixedbufs_set()) and
	 * IORING_UNREGISTER_BUFFERS. Returns 0 or a negative errno
	 * (-EINVAL for an opcode it does not have).
	 */
	int (*reg)(struct keel__backend *b, struct io_uring *ring,
		   unsigned opcode, void *arg, unsigned nr_args);
	/* The ring is going away: free what setup made. Called once, last. */
	void (*teardown)(struct keel__backend *b, struct io_uring *ring);
	/*
	 * Optional (NULL: the loop's registered eventfd is what hosts poll).
	 * poll_fd: the descriptor a host sleeps on (keel_loop_fd()): readable
	 * when an enter would find work, deadlines included. post: from any
	 * thread, put a CQE in this ring's CQ before its next enter returns
	 * and wake it (a doorbell); 0 or a negative errno.
	 */
	int (*poll_fd)(struct keel__backend *b);
	int (*post)(struct keel__backend *b, uint64_t user_data, int res);
};

#endif
