/* SPDX-License-Identifier: MIT */
/*
 * tls/stream.c: the engine over a socket. Owns the routines of struct
 * keel_tls_stream: the handshake with its deadline, recv, send, shutdown.
 *
 * Ciphertext comes in through a recv stream on the caller's buffer ring:
 * each chunk is handed to the engine in place and released once the
 * engine has read all of it. Ciphertext goes out from the stream's one
 * output buffer, which lives in the caller's frame (the kernel reads it
 * while a send is in flight; a killed task's frame stays until then).
 *
 * A reader and a sender (two tasks of one loop) share that buffer. Both
 * may write into it: the sender its records, the reader what a read
 * answers with (a TLS 1.3 KeyUpdate, an alert). The rules that keep it
 * right:
 *   - the buffer is a queue: [0, len) pending, of which [0, out_sending)
 *     is with the kernel; new ciphertext is appended after `len`, never
 *     inside what the kernel reads;
 *   - one flusher at a time (out_sending != 0): it sends, then drops what
 *     was sent (memmove, with nothing in flight) and goes on until the
 *     queue is empty, so it also sends what the other task appended
 *     meanwhile, in the order written (records must reach the peer in
 *     sequence);
 *   - the sender fills the buffer only up to 2 KiB short of its end, so a
 *     reader always has room for its control records and never waits for
 *     a sender's flush; a sender that needs room while the reader flushes
 *     waits for it (a 1 ms poll: it only happens when the reader is
 *     sending a control record, which is rare).
 * The first send error is sticky (err): a short send leaves the peer a
 * broken record stream, so nothing more can go out.
 *
 * kTLS (when the context plans it: the kernel has the tls ULP): the
 * handshake reads one record at a time with plain recvs (header, then
 * body) instead of the recv stream, so that whatever the peer sends after
 * it stays in the socket; then the keys go to the kernel (TCP_ULP "tls",
 * TLS_TX, TLS_RX) and the recv stream opens on a socket that yields
 * plaintext. From there recv and send are plain io_uring ops on the fd
 * (OpenSSL is not called again); a record that is not data makes the
 * kernel fail the recv with EIO, and it is read with recvmsg and its
 * TLS_GET_RECORD_TYPE: an alert (close_notify is the end), a session
 * ticket (dropped: only a client without tickets hands over), a KeyUpdate
 * (the connection ends with -EKEYEXPIRED: keel does not rekey the
 * kernel). close_notify goes out as a sendmsg with TLS_SET_RECORD_TYPE.
 * If the hand-off cannot happen (see keel__tls_ktls_keys), the connection
 * stays on OpenSSL (counted in ktls_fallbacks; REQUIRE fails it).
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/socket.h>

#include <openssl/crypto.h>

#include "internal.h"

/* The sender leaves this much of the buffer to the reader (engine.c's
 * CONTROL_ROOM). */
#define READER_ROOM 2048
/* How often a sender that needs room looks again while the reader's
 * flush is in flight. */
#define FLUSH_POLL_NS 1000000

#ifndef TCP_ULP
#define TCP_ULP 31
#endif
#ifndef SOL_TLS
#define SOL_TLS 282
#endif

/* TLS record types and handshake messages the kTLS receiver meets. */
#define REC_ALERT	      21
#define REC_HANDSHAKE	      22
#define REC_DATA	      23
#define HS_NEW_SESSION_TICKET 4
#define HS_KEY_UPDATE	      24
#define REC_HEADER	      5
/* The longest record's plaintext (a control record's too). */
#define RECORD_MAX 16384

/* The task ended, however it did (a kill or an abort too): the chunk it
 * was decrypting goes back to the ring (keel only gives back the chunks
 * still queued in the stream). Harmless after keel_tls_stream_close. */
static void stream_cleanup(void *arg)
{
	keel_tls_stream_close(arg);
}

int keel_tls_stream_open(struct keel_task *t, struct keel_tls_stream *s,
			 struct keel_tls *tls, int fd,
			 struct keel_bufring *ring)
{
	int err;

