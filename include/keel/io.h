/* SPDX-License-Identifier: MIT */
/*
 * keel/io.h: operations on the ring (files, sockets, splice, deadlines),
 * provided-buffer rings with multishot recv, recvmsg and accept streams,
 * and the socket helpers (TCP, UDP, Unix).
 */
#ifndef KEEL_IO_H
#define KEEL_IO_H

#include <keel/loop.h>
#include <keel/task.h> /* struct keel__link */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- io ---- */
/*
 * ring operations, awaited from a task.
 *
 * Each op queues one request on the task's ring and returns KEEL_PENDING
 * (the task is woken with the result) or KEEL_READY (the result is known at
 * once, e.g. an error). Always use them inside KEEL_AWAIT; afterwards
 * keel_res(t) is the op's result: the kernel's cqe->res (a count, or a
 * negative errno), never errno.
 *
 * Ownership, for every op: buffers, paths, iovecs, sockaddrs and output
 * structs handed to an op belong to the kernel until the op's result is
 * delivered. Keep them in the task's frame: a frame outlives its task until
 * the kernel has returned every op the task started (an exited task with ops
 * in flight is a zombie; its ops are cancelled and its frame freed after the
 * last completion).
 *
 * SIGPIPE: keel never touches its disposition. keel_send, send_all,
 * send_zc and sendmsg_all never raise it: io_uring's send ops add
 * MSG_NOSIGNAL themselves, so a peer that is gone gives -EPIPE (passing
 * MSG_NOSIGNAL too, as the examples do, is harmless and keeps the code
 * right if it moves to send(2)). splice and tee never raise it either (a
 * gone reader is -EPIPE: io_uring runs them on kernel workers, the epoll
 * backend blocks the signal around them). keel_write/writev into a socket
 * or pipe whose reader is gone raise SIGPIPE as write(2) does, which kills
 * the process unless it ignores the signal: use keel_send on sockets, or
 * signal(SIGPIPE, SIG_IGN) once at start.
 */
struct keel_task;
struct statx;

/* Offset meaning "the file's current position" for read/write. */
#define KEEL_OFF_CURRENT ((uint64_t)-1)

/*
 * Give the next op this task starts (and only that one) a deadline `ns`
 * from now, as a linked timeout. If it expires, the op is cancelled and its
 * result is -ETIMEDOUT (or the op's own result if it completed first).
 * Call it right before the KEEL_AWAIT it is for: it is taken by the first
 * of these the task starts after it in the same step, and dropped when the
 * step returns (it never carries over to a later step):
 * - every op of this header that goes to the ring (nop, read/write(v),
 *   read/write_fixed, openat, close, fsync, statx, socket, accept,
 *   connect, recv, send, splice, tee);
 * - keel_send_all, keel_send_zc, keel_sendmsg_all: one deadline for the
 *   whole send, short sends' resubmissions included (some bytes may have
 *   gone when it expires);
 * - keel_sleep/keel_sleep_until (keel/loop.h): the earlier deadline wins,
 *   and the result is -ETIMEDOUT if it was this one.
 * - keel_resolve: the earlier of it and the request's deadline wins.
 * One of these that ends at once without reaching the kernel (under a
 * cancelled token, a zero-length send, no room in the SQ) takes it all the
 * same and drops it: it never moves on to a later op.
 * Other awaits do not take it (recv/accept streams' keel_recv_next and
 * keel_accept_next, joins, mailboxes and keel/sync.h, keel_blocking): it
 * would stay pending for the next op of that step. For those, and for a
 * deadline over several awaits, use a token deadline
 * (keel_token_set_timeout, keel/task.h).
 * Ownership: nothing changes hands.
 */
void keel_op_timeout(struct keel_task *t, uint64_t ns);

/*
 * A no-op through the ring; result 0.
 * Ownership: nothing changes hands.
 */
int keel_nop(struct keel_task *t);

/*
 * read/write at `off` (or KEEL_OFF_CURRENT); result: bytes or -errno.
 * Ownership: `buf` (or `iov` and its buffers) belongs to the kernel until
 * the op's result is delivered.
 */
int keel_read(struct keel_task *t, int fd, void *buf, unsigned len,
	      uint64_t off);
int keel_write(struct keel_task *t, int fd, const void *buf, unsigned len,
	       uint64_t off);
int keel_readv(struct keel_task *t, int fd, const struct iovec *iov,
	       unsigned iovcnt, uint64_t off);
int keel_writev(struct keel_task *t, int fd, const struct iovec *iov,
		unsigned iovcnt, uint64_t off);

