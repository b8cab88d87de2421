/* SPDX-License-Identifier: MIT */
/*
 * test_prom.c: the Prometheus text writer (sched/prom.c) and the metrics
 * it renders. The writer: HELP and TYPE lines, a family with several
 * labelled samples, a sample without labels, escaping of help text and
 * label values, and snprintf's contract when the buffer is short. Then a
 * whole dump, two loops and a supervisor tree whose names need escaping,
 * read back by a real parser (python3-prometheus-client's, skipped when
 * it is not installed): every sample parses, counters end in _total, and
 * the label values come back as they were. And a pool's dynamic children,
 * which must not become a series each. Then the op latency histograms
 * (keel_op_duration_seconds): ops of two loops merged into one series per
 * opcode, read back by the parser: cumulative buckets that never go down,
 * +Inf equal to _count equal to the ops made, sleeps left out; and the
 * ops of many tasks of one loop, two opcodes in every reap, each counted.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <keel.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "helpers/keel_test.h"
#include "prom.h"

/* ---- the writer -----------------------------------------------------------
 */

Test(prom, family_with_labelled_samples_is_one_help_one_type_then_samples)
{
	char buf[512];
	struct keel__prom p;

	keel__prom_init(&p, buf, sizeof(buf));
	keel__prom_family(&p, "x_requests_total", KEEL__PROM_COUNTER,
			  "Requests.");
	keel__prom_sample(&p, "x_requests_total", NULL);
	keel__prom_label_uint(&p, "loop", 0);
	keel__prom_label(&p, "code", "200");
	keel__prom_value(&p, 7);
	keel__prom_sample(&p, "x_requests_total", NULL);
	keel__prom_label_uint(&p, "loop", 1);
	keel__prom_label(&p, "code", "500");
	keel__prom_value(&p, 18446744073709551615ull);
	keel__prom_family(&p, "x_depth", KEEL__PROM_GAUGE, "Depth.");
	keel__prom_sample(&p, "x_depth", NULL);
	keel__prom_value(&p, 3);
	keel__prom_family(&p, "x_size", KEEL__PROM_HISTOGRAM, "Sizes.");
	keel__prom_sample(&p, "x_size", "_bucket");
	keel__prom_label(&p, "le", "+Inf");
	keel__prom_value(&p, 2);

	const char *want = "# HELP x_requests_total Requests.\n"
			   "# TYPE x_requests_total counter\n"
			   "x_requests_total{loop=\"0\",code=\"200\"} 7\n"
			   "x_requests_total{loop=\"1\",code=\"500\"} "
			   "18446744073709551615\n"
			   "# HELP x_depth Depth.\n"
			   "# TYPE x_depth gauge\n"
			   "x_depth 3\n"
			   "# HELP x_size Sizes.\n"
			   "# TYPE x_size histogram\n"
			   "x_size_bucket{le=\"+Inf\"} 2\n";

	cr_assert_str_eq(buf, want);
	cr_assert_eq(keel__prom_end(&p), strlen(want));
}

Test(prom, help_and_label_values_are_escaped_as_the_format_requires)
{
	char buf[256];
	struct keel__prom p;

	keel__prom_init(&p, buf, sizeof(buf));
	/* Help: backslash and newline only; a quote stays as it is. */
	keel__prom_family(&p, "x_total", KEEL__PROM_COUNTER, "a \\ b\nc \"d\"");
	/* Label values: backslash, double quote and newline. */
	keel__prom_sample(&p, "x_total", NULL);
	keel__prom_label(&p, "name", "a \\ b\nc \"d\"");
	keel__prom_value(&p, 1);
	cr_assert_str_eq(buf, "# HELP x_total a \\\\ b\\nc \"d\"\n"
			      "# TYPE x_total counter\n"
			      "x_total{name=\"a \\\\ b\\nc \\\"d\\\"\"} 1\n");
}

