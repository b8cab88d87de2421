/* SPDX-License-Identifier: MIT */
/*
 * compat.h: what Debian's liburing 2.3 headers lack but the running kernel
 * may have (6.18 here). Every name is guarded, so newer headers win; keel
 * probes the kernel at run time before using any of them.
 */
#ifndef KEEL_IO_COMPAT_H
#define KEEL_IO_COMPAT_H

#include <liburing.h>

/* Opcodes after IORING_OP_SENDMSG_ZC (48), the last one 2.3 knows. */
#define KEEL_IORING_OP_READ_MULTISHOT	49 /* 6.7 */
#define KEEL_IORING_OP_WAITID		50 /* 6.7 */
#define KEEL_IORING_OP_FUTEX_WAIT	51 /* 6.7 */
#define KEEL_IORING_OP_FUTEX_WAKE	52 /* 6.7 */
#define KEEL_IORING_OP_FUTEX_WAITV	53 /* 6.7 */
#define KEEL_IORING_OP_FIXED_FD_INSTALL 54 /* 6.8 */
#define KEEL_IORING_OP_FTRUNCATE	55 /* 6.9 */
#define KEEL_IORING_OP_BIND		56 /* 6.11 */
#define KEEL_IORING_OP_LISTEN		57 /* 6.11 */
#define KEEL_IORING_OP_RECV_ZC		58 /* 6.15 */
#define KEEL_IORING_OP_EPOLL_WAIT	59 /* 6.15 */
#define KEEL_IORING_OP_READV_FIXED	60 /* 6.15 */
#define KEEL_IORING_OP_WRITEV_FIXED	61 /* 6.15 */
#define KEEL_IORING_OP_PIPE		62 /* 6.16; the last one 6.18 knows */
/* One past the highest opcode keel knows by name (io/opcode.c). */
#define KEEL_IORING_OP_MAX 63

/* Setup flags newer than 2.3. */
#ifndef IORING_SETUP_NO_MMAP
#define IORING_SETUP_NO_MMAP (1U << 14) /* 6.5 */
#endif
#ifndef IORING_SETUP_REGISTERED_FD_ONLY
#define IORING_SETUP_REGISTERED_FD_ONLY (1U << 15) /* 6.5 */
#endif
#ifndef IORING_SETUP_NO_SQARRAY
#define IORING_SETUP_NO_SQARRAY (1U << 16) /* 6.6 */
#endif

/* io_uring_register() opcodes newer than 2.3. */
#define KEEL_IORING_REGISTER_SEND_MSG_RING 31 /* 6.13, with fd -1 */
#define KEEL_IORING_REGISTER_RESIZE_RINGS  33 /* 6.13 */

/* Features newer than 2.3. */
#ifndef IORING_FEAT_REG_REG_RING
#define IORING_FEAT_REG_REG_RING (1U << 13) /* 6.3 */
#endif
#ifndef IORING_FEAT_RECVSEND_BUNDLE
#define IORING_FEAT_RECVSEND_BUNDLE (1U << 14) /* 6.10 */
#endif
#ifndef IORING_FEAT_MIN_TIMEOUT
#define IORING_FEAT_MIN_TIMEOUT (1U << 15) /* 6.12 */
#endif

/* Send/recv and buffer-ring flags newer than 2.3. */
#ifndef IORING_RECVSEND_BUNDLE
#define IORING_RECVSEND_BUNDLE (1U << 4) /* 6.10 */
#endif
#ifndef IOU_PBUF_RING_MMAP
#define IOU_PBUF_RING_MMAP 1 /* 6.4 */
#endif
#ifndef IOU_PBUF_RING_INC
#define IOU_PBUF_RING_INC 2 /* 6.12 */
#endif
#ifndef IORING_CQE_F_BUF_MORE
#define IORING_CQE_F_BUF_MORE (1U << 4) /* 6.12: the buffer is not done */
#endif
#ifndef IORING_SEND_ZC_REPORT_USAGE
#define IORING_SEND_ZC_REPORT_USAGE (1U << 3) /* 6.2 */
#endif
#ifndef IORING_NOTIF_USAGE_ZC_COPIED
#define IORING_NOTIF_USAGE_ZC_COPIED (1U << 31) /* 6.2 */
#endif
#ifndef IORING_SEND_VECTORIZED
#define IORING_SEND_VECTORIZED (1U << 5) /* 6.17: SEND[_ZC] of an iovec */
#endif
/* NOP flags (sqe->nop_flags, 2.3's rw_flags position), 6.10. */
#ifndef IORING_NOP_INJECT_RESULT
#define IORING_NOP_INJECT_RESULT (1U << 0) /* res = sqe->len */
#endif
/* 2.3's struct io_uring_buf_reg calls the flags field (6.4) `pad`. */
#define KEEL_BUF_REG_FLAGS(reg) ((reg).pad)
/* ... and struct io_uring_getevents_arg's min_wait_usec (6.12) `pad`. */
#define KEEL_GETEVENTS_MIN_WAIT(arg) ((arg).pad)

#endif
