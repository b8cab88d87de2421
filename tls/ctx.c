/* SPDX-License-Identifier: MIT */
/*
 * tls/ctx.c: TLS contexts. Owns the OpenSSL SSL_CTX of a configuration,
 * the extra certificates chosen by SNI, the client's session cache, the
 * counters, and the process-wide kTLS probe.
 *
 * Loading errors are one line naming the file or option and the problem:
 * OpenSSL's error queue says "PEM routines::no start line", which tells an
 * operator nothing, so every file is opened and parsed here step by step
 * and each step has its own sentence. The queue is cleared after every
 * failure so that a later SSL_get_error() on this thread is not misled.
 *
 * A context is read by every loop at once: everything here is set up
 * before the first connection, then only read, but for the counters
 * (relaxed atomics) and the session cache (a mutex; only clients touch it,
 * once per handshake).
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "internal.h"

#ifndef TCP_ULP
#define TCP_ULP 31
#endif

static void why_set(char *why, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void why_set(char *why, size_t len, const char *fmt, ...)
{
	va_list ap;

	if (!why || !len)
		return;
	va_start(ap, fmt);
	vsnprintf(why, len, fmt, ap);
	va_end(ap);
}

/* ---- process-wide: the ex_data slot, the kTLS probe ------------------ */

static pthread_once_t once = PTHREAD_ONCE_INIT;
static int ssl_index = -1;
bool keel__tls_ktls_force;
int (*keel__tls_ktls_install)(int fd, const union keel__tls_crypto *tx,
			      const union keel__tls_crypto *rx, uint32_t len);
static int ktls_errno; /* 0: the kernel has the tls ULP */
static const char *ktls_step = "";

/*
 * Does the kernel have the tls ULP? A connected loopback TCP pair, and
 * TCP_ULP "tls" on one end: ENOENT when the kernel has no CONFIG_TLS (and
 * cannot load the module). Once per process: the answer does not change.
 */
static void ktls_probe(void)
{
	struct sockaddr_in a = {.sin_family = AF_INET,
				.sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t alen = sizeof(a);
	int l = -1, c = -1, s = -1;

	ktls_step = "socket";
	l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (l < 0 || c < 0)
		goto fail;
	ktls_step = "listen";
	if (bind(l, (struct sockaddr *)&a, sizeof(a)) || listen(l, 1) ||
	    getsockname(l, (struct sockaddr *)&a, &alen))
		goto fail;
	ktls_step = "connect";
	if (connect(c, (struct sockaddr *)&a, sizeof(a)))
		goto fail;
	s = accept4(l, NULL, NULL, SOCK_CLOEXEC);
	if (s < 0)
		goto fail;
	ktls_step = "setsockopt TCP_ULP \"tls\"";
	if (setsockopt(c, SOL_TCP, TCP_ULP, "tls", sizeof("tls")))
		goto fail;
	ktls_errno = 0;
	goto out;
fail:
	ktls_errno = errno ? errno : EIO;
out:
	if (s >= 0)
		close(s);
	if (c >= 0)
		close(c);
	if (l >= 0)
		close(l);
}

static void init_once(void)
{
	ssl_index =
	    SSL_get_ex_new_index(0, (void *)"keel_tls", NULL, NULL, NULL);
	ktls_probe();
}

int keel__tls_ssl_index(void)
{
	pthread_once(&once, init_once);
	return ssl_index;
}

/* Does the kernel take TLS keys (or does a test pretend it does)? */
static bool ktls_kernel(void)
{
	return ktls_errno == 0 || keel__tls_ktls_force;
}

/* The kTLS verdict: "on..." or "off: <why>". */
static void ktls_verdict(const struct keel_tls_ctx *ctx, char *buf, size_t len)
{
	if (ctx->ktls == KEEL_TLS_KTLS_OFF)
		snprintf(buf, len,
			 "off (disabled); records through memory "
			 "BIOs");
	else if (ktls_kernel())
		snprintf(buf, len,
			 "on: keys go to the kernel after the handshake "
			 "(AES-GCM, ChaCha20-Poly1305; not TLS 1.3 clients "
			 "with tickets); else records through memory BIOs, "
			 "counted in ktls_fallbacks");
	else if (ktls_errno == ENOENT && !strcmp(ktls_step, "setsockopt "
							    "TCP_ULP "
							    "\"tls\""))
		snprintf(buf, len,
			 "off: the kernel has no tls ULP (%s: %s); records "
			 "through memory BIOs",
			 ktls_step, strerror(ktls_errno));
	else
		snprintf(buf, len,
			 "off: the probe failed (%s: %s); records through "
			 "memory BIOs",
			 ktls_step, strerror(ktls_errno));
}

/* ---- files ------------------------------------------------------------ */

/* fopen with the one-line error. */
static FILE *open_file(const char *path, char *why, size_t why_len, int *err)
{
	FILE *f = fopen(path, "r");

	if (!f) {
		*err = errno ? -errno : -EIO;
		why_set(why, why_len, "%s: %s", path, strerror(-*err));
	}
	return f;
}

/* A PEM passphrase callback that refuses (and notes that it was asked):
 * OpenSSL's default would prompt on the terminal. */
static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
	*(bool *)u = true;
	return -1;
}

