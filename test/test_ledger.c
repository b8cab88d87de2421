/* SPDX-License-Identifier: MIT */
/*
 * test_ledger.c: the op ledger's defences, driven through its private
 * interface: CQEs of a stale generation (an op slot reused since), of an
 * index never handed out, and of a free slot are counted and dropped, and
 * never wake the task that owns the slot now; also after a trim unmapped
 * the slot's chunk, and after the chunk was mapped again.
 */
#include "loop.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <keel.h>
#include <stddef.h>
#include <string.h>

struct waiter {
	struct keel_task task;
	int fds[2];
	char buf[8];
};

/* Outcomes live outside the frame: it is freed when the task exits. */
static struct {
	int woke;
	int res;
	uint64_t first_ud; /* user_data of the first (completed) op */
} seen;

/* First a nop (completes, its slot is freed), then a read on an idle pipe
 * that reuses the same slot with a new generation. */
static int waiter_step(struct keel_task *t)
{
	struct waiter *w = keel_container_of(t, struct waiter, task);
	struct keel__io *io = keel__io_of(t->loop);

	KEEL_BEGIN(t);
	KEEL_AWAIT(t, keel_nop(t));
	seen.first_ud =
	    ((uint64_t)(keel__op_gen(keel__op_at(&io->ledger, 0)) - 1) << 32) |
	    KEEL__UD_MAIN;
	KEEL_AWAIT(t, keel_read(t, w->fds[0], w->buf, sizeof(w->buf),
				KEEL_OFF_CURRENT));
	seen.woke++;
	seen.res = keel_res(t);
	KEEL_END(t);
}

static KEEL_TASK_TYPE(waiter_task, struct waiter, task, waiter_step);

/* Queue a raw NOP whose CQE carries a forged user_data. */
static void forge_cqe(struct keel_loop *loop, uint64_t ud)
{
	struct io_uring_sqe *sqe = keel__io_sqe(keel__io_of(loop));

	cr_assert_not_null(sqe);
	io_uring_prep_nop(sqe);
	io_uring_sqe_set_data64(sqe, ud);
}

Test(ledger, stale_generation_cqes_are_dropped, .timeout = 10)
{
	struct keel_loop *loop;
	struct keel_loop_stats s;

	cr_assert_eq(keel_loop_create(&loop, NULL), 0);
	struct waiter *w = keel_spawn(loop, &waiter_task, KEEL_PRIO_NORMAL);

	cr_assert_eq(pipe(w->fds), 0);
	/* Turn 1 queues the nop; turn 2 reaps it; turn 3 queues the read. */
	for (int i = 0; i < 3; i++)
		keel_loop_step(loop, 0);
	struct keel__op *op = keel__op_at(&keel__io_of(loop)->ledger, 0);

	cr_assert(op->flags & KEEL__OP_INUSE, "the read reuses slot 0");
	cr_assert_eq(keel__op_gen(op), 2, "slot 0 is in its second generation");
	/* The first op's user_data (generation 1), an index never handed
	 * out, and a current one with a bad role are all stale. */
	forge_cqe(loop, seen.first_ud);
	forge_cqe(loop, ((uint64_t)2 << 32) | (100000u << 2));
	forge_cqe(loop, ((uint64_t)keel__op_gen(op) << 32) | (5u << 2));
	keel_loop_step(loop, 0);
	keel_loop_stats(loop, &s);
	cr_assert_eq(s.stale_cqes, 3);
	cr_assert_eq(seen.woke, 0,
		     "a stale CQE must not wake the slot's owner");
	cr_assert_eq(s.ops_inflight, 1);

	/* The real completion still arrives and is delivered. */
	int wfd = w->fds[1];

	cr_assert_eq(write(wfd, "ok", 2), 2);
	cr_assert_eq(keel_loop_run(loop), 0);
	cr_assert_eq(seen.woke, 1);
	cr_assert_eq(seen.res, 2);
	keel_loop_stats(loop, &s);
	cr_assert_eq(s.ops_inflight, 0);
	cr_assert_eq(s.tasks_live, 0);
	keel_loop_destroy(loop);
}

