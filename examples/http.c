/* SPDX-License-Identifier: MIT */
/*
 * http: an HTTP/1.1 server on libkeel-http, the example to copy.
 *
 *	http [--threads N] [--root DIR] [--access-log FILE] [--max-conns N]
 *	     [--drain-timeout MS] [--header-timeout MS] [--idle-timeout MS]
 *	     [--send-timeout MS] [--test-routes]
 *	     [--cert FILE --key FILE [--sni-cert FILE --sni-key FILE]...
 *	      [--tls-min 1.2|1.3] [--handshake-timeout MS]] [ADDR] PORT
 *	http --port PORT [--threads N]     (the peer harness's style)
 *
 * One loop per thread (default: one per CPU), each with its own
 * SO_REUSEPORT listener; the library runs a task per connection. Routes:
 *
 *	GET  /hello       "hello" (a fixed response: no task of its own)
 *	GET  /metrics     keel's and the server's counters (Prometheus text)
 *	GET  /health      200 "ok", 503 "draining" during a drain
 *	GET  /sleep?ms=N  a handler task that awaits a timer, then answers
 *	POST /echo        a handler task that streams the request body back
 *	GET  /panic       (--test-routes only) a handler that panics: 500
 *	GET  /...         with --root DIR: the files beneath DIR
 *
 * Listens on 127.0.0.1 unless ADDR is given; PORT 0 picks a free port, and
 * the line "http: listening on ADDR:PORT (N threads)" says which.
 *
 * Shutdown is keel's, in two phases: SIGINT or SIGTERM cancels every
 * loop's stop token, which starts the server's drain (stop accepting,
 * close idle keep-alive connections, finish the requests in flight with
 * "Connection: close", cancel what is left after --drain-timeout); the
 * server holds each loop until its last connection is gone, then the
 * loops' root tokens are cancelled and the process exits 0. A second
 * signal kills it. SIGUSR1 prints a task dump of every loop.
 *
 * --access-log FILE appends a line per request ("-": standard output),
 * written by a task of each loop that never blocks it. --max-conns N caps
 * the connections open at once (all loops together). --header-timeout,
 * --idle-timeout and --send-timeout (milliseconds) shorten the library's
 * defaults (10 s for a request's head, 60 s keep-alive idle, 30 s for a
 * response's send) for a slowloris or a client that never reads.
 *
 * HTTPS: --cert FILE --key FILE (PEM: the certificate chain and its key)
 * serve every connection over TLS (1.2 and 1.3, or from --tls-min; ALPN
 * "http/1.1"; session tickets). Each --sni-cert FILE --sni-key FILE pair
 * adds a certificate chosen when the client's server name matches one of
 * its names (the first is the default). --handshake-timeout MS bounds a
 * handshake (default 10 s). A file that is missing or bad is one line on
 * stderr and exit status 2. The listening line says what TLS does.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <keel.h>
#include <keel/http.h>
#include <keel/tls.h>

#define MAX_SLEEP_MS 60000
#define MAX_SNI	     16

/* GET /sleep?ms=N: awaits a timer (any await would do: an actor's ask, an
 * upstream, a mailbox), then answers. If the client goes away meanwhile,
 * the library cancels the task's token and the sleep ends early. */
struct sleep_handler {
	struct keel_http_handler h;
	unsigned long ms;
	char reply[40];
	size_t len;
};

/* POST /echo: the request body back as it arrives, in chunks. */
struct echo_handler {
	struct keel_http_handler h;
	const char *piece;
	int len;
	bool started;
};

/* GET /panic (--test-routes): the client gets a 500, the connection goes
 * on, keel_http_stats.handler_panics counts it. */
struct panic_handler {
	struct keel_http_handler h;
};

struct main_frame {
	struct keel_task task;
};

static int sleep_step(struct keel_task *t);
static int echo_step(struct keel_task *t);
static int panic_step(struct keel_task *t);
static int main_step(struct keel_task *t);

static KEEL_HTTP_HANDLER_TYPE(sleep_type, struct sleep_handler, h, sleep_step);
static KEEL_HTTP_HANDLER_TYPE(echo_type, struct echo_handler, h, echo_step);
static KEEL_HTTP_HANDLER_TYPE(panic_type, struct panic_handler, h, panic_step);
static KEEL_TASK_TYPE(http_main, struct main_frame, task, main_step);

/* The value of `ms=` in a query, or 0. */
static unsigned long query_ms(const char *q, size_t len)
{
	for (size_t i = 0; i + 3 <= len; i++) {
		if ((i == 0 || q[i - 1] == '&') && !strncmp(q + i, "ms=", 3)) {
			unsigned long v = 0;

			for (i += 3; i < len && q[i] >= '0' && q[i] <= '9'; i++)
				if ((v = v * 10 + (unsigned long)(q[i] - '0')) >
				    MAX_SLEEP_MS)
					return MAX_SLEEP_MS;
			return v;
		}
	}
	return 0;
}

