/* SPDX-License-Identifier: MIT */
/*
 * ring.c: io_uring setup, feature probe, SQE acquisition and submission.
 *
 * Setup asks for the best flags first (SINGLE_ISSUER | DEFER_TASKRUN:
 * completions are processed only when this thread enters the kernel, no
 * interrupts from task work) and steps down one flag at a time when the
 * kernel refuses with -EINVAL, recording why. Any other error (EPERM from
 * kernel.io_uring_disabled or seccomp, ENOMEM from memlock, ENOSYS) is
 * returned as it is: keel_loop_explain() says what to do about it.
 */
#include "epoll.h"
#include "io.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

/*
 * liburing maps the rings with raw system calls that ThreadSanitizer does
 * not see, so when a thread's ring is unmapped and another thread's new ring
 * lands at the same address, TSan takes the old and new owners' accesses
 * for a race. Ordering every teardown before every later setup (release /
 * acquire on one sync object) tells it the mappings never coexisted.
 */
#if defined(__SANITIZE_THREAD__)
#define KEEL_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define KEEL_TSAN 1
#endif
#endif
#ifdef KEEL_TSAN
void __tsan_acquire(void *addr);
void __tsan_release(void *addr);
static char ring_mappings_sync;
#define RING_MAPPED()	__tsan_acquire(&ring_mappings_sync)
#define RING_UNMAPPED() __tsan_release(&ring_mappings_sync)
#else
#define RING_MAPPED()	((void)0)
#define RING_UNMAPPED() ((void)0)
#endif

/* For rings keel creates outside a loop (doorbell rings, sched/remote.c). */
void keel__ring_mapped(void)
{
	RING_MAPPED();
}

void keel__ring_unmapped(void)
{
	RING_UNMAPPED();
}

struct setup_try {
	unsigned flags;
	const char *dropped; /* why the previous try failed */
};

static const struct setup_try try_default[] = {
    {IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN |
	 IORING_SETUP_SUBMIT_ALL,
     NULL},
    {IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_COOP_TASKRUN |
	 IORING_SETUP_TASKRUN_FLAG | IORING_SETUP_SUBMIT_ALL,
     "DEFER_TASKRUN refused (needs Linux 6.1): using COOP_TASKRUN"},
    {IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG |
	 IORING_SETUP_SUBMIT_ALL,
     "SINGLE_ISSUER refused (needs Linux 6.0)"},
    {IORING_SETUP_SUBMIT_ALL,
     "COOP_TASKRUN refused (needs Linux 5.19): task work may interrupt"},
    {0, "SUBMIT_ALL refused (needs Linux 5.18)"},
};

static const struct setup_try try_no_defer[] = {
    {IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_COOP_TASKRUN |
	 IORING_SETUP_TASKRUN_FLAG | IORING_SETUP_SUBMIT_ALL,
     NULL},
    {IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG |
	 IORING_SETUP_SUBMIT_ALL,
     "SINGLE_ISSUER refused (needs Linux 6.0)"},
    {0, "COOP_TASKRUN refused (needs Linux 5.19)"},
};

/* SQPOLL cannot be combined with DEFER_TASKRUN. */
static const struct setup_try try_sqpoll[] = {
    {IORING_SETUP_SQPOLL | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_SUBMIT_ALL,
     NULL},
    {IORING_SETUP_SQPOLL, "SINGLE_ISSUER refused with SQPOLL"},
};

#define KEEL__MAX_SQ 32768u
#define KEEL__MAX_CQ 65536u

static void note_downgrade(struct keel__io *io, const char *why)
{
	size_t n = strlen(io->downgrades);

	snprintf(io->downgrades + n, sizeof(io->downgrades) - n, "%s%s",
		 n ? "; " : "", why);
}

static void probe_ops(struct keel__io *io)
{
	struct io_uring_probe *p = io_uring_get_probe_ring(&io->ring);

	memset(io->ops_supported, 0, sizeof(io->ops_supported));
	if (!p)
		return;
	for (unsigned op = 0; op < p->ops_len && op < 128; op++)
		if (p->ops[op].flags & IO_URING_OP_SUPPORTED)
			io->ops_supported[op / 64] |= 1ull << (op % 64);
	io_uring_free_probe(p);
}

