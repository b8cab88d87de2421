/* SPDX-License-Identifier: MIT */
/*
 * test_ring.c: the kernel ring's layout (io/ring.c), on the real kernel:
 *
 * - IORING_SETUP_NO_SQARRAY (Linux 6.6): a loop's ring has no SQ index
 *   array where the kernel takes the flag (describe says so; on 6.6 and
 *   newer it must), and KEEL_NO_SQARRAY=0 keeps the array; either way a
 *   ring of 8 entries wraps around many times with every NOP completing
 *   (liburing 2.3's setup would have written the array over the ring's
 *   head and tail).
 */
#include <criterion/criterion.h>
#include <keel.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>

#include "helpers/keel_test.h"

/* The running kernel is at least major.minor. */
static bool kernel_at_least(int major, int minor)
{
	struct utsname u;
	int ma = 0, mi = 0;

	cr_assert_eq(uname(&u), 0);
	cr_assert_eq(sscanf(u.release, "%d.%d", &ma, &mi), 2);
	return ma > major || (ma == major && mi >= minor);
}

static void describe(struct keel_loop *loop, char *buf, size_t len)
{
	cr_assert_lt(keel_loop_describe(loop, buf, len), len);
}

struct nopper {
	struct keel_task task;
	int i, n, *done;
};

static int nopper_step(struct keel_task *t)
{
	struct nopper *p = keel_container_of(t, struct nopper, task);

	KEEL_BEGIN(t);
	for (p->i = 0; p->i < p->n; p->i++) {
		KEEL_AWAIT(t, keel_nop(t));
		cr_assert_eq(keel_res(t), 0);
	}
	(*p->done)++;
	KEEL_END(t);
}

static KEEL_TASK_TYPE(nopper_task, struct nopper, task, nopper_step);

/* `tasks` tasks of `n` NOPs each on `loop`; all of them complete. */
static void run_nops(struct keel_loop *loop, int tasks, int n)
{
	int done = 0;

	for (int i = 0; i < tasks; i++) {
		struct nopper *p =
		    kt_spawn(loop, &nopper_task, KEEL_PRIO_NORMAL);

		p->n = n;
		p->done = &done;
	}
	kt_loop_run(loop);
	cr_assert_eq(done, tasks);
}

Test(ring, no_sqarray_where_the_kernel_has_it_and_the_ring_wraps)
{
	struct keel_loop_opts opts = {.sq_entries = 8};
	char d[1024];

	for (int keep_array = 0; keep_array < 2; keep_array++) {
		if (keep_array)
			cr_assert_eq(setenv("KEEL_NO_SQARRAY", "0", 1), 0);
		struct keel_loop *loop = kt_loop_new(&opts);

		describe(loop, d, sizeof(d));
		fprintf(stderr, "test_ring: %s\n", d);
		if (keep_array)
			cr_assert_null(strstr(d, "NO_SQARRAY"), "%s", d);
		else if (kernel_at_least(6, 6))
			cr_assert_not_null(strstr(d, "NO_SQARRAY"), "%s", d);
		cr_assert_not_null(strstr(d, "sq 8,"), "%s", d);
		/* 6 in flight on 8 entries: 400 SQEs, 50 trips round. */
		run_nops(loop, 6, 400 / 6 + 1);
		keel_loop_destroy(loop);
		unsetenv("KEEL_NO_SQARRAY");
	}
}
