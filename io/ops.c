/* SPDX-License-Identifier: MIT */
/*
 * ops.c: the ops a task awaits: one function per io_uring request, each
 * preparing its SQE through the ledger (io/ledger.c), which owns the op
 * until its last CQE. An op that cannot be queued reports its error at once
 * (KEEL_READY with the error in keel_res), never through errno.
 */
#include "io.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/*
 * Begin an op or return its error; binds `sqe` and `op` in the caller.
 * After the slow path's call the task is read back from its op, so that
 * `t` need not be kept across the call (in a register the fast path would
 * save and restore). The slow path's op comes back in a variable of its
 * own: were `op`'s address taken, the fast path too would store it to the
 * stack and load it back.
 */
#define OP_BEGIN(t, opcode, kind)                                              \
	struct keel__op *op;                                                   \
	struct io_uring_sqe *sqe;                                              \
	if (!keel__op_begin((t), (opcode), (kind), &op, &sqe)) {               \
		struct keel__op *slow_op;                                      \
		int begin_step;                                                \
		sqe = keel__op_begin_slow((t), (opcode), (kind), &slow_op,     \
					  &begin_step);                        \
		if (!sqe)                                                      \
			return begin_step;                                     \
		op = slow_op;                                                  \
		(t) = op->task;                                                \
	}

void keel_op_timeout(struct keel_task *t, uint64_t ns)
{
	struct keel__io *io = keel__io_of(t->loop);

	io->timeout_task = t;
	io->timeout_ns = ns;
	io->core.op_slow.why.timeout = 1;
}

int keel_nop(struct keel_task *t)
{
	OP_BEGIN(t, IORING_OP_NOP, KEEL__OP_KERNEL);
	io_uring_prep_nop(sqe);
	return keel__op_commit(t, op, sqe);
}

int keel_read(struct keel_task *t, int fd, void *buf, unsigned len,
	      uint64_t off)
{
	OP_BEGIN(t, IORING_OP_READ, KEEL__OP_KERNEL);
	io_uring_prep_read(sqe, fd, buf, len, off);
	op->fd = fd;
	return keel__op_commit(t, op, sqe);
}

/*
 * keel_close() without a task (a hibernation's callback, a teardown): the
 * same two linked requests, helper requests whose CQEs are only counted.
 * Where they cannot go out, a plain descriptor is closed at once (an op
 * still in flight on it then keeps the socket until it ends); a direct
 * one cannot be, so its slot stays taken.
 */
int keel_close_detached(struct keel_loop *loop, int fd)
{
	struct keel__io *io = keel__io_of(loop);
	bool fixed = keel_fd_is_fixed(fd);
	struct io_uring_sqe *cancel = NULL, *sqe = NULL;
	int err = -EAGAIN;

	if (fd < 0)
		return -EBADF;
	/* The loop is going: its ops are cancelled, and its ring's file
	 * table, which holds the direct descriptors, goes with it. */
	if (io->closing) {
		err = 0;
		goto now;
	}
	if (io->restricted && (!keel__op_allowed(io, IORING_OP_ASYNC_CANCEL) ||
			       !keel__op_allowed(io, IORING_OP_CLOSE))) {
		err = keel__restrict_refuse(io);
		goto now;
	}
	keel__io_reserve(io, 2);
	cancel = keel__io_sqe(io);
	if (cancel)
		sqe = keel__io_sqe(io);
	if (!sqe) {
		if (cancel) { /* a lone helper request that does nothing */
			io_uring_prep_nop(cancel);
			io_uring_sqe_set_data64(cancel, KEEL__UD_INTERNAL);
		}
		goto now;
	}
	io_uring_prep_cancel_fd(cancel, fd & ~KEEL_FIXED_FD_BIT,
				IORING_ASYNC_CANCEL_ALL |
				    (fixed ? IORING_ASYNC_CANCEL_FD_FIXED : 0));
	io_uring_sqe_set_data64(cancel, KEEL__UD_INTERNAL);
	cancel->flags |= IOSQE_IO_HARDLINK;
	if (fixed)
		io_uring_prep_close_direct(sqe,
					   (unsigned)fd & ~KEEL_FIXED_FD_BIT);
	else
		io_uring_prep_close(sqe, fd);
	io_uring_sqe_set_data64(sqe, KEEL__UD_INTERNAL);
	return 0;
now:
	if (fixed)
		return err;
	close(fd);
	return 0;
}

