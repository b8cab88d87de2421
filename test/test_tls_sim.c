/* SPDX-License-Identifier: MIT */
/*
 * test_tls_sim.c: keel_tls_stream on the simulated kernel (keel/sim.h).
 * A keel TLS client and server, two tasks of one simulated loop, connect
 * over the machine's sockets, handshake, and move 300 KiB each way (the
 * client sends first, then the server answers; sends in pieces of varied
 * sizes), then close with close_notify both ways. Each seed runs under
 * latency, short transfers and one of the fault specs that do not break a
 * connection (short sends and receives, delays, reordering), so records
 * arrive cut at every point. Checked: every byte in order, each side's
 * results, the contexts' counters (two handshakes, two clean closes, no
 * failure), and the machine's invariants at the end: no task, op, timer,
 * buffer or frame left, every descriptor closed (keel_sim_check).
 * Certificates are made by the openssl tool in a temporary directory.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <keel.h>
#include <keel/sim.h>
#include <keel/tls.h>

#include "helpers/keel_test.h"

#define MS     (1000000ull)
#define SEC    (1000 * MS)
#define PORT   8443
#define AMOUNT (300 * 1024)
#define SEEDS  8

static char dir[256], cert[300], key[300];

static void setup(void)
{
	char cmd[1024];

	kt_tmpdir_make(dir, sizeof(dir));
	snprintf(cert, sizeof(cert), "%s/c.pem", dir);
	snprintf(key, sizeof(key), "%s/c.key", dir);
	snprintf(cmd, sizeof(cmd),
		 "openssl req -x509 -newkey ec -pkeyopt "
		 "ec_paramgen_curve:P-256 -nodes -keyout %s -out %s -days 2 "
		 "-subj /CN=localhost -addext subjectAltName=DNS:localhost "
		 "2>/dev/null",
		 key, cert);
	cr_assert_eq(system(cmd), 0, "%s", cmd);
}

static void teardown(void)
{
	kt_tmpdir_remove(dir);
}

TestSuite(tls_sim, .init = setup, .fini = teardown, .timeout = 120);

/* What each side sends: two different streams. */
static unsigned char from_client[AMOUNT], from_server[AMOUNT];

struct world {
	struct keel_bufring *ring;
	int lfd;
};

/* What a side did: the test's, read after its task (and frame) is gone. */
struct result {
	const char *failed_at; /* the step that failed, and its result */
	int res;
	size_t sent, got;
	bool closed_clean; /* close_notify received */
};

struct side {
	struct keel_task task;
	struct world *w;
	struct result *r;
	bool client;
	int fd;
	struct keel_tls *tls;
	size_t done;
	struct sockaddr_storage ss; /* connect's: the kernel reads it */
	socklen_t sslen;
	unsigned char rbuf[6000];
	struct keel_tls_stream s; /* last: the output buffer is big */
};

static int side_step(struct keel_task *t);
static KEEL_TASK_TYPE(side_type, struct side, task, side_step);

/* A piece size that varies: 1 byte to some 40 KiB. */
static size_t piece(size_t done, size_t left)
{
	size_t n = 1 + (done * 2654435761u >> 7) % 40000;

	return n < left ? n : left;
}

