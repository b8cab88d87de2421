/* SPDX-License-Identifier: MIT */
/*
 * stream.c: multishot recv and accept streams.
 *
 * A stream is one ledger op (kind STREAM) that lives as long as the stream
 * is open, whether a multishot request is armed in the kernel or not. Every
 * CQE goes to the stream's handler here, never straight to the task: data
 * and sockets are queued in the stream (chunk nodes from a per-loop pool)
 * and handed over when the task asks, so a task can be busy sending while
 * its next request is already being received, with no syscall.
 *
 * The op is the task's: it counts in the task's inflight ops, so the frame
 * that holds the stream outlives the kernel's last CQE. When the task
 * exits, aborts or the loop is destroyed, the stream is closed: the request
 * is cancelled, queued buffers go back to their ring, queued sockets are
 * closed. When the task's token is cancelled, the stream ends with the
 * cause (data that arrived before is still delivered first).
 */
#include "io.h"

#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

#include <keel/io.h>

/* Stream state bits (keel_recv_stream.state, keel_accept_stream.state). */
#define S_ARMED	  0x01 /* a multishot request is in the kernel */
#define S_WAITING 0x02 /* the task waits in keel_*_next() */
#define S_CLOSED  0x04 /* closed: no more re-arms, finalised when unarmed */
#define S_ENDED	  0x08 /* `end` holds the final result */
#define S_STARVED 0x10 /* recv: waiting for a buffer (-ENOBUFS) */
#define S_BACKOFF 0x20 /* accept: paused by EMFILE & co */
#define S_PAUSING 0x40 /* recv: cancelled for backpressure (queue full) */

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

void keel__chunk_pool_fini(struct keel__io *io)
{
	for (uint32_t i = 0; i < io->chunks.nblocks; i++)
		free(io->chunks.blocks[i]);
	free(io->chunks.blocks);
	io->chunks.blocks = NULL;
	io->chunks.nblocks = 0;
	io->chunks.free = NULL;
}

/* ---- common --------------------------------------------------------- */

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

/* ---- recv streams --------------------------------------------------- */

static void recv_cqe(struct keel__io *io, struct keel__op *op, int res,
		     unsigned cqe_flags);
static void recv_cancel(struct keel__io *io, struct keel__op *op);

static int recv_arm(struct keel__io *io, struct keel_recv_stream *s)
{
	struct keel__op *op = stream_op(io, s->op);
	struct io_uring_sqe *sqe = keel__io_sqe(io);

	if (!sqe)
		return -EAGAIN;
	io_uring_prep_recv_multishot(sqe, s->fd, NULL, 0, 0);
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = keel__bufring_gid(s->ring);
	/* Bundles read their buffer ids from the ring in order, which an
	 * incremental ring does not keep: one or the other. */
	keel__sqe_fixed_fd(sqe);
	if ((s->flags & KEEL_RECV_BUNDLE) &&
	    (io->features & IORING_FEAT_RECVSEND_BUNDLE) &&
	    !keel__bufring_incremental(s->ring))
		sqe->ioprio |= IORING_RECVSEND_BUNDLE;
	io_uring_sqe_set_data64(sqe, keel__op_ud(op, KEEL__UD_MAIN));
	op->pending = 1;
	op->flags &= (uint8_t)~KEEL__OP_CANCEL_SENT;
	op->start_ns = io->core.now;
	op->trace_ns = io->core.trace ? keel__trace_clock() : 0;
	s->state |= S_ARMED;
	KEEL__TRACE(&io->core, KEEL_EV_OP_SUBMIT, op->opcode, s->task->id,
		    op->index, 0);
	return 0;
}

/* Close a socket nobody took: a direct one through the ring (the CQE is
 * only counted). */
static void close_socket(struct keel__io *io, int fd)
{
	if (!keel_fd_is_fixed(fd)) {
		close(fd);
		return;
	}
	struct io_uring_sqe *sqe = keel__io_sqe(io);

	if (!sqe)
		return; /* the slot stays taken until the loop goes */
	io_uring_prep_close_direct(sqe, (unsigned)fd & ~KEEL_FIXED_FD_BIT);
	io_uring_sqe_set_data64(sqe, KEEL__UD_INTERNAL);
}

