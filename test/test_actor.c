/* SPDX-License-Identifier: MIT */
/*
 * test_actor.c: keel/supervisor.h. Tells handled in order between on_start and
 * on_stop; a graceful stop; ask round trips; an ask timing out and its late
 * reply dropped and counted; the actor exiting, panicking or not replying
 * during an ask (and asks still queued at exit); tell_await blocking on a
 * full mailbox, in FIFO order, and cancelled without a trace; the FAIL and
 * DROP_NEWEST policies; tells from a plain thread; asks across the loops of
 * a two-thread runtime; a reply slot taken by the behaviour and answered
 * after its envelope is gone (from the loop and from a plain thread).
 *
 * One behaviour serves every test; payloads are small integers, with a few
 * reserved ones as commands. What the actor saw goes to globals, checked
 * after the loops are done.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <keel.h>
#include <keel/supervisor.h>
#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core.h" /* keel__shared_calloc(): envelopes' blocks */
#include "helpers/keel_test.h"

/* Commands; any smaller payload is a number to log (and double, if asked). */
#define M_STOP	  1000001 /* return KEEL_ACTOR_STOP */
#define M_DIE	  1000002 /* return -ECONNRESET without replying */
#define M_PANIC	  1000003 /* keel_panic() */
#define M_SLOW	  1000004 /* block 50 ms, then reply */
#define M_NOREPLY 1000005 /* return 0 without replying */
#define M_LATER	  1000006 /* take the reply slot; a timer answers 77 */
#define M_LATER_T 1000007 /* take it; a plain thread answers 78 */

#define EV_START 9000
#define EV_STOP	 9100
#define NOT_SET	 (-9999)

static struct kt_log g_log;
static int g_stop_reason = NOT_SET;
static int g_wrong_loop;	       /* hooks or behaviour ran elsewhere */
static struct keel_loop *g_actor_loop; /* where they must run */
static int g_reply_res[8];	       /* keel_actor_reply() on M_SLOW */
static int g_slow_replies;
static int g_ids_increasing = 1;
static uint64_t g_last_id;
static int g_quiet; /* count instead of logging (many messages) */
static uint64_t g_count;
static uint64_t g_sum;
static int g_out_of_order;
static uintptr_t g_prev;
static int g_dropped;
static uintptr_t g_dropped_sum;

static void check_loop(struct keel_actor_ctx *ctx)
{
	if (ctx->loop != g_actor_loop || keel_loop_current() != g_actor_loop ||
	    !ctx->task)
		g_wrong_loop++;
}

static int on_start(struct keel_actor_ctx *ctx)
{
	check_loop(ctx);
	kt_log_push(&g_log, EV_START);
	return 0;
}

static void on_stop(struct keel_actor_ctx *ctx, int reason)
{
	check_loop(ctx);
	g_stop_reason = reason;
	kt_log_push(&g_log, EV_STOP);
}

/* A reply slot taken by the behaviour, answered after it returned (its
 * envelope freed by then). */
static struct keel_oneshot *g_later;
static struct keel_timer g_later_timer;
static pthread_t g_later_thread;
static int g_later_res = NOT_SET;

static void later_answer(struct keel_loop *loop, struct keel_timer *tm,
			 void *arg)
{
	(void)loop;
	(void)tm;
	g_later_res = keel_oneshot_send(arg, (void *)77);
	keel_oneshot_release(arg);
}

static void *later_thread(void *arg)
{
	usleep(10000);
	g_later_res = keel_oneshot_send(arg, (void *)78);
	keel_oneshot_release(arg);
	return NULL;
}

static void later_take(struct keel_actor_ctx *ctx, struct keel_envelope *msg,
		       bool thread)
{
	g_later = keel_envelope_take_reply(msg);
	if (!g_later)
		return;
	if (thread) {
		if (pthread_create(&g_later_thread, NULL, later_thread,
				   g_later))
			abort();
		return;
	}
	keel_timer_init(&g_later_timer, later_answer, g_later);
	if (keel_timer_arm_after(ctx->loop, &g_later_timer, KT_MS(10)))
		abort();
}

