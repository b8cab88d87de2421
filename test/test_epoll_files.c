/* SPDX-License-Identifier: MIT */
/*
 * test_epoll_files.c: ops without readiness on the epoll backend run on
 * its worker threads (io/epoll_pool.c), not on the loop's: a FIFO's open
 * waits for its other end while the loop goes on, timers fire meanwhile,
 * links and direct descriptors behave as on io_uring, cancelling a queued
 * op cancels it and a running one says -EALREADY, and a loop destroyed
 * under a running op waits for it. SQE by SQE, as test_epoll.c; the cases
 * both backends share run on both.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <keel.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "epoll_pool.h"
#include "helpers/keel_test.h"
#include "loop.h"

#define MAX_CQES 16

static const unsigned backends[] = {KEEL_BACKEND_IO_URING, KEEL_BACKEND_EPOLL};
static const char *const names[] = {"io_uring", "epoll"};

struct t {
	struct keel_loop *loop;
	struct keel__io *io;
	const char *name;
	struct io_uring_cqe cqes[MAX_CQES];
	int n;
	char dir[256];
	char fifo[300];
};

static void t_open(struct t *t, unsigned backend)
{
	struct keel_loop_opts o = {.backend = backend};

	memset(t, 0, sizeof(*t));
	int err = keel_loop_create(&t->loop, &o);

	cr_assert_eq(err, 0, "%s: %s", names[backend - 1],
		     keel_loop_explain(err));
	t->io = &t->loop->io;
	t->name = names[backend - 1];
	kt_tmpdir_make(t->dir, sizeof(t->dir));
	snprintf(t->fifo, sizeof(t->fifo), "%s/fifo", t->dir);
	cr_assert_eq(mkfifo(t->fifo, 0600), 0);
}

static void t_close(struct t *t)
{
	keel_loop_destroy(t->loop);
	kt_tmpdir_remove(t->dir);
}

static struct io_uring_sqe *t_sqe(struct t *t, uint64_t ud)
{
	struct io_uring_sqe *sqe = keel__io_sqe(t->io);

	cr_assert_not_null(sqe);
	io_uring_sqe_set_data64(sqe, ud);
	return sqe;
}

/* Submit, and collect CQEs until `want` in all or `ms` have passed. */
static void t_reap(struct t *t, int want, int ms)
{
	uint64_t until = kt_now_ns() + KT_MS(ms);

	do {
		struct io_uring_cqe *cqe;

		keel__io_enter(t->io, 1, KT_MS(5));
		while (t->n < MAX_CQES &&
		       io_uring_peek_cqe(&t->io->ring, &cqe) == 0) {
			t->cqes[t->n++] = *cqe;
			io_uring_cqe_seen(&t->io->ring, cqe);
		}
	} while (t->n < want && kt_now_ns() < until);
}

static struct io_uring_cqe *t_cqe(struct t *t, uint64_t ud)
{
	for (int i = 0; i < t->n; i++)
		if (t->cqes[i].user_data == ud)
			return &t->cqes[i];
	cr_assert_fail("%s: no CQE for %llu (%d CQEs)", t->name,
		       (unsigned long long)ud, t->n);
	return NULL;
}

/* The FIFO's writer end, without waiting: once a reader is in its open
 * (-ENXIO until then: the worker may not have got there yet). */
static int open_writer(const struct t *t)
{
	uint64_t until = kt_now_ns() + KT_MS(10000);
	int fd;

	while ((fd = open(t->fifo, O_WRONLY | O_NONBLOCK | O_CLOEXEC)) < 0 &&
	       errno == ENXIO && kt_now_ns() < until)
		usleep(1000);
	cr_assert_geq(fd, 0, "%s: the reader is not in its open: %s", t->name,
		      strerror(errno));
	return fd;
}

#define EACH_BACKEND(t)                                                        \
	for (size_t b_ = 0; b_ < 2 && (t_open(&(t), backends[b_]), 1);         \
	     b_++, t_close(&(t)))

/* Run inline, the reader's open would never return: nothing opens the
 * writer end but the same ring's next op. */
