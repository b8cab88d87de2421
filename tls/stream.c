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
 */
#include <errno.h>
#include <string.h>
#include <sys/socket.h>

#include "internal.h"

/* The sender leaves this much of the buffer to the reader (engine.c's
 * CONTROL_ROOM). */
#define READER_ROOM 2048
/* How often a sender that needs room looks again while the reader's
 * flush is in flight. */
#define FLUSH_POLL_NS 1000000

int keel_tls_stream_open(struct keel_task *t, struct keel_tls_stream *s,
			 struct keel_tls *tls, int fd,
			 struct keel_bufring *ring)
{
	memset(s, 0, offsetof(struct keel_tls_stream, out));
	s->tls = tls;
	s->fd = fd;
	keel__tls_window(tls, s->out, sizeof(s->out), 0);
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
		if (s->hs_res == -EAGAIN) {
			KEEL_AWAIT(r, keel_recv_next(t, &s->rs, &s->in));
			if (keel_res(t) <= 0) {
				/* the peer left mid-handshake */
				s->hs_res =
				    keel_res(t) ? keel_res(t) : -ECONNRESET;
				if (!keel_res(t))
					keel__tls_failed(s->tls);
				break;
			}
			keel_tls_input(s->tls, s->in.data, s->in.len);
		}
	}
	KEEL_ROUTINE_RETURN(r, t, hs_deadline_end(t, s, s->hs_res));
}

/* ---- data ------------------------------------------------------------- */

int keel_tls_recv(struct keel_task *t, struct keel_tls_stream *s, void *buf,
		  size_t len)
{
	struct keel_routine *r = &s->rd_r;

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

int keel_tls_send(struct keel_task *t, struct keel_tls_stream *s,
		  const void *buf, size_t len)
{
	struct keel_routine *r = &s->wr_r;
	int n;

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

int keel_tls_shutdown(struct keel_task *t, struct keel_tls_stream *s)
{
	struct keel_routine *r = &s->wr_r;

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
