/* SPDX-License-Identifier: MIT */
/*
 * keel/supervisor.h: actors (a task with a mailbox and a behaviour) and
 * OTP-style supervision trees over them.
 */
#ifndef KEEL_SUPERVISOR_H
#define KEEL_SUPERVISOR_H

#include <keel/sync.h>
#include <keel/task.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- actor ---- */
/*
 * actors: a task with a mailbox and a behaviour.
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

/*
 * Before the first message: 0 to start; KEEL_ACTOR_STOP not to start and
 * exit normally (status 0), or a negative errno not to start and exit with
 * it. An actor that did not start never runs on_stop; messages already in
 * its mailbox go to the mailbox's on_drop.
 */
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
 * meanwhile wait in its mailbox. The spec is copied, its name too; `state` is
 * the behaviour's. Like any task, the actor observes the cancellation token of
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

/*
 * The same from any thread (the task is created on the loop's thread).
 * Ownership: as keel_actor_spawn().
 */
int keel_actor_spawn_on(struct keel_loop *loop,
			const struct keel_actor_spec *spec, void *state,
			struct keel_actor **out);

/*
 * Take / drop a reference (any thread).
 * Ownership: each reference is dropped once with keel_actor_release() (any
 * thread); a handle outlives its actor.
 */
struct keel_actor *keel_actor_ref(struct keel_actor *a);
void keel_actor_release(struct keel_actor *a);

/*
 * Send `payload` without waiting, from any thread. Returns 0 (queued; the
 * payload is the actor's), KEEL_MB_DROPPED (the policy dropped a message:
 * this one with DROP_NEWEST, handed to the spec's on_drop), -EAGAIN (full,
 * BLOCK or FAIL policy), -EPIPE (the actor is down), -ENOMEM. On an error
 * the payload is still the caller's.
 * Ownership: see above: `payload` is the actor's once queued, the caller's
 * on an error.
 */
int keel_actor_tell(struct keel_actor *a, void *payload);

/*
 * Await sending `payload` from task `t` (any loop): as keel_actor_tell(),
 * but with the KEEL_MB_BLOCK policy a full mailbox makes the task wait for
 * room (FIFO among waiting senders). keel_res: as keel_actor_tell(), or
 * the cancellation cause (not sent; the payload is still the caller's).
 * Ownership: as keel_actor_tell().
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
 * Ownership: see above for `payload`; on 0 the reply is the caller's.
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
 * Ownership: on 0 `value` is the asker's; otherwise still the caller's.
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

/*
 * Whether `msg` is an ask; its request id (0 for a tell).
 * Ownership: reads the envelope; nothing changes hands.
 */
bool keel_envelope_is_ask(const struct keel_envelope *msg);
uint64_t keel_envelope_request_id(const struct keel_envelope *msg);

/*
 * The ask's deadline (UINT64_MAX for a tell): to skip work nobody awaits.
 * Ownership: reads the envelope; nothing changes hands.
 */
uint64_t keel_envelope_deadline(const struct keel_envelope *msg);

/*
 * Stop the actor gracefully, from any thread: its mailbox closes (senders
 * get -EPIPE), the messages already in it are handled, then it exits with
 * status 0. No-op when it is down.
 * Ownership: the caller's reference is unchanged.
 */
void keel_actor_stop(struct keel_actor *a);

/*
 * Whether the actor is still running (or yet to start).
 * Ownership: reads the handle; nothing changes hands.
 */
bool keel_actor_alive(const struct keel_actor *a);

/*
 * Ownership: the spec's `name` string ("actor" if NULL), valid as long as
 * that string.
 */
const char *keel_actor_name(const struct keel_actor *a);

/*
 * The incarnation its handle addresses: asks carry it in their envelope.
 * Ownership: reads the handle; nothing changes hands.
 */
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

/*
 * A snapshot of the actor's counters (any thread).
 * Ownership: a copy into the caller's `out`.
 */
void keel_actor_stats(struct keel_actor *a, struct keel_actor_stats *out);

