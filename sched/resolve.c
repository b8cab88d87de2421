/* SPDX-License-Identifier: MIT */
/*
 * resolve.c: keel_resolve(): getaddrinfo on the blocking pool, as an await
 * that a cancel or a deadline ends at once.
 *
 * It lives in sched, not with the socket helpers in io, because it needs
 * the blocking pool. The await is a user-space op in the task's ledger with
 * a timer for its deadline; the lookup is a detachable pool job
 * (keel__job_submit) whose argument, a `struct lookup` on the heap, holds
 * its own copy of the question and getaddrinfo's answer. The op ends one of
 * three ways, all on the loop's thread and exactly once (a user op ends
 * once): the job comes back (copy the answer into the request, stop the
 * timer), the timer fires, or the task's ops are cancelled; in the last two
 * the job is left (keel__job_detach) and from then on the loop never
 * touches the lookup again: the pool frees it when getaddrinfo returns.
 */
#include "loop.h"

#include <errno.h>
#include <netdb.h>
#include <stdlib.h>
#include <string.h>

struct lookup {
	/* Read by the pool thread. */
	const char *host;
	const char *service; /* NULL: none */
	struct addrinfo hints;
	/* Written by the pool thread, read by finish once it is back. */
	struct addrinfo *ai;
	int gai;
	int sys_errno; /* errno after EAI_SYSTEM */
	/* The loop's side, valid while the op is awaited. */
	struct keel_resolve_req *req;
	struct keel__op *op;
	struct keel__job *job;
	char strings[]; /* host, then service */
};

/* EAI_* to a negative errno (see keel_resolve() in keel/io.h). */
static int gai_errno(int gai, int sys_errno)
{
	switch (gai) {
	case EAI_NONAME:
	case EAI_NODATA:
	case EAI_ADDRFAMILY:
		return -ENOENT;
	case EAI_AGAIN:
		return -EAGAIN;
	case EAI_SERVICE:
		return -EINVAL;
	case EAI_FAMILY:
		return -EAFNOSUPPORT;
	case EAI_SOCKTYPE:
		return -ESOCKTNOSUPPORT;
	case EAI_MEMORY:
		return -ENOMEM;
	case EAI_SYSTEM:
		return sys_errno > 0 ? -sys_errno : -EIO;
	default: /* EAI_FAIL, EAI_BADFLAGS, ... */
		return -EIO;
	}
}

/* Copy an answer into the request: each address once, at most
 * KEEL_RESOLVE_MAX. Returns the count (getaddrinfo never answers with no
 * address, but say -ENOENT if none fits). */
static int answer(struct keel_resolve_req *req, const struct addrinfo *ai)
{
	unsigned n = 0;

	for (; ai && n < KEEL_RESOLVE_MAX; ai = ai->ai_next) {
		bool seen = false;

		if ((ai->ai_family != AF_INET && ai->ai_family != AF_INET6) ||
		    ai->ai_addrlen > sizeof(req->addrs[0]))
			continue;
		for (unsigned i = 0; i < n && !seen; i++)
			seen = req->lens[i] == ai->ai_addrlen &&
			       !memcmp(&req->addrs[i], ai->ai_addr,
				       ai->ai_addrlen);
		if (seen)
			continue;
		memset(&req->addrs[n], 0, sizeof(req->addrs[n]));
		memcpy(&req->addrs[n], ai->ai_addr, ai->ai_addrlen);
		req->lens[n++] = ai->ai_addrlen;
	}
	req->count = n;
	return n ? (int)n : -ENOENT;
}

static int lookup_run(void *arg)
{
	struct lookup *l = arg;

	l->gai = getaddrinfo(l->host, l->service, &l->hints, &l->ai);
	l->sys_errno = l->gai == EAI_SYSTEM ? errno : 0;
	return 0;
}

static void lookup_finish(struct keel_loop *loop, struct keel__op *op,
			  void *arg, int result)
{
	struct lookup *l = arg;
	struct keel_resolve_req *req = l->req;

	if (keel_timer_armed(&op->u.user.timer))
		keel_timer_cancel(loop, &op->u.user.timer);
	if (result >= 0) { /* it ran */
		req->gai_error = l->gai;
		result = l->gai ? gai_errno(l->gai, l->sys_errno)
				: answer(req, l->ai);
	}
	keel__op_user_done(keel__io_of(loop), op, result);
}

static void lookup_release(void *arg)
{
	struct lookup *l = arg;

	if (l->ai)
		freeaddrinfo(l->ai);
	free(l);
}

static const struct keel__job_class lookup_class = {
    .run = lookup_run,
    .finish = lookup_finish,
    .release = lookup_release,
};

/* End the await before the job is back: leave the job, then the op. */
static void lookup_leave(struct keel_loop *loop, struct lookup *l, int res)
{
	struct keel__op *op = l->op;

	if (keel_timer_armed(&op->u.user.timer))
		keel_timer_cancel(loop, &op->u.user.timer);
	keel__job_detach(loop, l->job); /* `l` may be freed from here on */
	keel__op_user_done(keel__io_of(loop), op, res);
}

static void lookup_deadline(struct keel_loop *loop, struct keel_timer *timer,
			    void *arg)
{
	(void)timer;
	lookup_leave(loop, arg, -ETIMEDOUT);
}

static void lookup_cancel(struct keel__op *op)
{
	lookup_leave(op->task->loop, op->u.user.timer.arg, -ECANCELED);
}

static bool all_digits(const char *s)
{
	if (!*s)
		return false;
	for (; *s; s++)
		if (*s < '0' || *s > '9')
			return false;
	return true;
}

static bool port_too_big(const char *digits)
{
	unsigned long v = 0;

	for (; *digits; digits++)
		if ((v = v * 10 + (unsigned long)(*digits - '0')) > 65535)
			return true;
	return false;
}