	memset(s, 0, offsetof(struct keel_tls_stream, out));
	s->tls = tls;
	s->fd = fd;
	s->owner = t;
	s->ring = ring;
	keel__tls_window(tls, s->out, sizeof(s->out), 0);
	err = keel_defer(t, stream_cleanup, s);
	if (err)
		return err;
	if (tls->ktls)
		return 0; /* after the handshake (see the top) */
	return keel_recv_stream_open(t, &s->rs, fd, ring, 0);
}

void keel_tls_stream_close(struct keel_tls_stream *s)
{
	keel_buf_release(&s->in);
	keel_recv_stream_close(&s->rs);
}

/* The reader may use the whole buffer; the sender leaves READER_ROOM. */
static void window_reader(struct keel_tls_stream *s)
{
	keel__tls_window(s->tls, s->out, sizeof(s->out),
			 keel_tls_output_len(s->tls));
}

static void window_sender(struct keel_tls_stream *s)
{
	keel__tls_window(s->tls, s->out, sizeof(s->out) - READER_ROOM,
			 keel_tls_output_len(s->tls));
}

/*
 * Send what is pending. If another task's send is in flight, it sends
 * ours too: return at once, unless `wait` (the caller needs the room),
 * then wait until the buffer is empty. Result: 0 or the sticky error.
 */
static int flush(struct keel_task *t, struct keel_tls_stream *s,
		 struct keel_routine *r, bool wait)
{
	KEEL_BEGIN(r);
	for (;;) {
		if (s->err)
			KEEL_ROUTINE_RETURN(r, t, s->err);
		if (!keel_tls_output_len(s->tls))
			KEEL_ROUTINE_RETURN(r, t, 0);
		if (s->out_sending) {
			if (!wait)
				KEEL_ROUTINE_RETURN(r, t, 0);
			KEEL_AWAIT(r, keel_sleep(t, FLUSH_POLL_NS));
			if (keel_res(t) < 0)
				KEEL_ROUTINE_RETURN(r, t, keel_res(t));
			continue;
		}
		s->out_sending = (uint32_t)keel_tls_output_len(s->tls);
		KEEL_AWAIT(r, keel_send_all(t, s->fd, s->out, s->out_sending,
					    MSG_NOSIGNAL));
		{
			size_t sent = s->out_sending;
			size_t left = keel_tls_output_len(s->tls) - sent;

			s->out_sending = 0;
			if (keel_res(t) < 0) {
				s->err = keel_res(t);
				KEEL_ROUTINE_RETURN(r, t, s->err);
			}
			memmove(s->out, s->out + sent, left);
			keel__tls_window(s->tls, s->out, s->tls->out_cap, left);
		}
	}
}

/* ---- the handshake's deadline ----------------------------------------- */

/* The task died (killed, aborted) mid-handshake: drop our references; its
 * token goes with it. */
static void hs_release(void *arg)
{
	struct keel_tls_stream *s = arg;

	keel_token_release(s->hs_tok);
	keel_token_release(s->hs_saved);
	s->hs_tok = s->hs_saved = NULL;
}

/*
 * Observe a child of the task's token with the handshake deadline on it,
 * for the handshake only: a deadline left on the caller's own token would
 * outlive the handshake.
 */
static int hs_deadline_begin(struct keel_task *t, struct keel_tls_stream *s)
{
	int err;

	s->hs_saved = keel_token_ref(keel_task_token(t));
	err = keel_token_new(keel_task_loop(t), s->hs_saved, &s->hs_tok);
	if (err) {
		keel_token_release(s->hs_saved);
		s->hs_saved = NULL;
		return err;
	}
	s->hs_mark = keel_defer_mark(t);
	err = keel_token_set_timeout(s->hs_tok,
				     s->tls->ctx->handshake_timeout_ns);
	if (!err)
		err = keel_defer(t, hs_release, s);
	if (!err)
		err = keel_task_set_token(t, s->hs_tok);
	if (err) {
		keel_defer_unwind(t, s->hs_mark);
		if (s->hs_tok)
			hs_release(s);
	}
	return err;
}

