/* SPDX-License-Identifier: MIT */
/*
 * test_select.c: keel_select (keel/select.h). Each loser rule: a message
 * that arrives in a losing mailbox stays at its head, in order; a recv
 * that completed after losing is reported with its bytes; a recv
 * cancelled in time gets -ECANCELED and the kernel has returned it (its
 * buffer is the task's again) when the select returns; a losing join
 * leaves the child joinable. A deadline, a token and a join that win;
 * the selecting task's own cancellation (-ECANCELED, same loser rules);
 * fair choice among branches ready at once, and the biased order; bad
 * arguments; and a select re-armed 10^5 times in a loop, with an op
 * branch started and cancelled each time, leaving nothing behind.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <keel.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include "helpers/keel_test.h"

#define MSG(v) ((void *)(uintptr_t)(v))
#define VAL(p) ((uintptr_t)(p))
#define MS     1000000ull

static struct keel_mailbox *mb_new(struct keel_loop *loop)
{
	struct keel_mailbox_opts o = {.capacity = 16, .policy = KEEL_MB_FAIL};
	struct keel_mailbox *mb;

	cr_assert_eq(keel_mailbox_new(loop, &o, &mb), 0);
	return mb;
}

static struct keel_mailbox *g_a, *g_b;
static int g_fds[2];

/* What the selecting task saw, checked after the loop ran. */
static struct {
	int winner;
	int res[KEEL_SELECT_MAX];
	void *msg_a, *msg_b;
	char buf[16];
	unsigned inflight; /* t->inflight right after the select */
	int after;	   /* a later await's result */
	char again[16];
} g;

/* ---- a message arriving in a losing mailbox stays there ---- */

struct selector {
	struct keel_task task;
	struct keel_select sel;
	void *ma, *mb;
	char buf[16];
	unsigned flags;
	int with_recv;	  /* add an op branch: recv on g_fds[0] */
	uint64_t timeout; /* add a deadline branch (ns), 0: none */
	struct keel_token *tok;
	struct keel_task *child;
};

static void record(struct selector *f, struct keel_task *t)
{
	g.winner = keel_res(t);
	for (int i = 0; i < f->sel.n; i++)
		g.res[i] = keel_select_res(&f->sel, i);
	g.msg_a = f->ma;
	g.msg_b = f->mb;
	memcpy(g.buf, f->buf, sizeof(g.buf));
	g.inflight = t->inflight;
}

static int start_recv(struct keel_task *t, void *arg)
{
	struct selector *f = arg;

	return keel_recv(t, g_fds[0], f->buf, sizeof(f->buf), 0);
}

static void arm_all(struct selector *f, struct keel_task *t)
{
	keel_select_init(&f->sel, t, f->flags);
	if (g_a)
		keel_select_recv(&f->sel, g_a, &f->ma);
	if (g_b)
		keel_select_recv(&f->sel, g_b, &f->mb);
	if (f->with_recv)
		keel_select_op(&f->sel, start_recv, f);
	if (f->timeout)
		keel_select_timeout(&f->sel, f->timeout);
	if (f->tok)
		keel_select_token(&f->sel, f->tok);
	if (f->child)
		keel_select_join(&f->sel, f->child);
}

static int selector_step(struct keel_task *t)
{
	struct selector *f = keel_container_of(t, struct selector, task);

	KEEL_BEGIN(t);
	arm_all(f, t);
	KEEL_AWAIT(t, keel_select(t, &f->sel));
	record(f, t);
	/* The losing recv's buffer is ours again: a plain recv into it. */
	if (f->with_recv && g.res[2] == -ECANCELED && g.winner != -ECANCELED) {
		(void)!write(g_fds[1], "again", 5);
		KEEL_AWAIT(t,
			   keel_recv(t, g_fds[0], f->buf, sizeof(f->buf), 0));
		g.after = keel_res(t);
		memcpy(g.again, f->buf, sizeof(g.again));
	}
	KEEL_END(t);
}

static KEEL_TASK_TYPE(selector_task, struct selector, task, selector_step);

