/* SPDX-License-Identifier: MIT */
/*
 * test_mailbox.c: bounded mailboxes. Every policy at capacity, on the
 * owner-loop path and on the cross-thread path (exact results, drop counts,
 * on_drop calls, which message survived DROP_OLDEST); the capacity bounding
 * each path, exactly even when it is not a power of two (1, 3); one
 * receiver at a time (-EBUSY); blocked local senders woken FIFO; close
 * (blocked local and remote senders get -EPIPE, the receiver drains then
 * gets -EPIPE); cancellation and token deadlines of a blocked send and a
 * blocked receive, leaving no trace in the queue, and level-triggered
 * send/recv in a cancelled task; FIFO per sender under many senders on
 * several loops, with a roomy and with a tiny capacity; a plain thread
 * feeding a parked loop, its doorbells needing no ring of its own (Linux
 * 6.13); wake-up coalescing (doorbells per burst); the stats counting
 * each message once whichever way it went (handed to a waiting receiver,
 * queued, moved in from a blocked sender, through the remote queue); and
 * what a loop does with a notification still in its inbox when it ends.
 *
 * Loops other than the test thread's run on plain threads (kt_lthread_*), each
 * setting up its own tasks: no runtime needed.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <keel.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "helpers/keel_test.h"
#include "helpers/scenario.h"
#include "loop.h" /* struct keel_loop: inbox.parked, inbox.doorbells */

#define MSG(v) ((void *)(uintptr_t)(v))
#define VAL(p) ((uintptr_t)(p))

#define UNSET 12345 /* a result nobody wrote yet */

/*
 * Every test runs in its own process, so these start zeroed. Tasks record
 * what they saw here (a frame is freed when its task exits); checks made
 * on other threads are CHECK()s (helpers/check.h), asserted at the end.
 *
 * Send results by message value; values received in order.
 */
#define MAXV 256
static int g_res[MAXV];
static struct kt_log g_got;  /* values received */
static struct kt_log g_done; /* senders completing: 100 + value */
static int g_recv_end = UNSET;

static void reset_results(void)
{
	for (int i = 0; i < MAXV; i++)
		g_res[i] = UNSET;
}

/* on_drop: records each dropped message. */
static uintptr_t g_dropped[MAXV];
static int g_ndropped;
static void *g_drop_arg;

static void on_drop(void *msg, void *arg)
{
	int i = __atomic_fetch_add(&g_ndropped, 1, __ATOMIC_SEQ_CST);

	if (i < MAXV)
		g_dropped[i] = VAL(msg);
	g_drop_arg = arg;
}

static int g_drop_tag; /* its address is the drop_arg */

static struct keel_mailbox *mb_new(struct keel_loop *owner, uint32_t cap,
				   enum keel_mb_policy policy)
{
	struct keel_mailbox_opts o = {
	    .capacity = cap,
	    .policy = policy,
	    .on_drop = on_drop,
	    .drop_arg = &g_drop_tag,
	};
	struct keel_mailbox *mb = NULL;

	cr_assert_eq(keel_mailbox_new(owner, &o, &mb), 0);
	cr_assert_not_null(mb);
	return mb;
}

static struct keel_mb_stats mb_stats(struct keel_mailbox *mb)
{
	struct keel_mb_stats s;

	memset(&s, 0xff, sizeof(s));
	keel_mb_stats(mb, &s);
	return s;
}

static void expect_stats(struct keel_mailbox *mb, uint64_t sent,
			 uint64_t received, uint64_t dropped, uint64_t full,
			 uint32_t depth)
{
	struct keel_mb_stats s = mb_stats(mb);

	cr_assert_eq(s.sent, sent, "sent %llu, expected %llu",
		     (unsigned long long)s.sent, (unsigned long long)sent);
	cr_assert_eq(s.received, received, "received %llu, expected %llu",
		     (unsigned long long)s.received,
		     (unsigned long long)received);
	cr_assert_eq(s.dropped, dropped, "dropped %llu, expected %llu",
		     (unsigned long long)s.dropped,
		     (unsigned long long)dropped);
	cr_assert_eq(s.full, full, "full %llu, expected %llu",
		     (unsigned long long)s.full, (unsigned long long)full);
	cr_assert_eq(s.depth, depth, "depth %u, expected %u", s.depth, depth);
}

/* ---- tasks used by the single-loop tests -------------------------------- */

/*
 * Sends from..to (with keel_mb_send, or keel_mb_try_send with `try`),
 * recording each result in g_res[value]; a completed await is logged as
 * 100 + value in g_done. Exits with the last result.
 */
struct sender {
	struct keel_task task;
	struct keel_mailbox *mb;
	int from, to, v;
	int try;
	int last;
};

static int sender_step(struct keel_task *t);
static KEEL_TASK_TYPE(sender_task, struct sender, task, sender_step);

static int sender_step(struct keel_task *t)
{
	struct sender *s = keel_container_of(t, struct sender, task);

	KEEL_BEGIN(t);
	for (s->v = s->from; s->v <= s->to; s->v++) {
		if (s->try) {
			s->last = keel_mb_try_send(s->mb, MSG(s->v));
		} else {
			KEEL_AWAIT(t, keel_mb_send(t, s->mb, MSG(s->v)));
			s->last = keel_res(t);
			kt_log_push(&g_done, 100 + s->v);
		}
		g_res[s->v] = s->last;
	}
	KEEL_EXIT(t, s->last);
}

static struct sender *spawn_sender(struct keel_loop *loop,
				   struct keel_mailbox *mb, int from, int to,
				   unsigned flags)
{
	struct sender *s =
	    kt_spawn(loop, &sender_task, KEEL_PRIO_NORMAL | flags);

	s->mb = mb;
	s->from = from;
	s->to = to;
	return s;
}

/*
 * Receives `want` messages (or, with `until_closed`, until an error) into
 * g_got; the result that ended it goes to g_recv_end; then a try_recv's
 * result goes to g_try_after. Exits with the last recv's result.
 */
static int g_try_after = UNSET;

struct receiver {
	struct keel_task task;
	struct keel_mailbox *mb;
	void *msg;
	int want, i;
	int until_closed;
};

static int receiver_step(struct keel_task *t);
static KEEL_TASK_TYPE(receiver_task, struct receiver, task, receiver_step);

static int receiver_step(struct keel_task *t)
{
	struct receiver *r = keel_container_of(t, struct receiver, task);
	void *extra;

	KEEL_BEGIN(t);
	for (r->i = 0; r->until_closed || r->i < r->want; r->i++) {
		r->msg = MSG(0xdead);
		KEEL_AWAIT(t, keel_mb_recv(t, r->mb, &r->msg));
		if (keel_res(t) != 0)
			break;
		kt_log_push(&g_got, (int)VAL(r->msg));
	}
	g_recv_end = keel_res(t);
	g_try_after = keel_mb_try_recv(r->mb, &extra);
	KEEL_EXIT(t, g_recv_end);
}

static struct receiver *spawn_receiver(struct keel_loop *loop,
				       struct keel_mailbox *mb, int want)
{
	struct receiver *r = kt_spawn(loop, &receiver_task, KEEL_PRIO_NORMAL);

	r->mb = mb;
	r->want = want;
	return r;
}

/* ---- policies at capacity ------------------------------------------------ */

struct policy_case {
	enum keel_mb_policy policy;
	int res[6];	/* results of sending 1..6 into capacity 4 */
	int got[4];	/* what is then received, in order */
	int dropped[2]; /* what on_drop saw, in order */
	int ndropped;
	uint64_t sent; /* stats: queued */
};

static const struct policy_case block_case = {
    KEEL_MB_BLOCK, {0, 0, 0, 0, -EAGAIN, -EAGAIN}, {1, 2, 3, 4}, {0}, 0, 4};
static const struct policy_case fail_case = {
    KEEL_MB_FAIL, {0, 0, 0, 0, -EAGAIN, -EAGAIN}, {1, 2, 3, 4}, {0}, 0, 4};