/* Put the task's token back (unless someone replaced ours meanwhile:
 * keel_task_cancel() does, and its cancel must stick). `res` is the
 * handshake's result; returns it, -ETIMEDOUT if our deadline ended it. */
static int hs_deadline_end(struct keel_task *t, struct keel_tls_stream *s,
			   int res)
{
	if (res < 0 && keel_token_cause(s->hs_tok) == -ETIMEDOUT &&
	    !keel_token_cause(s->hs_saved)) {
		res = -ETIMEDOUT;
		keel__tls_count(&s->tls->ctx->c.timeouts, 1);
	}
	keel_defer_drop(t, s->hs_mark);
	if (keel_task_token(t) == s->hs_tok)
		keel_task_set_token(t, s->hs_saved); /* cannot fail: it has
						      * a token already */
	hs_release(s);
	return res;
}

/*
 * kTLS planned: the handshake's input is one record read into out[]
 * (empty then: the flight before it was flushed), and the engine's window
 * follows it; after the step, move what the engine wrote to the front.
 * OpenSSL reads a record whole before it writes anything.
 */
static void hs_window_back(struct keel_tls_stream *s)
{
	struct keel_tls *tls = s->tls;

	if (tls->out != s->out && !tls->in_left) {
		memmove(s->out, tls->out, tls->out_len);
		keel__tls_window(tls, s->out, sizeof(s->out), tls->out_len);
	}
}

/* Hand the keys to the kernel. 0 or a negative errno. The first
 * setsockopt that fails leaves the socket as it was (a tls ULP without
 * keys passes bytes through) but for TLS_RX after TLS_TX: then the
 * kernel encrypts and OpenSSL would decrypt, which cannot go on. */
static int ktls_install(int fd, const union keel__tls_crypto *tx,
			const union keel__tls_crypto *rx, uint32_t len,
			const char **why, bool *broken)
{
	int saved = errno, err = 0;

	*broken = false;
	if (keel__tls_ktls_install)
		return keel__tls_ktls_install(fd, tx, rx, len);
	if (setsockopt(fd, SOL_TCP, TCP_ULP, "tls", sizeof("tls"))) {
		err = -errno;
		*why = "the kernel refused the tls ULP on this socket";
	} else if (setsockopt(fd, SOL_TLS, TLS_TX, tx, len)) {
		err = -errno;
		*why = "the kernel refused the sending keys";
	} else if (setsockopt(fd, SOL_TLS, TLS_RX, rx, len)) {
		err = -errno;
		*why = "the kernel took the sending keys but refused the "
		       "receiving ones";
		*broken = true;
	}
	errno = saved;
	return err;
}

/* After the handshake: give the records to the kernel, or say why not.
 * 0 (handed over, or staying on OpenSSL) or a negative errno (REQUIRE
 * could not be met; a half-done hand-off). */
static int hand_off(struct keel_tls_stream *s)
{
	struct keel_tls *tls = s->tls;
	struct keel_tls_ctx *ctx = tls->ctx;
	union keel__tls_crypto tx, rx;
	const char *why = NULL;
	bool broken = false;
	uint32_t len = 0;
	int err;

	err = keel__tls_ktls_keys(tls, &tx, &rx, &len, &why);
	if (!err) {
		err = ktls_install(s->fd, &tx, &rx, len, &why, &broken);
		if (err && !why)
			why = "the kernel refused the keys";
	}
	OPENSSL_cleanse(&tx, sizeof(tx));
	OPENSSL_cleanse(&rx, sizeof(rx));
	keel__tls_ktls_done(tls); /* ours are not needed any more */
	if (!err) {
		tls->flags |= KEEL__TLS_KTLS;
		tls->ktls_why = NULL;
		keel__tls_count(&ctx->c.ktls, 1);
		return 0;
	}
	tls->ktls_why = why;
	keel__tls_count(&ctx->c.ktls_fallbacks, 1);
	if (broken) {
		keel__tls_failed(tls);
		return err;
	}
	if (ctx->ktls == KEEL_TLS_KTLS_REQUIRE) {
		keel__tls_failed(tls);
		return -EOPNOTSUPP;
	}
	return 0;
}