/*
 * Load `cert_file` (a PEM chain, leaf first) and `key_file` (NULL: the
 * key is in cert_file) into `sc`. On success *leaf is the leaf (a
 * reference the caller frees).
 */
static int load_cert(SSL_CTX *sc, const char *cert_file, const char *key_file,
		     X509 **leaf, char *why, size_t why_len)
{
	EVP_PKEY *key = NULL;
	X509 *x = NULL, *extra;
	bool asked = false;
	int err = 0;
	FILE *f;

	if (!key_file)
		key_file = cert_file;
	f = open_file(cert_file, why, why_len, &err);
	if (!f)
		return err;
	x = PEM_read_X509_AUX(f, NULL, no_passphrase, &asked);
	if (!x) {
		fclose(f);
		why_set(why, why_len, "%s: no certificate in it (PEM expected)",
			cert_file);
		err = -EINVAL;
		goto out;
	}
	if (SSL_CTX_use_certificate(sc, x) != 1) {
		fclose(f);
		why_set(why, why_len, "%s: the certificate is not usable (%s)",
			cert_file,
			ERR_reason_error_string(ERR_peek_last_error())
			    ?: "unknown reason");
		err = -EINVAL;
		goto out;
	}
	SSL_CTX_clear_chain_certs(sc);
	while ((extra = PEM_read_X509(f, NULL, no_passphrase, &asked))) {
		if (SSL_CTX_add0_chain_cert(sc, extra) != 1) {
			X509_free(extra);
			fclose(f);
			why_set(why, why_len,
				"%s: a chain certificate is not usable",
				cert_file);
			err = -EINVAL;
			goto out;
		}
	}
	fclose(f);
	ERR_clear_error(); /* the end of the file is "no start line" */

	f = open_file(key_file, why, why_len, &err);
	if (!f)
		goto out;
	asked = false;
	key = PEM_read_PrivateKey(f, NULL, no_passphrase, &asked);
	fclose(f);
	if (!key) {
		if (asked)
			why_set(why, why_len,
				"%s: the key is encrypted (keel reads "
				"unencrypted PEM keys)",
				key_file);
		else
			why_set(why, why_len,
				"%s: no private key in it (PEM expected)",
				key_file);
		err = -EINVAL;
		goto out;
	}
	if (X509_check_private_key(x, key) != 1) {
		why_set(why, why_len,
			"%s: does not match the certificate in %s", key_file,
			cert_file);
		err = -EINVAL;
		goto out;
	}
	if (SSL_CTX_use_PrivateKey(sc, key) != 1) {
		why_set(why, why_len, "%s: the key is not usable", key_file);
		err = -EINVAL;
		goto out;
	}
out:
	ERR_clear_error();
	EVP_PKEY_free(key);
	if (err)
		X509_free(x);
	else
		*leaf = x;
	return err;
}

/* ---- callbacks -------------------------------------------------------- */

