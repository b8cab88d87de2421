/* SPDX-License-Identifier: MIT */
/*
 * test_ktls.c: the kTLS key hand-off of libkeel-tls, without the kernel's
 * tls ULP (this kernel has none): tls/'s test seam pretends the probe said
 * yes, and the keys a stream would give setsockopt(SOL_TLS) are checked
 * by doing the kernel's part in user space.
 *
 * A keel server engine and a plain OpenSSL client over memory BIOs
 * complete a handshake (the server's session tickets included: records
 * under the application key before the hand-off). Then, with the keys
 * and sequence numbers the server would hand over:
 *   - the client's next application records decrypt (EVP, nonce = IV xor
 *     sequence, the record's AAD) with the receive keys;
 *   - records the test encrypts with the send keys are accepted by the
 *     OpenSSL client (SSL_read returns their plaintext);
 * for TLS 1.3 with AES-128-GCM, AES-256-GCM and ChaCha20-Poly1305, and
 * TLS 1.2 with ECDHE-ECDSA-AES128-GCM-SHA256 and
 * ECDHE-ECDSA-CHACHA20-POLY1305.
 * And the refusals: records of the peer already read past the handshake
 * (-EBUSY), kTLS off; describe and REQUIRE when the kernel (pretends to)
 * take keys.
 *
 * Streams over loopback TCP with a plain OpenSSL client in a thread, the
 * seam standing in for setsockopt: the keel server reads the handshake a
 * record at a time, so the client's records written right after it stay
 * in the socket; the keys go to the seam; from there keel_tls_recv and
 * keel_tls_send move the socket's bytes as they are (with no kernel TLS
 * here they are records, which the test opens and seals with the keys
 * the seam got), and keel_tls_shutdown sends its alert. A refused
 * hand-off leaves the connection on OpenSSL (an echo works, counted in
 * ktls_fallbacks); with REQUIRE it fails the handshake.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/ssl.h>

#include <keel.h>
#include <keel/tls.h>

#include "../tls/internal.h" /* the test seam, the keys */
#include "helpers/keel_test.h"

static char dir[256];
static char cert[300], key[300];

static void setup(void)
{
	char cmd[1024];

	kt_tmpdir_make(dir, sizeof(dir));
	snprintf(cmd, sizeof(cmd),
		 "openssl req -x509 -newkey ec -pkeyopt "
		 "ec_paramgen_curve:P-256 -nodes -keyout %s/k.key -out "
		 "%s/k.pem -days 2 -subj /CN=localhost 2>/dev/null",
		 dir, dir);
	cr_assert_eq(system(cmd), 0, "%s", cmd);
	snprintf(cert, sizeof(cert), "%s/k.pem", dir);
	snprintf(key, sizeof(key), "%s/k.key", dir);
	keel__tls_ktls_force = true;
	signal(SIGPIPE, SIG_IGN); /* a client writing to a closed server */
}

static void teardown(void)
{
	kt_tmpdir_remove(dir);
}

TestSuite(ktls, .init = setup, .fini = teardown, .timeout = 30);

/* ---- a keel server and an OpenSSL client in memory -------------------- */

struct pair {
	struct keel_tls_ctx *ctx;
	struct keel_tls *srv;
	SSL_CTX *cctx;
	SSL *cli;
	BIO *c_in, *c_out; /* the client's: what it reads, what it wrote */
	unsigned char win[KEEL_TLS_STREAM_OUT];
	unsigned char in[65536];
	size_t in_len;
};

static struct keel_tls_ctx *server_ctx(uint16_t version, const char *suite,
				       enum keel_tls_ktls mode)
{
	struct keel_tls_opts o = {.role = KEEL_TLS_SERVER,
				  .cert_file = cert,
				  .key_file = key,
				  .min_version = version,
				  .max_version = version,
				  .ktls = mode};
	struct keel_tls_ctx *ctx;
	char why[256];

