/* SPDX-License-Identifier: MIT */
/*
 * pipeline.c: the stream pipelines of keel/pipeline.h: each stage's input
 * queue (a ring with its backpressure strategy and core's wait queues for
 * blocked producers and idle workers), the worker tasks, the error
 * strategies (on keel's retry and breaker, hence this layer), the reorder
 * window of an ordered stage, and the counters.
 *
 * Not a keel_mailbox: a stage's N workers all receive from its input (a
 * mailbox has one receiver), and WAIT and BUFFER need a deadline and a
 * soft bound per send.
 *
 * Invariants:
 * - A queue's `senders` wait only while it is full: taking an item moves
 *   the first blocked sender's item (its worker's `pending`) in at once,
 *   so a producer never finds room while others wait.
 * - Every item is in exactly one place: a queue, a worker's ctx.in or
 *   `pending`, a reorder slot, or it has left (delivered, passed on, or
 *   counted and handed to on_drop).
 * - Ordered stage (not the sink: it passes nothing on, so its window
 *   would never move): items are numbered as they are taken (input order);
 *   seq_out is the oldest not yet passed on; a worker takes an item only
 *   while seq_in < seq_out + win, so the window's slots suffice; one
 *   worker at a time (`emitting`) passes ready slots on, in order.
 * - A stage's last worker to exit closes the next stage's input; the
 *   source's exit closes the first's.
 */
#include "core.h"
#include "prom.h"
#include "wait.h"

#include <errno.h>
#include <keel/pipeline.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { SLOT_EMPTY = 0, SLOT_ITEM = 1, SLOT_HOLE = 2 };

struct pipe_slot {
	void *item;
	int state;
};

struct pipe_queue {
	void **ring;
	uint32_t cap;  /* ring size: queue + buffer */
	uint32_t soft; /* `queue`: beyond it, a send is backpressure */
	uint32_t head;
	uint32_t n;
	bool closed;
	enum keel_pipe_backpressure full; /* what a send to a full ring does */
	struct keel__wq senders;	  /* timed: WAIT's deadline */
	struct keel__wq receivers;
	uint64_t trace_id;
};

struct pipe_stage {
	struct keel_pipeline *p;
	struct keel_pipe_stage_opts o;
	char *name;
	struct pipe_queue q;	 /* unused by the source */
	struct pipe_stage *next; /* NULL: the sink */
	struct keel_pipe_stage_stats stats;
	char *states; /* concurrency * state_size bytes */
	uint32_t alive;
	/* ORDERED */
	uint64_t seq_in;
	uint64_t seq_out;
	uint32_t win;
	struct pipe_slot *slots;
	bool emitting;
};

struct keel_pipeline {
	struct keel_loop *loop;
	struct keel_pipeline_opts o;
	char *name;
	struct pipe_stage src;
	struct pipe_stage **stages;
	uint32_t nstages;
	struct keel_routine run_r;
	struct keel_scope scope;
	int result;
	bool ran;
	bool running;
	bool cancelled;
};

/* One task of a stage (or the source); the frame keel_spawn gives. */
struct pipe_worker {
	struct keel_task task;
	struct pipe_stage *st;
	struct keel_routine pr; /* process()'s resume state */
	struct keel_pipe_ctx ctx;
	struct keel_retry retry;
	struct keel_breaker_permit permit;
	void *pending; /* the item being passed on */
	uint64_t seq;
	uint64_t t0;
	int res;
	int exit;
};

static int worker_step(struct keel_task *t);
static int source_step(struct keel_task *t);
static KEEL_TASK_TYPE(pipe_worker, struct pipe_worker, task, worker_step);
static KEEL_TASK_TYPE(pipe_source, struct pipe_worker, task, source_step);

/* Trace ids of stage inputs: above any mailbox's. */
static uint64_t next_trace_id = 1ull << 32;

static void give_up(struct keel_pipeline *p, void *item)
{
	if (p->o.on_drop)
		p->o.on_drop(item, p->o.drop_arg);
}

/* ---- a stage's input ---------------------------------------------------- */

