/* SPDX-License-Identifier: MIT */
/*
 * ledger.c: the op ledger: every op in flight, who owns it, and what the
 * kernel still owes for it.
 *
 * Invariants:
 * - An op slot is reused only after every CQE it is owed has arrived
 *   (pending == 0); reuse bumps the generation, so a late CQE for the old op
 *   is recognised as stale and dropped.
 * - A task's inflight count equals the number of ops on its op list plus
 *   its parked streams (io/stream.c: an idle stream's poll, which holds no
 *   op); its frame is not freed while it is non-zero (see core/task.c).
 * - The task is woken once per op, when the op's last CQE arrives, with the
 *   op's real result: the kernel's, or -ETIMEDOUT when its linked timeout
 *   fired and cancelled it.
 */
#include "io.h"

#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

/* Chunks are mapped, not malloc'ed, so that a trimmed one is returned to
 * the kernel at once (an allocator keeps freed memory resident for a
 * while). */
#define CHUNK_BYTES (KEEL__OP_CHUNK * sizeof(struct keel__op))

/* How soon an enter that left cancels waiting for an SQE returns. */
#define CANCEL_RETRY_NS ((int64_t)1000 * 1000)

int keel__ledger_init(struct keel__ledger *l)
{
	memset(l, 0, sizeof(*l));
	l->gen_floor = 1; /* user_data 0 is never a valid op */
	return 0;
}

void keel__ledger_fini(struct keel__ledger *l)
{
	for (uint32_t i = 0; i < l->nchunks; i++)
		munmap(l->chunks[i], CHUNK_BYTES);
	free(l->chunks);
	free(l->later);
	memset(l, 0, sizeof(*l));
}