static int behave(struct keel_actor_ctx *ctx, struct keel_envelope *msg)
{
	uintptr_t v = (uintptr_t)msg->payload;

	check_loop(ctx);
	if (keel_envelope_is_ask(msg)) {
		uint64_t id = keel_envelope_request_id(msg);

		if (id <= g_last_id)
			g_ids_increasing = 0;
		g_last_id = id;
	}
	switch (v) {
	case M_STOP:
		return KEEL_ACTOR_STOP;
	case M_DIE:
		return -ECONNRESET;
	case M_PANIC:
		keel_panic("behaviour panics on purpose");
	case M_SLOW:
		usleep(50000);
		g_reply_res[g_slow_replies++ & 7] =
		    keel_actor_reply(msg, (void *)(uintptr_t)1);
		return 0;
	case M_NOREPLY:
		return 0;
	case M_LATER:
	case M_LATER_T:
		later_take(ctx, msg, v == M_LATER_T);
		return 0;
	}
	if (g_quiet) {
		g_count++;
		g_sum += v;
		if (v <= g_prev)
			g_out_of_order++;
		g_prev = v;
	} else {
		kt_log_push(&g_log, (int)v);
	}
	if (keel_envelope_is_ask(msg))
		keel_actor_reply(msg, (void *)(2 * v));
	return 0;
}

static void payload_dropped(void *payload, void *arg)
{
	(void)arg;
	g_dropped++;
	g_dropped_sum += (uintptr_t)payload;
}

static struct keel_actor_spec spec(uint32_t capacity,
				   enum keel_mb_policy policy)
{
	struct keel_actor_spec s = {
	    .name = "test-actor",
	    .behaviour = behave,
	    .on_start = on_start,
	    .on_stop = on_stop,
	    .mailbox = {.capacity = capacity,
			.policy = policy,
			.on_drop = payload_dropped},
	    .prio = KEEL_PRIO_NORMAL,
	};
	return s;
}

static struct keel_actor *g_actor;

static struct keel_actor *spawn_actor(struct keel_loop *loop, uint32_t capacity,
				      enum keel_mb_policy policy)
{
	struct keel_actor_spec s = spec(capacity, policy);
	struct keel_actor *a = NULL;

	g_actor_loop = loop;
	cr_assert_eq(keel_actor_spawn(loop, &s, NULL, &a), 0);
	return a;
}

static void tell_ok(struct keel_actor *a, uintptr_t v)
{
	int r = keel_actor_tell(a, (void *)v);

	cr_assert_eq(r, 0, "tell %lu: %d", (unsigned long)v, r);
}

/* ---- tells, hooks, stop ------------------------------------------------- */

Test(actor, tells_are_handled_in_order_between_start_and_stop, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_actor_stats st;
	int want[52];

	g_actor = spawn_actor(loop, 64, KEEL_MB_BLOCK);
	cr_expect(keel_actor_alive(g_actor));
	cr_expect_str_eq(keel_actor_name(g_actor), "test-actor");
	want[0] = EV_START;
	for (int i = 1; i <= 50; i++) {
		tell_ok(g_actor, (uintptr_t)i);
		want[i] = i;
	}
	tell_ok(g_actor, M_STOP);
	want[51] = EV_STOP;
	kt_loop_run(loop);
	kt_log_expect(&g_log, want, 52);
	cr_expect_eq(g_wrong_loop, 0);
	cr_expect_eq(g_stop_reason, 0);
	keel_actor_stats(g_actor, &st);
	cr_expect_eq(st.handled, 51);
	cr_expect_eq(st.mailbox.received, 51);
	cr_expect_not(st.alive);
	cr_expect_eq(st.exit_status, 0);
	cr_expect_eq(keel_actor_tell(g_actor, (void *)1), -EPIPE);
	keel_actor_release(g_actor);
	keel_loop_destroy(loop);
}

static int g_start_result;

static int start_with_result(struct keel_actor_ctx *ctx)
{
	check_loop(ctx);
	kt_log_push(&g_log, EV_START);
	return g_start_result;
}

/* on_start's result decides whether the actor starts: KEEL_ACTOR_STOP and
 * a negative errno both keep it from handling anything or running
 * on_stop; the exit status tells them apart. */
Test(actor, on_start_can_refuse_to_start_normally_or_with_an_error,
     .timeout = 10)
{
	const int results[] = {KEEL_ACTOR_STOP, -ECONNREFUSED};
	const int want[] = {EV_START};

	for (int i = 0; i < 2; i++) {
		struct keel_loop *loop = kt_loop_new(NULL);
		struct keel_actor_spec s = spec(8, KEEL_MB_BLOCK);
		struct keel_actor_stats st;
		struct keel_actor *a = NULL;

		g_log.n = 0;
		g_dropped = 0;
		g_start_result = results[i];
		g_actor_loop = loop;
		s.on_start = start_with_result;
		cr_assert_eq(keel_actor_spawn(loop, &s, NULL, &a), 0);
		tell_ok(a, 7); /* queued before the actor's first step */
		kt_loop_run(loop);
		kt_log_expect(&g_log, want, 1); /* no message, no on_stop */
		keel_actor_stats(a, &st);
		cr_expect_not(st.alive);
		cr_expect_eq(st.handled, 0);
		cr_expect_eq(st.exit_status, i == 0 ? 0 : -ECONNREFUSED,
			     "exit status %d", st.exit_status);
		cr_expect_eq(g_dropped, 1, "the queued tell goes to on_drop");
		keel_actor_release(a);
		keel_loop_destroy(loop);
	}
}

