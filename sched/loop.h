/* SPDX-License-Identifier: MIT */
/*
 * loop.h: private definition of struct keel_loop (see core.h for how the
 * layers embed each other).
 */
#ifndef KEEL_SCHED_LOOP_H
#define KEEL_SCHED_LOOP_H

#include "io.h"

#include <keel/loop.h>

/* The stall watchdog's view of a loop (sched/introspect.c). */
struct keel__loop_watch {
	struct keel_loop *next; /* the watchdog's list, under its lock */
	uint64_t threshold_ns;	/* 0: off */
	keel_stall_fn fn;
	void *arg;
	uint64_t seen_steps; /* watchdog thread only */
	uint64_t since;
	uint64_t last_report;
	bool reported;
	uint64_t stalls;
};

#define KEEL__WAKE_BUCKETS 12

/* Work other threads hand to the loop (sched/remote.c). */
struct keel__inbox {
	struct keel__remote_item *head; /* lock-free stack */
	int parked;	    /* blocked (or about to) in the kernel, or a
			     * host's loop between two keel_loop_step() */
	int wake_pending;   /* a doorbell is on its way */
	uint64_t doorbells; /* rung so far */
};

struct keel_loop {
	struct keel__io io; /* first: see core.h */
	unsigned budget;    /* task steps per turn */
	bool stop;
	uint64_t turns;
	void *altstack; /* the signal stack keel gave this thread, if any */
	struct keel__loop_watch watch;
	struct keel__inbox inbox;
	bool persistent;  /* a runtime loop: keeps running while idle */
	unsigned spin_ns; /* spin before parking (keel_loop_opts.spin_ns) */
	unsigned batch_wait_ns; /* 0: off (keel_loop_opts.batch_wait_ns) */
	unsigned batch_avg;	/* CQEs per wake-up, x16, moving average */
	uint64_t cqes_per_wake[KEEL__WAKE_BUCKETS]; /* le 0,1,2,4..,+Inf */
	unsigned jobs; /* blocking jobs not yet posted back (pool's lock) */
	/* The two-phase stop (keel_loop_stop_token(), keel_loop_hold()). */
	struct keel_token *stop_tok; /* a child of the root token */
	unsigned holds;
	bool stopping;		 /* stop token cancelled by the runtime */
	struct keel_timer grace; /* cancels the root when it passes */
};

/* sched/remote.c */
void keel__remote_post(struct keel_loop *loop, struct keel__remote_item *it);
bool keel__remote_pending(const struct keel_loop *loop);
/*
 * Park before blocking: from now on posters ring the doorbell. Returns
 * false if the inbox already has work: then do not block (but unpark).
 */
bool keel__remote_park(struct keel_loop *loop);
void keel__remote_unpark(struct keel_loop *loop);
void keel__remote_drain(struct keel_loop *loop);

/* sched/introspect.c */
void keel__watchdog_add(struct keel_loop *loop);
void keel__watchdog_remove(struct keel_loop *loop);
void keel__stall_after_step(struct keel_loop *loop, struct keel_task *t,
			    const struct keel_await_point *resumed_from);

/*
 * sched/pool.c: at destroy, drop this loop's queued jobs and wait for its
 * running ones to post their results (then drain the inbox).
 */
void keel__blocking_drain(struct keel_loop *loop);

/*
 * keel_loop_create() on a backend other than the kernel's io_uring (the
 * simulated kernel; io/backend.h). Once the backend's setup succeeded the
 * loop owns its ring: keel_loop_destroy() (or a failed create) tears it
 * down.
 */
int keel__loop_create_on(struct keel_loop **out,
			 const struct keel_loop_opts *opts,
			 struct keel__backend *backend);

/*
 * The runtime's graceful stop of this loop: cancel its stop token, then its
 * root token once it has no holds, or `grace_ns` later (UINT64_MAX: never).
 */
void keel__loop_begin_stop(struct keel_loop *loop, uint64_t grace_ns);

/* sched/faults.c: undo keel_loop_set_faults() for this thread. */
void keel__faults_fini(struct keel_loop *loop);

#endif
