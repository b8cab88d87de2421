/* SPDX-License-Identifier: MIT */
/*
 * keel-load: keel's own TCP echo load generator, built on keel.
 *
 *	keel-load [-h HOST] -p PORT [-c CONNS] [-s BYTES] [-d SECS]
 *		  [-w WARMUP_SECS] [-t THREADS] [-r RATE]
 *
 * Closed loop (the default), depth 1: each connection is a task that sends one
 *message, waits until all of it has come back, checks every byte, records the
 * round-trip time and sends the next. A message starts with its sequence
 * number and the connection's id, then a per-connection pattern, so a byte
 * lost, duplicated, reordered or crossed between connections is caught.
 * Messages over 32 KiB go out in 32 KiB pieces, each echoed before the
 * next is sent (see PIECE_BYTES).
 * Only requests completing inside [warm-up, warm-up + duration) count.
 * With -t N, N threads each run their own loop and share of connections; their
 * histograms are merged at the end. Only loopback targets are accepted.
 *
 * Open loop (-r/--rate RATE, requests per second over all connections), as
 * wrk2's constant-throughput mode does it: each connection has its own
 * schedule of RATE / CONNS per second, the connections' schedules staggered
 * so that sends are spread evenly over time, still one request in flight
 * per connection. A request is sent at its intended time, or at once if the
 * previous one came back late; its latency counts from the INTENDED time.
 * A closed loop waits for the server, so a server that stalls for 200 ms
 * shows up as one slow request per connection (coordinated omission); the
 * open loop counts every request the schedule wanted to send during the
 * stall, each with the time it waited. When the server cannot keep up, the
 * latency grows with the run rather than settling: the achieved rate is
 * printed next to the intended one and the RESULT line says
 * schedule=missed when fewer than 95% of the scheduled requests were done.
 *
 * The last line is for machines:
 *	RESULT rps=.. p50_us=.. p99_us=.. p999_us=.. mean_us=.. max_us=..
 *	       reqs=.. errors=.. verify_errors=.. conns_ok=..
 *	       [rate=.. achieved=.. schedule=met|missed]   (open loop only)
 * Exit status: 0, 1 if any connection failed or any byte differed, 2 for
 * bad arguments.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <keel.h>

#define NS_PER_SEC	1000000000ull
#define MAX_SECS	600.0
#define MAX_WARMUP_SECS 60.0
#define MAX_CONNS	65536u
#define MAX_THREADS	256u
#define MAX_RATE	1e8 /* requests per second, open loop */
#define MAX_SIZE	(16u << 20)
#define MAX_BUFFERS	(1ull << 30) /* all connections' buffers together */
/* After the end, how long a request in flight may take before it is cut. */
#define GRACE_SECS   2
#define HEADER_BYTES 12 /* sequence number (8), connection id (4) */
/*
 * A task awaits one op at a time, so it cannot read while it sends. Were it
 * to send a large message whole, the server's echo would fill both
 * directions' socket buffers and both sides would wait forever. So a
 * message goes out in pieces that the buffers always hold, and each
 * piece's echo is read before the next is sent.
 */
#define PIECE_BYTES (32u << 10)

/*
 * Log-linear latency histogram in ns: values below 64 have a bucket each;
 * above, each power of two is split into 32 linear sub-buckets, so a bucket
 * is at most ~3% wide. 60 * 32 buckets cover all of uint64_t.
 */
#define SUB_BITS     5
#define SUB_COUNT    (1u << SUB_BITS)
#define HIST_BUCKETS ((64 - SUB_BITS + 1) * SUB_COUNT)

struct histogram {
	uint64_t count;
	uint64_t sum_ns;
	uint64_t max_ns;
	uint64_t bucket[HIST_BUCKETS];
};