/*
 * Registered (fixed) buffers for file I/O, as liburing's
 * io_uring_register_buffers() and tokio-uring's FixedBufRegistry: the
 * kernel pins the `n` buffers of `iov` once, and keel_read_fixed() /
 * keel_write_fixed() into or from buffer `buf_index` then skip the per-op
 * page pinning and user-space access: measured, some 5% of the CPU of a
 * page-cached 4 KiB read, 8-12% with O_DIRECT at depth 8 (the figures and
 * how: keel_buffers_register(3)).
 *
 * keel_buffers_register(): from the loop's thread, once (one table per
 * loop; unregister to change it). Returns 0 or a negative errno: -EINVAL
 * (no iovecs, more than 16384, a NULL base, a length of 0 or above 1 GiB),
 * -EBUSY (a table is registered), -ENOMEM (or the kernel's -ENOMEM: the
 * memlock limit, RLIMIT_MEMLOCK, without CAP_IPC_LOCK), -EFAULT (memory
 * the kernel cannot pin), -EACCES (a restricted ring without "files"),
 * -EEXIST (not the loop's thread).
 * keel_buffers_unregister(): 0, -ENXIO (none registered), -EBUSY (a fixed
 * op is in flight: await it first).
 * Ownership: the buffers stay the caller's memory and must stay mapped
 * until keel_buffers_unregister() returns 0 or the loop is destroyed; the
 * loop keeps a copy of `iov` itself.
 */
int keel_buffers_register(struct keel_loop *loop, const struct iovec *iov,
			  unsigned n);
int keel_buffers_unregister(struct keel_loop *loop);

/*
 * keel_read()/keel_write() through registered buffer `buf_index`
 * (IORING_OP_READ_FIXED/WRITE_FIXED): `buf` .. `buf` + `len` must lie
 * inside it. Result: bytes or -errno; checked before the op is queued:
 * -EINVAL (no buffer `buf_index` registered), -EFAULT (outside it).
 * Ownership: as keel_read(): `buf` belongs to the kernel until the result
 * is delivered.
 */
int keel_read_fixed(struct keel_task *t, int fd, void *buf, unsigned len,
		    uint64_t off, unsigned buf_index);
int keel_write_fixed(struct keel_task *t, int fd, const void *buf, unsigned len,
		     uint64_t off, unsigned buf_index);

/*
 * openat(2); result: the new fd or -errno.
 * Ownership: `path` belongs to the kernel until the result is delivered; the
 * caller owns the new fd.
 */
int keel_openat(struct keel_task *t, int dfd, const char *path, int flags,
		mode_t mode);

/*
 * Close `fd`: first cancels every op in flight on it (so a reused fd number
 * never receives a stale op; their owners see -ECANCELED), then closes it.
 * It runs under a cancelled token too, so cleanup can always close.
 * Result: 0 or -errno.
 * Ownership: on any result but -EAGAIN or -ENOMEM (nothing was submitted),
 * `fd` is closed: do not use it again.
 */
int keel_close(struct keel_task *t, int fd);

/*
 * keel_close() for code that runs without a task of the loop, such as a
 * keel_hibernate() callback: the same cancel and close are queued on
 * `loop`'s ring (from its thread), and nothing waits for them. Returns 0,
 * -EBADF (fd < 0), or for a direct descriptor, which only the ring can
 * release, -EAGAIN (the SQ stayed full) or -EACCES (a restricted ring
 * refuses ASYNC_CANCEL or CLOSE): its slot then stays taken. A plain
 * descriptor is closed at once with close(2) in those cases.
 * Ownership: `fd` is the loop's from the call on, whatever the result
 * but -EBADF.
 */
int keel_close_detached(struct keel_loop *loop, int fd);

/*
 * Registered (direct) descriptors: a socket accepted with
 * KEEL_ACCEPT_DIRECT lives in the ring's file table, not the process's,
 * and keel hands it out as KEEL_FIXED_FD(index). Every keel op takes it
 * where it takes an fd (the kernel skips the per-op file lookup and its
 * reference count); keel_close() releases the slot. Plain system calls
 * (setsockopt, getpeername, close) do not know it: set socket options on
 * the listening socket, whose accepted sockets inherit them.
 */
#define KEEL_FIXED_FD_BIT    0x40000000
#define KEEL_FIXED_FD(index) ((int)(KEEL_FIXED_FD_BIT | (unsigned)(index)))
/* Ownership: nothing changes hands. */
static inline bool keel_fd_is_fixed(int fd)
{
	return fd >= 0 && (fd & KEEL_FIXED_FD_BIT);
}

/*
 * fsync(2); flags: 0 or IORING_FSYNC_DATASYNC.
 * Ownership: nothing changes hands; `fd` stays the caller's.
 */
int keel_fsync(struct keel_task *t, int fd, unsigned flags);

/*
 * statx(2) into *out.
 * Ownership: `path` and `out` belong to the kernel until the result is
 * delivered.
 */