int keel_tls_handshake(struct keel_task *t, struct keel_tls_stream *s)
{
	struct keel_routine *r = &s->hs_r;
	int err;

	KEEL_BEGIN(r);
	err = hs_deadline_begin(t, s);
	if (err)
		KEEL_ROUTINE_RETURN(r, t, err);
	window_reader(s);
	for (;;) {
		s->hs_res = keel_tls_handshake_step(s->tls);
		hs_window_back(s);
		if (keel_tls_output_len(s->tls)) {
			/* our flight, or the alert of a failure */
			KEEL_AWAIT_CALL(r, flush(t, s, &s->flush_rd, true));
			if (keel_res(t) < 0 && s->hs_res != -EPROTO &&
			    s->hs_res != -EKEYREJECTED) {
				s->hs_res = keel_res(t);
				break;
			}
		}
		if (s->hs_res == 0 ||
		    (s->hs_res != -EAGAIN && s->hs_res != -ENOBUFS))
			break;
		if (s->hs_res != -EAGAIN)
			continue;
		if (s->tls->ktls) {
			/* One record: its header, then its body. */
			if (keel_tls_input_left(s->tls)) {
				s->hs_res = -EPROTO; /* OpenSSL left some */
				keel__tls_failed(s->tls);
				break;
			}
			s->hs_got = 0;
			s->hs_need = REC_HEADER;
			while (s->hs_got < s->hs_need) {
				KEEL_AWAIT(
				    r, keel_recv(t, s->fd, s->out + s->hs_got,
						 s->hs_need - s->hs_got, 0));
				if (keel_res(t) <= 0)
					break;
				s->hs_got += (uint32_t)keel_res(t);
				if (s->hs_got == REC_HEADER &&
				    s->hs_need == REC_HEADER) {
					uint32_t body = (uint32_t)s->out[3]
							    << 8 |
							s->out[4];

					/* Too long for out[]: OpenSSL
					 * refuses it from the header. */
					if (REC_HEADER + body <= sizeof(s->out))
						s->hs_need += body;
				}
			}
			if (keel_res(t) > 0) {
				keel_tls_input(s->tls, s->out, s->hs_got);
				keel__tls_window(s->tls, s->out + s->hs_got,
						 sizeof(s->out) - s->hs_got, 0);
				continue;
			}
		} else {
			KEEL_AWAIT(r, keel_recv_next(t, &s->rs, &s->in));
			if (keel_res(t) > 0) {
				keel_tls_input(s->tls, s->in.data, s->in.len);
				continue;
			}
		}
		/* the peer left mid-handshake */
		s->hs_res = keel_res(t) ? keel_res(t) : -ECONNRESET;
		if (!keel_res(t))
			keel__tls_failed(s->tls);
		break;
	}
	if (s->tls->ktls) {
		/* The recv stream was not open: hand over, then open it on
		 * what the socket now yields (plaintext or records). */
		if (s->hs_res == 0)
			s->hs_res = hand_off(s);
		if (s->hs_res == 0)
			s->hs_res = keel_recv_stream_open(s->owner, &s->rs,
							  s->fd, s->ring, 0);
		keel__tls_ktls_done(s->tls);
	}
	KEEL_ROUTINE_RETURN(r, t, hs_deadline_end(t, s, s->hs_res));
}

/* ---- data ------------------------------------------------------------- */

/* kTLS: the plaintext left in the chunk, into the caller's buffer. */
static int ktls_take(struct keel_tls_stream *s, void *buf, size_t len)
{
	struct keel_tls *tls = s->tls;
	size_t n = tls->in_left < len ? tls->in_left : len;

	if (n > INT32_MAX)
		n = INT32_MAX;
	memcpy(buf, tls->in, n);
	tls->in += n;
	tls->in_left -= n;
	keel__tls_count(&tls->ctx->c.bytes_in, n);
	return (int)n;
}