/* After `yields` yields, in one step: writes `data`, sends `first` to
 * to1, `second` (and second + 1) to to2, cancels `cancel`, `victim`. */
struct sender {
	struct keel_task task;
	int yields;
	int i;
	struct keel_mailbox *to1, *to2;
	uintptr_t first, second;
	struct keel_token *cancel;
	struct keel_task *victim;
	const char *data; /* written to g_fds[1] first */
	int pair;	  /* then second + 1 to to2 too */
};

static int sender_step(struct keel_task *t)
{
	struct sender *s = keel_container_of(t, struct sender, task);

	KEEL_BEGIN(t);
	for (s->i = 0; s->i < s->yields; s->i++)
		KEEL_YIELD(t);
	if (s->data)
		cr_assert_eq(write(g_fds[1], s->data, strlen(s->data)),
			     (ssize_t)strlen(s->data));
	if (s->to1)
		cr_assert_eq(keel_mb_try_send(s->to1, MSG(s->first)), 0);
	if (s->to2)
		cr_assert_eq(keel_mb_try_send(s->to2, MSG(s->second)), 0);
	if (s->to2 && s->pair)
		cr_assert_eq(keel_mb_try_send(s->to2, MSG(s->second + 1)), 0);
	if (s->cancel)
		keel_token_cancel(s->cancel);
	if (s->victim)
		cr_assert_eq(keel_task_cancel(s->victim), 0);
	KEEL_END(t);
}

static KEEL_TASK_TYPE(sender_task, struct sender, task, sender_step);

static struct keel_loop *setup(void)
{
	struct keel_loop *loop = kt_loop_new(NULL);

	memset(&g, 0, sizeof(g));
	g.winner = 12345;
	g_a = mb_new(loop);
	g_b = mb_new(loop);
	kt_tcp_pair(g_fds);
	return loop;
}

static void teardown(struct keel_loop *loop)
{
	struct keel_loop_stats st = kt_stats(loop);

	cr_expect_eq(st.frames_live, 0);
	cr_expect_eq(st.ops_inflight, 0);
	if (g_a)
		keel_mailbox_release(g_a);
	if (g_b)
		keel_mailbox_release(g_b);
	g_a = g_b = NULL;
	close(g_fds[0]);
	close(g_fds[1]);
	keel_loop_destroy(loop);
}

Test(select, losing_mailbox_keeps_a_message_that_came_meanwhile, .timeout = 10)
{
	struct keel_loop *loop = setup();
	struct selector *f = kt_spawn(loop, &selector_task, KEEL_PRIO_NORMAL);
	struct sender *s = kt_spawn(loop, &sender_task, KEEL_PRIO_NORMAL);

	(void)f;
	s->yields = 2;
	s->to1 = g_a;
	s->first = 1;
	s->to2 = g_b;
	s->second = 2;
	s->pair = 1;
	kt_loop_run(loop);
	cr_assert_eq(g.winner, 0);
	cr_assert_eq(g.res[0], 0);
	cr_assert_eq(VAL(g.msg_a), 1);
	cr_assert_eq(g.msg_b, NULL, "the losing receive took nothing");
	cr_assert_eq(g.res[1], -ECANCELED);
	/* Still at the head of b, before the one sent after it. */
	void *m;

	cr_assert_eq(keel_mb_try_recv(g_b, &m), 0);
	cr_assert_eq(VAL(m), 2);
	cr_assert_eq(keel_mb_try_recv(g_b, &m), 0);
	cr_assert_eq(VAL(m), 3);
	cr_assert_eq(keel_mb_try_recv(g_b, &m), -EAGAIN);
	teardown(loop);
}

/*
 * The recv's SQE and the mailbox's win come in one turn, the bytes being
 * there already: the kernel runs the recv (it completes at once) before
 * the cancel the win queued behind it. The select reports those bytes.
 */