	if (version == KEEL_TLS_1_3)
		o.ciphersuites = suite;
	else
		o.ciphers = suite;
	cr_assert_eq(keel_tls_ctx_create(&ctx, &o, why, sizeof(why)), 0, "%s",
		     why);
	return ctx;
}

static void pair_init(struct pair *p, uint16_t version, const char *suite,
		      enum keel_tls_ktls mode)
{
	memset(p, 0, sizeof(*p));
	p->ctx = server_ctx(version, suite, mode);
	cr_assert_eq(keel_tls_new(p->ctx, NULL, &p->srv), 0);
	keel_tls_output(p->srv, p->win, sizeof(p->win));
	p->cctx = SSL_CTX_new(TLS_client_method());
	cr_assert_not_null(p->cctx);
	SSL_CTX_set_min_proto_version(p->cctx, TLS1_2_VERSION);
	if (version == KEEL_TLS_1_3)
		cr_assert_eq(SSL_CTX_set_ciphersuites(p->cctx, suite), 1);
	else
		cr_assert_eq(SSL_CTX_set_cipher_list(p->cctx, suite), 1);
	p->cli = SSL_new(p->cctx);
	p->c_in = BIO_new(BIO_s_mem());
	p->c_out = BIO_new(BIO_s_mem());
	SSL_set_bio(p->cli, p->c_in, p->c_out);
	SSL_set_connect_state(p->cli);
}

static void pair_free(struct pair *p)
{
	SSL_free(p->cli);
	SSL_CTX_free(p->cctx);
	keel_tls_free(p->srv);
	keel_tls_ctx_free(p->ctx);
}

/* The server's output to the client. */
static void to_client(struct pair *p)
{
	size_t n = keel_tls_output_len(p->srv);

	if (n)
		cr_assert_eq(BIO_write(p->c_in, p->win, (int)n), (int)n);
	keel_tls_output(p->srv, p->win, sizeof(p->win));
}

/* What the client wrote, taken out of its BIO into p->in. */
static size_t from_client(struct pair *p)
{
	int n = BIO_read(p->c_out, p->in, sizeof(p->in));

	p->in_len = n > 0 ? (size_t)n : 0;
	return p->in_len;
}

/* The client's reads so far: its tickets processed, nothing for the
 * application. */
static void client_idle(struct pair *p)
{
	char b[16];

	cr_assert_leq(SSL_read(p->cli, b, sizeof(b)), 0);
	cr_assert_eq(SSL_get_error(p->cli, -1), SSL_ERROR_WANT_READ);
}

/*
 * Handshake. `early`: the client writes application data right after its
 * Finished, delivered with it (the server reads past the handshake).
 */
static void handshake(struct pair *p, const char *early)
{
	int s = -EAGAIN, c = 0;

	for (int i = 0; i < 20 && (s != 0 || c != 1); i++) {
		if (c != 1) {
			c = SSL_do_handshake(p->cli);
			if (c == 1 && early)
				cr_assert_gt(
				    SSL_write(p->cli, early, strlen(early)), 0);
		}
		if (s != 0) {
			from_client(p);
			keel_tls_input(p->srv, p->in, p->in_len);
			s = keel_tls_handshake_step(p->srv);
			cr_assert(s == 0 || s == -EAGAIN, "server: %d", s);
		}
		to_client(p);
	}
	cr_assert_eq(s, 0);
	cr_assert_eq(c, 1);
	client_idle(p);
}

/* ---- the kernel's part, in user space ------------------------------- */

struct keys {
	const EVP_CIPHER *cipher;
	unsigned char key[32], nonce[12];
	uint64_t seq;
	bool tls12;
	bool explicit_nonce; /* TLS 1.2 AES-GCM: 8 bytes in each record */
};

static uint64_t be64(const unsigned char *p)
{
	uint64_t v = 0;

	for (int i = 0; i < 8; i++)
		v = v << 8 | p[i];
	return v;
}

