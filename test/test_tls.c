/* SPDX-License-Identifier: MIT */
/*
 * test_tls.c: libkeel-tls (keel/tls.h). Certificates are made by the
 * openssl tool in a temporary directory (ECDSA P-256, subjectAltName).
 *
 * - contexts: every loading error is one line naming the file (missing,
 *   not PEM, a key that does not match, bad ALPN); kTLS required on a
 *   kernel without the tls ULP fails with the reason; describe says why
 *   kTLS is off; the metrics text;
 * - the raw engine, in memory, TLS 1.2 and 1.3 with small windows;
 * - streams, a keel server and a keel client over loopback TCP on one
 *   loop: TLS 1.2 and 1.3, ALPN chosen and absent, SNI picks the
 *   certificate (the client sees its name), an IP address verified
 *   against the certificate's IP names, resumption (1.2 and 1.3; and
 *   after a connection dropped without close_notify),
 *   close_notify (clean) against a plain close (truncated), a client
 *   whose verification fails;
 * - bad input: garbage instead of a ClientHello, a truncated record, a
 *   corrupted record, a client that stalls mid-handshake (the deadline:
 *   -ETIMEDOUT, and the task's own token is left as it was), a TLS 1.2
 *   renegotiation by a plain OpenSSL client in a thread (refused,
 *   counted), a cancel mid-handshake, a kill of a task waiting in
 *   keel_tls_recv (ASan: no use after free, no leak), and one killed
 *   while it holds a ring buffer (it goes back to the ring);
 * - 8 MiB each way at once with a reader and a sender task on each side
 *   of one stream, KeyUpdates requested every 512 KiB by each sender and
 *   each reader (OpenSSL writes a reader's own KeyUpdate in its next
 *   read, into the output buffer its sender is flushing), every byte
 *   checked.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <keel.h>
#include <keel/tls.h>

#include "../tls/internal.h" /* struct keel_tls: its SSL, for the peer's view */
#include "helpers/keel_test.h"

/* ---- certificates ----------------------------------------------------- */

static char dir[256];
static char path_a[300], key_a[300], path_b[300], key_b[300], trust[300];

static void sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void sh(const char *fmt, ...)
{
	char cmd[2048];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	cr_assert_eq(system(cmd), 0, "%s", cmd);
}

/* A self-signed ECDSA P-256 certificate for `cn` with `san`. */
static void make_cert(const char *name, const char *cn, const char *san)
{
	sh("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 "
	   "-nodes -keyout %s/%s.key -out %s/%s.pem -days 2 -subj /CN=%s "
	   "-addext subjectAltName=%s 2>/dev/null",
	   dir, name, dir, name, cn, san);
}

static void setup(void)
{
	kt_tmpdir_make(dir, sizeof(dir));
	make_cert("a", "a.test", "DNS:a.test,DNS:localhost,IP:127.0.0.1");
	make_cert("b", "b.test", "DNS:*.b.test");
	snprintf(path_a, sizeof(path_a), "%s/a.pem", dir);
	snprintf(key_a, sizeof(key_a), "%s/a.key", dir);
	snprintf(path_b, sizeof(path_b), "%s/b.pem", dir);
	snprintf(key_b, sizeof(key_b), "%s/b.key", dir);
	snprintf(trust, sizeof(trust), "%s/trust.pem", dir);
	sh("cat %s %s > %s", path_a, path_b, trust);
}

static void teardown(void)
{
	kt_tmpdir_remove(dir);
}

TestSuite(tls, .init = setup, .fini = teardown, .timeout = 30);

static struct keel_tls_ctx *server_ctx(const struct keel_tls_opts *extra)
{
	struct keel_tls_opts o = extra ? *extra : (struct keel_tls_opts){0};
	struct keel_tls_ctx *ctx;
	char why[256];

	o.role = KEEL_TLS_SERVER;
	o.cert_file = path_a;
	o.key_file = key_a;
	int err = keel_tls_ctx_create(&ctx, &o, why, sizeof(why));

	cr_assert_eq(err, 0, "server ctx: %d %s", err, why);
	return ctx;
}

static struct keel_tls_ctx *client_ctx(const struct keel_tls_opts *extra)
{
	struct keel_tls_opts o = extra ? *extra : (struct keel_tls_opts){0};
	struct keel_tls_ctx *ctx;
	char why[256];

	o.role = KEEL_TLS_CLIENT;
	if (!o.ca_file)
		o.ca_file = trust;
	int err = keel_tls_ctx_create(&ctx, &o, why, sizeof(why));

	cr_assert_eq(err, 0, "client ctx: %d %s", err, why);
	return ctx;
}

static struct keel_tls_stats stats(const struct keel_tls_ctx *ctx)
{
	struct keel_tls_stats st;

	keel_tls_ctx_stats(ctx, &st);
	return st;
}

/* ---- contexts --------------------------------------------------------- */

/* Create a server context from these files; return the error and why. */
static int try_server(const char *cert, const char *key, const char *alpn,
		      char *why, size_t len)
{
	struct keel_tls_opts o = {.role = KEEL_TLS_SERVER,
				  .cert_file = cert,
				  .key_file = key,
				  .alpn = alpn};
	struct keel_tls_ctx *ctx = NULL;
	int err = keel_tls_ctx_create(&ctx, &o, why, len);

	keel_tls_ctx_free(ctx);
	return err;
}

Test(tls, a_missing_file_is_named_with_its_error)
{
	char why[256], missing[300];

	snprintf(missing, sizeof(missing), "%s/nope.pem", dir);
	cr_assert_eq(try_server(missing, key_a, NULL, why, sizeof(why)),
		     -ENOENT);
	cr_assert(strstr(why, "nope.pem: No such file or directory"), "%s",
		  why);
	cr_assert_eq(try_server(path_a, missing, NULL, why, sizeof(why)),
		     -ENOENT);
	cr_assert(strstr(why, "nope.pem: No such file or directory"), "%s",
		  why);
	cr_assert_null(strchr(why, '\n'));
}

