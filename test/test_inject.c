/* SPDX-License-Identifier: MIT */
/*
 * test_inject.c: fault injection (keel_loop_inject_faults(), KEEL_FAULTS)
 * on the real kernel, over loopback: an injected error reaches the task
 * (also with a linked timeout, which then ends as after a real error);
 * short sends and recvs still move every byte through keel_send_all; a
 * delayed or reordered op completes after an op issued after it (order
 * only); a held op obeys its linked timeout and its cancellation; accept
 * and recv streams keep working under injected errors; a close cancels a
 * held op on its descriptor; the stats and the
 * trace count every fault; a bad spec is -EINVAL and changes nothing;
 * probability 0 injects nothing; KEEL_FAULTS with a bad spec fails
 * keel_loop_create().
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <keel.h>
#include <liburing.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "helpers/keel_test.h"

/* Tasks are spawned joinable and never joined: their frames, which hold
 * their results, stay until keel_loop_destroy(). */

static void inject(struct keel_loop *loop, const char *spec, uint64_t seed)
{
	int err = keel_loop_inject_faults(loop, spec, seed);

	cr_assert_eq(err, 0, "keel_loop_inject_faults(%s): %s", spec,
		     strerror(-err));
}

/* ---- one op, its result ---- */

enum one_kind { ONE_RECV, ONE_NOP, ONE_READ };

struct one {
	struct keel_task task;
	int kind;
	int fd;
	uint64_t timeout_ns; /* keel_op_timeout() before the op, 0: none */
	int res;
	int done;
	struct kt_log *log;
	int tag;
	char buf[64];
};

static int one_step(struct keel_task *t)
{
	struct one *o = keel_container_of(t, struct one, task);

	KEEL_BEGIN(t);
	if (o->timeout_ns)
		keel_op_timeout(t, o->timeout_ns);
	if (o->kind == ONE_RECV)
		KEEL_AWAIT(t, keel_recv(t, o->fd, o->buf, sizeof(o->buf), 0));
	else if (o->kind == ONE_NOP)
		KEEL_AWAIT(t, keel_nop(t));
	else
		KEEL_AWAIT(t, keel_read(t, o->fd, o->buf, sizeof(o->buf), 0));
	o->res = keel_res(t);
	o->done = 1;
	if (o->log)
		kt_log_push(o->log, o->tag);
	KEEL_END(t);
}
static KEEL_TASK_TYPE(one_task, struct one, task, one_step);

static struct one *one_new(struct keel_loop *loop, int kind, int fd)
{
	struct one *o =
	    kt_spawn(loop, &one_task, KEEL_PRIO_NORMAL | KEEL_SPAWN_JOINABLE);

	o->kind = kind;
	o->fd = fd;
	return o;
}

Test(inject, injected_reset_reaches_the_recv, .timeout = 20)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	int fds[2];

	kt_tcp_pair(fds);
	inject(loop, "recv:reset", 1);
	struct one *o = one_new(loop, ONE_RECV, fds[0]);

	kt_loop_run(loop);
	cr_assert_eq(o->res, -ECONNRESET, "recv: %d", o->res);
	struct keel_loop_stats st = kt_stats(loop);

	cr_assert_eq(st.faults_injected, 1);
	cr_assert_eq(st.ops_inflight, 0);
	keel_loop_destroy(loop);
	close(fds[0]);
	close(fds[1]);
}

Test(inject, errno_names_and_shorthands, .timeout = 20)
{
	static const struct {
		const char *spec;
		int err;
	} cases[] = {
	    {"recv:pipe", -EPIPE},	   {"recv:again", -EAGAIN},
	    {"recv:nobufs", -ENOBUFS},	   {"recv:io", -EIO},
	    {"recv:nomem", -ENOMEM},	   {"recv:canceled", -ECANCELED},
	    {"recv:emfile", -EMFILE},	   {"recv:refused", -ECONNREFUSED},
	    {"recv:timedout", -ETIMEDOUT}, {"*:EHOSTUNREACH:1", -EHOSTUNREACH},
	};
	int fds[2];

	kt_tcp_pair(fds);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct keel_loop *loop = kt_loop_new(NULL);

		inject(loop, cases[i].spec, 7);
		struct one *o = one_new(loop, ONE_RECV, fds[0]);

		kt_loop_run(loop);
		cr_assert_eq(o->res, cases[i].err, "%s: %d", cases[i].spec,
			     o->res);
		keel_loop_destroy(loop);
	}
	close(fds[0]);
	close(fds[1]);
}

