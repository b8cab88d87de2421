/* SPDX-License-Identifier: MIT */
/*
 * keel/io.h: ring operations, awaited from a task.
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
 */
#ifndef KEEL_IO_H
#define KEEL_IO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>

#ifdef __cplusplus
extern "C" {
#endif

struct keel_task;
struct statx;

/* Offset meaning "the file's current position" for read/write. */
#define KEEL_OFF_CURRENT ((uint64_t)-1)

/*
 * Give the next op this task starts (and only that one) a deadline `ns`
 * from now, as a linked timeout. If it expires, the op is cancelled and its
 * result is -ETIMEDOUT (or the op's own result if it completed first).
 */
void keel_op_timeout(struct keel_task *t, uint64_t ns);

/* A no-op through the ring; result 0. */
int keel_nop(struct keel_task *t);

/* read/write at `off` (or KEEL_OFF_CURRENT); result: bytes or -errno. */
int keel_read(struct keel_task *t, int fd, void *buf, unsigned len,
	      uint64_t off);
int keel_write(struct keel_task *t, int fd, const void *buf, unsigned len,
	       uint64_t off);
int keel_readv(struct keel_task *t, int fd, const struct iovec *iov,
	       unsigned iovcnt, uint64_t off);
int keel_writev(struct keel_task *t, int fd, const struct iovec *iov,
		unsigned iovcnt, uint64_t off);

/* openat(2); result: the new fd or -errno. */
int keel_openat(struct keel_task *t, int dfd, const char *path, int flags,
		mode_t mode);

/*
 * Close `fd`: first cancels every op in flight on it (so a reused fd number
 * never receives a stale op; their owners see -ECANCELED), then closes it.
 * It runs under a cancelled token too, so cleanup can always close.
 * Result: 0 or -errno.
 */
int keel_close(struct keel_task *t, int fd);

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
static inline bool keel_fd_is_fixed(int fd)
{
	return fd >= 0 && (fd & KEEL_FIXED_FD_BIT);
}

/* fsync(2); flags: 0 or IORING_FSYNC_DATASYNC. */
int keel_fsync(struct keel_task *t, int fd, unsigned flags);

/* statx(2) into *out. */
int keel_statx(struct keel_task *t, int dfd, const char *path, int flags,
	       unsigned mask, struct statx *out);

/* socket(2) through the ring; result: the fd or -errno. */
int keel_socket(struct keel_task *t, int domain, int type, int protocol);

/* accept4(2); addr/addrlen may be NULL. Result: the new fd or -errno. */
int keel_accept(struct keel_task *t, int fd, struct sockaddr *addr,
		socklen_t *addrlen, int flags);

/* connect(2); result: 0 or -errno. */
int keel_connect(struct keel_task *t, int fd, const struct sockaddr *addr,
		 socklen_t addrlen);

/* recv(2)/send(2); result: bytes (0 = peer closed, for recv) or -errno. */
int keel_recv(struct keel_task *t, int fd, void *buf, size_t len, int flags);
int keel_send(struct keel_task *t, int fd, const void *buf, size_t len,
	      int flags);

/*
 * Send all `len` bytes, resubmitting short sends without waking the task.
 * Result: `len`, or -errno (bytes may have been sent before the error).
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
 */
int keel_send_zc(struct keel_task *t, int fd, const void *buf, size_t len,
		 int flags);
void keel_loop_set_zc_threshold(struct keel_loop *loop, size_t bytes);

/*
 * Send every byte of `msg`'s iovecs with sendmsg(2) (a batch of small
 * writes in one request), resubmitting short sends; zero-copy from the
 * threshold like keel_send_zc(). `msg` and its iovecs must stay valid until
 * the op completes; on a short send keel advances msg_iov/msg_iovlen and
 * the first iovec in place. Result: the total, or -errno.
 */
int keel_sendmsg_all(struct keel_task *t, int fd, struct msghdr *msg,
		     int flags);

/*
 * splice(2) / tee(2): move up to `len` bytes between a pipe and another fd
 * inside the kernel (off_* = -1 for no offset, as for sockets and pipes).
 * Result: bytes moved, 0 at end of input, or -errno.
 */
int keel_splice(struct keel_task *t, int fd_in, int64_t off_in, int fd_out,
		int64_t off_out, unsigned len, unsigned flags);
int keel_tee(struct keel_task *t, int fd_in, int fd_out, unsigned len,
	     unsigned flags);

#ifdef __cplusplus
}
#endif
#endif
