/* SPDX-License-Identifier: MIT */
/*
 * tls/engine.c: one TLS connection, sans I/O. Owns the SSL object and the
 * BIO that connects it to the caller's bytes.
 *
 * The BIO is keel's own method, not a BIO pair: a read hands OpenSSL the
 * caller's ciphertext straight from where it lies (a buffer ring's buffer,
 * for a stream), a write puts ciphertext straight into the caller's output
 * window. A BIO pair would copy each byte once more through its own ring.
 * When the input is used up a read says "retry" (-EAGAIN to the caller);
 * when the window is full a write says "retry" (-ENOBUFS).
 *
 * OpenSSL keeps a record it could not write whole and insists that the
 * next write be the same call (same type and length: "bad write retry").
 * So the engine never starts a record it has no room for: keel_tls_write
 * encrypts only what fits with room to spare for a record's overhead, and
 * keel_tls_read runs only with room for the control records a read may
 * answer with (a KeyUpdate, an alert). Then a reader and a writer can take
 * turns on one connection, as a stream's two directions do.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/kdf.h>
#include <openssl/x509v3.h>

#include "internal.h"

/* The most a record adds to its plaintext: header, IV, MAC, padding (CBC
 * suites of TLS 1.2 are the worst; AEAD adds 22 to 29 bytes). */
#define RECORD_OVERHEAD 512
/* Room a read needs for what it may write back: a KeyUpdate answer or an
 * alert are some 30 bytes each, and OpenSSL refuses more than 32
 * KeyUpdates in a row. */
#define CONTROL_ROOM 2048
/* The most plaintext in one record. */
#define RECORD_PLAIN 16384
/* OpenSSL's ctrl that hands a BIO the kernel's keys at the switch to the
 * application key, with SSL_OP_ENABLE_KTLS (include/internal/bio.h:
 * BIO_CTRL_SET_KTLS; `num` is 1 for the sending direction, `ptr` its
 * ktls_crypto_info_t, which begins with linux/tls.h's struct). */
#define BIO_CTRL_SET_KTLS 72

/* ---- the BIO ---------------------------------------------------------- */

/* Free bytes in the window (a stream may lower its limit below what a
 * reader already wrote). */
static size_t window_room(const struct keel_tls *tls)
{
	return tls->out_len < tls->out_cap ? tls->out_cap - tls->out_len : 0;
}

/* Count the records in `len` bytes of a direction's ciphertext (kTLS:
 * their number after the key switch is the sequence number the kernel
 * starts at). */
static void count_records(struct keel__tls_ktls_dir *d, const unsigned char *p,
			  size_t len)
{
	while (len) {
		if (d->skip) {
			size_t k = d->skip < len ? d->skip : len;

			d->skip -= (uint32_t)k;
			p += k;
			len -= k;
			continue;
		}
		d->hdr[d->hdr_len++] = *p++;
		len--;
		if (d->hdr_len == sizeof(d->hdr)) {
			d->records++;
			d->skip = (uint32_t)d->hdr[3] << 8 | d->hdr[4];
			d->hdr_len = 0;
		}
	}
}

static int bio_read(BIO *b, char *buf, int len)
{
	struct keel_tls *tls = BIO_get_data(b);
	size_t n = tls->in_left < (size_t)len ? tls->in_left : (size_t)len;

	BIO_clear_retry_flags(b);
	if (!n) {
		BIO_set_retry_read(b);
		return -1;
	}
	memcpy(buf, tls->in, n);
	tls->in += n;
	tls->in_left -= n;
	if (tls->ktls && tls->ktls->rx.len)
		count_records(&tls->ktls->rx, (const unsigned char *)buf, n);
	return (int)n;
}

static int bio_write(BIO *b, const char *buf, int len)
{
	struct keel_tls *tls = BIO_get_data(b);
	size_t room = window_room(tls);
	size_t n = room < (size_t)len ? room : (size_t)len;

	BIO_clear_retry_flags(b);
	if (!n) {
		BIO_set_retry_write(b);
		return -1;
	}
	memcpy(tls->out + tls->out_len, buf, n);
	tls->out_len += n;
	if (tls->ktls && tls->ktls->tx.len)
		count_records(&tls->ktls->tx, (const unsigned char *)buf, n);
	return (int)n;
}