static void q_put(struct pipe_stage *st, void *item)
{
	struct pipe_queue *q = &st->q;

	q->ring[(q->head + q->n) % q->cap] = item;
	q->n++;
	if (q->n > st->stats.depth_max)
		st->stats.depth_max = q->n;
}

static void *q_get(struct pipe_queue *q)
{
	void *item = q->ring[q->head];

	q->head = (q->head + 1) % q->cap;
	q->n--;
	return item;
}

static void q_dropped(struct pipe_stage *st, void *item)
{
	struct keel__core *c = keel__core_of(st->p->loop);

	st->stats.dropped++;
	KEEL__TRACE(c, KEEL_EV_MB_DROP, 0, UINT32_MAX, st->q.trace_id,
		    st->stats.dropped);
	give_up(st->p, item);
}

static void q_close(struct pipe_stage *st)
{
	st->q.closed = true;
	keel__wq_wake_all(&st->q.receivers, 0);
	keel__wq_wake_all(&st->q.senders, -EPIPE);
}

/*
 * Offer w->pending to stage `to`'s input. keel_res: 0 when it is dealt
 * with (queued, or dropped and counted), else the item is still
 * w->pending: -ETIMEDOUT (WAIT's deadline: see push_failed()), -EPIPE or
 * the cancellation cause.
 */
static int q_push(struct keel_task *t, struct pipe_worker *w,
		  struct pipe_stage *to)
{
	struct keel__core *c = keel__core_of(t->loop);
	struct pipe_queue *q = &to->q;
	int cause = keel__task_cancel_cause(t);

	if (cause)
		return keel__task_ready(t, cause);
	if (q->closed)
		return keel__task_ready(t, -EPIPE);
	if (!q->senders.q.len && q->n < q->soft)
		goto queue;
	to->stats.backpressure++;
	KEEL__TRACE(c, KEEL_EV_MB_FULL, 0, t->id, q->trace_id, q->full);
	if (!q->senders.q.len && q->n < q->cap)
		goto queue; /* BUFFER */
	switch (q->full) {
	case KEEL_PIPE_DROP_NEWEST:
		q_dropped(to, w->pending);
		w->pending = NULL;
		return keel__task_ready(t, 0);
	case KEEL_PIPE_DROP_OLDEST:
		q_dropped(to, q_get(q));
		goto queue;
	default: /* BLOCK, WAIT: a taker moves the item in (q_take) */
		if (!keel__wq_prepare(t))
			return keel__task_ready(t, -ENOMEM);
		return keel__wq_begin_until(
		    t, &q->senders, 0,
		    q->full == KEEL_PIPE_WAIT
			? keel__wq_deadline_after(to->o.wait_ns)
			: UINT64_MAX);
	}
queue:
	q_put(to, w->pending);
	w->pending = NULL;
	w->st->stats.emitted++;
	keel__wq_wake_one(&q->receivers, 0);
	return keel__task_ready(t, 0);
}

/*
 * A push returned `res` < 0 with the item still w->pending: a WAIT that
 * timed out drops it (counted at the input it waited for); anything else
 * abandons it and ends the worker (returns true).
 */
static bool push_failed(struct keel_task *t, struct pipe_worker *w, int res)
{
	struct pipe_stage *st = w->st;

	if (res == -ETIMEDOUT && !keel__task_cancel_cause(t)) {
		st->next->stats.timed_out++;
		give_up(st->p, w->pending);
		w->pending = NULL;
		return false;
	}
	st->stats.abandoned++;
	give_up(st->p, w->pending);
	w->pending = NULL;
	w->exit = res;
	return true;
}

/*
 * Take the next item into w->ctx.in: 0, -EAGAIN (wait: empty, or an
 * ordered stage's window is full), -EPIPE (closed and drained).
 */
