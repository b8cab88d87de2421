/* SPDX-License-Identifier: MIT */
/*
 * io.h: private io layer: the ring and the op ledger.
 *
 * Every request keel puts on the ring is an op in the ledger. Its user_data
 * encodes the op's ledger index, a generation and the role of the CQE:
 *
 *	63            32 31               2 1    0
 *	+---------------+------------------+------+
 *	|  generation   |   ledger index   | role |
 *	+---------------+------------------+------+
 *
 * A CQE whose generation does not match the slot's is stale: counted and
 * dropped, never delivered. An op stays in the ledger (and its task's frame
 * stays allocated) until every CQE the kernel owes for it has arrived.
 * (Helper requests, and the poll of an idle stream, are not ops: see
 * KEEL__UD_INTERNAL.)
 */
#ifndef KEEL_IO_PRIV_H
#define KEEL_IO_PRIV_H

#include "backend.h"
#include "compat.h"
#include "core.h"

#include <keel/io.h>
#include <keel/loop.h>

/* CQE roles (user_data bits 1:0). KEEL__UD_INTERNAL with an address above
 * the role bits is a parked stream's poll (io/stream.c), which holds no op;
 * with KEEL__UD_HIBERNATE too, a hibernated descriptor's poll or cancel
 * (io/hibernate.c: its record's generation and index above bit 2;
 * generation 0: the loop's epoll set's polls; a stream's address,
 * 8-aligned, never has bit 2). */
#define KEEL__UD_MAIN	   0u /* the op's own CQE */
#define KEEL__UD_TIMEOUT   1u /* its linked timeout's CQE */
#define KEEL__UD_INTERNAL  2u /* a helper request (cancel): only counted */
#define KEEL__UD_WAKE	   3u /* a doorbell (MSG_RING) from another thread */
#define KEEL__UD_ROLE_MASK 3u
#define KEEL__UD_HIBERNATE 4u
/* The loop's wait timer (keel__io_wait_timer()): generation 0 of the
 * hibernate space, whose records 0 and 1 are the epoll set's polls; its
 * arm's generation (2 and up, below 2^29) in the record's place. */
#define KEEL__UD_WAIT_TIMER(gen)                                               \
	((uint64_t)(gen) << 3 | KEEL__UD_HIBERNATE | KEEL__UD_INTERNAL)
#define KEEL__WAIT_TIMER_GEN0 2u
static inline bool keel__ud_is_wait_timer(uint64_t ud)
{
	return ud >> 32 == 0 && (uint32_t)ud >> 3 >= KEEL__WAIT_TIMER_GEN0;
}

/* What an op is, for the completion path. */
enum keel__op_kind {
	KEEL__OP_KERNEL,   /* one kernel request, result = cqe->res */
	KEEL__OP_SEND_ALL, /* send, resubmitted until all is sent */
	KEEL__OP_USER,	   /* a user-space wait (a sleep): no kernel CQE */
	KEEL__OP_CLEANUP,  /* like KERNEL, but starts under a cancelled token
			    * too (close: cleanup must always work) */
	KEEL__OP_STREAM,   /* a multishot stream (io/stream.c): every CQE
			    * goes to its handler; the op lives as long as
			    * the stream is open, armed or not */
};

/* Op state bits (struct keel__op.flags). */
#define KEEL__OP_INUSE	     0x01 /* slot holds a live op */
#define KEEL__OP_CANCEL_SENT 0x02 /* an ASYNC_CANCEL was queued for it */
#define KEEL__OP_TIMED_OUT   0x04 /* its linked timeout fired (-ETIME) */
#define KEEL__OP_LINKED	     0x08 /* carries a linked timeout */
#define KEEL__OP_ZEROCOPY                                                      \
	0x10 /* send_all with SEND_ZC: each send owes a                        \
	      * notification CQE too */

/* sendmsg_all as a vectored SEND or SEND_ZC (6.17). */
#define KEEL__OP_VECTORED 0x20

struct keel__op;
struct keel__io;
typedef void (*keel__op_cancel_fn)(struct keel__op *op);
/* A stream's CQE handler, and what it does when its task cancels or exits. */
typedef void (*keel__stream_cqe_fn)(struct keel__io *io, struct keel__op *op,
				    int res, unsigned cqe_flags);
typedef void (*keel__stream_cancel_fn)(struct keel__io *io,
				       struct keel__op *op);

