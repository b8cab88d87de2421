/* SPDX-License-Identifier: MIT */
/*
 * keel/buf.h: the fast network path: provided-buffer rings, multishot recv
 * and accept streams.
 *
 * A buffer ring is a pool of equal buffers the kernel picks from when data
 * arrives, so an idle connection holds no buffer at all. A recv stream keeps
 * one multishot recv armed on a socket: every arrival becomes a chunk of a
 * ring buffer, queued in the stream until the task takes it. The task then
 * owns the buffer (a `keel_buf`) until it releases it, typically after
 * sending it on (a zero-copy echo or proxy); released buffers go back to the
 * kernel's ring.
 *
 *	KEEL_AWAIT(t, keel_recv_next(t, &c->rs, &c->buf));
 *	if (keel_res(t) <= 0)
 *		break;			// 0: end of file; < 0: an error
 *	KEEL_AWAIT(t, keel_send_all(t, c->fd, c->buf.data, c->buf.len, 0));
 *	keel_buf_release(&c->buf);
 *
 * What keel does for you:
 * - a multishot op that ends (a CQE without IORING_CQE_F_MORE) is re-armed
 *   on the next keel_recv_next(), or at once when the task is waiting;
 * - an empty ring (-ENOBUFS) loses nothing: the data stays in the socket,
 *   the stream waits for a buffer to come back and re-arms then; the event
 *   is counted (keel_bufring_stats);
 * - recv bundles (one CQE for several buffers, Linux 6.10) and incremental
 *   consumption (a large buffer shared by many small arrivals, Linux 6.12)
 *   are used when asked for and the kernel has them, and silently left out
 *   when it does not (keel_bufring_stats says which are in use);
 * - streams belong to their task: when it exits, aborts or is cancelled,
 *   the op is cancelled, queued buffers go back to the ring and queued
 *   sockets are closed. The frame stays until the kernel's final CQE.
 *
 * Everything here is used on the loop's own thread only.
 */
#ifndef KEEL_BUF_H
#define KEEL_BUF_H

#include <stdbool.h>
#include <stdint.h>

#include <keel/timer.h>