/*
 * IORING_SETUP_NO_SQARRAY (6.6): the kernel takes SQEs in ring order
 * without the SQ index array (one load and bounds check less per SQE, and
 * the array's memory). liburing 2.3's io_uring_queue_init_params() fills
 * that array, at sq_off.array: 0 without one, so it would write over the
 * ring's head and tail: hence the setup and mmap here. Measured (NOP
 * batches of 8-128, paired runs): 2-4 % less CPU per SQE. The environment
 * variable KEEL_NO_SQARRAY=0 keeps the array.
 */
static int ring_setup_flags(struct io_uring *ring, unsigned sq, unsigned cq,
			    unsigned flags)
{
	struct io_uring_params p;

	memset(&p, 0, sizeof(p));
	p.flags = flags;
	p.cq_entries = cq;
	int fd = io_uring_setup(sq, &p);

	if (fd < 0)
		return fd;
	int err = io_uring_queue_mmap(fd, &p, ring);

	if (err) {
		close(fd);
		return err;
	}
	if (flags & IORING_SETUP_NO_SQARRAY)
		ring->sq.array = NULL;
	else
		for (unsigned i = 0; i < ring->sq.ring_entries; i++)
			ring->sq.array[i] = i;
	ring->features = p.features;
	return 0;
}

static bool env_off(const char *name)
{
	const char *v = getenv(name);

	return v && !strcmp(v, "0");
}

static int ring_setup(struct keel__io *io, unsigned sq, unsigned cq,
		      unsigned flags)
{
	int err;

	if (env_off("KEEL_NO_SQARRAY"))
		return ring_setup_flags(&io->ring, sq, cq, flags);
	err = ring_setup_flags(&io->ring, sq, cq,
			       flags | IORING_SETUP_NO_SQARRAY);
	if (err != -EINVAL)
		return err;
	err = ring_setup_flags(&io->ring, sq, cq, flags);
	if (!err)
		note_downgrade(io, "NO_SQARRAY refused (needs Linux 6.6)");
	return err;
}

static unsigned sq_publish(struct io_uring *ring);

/*
 * IORING_REGISTER_RESIZE_RINGS (6.13, DEFER_TASKRUN rings only): the
 * kernel allocates rings of the new size, moves the published SQEs and
 * the CQEs over, and frees the old; they are then mapped anew (at the
 * same offsets of the ring fd). The SQ tail is published first, so that
 * SQEs queued but not yet submitted move too.
 */
static int ring_resize(struct keel__io *io, unsigned sq, unsigned cq)
{
	struct io_uring *ring = &io->ring;
	struct io_uring_params p;
	struct io_uring fresh;

	sq_publish(ring);
	memset(&p, 0, sizeof(p));
	p.flags = IORING_SETUP_CQSIZE;
	p.sq_entries = sq;
	p.cq_entries = cq;
	int err = io_uring_register((unsigned)ring->ring_fd,
				    KEEL_IORING_REGISTER_RESIZE_RINGS, &p, 1);

	if (err)
		return err;
	p.features = ring->features; /* SINGLE_MMAP: one mapping */
	err = io_uring_queue_mmap(ring->ring_fd, &p, &fresh);
	RING_UNMAPPED();
	munmap(ring->sq.sqes, ring->sq.ring_entries * sizeof(*ring->sq.sqes));
	munmap(ring->sq.ring_ptr, ring->sq.ring_sz);
	if (ring->cq.ring_ptr != ring->sq.ring_ptr)
		munmap(ring->cq.ring_ptr, ring->cq.ring_sz);
	if (err) {
		/* The kernel's rings moved and cannot be reached: every
		 * later enter fails with this. */
		memset(&ring->sq, 0, sizeof(ring->sq));
		memset(&ring->cq, 0, sizeof(ring->cq));
		io->ring_lost = err;
		keel__io_enter_update(io);
		return err;
	}
	RING_MAPPED();
	fresh.sq.sqe_head = ring->sq.sqe_head;
	fresh.sq.sqe_tail = ring->sq.sqe_tail;
	ring->sq = fresh.sq;
	ring->cq = fresh.cq;
	ring->sq.array = NULL; /* NO_SQARRAY: see ring_start_small() */
	io->sq_entries = ring->sq.ring_entries;
	io->cq_entries = ring->cq.ring_entries;
	return 0;
}

