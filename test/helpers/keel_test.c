/* SPDX-License-Identifier: MIT */
/*
 * keel_test.c: helpers shared by every test binary (see keel_test.h).
 */
#include "helpers/keel_test.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <ftw.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct keel_loop *kt_loop_new(const struct keel_loop_opts *opts)
{
	struct keel_loop *loop = NULL;
	int err = keel_loop_create(&loop, opts);

	cr_assert_eq(err, 0, "keel_loop_create: %s (%s)", strerror(-err),
		     keel_loop_explain(err));
	cr_assert_not_null(loop);
	return loop;
}

void kt_loop_run(struct keel_loop *loop)
{
	int err = keel_loop_run(loop);

	cr_assert_eq(err, 0, "keel_loop_run: %s", strerror(-err));
}

struct keel_loop_stats kt_stats(const struct keel_loop *loop)
{
	struct keel_loop_stats s;

	memset(&s, 0xff, sizeof(s));
	keel_loop_stats(loop, &s);
	return s;
}

void *kt_spawn(struct keel_loop *loop, const struct keel_task_type *type,
	       unsigned flags)
{
	void *frame = keel_spawn(loop, type, flags);

	cr_assert_not_null(frame, "keel_spawn(%s) failed", type->name);
	return frame;
}

void kt_expect_no_failures(void)
{
	char what[512];

	kt_failures_describe(what, sizeof(what));
	cr_assert_eq(kt_failures(), 0, "%s", what);
}

void kt_log_push(struct kt_log *log, int v)
{
	/* Past the end, count but drop: kt_log_expect() then fails. */
	if (log->n < KT_LOG_MAX)
		log->v[log->n] = v;
	log->n++;
}

void kt_log_expect(const struct kt_log *log, const int *want, int n)
{
	cr_assert_eq(log->n, n, "log has %d entries, expected %d", log->n, n);
	for (int i = 0; i < n; i++)
		cr_assert_eq(log->v[i], want[i], "log[%d] = %d, expected %d", i,
			     log->v[i], want[i]);
}

int kt_log_find(const struct kt_log *log, int v)
{
	for (int i = 0; i < log->n && i < KT_LOG_MAX; i++)
		if (log->v[i] == v)
			return i;
	return -1;
}

void kt_loopback_addr(uint16_t port, struct sockaddr_storage *ss,
		      socklen_t *len)
{
	int err = keel_net_parse_addr("127.0.0.1", port, ss, len);

	cr_assert_eq(err, 0, "keel_net_parse_addr: %s", strerror(-err));
}

int kt_listen(uint16_t *port)
{
	int fd = keel_tcp_listen("127.0.0.1", 0, 64, 0);
	int p;

	cr_assert_geq(fd, 0, "keel_tcp_listen: %s", strerror(-fd));
	p = keel_net_local_port(fd);
	cr_assert_gt(p, 0, "keel_net_local_port: %d", p);
	*port = (uint16_t)p;
	return fd;
}

void kt_tcp_pair(int fds[2])
{
	struct sockaddr_in sin;
	socklen_t len = sizeof(sin);
	int lfd, cfd, afd;

	/* Plain sockets calls: these tests exercise keel on the pair. */
	lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	cr_assert_geq(lfd, 0);
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	cr_assert_eq(bind(lfd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	cr_assert_eq(listen(lfd, 1), 0);
	cr_assert_eq(getsockname(lfd, (struct sockaddr *)&sin, &len), 0);
	cfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	cr_assert_geq(cfd, 0);
	/* A blocking connect to a listening loopback socket completes. */
	cr_assert_eq(connect(cfd, (struct sockaddr *)&sin, sizeof(sin)), 0,
		     "connect: %s", strerror(errno));
	afd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
	cr_assert_geq(afd, 0, "accept4: %s", strerror(errno));
	close(lfd);
	fds[0] = afd;
	fds[1] = cfd;
}

void kt_tmpdir_make(char *path, size_t len)
{
	const char *base = getenv("TMPDIR");
	int n;

	if (!base || !*base)
		base = P_tmpdir;
	n = snprintf(path, len, "%s/keel-test-XXXXXX", base);
	cr_assert(n > 0 && (size_t)n < len, "temporary path too long");
	cr_assert_not_null(mkdtemp(path), "mkdtemp(%s): %s", path,
			   strerror(errno));
}

static int remove_entry(const char *path, const struct stat *sb, int type,
			struct FTW *ftw)
{
	return remove(path);
}

void kt_tmpdir_remove(const char *path)
{
	if (path && *path)
		nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static unsigned char pattern_byte(size_t off, unsigned seed)
{
	uint64_t x = (uint64_t)off * 0x9e3779b97f4a7c15ull + seed;

	x ^= x >> 29;
	return (unsigned char)(x ^ (x >> 8));
}

void kt_pattern_fill(void *buf, size_t len, size_t off, unsigned seed)
{
	unsigned char *p = buf;

	for (size_t i = 0; i < len; i++)
		p[i] = pattern_byte(off + i, seed);
}

size_t kt_pattern_mismatch(const void *buf, size_t len, size_t off,
			   unsigned seed)
{
	const unsigned char *p = buf;

	for (size_t i = 0; i < len; i++)
		if (p[i] != pattern_byte(off + i, seed))
			return i;
	return SIZE_MAX;
}
