/* SPDX-License-Identifier: MIT */
/*
 * decode.c: raw events into what the outputs talk about: steps with their
 * task's name and the await site they resumed from, and task lifetimes
 * (a task slot is reused; a SPAWN starts a new lifetime). Each event,
 * step and lifetime is handed to a sink: the statistics in the first
 * pass, the Chrome writer or the HTML timeline in the second.
 */
#include "keel-trace.h"

/* ---- the decoder: steps and task lifetimes ----------------------------- */

static void decode_event(const unsigned char *p, struct keel_trace_event *ev)
{
	ev->ts = le64(p);
	ev->type = p[8];
	ev->op = p[9];
	ev->flags = le16(p + 10);
	ev->task = le32(p + 12);
	ev->a = le64(p + 16);
	ev->b = le64(p + 24);
}

/* A string id from an event field; one too large is an unknown string. */
uint32_t string_id(uint64_t v)
{
	return v > UINT32_MAX ? UINT32_MAX : (uint32_t)v;
}

static struct loop *decoder_loop(struct decoder *d, uint32_t index)
{
	if (index >= d->nloops) {
		d->loops = xrealloc(d->loops, index + 1, sizeof(*d->loops));
		memset(d->loops + d->nloops, 0,
		       (index + 1 - d->nloops) * sizeof(*d->loops));
		d->nloops = index + 1;
	}
	d->loops[index].seen = true;
	return &d->loops[index];
}

static struct task *task_get(struct decoder *d, uint32_t loop, uint32_t slot)
{
	uint64_t key = (uint64_t)loop << 32 | slot;
	uint32_t i = map_get(&d->task_ids, key);
	struct task *t;

	if (i != NOT_FOUND)
		return &d->tasks.v[i];
	if (d->tasks.n >= NOT_FOUND)
		die("more than %u task slots", NOT_FOUND);
	map_put(&d->task_ids, key, (uint32_t)d->tasks.n);
	t = vec_push(&d->tasks);
	t->loop = loop;
	t->slot = slot;
	return t;
}

static void end_lifetime(struct decoder *d, struct task *t, uint64_t ts,
			 const int64_t *status)
{
	if (t->alive && d->sink.lifetime_end)
		d->sink.lifetime_end(d->sink.ctx, t, ts, status);
	t->alive = false;
}

static void on_spawn(struct decoder *d, struct loop *l, struct task *t,
		     const struct keel_trace_event *ev)
{
	/* Still alive: its EXIT was dropped and the slot was reused. */
	end_lifetime(d, t, ev->ts, NULL);
	t->lifetime = ++d->lifetimes;
	t->spawn_ts = ev->ts;
	t->name = string_id(ev->a);
	t->site = 0;
	t->alive = true;
	l->spawned++;
}

static void on_step_begin(struct loop *l, const struct task *t, uint64_t ts)
{
	if (l->step_open) /* a loop runs one step at a time: END was lost */
		l->lost_steps++;
	l->step_open = true;
	l->step_slot = t->slot;
	l->step_site = t->site;
	l->step_begin = ts;
}

static void on_step_end(struct decoder *d, struct loop *l, const struct task *t,
			const struct keel_trace_event *ev)
{
	struct step s;

	if (!l->step_open || l->step_slot != t->slot ||
	    ev->ts < l->step_begin) {
		l->lost_steps++;
		l->step_open = false;
		return;
	}
	l->step_open = false;
	s = (struct step){
	    .begin = l->step_begin,
	    .dur = ev->ts - l->step_begin,
	    .lifetime = t->lifetime,
	    .loop = t->loop,
	    .slot = t->slot,
	    .name = t->name,
	    .site = l->step_site,
	    .end = ev->a < 4 ? (uint8_t)ev->a : 0,
	};
	l->steps++;
	l->busy += s.dur;
	if (d->sink.step)
		d->sink.step(d->sink.ctx, &s);
}

/* Update the task and loop state that the event changes. */
static void track(struct decoder *d, struct loop *l, struct task *t,
		  const struct keel_trace_event *ev)
{
	switch (ev->type) {
	case KEEL_EV_SPAWN:
		if (t)
			on_spawn(d, l, t, ev);
		break;
	case KEEL_EV_STEP_BEGIN:
		if (t)
			on_step_begin(l, t, ev->ts);
		break;
	case KEEL_EV_STEP_END:
		if (t)
			on_step_end(d, l, t, ev);
		break;
	case KEEL_EV_WAIT:
		if (t)
			t->site = string_id(ev->a);
		break;
	case KEEL_EV_OP_SUBMIT:
		l->ops++;
		break;
	case KEEL_EV_INFLIGHT:
		l->inflight_samples++;
		break;
	default:
		if (ev->type == 0 || ev->type > KEEL_EV_MARK)
			d->unknown++; /* a newer writer's event: skip it */
		break;
	}
}

