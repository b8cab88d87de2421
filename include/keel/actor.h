/* SPDX-License-Identifier: MIT */
/*
 * keel/actor.h: actors: a task with a mailbox and a behaviour.
 *
 * An actor runs on one loop. Its behaviour is a plain function called once
 * per message, in mailbox order, on the actor's loop; it must not block
 * (it cannot await: to do I/O, spawn a task, and reply from it later with
 * keel_envelope_take_reply()). Lifecycle hooks on_start and on_stop run on
 * the actor's loop too, before the first message and after the last.
 *
 * The handle (struct keel_actor) is refcounted and usable from any thread:
 *   keel_actor_tell()        from anywhere, never waits: the mailbox's
 *                            backpressure status (0, KEEL_MB_DROPPED,
 *                            -EAGAIN, -EPIPE when the actor is down);
 *   keel_actor_tell_await()  from a task: waits for room if the mailbox's
 *                            policy is KEEL_MB_BLOCK;
 *   keel_actor_ask()         from a task: a request with a deadline, always.
 *                            The envelope carries a request id, the actor's
 *                            generation and a reply slot (keel/sync.h's
 *                            oneshot) that only this request can fill; at
 *                            the deadline the slot is retired, so a late
 *                            reply is dropped (and counted). If the actor
 *                            goes down first (it stops, is cancelled, or
 *                            its behaviour panics), the ask fails at once
 *                            with -EPIPE, "receiver down"; so do asks still
 *                            queued in its mailbox.
 *
 * Beware: two actors whose behaviours (or tasks acting for them) block on
 * each other's full KEEL_MB_BLOCK mailboxes deadlock, as in any system of
 * bounded queues. Every ask has a deadline that also bounds its wait for
 * room, so ask cycles end at the deadline; tell_await cycles do not. Break
 * cycles with KEEL_MB_FAIL or a DROP policy on one side.
 *
 * A handle outlives its actor (it then reports -EPIPE) but not the actor's
 * loop: do not send to an actor whose loop has been destroyed.
 *
 * An actor started by a supervisor (keel_child_spawn_actor(), see
 * keel/supervisor.h) has incarnations behind one handle: while it is down
 * it reports -EPIPE and keel_actor_alive() is false; once restarted the
 * same handle works again, with a new keel_actor_generation().
 */
#ifndef KEEL_ACTOR_H
#define KEEL_ACTOR_H

#include <keel/mailbox.h>
#include <keel/sync.h>
#include <keel/task.h>
#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct keel_loop;
struct keel_task;
struct keel_actor;

/*
 * A message as the behaviour sees it. `payload` is what was told or asked;
 * it belongs to the behaviour from the moment the behaviour is called. The
 * other fields are private; the envelope itself is freed when the
 * behaviour returns.
 */
struct keel_envelope {
	void *payload;
	struct keel_actor *actor;
	struct keel_oneshot *reply; /* an unanswered ask's slot */
	uint64_t request_id;	    /* 0 for a tell */
	uint64_t deadline;	    /* an ask's; UINT64_MAX for a tell */
	uint32_t generation;	    /* of the actor it was sent to */
	uint32_t flags;
};

/* What the behaviour and hooks get. Read-only; valid during the call. */
struct keel_actor_ctx {
	struct keel_actor *self; /* no reference: keel_actor_ref() to keep */
	void *state;		 /* as given to keel_actor_spawn() */
	struct keel_loop *loop;
	struct keel_task *task; /* the actor's task */
};

/* A behaviour's (or on_start's) result that stops the actor normally. */
#define KEEL_ACTOR_STOP 1

/*
 * Handle one message. Returns 0 to go on, KEEL_ACTOR_STOP to stop (exit
 * status 0), or a negative errno to stop with it. An ask it neither
 * answered nor took the reply slot of fails when it returns: with -ENOMSG,
 * or -EPIPE if the actor stops.
 */
typedef int (*keel_actor_fn)(struct keel_actor_ctx *ctx,
			     struct keel_envelope *msg);

/* Before the first message: 0, or a negative errno not to start at all. */
typedef int (*keel_actor_start_fn)(struct keel_actor_ctx *ctx);

/*
 * After the last message (only if on_start succeeded): `reason` is the
 * exit status: 0 (stopped), the behaviour's errno, the cancellation cause,
 * or KEEL_ABORTED (the behaviour panicked). The mailbox is closed; messages
 * still in it are dropped after this returns. Must not panic.
 */
typedef void (*keel_actor_stop_fn)(struct keel_actor_ctx *ctx, int reason);

struct keel_actor_spec {
	const char *name; /* for people: stats, dumps (may be NULL) */
	keel_actor_fn behaviour;
	keel_actor_start_fn on_start; /* may be NULL */
	keel_actor_stop_fn on_stop;   /* may be NULL */
	/*
	 * capacity and policy as for any mailbox; on_drop/drop_arg get the
	 * *payloads* of messages dropped (by a DROP policy, or still queued
	 * when the actor goes down).
	 */
	struct keel_mailbox_opts mailbox;
	enum keel_prio prio; /* the actor task's class */
};

/*
 * Create an actor on `loop` from the loop's own thread (a task or callback
 * of it, or before it runs): its task starts on a later turn; messages sent
 * meanwhile wait in its mailbox. The spec is copied; `state` is the
 * behaviour's. Like any task, the actor observes the cancellation token of
 * the task spawning it (if any): cancelling that stops the actor, with
 * the cause as its exit status.
 * Returns 0 and sets *out, -EINVAL (no behaviour, bad mailbox options),
 * -EXDEV (called on another loop's thread), -ENOMEM.
 * Ownership: the caller holds one reference (keel_actor_release()); the
 * running actor holds its own. `state` stays the caller's: free it in
 * on_stop, or after the actor is down.
 */
