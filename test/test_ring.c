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
 * - IORING_REGISTER_RESIZE_RINGS (6.13): a loop with the default sizes
 *   starts with an SQ of 32 entries (describe says so; on 6.13 and newer
 *   it must), KEEL_RING_RESIZE=0, KEEL_NO_SQARRAY=0 and sizes asked for
 *   keep their size; the first time the SQ fills it grows to 256, with
 *   SQEs queued before and receives in flight across the resize all
 *   completing, data intact (the process's first loop shrunk after setup,
 *   the next set up small).
 */
#include <criterion/criterion.h>
#include <keel.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "helpers/keel_test.h"

/* What is tested here is io_uring's own ring (CI runs the suite again
 * with KEEL_BACKEND=epoll). */
static const struct keel_loop_opts uring = {.backend = KEEL_BACKEND_IO_URING};

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
	struct keel_loop_opts opts = {.sq_entries = 8,
				      .backend = KEEL_BACKEND_IO_URING};
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

Test(ring, default_sq_starts_small_other_sizes_stay)
{
	struct keel_loop_opts asked = {.sq_entries = 256,
				       .backend = KEEL_BACKEND_IO_URING};
	char d[1024];
	struct keel_loop *loop = kt_loop_new(&uring);

	describe(loop, d, sizeof(d));
	fprintf(stderr, "test_ring: %s\n", d);
	if (kernel_at_least(6, 13))
		cr_assert_not_null(strstr(d, "sq 32, cq 1024;"), "%s", d);
	keel_loop_destroy(loop);

	loop = kt_loop_new(&asked);
	describe(loop, d, sizeof(d));
	cr_assert_not_null(strstr(d, "sq 256, cq 1024;"), "%s", d);
	keel_loop_destroy(loop);

	/* Off, and with an SQ array (whose offset a resize does not say). */
	const char *knobs[] = {"KEEL_RING_RESIZE", "KEEL_NO_SQARRAY"};

	for (size_t i = 0; i < 2; i++) {
		cr_assert_eq(setenv(knobs[i], "0", 1), 0);
		loop = kt_loop_new(&uring);
		unsetenv(knobs[i]);
		describe(loop, d, sizeof(d));
		cr_assert_not_null(strstr(d, "sq 256, cq 1024;"), "%s: %s",
				   knobs[i], d);
		run_nops(loop, 100, 3);
		keel_loop_destroy(loop);
	}
}

#define PAIRS 40

struct receiver {
	struct keel_task task;
	int fd, *done;
	uint64_t want, got;
};

static int receiver_step(struct keel_task *t)
{
	struct receiver *r = keel_container_of(t, struct receiver, task);

	KEEL_BEGIN(t);
	KEEL_AWAIT(t, keel_recv(t, r->fd, &r->got, sizeof(r->got), 0));
	cr_assert_eq(keel_res(t), (int)sizeof(r->got));
	cr_assert_eq(r->got, r->want);
	(*r->done)++;
	KEEL_END(t);
}

static KEEL_TASK_TYPE(receiver_task, struct receiver, task, receiver_step);

struct sender {
	struct keel_task task;
	int *fds, i;
};

/* After the receives are in flight (and the SQ has grown), sends each
 * pair its number. */
static int sender_step(struct keel_task *t)
{
	struct sender *s = keel_container_of(t, struct sender, task);

	KEEL_BEGIN(t);
	KEEL_AWAIT(t, keel_sleep(t, 1000 * 1000));
	for (s->i = 0; s->i < PAIRS; s->i++) {
		uint64_t v = 1000 + (uint64_t)s->i;

		cr_assert_eq(send(s->fds[2 * s->i], &v, sizeof(v), 0),
			     (ssize_t)sizeof(v));
	}
	KEEL_END(t);
}

static KEEL_TASK_TYPE(sender_task, struct sender, task, sender_step);

static void grow_with_ops_in_flight(void)
{
	int fds[2 * PAIRS], done = 0, nops = 0;
	char d[1024];
	struct keel_loop *loop = kt_loop_new(&uring);

	describe(loop, d, sizeof(d));
	if (!strstr(d, "sq 32,")) {
		fprintf(stderr, "test_ring: SQ not small here: %s\n", d);
		cr_assert(!kernel_at_least(6, 13));
		keel_loop_destroy(loop);
		return;
	}
	for (int i = 0; i < PAIRS; i++) {
		kt_tcp_pair(&fds[2 * i]);
		struct receiver *r =
		    kt_spawn(loop, &receiver_task, KEEL_PRIO_NORMAL);

		r->fd = fds[2 * i + 1];
		r->want = 1000 + (uint64_t)i;
		r->done = &done;
	}
	/* With the 40 receives, 60 NOPs in the same turn: the SQ fills. */
	for (int i = 0; i < 60; i++) {
		struct nopper *p =
		    kt_spawn(loop, &nopper_task, KEEL_PRIO_NORMAL);

		p->n = 1;
		p->done = &nops;
	}
	struct sender *s = kt_spawn(loop, &sender_task, KEEL_PRIO_NORMAL);

	s->fds = fds;
	kt_loop_run(loop);
	cr_assert_eq(done, PAIRS);
	cr_assert_eq(nops, 60);
	describe(loop, d, sizeof(d));
	cr_assert_not_null(strstr(d, "sq 256, cq 1024;"), "%s", d);
	cr_assert_null(strstr(d, "RESIZE_RINGS"), "%s", d);
	run_nops(loop, 100, 3); /* and it goes on */
	keel_loop_destroy(loop);
	for (int i = 0; i < 2 * PAIRS; i++)
		close(fds[i]);
}

/* The process's first loop is set up at full size and shrunk; later ones
 * are set up small at once: both grow. */
Test(ring, a_full_small_sq_grows_with_ops_in_flight, .timeout = 20)
{
	grow_with_ops_in_flight();
	grow_with_ops_in_flight();
}
