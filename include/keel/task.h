/* SPDX-License-Identifier: MIT */
/*
 * keel/task.h: the core layer's API: stackless tasks and the resume
 * macros, abort frames (panic, defer), cancellation tokens and scopes.
 */
#ifndef KEEL_TASK_H
#define KEEL_TASK_H

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- task ---- */
/*
 * stackless tasks, the resume macros, spawn/join/exit and the
 * defer stack.
 *
 * A task is a struct (its frame) that embeds `struct keel_task` and is run by
 * a step function. The step runs until it must wait, records where to resume
 * and returns. Resume points use labels-as-values, a GNU C extension that GCC
 * and Clang accept in every -std mode (the macros mark it so that
 * -Wpedantic stays quiet; other compilers are not supported). A `switch`
 * inside a task body is fine, and each await records its source site.
 *
 * LOCALS DO NOT SURVIVE AN AWAIT. Every KEEL_AWAIT returns from the step
 * function and resumes by calling it again, so a local variable set before
 * an await holds garbage after it. No compiler warns, and the old value may
 * even seem to survive in one build (often GCC at -O2) and be garbage in
 * another (-O0, Clang). Whatever is used after an await lives in the frame:
 *
 *	n = strlen(c->line);			// wrong: n is a local
 *	KEEL_AWAIT(t, keel_send_all(t, c->fd, c->line, n, 0));
 *	c->sent += n;				// n is garbage here
 *
 *	c->n = strlen(c->line);			// right: c->n is in the frame
 *	KEEL_AWAIT(t, keel_send_all(t, c->fd, c->line, c->n, 0));
 *	c->sent += c->n;
 *
 * A complete task (an echo connection; it owns its socket and closes it):
 */
/* clang-format off */
/*
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
 *						sizeof(c->buf), 0));
 *			if (keel_res(t) <= 0)	// 0: peer closed; or -errno
 *				break;
 *			KEEL_AWAIT(t, keel_send_all(t, c->fd, c->buf,
 *						    keel_res(t), MSG_NOSIGNAL));
 *			if (keel_res(t) < 0)
 *				break;
 *		}
 *		KEEL_AWAIT(t, keel_close(t, c->fd));	// also when cancelled
 *		KEEL_END(t);
 *	}
 *
 *	// from a task or callback on `loop`'s thread, with an accepted fd:
 *	struct conn *c = keel_spawn(loop, &conn_task, KEEL_PRIO_NORMAL);
 *	if (c)
 *		c->fd = fd;	// the task owns fd from here on
 *	else
 *		close(fd);
 */
/* clang-format on */
struct keel_loop;
struct keel_task;
struct keel__task_ext;

#define keel_container_of(ptr, type, member)                                   \
	((type *)((char *)(ptr)-offsetof(type, member)))

/* A link in one of keel's intrusive lists (private; see core/list.h). It
 * is here because public structs with private fields embed it. */
struct keel__link {
	struct keel__link *next;
	struct keel__link *prev;
};

/* What an await expression (an op, a join, a yield) returns. */
#define KEEL_READY   0 /* the result is already in keel_res(): go on */
#define KEEL_PENDING 1 /* the task will be woken with the result: suspend */

/*
 * Priority classes. Fairness rule (see sched/loop.c): every loop turn runs at
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
	/* Bytes of the frame keel_spawn() zeroes, from its start; 0: all. */
	uint32_t zero_size;
};

/*
 * The size of a frame type, which must not need more than 16-byte
 * alignment: frames are aligned as malloc's blocks are (16 bytes), so a
 * type that asks for more (a member _Alignas(64)) does not compile rather
 * than run misaligned.
 */
#define KEEL__FRAME_SIZE(frame_type)                                           \
	((uint32_t)sizeof(frame_type) +                                        \
	 0 * (uint32_t)sizeof(char[__alignof__(frame_type) <= 16 ? 1 : -1]))

