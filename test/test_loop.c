/* SPDX-License-Identifier: MIT */
/*
 * test_loop.c: creating and running a loop. Defaults and the ring
 * description, the start-up error messages, io_uring refused by a seccomp
 * filter (-EPERM), bad options (-EINVAL), a full SQ and an overflowing CQ
 * losing no completion, keel_loop_stop(), what keel_loop_destroy()
 * does with tasks that never finished, and the RSS of a fresh loop.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <keel.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/io_uring.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helpers/deny_syscall.h"
#include "helpers/keel_test.h"

Test(loop, create_with_null_opts_uses_single_issuer_and_defer_taskrun,
     .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	char desc[512];
	size_t n = keel_loop_describe(loop, desc, sizeof(desc));

	cr_assert_gt(n, 0);
	cr_assert_lt(n, sizeof(desc));
	cr_assert_eq(strlen(desc), n);
	if (strstr(desc, "backend: epoll")) {
		keel_loop_destroy(loop);
		cr_skip_test("io_uring's setup flags: this loop runs on epoll");
	}
	cr_assert(strstr(desc, "SINGLE_ISSUER"), "describe: %s", desc);
	cr_assert(strstr(desc, "DEFER_TASKRUN"), "describe: %s", desc);
	keel_loop_destroy(loop);
}

Test(loop, describe_truncates_and_returns_the_length_it_needed, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	char full[512], part[8];
	size_t n = keel_loop_describe(loop, full, sizeof(full));

	memset(part, 'x', sizeof(part));
	cr_assert_eq(keel_loop_describe(loop, part, sizeof(part)), n);
	cr_assert_gt(n, sizeof(part) - 1);
	cr_assert_eq(part[sizeof(part) - 1], '\0');
	cr_assert_eq(memcmp(part, full, sizeof(part) - 1), 0);
	keel_loop_destroy(loop);
}

static void assert_one_line(int err, const char *must1, const char *must2)
{
	const char *msg = keel_loop_explain(err);

	cr_assert_not_null(msg, "no explanation for %d", err);
	cr_assert_gt(strlen(msg), 0);
	cr_assert_null(strchr(msg, '\n'), "not one line: %s", msg);
	if (must1)
		cr_assert(strstr(msg, must1), "%d: '%s' lacks %s", err, msg,
			  must1);
	if (must2)
		cr_assert(strstr(msg, must2), "%d: '%s' lacks %s", err, msg,
			  must2);
}

Test(loop, explain_eperm_names_io_uring_disabled_and_seccomp, .timeout = 10)
{
	assert_one_line(-EPERM, "io_uring_disabled", "seccomp");
}

Test(loop, explain_enomem_names_memlock, .timeout = 10)
{
	assert_one_line(-ENOMEM, "memlock", NULL);
}

Test(loop, explain_gives_one_line_for_other_errors, .timeout = 10)
{
	assert_one_line(-ENOSYS, NULL, NULL);
	assert_one_line(-EINVAL, NULL, NULL);
}

/* Exit codes of the seccomp child. */
enum {
	CHILD_EPERM = 0,
	CHILD_CREATED = 1,
	CHILD_NO_FILTER = 2,
	CHILD_OTHER = 3
};

#ifdef TEST_AUDIT_ARCH

static void seccomp_child(void)
{
	/* io_uring asked for by name: no fallback to epoll (test_epoll.c
	 * has the fallback). */
	struct keel_loop_opts opts = {.backend = KEEL_BACKEND_IO_URING};
	struct keel_loop *loop = NULL;
	int err;

	if (deny_io_uring_setup() != 0)
		_exit(CHILD_NO_FILTER);
	err = keel_loop_create(&loop, &opts);
	if (err == -EPERM)
		_exit(CHILD_EPERM);
	_exit(err == 0 ? CHILD_CREATED : CHILD_OTHER);
}
#endif

