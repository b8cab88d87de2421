/* SPDX-License-Identifier: MIT */
/*
 * keel/sync.h: bounded mailboxes and the task-level synchronisation
 * primitives built on them (oneshot, broadcast, semaphore, mutex, rwlock,
 * condition variable, event, barrier, latch, ticker).
 */
#ifndef KEEL_SYNC_H
#define KEEL_SYNC_H

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- mailbox ---- */
/*
 * bounded mailboxes, within and across loops.
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
 * as in any bounded-queue system (Erlang avoids it with unbounded ones);
 * keel_loop_deadlocks() (keel/loop.h) names such a cycle on one loop.
 */
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
/*
 * Ownership: each reference (the one returned is `mb` itself) is dropped
 * once with keel_mailbox_release(); the last frees the mailbox.
 */
struct keel_mailbox *keel_mailbox_ref(struct keel_mailbox *mb);
void keel_mailbox_release(struct keel_mailbox *mb);

/*
 * Await sending `msg` from task `t` (on any loop). keel_res: 0 (queued),
 * KEEL_MB_DROPPED, -EAGAIN (FAIL policy, full), -EPIPE (closed), or the
 * task's cancellation cause (the message was not queued).
 * Ownership: `msg` is the receiver's once queued (keel_res 0), on_drop's
 * once dropped, still the caller's on an error.
 */
int keel_mb_send(struct keel_task *t, struct keel_mailbox *mb, void *msg);

/*
 * Send without waiting, from any thread: as above, -EAGAIN when full.
 * Ownership: as keel_mb_send().
 */
int keel_mb_try_send(struct keel_mailbox *mb, void *msg);

/*
 * Await a message, on the owner loop (one receiving task at a time).
 * keel_res: 0 with *out set, -EPIPE (closed and drained), -EBUSY (another
 * task is receiving), or the cancellation cause. `out` must stay valid
 * until the await returns (keep it in the frame).
 * Ownership: the message received is the caller's.
 */
int keel_mb_recv(struct keel_task *t, struct keel_mailbox *mb, void **out);

/*
 * Receive without waiting (owner loop): 0, -EAGAIN (empty), -EPIPE.
 * Ownership: on 0, the message in *out is the caller's.
 */
int keel_mb_try_recv(struct keel_mailbox *mb, void **out);

/*
 * Close (from the owner loop). Blocked senders are woken with -EPIPE.
 * Ownership: queued messages stay in the mailbox for the receiver (or
 * on_drop at its end).
 */
void keel_mb_close(struct keel_mailbox *mb);

/*
 * Whether the mailbox was closed (any thread): a send would now fail with
 * -EPIPE. Lets a sender skip work for a receiver that is gone.
 * Ownership: reads the mailbox; nothing changes hands.
 */
bool keel_mb_is_closed(const struct keel_mailbox *mb);

struct keel_mb_stats {
	uint64_t sent; /* messages queued */
	uint64_t received;
	uint64_t dropped;
	uint64_t full;	/* sends that found it full */
	uint32_t depth; /* messages waiting now */
	uint32_t capacity;
};

/* Ownership: a copy into the caller's `out`. */
void keel_mb_stats(struct keel_mailbox *mb, struct keel_mb_stats *out);

