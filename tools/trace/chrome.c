/* SPDX-License-Identifier: MIT */
/*
 * chrome.c: Chrome Trace Event JSON, which Perfetto and chrome://tracing
 * load: `X` slices for steps and idle time, async `b`/`e` for task
 * lifetimes, flows for messages and mailbox traffic, `C` counters for
 * mailbox depth and ops in flight, `i` instants for aborts, restarts and
 * stalls. One thread per loop.
 */
#include "keel-trace.h"

#define MB_TRACKS 64 /* mailbox depth counters in the Chrome output */

/* ---- pairing senders with receivers, for Chrome's flow arrows --------- */

struct pairing {
	struct map *flows; /* endpoint key -> flow id */
	uint32_t next;	   /* flow ids given so far */
	size_t *queue;	   /* sends not yet received, by index */
};

/* By channel, then time; at equal times a send comes first. */
static int cmp_endpoint(const void *a, const void *b)
{
	const struct endpoint *x = a, *y = b;

	if (x->mailbox != y->mailbox)
		return x->mailbox ? 1 : -1;
	if (x->chan != y->chan)
		return x->chan < y->chan ? -1 : 1;
	if (x->ts != y->ts)
		return x->ts < y->ts ? -1 : 1;
	if (x->send != y->send)
		return x->send ? -1 : 1;
	return x->key < y->key ? -1 : x->key > y->key;
}

static void pair(struct pairing *p, const struct endpoint *send,
		 const struct endpoint *recv)
{
	if (p->next == NOT_FOUND - 1)
		return;
	p->next++;
	map_put(p->flows, send->key, p->next);
	map_put(p->flows, recv->key, p->next);
}

/* A message's receive pairs with the oldest send of its flow id. */
static void pair_messages(struct pairing *p, const struct endpoint *e, size_t n)
{
	size_t head = 0, tail = 0;

	for (size_t i = 0; i < n; i++) {
		if (e[i].send)
			p->queue[tail++] = i;
		else if (head < tail)
			pair(p, &e[p->queue[head++]], &e[i]);
	}
}

/*
 * A mailbox is FIFO: replay its queue in time order and pair each receive
 * with the send at the head. The depth each event reports checks the
 * replay. Where they disagree (messages queued before the trace began,
 * drops, lost events, equal timestamps in the wrong order), forget the
 * queued sends and go on from the reported depth, so that no arrow is
 * drawn that the trace does not support.
 */
static void pair_mailbox(struct pairing *p, const struct endpoint *e, size_t n)
{
	size_t head = 0, tail = 0;
	int64_t base = 0; /* queued messages whose send is not in the trace */

	for (size_t i = 0; i < n; i++) {
		int64_t expect =
		    base + (int64_t)(tail - head) + (e[i].send ? 1 : -1);

		if (i > 0 && e[i].depth == (uint64_t)expect && expect >= 0) {
			if (e[i].send)
				p->queue[tail++] = i;
			else if (base > 0)
				base--;
			else
				pair(p, &e[p->queue[head++]], &e[i]);
			continue;
		}
		head = tail;
		base = e[i].depth > INT64_MAX ? 0 : (int64_t)e[i].depth;
		if (e[i].send && base > 0) {
			base--;
			p->queue[tail++] = i;
		}
	}
}

static void pair_flows(struct stats *st, struct map *flows)
{
	struct endpoint *e = st->endpoints.v;
	size_t n = st->endpoints.n;
	struct pairing p = {.flows = flows};

	sort(e, n, sizeof(*e), cmp_endpoint);
	p.queue = xcalloc(n, sizeof(*p.queue));
	for (size_t i = 0, j; i < n; i = j) {
		for (j = i + 1; j < n && e[j].mailbox == e[i].mailbox &&
				e[j].chan == e[i].chan;
		     j++)
			;
		if (e[i].mailbox)
			pair_mailbox(&p, e + i, j - i);
		else
			pair_messages(&p, e + i, j - i);
	}
	free(p.queue);
}