Test(tls, a_file_without_pem_says_so)
{
	char why[256], junk[300];

	snprintf(junk, sizeof(junk), "%s/junk.pem", dir);
	sh("echo 'not a certificate' > %s", junk);
	cr_assert_eq(try_server(junk, key_a, NULL, why, sizeof(why)), -EINVAL);
	cr_assert(strstr(why, "junk.pem: no certificate in it (PEM expected)"),
		  "%s", why);
	cr_assert_eq(try_server(path_a, junk, NULL, why, sizeof(why)), -EINVAL);
	cr_assert(strstr(why, "junk.pem: no private key in it"), "%s", why);
}

Test(tls, a_key_of_another_certificate_is_refused)
{
	char why[256];

	cr_assert_eq(try_server(path_a, key_b, NULL, why, sizeof(why)),
		     -EINVAL);
	cr_assert(strstr(why, "b.key: does not match the certificate in "),
		  "%s", why);
	cr_assert(strstr(why, "a.pem"), "%s", why);
}

Test(tls, bad_alpn_and_versions_are_named)
{
	char why[256];

	cr_assert_eq(
	    try_server(path_a, key_a, "h2,,http/1.1", why, sizeof(why)),
	    -EINVAL);
	cr_assert(!strncmp(why, "--alpn: ", 8), "%s", why);

	struct keel_tls_opts o = {.role = KEEL_TLS_CLIENT,
				  .min_version = 0x0301};
	struct keel_tls_ctx *ctx;

	cr_assert_eq(keel_tls_ctx_create(&ctx, &o, why, sizeof(why)), -EINVAL);
	cr_assert(strstr(why, "--min-version"), "%s", why);
	o.min_version = 0;
	o.ciphersuites = "TLS_NOPE";
	cr_assert_eq(keel_tls_ctx_create(&ctx, &o, why, sizeof(why)), -EINVAL);
	cr_assert(strstr(why, "--ciphersuites"), "%s", why);
}

Test(tls, ktls_is_probed_and_described)
{
	struct keel_tls_ctx *ctx = server_ctx(NULL);
	char line[512];
	struct keel_tls_opts o = {.role = KEEL_TLS_CLIENT,
				  .verify_none = true,
				  .ktls = KEEL_TLS_KTLS_REQUIRE};
	struct keel_tls_ctx *req;
	char why[256];

	cr_assert_gt(keel_tls_ctx_describe(ctx, line, sizeof(line)), 0);
	cr_assert(strstr(line, "OpenSSL 3"), "%s", line);
	cr_assert(strstr(line, "kTLS: off"), "%s", line);
	/* This kernel has no CONFIG_TLS: REQUIRE fails with the reason. */
	cr_assert_eq(keel_tls_ctx_create(&req, &o, why, sizeof(why)),
		     -EOPNOTSUPP);
	cr_assert(strstr(why, "kTLS required"), "%s", why);
	if (strstr(line, "no tls ULP"))
		cr_assert(strstr(why, "TCP_ULP"), "%s", why);
	keel_tls_ctx_free(ctx);
}

Test(tls, metrics_are_prometheus_counters)
{
	struct keel_tls_ctx *ctx = server_ctx(NULL);
	char buf[4096];
	int n = keel_tls_render_metrics(ctx, "keel", buf, sizeof(buf));

	cr_assert_gt(n, 0);
	cr_assert_eq((size_t)n, strlen(buf));
	cr_assert(strstr(buf, "# TYPE keel_tls_handshakes_total counter\n"
			      "keel_tls_handshakes_total 0\n"),
		  "%s", buf);
	cr_assert(strstr(buf, "keel_tls_truncated_total 0\n"));
	cr_assert_eq(keel_tls_render_metrics(ctx, NULL, buf, 100), -ENOSPC);
	keel_tls_ctx_free(ctx);
}

/* ---- the raw engine --------------------------------------------------- */

/* Move c's window into s's input (the whole of it). */
static void pass(struct keel_tls *from, unsigned char *win, size_t cap,
		 struct keel_tls *to)
{
	cr_assert_eq(keel_tls_input_left(to), 0);
	keel_tls_input(to, win, keel_tls_output_len(from));
}

/* A queue of ciphertext on its way to one side. */
struct wire {
	unsigned char b[65536];
	size_t len;
};

/* Step `x` with `win` as its window until it stops asking for room; its
 * output goes onto `to`. Its input is `from` (consumed bytes removed). */
static int drive(struct keel_tls *x, unsigned char *win, size_t cap,
		 struct wire *from, struct wire *to)
{
	int r;

	keel_tls_input(x, from->b, from->len);
	do {
		keel_tls_output(x, win, cap);
		r = keel_tls_handshake_step(x);
		cr_assert_lt(to->len + keel_tls_output_len(x), sizeof(to->b));
		memcpy(to->b + to->len, win, keel_tls_output_len(x));
		to->len += keel_tls_output_len(x);
	} while (r == -ENOBUFS);
	memmove(from->b, from->b + from->len - keel_tls_input_left(x),
		keel_tls_input_left(x));
	from->len = keel_tls_input_left(x);
	return r;
}

