/* SPDX-License-Identifier: MIT */
/*
 * test_proxy.c: examples/proxy as a black box, in both modes (buffers and
 * splice), over loopback TCP (127.0.0.1 only). Each test starts the proxy
 * as a subprocess (its port read from the "proxy: listening on ADDR:PORT"
 * line on its stdout), talks to it with plain blocking sockets, and stops
 * it with SIGTERM: it must exit 0 with a "proxy: " summary line. The
 * backend is in the test (threads with blocking sockets):
 *
 * - echo, one connection and 16 at once;
 * - half-close: the client shuts down its writing half, the backend sees
 *   end of file, still sends its reply, the client gets it and then EOF;
 * - backend refusal: nothing listens on the backend port, the client's
 *   connection is closed; the proxy keeps running, counts the failures
 *   and serves the next connection once a backend is there;
 * - backend reset mid-stream (SO_LINGER 0 while data flows): the client's
 *   connection ends, the proxy keeps running and its descriptor count
 *   (/proc/PID/fd) comes back to where it was;
 * - 100 MiB through the proxy and back, checked byte for byte;
 * - a backend that is the proxy's own listener: refused at start-up;
 * - a backend that does not answer (its listen queue is full): a client
 *   that leaves while the connect is pending ends the session at once,
 *   and --connect-timeout closes the client's connection;
 * - --max-conns: at the cap the proxy stops accepting; a client that
 *   connects meanwhile waits and is served once a session has left;
 * - two proxies pointed at each other, each under a descriptor limit:
 *   after a client has come and gone, both hold the descriptors they held
 *   before, and a connection through one of them works;
 * - --shed-target: a burst met by a stopped proxy is partly shed (closed
 *   before any backend connect, counted), none without the option, and
 *   clients are served again once it has drained.
 *
 * The proxy binary is looked for next to this test's build directory
 * (<build>/examples/proxy, <build> being this binary's ../), or in
 * $KEEL_PROXY; the tests are skipped when it has not been built.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "helpers/keel_test.h"

#define KIB ((size_t)1024)
#define MIB ((size_t)1024 * 1024)

static void sleep_ms(unsigned ms)
{
	struct timespec ts = {.tv_sec = ms / 1000,
			      .tv_nsec = (long)(ms % 1000) * 1000000};

	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
}

static void set_timeouts(int fd, int seconds)
{
	struct timeval tv = {.tv_sec = seconds};

	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

static int send_all(int fd, const void *buf, size_t len)
{
	const char *p = buf;

	while (len) {
		ssize_t n = send(fd, p, len, MSG_NOSIGNAL);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* Read exactly `len` bytes; returns what was read (short: EOF or error,
 * with *err set to 0 for EOF or the errno). */
static size_t recv_full(int fd, void *buf, size_t len, int *err)
{
	char *p = buf;
	size_t got = 0;

	*err = 0;
	while (got < len) {
		ssize_t n = recv(fd, p + got, len - got, 0);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			*err = n ? errno : 0;
			break;
		}
		got += (size_t)n;
	}
	return got;
}

/* What the next recv says: 1 (data), 0 (end of file) or -errno. */
static int recv_end(int fd)
{
	char c;
	ssize_t n;

	do
		n = recv(fd, &c, 1, 0);
	while (n < 0 && errno == EINTR);
	return n < 0 ? -errno : (int)n;
}

static int connect_to(uint16_t port)
{
	struct sockaddr_in sin;
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	cr_assert_geq(fd, 0, "socket: %s", strerror(errno));
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_port = htons(port);
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	cr_assert_eq(connect(fd, (struct sockaddr *)&sin, sizeof(sin)), 0,
		     "connect to the proxy: %s", strerror(errno));
	set_timeouts(fd, 20);
	return fd;
}

/* A loopback port nobody listens on (bound, then released). */
static uint16_t free_port(void)
{
	struct sockaddr_in sin;
	socklen_t len = sizeof(sin);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	cr_assert_geq(fd, 0);
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	cr_assert_eq(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	cr_assert_eq(getsockname(fd, (struct sockaddr *)&sin, &len), 0);
	close(fd);
	return ntohs(sin.sin_port);
}

/* ---- the backend: a listening thread, one thread per connection ------ */

enum backend_mode {
	B_ECHO,	 /* send back everything, close after end of file */
	B_REPLY, /* read to end of file, then send a reply and close */
	B_RESET, /* read `reset_after` bytes, then reset (SO_LINGER 0) */
};

#define BACKEND_CONNS 128
#define REPLY_LEN     (200 * KIB)

struct backend {
	int lfd;
	uint16_t port;
	int mode; /* read when a connection is accepted */
	size_t reset_after;
	pthread_t th;
	int running;
	pthread_mutex_t lock;
	pthread_t conns[BACKEND_CONNS];
	int nconns;
	/* what the connections saw (under lock) */
	int accepted;
	int eofs;	  /* connections that saw end of file */
	int resets;	  /* connections reset on purpose */
	size_t last_read; /* B_REPLY: bytes read before end of file */
	int reply_sent;	  /* B_REPLY: the reply's send result */
};

struct backend_conn {
	struct backend *b;
	int fd;
	int mode;
};

static void *backend_conn_main(void *arg)
{
	struct backend_conn *c = arg;
	struct backend *b = c->b;
	size_t total = 0;
	char *buf = malloc(REPLY_LEN); /* >= 64 KiB */
	int eof = 0, sent = 0;

	set_timeouts(c->fd, 30);
	while (buf) {
		ssize_t n = recv(c->fd, buf, 64 * KIB, 0);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			eof = n == 0;
			break;
		}
		total += (size_t)n;
		if (c->mode == B_ECHO && send_all(c->fd, buf, (size_t)n))
			break;
		if (c->mode == B_RESET && total >= b->reset_after) {
			struct linger lg = {.l_onoff = 1, .l_linger = 0};

			setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg,
				   sizeof(lg));
			pthread_mutex_lock(&b->lock);
			b->resets++;
			pthread_mutex_unlock(&b->lock);
			break;
		}
	}
	if (c->mode == B_REPLY && eof && buf) {
		/* The client's half is closed; ours still works. */
		int head = snprintf(buf, 64, "got %zu\n", total);

		kt_pattern_fill(buf + head, REPLY_LEN - (size_t)head, 0, 77);
		sent = send_all(c->fd, buf, REPLY_LEN) ? -1 : (int)REPLY_LEN;
	}
	pthread_mutex_lock(&b->lock);
	b->eofs += eof;
	if (c->mode == B_REPLY) {
		b->last_read = total;
		b->reply_sent = sent;
	}
	pthread_mutex_unlock(&b->lock);
	close(c->fd);
	free(buf);
	free(c);
	return NULL;
}

static void *backend_main(void *arg)
{
	struct backend *b = arg;

	for (;;) {
		int fd = accept4(b->lfd, NULL, NULL, SOCK_CLOEXEC);
		struct backend_conn *c;

		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			break; /* shut down: backend_stop */
		}
		c = malloc(sizeof(*c));
		pthread_mutex_lock(&b->lock);
		if (!c || b->nconns == BACKEND_CONNS) {
			pthread_mutex_unlock(&b->lock);
			free(c);
			close(fd);
			continue;
		}
		c->b = b;
		c->fd = fd;
		c->mode = b->mode;
		b->accepted++;
		if (pthread_create(&b->conns[b->nconns], NULL,
				   backend_conn_main, c) == 0) {
			b->nconns++;
		} else {
			close(fd);
			free(c);
		}
		pthread_mutex_unlock(&b->lock);
	}
	return NULL;
}

