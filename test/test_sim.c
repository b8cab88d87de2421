/* SPDX-License-Identifier: MIT */
/*
 * test_sim.c: the simulated kernel's ring engine (keel/sim.h) through
 * keel's public API on simulated loops: virtual time, links and linked
 * timeouts, ASYNC_CANCEL and its race, CQ overflow, MSG_RING between the
 * machine's loops, provided buffers and multishot, injected results, and
 * determinism (the same seed gives the same trace).
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <keel.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "helpers/keel_test.h"
#include "sim.h"

static struct keel_sim *sim_new(uint64_t seed)
{
	struct keel_sim_opts o = {.seed = seed};
	struct keel_sim *sim;

	cr_assert_eq(keel_sim_create(&sim, &o), 0);
	return sim;
}

static struct keel_loop *sim_loop(struct keel_sim *sim,
				  const struct keel_loop_opts *opts)
{
	struct keel_loop *loop;

	cr_assert_eq(keel_sim_loop_create(sim, &loop, opts), 0);
	return loop;
}

static void sim_done(struct keel_sim *sim, struct keel_loop *loop)
{
	char why[128];

	keel_loop_destroy(loop);
	cr_assert_eq(keel_sim_check(sim, why, sizeof(why)), 0, "%s", why);
	keel_sim_destroy(sim);
}

/*
 * What a task found out. Task frames are freed when their task exits, so
 * tasks report through one of these, owned by the test.
 */
struct out {
	int res;
	int done;
	int bad;
	int end;
	unsigned got;
	uint64_t at;
};

/* ---- virtual time ---- */

struct sleeper {
	struct keel_task task;
	uint64_t ns;
	int n;
	int i;
	struct out *o;
};

static int sleeper_step(struct keel_task *t);
static KEEL_TASK_TYPE(sleeper_task, struct sleeper, task, sleeper_step);

static int sleeper_step(struct keel_task *t)
{
	struct sleeper *s = keel_container_of(t, struct sleeper, task);

	KEEL_BEGIN(t);
	for (s->i = 0; s->i < s->n; s->i++) {
		KEEL_AWAIT(t, keel_sleep(t, s->ns));
		if (s->o)
			s->o->res = keel_res(t);
	}
	if (s->o)
		s->o->at = keel_loop_now(keel_task_loop(t));
	KEEL_END(t);
}

Test(sim, ten_virtual_minutes_of_sleep_take_no_real_time, .timeout = 10)
{
	struct keel_sim *sim = sim_new(1);
	struct keel_loop *loop = sim_loop(sim, NULL);
	uint64_t start = keel_sim_now(sim);
	uint64_t real = kt_now_ns();
	struct sleeper *s = kt_spawn(loop, &sleeper_task, KEEL_PRIO_NORMAL);
	struct out o = {.res = 1};

	s->ns = 60ull * 1000000000u;
	s->n = 10;
	s->o = &o;
	cr_assert_eq(keel_sim_run(sim, 0), 0);
	cr_assert_eq(o.res, 0);
	cr_assert_eq(o.at, keel_sim_now(sim));
	cr_assert_geq(keel_sim_now(sim) - start, 600ull * 1000000000u);
	cr_assert_lt(keel_sim_now(sim) - start, 601ull * 1000000000u);
	/* A generous bound: only a hang or real sleeping would exceed it. */
	cr_assert_lt(kt_now_ns() - real, 5ull * 1000000000u);
	sim_done(sim, loop);
}

/* ---- a test object: a one-way pipe behind a simulated descriptor ---- */

struct tpipe {
	struct sim_file f;
	size_t len;
	bool eof; /* the writer is done: reads return 0 when empty */
	char buf[65536];
};

static int tpipe_recv(struct sim_file *f, void *buf, size_t len, int flags)
{
	struct tpipe *p = (struct tpipe *)f;

	if (!p->len)
		return p->eof ? 0 : -EAGAIN;
	if (len > p->len)
		len = p->len;
	memcpy(buf, p->buf, len);
	memmove(p->buf, p->buf + len, p->len - len);
	p->len -= len;
	return (int)len;
}

static int tpipe_read(struct sim_file *f, void *buf, size_t len, int64_t off)
{
	return tpipe_recv(f, buf, len, 0);
}

static int tpipe_send(struct sim_file *f, const void *buf, size_t len,
		      int flags)
{
	struct tpipe *p = (struct tpipe *)f;

	if (len > sizeof(p->buf) - p->len)
		len = sizeof(p->buf) - p->len;
	if (!len)
		return -EAGAIN;
	memcpy(p->buf + p->len, buf, len);
	p->len += len;
	sim__file_wake(f);
	return (int)len;
}

static int tpipe_write(struct sim_file *f, const void *buf, size_t len,
		       int64_t off)
{
	return tpipe_send(f, buf, len, 0);
}

static void tpipe_release(struct sim_file *f)
{
	free(f);
}

static const struct sim_file_ops tpipe_ops = {
    .recv = tpipe_recv,
    .send = tpipe_send,
    .read = tpipe_read,
    .write = tpipe_write,
    .release = tpipe_release,
};

static int tpipe_new(struct keel_sim *sim, struct tpipe **out)
{
	struct keel__sim *s = (struct keel__sim *)sim;
	struct tpipe *p = calloc(1, sizeof(*p));

	cr_assert_not_null(p);
	sim__file_init(&p->f, s, &tpipe_ops);
	int fd = sim__fd_install(s, &p->f);

	cr_assert_geq(fd, SIM_FD_BASE);
	if (out)
		*out = p;
	return fd;
}