static void engine_roundtrip(uint16_t version)
{
	struct keel_tls_opts vo = {.min_version = version,
				   .max_version = version};
	struct keel_tls_ctx *sc = server_ctx(&vo), *cc = client_ctx(&vo);
	struct keel_tls *s, *c;
	/* Small windows: the handshake's flights take several. */
	static unsigned char cw[1024], sw[1024];
	static struct wire to_c, to_s;
	int rc = -EAGAIN, rs = -EAGAIN;
	char msg[64];

	to_c.len = to_s.len = 0;
	cr_assert_eq(keel_tls_new(sc, NULL, &s), 0);
	cr_assert_eq(keel_tls_new(cc, "a.test", &c), 0);
	for (int i = 0; i < 20 && (rc || rs || to_c.len || to_s.len); i++) {
		rc = drive(c, cw, sizeof(cw), &to_c, &to_s);
		rs = drive(s, sw, sizeof(sw), &to_s, &to_c);
		cr_assert(rc == 0 || rc == -EAGAIN, "%d", rc);
		cr_assert(rs == 0 || rs == -EAGAIN, "%d", rs);
	}
	/* TLS 1.3: the server's tickets are still on their way */
	if (to_c.len) {
		keel_tls_input(c, to_c.b, to_c.len);
		cr_assert_eq(keel_tls_read(c, msg, sizeof(msg)), -EAGAIN);
		cr_assert_eq(keel_tls_input_left(c), 0);
	}
	cr_assert_eq(rc, 0);
	cr_assert_eq(rs, 0);
	cr_assert_eq(keel_tls_version(c), version);
	cr_assert_eq(keel_tls_version(s), version);
	cr_assert(keel_tls_peer_verified(c));
	cr_assert_not_null(keel_tls_cipher(s));

	keel_tls_output(c, cw, sizeof(cw));
	cr_assert_eq(keel_tls_write(c, "hello", 5), 5);
	pass(c, cw, sizeof(cw), s);
	keel_tls_output(s, sw, sizeof(sw));
	cr_assert_eq(keel_tls_read(s, msg, sizeof(msg)), 5);
	cr_assert_eq(memcmp(msg, "hello", 5), 0);
	cr_assert_eq(keel_tls_read(s, msg, sizeof(msg)), -EAGAIN);
	/* A write bigger than the window takes what fits. */
	static char big[4000];
	int n = keel_tls_write(s, big, sizeof(big));

	cr_assert(n > 0 && n < (int)sizeof(big), "%d", n);
	keel_tls_output(s, sw, sizeof(sw));
	keel_tls_output(c, cw, sizeof(cw));
	cr_assert_eq(keel_tls_close_notify(c), 0);
	pass(c, cw, sizeof(cw), s);
	cr_assert_eq(keel_tls_read(s, msg, sizeof(msg)), 0);
	cr_assert_eq(stats(sc).clean_closes, 1);
	keel_tls_free(s);
	keel_tls_free(c);
	keel_tls_ctx_free(sc);
	keel_tls_ctx_free(cc);
}

Test(tls, engine_in_memory_tls12)
{
	engine_roundtrip(KEEL_TLS_1_2);
}

Test(tls, engine_in_memory_tls13)
{
	engine_roundtrip(KEEL_TLS_1_3);
}

/* ---- streams ---------------------------------------------------------- */

/* One side of a connection: the task, its stream, what happened. */
struct peer {
	struct keel_task task;
	struct keel_tls_stream s;
	struct keel_tls *tls;
	struct keel_bufring *ring;
	int fd;
	int mode;
	int hs;	  /* the handshake's result */
	int last; /* the last recv's result */
	int rounds;
	uint64_t hs_deadline_after; /* the task's deadline after it */
	int cause_after;	    /* its token's cause after it */
	struct peer *sender;	    /* the big transfer's sender */
	struct keel_task *sender_task;
	size_t total, n;
	int i;
	bool update_due; /* M_BIG: a KeyUpdate to request */
	int updates;	 /* M_BIG: KeyUpdates requested by it and its sender */
	char buf[16384];
};

enum {
	M_ECHO,	     /* server: echo until the end */
	M_PING,	     /* client: rounds of ping/pong, then close_notify */
	M_PING_DROP, /* client: one ping, then close without close_notify */
	M_HALF,	     /* client: half a record, then EOF */
	M_CORRUPT,   /* client: a record with a flipped byte */
	M_HANDSHAKE, /* either: the handshake only */
	M_HOLD,	     /* either: the handshake, then 300 ms of nothing */
	M_TWO_HOLD,  /* client: two records in one send, then M_HOLD */
	M_BIG,	     /* either: 8 MiB each way */
};

#define BIG_TOTAL	 (8u << 20)
#define KEY_UPDATE_EVERY (512u << 10)

static int peer_step(struct keel_task *t);
static KEEL_TASK_TYPE(peer_task, struct peer, task, peer_step);
static int sender_step(struct keel_task *t);
static KEEL_TASK_TYPE(sender_task, struct peer, task, sender_step);

/*
 * Request a KeyUpdate at the next chance: OpenSSL refuses one while a
 * write of its own is pending (the peer's reader is behind, the output is
 * full) or a KeyUpdate is being answered; the test asks again later then,
 * as an application would.
 */
static void key_update(SSL *ssl, bool *pending, bool due, int *count)
{
	*pending |= due;
	if (!*pending)
		return;
	if (SSL_key_update(ssl, SSL_KEY_UPDATE_REQUESTED) == 1) {
		*pending = false;
		(*count)++;
	} else {
		ERR_clear_error();
	}
}

/* The big transfer's sender: the pattern, with KeyUpdates requested. */
static int sender_step(struct keel_task *t)
{
	struct peer *w = keel_container_of(t, struct peer, task);
	struct peer *p = w->sender; /* the owner of the stream */

	KEEL_BEGIN(t);
	for (w->total = 0; w->total < BIG_TOTAL; w->total += w->n) {
		w->n = sizeof(w->buf);
		kt_pattern_fill(w->buf, w->n, w->total, 7);
		key_update(p->tls->ssl, &w->update_due,
			   w->total && w->total % KEY_UPDATE_EVERY == 0,
			   &p->updates);
		KEEL_AWAIT_CALL(t, keel_tls_send(t, &p->s, w->buf, w->n));
		if (keel_res(t) != (int)w->n)
			KEEL_EXIT(t, keel_res(t) < 0 ? keel_res(t) : -EIO);
	}
	KEEL_END(t);
}