static const struct policy_case newest_case = {
    KEEL_MB_DROP_NEWEST,
    {0, 0, 0, 0, KEEL_MB_DROPPED, KEEL_MB_DROPPED},
    {1, 2, 3, 4},
    {5, 6},
    2,
    4};
static const struct policy_case oldest_case = {
    KEEL_MB_DROP_OLDEST,
    {0, 0, 0, 0, KEEL_MB_DROPPED, KEEL_MB_DROPPED},
    {3, 4, 5, 6},
    {1, 2},
    2,
    6};

/* A plain thread sending 1..6 with keel_mb_try_send. */
static void *try_send_1_to_6(void *arg)
{
	struct keel_mailbox *mb = arg;

	for (int v = 1; v <= 6; v++)
		g_res[v] = keel_mb_try_send(mb, MSG(v));
	return NULL;
}

/*
 * Send 1..6 into a mailbox of capacity 4: from a task on the owner loop
 * (keel_mb_send; keel_mb_try_send for BLOCK, whose send would wait), or
 * from a plain thread; then receive what is left on the owner loop.
 */
static void run_policy(const struct policy_case *pc, bool remote)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_mailbox *mb = mb_new(loop, 4, pc->policy);

	reset_results();
	if (remote) {
		pthread_t th;

		cr_assert_eq(pthread_create(&th, NULL, try_send_1_to_6, mb), 0);
		pthread_join(th, NULL);
	} else {
		struct sender *s2;

		spawn_sender(loop, mb, 1, 4, 0);
		s2 = spawn_sender(loop, mb, 5, 6, 0);
		s2->try = pc->policy == KEEL_MB_BLOCK;
		kt_loop_run(loop);
	}
	for (int v = 1; v <= 6; v++)
		cr_assert_eq(g_res[v], pc->res[v - 1],
			     "send of %d gave %d, expected %d", v, g_res[v],
			     pc->res[v - 1]);
	cr_assert_eq(g_ndropped, pc->ndropped, "on_drop ran %d times",
		     g_ndropped);
	for (int i = 0; i < pc->ndropped; i++) {
		cr_assert_eq(g_dropped[i], (uintptr_t)pc->dropped[i],
			     "drop %d was %lu, expected %d", i,
			     (unsigned long)g_dropped[i], pc->dropped[i]);
		cr_assert_eq(g_drop_arg, &g_drop_tag);
	}
	expect_stats(mb, pc->sent, 0, (uint64_t)pc->ndropped, 2, 4);
	cr_assert_eq(mb_stats(mb).capacity, 4);

	spawn_receiver(loop, mb, 4);
	kt_loop_run(loop);
	kt_log_expect(&g_got, pc->got, 4);
	cr_assert_eq(g_try_after, -EAGAIN, "try_recv on empty gave %d",
		     g_try_after);
	expect_stats(mb, pc->sent, 4, (uint64_t)pc->ndropped, 2, 0);
	keel_mailbox_release(mb);
	cr_assert_eq(g_ndropped, pc->ndropped, "nothing left to drop");
	keel_loop_destroy(loop);
}

Test(mailbox, block_policy_full_try_send_eagain_local, .timeout = 10)
{
	run_policy(&block_case, false);
}

Test(mailbox, block_policy_full_try_send_eagain_remote, .timeout = 10)
{
	run_policy(&block_case, true);
}

Test(mailbox, fail_policy_full_eagain_local, .timeout = 10)
{
	run_policy(&fail_case, false);
}

Test(mailbox, fail_policy_full_eagain_remote, .timeout = 10)
{
	run_policy(&fail_case, true);
}

Test(mailbox, drop_newest_drops_the_new_message_local, .timeout = 10)
{
	run_policy(&newest_case, false);
}

Test(mailbox, drop_newest_drops_the_new_message_remote, .timeout = 10)
{
	run_policy(&newest_case, true);
}

Test(mailbox, drop_oldest_keeps_the_newest_local, .timeout = 10)
{
	run_policy(&oldest_case, false);
}

Test(mailbox, drop_oldest_keeps_the_newest_remote, .timeout = 10)
{
	run_policy(&oldest_case, true);
}

/*
 * A small capacity that is not a power of two on the cross-thread path:
 * one plain sender fills it exactly (the ring behind it is rounded up, the
 * capacity is not), then finds it full; what went in comes out in order.
 */
static void run_small_remote_capacity(uint32_t cap)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_mailbox *mb = mb_new(loop, cap, KEEL_MB_FAIL);
	const int want[] = {1, 2, 3, 4, 5, 6};
	pthread_t th;

	reset_results();
	cr_assert_eq(pthread_create(&th, NULL, try_send_1_to_6, mb), 0);
	pthread_join(th, NULL);
	for (int v = 1; v <= 6; v++)
		cr_assert_eq(g_res[v], v <= (int)cap ? 0 : -EAGAIN,
			     "send of %d into capacity %u gave %d", v, cap,
			     g_res[v]);
	expect_stats(mb, cap, 0, 0, 6 - cap, cap);
	spawn_receiver(loop, mb, (int)cap);
	kt_loop_run(loop);
	kt_log_expect(&g_got, want, (int)cap);
	cr_assert_eq(g_try_after, -EAGAIN);
	keel_mailbox_release(mb);
	keel_loop_destroy(loop);
}

Test(mailbox, capacity_1_remote_path_holds_exactly_one_message, .timeout = 10)
{
	run_small_remote_capacity(1);
}

Test(mailbox, capacity_3_remote_path_holds_exactly_three, .timeout = 10)
{
	run_small_remote_capacity(3);
}

/* One receiver at a time: a second one gets -EBUSY and takes nothing. */
static int g_busy_res = UNSET;

struct second_receiver {
	struct keel_task task;
	struct keel_mailbox *mb;
	void *msg;
};

static int second_receiver_step(struct keel_task *t);
static KEEL_TASK_TYPE(second_receiver_task, struct second_receiver, task,
		      second_receiver_step);

static int second_receiver_step(struct keel_task *t)
{
	struct second_receiver *r =
	    keel_container_of(t, struct second_receiver, task);

	KEEL_BEGIN(t);
	KEEL_AWAIT(t, keel_mb_recv(t, r->mb, &r->msg));
	g_busy_res = keel_res(t);
	/* Now a message: it goes to the waiting receiver. */
	KEEL_AWAIT(t, keel_mb_send(t, r->mb, MSG(5)));
	KEEL_END(t);
}

Test(mailbox, second_concurrent_receiver_gets_ebusy, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_mailbox *mb = mb_new(loop, 4, KEEL_MB_BLOCK);
	struct second_receiver *r2;
	const int want[] = {5};

	spawn_receiver(loop, mb, 1); /* waits first */
	r2 = kt_spawn(loop, &second_receiver_task, KEEL_PRIO_NORMAL);
	r2->mb = mb;
	kt_loop_run(loop);
	cr_assert_eq(g_busy_res, -EBUSY, "the second receiver got %d",
		     g_busy_res);
	kt_log_expect(&g_got, want, 1);
	cr_assert_eq(g_recv_end, 0);
	expect_stats(mb, 1, 1, 0, 0, 0);
	keel_mailbox_release(mb);
	keel_loop_destroy(loop);
}

Test(mailbox, bad_options_rejected_and_defaults_apply, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_mailbox_opts o = {.capacity = 4, .policy = 7};
	struct keel_mailbox *mb = NULL;

	cr_assert_eq(keel_mailbox_new(loop, &o, &mb), -EINVAL);
	cr_assert_null(mb);
	cr_assert_eq(keel_mailbox_new(loop, NULL, &mb), 0);
	cr_assert_eq(mb_stats(mb).capacity, 1024);
	cr_assert_eq(mb_stats(mb).depth, 0);
	/* References: the mailbox lives until the last one goes. */
	cr_assert_eq(keel_mailbox_ref(mb), mb);
	keel_mailbox_release(mb);
	cr_assert_eq(mb_stats(mb).capacity, 1024);
	keel_mailbox_release(mb);
	keel_loop_destroy(loop);
}