struct keel__op {
	union {
		struct keel_task *task;	    /* owner, while in use */
		struct keel__op *free_next; /* the free list, while free */
	};
	/* The user_data of its own CQE, kept whole: generation << 32 |
	 * index << 2 (role KEEL__UD_MAIN), so that a submit stores it with
	 * one load and a CQE is matched by one compare, its role with it.
	 * A release moves the generation on. */
	uint64_t ud;
	uint32_t next; /* the task's op list (index + 1, 0 = tail) */
	uint32_t prev; /* the task's op list (index + 1, 0 = head) */
	uint8_t kind;
	uint8_t opcode;	 /* IORING_OP_*, for dumps and traces */
	uint8_t pending; /* CQEs the kernel still owes */
	uint8_t flags;
	int32_t res;
	int32_t fd;
	uint32_t index;	   /* own ledger index */
	uint64_t start_ns; /* the loop's clock at submit (for dumps) */
	uint64_t trace_ns; /* the trace clock at submit, 0: not traced */
	/* The linked timeout's absolute deadline; read by the kernel. */
	struct __kernel_timespec ts;
	union {
		struct {
			const char *buf;
			struct msghdr *msg; /* sendmsg_all: iovecs */
			size_t len;
			size_t done;
			int msg_flags;
		} send_all;
		struct {
			struct keel_timer timer;
			keel__op_cancel_fn cancel;
		} user;
		struct {
			void *stream;
			keel__stream_cqe_fn on_cqe;
			keel__stream_cancel_fn on_cancel;
		} stream;
	} u;
};

#define KEEL__OP_CHUNK_SHIFT 8
#define KEEL__OP_CHUNK	     (1u << KEEL__OP_CHUNK_SHIFT)

/*
 * Latency of ops by opcode, submit to last CQE, on the loop's clock (set
 * once per turn, so a figure is what the loop saw, to the turn), for the
 * metrics (keel_metrics_render): log2 buckets, bucket k counting latencies
 * in (2^(k-1), 2^k] x KEEL__LAT_UNIT_NS (bucket 0: up to the unit), the
 * last one everything above. One table per opcode, allocated when the
 * first op of that opcode completes. Only the loop's thread writes them,
 * as single-writer relaxed atomics (a load and a store, no locked add), so
 * that a scrape from another thread reads each count whole.
 */
#define KEEL__LAT_UNIT_SHIFT 10 /* 1024 ns */
#define KEEL__LAT_BUCKETS    26 /* le 2^10 .. 2^34 ns (17 s), then +Inf */
#define KEEL__LAT_OPCODES    64 /* IORING_OP_* below this are counted */

struct keel__op_lat {
	uint64_t bucket[KEEL__LAT_BUCKETS]; /* each bucket's own count */
	uint64_t sum_ns;
};

/*
 * The completions of one reap not yet added to the tables: a run of ops of
 * one opcode submitted in one turn. The loop's clock moves once per turn,
 * so all of them have one latency: what counts them is a compare and an
 * increment per op, not a bucket's computation and two stores (some 15
 * instructions of a NOP's 300). The run's first op is counted at once;
 * the others are added when an op of another key completes, and at the
 * end of every reap (keel__io_reap()), so a scrape misses at most the reap
 * under way, as before.
 */
struct keel__op_lat_run {
	uint64_t start_ns; /* the ops' start (loop clock) */
	uint32_t n;	   /* ops of the run not yet counted */
	uint8_t opcode;
};

struct keel__ledger {
	/* KEEL__OP_CHUNK ops each, never moved (trailing free ones are
	 * unmapped: keel__ledger_trim) */
	struct keel__op **chunks;
	/* free and inuse, which every op moves together, are not adjacent:
	 * GCC would otherwise pack their two updates into one vector store
	 * (some 6 instructions where 3 do). The free list is of addresses,
	 * not indexes: taking and giving back a slot then computes none (a
	 * slot's address from its index is some 7 instructions). */
	struct keel__op *free; /* NULL: none */
	uint32_t nchunks;
	/* Ops the kernel (or a timer) still owns, and parked streams' polls,
	 * which the kernel owns without an op (io/stream.c). */
	uint32_t inuse;
	/* The first generation of a chunk's ops (see keel__ledger_trim). */
	uint32_t gen_floor;
	/* Requests that found no SQE: each goes out before the next enter
	 * (keel__io_cancels_retry). */
	struct keel__later *later;
	uint32_t nlater, later_cap;
};

/* A request waiting for an SQE: a cancel of the request with user_data
 * `ud`, or (`nop`) a NOP whose CQE carries `ud`. */
struct keel__later {
	uint64_t ud;
	bool nop;
};

struct keel__io_counters {
	/* enters and sqes, which every enter moves together, are not
	 * adjacent: GCC would pack the two adds into vector instructions
	 * (six, where two do). */
	uint64_t enters;
	uint64_t cqes;
	uint64_t sqes;
	uint64_t stale_cqes;
	uint64_t internal_cqes;
	uint64_t sq_full;
	uint64_t cq_overflows;
	uint64_t zc_sends;	   /* SEND_ZC requests */
	uint64_t zc_copied;	   /* ... whose notification said "copied" */
	uint64_t multishot_rearms; /* streams re-armed after a final CQE */
	uint64_t enobufs;	   /* recv streams stopped by an empty ring */
	uint64_t accept_backoffs;  /* accept streams paused by EMFILE & co */
	uint64_t idle_polls;	   /* idle recv streams parked on a poll */
	uint64_t bufs_lent;	   /* buffers handed to tasks */
	uint64_t faults_injected;  /* io/inject.c */
	uint64_t ops_refused;	   /* io/restrict.c */
	uint64_t vec_sends;	   /* sendmsg_all as a vectored SEND */
};

