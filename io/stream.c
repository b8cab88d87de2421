/* SPDX-License-Identifier: MIT */
/*
 * stream.c: multishot recv, recvmsg (datagram) and accept streams.
 *
 * A stream is one ledger op (kind STREAM) that lives as long as the stream
 * is open, whether a multishot request is armed in the kernel or not. Every
 * CQE goes to the stream's handler here, never straight to the task: data
 * and sockets are queued in the stream (chunk nodes from a per-loop pool)
 * and handed over when the task asks, so a task can be busy sending while
 * its next request is already being received, with no syscall.
 *
 * Both kinds share one base (struct keel__stream) and one life cycle here:
 * open, arm, CQE, deliver, next, cancel, close, finalise. What differs is a
 * struct keel__stream_kind of hooks: how to prepare the request, what a CQE
 * queues, what to do when the request stops, how the task takes an item, and
 * how a parked stream stops waiting (for a buffer, or for descriptors).
 *
 * The op is the task's: it counts in the task's inflight ops, so the frame
 * that holds the stream outlives the kernel's last CQE. (An idle recv
 * stream parks on a poll without the op, and does that itself: see
 * "Parked streams".) When the task
 * exits, aborts or the loop is destroyed, the stream is closed: the request
 * is cancelled, queued buffers go back to their ring, queued sockets are
 * closed. When the task's token is cancelled, the stream ends with the
 * cause (data that arrived before is still delivered first).
 */
#include "io.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <keel/io.h>

/* Stream state bits (struct keel__stream.state). */
#define S_ARMED	  0x01 /* a multishot request is in the kernel */
#define S_WAITING 0x02 /* the task waits in keel_*_next() */
#define S_CLOSED  0x04 /* closed: no more re-arms, finalised when unarmed */
#define S_ENDED	  0x08 /* `end` holds the final result */
#define S_PARKED                                                               \
	0x10		/* waiting for a resource before it re-arms: recv,     \
			 * a buffer (-ENOBUFS); accept, descriptors (EMFILE) */
#define S_WOKEN	  0x20	/* recv: re-armed for a free buffer, no CQE since */
#define S_PAUSING 0x40	/* recv: cancelled for backpressure (queue full) */
#define S_POLLING 0x80	/* recv: idle, the armed request is a poll */
#define S_IDLING  0x100 /* recv: cancelled by the idle sweep, to poll */
#define S_ACTIVE  0x200 /* recv: armed or a CQE since the last sweep */
#define S_OPLESS  0x400 /* recv: parked, holding no op (s->op is OP_NONE) */
#define S_UNPOLL  0x800 /* recv: the parked poll's cancel is queued */
#define S_IDLE                                                                 \
	0x1000 /* recv, KEEL_RECV_IDLE_RETURN: stopped by the idle sweep,      \
		* unarmed; the next take returns -EAGAIN */

/* s->op of a parked stream: open, but holding no op. */
#define OP_NONE UINT32_MAX

#define CHUNK_BLOCK	   256
#define ACCEPT_BACKOFF_MIN (10ull * 1000 * 1000)
#define ACCEPT_BACKOFF_MAX (1000ull * 1000 * 1000)

/* ---- chunk nodes ---------------------------------------------------- */

struct keel__chunk *keel__chunk_get(struct keel__io *io)
{
	struct keel__chunk_pool *p = &io->chunks;

	if (!p->free) {
		void **blocks =
		    realloc(p->blocks, (p->nblocks + 1) * sizeof(*blocks));

		if (!blocks)
			return NULL;
		p->blocks = blocks;
		struct keel__chunk *c = malloc(CHUNK_BLOCK * sizeof(*c));

		if (!c)
			return NULL;
		p->blocks[p->nblocks++] = c;
		for (int i = 0; i < CHUNK_BLOCK; i++) {
			c[i].next = p->free;
			p->free = &c[i];
		}
	}
	struct keel__chunk *c = p->free;

	p->free = c->next;
	return c;
}

void keel__chunk_put(struct keel__io *io, struct keel__chunk *c)
{
	c->next = io->chunks.free;
	io->chunks.free = c;
}

/* The bytes of io->parked (mapped: see parked_room()) at `cap` lists. */
static size_t parked_bytes(uint32_t cap)
{
	return (size_t)cap * sizeof(struct keel__list);
}

void keel__stream_io_fini(struct keel__io *io)
{
	for (uint32_t i = 0; i < io->chunks.nblocks; i++)
		free(io->chunks.blocks[i]);
	free(io->chunks.blocks);
	io->chunks.blocks = NULL;
	io->chunks.nblocks = 0;
	io->chunks.free = NULL;
	if (io->parked)
		munmap(io->parked, parked_bytes(io->parked_cap));
	io->parked = NULL;
	io->parked_cap = 0;
}

/* ---- the base ------------------------------------------------------ */

/* What a kind of stream adds to the common life cycle. */
struct keel__stream_kind {
	uint8_t opcode; /* IORING_OP_*, the multishot request */
	bool sockets;	/* queues accepted sockets (else ring chunks) */
	/* Fill `sqe` with the multishot request (the rest is common). */
	void (*prep)(struct keel__io *io, struct keel__stream *s,
		     struct io_uring_sqe *sqe);
	/* A CQE of the request: queue what it carries. */
	void (*queue)(struct keel__io *io, struct keel__stream *s,
		      struct keel__op *op, int res, unsigned cqe_flags);
	/* The request stopped (its final CQE) on an open stream: re-arm,
	 * park, pause or end. */
	void (*stopped)(struct keel__io *io, struct keel__stream *s, int res,
			unsigned cqe_flags);
	/* keel_*_next() found the stream unarmed and not parked. */
	void (*restart)(struct keel__io *io, struct keel__stream *s);
	/* Hand the first queued item `c` (already unlinked) to `out`;
	 * returns the await's result. */
	int (*take)(struct keel__io *io, struct keel__stream *s,
		    struct keel__chunk *c, void *out);
	/* Stop waiting for the resource it is parked on. */
	void (*unpark)(struct keel__io *io, struct keel__stream *s);
	/* At finalise: give back what the kind holds (may be NULL). */
	void (*release)(struct keel__io *io, struct keel__stream *s);
};

/* A stream names its kind by index (one byte in the frame, where a
 * pointer would push an idle connection's frame into a larger class). */