#ifdef __cplusplus
extern "C" {
#endif

struct keel_loop;
struct keel_task;
struct keel_bufring;
struct keel__chunk;

/* keel_bufring_opts.flags */
#define KEEL_BUFRING_INCREMENTAL                                               \
	0x1u /* share buffers between arrivals                                 \
	      * (Linux 6.12+; else plain) */

struct keel_bufring_opts {
	uint32_t count; /* buffers: a power of two, 1..32768 (default 1024) */
	uint32_t size;	/* bytes each, 1..16 MiB (default 4096) */
	unsigned flags;
};

/*
 * Create a buffer ring on `loop` and hand it to the kernel. The buffers'
 * memory is allocated and touched now (it is the loop's, not a
 * connection's). Errors: -EINVAL (bad sizes), -ENOMEM, -ENOSPC (the loop
 * has 65536 rings), or the kernel's error registering it (-EINVAL/-ENOENT
 * before Linux 5.19: no buffer rings there).
 */
int keel_bufring_create(struct keel_loop *loop,
			const struct keel_bufring_opts *opts,
			struct keel_bufring **out);

/*
 * Unregister and free a ring. -EBUSY while a task holds one of its buffers
 * or a stream uses it (nothing is freed then); keel_loop_destroy() frees
 * the rings left.
 */
int keel_bufring_destroy(struct keel_bufring *ring);

struct keel_bufring_stats {
	uint32_t count, size;
	uint32_t in_kernel; /* buffers the kernel may fill now */
	uint32_t lent;	    /* buffers held by tasks (or queued in streams) */
	uint32_t peak_lent;
	bool incremental; /* incremental consumption is in use */
	bool bundles;	  /* the kernel has recv bundles */
	uint64_t chunks;  /* chunks handed out */
	uint64_t enobufs; /* times a stream found the ring empty */
};

void keel_bufring_stats(const struct keel_bufring *ring,
			struct keel_bufring_stats *out);

/*
 * A received chunk lent to a task: `len` bytes at `data`, inside a ring
 * buffer. Pass it to keel_buf_release() when done (after the send that
 * uses it has completed). A zeroed keel_buf holds nothing.
 */
struct keel_buf {
	char *data;
	struct keel_bufring *ring;
	uint32_t len;
	uint16_t bid;
	uint16_t flags;
};

/* Give the buffer back (to the kernel's ring, once no chunk of it is
 * lent and the kernel is done with it). Safe on an empty keel_buf. */
void keel_buf_release(struct keel_buf *buf);

/* ---- recv streams --------------------------------------------------- */

/* keel_recv_stream_open() flags */
#define KEEL_RECV_BUNDLE 0x1u /* one CQE for several buffers (6.10+) */

/* Lives in the task's frame; fields are private. */
struct keel_recv_stream {
	struct keel_task *task;
	struct keel_bufring *ring;
	struct keel__chunk *head, *tail; /* received, not yet taken */
	struct keel_buf *out;		 /* where a waiting take goes */
	struct keel_recv_stream *next_starved;
	uint32_t op; /* ledger index + 1 while open, else 0 */
	int fd;
	int32_t end;	/* the final result, once known */
	uint16_t state; /* private bits */
	uint16_t flags;
	uint16_t queued; /* chunks received, not yet taken */
	uint16_t limit;	 /* pause receiving at this many */
};

/* Chunks a stream queues before it stops receiving (default). */
#define KEEL_RECV_QUEUE_DEFAULT 32

/*
 * Open a stream on socket `fd` for task `t`, receiving into `ring`
 * (a ring of t's loop), and arm it. Returns 0 or a negative errno
 * (-EINVAL: a ring of another loop; -EOPNOTSUPP: no multishot recv
 * (Linux 6.0); -ENOMEM; the task's cancellation cause).
 */
int keel_recv_stream_open(struct keel_task *t, struct keel_recv_stream *s,
			  int fd, struct keel_bufring *ring, unsigned flags);

/*
 * Await the next chunk into `*out` (a chunk `*out` still holds is released
 * first; a new keel_buf must be zeroed): keel_res() is its length (> 0), 0 at
 * end of file, or a negative errno (the stream's final error, e.g. the
 * task's cancellation cause, -ECONNRESET). Data received before the end is
 * always delivered first.
 */
int keel_recv_next(struct keel_task *t, struct keel_recv_stream *s,
		   struct keel_buf *out);

/*
 * Backpressure: a stream that has `limit` chunks (1..4096) received but not
 * taken stops receiving (its multishot recv is cancelled, the data waits in
 * the socket, TCP slows the sender) and resumes when the task has taken
 * half of them. So one fast sender cannot take every buffer of a shared
 * ring (which could deadlock a proxy). Default KEEL_RECV_QUEUE_DEFAULT.
 * Returns 0 or -EINVAL.
 */
int keel_recv_stream_set_limit(struct keel_recv_stream *s, unsigned limit);

/*
 * Take a chunk already received, without waiting (to gather several into
 * one sendmsg). Returns its length, or -EAGAIN when none is queued.
 */
int keel_recv_try(struct keel_recv_stream *s, struct keel_buf *out);

/* Close the stream: cancel the recv, give back the queued buffers. The
 * socket itself stays open. Safe to call twice. */
void keel_recv_stream_close(struct keel_recv_stream *s);

/* ---- accept streams ------------------------------------------------- */

struct keel_accept_stream {
	struct keel_task *task;
	struct keel__chunk *head, *tail; /* accepted sockets, not yet taken */
	struct keel_timer backoff;	 /* EMFILE & co: re-arm later */
	uint64_t backoff_ns;
	uint64_t backoffs; /* times accepting paused for lack of fds */
	uint32_t op;
	int fd;
	int32_t end;
	uint16_t state;
	uint16_t flags;
};

/* keel_accept_stream_open() flags */
#define KEEL_ACCEPT_DIRECT                                                     \
	0x1u /* accept into the ring's file table:                             \
	      * sockets are KEEL_FIXED_FD()s (keel/io.h) */

/*
 * Keep one multishot accept armed on listening socket `fd`. When the
 * process runs out of descriptors (EMFILE, ENFILE; with
 * KEEL_ACCEPT_DIRECT, a full file table: ENFILE) or memory, accepting
 * pauses (10 ms, doubling to 1 s) and resumes by itself: never a spin.
 * Accepted sockets are SOCK_CLOEXEC. Returns 0 or a negative errno (with
 * KEEL_ACCEPT_DIRECT: the kernel's error registering the file table).
 */
int keel_accept_stream_open(struct keel_task *t, struct keel_accept_stream *s,
			    int fd, unsigned flags);

/* Await the next accepted socket: keel_res() is its fd (the caller owns
 * it), or the stream's final negative errno. */
int keel_accept_next(struct keel_task *t, struct keel_accept_stream *s);

/* Close the stream (the listening socket stays open); sockets accepted
 * but not taken are closed. Safe to call twice. */
void keel_accept_stream_close(struct keel_accept_stream *s);

#ifdef __cplusplus
}
#endif
#endif