static int q_take(struct pipe_stage *st, struct pipe_worker *w)
{
	struct keel__core *c = keel__core_of(st->p->loop);
	struct pipe_queue *q = &st->q;
	struct keel__waiter *sw;

	if (!q->n)
		return q->closed ? -EPIPE : -EAGAIN;
	if (st->slots && st->next && st->seq_in >= st->seq_out + st->win)
		return -EAGAIN;
	w->ctx.in = q_get(q);
	w->seq = st->seq_in++;
	st->stats.received++;
	KEEL__TRACE(c, KEEL_EV_MB_RECV, 0, w->task.id, q->trace_id, q->n);
	sw = keel__waitq_pop(&q->senders.q);
	if (sw) {
		struct pipe_worker *from =
		    keel_container_of(sw->task, struct pipe_worker, task);

		q_put(st, from->pending);
		from->pending = NULL;
		from->st->stats.emitted++;
		keel__wq_end(&q->senders, sw, 0);
	}
	return 0;
}

/* Await something to take (woken with 0: look again). */
static int q_wait(struct keel_task *t, struct pipe_stage *st)
{
	int cause = keel__task_cancel_cause(t);

	if (cause)
		return keel__task_ready(t, cause);
	if (!keel__wq_prepare(t))
		return keel__task_ready(t, -ENOMEM);
	return keel__wq_begin(t, &st->q.receivers, 0, NULL);
}

/* ---- workers ------------------------------------------------------------ */

static void latency(struct pipe_stage *st, uint64_t ns)
{
	struct keel_pipe_stage_stats *s = &st->stats;
	unsigned b = 0;

	for (uint64_t le = 1000; b < KEEL_PIPE_LATENCY_BUCKETS - 1 && ns > le;
	     le *= 10)
		b++;
	s->latency_buckets[b]++;
	s->latency_count++;
	s->latency_sum_ns += ns;
	if (ns > s->latency_max_ns)
		s->latency_max_ns = ns;
}

/*
 * One item through the stage's function, with its error strategy: a
 * nested routine; keel_res is the function's result (>= 0: ctx.out is
 * set), or the error it gave up with (-EAGAIN: the breaker refused).
 */
static int process(struct keel_task *t, struct pipe_worker *w)
{
	struct pipe_stage *st = w->st;

	KEEL_BEGIN(&w->pr);
	w->ctx.attempt = 0;
	if (st->o.on_error == KEEL_PIPE_RETRY)
		keel_retry_begin(&w->retry, &st->o.retry);
	for (;;) {
		w->ctx.attempt++;
		if (st->o.on_error == KEEL_PIPE_BREAKER &&
		    keel_breaker_acquire(st->o.breaker, &w->permit)) {
			st->stats.rejected++;
			KEEL_ROUTINE_RETURN(&w->pr, t, -EAGAIN);
		}
		w->ctx.out = NULL;
		w->ctx.r.at = NULL;
		KEEL_AWAIT_CALL(&w->pr, st->o.fn(t, &w->ctx));
		w->res = keel_res(t);
		if (st->o.on_error == KEEL_PIPE_BREAKER)
			keel_breaker_record(st->o.breaker, &w->permit, w->res);
		if (w->res >= 0)
			KEEL_ROUTINE_RETURN(&w->pr, t, w->res);
		st->stats.errors++;
		if (st->o.on_error != KEEL_PIPE_RETRY ||
		    keel__task_cancel_cause(t))
			KEEL_ROUTINE_RETURN(&w->pr, t, w->res);
		KEEL_AWAIT_CALL(&w->pr,
				keel_retry_backoff(t, &w->retry, w->res));
		if (keel_retry_done(&w->retry))
			KEEL_ROUTINE_RETURN(&w->pr, t,
					    keel_retry_result(&w->retry));
		st->stats.retries++;
	}
}

/* A worker leaves its stage; the last one closes the next input. */
static void worker_exit(struct pipe_stage *st)
{
	if (!--st->alive && st->next)
		q_close(st->next);
}

/* Ordered: file the item (or a hole) under its number. */
static void slot_fill(struct pipe_stage *st, uint64_t seq, void *item, bool ok)
{
	struct pipe_slot *s = &st->slots[seq % st->win];

	s->item = item;
	s->state = ok ? SLOT_ITEM : SLOT_HOLE;
}

