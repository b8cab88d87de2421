/* SPDX-License-Identifier: MIT */
/*
 * html.c: the self-contained HTML report. The page (report.html: inline
 * CSS and JS that draw on canvases, so it loads nothing) is built into the
 * program by report.S; this file fills in its placeholders with the
 * trace's name, its data as JSON, and the text summary.
 */
#include "keel-trace.h"

#define HTML_BINS  1600 /* busy-fraction bins per loop in the report */
#define HTML_TASKS 15	/* task names in the "top tasks" chart */

/* ---- the HTML report -------------------------------------------------- */

/*
 * The page, from report.html (report.S builds it in, NUL-terminated):
 * @TITLE@, @DATA@ and @SUMMARY@ are filled in by html_write().
 */
extern const char keel_trace_report_html[];

struct html {
	const struct trace *tr;
	FILE *out;
	uint32_t nloops;
	uint64_t bin_ns;
	uint64_t *busy;	 /* [loop][bin]: ns of steps in the bin */
	int64_t *whole;	 /* [loop][bin]: steps covering bins whole, as the
			  * difference of each bin's count from the last */
	struct map used; /* string ids the report names */
};

/*
 * Spread a step's time over the bins it covers. Covered bins are counted
 * through a difference array, so a step costs O(1) however long it is.
 */
static void html_step(void *ctx, const struct step *s)
{
	struct html *h = ctx;
	uint64_t w = h->bin_ns, end = s->begin + s->dur;
	uint64_t b0 = s->begin / w, b1 = end / w;
	uint64_t *busy = h->busy + (size_t)s->loop * HTML_BINS;
	int64_t *whole = h->whole + (size_t)s->loop * (HTML_BINS + 1);

	if (s->loop >= h->nloops || b0 >= HTML_BINS)
		return; /* the file changed since the first pass */
	if (b1 >= HTML_BINS) {
		b1 = HTML_BINS - 1;
		end = HTML_BINS * w;
	}
	if (b0 == b1) {
		busy[b0] += end - s->begin;
		return;
	}
	busy[b0] += (b0 + 1) * w - s->begin;
	busy[b1] += end - b1 * w;
	whole[b0 + 1]++;
	whole[b1]--;
}

static void html_bins(struct html *h, struct trace *tr)
{
	struct decoder d;

	h->nloops = tr->d.nloops;
	h->bin_ns = tr->d.end_ts / HTML_BINS + 1;
	h->busy = xcalloc((size_t)h->nloops * HTML_BINS, sizeof(*h->busy));
	h->whole =
	    xcalloc((size_t)h->nloops * (HTML_BINS + 1), sizeof(*h->whole));
	trace_replay(tr, &d, (struct sink){.ctx = h, .step = html_step});
	decoder_free(&d);
	for (uint32_t l = 0; l < h->nloops; l++) {
		int64_t covered = 0;

		for (size_t b = 0; b < HTML_BINS; b++) {
			covered += h->whole[l * (HTML_BINS + 1) + b];
			h->busy[l * HTML_BINS + b] +=
			    (uint64_t)covered * h->bin_ns;
		}
	}
}

/* A string id the page names: remember to put its text in the page. */
static uint32_t sid(struct html *h, uint32_t id)
{
	if (id)
		map_put(&h->used, id, 1);
	return id;
}

static uint64_t table_count(const struct table *t)
{
	uint64_t n = 0;

	for (size_t i = 0; i < t->rows.n; i++)
		n += t->rows.v[i].count;
	return n;
}

static void html_summary_json(struct html *h)
{
	const struct trace *tr = h->tr;
	uint64_t completions = 0;

	for (size_t i = 0; i < ARRAY_SIZE(tr->st.ops); i++)
		completions += tr->st.ops[i].lat.n;
	fprintf(h->out,
		"\"summary\":{\"loops\":%" PRIu32 ",\"events\":%" PRIu64
		",\"spawned\":%" PRIu64 ",\"exited\":%" PRIu64
		",\"steps\":%" PRIu64 ",\"busy\":%" PRIu64 ",\"ops\":%" PRIu64
		",\"dropped\":%" PRIu64 ",\"stalls\":%zu,\"aborts\":%" PRIu64
		",\"restarts\":%" PRIu64 ",\"escalations\":%" PRIu64 "},\n",
		tr->loops, tr->d.events, tr->all.spawned, tr->all.exited,
		tr->st.steps, tr->st.busy, completions, tr->all.dropped,
		tr->st.stalls.n, table_count(&tr->st.aborts),
		table_count(&tr->st.restarts),
		table_count(&tr->st.escalations));
}