Test(inject, injected_error_with_a_linked_timeout, .timeout = 20)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	int fds[2];

	kt_tcp_pair(fds);
	inject(loop, "recv:reset", 1);
	struct one *o = one_new(loop, ONE_RECV, fds[0]);

	o->timeout_ns = 10ull * 1000 * 1000 * 1000;
	kt_loop_run(loop);
	/* The error, not the deadline; the timeout's CQE came back too. */
	cr_assert_eq(o->res, -ECONNRESET, "recv: %d", o->res);
	struct keel_loop_stats st = kt_stats(loop);

	cr_assert_eq(st.ops_inflight, 0);
	cr_assert_eq(st.stale_cqes, 0);
	keel_loop_destroy(loop);
	close(fds[0]);
	close(fds[1]);
}

Test(inject, bad_spec_is_einval_and_changes_nothing, .timeout = 20)
{
	static const char *const bad[] = {
	    "rcv:reset",       "recv",
	    "recv:bogus",      "recv:reset:2",
	    "recv:reset:-0.1", "recv:reset:x",
	    "recv:delay=5",    "recv:delay=ms",
	    "close:io",	       "recv:reset,send",
	    "recv:EBOGUS",     "recv:reset:0.5:1",
	};
	struct keel_loop *loop = kt_loop_new(NULL);
	int fds[2];

	kt_tcp_pair(fds);
	inject(loop, "recv:pipe", 1);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		cr_assert_eq(keel_loop_inject_faults(loop, bad[i], 1), -EINVAL,
			     "'%s' accepted", bad[i]);
	/* The good spec before is still the one in force. */
	struct one *o = one_new(loop, ONE_RECV, fds[0]);

	kt_loop_run(loop);
	cr_assert_eq(o->res, -EPIPE, "recv: %d", o->res);
	keel_loop_destroy(loop);
	close(fds[0]);
	close(fds[1]);
}

Test(inject, probability_zero_and_off_inject_nothing, .timeout = 20)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	int fds[2];

	kt_tcp_pair(fds);
	cr_assert_eq(write(fds[1], "hi", 2), 2);
	inject(loop, "recv:reset:0,*:short:0,recv:delay=1s:0", 1);
	struct one *o = one_new(loop, ONE_RECV, fds[0]);

	kt_loop_run(loop);
	cr_assert_eq(o->res, 2, "recv: %d", o->res);
	/* On, then off again. */
	inject(loop, "recv:reset", 1);
	inject(loop, NULL, 0);
	cr_assert_eq(write(fds[1], "hi", 2), 2);
	o = one_new(loop, ONE_RECV, fds[0]);
	kt_loop_run(loop);
	cr_assert_eq(o->res, 2, "recv: %d", o->res);
	cr_assert_eq(kt_stats(loop).faults_injected, 0);
	keel_loop_destroy(loop);
	close(fds[0]);
	close(fds[1]);
}

/* ---- short transfers ---- */

#define XFER_LEN (256u * 1024)

struct xfer {
	struct keel_task task;
	int fd;
	int sender;
	char *data;
	size_t got;
	int res;
	int pieces;
};