static void put_be64(unsigned char *p, uint64_t v)
{
	for (int i = 7; i >= 0; i--, v >>= 8)
		p[i] = (unsigned char)v;
}

static struct keys keys_of(const union keel__tls_crypto *ci)
{
	struct keys k = {.tls12 = ci->info.version == TLS_1_2_VERSION};

	switch (ci->info.cipher_type) {
	case TLS_CIPHER_AES_GCM_128:
		k.cipher = EVP_aes_128_gcm();
		memcpy(k.key, ci->gcm128.key, 16);
		memcpy(k.nonce, ci->gcm128.salt, 4);
		memcpy(k.nonce + 4, ci->gcm128.iv, 8);
		k.seq = be64(ci->gcm128.rec_seq);
		k.explicit_nonce = k.tls12;
		break;
	case TLS_CIPHER_AES_GCM_256:
		k.cipher = EVP_aes_256_gcm();
		memcpy(k.key, ci->gcm256.key, 32);
		memcpy(k.nonce, ci->gcm256.salt, 4);
		memcpy(k.nonce + 4, ci->gcm256.iv, 8);
		k.seq = be64(ci->gcm256.rec_seq);
		k.explicit_nonce = k.tls12;
		break;
	case TLS_CIPHER_CHACHA20_POLY1305:
		k.cipher = EVP_chacha20_poly1305();
		memcpy(k.key, ci->chacha.key, 32);
		memcpy(k.nonce, ci->chacha.iv, 12);
		k.seq = be64(ci->chacha.rec_seq);
		break;
	default:
		cr_assert_fail("cipher type %u", ci->info.cipher_type);
	}
	return k;
}

/* The nonce of record `seq`: TLS 1.3 and ChaCha20 XOR the sequence into
 * the IV; TLS 1.2 AES-GCM sends its explicit part (`explicit`). */
static void nonce_of(const struct keys *k, uint64_t seq,
		     const unsigned char *explicit, unsigned char nonce[12])
{
	memcpy(nonce, k->nonce, 12);
	if (k->explicit_nonce) {
		memcpy(nonce + 4, explicit, 8);
		return;
	}
	for (int i = 0; i < 8; i++)
		nonce[4 + i] ^= (unsigned char)(seq >> (56 - 8 * i));
}

/* Decrypt the application record at `rec` (header included) with `k` at
 * its current sequence number; returns the plaintext's length. */
static size_t open_record(struct keys *k, const unsigned char *rec,
			  size_t rec_len, unsigned char *out)
{
	size_t body = (size_t)rec[3] << 8 | rec[4];
	const unsigned char *p = rec + 5;
	unsigned char nonce[12], aad[13];
	size_t aad_len, ct_len;
	EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
	int n, m;

	cr_assert_geq(rec_len, 5 + body);
	cr_assert_eq(rec[0], 23, "record type %u", rec[0]);
	nonce_of(k, k->seq, p, nonce);
	if (k->explicit_nonce) {
		p += 8;
		body -= 8;
	}
	ct_len = body - 16;
	if (k->tls12) {
		put_be64(aad, k->seq);
		aad[8] = 23;
		aad[9] = 3;
		aad[10] = 3;
		aad[11] = (unsigned char)(ct_len >> 8);
		aad[12] = (unsigned char)ct_len;
		aad_len = 13;
	} else {
		memcpy(aad, rec, 5);
		aad_len = 5;
	}
	cr_assert_eq(EVP_DecryptInit_ex(c, k->cipher, NULL, k->key, nonce), 1);
	cr_assert_eq(EVP_DecryptUpdate(c, NULL, &n, aad, (int)aad_len), 1);
	cr_assert_eq(EVP_DecryptUpdate(c, out, &n, p, (int)ct_len), 1);
	cr_assert_eq(EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_AEAD_SET_TAG, 16,
					 (void *)(p + ct_len)),
		     1);
	cr_assert_eq(EVP_DecryptFinal_ex(c, out + n, &m), 1,
		     "the record does not authenticate at sequence %llu",
		     (unsigned long long)k->seq);
	EVP_CIPHER_CTX_free(c);
	k->seq++;
	n += m;
	if (!k->tls12) {
		/* TLSInnerPlaintext: content, type, zero padding */
		while (n > 0 && !out[n - 1])
			n--;
		cr_assert_gt(n, 0);
		cr_assert_eq(out[n - 1], 23);
		n--;
	}
	return (size_t)n;
}

