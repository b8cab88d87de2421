/* SPDX-License-Identifier: MIT */
/*
 * test_epoll.c: the epoll backend's contract (io/epoll.c): SQEs written
 * into a loop's ring and CQEs read back, below the ledger, each case run
 * on io_uring and on epoll with the same expected CQEs (so the two
 * backends agree); and the fallback from a refused io_uring to epoll
 * (KEEL_BACKEND=auto), with its one line. Loopback and socketpairs only.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <keel.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helpers/deny_syscall.h"
#include "helpers/keel_test.h"
#include "loop.h"

#define MAX_CQES 16

static const unsigned backends[] = {KEEL_BACKEND_IO_URING, KEEL_BACKEND_EPOLL};
static const char *const names[] = {"io_uring", "epoll", "epoll"};

struct t {
	struct keel_loop *loop;
	struct keel__io *io;
	const char *name;
	struct io_uring_cqe cqes[MAX_CQES];
	int n;
};

static void t_open(struct t *t, unsigned backend)
{
	struct keel_loop_opts o = {.backend = backend};

	memset(t, 0, sizeof(*t));
	int err = keel_loop_create(&t->loop, &o);

	cr_assert_eq(err, 0, "%s: %s", names[backend - 1],
		     keel_loop_explain(err));
	t->io = &t->loop->io;
	t->name = names[backend - 1];
	cr_assert_eq(t->io->backend == NULL, backend == KEEL_BACKEND_IO_URING);
}

static struct io_uring_sqe *t_sqe(struct t *t, uint64_t ud)
{
	struct io_uring_sqe *sqe = keel__io_sqe(t->io);

	cr_assert_not_null(sqe);
	io_uring_sqe_set_data64(sqe, ud);
	return sqe;
}

/* Submit, and collect CQEs until `want` in all or `ms` have passed. */
static void t_reap(struct t *t, int want, int ms)
{
	uint64_t until = kt_now_ns() + KT_MS(ms);

	do {
		struct io_uring_cqe *cqe;

		keel__io_enter(t->io, 1, KT_MS(5));
		while (t->n < MAX_CQES &&
		       io_uring_peek_cqe(&t->io->ring, &cqe) == 0) {
			t->cqes[t->n++] = *cqe;
			io_uring_cqe_seen(&t->io->ring, cqe);
		}
	} while (t->n < want && kt_now_ns() < until);
}

/* The CQE for `ud` (the `nth` one of it), or fail. */
static struct io_uring_cqe *t_cqe(struct t *t, uint64_t ud, int nth)
{
	for (int i = 0; i < t->n; i++)
		if (t->cqes[i].user_data == ud && nth-- == 0)
			return &t->cqes[i];
	cr_assert_fail("%s: no CQE %d for %llu (%d CQEs)", t->name, nth,
		       (unsigned long long)ud, t->n);
	return NULL;
}

static void t_close(struct t *t)
{
	keel_loop_destroy(t->loop);
}

static void pair(int fds[2])
{
	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds),
		     0);
}

#define EACH_BACKEND(t)                                                        \
	for (size_t b_ = 0; b_ < 2 && (t_open(&(t), backends[b_]), 1);         \
	     b_++, t_close(&(t)))

Test(epoll, recv_parks_until_data, .timeout = 20)
{
	struct t t;
	char buf[16];

	EACH_BACKEND(t)
	{
		int fds[2];

		pair(fds);
		io_uring_prep_recv(t_sqe(&t, 1), fds[0], buf, sizeof(buf), 0);
		t_reap(&t, 1, 30);
		cr_assert_eq(t.n, 0, "%s: recv completed with no data", t.name);
		cr_assert_eq(write(fds[1], "hello", 5), 5);
		t_reap(&t, 1, 5000);
		cr_assert_eq(t_cqe(&t, 1, 0)->res, 5, "%s", t.name);
		cr_assert_eq(t_cqe(&t, 1, 0)->flags, 0, "%s", t.name);
		cr_assert_eq(memcmp(buf, "hello", 5), 0);
		close(fds[0]);
		close(fds[1]);
	}
}