/* A queued stream item: a received chunk, or an accepted fd (len). */
struct keel__chunk {
	struct keel__chunk *next;
	char *data;
	uint32_t len;
	uint16_t bid;
	uint16_t ring; /* the buffer ring's index in the loop, + 1; 0: none */
};

/* A hibernated descriptor (io/hibernate.c): 32 bytes, in io->hib. */
struct keel__hib {
	keel_hibernate_fn fn; /* NULL: free */
	void *arg;
	int32_t fd;
	uint32_t gen;	/* in its id and its poll's user_data; never 0 */
	uint32_t next;	/* the free list: index + 1, 0 = none */
	uint32_t flags; /* KEEL__HIB_* */
};

#define KEEL__HIB_CANCEL                                                       \
	0x1u /* keel_hibernate_cancel(): wakes with                            \
	      * -ECANCELED whatever the poll says */
/* Watched in the loop's epoll set, not by a poll of its own. */
#define KEEL__HIB_SET 0x2u

/* Chunk nodes come from a per-loop free list, grown in blocks. */
struct keel__chunk_pool {
	struct keel__chunk *free;
	void **blocks;
	uint32_t nblocks;
};

/* A registered-buffer table (io/fixedbuf.c): what keel_buffers_register()
 * gave the kernel, kept to check fixed ops before they take an SQE; the
 * epoll backend and the simulated kernel keep one each too. */
struct keel__fixedbufs {
	struct iovec *iov; /* NULL: none registered */
	uint32_t n;
};

struct keel__io {
	struct keel__core core; /* first: see core.h */
	struct io_uring ring;
	/* Who executes the ring's SQEs: NULL for the kernel (backend.h). */
	struct keel__backend *backend;
	bool enter_slow; /* backend or inject set: keel__io_enter_slow() */
	struct keel__ledger ledger;
	/* keel_op_timeout(): a deadline for the next op of this task. */
	struct keel_task *timeout_task;
	uint64_t timeout_ns;
	/* The kernel enforces ring restrictions (io/restrict.c): ops are
	 * checked against ops_allowed before they take an SQE. */
	bool restricted;
	unsigned setup_flags;
	unsigned features;
	unsigned sq_entries;
	unsigned cq_entries;
	uint64_t ops_supported[2]; /* bit per IORING_OP_* */
	char downgrades[320];	   /* why flags were dropped */
	int event_fd; /* for hosts' epoll (keel_loop_fd); -1 until asked */
	bool ring_fd_registered;
	bool ring_ready;
	/* A small SQ that grows when it first fills (io/ring.c): the
	 * entries to grow to, 0 once grown (or never small). ring_lost: a
	 * resize moved the rings where they could not be mapped (-errno). */
	unsigned grow_sq;
	int ring_lost;
	bool closing; /* the loop is being destroyed: streams close */
	bool reaping; /* in keel__io_reap(): buffer counts are stale */
	/* Some buffer ring has had starved streams since the last settle:
	 * only then has keel__bufrings_settle() anything to do. */
	bool bufrings_starved;
	struct keel__io_counters count;
	/* Op latency by opcode (see struct keel__op_lat); NULL: none yet. */
	struct keel__op_lat *op_lat[KEEL__LAT_OPCODES];
	struct keel__op_lat_run lat_run;
	struct keel__chunk_pool chunks;
	/* Idle recv streams (io/stream.c): a periodic sweep, armed while
	 * some recv stream has its multishot recv armed, parks the ones
	 * that received nothing since the previous sweep on a poll. */
	bool idle_poll;	  /* not KEEL_LOOP_NO_IDLE_POLL, and POLL_ADD runs */
	uint64_t idle_ns; /* the sweep's period (keel_loop_opts.idle_ms) */
	uint32_t recv_streams; /* recv streams open */
	struct keel_timer idle_sweep;
	/* Each task's parked streams (holding no op), by task id: NULL or
	 * parked_cap lists, grown as tasks with higher ids park. */
	struct keel__list *parked;
	uint32_t parked_cap;
	uint32_t parked_polls; /* parked streams (counted in ledger.inuse) */
	/* Hibernated descriptors (io/hibernate.c): a table mapped and grown
	 * with mremap (only the pages records touched are resident), used up
	 * to hib_used, freed records on a list; hib_live of them are watched.
	 * hib_closed: the loop is going, keel_hibernate() refuses. hib_ep:
	 * the epoll set that watches sockets (-1 until the first), armed: its
	 * multishot poll is in the kernel, more: so is a one-shot poll for
	 * events a drain left over. */
	struct keel__hib *hib;
	uint32_t hib_cap, hib_used, hib_free, hib_live;
	bool hib_closed;
	bool hib_ep_armed, hib_ep_more;
	int hib_ep;
	/* The wait timer (keel__io_wait_timer()): the armed timeout's
	 * absolute deadline (0: none armed), its generation, and its
	 * timespec, which the kernel reads when it takes the SQE (so at
	 * destroy the ring's exit cancels the timeout: nothing to drain). */
	uint64_t wait_deadline;
	uint32_t wait_gen;
	struct __kernel_timespec wait_ts;
	/* Provided-buffer rings (io/bufring.c), by index (bgid). */
	struct keel_bufring **bufrings;
	uint32_t nbufrings;
	uint32_t zc_threshold; /* keel_send_zc() copies below this */
	uint32_t files;	       /* direct descriptor slots registered */
	struct keel__fixedbufs fixedbufs; /* keel_buffers_register() */
	/* sendmsg_all may go as a vectored SEND (io/ops.c): until the
	 * kernel refuses one (before 6.17), or KEEL_SEND_VEC=0. */
	bool send_vec;
	/* Fault injection (io/inject.c): NULL when off, the usual case. */
	struct keel__inject *inject;
	/* Ring restrictions (io/restrict.c). restrict_ops: the KEEL_OPS_*
	 * asked for (KEEL_LOOP_RESTRICT or KEEL_RESTRICT), 0: none. */
	unsigned restrict_ops;
	uint32_t regs_allowed;	 /* bit per IORING_REGISTER_* */
	uint64_t ops_allowed[2]; /* bit per IORING_OP_* */
};