/* Listen on 127.0.0.1:port (0: any) and serve in `mode`. */
static void backend_start(struct backend *b, uint16_t port, int mode)
{
	struct sockaddr_in sin;
	socklen_t len = sizeof(sin);
	int one = 1;

	memset(b, 0, sizeof(*b));
	pthread_mutex_init(&b->lock, NULL);
	b->mode = mode;
	b->reset_after = 128 * KIB;
	b->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	cr_assert_geq(b->lfd, 0);
	setsockopt(b->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_port = htons(port);
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	cr_assert_eq(bind(b->lfd, (struct sockaddr *)&sin, sizeof(sin)), 0,
		     "backend bind to port %u: %s", port, strerror(errno));
	cr_assert_eq(listen(b->lfd, 128), 0);
	cr_assert_eq(getsockname(b->lfd, (struct sockaddr *)&sin, &len), 0);
	b->port = ntohs(sin.sin_port);
	cr_assert_eq(pthread_create(&b->th, NULL, backend_main, b), 0);
	b->running = 1;
}

static void backend_set_mode(struct backend *b, int mode)
{
	pthread_mutex_lock(&b->lock);
	b->mode = mode;
	pthread_mutex_unlock(&b->lock);
}

/* Stop accepting, wait for every connection's thread. */
static void backend_stop(struct backend *b)
{
	if (!b->running)
		return;
	b->running = 0;
	/* shutdown() wakes the blocked accept (it fails with EINVAL). */
	shutdown(b->lfd, SHUT_RDWR);
	pthread_join(b->th, NULL);
	close(b->lfd);
	for (int i = 0; i < b->nconns; i++)
		pthread_join(b->conns[i], NULL);
	b->nconns = 0;
}

/* ---- the proxy process ----------------------------------------------- */

struct proxy {
	pid_t pid;
	FILE *out; /* its stdout */
	uint16_t port;
	char listening[256];
	char summary[512];
};

/* The proxies running (a test runs at most two at once). */
static pid_t g_pids[2];

static void reap_add(pid_t pid)
{
	for (size_t i = 0; i < sizeof(g_pids) / sizeof(g_pids[0]); i++)
		if (!g_pids[i]) {
			g_pids[i] = pid;
			return;
		}
	cr_assert_fail("more proxies than g_pids holds");
}

static void reap_forget(pid_t pid)
{
	for (size_t i = 0; i < sizeof(g_pids) / sizeof(g_pids[0]); i++)
		if (g_pids[i] == pid)
			g_pids[i] = 0;
}

/* Kill the proxies a failed test left behind (.fini of every test). */
static void proxy_reap(void)
{
	for (size_t i = 0; i < sizeof(g_pids) / sizeof(g_pids[0]); i++)
		if (g_pids[i] > 0) {
			kill(g_pids[i], SIGKILL);
			waitpid(g_pids[i], NULL, 0);
			g_pids[i] = 0;
		}
}

static int proxy_path(char *path, size_t len)
{
	const char *env = getenv("KEEL_PROXY");
	char self[PATH_MAX];
	ssize_t n;
	char *slash;

	if (env && *env) {
		snprintf(path, len, "%s", env);
		return access(path, X_OK) == 0;
	}
	n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	if (n <= 0)
		return 0;
	self[n] = '\0';
	/* <build>/test/test_proxy -> <build>/examples/proxy */
	for (int i = 0; i < 2; i++) {
		slash = strrchr(self, '/');
		if (!slash)
			return 0;
		*slash = '\0';
	}
	n = snprintf(path, len, "%s/examples/proxy", self);
	return n > 0 && (size_t)n < len && access(path, X_OK) == 0;
}

/* How to start a proxy beyond the usual (proxy_launch). */
struct proxy_opts {
	const char *mode;
	int threads;
	uint16_t listen_port;	 /* 0: a free one, read from its first line */
	const char *listen_host; /* NULL: 127.0.0.1 ("[::1]" for IPv6) */
	uint16_t backend_port;
	const char *extra[8]; /* more arguments, NULL-terminated */
	int nofile;	      /* its descriptor limit (ulimit -n); 0: ours */
};

static void proxy_launch(struct proxy *px, const struct proxy_opts *o)
{
	char path[PATH_MAX], nthreads[16], listen_arg[64], backend[64];
	const char *argv[24];
	pid_t parent = getpid();
	int out[2], n = 0;
	char *p;

	if (!proxy_path(path, sizeof(path)))
		cr_skip_test("the proxy example is not built (make examples), "
			     "or set KEEL_PROXY");
	snprintf(nthreads, sizeof(nthreads), "%d", o->threads);
	snprintf(listen_arg, sizeof(listen_arg), "%s:%u",
		 o->listen_host ? o->listen_host : "127.0.0.1", o->listen_port);
	snprintf(backend, sizeof(backend), "127.0.0.1:%u", o->backend_port);
	argv[n++] = path;
	argv[n++] = "--threads";
	argv[n++] = nthreads;
	argv[n++] = "--mode";
	argv[n++] = o->mode;
	argv[n++] = "-l";
	argv[n++] = listen_arg;
	argv[n++] = "-b";
	argv[n++] = backend;
	for (int i = 0; i < 8 && o->extra[i]; i++)
		argv[n++] = o->extra[i];
	argv[n] = NULL;

	memset(px, 0, sizeof(*px));
	cr_assert_eq(pipe2(out, O_CLOEXEC), 0);
	fflush(NULL);
	px->pid = fork();
	cr_assert_geq(px->pid, 0, "fork: %s", strerror(errno));
	if (px->pid == 0) {
		struct rlimit rl = {.rlim_cur = (rlim_t)o->nofile,
				    .rlim_max = (rlim_t)o->nofile};

		/* Dies with the test, whatever happens to the test. */
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent)
			_exit(127);
		if (o->nofile && setrlimit(RLIMIT_NOFILE, &rl))
			_exit(126);
		dup2(out[1], STDOUT_FILENO);
		execv(path, (char *const *)argv);
		_exit(127);
	}
	reap_add(px->pid);
	close(out[1]);
	px->out = fdopen(out[0], "r");
	cr_assert_not_null(px->out);

	/* Its first line says where it listens. */
	struct pollfd pfd = {.fd = out[0], .events = POLLIN};

	cr_assert_eq(poll(&pfd, 1, 10000), 1,
		     "the proxy printed nothing in 10 s");
	cr_assert_not_null(fgets(px->listening, sizeof(px->listening), px->out),
			   "the proxy exited before listening");
	p = strstr(px->listening, "listening on ");
	cr_assert_not_null(p, "unexpected first line: %s", px->listening);
	p += strlen("listening on ");
	p[strcspn(p, " \n")] = '\0';
	p = strrchr(p, ':');
	cr_assert_not_null(p, "no port in: %s", px->listening);
	px->port = (uint16_t)atoi(p + 1);
	cr_assert_gt(px->port, 0, "no port in: %s", px->listening);
}

static void proxy_start(struct proxy *px, const char *mode, int threads,
			uint16_t backend_port)
{
	struct proxy_opts o = {
	    .mode = mode, .threads = threads, .backend_port = backend_port};

	proxy_launch(px, &o);
}

static int proxy_alive(const struct proxy *px)
{
	int status;

	return waitpid(px->pid, &status, WNOHANG) == 0;
}

/* Open descriptors of the proxy process. */
static int proxy_fds(const struct proxy *px)
{
	char dir[64];
	DIR *d;
	struct dirent *e;
	int n = 0;

	snprintf(dir, sizeof(dir), "/proc/%d/fd", (int)px->pid);
	d = opendir(dir);
	cr_assert_not_null(d, "%s: %s", dir, strerror(errno));
	while ((e = readdir(d)))
		if (e->d_name[0] != '.')
			n++;
	closedir(d);
	return n;
}

