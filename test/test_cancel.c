/* SPDX-License-Identifier: MIT */
/*
 * test_cancel.c: cancellation tokens and shields. A cancel wakes a task at
 * every kind of await (recv on an idle socket, accept, sleep, join, a recv
 * with a linked timeout, an await inside a nested routine) and is
 * level-triggered afterwards (every later await, a sleep included, returns
 * the cause at once; keel_close still runs); a cancel racing a completion
 * loses no byte (in-loop sender, and a writer thread against random
 * cancels); deadlines (a parent's cutting a child's longer one, first cause
 * wins, clearing); the token tree; callbacks (order, at once when already
 * cancelled, removal, dropping the last reference); the loop's root token;
 * keel_task_cancel (one task only, before its first step, inside a
 * shield); token inheritance; keel_task_set_token waking a waiter;
 * shields (cleanup I/O under a cancelled token, a cancel arriving while up,
 * the shield's own timeout); and the loop's count of cancelled tokens, by
 * which the fast paths skip the token lookup (cancelled tokens that come
 * and go hide no cancelled one still there).
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <keel.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "core.h" /* keel__core_of(loop)->cancelled */
#include "helpers/keel_test.h"

/*
 * Every test runs in its own process, so these start zeroed. Tasks record
 * what they saw here: a frame is freed when its task exits.
 */
struct outcome {
	int done;
	int res;      /* the await that was (or was not) cancelled */
	uint64_t ns;  /* how long it took */
	uint64_t end; /* when it ended (CLOCK_MONOTONIC) */
	int after;    /* a nop awaited after it */
	int routine_nop;
	int nops_ok; /* P_NOPS: nops that succeeded first */
};

static struct outcome g_out[16];
static struct kt_log g_log;
static uint64_t g_cancel_at; /* when cancel_token_cb ran */

/* Timer callbacks that cancel things from outside any task. */
static void cancel_token_cb(struct keel_loop *loop, struct keel_timer *tm,
			    void *arg)
{
	g_cancel_at = kt_now_ns();
	keel_token_cancel(arg);
}

static void cancel_root_cb(struct keel_loop *loop, struct keel_timer *tm,
			   void *arg)
{
	keel_token_cancel(keel_loop_token(loop));
}

static void arm(struct keel_loop *loop, struct keel_timer *tm, keel_timer_fn fn,
		void *arg, uint64_t delay)
{
	keel_timer_init(tm, fn, arg);
	cr_assert_eq(keel_timer_arm_after(loop, tm, delay), 0);
}

static struct keel_token *token_new(struct keel_loop *loop,
				    struct keel_token *parent)
{
	struct keel_token *tok = NULL;

	cr_assert_eq(keel_token_new(loop, parent, &tok), 0);
	cr_assert_not_null(tok);
	return tok;
}

/* A probe: waits in one kind of await and records how that went. */
enum probe_kind {
	P_RECV,	   /* recv on an idle socket */
	P_ACCEPT,  /* accept on a listener nobody connects to */
	P_SLEEP,   /* a sleep of `ns` */
	P_JOIN,	   /* join a child (sleeping `ns`) observing another token */
	P_LINKED,  /* recv with a linked timeout of `ns` */
	P_ROUTINE, /* recv inside a nested routine */
	P_NOPS,	   /* nops in a loop until one fails */
	P_SCOPE,   /* join a scope whose one child sleeps `ns` */
};

struct probe {
	struct keel_task task;
	struct keel_routine r;
	int kind;
	int fd;
	uint64_t ns;
	struct outcome *out;
	struct outcome *child_out; /* P_JOIN: the child's record */
	uint64_t t0;
	int i;
	struct probe *child;
	struct keel_scope scope;
	char buf[64];
};

static int probe_step(struct keel_task *t);
static KEEL_TASK_TYPE(probe_task, struct probe, task, probe_step);

/* A nop, then a recv; returns the recv's result minus 1000 if negative. */
static int recv_routine(struct keel_task *t, struct probe *p)
{
	KEEL_BEGIN(&p->r);
	KEEL_AWAIT(&p->r, keel_nop(t));
	p->out->routine_nop = keel_res(t) + 1;
	KEEL_AWAIT(&p->r, keel_recv(t, p->fd, p->buf, sizeof(p->buf), 0));
	KEEL_ROUTINE_RETURN(&p->r, t,
			    keel_res(t) < 0 ? keel_res(t) - 1000 : keel_res(t));
}

static int probe_step(struct keel_task *t)
{
	struct probe *p = keel_container_of(t, struct probe, task);
	struct keel_token *other;

	KEEL_BEGIN(t);
	p->t0 = kt_now_ns();
	switch (p->kind) {
	case P_RECV:
		KEEL_AWAIT(t, keel_recv(t, p->fd, p->buf, sizeof(p->buf), 0));
		break;
	case P_ACCEPT:
		KEEL_AWAIT(t, keel_accept(t, p->fd, NULL, NULL, 0));
		break;
	case P_SLEEP:
		KEEL_AWAIT(t, keel_sleep(t, p->ns));
		break;
	case P_JOIN:
		p->child = keel_spawn(keel_task_loop(t), &probe_task,
				      KEEL_PRIO_NORMAL | KEEL_SPAWN_JOINABLE);
		if (!p->child)
			KEEL_EXIT(t, -ENOMEM);
		p->child->kind = P_SLEEP;
		p->child->ns = p->ns;
		p->child->out = p->child_out;
		/* Not the joiner's token: only the joiner is cancelled. */
		if (keel_token_new(keel_task_loop(t), NULL, &other))
			KEEL_EXIT(t, -ENOMEM);
		keel_task_set_token(keel_task_of(&probe_task, p->child), other);
		keel_token_release(other);
		KEEL_AWAIT(t,
			   keel_join(t, keel_task_of(&probe_task, p->child)));
		/* The child exits with 1000 + res > 0: a negative result is
		 * the join's own, and the child is still ours to detach. */
		if (keel_res(t) < 0)
			keel_task_detach(keel_task_of(&probe_task, p->child));
		break;
	case P_SCOPE:
		if (keel_scope_init(t, &p->scope, KEEL_SCOPE_COLLECT))
			KEEL_EXIT(t, -ENOMEM);
		p->child = keel_scope_spawn(&p->scope, &probe_task, 0);
		if (!p->child)
			KEEL_EXIT(t, -ENOMEM);
		p->child->kind = P_SLEEP;
		p->child->ns = p->ns;
		p->child->out = p->child_out;
		KEEL_AWAIT(t, keel_scope_join(t, &p->scope));
		keel_scope_fini(&p->scope);
		break;
	case P_LINKED:
		keel_op_timeout(t, p->ns);
		KEEL_AWAIT(t, keel_recv(t, p->fd, p->buf, sizeof(p->buf), 0));
		break;
	case P_ROUTINE:
		KEEL_AWAIT_CALL(t, recv_routine(t, p));
		break;
	case P_NOPS:
		for (p->i = 0; p->i < 10000000; p->i++) {
			KEEL_AWAIT(t, keel_nop(t));
			if (keel_res(t) != 0)
				break;
		}
		p->out->nops_ok = p->i;
		break;
	}
	p->out->end = kt_now_ns();
	p->out->ns = p->out->end - p->t0;
	p->out->res = keel_res(t);
	/* Level-triggered: the next await reports the cause too. */
	KEEL_AWAIT(t, keel_nop(t));
	p->out->after = keel_res(t);
	p->out->done = 1;
	KEEL_EXIT(t, 1000 + p->out->res);
}

static struct probe *spawn_probe(struct keel_loop *loop, int kind, int fd,
				 uint64_t ns, struct outcome *out)
{
	struct probe *p = kt_spawn(loop, &probe_task, KEEL_PRIO_NORMAL);

	p->kind = kind;
	p->fd = fd;
	p->ns = ns;
	p->out = out;
	return p;
}

static void assert_quiet(struct keel_loop *loop)
{
	struct keel_loop_stats s = kt_stats(loop);

	cr_assert_eq(s.tasks_live, 0, "tasks_live = %lu",
		     (unsigned long)s.tasks_live);
	cr_assert_eq(s.zombies, 0, "zombies = %lu", (unsigned long)s.zombies);
	cr_assert_eq(s.ops_inflight, 0, "ops_inflight = %lu",
		     (unsigned long)s.ops_inflight);
}

/*
 * Run one probe observing a token that a timer cancels after 20 ms; check
 * that its await ended then with -ECANCELED and the next one at once too.
 */