static int xfer_step(struct keel_task *t)
{
	struct xfer *x = keel_container_of(t, struct xfer, task);

	KEEL_BEGIN(t);
	if (x->sender) {
		KEEL_AWAIT(t, keel_send_all(t, x->fd, x->data, XFER_LEN, 0));
		x->res = keel_res(t);
		shutdown(x->fd, SHUT_WR);
		KEEL_EXIT(t, 0);
	}
	for (;;) {
		KEEL_AWAIT(t, keel_recv(t, x->fd, x->data + x->got,
					XFER_LEN + 1 - x->got, 0));
		x->res = keel_res(t);
		if (x->res <= 0)
			break;
		x->got += (size_t)x->res;
		x->pieces++;
	}
	KEEL_END(t);
}
static KEEL_TASK_TYPE(xfer_task, struct xfer, task, xfer_step);

Test(inject, short_sends_and_recvs_still_deliver_every_byte, .timeout = 30)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	char *tx = malloc(XFER_LEN), *rx = malloc(XFER_LEN + 1);
	int fds[2];

	kt_tcp_pair(fds);
	kt_pattern_fill(tx, XFER_LEN, 0, 3);
	inject(loop, "send:short,recv:short:0.5", 42);
	struct xfer *s =
	    kt_spawn(loop, &xfer_task, KEEL_PRIO_NORMAL | KEEL_SPAWN_JOINABLE);
	struct xfer *r =
	    kt_spawn(loop, &xfer_task, KEEL_PRIO_NORMAL | KEEL_SPAWN_JOINABLE);

	s->sender = 1;
	s->fd = fds[0];
	s->data = tx;
	r->fd = fds[1];
	r->data = rx;
	kt_loop_run(loop);
	cr_assert_eq(s->res, (int)XFER_LEN, "send_all: %d", s->res);
	cr_assert_eq(r->res, 0, "last recv: %d", r->res);
	cr_assert_eq(r->got, XFER_LEN);
	cr_assert_eq(kt_pattern_mismatch(rx, XFER_LEN, 0, 3), SIZE_MAX);
	struct keel_loop_stats st = kt_stats(loop);

	/* Every send was cut: many more than the few a loopback needs. */
	cr_assert_gt(st.faults_injected, 10, "faults: %lu",
		     (unsigned long)st.faults_injected);
	cr_assert_gt(r->pieces, 10);
	keel_loop_destroy(loop);
	close(fds[0]);
	close(fds[1]);
	free(tx);
	free(rx);
}

/* ---- latency and reordering ---- */

/* A delayed NOP issued first completes after a read of /dev/zero issued
 * after it; without the delay it completes first. */
static void order_case(const char *spec, int first, int second)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct kt_log log = {0};
	int zero = open("/dev/zero", O_RDONLY | O_CLOEXEC);

	cr_assert_geq(zero, 0);
	if (spec)
		inject(loop, spec, 1);
	struct one *a = one_new(loop, ONE_NOP, -1);
	struct one *b = one_new(loop, ONE_READ, zero);

	a->log = b->log = &log;
	a->tag = 1;
	b->tag = 2;
	kt_loop_run(loop);
	cr_assert_eq(a->res, 0);
	cr_assert_eq(b->res, 64);
	int want[] = {first, second};

	kt_log_expect(&log, want, 2);
	cr_assert_eq(kt_stats(loop).ops_inflight, 0);
	keel_loop_destroy(loop);
	close(zero);
}

Test(inject, without_faults_the_nop_completes_first, .timeout = 20)
{
	order_case(NULL, 1, 2);
}

Test(inject, delayed_op_completes_after_a_later_one, .timeout = 20)
{
	order_case("nop:delay=20ms", 2, 1);
}

Test(inject, reordered_op_completes_after_a_later_one, .timeout = 20)
{
	order_case("nop:reorder", 2, 1);
}

Test(inject, held_op_keeps_its_linked_timeout, .timeout = 20)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	int fds[2];

	kt_tcp_pair(fds);
	inject(loop, "recv:delay=200ms", 1);
	struct one *o = one_new(loop, ONE_RECV, fds[0]);

	o->timeout_ns = 10 * 1000 * 1000;
	kt_loop_run(loop);
	cr_assert_eq(o->res, -ETIMEDOUT, "recv: %d", o->res);
	keel_loop_destroy(loop);
	close(fds[0]);
	close(fds[1]);
}

