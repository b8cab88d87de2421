/* SPDX-License-Identifier: MIT */
/*
 * tls_echo: a TLS echo server on keel and libkeel-tls (keel/tls.h).
 *
 *	tls_echo --cert FILE --key FILE [--sni CERT,KEY]... [--alpn LIST]
 *	         [--tls-min 1.2|1.3] [--tls-max 1.2|1.3] [--no-tickets]
 *	         [--handshake-timeout MS] [--threads N] [ADDR] PORT
 *
 * One loop per thread (default one), each with its own SO_REUSEPORT
 * listener, buffer ring and acceptor; one task per connection: the
 * handshake (bounded by the context's deadline), then every byte
 * received is sent back, until the client's close_notify (answered with
 * ours) or the end of the stream. One TLS context serves every loop.
 *
 * It prints "tls_echo: listening on ADDR:PORT" and the context's
 * description (OpenSSL, versions, ALPN, why kTLS is off), then serves
 * until SIGINT or SIGTERM, and prints the TLS counters on the way out.
 * Bad options: one line and exit status 2; a certificate or key that
 * cannot be used: one line naming the file and exit status 1.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <keel.h>
#include <keel/tls.h>

#define LISTEN_BACKLOG 1024

struct shard {
	int listen_fd;
};

struct conn {
	struct keel_task task;
	int fd;
	struct keel_tls *tls;
	struct keel_bufring *ring;
	/* the kernel reads and writes in here: it lives in the frame */
	struct keel_tls_stream s;
	char buf[16384];
	int n;
};

struct acceptor {
	struct keel_task task;
	struct shard *shard;
	struct keel_bufring *ring;
	struct keel_accept_stream as;
};

struct main_frame {
	struct keel_task task;
	unsigned i;
};

static struct keel_tls_ctx *tls_ctx;
static struct shard *shards;
static unsigned nshards;

static int conn_step(struct keel_task *t);
static int acceptor_step(struct keel_task *t);
static int main_step(struct keel_task *t);
static KEEL_TASK_TYPE(conn_task, struct conn, task, conn_step);
static KEEL_TASK_TYPE(acceptor_task, struct acceptor, task, acceptor_step);
static KEEL_TASK_TYPE(tls_echo_main, struct main_frame, task, main_step);

/* A defer: the engine goes with the task however it ends (a kill too). */
static void free_engine(void *arg)
{
	keel_tls_free(arg);
}

static int conn_step(struct keel_task *t)
{
	struct conn *c = keel_container_of(t, struct conn, task);

	KEEL_BEGIN(t);
	if (keel_tls_new(tls_ctx, NULL, &c->tls))
		goto out;
	if (keel_defer(t, free_engine, c->tls)) {
		keel_tls_free(c->tls);
		goto out;
	}
	if (keel_tls_stream_open(t, &c->s, c->tls, c->fd, c->ring))
		goto out;
	KEEL_AWAIT_CALL(t, keel_tls_handshake(t, &c->s));
	if (keel_res(t) < 0)
		goto close; /* counted by the context */
	for (;;) {
		KEEL_AWAIT_CALL(
		    t, keel_tls_recv(t, &c->s, c->buf, sizeof(c->buf)));
		c->n = keel_res(t);
		if (c->n < 0)
			break; /* truncated, a bad record, the shutdown */
		if (c->n == 0) {
			/* close_notify: answer with ours */
			KEEL_AWAIT_CALL(t, keel_tls_shutdown(t, &c->s));
			break;
		}
		KEEL_AWAIT_CALL(t,
				keel_tls_send(t, &c->s, c->buf, (size_t)c->n));
		if (keel_res(t) < 0)
			break;
	}
close:
	keel_tls_stream_close(&c->s);
out:
	KEEL_AWAIT(t, keel_close(t, c->fd));
	KEEL_END(t);
}

static int acceptor_step(struct keel_task *t)
{
	struct acceptor *a = keel_container_of(t, struct acceptor, task);
	struct keel_bufring_opts ro = {.count = 256, .size = 16384};
	struct conn *c;

	KEEL_BEGIN(t);
	if (keel_bufring_create(keel_task_loop(t), &ro, &a->ring) ||
	    keel_accept_stream_open(t, &a->as, a->shard->listen_fd, 0))
		KEEL_EXIT(t, 1);
	for (;;) {
		KEEL_AWAIT(t, keel_accept_next(t, &a->as));
		if (keel_res(t) < 0)
			break; /* the shutdown */
		c = keel_spawn(keel_task_loop(t), &conn_task, KEEL_PRIO_NORMAL);
		if (!c) {
			/* no memory for a task: the socket goes */
			KEEL_AWAIT(t, keel_close(t, keel_res(t)));
			continue;
		}
		c->fd = keel_res(t);
		c->ring = a->ring;
	}
	keel_accept_stream_close(&a->as);
	KEEL_END(t);
}

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
	/* Until the runtime shuts down, which cancels this sleep. */
	KEEL_AWAIT(t, keel_sleep(t, UINT64_MAX / 2));
	KEEL_END(t);
}

