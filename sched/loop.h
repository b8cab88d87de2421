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
	/* Each class's share of the budget (see run_ready()). */
	unsigned share[KEEL_PRIO_CLASSES];
	/* Where a panic left step 1 of the turn (sched/loop.c: run_class()):
	 * the class and phase, the step count its run ends at, and the step
	 * count the turn began with. */
	unsigned resume_class;
	uint64_t resume_end;
	uint64_t turn_steps0;
	bool stop;
	uint64_t turns;
	void *altstack; /* the signal stack keel gave this thread, if any */
	struct keel__loop_watch watch;
	struct keel__inbox inbox;
	bool persistent;  /* a runtime loop: keeps running while idle */
	unsigned spin_ns; /* spin before parking (keel_loop_opts.spin_ns) */
	unsigned batch_wait_ns; /* its bound; 0: off (keel_loop_opts) */
	unsigned batch_avg;	/* CQEs per wake-up, x16, moving average */
	uint64_t batch_waits;	/* enters that waited for a batch */
	uint64_t batch_short;	/* ... and got less than it by the bound */
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
/* Whether the inbox has items (inline: the turn asks it twice). */
static inline bool keel__remote_pending(const struct keel_loop *loop)
{
	return __atomic_load_n(&loop->inbox.head, __ATOMIC_SEQ_CST) != NULL;
}
void keel__remote_drain(struct keel_loop *loop);

/* sched/introspect.c */
void keel__watchdog_add(struct keel_loop *loop);
void keel__watchdog_remove(struct keel_loop *loop);
/* Nonzero while the stall watchdog sleeps, every loop parked; a loop that
 * unparks then wakes it (keel__watchdog_wake()). */
extern int keel__watchdog_idle;
void keel__watchdog_wake(void);

/*
 * Park before blocking: from now on posters ring the doorbell. Returns
 * false if the inbox already has work: then do not block (but unpark).
 * Park and unpark are inline: every turn that blocks does both.
 *
 * `wake_pending` is cleared when the loop parks, before `parked` is set:
 * cleared at unpark instead, a doorbell rung just after the unpark would
 * be spent on a turn that does not park, the flag would stay set, and the
 * next park would sleep through every later post. A plain store: a poster
 * that sees this `parked` (a release, as every sequentially consistent
 * store) sees the clear before it too, so its exchange reads 0 or another
 * poster's 1; one full fence a park (the store of `parked`, before the
 * look at the inbox) is all the protocol needs, not two (a locked
 * instruction each on x86: some 20 cycles a blocking turn).
 */
static inline bool keel__remote_park(struct keel_loop *loop)
{
	__atomic_store_n(&loop->inbox.wake_pending, 0, __ATOMIC_RELAXED);
	__atomic_store_n(&loop->inbox.parked, 1, __ATOMIC_SEQ_CST);
	/* Posted before `parked` was set: the poster rang nothing. */
	return !keel__remote_pending(loop);
}

/* The stall watchdog sleeps while every loop is parked: Dekker's with
 * its thread (sched/introspect.c: all_parked()), both sides sequentially
 * consistent. */
static inline void keel__remote_unpark(struct keel_loop *loop)
{
	__atomic_store_n(&loop->inbox.parked, 0, __ATOMIC_SEQ_CST);
	if (__builtin_expect(
		__atomic_load_n(&keel__watchdog_idle, __ATOMIC_SEQ_CST), 0))
		keel__watchdog_wake();
}
/* The watchdog's samples so far (tests). */
uint64_t keel__watchdog_ticks(void);
void keel__stall_after_step(struct keel_loop *loop, struct keel_task *t,
			    const struct keel_await_point *resumed_from);

/*
 * sched/pool.c: at destroy, drop this loop's queued jobs and wait for its
 * running ones to post their results (then drain the inbox).
 */
void keel__blocking_drain(struct keel_loop *loop);

/* The opcode a dump shows for a blocking job (no io_uring opcode). */
#define KEEL__OPCODE_BLOCKING 0xfe

/*
 * sched/pool.c: a job its awaiter may leave before it ends (keel_resolve:
 * a cancel or a deadline ends the await at once, though the job cannot be
 * stopped). The awaiter owns a KEEL__OP_USER op and ends it itself; `arg`
 * is on the heap, handed to the pool with the job.
 */
struct keel__job;
struct keel__job_class {
	/* On a pool thread; its result goes to finish (a negative errno
	 * there instead: the job was dropped before it ran). */
	keel_blocking_fn run;
	/* On the loop's thread, when the job is back and `op` still
	 * awaited: end `op` (keel__op_user_done). */
	void (*finish)(struct keel_loop *loop, struct keel__op *op, void *arg,
		       int result);
	/* Free `arg`: once, after finish, or when the job ends after it was
	 * left (on whichever thread that is). */
	void (*release)(void *arg);
};

/* Queue `arg` for cls->run; sets *job before it may run. Returns 0, or
 * -EAGAIN (queue full) or -ENOMEM: then the pool did not take `arg`. */
int keel__job_submit(struct keel_loop *loop, struct keel__op *op,
		     const struct keel__job_class *cls, void *arg,
		     struct keel__job **job);

/* On the loop's thread, before its op ends: leave `job` (queued: it never
 * runs). Its finish is not called; its arg is released when the job is
 * done with it, maybe on another thread later: do not touch it after. */
void keel__job_detach(struct keel_loop *loop, struct keel__job *job);

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
