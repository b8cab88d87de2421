/* SPDX-License-Identifier: MIT */
/*
 * inject.c: fault injection at the seam (keel_loop_inject_faults(),
 * KEEL_FAULTS): the rules, their PRNG, and the SQEs held back for latency.
 *
 * It works on the SQEs keel has queued, just before an enter hands them to
 * the backend (keel__io_enter()), so it is the same on the kernel's
 * io_uring and on any other backend, and nothing above the seam knows:
 *   error   the SQE becomes a NOP with IORING_NOP_INJECT_RESULT carrying
 *           -errno, with the op's user_data and IOSQE_IO_LINK kept (its
 *           linked timeout then ends -ECANCELED, as after a real error; a
 *           multishot request ends, as after a real error);
 *   short   a send, recv, read or write asks for fewer bytes (1..len-1);
 *   delay   the SQE (and its linked timeout) is held back and queued at a
 *           later enter; its slots become NOPs whose CQE is skipped;
 *   reorder the same, held until the next enter.
 * Only keel's own requests are touched (user_data role MAIN): never a
 * linked timeout, a cancel or a doorbell. A close never fails: the real
 * one frees the descriptor whatever it reports, an injected error would
 * leak it.
 *
 * A held op is still in the ledger, so the loop stays alive; a core timer
 * wakes the loop when it is due, and the enter that holds it waits no
 * longer than that. A cancel of a held op (by user_data or by descriptor)
 * would find nothing in the kernel: the op is released at once as
 * -ECANCELED instead (a cancel that came before the op started).
 */
#include "io.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum rule_kind {
	RULE_ERROR = KEEL_TRACE_FAULT_ERROR,
	RULE_SHORT = KEEL_TRACE_FAULT_SHORT,
	RULE_DELAY = KEEL_TRACE_FAULT_DELAY,
	RULE_REORDER = KEEL_TRACE_FAULT_REORDER,
};

#define ANY_OP (-1)

struct rule {
	int op; /* IORING_OP_*, or ANY_OP */
	int kind;
	int err;	   /* RULE_ERROR: a positive errno */
	uint64_t delay_ns; /* RULE_DELAY */
	uint64_t below;	   /* fires when rand >> 11 < below (p * 2^53) */
};

/* An op's SQEs held back: its own and its linked timeout's. */
struct held {
	uint64_t due_ns;
	uint64_t flush; /* held in this flush: released in a later one */
	unsigned n;
	struct io_uring_sqe sqe[2];
};

struct keel__inject {
	struct rule *rules;
	unsigned nrules;
	uint64_t ops[2]; /* bit per opcode some rule names (ANY_OP: all) */
	uint64_t rng;
	unsigned walked; /* sq.sqe_tail up to which SQEs were looked at */
	uint64_t flushes;
	struct held *held;
	unsigned nheld;
	unsigned cap;
	struct keel_timer timer; /* wakes the loop for the next held op */
	bool draining;		 /* turned off: release what is held, go */
};

static const struct {
	const char *name;
	int err;
} shorthands[] = {
    {"reset", ECONNRESET},   {"pipe", EPIPE},	 {"again", EAGAIN},
    {"nobufs", ENOBUFS},     {"io", EIO},	 {"nomem", ENOMEM},
    {"canceled", ECANCELED}, {"emfile", EMFILE}, {"refused", ECONNREFUSED},
    {"timedout", ETIMEDOUT},
};

/* "ECONNRESET" -> ECONNRESET, through glibc's own names; 0: unknown. */
static int errno_by_name(const char *name, size_t len)
{
	for (int e = 1; e < 256; e++) {
		const char *n = strerrorname_np(e);

		if (n && strlen(n) == len && !memcmp(n, name, len))
			return e;
	}
	return 0;
}

static int opcode_by_name(const char *name, size_t len)
{
	if (len == 1 && name[0] == '*')
		return ANY_OP;
	for (unsigned op = 0; op < KEEL_IORING_OP_MAX; op++) {
		const char *n = keel_opcode_name(op);

		if (n && strlen(n) == len && !memcmp(n, name, len))
			return (int)op;
	}
	return -2;
}

