/* SPDX-License-Identifier: MIT */
/*
 * keel-fixedread: does a registered buffer pay for file reads? 4 KiB reads
 * at random 4 KiB-aligned offsets of one file, `depth` in flight, four
 * ways: keel_read, keel_read_fixed, and raw liburing's READ and READ_FIXED
 * (the reference for what the kernel itself saves), on the file opened
 * buffered (page-cached: it is read whole first) and with O_DIRECT (when
 * the file system takes it; where it does not, the O_DIRECT rows are left
 * out with a line that says why. tmpfs took it here, Linux 6.18: it has
 * since 6.6, copying as a buffered read does).
 *
 * The four run interleaved, in a rotating order, `reps` times each, so a
 * machine whose load changes (other builds) shifts them all alike; every
 * row is the median over the reps of wall ns per read and of process CPU
 * ns per read (user + sys, getrusage), and each fixed row gives its
 * median paired ratio to the plain one of the same rep.
 *
 *   RESULT name=fixedread_<buffered|direct>_<keel|raw>_<read|fixed>
 *          ns_per_op=<median> cpu_ns_per_op=<median> ops=<reads per rep>
 *   INFO name=fixedread_<mode>_<keel|raw> fixed_vs_read_ns=<x>
 *          fixed_vs_read_cpu=<x> cpu_quartiles=<q1>,<q3>
 *
 * usage: keel-fixedread [--dir DIR] [--mib N] [--reads N] [--reps N]
 *                       [--depth N] [--only buffered|direct]
 *   defaults: $TMPDIR or /tmp, a 64 MiB file, 20000 reads per rep, 9
 *   reps, depth 1, both modes. The file is removed at the end.
 */
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <keel.h>

#define BLOCK	  4096u
#define MAX_DEPTH 64u
#define MAX_REPS  256u

static unsigned depth = 1, reps = 9;
static const char *only = "";
static uint64_t reads = 20000, blocks;

static void die(const char *what, int err)
{
	fprintf(stderr, "keel-fixedread: %s: %s\n", what, strerror(err));
	exit(1);
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t cpu_ns(void)
{
	struct rusage ru;

	getrusage(RUSAGE_SELF, &ru);
	return ((uint64_t)ru.ru_utime.tv_sec + (uint64_t)ru.ru_stime.tv_sec) *
		   1000000000ull +
	       ((uint64_t)ru.ru_utime.tv_usec + (uint64_t)ru.ru_stime.tv_usec) *
		   1000ull;
}

/* A random block's offset (xorshift). */
static uint64_t next_off(uint64_t *state)
{
	uint64_t x = *state;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	*state = x;
	return (x % blocks) * BLOCK;
}

/* `depth` buffers of a block each, one registered region. */
static char *region;

/* ---- keel ---- */

struct reader {
	struct keel_task task;
	int fd;
	bool fixed;
	unsigned slot;
	uint64_t left, rng;
};

static int reader_step(struct keel_task *t)
{
	struct reader *r = keel_container_of(t, struct reader, task);

	KEEL_BEGIN(t);
	while (r->left--) {
		if (r->fixed)
			KEEL_AWAIT(t, keel_read_fixed(
					  t, r->fd, region + r->slot * BLOCK,
					  BLOCK, next_off(&r->rng), 0));
		else
			KEEL_AWAIT(t,
				   keel_read(t, r->fd, region + r->slot * BLOCK,
					     BLOCK, next_off(&r->rng)));
		if (keel_res(t) != (int)BLOCK)
			die("keel read", keel_res(t) < 0 ? -keel_res(t) : EIO);
	}
	KEEL_END(t);
}

static KEEL_TASK_TYPE(reader_task, struct reader, task, reader_step);

static void run_keel(struct keel_loop *loop, int fd, bool fixed, uint64_t n)
{
	for (unsigned i = 0; i < depth; i++) {
		struct reader *r = keel_spawn(loop, &reader_task, 0);

		if (!r)
			die("keel_spawn", ENOMEM);
		r->fd = fd;
		r->fixed = fixed;
		r->slot = i;
		r->left = n / depth;
		r->rng = 0x9e3779b97f4a7c15ull * (i + 1);
	}
	int err = keel_loop_run(loop);

	if (err < 0)
		die("keel_loop_run", -err);
}

/* ---- raw liburing: the same reads, `depth` kept in flight ---- */

static void raw_prep(struct io_uring *ring, int fd, bool fixed, unsigned slot,
		     uint64_t *rng)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
	char *buf = region + slot * BLOCK;

	if (fixed)
		io_uring_prep_read_fixed(sqe, fd, buf, BLOCK, next_off(rng), 0);
	else
		io_uring_prep_read(sqe, fd, buf, BLOCK, next_off(rng));
	io_uring_sqe_set_data64(sqe, slot);
}