static void html_loops_json(struct html *h)
{
	const char *sep = "";

	fprintf(h->out, "\"bin_ns\":%" PRIu64 ",\n\"loops\":[", h->bin_ns);
	for (uint32_t l = 0; l < h->nloops; l++) {
		const struct loop *lp = &h->tr->d.loops[l];

		if (!lp->seen)
			continue;
		fprintf(h->out,
			"%s\n{\"index\":%" PRIu32 ",\"tid\":%" PRIu64
			",\"busy\":%" PRIu64 ",\"bins\":[",
			sep, l, lp->tid, lp->busy);
		/* Busy fraction per bin, in thousandths. */
		for (size_t b = 0; b < HTML_BINS; b++) {
			uint64_t v =
			    h->busy[l * HTML_BINS + b] * 1000 / h->bin_ns;

			fprintf(h->out, "%s%" PRIu64, b ? "," : "",
				v > 1000 ? 1000 : v);
		}
		fputs("]}", h->out);
		sep = ",";
	}
	fputs("],\n", h->out);
}

/* [loop, begin, dur, name, site, slot], as the page's JS reads them. */
static void html_step_rows(struct html *h, const char *key,
			   const struct step *v, size_t n)
{
	fprintf(h->out, "\"%s\":[", key);
	for (size_t i = 0; i < n; i++)
		fprintf(h->out,
			"%s[%" PRIu32 ",%" PRIu64 ",%" PRIu64 ",%" PRIu32
			",%" PRIu32 ",%" PRId64 "]",
			i ? (i % 8 ? "," : ",\n") : "", v[i].loop, v[i].begin,
			v[i].dur, sid(h, v[i].name), sid(h, v[i].site),
			v[i].slot == NO_TASK ? (int64_t)-1
					     : (int64_t)v[i].slot);
	fputs("],\n", h->out);
}

static void html_marks_json(struct html *h)
{
	const struct stats *st = &h->tr->st;

	fputs("\"marks\":[", h->out);
	for (size_t i = 0; i < st->marks.n; i++) {
		const struct mark *k = &st->marks.v[i];

		fprintf(h->out,
			"%s[%" PRIu32 ",%" PRIu64 ",%" PRIu32 ",%" PRIu32
			",%" PRIu32 ",%" PRIu64 "]",
			i ? "," : "", k->loop, k->ts, k->type, sid(h, k->text),
			sid(h, k->name), k->value);
	}
	fputs("],\n", h->out);
}

static void html_hist_json(FILE *f, const uint64_t hist[HIST_BUCKETS])
{
	const char *sep = "";

	fputs("[", f);
	for (unsigned k = 0; k < HIST_BUCKETS; k++) {
		if (!hist[k])
			continue;
		fprintf(f, "%s[%u,%" PRIu64 "]", sep, k, hist[k]);
		sep = ",";
	}
	fputs("]", f);
}

static void html_ops_json(struct html *h)
{
	unsigned order[256];
	size_t n = ops_by_count(&h->tr->st, order);
	char name[16];

	fputs("\"ops\":[", h->out);
	for (size_t i = 0; i < n; i++) {
		const struct opstat *o = &h->tr->st.ops[order[i]];
		uint64_t hist[HIST_BUCKETS] = {0};

		for (size_t j = 0; j < o->lat.n; j++)
			hist[log2_bucket(o->lat.v[j])]++;
		fprintf(h->out, "%s\n{\"name\":", i ? "," : "");
		json_str(h->out, op_name(order[i], name));
		fprintf(h->out,
			",\"count\":%zu,\"errors\":%" PRIu64 ",\"p50\":%" PRIu64
			",\"p90\":%" PRIu64 ",\"p99\":%" PRIu64
			",\"max\":%" PRIu64 ",\"hist\":",
			o->lat.n, o->errors, percentile(o, 50),
			percentile(o, 90), percentile(o, 99),
			o->lat.v[o->lat.n - 1]);
		html_hist_json(h->out, hist);
		fputs("}", h->out);
	}
	fputs("],\n\"step_hist\":", h->out);
	html_hist_json(h->out, h->tr->st.step_hist);
	fputs(",\n", h->out);
}

static int cmp_row_sum(const void *a, const void *b)
{
	const struct row *x = a, *y = b;

	if (x->sum != y->sum)
		return x->sum > y->sum ? -1 : 1;
	return x->s1 < y->s1 ? -1 : x->s1 > y->s1;
}

/* Task names by their steps' total time. */
static void html_tasks_json(struct html *h)
{
	const struct table *t = &h->tr->st.names;
	struct row *v = sorted_rows(t);
	size_t shown = 0;

	sort(v, t->rows.n, sizeof(*v), cmp_row_sum);
	fputs("\"tasks\":[", h->out);
	for (size_t i = 0; i < t->rows.n && shown < HTML_TASKS; i++) {
		if (!v[i].count) /* spawned, never stepped */
			continue;
		fprintf(h->out,
			"%s\n{\"name\":%" PRIu32 ",\"total\":%" PRIu64
			",\"steps\":%" PRIu64 ",\"max\":%" PRIu64
			",\"tasks\":%" PRIu64 "}",
			shown++ ? "," : "", sid(h, v[i].s1), v[i].sum,
			v[i].count, v[i].max, v[i].tasks);
	}
	fputs("],\n", h->out);
	free(v);
}