/* Set by main() before the threads start; read-only afterwards. */
static struct {
	struct sockaddr_storage addr;
	socklen_t addrlen;
	const char *host;
	unsigned port;
	unsigned conns;
	unsigned threads;
	size_t size;
	double duration;
	double warmup;
	double rate;	      /* open loop: requests per second; 0: closed */
	uint64_t interval_ns; /* open loop: between one connection's sends */
	uint64_t t_schedule;  /* open loop: connection 0's first send */
	uint64_t t_measure;   /* CLOCK_MONOTONIC ns: the window opens */
	uint64_t t_end;	      /* and closes */
} cfg;

struct load_conn;

/* One thread: its loop, its connections and its results. */
struct worker {
	pthread_t thread;
	unsigned first_id; /* connection ids first_id .. first_id+conns-1 */
	unsigned conns;
	unsigned char *buffers; /* 2 * size per connection: send, receive */
	struct load_conn *live; /* connection tasks still running */
	unsigned live_count;
	bool stop;    /* the end: no new requests */
	bool cut_off; /* the grace period is over too */
	struct histogram hist;
	uint64_t errors;	/* connections that failed */
	uint64_t verify_errors; /* echoes that differed from what was sent */
	uint64_t conns_ok;	/* connections that ran to the end */
	bool loop_failed;
};

struct load_conn {
	struct keel_task task;
	struct worker *w;
	struct load_conn *prev, *next; /* on w->live */
	uint32_t id;
	int fd;
	uint64_t seq;
	size_t sent;  /* bytes of the request sent so far */
	size_t piece; /* bytes being sent now */
	size_t got;   /* bytes of the echo received so far */
	uint64_t t0;  /* when the request started (open loop: was meant to) */
	uint64_t next_at;  /* open loop: when the next request is meant to go */
	uint64_t intended; /* open loop: when this one was meant to go */
	unsigned char *send_buf, *recv_buf;
	/* connect's address belongs to the kernel until it completes. */
	struct sockaddr_storage addr;
};

struct controller {
	struct keel_task task;
	struct worker *w;
};

static int conn_step(struct keel_task *t);
static int controller_step(struct keel_task *t);

static KEEL_TASK_TYPE(conn_task, struct load_conn, task, conn_step);
static KEEL_TASK_TYPE(controller_task, struct controller, task,
		      controller_step);

/* Only the first failure is described; the rest are counted. */
static atomic_flag reported = ATOMIC_FLAG_INIT;

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * NS_PER_SEC + (uint64_t)ts.tv_nsec;
}

static unsigned hist_index(uint64_t v)
{
	unsigned e, shift;

	if (v < 2 * SUB_COUNT)
		return (unsigned)v;
	e = 63u - (unsigned)__builtin_clzll(v);
	shift = e - SUB_BITS;
	return shift * SUB_COUNT + (unsigned)(v >> shift);
}

/* The middle of a bucket's range of values. */
static uint64_t hist_mid(unsigned idx)
{
	unsigned shift;
	uint64_t low, high;

	if (idx < 2 * SUB_COUNT)
		return idx;
	shift = idx / SUB_COUNT - 1;
	low = (uint64_t)(idx % SUB_COUNT + SUB_COUNT) << shift;
	high = low + (1ull << shift) - 1;
	return low + (high - low) / 2;
}

static void hist_add(struct histogram *h, uint64_t ns)
{
	h->bucket[hist_index(ns)]++;
	h->count++;
	h->sum_ns += ns;
	if (ns > h->max_ns)
		h->max_ns = ns;
}

static void hist_merge(struct histogram *into, const struct histogram *h)
{
	for (unsigned i = 0; i < HIST_BUCKETS; i++)
		into->bucket[i] += h->bucket[i];
	into->count += h->count;
	into->sum_ns += h->sum_ns;
	if (h->max_ns > into->max_ns)
		into->max_ns = h->max_ns;
}

