/* SPDX-License-Identifier: MIT */
/*
 * stats.c: the first pass's sink: op latencies by opcode (every sample
 * kept, so percentiles are exact), step-time histograms, the longest steps,
 * stalls, aborts, restarts, and (for `chrome`) message and mailbox
 * endpoints. Then a trace: the file and what the first pass learnt, which
 * every output reads.
 */
#include "keel-trace.h"

/* ---- first pass: statistics ------------------------------------------- */

struct row *table_row(struct table *t, uint64_t key)
{
	uint32_t i = map_get(&t->ids, key);

	if (i != NOT_FOUND)
		return &t->rows.v[i];
	map_put(&t->ids, key, (uint32_t)t->rows.n);
	return vec_push(&t->rows);
}

void table_free(struct table *t)
{
	map_free(&t->ids);
	free(t->rows.v);
}

/* Shorter, then (for equal times) later: the heap drops it first. */
static bool step_less(const struct step *a, const struct step *b)
{
	return a->dur < b->dur || (a->dur == b->dur && a->begin > b->begin);
}

static void heap_swap(struct heap *h, size_t i, size_t j)
{
	struct step tmp = h->v[i];

	h->v[i] = h->v[j];
	h->v[j] = tmp;
}

static void heap_down(struct heap *h, size_t i)
{
	for (;;) {
		size_t least = i, l = 2 * i + 1, r = l + 1;

		if (l < h->n && step_less(&h->v[l], &h->v[least]))
			least = l;
		if (r < h->n && step_less(&h->v[r], &h->v[least]))
			least = r;
		if (least == i)
			return;
		heap_swap(h, i, least);
		i = least;
	}
}

static void heap_offer(struct heap *h, const struct step *s)
{
	size_t i = h->n;

	if (h->n == h->cap) {
		if (h->cap && step_less(&h->v[0], s)) {
			h->v[0] = *s;
			heap_down(h, 0);
		}
		return;
	}
	h->v[h->n++] = *s;
	while (i && step_less(&h->v[i], &h->v[(i - 1) / 2])) {
		heap_swap(h, i, (i - 1) / 2);
		i = (i - 1) / 2;
	}
}

static int cmp_longest_first(const void *a, const void *b)
{
	return step_less(b, a) ? -1 : step_less(a, b) ? 1 : 0;
}

static void add_mark(struct stats *st, const struct moment *m, uint32_t text,
		     uint64_t value)
{
	struct mark *k;

	if (st->nmarks++ >= HTML_MARKS)
		return;
	k = vec_push(&st->marks);
	k->ts = m->ev->ts;
	k->value = value;
	k->loop = m->loop;
	k->type = m->ev->type;
	k->text = text;
	k->name = m->task ? m->task->name : 0;
}

/* Count under `key` and remember where it first happened. */
static struct row *count_row(struct table *t, uint64_t key,
			     const struct moment *m)
{
	struct row *r = table_row(t, key);

	if (r->count++ == 0) {
		r->ts = m->ev->ts;
		r->loop = m->loop;
		r->name = m->task ? m->task->name : 0;
	}
	return r;
}

static void stats_supervision(struct stats *st, const struct moment *m)
{
	const struct keel_trace_event *ev = m->ev;
	uint32_t s1 = string_id(ev->a), s2 = string_id(ev->b);
	struct row *r;

	switch (ev->type) {
	case KEEL_EV_ABORT: /* a: message, b: site */
		r = count_row(&st->aborts, (uint64_t)s1 << 32 | s2, m);
		r->s1 = s1;
		r->s2 = s2;
		add_mark(st, m, s1, 0);
		break;
	case KEEL_EV_SUP_RESTART: /* a: child, b: its restarts */
		r = count_row(&st->restarts, s1, m);
		r->s1 = s1;
		r->max = ev->b > r->max ? ev->b : r->max;
		add_mark(st, m, s1, ev->b);
		break;
	case KEEL_EV_SUP_ESCALATE: /* a: supervisor */
		r = count_row(&st->escalations, s1, m);
		r->s1 = s1;
		add_mark(st, m, s1, 0);
		break;
	}
}

static void stats_stall(struct stats *st, const struct moment *m)
{
	struct step *s = vec_push(&st->stalls);

	s->begin = m->ev->ts;
	s->dur = m->ev->a;
	s->loop = m->loop;
	s->slot = m->task ? m->task->slot : NO_TASK;
	s->name = m->task ? m->task->name : 0;
	s->site = string_id(m->ev->b);
	add_mark(st, m, s->site, s->dur);
}