/* ---- supervisor ---- */
/*
 * supervision trees, with the semantics of Erlang/OTP's
 * supervisor (stdlib supervisor.erl).
 *
 * A supervisor is a task that starts its children in order, watches them,
 * restarts them by its strategy when they exit, and stops them in reverse
 * order. Children are tasks, actors, or supervisors, on the supervisor's
 * loop or on any other loop of the runtime:
 *
 *   strategy            when a child exits and must be restarted
 *   one_for_one         only that child is restarted
 *   one_for_all         the others are stopped (in reverse order), then all
 *                       are started again (in order)
 *   rest_for_one        the children after it are stopped (in reverse
 *                       order), then it and they are started again
 *   simple_one_for_one  a dynamic pool of children of one spec, added with
 *                       keel_sup_start_child(); each is restarted alone,
 *                       and at shutdown they all stop at once
 *
 * Restart types, and the exit reasons they see (keel_exit_kind_of()):
 *   permanent   always restarted;
 *   transient   restarted only after an abnormal exit (KEEL_EXIT_ERROR or
 *               KEEL_EXIT_ABORTED); not after a normal exit, a shutdown, or
 *               a cancellation. Cancelled means someone cancelled the
 *               child's token on purpose: like an exit signal with reason
 *               `shutdown` in Erlang, a request to stop, not a failure. A
 *               deadline that ran out (-ETIMEDOUT) is an error.
 *   temporary   never restarted (and forgotten once it exits).
 * Nothing is restarted on a loop that is shutting down (its root token
 * cancelled, as when the runtime stops): its children stay stopped.
 *
 * Restart intensity is OTP's add_restart: every restart (and every failed
 * attempt to restart) is time-stamped with the supervisor's clock; the
 * stamps older than `period` are forgotten (one exactly `period` old is
 * kept); if more than `intensity` remain, the supervisor stops all its
 * children and exits with -ESHUTDOWN: its own supervisor then decides
 * (escalation), restarting it if it is permanent. An optional backoff
 * delays restarts of a child that keeps failing (min, doubling up to max,
 * with jitter); the delay never bypasses intensity: restarts are counted
 * when they are decided, not when they happen.
 *
 * Shutdown of a child: with a timeout (ms), its token is cancelled (and
 * given that deadline, so the child can see how long it has), and it is
 * killed (keel_task_kill) if it has not exited in time; brutal_kill kills
 * it at once: no more of its code runs, its defers run, its ops are
 * cancelled and its frame freed when the kernel has returned them; with
 * infinity (the default for child supervisors) it is waited for.
 *
 * Threads and loops: a supervisor runs on one loop; its children may run
 * on others (child_spec.loop): starts, stops, kills and exit notices cross
 * threads through the loops' inboxes. Functions marked "any thread" may be
 * called from anywhere; the awaits from a task of any loop.
 *
 * Errors and ownership follow the rest of keel: 0 or a count, or a
 * negative errno; the library never prints (keel_sup_dump writes only to
 * the fd it is given).
 */
struct keel_loop;
struct keel_sup;
struct keel_child_start;

enum keel_sup_strategy {
	KEEL_ONE_FOR_ONE = 0,
	KEEL_ONE_FOR_ALL = 1,
	KEEL_REST_FOR_ONE = 2,
	KEEL_SIMPLE_ONE_FOR_ONE = 3,
};

enum keel_restart {
	KEEL_PERMANENT = 0,
	KEEL_TRANSIENT = 1,
	KEEL_TEMPORARY = 2,
};

enum keel_child_type {
	KEEL_WORKER = 0,
	KEEL_SUPERVISOR = 1,
};

/* OTP 24's auto_shutdown: exit (-ESHUTDOWN) when significant children end. */
enum keel_auto_shutdown {
	KEEL_AUTO_SHUTDOWN_NEVER = 0,
	KEEL_AUTO_SHUTDOWN_ANY_SIGNIFICANT = 1, /* when any of them ends */
	KEEL_AUTO_SHUTDOWN_ALL_SIGNIFICANT = 2, /* when the last one ends */
};

/*
 * keel_child_spec.shutdown_ms: a timeout in ms (> 0), or one of these. The
 * default is OTP's: 5000 ms for a worker, infinity for a supervisor.
 */
#define KEEL_SHUTDOWN_DEFAULT	  0
#define KEEL_SHUTDOWN_BRUTAL_KILL (-1)
#define KEEL_SHUTDOWN_INFINITY	  (-2)

/* A start function's result: the child is not started, and that is fine
 * (OTP's `ignore`): it stays in the supervisor, stopped. */
#define KEEL_CHILD_IGNORE 1

/*
 * Starts one incarnation of a child, on the child's loop (its thread), with
 * `arg` from the spec. It must start exactly one task with
 * keel_child_spawn(), keel_child_spawn_actor() or
 * keel_child_spawn_supervisor() and return 0; or return KEEL_CHILD_IGNORE,
 * or a negative errno (the start failed: nothing may be left running).
 * Called again for every restart: build the child's state afresh here.
 */