/* The spec is copied, its name included: a name built in a buffer that
 * is then reused still reads back. */
Test(actor, spawn_copies_the_name, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_actor_spec s = spec(8, KEEL_MB_BLOCK);
	struct keel_actor *a = NULL;
	char name[32];

	snprintf(name, sizeof(name), "shard-%d", 7);
	s.name = name;
	g_actor_loop = loop;
	cr_assert_eq(keel_actor_spawn(loop, &s, NULL, &a), 0);
	memset(name, 'x', sizeof(name) - 1);
	cr_expect_str_eq(keel_actor_name(a), "shard-7");
	tell_ok(a, M_STOP);
	kt_loop_run(loop);
	cr_expect_str_eq(keel_actor_name(a), "shard-7");
	keel_actor_release(a);
	keel_loop_destroy(loop);
}

static int g_after_stop;

/* Tells 1, 2, 3, stops the actor, then tells 4 (refused at once). */
struct graceful {
	struct keel_task task;
};

static int graceful_step(struct keel_task *t)
{
	KEEL_BEGIN(t);
	for (uintptr_t i = 1; i <= 3; i++)
		tell_ok(g_actor, i);
	keel_actor_stop(g_actor);
	g_after_stop = keel_actor_tell(g_actor, (void *)4);
	KEEL_END(t);
}

static KEEL_TASK_TYPE(graceful_task, struct graceful, task, graceful_step);

Test(actor, stop_handles_queued_messages_then_exits, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	const int want[] = {EV_START, 1, 2, 3, EV_STOP};

	g_actor = spawn_actor(loop, 8, KEEL_MB_BLOCK);
	kt_spawn(loop, &graceful_task, KEEL_PRIO_NORMAL);
	kt_loop_run(loop);
	kt_log_expect(&g_log, want, 5);
	cr_expect_eq(g_after_stop, -EPIPE, "stopping: the mailbox is closed");
	cr_expect_eq(g_stop_reason, 0);
	cr_expect_not(keel_actor_alive(g_actor));
	cr_expect_eq(g_dropped, 0);
	keel_actor_release(g_actor);
	keel_loop_destroy(loop);
}

Test(actor, stop_from_another_thread_takes_effect_on_the_loop, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);

	g_actor = spawn_actor(loop, 8, KEEL_MB_BLOCK);
	tell_ok(g_actor, 1);
	keel_actor_stop(g_actor); /* no loop runs here: handed to the loop */
	keel_actor_stop(g_actor); /* twice is fine */
	kt_loop_run(loop);
	cr_expect_eq(kt_log_find(&g_log, 1), 1);
	cr_expect_eq(g_stop_reason, 0);
	cr_expect_eq(keel_actor_tell(g_actor, (void *)2), -EPIPE);
	keel_actor_release(g_actor);
	keel_loop_destroy(loop);
}

Test(actor, messages_left_at_exit_go_to_on_drop, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);

	g_actor = spawn_actor(loop, 8, KEEL_MB_BLOCK);
	tell_ok(g_actor, M_DIE);
	tell_ok(g_actor, 10);
	tell_ok(g_actor, 20);
	kt_loop_run(loop);
	cr_expect_eq(g_stop_reason, -ECONNRESET);
	cr_expect_eq(g_dropped, 2);
	cr_expect_eq(g_dropped_sum, 30);
	cr_expect_eq(kt_log_find(&g_log, 10), -1, "handled after exit");
	keel_actor_release(g_actor);
	keel_loop_destroy(loop);
}

/* ---- asks --------------------------------------------------------------- */

#define MAX_ASKS 16

static int g_ask_res[MAX_ASKS];
static uintptr_t g_ask_reply[MAX_ASKS];
static int g_asks_done;

/* Asks each of `payloads` in turn, `timeout` from the ask, then (if
 * `stop`) stops the actor. Results go to g_ask_res/g_ask_reply. */
struct asker {
	struct keel_task task;
	uintptr_t payloads[MAX_ASKS];
	int n;
	int first; /* index of its first result */
	uint64_t timeout;
	int stop;
	int pre_tells; /* tells (from this loop) before the asks: */
	uintptr_t pre[4];
	int i;
	void *reply;
};