Test(select, recv_that_completed_after_losing_is_reported, .timeout = 10)
{
	struct keel_loop *loop = setup();
	struct selector *f = kt_spawn(loop, &selector_task, KEEL_PRIO_NORMAL);
	struct sender *s = kt_spawn(loop, &sender_task, KEEL_PRIO_NORMAL);

	f->with_recv = 1;
	s->to1 = g_a;
	s->first = 1;
	cr_assert_eq(write(g_fds[1], "hello", 5), 5);
	kt_loop_run(loop);
	cr_assert_eq(g.winner, 0);
	cr_assert_eq(VAL(g.msg_a), 1);
	cr_assert_eq(g.res[2], 5, "the loser's bytes are reported: %d",
		     g.res[2]);
	cr_assert_eq(memcmp(g.buf, "hello", 5), 0);
	cr_assert_eq(g.inflight, 0);
	teardown(loop);
}

/* The same race with an accept: the fd it got is reported, not leaked. */
static int g_lfd;

/* What a select of two branches gave its task. */
static void record_two(struct keel_select *sel, struct keel_task *t)
{
	g.winner = keel_res(t);
	g.res[0] = keel_select_res(sel, 0);
	g.res[1] = keel_select_res(sel, 1);
	g.inflight = t->inflight;
}

struct acceptor {
	struct keel_task task;
	struct keel_select sel;
	void *m;
};

static int start_accept(struct keel_task *t, void *arg)
{
	(void)arg;
	return keel_accept(t, g_lfd, NULL, NULL, SOCK_CLOEXEC);
}

static int acceptor_step(struct keel_task *t)
{
	struct acceptor *a = keel_container_of(t, struct acceptor, task);

	KEEL_BEGIN(t);
	keel_select_init(&a->sel, t, 0);
	keel_select_recv(&a->sel, g_a, &a->m);
	keel_select_op(&a->sel, start_accept, NULL);
	KEEL_AWAIT(t, keel_select(t, &a->sel));
	record_two(&a->sel, t);
	KEEL_END(t);
}

static KEEL_TASK_TYPE(acceptor_task, struct acceptor, task, acceptor_step);

Test(select, accept_that_completed_after_losing_reports_its_fd, .timeout = 10)
{
	struct keel_loop *loop = setup();
	struct sockaddr_storage ss;
	socklen_t len;
	uint16_t port;
	int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	g_lfd = kt_listen(&port);
	kt_loopback_addr(port, &ss, &len);
	cr_assert_eq(connect(c, (struct sockaddr *)&ss, len), 0);
	kt_spawn(loop, &acceptor_task, KEEL_PRIO_NORMAL);
	struct sender *s = kt_spawn(loop, &sender_task, KEEL_PRIO_NORMAL);

	s->to1 = g_a;
	s->first = 1;
	kt_loop_run(loop);
	cr_assert_eq(g.winner, 0);
	cr_assert(g.res[1] >= 0, "the loser's fd is reported: %d", g.res[1]);
	cr_assert_eq(g.inflight, 0);
	/* It is the accepted end of c: bytes written to c arrive there. */
	cr_assert_eq(write(c, "x", 1), 1);
	char b;

	cr_assert_eq(read(g.res[1], &b, 1), 1);
	cr_assert_eq(b, 'x');
	close(g.res[1]);
	close(c);
	close(g_lfd);
	teardown(loop);
}

Test(select, recv_cancelled_in_time_is_returned_before_select_returns,
     .timeout = 10)
{
	struct keel_loop *loop = setup();
	struct selector *f = kt_spawn(loop, &selector_task, KEEL_PRIO_NORMAL);
	struct sender *s = kt_spawn(loop, &sender_task, KEEL_PRIO_NORMAL);

	f->with_recv = 1;
	s->yields = 3; /* the recv is in the kernel, waiting */
	s->to2 = g_b;
	s->second = 7;
	kt_loop_run(loop);
	cr_assert_eq(g.winner, 1);
	cr_assert_eq(VAL(g.msg_b), 7);
	cr_assert_eq(g.res[2], -ECANCELED);
	cr_assert_eq(g.inflight, 0, "the kernel returned the recv");
	/* The buffer was free: a plain recv into it got the next bytes. */
	cr_assert_eq(g.after, 5);
	cr_assert_eq(memcmp(g.again, "again", 5), 0);
	teardown(loop);
}