Test(loop, create_under_seccomp_denying_io_uring_gives_eperm, .timeout = 10)
{
#ifdef TEST_AUDIT_ARCH
	int status;
	pid_t pid = fork();

	cr_assert_geq(pid, 0);
	if (pid == 0)
		seccomp_child();
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	cr_assert(WIFEXITED(status), "child died: status %#x", status);
	cr_assert_neq(WEXITSTATUS(status), CHILD_NO_FILTER,
		      "could not install the seccomp filter");
	cr_assert_neq(WEXITSTATUS(status), CHILD_CREATED,
		      "keel_loop_create succeeded under the filter");
	cr_assert_eq(WEXITSTATUS(status), CHILD_EPERM,
		     "keel_loop_create gave another error than -EPERM");
#else
	cr_skip_test("no seccomp audit arch known for this machine");
#endif
}

static void expect_create_error(const struct keel_loop_opts *opts, int want)
{
	struct keel_loop *loop = NULL;
	int fd0 = fcntl(0, F_GETFD);
	int err = keel_loop_create(&loop, opts);

	if (err == 0)
		keel_loop_destroy(loop);
	cr_assert_eq(err, want, "keel_loop_create gave %d, expected %d", err,
		     want);
	/* A refused create closes nothing of the caller's (it once closed
	 * fd 0: its eventfd number was not yet set when it cleaned up). */
	cr_assert_eq(fcntl(0, F_GETFD) >= 0, fd0 >= 0, "fd 0 was closed");
}

Test(loop, sq_entries_beyond_kernel_max_give_einval, .timeout = 10)
{
	struct keel_loop_opts opts = {.sq_entries = 100000};

	expect_create_error(&opts, -EINVAL);
}

Test(loop, unknown_option_flags_give_einval, .timeout = 10)
{
	struct keel_loop_opts opts = {.flags = 0x80000000u};

	expect_create_error(&opts, -EINVAL);
}

/* A task that awaits one nop; counts the ones that got 0. */
static int g_nops_ok;
static int g_nops_bad;

struct nopper {
	struct keel_task task;
};

static int nopper_step(struct keel_task *t);
static KEEL_TASK_TYPE(nopper_task, struct nopper, task, nopper_step);

static int nopper_step(struct keel_task *t)
{
	KEEL_BEGIN(t);
	KEEL_AWAIT(t, keel_nop(t));
	if (keel_res(t) == 0)
		g_nops_ok++;
	else
		g_nops_bad++;
	KEEL_END(t);
}

static struct keel_loop_stats run_nops(const struct keel_loop_opts *opts, int n)
{
	struct keel_loop *loop = kt_loop_new(opts);
	struct keel_loop_stats s;

	for (int i = 0; i < n; i++)
		kt_spawn(loop, &nopper_task, KEEL_PRIO_NORMAL);
	kt_loop_run(loop);
	s = kt_stats(loop);
	keel_loop_destroy(loop);
	cr_assert_eq(g_nops_bad, 0);
	cr_assert_eq(g_nops_ok, n, "%d of %d nops completed", g_nops_ok, n);
	cr_assert_eq(s.exited, (uint64_t)n);
	cr_assert_eq(s.ops_inflight, 0);
	cr_assert_geq(s.cqes, (uint64_t)n);
	return s;
}

Test(loop, frames_live_counts_frames_until_their_tasks_are_freed, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_loop_stats s;

	g_nops_ok = g_nops_bad = 0;
	for (int i = 0; i < 3; i++)
		kt_spawn(loop, &nopper_task, KEEL_PRIO_NORMAL);
	s = kt_stats(loop);
	cr_assert_eq(s.frames_live, 3, "three frames spawned: %lu live",
		     (unsigned long)s.frames_live);
	kt_loop_run(loop);
	s = kt_stats(loop);
	cr_assert_eq(g_nops_ok, 3);
	cr_assert_eq(s.frames_live, 0, "every task freed: %lu live",
		     (unsigned long)s.frames_live);
	keel_loop_destroy(loop);
}