Test(epoll_files, a_fifo_open_waits_while_its_loop_opens_the_other_end,
     .timeout = 30)
{
	struct t t;

	EACH_BACKEND(t)
	{
		io_uring_prep_openat(t_sqe(&t, 1), AT_FDCWD, t.fifo,
				     O_RDONLY | O_CREAT | O_CLOEXEC, 0600);
		t_reap(&t, 1, 30);
		cr_assert_eq(t.n, 0, "%s: the reader's open returned", t.name);
		io_uring_prep_openat(t_sqe(&t, 2), AT_FDCWD, t.fifo,
				     O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
		t_reap(&t, 2, 10000);
		cr_assert_geq(t_cqe(&t, 1)->res, 0, "%s: %d", t.name,
			      t_cqe(&t, 1)->res);
		cr_assert_geq(t_cqe(&t, 2)->res, 0, "%s: %d", t.name,
			      t_cqe(&t, 2)->res);
		close(t_cqe(&t, 1)->res);
		close(t_cqe(&t, 2)->res);
	}
}

/* io_uring's first attempt opens with O_NONBLOCK: so does epoll's. */
Test(epoll_files, a_fifo_opens_at_once_without_o_creat, .timeout = 30)
{
	struct t t;

	EACH_BACKEND(t)
	{
		io_uring_prep_openat(t_sqe(&t, 1), AT_FDCWD, t.fifo,
				     O_WRONLY | O_CLOEXEC, 0);
		t_reap(&t, 1, 10000);
		cr_assert_eq(t_cqe(&t, 1)->res, -ENXIO, "%s", t.name);
		io_uring_prep_openat(t_sqe(&t, 2), AT_FDCWD, t.fifo,
				     O_RDONLY | O_CLOEXEC, 0);
		t_reap(&t, 2, 10000);
		int fd = t_cqe(&t, 2)->res;

		cr_assert_geq(fd, 0, "%s: %d", t.name, fd);
		/* ... and clears it: the caller did not ask for it. */
		cr_assert_eq(fcntl(fd, F_GETFL) & O_NONBLOCK, 0, "%s", t.name);
		close(fd);
	}
}

Test(epoll_files, a_timer_fires_while_a_file_op_waits, .timeout = 30)
{
	struct t t;
	struct __kernel_timespec ts = {.tv_nsec = 10 * 1000 * 1000};

	EACH_BACKEND(t)
	{
		io_uring_prep_openat(t_sqe(&t, 1), AT_FDCWD, t.fifo,
				     O_RDONLY | O_CREAT | O_CLOEXEC, 0600);
		io_uring_prep_timeout(t_sqe(&t, 2), &ts, 0, 0);
		t_reap(&t, 1, 10000);
		cr_assert_eq(t.n, 1, "%s", t.name);
		cr_assert_eq(t.cqes[0].user_data, 2, "%s", t.name);
		cr_assert_eq(t.cqes[0].res, -ETIME, "%s", t.name);
		int w = open_writer(&t);

		t_reap(&t, 2, 10000);
		cr_assert_eq(t.cqes[1].user_data, 1, "%s", t.name);
		cr_assert_geq(t.cqes[1].res, 0, "%s: %d", t.name,
			      t.cqes[1].res);
		close(t.cqes[1].res);
		close(w);
	}
}

/* Regular files: write, read back into two buffers, fsync, statx. */
Test(epoll_files, regular_file_ops_complete_with_their_results, .timeout = 30)
{
	struct t t;

	EACH_BACKEND(t)
	{
		char path[300], a[4] = {0}, b[8] = {0};
		struct iovec iov[2] = {{a, sizeof(a)}, {b, sizeof(b)}};
		struct statx stx;
		struct io_uring_sqe *sqe;

		snprintf(path, sizeof(path), "%s/file", t.dir);
		int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);

		cr_assert_geq(fd, 0);
		sqe = t_sqe(&t, 1);
		io_uring_prep_write(sqe, fd, "0123456789ab", 12, 100);
		sqe->flags |= IOSQE_IO_LINK;
		sqe = t_sqe(&t, 2);
		io_uring_prep_readv(sqe, fd, iov, 2, 100);
		sqe->flags |= IOSQE_IO_LINK;
		sqe = t_sqe(&t, 3);
		io_uring_prep_fsync(sqe, fd, IORING_FSYNC_DATASYNC);
		sqe->flags |= IOSQE_IO_LINK;
		io_uring_prep_statx(t_sqe(&t, 4), AT_FDCWD, path, 0, STATX_SIZE,
				    &stx);
		t_reap(&t, 4, 10000);
		cr_assert_eq(t_cqe(&t, 1)->res, 12, "%s", t.name);
		cr_assert_eq(t_cqe(&t, 2)->res, 12, "%s", t.name);
		cr_assert_eq(memcmp(a, "0123", 4), 0, "%s", t.name);
		cr_assert_eq(memcmp(b, "456789ab", 8), 0, "%s", t.name);
		cr_assert_eq(t_cqe(&t, 3)->res, 0, "%s", t.name);
		cr_assert_eq(t_cqe(&t, 4)->res, 0, "%s", t.name);
		cr_assert_eq(stx.stx_size, 112, "%s", t.name);
		/* A missing file: the real error. */
		io_uring_prep_openat(t_sqe(&t, 5), AT_FDCWD, "no/such/file",
				     O_RDONLY, 0);
		t_reap(&t, 5, 10000);
		cr_assert_eq(t_cqe(&t, 5)->res, -ENOENT, "%s", t.name);
		/* A short read ends its chain, as a failure does. */
		sqe = t_sqe(&t, 6);
		io_uring_prep_read(sqe, fd, b, sizeof(b), 108);
		sqe->flags |= IOSQE_IO_LINK;
		io_uring_prep_nop(t_sqe(&t, 7));
		t_reap(&t, 7, 10000);
		cr_assert_eq(t_cqe(&t, 6)->res, 4, "%s", t.name);
		cr_assert_eq(t_cqe(&t, 7)->res, -ECANCELED, "%s", t.name);
		close(fd);
	}
}