static void run_cancelled_probe(int kind, int fd, uint64_t ns, int want)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_token *tok = token_new(loop, NULL);
	struct keel_timer tm;
	struct probe *p;
	uint64_t t0;

	p = spawn_probe(loop, kind, fd, ns, &g_out[0]);
	p->child_out = &g_out[1];
	cr_assert_eq(keel_task_set_token(keel_task_of(&probe_task, p), tok), 0);
	arm(loop, &tm, cancel_token_cb, tok, KT_MS(20));
	t0 = kt_now_ns();
	kt_loop_run(loop);
	cr_assert(g_out[0].done, "the probe never finished");
	cr_assert_eq(g_out[0].res, want, "the await gave %d, expected %d",
		     g_out[0].res, want);
	/* It waited for the cancel, and ended soon after it. */
	cr_assert_neq(g_cancel_at, 0);
	cr_assert_geq(g_out[0].end, g_cancel_at, "ended before the cancel");
	cr_assert_lt(g_out[0].end - g_cancel_at, KT_MS(1000),
		     "ended %lu ns after the cancel",
		     (unsigned long)(g_out[0].end - g_cancel_at));
	cr_assert_eq(g_out[0].after, -ECANCELED, "a nop after it gave %d",
		     g_out[0].after);
	cr_assert_eq(keel_token_cause(tok), -ECANCELED);
	/* Nothing left behind kept the loop (a linked timeout, a timer). */
	if (kind != P_JOIN)
		cr_assert_lt(kt_now_ns() - t0, KT_MS(1000));
	assert_quiet(loop);
	keel_token_release(tok);
	keel_loop_destroy(loop);
}

Test(cancel, cancel_wakes_recv_on_idle_socket_and_steals_nothing, .timeout = 10)
{
	char c = 0;
	int fds[2];

	kt_tcp_pair(fds);
	run_cancelled_probe(P_RECV, fds[0], 0, -ECANCELED);
	/* The cancelled recv is gone: a byte sent now stays readable. */
	cr_assert_eq(write(fds[1], "x", 1), 1);
	cr_assert_eq(
	    poll(&(struct pollfd){.fd = fds[0], .events = POLLIN}, 1, 1000), 1);
	cr_assert_eq(recv(fds[0], &c, 1, MSG_DONTWAIT), 1);
	cr_assert_eq(c, 'x');
	close(fds[0]);
	close(fds[1]);
}

Test(cancel, cancel_wakes_accept_and_leaves_listener_usable, .timeout = 10)
{
	struct sockaddr_storage ss;
	socklen_t len;
	uint16_t port;
	int lfd = kt_listen(&port);
	int cfd, afd;

	run_cancelled_probe(P_ACCEPT, lfd, 0, -ECANCELED);
	/* No accept is left in flight to take the next connection. */
	kt_loopback_addr(port, &ss, &len);
	cfd = keel_tcp_socket(AF_INET);
	cr_assert_geq(cfd, 0);
	cr_assert_eq(connect(cfd, (struct sockaddr *)&ss, len), 0);
	cr_assert_eq(
	    poll(&(struct pollfd){.fd = lfd, .events = POLLIN}, 1, 1000), 1);
	afd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
	cr_assert_geq(afd, 0, "the connection was taken: %s", strerror(errno));
	close(afd);
	close(cfd);
	close(lfd);
}

Test(cancel, cancel_wakes_long_sleep, .timeout = 10)
{
	run_cancelled_probe(P_SLEEP, -1, KT_MS(5000), -ECANCELED);
}

Test(cancel, cancel_wakes_join_but_not_the_joined_child, .timeout = 10)
{
	/* The child sleeps 300 ms under its own token and is detached. */
	run_cancelled_probe(P_JOIN, -1, KT_MS(300), -ECANCELED);
	cr_assert(g_out[1].done, "the child never finished");
	cr_assert_eq(g_out[1].res, 0, "the child's sleep gave %d",
		     g_out[1].res);
	cr_assert_geq(g_out[1].ns, KT_MS(290));
}

Test(cancel, cancel_of_recv_with_linked_timeout_is_ecanceled, .timeout = 10)
{
	int fds[2];

	/* A 5 s linked timeout: it must go with the recv, not hold the loop,
	 * and the result is the token's cause, not -ETIMEDOUT. */
	kt_tcp_pair(fds);
	run_cancelled_probe(P_LINKED, fds[0], KT_MS(5000), -ECANCELED);
	close(fds[0]);
	close(fds[1]);
}

Test(cancel, cancel_reaches_await_inside_nested_routine, .timeout = 10)
{
	int fds[2];

	kt_tcp_pair(fds);
	/* The routine's own code ran after its cancelled recv (- 1000). */
	run_cancelled_probe(P_ROUTINE, fds[0], 0, -ECANCELED - 1000);
	cr_assert_eq(g_out[0].routine_nop, 1, "the routine's nop gave %d",
		     g_out[0].routine_nop - 1);
	close(fds[0]);
	close(fds[1]);
}

/*
 * After a cancel every await returns the cause at once, without starting
 * anything; keel_close still runs.
 */
struct level {
	struct keel_task task;
	int fd;
	int lfd;
	int res[8];
	uint64_t t0;
	struct probe *child;
	char buf[16];
};

static uint64_t g_level_ns;
static int g_level_res[8];
static int g_level_cancel = 12345;

static int level_step(struct keel_task *t);
static KEEL_TASK_TYPE(level_task, struct level, task, level_step);

static int level_step(struct keel_task *t)
{
	struct level *l = keel_container_of(t, struct level, task);

	KEEL_BEGIN(t);
	/* A child spawned before the cancel observes the old token. */
	l->child = keel_spawn(keel_task_loop(t), &probe_task,
			      KEEL_PRIO_NORMAL | KEEL_SPAWN_JOINABLE);
	if (!l->child)
		KEEL_EXIT(t, -ENOMEM);
	l->child->kind = P_SLEEP;
	l->child->ns = KT_MS(100);
	l->child->out = &g_out[1];
	g_level_cancel = keel_task_cancel(t);
	l->t0 = kt_now_ns();
	KEEL_AWAIT(t, keel_nop(t));
	l->res[0] = keel_res(t);
	KEEL_AWAIT(t, keel_recv(t, l->fd, l->buf, sizeof(l->buf), 0));
	l->res[1] = keel_res(t);
	KEEL_AWAIT(t, keel_accept(t, l->lfd, NULL, NULL, 0));
	l->res[2] = keel_res(t);
	KEEL_AWAIT(t, keel_join(t, keel_task_of(&probe_task, l->child)));
	l->res[3] = keel_res(t);
	KEEL_AWAIT(t, keel_send(t, l->fd, "x", 1, 0));
	l->res[4] = keel_res(t);
	keel_op_timeout(t, KT_MS(5000));
	KEEL_AWAIT(t, keel_recv(t, l->fd, l->buf, sizeof(l->buf), 0));
	l->res[5] = keel_res(t);
	KEEL_AWAIT(t, keel_send_all(t, l->fd, "yy", 2, 0));
	l->res[6] = keel_res(t);
	g_level_ns = kt_now_ns() - l->t0;
	/* Cleanup is not an await the token stops. */
	KEEL_AWAIT(t, keel_close(t, l->fd));
	l->res[7] = keel_res(t);
	if (l->res[3] < 0)
		keel_task_detach(keel_task_of(&probe_task, l->child));
	memcpy(g_level_res, l->res, sizeof(l->res));
	KEEL_END(t);
}

Test(cancel, cancelled_token_makes_every_later_await_return_at_once,
     .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct level *l;
	uint16_t port;
	int lfd = kt_listen(&port);
	char c;
	int fds[2];

	kt_tcp_pair(fds);
	l = kt_spawn(loop, &level_task, KEEL_PRIO_NORMAL);
	l->fd = fds[0];
	l->lfd = lfd;
	kt_loop_run(loop);
	cr_assert_eq(g_level_cancel, 0);
	for (int i = 0; i < 7; i++)
		cr_assert_eq(g_level_res[i], -ECANCELED, "await %d gave %d", i,
			     g_level_res[i]);
	cr_assert_lt(g_level_ns, KT_MS(500), "the awaits took %lu ns",
		     (unsigned long)g_level_ns);
	cr_assert_eq(g_level_res[7], 0, "keel_close gave %d", g_level_res[7]);
	cr_assert_eq(fcntl(fds[0], F_GETFD), -1, "fd still open");
	/* Nothing was sent: the peer sees end of stream and no byte. */
	cr_assert_eq(recv(fds[1], &c, 1, 0), 0);
	/* The child observed the old token: it slept its full time. */
	cr_assert_eq(g_out[1].res, 0);
	assert_quiet(loop);
	keel_loop_destroy(loop);
	close(fds[1]);
	close(lfd);
}

/* A sleep is an await like any other: under a cancelled token it returns
 * the cause at once instead of sleeping. */
struct late_sleeper {
	struct keel_task task;
	uint64_t t0;
};

static int g_late_sleep = 12345;
static uint64_t g_late_sleep_ns;

static int late_sleeper_step(struct keel_task *t);
static KEEL_TASK_TYPE(late_sleeper_task, struct late_sleeper, task,
		      late_sleeper_step);

static int late_sleeper_step(struct keel_task *t)
{
	struct late_sleeper *s =
	    keel_container_of(t, struct late_sleeper, task);

	KEEL_BEGIN(t);
	keel_task_cancel(t);
	s->t0 = kt_now_ns();
	KEEL_AWAIT(t, keel_sleep(t, KT_MS(2000)));
	g_late_sleep = keel_res(t);
	g_late_sleep_ns = kt_now_ns() - s->t0;
	KEEL_END(t);
}

