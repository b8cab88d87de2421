/* SPDX-License-Identifier: MIT */
/*
 * supervise.h: private to supervise/: the supervisor's state, its children,
 * the links that carry a child's start, stop, kill and exit across loops,
 * and what actor.c offers supervisors.
 *
 * Who touches what:
 * - struct keel_sup and its children belong to the supervisor's loop. The
 *   fields a snapshot reads (keel_sup_which_children, keel_sup_stats, the
 *   lookups) are written under `lock` and read under it from any thread.
 * - A link (one per incarnation of a child) is shared by the supervisor's
 *   loop and the child's loop. Each side writes its own fields; what one
 *   side writes before posting an item to the other's inbox, the other
 *   reads after running it (the inbox orders them).
 */
#ifndef KEEL_SUPERVISE_PRIV_H
#define KEEL_SUPERVISE_PRIV_H

#include "loop.h" /* sched: keel__remote_post (and, below it, core.h) */

#include <keel/supervisor.h>
#include <pthread.h>

/* ---- actor.c: incarnations of supervised actors ------------------------- */

struct keel__actor_incarnation {
	const struct keel_actor_spec *spec;
	void *state;
	bool keep_mailbox; /* on creation only */
	/* Pushed on the new task's defer stack before the actor's own
	 * cleanup, so it runs after it (the actor is down by then). */
	keel_defer_fn on_exit;
	void *exit_arg;
	/* Called on the actor's loop once on_start has succeeded. */
	void (*on_ready)(void *arg);
	void *ready_arg;
	struct keel_task *task; /* out: the incarnation's task */
};

/*
 * Start an incarnation on `loop`, from its thread: *ap NULL creates the
 * actor (the caller then holds a reference), else *ap must be down (its
 * last task gone) and comes up again with a new generation. Returns 0,
 * -EINVAL, -EXDEV, -EBUSY (not down), -ENOMEM.
 */
int keel__actor_start_supervised(struct keel_loop *loop, struct keel_actor **ap,
				 struct keel__actor_incarnation *inc);

/* No incarnation will follow: drop the tells kept for one (any thread,
 * once the last incarnation's task is gone). */
void keel__actor_retire(struct keel_actor *a);

uint64_t keel__actor_panic_drops(const struct keel_actor *a);

/* ---- the supervisor ----------------------------------------------------- */

struct keel__sup_link;
struct keel__sup_cmd;

/* A child's life as its supervisor sees it. */
enum keel__sup_child_state {
	SUP_CH_STOPPED = 0,  /* not running, not to be restarted */
	SUP_CH_STARTING = 1, /* its start is under way */
	SUP_CH_RUNNING = 2,
	SUP_CH_EXITED = 3,     /* exited by itself; the decision is pending */
	SUP_CH_RESTARTING = 4, /* to be started at restart_at */
	SUP_CH_STOPPING = 5,   /* asked to stop; waiting for its exit */
};

struct keel__sup_child {
	struct keel_child_spec spec; /* name owned */
	struct keel_child_id id;
	enum keel__sup_child_state state;
	bool dynamic;
	void *extra;		     /* a dynamic child's start argument */
	struct keel__sup_link *link; /* the incarnation now, if any */
	struct keel_actor *actor;    /* an actor child's stable handle (ref) */
	struct keel_sup *child_sup;  /* a supervisor child, this incarnation */
	int start_result;	     /* of the last start: 0, IGNORE, errno */
	bool loop_stopping;	     /* its loop was shutting down at its end */
	bool stop_finished;	     /* STOPPING ended: its exit came */
	bool kill_sent;
	uint32_t restarts;
	uint32_t start_failures;
	uint32_t kills;
	uint32_t backoff_level; /* quick restarts in a row */
	uint64_t backoff_ns;
	uint64_t started_at;	/* the supervisor's clock */
	uint64_t uptime;	/* how long its last life lasted (0: none) */
	uint64_t restart_at;	/* CLOCK_MONOTONIC: RESTARTING until then */
	uint64_t stop_deadline; /* CLOCK_MONOTONIC: killed when passed */
	bool exited;
	struct keel_exit_info last_exit;
};

/* One step of the supervisor's current plan (a restart, a request, its
 * own start or shutdown), carried out in order. */
enum keel__sup_step_kind {
	SUP_STEP_START,
	SUP_STEP_STOP,	       /* then the child goes to `then` */
	SUP_STEP_STOP_DYNAMIC, /* every dynamic child at once, then forgot */
};

