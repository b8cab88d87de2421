/* SPDX-License-Identifier: MIT */
/*
 * kernel.c: the simulated kernel's ring engine: the machine's virtual
 * clock, event queue and PRNG, its descriptor tables, and io_uring's three
 * system calls for keel's loops (io/backend.h).
 *
 * An SQE becomes a struct sim_op. Started (at once, or when the op before
 * it in a link chain completes), the op is attempted at a PRNG-chosen
 * virtual time 0..max_latency_ns later: the attempt executes it (through
 * the object's struct sim_file_ops for descriptor ops) and posts its CQE.
 * An object that is not ready (-EAGAIN) parks the op on its waiters until
 * sim__file_wake(), which schedules another attempt, again after a PRNG
 * latency: so the order in which ops complete varies with the seed, and
 * only with it. Close, socket and openat run at issue instead, as on
 * Linux (runs_at_issue()): a close can never be cancelled.
 *
 * Events are ordered by (virtual time, sequence number): a binary heap.
 * Nothing here reads real time or compares pointers; lists are walked in
 * insertion order. The machine's one PRNG is splitmix64 (keel__rand64).
 */
#include "sim.h"

#include "model.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#define NO_SLOT UINT32_MAX

struct sim_event {
	uint64_t time;
	uint64_t seq;
	uint32_t slot; /* its heap index, NO_SLOT when not queued */
	void (*fire)(struct sim_event *ev);
};

/* A provided-buffer ring registered by keel (the memory is keel's). */
struct sim_bufring {
	struct io_uring_buf_ring *br; /* NULL: no ring with this id */
	uint32_t mask;
	uint16_t head; /* the kernel's head: entries before it are used */
	bool inc;      /* IOU_PBUF_RING_INC: buffers consumed in parts */
};

/* The shared words of the SQ and CQ rings (the kernel's mmap). */
struct sim_ring_words {
	unsigned sq_head, sq_tail, sq_flags, sq_dropped;
	unsigned cq_head, cq_tail, cq_flags, cq_overflow;
};

struct sim_ring {
	struct keel__backend b; /* first: the loop's backend */
	struct keel__sim *sim;
	uint32_t id;
	struct io_uring *ring;
	struct keel_loop *loop;
	struct sim_ring_words *w;
	unsigned *sq_array;
	struct io_uring_sqe *sqes;
	struct io_uring_cqe *cqes;
	/* CQEs that did not fit (FEAT_NODROP), oldest first. */
	struct io_uring_cqe *ovf;
	uint32_t ovf_head, ovf_n, ovf_cap;
	/* The direct (fixed) descriptor table. */
	struct sim_file **fixed;
	uint32_t nfixed;
	struct keel__fixedbufs fbufs; /* registered buffers */
	struct sim_bufring *bufs;     /* by buffer group id */
	uint32_t nbufs;
	int eventfd;	       /* registered eventfd, -1: none */
	struct keel__list ops; /* started ops, in submission order */
};

enum { OP_WAITING, OP_RUNNING, OP_PARKED };

struct sim_op {
	struct keel__link link; /* ring->ops while started */
	struct keel__link wait; /* file->waiters while parked */
	struct sim_ring *r;
	struct io_uring_sqe sqe;
	struct sim_file *file; /* a reference while in flight */
	struct sim_op *next;   /* the rest of its link chain */
	bool hard;	       /* the link to `next` is a hard link */
	struct sim_op *lt;     /* its linked timeout */
	struct sim_op *target; /* a linked timeout's op */
	struct sim_event ev;   /* its attempt, or its timeout */
	uint8_t state;
	bool started;
	bool multishot;
	bool zc_notif; /* SEND_ZC: a notification CQE follows */
};

static struct sim_ring *ring_of(struct keel__backend *b)
{
	return (struct sim_ring *)b;
}

uint64_t sim__now(const struct keel__sim *s)
{
	return s->now;
}

uint64_t sim__rand(struct keel__sim *s)
{
	return keel__rand64(&s->rng);
}

bool sim__chance(struct keel__sim *s, unsigned ppm)
{
	return ppm && sim__rand(s) % 1000000u < ppm;
}

static uint64_t latency(struct keel__sim *s)
{
	return sim__rand(s) % (s->opts.max_latency_ns + 1);
}

/* ---- the event queue: a binary heap on (time, seq) ---- */

static bool ev_before(const struct sim_event *a, const struct sim_event *b)
{
	return a->time < b->time || (a->time == b->time && a->seq < b->seq);
}

static void heap_set(struct keel__sim *s, uint32_t i, struct sim_event *ev)
{
	s->heap[i] = ev;
	ev->slot = i;
}

static void heap_up(struct keel__sim *s, uint32_t i)
{
	struct sim_event *ev = s->heap[i];

	while (i) {
		uint32_t p = (i - 1) / 2;

		if (!ev_before(ev, s->heap[p]))
			break;
		heap_set(s, i, s->heap[p]);
		i = p;
	}
	heap_set(s, i, ev);
}

static void heap_down(struct keel__sim *s, uint32_t i)
{
	struct sim_event *ev = s->heap[i];

	for (;;) {
		uint32_t c = 2 * i + 1;

		if (c >= s->nheap)
			break;
		if (c + 1 < s->nheap && ev_before(s->heap[c + 1], s->heap[c]))
			c++;
		if (!ev_before(s->heap[c], ev))
			break;
		heap_set(s, i, s->heap[c]);
		i = c;
	}
	heap_set(s, i, ev);
}