Test(cancel, sleep_under_cancelled_token_returns_cause_at_once, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);

	kt_spawn(loop, &late_sleeper_task, KEEL_PRIO_NORMAL);
	kt_loop_run(loop);
	cr_assert_eq(g_late_sleep, -ECANCELED, "the sleep gave %d after %lu ns",
		     g_late_sleep, (unsigned long)g_late_sleep_ns);
	cr_assert_lt(g_late_sleep_ns, KT_MS(500), "slept %lu ns",
		     (unsigned long)g_late_sleep_ns);
	keel_loop_destroy(loop);
}

/*
 * Cancel racing completion. A sender writes chunks and cancels the
 * receiver's token, in varying orders and turns (or a thread writes while a
 * task cancels at random moments); the receiver takes a fresh token each
 * round and, after a cancelled recv, drains what is readable inside a
 * shield. Whatever happened, every byte arrives once and in order.
 */
#define RACE_ROUNDS	   400
#define RACE_THREAD_ROUNDS 4000
#define RACE_BUF	   (RACE_THREAD_ROUNDS * 64)

static struct {
	struct keel_token *tok; /* the receiver's current token */
	size_t got;
	size_t sent;
	size_t shielded; /* bytes got inside the shield */
	size_t mismatch;
	int data;      /* recvs that returned data */
	int won;       /* of those, recvs whose token was cancelled meanwhile */
	int cancelled; /* recvs that returned -ECANCELED */
	int cancels;   /* cancels issued */
	int eof;
	int err;
} g_race;

static char g_race_buf[RACE_BUF + 64];

static size_t race_chunk(int i)
{
	return (size_t)(i * 7 % 61) + 1;
}

struct race_rx {
	struct keel_task task;
	int fd;
	int drain;
	struct keel_shield shield;
	size_t got;
};

static int race_rx_step(struct keel_task *t);
static KEEL_TASK_TYPE(race_rx_task, struct race_rx, task, race_rx_step);

static int race_rx_step(struct keel_task *t)
{
	struct race_rx *r = keel_container_of(t, struct race_rx, task);
	struct keel_token *tok;

	KEEL_BEGIN(t);
	for (;;) {
		if (keel_token_new(keel_task_loop(t), NULL, &tok) ||
		    keel_task_set_token(t, tok)) {
			g_race.err = -ENOMEM;
			break;
		}
		if (g_race.tok)
			keel_token_release(g_race.tok);
		g_race.tok = tok;
		KEEL_AWAIT(t, keel_recv(t, r->fd, g_race_buf + r->got,
					sizeof(g_race_buf) - r->got, 0));
		if (keel_res(t) == 0) {
			g_race.eof = 1;
			break;
		}
		if (keel_res(t) > 0) {
			/* Completed first: the data is delivered even though
			 * the token may have been cancelled meanwhile. */
			r->got += (size_t)keel_res(t);
			g_race.data++;
			if (keel_token_cancelled(g_race.tok))
				g_race.won++;
			continue;
		}
		if (keel_res(t) != -ECANCELED) {
			g_race.err = keel_res(t);
			break;
		}
		g_race.cancelled++;
		/* What the cancelled recv did not take is still there. */
		if (keel_shield_begin(t, &r->shield, KT_MS(2000))) {
			g_race.err = -ENOMEM;
			break;
		}
		do {
			KEEL_AWAIT(t, keel_recv(t, r->fd, g_race_buf + r->got,
						sizeof(g_race_buf) - r->got,
						MSG_DONTWAIT));
			r->drain = keel_res(t);
			if (r->drain > 0) {
				r->got += (size_t)r->drain;
				g_race.shielded += (size_t)r->drain;
			}
		} while (r->drain > 0);
		keel_shield_end(t, &r->shield);
		if (r->drain == 0) {
			g_race.eof = 1;
			break;
		}
		if (r->drain != -EAGAIN) {
			g_race.err = r->drain;
			break;
		}
	}
	if (g_race.tok)
		keel_token_release(g_race.tok);
	g_race.tok = NULL;
	g_race.got = r->got;
	g_race.mismatch = kt_pattern_mismatch(g_race_buf, r->got, 0, 3);
	KEEL_END(t);
}

static void race_cancel(void)
{
	if (g_race.tok) {
		keel_token_cancel(g_race.tok);
		g_race.cancels++;
	}
}

/* The in-loop sender: writes, then cancels at a varying point. */
struct race_tx {
	struct keel_task task;
	int fd;
	int i;
	size_t len;
	char buf[64];
};

static int race_tx_step(struct keel_task *t);
static KEEL_TASK_TYPE(race_tx_task, struct race_tx, task, race_tx_step);

static int race_tx_step(struct keel_task *t)
{
	struct race_tx *x = keel_container_of(t, struct race_tx, task);

	KEEL_BEGIN(t);
	for (x->i = 0; x->i < RACE_ROUNDS; x->i++) {
		x->len = race_chunk(x->i);
		kt_pattern_fill(x->buf, x->len, g_race.sent, 3);
		if (write(x->fd, x->buf, x->len) != (ssize_t)x->len) {
			g_race.err = -EIO;
			break;
		}
		g_race.sent += x->len;
		switch (x->i % 4) {
		case 0: /* the same step as the write */
			race_cancel();
			break;
		case 1: /* after a trip through the ring */
			KEEL_AWAIT(t, keel_nop(t));
			race_cancel();
			break;
		case 2: /* after the receiver may have run */
			KEEL_YIELD(t);
			race_cancel();
			break;
		case 3: /* sometimes no cancel at all */
			if (x->i % 8 == 3)
				race_cancel();
			break;
		}
		KEEL_AWAIT(t, keel_nop(t));
	}
	shutdown(x->fd, SHUT_WR);
	KEEL_END(t);
}

static uint32_t xorshift(uint32_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 17;
	*s ^= *s << 5;
	return *s;
}

/* The threaded sender: writes while the loop runs, then shuts down. */
struct race_thread {
	int fd;
	size_t sent;
	int err;
};

static void *race_writer(void *arg)
{
	struct race_thread *w = arg;
	uint32_t seed = 12345;
	char buf[64];

	for (int i = 0; i < RACE_THREAD_ROUNDS; i++) {
		size_t len = race_chunk(i);
		struct timespec ts = {.tv_nsec = xorshift(&seed) % 30000};

		kt_pattern_fill(buf, len, w->sent, 3);
		if (write(w->fd, buf, len) != (ssize_t)len) {
			w->err = errno;
			break;
		}
		w->sent += len;
		if (i % 3)
			nanosleep(&ts, NULL);
	}
	shutdown(w->fd, SHUT_WR);
	return NULL;
}

/* Cancels the receiver's token at random moments until it is done. */
struct race_canceller {
	struct keel_task task;
	uint32_t seed;
};

static int race_canceller_step(struct keel_task *t);
static KEEL_TASK_TYPE(race_canceller_task, struct race_canceller, task,
		      race_canceller_step);

static int race_canceller_step(struct keel_task *t)
{
	struct race_canceller *c =
	    keel_container_of(t, struct race_canceller, task);

	KEEL_BEGIN(t);
	c->seed = 777;
	while (!g_race.eof && !g_race.err) {
		if (xorshift(&c->seed) % 4)
			KEEL_AWAIT(t,
				   keel_sleep(t, xorshift(&c->seed) % 60000));
		else
			KEEL_AWAIT(t, keel_nop(t));
		race_cancel();
	}
	KEEL_END(t);
}

static void check_race(struct keel_loop *loop)
{
	cr_assert_eq(g_race.err, 0, "error %d", g_race.err);
	cr_assert(g_race.eof, "no end of stream");
	cr_assert_eq(g_race.got, g_race.sent, "got %zu of %zu bytes",
		     g_race.got, g_race.sent);
	cr_assert_eq(g_race.mismatch, SIZE_MAX, "bad byte at %zu",
		     g_race.mismatch);
	cr_assert_gt(g_race.cancelled, 0, "no recv was ever cancelled");
	cr_log_info("%d cancels; %d recvs with data (%d despite a cancel), "
		    "%d cancelled, %zu bytes in shields",
		    g_race.cancels, g_race.data, g_race.won, g_race.cancelled,
		    g_race.shielded);
	assert_quiet(loop);
}

static void run_race(int fds[2], int threaded)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct race_thread w = {.fd = fds[1]};
	struct race_rx *r;
	pthread_t th;

	r = kt_spawn(loop, &race_rx_task, KEEL_PRIO_NORMAL);
	r->fd = fds[0];
	if (threaded) {
		kt_spawn(loop, &race_canceller_task, KEEL_PRIO_NORMAL);
		cr_assert_eq(pthread_create(&th, NULL, race_writer, &w), 0);
	} else {
		struct race_tx *x =
		    kt_spawn(loop, &race_tx_task, KEEL_PRIO_NORMAL);

		x->fd = fds[1];
	}
	kt_loop_run(loop);
	if (threaded) {
		pthread_join(th, NULL);
		cr_assert_eq(w.err, 0, "write: %s", strerror(w.err));
		g_race.sent = w.sent;
	}
	check_race(loop);
	keel_loop_destroy(loop);
	close(fds[0]);
	close(fds[1]);
}

