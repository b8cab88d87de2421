/* SPDX-License-Identifier: MIT */
/*
 * echo: a TCP echo server on keel, the example to copy.
 *
 *	echo [--threads N] [--metrics MPORT] [ADDR] PORT
 *	echo --port PORT [--threads N]     (the peer harness's style)
 *
 * One loop per thread (default: one per CPU), each with its own
 * SO_REUSEPORT listener, one acceptor task (a multishot accept) and one
 * task per connection. Connections receive through a multishot recv into
 * the loop's provided-buffer ring and send the received buffer itself back
 * (no copy), returning it to the ring when the send has completed; so an
 * idle connection holds no buffer, only its small frame. Nothing is shared
 * between loops: each counts its own connections and bytes.
 *
 * --plain switches to the simple shape (recv into a 16 KiB buffer in the
 * connection's frame, send it back) for comparison; --batch-wait NS sets
 * how long a busy loop may wait to batch completions (0: never; without
 * it, the library's default; see keel_loop_opts.batch_wait_ns); --bufs N and
 * --buf-size BYTES size each loop's ring (default 1024 x 4 KiB); --direct
 * accepts into the ring's file table (registered descriptors: no per-op
 * file lookup in the kernel); --no-idle-poll keeps an idle connection's
 * multishot recv armed instead of parking it on a poll after --idle-ms
 * (KEEL_LOOP_NO_IDLE_POLL: about 600 bytes more of kernel memory and 120
 * of user space per idle connection, one completion less when it wakes
 * up; no hibernation either).
 *
 * Hibernation: a connection that received nothing for --idle-ms MS to
 * twice that (default: the library's, 250; the loop's idle sweep, which
 * also gives back the frames hibernated tasks left) is told so by its stream
 * (KEEL_RECV_IDLE_RETURN), hands its socket to the loop (keel_hibernate:
 * a 32-byte record and a poll) and its task ends, frame and all; when the
 * socket is readable again, a fresh task takes it. --no-hibernate keeps
 * the task, its stream parked on a poll. A summary line counts
 * hibernations and wakes.
 *
 * Shutdown is keel's: on SIGINT or SIGTERM the runtime cancels every
 * loop's root token, so each pending accept and recv returns -ECANCELED,
 * every task closes its socket (keel_close runs under a cancelled token)
 * and exits, every loop drains, and the process exits 0. A second signal
 * kills it. SIGUSR1 prints a task dump of every loop.
 *
 * --metrics MPORT serves the runtime's counters at
 * http://127.0.0.1:MPORT/metrics (Prometheus text format), and its health
 * at http://127.0.0.1:MPORT/health (keel/health.h's JSON; 503 when
 * unhealthy): each loop reports whether it accepts, and the connections
 * are degraded while --max-conns refuses some.
 *
 * --max-conns N caps the connections open at once (all loops together:
 * the one count they share). A connection over the cap is accepted and
 * closed at once, as one is when there is no memory for its task.
 */
#include <errno.h>
#include <getopt.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <keel.h>

#define LISTEN_BACKLOG	1024
#define ACCEPT_RETRY_NS (10 * 1000 * 1000) /* out of fds: wait 10 ms */

/* One per loop, touched only by that loop's thread while it runs. */
struct shard {
	int listen_fd;
	struct keel_bufring *ring;
	uint64_t connections;
	uint64_t bytes;
	uint64_t refused; /* over --max-conns, or no memory for a task */
	uint64_t hibernations, wakes;
	int error; /* a fatal accept error, or 0 */
};

/* The shard of this thread's loop (one loop per thread), so that a
 * connection's frame need not point at it. */
static __thread struct shard *my_shard;

/* The fast path: what an idle connection costs is this frame (160 bytes
 * on x86-64, an allocator class of its own). Its socket is the stream's
 * (keel_recv_stream_fd), once the acceptor has handed it over in fd. */
struct conn {
	struct keel_task task;
	union {
		int fd; /* from the acceptor, until the stream is open */
		struct keel_recv_stream rs;
	};
	struct keel_buf buf; /* the chunk being sent back */
};

/* --plain: recv into a buffer in the frame, send it back. */
struct plain_conn {
	struct keel_task task;
	int fd;
	/* Handed to the kernel by recv and send: it lives in the frame. */
	char buf[16384];
};