static bool parse_duration(const char *s, size_t len, uint64_t *ns)
{
	static const struct {
		const char *unit;
		uint64_t mult;
	} units[] = {
	    {"ns", 1}, {"us", 1000}, {"ms", 1000000}, {"s", 1000000000}};
	char *end;
	char num[32];

	if (!len || len >= sizeof(num) || s[0] < '0' || s[0] > '9')
		return false;
	memcpy(num, s, len);
	num[len] = '\0';
	unsigned long long v = strtoull(num, &end, 10);

	for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++)
		if (!strcmp(end, units[i].unit) && end != num) {
			if (v > UINT64_MAX / units[i].mult)
				return false;
			*ns = v * units[i].mult;
			return true;
		}
	return false;
}

static bool parse_probability(const char *s, size_t len, uint64_t *below)
{
	char num[32];
	char *end;

	if (!len || len >= sizeof(num) ||
	    !(s[0] == '.' || (s[0] >= '0' && s[0] <= '9')))
		return false;
	memcpy(num, s, len);
	num[len] = '\0';
	double p = strtod(num, &end);

	if (*end || !(p >= 0.0 && p <= 1.0))
		return false;
	*below = (uint64_t)(p * 9007199254740992.0); /* p * 2^53 */
	return true;
}

static void why_fmt(char *why, size_t wlen, const char *what, const char *f,
		    size_t flen)
{
	if (why && wlen)
		snprintf(why, wlen, "%s at '%.*s'", what, (int)flen, f);
}

/* One `op:kind[:probability]`. */
static int parse_rule(const char *f, size_t flen, struct rule *r, char *why,
		      size_t wlen)
{
	const char *c1 = memchr(f, ':', flen);
	const char *kind, *c2;
	size_t klen;

	if (!c1) {
		why_fmt(why, wlen, "expected op:kind[:probability]", f, flen);
		return -EINVAL;
	}
	r->op = opcode_by_name(f, (size_t)(c1 - f));
	if (r->op == -2) {
		if (why && wlen)
			snprintf(why, wlen,
				 "unknown op '%.*s' at '%.*s' (ops: recv, "
				 "send, accept, connect, read, write, ... as "
				 "keel_opcode_name() spells them, or *)",
				 (int)(c1 - f), f, (int)flen, f);
		return -EINVAL;
	}
	kind = c1 + 1;
	c2 = memchr(kind, ':', flen - (size_t)(kind - f));
	klen = c2 ? (size_t)(c2 - kind) : flen - (size_t)(kind - f);
	r->below = 1ull << 53;
	if (c2 && !parse_probability(c2 + 1, flen - (size_t)(c2 + 1 - f),
				     &r->below)) {
		why_fmt(why, wlen, "probability must be a number in [0,1]", f,
			flen);
		return -EINVAL;
	}
	r->err = 0;
	r->delay_ns = 0;
	if (klen == 5 && !memcmp(kind, "short", 5)) {
		r->kind = RULE_SHORT;
	} else if (klen == 7 && !memcmp(kind, "reorder", 7)) {
		r->kind = RULE_REORDER;
	} else if (klen > 6 && !memcmp(kind, "delay=", 6)) {
		r->kind = RULE_DELAY;
		if (!parse_duration(kind + 6, klen - 6, &r->delay_ns)) {
			why_fmt(why, wlen,
				"delay needs a duration like 5ms (ns, us, ms, "
				"s)",
				f, flen);
			return -EINVAL;
		}
	} else {
		r->kind = RULE_ERROR;
		for (size_t i = 0;
		     i < sizeof(shorthands) / sizeof(shorthands[0]); i++)
			if (strlen(shorthands[i].name) == klen &&
			    !memcmp(shorthands[i].name, kind, klen))
				r->err = shorthands[i].err;
		if (!r->err && klen && kind[0] == 'E')
			r->err = errno_by_name(kind, klen);
		if (!r->err) {
			if (why && wlen)
				snprintf(
				    why, wlen,
				    "unknown kind '%.*s' at '%.*s' (kinds: "
				    "reset, pipe, again, nobufs, io, "
				    "nomem, canceled, emfile, refused, "
				    "timedout, an errno name like "
				    "ECONNRESET, short, delay=5ms, "
				    "reorder)",
				    (int)klen, kind, (int)flen, f);
			return -EINVAL;
		}
		if (r->op == IORING_OP_CLOSE) {
			why_fmt(why, wlen,
				"a close cannot fail (the real one frees the "
				"descriptor whatever it reports): only delay "
				"or reorder",
				f, flen);
			return -EINVAL;
		}
	}
	return 0;
}

