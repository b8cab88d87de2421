/* SPDX-License-Identifier: MIT */
/*
 * keel/task.h: stackless tasks, the resume macros, spawn/join/exit and the
 * defer stack.
 *
 * A task is a struct (its frame) that embeds `struct keel_task` and is run by
 * a step function. The step runs until it must wait, records where to resume
 * and returns; locals do not survive a wait, so what must survive lives in
 * the frame. Resume points use labels-as-values (GCC/Clang), so a `switch`
 * inside a task body is fine, and each await records its source site.
 *
 *	struct conn {
 *		struct keel_task task;
 *		int fd;
 *		char buf[4096];
 *	};
 *	static int conn_step(struct keel_task *t);
 *	static KEEL_TASK_TYPE(conn_task, struct conn, task, conn_step);
 *
 *	static int conn_step(struct keel_task *t)
 *	{
 *		struct conn *c = keel_container_of(t, struct conn, task);
 *
 *		KEEL_BEGIN(t);
 *		for (;;) {
 *			KEEL_AWAIT(t, keel_recv(t, c->fd, c->buf,
 *sizeof(c->buf), 0)); if (keel_res(t) <= 0) break; KEEL_AWAIT(t,
 *keel_send_all(t, c->fd, c->buf, keel_res(t), 0)); if (keel_res(t) < 0) break;
 *		}
 *		KEEL_END(t);
 *	}
 *
 *	struct conn *c = keel_spawn(loop, &conn_task, KEEL_PRIO_NORMAL);
 *	c->fd = fd;
 */
#ifndef KEEL_TASK_H
#define KEEL_TASK_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct keel_loop;
struct keel_task;
struct keel__task_ext;

#define keel_container_of(ptr, type, member)                                   \
	((type *)((char *)(ptr)-offsetof(type, member)))

/* What an await expression (an op, a join, a yield) returns. */
#define KEEL_READY   0 /* the result is already in keel_res(): go on */
#define KEEL_PENDING 1 /* the task will be woken with the result: suspend */

/*
 * Priority classes. Fairness rule (see sched/runq.c): every loop turn runs at
 * most `budget` steps; each non-empty class first gets its share of the
 * budget (critical 8/15, high 4/15, normal 2/15, low 1/15, at least one step
 * each), then what is left goes to the classes in priority order. So higher
 * classes get more, and no class starves.
 */
enum keel_prio {
	KEEL_PRIO_LOW = 0,
	KEEL_PRIO_NORMAL = 1,
	KEEL_PRIO_HIGH = 2,
	KEEL_PRIO_CRITICAL = 3,
};
#define KEEL_PRIO_CLASSES 4

/* keel_spawn() flags: a priority class, or'ed with these. */
#define KEEL_SPAWN_PRIO_MASK 0x3u
#define KEEL_SPAWN_JOINABLE  0x100u /* keep the exit status until joined */

/* A step function: returns KEEL_PENDING, or what KEEL_EXIT returned. */
typedef int (*keel_task_fn)(struct keel_task *t);

/* The static description of a kind of task: its step, frame and name. */
struct keel_task_type {
	keel_task_fn step;
	uint32_t frame_size;  /* sizeof the frame that embeds the task */
	uint32_t task_offset; /* offsetof the task within the frame */
	const char *name;     /* shown in task dumps and traces */
};

#define KEEL_TASK_TYPE(var, frame_type, member, step_fn)                       \
	const struct keel_task_type var = {                                    \
	    .step = (step_fn),                                                 \
	    .frame_size = sizeof(frame_type),                                  \
	    .task_offset = offsetof(frame_type, member),                       \
	    .name = #var,                                                      \
	}

/*
 * A resume point: one static object per await in the source. Storing a
 * pointer to it records both where to resume and what the task waits for.
 */
struct keel_await_point {
	void *label;	  /* &&label to `goto *` on resume */
	const char *file; /* __FILE__ */
	const char *what; /* the awaited expression, as written */
	int line;	  /* __LINE__ */
};