static void ev_cancel(struct keel__sim *s, struct sim_event *ev)
{
	uint32_t i = ev->slot;

	if (i == NO_SLOT)
		return;
	ev->slot = NO_SLOT;
	s->nheap--;
	if (i == s->nheap)
		return;
	heap_set(s, i, s->heap[s->nheap]);
	heap_down(s, i);
	heap_up(s, s->heap[i]->slot);
}

/* Queue `ev` at virtual time `at`; it must not be queued. */
static void ev_at(struct keel__sim *s, struct sim_event *ev, uint64_t at)
{
	if (s->nheap == s->heap_cap) {
		uint32_t cap = s->heap_cap ? 2 * s->heap_cap : 64;
		struct sim_event **h = realloc(s->heap, cap * sizeof(*h));

		if (!h)
			abort(); /* the simulation cannot go on */
		s->heap = h;
		s->heap_cap = cap;
	}
	ev->time = at < s->now ? s->now : at;
	ev->seq = s->seq++;
	heap_set(s, s->nheap, ev);
	s->nheap++;
	heap_up(s, ev->slot);
}

uint64_t sim__next_event(const struct keel__sim *s)
{
	return s->nheap ? s->heap[0]->time : UINT64_MAX;
}

unsigned sim__run_due(struct keel__sim *s)
{
	unsigned n = 0;

	while (s->nheap && s->heap[0]->time <= s->now) {
		struct sim_event *ev = s->heap[0];

		ev_cancel(s, ev);
		ev->fire(ev);
		n++;
	}
	return n;
}

/* ---- objects and descriptors ---- */

void sim__file_init(struct sim_file *f, struct keel__sim *s,
		    const struct sim_file_ops *ops)
{
	f->ops = ops;
	f->sim = s;
	f->refs = 1;
	keel__list_init(&f->waiters);
}

void sim__file_get(struct sim_file *f)
{
	f->refs++;
}

void sim__file_put(struct sim_file *f)
{
	if (--f->refs)
		return;
	if (f->ops && f->ops->release)
		f->ops->release(f);
}

int sim__fd_install(struct keel__sim *s, struct sim_file *f)
{
	uint32_t i;

	if (s->fds_open >= s->opts.fd_limit)
		return -EMFILE;
	/* The lowest free number, as Linux gives. */
	for (i = 0; i < s->nfiles && s->files[i]; i++)
		;
	if (i == s->nfiles) {
		struct sim_file **v =
		    realloc(s->files, (s->nfiles + 1) * sizeof(*v));

		if (!v)
			return -ENOMEM;
		s->files = v;
		s->nfiles++;
	}
	s->files[i] = f;
	s->fds_open++;
	return SIM_FD_BASE + (int)i;
}

struct sim_file *sim__fd_get(struct keel__sim *s, int fd)
{
	if (fd < SIM_FD_BASE || (uint32_t)(fd - SIM_FD_BASE) >= s->nfiles)
		return NULL;
	return s->files[fd - SIM_FD_BASE];
}

int sim__fd_close(struct keel__sim *s, int fd)
{
	struct sim_file *f = sim__fd_get(s, fd);

	if (!f)
		return -EBADF;
	s->files[fd - SIM_FD_BASE] = NULL;
	s->fds_open--;
	sim__file_put(f);
	return 0;
}

/* ---- CQEs ---- */

static void signal_eventfd(struct sim_ring *r)
{
	uint64_t one = 1;

	if (r->eventfd >= 0 && write(r->eventfd, &one, sizeof(one)) < 0) {
		/* a full counter still reads as readable */
	}
}

static void post_cqe(struct sim_ring *r, uint64_t ud, int res, unsigned flags)
{
	struct sim_ring_words *w = r->w;
	struct io_uring_cqe *cqe;

	r->sim->count.cqes++;
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
					abort();
				r->ovf = v;
				r->ovf_cap = cap;
			}
		}
		cqe = &r->ovf[r->ovf_head + r->ovf_n++];
		w->sq_flags |= IORING_SQ_CQ_OVERFLOW;
		r->sim->count.overflows++;
	} else {
		cqe = &r->cqes[w->cq_tail & r->ring->cq.ring_mask];
		__atomic_store_n(&w->cq_tail, w->cq_tail + 1, __ATOMIC_RELEASE);
	}
	cqe->user_data = ud;
	cqe->res = res;
	cqe->flags = flags;
	signal_eventfd(r);
}