/* ---- sync ---- */
/*
 * what tasks wait on besides I/O: a oneshot reply slot (across
 * loops), a broadcast channel, a semaphore, an async mutex with a timeout,
 * an event, a barrier and a countdown latch. The tokio::sync and asyncio
 * toolbox, for stackless tasks.
 *
 * Every wait is an await: it returns KEEL_READY or KEEL_PENDING and leaves
 * its result in keel_res(), 0 or a negative errno. Waiters are served in
 * FIFO order. Every wait honours the task's cancellation token: a cancelled
 * waiter is woken with the cause (-ECANCELED, -ETIMEDOUT) and leaves no
 * trace, so what it waited for goes to the next waiter. Cancellation is
 * level-triggered: an await on an already-cancelled token returns the cause
 * at once, even where the result is there (a sent value, a set event), as
 * keel_mb_recv() does. A wait satisfied just before its cancellation took
 * effect returns what it got (the value, the permits, the lock).
 *
 * Loops: the oneshot works across loops and threads (its receiver is a task
 * of the loop it was made for; its sender anything). Everything else is
 * "use from tasks of one loop": the loop it was made for, checked at each
 * await (-EXDEV) and, where a keel loop runs on the calling thread, at each
 * call that wakes waiters. Send work to another loop with a mailbox.
 *
 * Deadlines and timeouts are CLOCK_MONOTONIC nanoseconds; UINT64_MAX means
 * none.
 */
struct keel_loop;
struct keel_task;

/* ---- oneshot: one value, once, from any thread --------------------------
 * A reply slot: a sender (any thread) puts one value in, or gives up; a
 * task of the slot's loop awaits it. Refcounted, so that the sender and
 * the receiver can let go in either order. A sender that gives up must say
 * so with keel_oneshot_close(), as dropping a tokio Sender does: merely
 * releasing its reference leaves the receiver waiting.
 */
struct keel_oneshot;

/*
 * A new slot whose receiver runs on `loop`. `on_drop` (may be NULL) gets a
 * value that was sent and never received when the slot is freed.
 * Returns 0 and sets *out, or -ENOMEM.
 * Ownership: the caller holds one reference; hand the sender its own with
 * keel_oneshot_ref().
 */
int keel_oneshot_new(struct keel_loop *loop, keel_mb_drop_fn on_drop,
		     void *drop_arg, struct keel_oneshot **out);

/*
 * Take / drop a reference (any thread). Freed with the last one.
 * Ownership: each reference is dropped once with keel_oneshot_release() (any
 * thread).
 */
struct keel_oneshot *keel_oneshot_ref(struct keel_oneshot *os);
void keel_oneshot_release(struct keel_oneshot *os);

/*
 * Put `value` in the slot, from any thread, and wake the receiver.
 * Returns 0 (the value now belongs to the receiver), or -EPIPE: the
 * receiver gave up (its wait was cancelled or timed out) or a value was
 * already sent or the slot closed; the value is still the caller's.
 * One sender at a time.
 */
int keel_oneshot_send(struct keel_oneshot *os, void *value);

/*
 * Give up sending (any thread): the receiver gets `err` (a negative errno)
 * instead of a value. No-op if a value was already sent or the slot
 * closed. keel_oneshot_close() is keel_oneshot_fail(os, -EPIPE).
 * Ownership: the caller's reference is unchanged (release it as usual).
 */
void keel_oneshot_fail(struct keel_oneshot *os, int err);
void keel_oneshot_close(struct keel_oneshot *os);

/*
 * Await the value, from a task of the slot's loop. keel_res: 0 with *out
 * set (the value is the caller's), -EPIPE (closed without a value, or
 * already received), the error given to keel_oneshot_fail(), -ETIMEDOUT
 * when `deadline_ns` passes (absolute; UINT64_MAX: none), the cancellation
 * cause, -EBUSY (another task is receiving), -EXDEV (wrong loop).
 * A timeout or a cancellation retires the receiver: a later send returns
 * -EPIPE (a value that came first is returned instead, or, when the
 * token was already cancelled at the await, left to on_drop).
 * `out` must stay valid until the await returns (keep it in the frame);
 * the wait holds its own reference on the slot.
 */
int keel_oneshot_recv_until(struct keel_task *t, struct keel_oneshot *os,
			    void **out, uint64_t deadline_ns);
int keel_oneshot_recv(struct keel_task *t, struct keel_oneshot *os, void **out);

/*
 * Take the value without waiting (slot's loop): 0, -EAGAIN, or as above.
 * Ownership: on 0, the value in *out is the caller's.
 */