/* The proxy's descriptor count once it has stayed the same for 100 ms
 * (a bounded wait: the proxy closes asynchronously). */
static int proxy_fds_settled(const struct proxy *px)
{
	int base = proxy_fds(px), now;

	for (int same = 0, i = 0; same < 5 && i < 500; i++) {
		sleep_ms(20);
		now = proxy_fds(px);
		same = now == base ? same + 1 : 0;
		base = now;
	}
	return base;
}

/* Wait (20 s at most) until the proxy holds at most `base` descriptors;
 * returns the last count. */
static int proxy_fds_back_to(const struct proxy *px, int base)
{
	int now = proxy_fds(px);

	for (int i = 0; i < 2000 && now > base; i++) {
		sleep_ms(10);
		now = proxy_fds(px);
	}
	return now;
}

/*
 * SIGTERM: it must exit 0 (in at most 20 s) after printing its summary.
 * Returns the summary line.
 */
static const char *proxy_stop(struct proxy *px)
{
	char line[512];
	int status = 0, exited = 0;

	cr_assert(proxy_alive(px), "the proxy died during the test");
	cr_assert_eq(kill(px->pid, SIGTERM), 0);
	while (fgets(line, sizeof(line), px->out))
		if (!strncmp(line, "proxy: ", 7))
			snprintf(px->summary, sizeof(px->summary), "%s", line);
	fclose(px->out);
	for (int i = 0; i < 2000 && !exited; i++) {
		pid_t r = waitpid(px->pid, &status, WNOHANG);

		if (r == px->pid)
			exited = 1;
		else
			sleep_ms(10);
	}
	if (!exited) {
		kill(px->pid, SIGKILL);
		waitpid(px->pid, &status, 0);
	}
	reap_forget(px->pid);
	px->pid = 0;
	cr_assert(exited, "the proxy did not exit within 20 s of SIGTERM");
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0,
		  "the proxy's exit: %s %d",
		  WIFEXITED(status) ? "status" : "signal",
		  WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
	cr_assert_eq(strncmp(px->summary, "proxy: ", 7), 0,
		     "no summary line on exit");
	cr_assert_null(strstr(px->summary, "listening on"),
		       "no summary line on exit");
	cr_log_info("%s", px->summary);
	return px->summary;
}

/* The number just before `word` in the summary, or -1. */
static long long summary_count(const char *summary, const char *word)
{
	const char *w = strstr(summary, word), *p;

	if (!w || w == summary)
		return -1;
	p = w - 1;
	while (p > summary && *p == ' ')
		p--;
	while (p > summary && p[-1] >= '0' && p[-1] <= '9')
		p--;
	if (*p < '0' || *p > '9')
		return -1;
	return strtoll(p, NULL, 10);
}

/* ---- clients ----------------------------------------------------------- */

/* Send `len` bytes (pattern from `seed`), read them back, compare. */
static void echo_once(uint16_t port, size_t len, unsigned seed)
{
	char *tx = malloc(len), *rx = malloc(len);
	int fd = connect_to(port), err;
	size_t got;

	cr_assert(tx && rx);
	kt_pattern_fill(tx, len, 0, seed);
	cr_assert_eq(send_all(fd, tx, len), 0, "send through the proxy");
	got = recv_full(fd, rx, len, &err);
	cr_assert_eq(got, len, "echo: %zu of %zu bytes (%s)", got, len,
		     err ? strerror(err) : "end of file");
	cr_assert_eq(memcmp(tx, rx, len), 0, "echo: wrong bytes");
	/* Our end of file goes through; the backend closes; so do we. */
	cr_assert_eq(shutdown(fd, SHUT_WR), 0);
	cr_assert_eq(recv_end(fd), 0, "after the echo: not end of file");
	close(fd);
	free(tx);
	free(rx);
}

static void run_echo(const char *mode)
{
	static const size_t sizes[] = {1, 100, 4096, 16384, 65536, 100000};
	struct backend b;
	struct proxy px;
	const char *sum;

	backend_start(&b, 0, B_ECHO);
	proxy_start(&px, mode, 2, b.port);
	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++)
		echo_once(px.port, sizes[i], (unsigned)i + 1);
	sum = proxy_stop(&px);
	backend_stop(&b);
	cr_assert_eq(b.accepted, 6);
	cr_assert_eq(b.eofs, 6, "the backend saw %d ends of file", b.eofs);
	if (summary_count(sum, "connections") >= 0)
		cr_assert_eq(summary_count(sum, "connections"), 6);
}

Test(proxy, echo_buffers, .timeout = 60, .fini = proxy_reap)
{
	run_echo("buffers");
}

Test(proxy, echo_splice, .timeout = 60, .fini = proxy_reap)
{
	run_echo("splice");
}

/* 16 connections at once, each echoing its own message. */
static void run_many(const char *mode)
{
	enum { N = 16, LEN = 10000 };
	struct backend b;
	struct proxy px;
	int fds[N], err;
	char *tx = malloc(LEN), *rx = malloc(LEN);

	cr_assert(tx && rx);
	backend_start(&b, 0, B_ECHO);
	proxy_start(&px, mode, 2, b.port);
	for (int i = 0; i < N; i++)
		fds[i] = connect_to(px.port);
	for (int i = 0; i < N; i++) {
		kt_pattern_fill(tx, LEN, 0, 100 + (unsigned)i);
		cr_assert_eq(send_all(fds[i], tx, LEN), 0);
	}
	for (int i = 0; i < N; i++) {
		size_t got = recv_full(fds[i], rx, LEN, &err);

		cr_assert_eq(got, LEN, "connection %d: %zu bytes back", i, got);
		cr_assert_eq(kt_pattern_mismatch(rx, LEN, 0, 100 + (unsigned)i),
			     SIZE_MAX, "connection %d: wrong bytes", i);
		close(fds[i]);
	}
	proxy_stop(&px);
	backend_stop(&b);
	cr_assert_eq(b.accepted, N);
	free(tx);
	free(rx);
}

Test(proxy, sixteen_connections_at_once_buffers, .timeout = 60,
     .fini = proxy_reap)
{
	run_many("buffers");
}

Test(proxy, sixteen_connections_at_once_splice, .timeout = 60,
     .fini = proxy_reap)
{
	run_many("splice");
}

/* ---- half-close -------------------------------------------------------- */

static void run_half_close(const char *mode)
{
	const size_t len = 100 * KIB;
	struct backend b;
	struct proxy px;
	char *tx = malloc(len), *rx = malloc(REPLY_LEN);
	char head[64];
	size_t got;
	int fd, err, hl;

	cr_assert(tx && rx);
	backend_start(&b, 0, B_REPLY);
	proxy_start(&px, mode, 2, b.port);
	fd = connect_to(px.port);
	kt_pattern_fill(tx, len, 0, 5);
	cr_assert_eq(send_all(fd, tx, len), 0);
	/* Done writing: the backend must see end of file, and still be
	 * able to answer through the other half. */
	cr_assert_eq(shutdown(fd, SHUT_WR), 0);
	got = recv_full(fd, rx, REPLY_LEN, &err);
	cr_assert_eq(got, REPLY_LEN, "reply: %zu of %zu bytes (%s)", got,
		     REPLY_LEN, err ? strerror(err) : "end of file");
	hl = snprintf(head, sizeof(head), "got %zu\n", len);
	cr_assert_eq(memcmp(rx, head, (size_t)hl), 0,
		     "the backend read something else than %zu bytes: %.20s",
		     len, rx);
	cr_assert_eq(
	    kt_pattern_mismatch(rx + hl, REPLY_LEN - (size_t)hl, 0, 77),
	    SIZE_MAX, "the reply came back wrong");
	cr_assert_eq(recv_end(fd), 0, "after the reply: not end of file");
	close(fd);
	proxy_stop(&px);
	backend_stop(&b);
	cr_assert_eq(b.eofs, 1, "the backend did not see end of file");
	cr_assert_eq(b.last_read, len, "the backend read %zu bytes",
		     b.last_read);
	cr_assert_eq(b.reply_sent, (int)REPLY_LEN);
	free(tx);
	free(rx);
}

