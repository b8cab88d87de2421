/* SPDX-License-Identifier: MIT */
/*
 * abort.c: panics. keel_panic() in a task step records the message and jumps
 * back to the loop (sched/loop.c set the jump buffer up before running the
 * step); the loop then calls keel__task_aborted() to unwind the task.
 *
 * Why this is safe: a task is stackless, so the only C frames unwound are
 * those of the step itself and what it called; the loop's own state that
 * changes between the setjmp and the step lives in the loop struct, never
 * in locals of the function that called setjmp (or they are volatile).
 * Library code never panics in the middle of updating loop state.
 *
 * A panic with no task step running, or while an aborted task's defers run,
 * is a bug in the program: the process aborts with the message and site.
 */
#include "core.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

__thread struct keel__core *keel__current_core
    __attribute__((tls_model("initial-exec")));

void keel__abort_clear(struct keel_abort *a)
{
	free((char *)a->message);
	memset(a, 0, sizeof(*a));
}

void keel__abort_transfer(struct keel_task *from, struct keel_abort *to)
{
	keel__abort_clear(to);
	if (from->ext) {
		*to = from->ext->abort;
		memset(&from->ext->abort, 0, sizeof(from->ext->abort));
	}
}

const struct keel_abort *keel_task_joined_abort(const struct keel_task *self)
{
	if (!self->ext || !self->ext->joined_abort.file)
		return NULL;
	return &self->ext->joined_abort;
}

void keel_panic_at(const char *file, int line, const char *fmt, ...)
{
	struct keel__core *c = keel__current_core;
	va_list ap;

	if (!c || !c->current || !c->abort_armed || c->unwinding) {
		char msg[512];

		va_start(ap, fmt);
		vsnprintf(msg, sizeof(msg), fmt, ap);
		va_end(ap);
		fprintf(stderr,
			"keel: panic outside a task step at %s:%d: %s\n", file,
			line, msg);
		abort();
	}
	va_start(ap, fmt);
	vsnprintf(c->panic_msg, sizeof(c->panic_msg), fmt, ap);
	va_end(ap);
	c->panic.message = c->panic_msg;
	c->panic.file = file;
	c->panic.line = line;
	c->panic.signal = 0;
	KEEL__ABORT_JUMP(c->abort_env);
}

void keel__task_aborted(struct keel__core *c, struct keel_task *t)
{
	struct keel__task_ext *x = keel__task_ext(t);

	c->aborted++;
	if (c->trace) {
		char site[256];

		snprintf(site, sizeof(site), "%s:%d", c->panic.file,
			 c->panic.line);
		keel__trace_emit(c, KEEL_EV_ABORT, 0, t->id,
				 keel__trace_str_once(c, c->panic.message),
				 keel__trace_str_once(c, site));
		/* The panic happened inside the step: the step ends here. */
		keel__trace_emit(c, KEEL_EV_STEP_END, 0, t->id, 3, 0);
	}
	if (x) {
		keel__abort_clear(&x->abort);
		x->abort = c->panic;
		x->abort.message =
		    strdup(c->panic.message ? c->panic.message : "");
	}
	/* The cleanups run now, seeing the exit status in keel_res(); a
	 * panic inside one is fatal. */
	t->res = KEEL_ABORTED;
	c->unwinding = t;
	keel__task_run_defers(t);
	c->unwinding = NULL;
	keel_task_exit(t, KEEL_ABORTED);
}