/*
 * kTLS: the kernel failed a recv with EIO: the next record is not data.
 * Read it (its type comes in a control message) and say what it means:
 * 1 (nothing for the caller: go on), 0 (close_notify), or a negative
 * errno. A nonblocking recvmsg: the record is in the socket already.
 */
static int ktls_control(struct keel_tls_stream *s)
{
	struct keel_tls *tls = s->tls;
	unsigned char rec[RECORD_MAX];
	union {
		struct cmsghdr h;
		unsigned char buf[CMSG_SPACE(1)];
	} cbuf;
	struct iovec iov = {.iov_base = rec, .iov_len = sizeof(rec)};
	struct msghdr msg = {.msg_iov = &iov,
			     .msg_iovlen = 1,
			     .msg_control = cbuf.buf,
			     .msg_controllen = sizeof(cbuf.buf)};
	struct cmsghdr *c;
	int saved = errno, type = -1;
	ssize_t n = recvmsg(s->fd, &msg, MSG_DONTWAIT);

	if (n < 0)
		n = -errno;
	errno = saved;
	if (n < 0)
		return n == -EAGAIN ? -EIO : (int)n;
	for (c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c))
		if (c->cmsg_level == SOL_TLS &&
		    c->cmsg_type == TLS_GET_RECORD_TYPE)
			type = *CMSG_DATA(c);
	if (type == REC_ALERT && n >= 2 && rec[1] == 0) {
		tls->flags |= KEEL__TLS_CLOSE_RECVD;
		keel__tls_count(&tls->ctx->c.clean_closes, 1);
		return 0;
	}
	if (type == REC_HANDSHAKE && n >= 1 && rec[0] == HS_NEW_SESSION_TICKET)
		return 1; /* a client without tickets has no use for it */
	keel__tls_failed(tls);
	if (type == REC_DATA || type < 0)
		return -EIO; /* the EIO was not about a control record */
	if (type == REC_HANDSHAKE && n >= 1 && rec[0] == HS_KEY_UPDATE)
		return -EKEYEXPIRED; /* the kernel would need new keys */
	return -EPROTO; /* a fatal alert, or a message we do not take */
}

/* kTLS: keel_tls_recv on plaintext from the kernel. */
static int ktls_recv(struct keel_task *t, struct keel_tls_stream *s, void *buf,
		     size_t len)
{
	struct keel_routine *r = &s->rd_r;

	KEEL_BEGIN(r);
	for (;;) {
		if (keel_tls_input_left(s->tls))
			KEEL_ROUTINE_RETURN(r, t, ktls_take(s, buf, len));
		if (s->tls->flags & KEEL__TLS_CLOSE_RECVD)
			KEEL_ROUTINE_RETURN(r, t, 0);
		if (s->tls->flags & KEEL__TLS_FAILED)
			KEEL_ROUTINE_RETURN(r, t, -EPROTO);
		KEEL_AWAIT(r, keel_recv_next(t, &s->rs, &s->in));
		if (keel_res(t) > 0) {
			keel_tls_input(s->tls, s->in.data, s->in.len);
			continue;
		}
		if (keel_res(t) == 0) {
			keel__tls_count(&s->tls->ctx->c.truncated, 1);
			KEEL_ROUTINE_RETURN(r, t, -ECONNRESET);
		}
		if (keel_res(t) != -EIO)
			KEEL_ROUTINE_RETURN(r, t, keel_res(t));
		s->rd_res = ktls_control(s);
		if (s->rd_res <= 0)
			KEEL_ROUTINE_RETURN(r, t, s->rd_res);
		/* The EIO ended the recv stream: a new one. */
		keel_recv_stream_close(&s->rs);
		s->rd_res = keel_recv_stream_open(t, &s->rs, s->fd, s->ring, 0);
		if (s->rd_res < 0)
			KEEL_ROUTINE_RETURN(r, t, s->rd_res);
	}
}