/* Put bytes in (as a writer outside the ring would). */
static void tpipe_put(struct tpipe *p, const char *data, size_t len)
{
	cr_assert_eq(tpipe_send(&p->f, data, len, 0), (int)len);
}

static void sim_close(struct keel_sim *sim, int fd)
{
	cr_assert_eq(sim__fd_close((struct keel__sim *)sim, fd), 0);
}

/* ---- raw SQEs on a sim loop's ring (no task reaps them) ---- */

struct raw_cqe {
	uint64_t ud;
	int res;
	unsigned flags;
};

static struct io_uring *ring_of(struct keel_loop *loop)
{
	return &keel__io_of(loop)->ring;
}

static struct io_uring_sqe *raw_sqe(struct keel_loop *loop, uint64_t ud)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(ring_of(loop));

	cr_assert_not_null(sqe);
	io_uring_prep_nop(sqe);
	sqe->user_data = ud;
	return sqe;
}

/* Enter until `want` CQEs came (virtual time runs), then take them all
 * (overflowed ones too) into `out`; returns how many. */
static int raw_reap(struct keel_loop *loop, unsigned want, struct raw_cqe *out,
		    int max)
{
	struct keel__io *io = keel__io_of(loop);
	int n = 0;

	for (;;) {
		struct io_uring_cqe *cqe;
		unsigned head, seen = 0;
		int err = keel__io_enter(io, want > (unsigned)n ? 1 : 0,
					 want > (unsigned)n ? -1 : 0);

		cr_assert_geq(err, 0, "enter: %d", err);
		io_uring_for_each_cqe (&io->ring, head, cqe) {
			cr_assert_lt(n, max);
			out[n].ud = cqe->user_data;
			out[n].res = cqe->res;
			out[n].flags = cqe->flags;
			n++;
			seen++;
		}
		io_uring_cq_advance(&io->ring, seen);
		if ((unsigned)n >= want && !io_uring_cq_has_overflow(&io->ring))
			return n;
	}
}

static const struct raw_cqe *find_ud(const struct raw_cqe *c, int n,
				     uint64_t ud)
{
	for (int i = 0; i < n; i++)
		if (c[i].ud == ud)
			return &c[i];
	cr_assert_fail("no CQE for user_data %llu", (unsigned long long)ud);
	return NULL;
}

static void nop_inject(struct io_uring_sqe *sqe, int res)
{
	sqe->rw_flags = IORING_NOP_INJECT_RESULT;
	sqe->len = (unsigned)res;
}

Test(sim, links_hardlinks_injected_results_and_cqe_skip, .timeout = 10)
{
	struct keel_sim *sim = sim_new(2);
	struct keel_loop *loop = sim_loop(sim, NULL);
	struct raw_cqe c[16];
	struct keel_sim_stats st;

	/* A failed soft link cancels the rest of its chain. */
	struct io_uring_sqe *sqe = raw_sqe(loop, 1);

	nop_inject(sqe, -EIO);
	sqe->flags |= IOSQE_IO_LINK;
	raw_sqe(loop, 2)->flags |= IOSQE_IO_LINK;
	raw_sqe(loop, 3);
	/* A hard link goes on after a failure. */
	sqe = raw_sqe(loop, 4);
	nop_inject(sqe, -ECONNRESET);
	sqe->flags |= IOSQE_IO_HARDLINK;
	raw_sqe(loop, 5);
	/* A successful op with CQE_SKIP_SUCCESS posts nothing. */
	raw_sqe(loop, 6)->flags |= IOSQE_CQE_SKIP_SUCCESS;
	nop_inject(raw_sqe(loop, 7), 42);
	cr_assert_eq(raw_reap(loop, 6, c, 16), 6);
	cr_assert_eq(find_ud(c, 6, 1)->res, -EIO);
	cr_assert_eq(find_ud(c, 6, 2)->res, -ECANCELED);
	cr_assert_eq(find_ud(c, 6, 3)->res, -ECANCELED);
	cr_assert_eq(find_ud(c, 6, 4)->res, -ECONNRESET);
	cr_assert_eq(find_ud(c, 6, 5)->res, 0);
	cr_assert_eq(find_ud(c, 6, 7)->res, 42);
	for (int i = 0; i < 6; i++)
		cr_assert_neq(c[i].ud, 6);
	keel_sim_stats(sim, &st);
	cr_assert_eq(st.faults, 3);
	cr_assert_eq(st.ops, 7);
	sim_done(sim, loop);
}

static struct __kernel_timespec ts_of(uint64_t ns)
{
	struct __kernel_timespec ts = {.tv_sec = (long long)(ns / 1000000000u),
				       .tv_nsec =
					   (long long)(ns % 1000000000u)};
	return ts;
}