/* Move overflowed CQEs into the CQ as far as it has room. */
static void flush_overflow(struct sim_ring *r)
{
	struct sim_ring_words *w = r->w;

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

/* ---- op lifecycle ---- */

static void op_attempt_ev(struct sim_event *ev);
static void op_attempt(struct sim_op *op);
static void op_start(struct sim_op *op);
static void op_finish(struct sim_op *op, int res, unsigned cflags);

static struct sim_op *op_of_ev(struct sim_event *ev)
{
	return (struct sim_op *)((char *)ev - offsetof(struct sim_op, ev));
}

static void op_schedule(struct sim_op *op, uint64_t at)
{
	op->state = OP_RUNNING;
	op->ev.fire = op_attempt_ev;
	ev_at(op->r->sim, &op->ev, at);
}

/* Remove an op from wherever it waits (event queue, file waiters). */
static void op_unqueue(struct sim_op *op)
{
	ev_cancel(op->r->sim, &op->ev);
	if (op->state == OP_PARKED) {
		keel__list_remove(&op->file->waiters, &op->wait);
		op->state = OP_RUNNING;
	}
}

static void op_free(struct sim_op *op)
{
	struct keel__sim *s = op->r->sim;

	op_unqueue(op);
	if (op->started) {
		keel__list_remove(&op->r->ops, &op->link);
		s->count.inflight--;
	}
	if (op->file)
		sim__file_put(op->file);
	free(op);
}

/* An op that will never start (its chain broke): -ECANCELED, and the
 * same for its linked timeout and the rest of the chain. */
static void op_cancel_unstarted(struct sim_op *op)
{
	while (op) {
		struct sim_op *next = op->next;

		post_cqe(op->r, op->sqe.user_data, -ECANCELED, 0);
		if (op->lt) {
			post_cqe(op->r, op->lt->sqe.user_data, -ECANCELED, 0);
			op_free(op->lt);
		}
		op_free(op);
		op = next;
	}
}

static bool skip_cqe(const struct sim_op *op, int res)
{
	return (op->sqe.flags & IOSQE_CQE_SKIP_SUCCESS) && res >= 0;
}

/*
 * The op's last CQE: its linked timeout is disarmed (-ECANCELED), the
 * chain goes on (or, when it failed over a soft link, is cancelled).
 */
static void op_finish(struct sim_op *op, int res, unsigned cflags)
{
	struct sim_ring *r = op->r;
	struct sim_op *next = op->next;
	bool hard = op->hard;

	if (!skip_cqe(op, res))
		post_cqe(r, op->sqe.user_data, res,
			 cflags | (op->zc_notif && res >= 0 ? IORING_CQE_F_MORE
							    : 0));
	if (op->zc_notif && res >= 0)
		post_cqe(r, op->sqe.user_data, 0, IORING_CQE_F_NOTIF);
	if (op->lt) {
		post_cqe(r, op->lt->sqe.user_data, -ECANCELED, 0);
		op_free(op->lt);
		op->lt = NULL;
	}
	op_free(op);
	if (!next)
		return;
	if (res < 0 && !hard)
		op_cancel_unstarted(next);
	else
		op_start(next);
}

/* A started op is cancelled: -ECANCELED, as the kernel does. */
static void op_cancel(struct sim_op *op)
{
	op_unqueue(op);
	op_finish(op, -ECANCELED, 0);
}

static void lt_fire(struct sim_event *ev)
{
	struct sim_op *lt = op_of_ev(ev);
	struct sim_op *op = lt->target;

	/* The timeout wins: -ETIME for it, -ECANCELED for its op. */
	op->lt = NULL;
	post_cqe(lt->r, lt->sqe.user_data, -ETIME, 0);
	op_free(lt);
	op_cancel(op);
}

static uint64_t ts_ns(const struct io_uring_sqe *sqe)
{
	const struct __kernel_timespec *ts =
	    (const struct __kernel_timespec *)(uintptr_t)sqe->addr;

	return (uint64_t)ts->tv_sec * 1000000000ull + (uint64_t)ts->tv_nsec;
}

static uint64_t deadline_of(struct keel__sim *s, const struct io_uring_sqe *sqe)
{
	uint64_t t = ts_ns(sqe);

	return sqe->timeout_flags & IORING_TIMEOUT_ABS ? t : s->now + t;
}

static void timeout_fire(struct sim_event *ev)
{
	op_finish(op_of_ev(ev), -ETIME, 0);
}

static struct sim_file *op_file(struct sim_op *op)
{
	struct sim_ring *r = op->r;
	int fd = op->sqe.fd;

	if (op->sqe.flags & IOSQE_FIXED_FILE)
		return fd >= 0 && (uint32_t)fd < r->nfixed ? r->fixed[fd]
							   : NULL;
	return sim__fd_get(r->sim, fd);
}

/* Opcodes whose sqe->fd names the object they work on. */
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
	case IORING_OP_SEND_ZC:
	case IORING_OP_SENDMSG_ZC:
	case IORING_OP_ACCEPT:
	case IORING_OP_CONNECT:
	case IORING_OP_SHUTDOWN:
	case IORING_OP_FSYNC:
	case IORING_OP_POLL_ADD:
		return true;
	default:
		return false;
	}
}

/*
 * Opcodes Linux completes at issue in the model's world: close (it cannot
 * be cancelled once submitted, and keel_close() promises the descriptor
 * is gone whatever it reports), and socket and openat, which never block
 * here (in-memory objects). A linked timeout or a cancel finds them done.
 */
static bool runs_at_issue(unsigned opcode)
{
	switch (opcode) {
	case IORING_OP_CLOSE:
	case IORING_OP_SOCKET:
	case IORING_OP_OPENAT:
		return true;
	default:
		return false;
	}
}