Test(select, recv_wins_and_is_reported, .timeout = 10)
{
	struct keel_loop *loop = setup();
	struct selector *f = kt_spawn(loop, &selector_task, KEEL_PRIO_NORMAL);
	struct sender *s = kt_spawn(loop, &sender_task, KEEL_PRIO_NORMAL);

	f->with_recv = 1;
	s->yields = 3;
	s->data = "abc";
	kt_loop_run(loop);
	cr_assert_eq(g.winner, 2);
	cr_assert_eq(g.res[2], 3);
	cr_assert_eq(memcmp(g.buf, "abc", 3), 0);
	cr_assert_eq(g.res[0], -ECANCELED);
	cr_assert_eq(g.res[1], -ECANCELED);
	/* Neither mailbox is received from any more. */
	void *m;

	cr_assert_eq(keel_mb_try_send(g_a, MSG(9)), 0);
	cr_assert_eq(keel_mb_try_recv(g_a, &m), 0);
	cr_assert_eq(VAL(m), 9);
	teardown(loop);
}

Test(select, deadline_wins_when_nothing_else_comes, .timeout = 10)
{
	struct keel_loop *loop = setup();
	struct selector *f = kt_spawn(loop, &selector_task, KEEL_PRIO_NORMAL);

	f->with_recv = 1;
	f->timeout = 2 * MS;
	kt_loop_run(loop);
	cr_assert_eq(g.winner, 3);
	cr_assert_eq(g.res[3], 0);
	cr_assert_eq(g.res[2], -ECANCELED);
	cr_assert_eq(g.inflight, 0);
	teardown(loop);
}

Test(select, token_branch_wins_with_its_cause, .timeout = 10)
{
	struct keel_loop *loop = setup();
	struct keel_token *tok;

	cr_assert_eq(keel_token_new(loop, NULL, &tok), 0);
	struct selector *f = kt_spawn(loop, &selector_task, KEEL_PRIO_NORMAL);
	struct sender *s = kt_spawn(loop, &sender_task, KEEL_PRIO_NORMAL);

	f->tok = tok;
	f->timeout = 10000 * MS; /* armed, then disarmed */
	s->yields = 2;
	s->cancel = tok;
	kt_loop_run(loop);
	cr_assert_eq(g.winner, 3);
	cr_assert_eq(g.res[3], -ECANCELED);
	cr_assert_eq(g.res[2], -ECANCELED);
	cr_assert_eq(kt_stats(loop).timers_armed, 0);
	keel_token_release(tok);
	teardown(loop);
}

Test(select, own_cancellation_ends_it_with_the_same_loser_rules, .timeout = 10)
{
	struct keel_loop *loop = setup();
	struct selector *f = kt_spawn(loop, &selector_task, KEEL_PRIO_NORMAL);
	struct sender *s = kt_spawn(loop, &sender_task, KEEL_PRIO_NORMAL);

	f->with_recv = 1;
	s->yields = 3;
	s->victim = &f->task;
	kt_loop_run(loop);
	cr_assert_eq(g.winner, -ECANCELED);
	cr_assert_eq(g.res[0], -ECANCELED);
	cr_assert_eq(g.res[2], -ECANCELED);
	cr_assert_eq(g.inflight, 0, "the kernel returned the recv");
	/* Nothing receives from the mailboxes. */
	void *m;

	cr_assert_eq(keel_mb_try_send(g_a, MSG(4)), 0);
	cr_assert_eq(keel_mb_try_recv(g_a, &m), 0);
	cr_assert_eq(VAL(m), 4);
	teardown(loop);
}

/* ---- joins ---- */

struct child {
	struct keel_task task;
	uint64_t nap;
};

static int child_step(struct keel_task *t)
{
	struct child *c = keel_container_of(t, struct child, task);

	KEEL_BEGIN(t);
	KEEL_AWAIT(t, keel_sleep(t, c->nap));
	KEEL_EXIT(t, 7);
}

static KEEL_TASK_TYPE(child_task, struct child, task, child_step);

/* Selects on a join and a deadline, then joins the child if it lost. */
struct parent {
	struct keel_task task;
	struct keel_select sel;
	struct keel_task *child;
	uint64_t nap, timeout;
};