Test(cancel, cancel_racing_completion_loses_no_byte_unix, .timeout = 30)
{
	int fds[2];

	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds),
		     0);
	run_race(fds, 0);
}

Test(cancel, cancel_racing_completion_loses_no_byte_tcp, .timeout = 30)
{
	int fds[2];

	kt_tcp_pair(fds);
	run_race(fds, 0);
}

Test(cancel, cancel_racing_writer_thread_loses_no_byte, .timeout = 60)
{
	int fds[2];

	kt_tcp_pair(fds);
	run_race(fds, 1);
}

/*
 * Deadlines. A driver builds the tokens, runs a probe under the child
 * token and records what it saw (tokens are released before the loop
 * ends: an armed deadline is a timer and keeps the loop running).
 */
static struct {
	uint64_t child_own;   /* child's deadline before the parent had one */
	uint64_t child_eff;   /* child's effective deadline afterwards */
	uint64_t parent;      /* parent's deadline */
	int parent_cause;     /* after the probe */
	int child_cause;      /* after the probe */
	int grandchild_cause; /* a token made after the timeout */
	int status;	      /* the probe's join */
} g_dl;

struct dl_driver {
	struct keel_task task;
	uint64_t parent_ns;
	uint64_t child_ns;
	int probe_kind;
	int fd;
	struct keel_token *parent;
	struct keel_token *child;
	struct probe *p;
};

static int dl_driver_step(struct keel_task *t);
static KEEL_TASK_TYPE(dl_driver_task, struct dl_driver, task, dl_driver_step);

static int dl_driver_step(struct keel_task *t)
{
	struct dl_driver *d = keel_container_of(t, struct dl_driver, task);
	struct keel_loop *loop = keel_task_loop(t);
	struct keel_token *gc;

	KEEL_BEGIN(t);
	if (keel_token_new(loop, NULL, &d->parent) ||
	    keel_token_new(loop, d->parent, &d->child))
		KEEL_EXIT(t, -ENOMEM);
	if (keel_token_set_timeout(d->child, d->child_ns))
		KEEL_EXIT(t, -ENOMEM);
	g_dl.child_own = keel_token_deadline(d->child);
	if (keel_token_set_timeout(d->parent, d->parent_ns))
		KEEL_EXIT(t, -ENOMEM);
	g_dl.child_eff = keel_token_deadline(d->child);
	g_dl.parent = keel_token_deadline(d->parent);
	d->p = keel_spawn(loop, &probe_task,
			  KEEL_PRIO_NORMAL | KEEL_SPAWN_JOINABLE);
	if (!d->p)
		KEEL_EXIT(t, -ENOMEM);
	d->p->kind = d->probe_kind;
	d->p->fd = d->fd;
	d->p->ns = KT_MS(5000);
	d->p->out = &g_out[0];
	keel_task_set_token(keel_task_of(&probe_task, d->p), d->child);
	KEEL_AWAIT(t, keel_join(t, keel_task_of(&probe_task, d->p)));
	g_dl.status = keel_res(t);
	g_dl.parent_cause = keel_token_cause(d->parent);
	g_dl.child_cause = keel_token_cause(d->child);
	if (keel_token_new(loop, d->child, &gc))
		KEEL_EXIT(t, -ENOMEM);
	g_dl.grandchild_cause = keel_token_cause(gc);
	keel_token_release(gc);
	keel_token_release(d->child);
	keel_token_release(d->parent);
	KEEL_END(t);
}

static void run_deadlines(uint64_t parent_ns, uint64_t child_ns, int kind,
			  int fd)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct dl_driver *d = kt_spawn(loop, &dl_driver_task, KEEL_PRIO_NORMAL);
	uint64_t t0 = kt_now_ns();

	d->parent_ns = parent_ns;
	d->child_ns = child_ns;
	d->probe_kind = kind;
	d->fd = fd;
	kt_loop_run(loop);
	/* The loop did not wait for the longer deadline. */
	cr_assert_lt(kt_now_ns() - t0, KT_MS(2000));
	cr_assert(g_out[0].done);
	assert_quiet(loop);
	cr_assert_eq(kt_stats(loop).timers_armed, 0);
	keel_loop_destroy(loop);
}

Test(cancel, parent_deadline_cuts_child_longer_one_with_etimedout,
     .timeout = 10)
{
	run_deadlines(KT_MS(30), KT_MS(10000), P_SLEEP, -1);
	cr_assert_neq(g_dl.child_own, UINT64_MAX);
	cr_assert_eq(g_dl.child_eff, g_dl.parent,
		     "child's deadline %lu, parent's %lu",
		     (unsigned long)g_dl.child_eff, (unsigned long)g_dl.parent);
	cr_assert_lt(g_dl.child_eff, g_dl.child_own);
	cr_assert_eq(g_out[0].res, -ETIMEDOUT, "the sleep gave %d",
		     g_out[0].res);
	/* Cut at the parent's deadline, not before, not much after. */
	cr_assert_geq(g_out[0].end, g_dl.parent);
	cr_assert_lt(g_out[0].end - g_dl.parent, KT_MS(1000));
	cr_assert_eq(g_out[0].after, -ETIMEDOUT);
	cr_assert_eq(g_dl.status, 1000 - ETIMEDOUT);
	cr_assert_eq(g_dl.parent_cause, -ETIMEDOUT);
	cr_assert_eq(g_dl.child_cause, -ETIMEDOUT);
	/* A child of a timed-out token starts with its cause. */
	cr_assert_eq(g_dl.grandchild_cause, -ETIMEDOUT);
}

Test(cancel, parent_deadline_turns_cancelled_recv_into_etimedout, .timeout = 10)
{
	int fds[2];

	kt_tcp_pair(fds);
	run_deadlines(KT_MS(30), KT_MS(10000), P_RECV, fds[0]);
	cr_assert_eq(g_out[0].res, -ETIMEDOUT, "the recv gave %d",
		     g_out[0].res);
	cr_assert_geq(g_out[0].end, g_dl.parent);
	cr_assert_lt(g_out[0].end - g_dl.parent, KT_MS(1000));
	close(fds[0]);
	close(fds[1]);
}

Test(cancel, child_earlier_deadline_times_out_child_alone, .timeout = 10)
{
	run_deadlines(KT_MS(10000), KT_MS(30), P_SLEEP, -1);
	cr_assert_eq(g_dl.child_eff, g_dl.child_own);
	cr_assert_lt(g_dl.child_eff, g_dl.parent);
	cr_assert_eq(g_out[0].res, -ETIMEDOUT, "the sleep gave %d",
		     g_out[0].res);
	cr_assert_geq(g_out[0].end, g_dl.child_own);
	cr_assert_lt(g_out[0].end - g_dl.child_own, KT_MS(1000));
	cr_assert_eq(g_dl.child_cause, -ETIMEDOUT);
	cr_assert_eq(g_dl.parent_cause, 0, "the parent was cancelled (%d)",
		     g_dl.parent_cause);
}

Test(cancel, first_cause_wins_and_deadline_can_be_cleared, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_token *timed = token_new(loop, NULL);
	struct keel_token *cancelled = token_new(loop, NULL);
	struct keel_token *cleared = token_new(loop, NULL);
	struct keel_token *kid;
	struct keel_timer tm;

	cr_assert_eq(keel_token_deadline(timed), UINT64_MAX);
	cr_assert_eq(keel_token_set_timeout(timed, KT_MS(5)), 0);
	keel_token_cancel(cancelled);
	cr_assert_eq(keel_token_set_timeout(cancelled, KT_MS(1)), 0);
	cr_assert_eq(keel_token_set_timeout(cleared, KT_MS(2)), 0);
	cr_assert_eq(keel_token_set_deadline(cleared, UINT64_MAX), 0);
	cr_assert_eq(keel_token_deadline(cleared), UINT64_MAX);
	/* A plain timer keeps the loop running past every deadline. */
	arm(loop, &tm, cancel_token_cb, timed, KT_MS(30));
	kt_loop_run(loop);
	cr_assert_eq(keel_token_cause(timed), -ETIMEDOUT,
		     "a cancel after the deadline replaced its cause");
	cr_assert(keel_token_cancelled(timed));
	cr_assert_eq(keel_token_cause(cancelled), -ECANCELED,
		     "a deadline after the cancel replaced its cause");
	cr_assert_eq(keel_token_cause(cleared), 0,
		     "a cleared deadline still fired");
	cr_assert(!keel_token_cancelled(cleared));
	kid = token_new(loop, cancelled);
	cr_assert_eq(keel_token_cause(kid), -ECANCELED);
	keel_token_release(kid);
	keel_token_release(timed);
	keel_token_release(cancelled);
	keel_token_release(cleared);
	keel_loop_destroy(loop);
}