static int asker_step(struct keel_task *t)
{
	struct asker *k = keel_container_of(t, struct asker, task);

	KEEL_BEGIN(t);
	for (k->i = 0; k->i < k->pre_tells; k->i++)
		g_ask_res[MAX_ASKS - 1 - k->i] =
		    keel_actor_tell(g_actor, (void *)k->pre[k->i]);
	for (k->i = 0; k->i < k->n; k->i++) {
		k->reply = NULL;
		KEEL_AWAIT(t,
			   keel_actor_ask(t, g_actor, (void *)k->payloads[k->i],
					  kt_now_ns() + k->timeout, &k->reply));
		g_ask_res[k->first + k->i] = keel_res(t);
		g_ask_reply[k->first + k->i] = (uintptr_t)k->reply;
		g_asks_done++;
	}
	if (k->stop)
		keel_actor_stop(g_actor);
	KEEL_END(t);
}

static KEEL_TASK_TYPE(asker_task, struct asker, task, asker_step);

static struct asker *spawn_asker(struct keel_loop *loop, int first,
				 uint64_t timeout, int stop)
{
	struct asker *k = kt_spawn(loop, &asker_task, KEEL_PRIO_NORMAL);

	k->first = first;
	k->timeout = timeout;
	k->stop = stop;
	return k;
}

Test(actor, ask_gets_the_reply_to_its_own_request, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_actor_stats st;
	struct asker *k;

	g_actor = spawn_actor(loop, 8, KEEL_MB_BLOCK);
	k = spawn_asker(loop, 0, KT_MS(1000), 1);
	for (int i = 0; i < 12; i++)
		k->payloads[i] = (uintptr_t)(i + 1);
	k->n = 12;
	kt_loop_run(loop);
	for (int i = 0; i < 12; i++) {
		cr_expect_eq(g_ask_res[i], 0, "ask %d: %d", i, g_ask_res[i]);
		cr_expect_eq(g_ask_reply[i], (uintptr_t)(2 * (i + 1)));
	}
	cr_expect(g_ids_increasing);
	keel_actor_stats(g_actor, &st);
	cr_expect_eq(st.asks, 12);
	cr_expect_eq(st.replies, 12);
	cr_expect_eq(st.late_replies, 0);
	cr_expect_eq(st.unanswered, 0);
	cr_expect_eq(g_stop_reason, 0);
	keel_actor_release(g_actor);
	keel_loop_destroy(loop);
}

Test(actor, ask_times_out_and_the_late_reply_is_dropped_and_counted,
     .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_actor_stats st;
	struct asker *k;

	g_actor = spawn_actor(loop, 8, KEEL_MB_BLOCK);
	k = spawn_asker(loop, 0, KT_MS(20), 1);
	k->payloads[0] = M_SLOW; /* replies after 50 ms */
	k->payloads[1] = 5;	 /* its own reply, not the late one */
	k->n = 2;
	kt_loop_run(loop);
	cr_expect_eq(g_ask_res[0], -ETIMEDOUT);
	cr_expect_eq(g_ask_reply[0], 0);
	cr_expect_eq(g_slow_replies, 1);
	cr_expect_eq(g_reply_res[0], -ETIMEDOUT);
	cr_expect_eq(g_ask_res[1], 0);
	cr_expect_eq(g_ask_reply[1], 10);
	keel_actor_stats(g_actor, &st);
	cr_expect_eq(st.late_replies, 1);
	cr_expect_eq(st.replies, 1);
	keel_actor_release(g_actor);
	keel_loop_destroy(loop);
}

Test(actor, actor_exit_fails_the_ask_it_handles_and_those_queued, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_actor_stats st;
	struct asker *a, *b;

	g_actor = spawn_actor(loop, 8, KEEL_MB_BLOCK);
	a = spawn_asker(loop, 0, KT_MS(5000), 0);
	a->payloads[0] = M_DIE;
	a->payloads[1] = 1; /* the actor is down by then */
	a->n = 2;
	b = spawn_asker(loop, 2, KT_MS(5000), 0);
	b->payloads[0] = 7; /* queued behind M_DIE */
	b->n = 1;
	uint64_t start = kt_now_ns();

	kt_loop_run(loop);
	cr_expect_lt(kt_now_ns() - start, KT_MS(1000), "waited for deadline");
	cr_expect_eq(g_ask_res[0], -EPIPE);
	cr_expect_eq(g_ask_res[1], -EPIPE);
	cr_expect_eq(g_ask_res[2], -EPIPE);
	cr_expect_eq(kt_log_find(&g_log, 7), -1);
	cr_expect_eq(g_stop_reason, -ECONNRESET);
	keel_actor_stats(g_actor, &st);
	cr_expect_eq(st.exit_status, -ECONNRESET);
	cr_expect_eq(st.unanswered, 2);
	cr_expect_eq(g_dropped, 1, "the queued ask's payload");
	keel_actor_release(g_actor);
	keel_loop_destroy(loop);
}