/*
 * A loop's SQ starts small (SMALL_SQ entries: one page of SQEs instead of
 * four) and grows to the size asked for, once, the first time it fills
 * (keel__io_reserve(), keel__io_sqe_full(): paths a full SQ takes anyway,
 * so the loop pays nothing per enter for it): an idle or lightly used loop
 * does not hold 256 SQEs it never fills. The CQ keeps its size: noticing
 * it filling would cost a check on every enter (measured: 55 instructions
 * per enter while small, +9 % on keel-micro nop_b1). Only with the default
 * sizes (sizes asked for are kept), not on restricted rings (their
 * restrictions do not allow resizing) and where the kernel resizes (6.13,
 * DEFER_TASKRUN rings) a ring without an SQ array (NO_SQARRAY: after a
 * resize, 6.18 reports the new array's offset as 0, where writing the
 * array would overwrite the ring's head and tail); KEEL_RING_RESIZE=0
 * turns it off. A process's first such ring is set up at full size and
 * shrunk (a refusal leaves it as it was), later ones are set up small.
 */
#define SMALL_SQ 32u

/* 1: a ring of this process's was resized (later loops are set up with
 * the small SQ at once, saving the resize: 38 us a loop); -1: the kernel
 * refused (later loops do not try). */
static int resize_seen;

static int ring_start_small(struct keel__io *io, unsigned sq)
{
	unsigned cq = io->ring.cq.ring_entries;

	if (!(io->ring.flags & IORING_SETUP_DEFER_TASKRUN) ||
	    !(io->ring.flags & IORING_SETUP_NO_SQARRAY) || sq <= SMALL_SQ ||
	    __atomic_load_n(&resize_seen, __ATOMIC_RELAXED) < 0)
		return 0;
	if (io->ring.sq.ring_entries == SMALL_SQ) {
		io->grow_sq = sq;
		return 0;
	}
	int err = ring_resize(io, SMALL_SQ, cq);

	if (io->ring_lost)
		return err;
	if (err) {
		if (err == -EINVAL)
			__atomic_store_n(&resize_seen, -1, __ATOMIC_RELAXED);
		note_downgrade(io,
			       err == -EINVAL
				   ? "RESIZE_RINGS refused (needs Linux "
				     "6.13): SQ at full size"
				   : "RESIZE_RINGS failed: SQ at full size");
		return 0;
	}
	__atomic_store_n(&resize_seen, 1, __ATOMIC_RELAXED);
	io->grow_sq = sq;
	return 0;
}

/* Grow the small SQ to the size asked for (never while CQEs are being
 * reaped: the reaper reads them in place, and a resize moves them). */
static void ring_grow(struct keel__io *io)
{
	if (io->reaping)
		return;
	int err = ring_resize(io, io->grow_sq, io->ring.cq.ring_entries);

	if (err && !io->ring_lost)
		note_downgrade(io, "RESIZE_RINGS failed: SQ stays small");
	io->grow_sq = 0;
}

/* A backend's ring (backend.h): its setup stands for the kernel's. */
static int backend_init(struct keel__io *io, struct keel__backend *b,
			unsigned sq, unsigned cq)
{
	unsigned sq2 = 1, cq2 = 1;

	while (sq2 < sq)
		sq2 <<= 1;
	while (cq2 < cq)
		cq2 <<= 1;
	memset(&io->ring, 0, sizeof(io->ring));
	int err = b->setup(b, &io->ring, sq2, cq2, io->ops_supported);

	if (err) {
		/* Nothing was set up: fini must not tear it down. */
		return err;
	}
	io->backend = b;
	keel__io_enter_update(io);
	return 0;
}

/* The epoll backend (io/epoll.c); `why` it was chosen, if not asked for. */
static int epoll_init(struct keel__io *io, unsigned sq, unsigned cq,
		      const char *why)
{
	struct keel__backend *b = keel__epoll_new();

	if (!b)
		return -ENOMEM;
	int err = backend_init(io, b, sq, cq);

	if (err) {
		keel__epoll_drop(b);
		return err;
	}
	snprintf(io->downgrades, sizeof(io->downgrades), "%s", why ? why : "");
	if (why)
		keel__backend_notice(why);
	return 0;
}