Test(epoll, linked_timeout_cancels_a_parked_recv, .timeout = 20)
{
	struct t t;
	char buf[16];
	struct __kernel_timespec ts = {.tv_nsec = 20 * 1000 * 1000};

	EACH_BACKEND(t)
	{
		int fds[2];
		struct io_uring_sqe *sqe;

		pair(fds);
		sqe = t_sqe(&t, 1);
		io_uring_prep_recv(sqe, fds[0], buf, sizeof(buf), 0);
		sqe->flags |= IOSQE_IO_LINK;
		io_uring_prep_link_timeout(t_sqe(&t, 2), &ts, 0);
		t_reap(&t, 2, 5000);
		cr_assert_eq(t.n, 2, "%s", t.name);
		cr_assert_eq(t_cqe(&t, 1, 0)->res, -ECANCELED, "%s", t.name);
		cr_assert_eq(t_cqe(&t, 2, 0)->res, -ETIME, "%s", t.name);
		close(fds[0]);
		close(fds[1]);
	}
}

Test(epoll, a_failed_link_cancels_the_rest_of_its_chain, .timeout = 20)
{
	struct t t;
	char buf[16];

	EACH_BACKEND(t)
	{
		struct io_uring_sqe *sqe;
		int fds[2];

		pair(fds);
		/* A half-closed socket: send fails with EPIPE. */
		cr_assert_eq(shutdown(fds[0], SHUT_WR), 0);
		sqe = t_sqe(&t, 1);
		io_uring_prep_send(sqe, fds[0], "x", 1, MSG_NOSIGNAL);
		sqe->flags |= IOSQE_IO_LINK;
		sqe = t_sqe(&t, 2);
		io_uring_prep_recv(sqe, fds[0], buf, sizeof(buf), 0);
		sqe->flags |= IOSQE_IO_LINK;
		io_uring_prep_nop(t_sqe(&t, 3));
		t_reap(&t, 3, 5000);
		cr_assert_eq(t_cqe(&t, 1, 0)->res, -EPIPE, "%s", t.name);
		cr_assert_eq(t_cqe(&t, 2, 0)->res, -ECANCELED, "%s", t.name);
		cr_assert_eq(t_cqe(&t, 3, 0)->res, -ECANCELED, "%s", t.name);
		close(fds[0]);
		close(fds[1]);
	}
}

Test(epoll, cancel_by_user_data_and_by_fd, .timeout = 20)
{
	struct t t;
	char buf[3][16];

	EACH_BACKEND(t)
	{
		int fds[2];

		pair(fds);
		io_uring_prep_recv(t_sqe(&t, 1), fds[0], buf[0], 16, 0);
		io_uring_prep_recv(t_sqe(&t, 2), fds[0], buf[1], 16, 0);
		io_uring_prep_recv(t_sqe(&t, 3), fds[0], buf[2], 16, 0);
		t_reap(&t, 1, 20);
		cr_assert_eq(t.n, 0, "%s", t.name);
		io_uring_prep_cancel64(t_sqe(&t, 10), 1, 0);
		t_reap(&t, 2, 5000);
		cr_assert_eq(t_cqe(&t, 1, 0)->res, -ECANCELED, "%s", t.name);
		cr_assert_eq(t_cqe(&t, 10, 0)->res, 0, "%s", t.name);
		/* Gone now: nothing to cancel. */
		io_uring_prep_cancel64(t_sqe(&t, 11), 1, 0);
		t_reap(&t, 3, 5000);
		cr_assert_eq(t_cqe(&t, 11, 0)->res, -ENOENT, "%s", t.name);
		/* Every op on the descriptor: how many. */
		io_uring_prep_cancel_fd(t_sqe(&t, 12), fds[0],
					IORING_ASYNC_CANCEL_ALL);
		t_reap(&t, 6, 5000);
		cr_assert_eq(t_cqe(&t, 12, 0)->res, 2, "%s", t.name);
		cr_assert_eq(t_cqe(&t, 2, 0)->res, -ECANCELED, "%s", t.name);
		cr_assert_eq(t_cqe(&t, 3, 0)->res, -ECANCELED, "%s", t.name);
		close(fds[0]);
		close(fds[1]);
	}
}