int keel_tls_recv(struct keel_task *t, struct keel_tls_stream *s, void *buf,
		  size_t len)
{
	struct keel_routine *r = &s->rd_r;

	if (s->tls->flags & KEEL__TLS_KTLS)
		return ktls_recv(t, s, buf, len);
	KEEL_BEGIN(r);
	for (;;) {
		window_reader(s);
		s->rd_res = keel_tls_read(s->tls, buf, len);
		if (s->rd_res >= 0) {
			/* Data, or close_notify. Whatever the read wrote back
			 * goes out now unless a flush is under way (which
			 * takes it along). */
			if (keel_tls_output_len(s->tls) && !s->out_sending)
				KEEL_AWAIT_CALL(
				    r, flush(t, s, &s->flush_rd, false));
			KEEL_ROUTINE_RETURN(r, t, s->rd_res);
		}
		if (s->rd_res == -ENOBUFS) {
			KEEL_AWAIT_CALL(r, flush(t, s, &s->flush_rd, true));
			if (keel_res(t) < 0)
				KEEL_ROUTINE_RETURN(r, t, keel_res(t));
			continue;
		}
		if (s->rd_res != -EAGAIN) {
			/* a bad record: send our alert if we can */
			if (keel_tls_output_len(s->tls))
				KEEL_AWAIT_CALL(
				    r, flush(t, s, &s->flush_rd, false));
			KEEL_ROUTINE_RETURN(r, t, s->rd_res);
		}
		/* Before waiting for the peer, send what we owe it. */
		if (keel_tls_output_len(s->tls)) {
			KEEL_AWAIT_CALL(r, flush(t, s, &s->flush_rd, false));
			if (keel_res(t) < 0)
				KEEL_ROUTINE_RETURN(r, t, keel_res(t));
		}
		KEEL_AWAIT(r, keel_recv_next(t, &s->rs, &s->in));
		if (keel_res(t) == 0) {
			keel__tls_count(&s->tls->ctx->c.truncated, 1);
			KEEL_ROUTINE_RETURN(r, t, -ECONNRESET);
		}
		if (keel_res(t) < 0)
			KEEL_ROUTINE_RETURN(r, t, keel_res(t));
		keel_tls_input(s->tls, s->in.data, s->in.len);
	}
}

/* kTLS: keel_tls_send as plain sends. The plaintext is copied into out[]
 * first: the kernel reads a send's buffer until it completes, and only
 * the frame is sure to live that long (the caller's buffer may not). */
static int ktls_send(struct keel_task *t, struct keel_tls_stream *s,
		     const void *buf, size_t len)
{
	struct keel_routine *r = &s->wr_r;

	KEEL_BEGIN(r);
	s->wr_off = 0;
	while (s->wr_off < len) {
		if (s->err)
			KEEL_ROUTINE_RETURN(r, t, s->err);
		s->out_sending = (uint32_t)(len - s->wr_off < sizeof(s->out)
						? len - s->wr_off
						: sizeof(s->out));
		memcpy(s->out, (const char *)buf + s->wr_off, s->out_sending);
		KEEL_AWAIT(r, keel_send_all(t, s->fd, s->out, s->out_sending,
					    MSG_NOSIGNAL));
		if (keel_res(t) < 0) {
			s->out_sending = 0;
			s->err = keel_res(t);
			KEEL_ROUTINE_RETURN(r, t, s->err);
		}
		s->wr_off += s->out_sending;
		keel__tls_count(&s->tls->ctx->c.bytes_out, s->out_sending);
		s->out_sending = 0;
	}
	KEEL_ROUTINE_RETURN(r, t, len > INT32_MAX ? INT32_MAX : (int)len);
}

