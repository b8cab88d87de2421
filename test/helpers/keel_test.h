/* SPDX-License-Identifier: MIT */
/*
 * keel_test.h: helpers shared by every test binary: loop set-up and
 * tear-down with assertions, an event log to check orderings, the
 * monotonic clock, loopback sockets and temporary directories.
 *
 * Everything here asserts through Criterion, so a helper that fails ends
 * the calling test with a message instead of returning an error. Checks
 * made on other threads, the clock and atomic flags are in check.h (no
 * Criterion there: the mt_* programs use it too).
 */
#ifndef KEEL_TEST_H
#define KEEL_TEST_H

#include <keel.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "helpers/check.h"

/* Create a loop (opts may be NULL); the test fails if that fails. */
struct keel_loop *kt_loop_new(const struct keel_loop_opts *opts);

/* keel_loop_run(), asserting that it returns 0. */
void kt_loop_run(struct keel_loop *loop);

/* A snapshot of the loop's counters. */
struct keel_loop_stats kt_stats(const struct keel_loop *loop);

/* Spawn a task, asserting that keel_spawn() gave a frame. */
void *kt_spawn(struct keel_loop *loop, const struct keel_task_type *type,
	       unsigned flags);

/* Assert that no check failed (check.h), reporting the first that did. */
void kt_expect_no_failures(void);

/*
 * An append-only log of integers: tasks and callbacks push events, the
 * test compares the sequence with what it expects.
 */
#define KT_LOG_MAX 4096

struct kt_log {
	int n;
	int v[KT_LOG_MAX];
};

void kt_log_push(struct kt_log *log, int v);

/* Assert that the log holds exactly `n` values equal to `want`. */
void kt_log_expect(const struct kt_log *log, const int *want, int n);

/* The position of the first `v` in the log, or -1. */
int kt_log_find(const struct kt_log *log, int v);

/* A listening TCP socket on 127.0.0.1 and an ephemeral port. */
int kt_listen(uint16_t *port);

/* 127.0.0.1:port as a sockaddr. */
void kt_loopback_addr(uint16_t port, struct sockaddr_storage *ss,
		      socklen_t *len);

/* A connected pair of TCP sockets over 127.0.0.1 (blocking set-up). */
void kt_tcp_pair(int fds[2]);

/* A fresh directory under $TMPDIR (or the system's); path gets its name. */
void kt_tmpdir_make(char *path, size_t len);

/* Remove a directory tree made by kt_tmpdir_make(). */
void kt_tmpdir_remove(const char *path);

/*
 * Fill a buffer with a pattern that depends on the byte offset and a seed;
 * the mismatch check returns the first differing index, or SIZE_MAX.
 */
void kt_pattern_fill(void *buf, size_t len, size_t off, unsigned seed);
size_t kt_pattern_mismatch(const void *buf, size_t len, size_t off,
			   unsigned seed);

#endif