int keel_statx(struct keel_task *t, int dfd, const char *path, int flags,
	       unsigned mask, struct statx *out);

/*
 * socket(2) through the ring; result: the fd or -errno.
 * Ownership: the caller owns the new fd.
 */
int keel_socket(struct keel_task *t, int domain, int type, int protocol);

/*
 * accept4(2); addr/addrlen may be NULL. Result: the new fd (the caller owns
 * it) or -errno. Transient errors, after which the listener is fine: retry
 * at once on -ECONNABORTED, -EINTR, -EAGAIN (and, as accept(2) says, on
 * -ENETDOWN, -EPROTO, -ENOPROTOOPT, -EHOSTDOWN, -ENONET, -EHOSTUNREACH,
 * -EOPNOTSUPP, -ENETUNREACH); on -EMFILE, -ENFILE, -ENOBUFS, -ENOMEM retry
 * after a pause, or the task spins. An accept stream does all of that.
 */
int keel_accept(struct keel_task *t, int fd, struct sockaddr *addr,
		socklen_t *addrlen, int flags);

/*
 * connect(2); result: 0 or -errno.
 * Ownership: `addr` belongs to the kernel until the result is delivered;
 * `fd` stays the caller's.
 */
int keel_connect(struct keel_task *t, int fd, const struct sockaddr *addr,
		 socklen_t addrlen);

/*
 * recv(2)/send(2); result: bytes (0 = peer closed, for recv) or -errno.
 * Ownership: `buf` belongs to the kernel until the op's result is delivered.
 */
int keel_recv(struct keel_task *t, int fd, void *buf, size_t len, int flags);
int keel_send(struct keel_task *t, int fd, const void *buf, size_t len,
	      int flags);

/*
 * Send all `len` bytes, resubmitting short sends without waking the task.
 * Result: `len`, or -errno (bytes may have been sent before the error).
 * Ownership: `buf` belongs to the kernel until the result is delivered
 * (every resubmission included).
 */
int keel_send_all(struct keel_task *t, int fd, const void *buf, size_t len,
		  int flags);

/*
 * keel_send_all() with zero-copy for large sends: from the loop's
 * threshold (keel_loop_set_zc_threshold(), default 16 KiB) and when the
 * kernel has SEND_ZC, the kernel sends straight from `buf`; the op
 * completes only when the kernel's notification says it no longer reads
 * it (so `buf` may be reused after the await, as with a copy). Below the
 * threshold, or without SEND_ZC, it copies. Over loopback the kernel copies
 * anyway (counted as zc_copied in the loop's stats).
 * Ownership: `buf` belongs to the kernel until the result is delivered
 * (after the kernel's notification).
 */
int keel_send_zc(struct keel_task *t, int fd, const void *buf, size_t len,
		 int flags);
/* Ownership: nothing changes hands. */
void keel_loop_set_zc_threshold(struct keel_loop *loop, size_t bytes);

/*
 * Send every byte of `msg`'s iovecs with sendmsg(2) (a batch of small
 * writes in one request), resubmitting short sends; zero-copy from the
 * threshold like keel_send_zc(). `msg` and its iovecs must stay valid until
 * the op completes; on a short send keel advances msg_iov/msg_iovlen and
 * the first iovec in place. Result: the total, or -errno.
 * Ownership: `msg`, its iovecs and buffers belong to the kernel (and keel,
 * which edits them) until the result is delivered.
 */
int keel_sendmsg_all(struct keel_task *t, int fd, struct msghdr *msg,
		     int flags);

/*
 * recvmsg(2) / sendmsg(2), once each: one datagram with its address (a
 * UDP or Unix datagram socket), or one read/write of a stream socket.
 * keel_recvmsg fills msg->msg_name (msg_namelen is set to the address's
 * length), the iovecs and msg_flags (MSG_TRUNC: the datagram was longer
 * than the iovecs; pass MSG_TRUNC in `flags` to get its full length as the
 * result). keel_sendmsg sends to msg->msg_name (NULL on a connected
 * socket); a datagram goes whole or not at all. Result: bytes or -errno;
 * -EOPNOTSUPP on a backend without the op (the simulated kernel, keel/sim.h,
 * has no datagram sockets).
 * Ownership: `msg`, its name, iovecs, buffers and control data belong to
 * the kernel until the result is delivered: keep them in the task's frame.
 */
int keel_recvmsg(struct keel_task *t, int fd, struct msghdr *msg, int flags);
int keel_sendmsg(struct keel_task *t, int fd, const struct msghdr *msg,
		 int flags);

/*
 * shutdown(2) through the ring: SHUT_RD, SHUT_WR (send a FIN after what is
 * queued; the peer's recv gets 0) or SHUT_RDWR. Result: 0 or -errno.
 * Ownership: nothing changes hands; `fd` stays the caller's (close it).
 */