enum stream_kind_index { KIND_RECV, KIND_ACCEPT, KIND_RECVMSG };
static const struct keel__stream_kind recv_kind, accept_kind, recvmsg_kind;
static const struct keel__stream_kind *const stream_kinds[] = {
    [KIND_RECV] = &recv_kind,
    [KIND_ACCEPT] = &accept_kind,
    [KIND_RECVMSG] = &recvmsg_kind,
};

static struct keel_recv_stream *recv_of(struct keel__stream *s);

static inline const struct keel__stream_kind *
kind_of(const struct keel__stream *s)
{
	return stream_kinds[s->kind];
}

static struct keel__op *stream_op(struct keel__io *io, uint32_t op)
{
	return keel__op_at(&io->ledger, op - 1);
}

/* A stream's "latency" in traces: the wait since it was armed or since
 * its previous CQE (for a recv, the time between arrivals). */
static uint64_t stream_wait_ns(struct keel__io *io, struct keel__op *op)
{
	if (!io->core.trace || !op->trace_ns)
		return 0;
	uint64_t now = keel__trace_clock();
	uint64_t wait = now - op->trace_ns;

	op->trace_ns = now;
	return wait;
}

/*
 * A parked poll's start on the trace clock, kept in `end` (free while the
 * poll is armed: the stream has not ended, and has no other room) in
 * units of 2^16 ns: 32 bits last 78 hours, to 66 us. 0: not traced.
 */
#define PARK_TRACE_SHIFT 16

static int32_t park_trace_start(const struct keel__io *io)
{
	if (!io->core.trace)
		return 0;
	return (int32_t)(uint32_t)(keel__trace_clock() >> PARK_TRACE_SHIFT);
}

/* The parked poll's latency in traces: the wait since it was armed (as a
 * recv's, the time until the next arrival), or 0 if not traced then. */
static uint64_t park_wait_ns(const struct keel__io *io,
			     const struct keel__stream *s)
{
	uint32_t start = (uint32_t)s->end;

	if (!io->core.trace || !start)
		return 0;
	return (uint64_t)((uint32_t)(keel__trace_clock() >> PARK_TRACE_SHIFT) -
			  start)
	       << PARK_TRACE_SHIFT;
}

/* The result a cancelled request reports: the token's cause if any. */
static int end_result(struct keel_task *t, int res)
{
	if (res == -ECANCELED) {
		int cause = keel__task_cancel_cause(t);

		if (cause)
			return cause;
	}
	return res;
}

static int stream_arm(struct keel__io *io, struct keel__stream *s)
{
	struct keel__op *op = stream_op(io, s->op);
	struct io_uring_sqe *sqe = keel__io_sqe(io);

	if (!sqe)
		return -EAGAIN;
	kind_of(s)->prep(io, s, sqe);
	keel__sqe_fixed_fd(sqe);
	io_uring_sqe_set_data64(sqe, keel__op_ud(op, KEEL__UD_MAIN));
	/* A cancel of the previous request still waiting for an SQE would
	 * stop this one. */
	if (__builtin_expect(io->ledger.nlater != 0, 0))
		keel__io_cancel_forget(io, keel__op_ud(op, KEEL__UD_MAIN));
	op->pending = 1;
	op->flags &= (uint8_t)~KEEL__OP_CANCEL_SENT;
	op->start_ns = io->core.now;
	op->trace_ns = io->core.trace ? keel__trace_clock() : 0;
	s->state |= S_ARMED | S_ACTIVE;
	KEEL__TRACE(&io->core, KEEL_EV_OP_SUBMIT, op->opcode, s->task->id,
		    op->index, 0);
	/* A multishot recv armed: the sweep looks for it going idle. */
	if (s->kind == KIND_RECV && io->idle_poll &&
	    !keel_timer_armed(&io->idle_sweep))
		keel_timer_arm(s->task->loop, &io->idle_sweep,
			       io->core.now + io->idle_ns);
	return 0;
}

/* Close a socket nobody took: no op uses it, so a plain one at once. */
static void close_socket(struct keel__io *io, int fd)
{
	if (keel_fd_is_fixed(fd))
		keel_close_detached((struct keel_loop *)io, fd);
	else
		close(fd);
}

/*
 * The queue is a ring of chunks known by its last one (the first is the
 * last's next): one pointer in the stream, not two.
 */

/* Append the chain `first`..`last` of `n` items to the queue. */
static void stream_enqueue(struct keel__stream *s, struct keel__chunk *first,
			   struct keel__chunk *last, int n)
{
	last->next = s->tail ? s->tail->next : first;
	if (s->tail)
		s->tail->next = first;
	s->tail = last;
	s->queued += (uint32_t)n;
}

/* Give back everything queued: buffers to their ring, sockets closed. */
static void stream_drop(struct keel__io *io, struct keel__stream *s)
{
	struct keel__chunk *c = s->tail ? s->tail->next : NULL;

	if (c)
		s->tail->next = NULL; /* the end of the walk */
	while (c) {
		struct keel__chunk *next = c->next;

		if (kind_of(s)->sockets) {
			close_socket(io, (int)c->len);
		} else {
			struct keel_buf b = {
			    .data = c->data,
			    .ring = io->bufrings[c->ring - 1],
			    .len = c->len,
			    .bid = c->bid,
			};
			keel_buf_release(&b);
		}
		keel__chunk_put(io, c);
		c = next;
	}
	s->tail = NULL;
	s->queued = 0;
}

static void parked_remove(struct keel__io *io, struct keel__stream *s);

/* Closed and unarmed: give the op back (or, parked, what stood for it).
 * The frame may go with it. */
static void stream_finalise(struct keel__io *io, struct keel__stream *s)
{
	struct keel_task *t = s->task;
	uint32_t op = s->op;
	bool opless = s->state & S_OPLESS;

	stream_drop(io, s);
	if (s->state & S_PARKED)
		kind_of(s)->unpark(io, s);
	if (kind_of(s)->release)
		kind_of(s)->release(io, s);
	if (opless)
		parked_remove(io, s);
	s->state = S_CLOSED | S_ENDED;
	s->op = 0;
	if (!opless)
		keel__op_release_quiet(io, stream_op(io, op));
	else if ((t->flags & KEEL__T_EXITED) && !t->inflight)
		keel__task_ops_drained(t);
}

/* Move the first queued item into `out`; returns the await's result. */
static int stream_pop(struct keel__io *io, struct keel__stream *s, void *out)
{
	struct keel__chunk *c = s->tail->next;

	if (c == s->tail)
		s->tail = NULL;
	else
		s->tail->next = c->next;
	s->queued--;
	int res = kind_of(s)->take(io, s, c, out);

	keel__chunk_put(io, c);
	return res;
}