static void drop_queue(struct keel__io *io, struct keel__chunk **head,
		       struct keel__chunk **tail, bool sockets)
{
	struct keel__chunk *c = *head;

	while (c) {
		struct keel__chunk *next = c->next;

		if (sockets) {
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
	*head = *tail = NULL;
}

/* Closed and unarmed: give the op back. The frame may go with it. */
static void recv_finalise(struct keel__io *io, struct keel_recv_stream *s)
{
	struct keel__op *op = stream_op(io, s->op);

	drop_queue(io, &s->head, &s->tail, false);
	s->queued = 0;
	if (s->state & S_STARVED)
		keel__bufring_unwait(s->ring, s);
	keel__bufring_stream_ref(s->ring, -1);
	s->state = S_CLOSED | S_ENDED;
	s->op = 0;
	keel__op_release_quiet(io, op);
}

static void recv_rearm(struct keel__io *io, struct keel_recv_stream *s);

/* Move the first queued chunk into `out`; returns its length. */
static int recv_pop(struct keel__io *io, struct keel_recv_stream *s,
		    struct keel_buf *out)
{
	struct keel__chunk *c = s->head;

	s->head = c->next;
	if (!s->head)
		s->tail = NULL;
	out->data = c->data;
	out->ring = io->bufrings[c->ring - 1];
	out->len = c->len;
	out->bid = c->bid;
	out->flags = 0;
	keel__chunk_put(io, c);
	s->queued--;
	/* Paused by a full queue and half of it taken: receive again. */
	if ((s->state & S_PAUSING) && !(s->state & S_ARMED) &&
	    s->queued <= s->limit / 2) {
		s->state &= (uint16_t)~S_PAUSING;
		if (!(s->state & (S_CLOSED | S_ENDED | S_STARVED)))
			recv_rearm(io, s);
	}
	return (int)out->len;
}

/* Hand the waiting task its chunk or the end. */
static void recv_deliver(struct keel_recv_stream *s)
{
	struct keel_task *t = s->task;

	if (!(s->state & S_WAITING))
		return;
	if (s->head) {
		int len = recv_pop(keel__io_of(t->loop), s, s->out);

		s->state &= (uint16_t)~S_WAITING;
		keel__task_complete(t, len);
	} else if (s->state & S_ENDED) {
		s->state &= (uint16_t)~S_WAITING;
		keel__task_complete(t, s->end);
	}
}

static void recv_end(struct keel_recv_stream *s, int res)
{
	if (s->state & S_ENDED)
		return;
	s->state |= S_ENDED;
	s->end = res;
}

/* Re-arm, or end the stream if the kernel will not take the request. */
static void recv_rearm(struct keel__io *io, struct keel_recv_stream *s)
{
	int cause = keel__task_cancel_cause(s->task);

	if (cause) {
		recv_end(s, cause);
		return;
	}
	io->count.multishot_rearms++;
	if (recv_arm(io, s))
		recv_end(s, -EAGAIN);
}

void keel__recv_stream_resume(struct keel__io *io, struct keel_recv_stream *s)
{
	s->state &= (uint16_t)~S_STARVED;
	if (s->state & (S_CLOSED | S_ENDED | S_ARMED))
		return;
	recv_rearm(io, s);
	recv_deliver(s);
}

static void recv_cqe(struct keel__io *io, struct keel__op *op, int res,
		     unsigned cqe_flags)
{
	struct keel_recv_stream *s = op->u.stream.stream;
	bool more = cqe_flags & IORING_CQE_F_MORE;
	struct keel__chunk *first = NULL, *last = NULL;
	int n = keel__bufring_take(io, s->ring, cqe_flags, res, &first, &last);

	KEEL__TRACE(&io->core, KEEL_EV_OP_COMPLETE, op->opcode, s->task->id,
		    (int64_t)res, stream_wait_ns(io, op));
	if (!more) {
		s->state &= (uint16_t)~S_ARMED;
		op->pending = 0;
	}
	if (n > 0) {
		if (s->tail)
			s->tail->next = first;
		else
			s->head = first;
		s->tail = last;
		s->queued = (uint16_t)(s->queued + n);
		/* Backpressure: enough queued, stop receiving for now. */
		if (more && s->queued >= s->limit &&
		    !(op->flags & KEEL__OP_CANCEL_SENT)) {
			s->state |= S_PAUSING;
			keel__op_send_cancel(io, op);
		}
	} else if (n < 0) {
		recv_end(s, n);
		if (more && !(op->flags & KEEL__OP_CANCEL_SENT)) {
			keel__op_send_cancel(io, op);
		}
	}
	if (s->state & S_CLOSED) {
		drop_queue(io, &s->head, &s->tail, false);
		s->queued = 0;
		if (!(s->state & S_ARMED))
			recv_finalise(io, s);
		return;
	}
	if (!more) {
		if (res == 0 && !(cqe_flags & IORING_CQE_F_BUFFER)) {
			recv_end(s, 0); /* end of file */
		} else if (res == -ENOBUFS) {
			/* The data waits in the socket; so do we, for a
			 * buffer to come back (or the ring's retry timer:
			 * never an immediate re-arm, which could spin). */
			s->state |= S_STARVED;
			keel__bufring_wait(s->ring, s);
		} else if ((s->state & S_PAUSING) &&
			   (res == -ECANCELED || res >= 0) &&
			   !keel__task_cancel_cause(s->task)) {
			/* Paused for backpressure: keel_recv_next() and
			 * keel_recv_try() re-arm once the queue drains. */
			if (s->queued <= s->limit / 2) {
				s->state &= (uint16_t)~S_PAUSING;
				recv_rearm(io, s);
			}
		} else if (res < 0) {
			recv_end(s, end_result(s->task, res));
		} else if (!(s->state & S_ENDED)) {
			/* The kernel ended it early: re-arm, unless the
			 * queue is full (then as if paused). */
			if (s->queued >= s->limit)
				s->state |= S_PAUSING;
			else
				recv_rearm(io, s);
		}
	}
	recv_deliver(s);
}

static void recv_close(struct keel__io *io, struct keel_recv_stream *s)
{
	if (!s->op || (s->state & S_CLOSED))
		return;
	s->state |= S_CLOSED;
	s->state &= (uint16_t)~S_WAITING;
	drop_queue(io, &s->head, &s->tail, false);
	s->queued = 0;
	if (s->state & S_ARMED)
		keel__op_send_cancel(io, stream_op(io, s->op));
	else
		recv_finalise(io, s);
}

/* The task exits or its token was cancelled, or the loop goes away. */
static void recv_cancel(struct keel__io *io, struct keel__op *op)
{
	struct keel_recv_stream *s = op->u.stream.stream;

	if ((s->task->flags & KEEL__T_EXITED) || io->closing) {
		recv_close(io, s);
		return;
	}
	int cause = keel__task_cancel_cause(s->task);

	if (s->state & S_ARMED) {
		keel__op_send_cancel(io, op); /* ends with -ECANCELED */
		return;
	}
	if (s->state & S_STARVED) {
		keel__bufring_unwait(s->ring, s);
		s->state &= (uint16_t)~S_STARVED;
	}
	recv_end(s, cause ? cause : -ECANCELED);
	recv_deliver(s);
}

int keel_recv_stream_open(struct keel_task *t, struct keel_recv_stream *s,
			  int fd, struct keel_bufring *ring, unsigned flags)
{
	struct keel__io *io = keel__io_of(t->loop);
	int cause = keel__task_cancel_cause(t);

	s->op = 0;
	if (!ring || fd < 0 || (flags & ~KEEL_RECV_BUNDLE))
		return -EINVAL;
	uint16_t gid = keel__bufring_gid(ring);

	if (gid >= io->nbufrings || io->bufrings[gid] != ring)
		return -EINVAL; /* another loop's ring */
	if (!(io->ops_supported[IORING_OP_RECV / 64] &
	      (1ull << (IORING_OP_RECV % 64))))
		return -EOPNOTSUPP;
	if (cause)
		return cause;
	struct keel__op *op =
	    keel__op_new(io, t, KEEL__OP_STREAM, IORING_OP_RECV);

	if (!op)
		return -ENOMEM;
	op->fd = fd;
	op->u.stream.stream = s;
	op->u.stream.on_cqe = recv_cqe;
	op->u.stream.on_cancel = recv_cancel;
	s->task = t;
	s->ring = ring;
	s->head = s->tail = NULL;
	s->out = NULL;
	s->next_starved = NULL;
	s->op = op->index + 1;
	s->fd = fd;
	s->end = 0;
	s->state = 0;
	s->flags = (uint16_t)flags;
	s->queued = 0;
	s->limit = KEEL_RECV_QUEUE_DEFAULT;
	keel__bufring_stream_ref(ring, 1);
	int err = recv_arm(io, s);

	if (err) {
		s->state |= S_CLOSED;
		recv_finalise(io, s);
		return err;
	}
	return 0;
}

int keel_recv_next(struct keel_task *t, struct keel_recv_stream *s,
		   struct keel_buf *out)
{
	struct keel__io *io = keel__io_of(t->loop);

	/* A chunk still held in `out` would be lost: give it back. */
	keel_buf_release(out);
	if (!s->op || (s->state & S_CLOSED))
		return keel__task_ready(t, -EBADF);
	if (s->task != t)
		return keel__task_ready(t, -EPERM);
	if (s->head)
		return keel__task_ready(t, recv_pop(io, s, out));
	s->out = out;
	if (s->state & S_ENDED)
		return keel__task_ready(t, s->end);
	/* Level-triggered cancellation: a cancelled task gets the cause. */
	int cause = keel__task_cancel_cause(t);

	if (cause) {
		recv_cancel(io, stream_op(io, s->op));
		return keel__task_ready(t, cause);
	}
	if (!(s->state & (S_ARMED | S_STARVED))) {
		s->state &= (uint16_t)~S_PAUSING; /* the queue is empty */
		if (keel__bufring_has_free(s->ring))
			recv_rearm(io, s);
		else {
			s->state |= S_STARVED;
			keel__bufring_wait(s->ring, s);
		}
		if (s->state & S_ENDED)
			return keel__task_ready(t, s->end);
	}
	s->state |= S_WAITING;
	return keel__task_suspend(t);
}

int keel_recv_stream_set_limit(struct keel_recv_stream *s, unsigned limit)
{
	if (limit < 1 || limit > 4096)
		return -EINVAL;
	s->limit = (uint16_t)limit;
	return 0;
}

int keel_recv_try(struct keel_recv_stream *s, struct keel_buf *out)
{
	keel_buf_release(out);
	if (!s->op || !s->head)
		return -EAGAIN;
	return recv_pop(keel__io_of(s->task->loop), s, out);
}

void keel_recv_stream_close(struct keel_recv_stream *s)
{
	if (!s->op)
		return;
	recv_close(keel__io_of(s->task->loop), s);
}

/* ---- accept streams ------------------------------------------------- */

static int accept_arm(struct keel__io *io, struct keel_accept_stream *s)
{
	struct keel__op *op = stream_op(io, s->op);
	struct io_uring_sqe *sqe = keel__io_sqe(io);

	if (!sqe)
		return -EAGAIN;
	if (s->flags & KEEL_ACCEPT_DIRECT)
		/* No SOCK_CLOEXEC: a direct socket has no fd to inherit
		 * (the kernel refuses the flag). */
		io_uring_prep_multishot_accept_direct(sqe, s->fd, NULL, NULL,
						      0);
	else
		io_uring_prep_multishot_accept(sqe, s->fd, NULL, NULL,
					       SOCK_CLOEXEC);
	keel__sqe_fixed_fd(sqe);
	io_uring_sqe_set_data64(sqe, keel__op_ud(op, KEEL__UD_MAIN));
	op->pending = 1;
	op->flags &= (uint8_t)~KEEL__OP_CANCEL_SENT;
	op->start_ns = io->core.now;
	op->trace_ns = io->core.trace ? keel__trace_clock() : 0;
	s->state |= S_ARMED;
	KEEL__TRACE(&io->core, KEEL_EV_OP_SUBMIT, op->opcode, s->task->id,
		    op->index, 0);
	return 0;
}

static void accept_finalise(struct keel__io *io, struct keel_accept_stream *s)
{
	struct keel__op *op = stream_op(io, s->op);

	drop_queue(io, &s->head, &s->tail, true);
	if (s->state & S_BACKOFF)
		keel_timer_cancel(s->task->loop, &s->backoff);
	s->state = S_CLOSED | S_ENDED;
	s->op = 0;
	keel__op_release_quiet(io, op);
}

static int accept_pop(struct keel__io *io, struct keel_accept_stream *s)
{
	struct keel__chunk *c = s->head;
	int fd = (int)c->len;

	s->head = c->next;
	if (!s->head)
		s->tail = NULL;
	keel__chunk_put(io, c);
	return fd;
}

static void accept_deliver(struct keel_accept_stream *s)
{
	struct keel_task *t = s->task;
	struct keel__chunk *c = s->head;

	if (!(s->state & S_WAITING))
		return;
	if (c) {
		int fd = accept_pop(keel__io_of(t->loop), s);

		s->state &= (uint16_t)~S_WAITING;
		keel__task_complete(t, fd);
	} else if (s->state & S_ENDED) {
		s->state &= (uint16_t)~S_WAITING;
		keel__task_complete(t, s->end);
	}
}

static void accept_end(struct keel_accept_stream *s, int res)
{
	if (!(s->state & S_ENDED)) {
		s->state |= S_ENDED;
		s->end = res;
	}
}

static void accept_rearm(struct keel__io *io, struct keel_accept_stream *s)
{
	int cause = keel__task_cancel_cause(s->task);

	if (cause) {
		accept_end(s, cause);
		return;
	}
	io->count.multishot_rearms++;
	if (accept_arm(io, s))
		accept_end(s, -EAGAIN);
}

static void accept_backoff_fired(struct keel_loop *loop,
				 struct keel_timer *timer, void *arg)
{
	struct keel_accept_stream *s = arg;
	struct keel__io *io = keel__io_of(loop);

	(void)timer;
	s->state &= (uint16_t)~S_BACKOFF;
	if (s->state & (S_CLOSED | S_ENDED | S_ARMED))
		return;
	accept_rearm(io, s);
	accept_deliver(s);
}

static bool out_of_resources(int res)
{
	return res == -EMFILE || res == -ENFILE || res == -ENOMEM ||
	       res == -ENOBUFS;
}

static void accept_cqe(struct keel__io *io, struct keel__op *op, int res,
		       unsigned cqe_flags)
{
	struct keel_accept_stream *s = op->u.stream.stream;
	bool more = cqe_flags & IORING_CQE_F_MORE;

	KEEL__TRACE(&io->core, KEEL_EV_OP_COMPLETE, op->opcode, s->task->id,
		    (int64_t)res, stream_wait_ns(io, op));
	if (!more) {
		s->state &= (uint16_t)~S_ARMED;
		op->pending = 0;
	}
	if (res >= 0) {
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
			if (s->tail)
				s->tail->next = c;
			else
				s->head = c;
			s->tail = c;
		}
		s->backoff_ns = 0;
	}
	if (s->state & S_CLOSED) {
		if (!(s->state & S_ARMED))
			accept_finalise(io, s);
		return;
	}
	if (!more) {
		if (out_of_resources(res)) {
			/* Nothing to accept into: pause, never spin. */
			s->backoff_ns = s->backoff_ns ? s->backoff_ns * 2
						      : ACCEPT_BACKOFF_MIN;
			if (s->backoff_ns > ACCEPT_BACKOFF_MAX)
				s->backoff_ns = ACCEPT_BACKOFF_MAX;
			s->backoffs++;
			io->count.accept_backoffs++;
			s->state |= S_BACKOFF;
			keel_timer_arm(s->task->loop, &s->backoff,
				       io->core.now + s->backoff_ns);
		} else if (res < 0 && res != -EINTR && res != -ECONNABORTED &&
			   res != -EAGAIN) {
			accept_end(s, end_result(s->task, res));
		} else if (!(s->state & S_ENDED)) {
			accept_rearm(io, s);
		}
	}
	accept_deliver(s);
}

static void accept_close(struct keel__io *io, struct keel_accept_stream *s)
{
	if (!s->op || (s->state & S_CLOSED))
		return;
	s->state |= S_CLOSED;
	s->state &= (uint16_t)~S_WAITING;
	drop_queue(io, &s->head, &s->tail, true);
	if (s->state & S_ARMED)
		keel__op_send_cancel(io, stream_op(io, s->op));
	else
		accept_finalise(io, s);
}

static void accept_cancel(struct keel__io *io, struct keel__op *op)
{
	struct keel_accept_stream *s = op->u.stream.stream;

	if ((s->task->flags & KEEL__T_EXITED) || io->closing) {
		accept_close(io, s);
		return;
	}
	int cause = keel__task_cancel_cause(s->task);

	if (s->state & S_ARMED) {
		keel__op_send_cancel(io, op);
		return;
	}
	if (s->state & S_BACKOFF) {
		keel_timer_cancel(s->task->loop, &s->backoff);
		s->state &= (uint16_t)~S_BACKOFF;
	}
	accept_end(s, cause ? cause : -ECANCELED);
	accept_deliver(s);
}

int keel_accept_stream_open(struct keel_task *t, struct keel_accept_stream *s,
			    int fd, unsigned flags)
{
	struct keel__io *io = keel__io_of(t->loop);
	int cause = keel__task_cancel_cause(t);

	s->op = 0;
	if (fd < 0 || (flags & ~KEEL_ACCEPT_DIRECT))
		return -EINVAL;
	if (flags & KEEL_ACCEPT_DIRECT) {
		int err = keel__io_files(io);

		if (err)
			return err;
	}
	if (!(io->ops_supported[IORING_OP_ACCEPT / 64] &
	      (1ull << (IORING_OP_ACCEPT % 64))))
		return -EOPNOTSUPP;
	if (cause)
		return cause;
	struct keel__op *op =
	    keel__op_new(io, t, KEEL__OP_STREAM, IORING_OP_ACCEPT);

	if (!op)
		return -ENOMEM;
	op->fd = fd;
	op->u.stream.stream = s;
	op->u.stream.on_cqe = accept_cqe;
	op->u.stream.on_cancel = accept_cancel;
	s->task = t;
	s->head = s->tail = NULL;
	keel_timer_init(&s->backoff, accept_backoff_fired, s);
	s->backoff_ns = 0;
	s->backoffs = 0;
	s->op = op->index + 1;
	s->fd = fd;
	s->end = 0;
	s->state = 0;
	s->flags = (uint16_t)flags;
	int err = accept_arm(io, s);

	if (err) {
		s->state |= S_CLOSED;
		accept_finalise(io, s);
		return err;
	}
	return 0;
}

int keel_accept_next(struct keel_task *t, struct keel_accept_stream *s)
{
	struct keel__io *io = keel__io_of(t->loop);

	if (!s->op || (s->state & S_CLOSED))
		return keel__task_ready(t, -EBADF);
	if (s->task != t)
		return keel__task_ready(t, -EPERM);
	if (s->head)
		return keel__task_ready(t, accept_pop(io, s));
	if (s->state & S_ENDED)
		return keel__task_ready(t, s->end);
	int cause = keel__task_cancel_cause(t);

	if (cause) {
		accept_cancel(io, stream_op(io, s->op));
		return keel__task_ready(t, cause);
	}
	if (!(s->state & (S_ARMED | S_BACKOFF))) {
		accept_rearm(io, s);
		if (s->state & S_ENDED)
			return keel__task_ready(t, s->end);
	}
	s->state |= S_WAITING;
	return keel__task_suspend(t);
}

void keel_accept_stream_close(struct keel_accept_stream *s)
{
	if (!s->op)
		return;
	accept_close(keel__io_of(s->task->loop), s);
}