static void run_raw(struct io_uring *ring, int fd, bool fixed, uint64_t n)
{
	uint64_t rng[MAX_DEPTH], left = n - n % depth, queued = 0;
	struct io_uring_cqe *cqe;

	for (unsigned i = 0; i < depth && queued < left; i++, queued++) {
		rng[i] = 0x9e3779b97f4a7c15ull * (i + 1);
		raw_prep(ring, fd, fixed, i, &rng[i]);
	}
	while (left) {
		int err = io_uring_submit_and_wait(ring, 1);

		if (err < 0)
			die("io_uring_submit_and_wait", -err);
		while (!io_uring_peek_cqe(ring, &cqe)) {
			unsigned slot = (unsigned)cqe->user_data;

			if (cqe->res != (int)BLOCK)
				die("raw read", cqe->res < 0 ? -cqe->res : EIO);
			io_uring_cqe_seen(ring, cqe);
			left--;
			if (queued < n - n % depth) {
				raw_prep(ring, fd, fixed, slot, &rng[slot]);
				queued++;
			}
		}
	}
}

/* ---- the A/B ---- */

enum way { KEEL_READ, KEEL_FIXED, RAW_READ, RAW_FIXED, WAYS };
static const char *const way_name[WAYS] = {"keel_read", "keel_fixed",
					   "raw_read", "raw_fixed"};

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

