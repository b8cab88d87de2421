/* SPDX-License-Identifier: MIT */
/*
 * keel/tls.h: TLS 1.2 and 1.3 on keel (libkeel-tls, pkg-config keel-tls;
 * not part of keel.h: the core needs only liburing and jemalloc). OpenSSL 3
 * does the cryptography; keel moves the bytes.
 *
 * Two levels:
 *
 *   - The engine (struct keel_tls): one connection's TLS state, sans I/O.
 *     It makes no system call and holds no memory the kernel writes or
 *     reads, so it can be allocated and freed at any time. Ciphertext from
 *     the peer is read in place from the caller's buffer (keel_tls_input:
 *     no copy), ciphertext for the peer is written straight into the
 *     caller's output window (keel_tls_output). The caller moves the bytes.
 *
 *   - Streams (struct keel_tls_stream): the engine over a socket, with
 *     routines awaited by KEEL_AWAIT_CALL: keel_tls_handshake,
 *     keel_tls_recv, keel_tls_send, keel_tls_shutdown. Ciphertext comes in
 *     through a recv stream on the caller's buffer ring (decrypted in
 *     place from the ring's buffers) and goes out from the stream's output
 *     buffer. The stream, and so every byte the kernel touches, lives in
 *     the caller's task frame: a task killed or aborted in the middle of an
 *     op leaves nothing dangling (the frame outlives the task until the
 *     kernel has returned every op).
 *
 * A context (struct keel_tls_ctx) holds the configuration, the
 * certificates, the session cache and the counters. It is shared by every
 * loop of a runtime: thread-safe once set up (add every certificate before
 * the first connection).
 *
 * Every connection gets: TLS 1.2 or 1.3 only, no compression, no
 * renegotiation (a peer's attempt is refused and counted), ALPN and SNI
 * when configured, resumption by session tickets (off with no_tickets),
 * a handshake deadline. kTLS (the kernel's TLS record layer) is probed
 * once per process; keel_tls_ctx_describe() says whether it is used and
 * why not. Where the kernel has it, a stream hands its connection's keys
 * to the kernel after the handshake and moves plaintext with plain
 * io_uring ops from there (keel_tls(7)); keel_tls_ktls() says whether it
 * did and why not.
 *
 * Errors are negative errnos: -EAGAIN (the engine needs ciphertext from
 * the peer), -ENOBUFS (the engine's output window is full: send it and
 * give it a new one), -EPROTO (bad input, a fatal alert, a refused
 * renegotiation), -EKEYREJECTED (the peer's certificate failed
 * verification), -ETIMEDOUT (the handshake deadline), -ECONNRESET (the
 * peer closed without close_notify: a truncated stream), -ENOMEM.
 */
#ifndef KEEL_TLS_H
#define KEEL_TLS_H

#include <keel/io.h>
#include <keel/task.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct keel_tls_ctx;
struct keel_tls;

/* ---- contexts ---- */

enum keel_tls_role {
	KEEL_TLS_SERVER = 0,
	KEEL_TLS_CLIENT = 1,
};

/* keel_tls_opts.min_version / max_version; keel_tls_version(). */
#define KEEL_TLS_1_2 0x0303
#define KEEL_TLS_1_3 0x0304

enum keel_tls_ktls {
	KEEL_TLS_KTLS_AUTO = 0,	   /* use the kernel's TLS when it has it */
	KEEL_TLS_KTLS_OFF = 1,	   /* never */
	KEEL_TLS_KTLS_REQUIRE = 2, /* without it, keel_tls_ctx_create fails;
				    * a stream that cannot hand over fails
				    * its handshake */
};

struct keel_tls_opts {
	enum keel_tls_role role;
	/* Server: the default certificate (a PEM chain, leaf first) and its
	 * key. Client: an optional client certificate and key. */
	const char *cert_file, *key_file;
	/* Client: the trust anchors (PEM), NULL for the system's store.
	 * Server: if set, client certificates are requested and verified
	 * against it (a client without one fails the handshake). */
	const char *ca_file;
	bool verify_none; /* client: no verification at all (tests only) */
	/* Our protocols, in preference order, comma-separated
	 * ("h2,http/1.1"); NULL: no ALPN. A server picks the first of its
	 * own that the client offers; a client offering none of them gets
	 * no ALPN (the handshake goes on). */
	const char *alpn;
	/* KEEL_TLS_1_2 or KEEL_TLS_1_3; 0: 1.2 and 1.3. */
	uint16_t min_version, max_version;
	/* OpenSSL's syntax (ciphers: TLS 1.2, ciphersuites: TLS 1.3, groups:
	 * key exchange); NULL: OpenSSL's defaults. */
	const char *ciphers, *ciphersuites, *groups;
	bool no_tickets;	       /* no session resumption */
	uint64_t handshake_timeout_ns; /* 0: 10 s */
	enum keel_tls_ktls ktls;
};