Test(sim, timeouts_and_linked_timeouts_on_the_virtual_clock, .timeout = 10)
{
	struct keel_sim *sim = sim_new(3);
	struct keel_loop *loop = sim_loop(sim, NULL);
	struct tpipe *p;
	int fd = tpipe_new(sim, &p);
	struct raw_cqe c[8];
	char buf[16];
	uint64_t t0 = keel_sim_now(sim);
	struct __kernel_timespec five = ts_of(5000000000u);
	struct __kernel_timespec one = ts_of(1000000000u);
	struct __kernel_timespec abs;
	struct io_uring_sqe *sqe;

	/* A plain timeout: -ETIME, 5 s of virtual time later. */
	sqe = raw_sqe(loop, 1);
	io_uring_prep_timeout(sqe, &five, 0, 0);
	sqe->user_data = 1;
	raw_sqe(loop, 99);
	cr_assert_eq(raw_reap(loop, 2, c, 8), 2);
	cr_assert_eq(c[0].ud, 99);
	cr_assert_eq(c[1].ud, 1);
	cr_assert_eq(c[1].res, -ETIME);
	cr_assert_geq(keel_sim_now(sim), t0 + 5000000000u);

	/* An absolute linked timeout cancels a read that waits. */
	t0 = keel_sim_now(sim);
	abs = ts_of(t0 + 1000000000u);
	sqe = raw_sqe(loop, 10);
	io_uring_prep_read(sqe, fd, buf, sizeof(buf), 0);
	sqe->user_data = 10;
	sqe->flags |= IOSQE_IO_LINK;
	sqe = raw_sqe(loop, 11);
	io_uring_prep_link_timeout(sqe, &abs, IORING_TIMEOUT_ABS);
	sqe->user_data = 11;
	cr_assert_eq(raw_reap(loop, 2, c, 8), 2);
	cr_assert_eq(find_ud(c, 2, 10)->res, -ECANCELED);
	cr_assert_eq(find_ud(c, 2, 11)->res, -ETIME);
	cr_assert_geq(keel_sim_now(sim), t0 + 1000000000u);

	/* A relative one loses to a read that has data: -ECANCELED. */
	t0 = keel_sim_now(sim);
	tpipe_put(p, "hello", 5);
	sqe = raw_sqe(loop, 20);
	io_uring_prep_read(sqe, fd, buf, sizeof(buf), 0);
	sqe->user_data = 20;
	sqe->flags |= IOSQE_IO_LINK;
	sqe = raw_sqe(loop, 21);
	io_uring_prep_link_timeout(sqe, &one, 0);
	sqe->user_data = 21;
	cr_assert_eq(raw_reap(loop, 2, c, 8), 2);
	cr_assert_eq(find_ud(c, 2, 20)->res, 5);
	cr_assert_eq(find_ud(c, 2, 21)->res, -ECANCELED);
	cr_assert_lt(keel_sim_now(sim), t0 + 1000000000u);
	cr_assert_eq(memcmp(buf, "hello", 5), 0);
	sim_close(sim, fd);
	sim_done(sim, loop);
}

Test(sim, cancel_by_user_data_and_by_fd, .timeout = 10)
{
	struct keel_sim *sim = sim_new(4);
	struct keel_loop *loop = sim_loop(sim, NULL);
	int fd = tpipe_new(sim, NULL);
	struct raw_cqe c[8];
	char buf[16], buf2[16];
	struct io_uring_sqe *sqe;

	/* A read parked on an empty pipe is cancelled by its user_data. */
	sqe = raw_sqe(loop, 1);
	io_uring_prep_read(sqe, fd, buf, sizeof(buf), 0);
	sqe->user_data = 1;
	cr_assert_eq(raw_reap(loop, 0, c, 8), 0);
	sqe = raw_sqe(loop, 2);
	io_uring_prep_cancel64(sqe, 1, 0);
	sqe->user_data = 2;
	cr_assert_eq(raw_reap(loop, 2, c, 8), 2);
	cr_assert_eq(find_ud(c, 2, 1)->res, -ECANCELED);
	cr_assert_eq(find_ud(c, 2, 2)->res, 0);
	/* Nothing left to cancel: -ENOENT. */
	sqe = raw_sqe(loop, 3);
	io_uring_prep_cancel64(sqe, 1, 0);
	sqe->user_data = 3;
	cr_assert_eq(raw_reap(loop, 1, c, 8), 1);
	cr_assert_eq(c[0].res, -ENOENT);
	/* By descriptor, all of them (what keel_close does first). */
	sqe = raw_sqe(loop, 4);
	io_uring_prep_read(sqe, fd, buf, sizeof(buf), 0);
	sqe->user_data = 4;
	sqe = raw_sqe(loop, 5);
	io_uring_prep_read(sqe, fd, buf2, sizeof(buf2), 0);
	sqe->user_data = 5;
	cr_assert_eq(raw_reap(loop, 0, c, 8), 0);
	sqe = raw_sqe(loop, 6);
	io_uring_prep_cancel_fd(sqe, fd, IORING_ASYNC_CANCEL_ALL);
	sqe->user_data = 6;
	cr_assert_eq(raw_reap(loop, 3, c, 8), 3);
	cr_assert_eq(find_ud(c, 3, 4)->res, -ECANCELED);
	cr_assert_eq(find_ud(c, 3, 5)->res, -ECANCELED);
	cr_assert_eq(find_ud(c, 3, 6)->res, 2);
	sim_close(sim, fd);
	sim_done(sim, loop);
}

