/* SPDX-License-Identifier: MIT */
/*
 * program.h: what the API fuzz targets (fuzz_mailbox.c, fuzz_sync.c)
 * share: the input read as a little program (bytes, past the end zeros),
 * the one keel loop every input runs on, and a failure that names the
 * broken promise.
 *
 * The loop is made once and reused: creating a ring costs far more than
 * an input. Each input leaves it as it found it (no task, no timer); the
 * targets check that. The loop is stepped with a zero timeout, so nothing
 * ever sleeps: a deadline is either already past (it fires at the next
 * turn) or never.
 */
#ifndef KEEL_FUZZ_PROGRAM_H
#define KEEL_FUZZ_PROGRAM_H

#include <errno.h>
#include <keel.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct program {
	const uint8_t *p;
	size_t n;
};

/* The next byte; zeros once the input is used up. */
static inline uint8_t next_byte(struct program *pr)
{
	if (!pr->n)
		return 0;
	pr->n--;
	return *pr->p++;
}

/* A broken promise of the API: say which, and crash (libFuzzer keeps the
 * input). */
static void __attribute__((noreturn, format(printf, 1, 2)))
violation(const char *fmt, ...)
{
	va_list ap;

	fputs("fuzz: broken promise: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	abort();
}

/* Errors are negative errnos: a result must be one the caller was told. */
static inline void expect_res(const char *what, int res, const int *allowed,
			      size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (res == allowed[i])
			return;
	violation("%s returned %d (%s), not a documented result", what, res,
		  keel_strerror(res));
}

#define EXPECT_RES(what, res, ...)                                             \
	do {                                                                   \
		const int allowed_[] = {__VA_ARGS__};                          \
		expect_res((what), (res), allowed_,                            \
			   sizeof(allowed_) / sizeof(allowed_[0]));            \
	} while (0)

/* The loop, made on first use; no stall reports (they would be timing). */
static inline struct keel_loop *fuzz_loop(void)
{
	static struct keel_loop *loop;

	if (!loop) {
		int err = keel_loop_create(&loop, NULL);

		if (err) {
			fprintf(stderr, "fuzz: no keel loop: %s\n",
				keel_loop_explain(err));
			exit(1);
		}
		keel_loop_set_stall(loop, 0, NULL, NULL);
	}
	return loop;
}

/* `turns` loop turns, never waiting. */
static inline void run_turns(struct keel_loop *loop, int turns)
{
	for (int i = 0; i < turns; i++)
		if (keel_loop_step(loop, 0) < 0)
			violation("keel_loop_step failed");
}

/* The loop must be back where the input found it. */
static inline void expect_clean_loop(struct keel_loop *loop)
{
	struct keel_loop_stats st;

	keel_loop_stats(loop, &st);
	if (st.tasks_live || st.zombies)
		violation("%llu tasks (%llu zombies) outlive the input",
			  (unsigned long long)st.tasks_live,
			  (unsigned long long)st.zombies);
	if (st.timers_armed)
		violation("%llu timers still armed after the input",
			  (unsigned long long)st.timers_armed);
}

#endif
