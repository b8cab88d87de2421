/* SPDX-License-Identifier: MIT */
/*
 * fuzz_tls.c: libkeel-tls's engine (keel/tls.h), sans I/O, in memory. The
 * input's first bytes are a header: the mode, a server configuration, a
 * client configuration, how the bytes are cut and how big the output
 * windows are, and a seed. Three modes:
 *
 *   - server: a keel server engine is fed the rest of the input as what a
 *     client sent, in pieces cut at points the header chooses, with output
 *     windows of sizes it chooses (down to one byte);
 *   - client: a keel client engine is fed the rest as the server's flights
 *     the same way;
 *   - pair: a keel client and a keel server handshake in memory, send
 *     each other some plaintext (KeyUpdates, a TLS 1.2 renegotiation
 *     attempt, close_notify both ways, a resumed second connection, as
 *     the configurations say), and the rest of the input is a program that
 *     mutates, truncates, duplicates, drops, swaps and forges records in
 *     flight, cuts the delivered bytes and sizes the windows.
 *
 * OpenSSL's randomness is a deterministic generator here, one per engine,
 * seeded from the header: an input replays exactly, and a pair run's wire
 * bytes fed to the same engine in the server or client mode are the same
 * handshake, so the seeds (fuzz/corpus/fuzz_tls/) reach past the
 * handshake: a ClientHello of `openssl s_client` (TLS 1.2 and 1.3, SNI,
 * ALPN) and the keel client's whole flights. FUZZ_TLS_DUMP=DIR writes a
 * pair run's two directions to DIR/c2s and DIR/s2c (how those were made).
 *
 * Promises checked (a broken one aborts; libFuzzer keeps the input):
 *   - every result is one keel/tls.h documents (handshake_step: 0,
 *     -EAGAIN, -ENOBUFS, -EPROTO, -EKEYREJECTED, -ENOMEM; read: 0 < n <=
 *     len, 0, -EAGAIN, -ENOBUFS, -EPROTO; write: 0 < n <= len, -ENOBUFS,
 *     -EPROTO; close_notify: 0, -ENOBUFS, -EPROTO);
 *   - -EAGAIN only once the input is used up (a stream hands over its next
 *     chunk then), -ENOBUFS only with ciphertext to send;
 *   - keel_tls_output_len() never exceeds the window;
 *   - after a failure every call keeps failing;
 *   - plaintext read is exactly what the peer wrote, in order, whatever
 *     the records went through (TLS's integrity);
 *   - a pair run whose records were not touched completes: both
 *     handshakes, every byte, close_notify both ways, resumption when
 *     tickets are on, the certificate check failing only when it should;
 *   - freeing an engine at any point is safe (each input ends by freeing
 *     whatever state it reached; 0xff in a pair program frees early);
 *     ASan, UBSan and LeakSanitizer watch the rest.
 *
 * The certificates are TEST-ONLY ECDSA P-256 keys, embedded below (made
 * once by `openssl req -x509 -newkey ec -pkeyopt
 * ec_paramgen_curve:P-256 -nodes -days 36500`); contexts read them from
 * memory files (memfd), so no file is read from the disk.
 */
#include "program.h"

#include <sys/mman.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>

#include <keel/tls.h>

#include "../tls/internal.h" /* the SSL: KeyUpdate, renegotiation */

/* ---- TEST-ONLY certificates and keys (never use them elsewhere) ------ */

/* CN a.test, subjectAltName DNS:a.test, DNS:localhost */
static const char cert_a[] =
    "-----BEGIN CERTIFICATE-----\n"
    "MIIBlzCCAT2gAwIBAgIUHz0veOM3VrptUar1kJWypEVLxVUwCgYIKoZIzj0EAwIw\n"
    "ETEPMA0GA1UEAwwGYS50ZXN0MCAXDTI2MTIwNjA5MTcyNFoYDzIxMjYxMTEyMDkx\n"
    "NzI0WjARMQ8wDQYDVQQDDAZhLnRlc3QwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNC\n"
    "AASiZ7amELBlJ2WjAZ0DXHcyc2Z9wTq1pdfw4kn/htA72W9w/Q6nHJz2+q+e2aQl\n"
    "vug6JCez/TeJ0KvwPVU8hjpNo3EwbzAdBgNVHQ4EFgQUKlVq1gLuQYbdX0K2GPZd\n"
    "i4qRBvEwHwYDVR0jBBgwFoAUKlVq1gLuQYbdX0K2GPZdi4qRBvEwDwYDVR0TAQH/\n"
    "BAUwAwEB/zAcBgNVHREEFTATggZhLnRlc3SCCWxvY2FsaG9zdDAKBggqhkjOPQQD\n"
    "AgNIADBFAiBGW1lbikwolAvuGQfOUsWcIBP5+U/cgZIC4C4uuCl+JwIhAKyrRk1v\n"
    "1+ZV9dnhUdcMTQ+QWsdP5YwmQa5kHhbgjWT6\n"
    "-----END CERTIFICATE-----\n";