static void op_start(struct sim_op *op)
{
	struct keel__sim *s = op->r->sim;

	op->started = true;
	op->state = OP_RUNNING;
	keel__list_push_back(&op->r->ops, &op->link);
	s->count.inflight++;
	if (uses_file(op->sqe.opcode)) {
		op->file = op_file(op);
		if (!op->file) {
			op_finish(op, -EBADF, 0);
			return;
		}
		sim__file_get(op->file);
	}
	if (runs_at_issue(op->sqe.opcode)) {
		/* Its CQE at once (its linked timeout, disarmed, too). */
		op_attempt(op);
		return;
	}
	if (op->lt) {
		op->lt->ev.fire = lt_fire;
		ev_at(s, &op->lt->ev, deadline_of(s, &op->lt->sqe));
	}
	if (op->sqe.opcode == IORING_OP_TIMEOUT) {
		op->ev.fire = timeout_fire;
		ev_at(s, &op->ev, deadline_of(s, &op->sqe));
		return;
	}
	op_schedule(op, s->now + latency(s));
}

void sim__file_wake(struct sim_file *f)
{
	struct keel__link *l;

	/* Each parked op gets a new attempt, after its own latency. */
	while ((l = keel__list_pop_front(&f->waiters))) {
		struct sim_op *op = keel__list_entry(l, struct sim_op, wait);

		op->state = OP_RUNNING;
		op_schedule(op, op->r->sim->now + latency(op->r->sim));
	}
}

/* ---- provided buffers ---- */

static struct sim_bufring *bufring(struct sim_ring *r, unsigned bgid)
{
	return bgid < r->nbufs && r->bufs[bgid].br ? &r->bufs[bgid] : NULL;
}

/* The buffer at the ring's head, or NULL when it is empty. */
static struct io_uring_buf *buf_peek(struct sim_bufring *b)
{
	uint16_t tail = __atomic_load_n(&b->br->tail, __ATOMIC_ACQUIRE);

	if (tail == b->head)
		return NULL;
	return &b->br->bufs[b->head & b->mask];
}

/* `n` bytes of the head buffer were used: the CQE's buffer flags. */
static unsigned buf_consume(struct sim_bufring *b, struct io_uring_buf *buf,
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
	bool more; /* multishot goes on */
};

static int do_io(struct sim_op *op, void *buf, size_t len)
{
	struct sim_file *f = op->file;
	const struct sim_file_ops *o = f->ops;
	int64_t off = (int64_t)op->sqe.off;

	switch (op->sqe.opcode) {
	case IORING_OP_READ:
	case IORING_OP_READ_FIXED:
		if (o && o->read)
			return o->read(f, buf, len, off);
		return o && o->recv ? o->recv(f, buf, len, 0) : -EINVAL;
	case IORING_OP_RECV:
		return o && o->recv
			   ? o->recv(f, buf, len, (int)op->sqe.msg_flags)
			   : -ENOTSOCK;
	default:
		return -EINVAL;
	}
}

/* READ and RECV, with a buffer of their own or a selected one. */
static struct result exec_input(struct sim_op *op)
{
	struct result out = {0, 0, false};
	struct io_uring_sqe *sqe = &op->sqe;

	if (!(sqe->flags & IOSQE_BUFFER_SELECT)) {
		out.res = do_io(op, (void *)(uintptr_t)sqe->addr, sqe->len);
		return out;
	}
	struct sim_bufring *b = bufring(op->r, sqe->buf_group);
	struct io_uring_buf *buf = b ? buf_peek(b) : NULL;

	if (!buf) {
		out.res = -ENOBUFS;
		return out;
	}
	size_t len = buf->len;

	if (sqe->len && sqe->len < len)
		len = sqe->len;
	out.res = do_io(op, (void *)(uintptr_t)buf->addr, len);
	/* End of file and errors leave the buffer in the ring. */
	if (out.res > 0)
		out.flags = buf_consume(b, buf, (unsigned)out.res);
	out.more = op->multishot && out.res > 0;
	return out;
}

static int exec_vec(struct sim_op *op, bool write)
{
	const struct iovec *iov = (const struct iovec *)(uintptr_t)op->sqe.addr;
	const struct sim_file_ops *o = op->file->ops;
	int64_t off = (int64_t)op->sqe.off;
	int done = 0;

	if (!o || (write ? !o->write : !o->read))
		return -EINVAL;
	for (unsigned i = 0; i < op->sqe.len; i++) {
		int n = write ? o->write(op->file, iov[i].iov_base,
					 iov[i].iov_len, off)
			      : o->read(op->file, iov[i].iov_base,
					iov[i].iov_len, off);

		if (n < 0)
			return done ? done : n;
		done += n;
		if (off >= 0)
			off += n;
		if ((size_t)n < iov[i].iov_len)
			break;
	}
	return done;
}

static int exec_send(struct sim_op *op, const void *buf, size_t len)
{
	const struct sim_file_ops *o = op->file->ops;

	if (op->sqe.opcode == IORING_OP_WRITE ||
	    op->sqe.opcode == IORING_OP_WRITE_FIXED)
		return o && o->write
			   ? o->write(op->file, buf, len, (int64_t)op->sqe.off)
			   : -EINVAL;
	return o && o->send
		   ? o->send(op->file, buf, len, (int)op->sqe.msg_flags)
		   : -ENOTSOCK;
}

/* READ_FIXED/WRITE_FIXED: a read or write at the registered address,
 * which must lie inside registered buffer buf_index (else the kernel's
 * -EFAULT). */
static int exec_fixed(struct sim_op *op)
{
	const struct io_uring_sqe *sqe = &op->sqe;
	void *buf = (void *)(uintptr_t)sqe->addr;

	if (keel__fixedbufs_check(&op->r->fbufs, sqe->buf_index, sqe->addr,
				  sqe->len))
		return -EFAULT;
	return sqe->opcode == IORING_OP_READ_FIXED
		   ? do_io(op, buf, sqe->len)
		   : exec_send(op, buf, sqe->len);
}