struct canceller {
	struct keel_task task;
	struct one *victim;
};

static int canceller_step(struct keel_task *t)
{
	struct canceller *c = keel_container_of(t, struct canceller, task);

	KEEL_BEGIN(t);
	KEEL_AWAIT(t, keel_sleep(t, 1000 * 1000));
	keel_task_cancel(&c->victim->task);
	KEEL_END(t);
}
static KEEL_TASK_TYPE(canceller_task, struct canceller, task, canceller_step);

Test(inject, cancelling_a_held_op_ends_it_at_once, .timeout = 20)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	int fds[2];

	kt_tcp_pair(fds);
	/* An hour: only the cancel can end it before the test's timeout. */
	inject(loop, "recv:delay=3600s", 1);
	struct one *o = one_new(loop, ONE_RECV, fds[0]);
	struct canceller *c = kt_spawn(loop, &canceller_task,
				       KEEL_PRIO_NORMAL | KEEL_SPAWN_JOINABLE);

	c->victim = o;
	kt_loop_run(loop);
	cr_assert_eq(o->res, -ECANCELED, "recv: %d", o->res);
	cr_assert_eq(kt_stats(loop).ops_inflight, 0);
	keel_loop_destroy(loop);
	close(fds[0]);
	close(fds[1]);
}

struct closer {
	struct keel_task task;
	int fd;
	int res;
};

static int closer_step(struct keel_task *t)
{
	struct closer *c = keel_container_of(t, struct closer, task);

	KEEL_BEGIN(t);
	KEEL_AWAIT(t, keel_sleep(t, 1000 * 1000));
	KEEL_AWAIT(t, keel_close(t, c->fd));
	c->res = keel_res(t);
	KEEL_END(t);
}
static KEEL_TASK_TYPE(closer_task, struct closer, task, closer_step);

/* keel_close() cancels the ops on its fd: a held one too, or it would be
 * submitted later on a closed (or reused) descriptor. */
Test(inject, closing_the_fd_of_a_held_recv_cancels_it, .timeout = 20)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	int fds[2];

	kt_tcp_pair(fds);
	inject(loop, "recv:delay=3600s", 1);
	struct one *o = one_new(loop, ONE_RECV, fds[0]);
	struct closer *c = kt_spawn(loop, &closer_task,
				    KEEL_PRIO_NORMAL | KEEL_SPAWN_JOINABLE);

	c->fd = fds[0];
	kt_loop_run(loop);
	cr_assert_eq(c->res, 0, "close: %d", c->res);
	cr_assert_eq(o->res, -ECANCELED, "recv: %d", o->res);
	cr_assert_eq(kt_stats(loop).ops_inflight, 0);
	keel_loop_destroy(loop);
	close(fds[1]);
}

Test(inject, loop_destroy_with_an_op_held, .timeout = 20)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	int fds[2];

	kt_tcp_pair(fds);
	inject(loop, "recv:delay=3600s", 1);
	one_new(loop, ONE_RECV, fds[0]);
	cr_assert_geq(keel_loop_step(loop, 0), 0);
	cr_assert_eq(kt_stats(loop).ops_inflight, 1);
	keel_loop_destroy(loop); /* must not wait an hour, nor leak */
	close(fds[0]);
	close(fds[1]);
}

/* ---- streams under injected errors ---- */

#define CONNS 24

struct acceptor {
	struct keel_task task;
	struct keel_accept_stream as;
	int lfd;
	int open;
	int accepted;
	int last;
};

