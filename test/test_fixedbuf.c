/* SPDX-License-Identifier: MIT */
/*
 * test_fixedbuf.c: registered buffers (keel_buffers_register) and the
 * fixed ops (keel_read_fixed, keel_write_fixed) end to end, on each
 * backend: the loop's default (io_uring, or what KEEL_BACKEND says), the
 * epoll backend and the simulated kernel. A write from one registered
 * buffer and a read into another round-trip a real file (read back with
 * pread(2) too); a bad index is -EINVAL, a buffer outside the one named
 * -EFAULT, both before anything is queued; registering twice is -EBUSY,
 * unregistering with a fixed op in flight -EBUSY (a read of an empty
 * pipe; also one whose task was killed, until the kernel returns it);
 * restricted rings allow them with "files" only. SQEs that skip keel's
 * check get the kernel's -EFAULT from the epoll backend too.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <keel.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "helpers/keel_test.h"
#include "loop.h" /* struct keel_loop: its ring, for SQEs of our own */

#define BUF_LEN 8192

enum where { DEFAULT, EPOLL, SIM };
static const char *const where_name[] = {"default", "epoll", "sim"};

static char g_bufs[2][BUF_LEN] __attribute__((aligned(4096)));
static const struct iovec g_iov[2] = {{g_bufs[0], BUF_LEN},
				      {g_bufs[1], BUF_LEN}};

/* Each op's result, in order. */
static struct kt_log g_log;

/* A loop and a file on one backend. */
struct env {
	enum where where;
	struct keel_loop *loop;
	struct keel_sim *sim;
	int fd;
	char dir[PATH_MAX];
};

static void env_open_opts(struct env *e, enum where where,
			  const struct keel_loop_opts *opts)
{
	memset(e, 0, sizeof(*e));
	e->where = where;
	g_log.n = 0;
	memset(g_bufs, 0, sizeof(g_bufs));
	if (where == SIM) {
		struct keel_sim_opts so = {.seed = 7};

		cr_assert_eq(keel_sim_create(&e->sim, &so), 0);
		cr_assert_eq(keel_sim_loop_create(e->sim, &e->loop, NULL), 0);
		e->fd = -1; /* the task opens "/f" (see rw_step) */
		return;
	}
	struct keel_loop_opts o = {.backend = KEEL_BACKEND_EPOLL};
	char path[PATH_MAX + 8];

	e->loop = kt_loop_new(where == EPOLL ? &o : opts);
	kt_tmpdir_make(e->dir, sizeof(e->dir));
	snprintf(path, sizeof(path), "%s/f", e->dir);
	e->fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	cr_assert_geq(e->fd, 0);
}

static void env_open(struct env *e, enum where where)
{
	env_open_opts(e, where, NULL);
}

static void env_run(struct env *e)
{
	if (e->sim)
		cr_assert_eq(keel_sim_run(e->sim, 10ull * 1000000000u), 0);
	else
		kt_loop_run(e->loop);
}

static void env_close(struct env *e)
{
	keel_loop_destroy(e->loop);
	if (e->sim) {
		char why[160];

		cr_assert_eq(keel_sim_check(e->sim, why, sizeof(why)), 0, "%s",
			     why);
		keel_sim_destroy(e->sim);
		return;
	}
	close(e->fd);
	kt_tmpdir_remove(e->dir);
}

enum script { ROUND_TRIP, BAD_ARGS, PIPE_READ, COLD_READ };

struct rw {
	struct keel_task task;
	enum script script;
	int fd; /* -1: open "/f" of the simulated machine, and close it */
	bool own;
};

static int rw_step(struct keel_task *t);
static KEEL_TASK_TYPE(rw_task, struct rw, task, rw_step);