struct acceptor {
	struct keel_task task;
	struct shard *shard;
	struct keel_accept_stream as;
	int refused; /* a socket being closed for want of a frame */
};

struct main_frame {
	struct keel_task task;
	unsigned i;
};

struct metrics_server {
	struct keel_task task;
	int fd;
	/* Out of fds, a stream pauses accepting; a plain accept would spin. */
	struct keel_accept_stream as;
};

struct metrics_conn {
	struct keel_task task;
	int fd;
	char req[2048];
	char *resp;
	size_t len;
};

static struct shard *shards;
static unsigned nshards;
static int metrics_fd = -1;
static bool plain_mode;
static bool direct_fds;	  /* --direct: sockets in the ring's file table */
static bool no_idle_poll; /* --no-idle-poll */
static bool no_hibernate; /* --no-hibernate */
static long idle_ms;	  /* --idle-ms; 0: the library's default */
static struct keel_bufring_opts ring_opts = {.count = 1024, .size = 4096};
static unsigned max_conns;	   /* --max-conns; 0: no cap */
static atomic_uint open_conns;	   /* all loops together, under a cap */
static struct keel_health *health; /* every loop reports into it */
static atomic_bool capped;	   /* "connections" reported degraded */

static int conn_step(struct keel_task *t);
static int plain_conn_step(struct keel_task *t);
static int acceptor_step(struct keel_task *t);
static int main_step(struct keel_task *t);
static int metrics_server_step(struct keel_task *t);
static int metrics_conn_step(struct keel_task *t);

static KEEL_TASK_TYPE(conn_task, struct conn, task, conn_step);
static KEEL_TASK_TYPE(plain_conn_task, struct plain_conn, task,
		      plain_conn_step);
static KEEL_TASK_TYPE(acceptor_task, struct acceptor, task, acceptor_step);
static KEEL_TASK_TYPE(echo_main, struct main_frame, task, main_step);
static KEEL_TASK_TYPE(metrics_server_task, struct metrics_server, task,
		      metrics_server_step);
static KEEL_TASK_TYPE(metrics_conn_task, struct metrics_conn, task,
		      metrics_conn_step);

/* Room for one more connection? Takes it if so. */
static bool conn_admit(void)
{
	char why[64];

	if (!max_conns)
		return true;
	if (atomic_fetch_add_explicit(&open_conns, 1, memory_order_relaxed) <
	    max_conns) {
		/* Only a change of state takes the registry's lock. */
		if (atomic_load_explicit(&capped, memory_order_relaxed) &&
		    atomic_exchange(&capped, false))
			keel_health_set(health, "connections",
					KEEL_HEALTH_HEALTHY, NULL);
		return true;
	}
	atomic_fetch_sub_explicit(&open_conns, 1, memory_order_relaxed);
	if (!atomic_exchange(&capped, true)) {
		snprintf(why, sizeof(why),
			 "refusing connections at --max-conns %u", max_conns);
		keel_health_set(health, "connections", KEEL_HEALTH_DEGRADED,
				why);
	}
	return false;
}

static void conn_leave(void)
{
	if (max_conns)
		atomic_fetch_sub_explicit(&open_conns, 1, memory_order_relaxed);
}

/* Open the stream on the socket the acceptor (or conn_wake) left in its
 * place; on failure the socket is back in c->fd. */
static int conn_open(struct keel_task *t, struct conn *c)
{
	int fd = c->fd;
	int err =
	    keel_recv_stream_open(t, &c->rs, fd, my_shard->ring,
				  no_hibernate ? 0 : KEEL_RECV_IDLE_RETURN);

	if (err)
		c->fd = fd;
	return err;
}

/* A hibernated connection's socket is readable again (> 0), or the loop
 * goes (-ECANCELED), or its poll failed: a fresh task for it, or close. */
static void conn_wake(struct keel_loop *loop, int fd, int res, void *arg)
{
	struct conn *c =
	    res > 0 ? keel_spawn(loop, &conn_task, KEEL_PRIO_NORMAL) : NULL;

	(void)arg;
	if (c) {
		c->fd = fd;
		my_shard->wakes++;
		return;
	}
	/* No task to await keel_close(): either kind of socket is closed
	 * on the loop's ring (or with the ring, when the loop goes). */
	keel_close_detached(loop, fd);
	conn_leave();
}