int keel__io_init(struct keel__io *io, const struct keel_loop_opts *opts,
		  struct keel__backend *backend)
{
	unsigned sq = opts && opts->sq_entries ? opts->sq_entries : 256;
	unsigned cq = opts && opts->cq_entries ? opts->cq_entries : 4 * sq;
	unsigned flags = opts ? opts->flags : 0;
	const struct setup_try *tries = try_default;
	size_t ntries = sizeof(try_default) / sizeof(try_default[0]);
	int err = -EINVAL;
	int mode = keel__backend_mode(opts);

	/* First: a create that fails the checks below still runs fini. */
	io->event_fd = -1;
	io->hib_ep = -1;
	if (mode < 0 ||
	    (flags & ~(KEEL_LOOP_SQPOLL | KEEL_LOOP_NO_DEFER |
		       KEEL_LOOP_RESTRICT | KEEL_LOOP_NO_IDLE_POLL)))
		return -EINVAL;
	/* Checked here: the kernel's -EINVAL would read as a missing flag. */
	if (sq > KEEL__MAX_SQ || cq < sq || cq > KEEL__MAX_CQ)
		return -EINVAL;
	if (flags & KEEL_LOOP_SQPOLL) {
		tries = try_sqpoll;
		ntries = sizeof(try_sqpoll) / sizeof(try_sqpoll[0]);
	} else if (flags & KEEL_LOOP_NO_DEFER) {
		tries = try_no_defer;
		ntries = sizeof(try_no_defer) / sizeof(try_no_defer[0]);
	}
	io->downgrades[0] = '\0';
	io->zc_threshold = 16384;
	/* Ring restrictions (io/restrict.c): the ring starts disabled. */
	err = keel__restrict_plan(io, opts);
	if (err)
		return err;
	unsigned r_disabled = io->restrict_ops ? IORING_SETUP_R_DISABLED : 0;
	/* The default sizes, a ring that can be resized: a small SQ. */
	bool small = !(opts && (opts->sq_entries || opts->cq_entries)) &&
		     !io->restrict_ops &&
		     !(flags & (KEEL_LOOP_SQPOLL | KEEL_LOOP_NO_DEFER)) &&
		     !env_off("KEEL_RING_RESIZE") &&
		     !env_off("KEEL_NO_SQARRAY");
	unsigned setup_sq =
	    small && __atomic_load_n(&resize_seen, __ATOMIC_RELAXED) > 0
		? SMALL_SQ
		: sq;

	if (backend) {
		err = backend_init(io, backend, sq, cq);
		if (err)
			return err;
		goto ready;
	}
	if (mode == KEEL_BACKEND_EPOLL) {
		err = epoll_init(io, sq, cq, NULL);
		if (err)
			return err;
		goto ready;
	}
	for (size_t i = 0; i < ntries; i++) {
		if (tries[i].dropped)
			note_downgrade(io, tries[i].dropped);
		err = ring_setup(io, setup_sq, cq,
				 tries[i].flags | IORING_SETUP_CQSIZE |
				     r_disabled);
		if (err != -EINVAL)
			break;
	}
	if (mode == KEEL_BACKEND_AUTO &&
	    (err == -EPERM || err == -ENOSYS || err == -ENOMEM)) {
		char why[128];

		snprintf(why, sizeof(why),
			 "io_uring refused: io_uring_setup: %s",
			 strerror(-err));
		err = epoll_init(io, sq, cq, why);
		if (err)
			return err;
		goto ready;
	}
	if (err)
		return err;
	RING_MAPPED();
	probe_ops(io);
	if (small) {
		err = ring_start_small(io, sq);
		if (err) {
			io->ring_ready = true; /* fini unmaps it */
			return err;
		}
	}
	/* Saves an fget/fput per io_uring_enter; the plain fd stays open
	 * for hosts that poll it. */
	io->ring_fd_registered = io_uring_register_ring_fd(&io->ring) == 1;
ready:
	io->ring_ready = true;
	io->setup_flags = io->ring.flags;
	io->features = io->ring.features;
	io->sq_entries = io->ring.sq.ring_entries;
	io->cq_entries = io->ring.cq.ring_entries;
	io->send_vec = keel__send_vec_wanted(io);
	if (!(io->features & IORING_FEAT_NODROP))
		note_downgrade(io, "no FEAT_NODROP (needs Linux 5.5): a CQ "
				   "overflow could lose completions");
	keel__io_install_hooks(io);
	keel__stream_io_init(io);
	/* Restrictions: registered and the ring enabled, or noted as not
	 * applying to a backend. On error keel__io_fini() tears down. */
	err = keel__restrict_apply(io);
	if (err)
		return err;
	/* Idle recv streams park on a poll where the ring executes one (and
	 * its restrictions allow it). */
	io->idle_poll =
	    !(flags & KEEL_LOOP_NO_IDLE_POLL) &&
	    keel_loop_has_op((struct keel_loop *)io, IORING_OP_POLL_ADD);
	io->idle_ns =
	    (opts && opts->idle_ms ? opts->idle_ms : 250) * 1000000ull;
	return keel__ledger_init(&io->ledger);
}

