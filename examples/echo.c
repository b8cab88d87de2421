/* SPDX-License-Identifier: MIT */
/*
 * echo: a TCP echo server on keel, the example to copy.
 *
 *	echo [ADDR] PORT                 ADDR defaults to 127.0.0.1
 *	echo --port PORT [--threads N]   the peer benchmark harness's style
 *
 * One acceptor task, one task per connection (recv into a buffer in its
 * frame, send it all back) and one task that waits for SIGINT/SIGTERM on a
 * signalfd. On a signal the server stops accepting, shuts every live
 * connection down so that its task sees end-of-file and exits, and once no
 * task is left keel_loop_run() returns: a clean exit with status 0.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <keel.h>

#define LISTEN_BACKLOG	1024
#define ACCEPT_RETRY_NS (10 * 1000 * 1000) /* out of fds: wait 10 ms */

struct conn;

/* What the tasks share. Only the loop's thread touches it: no locks. */
struct server {
	int listen_fd;
	bool stopping;	      /* a signal came: accept no more */
	struct conn *conns;   /* live connections, to shut down on exit */
	uint64_t connections; /* accepted so far */
	uint64_t bytes;	      /* echoed so far */
	int status;	      /* exit status of the process */
};

struct conn {
	struct keel_task task;
	struct server *srv;
	struct conn *prev, *next; /* on srv->conns while the task lives */
	int fd;
	/* Handed to the kernel by recv and send: it lives in the frame. */
	char buf[16384];
};

struct acceptor {
	struct keel_task task;
	struct server *srv;
};

struct signal_waiter {
	struct keel_task task;
	struct server *srv;
	int fd; /* the signalfd */
	struct signalfd_siginfo info;
};

static int conn_step(struct keel_task *t);
static int acceptor_step(struct keel_task *t);
static int signal_step(struct keel_task *t);

static KEEL_TASK_TYPE(conn_task, struct conn, task, conn_step);
static KEEL_TASK_TYPE(acceptor_task, struct acceptor, task, acceptor_step);
static KEEL_TASK_TYPE(signal_task, struct signal_waiter, task, signal_step);

static void conn_unlink(struct conn *c)
{
	if (c->prev)
		c->prev->next = c->next;
	else
		c->srv->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
}

static int conn_step(struct keel_task *t)
{
	struct conn *c = keel_container_of(t, struct conn, task);

	KEEL_BEGIN(t);
	for (;;) {
		KEEL_AWAIT(t, keel_recv(t, c->fd, c->buf, sizeof(c->buf), 0));
		if (keel_res(t) <= 0) /* 0: the peer (or shutdown) closed */
			break;
		/* MSG_NOSIGNAL: a peer gone mid-send is -EPIPE, not SIGPIPE. */
		KEEL_AWAIT(t, keel_send_all(t, c->fd, c->buf, keel_res(t),
					    MSG_NOSIGNAL));
		if (keel_res(t) < 0)
			break;
		c->srv->bytes += (uint64_t)keel_res(t);
	}
	conn_unlink(c);
	KEEL_AWAIT(t, keel_close(t, c->fd));
	KEEL_END(t);
}

/* Start a task for an accepted socket; on failure, just close it. */
static void conn_start(struct server *srv, struct keel_loop *loop, int fd)
{
	struct conn *c = keel_spawn(loop, &conn_task, KEEL_PRIO_NORMAL);

	if (!c) {
		close(fd);
		return;
	}
	/* Echo traffic is request/response: do not let Nagle hold replies. */
	keel_tcp_nodelay(fd);
	c->srv = srv;
	c->fd = fd;
	c->next = srv->conns;
	if (srv->conns)
		srv->conns->prev = c;
	srv->conns = c;
	srv->connections++;
}

static int acceptor_step(struct keel_task *t)
{
	struct acceptor *a = keel_container_of(t, struct acceptor, task);
	struct server *srv = a->srv;
	int fd;

	KEEL_BEGIN(t);
	/* After a signal the listener is closed: its number may be reused. */
	while (!srv->stopping) {
		KEEL_AWAIT(t, keel_accept(t, srv->listen_fd, NULL, NULL,
					  SOCK_CLOEXEC));
		fd = keel_res(t);
		if (fd >= 0 && srv->stopping) {
			/* Accepted as the signal task was shutting the live
			 * connections down: it would miss this one. */
			close(fd);
		} else if (fd >= 0) {
			conn_start(srv, keel_task_loop(t), fd);
		} else if (fd == -EMFILE || fd == -ENFILE || fd == -ENOBUFS ||
			   fd == -ENOMEM) {
			/*
			 * Out of fds or memory: the connection waits in the
			 * backlog. Retrying at once would spin; wait a little
			 * for connections to close.
			 */
			KEEL_AWAIT(t, keel_sleep(t, ACCEPT_RETRY_NS));
		} else if (fd == -ECONNABORTED || fd == -EINTR ||
			   fd == -EAGAIN) {
			continue; /* that client gave up: take the next */
		} else if (!srv->stopping) {
			fprintf(stderr, "echo: accept: %s\n", strerror(-fd));
			srv->status = 1;
			/* Else the signal task keeps the loop alive. */
			keel_loop_stop(keel_task_loop(t));
			break;
		}
	}
	KEEL_END(t);
}