static int side_step(struct keel_task *t)
{
	struct side *sd = keel_container_of(t, struct side, task);
	const unsigned char *out = sd->client ? from_client : from_server;
	const unsigned char *in = sd->client ? from_server : from_client;
	int err;

	KEEL_BEGIN(t);
	if (sd->client) {
		KEEL_AWAIT(t, keel_socket(t, AF_INET, SOCK_STREAM, 0));
		if (keel_res(t) < 0) {
			sd->r->failed_at = "socket";
			sd->r->res = keel_res(t);
			KEEL_EXIT(t, 0);
		}
		sd->fd = keel_res(t);
		keel_net_parse_addr("127.0.0.1", PORT, &sd->ss, &sd->sslen);
		KEEL_AWAIT(t,
			   keel_connect(t, sd->fd, (struct sockaddr *)&sd->ss,
					sd->sslen));
	} else {
		KEEL_AWAIT(t, keel_accept(t, sd->w->lfd, NULL, NULL, 0));
		if (keel_res(t) >= 0)
			sd->fd = keel_res(t);
	}
	if (keel_res(t) < 0) {
		sd->r->failed_at = sd->client ? "connect" : "accept";
		sd->r->res = keel_res(t);
	} else if ((err = keel_tls_stream_open(t, &sd->s, sd->tls, sd->fd,
					       sd->w->ring))) {
		sd->r->failed_at = "keel_tls_stream_open";
		sd->r->res = err;
	}
	if (!sd->r->failed_at) {
		KEEL_AWAIT_CALL(t, keel_tls_handshake(t, &sd->s));
		if (keel_res(t) < 0) {
			sd->r->failed_at = "handshake";
			sd->r->res = keel_res(t);
		}
	}
	/* The client sends, then receives; the server the other way. */
	for (sd->done = 0; !sd->r->failed_at && sd->done < 2; sd->done++) {
		if (sd->client == (sd->done == 0)) {
			while (sd->r->sent < AMOUNT) {
				KEEL_AWAIT_CALL(
				    t,
				    keel_tls_send(t, &sd->s, out + sd->r->sent,
						  piece(sd->r->sent,
							AMOUNT - sd->r->sent)));
				if (keel_res(t) !=
				    (int)piece(sd->r->sent,
					       AMOUNT - sd->r->sent)) {
					sd->r->failed_at = "send";
					sd->r->res = keel_res(t);
					break;
				}
				sd->r->sent += (size_t)keel_res(t);
			}
		} else {
			while (sd->r->got < AMOUNT) {
				KEEL_AWAIT_CALL(
				    t, keel_tls_recv(t, &sd->s, sd->rbuf,
						     sizeof(sd->rbuf)));
				if (keel_res(t) <= 0 ||
				    sd->r->got + (size_t)keel_res(t) > AMOUNT ||
				    memcmp(sd->rbuf, in + sd->r->got,
					   (size_t)keel_res(t))) {
					sd->r->failed_at = keel_res(t) <= 0
							       ? "recv"
							       : "recv: bytes "
								 "differ";
					sd->r->res = keel_res(t);
					break;
				}
				sd->r->got += (size_t)keel_res(t);
			}
		}
	}
	/* close_notify: the client first; each waits for the other's. */
	if (!sd->r->failed_at && sd->client) {
		KEEL_AWAIT_CALL(t, keel_tls_shutdown(t, &sd->s));
		if (keel_res(t) < 0) {
			sd->r->failed_at = "shutdown";
			sd->r->res = keel_res(t);
		}
	}
	if (!sd->r->failed_at) {
		KEEL_AWAIT_CALL(
		    t, keel_tls_recv(t, &sd->s, sd->rbuf, sizeof(sd->rbuf)));
		if (keel_res(t) == 0) {
			sd->r->closed_clean = true;
		} else {
			sd->r->failed_at = "recv of close_notify";
			sd->r->res = keel_res(t);
		}
	}
	if (!sd->r->failed_at && !sd->client) {
		KEEL_AWAIT_CALL(t, keel_tls_shutdown(t, &sd->s));
		if (keel_res(t) < 0) {
			sd->r->failed_at = "shutdown";
			sd->r->res = keel_res(t);
		}
	}
	keel_tls_stream_close(&sd->s);
	if (sd->fd >= 0)
		KEEL_AWAIT(t, keel_close(t, sd->fd));
	if (!sd->client)
		KEEL_AWAIT(t, keel_close(t, sd->w->lfd));
	KEEL_END(t);
}

/* Faults that cut transfers short or move completions, never a broken
 * connection (the test wants every byte through). */
static const char *const specs[] = {
    "send:short:0.3,recv:short:0.3",
    "*:delay=1ms:0.05,*:reorder:0.05",
    "recv:short:0.5,*:reorder:0.1",
    "send:short:0.5,*:delay=200us:0.2",
};

static struct keel_tls_ctx *make_ctx(enum keel_tls_role role)
{
	struct keel_tls_opts o = {.role = role, .ktls = KEEL_TLS_KTLS_OFF};
	struct keel_tls_ctx *ctx;
	char why[256];
	int err;

	if (role == KEEL_TLS_SERVER) {
		o.cert_file = cert;
		o.key_file = key;
	} else {
		o.ca_file = cert;
	}
	err = keel_tls_ctx_create(&ctx, &o, why, sizeof(why));
	cr_assert_eq(err, 0, "keel_tls_ctx_create: %s", why);
	return ctx;
}

static void check_side(uint64_t seed, const struct result *sd, bool client)
{
	const char *who = client ? "client" : "server";

	cr_assert_null(sd->failed_at, "seed %llu: %s: %s failed: %s",
		       (unsigned long long)seed, who,
		       sd->failed_at ? sd->failed_at : "",
		       keel_strerror(sd->res));
	cr_assert_eq(sd->sent, AMOUNT, "seed %llu: %s sent %zu",
		     (unsigned long long)seed, who, sd->sent);
	cr_assert_eq(sd->got, AMOUNT, "seed %llu: %s got %zu",
		     (unsigned long long)seed, who, sd->got);
	cr_assert(sd->closed_clean, "seed %llu: %s: no close_notify",
		  (unsigned long long)seed, who);
}