int keel_tls_send(struct keel_task *t, struct keel_tls_stream *s,
		  const void *buf, size_t len)
{
	struct keel_routine *r = &s->wr_r;
	int n;

	if (s->tls->flags & KEEL__TLS_KTLS)
		return ktls_send(t, s, buf, len);
	KEEL_BEGIN(r);
	s->wr_off = 0;
	while (s->wr_off < len) {
		if (s->err)
			KEEL_ROUTINE_RETURN(r, t, s->err);
		window_sender(s);
		n = keel_tls_write(s->tls, (const char *)buf + s->wr_off,
				   len - s->wr_off);
		if (n > 0) {
			s->wr_off += (size_t)n;
			continue;
		}
		if (n != -ENOBUFS)
			KEEL_ROUTINE_RETURN(r, t, n);
		KEEL_AWAIT_CALL(r, flush(t, s, &s->flush_wr, true));
		if (keel_res(t) < 0)
			KEEL_ROUTINE_RETURN(r, t, keel_res(t));
	}
	/* Hand it to the kernel (or to the flush under way). */
	KEEL_AWAIT_CALL(r, flush(t, s, &s->flush_wr, false));
	if (keel_res(t) < 0)
		KEEL_ROUTINE_RETURN(r, t, keel_res(t));
	KEEL_ROUTINE_RETURN(r, t, len > INT32_MAX ? INT32_MAX : (int)len);
}

/* kTLS: close_notify, an alert record the kernel makes from a sendmsg
 * whose control message sets the record type. */
static int ktls_shutdown(struct keel_task *t, struct keel_tls_stream *s)
{
	struct keel_routine *r = &s->wr_r;
	struct cmsghdr *c;

	KEEL_BEGIN(r);
	if (s->tls->flags & KEEL__TLS_CLOSE_SENT)
		KEEL_ROUTINE_RETURN(r, t, 0);
	if (s->err)
		KEEL_ROUTINE_RETURN(r, t, s->err);
	s->ctl_alert[0] = 1; /* warning */
	s->ctl_alert[1] = 0; /* close_notify */
	s->ctl_iov.iov_base = s->ctl_alert;
	s->ctl_iov.iov_len = sizeof(s->ctl_alert);
	memset(&s->ctl_msg, 0, sizeof(s->ctl_msg));
	s->ctl_msg.msg_iov = &s->ctl_iov;
	s->ctl_msg.msg_iovlen = 1;
	s->ctl_msg.msg_control = s->ctl_cmsg.buf;
	s->ctl_msg.msg_controllen = sizeof(s->ctl_cmsg.buf);
	c = CMSG_FIRSTHDR(&s->ctl_msg);
	c->cmsg_level = SOL_TLS;
	c->cmsg_type = TLS_SET_RECORD_TYPE;
	c->cmsg_len = CMSG_LEN(1);
	*CMSG_DATA(c) = REC_ALERT;
	KEEL_AWAIT(r, keel_sendmsg_all(t, s->fd, &s->ctl_msg, MSG_NOSIGNAL));
	if (keel_res(t) < 0) {
		s->err = keel_res(t);
		KEEL_ROUTINE_RETURN(r, t, s->err);
	}
	s->tls->flags |= KEEL__TLS_CLOSE_SENT;
	KEEL_ROUTINE_RETURN(r, t, 0);
}

int keel_tls_shutdown(struct keel_task *t, struct keel_tls_stream *s)
{
	struct keel_routine *r = &s->wr_r;

	if (s->tls->flags & KEEL__TLS_KTLS)
		return ktls_shutdown(t, s);
	KEEL_BEGIN(r);
	for (;;) {
		window_sender(s);
		s->wr_off = (size_t)-keel_tls_close_notify(s->tls);
		if (s->wr_off != ENOBUFS)
			break;
		KEEL_AWAIT_CALL(r, flush(t, s, &s->flush_wr, true));
		if (keel_res(t) < 0)
			KEEL_ROUTINE_RETURN(r, t, keel_res(t));
	}
	if (s->wr_off)
		KEEL_ROUTINE_RETURN(r, t, -(int)s->wr_off);
	KEEL_AWAIT_CALL(r, flush(t, s, &s->flush_wr, true));
	KEEL_ROUTINE_RETURN(r, t, keel_res(t));
}