/* The p-quantile in us: its bucket's middle, but never above the max. */
static double hist_quantile_us(const struct histogram *h, double p)
{
	uint64_t rank, seen = 0;

	if (!h->count)
		return 0.0;
	rank = (uint64_t)ceil(p * (double)h->count);
	if (rank < 1)
		rank = 1;
	for (unsigned i = 0; i < HIST_BUCKETS; i++) {
		seen += h->bucket[i];
		if (seen >= rank) {
			uint64_t v = hist_mid(i);

			return (double)(v < h->max_ns ? v : h->max_ns) / 1e3;
		}
	}
	return (double)h->max_ns / 1e3;
}

/* Count a failed connection; describe it if it is the first failure. */
static void conn_fail(struct load_conn *c, const char *what, int err)
{
	c->w->errors++;
	if (atomic_flag_test_and_set(&reported))
		return;
	if (err)
		fprintf(stderr, "keel-load: connection %u to %s:%u: %s: %s\n",
			c->id, cfg.host, cfg.port, what, keel_strerror(err));
	else
		fprintf(stderr, "keel-load: connection %u to %s:%u: %s\n",
			c->id, cfg.host, cfg.port, what);
}

/* recv gave `res` <= 0: say why the connection ends. */
static void conn_fail_recv(struct load_conn *c, int res)
{
	if (res < 0)
		conn_fail(c, "recv", res);
	else if (c->w->cut_off)
		conn_fail(c, "no echo by the end of the grace period", 0);
	else
		conn_fail(c, "the server closed the connection", 0);
}

/* Check `n` bytes just received against what was sent; false if not equal. */
static bool conn_verify(struct load_conn *c, size_t n)
{
	const unsigned char *want = c->send_buf + c->got;
	const unsigned char *got = c->recv_buf + c->got;
	size_t i;

	if (!memcmp(want, got, n))
		return true;
	for (i = 0; want[i] == got[i]; i++)
		;
	c->w->verify_errors++;
	c->w->errors++;
	if (!atomic_flag_test_and_set(&reported))
		fprintf(stderr,
			"keel-load: connection %u, request %llu: byte %zu of "
			"the echo is 0x%02x, sent 0x%02x\n",
			c->id, (unsigned long long)c->seq, c->got + i, got[i],
			want[i]);
	return false;
}

/* Off the live list: from now on the controller leaves its fd alone. */
static void conn_unlink(struct load_conn *c)
{
	struct worker *w = c->w;

	if (c->prev)
		c->prev->next = c->next;
	else
		w->live = c->next;
	if (c->next)
		c->next->prev = c->prev;
}

/* Stamp the next request's header; the pattern after it never changes. */
static void conn_next_request(struct load_conn *c)
{
	unsigned char header[HEADER_BYTES];

	c->seq++;
	memcpy(header, &c->seq, 8);
	memcpy(header + 8, &c->id, 4);
	memcpy(c->send_buf, header,
	       cfg.size < HEADER_BYTES ? cfg.size : HEADER_BYTES);
	c->sent = c->got = 0;
	c->t0 = now_ns();
}

/*
 * Open loop: the next request's intended send time, advancing the schedule;
 * UINT64_MAX when it falls at or after the end (no more requests).
 */
static uint64_t conn_schedule(struct load_conn *c)
{
	uint64_t at = c->next_at;

	if (at >= cfg.t_end)
		return UINT64_MAX;
	c->next_at += cfg.interval_ns;
	return at;
}