/*
 * Define `var`, the type of a task whose frame is `frame_type` with its
 * keel_task in `member`, run by `step_fn`. (Positional, not designated,
 * initialisers: C++ before C++20 has none.) A frame is 16-byte aligned.
 * Ownership: the loop reads the type while any task of it lives; define it
 * static (or at least outliving them).
 */
#define KEEL_TASK_TYPE(var, frame_type, member, step_fn)                       \
	const struct keel_task_type var = {                                    \
	    (step_fn),                                                         \
	    KEEL__FRAME_SIZE(frame_type),                                      \
	    (uint32_t)offsetof(frame_type, member),                            \
	    #var,                                                              \
	    0,                                                                 \
	}

/*
 * KEEL_TASK_TYPE, for a frame that ends in buffers the task writes before
 * it reads them (a TLS connection's 35 KB): keel_spawn() zeroes the frame
 * only up to `tail`, a member (a nested one too: `stream.buf`), and the
 * buffers from there on are left as the allocator returns them. Zeroing
 * them cost a memset and, for memory the allocator had given back to the
 * kernel, a page fault per page, on every spawn.
 */
#define KEEL_TASK_TYPE_TAIL(var, frame_type, member, step_fn, tail)            \
	const struct keel_task_type var = {                                    \
	    (step_fn),                                                         \
	    KEEL__FRAME_SIZE(frame_type),                                      \
	    (uint32_t)offsetof(frame_type, member),                            \
	    #var,                                                              \
	    (uint32_t)offsetof(frame_type, tail),                              \
	}

/*
 * A resume point: one static object per await in the source. Storing a
 * pointer to it records both where to resume and what the task waits for;
 * an await stores it only when it suspends (one whose result is there at
 * once has nothing to record and saves the store).
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
	const struct keel_await_point *at; /* NULL until it first suspends */
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

/*
 * The result of the last await (an op's own result, or an exit status).
 * Ownership: reads the task; nothing changes hands.
 */
static inline int keel_res(const struct keel_task *t)
{
	return t->res;
}

/*
 * The loop that runs the task.
 * Ownership: the loop is its owner's (the task does not own it); valid while
 * the task runs.
 */
static inline struct keel_loop *keel_task_loop(const struct keel_task *t)
{
	return t->loop;
}

/*
 * Labels-as-values are a GNU extension: __extension__ (on `&&label`) and
 * these pragmas (around `goto *`) keep -Wpedantic quiet about them, in C
 * and C++, with GCC and Clang.
 */
#define KEEL__GNU_BEGIN                                                        \
	_Pragma("GCC diagnostic push")                                         \
	    _Pragma("GCC diagnostic ignored \"-Wpedantic\"")
#define KEEL__GNU_END _Pragma("GCC diagnostic pop")

#define KEEL__CAT2(a, b) a##b
#define KEEL__CAT(a, b)	 KEEL__CAT2(a, b)

/*
 * Start of a step function or routine: jump to where it last waited. (It
 * also takes a label's address, which clang requires of any function with
 * an indirect goto, even one whose body has no await.)
 */
#define KEEL_BEGIN(co)                                                         \
	KEEL__GNU_BEGIN                                                        \
	do {                                                                   \
		if ((co)->at)                                                  \
			goto *(co)->at->label;                                 \
	} while (0);                                                           \
	KEEL__GNU_END                                                          \
	keel__begin:                                                           \
	(void)__extension__ &&keel__begin