/* The stream went idle: hand the socket to the loop. False: the loop
 * would not take it, and the next keel_recv_next() receives again. */
static bool conn_hibernate(struct keel_task *t, struct conn *c)
{
	if (keel_hibernate(keel_task_loop(t), keel_recv_stream_fd(&c->rs),
			   conn_wake, NULL, NULL))
		return false;
	keel_recv_stream_close(&c->rs);
	my_shard->hibernations++;
	return true;
}

static int conn_step(struct keel_task *t)
{
	struct conn *c = keel_container_of(t, struct conn, task);

	KEEL_BEGIN(t);
	if (conn_open(t, c)) {
		KEEL_AWAIT(t, keel_close(t, c->fd));
		goto out;
	}
	for (;;) {
		KEEL_AWAIT(t, keel_recv_next(t, &c->rs, &c->buf));
		if (keel_res(t) <= 0) {
			if (keel_res(t) != -EAGAIN)
				break; /* end of file, an error, the shutdown */
			/* Idle, nothing queued. */
			if (conn_hibernate(t, c))
				KEEL_EXIT(t, 0); /* the socket is the loop's */
			continue;
		}
		my_shard->bytes += c->buf.len;
		/* The kernel sends from the ring buffer; it goes back to the
		 * ring once the send has completed. */
		KEEL_AWAIT(t, keel_send_all(t, keel_recv_stream_fd(&c->rs),
					    c->buf.data, c->buf.len,
					    MSG_NOSIGNAL));
		keel_buf_release(&c->buf);
		if (keel_res(t) < 0)
			break;
	}
	keel_recv_stream_close(&c->rs);
	KEEL_AWAIT(t, keel_close(t, keel_recv_stream_fd(&c->rs)));
out:
	conn_leave();
	KEEL_END(t);
}

static int plain_conn_step(struct keel_task *t)
{
	struct plain_conn *c = keel_container_of(t, struct plain_conn, task);

	KEEL_BEGIN(t);
	for (;;) {
		KEEL_AWAIT(t, keel_recv(t, c->fd, c->buf, sizeof(c->buf), 0));
		if (keel_res(t) <= 0)
			break; /* end of file, an error, or the shutdown */
		my_shard->bytes += (uint64_t)keel_res(t);
		KEEL_AWAIT(t, keel_send_all(t, c->fd, c->buf,
					    (size_t)keel_res(t), MSG_NOSIGNAL));
		if (keel_res(t) < 0)
			break;
	}
	KEEL_AWAIT(t, keel_close(t, c->fd));
	conn_leave();
	KEEL_END(t);
}

static bool out_of_fds(int err)
{
	return err == -EMFILE || err == -ENFILE || err == -ENOBUFS ||
	       err == -ENOMEM;
}

/* This loop's component in the health registry: "loop N". */
static void report_loop(const struct shard *s, enum keel_health_state state,
			int err)
{
	char name[32];

	snprintf(name, sizeof(name), "loop %u", (unsigned)(s - shards));
	keel_health_set(health, name, state,
			err ? keel_strerror(err) : "accepting");
}