Test(actor, behaviour_panic_fails_the_ask_with_epipe, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_actor_stats st;
	struct asker *k;

	g_actor = spawn_actor(loop, 8, KEEL_MB_BLOCK);
	k = spawn_asker(loop, 0, KT_MS(5000), 0);
	k->payloads[0] = M_PANIC;
	k->n = 1;
	kt_loop_run(loop);
	cr_expect_eq(g_ask_res[0], -EPIPE);
	cr_expect_eq(g_stop_reason, KEEL_ABORTED);
	keel_actor_stats(g_actor, &st);
	cr_expect_eq(st.panic_drops, 1);
	cr_expect_eq(st.exit_status, KEEL_ABORTED);
	cr_expect_not(st.alive);
	cr_expect_eq(kt_stats(loop).aborted, 1);
	keel_actor_release(g_actor);
	keel_loop_destroy(loop);
}

Test(actor, ask_left_unanswered_fails_with_enomsg, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_actor_stats st;
	struct asker *k;

	g_actor = spawn_actor(loop, 8, KEEL_MB_BLOCK);
	k = spawn_asker(loop, 0, KT_MS(5000), 1);
	k->payloads[0] = M_NOREPLY;
	k->payloads[1] = 3;
	k->n = 2;
	kt_loop_run(loop);
	cr_expect_eq(g_ask_res[0], -ENOMSG);
	cr_expect_eq(g_ask_res[1], 0);
	cr_expect_eq(g_ask_reply[1], 6);
	keel_actor_stats(g_actor, &st);
	cr_expect_eq(st.unanswered, 1);
	keel_actor_release(g_actor);
	keel_loop_destroy(loop);
}

/* The slot outlives the envelope (an ask's slot and envelope are one
 * allocation): answered from the loop, then from a plain thread. */
Test(actor, reply_slot_taken_by_the_behaviour_outlives_its_envelope,
     .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_actor_stats st;
	struct asker *k;

	g_actor = spawn_actor(loop, 8, KEEL_MB_BLOCK);
	k = spawn_asker(loop, 0, KT_MS(5000), 1);
	k->payloads[0] = M_LATER;
	k->payloads[1] = M_LATER_T;
	k->payloads[2] = 4;
	k->n = 3;
	kt_loop_run(loop);
	cr_assert_eq(pthread_join(g_later_thread, NULL), 0);
	cr_expect_eq(g_ask_res[0], 0, "ask 0: %d", g_ask_res[0]);
	cr_expect_eq(g_ask_reply[0], 77);
	cr_expect_eq(g_ask_res[1], 0, "ask 1: %d", g_ask_res[1]);
	cr_expect_eq(g_ask_reply[1], 78);
	cr_expect_eq(g_later_res, 0);
	cr_expect_eq(g_ask_res[2], 0);
	cr_expect_eq(g_ask_reply[2], 8);
	keel_actor_stats(g_actor, &st);
	cr_expect_eq(st.asks, 3);
	cr_expect_eq(st.unanswered, 0);
	keel_actor_release(g_actor);
	keel_loop_destroy(loop);
}

/* ---- policies ----------------------------------------------------------- */

Test(actor, full_mailbox_fails_or_drops_per_policy, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_actor *fail, *drop;
	struct keel_actor_stats st;
	struct asker *k;

	/* The asker runs first: it fills the mailbox's path from this loop,
	 * then asks. */
	k = spawn_asker(loop, 0, KT_MS(5000), 0);
	k->pre_tells = 2;
	k->pre[0] = 21;
	k->pre[1] = 22;
	k->payloads[0] = 5;
	k->n = 1;
	fail = spawn_actor(loop, 2, KEEL_MB_FAIL);
	drop = spawn_actor(loop, 2, KEEL_MB_DROP_NEWEST);
	g_actor = drop;
	/* The tasks have not run yet: two messages fill each mailbox. */
	cr_expect_eq(keel_actor_tell(fail, (void *)1), 0);
	cr_expect_eq(keel_actor_tell(fail, (void *)11), 0);
	cr_expect_eq(keel_actor_tell(fail, (void *)2), -EAGAIN);
	cr_expect_eq(keel_actor_tell(drop, (void *)3), 0);
	cr_expect_eq(keel_actor_tell(drop, (void *)13), 0);
	cr_expect_eq(keel_actor_tell(drop, (void *)4), KEEL_MB_DROPPED);
	cr_expect_eq(g_dropped, 1);
	cr_expect_eq(g_dropped_sum, 4);
	keel_actor_stop(fail);
	keel_actor_stop(drop);
	kt_loop_run(loop);
	cr_expect_eq(g_ask_res[MAX_ASKS - 1], 0);
	cr_expect_eq(g_ask_res[MAX_ASKS - 2], 0);
	cr_expect_eq(g_ask_res[0], -ENOBUFS);
	cr_expect_eq(g_dropped, 2);
	cr_expect_eq(g_dropped_sum, 9);
	cr_expect_neq(kt_log_find(&g_log, 1), -1);
	cr_expect_neq(kt_log_find(&g_log, 3), -1);
	cr_expect_eq(kt_log_find(&g_log, 2), -1);
	cr_expect_eq(kt_log_find(&g_log, 4), -1);
	cr_expect_eq(kt_log_find(&g_log, 5), -1);
	keel_actor_stats(drop, &st);
	cr_expect_eq(st.mailbox.dropped, 2);
	cr_expect_eq(st.unanswered, 1);
	keel_actor_release(fail);
	keel_actor_release(drop);
	keel_loop_destroy(loop);
}