static inline struct keel__io *keel__io_of(struct keel_loop *loop)
{
	return (struct keel__io *)loop;
}

static inline struct keel__op *keel__op_at(struct keel__ledger *l,
					   uint32_t index)
{
	return &l->chunks[index >> KEEL__OP_CHUNK_SHIFT]
			 [index & (KEEL__OP_CHUNK - 1)];
}

static inline uint64_t keel__op_ud(const struct keel__op *op, unsigned role)
{
	return op->ud | role;
}

/* The op's generation (the high half of its user_data). */
static inline uint32_t keel__op_gen(const struct keel__op *op)
{
	return (uint32_t)(op->ud >> 32);
}

/* Give a slot its index, in generation `gen`. */
static inline void keel__op_set_id(struct keel__op *op, uint32_t index,
				   uint32_t gen)
{
	op->index = index;
	op->ud = (uint64_t)gen << 32 | (uint64_t)index << 2;
}

/* Ring setup and teardown (io/ring.c). `backend` NULL: the kernel's
 * io_uring; otherwise the loop's ring belongs to it (torn down by fini). */
/* io/select.c: the loop's KEEL_BACKEND_* (or -EINVAL); the fallback line. */
int keel__backend_mode(const struct keel_loop_opts *opts);
void keel__backend_notice(const char *why);
int keel__io_init(struct keel__io *io, const struct keel_loop_opts *opts,
		  struct keel__backend *backend);
void keel__io_fini(struct keel__io *io);

/* Make sure `n` SQEs can be taken back to back (linked requests must be
 * adjacent): grows a small SQ, or submits what is queued, if the SQ has
 * less room. Growing moves the SQ (io/ring.c): an SQE taken before this
 * or keel__io_sqe() is not to be touched after either. */
void keel__io_reserve(struct keel__io *io, unsigned n);

/*
 * A free SQE or NULL (the SQ is full): io_uring_get_sqe() without its
 * tests of the ring's flags (some 8 instructions of an op's 100), which
 * keel's rings make constant: no IORING_SETUP_SQE128 (keel never asks for
 * it, nor do the backends), and the SQ head read with acquire as under
 * SQPOLL (the same move on x86, and correct without SQPOLL too).
 */
static inline struct io_uring_sqe *keel__sq_take(struct keel__io *io)
{
	struct io_uring_sq *sq = &io->ring.sq;
	unsigned head = io_uring_smp_load_acquire(sq->khead);
	unsigned tail = sq->sqe_tail;

	if (__builtin_expect(tail - head >= sq->ring_entries, 0))
		return NULL;
	sq->sqe_tail = tail + 1;
	return &sq->sqes[tail & sq->ring_mask];
}

/* A free SQE; submits first if the SQ is full. NULL if it stays full.
 * Inline: every op takes one; the full SQ is the rare case. */
struct io_uring_sqe *keel__io_sqe_full(struct keel__io *io);

static inline struct io_uring_sqe *keel__io_sqe(struct keel__io *io)
{
	struct io_uring_sqe *sqe = keel__sq_take(io);

	return __builtin_expect(sqe != NULL, 1) ? sqe : keel__io_sqe_full(io);
}

/* The eventfd the ring signals on every completion (created on first
 * use), or a negative errno. */
int keel__io_event_fd(struct keel__io *io);

/* Reset the eventfd's counter, if there is one. */
void keel__io_event_fd_drain(struct keel__io *io);

/* Tell ThreadSanitizer a ring was mapped / is about to be unmapped. */
void keel__ring_mapped(void);
void keel__ring_unmapped(void);

/* Submit what is queued; counts the enter. */
int keel__io_submit(struct keel__io *io);