static int acceptor_step(struct keel_task *t)
{
	struct acceptor *a = keel_container_of(t, struct acceptor, task);

	KEEL_BEGIN(t);
	a->open = keel_accept_stream_open(t, &a->as, a->lfd, 0);
	if (a->open)
		KEEL_EXIT(t, 1);
	while (a->accepted < CONNS) {
		KEEL_AWAIT(t, keel_accept_next(t, &a->as));
		a->last = keel_res(t);
		if (a->last < 0)
			break;
		close(a->last);
		a->accepted++;
	}
	keel_accept_stream_close(&a->as);
	KEEL_END(t);
}
static KEEL_TASK_TYPE(acceptor_task, struct acceptor, task, acceptor_step);

Test(inject, accept_stream_keeps_accepting_under_errors, .timeout = 30)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct sockaddr_storage ss;
	socklen_t sl;
	uint16_t port;
	int lfd = kt_listen(&port), cfd[CONNS];

	kt_loopback_addr(port, &ss, &sl);
	for (int i = 0; i < CONNS; i++) {
		cfd[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		cr_assert_eq(connect(cfd[i], (struct sockaddr *)&ss, sl), 0);
	}
	inject(loop, "accept:ECONNABORTED:0.6,accept:emfile:0.5", 5);
	struct acceptor *a = kt_spawn(loop, &acceptor_task,
				      KEEL_PRIO_NORMAL | KEEL_SPAWN_JOINABLE);

	a->lfd = lfd;
	kt_loop_run(loop);
	cr_assert_eq(a->open, 0);
	cr_assert_eq(a->accepted, CONNS, "accepted %d, last %d", a->accepted,
		     a->last);
	struct keel_loop_stats st = kt_stats(loop);

	cr_assert_gt(st.faults_injected, 0);
	keel_loop_destroy(loop);
	for (int i = 0; i < CONNS; i++)
		close(cfd[i]);
	close(lfd);
}

struct streamer {
	struct keel_task task;
	struct keel_recv_stream rs;
	struct keel_bufring *ring;
	struct keel_buf buf;
	int fd;
	int open;
	size_t got;
	size_t mismatch;
	int res;
};

static int streamer_step(struct keel_task *t)
{
	struct streamer *s = keel_container_of(t, struct streamer, task);

	KEEL_BEGIN(t);
	s->open = keel_recv_stream_open(t, &s->rs, s->fd, s->ring, 0);
	if (s->open)
		KEEL_EXIT(t, 1);
	s->mismatch = SIZE_MAX;
	for (;;) {
		KEEL_AWAIT(t, keel_recv_next(t, &s->rs, &s->buf));
		s->res = keel_res(t);
		if (s->res <= 0)
			break;
		if (s->mismatch == SIZE_MAX &&
		    kt_pattern_mismatch(s->buf.data, s->buf.len, s->got, 9) !=
			SIZE_MAX)
			s->mismatch = s->got;
		s->got += s->buf.len;
	}
	keel_buf_release(&s->buf);
	keel_recv_stream_close(&s->rs);
	KEEL_END(t);
}
static KEEL_TASK_TYPE(streamer_task, struct streamer, task, streamer_step);

Test(inject, recv_stream_survives_injected_nobufs, .timeout = 30)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_bufring_opts ro = {.count = 16, .size = 4096};
	char *tx = malloc(XFER_LEN);
	int fds[2];

	kt_tcp_pair(fds);
	kt_pattern_fill(tx, XFER_LEN, 0, 9);
	struct streamer *s = kt_spawn(loop, &streamer_task,
				      KEEL_PRIO_NORMAL | KEEL_SPAWN_JOINABLE);

	cr_assert_eq(keel_bufring_create(loop, &ro, &s->ring), 0);
	s->fd = fds[1];
	inject(loop, "recv:nobufs:0.3", 11);
	struct xfer *x =
	    kt_spawn(loop, &xfer_task, KEEL_PRIO_NORMAL | KEEL_SPAWN_JOINABLE);

	x->sender = 1;
	x->fd = fds[0];
	x->data = tx;
	kt_loop_run(loop);
	cr_assert_eq(s->open, 0);
	cr_assert_eq(x->res, (int)XFER_LEN);
	cr_assert_eq(s->res, 0, "stream ended with %d", s->res);
	cr_assert_eq(s->got, XFER_LEN);
	cr_assert_eq(s->mismatch, SIZE_MAX);
	cr_assert_gt(kt_stats(loop).faults_injected, 0);
	keel_loop_destroy(loop);
	close(fds[0]);
	close(fds[1]);
	free(tx);
}

