/* SPDX-License-Identifier: MIT */
/*
 * epoll.c: the epoll backend (backend.h): keel's io_uring SQEs executed on
 * a real kernel that refuses io_uring (a seccomp profile, the sysctl
 * kernel.io_uring_disabled), with readiness and nonblocking system calls.
 *
 * It owns one epoll descriptor per loop, the SQ/CQ memory of the loop's
 * `struct io_uring` (in the kernel's layout, so liburing's inline helpers
 * work on it unchanged), the ops taken from the SQ until their last CQE,
 * the direct-descriptor table (slots -> real descriptors), the provided-
 * buffer rings keel registered (their memory stays keel's), the timers of
 * TIMEOUT and LINK_TIMEOUT, and a doorbell: an eventfd in the epoll set
 * through which other threads post CQEs (keel's cross-loop wakes, and
 * MSG_RING between loops on this backend: a process-wide registry maps a
 * ring's ring_fd number to its backend).
 *
 * An op is attempted when it starts (at once, or when the op before it in
 * its link chain completes). A socket op that gets EAGAIN parks on its
 * descriptor's waiters; the descriptor is in the epoll set edge-triggered
 * for input and output, added on the first park, so a readiness edge
 * retries the ops parked for that direction. Why edge-triggered and kept
 * registered: a stream's multishot recv parks at every EAGAIN, and
 * re-arming a one-shot registration would cost an epoll_ctl per request.
 * The price is that a registration outlives a close() made behind the
 * backend's back; a descriptor's registration is therefore checked again
 * (EPOLL_CTL_ADD, EEXIST is fine) on an op's first park unless an event or
 * an add has proved it in this same enter, when no user code can have run.
 *
 * Regular files and block devices have no readiness. As on io_uring, an
 * op is attempted without blocking first (RWF_NOWAIT: a read from the page
 * cache; openat with a cached lookup and O_NONBLOCK, which is also why a
 * FIFO opens at once, as with io_uring); what would block (and fsync and
 * statx, which io_uring never attempts inline) goes to a worker thread
 * (epoll_pool.c) and comes back through the doorbell below to complete on
 * the loop's thread like any op: links, linked timeouts, fd references.
 * A queued op is cancelled; one a worker runs cannot be stopped: its
 * cancel (and its linked timeout) says -EALREADY and it completes with its
 * own result. The ring's teardown waits for the ops workers still run.
 *
 * A close through the ring (CLOSE) while ops of this backend still use the
 * descriptor defers the real close(2) until the last of them completes, as
 * the kernel's file references do: the CQE says 0 at once.
 */
#include "epoll.h"
#include "epoll_pool.h"
#include "io.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/openat2.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define NO_SLOT UINT32_MAX
/* Attempts of a multishot op in a row before others get their turn. */
#define MULTISHOT_BURST 16
/* epoll_event.data tags for the backend's own descriptors. */
#define TAG_DOORBELL (1ull << 62)
#define TAG_TIMER    (1ull << 61)
/* ring_fd numbers: well above any descriptor (fs.nr_open <= 2^30). */
#define EP_RING_FD_BASE 0x60000000

struct ep_bufring {
	struct io_uring_buf_ring *br; /* NULL: no ring with this id */
	uint32_t mask;
	uint16_t head;
	bool inc;
};

struct ep_ring_words {
	unsigned sq_head, sq_tail, sq_flags, sq_dropped;
	unsigned cq_head, cq_tail, cq_flags, cq_overflow;
};

/* A descriptor the backend has seen. */
struct ep_fd {
	struct keel__list waiters; /* parked ops, in park order */
	uint64_t proved;	   /* the enter whose event or add proved it */
	uint32_t refs;		   /* started ops using it */
	bool registered;	   /* in the epoll set (as far as we know) */
	bool eventful;		   /* an edge said RDHUP, PRI, ERR or HUP */
	bool close_pending;	   /* CLOSE came while refs > 0 */
};

struct ep_remote_cqe {
	uint64_t ud;
	int res;
};

enum { OP_WAITING, OP_RUNNING, OP_PARKED, OP_TIMER, OP_QUEUED, OP_POOL };

struct ep_op {
	struct keel__link link; /* r->ops while started */
	struct keel__link wait; /* fd waiters or r->runq */
	struct ep_ring *r;
	struct io_uring_sqe sqe;
	int fd;		      /* the real descriptor, -1: none */
	int pfd;	      /* the descriptor it parks on */
	uint32_t events;      /* EPOLLIN or EPOLLOUT, while parked */
	struct ep_op *next;   /* the rest of its link chain */
	struct ep_op *lt;     /* its linked timeout */
	struct ep_op *target; /* a linked timeout's op */
	uint64_t deadline;
	uint32_t hslot;
	uint8_t state;
	bool hard;
	bool started;
	bool multishot;
	bool zc_notif;
	bool parked_before;
	bool blocking;	 /* no readiness: run the plain system call */
	bool connecting; /* connect(2) said EINPROGRESS */
	bool fd_ref;	 /* holds a reference on r->fds[fd] */
	bool busy;	 /* OP_POOL, and a worker has started it */
	bool tcp_known;	 /* tcp_plain is known (drained()) */
	bool tcp_plain;	 /* a TCP socket without an upper-layer protocol */
	/* OP_POOL: the job, its result, and the ring's list of those done. */
	struct keel__ep_job job;
	int res;
	struct ep_op *done_next;
};

struct ep_ring {
	struct keel__backend b; /* first: the loop's backend */
	struct io_uring *ring;
	uint32_t id;
	int epfd;
	int doorbell;	/* eventfd: other threads posted CQEs */
	int timerfd;	/* for hosts sleeping on the epoll fd; -1 until then */
	uint64_t armed; /* the timerfd's deadline, 0: disarmed */
	int eventfd;	/* registered eventfd, -1: none */
	uint64_t epoch; /* enters so far */
	unsigned skipped; /* enters in a row that did not poll */
	struct ep_ring_words *w;
	unsigned *sq_array;
	struct io_uring_sqe *sqes;
	struct io_uring_cqe *cqes;
	struct io_uring_cqe *ovf;
	uint32_t ovf_head, ovf_n, ovf_cap;
	int *fixed; /* direct descriptors: slot -> real fd, -1: empty */
	uint32_t nfixed;
	struct keel__fixedbufs fbufs; /* registered buffers */
	struct ep_bufring *bufs;
	uint32_t nbufs;
	struct ep_fd *fds; /* by descriptor number */
	uint32_t nfds;
	struct keel__list ops;	/* started ops, in start order */
	struct keel__list runq; /* ops to attempt again without waiting */
	struct ep_op **heap;	/* timers, by deadline */
	uint32_t nheap, heap_cap;
	/* CQEs posted by other threads, under `lock`. */
	pthread_mutex_t lock;
	struct ep_remote_cqe *remote;
	uint32_t nremote, remote_cap;
	struct ep_op *done, *done_tail; /* back from the pool, in order */
	bool pipe_blocked;     /* this enter blocked SIGPIPE (splice) */
	bool pipe_was_blocked; /* the thread blocked it already */
	bool pipe_raised;      /* a splice raised one: take it back */
	struct ep_op *spare;   /* freed ops kept for the next SQEs */
	uint32_t nspare;
	int remote_pending; /* atomic: nremote != 0 or done != NULL */
};

static struct ep_ring *ring_of(struct keel__backend *b)
{
	return (struct ep_ring *)b;
}

static uint64_t mono_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- the process-wide registry of rings (MSG_RING) ---- */

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct ep_ring **registry;
static uint32_t nregistry;

static int registry_add(struct ep_ring *r)
{
	int err = 0;

	pthread_mutex_lock(&registry_lock);
	uint32_t i;

	for (i = 0; i < nregistry && registry[i]; i++)
		;
	if (i == nregistry) {
		struct ep_ring **v =
		    realloc(registry, (nregistry + 1) * sizeof(*v));

		if (v) {
			registry = v;
			registry[nregistry++] = NULL;
		} else {
			err = -ENOMEM;
		}
	}
	if (!err) {
		registry[i] = r;
		r->id = i;
	}
	pthread_mutex_unlock(&registry_lock);
	return err;
}

static void registry_remove(struct ep_ring *r)
{
	pthread_mutex_lock(&registry_lock);
	registry[r->id] = NULL;
	pthread_mutex_unlock(&registry_lock);
}

/* ---- CQEs ---- */

static void signal_eventfd(struct ep_ring *r)
{
	uint64_t one = 1;

	if (r->eventfd >= 0 && write(r->eventfd, &one, sizeof(one)) < 0) {
		/* a full counter still reads as readable */
	}
}

static void post_cqe(struct ep_ring *r, uint64_t ud, int res, unsigned flags)
{
	struct ep_ring_words *w = r->w;
	struct io_uring_cqe *cqe;

	if (r->ovf_n || w->cq_tail - w->cq_head >= r->ring->cq.ring_entries) {
		/* FEAT_NODROP: keep it, in order, until an enter has room. */
		if (r->ovf_head + r->ovf_n == r->ovf_cap) {
			if (r->ovf_head) {
				memmove(r->ovf, r->ovf + r->ovf_head,
					r->ovf_n * sizeof(*r->ovf));
				r->ovf_head = 0;
			} else {
				uint32_t cap = r->ovf_cap ? 2 * r->ovf_cap : 16;
				struct io_uring_cqe *v =
				    realloc(r->ovf, cap * sizeof(*v));

				if (!v)
					abort(); /* a lost CQE would hang */
				r->ovf = v;
				r->ovf_cap = cap;
			}
		}
		cqe = &r->ovf[r->ovf_head + r->ovf_n++];
		w->sq_flags |= IORING_SQ_CQ_OVERFLOW;
	} else {
		cqe = &r->cqes[w->cq_tail & r->ring->cq.ring_mask];
		__atomic_store_n(&w->cq_tail, w->cq_tail + 1, __ATOMIC_RELEASE);
	}
	cqe->user_data = ud;
	cqe->res = res;
	cqe->flags = flags;
	signal_eventfd(r);
}

