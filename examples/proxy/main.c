/* SPDX-License-Identifier: MIT */
/*
 * proxy: a TCP proxy on keel (listen address -> backend address). This
 * file: the options, the start and the summary; session.c: the data path.
 *
 *	proxy [--threads N] [--mode buffers|splice] [--bufs N]
 *	      [--buf-size BYTES] [--connect-timeout MS] [--max-conns N]
 *	      [--balance rr|leastconn] [--resolve-every MS]
 *	      [--health tcp|http[:PATH]|off] [--health-every MS]
 *	      [--health-timeout MS] [--rise N] [--fall N]
 *	      [--metrics [ADDR:]PORT]
 *	      [--retries N] [--idle-timeout MS] [--low-water N]
 *	      [--shed-target MS [--shed-interval MS]]
 *	      [--proxy-protocol] [--cert FILE --key FILE
 *	      [--sni-cert FILE --sni-key FILE]... [--alpn LIST]]
 *	      [--backend-tls [--backend-ca FILE | --backend-insecure]
 *	      [--backend-sni NAME]] [--handshake-timeout MS]
 *	      -l [ADDR:]PORT -b HOST:PORT [-b HOST:PORT...]
 *
 * Backends (backends.c, health.c, metrics.c): -b names one (up to 64), by
 * address or host name. Names are resolved at start (the proxy exits 1 if
 * none resolves; one that does not is down, with the reason) and again
 * every --resolve-every (default 30000 ms) on the blocking pool: a changed
 * address is followed, a failure keeps the last good one. A session goes
 * to a backend that is up, chosen by --balance: rr (default, round-robin)
 * or leastconn (the fewest sessions open). --health checks each backend
 * every --health-every (2000 ms) within --health-timeout (1000 ms): tcp (a
 * connect), http[:PATH] (a GET of PATH, default /, answered 2xx or 3xx) or
 * off; the default is tcp with more than one backend, else off. --fall
 * (3) failed checks in a row take a backend out, --rise (2) good ones
 * bring it back; each change is a line on stderr. --metrics serves
 * Prometheus text at GET /metrics: per backend (label backend="host:port"),
 * its state, sessions, bytes, connect failures and latency, checks,
 * resolutions, and keel's loop metrics.
 *
 * One loop per thread, each with its own SO_REUSEPORT listener and a
 * multishot accept. Per connection, a session task connects to the backend
 * and runs one pump task per direction, then closes both sockets.
 *
 * A client that has gone (a reset, or end of file before it sent
 * anything) is not connected onward. A session first peeks at it (no
 * wait, nothing consumed); then connecting is a race (a select, in tokio's
 * words) between two child tasks in a scope: one connects, the other
 * watches the client (a recv with MSG_PEEK). A client that leaves first
 * ends the race: the connect is cancelled and the session closes both
 * sockets. The race has a deadline, --connect-timeout (default 5000 ms),
 * after which the connect counts as a backend failure. (TCP cannot tell a
 * client that closed from one that only shut down its writing half without
 * sending anything: before the backend is connected, both are gone.)
 *
 * A connect that fails or runs out of time moves on to the next backend
 * (backend_pick(): one this session has not tried), up to --retries N
 * more (default 2): safe for any client, since nothing is sent to a
 * backend before its connect has completed. With none left, the client's
 * connection is closed; both are counted.
 *
 * --idle-timeout MS (default 0: off): a session that has moved no byte in
 * either direction for that long is closed, both sides (counted). A loop's
 * sweep checks its sessions' byte counts every quarter of it (at most
 * 100 ms), so the data path pays nothing per recv.
 *
 * --shed-target MS (default 0: off; fractions allowed, e.g. 0.5):
 * CoDel-style load shedding (keel/limit.h's keel_shed, one per loop). A
 * session's queueing delay is the time from its spawn, when its accept
 * completed, to its first step: how long it waited behind its loop's
 * other work. While that delay has stayed above the target for a whole
 * --shed-interval MS (default 100), new clients are closed at once, before
 * any backend connect (the proxy speaks TCP, so a close is its only
 * answer), until a session starts within the target again or none comes
 * for an interval. The summary counts them ("shed").
 *
 * --proxy-protocol: each backend connection begins with a PROXY protocol
 * v2 header (haproxy's proxy-protocol.txt), in one send before any byte of
 * the client's: the client's address and port, and the address and port
 * it connected to (IPv4 or IPv6). The backend must expect it.
 *
 * --max-conns N caps the sessions open at once, all loops together. At
 * the cap a loop stops accepting (its multishot accept is cancelled): new
 * clients wait in the listen queue, their connects complete by the
 * kernel, and are served when the sessions open have fallen to
 * --low-water N (default 90% of the cap, and below it), when accepting
 * resumes. A connection another loop accepted just as the cap was reached
 * waits in its acceptor the same way. Pauses and resumes are reported on
 * stderr (one line each, at most one pause a second). The default cap is
 * what the descriptor limit (ulimit -n) leaves room for: each session
 * holds 2 descriptors (6 in splice mode, with its pipes), and a few are
 * kept for the rest; a larger N is lowered to that.
 *
 * Both matter when two proxies are pointed at each other (A's backend is
 * B, B's is A), a loop neither can see: each client connection becomes a
 * chain of sessions, through both, that grows as fast as they connect.
 * The cap stops it growing. Waiting does not end it, though: the chain's
 * last connection waits in a full proxy's listen queue, and each session
 * of the chain waits for the one after it, so no session ever leaves to
 * make room. Hence the refusal: while a proxy is full and no session has
 * ended for --connect-timeout, the clients waiting (in its listen queue,
 * and the one its acceptor may hold) are accepted and closed, counted as
 * refused. The refused connection's end travels back along the chain,
 * and once the client has gone, the chain unwinds. (A proxy in front of a
 * full one would give up on a connect that long, or its client would.)
 * Without the cap the chain took every descriptor of both, and its last
 * connection could wait for good in a listen queue neither could accept
 * from any more. A client that leaves at once leaves a chain that moves
 * on instead: each session has connected onward (on loopback a connect
 * completes at once) by the time it hears that its client has gone, so
 * cancelling its connect cannot end the chain; the peek before connecting
 * does, at the first session whose client's end arrives before it would
 * connect.
 *
 * --mode buffers (default): a pump keeps a multishot recv armed on its
 * source, into the loop's provided-buffer ring (--bufs x --buf-size,
 * default 256 x 16 KiB; with recv bundles where the
 * kernel has them), and sends the received buffers themselves on (up to 8
 * gathered into one sendmsg), returning them to the ring when the send has
 * completed. Nothing is copied in user space; an idle connection holds no
 * buffer.
 * --mode splice: a pump moves data through a pipe with splice(2), inside
 * the kernel.
 *
 * Half-close is passed on: when one side shuts down its writing half, the
 * proxy shuts down the other socket's writing half and keeps the other
 * direction flowing until it ends too. A reset or an error on either side
 * shuts both sockets down, which ends both pumps. A backend that refuses
 * or cannot be reached closes the client connection; such failures are
 * counted and reported on stderr (at most one line per second).
 *
 * TLS (keel/tls.h; buffers mode only): --cert/--key terminate it (the
 * client's handshake comes before the backend connect, so a client that
 * never completes one is never connected onward; --sni-cert/--sni-key for
 * more names, --alpn), --backend-tls originates it (verified against
 * --backend-ca for --backend-sni, or not at all with --backend-insecure;
 * a failed handshake moves on to the next backend like a failed connect).
 * --handshake-timeout MS bounds a handshake either way (default 10 s); a
 * failed or timed-out one is counted. close_notify is passed on as a
 * half-close and a half-close as close_notify. TLS on both sides at once
 * is refused (see session.c).
 *
 * A backend that is the proxy's own listener (the same port on the
 * listening address, or on any local address for a wildcard listener) is
 * refused at start-up: each session would connect to the proxy again until
 * the descriptors ran out.
 *
 * SIGINT/SIGTERM: graceful shutdown, exit 0; the summary line says what
 * was served.
 */
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <keel/tls.h>