/* Encrypt `len` bytes of application data as the kernel would: the
 * record into `rec`, its length returned. `explicit` is the TLS 1.2
 * AES-GCM nonce the kernel would send (its IV field counts up). */
static size_t seal_record(struct keys *k, const void *data, size_t len,
			  const unsigned char *explicit, unsigned char *rec)
{
	unsigned char nonce[12], aad[13], inner[256];
	size_t in_len = len, body, aad_len;
	unsigned char *p = rec + 5;
	EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
	int n, m;

	cr_assert_lt(len + 1, sizeof(inner));
	memcpy(inner, data, len);
	if (!k->tls12)
		inner[in_len++] = 23; /* the content type */
	body = in_len + 16 + (k->explicit_nonce ? 8 : 0);
	rec[0] = 23;
	rec[1] = 3;
	rec[2] = 3;
	rec[3] = (unsigned char)(body >> 8);
	rec[4] = (unsigned char)body;
	nonce_of(k, k->seq, explicit, nonce);
	if (k->explicit_nonce) {
		memcpy(p, explicit, 8);
		p += 8;
	}
	if (k->tls12) {
		put_be64(aad, k->seq);
		aad[8] = 23;
		aad[9] = 3;
		aad[10] = 3;
		aad[11] = (unsigned char)(len >> 8);
		aad[12] = (unsigned char)len;
		aad_len = 13;
	} else {
		memcpy(aad, rec, 5);
		aad_len = 5;
	}
	cr_assert_eq(EVP_EncryptInit_ex(c, k->cipher, NULL, k->key, nonce), 1);
	cr_assert_eq(EVP_EncryptUpdate(c, NULL, &n, aad, (int)aad_len), 1);
	cr_assert_eq(EVP_EncryptUpdate(c, p, &n, inner, (int)in_len), 1);
	cr_assert_eq(EVP_EncryptFinal_ex(c, p + n, &m), 1);
	cr_assert_eq(
	    EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_AEAD_GET_TAG, 16, p + n + m), 1);
	EVP_CIPHER_CTX_free(c);
	k->seq++;
	return 5 + body;
}

/* ---- the hand-off ------------------------------------------------------ */