/* ---- Chrome Trace Event JSON ------------------------------------------ */

struct chrome_loop {
	int64_t inflight; /* ops submitted and not completed */
	bool sampled;	  /* the loop records INFLIGHT: use that instead */
	bool idle;	  /* between LOOP_IDLE and LOOP_WAKE */
	uint64_t idle_ts, idle_wait;
};

struct chrome {
	FILE *out;
	const struct trace *tr;
	struct map flows;      /* endpoint key -> flow id */
	struct map mb_tracks;  /* mailboxes that have a depth counter */
	uint64_t mb_untracked; /* events of mailboxes past MB_TRACKS */
	struct chrome_loop *loops;
	uint32_t nloops;
	bool first; /* no event written yet */
	bool comma; /* the open object has a member: the next needs a comma */
};

static char *__attribute__((format(printf, 1, 2)))
xasprintf(const char *fmt, ...)
{
	va_list ap;
	char *s;
	int n;

	va_start(ap, fmt);
	n = vasprintf(&s, fmt, ap);
	va_end(ap);
	if (n < 0)
		die("out of memory");
	return s;
}

/* Open an event with the members that every event has. */
static void ce_open(struct chrome *c, const char *ph, uint32_t tid, uint64_t ts,
		    const char *name)
{
	fputs(c->first ? "\n" : ",\n", c->out);
	c->first = false;
	fprintf(c->out,
		"{\"ph\":\"%s\",\"pid\":1,\"tid\":%" PRIu32 ",\"ts\":", ph,
		tid);
	json_us(c->out, ts);
	fputs(",\"name\":", c->out);
	json_str(c->out, name);
	c->comma = true;
}

static void ce_key(struct chrome *c, const char *key)
{
	fprintf(c->out, "%s\"%s\":", c->comma ? "," : "", key);
	c->comma = true;
}

static void ce_str(struct chrome *c, const char *key, const char *val)
{
	ce_key(c, key);
	json_str(c->out, val);
}

static void ce_u64(struct chrome *c, const char *key, uint64_t val)
{
	ce_key(c, key);
	fprintf(c->out, "%" PRIu64, val);
}

static void ce_i64(struct chrome *c, const char *key, int64_t val)
{
	ce_key(c, key);
	fprintf(c->out, "%" PRId64, val);
}

static void ce_us(struct chrome *c, const char *key, uint64_t ns)
{
	ce_key(c, key);
	json_us(c->out, ns);
}

static void ce_args(struct chrome *c)
{
	ce_key(c, "args");
	fputc('{', c->out);
	c->comma = false;
}

static void ce_close_args(struct chrome *c)
{
	fputs("}}", c->out);
}

static void chrome_metadata(struct chrome *c)
{
	ce_open(c, "M", 0, 0, "process_name");
	ce_args(c);
	ce_str(c, "name", "keel");
	ce_close_args(c);
	for (uint32_t i = 0; i < c->tr->d.nloops; i++) {
		const struct loop *l = &c->tr->d.loops[i];
		char name[64];

		if (!l->seen)
			continue;
		if (l->tid)
			snprintf(name, sizeof(name),
				 "loop %" PRIu32 " (tid %" PRIu64 ")", i,
				 l->tid);
		else
			snprintf(name, sizeof(name), "loop %" PRIu32, i);
		ce_open(c, "M", i, 0, "thread_name");
		ce_args(c);
		ce_str(c, "name", name);
		ce_close_args(c);
		ce_open(c, "M", i, 0, "thread_sort_index");
		ce_args(c);
		ce_u64(c, "sort_index", i);
		ce_close_args(c);
	}
}

