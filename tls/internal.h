/* SPDX-License-Identifier: MIT */
/*
 * tls/internal.h: what the modules of libkeel-tls share (not installed).
 *
 *   ctx.c      contexts: options, certificates and keys (one clear line
 *              per error), SNI, ALPN, the client's session cache, the kTLS
 *              probe, counters, describe and metrics
 *   engine.c   one connection, sans I/O: OpenSSL over a BIO that reads the
 *              caller's ciphertext in place and writes into its window
 *   stream.c   the engine over a socket: a recv stream on a buffer ring,
 *              one output buffer shared by a reader and a sender, the
 *              handshake deadline
 *
 * libkeel-tls uses keel's public API only.
 */
#ifndef KEEL_TLS_INTERNAL_H
#define KEEL_TLS_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/ssl.h>

#include <keel.h>
#include <keel/tls.h>

/* The counters of keel_tls_stats, as relaxed atomics. */
struct keel__tls_counters {
	_Atomic uint64_t handshakes, resumed, failed, timeouts, renegotiations,
	    clean_closes, truncated, ktls, bytes_in, bytes_out;
};

/* A certificate for SNI: its own SSL_CTX (certificate, key, chain), which
 * the servername callback swaps in. */
struct keel__tls_cert {
	SSL_CTX *ssl_ctx;
	X509 *leaf; /* for X509_check_host (the SSL_CTX holds a reference) */
};

/* The client's session cache: the newest session per server name. */
#define KEEL__TLS_SESSIONS 64
struct keel__tls_session {
	char *name; /* "" for no SNI */
	SSL_SESSION *sess;
	uint64_t used; /* a clock for replacing the oldest */
};

struct keel_tls_ctx {
	SSL_CTX
	*ssl_ctx; /* the default certificate's (server) or the client's */
	enum keel_tls_role role;
	bool verify;	    /* client: verify the server's certificate */
	bool ktls_possible; /* the kernel has the tls ULP */
	enum keel_tls_ktls ktls;
	uint64_t handshake_timeout_ns;
	/* ALPN: our protocols in wire format (length-prefixed) */
	unsigned char alpn[256];
	unsigned alpn_len;
	struct keel__tls_cert *certs; /* SNI certificates, in order added */
	unsigned ncerts;
	pthread_mutex_t sess_lock;
	struct keel__tls_session sessions[KEEL__TLS_SESSIONS];
	uint64_t sess_clock;
	char alpn_text[128]; /* for describe */
	uint16_t min_version, max_version;
	struct keel__tls_counters c;
};

/* keel_tls.flags */
#define KEEL__TLS_HS_DONE     0x01u /* the handshake completed */
#define KEEL__TLS_FAILED      0x02u /* a fatal error was seen (counted) */
#define KEEL__TLS_RENEG	      0x04u /* a renegotiation was refused */
#define KEEL__TLS_CLOSE_SENT  0x08u /* our close_notify is written */
#define KEEL__TLS_CLOSE_RECVD 0x10u /* the peer's close_notify (counted) */

struct keel_tls {
	SSL *ssl;
	struct keel_tls_ctx *ctx;
	const unsigned char *in; /* the caller's ciphertext, read in place */
	size_t in_left;
	unsigned char *out; /* the caller's output window */
	size_t out_cap, out_len;
	unsigned flags;
	char *server_name; /* client: the name asked for */
	char *alpn;	   /* the protocol agreed on, or NULL */
};

/* ctx.c: the index of keel's ex_data slot on SSL objects (the engine),
 * and the BIO method (engine.c). */
int keel__tls_ssl_index(void);
BIO_METHOD *keel__tls_bio_method(void);

/* ctx.c: a client's cached session for `name`, or NULL (a reference the
 * caller frees). */
SSL_SESSION *keel__tls_session_get(struct keel_tls_ctx *ctx, const char *name);

/* Relaxed counter bump. */
static inline void keel__tls_count(_Atomic uint64_t *c, uint64_t n)
{
	atomic_fetch_add_explicit(c, n, memory_order_relaxed);
}

/*
 * engine.c: set the output window to `buf` of `cap` bytes of which the
 * first `len` are already pending (the stream moves its window's limit
 * between the reader and the sender, keeping what is in it).
 */
void keel__tls_window(struct keel_tls *tls, void *buf, size_t cap, size_t len);

/* engine.c: the handshake or a record failed: count it once. */
void keel__tls_failed(struct keel_tls *tls);

#endif