int keel_shutdown(struct keel_task *t, int fd, int how);

/*
 * splice(2) / tee(2): move up to `len` bytes between a pipe and another fd
 * inside the kernel (off_* = -1 for no offset, as for sockets and pipes).
 * Result: bytes moved, 0 at end of input, or -errno.
 * Ownership: the fds stay the caller's.
 */
int keel_splice(struct keel_task *t, int fd_in, int64_t off_in, int fd_out,
		int64_t off_out, unsigned len, unsigned flags);
int keel_tee(struct keel_task *t, int fd_in, int fd_out, unsigned len,
	     unsigned flags);

/*
 * Await readiness of `fd` for `events` (POLLIN, POLLOUT, ...: poll(2)'s
 * bits), one IORING_OP_POLL_ADD: for a library that drives someone else's
 * socket (a client library's event-loop adapter) and must only learn when
 * to call it. Result: the ready events (POLLERR and POLLHUP may come
 * unasked), or -errno. The epoll backend waits for one of POLLIN and
 * POLLOUT at a time, as its other ops do.
 * Ownership: nothing changes hands; `fd` stays the caller's.
 */
int keel_poll(struct keel_task *t, int fd, unsigned events);

/* ---- buf ---- */
/*
 * the fast network path: provided-buffer rings, multishot recv
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
 * Ownership: the loop owns the ring (keel_loop_destroy() frees it);
 * keel_bufring_destroy() frees it earlier.
 */
int keel_bufring_create(struct keel_loop *loop,
			const struct keel_bufring_opts *opts,
			struct keel_bufring **out);

/*
 * Unregister and free a ring. -EBUSY while a task holds one of its buffers
 * or a stream uses it (nothing is freed then); keel_loop_destroy() frees
 * the rings left.
 * Ownership: on 0, `ring` is freed; on -EBUSY nothing changed.
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

/* Ownership: a copy into the caller's `out`. */
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
 * lent and the kernel is done with it). Safe on an empty keel_buf.
 * Ownership: the buffer is the ring's again: `buf->data` must not be read
 * after this.
 */
void keel_buf_release(struct keel_buf *buf);

/* ---- recv streams --------------------------------------------------- */

/* keel_recv_stream_open() flags */
#define KEEL_RECV_BUNDLE 0x1u /* one CQE for several buffers (6.10+) */
/* When the stream goes idle (nothing received for one to two of the
 * loop's idle sweeps, 250-500 ms, with nothing queued), keel_recv_next()
 * returns -EAGAIN instead of waiting on: see keel_recv_next(). */
#define KEEL_RECV_IDLE_RETURN 0x2u

/* What recv and accept streams share (private; io/stream.c). */
struct keel__stream {
	struct keel_task *task;
	struct keel__chunk *tail; /* received, not yet taken: tail->next is
				   * the first (io/stream.c) */
	void *out;		  /* where a waiting take goes */
	uint32_t op; /* ledger index + 1 while open (UINT32_MAX: parked,
		      * holding none), else 0 */
	int fd;
	int32_t end;	 /* the final result, once known */
	uint32_t queued; /* items received, not yet taken */
	uint16_t state;	 /* private bits */
	uint16_t limit;	 /* recv: pause receiving at this many queued */
	/* recv: its buffer ring, as the ring's index in the loop (its bgid):
	 * two bytes, not a pointer's eight, in an idle connection's frame */
	uint16_t ring;
	uint8_t flags;
	uint8_t kind; /* its hooks: an index (io/stream.c), not a pointer */
};

struct keel_recv_stream;

/* keel_recv_stream_notify()'s callback: `res` > 0, that many chunks are
 * queued; <= 0, the stream has ended with it (chunks may still be
 * queued before the end). */
typedef void (*keel_recv_notify_fn)(struct keel_recv_stream *s, int res);

/* Lives in the task's frame; fields are private. */
struct keel_recv_stream {
	struct keel__stream base;
	/* The ring's starved streams while it waits for a buffer, its
	 * task's parked streams while it waits on an idle poll. */
	struct keel__link link;
	keel_recv_notify_fn notify; /* keel_recv_stream_notify(), or NULL */
};

/* Chunks a stream queues before it stops receiving (default). */
#define KEEL_RECV_QUEUE_DEFAULT 32

/*
 * Open a stream on socket `fd` for task `t`, receiving into `ring`
 * (a ring of t's loop), and arm it. Returns 0 or a negative errno
 * (-EINVAL: a ring of another loop; -EOPNOTSUPP: no multishot recv
 * (Linux 6.0); -ENOMEM; -EBUSY: `s` holds a stream of t still, open or
 * closed with its request not yet back from the kernel, which comes back
 * within a few turns; the task's cancellation cause).
 * Ownership: `s` is the caller's (in t's frame) and belongs to t; `fd` and
 * `ring` stay the caller's and must outlive the stream.
 */