/*
 * The one place that enters the backend: submit every queued SQE, then
 * wait for `want` CQEs at most `wait_ns` (0: do not wait; negative: no
 * limit). want == 0 && wait_ns == 0 only submits. Returns the SQEs
 * submitted or a negative errno (-ETIME: the wait ran out). Counts nothing.
 * Inline, and one flag for "a backend or fault injection", so that the
 * kernel's ring pays one predictable branch for the seam.
 */
int keel__io_enter_slow(struct keel__io *io, unsigned want, int64_t wait_ns);

/*
 * Submit and wait for `want` CQEs, without a limit, in one io_uring_enter
 * (io/ring.c): io_uring_submit_and_wait() without liburing's general
 * path (some 40 instructions a turn), where there is no SQPOLL.
 */
int keel__io_enter_wait(struct keel__io *io, unsigned want);

static inline int keel__io_enter_kernel(struct keel__io *io, unsigned want,
					int64_t wait_ns)
{
	struct io_uring *ring = &io->ring;
	struct __kernel_timespec ts;
	struct io_uring_cqe *cqe;

	if (wait_ns == 0)
		return want ? io_uring_submit_and_get_events(ring)
			    : io_uring_submit(ring);
	if (wait_ns < 0)
		return io->setup_flags & IORING_SETUP_SQPOLL
			   ? io_uring_submit_and_wait(ring, want)
			   : keel__io_enter_wait(io, want);
	ts.tv_sec = wait_ns / 1000000000;
	ts.tv_nsec = wait_ns % 1000000000;
	return io_uring_submit_and_wait_timeout(ring, &cqe, want, &ts, NULL);
}

/*
 * The loop's wait timer: one kernel timeout (IORING_OP_TIMEOUT, absolute,
 * CLOCK_MONOTONIC) kept armed for the loop's earliest deadline, so that a
 * blocking enter needs no timeout of its own: an enter with one arms and
 * cancels a kernel hrtimer every wait, which at one connection was some
 * 6 % of the server's CPU per request. true: a timeout that ends at or
 * before `deadline` (keel__clock_now()'s clock) is armed, or was queued
 * (removing a later one first); false: the SQ had no room, wait with a
 * timeout of the enter. keel__io_wait_timer_cqe(): its CQE, or a
 * superseded one's.
 */
bool keel__io_wait_timer(struct keel__io *io, uint64_t deadline);
void keel__io_wait_timer_cqe(struct keel__io *io, uint64_t ud);

/*
 * keel__io_enter() with the kernel's min-wait (io/ring.c): wait up to
 * `min_wait_ns` for `want` CQEs, then for the first one, at most `wait_ns`
 * (negative: no limit). Only where keel__io_has_min_wait().
 */
int keel__io_enter_min_wait(struct keel__io *io, unsigned want,
			    int64_t min_wait_ns, int64_t wait_ns);

static inline bool keel__io_has_min_wait(const struct keel__io *io)
{
	return (io->features & IORING_FEAT_MIN_TIMEOUT) && !io->enter_slow &&
	       !(io->setup_flags & IORING_SETUP_SQPOLL);
}

static inline int keel__io_enter(struct keel__io *io, unsigned want,
				 int64_t wait_ns)
{
	if (__builtin_expect(io->enter_slow, 0))
		return keel__io_enter_slow(io, want, wait_ns);
	return keel__io_enter_kernel(io, want, wait_ns);
}

/*
 * Fault injection (io/inject.c). keel__inject_enter(): called by
 * keel__io_enter() when io->inject is set, on the SQEs about to be
 * submitted; returns the wait, shortened to wake for a held-back op.
 * keel__inject_set(): a spec (NULL or "": off) and a seed; `why` gets a
 * one-line reason on error. keel__inject_env(): KEEL_FAULTS at loop
 * creation (prints its error). keel__inject_fini(): before the timers go.
 */
struct keel__inject;
int64_t keel__inject_enter(struct keel__io *io, unsigned want, int64_t wait_ns);
int keel__inject_set(struct keel__io *io, const char *spec, uint64_t seed,
		     char *why, size_t wlen);
int keel__inject_env(struct keel__io *io);
/* Whether `spec` parses (0 or -EINVAL with `why`), changing nothing. */
int keel__inject_check(const char *spec, char *why, size_t wlen);
void keel__inject_fini(struct keel__io *io);

/* io->backend, io->inject or the cancels waiting for an SQE changed. */
static inline void keel__io_enter_update(struct keel__io *io)
{
	io->enter_slow =
	    io->backend || io->inject || io->ledger.nlater || io->ring_lost;
}

/*
 * Ring restrictions (io/restrict.c). keel__restrict_plan(): what the
 * options (or KEEL_RESTRICT) ask for, before the ring is set up (-EINVAL:
 * bad options or variable). keel__restrict_apply(): on a ring set up with
 * IORING_SETUP_R_DISABLED, register the restrictions and enable it (on a
 * backend's ring: note that they do not apply). keel__restrict_refuse():
 * count a refused op or registration; returns -EACCES, the kernel's
 * answer. keel__restrict_describe(): the describe text's tail.
 */