static double median(double *v, unsigned n)
{
	qsort(v, n, sizeof(*v), cmp_double);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static void ab(const char *mode, int fd, struct keel_loop *loop,
	       struct io_uring *ring)
{
	double ns[WAYS][MAX_REPS], cpu[WAYS][MAX_REPS];
	double rns[2][MAX_REPS], rcpu[2][MAX_REPS];
	uint64_t n = reads - reads % depth;

	/* A warm-up of each, unmeasured. */
	for (unsigned w = 0; w < WAYS; w++)
		if (w < RAW_READ)
			run_keel(loop, fd, w == KEEL_FIXED, n / 10 + depth);
		else
			run_raw(ring, fd, w == RAW_FIXED, n / 10 + depth);
	for (unsigned rep = 0; rep < reps; rep++) {
		for (unsigned k = 0; k < WAYS; k++) {
			unsigned w = (k + rep) % WAYS;
			uint64_t c0 = cpu_ns(), t0 = now_ns();

			if (w < RAW_READ)
				run_keel(loop, fd, w == KEEL_FIXED, n);
			else
				run_raw(ring, fd, w == RAW_FIXED, n);
			ns[w][rep] = (double)(now_ns() - t0) / (double)n;
			cpu[w][rep] = (double)(cpu_ns() - c0) / (double)n;
		}
		for (unsigned s = 0; s < 2; s++) {
			rns[s][rep] = ns[2 * s + 1][rep] / ns[2 * s][rep];
			rcpu[s][rep] = cpu[2 * s + 1][rep] / cpu[2 * s][rep];
		}
	}
	for (unsigned w = 0; w < WAYS; w++)
		printf("RESULT name=fixedread_%s_%s ns_per_op=%.1f "
		       "cpu_ns_per_op=%.1f ops=%llu depth=%u\n",
		       mode, way_name[w], median(ns[w], reps),
		       median(cpu[w], reps), (unsigned long long)n, depth);
	/* The paired ratios' median, and their quartiles (median() sorts). */
	for (unsigned s = 0; s < 2; s++) {
		double ns_med = median(rns[s], reps);
		double cpu_med = median(rcpu[s], reps);

		printf("INFO name=fixedread_%s_%s fixed_vs_read_ns=%.3f "
		       "fixed_vs_read_cpu=%.3f cpu_quartiles=%.3f,%.3f\n",
		       mode, s ? "raw" : "keel", ns_med, cpu_med,
		       rcpu[s][reps / 4], rcpu[s][3 * reps / 4]);
	}
	fflush(stdout);
}

/* A file of `blocks` blocks under `dir`, written and read back whole (so
 * it is in the page cache); *path gets its name. */
static int make_file(const char *dir, char *path, size_t len)
{
	snprintf(path, len, "%s/keel-fixedread.XXXXXX", dir);
	int fd = mkstemp(path);

	if (fd < 0)
		die(path, errno);
	for (uint64_t i = 0; i < blocks; i++) {
		memset(region, (int)(i & 0xff), BLOCK);
		if (pwrite(fd, region, BLOCK, (off_t)(i * BLOCK)) != BLOCK)
			die("pwrite", errno);
	}
	if (fsync(fd))
		die("fsync", errno);
	for (uint64_t i = 0; i < blocks; i++)
		if (pread(fd, region, BLOCK, (off_t)(i * BLOCK)) != BLOCK)
			die("pread", errno);
	return fd;
}

int main(int argc, char **argv)
{
	const char *dir = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
	unsigned mib = 64;
	char path[4096];

	for (int i = 1; i < argc; i++) {
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;

		if (!strcmp(argv[i], "--dir") && v)
			dir = v;
		else if (!strcmp(argv[i], "--mib") && v)
			mib = (unsigned)strtoul(v, NULL, 10);
		else if (!strcmp(argv[i], "--reads") && v)
			reads = strtoull(v, NULL, 10);
		else if (!strcmp(argv[i], "--reps") && v)
			reps = (unsigned)strtoul(v, NULL, 10);
		else if (!strcmp(argv[i], "--depth") && v)
			depth = (unsigned)strtoul(v, NULL, 10);
		else if (!strcmp(argv[i], "--only") && v)
			only = v;
		else {
			fprintf(stderr,
				"usage: keel-fixedread [--dir DIR] [--mib N] "
				"[--reads N] [--reps N] [--depth N] "
				"[--only buffered|direct]\n");
			return 2;
		}
		i++;
	}
	if (!mib || !depth || depth > MAX_DEPTH || !reps || reps > MAX_REPS ||
	    reads < depth)
		die("arguments", EINVAL);
	blocks = (uint64_t)mib * (1024 * 1024 / BLOCK);
	if (posix_memalign((void **)&region, BLOCK, (size_t)depth * BLOCK))
		die("posix_memalign", ENOMEM);

	int fd = make_file(dir, path, sizeof(path));
	int dfd = open(path, O_RDONLY | O_DIRECT | O_CLOEXEC);
	int direct_err = dfd < 0 ? errno : 0;

	unlink(path);
	struct iovec iov = {region, (size_t)depth * BLOCK};
	struct keel_loop *loop;
	struct io_uring ring;
	int err = keel_loop_create(&loop, NULL);

	if (err)
		die("keel_loop_create", -err);
	err = keel_buffers_register(loop, &iov, 1);
	if (err)
		die("keel_buffers_register", -err);
	err = io_uring_queue_init(
	    64, &ring, IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN);
	if (err)
		err = io_uring_queue_init(64, &ring, 0);
	if (err)
		die("io_uring_queue_init", -err);
	err = io_uring_register_buffers(&ring, &iov, 1);
	if (err)
		die("io_uring_register_buffers", -err);

	if (strcmp(only, "direct"))
		ab("buffered", fd, loop, &ring);
	if (!strcmp(only, "buffered"))
		; /* the O_DIRECT rows not asked for */
	else if (dfd >= 0)
		ab("direct", dfd, loop, &ring);
	else
		printf("INFO name=fixedread_direct skipped: O_DIRECT open "
		       "under %s: %s\n",
		       dir, strerror(direct_err));
	io_uring_queue_exit(&ring);
	keel_loop_destroy(loop);
	close(fd);
	if (dfd >= 0)
		close(dfd);
	free(region);
	return 0;
}