int keel_oneshot_try_recv(struct keel_oneshot *os, void **out);

/*
 * Whether a send would now fail (any thread): the receiver gave up, or a
 * value was already sent, or the slot closed. Lets a sender skip work
 * nobody awaits (tokio's Sender::is_closed).
 * Ownership: reads the slot; nothing changes hands.
 */
bool keel_oneshot_is_closed(const struct keel_oneshot *os);

/* ---- broadcast: every receiver sees every message -----------------------
 * A bounded ring of `capacity` messages and any number of receivers, each
 * with its own cursor; all on one loop. A receiver that falls more than
 * `capacity` messages behind lags: its next receive returns -EOVERFLOW,
 * keel_broadcast_lagged() says how many it missed, and the one after that
 * returns the oldest message still held (tokio's RecvError::Lagged).
 *
 * Messages are pointers the channel holds until they are pushed out of the
 * ring (or the channel is freed), then hands to `on_drop`. A received
 * message is borrowed: it stays valid at least until the receiving task's
 * next await; to keep it longer, take a reference of your own.
 */
struct keel_broadcast;
struct keel_broadcast_rx;

/*
 * A channel on `loop` holding the last `capacity` (>= 1) messages.
 * Returns 0 and sets *out, -EINVAL or -ENOMEM.
 * Ownership: the caller owns the sending side: keel_broadcast_free().
 */
int keel_broadcast_new(struct keel_loop *loop, uint32_t capacity,
		       keel_mb_drop_fn on_drop, void *drop_arg,
		       struct keel_broadcast **out);

/*
 * Close the channel and drop the sending side. Receivers drain what is
 * left, then get -EPIPE; the memory goes with the last receiver.
 * Ownership: the caller's sending side is gone; receivers keep the channel's
 * memory alive.
 */
void keel_broadcast_free(struct keel_broadcast *bc);

/*
 * Close without dropping the sending side: later sends return -EPIPE.
 * Ownership: the caller still owns the sending side (keel_broadcast_free()).
 */
void keel_broadcast_close(struct keel_broadcast *bc);

/*
 * A receiver that sees the messages sent from now on. Returns 0 and sets
 * *out, -EPIPE (closed) or -ENOMEM.
 * Ownership: the caller owns it: keel_broadcast_unsubscribe().
 */
int keel_broadcast_subscribe(struct keel_broadcast *bc,
			     struct keel_broadcast_rx **out);

/*
 * Free a receiver. Returns 0, or -EBUSY while a task awaits on it.
 * Ownership: on 0, `rx` is freed; messages it had not read stay the
 * channel's.
 */
int keel_broadcast_unsubscribe(struct keel_broadcast_rx *rx);

/*
 * Send `msg` to every receiver. Returns the number of receivers (the
 * channel now holds the message), 0 (no receiver: not queued, the message
 * is still the caller's), -EPIPE (closed: not queued) or -EXDEV.
 * Ownership: with receivers, `msg` is the channel's (to on_drop when pushed
 * out); otherwise still the caller's.
 */
int keel_broadcast_send(struct keel_broadcast *bc, void *msg);

/*
 * Await the receiver's next message. keel_res: 0 with *out set,
 * -EOVERFLOW (lagged: see above), -EPIPE (closed and drained), the
 * cancellation cause, -EBUSY (another task awaits on it), -EXDEV.
 * Ownership: the message in *out is borrowed from the channel until t's next
 * await.
 */
int keel_broadcast_recv(struct keel_task *t, struct keel_broadcast_rx *rx,
			void **out);

/*
 * The same without waiting: -EAGAIN when there is nothing new.
 * Ownership: as keel_broadcast_recv(): borrowed until the caller's next
 * await.
 */
int keel_broadcast_try_recv(struct keel_broadcast_rx *rx, void **out);

