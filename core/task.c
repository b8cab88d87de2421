/* SPDX-License-Identifier: MIT */
/*
 * task.c: task lifecycle: spawn, wake, yield, exit, join, detach, the defer
 * stack and the task table.
 *
 * Invariants:
 * - A task is on at most one run queue (KEEL__T_QUEUED), and a queued task
 *   is never also waiting (KEEL__T_WAITING).
 * - An exited task runs no more code. Its frame is freed only when the
 *   kernel has returned all its ops (inflight == 0) and nobody can still
 *   join it (detached, or joined: KEEL__T_RELEASED).
 * - The task table holds every frame not yet freed, so a dump can list them
 *   and a (slot, generation) handle can tell a live task from a reused slot.
 */
#include "core.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

_Static_assert(sizeof(struct keel_task) <= 64, "task header exceeds 64 bytes");

int keel__core_init(struct keel__core *c)
{
	memset(c, 0, sizeof(*c));
	c->cap_slots = 64;
	c->slots = malloc(c->cap_slots * sizeof(*c->slots));
	if (!c->slots)
		return -ENOMEM;
	int err = keel__alloc_init(&c->alloc);

	/* The core is the first member of its loop (see the top of core.h). */
	if (!err)
		err = keel__tokens_init(c, (struct keel_loop *)c);
	return err;
}

void keel__core_fini(struct keel__core *c)
{
	keel__tokens_fini(c);
	keel__sleeps_fini(c);
	keel__alloc_fini(&c->alloc);
	free(c->slots);
	c->slots = NULL;
}

/* No slot left in the allocation: double it (the new slots are initialised
 * only when first handed out, in slot_take()). Out of line: rare. */
static __attribute__((noinline)) int slots_grow(struct keel__core *c)
{
	uint32_t n = c->cap_slots * 2;
	struct keel__task_slot *s = realloc(c->slots, n * sizeof(*s));

	if (!s)
		return -ENOMEM;
	c->slots = s;
	c->cap_slots = n;
	return 0;
}

/*
 * A freed slot first; else the next never used one, initialised only now:
 * a table grown to 16,384 slots for 10,000 tasks touched 26 bytes per task
 * when each growth was initialised up front, 16 this way.
 */
static inline int slot_take(struct keel__core *c, struct keel_task *t)
{
	uint32_t id;

	if (c->free_slot) {
		id = c->free_slot - 1;
		c->free_slot = c->slots[id].next_free;
	} else {
		if (c->nslots == c->cap_slots && slots_grow(c))
			return -ENOMEM;
		id = c->nslots++;
		c->slots[id].gen = 0;
	}
	c->slots[id].task = t;
	c->slots[id].gen++;
	t->id = id;
	return 0;
}

/* The generation moves on when the slot is taken again: a free slot holds
 * no task, which is all a reader of a free one needs to know. */
static void slot_release(struct keel__core *c, uint32_t id)
{
	c->slots[id].task = NULL;
	c->slots[id].next_free = c->free_slot;
	c->free_slot = id + 1;
}

/* A frame's size: it holds its task's header, so it is never under 64
 * bytes (the allocator's smallest class), which spares the allocator's
 * inline paths their test for smaller blocks. */
static inline size_t frame_size(const struct keel_task_type *type)
{
	size_t size = type->frame_size;

	if (size < sizeof(struct keel_task))
		__builtin_unreachable();
	return size;
}

/*
 * keel_spawn() and keel__spawn() in one body, inlined into each, so that
 * the plain spawn tests no `with_ext`. The frame comes zeroed (but for a
 * KEEL_TASK_TYPE_TAIL type's tail), so only the header's non-zero fields
 * are set; the task is queued directly (a new task cannot be waiting).
 */
