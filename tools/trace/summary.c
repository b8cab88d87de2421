/* SPDX-License-Identifier: MIT */
/*
 * summary.c: the text summary (`keel-trace summary`, and the summary
 * inside the HTML report): overview, loops, op latency by opcode, step
 * times, the slowest steps, stalls, aborts, supervision, traffic, drops.
 */
#include "keel-trace.h"

/* ---- the summary ------------------------------------------------------ */

static void print_overview(FILE *f, const struct trace *tr)
{
	char when[64], dur[24];
	fprintf(f, "trace %s: version %d, started %s\n", trace_path,
		KEEL_TRACE_VERSION, fmt_realtime(tr->r.start_real, when));
	fprintf(f,
		"duration %s, %" PRIu32 " loops, %" PRIu64 " events, %" PRIu64
		" dropped\n",
		fmt_ns(tr->d.end_ts, dur), tr->loops, tr->d.events,
		tr->all.dropped);
	if (tr->d.unknown)
		fprintf(f, "skipped %" PRIu64 " events of unknown types\n",
			tr->d.unknown);
	if (tr->all.lost_steps)
		fprintf(f,
			"%" PRIu64 " step begin/end events had no partner "
			"(dropped or cut off)\n",
			tr->all.lost_steps);
}

static void print_loops(FILE *f, const struct trace *tr)
{
	char busy[24];

	fprintf(f, "\nloops\n  %4s %8s %8s %8s %9s %9s %9s %8s\n", "loop",
		"thread", "spawned", "exited", "steps", "busy", "submits",
		"dropped");
	for (uint32_t i = 0; i < tr->d.nloops; i++) {
		const struct loop *l = &tr->d.loops[i];

		if (!l->seen)
			continue;
		fprintf(f,
			"  %4" PRIu32 " %8" PRIu64 " %8" PRIu64 " %8" PRIu64
			" %9" PRIu64 " %9s %9" PRIu64 " %8" PRIu64 "\n",
			i, l->tid, l->spawned, l->exited, l->steps,
			fmt_ns(l->busy, busy), l->ops, l->dropped);
	}
}

static void print_ops(FILE *f, const struct trace *tr)
{
	unsigned order[256];
	size_t n = ops_by_count(&tr->st, order);
	char b[4][24], name[16];

	fprintf(f, "\nop latency, submit to completion\n");
	if (n == 0) {
		fprintf(f, "  no completions\n");
		return;
	}
	fprintf(f, "  %-16s %9s %8s %9s %9s %9s %9s\n", "opcode", "count",
		"errors", "p50", "p90", "p99", "max");
	for (size_t i = 0; i < n; i++) {
		const struct opstat *o = &tr->st.ops[order[i]];

		fprintf(f, "  %-16s %9zu %8" PRIu64 " %9s %9s %9s %9s\n",
			op_name(order[i], name), o->lat.n, o->errors,
			fmt_ns(percentile(o, 50), b[0]),
			fmt_ns(percentile(o, 90), b[1]),
			fmt_ns(percentile(o, 99), b[2]),
			fmt_ns(o->lat.v[o->lat.n - 1], b[3]));
	}
}

static void print_bucket(FILE *f, unsigned lo, unsigned hi, uint64_t n,
			 uint64_t most)
{
	int bar = (int)((n * 40 + most - 1) / most);
	char b0[24], b1[24];

	fprintf(f, "  [%8s, %8s) %9" PRIu64 "  %.*s\n",
		fmt_ns(bucket_floor(lo), b0),
		hi < 64 ? fmt_ns(bucket_floor(hi + 1), b1) : "max", n, bar,
		"########################################");
}