/*
 * Owner-loop senders use one ring, other threads the lock-free queue: the
 * capacity bounds each, so the depth can reach twice the capacity.
 */
Test(mailbox, capacity_bounds_each_path, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_mailbox *mb = mb_new(loop, 4, KEEL_MB_FAIL);
	pthread_t th;

	reset_results();
	spawn_sender(loop, mb, 11, 15, 0); /* local: 11..14 fit, 15 fails */
	kt_loop_run(loop);
	cr_assert_eq(pthread_create(&th, NULL, try_send_1_to_6, mb), 0);
	pthread_join(th, NULL);
	for (int v = 1; v <= 4; v++)
		cr_assert_eq(g_res[v], 0, "remote send of %d: %d", v, g_res[v]);
	cr_assert_eq(g_res[5], -EAGAIN);
	for (int v = 11; v <= 14; v++)
		cr_assert_eq(g_res[v], 0, "local send of %d: %d", v, g_res[v]);
	cr_assert_eq(g_res[15], -EAGAIN);
	expect_stats(mb, 8, 0, 0, 3, 8);

	spawn_receiver(loop, mb, 8);
	kt_loop_run(loop);
	cr_assert_eq(g_got.n, 8);
	/* Each path in its own order, whatever the interleaving. */
	int next_local = 11, next_remote = 1;

	for (int i = 0; i < 8; i++) {
		if (g_got.v[i] >= 11)
			cr_assert_eq(g_got.v[i], next_local++);
		else
			cr_assert_eq(g_got.v[i], next_remote++);
	}
	cr_assert_eq(next_local, 15);
	cr_assert_eq(next_remote, 5);
	keel_mailbox_release(mb);
	keel_loop_destroy(loop);
}

/* ---- BLOCK: blocked local senders --------------------------------------- */

static struct keel_mb_stats g_seen_stats;
static int g_try_full = UNSET;

/* Records the mailbox while the senders wait, then receives `want`. */
struct watcher {
	struct keel_task task;
	struct keel_mailbox *mb;
	void *msg;
	int want, i;
};

static int watcher_step(struct keel_task *t);
static KEEL_TASK_TYPE(watcher_task, struct watcher, task, watcher_step);

static int watcher_step(struct keel_task *t)
{
	struct watcher *w = keel_container_of(t, struct watcher, task);

	KEEL_BEGIN(t);
	keel_mb_stats(w->mb, &g_seen_stats);
	g_try_full = keel_mb_try_send(w->mb, MSG(50));
	for (w->i = 0; w->i < w->want; w->i++) {
		KEEL_AWAIT(t, keel_mb_recv(t, w->mb, &w->msg));
		if (keel_res(t))
			break;
		kt_log_push(&g_got, (int)VAL(w->msg));
	}
	KEEL_END(t);
}

Test(mailbox, blocked_local_senders_resume_fifo_as_room_frees, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_mailbox *mb = mb_new(loop, 2, KEEL_MB_BLOCK);
	struct watcher *w;
	const int want_got[] = {1, 2, 3, 4, 5};
	const int want_done[] = {101, 102, 103, 104, 105};

	reset_results();
	/* Spawn order is run order: 1, 2 fit, then 3, 4, 5 wait in turn. */
	spawn_sender(loop, mb, 1, 2, 0);
	spawn_sender(loop, mb, 3, 3, 0);
	spawn_sender(loop, mb, 4, 4, 0);
	spawn_sender(loop, mb, 5, 5, 0);
	w = kt_spawn(loop, &watcher_task, KEEL_PRIO_NORMAL);
	w->mb = mb;
	w->want = 5;
	kt_loop_run(loop);

	cr_assert_eq(g_seen_stats.depth, 2, "depth while blocked: %u",
		     g_seen_stats.depth);
	cr_assert_eq(g_seen_stats.sent, 2);
	cr_assert_eq(g_seen_stats.full, 3, "three sends found it full");
	cr_assert_eq(g_try_full, -EAGAIN, "try_send on a full BLOCK mailbox");
	kt_log_expect(&g_got, want_got, 5);
	kt_log_expect(&g_done, want_done, 5);
	for (int v = 1; v <= 5; v++)
		cr_assert_eq(g_res[v], 0, "send of %d gave %d", v, g_res[v]);
	expect_stats(mb, 5, 5, 0, 4, 0);
	keel_mailbox_release(mb);
	cr_assert_eq(g_ndropped, 0);
	keel_loop_destroy(loop);
}

/* ---- close ----------------------------------------------------------------
 */

static int g_after_close_try = UNSET;
static int g_after_close_send = UNSET;
static int g_join[8];

/*
 * Fills a capacity-2 mailbox with 1, 2; two senders wait with 3 and 4;
 * then it closes the mailbox and drains it.
 */
struct closer {
	struct keel_task task;
	struct keel_mailbox *mb;
	struct sender *s[2];
	void *msg;
	int i;
};

static int closer_step(struct keel_task *t);
static KEEL_TASK_TYPE(closer_task, struct closer, task, closer_step);

static int closer_step(struct keel_task *t)
{
	struct closer *c = keel_container_of(t, struct closer, task);

	KEEL_BEGIN(t);
	KEEL_AWAIT(t, keel_mb_send(t, c->mb, MSG(1)));
	KEEL_AWAIT(t, keel_mb_send(t, c->mb, MSG(2)));
	for (c->i = 0; c->i < 2; c->i++) {
		c->s[c->i] = keel_spawn(t->loop, &sender_task,
					KEEL_PRIO_NORMAL | KEEL_SPAWN_JOINABLE);
		CHECK(c->s[c->i] != NULL);
		c->s[c->i]->mb = c->mb;
		c->s[c->i]->from = c->s[c->i]->to = 3 + c->i;
	}
	KEEL_YIELD(t); /* they run and wait */
	CHECK_EQ(mb_stats(c->mb).full, 2);
	CHECK(!keel_mb_is_closed(c->mb));
	keel_mb_close(c->mb);
	CHECK(keel_mb_is_closed(c->mb));
	keel_mb_close(c->mb); /* twice is harmless */
	g_after_close_try = keel_mb_try_send(c->mb, MSG(9));
	KEEL_AWAIT(t, keel_mb_send(t, c->mb, MSG(10)));
	g_after_close_send = keel_res(t);
	for (c->i = 0; c->i < 2; c->i++) {
		KEEL_AWAIT(t, keel_join(t, &c->s[c->i]->task));
		g_join[c->i] = keel_res(t);
	}
	/* Drain what was queued, then -EPIPE, level-triggered. */
	for (;;) {
		KEEL_AWAIT(t, keel_mb_recv(t, c->mb, &c->msg));
		if (keel_res(t))
			break;
		kt_log_push(&g_got, (int)VAL(c->msg));
	}
	g_recv_end = keel_res(t);
	g_try_after = keel_mb_try_recv(c->mb, &c->msg);
	KEEL_END(t);
}

Test(mailbox, close_fails_blocked_senders_and_receiver_drains_then_epipe,
     .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_mailbox *mb = mb_new(loop, 2, KEEL_MB_BLOCK);
	struct closer *c = kt_spawn(loop, &closer_task, KEEL_PRIO_NORMAL);
	const int want[] = {1, 2};

	reset_results();
	c->mb = mb;
	kt_loop_run(loop);
	kt_expect_no_failures();
	cr_assert_eq(g_join[0], -EPIPE, "blocked sender 1 got %d", g_join[0]);
	cr_assert_eq(g_join[1], -EPIPE, "blocked sender 2 got %d", g_join[1]);
	cr_assert_eq(g_after_close_try, -EPIPE);
	cr_assert_eq(g_after_close_send, -EPIPE);
	kt_log_expect(&g_got, want, 2);
	cr_assert_eq(g_recv_end, -EPIPE);
	cr_assert_eq(g_try_after, -EPIPE);
	expect_stats(mb, 2, 2, 0, 2, 0);
	keel_mailbox_release(mb);
	cr_assert_eq(g_ndropped, 0, "messages refused are not dropped");
	keel_loop_destroy(loop);
}