static void run_seed(uint64_t seed)
{
	struct keel_sim_opts so = {.seed = seed,
				   .max_latency_ns = 200000,
				   .short_ppm = 200000,
				   .faults = specs[seed % 4]};
	struct keel_bufring_opts ro = {.count = 16, .size = 2048};
	struct keel_tls_ctx *sctx = make_ctx(KEEL_TLS_SERVER);
	struct keel_tls_ctx *cctx = make_ctx(KEEL_TLS_CLIENT);
	struct keel_loop_stats st;
	struct keel_tls_stats ss, cs;
	struct keel_sim *sim;
	struct keel_loop *loop;
	struct world w;
	struct side *c, *s;
	struct result cr = {0}, sr = {0};
	struct keel_tls *ctls, *stls;
	char why[256];
	int err;

	cr_assert_eq(keel_sim_create(&sim, &so), 0);
	cr_assert_eq(keel_sim_loop_create(sim, &loop, NULL), 0);
	keel_loop_set_stall(loop, 0, NULL, NULL);
	cr_assert_eq(keel_bufring_create(loop, &ro, &w.ring), 0);
	w.lfd = keel_sim_listen(sim, "127.0.0.1:8443", 4);
	cr_assert_geq(w.lfd, 0, "keel_sim_listen: %s", keel_strerror(w.lfd));

	s = keel_spawn(loop, &side_type, KEEL_PRIO_NORMAL);
	c = keel_spawn(loop, &side_type, KEEL_PRIO_NORMAL);
	cr_assert(s && c);
	s->w = c->w = &w;
	s->r = &sr;
	c->r = &cr;
	s->fd = c->fd = -1;
	c->client = true;
	cr_assert_eq(keel_tls_new(sctx, NULL, &stls), 0);
	cr_assert_eq(keel_tls_new(cctx, "localhost", &ctls), 0);
	s->tls = stls;
	c->tls = ctls;

	err = keel_sim_run(sim, 600 * SEC);
	cr_assert_eq(err, 0,
		     "seed %llu: the run did not end: %s (client: sent %zu, "
		     "got %zu, %s %d; server: sent %zu, got %zu, %s %d)",
		     (unsigned long long)seed, keel_strerror(err), cr.sent,
		     cr.got, cr.failed_at ? cr.failed_at : "-", cr.res, sr.sent,
		     sr.got, sr.failed_at ? sr.failed_at : "-", sr.res);
	check_side(seed, &cr, true);
	check_side(seed, &sr, false);
	/* The engines are the test's: free them after the tasks. */
	keel_tls_free(ctls);
	keel_tls_free(stls);

	keel_tls_ctx_stats(sctx, &ss);
	keel_tls_ctx_stats(cctx, &cs);
	cr_assert_eq(ss.handshakes, 1);
	cr_assert_eq(cs.handshakes, 1);
	cr_assert_eq(ss.failed + cs.failed, 0);
	cr_assert_eq(ss.clean_closes, 1);
	cr_assert_eq(cs.clean_closes, 1);
	cr_assert_eq(ss.bytes_in, AMOUNT);
	cr_assert_eq(cs.bytes_in, AMOUNT);

	keel_loop_stats(loop, &st);
	cr_assert(!st.tasks_live && !st.zombies && !st.ops_inflight &&
		      !st.timers_armed && !st.bufs_in_use && !st.frames_live,
		  "seed %llu: left at the end: %llu tasks, %llu zombies, "
		  "%llu ops, %llu timers, %llu buffers, %llu frames",
		  (unsigned long long)seed, (unsigned long long)st.tasks_live,
		  (unsigned long long)st.zombies,
		  (unsigned long long)st.ops_inflight,
		  (unsigned long long)st.timers_armed,
		  (unsigned long long)st.bufs_in_use,
		  (unsigned long long)st.frames_live);
	cr_assert_gt(st.faults_injected, 0, "seed %llu: no fault injected",
		     (unsigned long long)seed);
	keel_loop_destroy(loop);
	cr_assert_eq(keel_sim_check(sim, why, sizeof(why)), 0, "seed %llu: %s",
		     (unsigned long long)seed, why);
	keel_sim_destroy(sim);
	keel_tls_ctx_free(sctx);
	keel_tls_ctx_free(cctx);
}

Test(tls_sim, handshake_and_300k_each_way_under_faults_over_seeds)
{
	for (size_t i = 0; i < AMOUNT; i++) {
		from_client[i] = (unsigned char)(i * 7 + i / 251);
		from_server[i] = (unsigned char)(i * 13 + i / 241 + 1);
	}
	for (uint64_t seed = 1; seed <= SEEDS; seed++)
		run_seed(seed);
}