int keel_actor_spawn(struct keel_loop *loop, const struct keel_actor_spec *spec,
		     void *state, struct keel_actor **out);

/* The same from any thread (the task is created on the loop's thread). */
int keel_actor_spawn_on(struct keel_loop *loop,
			const struct keel_actor_spec *spec, void *state,
			struct keel_actor **out);

/* Take / drop a reference (any thread). */
struct keel_actor *keel_actor_ref(struct keel_actor *a);
void keel_actor_release(struct keel_actor *a);

/*
 * Send `payload` without waiting, from any thread. Returns 0 (queued; the
 * payload is the actor's), KEEL_MB_DROPPED (the policy dropped a message:
 * this one with DROP_NEWEST, handed to the spec's on_drop), -EAGAIN (full,
 * BLOCK or FAIL policy), -EPIPE (the actor is down), -ENOMEM. On an error
 * the payload is still the caller's.
 */
int keel_actor_tell(struct keel_actor *a, void *payload);

/*
 * Await sending `payload` from task `t` (any loop): as keel_actor_tell(),
 * but with the KEEL_MB_BLOCK policy a full mailbox makes the task wait for
 * room (FIFO among waiting senders). keel_res: as keel_actor_tell(), or
 * the cancellation cause (not sent; the payload is still the caller's).
 */
int keel_actor_tell_await(struct keel_task *t, struct keel_actor *a,
			  void *payload);

/*
 * Await the actor's reply to `payload`, until `deadline_ns` (absolute
 * CLOCK_MONOTONIC, e.g. keel_loop_now(loop) + timeout). With the
 * KEEL_MB_BLOCK policy a full mailbox makes the request wait for room (in
 * FIFO order with tell_await's), within the same deadline. keel_res:
 *   0           *reply is the reply value (now the caller's);
 *   -ETIMEDOUT  the deadline passed: the reply slot is retired;
 *   -EPIPE      the actor is down, or went down before replying;
 *   -ENOMSG     the behaviour returned without replying;
 *   -ENOBUFS    the mailbox's DROP policy dropped the request;
 *   -EAGAIN     the mailbox is full (KEEL_MB_FAIL);
 *   the cancellation cause, or -ENOMEM.
 * The payload is the caller's again only if the ask failed before it was
 * sent: the cancellation cause, -EPIPE or -ETIMEDOUT at once, -EAGAIN,
 * -ENOMEM. Otherwise it is the actor's (a request that never reaches the
 * behaviour goes to the spec's on_drop).
 * `reply` must stay valid until the await returns (keep it in the frame).
 */
int keel_actor_ask(struct keel_task *t, struct keel_actor *a, void *payload,
		   uint64_t deadline_ns, void **reply);

/*
 * From the behaviour: answer the ask `msg` with `value`. Returns 0 (the
 * value is the asker's); a late reply, counted and dropped (the value is
 * still the caller's): -ETIMEDOUT (the ask's deadline has passed, whether
 * or not the asker has noticed yet; the asker gets -ETIMEDOUT) or -EPIPE
 * (the asker gave up: cancelled); -EINVAL (a tell); -EALREADY (already
 * answered, or its slot taken).
 */
int keel_actor_reply(struct keel_envelope *msg, void *value);

/*
 * Take the reply slot of the ask `msg`, to answer after the behaviour
 * returned (from any thread): keel_oneshot_send() then
 * keel_oneshot_release(), or keel_oneshot_close() if there will be no
 * answer. Returns NULL for a tell or an answered ask.
 * Ownership: the caller holds the returned reference.
 */
struct keel_oneshot *keel_envelope_take_reply(struct keel_envelope *msg);

/* Whether `msg` is an ask; its request id (0 for a tell). */
bool keel_envelope_is_ask(const struct keel_envelope *msg);
uint64_t keel_envelope_request_id(const struct keel_envelope *msg);

/* The ask's deadline (UINT64_MAX for a tell): to skip work nobody awaits. */
uint64_t keel_envelope_deadline(const struct keel_envelope *msg);

/*
 * Stop the actor gracefully, from any thread: its mailbox closes (senders
 * get -EPIPE), the messages already in it are handled, then it exits with
 * status 0. No-op when it is down.
 */
void keel_actor_stop(struct keel_actor *a);

/* Whether the actor is still running (or yet to start). */
bool keel_actor_alive(const struct keel_actor *a);

const char *keel_actor_name(const struct keel_actor *a);

/* The incarnation its handle addresses: asks carry it in their envelope. */
uint32_t keel_actor_generation(const struct keel_actor *a);

struct keel_actor_stats {
	uint64_t handled;      /* messages the behaviour was called with */
	uint64_t asks;	       /* asks queued */
	uint64_t replies;      /* replies delivered to their askers */
	uint64_t late_replies; /* replies dropped: the asker had given up */
	uint64_t unanswered;   /* asks failed: no reply, dropped, or down */
	uint64_t panic_drops;  /* messages being handled at a panic */
	struct keel_mb_stats mailbox;
	int exit_status; /* once down: as on_stop's `reason` */
	bool alive;
};

/* A snapshot of the actor's counters (any thread). */
void keel_actor_stats(struct keel_actor *a, struct keel_actor_stats *out);

#ifdef __cplusplus
}
#endif
#endif
