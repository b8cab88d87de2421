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
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>

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

/* ---- the BIO ---------------------------------------------------------- */

/* Free bytes in the window (a stream may lower its limit below what a
 * reader already wrote). */
static size_t window_room(const struct keel_tls *tls)
{
	return tls->out_len < tls->out_cap ? tls->out_cap - tls->out_len : 0;
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
	return (int)n;
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
	switch (cmd) {
	case BIO_CTRL_FLUSH:
		return 1; /* the caller sends the window */
	case BIO_CTRL_PENDING:
	case BIO_CTRL_WPENDING:
		return 0;
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
		/* SNI only for a name: RFC 6066 forbids an IP address. */
		if (!strchr(server_name, ':') &&
		    strspn(server_name, "0123456789.") != strlen(server_name) &&
		    SSL_set_tlsext_host_name(tls->ssl, server_name) != 1)
			goto nomem;
		if (ctx->verify && SSL_set1_host(tls->ssl, server_name) != 1)
			goto nomem;
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
	if (tls->flags & (KEEL__TLS_FAILED | KEEL__TLS_RENEG))
		return -EPROTO;
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

	if (tls->flags &
	    (KEEL__TLS_FAILED | KEEL__TLS_RENEG | KEEL__TLS_CLOSE_SENT))
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
	if (tls->flags & KEEL__TLS_FAILED)
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

bool keel_tls_peer_verified(const struct keel_tls *tls)
{
	X509 *peer = SSL_get0_peer_certificate(tls->ssl);

	return peer && SSL_get_verify_result(tls->ssl) == X509_V_OK &&
	       SSL_get_verify_mode(tls->ssl) != SSL_VERIFY_NONE;
}