static int acceptor_step(struct keel_task *t)
{
	struct acceptor *a = keel_container_of(t, struct acceptor, task);
	struct shard *s = a->shard;

	KEEL_BEGIN(t);
	my_shard = s; /* its connections run on this thread */
	if (plain_mode)
		goto plain;
	/* The ring is registered from the loop's own thread (the ring is
	 * SINGLE_ISSUER). */
	s->error = keel_bufring_create(keel_task_loop(t), &ring_opts, &s->ring);
	if (!s->error)
		s->error = keel_accept_stream_open(
		    t, &a->as, s->listen_fd,
		    direct_fds ? KEEL_ACCEPT_DIRECT : 0);
	if (s->error) {
		report_loop(s, KEEL_HEALTH_UNHEALTHY, s->error);
		keel_runtime_shutdown(keel_runtime_current());
		goto done;
	}
	report_loop(s, KEEL_HEALTH_HEALTHY, 0);
	for (;;) {
		/* EMFILE & co pause the stream by themselves (backoff). */
		KEEL_AWAIT(t, keel_accept_next(t, &a->as));
		int fd = keel_res(t);

		if (fd < 0) {
			if (fd != -ECANCELED && fd != -ETIMEDOUT) {
				s->error = fd;
				report_loop(s, KEEL_HEALTH_UNHEALTHY, fd);
				keel_runtime_shutdown(keel_runtime_current());
			}
			break; /* else the runtime is shutting down */
		}
		if (!direct_fds) /* a direct socket inherits the listener's */
			keel_tcp_nodelay(fd);
		struct conn *c = NULL;

		if (conn_admit()) {
			c = keel_spawn(keel_task_loop(t), &conn_task,
				       KEEL_PRIO_NORMAL);
			if (!c)
				conn_leave();
		}
		if (!c) {
			/* Over --max-conns, or out of memory: refuse this
			 * one. A direct socket is a slot in the ring's file
			 * table, which close(2) does not know: keel_close
			 * releases either kind. */
			s->refused++;
			a->refused = fd;
			KEEL_AWAIT(t, keel_close(t, a->refused));
			continue;
		}
		c->fd = fd;
		s->connections++;
	}
	keel_accept_stream_close(&a->as);
	goto done;
plain:
	report_loop(s, KEEL_HEALTH_HEALTHY, 0);
	for (;;) {
		KEEL_AWAIT(t, keel_accept(t, s->listen_fd, NULL, NULL, 0));
		int fd = keel_res(t);

		if (fd == -ECANCELED || fd == -ETIMEDOUT)
			break; /* the runtime is shutting down */
		if (out_of_fds(fd)) {
			/* Back off, never spin: a connection will close. */
			KEEL_AWAIT(t, keel_sleep(t, ACCEPT_RETRY_NS));
			continue;
		}
		if (fd == -EINTR || fd == -ECONNABORTED || fd == -EAGAIN)
			continue;
		if (fd < 0) {
			s->error = fd;
			report_loop(s, KEEL_HEALTH_UNHEALTHY, fd);
			keel_runtime_shutdown(keel_runtime_current());
			break;
		}
		keel_tcp_nodelay(fd);
		struct plain_conn *c = NULL;

		if (conn_admit()) {
			c = keel_spawn(keel_task_loop(t), &plain_conn_task,
				       KEEL_PRIO_NORMAL);
			if (!c)
				conn_leave();
		}
		if (!c) {
			/* Over --max-conns, or out of memory: refuse this
			 * one (a plain socket: never a direct one). */
			s->refused++;
			close(fd);
			continue;
		}
		c->fd = fd;
		s->connections++;
	}
done:
	KEEL_AWAIT(t, keel_close(t, s->listen_fd));
	KEEL_END(t);
}

/* ---- /metrics ---------------------------------------------------------- */

static char *render_metrics(size_t *len)
{
	struct keel_runtime *rt = keel_runtime_current();
	unsigned n = keel_runtime_size(rt);
	struct keel_loop *loops[256];
	size_t cap = 16384;

	if (n > 256)
		n = 256;
	for (unsigned i = 0; i < n; i++)
		loops[i] = keel_runtime_loop(rt, i);
	for (;;) {
		char *body = malloc(cap);

		if (!body)
			return NULL;
		/* Other loops' counters are read as they are: a snapshot. */
		size_t need = keel_metrics_render(loops, n, body, cap);

		if (need < cap) {
			*len = need;
			return body;
		}
		free(body);
		cap = need + 1;
	}
}

/* The health registry's JSON, and whether it says unhealthy. */
static char *render_health(size_t *len, bool *unhealthy)
{
	size_t need = keel_health_render_json(health, NULL, 0);
	char *body = malloc(need + 1);

	if (!body)
		return NULL;
	/* Reports may come in meanwhile: never more than was asked for. */
	size_t got = keel_health_render_json(health, body, need + 1);

	*len = got < need ? got : need;
	*unhealthy = !strncmp(body, "{\"status\":\"unhealthy\"", 21);
	return body;
}

/* GET /health gets the health, anything else the metrics. */
static bool wants_health(const char *req)
{
	static const char get[] = "GET /health";
	size_t n = sizeof(get) - 1;

	return !strncmp(req, get, n) &&
	       (req[n] == ' ' || req[n] == '?' || req[n] == '\r');
}