static void hand_off(uint16_t version, const char *suite, unsigned type,
		     uint64_t tx_records)
{
	struct pair *p = malloc(sizeof(*p));
	union keel__tls_crypto tx, rx;
	struct keys ktx, krx;
	unsigned char plain[256], rec[512], explicit[8];
	const char *why = NULL;
	uint32_t len = 0;
	size_t off = 0;
	char got[64];

	pair_init(p, version, suite, KEEL_TLS_KTLS_AUTO);
	handshake(p, NULL);
	cr_assert_eq(keel__tls_ktls_keys(p->srv, &tx, &rx, &len, &why), 0, "%s",
		     why);
	cr_assert_eq(tx.info.cipher_type, type);
	cr_assert_eq(rx.info.cipher_type, type);
	cr_assert_eq(tx.info.version, version);
	cr_assert_gt(len, sizeof(struct tls_crypto_info));
	ktx = keys_of(&tx);
	krx = keys_of(&rx);
	/* TLS 1.3: the two session tickets went out under the application
	 * key; TLS 1.2: the Finished each way did. */
	cr_assert_eq(ktx.seq, tx_records, "tx sequence %llu",
		     (unsigned long long)ktx.seq);
	cr_assert_eq(krx.seq, version == KEEL_TLS_1_3 ? 0 : 1,
		     "rx sequence %llu", (unsigned long long)krx.seq);

	/* The client's records, opened with the receive keys. */
	cr_assert_eq(SSL_write(p->cli, "first record", 12), 12);
	cr_assert_eq(SSL_write(p->cli, "and the second", 14), 14);
	from_client(p);
	cr_assert_eq(open_record(&krx, p->in, p->in_len, plain), 12);
	cr_assert_eq(memcmp(plain, "first record", 12), 0);
	off = 5 + ((size_t)p->in[3] << 8 | p->in[4]);
	cr_assert_eq(open_record(&krx, p->in + off, p->in_len - off, plain),
		     14);
	cr_assert_eq(memcmp(plain, "and the second", 14), 0);

	/* Records sealed with the send keys, read by the client. */
	memset(explicit, 0, sizeof(explicit));
	if (tx.info.cipher_type == TLS_CIPHER_AES_GCM_128)
		memcpy(explicit, tx.gcm128.iv, 8);
	else if (tx.info.cipher_type == TLS_CIPHER_AES_GCM_256)
		memcpy(explicit, tx.gcm256.iv, 8);
	for (int i = 0; i < 2; i++) {
		const char *msg = i ? "from the kernel, again"
				    : "from the "
				      "kernel";
		size_t n = seal_record(&ktx, msg, strlen(msg), explicit, rec);

		cr_assert_eq(BIO_write(p->c_in, rec, (int)n), (int)n);
		int r = SSL_read(p->cli, got, sizeof(got));

		cr_assert_eq(r, (int)strlen(msg), "SSL_read: %d (error %d)", r,
			     SSL_get_error(p->cli, r));
		cr_assert_eq(memcmp(got, msg, strlen(msg)), 0);
		/* the kernel's IV counts up */
		put_be64(explicit, be64(explicit) + 1);
	}
	pair_free(p);
	free(p);
}

Test(ktls, tls13_aes128gcm_keys_match_the_records)
{
	hand_off(KEEL_TLS_1_3, "TLS_AES_128_GCM_SHA256", TLS_CIPHER_AES_GCM_128,
		 2);
}

Test(ktls, tls13_aes256gcm_keys_match_the_records)
{
	hand_off(KEEL_TLS_1_3, "TLS_AES_256_GCM_SHA384", TLS_CIPHER_AES_GCM_256,
		 2);
}

Test(ktls, tls13_chacha20_keys_match_the_records)
{
	hand_off(KEEL_TLS_1_3, "TLS_CHACHA20_POLY1305_SHA256",
		 TLS_CIPHER_CHACHA20_POLY1305, 2);
}

Test(ktls, tls12_aes128gcm_keys_match_the_records)
{
	hand_off(KEEL_TLS_1_2, "ECDHE-ECDSA-AES128-GCM-SHA256",
		 TLS_CIPHER_AES_GCM_128, 1);
}

Test(ktls, tls12_chacha20_keys_match_the_records)
{
	hand_off(KEEL_TLS_1_2, "ECDHE-ECDSA-CHACHA20-POLY1305",
		 TLS_CIPHER_CHACHA20_POLY1305, 1);
}

/* ---- refusals ---------------------------------------------------------- */

Test(ktls, records_read_past_the_handshake_keep_it_in_openssl)
{
	struct pair *p = malloc(sizeof(*p));
	union keel__tls_crypto tx, rx;
	const char *why = NULL;
	uint32_t len;

	pair_init(p, KEEL_TLS_1_3, "TLS_AES_128_GCM_SHA256",
		  KEEL_TLS_KTLS_AUTO);
	handshake(p, "with the Finished");
	cr_assert_eq(keel__tls_ktls_keys(p->srv, &tx, &rx, &len, &why), -EBUSY);
	cr_assert(strstr(why, "already read"), "%s", why);
	pair_free(p);
	free(p);
}

