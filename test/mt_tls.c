/* SPDX-License-Identifier: MIT */
/*
 * mt_tls.c: one TLS context pair shared by several threads, as a
 * runtime's loops share one (run it under ThreadSanitizer too). Each
 * thread runs in-memory handshakes through the engine, a keel client
 * against a keel server: SNI picks a certificate in the server's
 * callback, the client's session cache is read and written by every
 * thread (resumption), the counters are bumped from all of them, and a
 * record goes each way. The counters must add up.
 * Prints "mt_tls: N passed, M failed".
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <keel.h>
#include <keel/tls.h>

#include "helpers/scenario.h"

#define THREADS	 4
#define ROUNDS	 20
#define WIN_SIZE 32768

static char dir[] = "/tmp/keel-mt-tls-XXXXXX";
static char cert[64], key[64], trust[64];
static struct keel_tls_ctx *sctx, *cctx;

struct wire {
	unsigned char b[WIN_SIZE];
	size_t len;
};

/* Step `x` with `win` until it stops asking for room; output onto `to`,
 * input from `from`. */
static int drive(struct keel_tls *x, unsigned char *win, struct wire *from,
		 struct wire *to)
{
	int r;

	keel_tls_input(x, from->b, from->len);
	do {
		keel_tls_output(x, win, WIN_SIZE);
		r = keel_tls_handshake_step(x);
		memcpy(to->b + to->len, win, keel_tls_output_len(x));
		to->len += keel_tls_output_len(x);
	} while (r == -ENOBUFS);
	memmove(from->b, from->b + from->len - keel_tls_input_left(x),
		keel_tls_input_left(x));
	from->len = keel_tls_input_left(x);
	return r;
}

static void *worker(void *arg)
{
	struct wire *to_c = malloc(sizeof(*to_c)),
		    *to_s = malloc(sizeof(*to_s));
	unsigned char *cw = malloc(WIN_SIZE), *sw = malloc(WIN_SIZE);
	char msg[64];

	(void)arg;
	for (int i = 0; i < ROUNDS; i++) {
		struct keel_tls *s, *c;
		int rc = -EAGAIN, rs = -EAGAIN;

		to_c->len = to_s->len = 0;
		CHECK_EQ(keel_tls_new(sctx, NULL, &s), 0);
		CHECK_EQ(keel_tls_new(cctx, "www.b.test", &c), 0);
		for (int k = 0; k < 10 && (rc || rs); k++) {
			rc = drive(c, cw, to_c, to_s);
			rs = drive(s, sw, to_s, to_c);
		}
		CHECK_EQ(rc, 0);
		CHECK_EQ(rs, 0);
		/* the server's tickets (1.3), then a record each way */
		keel_tls_input(c, to_c->b, to_c->len);
		keel_tls_output(c, cw, WIN_SIZE);
		CHECK_EQ(keel_tls_read(c, msg, sizeof(msg)), -EAGAIN);
		CHECK_EQ(keel_tls_write(c, "ping", 4), 4);
		keel_tls_input(s, cw, keel_tls_output_len(c));
		keel_tls_output(s, sw, WIN_SIZE);
		CHECK_EQ(keel_tls_read(s, msg, sizeof(msg)), 4);
		CHECK_EQ(keel_tls_write(s, "pong", 4), 4);
		keel_tls_input(c, sw, keel_tls_output_len(s));
		CHECK_EQ(keel_tls_read(c, msg, sizeof(msg)), 4);
		keel_tls_free(s);
		keel_tls_free(c);
	}
	free(to_c);
	free(to_s);
	free(cw);
	free(sw);
	return NULL;
}

static void scenario_shared_contexts(void)
{
	pthread_t th[THREADS];
	struct keel_tls_stats ss, cs;

	for (int i = 0; i < THREADS; i++)
		CHECK_EQ(pthread_create(&th[i], NULL, worker, NULL), 0);
	for (int i = 0; i < THREADS; i++)
		pthread_join(th[i], NULL);
	keel_tls_ctx_stats(sctx, &ss);
	keel_tls_ctx_stats(cctx, &cs);
	CHECK_EQ(ss.handshakes, THREADS * ROUNDS);
	CHECK_EQ(cs.handshakes, THREADS * ROUNDS);
	CHECK_EQ(ss.resumed, cs.resumed);
	/* every thread resumes after the first session was cached */
	CHECK(cs.resumed >= THREADS * (ROUNDS - 2));
	CHECK_EQ(ss.bytes_in, THREADS * ROUNDS * 4);
	CHECK_EQ(ss.failed, 0);
}

int main(void)
{
	struct keel_tls_opts so = {.role = KEEL_TLS_SERVER};
	struct keel_tls_opts co = {.role = KEEL_TLS_CLIENT};
	char why[256], cmd[512];
	int err;

	kt_scenarios_start("mt_tls");
	if (!mkdtemp(dir)) {
		perror("mkdtemp");
		return 1;
	}
	snprintf(cert, sizeof(cert), "%s/b.pem", dir);
	snprintf(key, sizeof(key), "%s/b.key", dir);
	snprintf(trust, sizeof(trust), "%s/b.pem", dir);
	snprintf(cmd, sizeof(cmd),
		 "openssl req -x509 -newkey ec -pkeyopt "
		 "ec_paramgen_curve:P-256 -nodes -keyout %s -out %s -days 2 "
		 "-subj /CN=b.test -addext 'subjectAltName=DNS:*.b.test' "
		 "2>/dev/null",
		 key, cert);
	CHECK_EQ(system(cmd), 0);
	/* the default certificate is b too: SNI matches it in the callback */
	so.cert_file = cert;
	so.key_file = key;
	co.ca_file = trust;
	err = keel_tls_ctx_create(&sctx, &so, why, sizeof(why));
	CHECK_EQ(err, 0);
	if (!err)
		CHECK_EQ(
		    keel_tls_ctx_add_cert(sctx, cert, key, why, sizeof(why)),
		    0);
	CHECK_EQ(keel_tls_ctx_create(&cctx, &co, why, sizeof(why)), 0);
	if (sctx && cctx)
		kt_scenario_run("shared_contexts", scenario_shared_contexts);
	keel_tls_ctx_free(sctx);
	keel_tls_ctx_free(cctx);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	if (system(cmd))
		perror("rm");
	return kt_scenarios_finish();
}