Test(epoll, multishot_recv_runs_out_of_buffers_then_rearms, .timeout = 20)
{
	struct t t;

	EACH_BACKEND(t)
	{
		struct keel_bufring_opts bo = {.count = 2, .size = 16};
		struct keel_bufring *ring;
		struct io_uring_sqe *sqe;
		int fds[2];

		pair(fds);
		cr_assert_eq(keel_bufring_create(t.loop, &bo, &ring), 0);
		sqe = t_sqe(&t, 1);
		io_uring_prep_recv_multishot(sqe, fds[0], NULL, 0, 0);
		sqe->flags |= IOSQE_BUFFER_SELECT;
		sqe->buf_group = keel__bufring_gid(ring);
		t_reap(&t, 1, 20);
		cr_assert_eq(t.n, 0, "%s", t.name);
		for (int i = 0; i < 2; i++) {
			cr_assert_eq(write(fds[1], "0123456789abcdef", 16), 16);
			t_reap(&t, i + 1, 5000);
			struct io_uring_cqe *c = t_cqe(&t, 1, i);

			cr_assert_eq(c->res, 16, "%s", t.name);
			cr_assert(c->flags & IORING_CQE_F_BUFFER, "%s", t.name);
			cr_assert(c->flags & IORING_CQE_F_MORE, "%s", t.name);
		}
		/* Both buffers used: the next data finds none. */
		t_reap(&t, 3, 30);
		cr_assert_eq(t.n, 2, "%s: -ENOBUFS before data came", t.name);
		cr_assert_eq(write(fds[1], "x", 1), 1);
		t_reap(&t, 3, 5000);
		cr_assert_eq(t_cqe(&t, 1, 2)->res, -ENOBUFS, "%s", t.name);
		cr_assert_eq(t_cqe(&t, 1, 2)->flags & IORING_CQE_F_MORE, 0,
			     "%s", t.name);
		close(fds[0]);
		close(fds[1]);
	}
}

Test(epoll, close_while_parked_keeps_the_socket_for_the_op, .timeout = 20)
{
	struct t t;
	char buf[16];

	EACH_BACKEND(t)
	{
		int fds[2];

		pair(fds);
		io_uring_prep_recv(t_sqe(&t, 1), fds[0], buf, sizeof(buf), 0);
		io_uring_prep_close(t_sqe(&t, 2), fds[0]);
		t_reap(&t, 1, 5000);
		cr_assert_eq(t_cqe(&t, 2, 0)->res, 0, "%s", t.name);
		cr_assert_eq(write(fds[1], "ab", 2), 2);
		t_reap(&t, 2, 5000);
		cr_assert_eq(t_cqe(&t, 1, 0)->res, 2, "%s", t.name);
		/* The op done, the socket is gone: the peer sees the end. */
		t_reap(&t, 3, 20);
		cr_assert_eq(read(fds[1], buf, sizeof(buf)), 0, "%s", t.name);
		close(fds[1]);
	}
}

Test(epoll, multishot_accept_then_cancel, .timeout = 20)
{
	struct t t;

	EACH_BACKEND(t)
	{
		uint16_t port;
		int lfd = kt_listen(&port);
		struct sockaddr_storage ss;
		socklen_t len;
		int c[2];

		kt_loopback_addr(port, &ss, &len);
		io_uring_prep_multishot_accept(t_sqe(&t, 1), lfd, NULL, NULL,
					       SOCK_CLOEXEC);
		t_reap(&t, 1, 20);
		cr_assert_eq(t.n, 0, "%s", t.name);
		for (int i = 0; i < 2; i++) {
			c[i] = socket(AF_INET, SOCK_STREAM, 0);
			cr_assert_eq(connect(c[i], (struct sockaddr *)&ss, len),
				     0);
			t_reap(&t, i + 1, 5000);
			struct io_uring_cqe *q = t_cqe(&t, 1, i);

			cr_assert_geq(q->res, 0, "%s: %d", t.name, q->res);
			cr_assert(q->flags & IORING_CQE_F_MORE, "%s", t.name);
			close(q->res);
		}
		io_uring_prep_cancel64(t_sqe(&t, 2), 1, 0);
		t_reap(&t, 4, 5000);
		cr_assert_eq(t_cqe(&t, 2, 0)->res, 0, "%s", t.name);
		cr_assert_eq(t_cqe(&t, 1, 2)->res, -ECANCELED, "%s", t.name);
		cr_assert_eq(t_cqe(&t, 1, 2)->flags & IORING_CQE_F_MORE, 0);
		close(c[0]);
		close(c[1]);
		close(lfd);
	}
}