static int signal_step(struct keel_task *t)
{
	struct signal_waiter *w =
	    keel_container_of(t, struct signal_waiter, task);
	struct server *srv = w->srv;
	sigset_t mask;

	KEEL_BEGIN(t);
	KEEL_AWAIT(t, keel_read(t, w->fd, &w->info, sizeof(w->info),
				KEEL_OFF_CURRENT));
	if (keel_res(t) < 0)
		fprintf(stderr, "echo: signalfd: %s\n", strerror(-keel_res(t)));
	srv->stopping = true;

	/* Closing the listener cancels the acceptor's pending accept. */
	KEEL_AWAIT(t, keel_close(t, srv->listen_fd));

	/*
	 * Each connection task is waiting in recv or send: shutting its socket
	 * down wakes it with end-of-file (or -EPIPE), and it exits on its own.
	 */
	for (struct conn *c = srv->conns; c; c = c->next)
		shutdown(c->fd, SHUT_RDWR);

	/* A second signal now kills the process, should shutdown hang. */
	sigemptyset(&mask);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGTERM);
	sigprocmask(SIG_UNBLOCK, &mask, NULL);
	KEEL_AWAIT(t, keel_close(t, w->fd));
	KEEL_END(t);
}

static void usage(FILE *out)
{
	fprintf(out, "usage: echo [ADDR] PORT\n"
		     "       echo --port PORT [--threads N]\n");
}

/* A decimal number in [min, max], or -1. */
static long parse_number(const char *s, long min, long max)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < min || v > max)
		return -1;
	return v;
}

int main(int argc, char **argv)
{
	static const struct option options[] = {
	    {"port", required_argument, NULL, 'p'},
	    {"threads", required_argument, NULL, 't'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	struct server srv = {.listen_fd = -1};
	const char *addr = "127.0.0.1";
	struct keel_loop *loop;
	struct acceptor *a;
	struct signal_waiter *w;
	long port = -1, threads = 1;
	sigset_t mask;
	int opt, err, sfd;

	while ((opt = getopt_long(argc, argv, "p:t:h", options, NULL)) != -1) {
		switch (opt) {
		case 'p':
			port = parse_number(optarg, 0, 65535);
			if (port < 0)
				goto bad_usage;
			break;
		case 't':
			threads = parse_number(optarg, 1, 1024);
			if (threads < 0)
				goto bad_usage;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			goto bad_usage;
		}
	}
	/* Positional: [ADDR] PORT, or just ADDR after --port. */
	if (argc - optind == 2 || (argc - optind == 1 && port >= 0))
		addr = argv[optind++];
	if (argc - optind == 1)
		port = parse_number(argv[optind++], 0, 65535);
	if (argc != optind || port < 0)
		goto bad_usage;
	if (threads > 1)
		fprintf(stderr,
			"echo: --threads %ld: not yet supported, using 1\n",
			threads);

	/*
	 * Block the signals before anything else so that they queue on the
	 * signalfd instead of killing the process. NONBLOCK matters: the ring
	 * then polls the signalfd and reads it from this thread; a blocking
	 * read could be punted to a kernel worker, which would wait for
	 * signals sent to itself.
	 */
	sigemptyset(&mask);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGTERM);
	sigprocmask(SIG_BLOCK, &mask, NULL);
	sfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
	if (sfd < 0) {
		fprintf(stderr, "echo: signalfd: %s\n", strerror(errno));
		return 1;
	}

	srv.listen_fd =
	    keel_tcp_listen(addr, (uint16_t)port, LISTEN_BACKLOG, 0);
	if (srv.listen_fd < 0) {
		fprintf(stderr, "echo: cannot listen on %s:%ld: %s\n", addr,
			port, strerror(-srv.listen_fd));
		return 1;
	}

	err = keel_loop_create(&loop, NULL);
	if (err < 0) {
		fprintf(stderr, "echo: %s\n", keel_loop_explain(err));
		return 1;
	}
	a = keel_spawn(loop, &acceptor_task, KEEL_PRIO_NORMAL);
	w = keel_spawn(loop, &signal_task, KEEL_PRIO_HIGH);
	if (!a || !w) {
		fprintf(stderr, "echo: out of memory\n");
		return 1;
	}
	a->srv = &srv;
	w->srv = &srv;
	w->fd = sfd;

	printf("echo: listening on %s:%d\n", addr,
	       keel_net_local_port(srv.listen_fd));
	fflush(stdout);

	err = keel_loop_run(loop);
	if (err < 0) {
		fprintf(stderr, "echo: loop: %s\n", strerror(-err));
		srv.status = 1;
	}
	keel_loop_destroy(loop);
	printf("echo: served %llu connections, echoed %llu bytes\n",
	       (unsigned long long)srv.connections,
	       (unsigned long long)srv.bytes);
	return srv.status;

bad_usage:
	usage(stderr);
	return 2;
}