Test(ledger, user_data_encodes_index_generation_and_role, .timeout = 10)
{
	struct keel__op op = {0};
	uint64_t ud;

	keel__op_set_id(&op, 0x1234, 0xabcdef01);
	ud = keel__op_ud(&op, KEEL__UD_TIMEOUT);

	cr_assert_eq(ud >> 32, 0xabcdef01);
	cr_assert_eq((ud >> 2) & 0x3fffffff, 0x1234);
	cr_assert_eq(ud & KEEL__UD_ROLE_MASK, KEEL__UD_TIMEOUT);
	cr_assert_neq(keel__op_ud(&op, KEEL__UD_MAIN), 0);
}

/*
 * An op the kernel never returns (here a user-space op whose cancel does
 * nothing): keel_loop_destroy() gives up waiting and leaks the frame, and
 * that memory must stay the frame's, since the kernel may still write into
 * it. A small frame lives in a slab, a large one straight in the arena.
 */
struct stuck {
	struct keel_task task;
	char buf[64];
};

struct stuck_big {
	struct keel_task task;
	char buf[16384];
};

static void *g_stuck[2]; /* reachable, so LSan does not call it a leak */

static void stuck_cancel(struct keel__op *op)
{
	(void)op;
}

static int stuck_wait(struct keel_task *t)
{
	struct keel__op *op =
	    keel__op_new(keel__io_of(t->loop), t, KEEL__OP_USER, 0xfd);

	cr_assert_not_null(op);
	op->pending = 1;
	op->u.user.cancel = stuck_cancel;
	return keel__task_suspend(t);
}

static int stuck_step(struct keel_task *t)
{
	KEEL_BEGIN(t);
	g_stuck[0] = keel_container_of(t, struct stuck, task);
	KEEL_AWAIT(t, stuck_wait(t));
	KEEL_END(t);
}

static int stuck_big_step(struct keel_task *t)
{
	KEEL_BEGIN(t);
	g_stuck[1] = keel_container_of(t, struct stuck_big, task);
	KEEL_AWAIT(t, stuck_wait(t));
	KEEL_END(t);
}

static KEEL_TASK_TYPE(stuck_task, struct stuck, task, stuck_step);
static KEEL_TASK_TYPE(stuck_big_task, struct stuck_big, task, stuck_big_step);

Test(ledger, frame_leaked_at_destroy_stays_mapped_and_unused, .timeout = 20)
{
	struct keel_loop *loop = NULL;

	cr_assert_eq(keel_loop_create(&loop, NULL), 0);
	cr_assert_not_null(keel_spawn(loop, &stuck_task, 0));
	cr_assert_not_null(keel_spawn(loop, &stuck_big_task, 0));
	keel_loop_step(loop, 0);
	cr_assert_not_null(g_stuck[0]);
	cr_assert_not_null(g_stuck[1]);
	keel_loop_destroy(loop);
	/* What a late kernel write would do: no fault, no one else's data. */
	memset(((struct stuck *)g_stuck[0])->buf, 0xab,
	       sizeof(struct stuck) - offsetof(struct stuck, buf));
	memset(((struct stuck_big *)g_stuck[1])->buf, 0xab,
	       sizeof(struct stuck_big) - offsetof(struct stuck_big, buf));
	/* A new loop's frames do not land on the leaked ones either. */
	cr_assert_eq(keel_loop_create(&loop, NULL), 0);
	for (int i = 0; i < 1024; i++) {
		char *p = keel_spawn(loop, &stuck_task, 0);
		char *q = keel_spawn(loop, &stuck_big_task, 0);

		cr_assert_not_null(p);
		cr_assert_not_null(q);
		cr_assert(p + sizeof(struct stuck) <= (char *)g_stuck[0] ||
			  p >= (char *)g_stuck[0] + sizeof(struct stuck));
		cr_assert(q + sizeof(struct stuck_big) <= (char *)g_stuck[1] ||
			  q >= (char *)g_stuck[1] + sizeof(struct stuck_big));
	}
	keel_loop_destroy(loop); /* they never ran: freed */
}

