/* SPDX-License-Identifier: MIT */
/*
 * check.h: checks that may fail on any thread. A Criterion assertion can
 * only end a test from the test's own thread; a check made in a task on a
 * loop thread, or on a plain thread, records its failure here instead, and
 * the test asserts at the end that there was none (kt_expect_no_failures()
 * in keel_test.h). The mt_* programs, which run without Criterion (it
 * cannot start under ThreadSanitizer), use the same records through
 * scenario.h.
 *
 * Nothing here depends on Criterion. Every failed check is counted and
 * written to stderr at once; the first one is also kept, with both values
 * of a CHECK_EQ, for the final report.
 */
#ifndef KEEL_TEST_CHECK_H
#define KEEL_TEST_CHECK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The first failed check. */
struct kt_failure {
	const char *file;
	int line;
	const char *what; /* the condition, as written */
	bool values;	  /* a CHECK_EQ: a and b are its two sides */
	long long a, b;
};

/* Record a failed check (any thread). */
void kt_check_failed(const char *file, int line, const char *what, bool values,
		     long long a, long long b);

/* Failed checks so far (any thread). */
int kt_failures(void);

/* The first failed check; meaningful once kt_failures() > 0 and the
 * threads that check have been joined. */
struct kt_failure kt_first_failure(void);

/* "N failed check(s), the first at file:line: what (a vs b)". */
void kt_failures_describe(char *buf, size_t len);

/* Name what is being checked (NULL: nothing), prefixed to failure lines. */
void kt_check_context(const char *name);

#define CHECK(cond)                                                            \
	do {                                                                   \
		if (!(cond))                                                   \
			kt_check_failed(__FILE__, __LINE__, #cond, false, 0,   \
					0);                                    \
	} while (0)

/* As CHECK(a == b), keeping both values (as long long). */
#define CHECK_EQ(a, b)                                                         \
	do {                                                                   \
		long long a_ = (long long)(a), b_ = (long long)(b);            \
		if (a_ != b_)                                                  \
			kt_check_failed(__FILE__, __LINE__, #a " == " #b,      \
					true, a_, b_);                         \
	} while (0)

/* Flags shared between threads: acquire loads, release stores. */
int kt_load(const int *p);
void kt_store(int *p, int v);
void kt_add(int *p, int v);

/* CLOCK_MONOTONIC in nanoseconds. */
uint64_t kt_now_ns(void);

#define KT_MS(n) ((uint64_t)(n)*1000000ull)

#endif