/*
 * Create a context from `opts` (copied; the files are read now). Returns 0
 * and sets *out, or a negative errno with `why` (if not NULL) set to one
 * line naming the file or option and the problem ("cert.pem: no
 * certificate in it (PEM expected)", "key.pem: does not match the
 * certificate in cert.pem", "cert.pem: No such file or directory",
 * "--alpn: ...").
 * Ownership: the caller owns *out (keel_tls_ctx_free); `opts` and its
 * strings stay the caller's.
 */
int keel_tls_ctx_create(struct keel_tls_ctx **out,
			const struct keel_tls_opts *opts, char *why,
			size_t why_len);

/*
 * Server: another certificate for SNI, chosen when the client's server
 * name matches one of its names (subjectAltName DNS names, a wildcard
 * matching one label); a name matching none gets the default certificate.
 * Certificates are tried in the order added. Call it before the context's
 * first connection. Returns 0 or a negative errno with `why` as above
 * (-EINVAL on a client context).
 * Ownership: the files are read now; the paths stay the caller's.
 */
int keel_tls_ctx_add_cert(struct keel_tls_ctx *ctx, const char *cert_file,
			  const char *key_file, char *why, size_t why_len);

/*
 * Free a context. Every engine made from it must be freed first.
 * Ownership: `ctx` is gone.
 */
void keel_tls_ctx_free(struct keel_tls_ctx *ctx);

/*
 * One line for logs: the OpenSSL version, the role, versions, ALPN, and
 * the kTLS verdict with its reason ("kTLS: off: the kernel has no tls ULP
 * (setsockopt TCP_ULP \"tls\": No such file or directory); records through
 * memory BIOs"). Returns the line's length (truncated to len - 1 like
 * snprintf) or a negative errno.
 * Ownership: writes into the caller's `buf`.
 */
int keel_tls_ctx_describe(const struct keel_tls_ctx *ctx, char *buf,
			  size_t len);

/* A context's counters, over every connection and loop. */
struct keel_tls_stats {
	uint64_t handshakes;	 /* completed */
	uint64_t resumed;	 /* of them, resumed sessions */
	uint64_t failed;	 /* bad input, alerts, failed verification */
	uint64_t timeouts;	 /* handshake deadline passed */
	uint64_t renegotiations; /* attempts refused */
	uint64_t clean_closes;	 /* close_notify received */
	uint64_t truncated;	 /* end of stream without close_notify */
	uint64_t ktls;		 /* connections handed to the kernel's TLS */
	uint64_t bytes_in;	 /* plaintext received */
	uint64_t bytes_out;	 /* plaintext sent */
	/* connections that stayed on memory BIOs where kTLS was planned
	 * (a cipher the kernel does not take, data already read past the
	 * handshake, the kernel refused the keys) */
	uint64_t ktls_fallbacks;
};

/*
 * A snapshot of the counters (relaxed atomics: each value whole, the set
 * not one instant). Thread-safe.
 * Ownership: a copy into the caller's `out`.
 */
void keel_tls_ctx_stats(const struct keel_tls_ctx *ctx,
			struct keel_tls_stats *out);

/*
 * The counters as Prometheus text (format 0.0.4): one counter family per
 * field, named `<name_prefix>_tls_<field>_total` (name_prefix NULL or ""
 * for none). Returns the bytes written (NUL-terminated) or -ENOSPC.
 * Ownership: writes into the caller's `buf`.
 */
int keel_tls_render_metrics(const struct keel_tls_ctx *ctx,
			    const char *name_prefix, char *buf, size_t len);

/* ---- the engine (sans I/O) ---- */

/*
 * A new connection of `ctx`'s role. Client: `server_name` is sent as SNI
 * and is the name the server's certificate is verified against (NULL: no
 * SNI, and no name check; an IP address is checked against the
 * certificate's IP addresses and not sent). Server: NULL. Returns 0 or a
 * negative errno.
 * Ownership: the caller owns *out (keel_tls_free); `ctx` must outlive it;
 * `server_name` is copied.
 */