static void flush_overflow(struct ep_ring *r)
{
	struct ep_ring_words *w = r->w;

	while (r->ovf_n && w->cq_tail - w->cq_head < r->ring->cq.ring_entries) {
		r->cqes[w->cq_tail & r->ring->cq.ring_mask] =
		    r->ovf[r->ovf_head++];
		r->ovf_n--;
		__atomic_store_n(&w->cq_tail, w->cq_tail + 1, __ATOMIC_RELEASE);
	}
	if (!r->ovf_n) {
		r->ovf_head = 0;
		w->sq_flags &= ~IORING_SQ_CQ_OVERFLOW;
	}
}

/* From any thread: a CQE for this ring (a doorbell, a MSG_RING). */
static int remote_post(struct ep_ring *r, uint64_t ud, int res)
{
	uint64_t one = 1;
	int err = 0;

	pthread_mutex_lock(&r->lock);
	if (r->nremote == r->remote_cap) {
		uint32_t cap = r->remote_cap ? 2 * r->remote_cap : 16;
		struct ep_remote_cqe *v = realloc(r->remote, cap * sizeof(*v));

		if (!v) {
			pthread_mutex_unlock(&r->lock);
			return -ENOMEM;
		}
		r->remote = v;
		r->remote_cap = cap;
	}
	r->remote[r->nremote++] = (struct ep_remote_cqe){ud, res};
	__atomic_store_n(&r->remote_pending, 1, __ATOMIC_RELEASE);
	pthread_mutex_unlock(&r->lock);
	if (write(r->doorbell, &one, sizeof(one)) < 0)
		err = 0; /* a full counter still wakes the loop */
	return err;
}

static void pool_finish(struct ep_op *op);

static void drain_remote(struct ep_ring *r)
{
	uint64_t count;
	struct ep_op *done;

	if (!__atomic_load_n(&r->remote_pending, __ATOMIC_ACQUIRE))
		return;
	if (read(r->doorbell, &count, sizeof(count)) < 0) {
		/* nonblocking: already drained */
	}
	pthread_mutex_lock(&r->lock);
	for (uint32_t i = 0; i < r->nremote; i++)
		post_cqe(r, r->remote[i].ud, r->remote[i].res, 0);
	r->nremote = 0;
	done = r->done;
	r->done = r->done_tail = NULL;
	__atomic_store_n(&r->remote_pending, 0, __ATOMIC_RELAXED);
	pthread_mutex_unlock(&r->lock);
	while (done) {
		struct ep_op *op = done;

		done = op->done_next;
		pool_finish(op);
	}
}

/* ---- descriptors ---- */

static struct ep_fd *fd_entry(struct ep_ring *r, int fd)
{
	if (fd < 0)
		return NULL;
	if ((uint32_t)fd >= r->nfds) {
		uint32_t n = r->nfds ? r->nfds : 64;

		while (n <= (uint32_t)fd)
			n *= 2;
		struct ep_fd *v = realloc(r->fds, n * sizeof(*v));

		if (!v)
			return NULL;
		memset(v + r->nfds, 0, (n - r->nfds) * sizeof(*v));
		r->fds = v;
		r->nfds = n;
	}
	return &r->fds[fd];
}

/* A descriptor number the kernel just handed out names a new file. */
static void fd_fresh(struct ep_ring *r, int fd)
{
	struct ep_fd *e = fd_entry(r, fd);

	if (e) {
		e->registered = false;
		e->eventful = false;
	}
}

static void fd_really_close(struct ep_ring *r, int fd)
{
	struct ep_fd *e = fd_entry(r, fd);

	if (e) {
		e->registered = false;
		e->close_pending = false;
	}
	close(fd);
}

/* close(2), or later when ops of ours still use it (see the top). */
static int fd_close(struct ep_ring *r, int fd)
{
	struct ep_fd *e = fd_entry(r, fd);

	if (e && e->refs) {
		if (e->close_pending)
			return -EBADF;
		e->close_pending = true;
		return 0;
	}
	if (e) {
		e->registered = false;
	}
	return close(fd) ? -errno : 0;
}

static void fd_put(struct ep_ring *r, int fd)
{
	struct ep_fd *e = &r->fds[fd];

	if (--e->refs == 0 && e->close_pending)
		fd_really_close(r, fd);
}

/*
 * Asked of the file every time, not remembered per number: a program may
 * close(2) a descriptor behind the ring's back and get the number again
 * for a blocking socket (the proxy's pipes, then its backend socket), and
 * one blocking call would stop the loop.
 */
static int set_nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);

	if (fl < 0)
		return -errno;
	if (!(fl & O_NONBLOCK) && fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
		return -errno;
	return 0;
}

/* ---- timers: a binary heap on deadline ---- */

static void heap_set(struct ep_ring *r, uint32_t i, struct ep_op *op)
{
	r->heap[i] = op;
	op->hslot = i;
}

static void heap_up(struct ep_ring *r, uint32_t i)
{
	struct ep_op *op = r->heap[i];

	while (i) {
		uint32_t p = (i - 1) / 2;

		if (r->heap[p]->deadline <= op->deadline)
			break;
		heap_set(r, i, r->heap[p]);
		i = p;
	}
	heap_set(r, i, op);
}

static void heap_down(struct ep_ring *r, uint32_t i)
{
	struct ep_op *op = r->heap[i];

	for (;;) {
		uint32_t c = 2 * i + 1;

		if (c >= r->nheap)
			break;
		if (c + 1 < r->nheap &&
		    r->heap[c + 1]->deadline < r->heap[c]->deadline)
			c++;
		if (r->heap[c]->deadline >= op->deadline)
			break;
		heap_set(r, i, r->heap[c]);
		i = c;
	}
	heap_set(r, i, op);
}

static void timer_remove(struct ep_ring *r, struct ep_op *op)
{
	uint32_t i = op->hslot;

	if (i == NO_SLOT)
		return;
	op->hslot = NO_SLOT;
	r->nheap--;
	if (i == r->nheap)
		return;
	heap_set(r, i, r->heap[r->nheap]);
	heap_down(r, i);
	heap_up(r, r->heap[i]->hslot);
}

static void timer_add(struct ep_ring *r, struct ep_op *op)
{
	if (r->nheap == r->heap_cap) {
		uint32_t cap = r->heap_cap ? 2 * r->heap_cap : 64;
		struct ep_op **h = realloc(r->heap, cap * sizeof(*h));

		if (!h)
			abort(); /* a lost timer would hang its task */
		r->heap = h;
		r->heap_cap = cap;
	}
	heap_set(r, r->nheap, op);
	r->nheap++;
	heap_up(r, op->hslot);
}

static uint64_t deadline_of(const struct io_uring_sqe *sqe)
{
	const struct __kernel_timespec *ts =
	    (const struct __kernel_timespec *)(uintptr_t)sqe->addr;
	uint64_t t =
	    (uint64_t)ts->tv_sec * 1000000000ull + (uint64_t)ts->tv_nsec;

	return sqe->timeout_flags & IORING_TIMEOUT_ABS ? t : mono_now() + t;
}

/* ---- op lifecycle ---- */

static void op_attempt(struct ep_op *op);
static void op_start(struct ep_op *op);

/* Take the op off whatever it waits on (timer, descriptor, run queue). */
static void op_unqueue(struct ep_op *op)
{
	struct ep_ring *r = op->r;

	timer_remove(r, op);
	if (op->state == OP_PARKED)
		keel__list_remove(&r->fds[op->pfd].waiters, &op->wait);
	else if (op->state == OP_QUEUED)
		keel__list_remove(&r->runq, &op->wait);
	op->state = OP_RUNNING;
}

/*
 * Ops are taken and given back on the loop's thread, one per SQE: a few
 * are kept for the next SQEs (the calloc/free pair was ~150 instructions
 * of an echo request's ~2,000).
 */
#define SPARE_OPS 256

static struct ep_op *op_alloc(struct ep_ring *r)
{
	struct ep_op *op = r->spare;

	if (!op)
		return calloc(1, sizeof(*op));
	r->spare = op->next;
	r->nspare--;
	memset(op, 0, sizeof(*op));
	return op;
}

static void op_release(struct ep_ring *r, struct ep_op *op)
{
	if (r->nspare == SPARE_OPS) {
		free(op);
		return;
	}
	op->next = r->spare;
	r->spare = op;
	r->nspare++;
}

static void op_free(struct ep_op *op)
{
	struct ep_ring *r = op->r;

	op_unqueue(op);
	if (op->started)
		keel__list_remove(&r->ops, &op->link);
	if (op->fd_ref)
		fd_put(r, op->fd);
	op_release(r, op);
}

static void op_cancel_unstarted(struct ep_op *op)
{
	while (op) {
		struct ep_op *next = op->next;

		post_cqe(op->r, op->sqe.user_data, -ECANCELED, 0);
		if (op->lt) {
			post_cqe(op->r, op->lt->sqe.user_data, -ECANCELED, 0);
			op_free(op->lt);
		}
		op_free(op);
		op = next;
	}
}

/*
 * A read or write that did less than asked fails, as on io_uring: its CQE
 * is posted even with CQE_SKIP_SUCCESS and its link is broken (links are
 * for "all of it, then the next").
 */