int keel_write(struct keel_task *t, int fd, const void *buf, unsigned len,
	       uint64_t off)
{
	OP_BEGIN(t, IORING_OP_WRITE, KEEL__OP_KERNEL);
	io_uring_prep_write(sqe, fd, buf, len, off);
	op->fd = fd;
	return keel__op_commit(t, op, sqe);
}

int keel_readv(struct keel_task *t, int fd, const struct iovec *iov,
	       unsigned iovcnt, uint64_t off)
{
	OP_BEGIN(t, IORING_OP_READV, KEEL__OP_KERNEL);
	io_uring_prep_readv(sqe, fd, iov, iovcnt, off);
	op->fd = fd;
	return keel__op_commit(t, op, sqe);
}

int keel_writev(struct keel_task *t, int fd, const struct iovec *iov,
		unsigned iovcnt, uint64_t off)
{
	OP_BEGIN(t, IORING_OP_WRITEV, KEEL__OP_KERNEL);
	io_uring_prep_writev(sqe, fd, iov, iovcnt, off);
	op->fd = fd;
	return keel__op_commit(t, op, sqe);
}

int keel_read_fixed(struct keel_task *t, int fd, void *buf, unsigned len,
		    uint64_t off, unsigned buf_index)
{
	int err = keel__fixedbufs_check(&keel__io_of(t->loop)->fixedbufs,
					buf_index, (uintptr_t)buf, len);

	if (__builtin_expect(err, 0))
		return keel__fixed_refuse(t, err);
	OP_BEGIN(t, IORING_OP_READ_FIXED, KEEL__OP_KERNEL);
	io_uring_prep_read_fixed(sqe, fd, buf, len, off, (int)buf_index);
	op->fd = fd;
	return keel__op_commit(t, op, sqe);
}

int keel_write_fixed(struct keel_task *t, int fd, const void *buf, unsigned len,
		     uint64_t off, unsigned buf_index)
{
	int err = keel__fixedbufs_check(&keel__io_of(t->loop)->fixedbufs,
					buf_index, (uintptr_t)buf, len);

	if (__builtin_expect(err, 0))
		return keel__fixed_refuse(t, err);
	OP_BEGIN(t, IORING_OP_WRITE_FIXED, KEEL__OP_KERNEL);
	io_uring_prep_write_fixed(sqe, fd, buf, len, off, (int)buf_index);
	op->fd = fd;
	return keel__op_commit(t, op, sqe);
}

int keel_openat(struct keel_task *t, int dfd, const char *path, int flags,
		mode_t mode)
{
	OP_BEGIN(t, IORING_OP_OPENAT, KEEL__OP_KERNEL);
	io_uring_prep_openat(sqe, dfd, path, flags | O_CLOEXEC, mode);
	return keel__op_commit(t, op, sqe);
}

int keel_close(struct keel_task *t, int fd)
{
	struct keel__io *io = keel__io_of(t->loop);
	struct io_uring_sqe *cancel;

	/* The cancel, the close and a linked timeout must be adjacent. */
	keel__io_reserve(io, 3);
	cancel = keel__io_sqe(io);
	if (!cancel) {
		keel__op_timeout_drop(io, t);
		return keel__task_ready(t, -EAGAIN);
	}
	io_uring_prep_cancel_fd(
	    cancel, fd & ~KEEL_FIXED_FD_BIT,
	    IORING_ASYNC_CANCEL_ALL |
		(keel_fd_is_fixed(fd) ? IORING_ASYNC_CANCEL_FD_FIXED : 0));
	io_uring_sqe_set_data64(cancel, KEEL__UD_INTERNAL);
	/* Hard link: the close runs even when nothing was there to cancel
	 * (-ENOENT), which would break a soft link. */
	cancel->flags |= IOSQE_IO_HARDLINK;

	OP_BEGIN(t, IORING_OP_CLOSE, KEEL__OP_CLEANUP);
	if (keel_fd_is_fixed(fd))
		io_uring_prep_close_direct(sqe,
					   (unsigned)fd & ~KEEL_FIXED_FD_BIT);
	else
		io_uring_prep_close(sqe, fd);
	op->fd = fd;
	return keel__op_commit(t, op, sqe);
}

