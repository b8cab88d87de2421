/* SPDX-License-Identifier: MIT */
/*
 * trace.c: the runner's check of a seed's trace, with keel-trace's own
 * reader and decoder (tools/trace: read.c, decode.c, util.c), and the hash
 * that the determinism check compares.
 *
 * A trace is well-formed when: the file reads to its end; no event was
 * dropped; on every loop the timestamps never go back and every STEP_BEGIN
 * has its STEP_END; every task spawned exits (its EXIT is in the trace);
 * every op submitted completes within its task's lifetime (per task and
 * opcode, at least as many completions as submissions, and never a
 * completion before a submission, but for the user-space waits, which
 * trace no submission: a multishot op completes several times,
 * so a lost final CQE of a re-armed stream can hide behind an earlier
 * shot's extra ones; the loop's ops_inflight == 0 covers that case).
 *
 * The hash covers every event, virtual timestamps included (from the
 * first event's: a trace started before the machine's clock took over
 * has a real-time origin), and the text of the strings they name; not the
 * loops' thread ids, nor the header's wall-clock time, which differ
 * between two runs of the same seed.
 */
#include "keel-trace.h"
#include "trace_check.h"

#include <liburing.h>
#include <setjmp.h>

/* The opcode a blocking job's completion carries (sched/pool.c). */
#define USER_BLOCKING_OP 0xfe

/* keel-trace's parts end through die(): here it returns to the check. */
const char *trace_path = "keel-sim";
const char *out_path;
static jmp_buf *die_to;
static char die_msg[200];

void die(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(die_msg, sizeof(die_msg), fmt, ap);
	va_end(ap);
	if (die_to)
		longjmp(*die_to, 1);
	fprintf(stderr, "keel-sim: %s: %s\n", trace_path, die_msg);
	exit(1);
}

/* Submissions and completions of one opcode in one task lifetime. */
struct opcount {
	uint64_t lifetime;
	uint32_t loop, slot, name;
	uint8_t op;
	uint64_t submits, completes;
};

struct checker {
	struct sim_trace_check *out;
	struct strings *strings;
	uint64_t last_ts[64];
	struct map ops; /* lifetime << 8 | opcode -> index in counts */
	VEC(struct opcount) counts;
	uint64_t hash;
	bool seen;   /* an event: t0 is set */
	uint64_t t0; /* the first event's time */
};