Test(cancel, cancel_reaches_descendants_only, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_token *a = token_new(loop, NULL);
	struct keel_token *b1 = token_new(loop, a);
	struct keel_token *b2 = token_new(loop, a);
	struct keel_token *c = token_new(loop, b1);

	keel_token_cancel(b1);
	cr_assert_eq(keel_token_cause(b1), -ECANCELED);
	cr_assert_eq(keel_token_cause(c), -ECANCELED);
	cr_assert_eq(keel_token_cause(a), 0, "the parent was cancelled");
	cr_assert_eq(keel_token_cause(b2), 0, "a sibling was cancelled");
	cr_assert_eq(keel_token_cause(keel_loop_token(loop)), 0);
	keel_token_cancel(a);
	cr_assert_eq(keel_token_cause(b2), -ECANCELED);
	/* References: a child keeps its parent; release in any order. */
	cr_assert_eq(keel_token_ref(a), a);
	keel_token_release(a);
	keel_token_release(a);
	keel_token_release(b1);
	keel_token_release(b2);
	keel_token_release(c);
	keel_loop_destroy(loop);
}

/* Callbacks. Each logs 100 * id + its cause's errno. */
struct cb_ctx {
	int id;
	struct keel_token *want_tok;
	struct keel_token_cb *remove; /* another callback to remove */
	struct keel_token_cb *self;   /* its own registration, to remove */
	struct keel_token *release;   /* a token reference to drop */
};

static int g_cb_bad_tok;

static void log_cb(struct keel_token *tok, int cause, void *arg)
{
	struct cb_ctx *x = arg;

	if (x->want_tok && tok != x->want_tok)
		g_cb_bad_tok++;
	kt_log_push(&g_log, 100 * x->id - cause);
	if (x->remove)
		keel_token_cb_remove(x->remove);
	if (x->self)
		keel_token_cb_remove(x->self);
	if (x->release)
		keel_token_release(x->release);
}

Test(cancel, callbacks_run_once_lifo_and_parent_before_child, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_token *p = token_new(loop, NULL);
	struct keel_token *c = token_new(loop, p);
	struct keel_token_cb cb[4];
	struct cb_ctx x[4] = {
	    {.id = 1, .want_tok = p},
	    {.id = 2, .want_tok = p},
	    {.id = 3, .want_tok = p},
	    {.id = 4, .want_tok = c},
	};

	/* Registered on the child first: the parent's still run first. */
	keel_token_on_cancel(c, &cb[3], log_cb, &x[3]);
	for (int i = 0; i < 3; i++)
		keel_token_on_cancel(p, &cb[i], log_cb, &x[i]);
	cr_assert_eq(g_log.n, 0, "a callback ran before the cancel");
	keel_token_cancel(p);
	/* Newest first on one token (as .NET), then the child's. */
	kt_log_expect(&g_log,
		      (const int[]){300 + ECANCELED, 200 + ECANCELED,
				    100 + ECANCELED, 400 + ECANCELED},
		      4);
	cr_assert_eq(g_cb_bad_tok, 0, "a callback got the wrong token");
	/* Once only: cancelling again runs nothing; removal is safe. */
	keel_token_cancel(p);
	keel_token_cancel(c);
	for (int i = 0; i < 4; i++)
		keel_token_cb_remove(&cb[i]);
	cr_assert_eq(g_log.n, 4);
	keel_token_release(c);
	keel_token_release(p);
	keel_loop_destroy(loop);
}

Test(cancel, callback_on_cancelled_token_runs_at_once_with_cause, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_token *tok = token_new(loop, NULL);
	struct keel_token *timed = token_new(loop, NULL);
	struct keel_token_cb cb, cb2;
	struct cb_ctx x = {.id = 1, .want_tok = tok};
	struct cb_ctx y = {.id = 2, .want_tok = timed};

	keel_token_cancel(tok);
	keel_token_on_cancel(tok, &cb, log_cb, &x);
	kt_log_expect(&g_log, (const int[]){100 + ECANCELED}, 1);
	/* It is not registered any more: removing it is a no-op. */
	keel_token_cb_remove(&cb);
	cr_assert_eq(keel_token_set_timeout(timed, KT_MS(1)), 0);
	kt_loop_run(loop);
	keel_token_on_cancel(timed, &cb2, log_cb, &y);
	kt_log_expect(&g_log, (const int[]){100 + ECANCELED, 200 + ETIMEDOUT},
		      2);
	cr_assert_eq(g_cb_bad_tok, 0);
	keel_token_release(tok);
	keel_token_release(timed);
	keel_loop_destroy(loop);
}

Test(cancel, callback_removed_before_cancel_never_runs, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_token *tok = token_new(loop, NULL);
	struct keel_token_cb cb[3], never;
	struct cb_ctx x[3] = {{.id = 1}, {.id = 2}, {.id = 3}};

	for (int i = 0; i < 3; i++)
		keel_token_on_cancel(tok, &cb[i], log_cb, &x[i]);
	/* The middle one of the list, then a second time. */
	keel_token_cb_remove(&cb[1]);
	keel_token_cb_remove(&cb[1]);
	/* Never registered (zeroed): removing it is safe. */
	memset(&never, 0, sizeof(never));
	keel_token_cb_remove(&never);
	keel_token_cancel(tok);
	kt_log_expect(&g_log, (const int[]){300 + ECANCELED, 100 + ECANCELED},
		      2);
	keel_token_release(tok);
	keel_loop_destroy(loop);
}

Test(cancel, callback_removing_others_and_itself_inside_callback_is_safe,
     .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_token *tok = token_new(loop, NULL);
	struct keel_token_cb cb[4];
	struct cb_ctx x[4] = {{.id = 1}, {.id = 2}, {.id = 3}, {.id = 4}};

	/* 4 runs first (newest): it removes 2 and itself; 3 removes 1,
	 * which was about to run. */
	x[3].remove = &cb[1];
	x[3].self = &cb[3];
	x[2].remove = &cb[0];
	for (int i = 0; i < 4; i++)
		keel_token_on_cancel(tok, &cb[i], log_cb, &x[i]);
	keel_token_cancel(tok);
	kt_log_expect(&g_log, (const int[]){400 + ECANCELED, 300 + ECANCELED},
		      2);
	keel_token_release(tok);
	keel_loop_destroy(loop);
}

Test(cancel, callback_dropping_last_token_reference_is_safe, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_token *tok = token_new(loop, NULL);
	struct keel_token *p = token_new(loop, NULL);
	struct keel_token *c = token_new(loop, p);
	struct keel_token_cb cb[2], cbp, cbc;
	struct cb_ctx x[2] = {{.id = 1}, {.id = 2, .release = tok}};
	struct cb_ctx xp = {.id = 3, .release = c};
	struct cb_ctx xc = {.id = 4};

	/* The first callback to run drops the only reference to the token
	 * being cancelled; the next one still runs (ASan checks the rest). */
	keel_token_on_cancel(tok, &cb[0], log_cb, &x[0]);
	keel_token_on_cancel(tok, &cb[1], log_cb, &x[1]);
	keel_token_cancel(tok);
	kt_log_expect(&g_log, (const int[]){200 + ECANCELED, 100 + ECANCELED},
		      2);
	/* A parent's callback frees its child: the child's callback then
	 * belongs to a freed token and never runs. */
	keel_token_on_cancel(p, &cbp, log_cb, &xp);
	keel_token_on_cancel(c, &cbc, log_cb, &xc);
	keel_token_cancel(p);
	kt_log_expect(
	    &g_log,
	    (const int[]){200 + ECANCELED, 100 + ECANCELED, 300 + ECANCELED},
	    3);
	keel_token_cb_remove(&cbc);
	keel_token_release(p);
	keel_loop_destroy(loop);
}

Test(cancel, callback_of_released_token_never_runs, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_token *p = token_new(loop, NULL);
	struct keel_token *c = token_new(loop, p);
	struct keel_token_cb cb;
	struct cb_ctx x = {.id = 1};

	keel_token_on_cancel(c, &cb, log_cb, &x);
	keel_token_release(c); /* freed: the last reference */
	keel_token_cancel(p);
	keel_token_cb_remove(&cb);
	cr_assert_eq(g_log.n, 0, "a callback of a freed token ran");
	keel_token_release(p);
	keel_loop_destroy(loop);
}

Test(cancel, deadline_runs_callbacks_with_etimedout, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_token *p = token_new(loop, NULL);
	struct keel_token *c = token_new(loop, p);
	struct keel_token_cb cbp, cbc;
	struct cb_ctx xp = {.id = 1, .want_tok = p};
	struct cb_ctx xc = {.id = 2, .want_tok = c};
	uint64_t t0 = kt_now_ns();

	keel_token_on_cancel(p, &cbp, log_cb, &xp);
	keel_token_on_cancel(c, &cbc, log_cb, &xc);
	cr_assert_eq(keel_token_set_timeout(p, KT_MS(10)), 0);
	/* Only the deadline's timer keeps the loop running. */
	kt_loop_run(loop);
	cr_assert_geq(kt_now_ns() - t0, KT_MS(10));
	kt_log_expect(&g_log, (const int[]){100 + ETIMEDOUT, 200 + ETIMEDOUT},
		      2);
	cr_assert_eq(g_cb_bad_tok, 0);
	keel_token_release(c);
	keel_token_release(p);
	keel_loop_destroy(loop);
}

