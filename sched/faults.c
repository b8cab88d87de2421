/* SPDX-License-Identifier: MIT */
/*
 * faults.c: opt-in handling of hardware faults (SIGSEGV, SIGBUS, SIGFPE)
 * raised inside a task step.
 *
 * Off by default (KEEL_FAULTS_DIE): keel installs no handler and a fault
 * kills the process as usual. When a loop opts in, keel installs one
 * process-wide handler (SA_ONSTACK, so a stack overflow can still be
 * handled, and SA_NODEFER, so jumping out of it leaves the signal mask as
 * it was) and gives the loop's thread an alternate signal stack. The
 * handler acts only when the faulting thread is running a task step of a
 * loop that opted in; any other fault is passed on to the previous
 * disposition, for that fault alone: keel's handler stays installed for
 * the next fault, which may be one of a task it can recover.
 *
 * KEEL_FAULTS_RECOVER jumps back to the loop's abort frame: the task is
 * aborted like a panic, with the signal and its last await site recorded.
 * This is a last resort, documented as such in keel/task.h.
 */
#include "loop.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const int fault_signals[] = {SIGSEGV, SIGBUS, SIGFPE};
#define NSIGNALS (sizeof(fault_signals) / sizeof(fault_signals[0]))
static struct sigaction previous[NSIGNALS];
static pthread_once_t install_once = PTHREAD_ONCE_INIT;
static int install_error;

/* Async-signal-safe formatting helpers (no stdio in a signal handler). */
static size_t put_str(char *buf, size_t at, size_t cap, const char *s)
{
	while (s && *s && at + 1 < cap)
		buf[at++] = *s++;
	buf[at] = '\0';
	return at;
}

static size_t put_uint(char *buf, size_t at, size_t cap, unsigned long v,
		       unsigned base)
{
	char digits[32];
	int n = 0;

	do {
		digits[n++] = "0123456789abcdef"[v % base];
		v /= base;
	} while (v && n < (int)sizeof(digits));
	while (n && at + 1 < cap)
		buf[at++] = digits[--n];
	buf[at] = '\0';
	return at;
}

static const char *signal_name(int sig)
{
	return sig == SIGSEGV ? "SIGSEGV" : sig == SIGBUS ? "SIGBUS" : "SIGFPE";
}

/* "SIGSEGV at 0x... in task NAME, resumed from FILE:LINE" */
static size_t describe(char *buf, size_t cap, int sig, const siginfo_t *si,
		       const struct keel_task *t)
{
	size_t n = put_str(buf, 0, cap, signal_name(sig));

	n = put_str(buf, n, cap, " at 0x");
	n = put_uint(buf, n, cap, (unsigned long)si->si_addr, 16);
	n = put_str(buf, n, cap, " in task ");
	n = put_str(buf, n, cap, t->type->name);
	if (t->at) {
		n = put_str(buf, n, cap, ", resumed from ");
		n = put_str(buf, n, cap, t->at->file);
		n = put_str(buf, n, cap, ":");
		n = put_uint(buf, n, cap, (unsigned long)t->at->line, 10);
	}
	return n;
}

static int signal_slot(int sig)
{
	for (size_t i = 0; i < NSIGNALS; i++)
		if (fault_signals[i] == sig)
			return (int)i;
	return 0;
}

/*
 * A fault keel does not recover: what the previous disposition would have
 * done with it. A handler is called as the kernel would have (without its
 * sa_mask and flags, which only the kernel applies). The default action
 * (and an ignored fault, which the kernel would not ignore either) ends
 * the process, so the default disposition can be put back for good: a
 * fault re-runs its instruction when the handler returns, a signal someone
 * sent is raised again (SA_NODEFER: delivered at once).
 */
static void pass_on(int sig, siginfo_t *si, void *uctx)
{
	const struct sigaction *prev = &previous[signal_slot(sig)];
	bool sent = si->si_code <= 0;

	if (prev->sa_handler != SIG_DFL && prev->sa_handler != SIG_IGN) {
		if (prev->sa_flags & SA_SIGINFO)
			prev->sa_sigaction(sig, si, uctx);
		else
			prev->sa_handler(sig);
		return;
	}
	if (prev->sa_handler == SIG_IGN && sent)
		return;
	struct sigaction dfl;

	memset(&dfl, 0, sizeof(dfl));
	dfl.sa_handler = SIG_DFL;
	sigemptyset(&dfl.sa_mask);
	sigaction(sig, &dfl, NULL);
	if (sent)
		raise(sig);
}

static void fault_handler(int sig, siginfo_t *si, void *uctx)
{
	struct keel__core *c = keel__current_core;
	struct keel_task *t = c ? c->current : NULL;

	if (t && c->abort_armed && !c->unwinding &&
	    c->fault_mode != KEEL_FAULTS_DIE) {
		if (c->fault_mode == KEEL_FAULTS_RECOVER) {
			c->fault_recoveries++;
			describe(c->panic_msg, sizeof(c->panic_msg), sig, si,
				 t);
			c->panic.message = c->panic_msg;
			c->panic.file = t->at ? t->at->file : "(first step)";
			c->panic.line = t->at ? t->at->line : 0;
			c->panic.signal = sig;
			KEEL__ABORT_JUMP(c->abort_env);
		}
		char msg[400];
		size_t n = put_str(msg, 0, sizeof(msg), "keel: ");

		n = describe(msg + n, sizeof(msg) - n, sig, si, t) + n;
		n = put_str(msg, n, sizeof(msg), "\n");
		if (write(STDERR_FILENO, msg, n) < 0) {
			/* nothing more can be done about it here */
		}
	}
	/* Not ours to recover. */
	pass_on(sig, si, uctx);
}

static void install_handlers(void)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = fault_handler;
	sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
	sigemptyset(&sa.sa_mask);
	for (size_t i = 0; i < NSIGNALS; i++)
		if (sigaction(fault_signals[i], &sa, &previous[i]))
			install_error = -errno;
}

/* An alternate stack for this thread, unless it has one already. */
static int ensure_altstack(struct keel_loop *loop)
{
	stack_t cur;

	if (sigaltstack(NULL, &cur))
		return -errno;
	if (!(cur.ss_flags & SS_DISABLE))
		return 0;
	size_t size = 64 * 1024;
	stack_t ss = {.ss_sp = malloc(size), .ss_size = size, .ss_flags = 0};

	if (!ss.ss_sp)
		return -ENOMEM;
	if (sigaltstack(&ss, NULL)) {
		free(ss.ss_sp);
		return -errno;
	}
	loop->altstack = ss.ss_sp;
	return 0;
}

int keel_loop_set_faults(struct keel_loop *loop, enum keel_fault_mode mode)
{
	if (mode != KEEL_FAULTS_DIE && mode != KEEL_FAULTS_REPORT &&
	    mode != KEEL_FAULTS_RECOVER)
		return -EINVAL;
	if (mode != KEEL_FAULTS_DIE) {
		pthread_once(&install_once, install_handlers);
		if (install_error)
			return install_error;
		int err = ensure_altstack(loop);

		if (err)
			return err;
	}
	loop->io.core.fault_mode = mode;
	return 0;
}

void keel__faults_fini(struct keel_loop *loop)
{
	if (!loop->altstack)
		return;
	stack_t off = {.ss_flags = SS_DISABLE};

	sigaltstack(&off, NULL);
	free(loop->altstack);
	loop->altstack = NULL;
}