static void failf(struct checker *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void failf(struct checker *c, const char *fmt, ...)
{
	va_list ap;

	if (c->out->failed)
		return;
	c->out->failed = true;
	va_start(ap, fmt);
	vsnprintf(c->out->why, sizeof(c->out->why), fmt, ap);
	va_end(ap);
}

static void hash_u64(uint64_t *h, uint64_t v)
{
	*h ^= v;
	*h *= 0x100000001b3ull; /* FNV-1a over words: order matters */
	*h ^= *h >> 29;
}

static void hash_str(uint64_t *h, const char *s)
{
	if (!s)
		s = "";
	for (; *s; s++)
		hash_u64(h, (unsigned char)*s);
	hash_u64(h, 0xff);
}

/* The event's string fields by text: ids are the tracer's numbering. */
static void hash_event(struct checker *c, uint32_t loop,
		       const struct keel_trace_event *ev)
{
	uint64_t *h = &c->hash;

	if (!c->seen) {
		c->seen = true;
		c->t0 = ev->ts;
	}
	hash_u64(h, loop);
	hash_u64(h, ev->ts - c->t0);
	hash_u64(h,
		 (uint64_t)ev->type << 32 | (uint64_t)ev->op << 16 | ev->flags);
	hash_u64(h, ev->task);
	switch (ev->type) {
	case KEEL_EV_SPAWN:
	case KEEL_EV_WAIT:
	case KEEL_EV_SUP_RESTART:
	case KEEL_EV_SUP_ESCALATE:
		hash_str(h, str_find(c->strings, ev->a));
		hash_u64(h, ev->b);
		break;
	case KEEL_EV_ABORT:
		hash_str(h, str_find(c->strings, ev->a));
		hash_str(h, str_find(c->strings, ev->b));
		break;
	case KEEL_EV_STALL:
		/* a step's real duration: not a property of the run */
		break;
	default:
		hash_u64(h, ev->a);
		hash_u64(h, ev->b);
		break;
	}
}

static struct opcount *op_count(struct checker *c, const struct moment *m)
{
	uint64_t key = m->task->lifetime << 8 | m->ev->op;
	uint32_t i = map_get(&c->ops, key);
	struct opcount *o;

	if (i != NOT_FOUND)
		return &c->counts.v[i];
	map_put(&c->ops, key, (uint32_t)c->counts.n);
	o = vec_push(&c->counts);
	o->lifetime = m->task->lifetime;
	o->loop = m->loop;
	o->slot = m->task->slot;
	o->name = m->task->name;
	o->op = m->ev->op;
	return o;
}

static void on_event(void *ctx, const struct moment *m)
{
	struct checker *c = ctx;
	const struct keel_trace_event *ev = m->ev;
	char buf[16];

	c->out->events++;
	hash_event(c, m->loop, ev);
	if (m->loop >= ARRAY_SIZE(c->last_ts)) {
		failf(c, "loop index %u in the trace", m->loop);
		return;
	}
	if (ev->ts < c->last_ts[m->loop])
		failf(c, "loop %u: time goes back from %" PRIu64 " to %" PRIu64,
		      m->loop, c->last_ts[m->loop], ev->ts);
	c->last_ts[m->loop] = ev->ts;
	if (ev->type != KEEL_EV_OP_SUBMIT && ev->type != KEEL_EV_OP_COMPLETE)
		return;
	if (!m->task || !m->task->lifetime) {
		failf(c, "loop %u: op %s of a task never spawned", m->loop,
		      op_name(ev->op, buf));
		return;
	}
	struct opcount *o = op_count(c, m);

	if (ev->type == KEEL_EV_OP_SUBMIT) {
		o->submits++;
		c->out->ops++;
		return;
	}
	/* User-space waits (a sleep: a timer completes it with the opcode
	 * of a timeout; a blocking job) are not submitted to the kernel and
	 * trace no OP_SUBMIT. */
	if (!o->submits && ev->op != IORING_OP_TIMEOUT &&
	    ev->op != USER_BLOCKING_OP)
		failf(c, "loop %u: task %s completes op %s it never submitted",
		      m->loop, str_or(c->strings, o->name, "?"),
		      op_name(ev->op, buf));
	o->completes++;
}

static void on_lifetime_end(void *ctx, const struct task *t, uint64_t ts,
			    const int64_t *status)
{
	struct checker *c = ctx;

	if (!status)
		failf(c, "loop %u: task %s (slot %u) never exits", t->loop,
		      str_or(c->strings, t->name, "?"), t->slot);
}

static void on_drops(void *ctx, uint32_t loop, uint32_t n, uint64_t ts)
{
	failf(ctx, "loop %u: %u events dropped (the writer fell behind)", loop,
	      n);
}

void sim_trace_check(const char *path, struct sim_trace_check *out)
{
	struct reader *r = calloc(1, sizeof(*r)); /* 128 KiB of buffer */
	struct strings strings = {0};
	struct checker c = {
	    .out = out, .strings = &strings, .hash = 0xcbf29ce484222325ull};
	struct decoder d = {
	    .strings = &strings,
	    .load_strings = true,
	    .sink = {.ctx = &c,
		     .event = on_event,
		     .lifetime_end = on_lifetime_end,
		     .drops = on_drops},
	};
	jmp_buf env;
	char buf[16];

	memset(out, 0, sizeof(*out));
	if (!r) {
		snprintf(out->why, sizeof(out->why), "out of memory");
		out->failed = true;
		return;
	}
	trace_path = path;
	die_to = &env;
	if (setjmp(env)) {
		failf(&c, "unreadable: %s", die_msg);
		goto done;
	}
	reader_open(r, path);
	scan(r, &d);
	for (uint32_t i = 0; i < d.nloops; i++)
		if (d.loops[i].lost_steps)
			failf(&c,
			      "loop %u: %" PRIu64
			      " steps without their begin or end",
			      i, d.loops[i].lost_steps);
	for (size_t i = 0; i < c.counts.n; i++) {
		const struct opcount *o = &c.counts.v[i];

		if (o->completes < o->submits)
			failf(&c,
			      "loop %u: task %s (slot %u) submitted op %s "
			      "%" PRIu64 " times, completed %" PRIu64,
			      o->loop, str_or(&strings, o->name, "?"), o->slot,
			      op_name(o->op, buf), o->submits, o->completes);
	}
	out->loops = d.nloops;
	out->tasks = d.lifetimes;
done:
	die_to = NULL;
	out->hash = c.hash;
	if (r->f)
		fclose(r->f);
	free(r);
	decoder_free(&d);
	map_free(&c.ops);
	free(c.counts.v);
	map_free(&strings.ids);
	map_free(&strings.texts);
	free(strings.at.v);
	free(strings.first.v);
	free(strings.blob.v);
}