static int metrics_conn_step(struct keel_task *t)
{
	struct metrics_conn *m =
	    keel_container_of(t, struct metrics_conn, task);

	KEEL_BEGIN(t);
	KEEL_AWAIT(t, keel_recv(t, m->fd, m->req, sizeof(m->req) - 1, 0));
	if (keel_res(t) > 0) {
		char head[160];
		size_t blen = 0;
		bool unhealthy = false;

		m->req[keel_res(t)] = '\0';
		bool is_health = wants_health(m->req);
		char *body = is_health ? render_health(&blen, &unhealthy)
				       : render_metrics(&blen);

		if (body) {
			int h = snprintf(
			    head, sizeof(head),
			    "HTTP/1.0 %s\r\nContent-Type: %s\r\n"
			    "Content-Length: %zu\r\n\r\n",
			    unhealthy ? "503 Service Unavailable" : "200 OK",
			    is_health ? "application/json"
				      : "text/plain; version=0.0.4",
			    blen);

			m->resp = malloc((size_t)h + blen);
			if (m->resp) {
				memcpy(m->resp, head, (size_t)h);
				memcpy(m->resp + h, body, blen);
				m->len = (size_t)h + blen;
			}
			free(body);
		}
		if (m->resp)
			KEEL_AWAIT(t, keel_send_all(t, m->fd, m->resp, m->len,
						    MSG_NOSIGNAL));
	}
	free(m->resp);
	KEEL_AWAIT(t, keel_close(t, m->fd));
	KEEL_END(t);
}

static int metrics_server_step(struct keel_task *t)
{
	struct metrics_server *s =
	    keel_container_of(t, struct metrics_server, task);

	KEEL_BEGIN(t);
	if (keel_accept_stream_open(t, &s->as, s->fd, 0))
		goto out; /* no metrics, but echo goes on */
	for (;;) {
		KEEL_AWAIT(t, keel_accept_next(t, &s->as));
		if (keel_res(t) < 0)
			break; /* the shutdown, or a fatal error */
		struct metrics_conn *m = keel_spawn(
		    keel_task_loop(t), &metrics_conn_task, KEEL_PRIO_LOW);

		if (m)
			m->fd = keel_res(t);
		else
			close(keel_res(t));
	}
	keel_accept_stream_close(&s->as);
out:
	KEEL_AWAIT(t, keel_close(t, s->fd));
	KEEL_END(t);
}

/* ---- the main task ----------------------------------------------------- */

static void init_acceptor(void *frame, void *arg)
{
	((struct acceptor *)frame)->shard = arg;
}

static int main_step(struct keel_task *t)
{
	struct main_frame *m = keel_container_of(t, struct main_frame, task);
	struct keel_runtime *rt = keel_runtime_current();

	KEEL_BEGIN(t);
	for (m->i = 0; m->i < nshards; m->i++)
		if (keel_spawn_on(keel_runtime_loop(rt, m->i), &acceptor_task,
				  KEEL_PRIO_HIGH, init_acceptor, &shards[m->i]))
			KEEL_EXIT(t, 1);
	if (metrics_fd >= 0) {
		struct metrics_server *ms = keel_spawn(
		    keel_task_loop(t), &metrics_server_task, KEEL_PRIO_LOW);

		if (ms)
			ms->fd = metrics_fd;
	}
	/* Until the runtime shuts down, which cancels this sleep. */
	KEEL_AWAIT(t, keel_sleep(t, UINT64_MAX / 2));
	KEEL_END(t);
}