static inline __attribute__((always_inline)) void *
spawn(struct keel_loop *loop, const struct keel_task_type *type, unsigned flags,
      bool with_ext)
{
	struct keel__core *c = keel__core_of(loop);
	/* A type's tail (KEEL_TASK_TYPE_TAIL) is left as allocated, but
	 * never the header. */
	size_t zero = type->zero_size;

	if (!zero || zero > type->frame_size)
		zero = type->frame_size;
	else if (zero < type->task_offset + sizeof(struct keel_task))
		zero = type->task_offset + sizeof(struct keel_task);
	void *frame = keel__alloc_part(&c->alloc, type->frame_size, zero);

	if (!frame)
		return NULL;
	struct keel_task *t = keel_task_of(type, frame);

	if (slot_take(c, t)) {
		keel__alloc_free(&c->alloc, frame, type->frame_size);
		return NULL;
	}
	if (with_ext && !keel__task_ext(t)) {
		slot_release(c, t->id);
		keel__alloc_free(&c->alloc, frame, type->frame_size);
		return NULL;
	}
	t->type = type;
	t->loop = loop;
	t->prio = (uint8_t)(flags & KEEL_SPAWN_PRIO_MASK);
	/* A task spawned by a running step observes its spawner's token. */
	if (c->current && c->current->ext && c->current->ext->token &&
	    keel__task_inherit_token(t, c->current)) {
		free(t->ext);
		slot_release(c, t->id);
		keel__alloc_free(&c->alloc, frame, type->frame_size);
		return NULL;
	}
	c->count.spawned++;
	KEEL__TRACE(c, KEEL_EV_SPAWN, 0, t->id,
		    keel__trace_str_name(c, type->name),
		    c->current ? c->current->id + 1 : 0);
	t->flags = (flags & KEEL_SPAWN_JOINABLE)
		       ? KEEL__T_JOINABLE | KEEL__T_QUEUED
		       : KEEL__T_QUEUED;
	keel__taskq_push(&c->runq[t->prio], t);
	c->runnable++;
	return frame;
}

static __attribute__((noinline)) void *
spawn_slow(struct keel_loop *loop, const struct keel_task_type *type,
	   unsigned flags)
{
	return spawn(loop, type, flags, false);
}

/*
 * The common spawn with no call in it (so no registers to save): a frame
 * off its class's free list, a free table slot, no token to inherit,
 * tracing off. Anything else goes the general way, which checks it all
 * again.
 */
void *keel_spawn(struct keel_loop *loop, const struct keel_task_type *type,
		 unsigned flags)
{
	struct keel__core *c = keel__core_of(loop);
	const struct keel_task *cur = c->current;
	size_t zero = type->zero_size;
	size_t size = frame_size(type);
	/* Read before the frame's stores, which the compiler cannot tell
	 * from the table's (it would read it again after them). */
	uint32_t id = c->free_slot - 1;
	unsigned prio = flags & KEEL_SPAWN_PRIO_MASK;
	struct keel__taskq *q;
	struct keel_task *t;
	char *frame;

	if ((cur && cur->ext && cur->ext->token) || !c->free_slot || c->trace ||
	    (zero && zero < size))
		return spawn_slow(loop, type, flags);
	frame = keel__alloc_try(&c->alloc, size, size);
	if (!frame)
		return spawn_slow(loop, type, flags);
	t = keel_task_of(type, frame);
	c->free_slot = c->slots[id].next_free;
	c->slots[id].task = t;
	c->slots[id].gen++;
	t->id = id;
	t->type = type;
	t->loop = loop;
	t->prio = (uint8_t)prio;
	/* KEEL_SPAWN_JOINABLE moved onto KEEL__T_JOINABLE: no branch. */
	_Static_assert(KEEL_SPAWN_JOINABLE >> 6 == KEEL__T_JOINABLE,
		       "the shift below maps the joinable flag");
	t->flags =
	    (uint8_t)(KEEL__T_QUEUED | ((flags >> 6) & KEEL__T_JOINABLE));
	c->count.spawned++;
	/* Not keel__taskq_push(): the frame came zeroed, `next` too. */
	q = &c->runq[prio];
	keel__taskq_append(q, t);
	c->runnable++;
	return frame;
}

void *keel__spawn(struct keel_loop *loop, const struct keel_task_type *type,
		  unsigned flags, bool with_ext)
{
	return spawn(loop, type, flags, with_ext);
}

void keel__task_wake_other(struct keel_task *t)
{
	/* Killed, and this wake was on its way: its last wait. */
	if (!(t->flags & (KEEL__T_QUEUED | KEEL__T_EXITED)))
		keel__task_kill_later(t);
}

/* The running task itself (an await): neither queued nor waiting, so
 * only its QUEUED bit changes (keel__task_enqueue() less its tests). */
int keel_yield(struct keel_task *t)
{
	struct keel__core *c = keel__core_of(t->loop);

	t->flags |= KEEL__T_QUEUED;
	keel__taskq_push(&c->runq[t->prio], t);
	c->runnable++;
	return KEEL_PENDING;
}

const char *keel_task_name(const struct keel_task *t)
{
	return t->type->name;
}

static void ext_free(struct keel_task *t)
{
	keel__task_drop_token(t);
	keel__abort_clear(&t->ext->abort);
	keel__abort_clear(&t->ext->joined_abort);
	free(t->ext->defers);
	free(t->ext);
}

/* keel__task_free(), inlined into the join that releases a frame. */
static inline void task_free(struct keel_task *t)
{
	struct keel__core *c = keel__core_of(t->loop);

	if (t->ext)
		ext_free(t);
	slot_release(c, t->id);
	keel__alloc_free(&c->alloc, (char *)t - t->type->task_offset,
			 t->type->frame_size);
}