/* SENDMSG: the iovecs gathered into one send (connected sockets only). */
static int exec_sendmsg(struct sim_op *op)
{
	const struct msghdr *m = (const struct msghdr *)(uintptr_t)op->sqe.addr;
	size_t len = 0, at = 0;

	/* The model's sockets are streams: no datagrams to address. */
	if (m->msg_name)
		return -EOPNOTSUPP;
	for (size_t i = 0; i < m->msg_iovlen; i++)
		len += m->msg_iov[i].iov_len;
	char *buf = malloc(len ? len : 1);

	if (!buf)
		return -ENOMEM;
	for (size_t i = 0; i < m->msg_iovlen; i++) {
		memcpy(buf + at, m->msg_iov[i].iov_base, m->msg_iov[i].iov_len);
		at += m->msg_iov[i].iov_len;
	}
	int n = exec_send(op, buf, len);

	free(buf);
	return n;
}

/* A new descriptor: plain, or direct (sqe->file_index, 1-based, or
 * IORING_FILE_INDEX_ALLOC). Takes `f`'s reference either way. */
static int install(struct sim_op *op, struct sim_file *f)
{
	struct sim_ring *r = op->r;
	uint32_t slot = op->sqe.file_index;
	int fd;

	if (!slot) {
		fd = sim__fd_install(r->sim, f);
		if (fd < 0)
			sim__file_put(f);
		return fd;
	}
	if (slot == IORING_FILE_INDEX_ALLOC) {
		for (slot = 0; slot < r->nfixed && r->fixed[slot]; slot++)
			;
		if (slot == r->nfixed) {
			sim__file_put(f);
			return -ENFILE;
		}
	} else if (--slot >= r->nfixed) {
		sim__file_put(f);
		return -EINVAL;
	}
	if (r->fixed[slot])
		sim__file_put(r->fixed[slot]);
	r->fixed[slot] = f;
	return op->sqe.file_index == IORING_FILE_INDEX_ALLOC ? (int)slot : 0;
}

static bool fd_table_full(const struct keel__sim *s)
{
	return s->fds_open >= s->opts.fd_limit;
}

static int exec_accept(struct sim_op *op, bool *more)
{
	const struct sim_file_ops *o = op->file->ops;
	struct sim_file *nf;

	if (!o || !o->accept)
		return -ENOTSOCK;
	int res = o->accept(op->file, &nf);

	if (res < 0)
		return res;
	/* Linux takes the descriptor before the connection: without one
	 * the connection stays queued. */
	if (!op->sqe.file_index && fd_table_full(op->r->sim))
		return sim__sock_unaccept(op->file, nf) ? -EINVAL : -EMFILE;
	/* accept4's peer address: sqe->addr, its size at sqe->addr2. */
	if (op->sqe.addr && op->sqe.addr2)
		sim__sock_name(nf, true,
			       (struct sockaddr *)(uintptr_t)op->sqe.addr,
			       (socklen_t *)(uintptr_t)op->sqe.addr2);
	res = install(op, nf);
	*more = op->multishot && res >= 0;
	return res;
}

static int exec_close(struct sim_op *op)
{
	struct sim_ring *r = op->r;

	if (op->sqe.file_index) {
		uint32_t slot = op->sqe.file_index - 1;

		if (slot >= r->nfixed || !r->fixed[slot])
			return -EBADF;
		sim__file_put(r->fixed[slot]);
		r->fixed[slot] = NULL;
		return 0;
	}
	return sim__fd_close(r->sim, op->sqe.fd);
}

/* POLL_ADD, single-shot: the events asked for (errors and hang-ups
 * always) that the object reports now, or -EAGAIN to wait for them. */
static int exec_poll(struct sim_op *op)
{
	const struct sim_file_ops *o = op->file->ops;
	unsigned want = op->sqe.poll32_events | POLLERR | POLLHUP;
	unsigned mask;

	if (op->sqe.len & IORING_POLL_ADD_MULTI)
		return -EINVAL; /* not modelled */
	/* An object without readiness (a regular file) is always ready. */
	mask = o && o->poll ? o->poll(op->file) : POLLIN | POLLOUT;
	mask &= want;
	return mask ? (int)mask : -EAGAIN;
}

static int exec_cancel(struct sim_op *op);

static int exec_msg_ring(struct sim_op *op)
{
	struct keel__sim *s = op->r->sim;
	int64_t id = (int64_t)op->sqe.fd - SIM_RING_FD_BASE;

	if (op->sqe.addr != IORING_MSG_DATA)
		return -EINVAL;
	if (id < 0 || id >= s->nrings || !s->rings[id])
		return -EBADFD;
	post_cqe(s->rings[id], op->sqe.off, (int)op->sqe.len, 0);
	return 0;
}

static int exec_open(struct sim_op *op)
{
	struct sim_file *f;
	int err = sim__open(op->r->sim, (const char *)(uintptr_t)op->sqe.addr,
			    (int)op->sqe.open_flags, op->sqe.len, &f);

	return err ? err : install(op, f);
}

static int exec_socket(struct sim_op *op)
{
	struct sim_file *f;
	int err = sim__socket(op->r->sim, op->sqe.fd, (int)op->sqe.off,
			      (int)op->sqe.len, &f);

	return err ? err : install(op, f);
}