Test(sim, cq_overflow_keeps_completions_in_order, .timeout = 10)
{
	struct keel_sim *sim = sim_new(5);
	struct keel_loop_opts o = {.sq_entries = 4, .cq_entries = 4};
	struct keel_loop *loop = sim_loop(sim, &o);
	struct raw_cqe c[64];
	struct keel_sim_stats st;
	int seen[32] = {0};

	/* Timeouts in deadline order: the CQEs must come out in it. */
	static struct __kernel_timespec ts[32];

	for (int i = 0; i < 32; i++) {
		struct io_uring_sqe *sqe = keel__io_sqe(keel__io_of(loop));

		cr_assert_not_null(sqe);
		ts[i] = ts_of(1000u * (uint64_t)(i + 1));
		io_uring_prep_timeout(sqe, &ts[i], 0, 0);
		sqe->user_data = (uint64_t)i;
	}
	/* Let every timeout expire before reaping anything. */
	cr_assert_eq(keel__io_enter(keel__io_of(loop), 0, 0) >= 0, 1);
	cr_assert_eq(keel__io_enter(keel__io_of(loop), 4, 1000000), 0);
	((struct keel__sim *)sim)->now += 1000000;
	sim__run_due((struct keel__sim *)sim);
	cr_assert(io_uring_cq_has_overflow(ring_of(loop)));
	cr_assert_eq(raw_reap(loop, 32, c, 64), 32);
	for (int i = 0; i < 32; i++) {
		cr_assert_eq(c[i].ud, (uint64_t)i, "CQE %d is %llu", i,
			     (unsigned long long)c[i].ud);
		cr_assert_eq(c[i].res, -ETIME);
		seen[c[i].ud]++;
	}
	cr_assert_not(io_uring_cq_has_overflow(ring_of(loop)));
	keel_sim_stats(sim, &st);
	cr_assert_eq(st.overflows, 28);
	sim_done(sim, loop);
}

Test(sim, eventfd_is_signalled_by_completions, .timeout = 10)
{
	struct keel_sim *sim = sim_new(6);
	struct keel_loop *loop = sim_loop(sim, NULL);
	int efd = keel_loop_fd(loop);
	struct raw_cqe c[4];
	uint64_t v = 0;

	cr_assert_geq(efd, 0);
	cr_assert_lt(efd, SIM_FD_BASE, "a real descriptor");
	cr_assert_eq(read(efd, &v, sizeof(v)), -1, "not signalled yet");
	raw_sqe(loop, 1);
	cr_assert_eq(raw_reap(loop, 1, c, 4), 1);
	cr_assert_eq(read(efd, &v, sizeof(v)), (ssize_t)sizeof(v));
	cr_assert_geq(v, 1);
	sim_done(sim, loop);
}

Test(sim, msg_ring_posts_to_another_loop_of_the_machine, .timeout = 10)
{
	struct keel_sim *sim = sim_new(7);
	struct keel_loop *a = sim_loop(sim, NULL), *b = sim_loop(sim, NULL);
	struct raw_cqe c[4];
	struct io_uring_sqe *sqe = raw_sqe(a, 1);

	io_uring_prep_msg_ring(sqe, ring_of(b)->ring_fd, 77, 0xabc, 0);
	sqe->user_data = 1;
	cr_assert_eq(raw_reap(a, 1, c, 4), 1);
	cr_assert_eq(c[0].res, 0);
	cr_assert_eq(raw_reap(b, 1, c, 4), 1);
	cr_assert_eq(c[0].ud, 0xabc);
	cr_assert_eq(c[0].res, 77);
	/* A ring that is no ring of the machine. */
	sqe = raw_sqe(a, 2);
	io_uring_prep_msg_ring(sqe, 3, 0, 0, 0);
	sqe->user_data = 2;
	cr_assert_eq(raw_reap(a, 1, c, 4), 1);
	cr_assert_eq(c[0].res, -EBADFD);
	keel_loop_destroy(b);
	sim_done(sim, a);
}

/* ---- keel's API on simulated loops ---- */

/* Does `n` nops (logging its id after each when `log` is set). */
struct nopper {
	struct keel_task task;
	int id;
	int n;
	int i;
	struct out *o;
	struct kt_log *log;
};

static int nopper_step(struct keel_task *t);
static KEEL_TASK_TYPE(nopper_task, struct nopper, task, nopper_step);

static int nopper_step(struct keel_task *t)
{
	struct nopper *p = keel_container_of(t, struct nopper, task);

	KEEL_BEGIN(t);
	for (p->i = 0; p->i < p->n; p->i++) {
		KEEL_AWAIT(t, keel_nop(t));
		if (keel_res(t) != 0 && p->o)
			p->o->bad++;
		if (p->log)
			kt_log_push(p->log, p->id);
	}
	KEEL_END(t);
}

static void spawn_nopper(struct keel_loop *loop, int id, int n,
			 struct kt_log *log, struct out *o)
{
	struct nopper *p = kt_spawn(loop, &nopper_task, KEEL_PRIO_NORMAL);

	p->id = id;
	p->n = n;
	p->log = log;
	p->o = o;
}

Test(sim, nops_under_keel_sim_run_and_their_rate, .timeout = 30)
{
	struct keel_sim *sim = sim_new(8);
	struct keel_loop *loop = sim_loop(sim, NULL);
	struct out o[64] = {{0}};
	struct keel_sim_stats st;
	uint64_t real = kt_now_ns();

	for (int i = 0; i < 64; i++)
		spawn_nopper(loop, i, 1000, NULL, &o[i]);
	cr_assert_eq(keel_sim_run(sim, 0), 0);
	real = kt_now_ns() - real;
	for (int i = 0; i < 64; i++)
		cr_assert_eq(o[i].bad, 0);
	keel_sim_stats(sim, &st);
	cr_assert_eq(st.ops, 64000);
	cr_assert_eq(st.cqes, 64000);
	/* The figure the report quotes; no assertion on it. */
	cr_log_info("sim: %llu nops in %.3f s real: %.0f simulated ops/s",
		    (unsigned long long)st.ops, (double)real / 1e9,
		    (double)st.ops * 1e9 / (double)real);
	fprintf(stderr, "sim: %llu nops in %.3f s real: %.0f simulated ops/s\n",
		(unsigned long long)st.ops, (double)real / 1e9,
		(double)st.ops * 1e9 / (double)real);
	sim_done(sim, loop);
}

