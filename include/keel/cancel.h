/* SPDX-License-Identifier: MIT */
/*
 * keel/cancel.h: cancellation tokens and shields.
 *
 * Tokens form a tree: cancelling one cancels its descendants. A token's
 * effective deadline is the earlier of its own and its parent's; when it
 * passes, the token is cancelled with -ETIMEDOUT. The first cause is kept
 * (-ECANCELED or -ETIMEDOUT), and cancellation is level-triggered: every
 * later await of a task observing the token returns the cause at once.
 *
 * Every task observes one token: the one it was given, else its spawner's,
 * else the loop's root token (keel_loop_token()). Cancelling a task's token
 * cancels its ops in flight (IORING_OP_ASYNC_CANCEL) and wakes it from any
 * await (I/O, sleep, join); it gets the real outcome: the cause, or the
 * op's own result when the op completed before the cancel took effect
 * (a recv that already consumed data returns that data).
 *
 * Like Go's context, .NET's CancellationToken and Trio's cancel scopes.
 */
#ifndef KEEL_CANCEL_H
#define KEEL_CANCEL_H

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct keel_loop;
struct keel_task;
struct keel_token;
struct keel_token_cb;

/*
 * A new token, child of `parent` (NULL: a child of the loop's root token).
 * Returns 0 and sets *out, or -ENOMEM. A child of a cancelled parent starts
 * cancelled with the parent's cause.
 * Ownership: the caller holds one reference (keel_token_release()); tasks
 * observing the token and its children hold their own.
 */
int keel_token_new(struct keel_loop *loop, struct keel_token *parent,
		   struct keel_token **out);

/* Take / drop a reference. The token is freed with its last reference. */
struct keel_token *keel_token_ref(struct keel_token *tok);
void keel_token_release(struct keel_token *tok);

/* The loop's root token: cancelling it cancels every task of the loop. */
struct keel_token *keel_loop_token(struct keel_loop *loop);

/* Cancel with -ECANCELED (no-op if already cancelled). */
void keel_token_cancel(struct keel_token *tok);

/*
 * Set the token's own absolute CLOCK_MONOTONIC deadline (UINT64_MAX: none).
 * Its effective deadline is the earlier of that and its parent's.
 * Returns 0 or -ENOMEM.
 */
int keel_token_set_deadline(struct keel_token *tok, uint64_t deadline_ns);

/* Set the deadline `ns` from now. */
int keel_token_set_timeout(struct keel_token *tok, uint64_t ns);

/* The effective deadline (UINT64_MAX: none). */
uint64_t keel_token_deadline(const struct keel_token *tok);

/* 0 while not cancelled, else the first cause: -ECANCELED or -ETIMEDOUT. */
int keel_token_cause(const struct keel_token *tok);

static inline bool keel_token_cancelled(const struct keel_token *tok)
{
	return keel_token_cause(tok) != 0;
}

/* Called on the loop's thread when the token is cancelled. */
typedef void (*keel_token_fn)(struct keel_token *tok, int cause, void *arg);

/*
 * A cancellation callback registration; caller-owned, keep it alive while
 * registered. Its fields are private.
 */
struct keel_token_cb {
	struct keel_token_cb *next;
	struct keel_token_cb *prev;
	struct keel_token *tok;
	keel_token_fn fn;
	void *arg;
};

/*
 * Call `fn` when `tok` is cancelled; if it already is, `fn` runs at once
 * (before this returns). A callback runs once and is then unregistered.
 */
void keel_token_on_cancel(struct keel_token *tok, struct keel_token_cb *cb,
			  keel_token_fn fn, void *arg);

/* Unregister; safe if it already ran or was never registered. */
void keel_token_cb_remove(struct keel_token_cb *cb);

/* The token `t` observes. */
struct keel_token *keel_task_token(const struct keel_task *t);

/*
 * Make `t` observe `tok` (it takes a reference). If `tok` is cancelled and
 * `t` is waiting, it is woken with the cause. Returns 0 or -ENOMEM.
 */
int keel_task_set_token(struct keel_task *t, struct keel_token *tok);

/*
 * A shield: while it is up, the task's awaits ignore its token, so cleanup
 * can still do I/O; the shield has its own deadline (ns from now;
 * UINT64_MAX: none), after which awaits fail with -ETIMEDOUT. Caller-owned,
 * keep it in the frame. Returns 0 or -ENOMEM.
 */
struct keel_shield {
	struct keel_token *saved; /* the task's token, restored at the end */
	struct keel_token *own;
	struct keel_shield *prev; /* the shield it is nested in */
};

int keel_shield_begin(struct keel_task *t, struct keel_shield *s,
		      uint64_t timeout_ns);
void keel_shield_end(struct keel_task *t, struct keel_shield *s);

/*
 * Cancel `t` alone: like cancelling a token only it observes (the task
 * gets its own child token, cancelled).
 */
int keel_task_cancel(struct keel_task *t);

#ifdef __cplusplus
}
#endif
#endif