/*
 * keel__ledger_trim() unmaps a trailing chunk whose ops are all free; a
 * late CQE for one of its ops (an injected error's NOP, say) must be
 * stale whether the chunk is gone or mapped again: the new chunk's ops
 * start above every generation the old one reached.
 */
struct idle_owner {
	struct keel_task task;
};

static int idle_owner_step(struct keel_task *t)
{
	return keel__task_suspend(t); /* holds ops the test hands it */
}

static KEEL_TASK_TYPE(idle_owner_task, struct idle_owner, task,
		      idle_owner_step);

enum { TRIM_OPS = KEEL__OP_CHUNK + 44, TRIM_INDEX = KEEL__OP_CHUNK + 4 };

static void take_ops(struct keel__io *io, struct keel_task *t,
		     struct keel__op **ops)
{
	for (int i = 0; i < TRIM_OPS; i++) {
		ops[i] = keel__op_new(io, t, KEEL__OP_USER, 0xfd);
		cr_assert_not_null(ops[i]);
		ops[i]->u.user.cancel = stuck_cancel;
	}
}

static void give_ops(struct keel__io *io, struct keel__op **ops)
{
	for (int i = 0; i < TRIM_OPS; i++) {
		ops[i]->pending = 0;
		keel__op_release_quiet(io, ops[i]);
	}
}

Test(ledger, trimmed_chunk_mapped_again_drops_its_old_cqes, .timeout = 10)
{
	struct keel_loop *loop;
	struct keel_loop_stats s;
	static struct keel__op *ops[TRIM_OPS];

	cr_assert_eq(keel_loop_create(&loop, NULL), 0);
	struct keel__io *io = keel__io_of(loop);
	struct keel__ledger *l = &io->ledger;
	struct idle_owner *o =
	    keel_spawn(loop, &idle_owner_task, KEEL_PRIO_NORMAL);
	struct keel_task *t = &o->task;

	keel_loop_step(loop, 0); /* it suspends */
	take_ops(io, t, ops);
	cr_assert_eq(l->nchunks, 2);
	struct keel__op *op = keel__op_at(l, TRIM_INDEX);
	uint64_t old_ud = keel__op_ud(op, KEEL__UD_MAIN);
	uint32_t old_gen = keel__op_gen(op);

	cr_assert(op->flags & KEEL__OP_INUSE);
	give_ops(io, ops);
	keel__ledger_trim(l);
	cr_assert_eq(l->nchunks, 1, "the free trailing chunk is unmapped");
	forge_cqe(loop, old_ud); /* its chunk is gone */
	keel_loop_step(loop, 0);
	keel_loop_stats(loop, &s);
	cr_assert_eq(s.stale_cqes, 1);

	take_ops(io, t, ops);
	cr_assert_eq(l->nchunks, 2, "the chunk is mapped again");
	op = keel__op_at(l, TRIM_INDEX);
	cr_assert(op->flags & KEEL__OP_INUSE);
	cr_assert_gt(keel__op_gen(op), old_gen, "generation %u after %u",
		     keel__op_gen(op), old_gen);
	op->pending = 1; /* it waits for a CQE: the old one must not do */
	forge_cqe(loop, old_ud);
	keel_loop_step(loop, 0);
	keel_loop_stats(loop, &s);
	cr_assert_eq(s.stale_cqes, 2);
	cr_assert_eq(op->pending, 1);
	give_ops(io, ops);
	keel_loop_destroy(loop);
}