Test(sim, a_tiny_cq_overflows_and_keel_reaps_everything, .timeout = 10)
{
	/* Completions land together (1 ns apart at most) and fill it. */
	struct keel_sim_opts so = {.seed = 9, .max_latency_ns = 1};
	struct keel_sim *sim;
	struct keel_loop_opts o = {.sq_entries = 4, .cq_entries = 4};
	struct keel_loop *loop;
	struct out out[32] = {{0}};

	cr_assert_eq(keel_sim_create(&sim, &so), 0);
	loop = sim_loop(sim, &o);
	struct keel_sim_stats st;

	for (int i = 0; i < 32; i++)
		spawn_nopper(loop, i, 20, NULL, &out[i]);
	cr_assert_eq(keel_sim_run(sim, 0), 0);
	for (int i = 0; i < 32; i++)
		cr_assert_eq(out[i].bad, 0);
	keel_sim_stats(sim, &st);
	cr_assert_gt(st.overflows, 0);
	cr_assert_gt(kt_stats(loop).cq_overflows, 0);
	cr_assert_eq(kt_stats(loop).ops_inflight, 0);
	sim_done(sim, loop);
}

/* Reads from `fd`, with an op timeout when `timeout_ns` is set. */
struct reader {
	struct keel_task task;
	int fd;
	uint64_t timeout_ns;
	struct out *o;
	char buf[64];
};

static int reader_step(struct keel_task *t);
static KEEL_TASK_TYPE(reader_task, struct reader, task, reader_step);

static int reader_step(struct keel_task *t)
{
	struct reader *r = keel_container_of(t, struct reader, task);

	KEEL_BEGIN(t);
	if (r->timeout_ns)
		keel_op_timeout(t, r->timeout_ns);
	KEEL_AWAIT(t, keel_read(t, r->fd, r->buf, sizeof(r->buf), 0));
	if (r->o) {
		r->o->res = keel_res(t);
		r->o->done = 1;
		r->o->at = keel_loop_now(keel_task_loop(t));
	}
	KEEL_END(t);
}

static struct reader *spawn_reader(struct keel_loop *loop, int fd,
				   uint64_t timeout_ns, struct out *o)
{
	struct reader *r = kt_spawn(loop, &reader_task, KEEL_PRIO_NORMAL);

	r->fd = fd;
	r->timeout_ns = timeout_ns;
	r->o = o;
	return r;
}

Test(sim, keel_op_timeout_fires_in_virtual_time, .timeout = 10)
{
	struct keel_sim *sim = sim_new(10);
	struct keel_loop *loop = sim_loop(sim, NULL);
	struct tpipe *p;
	int fd = tpipe_new(sim, &p);
	uint64_t t0 = keel_sim_now(sim);
	struct out slow = {0}, fast = {0};

	spawn_reader(loop, fd, 30ull * 1000000000u, &slow);
	cr_assert_eq(keel_sim_run(sim, 0), 0);
	cr_assert(slow.done);
	cr_assert_eq(slow.res, -ETIMEDOUT);
	cr_assert_geq(slow.at, t0 + 30ull * 1000000000u);
	/* With data there, the read wins and its timeout is disarmed. */
	tpipe_put(p, "abc", 3);
	spawn_reader(loop, fd, 30ull * 1000000000u, &fast);
	t0 = keel_sim_now(sim);
	cr_assert_eq(keel_sim_run(sim, 0), 0);
	cr_assert_eq(fast.res, 3);
	cr_assert_lt(keel_sim_now(sim), t0 + 1000000000u);
	sim_close(sim, fd);
	sim_done(sim, loop);
}

/* Cancels `target` at its first step. */
struct canceller {
	struct keel_task task;
	struct keel_task *target;
};

static int canceller_step(struct keel_task *t);
static KEEL_TASK_TYPE(canceller_task, struct canceller, task, canceller_step);

static int canceller_step(struct keel_task *t)
{
	struct canceller *c = keel_container_of(t, struct canceller, task);

	KEEL_BEGIN(t);
	keel_task_cancel(c->target);
	KEEL_END(t);
}

Test(sim, cancel_races_its_op_both_ways_across_seeds, .timeout = 30)
{
	int completed = 0, cancelled = 0;
	uint64_t raced = 0;

	for (uint64_t seed = 0; seed < 200; seed++) {
		struct keel_sim *sim = sim_new(seed);
		struct keel_loop *loop = sim_loop(sim, NULL);
		struct tpipe *p;
		int fd = tpipe_new(sim, &p);
		struct keel_sim_stats st;

		/* The read can complete at once: its attempt and the cancel
		 * land at PRNG-chosen times. */
		tpipe_put(p, "data", 4);
		struct out o = {0};
		struct reader *r = spawn_reader(loop, fd, 0, &o);
		struct canceller *c =
		    kt_spawn(loop, &canceller_task, KEEL_PRIO_NORMAL);

		c->target = &r->task;
		cr_assert_eq(keel_sim_run(sim, 0), 0);
		cr_assert(o.done);
		if (o.res == 4)
			completed++;
		else if (o.res == -ECANCELED)
			cancelled++;
		else
			cr_assert_fail("seed %llu: read gave %d",
				       (unsigned long long)seed, o.res);
		keel_sim_stats(sim, &st);
		raced += st.cancels_raced;
		sim_close(sim, fd);
		sim_done(sim, loop);
	}
	cr_assert_gt(completed, 0, "the op never completed first");
	cr_assert_gt(cancelled, 0, "the cancel never won");
	cr_assert_gt(raced, 0, "never completed at the same time");
}

