/* SPDX-License-Identifier: MIT */
/*
 * scope.c: structured concurrency: a scope owns its children, collects each
 * one's exit status, and cannot be joined before all have finished.
 *
 * Invariants:
 * - Every child observes the scope's token (a child of the owner's), so
 *   cancelling the owner, the scope, or reaching its deadline stops them.
 * - The owner's join waits for every child whatever happens to the owner's
 *   token: that wait cannot be cancelled, only made short by cancelling the
 *   children (which the same cancellation does).
 * - Results are recorded in finishing order; an aborted child's message is
 *   moved into its result and owned by the scope until keel_scope_fini().
 */
#include "core.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

int keel_scope_init(struct keel_task *owner, struct keel_scope *scope,
		    enum keel_scope_policy policy)
{
	struct keel__task_ext *x = keel__task_ext(owner);

	memset(scope, 0, sizeof(*scope));
	if (!x)
		return -ENOMEM;
	scope->owner = owner;
	scope->policy = policy;
	int err =
	    keel_token_new(owner->loop, keel_task_token(owner), &scope->token);
	if (!err) {
		scope->next_owned = x->owned;
		x->owned = scope;
	}
	return err;
}

/* The owner exits with the scope open: cancel and orphan its children. */
void keel__scope_orphan_all(struct keel_task *owner)
{
	struct keel__core *c = keel__core_of(owner->loop);

	while (owner->ext && owner->ext->owned) {
		struct keel_scope *scope = owner->ext->owned;

		keel_token_cancel(scope->token);
		for (uint32_t i = 0; i < c->nslots; i++) {
			struct keel_task *t = c->slots[i].task;

			if (t && t->ext && t->ext->scope == scope)
				t->ext->scope = NULL;
		}
		keel_scope_fini(scope);
	}
}

void keel_scope_fini(struct keel_scope *scope)
{
	if (scope->owner && scope->owner->ext) {
		struct keel_scope **p = &scope->owner->ext->owned;

		while (*p && *p != scope)
			p = &(*p)->next_owned;
		if (*p)
			*p = scope->next_owned;
	}
	for (uint32_t i = 0; i < scope->nresults; i++)
		keel__abort_clear(&scope->results[i].abort);
	free(scope->results);
	if (scope->token)
		keel_token_release(scope->token);
	memset(scope, 0, sizeof(*scope));
}

void *keel_scope_spawn(struct keel_scope *scope,
		       const struct keel_task_type *type, unsigned flags)
{
	/* Room for its result now, so that recording it cannot fail. */
	if (scope->spawned == scope->cap) {
		uint32_t cap = scope->cap ? scope->cap * 2 : 8;
		struct keel_scope_result *r =
		    realloc(scope->results, cap * sizeof(*r));

		if (!r)
			return NULL;
		scope->results = r;
		scope->cap = cap;
	}
	void *frame = keel__spawn(scope->owner->loop, type,
				  flags & KEEL_SPAWN_PRIO_MASK, true);

	if (!frame)
		return NULL;
	struct keel_task *t = keel_task_of(type, frame);

	/* The ext exists (keel__spawn): observing cannot fail. */
	keel_task_set_token(t, scope->token);
	t->ext->scope = scope;
	t->ext->scope_index = scope->spawned++;
	return frame;
}

static int join_result(const struct keel_scope *scope)
{
	if (!scope->failures)
		return 0;
	if (scope->token->cause == -ETIMEDOUT)
		return -ETIMEDOUT;
	return scope->policy == KEEL_SCOPE_FAIL_FAST ? scope->first_failure
						     : -ECHILD;
}

void keel__scope_child_exited(struct keel_task *t, int status)
{
	struct keel_scope *scope = t->ext->scope;
	struct keel_scope_result *r = &scope->results[scope->nresults++];

	memset(r, 0, sizeof(*r));
	r->index = t->ext->scope_index;
	r->status = status;
	if (status == KEEL_ABORTED)
		keel__abort_transfer(t, &r->abort);
	t->ext->scope = NULL;
	if (status < 0) {
		if (!scope->failures++)
			scope->first_failure = status;
		if (scope->policy == KEEL_SCOPE_FAIL_FAST)
			keel_token_cancel(scope->token);
	}
	if (scope->waiting == 1 && scope->nresults == scope->spawned) {
		scope->waiting = 0;
		keel__task_complete(scope->owner, join_result(scope));
	} else if (scope->waiting == 2) {
		scope->waiting = 0;
		keel__task_complete(scope->owner,
				    scope->results[scope->any_seen++].status);
	}
}

int keel_scope_join(struct keel_task *self, struct keel_scope *scope)
{
	if (scope->nresults == scope->spawned)
		return keel__task_ready(self, join_result(scope));
	scope->waiting = 1;
	return keel__task_suspend(self);
}

int keel_scope_join_any(struct keel_task *self, struct keel_scope *scope)
{
	if (scope->any_seen < scope->nresults)
		return keel__task_ready(
		    self, scope->results[scope->any_seen++].status);
	if (scope->any_seen == scope->spawned)
		return keel__task_ready(self, -ECHILD);
	scope->waiting = 2;
	return keel__task_suspend(self);
}

void keel_scope_cancel(struct keel_scope *scope)
{
	keel_token_cancel(scope->token);
}

int keel_scope_set_timeout(struct keel_scope *scope, uint64_t ns)
{
	return keel_token_set_timeout(scope->token, ns);
}
