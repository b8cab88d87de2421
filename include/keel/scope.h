/* SPDX-License-Identifier: MIT */
/*
 * keel/scope.h: structured concurrency.
 *
 * A scope owns the tasks spawned into it and cannot finish before all of
 * them have: keel_scope_join() waits for every child and hands back each
 * one's exit status. The children observe the scope's token, a child of the
 * owner's, so cancelling the owner cancels them, and a scope deadline is a
 * timeout on the whole group. Failure policy:
 *   KEEL_SCOPE_FAIL_FAST  the first failure (negative exit status, or an
 *                         abort) cancels the siblings (Trio's nursery,
 *                         asyncio.TaskGroup);
 *   KEEL_SCOPE_COLLECT    keep going; every failure is reported together.
 * gather = spawn + keel_scope_join; race/select = keel_scope_join_any +
 * keel_scope_cancel + keel_scope_join; wait_for = keel_scope_set_timeout.
 */
#ifndef KEEL_SCOPE_H
#define KEEL_SCOPE_H

#include <keel/abort.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct keel_loop;
struct keel_task;
struct keel_task_type;
struct keel_token;

enum keel_scope_policy {
	KEEL_SCOPE_FAIL_FAST = 0,
	KEEL_SCOPE_COLLECT = 1,
};

/* One child's outcome, in spawn order. */
struct keel_scope_result {
	uint32_t index;		 /* spawn order within the scope */
	int status;		 /* exit status, KEEL_ABORTED if it panicked */
	struct keel_abort abort; /* for KEEL_ABORTED; message owned by scope */
};

/* Caller-owned (keep it in the owner's frame); fields are private. */
struct keel_scope {
	struct keel_task *owner;
	struct keel_token *token;
	struct keel_scope_result *results;
	uint32_t nresults; /* children finished */
	uint32_t cap;
	uint32_t spawned;  /* children spawned */
	uint32_t failures; /* children with status < 0 */
	int first_failure; /* status of the first failure, 0 if none */
	int policy;
	int waiting;	   /* owner waits: 1 for all, 2 for any */
	uint32_t any_seen; /* results already returned by join_any */
	struct keel_scope *next_owned;
};

/*
 * Open a scope owned by `owner`. Returns 0 or -ENOMEM.
 * Ownership: the scope must outlive its children: join it before the
 * owner exits (keel_scope_join), then keel_scope_fini.
 */
int keel_scope_init(struct keel_task *owner, struct keel_scope *scope,
		    enum keel_scope_policy policy);

/* Release the scope's token and results (after the join). */
void keel_scope_fini(struct keel_scope *scope);

/*
 * Spawn a child into the scope (flags: a keel_prio). Returns its zeroed
 * frame or NULL (-ENOMEM). The child observes the scope's token.
 */
void *keel_scope_spawn(struct keel_scope *scope,
		       const struct keel_task_type *type, unsigned flags);

/*
 * Await every child. keel_res: 0 if none failed; else, for FAIL_FAST the
 * first failure's status, for COLLECT -ECHILD (see the results). A scope
 * whose deadline passed reports -ETIMEDOUT if a child failed because of it.
 */
int keel_scope_join(struct keel_task *self, struct keel_scope *scope);

/*
 * Await the next child to finish (in finishing order); keel_res is its
 * exit status, -ECHILD when every child has been reported.
 */
int keel_scope_join_any(struct keel_task *self, struct keel_scope *scope);

/* Cancel every child (the scope's token). */
void keel_scope_cancel(struct keel_scope *scope);

/* A deadline for the whole scope, `ns` from now. Returns 0 or -ENOMEM. */
int keel_scope_set_timeout(struct keel_scope *scope, uint64_t ns);

/* The finished children's results, in finishing order. */
static inline const struct keel_scope_result *
keel_scope_results(const struct keel_scope *scope, uint32_t *n)
{
	*n = scope->nresults;
	return scope->results;
}

#ifdef __cplusplus
}
#endif
#endif