static int rw_step(struct keel_task *t)
{
	struct rw *f = keel_container_of(t, struct rw, task);

	KEEL_BEGIN(t);
	if (f->fd < 0) {
		KEEL_AWAIT(
		    t, keel_openat(t, AT_FDCWD, "/f", O_RDWR | O_CREAT, 0600));
		f->fd = keel_res(t);
		f->own = true;
	}
	if (f->script == PIPE_READ) {
		KEEL_AWAIT(t, keel_read_fixed(t, f->fd, g_bufs[0], 64,
					      KEEL_OFF_CURRENT, 0));
		kt_log_push(&g_log, keel_res(t));
		goto out;
	}
	if (f->script == COLD_READ) {
		KEEL_AWAIT(t,
			   keel_read_fixed(t, f->fd, g_bufs[1], BUF_LEN, 0, 1));
		kt_log_push(&g_log, keel_res(t));
		goto out;
	}
	if (f->script == BAD_ARGS) {
		/* No buffer 2; buffer 1 named for memory outside it. */
		KEEL_AWAIT(t, keel_read_fixed(t, f->fd, g_bufs[1], 16, 0, 2));
		kt_log_push(&g_log, keel_res(t));
		KEEL_AWAIT(t, keel_read_fixed(t, f->fd, g_bufs[1] + BUF_LEN - 8,
					      16, 0, 1));
		kt_log_push(&g_log, keel_res(t));
		KEEL_AWAIT(t, keel_read_fixed(t, f->fd, g_bufs[0], 16, 0, 1));
		kt_log_push(&g_log, keel_res(t));
		KEEL_AWAIT(t, keel_write_fixed(t, f->fd, g_bufs[1], BUF_LEN + 1,
					       0, 1));
		kt_log_push(&g_log, keel_res(t));
		/* The whole of buffer 1, and nothing of it, are fine. */
		KEEL_AWAIT(
		    t, keel_write_fixed(t, f->fd, g_bufs[1], BUF_LEN, 0, 1));
		kt_log_push(&g_log, keel_res(t));
		KEEL_AWAIT(
		    t, keel_read_fixed(t, f->fd, g_bufs[1] + BUF_LEN, 0, 0, 1));
		kt_log_push(&g_log, keel_res(t));
		goto out;
	}
	/* ROUND_TRIP: buffer 0 out at 4096, and a slice of it at 20000;
	 * back into buffer 1 in two reads; then a read past the end. */
	kt_pattern_fill(g_bufs[0], BUF_LEN, 0, 1);
	KEEL_AWAIT(t, keel_write_fixed(t, f->fd, g_bufs[0], BUF_LEN, 4096, 0));
	kt_log_push(&g_log, keel_res(t));
	KEEL_AWAIT(t,
		   keel_write_fixed(t, f->fd, g_bufs[0] + 100, 50, 20000, 0));
	kt_log_push(&g_log, keel_res(t));
	KEEL_AWAIT(t, keel_read_fixed(t, f->fd, g_bufs[1], 4000, 4096, 1));
	kt_log_push(&g_log, keel_res(t));
	KEEL_AWAIT(t, keel_read_fixed(t, f->fd, g_bufs[1] + 4000,
				      BUF_LEN - 4000, 4096 + 4000, 1));
	kt_log_push(&g_log, keel_res(t));
	KEEL_AWAIT(t, keel_read_fixed(t, f->fd, g_bufs[0], 64, 30000, 0));
	kt_log_push(&g_log, keel_res(t));
out:
	if (f->own)
		KEEL_AWAIT(t, keel_close(t, f->fd));
	KEEL_END(t);
}

static struct rw *spawn_rw(struct keel_loop *loop, enum script script, int fd)
{
	struct rw *f = kt_spawn(loop, &rw_task, 0);

	f->script = script;
	f->fd = fd;
	return f;
}