static int parent_step(struct keel_task *t)
{
	struct parent *p = keel_container_of(t, struct parent, task);

	KEEL_BEGIN(t);
	struct child *c = keel_spawn(keel_task_loop(t), &child_task,
				     KEEL_PRIO_NORMAL | KEEL_SPAWN_JOINABLE);

	cr_assert(c);
	c->nap = p->nap;
	p->child = &c->task;
	keel_select_init(&p->sel, t, 0);
	keel_select_join(&p->sel, p->child);
	keel_select_timeout(&p->sel, p->timeout);
	KEEL_AWAIT(t, keel_select(t, &p->sel));
	g.winner = keel_res(t);
	g.res[0] = keel_select_res(&p->sel, 0);
	g.res[1] = keel_select_res(&p->sel, 1);
	if (g.winner != 0) {
		KEEL_AWAIT(t, keel_join(t, p->child));
		g.after = keel_res(t);
	}
	KEEL_END(t);
}

static KEEL_TASK_TYPE(parent_task, struct parent, task, parent_step);

Test(select, join_wins_with_the_exit_status, .timeout = 10)
{
	struct keel_loop *loop = setup();
	struct parent *p = kt_spawn(loop, &parent_task, KEEL_PRIO_NORMAL);

	p->nap = 1 * MS;
	p->timeout = 10000 * MS;
	kt_loop_run(loop);
	cr_assert_eq(g.winner, 0);
	cr_assert_eq(g.res[0], 7);
	cr_assert_eq(g.res[1], -ECANCELED);
	teardown(loop); /* frames_live 0: the winning join released it */
}

Test(select, losing_join_leaves_the_child_joinable, .timeout = 10)
{
	struct keel_loop *loop = setup();
	struct parent *p = kt_spawn(loop, &parent_task, KEEL_PRIO_NORMAL);

	p->nap = 20 * MS;
	p->timeout = 1 * MS;
	kt_loop_run(loop);
	cr_assert_eq(g.winner, 1);
	cr_assert_eq(g.res[0], -ECANCELED);
	cr_assert_eq(g.after, 7, "joined after losing: %d", g.after);
	teardown(loop);
}

/* ---- fairness ---- */

#define ROUNDS 1000

struct chooser {
	struct keel_task task;
	struct keel_select sel;
	unsigned flags;
	int i;
	void *ma, *mb;
	int wins[2];
};

static int chooser_step(struct keel_task *t)
{
	struct chooser *c = keel_container_of(t, struct chooser, task);
	void *m;

	KEEL_BEGIN(t);
	for (c->i = 0; c->i < ROUNDS; c->i++) {
		cr_assert_eq(keel_mb_try_send(g_a, MSG(1)), 0);
		cr_assert_eq(keel_mb_try_send(g_b, MSG(2)), 0);
		keel_select_init(&c->sel, t, c->flags);
		keel_select_recv(&c->sel, g_a, &c->ma);
		keel_select_recv(&c->sel, g_b, &c->mb);
		KEEL_AWAIT(t, keel_select(t, &c->sel));
		cr_assert(keel_res(t) == 0 || keel_res(t) == 1);
		c->wins[keel_res(t)]++;
		/* The loser's message is still there: exactly one each. */
		cr_assert_eq(keel_mb_try_recv(keel_res(t) ? g_a : g_b, &m), 0);
		cr_assert_eq(VAL(m), keel_res(t) ? 1u : 2u);
		cr_assert_eq(keel_mb_try_recv(g_a, &m), -EAGAIN);
		cr_assert_eq(keel_mb_try_recv(g_b, &m), -EAGAIN);
	}
	g.res[0] = c->wins[0];
	g.res[1] = c->wins[1];
	KEEL_END(t);
}

static KEEL_TASK_TYPE(chooser_task, struct chooser, task, chooser_step);