static const char key_a[] =
    "-----BEGIN PRIVATE KEY-----\n"
    "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgAsQk8JtR85qUPs+h\n"
    "9D+2cZNmEkFj3cpFtLX2ZOpX0O6hRANCAASiZ7amELBlJ2WjAZ0DXHcyc2Z9wTq1\n"
    "pdfw4kn/htA72W9w/Q6nHJz2+q+e2aQlvug6JCez/TeJ0KvwPVU8hjpN\n"
    "-----END PRIVATE KEY-----\n";
/* CN b.test, subjectAltName DNS:*.b.test (the SNI certificate) */
static const char cert_b[] =
    "-----BEGIN CERTIFICATE-----\n"
    "MIIBjzCCATSgAwIBAgIUS8Sn+r+x/qxXHU9Tgzyu95IYQHwwCgYIKoZIzj0EAwIw\n"
    "ETEPMA0GA1UEAwwGYi50ZXN0MCAXDTI2MTIwNjA5MTcyNFoYDzIxMjYxMTEyMDkx\n"
    "NzI0WjARMQ8wDQYDVQQDDAZiLnRlc3QwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNC\n"
    "AAQyhijhnlcI7oGWwppQOoMB4sYwM0dsqhw2CHAsc6fIYSV3fpjvoFfJ+JxoVyPk\n"
    "0+PhCICX0BAV7AQuoLRFMmmFo2gwZjAdBgNVHQ4EFgQU/gBfAtLO33JX4NTFi6eR\n"
    "GRjUhaYwHwYDVR0jBBgwFoAU/gBfAtLO33JX4NTFi6eRGRjUhaYwDwYDVR0TAQH/\n"
    "BAUwAwEB/zATBgNVHREEDDAKgggqLmIudGVzdDAKBggqhkjOPQQDAgNJADBGAiEA\n"
    "4UWYlSMydqP7WdqlOBktOMi+80uIgRyPqv9zKjCmtGkCIQDq5UeKg7RukCHzKDoS\n"
    "baq6NN6QuGF1f3rvplW1D/CnQA==\n"
    "-----END CERTIFICATE-----\n";
static const char key_b[] =
    "-----BEGIN PRIVATE KEY-----\n"
    "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgJ7gXt6O6qFw5WLwj\n"
    "UX7g62BA+2tjfx5VP4SAndbnZEyhRANCAAQyhijhnlcI7oGWwppQOoMB4sYwM0ds\n"
    "qhw2CHAsc6fIYSV3fpjvoFfJ+JxoVyPk0+PhCICX0BAV7AQuoLRFMmmF\n"
    "-----END PRIVATE KEY-----\n";

/* ---- deterministic randomness ---------------------------------------- */

/*
 * OpenSSL's randomness (hello randoms, key shares, ECDSA nonces, ticket
 * keys, CBC IVs) from splitmix64, one state per engine: an input replays
 * exactly, and an engine's bytes do not depend on what the other did.
 * RAND_set_rand_method is deprecated in OpenSSL 3 but still consulted by
 * RAND_bytes_ex and RAND_priv_bytes_ex for the default library context.
 */
static uint64_t ctx_rng = 1, *g_rng = &ctx_rng;

static int det_bytes(unsigned char *buf, int num)
{
	for (int i = 0; i < num; i++) {
		uint64_t z = (*g_rng += 0x9e3779b97f4a7c15ull);

		z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
		z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
		buf[i] = (unsigned char)(z ^ (z >> 31));
	}
	return 1;
}

static int det_status(void)
{
	return 1;
}

static const RAND_METHOD det_rand = {
    .bytes = det_bytes,
    .pseudorand = det_bytes,
    .status = det_status,
};

/* ---- contexts -------------------------------------------------------- */

#define NSERVER 8
#define NCLIENT 8

static char path_a[64], path_ka[64], path_b[64], path_kb[64], path_trust[64];
static struct keel_tls_ctx *servers[NSERVER];

/* A memory file holding `pem`; its /proc/self/fd path into `path`. */
static void pem_file(char *path, size_t len, const char *pem, const char *more)
{
	int fd = memfd_create("fuzz_tls_pem", MFD_CLOEXEC);

	if (fd < 0 || write(fd, pem, strlen(pem)) != (ssize_t)strlen(pem) ||
	    (more && write(fd, more, strlen(more)) != (ssize_t)strlen(more))) {
		fprintf(stderr, "fuzz_tls: memfd for the test certificates\n");
		exit(1);
	}
	snprintf(path, len, "/proc/self/fd/%d", fd);
}

static struct keel_tls_ctx *ctx_make(struct keel_tls_opts *o)
{
	struct keel_tls_ctx *ctx;
	char why[256];
	uint64_t *saved = g_rng;
	int err;

	g_rng = &ctx_rng;
	ctx_rng = 1; /* ticket keys: the same in every input */
	err = keel_tls_ctx_create(&ctx, o, why, sizeof(why));
	g_rng = saved;
	if (err)
		violation("keel_tls_ctx_create: %s (%s)", why,
			  keel_strerror(err));
	return ctx;
}