static bool short_rw(const struct ep_op *op, int res)
{
	const struct io_uring_sqe *sqe = &op->sqe;
	const struct iovec *iov = (const struct iovec *)(uintptr_t)sqe->addr;
	size_t want = 0;

	if (sqe->flags & IOSQE_BUFFER_SELECT)
		return false;
	switch (sqe->opcode) {
	case IORING_OP_READ:
	case IORING_OP_WRITE:
	case IORING_OP_READ_FIXED:
	case IORING_OP_WRITE_FIXED:
		want = sqe->len;
		break;
	case IORING_OP_READV:
	case IORING_OP_WRITEV:
		for (uint32_t i = 0; i < sqe->len; i++)
			want += iov[i].iov_len;
		break;
	default:
		return false;
	}
	return (size_t)res < want;
}

static bool skip_cqe(const struct ep_op *op, int res)
{
	return (op->sqe.flags & IOSQE_CQE_SKIP_SUCCESS) && res >= 0;
}

/* The op's last CQE; its linked timeout is disarmed; the chain goes on. */
static void op_finish(struct ep_op *op, int res, unsigned cflags)
{
	struct ep_ring *r = op->r;
	struct ep_op *next = op->next;
	bool hard = op->hard;
	bool failed = res >= 0 && short_rw(op, res);

	if (!skip_cqe(op, res) || failed)
		post_cqe(r, op->sqe.user_data, res,
			 cflags | (op->zc_notif && res >= 0 ? IORING_CQE_F_MORE
							    : 0));
	/* SEND_ZC copies here: a notification that says so when asked. */
	if (op->zc_notif && res >= 0)
		post_cqe(r, op->sqe.user_data,
			 op->sqe.ioprio & IORING_SEND_ZC_REPORT_USAGE
			     ? (int)IORING_NOTIF_USAGE_ZC_COPIED
			     : 0,
			 IORING_CQE_F_NOTIF);
	if (op->lt) {
		post_cqe(r, op->lt->sqe.user_data, -ECANCELED, 0);
		op_free(op->lt);
		op->lt = NULL;
	}
	op_free(op);
	if (!next)
		return;
	if ((res < 0 || failed) && !hard)
		op_cancel_unstarted(next);
	else
		op_start(next);
}

/*
 * Cancel a started op: false when a worker already runs it (it cannot be
 * stopped, and completes with its own result, as in io-wq).
 */
static bool op_cancel(struct ep_op *op)
{
	if (op->state == OP_POOL) {
		if (op->busy || !keel__ep_pool_unqueue(&op->job)) {
			op->busy = true;
			return false;
		}
		op->state = OP_RUNNING;
	}
	op_unqueue(op);
	op_finish(op, -ECANCELED, 0);
	return true;
}

/* A due timer: a TIMEOUT completes, a LINK_TIMEOUT cancels its op. */
static void timer_fire(struct ep_op *t)
{
	timer_remove(t->r, t);
	if (!t->target) {
		op_finish(t, -ETIME, 0);
		return;
	}
	struct ep_op *op = t->target;
	bool running = op->state == OP_POOL &&
		       (op->busy || !keel__ep_pool_unqueue(&op->job));

	/* A worker runs it: -EALREADY, as io_uring's linked timeout says,
	 * and the op completes with its own result. */
	op->lt = NULL;
	post_cqe(t->r, t->sqe.user_data, running ? -EALREADY : -ETIME, 0);
	op_free(t);
	if (running) {
		op->busy = true;
		return;
	}
	if (op->state == OP_POOL)
		op->state = OP_RUNNING; /* taken out of the queue above */
	op_cancel(op);
}

static void fire_timers(struct ep_ring *r, uint64_t now)
{
	while (r->nheap && r->heap[0]->deadline <= now)
		timer_fire(r->heap[0]);
}

/* Opcodes whose sqe->fd names the descriptor they work on. */
static bool uses_file(unsigned opcode)
{
	switch (opcode) {
	case IORING_OP_READ:
	case IORING_OP_WRITE:
	case IORING_OP_READ_FIXED:
	case IORING_OP_WRITE_FIXED:
	case IORING_OP_READV:
	case IORING_OP_WRITEV:
	case IORING_OP_RECV:
	case IORING_OP_SEND:
	case IORING_OP_SENDMSG:
	case IORING_OP_RECVMSG:
	case IORING_OP_SEND_ZC:
	case IORING_OP_SENDMSG_ZC:
	case IORING_OP_ACCEPT:
	case IORING_OP_CONNECT:
	case IORING_OP_SHUTDOWN:
	case IORING_OP_FSYNC:
	case IORING_OP_SPLICE:
	case IORING_OP_TEE:
	case IORING_OP_POLL_ADD:
		return true;
	default:
		return false;
	}
}

static int resolve_fd(struct ep_ring *r, int fd, bool fixed)
{
	if (!fixed)
		return fd;
	if (fd < 0 || (uint32_t)fd >= r->nfixed || r->fixed[fd] < 0)
		return -1;
	return r->fixed[fd];
}

static void op_start(struct ep_op *op)
{
	struct ep_ring *r = op->r;

	op->started = true;
	op->state = OP_RUNNING;
	keel__list_push_back(&r->ops, &op->link);
	if (uses_file(op->sqe.opcode)) {
		op->fd =
		    resolve_fd(r, op->sqe.fd, op->sqe.flags & IOSQE_FIXED_FILE);
		struct ep_fd *e = fd_entry(r, op->fd);

		if (!e) {
			op_finish(op, op->fd < 0 ? -EBADF : -ENOMEM, 0);
			return;
		}
		e->refs++;
		op->fd_ref = true;
	}
	if (op->lt) {
		op->lt->deadline = deadline_of(&op->lt->sqe);
		timer_add(r, op->lt);
	}
	if (op->sqe.opcode == IORING_OP_TIMEOUT) {
		op->deadline = deadline_of(&op->sqe);
		op->state = OP_TIMER;
		timer_add(r, op);
		return;
	}
	op_attempt(op);
}

/* ---- parking on readiness ---- */

/*
 * Park `op` until `fd` is ready for `events`. Returns false when the
 * descriptor has no readiness (a regular file): the caller runs the op
 * blocking instead.
 */
static bool park(struct ep_op *op, int fd, uint32_t events)
{
	struct ep_ring *r = op->r;
	struct ep_fd *e = fd_entry(r, fd);

	if (!e)
		return false;
	if (!e->registered || (!op->parked_before && e->proved != r->epoch)) {
		struct epoll_event ev = {
		    .events =
			EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLPRI | EPOLLET,
		    .data.u64 = (uint64_t)fd,
		};

		if (epoll_ctl(r->epfd, EPOLL_CTL_ADD, fd, &ev) &&
		    errno != EEXIST)
			return false; /* EPERM: no readiness to wait for */
		e->registered = true;
		e->proved = r->epoch;
	}
	op->parked_before = true;
	op->state = OP_PARKED;
	op->pfd = fd;
	op->events = events;
	keel__list_push_back(&e->waiters, &op->wait);
	return true;
}

static void run_later(struct ep_op *op)
{
	op->state = OP_QUEUED;
	keel__list_push_back(&op->r->runq, &op->wait);
}

/* ---- provided buffers ---- */

static struct ep_bufring *bufring(struct ep_ring *r, unsigned bgid)
{
	return bgid < r->nbufs && r->bufs[bgid].br ? &r->bufs[bgid] : NULL;
}

static struct io_uring_buf *buf_peek(struct ep_bufring *b)
{
	uint16_t tail = __atomic_load_n(&b->br->tail, __ATOMIC_ACQUIRE);

	if (tail == b->head)
		return NULL;
	return &b->br->bufs[b->head & b->mask];
}

static unsigned buf_consume(struct ep_bufring *b, struct io_uring_buf *buf,
			    unsigned n)
{
	unsigned flags = IORING_CQE_F_BUFFER |
			 ((unsigned)buf->bid << IORING_CQE_BUFFER_SHIFT);

	if (b->inc && n < buf->len) {
		/* Incremental: the rest of the buffer stays at the head. */
		buf->addr += n;
		buf->len -= n;
		return flags | IORING_CQE_F_BUF_MORE;
	}
	b->head++;
	return flags;
}

/* ---- execution ---- */

struct result {
	int res;
	unsigned flags;
	bool more;	 /* multishot goes on */
	bool drained;	 /* ... and the read proved the socket empty */
	int park_fd;	 /* res == -EAGAIN: where to wait */
	uint32_t events; /* ... and for what */
	bool pool;	 /* res == -EAGAIN: a worker's, no readiness */
};

static int sys(ssize_t n)
{
	return n < 0 ? -errno : (int)n;
}

static int rw_flags(const struct ep_op *op)
{
	return op->blocking ? (int)op->sqe.rw_flags
			    : (int)op->sqe.rw_flags | RWF_NOWAIT;
}

/*
 * A regular file or a block device: poll(2) says ready, yet a read may
 * wait for the disk. An attempt says -EAGAIN, the park finds no
 * readiness, and a worker runs it (see op_attempt).
 */
static bool no_readiness(int fd)
{
	struct stat st;

	return !fstat(fd, &st) && (S_ISREG(st.st_mode) || S_ISBLK(st.st_mode));
}

static int do_read(struct ep_op *op, void *buf, size_t len)
{
	struct iovec iov = {buf, len};
	int n = sys(preadv2(op->fd, &iov, 1, (off_t)op->sqe.off, rw_flags(op)));

	if (n == -EOPNOTSUPP && !op->blocking) {
		/* No RWF_NOWAIT here (a tty, some devices): poll first. */
		struct pollfd p = {op->fd, POLLIN, 0};

		if (poll(&p, 1, 0) == 0 || no_readiness(op->fd))
			return -EAGAIN;
		op->blocking = true;
		return do_read(op, buf, len);
	}
	return n;
}