/* The size of a kernel crypto_info of `type` and where its IV and record
 * sequence lie; 0: a cipher the kernel's TLS does not take from us. */
static uint32_t crypto_layout(unsigned type, size_t *iv, size_t *iv_len,
			      size_t *seq)
{
	switch (type) {
	case TLS_CIPHER_AES_GCM_128:
		*iv = offsetof(struct tls12_crypto_info_aes_gcm_128, iv);
		*iv_len = TLS_CIPHER_AES_GCM_128_IV_SIZE;
		*seq = offsetof(struct tls12_crypto_info_aes_gcm_128, rec_seq);
		return sizeof(struct tls12_crypto_info_aes_gcm_128);
	case TLS_CIPHER_AES_GCM_256:
		*iv = offsetof(struct tls12_crypto_info_aes_gcm_256, iv);
		*iv_len = TLS_CIPHER_AES_GCM_256_IV_SIZE;
		*seq = offsetof(struct tls12_crypto_info_aes_gcm_256, rec_seq);
		return sizeof(struct tls12_crypto_info_aes_gcm_256);
	case TLS_CIPHER_CHACHA20_POLY1305:
		*iv = offsetof(struct tls12_crypto_info_chacha20_poly1305, iv);
		*iv_len = TLS_CIPHER_CHACHA20_POLY1305_IV_SIZE;
		*seq = offsetof(struct tls12_crypto_info_chacha20_poly1305,
				rec_seq);
		return sizeof(struct tls12_crypto_info_chacha20_poly1305);
	}
	return 0;
}

/*
 * OpenSSL switches a direction to the application key and offers the
 * kernel's keys (SSL_OP_ENABLE_KTLS). Keep them and say no: OpenSSL goes
 * on with the records itself until the handshake is over and the stream
 * hands over (keel__tls_ktls_keys). Saying yes would make OpenSSL write
 * plaintext into the window from here on (the server's session tickets
 * too), which only a socket with the keys already set could take.
 */
static void ktls_capture(struct keel_tls *tls, int is_tx, const void *ptr)
{
	struct keel__tls_ktls_dir *d = is_tx ? &tls->ktls->tx : &tls->ktls->rx;
	struct tls_crypto_info info;
	size_t iv = 0, iv_len = 0, seq = 0;
	uint32_t len;

	memcpy(&info, ptr, sizeof(info));
	len = crypto_layout(info.cipher_type, &iv, &iv_len, &seq);
	OPENSSL_cleanse(d, sizeof(*d));
	if (!len || (info.version != TLS_1_2_VERSION &&
		     info.version != TLS_1_3_VERSION))
		return; /* not one for the kernel: stays unset */
	memcpy(&d->ci, ptr, len);
	d->len = len;
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
	switch (cmd) {
	case BIO_CTRL_FLUSH:
		return 1; /* the caller sends the window */
	case BIO_CTRL_PENDING:
	case BIO_CTRL_WPENDING:
		return 0;
	case BIO_CTRL_SET_KTLS: {
		struct keel_tls *tls = BIO_get_data(b);

		if (tls->ktls && ptr)
			ktls_capture(tls, num != 0, ptr);
		return 0;
	}
	}
	return 0;
}

static int bio_create(BIO *b)
{
	BIO_set_init(b, 1);
	return 1;
}

static pthread_once_t bio_once = PTHREAD_ONCE_INIT;
static BIO_METHOD *bio_method;

static void bio_method_init(void)
{
	BIO_METHOD *m =
	    BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "keel");

	if (!m)
		return;
	BIO_meth_set_read(m, bio_read);
	BIO_meth_set_write(m, bio_write);
	BIO_meth_set_ctrl(m, bio_ctrl);
	BIO_meth_set_create(m, bio_create);
	bio_method = m; /* the process's, never freed */
}

BIO_METHOD *keel__tls_bio_method(void)
{
	pthread_once(&bio_once, bio_method_init);
	return bio_method;
}

/* ---- connections ------------------------------------------------------ */

static bool is_ip(const char *name)
{
	unsigned char addr[sizeof(struct in6_addr)];

	return inet_pton(AF_INET, name, addr) == 1 ||
	       inet_pton(AF_INET6, name, addr) == 1;
}