/*
 * Why an eventfd and not the ring fd: with DEFER_TASKRUN a completion is
 * task work for the submitting thread, and the kernel does not wake
 * pollers of the ring fd for it (measured on 6.18: an epoll on the ring fd
 * slept through a completed recv); it does signal a registered eventfd.
 * Created on first use, because signalling it costs every completion.
 */
int keel__io_event_fd(struct keel__io *io)
{
	if (io->backend && io->backend->poll_fd)
		return io->backend->poll_fd(io->backend);
	if (io->event_fd >= 0)
		return io->event_fd;
	int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);

	if (fd < 0)
		return -errno;
	int err = keel__io_register(io, IORING_REGISTER_EVENTFD, &fd, 1);

	if (err) {
		close(fd);
		return err;
	}
	io->event_fd = fd;
	return fd;
}

void keel__io_event_fd_drain(struct keel__io *io)
{
	uint64_t count;

	if (io->event_fd >= 0 && read(io->event_fd, &count, sizeof(count))) {
		/* nonblocking: EAGAIN when it was not signalled */
	}
}

/* Slots of the direct-descriptor table, registered on first use. */
#define KEEL__FILE_SLOTS 16384u

int keel__io_files(struct keel__io *io)
{
	if (io->files)
		return 0;
	struct io_uring_rsrc_register reg = {
	    .nr = KEEL__FILE_SLOTS,
	    .flags = IORING_RSRC_REGISTER_SPARSE,
	};
	int err =
	    keel__io_register(io, IORING_REGISTER_FILES2, &reg, sizeof(reg));

	if (err)
		return err;
	io->files = KEEL__FILE_SLOTS;
	return 0;
}

void keel__io_fini(struct keel__io *io)
{
	if (io->event_fd >= 0) {
		keel__io_register(io, IORING_UNREGISTER_EVENTFD, NULL, 0);
		close(io->event_fd);
		io->event_fd = -1;
	}
	if (io->ring_ready)
		keel__bufrings_fini(io);
	keel__stream_io_fini(io);
	keel__inject_fini(io);
	/* The ring's exit unregisters the buffers; keel's copy goes here. */
	keel__fixedbufs_clear(&io->fixedbufs);
	keel__ledger_fini(&io->ledger);
	keel__op_lat_fini(io);
	if (io->ring_ready && io->backend) {
		io->backend->teardown(io->backend, &io->ring);
		io->backend = NULL;
		keel__io_enter_update(io);
	} else if (io->ring_ready) {
		RING_UNMAPPED();
		io_uring_queue_exit(&io->ring);
	}
	io->ring_ready = false;
}

/* A backend, fault injection, cancels waiting for an SQE, or several (see
 * keel__io_enter()). */
int keel__io_enter_slow(struct keel__io *io, unsigned want, int64_t wait_ns)
{
	if (io->ring_lost)
		return io->ring_lost;
	if (io->ledger.nlater)
		wait_ns = keel__io_cancels_retry(io, wait_ns);
	if (io->inject)
		wait_ns = keel__inject_enter(io, want, wait_ns);
	if (io->backend)
		return io->backend->enter(io->backend, &io->ring, want,
					  wait_ns);
	return keel__io_enter_kernel(io, want, wait_ns);
}