/* The test `fn` on each backend: fixedbuf::fn_default, _epoll, _sim. */
#define ON_EACH_BACKEND(fn)                                                    \
	Test(fixedbuf, fn##_default)                                           \
	{                                                                      \
		fn(DEFAULT);                                                   \
	}                                                                      \
	Test(fixedbuf, fn##_epoll)                                             \
	{                                                                      \
		fn(EPOLL);                                                     \
	}                                                                      \
	Test(fixedbuf, fn##_sim)                                               \
	{                                                                      \
		fn(SIM);                                                       \
	}

static void round_trip(enum where where)
{
	const char *name = where_name[where];
	struct env e;

	env_open(&e, where);
	cr_assert_eq(keel_buffers_register(e.loop, g_iov, 2), 0, "%s", name);
	spawn_rw(e.loop, ROUND_TRIP, e.fd);
	env_run(&e);
	kt_log_expect(&g_log, (int[]){BUF_LEN, 50, 4000, BUF_LEN - 4000, 0}, 5);
	cr_assert_eq(kt_pattern_mismatch(g_bufs[1], BUF_LEN, 0, 1), SIZE_MAX,
		     "%s: read back differs", name);
	if (where != SIM) {
		char got[50];

		cr_assert_eq(pread(e.fd, got, sizeof(got), 20000), 50);
		cr_assert_eq(memcmp(got, g_bufs[0] + 100, 50), 0, "%s", name);
	}
	cr_assert_eq(keel_buffers_unregister(e.loop), 0, "%s", name);
	env_close(&e);
}

ON_EACH_BACKEND(round_trip)

static void bad_args(enum where where)
{
	const char *name = where_name[where];
	struct env e;

	env_open(&e, where);
	/* Before any registration: no buffer 0 either. */
	spawn_rw(e.loop, PIPE_READ, e.fd);
	env_run(&e);
	kt_log_expect(&g_log, (int[]){-EINVAL}, 1);
	g_log.n = 0;
	cr_assert_eq(keel_buffers_register(e.loop, g_iov, 2), 0, "%s", name);
	spawn_rw(e.loop, BAD_ARGS, e.fd);
	env_run(&e);
	kt_log_expect(
	    &g_log, (int[]){-EINVAL, -EFAULT, -EFAULT, -EFAULT, BUF_LEN, 0}, 6);
	env_close(&e); /* with the buffers registered: the loop's to drop */
}

ON_EACH_BACKEND(bad_args)

static void register_errors(enum where where)
{
	const char *name = where_name[where];
	struct iovec bad[2] = {{g_bufs[0], BUF_LEN}, {NULL, BUF_LEN}};
	struct env e;

	env_open(&e, where);
	cr_assert_eq(keel_buffers_unregister(e.loop), -ENXIO, "%s", name);
	cr_assert_eq(keel_buffers_register(e.loop, g_iov, 0), -EINVAL);
	cr_assert_eq(keel_buffers_register(e.loop, NULL, 1), -EINVAL);
	cr_assert_eq(keel_buffers_register(e.loop, bad, 2), -EINVAL);
	bad[1] = (struct iovec){g_bufs[1], 0};
	cr_assert_eq(keel_buffers_register(e.loop, bad, 2), -EINVAL);
	cr_assert_eq(keel_buffers_register(e.loop, g_iov, 1), 0, "%s", name);
	cr_assert_eq(keel_buffers_register(e.loop, g_iov, 2), -EBUSY);
	cr_assert_eq(keel_buffers_unregister(e.loop), 0, "%s", name);
	cr_assert_eq(keel_buffers_unregister(e.loop), -ENXIO, "%s", name);
	/* A new table after the old one is gone. */
	cr_assert_eq(keel_buffers_register(e.loop, g_iov, 2), 0, "%s", name);
	cr_assert_eq(keel_buffers_unregister(e.loop), 0, "%s", name);
	env_close(&e);
}

ON_EACH_BACKEND(register_errors)

/* Turns until the loop has nothing to run and waits on the kernel. */
static void step_idle(struct keel_loop *loop)
{
	for (int i = 0; i < 8; i++)
		cr_assert_geq(keel_loop_step(loop, 0), 0);
}

/*
 * A read of pages the page cache dropped: on the epoll backend its
 * nonblocking attempt says -EAGAIN and a worker thread runs it
 * (io/epoll_pool.c), into the registered buffer.
 */
static void cold_read(enum where where)
{
	struct env e;

	env_open(&e, where);
	kt_pattern_fill(g_bufs[0], BUF_LEN, 0, 3);
	cr_assert_eq(pwrite(e.fd, g_bufs[0], BUF_LEN, 0), BUF_LEN);
	cr_assert_eq(fsync(e.fd), 0);
	cr_assert_eq(posix_fadvise(e.fd, 0, 0, POSIX_FADV_DONTNEED), 0);
	cr_assert_eq(keel_buffers_register(e.loop, g_iov, 2), 0);
	spawn_rw(e.loop, COLD_READ, e.fd);
	env_run(&e);
	kt_log_expect(&g_log, (int[]){BUF_LEN}, 1);
	cr_assert_eq(kt_pattern_mismatch(g_bufs[1], BUF_LEN, 0, 3), SIZE_MAX);
	env_close(&e);
}

Test(fixedbuf, cold_read_default)
{
	cold_read(DEFAULT);
}
Test(fixedbuf, cold_read_epoll)
{
	cold_read(EPOLL);
}

/*
 * A fixed read of an empty pipe stays in flight: unregistering is -EBUSY
 * until it completes. `kill`: its task is killed instead of the pipe
 * written, and the op's buffer is still the kernel's until the cancel's
 * CQE is in.
 */
static void unregister_busy(enum where where, bool kill)
{
	const char *name = where_name[where];
	struct env e;
	int p[2];

	env_open(&e, where);
	cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
	cr_assert_eq(keel_buffers_register(e.loop, g_iov, 2), 0, "%s", name);
	struct rw *f = spawn_rw(e.loop, PIPE_READ, p[0]);

	step_idle(e.loop);
	cr_assert_eq(g_log.n, 0, "%s: the read completed", name);
	cr_assert_eq(keel_buffers_unregister(e.loop), -EBUSY, "%s", name);
	if (kill) {
		cr_assert_eq(keel_task_kill(&f->task), 0);
		cr_assert_eq(keel_buffers_unregister(e.loop), -EBUSY, "%s",
			     name);
	} else {
		cr_assert_eq(write(p[1], "hello", 5), 5);
	}
	kt_loop_run(e.loop);
	kt_log_expect(&g_log, (int[]){5}, kill ? 0 : 1);
	if (!kill)
		cr_assert_eq(memcmp(g_bufs[0], "hello", 5), 0);
	cr_assert_eq(keel_buffers_unregister(e.loop), 0, "%s", name);
	close(p[0]);
	close(p[1]);
	env_close(&e);
}

Test(fixedbuf, unregister_busy_default)
{
	unregister_busy(DEFAULT, false);
}
Test(fixedbuf, unregister_busy_epoll)
{
	unregister_busy(EPOLL, false);
}
Test(fixedbuf, unregister_killed_default)
{
	unregister_busy(DEFAULT, true);
}
Test(fixedbuf, unregister_killed_epoll)
{
	unregister_busy(EPOLL, true);
}

/* Restricted rings: the fixed ops and the registration are "files". */
Test(fixedbuf, restricted)
{
	struct keel_loop_opts o = {.flags = KEEL_LOOP_RESTRICT,
				   .restrict_ops = KEEL_OPS_NET,
				   .backend = KEEL_BACKEND_IO_URING};
	struct keel_loop *loop = kt_loop_new(&o);
	struct env e;

	cr_assert_eq(keel_buffers_register(loop, g_iov, 2), -EACCES);
	keel_loop_destroy(loop);
	o.restrict_ops = KEEL_OPS_FILES;
	env_open_opts(&e, DEFAULT, &o);
	cr_assert_eq(keel_buffers_register(e.loop, g_iov, 2), 0);
	spawn_rw(e.loop, ROUND_TRIP, e.fd);
	env_run(&e);
	kt_log_expect(&g_log, (int[]){BUF_LEN, 50, 4000, BUF_LEN - 4000, 0}, 5);
	cr_assert_eq(keel_buffers_unregister(e.loop), 0);
	env_close(&e);
}

/*
 * SQEs written here, past keel's own check: the epoll backend refuses a
 * bad index and a buffer outside the one named as the kernel does.
 */
static void raw_sqes(unsigned backend)
{
	struct keel_loop_opts o = {.backend = backend};
	const struct {
		unsigned index;
		char *buf;
		unsigned len;
		int want;
	} c[] = {
	    {2, g_bufs[1], 16, -EFAULT},
	    {1, g_bufs[1] + BUF_LEN - 8, 16, -EFAULT},
	    {1, g_bufs[0], 16, -EFAULT},
	    {1, g_bufs[1] + 8, 16, 16},
	};
	const unsigned n = sizeof(c) / sizeof(c[0]);
	int got[sizeof(c) / sizeof(c[0])];
	unsigned seen = 0;
	struct env e;

	env_open_opts(&e, DEFAULT, &o);
	cr_assert_eq(pwrite(e.fd, "0123456789abcdef", 16, 0), 16);
	cr_assert_eq(keel_buffers_register(e.loop, g_iov, 2), 0);
	struct keel__io *io = &e.loop->io;

	for (unsigned i = 0; i < n; i++) {
		struct io_uring_sqe *sqe = keel__io_sqe(io);

		cr_assert_not_null(sqe);
		io_uring_prep_read_fixed(sqe, e.fd, c[i].buf, c[i].len, 0,
					 (int)c[i].index);
		io_uring_sqe_set_data64(sqe, i);
	}
	for (uint64_t until = kt_now_ns() + KT_MS(2000);
	     seen < n && kt_now_ns() < until;) {
		struct io_uring_cqe *cqe;

		keel__io_enter(io, 1, KT_MS(5));
		while (io_uring_peek_cqe(&io->ring, &cqe) == 0) {
			cr_assert_lt(cqe->user_data, n);
			got[cqe->user_data] = cqe->res;
			seen++;
			io_uring_cqe_seen(&io->ring, cqe);
		}
	}
	cr_assert_eq(seen, n);
	for (unsigned i = 0; i < n; i++)
		cr_assert_eq(got[i], c[i].want, "SQE %u gave %d, expected %d",
			     i, got[i], c[i].want);
	cr_assert_eq(memcmp(g_bufs[1] + 8, "0123456789abcdef", 16), 0);
	env_close(&e);
}

Test(fixedbuf, raw_sqes_io_uring)
{
	raw_sqes(KEEL_BACKEND_IO_URING);
}
Test(fixedbuf, raw_sqes_epoll)
{
	raw_sqes(KEEL_BACKEND_EPOLL);
}