static void usage(FILE *out)
{
	fprintf(out,
		"usage: echo [--threads N] [--metrics MPORT] [--plain]\n"
		"            [--batch-wait NS] [--bufs N] [--buf-size BYTES]\n"
		"            [--direct] [--no-idle-poll] [--no-hibernate]\n"
		"            [--idle-ms MS] [--max-conns N]\n"
		"            [ADDR] PORT\n"
		"       echo --port PORT [--threads N]\n");
}

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
	static const struct option longopts[] = {
	    {"port", required_argument, NULL, 'p'},
	    {"threads", required_argument, NULL, 't'},
	    {"metrics", required_argument, NULL, 'm'},
	    {"plain", no_argument, NULL, 'P'},
	    {"direct", no_argument, NULL, 'D'},
	    {"no-idle-poll", no_argument, NULL, 'I'},
	    {"no-hibernate", no_argument, NULL, 'H'},
	    {"idle-ms", required_argument, NULL, 'i'},
	    {"batch-wait", required_argument, NULL, 'w'},
	    {"bufs", required_argument, NULL, 'b'},
	    {"buf-size", required_argument, NULL, 'B'},
	    {"max-conns", required_argument, NULL, 'M'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	const char *addr = "127.0.0.1";
	long port = -1, threads = 0, mport = -1, batch_wait = -1, cap = 0;
	int opt;

	while ((opt = getopt_long(argc, argv, "p:t:m:PDIHi:w:b:B:M:h", longopts,
				  NULL)) != -1) {
		switch (opt) {
		case 'p':
			port = parse_number(optarg, 0, 65535);
			break;
		case 't':
			threads = parse_number(optarg, 1, 1024);
			break;
		case 'm':
			mport = parse_number(optarg, 1, 65535);
			break;
		case 'P':
			plain_mode = true;
			break;
		case 'D':
			direct_fds = true;
			break;
		case 'I':
			no_idle_poll = true;
			break;
		case 'H':
			no_hibernate = true;
			break;
		case 'i':
			idle_ms = parse_number(optarg, 1, 3600 * 1000);
			break;
		case 'w':
			batch_wait = parse_number(optarg, 0, 10000000);
			if (batch_wait < 0) {
				fprintf(stderr,
					"echo: bad value for --batch-wait: %s "
					"(ns, 0 to 10000000; 0: off)\n",
					optarg);
				return 2;
			}
			break;
		case 'b':
		case 'B': {
			long v = parse_number(optarg, 1,
					      opt == 'b' ? 32768 : 1 << 24);

			if (v < 0 || (opt == 'b' && (v & (v - 1)))) {
				fprintf(
				    stderr,
				    "echo: bad value for --%s: %s (%s)\n",
				    opt == 'b' ? "bufs" : "buf-size", optarg,
				    opt == 'b' ? "a power of two up to 32768"
					       : "1 to 16 MiB");
				return 2;
			}
			if (opt == 'b')
				ring_opts.count = (uint32_t)v;
			else
				ring_opts.size = (uint32_t)v;
			break;
		}
		case 'M':
			cap = parse_number(optarg, 1, 1 << 24);
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
		if ((opt == 'p' && port < 0) || (opt == 't' && threads < 0) ||
		    (opt == 'm' && mport < 0) || (opt == 'M' && cap < 0) ||
		    (opt == 'i' && idle_ms < 0)) {
			fprintf(stderr, "echo: bad value for --%s: %s\n",
				opt == 'p'   ? "port"
				: opt == 't' ? "threads"
				: opt == 'm' ? "metrics"
				: opt == 'i' ? "idle-ms"
					     : "max-conns",
				optarg);
			return 2;
		}
	}
	if (argc - optind == 2) {
		addr = argv[optind];
		port = parse_number(argv[optind + 1], 0, 65535);
	} else if (argc - optind == 1) {
		port = parse_number(argv[optind], 0, 65535);
	} else if (argc - optind > 2 || port < 0) {
		usage(stderr);
		return 2;
	}
	if (port < 0) {
		fprintf(stderr, "echo: bad port: %s\n", argv[argc - 1]);
		return 2;
	}
	max_conns = (unsigned)cap;

	struct keel_runtime_opts ropts = {.threads = (unsigned)threads};

	if (batch_wait >= 0)
		ropts.loop.batch_wait_ns =
		    batch_wait ? (unsigned)batch_wait : KEEL_BATCH_WAIT_OFF;
	if (no_idle_poll)
		ropts.loop.flags |= KEEL_LOOP_NO_IDLE_POLL;
	ropts.loop.idle_ms = (unsigned)idle_ms;
	struct keel_runtime *rt;
	int err = keel_runtime_create(&rt, &ropts);

	if (err) {
		fprintf(stderr, "echo: %s\n", keel_loop_explain(err));
		return 1;
	}
	nshards = keel_runtime_size(rt);
	shards = calloc(nshards, sizeof(*shards));
	if (!shards) {
		fprintf(stderr, "echo: out of memory\n");
		return 1;
	}
	/* One listener per loop on the same port: the kernel spreads the
	 * connections (the first one picks the port when it is 0). */
	for (unsigned i = 0; i < nshards; i++) {
		int fd = keel_tcp_listen(addr, (uint16_t)port, LISTEN_BACKLOG,
					 KEEL_NET_REUSEPORT);

		if (fd < 0) {
			fprintf(stderr, "echo: cannot listen on %s:%ld: %s\n",
				addr, port, keel_strerror(fd));
			return 1;
		}
		if (port == 0)
			port = keel_net_local_port(fd);
		/* Accepted sockets inherit TCP_NODELAY: direct ones cannot
		 * be given it with setsockopt(2). */
		if (direct_fds)
			keel_tcp_nodelay(fd);
		shards[i].listen_fd = fd;
	}
	if (mport > 0) {
		metrics_fd =
		    keel_tcp_listen("127.0.0.1", (uint16_t)mport, 64, 0);
		if (metrics_fd < 0) {
			fprintf(stderr,
				"echo: cannot listen on 127.0.0.1:%ld "
				"for metrics: %s\n",
				mport, keel_strerror(metrics_fd));
			return 1;
		}
	}
	if (keel_health_new(&health)) {
		fprintf(stderr, "echo: out of memory\n");
		return 1;
	}
	printf("echo: listening on %s:%ld (%u loops)\n", addr, port, nshards);
	fflush(stdout);

	int status = keel_runtime_run(rt, &echo_main, NULL, NULL);
	uint64_t conns = 0, bytes = 0, refused = 0, hibernations = 0, wakes = 0;
	struct keel_loop_stats sum = {0};
	int fatal = 0;

	/* The ring's own counters: syscalls and completions per request. */
	for (unsigned i = 0; i < nshards; i++) {
		struct keel_loop_stats st;

		keel_runtime_loop_stats(rt, i, &st);
		sum.enters += st.enters;
		sum.cqes += st.cqes;
		sum.sqes += st.sqes;
		sum.chunks_lent += st.chunks_lent;
		sum.enobufs += st.enobufs;
		sum.multishot_rearms += st.multishot_rearms;
		sum.batch_waits += st.batch_waits;
		sum.batch_short += st.batch_short;
	}

	/* Every loop has stopped: the shards are ours to read. */
	for (unsigned i = 0; i < nshards; i++) {
		conns += shards[i].connections;
		bytes += shards[i].bytes;
		refused += shards[i].refused;
		hibernations += shards[i].hibernations;
		wakes += shards[i].wakes;
		if (shards[i].error && !fatal)
			fatal = shards[i].error;
	}
	keel_runtime_destroy(rt);
	keel_health_free(health);
	free(shards);
	printf("echo: served %llu connections, echoed %llu bytes, refused %llu "
	       "connections\n",
	       (unsigned long long)conns, (unsigned long long)bytes,
	       (unsigned long long)refused);
	printf("echo: idle connections: %llu hibernations, %llu wakes\n",
	       (unsigned long long)hibernations, (unsigned long long)wakes);
	if (sum.chunks_lent)
		printf("echo: ring: %llu enters, %llu SQEs, %llu CQEs for %llu "
		       "received chunks: %.3f enters and %.2f CQEs per chunk, "
		       "%.1f CQEs per enter; %llu ENOBUFS, %llu re-arms; "
		       "%llu batched waits (%llu short)\n",
		       (unsigned long long)sum.enters,
		       (unsigned long long)sum.sqes,
		       (unsigned long long)sum.cqes,
		       (unsigned long long)sum.chunks_lent,
		       (double)sum.enters / (double)sum.chunks_lent,
		       (double)sum.cqes / (double)sum.chunks_lent,
		       sum.enters ? (double)sum.cqes / (double)sum.enters : 0.0,
		       (unsigned long long)sum.enobufs,
		       (unsigned long long)sum.multishot_rearms,
		       (unsigned long long)sum.batch_waits,
		       (unsigned long long)sum.batch_short);
	if (fatal) {
		fprintf(stderr, "echo: %s\n", keel_loop_explain(fatal));
		return 1;
	}
	return status < 0 && status != -ECANCELED ? 1 : 0;
}