int keel_fsync(struct keel_task *t, int fd, unsigned flags)
{
	OP_BEGIN(t, IORING_OP_FSYNC, KEEL__OP_KERNEL);
	io_uring_prep_fsync(sqe, fd, flags);
	op->fd = fd;
	return keel__op_commit(t, op, sqe);
}

int keel_statx(struct keel_task *t, int dfd, const char *path, int flags,
	       unsigned mask, struct statx *out)
{
	OP_BEGIN(t, IORING_OP_STATX, KEEL__OP_KERNEL);
	io_uring_prep_statx(sqe, dfd, path, flags, mask, out);
	return keel__op_commit(t, op, sqe);
}

int keel_socket(struct keel_task *t, int domain, int type, int protocol)
{
	OP_BEGIN(t, IORING_OP_SOCKET, KEEL__OP_KERNEL);
	io_uring_prep_socket(sqe, domain, type | SOCK_CLOEXEC, protocol, 0);
	return keel__op_commit(t, op, sqe);
}

int keel_accept(struct keel_task *t, int fd, struct sockaddr *addr,
		socklen_t *addrlen, int flags)
{
	OP_BEGIN(t, IORING_OP_ACCEPT, KEEL__OP_KERNEL);
	io_uring_prep_accept(sqe, fd, addr, addrlen, flags | SOCK_CLOEXEC);
	op->fd = fd;
	return keel__op_commit(t, op, sqe);
}

int keel_connect(struct keel_task *t, int fd, const struct sockaddr *addr,
		 socklen_t addrlen)
{
	OP_BEGIN(t, IORING_OP_CONNECT, KEEL__OP_KERNEL);
	io_uring_prep_connect(sqe, fd, addr, addrlen);
	op->fd = fd;
	return keel__op_commit(t, op, sqe);
}

int keel_recv(struct keel_task *t, int fd, void *buf, size_t len, int flags)
{
	OP_BEGIN(t, IORING_OP_RECV, KEEL__OP_KERNEL);
	io_uring_prep_recv(sqe, fd, buf, len, flags);
	op->fd = fd;
	return keel__op_commit(t, op, sqe);
}

int keel_send(struct keel_task *t, int fd, const void *buf, size_t len,
	      int flags)
{
	OP_BEGIN(t, IORING_OP_SEND, KEEL__OP_KERNEL);
	io_uring_prep_send(sqe, fd, buf, len, flags);
	op->fd = fd;
	return keel__op_commit(t, op, sqe);
}

/* Ops a backend may lack (the simulated kernel has no datagrams): say so
 * plainly rather than let the backend's -EINVAL read as a bad argument. */
static bool op_missing(struct keel_task *t, uint8_t opcode, int *await)
{
	if (keel_loop_has_op(t->loop, opcode) > 0)
		return false;
	keel__op_timeout_drop(keel__io_of(t->loop), t);
	/* KEEL_READY, or, past the step's allowance of ready awaits, the
	 * yield's KEEL_PENDING: the task is queued and its step must stop. */
	*await = keel__task_ready(t, -EOPNOTSUPP);
	return true;
}

int keel_recvmsg(struct keel_task *t, int fd, struct msghdr *msg, int flags)
{
	int await;

	if (op_missing(t, IORING_OP_RECVMSG, &await))
		return await;
	OP_BEGIN(t, IORING_OP_RECVMSG, KEEL__OP_KERNEL);
	io_uring_prep_recvmsg(sqe, fd, msg, (unsigned)flags);
	op->fd = fd;
	return keel__op_commit(t, op, sqe);
}

int keel_sendmsg(struct keel_task *t, int fd, const struct msghdr *msg,
		 int flags)
{
	int await;

	if (op_missing(t, IORING_OP_SENDMSG, &await))
		return await;
	OP_BEGIN(t, IORING_OP_SENDMSG, KEEL__OP_KERNEL);
	io_uring_prep_sendmsg(sqe, fd, msg, (unsigned)flags);
	op->fd = fd;
	return keel__op_commit(t, op, sqe);
}

int keel_shutdown(struct keel_task *t, int fd, int how)
{
	int await;

	if (op_missing(t, IORING_OP_SHUTDOWN, &await))
		return await;
	OP_BEGIN(t, IORING_OP_SHUTDOWN, KEEL__OP_KERNEL);
	io_uring_prep_shutdown(sqe, fd, how);
	op->fd = fd;
	return keel__op_commit(t, op, sqe);
}