#include "backends.h"

struct main_frame {
	struct keel_task task;
	unsigned i;
};

struct shard *shards;
unsigned nshards;
bool splice_mode;
struct keel_bufring_opts ring_opts = {.count = 256, .size = 16384};
uint64_t connect_timeout_ns = 5000ull * 1000 * 1000;
unsigned max_sessions;
atomic_uint open_sessions;

/* --- session.c's settings --- */
unsigned retries = 2;
uint64_t idle_timeout_ns;
unsigned low_water;
uint64_t shed_target_ns;
uint64_t shed_interval_ns = 100ull * 1000 * 1000;
bool proxy_protocol;
struct keel_tls_ctx *tls_server, *tls_client;
const char *backend_sni;

#define SNI_CERTS 16
/* The TLS options, until the contexts are made from them. */
struct tls_args {
	struct keel_tls_opts server, client;
	const char *sni_cert[SNI_CERTS], *sni_key[SNI_CERTS];
	unsigned sni_certs, sni_keys;
	bool backend_tls;
};
/* --- end of session.c's settings --- */

static int main_step(struct keel_task *t);
static KEEL_TASK_TYPE(proxy_main, struct main_frame, task, main_step);

static int main_step(struct keel_task *t)
{
	struct main_frame *m = keel_container_of(t, struct main_frame, task);
	struct keel_runtime *rt = keel_runtime_current();

	KEEL_BEGIN(t);
	if (backends_start(rt))
		KEEL_EXIT(t, 1);
	for (m->i = 0; m->i < nshards; m->i++)
		if (keel_spawn_on(keel_runtime_loop(rt, m->i), &acceptor_task,
				  KEEL_PRIO_HIGH, init_acceptor, &shards[m->i]))
			KEEL_EXIT(t, 1);
	KEEL_AWAIT(t, keel_sleep(t, UINT64_MAX / 2));
	KEEL_END(t);
}