static int peer_step(struct keel_task *t)
{
	struct peer *p = keel_container_of(t, struct peer, task);

	KEEL_BEGIN(t);
	p->hs = p->last = 1;
	p->hs = keel_tls_stream_open(t, &p->s, p->tls, p->fd, p->ring);
	if (p->hs)
		goto out;
	KEEL_AWAIT_CALL(t, keel_tls_handshake(t, &p->s));
	p->hs = keel_res(t);
	p->hs_deadline_after = keel_token_deadline(keel_task_token(t));
	p->cause_after = keel_token_cause(keel_task_token(t));
	if (p->hs || p->mode == M_HANDSHAKE)
		goto close;
	if (p->mode == M_TWO_HOLD) {
		cr_assert_eq(keel_tls_write(p->tls, "a", 1), 1);
		cr_assert_eq(keel_tls_write(p->tls, "b", 1), 1);
		p->n = keel_tls_output_len(p->tls);
		KEEL_AWAIT(t, keel_send_all(t, p->fd, p->s.out, p->n, 0));
		cr_assert_eq(keel_res(t), (int)p->n);
		p->mode = M_HOLD;
	}
	if (p->mode == M_HOLD) {
		KEEL_AWAIT(t, keel_sleep(t, 300000000));
		goto close;
	}
	switch (p->mode) {
	case M_ECHO:
		for (;;) {
			KEEL_AWAIT_CALL(
			    t, keel_tls_recv(t, &p->s, p->buf, sizeof(p->buf)));
			p->last = keel_res(t);
			if (p->last < 0)
				break;
			if (p->last == 0) {
				/* close_notify: answer with ours */
				KEEL_AWAIT_CALL(t, keel_tls_shutdown(t, &p->s));
				break;
			}
			p->n = (size_t)p->last;
			KEEL_AWAIT_CALL(t,
					keel_tls_send(t, &p->s, p->buf, p->n));
			if (keel_res(t) != (int)p->n)
				break;
		}
		break;
	case M_PING:
	case M_PING_DROP:
		for (p->i = 0; p->i < p->rounds; p->i++) {
			p->n = (size_t)snprintf(p->buf, sizeof(p->buf),
						"ping %d", p->i);
			KEEL_AWAIT_CALL(t,
					keel_tls_send(t, &p->s, p->buf, p->n));
			cr_assert_eq(keel_res(t), (int)p->n);
			for (p->total = 0; p->total < p->n;
			     p->total += (size_t)keel_res(t)) {
				KEEL_AWAIT_CALL(
				    t, keel_tls_recv(t, &p->s,
						     p->buf + 100 + p->total,
						     p->n - p->total));
				cr_assert_gt(keel_res(t), 0);
			}
			cr_assert_eq(memcmp(p->buf, p->buf + 100, p->n), 0);
		}
		if (p->mode == M_PING_DROP)
			break;
		KEEL_AWAIT_CALL(t, keel_tls_shutdown(t, &p->s));
		cr_assert_eq(keel_res(t), 0, "shutdown: %d", keel_res(t));
		KEEL_AWAIT_CALL(
		    t, keel_tls_recv(t, &p->s, p->buf, sizeof(p->buf)));
		p->last = keel_res(t);
		break;
	case M_HALF:
	case M_CORRUPT:
		/* a record made by the engine, sent by hand */
		keel_tls_output(p->tls, p->buf, sizeof(p->buf));
		cr_assert_eq(keel_tls_write(p->tls, "0123456789", 10), 10);
		p->n = keel_tls_output_len(p->tls);
		if (p->mode == M_HALF)
			p->n /= 2;
		else
			p->buf[p->n - 3] ^= 1;
		KEEL_AWAIT(t, keel_send_all(t, p->fd, p->buf, p->n, 0));
		cr_assert_eq(keel_res(t), (int)p->n);
		shutdown(p->fd, SHUT_WR);
		/* wait for the server to close */
		KEEL_AWAIT(t, keel_recv(t, p->fd, p->buf, sizeof(p->buf), 0));
		break;
	case M_BIG:
		p->sender_task = keel_task_of(
		    &sender_task,
		    keel_spawn(keel_task_loop(t), &sender_task,
			       KEEL_SPAWN_JOINABLE | KEEL_PRIO_NORMAL));
		keel_container_of(p->sender_task, struct peer, task)->sender =
		    p;
		for (p->total = 0; p->total < BIG_TOTAL;
		     p->total += (size_t)keel_res(t)) {
			KEEL_AWAIT_CALL(
			    t, keel_tls_recv(t, &p->s, p->buf, sizeof(p->buf)));
			if (keel_res(t) <= 0)
				break;
			cr_assert_eq(kt_pattern_mismatch(p->buf,
							 (size_t)keel_res(t),
							 p->total, 7),
				     SIZE_MAX, "at %zu", p->total);
			/* The reader's own KeyUpdate: written by its next
			 * read, into the buffer its sender is flushing. */
			key_update(p->tls->ssl, &p->update_due,
				   (p->total + (size_t)keel_res(t)) /
					   KEY_UPDATE_EVERY !=
				       p->total / KEY_UPDATE_EVERY,
				   &p->updates);
		}
		KEEL_AWAIT(t, keel_join(t, p->sender_task));
		cr_assert_eq(keel_res(t), 0, "sender: %d", keel_res(t));
		cr_assert_eq(p->total, BIG_TOTAL);
		KEEL_AWAIT_CALL(t, keel_tls_shutdown(t, &p->s));
		cr_assert_eq(keel_res(t), 0, "shutdown: %d", keel_res(t));
		KEEL_AWAIT_CALL(
		    t, keel_tls_recv(t, &p->s, p->buf, sizeof(p->buf)));
		p->last = keel_res(t);
		break;
	}
close:
	keel_tls_stream_close(&p->s);
out:
	KEEL_AWAIT(t, keel_close(t, p->fd));
	KEEL_END(t);
}

/* A loop with a buffer ring, and a connected pair of sockets. */
struct conn_test {
	struct keel_loop *loop;
	struct keel_bufring *ring;
	int fds[2];
};