/* Ordered: the next slot to pass on, if it is done; moves the window. */
static bool slot_next(struct pipe_stage *st, void **item, bool *hole)
{
	struct pipe_slot *s = &st->slots[st->seq_out % st->win];

	if (s->state == SLOT_EMPTY)
		return false;
	*item = s->item;
	*hole = s->state == SLOT_HOLE;
	s->item = NULL;
	s->state = SLOT_EMPTY;
	st->seq_out++;
	keel__wq_wake_all(&st->q.receivers, 0); /* room in the window */
	return true;
}

static int worker_step(struct keel_task *t)
{
	struct pipe_worker *w = keel_container_of(t, struct pipe_worker, task);
	struct pipe_stage *st = w->st;
	bool hole;

	KEEL_BEGIN(t);
	for (;;) {
		w->res = q_take(st, w);
		if (w->res == -EAGAIN) {
			KEEL_AWAIT(t, q_wait(t, st));
			if (keel_res(t) < 0) {
				w->exit = keel_res(t);
				break;
			}
			continue;
		}
		if (w->res < 0) /* -EPIPE: the input is done */
			break;
		w->t0 = keel__clock_now();
		KEEL_AWAIT_CALL(t, process(t, w));
		w->res = keel_res(t);
		latency(st, keel__clock_now() - w->t0);
		if (w->res >= 0) {
			st->stats.processed++;
			w->pending = st->next ? w->ctx.out : NULL;
		} else {
			int cause = keel__task_cancel_cause(t);

			if (cause)
				st->stats.abandoned++;
			else
				st->stats.failed++;
			give_up(st->p, w->ctx.in);
			if (cause || st->o.on_error == KEEL_PIPE_STOP) {
				w->exit = cause ? cause : w->res;
				w->ctx.in = NULL;
				break;
			}
		}
		w->ctx.in = NULL;
		if (!st->next)
			continue;
		if (!st->slots) {
			if (w->res < 0)
				continue;
			KEEL_AWAIT(t, q_push(t, w, st->next));
			if (keel_res(t) < 0 && push_failed(t, w, keel_res(t)))
				break;
			continue;
		}
		slot_fill(st, w->seq, w->pending, w->res >= 0);
		w->pending = NULL;
		if (st->emitting)
			continue; /* the emitting worker passes it on */
		st->emitting = true;
		while (slot_next(st, &w->pending, &hole)) {
			if (hole)
				continue;
			KEEL_AWAIT(t, q_push(t, w, st->next));
			if (keel_res(t) < 0 && push_failed(t, w, keel_res(t))) {
				st->emitting = false;
				goto out;
			}
		}
		st->emitting = false;
	}
out:
	worker_exit(st);
	KEEL_EXIT(t, w->exit);
}

static int source_step(struct keel_task *t)
{
	struct pipe_worker *w = keel_container_of(t, struct pipe_worker, task);
	struct pipe_stage *st = w->st;

	KEEL_BEGIN(t);
	for (;;) {
		w->ctx.out = NULL;
		w->ctx.r.at = NULL;
		w->ctx.attempt = 1;
		KEEL_AWAIT_CALL(t, st->o.fn(t, &w->ctx));
		w->res = keel_res(t);
		if (w->res == KEEL_PIPE_END)
			break;
		if (w->res < 0) {
			w->exit = w->res;
			break;
		}
		st->stats.processed++;
		w->pending = w->ctx.out;
		KEEL_AWAIT(t, q_push(t, w, st->next));
		if (keel_res(t) < 0 && push_failed(t, w, keel_res(t)))
			break;
	}
	worker_exit(st);
	KEEL_EXIT(t, w->exit);
}

/* ---- the pipeline ------------------------------------------------------- */

int keel_pipeline_new(struct keel_loop *loop,
		      const struct keel_pipeline_opts *opts,
		      struct keel_pipeline **out)
{
	struct keel_pipeline *p;