int keel__restrict_plan(struct keel__io *io, const struct keel_loop_opts *opts);
int keel__restrict_apply(struct keel__io *io);
int keel__restrict_refuse(struct keel__io *io);
size_t keel__restrict_describe(const struct keel__io *io, char *buf,
			       size_t len);

/* Await `fd` readable (one POLL_ADD): for keel's own reads of descriptors
 * on rings that refuse READ (the runtime's signalfd, sched/runtime.c). */
int keel__poll_in(struct keel_task *t, int fd);

static inline bool keel__op_allowed(const struct keel__io *io, unsigned opcode)
{
	return opcode < 128 &&
	       (io->ops_allowed[opcode / 64] >> (opcode % 64) & 1);
}

/* io_uring_register() through the backend (see backend.h). */
int keel__io_register(struct keel__io *io, unsigned opcode, void *arg,
		      unsigned nr_args);

/* Ledger (io/ledger.c). */
int keel__ledger_init(struct keel__ledger *l);
void keel__ledger_fini(struct keel__ledger *l);
/* Give back the trailing chunks whose ops are all free (the first chunk
 * stays): after a peak, their memory goes back to the kernel. */
void keel__ledger_trim(struct keel__ledger *l);
/* Free the op latency tables (loop teardown). */
void keel__op_lat_fini(struct keel__io *io);

/* A chunk more of op slots, on the free list; -ENOMEM. */
int keel__ledger_grow(struct keel__ledger *l);

/*
 * A new op owned by `t`, linked into its op list, from the free slot that
 * the caller knows is there. Inline: on every op's path (keel__op_begin()),
 * where the call and its spills were a fifth of what the ledger costs a NOP.
 */
static inline struct keel__op *keel__op_take(struct keel__io *io,
					     struct keel_task *t, uint8_t kind,
					     uint8_t opcode)
{
	struct keel__ledger *l = &io->ledger;
	struct keel__op *op = l->free;

	l->free = op->free_next;
	l->inuse++;
	op->task = t;
	op->kind = kind;
	op->opcode = opcode;
	op->pending = 0;
	op->flags = KEEL__OP_INUSE;
	op->res = 0;
	op->fd = -1;
	op->start_ns = io->core.now;
	/* Its latency while tracing: see keel__op_new(), keel__op_commit(). */
	op->trace_ns = 0;
	/* Newest first on the task's list. */
	op->prev = 0;
	op->next = t->ops;
	if (t->ops)
		keel__op_at(l, t->ops - 1)->prev = op->index + 1;
	t->ops = op->index + 1;
	t->inflight++;
	return op;
}

/* keel__op_take(), growing the ledger first if no slot is free. NULL:
 * -ENOMEM. */
static inline struct keel__op *keel__op_new(struct keel__io *io,
					    struct keel_task *t, uint8_t kind,
					    uint8_t opcode)
{
	struct keel__op *op;

	if (__builtin_expect(!io->ledger.free, 0) &&
	    keel__ledger_grow(&io->ledger))
		return NULL;
	op = keel__op_take(io, t, kind, opcode);
	/* Its latency while tracing, on the trace's cheap clock (every kind
	 * of op: a sleep never goes through keel__op_commit()). */
	if (io->core.trace)
		op->trace_ns = keel__trace_clock();
	return op;
}

/*
 * keel__op_begin() beyond its fast path: every case, in its order. Returns
 * the SQE (the op in *opp), or NULL when the op cannot start: the await is
 * then complete with the error (keel__task_ready()), and *step holds what
 * the op function returns.
 */
struct io_uring_sqe *keel__op_begin_slow(struct keel_task *t, uint8_t opcode,
					 uint8_t kind, struct keel__op **opp,
					 int *step);

/*
 * Start an op of `t`: an op slot and its SQE. True in the common case
 * (nothing in core.op_slow: no token of the loop cancelled, no deadline
 * for the next op, no ring restrictions, no tracing; a free op slot and
 * SQE), told by one test of a word and two of the ledger and the SQ;
 * anything else is keel__op_begin_slow()'s, which checks it all again in
 * order (room for a linked timeout too, failures). Always inline: GCC would
 * otherwise make one copy per file, a call per op. It makes no call, so
 * that an op function's fast path saves no register.
 */
static inline __attribute__((always_inline)) bool
keel__op_begin(struct keel_task *t, uint8_t opcode, uint8_t kind,
	       struct keel__op **opp, struct io_uring_sqe **sqep)
{
	struct keel__io *io = keel__io_of(t->loop);

	if (__builtin_expect(!io->core.op_slow.any && io->ledger.free, 1) &&
	    (*sqep = keel__sq_take(io))) {
		*opp = keel__op_take(io, t, kind, opcode);
		return true;
	}
	return false;
}

/*
 * An op of `t` that ends at once, without reaching the kernel, still takes
 * the deadline keel_op_timeout() gave the op that follows it: drop it, so
 * that it does not land on a later op of the step.
 */
static inline void keel__op_timeout_drop(struct keel__io *io,
					 const struct keel_task *t)
{
	if (io->timeout_task == t)
		io->timeout_task = NULL;
}

