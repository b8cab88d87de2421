/* SPDX-License-Identifier: MIT */
/*
 * restrict.c: least-privilege rings: the opcodes and register operations a
 * restricted loop's ring allows, their registration with the kernel, and
 * the check that refuses a forbidden op before it reaches the kernel.
 *
 * A loop asks with KEEL_LOOP_RESTRICT (and keel_loop_opts.restrict_ops) or
 * the environment variable KEEL_RESTRICT. Its ring is then set up disabled
 * (IORING_SETUP_R_DISABLED, io/ring.c); here it gets its restrictions
 * (IORING_REGISTER_RESTRICTIONS) and is enabled (IORING_REGISTER_ENABLE_
 * RINGS) on the loop's own thread, which SINGLE_ISSUER then makes the
 * issuer, as it would have at setup. From then on the kernel refuses every
 * other opcode, SQE flag and register operation with -EACCES, for good: a
 * bug or an attacker in the process cannot use the ring for more.
 *
 * The allowed set is what keel's own API issues for the classes asked for,
 * limited to what the kernel has (its probe, taken before the ring is
 * enabled). keel checks an op against it where the op is begun (the
 * ledger, the streams, keel__io_register()), so a forbidden op ends at once
 * with the kernel's -EACCES and never takes an SQE; the kernel's check is
 * the guarantee, keel's gives the same answer without a system call and
 * counts it (keel_loop_stats.ops_refused).
 *
 * Restrictions belong to the kernel's io_uring: on another backend (the
 * simulated kernel, epoll) they are not applied, and describe says so.
 */
#include "io.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ALL_CLASSES (KEEL_OPS_NET | KEEL_OPS_FILES | KEEL_OPS_PIPES)

/* The opcodes each class lets keel's API issue. */
static const struct {
	unsigned cls;
	uint8_t op;
} class_ops[] = {
    /* keel's machinery, allowed in every restricted ring: keel_nop and
     * the NOP a failed op leaves in its SQE; keel_close and the cancel
     * linked before it; cancels; keel_op_timeout's linked timeouts;
     * cross-loop doorbells (sched/remote.c). */
    {0, IORING_OP_NOP},
    {0, IORING_OP_CLOSE},
    {0, IORING_OP_ASYNC_CANCEL},
    {0, IORING_OP_LINK_TIMEOUT},
    {0, IORING_OP_MSG_RING},
    /* Readiness of a descriptor the process already has: the runtime's
     * signalfd on a ring that refuses READ (sched/runtime.c). */
    {0, IORING_OP_POLL_ADD},
    {KEEL_OPS_NET, IORING_OP_SOCKET},
    {KEEL_OPS_NET, IORING_OP_ACCEPT},
    {KEEL_OPS_NET, IORING_OP_CONNECT},
    {KEEL_OPS_NET, IORING_OP_RECV},
    {KEEL_OPS_NET, IORING_OP_SEND},
    {KEEL_OPS_NET, IORING_OP_SENDMSG},
    {KEEL_OPS_NET, IORING_OP_SEND_ZC},
    {KEEL_OPS_NET, IORING_OP_SENDMSG_ZC},
    {KEEL_OPS_FILES, IORING_OP_OPENAT},
    {KEEL_OPS_FILES, IORING_OP_READ},
    {KEEL_OPS_FILES, IORING_OP_WRITE},
    {KEEL_OPS_FILES, IORING_OP_READV},
    {KEEL_OPS_FILES, IORING_OP_WRITEV},
    {KEEL_OPS_FILES, IORING_OP_READ_FIXED},
    {KEEL_OPS_FILES, IORING_OP_WRITE_FIXED},
    {KEEL_OPS_FILES, IORING_OP_FSYNC},
    {KEEL_OPS_FILES, IORING_OP_STATX},
    {KEEL_OPS_PIPES, IORING_OP_SPLICE},
    {KEEL_OPS_PIPES, IORING_OP_TEE},
};