	if (!loop || !opts || !opts->source || !out)
		return -EINVAL;
	p = calloc(1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	p->loop = loop;
	p->o = *opts;
	p->name = strdup(opts->name ? opts->name : "pipeline");
	p->src.p = p;
	p->src.o.fn = opts->source;
	p->src.o.arg = opts->source_arg;
	p->src.o.state_size = opts->source_state;
	p->src.o.concurrency = 1;
	p->src.name = strdup("source");
	if (opts->source_state)
		p->src.states = calloc(1, opts->source_state);
	if (!p->name || !p->src.name ||
	    (opts->source_state && !p->src.states)) {
		keel_pipeline_free(p);
		return -ENOMEM;
	}
	p->o.name = p->name;
	*out = p;
	return 0;
}

static bool strategy_ok(enum keel_pipe_backpressure b)
{
	return b == KEEL_PIPE_BLOCK || b == KEEL_PIPE_WAIT ||
	       b == KEEL_PIPE_DROP_NEWEST || b == KEEL_PIPE_DROP_OLDEST;
}

static void stage_free(struct pipe_stage *st)
{
	if (!st)
		return;
	free(st->q.ring);
	free(st->slots);
	free(st->states);
	free(st->name);
	free(st);
}

int keel_pipeline_add_stage(struct keel_pipeline *p,
			    const struct keel_pipe_stage_opts *opts)
{
	struct keel_pipe_stage_opts o;
	struct pipe_stage *st, **v;
	struct keel_retry probe;
	char name[32];

	if (!p || !opts || !opts->fn)
		return -EINVAL;
	if (p->ran)
		return -EBUSY;
	o = *opts;
	if (!o.concurrency)
		o.concurrency = 1;
	if (!o.queue)
		o.queue = 64;
	if (o.backpressure == KEEL_PIPE_BUFFER ? !strategy_ok(o.overflow)
					       : !strategy_ok(o.backpressure))
		return -EINVAL;
	if (o.backpressure != KEEL_PIPE_BUFFER)
		o.buffer = 0;
	if (o.queue > UINT32_MAX - o.buffer || o.concurrency > UINT32_MAX / 2)
		return -EINVAL;
	if ((unsigned)o.on_error > KEEL_PIPE_BREAKER ||
	    (unsigned)o.order > KEEL_PIPE_UNORDERED)
		return -EINVAL;
	if (o.on_error == KEEL_PIPE_BREAKER && !o.breaker)
		return -EINVAL;
	if (o.on_error == KEEL_PIPE_RETRY && keel_retry_begin(&probe, &o.retry))
		return -EINVAL;
	st = calloc(1, sizeof(*st));
	v = realloc(p->stages, (p->nstages + 1) * sizeof(*v));
	if (!st || !v) {
		free(st);
		return -ENOMEM;
	}
	p->stages = v;
	st->p = p;
	st->o = o;
	snprintf(name, sizeof(name), "stage%u", p->nstages);
	st->name = strdup(o.name ? o.name : name);
	st->o.name = st->name;
	st->q.cap = o.queue + o.buffer;
	st->q.soft = o.queue;
	st->q.full =
	    o.backpressure == KEEL_PIPE_BUFFER ? o.overflow : o.backpressure;
	st->q.ring = calloc(st->q.cap, sizeof(void *));
	if (o.state_size)
		st->states = calloc(o.concurrency, o.state_size);
	if (o.order == KEEL_PIPE_ORDERED && o.concurrency > 1) {
		st->win = 2 * o.concurrency;
		st->slots = calloc(st->win, sizeof(*st->slots));
	}
	if (!st->name || !st->q.ring || (o.state_size && !st->states) ||
	    (st->win && !st->slots)) {
		stage_free(st);
		return -ENOMEM;
	}
	keel__wq_init(&st->q.senders, p->loop, NULL);
	st->q.senders.timed = true;
	keel__wq_init(&st->q.receivers, p->loop, NULL);
	st->q.trace_id =
	    __atomic_fetch_add(&next_trace_id, 1, __ATOMIC_RELAXED);
	if (p->nstages)
		p->stages[p->nstages - 1]->next = st;
	else
		p->src.next = st;
	p->stages[p->nstages] = st;
	return (int)p->nstages++;
}

unsigned keel_pipeline_stages(const struct keel_pipeline *p)
{
	return p ? p->nstages : 0;
}

/* Spawn `st`'s workers into the run's scope. */
static int spawn_stage(struct keel_pipeline *p, struct pipe_stage *st,
		       const struct keel_task_type *type)
{
	for (uint32_t i = 0; i < st->o.concurrency; i++) {
		struct pipe_worker *w =
		    keel_scope_spawn(&p->scope, type, KEEL_PRIO_NORMAL);

		if (!w)
			return -ENOMEM;
		w->st = st;
		w->ctx.arg = st->o.arg;
		w->ctx.worker = i;
		if (st->states)
			w->ctx.state =
			    st->states + (size_t)i * st->o.state_size;
		st->alive++;
	}
	return 0;
}

/* What the stopped pipeline still holds is abandoned (and on_drop's). */
static void drain(struct keel_pipeline *p)
{
	for (uint32_t i = 0; i < p->nstages; i++) {
		struct pipe_stage *st = p->stages[i];

		while (st->q.n) {
			st->stats.abandoned++;
			give_up(p, q_get(&st->q));
		}
		for (uint32_t s = 0; s < st->win; s++) {
			if (st->slots[s].state == SLOT_ITEM) {
				st->stats.abandoned++;
				give_up(p, st->slots[s].item);
			}
			st->slots[s].state = SLOT_EMPTY;
			st->slots[s].item = NULL;
		}
	}
}

int keel_pipeline_run(struct keel_task *t, struct keel_pipeline *p)
{
	KEEL_BEGIN(&p->run_r);
	if (t->loop != p->loop)
		KEEL_ROUTINE_RETURN(&p->run_r, t, -EXDEV);
	if (p->ran)
		KEEL_ROUTINE_RETURN(&p->run_r, t, -EBUSY);
	if (!p->nstages)
		KEEL_ROUTINE_RETURN(&p->run_r, t, -EINVAL);
	p->ran = true;
	if (p->cancelled)
		KEEL_ROUTINE_RETURN(&p->run_r, t, -ECANCELED);
	p->result = keel_scope_init(t, &p->scope, KEEL_SCOPE_FAIL_FAST);
	if (p->result)
		KEEL_ROUTINE_RETURN(&p->run_r, t, p->result);
	p->running = true;
	for (uint32_t i = 0; !p->result && i < p->nstages; i++)
		p->result = spawn_stage(p, p->stages[i], &pipe_worker);
	if (!p->result)
		p->result = spawn_stage(p, &p->src, &pipe_source);
	if (p->result)
		keel_scope_cancel(&p->scope);
	KEEL_AWAIT(&p->run_r, keel_scope_join(t, &p->scope));
	if (!p->result)
		p->result = keel_res(t);
	keel_scope_fini(&p->scope);
	p->running = false;
	drain(p);
	KEEL_ROUTINE_RETURN(&p->run_r, t, p->result);
}

void keel_pipeline_cancel(struct keel_pipeline *p)
{
	if (!p)
		return;
	p->cancelled = true;
	if (p->running)
		keel_scope_cancel(&p->scope);
}

void keel_pipeline_free(struct keel_pipeline *p)
{
	if (!p)
		return;
	drain(p);
	for (uint32_t i = 0; i < p->nstages; i++)
		stage_free(p->stages[i]);
	free(p->stages);
	free(p->src.states);
	free(p->src.name);
	free(p->name);
	free(p);
}

int keel_pipeline_stage_stats(const struct keel_pipeline *p, uint32_t stage,
			      struct keel_pipe_stage_stats *out)
{
	const struct pipe_stage *st;