static int exec_statx(struct sim_op *op)
{
	const char *path = (const char *)(uintptr_t)op->sqe.addr;
	struct statx *st = (struct statx *)(uintptr_t)op->sqe.off;
	struct sim_file *f;
	int err;

	if ((!path || !*path) && (op->sqe.statx_flags & AT_EMPTY_PATH)) {
		f = op_file(op);
		if (!f)
			return -EBADF;
		sim__file_get(f);
	} else {
		err = sim__open(op->r->sim, path, O_RDONLY, 0, &f);
		if (err)
			return err;
	}
	err = f->ops && f->ops->statx ? f->ops->statx(f, st) : -EINVAL;
	sim__file_put(f);
	return err;
}

/* Execute the op now: its result, or -EAGAIN to wait for its object. */
static struct result exec(struct sim_op *op)
{
	struct io_uring_sqe *sqe = &op->sqe;
	const struct sim_file_ops *o = op->file ? op->file->ops : NULL;
	struct result out = {0, 0, false};

	switch (sqe->opcode) {
	case IORING_OP_NOP:
		if (sqe->rw_flags & IORING_NOP_INJECT_RESULT) {
			op->r->sim->count.faults++;
			out.res = (int)sqe->len;
		}
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
		out.res = exec_vec(op, false);
		break;
	case IORING_OP_WRITEV:
		out.res = exec_vec(op, true);
		break;
	case IORING_OP_WRITE:
	case IORING_OP_SEND:
	case IORING_OP_SEND_ZC:
		out.res =
		    exec_send(op, (const void *)(uintptr_t)sqe->addr, sqe->len);
		break;
	case IORING_OP_SENDMSG:
	case IORING_OP_SENDMSG_ZC:
		out.res = exec_sendmsg(op);
		break;
	case IORING_OP_READ_FIXED:
	case IORING_OP_WRITE_FIXED:
		out.res = exec_fixed(op);
		break;
	case IORING_OP_ACCEPT:
		out.res = exec_accept(op, &out.more);
		break;
	case IORING_OP_CONNECT:
		out.res =
		    o && o->connect
			? o->connect(
			      op->file,
			      (const struct sockaddr *)(uintptr_t)sqe->addr,
			      (socklen_t)sqe->off)
			: -ENOTSOCK;
		break;
	case IORING_OP_SHUTDOWN:
		out.res = o && o->shutdown
			      ? o->shutdown(op->file, (int)sqe->len)
			      : -ENOTSOCK;
		break;
	case IORING_OP_FSYNC:
		out.res = o && o->fsync ? o->fsync(op->file) : -EINVAL;
		break;
	case IORING_OP_CLOSE:
		out.res = exec_close(op);
		break;
	case IORING_OP_OPENAT:
		out.res = exec_open(op);
		break;
	case IORING_OP_SOCKET:
		out.res = exec_socket(op);
		break;
	case IORING_OP_STATX:
		out.res = exec_statx(op);
		break;
	case IORING_OP_POLL_ADD:
		out.res = exec_poll(op);
		break;
	default:
		out.res = -EINVAL;
		break;
	}
	return out;
}

/* Run the op's attempt: complete it, or park it on its object. */
static void op_attempt(struct sim_op *op)
{
	struct result out = exec(op);
	bool nonblock = (op->sqe.opcode == IORING_OP_RECV ||
			 op->sqe.opcode == IORING_OP_SEND) &&
			(op->sqe.msg_flags & MSG_DONTWAIT);

	if (out.res == -EAGAIN && op->file && !nonblock) {
		op->state = OP_PARKED;
		keel__list_push_back(&op->file->waiters, &op->wait);
		return;
	}
	if (out.more) {
		/* Multishot: this CQE, and the op stays armed. */
		post_cqe(op->r, op->sqe.user_data, out.res,
			 out.flags | IORING_CQE_F_MORE);
		op_schedule(op, op->r->sim->now + latency(op->r->sim));
		return;
	}
	op_finish(op, out.res, out.flags);
}

static void op_attempt_ev(struct sim_event *ev)
{
	op_attempt(op_of_ev(ev));
}

/* Does `op` match the cancel request `c`? */
static bool cancel_matches(const struct sim_op *c, const struct sim_op *op)
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
 * Cancel one op, with the kernel's race: an op whose attempt is due may
 * be completing on another CPU just now (a PRNG draw says whether): then
 * its own result is delivered and the cancel finds it too late.
 */
static bool cancel_one(struct sim_op *op)
{
	struct keel__sim *s = op->r->sim;

	if (op->state == OP_RUNNING && op->ev.slot != NO_SLOT &&
	    op->ev.fire == op_attempt_ev && !op->multishot &&
	    sim__rand(s) % 4 == 0) {
		struct result out;

		ev_cancel(s, &op->ev);
		out = exec(op);
		if (out.res != -EAGAIN) {
			s->count.cancels_raced++;
			op_finish(op, out.res, out.flags);
			return false;
		}
	}
	op_cancel(op);
	return true;
}