/* Closes the mailbox a waiting receiver waits on. */
struct close_later {
	struct keel_task task;
	struct keel_mailbox *mb;
};

static int close_later_step(struct keel_task *t);
static KEEL_TASK_TYPE(close_later_task, struct close_later, task,
		      close_later_step);

static int close_later_step(struct keel_task *t)
{
	struct close_later *c = keel_container_of(t, struct close_later, task);

	KEEL_BEGIN(t);
	KEEL_AWAIT(t, keel_sleep(t, KT_MS(5)));
	keel_mb_close(c->mb);
	KEEL_END(t);
}

Test(mailbox, close_wakes_waiting_receiver_with_epipe, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_mailbox *mb = mb_new(loop, 4, KEEL_MB_BLOCK);
	struct receiver *r = spawn_receiver(loop, mb, 0);
	struct close_later *c;

	r->until_closed = 1;
	c = kt_spawn(loop, &close_later_task, KEEL_PRIO_NORMAL);
	c->mb = mb;
	kt_loop_run(loop);
	cr_assert_eq(g_got.n, 0);
	cr_assert_eq(g_recv_end, -EPIPE);
	cr_assert_eq(g_try_after, -EPIPE);
	keel_mailbox_release(mb);
	keel_loop_destroy(loop);
}

/*
 * A send to a closed mailbox with room, from the owner loop: -EPIPE, and
 * nothing queued (a send's fast path must see the close, not only the
 * room). Then the message sent before the close, then -EPIPE.
 */
static int g_roomy_send[2] = {UNSET, UNSET};

static int roomy_closer_step(struct keel_task *t)
{
	struct close_later *c = keel_container_of(t, struct close_later, task);

	KEEL_BEGIN(t);
	KEEL_AWAIT(t, keel_mb_send(t, c->mb, MSG(1)));
	g_roomy_send[0] = keel_res(t);
	keel_mb_close(c->mb);
	KEEL_AWAIT(t, keel_mb_send(t, c->mb, MSG(2)));
	g_roomy_send[1] = keel_res(t);
	KEEL_END(t);
}
static KEEL_TASK_TYPE(roomy_closer_task, struct close_later, task,
		      roomy_closer_step);

Test(mailbox, send_to_closed_mailbox_with_room_fails_epipe, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_mailbox *mb = mb_new(loop, 4, KEEL_MB_BLOCK);
	struct close_later *c =
	    kt_spawn(loop, &roomy_closer_task, KEEL_PRIO_NORMAL);
	void *msg = NULL;

	c->mb = mb;
	kt_loop_run(loop);
	cr_assert_eq(g_roomy_send[0], 0);
	cr_assert_eq(g_roomy_send[1], -EPIPE);
	cr_assert_eq(mb_stats(mb).depth, 1);
	cr_assert_eq(keel_mb_try_recv(mb, &msg), 0);
	cr_assert_eq(VAL(msg), 1);
	cr_assert_eq(keel_mb_try_recv(mb, &msg), -EPIPE);
	keel_mailbox_release(mb);
	keel_loop_destroy(loop);
}

/* ---- cancellation ---------------------------------------------------------
 */

/*
 * Cancels a blocked sender (or, with `deadline`, gives it a token that
 * times out), then receives: the cancelled message must not appear.
 * cap 1: 1 is queued; sender A waits with 2, sender B with 3.
 */
struct send_canceller {
	struct keel_task task;
	struct keel_mailbox *mb;
	struct sender *a, *b;
	void *msg;
	uint64_t t0;
	int deadline;
};

static uint64_t g_waited_ns;

static int send_canceller_step(struct keel_task *t);
static KEEL_TASK_TYPE(send_canceller_task, struct send_canceller, task,
		      send_canceller_step);

static int send_canceller_step(struct keel_task *t)
{
	struct send_canceller *c =
	    keel_container_of(t, struct send_canceller, task);

	KEEL_BEGIN(t);
	KEEL_AWAIT(t, keel_mb_send(t, c->mb, MSG(1)));
	c->a = keel_spawn(t->loop, &sender_task,
			  KEEL_PRIO_NORMAL | KEEL_SPAWN_JOINABLE);
	c->b = keel_spawn(t->loop, &sender_task,
			  KEEL_PRIO_NORMAL | KEEL_SPAWN_JOINABLE);
	CHECK(c->a && c->b);
	c->a->mb = c->b->mb = c->mb;
	c->a->from = c->a->to = 2;
	c->b->from = c->b->to = 3;
	c->t0 = kt_now_ns();
	if (c->deadline) {
		struct keel_token *tok = NULL;

		CHECK(keel_token_new(t->loop, NULL, &tok) == 0);
		CHECK(keel_token_set_timeout(tok, KT_MS(20)) == 0);
		CHECK(keel_task_set_token(&c->a->task, tok) == 0);
		keel_token_release(tok);
	}
	KEEL_YIELD(t); /* both wait now */
	CHECK_EQ(mb_stats(c->mb).full, 2);
	if (!c->deadline)
		CHECK(keel_task_cancel(&c->a->task) == 0);
	KEEL_AWAIT(t, keel_join(t, &c->a->task));
	g_join[0] = keel_res(t);
	g_waited_ns = kt_now_ns() - c->t0;
	CHECK_EQ(mb_stats(c->mb).depth, 1);
	/* Room now goes to B, not to the cancelled A. */
	KEEL_AWAIT(t, keel_mb_recv(t, c->mb, &c->msg));
	CHECK_EQ(keel_res(t), 0);
	kt_log_push(&g_got, (int)VAL(c->msg));
	KEEL_AWAIT(t, keel_mb_recv(t, c->mb, &c->msg));
	CHECK_EQ(keel_res(t), 0);
	kt_log_push(&g_got, (int)VAL(c->msg));
	g_try_after = keel_mb_try_recv(c->mb, &c->msg);
	KEEL_AWAIT(t, keel_join(t, &c->b->task));
	g_join[1] = keel_res(t);
	KEEL_END(t);
}

static void run_send_cancel(int deadline)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_mailbox *mb = mb_new(loop, 1, KEEL_MB_BLOCK);
	struct send_canceller *c =
	    kt_spawn(loop, &send_canceller_task, KEEL_PRIO_NORMAL);
	const int want[] = {1, 3};

	reset_results();
	c->mb = mb;
	c->deadline = deadline;
	kt_loop_run(loop);
	kt_expect_no_failures();
	cr_assert_eq(g_join[0], deadline ? -ETIMEDOUT : -ECANCELED,
		     "the blocked send gave %d", g_join[0]);
	cr_assert_eq(g_join[1], 0, "the next blocked send gave %d", g_join[1]);
	kt_log_expect(&g_got, want, 2);
	cr_assert_eq(g_try_after, -EAGAIN, "the cancelled message is queued");
	if (deadline)
		cr_assert_geq(g_waited_ns, KT_MS(20), "timed out after %llu ns",
			      (unsigned long long)g_waited_ns);
	expect_stats(mb, 2, 2, 0, 2, 0);
	keel_mailbox_release(mb);
	cr_assert_eq(g_ndropped, 0);
	keel_loop_destroy(loop);
}

Test(mailbox, cancel_blocked_local_send_leaves_no_trace, .timeout = 10)
{
	run_send_cancel(0);
}

Test(mailbox, deadline_of_blocked_local_send_gives_etimedout, .timeout = 10)
{
	run_send_cancel(1);
}

/*
 * A receiver waits on an empty mailbox and is cancelled (or times out);
 * then a message is sent: a second receiver gets it, and the first one's
 * `out` was never written.
 */
static uintptr_t g_r1_msg;

struct lone_receiver {
	struct keel_task task;
	struct keel_mailbox *mb;
	void *msg;
};

static int lone_receiver_step(struct keel_task *t);
static KEEL_TASK_TYPE(lone_receiver_task, struct lone_receiver, task,
		      lone_receiver_step);

static int lone_receiver_step(struct keel_task *t)
{
	struct lone_receiver *r =
	    keel_container_of(t, struct lone_receiver, task);

	KEEL_BEGIN(t);
	r->msg = MSG(0xdead);
	KEEL_AWAIT(t, keel_mb_recv(t, r->mb, &r->msg));
	g_r1_msg = VAL(r->msg);
	KEEL_EXIT(t, keel_res(t));
}