/*
 * How many messages the receiver's last -EOVERFLOW skipped.
 * Ownership: reads the receiver; nothing changes hands.
 */
uint64_t keel_broadcast_lagged(const struct keel_broadcast_rx *rx);

/* ---- semaphore ----------------------------------------------------------
 * Counted permits, handed out in FIFO order: a waiter at the head that
 * needs more permits than are free holds back the ones behind it (no
 * barging), as tokio's Semaphore.
 */
struct keel_semaphore;

/*
 * A semaphore on `loop` with `permits` free. 0, or -ENOMEM.
 * Ownership: the caller owns the semaphore: keel_semaphore_free().
 */
int keel_semaphore_new(struct keel_loop *loop, uint32_t permits,
		       struct keel_semaphore **out);

/*
 * Free it; tasks still waiting are woken with -EPIPE.
 * Ownership: `s` is freed; permits held by tasks are forgotten.
 */
void keel_semaphore_free(struct keel_semaphore *s);

/*
 * Await `n` permits (n <= INT32_MAX). keel_res: 0 (acquired), -EPIPE
 * (closed), the cancellation cause, -EINVAL, -EXDEV.
 * Ownership: on 0 the task holds the permits until it releases them (an exit
 * does not: keel_defer()).
 */
int keel_semaphore_acquire(struct keel_task *t, struct keel_semaphore *s,
			   uint32_t n);

/*
 * Take `n` permits now: 0, -EAGAIN (too few, or others wait), -EPIPE.
 * Ownership: as keel_semaphore_acquire().
 */
int keel_semaphore_try_acquire(struct keel_semaphore *s, uint32_t n);

/*
 * Give back (or add) `n` permits, waking waiters in order. 0 or -EXDEV.
 * Ownership: the permits go back to the semaphore.
 */
int keel_semaphore_release(struct keel_semaphore *s, uint32_t n);

/*
 * Permits free now.
 * Ownership: reads the semaphore; nothing changes hands.
 */
uint64_t keel_semaphore_available(const struct keel_semaphore *s);

/*
 * Close: waiters and later acquires get -EPIPE; releases still count.
 * Ownership: the caller still owns `s` (keel_semaphore_free()).
 */
void keel_semaphore_close(struct keel_semaphore *s);

/* ---- mutex --------------------------------------------------------------
 * Held by one task at a time (across its awaits). Unlock hands the mutex to
 * the first waiter directly, so nobody can barge in between. The holder
 * must unlock it: a task that exits holding it leaves it locked (register
 * the unlock with keel_defer() if the task may abort).
 */
struct keel_mutex;

/* Ownership: the caller owns the mutex: keel_mutex_free(). */
int keel_mutex_new(struct keel_loop *loop, struct keel_mutex **out);

/*
 * Free it (unlocked, or not); waiters are woken with -EPIPE.
 * Ownership: `m` is freed, held or not.
 */
void keel_mutex_free(struct keel_mutex *m);

/*
 * Await the mutex for at most `timeout_ns` (UINT64_MAX: no limit; 0: only
 * if free now). keel_res: 0 (t holds it), -ETIMEDOUT, the cancellation
 * cause, -EDEADLK (t holds it already), -EPIPE (freed while t waited),
 * -ENOMEM, -EXDEV.
 * Ownership: on 0, `t` holds the mutex until keel_mutex_unlock() (not
 * released by its exit).
 */
int keel_mutex_lock(struct keel_task *t, struct keel_mutex *m,
		    uint64_t timeout_ns);

/*
 * Lock for `t` without waiting: 0 or -EBUSY.
 * Ownership: as keel_mutex_lock().
 */
int keel_mutex_try_lock(struct keel_task *t, struct keel_mutex *m);

/*
 * Unlock: 0, -EPERM (t does not hold it), -EXDEV.
 * Ownership: the mutex goes to the first waiter, or is free.
 */