/* keel_loop_fd() becomes readable when an op can complete. */
Test(epoll, loop_fd_wakes_a_host_for_a_parked_recv, .timeout = 20)
{
	struct t t;
	char buf[16];

	EACH_BACKEND(t)
	{
		int fds[2];
		int lfd = keel_loop_fd(t.loop);

		cr_assert_geq(lfd, 0, "%s", t.name);
		pair(fds);
		io_uring_prep_recv(t_sqe(&t, 1), fds[0], buf, sizeof(buf), 0);
		t_reap(&t, 1, 20);
		struct pollfd p = {lfd, POLLIN, 0};

		cr_assert_eq(write(fds[1], "z", 1), 1);
		cr_assert_eq(poll(&p, 1, 5000), 1, "%s: the host slept on",
			     t.name);
		t_reap(&t, 1, 5000);
		cr_assert_eq(t_cqe(&t, 1, 0)->res, 1, "%s", t.name);
		close(fds[0]);
		close(fds[1]);
	}
}

/* ---- the fallback ---------------------------------------------------- */

#ifdef TEST_AUDIT_ARCH

/* Two loops under the filter; what they say goes to the pipe `out`. */
/*
 * A peer that is gone: io_uring's sends add MSG_NOSIGNAL and its splices
 * and tees run on kernel workers, so neither raises SIGPIPE; the epoll
 * backend must not either (a splicing proxy died of it when a backend
 * reset mid-stream). SIGPIPE is at its default here: a signal kills the
 * test.
 */
Test(epoll, a_peer_gone_is_epipe_not_sigpipe, .timeout = 20)
{
	struct t t;
	sigset_t pending;

	signal(SIGPIPE, SIG_DFL);
	EACH_BACKEND(t)
	{
		int fds[2], p[2];

		/* send without MSG_NOSIGNAL, and sendmsg */
		pair(fds);
		close(fds[1]);
		io_uring_prep_send(t_sqe(&t, 1), fds[0], "x", 1, 0);
		t_reap(&t, 1, 5000);
		cr_assert_eq(t_cqe(&t, 1, 0)->res, -EPIPE, "%s: send: %d",
			     t.name, t_cqe(&t, 1, 0)->res);
		close(fds[0]);

		/* splice from a pipe into a socket whose peer is gone */
		pair(fds);
		cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
		cr_assert_eq(write(p[1], "abc", 3), 3);
		close(fds[1]);
		io_uring_prep_splice(t_sqe(&t, 2), p[0], -1, fds[0], -1, 3, 0);
		t_reap(&t, 2, 5000);
		cr_assert_eq(t_cqe(&t, 2, 0)->res, -EPIPE, "%s: splice: %d",
			     t.name, t_cqe(&t, 2, 0)->res);
		close(fds[0]);

		/* splice from a socket into a pipe whose reader is gone */
		pair(fds);
		cr_assert_eq(write(fds[1], "abc", 3), 3);
		close(p[0]);
		io_uring_prep_splice(t_sqe(&t, 3), fds[0], -1, p[1], -1, 3, 0);
		t_reap(&t, 3, 5000);
		cr_assert_eq(t_cqe(&t, 3, 0)->res, -EPIPE, "%s: splice: %d",
			     t.name, t_cqe(&t, 3, 0)->res);
		close(p[1]);
		close(fds[0]);
		close(fds[1]);
		cr_assert_eq(sigpending(&pending), 0);
		cr_assert_not(sigismember(&pending, SIGPIPE),
			      "%s: a SIGPIPE is left pending", t.name);
		/* The enter gave the thread its mask back. */
		cr_assert_eq(pthread_sigmask(SIG_BLOCK, NULL, &pending), 0);
		cr_assert_not(sigismember(&pending, SIGPIPE),
			      "%s: SIGPIPE is left blocked", t.name);
	}
}