/* An address's port and bytes; a wildcard reads as loopback, which is
 * where connect(2) takes it. */
static bool addr_parts(struct sockaddr_storage *ss, uint16_t *port,
		       const void **addr, size_t *len, bool *any)
{
	if (ss->ss_family == AF_INET) {
		struct sockaddr_in *in = (struct sockaddr_in *)ss;

		*port = in->sin_port;
		*any = in->sin_addr.s_addr == htonl(INADDR_ANY);
		*addr = &in->sin_addr;
		*len = sizeof(in->sin_addr);
		return true;
	}
	if (ss->ss_family == AF_INET6) {
		struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;

		*port = in6->sin6_port;
		*any = IN6_IS_ADDR_UNSPECIFIED(&in6->sin6_addr);
		*addr = &in6->sin6_addr;
		*len = sizeof(in6->sin6_addr);
		return true;
	}
	return false;
}

/*
 * Whether connecting to the backend reaches our own listener `fd`: then
 * each client's session would connect to the proxy again, and so on until
 * the descriptors run out. A listener on a wildcard address takes every
 * local address of its family (an IPv6 one, IPv4 too): whether the
 * backend's address is local is what bind(2) on it says.
 */
static bool backend_is_self(int fd, struct sockaddr_storage b, socklen_t blen)
{
	struct sockaddr_storage l;
	socklen_t llen = sizeof(l);
	uint16_t lport, bport;
	const void *la, *ba;
	size_t lalen, balen;
	bool lany, bany;

	if (getsockname(fd, (struct sockaddr *)&l, &llen) ||
	    !addr_parts(&l, &lport, &la, &lalen, &lany) ||
	    !addr_parts(&b, &bport, &ba, &balen, &bany) || lport != bport)
		return false;
	if (bany) { /* connect(2) to a wildcard goes to loopback */
		if (b.ss_family == AF_INET)
			((struct sockaddr_in *)&b)->sin_addr.s_addr =
			    htonl(INADDR_LOOPBACK);
		else
			((struct sockaddr_in6 *)&b)->sin6_addr =
			    in6addr_loopback;
	}
	if (!lany)
		return l.ss_family == b.ss_family && lalen == balen &&
		       memcmp(la, ba, lalen) == 0;
	if (l.ss_family != b.ss_family && l.ss_family != AF_INET6)
		return false;
	int probe = socket(b.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (probe < 0)
		return false;
	if (b.ss_family == AF_INET)
		((struct sockaddr_in *)&b)->sin_port = 0;
	else
		((struct sockaddr_in6 *)&b)->sin6_port = 0;
	bool local = bind(probe, (struct sockaddr *)&b, blen) == 0;

	close(probe);
	return local;
}

/*
 * How many sessions the descriptor limit leaves room for: each holds its
 * client and backend sockets, and in splice mode each pump's pipe too.
 * Above that a chain of proxies pointed at each other would run out of
 * descriptors before a refusal could end it (see the top).
 */
static unsigned session_room(void)
{
	unsigned per_session = splice_mode ? 6 : 2;
	uint64_t reserve = FD_RESERVE + (uint64_t)FD_RESERVE_PER_LOOP * nshards;
	struct rlimit rl;
	uint64_t fds = 1 << 24;

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < fds)
		fds = rl.rlim_cur;
	return fds > reserve ? (unsigned)((fds - reserve) / per_session) : 0;
}

/* The TLS options' combinations: one line and true when wrong. */
static bool tls_check(const struct tls_args *ta)
{
	const char *bad = NULL;
	bool server = ta->server.cert_file || ta->server.key_file;

	if (!ta->server.cert_file != !ta->server.key_file)
		bad = "--cert and --key go together";
	else if (ta->sni_certs != ta->sni_keys)
		bad = "each --sni-cert needs its --sni-key";
	else if ((ta->sni_certs || ta->server.alpn) && !server)
		bad = "--sni-cert, --sni-key and --alpn need --cert and --key";
	else if ((ta->client.ca_file || backend_sni ||
		  ta->client.verify_none) &&
		 !ta->backend_tls)
		bad = "--backend-ca, --backend-sni and --backend-insecure need "
		      "--backend-tls";
	else if (ta->client.ca_file && ta->client.verify_none)
		bad = "--backend-ca and --backend-insecure: pick one";
	else if ((server || ta->backend_tls) && splice_mode)
		bad =
		    "TLS (--cert, --backend-tls) needs --mode buffers: splice "
		    "moves the bytes inside the kernel, where they cannot "
		    "be encrypted";
	else if (server && ta->backend_tls)
		bad = "--cert with --backend-tls (TLS on both sides) is not "
		      "supported yet";
	if (bad)
		fprintf(stderr, "proxy: %s\n", bad);
	return bad != NULL;
}

