/* SPDX-License-Identifier: MIT */
/*
 * test_restrict.c: least-privilege rings (KEEL_LOOP_RESTRICT, io/restrict.c)
 * on the real kernel, over loopback:
 *
 * - a restricted loop with the default set runs a TCP echo (accept and
 *   recv streams on a buffer ring, connect, send_all, a recv under a linked
 *   timeout, close), sleeps, a timer and keel_loop_fd(); a net-only loop
 *   runs the same echo with direct descriptors (the file table is a
 *   network register op); nothing is refused;
 * - a runtime of two restricted loops posts across loops (spawn_on and a
 *   mailbox: MSG_RING doorbells), each loop created and enabled on its
 *   own thread (SINGLE_ISSUER); a net-only runtime, whose ring refuses the
 *   read of its signalfd, still shuts down gracefully on SIGTERM;
 * - a net-only loop refuses openat, read, statx and splice with -EACCES
 *   before any kernel call: counted as refused, no SQE submitted, no CQE
 *   back; keel_loop_has_op() says so too;
 * - the kernel itself enforces the set: an OPENAT SQE written straight
 *   into the ring, an allowed opcode with a flag keel never sets, and a
 *   register operation keel never uses all get -EACCES from the kernel;
 *   a files-only loop refuses a buffer ring (a network register op);
 * - describe says what the ring is restricted to; an unrestricted loop is
 *   unchanged; bad options are -EINVAL; KEEL_RESTRICT restricts every loop
 *   and a bad value fails the create; on the simulated kernel and on the
 *   epoll backend the flag is ignored and describe says so (an echo on
 *   epoll with the flag set runs, nothing refused).
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <keel.h>
#include <keel/sim.h>
#include <liburing.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helpers/keel_test.h"
#include "io.h"

/* Restrictions are the kernel's io_uring's: every loop here that checks
 * them asks for io_uring, whatever KEEL_BACKEND the suite runs under (the
 * epoll backend's behaviour is checked by ignored_on_epoll). */
static const struct keel_loop_opts uring = {.backend = KEEL_BACKEND_IO_URING};

static struct keel_loop *restricted_loop(unsigned ops)
{
	struct keel_loop_opts o = {.flags = KEEL_LOOP_RESTRICT,
				   .restrict_ops = ops,
				   .backend = KEEL_BACKEND_IO_URING};

	return kt_loop_new(&o);
}

static void describe_has(struct keel_loop *loop, const char *want)
{
	char buf[1024];

	keel_loop_describe(loop, buf, sizeof(buf));
	cr_assert(strstr(buf, want), "describe: \"%s\", wanted \"%s\"", buf,
		  want);
}

/* ---- echo on a restricted ring ---- */

#define ECHO_MSG "least privilege, same service"

struct echo_server {
	struct keel_task task;
	int lfd;
	unsigned accept_flags;
	struct keel_bufring *ring;
	struct keel_accept_stream as;
	struct keel_recv_stream rs;
	struct keel_buf buf;
	int fd;
	int echoed;
	int res;
};

static int echo_server_step(struct keel_task *t)
{
	struct echo_server *s = keel_container_of(t, struct echo_server, task);

	KEEL_BEGIN(t);
	s->res = keel_accept_stream_open(t, &s->as, s->lfd, s->accept_flags);
	if (s->res)
		KEEL_EXIT(t, 1);
	KEEL_AWAIT(t, keel_accept_next(t, &s->as));
	s->fd = keel_res(t);
	keel_accept_stream_close(&s->as);
	if (s->fd < 0) {
		s->res = s->fd;
		KEEL_EXIT(t, 1);
	}
	s->res = keel_recv_stream_open(t, &s->rs, s->fd, s->ring, 0);
	if (s->res)
		KEEL_EXIT(t, 1);
	for (;;) {
		KEEL_AWAIT(t, keel_recv_next(t, &s->rs, &s->buf));
		if (keel_res(t) <= 0)
			break;
		KEEL_AWAIT(t, keel_send_all(t, s->fd, s->buf.data, s->buf.len,
					    MSG_NOSIGNAL));
		keel_buf_release(&s->buf);
		if (keel_res(t) < 0)
			break;
		s->echoed += keel_res(t);
	}
	s->res = keel_res(t);
	keel_recv_stream_close(&s->rs);
	KEEL_AWAIT(t, keel_close(t, s->fd));
	KEEL_END(t);
}
static KEEL_TASK_TYPE(echo_server_task, struct echo_server, task,
		      echo_server_step);