/* Server: pick our first protocol the client offers; none: no ALPN. */
static int alpn_select(SSL *ssl, const unsigned char **out,
		       unsigned char *outlen, const unsigned char *in,
		       unsigned inlen, void *arg)
{
	const struct keel_tls_ctx *ctx = arg;

	for (unsigned i = 0; i < ctx->alpn_len; i += 1u + ctx->alpn[i]) {
		const unsigned char *ours = &ctx->alpn[i];

		for (unsigned j = 0; j < inlen; j += 1u + in[j]) {
			if (j + 1u + in[j] > inlen)
				break;
			if (in[j] == ours[0] &&
			    !memcmp(&in[j + 1], ours + 1, ours[0])) {
				*out = &in[j + 1];
				*outlen = in[j];
				return SSL_TLSEXT_ERR_OK;
			}
		}
	}
	return SSL_TLSEXT_ERR_NOACK;
}

/* Server: SNI picks a certificate (its SSL_CTX); no match keeps the
 * default. The session (ticket keys, cache) stays the default context's:
 * OpenSSL keeps the original as the session context. */
static int servername(SSL *ssl, int *alert, void *arg)
{
	const struct keel_tls_ctx *ctx = arg;
	const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);

	if (!name || !ctx->ncerts)
		return SSL_TLSEXT_ERR_OK;
	for (unsigned i = 0; i < ctx->ncerts; i++) {
		if (X509_check_host(ctx->certs[i].leaf, name, 0, 0, NULL) ==
		    1) {
			SSL_set_SSL_CTX(ssl, ctx->certs[i].ssl_ctx);
			break;
		}
	}
	return SSL_TLSEXT_ERR_OK;
}

/*
 * Alerts we send: a no_renegotiation alert is a refused renegotiation
 * (SSL_OP_NO_RENEGOTIATION answers a ClientHello or HelloRequest after
 * the handshake with it); the engine then fails the connection.
 */
static void info_cb(const SSL *ssl, int where, int ret)
{
	if ((where & SSL_CB_WRITE_ALERT) &&
	    (ret & 0xff) == SSL_AD_NO_RENEGOTIATION) {
		struct keel_tls *tls = SSL_get_ex_data(ssl, ssl_index);

		if (tls && !(tls->flags & KEEL__TLS_RENEG)) {
			tls->flags |= KEEL__TLS_RENEG;
			keel__tls_count(&tls->ctx->c.renegotiations, 1);
		}
	}
}

/* kTLS planned: the peer's TLS 1.3 traffic secret (engine.c). */
static void keylog(const SSL *ssl, const char *line)
{
	struct keel_tls *tls = SSL_get_ex_data(ssl, ssl_index);

	if (tls)
		keel__tls_ktls_keylog(tls, line);
}

/* Client: keep the newest session per server name. */
static int new_session(SSL *ssl, SSL_SESSION *sess)
{
	struct keel_tls *tls = SSL_get_ex_data(ssl, ssl_index);
	struct keel_tls_ctx *ctx;
	struct keel__tls_session *slot = NULL, *oldest = NULL;
	const char *name;

	if (!tls)
		return 0;
	ctx = tls->ctx;
	name = tls->server_name ? tls->server_name : "";
	pthread_mutex_lock(&ctx->sess_lock);
	for (unsigned i = 0; i < KEEL__TLS_SESSIONS; i++) {
		struct keel__tls_session *s = &ctx->sessions[i];

		if (s->name && !strcmp(s->name, name)) {
			slot = s;
			break;
		}
		if (!oldest || !s->name ||
		    (oldest->name && s->used < oldest->used))
			oldest = s;
	}
	if (!slot) {
		char *copy = strdup(name);

		if (!copy) {
			pthread_mutex_unlock(&ctx->sess_lock);
			return 0;
		}
		slot = oldest;
		free(slot->name);
		SSL_SESSION_free(slot->sess);
		slot->name = copy;
		slot->sess = NULL;
	}
	SSL_SESSION_free(slot->sess);
	slot->sess = sess; /* returning 1 keeps OpenSSL's reference */
	slot->used = ++ctx->sess_clock;
	pthread_mutex_unlock(&ctx->sess_lock);
	return 1;
}

SSL_SESSION *keel__tls_session_get(struct keel_tls_ctx *ctx, const char *name)
{
	SSL_SESSION *sess = NULL;

	if (!name)
		name = "";
	pthread_mutex_lock(&ctx->sess_lock);
	for (unsigned i = 0; i < KEEL__TLS_SESSIONS; i++) {
		struct keel__tls_session *s = &ctx->sessions[i];

		if (s->name && !strcmp(s->name, name)) {
			/* A copy of its own, not a reference: OpenSSL reads
			 * a connection's session outside our lock (a 1.3
			 * ticket dups it) while another loop may drop the
			 * cached one, and only its reference count, atomics
			 * ThreadSanitizer cannot see, orders the two (mt_tls
			 * reported it). The cached object is now touched
			 * only under the lock. */
			if (s->sess && SSL_SESSION_is_resumable(s->sess))
				sess = SSL_SESSION_dup(s->sess);
			s->used = ++ctx->sess_clock;
			break;
		}
	}
	pthread_mutex_unlock(&ctx->sess_lock);
	return sess;
}