Test(select, ready_branches_are_chosen_fairly, .timeout = 20)
{
	struct keel_loop *loop = setup();

	kt_spawn(loop, &chooser_task, KEEL_PRIO_NORMAL);
	kt_loop_run(loop);
	/* A fair coin stays within 300..700 of 1000 all but 10^-36 of the
	 * time; a fixed order gives 1000..0. */
	cr_assert(g.res[0] > 300 && g.res[0] < 700, "wins: %d / %d", g.res[0],
		  g.res[1]);
	cr_assert_eq(g.res[0] + g.res[1], ROUNDS);
	teardown(loop);
}

Test(select, biased_chooses_in_order, .timeout = 20)
{
	struct keel_loop *loop = setup();
	struct chooser *c = kt_spawn(loop, &chooser_task, KEEL_PRIO_NORMAL);

	c->flags = KEEL_SELECT_BIASED;
	kt_loop_run(loop);
	cr_assert_eq(g.res[0], ROUNDS);
	teardown(loop);
}

/* ---- bad arguments ---- */

struct misuse {
	struct keel_task task;
	struct keel_select sel;
	void *m;
	int res[3];
};

static int misuse_step(struct keel_task *t)
{
	struct misuse *u = keel_container_of(t, struct misuse, task);

	KEEL_BEGIN(t);
	keel_select_init(&u->sel, t, 0);
	KEEL_AWAIT(t, keel_select(t, &u->sel));
	u->res[0] = keel_res(t);
	keel_select_init(&u->sel, t, 0);
	for (int i = 0; i < KEEL_SELECT_MAX; i++)
		cr_assert_eq(keel_select_recv(&u->sel, g_a, &u->m), i);
	cr_assert_eq(keel_select_recv(&u->sel, g_a, &u->m), -E2BIG);
	KEEL_AWAIT(t, keel_select(t, &u->sel));
	u->res[1] = keel_res(t);
	/* The same mailbox twice: the second cannot receive too. */
	keel_select_init(&u->sel, t, 0);
	keel_select_recv(&u->sel, g_a, &u->m);
	keel_select_recv(&u->sel, g_a, &u->m);
	KEEL_AWAIT(t, keel_select(t, &u->sel));
	u->res[2] = keel_res(t);
	memcpy(g.res, u->res, sizeof(u->res));
	KEEL_END(t);
}

static KEEL_TASK_TYPE(misuse_task, struct misuse, task, misuse_step);

Test(select, bad_arguments, .timeout = 10)
{
	struct keel_loop *loop = setup();

	kt_spawn(loop, &misuse_task, KEEL_PRIO_NORMAL);
	kt_loop_run(loop);
	cr_assert_eq(g.res[0], -EINVAL);
	cr_assert_eq(g.res[1], -E2BIG);
	cr_assert_eq(g.res[2], -EBUSY);
	/* And the first receive was undone. */
	void *m;

	cr_assert_eq(keel_mb_try_send(g_a, MSG(5)), 0);
	cr_assert_eq(keel_mb_try_recv(g_a, &m), 0);
	teardown(loop);
}

/* ---- in a loop ---- */

#define LAPS 100000

/* Selects LAPS times over a, b, a recv nobody answers and a far deadline,
 * while the feeder sends to a and b in turn, one message a kernel round
 * trip. */
struct looper {
	struct keel_task task;
	struct keel_select sel;
	int i;
	void *ma, *mb;
	char buf[16];
	uintptr_t expect_a, expect_b;
	int recv_res;
};

static int loop_recv(struct keel_task *t, void *arg)
{
	struct looper *l = arg;

	return keel_recv(t, g_fds[0], l->buf, sizeof(l->buf), 0);
}

static int looper_step(struct keel_task *t)
{
	struct looper *l = keel_container_of(t, struct looper, task);

	KEEL_BEGIN(t);
	for (l->i = 0; l->i < LAPS; l->i++) {
		keel_select_init(&l->sel, t, 0);
		keel_select_recv(&l->sel, g_a, &l->ma);
		keel_select_recv(&l->sel, g_b, &l->mb);
		keel_select_op(&l->sel, loop_recv, l);
		keel_select_timeout(&l->sel, 100000 * MS);
		KEEL_AWAIT(t, keel_select(t, &l->sel));
		cr_assert(keel_res(t) == 0 || keel_res(t) == 1, "lap %d: %d",
			  l->i, keel_res(t));
		cr_assert_eq(keel_select_res(&l->sel, 2), -ECANCELED);
		cr_assert_eq(t->inflight, 0);
		/* In order per mailbox: nothing lost, nothing twice. */
		if (keel_res(t) == 0)
			cr_assert_eq(VAL(l->ma), ++l->expect_a);
		else
			cr_assert_eq(VAL(l->mb), ++l->expect_b);
	}
	g.res[0] = (int)(l->expect_a + l->expect_b);
	KEEL_END(t);
}