/*
 * What liburing's submit does before its io_uring_enter, without SQPOLL
 * (the kernel's thread reads the tail itself): publish the SQ tail; the
 * SQEs the kernel has not consumed yet.
 */
static unsigned sq_publish(struct io_uring *ring)
{
	struct io_uring_sq *sq = &ring->sq;
	unsigned tail = sq->sqe_tail;

	if (sq->sqe_head != tail) {
		sq->sqe_head = tail;
		__atomic_store_n(sq->ktail, tail, __ATOMIC_RELEASE);
	}
	return tail - *sq->khead;
}

/* The ring fd to enter with, the registered one if there is: `flags`
 * gets IORING_ENTER_REGISTERED_RING then. */
static unsigned enter_fd(const struct keel__io *io, unsigned *flags)
{
	if (!io->ring_fd_registered)
		return (unsigned)io->ring.ring_fd;
	*flags |= IORING_ENTER_REGISTERED_RING;
	return (unsigned)io->ring.enter_ring_fd;
}

int keel__io_enter_wait(struct keel__io *io, unsigned want)
{
	unsigned flags = IORING_ENTER_GETEVENTS;
	unsigned fd = enter_fd(io, &flags);

	return io_uring_enter(fd, sq_publish(&io->ring), want, flags, NULL);
}

bool keel__io_wait_timer(struct keel__io *io, uint64_t deadline)
{
	struct io_uring_sqe *sqe;

	if (io->wait_deadline && io->wait_deadline <= deadline)
		return true;
	/* A later deadline needs nothing: the armed timeout wakes the loop
	 * early once, and the next wait arms it anew. An earlier one
	 * replaces it: remove it (its -ECANCELED then has an old
	 * generation), queue a new one. */
	if (io_uring_sq_space_left(&io->ring) < (io->wait_deadline ? 2u : 1u))
		return false;
	if (io->wait_deadline) {
		sqe = keel__sq_take(io);
		io_uring_prep_timeout_remove(
		    sqe, KEEL__UD_WAIT_TIMER(io->wait_gen), 0);
		io_uring_sqe_set_data64(sqe, KEEL__UD_INTERNAL);
	}
	if (++io->wait_gen >= 1u << 29 || io->wait_gen < KEEL__WAIT_TIMER_GEN0)
		io->wait_gen = KEEL__WAIT_TIMER_GEN0;
	io->wait_ts.tv_sec = (long long)(deadline / 1000000000);
	io->wait_ts.tv_nsec = (long long)(deadline % 1000000000);
	sqe = keel__sq_take(io);
	io_uring_prep_timeout(sqe, &io->wait_ts, 0, IORING_TIMEOUT_ABS);
	io_uring_sqe_set_data64(sqe, KEEL__UD_WAIT_TIMER(io->wait_gen));
	io->wait_deadline = deadline;
	return true;
}

void keel__io_wait_timer_cqe(struct keel__io *io, uint64_t ud)
{
	/* Fired (-ETIME) or removed: a superseded arm's CQE changes
	 * nothing. */
	if ((uint32_t)ud >> 3 == io->wait_gen)
		io->wait_deadline = 0;
	io->count.internal_cqes++;
}

/*
 * The kernel's min-wait (IORING_FEAT_MIN_TIMEOUT, Linux 6.12): submit, then
 * wait up to `min_wait_ns` for `want` CQEs; if by then any CQE is there,
 * return, else wait on for the first one, at most `wait_ns` (negative: no
 * limit). liburing 2.3 has no call for it, so the SQ tail is published here
 * (sq_publish(); no SQPOLL: keel__io_has_min_wait()).
 */
#define MIN_WAIT_LIMIT_NS (3600ll * 1000000000)

