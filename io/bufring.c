/* SPDX-License-Identifier: MIT */
/*
 * bufring.c: provided-buffer rings, registered by hand (liburing 2.3 has no
 * io_uring_setup_buf_ring()).
 *
 * The kernel picks buffers from the head of the ring in order; keel adds
 * them back at the tail in whatever order tasks release them. Per buffer,
 * keel counts the chunks lent out of it and whether the kernel still fills
 * it (incremental consumption: a CQE with IORING_CQE_F_BUF_MORE); a buffer
 * goes back into the ring when neither holds it.
 *
 * Bundles: one CQE may cover several buffers, the ones at the ring's head
 * when the kernel took them. keel follows that head (`head`: how many
 * buffers the kernel has finished with), so it can read the buffer ids of a
 * bundle from the ring entries themselves. Entries between `head` and the
 * kernel's head cannot have been overwritten yet: every buffer not in the
 * ring is lent or still owed a CQE, so the tail stays behind them.
 *
 * Starved streams: a recv stream the kernel stopped with -ENOBUFS waits on
 * its ring's list, first come first served, and re-arms only when a buffer
 * is there for it. Each woken stream holds a claim on one free buffer
 * until the next io_uring_enter has issued its request (the claims are
 * forgotten once that enter's completions are reaped), so a buffer wakes
 * one stream, not all of them: waking every waiter for one buffer made
 * all but one re-arm only to get -ENOBUFS again, tens of CQEs per chunk.
 * While completions are reaped keel's count of free buffers is stale (a
 * CQE further on may have taken one), so wakes wait for the end of the
 * batch (keel__bufrings_settle()), when the count is exact again.
 */
#include "io.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <keel/io.h>

#define MAX_BUFS      32768u
#define MAX_BUF_SIZE  (16u << 20)
#define DEFAULT_COUNT 1024u
#define DEFAULT_SIZE  4096u
/* A starved stream waits for a buffer to come back. When none is lent (no
 * release will come), or a woken stream found no buffer although keel
 * still counts one free (keel and the kernel disagree: the kernel runs
 * recvs outside io_uring_enter without DEFER_TASKRUN, or with SQPOLL), the
 * first in line retries this often instead: bounded, never a spin. */
#define STARVED_RETRY_NS (1000ull * 1000)

struct buf_state {
	uint32_t off;	 /* incremental: bytes the kernel has filled */
	uint16_t refs;	 /* chunks lent out of this buffer */
	uint8_t in_ring; /* the kernel may (still) fill it */
	uint8_t reserved;
};

struct keel_bufring {
	struct keel__io *io;
	struct io_uring_buf_ring *br;
	char *mem;
	struct buf_state *bufs;
	size_t ring_bytes, mem_bytes;
	uint32_t count, size, mask;
	uint32_t in_kernel;
	uint32_t peak_lent;
	uint16_t head; /* buffers the kernel has finished with (mod 2^16) */
	uint16_t gid;
	bool inc;
	uint32_t streams;	   /* open recv streams using it */
	uint32_t refs;		   /* chunks lent, over all buffers */
	struct keel__list starved; /* recv streams, by their link */
	uint32_t claims; /* streams woken since the last settle, each to take
			  * a free buffer */
	bool missed;	 /* a woken stream found the ring empty */
	struct keel_timer retry; /* see STARVED_RETRY_NS */
	uint64_t chunks, enobufs;
};

static struct keel_loop *loop_of(struct keel_bufring *r)
{
	return (struct keel_loop *)r->io; /* the io is the loop's start */
}

bool keel__bufring_incremental(const struct keel_bufring *ring)
{
	return ring->inc;
}

uint16_t keel__bufring_gid(const struct keel_bufring *ring)
{
	return ring->gid;
}

bool keel__bufring_has_free(const struct keel_bufring *ring)
{
	return ring->in_kernel > ring->claims;
}

static void ring_add(struct keel_bufring *r, uint16_t bid)
{
	io_uring_buf_ring_add(r->br, r->mem + (size_t)bid * r->size, r->size,
			      bid, (int)r->mask, 0);
	io_uring_buf_ring_advance(r->br, 1);
	r->bufs[bid].in_ring = 1;
	r->bufs[bid].off = 0;
	r->in_kernel++;
}

static int register_ring(struct keel_bufring *r, bool inc)
{
	struct io_uring_buf_reg reg;

	memset(&reg, 0, sizeof(reg));
	reg.ring_addr = (uint64_t)(uintptr_t)r->br;
	reg.ring_entries = r->count;
	reg.bgid = r->gid;
	KEEL_BUF_REG_FLAGS(reg) = inc ? IOU_PBUF_RING_INC : 0;
	return keel__io_register(r->io, IORING_REGISTER_PBUF_RING, &reg, 1);
}