/* The register operations keel issues after setup, by class. */
static const struct {
	unsigned cls;
	uint8_t op;
} class_regs[] = {
    /* keel_loop_fd()'s eventfd; the registered ring fd, which
     * io_uring_queue_exit() unregisters. */
    {0, IORING_REGISTER_EVENTFD},
    {0, IORING_UNREGISTER_EVENTFD},
    {0, IORING_UNREGISTER_RING_FDS},
    /* Buffer rings (recv streams) and the direct-descriptor table
     * (accept streams with KEEL_ACCEPT_DIRECT). */
    {KEEL_OPS_NET, IORING_REGISTER_PBUF_RING},
    {KEEL_OPS_NET, IORING_UNREGISTER_PBUF_RING},
    {KEEL_OPS_NET, IORING_REGISTER_FILES2},
    /* Registered buffers (keel_read_fixed, keel_write_fixed). */
    {KEEL_OPS_FILES, IORING_REGISTER_BUFFERS},
    {KEEL_OPS_FILES, IORING_UNREGISTER_BUFFERS},
};

/* The SQE flags keel sets: links (timeouts, close after its cancel),
 * buffer selection, direct descriptors, silent doorbells. */
#define SQE_FLAGS                                                              \
	(IOSQE_IO_LINK | IOSQE_IO_HARDLINK | IOSQE_BUFFER_SELECT |             \
	 IOSQE_FIXED_FILE | IOSQE_CQE_SKIP_SUCCESS)

static const struct {
	unsigned cls;
	const char *name;
} class_names[] = {
    {KEEL_OPS_NET, "net"},
    {KEEL_OPS_FILES, "files"},
    {KEEL_OPS_PIPES, "pipes"},
};

/* KEEL_RESTRICT: "1" or "all", or a comma-separated list of class names;
 * "" or "0": none. Returns the classes (ALL_CLASSES for all), 0 or -1. */
static long parse_env(const char *s)
{
	unsigned cls = 0;

	if (!*s || !strcmp(s, "0"))
		return 0;
	if (!strcmp(s, "1") || !strcmp(s, "all"))
		return ALL_CLASSES;
	while (*s) {
		size_t n = strcspn(s, ",");
		size_t i;

		for (i = 0; i < sizeof(class_names) / sizeof(class_names[0]);
		     i++)
			if (strlen(class_names[i].name) == n &&
			    !strncmp(s, class_names[i].name, n))
				break;
		if (i == sizeof(class_names) / sizeof(class_names[0]))
			return -1;
		cls |= class_names[i].cls;
		s += n;
		if (*s == ',')
			s++;
	}
	return cls ? (long)cls : -1;
}

int keel__restrict_plan(struct keel__io *io, const struct keel_loop_opts *opts)
{
	unsigned flags = opts ? opts->flags : 0;
	unsigned ops = opts ? opts->restrict_ops : 0;
	const char *env = getenv("KEEL_RESTRICT");

	io->restrict_ops = 0;
	if (ops & ~ALL_CLASSES)
		return -EINVAL;
	/* A list without the flag would read as restricted and not be. */
	if (ops && !(flags & KEEL_LOOP_RESTRICT))
		return -EINVAL;
	if (flags & KEEL_LOOP_RESTRICT) {
		io->restrict_ops = ops ? ops : ALL_CLASSES;
		return 0;
	}
	if (env) {
		long cls = parse_env(env);

		if (cls < 0) {
			/* Like KEEL_FAULTS: the one place the variable is
			 * read, and the create's -EINVAL alone would not say
			 * which option was bad. */
			fprintf(stderr,
				"keel: KEEL_RESTRICT: '%s' is not 1, all, 0 or "
				"a comma-separated list of net, files, "
				"pipes\n",
				env);
			return -EINVAL;
		}
		io->restrict_ops = (unsigned)cls;
	}
	return 0;
}