	if (!p || !out || (stage != KEEL_PIPE_SOURCE && stage >= p->nstages))
		return -EINVAL;
	st = stage == KEEL_PIPE_SOURCE ? &p->src : p->stages[stage];
	*out = st->stats;
	out->depth = st->q.n;
	return 0;
}

/* ---- Prometheus text ---------------------------------------------------- */

static const struct {
	const char *name;
	size_t offset;
	const char *help;
} counters[] = {
#define C(field, help)                                                         \
	{                                                                      \
		"keel_pipeline_" #field "_total",                              \
		    offsetof(struct keel_pipe_stage_stats, field), help        \
	}
    C(received, "Items a stage took from its input."),
    C(processed, "Items a stage's function succeeded on (the source: "
		 "produced; the sink: delivered)."),
    C(emitted, "Items a stage queued at the next stage's input."),
    C(dropped, "Items dropped at a stage's full input (drop newest/oldest)."),
    C(timed_out, "Items dropped after waiting for room at a stage's input."),
    C(backpressure, "Sends that found a stage's input full."),
    C(errors, "Failed calls of a stage's function."),
    C(retries, "Calls of a stage's function made again."),
    C(failed, "Items a stage gave up after an error."),
    C(rejected, "Items failed fast by a stage's open circuit breaker."),
    C(abandoned, "Items held when the pipeline stopped."),
#undef C
};

static const char *const le[KEEL_PIPE_LATENCY_BUCKETS] = {
    "1e-06", "1e-05", "0.0001", "0.001", "0.01", "0.1", "1", "+Inf"};

/* Each (pipeline, stage) row: the source first, then the stages. */
static const struct pipe_stage *row(const struct keel_pipeline *p, uint32_t i)
{
	return i ? p->stages[i - 1] : &p->src;
}

static void labels(struct keel__prom *pr, const struct keel_pipeline *p,
		   const struct pipe_stage *st)
{
	keel__prom_label(pr, "pipeline", p->name);
	keel__prom_label(pr, "stage", st->name);
}

size_t keel_pipeline_metrics_render(struct keel_pipeline *const *ps, unsigned n,
				    char *buf, size_t len)
{
	const char *h = "keel_pipeline_latency_seconds";
	struct keel__prom pr;

	keel__prom_init(&pr, buf, len);
	for (size_t m = 0; m < sizeof(counters) / sizeof(counters[0]); m++) {
		keel__prom_family(&pr, counters[m].name, KEEL__PROM_COUNTER,
				  counters[m].help);
		for (unsigned k = 0; k < n; k++) {
			for (uint32_t i = 0; i <= ps[k]->nstages; i++) {
				const struct pipe_stage *st = row(ps[k], i);
				uint64_t v;

				memcpy(&v,
				       (const char *)&st->stats +
					   counters[m].offset,
				       sizeof(v));
				keel__prom_sample(&pr, counters[m].name, NULL);
				labels(&pr, ps[k], st);
				keel__prom_value(&pr, v);
			}
		}
	}
	keel__prom_family(&pr, "keel_pipeline_queue_depth", KEEL__PROM_GAUGE,
			  "Items waiting at a stage's input.");
	for (unsigned k = 0; k < n; k++) {
		for (uint32_t i = 0; i < ps[k]->nstages; i++) {
			keel__prom_sample(&pr, "keel_pipeline_queue_depth",
					  NULL);
			labels(&pr, ps[k], ps[k]->stages[i]);
			keel__prom_value(&pr, ps[k]->stages[i]->q.n);
		}
	}
	keel__prom_family(&pr, h, KEEL__PROM_HISTOGRAM,
			  "Time of a stage's function per item.");
	for (unsigned k = 0; k < n; k++) {
		for (uint32_t i = 0; i < ps[k]->nstages; i++) {
			const struct pipe_stage *st = ps[k]->stages[i];
			uint64_t cum = 0;

			for (unsigned b = 0; b < KEEL_PIPE_LATENCY_BUCKETS;
			     b++) {
				cum += st->stats.latency_buckets[b];
				keel__prom_sample(&pr, h, "_bucket");
				labels(&pr, ps[k], st);
				keel__prom_label(&pr, "le", le[b]);
				keel__prom_value(&pr, cum);
			}
			keel__prom_sample(&pr, h, "_sum");
			labels(&pr, ps[k], st);
			keel__prom_value_ns(&pr, st->stats.latency_sum_ns);
			keel__prom_sample(&pr, h, "_count");
			labels(&pr, ps[k], st);
			keel__prom_value(&pr, st->stats.latency_count);
		}
	}
	return keel__prom_end(&pr);
}