static void fallback_child(int out)
{
	struct keel_loop *a = NULL, *b = NULL;
	char line[512];

	dup2(out, 2);
	/* The fallback is auto's: a KEEL_BACKEND=epoll pass would skip it. */
	unsetenv("KEEL_BACKEND");
	if (deny_io_uring_setup() != 0)
		_exit(10);
	if (keel_loop_create(&a, NULL) || keel_loop_create(&b, NULL))
		_exit(11);
	keel_loop_describe(a, line, sizeof(line));
	dprintf(2, "describe: %s\n", line);
	keel_loop_destroy(a);
	keel_loop_destroy(b);
	_exit(0);
}
#endif

Test(epoll, auto_falls_back_to_epoll_with_one_line, .timeout = 20)
{
#ifdef TEST_AUDIT_ARCH
	int p[2], status;
	char buf[2048];
	size_t n = 0;
	ssize_t r;

	cr_assert_eq(pipe(p), 0);
	pid_t pid = fork();

	cr_assert_geq(pid, 0);
	if (pid == 0) {
		close(p[0]);
		fallback_child(p[1]);
	}
	close(p[1]);
	while (n < sizeof(buf) - 1 &&
	       (r = read(p[0], buf + n, sizeof(buf) - 1 - n)) > 0)
		n += (size_t)r;
	buf[n] = '\0';
	close(p[0]);
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0,
		  "child: status %#x; said: %s", status, buf);
	/* One line for two loops, and the reason in the description. */
	const char *line = "keel: io_uring refused: io_uring_setup: "
			   "Operation not permitted: running on the epoll "
			   "backend";
	char *first = strstr(buf, line);

	cr_assert_not_null(first, "said: %s", buf);
	cr_assert_null(strstr(first + 1, line), "said it twice: %s", buf);
	cr_assert_not_null(strstr(buf, "describe: backend: epoll (io_uring "
				       "refused: io_uring_setup: Operation "
				       "not permitted)"),
			   "said: %s", buf);
#else
	cr_skip_test("no seccomp audit arch known for this machine");
#endif
}

Test(epoll, a_bad_backend_is_einval, .timeout = 10)
{
	struct keel_loop_opts o = {.backend = 7};
	struct keel_loop *loop = NULL;

	cr_assert_eq(keel_loop_create(&loop, &o), -EINVAL);
}

/* ---- a TCP multishot recv parks on a short read (epoll.c, drained()) ---- */