static void allow_set(const struct keel__io *io, uint64_t ops[2],
		      uint32_t *regs)
{
	unsigned cls = io->restrict_ops;

	ops[0] = ops[1] = 0;
	*regs = 0;
	for (size_t i = 0; i < sizeof(class_ops) / sizeof(class_ops[0]); i++) {
		unsigned op = class_ops[i].op;

		/* What the kernel lacks cannot be allowed (it would refuse
		 * the restriction) and an op of it fails anyway. */
		if ((!class_ops[i].cls || (class_ops[i].cls & cls)) &&
		    (io->ops_supported[op / 64] >> (op % 64) & 1))
			ops[op / 64] |= 1ull << (op % 64);
	}
	for (size_t i = 0; i < sizeof(class_regs) / sizeof(class_regs[0]); i++)
		if (!class_regs[i].cls || (class_regs[i].cls & cls))
			*regs |= 1u << class_regs[i].op;
}

int keel__restrict_apply(struct keel__io *io)
{
	struct io_uring_restriction res[128 + 32 + 1];
	unsigned n = 0;

	io->restricted = false;
	io->core.op_slow.why.restricted = 0;
	if (!io->restrict_ops)
		return 0;
	if (io->backend)
		return 0; /* describe says so, naming the backend */
	allow_set(io, io->ops_allowed, &io->regs_allowed);
	memset(res, 0, sizeof(res));
	for (unsigned op = 0; op < 128; op++)
		if (keel__op_allowed(io, op)) {
			res[n].opcode = IORING_RESTRICTION_SQE_OP;
			res[n++].sqe_op = (uint8_t)op;
		}
	for (unsigned op = 0; op < 32; op++)
		if (io->regs_allowed >> op & 1) {
			res[n].opcode = IORING_RESTRICTION_REGISTER_OP;
			res[n++].register_op = (uint8_t)op;
		}
	/* Without it the kernel would refuse every SQE that has a flag. */
	res[n].opcode = IORING_RESTRICTION_SQE_FLAGS_ALLOWED;
	res[n++].sqe_flags = SQE_FLAGS;
	/* The raw call: Debian's liburing 2.3 declares
	 * io_uring_register_restrictions() and io_uring_enable_rings() but
	 * its shared library does not export them. Returns 0 or -errno. */
	int err = io_uring_register((unsigned)io->ring.ring_fd,
				    IORING_REGISTER_RESTRICTIONS, res, n);

	if (!err)
		err = io_uring_register((unsigned)io->ring.ring_fd,
					IORING_REGISTER_ENABLE_RINGS, NULL, 0);
	if (err)
		return err;
	io->restricted = true;
	io->core.op_slow.why.restricted = 1;
	return 0;
}

int keel__restrict_refuse(struct keel__io *io)
{
	io->count.ops_refused++;
	return -EACCES;
}

size_t keel__restrict_describe(const struct keel__io *io, char *buf, size_t len)
{
	char cls[32] = "";
	size_t c = 0;
	unsigned ops = 0, regs = 0;
	int w;

	if (!io->restrict_ops) {
		w = snprintf(buf, len, "; restrictions: none");
		return w < 0 ? 0 : (size_t)w;
	}
	for (size_t i = 0; i < sizeof(class_names) / sizeof(class_names[0]);
	     i++)
		if (io->restrict_ops & class_names[i].cls)
			c +=
			    (size_t)snprintf(cls + c, sizeof(cls) - c, "%s%s",
					     c ? "+" : "", class_names[i].name);
	if (!io->restricted) {
		w = snprintf(buf, len,
			     "; restrictions (%s): not applied on backend %s",
			     cls, io->backend ? io->backend->name : "?");
		return w < 0 ? 0 : (size_t)w;
	}
	for (unsigned op = 0; op < 128; op++)
		ops += keel__op_allowed(io, op);
	for (unsigned op = 0; op < 32; op++)
		regs += io->regs_allowed >> op & 1;
	w = snprintf(buf, len,
		     "; restricted: %s, %u opcodes, %u register ops (others "
		     "-EACCES)",
		     cls, ops, regs);
	return w < 0 ? 0 : (size_t)w;
}