/* A KEEL_FIXED_FD in sqe->fd: the index, and IOSQE_FIXED_FILE. */
static inline void keel__sqe_fixed_fd(struct io_uring_sqe *sqe)
{
	if (sqe->fd >= 0 && (sqe->fd & KEEL_FIXED_FD_BIT)) {
		sqe->fd &= ~KEEL_FIXED_FD_BIT;
		sqe->flags |= IOSQE_FIXED_FILE;
	}
}

/* Give `op` (its SQE: `sqe`) the deadline keel_op_timeout() set: a linked
 * timeout in the SQE after it (keel__op_begin() made room for it). */
void keel__op_link_deadline(struct keel__io *io, struct keel__op *op,
			    struct io_uring_sqe *sqe);

/* keel__op_commit() while tracing or with a deadline to link. */
int keel__op_commit_slow(struct keel_task *t, struct keel__op *op,
			 struct io_uring_sqe *sqe);

/*
 * Finish queuing an op begun with keel__op_begin(): set its user_data, link
 * the pending timeout if any, and suspend the task (returns KEEL_PENDING).
 * Tracing (the submit event, and the op's trace clock) and a deadline are a
 * tail call: the common case makes no call, so an op function saves no
 * register for one (some 10 instructions an op).
 */
static inline int keel__op_commit(struct keel_task *t, struct keel__op *op,
				  struct io_uring_sqe *sqe)
{
	struct keel__io *io = keel__io_of(t->loop);

	io_uring_sqe_set_data64(sqe, keel__op_ud(op, KEEL__UD_MAIN));
	keel__sqe_fixed_fd(sqe);
	op->pending = 1;
	/* Tracing, or a deadline to link (op_slow.any: one of them, or a
	 * cancelled token, which keel__op_begin() has seen to). */
	if (__builtin_expect(io->core.op_slow.any != 0, 0))
		return keel__op_commit_slow(t, op, sqe);
	return keel__task_suspend(t);
}

/* Complete a user-space op (a sleep): wakes its task with `res`. */
void keel__op_user_done(struct keel__io *io, struct keel__op *op, int res);
/* Tell `t` that its op (ledger index + 1 `ref`; 0: a sleep, io/sleep.c)
 * ended with `res`, in every case: an exited task, a select, a cancel. */
void keel__op_tell_task(struct keel_task *t, uint32_t ref, int res);

/*
 * An op of `t`, which waits in a select (KEEL__T_SELECT), ended with `res`:
 * true if it was one of the select's branches (io/select_wait.c), which
 * then decides whether and when t is woken.
 */
bool keel__select_op_done(struct keel_task *t, uint32_t op, int res);

/* Handle every CQE in the CQ, overflowed ones included. */
void keel__io_reap(struct keel__io *io);

/* Cancel every op of `t` still in flight (results arrive as CQEs). */
void keel__io_cancel_task(struct keel__io *io, struct keel_task *t);

/* Give core the io services it calls back (cancel a task's ops). */
void keel__io_install_hooks(struct keel__io *io);

/* Cancel every op in the ledger (loop teardown). */
void keel__io_cancel_all(struct keel__io *io);

/* Release an op whose last CQE is in without waking its task (streams,
 * which wake their task themselves). */
void keel__op_release_quiet(struct keel__io *io, struct keel__op *op);

/* Queue an ASYNC_CANCEL for `op` (once); its CQE says how it ended. */
void keel__op_send_cancel(struct keel__io *io, struct keel__op *op);

/* Register a sparse file table for direct descriptors (once). */
int keel__io_files(struct keel__io *io);

/* Registered buffers (io/fixedbuf.c). keel__fixedbufs_set(): copy `n`
 * iovecs in (-EBUSY: a table is there; -EINVAL: the kernel's limits;
 * -ENOMEM); keel__fixedbufs_clear(): free it (-ENXIO: none). */
int keel__fixedbufs_set(struct keel__fixedbufs *t, const struct iovec *iov,
			unsigned n);
int keel__fixedbufs_clear(struct keel__fixedbufs *t);

/* 0 if `len` bytes at `addr` lie inside registered buffer `index`, else
 * -EINVAL (no such buffer) or -EFAULT (outside it). Inline: every fixed
 * op asks, and a call cost it some 40 instructions of its 690. */
static inline int keel__fixedbufs_check(const struct keel__fixedbufs *t,
					unsigned index, uint64_t addr,
					uint32_t len)
{
	if (__builtin_expect(index >= t->n, 0))
		return -EINVAL;
	/* Below the base, off wraps above any size. */
	uint64_t off = addr - (uint64_t)(uintptr_t)t->iov[index].iov_base;
	uint64_t size = t->iov[index].iov_len;

	if (__builtin_expect(off > size || len > size - off, 0))
		return -EFAULT;
	return 0;
}

/* A fixed op refused by keel__fixedbufs_check(): its await is complete
 * with `err` (returns what the op function returns). */
int keel__fixed_refuse(struct keel_task *t, int err);