Test(ktls, off_plans_nothing)
{
	struct pair *p = malloc(sizeof(*p));
	union keel__tls_crypto tx, rx;
	const char *why = NULL;
	uint32_t len;

	pair_init(p, KEEL_TLS_1_3, "TLS_AES_128_GCM_SHA256", KEEL_TLS_KTLS_OFF);
	handshake(p, NULL);
	cr_assert_eq(keel__tls_ktls_keys(p->srv, &tx, &rx, &len, &why),
		     -EOPNOTSUPP);
	pair_free(p);
	free(p);
}

Test(ktls, describe_and_require_when_the_kernel_takes_keys)
{
	struct keel_tls_opts o = {.role = KEEL_TLS_CLIENT,
				  .verify_none = true,
				  .ktls = KEEL_TLS_KTLS_REQUIRE};
	struct keel_tls_ctx *ctx;
	char why[256], line[512];

	cr_assert_eq(keel_tls_ctx_create(&ctx, &o, why, sizeof(why)), 0, "%s",
		     why);
	cr_assert_gt(keel_tls_ctx_describe(ctx, line, sizeof(line)), 0);
	cr_assert(strstr(line, "kTLS: on"), "%s", line);
	keel_tls_ctx_free(ctx);
}

/* ---- streams, with the seam for setsockopt ----------------------------- */

static struct {
	int calls, fd, result;
	union keel__tls_crypto tx, rx;
	uint32_t len;
} seam;

static int seam_install(int fd, const union keel__tls_crypto *tx,
			const union keel__tls_crypto *rx, uint32_t len)
{
	seam.calls++;
	seam.fd = fd;
	seam.tx = *tx;
	seam.rx = *rx;
	seam.len = len;
	return seam.result;
}

enum { S_RECORDS, S_ECHO };

struct server {
	struct keel_task task;
	struct keel_tls_stream s;
	struct keel_tls *tls;
	struct keel_bufring *ring;
	int fd, mode, hs, last, sent;
	unsigned char got[1024];
	size_t got_len;
	unsigned char rec[512];
	size_t rec_len;
	char buf[256];
};

/* Two whole records in what was received? */
static bool two_records(const struct server *sv)
{
	size_t off = 0;

	for (int i = 0; i < 2; i++) {
		if (sv->got_len < off + 5)
			return false;
		off += 5 + ((size_t)sv->got[off + 3] << 8 | sv->got[off + 4]);
	}
	return sv->got_len >= off;
}

static int server_step(struct keel_task *t)
{
	struct server *sv = keel_container_of(t, struct server, task);

	KEEL_BEGIN(t);
	sv->hs = keel_tls_stream_open(t, &sv->s, sv->tls, sv->fd, sv->ring);
	if (sv->hs)
		goto out;
	KEEL_AWAIT_CALL(t, keel_tls_handshake(t, &sv->s));
	sv->hs = keel_res(t);
	if (sv->hs)
		goto close;
	if (sv->mode == S_ECHO) {
		KEEL_AWAIT_CALL(
		    t, keel_tls_recv(t, &sv->s, sv->buf, sizeof(sv->buf)));
		sv->last = keel_res(t);
		if (sv->last <= 0)
			goto close;
		KEEL_AWAIT_CALL(
		    t, keel_tls_send(t, &sv->s, sv->buf, (size_t)sv->last));
		sv->sent = keel_res(t);
		goto close;
	}
	/* What the kernel would decrypt comes as it is. */
	while (!two_records(sv)) {
		KEEL_AWAIT_CALL(t,
				keel_tls_recv(t, &sv->s, sv->got + sv->got_len,
					      sizeof(sv->got) - sv->got_len));
		sv->last = keel_res(t);
		if (sv->last <= 0)
			goto close;
		sv->got_len += (size_t)sv->last;
	}
	{
		struct keys k = keys_of(&seam.tx);
		unsigned char explicit[8] = {0};

		if (seam.tx.info.cipher_type == TLS_CIPHER_AES_GCM_128)
			memcpy(explicit, seam.tx.gcm128.iv, 8);
		sv->rec_len = seal_record(&k, "sealed by the kernel", 20,
					  explicit, sv->rec);
	}
	KEEL_AWAIT_CALL(t, keel_tls_send(t, &sv->s, sv->rec, sv->rec_len));
	sv->sent = keel_res(t);
	KEEL_AWAIT_CALL(t, keel_tls_shutdown(t, &sv->s));
	sv->last = keel_res(t);
close:
	keel_tls_stream_close(&sv->s);
out:
	KEEL_AWAIT(t, keel_close(t, sv->fd));
	KEEL_END(t);
}