int keel_tls_new(struct keel_tls_ctx *ctx, const char *server_name,
		 struct keel_tls **out);

/* Ownership: `tls` is gone (NULL is fine). */
void keel_tls_free(struct keel_tls *tls);

/*
 * Hand the engine `len` bytes of ciphertext from the peer. They are read
 * in place, not copied, by the next calls; any left over from an earlier
 * input must have been consumed (keel_tls_input_left() == 0).
 * Ownership: `data` stays the caller's but must stay valid and unchanged
 * until keel_tls_input_left() is 0 (or the next keel_tls_input).
 */
void keel_tls_input(struct keel_tls *tls, const void *data, size_t len);

/* Bytes of the last input not consumed yet. */
size_t keel_tls_input_left(const struct keel_tls *tls);

/*
 * Give the engine an output window of `cap` bytes: ciphertext for the peer
 * is written there, from its start; keel_tls_output_len() says how much.
 * When the window is full the engine's calls return -ENOBUFS: send the
 * bytes and call this again (the same buffer is fine). The engine never
 * starts a record it has no room for: keel_tls_write encrypts what fits
 * with 512 bytes to spare for the record's overhead, and keel_tls_read
 * wants 2 KiB free (or an empty window) for what it may write back. A
 * window of KEEL_TLS_STREAM_OUT bytes takes a full 16 KiB record.
 * Ownership: `buf` stays the caller's; the engine writes into it until the
 * next keel_tls_output() or keel_tls_free().
 */
void keel_tls_output(struct keel_tls *tls, void *buf, size_t cap);

/* Bytes of ciphertext in the output window. */
size_t keel_tls_output_len(const struct keel_tls *tls);

/* The largest TLS record on the wire (16 KiB of plaintext + overhead). */
#define KEEL_TLS_RECORD_MAX (16384 + 2048 + 5)

/*
 * Advance the handshake. 0: done (the connection is established; output
 * may still be pending: send it); -EAGAIN: it needs more input; -ENOBUFS:
 * the output window is full; another negative errno: it failed (-EPROTO,
 * -EKEYREJECTED, -ENOMEM); the engine is then unusable but for
 * keel_tls_output_len() (an alert for the peer may be in the window).
 */
int keel_tls_handshake_step(struct keel_tls *tls);

/*
 * Decrypt up to `len` bytes of plaintext into `buf`. Returns the count
 * (> 0), 0 when the peer sent close_notify, -EAGAIN (more input needed),
 * -ENOBUFS (output pending: a TLS 1.3 KeyUpdate answer or a ticket; send
 * the window and call again), -EPROTO (a bad record, an alert, a
 * renegotiation attempt).
 */
int keel_tls_read(struct keel_tls *tls, void *buf, size_t len);

/*
 * Encrypt plaintext into the output window. Returns the bytes consumed
 * (> 0; may be fewer than `len`), or -ENOBUFS (no room for a record: send
 * the window first), -EPROTO.
 */
int keel_tls_write(struct keel_tls *tls, const void *buf, size_t len);

/*
 * Write a close_notify alert into the output window (once). Returns 0,
 * -ENOBUFS or -EPROTO.
 */
int keel_tls_close_notify(struct keel_tls *tls);

/* After the handshake. Ownership: strings are the engine's, valid until
 * keel_tls_free(); NULL when there is none. */
const char *keel_tls_alpn(const struct keel_tls *tls);	      /* the protocol */
const char *keel_tls_server_name(const struct keel_tls *tls); /* SNI */
bool keel_tls_resumed(const struct keel_tls *tls);
uint16_t keel_tls_version(const struct keel_tls *tls);	 /* KEEL_TLS_1_x */
const char *keel_tls_cipher(const struct keel_tls *tls); /* IANA name */
/* The peer presented a certificate and it was verified. */
bool keel_tls_peer_verified(const struct keel_tls *tls);
/* NULL when the kernel has this connection's records (kTLS: a stream
 * handed them over after its handshake); else why not, a few words ("the
 * kernel has no tls ULP ...", "the cipher is not one the kernel's TLS
 * takes ..."). The string is static. */
const char *keel_tls_ktls(const struct keel_tls *tls);

/* ---- streams ---- */

/*
 * Size of a stream's output buffer: one whole record of 16 KiB of
 * plaintext with room for its overhead, and room kept for the control
 * records (KeyUpdate answers, alerts) a reader may write while a sender
 * has filled the rest.
 */