int keel_recv_stream_open(struct keel_task *t, struct keel_recv_stream *s,
			  int fd, struct keel_bufring *ring, unsigned flags);

/*
 * Await the next chunk into `*out` (a chunk `*out` still holds is released
 * first; a new keel_buf must be zeroed): keel_res() is its length (> 0), 0 at
 * end of file, or a negative errno (the stream's final error, e.g. the
 * task's cancellation cause, -ECONNRESET). Data received before the end is
 * always delivered first. With KEEL_RECV_IDLE_RETURN, -EAGAIN: the stream
 * went idle and stopped receiving (no request in the kernel, nothing
 * queued, nothing lost: the data waits in the socket); the next
 * keel_recv_next() receives again, or the task closes the stream and
 * hands the socket to keel_hibernate(). (The idle sweep needs POLL_ADD
 * and no KEEL_LOOP_NO_IDLE_POLL; without it a stream never goes idle.)
 * Ownership: the chunk in `out` is lent to the task until keel_buf_release()
 * (or the next keel_recv_next into it).
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
 * Ownership: nothing changes hands.
 */
int keel_recv_stream_set_limit(struct keel_recv_stream *s, unsigned limit);

/*
 * Take a chunk already received, without waiting (to gather several into
 * one sendmsg). Returns its length, or -EAGAIN when none is queued.
 * Ownership: as keel_recv_next(): the chunk is lent until
 * keel_buf_release().
 */
int keel_recv_try(struct keel_recv_stream *s, struct keel_buf *out);

/*
 * Be told when a chunk or the end arrives while the owning task is not
 * waiting in keel_recv_next() (it is awaiting something else): `fn` is
 * called on the loop's thread, from the loop's completion handling, with
 * the stream (container_of finds the frame around it) and what happened
 * (see keel_recv_notify_fn; the end may be reported more than once). It
 * must not await, close the stream or cancel its owner; it may take
 * chunks with keel_recv_try() (from any task of the loop, e.g. a helper
 * the owner started), set an event, cancel another task's token. A task
 * waiting in keel_recv_next() gets the chunk itself and `fn` is not
 * called. NULL turns it off; keel_recv_stream_open() starts with none.
 * Ownership: nothing changes hands; `fn` must stay callable while set.
 */
void keel_recv_stream_notify(struct keel_recv_stream *s,
			     keel_recv_notify_fn fn);

/*
 * The socket the stream was opened on (after it closed too), so that a
 * frame need not keep it twice. Only meaningful after a successful
 * keel_recv_stream_open() on `s`. Inline: a connection's every send
 * reads it.
 * Ownership: reads the stream; nothing changes hands.
 */
static inline int keel_recv_stream_fd(const struct keel_recv_stream *s)
{
	return s->base.fd;
}

/* Close the stream: cancel the recv, give back the queued buffers. The
 * socket itself stays open. Safe to call twice.
 * Ownership: buffers queued in the stream go back to the ring; chunks
 * already taken stay lent until released.
 */
void keel_recv_stream_close(struct keel_recv_stream *s);

/* ---- hibernation ---------------------------------------------------- */

/*
 * An idle connection without a task: keel_hibernate() hands socket `fd` to
 * the loop, which watches it with one single-shot poll (POLLIN; errors
 * and hang-ups always) and keeps only a 32-byte record of it (in a dense
 * table, no allocation of its own); the task that held the connection
 * can then end, and its frame and task slot go. When `fd` is readable
 * (data, the peer's end of file or reset), `fn` runs on the loop's
 * thread with the poll's events (> 0), and typically spawns a fresh task
 * for the connection. (Erlang's hibernate, for a socket.)
 *
 * `fn`'s `res`: > 0, the ready events (POLLIN, POLLHUP, POLLERR, ...);
 * -ECANCELED, keel_hibernate_cancel() or the loop is being destroyed
 * (keel_loop_destroy(): spawn nothing then, close the socket unless it
 * is a direct descriptor, which goes with the loop's ring); another
 * negative errno, the poll failed (-EBADF, ...). `fn` runs once per
 * keel_hibernate(), from the loop's completion handling (or from
 * keel_loop_destroy()): it may spawn tasks, hibernate a socket again,
 * close one; it must not run or step the loop.
 *
 * A hibernated socket does not keep keel_loop_run() going (its owner, a
 * server's acceptor, does), but it wakes a loop that waits.
 */
typedef void (*keel_hibernate_fn)(struct keel_loop *loop, int fd, int res,
				  void *arg);