static int do_recv(struct ep_op *op, void *buf, size_t len)
{
	if (op->sqe.opcode == IORING_OP_READ)
		return do_read(op, buf, len);
	return sys(
	    recv(op->fd, buf, len, (int)op->sqe.msg_flags | MSG_DONTWAIT));
}

/*
 * The ring has no buffer for a socket's recv. The kernel says -ENOBUFS
 * when data comes and finds none: a multishot recv that emptied the ring
 * waits for data first (a peek, as the edge may have come already).
 */
static int no_buffer(struct ep_op *op)
{
	char c;

	if (op->multishot && op->parked_before &&
	    recv(op->fd, &c, 1, MSG_PEEK | MSG_DONTWAIT) < 0 && errno == EAGAIN)
		return -EAGAIN;
	return -ENOBUFS;
}

/*
 * Did a multishot recv's short read (n of len bytes) empty the socket?
 * Then it parks at once instead of reading again for the EAGAIN, one
 * system call per request less (the plain epoll servers' rule). Only for
 * TCP: tcp_recvmsg() stops short of len only when the receive queue (and
 * backlog) is empty, at the urgent mark, at a FIN, or with an error
 * pending; and every later arrival wakes the epoll set again, which with
 * EPOLLET queues a fresh edge. The urgent mark, FIN and errors come with
 * EPOLLPRI, EPOLLRDHUP, EPOLLERR or EPOLLHUP, set on the socket before its
 * wake-up: once an edge has said one of those (eventful), the op reads
 * until EAGAIN as before. Not for other sockets: a unix stream stops
 * between writers' credentials, a datagram is one message, kTLS (an upper-
 * layer protocol, TCP_ULP) at a record that is not data; asked once per op,
 * at its first short read (kTLS hands over before its stream opens).
 */
static bool drained(struct ep_op *op, int n, size_t len)
{
	if (!op->multishot || n <= 0 || (size_t)n >= len ||
	    op->sqe.opcode != IORING_OP_RECV ||
	    (op->sqe.msg_flags & (MSG_PEEK | MSG_OOB | MSG_WAITALL)))
		return false;
	if (!op->tcp_known) {
		int proto = 0;
		char ulp[16];
		socklen_t pl = sizeof(proto), ul = sizeof(ulp);

		op->tcp_known = true;
		op->tcp_plain =
		    !getsockopt(op->fd, SOL_SOCKET, SO_PROTOCOL, &proto, &pl) &&
		    proto == IPPROTO_TCP &&
		    !getsockopt(op->fd, SOL_TCP, TCP_ULP, ulp, &ul) && !ul;
	}
	return op->tcp_plain && !op->r->fds[op->fd].eventful;
}

/* READ and RECV, with a buffer of their own or a selected one. */
static struct result exec_input(struct ep_op *op)
{
	struct result out = {0};
	struct io_uring_sqe *sqe = &op->sqe;
	size_t len = sqe->len;

	out.park_fd = op->fd;
	out.events = EPOLLIN;
	if (!(sqe->flags & IOSQE_BUFFER_SELECT)) {
		out.res = do_recv(op, (void *)(uintptr_t)sqe->addr, len);
		return out;
	}
	struct ep_bufring *b = bufring(op->r, sqe->buf_group);
	struct io_uring_buf *buf = b ? buf_peek(b) : NULL;

	if (!buf) {
		out.res =
		    sqe->opcode == IORING_OP_RECV ? no_buffer(op) : -ENOBUFS;
		return out;
	}
	if (!len || buf->len < len)
		len = buf->len;
	out.res = do_recv(op, (void *)(uintptr_t)buf->addr, len);
	if (out.res > 0)
		out.flags = buf_consume(b, buf, (unsigned)out.res);
	out.more = op->multishot && out.res > 0;
	out.drained = drained(op, out.res, len);
	return out;
}

/*
 * RECVMSG: one message into the caller's msghdr, or (multishot, with a
 * selected buffer) the kernel's layout in the buffer: struct
 * io_uring_recvmsg_out, the name and control space the msghdr reserves,
 * then the payload; res counts all of it, and payloadlen is the
 * datagram's whole length (MSG_TRUNC), as the kernel reports it.
 */
static struct result exec_recvmsg(struct ep_op *op)
{
	struct result out = {0};
	struct io_uring_sqe *sqe = &op->sqe;
	struct msghdr *msg = (struct msghdr *)(uintptr_t)sqe->addr;
	int flags = (int)sqe->msg_flags | MSG_DONTWAIT;

	out.park_fd = op->fd;
	out.events = EPOLLIN;
	if (!(sqe->flags & IOSQE_BUFFER_SELECT)) {
		out.res = sys(recvmsg(op->fd, msg, flags));
		return out;
	}
	struct ep_bufring *b = bufring(op->r, sqe->buf_group);
	struct io_uring_buf *buf = b ? buf_peek(b) : NULL;

	if (!buf) {
		out.res = no_buffer(op);
		return out;
	}
	size_t head = sizeof(struct io_uring_recvmsg_out) + msg->msg_namelen +
		      msg->msg_controllen;

	if (buf->len < head) {
		out.res = -EFAULT;
		return out;
	}
	char *base = (char *)(uintptr_t)buf->addr;
	struct io_uring_recvmsg_out *o = (struct io_uring_recvmsg_out *)base;
	struct iovec iov = {base + head, buf->len - head};
	struct msghdr m = {
	    .msg_name = msg->msg_namelen ? o + 1 : NULL,
	    .msg_namelen = msg->msg_namelen,
	    .msg_iov = &iov,
	    .msg_iovlen = 1,
	    .msg_control = msg->msg_controllen
			       ? base + sizeof(*o) + msg->msg_namelen
			       : NULL,
	    .msg_controllen = msg->msg_controllen,
	};
	int n = sys(recvmsg(op->fd, &m, flags | MSG_TRUNC));

	if (n < 0) {
		out.res = n;
		return out;
	}
	o->namelen = m.msg_namelen;
	o->controllen = (uint32_t)m.msg_controllen;
	o->payloadlen = (uint32_t)n;
	o->flags = (uint32_t)m.msg_flags;
	out.res =
	    (int)(head + ((size_t)n < iov.iov_len ? (size_t)n : iov.iov_len));
	out.flags = buf_consume(b, buf, buf->len);
	out.more = op->multishot;
	return out;
}

static int exec_rw(struct ep_op *op, bool write)
{
	const struct io_uring_sqe *sqe = &op->sqe;
	struct iovec one = {(void *)(uintptr_t)sqe->addr, sqe->len};
	const struct iovec *iov = &one;
	int cnt = 1;

	if (sqe->opcode == IORING_OP_READV || sqe->opcode == IORING_OP_WRITEV) {
		iov = (const struct iovec *)(uintptr_t)sqe->addr;
		cnt = (int)sqe->len;
	}
	int n =
	    write
		? sys(pwritev2(op->fd, iov, cnt, (off_t)sqe->off, rw_flags(op)))
		: sys(preadv2(op->fd, iov, cnt, (off_t)sqe->off, rw_flags(op)));

	if (n == -EOPNOTSUPP && !op->blocking) {
		struct pollfd p = {op->fd, write ? POLLOUT : POLLIN, 0};

		if (poll(&p, 1, 0) == 0 || no_readiness(op->fd))
			return -EAGAIN;
		op->blocking = true;
		return exec_rw(op, write);
	}
	return n;
}

/* READ_FIXED/WRITE_FIXED: a read or write at the registered address,
 * which must lie inside registered buffer buf_index (else the kernel's
 * -EFAULT). */
static int exec_fixed(struct ep_op *op)
{
	const struct io_uring_sqe *sqe = &op->sqe;

	if (keel__fixedbufs_check(&op->r->fbufs, sqe->buf_index, sqe->addr,
				  sqe->len))
		return -EFAULT;
	return exec_rw(op, sqe->opcode == IORING_OP_WRITE_FIXED);
}

/* accept4's peer address: sqe->addr, its size at sqe->addr2. */
static int exec_accept(struct ep_op *op, bool *more);
static int install(struct ep_op *op, int fd);

static int exec_connect(struct ep_op *op)
{
	int err;
	socklen_t len = sizeof(err);

	if (op->connecting) {
		if (getsockopt(op->fd, SOL_SOCKET, SO_ERROR, &err, &len))
			return -errno;
		return -err;
	}
	err = set_nonblock(op->fd);
	if (err)
		return err;
	if (!connect(op->fd, (const struct sockaddr *)(uintptr_t)op->sqe.addr,
		     (socklen_t)op->sqe.off))
		return 0;
	if (errno == EINPROGRESS || errno == EAGAIN) {
		op->connecting = true;
		return -EAGAIN;
	}
	return -errno;
}

static int exec_close(struct ep_op *op)
{
	struct ep_ring *r = op->r;

	if (op->sqe.file_index) {
		uint32_t slot = op->sqe.file_index - 1;

		if (slot >= r->nfixed || r->fixed[slot] < 0)
			return -EBADF;
		int fd = r->fixed[slot];

		r->fixed[slot] = -1;
		fd_close(r, fd);
		return 0;
	}
	return fd_close(r, op->sqe.fd);
}