/* The whole spec into a new rule array (*out, *n); nothing else changes. */
static int parse_spec(const char *spec, struct rule **out, unsigned *n,
		      char *why, size_t wlen)
{
	unsigned count = 1;
	struct rule *rules;

	for (const char *p = spec; *p; p++)
		count += *p == ',';
	rules = calloc(count, sizeof(*rules));
	if (!rules)
		return -ENOMEM;
	*n = 0;
	for (const char *f = spec;;) {
		const char *end = strchr(f, ',');
		size_t flen = end ? (size_t)(end - f) : strlen(f);

		if (flen) {
			int err = parse_rule(f, flen, &rules[*n], why, wlen);

			if (err) {
				free(rules);
				return err;
			}
			(*n)++;
		}
		if (!end)
			break;
		f = end + 1;
	}
	if (!*n) {
		free(rules);
		rules = NULL;
	}
	*out = rules;
	return 0;
}

/*
 * Whether the kernel honours IORING_NOP_INJECT_RESULT (6.10): a NOP that
 * must complete with -EPIPE, on a ring of its own (the loop's CQ is the
 * ledger's). Asked once per process. Another backend must have it.
 */
static int kernel_has_inject(void)
{
	static int known; /* 0: not asked; 1: yes; -1: no */
	int k = __atomic_load_n(&known, __ATOMIC_RELAXED);
	struct io_uring ring;
	struct io_uring_cqe *cqe;

	if (k)
		return k > 0;
	k = -1;
	if (!io_uring_queue_init(2, &ring, 0)) {
		struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);

		keel__ring_mapped();
		io_uring_prep_nop(sqe);
		sqe->rw_flags = IORING_NOP_INJECT_RESULT;
		sqe->len = (unsigned)-EPIPE;
		if (io_uring_submit_and_wait(&ring, 1) == 1 &&
		    !io_uring_peek_cqe(&ring, &cqe) && cqe->res == -EPIPE)
			k = 1;
		keel__ring_unmapped();
		io_uring_queue_exit(&ring);
	}
	__atomic_store_n(&known, k, __ATOMIC_RELAXED);
	return k > 0;
}

/* `opc`: the op's own opcode (an error has turned the SQE into a NOP). */
static void count_fault(struct keel__io *io, uint64_t ud, unsigned opc,
			int kind, uint64_t value)
{
	io->count.faults_injected++;
	if (__builtin_expect(io->core.trace != NULL, 0)) {
		uint32_t index = (uint32_t)(ud >> 2) & 0x3fffffffu;
		struct keel__ledger *l = &io->ledger;
		uint32_t task = UINT32_MAX;

		if (index < (l->nchunks << KEEL__OP_CHUNK_SHIFT)) {
			struct keel__op *op = keel__op_at(l, index);

			if (op->flags & KEEL__OP_INUSE)
				task = op->task->id;
		}
		keel__trace_emit(&io->core, KEEL_EV_FAULT, (uint8_t)opc, task,
				 (uint64_t)kind, value);
	}
}

/* Whether a draw at probability `below` / 2^53 fires. */
static bool draw(struct keel__inject *inj, uint64_t below)
{
	return (keel__rand64(&inj->rng) >> 11) < below;
}

static void make_error(struct io_uring_sqe *sqe, int err)
{
	uint64_t ud = sqe->user_data;
	uint8_t link = sqe->flags & (IOSQE_IO_LINK | IOSQE_IO_HARDLINK);

	io_uring_prep_nop(sqe);
	sqe->rw_flags = IORING_NOP_INJECT_RESULT;
	sqe->len = (unsigned)-err;
	sqe->flags = link;
	sqe->user_data = ud;
}