struct echo_client {
	struct keel_task task;
	uint16_t port;
	int fd;
	struct sockaddr_storage ss;
	socklen_t len;
	size_t got;
	char buf[64];
	int res; /* the first error, or 0 */
};

static int echo_client_step(struct keel_task *t)
{
	struct echo_client *c = keel_container_of(t, struct echo_client, task);

	KEEL_BEGIN(t);
	KEEL_AWAIT(t, keel_socket(t, AF_INET, SOCK_STREAM, 0));
	c->fd = keel_res(t);
	if (c->fd < 0) {
		c->res = c->fd;
		KEEL_EXIT(t, 1);
	}
	kt_loopback_addr(c->port, &c->ss, &c->len);
	KEEL_AWAIT(t,
		   keel_connect(t, c->fd, (struct sockaddr *)&c->ss, c->len));
	if (keel_res(t) < 0)
		goto fail;
	KEEL_AWAIT(t, keel_send_all(t, c->fd, ECHO_MSG, strlen(ECHO_MSG),
				    MSG_NOSIGNAL));
	if (keel_res(t) < 0)
		goto fail;
	while (c->got < strlen(ECHO_MSG)) {
		/* A deadline: a linked timeout, a flagged SQE. */
		keel_op_timeout(t, KT_MS(5000));
		KEEL_AWAIT(t, keel_recv(t, c->fd, c->buf + c->got,
					sizeof(c->buf) - c->got, 0));
		if (keel_res(t) <= 0)
			goto fail;
		c->got += (size_t)keel_res(t);
	}
	KEEL_AWAIT(t, keel_close(t, c->fd));
	KEEL_EXIT(t, 0);
fail:
	c->res = keel_res(t) ? keel_res(t) : -EPIPE;
	KEEL_AWAIT(t, keel_close(t, c->fd));
	KEEL_END(t);
}
static KEEL_TASK_TYPE(echo_client_task, struct echo_client, task,
		      echo_client_step);

struct sleeper {
	struct keel_task task;
	int res;
};

static int sleeper_step(struct keel_task *t)
{
	struct sleeper *s = keel_container_of(t, struct sleeper, task);

	KEEL_BEGIN(t);
	s->res = 1;
	KEEL_AWAIT(t, keel_sleep(t, KT_MS(2)));
	s->res = keel_res(t);
	KEEL_END(t);
}
static KEEL_TASK_TYPE(sleeper_task, struct sleeper, task, sleeper_step);

static void timer_fired(struct keel_loop *loop, struct keel_timer *timer,
			void *arg)
{
	(void)loop;
	(void)timer;
	(*(int *)arg)++;
}

static void echo_on(struct keel_loop *loop, unsigned accept_flags)
{
	struct keel_bufring_opts bo = {.count = 16, .size = 256};
	struct keel_bufring *ring;
	struct keel_timer timer;
	uint16_t port;
	int fired = 0;

	cr_assert_eq(keel_bufring_create(loop, &bo, &ring), 0);
	cr_assert_geq(keel_loop_fd(loop), 0, "keel_loop_fd's eventfd");
	keel_timer_init(&timer, timer_fired, &fired);
	cr_assert_eq(keel_timer_arm_after(loop, &timer, KT_MS(1)), 0);

	struct echo_server *s =
	    kt_spawn(loop, &echo_server_task, KEEL_SPAWN_JOINABLE);
	struct echo_client *c =
	    kt_spawn(loop, &echo_client_task, KEEL_SPAWN_JOINABLE);
	struct sleeper *z = kt_spawn(loop, &sleeper_task, KEEL_SPAWN_JOINABLE);

	s->lfd = kt_listen(&port);
	s->accept_flags = accept_flags;
	s->ring = ring;
	c->port = port;
	kt_loop_run(loop);
	cr_assert_eq(c->res, 0, "client: %s", strerror(-c->res));
	cr_assert_eq(s->res, 0, "server: %s", strerror(-s->res));
	cr_assert_eq(c->got, strlen(ECHO_MSG));
	cr_assert_eq(memcmp(c->buf, ECHO_MSG, c->got), 0);
	cr_assert_eq(s->echoed, (int)strlen(ECHO_MSG));
	cr_assert_eq(z->res, 0, "the sleep: %d", z->res);
	cr_assert_eq(fired, 1, "the timer fired");
	cr_assert_eq(kt_stats(loop).ops_refused, 0);
	close(s->lfd);
}