static void usage(FILE *out)
{
	fprintf(out,
		"usage: tls_echo --cert FILE --key FILE [--sni CERT,KEY]...\n"
		"                [--alpn LIST] [--tls-min 1.2|1.3] "
		"[--tls-max 1.2|1.3]\n"
		"                [--no-tickets] [--handshake-timeout MS] "
		"[--threads N]\n"
		"                [ADDR] PORT\n");
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

static int parse_version(const char *opt, const char *s, uint16_t *out)
{
	if (!strcmp(s, "1.2"))
		*out = KEEL_TLS_1_2;
	else if (!strcmp(s, "1.3"))
		*out = KEEL_TLS_1_3;
	else {
		fprintf(stderr, "tls_echo: %s: \"%s\" is not 1.2 or 1.3\n", opt,
			s);
		return -1;
	}
	return 0;
}

#define MAX_SNI 16

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
	    {"cert", required_argument, NULL, 'c'},
	    {"key", required_argument, NULL, 'k'},
	    {"sni", required_argument, NULL, 's'},
	    {"alpn", required_argument, NULL, 'a'},
	    {"tls-min", required_argument, NULL, 'm'},
	    {"tls-max", required_argument, NULL, 'M'},
	    {"no-tickets", no_argument, NULL, 'n'},
	    {"handshake-timeout", required_argument, NULL, 'h'},
	    {"threads", required_argument, NULL, 't'},
	    {"help", no_argument, NULL, 'H'},
	    {NULL, 0, NULL, 0},
	};
	struct keel_tls_opts o = {.role = KEEL_TLS_SERVER};
	char *sni[MAX_SNI];
	unsigned nsni = 0;
	long threads = 1, port, ms;
	const char *addr = "127.0.0.1";
	char why[512];
	int opt, err;

	while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		switch (opt) {
		case 'c':
			o.cert_file = optarg;
			break;
		case 'k':
			o.key_file = optarg;
			break;
		case 's':
			if (nsni == MAX_SNI || !strchr(optarg, ',')) {
				fprintf(stderr,
					"tls_echo: --sni: CERT,KEY expected "
					"(at most %d)\n",
					MAX_SNI);
				return 2;
			}
			sni[nsni++] = optarg;
			break;
		case 'a':
			o.alpn = optarg;
			break;
		case 'm':
			if (parse_version("--tls-min", optarg, &o.min_version))
				return 2;
			break;
		case 'M':
			if (parse_version("--tls-max", optarg, &o.max_version))
				return 2;
			break;
		case 'n':
			o.no_tickets = true;
			break;
		case 'h':
			ms = parse_number(optarg, 1, 3600000);
			if (ms < 0) {
				fprintf(stderr,
					"tls_echo: --handshake-timeout: bad "
					"milliseconds: %s\n",
					optarg);
				return 2;
			}
			o.handshake_timeout_ns = (uint64_t)ms * 1000000;
			break;
		case 't':
			threads = parse_number(optarg, 1, 1024);
			if (threads < 0) {
				fprintf(stderr,
					"tls_echo: --threads: bad count: %s\n",
					optarg);
				return 2;
			}
			break;
		case 'H':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (argc - optind == 2)
		addr = argv[optind++];
	if (argc - optind != 1 || !o.cert_file) {
		usage(stderr);
		return 2;
	}
	port = parse_number(argv[optind], 0, 65535);
	if (port < 0) {
		fprintf(stderr, "tls_echo: bad port: %s\n", argv[optind]);
		return 2;
	}
	err = keel_tls_ctx_create(&tls_ctx, &o, why, sizeof(why));
	if (err) {
		fprintf(stderr, "tls_echo: %s\n", why);
		return 1;
	}
	for (unsigned i = 0; i < nsni; i++) {
		char *comma = strchr(sni[i], ',');

		*comma = '\0';
		err = keel_tls_ctx_add_cert(tls_ctx, sni[i], comma + 1, why,
					    sizeof(why));
		if (err) {
			fprintf(stderr, "tls_echo: --sni: %s\n", why);
			return 1;
		}
	}

	struct keel_runtime_opts ropts = {.threads = (unsigned)threads};
	struct keel_runtime *rt;

	err = keel_runtime_create(&rt, &ropts);
	if (err) {
		fprintf(stderr, "tls_echo: %s\n", keel_loop_explain(err));
		return 1;
	}
	nshards = keel_runtime_size(rt);
	shards = calloc(nshards, sizeof(*shards));
	if (!shards) {
		fprintf(stderr, "tls_echo: out of memory\n");
		return 1;
	}
	for (unsigned i = 0; i < nshards; i++) {
		int fd = keel_tcp_listen(addr, (uint16_t)port, LISTEN_BACKLOG,
					 KEEL_NET_REUSEPORT);

		if (fd < 0) {
			fprintf(stderr,
				"tls_echo: cannot listen on %s:%ld: %s\n", addr,
				port, keel_strerror(fd));
			return 1;
		}
		if (port == 0)
			port = keel_net_local_port(fd);
		shards[i].listen_fd = fd;
	}
	keel_tls_ctx_describe(tls_ctx, why, sizeof(why));
	printf("tls_echo: listening on %s:%ld (%u loops)\ntls_echo: %s\n", addr,
	       port, nshards, why);
	fflush(stdout);

	int status = keel_runtime_run(rt, &tls_echo_main, NULL, NULL);
	struct keel_tls_stats st;

	keel_runtime_destroy(rt);
	keel_tls_ctx_stats(tls_ctx, &st);
	printf(
	    "tls_echo: handshakes=%llu resumed=%llu failed=%llu "
	    "timeouts=%llu renegotiations=%llu clean_closes=%llu "
	    "truncated=%llu bytes_in=%llu bytes_out=%llu\n",
	    (unsigned long long)st.handshakes, (unsigned long long)st.resumed,
	    (unsigned long long)st.failed, (unsigned long long)st.timeouts,
	    (unsigned long long)st.renegotiations,
	    (unsigned long long)st.clean_closes,
	    (unsigned long long)st.truncated, (unsigned long long)st.bytes_in,
	    (unsigned long long)st.bytes_out);
	keel_tls_ctx_free(tls_ctx);
	free(shards);
	return status < 0 ? 1 : status;
}