Test(proxy, half_close_passes_eof_and_keeps_other_direction_buffers,
     .timeout = 60, .fini = proxy_reap)
{
	run_half_close("buffers");
}

Test(proxy, half_close_passes_eof_and_keeps_other_direction_splice,
     .timeout = 60, .fini = proxy_reap)
{
	run_half_close("splice");
}

/* ---- backend refusal --------------------------------------------------- */

static void run_refusal(const char *mode)
{
	uint16_t bport = free_port();
	struct backend b;
	struct proxy px;
	const char *sum;
	int fd, end;

	proxy_start(&px, mode, 2, bport);
	for (int i = 0; i < 3; i++) {
		fd = connect_to(px.port);
		/* Nothing listens there: the proxy closes our connection
		 * (the 20 s receive timeout would say it did not). */
		end = recv_end(fd);
		cr_assert(end == 0 || end == -ECONNRESET,
			  "connection %d with no backend: %s", i,
			  end > 0 ? "data" : strerror(-end));
		close(fd);
		cr_assert(proxy_alive(&px), "the proxy died");
	}
	/* A backend appears on that port: the next connection works. */
	backend_start(&b, bport, B_ECHO);
	echo_once(px.port, 5000, 9);
	sum = proxy_stop(&px);
	backend_stop(&b);
	cr_assert_eq(b.accepted, 1);
	/* The summary always prints "N backend failures" (main.c). */
	cr_assert_eq(summary_count(sum, "backend failure"), 3, "summary: %s",
		     sum);
}

Test(proxy, backend_refused_closes_client_and_proxy_keeps_serving_buffers,
     .timeout = 60, .fini = proxy_reap)
{
	run_refusal("buffers");
}

Test(proxy, backend_refused_closes_client_and_proxy_keeps_serving_splice,
     .timeout = 60, .fini = proxy_reap)
{
	run_refusal("splice");
}

/* ---- backend reset mid-stream ----------------------------------------- */

struct pusher {
	pthread_t th;
	int fd;
	size_t len;
	size_t sent;
	int err; /* the send error that ended it, or 0 */
};

/* Sends `len` pattern bytes, shuts down its writing half. */
static void *pusher_main(void *arg)
{
	struct pusher *p = arg;
	char *buf = malloc(64 * KIB);

	while (buf && p->sent < p->len) {
		size_t n =
		    p->len - p->sent < 64 * KIB ? p->len - p->sent : 64 * KIB;
		ssize_t r;

		kt_pattern_fill(buf, n, p->sent, 31);
		r = send(p->fd, buf, n, MSG_NOSIGNAL);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			p->err = errno;
			break;
		}
		p->sent += (size_t)r;
	}
	if (!p->err)
		shutdown(p->fd, SHUT_WR);
	free(buf);
	return NULL;
}

static void run_reset(const char *mode)
{
	enum { N = 10 };
	struct backend b;
	struct proxy px;
	int base, now, resets = 0, eofs = 0;
	const char *sum;

	backend_start(&b, 0, B_ECHO);
	proxy_start(&px, mode, 2, b.port);
	/* The baseline: after one complete connection, once the count
	 * has stayed the same for a while. */
	echo_once(px.port, 1000, 3);
	base = proxy_fds_settled(&px);

	backend_set_mode(&b, B_RESET);
	for (int i = 0; i < N; i++) {
		struct pusher p = {.len = 8 * MIB};
		char *buf = malloc(64 * KIB);
		ssize_t n;

		cr_assert_not_null(buf);
		p.fd = connect_to(px.port);
		cr_assert_eq(pthread_create(&p.th, NULL, pusher_main, &p), 0);
		/* The backend reads 128 KiB and resets: the connection must
		 * end (end of file or reset), not hang. */
		do
			n = recv(p.fd, buf, 64 * KIB, 0);
		while (n > 0 || (n < 0 && errno == EINTR));
		cr_assert(n == 0 || errno == ECONNRESET,
			  "connection %d after the backend's reset: %s", i,
			  strerror(errno));
		if (n)
			resets++;
		else
			eofs++;
		shutdown(p.fd, SHUT_RDWR);
		pthread_join(p.th, NULL);
		close(p.fd);
		free(buf);
		cr_assert(proxy_alive(&px), "the proxy died");
	}
	cr_log_info("%s: %d ended by reset, %d by end of file", mode, resets,
		    eofs);
	/* Every connection's descriptors go away. */
	now = proxy_fds_back_to(&px, base);
	cr_assert_leq(now, base, "the proxy holds %d descriptors, %d before",
		      now, base);
	/* And it still serves. */
	backend_set_mode(&b, B_ECHO);
	echo_once(px.port, 70000, 4);
	sum = proxy_stop(&px);
	backend_stop(&b);
	cr_assert_eq(b.resets, N, "the backend reset %d connections", b.resets);
	if (summary_count(sum, "connections") >= 0)
		cr_assert_eq(summary_count(sum, "connections"), N + 2);
}

Test(proxy, backend_reset_mid_stream_ends_client_no_leak_buffers, .timeout = 90,
     .fini = proxy_reap)
{
	run_reset("buffers");
}

Test(proxy, backend_reset_mid_stream_ends_client_no_leak_splice, .timeout = 90,
     .fini = proxy_reap)
{
	run_reset("splice");
}

/* ---- 100 MiB byte for byte --------------------------------------------- */

static void run_big(const char *mode)
{
	const size_t len = 100 * MIB;
	struct backend b;
	struct proxy px;
	struct pusher p = {.len = len};
	char *buf = malloc(64 * KIB);
	size_t got = 0, bad = SIZE_MAX;
	uint64_t t0;
	const char *sum;
	int end;

	cr_assert_not_null(buf);
	backend_start(&b, 0, B_ECHO);
	proxy_start(&px, mode, 2, b.port);
	p.fd = connect_to(px.port);
	t0 = kt_now_ns();
	cr_assert_eq(pthread_create(&p.th, NULL, pusher_main, &p), 0);
	for (;;) {
		ssize_t n = recv(p.fd, buf, 64 * KIB, 0);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			end = n ? -errno : 0;
			break;
		}
		if (bad == SIZE_MAX) {
			size_t m = kt_pattern_mismatch(buf, (size_t)n, got, 31);

			if (m != SIZE_MAX)
				bad = got + m;
		}
		got += (size_t)n;
	}
	pthread_join(p.th, NULL);
	cr_log_info("%s: 100 MiB there and back in %.2f s", mode,
		    (double)(kt_now_ns() - t0) / 1e9);
	cr_assert_eq(p.err, 0, "sending: %s", strerror(p.err));
	cr_assert_eq(p.sent, len);
	cr_assert_eq(end, 0, "the echo ended with %s", strerror(-end));
	cr_assert_eq(got, len, "%zu of %zu bytes came back", got, len);
	cr_assert_eq(bad, SIZE_MAX, "wrong byte at offset %zu", bad);
	close(p.fd);
	sum = proxy_stop(&px);
	backend_stop(&b);
	cr_assert_eq(b.eofs, 1);
	if (summary_count(sum, "bytes up") >= 0) {
		cr_assert_eq(summary_count(sum, "bytes up"), (long long)len,
			     "summary: %s", sum);
		cr_assert_eq(summary_count(sum, "bytes down"), (long long)len,
			     "summary: %s", sum);
	}
	free(buf);
}