Test(restrict, default_set_runs_an_echo_a_sleep_and_a_timer, .timeout = 20)
{
	struct keel_loop *loop = restricted_loop(0);

	describe_has(loop, "restricted: net+files+pipes");
	echo_on(loop, 0);
	keel_loop_destroy(loop);
}

Test(restrict, net_only_runs_an_echo_with_direct_descriptors, .timeout = 20)
{
	struct keel_loop *loop = restricted_loop(KEEL_OPS_NET);

	describe_has(loop, "restricted: net,");
	echo_on(loop, KEEL_ACCEPT_DIRECT);
	keel_loop_destroy(loop);
}

/* ---- a runtime of restricted loops: cross-loop posts ---- */

static struct keel_runtime *g_rt;
static struct keel_mailbox *g_mb;
static int g_remote_restricted = -1;

struct hello {
	struct keel_task task;
};

static int hello_step(struct keel_task *t)
{
	char buf[1024];

	KEEL_BEGIN(t);
	keel_loop_describe(keel_task_loop(t), buf, sizeof(buf));
	g_remote_restricted = strstr(buf, "restricted: net,") != NULL;
	/* Wakes loop 0, parked in the kernel: a MSG_RING doorbell. */
	KEEL_AWAIT(t, keel_mb_send(t, g_mb, (void *)(uintptr_t)42));
	CHECK_EQ(keel_res(t), 0);
	KEEL_END(t);
}
static KEEL_TASK_TYPE(hello_task, struct hello, task, hello_step);

struct rt_main {
	struct keel_task task;
	void *msg;
	int i;
};

static int rt_main_step(struct keel_task *t)
{
	struct rt_main *m = keel_container_of(t, struct rt_main, task);

	KEEL_BEGIN(t);
	CHECK_EQ(keel_mailbox_new(keel_task_loop(t), NULL, &g_mb), 0);
	for (m->i = 0; m->i < 50; m->i++) {
		CHECK_EQ(keel_spawn_on(keel_runtime_loop(g_rt, 1), &hello_task,
				       KEEL_PRIO_NORMAL, NULL, NULL),
			 0);
		KEEL_AWAIT(t, keel_mb_recv(t, g_mb, &m->msg));
		if (keel_res(t) != 0 || (uintptr_t)m->msg != 42)
			KEEL_EXIT(t, 1);
	}
	keel_mailbox_release(g_mb);
	KEEL_AWAIT(t, keel_sleep(t, KT_MS(1)));
	KEEL_EXIT(t, 7);
}
static KEEL_TASK_TYPE(rt_main_task, struct rt_main, task, rt_main_step);

Test(restrict, runtime_of_restricted_loops_posts_across_loops, .timeout = 20)
{
	struct keel_runtime_opts o = {
	    .threads = 2,
	    .no_signals = true,
	    .loop = {.flags = KEEL_LOOP_RESTRICT,
		     .restrict_ops = KEEL_OPS_NET,
		     .backend = KEEL_BACKEND_IO_URING},
	};
	struct keel_runtime *rt = NULL;
	int err = keel_runtime_create(&rt, &o);

	cr_assert_eq(err, 0, "keel_runtime_create: %s", strerror(-err));
	g_rt = rt;
	cr_assert_eq(keel_runtime_run(rt, &rt_main_task, NULL, NULL), 7);
	cr_assert_eq(g_remote_restricted, 1, "loop 1 is restricted");
	for (unsigned i = 0; i < 2; i++) {
		struct keel_loop_stats st;

		cr_assert_eq(keel_runtime_loop_stats(rt, i, &st), 0);
		cr_assert_eq(st.ops_refused, 0, "loop %u refused an op", i);
	}
	keel_runtime_destroy(rt);
	kt_expect_no_failures();
}

/* A net-only runtime still hears SIGTERM: its signalfd cannot be read
 * through the ring, so the signal task polls it (sched/runtime.c). */
static int g_report_fd = -1;

struct sig_main {
	struct keel_task task;
};