Test(loop, full_sq_is_submitted_and_every_op_completes, .timeout = 10)
{
	struct keel_loop_opts opts = {.sq_entries = 4};
	struct keel_loop_stats s = run_nops(&opts, 200);

	cr_assert_gt(s.sq_full, 0, "200 ops in one turn never filled 4 SQEs");
}

Test(loop, cq_overflow_loses_no_completion, .timeout = 10)
{
	struct keel_loop_opts opts = {.sq_entries = 4, .cq_entries = 8};
	struct keel_loop_stats s = run_nops(&opts, 500);

	/*
	 * A turn runs up to 256 nops against an 8-entry CQ, so the CQ does
	 * overflow (61 times on 6.18); if it no longer did, this test would
	 * check nothing: grow the task count or shrink the CQ.
	 */
	cr_log_info("cq_overflows = %lu, sq_full = %lu",
		    (unsigned long)s.cq_overflows, (unsigned long)s.sq_full);
	cr_assert_gt(s.cq_overflows, 0, "the CQ never overflowed");
}

Test(loop, no_defer_flag_still_gives_working_loop, .timeout = 10)
{
	struct keel_loop_opts opts = {.flags = KEEL_LOOP_NO_DEFER};

	run_nops(&opts, 10);
}

/* keel_loop_stop() and keel_loop_destroy() with work left. */
static int g_stage;
static struct kt_log g_log;
static struct keel_loop *g_current_inside;

static void defer_log(void *arg)
{
	kt_log_push(&g_log, (int)(intptr_t)arg);
}

struct stopper {
	struct keel_task task;
	int stop; /* call keel_loop_stop() first */
	int fd;	  /* >= 0: then wait on it (forever), else sleep 20 ms */
	char buf[8];
};

static int stopper_step(struct keel_task *t);
static KEEL_TASK_TYPE(stopper_task, struct stopper, task, stopper_step);

static int stopper_step(struct keel_task *t)
{
	struct stopper *s = keel_container_of(t, struct stopper, task);

	KEEL_BEGIN(t);
	g_current_inside = keel_loop_current();
	if (keel_defer(t, defer_log, (void *)9) != 0)
		KEEL_EXIT(t, 1);
	g_stage = 1;
	if (s->stop)
		keel_loop_stop(keel_task_loop(t));
	if (s->fd >= 0) {
		KEEL_AWAIT(t, keel_recv(t, s->fd, s->buf, sizeof(s->buf), 0));
		kt_log_push(&g_log, keel_res(t));
	} else {
		KEEL_AWAIT(t, keel_sleep(t, KT_MS(20)));
	}
	g_stage = 2;
	KEEL_END(t);
}

static struct stopper *spawn_stopper(struct keel_loop *loop, int stop, int fd)
{
	struct stopper *s = kt_spawn(loop, &stopper_task, KEEL_PRIO_NORMAL);

	s->stop = stop;
	s->fd = fd;
	return s;
}

Test(loop, stop_from_task_makes_run_return_and_run_resumes, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);

	spawn_stopper(loop, 1, -1);
	cr_assert_null(keel_loop_current());
	kt_loop_run(loop);
	cr_assert_eq(g_stage, 1, "run did not return after the stop");
	cr_assert_eq(kt_stats(loop).tasks_live, 1);
	cr_assert_eq(g_current_inside, loop);
	cr_assert_null(keel_loop_current());
	/* The stop was for one run: the next one finishes the work. */
	kt_loop_run(loop);
	cr_assert_eq(g_stage, 2);
	kt_log_expect(&g_log, (const int[]){9}, 1);
	keel_loop_destroy(loop);
}

Test(loop, stop_makes_run_return_while_only_an_idle_recv_is_left, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	int sv[2];

	/* Nothing will ever complete: the turn must not wait for it. */
	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	spawn_stopper(loop, 1, sv[0]);
	kt_loop_run(loop);
	cr_assert_eq(g_stage, 1);
	cr_assert_eq(kt_stats(loop).tasks_live, 1);
	keel_loop_destroy(loop);
	close(sv[0]);
	close(sv[1]);
}