/* Where a stopped child goes. */
enum keel__sup_then {
	SUP_THEN_STOPPED,
	SUP_THEN_RESTART, /* RESTARTING, at the plan's restart_at */
	SUP_THEN_REMOVE,
};

struct keel__sup_step {
	enum keel__sup_step_kind kind;
	enum keel__sup_then then;
	struct keel_child_id id;
};

/* Why the plan runs: what a failed start means. */
enum keel__sup_purpose {
	SUP_PLAN_INIT,	   /* the initial start: a failure stops everything */
	SUP_PLAN_RESTART,  /* a failure is a failed restart: try again */
	SUP_PLAN_REQUEST,  /* a caller awaits the outcome */
	SUP_PLAN_SHUTDOWN, /* then the supervisor exits */
};

enum keel__sup_phase {
	SUP_PHASE_INIT,
	SUP_PHASE_RUNNING,
	SUP_PHASE_SHUTDOWN,
	SUP_PHASE_EXIT,
};

struct keel_sup {
	uint32_t refs; /* atomic */
	struct keel_loop *loop;
	char *name;
	enum keel_sup_strategy strategy;
	uint32_t intensity;
	uint64_t period_ns;
	enum keel_auto_shutdown auto_shutdown;
	struct keel_backoff backoff;
	keel_sup_clock_fn now;
	uint64_t rng;
	struct keel_child_spec tmpl; /* simple_one_for_one's (name owned) */

	pthread_mutex_t lock;
	/* The child table (under lock). Slots hold children; static ones are
	 * also in `order` (start order); a freed slot goes on the free list
	 * and its next child gets the next generation. */
	struct keel__sup_child **slots;
	uint32_t *slot_gen;   /* generation of each slot's last child */
	uint32_t *free_slots; /* at most nslots */
	uint32_t nslots, nfree, slots_cap; /* the three share slots_cap */
	uint32_t *order;
	uint32_t norder, order_cap;
	uint32_t ndynamic;
	/* Counters and state for snapshots (under lock). */
	enum keel_sup_state state;
	uint64_t restarts;
	uint64_t start_failures;
	uint64_t kills;
	uint64_t dropped_gone; /* drops of actor children since removed */
	bool escalated;
	bool exited;
	int exit_status;
	struct keel__list cmds; /* requests waiting (FIFO, under lock) */
	/* keel_sup_observe()'s hook (under lock; called with it held). */
	keel_sup_observer_fn observer;
	void *observer_arg;

	/* The supervisor's loop only. */
	struct keel_task *task; /* NULL once its task is gone */
	struct keel__sup_link
	    *parent_link; /* as a child of another supervisor */
	enum keel__sup_phase phase;
	bool stopping;
	int stop_status; /* the exit status once stopping */
	/* Restart time stamps within the period, oldest first: a ring that
	 * grows to intensity + 1 entries. */
	uint64_t *stamps;
	uint32_t nstamps, stamp_head, stamps_cap;
	/* Exit and start notices from links, oldest first. */
	struct keel__list notices; /* keel__sup_link, by notice_link */
	/* Children that exited by themselves, to decide about (FIFO). */
	struct keel_child_id *exits;
	uint32_t exits_head, exits_len, exits_cap;
	uint32_t nrestarting; /* children in SUP_CH_RESTARTING */
	/* The plan being carried out. */
	struct keel__sup_step *plan;
	uint32_t plan_len, plan_pos, plan_cap;
	enum keel__sup_purpose purpose;
	bool plan_active;
	bool step_active;
	uint64_t plan_restart_at;
	uint64_t dyn_deadline; /* SUP_STEP_STOP_DYNAMIC's kill time */
	bool dyn_killed;
	struct keel__sup_cmd *cmd; /* the request the plan carries out */
	/* Waiting: woken by notices, requests, timers, its token. */
	bool kick;
	bool waiting;
	struct keel_timer timer;
	struct keel_token_cb cancel_cb;
	struct keel_shield shield;
	struct keel__waitq waiters; /* tasks in keel_sup_wait */
	/* Wakes from other threads (requests, stops). */
	struct keel__remote_item wake_item;
	int wake_posted;    /* atomic */
	int stop_requested; /* atomic: keel_sup_stop() */
	bool shield_up;
	bool cb_registered;
};

/* A request from keel_sup_start_child() and friends. */
enum keel__sup_cmd_kind {
	SUP_CMD_START_CHILD,
	SUP_CMD_ADD_CHILD,
	SUP_CMD_TERMINATE_CHILD,
	SUP_CMD_RESTART_CHILD,
	SUP_CMD_DELETE_CHILD,
};

