/* SPDX-License-Identifier: MIT */
/*
 * test_io_file.c: the file ops through the ring, against real files in a
 * fresh temporary directory: openat, read/write at offsets and at the
 * current position, readv/writev, fsync, statx, close; errors come back
 * as a negative errno in keel_res(); keel_nop() gives 0.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <keel.h>
#include <limits.h>
#include <linux/io_uring.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "helpers/keel_test.h"

static char g_dir[PATH_MAX];
static int g_dfd = -1;
static struct keel_loop *g_loop;

static void setup(void)
{
	kt_tmpdir_make(g_dir, sizeof(g_dir));
	g_dfd = open(g_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	cr_assert_geq(g_dfd, 0);
	g_loop = kt_loop_new(NULL);
}

static void teardown(void)
{
	if (g_loop)
		keel_loop_destroy(g_loop);
	if (g_dfd >= 0)
		close(g_dfd);
	kt_tmpdir_remove(g_dir);
}

TestSuite(io_file, .init = setup, .fini = teardown);

/*
 * One task per test runs a scripted sequence; each op's result goes to
 * g_res[] in order, so the test checks them after the loop has finished.
 */
#define MAX_RES 32

static int g_res[MAX_RES];
static int g_nres;

static void note(int res)
{
	if (g_nres < MAX_RES)
		g_res[g_nres] = res;
	g_nres++;
}

static void expect_results(const int *want, int n)
{
	cr_assert_eq(g_nres, n, "%d results, expected %d", g_nres, n);
	for (int i = 0; i < n; i++)
		cr_assert_eq(g_res[i], want[i],
			     "op %d gave %d (%s), expected %d", i, g_res[i],
			     g_res[i] < 0 ? strerror(-g_res[i]) : "", want[i]);
}

enum script {
	OPEN_CLOSE,
	RW_OFFSETS,
	RW_CURRENT,
	RW_VECTORS,
	FSYNC,
	STATX,
	BIG,
	ERR_MISSING,
	ERR_BADFD,
	ERR_READONLY,
	NOP,
};

#define BIG_LEN (256 * 1024)

struct filer {
	struct keel_task task;
	enum script script;
	int fd;
	int bad_fd;
	char a[64];
	char b[64];
	char c[64];
	struct iovec iov[3];
	struct statx stx;
	char *big;
	char *big_in;
};

/* Bytes read back by the scripts, checked by the tests. */
static char g_got[3][64];
static int g_fd_after_close = -2;
static struct statx g_stx;
static size_t g_big_mismatch;

static void save(int slot, const char *buf, int len)
{
	if (len > 0 && len <= 64)
		memcpy(g_got[slot], buf, (size_t)len);
}

static int filer_step(struct keel_task *t);
static KEEL_TASK_TYPE(filer_task, struct filer, task, filer_step);

