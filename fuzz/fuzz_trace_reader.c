/* SPDX-License-Identifier: MIT */
/*
 * fuzz_trace_reader.c: keel-trace's reader and decoder on any bytes. The
 * input is a trace file: the first pass (trace_check(): header, records
 * checked against the size, strings, the decoder and the statistics)
 * either refuses it through die() or accepts it; an accepted one then goes
 * through every output (summary, Chrome JSON, HTML) into a sink that
 * discards it.
 *
 * It links every part of tools/trace/ but main.c, whose die() exits: this
 * die() jumps back here instead. keel-trace promises that a bad file is
 * refused before any output is written, so a die() after the first pass
 * accepted the input is a defect: the target aborts with its message.
 */
#include <setjmp.h>

#include "keel-trace.h"

#define HTML_MAX_LOOPS 8

const char *trace_path = "fuzz input";
const char *out_path; /* never set: nothing to remove */

static jmp_buf refuse;	    /* back to the input's start */
static bool first_pass;	    /* die() there refuses the input */
static char why[256];	    /* die()'s message, for the abort */
static unsigned char empty; /* fmemopen() needs a buffer even for 0 bytes */

void die(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, sizeof(why), fmt, ap);
	va_end(ap);
	if (!first_pass) {
		fprintf(stderr,
			"fuzz_trace_reader: die() after the input was "
			"accepted: %s\n",
			why);
		abort();
	}
	longjmp(refuse, 1);
}

static ssize_t discard(void *cookie, const char *buf, size_t n)
{
	(void)cookie;
	(void)buf;
	return (ssize_t)n;
}

/* An output stream that costs no system call. */
static FILE *open_discard(void)
{
	FILE *f = fopencookie(NULL, "w",
			      (cookie_io_functions_t){
				  .write = discard,
			      });

	if (!f)
		abort();
	return f;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* Static: die() longjmps here, past locals the first pass changed. */
	static struct trace tr;
	FILE *in, *out;

	memset(&tr, 0, sizeof(tr));
	in = fmemopen(size ? (void *)data : &empty, size ? size : 1, "rb");
	if (!in)
		abort();
	first_pass = true;
	if (setjmp(refuse)) {
		trace_free(&tr); /* a refused file: nothing to write */
		return 0;
	}
	reader_start(&tr.r, in, size);
	/* Both bounds are the summary's; endpoints for the Chrome flows. */
	trace_check(&tr, LIST_ROWS, true);
	first_pass = false;
	out = open_discard();
	print_summary(out, &tr);
	write_chrome(&tr, out);
	/* The report has 1600 bins for every loop index up to the highest
	 * (26 KB each, 100 MB for index 4095): that much memset per input
	 * would slow the fuzzer tenfold and test nothing more. */
	if (tr.d.nloops <= HTML_MAX_LOOPS)
		write_html(&tr, out);
	if (ferror(out))
		abort();
	fclose(out);
	trace_free(&tr);
	return 0;
}
