/* SPDX-License-Identifier: MIT */
/*
 * hibernate.c: sockets the loop watches for a task that has ended
 * (keel_hibernate(), keel/io.h).
 *
 * An idle connection's task holds a frame and a task slot however small
 * its state; a hibernated socket holds a 32-byte record here instead, and
 * its watch in the kernel. On the kernel's io_uring that watch is an item
 * in one epoll set per loop (made at the first hibernate), and the set is
 * watched by one multishot POLL_ADD: an epoll item, its wait entry and
 * the file's epoll head (eventpoll_epi 128 + eventpoll_pwq 64 + ep_head 24
 * bytes, as for a socket in any epoll server's set) cost the kernel less
 * than a POLL_ADD per socket (an io_kiocb, 256 bytes). A direct
 * descriptor has no number epoll knows, the other backends (epoll, the
 * simulated kernel) run each POLL_ADD themselves, and a socket the set
 * refuses (epoll_ctl failed) is watched as before: by its own single-shot
 * POLL_ADD.
 *
 * User data: a record's watch names its generation and index tagged
 * KEEL__UD_INTERNAL | KEEL__UD_HIBERNATE (in an epoll item's data: the
 * id alone), so its completion comes straight here (keel__hibernate_cqe())
 * without a ledger op (120 bytes), as a parked stream's does. Generation
 * 0, which no record has, names the set's own polls.
 *
 * Ownership: a record is the loop's from keel_hibernate() until its watch
 * fires (or its cancel's completion, or the loop's teardown), which frees
 * it and only then runs its callback, which then owns the socket. So a
 * callback may hibernate again (and reuse the slot), and an event that
 * comes after its record went (a poll or an epoll item the kernel still
 * held) finds its generation gone and is dropped.
 *
 * The records are not ops: they do not count in ledger.inuse, so they keep
 * neither keel_loop_run() going (their owner does: an acceptor) nor the
 * loop's drain at destroy waiting; they do count as something that can
 * wake the loop (sched/loop.c, loop_wakeable()).
 */
#include "io.h"

#include <errno.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <unistd.h>

/* The first table: a page of records. */
#define HIB_FIRST (4096 / sizeof(struct keel__hib))
/* Indexes fit in the user_data's bits 31..3. */
#define HIB_MAX (1u << 29)

/* The set's polls: generation 0, which no record has. */
#define HIB_SET_UD  ((uint64_t)(KEEL__UD_HIBERNATE | KEEL__UD_INTERNAL))
#define HIB_MORE_UD (HIB_SET_UD | 1u << 3) /* hib_drain()'s one-shot */
/* Events taken from the set per epoll_wait, and per completion. */
#define HIB_BATCH 64
#define HIB_TURN  256

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

/*
 * The loop's epoll set, made and armed at first use: its multishot poll
 * (re-armed when a completion comes without IORING_CQE_F_MORE). 0 or a
 * negative errno.
 */
static int hib_set(struct keel__io *io)
{
	struct io_uring_sqe *sqe;

	if (io->hib_ep < 0) {
		io->hib_ep = epoll_create1(EPOLL_CLOEXEC);
		if (io->hib_ep < 0)
			return -errno;
	}
	if (io->hib_ep_armed)
		return 0;
	sqe = keel__io_sqe(io);
	if (!sqe)
		return -EAGAIN;
	io_uring_prep_poll_multishot(sqe, io->hib_ep, POLLIN);
	io_uring_sqe_set_data64(sqe, HIB_SET_UD);
	io->hib_ep_armed = true;
	return 0;
}

/*
 * Watch `fd` for record `id` in the set: 0, or a negative errno (not a
 * socket's, or not a number epoll knows: the caller polls it alone).
 *
 * A woken item is left in the set, disabled (EPOLLONESHOT), rather than
 * deleted at wake: a connection that idles again is re-armed by one
 * EPOLL_CTL_MOD, where deleting would cost an EPOLL_CTL_DEL per wake and
 * an EPOLL_CTL_ADD (allocations, a wait entry) per hibernation: 1.4 us
 * more system time per hibernate and wake of a socket (measured: 3.7
 * against 5.1 us; a POLL_ADD per socket, 2.8 us). A disabled item keeps
 * its 216 bytes of the kernel's while its connection is active (which
 * holds a multishot recv and its buffer then), until the socket's last
 * close. So MOD is tried first; a socket new to the set is ADDed.
 */