/*
 * A numeric host with a numeric port (or none) needs no name service:
 * getaddrinfo with AI_NUMERICHOST | AI_NUMERICSERV neither reads a file nor
 * asks a server. Returns the await's result, or 0 if the host is a name.
 */
static int numeric(struct keel_resolve_req *req, const struct addrinfo *hints)
{
	struct addrinfo h = *hints, *ai;

	if (req->service && !all_digits(req->service))
		return 0;
	h.ai_flags |= AI_NUMERICHOST | AI_NUMERICSERV;
	int gai = getaddrinfo(req->host, req->service, &h, &ai);

	if (gai == EAI_NONAME)
		return 0; /* not a numeric address: ask the resolver */
	if (gai) {
		req->gai_error = gai;
		return gai_errno(gai, errno);
	}
	int n = answer(req, ai);

	freeaddrinfo(ai);
	return n;
}

int keel_resolve(struct keel_task *t, struct keel_resolve_req *req)
{
	struct keel_loop *loop = t->loop;
	struct keel__io *io = keel__io_of(loop);
	int cause = keel__task_cancel_cause(t), res;
	uint64_t deadline;

	req->count = 0;
	req->gai_error = 0;
	/* keel_op_timeout() is for this await whatever happens to it. */
	deadline = keel__clock_now() + (req->timeout_ns
					    ? req->timeout_ns
					    : KEEL_RESOLVE_TIMEOUT_DEFAULT_NS);
	if (io->timeout_task == t) {
		uint64_t op_deadline = keel__clock_now() + io->timeout_ns;

		io->timeout_task = NULL;
		if (op_deadline < deadline)
			deadline = op_deadline;
	}
	if (cause)
		return keel__task_ready(t, cause);
	if (!req->host || !*req->host)
		return keel__task_ready(t, -EINVAL);
	if (req->family != AF_UNSPEC && req->family != AF_INET &&
	    req->family != AF_INET6)
		return keel__task_ready(t, -EAFNOSUPPORT);
	/* glibc takes "70000" as port 4464: refuse it as it would a name it
	 * does not know. */
	if (req->service && all_digits(req->service) &&
	    port_too_big(req->service)) {
		req->gai_error = EAI_SERVICE;
		return keel__task_ready(t, -EINVAL);
	}

	struct addrinfo hints = {
	    .ai_flags = req->flags,
	    .ai_family = req->family,
	    .ai_socktype = req->socktype ? req->socktype : SOCK_STREAM,
	};

	res = numeric(req, &hints);
	if (res)
		return keel__task_ready(t, res);

	size_t hlen = strlen(req->host) + 1;
	size_t slen = req->service ? strlen(req->service) + 1 : 0;
	struct lookup *l = malloc(sizeof(*l) + hlen + slen);

	if (!l)
		return keel__task_ready(t, -ENOMEM);
	memcpy(l->strings, req->host, hlen);
	l->host = l->strings;
	l->service = NULL;
	if (req->service) {
		memcpy(l->strings + hlen, req->service, slen);
		l->service = l->strings + hlen;
	}
	l->hints = hints;
	l->ai = NULL;
	l->gai = 0;
	l->sys_errno = 0;
	l->req = req;

	struct keel__op *op =
	    keel__op_new(io, t, KEEL__OP_USER, KEEL__OPCODE_BLOCKING);

	if (!op) {
		free(l);
		return keel__task_ready(t, -ENOMEM);
	}
	op->pending = 1;
	op->u.user.cancel = lookup_cancel;
	keel_timer_init(&op->u.user.timer, lookup_deadline, l);
	l->op = op;
	res = keel_timer_arm(loop, &op->u.user.timer, deadline);
	if (!res)
		res = keel__job_submit(loop, op, &lookup_class, l, &l->job);
	if (res) {
		if (keel_timer_armed(&op->u.user.timer))
			keel_timer_cancel(loop, &op->u.user.timer);
		free(l);
		keel__op_release_quiet(io, op);
		return keel__task_ready(t, res);
	}
	return keel__task_suspend(t);
}

const char *keel_resolve_strerror(const struct keel_resolve_req *req, int res)
{
	if (res > 0)
		return "ok";
	switch (req->gai_error) {
	case 0:
		break;
	case EAI_NONAME:
		return "name does not resolve (EAI_NONAME)";
	case EAI_NODATA:
		return "name has no address (EAI_NODATA)";
	case EAI_ADDRFAMILY:
		return "name has no address of this family (EAI_ADDRFAMILY)";
	case EAI_AGAIN:
		return "name server failed for now or did not answer "
		       "(EAI_AGAIN)";
	case EAI_FAIL:
		return "name server failed (EAI_FAIL)";
	case EAI_SERVICE:
		return "unknown service or port (EAI_SERVICE)";
	case EAI_FAMILY:
		return "address family not supported (EAI_FAMILY)";
	case EAI_SOCKTYPE:
		return "socket type not supported (EAI_SOCKTYPE)";
	case EAI_MEMORY:
		return "out of memory (EAI_MEMORY)";
	case EAI_SYSTEM:
		return "system error (EAI_SYSTEM)";
	default:
		return "getaddrinfo failed";
	}
	switch (res) {
	case -ETIMEDOUT:
		return "timed out";
	case -ECANCELED:
		return "cancelled";
	case -EAGAIN:
		return "blocking pool's queue is full";
	case -EINVAL:
		return "no host name";
	case -EAFNOSUPPORT:
		return "address family not supported";
	case -ENOMEM:
		return "out of memory";
	case -ENOENT:
		return "name has no usable address";
	default:
		return "resolve failed";
	}
}