/* Skip the first `n` bytes of `msg`'s iovecs, in place. */
static void msg_advance(struct msghdr *msg, size_t n)
{
	while (n && msg->msg_iovlen) {
		struct iovec *v = msg->msg_iov;

		if (n < v->iov_len) {
			v->iov_base = (char *)v->iov_base + n;
			v->iov_len -= n;
			return;
		}
		n -= v->iov_len;
		msg->msg_iov++;
		msg->msg_iovlen--;
	}
}

void keel__prep_send(struct io_uring_sqe *sqe, struct keel__op *op)
{
	size_t done = op->u.send_all.done;
	size_t left = op->u.send_all.len - done;
	int flags = op->u.send_all.msg_flags;

	if (op->u.send_all.msg) {
		/* What was sent is skipped in the caller's iovecs. */
		struct msghdr *msg = op->u.send_all.msg;

		msg_advance(msg, done - (size_t)op->res);
		op->res = (int32_t)done;
		if (op->flags & KEEL__OP_VECTORED) {
			/* The iovecs themselves: no msghdr for the kernel to
			 * copy in and parse. */
			if (op->flags & KEEL__OP_ZEROCOPY)
				io_uring_prep_send_zc(
				    sqe, op->fd, msg->msg_iov, msg->msg_iovlen,
				    flags, IORING_SEND_ZC_REPORT_USAGE);
			else
				io_uring_prep_send(sqe, op->fd, msg->msg_iov,
						   msg->msg_iovlen, flags);
			sqe->ioprio |= IORING_SEND_VECTORIZED;
		} else if (op->flags & KEEL__OP_ZEROCOPY) {
			io_uring_prep_sendmsg_zc(sqe, op->fd, msg,
						 (unsigned)flags);
			sqe->ioprio |= IORING_SEND_ZC_REPORT_USAGE;
		} else
			io_uring_prep_sendmsg(sqe, op->fd, msg,
					      (unsigned)flags);
	} else if (op->flags & KEEL__OP_ZEROCOPY) {
		io_uring_prep_send_zc(sqe, op->fd, op->u.send_all.buf + done,
				      left, flags, IORING_SEND_ZC_REPORT_USAGE);
	} else {
		io_uring_prep_send(sqe, op->fd, op->u.send_all.buf + done, left,
				   flags);
	}
}

/* `allow_zc`: from the loop's threshold, send zero-copy (the op then owes
 * a notification CQE too, which only keel_send_zc/sendmsg_all ask for). */
static int send_all_start(struct keel_task *t, int fd, const void *buf,
			  struct msghdr *msg, size_t len, int flags,
			  bool allow_zc)
{
	struct keel__io *io = keel__io_of(t->loop);
	bool zc = allow_zc && len >= io->zc_threshold &&
		  keel_loop_has_op(t->loop, msg ? IORING_OP_SENDMSG_ZC
						: IORING_OP_SEND_ZC) > 0;
	uint8_t single = zc ? IORING_OP_SEND_ZC : IORING_OP_SEND;
	bool vec = msg && io->send_vec && !msg->msg_name && !msg->msg_control &&
		   keel_loop_has_op(t->loop, single) > 0;
	uint8_t opcode = msg && !vec
			     ? (zc ? IORING_OP_SENDMSG_ZC : IORING_OP_SENDMSG)
			     : single;

	/* Results are ints and SQE lengths 32 bits: refuse, never send
	 * part of it and report a broken pipe. */
	if (len == 0 || len > INT32_MAX) {
		keel__op_timeout_drop(io, t);
		return keel__task_ready(t, len ? -EINVAL : 0);
	}
	OP_BEGIN(t, opcode, KEEL__OP_SEND_ALL);
	op->fd = fd;
	op->u.send_all.buf = buf;
	op->u.send_all.msg = msg;
	op->u.send_all.len = len;
	op->u.send_all.done = 0;
	op->u.send_all.msg_flags = flags;
	if (zc) {
		op->flags |= KEEL__OP_ZEROCOPY;
		io->count.zc_sends++;
	}
	if (vec) {
		op->flags |= KEEL__OP_VECTORED;
		io->count.vec_sends++;
	}
	keel__prep_send(sqe, op);
	return keel__op_commit(t, op, sqe);
}

