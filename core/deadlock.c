/* SPDX-License-Identifier: MIT */
/*
 * deadlock.c: the wait-for graph of a loop and its cycles.
 *
 * Nothing is kept up to date for it: when a dump, the stall detector or
 * keel_loop_deadlocks() asks, each waiting task of the loop says what it
 * waits for and which tasks can end that wait (core.h's struct keel__wf,
 * answered by the primitive's own bookkeeping: a mutex's holder, a
 * mailbox's last receiver, a join's target). Those are the graph's edges;
 * a depth-first search reports one cycle per back edge it meets. A wait
 * whose releaser is not known (a semaphore's permits, a condition
 * variable's signal, an op in the kernel) has no edge, so it can hide a
 * cycle but never make one up.
 *
 * A task named as a releaser may have exited (a mutex left locked by its
 * holder): every edge is checked against the task table first, so freed
 * memory is never read.
 */
#include "core.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A live task of the table, for finding a releaser's slot. */
struct node_key {
	const struct keel_task *t;
	uint32_t slot;
};

static int key_cmp(const void *a, const void *b)
{
	const struct node_key *x = a, *y = b;

	return x->t < y->t ? -1 : x->t > y->t;
}

/* The slot of live task `t`, or -1 (exited and freed, or never one). */
static int64_t slot_of(const struct node_key *keys, uint32_t nkeys,
		       const struct keel_task *t)
{
	struct node_key k = {.t = t};
	const struct node_key *f =
	    bsearch(&k, keys, nkeys, sizeof(*keys), key_cmp);

	return f ? (int64_t)f->slot : -1;
}

/* What `t` waits for, if it waits in a wait of keel's own. */
static bool waits_for(struct keel_task *t, struct keel__wf *wf)
{
	memset(wf, 0, sizeof(*wf));
	if (!(t->flags & KEEL__T_WAITING) || (t->flags & KEEL__T_EXITED) ||
	    !t->ext || !t->ext->wait_cancel)
		return false;
	return keel__sync_waits_for(t, wf) || keel__mb_waits_for(t, wf) ||
	       keel__join_waits_for(t, wf);
}

/* snprintf into what is left of a buffer, counting what it needs. */
struct out {
	char *buf;
	size_t len, used;
};

static void __attribute__((format(printf, 2, 3)))
put(struct out *o, const char *fmt, ...)
{
	va_list ap;
	size_t room = o->used < o->len ? o->len - o->used : 0;

	va_start(ap, fmt);
	int n = vsnprintf(room ? o->buf + o->used : NULL, room, fmt, ap);

	va_end(ap);
	if (n > 0)
		o->used += (size_t)n;
}

static void put_task(struct out *o, const struct keel_task *t)
{
	put(o, "task %u (%s)", t->id, t->type->name);
}

/* One cycle, `cyc[0]` -> `cyc[1]` -> ... -> `cyc[0]`, as one line;
 * `via[i]`: which of cyc[i]'s releasers is cyc[i + 1]. */
static void put_cycle(struct out *o, struct keel__core *c,
		      const struct keel__wf *wf, const uint32_t *cyc,
		      const uint8_t *via, uint32_t n)
{
	put(o, "deadlock: ");
	for (uint32_t i = 0; i < n; i++) {
		const struct keel_task *t = c->slots[cyc[i]].task;
		const struct keel_task *next = c->slots[cyc[(i + 1) % n]].task;
		const struct keel__wf *w = &wf[cyc[i]];

		if (i == 0)
			put_task(o, t);
		put(o, "%s waits", i ? ", which" : "");
		if (t->at)
			put(o, " at %s:%d `%s`", t->at->file, t->at->line,
			    t->at->what);
		put(o, " for %s ", w->what);
		if (w->obj && w->last_ahead && via[i] == w->n - 1)
			put(o, "%p queued behind ", w->obj);
		else if (w->obj)
			put(o, "%p %s ", w->obj, w->rel ? w->rel : "for");
		put_task(o, next);
	}
	put(o, "\n");
}

/* A cycle's signature, whatever task it is entered from. */
static uint64_t cycle_sig(struct keel__core *c, const uint32_t *cyc, uint32_t n)
{
	uint64_t sig = 0;

	for (uint32_t i = 0; i < n; i++) {
		uint64_t s = ((uint64_t)c->slots[cyc[i]].gen << 32) | cyc[i];

		sig += keel__rand64(&s);
	}
	return sig;
}