/* The owner is not waiting: tell a recv stream's notify hook, if any, of
 * what is queued or of the end. */
static void stream_notify(struct keel__stream *s)
{
	struct keel_recv_stream *r;

	if (s->kind == KIND_ACCEPT)
		return;
	r = recv_of(s);
	if (!r->notify)
		return;
	if (s->state & S_ENDED)
		r->notify(r, s->end > 0 ? 0 : s->end);
	else if (s->queued)
		r->notify(r, (int)s->queued);
}

/* Hand the waiting task its item or the end. */
static void stream_deliver(struct keel__stream *s)
{
	struct keel_task *t = s->task;

	if (!(s->state & S_WAITING)) {
		stream_notify(s);
		return;
	}
	if (s->tail) {
		int res = stream_pop(keel__io_of(t->loop), s, s->out);

		s->state &= (uint16_t)~S_WAITING;
		keel__task_complete(t, res);
	} else if (s->state & (S_ENDED | S_IDLE)) {
		int res = s->state & S_ENDED ? s->end : -EAGAIN;

		s->state &= (uint16_t) ~(S_WAITING | S_IDLE);
		keel__task_complete(t, res);
	}
}

/* The first final result wins. */
static void stream_end(struct keel__stream *s, int res)
{
	if (s->state & S_ENDED)
		return;
	s->state |= S_ENDED;
	s->end = res;
}

/* Re-arm, or end the stream if the kernel will not take the request. */
static void stream_rearm(struct keel__io *io, struct keel__stream *s)
{
	int cause = keel__task_cancel_cause(s->task);

	if (cause) {
		stream_end(s, cause);
		return;
	}
	io->count.multishot_rearms++;
	if (stream_arm(io, s))
		stream_end(s, -EAGAIN);
}

/* The resource a parked stream waited for is back (or its retry is due). */
static void stream_unparked(struct keel__io *io, struct keel__stream *s)
{
	s->state &= (uint16_t)~S_PARKED;
	if (s->state & (S_CLOSED | S_ENDED | S_ARMED))
		return;
	stream_rearm(io, s);
	stream_deliver(s);
}

/* Every CQE of a stream's request (the op's on_cqe). */
static void stream_cqe(struct keel__io *io, struct keel__op *op, int res,
		       unsigned cqe_flags)
{
	struct keel__stream *s = op->u.stream.stream;

	KEEL__TRACE(&io->core, KEEL_EV_OP_COMPLETE, op->opcode, s->task->id,
		    (int64_t)res, stream_wait_ns(io, op));
	s->state |= S_ACTIVE;
	if (!(cqe_flags & IORING_CQE_F_MORE)) {
		s->state &= (uint16_t)~S_ARMED;
		op->pending = 0;
	}
	kind_of(s)->queue(io, s, op, res, cqe_flags);
	if (s->state & S_CLOSED) {
		stream_drop(io, s);
		if (!(s->state & S_ARMED))
			stream_finalise(io, s);
		return;
	}
	if (!(cqe_flags & IORING_CQE_F_MORE))
		kind_of(s)->stopped(io, s, res, cqe_flags);
	stream_deliver(s);
}

/* A parked poll's user_data: the address needs no generation, as nothing
 * else can live there before the poll's CQE (the frame outlives it, and
 * an open of the struct is refused meanwhile: stream_claim()), and a
 * cancel still waiting for an SQE is forgotten at that CQE. */
static uint64_t parked_ud(const struct keel__stream *s)
{
	return (uint64_t)(uintptr_t)s | KEEL__UD_INTERNAL;
}

/* Cancel the armed request: the op's, or the parked poll (once; with no
 * SQE free, before the next enter: keel__io_cancel_ud()). */
static void stream_unarm(struct keel__io *io, struct keel__stream *s)
{
	if (!(s->state & S_OPLESS))
		keel__op_send_cancel(io, stream_op(io, s->op));
	else if (!(s->state & S_UNPOLL) && keel__io_cancel_ud(io, parked_ud(s)))
		s->state |= S_UNPOLL;
}

static void stream_close(struct keel__io *io, struct keel__stream *s)
{
	if (!s->op || (s->state & S_CLOSED))
		return;
	s->state |= S_CLOSED;
	s->state &= (uint16_t)~S_WAITING;
	stream_drop(io, s);
	if (s->state & S_ARMED)
		stream_unarm(io, s);
	else
		stream_finalise(io, s);
}

/* The task exits or its token was cancelled, or the loop goes away. */
static void stream_stop(struct keel__io *io, struct keel__stream *s)
{
	if ((s->task->flags & KEEL__T_EXITED) || io->closing) {
		stream_close(io, s);
		return;
	}
	int cause = keel__task_cancel_cause(s->task);

	if (s->state & S_ARMED) {
		stream_unarm(io, s); /* ends with -ECANCELED */
		return;
	}
	if (s->state & S_PARKED) {
		kind_of(s)->unpark(io, s);
		s->state &= (uint16_t)~S_PARKED;
	}
	stream_end(s, cause ? cause : -ECANCELED);
	stream_deliver(s);
}

/* The op's on_cancel. */
static void stream_cancel(struct keel__io *io, struct keel__op *op)
{
	stream_stop(io, op->u.stream.stream);
}

/* Point `op` at stream `s`, and `s` at it. */
static void stream_own_op(struct keel__stream *s, struct keel__op *op)
{
	op->fd = s->fd;
	op->u.stream.stream = s;
	op->u.stream.on_cqe = stream_cqe;
	op->u.stream.on_cancel = stream_cancel;
	s->op = op->index + 1;
}

/*
 * Whether struct `s` still holds a stream of `t`: open, or closed with its
 * request not back from the kernel yet (its op, or its parked poll, still
 * names `s`, and the request's last CQE is still to come to it). Read from
 * t's ops and parked streams, never from `s`, which may be memory never
 * opened.
 */
static bool stream_in_use(struct keel__io *io, struct keel_task *t,
			  const struct keel__stream *s)
{
	struct keel__link *n;

	for (uint32_t i = t->ops; i;) {
		struct keel__op *op = keel__op_at(&io->ledger, i - 1);

		if (op->kind == KEEL__OP_STREAM && op->u.stream.stream == s)
			return true;
		i = op->next;
	}
	if (t->id >= io->parked_cap)
		return false;
	keel__list_for_each (n, &io->parked[t->id])
		if (&keel__list_entry(n, struct keel_recv_stream, link)->base ==
		    s)
			return true;
	return false;
}