static KEEL_TASK_TYPE(server_task, struct server, task, server_step);

/*
 * A plain OpenSSL client over memory BIOs, moving the bytes itself: its
 * Finished and its first records go out in one write, so they reach the
 * server together (a server that read past its handshake would take the
 * records along).
 */
struct client {
	int fd, mode, handshake;
	char read[64];
	int read_len;
};

static void flush_out(BIO *out, int fd)
{
	char b[16384];
	int n;

	while ((n = BIO_read(out, b, sizeof(b))) > 0)
		cr_assert_eq(write(fd, b, (size_t)n), n);
}

static bool fill_in(BIO *in, int fd)
{
	char b[16384];
	ssize_t n = read(fd, b, sizeof(b));

	if (n <= 0)
		return false;
	BIO_write(in, b, (int)n);
	return true;
}

static void *client_main(void *arg)
{
	struct client *c = arg;
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
	BIO *in = BIO_new(BIO_s_mem()), *out = BIO_new(BIO_s_mem());
	SSL *ssl;

	SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
	ssl = SSL_new(ctx);
	SSL_set_bio(ssl, in, out);
	SSL_set_connect_state(ssl);
	while ((c->handshake = SSL_do_handshake(ssl)) != 1) {
		flush_out(out, c->fd);
		if (SSL_get_error(ssl, c->handshake) != SSL_ERROR_WANT_READ ||
		    !fill_in(in, c->fd))
			goto out;
	}
	if (c->mode == S_ECHO) {
		SSL_write(ssl, "ping", 4);
	} else {
		SSL_write(ssl, "first record", 12);
		SSL_write(ssl, "and the second", 14);
	}
	flush_out(out, c->fd); /* the Finished and the records at once */
	for (;;) {
		c->read_len = SSL_read(ssl, c->read, sizeof(c->read) - 1);
		if (c->read_len > 0 ||
		    SSL_get_error(ssl, c->read_len) != SSL_ERROR_WANT_READ ||
		    !fill_in(in, c->fd))
			break;
	}
out:
	SSL_free(ssl);
	SSL_CTX_free(ctx);
	close(c->fd);
	return NULL;
}

struct run {
	struct keel_tls_ctx *ctx;
	struct server *sv;
	struct client cl;
	struct keel_tls_stats st;
	struct keel_loop *loop;
};

static void run_stream(struct run *rn, enum keel_tls_ktls mode, int which,
		       int install_result)
{
	struct keel_bufring_opts ro = {.count = 16, .size = 16384};
	struct keel_bufring *ring;
	pthread_t th;
	int fds[2];

	memset(&seam, 0, sizeof(seam));
	seam.result = install_result;
	keel__tls_ktls_install = seam_install;
	rn->ctx = server_ctx(KEEL_TLS_1_3, "TLS_AES_128_GCM_SHA256", mode);
	rn->loop = kt_loop_new(NULL);
	cr_assert_eq(keel_bufring_create(rn->loop, &ro, &ring), 0);
	kt_tcp_pair(fds);
	rn->sv = kt_spawn(rn->loop, &server_task,
			  KEEL_PRIO_NORMAL | KEEL_SPAWN_JOINABLE);
	cr_assert_eq(keel_tls_new(rn->ctx, NULL, &rn->sv->tls), 0);
	rn->sv->ring = ring;
	rn->sv->fd = fds[0];
	rn->sv->mode = which;
	rn->cl.fd = fds[1];
	rn->cl.mode = which;
	cr_assert_eq(pthread_create(&th, NULL, client_main, &rn->cl), 0);
	kt_loop_run(rn->loop);
	pthread_join(th, NULL);
	keel_tls_ctx_stats(rn->ctx, &rn->st);
}