Test(loop, destroy_cancels_ops_and_runs_defers_of_unfinished_task,
     .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	int sv[2];

	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	spawn_stopper(loop, 0, sv[0]);
	/* One turn: the recv is in the kernel's hands. */
	cr_assert_eq(keel_loop_step(loop, 0), 1);
	cr_assert_eq(g_stage, 1);
	cr_assert_geq(kt_stats(loop).ops_inflight, 1);
	keel_loop_destroy(loop);
	/* The task never resumed, but its cleanup ran. */
	cr_assert_eq(g_stage, 1);
	kt_log_expect(&g_log, (const int[]){9}, 1);
	close(sv[0]);
	close(sv[1]);
}

Test(loop, destroy_of_null_is_a_no_op, .timeout = 10)
{
	keel_loop_destroy(NULL);
}

Test(loop, loop_fd_is_an_open_descriptor, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	int fd = keel_loop_fd(loop);

	cr_assert_geq(fd, 0);
	cr_assert_neq(fcntl(fd, F_GETFD), -1);
	keel_loop_destroy(loop);
}

Test(loop, has_op_knows_nop_and_rejects_unknown_opcode, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);

	cr_assert(keel_loop_has_op(loop, IORING_OP_NOP));
	cr_assert(keel_loop_has_op(loop, IORING_OP_RECV));
	cr_assert_not(keel_loop_has_op(loop, 250));
	keel_loop_destroy(loop);
}

Test(loop, loop_now_follows_the_monotonic_clock, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	uint64_t before, now, after;

	kt_spawn(loop, &nopper_task, KEEL_PRIO_NORMAL);
	before = kt_now_ns();
	cr_assert_geq(keel_loop_step(loop, 0), 0);
	after = kt_now_ns();
	now = keel_loop_now(loop);
	cr_assert(now >= before && now <= after,
		  "loop now %lu outside [%lu, %lu]", (unsigned long)now,
		  (unsigned long)before, (unsigned long)after);
	keel_loop_destroy(loop);
}

Test(loop, two_loops_on_one_thread_run_independently, .timeout = 10)
{
	struct keel_loop *a = kt_loop_new(NULL);
	struct keel_loop *b = kt_loop_new(NULL);

	for (int i = 0; i < 3; i++)
		kt_spawn(a, &nopper_task, KEEL_PRIO_NORMAL);
	kt_spawn(b, &nopper_task, KEEL_PRIO_NORMAL);
	kt_loop_run(a);
	cr_assert_eq(g_nops_ok, 3);
	cr_assert_eq(kt_stats(b).tasks_live, 1);
	kt_loop_run(b);
	cr_assert_eq(g_nops_ok, 4);
	keel_loop_destroy(a);
	keel_loop_destroy(b);
}

#ifndef KEEL_ALLOC_LIBC
/* Resident set in KiB (/proc/self/statm). */
static long rss_kib(void)
{
	unsigned long size = 0, resident = 0;
	FILE *f = fopen("/proc/self/statm", "r");

	cr_assert_not_null(f);
	cr_assert_eq(fscanf(f, "%lu %lu", &size, &resident), 2);
	fclose(f);
	return (long)(resident * (unsigned long)sysconf(_SC_PAGESIZE) / 1024);
}
#endif

/*
 * A loop nothing has run on yet costs at most 128 KiB of RSS: its frame
 * arena (jemalloc's metadata alone is about 84 KiB) is made at the first
 * frame. Measured on 8 loops, after one loop was used and destroyed (the
 * code and malloc warm). Not under the sanitizers: their allocator is not
 * the one measured.
 */