/* The server configurations: the header's second byte % NSERVER. */
static void servers_make(void)
{
	static const struct keel_tls_opts base = {.role = KEEL_TLS_SERVER};
	struct keel_tls_opts o[NSERVER];

	for (int i = 0; i < NSERVER; i++) {
		o[i] = base;
		o[i].cert_file = path_a;
		o[i].key_file = path_ka;
		o[i].ktls = KEEL_TLS_KTLS_OFF;
	}
	o[0].alpn = "h2,http/1.1";
	o[1].max_version = o[1].min_version = KEEL_TLS_1_3;
	o[2].max_version = KEEL_TLS_1_2;
	o[2].alpn = "http/1.1";
	o[2].ciphers = "ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-GCM-SHA384:"
		       "ECDHE-ECDSA-CHACHA20-POLY1305";
	o[3].no_tickets = true;
	o[3].alpn = "http/1.1";
	o[4].ca_file = path_trust; /* client certificates required */
	o[5].min_version = KEEL_TLS_1_3;
	o[5].ciphersuites = "TLS_CHACHA20_POLY1305_SHA256";
	o[5].groups = "P-256"; /* a client offering X25519 first: HRR */
	o[6].max_version = KEEL_TLS_1_2;
	o[6].no_tickets = true;
	o[7].alpn = "spdy/3,h2";
	for (int i = 0; i < NSERVER; i++) {
		char why[256];

		servers[i] = ctx_make(&o[i]);
		if (i != 1 && i != 5 &&
		    keel_tls_ctx_add_cert(servers[i], path_b, path_kb, why,
					  sizeof(why)))
			violation("keel_tls_ctx_add_cert: %s", why);
	}
}

struct client_cfg {
	const char *sni;
};

/*
 * Must server configuration `sv` and client configuration `c` fail to
 * connect? A name no certificate has, a server asking for a client
 * certificate the client has not got, no version in common.
 */
static bool must_fail(unsigned sv, unsigned c)
{
	bool c12 = c == 1 || c == 5, c13 = c == 2;
	bool s12 = sv == 2 || sv == 6, s13 = sv == 1 || sv == 5;

	return c == 7 || (sv == 4 && c != 3 && c != 6) || (s13 && c12) ||
	       (s12 && c13) || ((sv == 1 || sv == 5) && (c == 1 || c == 6));
}

/* The client configuration: the header's third byte % NCLIENT. A new
 * context for each input: its session cache starts empty. */
static struct keel_tls_ctx *client_make(unsigned c, struct client_cfg *cc)
{
	struct keel_tls_opts o = {.role = KEEL_TLS_CLIENT,
				  .ca_file = path_trust,
				  .ktls = KEEL_TLS_KTLS_OFF};
	static const char *const snis[NCLIENT] = {
	    "localhost", "x.b.test",  "localhost", "a.test",
	    NULL,	 "localhost", "x.b.test",  "nomatch.test"};

	cc->sni = snis[c];
	switch (c) {
	case 0:
		o.alpn = "h2,http/1.1";
		break;
	case 1:
		o.alpn = "http/1.1";
		o.max_version = KEEL_TLS_1_2;
		break;
	case 2:
		o.max_version = o.min_version = KEEL_TLS_1_3;
		o.groups = "X25519:P-256";
		break;
	case 3:
		o.alpn = "h2";
		o.cert_file = path_a; /* a client certificate */
		o.key_file = path_ka;
		break;
	case 4:
		o.verify_none = true; /* no SNI, no name to check */
		break;
	case 5:
		o.ciphers = "ECDHE-ECDSA-AES128-SHA";
		o.max_version = KEEL_TLS_1_2;
		break;
	case 6:
		o.ciphersuites = "TLS_AES_128_GCM_SHA256:"
				 "TLS_CHACHA20_POLY1305_SHA256";
		o.cert_file = path_a;
		o.key_file = path_ka;
		break;
	}
	return ctx_make(&o);
}

#define PLAIN_MAX (160 * 1024)
static unsigned char plain_c[PLAIN_MAX], plain_s[PLAIN_MAX];

static bool debug; /* FUZZ_TLS_DEBUG=1: how far each input got */

static void init_once(void)
{
	static bool done;

	if (done)
		return;
	done = true;
	debug = getenv("FUZZ_TLS_DEBUG") != NULL;
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
	RAND_set_rand_method(&det_rand);
#pragma GCC diagnostic pop
	pem_file(path_a, sizeof(path_a), cert_a, NULL);
	pem_file(path_ka, sizeof(path_ka), key_a, NULL);
	pem_file(path_b, sizeof(path_b), cert_b, NULL);
	pem_file(path_kb, sizeof(path_kb), key_b, NULL);
	pem_file(path_trust, sizeof(path_trust), cert_a, cert_b);
	for (size_t i = 0; i < PLAIN_MAX; i++) { /* two different streams */
		plain_c[i] = (unsigned char)(i * 7 + i / 251);
		plain_s[i] = (unsigned char)(i * 13 + i / 241 + 1);
	}
	servers_make();
}

