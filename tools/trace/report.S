/* SPDX-License-Identifier: MIT */
/*
 * report.S: report.html, built into keel-trace as one NUL-terminated
 * string, keel_trace_report_html (html.c fills in its placeholders). The
 * assembler's .incbin needs nothing beyond the toolchain that builds the
 * rest; the Makefile runs it from the top of the tree and passes
 * -Wa,-I so the page is found.
 */
	.section .rodata
	.globl	keel_trace_report_html
	.type	keel_trace_report_html, @object
keel_trace_report_html:
	.incbin	"report.html"
	.byte	0
	.size	keel_trace_report_html, . - keel_trace_report_html

	/* No executable stack for the program that links this. */
	.section .note.GNU-stack, "", @progbits