void keel__task_free(struct keel_task *t)
{
	task_free(t);
}

/* Free the frame if the kernel and any joiner are done with it. */
static void maybe_free(struct keel_task *t)
{
	if (!(t->flags & KEEL__T_EXITED) || t->inflight)
		return;
	if ((t->flags & KEEL__T_JOINABLE) && !(t->flags & KEEL__T_RELEASED))
		return;
	task_free(t);
}

void keel__task_run_defers(struct keel_task *t)
{
	if (t->ext)
		keel_defer_unwind(t, 0);
}

/* Hand the exit status (and an abort record) to the task joining `t`. */
static void deliver_to_joiner(struct keel_task *t, struct keel_task *joiner)
{
	struct keel__task_ext *jx = joiner->ext;

	t->joiner = NULL;
	t->flags |= KEEL__T_RELEASED;
	if (t->res == KEEL_ABORTED && (jx || (jx = keel__task_ext(joiner))))
		keel__abort_transfer(t, &jx->joined_abort);
	/* A select's branch: the select decides what its task learns. */
	if (joiner->flags & KEEL__T_SELECT) {
		jx->select_wake(joiner, t, t->res);
		return;
	}
	if (jx) {
		jx->join_target = NULL;
		jx->wait_cancel = NULL;
	}
	keel__task_complete(joiner, t->res);
}

/* The part of an exit before the EXITED flag that only a task with an
 * ext has: its cleanups and its shields. */
static void exit_unwind(struct keel_task *t, int status)
{
	/* The cleanups see the exit status in keel_res() (a supervisor's
	 * link reports it from there). */
	keel_defer_unwind(t, 0);
	t->res = status;
	/* Shields still up (an abort or a kill came in the middle) hold
	 * references on their tokens: give them back. */
	while (t->ext->shield)
		keel_shield_end(t, t->ext->shield);
}

/* ... and after it: scopes, the token. */
static void exit_release(struct keel_task *t, int status)
{
	keel__scope_orphan_all(t);
	keel__task_drop_token(t);
	if (t->ext->scope)
		keel__scope_child_exited(t, status);
}

static __attribute__((noinline)) int exit_slow(struct keel_task *t, int status)
{
	struct keel__core *c = keel__core_of(t->loop);

	t->res = status;
	if (t->ext)
		exit_unwind(t, status);
	t->flags = (uint8_t)((t->flags & ~KEEL__T_WAITING) | KEEL__T_EXITED);
	c->count.exited++;
	KEEL__TRACE(c, KEEL_EV_EXIT, 0, t->id, (int64_t)status, 0);
	if (t->ext)
		exit_release(t, status);
	if (t->joiner)
		deliver_to_joiner(t, t->joiner);
	return KEEL__EXITED;
}

/* The common exit, with no call: no ext (so no cleanups, scope or token),
 * nobody joining yet, tracing off. */
int keel_task_exit(struct keel_task *t, int status)
{
	struct keel__core *c = keel__core_of(t->loop);

	if (t->ext || t->joiner || c->trace)
		return exit_slow(t, status);
	t->res = status;
	t->flags = (uint8_t)((t->flags & ~KEEL__T_WAITING) | KEEL__T_EXITED);
	c->count.exited++;
	return KEEL__EXITED;
}

void keel__task_ops_drained(struct keel_task *t)
{
	if (!(t->flags & KEEL__T_EXITED))
		return;
	keel__core_of(t->loop)->count.zombies--;
	maybe_free(t);
}

static void join_cancelled(struct keel_task *self)
{
	struct keel__task_ext *sx = self->ext;

	sx->join_target->joiner = NULL;
	sx->join_target = NULL;
	sx->wait_cancel = NULL;
	keel__task_complete(self, keel__task_cancel_cause(self));
}

static __attribute__((noinline)) int join_slow(struct keel_task *self,
					       struct keel_task *target)
{
	int cause = keel__task_cancel_cause(self);

	/* The last join's abort record goes (only there is one: clearing
	 * an empty one costs a free(NULL) on every join). */
	if (self->ext && self->ext->joined_abort.file)
		keel__abort_clear(&self->ext->joined_abort);

	if (cause)
		return keel__task_ready(self, cause);
	if (target == self)
		return keel__task_ready(self, -EDEADLK);
	if (!(target->flags & KEEL__T_JOINABLE) ||
	    (target->flags & KEEL__T_RELEASED))
		return keel__task_ready(self, -EINVAL);
	if (target->joiner)
		return keel__task_ready(self, -EBUSY);
	if (target->flags & KEEL__T_EXITED) {
		int status = target->res;
		struct keel__task_ext *sx = self->ext;

		target->flags |= KEEL__T_RELEASED;
		if (status == KEEL_ABORTED &&
		    (sx || (sx = keel__task_ext(self))))
			keel__abort_transfer(target, &sx->joined_abort);
		/* Exited and released: free unless the kernel holds it. */
		if (!target->inflight)
			task_free(target);
		return keel__task_ready(self, status);
	}
	/* Registered so that a cancel can take the joiner back out. */
	struct keel__task_ext *sx = keel__task_ext(self);