int keel__io_enter_min_wait(struct keel__io *io, unsigned want,
			    int64_t min_wait_ns, int64_t wait_ns)
{
	unsigned flags = IORING_ENTER_GETEVENTS | IORING_ENTER_EXT_ARG;
	unsigned fd = enter_fd(io, &flags), usec;
	struct io_uring_getevents_arg arg = {0};
	struct __kernel_timespec ts;

	/* Without a general timeout (none, or one so far off that the kernel
	 * takes it for none) the kernel ends the whole wait at the min-wait:
	 * "no limit" is an hour, which only a loop idle since it was busy
	 * could ever reach (it then enters again). */
	if (wait_ns < 0 || wait_ns > MIN_WAIT_LIMIT_NS)
		wait_ns = MIN_WAIT_LIMIT_NS;
	usec = (unsigned)((min_wait_ns + 999) / 1000);
	ts.tv_sec = wait_ns / 1000000000;
	ts.tv_nsec = wait_ns % 1000000000;
	KEEL_GETEVENTS_MIN_WAIT(arg) = usec ? usec : 1;
	arg.ts = (uint64_t)(uintptr_t)&ts;
	return io_uring_enter2(fd, sq_publish(&io->ring), want, flags,
			       (sigset_t *)&arg, sizeof(arg));
}

int keel__io_register(struct keel__io *io, unsigned opcode, void *arg,
		      unsigned nr_args)
{
	struct io_uring *ring = &io->ring;

	if (io->restricted &&
	    (opcode >= 32 || !(io->regs_allowed >> opcode & 1)))
		return keel__restrict_refuse(io);
	if (io->backend)
		return io->backend->reg(io->backend, ring, opcode, arg,
					nr_args);
	switch (opcode) {
	case IORING_REGISTER_PBUF_RING:
		return io_uring_register_buf_ring(ring, arg, 0);
	case IORING_UNREGISTER_PBUF_RING:
		return io_uring_unregister_buf_ring(
		    ring, ((struct io_uring_buf_reg *)arg)->bgid);
	case IORING_REGISTER_FILES2:
		return io_uring_register_files_sparse(
		    ring, ((struct io_uring_rsrc_register *)arg)->nr);
	case IORING_REGISTER_BUFFERS:
		return io_uring_register_buffers(ring, arg, nr_args);
	case IORING_UNREGISTER_BUFFERS:
		return io_uring_unregister_buffers(ring);
	case IORING_REGISTER_EVENTFD:
		return io_uring_register_eventfd(ring, *(int *)arg);
	case IORING_UNREGISTER_EVENTFD:
		return io_uring_unregister_eventfd(ring);
	default:
		return -EINVAL;
	}
}

int keel__io_submit(struct keel__io *io)
{
	int n = keel__io_enter(io, 0, 0);

	io->count.enters++;
	if (n > 0)
		io->count.sqes += (unsigned)n;
	return n;
}

void keel__io_reserve(struct keel__io *io, unsigned n)
{
	if (io_uring_sq_space_left(&io->ring) >= n)
		return;
	if (io->grow_sq) {
		ring_grow(io);
		if (io_uring_sq_space_left(&io->ring) >= n)
			return;
	}
	/* Not enough room left: hand what is queued to the kernel. */
	io->count.sq_full++;
	keel__io_submit(io);
}

struct io_uring_sqe *keel__io_sqe_full(struct keel__io *io)
{
	struct io_uring_sqe *sqe;

	if (io->grow_sq) {
		ring_grow(io);
		sqe = io_uring_get_sqe(&io->ring);
		if (sqe)
			return sqe;
	}
	/* A full SQ: hand what is queued to the kernel and carry on. */
	io->count.sq_full++;
	keel__io_submit(io);
	return io_uring_get_sqe(&io->ring);
}

int keel_loop_has_op(const struct keel_loop *loop, unsigned opcode)
{
	const struct keel__io *io = (const struct keel__io *)loop;

	return opcode < 128 &&
	       (io->ops_supported[opcode / 64] >> (opcode % 64) & 1) &&
	       (!io->restricted || keel__op_allowed(io, opcode));
}