/* ---- one engine and its promises ------------------------------------- */

#define WIN_MAX	 KEEL_TLS_STREAM_OUT
#define READ_MAX 20000

struct side {
	const char *name;
	struct keel_tls *tls;
	uint64_t rng;
	size_t cap; /* the window's */
	bool hs_done, failed, close_sent, close_recvd;
	int err; /* the failure */
	unsigned char out[WIN_MAX];
};

static void enter(struct side *s)
{
	g_rng = &s->rng;
}

static void check_window(struct side *s, const char *what)
{
	size_t n = keel_tls_output_len(s->tls);

	if (n > s->cap)
		violation("%s: %s: output_len %zu beyond the window of %zu",
			  s->name, what, n, s->cap);
}

static bool is_failure(int r)
{
	return r < 0 && r != -EAGAIN && r != -ENOBUFS;
}

/* After a failure, every call must fail too (and not crash). */
static void check_sticky(struct side *s)
{
	unsigned char b[64];
	int r;

	enter(s);
	r = keel_tls_handshake_step(s->tls);
	if (!is_failure(r) && !(s->hs_done && r == 0))
		violation("%s: handshake_step after a failure: %d", s->name, r);
	r = keel_tls_read(s->tls, b, sizeof(b));
	if (!is_failure(r) && !(s->close_recvd && r == 0))
		violation("%s: read after a failure: %d", s->name, r);
	r = keel_tls_write(s->tls, "x", 1);
	if (r != -EPROTO)
		violation("%s: write after a failure: %d", s->name, r);
	check_window(s, "after a failure");
}

static int step(struct side *s)
{
	size_t left = keel_tls_input_left(s->tls);
	int r;

	enter(s);
	r = keel_tls_handshake_step(s->tls);
	EXPECT_RES("keel_tls_handshake_step", r, 0, -EAGAIN, -ENOBUFS, -EPROTO,
		   -EKEYREJECTED, -ENOMEM);
	check_window(s, "handshake_step");
	if (r == -EAGAIN && keel_tls_input_left(s->tls))
		violation("%s: handshake_step: -EAGAIN with %zu of %zu input "
			  "bytes left",
			  s->name, keel_tls_input_left(s->tls), left);
	if (r == -ENOBUFS && !keel_tls_output_len(s->tls))
		violation("%s: handshake_step: -ENOBUFS with nothing to send",
			  s->name);
	if (r == 0)
		s->hs_done = true;
	if (is_failure(r)) {
		s->failed = true;
		s->err = r;
		check_sticky(s);
	}
	return r;
}

static int do_read(struct side *s, void *buf, size_t len)
{
	int r;

	enter(s);
	r = keel_tls_read(s->tls, buf, len);
	check_window(s, "read");
	if (r > 0) {
		if ((size_t)r > len)
			violation("%s: read %d bytes into %zu", s->name, r,
				  len);
		return r;
	}
	EXPECT_RES("keel_tls_read", r, 0, -EAGAIN, -ENOBUFS, -EPROTO);
	if (r == -EAGAIN && keel_tls_input_left(s->tls))
		violation("%s: read: -EAGAIN with %zu input bytes left",
			  s->name, keel_tls_input_left(s->tls));
	if (r == -ENOBUFS && !keel_tls_output_len(s->tls))
		violation("%s: read: -ENOBUFS with nothing to send", s->name);
	if (r == 0)
		s->close_recvd = true;
	if (r == -EPROTO) {
		s->failed = true;
		s->err = r;
		check_sticky(s);
	}
	return r;
}

static int do_write(struct side *s, const void *buf, size_t len)
{
	int r;

	enter(s);
	r = keel_tls_write(s->tls, buf, len);
	check_window(s, "write");
	if (r > 0) {
		if ((size_t)r > len)
			violation("%s: write took %d bytes of %zu", s->name, r,
				  len);
		return r;
	}
	EXPECT_RES("keel_tls_write", r, -ENOBUFS, -EPROTO);
	if (r == -ENOBUFS && s->cap > 1024 && !keel_tls_output_len(s->tls))
		violation("%s: write: -ENOBUFS with nothing to send in a "
			  "window of %zu",
			  s->name, s->cap);
	if (r == -EPROTO && !s->close_sent) {
		s->failed = true;
		s->err = r;
		check_sticky(s);
	}
	return r;
}

static int do_close(struct side *s)
{
	int r;

	enter(s);
	r = keel_tls_close_notify(s->tls);
	check_window(s, "close_notify");
	EXPECT_RES("keel_tls_close_notify", r, 0, -ENOBUFS, -EPROTO);
	if (r == 0)
		s->close_sent = true;
	return r;
}

/* A window size from a byte: 0 the full window; tiny, small, large. */
static size_t win_size(uint8_t b)
{
	if (!b)
		return WIN_MAX;
	if (b < 0x40)
		return b;
	if (b < 0xc0)
		return (size_t)b * 24;
	return WIN_MAX - (size_t)(0xff - b) * 16;
}