/* ---- tell_await --------------------------------------------------------- */

static int g_tell_res[8];

struct teller {
	struct keel_task task;
	int id;
	int n;
	int i;
};

static int teller_step(struct keel_task *t)
{
	struct teller *s = keel_container_of(t, struct teller, task);

	KEEL_BEGIN(t);
	for (s->i = 1; s->i <= s->n; s->i++) {
		KEEL_AWAIT(t, keel_actor_tell_await(
				  t, g_actor,
				  (void *)(uintptr_t)(100 * s->id + s->i)));
		g_tell_res[s->id] = keel_res(t);
		if (keel_res(t) != 0)
			break;
	}
	KEEL_END(t);
}

static KEEL_TASK_TYPE(teller_task, struct teller, task, teller_step);

static struct keel_task *spawn_teller(struct keel_loop *loop, int id, int n)
{
	struct teller *s = kt_spawn(loop, &teller_task, KEEL_PRIO_NORMAL);

	s->id = id;
	s->n = n;
	g_tell_res[id] = NOT_SET;
	return &s->task;
}

static struct keel_task *g_cancel_me;

struct stopper {
	struct keel_task task;
};

/* After the actor's first run: cancel the third teller, who is still
 * queued for room; 20 ms later (the others got in): stop the actor. */
static int stopper_step(struct keel_task *t)
{
	KEEL_BEGIN(t);
	keel_task_cancel(g_cancel_me);
	KEEL_AWAIT(t, keel_sleep(t, KT_MS(20)));
	keel_actor_stop(g_actor);
	KEEL_END(t);
}

static KEEL_TASK_TYPE(stopper_task, struct stopper, task, stopper_step);

Test(actor, tell_await_waits_for_room_in_fifo_order, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	const int want[] = {EV_START, 101, 102, 103, 201, EV_STOP};

	/* Tellers first: they fill the mailbox before the actor runs. */
	spawn_teller(loop, 1, 3);
	spawn_teller(loop, 2, 1);
	g_cancel_me = spawn_teller(loop, 3, 1);
	g_actor = spawn_actor(loop, 2, KEEL_MB_BLOCK);
	kt_spawn(loop, &stopper_task, KEEL_PRIO_NORMAL);
	kt_loop_run(loop);
	kt_log_expect(&g_log, want, 6);
	cr_expect_eq(g_tell_res[1], 0);
	cr_expect_eq(g_tell_res[2], 0);
	cr_expect_eq(g_tell_res[3], -ECANCELED);
	cr_expect_eq(g_dropped, 0, "the cancelled message was never queued");
	keel_actor_release(g_actor);
	keel_loop_destroy(loop);
}

Test(actor, ask_waits_for_room_in_fifo_order_with_tell_await, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	const int want[] = {EV_START, 101, 102, 103, 7, EV_STOP};
	struct asker *k;

	/* Before the actor runs: 101 and 102 fill its two slots, 103 and
	 * then the ask wait for room, in that order. */
	spawn_teller(loop, 1, 3);
	k = spawn_asker(loop, 0, KT_MS(5000), 1);
	k->payloads[0] = 7;
	k->n = 1;
	g_actor = spawn_actor(loop, 2, KEEL_MB_BLOCK);
	kt_loop_run(loop);
	kt_log_expect(&g_log, want, 6);
	cr_expect_eq(g_tell_res[1], 0);
	cr_expect_eq(g_ask_res[0], 0);
	cr_expect_eq(g_ask_reply[0], 14);
	keel_actor_release(g_actor);
	keel_loop_destroy(loop);
}