int keel_tls_new(struct keel_tls_ctx *ctx, const char *server_name,
		 struct keel_tls **out)
{
	struct keel_tls *tls;
	BIO *bio;
	int idx = keel__tls_ssl_index();

	*out = NULL;
	if (!ctx || idx < 0 || !keel__tls_bio_method())
		return -ENOMEM;
	tls = calloc(1, sizeof(*tls));
	if (!tls)
		return -ENOMEM;
	tls->ctx = ctx;
	tls->ssl = SSL_new(ctx->ssl_ctx);
	bio = tls->ssl ? BIO_new(keel__tls_bio_method()) : NULL;
	if (!bio)
		goto nomem;
	BIO_set_data(bio, tls);
	SSL_set_bio(tls->ssl, bio, bio); /* the SSL owns it */
	SSL_set_ex_data(tls->ssl, idx, tls);
	if (ctx->ktls != KEEL_TLS_KTLS_OFF && ctx->ktls_possible) {
		/* OpenSSL offers the keys at the key switch (ktls_capture) */
		tls->ktls = calloc(1, sizeof(*tls->ktls));
		if (!tls->ktls)
			goto nomem;
		SSL_set_options(tls->ssl, SSL_OP_ENABLE_KTLS);
	}
	if (ctx->role == KEEL_TLS_SERVER) {
		SSL_set_accept_state(tls->ssl);
		*out = tls;
		return 0;
	}
	SSL_set_connect_state(tls->ssl);
	if (server_name) {
		tls->server_name = strdup(server_name);
		if (!tls->server_name)
			goto nomem;
		/* An IP address is verified against the certificate's IP
		 * addresses and sent as no SNI (RFC 6066 forbids it); a name
		 * against its DNS names, and sent. */
		if (is_ip(server_name)) {
			if (ctx->verify &&
			    X509_VERIFY_PARAM_set1_ip_asc(
				SSL_get0_param(tls->ssl), server_name) != 1)
				goto nomem;
		} else {
			if (SSL_set_tlsext_host_name(tls->ssl, server_name) !=
			    1)
				goto nomem;
			if (ctx->verify &&
			    SSL_set1_host(tls->ssl, server_name) != 1)
				goto nomem;
		}
	}
	SSL_SESSION *sess = keel__tls_session_get(ctx, server_name);

	if (sess) {
		SSL_set_session(tls->ssl, sess);
		SSL_SESSION_free(sess);
	}
	*out = tls;
	return 0;
nomem:
	ERR_clear_error();
	keel_tls_free(tls);
	return -ENOMEM;
}

void keel_tls_free(struct keel_tls *tls)
{
	if (!tls)
		return;
	/* OpenSSL makes the session of a connection freed without our
	 * close_notify unresumable (a client's cached ticket too). A
	 * connection that failed stays so (OpenSSL marked it already); one
	 * that simply ended, cleanly or dropped, keeps its session. */
	if ((tls->flags & KEEL__TLS_HS_DONE) &&
	    !(tls->flags & (KEEL__TLS_FAILED | KEEL__TLS_RENEG)))
		SSL_set_shutdown(tls->ssl, SSL_get_shutdown(tls->ssl) |
					       SSL_SENT_SHUTDOWN);
	keel__tls_ktls_done(tls);
	SSL_free(tls->ssl);
	free(tls->server_name);
	free(tls->alpn);
	free(tls);
}

void keel_tls_input(struct keel_tls *tls, const void *data, size_t len)
{
	tls->in = data;
	tls->in_left = len;
}

size_t keel_tls_input_left(const struct keel_tls *tls)
{
	return tls->in_left;
}

void keel_tls_output(struct keel_tls *tls, void *buf, size_t cap)
{
	keel__tls_window(tls, buf, cap, 0);
}

void keel__tls_window(struct keel_tls *tls, void *buf, size_t cap, size_t len)
{
	tls->out = buf;
	tls->out_cap = cap;
	tls->out_len = len;
}

size_t keel_tls_output_len(const struct keel_tls *tls)
{
	return tls->out_len;
}

void keel__tls_failed(struct keel_tls *tls)
{
	if (!(tls->flags & KEEL__TLS_FAILED)) {
		tls->flags |= KEEL__TLS_FAILED;
		keel__tls_count(&tls->ctx->c.failed, 1);
	}
}