static KEEL_TASK_TYPE(looper_task, struct looper, task, looper_step);

struct feeder {
	struct keel_task task;
	int i;
	uintptr_t na, nb;
};

static int feeder_step(struct keel_task *t)
{
	struct feeder *f = keel_container_of(t, struct feeder, task);

	KEEL_BEGIN(t);
	for (f->i = 0; f->i < LAPS; f->i++) {
		/* A kernel round trip (a yield may run again in the same
		 * turn): the looper's recv reaches the kernel, and the
		 * cancel of the last one comes back. */
		KEEL_AWAIT(t, keel_nop(t));
		if (f->i & 1)
			cr_assert_eq(keel_mb_try_send(g_b, MSG(++f->nb)), 0,
				     "lap %d", f->i);
		else
			cr_assert_eq(keel_mb_try_send(g_a, MSG(++f->na)), 0,
				     "lap %d", f->i);
	}
	KEEL_END(t);
}

static KEEL_TASK_TYPE(feeder_task, struct feeder, task, feeder_step);

Test(select, rearmed_in_a_loop_leaves_nothing_behind, .timeout = 120)
{
	struct keel_loop *loop = setup();

	kt_spawn(loop, &looper_task, KEEL_PRIO_NORMAL);
	kt_spawn(loop, &feeder_task, KEEL_PRIO_NORMAL);
	kt_loop_run(loop);
	cr_assert_eq(g.res[0], LAPS);
	cr_assert_eq(kt_stats(loop).timers_armed, 0);
	teardown(loop);
}

/* ---- a sleep as an op branch ---- */

/* A sleep holds no ledger op (io/sleep.c) but in a select's op branch,
 * which knows its op by its ledger index: there it must take one. */
struct sleep_sel {
	struct keel_task task;
	struct keel_select sel;
	uint64_t nap, timeout;
};

static int start_sleep(struct keel_task *t, void *arg)
{
	struct sleep_sel *f = arg;

	return keel_sleep(t, f->nap);
}

static int sleep_sel_step(struct keel_task *t)
{
	struct sleep_sel *f = keel_container_of(t, struct sleep_sel, task);

	KEEL_BEGIN(t);
	keel_select_init(&f->sel, t, 0);
	keel_select_op(&f->sel, start_sleep, f);
	keel_select_timeout(&f->sel, f->timeout);
	KEEL_AWAIT(t, keel_select(t, &f->sel));
	record_two(&f->sel, t);
	KEEL_END(t);
}

static KEEL_TASK_TYPE(sleep_sel_task, struct sleep_sel, task, sleep_sel_step);

Test(select, sleep_branch_wins_or_is_cancelled, .timeout = 10)
{
	for (int lose = 0; lose < 2; lose++) {
		struct keel_loop *loop = setup();
		struct sleep_sel *f =
		    kt_spawn(loop, &sleep_sel_task, KEEL_PRIO_NORMAL);

		f->nap = lose ? 3600 * 1000 * MS : 1 * MS;
		f->timeout = lose ? 1 * MS : 3600 * 1000 * MS;
		kt_loop_run(loop);
		cr_assert_eq(g.winner, lose, "lose %d", lose);
		cr_assert_eq(g.res[lose], 0, "lose %d", lose);
		cr_assert_eq(g.res[!lose], -ECANCELED, "lose %d", lose);
		cr_assert_eq(g.inflight, 0, "lose %d", lose);
		cr_assert_eq(kt_stats(loop).timers_armed, 0);
		teardown(loop);
	}
}