typedef int (*keel_child_start_fn)(struct keel_child_start *start, void *arg);

struct keel_child_spec {
	const char *name; /* unique in its supervisor; copied */
	keel_child_start_fn start;
	void *arg;
	enum keel_restart restart;
	int64_t shutdown_ms; /* > 0, or a KEEL_SHUTDOWN_* value */
	enum keel_child_type type;
	/* Counts for auto_shutdown; not allowed for permanent children, nor
	 * under KEEL_AUTO_SHUTDOWN_NEVER. */
	bool significant;
	/* Actor children: the tells still queued when an incarnation goes
	 * down are handed to the next one (Akka's mailbox survives a
	 * restart); false: they are dropped (Erlang's new process has a new
	 * mailbox). Either way the message being handled when it panicked is
	 * dropped and counted, queued asks fail with -EPIPE, and while the
	 * child is down tells and asks fail at once with -EPIPE. */
	bool keep_mailbox;
	struct keel_loop *loop; /* where it runs; NULL: the supervisor's */
};

/* Backoff between restarts of a child that keeps failing: the n-th quick
 * restart in a row waits min * 2^(n-1), at most max, then +- jitter_pct
 * percent of that, never below min nor above max. A child whose last life
 * lasted longer than max starts again from min (it is not in a crash
 * loop); a failed start lasted no time. Lives are measured on the
 * supervisor's clock (`now`). min_ms 0: no backoff. */
struct keel_backoff {
	uint32_t min_ms;
	uint32_t max_ms;     /* 0: same as min_ms */
	uint32_t jitter_pct; /* 0..100 */
};

/* The supervisor's clock for restart intensity, in ns. */
typedef uint64_t (*keel_sup_clock_fn)(const struct keel_loop *loop);

struct keel_sup_spec {
	const char *name; /* copied; for dumps, traces and metrics */
	enum keel_sup_strategy strategy;
	uint32_t intensity; /* restarts allowed within period (0: none) */
	uint32_t period_ms; /* > 0 (OTP's defaults: 1 restart in 5000 ms) */
	enum keel_auto_shutdown auto_shutdown;
	/* The children in start order, copied. simple_one_for_one: exactly
	 * one, the template of every dynamic child. */
	const struct keel_child_spec *children;
	uint32_t nchildren;
	struct keel_backoff backoff;
	/* NULL: keel_loop_now() of the supervisor's loop. Tests give their
	 * own, to place restarts exactly in time. */
	keel_sup_clock_fn now;
	uint64_t seed; /* for the backoff's jitter; 0: from the clock */
};

/* A child's stable handle: its slot in the supervisor and the generation
 * of that slot. It names the child across restarts; a slot reused by
 * another child (a new dynamic one) has another generation. */
struct keel_child_id {
	uint32_t slot;
	uint32_t gen; /* never 0 for a valid id */
};

/* ---- supervisors -------------------------------------------------------- */

/*
 * Start a supervisor on `loop`, from that loop's thread (a task or callback
 * of it, or before it runs): its task starts its children, in order, on a
 * later turn. If one fails to start, those already started are stopped in
 * reverse order and the supervisor exits with that child's error.
 * Returns 0 and sets *out, -EINVAL (a bad spec: see the fields), -EXDEV
 * (another loop's thread), -ENOMEM.
 * Ownership: the caller holds one reference (keel_sup_release()); the spec
 * is copied. Like any task, the supervisor observes the token of the task
 * starting it: cancelling that stops it (and its children, in order).
 */
int keel_sup_start(struct keel_loop *loop, const struct keel_sup_spec *spec,
		   struct keel_sup **out);

/*
 * Take / drop a reference (any thread). A handle outlives its supervisor.
 * Ownership: each reference is dropped once with keel_sup_release() (any
 * thread).
 */
struct keel_sup *keel_sup_ref(struct keel_sup *sup);
void keel_sup_release(struct keel_sup *sup);

/*
 * Stop the supervisor (any thread): its children stop in reverse order,
 * then it exits with status 0. No-op once it is stopping.
 * Ownership: the caller's reference is unchanged.
 */
void keel_sup_stop(struct keel_sup *sup);