static void chrome_step(void *ctx, const struct step *s)
{
	struct chrome *c = ctx;

	ce_open(c, "X", s->loop, s->begin, task_name(c->tr, s->name));
	ce_str(c, "cat", "step");
	ce_us(c, "dur", s->dur);
	ce_args(c);
	ce_u64(c, "slot", s->slot);
	if (s->lifetime)
		ce_u64(c, "task_id", s->lifetime);
	ce_str(c, "resumed_from", site_name(c->tr, s->site));
	/* keel ends an aborted step with 3 (trace.h names 1 and 2 only). */
	if (s->end == 2 || s->end == 3)
		ce_str(c, "then", s->end == 2 ? "exited" : "aborted");
	ce_close_args(c);
}

/* A task's lifetime is an async slice; its id is unique per lifetime. */
static void ce_lifetime(struct chrome *c, const struct task *t, const char *ph,
			uint64_t ts)
{
	ce_open(c, ph, t->loop, ts, task_name(c->tr, t->name));
	ce_str(c, "cat", "task");
	ce_u64(c, "id", t->lifetime);
	ce_args(c);
	ce_u64(c, "slot", t->slot);
}

static void chrome_spawn(struct chrome *c, const struct moment *m)
{
	if (!m->task)
		return;
	ce_lifetime(c, m->task, "b", m->ev->ts);
	if (m->ev->b) /* the spawner's slot + 1 */
		ce_u64(c, "spawner_slot", m->ev->b - 1);
	ce_close_args(c);
}

static void chrome_lifetime_end(void *ctx, const struct task *t, uint64_t ts,
				const int64_t *status)
{
	struct chrome *c = ctx;

	/* A damaged clock must not end a lifetime before it began. */
	ce_lifetime(c, t, "e", ts < t->spawn_ts ? t->spawn_ts : ts);
	if (status)
		ce_i64(c, "status", *status);
	else
		ce_str(c, "end", "EXIT not in the trace");
	ce_close_args(c);
}

/* An instant on the loop's thread; the caller adds args and closes it. */
static void ce_instant(struct chrome *c, const struct moment *m,
		       const char *cat, const char *name)
{
	ce_open(c, "i", m->loop, m->ev->ts, name);
	ce_str(c, "cat", cat);
	ce_str(c, "s", "t");
	ce_args(c);
	if (m->task) {
		ce_u64(c, "slot", m->task->slot);
		ce_str(c, "task", task_name(c->tr, m->task->name));
	}
}

static void chrome_supervision(struct chrome *c, const struct moment *m)
{
	const struct strings *s = &c->tr->strings;
	const char *a = str_or(s, m->ev->a, "(unnamed)");
	char *name;

	if (m->ev->type == KEEL_EV_ABORT)
		name = xasprintf("abort: %s", a);
	else if (m->ev->type == KEEL_EV_SUP_RESTART)
		name = xasprintf("restart %s", a);
	else
		name = xasprintf("escalate %s", a);
	ce_instant(c, m, m->ev->type == KEEL_EV_ABORT ? "abort" : "supervisor",
		   name);
	if (m->ev->type == KEEL_EV_ABORT) {
		ce_str(c, "message", a);
		ce_str(c, "site", str_or(s, m->ev->b, "(no site)"));
	} else if (m->ev->type == KEEL_EV_SUP_RESTART) {
		ce_str(c, "child", a);
		ce_u64(c, "restarts", m->ev->b);
	} else {
		ce_str(c, "supervisor", a);
	}
	ce_close_args(c);
	free(name);
}

static void chrome_mark(struct chrome *c, const struct moment *m)
{
	const char *name = str_or(&c->tr->strings, m->ev->a, "(unnamed)");

	ce_instant(c, m, "mark", name);
	ce_i64(c, "arg", (int64_t)m->ev->b);
	ce_close_args(c);
}

static void chrome_stall(struct chrome *c, const struct moment *m)
{
	char dur[24], *name = xasprintf("stall %s", fmt_ns(m->ev->a, dur));

	ce_instant(c, m, "stall", name);
	ce_us(c, "step_us", m->ev->a);
	ce_str(c, "site", site_name(c->tr, string_id(m->ev->b)));
	ce_close_args(c);
	free(name);
}