static int sleep_step(struct keel_task *t)
{
	struct sleep_handler *s =
	    keel_container_of(t, struct sleep_handler, h.task);
	size_t qlen;
	const char *q;

	KEEL_BEGIN(t);
	q = keel_http_query(s->h.x, &qlen);
	s->ms = query_ms(q, qlen);
	KEEL_AWAIT(t, keel_sleep(t, (uint64_t)s->ms * 1000000));
	if (keel_res(t) < 0)
		KEEL_EXIT(t, 0); /* cancelled: the client is gone, or the
				  * drain deadline passed */
	s->len = (size_t)snprintf(s->reply, sizeof(s->reply), "slept %lu ms\n",
				  s->ms);
	KEEL_AWAIT_CALL(t, keel_http_respond(t, s->h.x, 200, "text/plain",
					     s->reply, s->len));
	KEEL_END(t);
}

static int echo_step(struct keel_task *t)
{
	struct echo_handler *e =
	    keel_container_of(t, struct echo_handler, h.task);

	KEEL_BEGIN(t);
	for (;;) {
		/* The first read sends "100 Continue" if the client asked. */
		KEEL_AWAIT_CALL(t, keel_http_body_read(t, e->h.x, &e->piece));
		e->len = keel_res(t);
		if (e->len < 0)
			break;
		if (!e->started) {
			e->started = true;
			KEEL_AWAIT_CALL(
			    t, keel_http_stream_begin(
				   t, e->h.x, 200, "application/octet-stream"));
			if (keel_res(t) < 0)
				KEEL_EXIT(t, 0);
		}
		if (e->len == 0) {
			KEEL_AWAIT_CALL(t, keel_http_stream_end(t, e->h.x));
			KEEL_EXIT(t, 0);
		}
		/* The piece is the library's until our next read. */
		KEEL_AWAIT_CALL(t, keel_http_stream_write(t, e->h.x, e->piece,
							  (size_t)e->len));
		if (keel_res(t) < 0)
			KEEL_EXIT(t, 0);
	}
	/* A body over the limit can still be answered; anything else (a
	 * timeout, a reset, a cancellation) closes the connection. */
	if (e->len == -EMSGSIZE && !e->started)
		KEEL_AWAIT_CALL(t,
				keel_http_respond(t, e->h.x, 413, "text/plain",
						  "body too large\n", 15));
	KEEL_END(t);
}

static int panic_step(struct keel_task *t)
{
	KEEL_BEGIN(t);
	keel_panic("GET /panic asks for it");
	KEEL_END(t);
}

/* Loop 0's main task: nothing to do but wait for the shutdown, which
 * cancels this sleep; the loops then run until the server has drained. */
static int main_step(struct keel_task *t)
{
	KEEL_BEGIN(t);
	KEEL_AWAIT(t, keel_sleep(t, UINT64_MAX / 2));
	KEEL_END(t);
}