static int sig_main_step(struct keel_task *t)
{
	KEEL_BEGIN(t);
	if (write(g_report_fd, "r", 1) != 1)
		KEEL_EXIT(t, 90);
	KEEL_AWAIT(t, keel_sleep(t, KT_MS(20000)));
	KEEL_EXIT(t, keel_res(t) == -ECANCELED ? 0 : 91);
}
static KEEL_TASK_TYPE(sig_main_task, struct sig_main, task, sig_main_step);

static void sig_child(void)
{
	struct keel_runtime_opts o = {
	    .threads = 1,
	    .loop = {.flags = KEEL_LOOP_RESTRICT,
		     .restrict_ops = KEEL_OPS_NET,
		     .backend = KEEL_BACKEND_IO_URING},
	};
	struct keel_runtime *rt = NULL;
	struct keel_loop_stats st;

	if (keel_runtime_create(&rt, &o))
		_exit(92);
	int ret = keel_runtime_run(rt, &sig_main_task, NULL, NULL);

	if (keel_runtime_loop_stats(rt, 0, &st) || st.ops_refused)
		_exit(93);
	keel_runtime_destroy(rt);
	_exit(ret < 0 || ret > 255 ? 94 : ret);
}

Test(restrict, net_only_runtime_shuts_down_on_sigterm, .timeout = 20)
{
	struct pollfd p;
	int rp[2], status = 0;
	char c = 0;

	cr_assert_eq(pipe2(rp, O_CLOEXEC), 0);
	pid_t pid = fork();

	cr_assert_geq(pid, 0);
	if (pid == 0) {
		close(rp[0]);
		g_report_fd = rp[1];
		sig_child();
	}
	close(rp[1]);
	p.fd = rp[0];
	p.events = POLLIN;
	cr_assert_eq(poll(&p, 1, 5000), 1, "the child never started");
	cr_assert_eq(read(rp[0], &c, 1), 1);
	cr_assert_eq(kill(pid, SIGTERM), 0);
	bool ended = false;

	for (int i = 0; i < 5000 && !ended; i++) {
		ended = waitpid(pid, &status, WNOHANG) == pid;
		if (!ended)
			usleep(1000);
	}
	if (!ended) {
		kill(pid, SIGKILL);
		waitpid(pid, &status, 0);
		cr_assert_fail("SIGTERM did not end the child within 5 s");
	}
	close(rp[0]);
	cr_assert(WIFEXITED(status), "the child died of signal %d",
		  WIFSIGNALED(status) ? WTERMSIG(status) : 0);
	cr_assert_eq(WEXITSTATUS(status), 0, "the child exited %d",
		     WEXITSTATUS(status));
}

/* ---- a net-only loop refuses file ops before the kernel ---- */

struct file_ops {
	struct keel_task task;
	const char *path;
	int fd, pfd[2];
	struct statx stx;
	char buf[16];
	int open_res, read_res, statx_res, splice_res;
};

static int file_ops_step(struct keel_task *t)
{
	struct file_ops *f = keel_container_of(t, struct file_ops, task);

	KEEL_BEGIN(t);
	KEEL_AWAIT(t, keel_openat(t, AT_FDCWD, f->path, O_RDONLY, 0));
	f->open_res = keel_res(t);
	KEEL_AWAIT(t, keel_read(t, f->fd, f->buf, sizeof(f->buf), 0));
	f->read_res = keel_res(t);
	KEEL_AWAIT(t, keel_statx(t, AT_FDCWD, f->path, 0, STATX_SIZE, &f->stx));
	f->statx_res = keel_res(t);
	KEEL_AWAIT(t,
		   keel_splice(t, f->fd, 0, f->pfd[1], -1, sizeof(f->buf), 0));
	f->splice_res = keel_res(t);
	KEEL_END(t);
}
static KEEL_TASK_TYPE(file_ops_task, struct file_ops, task, file_ops_step);