static int exec_msg_ring(struct ep_op *op)
{
	int64_t id = (int64_t)op->sqe.fd - EP_RING_FD_BASE;
	int err = -EBADFD;

	if (op->sqe.addr != IORING_MSG_DATA)
		return -EINVAL;
	pthread_mutex_lock(&registry_lock);
	if (id >= 0 && id < nregistry && registry[id]) {
		struct ep_ring *t = registry[id];

		if (t == op->r) {
			post_cqe(t, op->sqe.off, (int)op->sqe.len, 0);
			err = 0;
		} else {
			err = remote_post(t, op->sqe.off, (int)op->sqe.len);
		}
	}
	pthread_mutex_unlock(&registry_lock);
	return err;
}

/* io_uring's sends add MSG_NOSIGNAL: a peer that is gone is -EPIPE. */
#define SEND_FLAGS (MSG_DONTWAIT | MSG_NOSIGNAL)

/*
 * splice(2) and tee(2) have no MSG_NOSIGNAL: into a socket or pipe whose
 * reader is gone they raise SIGPIPE on the calling thread, which kills a
 * process at the default disposition. io_uring runs them on its kernel
 * workers, which never take the signal, so a splicing proxy survives a
 * reset backend there; here the loop's thread blocks SIGPIPE from its
 * first splice of an enter to the enter's end (pipe_unblock: two
 * sigprocmask calls per enter, not per splice; no user code runs in
 * between) and takes back the one a call raised (an unblocked SIGPIPE
 * cannot have been pending before). If the thread already blocks SIGPIPE,
 * its own choice is left alone.
 */
static int splice_nosignal(struct ep_ring *r, int in, loff_t *oin, int out,
			   loff_t *oout, size_t len, unsigned flags,
			   bool tee_op)
{
	int n;

	if (!r->pipe_blocked) {
		sigset_t pipe_set, old;

		sigemptyset(&pipe_set);
		sigaddset(&pipe_set, SIGPIPE);
		pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
		r->pipe_blocked = true;
		r->pipe_was_blocked = sigismember(&old, SIGPIPE);
	}
	if (tee_op)
		n = sys(tee(in, out, len, flags));
	else
		n = sys(splice(in, oin, out, oout, len, flags));
	if (n == -EPIPE && !r->pipe_was_blocked)
		r->pipe_raised = true;
	return n;
}

/* The end of an enter: SIGPIPE as the thread had it (splice_nosignal). */
static void pipe_unblock(struct ep_ring *r)
{
	static const struct timespec now = {0, 0};
	sigset_t pipe_set;

	if (!r->pipe_blocked)
		return;
	r->pipe_blocked = false;
	if (r->pipe_was_blocked)
		return;
	sigemptyset(&pipe_set);
	sigaddset(&pipe_set, SIGPIPE);
	if (r->pipe_raised) {
		r->pipe_raised = false;
		sigtimedwait(&pipe_set, NULL, &now);
	}
	pthread_sigmask(SIG_UNBLOCK, &pipe_set, NULL);
}

static int exec_splice(struct ep_op *op, struct result *out)
{
	const struct io_uring_sqe *sqe = &op->sqe;
	unsigned flags = sqe->splice_flags & ~SPLICE_F_FD_IN_FIXED;
	int in = resolve_fd(op->r, sqe->splice_fd_in,
			    sqe->splice_flags & SPLICE_F_FD_IN_FIXED);
	int n;

	if (in < 0)
		return -EBADF;
	/*
	 * SPLICE_F_NONBLOCK covers the pipe only: a socket's side of a
	 * splice blocks unless its file is O_NONBLOCK (tcp_splice_read
	 * reads the file's flag), and a blocked splice would stop the loop.
	 */
	n = set_nonblock(in);
	if (!n)
		n = set_nonblock(op->fd);
	if (n)
		return n;
	if (sqe->opcode == IORING_OP_TEE) {
		n = splice_nosignal(op->r, in, NULL, op->fd, NULL, sqe->len,
				    flags | SPLICE_F_NONBLOCK, true);
	} else {
		loff_t oin = (loff_t)sqe->splice_off_in;
		loff_t oout = (loff_t)sqe->off;

		n = splice_nosignal(
		    op->r, in, sqe->splice_off_in == (uint64_t)-1 ? NULL : &oin,
		    op->fd, sqe->off == (uint64_t)-1 ? NULL : &oout, sqe->len,
		    flags | SPLICE_F_NONBLOCK, false);
	}
	if (n == -EAGAIN) {
		/* Wait on the side that blocks: the input unless it has
		 * data. */
		struct pollfd p = {in, POLLIN, 0};

		if (poll(&p, 1, 0) == 1) {
			out->park_fd = op->fd;
			out->events = EPOLLOUT;
		} else {
			out->park_fd = in;
			out->events = EPOLLIN;
		}
	}
	return n;
}

/*
 * A direct descriptor's file is in no table of the process on io_uring:
 * here it is, and is not to reach a program exec(2) starts.
 */
static int open_flags(const struct io_uring_sqe *sqe)
{
	return (int)sqe->open_flags | (sqe->file_index ? O_CLOEXEC : 0);
}

/*
 * OPENAT's first attempt, as io_uring's: a path lookup that needs no disk
 * (RESOLVE_CACHED), with O_NONBLOCK, so that a FIFO opens at once (a
 * writer with no reader gets -ENXIO), as it does on io_uring. -EAGAIN: a
 * worker opens it, blocking (O_CREAT, O_TRUNC and O_TMPFILE always, as
 * io_uring punts them; a FIFO's open then waits for its other end).
 */
static int open_cached(struct ep_op *op)
{
	const struct io_uring_sqe *sqe = &op->sqe;
	int flags = open_flags(sqe);
	struct open_how how = {
	    .flags = (uint64_t)(unsigned)(flags | O_NONBLOCK),
	    .resolve = RESOLVE_CACHED,
	};
	long fd;

	if (flags & (O_CREAT | O_TRUNC | (O_TMPFILE & ~O_DIRECTORY)))
		return -EAGAIN;
	fd = syscall(SYS_openat2, sqe->fd, (const char *)(uintptr_t)sqe->addr,
		     &how, sizeof(how));
	if (fd < 0) {
		/* EINVAL: flags openat2 refuses (O_PATH's); ENOSYS, EPERM: a
		 * filter. A worker's openat gives the real answer. */
		if (errno == EAGAIN || errno == EINVAL || errno == ENOSYS ||
		    errno == EPERM)
			return -EAGAIN;
		return -errno;
	}
	if (!(flags & O_NONBLOCK)) {
		int fl = fcntl((int)fd, F_GETFL);

		if (fl >= 0)
			fcntl((int)fd, F_SETFL, fl & ~O_NONBLOCK);
	}
	return (int)fd;
}

static int exec_cancel(struct ep_op *op);

/* Execute the op now: its result, or -EAGAIN with where to wait. */
static struct result exec(struct ep_op *op)
{
	struct io_uring_sqe *sqe = &op->sqe;
	struct result out = {0};

	out.park_fd = op->fd;
	out.events = EPOLLOUT;
	switch (sqe->opcode) {
	case IORING_OP_NOP:
		if (sqe->rw_flags & IORING_NOP_INJECT_RESULT)
			out.res = (int)sqe->len;
		break;
	case IORING_OP_ASYNC_CANCEL:
		out.res = exec_cancel(op);
		break;
	case IORING_OP_MSG_RING:
		out.res = exec_msg_ring(op);
		break;
	case IORING_OP_READ:
	case IORING_OP_RECV:
		return exec_input(op);
	case IORING_OP_READV:
		out.res = exec_rw(op, false);
		out.events = EPOLLIN;
		break;
	case IORING_OP_WRITE:
	case IORING_OP_WRITEV:
		out.res = exec_rw(op, true);
		break;
	case IORING_OP_READ_FIXED:
		out.res = exec_fixed(op);
		out.events = EPOLLIN;
		break;
	case IORING_OP_WRITE_FIXED:
		out.res = exec_fixed(op);
		break;
	case IORING_OP_SEND:
	case IORING_OP_SEND_ZC:
		out.res = sys(send(op->fd, (const void *)(uintptr_t)sqe->addr,
				   sqe->len, (int)sqe->msg_flags | SEND_FLAGS));
		break;
	case IORING_OP_RECVMSG:
		return exec_recvmsg(op);
	case IORING_OP_SENDMSG:
	case IORING_OP_SENDMSG_ZC:
		out.res = sys(
		    sendmsg(op->fd, (const struct msghdr *)(uintptr_t)sqe->addr,
			    (int)sqe->msg_flags | SEND_FLAGS));
		break;
	case IORING_OP_ACCEPT:
		out.res = exec_accept(op, &out.more);
		out.events = EPOLLIN;
		break;
	case IORING_OP_CONNECT:
		out.res = exec_connect(op);
		break;
	case IORING_OP_SHUTDOWN:
		out.res = shutdown(op->fd, (int)sqe->len) ? -errno : 0;
		break;
	case IORING_OP_FSYNC:
		out.res = (sqe->fsync_flags & IORING_FSYNC_DATASYNC
			       ? fdatasync(op->fd)
			       : fsync(op->fd))
			      ? -errno
			      : 0;
		break;
	case IORING_OP_CLOSE:
		out.res = exec_close(op);
		break;
	case IORING_OP_OPENAT: {
		/* As io_uring: a direct descriptor has no close-on-exec. */
		if (sqe->file_index && (sqe->open_flags & O_CLOEXEC)) {
			out.res = -EINVAL;
			break;
		}
		int fd =
		    op->blocking
			? openat(sqe->fd, (const char *)(uintptr_t)sqe->addr,
				 open_flags(sqe), (mode_t)sqe->len)
			: open_cached(op);

		if (fd == -EAGAIN && !op->blocking)
			out.pool = true;
		out.res =
		    fd < 0 ? (op->blocking ? -errno : fd) : install(op, fd);
		break;
	}
	case IORING_OP_SOCKET: {
		int fd = socket(sqe->fd, (int)sqe->off | SOCK_NONBLOCK,
				(int)sqe->len);

		out.res = fd < 0 ? -errno : install(op, fd);
		break;
	}
	case IORING_OP_STATX:
		out.res = statx(sqe->fd, (const char *)(uintptr_t)sqe->addr,
				(int)sqe->statx_flags, sqe->len,
				(struct statx *)(uintptr_t)sqe->off)
			      ? -errno
			      : 0;
		break;
	case IORING_OP_SPLICE:
	case IORING_OP_TEE:
		out.res = exec_splice(op, &out);
		break;
	case IORING_OP_POLL_ADD: {
		/* Park on one direction, as every op here does: POLLIN
		 * when asked for, else POLLOUT (keel_poll(3) says so). */
		struct pollfd p = {op->fd, (short)sqe->poll32_events, 0};
		int n = poll(&p, 1, 0);

		out.res = n < 0 ? -errno : n ? p.revents : -EAGAIN;
		out.events = p.events & POLLIN ? EPOLLIN : EPOLLOUT;
		break;
	}
	default:
		out.res = -EINVAL;
		break;
	}
	return out;
}