Test(sim, keel_close_cancels_a_parked_read, .timeout = 10)
{
	struct keel_sim *sim = sim_new(11);
	struct keel_loop *loop = sim_loop(sim, NULL);
	int fd = tpipe_new(sim, NULL);
	struct out o = {0};
	struct keel_sim_stats st;

	spawn_reader(loop, fd, 0, &o);
	/* Nothing will ever come: the machine says so. */
	cr_assert_eq(keel_sim_run(sim, 0), -EDEADLK);
	cr_assert_not(o.done);
	keel_sim_stats(sim, &st);
	cr_assert_eq(st.fds_open, 1);
	/* keel_loop_destroy cancels it (virtual time runs meanwhile). */
	keel_loop_destroy(loop);
	sim_close(sim, fd);
	char why[128];

	cr_assert_eq(keel_sim_check(sim, why, sizeof(why)), 0, "%s", why);
	keel_sim_destroy(sim);
}

/* Order of completions of 32 nop tasks, hashed. */
static uint64_t order_hash(uint64_t seed)
{
	struct keel_sim *sim = sim_new(seed);
	struct keel_loop *loop = sim_loop(sim, NULL);
	static struct kt_log log;
	uint64_t h = 1469598103934665603ull;

	log.n = 0;
	for (int i = 0; i < 32; i++)
		spawn_nopper(loop, i, 4, &log, NULL);
	cr_assert_eq(keel_sim_run(sim, 0), 0);
	cr_assert_eq(log.n, 128);
	for (int i = 0; i < log.n; i++)
		h = (h ^ (uint64_t)log.v[i]) * 1099511628211ull;
	h ^= keel_sim_now(sim);
	sim_done(sim, loop);
	return h;
}

Test(sim, the_same_seed_gives_the_same_run, .timeout = 10)
{
	uint64_t a = order_hash(42), b = order_hash(42);
	int differ = 0;

	cr_assert_eq(a, b);
	for (uint64_t seed = 1; seed <= 8; seed++)
		differ += order_hash(seed) != a;
	cr_assert_geq(differ, 7, "the order does not depend on the seed");
}

/* ---- between the machine's loops (MSG_RING doorbells) ---- */

static int g_spawned_ran;
static uint64_t g_msgs_sum;
static int g_msgs;

struct spawned {
	struct keel_task task;
	int v;
};

static int spawned_step(struct keel_task *t);
static KEEL_TASK_TYPE(spawned_task, struct spawned, task, spawned_step);

static int spawned_step(struct keel_task *t)
{
	struct spawned *s = keel_container_of(t, struct spawned, task);

	KEEL_BEGIN(t);
	KEEL_AWAIT(t, keel_nop(t));
	g_spawned_ran += s->v;
	KEEL_END(t);
}

static void spawned_init(void *frame, void *arg)
{
	((struct spawned *)frame)->v = (int)(intptr_t)arg;
}

/* On loop a: sleeps, spawns a task on loop b, sends 100 messages to b. */
struct producer {
	struct keel_task task;
	struct keel_loop *other;
	struct keel_mailbox *mb;
	uintptr_t i;
	struct out *o;
};

static int producer_step(struct keel_task *t);
static KEEL_TASK_TYPE(producer_task, struct producer, task, producer_step);

static int producer_step(struct keel_task *t)
{
	struct producer *p = keel_container_of(t, struct producer, task);

	KEEL_BEGIN(t);
	KEEL_AWAIT(t, keel_sleep(t, 1000000000u));
	if (keel_spawn_on(p->other, &spawned_task, KEEL_PRIO_NORMAL,
			  spawned_init, (void *)(intptr_t)1))
		p->o->bad++;
	for (p->i = 1; p->i <= 100; p->i++) {
		KEEL_AWAIT(t, keel_mb_send(t, p->mb, (void *)p->i));
		if (keel_res(t) != 0)
			p->o->bad++;
		if (p->i % 10 == 0)
			KEEL_AWAIT(t, keel_sleep(t, 1000000u));
	}
	keel_mb_close(p->mb);
	KEEL_END(t);
}

struct consumer {
	struct keel_task task;
	struct keel_mailbox *mb;
	void *msg;
	uintptr_t last;
	struct out *o;
};

static int consumer_step(struct keel_task *t);
static KEEL_TASK_TYPE(consumer_task, struct consumer, task, consumer_step);

static int consumer_step(struct keel_task *t)
{
	struct consumer *c = keel_container_of(t, struct consumer, task);

	KEEL_BEGIN(t);
	for (;;) {
		KEEL_AWAIT(t, keel_mb_recv(t, c->mb, &c->msg));
		if (keel_res(t) != 0)
			break;
		if ((uintptr_t)c->msg != c->last + 1)
			c->o->bad++;
		c->last = (uintptr_t)c->msg;
		g_msgs_sum += (uintptr_t)c->msg;
		g_msgs++;
	}
	KEEL_END(t);
}