static int exec_cancel(struct sim_op *c)
{
	struct sim_ring *r = c->r;
	bool all = c->sqe.cancel_flags &
		   (IORING_ASYNC_CANCEL_ALL | IORING_ASYNC_CANCEL_ANY);
	int cancelled = 0, raced = 0;

	for (;;) {
		struct sim_op *hit = NULL;
		struct keel__link *l;

		keel__list_for_each (l, &r->ops) {
			struct sim_op *op =
			    keel__list_entry(l, struct sim_op, link);

			if (cancel_matches(c, op)) {
				hit = op;
				break;
			}
		}
		if (!hit)
			break;
		if (cancel_one(hit))
			cancelled++;
		else
			raced++;
		if (!all)
			break;
	}
	if (all)
		return cancelled + raced ? cancelled + raced : -ENOENT;
	return cancelled ? 0 : raced ? -EALREADY : -ENOENT;
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
    IORING_OP_SENDMSG_ZC, IORING_OP_POLL_ADD,	  IORING_OP_WRITE_FIXED,
    IORING_OP_READ_FIXED,
};

static int sim_setup(struct keel__backend *b, struct io_uring *ring,
		     unsigned sq, unsigned cq, uint64_t ops[2])
{
	struct sim_ring *r = ring_of(b);

	r->w = calloc(1, sizeof(*r->w));
	r->sq_array = calloc(sq, sizeof(*r->sq_array));
	r->sqes = calloc(sq, sizeof(*r->sqes));
	r->cqes = calloc(cq, sizeof(*r->cqes));
	if (!r->w || !r->sq_array || !r->sqes || !r->cqes) {
		free(r->w);
		free(r->sq_array);
		free(r->sqes);
		free(r->cqes);
		return -ENOMEM;
	}
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
	ring->flags = IORING_SETUP_CQSIZE | IORING_SETUP_SUBMIT_ALL |
		      IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
	ring->features = IORING_FEAT_SINGLE_MMAP | IORING_FEAT_NODROP |
			 IORING_FEAT_SUBMIT_STABLE | IORING_FEAT_RW_CUR_POS |
			 IORING_FEAT_FAST_POLL | IORING_FEAT_EXT_ARG |
			 IORING_FEAT_LINKED_FILE | IORING_FEAT_CQE_SKIP;
	ring->ring_fd = SIM_RING_FD_BASE + (int)r->id;
	ring->enter_ring_fd = ring->ring_fd;
	ops[0] = ops[1] = 0;
	for (size_t i = 0; i < sizeof(executed_ops); i++)
		ops[executed_ops[i] / 64] |= 1ull << (executed_ops[i] % 64);
	return 0;
}

