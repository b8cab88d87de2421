/* SPDX-License-Identifier: MIT */
/*
 * keel/mailbox.h: bounded mailboxes, within and across loops.
 *
 * A mailbox carries pointers (`void *` messages; what they point to belongs
 * to whoever holds the message). It is bounded, always, and owned by the
 * loop that receives from it. One API whatever the sender:
 *   - a task on the owner loop uses a plain ring buffer (no atomics);
 *   - a task on another loop, or any plain thread, uses a bounded lock-free
 *     queue; the owner loop is woken with IORING_OP_MSG_RING only when it
 *     is parked in the kernel, and bursts of sends wake it once.
 * The capacity bounds each of the two paths. Order is FIFO per
 * sender-receiver pair.
 *
 * When full, the mailbox's policy decides:
 *   KEEL_MB_BLOCK        the sending task waits (never the thread), woken
 *                        in FIFO order as room frees; a plain thread's
 *                        keel_mb_try_send gets -EAGAIN;
 *   KEEL_MB_FAIL         the send fails with -EAGAIN;
 *   KEEL_MB_DROP_NEWEST  the message sent is dropped (result
 *                        KEEL_MB_DROPPED);
 *   KEEL_MB_DROP_OLDEST  the oldest message waiting is dropped and the new
 *                        one queued (result KEEL_MB_DROPPED).
 * Dropped messages are counted and handed to the mailbox's on_drop
 * callback (which may free them).
 *
 * Closing: senders then get -EPIPE; the receiver drains what is left, then
 * gets -EPIPE. Waits honour the task's cancellation token.
 *
 * Beware: two tasks blocking on each other's full BLOCK mailboxes deadlock,
 * as in any bounded-queue system (Erlang avoids it with unbounded ones).
 */
#ifndef KEEL_MAILBOX_H
#define KEEL_MAILBOX_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct keel_loop;
struct keel_task;
struct keel_mailbox;

enum keel_mb_policy {
	KEEL_MB_BLOCK = 0,
	KEEL_MB_FAIL = 1,
	KEEL_MB_DROP_NEWEST = 2,
	KEEL_MB_DROP_OLDEST = 3,
};

/* A send's result when the mailbox was full and a message was dropped. */
#define KEEL_MB_DROPPED 1

typedef void (*keel_mb_drop_fn)(void *msg, void *arg);

struct keel_mailbox_opts {
	uint32_t capacity; /* default 1024 */
	enum keel_mb_policy policy;
	keel_mb_drop_fn
	    on_drop; /* dropped or left-over messages; may be NULL */
	void *drop_arg;
};

/*
 * A mailbox received from on `owner`. Returns 0 or -ENOMEM / -EINVAL.
 * Ownership: the caller holds one reference; keel_mailbox_release() drops
 * it. Messages still queued when the last reference goes are handed to
 * on_drop.
 */
int keel_mailbox_new(struct keel_loop *owner,
		     const struct keel_mailbox_opts *opts,
		     struct keel_mailbox **out);
struct keel_mailbox *keel_mailbox_ref(struct keel_mailbox *mb);
void keel_mailbox_release(struct keel_mailbox *mb);

/*
 * Await sending `msg` from task `t` (on any loop). keel_res: 0 (queued),
 * KEEL_MB_DROPPED, -EAGAIN (FAIL policy, full), -EPIPE (closed), or the
 * task's cancellation cause (the message was not queued).
 */
int keel_mb_send(struct keel_task *t, struct keel_mailbox *mb, void *msg);

/* Send without waiting, from any thread: as above, -EAGAIN when full. */
int keel_mb_try_send(struct keel_mailbox *mb, void *msg);

/*
 * Await a message, on the owner loop (one receiving task at a time).
 * keel_res: 0 with *out set, -EPIPE (closed and drained), -EBUSY (another
 * task is receiving), or the cancellation cause. `out` must stay valid
 * until the await returns (keep it in the frame).
 */
int keel_mb_recv(struct keel_task *t, struct keel_mailbox *mb, void **out);

/* Receive without waiting (owner loop): 0, -EAGAIN (empty), -EPIPE. */
int keel_mb_try_recv(struct keel_mailbox *mb, void **out);

/* Close (from the owner loop). Blocked senders are woken with -EPIPE. */
void keel_mb_close(struct keel_mailbox *mb);

struct keel_mb_stats {
	uint64_t sent; /* messages queued */
	uint64_t received;
	uint64_t dropped;
	uint64_t full;	/* sends that found it full */
	uint32_t depth; /* messages waiting now */
	uint32_t capacity;
};

void keel_mb_stats(struct keel_mailbox *mb, struct keel_mb_stats *out);

#ifdef __cplusplus
}
#endif
#endif