Test(proxy, hundred_mib_there_and_back_byte_for_byte_buffers, .timeout = 120,
     .fini = proxy_reap)
{
	run_big("buffers");
}

Test(proxy, hundred_mib_there_and_back_byte_for_byte_splice, .timeout = 120,
     .fini = proxy_reap)
{
	run_big("splice");
}

/* ---- a backend that is the proxy itself ------------------------------ */

/*
 * Run the proxy with -l LISTEN -b BACKEND (port `port` on both) and
 * return its exit status, its stderr in `err`; -1 if it still runs after
 * 10 s (then it is killed).
 */
static int proxy_run_to_exit(const char *lhost, const char *bhost,
			     uint16_t port, char *err, size_t errlen)
{
	char path[PATH_MAX], listen_arg[64], backend_arg[64];
	pid_t parent = getpid();
	int pipefd[2], status = 0;

	if (!proxy_path(path, sizeof(path)))
		cr_skip_test("the proxy example is not built (make examples), "
			     "or set KEEL_PROXY");
	snprintf(listen_arg, sizeof(listen_arg), "%s:%u", lhost, port);
	snprintf(backend_arg, sizeof(backend_arg), "%s:%u", bhost, port);
	cr_assert_eq(pipe2(pipefd, O_CLOEXEC), 0);
	fflush(NULL);
	pid_t pid = fork();

	cr_assert_geq(pid, 0, "fork: %s", strerror(errno));
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent)
			_exit(127);
		dup2(pipefd[1], STDERR_FILENO);
		execl(path, path, "--threads", "1", "-l", listen_arg, "-b",
		      backend_arg, (char *)NULL);
		_exit(127);
	}
	reap_add(pid);
	close(pipefd[1]);
	int i;

	for (i = 0; i < 1000; i++) {
		if (waitpid(pid, &status, WNOHANG) == pid)
			break;
		sleep_ms(10);
	}
	if (i == 1000) {
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
	}
	reap_forget(pid);
	ssize_t n = read(pipefd[0], err, errlen - 1);

	err[n > 0 ? n : 0] = '\0';
	close(pipefd[0]);
	return i == 1000 ? -1 : WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

static void check_refuses_itself(const char *lhost, const char *bhost)
{
	char err[512];
	int status =
	    proxy_run_to_exit(lhost, bhost, free_port(), err, sizeof(err));
	char *nl = strchr(err, '\n');

	cr_assert_neq(status, -1, "-l %s -b %s: the proxy kept running", lhost,
		      bhost);
	cr_assert_neq(status, 0, "-l %s -b %s: exit 0", lhost, bhost);
	cr_assert(nl && nl[1] == '\0', "not one line on stderr: '%s'", err);
	cr_assert_not_null(strstr(err, "own listener"), "%s", err);
}

/* Each client connection would connect to the proxy again until the fds
 * run out: refused at start-up, one line, non-zero exit. */
Test(proxy, backend_that_is_its_own_listener_is_refused, .timeout = 60,
     .fini = proxy_reap)
{
	check_refuses_itself("127.0.0.1", "127.0.0.1");
	/* connect(2) to the wildcard address reaches loopback */
	check_refuses_itself("127.0.0.1", "0.0.0.0");
}

/* ---- a backend that does not answer ------------------------------------ */

/* A listener whose queue (backlog 0) is full: a connect to it waits (its
 * SYNs are dropped) until the kernel gives up minutes later. */
struct silent_backend {
	int lfd, queued;
	uint16_t port;
};