/*
 * Hibernate socket `fd` (a direct descriptor too) on `loop`, from the
 * loop's thread. Returns 0 and, if `id` is not NULL, the hibernation's
 * id (never 0) for keel_hibernate_cancel(); or -EINVAL (fd < 0, fn
 * NULL), -EOPNOTSUPP (the ring runs no POLL_ADD), -EACCES (restricted),
 * -ECANCELED (the loop is being destroyed), -ENOMEM, -EAGAIN (the SQ
 * stayed full).
 * Ownership: `fd` is the loop's until `fn` runs, then `fn`'s (it closes
 * it or gives it to a task); `arg` stays the caller's and must stay
 * valid until then. Nothing else of the caller's is held.
 */
int keel_hibernate(struct keel_loop *loop, int fd, keel_hibernate_fn fn,
		   void *arg, uint64_t *id);

/*
 * Wake hibernation `id` early: its poll is cancelled and its `fn` runs
 * with -ECANCELED (from the loop's completion handling, not from here),
 * even if the socket became readable meanwhile. Returns 0 (also when a
 * cancel is already under way), -ENOENT (no such hibernation: its `fn`
 * has run), -ENOMEM (with the SQ full, no memory to queue the cancel for
 * the next enter).
 * Ownership: nothing changes hands here; `fn` gets the socket back.
 */
int keel_hibernate_cancel(struct keel_loop *loop, uint64_t id);

/* ---- datagram streams ----------------------------------------------- */

/*
 * A multishot recvmsg on a datagram socket (UDP, Unix SOCK_DGRAM) into a
 * buffer ring: every datagram lands in one ring buffer with its source
 * address, and the task takes them one by one with keel_recvmsg_next().
 * The ring's life cycle, -ENOBUFS re-arm, backpressure
 * (keel_recv_stream_set_limit(&s->rs, n)) and notify hook are a recv
 * stream's; each buffer holds a 16-byte header and up to
 * sizeof(struct sockaddr_storage) bytes of address before the payload, so
 * a datagram longer than the ring's size minus 144 bytes is truncated
 * (MSG_TRUNC, with its full length reported).
 */
struct keel_recvmsg_stream {
	struct keel_recv_stream rs;
	struct msghdr msg; /* what the kernel reads at each arm (private) */
};

/* A received datagram, lent to the task. */
struct keel_datagram {
	struct keel_buf buf; /* its ring buffer: keel_buf_release(&buf) */
	const void *data;    /* the payload (inside buf) */
	uint32_t len;	     /* payload bytes in `data` */
	uint32_t full_len;   /* the datagram's length as sent */
	const struct sockaddr *addr; /* the source (inside buf), or NULL */
	socklen_t addrlen;
	int flags; /* MSG_TRUNC: longer than the room in the buffer */
};

/*
 * Open a datagram stream on socket `fd` for task `t`, receiving into
 * `ring` (of t's loop, not incremental, at least 256-byte buffers), and
 * arm it. Returns 0 or a negative errno (-EINVAL: a ring of another loop,
 * an incremental ring or small buffers; -EOPNOTSUPP: no multishot recvmsg
 * (Linux 6.0) or a backend without it, such as the simulated kernel;
 * -ENOMEM; -EBUSY, as keel_recv_stream_open(); the task's cancellation
 * cause).
 * Ownership: as keel_recv_stream_open(): `s` is in t's frame and belongs
 * to t; `fd` and `ring` stay the caller's and must outlive the stream.
 */
int keel_recvmsg_stream_open(struct keel_task *t, struct keel_recvmsg_stream *s,
			     int fd, struct keel_bufring *ring, unsigned flags);

/*
 * Await the next datagram into `*out` (one `*out` still holds is released
 * first; a new keel_datagram must be zeroed): keel_res() is its payload
 * length (>= 0: an empty datagram is 0) or a negative errno that ends the
 * stream (the task's cancellation cause, -ESHUTDOWN after shutdown(2) of
 * the receive side, another error of the socket).
 * Ownership: the buffer in out->buf is lent to the task until
 * keel_buf_release(&out->buf) (or the next keel_recvmsg_next into it);
 * out->data and out->addr point into it.
 */
int keel_recvmsg_next(struct keel_task *t, struct keel_recvmsg_stream *s,
		      struct keel_datagram *out);

/* Close the stream: cancel the recvmsg, give back the queued buffers; the
 * socket stays open. Safe to call twice.
 * Ownership: datagrams already taken stay lent until released.
 */
void keel_recvmsg_stream_close(struct keel_recvmsg_stream *s);

/* ---- accept streams ------------------------------------------------- */

/* Lives in the task's frame; fields are private. */
struct keel_accept_stream {
	struct keel__stream base;  /* queues accepted sockets */
	struct keel_timer backoff; /* EMFILE & co: re-arm later */
	uint64_t backoff_ns;
	uint64_t backoffs; /* times accepting paused for lack of fds */
};

