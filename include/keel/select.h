/* SPDX-License-Identifier: MIT */
/*
 * keel/select.h: select over several waits in one task (the io layer's;
 * tokio's select!, Go's select).
 *
 * A task arms a few branches (a mailbox receive, an op it starts, a
 * deadline, a join of a child, a token's cancellation) and awaits the
 * first to be ready; the others are undone by keel's usual contract, so
 * that nothing a loser received is lost:
 *
 *	keel_select_init(&f->sel, t, 0);
 *	keel_select_recv(&f->sel, f->inbox, &f->msg);		// branch 0
 *	keel_select_op(&f->sel, start_recv, f);			// branch 1
 *	keel_select_timeout(&f->sel, 5000000000u);	// branch 2
 *	KEEL_AWAIT(t, keel_select(t, &f->sel));
 *	switch (keel_res(t)) {
 *	case 0: ...f->msg...			// a message (or -EPIPE)
 *	case 1: ...keel_select_res(&f->sel, 1)...	// the recv's result
 *	case 2: ...				// timed out
 *	default: ...				// -ECANCELED: t was cancelled
 *	}
 *
 * The losers, when keel_select() returns (man keel_select(3)):
 *  - a receive took nothing: a message that came meanwhile is at the
 *    head of its mailbox, in order;
 *  - an op was cancelled, and the select returned only when the kernel
 *    had returned it, so its buffer is the task's again; if it completed
 *    anyway (a recv got bytes, an accept an fd) keel_select_res() holds
 *    that result, which the caller now owns;
 *  - a join left the child running and joinable;
 *  - a deadline or a token branch is simply disarmed.
 * keel_select_res() of a loser that did not complete is -ECANCELED.
 *
 * Fairness: when several branches are ready as the select starts, one is
 * chosen at random (as Go and tokio do), or the first in the order they
 * were added with KEEL_SELECT_BIASED. Op branches are started after the
 * others found nothing ready; among them, the first the kernel completes
 * wins.
 */
#ifndef KEEL_SELECT_H
#define KEEL_SELECT_H

#include <keel/loop.h>
#include <keel/sync.h>
#include <keel/task.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Branches in one select. */
#define KEEL_SELECT_MAX 8

/* keel_select_init() flags: choose ready branches in order, not at random. */
#define KEEL_SELECT_BIASED 0x1u

/*
 * An op branch's start: starts exactly one op of `t` (keel_recv(),
 * keel_accept(), keel_read(), ...: one that completes with one result, not
 * a stream) and returns what it returned.
 */
typedef int (*keel_select_start_fn)(struct keel_task *t, void *arg);

struct keel_select;

/* One branch; its fields are private. */
struct keel_select_branch {
	struct keel_select *sel;
	uint8_t kind;
	uint8_t state;
	int32_t res;
	union {
		struct {
			struct keel_mailbox *mb;
			void **out;
		} recv;
		struct {
			keel_select_start_fn start;
			void *arg;
			uint32_t op; /* ledger index + 1 while in flight */
		} op;
		struct {
			struct keel_timer timer;
			uint64_t deadline;
		} timer;
		struct {
			struct keel_task *child;
		} join;
		struct {
			struct keel_token *tok;
			struct keel_token_cb cb;
		} token;
	} u;
};

/* Caller-owned (keep it in the task's frame); its fields are private. */
struct keel_select {
	struct keel_task *task;
	unsigned flags;
	int err;	  /* a branch could not be added */
	uint8_t n;	  /* branches */
	uint8_t phase;	  /* see io/select_wait.c */
	uint8_t ops_out;  /* op branches the kernel still owns */
	uint8_t external; /* a mailbox branch is armed */
	int winner;	  /* the branch, or a negative errno */
	struct keel_select_branch b[KEEL_SELECT_MAX];
};

/*
 * Prepare an empty select for the task `t` (flags: 0 or
 * KEEL_SELECT_BIASED). Use it again after each keel_select() to re-arm.
 * Ownership: `s` is the caller's, in t's frame.
 */
void keel_select_init(struct keel_select *s, struct keel_task *t,
		      unsigned flags);

/*
 * Add a branch; each returns its index (0, 1, ... in the order added), or
 * -E2BIG past KEEL_SELECT_MAX (keel_select() then fails with it too).
 *
 * keel_select_recv: receive from `mb` (owned by t's loop) into *out; the
 * branch's result is keel_mb_recv()'s (0, -EPIPE once closed and empty).
 * keel_select_op: `start` starts one op of the task; its result is the
 * op's. keel_select_deadline / keel_select_timeout: fires at the absolute
 * CLOCK_MONOTONIC `deadline_ns` / `ns` from now, result 0.
 * keel_select_join: `child` (joinable, not joined by anyone else) exited;
 * the result is its exit status, and the winning join releases it as
 * keel_join() does. keel_select_token: `tok` is cancelled; the result is
 * its cause.
 * Ownership: the select keeps the pointers until keel_select() returns;
 * `out`, `arg` and what the op writes to stay the caller's (in the frame).
 */
int keel_select_recv(struct keel_select *s, struct keel_mailbox *mb,
		     void **out);
int keel_select_op(struct keel_select *s, keel_select_start_fn start,
		   void *arg);
int keel_select_deadline(struct keel_select *s, uint64_t deadline_ns);
int keel_select_timeout(struct keel_select *s, uint64_t ns);
int keel_select_join(struct keel_select *s, struct keel_task *child);
int keel_select_token(struct keel_select *s, struct keel_token *tok);

/*
 * Await the first branch: keel_res(t) is its index, or a negative errno:
 * t's own token was cancelled (-ECANCELED, -ETIMEDOUT; the losers' rules
 * hold for every branch), -E2BIG, -EINVAL (no branch, or awaited again
 * without keel_select_init()), -EBUSY (a mailbox already has a receiver,
 * or t has an op in flight outside the select), -ENOMEM. The losers are undone
 * as described at the top. Ownership: nothing changes hands but what the winner
 * (and a loser that completed anyway) received.
 */
int keel_select(struct keel_task *t, struct keel_select *s);

/*
 * Branch i's result after keel_select(): the winner's result; for a
 * losing op, the kernel's (-ECANCELED if it was cancelled in time); for
 * the other losers -ECANCELED (nothing happened).
 * Ownership: reads the select; nothing changes hands.
 */
static inline int keel_select_res(const struct keel_select *s, int i)
{
	return s->b[i].res;
}

#ifdef __cplusplus
}
#endif
#endif