static int conn_step(struct keel_task *t)
{
	struct load_conn *c = keel_container_of(t, struct load_conn, task);
	struct worker *w = c->w;
	uint64_t now;
	int res;

	KEEL_BEGIN(t);
	c->fd = keel_tcp_socket(c->addr.ss_family);
	if (c->fd < 0) {
		conn_fail(c, "socket", c->fd);
		c->fd = -1;
		goto close;
	}
	KEEL_AWAIT(t, keel_connect(t, c->fd, (struct sockaddr *)&c->addr,
				   cfg.addrlen));
	if (keel_res(t) < 0) {
		conn_fail(c,
			  keel_res(t) == -ECONNREFUSED
			      ? "connect (is a server listening?)"
			      : "connect",
			  keel_res(t));
		goto close;
	}
	keel_tcp_nodelay(c->fd);

	while (!w->stop) {
		if (cfg.rate > 0) {
			/* In the frame: a local does not survive the await. */
			c->intended = conn_schedule(c);
			if (c->intended == UINT64_MAX)
				break;
			if (now_ns() < c->intended)
				KEEL_AWAIT(t, keel_sleep_until(t, c->intended));
			if (w->stop)
				break;
			conn_next_request(c);
			/* Late or not, the wait counts (see the top). */
			c->t0 = c->intended;
		} else {
			conn_next_request(c);
		}
		while (c->got < cfg.size) {
			/* All that was sent has come back: send a piece more.
			 */
			c->piece = cfg.size - c->sent < PIECE_BYTES
				       ? cfg.size - c->sent
				       : PIECE_BYTES;
			KEEL_AWAIT(t, keel_send_all(t, c->fd,
						    c->send_buf + c->sent,
						    c->piece, MSG_NOSIGNAL));
			if (keel_res(t) < 0) {
				conn_fail(c, "send", keel_res(t));
				goto close;
			}
			c->sent += c->piece;
			while (c->got < c->sent) {
				KEEL_AWAIT(t, keel_recv(t, c->fd,
							c->recv_buf + c->got,
							c->sent - c->got, 0));
				res = keel_res(t);
				if (res <= 0) {
					conn_fail_recv(c, res);
					goto close;
				}
				if (!conn_verify(c, (size_t)res))
					goto close;
				c->got += (size_t)res;
			}
		}
		/*
		 * Count by completion time rather than by the controller's
		 * timers: a timer fires on a loop turn, a little late.
		 */
		now = now_ns();
		if (now >= cfg.t_measure && now < cfg.t_end)
			hist_add(&w->hist, now - c->t0);
	}
	w->conns_ok++;
close:
	conn_unlink(c);
	if (c->fd >= 0)
		KEEL_AWAIT(t, keel_close(t, c->fd));
	/* The last connection ends the run: no need to wait for timers. */
	if (--w->live_count == 0)
		keel_loop_stop(keel_task_loop(t));
	KEEL_END(t);
}

/*
 * Sleeps until the end, then asks the connections to stop after their
 * request in flight. One that gets no echo within the grace period has
 * its socket shut down, so that a stuck server cannot hang the run.
 */
static int controller_step(struct keel_task *t)
{
	struct controller *ctl = keel_container_of(t, struct controller, task);
	struct worker *w = ctl->w;

	KEEL_BEGIN(t);
	/* Nothing to do at the end of the warm-up: see conn_step(). */
	KEEL_AWAIT(t, keel_sleep_until(t, cfg.t_end));
	w->stop = true;
	KEEL_AWAIT(t, keel_sleep(t, GRACE_SECS * NS_PER_SEC));
	w->cut_off = true;
	for (struct load_conn *c = w->live; c; c = c->next)
		if (c->fd >= 0)
			shutdown(c->fd, SHUT_RDWR);
	KEEL_END(t);
}