int keel_mutex_unlock(struct keel_task *t, struct keel_mutex *m);

/*
 * The holder, or NULL.
 * Ownership: a pointer to the holding task, valid while it runs; not a
 * reference.
 */
struct keel_task *keel_mutex_holder(const struct keel_mutex *m);

/* ---- event --------------------------------------------------------------
 * A flag tasks wait for (asyncio.Event): set wakes every waiter, and later
 * waits return at once until it is cleared (level-triggered).
 */
struct keel_event;

/* Ownership: the caller owns the event: keel_event_free(). */
int keel_event_new(struct keel_loop *loop, struct keel_event **out);

/*
 * Free it; waiters are woken with -EPIPE.
 * Ownership: `ev` is freed.
 */
void keel_event_free(struct keel_event *ev);

/*
 * Set (wakes every waiter with 0) / clear. 0 or -EXDEV.
 * Ownership: nothing changes hands.
 */
int keel_event_set(struct keel_event *ev);
int keel_event_clear(struct keel_event *ev);
/* Ownership: reads the event; nothing changes hands. */
bool keel_event_is_set(const struct keel_event *ev);

/*
 * Await the event. keel_res: 0, the cancellation cause, -EPIPE (freed
 * while t waited), -EXDEV.
 * Ownership: nothing changes hands.
 */
int keel_event_wait(struct keel_task *t, struct keel_event *ev);

/* ---- barrier ------------------------------------------------------------
 * `parties` tasks meet: each waits until the last one arrives, which
 * releases them all and starts a new generation, so the barrier can be
 * used again at once. A waiter cancelled before the release withdraws its
 * arrival.
 */
struct keel_barrier;

/* keel_res of the one arrival that released the others (the last one). */
#define KEEL_BARRIER_LEADER 1

/*
 * A barrier for `parties` (>= 1) tasks. 0, -EINVAL or -ENOMEM.
 * Ownership: the caller owns the barrier: keel_barrier_free().
 */
int keel_barrier_new(struct keel_loop *loop, uint32_t parties,
		     struct keel_barrier **out);

/*
 * Free it; waiters are woken with -EPIPE.
 * Ownership: `b` is freed.
 */
void keel_barrier_free(struct keel_barrier *b);

/*
 * Arrive and await the others. keel_res: 0, KEEL_BARRIER_LEADER, the
 * cancellation cause (not counted as arrived), -EPIPE (freed while t
 * waited), -EXDEV.
 * Ownership: nothing changes hands.
 */
int keel_barrier_wait(struct keel_task *t, struct keel_barrier *b);

/*
 * Completed generations (releases) so far.
 * Ownership: reads the barrier; nothing changes hands.
 */
uint64_t keel_barrier_generation(const struct keel_barrier *b);

/* ---- countdown latch ----------------------------------------------------
 * A count that only goes down; tasks wait until it reaches zero (Java's
 * CountDownLatch, C++ std::latch). Single use.
 */
struct keel_latch;

/* Ownership: the caller owns the latch: keel_latch_free(). */
int keel_latch_new(struct keel_loop *loop, uint32_t count,
		   struct keel_latch **out);

/*
 * Free it; waiters are woken with -EPIPE.
 * Ownership: `l` is freed.
 */
void keel_latch_free(struct keel_latch *l);

/*
 * Count down by `n` (stopping at zero); at zero every waiter is woken.
 * Returns the count left, or -EXDEV.
 * Ownership: nothing changes hands.
 */
int64_t keel_latch_count_down(struct keel_latch *l, uint32_t n);

/*
 * Await zero. keel_res: 0, the cancellation cause, -EPIPE (freed while t
 * waited), -EXDEV.
 * Ownership: nothing changes hands.
 */
int keel_latch_wait(struct keel_task *t, struct keel_latch *l);

/* Ownership: reads the latch; nothing changes hands. */
uint32_t keel_latch_count(const struct keel_latch *l);