Test(actor, ask_waiting_for_room_gives_up_at_its_deadline, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_actor_stats st;
	struct asker *k;

	/* The actor blocks 50 ms on M_SLOW; the ask, stuck behind it for
	 * room, has 20 ms. */
	k = spawn_asker(loop, 0, KT_MS(20), 1);
	k->pre_tells = 2;
	k->pre[0] = M_SLOW;
	k->pre[1] = 5;
	k->payloads[0] = 9;
	k->n = 1;
	g_actor = spawn_actor(loop, 2, KEEL_MB_BLOCK);
	kt_loop_run(loop);
	cr_expect_eq(g_ask_res[MAX_ASKS - 1], 0);
	cr_expect_eq(g_ask_res[MAX_ASKS - 2], 0);
	cr_expect_eq(g_ask_res[0], -ETIMEDOUT);
	cr_expect_neq(kt_log_find(&g_log, 5), -1);
	cr_expect_eq(kt_log_find(&g_log, 9), -1, "handled past its deadline");
	cr_expect_eq(g_dropped, 1);
	cr_expect_eq(g_dropped_sum, 9);
	keel_actor_stats(g_actor, &st);
	cr_expect_eq(st.unanswered, 1);
	keel_actor_release(g_actor);
	keel_loop_destroy(loop);
}

/* ---- other threads ------------------------------------------------------ */

#define THREAD_TELLS 20000

static int g_tell_errors;

static void *plain_thread_teller(void *arg)
{
	struct keel_actor *a = arg;
	int r;

	for (uintptr_t i = 1; i <= THREAD_TELLS + 1; i++) {
		void *msg = i > THREAD_TELLS ? (void *)M_STOP : (void *)i;

		while ((r = keel_actor_tell(a, msg)) == -EAGAIN)
			sched_yield();
		if (r)
			g_tell_errors++;
	}
	keel_actor_release(a);
	return NULL;
}

Test(actor, tells_from_a_plain_thread_arrive_in_order, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	pthread_t th;

	g_quiet = 1;
	g_actor = spawn_actor(loop, 64, KEEL_MB_BLOCK);
	cr_assert_eq(pthread_create(&th, NULL, plain_thread_teller,
				    keel_actor_ref(g_actor)),
		     0);
	kt_loop_run(loop); /* keeps running while the actor waits */
	pthread_join(th, NULL);
	cr_expect_eq(g_tell_errors, 0);
	cr_expect_eq(g_count, THREAD_TELLS);
	cr_expect_eq(g_sum, (uint64_t)THREAD_TELLS * (THREAD_TELLS + 1) / 2);
	cr_expect_eq(g_out_of_order, 0);
	cr_expect_eq(g_stop_reason, 0);
	keel_actor_release(g_actor);
	keel_loop_destroy(loop);
}

/* The main task of a two-loop runtime; the actor lives on loop 1. */
struct rt_main {
	struct keel_task task;
	struct keel_runtime *rt;
	int i;
	void *reply;
};

static int g_rt[32];
static uintptr_t g_rt_reply[16];
static uint64_t g_rt_late;

static int rt_main_step(struct keel_task *t)
{
	struct rt_main *m = keel_container_of(t, struct rt_main, task);
	struct keel_actor_spec s = spec(4, KEEL_MB_BLOCK);

	KEEL_BEGIN(t);
	g_rt[0] = keel_actor_spawn_on(keel_runtime_loop(m->rt, 1), &s, NULL,
				      &g_actor);
	if (g_rt[0])
		KEEL_EXIT(t, g_rt[0]);
	for (m->i = 1; m->i <= 10; m->i++) {
		KEEL_AWAIT(
		    t, keel_actor_ask(t, g_actor, (void *)(uintptr_t)m->i,
				      kt_now_ns() + KT_MS(2000), &m->reply));
		g_rt[m->i] = keel_res(t);
		g_rt_reply[m->i] = (uintptr_t)m->reply;
	}
	/* Its timer fires here on loop 0 while loop 1 is still busy. */
	KEEL_AWAIT(t, keel_actor_ask(t, g_actor, (void *)M_SLOW,
				     kt_now_ns() + KT_MS(20), &m->reply));
	g_rt[11] = keel_res(t);
	KEEL_AWAIT(t, keel_sleep(t, KT_MS(100))); /* the late reply is made */
	struct keel_actor_stats st;

	keel_actor_stats(g_actor, &st);
	g_rt_late = st.late_replies;
	/* tell_await across loops, through a 4-slot mailbox. */
	for (m->i = 0; m->i < 50; m->i++) {
		KEEL_AWAIT(t, keel_actor_tell_await(t, g_actor,
						    (void *)(uintptr_t)500));
		if (keel_res(t))
			g_rt[12]++;
	}
	KEEL_AWAIT(t, keel_actor_ask(t, g_actor, (void *)M_DIE,
				     kt_now_ns() + KT_MS(2000), &m->reply));
	g_rt[13] = keel_res(t);
	KEEL_AWAIT(t, keel_actor_ask(t, g_actor, (void *)1,
				     kt_now_ns() + KT_MS(2000), &m->reply));
	g_rt[14] = keel_res(t);
	keel_actor_release(g_actor);
	KEEL_END(t);
}

