/* SPDX-License-Identifier: MIT */
/*
 * list.h: keel's one intrusive list. Items embed a struct keel__link; the
 * head is one pointer, to the first link. Links are NULL-ended forwards,
 * and the first link's prev points to the last one, so appending is O(1)
 * too (the shape of glibc's and BSD's TAILQ folded into one head pointer).
 *
 * Why not circular with a sentinel (Linux's list_head, libuv's uv__queue):
 * a zeroed head here is an empty list and a head may be copied or moved, so
 * lists live in calloc'd or caller-zeroed structs (tokens, task exts,
 * streams, sync objects) with no init call and no self-pointers, and a
 * head costs 8 bytes (a token has three). The price is that removing an
 * item needs its head; every user knows it (a waiter's owner, a callback's
 * token...). A link does not record whether it is on a list: its owner
 * keeps that state, as it must anyway to find the head. Links are not
 * cleared on removal.
 *
 * struct keel__link itself is declared in keel/task.h, because public
 * structs with private fields embed it (keel_token_cb, keel_recv_stream).
 *
 * The run queues (struct keel__taskq) are not keel__lists: they link tasks
 * through the one next pointer of the 64-byte task header, where a second
 * pointer does not fit; see core.h.
 */
#ifndef KEEL_LIST_H
#define KEEL_LIST_H

#include <keel/task.h>
#include <stdbool.h>
#include <stddef.h>

struct keel__list {
	struct keel__link *first; /* its prev is the last link */
};

/* The item holding `link` (of type `type`, embedding it as `member`). */
#define keel__list_entry(link, type, member)                                   \
	keel_container_of(link, type, member)

/* Walk `l`; `it` may not be removed (use _safe for that). */
#define keel__list_for_each(it, l)                                             \
	for ((it) = (l)->first; (it); (it) = (it)->next)

/* Walk `l` while removing (or freeing) `it`; `tmp` holds the next link. */
#define keel__list_for_each_safe(it, tmp, l)                                   \
	for ((it) = (l)->first; (it) && ((tmp) = (it)->next, 1); (it) = (tmp))

static inline void keel__list_init(struct keel__list *l)
{
	l->first = NULL;
}

static inline bool keel__list_empty(const struct keel__list *l)
{
	return l->first == NULL;
}

static inline struct keel__link *keel__list_last(const struct keel__list *l)
{
	return l->first ? l->first->prev : NULL;
}

static inline void keel__list_push_back(struct keel__list *l,
					struct keel__link *n)
{
	struct keel__link *first = l->first;

	n->next = NULL;
	if (first) {
		n->prev = first->prev;
		first->prev->next = n;
		first->prev = n;
	} else {
		n->prev = n;
		l->first = n;
	}
}

static inline void keel__list_push_front(struct keel__list *l,
					 struct keel__link *n)
{
	struct keel__link *first = l->first;

	n->next = first;
	if (first) {
		n->prev = first->prev;
		first->prev = n;
	} else {
		n->prev = n;
	}
	l->first = n;
}

/* Unlink `n`, which must be on `l`. */
static inline void keel__list_remove(struct keel__list *l, struct keel__link *n)
{
	struct keel__link *next = n->next;

	if (n == l->first)
		l->first = next;
	else
		n->prev->next = next;
	/* Whoever follows takes n's prev; with none, n was the last and
	 * the first link's prev (if any is left) must name the new last. */
	if (next)
		next->prev = n->prev;
	else if (l->first)
		l->first->prev = n->prev;
}

/* Unlink and return the first link, or NULL if `l` is empty. */
static inline struct keel__link *keel__list_pop_front(struct keel__list *l)
{
	struct keel__link *n = l->first;

	if (n) {
		l->first = n->next;
		if (n->next)
			n->next->prev = n->prev;
	}
	return n;
}

/* Move every item of `from` to `to` (which is overwritten); `from` is left
 * empty. To detach a whole list under a lock and walk it after. */
static inline void keel__list_move(struct keel__list *to,
				   struct keel__list *from)
{
	*to = *from;
	keel__list_init(from);
}

#endif