/*
 * What an SSL call's result `r` means for the caller. The error queue is
 * cleared after a failure, so that the next call's SSL_get_error() sees
 * only its own.
 */
static int ssl_result(struct keel_tls *tls, int r)
{
	int e = SSL_get_error(tls->ssl, r);

	switch (e) {
	case SSL_ERROR_WANT_READ:
		return -EAGAIN;
	case SSL_ERROR_WANT_WRITE:
		return -ENOBUFS;
	case SSL_ERROR_ZERO_RETURN:
		return 0;
	}
	ERR_clear_error();
	keel__tls_failed(tls);
	if (!(tls->flags & KEEL__TLS_HS_DONE) &&
	    SSL_get_verify_result(tls->ssl) != X509_V_OK)
		return -EKEYREJECTED;
	return -EPROTO;
}

int keel_tls_handshake_step(struct keel_tls *tls)
{
	int r;

	if (tls->flags & KEEL__TLS_HS_DONE)
		return 0;
	if (tls->flags & KEEL__TLS_FAILED)
		return -EPROTO;
	for (;;) {
		size_t before = tls->in_left;

		r = SSL_do_handshake(tls->ssl);
		if (r == 1 || !tls->in_left || tls->in_left == before ||
		    SSL_get_error(tls->ssl, r) != SSL_ERROR_WANT_READ)
			break;
	}
	if (r == 1) {
		const unsigned char *p;
		unsigned len;

		tls->flags |= KEEL__TLS_HS_DONE;
		keel__tls_count(&tls->ctx->c.handshakes, 1);
		/* OpenSSL's ALPN is not NUL-terminated: keep a copy. */
		SSL_get0_alpn_selected(tls->ssl, &p, &len);
		if (p && len && (tls->alpn = malloc(len + 1))) {
			memcpy(tls->alpn, p, len);
			tls->alpn[len] = '\0';
		}
		if (SSL_session_reused(tls->ssl))
			keel__tls_count(&tls->ctx->c.resumed, 1);
		return 0;
	}
	r = ssl_result(tls, r);
	return r == 0 ? -EPROTO : r;
}

int keel_tls_read(struct keel_tls *tls, void *buf, size_t len)
{
	size_t n = 0;
	int r;

	if (tls->flags & KEEL__TLS_CLOSE_RECVD)
		return 0;
	if (tls->flags & (KEEL__TLS_FAILED | KEEL__TLS_RENEG | KEEL__TLS_KTLS))
		return -EPROTO; /* KTLS: the stream reads from the kernel */
	if (!(tls->flags & KEEL__TLS_HS_DONE))
		return -EPROTO; /* the handshake first */
	if (tls->out_len && window_room(tls) < CONTROL_ROOM)
		return -ENOBUFS;
	if (len > INT32_MAX)
		len = INT32_MAX;
	/* "Want read" with input left (OpenSSL may stop after a
	 * post-handshake message): go on while the input moves. */
	for (;;) {
		size_t before = tls->in_left;

		r = SSL_read_ex(tls->ssl, buf, len, &n);
		if (r == 1 || !tls->in_left || tls->in_left == before ||
		    (tls->flags & KEEL__TLS_RENEG) ||
		    SSL_get_error(tls->ssl, 0) != SSL_ERROR_WANT_READ)
			break;
	}
	if (tls->flags & KEEL__TLS_RENEG) {
		/* refused (the alert is in the window); the peer wanted
		 * a handshake we will not do: the connection ends */
		ERR_clear_error();
		keel__tls_failed(tls);
		return -EPROTO;
	}
	if (r == 1) {
		keel__tls_count(&tls->ctx->c.bytes_in, n);
		return (int)n;
	}
	r = ssl_result(tls, 0);
	if (r == 0) {
		tls->flags |= KEEL__TLS_CLOSE_RECVD;
		keel__tls_count(&tls->ctx->c.clean_closes, 1);
	}
	return r;
}

