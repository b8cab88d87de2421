/* SPDX-License-Identifier: MIT */
/*
 * cancel.c: cancellation tokens: the tree, deadlines, callbacks, and the
 * tasks that observe each token.
 *
 * Invariants:
 * - A token's cause is set once (first cause wins) and never cleared.
 * - A cancelled token's descendants are cancelled with the same cause, and
 *   a token created under a cancelled parent starts cancelled.
 * - Observers are tasks that have not exited; an exiting task leaves its
 *   token's list (keel__task_drop_token) and drops its reference.
 * - A child holds a reference on its parent, so a parent outlives its
 *   children; the parent's child list is weak (a child unlinks itself when
 *   freed).
 * Cancelling never runs task code: it cancels the observers' ops and wakes
 * them; they see the outcome at their await.
 */
#include "core.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static int token_alloc(struct keel_loop *loop, struct keel_token *parent,
		       struct keel_token **out)
{
	struct keel_token *tok = calloc(1, sizeof(*tok));

	if (!tok)
		return -ENOMEM;
	tok->loop = loop;
	tok->refs = 1;
	tok->deadline = UINT64_MAX;
	keel_timer_init(&tok->timer, NULL, tok);
	if (parent) {
		tok->parent = keel_token_ref(parent);
		keel__list_push_front(&parent->children, &tok->sibling);
		tok->cause = parent->cause;
		keel__cancelled_add(keel__core_of(loop), tok->cause != 0);
	}
	*out = tok;
	return 0;
}

int keel__tokens_init(struct keel__core *c, struct keel_loop *loop)
{
	return token_alloc(loop, NULL, &c->root);
}

void keel__tokens_fini(struct keel__core *c)
{
	if (c->root) {
		/* Tokens still held keep the root: they must not count. */
		c->root->loop_gone = true;
		keel_token_release(c->root);
	}
	c->root = NULL;
}

/* A cancelled token goes: its loop counts one fewer, unless the loop went
 * first (a token may be released after it; its root knows). */
static void uncount(const struct keel_token *tok)
{
	const struct keel_token *root = tok;

	while (root->parent)
		root = root->parent;
	if (!root->loop_gone)
		keel__cancelled_add(keel__core_of(tok->loop), -1);
}

int keel_token_new(struct keel_loop *loop, struct keel_token *parent,
		   struct keel_token **out)
{
	if (!parent)
		parent = keel__core_of(loop)->root;
	return token_alloc(loop, parent, out);
}

struct keel_token *keel_token_ref(struct keel_token *tok)
{
	tok->refs++;
	return tok;
}

void keel_token_release(struct keel_token *tok)
{
	while (tok && --tok->refs == 0) {
		struct keel_token *parent = tok->parent;

		if (keel_timer_armed(&tok->timer))
			keel_timer_cancel(tok->loop, &tok->timer);
		/* Children hold references, so there are none left; pending
		 * callbacks just lose their token. */
		struct keel__link *n;

		keel__list_for_each (n, &tok->callbacks)
			keel__list_entry(n, struct keel_token_cb, link)->tok =
			    NULL;
		if (parent)
			keel__list_remove(&parent->children, &tok->sibling);
		if (tok->cause)
			uncount(tok);
		free(tok);
		tok = parent; /* drop the reference the child held */
	}
}

struct keel_token *keel_loop_token(struct keel_loop *loop)
{
	return keel__core_of(loop)->root;
}

int keel_token_cause(const struct keel_token *tok)
{
	return tok->cause;
}

/* Wake `t` from its await because its token was cancelled. */
static void wake_cancelled(struct keel_task *t, int cause)
{
	struct keel__core *c = keel__core_of(t->loop);

	if (!(t->flags & KEEL__T_WAITING))
		return; /* it will see the cause at its next await */
	/* Both: a task may wait on a mailbox with a stream open. */
	if (t->inflight)
		c->hooks.cancel_ops(t); /* results arrive as CQEs */
	if (t->ext && t->ext->wait_cancel)
		t->ext->wait_cancel(t);
	/* Else the wait cannot be cancelled (a scope join waits for its
	 * children, which this same cancellation stops). */
	(void)cause;
}