int keel__deadlock_check(struct keel_loop *loop, char *buf, size_t len,
			 size_t *need)
{
	struct keel__core *c = keel__core_of(loop);
	uint32_t n = c->nslots, nkeys = 0, depth = 0;
	int cycles = 0;
	struct out o = {.buf = buf, .len = len};
	uint64_t seen[16];
	uint32_t nseen = 0;

	if (buf && len)
		buf[0] = '\0';
	struct node_key *keys = calloc(n ? n : 1, sizeof(*keys));
	struct keel__wf *wf = calloc(n ? n : 1, sizeof(*wf));
	/* Per slot: its edges (slots), DFS colour and next edge to try. */
	uint32_t *edge =
	    calloc((size_t)(n ? n : 1) * KEEL__WF_MAX, sizeof(*edge));
	uint8_t *edge_by = calloc((size_t)(n ? n : 1) * KEEL__WF_MAX, 1);
	uint8_t *nedge = calloc(n ? n : 1, 1);
	uint8_t *via = calloc(n ? n : 1, 1);
	uint8_t *colour = calloc(n ? n : 1, 1); /* 0 new, 1 on path, 2 done */
	uint8_t *next = calloc(n ? n : 1, 1);
	uint32_t *path = calloc(n ? n : 1, sizeof(*path));
	uint8_t *via_path = calloc(n ? n : 1, 1);

	if (!keys || !wf || !edge || !edge_by || !nedge || !via || !colour ||
	    !next || !path || !via_path) {
		cycles = -ENOMEM;
		goto out;
	}
	for (uint32_t i = 0; i < n; i++)
		if (c->slots[i].task)
			keys[nkeys++] =
			    (struct node_key){.t = c->slots[i].task, .slot = i};
	qsort(keys, nkeys, sizeof(*keys), key_cmp);
	for (uint32_t i = 0; i < n; i++) {
		struct keel_task *t = c->slots[i].task;

		if (!t || !waits_for(t, &wf[i]))
			continue;
		for (unsigned e = 0; e < wf[i].n; e++) {
			int64_t to = slot_of(keys, nkeys, wf[i].by[e]);

			/* An exited releaser ends no wait: no edge. */
			if (to < 0 ||
			    (wf[i].by_gen[e] &&
			     wf[i].by_gen[e] != c->slots[to].gen) ||
			    (c->slots[to].task->flags & KEEL__T_EXITED))
				continue;
			edge_by[(size_t)i * KEEL__WF_MAX + nedge[i]] =
			    (uint8_t)e;
			edge[(size_t)i * KEEL__WF_MAX + nedge[i]++] =
			    (uint32_t)to;
		}
	}
	/* A scope's owner joining it waits for each child still running (the
	 * first KEEL__WF_MAX of them: a cycle through another is missed). */
	for (uint32_t i = 0; i < n; i++) {
		struct keel_task *t = c->slots[i].task;
		struct keel_scope *sc = t && t->ext ? t->ext->scope : NULL;
		struct keel_task *owner = sc ? sc->owner : NULL;

		if (!sc || !sc->waiting || (t->flags & KEEL__T_EXITED) ||
		    !owner || !(owner->flags & KEEL__T_WAITING) ||
		    owner->ext->wait_cancel || nedge[owner->id] == KEEL__WF_MAX)
			continue;
		wf[owner->id].what = "scope";
		wf[owner->id].obj = sc;
		wf[owner->id].rel = "with child";
		edge_by[(size_t)owner->id * KEEL__WF_MAX + nedge[owner->id]] =
		    (uint8_t)wf[owner->id].n;
		wf[owner->id].by[wf[owner->id].n++] = t;
		edge[(size_t)owner->id * KEEL__WF_MAX + nedge[owner->id]++] = i;
	}
	/* Depth-first, without recursion: `path` is the current path. */
	for (uint32_t root = 0; root < n; root++) {
		if (colour[root] || !nedge[root])
			continue;
		path[depth++] = root;
		colour[root] = 1;
		while (depth) {
			uint32_t v = path[depth - 1];

			if (next[v] == nedge[v]) {
				colour[v] = 2;
				depth--;
				continue;
			}
			size_t e = (size_t)v * KEEL__WF_MAX + next[v]++;
			uint32_t w = edge[e];

			via[v] = edge_by[e];

			if (colour[w] == 0) {
				colour[w] = 1;
				path[depth++] = w;
			} else if (colour[w] == 1) {
				uint32_t from = depth - 1;

				while (path[from] != w)
					from--;
				/* The cycle's edges from each task are the
				 * first ones found: print those. */
				cycles++;
				for (uint32_t k = from; k < depth; k++)
					via_path[k - from] = via[path[k]];
				put_cycle(&o, c, wf, &path[from], via_path,
					  depth - from);
				uint64_t sig =
				    cycle_sig(c, &path[from], depth - from);
				bool known = false;

				for (uint32_t k = 0; k < c->deadlock_nseen; k++)
					known |= c->deadlock_seen[k] == sig;
				if (!known)
					c->deadlocks++;
				if (nseen < 16)
					seen[nseen++] = sig;
			}
		}
	}
	memcpy(c->deadlock_seen, seen, nseen * sizeof(seen[0]));
	c->deadlock_nseen = nseen;
out:
	free(keys);
	free(wf);
	free(edge);
	free(edge_by);
	free(nedge);
	free(via);
	free(via_path);
	free(colour);
	free(next);
	free(path);
	if (need)
		*need = o.used;
	return cycles;
}