Test(sim, mailbox_and_spawn_on_between_two_loops, .timeout = 10)
{
	struct keel_sim *sim = sim_new(12);
	struct keel_loop *a = sim_loop(sim, NULL), *b = sim_loop(sim, NULL);
	struct keel_mailbox *mb;
	struct keel_sim_stats st;
	struct out po = {0}, co = {0};

	cr_assert_eq(keel_mailbox_new(b, NULL, &mb), 0);
	struct producer *p = kt_spawn(a, &producer_task, KEEL_PRIO_NORMAL);
	struct consumer *c = kt_spawn(b, &consumer_task, KEEL_PRIO_NORMAL);

	p->other = b;
	p->mb = mb;
	c->mb = mb;
	p->o = &po;
	c->o = &co;
	cr_assert_eq(keel_sim_run(sim, 0), 0);
	cr_assert_eq(po.bad, 0);
	cr_assert_eq(g_spawned_ran, 1);
	cr_assert_eq(g_msgs, 100);
	cr_assert_eq(g_msgs_sum, 5050);
	cr_assert_eq(co.bad, 0);
	keel_sim_stats(sim, &st);
	cr_assert_geq(keel_sim_now(sim), 1000000000u);
	/* b slept between messages: a's posts rang its doorbell, a
	 * MSG_RING the machine carried from a's ring to b's. */
	cr_assert_gt(b->inbox.doorbells, 0);
	cr_assert_gt(keel__io_of(b)->count.internal_cqes, 0);
	keel_mailbox_release(mb);
	keel_loop_destroy(b);
	sim_done(sim, a);
}

Test(sim, keel_loop_run_on_a_lone_sim_loop_moves_virtual_time, .timeout = 10)
{
	struct keel_sim *sim = sim_new(13);
	struct keel_loop *loop = sim_loop(sim, NULL);
	struct sleeper *s = kt_spawn(loop, &sleeper_task, KEEL_PRIO_NORMAL);
	uint64_t t0 = keel_sim_now(sim);

	s->ns = 3600ull * 1000000000u;
	s->n = 2;
	spawn_nopper(loop, 0, 100, NULL, NULL);
	kt_loop_run(loop);
	cr_assert_geq(keel_sim_now(sim) - t0, 7200ull * 1000000000u);
	sim_done(sim, loop);
}

Test(sim, keel_loop_run_with_several_loops_is_an_error, .timeout = 10)
{
	struct keel_sim *sim = sim_new(14);
	struct keel_loop *a = sim_loop(sim, NULL), *b = sim_loop(sim, NULL);
	int fd = tpipe_new(sim, NULL);

	spawn_reader(a, fd, 0, NULL);
	/* Only keel_sim_run knows whether b could make a's read complete. */
	cr_assert_eq(keel_loop_run(a), -EOPNOTSUPP);
	keel_loop_destroy(a);
	keel_loop_destroy(b);
	sim_close(sim, fd);
	char why[128];

	cr_assert_eq(
	    keel_sim_check((const struct keel_sim *)sim, why, sizeof(why)), 0,
	    "%s", why);
	keel_sim_destroy(sim);
}

/* ---- provided buffers and multishot recv ---- */

#define STREAM_BYTES 20000

struct writer {
	struct keel_task task;
	int fd;
	struct tpipe *p;
	unsigned at;
	char chunk[700];
};

static int writer_step(struct keel_task *t);
static KEEL_TASK_TYPE(writer_task, struct writer, task, writer_step);

static int writer_step(struct keel_task *t)
{
	struct writer *w = keel_container_of(t, struct writer, task);

	KEEL_BEGIN(t);
	while (w->at < STREAM_BYTES) {
		unsigned n = STREAM_BYTES - w->at;

		if (n > sizeof(w->chunk))
			n = sizeof(w->chunk);
		for (unsigned i = 0; i < n; i++)
			w->chunk[i] = (char)((w->at + i) % 251);
		KEEL_AWAIT(t, keel_write(t, w->fd, w->chunk, n, 0));
		if (keel_res(t) <= 0)
			KEEL_EXIT(t, -1);
		w->at += (unsigned)keel_res(t);
	}
	/* The writer is done: the reader sees end of file. */
	w->p->eof = true;
	sim__file_wake(&w->p->f);
	KEEL_END(t);
}

struct streamer {
	struct keel_task task;
	int fd;
	struct keel_bufring *ring;
	struct keel_recv_stream rs;
	struct keel_buf buf;
	struct out *o;
};

static int streamer_step(struct keel_task *t);
static KEEL_TASK_TYPE(streamer_task, struct streamer, task, streamer_step);

static int streamer_step(struct keel_task *t)
{
	struct streamer *s = keel_container_of(t, struct streamer, task);

	KEEL_BEGIN(t);
	if (keel_recv_stream_open(t, &s->rs, s->fd, s->ring, 0))
		KEEL_EXIT(t, -1);
	for (;;) {
		KEEL_AWAIT(t, keel_recv_next(t, &s->rs, &s->buf));
		if (keel_res(t) <= 0)
			break;
		for (unsigned i = 0; i < s->buf.len; i++)
			if (s->buf.data[i] != (char)((s->o->got + i) % 251))
				s->o->bad++;
		s->o->got += s->buf.len;
		keel_buf_release(&s->buf);
		/* A slow reader: the small ring runs dry now and then. */
		KEEL_AWAIT(t, keel_sleep(t, 1000000));
	}
	s->o->end = keel_res(t);
	keel_recv_stream_close(&s->rs);
	KEEL_END(t);
}