/* Aborts, restarts, escalations: the most frequent first. */
static void html_rows_json(struct html *h)
{
	const struct stats *st = &h->tr->st;
	struct row *a = sorted_rows(&st->aborts);
	struct row *r = sorted_rows(&st->restarts);
	struct row *e = sorted_rows(&st->escalations);

	fputs("\"aborts\":[", h->out);
	for (size_t i = 0; i < st->aborts.rows.n && i < LIST_ROWS; i++)
		fprintf(h->out,
			"%s[%" PRIu64 ",%" PRIu32 ",%" PRIu32 ",%" PRIu32
			",%" PRIu64 ",%" PRIu32 "]",
			i ? "," : "", a[i].count, sid(h, a[i].s1),
			sid(h, a[i].s2), a[i].loop, a[i].ts, sid(h, a[i].name));
	fputs("],\n\"restarts\":[", h->out);
	for (size_t i = 0; i < st->restarts.rows.n && i < LIST_ROWS; i++)
		fprintf(h->out,
			"%s[%" PRIu64 ",%" PRIu32 ",%" PRIu64 ",%" PRIu32
			",%" PRIu64 "]",
			i ? "," : "", r[i].count, sid(h, r[i].s1), r[i].max,
			r[i].loop, r[i].ts);
	fputs("],\n\"escalations\":[", h->out);
	for (size_t i = 0; i < st->escalations.rows.n && i < LIST_ROWS; i++)
		fprintf(h->out,
			"%s[%" PRIu64 ",%" PRIu32 ",%" PRIu32 ",%" PRIu64 "]",
			i ? "," : "", e[i].count, sid(h, e[i].s1), e[i].loop,
			e[i].ts);
	fputs("],\n", h->out);
	free(a);
	free(r);
	free(e);
}

/* The text of every string id named above (written last for that). */
static void html_strings_json(struct html *h)
{
	const char *sep = "";

	fputs("\"str\":{", h->out);
	for (size_t i = 0; i < h->used.cap; i++) {
		const char *s;

		if (h->used.vals[i] == NOT_FOUND)
			continue;
		s = str_find(&h->tr->strings, h->used.keys[i]);
		if (!s)
			continue; /* the page says "(unknown string)" */
		fprintf(h->out, "%s\n\"%" PRIu64 "\":", sep, h->used.keys[i]);
		json_str(h->out, s);
		sep = ",";
	}
	fputs("}", h->out);
}

static void html_data(struct html *h)
{
	const struct trace *tr = h->tr;
	char when[64];

	fputs("{\"file\":", h->out);
	json_str(h->out, trace_path);
	fputs(",\"started\":", h->out);
	json_str(h->out, fmt_realtime(tr->r.start_real, when));
	fprintf(h->out, ",\"duration\":%" PRIu64 ",\n", tr->d.end_ts);
	html_summary_json(h);
	html_loops_json(h);
	html_step_rows(h, "steps", tr->st.longest.v, tr->st.longest.n);
	fprintf(h->out, "\"steps_total\":%" PRIu64 ",\n", tr->st.steps);
	html_step_rows(h, "stalls", tr->st.stalls.v,
		       tr->st.stalls.n < LIST_ROWS ? tr->st.stalls.n
						   : LIST_ROWS);
	html_marks_json(h);
	html_ops_json(h);
	html_tasks_json(h);
	html_rows_json(h);
	html_strings_json(h);
	fputs("}", h->out);
}

/* Text in HTML: the characters that could end it or start markup. */
static void html_text(FILE *f, const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		switch (s[i]) {
		case '&':
			fputs("&amp;", f);
			break;
		case '<':
			fputs("&lt;", f);
			break;
		case '>':
			fputs("&gt;", f);
			break;
		case '"':
			fputs("&quot;", f);
			break;
		default:
			fputc(s[i], f);
		}
	}
}

/* The text summary, the same as `keel-trace summary` prints. */
static void html_summary_text(struct html *h)
{
	char *text = NULL;
	size_t n = 0;
	FILE *mem = open_memstream(&text, &n);

	if (!mem)
		die("out of memory");
	print_summary(mem, h->tr);
	if (fclose(mem) != 0)
		die("out of memory");
	html_text(h->out, text, n);
	free(text);
}

static void html_write(struct html *h)
{
	const char *p = keel_trace_report_html, *at, *end;

	while ((at = strchr(p, '@')) && (end = strchr(at + 1, '@'))) {
		size_t len = (size_t)(end - at - 1);

		fwrite(p, 1, (size_t)(at - p), h->out);
		if (len == 5 && !strncmp(at + 1, "TITLE", len))
			html_text(h->out, trace_path, strlen(trace_path));
		else if (len == 4 && !strncmp(at + 1, "DATA", len))
			html_data(h);
		else if (len == 7 && !strncmp(at + 1, "SUMMARY", len))
			html_summary_text(h);
		p = end + 1;
	}
	fputs(p, h->out);
}

void write_html(struct trace *tr, FILE *out)
{
	struct html h = {.tr = tr, .out = out};

	html_bins(&h, tr);
	html_write(&h);
	free(h.busy);
	free(h.whole);
	map_free(&h.used);
}