#define KEEL_TLS_STREAM_OUT (16384 + 512 + 2048)

/*
 * A TLS connection over a socket. Embed it in the task frame (every byte
 * the kernel reads or writes is in here, or in the buffer ring); its
 * fields are private.
 */
struct keel_tls_stream {
	struct keel_tls *tls;
	int fd;
	int err;	      /* the send side's sticky error */
	uint32_t out_sending; /* bytes of out[] with the kernel, or 0 */
	int32_t hs_res, rd_res;
	size_t wr_off; /* bytes of the caller's buffer encrypted */
	struct keel_recv_stream rs;
	struct keel_buf in; /* the chunk being decrypted */
	/* resume states: one per direction, so that one task may receive
	 * while another sends */
	struct keel_routine hs_r, rd_r, wr_r, flush_rd, flush_wr;
	/* the handshake's deadline: its token and the one it replaced */
	struct keel_token *hs_tok, *hs_saved;
	unsigned hs_mark;
	/* kTLS: the handshake reads one record at a time into out[] (hs_got
	 * of hs_need bytes), so that no byte after it leaves the socket
	 * before the kernel has the keys; the recv stream opens after it,
	 * for `owner` on `ring` */
	uint32_t hs_got, hs_need;
	struct keel_task *owner;
	struct keel_bufring *ring;
	/* kTLS: close_notify, a sendmsg with the record type in a control
	 * message */
	struct msghdr ctl_msg;
	struct iovec ctl_iov;
	union {
		size_t align; /* a cmsghdr's */
		unsigned char buf[CMSG_SPACE(1)];
	} ctl_cmsg;
	unsigned char ctl_alert[2];
	/* ciphertext for the peer: [0, output length) pending, of which
	 * [0, out_sending) is with the kernel */
	unsigned char out[KEEL_TLS_STREAM_OUT];
};

/*
 * Set up `s` for task `t` (the task that receives; it owns the recv
 * stream) on connected socket `fd`, receiving into `ring` (a buffer ring of
 * t's loop), with engine `tls`. It pushes a defer (keel_defer) that
 * closes the stream when `t` ends, however it ends, so a killed task gives
 * back the ring buffer it was decrypting. Returns 0 or a negative errno
 * (as keel_recv_stream_open(), or keel_defer()'s -ENOMEM).
 * Ownership: `s` is the caller's (in t's frame); `fd`, `ring` and `tls`
 * stay the caller's and must outlive the stream (keel_tls_stream_close).
 */
int keel_tls_stream_open(struct keel_task *t, struct keel_tls_stream *s,
			 struct keel_tls *tls, int fd,
			 struct keel_bufring *ring);

/*
 * Routines: await each with KEEL_AWAIT_CALL; the result is in keel_res().
 *
 * keel_tls_handshake: 0, or a negative errno (-ETIMEDOUT after the
 * context's handshake timeout, counted; -ECANCELED; -EPROTO;
 * -EKEYREJECTED; -ECONNRESET: the peer closed). The deadline is a child
 * token of the task's, in place only during the handshake.
 *
 * keel_tls_recv: plaintext bytes (> 0), 0 at close_notify, -ECONNRESET
 * when the stream ends without one (truncated), -EPROTO (a bad record),
 * or the task's cancellation cause.
 *
 * keel_tls_send: `len` once every byte is encrypted and handed to the
 * kernel, or a negative errno.
 *
 * keel_tls_shutdown: sends close_notify; 0 or a negative errno. It does
 * not wait for the peer's.
 *
 * One task may be in keel_tls_recv while another is in keel_tls_send or
 * keel_tls_shutdown on the same stream (both tasks of one loop; the
 * sender must be done before the owner's frame goes: its sends read the
 * buffer in it); the handshake runs alone.
 */
int keel_tls_handshake(struct keel_task *t, struct keel_tls_stream *s);
int keel_tls_recv(struct keel_task *t, struct keel_tls_stream *s, void *buf,
		  size_t len);
int keel_tls_send(struct keel_task *t, struct keel_tls_stream *s,
		  const void *buf, size_t len);
int keel_tls_shutdown(struct keel_task *t, struct keel_tls_stream *s);

/*
 * Close the recv stream and give back its buffers. Not the fd, not the
 * engine. Safe to call twice.
 * Ownership: `s` is the caller's again.
 */
void keel_tls_stream_close(struct keel_tls_stream *s);

#ifdef __cplusplus
}
#endif
#endif
