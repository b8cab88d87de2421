/* SPDX-License-Identifier: MIT */
/*
 * tls_cost: what libkeel-tls's engine adds to OpenSSL, in instructions
 * (run it under callgrind: tools/bench/tls_cost.sh). The same work two
 * ways, in memory, no sockets:
 *   keel   the engine: ciphertext read in place by keel's BIO, written
 *          into the caller's window;
 *   plain  the usual OpenSSL loop: two memory BIOs per connection, bytes
 *          moved between them with BIO_read/BIO_write.
 *
 *	tls_cost keel|plain hs|rec N CERT KEY
 *
 * hs: N TLS 1.3 handshakes (client and server, no resumption); rec: N
 * records of 4 KiB, encrypted by the client and decrypted by the server.
 * One connection is set up first in both, so the difference between two
 * runs of different N divided by their difference is the cost of one.
 */
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <keel/tls.h>

static unsigned char cw[32768], sw[32768], plain[4096], out[8192];

static void keel_pair(struct keel_tls_ctx *sc, struct keel_tls_ctx *cc,
		      struct keel_tls **ps, struct keel_tls **pc)
{
	struct keel_tls *s, *c;
	unsigned char tmp[64];
	int rc = -1, rs = -1;

	if (keel_tls_new(sc, NULL, &s) || keel_tls_new(cc, "localhost", &c))
		abort();
	keel_tls_output(c, cw, sizeof(cw));
	keel_tls_output(s, sw, sizeof(sw));
	while (rc || rs) {
		rc = keel_tls_handshake_step(c);
		keel_tls_input(s, cw, keel_tls_output_len(c));
		keel_tls_output(c, cw, sizeof(cw));
		rs = keel_tls_handshake_step(s);
		keel_tls_input(c, sw, keel_tls_output_len(s));
		keel_tls_output(s, sw, sizeof(sw));
		if ((rc && rc != -EAGAIN) || (rs && rs != -EAGAIN))
			abort();
	}
	keel_tls_read(c, tmp, sizeof(tmp)); /* the server's last flight */
	*ps = s;
	*pc = c;
}

static void plain_pair(SSL_CTX *sc, SSL_CTX *cc, SSL **ps, SSL **pc)
{
	SSL *s = SSL_new(sc), *c = SSL_new(cc);
	char buf[32768];
	int rc = -1, rs = -1, n;

	SSL_set_bio(s, BIO_new(BIO_s_mem()), BIO_new(BIO_s_mem()));
	SSL_set_bio(c, BIO_new(BIO_s_mem()), BIO_new(BIO_s_mem()));
	SSL_set_accept_state(s);
	SSL_set_connect_state(c);
	SSL_set_tlsext_host_name(c, "localhost");
	while (rc != 1 || rs != 1) {
		rc = SSL_do_handshake(c);
		while ((n = BIO_read(SSL_get_wbio(c), buf, sizeof(buf))) > 0)
			BIO_write(SSL_get_rbio(s), buf, n);
		rs = SSL_do_handshake(s);
		while ((n = BIO_read(SSL_get_wbio(s), buf, sizeof(buf))) > 0)
			BIO_write(SSL_get_rbio(c), buf, n);
	}
	SSL_read(c, buf, 1);
	ERR_clear_error();
	*ps = s;
	*pc = c;
}

static void run_keel(int hs, int n, const char *cert, const char *key)
{
	struct keel_tls_opts so = {.role = KEEL_TLS_SERVER,
				   .cert_file = cert,
				   .key_file = key,
				   .min_version = KEEL_TLS_1_3,
				   .no_tickets = true};
	struct keel_tls_opts co = {.role = KEEL_TLS_CLIENT,
				   .verify_none = true,
				   .min_version = KEEL_TLS_1_3,
				   .no_tickets = true};
	struct keel_tls_ctx *sc, *cc;
	struct keel_tls *s, *c;
	char why[256];

	if (keel_tls_ctx_create(&sc, &so, why, sizeof(why)) ||
	    keel_tls_ctx_create(&cc, &co, why, sizeof(why))) {
		fprintf(stderr, "tls_cost: %s\n", why);
		exit(1);
	}
	keel_pair(sc, cc, &s, &c);
	for (int i = 0; i < n; i++) {
		if (hs) {
			keel_tls_free(s);
			keel_tls_free(c);
			keel_pair(sc, cc, &s, &c);
			continue;
		}
		keel_tls_output(c, cw, sizeof(cw));
		if (keel_tls_write(c, plain, sizeof(plain)) != 4096)
			abort();
		keel_tls_input(s, cw, keel_tls_output_len(c));
		if (keel_tls_read(s, out, sizeof(out)) != 4096)
			abort();
	}
	keel_tls_free(s);
	keel_tls_free(c);
	keel_tls_ctx_free(sc);
	keel_tls_ctx_free(cc);
}

static void run_plain(int hs, int n, const char *cert, const char *key)
{
	SSL_CTX *sc = SSL_CTX_new(TLS_server_method());
	SSL_CTX *cc = SSL_CTX_new(TLS_client_method());
	char buf[32768];
	SSL *s, *c;
	int k;

	if (SSL_CTX_use_certificate_chain_file(sc, cert) != 1 ||
	    SSL_CTX_use_PrivateKey_file(sc, key, SSL_FILETYPE_PEM) != 1) {
		fprintf(stderr, "tls_cost: cannot load %s / %s\n", cert, key);
		exit(1);
	}
	SSL_CTX_set_min_proto_version(sc, TLS1_3_VERSION);
	SSL_CTX_set_min_proto_version(cc, TLS1_3_VERSION);
	SSL_CTX_set_num_tickets(sc, 0);
	SSL_CTX_set_options(sc, SSL_OP_NO_TICKET);
	SSL_CTX_set_session_cache_mode(sc, SSL_SESS_CACHE_OFF);
	plain_pair(sc, cc, &s, &c);
	for (int i = 0; i < n; i++) {
		if (hs) {
			SSL_free(s);
			SSL_free(c);
			plain_pair(sc, cc, &s, &c);
			continue;
		}
		if (SSL_write(c, plain, sizeof(plain)) != 4096)
			abort();
		while ((k = BIO_read(SSL_get_wbio(c), buf, sizeof(buf))) > 0)
			BIO_write(SSL_get_rbio(s), buf, k);
		if (SSL_read(s, out, sizeof(out)) != 4096)
			abort();
	}
	SSL_free(s);
	SSL_free(c);
	SSL_CTX_free(sc);
	SSL_CTX_free(cc);
}

int main(int argc, char **argv)
{
	if (argc != 6 ||
	    (strcmp(argv[1], "keel") && strcmp(argv[1], "plain")) ||
	    (strcmp(argv[2], "hs") && strcmp(argv[2], "rec"))) {
		fprintf(stderr,
			"usage: tls_cost keel|plain hs|rec N CERT KEY\n");
		return 2;
	}
	int hs = !strcmp(argv[2], "hs"), n = atoi(argv[3]);

	if (!strcmp(argv[1], "keel"))
		run_keel(hs, n, argv[4], argv[5]);
	else
		run_plain(hs, n, argv[4], argv[5]);
	return 0;
}