struct recv_canceller {
	struct keel_task task;
	struct keel_mailbox *mb;
	struct lone_receiver *r1, *r2;
	uint64_t t0;
	int deadline;
};

static int recv_canceller_step(struct keel_task *t);
static KEEL_TASK_TYPE(recv_canceller_task, struct recv_canceller, task,
		      recv_canceller_step);

static int recv_canceller_step(struct keel_task *t)
{
	struct recv_canceller *c =
	    keel_container_of(t, struct recv_canceller, task);

	KEEL_BEGIN(t);
	c->r1 = keel_spawn(t->loop, &lone_receiver_task,
			   KEEL_PRIO_NORMAL | KEEL_SPAWN_JOINABLE);
	CHECK(c->r1 != NULL);
	c->r1->mb = c->mb;
	c->t0 = kt_now_ns();
	if (c->deadline) {
		struct keel_token *tok = NULL;

		CHECK(keel_token_new(t->loop, NULL, &tok) == 0);
		CHECK(keel_token_set_timeout(tok, KT_MS(20)) == 0);
		CHECK(keel_task_set_token(&c->r1->task, tok) == 0);
		keel_token_release(tok);
	}
	KEEL_YIELD(t); /* r1 waits */
	if (!c->deadline)
		CHECK(keel_task_cancel(&c->r1->task) == 0);
	KEEL_AWAIT(t, keel_join(t, &c->r1->task));
	g_join[0] = keel_res(t);
	g_waited_ns = kt_now_ns() - c->t0;
	/* The mailbox kept no trace of r1: the message waits for r2. */
	KEEL_AWAIT(t, keel_mb_send(t, c->mb, MSG(42)));
	g_res[0] = keel_res(t);
	CHECK_EQ(mb_stats(c->mb).depth, 1);
	c->r2 = keel_spawn(t->loop, &lone_receiver_task,
			   KEEL_PRIO_NORMAL | KEEL_SPAWN_JOINABLE);
	CHECK(c->r2 != NULL);
	c->r2->mb = c->mb;
	g_res[1] = (int)g_r1_msg;
	KEEL_AWAIT(t, keel_join(t, &c->r2->task));
	g_join[1] = keel_res(t);
	KEEL_END(t);
}

static void run_recv_cancel(int deadline)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_mailbox *mb = mb_new(loop, 4, KEEL_MB_BLOCK);
	struct recv_canceller *c =
	    kt_spawn(loop, &recv_canceller_task, KEEL_PRIO_NORMAL);

	reset_results();
	c->mb = mb;
	c->deadline = deadline;
	kt_loop_run(loop);
	kt_expect_no_failures();
	cr_assert_eq(g_join[0], deadline ? -ETIMEDOUT : -ECANCELED,
		     "the blocked recv gave %d", g_join[0]);
	cr_assert_eq(g_res[1], 0xdead, "the cancelled recv wrote its out");
	cr_assert_eq(g_res[0], 0, "send after the cancel: %d", g_res[0]);
	cr_assert_eq(g_join[1], 0, "the second receiver got %d", g_join[1]);
	cr_assert_eq(g_r1_msg, 42, "the second receiver got %lu",
		     (unsigned long)g_r1_msg);
	if (deadline)
		cr_assert_geq(g_waited_ns, KT_MS(20));
	expect_stats(mb, 1, 1, 0, 0, 0);
	keel_mailbox_release(mb);
	keel_loop_destroy(loop);
}

Test(mailbox, cancel_blocked_recv_leaves_no_trace, .timeout = 10)
{
	run_recv_cancel(0);
}

Test(mailbox, deadline_of_blocked_recv_gives_etimedout, .timeout = 10)
{
	run_recv_cancel(1);
}

/*
 * Level-triggered: in a task whose token is already cancelled, send and
 * receive return the cause at once, even when they could complete, and
 * leave the mailbox as it was.
 */
static int g_lvl_send = UNSET, g_lvl_recv = UNSET, g_lvl_try = UNSET;

struct self_cancel {
	struct keel_task task;
	struct keel_mailbox *mb;
	void *msg;
};

static int self_cancel_step(struct keel_task *t);
static KEEL_TASK_TYPE(self_cancel_task, struct self_cancel, task,
		      self_cancel_step);

static int self_cancel_step(struct keel_task *t)
{
	struct self_cancel *s = keel_container_of(t, struct self_cancel, task);

	KEEL_BEGIN(t);
	KEEL_AWAIT(t, keel_mb_send(t, s->mb, MSG(7)));
	CHECK_EQ(keel_res(t), 0);
	CHECK(keel_task_cancel(t) == 0);
	KEEL_AWAIT(t, keel_mb_send(t, s->mb, MSG(8)));
	g_lvl_send = keel_res(t);
	s->msg = MSG(0xdead);
	KEEL_AWAIT(t, keel_mb_recv(t, s->mb, &s->msg));
	g_lvl_recv = keel_res(t);
	/* try_recv is not an await: it still takes the message. */
	g_lvl_try = keel_mb_try_recv(s->mb, &s->msg);
	g_r1_msg = VAL(s->msg);
	KEEL_END(t);
}

Test(mailbox, cancelled_task_send_and_recv_return_cause_at_once, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_mailbox *mb = mb_new(loop, 4, KEEL_MB_BLOCK);
	struct self_cancel *s =
	    kt_spawn(loop, &self_cancel_task, KEEL_PRIO_NORMAL);

	s->mb = mb;
	kt_loop_run(loop);
	kt_expect_no_failures();
	cr_assert_eq(g_lvl_send, -ECANCELED, "send gave %d", g_lvl_send);
	cr_assert_eq(g_lvl_recv, -ECANCELED,
		     "recv under a cancelled token gave %d (a message "
		     "was waiting)",
		     g_lvl_recv);
	cr_assert_eq(g_lvl_try, 0);
	cr_assert_eq(g_r1_msg, 7);
	keel_mailbox_release(mb);
	keel_loop_destroy(loop);
}

/* ---- loops on plain threads ---------------------------------------------- */

#define MAX_LOOPS 4

static struct kt_lthread g_lt[MAX_LOOPS];

/* ---- FIFO per sender, many senders on several loops -----------------------
 */

#define SENDERS_PER_LOOP 4
#define MAX_SENDERS	 (MAX_LOOPS * SENDERS_PER_LOOP)

static struct keel_mailbox *g_mb;
static uint64_t g_per_sender; /* messages each sender sends */
static uint64_t g_last[MAX_SENDERS];
static uint64_t g_order_errors;
static uint64_t g_total;
static int g_send_errors;

/* Sends (id << 32 | seq) for seq 1..g_per_sender. */
struct seq_sender {
	struct keel_task task;
	uint64_t id, seq;
};

static int seq_sender_step(struct keel_task *t);
static KEEL_TASK_TYPE(seq_sender_task, struct seq_sender, task,
		      seq_sender_step);

static int seq_sender_step(struct keel_task *t)
{
	struct seq_sender *s = keel_container_of(t, struct seq_sender, task);

	KEEL_BEGIN(t);
	for (s->seq = 1; s->seq <= g_per_sender; s->seq++) {
		KEEL_AWAIT(t, keel_mb_send(t, g_mb, MSG(s->id << 32 | s->seq)));
		if (keel_res(t) != 0) {
			__atomic_add_fetch(&g_send_errors, 1, __ATOMIC_RELAXED);
			CHECK_EQ(keel_res(t), 0);
			break;
		}
	}
	KEEL_END(t);
}

/* Receives `want` messages and checks each sender's sequence. */
struct seq_receiver {
	struct keel_task task;
	void *msg;
	uint64_t want, n;
};

static int seq_receiver_step(struct keel_task *t);
static KEEL_TASK_TYPE(seq_receiver_task, struct seq_receiver, task,
		      seq_receiver_step);

