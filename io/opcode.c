/* SPDX-License-Identifier: MIT */
/*
 * opcode.c: the names of io_uring opcodes, one table for the task dump
 * (sched/introspect.c) and for tools/keel-trace, which prints the `op` of
 * trace events.
 *
 * Indexed by IORING_OP_* (the kernel's ABI numbers): liburing 2.3's names
 * up to IORING_OP_SENDMSG_ZC, then compat.h's for the opcodes 2.3 lacks, up
 * to IORING_OP_PIPE, the last one Linux 6.18 knows (its probe's last_op).
 * A name is the constant's, lower case, without IORING_OP_. A number past
 * the table, or a hole in it, has no name: callers print the number.
 */
#include "compat.h"

#include <keel/trace.h>

static const char *const opcode_names[] = {
    [IORING_OP_NOP] = "nop",
    [IORING_OP_READV] = "readv",
    [IORING_OP_WRITEV] = "writev",
    [IORING_OP_FSYNC] = "fsync",
    [IORING_OP_READ_FIXED] = "read_fixed",
    [IORING_OP_WRITE_FIXED] = "write_fixed",
    [IORING_OP_POLL_ADD] = "poll_add",
    [IORING_OP_POLL_REMOVE] = "poll_remove",
    [IORING_OP_SYNC_FILE_RANGE] = "sync_file_range",
    [IORING_OP_SENDMSG] = "sendmsg",
    [IORING_OP_RECVMSG] = "recvmsg",
    [IORING_OP_TIMEOUT] = "timeout",
    [IORING_OP_TIMEOUT_REMOVE] = "timeout_remove",
    [IORING_OP_ACCEPT] = "accept",
    [IORING_OP_ASYNC_CANCEL] = "async_cancel",
    [IORING_OP_LINK_TIMEOUT] = "link_timeout",
    [IORING_OP_CONNECT] = "connect",
    [IORING_OP_FALLOCATE] = "fallocate",
    [IORING_OP_OPENAT] = "openat",
    [IORING_OP_CLOSE] = "close",
    [IORING_OP_FILES_UPDATE] = "files_update",
    [IORING_OP_STATX] = "statx",
    [IORING_OP_READ] = "read",
    [IORING_OP_WRITE] = "write",
    [IORING_OP_FADVISE] = "fadvise",
    [IORING_OP_MADVISE] = "madvise",
    [IORING_OP_SEND] = "send",
    [IORING_OP_RECV] = "recv",
    [IORING_OP_OPENAT2] = "openat2",
    [IORING_OP_EPOLL_CTL] = "epoll_ctl",
    [IORING_OP_SPLICE] = "splice",
    [IORING_OP_PROVIDE_BUFFERS] = "provide_buffers",
    [IORING_OP_REMOVE_BUFFERS] = "remove_buffers",
    [IORING_OP_TEE] = "tee",
    [IORING_OP_SHUTDOWN] = "shutdown",
    [IORING_OP_RENAMEAT] = "renameat",
    [IORING_OP_UNLINKAT] = "unlinkat",
    [IORING_OP_MKDIRAT] = "mkdirat",
    [IORING_OP_SYMLINKAT] = "symlinkat",
    [IORING_OP_LINKAT] = "linkat",
    [IORING_OP_MSG_RING] = "msg_ring",
    [IORING_OP_FSETXATTR] = "fsetxattr",
    [IORING_OP_SETXATTR] = "setxattr",
    [IORING_OP_FGETXATTR] = "fgetxattr",
    [IORING_OP_GETXATTR] = "getxattr",
    [IORING_OP_SOCKET] = "socket",
    [IORING_OP_URING_CMD] = "uring_cmd",
    [IORING_OP_SEND_ZC] = "send_zc",
    [IORING_OP_SENDMSG_ZC] = "sendmsg_zc",
    [KEEL_IORING_OP_READ_MULTISHOT] = "read_multishot",
    [KEEL_IORING_OP_WAITID] = "waitid",
    [KEEL_IORING_OP_FUTEX_WAIT] = "futex_wait",
    [KEEL_IORING_OP_FUTEX_WAKE] = "futex_wake",
    [KEEL_IORING_OP_FUTEX_WAITV] = "futex_waitv",
    [KEEL_IORING_OP_FIXED_FD_INSTALL] = "fixed_fd_install",
    [KEEL_IORING_OP_FTRUNCATE] = "ftruncate",
    [KEEL_IORING_OP_BIND] = "bind",
    [KEEL_IORING_OP_LISTEN] = "listen",
    [KEEL_IORING_OP_RECV_ZC] = "recv_zc",
    [KEEL_IORING_OP_EPOLL_WAIT] = "epoll_wait",
    [KEEL_IORING_OP_READV_FIXED] = "readv_fixed",
    [KEEL_IORING_OP_WRITEV_FIXED] = "writev_fixed",
    [KEEL_IORING_OP_PIPE] = "pipe",
};

/* A new opcode in compat.h needs its name here too. */
_Static_assert(sizeof(opcode_names) / sizeof(opcode_names[0]) ==
		   KEEL_IORING_OP_MAX,
	       "one name per opcode up to KEEL_IORING_OP_MAX");

const char *keel_opcode_name(unsigned opcode)
{
	if (opcode >= sizeof(opcode_names) / sizeof(opcode_names[0]))
		return NULL;
	return opcode_names[opcode];
}