/*
 * The task header: 64 bytes, embedded in every frame. Its fields are
 * private to keel; read them through the accessors below.
 */
struct keel_task {
	const struct keel_task_type *type;
	const struct keel_await_point *at; /* NULL until the first await */
	struct keel_loop *loop;
	struct keel_task *next;	    /* run-queue link */
	struct keel_task *joiner;   /* the task waiting in keel_join() */
	struct keel__task_ext *ext; /* defer stack etc., allocated lazily */
	uint32_t ops;		    /* newest op in flight (ledger index + 1) */
	int32_t res;		    /* last await's result; exit status */
	uint16_t inflight;	    /* ops the kernel still owns */
	uint8_t prio;
	uint8_t flags;
	uint32_t id; /* slot in the loop's task table */
};

/* A nested routine's resume state; embed it in the routine's own frame. */
struct keel_routine {
	const struct keel_await_point *at;
};

/* The result of the last await (an op's own result, or an exit status). */
static inline int keel_res(const struct keel_task *t)
{
	return t->res;
}

/* The loop that runs the task. */
static inline struct keel_loop *keel_task_loop(const struct keel_task *t)
{
	return t->loop;
}

#define KEEL__CAT2(a, b) a##b
#define KEEL__CAT(a, b)	 KEEL__CAT2(a, b)

/*
 * Start of a step function or routine: jump to where it last waited. (It
 * also takes a label's address, which clang requires of any function with
 * an indirect goto, even one whose body has no await.)
 */
#define KEEL_BEGIN(co)                                                         \
	do {                                                                   \
		if ((co)->at)                                                  \
			goto *(co)->at->label;                                 \
	} while (0);                                                           \
	keel__begin:                                                           \
	(void)&&keel__begin