/* Spawn the controller and the connections; false when out of memory. */
static bool worker_spawn(struct worker *w, struct keel_loop *loop)
{
	struct controller *ctl;
	struct load_conn *c;

	ctl = keel_spawn(loop, &controller_task, KEEL_PRIO_HIGH);
	if (!ctl)
		return false;
	ctl->w = w;
	for (unsigned i = 0; i < w->conns; i++) {
		c = keel_spawn(loop, &conn_task, KEEL_PRIO_NORMAL);
		if (!c)
			return false;
		c->w = w;
		c->id = w->first_id + i;
		c->fd = -1;
		c->addr = cfg.addr;
		/* Staggered: together the connections send every 1/RATE s. */
		c->next_at =
		    cfg.t_schedule + (uint64_t)((double)c->id * 1e9 /
						(cfg.rate > 0 ? cfg.rate : 1));
		c->send_buf = w->buffers + 2 * cfg.size * i;
		c->recv_buf = c->send_buf + cfg.size;
		for (size_t b = HEADER_BYTES; b < cfg.size; b++)
			c->send_buf[b] =
			    (unsigned char)(c->id * 131u + b * 7u + (b >> 8));
		c->next = w->live;
		if (w->live)
			w->live->prev = c;
		w->live = c;
		w->live_count++;
	}
	return true;
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	struct keel_loop_opts opts = {.sq_entries = 64};
	struct keel_loop *loop;
	int err;

	/* Room for every connection's op in one submission. */
	while (opts.sq_entries < w->conns + 8 && opts.sq_entries < 4096)
		opts.sq_entries *= 2;
	err = keel_loop_create(&loop, &opts);
	if (err < 0) {
		if (!atomic_flag_test_and_set(&reported))
			fprintf(stderr, "keel-load: %s\n",
				keel_loop_explain(err));
		w->loop_failed = true;
		return NULL;
	}
	if (!worker_spawn(w, loop)) {
		if (!atomic_flag_test_and_set(&reported))
			fprintf(stderr, "keel-load: out of memory\n");
		w->loop_failed = true;
	} else {
		err = keel_loop_run(loop);
		if (err < 0) {
			if (!atomic_flag_test_and_set(&reported))
				fprintf(stderr, "keel-load: loop: %s\n",
					keel_strerror(err));
			w->loop_failed = true;
		}
	}
	keel_loop_destroy(loop);
	return NULL;
}

static void usage(FILE *out)
{
	fprintf(out, "usage: keel-load [-h HOST] -p PORT [-c CONNS] [-s BYTES] "
		     "[-d SECS] [-w WARMUP_SECS] [-t THREADS] [-r RATE]\n");
	if (out != stdout)
		return;
	fprintf(
	    out,
	    "  -c CONNS  connections (1); -s BYTES  message size (64)\n"
	    "  -d SECS   measured time (3); -w SECS  warm-up (0.5)\n"
	    "  -t N      threads (1)\n"
	    "  -r, --rate RATE  open loop: RATE requests per second over "
	    "all\n"
	    "            connections on a fixed schedule (as wrk2), latency "
	    "from\n"
	    "            each request's intended send time; default: closed "
	    "loop\n");
}

/* A decimal integer in [min, max], or -1. */
static long parse_long(const char *s, long min, long max)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < min || v > max)
		return -1;
	return v;
}

/* Seconds in [min, max] (fractions allowed), or -1. */
static double parse_secs(const char *s, double min, double max)
{
	char *end;
	double v;

	errno = 0;
	v = strtod(s, &end);
	if (errno || end == s || *end || !isfinite(v) || v < min || v > max)
		return -1;
	return v;
}

/* Only loopback: 127.0.0.0/8, ::1, or 127/8 mapped into IPv6. */
static bool is_loopback(const struct sockaddr_storage *ss)
{
	const struct sockaddr_in *in4 = (const struct sockaddr_in *)ss;
	const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)ss;

	if (ss->ss_family == AF_INET)
		return ntohl(in4->sin_addr.s_addr) >> 24 == 127;
	if (ss->ss_family != AF_INET6)
		return false;
	if (IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr))
		return true;
	return IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr) &&
	       in6->sin6_addr.s6_addr[12] == 127;
}

/* Raise the soft fd limit as far as the connections need; false if short. */
static bool raise_fd_limit(rlim_t need)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		return true; /* let connect report it */
	if (rl.rlim_cur >= need)
		return true;
	if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < need) {
		fprintf(stderr,
			"keel-load: %u connections need %llu file descriptors, "
			"the hard limit is %llu\n",
			cfg.conns, (unsigned long long)need,
			(unsigned long long)rl.rlim_max);
		return false;
	}
	rl.rlim_cur = need;
	return setrlimit(RLIMIT_NOFILE, &rl) == 0;
}