/* The caller asked for a nonblocking attempt: no waiting for it. */
static bool wants_dontwait(const struct ep_op *op)
{
	switch (op->sqe.opcode) {
	case IORING_OP_RECV:
	case IORING_OP_SEND:
	case IORING_OP_SEND_ZC:
	case IORING_OP_SENDMSG:
	case IORING_OP_SENDMSG_ZC:
	case IORING_OP_RECVMSG:
		return op->sqe.msg_flags & MSG_DONTWAIT;
	default:
		return false;
	}
}

/* ---- the pool: ops without readiness ---- */

/* Opcodes io_uring always runs on io-wq: a worker runs them at once. */
static bool pooled_at_once(unsigned opcode)
{
	switch (opcode) {
	case IORING_OP_FSYNC:
	case IORING_OP_STATX:
		return true;
	default:
		return false;
	}
}

/*
 * On a worker: the blocking system call, into the op's own memory (the
 * SQE's buffers live until its CQE, by keel's ownership rule); nothing of
 * the ring is touched but its lock and doorbell, to hand the op back.
 */
static int run_blocking(struct ep_op *op)
{
	const struct io_uring_sqe *sqe = &op->sqe;

	switch (sqe->opcode) {
	case IORING_OP_READ:
		return do_read(op, (void *)(uintptr_t)sqe->addr, sqe->len);
	case IORING_OP_READV:
	case IORING_OP_READ_FIXED: /* checked by exec() on the loop */
		return exec_rw(op, false);
	case IORING_OP_WRITE:
	case IORING_OP_WRITEV:
	case IORING_OP_WRITE_FIXED:
		return exec_rw(op, true);
	case IORING_OP_FSYNC:
		return (sqe->fsync_flags & IORING_FSYNC_DATASYNC
			    ? fdatasync(op->fd)
			    : fsync(op->fd))
			   ? -errno
			   : 0;
	case IORING_OP_OPENAT: {
		int fd = openat(sqe->fd, (const char *)(uintptr_t)sqe->addr,
				open_flags(sqe), (mode_t)sqe->len);

		return fd < 0 ? -errno : fd; /* installed by the loop */
	}
	case IORING_OP_STATX:
		return statx(sqe->fd, (const char *)(uintptr_t)sqe->addr,
			     (int)sqe->statx_flags, sqe->len,
			     (struct statx *)(uintptr_t)sqe->off)
			   ? -errno
			   : 0;
	default:
		return -EINVAL;
	}
}

static void pool_run(struct keel__ep_job *job)
{
	struct ep_op *op = keel_container_of(job, struct ep_op, job);
	struct ep_ring *r = op->r;
	uint64_t one = 1;

	op->res = run_blocking(op);
	pthread_mutex_lock(&r->lock);
	op->done_next = NULL;
	if (r->done_tail)
		r->done_tail->done_next = op;
	else
		r->done = op;
	r->done_tail = op;
	__atomic_store_n(&r->remote_pending, 1, __ATOMIC_RELEASE);
	pthread_mutex_unlock(&r->lock);
	/* The ring outlives this: its teardown waits for the worker. */
	if (write(r->doorbell, &one, sizeof(one)) < 0) {
		/* a full counter still wakes the loop */
	}
}

/* Hand the op to a worker; false: the queue is full, run it here. */
static bool to_pool(struct ep_op *op)
{
	op->blocking = true;
	if (op->sqe.flags & IOSQE_BUFFER_SELECT)
		return false; /* the ring's buffers are the loop thread's */
	op->job.run = pool_run;
	op->job.owner = op->r;
	op->state = OP_POOL;
	if (keel__ep_pool_submit(&op->job)) {
		op->state = OP_RUNNING;
		return false;
	}
	return true;
}

/* Back from a worker (drain_remote): the normal completion path. */
static void pool_finish(struct ep_op *op)
{
	int res = op->res;

	op->state = OP_RUNNING;
	if (op->sqe.opcode == IORING_OP_OPENAT && res >= 0)
		res = install(op, res);
	op_finish(op, res, 0);
}

/* Run the op's attempt: complete it, park it, or keep it going. */
static void op_attempt(struct ep_op *op)
{
	if (!op->blocking && pooled_at_once(op->sqe.opcode) && to_pool(op))
		return;
	for (int i = 0;; i++) {
		struct result out = exec(op);

		if (out.pool) {
			if (to_pool(op))
				return;
			continue; /* the queue is full: blocking, here */
		}
		if (out.res == -EAGAIN && out.park_fd >= 0 &&
		    !wants_dontwait(op)) {
			if (park(op, out.park_fd, out.events))
				return;
			/* No readiness (a regular file): a worker's. */
			if (!op->blocking) {
				if (to_pool(op))
					return;
				continue;
			}
		}
		if (!out.more) {
			op_finish(op, out.res, out.flags);
			return;
		}
		/* Multishot: this CQE, and the op stays armed. */
		post_cqe(op->r, op->sqe.user_data, out.res,
			 out.flags | IORING_CQE_F_MORE);
		op->parked_before = true;
		if (out.drained && park(op, out.park_fd, out.events))
			return;
		if (i + 1 >= MULTISHOT_BURST) {
			run_later(op);
			return;
		}
	}
}

/* A new descriptor: plain, or direct (sqe->file_index, 1-based, or
 * IORING_FILE_INDEX_ALLOC). */
static int install(struct ep_op *op, int fd)
{
	struct ep_ring *r = op->r;
	uint32_t slot = op->sqe.file_index;

	fd_fresh(r, fd);
	if (!slot)
		return fd;
	if (slot == IORING_FILE_INDEX_ALLOC) {
		for (slot = 0; slot < r->nfixed && r->fixed[slot] >= 0; slot++)
			;
		if (slot == r->nfixed) {
			close(fd);
			return -ENFILE;
		}
	} else if (--slot >= r->nfixed) {
		close(fd);
		return -EINVAL;
	}
	if (r->fixed[slot] >= 0)
		fd_close(r, r->fixed[slot]);
	r->fixed[slot] = fd;
	return op->sqe.file_index == IORING_FILE_INDEX_ALLOC ? (int)slot : 0;
}

static int exec_accept(struct ep_op *op, bool *more)
{
	const struct io_uring_sqe *sqe = &op->sqe;
	int err = set_nonblock(op->fd);

	if (err)
		return err;
	int fd =
	    accept4(op->fd, (struct sockaddr *)(uintptr_t)sqe->addr,
		    (socklen_t *)(uintptr_t)sqe->addr2, (int)sqe->accept_flags);

	if (fd < 0)
		return -errno;
	int res = install(op, fd);

	*more = op->multishot && res >= 0;
	return res;
}

/* ---- cancellation ---- */

static bool cancel_matches(const struct ep_op *c, const struct ep_op *op)
{
	unsigned fl = c->sqe.cancel_flags;

	if (op == c || op->target || !op->started)
		return false;
	if (fl & IORING_ASYNC_CANCEL_ANY)
		return true;
	if (fl & IORING_ASYNC_CANCEL_FD) {
		bool fixed = op->sqe.flags & IOSQE_FIXED_FILE;

		return uses_file(op->sqe.opcode) &&
		       fixed == !!(fl & IORING_ASYNC_CANCEL_FD_FIXED) &&
		       op->sqe.fd == c->sqe.fd;
	}
	return op->sqe.user_data == c->sqe.addr;
}

/*
 * An op in flight here is waiting (on readiness, a timer, its turn or a
 * worker) and is cancelled, or a worker runs it: -EALREADY, and it
 * completes with its own result, as io-wq's running work does.
 */
static int exec_cancel(struct ep_op *c)
{
	struct ep_ring *r = c->r;
	bool all = c->sqe.cancel_flags &
		   (IORING_ASYNC_CANCEL_ALL | IORING_ASYNC_CANCEL_ANY);
	bool running = false;
	int cancelled = 0;

	for (;;) {
		struct ep_op *hit = NULL;
		struct keel__link *l;

		keel__list_for_each (l, &r->ops) {
			struct ep_op *op =
			    keel__list_entry(l, struct ep_op, link);

			if (op->state != OP_RUNNING && !op->busy &&
			    cancel_matches(c, op)) {
				hit = op;
				break;
			}
		}
		if (!hit)
			break;
		if (op_cancel(hit))
			cancelled++;
		else
			running = true;
		if (!all)
			break;
	}
	if (cancelled)
		return all ? cancelled : 0;
	return running ? -EALREADY : -ENOENT;
}