static int filer_step(struct keel_task *t)
{
	struct filer *f = keel_container_of(t, struct filer, task);

	KEEL_BEGIN(t);
	if (f->script == NOP) {
		KEEL_AWAIT(t, keel_nop(t));
		note(keel_res(t));
		KEEL_END(t);
	}
	if (f->script == ERR_MISSING) {
		KEEL_AWAIT(t, keel_openat(t, g_dfd, "missing", O_RDONLY, 0));
		note(keel_res(t));
		KEEL_AWAIT(
		    t, keel_statx(t, g_dfd, "missing", 0, STATX_SIZE, &f->stx));
		note(keel_res(t));
		KEEL_END(t);
	}
	if (f->script == ERR_BADFD) {
		KEEL_AWAIT(t, keel_read(t, f->bad_fd, f->a, sizeof(f->a), 0));
		note(keel_res(t));
		KEEL_AWAIT(t, keel_write(t, f->bad_fd, f->a, 1, 0));
		note(keel_res(t));
		KEEL_AWAIT(t, keel_fsync(t, f->bad_fd, 0));
		note(keel_res(t));
		KEEL_END(t);
	}

	KEEL_AWAIT(t, keel_openat(t, g_dfd, "data",
				  O_CREAT | O_RDWR | O_CLOEXEC, 0600));
	f->fd = keel_res(t);
	note(f->fd >= 0 ? 0 : f->fd);
	if (f->fd < 0)
		KEEL_END(t);

	switch (f->script) {
	case OPEN_CLOSE:
		break;
	case RW_OFFSETS:
		memcpy(f->a, "hello", 5);
		memcpy(f->b, "world", 5);
		KEEL_AWAIT(t, keel_write(t, f->fd, f->b, 5, 100));
		note(keel_res(t));
		KEEL_AWAIT(t, keel_write(t, f->fd, f->a, 5, 0));
		note(keel_res(t));
		memset(f->c, 0x55, sizeof(f->c));
		KEEL_AWAIT(t, keel_read(t, f->fd, f->c, 5, 100));
		note(keel_res(t));
		save(0, f->c, 5);
		KEEL_AWAIT(t, keel_read(t, f->fd, f->c, 5, 0));
		note(keel_res(t));
		save(1, f->c, 5);
		/* The hole between reads back as zeros. */
		KEEL_AWAIT(t, keel_read(t, f->fd, f->c, 10, 50));
		note(keel_res(t));
		save(2, f->c, 10);
		/* At and past the end of the file: 0 bytes. */
		KEEL_AWAIT(t, keel_read(t, f->fd, f->c, 10, 105));
		note(keel_res(t));
		KEEL_AWAIT(t, keel_read(t, f->fd, f->c, 10, 4096));
		note(keel_res(t));
		break;
	case RW_CURRENT:
		memcpy(f->a, "abcdef", 6);
		KEEL_AWAIT(t, keel_write(t, f->fd, f->a, 3, KEEL_OFF_CURRENT));
		note(keel_res(t));
		KEEL_AWAIT(t,
			   keel_write(t, f->fd, f->a + 3, 3, KEEL_OFF_CURRENT));
		note(keel_res(t));
		/* The position is 6 now; rewind it with a plain lseek. */
		note((int)lseek(f->fd, 0, SEEK_CUR));
		note((int)lseek(f->fd, 2, SEEK_SET));
		KEEL_AWAIT(t, keel_read(t, f->fd, f->c, 2, KEEL_OFF_CURRENT));
		note(keel_res(t));
		save(0, f->c, 2);
		KEEL_AWAIT(t, keel_read(t, f->fd, f->c, 10, KEEL_OFF_CURRENT));
		note(keel_res(t));
		save(1, f->c, 2);
		break;
	case RW_VECTORS:
		memcpy(f->a, "one-", 4);
		memcpy(f->b, "two-", 4);
		memcpy(f->c, "three", 5);
		f->iov[0] = (struct iovec){f->a, 4};
		f->iov[1] = (struct iovec){f->b, 4};
		f->iov[2] = (struct iovec){f->c, 5};
		KEEL_AWAIT(t, keel_writev(t, f->fd, f->iov, 3, 10));
		note(keel_res(t));
		/* Read it back split differently: 6 + 7 bytes. */
		memset(f->a, 0, sizeof(f->a));
		memset(f->b, 0, sizeof(f->b));
		f->iov[0] = (struct iovec){f->a, 6};
		f->iov[1] = (struct iovec){f->b, 7};
		KEEL_AWAIT(t, keel_readv(t, f->fd, f->iov, 2, 10));
		note(keel_res(t));
		save(0, f->a, 6);
		save(1, f->b, 7);
		break;
	case FSYNC:
		memcpy(f->a, "durable", 7);
		KEEL_AWAIT(t, keel_write(t, f->fd, f->a, 7, 0));
		note(keel_res(t));
		KEEL_AWAIT(t, keel_fsync(t, f->fd, 0));
		note(keel_res(t));
		KEEL_AWAIT(t, keel_fsync(t, f->fd, IORING_FSYNC_DATASYNC));
		note(keel_res(t));
		break;
	case STATX:
		memset(f->a, 'x', sizeof(f->a));
		KEEL_AWAIT(t, keel_write(t, f->fd, f->a, 33, 4064));
		note(keel_res(t));
		/* By path relative to the directory... */
		KEEL_AWAIT(
		    t, keel_statx(t, g_dfd, "data", 0, STATX_SIZE, &f->stx));
		note(keel_res(t));
		g_stx = f->stx;
		/* ...and by fd. */
		memset(&f->stx, 0, sizeof(f->stx));
		KEEL_AWAIT(t, keel_statx(t, f->fd, "", AT_EMPTY_PATH,
					 STATX_SIZE | STATX_TYPE, &f->stx));
		note(keel_res(t));
		note((int)f->stx.stx_size);
		note(S_ISREG(f->stx.stx_mode));
		break;
	case BIG:
		f->big = malloc(BIG_LEN);
		f->big_in = malloc(BIG_LEN);
		if (!f->big || !f->big_in) {
			free(f->big);
			free(f->big_in);
			KEEL_EXIT(t, -ENOMEM);
		}
		kt_pattern_fill(f->big, BIG_LEN, 0, 3);
		KEEL_AWAIT(t, keel_write(t, f->fd, f->big, BIG_LEN, 4096));
		note(keel_res(t));
		memset(f->big_in, 0, BIG_LEN);
		KEEL_AWAIT(t, keel_read(t, f->fd, f->big_in, BIG_LEN, 4096));
		note(keel_res(t));
		g_big_mismatch = kt_pattern_mismatch(f->big_in, BIG_LEN, 0, 3);
		free(f->big);
		free(f->big_in);
		break;
	case ERR_READONLY:
		/* Reopen the file read-only; writing to it fails. */
		KEEL_AWAIT(t, keel_close(t, f->fd));
		note(keel_res(t));
		KEEL_AWAIT(
		    t, keel_openat(t, g_dfd, "data", O_RDONLY | O_CLOEXEC, 0));
		f->fd = keel_res(t);
		note(f->fd >= 0 ? 0 : f->fd);
		if (f->fd < 0)
			KEEL_END(t);
		memcpy(f->a, "nope", 4);
		KEEL_AWAIT(t, keel_write(t, f->fd, f->a, 4, 0));
		note(keel_res(t));
		break;
	default:
		break;
	}
	KEEL_AWAIT(t, keel_close(t, f->fd));
	note(keel_res(t));
	g_fd_after_close = fcntl(f->fd, F_GETFD);
	KEEL_END(t);
}