static void tcp_pair(int fds[2])
{
	struct sockaddr_in a = {.sin_family = AF_INET,
				.sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t al = sizeof(a);
	int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	cr_assert_geq(l, 0);
	cr_assert_eq(bind(l, (struct sockaddr *)&a, sizeof(a)), 0);
	cr_assert_eq(listen(l, 1), 0);
	cr_assert_eq(getsockname(l, (struct sockaddr *)&a, &al), 0);
	fds[1] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	cr_assert_geq(fds[1], 0);
	cr_assert_eq(connect(fds[1], (struct sockaddr *)&a, sizeof(a)), 0);
	fds[0] = accept4(l, NULL, NULL, SOCK_CLOEXEC);
	cr_assert_geq(fds[0], 0);
	close(l);
}

/*
 * A multishot recv into a buffer ring, parked on an empty TCP socket; then
 * `send_it` writes to the other end. Its CQEs must bring `want` bytes and
 * then, if `fin`, the end (res 0), each within a bound that only a hang
 * exceeds.
 */
static void tcp_stream(void (*send_it)(int fd), int want, bool fin)
{
	struct t t;

	EACH_BACKEND(t)
	{
		struct keel_bufring_opts bo = {.count = 8, .size = 64};
		struct keel_bufring *ring;
		struct io_uring_sqe *sqe;
		int fds[2], n = 0, end = 1;

		tcp_pair(fds);
		cr_assert_eq(keel_bufring_create(t.loop, &bo, &ring), 0);
		sqe = t_sqe(&t, 1);
		io_uring_prep_recv_multishot(sqe, fds[0], NULL, 0, 0);
		sqe->flags |= IOSQE_BUFFER_SELECT;
		sqe->buf_group = keel__bufring_gid(ring);
		t_reap(&t, 1, 20);
		cr_assert_eq(t.n, 0, "%s", t.name);
		send_it(fds[1]);
		for (int i = 0; end > 0 && (fin || n < want); i++) {
			t_reap(&t, i + 1, 5000);
			cr_assert_gt(t.n, i, "%s: no CQE after %d bytes",
				     t.name, n);
			end = t.cqes[i].res;
			if (end > 0)
				n += end;
		}
		cr_assert_eq(n, want, "%s", t.name);
		if (fin)
			cr_assert_eq(end, 0, "%s: %d", t.name, end);
		close(fds[0]);
		close(fds[1]);
	}
}

static void data_then_fin(int fd)
{
	cr_assert_eq(send(fd, "abc", 3, 0), 3);
	cr_assert_eq(shutdown(fd, SHUT_WR), 0);
}

/* The read that returns "abc" stops short at the FIN: the edge that
 * brought both says EPOLLRDHUP, and the op must read on for the end. */
Test(epoll, tcp_short_read_before_a_fin_still_sees_the_end, .timeout = 30)
{
	tcp_stream(data_then_fin, 3, true);
}

static void data_around_urgent(int fd)
{
	cr_assert_eq(send(fd, "ab", 2, 0), 2);
	cr_assert_eq(send(fd, "U", 1, MSG_OOB), 1);
	cr_assert_eq(send(fd, "cd", 2, 0), 2);
}

/* A TCP read stops short at the urgent mark with data behind it (the
 * urgent byte itself is out of band): EPOLLPRI says so. */
Test(epoll, tcp_short_read_at_the_urgent_mark_reads_on, .timeout = 30)
{
	tcp_stream(data_around_urgent, 4, false);
}

/* ---- kernels before 5.11 have no epoll_pwait2 (epoll.c, poll_events) ---- */

#if defined(TEST_AUDIT_ARCH) && defined(__NR_epoll_pwait2)
static int deny_epoll_pwait2(void)
{
	return deny_syscall(__NR_epoll_pwait2, ENOSYS);
}

/* A parked recv and a timeout, on epoll_wait; exit status: what failed. */
static void no_pwait2_child(void)
{
	struct keel_loop_opts o = {.backend = KEEL_BACKEND_EPOLL};
	struct keel_loop *loop;
	struct io_uring_cqe *cqe;
	struct __kernel_timespec ts = {.tv_nsec = 20 * 1000000};
	char buf[8];
	int fds[2], got = 0;

	if (deny_epoll_pwait2() != 0)
		_exit(10);
	if (keel_loop_create(&loop, &o) ||
	    socketpair(AF_UNIX, SOCK_STREAM, 0, fds))
		_exit(11);
	struct keel__io *io = &loop->io;
	struct io_uring_sqe *sqe = keel__io_sqe(io);

	io_uring_prep_recv(sqe, fds[0], buf, sizeof(buf), 0);
	io_uring_sqe_set_data64(sqe, 1);
	sqe = keel__io_sqe(io);
	io_uring_prep_timeout(sqe, &ts, 0, 0);
	io_uring_sqe_set_data64(sqe, 2);
	uint64_t t0 = kt_now_ns();

	/* The timeout first (the recv has no data yet), then the recv. */
	while (got < 2 && kt_now_ns() - t0 < KT_MS(5000)) {
		keel__io_enter(io, 1, KT_MS(1000));
		while (io_uring_peek_cqe(&io->ring, &cqe) == 0) {
			if (cqe->user_data != (got ? 1u : 2u))
				_exit(12);
			if (cqe->res != (got ? 2 : -ETIME))
				_exit(13);
			if (!got++ && (kt_now_ns() - t0 < KT_MS(20) ||
				       write(fds[1], "hi", 2) != 2))
				_exit(14);
			io_uring_cqe_seen(&io->ring, cqe);
		}
	}
	keel_loop_destroy(loop);
	_exit(got == 2 ? 0 : 15);
}
#endif

Test(epoll, waits_with_epoll_wait_where_epoll_pwait2_is_enosys, .timeout = 20)
{
#if defined(TEST_AUDIT_ARCH) && defined(__NR_epoll_pwait2)
	int status;
	pid_t pid = fork();

	cr_assert_geq(pid, 0);
	if (pid == 0)
		no_pwait2_child();
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0,
		  "child: status %#x", status);
#else
	cr_skip_test("no seccomp audit arch or epoll_pwait2 here");
#endif
}