static int take_gid(struct keel__io *io, struct keel_bufring *r)
{
	for (uint32_t i = 0; i < io->nbufrings; i++) {
		if (!io->bufrings[i]) {
			io->bufrings[i] = r;
			return (int)i;
		}
	}
	if (io->nbufrings >= 65536)
		return -ENOSPC;
	uint32_t n = io->nbufrings ? io->nbufrings * 2 : 4;
	struct keel_bufring **v = realloc(io->bufrings, n * sizeof(*v));

	if (!v)
		return -ENOMEM;
	memset(v + io->nbufrings, 0, (n - io->nbufrings) * sizeof(*v));
	io->bufrings = v;
	int gid = (int)io->nbufrings;

	io->nbufrings = n;
	v[gid] = r;
	return gid;
}

/* Wake the streams first in line, as many as the free buffers not yet
 * claimed can serve. */
static void wake_starved(struct keel_bufring *r)
{
	struct keel__link *n;

	/* One at a time off the list itself, so that a stream closed while
	 * another resumes (its task killed by the wake) leaves the list as
	 * always. A resume only re-arms and wakes a task: a stream starves
	 * again only at a CQE or in keel_recv_next(), later. */
	while (r->in_kernel > r->claims &&
	       (n = keel__list_pop_front(&r->starved)))
		r->claims += keel__recv_stream_resume(
		    r->io, keel__list_entry(n, struct keel_recv_stream, link));
	if (keel__list_empty(&r->starved) && keel_timer_armed(&r->retry))
		keel_timer_cancel(loop_of(r), &r->retry);
}

static void retry_fired(struct keel_loop *loop, struct keel_timer *timer,
			void *arg)
{
	struct keel_bufring *r = arg;
	struct keel__link *n;

	(void)loop;
	(void)timer;
	if (r->io->closing)
		return;
	/* keel's count may be wrong, so the first in line tries anyway. */
	if (r->in_kernel <= r->claims &&
	    (n = keel__list_pop_front(&r->starved)))
		r->claims += keel__recv_stream_resume(
		    r->io, keel__list_entry(n, struct keel_recv_stream, link));
	wake_starved(r);
}

static void ring_free(struct keel_bufring *r)
{
	if (r->br)
		munmap(r->br, r->ring_bytes);
	if (r->mem)
		munmap(r->mem, r->mem_bytes);
	free(r->bufs);
	free(r);
}

int keel_bufring_create(struct keel_loop *loop,
			const struct keel_bufring_opts *opts,
			struct keel_bufring **out)
{
	struct keel__io *io = keel__io_of(loop);
	uint32_t count = opts && opts->count ? opts->count : DEFAULT_COUNT;
	uint32_t size = opts && opts->size ? opts->size : DEFAULT_SIZE;
	bool want_inc = opts && (opts->flags & KEEL_BUFRING_INCREMENTAL);

	if (!out || count > MAX_BUFS || (count & (count - 1)) ||
	    size > MAX_BUF_SIZE ||
	    (opts && (opts->flags & ~KEEL_BUFRING_INCREMENTAL)))
		return -EINVAL;
	struct keel_bufring *r = calloc(1, sizeof(*r));