static void chrome_mailbox_trouble(struct chrome *c, const struct moment *m)
{
	bool full = m->ev->type == KEEL_EV_MB_FULL;
	char *name = xasprintf("mailbox %" PRIu64 " %s", m->ev->a,
			       full ? "full" : "drop");

	ce_instant(c, m, "mailbox", name);
	ce_u64(c, "mailbox", m->ev->a);
	ce_u64(c, full ? "policy" : "drops", m->ev->b);
	ce_close_args(c);
	free(name);
}

/* Mailbox depth, as a counter per mailbox (the first MB_TRACKS only). */
static void chrome_depth(struct chrome *c, const struct moment *m)
{
	char name[48];

	if (map_get(&c->mb_tracks, m->ev->a) == NOT_FOUND) {
		/* Thousands of counter tracks would bury everything else. */
		if (c->mb_tracks.n >= MB_TRACKS) {
			c->mb_untracked++;
			return;
		}
		map_put(&c->mb_tracks, m->ev->a, 1);
	}
	snprintf(name, sizeof(name), "mailbox %" PRIu64, m->ev->a);
	ce_open(c, "C", m->loop, m->ev->ts, name);
	ce_args(c);
	ce_u64(c, "depth", m->ev->b);
	ce_close_args(c);
}

static void chrome_flow(struct chrome *c, const struct moment *m)
{
	const struct keel_trace_event *ev = m->ev;
	bool mailbox =
	    ev->type == KEEL_EV_MB_SEND || ev->type == KEEL_EV_MB_RECV;
	bool send = ev->type == KEEL_EV_MSG_SEND || ev->type == KEEL_EV_MB_SEND;
	uint32_t id = map_get(&c->flows, m->key);

	if (mailbox)
		chrome_depth(c, m);
	if (id == NOT_FOUND)
		return;
	ce_open(c, send ? "s" : "f", m->loop, ev->ts,
		mailbox ? "mailbox message" : "message");
	ce_str(c, "cat", mailbox ? "mailbox" : "message");
	ce_u64(c, "id", id);
	/*
	 * A send binds to the step around it. A receive inside a step binds
	 * to it ("e": enclosing); one between steps, to the step that
	 * handles it next (the default for "f").
	 */
	if (send || m->in_step)
		ce_str(c, "bp", "e");
	ce_args(c);
	ce_u64(c, mailbox ? "mailbox" : "flow", ev->a);
	if (!mailbox)
		ce_u64(c, send ? "to_loop" : "from_loop", ev->b);
	ce_close_args(c);
}

static void chrome_inflight(struct chrome *c, const struct moment *m)
{
	struct chrome_loop *cl = &c->loops[m->loop];
	bool sample = m->ev->type == KEEL_EV_INFLIGHT;
	char name[48];

	/* A loop's samples are exact; counting is the fallback. */
	if (cl->sampled != sample)
		return;
	if (!sample) {
		cl->inflight += m->ev->type == KEEL_EV_OP_SUBMIT ? 1 : -1;
		if (cl->inflight < 0) /* submitted before the trace began */
			cl->inflight = 0;
	}
	/* Perfetto names the track "<name> <key>": "loop 0 ops in flight". */
	snprintf(name, sizeof(name), "loop %" PRIu32, m->loop);
	ce_open(c, "C", m->loop, m->ev->ts, name);
	ce_args(c);
	ce_i64(c, "ops in flight", sample ? (int64_t)m->ev->a : cl->inflight);
	ce_close_args(c);
}

/* LOOP_IDLE..LOOP_WAKE: the loop waiting in io_uring_enter. */
static void chrome_idle(struct chrome *c, const struct moment *m)
{
	struct chrome_loop *cl = &c->loops[m->loop];
	uint64_t ts = m->ev->ts;

	if (m->ev->type == KEEL_EV_LOOP_IDLE) {
		cl->idle = true;
		cl->idle_ts = ts;
		cl->idle_wait = m->ev->a;
		return;
	}
	if (!cl->idle || ts < cl->idle_ts)
		return;
	cl->idle = false;
	ce_open(c, "X", m->loop, cl->idle_ts, "idle");
	ce_str(c, "cat", "loop");
	ce_us(c, "dur", ts - cl->idle_ts);
	ce_args(c);
	if ((int64_t)cl->idle_wait < 0)
		ce_str(c, "wait", "until I/O");
	else
		ce_us(c, "wait_us", cl->idle_wait);
	ce_u64(c, "cqes", m->ev->a);
	ce_close_args(c);
}

