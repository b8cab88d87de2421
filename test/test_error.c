/* SPDX-License-Identifier: MIT */
/*
 * test_error.c: keel_strerror(). keel's own meanings for the statuses it
 * gives an errno a meaning of its own (KEEL_ABORTED, a scope's -ECHILD ...),
 * libc's text for other negative errno values, never NULL (0, positive,
 * unknown and extreme values), and the same constant strings from several
 * threads at once.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <keel.h>
#include <limits.h>
#include <pthread.h>
#include <string.h>

Test(error, keel_meanings_replace_libc_text)
{
	cr_assert_str_eq(keel_strerror(KEEL_ABORTED),
			 "task aborted (it panicked; see its abort message)");
	cr_assert_not_null(strstr(keel_strerror(-ECHILD), "scope"));
	cr_assert_str_eq(keel_strerror(-ECANCELED), "cancelled");
	cr_assert_str_eq(keel_strerror(-ETIMEDOUT), "deadline passed");
	cr_assert_not_null(strstr(keel_strerror(-EPIPE), "closed"));
	cr_assert_not_null(strstr(keel_strerror(-ESHUTDOWN), "supervisor"));
	cr_assert_not_null(strstr(keel_strerror(-EOVERFLOW), "lagged"));
}

Test(error, other_errnos_get_libc_text)
{
	cr_assert_str_eq(keel_strerror(-ECONNREFUSED), "Connection refused");
	cr_assert_str_eq(keel_strerror(-ENOMEM), "Cannot allocate memory");
	cr_assert_str_eq(keel_strerror(-EAGAIN),
			 "Resource temporarily unavailable");
}

Test(error, never_null)
{
	static const int odd[] = {0,	 1,	 42,	  INT_MAX, -4095,
				  -4096, -99999, INT_MIN, -1};

	for (size_t i = 0; i < sizeof(odd) / sizeof(odd[0]); i++) {
		const char *s = keel_strerror(odd[i]);

		cr_assert_not_null(s, "status %d", odd[i]);
		cr_assert_gt(strlen(s), 0, "status %d", odd[i]);
	}
	cr_assert_str_eq(keel_strerror(0), "success");
	cr_assert_str_eq(keel_strerror(-99999), "unknown error");
	cr_assert_str_eq(keel_strerror(INT_MIN), "unknown error");
}

#define NTHREADS 4

static void *describe_all(void *arg)
{
	const char **out = arg;

	for (int round = 0; round < 1000; round++)
		for (int e = 0; e < 200; e++)
			out[e] = keel_strerror(-e);
	return NULL;
}

/* Constant strings: every thread gets the same pointers, none is torn. */
Test(error, thread_safe)
{
	static const char *seen[NTHREADS][200];
	pthread_t th[NTHREADS];

	for (int i = 0; i < NTHREADS; i++)
		cr_assert_eq(
		    pthread_create(&th[i], NULL, describe_all, seen[i]), 0);
	for (int i = 0; i < NTHREADS; i++)
		pthread_join(th[i], NULL);
	for (int e = 0; e < 200; e++) {
		cr_assert_not_null(seen[0][e]);
		for (int i = 1; i < NTHREADS; i++)
			cr_assert_eq(seen[i][e], seen[0][e], "errno %d", e);
	}
}