static KEEL_TASK_TYPE(rt_main_task, struct rt_main, task, rt_main_step);

static void rt_main_init(void *frame, void *arg)
{
	struct rt_main *m = frame;

	m->rt = arg;
}

Test(actor, ask_across_loops_of_a_runtime, .timeout = 10)
{
	struct keel_runtime_opts opts = {.threads = 2, .no_signals = true};
	struct keel_runtime *rt;
	int status;

	cr_assert_eq(keel_runtime_create(&rt, &opts), 0);
	g_actor_loop = keel_runtime_loop(rt, 1);
	g_quiet = 1;
	status = keel_runtime_run(rt, &rt_main_task, rt_main_init, rt);
	keel_runtime_destroy(rt);
	cr_expect_eq(status, 0);
	cr_expect_eq(g_rt[0], 0);
	for (int i = 1; i <= 10; i++) {
		cr_expect_eq(g_rt[i], 0, "ask %d: %d", i, g_rt[i]);
		cr_expect_eq(g_rt_reply[i], (uintptr_t)(2 * i));
	}
	cr_expect_eq(g_rt[11], -ETIMEDOUT);
	cr_expect_eq(g_rt_late, 1);
	cr_expect_eq(g_reply_res[0], -ETIMEDOUT);
	cr_expect_eq(g_rt[12], 0, "tell_await failures");
	cr_expect_eq(g_rt[13], -EPIPE);
	cr_expect_eq(g_rt[14], -EPIPE);
	cr_expect_eq(g_wrong_loop, 0, "the actor ran off its loop");
	cr_expect_eq(g_count, 60); /* 10 asks and 50 tells */
	cr_expect_eq(g_stop_reason, -ECONNRESET);
}

/*
 * Envelopes' blocks (keel__shared_calloc, core.h): one freed on a loop's
 * thread is handed out again there, zeroed, for any size of its class; a
 * loop keeps at most KEEL__SHARED_KEEP of a class (the rest are freed); a
 * thread running no loop allocates and frees plainly. The ASan build
 * allocates plainly everywhere (KEEL__SHARED_LIBC): there, only the zeroing
 * is checked.
 */
static int g_shared_reused;
static int g_shared_dirty;
static unsigned g_shared_kept;

static int shared_step(struct keel_task *t)
{
	struct keel__core *c = keel__core_of(keel_task_loop(t));
	size_t cls = keel__shared_class(256);
	void *many[KEEL__SHARED_KEEP + 8];
	unsigned char *p = keel__shared_calloc(256);
	unsigned char *q;

	if (!p)
		KEEL_EXIT(t, -ENOMEM);
	memset(p, 0xab, 256);
	keel__shared_free(p, 256);
	/* 250 bytes: the same class as 256, served by the same block. */
	q = keel__shared_calloc(250);
	if (!q)
		KEEL_EXIT(t, -ENOMEM);
	g_shared_reused = q == p;
	for (int i = 0; i < 250; i++)
		g_shared_dirty += q[i] != 0;
	memset(q, 0xcd, 250);
	keel__shared_free(q, 250);
	for (unsigned i = 0; i < KEEL__SHARED_KEEP + 8; i++)
		many[i] = keel__shared_calloc(256);
	for (unsigned i = 0; i < KEEL__SHARED_KEEP + 8; i++)
		keel__shared_free(many[i], 256);
	g_shared_kept = c->alloc.nshared[cls];
	KEEL_END(t);
}
struct shared_frame {
	struct keel_task task;
};
static KEEL_TASK_TYPE(shared_task, struct shared_frame, task, shared_step);

Test(actor, envelope_blocks_are_reused_zeroed_by_the_loop_that_freed_them,
     .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	void *p = keel__shared_calloc(48);

	/* No loop runs on this thread: plain calloc and free. */
	cr_assert(p);
	keel__shared_free(p, 48);
	kt_spawn(loop, &shared_task, KEEL_PRIO_NORMAL);
	kt_loop_run(loop);
	cr_expect_eq(g_shared_dirty, 0);
#ifdef KEEL__SHARED_LIBC
	cr_expect_eq(g_shared_kept, 0);
#else
	cr_expect(g_shared_reused);
	cr_expect_eq(g_shared_kept, KEEL__SHARED_KEEP);
#endif
	/* What the loop kept goes with it (valgrind: no leak). */
	keel_loop_destroy(loop);
}