/* Buckets from the first used to the last; a run of empty ones is a row. */
static void print_histogram(FILE *f, const uint64_t hist[HIST_BUCKETS])
{
	unsigned lo = HIST_BUCKETS, hi = 0;
	uint64_t most = 0;

	for (unsigned k = 0; k < HIST_BUCKETS; k++) {
		if (!hist[k])
			continue;
		lo = k < lo ? k : lo;
		hi = k;
		most = hist[k] > most ? hist[k] : most;
	}
	for (unsigned k = lo, end; k <= hi && lo < HIST_BUCKETS; k = end + 1) {
		for (end = k; !hist[k] && end < hi && !hist[end + 1]; end++)
			;
		print_bucket(f, k, end, hist[k], most);
	}
}

static void print_steps(FILE *f, const struct trace *tr)
{
	const struct stats *st = &tr->st;
	char busy[24], max[24];

	fprintf(f, "\nstep time (log2 buckets)\n");
	print_histogram(f, st->step_hist);
	fprintf(f, "  %" PRIu64 " steps, busy %s, longest %s\n", st->steps,
		fmt_ns(st->busy, busy),
		fmt_ns(st->longest.n ? st->longest.v[0].dur : 0, max));
}

static void print_step_rows(FILE *f, const struct trace *tr,
			    const struct step *v, size_t n)
{
	char dur[24], at[24];

	fprintf(f, "  %9s %9s %4s %6s  %-20s %s\n", "duration", "at", "loop",
		"slot", "task", "resumed from");
	for (size_t i = 0; i < n && i < LIST_ROWS; i++)
		fprintf(f, "  %9s %9s %4" PRIu32 " %6" PRId64 "  %-20s %s\n",
			fmt_ns(v[i].dur, dur), fmt_ns(v[i].begin, at),
			v[i].loop,
			v[i].slot == NO_TASK ? (int64_t)-1 : (int64_t)v[i].slot,
			task_name(tr, v[i].name), site_name(tr, v[i].site));
}

static void print_slowest(FILE *f, const struct trace *tr)
{
	fprintf(f, "\nslowest steps\n");
	if (tr->st.longest.n == 0)
		fprintf(f, "  no steps\n");
	else
		print_step_rows(f, tr, tr->st.longest.v, tr->st.longest.n);
}

static void print_stalls(FILE *f, const struct trace *tr)
{
	fprintf(f, "\nstalls: %zu%s\n", tr->st.stalls.n,
		tr->st.stalls.n ? " (longest first)" : "");
	if (tr->st.stalls.n)
		print_step_rows(f, tr, tr->st.stalls.v, tr->st.stalls.n);
}

static void print_aborts(FILE *f, const struct trace *tr)
{
	struct row *v = sorted_rows(&tr->st.aborts);
	uint64_t all = 0;
	char at[24];

	for (size_t i = 0; i < tr->st.aborts.rows.n; i++)
		all += v[i].count;
	fprintf(f, "\naborts: %" PRIu64 "\n", all);
	for (size_t i = 0; i < tr->st.aborts.rows.n && i < LIST_ROWS; i++)
		fprintf(
		    f,
		    "  %6" PRIu64
		    "x \"%s\" at %s (first: task %s, loop %" PRIu32 ", %s)\n",
		    v[i].count, str_or(&tr->strings, v[i].s1, ""),
		    str_or(&tr->strings, v[i].s2, "(no site)"),
		    task_name(tr, v[i].name), v[i].loop, fmt_ns(v[i].ts, at));
	free(v);
}

/* A fault's kind as KEEL_FAULTS spells it; an error by its errno name. */
static const char *fault_kind(const struct row *r, char buf[24])
{
	switch (r->s2) {
	case KEEL_TRACE_FAULT_ERROR: {
		const char *n = strerrorname_np((int)r->max);

		if (n)
			return n;
		snprintf(buf, 24, "errno %" PRIu64, r->max);
		return buf;
	}
	case KEEL_TRACE_FAULT_SHORT:
		return "short";
	case KEEL_TRACE_FAULT_DELAY:
		return "delay";
	case KEEL_TRACE_FAULT_REORDER:
		return "reorder";
	}
	snprintf(buf, 24, "kind %" PRIu32, r->s2);
	return buf;
}

