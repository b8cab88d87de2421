/* SPDX-License-Identifier: MIT */
/*
 * fixedbuf.c: registered (fixed) buffers for file I/O: the table
 * keel_buffers_register() hands the kernel (IORING_REGISTER_BUFFERS), and
 * the check that a keel_read_fixed/keel_write_fixed buffer lies inside
 * the registered buffer it names, made before the op takes an SQE.
 *
 * The kernel pins a registered buffer's pages once, at registration, so a
 * READ_FIXED/WRITE_FIXED skips the per-op page lookup and reference
 * counting (get_user_pages) that O_DIRECT pays on every op, and a buffered
 * read copies into those pages rather than through the user-access path:
 * measured, 5% of a page-cached 4 KiB read's CPU, 8-12% with O_DIRECT at
 * depth 8 (keel_buffers_register(3); tools/keel-fixedread.c).
 *
 * The same table (struct keel__fixedbufs) is each backend's: the epoll
 * backend and the simulated kernel keep a copy at their register op and
 * execute the fixed ops as plain reads and writes at the registered
 * addresses, refusing what the kernel would refuse (-EFAULT).
 */
#include "io.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* The kernel's limits (io_uring/rsrc.c: IORING_MAX_REG_BUFFERS, and a
 * buffer of at most 1 GiB). */
#define MAX_BUFFERS   (1u << 14)
#define MAX_BUF_BYTES (1ul << 30)

int keel__fixedbufs_set(struct keel__fixedbufs *t, const struct iovec *iov,
			unsigned n)
{
	struct iovec *copy;

	if (t->iov)
		return -EBUSY;
	if (!iov || !n || n > MAX_BUFFERS)
		return -EINVAL;
	for (unsigned i = 0; i < n; i++)
		if (!iov[i].iov_base || !iov[i].iov_len ||
		    iov[i].iov_len > MAX_BUF_BYTES)
			return -EINVAL;
	copy = malloc(n * sizeof(*copy));
	if (!copy)
		return -ENOMEM;
	memcpy(copy, iov, n * sizeof(*copy));
	t->iov = copy;
	t->n = n;
	return 0;
}

int keel__fixedbufs_clear(struct keel__fixedbufs *t)
{
	if (!t->iov)
		return -ENXIO;
	free(t->iov);
	t->iov = NULL;
	t->n = 0;
	return 0;
}

int keel_buffers_register(struct keel_loop *loop, const struct iovec *iov,
			  unsigned n)
{
	struct keel__io *io;
	int err;

	if (!loop)
		return -EINVAL;
	io = keel__io_of(loop);
	err = keel__fixedbufs_set(&io->fixedbufs, iov, n);
	if (err)
		return err;
	err = keel__io_register(io, IORING_REGISTER_BUFFERS, io->fixedbufs.iov,
				n);
	if (err)
		keel__fixedbufs_clear(&io->fixedbufs);
	return err;
}

/* Whether an op of the ledger reads or writes a registered buffer. Only
 * unregistering asks, so the ops pay nothing to be counted. */
static bool fixed_op_in_flight(struct keel__io *io)
{
	struct keel__ledger *l = &io->ledger;
	uint32_t n = l->nchunks << KEEL__OP_CHUNK_SHIFT;

	for (uint32_t i = 0; i < n; i++) {
		const struct keel__op *op = keel__op_at(l, i);

		if ((op->flags & KEEL__OP_INUSE) &&
		    (op->opcode == IORING_OP_READ_FIXED ||
		     op->opcode == IORING_OP_WRITE_FIXED))
			return true;
	}
	return false;
}

int keel_buffers_unregister(struct keel_loop *loop)
{
	struct keel__io *io;
	int err;

	if (!loop)
		return -EINVAL;
	io = keel__io_of(loop);
	if (!io->fixedbufs.iov)
		return -ENXIO;
	if (fixed_op_in_flight(io))
		return -EBUSY;
	err = keel__io_register(io, IORING_UNREGISTER_BUFFERS, NULL, 0);
	if (err)
		return err;
	return keel__fixedbufs_clear(&io->fixedbufs);
}

int keel__fixed_refuse(struct keel_task *t, int err)
{
	keel__op_timeout_drop(keel__io_of(t->loop), t);
	return keel__task_ready(t, err);
}