static void conn_setup(struct conn_test *ct)
{
	struct keel_bufring_opts ro = {.count = 64, .size = 16384};

	ct->loop = kt_loop_new(NULL);
	cr_assert_eq(keel_bufring_create(ct->loop, &ro, &ct->ring), 0);
	kt_tcp_pair(ct->fds);
}

static struct peer *spawn_peer(struct conn_test *ct, struct keel_tls_ctx *ctx,
			       const char *name, int fd, int mode)
{
	struct peer *p = kt_spawn(ct->loop, &peer_task,
				  KEEL_PRIO_NORMAL | KEEL_SPAWN_JOINABLE);

	cr_assert_eq(keel_tls_new(ctx, name, &p->tls), 0);
	p->ring = ct->ring;
	p->fd = fd;
	p->mode = mode;
	p->rounds = 3;
	return p;
}

/* Run the loop; the peers' engines are freed after. */
static void conn_run(struct conn_test *ct)
{
	kt_loop_run(ct->loop);
}

/* A joinable peer's frame stays until joined: read it, then detach. */
static void conn_finish(struct conn_test *ct, struct peer **peers, int n)
{
	for (int i = 0; i < n; i++) {
		keel_tls_free(peers[i]->tls);
		keel_task_detach(&peers[i]->task);
	}
	keel_loop_destroy(ct->loop);
}

/* A keel client pings a keel server; returns both peers' results. */
struct pair_result {
	int server_hs, client_hs, server_last, client_last;
	char alpn_s[32], alpn_c[32], cipher[64], peer_cn[64];
	uint16_t version;
	bool resumed_c, resumed_s, verified;
	uint64_t deadline_after;
	int cause_after;
};

static struct pair_result run_pair(struct keel_tls_ctx *sc,
				   struct keel_tls_ctx *cc, const char *name,
				   int client_mode, int server_mode)
{
	struct conn_test ct;
	struct pair_result r = {0};

	conn_setup(&ct);
	struct peer *s = spawn_peer(&ct, sc, NULL, ct.fds[0], server_mode);
	struct peer *c = spawn_peer(&ct, cc, name, ct.fds[1], client_mode);

	conn_run(&ct);
	r.server_hs = s->hs;
	r.client_hs = c->hs;
	r.server_last = s->last;
	r.client_last = c->last;
	r.deadline_after = s->hs_deadline_after;
	r.cause_after = s->cause_after;
	if (s->hs == 0 && c->hs == 0) {
		snprintf(r.alpn_s, sizeof(r.alpn_s), "%s",
			 keel_tls_alpn(s->tls) ?: "(none)");
		snprintf(r.alpn_c, sizeof(r.alpn_c), "%s",
			 keel_tls_alpn(c->tls) ?: "(none)");
		snprintf(r.cipher, sizeof(r.cipher), "%s",
			 keel_tls_cipher(c->tls));
		r.version = keel_tls_version(c->tls);
		r.resumed_c = keel_tls_resumed(c->tls);
		r.resumed_s = keel_tls_resumed(s->tls);
		r.verified = keel_tls_peer_verified(c->tls);
		X509 *peer = SSL_get0_peer_certificate(c->tls->ssl);

		cr_assert_not_null(peer);
		X509_NAME_get_text_by_NID(X509_get_subject_name(peer),
					  NID_commonName, r.peer_cn,
					  sizeof(r.peer_cn));
	}
	struct peer *peers[] = {s, c};

	conn_finish(&ct, peers, 2);
	return r;
}

static void pair_version(uint16_t version)
{
	struct keel_tls_opts so = {.min_version = version,
				   .max_version = version,
				   .alpn = "h2,http/1.1"};
	struct keel_tls_opts co = {.alpn = "http/1.1,h2"};
	struct keel_tls_ctx *sc = server_ctx(&so), *cc = client_ctx(&co);
	struct pair_result r = run_pair(sc, cc, "a.test", M_PING, M_ECHO);

	cr_assert_eq(r.server_hs, 0);
	cr_assert_eq(r.client_hs, 0);
	cr_assert_eq(r.version, version);
	/* the server's preference wins */
	cr_assert_str_eq(r.alpn_s, "h2");
	cr_assert_str_eq(r.alpn_c, "h2");
	cr_assert(r.verified);
	cr_assert_str_eq(r.peer_cn, "a.test");
	/* the client's close_notify ended the server's loop cleanly, and
	 * the server's answered the client's last recv */
	cr_assert_eq(r.server_last, 0);
	cr_assert_eq(r.client_last, 0);
	cr_assert_eq(stats(cc).clean_closes, 1);
	struct keel_tls_stats st = stats(sc);

	cr_assert_eq(st.handshakes, 1);
	cr_assert_eq(st.clean_closes, 1);
	cr_assert_eq(st.failed, 0);
	cr_assert_eq(st.bytes_in, strlen("ping 0") * 3);
	cr_assert_eq(st.bytes_out, strlen("ping 0") * 3);
	/* the handshake's deadline is gone from the task's token */
	cr_assert_eq(r.deadline_after, UINT64_MAX);
	cr_assert_eq(r.cause_after, 0);
	keel_tls_ctx_free(sc);
	keel_tls_ctx_free(cc);
}

Test(tls, stream_ping_pong_tls12)
{
	pair_version(KEEL_TLS_1_2);
}

Test(tls, stream_ping_pong_tls13)
{
	pair_version(KEEL_TLS_1_3);
}