/* The loop's root token observers are implicit: every task without one. */
static void cancel_root_observers(struct keel__core *c, int cause)
{
	for (uint32_t i = 0; i < c->nslots; i++) {
		struct keel_task *t = c->slots[i].task;

		if (t && !(t->flags & KEEL__T_EXITED) &&
		    !(t->ext && t->ext->token))
			wake_cancelled(t, cause);
	}
}

static void token_cancel(struct keel_token *tok, int cause)
{
	struct keel__core *c = keel__core_of(tok->loop);

	if (tok->cause)
		return;
	tok->cause = cause;
	keel__cancelled_add(c, 1);
	keel_token_ref(tok); /* callbacks may drop the last reference */
	if (keel_timer_armed(&tok->timer))
		keel_timer_cancel(tok->loop, &tok->timer);
	while (!keel__list_empty(&tok->callbacks)) {
		struct keel_token_cb *cb = keel__list_entry(
		    tok->callbacks.first, struct keel_token_cb, link);

		keel_token_cb_remove(cb);
		cb->fn(tok, cause, cb->arg);
	}
	if (tok == c->root)
		cancel_root_observers(c, cause);
	struct keel__link *n, *next;

	keel__list_for_each_safe (n, next, &tok->observers)
		wake_cancelled(
		    keel__list_entry(n, struct keel__task_ext, tok_link)->task,
		    cause);
	/* Hold each child across its cancel: callbacks may release it (so
	 * the next link is read after the cancel, not before). */
	for (n = tok->children.first; n; n = next) {
		struct keel_token *ch =
		    keel__list_entry(n, struct keel_token, sibling);

		keel_token_ref(ch);
		token_cancel(ch, cause);
		next = ch->sibling.next;
		keel_token_release(ch);
	}
	keel_token_release(tok);
}

void keel_token_cancel(struct keel_token *tok)
{
	token_cancel(tok, -ECANCELED);
}

static void deadline_fired(struct keel_loop *loop, struct keel_timer *timer,
			   void *arg)
{
	token_cancel(arg, -ETIMEDOUT);
}

int keel_token_set_deadline(struct keel_token *tok, uint64_t deadline_ns)
{
	tok->deadline = deadline_ns;
	if (tok->cause)
		return 0;
	if (deadline_ns == UINT64_MAX) {
		if (keel_timer_armed(&tok->timer))
			keel_timer_cancel(tok->loop, &tok->timer);
		return 0;
	}
	/* A parent's earlier deadline cancels this token anyway. */
	tok->timer.fn = deadline_fired;
	return keel_timer_arm(tok->loop, &tok->timer, deadline_ns);
}

int keel_token_set_timeout(struct keel_token *tok, uint64_t ns)
{
	return keel_token_set_deadline(tok, keel__clock_now() + ns);
}

uint64_t keel_token_deadline(const struct keel_token *tok)
{
	uint64_t d = UINT64_MAX;

	for (; tok; tok = tok->parent)
		if (tok->deadline < d)
			d = tok->deadline;
	return d;
}

void keel_token_on_cancel(struct keel_token *tok, struct keel_token_cb *cb,
			  keel_token_fn fn, void *arg)
{
	cb->fn = fn;
	cb->arg = arg;
	cb->tok = NULL;
	cb->link.next = cb->link.prev = NULL;
	if (tok->cause) {
		fn(tok, tok->cause, arg);
		return;
	}
	cb->tok = tok;
	keel__list_push_front(&tok->callbacks, &cb->link);
}

void keel_token_cb_remove(struct keel_token_cb *cb)
{
	struct keel_token *tok = cb->tok;

	if (!tok)
		return;
	keel__list_remove(&tok->callbacks, &cb->link);
	cb->tok = NULL;
}

struct keel__task_ext *keel__task_ext_new(struct keel_task *t)
{
	t->ext = calloc(1, sizeof(*t->ext));
	if (t->ext)
		t->ext->task = t;
	return t->ext;
}

static void observe(struct keel__task_ext *x, struct keel_token *tok)
{
	x->token = keel_token_ref(tok);
	keel__list_push_front(&tok->observers, &x->tok_link);
}