static bool can_short(const struct io_uring_sqe *sqe)
{
	switch (sqe->opcode) {
	case IORING_OP_SEND:
	case IORING_OP_RECV:
	case IORING_OP_READ:
	case IORING_OP_WRITE:
		return sqe->len > 1 && !(sqe->flags & IOSQE_BUFFER_SELECT);
	default:
		return false;
	}
}

/* A slot whose request was taken away: completes unseen. */
static void make_hole(struct keel__io *io, struct io_uring_sqe *sqe)
{
	io_uring_prep_nop(sqe);
	sqe->flags =
	    io->features & IORING_FEAT_CQE_SKIP ? IOSQE_CQE_SKIP_SUCCESS : 0;
	sqe->user_data = KEEL__UD_INTERNAL;
}

static struct held *hold(struct keel__io *io, unsigned n, uint64_t due)
{
	struct keel__inject *inj = io->inject;
	struct held *h;

	if (inj->nheld == inj->cap) {
		unsigned cap = inj->cap ? 2 * inj->cap : 16;
		struct held *v = realloc(inj->held, cap * sizeof(*v));

		if (!v)
			return NULL;
		inj->held = v;
		inj->cap = cap;
	}
	h = &inj->held[inj->nheld++];
	h->due_ns = due;
	h->flush = inj->flushes;
	h->n = n;
	return h;
}

/* The SQE at queue position `pos`. */
static struct io_uring_sqe *sqe_at(struct io_uring *ring, unsigned pos)
{
	return &ring->sq.sqes[pos & ring->sq.ring_mask];
}

/*
 * A cancel for held ops (by user_data, or every op on a descriptor, as
 * keel_close() sends): they are released now as cancelled. Submitted
 * after a close, a held op could otherwise reach a new file that reused
 * the descriptor.
 */
static void cancel_held(struct keel__inject *inj,
			const struct io_uring_sqe *cancel)
{
	bool by_fd = cancel->cancel_flags & IORING_ASYNC_CANCEL_FD;
	bool fixed = cancel->cancel_flags & IORING_ASYNC_CANCEL_FD_FIXED;

	for (unsigned i = 0; i < inj->nheld; i++) {
		struct held *h = &inj->held[i];
		const struct io_uring_sqe *s = &h->sqe[0];

		if (by_fd ? s->fd != cancel->fd ||
				!(s->flags & IOSQE_FIXED_FILE) != !fixed
			  : s->user_data != cancel->addr)
			continue;
		make_error(&h->sqe[0], ECANCELED);
		h->due_ns = 0;
		h->flush = 0;
		if (!by_fd)
			return;
	}
}

/* Apply the rules to the SQEs queued since the last walk. */
static void walk(struct keel__io *io, uint64_t *now)
{
	struct keel__inject *inj = io->inject;
	struct io_uring *ring = &io->ring;
	unsigned head = ring->sq.sqe_head, tail = ring->sq.sqe_tail;
	unsigned pos = inj->walked;

	if (pos - head > tail - head)
		pos = head;
	for (; pos != tail; pos++) {
		struct io_uring_sqe *sqe = sqe_at(ring, pos);
		unsigned role = sqe->user_data & KEEL__UD_ROLE_MASK;
		unsigned opc = sqe->opcode;
		uint64_t delay = 0;
		int kind = 0;

		if (role != KEEL__UD_MAIN) {
			if (inj->nheld && opc == IORING_OP_ASYNC_CANCEL)
				cancel_held(inj, sqe);
			continue;
		}
		if (opc >= 128 || !(inj->ops[opc / 64] >> (opc % 64) & 1))
			continue;
		for (unsigned i = 0; i < inj->nrules; i++) {
			const struct rule *r = &inj->rules[i];

			if (r->op != (int)opc && r->op != ANY_OP)
				continue;
			/* `*` never fails a close (see the top). */
			if (r->kind == RULE_ERROR && opc == IORING_OP_CLOSE)
				continue;
			if (r->kind == RULE_SHORT && !can_short(sqe))
				continue;
			if (!draw(inj, r->below))
				continue;
			if (r->kind == RULE_ERROR) {
				make_error(sqe, r->err);
				count_fault(io, sqe->user_data, opc, RULE_ERROR,
					    (uint64_t)r->err);
				break;
			}
			if (r->kind == RULE_SHORT) {
				unsigned len =
				    1 + (unsigned)(keel__rand64(&inj->rng) %
						   (sqe->len - 1));

				sqe->len = len;
				count_fault(io, sqe->user_data, opc, RULE_SHORT,
					    len);
				continue;
			}
			/* delay / reorder: the longest wins */
			if (!kind || r->delay_ns > delay) {
				kind = r->kind;
				delay = r->delay_ns;
			}
		}
		if (!kind)
			continue;
		/* Hold the op with its linked timeout: at most two SQEs. */
		unsigned n = 1;

		if (sqe->flags & (IOSQE_IO_LINK | IOSQE_IO_HARDLINK)) {
			if (pos + 1 == tail ||
			    (sqe_at(ring, pos + 1)->flags &
			     (IOSQE_IO_LINK | IOSQE_IO_HARDLINK)))
				continue;
			n = 2;
		}
		if (!*now)
			*now = keel__clock_now();
		struct held *h = hold(io, n, *now + delay);

		if (!h)
			continue;
		for (unsigned i = 0; i < n; i++) {
			h->sqe[i] = *sqe_at(ring, pos + i);
			make_hole(io, sqe_at(ring, pos + i));
		}
		count_fault(io, h->sqe[0].user_data, opc, kind, delay);
		pos += n - 1;
	}
	inj->walked = tail;
}