Test(loop, a_fresh_loop_costs_at_most_128_kib_of_rss, .timeout = 10)
{
#ifdef KEEL_ALLOC_LIBC
	cr_skip("sanitizer build: frames come from libc");
#else
	struct keel_loop *loops[8];
	long before, after;

	loops[0] = kt_loop_new(NULL);
	kt_spawn(loops[0], &nopper_task, KEEL_PRIO_NORMAL);
	kt_loop_run(loops[0]);
	keel_loop_destroy(loops[0]);
	before = rss_kib();
	for (int i = 0; i < 8; i++)
		loops[i] = kt_loop_new(NULL);
	after = rss_kib();
	cr_assert_leq((after - before) / 8, 128,
		      "a fresh loop costs %ld KiB of RSS",
		      (after - before) / 8);
	for (int i = 0; i < 8; i++)
		keel_loop_destroy(loops[i]);
#endif
}

/*
 * Completion batching (batch_wait_ns): many ops completing together make
 * the loop wait for batches; when fewer completions come than it waits for
 * (a lone sleep), the wait times out and the loop goes on. Every op
 * completes, and the enters are fewer than the ops.
 */
struct batch_worker {
	struct keel_task task;
	int i, sleeps, *done;
};

static int batch_worker_step(struct keel_task *t)
{
	struct batch_worker *w =
	    keel_container_of(t, struct batch_worker, task);

	KEEL_BEGIN(t);
	for (w->i = 0; w->i < 200; w->i++) {
		KEEL_AWAIT(t, keel_nop(t));
		cr_assert_eq(keel_res(t), 0);
	}
	/* Alone now: one CQE per wake, less than the batch waited for. */
	for (w->i = 0; w->i < w->sleeps; w->i++)
		KEEL_AWAIT(t, keel_sleep(t, 1000 * 1000));
	(*w->done)++;
	KEEL_END(t);
}

static KEEL_TASK_TYPE(batch_worker_task, struct batch_worker, task,
		      batch_worker_step);

Test(loop, batch_wait_batches_busy_turns_and_never_stalls, .timeout = 20)
{
	struct keel_loop_opts opts = {.batch_wait_ns = 50000};
	struct keel_loop *loop = kt_loop_new(&opts);
	struct keel_loop_stats st;
	int done = 0;

	for (int i = 0; i < 32; i++) {
		struct batch_worker *w =
		    keel_spawn(loop, &batch_worker_task, KEEL_PRIO_NORMAL);

		cr_assert_not_null(w);
		w->done = &done;
		w->sleeps = i == 0 ? 5 : 0;
	}
	cr_assert_eq(keel_loop_run(loop), 0);
	cr_assert_eq(done, 32);
	keel_loop_stats(loop, &st);
	cr_assert_lt(st.enters, 32 * 200 / 4, "%lu enters for 6400 nops",
		     (unsigned long)st.enters);
	keel_loop_destroy(loop);
}

/*
 * Ops that all complete inside the enter that submits them (NOPs, on
 * every backend) are never held for a batch they cannot make: the batch
 * counts the SQEs the enter submits, but never more than all the ops in
 * flight (without that bound, every wait here ran out its 20 us).
 */
Test(loop, a_batch_never_waits_for_more_than_is_in_flight, .timeout = 20)
{
	for (size_t b = 0; b < 2; b++) {
		struct keel_loop_opts opts = {
		    .backend = b ? KEEL_BACKEND_EPOLL : KEEL_BACKEND_IO_URING};
		struct keel_loop *loop = kt_loop_new(&opts);
		struct keel_loop_stats st;
		int done = 0;

		for (int i = 0; i < 32; i++) {
			struct batch_worker *w = keel_spawn(
			    loop, &batch_worker_task, KEEL_PRIO_NORMAL);

			cr_assert_not_null(w);
			w->done = &done;
		}
		cr_assert_eq(keel_loop_run(loop), 0);
		cr_assert_eq(done, 32);
		keel_loop_stats(loop, &st);
		cr_assert_gt(st.batch_waits, 0, "backend %zu", b);
		cr_assert_eq(st.batch_short, 0,
			     "backend %zu: %lu of %lu batched waits short", b,
			     (unsigned long)st.batch_short,
			     (unsigned long)st.batch_waits);
		keel_loop_destroy(loop);
	}
}