/* ---- rwlock -------------------------------------------------------------
 * Many readers or one writer, held across awaits. Writer-preferring: once
 * a writer waits, new readers queue behind it, so a stream of readers
 * cannot starve writers. Waiters are served in FIFO order, the readers at
 * the head of the queue together (a writer releasing it lets in every
 * reader queued before the next writer). As with the mutex, the lock is
 * handed to the waiters it admits before they run, nobody barges in
 * between, and a task that exits holding it leaves it held (keel_defer()).
 * The writer is tracked (keel_rwlock_writer()); readers are counted (and
 * the first four recorded by task, for keel_loop_deadlocks()).
 */
struct keel_rwlock;

/* Ownership: the caller owns the rwlock: keel_rwlock_free(). */
int keel_rwlock_new(struct keel_loop *loop, struct keel_rwlock **out);

/*
 * Free it, held or not; waiters are woken with -EPIPE.
 * Ownership: `rw` is freed.
 */
void keel_rwlock_free(struct keel_rwlock *rw);

/*
 * Await a read (shared) hold until `deadline_ns` (absolute; UINT64_MAX:
 * none). keel_res: 0 (t holds a read hold), -ETIMEDOUT, the cancellation
 * cause, -EDEADLK (t holds the write lock), -EPIPE (freed while t waited),
 * -ENOMEM, -EXDEV. A waiter that gives up leaves the queue and never holds
 * the lock.
 * Ownership: on 0, one read hold until keel_rwlock_read_unlock().
 */
int keel_rwlock_read_lock(struct keel_task *t, struct keel_rwlock *rw,
			  uint64_t deadline_ns);

/*
 * Await the write (exclusive) lock until `deadline_ns`. keel_res: as
 * keel_rwlock_read_lock(); -EDEADLK when t holds it already.
 * Ownership: on 0, `t` holds it until keel_rwlock_write_unlock().
 */
int keel_rwlock_write_lock(struct keel_task *t, struct keel_rwlock *rw,
			   uint64_t deadline_ns);

/*
 * Without waiting: 0, or -EBUSY (held by a writer or, for a read, a writer
 * waits; for a write, held at all).
 * Ownership: as the awaits.
 */
int keel_rwlock_try_read_lock(struct keel_rwlock *rw);
int keel_rwlock_try_write_lock(struct keel_task *t, struct keel_rwlock *rw);

/*
 * Give back a read hold / the write lock, admitting waiters in order.
 * 0, -EPERM (no read hold is out / t is not the writer), -EXDEV.
 * Ownership: the hold goes back to the lock.
 */
int keel_rwlock_read_unlock(struct keel_rwlock *rw);
int keel_rwlock_write_unlock(struct keel_task *t, struct keel_rwlock *rw);

/*
 * The writer holding it, or NULL; and the read holds out.
 * Ownership: a pointer to the writing task, valid while it runs; not a
 * reference.
 */
struct keel_task *keel_rwlock_writer(const struct keel_rwlock *rw);
uint32_t keel_rwlock_readers(const struct keel_rwlock *rw);

/* ---- condition variable -------------------------------------------------
 * Tasks wait, with a keel_mutex they hold, for a signal (asyncio's
 * Condition, pthread_cond_t). The wait releases the mutex and sleeps in one
 * step, so a signal sent after the mutex is released is never lost; the
 * mutex is held again when the wait returns, whatever it returns (as
 * pthread_cond_timedwait() after a timeout, and after a cancellation
 * cleanup handler runs): a waiter that is signalled, times out or is
 * cancelled then queues for the mutex like any locker, and that second
 * wait cannot be cancelled or time out. Waiters are woken in FIFO order.
 * As with pthreads, a wakeup says "look again": check the predicate in a
 * loop. All waiters at a time use the same mutex.
 */
struct keel_cond;