/* Take every queued SQE, in order, building link chains. */
static int take_sqes(struct sim_ring *r)
{
	struct io_uring *ring = r->ring;
	struct keel__sim *s = r->sim;
	struct sim_op *head = NULL, *prev = NULL;
	bool link = false, hard = false;
	int n = 0;

	while (ring->sq.sqe_head != ring->sq.sqe_tail) {
		const struct io_uring_sqe *sqe =
		    &ring->sq.sqes[ring->sq.sqe_head & ring->sq.ring_mask];
		struct sim_op *op = calloc(1, sizeof(*op));

		if (!op)
			break; /* the rest stays queued (-EAGAIN) */
		ring->sq.sqe_head++;
		n++;
		s->count.ops++;
		op->r = r;
		op->sqe = *sqe;
		op->ev.slot = NO_SLOT;
		op->multishot = (sqe->opcode == IORING_OP_RECV &&
				 (sqe->ioprio & IORING_RECV_MULTISHOT)) ||
				(sqe->opcode == IORING_OP_ACCEPT &&
				 (sqe->ioprio & IORING_ACCEPT_MULTISHOT));
		op->zc_notif = sqe->opcode == IORING_OP_SEND_ZC ||
			       sqe->opcode == IORING_OP_SENDMSG_ZC;
		bool links = sqe->flags & (IOSQE_IO_LINK | IOSQE_IO_HARDLINK);

		if (sqe->opcode == IORING_OP_LINK_TIMEOUT) {
			if (!link || !prev || prev->lt) {
				/* Not after a linked op: the kernel says
				 * -EINVAL. */
				post_cqe(r, sqe->user_data, -EINVAL, 0);
				free(op);
				link = links;
				continue;
			}
			op->target = prev;
			prev->lt = op;
			/* What follows links to the timed op. */
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
	/* A chain still open at the end of the submission starts as is. */
	if (head)
		op_start(head);
	__atomic_store_n(&r->w->sq_head, ring->sq.sqe_head, __ATOMIC_RELEASE);
	r->w->sq_tail = ring->sq.sqe_tail;
	return n;
}

/* Let virtual time run on inside an enter (a loop run on its own). */
static int wait_cqes(struct sim_ring *r, unsigned want, int64_t wait_ns)
{
	struct keel__sim *s = r->sim;
	uint64_t until = wait_ns < 0 ? UINT64_MAX : s->now + (uint64_t)wait_ns;

	for (;;) {
		flush_overflow(r);
		if (io_uring_cq_ready(r->ring) >= want)
			return 0;
		uint64_t next = sim__next_event(s);

		if (next > until) {
			if (until != UINT64_MAX)
				s->now = until;
			return -ETIME;
		}
		if (next == UINT64_MAX) {
			/*
			 * Nothing can complete. With several loops another
			 * one might make progress: keel_sim_run() must drive
			 * them. Alone, the loop waits for nothing.
			 */
			return s->loops > 1 ? -EOPNOTSUPP : -EDEADLK;
		}
		if (next > s->now)
			s->now = next;
		sim__run_due(s);
	}
}

static int sim_enter(struct keel__backend *b, struct io_uring *ring,
		     unsigned want, int64_t wait_ns)
{
	struct sim_ring *r = ring_of(b);
	int n = take_sqes(r);

	flush_overflow(r);
	if (want && wait_ns != 0 && !r->sim->running) {
		int err = wait_cqes(r, want, wait_ns);

		if (err)
			return err;
	}
	return n;
}

static int reg_pbuf(struct sim_ring *r, const struct io_uring_buf_reg *reg)
{
	uint32_t entries = reg->ring_entries;

	if (!entries || (entries & (entries - 1)) || entries > 32768)
		return -EINVAL;
	if (reg->bgid >= r->nbufs) {
		uint32_t n = reg->bgid + 1u;
		struct sim_bufring *v = realloc(r->bufs, n * sizeof(*v));

		if (!v)
			return -ENOMEM;
		memset(v + r->nbufs, 0, (n - r->nbufs) * sizeof(*v));
		r->bufs = v;
		r->nbufs = n;
	}
	struct sim_bufring *br = &r->bufs[reg->bgid];

	if (br->br)
		return -EEXIST;
	br->br = (struct io_uring_buf_ring *)(uintptr_t)reg->ring_addr;
	br->mask = entries - 1;
	br->head = 0;
	br->inc = KEEL_BUF_REG_FLAGS(*reg) & IOU_PBUF_RING_INC;
	return 0;
}

static int sim_reg(struct keel__backend *b, struct io_uring *ring,
		   unsigned opcode, void *arg, unsigned nr_args)
{
	struct sim_ring *r = ring_of(b);

	switch (opcode) {
	case IORING_REGISTER_PBUF_RING:
		return reg_pbuf(r, arg);
	case IORING_UNREGISTER_PBUF_RING: {
		const struct io_uring_buf_reg *reg = arg;
		struct sim_bufring *br = bufring(r, reg->bgid);

		if (!br)
			return -EINVAL;
		br->br = NULL;
		return 0;
	}
	case IORING_REGISTER_FILES2: {
		const struct io_uring_rsrc_register *rr = arg;

		if (r->fixed || !(rr->flags & IORING_RSRC_REGISTER_SPARSE))
			return r->fixed ? -EBUSY : -EINVAL;
		r->fixed = calloc(rr->nr, sizeof(*r->fixed));
		if (!r->fixed)
			return -ENOMEM;
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

static void sim_teardown(struct keel__backend *b, struct io_uring *ring)
{
	struct sim_ring *r = ring_of(b);
	struct keel__sim *s = r->sim;
	struct keel__link *l;

	/* Ops the loop left behind go with the ring, silently. */
	while ((l = r->ops.first)) {
		struct sim_op *op = keel__list_entry(l, struct sim_op, link);
		struct sim_op *next = op->next;

		if (op->lt)
			op_free(op->lt);
		op_free(op);
		while (next) {
			struct sim_op *n2 = next->next;

			if (next->lt)
				op_free(next->lt);
			op_free(next);
			next = n2;
		}
	}
	for (uint32_t i = 0; i < r->nfixed; i++)
		if (r->fixed[i])
			sim__file_put(r->fixed[i]);
	s->rings[r->id] = NULL;
	s->loops--;
	free(r->fixed);
	keel__fixedbufs_clear(&r->fbufs);
	free(r->bufs);
	free(r->ovf);
	free(r->w);
	free(r->sq_array);
	free(r->sqes);
	free(r->cqes);
	free(r);
	if (!s->loops && !s->running && keel__virtual_clock == &s->now)
		keel__virtual_clock = s->outer_clock;
}

struct keel__backend *sim__backend_new(struct keel__sim *s)
{
	struct sim_ring *r = calloc(1, sizeof(*r));
	struct sim_ring **v = realloc(s->rings, (s->nrings + 1) * sizeof(*v));

	if (!r || !v) {
		free(r);
		if (v)
			s->rings = v;
		return NULL;
	}
	s->rings = v;
	r->b.name = "sim";
	r->b.setup = sim_setup;
	r->b.enter = sim_enter;
	r->b.reg = sim_reg;
	r->b.teardown = sim_teardown;
	r->sim = s;
	r->id = s->nrings;
	r->eventfd = -1;
	keel__list_init(&r->ops);
	s->rings[s->nrings++] = r;
	s->loops++;
	return &r->b;
}

/* A backend whose setup failed is never torn down: undo the new. */
void sim__backend_drop(struct keel__backend *b)
{
	struct sim_ring *r = ring_of(b);

	r->sim->rings[r->id] = NULL;
	r->sim->loops--;
	free(r);
}

void sim__ring_set_loop(struct keel__backend *b, struct keel_loop *loop)
{
	ring_of(b)->loop = loop;
}

struct keel_loop *sim__ring_loop(struct keel__sim *s, uint32_t id)
{
	return id < s->nrings && s->rings[id] ? s->rings[id]->loop : NULL;
}

bool sim__ring_has_cqes(struct keel_loop *loop)
{
	struct keel__io *io = keel__io_of(loop);

	return io_uring_cq_ready(&io->ring) ||
	       io_uring_cq_has_overflow(&io->ring);
}

void sim__kernel_fini(struct keel__sim *s)
{
	free(s->files);
	free(s->heap);
	free(s->rings);
}
