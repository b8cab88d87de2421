/* SPDX-License-Identifier: MIT */
/*
 * keel/abort.h: panic-style abort of one task.
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
#ifndef KEEL_ABORT_H
#define KEEL_ABORT_H

#include <errno.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct keel_loop;
struct keel_task;

/* The exit status of an aborted task (and a join's keel_res). */
#define KEEL_ABORTED (-EOWNERDEAD)

/* What an aborted task left: valid as long as its holder says. */
struct keel_abort {
	const char *message;
	const char *file;
	int line;
	int signal; /* the trapped signal, or 0 for a panic */
};

__attribute__((noreturn, format(printf, 3, 4))) void
keel__panic(const char *file, int line, const char *fmt, ...);

/* Abort the running task with a printf-style message. */
#define keel_panic(...) keel__panic(__FILE__, __LINE__, __VA_ARGS__)

/* Abort the running task if `cond` is false. */
#define KEEL_ASSERT(cond)                                                      \
	do {                                                                   \
		if (__builtin_expect(!(cond), 0))                              \
			keel__panic(__FILE__, __LINE__,                        \
				    "assertion failed: %s", #cond);            \
	} while (0)

/*
 * After a keel_join() whose keel_res() is KEEL_ABORTED: what the joined
 * task left, valid until `self`'s next join or exit. NULL otherwise.
 */
const struct keel_abort *keel_task_joined_abort(const struct keel_task *self);

/* keel_loop_set_faults() modes. */
enum keel_fault_mode {
	/* Default: no signal handler; a fault kills the process. */
	KEEL_FAULTS_DIE = 0,
	/* Print the faulting task's name and await site to stderr, then let
	 * the signal kill the process as it would have. */
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
 * process-wide handlers on first use (they defer to the previous handler for
 * faults outside keel task steps) and an alternate signal stack for the
 * calling thread. Returns 0 or a negative errno.
 */
int keel_loop_set_faults(struct keel_loop *loop, enum keel_fault_mode mode);

#ifdef __cplusplus
}
#endif
#endif