/* Queue the held ops that are due (all of them when draining). */
static void release(struct keel__io *io, uint64_t *now)
{
	struct keel__inject *inj = io->inject;
	bool all = inj->draining || io->closing;
	unsigned kept = 0;

	if (!*now)
		*now = keel__clock_now();
	for (unsigned i = 0; i < inj->nheld; i++) {
		struct held *h = &inj->held[i];

		if ((all || (h->flush < inj->flushes && h->due_ns <= *now)) &&
		    io_uring_sq_space_left(&io->ring) >= h->n) {
			for (unsigned k = 0; k < h->n; k++)
				*io_uring_get_sqe(&io->ring) = h->sqe[k];
			continue;
		}
		inj->held[kept++] = *h;
	}
	inj->nheld = kept;
	inj->walked = io->ring.sq.sqe_tail;
}

/* Walk, release what is due, and set the timer for what is left. Returns
 * the time until the next held op is due, or -1. */
static int64_t flush(struct keel__io *io)
{
	struct keel__inject *inj = io->inject;
	struct keel_loop *loop = (struct keel_loop *)io;
	uint64_t now = 0, next = UINT64_MAX;

	inj->flushes++;
	walk(io, &now);
	if (!inj->nheld)
		return -1;
	release(io, &now);
	for (unsigned i = 0; i < inj->nheld; i++)
		if (inj->held[i].due_ns < next)
			next = inj->held[i].due_ns;
	if (next == UINT64_MAX) {
		keel_timer_cancel(loop, &inj->timer);
		return -1;
	}
	keel_timer_arm(loop, &inj->timer, next);
	return next > now ? (int64_t)(next - now) : 0;
}

static void timer_fired(struct keel_loop *loop, struct keel_timer *timer,
			void *arg)
{
	struct keel__io *io = keel__io_of(loop);

	(void)timer;
	(void)arg;
	if (io->inject)
		flush(io);
}

static void inject_free(struct keel__io *io)
{
	struct keel__inject *inj = io->inject;

	if (keel_timer_armed(&inj->timer))
		keel_timer_cancel((struct keel_loop *)io, &inj->timer);
	free(inj->rules);
	free(inj->held);
	free(inj);
	io->inject = NULL;
	keel__io_enter_update(io);
}

int64_t keel__inject_enter(struct keel__io *io, unsigned want, int64_t wait_ns)
{
	struct keel__inject *inj = io->inject;
	int64_t next = flush(io);

	if (inj->draining && !inj->nheld) {
		inject_free(io);
		return wait_ns;
	}
	/* The enter must not sleep past a held op's time. */
	if (want && next >= 0 && (wait_ns < 0 || wait_ns > next))
		wait_ns = next;
	return wait_ns;
}