Test(tls, alpn_absent_when_nothing_is_shared)
{
	struct keel_tls_opts so = {.alpn = "h2"};
	struct keel_tls_opts co = {.alpn = "x-other"};
	struct keel_tls_ctx *sc = server_ctx(&so), *cc = client_ctx(&co);
	struct pair_result r = run_pair(sc, cc, "a.test", M_PING, M_ECHO);

	cr_assert_eq(r.client_hs, 0);
	cr_assert_str_eq(r.alpn_s, "(none)");
	cr_assert_str_eq(r.alpn_c, "(none)");
	keel_tls_ctx_free(cc);
	/* and a client that offers none */
	cc = client_ctx(NULL);
	r = run_pair(sc, cc, "a.test", M_PING, M_ECHO);
	cr_assert_eq(r.client_hs, 0);
	cr_assert_str_eq(r.alpn_s, "(none)");
	keel_tls_ctx_free(sc);
	keel_tls_ctx_free(cc);
}

Test(tls, sni_picks_the_certificate)
{
	struct keel_tls_ctx *sc = server_ctx(NULL), *cc = client_ctx(NULL);
	char why[256];

	cr_assert_eq(keel_tls_ctx_add_cert(sc, path_b, key_b, why, sizeof(why)),
		     0, "%s", why);
	struct pair_result r = run_pair(sc, cc, "www.b.test", M_PING, M_ECHO);

	cr_assert_eq(r.client_hs, 0);
	cr_assert_str_eq(r.peer_cn, "b.test");
	cr_assert(r.verified);
	/* a wildcard covers one label only: the default certificate, which
	 * the client rejects for that name */
	r = run_pair(sc, cc, "x.www.b.test", M_PING, M_ECHO);
	cr_assert_eq(r.client_hs, -EKEYREJECTED);
	r = run_pair(sc, cc, "a.test", M_PING, M_ECHO);
	cr_assert_eq(r.client_hs, 0);
	cr_assert_str_eq(r.peer_cn, "a.test");
	cr_assert_eq(stats(cc).failed, 1);
	keel_tls_ctx_free(sc);
	keel_tls_ctx_free(cc);
}

Test(tls, an_ip_address_is_verified_against_ip_names)
{
	struct keel_tls_ctx *sc = server_ctx(NULL), *cc = client_ctx(NULL);
	struct pair_result r = run_pair(sc, cc, "127.0.0.1", M_PING, M_ECHO);

	cr_assert_eq(r.client_hs, 0);
	cr_assert(r.verified);
	r = run_pair(sc, cc, "127.0.0.2", M_PING, M_ECHO);
	cr_assert_eq(r.client_hs, -EKEYREJECTED);
	keel_tls_ctx_free(sc);
	keel_tls_ctx_free(cc);
}

static void resumption(uint16_t version)
{
	struct keel_tls_opts vo = {.min_version = version,
				   .max_version = version};
	struct keel_tls_ctx *sc = server_ctx(&vo), *cc = client_ctx(&vo);
	struct pair_result r = run_pair(sc, cc, "a.test", M_PING, M_ECHO);

	cr_assert_eq(r.client_hs, 0);
	cr_assert_not(r.resumed_c);
	r = run_pair(sc, cc, "a.test", M_PING, M_ECHO);
	cr_assert_eq(r.client_hs, 0);
	cr_assert(r.resumed_c);
	cr_assert(r.resumed_s);
	cr_assert_eq(stats(sc).resumed, 1);
	cr_assert_eq(stats(cc).resumed, 1);
	cr_assert_eq(stats(sc).handshakes, 2);
	keel_tls_ctx_free(sc);
	keel_tls_ctx_free(cc);
	/* no_tickets: no resumption */
	vo.no_tickets = true;
	sc = server_ctx(&vo);
	cc = client_ctx(&vo);
	run_pair(sc, cc, "a.test", M_PING, M_ECHO);
	r = run_pair(sc, cc, "a.test", M_PING, M_ECHO);
	cr_assert_eq(r.client_hs, 0);
	cr_assert_not(r.resumed_c);
	keel_tls_ctx_free(sc);
	keel_tls_ctx_free(cc);
}

Test(tls, resumption_tls12)
{
	resumption(KEEL_TLS_1_2);
}

Test(tls, resumption_tls13)
{
	resumption(KEEL_TLS_1_3);
}

Test(tls, a_dropped_connection_keeps_its_session)
{
	struct keel_tls_ctx *sc = server_ctx(NULL), *cc = client_ctx(NULL);
	struct pair_result r = run_pair(sc, cc, "a.test", M_PING_DROP, M_ECHO);

	cr_assert_eq(r.client_hs, 0);
	r = run_pair(sc, cc, "a.test", M_PING_DROP, M_ECHO);
	cr_assert_eq(r.client_hs, 0);
	cr_assert(r.resumed_c, "the client's session was dropped with it");
	keel_tls_ctx_free(sc);
	keel_tls_ctx_free(cc);
}

Test(tls, close_without_close_notify_is_truncated)
{
	struct keel_tls_ctx *sc = server_ctx(NULL), *cc = client_ctx(NULL);
	struct pair_result r = run_pair(sc, cc, "a.test", M_PING_DROP, M_ECHO);

	cr_assert_eq(r.server_last, -ECONNRESET);
	cr_assert_eq(stats(sc).truncated, 1);
	cr_assert_eq(stats(sc).clean_closes, 0);
	keel_tls_ctx_free(sc);
	keel_tls_ctx_free(cc);
}

Test(tls, a_truncated_record_is_a_truncated_stream)
{
	struct keel_tls_ctx *sc = server_ctx(NULL), *cc = client_ctx(NULL);
	struct pair_result r = run_pair(sc, cc, "a.test", M_HALF, M_ECHO);

	cr_assert_eq(r.server_hs, 0);
	cr_assert_eq(r.server_last, -ECONNRESET);
	cr_assert_eq(stats(sc).truncated, 1);
	keel_tls_ctx_free(sc);
	keel_tls_ctx_free(cc);
}

Test(tls, a_corrupted_record_is_eproto)
{
	struct keel_tls_ctx *sc = server_ctx(NULL), *cc = client_ctx(NULL);
	struct pair_result r = run_pair(sc, cc, "a.test", M_CORRUPT, M_ECHO);

	cr_assert_eq(r.server_hs, 0);
	cr_assert_eq(r.server_last, -EPROTO);
	cr_assert_eq(stats(sc).failed, 1);
	keel_tls_ctx_free(sc);
	keel_tls_ctx_free(cc);
}