/* Make the TLS contexts (files are read now); false after one line. */
static bool tls_setup(struct tls_args *ta)
{
	char why[256];
	int err = 0;

	if (ta->server.cert_file) {
		err = keel_tls_ctx_create(&tls_server, &ta->server, why,
					  sizeof(why));
		for (unsigned i = 0; !err && i < ta->sni_certs; i++)
			err = keel_tls_ctx_add_cert(tls_server, ta->sni_cert[i],
						    ta->sni_key[i], why,
						    sizeof(why));
	}
	if (!err && ta->backend_tls)
		err = keel_tls_ctx_create(&tls_client, &ta->client, why,
					  sizeof(why));
	if (err) {
		fprintf(stderr, "proxy: TLS: %s\n", why);
		return false;
	}
	return true;
}

static void tls_teardown(void)
{
	if (tls_server)
		keel_tls_ctx_free(tls_server);
	if (tls_client)
		keel_tls_ctx_free(tls_client);
	tls_server = tls_client = NULL;
}

/* session.c's long options (no short form), apart from the others. */
enum {
	OPT_RETRIES = 0x200,
	OPT_IDLE_TIMEOUT,
	OPT_LOW_WATER,
	OPT_PROXY_PROTOCOL,
	OPT_CERT,
	OPT_KEY,
	OPT_SNI_CERT,
	OPT_SNI_KEY,
	OPT_ALPN,
	OPT_BACKEND_TLS,
	OPT_BACKEND_CA,
	OPT_BACKEND_SNI,
	OPT_BACKEND_INSECURE,
	OPT_HANDSHAKE_TIMEOUT,
	OPT_SHED_TARGET,
	OPT_SHED_INTERVAL,
};