Test(prom, short_buffer_is_cut_and_terminated_and_the_full_length_returned)
{
	const char *want = "# HELP x_total X.\n"
			   "# TYPE x_total counter\n"
			   "x_total{k=\"v\\\"\"} 42\n";
	char full[128], small[16];
	size_t need;

	for (size_t len = 0; len <= sizeof(full); len++) {
		char *buf = len <= sizeof(small) ? small : full;
		struct keel__prom p;

		memset(small, 'x', sizeof(small));
		keel__prom_init(&p, len ? buf : NULL, len);
		keel__prom_family(&p, "x_total", KEEL__PROM_COUNTER, "X.");
		keel__prom_sample(&p, "x_total", NULL);
		keel__prom_label(&p, "k", "v\"");
		keel__prom_value(&p, 42);
		need = keel__prom_end(&p);
		cr_assert_eq(need, strlen(want), "need %zu", need);
		if (len == 0)
			cr_assert_eq(small[0], 'x', "len 0 wrote");
		else
			cr_assert_eq(strlen(buf),
				     len - 1 < need ? len - 1 : need, "len %zu",
				     len);
		/* What was written is the start of the whole text. */
		cr_assert_eq(strncmp(len ? buf : "", want, len ? len - 1 : 0),
			     0, "len %zu: %s", len, buf);
	}
	cr_assert_str_eq(full, want);
}

/* ---- a whole dump, read by a real parser ----------------------------------
 */

/* Supervised workers up (all on one loop), and how many the test wants
 * up before it renders. */
static int g_up, g_want_up;

struct worker {
	struct keel_task task;
	int i;
	bool stay; /* a supervised one: count itself up, sleep until stopped */
};

static int worker_step(struct keel_task *t)
{
	struct worker *w = keel_container_of(t, struct worker, task);

	KEEL_BEGIN(t);
	for (w->i = 0; w->i < 3; w->i++)
		KEEL_AWAIT(t, keel_nop(t));
	if (w->stay) {
		g_up++;
		KEEL_AWAIT(t, keel_sleep(t, KT_MS(60000)));
	}
	KEEL_END(t);
}

static KEEL_TASK_TYPE(worker_task, struct worker, task, worker_step);

static int worker_start(struct keel_child_start *cs, void *arg)
{
	struct worker *w = keel_child_spawn(cs, &worker_task, 0);

	if (!w)
		return -ENOMEM;
	w->stay = true;
	return 0;
}

static int sup_start(struct keel_child_start *cs, void *arg)
{
	return keel_child_spawn_supervisor(cs, arg);
}

static struct keel_sup_spec sup_spec(const char *name,
				     enum keel_sup_strategy strategy,
				     const struct keel_child_spec *children,
				     uint32_t n)
{
	return (struct keel_sup_spec){.name = name,
				      .strategy = strategy,
				      .intensity = 1,
				      .period_ms = 1000,
				      .children = children,
				      .nchildren = n};
}

/* A child that is a supervisor of `spec`. */
static struct keel_child_spec sup_child(const char *name,
					struct keel_sup_spec *spec,
					enum keel_restart restart)
{
	return (struct keel_child_spec){.name = name,
					.start = sup_start,
					.arg = spec,
					.restart = restart,
					.type = KEEL_SUPERVISOR};
}

static struct keel_sup *g_sup;
static char g_sup_text[16384];
static size_t g_sup_len;
static int g_cells; /* dynamic children to start in "pool" first */

/* Renders the tree once its workers are up, then stops it. */
struct renderer {
	struct keel_task task;
	struct keel_sup *pool;
	struct keel_child_id id;
	int i;
};

static int renderer_step(struct keel_task *t)
{
	struct renderer *r = keel_container_of(t, struct renderer, task);

	KEEL_BEGIN(t);
	while (g_cells && !r->pool) {
		KEEL_AWAIT(t, keel_sleep(t, KT_MS(1)));
		if (keel_sup_child_id(g_sup, "pool", &r->id) == 0)
			r->pool = keel_sup_child_sup(g_sup, r->id);
	}
	for (r->i = 0; r->i < g_cells; r->i++) {
		KEEL_AWAIT(t, keel_sup_start_child(t, r->pool, NULL, &r->id));
		cr_assert_eq(keel_res(t), 0);
	}
	while (g_up < g_want_up)
		KEEL_AWAIT(t, keel_sleep(t, KT_MS(1)));
	g_sup_len =
	    keel_sup_metrics_render(&g_sup, 1, g_sup_text, sizeof(g_sup_text));
	if (r->pool)
		keel_sup_release(r->pool);
	keel_sup_stop(g_sup);
	KEEL_END(t);
}

static KEEL_TASK_TYPE(renderer_task, struct renderer, task, renderer_step);

/* A python3 that has the parser ("python3" first, then Debian's own). */
static const char *python_with_parser(void)
{
	static const char *const pythons[] = {"python3", "/usr/bin/python3"};
	char cmd[256];

	for (size_t i = 0; i < sizeof(pythons) / sizeof(pythons[0]); i++) {
		snprintf(cmd, sizeof(cmd),
			 "%s -c 'import prometheus_client.parser' "
			 ">/dev/null 2>&1",
			 pythons[i]);
		if (system(cmd) == 0)
			return pythons[i];
	}
	return NULL;
}