Test(cancel, root_token_cancels_every_task, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_token *own = token_new(loop, NULL);
	struct keel_timer tm;
	struct probe *p;
	uint16_t port;
	int lfd = kt_listen(&port);
	int fds[2], fds2[2];
	uint64_t t0;

	kt_tcp_pair(fds);
	kt_tcp_pair(fds2);
	spawn_probe(loop, P_RECV, fds[0], 0, &g_out[0]);
	spawn_probe(loop, P_ACCEPT, lfd, 0, &g_out[1]);
	spawn_probe(loop, P_SLEEP, -1, KT_MS(5000), &g_out[2]);
	p = spawn_probe(loop, P_JOIN, -1, KT_MS(5000), &g_out[3]);
	p->child_out = &g_out[4];
	spawn_probe(loop, P_NOPS, -1, 0, &g_out[5]);
	spawn_probe(loop, P_LINKED, fds2[0], KT_MS(5000), &g_out[6]);
	/* A task with a token of its own, a child of the root. */
	p = spawn_probe(loop, P_SLEEP, -1, KT_MS(5000), &g_out[7]);
	keel_task_set_token(keel_task_of(&probe_task, p), own);
	p = spawn_probe(loop, P_ROUTINE, fds2[1], 0, &g_out[8]);
	arm(loop, &tm, cancel_root_cb, NULL, KT_MS(20));
	t0 = kt_now_ns();
	kt_loop_run(loop);
	cr_assert_lt(kt_now_ns() - t0, KT_MS(2000));
	for (int i = 0; i < 9; i++) {
		int want = i == 8 ? -ECANCELED - 1000 : -ECANCELED;

		cr_assert(g_out[i].done, "task %d never finished", i);
		cr_assert_eq(g_out[i].res, want, "task %d: await gave %d", i,
			     g_out[i].res);
		cr_assert_eq(g_out[i].after, -ECANCELED, "task %d: nop gave %d",
			     i, g_out[i].after);
	}
	cr_assert_eq(keel_token_cause(own), -ECANCELED);
	cr_assert_eq(keel_token_cause(keel_loop_token(loop)), -ECANCELED);
	assert_quiet(loop);
	/* A task spawned later starts cancelled: its first nop fails. */
	memset(&g_out[0], 0, sizeof(g_out[0]));
	spawn_probe(loop, P_NOPS, -1, 0, &g_out[0]);
	kt_loop_run(loop);
	cr_assert_eq(g_out[0].res, -ECANCELED);
	cr_assert_eq(g_out[0].nops_ok, 0);
	keel_token_release(own);
	keel_loop_destroy(loop);
	close(lfd);
	close(fds[0]);
	close(fds[1]);
	close(fds2[0]);
	close(fds2[1]);
}

/* keel_task_cancel: one task, not its siblings nor the root. */
static struct {
	struct keel_task *victim;
	struct keel_task *bystander;
	int victim_cause;
	int bystander_cause;
	int bystander_root;
	int root_cause;
	int rc;
} g_tc;

static void task_cancel_cb(struct keel_loop *loop, struct keel_timer *tm,
			   void *arg)
{
	g_tc.rc = keel_task_cancel(g_tc.victim);
	g_tc.victim_cause = keel_token_cause(keel_task_token(g_tc.victim));
	g_tc.bystander_cause =
	    keel_token_cause(keel_task_token(g_tc.bystander));
	g_tc.bystander_root =
	    keel_task_token(g_tc.bystander) == keel_loop_token(loop);
	g_tc.root_cause = keel_token_cause(keel_loop_token(loop));
}

Test(cancel, task_cancel_cancels_only_that_task, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_timer tm;
	struct probe *a, *b;

	a = spawn_probe(loop, P_SLEEP, -1, KT_MS(600), &g_out[0]);
	b = spawn_probe(loop, P_SLEEP, -1, KT_MS(600), &g_out[1]);
	g_tc.victim = keel_task_of(&probe_task, a);
	g_tc.bystander = keel_task_of(&probe_task, b);
	arm(loop, &tm, task_cancel_cb, NULL, KT_MS(20));
	kt_loop_run(loop);
	cr_assert_eq(g_tc.rc, 0);
	cr_assert_eq(g_tc.victim_cause, -ECANCELED);
	cr_assert_eq(g_tc.bystander_cause, 0);
	cr_assert(g_tc.bystander_root);
	cr_assert_eq(g_tc.root_cause, 0, "keel_task_cancel cancelled the root");
	cr_assert_eq(g_out[0].res, -ECANCELED);
	cr_assert_lt(g_out[0].ns, KT_MS(400));
	cr_assert_eq(g_out[1].res, 0, "the sibling was cancelled: %d",
		     g_out[1].res);
	cr_assert_geq(g_out[1].ns, KT_MS(600));
	cr_assert_eq(g_out[1].after, 0);
	assert_quiet(loop);
	keel_loop_destroy(loop);
}

/*
 * keel_task_cancel on a task joining a scope reaches the scope's children
 * (they observe the scope's token, a child of the token the owner had):
 * the join then ends when they have. Before the fix the owner got a new
 * cancelled token of its own, the scope's token stayed live, and the join
 * waited the child's whole sleep.
 */
Test(cancel, task_cancel_reaches_the_children_of_its_scopes, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_timer tm;
	struct probe *owner, *b;
	uint64_t t0;

	memset(g_out, 0, sizeof(g_out));
	owner = spawn_probe(loop, P_SCOPE, -1, KT_MS(5000), &g_out[0]);
	owner->child_out = &g_out[1];
	b = spawn_probe(loop, P_SLEEP, -1, KT_MS(50), &g_out[2]);
	g_tc.victim = keel_task_of(&probe_task, owner);
	g_tc.bystander = keel_task_of(&probe_task, b);
	arm(loop, &tm, task_cancel_cb, NULL, KT_MS(20));
	t0 = kt_now_ns();
	kt_loop_run(loop);
	cr_assert_lt(kt_now_ns() - t0, KT_MS(2000),
		     "the join waited the sleep");
	cr_assert_eq(g_tc.rc, 0);
	cr_assert(g_out[1].done, "the child never finished");
	cr_assert_eq(g_out[1].res, -ECANCELED, "the child's sleep gave %d",
		     g_out[1].res);
	cr_assert(g_out[0].done, "the owner never finished");
	cr_assert_eq(g_out[2].res, 0, "the bystander was cancelled: %d",
		     g_out[2].res);
	cr_assert_eq(g_tc.root_cause, 0, "keel_task_cancel cancelled the root");
	assert_quiet(loop);
	keel_loop_destroy(loop);
}

Test(cancel, task_cancelled_before_first_step_starts_cancelled, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct probe *p = spawn_probe(loop, P_NOPS, -1, 0, &g_out[0]);

	spawn_probe(loop, P_SLEEP, -1, KT_MS(10), &g_out[1]);
	cr_assert_eq(keel_task_cancel(keel_task_of(&probe_task, p)), 0);
	kt_loop_run(loop);
	/* Its very first nop was cancelled; the other task was not. */
	cr_assert_eq(g_out[0].res, -ECANCELED);
	cr_assert_eq(g_out[0].nops_ok, 0);
	cr_assert_eq(g_out[1].res, 0);
	assert_quiet(loop);
	keel_loop_destroy(loop);
}

/* Inheritance: a task spawned by a running task observes its token. */
static struct {
	struct keel_token *want;
	int same_as_parent;
	int outside_is_root;
	int child_res;
} g_inh;

struct heir {
	struct keel_task task;
	int is_child;
	struct keel_token *tok;
};

static int heir_step(struct keel_task *t);
static KEEL_TASK_TYPE(heir_task, struct heir, task, heir_step);

static int heir_step(struct keel_task *t)
{
	struct heir *h = keel_container_of(t, struct heir, task);
	struct heir *kid;

	KEEL_BEGIN(t);
	if (h->is_child) {
		g_inh.same_as_parent = keel_task_token(t) == g_inh.want;
		KEEL_AWAIT(t, keel_sleep(t, KT_MS(5000)));
		g_inh.child_res = keel_res(t);
		KEEL_END(t);
	}
	g_inh.outside_is_root =
	    keel_task_token(t) == keel_loop_token(keel_task_loop(t));
	if (keel_token_new(keel_task_loop(t), NULL, &h->tok) ||
	    keel_task_set_token(t, h->tok))
		KEEL_EXIT(t, -ENOMEM);
	g_inh.want = h->tok;
	kid = keel_spawn(keel_task_loop(t), &heir_task, KEEL_PRIO_NORMAL);
	if (!kid)
		KEEL_EXIT(t, -ENOMEM);
	kid->is_child = 1;
	KEEL_AWAIT(t, keel_sleep(t, KT_MS(20)));
	/* Cancelling the spawner's token reaches the child. */
	keel_token_cancel(h->tok);
	keel_token_release(h->tok);
	KEEL_END(t);
}