/* Before any check of an open: a stream still in `s` keeps it (-EBUSY);
 * otherwise `s` reads as never opened until the open succeeds. */
static int stream_claim(struct keel__io *io, struct keel_task *t,
			struct keel__stream *s)
{
	if (stream_in_use(io, t, s))
		return -EBUSY;
	s->op = 0;
	return 0;
}

/* The checks and the op every stream starts with; the caller then sets up
 * its kind's fields and calls stream_start(). On error nothing is held. */
static int stream_open(struct keel_task *t, struct keel__stream *s,
		       enum stream_kind_index kind_index, int fd,
		       unsigned flags)
{
	const struct keel__stream_kind *kind = stream_kinds[kind_index];
	struct keel__io *io = keel__io_of(t->loop);
	int cause = keel__task_cancel_cause(t);

	if (!(io->ops_supported[kind->opcode / 64] &
	      (1ull << (kind->opcode % 64))))
		return -EOPNOTSUPP;
	if (io->restricted && !keel__op_allowed(io, kind->opcode))
		return keel__restrict_refuse(io);
	if (cause)
		return cause;
	struct keel__op *op =
	    keel__op_new(io, t, KEEL__OP_STREAM, kind->opcode);

	if (!op)
		return -ENOMEM;
	s->kind = (uint8_t)kind_index;
	s->task = t;
	s->tail = NULL;
	s->out = NULL;
	s->fd = fd;
	stream_own_op(s, op);
	s->end = 0;
	s->queued = 0;
	s->state = 0;
	s->flags = (uint8_t)flags;
	return 0;
}

/* Arm the first request; if the kernel will not take it, close. */
static int stream_start(struct keel__io *io, struct keel__stream *s)
{
	int err = stream_arm(io, s);

	if (err) {
		s->state |= S_CLOSED;
		stream_finalise(io, s);
	}
	return err;
}

static int stream_next(struct keel_task *t, struct keel__stream *s, void *out)
{
	struct keel__io *io = keel__io_of(t->loop);

	if (!s->op || (s->state & S_CLOSED))
		return keel__task_ready(t, -EBADF);
	if (s->task != t)
		return keel__task_ready(t, -EPERM);
	if (s->tail)
		return keel__task_ready(t, stream_pop(io, s, out));
	s->out = out;
	if (s->state & S_ENDED)
		return keel__task_ready(t, s->end);
	/* Level-triggered cancellation: a cancelled task gets the cause. */
	int cause = keel__task_cancel_cause(t);

	if (cause) {
		stream_stop(io, s);
		return keel__task_ready(t, cause);
	}
	if (!(s->state & (S_ARMED | S_PARKED))) {
		/* Stopped idle: say so once; the next call receives. */
		if (s->state & S_IDLE) {
			s->state &= (uint16_t)~S_IDLE;
			return keel__task_ready(t, -EAGAIN);
		}
		kind_of(s)->restart(io, s);
		if (s->state & S_ENDED)
			return keel__task_ready(t, s->end);
	}
	s->state |= S_WAITING;
	return keel__task_suspend(t);
}

/* ---- recv streams --------------------------------------------------- */

static struct keel_recv_stream *recv_of(struct keel__stream *s)
{
	return keel_container_of(s, struct keel_recv_stream, base);
}

/* A recv stream's ring: the ring cannot go while a stream uses it. */
static struct keel_bufring *recv_ring(struct keel__io *io,
				      const struct keel__stream *s)
{
	return io->bufrings[s->ring];
}

static void recv_prep(struct keel__io *io, struct keel__stream *s,
		      struct io_uring_sqe *sqe)
{
	io_uring_prep_recv_multishot(sqe, s->fd, NULL, 0, 0);
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = s->ring;
	/* Bundles read their buffer ids from the ring in order, which an
	 * incremental ring does not keep: one or the other. */
	if ((s->flags & KEEL_RECV_BUNDLE) &&
	    (io->features & IORING_FEAT_RECVSEND_BUNDLE) &&
	    !keel__bufring_incremental(recv_ring(io, s)))
		sqe->ioprio |= IORING_RECVSEND_BUNDLE;
}

static void recv_queue(struct keel__io *io, struct keel__stream *s,
		       struct keel__op *op, int res, unsigned cqe_flags)
{
	bool more = cqe_flags & IORING_CQE_F_MORE;
	struct keel__chunk *first = NULL, *last = NULL;
	int n = keel__bufring_take(io, recv_ring(io, s), cqe_flags, res, &first,
				   &last);

	/* A woken stream's first CQE tells whether it got its buffer;
	 * recv_stopped() reads the bit for -ENOBUFS. */
	if (res != -ENOBUFS)
		s->state &= (uint16_t)~S_WOKEN;

	if (n > 0) {
		stream_enqueue(s, first, last, n);
		/* Backpressure: enough queued, stop receiving for now. */
		if (more && s->queued >= s->limit &&
		    !(op->flags & KEEL__OP_CANCEL_SENT)) {
			s->state |= S_PAUSING;
			keel__op_send_cancel(io, op);
		}
	} else if (n < 0) {
		stream_end(s, n);
		if (more && !(op->flags & KEEL__OP_CANCEL_SENT))
			keel__op_send_cancel(io, op);
	}
}

/*
 * Idle recv streams. An armed multishot recv holds, besides its request,
 * the kernel's per-request async data (about 600 bytes per socket on Linux
 * 6.18, measured with /proc/slabinfo), for as long as the connection is
 * idle; a poll holds the request only. So a periodic sweep (armed while
 * some multishot recv is) cancels the recv of every stream that received
 * nothing in a whole sweep period, the stream parks on a poll for
 * readability instead (S_POLLING), and its completion arms the recv again.
 * A busy stream pays one flag per CQE; one that wakes after a pause pays
 * the poll's completion, an op and a re-arm.
 *
 * Parked streams. A parked stream gives its op back to the ledger (120
 * bytes less per idle connection) and does itself what the op did for it
 * (S_OPLESS): its poll's user_data is its own address tagged
 * KEEL__UD_INTERNAL, so the completion comes straight to it
 * (keel__stream_parked_cqe()); it counts in its task's inflight (the frame
 * outlives the poll) and in the ledger's inuse (the loop waits for it);
 * and it is on its task's list of parked streams (io->parked, by task id,
 * through its link, which only a stream waiting for a buffer uses
 * otherwise), where a cancel or exit of the task (keel__io_cancel_task())
 * and the loop's teardown (keel__io_cancel_all()) find it, as they find
 * ops. Its completion takes an op again.
 *
 * Idle return. A stream opened with KEEL_RECV_IDLE_RETURN that the sweep
 * stopped with nothing queued parks nowhere: it stays unarmed (S_IDLE),
 * and its task's keel_recv_next() returns -EAGAIN once, so that the task
 * can close it and hibernate the socket (io/hibernate.c); the next call
 * re-arms it. The sweep's period is keel_loop_opts.idle_ms (io->idle_ns).
 */