/* ---- the trace and the environment ---- */

/* KEEL_EV_FAULT events in a trace file, by kind; each must name `op`. */
static unsigned count_fault_events(const char *path, unsigned *kinds,
				   unsigned op)
{
	FILE *f = fopen(path, "rb");
	char hdr[32];
	uint32_t rec[4];
	unsigned n = 0;

	cr_assert_not_null(f);
	cr_assert_eq(fread(hdr, 1, sizeof(hdr), f), sizeof(hdr));
	cr_assert_eq(memcmp(hdr, KEEL_TRACE_MAGIC, 8), 0);
	while (fread(rec, sizeof(rec), 1, f) == 1) {
		if (rec[0] == KEEL_TRACE_REC_EVENTS) {
			for (uint32_t i = 0; i < rec[2]; i++) {
				struct keel_trace_event ev;

				cr_assert_eq(fread(&ev, sizeof(ev), 1, f), 1);
				if (ev.type == KEEL_EV_FAULT) {
					cr_assert_eq(ev.op, op, "op %u", ev.op);
					n++;
					if (ev.a < 8)
						kinds[ev.a]++;
				}
			}
		} else if (rec[0] == KEEL_TRACE_REC_STRING) {
			fseek(f, (long)((rec[2] + 7u) & ~7u), SEEK_CUR);
		}
	}
	fclose(f);
	return n;
}

Test(inject, stats_and_trace_count_every_fault, .timeout = 30)
{
	char dir[256], path[300];
	unsigned kinds[8] = {0};
	int zero = open("/dev/zero", O_RDONLY | O_CLOEXEC);

	kt_tmpdir_make(dir, sizeof(dir));
	snprintf(path, sizeof(path), "%s/t.trace", dir);
	cr_assert_eq(keel_trace_start(path), 0);
	struct keel_loop *loop = kt_loop_new(NULL);

	/* Short, then failed: the event names the read, not the NOP it
	 * became. */
	inject(loop, "read:short,read:io,nop:delay=1ms:0", 3);
	for (int i = 0; i < 5; i++) {
		one_new(loop, ONE_NOP, -1);
		one_new(loop, ONE_READ, zero);
	}
	kt_loop_run(loop);
	uint64_t faults = kt_stats(loop).faults_injected;

	keel_loop_destroy(loop);
	keel_trace_stop();
	cr_assert_eq(faults, 10);
	cr_assert_eq(count_fault_events(path, kinds, IORING_OP_READ), 10);
	cr_assert_eq(kinds[KEEL_TRACE_FAULT_ERROR], 5);
	cr_assert_eq(kinds[KEEL_TRACE_FAULT_SHORT], 5);
	unlink(path);
	kt_tmpdir_remove(dir);
	close(zero);
}

Test(inject, keel_faults_env_bad_spec_fails_the_create, .timeout = 20)
{
	struct keel_loop *loop = NULL;

	setenv("KEEL_FAULTS", "rcv:reset:0.1", 1);
	cr_assert_eq(keel_loop_create(&loop, NULL), -EINVAL);
	cr_assert_null(loop);
	setenv("KEEL_FAULTS", "recv:reset", 1);
	cr_assert_eq(keel_loop_create(&loop, NULL), 0);
	unsetenv("KEEL_FAULTS");
	int fds[2];

	kt_tcp_pair(fds);
	struct one *o = one_new(loop, ONE_RECV, fds[0]);

	kt_loop_run(loop);
	cr_assert_eq(o->res, -ECONNRESET);
	keel_loop_destroy(loop);
	close(fds[0]);
	close(fds[1]);
}