	if (!sx)
		return keel__task_ready(self, -ENOMEM);
	sx->join_target = target;
	sx->wait_cancel = join_cancelled;
	target->joiner = self;
	return keel__task_suspend(self);
}

/*
 * The common join, with no call: no token of the loop cancelled, a joiner
 * with no abort record to clear, and a target that has exited (not joined,
 * no ext, no op in flight: its frame goes now), with allowance left for a
 * ready await. Anything else goes the general way. (An aborted target with
 * no ext has no abort record to hand on: the general way would only give
 * the joiner an empty one.) A large frame's free is the one call, and only
 * on its own path (the compiler saves no registers on the others).
 */
int keel_join(struct keel_task *self, struct keel_task *target)
{
	struct keel__core *c = keel__core_of(self->loop);
	const struct keel__task_ext *sx = self->ext;

	if ((sx && sx->joined_abort.file) || c->cancelled)
		return join_slow(self, target);
	if (target == self)
		return keel__task_ready(self, -EDEADLK);
	if ((target->flags &
	     (KEEL__T_JOINABLE | KEEL__T_EXITED | KEEL__T_RELEASED)) !=
		(KEEL__T_JOINABLE | KEEL__T_EXITED) ||
	    target->ext || target->inflight || c->ready_budget <= 0)
		return join_slow(self, target);
	/* An exited task has no joiner and is not self (which runs). */
	self->res = target->res;
	c->ready_budget--;
	slot_release(c, target->id);
	keel__alloc_free(&c->alloc, (char *)target - target->type->task_offset,
			 frame_size(target->type));
	return KEEL_READY;
}

int keel__join_select_check(struct keel_task *self, struct keel_task *target,
			    int *status)
{
	if (target == self)
		return -EDEADLK;
	if (!(target->flags & KEEL__T_JOINABLE) ||
	    (target->flags & KEEL__T_RELEASED))
		return -EINVAL;
	if (target->joiner)
		return -EBUSY;
	if (!(target->flags & KEEL__T_EXITED))
		return 0;
	/* As keel_join() of an exited task. */
	*status = target->res;
	target->flags |= KEEL__T_RELEASED;
	if (*status == KEEL_ABORTED && self->ext)
		keel__abort_transfer(target, &self->ext->joined_abort);
	maybe_free(target);
	return 1;
}

void keel_task_detach(struct keel_task *target)
{
	if (!(target->flags & KEEL__T_JOINABLE) ||
	    (target->flags & KEEL__T_RELEASED) || target->joiner)
		return;
	target->flags |= KEEL__T_RELEASED;
	maybe_free(target);
}

int keel_defer(struct keel_task *t, keel_defer_fn fn, void *arg)
{
	/* The one way to make the extension: it must know its task (a
	 * token's observer list reaches the task through it). */
	struct keel__task_ext *x = keel__task_ext(t);

	if (!x)
		return -ENOMEM;
	if (x->ndefers == x->cap) {
		unsigned cap = x->cap ? x->cap * 2 : 8;
		struct keel__defer_entry *d =
		    realloc(x->defers, cap * sizeof(*d));

		if (!d)
			return -ENOMEM;
		x->defers = d;
		x->cap = cap;
	}
	x->defers[x->ndefers].fn = fn;
	x->defers[x->ndefers].arg = arg;
	x->ndefers++;
	return 0;
}

unsigned keel_defer_mark(const struct keel_task *t)
{
	return t->ext ? t->ext->ndefers : 0;
}

void keel_defer_unwind(struct keel_task *t, unsigned mark)
{
	struct keel__task_ext *x = t->ext;

	/* Re-read the depth each time: a cleanup may push or unwind too. */
	while (x && x->ndefers > mark) {
		struct keel__defer_entry e = x->defers[--x->ndefers];

		e.fn(e.arg);
	}
}

void keel_defer_drop(struct keel_task *t, unsigned mark)
{
	if (t->ext && t->ext->ndefers > mark)
		t->ext->ndefers = mark;
}

/* A joiner waits for its target to exit (deadlock detection). */
bool keel__join_waits_for(struct keel_task *t, struct keel__wf *out)
{
	if (t->ext->wait_cancel != join_cancelled)
		return false;
	out->what = "the exit of";
	out->by[out->n++] = t->ext->join_target;
	return true;
}