int keel_tls_write(struct keel_tls *tls, const void *buf, size_t len)
{
	size_t room = window_room(tls), n = 0;
	int r;

	if (tls->flags & (KEEL__TLS_FAILED | KEEL__TLS_RENEG |
			  KEEL__TLS_CLOSE_SENT | KEEL__TLS_KTLS))
		return -EPROTO;
	if (!(tls->flags & KEEL__TLS_HS_DONE))
		return -EPROTO;
	if (!len)
		return 0;
	/* Start only a record that fits whole (see the top of the file). */
	if (room <= RECORD_OVERHEAD)
		return -ENOBUFS;
	room -= RECORD_OVERHEAD;
	if (len > room)
		len = room;
	if (len > RECORD_PLAIN)
		len = RECORD_PLAIN;
	r = SSL_write_ex(tls->ssl, buf, len, &n);
	if (r == 1) {
		keel__tls_count(&tls->ctx->c.bytes_out, n);
		return (int)n;
	}
	r = ssl_result(tls, 0);
	return r == 0 ? -EPROTO : r;
}

int keel_tls_close_notify(struct keel_tls *tls)
{
	int r;

	if (tls->flags & KEEL__TLS_CLOSE_SENT)
		return 0;
	if (tls->flags & (KEEL__TLS_FAILED | KEEL__TLS_KTLS))
		return -EPROTO;
	if (window_room(tls) < RECORD_OVERHEAD)
		return -ENOBUFS;
	/* A KeyUpdate we asked for (SSL_key_update) is still to be written,
	 * and OpenSSL refuses to shut down "in init": write it first. */
	if (SSL_in_init(tls->ssl)) {
		r = SSL_do_handshake(tls->ssl);
		if (r != 1) {
			r = ssl_result(tls, r);
			return r == 0 ? -EPROTO : r;
		}
	}
	r = SSL_shutdown(tls->ssl);
	if (r >= 0) {
		tls->flags |= KEEL__TLS_CLOSE_SENT;
		return 0;
	}
	r = ssl_result(tls, r);
	return r == 0 ? -EPROTO : r;
}

/*
 * TLS 1.3's receiving direction: OpenSSL 3.0 offers the kernel only the
 * sending keys (its kTLS receive for 1.3 came in 3.2), so the peer's
 * application traffic secret comes from the key log, which OpenSSL
 * writes at the moment it switches to it: records are counted from here.
 * The key and IV are derived from it at the hand-off (RFC 8446 7.3).
 */
void keel__tls_ktls_keylog(struct keel_tls *tls, const char *line)
{
	const char *want = tls->ctx->role == KEEL_TLS_SERVER
			       ? "CLIENT_TRAFFIC_SECRET_0 "
			       : "SERVER_TRAFFIC_SECRET_0 ";
	struct keel__tls_ktls *k = tls->ktls;
	const char *hex;
	size_t n = 0;

	if (!k || strncmp(line, want, strlen(want)))
		return;
	hex = strchr(line + strlen(want), ' ');
	if (!hex)
		return;
	OPENSSL_cleanse(&k->rx, sizeof(k->rx));
	k->rx_secret_len = 0;
	for (hex++; hex[0] && hex[1] && n < sizeof(k->rx_secret); hex += 2) {
		int hi = OPENSSL_hexchar2int((unsigned char)hex[0]);
		int lo = OPENSSL_hexchar2int((unsigned char)hex[1]);

		if (hi < 0 || lo < 0)
			return;
		k->rx_secret[n++] = (unsigned char)(hi << 4 | lo);
	}
	k->rx_secret_len = (uint8_t)n;
	k->rx.len = 1; /* counting; the keys come at the hand-off */
}

/* HKDF-Expand-Label(secret, label, "", len) of TLS 1.3. */
static int expand_label(const EVP_MD *md, const unsigned char *secret,
			size_t secret_len, const char *label,
			unsigned char *out, size_t len)
{
	unsigned char info[2 + 1 + 6 + 16 + 1];
	size_t label_len = strlen(label), n = 0;
	EVP_KDF *kdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
	EVP_KDF_CTX *kctx = kdf ? EVP_KDF_CTX_new(kdf) : NULL;
	int mode = EVP_KDF_HKDF_MODE_EXPAND_ONLY, ok = 0;
	OSSL_PARAM params[5];

	info[n++] = (unsigned char)(len >> 8);
	info[n++] = (unsigned char)len;
	info[n++] = (unsigned char)(6 + label_len);
	memcpy(info + n, "tls13 ", 6);
	n += 6;
	memcpy(info + n, label, label_len);
	n += label_len;
	info[n++] = 0; /* no context */
	params[0] = OSSL_PARAM_construct_int(OSSL_KDF_PARAM_MODE, &mode);
	params[1] = OSSL_PARAM_construct_utf8_string(
	    OSSL_KDF_PARAM_DIGEST, (char *)EVP_MD_get0_name(md), 0);
	params[2] = OSSL_PARAM_construct_octet_string(
	    OSSL_KDF_PARAM_KEY, (void *)secret, secret_len);
	params[3] =
	    OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, info, n);
	params[4] = OSSL_PARAM_construct_end();
	if (kctx && EVP_KDF_derive(kctx, out, len, params) == 1)
		ok = 1;
	EVP_KDF_CTX_free(kctx);
	EVP_KDF_free(kdf);
	return ok;
}