/* keel_accept_stream_open() flags */
#define KEEL_ACCEPT_DIRECT                                                     \
	0x1u /* accept into the ring's file table:                             \
	      * sockets are KEEL_FIXED_FD()s (keel/io.h) */

/*
 * Keep one multishot accept armed on listening socket `fd`. When the
 * process runs out of descriptors (EMFILE, ENFILE; with
 * KEEL_ACCEPT_DIRECT, a full file table: ENFILE) or memory (ENOMEM,
 * ENOBUFS), accepting pauses (10 ms, doubling to 1 s) and resumes by
 * itself: never a spin. The transient errors keel_accept() lists
 * (ECONNABORTED, EINTR, EAGAIN and the network errors accept(2) passes on)
 * re-arm at once. The task never sees those; any other error ends the
 * stream and is what keel_accept_next() returns from then on.
 * Accepted sockets are SOCK_CLOEXEC. Returns 0 or a negative errno (with
 * KEEL_ACCEPT_DIRECT: the kernel's error registering the file table;
 * -EBUSY: `s` holds a stream of t still, as keel_recv_stream_open()).
 * Ownership: `s` is the caller's (keep it in t's frame) and belongs to t;
 * `fd` stays the caller's (close it after keel_accept_stream_close).
 */
int keel_accept_stream_open(struct keel_task *t, struct keel_accept_stream *s,
			    int fd, unsigned flags);

/* Await the next accepted socket: keel_res() is its fd (the caller owns
 * it), or the stream's final negative errno. */
int keel_accept_next(struct keel_task *t, struct keel_accept_stream *s);

/* Close the stream (the listening socket stays open); sockets accepted
 * but not taken are closed. Safe to call twice.
 * Ownership: sockets accepted and not taken are closed by keel; those taken
 * are the caller's.
 */
void keel_accept_stream_close(struct keel_accept_stream *s);

/* ---- net ---- */
/*
 * synchronous socket helpers (none of these can block).
 *
 * Creating, binding and configuring a socket never waits, so these are
 * plain calls; the waiting ops (accept, connect, recv, send) are in io.h.
 */
/* keel_tcp_listen() flags */
#define KEEL_NET_REUSEPORT 0x1u /* SO_REUSEPORT: one listener per loop */

/*
 * Parse a numeric IPv4 or IPv6 address ("127.0.0.1", "::1") and a port into
 * *ss. Returns 0 or -EINVAL.
 * Ownership: writes into the caller's `ss` and `len`.
 */
int keel_net_parse_addr(const char *host, uint16_t port,
			struct sockaddr_storage *ss, socklen_t *len);

/*
 * socket + SO_REUSEADDR (+ SO_REUSEPORT) + bind + listen. Returns the
 * listening fd (close-on-exec) or a negative errno.
 * Ownership: the caller owns the listening fd.
 */
int keel_tcp_listen(const char *host, uint16_t port, int backlog,
		    unsigned flags);

/*
 * A UDP socket for `family` (close-on-exec), or a negative errno.
 * Ownership: the caller owns the new fd.
 */
int keel_udp_socket(int family);

/*
 * socket + (SO_REUSEPORT) + bind: a UDP socket on a numeric address
 * ("127.0.0.1", "::1"; port 0 for any, see keel_net_local_port). flags: 0
 * or KEEL_NET_REUSEPORT. Returns the fd (close-on-exec) or a negative
 * errno.
 * Ownership: the caller owns the fd.
 */
int keel_udp_bind(const char *host, uint16_t port, unsigned flags);

/* keel_unix_listen() flags */
#define KEEL_NET_UNLINK_STALE                                                  \
	0x2u /* remove a socket file nothing listens on                        \
	      * (never a live one, never another kind of file) */

/*
 * An AF_UNIX address for connect or bind: a path, or "@name" for Linux's
 * abstract namespace (no file; gone with the last socket). Returns 0,
 * -EINVAL (empty) or -ENAMETOOLONG (more than 107 bytes).
 * Ownership: writes into the caller's `ss` and `len`.
 */
int keel_unix_addr(const char *path, struct sockaddr_storage *ss,
		   socklen_t *len);

/*
 * socket + bind + listen on a Unix stream socket at `path` (or "@name",
 * abstract). With KEEL_NET_UNLINK_STALE, a socket file left behind by a
 * process that is gone is removed first: only if it is a socket and a
 * connect to it is refused; a live listener or any other file gives
 * -EADDRINUSE. Returns the listening fd (close-on-exec) or a negative
 * errno. The caller removes the path when done (unlink(2)).
 * Ownership: the caller owns the fd and the socket file.
 */