/* OPENAT into a direct descriptor, READ through it, CLOSE it: a chain. */
Test(epoll_files, open_read_close_chain_on_a_direct_descriptor, .timeout = 30)
{
	struct t t;

	EACH_BACKEND(t)
	{
		char path[300], buf[16] = {0};
		struct io_uring_sqe *sqe;

		snprintf(path, sizeof(path), "%s/file", t.dir);
		int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);

		cr_assert_eq(write(fd, "direct", 6), 6);
		close(fd);
		cr_assert_eq(keel__io_files(t.io), 0, "%s", t.name);
		/* A direct descriptor cannot be close-on-exec. */
		io_uring_prep_openat_direct(t_sqe(&t, 9), AT_FDCWD, path,
					    O_RDONLY | O_CLOEXEC, 0, 7);
		t_reap(&t, 1, 10000);
		cr_assert_eq(t_cqe(&t, 9)->res, -EINVAL, "%s", t.name);
		sqe = t_sqe(&t, 1);
		io_uring_prep_openat_direct(sqe, AT_FDCWD, path, O_RDONLY, 0,
					    7);
		sqe->flags |= IOSQE_IO_LINK;
		sqe = t_sqe(&t, 2);
		io_uring_prep_read(sqe, 7, buf, 6, 0);
		sqe->flags |= IOSQE_IO_LINK | IOSQE_FIXED_FILE;
		io_uring_prep_close_direct(t_sqe(&t, 3), 7);
		t_reap(&t, 4, 10000);
		cr_assert_eq(t_cqe(&t, 1)->res, 0, "%s: %d", t.name,
			     t_cqe(&t, 1)->res);
		cr_assert_eq(t_cqe(&t, 2)->res, 6, "%s", t.name);
		cr_assert_str_eq(buf, "direct", "%s", t.name);
		cr_assert_eq(t_cqe(&t, 3)->res, 0, "%s: %d", t.name,
			     t_cqe(&t, 3)->res);
		/* The slot is empty again: a read through it fails. */
		sqe = t_sqe(&t, 4);
		io_uring_prep_read(sqe, 7, buf, sizeof(buf), 0);
		sqe->flags |= IOSQE_FIXED_FILE;
		t_reap(&t, 5, 10000);
		cr_assert_eq(t_cqe(&t, 4)->res, -EBADF, "%s: %d", t.name,
			     t_cqe(&t, 4)->res);
	}
}

/* Threads of this process inside an open(2) (a FIFO's, waiting). */
static int threads_in_openat(void)
{
	DIR *d = opendir("/proc/self/task");
	struct dirent *e;
	int n = 0;

	cr_assert_not_null(d);
	while ((e = readdir(d))) {
		char path[300], line[64] = {0};

		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/proc/self/task/%s/syscall",
			 e->d_name);
		FILE *f = fopen(path, "r");

		if (!f)
			continue;
		if (fgets(line, sizeof(line), f) && atol(line) == SYS_openat)
			n++;
		fclose(f);
	}
	closedir(d);
	return n;
}

static void wait_workers_blocked(int n)
{
	uint64_t until = kt_now_ns() + KT_MS(10000);

	while (threads_in_openat() < n) {
		cr_assert_lt(kt_now_ns(), until, "the workers never blocked");
		usleep(1000);
	}
}

/*
 * Every worker waits in a FIFO's open, so later ops stay queued. Epoll
 * only: io_uring's io-wq starts as many workers as it needs, and its
 * cancel interrupts a running open.
 */