static void print_faults(FILE *f, const struct trace *tr)
{
	struct row *v = sorted_rows(&tr->st.faults);
	uint64_t all = 0;
	char op[16], kind[24], at[24];

	for (size_t i = 0; i < tr->st.faults.rows.n; i++)
		all += v[i].count;
	fprintf(f, "\nfaults injected: %" PRIu64 "\n", all);
	for (size_t i = 0; i < tr->st.faults.rows.n && i < LIST_ROWS; i++)
		fprintf(f,
			"  %-12s %-14s %6" PRIu64 "x, first on loop %" PRIu32
			" at %s\n",
			op_name(v[i].s1, op), fault_kind(&v[i], kind),
			v[i].count, v[i].loop, fmt_ns(v[i].ts, at));
	free(v);
}

static void print_supervision(FILE *f, const struct trace *tr)
{
	struct row *r = sorted_rows(&tr->st.restarts);
	struct row *e = sorted_rows(&tr->st.escalations);
	uint64_t restarts = 0, escalations = 0;
	char at[24];

	for (size_t i = 0; i < tr->st.restarts.rows.n; i++)
		restarts += r[i].count;
	for (size_t i = 0; i < tr->st.escalations.rows.n; i++)
		escalations += e[i].count;
	fprintf(f, "\nrestarts: %" PRIu64 ", escalations: %" PRIu64 "\n",
		restarts, escalations);
	for (size_t i = 0; i < tr->st.restarts.rows.n && i < LIST_ROWS; i++)
		fprintf(f,
			"  restart  %-20s %6" PRIu64
			"x (restart count up to %" PRIu64
			"), first on loop %" PRIu32 " at %s\n",
			str_or(&tr->strings, r[i].s1, "(unnamed)"), r[i].count,
			r[i].max, r[i].loop, fmt_ns(r[i].ts, at));
	for (size_t i = 0; i < tr->st.escalations.rows.n && i < LIST_ROWS; i++)
		fprintf(f,
			"  escalate %-20s %6" PRIu64 "x, first on loop %" PRIu32
			" at %s\n",
			str_or(&tr->strings, e[i].s1, "(unnamed)"), e[i].count,
			e[i].loop, fmt_ns(e[i].ts, at));
	free(r);
	free(e);
}

static void print_traffic(FILE *f, const struct trace *tr)
{
	const struct stats *st = &tr->st;
	char late[24];

	fprintf(f,
		"\nmessages: %" PRIu64 " cross-loop sent, %" PRIu64
		" received; mailboxes: %" PRIu64 " full, %" PRIu64
		" drops; timers: %" PRIu64 " fired, latest by %s\n",
		st->msgs_sent, st->msgs_received, st->mb_full, st->mb_drop,
		st->timers, fmt_ns(st->max_lateness, late));
}

static void print_drops(FILE *f, const struct trace *tr)
{
	const char *sep = " (";

	fprintf(f, "\ndrops: %" PRIu64 " events dropped", tr->all.dropped);
	for (uint32_t i = 0; i < tr->d.nloops; i++) {
		if (!tr->d.loops[i].dropped)
			continue;
		fprintf(f, "%sloop %" PRIu32 ": %" PRIu64, sep, i,
			tr->d.loops[i].dropped);
		sep = ", ";
	}
	fprintf(f, "%s\n", *sep == ',' ? ")" : "");
}

void print_summary(FILE *f, const struct trace *tr)
{
	print_overview(f, tr);
	print_loops(f, tr);
	print_ops(f, tr);
	print_steps(f, tr);
	print_slowest(f, tr);
	print_stalls(f, tr);
	print_supervision(f, tr);
	print_aborts(f, tr);
	print_faults(f, tr);
	print_traffic(f, tr);
	print_drops(f, tr);
}