static void usage(FILE *out)
{
	fprintf(out,
		"usage: proxy [--threads N] [--mode buffers|splice] "
		"[--bufs N] [--buf-size BYTES]\n"
		"             [--batch-wait NS] [--connect-timeout MS] "
		"[--max-conns N]\n"
		"             [--balance rr|leastconn] [--resolve-every MS]\n"
		"             [--health tcp|http[:PATH]|off] "
		"[--health-every MS]\n"
		"             [--health-timeout MS] [--rise N] [--fall N] "
		"[--metrics [ADDR:]PORT]\n"
		"             [--retries N] [--idle-timeout MS] "
		"[--low-water N]\n"
		"             [--shed-target MS [--shed-interval MS]]\n"
		"             [--proxy-protocol] [--cert FILE --key FILE "
		"[--sni-cert FILE --sni-key FILE]... [--alpn LIST]]\n"
		"             [--backend-tls [--backend-ca FILE | "
		"--backend-insecure] [--backend-sni NAME]]\n"
		"             [--handshake-timeout MS]\n"
		"             -l [ADDR:]PORT -b HOST:PORT [-b HOST:PORT...]\n");
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

/* Milliseconds, fractions allowed, to ns in [min, max]; -1 if bad. */
static int64_t parse_ms(const char *s, int64_t min, int64_t max)
{
	char *end;
	double v;

	errno = 0;
	v = strtod(s, &end);
	if (errno || end == s || *end || !(v * 1e6 >= (double)min) ||
	    !(v * 1e6 <= (double)max))
		return -1;
	return (int64_t)(v * 1e6);
}

/* "[ADDR:]PORT" or "[v6]:PORT": split in place; -1 on a bad port. */
static long split_host_port(char *s, const char **host, const char *dflt)
{
	char *colon = strrchr(s, ':');

	*host = dflt;
	if (colon) {
		*colon = '\0';
		*host = s;
		if (s[0] == '[' && colon > s && colon[-1] == ']') {
			colon[-1] = '\0';
			*host = s + 1;
		}
		s = colon + 1;
	}
	return parse_number(s, 0, 65535);
}

/* ---- backends' options (backends.c, health.c, metrics.c) ---- */

enum {
	OPT_BALANCE = 256,
	OPT_RESOLVE_EVERY,
	OPT_HEALTH,
	OPT_HEALTH_EVERY,
	OPT_HEALTH_TIMEOUT,
	OPT_RISE,
	OPT_FALL,
	OPT_METRICS,
};

/* -b HOST:PORT (repeatable); nonzero: said why. */
static int backend_option(const char *arg)
{
	int err = backends_add(arg);

	if (err == -E2BIG)
		fprintf(stderr, "proxy: too many backends (at most %d)\n",
			MAX_BACKENDS);
	else if (err == -ENAMETOOLONG)
		fprintf(stderr, "proxy: backend name too long: %s\n", arg);
	else if (err)
		fprintf(stderr,
			"proxy: bad backend: %s (HOST:PORT, [IPV6]:PORT; the "
			"port 1 to 65535)\n",
			arg);
	return err;
}

/* A duration option in ms, 1 to an hour; false: said why. */
static bool ms_option(const char *name, const char *arg, uint64_t *ns)
{
	long v = parse_number(arg, 1, 3600000);

	if (v < 0) {
		fprintf(stderr, "proxy: bad --%s: %s (ms, 1 to 3600000)\n",
			name, arg);
		return false;
	}
	*ns = (uint64_t)v * 1000 * 1000;
	return true;
}

static bool count_option(const char *name, const char *arg, unsigned *n)
{
	long v = parse_number(arg, 1, 100);

	if (v < 0) {
		fprintf(stderr, "proxy: bad --%s: %s (1 to 100)\n", name, arg);
		return false;
	}
	*n = (unsigned)v;
	return true;
}

/* Every other backends' option; nonzero: said why. */
static int backends_option(int opt, char *arg)
{
	struct backends_config *c = &backends_conf;
	long port;

	switch (opt) {
	case OPT_BALANCE:
		if (!strcmp(arg, "rr")) {
			c->balance = BALANCE_RR;
		} else if (!strcmp(arg, "leastconn")) {
			c->balance = BALANCE_LEASTCONN;
		} else {
			fprintf(stderr,
				"proxy: bad --balance: %s (rr or leastconn)\n",
				arg);
			return 2;
		}
		return 0;
	case OPT_RESOLVE_EVERY:
		return ms_option("resolve-every", arg, &c->resolve_every_ns)
			   ? 0
			   : 2;
	case OPT_HEALTH:
		if (!strcmp(arg, "tcp")) {
			c->health = HEALTH_TCP;
		} else if (!strcmp(arg, "off")) {
			c->health = HEALTH_OFF;
		} else if (!strcmp(arg, "http")) {
			c->health = HEALTH_HTTP;
		} else if (!strncmp(arg, "http:/", 6) && strlen(arg) < 200 &&
			   !strpbrk(arg, " \r\n")) {
			c->health = HEALTH_HTTP;
			c->health_path = arg + 5;
		} else {
			fprintf(stderr,
				"proxy: bad --health: %s (tcp, http, "
				"http:/PATH or off)\n",
				arg);
			return 2;
		}
		return 0;
	case OPT_HEALTH_EVERY:
		return ms_option("health-every", arg, &c->health_every_ns) ? 0
									   : 2;
	case OPT_HEALTH_TIMEOUT:
		return ms_option("health-timeout", arg, &c->health_timeout_ns)
			   ? 0
			   : 2;
	case OPT_RISE:
		return count_option("rise", arg, &c->rise) ? 0 : 2;
	case OPT_FALL:
		return count_option("fall", arg, &c->fall) ? 0 : 2;
	case OPT_METRICS:
		port = split_host_port(arg, &c->metrics_host, "127.0.0.1");
		if (port < 0) {
			fprintf(stderr,
				"proxy: bad --metrics: [ADDR:]PORT (the port "
				"0 to 65535)\n");
			return 2;
		}
		c->metrics_port = (uint16_t)port;
		return 0;
	}
	return 2;
}

/* The name of a backend that is our own listener `fd`, or NULL. */
static const char *backend_self(int fd)
{
	for (unsigned i = 0; i < nbackends; i++) {
		struct sockaddr_storage ss;
		socklen_t len;

		if (backend_current(&backends[i], &ss, &len) &&
		    backend_is_self(fd, ss, len))
			return backends[i].name;
	}
	return NULL;
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
	    {"threads", required_argument, NULL, 't'},
	    {"mode", required_argument, NULL, 'm'},
	    {"bufs", required_argument, NULL, 'n'},
	    {"buf-size", required_argument, NULL, 's'},
	    {"batch-wait", required_argument, NULL, 'w'},
	    {"connect-timeout", required_argument, NULL, 'c'},
	    {"max-conns", required_argument, NULL, 'M'},
	    {"listen", required_argument, NULL, 'l'},
	    {"backend", required_argument, NULL, 'b'},
	    /* backends.c, health.c, metrics.c */
	    {"balance", required_argument, NULL, OPT_BALANCE},
	    {"resolve-every", required_argument, NULL, OPT_RESOLVE_EVERY},
	    {"health", required_argument, NULL, OPT_HEALTH},
	    {"health-every", required_argument, NULL, OPT_HEALTH_EVERY},
	    {"health-timeout", required_argument, NULL, OPT_HEALTH_TIMEOUT},
	    {"rise", required_argument, NULL, OPT_RISE},
	    {"fall", required_argument, NULL, OPT_FALL},
	    {"metrics", required_argument, NULL, OPT_METRICS},
	    {"help", no_argument, NULL, 'h'},
	    /* session.c's options */
	    {"retries", required_argument, NULL, OPT_RETRIES},
	    {"idle-timeout", required_argument, NULL, OPT_IDLE_TIMEOUT},
	    {"low-water", required_argument, NULL, OPT_LOW_WATER},
	    {"proxy-protocol", no_argument, NULL, OPT_PROXY_PROTOCOL},
	    {"cert", required_argument, NULL, OPT_CERT},
	    {"key", required_argument, NULL, OPT_KEY},
	    {"sni-cert", required_argument, NULL, OPT_SNI_CERT},
	    {"sni-key", required_argument, NULL, OPT_SNI_KEY},
	    {"alpn", required_argument, NULL, OPT_ALPN},
	    {"handshake-timeout", required_argument, NULL,
	     OPT_HANDSHAKE_TIMEOUT},
	    {"shed-target", required_argument, NULL, OPT_SHED_TARGET},
	    {"shed-interval", required_argument, NULL, OPT_SHED_INTERVAL},
	    {"backend-tls", no_argument, NULL, OPT_BACKEND_TLS},
	    {"backend-ca", required_argument, NULL, OPT_BACKEND_CA},
	    {"backend-sni", required_argument, NULL, OPT_BACKEND_SNI},
	    {"backend-insecure", no_argument, NULL, OPT_BACKEND_INSECURE},
	    /* end of session.c's options */
	    {NULL, 0, NULL, 0},
	};
	char *listen_arg = NULL;
	long threads = 0, batch_wait = -1, max_conns = 0;
	long low_water_arg = -1; /* session.c's */
	struct tls_args ta = {.server.role = KEEL_TLS_SERVER,
			      .client.role = KEEL_TLS_CLIENT};
	int opt;

	while ((opt = getopt_long(argc, argv, "t:m:n:s:w:c:M:l:b:h", longopts,
				  NULL)) != -1) {
		long v;

		switch (opt) {
		case 't':
			threads = parse_number(optarg, 1, 1024);
			if (threads < 0) {
				fprintf(stderr,
					"proxy: bad --threads: %s (1..1024)\n",
					optarg);
				return 2;
			}
			break;
		case 'm':
			if (!strcmp(optarg, "splice")) {
				splice_mode = true;
			} else if (strcmp(optarg, "buffers")) {
				fprintf(stderr,
					"proxy: bad --mode: %s (buffers or "
					"splice)\n",
					optarg);
				return 2;
			}
			break;
		case 'n':
			v = parse_number(optarg, 1, 32768);
			if (v < 0 || (v & (v - 1))) {
				fprintf(stderr,
					"proxy: bad --bufs: %s (a power of two "
					"up to 32768)\n",
					optarg);
				return 2;
			}
			ring_opts.count = (uint32_t)v;
			break;
		case 's':
			v = parse_number(optarg, 1, 1 << 24);
			if (v < 0) {
				fprintf(stderr,
					"proxy: bad --buf-size: %s (1 to 16 "
					"MiB)\n",
					optarg);
				return 2;
			}
			ring_opts.size = (uint32_t)v;
			break;
		case 'w':
			batch_wait = parse_number(optarg, 0, 10000000);
			if (batch_wait < 0) {
				fprintf(stderr,
					"proxy: bad --batch-wait: %s (ns, 0 "
					"to 10000000; 0: off)\n",
					optarg);
				return 2;
			}
			break;
		case 'c':
			v = parse_number(optarg, 1, 3600000);
			if (v < 0) {
				fprintf(stderr,
					"proxy: bad --connect-timeout: %s (ms, "
					"1 to 3600000)\n",
					optarg);
				return 2;
			}
			connect_timeout_ns = (uint64_t)v * 1000 * 1000;
			break;
		case 'M':
			max_conns = parse_number(optarg, 1, 1 << 24);
			if (max_conns < 0) {
				fprintf(stderr,
					"proxy: bad --max-conns: %s (1 to "
					"16777216)\n",
					optarg);
				return 2;
			}
			break;
		case 'l':
			listen_arg = optarg;
			break;
		/* backends.c, health.c, metrics.c */
		case 'b':
			if (backend_option(optarg))
				return 2;
			break;
		case OPT_BALANCE:
		case OPT_RESOLVE_EVERY:
		case OPT_HEALTH:
		case OPT_HEALTH_EVERY:
		case OPT_HEALTH_TIMEOUT:
		case OPT_RISE:
		case OPT_FALL:
		case OPT_METRICS:
			if (backends_option(opt, optarg))
				return 2;
			break;
		/* session.c's options */
		case OPT_RETRIES:
			v = parse_number(optarg, 0, 63);
			if (v < 0) {
				fprintf(stderr,
					"proxy: bad --retries: %s (0 to 63)\n",
					optarg);
				return 2;
			}
			retries = (unsigned)v;
			break;
		case OPT_IDLE_TIMEOUT:
			v = parse_number(optarg, 0, 86400000);
			if (v < 0) {
				fprintf(stderr,
					"proxy: bad --idle-timeout: %s (ms, 0 "
					"to 86400000; 0: off)\n",
					optarg);
				return 2;
			}
			idle_timeout_ns = (uint64_t)v * 1000 * 1000;
			break;
		case OPT_SHED_TARGET:
		case OPT_SHED_INTERVAL: {
			int64_t ns = parse_ms(optarg, 0, 3600000ll * 1000000);

			if (ns < 0 || (opt == OPT_SHED_INTERVAL && ns == 0)) {
				fprintf(
				    stderr,
				    "proxy: bad --%s: %s (ms, fractions "
				    "allowed; %s to 3600000)\n",
				    opt == OPT_SHED_TARGET ? "shed-target"
							   : "shed-interval",
				    optarg,
				    opt == OPT_SHED_TARGET ? "0" : "above 0");
				return 2;
			}
			*(opt == OPT_SHED_TARGET ? &shed_target_ns
						 : &shed_interval_ns) =
			    (uint64_t)ns;
			break;
		}
		case OPT_PROXY_PROTOCOL:
			proxy_protocol = true;
			break;
		case OPT_CERT:
			ta.server.cert_file = optarg;
			break;
		case OPT_KEY:
			ta.server.key_file = optarg;
			break;
		case OPT_SNI_CERT:
		case OPT_SNI_KEY:
			if ((opt == OPT_SNI_CERT ? ta.sni_certs
						 : ta.sni_keys) == SNI_CERTS) {
				fprintf(stderr,
					"proxy: more than %d --sni-cert/--sni-"
					"key\n",
					SNI_CERTS);
				return 2;
			}
			if (opt == OPT_SNI_CERT)
				ta.sni_cert[ta.sni_certs++] = optarg;
			else
				ta.sni_key[ta.sni_keys++] = optarg;
			break;
		case OPT_ALPN:
			ta.server.alpn = optarg;
			break;
		case OPT_BACKEND_TLS:
			ta.backend_tls = true;
			break;
		case OPT_BACKEND_CA:
			ta.client.ca_file = optarg;
			break;
		case OPT_BACKEND_SNI:
			backend_sni = optarg;
			break;
		case OPT_BACKEND_INSECURE:
			ta.client.verify_none = true;
			break;
		case OPT_HANDSHAKE_TIMEOUT:
			/* Both directions: a client that stalls mid-handshake,
			 * a TLS backend that does. */
			v = parse_number(optarg, 1, 3600000);
			if (v < 0) {
				fprintf(stderr,
					"proxy: bad --handshake-timeout: %s "
					"(ms, 1 to 3600000)\n",
					optarg);
				return 2;
			}
			ta.server.handshake_timeout_ns =
			    (uint64_t)v * 1000 * 1000;
			ta.client.handshake_timeout_ns =
			    ta.server.handshake_timeout_ns;
			break;
		case OPT_LOW_WATER:
			low_water_arg = parse_number(optarg, 0, 1 << 24);
			if (low_water_arg < 0) {
				fprintf(stderr,
					"proxy: bad --low-water: %s (0 to "
					"16777216, below --max-conns)\n",
					optarg);
				return 2;
			}
			break;
		/* end of session.c's options */
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (!listen_arg || !nbackends || optind != argc) {
		usage(stderr);
		return 2;
	}
	if (tls_check(&ta))
		return 2;
	if (shed_target_ns && shed_target_ns >= shed_interval_ns) {
		fprintf(stderr,
			"proxy: --shed-target must be below --shed-interval "
			"(%.3f ms)\n",
			(double)shed_interval_ns / 1e6);
		return 2;
	}
	if (low_water_arg >= 0 && max_conns > 0 && low_water_arg >= max_conns) {
		fprintf(stderr,
			"proxy: --low-water %ld: must be below --max-conns "
			"%ld\n",
			low_water_arg, max_conns);
		return 2;
	}
	const char *lhost;
	long lport = split_host_port(listen_arg, &lhost, "127.0.0.1");

	if (lport < 0) {
		fprintf(stderr, "proxy: bad listen port\n");
		return 2;
	}
	if (backends_conf.health == HEALTH_DEFAULT)
		backends_conf.health = nbackends > 1 ? HEALTH_TCP : HEALTH_OFF;
	/* Before the loops run: blocking here blocks none of them. */
	if (!backends_resolve_all()) {
		fprintf(stderr, "proxy: no backend resolves: nothing to "
				"proxy to\n");
		return 1;
	}

	struct keel_runtime_opts ropts = {.threads = (unsigned)threads};

	/* Without --batch-wait: the library's default. */
	if (batch_wait >= 0)
		ropts.loop.batch_wait_ns =
		    batch_wait ? (unsigned)batch_wait : KEEL_BATCH_WAIT_OFF;
	struct keel_runtime *rt;

	if (!tls_setup(&ta))
		return 2;
	int err = keel_runtime_create(&rt, &ropts);

	if (err) {
		fprintf(stderr, "proxy: %s\n", keel_loop_explain(err));
		tls_teardown();
		return 1;
	}
	nshards = keel_runtime_size(rt);
	shards = calloc(nshards, sizeof(*shards));
	if (!shards) {
		fprintf(stderr, "proxy: out of memory\n");
		return 1;
	}
	unsigned room = session_room();

	if (!room) {
		fprintf(stderr,
			"proxy: the descriptor limit (ulimit -n) leaves no "
			"room for a session\n");
		return 1;
	}
	max_sessions = room;
	if (max_conns > 0 && (unsigned long)max_conns < room)
		max_sessions = (unsigned)max_conns;
	else if (max_conns > 0)
		fprintf(stderr,
			"proxy: --max-conns %ld: the descriptor limit (ulimit "
			"-n) leaves room for %u sessions: using %u\n",
			max_conns, room, room);
	/* session.c's: where accepting resumes after the cap paused it */
	low_water = max_sessions - (max_sessions / 10 ? max_sessions / 10 : 1);
	if (low_water_arg >= 0 && (unsigned long)low_water_arg < max_sessions)
		low_water = (unsigned)low_water_arg;
	for (unsigned i = 0; i < nshards; i++) {
		int fd = keel_tcp_listen(lhost, (uint16_t)lport, LISTEN_BACKLOG,
					 KEEL_NET_REUSEPORT);

		if (fd < 0) {
			fprintf(stderr, "proxy: cannot listen on %s:%ld: %s\n",
				lhost, lport, keel_strerror(fd));
			return 1;
		}
		if (lport == 0)
			lport = keel_net_local_port(fd);
		shards[i].listen_fd = fd;
		const char *self = i == 0 ? backend_self(fd) : NULL;

		if (self) {
			fprintf(stderr,
				"proxy: the backend %s is the proxy's own "
				"listener (%s:%ld)\n",
				self, lhost, lport);
			close(fd);
			keel_runtime_destroy(rt);
			tls_teardown();
			free(shards);
			return 2;
		}
	}
	err = metrics_start(rt);
	if (err) {
		fprintf(stderr, "proxy: cannot serve metrics on %s:%u: %s\n",
			backends_conf.metrics_host, backends_conf.metrics_port,
			keel_strerror(err));
		return 1;
	}
	printf("proxy: listening on %s:%ld (%u loops, %s mode, at most %u "
	       "sessions) -> ",
	       lhost, lport, nshards, splice_mode ? "splice" : "buffers",
	       max_sessions);
	for (unsigned i = 0; i < nbackends; i++)
		printf("%s%s", i ? ", " : "", backends[i].name);
	printf("\n");
	if (backends_conf.metrics_host)
		printf("proxy: metrics on http://%s:%d/metrics\n",
		       backends_conf.metrics_host, metrics_port());
	fflush(stdout);

	int status = keel_runtime_run(rt, &proxy_main, NULL, NULL);
	struct shard sum = {0};
	int fatal = 0;

	for (unsigned i = 0; i < nshards; i++) {
		sum.connections += shards[i].connections;
		sum.up += shards[i].up;
		sum.down += shards[i].down;
		sum.backend_failures += shards[i].backend_failures;
		sum.resets += shards[i].resets;
		sum.abandoned += shards[i].abandoned;
		sum.refused += shards[i].refused;
		sum.retried += shards[i].retried;
		sum.no_backend += shards[i].no_backend;
		sum.idle_closed += shards[i].idle_closed;
		sum.tls_failed += shards[i].tls_failed;
		sum.shed_closed += shards[i].shed_closed;
		if (shards[i].error && !fatal)
			fatal = shards[i].error;
	}
	keel_runtime_destroy(rt);
	tls_teardown();
	metrics_free();
	free(shards);
	printf("proxy: served %llu connections, %llu bytes up, %llu bytes "
	       "down, %llu backend failures, %llu directions ended by an "
	       "error, %llu clients gone while connecting, %llu refused "
	       "over --max-conns, %llu connects retried, %llu clients with "
	       "no backend, %llu closed idle, %llu TLS handshakes failed, "
	       "%llu shed\n",
	       (unsigned long long)sum.connections, (unsigned long long)sum.up,
	       (unsigned long long)sum.down,
	       (unsigned long long)sum.backend_failures,
	       (unsigned long long)sum.resets,
	       (unsigned long long)sum.abandoned,
	       (unsigned long long)sum.refused, (unsigned long long)sum.retried,
	       (unsigned long long)sum.no_backend,
	       (unsigned long long)sum.idle_closed,
	       (unsigned long long)sum.tls_failed,
	       (unsigned long long)sum.shed_closed);
	if (fatal) {
		fprintf(stderr, "proxy: %s\n", keel_loop_explain(fatal));
		return 1;
	}
	return status < 0 && status != -ECANCELED ? 1 : 0;
}