Test(cancel, spawned_task_inherits_spawner_token, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	uint64_t t0 = kt_now_ns();

	kt_spawn(loop, &heir_task, KEEL_PRIO_NORMAL);
	kt_loop_run(loop);
	cr_assert(g_inh.outside_is_root,
		  "a task spawned outside a task does not observe the root");
	cr_assert(g_inh.same_as_parent, "the child has another token");
	cr_assert_eq(g_inh.child_res, -ECANCELED);
	cr_assert_lt(kt_now_ns() - t0, KT_MS(2000));
	assert_quiet(loop);
	keel_loop_destroy(loop);
}

/* keel_task_set_token with a cancelled token wakes a waiting task. */
static struct keel_task *g_set_target;
static int g_set_rc = 12345;

static void set_token_cb(struct keel_loop *loop, struct keel_timer *tm,
			 void *arg)
{
	struct keel_token *tok;

	if (keel_token_new(loop, NULL, &tok))
		return;
	keel_token_cancel(tok);
	g_set_rc = keel_task_set_token(g_set_target, tok);
	keel_token_release(tok);
}

Test(cancel, set_token_to_cancelled_token_wakes_waiting_task, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_timer tm;
	struct probe *p;
	int fds[2];

	kt_tcp_pair(fds);
	p = spawn_probe(loop, P_RECV, fds[0], 0, &g_out[0]);
	g_set_target = keel_task_of(&probe_task, p);
	arm(loop, &tm, set_token_cb, NULL, KT_MS(20));
	kt_loop_run(loop);
	cr_assert_eq(g_set_rc, 0);
	cr_assert_eq(g_out[0].res, -ECANCELED, "the recv gave %d",
		     g_out[0].res);
	cr_assert_lt(g_out[0].ns, KT_MS(1000));
	assert_quiet(loop);
	keel_loop_destroy(loop);
	close(fds[0]);
	close(fds[1]);
}

/*
 * Shields. The cleaner waits in a recv until its token is cancelled, then
 * does its cleanup I/O inside a shield: a send, a sleep, a recv of the
 * peer's answer, a close. After the shield the cancel shows again.
 */
static struct {
	int first;   /* the cancelled recv */
	int before;  /* a nop before the shield */
	int begin;   /* keel_shield_begin */
	int send;    /* in the shield */
	int sleep;   /* in the shield */
	int recv;    /* in the shield */
	int close;   /* in the shield */
	int after;   /* a nop after the shield */
	int tok_in;  /* the task's token inside the shield is not its own */
	int tok_out; /* and is its own again afterwards */
	char got[4];
	int done;
} g_sh;

struct cleaner {
	struct keel_task task;
	int fd;
	struct keel_token *tok;
	struct keel_shield shield;
	char buf[16];
};

static int g_ack_fd = -1;

static void cancel_and_ack_cb(struct keel_loop *loop, struct keel_timer *tm,
			      void *arg)
{
	keel_token_cancel(arg);
	/* The answer the cleaner's shielded recv will read. */
	if (write(g_ack_fd, "ack", 3) != 3)
		g_sh.done = -1;
}

static int cleaner_step(struct keel_task *t);
static KEEL_TASK_TYPE(cleaner_task, struct cleaner, task, cleaner_step);

static int cleaner_step(struct keel_task *t)
{
	struct cleaner *c = keel_container_of(t, struct cleaner, task);

	KEEL_BEGIN(t);
	KEEL_AWAIT(t, keel_recv(t, c->fd, c->buf, sizeof(c->buf), 0));
	g_sh.first = keel_res(t);
	KEEL_AWAIT(t, keel_nop(t));
	g_sh.before = keel_res(t);
	g_sh.begin = keel_shield_begin(t, &c->shield, UINT64_MAX);
	g_sh.tok_in = keel_task_token(t) != c->tok;
	KEEL_AWAIT(t, keel_send(t, c->fd, "bye", 3, 0));
	g_sh.send = keel_res(t);
	KEEL_AWAIT(t, keel_sleep(t, KT_MS(5)));
	g_sh.sleep = keel_res(t);
	KEEL_AWAIT(t, keel_recv(t, c->fd, c->buf, 3, MSG_WAITALL));
	g_sh.recv = keel_res(t);
	if (keel_res(t) == 3)
		memcpy(g_sh.got, c->buf, 3);
	KEEL_AWAIT(t, keel_close(t, c->fd));
	g_sh.close = keel_res(t);
	keel_shield_end(t, &c->shield);
	g_sh.tok_out = keel_task_token(t) == c->tok;
	KEEL_AWAIT(t, keel_nop(t));
	g_sh.after = keel_res(t);
	g_sh.done = 1;
	KEEL_END(t);
}

Test(cancel, shield_lets_cleanup_io_run_under_cancelled_token, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_token *tok = token_new(loop, NULL);
	struct cleaner *c;
	struct keel_timer tm;
	char buf[8];
	int fds[2];

	kt_tcp_pair(fds);
	g_ack_fd = fds[1];
	c = kt_spawn(loop, &cleaner_task, KEEL_PRIO_NORMAL);
	c->fd = fds[0];
	c->tok = tok;
	keel_task_set_token(keel_task_of(&cleaner_task, c), tok);
	arm(loop, &tm, cancel_and_ack_cb, tok, KT_MS(20));
	kt_loop_run(loop);
	cr_assert_eq(g_sh.done, 1);
	cr_assert_eq(g_sh.first, -ECANCELED);
	cr_assert_eq(g_sh.before, -ECANCELED);
	cr_assert_eq(g_sh.begin, 0);
	cr_assert(g_sh.tok_in);
	cr_assert_eq(g_sh.send, 3, "send in the shield gave %d", g_sh.send);
	cr_assert_eq(g_sh.sleep, 0, "sleep in the shield gave %d", g_sh.sleep);
	cr_assert_eq(g_sh.recv, 3, "recv in the shield gave %d", g_sh.recv);
	cr_assert_arr_eq(g_sh.got, "ack", 3);
	cr_assert_eq(g_sh.close, 0);
	cr_assert(g_sh.tok_out, "the task's token was not restored");
	cr_assert_eq(g_sh.after, -ECANCELED, "after the shield: %d",
		     g_sh.after);
	/* The peer got "bye", then end of stream. */
	cr_assert_eq(recv(fds[1], buf, sizeof(buf), MSG_WAITALL), 3);
	cr_assert_arr_eq(buf, "bye", 3);
	cr_assert_eq(recv(fds[1], buf, sizeof(buf), 0), 0);
	assert_quiet(loop);
	keel_token_release(tok);
	keel_loop_destroy(loop);
	close(fds[1]);
}

/* A shield up while the token is cancelled, and a shield's own timeout. */
enum { SH_IGNORE, SH_TIMEOUT, SH_TIMEOUT_CANCELLED };

struct shielded {
	struct keel_task task;
	int mode;
	int fd;
	struct keel_shield shield;
	uint64_t t0;
	char buf[16];
};

static struct {
	int begin;
	int res;
	uint64_t ns;
	int again;
	int after;
	int done;
} g_sd;

static int shielded_step(struct keel_task *t);
static KEEL_TASK_TYPE(shielded_task, struct shielded, task, shielded_step);

static int shielded_step(struct keel_task *t)
{
	struct shielded *s = keel_container_of(t, struct shielded, task);

	KEEL_BEGIN(t);
	if (s->mode == SH_TIMEOUT_CANCELLED)
		keel_task_cancel(t);
	g_sd.begin = keel_shield_begin(
	    t, &s->shield, s->mode == SH_IGNORE ? UINT64_MAX : KT_MS(20));
	s->t0 = kt_now_ns();
	if (s->mode == SH_IGNORE)
		KEEL_AWAIT(t, keel_sleep(t, KT_MS(60)));
	else
		KEEL_AWAIT(t, keel_recv(t, s->fd, s->buf, sizeof(s->buf), 0));
	g_sd.res = keel_res(t);
	g_sd.ns = kt_now_ns() - s->t0;
	/* Level-triggered inside the shield too, once its time is up. */
	KEEL_AWAIT(t, keel_nop(t));
	g_sd.again = keel_res(t);
	keel_shield_end(t, &s->shield);
	KEEL_AWAIT(t, keel_nop(t));
	g_sd.after = keel_res(t);
	g_sd.done = 1;
	KEEL_END(t);
}

