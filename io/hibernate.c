/* SPDX-License-Identifier: MIT */
/*
 * hibernate.c: sockets the loop watches for a task that has ended
 * (keel_hibernate(), keel/io.h).
 *
 * An idle connection's task holds a frame and a task slot however small
 * its state; a hibernated socket holds a 32-byte record here instead, and
 * one single-shot POLL_ADD in the kernel. The poll's user_data is the
 * record's generation and index tagged KEEL__UD_INTERNAL |
 * KEEL__UD_HIBERNATE, so its completion comes straight here
 * (keel__hibernate_cqe()) without a ledger op (120 bytes), as a parked
 * stream's does.
 *
 * Ownership: a record is the loop's from keel_hibernate() until its poll's
 * completion (or the loop's teardown), which frees it and only then runs
 * its callback, which then owns the socket. So a callback may hibernate
 * again (and reuse the slot), and a CQE that comes after its record went
 * (a poll the kernel still held at teardown) finds its generation gone
 * and is dropped.
 *
 * The records are not ops: they do not count in ledger.inuse, so they keep
 * neither keel_loop_run() going (their owner does: an acceptor) nor the
 * loop's drain at destroy waiting; they do count as something that can
 * wake the loop (sched/loop.c, loop_wakeable()).
 */
#include "io.h"

#include <errno.h>
#include <poll.h>
#include <sys/mman.h>

/* The first table: a page of records. */
#define HIB_FIRST (4096 / sizeof(struct keel__hib))
/* Indexes fit in the user_data's bits 31..3. */
#define HIB_MAX (1u << 29)

_Static_assert(sizeof(struct keel__hib) <= 32, "a hibernated socket's record");

static size_t hib_bytes(uint32_t cap)
{
	return (size_t)cap * sizeof(struct keel__hib);
}

static uint64_t hib_id(const struct keel__hib *h, uint32_t i)
{
	return ((uint64_t)h->gen << 32) | i;
}

static uint64_t hib_ud(uint64_t id)
{
	return ((id >> 32) << 32) | ((id & 0xffffffffu) << 3) |
	       KEEL__UD_HIBERNATE | KEEL__UD_INTERNAL;
}

/* Room for one more record: mremap moves the pages, copies nothing, and
 * leaves no old copy resident. */
static int hib_room(struct keel__io *io)
{
	uint32_t cap = io->hib_cap ? io->hib_cap * 2 : HIB_FIRST;
	void *v;

	if (io->hib_free || io->hib_used < io->hib_cap)
		return 0;
	if (cap > HIB_MAX)
		return -ENOMEM;
	v = io->hib ? mremap(io->hib, hib_bytes(io->hib_cap), hib_bytes(cap),
			     MREMAP_MAYMOVE)
		    : mmap(NULL, hib_bytes(cap), PROT_READ | PROT_WRITE,
			   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (v == MAP_FAILED)
		return -ENOMEM;
	io->hib = v; /* new pages are zero: gen 0, free */
	io->hib_cap = cap;
	return 0;
}

/* A free record's index (hib_room() made sure there is one). */
static uint32_t hib_take(struct keel__io *io)
{
	uint32_t i;

	if (io->hib_free) {
		i = io->hib_free - 1;
		io->hib_free = io->hib[i].next;
	} else {
		i = io->hib_used++;
	}
	io->hib[i].gen = io->hib[i].gen + 1 ? io->hib[i].gen + 1 : 1;
	io->hib[i].flags = 0;
	return i;
}

static void hib_put(struct keel__io *io, uint32_t i)
{
	io->hib[i].fn = NULL;
	io->hib[i].next = io->hib_free;
	io->hib_free = i + 1;
}

/* The record for `id` if it is live, else NULL. */
static struct keel__hib *hib_find(struct keel__io *io, uint64_t id)
{
	uint32_t i = (uint32_t)id;
	struct keel__hib *h;

	if (i >= io->hib_used)
		return NULL;
	h = &io->hib[i];
	return h->fn && h->gen == (uint32_t)(id >> 32) ? h : NULL;
}

int keel_hibernate(struct keel_loop *loop, int fd, keel_hibernate_fn fn,
		   void *arg, uint64_t *id)
{
	struct keel__io *io = keel__io_of(loop);
	struct io_uring_sqe *sqe;
	struct keel__hib *h;
	uint32_t i;

	if (fd < 0 || !fn)
		return -EINVAL;
	if (io->hib_closed)
		return -ECANCELED;
	if (keel_loop_has_op(loop, IORING_OP_POLL_ADD) <= 0)
		return -EOPNOTSUPP;
	if (io->restricted && !keel__op_allowed(io, IORING_OP_POLL_ADD))
		return keel__restrict_refuse(io);
	if (hib_room(io))
		return -ENOMEM;
	sqe = keel__io_sqe(io);
	if (!sqe)
		return -EAGAIN;
	i = hib_take(io);
	h = &io->hib[i];
	h->fn = fn;
	h->arg = arg;
	h->fd = fd;
	io_uring_prep_poll_add(sqe, fd, POLLIN);
	keel__sqe_fixed_fd(sqe);
	io_uring_sqe_set_data64(sqe, hib_ud(hib_id(h, i)));
	io->hib_live++;
	if (id)
		*id = hib_id(h, i);
	return 0;
}

int keel_hibernate_cancel(struct keel_loop *loop, uint64_t id)
{
	struct keel__io *io = keel__io_of(loop);
	struct keel__hib *h = hib_find(io, id);

	if (!h)
		return -ENOENT;
	if (h->flags & KEEL__HIB_CANCEL)
		return 0;
	/* With no SQE free the cancel waits in the ledger for the next
	 * enter; only memory for that wait can fail. */
	if (!keel__io_cancel_ud(io, hib_ud(id)))
		return -ENOMEM;
	h->flags |= KEEL__HIB_CANCEL;
	return 0;
}

/* Free record `i`, then hand its socket to its callback with `res`. */
static void hib_wake(struct keel__io *io, uint32_t i, int res)
{
	struct keel__hib *h = &io->hib[i];
	keel_hibernate_fn fn = h->fn;
	void *arg = h->arg;
	int fd = h->fd;

	if (h->flags & KEEL__HIB_CANCEL)
		res = -ECANCELED;
	hib_put(io, i);
	io->hib_live--;
	fn((struct keel_loop *)io, fd, res, arg);
}

void keel__hibernate_cqe(struct keel__io *io, uint64_t ud, int res)
{
	uint64_t id = (ud & ~(uint64_t)0xffffffffu) | ((uint32_t)ud >> 3);

	if (!hib_find(io, id)) {
		io->count.stale_cqes++;
		return;
	}
	hib_wake(io, (uint32_t)id, res);
}

void keel__hibernate_cancel_all(struct keel__io *io)
{
	io->hib_closed = true;
	for (uint32_t i = 0; i < io->hib_used && io->hib_live; i++)
		if (io->hib[i].fn)
			hib_wake(io, i, -ECANCELED);
	/* The kernel may still hold polls: their CQEs find no table. */
	if (io->hib)
		munmap(io->hib, hib_bytes(io->hib_cap));
	io->hib = NULL;
	io->hib_cap = io->hib_used = io->hib_free = 0;
}