/* Prepare the (rest of a) send_all, as SEND_ZC if the op is zero-copy. */
void keel__prep_send(struct io_uring_sqe *sqe, struct keel__op *op);
/* Whether a new loop's sendmsg_all should try vectored SENDs (io/ops.c). */
bool keel__send_vec_wanted(const struct keel__io *io);
/* A vectored SEND refused with -EINVAL: the kernel is older than 6.17.
 * Stops trying them on this loop; the op is then sent as a SENDMSG. */
void keel__send_vec_refused(struct keel__io *io, struct keel__op *op);
void keel__bufring_stream_ref(struct keel_bufring *r, int delta);

/* Streams (io/stream.c): set up the loop's idle sweep (at ring setup);
 * free the chunk pool and the parked lists (at teardown). */
void keel__stream_io_init(struct keel__io *io);
void keel__stream_io_fini(struct keel__io *io);

/* A parked stream's poll completed (`ud`: its KEEL__UD_INTERNAL user_data
 * with the stream's address). */
void keel__stream_parked_cqe(struct keel__io *io, uint64_t ud, int res);

/* A hibernated descriptor's poll, its cancel or the epoll set's poll
 * completed (`ud`, `res`, `flags`: its CQE's). */
void keel__hibernate_cqe(struct keel__io *io, uint64_t ud, int res,
			 unsigned flags);

/* The loop is going (keel__io_cancel_all()): every hibernated descriptor's
 * callback runs now with -ECANCELED, and the table goes. */
void keel__hibernate_cancel_all(struct keel__io *io);

/* Cancel (or, exited or at teardown, close) the parked streams of `t`, or
 * of every task: what keel__io_cancel_task() and keel__io_cancel_all() do
 * for ops. */
void keel__stream_cancel_parked(struct keel__io *io, struct keel_task *t);
/* The same for the sleep of task slot `id`, if it sleeps (io/sleep.c):
 * by the slot, which a caller reads while the task is sure to be there
 * (the sleep's end may free the frame), and for every sleep. */
void keel__sleep_cancel(struct keel__io *io, uint32_t id);
void keel__sleep_cancel_all(struct keel__io *io);
void keel__stream_cancel_all_parked(struct keel__io *io);

/* Queue an ASYNC_CANCEL for the request with user_data `ud` (its CQE is
 * skipped where the kernel can), now or, with no SQE free, before the next
 * enter; false: neither (no memory to remember it). */
bool keel__io_cancel_ud(struct keel__io *io, uint64_t ud);

/* Queue a NOP whose CQE carries `ud` (a wake for an internal user_data),
 * now or, with no SQE free, before the next enter; false: neither. */
bool keel__io_nop_ud(struct keel__io *io, uint64_t ud);

/* Before an enter (keel__io_enter_slow() while any wait): queue the
 * cancels and NOPs that found no SQE into the room the SQ has; returns
 * `wait_ns`, shortened while some still wait. */
int64_t keel__io_cancels_retry(struct keel__io *io, int64_t wait_ns);

/* The request with user_data `ud` ended or is armed anew under it: a
 * cancel still waiting for an SQE must not reach it. */
void keel__io_cancel_forget(struct keel__io *io, uint64_t ud);

/* Chunk nodes (io/stream.c). */
struct keel__chunk *keel__chunk_get(struct keel__io *io);
void keel__chunk_put(struct keel__io *io, struct keel__chunk *c);

/* Buffer rings (io/bufring.c). */
struct keel_bufring;
/* The kernel used buffer `bid` of ring `ring` for `res` bytes of a CQE
 * with `cqe_flags`: fill `c` (and more chunks for a bundle, appended after
 * it); returns the chunk count or a negative errno. */
int keel__bufring_take(struct keel__io *io, struct keel_bufring *ring,
		       unsigned cqe_flags, int res, struct keel__chunk **first,
		       struct keel__chunk **last);
/* A stream stopped by -ENOBUFS waits for a buffer to come back; `woken`:
 * it had been woken for one (by keel__recv_stream_resume()) and got none. */
struct keel_recv_stream;
void keel__bufring_wait(struct keel_bufring *ring, struct keel_recv_stream *s,
			bool woken);
void keel__bufring_unwait(struct keel_bufring *ring,
			  struct keel_recv_stream *s);
uint16_t keel__bufring_gid(const struct keel_bufring *ring);
bool keel__bufring_has_free(const struct keel_bufring *ring);
bool keel__bufring_incremental(const struct keel_bufring *ring);
void keel__bufrings_fini(struct keel__io *io);
/* The CQ has been reaped (keel's counts are exact): wake starved streams
 * for the buffers free now. */
void keel__bufrings_settle(struct keel__io *io);
/* Buffers of all the loop's rings that are out of the kernel's hands. */
uint64_t keel__bufrings_in_use(const struct keel__io *io);
/* Re-arm a recv stream (io/stream.c), called when buffers come back;
 * false if it did not re-arm (it was closed or ended meanwhile). */
bool keel__recv_stream_resume(struct keel__io *io, struct keel_recv_stream *s);

#endif