/* Parse the file; print the number of samples, then each distinct label
 * value as JSON; fail on a counter sample not ending in _total. */
static const char parse_py[] =
    "import json, sys\n"
    "from prometheus_client.parser import text_string_to_metric_families\n"
    "n, values = 0, set()\n"
    "for f in text_string_to_metric_families(open(sys.argv[1]).read()):\n"
    "    for s in f.samples:\n"
    "        n += 1\n"
    "        if f.type == 'counter' and not s.name.endswith('_total'):\n"
    "            sys.exit('counter sample %s' % s.name)\n"
    "        values.update(s.labels.values())\n"
    "print('samples', n)\n"
    "for v in sorted(values):\n"
    "    print(json.dumps(v))\n";

Test(prom, dump_of_loops_and_a_tree_with_awkward_names_parses, .timeout = 30)
{
	static struct keel_child_spec inner[2], outer[2];
	static struct keel_sup_spec sub, top;
	struct keel_loop *loops[2];
	const char *py = python_with_parser();
	char dir[256], path[320], script[320], cmd[1024], out[8192];

	if (!py)
		cr_skip_test("python3-prometheus-client is not installed");
	inner[0] = (struct keel_child_spec){.name = "kid \"a\"",
					    .start = worker_start};
	inner[1] = (struct keel_child_spec){.name = "kid\\b\nc",
					    .start = worker_start};
	sub = sup_spec("sub\\\"x\"", KEEL_ONE_FOR_ONE, inner, 2);
	outer[0] =
	    (struct keel_child_spec){.name = "w0", .start = worker_start};
	outer[1] = sup_child("sub", &sub, KEEL_PERMANENT);
	top = sup_spec("top\nline", KEEL_ONE_FOR_ONE, outer, 2);
	g_want_up = 3;
	for (int i = 0; i < 2; i++) {
		loops[i] = kt_loop_new(NULL);
		kt_spawn(loops[i], &worker_task, 0);
	}
	cr_assert_eq(keel_sup_start(loops[1], &top, &g_sup), 0);
	kt_spawn(loops[1], &renderer_task, 0);
	kt_loop_run(loops[0]);
	kt_loop_run(loops[1]);
	cr_assert_gt(g_sup_len, 0);
	cr_assert_lt(g_sup_len, sizeof(g_sup_text));

	kt_tmpdir_make(dir, sizeof(dir));
	snprintf(path, sizeof(path), "%s/metrics.txt", dir);
	snprintf(script, sizeof(script), "%s/parse.py", dir);
	FILE *f = fopen(script, "w");

	cr_assert_not_null(f);
	fputs(parse_py, f);
	fclose(f);
	f = fopen(path, "w");
	cr_assert_not_null(f);

	size_t n = keel_metrics_render(loops, 2, NULL, 0);
	char *text = malloc(n + 1);

	cr_assert_not_null(text);
	cr_assert_eq(keel_metrics_render(loops, 2, text, n + 1), n);
	fputs(text, f);
	fputs(g_sup_text, f);
	fclose(f);
	free(text);

	snprintf(cmd, sizeof(cmd), "%s '%s' '%s' 2>&1", py, script, path);
	FILE *p = popen(cmd, "r");

	cr_assert_not_null(p);
	size_t got = fread(out, 1, sizeof(out) - 1, p);

	out[got] = '\0';
	cr_assert_eq(pclose(p), 0, "parser: %s", out);
	/* 28 loop families x 2 loops, a 12-bucket histogram (+ sum and count)
	 * x 2, the workers' nop latency (26 buckets + sum and count, the two
	 * loops merged); 5 counters x 2 supervisors, 5 states x 2, 4 static
	 * children. */
	cr_expect(strstr(out, "samples 136\n"), "%s", out);
	cr_expect(strstr(out, "\n\"top\\nline/sub\\\\\\\"x\\\"\"\n"), "%s",
		  out);
	cr_expect(strstr(out, "\n\"kid \\\"a\\\"\"\n"), "%s", out);
	cr_expect(strstr(out, "\n\"kid\\\\b\\nc\"\n"), "%s", out);
	cr_expect(strstr(out, "\n\"+Inf\"\n"), "%s", out);
	keel_sup_release(g_sup);
	for (int i = 0; i < 2; i++)
		keel_loop_destroy(loops[i]);
	kt_tmpdir_remove(dir);
}