/* Fill cfg in: 0, -1 (print the usage) or -2 (error already printed). */
static int parse_args(int argc, char **argv)
{
	static const struct option options[] = {
	    {"help", no_argument, NULL, 'H'},
	    {"rate", required_argument, NULL, 'r'},
	    {NULL, 0, NULL, 0},
	};
	long port = -1, v;
	int opt;

	cfg.host = "127.0.0.1";
	cfg.conns = 1;
	cfg.threads = 1;
	cfg.size = 64;
	cfg.duration = 3.0;
	cfg.warmup = 0.5;
	while ((opt = getopt_long(argc, argv, "h:p:c:s:d:w:t:r:", options,
				  NULL)) != -1) {
		v = 0;
		switch (opt) {
		case 'h':
			cfg.host = optarg;
			break;
		case 'p':
			v = port = parse_long(optarg, 1, 65535);
			break;
		case 'c':
			v = parse_long(optarg, 1, MAX_CONNS);
			cfg.conns = (unsigned)v;
			break;
		case 's':
			v = parse_long(optarg, 1, MAX_SIZE);
			cfg.size = (size_t)v;
			break;
		case 't':
			v = parse_long(optarg, 1, MAX_THREADS);
			cfg.threads = (unsigned)v;
			break;
		case 'd':
			cfg.duration = parse_secs(optarg, 0.001, MAX_SECS);
			v = cfg.duration < 0 ? -1 : 0;
			break;
		case 'w':
			cfg.warmup = parse_secs(optarg, 0, MAX_WARMUP_SECS);
			v = cfg.warmup < 0 ? -1 : 0;
			break;
		case 'r':
			cfg.rate = parse_secs(optarg, 1, MAX_RATE);
			v = cfg.rate < 0 ? -1 : 0;
			break;
		case 'H':
			usage(stdout);
			exit(0);
		default:
			return -1;
		}
		if (v < 0) {
			fprintf(stderr, "keel-load: bad -%c %s\n", opt, optarg);
			return -1;
		}
	}
	if (optind != argc || port < 0)
		return -1;
	cfg.port = (unsigned)port;
	if (cfg.threads > cfg.conns)
		cfg.threads = cfg.conns;
	if ((uint64_t)cfg.conns * cfg.size * 2 > MAX_BUFFERS) {
		fprintf(stderr,
			"keel-load: -c %u x -s %zu needs more than "
			"1 GiB of buffers\n",
			cfg.conns, cfg.size);
		return -2;
	}
	if (!strcmp(cfg.host, "localhost"))
		cfg.host = "127.0.0.1";
	if (keel_net_parse_addr(cfg.host, (uint16_t)port, &cfg.addr,
				&cfg.addrlen) < 0 ||
	    !is_loopback(&cfg.addr)) {
		fprintf(stderr,
			"keel-load: refusing host '%s': only numeric "
			"loopback addresses (127.0.0.0/8, ::1)\n",
			cfg.host);
		return -2;
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct histogram *total;
	struct worker *workers;
	uint64_t errors = 0, verify_errors = 0, conns_ok = 0;
	unsigned next_id = 0;
	bool failed = false;
	double rps, mean_us;
	bool met;

	switch (parse_args(argc, argv)) {
	case 0:
		break;
	case -1:
		usage(stderr);
		return 2;
	default: /* already explained in one line */
		return 2;
	}
	if (!raise_fd_limit(cfg.conns + 64))
		return 1;

	workers = calloc(cfg.threads, sizeof(*workers));
	total = calloc(1, sizeof(*total));
	if (!workers || !total) {
		fprintf(stderr, "keel-load: out of memory\n");
		return 1;
	}
	for (unsigned i = 0; i < cfg.threads; i++) {
		struct worker *w = &workers[i];

		w->conns =
		    cfg.conns / cfg.threads + (i < cfg.conns % cfg.threads);
		w->first_id = next_id;
		next_id += w->conns;
		w->buffers = malloc(2 * cfg.size * w->conns);
		if (!w->buffers) {
			fprintf(stderr, "keel-load: out of memory\n");
			return 1;
		}
	}

	/* Connecting is part of the warm-up. */
	cfg.t_measure = now_ns() + (uint64_t)(cfg.warmup * NS_PER_SEC);
	cfg.t_end = cfg.t_measure + (uint64_t)(cfg.duration * NS_PER_SEC);
	if (cfg.rate > 0) {
		/*
		 * The schedule starts with the run (connecting is part of the
		 * warm-up, so a slow connect shows as late requests there).
		 */
		cfg.interval_ns =
		    (uint64_t)((double)cfg.conns * 1e9 / cfg.rate);
		if (!cfg.interval_ns)
			cfg.interval_ns = 1;
		cfg.t_schedule = now_ns();
	}
	for (unsigned i = 0; i < cfg.threads; i++) {
		int err = pthread_create(&workers[i].thread, NULL, worker_main,
					 &workers[i]);

		if (err) {
			fprintf(stderr, "keel-load: pthread_create: %s\n",
				strerror(err));
			return 1;
		}
	}
	for (unsigned i = 0; i < cfg.threads; i++) {
		struct worker *w = &workers[i];

		pthread_join(w->thread, NULL);
		hist_merge(total, &w->hist);
		errors += w->errors;
		verify_errors += w->verify_errors;
		conns_ok += w->conns_ok;
		failed |= w->loop_failed;
		free(w->buffers);
	}

	rps = (double)total->count / cfg.duration;
	/* Open loop: done inside the window against what the schedule wanted.
	 */
	met = rps >= 0.95 * cfg.rate;
	mean_us = total->count
		      ? (double)total->sum_ns / (double)total->count / 1e3
		      : 0.0;
	printf("keel-load: %s:%u, %u connection%s x %zu B, %u thread%s, "
	       "%.1f s warm-up, %.1f s measured\n",
	       cfg.host, cfg.port, cfg.conns, cfg.conns == 1 ? "" : "s",
	       cfg.size, cfg.threads, cfg.threads == 1 ? "" : "s", cfg.warmup,
	       cfg.duration);
	printf("  requests  %llu (%.0f req/s), %llu errors, %llu verify "
	       "errors, %llu/%u connections ok\n",
	       (unsigned long long)total->count, rps,
	       (unsigned long long)errors, (unsigned long long)verify_errors,
	       (unsigned long long)conns_ok, cfg.conns);
	printf("  latency   p50 %.1f us, p99 %.1f us, p99.9 %.1f us, mean "
	       "%.1f us, max %.1f us\n",
	       hist_quantile_us(total, 0.50), hist_quantile_us(total, 0.99),
	       hist_quantile_us(total, 0.999), mean_us,
	       (double)total->max_ns / 1e3);
	if (cfg.rate > 0)
		printf("  schedule  %.0f req/s intended, %.0f achieved: %s\n",
		       cfg.rate, rps,
		       met ? "met"
			   : "MISSED (the server, or this client, cannot keep "
			     "up: latencies grow with the run)");
	printf("RESULT rps=%.0f p50_us=%.1f p99_us=%.1f p999_us=%.1f "
	       "mean_us=%.1f max_us=%.1f reqs=%llu errors=%llu "
	       "verify_errors=%llu conns_ok=%llu",
	       rps, hist_quantile_us(total, 0.50),
	       hist_quantile_us(total, 0.99), hist_quantile_us(total, 0.999),
	       mean_us, (double)total->max_ns / 1e3,
	       (unsigned long long)total->count, (unsigned long long)errors,
	       (unsigned long long)verify_errors, (unsigned long long)conns_ok);
	if (cfg.rate > 0)
		printf(" rate=%.0f achieved=%.0f schedule=%s", cfg.rate, rps,
		       met ? "met" : "missed");
	printf("\n");
	free(total);
	free(workers);
	if (failed || errors || verify_errors || conns_ok != cfg.conns)
		return 1;
	return 0;
}