Test(epoll_files, cancel_and_link_timeout_of_queued_and_running_ops,
     .timeout = 30)
{
	struct t t;
	struct __kernel_timespec ts = {.tv_nsec = 50 * 1000 * 1000};
	struct statx stx;
	struct io_uring_sqe *sqe;

	t_open(&t, KEEL_BACKEND_EPOLL);
	/* ud 1..4: running; ud 1 has a linked timeout (ud 20). */
	for (uint64_t ud = 1; ud <= KEEL__EP_POOL_THREADS; ud++) {
		sqe = t_sqe(&t, ud);
		io_uring_prep_openat(sqe, AT_FDCWD, t.fifo,
				     O_RDONLY | O_CREAT | O_CLOEXEC, 0600);
		if (ud == 1) {
			sqe->flags |= IOSQE_IO_LINK;
			io_uring_prep_link_timeout(t_sqe(&t, 20), &ts, 0);
		}
	}
	/* ud 5: queued, with a linked timeout (ud 21); ud 6: queued. */
	sqe = t_sqe(&t, 5);
	io_uring_prep_statx(sqe, AT_FDCWD, "/", 0, STATX_SIZE, &stx);
	sqe->flags |= IOSQE_IO_LINK;
	io_uring_prep_link_timeout(t_sqe(&t, 21), &ts, 0);
	io_uring_prep_statx(t_sqe(&t, 6), AT_FDCWD, "/", 0, STATX_SIZE, &stx);
	/* Submit only: no timer fires before the workers are seen busy. */
	keel__io_enter(t.io, 0, 0);
	wait_workers_blocked(KEEL__EP_POOL_THREADS);
	io_uring_prep_cancel64(t_sqe(&t, 10), 6, 0);
	io_uring_prep_cancel64(t_sqe(&t, 11), 2, 0);
	t_reap(&t, 6, 10000);
	cr_assert_eq(t.n, 6);
	cr_assert_eq(t_cqe(&t, 6)->res, -ECANCELED);
	cr_assert_eq(t_cqe(&t, 10)->res, 0);
	cr_assert_eq(t_cqe(&t, 11)->res, -EALREADY);
	cr_assert_eq(t_cqe(&t, 5)->res, -ECANCELED);
	cr_assert_eq(t_cqe(&t, 21)->res, -ETIME);
	cr_assert_eq(t_cqe(&t, 20)->res, -EALREADY);
	/* The running ones complete with their own results. */
	int w = open_writer(&t);

	t_reap(&t, 6 + KEEL__EP_POOL_THREADS, 10000);
	for (uint64_t ud = 1; ud <= KEEL__EP_POOL_THREADS; ud++) {
		cr_assert_geq(t_cqe(&t, ud)->res, 0, "%d", t_cqe(&t, ud)->res);
		close(t_cqe(&t, ud)->res);
	}
	close(w);
	t_close(&t);
}

struct later {
	struct t *t;
	pid_t loop_tid;
	int fd;
};

/* The system call thread `tid` of this process is in, or -1. */
static long syscall_of(pid_t tid)
{
	char path[64], line[64] = {0};
	FILE *f;
	long nr = -1;

	snprintf(path, sizeof(path), "/proc/self/task/%d/syscall", (int)tid);
	f = fopen(path, "r");
	if (f && fgets(line, sizeof(line), f))
		nr = atol(line);
	if (f)
		fclose(f);
	return nr;
}

/* Once the loop's thread waits in the backend's teardown for the worker
 * (a futex: keel_loop_destroy() has given up cancelling), let the worker's
 * open return. */
static void *open_writer_later(void *arg)
{
	struct later *l = arg;
	uint64_t until = kt_now_ns() + KT_MS(20000);

	while (syscall_of(l->loop_tid) != SYS_futex && kt_now_ns() < until)
		usleep(1000);
	while ((l->fd = open(l->t->fifo, O_WRONLY | O_NONBLOCK | O_CLOEXEC)) <
		   0 &&
	       kt_now_ns() < until)
		usleep(1000);
	return NULL;
}

static int open_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	int n = 0;

	cr_assert_not_null(d);
	while (readdir(d))
		n++;
	closedir(d);
	return n;
}

/* The worker's open returns after the loop's ops are gone: the ring
 * stays until it has handed it back, and the descriptor is closed. */
Test(epoll_files, destroying_a_loop_waits_for_its_running_op, .timeout = 30)
{
	struct t t;
	struct later l = {.t = &t, .loop_tid = (pid_t)syscall(SYS_gettid)};
	pthread_t th;
	int before = open_fds();

	t_open(&t, KEEL_BACKEND_EPOLL);
	io_uring_prep_openat(t_sqe(&t, 1), AT_FDCWD, t.fifo,
			     O_RDONLY | O_CREAT | O_CLOEXEC, 0600);
	keel__io_enter(t.io, 0, 0);
	/* Running, not queued: keel_loop_destroy() would cancel it. */
	wait_workers_blocked(1);
	cr_assert_eq(pthread_create(&th, NULL, open_writer_later, &l), 0);
	keel_loop_destroy(t.loop);
	pthread_join(th, NULL);
	close(l.fd);
	kt_tmpdir_remove(t.dir);
	cr_assert_eq(open_fds(), before);
}
