/* SPDX-License-Identifier: MIT */
/*
 * select.c: which backend a loop runs on: keel_loop_opts.backend, else
 * KEEL_BACKEND (auto, io_uring or epoll; read once per process), and the
 * one line that says a loop fell back from io_uring to epoll.
 *
 * The line is printed, once per process, although library code does not
 * print otherwise: a service that silently runs on another backend than
 * the one its operator expects is worse than a line on stderr, and
 * keel_loop_describe() says the same for those who read it.
 */
#include "epoll.h"
#include "io.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static pthread_once_t env_once = PTHREAD_ONCE_INIT;
static int env_mode; /* KEEL_BACKEND_*, or -EINVAL */

static void read_env(void)
{
	const char *v = getenv("KEEL_BACKEND");

	if (!v || !*v || !strcmp(v, "auto"))
		env_mode = KEEL_BACKEND_AUTO;
	else if (!strcmp(v, "io_uring"))
		env_mode = KEEL_BACKEND_IO_URING;
	else if (!strcmp(v, "epoll"))
		env_mode = KEEL_BACKEND_EPOLL;
	else
		env_mode = -EINVAL;
}

int keel__backend_mode(const struct keel_loop_opts *opts)
{
	if (opts && opts->backend)
		return opts->backend <= KEEL_BACKEND_EPOLL ? (int)opts->backend
							   : -EINVAL;
	pthread_once(&env_once, read_env);
	return env_mode;
}

static int noticed;

void keel__backend_notice(const char *why)
{
	if (__atomic_exchange_n(&noticed, 1, __ATOMIC_RELAXED))
		return;
	fprintf(stderr,
		"keel: %s: running on the epoll backend (KEEL_BACKEND=epoll "
		"chooses it, KEEL_BACKEND=io_uring refuses to)\n",
		why);
}