Test(restrict, net_only_refuses_file_ops_before_the_kernel, .timeout = 20)
{
	struct keel_loop *loop = restricted_loop(KEEL_OPS_NET);
	char dir[256], path[300];

	kt_tmpdir_make(dir, sizeof(dir));
	snprintf(path, sizeof(path), "%s/f", dir);
	int wfd = open(path, O_WRONLY | O_CREAT, 0600);

	cr_assert_geq(wfd, 0);
	cr_assert_eq(write(wfd, "data", 4), 4);
	close(wfd);

	cr_assert_eq(keel_loop_has_op(loop, IORING_OP_READ), 0);
	cr_assert_eq(keel_loop_has_op(loop, IORING_OP_OPENAT), 0);
	cr_assert_eq(keel_loop_has_op(loop, IORING_OP_RECV), 1);

	struct file_ops *f =
	    kt_spawn(loop, &file_ops_task, KEEL_SPAWN_JOINABLE);

	f->path = path;
	f->fd = open(path, O_RDONLY);
	cr_assert_geq(f->fd, 0);
	cr_assert_eq(pipe(f->pfd), 0);
	struct keel_loop_stats before = kt_stats(loop);

	kt_loop_run(loop);
	struct keel_loop_stats after = kt_stats(loop);

	cr_assert_eq(f->open_res, -EACCES, "openat: %d", f->open_res);
	cr_assert_eq(f->read_res, -EACCES, "read: %d", f->read_res);
	cr_assert_eq(f->statx_res, -EACCES, "statx: %d", f->statx_res);
	cr_assert_eq(f->splice_res, -EACCES, "splice: %d", f->splice_res);
	cr_assert_eq(after.ops_refused - before.ops_refused, 4);
	/* Not one reached the kernel: no SQE went in, no CQE came back. */
	cr_assert_eq(after.sqes, before.sqes, "SQEs submitted: %llu",
		     (unsigned long long)(after.sqes - before.sqes));
	cr_assert_eq(after.cqes, before.cqes);
	cr_assert_eq(after.ops_inflight, 0);
	close(f->fd);
	close(f->pfd[0]);
	close(f->pfd[1]);
	keel_loop_destroy(loop);
	kt_tmpdir_remove(dir);
}

/* ---- the kernel enforces it ---- */

/* Submit one SQE straight into the loop's ring, bypassing keel's check,
 * and return the kernel's result. */
static int raw_sqe(struct keel_loop *loop, struct io_uring_sqe *tmpl)
{
	struct keel__io *io = keel__io_of(loop);
	struct io_uring_sqe *sqe = io_uring_get_sqe(&io->ring);
	struct io_uring_cqe *cqe;

	cr_assert_not_null(sqe);
	*sqe = *tmpl;
	io_uring_sqe_set_data64(sqe, KEEL__UD_INTERNAL);
	cr_assert_eq(io_uring_submit_and_wait(&io->ring, 1), 1);
	cr_assert_eq(io_uring_peek_cqe(&io->ring, &cqe), 0);
	int res = cqe->res;

	io_uring_cqe_seen(&io->ring, cqe);
	return res;
}

Test(restrict, the_kernel_refuses_what_keel_was_not_asked_for, .timeout = 20)
{
	struct keel_loop *loop = restricted_loop(KEEL_OPS_NET);
	struct io_uring_sqe sqe;
	struct iovec iov;
	char page[64];

	/* Allowed: a NOP. */
	memset(&sqe, 0, sizeof(sqe));
	io_uring_prep_nop(&sqe);
	cr_assert_eq(raw_sqe(loop, &sqe), 0);
	/* An opcode outside the set. */
	memset(&sqe, 0, sizeof(sqe));
	io_uring_prep_openat(&sqe, AT_FDCWD, "/", O_RDONLY | O_DIRECTORY, 0);
	cr_assert_eq(raw_sqe(loop, &sqe), -EACCES);
	/* An allowed opcode with a flag keel never sets. */
	memset(&sqe, 0, sizeof(sqe));
	io_uring_prep_nop(&sqe);
	sqe.flags = IOSQE_ASYNC;
	cr_assert_eq(raw_sqe(loop, &sqe), -EACCES);
	/* A register operation keel never uses. */
	iov.iov_base = page;
	iov.iov_len = sizeof(page);
	cr_assert_eq(
	    io_uring_register_buffers(&keel__io_of(loop)->ring, &iov, 1),
	    -EACCES);
	keel_loop_destroy(loop);
}

Test(restrict, files_only_refuses_a_buffer_ring, .timeout = 20)
{
	struct keel_loop *loop = restricted_loop(KEEL_OPS_FILES);
	struct keel_bufring *ring = NULL;

	describe_has(loop, "restricted: files,");
	cr_assert_eq(keel_bufring_create(loop, NULL, &ring), -EACCES);
	cr_assert_null(ring);
	cr_assert_eq(kt_stats(loop).ops_refused, 1);
	char text[16384];

	keel_metrics_render(&loop, 1, text, sizeof(text));
	cr_assert(strstr(text, "keel_ops_refused_total{loop=\"0\"} 1\n"),
		  "metrics:\n%s", text);
	/* Register ops every ring needs stay allowed. */
	cr_assert_geq(keel_loop_fd(loop), 0);
	keel_loop_destroy(loop);
}