static void seq_check(void *msg)
{
	uint64_t id = VAL(msg) >> 32, seq = VAL(msg) & 0xffffffffu;

	if (id >= MAX_SENDERS || seq != g_last[id] + 1)
		g_order_errors++;
	if (id < MAX_SENDERS)
		g_last[id] = seq;
	g_total++;
}

static int seq_receiver_step(struct keel_task *t)
{
	struct seq_receiver *r =
	    keel_container_of(t, struct seq_receiver, task);

	KEEL_BEGIN(t);
	for (r->n = 0; r->n < r->want; r->n++) {
		KEEL_AWAIT(t, keel_mb_recv(t, g_mb, &r->msg));
		if (keel_res(t) != 0) {
			CHECK_EQ(keel_res(t), 0);
			break;
		}
		seq_check(r->msg);
	}
	/* Nothing more: no duplicate is waiting. */
	CHECK(keel_mb_try_recv(g_mb, &r->msg) == -EAGAIN);
	KEEL_END(t);
}

static void spawn_seq_senders(struct keel_loop *loop, int index)
{
	for (int i = 0; i < SENDERS_PER_LOOP; i++) {
		struct seq_sender *s =
		    keel_spawn(loop, &seq_sender_task, KEEL_PRIO_NORMAL);

		CHECK(s != NULL);
		if (s)
			s->id = (uint64_t)(index * SENDERS_PER_LOOP + i);
	}
}

static void run_fifo(uint32_t cap, uint64_t per_sender)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct seq_receiver *r;
	uint64_t total = per_sender * MAX_SENDERS;

	g_mb = mb_new(loop, cap, KEEL_MB_BLOCK);
	g_per_sender = per_sender;
	r = kt_spawn(loop, &seq_receiver_task, KEEL_PRIO_NORMAL);
	r->want = total;
	spawn_seq_senders(loop, 0);
	kt_lthreads_start(g_lt, MAX_LOOPS, spawn_seq_senders);
	kt_loop_run(loop);
	kt_lthreads_join(g_lt, MAX_LOOPS);
	kt_expect_no_failures();
	cr_assert_eq(g_send_errors, 0);
	cr_assert_eq(g_total, total, "received %llu of %llu",
		     (unsigned long long)g_total, (unsigned long long)total);
	cr_assert_eq(g_order_errors, 0, "%llu messages out of order",
		     (unsigned long long)g_order_errors);
	for (int i = 0; i < MAX_SENDERS; i++)
		cr_assert_eq(g_last[i], per_sender, "sender %d: last seq %llu",
			     i, (unsigned long long)g_last[i]);
	struct keel_mb_stats s = mb_stats(g_mb);

	cr_assert_eq(s.sent, total);
	cr_assert_eq(s.received, total);
	cr_assert_eq(s.depth, 0);
	cr_assert_eq(s.dropped, 0);
	keel_mailbox_release(g_mb);
	keel_loop_destroy(loop);
}

Test(mailbox, fifo_per_sender_16_senders_on_4_loops_roomy, .timeout = 30)
{
	run_fifo(1024, 100000);
}

Test(mailbox, fifo_per_sender_16_senders_on_4_loops_capacity_4, .timeout = 30)
{
	run_fifo(4, 50000);
}

/* ---- remote senders: cancel and close -------------------------------------
 */

static int g_phase;

static int phase(void)
{
	return __atomic_load_n(&g_phase, __ATOMIC_ACQUIRE);
}

static void set_phase(int p)
{
	__atomic_store_n(&g_phase, p, __ATOMIC_RELEASE);
}

/*
 * On loop 1: fills the remote queue (capacity 4) with 1..4; sender A
 * waits with 100 and is cancelled (or times out); then sender B waits
 * with 200; phase 1 tells loop 0 to receive.
 */
static int g_remote_cancel_deadline;

struct remote_script {
	struct keel_task task;
	struct sender *a, *b;
	int v;
};

static int remote_script_step(struct keel_task *t);
static KEEL_TASK_TYPE(remote_script_task, struct remote_script, task,
		      remote_script_step);

static int remote_script_step(struct keel_task *t)
{
	struct remote_script *s =
	    keel_container_of(t, struct remote_script, task);

	KEEL_BEGIN(t);
	for (s->v = 1; s->v <= 4; s->v++) {
		KEEL_AWAIT(t, keel_mb_send(t, g_mb, MSG(s->v)));
		CHECK_EQ(keel_res(t), 0);
	}
	s->a = keel_spawn(t->loop, &sender_task,
			  KEEL_PRIO_NORMAL | KEEL_SPAWN_JOINABLE);
	CHECK(s->a != NULL);
	s->a->mb = g_mb;
	s->a->from = s->a->to = 100;
	if (g_remote_cancel_deadline) {
		struct keel_token *tok = NULL;

		CHECK(keel_token_new(t->loop, NULL, &tok) == 0);
		CHECK(keel_token_set_timeout(tok, KT_MS(20)) == 0);
		CHECK(keel_task_set_token(&s->a->task, tok) == 0);
		keel_token_release(tok);
	}
	KEEL_YIELD(t); /* A waits */
	CHECK_EQ(mb_stats(g_mb).full, 1);
	if (!g_remote_cancel_deadline)
		CHECK(keel_task_cancel(&s->a->task) == 0);
	KEEL_AWAIT(t, keel_join(t, &s->a->task));
	g_join[0] = keel_res(t);
	s->b = keel_spawn(t->loop, &sender_task,
			  KEEL_PRIO_NORMAL | KEEL_SPAWN_JOINABLE);
	CHECK(s->b != NULL);
	s->b->mb = g_mb;
	s->b->from = s->b->to = 200;
	KEEL_YIELD(t); /* B waits */
	CHECK_EQ(mb_stats(g_mb).full, 2);
	set_phase(1);
	KEEL_AWAIT(t, keel_join(t, &s->b->task));
	g_join[1] = keel_res(t);
	KEEL_END(t);
}

static void setup_remote_script(struct keel_loop *loop, int index)
{
	CHECK(keel_spawn(loop, &remote_script_task, KEEL_PRIO_NORMAL) != NULL);
}

/* On loop 0: waits for phase `p`, then receives `want` messages. */
struct phased_receiver {
	struct keel_task task;
	void *msg;
	int p, want, i;
};

static int phased_receiver_step(struct keel_task *t);
static KEEL_TASK_TYPE(phased_receiver_task, struct phased_receiver, task,
		      phased_receiver_step);

static int phased_receiver_step(struct keel_task *t)
{
	struct phased_receiver *r =
	    keel_container_of(t, struct phased_receiver, task);

	KEEL_BEGIN(t);
	for (r->i = 0; phase() < r->p && r->i < 5000; r->i++)
		KEEL_AWAIT(t, keel_sleep(t, KT_MS(1)));
	CHECK(phase() >= r->p);
	for (r->i = 0; r->i < r->want; r->i++) {
		KEEL_AWAIT(t, keel_mb_recv(t, g_mb, &r->msg));
		if (keel_res(t)) {
			CHECK_EQ(keel_res(t), 0);
			break;
		}
		kt_log_push(&g_got, (int)VAL(r->msg));
	}
	g_try_after = keel_mb_try_recv(g_mb, &r->msg);
	KEEL_END(t);
}

static void run_remote_send_cancel(int deadline)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct phased_receiver *r;
	const int want[] = {1, 2, 3, 4, 200};

	g_mb = mb_new(loop, 4, KEEL_MB_BLOCK);
	g_remote_cancel_deadline = deadline;
	r = kt_spawn(loop, &phased_receiver_task, KEEL_PRIO_NORMAL);
	r->p = 1;
	r->want = 5;
	kt_lthreads_start(g_lt, 2, setup_remote_script);
	kt_loop_run(loop);
	kt_lthreads_join(g_lt, 2);
	kt_expect_no_failures();
	cr_assert_eq(g_join[0], deadline ? -ETIMEDOUT : -ECANCELED,
		     "the blocked remote send gave %d", g_join[0]);
	cr_assert_eq(g_join[1], 0, "the next blocked remote send gave %d",
		     g_join[1]);
	kt_log_expect(&g_got, want, 5);
	cr_assert_eq(g_try_after, -EAGAIN);
	expect_stats(g_mb, 5, 5, 0, 2, 0);
	keel_mailbox_release(g_mb);
	cr_assert_eq(g_ndropped, 0);
	keel_loop_destroy(loop);
}

