/* SPDX-License-Identifier: MIT */
/*
 * keel-trace: turn a keel trace file (format in include/keel/trace.h) into
 * a text summary, Chrome Trace Event JSON (Perfetto, chrome://tracing) or
 * a self-contained HTML report.
 *
 *	keel-trace summary FILE
 *	keel-trace chrome FILE [-o OUT.json]
 *	keel-trace html FILE [-o OUT.html]
 *
 * The file is streamed, at most twice. The first pass checks every record
 * against the file's size before reading it, so a truncated, empty or
 * foreign file gives one line on stderr and exit 1 before any output is
 * written; it also gathers what the summary needs. The second pass (chrome,
 * html) writes the events out. Memory: the strings, one entry per task
 * slot, 8 bytes per op completion (percentiles are exact), and for `chrome`
 * 40 bytes per message or mailbox event, to pair senders with receivers.
 *
 * A decoder turns raw events into what the outputs talk about (steps with
 * their task's name and the await site they resumed from, task lifetimes)
 * and hands them to a sink: the statistics (first pass), the Chrome writer
 * or the HTML timeline (second pass).
 *
 * This file: the arguments, the output file, and main(); the parts are
 * listed in keel-trace.h.
 *
 * Exit status: 0; 1 for a bad trace file or an output error; 2 for bad
 * arguments.
 */
#include "keel-trace.h"

/* ---- errors ----------------------------------------------------------- */

const char *trace_path = "keel-trace";
const char *out_path;

void die(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "keel-trace: %s: ", trace_path);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	if (out_path)
		unlink(out_path);
	exit(1);
}

/* ---- main ------------------------------------------------------------- */

static const char usage_text[] = "usage: keel-trace summary FILE\n"
				 "       keel-trace chrome FILE [-o OUT.json]\n"
				 "       keel-trace html FILE [-o OUT.html]\n";

static void __attribute__((noreturn)) usage(const char *why)
{
	if (why)
		fprintf(stderr, "keel-trace: %s\n", why);
	fputs(usage_text, stderr);
	exit(2);
}

struct options {
	const char *cmd, *file, *out;
};

static void parse(int argc, char **argv, struct options *o)
{
	if (argc == 2 &&
	    (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help"))) {
		fputs(usage_text, stdout);
		exit(0);
	}
	if (argc < 3)
		usage(NULL);
	o->cmd = argv[1];
	if (strcmp(o->cmd, "summary") && strcmp(o->cmd, "chrome") &&
	    strcmp(o->cmd, "html"))
		usage("unknown command");
	for (int i = 2; i < argc; i++) {
		if (!strcmp(argv[i], "-o") && strcmp(o->cmd, "summary")) {
			if (++i == argc || o->out)
				usage("-o needs one output file");
			o->out = argv[i];
		} else if (argv[i][0] == '-' && argv[i][1]) {
			usage("unknown option");
		} else if (o->file) {
			usage("one trace file only");
		} else {
			o->file = argv[i];
		}
	}
	if (!o->file)
		usage("no trace file");
}

/* The output file, opened only now that the trace has been checked. */
static FILE *open_output(const char *path, const struct stat *in)
{
	struct stat st;
	FILE *f;

	if (!path)
		return stdout;
	/* Opening it would empty the trace that the second pass reads. */
	if (stat(path, &st) == 0 && st.st_dev == in->st_dev &&
	    st.st_ino == in->st_ino)
		die("the output file is the trace file");
	f = fopen(path, "w");
	if (!f || fstat(fileno(f), &st) != 0) {
		trace_path = path;
		die("%s", strerror(errno));
	}
	/* Never remove a device or a pipe (-o /dev/stdout) on failure. */
	if (S_ISREG(st.st_mode))
		out_path = path;
	return f;
}

static void close_output(FILE *f, const char *path)
{
	bool bad = ferror(f) != 0;

	if (fclose(f) != 0 || bad) {
		trace_path = path ? path : "stdout";
		die("write error: %s", strerror(errno));
	}
	out_path = NULL;
}

int main(int argc, char **argv)
{
	struct options o = {0};
	struct trace tr = {0};
	bool chrome, html;
	FILE *out;

	parse(argc, argv, &o);
	chrome = !strcmp(o.cmd, "chrome");
	html = !strcmp(o.cmd, "html");
	trace_load(&tr, o.file, html ? HTML_STEPS : LIST_ROWS, chrome);
	out = open_output(o.out, &tr.r.st);
	if (chrome)
		write_chrome(&tr, out);
	else if (html)
		write_html(&tr, out);
	else
		print_summary(out, &tr);
	close_output(out, o.out);
	trace_free(&tr);
	return 0;
}