/* ---- unrestricted, options, KEEL_RESTRICT, backends ---- */

Test(restrict, an_unrestricted_loop_is_unchanged, .timeout = 20)
{
	struct keel_loop *loop = kt_loop_new(&uring);
	struct io_uring_sqe sqe;

	describe_has(loop, "restrictions: none");
	cr_assert_eq(keel_loop_has_op(loop, IORING_OP_READ), 1);
	memset(&sqe, 0, sizeof(sqe));
	io_uring_prep_openat(&sqe, AT_FDCWD, "/", O_RDONLY | O_DIRECTORY, 0);
	int fd = raw_sqe(loop, &sqe);

	cr_assert_geq(fd, 0, "openat on an unrestricted ring: %d", fd);
	close(fd);
	echo_on(loop, 0);
	keel_loop_destroy(loop);
}

Test(restrict, bad_options_are_einval, .timeout = 20)
{
	struct keel_loop_opts o = {.restrict_ops = KEEL_OPS_NET};
	struct keel_loop *loop = NULL;

	/* A list without the flag would look restricted and not be. */
	cr_assert_eq(keel_loop_create(&loop, &o), -EINVAL);
	o.flags = KEEL_LOOP_RESTRICT;
	o.restrict_ops = 0x80;
	cr_assert_eq(keel_loop_create(&loop, &o), -EINVAL);
	cr_assert_null(loop);
}

Test(restrict, keel_restrict_restricts_every_loop, .timeout = 20)
{
	struct keel_loop *loop = NULL;

	setenv("KEEL_RESTRICT", "net,pipes", 1);
	loop = kt_loop_new(&uring);
	describe_has(loop, "restricted: net+pipes,");
	cr_assert_eq(keel_loop_has_op(loop, IORING_OP_SPLICE), 1);
	cr_assert_eq(keel_loop_has_op(loop, IORING_OP_WRITE), 0);
	keel_loop_destroy(loop);
	setenv("KEEL_RESTRICT", "1", 1);
	loop = kt_loop_new(&uring);
	describe_has(loop, "restricted: net+files+pipes,");
	keel_loop_destroy(loop);
	setenv("KEEL_RESTRICT", "0", 1);
	loop = kt_loop_new(&uring);
	describe_has(loop, "restrictions: none");
	keel_loop_destroy(loop);
	loop = NULL;
	setenv("KEEL_RESTRICT", "net,disk", 1);
	cr_assert_eq(keel_loop_create(&loop, &uring), -EINVAL);
	cr_assert_null(loop);
	unsetenv("KEEL_RESTRICT");
}

Test(restrict, ignored_on_a_backend, .timeout = 20)
{
	struct keel_loop_opts o = {.flags = KEEL_LOOP_RESTRICT,
				   .restrict_ops = KEEL_OPS_NET};
	struct keel_sim *sim;
	struct keel_loop *loop;

	cr_assert_eq(keel_sim_create(&sim, NULL), 0);
	cr_assert_eq(keel_sim_loop_create(sim, &loop, &o), 0);
	describe_has(loop, "restrictions (net): not applied on backend sim");
	cr_assert_eq(keel_loop_has_op(loop, IORING_OP_READ), 1);
	keel_loop_destroy(loop);
	keel_sim_destroy(sim);
}

/* On the epoll backend there is no ring to restrict: the flag is accepted,
 * not applied, and describe says so (man keel_loop_create, NOTES). */
Test(restrict, ignored_on_epoll, .timeout = 20)
{
	struct keel_loop_opts o = {.flags = KEEL_LOOP_RESTRICT,
				   .restrict_ops = KEEL_OPS_NET,
				   .backend = KEEL_BACKEND_EPOLL};
	struct keel_loop *loop = kt_loop_new(&o);

	describe_has(loop, "restrictions (net): not applied on backend epoll");
	cr_assert_eq(keel_loop_has_op(loop, IORING_OP_READ), 1);
	echo_on(loop, 0);
	cr_assert_eq(kt_stats(loop).ops_refused, 0);
	keel_loop_destroy(loop);
}