int keel_unix_listen(const char *path, int backlog, unsigned flags);

/*
 * The port a bound socket got (for port 0), or a negative errno.
 * Ownership: `fd` stays the caller's.
 */
int keel_net_local_port(int fd);

/*
 * A TCP socket for `family` (close-on-exec), or a negative errno.
 * Ownership: the caller owns the new fd.
 */
int keel_tcp_socket(int family);

/*
 * TCP_NODELAY on; returns 0 or a negative errno.
 * Ownership: `fd` stays the caller's.
 */
int keel_tcp_nodelay(int fd);

/* ---- resolve ---- */
/*
 * host names to addresses, off the loop.
 *
 * keel_resolve() is an await: getaddrinfo(3) runs on the blocking pool
 * (keel_blocking, keel/loop.h) and the task gets the addresses in its own
 * request. A numeric host ("10.0.0.7", "::1") with a numeric port or none
 * is answered at once on the loop's thread, without the pool.
 *
 * getaddrinfo cannot be stopped, but the await does not wait for it: a
 * cancel (the task's token, keel_task_cancel, a kill) or the deadline ends
 * it at once with -ECANCELED or -ETIMEDOUT. The lookup goes on with its
 * own copy of the question on the heap, occupies its pool thread until
 * getaddrinfo returns (the resolver's own timeouts, resolv.conf(5)), and
 * is then freed without touching the task, its frame or its loop, which
 * may be gone by then. A lookup still queued is dropped.
 * On the simulated kernel (keel/sim.h) the deadline is virtual: a name
 * times out long before the real lookup answers; use numeric addresses.
 */
#define KEEL_RESOLVE_MAX 8 /* addresses kept; more are left out */
/* The deadline of a request whose timeout_ns is 0. */
#define KEEL_RESOLVE_TIMEOUT_DEFAULT_NS (5ull * 1000 * 1000 * 1000)

struct keel_resolve_req {
	/* The question (read during the keel_resolve() call only). */
	const char *host;    /* a name or a numeric address; required */
	const char *service; /* a port ("5432") or a service name; NULL: 0 */
	int family;	     /* AF_UNSPEC (0), AF_INET or AF_INET6 */
	int socktype;	     /* 0: SOCK_STREAM */
	int flags;	     /* more AI_* flags (AI_ADDRCONFIG...); usually 0 */
	uint64_t timeout_ns; /* 0: KEEL_RESOLVE_TIMEOUT_DEFAULT_NS */
	/* The answer: `count` addresses in getaddrinfo's order, each once,
	 * with the port; gai_error is getaddrinfo's EAI_* code when it
	 * failed, else 0 (for keel_resolve_strerror). */
	unsigned count;
	int gai_error;
	socklen_t lens[KEEL_RESOLVE_MAX];
	struct sockaddr_storage addrs[KEEL_RESOLVE_MAX];
};

/*
 * Resolve req->host and req->service into req->addrs. keel_res is the
 * number of addresses (> 0) or a negative errno:
 *   -ENOENT      the name does not resolve, or has no address of the
 *                family (EAI_NONAME, EAI_NODATA, EAI_ADDRFAMILY)
 *   -EAGAIN      the name server failed for now or did not answer in its
 *                own time (EAI_AGAIN), or the blocking pool's queue is full
 *                (gai_error 0): try later
 *   -EIO         the name server failed for good (EAI_FAIL), or another
 *                getaddrinfo error
 *   -EINVAL      no host, or an unknown service or port (EAI_SERVICE)
 *   -EAFNOSUPPORT a family other than AF_UNSPEC, AF_INET, AF_INET6
 *   -ESOCKTNOSUPPORT  a socktype getaddrinfo refuses (EAI_SOCKTYPE)
 *   -ENOMEM      out of memory (EAI_MEMORY too)
 *   -ETIMEDOUT   the deadline passed (or a keel_op_timeout() before it,
 *                or the token's deadline)
 *   -ECANCELED   the task was cancelled
 *   other        EAI_SYSTEM: getaddrinfo's errno, negated
 * keel_op_timeout() applies to it; the earlier deadline wins.
 * Ownership: `req` belongs to keel until the await returns (keep it in the
 * task's frame); host and service are copied, so they need only live
 * during the call. After the await, nothing of keel touches `req`.
 */
int keel_resolve(struct keel_task *t, struct keel_resolve_req *req);

/*
 * Why keel_resolve() on `req` returned `res`, in a few words for a log
 * line: "name does not resolve (EAI_NONAME)", "timed out". A static
 * string; "ok" for res > 0.
 * Ownership: nothing changes hands; `req` is only read.
 */
const char *keel_resolve_strerror(const struct keel_resolve_req *req, int res);

#ifdef __cplusplus
}
#endif
#endif