/*
 * Await the supervisor's exit, from a task of its loop. keel_res: its exit
 * status: 0 (stopped by keel_sup_stop), -ESHUTDOWN (its restart intensity
 * was exceeded, an auto_shutdown, or its token was cancelled), a child's
 * start error (the initial start failed), -ECANCELED (killed); or -EXDEV
 * (another loop), the cancellation cause, -ENOMEM.
 * Ownership: the caller's reference is unchanged.
 */
int keel_sup_wait(struct keel_task *t, struct keel_sup *sup);

/* Ownership: keel's copy, valid while the caller holds a reference. */
const char *keel_sup_name(const struct keel_sup *sup);
struct keel_loop *keel_sup_loop(const struct keel_sup *sup);

/* ---- children, at run time ----------------------------------------------
 * Each is a request the supervisor carries out in turn; the awaiting task
 * may be on any loop. keel_res: as listed, or -ESHUTDOWN (the supervisor
 * exited or is stopping), the cancellation cause (the request may still be
 * carried out), -ENOMEM.
 */

/*
 * simple_one_for_one: start a new child of the template, its start
 * function seeing `extra` (keel_child_start_extra()). keel_res: 0 with *id
 * set, KEEL_CHILD_IGNORE, the start function's error, -EOPNOTSUPP (not a
 * simple_one_for_one supervisor). `id` must stay valid until the await
 * returns (keep it in the frame).
 * Ownership: `extra` stays the caller's and must outlive the child: its
 * start function sees it at every (re)start.
 */
int keel_sup_start_child(struct keel_task *t, struct keel_sup *sup, void *extra,
			 struct keel_child_id *id);

/*
 * Other strategies: add a child spec at the end and start it (OTP's
 * start_child/2 with a child spec). keel_res: 0 with *id set,
 * KEEL_CHILD_IGNORE (kept, stopped), the start error (not added), -EEXIST
 * (the name is taken), -EINVAL (a bad spec), -EOPNOTSUPP.
 * Ownership: the spec is copied.
 */
int keel_sup_add_child(struct keel_task *t, struct keel_sup *sup,
		       const struct keel_child_spec *spec,
		       struct keel_child_id *id);

/*
 * Stop a child by its shutdown spec (not restarted). A dynamic child is
 * then forgotten; a static one stays, stopped (keel_sup_restart_child,
 * keel_sup_delete_child). keel_res: 0, -ENOENT (no such child).
 * Ownership: nothing changes hands.
 */
int keel_sup_terminate_child(struct keel_task *t, struct keel_sup *sup,
			     struct keel_child_id id);

/* Start a stopped static child again. keel_res: 0, KEEL_CHILD_IGNORE, the
 * start error, -EALREADY (running), -EINPROGRESS (restarting), -ENOENT,
 * -EOPNOTSUPP (simple_one_for_one).
 * Ownership: nothing changes hands.
 */
int keel_sup_restart_child(struct keel_task *t, struct keel_sup *sup,
			   struct keel_child_id id);

/* Forget a stopped static child. keel_res: 0, -EBUSY (running),
 * -EINPROGRESS (restarting), -ENOENT, -EOPNOTSUPP.
 * Ownership: nothing changes hands.
 */
int keel_sup_delete_child(struct keel_task *t, struct keel_sup *sup,
			  struct keel_child_id id);

/* ---- looking children up (any thread) ----------------------------------- */

/*
 * A static child's id by name: 0, or -ENOENT.
 * Ownership: writes into the caller's `out`; `name` is only read.
 */
int keel_sup_child_id(struct keel_sup *sup, const char *name,
		      struct keel_child_id *out);

/*
 * An actor child's handle, stable across its restarts (tell and ask it;
 * while it is down they fail with -EPIPE). NULL if there is no such child,
 * it is not an actor, or it has not started yet. Ownership: the caller
 * holds the returned reference (keel_actor_release()).
 */
struct keel_actor *keel_sup_child_actor(struct keel_sup *sup,
					struct keel_child_id id);

/* A supervisor child's current incarnation, as keel_sup_child_actor(). A
 * restarted child supervisor is a new supervisor: look it up again.
 * Ownership: as keel_sup_child_actor(): the caller holds the returned
 * reference (keel_sup_release()).
 */
struct keel_sup *keel_sup_child_sup(struct keel_sup *sup,
				    struct keel_child_id id);

/* ---- exit reasons -------------------------------------------------------- */