static int hib_watch(struct keel__io *io, int fd, uint64_t id)
{
	struct epoll_event ev = {
	    .events = EPOLLIN | EPOLLRDHUP | EPOLLONESHOT,
	    .data.u64 = id,
	};

	if (!epoll_ctl(io->hib_ep, EPOLL_CTL_MOD, fd, &ev) ||
	    (errno == ENOENT && !epoll_ctl(io->hib_ep, EPOLL_CTL_ADD, fd, &ev)))
		return 0;
	return -errno;
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
	i = hib_take(io);
	h = &io->hib[i];
	if (!io->backend && !keel_fd_is_fixed(fd) && !hib_set(io) &&
	    !hib_watch(io, fd, hib_id(h, i))) {
		h->flags = KEEL__HIB_SET;
	} else {
		sqe = keel__io_sqe(io);
		if (!sqe) {
			hib_put(io, i);
			return -EAGAIN;
		}
		io_uring_prep_poll_add(sqe, fd, POLLIN);
		keel__sqe_fixed_fd(sqe);
		io_uring_sqe_set_data64(sqe, hib_ud(hib_id(h, i)));
	}
	h->fn = fn;
	h->arg = arg;
	h->fd = fd;
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
	if (h->flags & KEEL__HIB_SET) {
		/* Its item stays armed (an event for it later finds the
		 * record gone); a NOP with its user data brings the wake. No
		 * EPOLL_CTL_DEL: a socket closed while hibernated left the
		 * set, and its number may name another socket in it now. */
		if (!keel__io_nop_ud(io, hib_ud(id)))
			return -ENOMEM;
	} else if (!keel__io_cancel_ud(io, hib_ud(id))) {
		/* With no SQE free the cancel (or the NOP above) waits in
		 * the ledger for the next enter; only memory for that wait
		 * can fail. */
		return -ENOMEM;
	}
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

/*
 * The set is readable: wake the sockets it reports, HIB_BATCH at a time
 * and at most HIB_TURN a completion, so a turn stays bounded (a callback
 * that hibernates a readable socket again puts it straight back). What is
 * left over is reported by a one-shot poll on the set, which completes at
 * the next submit: the multishot one only reports new readiness.
 */
static void hib_drain(struct keel__io *io)
{
	struct epoll_event ev[HIB_BATCH];
	struct io_uring_sqe *sqe;
	unsigned got = 0;
	int n;

	do {
		n = epoll_wait(io->hib_ep, ev, HIB_BATCH, 0);
		for (int j = 0; j < n; j++) {
			uint64_t id = ev[j].data.u64;

			if (hib_find(io, id))
				hib_wake(io, (uint32_t)id, (int)ev[j].events);
			else
				io->count.stale_cqes++;
		}
		got += n > 0 ? (unsigned)n : 0;
	} while (n == HIB_BATCH && got < HIB_TURN);
	if ((n == HIB_BATCH || (n < 0 && errno == EINTR)) && !io->hib_ep_more &&
	    (sqe = keel__io_sqe(io))) {
		io_uring_prep_poll_add(sqe, io->hib_ep, POLLIN);
		io_uring_sqe_set_data64(sqe, HIB_MORE_UD);
		io->hib_ep_more = true;
	}
}

void keel__hibernate_cqe(struct keel__io *io, uint64_t ud, int res,
			 unsigned flags)
{
	uint64_t id = (ud & ~(uint64_t)0xffffffffu) | ((uint32_t)ud >> 3);

	if (ud == HIB_SET_UD || ud == HIB_MORE_UD) {
		if (ud == HIB_MORE_UD)
			io->hib_ep_more = false;
		else if (!(flags & IORING_CQE_F_MORE))
			io->hib_ep_armed = false;
		/* After the teardown: the ring still held the set's polls. */
		if (io->hib_closed)
			return;
		hib_drain(io);
		/* An error ended the multishot poll (none is expected but
		 * the teardown's cancel): the next keel_hibernate() tries
		 * again, rather than every turn. */
		if (!io->hib_ep_armed && res >= 0)
			hib_set(io);
		return;
	}
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
	/* The kernel may still hold polls: their CQEs find no table. The
	 * set's items go with it when the ring lets go of its poll. */
	if (io->hib_ep >= 0)
		close(io->hib_ep);
	io->hib_ep = -1;
	if (io->hib)
		munmap(io->hib, hib_bytes(io->hib_cap));
	io->hib = NULL;
	io->hib_cap = io->hib_used = io->hib_free = 0;
}