struct keel__sup_cmd {
	uint32_t refs; /* atomic: the supervisor's side and the caller's */
	struct keel__link link; /* keel_sup.cmds */
	enum keel__sup_cmd_kind kind;
	struct keel_child_id id;
	void *extra;
	struct keel_child_spec spec; /* SUP_CMD_ADD_CHILD (name owned) */
	/* The caller, on its loop. */
	struct keel_loop *from;
	struct keel_task *task; /* NULL once it gave up */
	struct keel_child_id *id_out;
	/* The answer. */
	int result;
	struct keel__remote_item reply_item; /* to the caller's loop */
};

/* The notices a link may carry to its supervisor. */
#define SUP_NOTICE_STARTED 0x1u
#define SUP_NOTICE_EXITED  0x2u

/*
 * One incarnation of a child, shared by the supervisor's loop and the
 * child's. References: the supervisor's (while it is the child's current
 * incarnation), the child task's (until its exit), one per item in flight,
 * one while on the notice queue.
 */
struct keel__sup_link {
	uint32_t refs;		/* atomic */
	struct keel_sup *sup;	/* a reference */
	struct keel_loop *loop; /* the child's */
	struct keel_child_id id;
	/* Set by the supervisor before the start is posted. */
	keel_child_start_fn start;
	void *arg;
	void *extra;
	uint32_t restarts;
	bool keep_mailbox;
	struct keel_actor *actor; /* to restart: the child's (borrowed) */
	/* Set on the child's loop while it starts; read by the supervisor
	 * after the started notice (never written again after it). */
	int start_result;
	bool start_refused; /* its loop was shutting down: nothing started */
	bool ready_later;   /* its readiness comes from the child */
	struct keel_actor *new_actor; /* created by this start (a ref) */
	struct keel_sup *new_sup;     /* a supervisor child (a ref) */
	/* The child's loop only. */
	struct keel_task *task;	  /* NULL before the spawn and after the exit */
	struct keel_token *token; /* what the supervisor cancels */
	uint64_t stop_deadline;
	/* Set on the child's loop at its exit; read after the exit notice. */
	int exit_status;
	bool killed;
	bool loop_stopping;	 /* the child's loop was shutting down */
	struct keel_abort abort; /* a panic's (message owned) */
	/* The supervisor's loop only. */
	struct keel__link notice_link; /* keel_sup.notices while queued */
	unsigned notices;
	bool queued;
	bool stop_posted, kill_posted;
	/* Items: each posted at most once. */
	struct keel__remote_item start_item;   /* to the child's loop */
	struct keel__remote_item stop_item;    /* to the child's loop */
	struct keel__remote_item kill_item;    /* to the child's loop */
	struct keel__remote_item started_item; /* to the supervisor's */
	struct keel__remote_item exited_item;  /* to the supervisor's */
};

/* child.c: links. */
int keel__sup_link_start(struct keel_sup *s, struct keel__sup_child *ch);
void keel__sup_link_stop(struct keel__sup_link *link, uint64_t deadline);
void keel__sup_link_kill(struct keel__sup_link *link);
void keel__sup_link_release(struct keel__sup_link *link);
/* The child supervisor of `link` has started its children. */
void keel__sup_link_ready(struct keel__sup_link *link);

/* supervisor.c: what the links call on the supervisor's loop. */
void keel__sup_notice(struct keel_sup *s, struct keel__sup_link *link,
		      unsigned what);
void keel__sup_kick(struct keel_sup *s);
/* Wake the supervisor from any thread (a request or a stop waits). */
void keel__sup_wake(struct keel_sup *s);
/* A new supervisor and its task on `loop` (its thread). `attach(task,
 * arg)`, if given, runs on the task before the supervisor's own cleanup is
 * pushed on its defer stack. The caller holds a reference. */
int keel__sup_create(struct keel_loop *loop, const struct keel_sup_spec *spec,
		     struct keel__sup_link *parent,
		     int (*attach)(struct keel_task *t, void *arg),
		     void *attach_arg, struct keel_sup **out);
/* requests.c: a request's answer goes back to its caller. */
void keel__sup_reply(struct keel__sup_cmd *cmd, int result);
void keel__sup_cmd_release(struct keel__sup_cmd *cmd);
/* Free what a supervisor holds once its task is gone (last reference). */
void keel__sup_free(struct keel_sup *s);

/* sup_info.c */
void keel__sup_exit_info(struct keel_exit_info *out, enum keel_exit_kind kind,
			 int status, bool killed,
			 const struct keel_abort *abort);
struct keel__sup_child *keel__sup_lookup(struct keel_sup *s,
					 struct keel_child_id id);

#endif