#define KEEL__AWAIT(co, op, id)                                                \
	do {                                                                   \
		static const struct keel_await_point KEEL__CAT(                \
		    keel__ap_, id) = {&&KEEL__CAT(keel__resume_, id),          \
				      __FILE__, #op, __LINE__};                \
		(co)->at = &KEEL__CAT(keel__ap_, id);                          \
		if ((op) == KEEL_PENDING)                                      \
			return KEEL_PENDING;                                   \
		KEEL__CAT(keel__resume_, id) :;                                \
	} while (0)

/*
 * Await an op (anything returning KEEL_READY or KEEL_PENDING) in a task
 * (`co` is the task) or in a nested routine (`co` is its keel_routine).
 * Afterwards keel_res() holds the op's result.
 */
#define KEEL_AWAIT(co, op) KEEL__AWAIT(co, op, __COUNTER__)

#define KEEL__AWAIT_CALL(co, call, id)                                         \
	do {                                                                   \
		static const struct keel_await_point KEEL__CAT(                \
		    keel__ap_, id) = {&&KEEL__CAT(keel__resume_, id),          \
				      __FILE__, #call, __LINE__};              \
		(co)->at = &KEEL__CAT(keel__ap_, id);                          \
		KEEL__CAT(keel__resume_, id) :;                                \
		if ((call) == KEEL_PENDING)                                    \
			return KEEL_PENDING;                                   \
	} while (0)

/*
 * Run a nested routine inline: `call` is a function returning KEEL_PENDING
 * or KEEL_READY whose resume state is a keel_routine inside the caller's
 * frame. On resume the call is made again and the routine jumps to its own
 * await. Its result is in keel_res() when it returns KEEL_READY.
 */
#define KEEL_AWAIT_CALL(co, call) KEEL__AWAIT_CALL(co, call, __COUNTER__)

/* Give the other ready tasks a turn (the task goes to its queue's tail). */
#define KEEL_YIELD(t) KEEL_AWAIT(t, keel_yield(t))

/* Exit the task with `status` (its joiner sees it). Runs the defer stack. */
#define KEEL_EXIT(t, status) return keel__task_exit((t), (status))

/* End of a step function: exit with status 0. */
#define KEEL_END(t) KEEL_EXIT(t, 0)

/* End of a routine: keel_res() becomes `value`; the routine can be reused. */
#define KEEL_ROUTINE_RETURN(r, t, value)                                       \
	do {                                                                   \
		(r)->at = NULL;                                                \
		(t)->res = (value);                                            \
		return KEEL_READY;                                             \
	} while (0)

/*
 * Spawn a task of `type` on `loop`; flags: a keel_prio, or'ed with
 * KEEL_SPAWN_JOINABLE. Returns the frame, zeroed but for the header, or
 * NULL when out of memory. The task first runs on a later loop turn, so the
 * caller fills the frame in first.
 * Ownership: the loop owns the frame. A detached task's frame is freed when
 * it has exited and the kernel has returned all its ops; a joinable one's
 * after that and its keel_join() or keel_task_detach().
 */
void *keel_spawn(struct keel_loop *loop, const struct keel_task_type *type,
		 unsigned flags);

/* The task header inside a frame returned by keel_spawn(). */
static inline struct keel_task *keel_task_of(const struct keel_task_type *type,
					     void *frame)
{
	return (struct keel_task *)((char *)frame + type->task_offset);
}

/*
 * Await `target`'s exit: keel_res(self) becomes its exit status. The target
 * must be joinable and joined once; then its frame is released.
 * Errors (in keel_res): -EINVAL (not joinable), -EBUSY (already being
 * joined), -EDEADLK (joining itself).
 */
int keel_join(struct keel_task *self, struct keel_task *target);

/* Give up joining a joinable task: its frame goes when it is done. */
void keel_task_detach(struct keel_task *target);

/*
 * Kill `t`, from a task or callback of t's loop (not from t itself): no
 * more of its code runs. Its wait is undone (its token is cancelled, so a
 * wake already on its way from another thread gives up), its defers run
 * (LIFO; a panic in one is fatal, as during an abort), it exits with
 * -ECANCELED (its joiner, scope or supervisor sees that), and its ops in
 * flight are cancelled: the frame, and the buffers in it, are freed only
 * when the kernel has returned every one of them. Use it when a task does
 * not answer its cancellation in time (a supervisor's brutal_kill); prefer
 * keel_task_cancel(), which lets the task clean up itself.
 * Returns 0 (it is dead, or dies as soon as a wake already on its way from
 * another thread arrives), -ESRCH (already exited), -EDEADLK (t is the
 * running task), -EXDEV (called on another loop's thread), -ENOMEM.
 */
int keel_task_kill(struct keel_task *t);

/* Await the next loop turn. */
int keel_yield(struct keel_task *t);

/* The task type's name. */
const char *keel_task_name(const struct keel_task *t);

/* Used by KEEL_EXIT; do not call directly. */
int keel__task_exit(struct keel_task *t, int status);

/*
 * The defer stack: cleanups registered where a resource is acquired, run
 * last-in first-out when the task exits, aborts or is killed, or down to a
 * mark. A callback runs on the loop's thread and must not await. While the
 * cleanups of an exiting task run, keel_res() is its exit status (as a
 * joiner will see it: KEEL_ABORTED after a panic, -ECANCELED after a kill).
 */
typedef void (*keel_defer_fn)(void *arg);

/* Push a cleanup. Returns 0, or -ENOMEM (nothing was pushed). */
int keel_defer(struct keel_task *t, keel_defer_fn fn, void *arg);

/* The current depth of the defer stack, to unwind or drop to later. */
unsigned keel_defer_mark(const struct keel_task *t);

/* Run (LIFO) and pop every cleanup pushed after `mark`. */
void keel_defer_unwind(struct keel_task *t, unsigned mark);

/* Pop every cleanup pushed after `mark` without running it. */
void keel_defer_drop(struct keel_task *t, unsigned mark);

#ifdef __cplusplus
}
#endif
#endif