static void new_window(struct side *s, size_t cap)
{
	s->cap = cap;
	keel_tls_output(s->tls, s->out, cap);
}

static void side_free(struct side *s)
{
	enter(s);
	keel_tls_free(s->tls);
	s->tls = NULL;
	g_rng = &ctx_rng;
}

/* ---- server and client modes: the input is the peer's bytes ----------- */

/* A tiny generator for the cuts and windows, seeded by the header. */
static uint32_t cut_next(uint32_t *x)
{
	*x ^= *x << 13;
	*x ^= *x >> 17;
	*x ^= *x << 5;
	return *x;
}

/* Cut sizes: style 0 whole, 1 bytes, 2 up to 64, 3 up to 1500. */
static size_t cut_size(uint32_t *x, unsigned style, size_t left)
{
	static const size_t most[4] = {0, 1, 64, 1500};
	size_t n = style ? 1 + cut_next(x) % most[style] : left;

	return n < left ? n : left;
}

/* Window sizes: style 0 full, 1 tiny, 2 any, 3 at least 2 KiB. */
static size_t cut_window(uint32_t *x, unsigned style)
{
	switch (style) {
	case 1:
		return 1 + cut_next(x) % 48;
	case 2:
		return win_size((uint8_t)cut_next(x));
	case 3:
		return 2048 + cut_next(x) % (WIN_MAX - 2048);
	}
	return WIN_MAX;
}

static void one_engine(struct side *s, const uint8_t *p, size_t n,
		       uint8_t style, uint32_t x)
{
	static unsigned char buf[READ_MAX];
	unsigned cuts = style & 3, wins = (style >> 2) & 3;
	int turns = 0;

	if (!x)
		x = 1;
	new_window(s, cut_window(&x, wins));
	while (!s->failed && turns++ < 100000) {
		int r;

		if (!keel_tls_input_left(s->tls) && n) {
			size_t len = cut_size(&x, cuts, n);

			keel_tls_input(s->tls, p, len);
			p += len;
			n -= len;
		}
		if (!s->hs_done) {
			r = step(s);
		} else {
			size_t want = 1 + cut_next(&x) % READ_MAX;

			r = do_read(s, buf, want);
			if (r == 0 && !s->close_sent)
				do_close(s);
		}
		if (keel_tls_output_len(s->tls))
			new_window(s, cut_window(&x, wins));
		else if (r == -EAGAIN && !n)
			break;
		else if (r == 0 && s->hs_done && s->close_recvd)
			break;
	}
	if (debug)
		fprintf(stderr,
			"fuzz_tls: %s: handshake %s, %s, close_notify %s\n",
			s->name, s->hs_done ? "done" : "not done",
			s->failed ? keel_strerror(s->err) : "no failure",
			s->close_recvd ? "received" : "not received");
}

/* ---- the pair: a real handshake, records changed in flight ----------- */

#define WIRE_MAX (4u << 20)

/* One direction of the wire. `raw` gathers what the sender wrote until a
 * record is whole; whole records go through the program into `wire`,
 * which the receiver reads from `off`. */
struct dir {
	unsigned char *raw, *wire;
	size_t raw_len, wire_len, off;
	unsigned char held[KEEL_TLS_RECORD_MAX + 64]; /* a swapped record */
	size_t held_len;
	bool cut; /* truncated: nothing more arrives */
	bool dumped;
};

struct peer {
	struct side s;
	struct dir *in, *out;
	unsigned char chunk[64 * 1024]; /* the input being consumed */
	size_t sent, to_send, got;
	const unsigned char *expect; /* what the other side sends */
	const struct peer *other;
	bool key_update, reneg, renegotiating;
};

struct pair {
	struct program pr;
	struct peer c, sv;
	struct dir c2s, s2c;
	bool mutated, freed_early;
};

static unsigned char rbuf[READ_MAX];

static void wire_put(struct pair *pp, struct dir *d, const void *p, size_t n)
{
	if (d->cut || d->wire_len + n > WIRE_MAX)
		return;
	memcpy(d->wire + d->wire_len, p, n);
	d->wire_len += n;
}

