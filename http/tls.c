/* SPDX-License-Identifier: MIT */
/*
 * http/tls.c: the TLS transport of a connection (keel_http_opts.tls). It
 * owns the TLS connection's frame (struct keel__https: the plain frame,
 * then the keel_tls_stream, the engine, the plaintext buffers) and the
 * routines conn.c, exchange.c and files.c await instead of the socket's
 * ops when the connection's C_TLS flag is set:
 *
 *   open      engine, stream on the loop's buffer ring, handshake (the
 *             context's timeout bounds it; a failure is counted there)
 *   recv      plaintext into `in` (malloc'd: the kernel never sees it;
 *             the engine reads the ciphertext in place from the ring);
 *             conn.c parses it as it parses a ring chunk
 *   sendv     the pieces of a response gathered into one record's worth
 *             of plaintext (a small response is one record, one send),
 *             encrypted straight into the stream's output buffer; a
 *             piece of a record or more is encrypted where it is
 *   sendfile  a file's bytes read into the frame's staging buffer (the
 *             kernel writes it: it must live in the frame) after the
 *             head, then encrypted: the kernel cannot encrypt, so no
 *             splice and no sendfile
 *   close     close_notify, shielded so that a drain's or a timeout's
 *             cancel still lets it out (within a second)
 *
 * A plain connection's frame does not grow: the TLS one is its own task
 * type, whose frame embeds the plain one first.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <keel/tls.h>

#include "conn.h"

/* A TLS record's plaintext at most (RFC 8446 5.1). */
#define RECORD 16384
/* The plaintext buffer a connection receives into. */
#define IN_SIZE	 RECORD
#define NS_PER_S (1000ull * 1000 * 1000)

struct keel__https {
	struct keel__http_conn c; /* first: conn.c's frame */
	struct keel_tls *tls;
	char *in;  /* plaintext received, IN_SIZE bytes */
	bool open; /* ts is open */
	bool shielded;
	/* sendv: the pieces left */
	const struct iovec *iov;
	unsigned iovcnt;
	size_t iov_off;
	size_t stage_len;
	uint64_t total;
	/* sendfile */
	int f_fd;
	uint64_t f_off, f_left;
	struct iovec one;
	struct keel_routine r_recv, r_send, r_file, r_close;
	struct keel_shield shield;
	/* Last, so that the buffers (its output buffer, then the stage) end
	 * the frame: they are not zeroed at spawn (KEEL_TASK_TYPE_TAIL). */
	struct keel_tls_stream ts;
	/* Plaintext gathered for one record; a file's bytes are read into
	 * it by the kernel. */
	char stage[RECORD];
};

/* Everything of the stream but its output buffer is zeroed: the buffer
 * must stay its last member. */
_Static_assert(sizeof(struct keel_tls_stream) -
		       offsetof(struct keel_tls_stream, out) -
		       sizeof(((struct keel_tls_stream *)0)->out) <
		   _Alignof(struct keel_tls_stream),
	       "keel_tls_stream: out[] is not the last member");

/* The buffers, 35 KB, are written before they are read: zeroing them
 * cost every connection a memset of 43k instructions, 1.3 % of a full
 * handshake's (callgrind), which kept keel's server above nginx's. */
KEEL_TASK_TYPE_TAIL(keel__https_conn_task, struct keel__https, c.task,
		    keel__http_conn_step, ts.out);

static struct keel__https *https_of(struct keel__http_conn *c)
{
	return keel_container_of(c, struct keel__https, c);
}

struct keel__http_conn *keel__http_conn_spawn(struct keel__http_shard *sh)
{
	struct keel__https *h;

	if (!sh->srv->opts.tls)
		return keel_spawn(sh->loop, &keel__http_conn_task,
				  KEEL_PRIO_NORMAL);
	h = keel_spawn(sh->loop, &keel__https_conn_task, KEEL_PRIO_NORMAL);
	if (!h)
		return NULL;
	h->c.flags = KEEL__HTTP_C_TLS;
	return &h->c;
}

/*
 * The stream's end reached the connection while it did not wait for it
 * (a handler runs, not reading): the client went away; its handler is
 * cancelled as on a plain connection. Queued ciphertext is left to the
 * connection's next receive (C_ENDED is not set: bytes may still be in
 * the queue before the end).
 */