static void run_script(enum script script, int bad_fd)
{
	struct filer *f = kt_spawn(g_loop, &filer_task, KEEL_PRIO_NORMAL);

	f->script = script;
	f->bad_fd = bad_fd;
	kt_loop_run(g_loop);
}

Test(io_file, openat_creates_file_and_close_releases_fd, .timeout = 10)
{
	struct stat st;

	run_script(OPEN_CLOSE, -1);
	expect_results((const int[]){0, 0}, 2);
	cr_assert_eq(g_fd_after_close, -1, "fd still open after keel_close");
	cr_assert_eq(fstatat(g_dfd, "data", &st, 0), 0);
	cr_assert(S_ISREG(st.st_mode));
	cr_assert_eq(st.st_mode & 0777, 0600);
	cr_assert_eq(st.st_size, 0);
}

Test(io_file, write_and_read_at_offsets, .timeout = 10)
{
	char file[128];
	int fd;

	run_script(RW_OFFSETS, -1);
	expect_results((const int[]){0, 5, 5, 5, 5, 10, 0, 0, 0}, 9);
	cr_assert_arr_eq(g_got[0], "world", 5);
	cr_assert_arr_eq(g_got[1], "hello", 5);
	cr_assert_arr_eq(g_got[2], (char[10]){0}, 10);
	/* Check the file itself with plain syscalls. */
	fd = openat(g_dfd, "data", O_RDONLY | O_CLOEXEC);
	cr_assert_geq(fd, 0);
	cr_assert_eq(pread(fd, file, sizeof(file), 0), 105);
	cr_assert_arr_eq(file, "hello", 5);
	cr_assert_arr_eq(file + 100, "world", 5);
	close(fd);
}

Test(io_file, write_and_read_at_current_position, .timeout = 10)
{
	run_script(RW_CURRENT, -1);
	/* open, 3, 3, position 6, seek 2, read 2 "cd", read the rest "ef" */
	expect_results((const int[]){0, 3, 3, 6, 2, 2, 2, 0}, 8);
	cr_assert_arr_eq(g_got[0], "cd", 2);
	cr_assert_arr_eq(g_got[1], "ef", 2);
}

Test(io_file, writev_and_readv_move_scattered_buffers, .timeout = 10)
{
	run_script(RW_VECTORS, -1);
	expect_results((const int[]){0, 13, 13, 0}, 4);
	cr_assert_arr_eq(g_got[0], "one-tw", 6);
	cr_assert_arr_eq(g_got[1], "o-three", 7);
}

Test(io_file, fsync_and_fdatasync_succeed, .timeout = 10)
{
	run_script(FSYNC, -1);
	expect_results((const int[]){0, 7, 0, 0, 0}, 5);
}

Test(io_file, statx_reports_size_by_path_and_by_fd, .timeout = 10)
{
	run_script(STATX, -1);
	/* open, write 33 at 4064, statx, statx, size 4097, regular, close */
	expect_results((const int[]){0, 33, 0, 0, 4097, 1, 0}, 7);
	cr_assert(g_stx.stx_mask & STATX_SIZE);
	cr_assert_eq(g_stx.stx_size, 4097);
}

Test(io_file, large_write_and_read_keep_every_byte, .timeout = 10)
{
	run_script(BIG, -1);
	expect_results((const int[]){0, BIG_LEN, BIG_LEN, 0}, 4);
	cr_assert_eq(g_big_mismatch, SIZE_MAX, "first bad byte at %zu",
		     g_big_mismatch);
}

Test(io_file, openat_and_statx_of_missing_file_give_enoent, .timeout = 10)
{
	run_script(ERR_MISSING, -1);
	expect_results((const int[]){-ENOENT, -ENOENT}, 2);
}

Test(io_file, ops_on_closed_fd_give_ebadf, .timeout = 10)
{
	int fd = openat(g_dfd, "scratch", O_CREAT | O_RDWR | O_CLOEXEC, 0600);
	int high;

	/* A high fd number: nothing reuses it once closed (lowest first). */
	cr_assert_geq(fd, 0);
	high = fcntl(fd, F_DUPFD_CLOEXEC, 900);
	cr_assert_geq(high, 900);
	close(high);
	close(fd);
	run_script(ERR_BADFD, high);
	expect_results((const int[]){-EBADF, -EBADF, -EBADF}, 3);
}

Test(io_file, write_to_read_only_fd_gives_ebadf, .timeout = 10)
{
	run_script(ERR_READONLY, -1);
	/* open, close, reopen, write fails, close */
	expect_results((const int[]){0, 0, 0, -EBADF, 0}, 5);
}

Test(io_file, nop_result_is_zero, .timeout = 10)
{
	run_script(NOP, -1);
	expect_results((const int[]){0}, 1);
	cr_assert_eq(kt_stats(g_loop).ops_inflight, 0);
}