#define KEEL__AWAIT(co, op, id)                                                \
	do {                                                                   \
		static const struct keel_await_point KEEL__CAT(keel__ap_,      \
							       id) = {         \
		    __extension__ && KEEL__CAT(keel__resume_, id), __FILE__,   \
		    #op, __LINE__};                                            \
		if ((op) == KEEL_PENDING) {                                    \
			(co)->at = &KEEL__CAT(keel__ap_, id);                  \
			return KEEL_PENDING;                                   \
		}                                                              \
		KEEL__CAT(keel__resume_, id) :;                                \
	} while (0)

/*
 * Await an op (anything returning KEEL_READY or KEEL_PENDING) in a task
 * (`co` is the task) or in a nested routine (`co` is its keel_routine).
 * Afterwards keel_res() holds the op's result. The step may have returned
 * and been called again in between: locals set before it hold garbage
 * after it (see the top of this header); keep such values in the frame.
 */
#define KEEL_AWAIT(co, op) KEEL__AWAIT(co, op, __COUNTER__)

#define KEEL__AWAIT_CALL(co, call, id)                                         \
	do {                                                                   \
		static const struct keel_await_point KEEL__CAT(keel__ap_,      \
							       id) = {         \
		    __extension__ && KEEL__CAT(keel__resume_, id), __FILE__,   \
		    #call, __LINE__};                                          \
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
#define KEEL_EXIT(t, status) return keel_task_exit((t), (status))

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
 * KEEL_SPAWN_JOINABLE. Returns the frame, zeroed but for the header (and
 * the tail of a KEEL_TASK_TYPE_TAIL type), or NULL when out of memory. The task
 * first runs on a later loop turn, so the caller fills the frame in first.
 * Ownership: the loop owns the frame. A detached task's frame is freed when
 * it has exited and the kernel has returned all its ops; a joinable one's
 * after that and its keel_join() or keel_task_detach().
 */
void *keel_spawn(struct keel_loop *loop, const struct keel_task_type *type,
		 unsigned flags);

/*
 * The task header inside a frame returned by keel_spawn().
 * Ownership: a pointer into `frame`, valid as long as the frame.
 */
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
 * Ownership: `target`'s frame is freed by the join (once its ops have
 * drained): do not touch it after the await.
 */
int keel_join(struct keel_task *self, struct keel_task *target);

/*
 * Give up joining a joinable task: its frame goes when it is done.
 * Ownership: hands `target`'s frame back to the loop: do not touch it
 * afterwards.
 */
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
 * Ownership: the loop frees `t`'s frame (after its ops drain): do not touch
 * it after a 0.
 */
int keel_task_kill(struct keel_task *t);

/*
 * Await the next loop turn.
 * Ownership: nothing changes hands.
 */
int keel_yield(struct keel_task *t);

/*
 * The task type's name.
 * Ownership: the type's static string, valid while the task type is.
 */
const char *keel_task_name(const struct keel_task *t);

/*
 * What KEEL_EXIT expands to: exit the running task `t` with `status`, from
 * its own step function, which must return the value this returns.
 */
int keel_task_exit(struct keel_task *t, int status);

/*
 * The defer stack: cleanups registered where a resource is acquired, run
 * last-in first-out when the task exits, aborts or is killed, or down to a
 * mark. A callback runs on the loop's thread and must not await. While the
 * cleanups of an exiting task run, keel_res() is its exit status (as a
 * joiner will see it: KEEL_ABORTED after a panic, -ECANCELED after a kill).
 */
typedef void (*keel_defer_fn)(void *arg);

/*
 * Push a cleanup. Returns 0, or -ENOMEM (nothing was pushed).
 * Ownership: `arg` stays the caller's; it must stay valid until `fn` has run
 * or been dropped.
 */
int keel_defer(struct keel_task *t, keel_defer_fn fn, void *arg);

/*
 * The current depth of the defer stack, to unwind or drop to later.
 * Ownership: nothing changes hands.
 */
unsigned keel_defer_mark(const struct keel_task *t);

/*
 * Run (LIFO) and pop every cleanup pushed after `mark`.
 * Ownership: each popped cleanup's `arg` is done with once it has run.
 */
void keel_defer_unwind(struct keel_task *t, unsigned mark);

/*
 * Pop every cleanup pushed after `mark` without running it.
 * Ownership: the dropped cleanups' `arg`s are the caller's again (nothing
 * ran).
 */
void keel_defer_drop(struct keel_task *t, unsigned mark);

/* ---- abort ---- */
/*
 * panic-style abort of one task.
 *
 * keel_panic() and KEEL_ASSERT() inside a task step unwind that step only
 * (a longjmp to the loop, which set up the abort frame before resuming the
 * task): the task is marked aborted with the message and source site, its
 * defer stack runs (LIFO), its ops in flight are cancelled, its frame is
 * freed once the kernel has returned them, and its joiner (or scope) sees
 * the exit status KEEL_ABORTED with the message. Other tasks keep running.
 *
 * A panic outside a task step (loop code, a timer or token callback, a
 * defer running during an abort) is a bug, not something to recover from:
 * the process aborts with the message and site.
 *
 * Hardware faults (SIGSEGV, SIGBUS, SIGFPE) are not trapped unless a loop
 * opts in with keel_loop_set_faults(); see there for the dangers.
 */
struct keel_loop;
struct keel_task;

/* The exit status of an aborted task (and a join's keel_res). */
#define KEEL_ABORTED (-EOWNERDEAD)

/*
 * A one-line description of a status keel returned (a keel_res(), an exit
 * status, a negative errno): keel's own meaning where it gives an errno one
 * (KEEL_ABORTED is "task aborted", not libc's "Owner died"; a collecting
 * scope's -ECHILD is "a child of the scope failed"), libc's text for other
 * negative values, "success" for 0 and positive values.
 * Ownership: a constant string, never NULL, never freed. Thread-safe.
 */
const char *keel_strerror(int status);

/* What an aborted task left: valid as long as its holder says. */
struct keel_abort {
	const char *message;
	const char *file;
	int line;
	int signal; /* the trapped signal, or 0 for a panic */
};

/* What keel_panic() expands to: the same, with the site given. */
__attribute__((noreturn, format(printf, 3, 4))) void
keel_panic_at(const char *file, int line, const char *fmt, ...);

/* Abort the running task with a printf-style message. */
#define keel_panic(...) keel_panic_at(__FILE__, __LINE__, __VA_ARGS__)

/* Abort the running task if `cond` is false. */
#define KEEL_ASSERT(cond)                                                      \
	do {                                                                   \
		if (__builtin_expect(!(cond), 0))                              \
			keel_panic_at(__FILE__, __LINE__,                      \
				      "assertion failed: %s", #cond);          \
	} while (0)

/*
 * After a keel_join() whose keel_res() is KEEL_ABORTED: what the joined
 * task left, valid until `self`'s next join or exit. NULL otherwise.
 * Ownership: the strings are keel's, valid until `self`'s next join or exit.
 */
const struct keel_abort *keel_task_joined_abort(const struct keel_task *self);

/* keel_loop_set_faults() modes. */
enum keel_fault_mode {
	/* Default: no signal handler; a fault kills the process. */
	KEEL_FAULTS_DIE = 0,
	/* Print the faulting task's name and the await it last suspended at
	 * to stderr, then let the signal kill the process as it would have. */
	KEEL_FAULTS_REPORT = 1,
	/*
	 * Turn SIGSEGV/SIGBUS/SIGFPE raised inside a task step into an abort
	 * of that task (sigaltstack + a jump back to the loop). A LAST RESORT:
	 * the fault means memory may already be corrupt, locks held by the
	 * step stay held, and the step's C state is lost mid-update. Counted
	 * in the loop's stats (fault_recoveries). Faults outside a task step
	 * still kill the process.
	 */
	KEEL_FAULTS_RECOVER = 2,
};

/*
 * Choose how this loop's thread handles hardware faults. Installs the
 * process-wide handlers on first use (each fault outside a task step of a
 * loop that opted in is passed on to the previous handler, or gets the
 * default action; keel's handlers stay for later faults) and an alternate
 * signal stack for the calling thread. Returns 0 or a negative errno.
 * Ownership: the handlers and the alternate stack are keel's, process- and
 * thread-wide, never freed.
 */
int keel_loop_set_faults(struct keel_loop *loop, enum keel_fault_mode mode);

/* ---- cancel ---- */
/*
 * cancellation tokens and shields.
 *
 * Tokens form a tree: cancelling one cancels its descendants. A token's
 * effective deadline is the earlier of its own and its parent's; when it
 * passes, the token is cancelled with -ETIMEDOUT. The first cause is kept
 * (-ECANCELED or -ETIMEDOUT), and cancellation is level-triggered: every
 * later await of a task observing the token returns the cause at once.
 *
 * Every task observes one token: the one it was given, else its spawner's,
 * else the loop's root token (keel_loop_token()). Cancelling a task's token
 * cancels its ops in flight (IORING_OP_ASYNC_CANCEL) and wakes it from any
 * await (I/O, sleep, join); it gets the real outcome: the cause, or the
 * op's own result when the op completed before the cancel took effect
 * (a recv that already consumed data returns that data).
 *
 * Like Go's context, .NET's CancellationToken and Trio's cancel scopes.
 */
struct keel_loop;
struct keel_task;
struct keel_token;
struct keel_token_cb;

/*
 * A new token, child of `parent` (NULL: a child of the loop's root token).
 * Returns 0 and sets *out, or -ENOMEM. A child of a cancelled parent starts
 * cancelled with the parent's cause.
 * Ownership: the caller holds one reference (keel_token_release()); tasks
 * observing the token and its children hold their own.
 */
int keel_token_new(struct keel_loop *loop, struct keel_token *parent,
		   struct keel_token **out);

/*
 * Take / drop a reference. The token is freed with its last reference.
 * Ownership: the caller gets one more reference; each is dropped by
 * keel_token_release().
 */
struct keel_token *keel_token_ref(struct keel_token *tok);
void keel_token_release(struct keel_token *tok);

/*
 * The loop's root token: cancelling it cancels every task of the loop.
 * Ownership: the loop's; no reference is taken (keel_token_ref() to keep it
 * past the loop).
 */
struct keel_token *keel_loop_token(struct keel_loop *loop);

/*
 * Cancel with -ECANCELED (no-op if already cancelled).
 * Ownership: the caller's reference is unchanged.
 */
void keel_token_cancel(struct keel_token *tok);

/*
 * Set the token's own absolute CLOCK_MONOTONIC deadline (UINT64_MAX: none).
 * Its effective deadline is the earlier of that and its parent's.
 * Returns 0 or -ENOMEM.
 * Ownership: the caller's reference is unchanged.
 */
int keel_token_set_deadline(struct keel_token *tok, uint64_t deadline_ns);

/*
 * Set the deadline `ns` from now.
 * Ownership: the caller's reference is unchanged.
 */
int keel_token_set_timeout(struct keel_token *tok, uint64_t ns);

/*
 * The effective deadline (UINT64_MAX: none).
 * Ownership: reads the token; nothing changes hands.
 */
uint64_t keel_token_deadline(const struct keel_token *tok);

/*
 * 0 while not cancelled, else the first cause: -ECANCELED or -ETIMEDOUT.
 * Ownership: reads the token; nothing changes hands.
 */
int keel_token_cause(const struct keel_token *tok);

/* Ownership: reads the token; nothing changes hands. */
static inline bool keel_token_cancelled(const struct keel_token *tok)
{
	return keel_token_cause(tok) != 0;
}

/* Called on the loop's thread when the token is cancelled. */
typedef void (*keel_token_fn)(struct keel_token *tok, int cause, void *arg);

/*
 * A cancellation callback registration; caller-owned, keep it alive while
 * registered. Its fields are private.
 */
struct keel_token_cb {
	struct keel__link link; /* the token's callback list */
	struct keel_token *tok;
	keel_token_fn fn;
	void *arg;
};

/*
 * Call `fn` when `tok` is cancelled; if it already is, `fn` runs at once
 * (before this returns). A callback runs once and is then unregistered.
 * Ownership: `cb` and `arg` stay the caller's; keep both valid until the
 * callback ran or keel_token_cb_remove().
 */
void keel_token_on_cancel(struct keel_token *tok, struct keel_token_cb *cb,
			  keel_token_fn fn, void *arg);

/*
 * Unregister; safe if it already ran or was never registered.
 * Ownership: `cb` is the caller's again when this returns.
 */
void keel_token_cb_remove(struct keel_token_cb *cb);

/*
 * The token `t` observes.
 * Ownership: the task's (or the loop's root); no reference is taken:
 * keel_token_ref() to keep it.
 */
struct keel_token *keel_task_token(const struct keel_task *t);

/*
 * Make `t` observe `tok` (it takes a reference). If `tok` is cancelled and
 * `t` is waiting, it is woken with the cause. Returns 0 or -ENOMEM.
 * Ownership: `t` takes its own reference; the caller keeps theirs.
 */
int keel_task_set_token(struct keel_task *t, struct keel_token *tok);

/*
 * A shield: while it is up, the task's awaits ignore its token, so cleanup
 * can still do I/O; the shield has its own deadline (ns from now;
 * UINT64_MAX: none), after which awaits fail with -ETIMEDOUT. Caller-owned,
 * keep it in the frame. Returns 0 or -ENOMEM.
 */
struct keel_shield {
	struct keel_token *saved; /* the task's token, restored at the end */
	struct keel_token *own;
	struct keel_shield *prev; /* the shield it is nested in */
};

/*
 * Ownership: `s` is the caller's (in t's frame) until keel_shield_end();
 * keel ends a shield still up when the task exits.
 */
int keel_shield_begin(struct keel_task *t, struct keel_shield *s,
		      uint64_t timeout_ns);
void keel_shield_end(struct keel_task *t, struct keel_shield *s);

/*
 * Cancel `t` alone: like cancelling a token only it observes (the task
 * gets its own child token, cancelled).
 * Ownership: nothing changes hands; the frame stays the loop's.
 */
int keel_task_cancel(struct keel_task *t);

/* ---- scope ---- */
/*
 * structured concurrency.
 *
 * A scope owns the tasks spawned into it and cannot finish before all of
 * them have: keel_scope_join() waits for every child and hands back each
 * one's exit status. The children observe the scope's token, a child of the
 * owner's, so cancelling the owner cancels them, and a scope deadline is a
 * timeout on the whole group. Failure policy:
 *   KEEL_SCOPE_FAIL_FAST  the first failure (negative exit status, or an
 *                         abort) cancels the siblings (Trio's nursery,
 *                         asyncio.TaskGroup);
 *   KEEL_SCOPE_COLLECT    keep going; every failure is reported together.
 * gather = spawn + keel_scope_join; race/select = keel_scope_join_any +
 * keel_scope_cancel + keel_scope_join; wait_for = keel_scope_set_timeout.
 *
 * Results are recorded in finishing order: keel_scope_results() lists them
 * so, and the n-th keel_scope_join_any() reports the n-th of that list;
 * each result's `index` is the child's place in spawn order (0, 1, ...).
 * An aborted child's panic message (result.abort) is owned by the scope
 * and stays valid until keel_scope_fini().
 *
 * The owner must join before it exits. If it exits (or aborts, or is
 * killed) with the scope still open, keel cancels the scope's token, so
 * the children are cancelled; they are orphaned (they run on until they
 * answer the cancellation, and nobody sees their results), and the scope
 * is finalised for the owner (keel_scope_fini(): results and messages are
 * freed). Nothing leaks, but failures go unseen: join.
 */
struct keel_loop;
struct keel_task;
struct keel_task_type;
struct keel_token;

enum keel_scope_policy {
	KEEL_SCOPE_FAIL_FAST = 0,
	KEEL_SCOPE_COLLECT = 1,
};

/* One child's outcome (results are in finishing order; see above). */
struct keel_scope_result {
	uint32_t index; /* the child's place in spawn order (0, 1, ...) */
	int status;	/* exit status, KEEL_ABORTED if it panicked */
	/* For KEEL_ABORTED: message and site, valid until keel_scope_fini. */
	struct keel_abort abort;
};

/* Caller-owned (keep it in the owner's frame); fields are private. */
struct keel_scope {
	struct keel_task *owner;
	struct keel_token *token;
	struct keel_scope_result *results;
	uint32_t nresults; /* children finished */
	uint32_t cap;
	uint32_t spawned;  /* children spawned */
	uint32_t failures; /* children with status < 0 */
	int first_failure; /* status of the first failure, 0 if none */
	int policy;
	int waiting;	   /* owner waits: 1 for all, 2 for any */
	uint32_t any_seen; /* results already returned by join_any */
	struct keel_scope *next_owned;
};

/*
 * Open a scope owned by `owner` (the running task). Returns 0 or -ENOMEM
 * (the scope is then zeroed; keel_scope_fini on it is harmless).
 * Ownership: the caller owns `scope`; keep it in the owner's frame, join it
 * (keel_scope_join) before the owner exits, then keel_scope_fini. An owner
 * that exits without joining: see above.
 */
int keel_scope_init(struct keel_task *owner, struct keel_scope *scope,
		    enum keel_scope_policy policy);

/*
 * Release the scope's token, results and panic messages (after the join;
 * pointers from keel_scope_results() die here). The struct is zeroed.
 */
void keel_scope_fini(struct keel_scope *scope);

/*
 * Spawn a child into the scope (flags: a keel_prio). Returns its zeroed
 * frame or NULL (-ENOMEM). The child observes the scope's token.
 * Ownership: the loop owns the frame (fill it in before the next await;
 * do not keep the pointer past the join); the scope keeps its result.
 */
void *keel_scope_spawn(struct keel_scope *scope,
		       const struct keel_task_type *type, unsigned flags);

/*
 * Await every child. keel_res: 0 if none failed; else, for FAIL_FAST the
 * first failure's status, for COLLECT -ECHILD (see the results;
 * keel_strerror says so). If the scope's deadline passed and any child
 * failed, -ETIMEDOUT. The wait itself cannot be cancelled: cancelling the
 * owner cancels the children (the scope's token is a child of the owner's),
 * so it ends when they have.
 * Ownership: nothing changes hands; the results stay the scope's
 * (keel_scope_results()).
 */
int keel_scope_join(struct keel_task *self, struct keel_scope *scope);

/*
 * Await the next child to finish: keel_res is its exit status (it is the
 * next entry of keel_scope_results(), which holds its index and abort),
 * -ECHILD when every child spawned so far has been reported.
 * Ownership: as keel_scope_join().
 */
int keel_scope_join_any(struct keel_task *self, struct keel_scope *scope);

/*
 * Cancel every child (the scope's token).
 * Ownership: nothing changes hands.
 */
void keel_scope_cancel(struct keel_scope *scope);

/*
 * A deadline for the whole scope, `ns` from now. Returns 0 or -ENOMEM.
 * Ownership: nothing changes hands.
 */
int keel_scope_set_timeout(struct keel_scope *scope, uint64_t ns);

/*
 * The finished children's results, in finishing order; *n is their count.
 * Ownership: the scope's; valid until the next spawn into it or
 * keel_scope_fini().
 */
static inline const struct keel_scope_result *
keel_scope_results(const struct keel_scope *scope, uint32_t *n)
{
	*n = scope->nresults;
	return scope->results;
}

#ifdef __cplusplus
}
#endif
#endif