static void https_notify(struct keel_recv_stream *s, int res)
{
	struct keel__https *h = keel_container_of(s, struct keel__https, ts.rs);
	struct keel_http_exchange *x = h->c.x;

	if (res > 0 || !x || !x->handler || !x->tok ||
	    (x->flags & KEEL__HTTP_X_BODY_WAIT) || keel_token_cancelled(x->tok))
		return;
	KEEL__HTTP_COUNT(h->c.sh, client_gone, 1);
	keel_token_cancel(x->tok);
}

int keel__http_tls_open(struct keel_task *t, struct keel__http_conn *c)
{
	struct keel__https *h = https_of(c);
	struct keel_routine *r = &h->r_recv;
	int err;

	KEEL_BEGIN(r);
	h->in = malloc(IN_SIZE);
	if (!h->in)
		KEEL_ROUTINE_RETURN(r, t, -ENOMEM);
	err = keel_tls_new(c->sh->srv->opts.tls, NULL, &h->tls);
	if (err)
		KEEL_ROUTINE_RETURN(r, t, err);
	err = keel_tls_stream_open(t, &h->ts, h->tls, c->fd, c->sh->ring);
	if (err)
		KEEL_ROUTINE_RETURN(r, t, err);
	h->open = true;
	keel_recv_stream_notify(&h->ts.rs, https_notify);
	KEEL_AWAIT_CALL(r, keel_tls_handshake(t, &h->ts));
	if (keel_res(t) < 0)
		KEEL_ROUTINE_RETURN(r, t, keel_res(t));
	h->c.flags |= KEEL__HTTP_C_SECURE;
	KEEL_ROUTINE_RETURN(r, t, 0);
}

int keel__http_tls_recv(struct keel_task *t, struct keel__http_conn *c)
{
	struct keel__https *h = https_of(c);
	struct keel_routine *r = &h->r_recv;

	KEEL_BEGIN(r);
	KEEL_AWAIT_CALL(r, keel_tls_recv(t, &h->ts, h->in, IN_SIZE));
	if (keel_res(t) > 0) {
		h->c.buf.data = h->in;
		h->c.buf.len = (uint32_t)keel_res(t);
		h->c.buf.ring = NULL;
	}
	KEEL_ROUTINE_RETURN(r, t, keel_res(t));
}

int keel__http_tls_sendv(struct keel_task *t, struct keel__http_conn *c,
			 const struct iovec *iov, unsigned iovcnt)
{
	struct keel__https *h = https_of(c);
	struct keel_routine *r = &h->r_send;

	KEEL_BEGIN(r);
	h->iov = iov;
	h->iovcnt = iovcnt;
	h->iov_off = 0;
	h->total = 0;
	for (;;) {
		/* Skip what is used up (and empty pieces). */
		while (h->iovcnt && h->iov_off == h->iov[0].iov_len) {
			h->iov++;
			h->iovcnt--;
			h->iov_off = 0;
		}
		if (!h->iovcnt)
			break;
		if (h->iov[0].iov_len - h->iov_off >= RECORD) {
			/* A record or more in one piece: encrypted where it
			 * is (the caller lends it until the await ends). */
			h->stage_len = h->iov[0].iov_len - h->iov_off;
			KEEL_AWAIT_CALL(
			    r, keel_tls_send(t, &h->ts,
					     (const char *)h->iov[0].iov_base +
						 h->iov_off,
					     h->stage_len));
			if (keel_res(t) < 0)
				KEEL_ROUTINE_RETURN(r, t, keel_res(t));
			h->iov_off += h->stage_len;
			h->total += h->stage_len;
			continue;
		}
		/* Gather small pieces into one record. */
		h->stage_len = 0;
		while (h->iovcnt && h->stage_len < RECORD) {
			size_t left = h->iov[0].iov_len - h->iov_off;
			size_t n = RECORD - h->stage_len;

			if (n > left)
				n = left;
			memcpy(h->stage + h->stage_len,
			       (const char *)h->iov[0].iov_base + h->iov_off,
			       n);
			h->stage_len += n;
			h->iov_off += n;
			if (h->iov_off == h->iov[0].iov_len) {
				h->iov++;
				h->iovcnt--;
				h->iov_off = 0;
			}
		}
		KEEL_AWAIT_CALL(
		    r, keel_tls_send(t, &h->ts, h->stage, h->stage_len));
		if (keel_res(t) < 0)
			KEEL_ROUTINE_RETURN(r, t, keel_res(t));
		h->total += h->stage_len;
	}
	KEEL_ROUTINE_RETURN(r, t,
			    h->total > INT32_MAX ? INT32_MAX : (int)h->total);
}