Test(mailbox, cancel_blocked_remote_send_leaves_no_trace, .timeout = 10)
{
	run_remote_send_cancel(0);
}

Test(mailbox, deadline_of_blocked_remote_send_gives_etimedout, .timeout = 10)
{
	run_remote_send_cancel(1);
}

/*
 * Close with senders blocked on both paths (capacity 2): loop 1 fills the
 * remote queue with 11, 12 and waits with 13; loop 0 fills the local ring
 * with 1, 2 and waits with 3; then loop 0 closes. Both waiting senders get
 * -EPIPE, later sends too, and the receiver drains the four then -EPIPE.
 */
static int g_remote_after_close = UNSET;

struct remote_filler {
	struct keel_task task;
	struct sender *w;
	int v;
};

static int remote_filler_step(struct keel_task *t);
static KEEL_TASK_TYPE(remote_filler_task, struct remote_filler, task,
		      remote_filler_step);

static int remote_filler_step(struct keel_task *t)
{
	struct remote_filler *f =
	    keel_container_of(t, struct remote_filler, task);

	KEEL_BEGIN(t);
	for (f->v = 11; f->v <= 12; f->v++) {
		KEEL_AWAIT(t, keel_mb_send(t, g_mb, MSG(f->v)));
		CHECK_EQ(keel_res(t), 0);
	}
	f->w = keel_spawn(t->loop, &sender_task,
			  KEEL_PRIO_NORMAL | KEEL_SPAWN_JOINABLE);
	CHECK(f->w != NULL);
	f->w->mb = g_mb;
	f->w->from = f->w->to = 13;
	KEEL_YIELD(t); /* it waits */
	set_phase(1);
	KEEL_AWAIT(t, keel_join(t, &f->w->task));
	g_join[1] = keel_res(t);
	KEEL_AWAIT(t, keel_mb_send(t, g_mb, MSG(14)));
	g_remote_after_close = keel_res(t);
	KEEL_END(t);
}

static void setup_remote_filler(struct keel_loop *loop, int index)
{
	CHECK(keel_spawn(loop, &remote_filler_task, KEEL_PRIO_NORMAL) != NULL);
}

struct local_closer {
	struct keel_task task;
	struct sender *w;
	void *msg;
	int i;
};

static int local_closer_step(struct keel_task *t);
static KEEL_TASK_TYPE(local_closer_task, struct local_closer, task,
		      local_closer_step);

static int local_closer_step(struct keel_task *t)
{
	struct local_closer *c =
	    keel_container_of(t, struct local_closer, task);

	KEEL_BEGIN(t);
	KEEL_AWAIT(t, keel_mb_send(t, g_mb, MSG(1)));
	KEEL_AWAIT(t, keel_mb_send(t, g_mb, MSG(2)));
	c->w = keel_spawn(t->loop, &sender_task,
			  KEEL_PRIO_NORMAL | KEEL_SPAWN_JOINABLE);
	CHECK(c->w != NULL);
	c->w->mb = g_mb;
	c->w->from = c->w->to = 3;
	KEEL_YIELD(t); /* it waits */
	for (c->i = 0; phase() < 1 && c->i < 5000; c->i++)
		KEEL_AWAIT(t, keel_sleep(t, KT_MS(1)));
	CHECK(phase() == 1);
	CHECK_EQ(mb_stats(g_mb).depth, 4);
	CHECK_EQ(mb_stats(g_mb).full, 2);
	keel_mb_close(g_mb);
	KEEL_AWAIT(t, keel_join(t, &c->w->task));
	g_join[0] = keel_res(t);
	g_after_close_try = keel_mb_try_send(g_mb, MSG(9));
	for (;;) {
		KEEL_AWAIT(t, keel_mb_recv(t, g_mb, &c->msg));
		if (keel_res(t))
			break;
		kt_log_push(&g_got, (int)VAL(c->msg));
	}
	g_recv_end = keel_res(t);
	KEEL_END(t);
}

Test(mailbox, close_fails_blocked_local_and_remote_senders, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	int next_local = 1, next_remote = 11;

	g_mb = mb_new(loop, 2, KEEL_MB_BLOCK);
	kt_spawn(loop, &local_closer_task, KEEL_PRIO_NORMAL);
	kt_lthreads_start(g_lt, 2, setup_remote_filler);
	kt_loop_run(loop);
	kt_lthreads_join(g_lt, 2);
	kt_expect_no_failures();
	cr_assert_eq(g_join[0], -EPIPE, "blocked local sender got %d",
		     g_join[0]);
	cr_assert_eq(g_join[1], -EPIPE, "blocked remote sender got %d",
		     g_join[1]);
	cr_assert_eq(g_remote_after_close, -EPIPE);
	cr_assert_eq(g_after_close_try, -EPIPE);
	cr_assert_eq(g_recv_end, -EPIPE);
	cr_assert_eq(g_got.n, 4, "drained %d messages", g_got.n);
	for (int i = 0; i < 4; i++) {
		if (g_got.v[i] >= 11)
			cr_assert_eq(g_got.v[i], next_remote++);
		else
			cr_assert_eq(g_got.v[i], next_local++);
	}
	expect_stats(g_mb, 4, 4, 0, 2, 0);
	keel_mailbox_release(g_mb);
	cr_assert_eq(g_ndropped, 0);
	keel_loop_destroy(loop);
}

/* ---- a plain thread feeding a parked loop -----------------------------------
 */

static struct keel_loop *g_loop0;
static uint64_t g_eagain;

static bool wait_parked(struct keel_loop *loop)
{
	for (int i = 0; i < 5000000; i++) {
		if (__atomic_load_n(&loop->inbox.parked, __ATOMIC_SEQ_CST))
			return true;
		sched_yield();
	}
	return false;
}

/* Sends (15 << 32 | seq) for seq 1..g_per_sender, retrying when full. */
static void *plain_sender(void *arg)
{
	(void)arg;
	CHECK(wait_parked(g_loop0));
	for (uint64_t seq = 1; seq <= g_per_sender; seq++) {
		int r;

		while ((r = keel_mb_try_send(g_mb, MSG(15ull << 32 | seq))) ==
		       -EAGAIN) {
			g_eagain++;
			sched_yield();
		}
		CHECK(r == 0);
	}
	return NULL;
}

static void run_plain_sender(uint32_t cap, uint64_t n,
			     enum keel_mb_policy policy)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct seq_receiver *r;
	pthread_t th;

	g_loop0 = loop;
	g_mb = mb_new(loop, cap, policy);
	g_per_sender = n;
	r = kt_spawn(loop, &seq_receiver_task, KEEL_PRIO_NORMAL);
	r->want = n;
	cr_assert_eq(pthread_create(&th, NULL, plain_sender, NULL), 0);
	kt_loop_run(loop);
	pthread_join(th, NULL);
	kt_expect_no_failures();
	cr_assert_eq(g_total, n);
	cr_assert_eq(g_order_errors, 0);
	cr_assert_eq(g_last[15], n);
	cr_assert_geq(loop->inbox.doorbells, 1,
		      "a parked loop was never woken");
	cr_log_info("%llu sends found it full, %llu doorbells",
		    (unsigned long long)g_eagain,
		    (unsigned long long)loop->inbox.doorbells);
	keel_mailbox_release(g_mb);
	keel_loop_destroy(loop);
}

Test(mailbox, plain_thread_try_send_loop_feeds_parked_loop, .timeout = 30)
{
	run_plain_sender(8, 200000, KEEL_MB_BLOCK);
}

Test(mailbox, plain_thread_try_send_loop_feeds_parked_loop_fail_policy,
     .timeout = 30)
{
	run_plain_sender(2, 20000, KEEL_MB_FAIL);
}