static void run_shielded(int mode, int cancel_at_ms)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_token *tok = token_new(loop, NULL);
	struct shielded *s;
	struct keel_timer tm;
	int fds[2];

	kt_tcp_pair(fds);
	s = kt_spawn(loop, &shielded_task, KEEL_PRIO_NORMAL);
	s->mode = mode;
	s->fd = fds[0];
	keel_task_set_token(keel_task_of(&shielded_task, s), tok);
	if (cancel_at_ms)
		arm(loop, &tm, cancel_token_cb, tok, KT_MS(cancel_at_ms));
	kt_loop_run(loop);
	cr_assert_eq(g_sd.done, 1);
	cr_assert_eq(g_sd.begin, 0);
	assert_quiet(loop);
	keel_token_release(tok);
	keel_loop_destroy(loop);
	close(fds[0]);
	close(fds[1]);
}

Test(cancel, shield_ignores_cancel_arriving_while_up, .timeout = 10)
{
	run_shielded(SH_IGNORE, 10);
	cr_assert_eq(g_sd.res, 0, "the shielded sleep gave %d", g_sd.res);
	cr_assert_geq(g_sd.ns, KT_MS(55), "slept only %lu ns",
		      (unsigned long)g_sd.ns);
	cr_assert_eq(g_sd.again, 0);
	cr_assert_eq(g_sd.after, -ECANCELED,
		     "the cancel did not show after the shield: %d",
		     g_sd.after);
}

Test(cancel, shield_own_timeout_gives_etimedout_not_task_cancel, .timeout = 10)
{
	run_shielded(SH_TIMEOUT, 0);
	cr_assert_eq(g_sd.res, -ETIMEDOUT, "the recv gave %d", g_sd.res);
	cr_assert_geq(g_sd.ns, KT_MS(15));
	cr_assert_lt(g_sd.ns, KT_MS(1000));
	cr_assert_eq(g_sd.again, -ETIMEDOUT);
	/* The task's own token was never cancelled. */
	cr_assert_eq(g_sd.after, 0, "after the shield: %d", g_sd.after);
}

Test(cancel, shield_timeout_bounds_cleanup_under_cancelled_token, .timeout = 10)
{
	run_shielded(SH_TIMEOUT_CANCELLED, 0);
	cr_assert_eq(g_sd.res, -ETIMEDOUT, "the recv gave %d", g_sd.res);
	cr_assert_geq(g_sd.ns, KT_MS(15));
	cr_assert_lt(g_sd.ns, KT_MS(1000));
	cr_assert_eq(g_sd.after, -ECANCELED);
}

/*
 * keel_task_cancel of a task inside a shield: the shield holds the cancel
 * off until it ends, then the task sees it.
 */
struct tc_shielded {
	struct keel_task task;
	struct keel_shield shield;
	uint64_t t0;
};

static struct keel_task *g_tcs_task;
static int g_tcs_rc = 12345;

static void task_cancel_shielded_cb(struct keel_loop *loop,
				    struct keel_timer *tm, void *arg)
{
	g_tcs_rc = keel_task_cancel(g_tcs_task);
}

static int tc_shielded_step(struct keel_task *t);
static KEEL_TASK_TYPE(tc_shielded_task, struct tc_shielded, task,
		      tc_shielded_step);

static int tc_shielded_step(struct keel_task *t)
{
	struct tc_shielded *s = keel_container_of(t, struct tc_shielded, task);

	KEEL_BEGIN(t);
	g_sd.begin = keel_shield_begin(t, &s->shield, UINT64_MAX);
	s->t0 = kt_now_ns();
	KEEL_AWAIT(t, keel_sleep(t, KT_MS(60)));
	g_sd.res = keel_res(t);
	g_sd.ns = kt_now_ns() - s->t0;
	KEEL_AWAIT(t, keel_nop(t));
	g_sd.again = keel_res(t);
	keel_shield_end(t, &s->shield);
	KEEL_AWAIT(t, keel_nop(t));
	g_sd.after = keel_res(t);
	g_sd.done = 1;
	KEEL_END(t);
}

Test(cancel, task_cancel_inside_shield_waits_for_shield_end, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct tc_shielded *s;
	struct keel_timer tm;

	s = kt_spawn(loop, &tc_shielded_task, KEEL_PRIO_NORMAL);
	g_tcs_task = keel_task_of(&tc_shielded_task, s);
	arm(loop, &tm, task_cancel_shielded_cb, NULL, KT_MS(10));
	kt_loop_run(loop);
	cr_assert_eq(g_tcs_rc, 0);
	cr_assert_eq(g_sd.done, 1);
	cr_assert_eq(g_sd.begin, 0);
	cr_assert_eq(g_sd.res, 0, "the shielded sleep gave %d after %lu ns",
		     g_sd.res, (unsigned long)g_sd.ns);
	cr_assert_geq(g_sd.ns, KT_MS(55));
	cr_assert_eq(g_sd.again, 0, "a nop in the shield gave %d", g_sd.again);
	cr_assert_eq(g_sd.after, -ECANCELED,
		     "the cancel was lost at the shield's end: nop gave %d",
		     g_sd.after);
	assert_quiet(loop);
	keel_loop_destroy(loop);
}

/*
 * The awaits' fast paths skip the token lookup while the loop counts no
 * cancelled token (cancelled and not yet freed). A probe sends itself a
 * message, receives it and joins itself, under a token that may be
 * cancelled.
 */
struct count_probe {
	struct keel_task task;
	struct keel_mailbox *mb;
	void *msg;
};

static int g_count_res[3]; /* the frame goes when the probe exits */

static int count_probe_step(struct keel_task *t)
{
	struct count_probe *p = keel_container_of(t, struct count_probe, task);

	KEEL_BEGIN(t);
	KEEL_AWAIT(t, keel_mb_send(t, p->mb, p));
	g_count_res[0] = keel_res(t);
	KEEL_AWAIT(t, keel_mb_recv(t, p->mb, &p->msg));
	g_count_res[1] = keel_res(t);
	KEEL_AWAIT(t, keel_join(t, t));
	g_count_res[2] = keel_res(t);
	KEEL_END(t);
}
static KEEL_TASK_TYPE(count_probe_task, struct count_probe, task,
		      count_probe_step);

static void run_count_probe(struct keel_loop *loop, struct keel_token *tok,
			    int want_send, int want_recv, int want_join)
{
	struct count_probe *p =
	    kt_spawn(loop, &count_probe_task, KEEL_PRIO_NORMAL);

	cr_assert_eq(keel_mailbox_new(loop, NULL, &p->mb), 0);
	struct keel_mailbox *mb = p->mb;

	if (tok)
		cr_assert_eq(keel_task_set_token(
				 keel_task_of(&count_probe_task, p), tok),
			     0);
	for (int i = 0; i < 3; i++)
		g_count_res[i] = 12345;
	kt_loop_run(loop);
	keel_mailbox_release(mb);
	cr_assert_eq(g_count_res[0], want_send, "send gave %d", g_count_res[0]);
	cr_assert_eq(g_count_res[1], want_recv, "recv gave %d", g_count_res[1]);
	cr_assert_eq(g_count_res[2], want_join, "join gave %d", g_count_res[2]);
}

Test(cancel, cancelled_tokens_that_come_and_go_hide_no_cancelled_one,
     .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel__core *c = keel__core_of(loop);
	struct keel_token *parent = token_new(loop, NULL);
	struct keel_token *tok;

	cr_assert_eq(c->cancelled, 0);
	keel_token_cancel(parent);
	/* Born cancelled under it, then freed. */
	tok = token_new(loop, parent);
	cr_assert_eq(keel_token_cause(tok), -ECANCELED);
	keel_token_release(tok);
	/* Another cancelled and freed. */
	tok = token_new(loop, NULL);
	keel_token_cancel(tok);
	keel_token_cancel(tok);
	keel_token_release(tok);
	cr_assert_eq(c->cancelled, 1);
	run_count_probe(loop, parent, -ECANCELED, -ECANCELED, -ECANCELED);
	/* The parent freed (the probe's reference went with it): none is
	 * counted, and the awaits take their fast paths again. */
	keel_token_release(parent);
	cr_assert_eq(c->cancelled, 0);
	run_count_probe(loop, NULL, 0, 0, -EDEADLK);
	/* A cancelled root (and its descendants: the loop's stop token)
	 * counts until the loop goes. */
	keel_token_cancel(keel_loop_token(loop));
	cr_assert_gt(c->cancelled, 0);
	run_count_probe(loop, NULL, -ECANCELED, -ECANCELED, -ECANCELED);
	assert_quiet(loop);
	keel_loop_destroy(loop);
}

/* A token may be released after its loop is gone: freeing a cancelled one
 * then leaves the loop's count alone (ASan: no write to the freed loop). */
Test(cancel, cancelled_token_released_after_its_loop_is_gone, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_token *tok = token_new(loop, NULL);
	struct keel_token *child = token_new(loop, tok);

	keel_token_cancel(tok);
	keel_token_cancel(keel_loop_token(loop));
	keel_loop_destroy(loop);
	keel_token_release(child);
	cr_assert_eq(keel_token_cause(tok), -ECANCELED);
	keel_token_release(tok);
}