int keel__http_tls_send(struct keel_task *t, struct keel__http_conn *c,
			const void *buf, size_t len)
{
	struct keel__https *h = https_of(c);

	/* Resumed with the same arguments: `one` is set again, unchanged. */
	h->one.iov_base = (void *)buf;
	h->one.iov_len = len;
	return keel__http_tls_sendv(t, c, &h->one, 1);
}

int keel__http_tls_sendfile(struct keel_task *t, struct keel__http_conn *c,
			    const void *head, size_t head_len, int fd,
			    uint64_t off, uint64_t len)
{
	struct keel__https *h = https_of(c);
	struct keel_routine *r = &h->r_file;
	size_t n;

	KEEL_BEGIN(r);
	h->f_fd = fd;
	h->f_off = off;
	h->f_left = len;
	h->stage_len = 0;
	if (head_len > RECORD / 2) {
		/* A head this large (many added headers) goes alone. */
		KEEL_AWAIT_CALL(r, keel__http_tls_send(t, c, head, head_len));
		if (keel_res(t) < 0)
			KEEL_ROUTINE_RETURN(r, t, keel_res(t));
	} else {
		memcpy(h->stage, head, head_len);
		h->stage_len = head_len;
	}
	while (h->f_left) {
		n = RECORD - h->stage_len;
		if (n > h->f_left)
			n = (size_t)h->f_left;
		KEEL_AWAIT(r, keel_read(t, h->f_fd, h->stage + h->stage_len,
					(unsigned)n, h->f_off));
		if (keel_res(t) <= 0) {
			/* 0: the file shrank after its statx; the head
			 * promised more, so the connection must close. */
			KEEL_ROUTINE_RETURN(
			    r, t, keel_res(t) < 0 ? keel_res(t) : -EIO);
		}
		h->stage_len += (size_t)keel_res(t);
		h->f_off += (uint64_t)keel_res(t);
		h->f_left -= (uint64_t)keel_res(t);
		KEEL_AWAIT_CALL(
		    r, keel_tls_send(t, &h->ts, h->stage, h->stage_len));
		if (keel_res(t) < 0)
			KEEL_ROUTINE_RETURN(r, t, keel_res(t));
		h->stage_len = 0;
	}
	if (h->stage_len) {
		KEEL_AWAIT_CALL(
		    r, keel_tls_send(t, &h->ts, h->stage, h->stage_len));
		if (keel_res(t) < 0)
			KEEL_ROUTINE_RETURN(r, t, keel_res(t));
	}
	KEEL_ROUTINE_RETURN(r, t, 0);
}

int keel__http_tls_close(struct keel_task *t, struct keel__http_conn *c)
{
	struct keel__https *h = https_of(c);
	struct keel_routine *r = &h->r_close;

	KEEL_BEGIN(r);
	/* The task may be cancelled (the drain, a timeout): its awaits
	 * would end at once, so close_notify goes out under a shield. */
	h->shielded = !keel_shield_begin(t, &h->shield, NS_PER_S);
	KEEL_AWAIT_CALL(r, keel_tls_shutdown(t, &h->ts));
	if (h->shielded)
		keel_shield_end(t, &h->shield);
	h->shielded = false;
	KEEL_ROUTINE_RETURN(r, t, keel_res(t));
}

void keel__http_tls_fini(struct keel__http_conn *c)
{
	struct keel__https *h = https_of(c);

	if (h->open)
		keel_tls_stream_close(&h->ts);
	h->open = false;
	keel_tls_free(h->tls);
	h->tls = NULL;
	free(h->in);
	h->in = NULL;
	h->c.buf.len = 0;
}

/* ---- for files.c (which sees the exchange only) ------------------------- */

bool keel__http_is_tls(const struct keel_http_exchange *x)
{
	return x->c->flags & KEEL__HTTP_C_TLS;
}

int keel__http_x_tls_sendv(struct keel_task *t, struct keel_http_exchange *x,
			   const struct iovec *iov, unsigned iovcnt)
{
	return keel__http_tls_sendv(t, x->c, iov, iovcnt);
}

int keel__http_x_tls_sendfile(struct keel_task *t, struct keel_http_exchange *x,
			      const void *head, size_t head_len, int fd,
			      uint64_t off, uint64_t len)
{
	return keel__http_tls_sendfile(t, x->c, head, head_len, fd, off, len);
}