/* One whole record from the sender, through the program. */
static void record_out(struct pair *pp, struct dir *d, unsigned char *rec,
		       size_t len)
{
	uint8_t op = next_byte(&pp->pr);
	unsigned char forged[5 + 256];

	if (op < 0xb0) {
		wire_put(pp, d, rec, len);
	} else if (op < 0xc0) { /* flip a bit or several */
		rec[next_byte(&pp->pr) % len] ^= next_byte(&pp->pr) | 1;
		wire_put(pp, d, rec, len);
		pp->mutated = true;
	} else if (op < 0xd0) { /* truncate; the wire ends there */
		wire_put(pp, d, rec, next_byte(&pp->pr) % len);
		d->cut = true;
		pp->mutated = true;
	} else if (op < 0xe0) { /* duplicate */
		wire_put(pp, d, rec, len);
		wire_put(pp, d, rec, len);
		pp->mutated = true;
	} else if (op < 0xe8) { /* drop */
		pp->mutated = true;
	} else if (op < 0xf0) { /* hold it: it goes after the next one */
		if (d->held_len)
			wire_put(pp, d, d->held, d->held_len);
		memcpy(d->held, rec, len);
		d->held_len = len;
		pp->mutated = true;
		return;
	} else if (op < 0xf8) { /* a forged record before it */
		size_t flen = next_byte(&pp->pr);

		forged[0] = next_byte(&pp->pr);
		forged[1] = 3;
		forged[2] = next_byte(&pp->pr) & 3;
		forged[3] = 0;
		forged[4] = (unsigned char)flen;
		for (size_t i = 0; i < flen; i++)
			forged[5 + i] = next_byte(&pp->pr);
		wire_put(pp, d, forged, 5 + flen);
		wire_put(pp, d, rec, len);
		pp->mutated = true;
	} else if (op < 0xff) { /* its header changed */
		rec[op & 3 ? (op & 3) + 1 : 0] ^= next_byte(&pp->pr) | 1;
		wire_put(pp, d, rec, len);
		pp->mutated = true;
	} else {
		pp->freed_early = true;
		return;
	}
	if (d->held_len) {
		wire_put(pp, d, d->held, d->held_len);
		d->held_len = 0;
	}
}

/* Take what the sender's window holds; pass on its whole records. */
static void drain_window(struct pair *pp, struct peer *pe)
{
	struct side *s = &pe->s;
	struct dir *d = pe->out;
	size_t n = keel_tls_output_len(s->tls), off = 0;

	if (d->raw_len + n > WIRE_MAX)
		violation("%s: more than %u bytes of ciphertext", s->name,
			  WIRE_MAX);
	memcpy(d->raw + d->raw_len, s->out, n);
	d->raw_len += n;
	while (d->raw_len - off >= 5 && !pp->freed_early) {
		size_t len =
		    5 + ((size_t)d->raw[off + 3] << 8 | d->raw[off + 4]);

		if (len > KEEL_TLS_RECORD_MAX)
			violation("%s: wrote a record of %zu bytes", s->name,
				  len);
		if (d->raw_len - off < len)
			break;
		record_out(pp, d, d->raw + off, len);
		off += len;
	}
	memmove(d->raw, d->raw + off, d->raw_len - off);
	d->raw_len -= off;
	new_window(s, win_size(next_byte(&pp->pr)));
}

/* A size for the next delivery: 0 all that is there. */
static size_t deliver_size(struct pair *pp, size_t avail)
{
	uint8_t b = next_byte(&pp->pr);
	size_t n = !b ? avail : b < 0x80 ? b : (size_t)(b - 0x7f) * 512;

	return n < avail ? n : avail;
}

/* One turn of one side; true if anything moved. */
static bool turn(struct pair *pp, struct peer *pe)
{
	struct side *s = &pe->s;
	bool moved = false;
	int r = 0;

	if (s->failed || pp->freed_early)
		return false;
	size_t left = keel_tls_input_left(s->tls);

	if (!left && pe->in->off < pe->in->wire_len) {
		size_t avail = pe->in->wire_len - pe->in->off;
		size_t n = deliver_size(pp, avail);

		if (n > sizeof(pe->chunk))
			n = sizeof(pe->chunk);
		memcpy(pe->chunk, pe->in->wire + pe->in->off, n);
		pe->in->off += n;
		keel_tls_input(s->tls, pe->chunk, n);
		moved = true;
	}
	if (!s->hs_done) {
		r = step(s);
		if (r == 0)
			moved = true;
	}
	if (s->hs_done && !s->failed) {
		bool midway =
		    pe->sent > pe->to_send / 2 && pe->sent < pe->to_send;

		if (pe->key_update && midway) {
			/* a KeyUpdate asking for the peer's (TLS 1.3; it
			 * goes out with the next write) */
			pe->key_update = false;
			enter(s);
			if (SSL_key_update(s->tls->ssl,
					   SSL_KEY_UPDATE_REQUESTED) != 1)
				ERR_clear_error();
		}
		if (pe->reneg && midway) {
			/* TLS 1.2: the client starts a renegotiation behind
			 * the engine's back (its option forbids it) and
			 * sends nothing more; the server must refuse it */
			pe->reneg = false;
			enter(s);
			SSL_clear_options(s->tls->ssl, SSL_OP_NO_RENEGOTIATION);
			if (SSL_renegotiate(s->tls->ssl) == 1) {
				SSL_do_handshake(s->tls->ssl);
				pe->to_send = pe->sent;
				pe->renegotiating = true;
			}
			ERR_clear_error();
			check_window(s, "renegotiation");
		}
		if (pe->sent < pe->to_send && !s->close_sent) {
			size_t len = pe->to_send - pe->sent;
			const unsigned char *src =
			    pe == &pp->c ? plain_c : plain_s;

			if (len > 3 * 16384)
				len = 3 * 16384;
			r = do_write(s, src + pe->sent, len);
			if (r > 0) {
				pe->sent += (size_t)r;
				moved = true;
			} else if (r == -ENOBUFS &&
				   !keel_tls_output_len(s->tls)) {
				/* too small a window for a record */
				new_window(s, win_size(next_byte(&pp->pr)));
				moved = true;
			}
		} else if (!s->close_sent && !s->failed && !pe->renegotiating) {
			r = do_close(s);
			if (r == 0) {
				moved = true;
			} else if (r == -ENOBUFS &&
				   !keel_tls_output_len(s->tls)) {
				/* too small a window for the alert */
				new_window(s, win_size(next_byte(&pp->pr)));
				moved = true;
			}
		}
		if (!s->failed && !s->close_recvd) {
			uint8_t b = next_byte(&pp->pr);

			r = do_read(s, rbuf, b ? (size_t)b * 78 : READ_MAX);
			if (r > 0) {
				if (pe->got + (size_t)r > pe->other->sent ||
				    memcmp(rbuf, pe->expect + pe->got, r))
					violation("%s: read %d bytes at %zu "
						  "that the peer did not send",
						  s->name, r, pe->got);
				pe->got += (size_t)r;
				moved = true;
			} else if (r == 0) {
				moved = true;
			}
		}
	}
	if (keel_tls_output_len(s->tls)) {
		drain_window(pp, pe);
		moved = true;
	}
	return moved || keel_tls_input_left(s->tls) != left;
}