/*
 * Completion batching by default (batch_wait_ns 0): busy loops wait for
 * batches (with the kernel's min-wait where it has it, else the timed
 * fallback; the epoll backend takes the fallback), a lone request never
 * does, and KEEL_BATCH_WAIT_OFF turns it off. Each run is on both
 * backends; completions must all arrive, in order, with the right data.
 */
static const unsigned batch_backends[] = {KEEL_BACKEND_IO_URING,
					  KEEL_BACKEND_EPOLL};

struct pinger {
	struct keel_task task;
	int fd, rounds, r, *done;
	uint32_t id;
	size_t got;
	uint64_t out, in; /* handed to the kernel: in the frame */
};

/* Sends (id, r), expects (id, r + 1) back, `rounds` times. */
static int pinger_step(struct keel_task *t)
{
	struct pinger *p = keel_container_of(t, struct pinger, task);

	KEEL_BEGIN(t);
	for (p->r = 0; p->r < p->rounds; p->r++) {
		p->out = (uint64_t)p->id << 32 | (uint32_t)p->r;
		KEEL_AWAIT(t,
			   keel_send_all(t, p->fd, &p->out, 8, MSG_NOSIGNAL));
		cr_assert_eq(keel_res(t), 8);
		for (p->got = 0; p->got < 8; p->got += (size_t)keel_res(t)) {
			KEEL_AWAIT(t,
				   keel_recv(t, p->fd, (char *)&p->in + p->got,
					     8 - p->got, 0));
			cr_assert_gt(keel_res(t), 0, "recv: %d", keel_res(t));
		}
		cr_assert_eq(p->in, p->out + 1, "pair %u round %d", p->id,
			     p->r);
	}
	/* The ponger (if it is a task) ends at the end of the stream. */
	shutdown(p->fd, SHUT_WR);
	(*p->done)++;
	KEEL_END(t);
}

/* Answers each 8-byte value with value + 1 until the peer closes. */
static int ponger_step(struct keel_task *t)
{
	struct pinger *p = keel_container_of(t, struct pinger, task);

	KEEL_BEGIN(t);
	for (;;) {
		for (p->got = 0; p->got < 8; p->got += (size_t)keel_res(t)) {
			KEEL_AWAIT(t,
				   keel_recv(t, p->fd, (char *)&p->in + p->got,
					     8 - p->got, 0));
			if (keel_res(t) <= 0)
				break;
		}
		if (p->got < 8)
			break;
		p->out = p->in + 1;
		KEEL_AWAIT(t,
			   keel_send_all(t, p->fd, &p->out, 8, MSG_NOSIGNAL));
		cr_assert_eq(keel_res(t), 8);
	}
	(*p->done)++;
	KEEL_END(t);
}

static KEEL_TASK_TYPE(pinger_task, struct pinger, task, pinger_step);
static KEEL_TASK_TYPE(ponger_task, struct pinger, task, ponger_step);

/* Pongs from a plain thread: the loop then has one request in flight. */
static void *pong_thread(void *arg)
{
	int fd = *(int *)arg;
	uint64_t v;

	while (read(fd, &v, 8) == 8) {
		v++;
		if (write(fd, &v, 8) != 8)
			break;
	}
	return NULL;
}