static void silent_backend_start(struct silent_backend *sb)
{
	struct sockaddr_in sin;
	socklen_t len = sizeof(sin);

	sb->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	cr_assert_geq(sb->lfd, 0);
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	cr_assert_eq(bind(sb->lfd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	cr_assert_eq(listen(sb->lfd, 0), 0);
	cr_assert_eq(getsockname(sb->lfd, (struct sockaddr *)&sin, &len), 0);
	sb->port = ntohs(sin.sin_port);
	/* One connection fills the queue; nobody accepts it. */
	sb->queued = connect_to(sb->port);
}

static void silent_backend_stop(struct silent_backend *sb)
{
	close(sb->queued);
	close(sb->lfd);
}

/* Wait (20 s at most) until the proxy holds at least `n` descriptors. */
static int proxy_fds_up_to(const struct proxy *px, int n)
{
	int now = proxy_fds(px);

	for (int i = 0; i < 2000 && now < n; i++) {
		sleep_ms(10);
		now = proxy_fds(px);
	}
	return now;
}

/* The client leaves while the backend's connect is pending: the session
 * cancels the connect and closes both sockets, long before the connect
 * deadline. */
Test(proxy, client_leaving_during_a_pending_connect_ends_the_session,
     .timeout = 60, .fini = proxy_reap)
{
	struct silent_backend sb;
	struct proxy_opts o = {.mode = "buffers", .threads = 1};
	struct proxy px;
	const char *sum;
	int base, now, fd;

	silent_backend_start(&sb);
	o.backend_port = sb.port;
	o.extra[0] = "--connect-timeout";
	o.extra[1] = "600000";
	proxy_launch(&px, &o);
	base = proxy_fds_settled(&px);
	fd = connect_to(px.port);
	/* The client's socket and the backend's, being connected. */
	now = proxy_fds_up_to(&px, base + 2);
	cr_assert_geq(now, base + 2, "the proxy did not start connecting");
	close(fd);
	now = proxy_fds_back_to(&px, base);
	cr_assert_leq(now, base,
		      "the client left, the proxy holds %d descriptors, %d "
		      "before",
		      now, base);
	sum = proxy_stop(&px);
	silent_backend_stop(&sb);
	cr_assert_eq(summary_count(sum, "clients gone"), 1, "summary: %s", sum);
	cr_assert_eq(summary_count(sum, "backend failures"), 0, "summary: %s",
		     sum);
}

/* --connect-timeout: a backend that does not answer in time is a backend
 * failure: the client's connection is closed. */
Test(proxy, connect_deadline_closes_the_client_and_counts_a_failure,
     .timeout = 60, .fini = proxy_reap)
{
	struct silent_backend sb;
	struct proxy_opts o = {.mode = "buffers", .threads = 1};
	struct proxy px;
	const char *sum;
	int fd, end;

	silent_backend_start(&sb);
	o.backend_port = sb.port;
	o.extra[0] = "--connect-timeout";
	o.extra[1] = "200";
	proxy_launch(&px, &o);
	fd = connect_to(px.port);
	/* (the 20 s receive timeout would say it was not closed) */
	end = recv_end(fd);
	cr_assert(end == 0 || end == -ECONNRESET, "after the deadline: %s",
		  end > 0 ? "data" : strerror(-end));
	close(fd);
	sum = proxy_stop(&px);
	silent_backend_stop(&sb);
	cr_assert_eq(summary_count(sum, "backend failures"), 1, "summary: %s",
		     sum);
}

/* ---- --max-conns --------------------------------------------------------- */

/* One byte there and back; false if the proxy closed the connection. */
static bool echo_byte(int fd)
{
	char c = 'k';

	return send_all(fd, &c, 1) == 0 && recv_end(fd) == 1;
}

/*
 * At the cap the proxy stops accepting: a client that connects then waits
 * in the listen queue (its connect completes, nothing is served, nothing
 * is refused) and is served as soon as a session leaves (--low-water: at
 * one session open, below the cap of two). Two loops: the third client
 * may reach the loop that did not fill the cap, which holds it instead.
 */
Test(proxy, max_conns_pauses_accepting_and_the_waiting_client_is_served,
     .timeout = 60, .fini = proxy_reap)
{
	struct proxy_opts o = {.mode = "buffers", .threads = 2};
	struct backend b;
	struct proxy px;
	const char *sum;
	int held[2], fd, i;
	char c = 'w';

	backend_start(&b, 0, B_ECHO);
	o.backend_port = b.port;
	o.extra[0] = "--max-conns";
	o.extra[1] = "2";
	proxy_launch(&px, &o);
	for (i = 0; i < 2; i++) {
		held[i] = connect_to(px.port);
		cr_assert(echo_byte(held[i]), "connection %d was not served",
			  i);
	}
	fd = connect_to(px.port);
	cr_assert_eq(send_all(fd, &c, 1), 0);
	/* It waits: for half a second nothing comes (a refusal would be
	 * end of file or a reset, at once). */
	struct pollfd pfd = {.fd = fd, .events = POLLIN};

	cr_assert_eq(poll(&pfd, 1, 500), 0,
		     "over the cap: the client's connection was %s",
		     pfd.revents & POLLIN ? "answered or closed" : "broken");
	/* A session leaves: the waiting client is served. */
	close(held[0]);
	cr_assert_eq(recv_end(fd), 1, "the waiting client was not served");
	cr_assert(echo_byte(fd), "the waiting client was not served");
	close(fd);
	close(held[1]);
	sum = proxy_stop(&px);
	backend_stop(&b);
	cr_assert_eq(summary_count(sum, "refused"), 0, "summary: %s", sum);
	cr_assert_eq(summary_count(sum, "connections"), 3, "summary: %s", sum);
	cr_assert_eq(b.accepted, 3, "the backend saw %d connections",
		     b.accepted);
}

/* ---- two proxies pointed at each other --------------------------------- */

/*
 * A's backend is B, B's is A: every client connection becomes a chain of
 * sessions through both, a loop neither can see. With a descriptor limit
 * of `nofile` each (the default --max-conns follows it) the chain must
 * stop at the cap instead of taking every descriptor, and once the client
 * has gone both must hold what they held before, and still serve: B makes
 * way for a real backend on its port, and a connection through A works.
 * `speak`: the client sends 5 bytes and stays until the chain is long
 * (they run ahead of its end of file: only the cap can stop that chain);
 * else it closes at once.
 */
static void run_loop_once(const char *mode, bool speak, int nofile)
{
	struct proxy_opts oa = {.mode = mode, .threads = 1, .nofile = nofile};
	struct proxy_opts ob = oa;
	struct proxy a, b;
	struct backend be;
	char sum_a[512], sum_b[512];
	int base_a, base_b, now_a, now_b, fd;

	oa.listen_port = ob.backend_port = free_port();
	ob.listen_port = oa.backend_port = free_port();
	proxy_launch(&a, &oa);
	proxy_launch(&b, &ob);
	base_a = proxy_fds_settled(&a);
	base_b = proxy_fds_settled(&b);

	fd = connect_to(a.port);
	if (speak) {
		cr_assert_eq(send_all(fd, "hello", 5), 0);
		proxy_fds_up_to(&a, base_a + 100);
	}
	close(fd);
	/* Settled first: the count may not have risen yet (a chain that
	 * waits for good is as settled as one that has unwound). Then back
	 * to the baseline, and settled there: connections that kept
	 * travelling between the two would not be. */
	proxy_fds_settled(&a);
	proxy_fds_settled(&b);
	proxy_fds_back_to(&a, base_a);
	proxy_fds_back_to(&b, base_b);
	now_a = proxy_fds_settled(&a);
	now_b = proxy_fds_settled(&b);
	cr_assert(now_a <= base_a && now_b <= base_b,
		  "ulimit -n %d: the client left; descriptors held: A %d (%d "
		  "before), B %d (%d before)",
		  nofile, now_a, base_a, now_b, base_b);

	snprintf(sum_b, sizeof(sum_b), "%s", proxy_stop(&b));
	backend_start(&be, ob.listen_port, B_ECHO);
	echo_once(a.port, 70000, 6);
	snprintf(sum_a, sizeof(sum_a), "%s", proxy_stop(&a));
	backend_stop(&be);
	cr_assert_eq(be.accepted, 1);
	if (speak)
		cr_assert_geq(summary_count(sum_a, "refused") +
				  summary_count(sum_b, "refused"),
			      1, "no proxy refused a connection: %s / %s",
			      sum_a, sum_b);
}

/*
 * With two limits, one odd and one even: without a cap, the chain would
 * run out of descriptors either where its next backend socket cannot be
 * made (that session gives up, and the chain unwinds) or where its last
 * connection cannot be accepted (it waits in the listen queue for good,
 * and so does the whole chain), depending on how many were left.
 */
static void run_loop(const char *mode, bool speak)
{
	run_loop_once(mode, speak, 256);
	run_loop_once(mode, speak, 257);
}

Test(proxy, proxies_pointed_at_each_other_release_fds_client_silent_buffers,
     .timeout = 120, .fini = proxy_reap)
{
	run_loop("buffers", false);
}

Test(proxy, proxies_pointed_at_each_other_release_fds_client_spoke_buffers,
     .timeout = 120, .fini = proxy_reap)
{
	run_loop("buffers", true);
}

Test(proxy, proxies_pointed_at_each_other_release_fds_client_silent_splice,
     .timeout = 120, .fini = proxy_reap)
{
	run_loop("splice", false);
}

Test(proxy, proxies_pointed_at_each_other_release_fds_client_spoke_splice,
     .timeout = 120, .fini = proxy_reap)
{
	run_loop("splice", true);
}

/* ---- --idle-timeout ------------------------------------------------------ */

/* The backend's count of connections that saw end of file. */
static int backend_eofs(struct backend *b)
{
	int n;

	pthread_mutex_lock(&b->lock);
	n = b->eofs;
	pthread_mutex_unlock(&b->lock);
	return n;
}

/*
 * A connection that moves nothing for --idle-timeout is closed, both
 * sides: the client sees its end, so does the backend; one that keeps
 * talking (ten times more often than the timeout) is left alone.
 */
static void run_idle(const char *mode)
{
	struct proxy_opts o = {.mode = mode, .threads = 1};
	struct backend b;
	struct proxy px;
	const char *sum;
	int quiet, busy, end, i;

	backend_start(&b, 0, B_ECHO);
	o.backend_port = b.port;
	o.extra[0] = "--idle-timeout";
	o.extra[1] = "1000";
	proxy_launch(&px, &o);
	quiet = connect_to(px.port);
	cr_assert(echo_byte(quiet), "the quiet connection was not served");
	busy = connect_to(px.port);
	for (i = 0; i < 20; i++) {
		cr_assert(echo_byte(busy),
			  "the busy connection was closed "
			  "after %d round trips",
			  i);
		sleep_ms(100);
	}
	/* (the 20 s receive timeout would say it was not closed) */
	end = recv_end(quiet);
	cr_assert(end == 0 || end == -ECONNRESET, "the quiet connection: %s",
		  end > 0 ? "data" : strerror(-end));
	for (i = 0; i < 2000 && backend_eofs(&b) < 1; i++)
		sleep_ms(10);
	cr_assert_eq(backend_eofs(&b), 1, "the backend did not see its end");
	cr_assert(echo_byte(busy), "the busy connection was closed");
	close(quiet);
	close(busy);
	sum = proxy_stop(&px);
	backend_stop(&b);
	cr_assert_eq(summary_count(sum, "closed idle"), 1, "summary: %s", sum);
}

Test(proxy, idle_timeout_closes_both_sides_buffers, .timeout = 60,
     .fini = proxy_reap)
{
	run_idle("buffers");
}

Test(proxy, idle_timeout_closes_both_sides_splice, .timeout = 60,
     .fini = proxy_reap)
{
	run_idle("splice");
}

/* ---- --proxy-protocol ---------------------------------------------------- */

/*
 * The backend connection begins with the PROXY protocol v2 header (as
 * haproxy's proxy-protocol.txt lays it out, built here byte by byte),
 * then the client's bytes: over IPv4 (listening on 127.0.0.1) and IPv6
 * (on ::1; the backend stays on 127.0.0.1: the header tells of the
 * client's connection); an IPv4 client of a wildcard IPv6 listener (its
 * addresses v4-mapped) is told of as IPv4.
 */
static void run_proxy_protocol(bool v6, const char *listen_host)
{
	struct proxy_opts o = {.mode = "buffers", .threads = 1};
	struct sockaddr_storage cl;
	socklen_t cllen = sizeof(cl);
	struct sockaddr_in sin;
	socklen_t len = sizeof(sin);
	uint8_t want[64], got[64 + 5];
	size_t n = 0;
	struct proxy px;
	int lfd, fd, bfd, err;
	uint16_t cport;

	lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	cr_assert_geq(lfd, 0);
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	cr_assert_eq(bind(lfd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	cr_assert_eq(listen(lfd, 8), 0);
	cr_assert_eq(getsockname(lfd, (struct sockaddr *)&sin, &len), 0);
	set_timeouts(lfd, 20); /* the accept below too */
	o.backend_port = ntohs(sin.sin_port);
	o.listen_host = listen_host;
	o.extra[0] = "--proxy-protocol";
	proxy_launch(&px, &o);

	if (v6) {
		struct sockaddr_in6 s6 = {.sin6_family = AF_INET6,
					  .sin6_port = htons(px.port),
					  .sin6_addr = IN6ADDR_LOOPBACK_INIT};

		fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
		cr_assert_geq(fd, 0);
		cr_assert_eq(connect(fd, (struct sockaddr *)&s6, sizeof(s6)), 0,
			     "connect to [::1]:%u: %s", px.port,
			     strerror(errno));
		set_timeouts(fd, 20);
	} else {
		fd = connect_to(px.port);
	}
	cr_assert_eq(getsockname(fd, (struct sockaddr *)&cl, &cllen), 0);
	cport = v6 ? ntohs(((struct sockaddr_in6 *)&cl)->sin6_port)
		   : ntohs(((struct sockaddr_in *)&cl)->sin_port);
	cr_assert_eq(send_all(fd, "hello", 5), 0);

	/* signature, version 2 + PROXY, TCP over IPv4/IPv6, length */
	memcpy(want, "\r\n\r\n\0\r\nQUIT\n", 12);
	n = 12;
	want[n++] = 0x21;
	want[n++] = v6 ? 0x21 : 0x11;
	want[n++] = 0;
	want[n++] = v6 ? 36 : 12;
	for (int i = 0; i < 2; i++) { /* source, destination: loopback */
		if (v6) {
			memset(want + n, 0, 15);
			want[n + 15] = 1;
			n += 16;
		} else {
			memcpy(want + n, "\x7f\0\0\x01", 4);
			n += 4;
		}
	}
	want[n++] = (uint8_t)(cport >> 8);
	want[n++] = (uint8_t)cport;
	want[n++] = (uint8_t)(px.port >> 8);
	want[n++] = (uint8_t)px.port;
	memcpy(want + n, "hello", 5);
	n += 5;

	bfd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
	cr_assert_geq(bfd, 0, "the proxy did not connect: %s", strerror(errno));
	set_timeouts(bfd, 20);
	cr_assert_eq(recv_full(bfd, got, n, &err), n,
		     "the backend got fewer bytes than the header and hello");
	for (size_t i = 0; i < n; i++)
		cr_assert_eq(got[i], want[i],
			     "byte %zu: 0x%02x, the spec says 0x%02x", i,
			     got[i], want[i]);
	/* Nothing more: the client's bytes went once. */
	cr_assert_eq(send_all(bfd, "bye", 3), 0);
	cr_assert_eq(recv_full(fd, got, 3, &err), 3);
	cr_assert_eq(memcmp(got, "bye", 3), 0);
	close(fd);
	cr_assert_eq(recv_end(bfd), 0,
		     "after the client's end: not end of "
		     "file");
	close(bfd);
	close(lfd);
	proxy_stop(&px);
}

Test(proxy, proxy_protocol_v2_header_ipv4, .timeout = 60, .fini = proxy_reap)
{
	run_proxy_protocol(false, NULL);
}

Test(proxy, proxy_protocol_v2_header_ipv4_mapped, .timeout = 60,
     .fini = proxy_reap)
{
	run_proxy_protocol(false, "[::]");
}

Test(proxy, proxy_protocol_v2_header_ipv6, .timeout = 60, .fini = proxy_reap)
{
	run_proxy_protocol(true, "[::1]");
}

/* ---- TLS termination: half-close ------------------------------------------
 */

/*
 * Through a TLS-terminating proxy (--cert/--key), with OpenSSL as the
 * client: its close_notify reaches the backend as end of file (a
 * shutdown of the writing half), the backend still answers, 200 KiB, and
 * its end comes back as the proxy's close_notify (SSL_read says
 * ZERO_RETURN, not a truncated stream).
 */
Test(proxy, tls_half_close_close_notify_both_ways, .timeout = 60,
     .fini = proxy_reap)
{
	char tmp[] = "/tmp/keel-proxy-tls-XXXXXX", cmd[1024], cert[256],
	     key[256];
	struct proxy_opts o = {.mode = "buffers", .threads = 1};
	char *rx = malloc(REPLY_LEN), head[64];
	struct backend b;
	struct proxy px;
	size_t got = 0;
	SSL_CTX *ctx;
	SSL *ssl;
	int fd, n = 0, hl;

	cr_assert_not_null(rx);
	cr_assert_not_null(mkdtemp(tmp));
	snprintf(cert, sizeof(cert), "%s/cert.pem", tmp);
	snprintf(key, sizeof(key), "%s/key.pem", tmp);
	snprintf(cmd, sizeof(cmd),
		 "openssl req -x509 -newkey ec -pkeyopt "
		 "ec_paramgen_curve:P-256 -nodes -keyout %s -out %s -days 2 "
		 "-subj /CN=localhost -addext subjectAltName=DNS:localhost "
		 "2>/dev/null",
		 key, cert);
	if (system(cmd) != 0)
		cr_skip_test("openssl cannot make a certificate");
	backend_start(&b, 0, B_REPLY);
	o.backend_port = b.port;
	o.extra[0] = "--cert";
	o.extra[1] = cert;
	o.extra[2] = "--key";
	o.extra[3] = key;
	proxy_launch(&px, &o);

	ctx = SSL_CTX_new(TLS_client_method());
	cr_assert_not_null(ctx);
	cr_assert_eq(SSL_CTX_load_verify_locations(ctx, cert, NULL), 1);
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	ssl = SSL_new(ctx);
	cr_assert_not_null(ssl);
	fd = connect_to(px.port);
	SSL_set_fd(ssl, fd);
	SSL_set_tlsext_host_name(ssl, "localhost");
	SSL_set1_host(ssl, "localhost");
	cr_assert_eq(SSL_connect(ssl), 1, "the TLS handshake failed");
	cr_assert_eq(SSL_write(ssl, "hello", 5), 5);
	/* close_notify: our writing half ends; we go on reading. */
	cr_assert_geq(SSL_shutdown(ssl), 0);
	while (got < REPLY_LEN) {
		n = SSL_read(ssl, rx + got, (int)(REPLY_LEN - got));
		if (n <= 0)
			break;
		got += (size_t)n;
	}
	cr_assert_eq(got, REPLY_LEN, "reply: %zu of %zu bytes", got, REPLY_LEN);
	hl = snprintf(head, sizeof(head), "got 5\n");
	cr_assert_eq(memcmp(rx, head, (size_t)hl), 0,
		     "the backend read something else: %.20s", rx);
	n = SSL_read(ssl, head, sizeof(head));
	cr_assert_eq(SSL_get_error(ssl, n), SSL_ERROR_ZERO_RETURN,
		     "after the reply: not close_notify (SSL_read %d, error "
		     "%d)",
		     n, SSL_get_error(ssl, n));
	SSL_free(ssl);
	SSL_CTX_free(ctx);
	close(fd);
	proxy_stop(&px);
	backend_stop(&b);
	cr_assert_eq(b.eofs, 1, "the backend did not see end of file");
	cr_assert_eq(b.last_read, 5, "the backend read %zu bytes", b.last_read);
	unlink(cert);
	unlink(key);
	rmdir(tmp);
	free(rx);
}
/* ---- several backends: --retries ----------------------------------------- */

/*
 * Two backends, the first refusing (nothing listens there) or silent (its
 * listen queue full: the connect runs into --connect-timeout), the second
 * an echo; health checks off, so the first stays in the rotation. Every
 * client is served: a session whose first pick fails moves on to the
 * other backend (nothing was sent to the first), counted. With --retries
 * 0 a client whose pick fails is closed instead.
 */
static void run_retry(bool silent, const char *retries, int clients)
{
	struct proxy_opts o = {.mode = "buffers", .threads = 1};
	struct silent_backend sb;
	struct backend b;
	struct proxy px;
	char first[64];
	const char *sum;
	int served = 0, fd;

	backend_start(&b, 0, B_ECHO);
	if (silent) {
		silent_backend_start(&sb);
		o.backend_port = sb.port;
	} else {
		o.backend_port = free_port();
	}
	snprintf(first, sizeof(first), "127.0.0.1:%u", b.port);
	o.extra[0] = "-b";
	o.extra[1] = first;
	o.extra[2] = "--health";
	o.extra[3] = "off";
	o.extra[4] = "--connect-timeout";
	o.extra[5] = "200";
	o.extra[6] = "--retries";
	o.extra[7] = retries;
	proxy_launch(&px, &o);
	for (int i = 0; i < clients; i++) {
		fd = connect_to(px.port);
		served += echo_byte(fd);
		close(fd);
	}
	sum = proxy_stop(&px);
	backend_stop(&b);
	if (silent)
		silent_backend_stop(&sb);
	if (strcmp(retries, "0")) {
		cr_assert_eq(served, clients, "%d of %d clients served", served,
			     clients);
		cr_assert_geq(summary_count(sum, "connects retried"), 1,
			      "summary: %s", sum);
		cr_assert_eq(summary_count(sum, "clients with no backend"), 0,
			     "summary: %s", sum);
	} else {
		cr_assert_lt(served, clients, "every client was served");
		cr_assert_eq(summary_count(sum, "connects retried"), 0,
			     "summary: %s", sum);
		cr_assert_eq(summary_count(sum, "clients with no backend"),
			     clients - served, "summary: %s", sum);
	}
	cr_assert_geq(summary_count(sum, "backend failures"), 1, "summary: %s",
		      sum);
}

Test(proxy, retry_on_the_next_backend_when_one_refuses, .timeout = 60,
     .fini = proxy_reap)
{
	run_retry(false, "2", 6);
}

Test(proxy, retry_on_the_next_backend_after_a_connect_timeout, .timeout = 60,
     .fini = proxy_reap)
{
	run_retry(true, "2", 4);
}

Test(proxy, no_retry_with_retries_0, .timeout = 60, .fini = proxy_reap)
{
	run_retry(false, "0", 6);
}

/* ---- --shed-target: CoDel load shedding ---------------------------------- */

/* One echo through the proxy; false if the proxy closed the connection
 * first (shed), asserting on anything else. */
static bool echo_or_shed(uint16_t port, unsigned seed)
{
	char tx[100], rx[100];
	int fd = connect_to(port), err;
	size_t got;

	kt_pattern_fill(tx, sizeof(tx), 0, seed);
	if (send_all(fd, tx, sizeof(tx))) {
		close(fd); /* closed under us: shed */
		return false;
	}
	got = recv_full(fd, rx, sizeof(rx), &err);
	close(fd);
	if (got == 0)
		return false;
	cr_assert_eq(got, sizeof(rx), "echo: %zu bytes (%s)", got,
		     err ? strerror(err) : "end of file");
	cr_assert_eq(memcmp(tx, rx, sizeof(tx)), 0, "echo: wrong bytes");
	return true;
}

/*
 * A queue built honestly: the proxy is stopped (SIGSTOP, as a CPU stall
 * would) while BURST clients connect and leave, so its one loop comes back
 * to a full listen queue and spawns sessions faster than it can start
 * them. With a target of 1 us and an interval of 1 ms the delays stay
 * above target for the interval: sessions are shed (closed before any
 * backend connect). Without the option none is. Once the burst is over,
 * clients are echoed as usual (a few tries while the burst drains).
 */
static void run_shed(bool shed)
{
	enum { BURST = 600, ECHOES = 3 };
	struct proxy_opts o = {.mode = "buffers", .threads = 1};
	struct backend b;
	struct proxy px;
	const char *sum;
	unsigned ok = 0, tries = 0;

	backend_start(&b, 0, B_ECHO);
	o.backend_port = b.port;
	if (shed) {
		o.extra[0] = "--shed-target";
		o.extra[1] = "0.001";
		o.extra[2] = "--shed-interval";
		o.extra[3] = "1";
	}
	proxy_launch(&px, &o);
	cr_assert_eq(kill(px.pid, SIGSTOP), 0);
	for (int i = 0; i < BURST; i++)
		close(connect_to(px.port));
	cr_assert_eq(kill(px.pid, SIGCONT), 0);
	/* Then normal load: one client at a time, each after a pause longer
	 * than the interval (the shedder sees the queue has drained). */
	while (ok < ECHOES) {
		cr_assert_lt(tries++, 200, "clients still shed after %u tries",
			     tries);
		sleep_ms(20);
		if (echo_or_shed(px.port, tries))
			ok++;
		else
			ok = 0;
	}
	sum = proxy_stop(&px);
	backend_stop(&b);
	cr_assert_eq(summary_count(sum, "connections"), BURST + tries,
		     "summary: %s", sum);
	if (shed)
		cr_assert_gt(summary_count(sum, "shed"), 0, "summary: %s", sum);
	else
		cr_assert_eq(summary_count(sum, "shed"), 0, "summary: %s", sum);
	/* The burst's clients had gone; no session shed or not reached the
	 * backend for them: only the echoes did. */
	cr_assert_leq(b.accepted, (int)tries, "summary: %s", sum);
	cr_assert_geq(b.accepted, ECHOES);
}

Test(proxy, shed_target_closes_new_clients_while_a_queue_stands, .timeout = 120,
     .fini = proxy_reap)
{
	run_shed(true);
}

Test(proxy, no_shedding_without_shed_target, .timeout = 120, .fini = proxy_reap)
{
	run_shed(false);
}