static void dump(const char *dir, const char *name, const struct dir *d)
{
	char path[512];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "wb");
	if (!f || fwrite(d->wire, 1, d->wire_len, f) != d->wire_len) {
		fprintf(stderr, "fuzz_tls: cannot write %s\n", path);
		exit(1);
	}
	fclose(f);
}

/* One connection of the pair; returns true if it completed cleanly. */
static bool connection(struct pair *pp, struct keel_tls_ctx *cctx,
		       struct keel_tls_ctx *sctx, const struct client_cfg *cc,
		       uint8_t ccfg, uint8_t scfg, uint64_t seed, bool second,
		       bool resume)
{
	struct peer *c = &pp->c, *sv = &pp->sv;
	int err, turns = 0;

	memset(&pp->c2s, 0, offsetof(struct dir, held));
	memset(&pp->s2c, 0, offsetof(struct dir, held));
	pp->c2s.held_len = pp->s2c.held_len = 0;
	pp->c2s.cut = pp->s2c.cut = false;
	pp->c2s.raw = malloc(WIRE_MAX);
	pp->c2s.wire = malloc(WIRE_MAX);
	pp->s2c.raw = malloc(WIRE_MAX);
	pp->s2c.wire = malloc(WIRE_MAX);
	if (!pp->c2s.raw || !pp->c2s.wire || !pp->s2c.raw || !pp->s2c.wire)
		violation("out of memory");
	memset(&c->s, 0, offsetof(struct side, out));
	memset(&sv->s, 0, offsetof(struct side, out));
	c->sent = c->got = sv->sent = sv->got = 0;
	c->renegotiating = sv->renegotiating = false;
	c->other = sv;
	sv->other = c;
	c->s.name = "client";
	sv->s.name = "server";
	c->s.rng = seed * 2 + 1 + second;
	sv->s.rng = seed * 2 + 2 + second;
	c->in = &pp->s2c;
	c->out = &pp->c2s;
	sv->in = &pp->c2s;
	sv->out = &pp->s2c;
	c->expect = plain_s;
	sv->expect = plain_c;
	/* How much each sends: none, a little, several records. */
	static const size_t amounts[4] = {0, 1000, 40000, PLAIN_MAX};
	c->to_send = amounts[(ccfg >> 3) & 3];
	sv->to_send = amounts[(scfg >> 3) & 3];
	c->key_update = ccfg & 0x20;
	sv->key_update = scfg & 0x20;
	c->reneg = (ccfg & 0x40) && !second;

	enter(&c->s);
	err = keel_tls_new(cctx, cc->sni, &c->s.tls);
	if (err)
		violation("keel_tls_new (client): %s", keel_strerror(err));
	enter(&sv->s);
	err = keel_tls_new(sctx, NULL, &sv->s.tls);
	if (err)
		violation("keel_tls_new (server): %s", keel_strerror(err));
	g_rng = &ctx_rng;
	new_window(&c->s, win_size(next_byte(&pp->pr)));
	new_window(&sv->s, win_size(next_byte(&pp->pr)));
	while (turns++ < 200000) {
		bool moved = turn(pp, c);

		moved |= turn(pp, sv);
		if (!moved || pp->freed_early)
			break;
	}
	if (turns >= 200000)
		violation("no end after %d turns", turns);

	const char *dumpdir = getenv("FUZZ_TLS_DUMP");

	if (dumpdir && !second) {
		dump(dumpdir, "c2s", &pp->c2s);
		dump(dumpdir, "s2c", &pp->s2c);
	}

	if (debug)
		fprintf(stderr,
			"fuzz_tls: connection %d: handshakes %d/%d, %s/%s, "
			"bytes %zu/%zu, close_notify %d/%d, windows %zu/%zu "
			"%zu/%zu, %s%s\n",
			1 + second, c->s.hs_done, sv->s.hs_done,
			c->s.failed ? keel_strerror(c->s.err) : "-",
			sv->s.failed ? keel_strerror(sv->s.err) : "-", c->got,
			sv->got, c->s.close_recvd, sv->s.close_recvd,
			keel_tls_output_len(c->s.tls), c->s.cap,
			keel_tls_output_len(sv->s.tls), sv->s.cap,
			pp->mutated ? "mutated" : "untouched",
			pp->freed_early ? ", freed early" : "");

	/* Nothing was touched: it must have gone through. */
	bool clean = false, reneg = (ccfg & 0x40) && !second;

	if (!pp->mutated && !pp->freed_early) {
		if (must_fail(scfg % NSERVER, ccfg % NCLIENT)) {
			if (c->s.hs_done && sv->s.hs_done && !c->s.failed &&
			    !sv->s.failed)
				violation("server %u and client %u connected",
					  scfg % NSERVER, ccfg % NCLIENT);
		} else if (c->s.failed || sv->s.failed) {
			if (!reneg)
				violation("server %u, client %u, connection "
					  "%d: untouched records, yet the %s "
					  "failed (client: %s; server: %s)",
					  scfg % NSERVER, ccfg % NCLIENT,
					  1 + second,
					  c->s.failed ? "client" : "server",
					  keel_strerror(c->s.err),
					  keel_strerror(sv->s.err));
		} else if (!c->s.hs_done || !sv->s.hs_done ||
			   c->got != sv->to_send || sv->got != c->to_send ||
			   !c->s.close_recvd || !sv->s.close_recvd) {
			/*
			 * Not after a renegotiation attempt: OpenSSL may
			 * put it off (while records are pending) and the
			 * client, which stops sending once it asked, then
			 * leaves the connection open (a case kept as
			 * fuzz/corpus/fuzz_tls/reneg-put-off).
			 */
			if (!reneg)
				violation(
				    "untouched records, yet it stopped: "
				    "handshakes %d/%d, client got %zu of %zu, "
				    "server %zu of %zu, close_notify %d/%d",
				    c->s.hs_done, sv->s.hs_done, c->got,
				    sv->to_send, sv->got, c->to_send,
				    c->s.close_recvd, sv->s.close_recvd);
		} else {
			clean = true;
			if (resume && !keel_tls_resumed(c->s.tls))
				violation("the second connection was not "
					  "resumed");
		}
	}
	side_free(&c->s);
	side_free(&sv->s);
	free(pp->c2s.raw);
	free(pp->c2s.wire);
	free(pp->s2c.raw);
	free(pp->s2c.wire);
	return clean;
}