/* ---- the backend ---- */

static const uint8_t executed_ops[] = {
    IORING_OP_NOP,	  IORING_OP_READV,	  IORING_OP_WRITEV,
    IORING_OP_FSYNC,	  IORING_OP_SENDMSG,	  IORING_OP_TIMEOUT,
    IORING_OP_ACCEPT,	  IORING_OP_ASYNC_CANCEL, IORING_OP_LINK_TIMEOUT,
    IORING_OP_CONNECT,	  IORING_OP_OPENAT,	  IORING_OP_CLOSE,
    IORING_OP_STATX,	  IORING_OP_READ,	  IORING_OP_WRITE,
    IORING_OP_SEND,	  IORING_OP_RECV,	  IORING_OP_SHUTDOWN,
    IORING_OP_MSG_RING,	  IORING_OP_SOCKET,	  IORING_OP_SEND_ZC,
    IORING_OP_SENDMSG_ZC, IORING_OP_SPLICE,	  IORING_OP_TEE,
    IORING_OP_RECVMSG,	  IORING_OP_POLL_ADD,	  IORING_OP_WRITE_FIXED,
    IORING_OP_READ_FIXED,
};

static void free_memory(struct ep_ring *r)
{
	free(r->w);
	free(r->sq_array);
	free(r->sqes);
	free(r->cqes);
	r->w = NULL;
	r->sq_array = NULL;
	r->sqes = NULL;
	r->cqes = NULL;
}

static int ep_setup(struct keel__backend *b, struct io_uring *ring, unsigned sq,
		    unsigned cq, uint64_t ops[2])
{
	struct ep_ring *r = ring_of(b);
	struct epoll_event ev = {.events = EPOLLIN, .data.u64 = TAG_DOORBELL};
	int err;

	r->w = calloc(1, sizeof(*r->w));
	r->sq_array = calloc(sq, sizeof(*r->sq_array));
	r->sqes = calloc(sq, sizeof(*r->sqes));
	r->cqes = calloc(cq, sizeof(*r->cqes));
	if (!r->w || !r->sq_array || !r->sqes || !r->cqes) {
		free_memory(r);
		return -ENOMEM;
	}
	r->epfd = epoll_create1(EPOLL_CLOEXEC);
	r->doorbell = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (r->epfd < 0 || r->doorbell < 0 ||
	    epoll_ctl(r->epfd, EPOLL_CTL_ADD, r->doorbell, &ev)) {
		err = -errno;
		goto fail;
	}
	err = registry_add(r);
	if (err)
		goto fail;
	r->ring = ring;
	ring->sq.khead = &r->w->sq_head;
	ring->sq.ktail = &r->w->sq_tail;
	ring->sq.kflags = &r->w->sq_flags;
	ring->sq.kdropped = &r->w->sq_dropped;
	ring->sq.kring_mask = &ring->sq.ring_mask;
	ring->sq.kring_entries = &ring->sq.ring_entries;
	ring->sq.array = r->sq_array;
	ring->sq.sqes = r->sqes;
	ring->sq.ring_mask = sq - 1;
	ring->sq.ring_entries = sq;
	ring->cq.khead = &r->w->cq_head;
	ring->cq.ktail = &r->w->cq_tail;
	ring->cq.kflags = &r->w->cq_flags;
	ring->cq.koverflow = &r->w->cq_overflow;
	ring->cq.kring_mask = &ring->cq.ring_mask;
	ring->cq.kring_entries = &ring->cq.ring_entries;
	ring->cq.cqes = r->cqes;
	ring->cq.ring_mask = cq - 1;
	ring->cq.ring_entries = cq;
	ring->flags = IORING_SETUP_CQSIZE | IORING_SETUP_SUBMIT_ALL;
	ring->features = IORING_FEAT_SINGLE_MMAP | IORING_FEAT_NODROP |
			 IORING_FEAT_SUBMIT_STABLE | IORING_FEAT_RW_CUR_POS |
			 IORING_FEAT_FAST_POLL | IORING_FEAT_EXT_ARG |
			 IORING_FEAT_LINKED_FILE | IORING_FEAT_CQE_SKIP;
	ring->ring_fd = EP_RING_FD_BASE + (int)r->id;
	ring->enter_ring_fd = ring->ring_fd;
	ops[0] = ops[1] = 0;
	for (size_t i = 0; i < sizeof(executed_ops); i++)
		ops[executed_ops[i] / 64] |= 1ull << (executed_ops[i] % 64);
	return 0;
fail:
	if (r->epfd >= 0)
		close(r->epfd);
	if (r->doorbell >= 0)
		close(r->doorbell);
	r->epfd = r->doorbell = -1;
	free_memory(r);
	return err;
}

/* Take every queued SQE, in order, building link chains. */
static int take_sqes(struct ep_ring *r)
{
	struct io_uring *ring = r->ring;
	struct ep_op *head = NULL, *prev = NULL;
	bool link = false, hard = false;
	int n = 0;

	while (ring->sq.sqe_head != ring->sq.sqe_tail) {
		const struct io_uring_sqe *sqe =
		    &ring->sq.sqes[ring->sq.sqe_head & ring->sq.ring_mask];
		struct ep_op *op = op_alloc(r);

		if (!op)
			break; /* the rest stays queued */
		ring->sq.sqe_head++;
		n++;
		op->r = r;
		op->sqe = *sqe;
		op->fd = -1;
		op->hslot = NO_SLOT;
		op->multishot = ((sqe->opcode == IORING_OP_RECV ||
				  sqe->opcode == IORING_OP_RECVMSG) &&
				 (sqe->ioprio & IORING_RECV_MULTISHOT)) ||
				(sqe->opcode == IORING_OP_ACCEPT &&
				 (sqe->ioprio & IORING_ACCEPT_MULTISHOT));
		op->zc_notif = sqe->opcode == IORING_OP_SEND_ZC ||
			       sqe->opcode == IORING_OP_SENDMSG_ZC;
		bool links = sqe->flags & (IOSQE_IO_LINK | IOSQE_IO_HARDLINK);

		if (sqe->opcode == IORING_OP_LINK_TIMEOUT) {
			if (!link || !prev || prev->lt) {
				post_cqe(r, sqe->user_data, -EINVAL, 0);
				op_release(r, op);
				link = links;
				continue;
			}
			op->target = prev;
			prev->lt = op;
			link = links;
			hard = sqe->flags & IOSQE_IO_HARDLINK;
			if (!link) {
				if (head)
					op_start(head);
				head = prev = NULL;
			}
			continue;
		}
		if (link && prev) {
			prev->next = op;
			prev->hard = hard;
			op->state = OP_WAITING;
		} else {
			head = op;
		}
		prev = op;
		link = links;
		hard = sqe->flags & IOSQE_IO_HARDLINK;
		if (!link) {
			op_start(head);
			head = prev = NULL;
		}
	}
	if (head)
		op_start(head);
	__atomic_store_n(&r->w->sq_head, ring->sq.sqe_head, __ATOMIC_RELEASE);
	r->w->sq_tail = ring->sq.sqe_tail;
	return n;
}

/* Each op queued to go on gets one more attempt. */
static void run_queue(struct ep_ring *r)
{
	struct keel__list q = r->runq;
	struct keel__link *l;

	keel__list_init(&r->runq);
	while ((l = keel__list_pop_front(&q))) {
		struct ep_op *op = keel__list_entry(l, struct ep_op, wait);

		op->state = OP_RUNNING;
		op_attempt(op);
	}
}

/* A readiness edge on `fd`: retry the ops parked for it. */
static void fd_ready(struct ep_ring *r, int fd, uint32_t events)
{
	if ((uint32_t)fd >= r->nfds)
		return;
	struct keel__list q = r->fds[fd].waiters;
	struct keel__link *l;
	uint32_t in = EPOLLIN | EPOLLRDHUP | EPOLLPRI | EPOLLERR | EPOLLHUP;
	uint32_t out = EPOLLOUT | EPOLLERR | EPOLLHUP;

	/* Attempts may grow r->fds: no pointer into it is kept. */
	r->fds[fd].proved = r->epoch;
	if (events & (EPOLLRDHUP | EPOLLPRI | EPOLLERR | EPOLLHUP))
		r->fds[fd].eventful = true;
	keel__list_init(&r->fds[fd].waiters);
	while ((l = keel__list_pop_front(&q))) {
		struct ep_op *op = keel__list_entry(l, struct ep_op, wait);

		if (!(events & (op->events == EPOLLIN ? in : out))) {
			keel__list_push_back(&r->fds[fd].waiters, &op->wait);
			continue;
		}
		op->state = OP_RUNNING;
		op_attempt(op);
	}
}

static void timer_drain(struct ep_ring *r)
{
	uint64_t count;

	if (read(r->timerfd, &count, sizeof(count)) < 0) {
		/* nonblocking: not expired */
	}
}

static bool no_pwait2; /* epoll_pwait2 said ENOSYS (see poll_events) */