/* Replace the event's string ids by the first id of the same text. */
static void canonical_strings(const struct strings *s,
			      struct keel_trace_event *ev)
{
	switch (ev->type) {
	case KEEL_EV_ABORT: /* a: message, b: site */
		ev->b = str_canonical(s, string_id(ev->b));
		/* fall through */
	case KEEL_EV_SPAWN: /* a: name */
	case KEEL_EV_WAIT:  /* a: site */
	case KEEL_EV_SUP_RESTART:
	case KEEL_EV_SUP_ESCALATE:
	case KEEL_EV_MARK: /* a: name */
		ev->a = str_canonical(s, string_id(ev->a));
		break;
	case KEEL_EV_STALL: /* b: site */
		ev->b = str_canonical(s, string_id(ev->b));
		break;
	}
}

static bool is_flow_event(uint8_t type)
{
	return type == KEEL_EV_MSG_SEND || type == KEEL_EV_MSG_RECV ||
	       type == KEEL_EV_MB_SEND || type == KEEL_EV_MB_RECV;
}

static void decoder_event(struct decoder *d, uint32_t loop,
			  struct keel_trace_event *ev)
{
	struct loop *l = &d->loops[loop];
	struct task *t =
	    ev->task == NO_TASK ? NULL : task_get(d, loop, ev->task);
	struct moment m = {.ev = ev, .loop = loop, .task = t};

	canonical_strings(d->strings, ev);
	d->events++;
	l->events++;
	l->last_ts = ev->ts;
	if (ev->ts > d->end_ts)
		d->end_ts = ev->ts;
	if (is_flow_event(ev->type))
		m.key = (uint64_t)loop << 40 | l->flow_seq++;
	track(d, l, t, ev);
	m.in_step = l->step_open;
	if (d->sink.event)
		d->sink.event(d->sink.ctx, &m);
	if (ev->type == KEEL_EV_EXIT && t) {
		int64_t status = (int64_t)ev->a;

		l->exited++;
		end_lifetime(d, t, ev->ts, &status);
	}
}

static void decoder_drops(struct decoder *d, uint32_t loop, uint32_t n,
			  uint64_t ts)
{
	struct loop *l = &d->loops[loop];

	l->dropped += n;
	/*
	 * The lost events may hold this step's END and a later BEGIN of the
	 * same task: pairing across them would make up a long step.
	 */
	if (l->step_open) {
		l->step_open = false;
		l->lost_steps++;
	}
	if (d->sink.drops)
		d->sink.drops(d->sink.ctx, loop, n, ts);
}

/* Lifetimes still open end with the trace. */
static void decoder_finish(struct decoder *d)
{
	for (size_t i = 0; i < d->tasks.n; i++)
		end_lifetime(d, &d->tasks.v[i], d->end_ts, NULL);
	for (uint32_t i = 0; i < d->nloops; i++)
		if (d->loops[i].step_open)
			d->loops[i].lost_steps++;
}

void decoder_free(struct decoder *d)
{
	free(d->loops);
	map_free(&d->task_ids);
	free(d->tasks.v);
}

static void scan_events(struct reader *r, struct decoder *d,
			const struct record *rec)
{
	struct keel_trace_event ev;
	uint32_t left = rec->count;
	bool first = true;

	while (left) {
		uint32_t n = left < CHUNK_EVENTS ? left : CHUNK_EVENTS;

		reader_read(r, r->chunk, (size_t)n * EVENT_BYTES);
		for (uint32_t i = 0; i < n; i++) {
			decode_event(r->chunk + (size_t)i * EVENT_BYTES, &ev);
			/* Drops are shown where the record's events resume. */
			if (first && rec->extra)
				decoder_drops(d, rec->loop, rec->extra, ev.ts);
			first = false;
			decoder_event(d, rec->loop, &ev);
		}
		left -= n;
	}
	if (first && rec->extra)
		decoder_drops(d, rec->loop, rec->extra,
			      d->loops[rec->loop].last_ts);
}

/* One pass over the whole file. */
void scan(struct reader *r, struct decoder *d)
{
	struct record rec;

	reader_rewind(r);
	while (reader_record(r, &rec)) {
		uint64_t body = record_body(r, &rec);

		switch (rec.kind) {
		case KEEL_TRACE_REC_EVENTS:
			decoder_loop(d, rec.loop);
			scan_events(r, d, &rec);
			break;
		case KEEL_TRACE_REC_STRING:
			if (d->load_strings)
				read_string(r, d->strings, &rec, body);
			else
				reader_skip(r, body);
			break;
		case KEEL_TRACE_REC_LOOP:
			decoder_loop(d, rec.loop)->tid = rec.extra;
			break;
		}
	}
	decoder_finish(d);
}