static void unobserve(struct keel__task_ext *x)
{
	struct keel_token *tok = x->token;

	if (!tok)
		return;
	keel__list_remove(&tok->observers, &x->tok_link);
	x->token = NULL;
	keel_token_release(tok);
}

void keel__task_drop_token(struct keel_task *t)
{
	if (t->ext)
		unobserve(t->ext);
}

struct keel_token *keel_task_token(const struct keel_task *t)
{
	if (t->ext && t->ext->token)
		return t->ext->token;
	return ((const struct keel__core *)t->loop)->root;
}

int keel_task_set_token(struct keel_task *t, struct keel_token *tok)
{
	struct keel__task_ext *x = keel__task_ext(t);

	if (!x)
		return -ENOMEM;
	keel_token_ref(tok); /* before unobserve: tok may be the old one */
	unobserve(x);
	observe(x, tok);
	keel_token_release(tok);
	if (tok->cause)
		wake_cancelled(t, tok->cause);
	return 0;
}

int keel__task_inherit_token(struct keel_task *child,
			     const struct keel_task *parent)
{
	if (!parent || !parent->ext || !parent->ext->token)
		return 0; /* the root token, implicitly */
	return keel_task_set_token(child, parent->ext->token);
}

/* Whether `tok` is `anc` or below it. */
static bool descends_from(const struct keel_token *tok,
			  const struct keel_token *anc)
{
	for (; tok; tok = tok->parent)
		if (tok == anc)
			return true;
	return false;
}

/*
 * The scopes `t` owns hang off the token it had when each was opened, not
 * off the new one keel_task_cancel() gives it: cancel their tokens too, as
 * cancelling the task's own token would have (their children must stop and
 * the owner's join end). Scopes opened under a shield stay: their work is
 * the cleanup the shield protects.
 */
static void cancel_owned_scopes(struct keel_task *t)
{
	for (struct keel_scope *sc = t->ext->owned; sc; sc = sc->next_owned) {
		bool shielded = false;

		for (struct keel_shield *s = t->ext->shield; s && !shielded;
		     s = s->prev)
			shielded = descends_from(sc->token, s->own);
		if (!shielded && sc->token)
			keel_token_cancel(sc->token);
	}
}

int keel_task_cancel(struct keel_task *t)
{
	struct keel_token *tok;
	struct keel_shield *s = t->ext ? t->ext->shield : NULL;
	int err;

	if (s) {
		while (s->prev)
			s = s->prev;
		err = keel_token_new(t->loop, s->saved, &tok);
		if (err)
			return err;
		keel_token_cancel(tok);
		if (s->saved)
			keel_token_release(s->saved);
		s->saved = tok;
		cancel_owned_scopes(t);
		return 0;
	}
	err = keel_token_new(t->loop, keel_task_token(t), &tok);
	if (err)
		return err;
	err = keel_task_set_token(t, tok);
	if (!err) {
		keel_token_cancel(tok);
		cancel_owned_scopes(t);
	}
	keel_token_release(tok);
	return err;
}

int keel_shield_begin(struct keel_task *t, struct keel_shield *s,
		      uint64_t timeout_ns)
{
	struct keel__task_ext *x = keel__task_ext(t);
	int err;

	if (!x)
		return -ENOMEM;
	/* A token of its own, outside the tree: nothing cancels it but its
	 * own deadline. */
	err = token_alloc(t->loop, NULL, &s->own);
	if (err)
		return err;
	if (timeout_ns != UINT64_MAX &&
	    (err = keel_token_set_timeout(s->own, timeout_ns))) {
		keel_token_release(s->own);
		return err;
	}
	s->saved = x->token ? keel_token_ref(x->token) : NULL;
	unobserve(x);
	observe(x, s->own);
	s->prev = x->shield;
	x->shield = s;
	return 0;
}

void keel_shield_end(struct keel_task *t, struct keel_shield *s)
{
	struct keel__task_ext *x = t->ext;

	x->shield = s->prev;
	unobserve(x);
	if (s->saved) {
		observe(x, s->saved);
		keel_token_release(s->saved);
	}
	keel_token_release(s->own);
	s->saved = s->own = NULL;
	/* Level-triggered: the restored token may have been cancelled while
	 * the shield was up; the next await reports it. */
}