Test(sim, multishot_recv_with_provided_buffers, .timeout = 10)
{
	struct keel_sim *sim = sim_new(15);
	struct keel_loop *loop = sim_loop(sim, NULL);
	struct keel_bufring_opts bo = {.count = 4, .size = 256};
	struct keel_bufring *ring;
	struct keel_bufring_stats bs;
	struct tpipe *p;
	int fd = tpipe_new(sim, &p);

	cr_assert_eq(keel_bufring_create(loop, &bo, &ring), 0);
	struct streamer *s = kt_spawn(loop, &streamer_task, KEEL_PRIO_NORMAL);
	struct writer *w = kt_spawn(loop, &writer_task, KEEL_PRIO_NORMAL);

	struct out o = {.end = 1};

	s->fd = fd;
	s->ring = ring;
	s->o = &o;
	w->fd = fd;
	w->p = p;
	cr_assert_eq(keel_sim_run(sim, 0), 0);
	cr_assert_eq(o.got, STREAM_BYTES);
	cr_assert_eq(o.bad, 0);
	cr_assert_eq(o.end, 0);
	keel_bufring_stats(ring, &bs);
	cr_assert_eq(bs.lent, 0);
	cr_assert_gt(bs.chunks, STREAM_BYTES / 256 - 1);
	cr_assert_gt(bs.enobufs, 0, "the ring never ran dry");
	cr_assert_gt(kt_stats(loop).multishot_rearms, 0);
	cr_assert_eq(keel_bufring_destroy(ring), 0);
	sim_close(sim, fd);
	sim_done(sim, loop);
}

/* A listener whose accept hands out new pipes, `pending` of them. */
struct tlisten {
	struct sim_file f;
	int pending;
};

static int tlisten_accept(struct sim_file *f, struct sim_file **out)
{
	struct tlisten *l = (struct tlisten *)f;
	struct tpipe *p;

	if (!l->pending)
		return -EAGAIN;
	l->pending--;
	p = calloc(1, sizeof(*p));
	cr_assert_not_null(p);
	sim__file_init(&p->f, f->sim, &tpipe_ops);
	*out = &p->f;
	return 0;
}

static const struct sim_file_ops tlisten_ops = {
    .accept = tlisten_accept,
    .release = tpipe_release,
};

Test(sim, multishot_accept_into_direct_descriptors_and_send_zc, .timeout = 10)
{
	struct keel_sim *sim = sim_new(16);
	struct keel_loop *loop = sim_loop(sim, NULL);
	struct keel__sim *s = (struct keel__sim *)sim;
	struct tlisten *l = calloc(1, sizeof(*l));
	struct raw_cqe c[16];
	struct io_uring_sqe *sqe;

	cr_assert_eq(keel__io_files(keel__io_of(loop)), 0);
	sim__file_init(&l->f, s, &tlisten_ops);
	int lfd = sim__fd_install(s, &l->f);

	l->pending = 3;
	sqe = raw_sqe(loop, 1);
	io_uring_prep_multishot_accept_direct(sqe, lfd, NULL, NULL, 0);
	sqe->user_data = 1;
	cr_assert_eq(raw_reap(loop, 3, c, 16), 3);
	for (int i = 0; i < 3; i++) {
		cr_assert_eq(c[i].ud, 1);
		cr_assert_eq(c[i].res, i, "slot %d", c[i].res);
		cr_assert(c[i].flags & IORING_CQE_F_MORE);
	}
	/* Still armed: one more connection comes when woken. */
	l->pending = 1;
	sim__file_wake(&l->f);
	cr_assert_eq(raw_reap(loop, 1, c, 16), 1);
	cr_assert_eq(c[0].res, 3);
	cr_assert(c[0].flags & IORING_CQE_F_MORE);
	/* SEND_ZC on a direct descriptor: the result, then the
	 * notification. */
	sqe = raw_sqe(loop, 5);
	io_uring_prep_send_zc(sqe, 0, "zero", 4, 0, 0);
	sqe->flags |= IOSQE_FIXED_FILE;
	sqe->user_data = 5;
	cr_assert_eq(raw_reap(loop, 2, c, 16), 2);
	cr_assert_eq(c[0].res, 4);
	cr_assert(c[0].flags & IORING_CQE_F_MORE);
	cr_assert(c[1].flags & IORING_CQE_F_NOTIF);
	/* Cancelled, the multishot ends: a last CQE without F_MORE. */
	sqe = raw_sqe(loop, 2);
	io_uring_prep_cancel64(sqe, 1, 0);
	sqe->user_data = 2;
	cr_assert_eq(raw_reap(loop, 2, c, 16), 2);
	cr_assert_eq(find_ud(c, 2, 1)->res, -ECANCELED);
	cr_assert_not(find_ud(c, 2, 1)->flags & IORING_CQE_F_MORE);
	for (unsigned i = 0; i < 4; i++) {
		sqe = raw_sqe(loop, 10 + i);
		io_uring_prep_close_direct(sqe, i);
		sqe->user_data = 10 + i;
	}
	cr_assert_eq(raw_reap(loop, 4, c, 16), 4);
	for (int i = 0; i < 4; i++)
		cr_assert_eq(c[i].res, 0);
	sim_close(sim, lfd);
	sim_done(sim, loop);
}
