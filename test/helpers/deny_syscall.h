/* SPDX-License-Identifier: MIT */
/*
 * deny_syscall.h: a seccomp filter under which one system call fails with
 * a chosen errno and everything else is allowed: io_uring_setup with EPERM
 * as in Docker's default profile, or a call an older kernel lacks with
 * ENOSYS. For tests, in a forked child: the filter stays for the process's
 * life. TEST_AUDIT_ARCH is undefined on machines whose audit arch the
 * tests do not know: skip there.
 */
#ifndef KEEL_TEST_DENY_SYSCALL_H
#define KEEL_TEST_DENY_SYSCALL_H

#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

#if defined(__x86_64__)
#define TEST_AUDIT_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define TEST_AUDIT_ARCH AUDIT_ARCH_AARCH64
#endif

#ifdef TEST_AUDIT_ARCH
static inline int deny_syscall(unsigned nr, int err)
{
	struct sock_filter filter[] = {
	    BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
		     offsetof(struct seccomp_data, arch)),
	    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, TEST_AUDIT_ARCH, 1, 0),
	    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	    BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
		     offsetof(struct seccomp_data, nr)),
	    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, nr, 0, 1),
	    BPF_STMT(BPF_RET | BPF_K,
		     SECCOMP_RET_ERRNO | ((unsigned)err & SECCOMP_RET_DATA)),
	    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = {
	    .len = (unsigned short)(sizeof(filter) / sizeof(filter[0])),
	    .filter = filter,
	};

	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
		return -1;
	return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0);
}

/* io_uring refused as Docker's default profile refuses it. */
static inline int deny_io_uring_setup(void)
{
	return deny_syscall(__NR_io_uring_setup, EPERM);
}
#endif

#endif