/* ---- options ---------------------------------------------------------- */

/* "h2,http/1.1" -> wire format. */
static int parse_alpn(struct keel_tls_ctx *ctx, const char *alpn, char *why,
		      size_t why_len)
{
	const char *p = alpn;
	unsigned n = 0;

	if (strlen(alpn) >= sizeof(ctx->alpn_text)) {
		why_set(why, why_len, "--alpn: too long (at most %zu bytes)",
			sizeof(ctx->alpn_text) - 1);
		return -EINVAL;
	}
	for (;;) {
		size_t len = strcspn(p, ",");

		if (len == 0 || len > 255) {
			why_set(why, why_len,
				"--alpn: %s protocol name in \"%s\" (expected "
				"names separated by commas: \"h2,http/1.1\")",
				len ? "a too long" : "an empty", alpn);
			return -EINVAL;
		}
		ctx->alpn[n++] = (unsigned char)len;
		memcpy(&ctx->alpn[n], p, len);
		n += (unsigned)len;
		p += len;
		if (!*p)
			break;
		p++;
	}
	ctx->alpn_len = n;
	snprintf(ctx->alpn_text, sizeof(ctx->alpn_text), "%s", alpn);
	return 0;
}

static int parse_version(uint16_t v, int *out)
{
	switch (v) {
	case 0:
		*out = 0;
		return 0;
	case KEEL_TLS_1_2:
		*out = TLS1_2_VERSION;
		return 0;
	case KEEL_TLS_1_3:
		*out = TLS1_3_VERSION;
		return 0;
	}
	return -EINVAL;
}

/*
 * What every SSL_CTX of a context gets: versions, options, ciphers,
 * groups, ALPN and the callbacks. The SNI contexts get it too (OpenSSL
 * takes some settings from the swapped-in context).
 */
static int configure(struct keel_tls_ctx *ctx, SSL_CTX *sc,
		     const struct keel_tls_opts *o, char *why, size_t why_len)
{
	int min, max;

	if (parse_version(o->min_version, &min)) {
		why_set(why, why_len,
			"--min-version: 0x%04x is not TLS 1.2 (0x0303) or 1.3 "
			"(0x0304)",
			o->min_version);
		return -EINVAL;
	}
	if (parse_version(o->max_version, &max)) {
		why_set(why, why_len,
			"--max-version: 0x%04x is not TLS 1.2 (0x0303) or 1.3 "
			"(0x0304)",
			o->max_version);
		return -EINVAL;
	}
	if (min && max && min > max) {
		why_set(why, why_len,
			"--min-version: above --max-version (0x%04x > 0x%04x)",
			o->min_version, o->max_version);
		return -EINVAL;
	}
	SSL_CTX_set_min_proto_version(sc, min ? min : TLS1_2_VERSION);
	SSL_CTX_set_max_proto_version(sc, max);
	SSL_CTX_set_options(sc, SSL_OP_NO_RENEGOTIATION |
				    SSL_OP_NO_COMPRESSION |
				    SSL_OP_CIPHER_SERVER_PREFERENCE |
				    (o->no_tickets ? SSL_OP_NO_TICKET : 0));
	/* A record's plaintext may go out in pieces (keel_tls_write returns
	 * what it took); the caller's buffer may move between retries. */
	SSL_CTX_set_mode(sc, SSL_MODE_ENABLE_PARTIAL_WRITE |
				 SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
				 SSL_MODE_RELEASE_BUFFERS);
	if (o->ciphers && SSL_CTX_set_cipher_list(sc, o->ciphers) != 1) {
		why_set(why, why_len, "--ciphers: no usable cipher in \"%s\"",
			o->ciphers);
		return -EINVAL;
	}
	if (o->ciphersuites &&
	    SSL_CTX_set_ciphersuites(sc, o->ciphersuites) != 1) {
		why_set(why, why_len,
			"--ciphersuites: not a list of TLS 1.3 suites: \"%s\"",
			o->ciphersuites);
		return -EINVAL;
	}
	if (o->groups && SSL_CTX_set1_groups_list(sc, o->groups) != 1) {
		why_set(why, why_len, "--groups: not a list of groups: \"%s\"",
			o->groups);
		return -EINVAL;
	}
	SSL_CTX_set_info_callback(sc, info_cb);
	if (ctx->ktls != KEEL_TLS_KTLS_OFF && ctx->ktls_possible)
		SSL_CTX_set_keylog_callback(sc, keylog);
	if (ctx->role == KEEL_TLS_SERVER) {
		if (ctx->alpn_len)
			SSL_CTX_set_alpn_select_cb(sc, alpn_select, ctx);
		SSL_CTX_set_tlsext_servername_callback(sc, servername);
		SSL_CTX_set_tlsext_servername_arg(sc, ctx);
		if (o->no_tickets)
			SSL_CTX_set_num_tickets(sc, 0);
		/* Resumption is by tickets only: stateless, so no server
		 * cache (a lock shared by every loop, per handshake). */
		SSL_CTX_set_session_cache_mode(sc, SSL_SESS_CACHE_OFF);
		SSL_CTX_set_session_id_context(
		    sc, (const unsigned char *)"keel", 4);
	}
	return 0;
}