enum keel_exit_kind {
	KEEL_EXIT_NORMAL = 0,	 /* status >= 0 */
	KEEL_EXIT_SHUTDOWN = 1,	 /* -ESHUTDOWN, or stopped by its supervisor */
	KEEL_EXIT_CANCELLED = 2, /* -ECANCELED: its token was cancelled */
	KEEL_EXIT_ERROR = 3,	 /* any other negative errno */
	KEEL_EXIT_ABORTED = 4,	 /* KEEL_ABORTED: it panicked */
};

/* How a task's exit status reads to a supervisor (one that did not ask
 * the child to stop: then any exit but a panic is KEEL_EXIT_SHUTDOWN).
 * Ownership: nothing changes hands.
 */
enum keel_exit_kind keel_exit_kind_of(int status);

/*
 * "normal", "shutdown", "cancelled", "error", "aborted".
 * Ownership: a constant string, never freed.
 */
const char *keel_exit_kind_name(enum keel_exit_kind kind);

/*
 * Whether a transient child is restarted after such an exit.
 * Ownership: nothing changes hands.
 */
static inline bool keel_exit_abnormal(enum keel_exit_kind kind)
{
	return kind == KEEL_EXIT_ERROR || kind == KEEL_EXIT_ABORTED;
}

/* ---- introspection (any thread) ----------------------------------------- */

enum keel_child_state {
	KEEL_CHILD_STOPPED = 0,	 /* not running, not to be restarted */
	KEEL_CHILD_STARTING = 1, /* its start function runs */
	KEEL_CHILD_RUNNING = 2,
	KEEL_CHILD_RESTARTING = 3, /* down, to be started again */
	KEEL_CHILD_STOPPING = 4,   /* asked to stop, not exited yet */
};

/* How an incarnation ended. */
struct keel_exit_info {
	enum keel_exit_kind kind;
	int status;	  /* its exit status */
	bool killed;	  /* by a brutal kill (or a shutdown timeout) */
	char message[96]; /* a panic's message (truncated), else "" */
	const char *file; /* a panic's site (static storage), or NULL */
	int line;
};

struct keel_child_info {
	struct keel_child_id id;
	char name[48]; /* truncated */
	enum keel_child_state state;
	enum keel_restart restart;
	enum keel_child_type type;
	bool actor; /* an actor child */
	struct keel_loop *loop;
	uint32_t restarts;	 /* times restarted */
	uint32_t start_failures; /* starts that failed */
	uint32_t kills;		 /* brutal kills, shutdown timeouts included */
	uint64_t dropped;	 /* actor: messages being handled at a panic */
	uint64_t backoff_ns;	 /* the delay before its last restart */
	bool exited;		 /* last_exit is set */
	struct keel_exit_info last_exit;
};

/*
 * A snapshot of the children, in start order (dynamic ones in slot order):
 * fills at most `max` entries of `out`, returns how many children there
 * are (more than `max` means the snapshot was cut).
 * Ownership: copies into the caller's `out`.
 */
uint32_t keel_sup_which_children(struct keel_sup *sup,
				 struct keel_child_info *out, uint32_t max);

enum keel_sup_state {
	KEEL_SUP_STARTING = 0, /* starting its children */
	KEEL_SUP_RUNNING = 1,
	KEEL_SUP_STOPPING = 2, /* stopping its children, then exits */
	KEEL_SUP_EXITED = 3,
};

struct keel_sup_stats {
	enum keel_sup_state state;
	/* OTP's count_children. */
	uint32_t specs, active, supervisors, workers;
	uint64_t restarts;	  /* restarts decided */
	uint64_t start_failures;  /* child starts that failed */
	uint64_t kills;		  /* children killed */
	uint64_t dropped;	  /* actor children's messages lost at panics */
	uint32_t recent_restarts; /* stamps within the current period */
	bool escalated;		  /* exited because intensity was exceeded */
	int exit_status;	  /* once exited */
};

/* Ownership: a copy into the caller's `out`. */
void keel_sup_stats(struct keel_sup *sup, struct keel_sup_stats *out);

/*
 * Write the tree under `sup` to `fd`, one line per child (nested
 * supervisors indented): name, state, restarts, last exit. Returns the
 * number of lines or a negative errno.
 * Ownership: `fd` stays the caller's.
 */
int keel_sup_dump(struct keel_sup *sup, int fd);

/*
 * Render the counters of `n` supervisors and the supervisors below them in
 * Prometheus text format 0.0.4 (labels: the supervisor's name, and a
 * static child's name): restarts, escalations, kills, dropped messages,
 * children by state. Returns the length the full text needs (as snprintf).
 * Ownership: writes into the caller's `buf`; `sups` is only read during the
 * call.
 */