	if (!r)
		return -ENOMEM;
	r->io = io;
	keel_timer_init(&r->retry, retry_fired, r);
	r->count = count;
	r->size = size;
	r->mask = count - 1;
	r->ring_bytes = count * sizeof(struct io_uring_buf);
	r->mem_bytes = (size_t)count * size;
	r->bufs = calloc(count, sizeof(*r->bufs));
	/* Touched now (MAP_POPULATE): the pool is the loop's fixed cost, not
	 * something a connection pays for when its first byte arrives. */
	r->br = mmap(NULL, r->ring_bytes, PROT_READ | PROT_WRITE,
		     MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	r->mem = mmap(NULL, r->mem_bytes, PROT_READ | PROT_WRITE,
		      MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	if (r->br == MAP_FAILED)
		r->br = NULL;
	if (r->mem == MAP_FAILED)
		r->mem = NULL;
	if (!r->bufs || !r->br || !r->mem) {
		ring_free(r);
		return -ENOMEM;
	}
	int gid = take_gid(io, r);

	if (gid < 0) {
		ring_free(r);
		return gid;
	}
	r->gid = (uint16_t)gid;
	io_uring_buf_ring_init(r->br);
	int err = register_ring(r, want_inc);

	/* Before 6.12 the kernel refuses the flag: plain buffers then. */
	if (err == -EINVAL && want_inc)
		err = register_ring(r, false);
	else
		r->inc = want_inc && err == 0;
	if (err) {
		io->bufrings[gid] = NULL;
		ring_free(r);
		return err;
	}
	for (uint32_t i = 0; i < count; i++)
		ring_add(r, (uint16_t)i);
	*out = r;
	return 0;
}

static void destroy(struct keel_bufring *r)
{
	if (keel_timer_armed(&r->retry))
		keel_timer_cancel(loop_of(r), &r->retry);
	struct io_uring_buf_reg reg = {.bgid = r->gid};

	keel__io_register(r->io, IORING_UNREGISTER_PBUF_RING, &reg, 1);
	r->io->bufrings[r->gid] = NULL;
	ring_free(r);
}

int keel_bufring_destroy(struct keel_bufring *r)
{
	if (!r)
		return -EINVAL;
	if (r->streams || r->in_kernel != r->count)
		return -EBUSY;
	for (uint32_t i = 0; i < r->count; i++)
		if (r->bufs[i].refs)
			return -EBUSY;
	destroy(r);
	return 0;
}

void keel__bufrings_fini(struct keel__io *io)
{
	for (uint32_t i = 0; i < io->nbufrings; i++)
		if (io->bufrings[i])
			destroy(io->bufrings[i]);
	free(io->bufrings);
	io->bufrings = NULL;
	io->nbufrings = 0;
}

uint64_t keel__bufrings_in_use(const struct keel__io *io)
{
	uint64_t n = 0;

	for (uint32_t i = 0; i < io->nbufrings; i++)
		if (io->bufrings[i])
			n +=
			    io->bufrings[i]->count - io->bufrings[i]->in_kernel;
	return n;
}

void keel_bufring_stats(const struct keel_bufring *r,
			struct keel_bufring_stats *out)
{
	memset(out, 0, sizeof(*out));
	out->count = r->count;
	out->size = r->size;
	out->in_kernel = r->in_kernel;
	out->lent = r->count - r->in_kernel;
	out->peak_lent = r->peak_lent;
	out->incremental = r->inc;
	out->bundles = r->io->features & IORING_FEAT_RECVSEND_BUNDLE;
	out->chunks = r->chunks;
	out->enobufs = r->enobufs;
}

/* The buffer is neither lent nor filled: back into the kernel's ring, and
 * wake a stream that stopped for lack of one (while reaping, once the
 * batch is done). */
static void maybe_recycle(struct keel_bufring *r, uint16_t bid)
{
	struct buf_state *b = &r->bufs[bid];

	if (b->refs || b->in_ring)
		return;
	ring_add(r, bid);
	if (!keel__list_empty(&r->starved) && !r->io->reaping &&
	    !r->io->closing)
		wake_starved(r);
}

void keel_buf_release(struct keel_buf *buf)
{
	struct keel_bufring *r = buf->ring;

	if (!r)
		return;
	buf->ring = NULL;
	r->bufs[buf->bid].refs--;
	r->refs--;
	maybe_recycle(r, buf->bid);
}

/* One chunk of buffer `bid`: `len` bytes at `off`. */
static struct keel__chunk *lend(struct keel__io *io, struct keel_bufring *r,
				uint16_t bid, uint32_t off, uint32_t len)
{
	struct keel__chunk *c = keel__chunk_get(io);

	if (!c)
		return NULL;
	c->next = NULL;
	c->data = r->mem + (size_t)bid * r->size + off;
	c->len = len;
	c->bid = bid;
	c->ring = (uint16_t)(r->gid + 1);
	r->bufs[bid].refs++;
	r->refs++;
	r->chunks++;
	io->count.bufs_lent++;
	return c;
}

/* The kernel is done filling `bid`. */
static void finished(struct keel_bufring *r, uint16_t bid)
{
	r->bufs[bid].in_ring = 0;
	r->in_kernel--;
	r->head++;
	uint32_t lent = r->count - r->in_kernel;

	if (lent > r->peak_lent)
		r->peak_lent = lent;
}

int keel__bufring_take(struct keel__io *io, struct keel_bufring *r,
		       unsigned cqe_flags, int res, struct keel__chunk **first,
		       struct keel__chunk **last)
{
	if (!(cqe_flags & IORING_CQE_F_BUFFER))
		return 0;
	uint16_t bid = (uint16_t)(cqe_flags >> IORING_CQE_BUFFER_SHIFT);

	*first = *last = NULL;
	if (bid >= r->count)
		return -EFAULT; /* not ours: never happens with a sane kernel */
	if (r->inc) {
		struct buf_state *b = &r->bufs[bid];
		uint32_t off = b->off;

		b->off += (uint32_t)(res > 0 ? res : 0);
		/* Without BUF_MORE the kernel moved on from this buffer. */
		if (!(cqe_flags & IORING_CQE_F_BUF_MORE))
			finished(r, bid);
		if (res <= 0) {
			maybe_recycle(r, bid);
			return 0;
		}
		*first = *last = lend(io, r, bid, off, (uint32_t)res);
		if (!*first) {
			maybe_recycle(r, bid);
			return -ENOMEM;
		}
		return 1;
	}
	/* Plain buffers: `res` bytes over one buffer, or several (bundle) in
	 * ring order from keel's head. */
	uint32_t left = res > 0 ? (uint32_t)res : 0;
	int n = 0;

	do {
		uint16_t b = n ? r->br->bufs[r->head & r->mask].bid : bid;
		uint32_t len = left < r->size ? left : r->size;

		finished(r, b);
		if (!len) {
			maybe_recycle(r, b);
			break;
		}
		struct keel__chunk *c = lend(io, r, b, 0, len);

		if (!c) {
			/* Out of memory for a node: the data is lost; say so
			 * rather than pretend (the stream ends -ENOMEM). */
			maybe_recycle(r, b);
			left -= len;
			while (left) {
				b = r->br->bufs[r->head & r->mask].bid;
				len = left < r->size ? left : r->size;
				finished(r, b);
				maybe_recycle(r, b);
				left -= len;
			}
			return -ENOMEM;
		}
		if (*last)
			(*last)->next = c;
		else
			*first = c;
		*last = c;
		left -= len;
		n++;
	} while (left);
	return n;
}

void keel__bufring_wait(struct keel_bufring *r, struct keel_recv_stream *s,
			bool woken)
{
	r->enobufs++;
	r->io->count.enobufs++;
	r->io->bufrings_starved = true;
	/* Woken but beaten to the buffer (by a stream armed before it, or
	 * keel's count was off): it keeps its turn. */
	if (woken) {
		keel__list_push_front(&r->starved, &s->link);
		r->missed = true;
	} else {
		keel__list_push_back(&r->starved, &s->link);
	}
	if (!r->refs && !keel_timer_armed(&r->retry))
		keel_timer_arm(loop_of(r), &r->retry,
			       r->io->core.now + STARVED_RETRY_NS);
}

void keel__bufring_unwait(struct keel_bufring *r, struct keel_recv_stream *s)
{
	keel__list_remove(&r->starved, &s->link);
	if (keel__list_empty(&r->starved) && keel_timer_armed(&r->retry))
		keel_timer_cancel(loop_of(r), &r->retry);
}

void keel__bufrings_settle(struct keel__io *io)
{
	bool starved = false;

	/* Claims and misses come only from starved streams: with none since
	 * the last settle, every ring is settled (the common case, and a
	 * walk over every ring at every reap otherwise). */
	if (io->closing || !io->bufrings_starved)
		return;
	for (uint32_t i = 0; i < io->nbufrings; i++) {
		struct keel_bufring *r = io->bufrings[i];

		if (!r)
			continue;
		/* The streams woken before the enter that was just reaped
		 * had their requests issued: each took its buffer, or its
		 * CQE was reaped, or its socket had nothing to receive yet
		 * (then the buffer is free for the next in line). */
		r->claims = 0;
		bool missed = r->missed;

		r->missed = false;
		if (!keel__list_empty(&r->starved) && r->in_kernel) {
			/* A woken stream found no buffer, yet keel counts one
			 * free after the batch: keel and the kernel disagree.
			 * Retry on the timer rather than spin on the count. */
			if (!missed)
				wake_starved(r);
			else if (!keel_timer_armed(&r->retry))
				keel_timer_arm(loop_of(r), &r->retry,
					       io->core.now + STARVED_RETRY_NS);
		}
		/* Streams still in line, or woken ones holding claims until
		 * the next settle: settle again. */
		starved |= !keel__list_empty(&r->starved) || r->claims;
	}
	io->bufrings_starved = starved;
}

/* Streams count themselves in and out so that destroy can refuse. */
void keel__bufring_stream_ref(struct keel_bufring *r, int delta)
{
	r->streams = (uint32_t)((int)r->streams + delta);
}