static int ca_load(SSL_CTX *sc, const char *ca_file, char *why, size_t why_len)
{
	int err = 0;
	FILE *f = open_file(ca_file, why, why_len, &err);

	if (!f)
		return err;
	fclose(f);
	if (SSL_CTX_load_verify_locations(sc, ca_file, NULL) != 1) {
		ERR_clear_error();
		why_set(why, why_len, "%s: no certificate in it (PEM expected)",
			ca_file);
		return -EINVAL;
	}
	return 0;
}

int keel_tls_ctx_create(struct keel_tls_ctx **out,
			const struct keel_tls_opts *o, char *why,
			size_t why_len)
{
	struct keel_tls_ctx *ctx;
	X509 *leaf = NULL;
	int err;

	*out = NULL;
	why_set(why, why_len, "%s", "");
	if (!o || (o->role != KEEL_TLS_SERVER && o->role != KEEL_TLS_CLIENT) ||
	    o->ktls > KEEL_TLS_KTLS_REQUIRE) {
		why_set(why, why_len, "keel_tls_opts: bad role or ktls value");
		return -EINVAL;
	}
	pthread_once(&once, init_once);
	if (o->ktls == KEEL_TLS_KTLS_REQUIRE && !ktls_kernel()) {
		char v[256];
		struct keel_tls_ctx probe = {.ktls = KEEL_TLS_KTLS_AUTO};

		ktls_verdict(&probe, v, sizeof(v));
		why_set(why, why_len, "kTLS required, but %s", v + 5);
		return -EOPNOTSUPP;
	}
	if (o->role == KEEL_TLS_SERVER && !o->cert_file) {
		why_set(why, why_len,
			"a server needs a certificate and key (cert_file)");
		return -EINVAL;
	}
	ctx = calloc(1, sizeof(*ctx));
	if (!ctx)
		return -ENOMEM;
	pthread_mutex_init(&ctx->sess_lock, NULL);
	ctx->role = o->role;
	ctx->ktls = o->ktls;
	ctx->ktls_possible = ktls_kernel();
	ctx->min_version = o->min_version;
	ctx->max_version = o->max_version;
	ctx->handshake_timeout_ns = o->handshake_timeout_ns
					? o->handshake_timeout_ns
					: 10 * UINT64_C(1000000000);
	if (o->alpn && (err = parse_alpn(ctx, o->alpn, why, why_len)))
		goto fail;
	ctx->ssl_ctx =
	    SSL_CTX_new(o->role == KEEL_TLS_SERVER ? TLS_server_method()
						   : TLS_client_method());
	if (!ctx->ssl_ctx) {
		err = -ENOMEM;
		goto fail;
	}
	err = configure(ctx, ctx->ssl_ctx, o, why, why_len);
	if (err)
		goto fail;
	if (o->cert_file) {
		err = load_cert(ctx->ssl_ctx, o->cert_file, o->key_file, &leaf,
				why, why_len);
		if (err)
			goto fail;
		X509_free(leaf); /* the SSL_CTX holds its own */
	}
	if (o->role == KEEL_TLS_CLIENT) {
		if (ctx->alpn_len &&
		    SSL_CTX_set_alpn_protos(ctx->ssl_ctx, ctx->alpn,
					    ctx->alpn_len) != 0) {
			err = -ENOMEM;
			goto fail;
		}
		ctx->verify = !o->verify_none;
		if (ctx->verify) {
			if (o->ca_file)
				err = ca_load(ctx->ssl_ctx, o->ca_file, why,
					      why_len);
			else if (SSL_CTX_set_default_verify_paths(
				     ctx->ssl_ctx) != 1)
				err = -ENOENT;
			if (err) {
				if (!o->ca_file)
					why_set(why, why_len,
						"the system's trust store "
						"could not be loaded");
				goto fail;
			}
			SSL_CTX_set_verify(ctx->ssl_ctx, SSL_VERIFY_PEER, NULL);
		}
		SSL_CTX_set_session_cache_mode(
		    ctx->ssl_ctx,
		    SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
		SSL_CTX_sess_set_new_cb(ctx->ssl_ctx, new_session);
	} else if (o->ca_file) {
		err = ca_load(ctx->ssl_ctx, o->ca_file, why, why_len);
		if (err)
			goto fail;
		SSL_CTX_set_verify(
		    ctx->ssl_ctx,
		    SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
	}
	/* Kept for the SNI contexts, which get the same configuration. */
	*out = ctx;
	return 0;
fail:
	ERR_clear_error();
	keel_tls_ctx_free(ctx);
	return err;
}

int keel_tls_ctx_add_cert(struct keel_tls_ctx *ctx, const char *cert_file,
			  const char *key_file, char *why, size_t why_len)
{
	struct keel__tls_cert *certs;
	SSL_CTX *sc;
	X509 *leaf = NULL;
	int err;

	why_set(why, why_len, "%s", "");
	if (!ctx || ctx->role != KEEL_TLS_SERVER || !cert_file) {
		why_set(why, why_len, "SNI certificates are for servers");
		return -EINVAL;
	}
	certs = realloc(ctx->certs, (ctx->ncerts + 1) * sizeof(*certs));
	if (!certs)
		return -ENOMEM;
	ctx->certs = certs;
	sc = SSL_CTX_new(TLS_server_method());
	if (!sc)
		return -ENOMEM;
	/* Only the certificate matters in a swapped-in context: the
	 * handshake's other settings stay the SSL's own, copied from the
	 * default context when it was made. */
	err = load_cert(sc, cert_file, key_file, &leaf, why, why_len);
	if (err) {
		SSL_CTX_free(sc);
		return err;
	}
	/* OpenSSL verifies a client's certificate against the store of the
	 * SSL_CTX that SNI swapped in: share the default context's (its
	 * ca_file), or every client certificate would be refused. */
	SSL_CTX_set1_cert_store(sc, SSL_CTX_get_cert_store(ctx->ssl_ctx));
	if (ctx->alpn_len)
		SSL_CTX_set_alpn_select_cb(sc, alpn_select, ctx);
	SSL_CTX_set_info_callback(sc, info_cb);
	if (ctx->ktls != KEEL_TLS_KTLS_OFF && ctx->ktls_possible)
		SSL_CTX_set_keylog_callback(sc, keylog); /* read from here */
	SSL_CTX_set_session_id_context(sc, (const unsigned char *)"keel", 4);
	certs[ctx->ncerts].ssl_ctx = sc;
	certs[ctx->ncerts].leaf = leaf;
	ctx->ncerts++;
	return 0;
}

void keel_tls_ctx_free(struct keel_tls_ctx *ctx)
{
	if (!ctx)
		return;
	for (unsigned i = 0; i < ctx->ncerts; i++) {
		X509_free(ctx->certs[i].leaf);
		SSL_CTX_free(ctx->certs[i].ssl_ctx);
	}
	free(ctx->certs);
	for (unsigned i = 0; i < KEEL__TLS_SESSIONS; i++) {
		free(ctx->sessions[i].name);
		SSL_SESSION_free(ctx->sessions[i].sess);
	}
	SSL_CTX_free(ctx->ssl_ctx);
	pthread_mutex_destroy(&ctx->sess_lock);
	free(ctx);
}

static const char *version_text(uint16_t v)
{
	return v == KEEL_TLS_1_3 ? "1.3" : "1.2";
}

int keel_tls_ctx_describe(const struct keel_tls_ctx *ctx, char *buf, size_t len)
{
	char v[256];
	int n;

	if (!ctx || !buf || !len)
		return -EINVAL;
	ktls_verdict(ctx, v, sizeof(v));
	n = snprintf(
	    buf, len,
	    "%s; %s; TLS %s-%s; ALPN: %s; SNI certificates: %u; "
	    "kTLS: %s",
	    OpenSSL_version(OPENSSL_VERSION),
	    ctx->role == KEEL_TLS_SERVER ? "server" : "client",
	    version_text(ctx->min_version ? ctx->min_version : KEEL_TLS_1_2),
	    version_text(ctx->max_version ? ctx->max_version : KEEL_TLS_1_3),
	    ctx->alpn_len ? ctx->alpn_text : "none", ctx->ncerts, v);
	if (n < 0)
		return -EINVAL;
	return (size_t)n < len ? n : (int)len - 1;
}

void keel_tls_ctx_stats(const struct keel_tls_ctx *ctx,
			struct keel_tls_stats *out)
{
	/* const: the counters are read, never written, here. */
	struct keel__tls_counters *c = (struct keel__tls_counters *)&ctx->c;

#define LOAD(f) atomic_load_explicit(&c->f, memory_order_relaxed)
	out->handshakes = LOAD(handshakes);
	out->resumed = LOAD(resumed);
	out->failed = LOAD(failed);
	out->timeouts = LOAD(timeouts);
	out->renegotiations = LOAD(renegotiations);
	out->clean_closes = LOAD(clean_closes);
	out->truncated = LOAD(truncated);
	out->ktls = LOAD(ktls);
	out->bytes_in = LOAD(bytes_in);
	out->bytes_out = LOAD(bytes_out);
	out->ktls_fallbacks = LOAD(ktls_fallbacks);
#undef LOAD
}

int keel_tls_render_metrics(const struct keel_tls_ctx *ctx,
			    const char *name_prefix, char *buf, size_t len)
{
	struct keel_tls_stats st;
	static const struct {
		const char *name, *help;
	} rows[] = {
	    {"handshakes", "TLS handshakes completed"},
	    {"resumed", "TLS handshakes that resumed a session"},
	    {"failed", "TLS connections failed (bad input, alerts, "
		       "verification)"},
	    {"timeouts", "TLS handshakes past their deadline"},
	    {"renegotiations", "TLS renegotiation attempts refused"},
	    {"clean_closes", "TLS streams ended by close_notify"},
	    {"truncated", "TLS streams ended without close_notify"},
	    {"ktls", "TLS connections handed to the kernel"},
	    {"bytes_in", "TLS plaintext bytes received"},
	    {"bytes_out", "TLS plaintext bytes sent"},
	    {"ktls_fallbacks", "TLS connections kept off the kernel's TLS "
			       "where it was planned"},
	};
	const char *p = name_prefix && *name_prefix ? name_prefix : "";
	const char *sep = *p ? "_" : "";
	size_t used = 0;

	if (!ctx || !buf)
		return -EINVAL;
	keel_tls_ctx_stats(ctx, &st);
	/* In the order of rows[]. */
	const uint64_t values[] = {
	    st.handshakes,     st.resumed,	st.failed,	  st.timeouts,
	    st.renegotiations, st.clean_closes, st.truncated,	  st.ktls,
	    st.bytes_in,       st.bytes_out,	st.ktls_fallbacks};

	for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
		int n = snprintf(buf + used, len - used,
				 "# HELP %s%stls_%s_total %s.\n"
				 "# TYPE %s%stls_%s_total counter\n"
				 "%s%stls_%s_total %llu\n",
				 p, sep, rows[i].name, rows[i].help, p, sep,
				 rows[i].name, p, sep, rows[i].name,
				 (unsigned long long)values[i]);

		if (n < 0 || (size_t)n >= len - used)
			return -ENOSPC;
		used += (size_t)n;
	}
	return (int)used;
}