const char *keel_loop_explain(int err)
{
	switch (err) {
	case 0:
		return "no error";
	case -EPERM:
		return "io_uring is not permitted here: the sysctl "
		       "kernel.io_uring_disabled is 1 (only its group) or 2 "
		       "(nobody), or a seccomp profile (container runtimes "
		       "ship one) blocks io_uring_setup; set "
		       "kernel.io_uring_disabled=0 or allow io_uring_setup, "
		       "io_uring_enter and io_uring_register";
	case -ENOSYS:
		return "this kernel has no io_uring (keel needs Linux 5.19, "
		       "and 6.1 or newer for DEFER_TASKRUN)";
	case -ENOMEM:
		return "not enough locked memory for the io_uring ring: raise "
		       "the memlock limit (ulimit -l, or LimitMEMLOCK= in a "
		       "systemd unit) or use smaller rings (sq_entries)";
	case -EINVAL:
		return "invalid loop options: sq_entries must be at most "
		       "32768, "
		       "cq_entries between sq_entries and 65536, flags "
		       "only KEEL_LOOP_*, restrict_ops only KEEL_OPS_* and "
		       "with KEEL_LOOP_RESTRICT (and KEEL_RESTRICT, if set, "
		       "1, all, 0 or a list of net, files, pipes), backend "
		       "(or KEEL_BACKEND) auto, io_uring or epoll";
	case -EMFILE:
	case -ENFILE:
		return "out of file descriptors for the io_uring ring: raise "
		       "the open-files limit (ulimit -n)";
	default:
		return "io_uring setup failed with an unexpected error; see "
		       "strerror() of the returned value";
	}
}

static const struct {
	unsigned bit;
	const char *name;
} setup_names[] = {
    {IORING_SETUP_SQPOLL, "SQPOLL"},
    {IORING_SETUP_CQSIZE, "CQSIZE"},
    {IORING_SETUP_SUBMIT_ALL, "SUBMIT_ALL"},
    {IORING_SETUP_COOP_TASKRUN, "COOP_TASKRUN"},
    {IORING_SETUP_TASKRUN_FLAG, "TASKRUN_FLAG"},
    {IORING_SETUP_SINGLE_ISSUER, "SINGLE_ISSUER"},
    {IORING_SETUP_DEFER_TASKRUN, "DEFER_TASKRUN"},
    {IORING_SETUP_NO_SQARRAY, "NO_SQARRAY"},
};

/* Ring restrictions' part of the description (io/restrict.c), after `w`. */
static size_t describe_tail(const struct keel__io *io, char *buf, size_t len,
			    int w)
{
	size_t n = w < 0 ? 0 : (size_t)w;

	return n + keel__restrict_describe(io, n < len ? buf + n : NULL,
					   n < len ? len - n : 0);
}

size_t keel_loop_describe(const struct keel_loop *loop, char *buf, size_t len)
{
	const struct keel__io *io = (const struct keel__io *)loop;
	char flags[160] = "";
	size_t n = 0;

	for (size_t i = 0; i < sizeof(setup_names) / sizeof(setup_names[0]);
	     i++)
		if (io->setup_flags & setup_names[i].bit)
			n += (size_t)snprintf(flags + n, sizeof(flags) - n,
					      "%s%s", n ? " " : "",
					      setup_names[i].name);
	if (io->backend) {
		int w = snprintf(
		    buf, len,
		    "backend: %s%s%s%s; sq %u, cq %u; features:%s%s%s",
		    io->backend->name, io->downgrades[0] ? " (" : "",
		    io->downgrades, io->downgrades[0] ? ")" : "",
		    io->sq_entries, io->cq_entries,
		    io->features & IORING_FEAT_NODROP ? " NODROP" : "",
		    io->features & IORING_FEAT_EXT_ARG ? " EXT_ARG" : "",
		    io->features & IORING_FEAT_CQE_SKIP ? " CQE_SKIP" : "");
		return describe_tail(io, buf, len, w);
	}
	int w = snprintf(
	    buf, len,
	    "flags: %s; sq %u, cq %u; features:%s%s%s; registered ring "
	    "fd: %s; downgrades: %s",
	    flags, io->sq_entries, io->cq_entries,
	    io->features & IORING_FEAT_NODROP ? " NODROP" : "",
	    io->features & IORING_FEAT_EXT_ARG ? " EXT_ARG" : "",
	    io->features & IORING_FEAT_CQE_SKIP ? " CQE_SKIP" : "",
	    io->ring_fd_registered ? "yes" : "no",
	    io->downgrades[0] ? io->downgrades : "none");
	return describe_tail(io, buf, len, w);
}