static int poll_events(struct ep_ring *r, int64_t timeout_ns)
{
	struct epoll_event evs[64];
	struct timespec ts, *tsp = NULL;

	if (timeout_ns >= 0) {
		ts.tv_sec = timeout_ns / 1000000000;
		ts.tv_nsec = timeout_ns % 1000000000;
		tsp = &ts;
	}
	int n = -1;

	/* epoll_pwait2 is Linux 5.11 (and unknown to valgrind): before it,
	 * epoll_wait with the timeout rounded up to a millisecond. */
	if (!__atomic_load_n(&no_pwait2, __ATOMIC_RELAXED)) {
		n = epoll_pwait2(r->epfd, evs, 64, tsp, NULL);
		if (n < 0 && errno == ENOSYS)
			__atomic_store_n(&no_pwait2, true, __ATOMIC_RELAXED);
	}
	if (__atomic_load_n(&no_pwait2, __ATOMIC_RELAXED))
		n = epoll_wait(r->epfd, evs, 64,
			       timeout_ns < 0 ? -1
			       : timeout_ns > INT_MAX * 1000000ll
				   ? INT_MAX
				   : (int)((timeout_ns + 999999) / 1000000));
	if (n < 0)
		return -errno;
	for (int i = 0; i < n; i++) {
		uint64_t tag = evs[i].data.u64;

		if (tag == TAG_DOORBELL)
			drain_remote(r);
		else if (tag == TAG_TIMER)
			timer_drain(r);
		else
			fd_ready(r, (int)tag, evs[i].events);
	}
	return n;
}

/* For a host sleeping on the epoll fd: wake it at the next deadline. */
static void host_timer_update(struct ep_ring *r)
{
	uint64_t next = r->nheap ? r->heap[0]->deadline : 0;

	if (r->timerfd < 0 || next == r->armed)
		return;
	struct itimerspec its = {0};

	its.it_value.tv_sec = (time_t)(next / 1000000000u);
	its.it_value.tv_nsec = (long)(next % 1000000000u);
	if (next && !its.it_value.tv_sec && !its.it_value.tv_nsec)
		its.it_value.tv_nsec = 1;
	if (!timerfd_settime(r->timerfd, TFD_TIMER_ABSTIME, &its, NULL))
		r->armed = next;
}

static int ep_enter(struct keel__backend *b, struct io_uring *ring,
		    unsigned want, int64_t wait_ns)
{
	struct ep_ring *r = ring_of(b);
	uint64_t until =
	    wait_ns < 0 ? UINT64_MAX : mono_now() + (uint64_t)wait_ns;
	int n, err = 0;

	r->epoch++;
	n = take_sqes(r);
	run_queue(r);
	drain_remote(r);
	flush_overflow(r);
	if (!want)
		goto out;
	/* Enough CQEs already: poll anyway now and then, so a loop that
	 * always has completions at hand still sees readiness. */
	if (io_uring_cq_ready(ring) >= want && r->skipped++ < 16)
		goto out;
	r->skipped = 0;
	for (;;) {
		uint64_t now = mono_now();
		int64_t t = 0;

		fire_timers(r, now);
		if (io_uring_cq_ready(ring) < want &&
		    keel__list_empty(&r->runq) && wait_ns != 0) {
			uint64_t end = until;

			if (r->nheap && r->heap[0]->deadline < end)
				end = r->heap[0]->deadline;
			t = end == UINT64_MAX ? -1
			    : end > now	      ? (int64_t)(end - now)
					      : 0;
		}
		err = poll_events(r, t);
		if (err < 0 && err != -EINTR)
			break;
		run_queue(r);
		fire_timers(r, mono_now());
		flush_overflow(r);
		if (err == -EINTR || io_uring_cq_ready(ring) >= want ||
		    wait_ns == 0)
			break;
		if (mono_now() >= until) {
			err = -ETIME;
			break;
		}
	}
out:
	pipe_unblock(r);
	host_timer_update(r);
	if (err == -ETIME || err == -EINTR)
		return io_uring_cq_ready(ring) >= want ? n : err;
	return err < 0 ? err : n;
}

static int reg_pbuf(struct ep_ring *r, const struct io_uring_buf_reg *reg)
{
	uint32_t entries = reg->ring_entries;

	if (!entries || (entries & (entries - 1)) || entries > 32768)
		return -EINVAL;
	if (reg->bgid >= r->nbufs) {
		uint32_t n = reg->bgid + 1u;
		struct ep_bufring *v = realloc(r->bufs, n * sizeof(*v));

		if (!v)
			return -ENOMEM;
		memset(v + r->nbufs, 0, (n - r->nbufs) * sizeof(*v));
		r->bufs = v;
		r->nbufs = n;
	}
	struct ep_bufring *br = &r->bufs[reg->bgid];

	if (br->br)
		return -EEXIST;
	br->br = (struct io_uring_buf_ring *)(uintptr_t)reg->ring_addr;
	br->mask = entries - 1;
	br->head = 0;
	br->inc = KEEL_BUF_REG_FLAGS(*reg) & IOU_PBUF_RING_INC;
	return 0;
}

static int ep_reg(struct keel__backend *b, struct io_uring *ring,
		  unsigned opcode, void *arg, unsigned nr_args)
{
	struct ep_ring *r = ring_of(b);

	switch (opcode) {
	case IORING_REGISTER_PBUF_RING:
		return reg_pbuf(r, arg);
	case IORING_UNREGISTER_PBUF_RING: {
		const struct io_uring_buf_reg *reg = arg;
		struct ep_bufring *br = bufring(r, reg->bgid);

		if (!br)
			return -EINVAL;
		br->br = NULL;
		return 0;
	}
	case IORING_REGISTER_FILES2: {
		const struct io_uring_rsrc_register *rr = arg;

		if (r->fixed || !(rr->flags & IORING_RSRC_REGISTER_SPARSE))
			return r->fixed ? -EBUSY : -EINVAL;
		r->fixed = malloc(rr->nr * sizeof(*r->fixed));
		if (!r->fixed)
			return -ENOMEM;
		for (uint32_t i = 0; i < rr->nr; i++)
			r->fixed[i] = -1;
		r->nfixed = rr->nr;
		return 0;
	}
	case IORING_REGISTER_BUFFERS:
		return keel__fixedbufs_set(&r->fbufs, arg, nr_args);
	case IORING_UNREGISTER_BUFFERS:
		return keel__fixedbufs_clear(&r->fbufs);
	case IORING_REGISTER_EVENTFD:
		if (r->eventfd >= 0)
			return -EBUSY;
		r->eventfd = *(int *)arg;
		return 0;
	case IORING_UNREGISTER_EVENTFD:
		if (r->eventfd < 0)
			return -ENXIO;
		r->eventfd = -1;
		return 0;
	default:
		return -EINVAL;
	}
}

/* What a host sleeps on: the epoll fd, with a timer for the deadlines. */
static int ep_poll_fd(struct keel__backend *b)
{
	struct ep_ring *r = ring_of(b);

	if (r->timerfd < 0) {
		int fd =
		    timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
		struct epoll_event ev = {.events = EPOLLIN,
					 .data.u64 = TAG_TIMER};

		if (fd < 0)
			return -errno;
		if (epoll_ctl(r->epfd, EPOLL_CTL_ADD, fd, &ev)) {
			int err = -errno;

			close(fd);
			return err;
		}
		r->timerfd = fd;
		host_timer_update(r);
	}
	return r->epfd;
}

static int ep_post(struct keel__backend *b, uint64_t ud, int res)
{
	return remote_post(ring_of(b), ud, res);
}

static void free_chain(struct ep_op *op)
{
	while (op) {
		struct ep_op *next = op->next;

		if (op->lt)
			op_free(op->lt);
		op_free(op);
		op = next;
	}
}

static void ep_teardown(struct keel__backend *b, struct io_uring *ring)
{
	struct ep_ring *r = ring_of(b);
	struct keel__link *l;

	registry_remove(r);
	/* No worker touches the ring after this; a descriptor opened for
	 * an op that never got to the loop is closed. */
	keel__ep_pool_drain(r);
	for (struct ep_op *op = r->done; op; op = op->done_next)
		if (op->sqe.opcode == IORING_OP_OPENAT && op->res >= 0)
			close(op->res);
	/* Ops the loop left behind go with the ring, silently. */
	while ((l = r->ops.first)) {
		struct ep_op *op = keel__list_entry(l, struct ep_op, link);
		struct ep_op *next = op->next;

		if (op->lt)
			op_free(op->lt);
		op_free(op);
		free_chain(next);
	}
	for (uint32_t i = 0; i < r->nfixed; i++)
		if (r->fixed[i] >= 0)
			fd_close(r, r->fixed[i]);
	for (uint32_t fd = 0; fd < r->nfds; fd++)
		if (r->fds[fd].close_pending)
			close((int)fd);
	close(r->epfd);
	close(r->doorbell);
	if (r->timerfd >= 0)
		close(r->timerfd);
	pthread_mutex_destroy(&r->lock);
	while (r->spare) {
		struct ep_op *op = r->spare;

		r->spare = op->next;
		free(op);
	}
	free(r->remote);
	free(r->fixed);
	keel__fixedbufs_clear(&r->fbufs);
	free(r->fds);
	free(r->bufs);
	free(r->heap);
	free(r->ovf);
	free_memory(r);
	free(r);
}

struct keel__backend *keel__epoll_new(void)
{
	struct ep_ring *r = calloc(1, sizeof(*r));

	if (!r)
		return NULL;
	r->b.name = "epoll";
	r->b.setup = ep_setup;
	r->b.enter = ep_enter;
	r->b.reg = ep_reg;
	r->b.teardown = ep_teardown;
	r->b.poll_fd = ep_poll_fd;
	r->b.post = ep_post;
	r->epfd = r->doorbell = r->timerfd = r->eventfd = -1;
	pthread_mutex_init(&r->lock, NULL);
	keel__list_init(&r->ops);
	keel__list_init(&r->runq);
	return &r->b;
}

void keel__epoll_drop(struct keel__backend *b)
{
	struct ep_ring *r = ring_of(b);

	pthread_mutex_destroy(&r->lock);
	free(r);
}