int keel__ledger_grow(struct keel__ledger *l)
{
	struct keel__op **chunks =
	    realloc(l->chunks, (l->nchunks + 1) * sizeof(*chunks));

	if (!chunks)
		return -ENOMEM;
	l->chunks = chunks;
	struct keel__op *c = mmap(NULL, CHUNK_BYTES, PROT_READ | PROT_WRITE,
				  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (c == MAP_FAILED)
		return -ENOMEM;
	uint32_t base = l->nchunks << KEEL__OP_CHUNK_SHIFT;

	for (uint32_t i = 0; i < KEEL__OP_CHUNK; i++) {
		keel__op_set_id(&c[i], base + i, l->gen_floor);
		c[i].free_next = i + 1 < KEEL__OP_CHUNK ? &c[i + 1] : l->free;
	}
	chunks[l->nchunks++] = c;
	l->free = c;
	return 0;
}

/* Whether every op of chunk `c` is free; `*gen` rises above theirs. */
static bool chunk_free(const struct keel__op *c, uint32_t *gen)
{
	for (uint32_t i = 0; i < KEEL__OP_CHUNK; i++) {
		if (c[i].flags & KEEL__OP_INUSE)
			return false;
		if (keel__op_gen(&c[i]) >= *gen)
			*gen = keel__op_gen(&c[i]) + 1;
	}
	return true;
}

void keel__ledger_trim(struct keel__ledger *l)
{
	uint32_t n = l->nchunks, gen = l->gen_floor;
	struct keel__op **link = &l->free;

	while (n > 1 && chunk_free(l->chunks[n - 1], &gen))
		n--;
	if (n == l->nchunks)
		return;
	/* The free list without the trimmed chunks, lowest index first: new
	 * ops fill the low chunks, so the high ones empty sooner. */
	for (uint32_t i = 0; i < n << KEEL__OP_CHUNK_SHIFT; i++) {
		struct keel__op *op = keel__op_at(l, i);

		if (!(op->flags & KEEL__OP_INUSE)) {
			*link = op;
			link = &op->free_next;
		}
	}
	*link = NULL;
	while (l->nchunks > n)
		munmap(l->chunks[--l->nchunks], CHUNK_BYTES);
	/* A chunk mapped again later starts above every generation the
	 * trimmed ones reached: no late CQE can match one of its ops. */
	l->gen_floor = gen;
}

/* Take `op` off its task's op list, which it is not alone on. */
static __attribute__((noinline)) void op_unlink(struct keel__ledger *l,
						struct keel__op *op)
{
	if (op->prev)
		keel__op_at(l, op->prev - 1)->next = op->next;
	else
		op->task->ops = op->next;
	if (op->next)
		keel__op_at(l, op->next - 1)->prev = op->prev;
}

static inline void op_release(struct keel__io *io, struct keel__op *op)
{
	struct keel__ledger *l = &io->ledger;
	struct keel_task *t = op->task;
	uint64_t links;

	/* The common case, the task's only op (no next, no prev), told by
	 * one load of both links. */
	_Static_assert(offsetof(struct keel__op, prev) ==
			   offsetof(struct keel__op, next) + 4,
		       "next and prev are adjacent");
	memcpy(&links, &op->next, sizeof(links));
	if (__builtin_expect(links == 0, 1))
		t->ops = 0;
	else
		op_unlink(l, op);
	t->inflight--;
	op->flags = 0;
	op->ud += (uint64_t)1 << 32; /* the generation (which wraps) */
	op->free_next = l->free;
	l->free = op;
	l->inuse--;
}

void keel__op_release_quiet(struct keel__io *io, struct keel__op *op)
{
	struct keel_task *t = op->task;

	op_release(io, op);
	if ((t->flags & KEEL__T_EXITED) && !t->inflight)
		keel__task_ops_drained(t);
}

void keel__op_lat_fini(struct keel__io *io)
{
	for (unsigned i = 0; i < KEEL__LAT_OPCODES; i++) {
		free(io->op_lat[i]);
		io->op_lat[i] = NULL;
	}
}

/* A table's first use; published with release for a scrape elsewhere. */
static struct keel__op_lat *op_lat_table(struct keel__io *io, unsigned opcode)
{
	struct keel__op_lat *h = calloc(1, sizeof(*h));

	if (h)
		__atomic_store_n(&io->op_lat[opcode], h, __ATOMIC_RELEASE);
	return h;
}

/* A table's first use, and the ops counted into it (see op_lat_add()). */
static __attribute__((noinline)) void
op_lat_add_new(struct keel__io *io, unsigned opcode, uint64_t ns, uint32_t n);

/*
 * Count `n` ops of `opcode` of latency `ns`. Out of memory for a table:
 * they go uncounted rather than failing anything.
 */
static inline __attribute__((always_inline)) void
op_lat_add(struct keel__io *io, unsigned opcode, uint64_t ns, uint32_t n)
{
	struct keel__op_lat *h;
	unsigned k;

	if (opcode >= KEEL__LAT_OPCODES)
		return;
	h = io->op_lat[opcode];
	if (__builtin_expect(!h, 0)) {
		op_lat_add_new(io, opcode, ns, n);
		return;
	}
	/* ns in (2^(k-1), 2^k] units -> k, without a branch: ns - 1 (0
	 * stays 0), its bits below the unit set so that up to one unit
	 * lands in bucket 0. */
	k = 64u -
	    (unsigned)__builtin_clzll((ns - (ns != 0)) |
				      ((1u << KEEL__LAT_UNIT_SHIFT) - 1)) -
	    KEEL__LAT_UNIT_SHIFT;
	k = k < KEEL__LAT_BUCKETS ? k : KEEL__LAT_BUCKETS - 1;
	__atomic_store_n(&h->bucket[k], h->bucket[k] + n, __ATOMIC_RELAXED);
	__atomic_store_n(&h->sum_ns, h->sum_ns + ns * n, __ATOMIC_RELAXED);
}

static void op_lat_add_new(struct keel__io *io, unsigned opcode, uint64_t ns,
			   uint32_t n)
{
	if (op_lat_table(io, opcode))
		op_lat_add(io, opcode, ns, n);
}

/* Count the run's ops (see struct keel__op_lat_run). */
static inline __attribute__((always_inline)) void
op_lat_count(struct keel__io *io)
{
	struct keel__op_lat_run *run = &io->lat_run;

	op_lat_add(io, run->opcode, io->core.now - run->start_ns, run->n);
	run->n = 0;
}

/* op_lat_count() where a run ends before the reap does: out of line, so
 * that the CQE loop saves no register for it. */
static __attribute__((noinline)) void op_lat_flush(struct keel__io *io)
{
	op_lat_count(io);
}

/*
 * Count a kernel op's latency. A user op (a sleep) is left out: its
 * "latency" is the time it was asked to wait; so is a multishot stream
 * (its completions come when a peer sends or connects, and its own CQEs
 * never come here but by a linked timeout). The first op of a run is
 * counted at once, so that a reap of one CQE (a loop at batch 1) pays no
 * more than that; the ones after it are the run's.
 */
static inline __attribute__((always_inline)) void
op_lat_record(struct keel__io *io, const struct keel__op *op, bool kernel)
{
	struct keel__op_lat_run *run = &io->lat_run;

	if (!kernel &&
	    (op->kind == KEEL__OP_USER || op->kind == KEEL__OP_STREAM))
		return;
	if (__builtin_expect(op->start_ns == run->start_ns &&
				 op->opcode == run->opcode,
			     1)) {
		run->n++;
		return;
	}
	if (run->n)
		op_lat_flush(io);
	run->start_ns = op->start_ns;
	run->opcode = op->opcode;
	op_lat_add(io, op->opcode, io->core.now - op->start_ns, 1);
}

/* Tell `t` that its op `ref` ended with `res`: every case. Out of line:
 * op_done() is inline in the CQE loop, and comes here only for an exited
 * task, a select or a cancel. */
__attribute__((noinline)) void keel__op_tell_task(struct keel_task *t,
						  uint32_t ref, int res)
{
	if (t->flags & KEEL__T_EXITED) {
		if (!t->inflight)
			keel__task_ops_drained(t);
		return;
	}
	/* Cancelled because its token was: say why (-ETIMEDOUT for a
	 * deadline). An op that completed first keeps its own result. */
	if (res == -ECANCELED) {
		int cause = keel__task_cancel_cause(t);

		if (cause)
			res = cause;
	}
	/* One of a select's branches: the select decides what t learns. */
	if (__builtin_expect(t->flags & KEEL__T_SELECT, 0) &&
	    keel__select_op_done(t, ref, res))
		return;
	keel__task_complete(t, res);
}

/*
 * The op's last CQE is in: release it, then tell its task. Inline in the
 * CQE loop, where a call spilled and restored six registers per CQE.
 * `kernel`: the op is known to be a KEEL__OP_KERNEL one. The common case,
 * a task that waits for this op alone, is queued here with one test of its
 * flags (keel__task_complete() would test them twice more); a task exited,
 * in a select, already queued, killed or waiting on another thread too, and
 * a cancelled op, take keel__op_tell_task(). (The op's index outlives its
 * release: only a trim, never during a reap, unmaps a slot.) `may_trace`
 * false: the loop is known not to be traced (see keel__io_reap()).
 */
static inline __attribute__((always_inline)) void op_done(struct keel__io *io,
							  struct keel__op *op,
							  int res, bool kernel,
							  bool may_trace)
{
	struct keel_task *t = op->task;

	op_lat_record(io, op, kernel);
	if (may_trace)
		KEEL__TRACE(&io->core, KEEL_EV_OP_COMPLETE, op->opcode, t->id,
			    (int64_t)res,
			    op->trace_ns ? keel__trace_clock() - op->trace_ns
					 : 0);
	op_release(io, op);
	if (__builtin_expect(
		(t->flags & (KEEL__T_EXITED | KEEL__T_SELECT | KEEL__T_QUEUED |
			     KEEL__T_KILLED | KEEL__T_EXTERNAL)) ||
		    res == -ECANCELED,
		0)) {
		keel__op_tell_task(t, op->index + 1, res);
		return;
	}
	t->res = res;
	keel__task_enqueue(&io->core, t);
}

struct io_uring_sqe *keel__op_begin_slow(struct keel_task *t, uint8_t opcode,
					 uint8_t kind, struct keel__op **opp,
					 int *step)
{
	struct keel__io *io = keel__io_of(t->loop);
	bool linked = io->timeout_task == t;
	int cause = kind == KEEL__OP_CLEANUP ? 0 : keel__task_cancel_cause(t);
	int err;

	/* Level-triggered: under a cancelled token no op starts. */
	if (cause) {
		err = cause;
		goto fail;
	}
	/* A restricted ring's kernel would refuse it: so does keel, before
	 * it takes an SQE (io/restrict.c). */
	if (__builtin_expect(io->restricted, 0) &&
	    !keel__op_allowed(io, opcode)) {
		err = keel__restrict_refuse(io);
		goto fail;
	}
	/* The op and its linked timeout must be adjacent in the SQ; an op
	 * alone, keel__io_sqe() makes room for. */
	if (linked)
		keel__io_reserve(io, 2);
	struct io_uring_sqe *sqe = keel__io_sqe(io);

	if (!sqe) {
		err = -EAGAIN;
		goto fail;
	}
	*opp = keel__op_new(io, t, kind, opcode);
	if (!*opp) {
		/* Leave the SQE harmless: a NOP nobody waits for. */
		io_uring_prep_nop(sqe);
		io_uring_sqe_set_data64(sqe, KEEL__UD_INTERNAL);
		err = -ENOMEM;
		goto fail;
	}
	return sqe;
fail:
	keel__op_timeout_drop(io, t);
	*step = keel__task_ready(t, err);
	return NULL;
}

static void link_timeout(struct keel__io *io, struct keel__op *op,
			 struct io_uring_sqe *sqe)
{
	struct io_uring_sqe *tmo = io_uring_get_sqe(&io->ring);

	/* keel__op_begin() made room for it. */
	sqe->flags |= IOSQE_IO_LINK;
	io_uring_prep_link_timeout(tmo, &op->ts, IORING_TIMEOUT_ABS);
	io_uring_sqe_set_data64(tmo, keel__op_ud(op, KEEL__UD_TIMEOUT));
	op->pending++;
}

void keel__op_link_deadline(struct keel__io *io, struct keel__op *op,
			    struct io_uring_sqe *sqe)
{
	/* Absolute, so that a resubmitted send_all keeps it; from the clock
	 * now, so the op gets at least its full time. */
	uint64_t deadline = keel__clock_now() + io->timeout_ns;

	op->ts.tv_sec = (long long)(deadline / 1000000000u);
	op->ts.tv_nsec = (long long)(deadline % 1000000000u);
	op->flags |= KEEL__OP_LINKED;
	io->timeout_task = NULL;
	link_timeout(io, op, sqe);
}

int keel__op_commit_slow(struct keel_task *t, struct keel__op *op,
			 struct io_uring_sqe *sqe)
{
	struct keel__io *io = keel__io_of(t->loop);

	if (io->core.trace && !op->trace_ns)
		op->trace_ns = keel__trace_clock();
	KEEL__TRACE(&io->core, KEEL_EV_OP_SUBMIT, op->opcode, t->id, op->index,
		    0);
	if (io->timeout_task == t)
		keel__op_link_deadline(io, op, sqe);
	return keel__task_suspend(t);
}

void keel__op_user_done(struct keel__io *io, struct keel__op *op, int res)
{
	op_done(io, op, res, false, true);
}

/* A short send_all: queue the rest under the same op and user_data. */
static bool send_all_continue(struct keel__io *io, struct keel__op *op)
{
	bool linked = op->flags & KEEL__OP_LINKED;
	struct io_uring_sqe *sqe;

	keel__io_reserve(io, linked ? 2u : 1u);
	sqe = io_uring_get_sqe(&io->ring);
	if (!sqe)
		return false;
	keel__prep_send(sqe, op);
	keel__sqe_fixed_fd(sqe);
	io_uring_sqe_set_data64(sqe, keel__op_ud(op, KEEL__UD_MAIN));
	op->pending++;
	if (linked)
		link_timeout(io, op, sqe);
	return true;
}

static void handle_main(struct keel__io *io, struct keel__op *op, int res)
{
	if (op->kind == KEEL__OP_SEND_ALL) {
		if (res == -EINVAL && (op->flags & KEEL__OP_VECTORED)) {
			keel__send_vec_refused(io, op);
			if (!(op->flags &
			      (KEEL__OP_CANCEL_SENT | KEEL__OP_TIMED_OUT)) &&
			    send_all_continue(io, op))
				return;
		}
		if (res > 0) {
			op->u.send_all.done += (size_t)res;
			if (op->u.send_all.done < op->u.send_all.len &&
			    !(op->flags &
			      (KEEL__OP_CANCEL_SENT | KEEL__OP_TIMED_OUT)) &&
			    send_all_continue(io, op))
				return;
			res = op->u.send_all.done == op->u.send_all.len
				  ? (int)op->u.send_all.done
				  : -ECANCELED;
		} else if (res == 0) {
			res = -EPIPE;
		}
	}
	op->res = res;
}

/* SEND_ZC: the CQE that says the kernel no longer reads the buffer. */
static void handle_notif(struct keel__io *io, struct keel__op *op,
			 const struct io_uring_cqe *cqe)
{
	if (cqe->res & IORING_NOTIF_USAGE_ZC_COPIED)
		io->count.zc_copied++;
	(void)op;
}

/* A CQE of a live op, but for handle_cqe()'s common case: a stream's, a
 * linked timeout's, a send_all's, a notification. Out of line, to keep
 * the CQE loop small. */
static __attribute__((noinline)) void
handle_op_cqe(struct keel__io *io, struct keel__op *op, unsigned role,
	      const struct io_uring_cqe *cqe)
{
	if (op->kind == KEEL__OP_STREAM && role == KEEL__UD_MAIN) {
		op->u.stream.on_cqe(io, op, cqe->res, cqe->flags);
		return;
	}
	if (role == KEEL__UD_TIMEOUT) {
		if (cqe->res == -ETIME)
			op->flags |= KEEL__OP_TIMED_OUT;
	} else if (cqe->flags & IORING_CQE_F_NOTIF) {
		handle_notif(io, op, cqe);
	} else {
		/* A zero-copy send owes its notification too. */
		if (cqe->flags & IORING_CQE_F_MORE)
			op->pending++;
		handle_main(io, op, cqe->res);
	}
	if (--op->pending)
		return;
	int res = op->res;

	/* Cancelled by its deadline: say so, unless it completed first. */
	if ((op->flags & KEEL__OP_TIMED_OUT) &&
	    (res == -ECANCELED || res == -EINTR))
		res = -ETIMEDOUT;
	op_done(io, op, res, false, true);
}

/* Every CQE but handle_cqe()'s common case, each checked in its order:
 * internal ones, stale ones, then the op's. */
static __attribute__((noinline)) void
handle_cqe_slow(struct keel__io *io, const struct io_uring_cqe *cqe)
{
	uint64_t ud = cqe->user_data;
	unsigned role = ud & KEEL__UD_ROLE_MASK;
	uint32_t index = (uint32_t)(ud >> 2) & 0x3fffffffu;
	struct keel__ledger *l = &io->ledger;
	struct keel__op *op;

	if (role == KEEL__UD_INTERNAL || role == KEEL__UD_WAKE) {
		/* Bits above the role: a parked stream's poll, or a
		 * hibernated descriptor's. */
		if (__builtin_expect(ud != role, 0) &&
		    role == KEEL__UD_INTERNAL) {
			if ((ud & KEEL__UD_HIBERNATE) &&
			    keel__ud_is_wait_timer(ud))
				keel__io_wait_timer_cqe(io, ud);
			else if (ud & KEEL__UD_HIBERNATE)
				keel__hibernate_cqe(io, ud, cqe->res,
						    cqe->flags);
			else
				keel__stream_parked_cqe(io, ud, cqe->res);
			return;
		}
		/* A doorbell's work is in the inbox, drained in step 2. */
		io->count.internal_cqes++;
		return;
	}
	if (index >= (l->nchunks << KEEL__OP_CHUNK_SHIFT) ||
	    (op = keel__op_at(l, index))->ud !=
		(ud & ~(uint64_t)KEEL__UD_ROLE_MASK) ||
	    !(op->flags & KEEL__OP_INUSE) || !op->pending) {
		io->count.stale_cqes++;
		return;
	}
	handle_op_cqe(io, op, role, cqe);
}

/*
 * The common case, a one-shot op's own CQE (no deadline that fired, no
 * notification owed), is told by a compare of its user_data and one test
 * of the op's header word: kind
 * KEEL__OP_KERNEL, one CQE pending, in use and not timed out (whatever its
 * opcode, and whether a cancel was sent). handle_op_cqe() would come to
 * op_done() with cqe->res for it, by a dozen more tests.
 */
#define HEAD_MASK                                                              \
	(0xffu | 0xffu << 16 |                                                 \
	 (unsigned)(KEEL__OP_INUSE | KEEL__OP_TIMED_OUT) << 24)
#define HEAD_ONESHOT                                                           \
	(KEEL__OP_KERNEL | 1u << 16 | (unsigned)KEEL__OP_INUSE << 24)
_Static_assert(offsetof(struct keel__op, opcode) ==
		       offsetof(struct keel__op, kind) + 1 &&
		   offsetof(struct keel__op, pending) ==
		       offsetof(struct keel__op, kind) + 2 &&
		   offsetof(struct keel__op, flags) ==
		       offsetof(struct keel__op, kind) + 3,
	       "the op's header word: kind, opcode, pending, flags");

static inline uint32_t op_head(const struct keel__op *op)
{
	uint32_t head;

	memcpy(&head, &op->kind, sizeof(head));
	return __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
		   ? head
		   : __builtin_bswap32(head);
}

static inline __attribute__((always_inline)) void
handle_cqe(struct keel__io *io, const struct io_uring_cqe *cqe, bool may_trace)
{
	uint64_t ud = cqe->user_data;
	uint32_t index = (uint32_t)(ud >> 2) & 0x3fffffffu;
	struct keel__ledger *l = &io->ledger;
	struct keel__op *op;

	/* The op's own user_data matches only its main CQE's (of its
	 * generation, role KEEL__UD_MAIN): every other role, whatever the
	 * bits above it, goes to handle_cqe_slow(). */
	if (__builtin_expect(
		index < (l->nchunks << KEEL__OP_CHUNK_SHIFT) &&
		    (op = keel__op_at(l, index))->ud == ud &&
		    (op_head(op) & HEAD_MASK) == HEAD_ONESHOT &&
		    !(cqe->flags & (IORING_CQE_F_MORE | IORING_CQE_F_NOTIF)),
		1))
		op_done(io, op, cqe->res, true, may_trace);
	else
		handle_cqe_slow(io, cqe);
}

/*
 * Every CQE in the CQ, as io_uring_for_each_cqe() would, but with the ring's
 * geometry in locals and the tail read once per run of CQEs, not once per
 * CQE: handle_cqe() stores through pointers, so the compiler reloaded each
 * of them around every CQE. The tail is read again after the run, so CQEs
 * posted meanwhile (a backend executes what a handler submits at once) are
 * reaped in this batch, as before. CQEs are 16 bytes: keel never asks for
 * IORING_SETUP_CQE32, nor do the backends (a shift less per CQE, and a
 * register more for the loop).
 */
static inline __attribute__((always_inline)) unsigned
reap_batch(struct keel__io *io, bool may_trace)
{
	struct io_uring_cq *cq = &io->ring.cq;
	struct io_uring_cqe *cqes = cq->cqes;
	const unsigned mask = cq->ring_mask;
	const unsigned first = *cq->khead;
	unsigned head = first, tail;

	while ((tail = io_uring_smp_load_acquire(cq->ktail)) != head) {
		do
			handle_cqe(io, &cqes[head & mask], may_trace);
		while (++head != tail);
	}
	if (head != first)
		io_uring_smp_store_release(cq->khead, head);
	io->count.cqes += head - first;
	return head - first;
}

static inline __attribute__((always_inline)) void reap_all(struct keel__io *io,
							   bool may_trace)
{
	bool flushed = false;

	io->reaping = true;
	/*
	 * With FEAT_NODROP the kernel keeps CQEs that did not fit on an
	 * overflow list; flush them into the (now empty) CQ and reap again
	 * until none is left. (One call of reap_batch(), inlined: a second
	 * copy made it a call, and its register saves, every turn.)
	 */
	while (reap_batch(io, may_trace) || !flushed) {
		if (!io_uring_cq_has_overflow(&io->ring))
			break;
		io->count.cq_overflows++;
		keel__io_enter(io, 1, 0);
		io->count.enters++;
		flushed = true;
	}
	io->reaping = false;
	if (io->lat_run.n)
		op_lat_count(io);
	if (io->bufrings_starved)
		keel__bufrings_settle(io);
}

static __attribute__((noinline)) void reap_traced(struct keel__io *io)
{
	reap_all(io, true);
}

/*
 * Whether the loop is traced is asked once per reap, not once per CQE: a
 * loop attaches to a trace only when a turn begins (keel__trace_turn()),
 * so one not traced now is not until the reap is over. (One traced may
 * stop being so: its reap tests c->trace at every event, as before.)
 */
void keel__io_reap(struct keel__io *io)
{
	if (__builtin_expect(io->core.trace != NULL, 0))
		reap_traced(io);
	else
		reap_all(io, false);
}

static void cancel_op(struct keel__io *io, struct keel__op *op)
{
	/* A stream decides itself: end, close, or cancel its request. */
	if (op->kind == KEEL__OP_STREAM) {
		op->u.stream.on_cancel(io, op);
		return;
	}
	keel__op_send_cancel(io, op);
}

static void cancel_prep(struct keel__io *io, struct io_uring_sqe *sqe,
			uint64_t ud)
{
	io_uring_prep_cancel64(sqe, ud, 0);
	io_uring_sqe_set_data64(sqe, KEEL__UD_INTERNAL);
	/* Its result only matters as the cancelled request's own CQE. */
	if (io->features & IORING_FEAT_CQE_SKIP)
		sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
}

/*
 * A cancel with no SQE free (the SQ full, and the kernel took none of it:
 * io_uring_enter's -EAGAIN when it has no memory for requests) is not
 * dropped: its request would stay in the kernel, and its task, waiting for
 * it, would never finish exiting. It waits in the ledger, and the enter
 * (on its slow path while any wait) queues it first, into the room the
 * previous enter made.
 */
static bool later_push(struct keel__io *io, uint64_t ud, bool nop)
{
	struct keel__ledger *l = &io->ledger;

	if (l->nlater == l->later_cap) {
		uint32_t cap = l->later_cap ? 2 * l->later_cap : 8;
		struct keel__later *v = realloc(l->later, cap * sizeof(*v));

		if (!v)
			return false;
		l->later = v;
		l->later_cap = cap;
	}
	l->later[l->nlater++] = (struct keel__later){ud, nop};
	keel__io_enter_update(io);
	return true;
}

static void later_prep(struct keel__io *io, struct io_uring_sqe *sqe,
		       const struct keel__later *w)
{
	if (w->nop) {
		io_uring_prep_nop(sqe);
		io_uring_sqe_set_data64(sqe, w->ud);
	} else {
		cancel_prep(io, sqe, w->ud);
	}
}

bool keel__io_cancel_ud(struct keel__io *io, uint64_t ud)
{
	struct io_uring_sqe *sqe = keel__io_sqe(io);

	if (sqe) {
		cancel_prep(io, sqe, ud);
		return true;
	}
	return later_push(io, ud, false);
}

/* Likewise a NOP that brings a wake (a hibernated socket's cancel): the
 * wake must come, so it waits for an SQE as a cancel does. */
bool keel__io_nop_ud(struct keel__io *io, uint64_t ud)
{
	struct io_uring_sqe *sqe = keel__io_sqe(io);

	if (sqe) {
		later_prep(io, sqe, &(struct keel__later){ud, true});
		return true;
	}
	return later_push(io, ud, true);
}

int64_t keel__io_cancels_retry(struct keel__io *io, int64_t wait_ns)
{
	struct keel__ledger *l = &io->ledger;
	uint32_t kept = 0;

	/* Never keel__io_sqe(): its submit of a full SQ enters, and so
	 * comes back here. */
	for (uint32_t i = 0; i < l->nlater; i++) {
		struct io_uring_sqe *sqe = io_uring_get_sqe(&io->ring);

		if (sqe)
			later_prep(io, sqe, &l->later[i]);
		else
			l->later[kept++] = l->later[i];
	}
	l->nlater = kept;
	keel__io_enter_update(io);
	/* The SQ was full: this enter empties it, the next one takes them
	 * (soon, not whenever a CQE comes). */
	if (kept && (wait_ns < 0 || wait_ns > CANCEL_RETRY_NS))
		wait_ns = CANCEL_RETRY_NS;
	return wait_ns;
}

void keel__io_cancel_forget(struct keel__io *io, uint64_t ud)
{
	struct keel__ledger *l = &io->ledger;
	uint32_t kept = 0;

	for (uint32_t i = 0; i < l->nlater; i++)
		if (l->later[i].ud != ud || l->later[i].nop)
			l->later[kept++] = l->later[i];
	l->nlater = kept;
	keel__io_enter_update(io);
}

void keel__op_send_cancel(struct keel__io *io, struct keel__op *op)
{
	if (op->flags & KEEL__OP_CANCEL_SENT)
		return;
	op->flags |= KEEL__OP_CANCEL_SENT;
	if (op->kind == KEEL__OP_USER) {
		op->u.user.cancel(op);
		return;
	}
	if (!keel__io_cancel_ud(io, keel__op_ud(op, KEEL__UD_MAIN)))
		op->flags &= (uint8_t)~KEEL__OP_CANCEL_SENT;
}

static void cancel_ops_hook(struct keel_task *t)
{
	keel__io_cancel_task(keel__io_of(t->loop), t);
}

void keel__io_install_hooks(struct keel__io *io)
{
	io->core.hooks.cancel_ops = cancel_ops_hook;
}

void keel__io_cancel_task(struct keel__io *io, struct keel_task *t)
{
	uint32_t next = t->ops, id = t->id;

	/* Its parked streams first: when the last of them frees the frame
	 * (closed, no poll left), t had no op (next is 0) and no sleep. So
	 * for its sleep: if its end frees the frame, next is 0. */
	keel__stream_cancel_parked(io, t);
	keel__sleep_cancel(io, id);
	while (next) {
		struct keel__op *op = keel__op_at(&io->ledger, next - 1);

		/* A user op completes inside cancel_op(): read next first. */
		next = op->next;
		cancel_op(io, op);
	}
}

void keel__io_cancel_all(struct keel__io *io)
{
	struct keel__ledger *l = &io->ledger;
	uint32_t n = l->nchunks << KEEL__OP_CHUNK_SHIFT;

	for (uint32_t i = 0; i < n; i++) {
		struct keel__op *op = keel__op_at(l, i);

		if (op->flags & KEEL__OP_INUSE)
			cancel_op(io, op);
	}
	keel__stream_cancel_all_parked(io);
	keel__sleep_cancel_all(io);
	keel__hibernate_cancel_all(io);
}