/*
 * Wake-up coalescing: the receiver's loop is parked in the kernel; a plain
 * thread sends N messages in one burst. Far fewer doorbells than N ring.
 */
#define BURST 10000

Test(mailbox, burst_from_other_thread_coalesces_doorbells, .timeout = 30)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct seq_receiver *r;
	pthread_t th;

	g_loop0 = loop;
	g_mb = mb_new(loop, 16384, KEEL_MB_FAIL);
	g_per_sender = BURST;
	r = kt_spawn(loop, &seq_receiver_task, KEEL_PRIO_NORMAL);
	r->want = BURST;
	cr_assert_eq(pthread_create(&th, NULL, plain_sender, NULL), 0);
	kt_loop_run(loop);
	pthread_join(th, NULL);
	kt_expect_no_failures();
	cr_assert_eq(g_total, BURST);
	cr_assert_eq(g_order_errors, 0);
	cr_assert_eq(g_eagain, 0, "the burst fitted");
	uint64_t bells = loop->inbox.doorbells;

	cr_log_info("%d sends, %llu doorbells, %llu turns", BURST,
		    (unsigned long long)bells,
		    (unsigned long long)kt_stats(loop).turns);
	cr_assert_geq(bells, 1, "the parked loop was never woken");
	cr_assert_leq(bells, BURST / 10, "%llu doorbells for %d sends",
		      (unsigned long long)bells, BURST);
	keel_mailbox_release(g_mb);
	keel_loop_destroy(loop);
}

/*
 * A plain thread's doorbell takes no io_uring of its own where the kernel
 * sends a MSG_RING without one (IORING_REGISTER_SEND_MSG_RING, Linux
 * 6.13): the thread's io_uring descriptors are as many after its sends as
 * before (a thread's doorbell ring lives as long as the thread).
 */
static int io_uring_fds(void)
{
	char path[64], target[64];
	int n = 0;

	for (int fd = 0; fd < 1024; fd++) {
		snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
		ssize_t len = readlink(path, target, sizeof(target) - 1);

		if (len <= 0)
			continue;
		target[len] = '\0';
		n += strstr(target, "[io_uring]") != NULL;
	}
	return n;
}

static int g_fds_before, g_fds_after;

static void *counting_sender(void *arg)
{
	(void)arg;
	g_fds_before = io_uring_fds();
	for (uint64_t seq = 1; seq <= g_per_sender; seq++) {
		CHECK(wait_parked(g_loop0));
		CHECK(keel_mb_try_send(g_mb, MSG(15ull << 32 | seq)) == 0);
	}
	g_fds_after = io_uring_fds();
	return NULL;
}

Test(mailbox, plain_thread_doorbell_needs_no_ring_of_its_own, .timeout = 30)
{
	/* 6.13 and newer refuse a NULL sqe (-EINVAL); before, fd -1 is
	 * -EBADF. */
	if (syscall(__NR_io_uring_register, -1, 31, NULL, 1) >= 0 ||
	    errno != EINVAL)
		cr_skip("no IORING_REGISTER_SEND_MSG_RING (Linux 6.13)");

	struct keel_loop *loop = kt_loop_new(NULL);
	struct seq_receiver *r;
	pthread_t th;

	g_loop0 = loop;
	g_mb = mb_new(loop, 16, KEEL_MB_FAIL);
	g_per_sender = 3;
	r = kt_spawn(loop, &seq_receiver_task, KEEL_PRIO_NORMAL);
	r->want = 3;
	cr_assert_eq(pthread_create(&th, NULL, counting_sender, NULL), 0);
	kt_loop_run(loop);
	pthread_join(th, NULL);
	kt_expect_no_failures();
	cr_assert_eq(g_total, 3);
	cr_assert_geq(loop->inbox.doorbells, 1, "no doorbell was rung");
	cr_assert_eq(g_fds_after, g_fds_before,
		     "the sender's doorbells opened %d io_uring(s)",
		     g_fds_after - g_fds_before);
	keel_mailbox_release(g_mb);
	keel_loop_destroy(loop);
}

/* ---- a notification still in the inbox when the loop ends ---------------- */

/*
 * A plain thread sends to a loop that has nothing to run: the mailbox's
 * notification (which holds a reference) waits in the loop's inbox. When
 * the loop is destroyed and the owner drops its reference, the mailbox
 * must go, handing the message still queued to on_drop: nothing leaks.
 */
Test(mailbox, message_left_in_mailbox_dropped_when_loop_and_mailbox_go,
     .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_mailbox *mb = mb_new(loop, 4, KEEL_MB_BLOCK);
	pthread_t th;

	reset_results();
	cr_assert_eq(pthread_create(&th, NULL, try_send_1_to_6, mb), 0);
	pthread_join(th, NULL);
	cr_assert_eq(g_res[1], 0);
	kt_loop_run(loop); /* nothing to run */
	keel_mailbox_release(mb);
	keel_loop_destroy(loop);
	cr_assert_eq(g_ndropped, 4,
		     "on_drop ran %d times for 4 messages left queued "
		     "(the mailbox leaked?)",
		     g_ndropped);
}

/*
 * The stats count each message once whichever way it goes (a local one has
 * no count of its own: received, queued or dropped queued). The receiver
 * takes a remote message, then waits; the sender hands it one, queues two
 * (capacity 2), and blocks with a fourth until it moves in.
 */
static struct keel_mailbox *g_stats_mb;
static uintptr_t g_stats_got[8];
static struct keel_mb_stats g_stats_mid; /* after the hand-over */

struct stats_task {
	struct keel_task task;
	int i;
	void *msg;
};

static int stats_receiver_step(struct keel_task *t)
{
	struct stats_task *s = keel_container_of(t, struct stats_task, task);

	KEEL_BEGIN(t);
	for (s->i = 0; s->i < 5; s->i++) {
		KEEL_AWAIT(t, keel_mb_recv(t, g_stats_mb, &s->msg));
		if (keel_res(t))
			KEEL_EXIT(t, keel_res(t));
		g_stats_got[s->i] = VAL(s->msg);
	}
	KEEL_END(t);
}
static KEEL_TASK_TYPE(stats_receiver_task, struct stats_task, task,
		      stats_receiver_step);

static int stats_sender_step(struct keel_task *t)
{
	struct stats_task *s = keel_container_of(t, struct stats_task, task);

	KEEL_BEGIN(t);
	for (s->i = 10; s->i < 14; s->i++) {
		KEEL_AWAIT(t, keel_mb_send(t, g_stats_mb, MSG(s->i)));
		if (keel_res(t))
			KEEL_EXIT(t, keel_res(t));
		if (s->i == 10)
			keel_mb_stats(g_stats_mb, &g_stats_mid);
	}
	KEEL_END(t);
}
static KEEL_TASK_TYPE(stats_sender_task, struct stats_task, task,
		      stats_sender_step);

Test(mailbox, stats_count_each_message_once_whichever_way_it_went,
     .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);

	g_stats_mb = mb_new(loop, 2, KEEL_MB_BLOCK);
	/* From this thread, outside the loop: the remote queue. */
	cr_assert_eq(keel_mb_try_send(g_stats_mb, MSG(1)), 0);
	kt_spawn(loop, &stats_receiver_task, KEEL_PRIO_NORMAL);
	kt_spawn(loop, &stats_sender_task, KEEL_PRIO_NORMAL);
	kt_loop_run(loop);
	for (int i = 0; i < 5; i++)
		cr_assert_eq(g_stats_got[i], (uintptr_t)(i ? 9 + i : 1),
			     "message %d was %lu", i,
			     (unsigned long)g_stats_got[i]);
	/* The remote one and the one handed over, both received. */
	cr_assert_eq(g_stats_mid.sent, 2);
	cr_assert_eq(g_stats_mid.received, 2);
	cr_assert_eq(g_stats_mid.depth, 0);
	/* The fourth found it full. */
	expect_stats(g_stats_mb, 5, 5, 0, 1, 0);
	keel_mailbox_release(g_stats_mb);
	keel_loop_destroy(loop);
}