static void usage(FILE *out)
{
	fprintf(out,
		"usage: http [--threads N] [--root DIR] [--access-log FILE]\n"
		"            [--max-conns N] [--drain-timeout MS] "
		"[--header-timeout MS]\n"
		"            [--idle-timeout MS] [--send-timeout MS] "
		"[--test-routes]\n"
		"            [--cert FILE --key FILE [--sni-cert FILE "
		"--sni-key FILE]...\n"
		"             [--tls-min 1.2|1.3] [--handshake-timeout MS]] "
		"[ADDR] PORT\n"
		"       http --port PORT [--threads N]\n");
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

/* Every route; a start-up error is reported here, with what to do. */
static int add_routes(struct keel_http_server *srv, const char *root,
		      bool test_routes)
{
	int err;

	if ((err = keel_http_route_text(srv, "GET", "/hello", KEEL_HTTP_EXACT,
					200, "text/plain", "hello", 5)) ||
	    (err = keel_http_route_metrics(srv, "/metrics")) ||
	    (err = keel_http_route_health(srv, "/health")) ||
	    (err = keel_http_route_task(srv, "GET", "/sleep", KEEL_HTTP_EXACT,
					&sleep_type, NULL)) ||
	    (err = keel_http_route_task(srv, "POST", "/echo", KEEL_HTTP_EXACT,
					&echo_type, NULL)) ||
	    (test_routes &&
	     (err = keel_http_route_task(srv, "GET", "/panic", KEEL_HTTP_EXACT,
					 &panic_type, NULL)))) {
		fprintf(stderr, "http: cannot add a route: %s\n",
			keel_strerror(err));
		return err;
	}
	/* Last: the other routes win over a file of the same name. */
	if (root && (err = keel_http_route_files(srv, "/", root)))
		fprintf(stderr,
			"http: cannot serve files from %s: %s (--root wants a "
			"readable directory)\n",
			root, keel_strerror(err));
	return err;
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
	    {"port", required_argument, NULL, 'p'},
	    {"threads", required_argument, NULL, 't'},
	    {"root", required_argument, NULL, 'r'},
	    {"access-log", required_argument, NULL, 'l'},
	    {"max-conns", required_argument, NULL, 'M'},
	    {"drain-timeout", required_argument, NULL, 'd'},
	    {"header-timeout", required_argument, NULL, 'H'},
	    {"idle-timeout", required_argument, NULL, 'I'},
	    {"send-timeout", required_argument, NULL, 'S'},
	    {"test-routes", no_argument, NULL, 'T'},
	    {"cert", required_argument, NULL, 'c'},
	    {"key", required_argument, NULL, 'k'},
	    {"sni-cert", required_argument, NULL, 'C'},
	    {"sni-key", required_argument, NULL, 'K'},
	    {"tls-min", required_argument, NULL, 'm'},
	    {"handshake-timeout", required_argument, NULL, 'x'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	struct keel_http_opts opts = {.host = "127.0.0.1"};
	const char *root = NULL, *log_path = NULL;
	long port = -1, threads = 0, cap = 0, drain_ms = 0, header_ms = 0,
	     idle_ms = 0, send_ms = 0;
	bool test_routes = false;
	int opt;
	/* HTTPS */
	struct keel_tls_opts topts = {.role = KEEL_TLS_SERVER,
				      .alpn = "http/1.1"};
	const char *sni_cert[MAX_SNI], *sni_key[MAX_SNI];
	unsigned nsni_cert = 0, nsni_key = 0;
	long handshake_ms = 0;

	while ((opt = getopt_long(argc, argv, "p:t:r:l:M:d:H:I:S:Th", longopts,
				  NULL)) != -1) {
		long *v = NULL, min = 1, max = 1 << 24;
		const char *name = NULL;

		switch (opt) {
		case 'p':
			v = &port, min = 0, max = 65535, name = "port";
			break;
		case 't':
			v = &threads, max = 1024, name = "threads";
			break;
		case 'M':
			v = &cap, name = "max-conns";
			break;
		case 'd':
			v = &drain_ms, max = 3600 * 1000,
			name = "drain-timeout";
			break;
		case 'H':
			v = &header_ms, max = 3600 * 1000,
			name = "header-timeout";
			break;
		case 'I':
			v = &idle_ms, max = 3600 * 1000, name = "idle-timeout";
			break;
		case 'S':
			v = &send_ms, max = 3600 * 1000, name = "send-timeout";
			break;
		case 'r':
			root = optarg;
			break;
		case 'l':
			log_path = optarg;
			break;
		case 'T':
			test_routes = true;
			break;
		case 'c':
			topts.cert_file = optarg;
			break;
		case 'k':
			topts.key_file = optarg;
			break;
		case 'C':
		case 'K':
			if ((opt == 'C' ? nsni_cert : nsni_key) == MAX_SNI) {
				fprintf(stderr,
					"http: at most %d --sni-cert "
					"and --sni-key pairs\n",
					MAX_SNI);
				return 2;
			}
			if (opt == 'C')
				sni_cert[nsni_cert++] = optarg;
			else
				sni_key[nsni_key++] = optarg;
			break;
		case 'm':
			if (!strcmp(optarg, "1.2")) {
				topts.min_version = KEEL_TLS_1_2;
			} else if (!strcmp(optarg, "1.3")) {
				topts.min_version = KEEL_TLS_1_3;
			} else {
				fprintf(stderr,
					"http: bad value for --tls-min: "
					"%s (1.2 or 1.3)\n",
					optarg);
				return 2;
			}
			break;
		case 'x':
			v = &handshake_ms, max = 3600 * 1000,
			name = "handshake-timeout";
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
		if (v && (*v = parse_number(optarg, min, max)) < 0) {
			fprintf(stderr,
				"http: bad value for --%s: %s (%ld to %ld)\n",
				name, optarg, min, max);
			return 2;
		}
	}
	if (argc - optind == 2) {
		opts.host = argv[optind];
		port = parse_number(argv[optind + 1], 0, 65535);
	} else if (argc - optind == 1) {
		port = parse_number(argv[optind], 0, 65535);
	} else if (argc - optind > 2 || port < 0) {
		usage(stderr);
		return 2;
	}
	if (port < 0) {
		fprintf(stderr, "http: bad port: %s (0 to 65535)\n",
			argv[argc - 1]);
		return 2;
	}
	opts.port = (uint16_t)port;
	opts.max_conns = (unsigned)cap;
	opts.drain_timeout_ns = (uint64_t)drain_ms * 1000000;
	opts.header_timeout_ns = (uint64_t)header_ms * 1000000;
	opts.idle_timeout_ns = (uint64_t)idle_ms * 1000000;
	opts.send_timeout_ns = (uint64_t)send_ms * 1000000;
	if (!topts.cert_file != !topts.key_file || nsni_cert != nsni_key ||
	    (nsni_cert && !topts.cert_file) ||
	    (!topts.cert_file && (topts.min_version || handshake_ms))) {
		fprintf(stderr, "http: HTTPS wants --cert FILE and --key FILE "
				"(and each --sni-cert with its --sni-key)\n");
		return 2;
	}
	struct keel_tls_ctx *tls = NULL;
	char tls_line[512] = "";

	if (topts.cert_file) {
		char why[256];
		int e;

		topts.handshake_timeout_ns = (uint64_t)handshake_ms * 1000000;
		e = keel_tls_ctx_create(&tls, &topts, why, sizeof(why));
		for (unsigned i = 0; !e && i < nsni_cert; i++)
			e = keel_tls_ctx_add_cert(tls, sni_cert[i], sni_key[i],
						  why, sizeof(why));
		if (e) {
			fprintf(stderr, "http: %s\n", why);
			keel_tls_ctx_free(tls);
			return 2;
		}
		opts.tls = tls;
		keel_tls_ctx_describe(tls, tls_line, sizeof(tls_line));
	}
	if (log_path) {
		opts.access_log_fd =
		    strcmp(log_path, "-")
			? open(log_path,
			       O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644)
			: STDOUT_FILENO;
		if (opts.access_log_fd < 0) {
			fprintf(stderr, "http: cannot open %s: %s\n", log_path,
				strerror(errno));
			return 1;
		}
	}

	/* The server and its routes first: they need no loop, and a
	 * mistake in them is reported before any thread starts. */
	struct keel_runtime_opts ropts = {.threads = (unsigned)threads};
	struct keel_runtime *rt;
	struct keel_http_server *srv;
	int err = keel_http_server_new(&opts, &srv);

	if (err) {
		fprintf(stderr, "http: cannot create the server: %s\n",
			keel_strerror(err));
		return 1;
	}
	if (add_routes(srv, root, test_routes)) {
		keel_http_server_free(srv);
		return 1;
	}
	err = keel_runtime_create(&rt, &ropts);
	if (err) {
		fprintf(stderr, "http: %s\n", keel_loop_explain(err));
		keel_http_server_free(srv);
		return 1;
	}
	/* A listener, a buffer ring and an acceptor on every loop. */
	err = keel_http_server_start(srv, rt);
	if (err) {
		fprintf(stderr, "http: cannot listen on %s:%ld: %s\n",
			opts.host, port, keel_strerror(err));
		return 1;
	}
	if (tls)
		printf("http: listening on %s:%d (%u threads, TLS: %s)\n",
		       opts.host, keel_http_server_port(srv),
		       keel_runtime_size(rt), tls_line);
	else
		printf("http: listening on %s:%d (%u threads)\n", opts.host,
		       keel_http_server_port(srv), keel_runtime_size(rt));
	fflush(stdout);

	int status = keel_runtime_run(rt, &http_main, NULL, NULL);
	struct keel_http_stats st;

	/* Every loop has stopped: the counters are final. */
	keel_http_server_stats(srv, &st);
	keel_http_server_free(srv);
	keel_runtime_destroy(rt);
	keel_tls_ctx_free(tls);
	printf("http: served %llu requests on %llu connections (%llu 4xx, "
	       "%llu 5xx, %llu handler panics, %llu timeouts, %llu refused)\n",
	       (unsigned long long)st.requests,
	       (unsigned long long)st.connections,
	       (unsigned long long)st.responses_4xx,
	       (unsigned long long)st.responses_5xx,
	       (unsigned long long)st.handler_panics,
	       (unsigned long long)st.timeouts, (unsigned long long)st.refused);
	if (log_path && opts.access_log_fd != STDOUT_FILENO)
		close(opts.access_log_fd);
	if (status < 0 && status != -ECANCELED) {
		fprintf(stderr, "http: %s\n", keel_strerror(status));
		return 1;
	}
	return 0;
}