/*
 * Room in io->parked for the list of `t`; false: no memory. The table is
 * mapped and grown with mremap: its pages move, nothing is copied, and no
 * old copy stays resident, so it costs 8 bytes per task id (the pages
 * parked streams touch), no more.
 */
static bool parked_room(struct keel__io *io, const struct keel_task *t)
{
	uint32_t cap = io->parked_cap ? io->parked_cap : 512;
	void *v;

	if (t->id < io->parked_cap)
		return true;
	while (cap <= t->id && cap < UINT32_MAX / 2)
		cap *= 2;
	if (cap <= t->id)
		return false;
	v = io->parked ? mremap(io->parked, parked_bytes(io->parked_cap),
				parked_bytes(cap), MREMAP_MAYMOVE)
		       : mmap(NULL, parked_bytes(cap), PROT_READ | PROT_WRITE,
			      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (v == MAP_FAILED)
		return false;
	io->parked = v; /* new pages are zero: empty lists */
	io->parked_cap = cap;
	return true;
}

/* Off its task's list: the stream no longer stands for an op. */
static void parked_remove(struct keel__io *io, struct keel__stream *s)
{
	keel__list_remove(&io->parked[s->task->id], &recv_of(s)->link);
	s->task->inflight--;
	io->ledger.inuse--;
	io->parked_polls--;
	s->state &= (uint16_t)~S_OPLESS;
}

/* Wait for readability on a poll, giving the op back. */
static void recv_park(struct keel__io *io, struct keel__stream *s)
{
	struct keel_task *t = s->task;
	int cause = keel__task_cancel_cause(t);
	struct io_uring_sqe *sqe;

	if (cause) {
		stream_end(s, cause);
		return;
	}
	if (!parked_room(io, t)) {
		stream_rearm(io, s); /* no memory to park: stay armed */
		return;
	}
	sqe = keel__io_sqe(io);
	if (!sqe) {
		stream_end(s, -EAGAIN);
		return;
	}
	io_uring_prep_poll_add(sqe, s->fd, POLLIN);
	keel__sqe_fixed_fd(sqe);
	io_uring_sqe_set_data64(sqe, parked_ud(s));
	/* The stream stands for the op before the op goes: t's inflight
	 * never drops to 0 on the way. */
	keel__list_push_back(&io->parked[t->id], &recv_of(s)->link);
	t->inflight++;
	io->ledger.inuse++;
	io->parked_polls++;
	keel__op_release_quiet(io, stream_op(io, s->op));
	s->op = OP_NONE;
	s->state |= S_OPLESS | S_POLLING | S_ARMED;
	s->end = park_trace_start(io);
	io->count.idle_polls++;
	KEEL__TRACE(&io->core, KEEL_EV_OP_SUBMIT, IORING_OP_POLL_ADD, t->id, 0,
		    0);
}

void keel__stream_parked_cqe(struct keel__io *io, uint64_t ud, int res)
{
	struct keel__stream *s =
	    (struct keel__stream *)(uintptr_t)(ud &
					       ~(uint64_t)KEEL__UD_ROLE_MASK);
	struct keel_task *t = s->task;
	struct keel__op *op;

	KEEL__TRACE(&io->core, KEEL_EV_OP_COMPLETE, IORING_OP_POLL_ADD, t->id,
		    (int64_t)res, park_wait_ns(io, s));
	/* Its address may hold another stream next: no cancel waiting for
	 * an SQE may reach that one's poll. */
	if (io->ledger.nlater)
		keel__io_cancel_forget(io, ud);
	s->state &= (uint16_t) ~(S_ARMED | S_POLLING | S_UNPOLL);
	if (s->state & S_CLOSED) {
		stream_finalise(io, s); /* the frame may go */
		return;
	}
	/* An op again: the stream stays on t's list until it has one. */
	op = keel__op_new(io, t, KEEL__OP_STREAM, kind_of(s)->opcode);
	if (!op) {
		stream_end(s, -ENOMEM); /* closing it finalises it */
	} else {
		parked_remove(io, s);
		stream_own_op(s, op);
		if (res < 0)
			stream_end(s, end_result(t, res));
		else if (!(s->state & S_ENDED))
			stream_rearm(io, s); /* the recv says what came */
	}
	stream_deliver(s);
}

/* Stop each stream on `l` (t's parked list); the last one to go may free
 * t's frame, and so the list's links. */
static void parked_stop(struct keel__io *io, struct keel__list *l)
{
	struct keel__link *n, *next;

	keel__list_for_each_safe (n, next, l)
		stream_stop(
		    io,
		    &keel__list_entry(n, struct keel_recv_stream, link)->base);
}

void keel__stream_cancel_parked(struct keel__io *io, struct keel_task *t)
{
	if (t->id < io->parked_cap)
		parked_stop(io, &io->parked[t->id]);
}

void keel__stream_cancel_all_parked(struct keel__io *io)
{
	for (uint32_t i = 0; i < io->parked_cap; i++)
		parked_stop(io, &io->parked[i]);
}

/* The sweep's look at one op in use: a recv stream armed and quiet since
 * the last sweep stops (to park, or to return idle). */
static void sweep_op(struct keel__io *io, struct keel__op *op, bool *hot,
		     bool *parking)
{
	struct keel__stream *s;

	if (op->kind != KEEL__OP_STREAM || op->u.stream.on_cqe != stream_cqe)
		return;
	s = op->u.stream.stream;
	if (s->kind != KIND_RECV ||
	    (s->state & (S_ARMED | S_CLOSED | S_ENDED | S_PAUSING |
			 S_IDLING)) != S_ARMED ||
	    (op->flags & KEEL__OP_CANCEL_SENT))
		return;
	if (s->state & S_ACTIVE) {
		s->state &= (uint16_t)~S_ACTIVE;
		*hot = true;
		return;
	}
	s->state |= S_IDLING;
	keel__op_send_cancel(io, op);
	if (!(op->flags & KEEL__OP_CANCEL_SENT)) {
		s->state &= (uint16_t)~S_IDLING; /* no memory: later */
		*hot = true;
	}
	*parking = true;
}

static void idle_sweep(struct keel_loop *loop, struct keel_timer *timer,
		       void *arg)
{
	struct keel__io *io = keel__io_of(loop);
	struct keel__ledger *l = &io->ledger;
	bool hot = false, parking = false;

	(void)arg;
	/* A pointer through each chunk: with a short idle_ms the walk runs
	 * often, and most slots are free. */
	for (uint32_t c = 0; c < l->nchunks; c++) {
		struct keel__op *op = l->chunks[c], *end = op + KEEL__OP_CHUNK;

		for (; op < end; op++)
			if (op->flags & KEEL__OP_INUSE)
				sweep_op(io, op, &hot, &parking);
	}
	/* The ops of streams parked since the last sweep are free: a peak of
	 * connections that went idle leaves no ledger behind. (One more
	 * sweep after these park does it for them.) */
	keel__ledger_trim(l);
	/* Likewise the frames of their tasks, which ended to hibernate. */
	keel__alloc_trim(&io->core.alloc);
	if (hot || parking)
		keel_timer_arm(loop, timer, io->core.now + io->idle_ns);
}

void keel__stream_io_init(struct keel__io *io)
{
	io->recv_streams = 0;
	keel_timer_init(&io->idle_sweep, idle_sweep, NULL);
}

static void recv_stopped(struct keel__io *io, struct keel__stream *s, int res,
			 unsigned cqe_flags)
{
	struct keel_recv_stream *r = recv_of(s);
	bool idling = s->state & S_IDLING;

	s->state &= (uint16_t)~S_IDLING;
	if (res == 0 && !(cqe_flags & IORING_CQE_F_BUFFER)) {
		stream_end(s, 0); /* end of file */
	} else if (res == -ENOBUFS) {
		/* The data waits in the socket; so do we, for a buffer to
		 * come back (or the ring's retry timer: never an immediate
		 * re-arm, which could spin). */
		bool woken = s->state & S_WOKEN;

		s->state &= (uint16_t)~S_WOKEN;
		s->state |= S_PARKED;
		keel__bufring_wait(recv_ring(io, s), r, woken);
	} else if ((s->state & S_PAUSING) && (res == -ECANCELED || res >= 0) &&
		   !keel__task_cancel_cause(s->task)) {
		/* Paused for backpressure: keel_recv_next() and
		 * keel_recv_try() re-arm once the queue drains. */
		if (s->queued <= s->limit / 2u) {
			s->state &= (uint16_t)~S_PAUSING;
			stream_rearm(io, s);
		}
	} else if (idling && (res == -ECANCELED || res >= 0) &&
		   !(s->state & S_ENDED) && !keel__task_cancel_cause(s->task)) {
		/* Stopped by the idle sweep: wait for data with a poll, or
		 * as if paused when the queue is full meanwhile; with
		 * nothing queued, tell a task that asked (it may hibernate
		 * the socket) instead. */
		if (s->queued >= s->limit)
			s->state |= S_PAUSING;
		else if ((s->flags & KEEL_RECV_IDLE_RETURN) && !s->tail)
			s->state |= S_IDLE;
		else
			recv_park(io, s);
	} else if (res < 0) {
		stream_end(s, end_result(s->task, res));
	} else if (!(s->state & S_ENDED)) {
		/* The kernel ended it early: re-arm, unless the queue is
		 * full (then as if paused). */
		if (s->queued >= s->limit)
			s->state |= S_PAUSING;
		else
			stream_rearm(io, s);
	}
}

static void recv_restart(struct keel__io *io, struct keel__stream *s)
{
	s->state &= (uint16_t)~S_PAUSING; /* the queue is empty */
	if (keel__bufring_has_free(recv_ring(io, s))) {
		stream_rearm(io, s);
	} else {
		s->state |= S_PARKED;
		keel__bufring_wait(recv_ring(io, s), recv_of(s), false);
	}
}

static int recv_take(struct keel__io *io, struct keel__stream *s,
		     struct keel__chunk *c, void *out)
{
	struct keel_buf *b = out;

	b->data = c->data;
	b->ring = io->bufrings[c->ring - 1];
	b->len = c->len;
	b->bid = c->bid;
	b->flags = 0;
	/* Paused by a full queue and half of it taken: receive again. */
	if ((s->state & S_PAUSING) && !(s->state & S_ARMED) &&
	    s->queued <= s->limit / 2u) {
		s->state &= (uint16_t)~S_PAUSING;
		if (!(s->state & (S_CLOSED | S_ENDED | S_PARKED)))
			stream_rearm(io, s);
	}
	return (int)b->len;
}

static void recv_unpark(struct keel__io *io, struct keel__stream *s)
{
	keel__bufring_unwait(recv_ring(io, s), recv_of(s));
}

/*
 * No recv stream left: no sweep keeps the loop alive. But when the streams
 * went because their tasks hibernated (keel_hibernate()) while another task
 * keeps the loop going anyway (an acceptor), one more sweep gives back what
 * those tasks left at their peak, ledger chunks and frame slabs; finding no
 * stream, it does not re-arm.
 */
static void last_recv_stream_gone(struct keel__io *io, struct keel_loop *loop)
{
	if (io->closing || !io->hib_live || keel__tasks_live(&io->core) <= 1)
		keel_timer_cancel(loop, &io->idle_sweep);
	else if (!keel_timer_armed(&io->idle_sweep))
		keel_timer_arm(loop, &io->idle_sweep,
			       io->core.now + io->idle_ns);
}

static void recv_release(struct keel__io *io, struct keel__stream *s)
{
	keel__bufring_stream_ref(recv_ring(io, s), -1);
	if (s->kind == KIND_RECV && !--io->recv_streams)
		last_recv_stream_gone(io, s->task->loop);
}

static const struct keel__stream_kind recv_kind = {
    .opcode = IORING_OP_RECV,
    .sockets = false,
    .prep = recv_prep,
    .queue = recv_queue,
    .stopped = recv_stopped,
    .restart = recv_restart,
    .take = recv_take,
    .unpark = recv_unpark,
    .release = recv_release,
};

bool keel__recv_stream_resume(struct keel__io *io, struct keel_recv_stream *s)
{
	stream_unparked(io, &s->base);
	if (!(s->base.state & S_ARMED))
		return false; /* closed or ended meanwhile */
	s->base.state |= S_WOKEN;
	return true;
}

int keel_recv_stream_open(struct keel_task *t, struct keel_recv_stream *s,
			  int fd, struct keel_bufring *ring, unsigned flags)
{
	struct keel__io *io = keel__io_of(t->loop);
	int err = stream_claim(io, t, &s->base);

	if (err)
		return err;
	if (!ring || fd < 0 ||
	    (flags & ~(KEEL_RECV_BUNDLE | KEEL_RECV_IDLE_RETURN)))
		return -EINVAL;
	uint16_t gid = keel__bufring_gid(ring);

	if (gid >= io->nbufrings || io->bufrings[gid] != ring)
		return -EINVAL; /* another loop's ring */
	err = stream_open(t, &s->base, KIND_RECV, fd, flags);

	if (err)
		return err;
	s->base.ring = gid;
	s->notify = NULL;
	s->link.next = s->link.prev = NULL;
	s->base.limit = KEEL_RECV_QUEUE_DEFAULT;
	keel__bufring_stream_ref(ring, 1);
	io->recv_streams++;
	return stream_start(io, &s->base);
}

int keel_recv_next(struct keel_task *t, struct keel_recv_stream *s,
		   struct keel_buf *out)
{
	/* A chunk still held in `out` would be lost: give it back. */
	keel_buf_release(out);
	if (s->base.kind == KIND_RECVMSG)
		return keel__task_ready(t, -EINVAL); /* keel_recvmsg_next */
	return stream_next(t, &s->base, out);
}

void keel_recv_stream_notify(struct keel_recv_stream *s, keel_recv_notify_fn fn)
{
	s->notify = fn;
}

int keel_recv_stream_set_limit(struct keel_recv_stream *s, unsigned limit)
{
	if (limit < 1 || limit > 4096)
		return -EINVAL;
	s->base.limit = (uint16_t)limit;
	return 0;
}

int keel_recv_try(struct keel_recv_stream *s, struct keel_buf *out)
{
	keel_buf_release(out);
	if (s->base.kind == KIND_RECVMSG)
		return -EINVAL; /* its items are datagrams */
	if (!s->base.op || !s->base.tail)
		return -EAGAIN;
	return stream_pop(keel__io_of(s->base.task->loop), &s->base, out);
}

void keel_recv_stream_close(struct keel_recv_stream *s)
{
	if (!s->base.op)
		return;
	stream_close(keel__io_of(s->base.task->loop), &s->base);
}

/* ---- datagram streams ----------------------------------------------- */

/*
 * A recv stream whose request is a multishot recvmsg: each CQE fills one
 * buffer with a struct io_uring_recvmsg_out, the source address and the
 * payload; taking it parses them. Everything else (queueing, -ENOBUFS
 * parking, backpressure, close) is the recv stream's.
 */
static struct keel_recvmsg_stream *recvmsg_of(struct keel__stream *s)
{
	return keel_container_of(recv_of(s), struct keel_recvmsg_stream, rs);
}

static void recvmsg_prep(struct keel__io *io, struct keel__stream *s,
			 struct io_uring_sqe *sqe)
{
	struct keel_recvmsg_stream *m = recvmsg_of(s);

	(void)io;
	/* MSG_TRUNC: the header's payloadlen is the datagram's full length
	 * even when the buffer could not hold it. */
	io_uring_prep_recvmsg_multishot(sqe, s->fd, &m->msg, MSG_TRUNC);
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = s->ring;
}

static void recvmsg_stopped(struct keel__io *io, struct keel__stream *s,
			    int res, unsigned cqe_flags)
{
	/* No end of file on a datagram socket: a 0 without a buffer is the
	 * receive side shut down. */
	if (res == 0 && !(cqe_flags & IORING_CQE_F_BUFFER)) {
		stream_end(s, -ESHUTDOWN);
		return;
	}
	recv_stopped(io, s, res, cqe_flags);
}

static int recvmsg_take(struct keel__io *io, struct keel__stream *s,
			struct keel__chunk *c, void *out)
{
	struct keel_datagram *d = out;
	struct msghdr *msg = &recvmsg_of(s)->msg;
	int len = recv_take(io, s, c, &d->buf);
	struct io_uring_recvmsg_out *o =
	    io_uring_recvmsg_validate(d->buf.data, len, msg);

	if (!o) {
		/* Shorter than the header and the name: never with a sane
		 * kernel, as the stream refuses rings that small. */
		keel_buf_release(&d->buf);
		d->data = d->addr = NULL;
		d->len = d->full_len = 0;
		d->addrlen = 0;
		d->flags = 0;
		return -EFAULT;
	}
	d->data = io_uring_recvmsg_payload(o, msg);
	d->len = io_uring_recvmsg_payload_length(o, len, msg);
	d->full_len = o->payloadlen;
	d->addrlen =
	    o->namelen < msg->msg_namelen ? o->namelen : msg->msg_namelen;
	d->addr = d->addrlen ? io_uring_recvmsg_name(o) : NULL;
	d->flags = (int)o->flags;
	if (d->full_len > d->len)
		d->flags |= MSG_TRUNC;
	return (int)d->len;
}

static const struct keel__stream_kind recvmsg_kind = {
    .opcode = IORING_OP_RECVMSG,
    .sockets = false,
    .prep = recvmsg_prep,
    .queue = recv_queue,
    .stopped = recvmsg_stopped,
    .restart = recv_restart,
    .take = recvmsg_take,
    .unpark = recv_unpark,
    .release = recv_release,
};

int keel_recvmsg_stream_open(struct keel_task *t, struct keel_recvmsg_stream *s,
			     int fd, struct keel_bufring *ring, unsigned flags)
{
	struct keel__io *io = keel__io_of(t->loop);
	struct keel_bufring_stats st;
	int err = stream_claim(io, t, &s->rs.base);

	if (err)
		return err;
	if (!ring || fd < 0 || flags)
		return -EINVAL;
	uint16_t gid = keel__bufring_gid(ring);

	if (gid >= io->nbufrings || io->bufrings[gid] != ring)
		return -EINVAL; /* another loop's ring */
	/* One datagram per buffer, header first: an incremental ring would
	 * pack several into one. */
	keel_bufring_stats(ring, &st);
	if (keel__bufring_incremental(ring) || st.size < 256)
		return -EINVAL;
	err = stream_open(t, &s->rs.base, KIND_RECVMSG, fd, 0);

	if (err)
		return err;
	memset(&s->msg, 0, sizeof(s->msg));
	s->msg.msg_namelen = sizeof(struct sockaddr_storage);
	s->rs.base.ring = gid;
	s->rs.notify = NULL;
	s->rs.link.next = s->rs.link.prev = NULL;
	s->rs.base.limit = KEEL_RECV_QUEUE_DEFAULT;
	keel__bufring_stream_ref(ring, 1);
	return stream_start(io, &s->rs.base);
}

int keel_recvmsg_next(struct keel_task *t, struct keel_recvmsg_stream *s,
		      struct keel_datagram *out)
{
	keel_buf_release(&out->buf);
	return stream_next(t, &s->rs.base, out);
}

void keel_recvmsg_stream_close(struct keel_recvmsg_stream *s)
{
	keel_recv_stream_close(&s->rs);
}

/* ---- accept streams ------------------------------------------------- */

static struct keel_accept_stream *accept_of(struct keel__stream *s)
{
	return keel_container_of(s, struct keel_accept_stream, base);
}

static void accept_prep(struct keel__io *io, struct keel__stream *s,
			struct io_uring_sqe *sqe)
{
	(void)io;
	if (s->flags & KEEL_ACCEPT_DIRECT)
		/* No SOCK_CLOEXEC: a direct socket has no fd to inherit
		 * (the kernel refuses the flag). */
		io_uring_prep_multishot_accept_direct(sqe, s->fd, NULL, NULL,
						      0);
	else
		io_uring_prep_multishot_accept(sqe, s->fd, NULL, NULL,
					       SOCK_CLOEXEC);
}

static void accept_queue(struct keel__io *io, struct keel__stream *s,
			 struct keel__op *op, int res, unsigned cqe_flags)
{
	(void)op;
	(void)cqe_flags;
	if (res < 0)
		return;
	struct keel__chunk *c =
	    (s->state & S_CLOSED) ? NULL : keel__chunk_get(io);

	if (s->flags & KEEL_ACCEPT_DIRECT)
		res = KEEL_FIXED_FD(res);
	if (!c) {
		close_socket(io, res); /* closed, or no memory */
	} else {
		c->next = NULL;
		c->data = NULL;
		c->len = (uint32_t)res;
		stream_enqueue(s, c, c, 1);
	}
	accept_of(s)->backoff_ns = 0;
}

static bool out_of_resources(int res)
{
	return res == -EMFILE || res == -ENFILE || res == -ENOMEM ||
	       res == -ENOBUFS;
}

/*
 * Errors after which the listener is fine, so the stream re-arms at once:
 * the connection went away before it was accepted, or (accept(2): Linux
 * passes already-pending network errors to accept) a network error of
 * that connection.
 */
static bool accept_transient(int res)
{
	switch (res) {
	case -EINTR:
	case -EAGAIN:
	case -ECONNABORTED:
	case -ENETDOWN:
	case -EPROTO:
	case -ENOPROTOOPT:
	case -EHOSTDOWN:
	case -ENONET:
	case -EHOSTUNREACH:
	case -EOPNOTSUPP:
	case -ENETUNREACH:
		return true;
	}
	return false;
}

static void accept_stopped(struct keel__io *io, struct keel__stream *s, int res,
			   unsigned cqe_flags)
{
	struct keel_accept_stream *a = accept_of(s);

	(void)cqe_flags;
	if (out_of_resources(res)) {
		/* Nothing to accept into: pause, never spin. */
		a->backoff_ns =
		    a->backoff_ns ? a->backoff_ns * 2 : ACCEPT_BACKOFF_MIN;
		if (a->backoff_ns > ACCEPT_BACKOFF_MAX)
			a->backoff_ns = ACCEPT_BACKOFF_MAX;
		a->backoffs++;
		io->count.accept_backoffs++;
		s->state |= S_PARKED;
		keel_timer_arm(s->task->loop, &a->backoff,
			       io->core.now + a->backoff_ns);
	} else if (res < 0 && !accept_transient(res)) {
		stream_end(s, end_result(s->task, res));
	} else if (!(s->state & S_ENDED)) {
		stream_rearm(io, s);
	}
}

static int accept_take(struct keel__io *io, struct keel__stream *s,
		       struct keel__chunk *c, void *out)
{
	(void)io;
	(void)s;
	(void)out;
	return (int)c->len; /* the socket */
}

static void accept_unpark(struct keel__io *io, struct keel__stream *s)
{
	(void)io;
	keel_timer_cancel(s->task->loop, &accept_of(s)->backoff);
}

static const struct keel__stream_kind accept_kind = {
    .opcode = IORING_OP_ACCEPT,
    .sockets = true,
    .prep = accept_prep,
    .queue = accept_queue,
    .stopped = accept_stopped,
    .restart = stream_rearm,
    .take = accept_take,
    .unpark = accept_unpark,
    .release = NULL,
};

static void accept_backoff_fired(struct keel_loop *loop,
				 struct keel_timer *timer, void *arg)
{
	struct keel_accept_stream *a = arg;

	(void)timer;
	stream_unparked(keel__io_of(loop), &a->base);
}

int keel_accept_stream_open(struct keel_task *t, struct keel_accept_stream *s,
			    int fd, unsigned flags)
{
	struct keel__io *io = keel__io_of(t->loop);
	int err = stream_claim(io, t, &s->base);

	if (err)
		return err;
	if (fd < 0 || (flags & ~KEEL_ACCEPT_DIRECT))
		return -EINVAL;
	if (flags & KEEL_ACCEPT_DIRECT) {
		err = keel__io_files(io);
		if (err)
			return err;
	}
	err = stream_open(t, &s->base, KIND_ACCEPT, fd, flags);

	if (err)
		return err;
	keel_timer_init(&s->backoff, accept_backoff_fired, s);
	s->backoff_ns = 0;
	s->backoffs = 0;
	return stream_start(io, &s->base);
}

int keel_accept_next(struct keel_task *t, struct keel_accept_stream *s)
{
	return stream_next(t, &s->base, NULL);
}

void keel_accept_stream_close(struct keel_accept_stream *s)
{
	if (!s->base.op)
		return;
	stream_close(keel__io_of(s->base.task->loop), &s->base);
}