static void pair_run(struct program *pr, uint8_t scfg, uint8_t ccfg,
		     uint64_t seed)
{
	static struct pair pp;
	struct client_cfg cc;
	struct keel_tls_ctx *cctx = client_make(ccfg % NCLIENT, &cc);
	struct keel_tls_ctx *sctx = servers[scfg % NSERVER];
	bool tickets = scfg % NSERVER != 3 && scfg % NSERVER != 6;

	pp.pr = *pr;
	pp.mutated = pp.freed_early = false;
	if (connection(&pp, cctx, sctx, &cc, ccfg, scfg, seed, false, false) &&
	    (scfg & 0x80)) /* again, from the client's session cache */
		connection(&pp, cctx, sctx, &cc, ccfg, scfg, seed, true,
			   tickets);
	keel_tls_ctx_free(cctx);
}

/* ---- the entry ------------------------------------------------------- */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct program pr = {data, size};
	uint8_t mode, scfg, ccfg, style;
	uint64_t seed;

	init_once();
	mode = next_byte(&pr);
	scfg = next_byte(&pr);
	ccfg = next_byte(&pr);
	style = next_byte(&pr);
	seed = next_byte(&pr);
	seed |= (uint64_t)next_byte(&pr) << 8;
	switch (mode % 4) {
	case 0:
	case 1: {
		static struct side s;
		struct client_cfg cc;
		struct keel_tls_ctx *cctx = NULL;
		int err;

		memset(&s, 0, offsetof(struct side, out));
		if (mode % 4 == 0) {
			s.name = "server";
			s.rng = seed * 2 + 2;
			enter(&s);
			err =
			    keel_tls_new(servers[scfg % NSERVER], NULL, &s.tls);
		} else {
			cctx = client_make(ccfg % NCLIENT, &cc);
			s.name = "client";
			s.rng = seed * 2 + 1;
			enter(&s);
			err = keel_tls_new(cctx, cc.sni, &s.tls);
		}
		if (err)
			violation("keel_tls_new: %s", keel_strerror(err));
		one_engine(&s, pr.p, pr.n, style,
			   (uint32_t)seed << 16 | style | 1);
		side_free(&s);
		keel_tls_ctx_free(cctx);
		break;
	}
	default:
		pair_run(&pr, scfg, ccfg, seed);
		break;
	}
	g_rng = &ctx_rng;
	ERR_clear_error();
	return 0;
}