/* A server alone on a socket whose other end the test drives by hand. */
static struct peer *lone_server(struct conn_test *ct, struct keel_tls_ctx *sc)
{
	conn_setup(ct);
	return spawn_peer(ct, sc, NULL, ct->fds[0], M_ECHO);
}

Test(tls, garbage_instead_of_a_client_hello)
{
	struct keel_tls_ctx *sc = server_ctx(NULL);
	struct conn_test ct;
	struct peer *s = lone_server(&ct, sc);
	const char junk[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";

	cr_assert_eq(write(ct.fds[1], junk, sizeof(junk) - 1),
		     (ssize_t)sizeof(junk) - 1);
	conn_run(&ct);
	cr_assert_eq(s->hs, -EPROTO);
	cr_assert_eq(stats(sc).failed, 1);
	cr_assert_eq(stats(sc).handshakes, 0);
	/* the server closed (after an alert, if any) */
	char buf[64];
	ssize_t n = read(ct.fds[1], buf, sizeof(buf));

	cr_assert(n == 0 || (n > 0 && buf[0] == 21), "%zd", n);
	close(ct.fds[1]);
	conn_finish(&ct, &s, 1);
	keel_tls_ctx_free(sc);
}

Test(tls, a_stalled_handshake_times_out)
{
	struct keel_tls_opts so = {.handshake_timeout_ns = 100000000};
	struct keel_tls_ctx *sc = server_ctx(&so);
	struct conn_test ct;
	struct peer *s = lone_server(&ct, sc);

	/* five bytes of a record header, then nothing */
	cr_assert_eq(write(ct.fds[1], "\x16\x03\x01\x02\x00", 5), 5);
	conn_run(&ct);
	cr_assert_eq(s->hs, -ETIMEDOUT);
	cr_assert_eq(stats(sc).timeouts, 1);
	/* the task's own token is not the one that timed out */
	cr_assert_eq(s->cause_after, 0);
	cr_assert_eq(s->hs_deadline_after, UINT64_MAX);
	close(ct.fds[1]);
	conn_finish(&ct, &s, 1);
	keel_tls_ctx_free(sc);
}

/* Cancels (or kills) `victim` after `ns`. */
struct killer {
	struct keel_task task;
	struct keel_task *victim;
	bool kill;
	int *res; /* the test's: the frame is gone when the loop ends */
};

static int killer_step(struct keel_task *t)
{
	struct killer *k = keel_container_of(t, struct killer, task);

	KEEL_BEGIN(t);
	KEEL_AWAIT(t, keel_sleep(t, 50000000));
	*k->res =
	    k->kill ? keel_task_kill(k->victim) : keel_task_cancel(k->victim);
	KEEL_END(t);
}

static KEEL_TASK_TYPE(killer_task, struct killer, task, killer_step);

Test(tls, a_cancel_mid_handshake)
{
	struct keel_tls_ctx *sc = server_ctx(NULL);
	struct conn_test ct;
	struct peer *s = lone_server(&ct, sc);
	struct killer *k = kt_spawn(ct.loop, &killer_task, KEEL_PRIO_NORMAL);

	int res = 1;

	k->victim = &s->task;
	k->res = &res;
	conn_run(&ct);
	cr_assert_eq(res, 0);
	cr_assert_eq(s->hs, -ECANCELED);
	cr_assert_eq(stats(sc).timeouts, 0);
	close(ct.fds[1]);
	conn_finish(&ct, &s, 1);
	keel_tls_ctx_free(sc);
}

/* A task killed while it waits in keel_tls_recv: its frame (and the
 * stream in it) goes when the kernel has returned its ops; the engine is
 * freed by a defer, as a task that may be killed should. */
struct victim {
	struct keel_task task;
	struct keel_tls_stream s;
	struct keel_tls *tls;
	struct keel_bufring *ring;
	int fd;
	int hs;
	char buf[256];
};

static void free_engine(void *arg)
{
	keel_tls_free(arg);
}

static int victim_step(struct keel_task *t)
{
	struct victim *v = keel_container_of(t, struct victim, task);

	KEEL_BEGIN(t);
	cr_assert_eq(keel_defer(t, free_engine, v->tls), 0);
	cr_assert_eq(keel_tls_stream_open(t, &v->s, v->tls, v->fd, v->ring), 0);
	KEEL_AWAIT_CALL(t, keel_tls_handshake(t, &v->s));
	v->hs = keel_res(t);
	KEEL_AWAIT_CALL(t, keel_tls_recv(t, &v->s, v->buf, sizeof(v->buf)));
	cr_assert_fail("the recv returned %d", keel_res(t));
	KEEL_END(t);
}

static KEEL_TASK_TYPE(victim_task, struct victim, task, victim_step);

Test(tls, a_kill_mid_recv)
{
	struct keel_tls_ctx *sc = server_ctx(NULL), *cc = client_ctx(NULL);
	struct conn_test ct;

	conn_setup(&ct);
	struct victim *v = kt_spawn(ct.loop, &victim_task, KEEL_PRIO_NORMAL);

	cr_assert_eq(keel_tls_new(sc, NULL, &v->tls), 0);
	v->ring = ct.ring;
	v->fd = ct.fds[0];
	struct peer *c = spawn_peer(&ct, cc, "a.test", ct.fds[1], M_HOLD);
	struct killer *k = kt_spawn(ct.loop, &killer_task, KEEL_PRIO_NORMAL);

	int res = 1;

	k->victim = &v->task;
	k->kill = true;
	k->res = &res;
	conn_run(&ct);
	cr_assert_eq(res, 0);
	cr_assert_eq(c->hs, 0);
	close(ct.fds[0]);
	conn_finish(&ct, &c, 1);
	keel_tls_ctx_free(sc);
	keel_tls_ctx_free(cc);
}

/* Killed while it holds a ring buffer (the second record of a chunk is
 * still to be decrypted): the buffer goes back to the ring. */
static int holder_step(struct keel_task *t)
{
	struct victim *v = keel_container_of(t, struct victim, task);

	KEEL_BEGIN(t);
	cr_assert_eq(keel_defer(t, free_engine, v->tls), 0);
	cr_assert_eq(keel_tls_stream_open(t, &v->s, v->tls, v->fd, v->ring), 0);
	KEEL_AWAIT_CALL(t, keel_tls_handshake(t, &v->s));
	v->hs = keel_res(t);
	KEEL_AWAIT_CALL(t, keel_tls_recv(t, &v->s, v->buf, 1));
	cr_assert_eq(keel_res(t), 1);
	cr_assert_gt(keel_tls_input_left(v->tls), 0);
	KEEL_AWAIT(t, keel_sleep(t, 10000000000));
	cr_assert_fail("not killed");
	KEEL_END(t);
}

static KEEL_TASK_TYPE(holder_task, struct victim, task, holder_step);

Test(tls, a_kill_gives_back_the_ring_buffer)
{
	struct keel_tls_ctx *sc = server_ctx(NULL), *cc = client_ctx(NULL);
	struct keel_bufring_stats st;
	struct conn_test ct;
	int res = 1;

	conn_setup(&ct);
	struct victim *v = kt_spawn(ct.loop, &holder_task, KEEL_PRIO_NORMAL);

	cr_assert_eq(keel_tls_new(sc, NULL, &v->tls), 0);
	v->ring = ct.ring;
	v->fd = ct.fds[0];
	struct peer *c = spawn_peer(&ct, cc, "a.test", ct.fds[1], M_TWO_HOLD);
	struct killer *k = kt_spawn(ct.loop, &killer_task, KEEL_PRIO_NORMAL);

	k->victim = &v->task;
	k->kill = true;
	k->res = &res;
	conn_run(&ct);
	cr_assert_eq(res, 0);
	cr_assert_eq(c->hs, 0);
	keel_bufring_stats(ct.ring, &st);
	cr_assert_eq(st.lent, 0, "%u buffers still lent", st.lent);
	close(ct.fds[0]);
	conn_finish(&ct, &c, 1);
	keel_tls_ctx_free(sc);
	keel_tls_ctx_free(cc);
}

/* ---- a renegotiating client (plain OpenSSL, blocking, in a thread) --- */

struct reneg {
	int fd;
	int handshake, renegotiate, after;
};

static void *reneg_main(void *arg)
{
	struct reneg *rn = arg;
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
	SSL *ssl;
	char buf[16];

	SSL_CTX_set_max_proto_version(ctx, TLS1_2_VERSION);
	SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
	ssl = SSL_new(ctx);
	SSL_set_fd(ssl, rn->fd);
	rn->handshake = SSL_connect(ssl);
	if (rn->handshake == 1 && SSL_write(ssl, "hi", 2) == 2 &&
	    SSL_read(ssl, buf, sizeof(buf)) == 2) {
		rn->renegotiate = SSL_renegotiate(ssl);
		SSL_do_handshake(ssl);
		rn->after = SSL_read(ssl, buf, sizeof(buf));
	}
	SSL_free(ssl);
	SSL_CTX_free(ctx);
	close(rn->fd);
	return NULL;
}

Test(tls, a_renegotiation_is_refused_and_counted)
{
	struct keel_tls_ctx *sc = server_ctx(NULL);
	struct conn_test ct;
	struct peer *s = lone_server(&ct, sc);
	struct reneg rn = {.fd = ct.fds[1]};
	pthread_t th;

	cr_assert_eq(pthread_create(&th, NULL, reneg_main, &rn), 0);
	conn_run(&ct);
	pthread_join(th, NULL);
	cr_assert_eq(rn.handshake, 1);
	cr_assert_eq(rn.renegotiate, 1);
	cr_assert_leq(rn.after, 0);
	cr_assert_eq(s->hs, 0);
	cr_assert_eq(s->last, -EPROTO);
	cr_assert_eq(stats(sc).renegotiations, 1);
	conn_finish(&ct, &s, 1);
	keel_tls_ctx_free(sc);
}

/* ---- both ways at once, with KeyUpdates ------------------------------- */

Test(tls, eight_mib_each_way_with_key_updates, .timeout = 120)
{
	struct keel_tls_opts vo = {.min_version = KEEL_TLS_1_3};
	struct keel_tls_ctx *sc = server_ctx(&vo), *cc = client_ctx(&vo);
	struct conn_test ct;

	conn_setup(&ct);
	struct peer *s = spawn_peer(&ct, sc, NULL, ct.fds[0], M_BIG);
	struct peer *c = spawn_peer(&ct, cc, "a.test", ct.fds[1], M_BIG);

	conn_run(&ct);
	cr_assert_eq(s->hs, 0);
	cr_assert_eq(c->hs, 0);
	cr_assert_eq(s->total, BIG_TOTAL);
	cr_assert_eq(c->total, BIG_TOTAL);
	cr_assert_eq(s->last, 0);
	cr_assert_eq(c->last, 0);
	/* 15 chances each way for each of sender and reader; a refused one
	 * is asked again at the next chunk. */
	cr_assert_geq(s->updates, 15, "server: %d KeyUpdates", s->updates);
	cr_assert_geq(c->updates, 15, "client: %d KeyUpdates", c->updates);
	cr_assert_eq(stats(sc).bytes_in, BIG_TOTAL);
	cr_assert_eq(stats(sc).bytes_out, BIG_TOTAL);
	cr_assert_eq(stats(sc).clean_closes, 1);
	cr_assert_eq(stats(cc).clean_closes, 1);
	struct peer *peers[] = {s, c};

	conn_finish(&ct, peers, 2);
	keel_tls_ctx_free(sc);
	keel_tls_ctx_free(cc);
}