static void stats_endpoint(struct stats *st, const struct moment *m)
{
	const struct keel_trace_event *ev = m->ev;
	struct endpoint *e;

	if (!st->want_endpoints)
		return;
	e = vec_push(&st->endpoints);
	e->key = m->key;
	e->ts = ev->ts;
	e->chan = ev->a;
	e->depth = ev->b;
	e->mailbox = ev->type == KEEL_EV_MB_SEND || ev->type == KEEL_EV_MB_RECV;
	e->send = ev->type == KEEL_EV_MB_SEND || ev->type == KEEL_EV_MSG_SEND;
}

static void stats_op(struct stats *st, const struct keel_trace_event *ev)
{
	struct opstat *o = &st->ops[ev->op];

	if (ev->type == KEEL_EV_OP_SUBMIT) {
		o->submits++;
		return;
	}
	*vec_push(&o->lat) = ev->b;
	if ((int64_t)ev->a < 0) /* a negative errno */
		o->errors++;
}

static void stats_event(void *ctx, const struct moment *m)
{
	struct stats *st = ctx;
	const struct keel_trace_event *ev = m->ev;

	switch (ev->type) {
	case KEEL_EV_OP_SUBMIT:
	case KEEL_EV_OP_COMPLETE:
		stats_op(st, ev);
		break;
	case KEEL_EV_SPAWN:
		if (m->task) {
			struct row *r = table_row(&st->names, m->task->name);

			r->s1 = m->task->name;
			r->tasks++;
		}
		break;
	case KEEL_EV_ABORT:
	case KEEL_EV_SUP_RESTART:
	case KEEL_EV_SUP_ESCALATE:
		stats_supervision(st, m);
		break;
	case KEEL_EV_STALL:
		stats_stall(st, m);
		break;
	case KEEL_EV_MSG_SEND:
	case KEEL_EV_MSG_RECV:
	case KEEL_EV_MB_SEND:
	case KEEL_EV_MB_RECV:
		st->msgs_sent += ev->type == KEEL_EV_MSG_SEND;
		st->msgs_received += ev->type == KEEL_EV_MSG_RECV;
		stats_endpoint(st, m);
		break;
	case KEEL_EV_MB_FULL:
	case KEEL_EV_MB_DROP:
		st->mb_full += ev->type == KEEL_EV_MB_FULL;
		st->mb_drop += ev->type == KEEL_EV_MB_DROP;
		break;
	case KEEL_EV_TIMER_FIRE:
		st->timers++;
		st->max_lateness =
		    ev->a > st->max_lateness ? ev->a : st->max_lateness;
		break;
	}
}

static void stats_step(void *ctx, const struct step *s)
{
	struct stats *st = ctx;
	struct row *r = table_row(&st->names, s->name);

	st->step_hist[log2_bucket(s->dur)]++;
	st->steps++;
	st->busy += s->dur;
	heap_offer(&st->longest, s);
	r->s1 = s->name;
	r->count++;
	r->sum += s->dur;
	r->max = s->dur > r->max ? s->dur : r->max;
}

