/* SPDX-License-Identifier: MIT */
/*
 * check.c: failed-check records shared by every thread of a test (see
 * check.h). The count is atomic; the first failure is written only by the
 * check that took the count from 0 to 1, and read after the checking
 * threads are joined (or, by the scenario watchdog, as a best effort).
 */
#include "helpers/check.h"

#include <stdio.h>
#include <time.h>

static int failures;
static struct kt_failure first;
static const char *context;

void kt_check_failed(const char *file, int line, const char *what, bool values,
		     long long a, long long b)
{
	const char *ctx = __atomic_load_n(&context, __ATOMIC_ACQUIRE);

	if (__atomic_fetch_add(&failures, 1, __ATOMIC_SEQ_CST) == 0)
		first = (struct kt_failure){file, line, what, values, a, b};
	if (values)
		fprintf(stderr, "%s%s%s:%d: check failed: %s (%lld vs %lld)\n",
			ctx ? ctx : "", ctx ? ": " : "", file, line, what, a,
			b);
	else
		fprintf(stderr, "%s%s%s:%d: check failed: %s\n", ctx ? ctx : "",
			ctx ? ": " : "", file, line, what);
}

int kt_failures(void)
{
	return __atomic_load_n(&failures, __ATOMIC_SEQ_CST);
}

struct kt_failure kt_first_failure(void)
{
	return first;
}

void kt_failures_describe(char *buf, size_t len)
{
	int n = kt_failures();

	if (!n)
		snprintf(buf, len, "no failed check");
	else if (first.values)
		snprintf(buf, len,
			 "%d failed check(s), the first at %s:%d: %s (%lld vs "
			 "%lld)",
			 n, first.file, first.line, first.what, first.a,
			 first.b);
	else
		snprintf(buf, len, "%d failed check(s), the first at %s:%d: %s",
			 n, first.file, first.line, first.what);
}

void kt_check_context(const char *name)
{
	__atomic_store_n(&context, name, __ATOMIC_RELEASE);
}

int kt_load(const int *p)
{
	return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}

void kt_store(int *p, int v)
{
	__atomic_store_n(p, v, __ATOMIC_RELEASE);
}

void kt_add(int *p, int v)
{
	__atomic_add_fetch(p, v, __ATOMIC_ACQ_REL);
}

uint64_t kt_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}