/* `pairs` ping-pongs of `rounds` inside one loop; the stats after. */
static struct keel_loop_stats ping_pongs(unsigned backend, unsigned bw,
					 int pairs, int rounds)
{
	struct keel_loop_opts opts = {.backend = backend, .batch_wait_ns = bw};
	struct keel_loop *loop = kt_loop_new(&opts);
	struct keel_loop_stats st;
	int fds[64][2], done = 0;

	cr_assert_leq(pairs, 64);
	for (int i = 0; i < pairs; i++) {
		kt_tcp_pair(fds[i]);
		struct pinger *a =
		    kt_spawn(loop, &pinger_task, KEEL_PRIO_NORMAL);
		struct pinger *b =
		    kt_spawn(loop, &ponger_task, KEEL_PRIO_NORMAL);

		a->fd = fds[i][0];
		a->rounds = rounds;
		a->done = &done;
		a->id = (uint32_t)i;
		b->fd = fds[i][1];
		b->done = &done;
	}
	kt_loop_run(loop);
	cr_assert_eq(done, 2 * pairs);
	st = kt_stats(loop);
	for (int i = 0; i < pairs; i++) {
		close(fds[i][0]);
		close(fds[i][1]);
	}
	keel_loop_destroy(loop);
	return st;
}

Test(loop, batching_is_on_by_default_and_completions_stay_right, .timeout = 60)
{
	for (size_t b = 0; b < sizeof(batch_backends) / sizeof(*batch_backends);
	     b++) {
		struct keel_loop_stats st =
		    ping_pongs(batch_backends[b], 0, 32, 300);

		/* 32 pairs: wakes bring dozens of CQEs, so the loop waits
		 * for batches (before batching was on by default: never). */
		cr_assert_gt(st.batch_waits, 0, "backend %u",
			     batch_backends[b]);
		cr_assert_lt(st.enters, 32 * 300, "backend %u: %lu enters",
			     batch_backends[b], (unsigned long)st.enters);
	}
}

/* On every backend: `pairs` ping-pong pairs never wait for a batch. */
static void assert_no_batched_waits(unsigned bw, int pairs, int rounds)
{
	for (size_t b = 0; b < sizeof(batch_backends) / sizeof(*batch_backends);
	     b++) {
		struct keel_loop_stats st =
		    ping_pongs(batch_backends[b], bw, pairs, rounds);

		cr_assert_eq(st.batch_waits, 0, "backend %u: %lu batched waits",
			     batch_backends[b], (unsigned long)st.batch_waits);
	}
}

Test(loop, batching_off_never_waits_for_a_batch, .timeout = 60)
{
	assert_no_batched_waits(KEEL_BATCH_WAIT_OFF, 32, 100);
}

/*
 * Four connections in a closed loop (both ends on the loop) bring several
 * CQEs per wake-up, but a wait for as many again holds each answer until
 * the others have sent: batching waits for a third of the ops in flight
 * at most, so it never waits here (before that cap, on io_uring, nearly
 * every enter waited for a batch).
 */
Test(loop, few_connections_never_wait_for_a_batch, .timeout = 60)
{
	assert_no_batched_waits(0, 4, 1000);
}

/*
 * A lone request in flight (one connection, its peer another thread) is
 * never held back for a batch: each wake brings one or two CQEs. The
 * time bound is only a hang check.
 */
Test(loop, lone_ping_pong_never_waits_for_a_batch, .timeout = 60)
{
	for (size_t b = 0; b < sizeof(batch_backends) / sizeof(*batch_backends);
	     b++) {
		struct keel_loop_opts opts = {.backend = batch_backends[b]};
		struct keel_loop *loop = kt_loop_new(&opts);
		int fds[2], done = 0;
		pthread_t th;

		kt_tcp_pair(fds);
		cr_assert_eq(pthread_create(&th, NULL, pong_thread, &fds[1]),
			     0);
		struct pinger *a =
		    kt_spawn(loop, &pinger_task, KEEL_PRIO_NORMAL);

		a->fd = fds[0];
		a->rounds = 2000;
		a->done = &done;
		kt_loop_run(loop);
		cr_assert_eq(done, 1);
		cr_assert_eq(kt_stats(loop).batch_waits, 0, "backend %u",
			     batch_backends[b]);
		pthread_join(th, NULL);
		close(fds[0]);
		close(fds[1]);
		keel_loop_destroy(loop);
	}
}
