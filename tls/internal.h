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

#include <linux/tls.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>

#include <keel.h>
#include <keel/tls.h>

/* The counters of keel_tls_stats, as relaxed atomics. */
struct keel__tls_counters {
	_Atomic uint64_t handshakes, resumed, failed, timeouts, renegotiations,
	    clean_closes, truncated, ktls, bytes_in, bytes_out, ktls_fallbacks;
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
#define KEEL__TLS_KTLS	      0x20u /* the kernel has the records (stream.c) */

/*
 * kTLS: the keys of one direction as the kernel takes them
 * (setsockopt(SOL_TLS, TLS_TX or TLS_RX)), captured from OpenSSL when it
 * switches to the application key, and the records that went through
 * OpenSSL under that key since (their sequence numbers are the kernel's
 * starting point).
 */
union keel__tls_crypto {
	struct tls_crypto_info info;
	struct tls12_crypto_info_aes_gcm_128 gcm128;
	struct tls12_crypto_info_aes_gcm_256 gcm256;
	struct tls12_crypto_info_chacha20_poly1305 chacha;
};

struct keel__tls_ktls_dir {
	union keel__tls_crypto ci;
	uint32_t len;	  /* bytes of ci; 0: nothing captured (1: TLS 1.3's
			   * receiving keys, counting, derived at the hand-off) */
	uint32_t skip;	  /* bytes to the next record's header */
	uint64_t records; /* records under the key since the capture */
	uint8_t hdr[5], hdr_len;
};

struct keel__tls_ktls {
	struct keel__tls_ktls_dir tx, rx;
	/* TLS 1.3: the peer's application traffic secret (see
	 * keel__tls_ktls_keylog) */
	unsigned char rx_secret[EVP_MAX_MD_SIZE];
	uint8_t rx_secret_len;
};

struct keel_tls {
	SSL *ssl;
	struct keel__tls_ktls *ktls; /* NULL: kTLS not planned */
	struct keel_tls_ctx *ctx;
	const unsigned char *in; /* the caller's ciphertext, read in place */
	size_t in_left;
	unsigned char *out; /* the caller's output window */
	size_t out_cap, out_len;
	unsigned flags;
	char *server_name;    /* client: the name asked for */
	char *alpn;	      /* the protocol agreed on, or NULL */
	const char *ktls_why; /* why the records are not the kernel's */
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

/* engine.c: the kernel has the keys: forget ours. */
void keel__tls_ktls_done(struct keel_tls *tls);

/* engine.c: a key log line of `tls` (ctx.c's callback, when kTLS is
 * planned): the peer's TLS 1.3 application traffic secret. */
void keel__tls_ktls_keylog(struct keel_tls *tls, const char *line);

/*
 * engine.c: the keys for the kernel, once the handshake is done: *tx and
 * *rx filled (their length in *len) with the sequence numbers of the next
 * record each way. Only when OpenSSL holds nothing back (no input left, no
 * record half read, no output unsent): then the kernel takes over at a
 * record boundary. Returns 0, or a negative errno with *why set to the
 * reason it cannot (-EOPNOTSUPP: not possible on this connection, -EBUSY:
 * not at this moment).
 */
int keel__tls_ktls_keys(struct keel_tls *tls, union keel__tls_crypto *tx,
			union keel__tls_crypto *rx, uint32_t *len,
			const char **why);

/*
 * ctx.c, for tests only: pretend the kernel has the tls ULP (the probe
 * answered yes), so that contexts created afterwards plan kTLS and
 * capture keys; and, if set, what receives the keys instead of
 * setsockopt() (returns 0 or a negative errno). Neither is touched
 * outside tests.
 */
extern bool keel__tls_ktls_force;
extern int (*keel__tls_ktls_install)(int fd, const union keel__tls_crypto *tx,
				     const union keel__tls_crypto *rx,
				     uint32_t len);

#endif