/* The receiving keys of TLS 1.3 from the peer's secret, of the cipher
 * OpenSSL gave for sending. */
static int derive_rx(struct keel_tls *tls)
{
	struct keel__tls_ktls *k = tls->ktls;
	const SSL_CIPHER *c = SSL_get_current_cipher(tls->ssl);
	const EVP_MD *md = c ? SSL_CIPHER_get_handshake_digest(c) : NULL;
	unsigned type = k->tx.ci.info.cipher_type;
	size_t iv_off, iv_len, seq, key_len = 32;
	unsigned char key[32], iv[12];
	unsigned char *ci = (unsigned char *)&k->rx.ci;
	uint32_t len = crypto_layout(type, &iv_off, &iv_len, &seq);
	int ok = 0;

	if (type == TLS_CIPHER_AES_GCM_128)
		key_len = 16;
	if (len && md && k->rx_secret_len &&
	    expand_label(md, k->rx_secret, k->rx_secret_len, "key", key,
			 key_len) &&
	    expand_label(md, k->rx_secret, k->rx_secret_len, "iv", iv, 12)) {
		memset(ci, 0, sizeof(k->rx.ci));
		k->rx.ci.info.version = TLS_1_3_VERSION;
		k->rx.ci.info.cipher_type = (uint16_t)type;
		/* salt (4) and IV (8) for AES-GCM; IV (12) for ChaCha20 */
		memcpy(ci + iv_off, iv + 12 - iv_len, iv_len);
		memcpy(ci + iv_off + iv_len, key, key_len);
		memcpy(ci + iv_off + iv_len + key_len, iv, 12 - iv_len);
		k->rx.len = len;
		ok = 1;
	}
	OPENSSL_cleanse(key, sizeof(key));
	OPENSSL_cleanse(iv, sizeof(iv));
	return ok;
}

void keel__tls_ktls_done(struct keel_tls *tls)
{
	if (tls->ktls) {
		/* no more offers (a KeyUpdate on a connection that stayed
		 * with OpenSSL) */
		SSL_clear_options(tls->ssl, SSL_OP_ENABLE_KTLS);
		OPENSSL_cleanse(tls->ktls, sizeof(*tls->ktls));
		free(tls->ktls);
		tls->ktls = NULL;
	}
}

/* Add `n` to the big-endian counter of `len` bytes at `p`. */
static void be_add(unsigned char *p, size_t len, uint64_t n)
{
	for (size_t i = len; i-- && n;) {
		uint64_t v = p[i] + (n & 0xff);

		p[i] = (unsigned char)v;
		n = (n >> 8) + (v >> 8);
	}
}

/* One direction's keys with its sequence number brought up to date. */
static void ktls_dir_keys(const struct keel__tls_ktls_dir *d, bool tx,
			  union keel__tls_crypto *out)
{
	size_t iv = 0, iv_len = 0, seq = 0;

	crypto_layout(d->ci.info.cipher_type, &iv, &iv_len, &seq);
	memcpy(out, &d->ci, d->len);
	be_add((unsigned char *)out + seq, 8, d->records);
	/* TLS 1.2's AES-GCM carries an explicit nonce in each record: the
	 * captured one is the next OpenSSL would have used, and the kernel
	 * counts up from what it is given. Skip the ones OpenSSL used. */
	if (tx && d->ci.info.version == TLS_1_2_VERSION &&
	    d->ci.info.cipher_type != TLS_CIPHER_CHACHA20_POLY1305)
		be_add((unsigned char *)out + iv, iv_len, d->records);
}