/*
 * A vectored SEND (6.17) has no probe bit, so it is tried until a kernel
 * refuses one: since 6.10 (FEAT_RECVSEND_BUNDLE) a send with an unknown
 * ioprio flag fails its prep with -EINVAL before touching the socket, so
 * the retry as a SENDMSG is exact. Older kernels may not check the flag
 * (and would send the iovec array itself), so they never get one; nor do
 * backends (backend.h), which execute SENDMSG. KEEL_SEND_VEC=0 turns it
 * off (tests of the fallback, A/B runs).
 */
bool keel__send_vec_wanted(const struct keel__io *io)
{
	const char *env = getenv("KEEL_SEND_VEC");

	if (env && !strcmp(env, "0"))
		return false;
	return !io->backend && (io->features & IORING_FEAT_RECVSEND_BUNDLE);
}

void keel__send_vec_refused(struct keel__io *io, struct keel__op *op)
{
	io->send_vec = false;
	io->count.vec_sends--;
	op->flags &= (uint8_t)~KEEL__OP_VECTORED;
	op->opcode = op->flags & KEEL__OP_ZEROCOPY ? IORING_OP_SENDMSG_ZC
						   : IORING_OP_SENDMSG;
}

int keel_send_all(struct keel_task *t, int fd, const void *buf, size_t len,
		  int flags)
{
	return send_all_start(t, fd, buf, NULL, len, flags, false);
}

int keel_send_zc(struct keel_task *t, int fd, const void *buf, size_t len,
		 int flags)
{
	return send_all_start(t, fd, buf, NULL, len, flags, true);
}

int keel_sendmsg_all(struct keel_task *t, int fd, struct msghdr *msg, int flags)
{
	size_t len = 0;

	for (size_t i = 0; i < msg->msg_iovlen; i++)
		len += msg->msg_iov[i].iov_len;
	return send_all_start(t, fd, NULL, msg, len, flags, true);
}

void keel_loop_set_zc_threshold(struct keel_loop *loop, size_t bytes)
{
	keel__io_of(loop)->zc_threshold =
	    bytes > UINT32_MAX ? UINT32_MAX : (uint32_t)bytes;
}

/*
 * splice and tee name their input in the SQE's splice_fd_in, which
 * IOSQE_FIXED_FILE does not cover (that flag is for the output, sqe->fd):
 * a registered input is flagged with SPLICE_F_FD_IN_FIXED instead.
 */
static unsigned splice_in_flags(int *fd_in, unsigned flags)
{
	if (keel_fd_is_fixed(*fd_in)) {
		*fd_in &= ~KEEL_FIXED_FD_BIT;
		flags |= SPLICE_F_FD_IN_FIXED;
	}
	return flags;
}

int keel_splice(struct keel_task *t, int fd_in, int64_t off_in, int fd_out,
		int64_t off_out, unsigned len, unsigned flags)
{
	OP_BEGIN(t, IORING_OP_SPLICE, KEEL__OP_KERNEL);
	flags = splice_in_flags(&fd_in, flags);
	io_uring_prep_splice(sqe, fd_in, off_in, fd_out, off_out, len, flags);
	op->fd = fd_in;
	return keel__op_commit(t, op, sqe);
}

int keel_tee(struct keel_task *t, int fd_in, int fd_out, unsigned len,
	     unsigned flags)
{
	OP_BEGIN(t, IORING_OP_TEE, KEEL__OP_KERNEL);
	flags = splice_in_flags(&fd_in, flags);
	io_uring_prep_tee(sqe, fd_in, fd_out, len, flags);
	op->fd = fd_in;
	return keel__op_commit(t, op, sqe);
}

int keel_poll(struct keel_task *t, int fd, unsigned events)
{
	OP_BEGIN(t, IORING_OP_POLL_ADD, KEEL__OP_KERNEL);
	io_uring_prep_poll_add(sqe, fd, events);
	op->fd = fd;
	return keel__op_commit(t, op, sqe);
}

int keel__poll_in(struct keel_task *t, int fd)
{
	OP_BEGIN(t, IORING_OP_POLL_ADD, KEEL__OP_KERNEL);
	io_uring_prep_poll_add(sqe, fd, POLLIN);
	op->fd = fd;
	return keel__op_commit(t, op, sqe);
}