size_t keel_sup_metrics_render(struct keel_sup *const *sups, unsigned n,
			       char *buf, size_t len);

/*
 * Be told of a supervisor's restart decisions (for health reporting,
 * keel/health.h): `fn` is called on the supervisor's loop thread when it
 * decides to restart a child (KEEL_SUP_EV_RESTART, after the intensity
 * check passed) and when it escalates (KEEL_SUP_EV_ESCALATE: intensity
 * exceeded, it stops its children and exits with -ESHUTDOWN). It runs
 * with the supervisor's lock held: it must be short, must not block and
 * must not call keel_sup_* on this supervisor. One observer per
 * supervisor: -EBUSY if one is set. fn NULL removes the observer set
 * with `arg` (-ENOENT if that is not it); once that returns, `fn` is not
 * running and will not be called again. Any thread. Returns 0 or a
 * negative errno.
 * Ownership: `ev` and its strings are valid during the call only; `arg`
 * stays the caller's and must stay valid until the observer is removed.
 */
enum keel_sup_event_kind {
	KEEL_SUP_EV_RESTART = 1,
	KEEL_SUP_EV_ESCALATE = 2,
};

struct keel_sup_event {
	enum keel_sup_event_kind kind;
	const char *sup_name;	 /* the supervisor's name */
	const char *child;	 /* RESTART: the child's name; else NULL */
	struct keel_child_id id; /* RESTART: the child */
	uint32_t restarts;	 /* RESTART: the child's restarts so far */
	uint64_t period_ns;	 /* the supervisor's restart period */
};

typedef void (*keel_sup_observer_fn)(void *arg, struct keel_sup *sup,
				     const struct keel_sup_event *ev);

int keel_sup_observe(struct keel_sup *sup, keel_sup_observer_fn fn, void *arg);

/* ---- inside a start function --------------------------------------------- */

/*
 * Spawn the child's task on its loop (flags: a keel_prio). Returns the
 * frame to fill in (the task runs on a later turn), or NULL (-ENOMEM: the
 * start fails). The task observes a token of its own, which the
 * supervisor cancels to stop it.
 * Ownership: the loop owns the frame (fill it in now); the supervisor stops
 * the task.
 */
void *keel_child_spawn(struct keel_child_start *start,
		       const struct keel_task_type *type, unsigned flags);

/*
 * Start the child as an actor, with `state` as its behaviour's state. The
 * first start creates the actor; restarts bring the same handle up again
 * (keel_sup_child_actor()). The child counts as started once its on_start
 * has succeeded (an on_start error is a failed start, as a failing
 * gen_server init). Returns 0, -EINVAL, -ENOMEM.
 * Ownership: the spec is copied; `state` stays the caller's (free it in
 * on_stop).
 */
int keel_child_spawn_actor(struct keel_child_start *start,
			   const struct keel_actor_spec *spec, void *state);

/*
 * Start the child as a supervisor (a new one at each restart). The child
 * counts as started once it has started its own children; if that fails,
 * so does this start. Returns 0, -EINVAL, -ENOMEM.
 * Ownership: the spec is copied.
 */
int keel_child_spawn_supervisor(struct keel_child_start *start,
				const struct keel_sup_spec *spec);

/*
 * The dynamic child's `extra` (keel_sup_start_child), else NULL.
 * Ownership: keel_sup_start_child()'s `extra`, still its caller's.
 */
void *keel_child_start_extra(const struct keel_child_start *start);

/*
 * How many times this child was restarted before this start.
 * Ownership: reads the start; nothing changes hands.
 */
uint32_t keel_child_start_restarts(const struct keel_child_start *start);

/*
 * The loop the start function runs on (the child's).
 * Ownership: not a reference: valid while the loop exists.
 */
struct keel_loop *keel_child_start_loop(const struct keel_child_start *start);

/*
 * The child's stable id.
 * Ownership: a copy.
 */
struct keel_child_id keel_child_start_id(const struct keel_child_start *start);

/*
 * The supervisor starting the child: to look its siblings up (an acceptor
 * finding its connection pool). Valid during the start function; take a
 * reference (keel_sup_ref()) to keep it.
 */
struct keel_sup *keel_child_start_sup(const struct keel_child_start *start);

#ifdef __cplusplus
}
#endif
#endif