int keel__tls_ktls_keys(struct keel_tls *tls, union keel__tls_crypto *tx,
			union keel__tls_crypto *rx, uint32_t *len,
			const char **why)
{
	struct keel__tls_ktls *k = tls->ktls;

	if (!k) {
		*why = "kTLS is off for this context";
		return -EOPNOTSUPP;
	}
	if (!(tls->flags & KEEL__TLS_HS_DONE) ||
	    (tls->flags & (KEEL__TLS_FAILED | KEEL__TLS_RENEG |
			   KEEL__TLS_CLOSE_SENT | KEEL__TLS_CLOSE_RECVD))) {
		*why = "the handshake did not complete";
		return -EPROTO;
	}
	if (k->tx.len && k->tx.ci.info.version == TLS_1_3_VERSION &&
	    k->rx_secret_len && k->rx.len == 1 && !derive_rx(tls)) {
		*why = "the receiving keys could not be derived";
		return -EOPNOTSUPP;
	}
	if (!k->tx.len || k->rx.len <= sizeof(struct tls_crypto_info) ||
	    k->tx.ci.info.cipher_type != k->rx.ci.info.cipher_type) {
		*why = "the cipher is not one the kernel's TLS takes "
		       "(AES-GCM or ChaCha20-Poly1305)";
		return -EOPNOTSUPP;
	}
	if (tls->ctx->role == KEEL_TLS_CLIENT &&
	    k->rx.ci.info.version == TLS_1_3_VERSION &&
	    !(SSL_get_options(tls->ssl) & SSL_OP_NO_TICKET)) {
		/* They come after the handshake: the kernel would get them
		 * and OpenSSL could not make sessions of them. */
		*why = "a TLS 1.3 client's session tickets arrive after the "
		       "handshake (no_tickets allows kTLS)";
		return -EOPNOTSUPP;
	}
	if (tls->in_left || SSL_has_pending(tls->ssl) || k->rx.skip ||
	    k->rx.hdr_len) {
		*why = "the peer's records after the handshake were already "
		       "read";
		return -EBUSY;
	}
	if (tls->out_len || k->tx.skip || k->tx.hdr_len) {
		*why = "records to the peer are not yet sent";
		return -EBUSY;
	}
	ktls_dir_keys(&k->tx, true, tx);
	ktls_dir_keys(&k->rx, false, rx);
	*len = k->tx.len;
	return 0;
}

const char *keel_tls_alpn(const struct keel_tls *tls)
{
	return tls->alpn;
}

const char *keel_tls_server_name(const struct keel_tls *tls)
{
	if (tls->server_name)
		return tls->server_name;
	return SSL_get_servername(tls->ssl, TLSEXT_NAMETYPE_host_name);
}

bool keel_tls_resumed(const struct keel_tls *tls)
{
	return SSL_session_reused(tls->ssl) == 1;
}

uint16_t keel_tls_version(const struct keel_tls *tls)
{
	int v = SSL_version(tls->ssl);

	return v == TLS1_3_VERSION   ? KEEL_TLS_1_3
	       : v == TLS1_2_VERSION ? KEEL_TLS_1_2
				     : 0;
}

const char *keel_tls_cipher(const struct keel_tls *tls)
{
	const SSL_CIPHER *c = SSL_get_current_cipher(tls->ssl);

	return c ? SSL_CIPHER_standard_name(c) : NULL;
}

const char *keel_tls_ktls(const struct keel_tls *tls)
{
	if (tls->flags & KEEL__TLS_KTLS)
		return NULL;
	if (tls->ktls_why)
		return tls->ktls_why;
	if (tls->ctx->ktls == KEEL_TLS_KTLS_OFF)
		return "kTLS is off for this context";
	if (!tls->ctx->ktls_possible)
		return "the kernel has no tls ULP (keel_tls_ctx_describe says "
		       "why)";
	if (!(tls->flags & KEEL__TLS_HS_DONE))
		return "the handshake is not done";
	return "only a stream hands records to the kernel";
}

bool keel_tls_peer_verified(const struct keel_tls *tls)
{
	X509 *peer = SSL_get0_peer_certificate(tls->ssl);

	return peer && SSL_get_verify_result(tls->ssl) == X509_V_OK &&
	       SSL_get_verify_mode(tls->ssl) != SSL_VERIFY_NONE;
}