/* Ownership: the caller owns it: keel_cond_free(). */
int keel_cond_new(struct keel_loop *loop, struct keel_cond **out);

/*
 * Free it; waiters take their mutex back as after a signal, then get
 * -EPIPE.
 * Ownership: `cv` is freed.
 */
void keel_cond_free(struct keel_cond *cv);

/*
 * Release `m` (which t holds), await a signal until `deadline_ns`
 * (absolute; UINT64_MAX: none), then take `m` back. keel_res: 0
 * (signalled), -ETIMEDOUT, the cancellation cause (t holds `m` again in
 * all three), or, with `m` held and never released: -EPERM (t does not
 * hold it), -EINVAL (other waiters use another mutex), -ENOMEM, -EXDEV,
 * and the cause of a token already cancelled at the call. -EPIPE: the
 * condition variable was freed while t waited (t holds `m` again), or the
 * mutex was (it is gone).
 * Ownership: `m` is released for the wait and held again on return.
 */
int keel_cond_wait(struct keel_task *t, struct keel_cond *cv,
		   struct keel_mutex *m, uint64_t deadline_ns);

/*
 * Wake the first waiter / every waiter (each then takes the mutex in
 * turn). Returns the number woken, or -EXDEV.
 * Ownership: nothing changes hands.
 */
int keel_cond_signal(struct keel_cond *cv);
int keel_cond_broadcast(struct keel_cond *cv);

/* ---- ticker -------------------------------------------------------------
 * An interval timer a task awaits: ticks are due at start + k * interval.
 * A tick the task was too late for is "missed"; the policy says what
 * then:
 *   KEEL_TICK_BURST  every tick is delivered: the missed ones return back
 *                    to back (one per wait) until it has caught up; the
 *                    schedule is kept;
 *   KEEL_TICK_DELAY  one wait returns them all; the next tick is due one
 *                    interval after that late wait (the schedule slides);
 *   KEEL_TICK_SKIP   one wait returns them all; the next tick is the next
 *                    one of the original schedule (the missed are skipped).
 * (tokio's MissedTickBehavior Burst, Delay, Skip.)
 */
enum keel_tick_policy {
	KEEL_TICK_BURST = 0,
	KEEL_TICK_DELAY = 1,
	KEEL_TICK_SKIP = 2,
};

struct keel_ticker;

/*
 * A ticker on `loop` whose first tick is due `interval_ns` (>= 1) from now.
 * 0, -EINVAL or -ENOMEM.
 * Ownership: the caller owns it: keel_ticker_free().
 */
int keel_ticker_new(struct keel_loop *loop, uint64_t interval_ns,
		    enum keel_tick_policy policy, struct keel_ticker **out);

/*
 * Free it; a waiting task is woken with -EPIPE.
 * Ownership: `tk` is freed.
 */
void keel_ticker_free(struct keel_ticker *tk);

/*
 * Await the next tick. keel_res: the ticks this wait accounts for (>= 1:
 * 1 on time, 1 + the missed ones with DELAY and SKIP; always 1 with
 * BURST), the cancellation cause, -EBUSY (another task waits on it),
 * -EPIPE (freed while t waited), -ENOMEM, -EXDEV.
 * Ownership: nothing changes hands.
 */
int keel_ticker_wait(struct keel_task *t, struct keel_ticker *tk);

/*
 * Start the schedule again: the next tick is due one interval from now.
 * Ownership: nothing changes hands.
 */
void keel_ticker_reset(struct keel_ticker *tk);

/*
 * When the next tick is due (CLOCK_MONOTONIC ns), and the ticks missed so
 * far (delivered late with BURST, folded into a wait with DELAY and SKIP).
 * Ownership: reads the ticker; nothing changes hands.
 */
uint64_t keel_ticker_next(const struct keel_ticker *tk);
uint64_t keel_ticker_missed(const struct keel_ticker *tk);

#ifdef __cplusplus
}
#endif
#endif