/* A pool's dynamic children come and go and share one name: they are
 * counted by state under the pool, never a series each. */
Test(prom, pool_children_are_counted_by_state_not_one_series_each,
     .timeout = 30)
{
	static struct keel_child_spec worker[1], cell[1], pool[1];
	static struct keel_sup_spec cell_spec, pool_spec, top;
	struct keel_loop *loop = kt_loop_new(NULL);
	int restarts = 0;

	worker[0] =
	    (struct keel_child_spec){.name = "w", .start = worker_start};
	cell_spec = sup_spec("cell", KEEL_ONE_FOR_ONE, worker, 1);
	cell[0] = sup_child("cell", &cell_spec, KEEL_TEMPORARY);
	pool_spec = sup_spec("pool", KEEL_SIMPLE_ONE_FOR_ONE, cell, 1);
	pool[0] = sup_child("pool", &pool_spec, KEEL_PERMANENT);
	top = sup_spec("top", KEEL_ONE_FOR_ONE, pool, 1);
	g_cells = 3;
	g_want_up = 3;
	cr_assert_eq(keel_sup_start(loop, &top, &g_sup), 0);
	kt_spawn(loop, &renderer_task, 0);
	kt_loop_run(loop);
	cr_assert_lt(g_sup_len, sizeof(g_sup_text));
	cr_expect(strstr(g_sup_text, "keel_sup_children{sup=\"top/pool\","
				     "state=\"running\"} 3\n"),
		  "%s", g_sup_text);
	cr_expect_null(strstr(g_sup_text, "top/pool/"), "%s", g_sup_text);
	for (const char *l = g_sup_text; (l = strstr(l, "\nkeel_sup_restarts_"
							"total{"));
	     l++)
		restarts++;
	cr_expect_eq(restarts, 2, "%s", g_sup_text);
	keel_sup_release(g_sup);
	keel_loop_destroy(loop);
}

/* ---- op latency ----------------------------------------------------------
 */

/* NOPs and a sleep: the NOPs are counted, the sleep is not. */
struct nopper {
	struct keel_task task;
	int n;
	int i;
};

static int nopper_step(struct keel_task *t)
{
	struct nopper *w = keel_container_of(t, struct nopper, task);

	KEEL_BEGIN(t);
	for (w->i = 0; w->i < w->n; w->i++)
		KEEL_AWAIT(t, keel_nop(t));
	KEEL_AWAIT(t, keel_sleep(t, KT_MS(1)));
	KEEL_END(t);
}

static KEEL_TASK_TYPE(nopper_task, struct nopper, task, nopper_step);

/* Per opcode of keel_op_duration_seconds: "OP count sum_positive ok",
 * ok when the buckets are cumulative, end in +Inf, and +Inf == _count. */
static const char op_lat_py[] =
    "import sys\n"
    "from prometheus_client.parser import text_string_to_metric_families\n"
    "for f in text_string_to_metric_families(open(sys.argv[1]).read()):\n"
    "    if f.name != 'keel_op_duration_seconds':\n"
    "        continue\n"
    "    assert f.type == 'histogram', f.type\n"
    "    ops = {}\n"
    "    for s in f.samples:\n"
    "        o = ops.setdefault(s.labels['op'], {'b': []})\n"
    "        if s.name.endswith('_bucket'):\n"
    "            o['b'].append((float(s.labels['le']), s.value))\n"
    "        else:\n"
    "            o[s.name.rsplit('_', 1)[1]] = s.value\n"
    "    for op, o in sorted(ops.items()):\n"
    "        b = o['b']\n"
    "        ok = (b == sorted(b) and b[-1][0] == float('inf')\n"
    "              and all(x[1] <= y[1] for x, y in zip(b, b[1:]))\n"
    "              and b[-1][1] == o['count'])\n"
    "        print(op, int(o['count']), int(o['sum'] > 0), int(ok))\n";