static void stats_drops(void *ctx, uint32_t loop, uint32_t n, uint64_t ts)
{
	struct stats *st = ctx;
	struct keel_trace_event ev = {.ts = ts, .type = 0};
	struct moment m = {.ev = &ev, .loop = loop};

	add_mark(st, &m, 0, n);
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

static void stats_finish(struct stats *st)
{
	for (size_t i = 0; i < ARRAY_SIZE(st->ops); i++)
		sort(st->ops[i].lat.v, st->ops[i].lat.n, sizeof(uint64_t),
		     cmp_u64);
	sort(st->longest.v, st->longest.n, sizeof(struct step),
	     cmp_longest_first);
	sort(st->stalls.v, st->stalls.n, sizeof(struct step),
	     cmp_longest_first);
}

static void stats_free(struct stats *st)
{
	for (size_t i = 0; i < ARRAY_SIZE(st->ops); i++)
		free(st->ops[i].lat.v);
	free(st->longest.v);
	free(st->stalls.v);
	table_free(&st->aborts);
	table_free(&st->restarts);
	table_free(&st->escalations);
	table_free(&st->names);
	free(st->marks.v);
	free(st->endpoints.v);
}

/* Nearest rank: the smallest sample with at least p% at or below it. */
uint64_t percentile(const struct opstat *o, unsigned p)
{
	size_t rank = (p * o->lat.n + 99) / 100;

	return o->lat.n ? o->lat.v[rank ? rank - 1 : 0] : 0;
}

/* Opcodes with completions, the busiest first. */
size_t ops_by_count(const struct stats *st, unsigned order[256])
{
	size_t n = 0;

	for (unsigned op = 0; op < 256; op++)
		if (st->ops[op].lat.n)
			order[n++] = op;
	for (size_t i = 1; i < n; i++) /* insertion sort: n <= 256 */
		for (size_t j = i;
		     j && st->ops[order[j]].lat.n > st->ops[order[j - 1]].lat.n;
		     j--) {
			unsigned tmp = order[j];

			order[j] = order[j - 1];
			order[j - 1] = tmp;
		}
	return n;
}

static int cmp_row_count(const void *a, const void *b)
{
	const struct row *x = a, *y = b;

	if (x->count != y->count)
		return x->count > y->count ? -1 : 1;
	return x->ts < y->ts ? -1 : x->ts > y->ts;
}

/* A table's rows, the most frequent first; the caller frees it. */
struct row *sorted_rows(const struct table *t)
{
	struct row *v = xcalloc(t->rows.n, sizeof(*v));

	if (t->rows.n)
		memcpy(v, t->rows.v, t->rows.n * sizeof(*v));
	sort(v, t->rows.n, sizeof(*v), cmp_row_count);
	return v;
}

/* ---- a trace: the file and what the first pass learnt ----------------- */

static void sum_loops(struct trace *tr)
{
	struct loop *all = &tr->all;

	for (uint32_t i = 0; i < tr->d.nloops; i++) {
		const struct loop *l = &tr->d.loops[i];

		tr->loops += l->seen;
		all->events += l->events;
		all->spawned += l->spawned;
		all->exited += l->exited;
		all->steps += l->steps;
		all->busy += l->busy;
		all->ops += l->ops;
		all->dropped += l->dropped;
		all->lost_steps += l->lost_steps;
	}
}

/* Open and check the whole file, and gather the statistics. */
void trace_load(struct trace *tr, const char *path, size_t longest,
		bool want_endpoints)
{
	trace_path = path;
	reader_open(&tr->r, path);
	trace_check(tr, longest, want_endpoints);
}

void trace_check(struct trace *tr, size_t longest, bool want_endpoints)
{
	tr->st.longest.cap = longest;
	tr->st.longest.v = xcalloc(longest, sizeof(struct step));
	tr->st.want_endpoints = want_endpoints;
	tr->d.strings = &tr->strings;
	tr->d.load_strings = true;
	tr->d.sink = (struct sink){
	    .ctx = &tr->st,
	    .event = stats_event,
	    .step = stats_step,
	    .drops = stats_drops,
	};
	scan(&tr->r, &tr->d);
	stats_finish(&tr->st);
	sum_loops(tr);
}

/* A second pass that hands everything to `sink`. */
void trace_replay(struct trace *tr, struct decoder *d, struct sink sink)
{
	memset(d, 0, sizeof(*d));
	d->strings = &tr->strings;
	d->end_ts = tr->d.end_ts; /* lifetimes still open end here */
	d->sink = sink;
	scan(&tr->r, d);
}

void trace_free(struct trace *tr)
{
	decoder_free(&tr->d);
	stats_free(&tr->st);
	map_free(&tr->strings.ids);
	map_free(&tr->strings.texts);
	free(tr->strings.at.v);
	free(tr->strings.first.v);
	free(tr->strings.blob.v);
	fclose(tr->r.f);
}

const char *task_name(const struct trace *tr, uint32_t id)
{
	return str_or(&tr->strings, id, "(unnamed)");
}

const char *site_name(const struct trace *tr, uint32_t id)
{
	return str_or(&tr->strings, id, "(first step)");
}

const char *fmt_realtime(uint64_t ns, char buf[64])
{
	time_t secs = (time_t)(ns / 1000000000u);
	struct tm tm;
	size_t n;

	if (ns == 0 || !gmtime_r(&secs, &tm))
		return "at an unknown time";
	n = strftime(buf, 64, "%Y-%m-%d %H:%M:%S", &tm);
	snprintf(buf + n, 64 - n, ".%06u UTC",
		 (unsigned)(ns % 1000000000u / 1000));
	return buf;
}