void keel__inject_fini(struct keel__io *io)
{
	if (io->inject)
		inject_free(io);
}

int keel__inject_set(struct keel__io *io, const char *spec, uint64_t seed,
		     char *why, size_t wlen)
{
	struct keel__inject *inj = io->inject;
	struct rule *rules = NULL;
	unsigned n = 0;
	int err;

	if (why && wlen)
		why[0] = '\0';
	if (spec && *spec) {
		err = parse_spec(spec, &rules, &n, why, wlen);
		if (err)
			return err;
	}
	if (n && !io->backend && !kernel_has_inject()) {
		free(rules);
		if (why && wlen)
			snprintf(why, wlen,
				 "this kernel does not honour "
				 "IORING_NOP_INJECT_RESULT (needs Linux "
				 "6.10)");
		return -EOPNOTSUPP;
	}
	if (!n) {
		/* Off: what is held still goes out, then the state goes. */
		if (!inj)
			return 0;
		free(inj->rules);
		inj->rules = NULL;
		inj->nrules = 0;
		memset(inj->ops, 0, sizeof(inj->ops));
		inj->draining = true;
		if (!inj->nheld)
			inject_free(io);
		return 0;
	}
	if (!inj) {
		inj = calloc(1, sizeof(*inj));
		if (!inj) {
			free(rules);
			return -ENOMEM;
		}
		keel_timer_init(&inj->timer, timer_fired, NULL);
		inj->walked = io->ring.sq.sqe_head;
		io->inject = inj;
		keel__io_enter_update(io);
	}
	free(inj->rules);
	inj->rules = rules;
	inj->nrules = n;
	inj->draining = false;
	inj->rng = seed;
	memset(inj->ops, 0, sizeof(inj->ops));
	for (unsigned i = 0; i < n; i++) {
		if (rules[i].op == ANY_OP) {
			inj->ops[0] = inj->ops[1] = ~0ull;
			break;
		}
		inj->ops[rules[i].op / 64] |= 1ull << (rules[i].op % 64);
	}
	return 0;
}

int keel__inject_check(const char *spec, char *why, size_t wlen)
{
	struct rule *rules = NULL;
	unsigned n = 0;
	int err = spec && *spec ? parse_spec(spec, &rules, &n, why, wlen) : 0;

	free(rules);
	return err;
}

int keel_loop_inject_faults(struct keel_loop *loop, const char *spec,
			    uint64_t seed)
{
	return keel__inject_set(keel__io_of(loop), spec, seed, NULL, 0);
}

/*
 * KEEL_FAULTS / KEEL_FAULTS_SEED at keel_loop_create(). A bad spec fails
 * the create: a run believed to be under faults that is not would be
 * worse than no run. A good one says so on stderr, once per process.
 */
int keel__inject_env(struct keel__io *io)
{
	static uint64_t loops; /* loops given faults: each its own stream */
	static int said;
	const char *spec = getenv("KEEL_FAULTS");
	const char *seed_s = getenv("KEEL_FAULTS_SEED");
	uint64_t seed = 0x6b65656c; /* fixed: runs repeat */
	char why[320];
	int err;

	if (!spec || !*spec)
		return 0;
	if (seed_s && *seed_s) {
		char *end;

		seed = strtoull(seed_s, &end, 0);
		if (*end) {
			fprintf(stderr,
				"keel: KEEL_FAULTS_SEED: '%s' is not a "
				"number\n",
				seed_s);
			return -EINVAL;
		}
	}
	uint64_t nth = __atomic_fetch_add(&loops, 1, __ATOMIC_RELAXED);
	uint64_t mix = nth * 0x9e3779b97f4a7c15ull;

	err = keel__inject_set(io, spec, seed ^ keel__rand64(&mix), why,
			       sizeof(why));
	if (err) {
		fprintf(stderr, "keel: KEEL_FAULTS: %s\n",
			why[0] ? why : strerror(-err));
		return err;
	}
	if (!__atomic_exchange_n(&said, 1, __ATOMIC_RELAXED))
		fprintf(
		    stderr,
		    "keel: KEEL_FAULTS: injecting faults '%s' (seed %llu)\n",
		    spec, (unsigned long long)seed);
	return 0;
}