Test(prom, op_latency_histograms_merge_loops_and_count_every_op, .timeout = 30)
{
	struct keel_loop *loops[2];
	const char *py = python_with_parser();
	char dir[256], path[320], script[320], cmd[1024], out[4096];
	static const int nops[2] = {300, 200};

	if (!py)
		cr_skip_test("python3-prometheus-client is not installed");
	for (int i = 0; i < 2; i++) {
		struct nopper *w;

		loops[i] = kt_loop_new(NULL);
		w = kt_spawn(loops[i], &nopper_task, 0);
		w->n = nops[i];
		kt_loop_run(loops[i]);
	}
	kt_tmpdir_make(dir, sizeof(dir));
	snprintf(path, sizeof(path), "%s/metrics.txt", dir);
	snprintf(script, sizeof(script), "%s/op_lat.py", dir);
	FILE *f = fopen(script, "w");

	cr_assert_not_null(f);
	fputs(op_lat_py, f);
	fclose(f);

	size_t n = keel_metrics_render(loops, 2, NULL, 0);
	char *text = malloc(n + 1);

	cr_assert_not_null(text);
	cr_assert_eq(keel_metrics_render(loops, 2, text, n + 1), n);
	f = fopen(path, "w");
	cr_assert_not_null(f);
	fputs(text, f);
	fclose(f);
	free(text);

	snprintf(cmd, sizeof(cmd), "%s '%s' '%s' 2>&1", py, script, path);
	FILE *p = popen(cmd, "r");

	cr_assert_not_null(p);
	size_t got = fread(out, 1, sizeof(out) - 1, p);

	out[got] = '\0';
	cr_assert_eq(pclose(p), 0, "parser: %s", out);
	/* Only the NOPs: the sleeps are not ops of the kernel's. */
	cr_expect_str_eq(out, "nop 500 1 1\n");
	for (int i = 0; i < 2; i++)
		keel_loop_destroy(loops[i]);
	kt_tmpdir_remove(dir);
}

/*
 * Many tasks on one loop, NOPs and reads of /dev/zero interleaved: each
 * reap brings runs of ops of one opcode and submit turn (counted per run,
 * io/ledger.c), and runs of the other opcode between them. Every op is
 * counted once, into its opcode's series, and the +Inf bucket is _count
 * (no parser needed: read back by hand).
 */
#define BATCH_NOPPERS 16
#define BATCH_READERS 8
#define BATCH_OPS     50

struct batch_op {
	struct keel_task task;
	int fd; /* -1: NOPs */
	int i;
	char buf[8];
};

static int batch_op_step(struct keel_task *t)
{
	struct batch_op *w = keel_container_of(t, struct batch_op, task);

	KEEL_BEGIN(t);
	for (w->i = 0; w->i < BATCH_OPS; w->i++) {
		if (w->fd < 0)
			KEEL_AWAIT(t, keel_nop(t));
		else
			KEEL_AWAIT(
			    t, keel_read(t, w->fd, w->buf, sizeof(w->buf), 0));
		if (keel_res(t) < 0)
			KEEL_EXIT(t, keel_res(t));
	}
	KEEL_END(t);
}

static KEEL_TASK_TYPE(batch_op_task, struct batch_op, task, batch_op_step);

/* The value of the sample `name` (up to its value's space), or -1. */
static long long sample_value(const char *text, const char *name)
{
	const char *at = strstr(text, name);

	return at ? atoll(at + strlen(name)) : -1;
}

Test(prom, op_latency_counts_every_op_of_runs_in_one_reap, .timeout = 30)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	int fd = open("/dev/zero", O_RDONLY | O_CLOEXEC);
	char *text;
	size_t n;

	cr_assert_geq(fd, 0);
	/* Interleaved, so that a reap switches between the two opcodes, and
	 * ends in a run of NOPs (two), which only the reap's end counts. */
	for (int i = 0; i < BATCH_NOPPERS + BATCH_READERS; i++) {
		struct batch_op *w = kt_spawn(loop, &batch_op_task, 0);

		w->fd = i % 3 == 0 ? fd : -1;
	}
	kt_loop_run(loop);
	n = keel_metrics_render(&loop, 1, NULL, 0);
	text = malloc(n + 1);
	cr_assert_not_null(text);
	cr_assert_eq(keel_metrics_render(&loop, 1, text, n + 1), n);
	for (int k = 0; k < 2; k++) {
		const char *op = k ? "read" : "nop";
		long long want =
		    (k ? BATCH_READERS : BATCH_NOPPERS) * BATCH_OPS;
		char name[128];

		snprintf(name, sizeof(name),
			 "keel_op_duration_seconds_count{op=\"%s\"} ", op);
		cr_expect_eq(sample_value(text, name), want, "%s", text);
		snprintf(name, sizeof(name),
			 "keel_op_duration_seconds_bucket{op=\"%s\","
			 "le=\"+Inf\"} ",
			 op);
		cr_expect_eq(sample_value(text, name), want, "%s", text);
	}
	free(text);
	close(fd);
	keel_loop_destroy(loop);
}