static void chrome_event(void *ctx, const struct moment *m)
{
	struct chrome *c = ctx;

	if (m->loop >= c->nloops) /* the file changed since the first pass */
		return;
	switch (m->ev->type) {
	case KEEL_EV_SPAWN:
		chrome_spawn(c, m);
		break;
	case KEEL_EV_ABORT:
	case KEEL_EV_SUP_RESTART:
	case KEEL_EV_SUP_ESCALATE:
		chrome_supervision(c, m);
		break;
	case KEEL_EV_STALL:
		chrome_stall(c, m);
		break;
	case KEEL_EV_MARK:
		chrome_mark(c, m);
		break;
	case KEEL_EV_MB_FULL:
	case KEEL_EV_MB_DROP:
		chrome_mailbox_trouble(c, m);
		break;
	case KEEL_EV_MSG_SEND:
	case KEEL_EV_MSG_RECV:
	case KEEL_EV_MB_SEND:
	case KEEL_EV_MB_RECV:
		chrome_flow(c, m);
		break;
	case KEEL_EV_OP_SUBMIT:
	case KEEL_EV_OP_COMPLETE:
	case KEEL_EV_INFLIGHT:
		chrome_inflight(c, m);
		break;
	case KEEL_EV_LOOP_IDLE:
	case KEEL_EV_LOOP_WAKE:
		chrome_idle(c, m);
		break;
	}
}

static void chrome_drops(void *ctx, uint32_t loop, uint32_t n, uint64_t ts)
{
	struct chrome *c = ctx;
	char name[48];

	snprintf(name, sizeof(name), "dropped %" PRIu32 " events", n);
	ce_open(c, "i", loop, ts, name);
	ce_str(c, "cat", "trace");
	ce_str(c, "s", "t");
	ce_args(c);
	ce_u64(c, "dropped", n);
	ce_close_args(c);
}

static void chrome_footer(struct chrome *c)
{
	char n[24];

	fputs("\n],\n\"displayTimeUnit\":\"ns\",\n\"otherData\":{", c->out);
	c->comma = false;
	ce_str(c, "source", "keel-trace");
	ce_str(c, "trace_file", trace_path);
	snprintf(n, sizeof(n), "%" PRIu64, c->tr->all.dropped);
	ce_str(c, "dropped_events", n);
	snprintf(n, sizeof(n), "%" PRIu64, c->mb_untracked);
	ce_str(c, "mailbox_depth_events_not_shown", n);
	fputs("}}\n", c->out);
}

void write_chrome(struct trace *tr, FILE *out)
{
	struct chrome c = {.out = out, .tr = tr, .first = true};
	struct decoder d;

	pair_flows(&tr->st, &c.flows);
	c.nloops = tr->d.nloops;
	c.loops = xcalloc(c.nloops, sizeof(*c.loops));
	for (uint32_t i = 0; i < c.nloops; i++)
		c.loops[i].sampled = tr->d.loops[i].inflight_samples > 0;
	fputs("{\"traceEvents\":[", out);
	chrome_metadata(&c);
	trace_replay(tr, &d,
		     (struct sink){
			 .ctx = &c,
			 .event = chrome_event,
			 .step = chrome_step,
			 .lifetime_end = chrome_lifetime_end,
			 .drops = chrome_drops,
		     });
	chrome_footer(&c);
	decoder_free(&d);
	map_free(&c.flows);
	map_free(&c.mb_tracks);
	free(c.loops);
}