static void run_end(struct run *rn)
{
	keel_tls_free(rn->sv->tls);
	keel_task_detach(&rn->sv->task);
	keel_loop_destroy(rn->loop);
	keel_tls_ctx_free(rn->ctx);
	keel__tls_ktls_install = NULL;
}

Test(ktls, a_stream_hands_over_at_a_record_boundary)
{
	struct run rn = {0};
	unsigned char plain[256];
	struct keys k;
	size_t off;

	run_stream(&rn, KEEL_TLS_KTLS_AUTO, S_RECORDS, 0);
	cr_assert_eq(rn.cl.handshake, 1);
	cr_assert_eq(rn.sv->hs, 0);
	cr_assert_eq(seam.calls, 1);
	cr_assert_eq(rn.st.ktls, 1);
	cr_assert_eq(rn.st.ktls_fallbacks, 0);
	cr_assert_null(keel_tls_ktls(rn.sv->tls));
	/* Nothing of the client's records went to OpenSSL: they open with
	 * the receiving keys from sequence 0 on. */
	k = keys_of(&seam.rx);
	cr_assert_eq(k.seq, 0);
	cr_assert_eq(open_record(&k, rn.sv->got, rn.sv->got_len, plain), 12);
	cr_assert_eq(memcmp(plain, "first record", 12), 0);
	off = 5 + ((size_t)rn.sv->got[3] << 8 | rn.sv->got[4]);
	cr_assert_eq(
	    open_record(&k, rn.sv->got + off, rn.sv->got_len - off, plain), 14);
	/* The record sent as it was reached the client whole. */
	cr_assert_eq(rn.sv->sent, (int)rn.sv->rec_len);
	cr_assert_eq(rn.cl.read_len, 20, "%d", rn.cl.read_len);
	cr_assert_eq(memcmp(rn.cl.read, "sealed by the kernel", 20), 0);
	cr_assert_eq(rn.sv->last, 0, "shutdown: %d", rn.sv->last);
	/* The engine is not used any more. */
	cr_assert_eq(keel_tls_write(rn.sv->tls, "x", 1), -EPROTO);
	run_end(&rn);
}

Test(ktls, a_refused_hand_off_stays_on_openssl)
{
	struct run rn = {0};

	run_stream(&rn, KEEL_TLS_KTLS_AUTO, S_ECHO, -ENOPROTOOPT);
	cr_assert_eq(rn.sv->hs, 0);
	cr_assert_eq(seam.calls, 1);
	cr_assert_eq(rn.st.ktls, 0);
	cr_assert_eq(rn.st.ktls_fallbacks, 1);
	cr_assert_not_null(keel_tls_ktls(rn.sv->tls));
	/* the ping the client wrote right after the handshake waited in
	 * the socket for the recv stream */
	cr_assert_eq(rn.sv->last, 4);
	cr_assert_eq(rn.sv->sent, 4);
	cr_assert_eq(rn.cl.read_len, 4);
	cr_assert_eq(memcmp(rn.cl.read, "ping", 4), 0);
	run_end(&rn);
}

Test(ktls, required_and_refused_fails_the_handshake)
{
	struct run rn = {0};

	run_stream(&rn, KEEL_TLS_KTLS_REQUIRE, S_ECHO, -ENOPROTOOPT);
	cr_assert_eq(rn.sv->hs, -EOPNOTSUPP);
	cr_assert_eq(rn.st.ktls, 0);
	cr_assert_eq(rn.st.ktls_fallbacks, 1);
	cr_assert_eq(rn.st.failed, 1);
	cr_assert_leq(rn.cl.read_len, 0);
	run_end(&rn);
}
