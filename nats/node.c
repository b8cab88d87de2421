/* SPDX-License-Identifier: MIT */
/*
 * nats/node.c: a node (keel/node.h): cnats driven by a keel loop through
 * cnats's event-loop adapter, served names, tells, asks and replies, and
 * the node's counters.
 *
 * Who runs where. With natsOptions_SetEventLoop cnats has no reader or
 * flusher thread: it asks the adapter (attach / read / write / detach,
 * below) to watch its socket, and the loop calls
 * natsConnection_ProcessReadEvent / ProcessWriteEvent when the ring says
 * the socket is ready. The driver task does that: it selects over a
 * POLLIN and a POLLOUT keel_poll() of the socket and the node's control
 * mailbox. Served names and the reply inbox are synchronous subscriptions,
 * which have no delivery thread: the driver drains them with
 * natsSubscription_NextMsg(0) after each read, so a message goes from the
 * socket to a served mailbox without leaving the loop's thread.
 *
 * cnats still runs three kinds of threads of its own: the timer thread
 * (pings; a ping queues bytes, so it calls the write callback), the
 * reconnect thread while the server is away (it connects, then calls
 * attach), and the thread that runs the connection callbacks
 * (disconnected, reconnected, closed, errors such as slow consumer).
 * keel_node_connect/close add a blocking-pool thread for cnats's blocking
 * connect and close. None of them calls a loop-thread function: they set
 * bits in node->events and, when the bits were clear, send one wake-up
 * into the control mailbox (keel_mb_try_send: never waits; a full box
 * would be counted in wake_drops, but one wake-up at most is in it).
 *
 * Remote supervision: a heartbeat (type T_HEARTBEAT, an ask) sent to a
 * served name is answered by drain_served itself, on the loop, while the
 * name is served and its mailbox is open (keel_mb_is_closed): whether the
 * serving process and its loop are alive is what a monitor asks, and a
 * heartbeat queued behind a busy actor's mailbox would measure its load
 * instead. keel_node_monitor is a routine over keel_node_ask's.
 */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <linux/io_uring.h>
#include <nats/nats.h>

#include <keel/io.h>
#include <keel/loop.h>
#include <keel/node.h>
#include <keel/select.h>
#include <keel/sync.h>
#include <keel/task.h>
#include <keel/trace.h>

/* keel's header in front of every payload: magic, version, type,
 * generation, request id; little endian. */
#define HDR_LEN	    16
#define HDR_MAGIC   0x4b /* 'K' */
#define HDR_VERSION 1

/* keel's own message types (KEEL_NODE_TYPE_RESERVED and up). */
#define T_HEARTBEAT KEEL_NODE_TYPE_RESERVED

/* node->events: what cnats's threads tell the driver. */
#define EV_IO	      0x1u /* the socket or what to watch changed */
#define EV_DISCONNECT 0x2u
#define EV_RECONNECT  0x4u
#define EV_CLOSED     0x8u
#define EV_CONNECTED  0x10u
#define EV_STOP	      0x20u

struct served {
	struct served *next;
	char *name;
	natsSubscription *sub;
	struct keel_mailbox *mb;
};

/* An ask waiting for its reply: a slot of the node's table, named in the
 * reply subject by its index and the ask's sequence number. */
struct pending {
	struct keel_oneshot *os; /* the node's reference; NULL: free slot */
	uint64_t seq;		 /* the ask's request id */
	uint64_t epoch;		 /* fences published before it */
	uint32_t next_free;
};

/* The last ask of an epoch whose no-responders status may still come. */
struct candidate {
	uint64_t epoch, seq;
	uint32_t slot;
};

struct counters {
	_Atomic uint64_t disconnects, reconnects, tells, asks, send_nobufs,
	    send_failed, ask_timeouts, ask_no_resp, received, dropped,
	    slow_consumer, wake_drops;
};

struct keel_node {
	struct keel_loop *loop;
	natsOptions *opts;
	_Atomic(natsConnection *) nc;
	struct keel_mailbox *ctl;
	char *name;
	char *label; /* the name as a Prometheus label value, escaped */
	keel_node_state_fn on_state;
	void *state_arg;
	uint64_t rc_min_ms, rc_max_ms;
	uint32_t pending_msgs, pending_bytes;
	_Atomic unsigned events;
	_Atomic int fd;
	_Atomic bool want_read, want_write;
	_Atomic int state;
	_Atomic bool closed_cb;	       /* cnats ran its closed callback */
	enum keel_node_state reported; /* to on_state; loop thread */
	struct served *served;
	/* Asks (loop thread): see "asks" below. */
	natsSubscription *replies; /* <inbox>.>, made by the first ask */
	char inbox[64];		   /* "_INBOX.<nuid>" */
	size_t inbox_len;
	struct pending *slots;
	uint32_t nslots, free_slot;
	struct candidate *cands; /* a ring, oldest epoch first */
	uint32_t ncands, cand_head, cand_cap;
	uint64_t fences_sent, fence_seen, blind_until;
	bool must_fence;
	uint64_t next_req;
	uint64_t link_up_at; /* loop time of the last reconnect; loop thread */
	uint32_t generation;
	int refs; /* the owner's and the driver's; loop thread */
	bool stopping;
	bool closed_once;
	unsigned char *scratch; /* header + payload being published */
	size_t scratch_len;
	struct counters c;
};

static void count(_Atomic uint64_t *c)
{
	atomic_fetch_add_explicit(c, 1, memory_order_relaxed);
}

static uint64_t load(const _Atomic uint64_t *c)
{
	return atomic_load_explicit(c, memory_order_relaxed);
}

static int errno_of(natsStatus s)
{
	switch (s) {
	case NATS_OK:
		return 0;
	case NATS_INSUFFICIENT_BUFFER:
		return -ENOBUFS;
	case NATS_CONNECTION_CLOSED:
	case NATS_CONNECTION_DISCONNECTED:
	case NATS_NO_RESPONDERS:
		return -EPIPE;
	case NATS_NO_SERVER:
		return -ECONNREFUSED;
	case NATS_TIMEOUT:
		return -ETIMEDOUT;
	case NATS_NO_MEMORY:
		return -ENOMEM;
	case NATS_INVALID_ARG:
	case NATS_INVALID_SUBJECT:
		return -EINVAL;
	case NATS_MAX_PAYLOAD:
		return -EMSGSIZE;
	default:
		return -EIO;
	}
}

/* From any thread: set `bits` and wake the driver unless a wake-up is
 * already on its way (the bits were set). */
static void post(struct keel_node *n, unsigned bits)
{
	if (atomic_fetch_or(&n->events, bits))
		return;
	if (keel_mb_try_send(n->ctl, n) < 0)
		count(&n->c.wake_drops);
}

/* ---- cnats's event-loop adapter: any cnats thread, or the loop's ---- */

static natsStatus ev_attach(void **user, void *loop, natsConnection *nc,
			    natsSock sock)
{
	struct keel_node *n = loop;

	*user = n;
	atomic_store(&n->nc, nc);
	atomic_store(&n->fd, (int)sock);
	atomic_store(&n->want_read, true);
	post(n, EV_IO);
	return NATS_OK;
}

static natsStatus ev_read(void *user, bool add)
{
	struct keel_node *n = user;

	atomic_store(&n->want_read, add);
	post(n, EV_IO);
	return NATS_OK;
}

static natsStatus ev_write(void *user, bool add)
{
	struct keel_node *n = user;

	/* A publish from the loop asks for a write each time the buffer
	 * was empty: the wake-up is the driver's cue to flush the batch. */
	atomic_store(&n->want_write, add);
	if (add)
		post(n, EV_IO);
	return NATS_OK;
}

static natsStatus ev_detach(void *user)
{
	struct keel_node *n = user;

	/* cnats closes the socket after this: the driver's polls of it
	 * must go, which the wake-up makes it do. */
	atomic_store(&n->fd, -1);
	atomic_store(&n->want_write, false);
	post(n, EV_IO);
	return NATS_OK;
}

static void on_disconnected(natsConnection *nc, void *arg)
{
	(void)nc;
	post(arg, EV_DISCONNECT);
}

static void on_reconnected(natsConnection *nc, void *arg)
{
	(void)nc;
	post(arg, EV_RECONNECT);
}

static void on_closed(natsConnection *nc, void *arg)
{
	struct keel_node *n = arg;

	(void)nc;
	post(n, EV_CLOSED);
	/* The last callback of a closed connection: close_job waits for
	 * it, so that none runs on a freed node. */
	atomic_store(&n->closed_cb, true);
}

static void on_error(natsConnection *nc, natsSubscription *sub, natsStatus err,
		     void *arg)
{
	struct keel_node *n = arg;

	(void)nc;
	(void)sub;
	if (err == NATS_SLOW_CONSUMER)
		count(&n->c.slow_consumer);
}

/* Exponential backoff from reconnect_min up to reconnect_max (cnats
 * calls it after a round of failed attempts, from its reconnect thread). */
static int64_t reconnect_delay(natsConnection *nc, int attempts, void *arg)
{
	struct keel_node *n = arg;
	uint64_t ms = n->rc_min_ms;

	(void)nc;
	for (int i = 1; i < attempts && ms < n->rc_max_ms; i++)
		ms *= 2;
	return (int64_t)(ms < n->rc_max_ms ? ms : n->rc_max_ms);
}

/* ---- messages ---- */

static void put16(unsigned char *p, uint16_t v)
{
	p[0] = (unsigned char)v;
	p[1] = (unsigned char)(v >> 8);
}

static void put32(unsigned char *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (unsigned char)(v >> (8 * i));
}

static void put64(unsigned char *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t get_le(const unsigned char *p, int bytes)
{
	uint64_t v = 0;

	for (int i = bytes - 1; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

/* Wrap a received natsMsg. A payload without keel's header (a plain NATS
 * client's) is passed whole, with type 0. */
static struct keel_node_msg *wrap(natsMsg *m)
{
	struct keel_node_msg *km = calloc(1, sizeof(*km));
	const unsigned char *p = (const unsigned char *)natsMsg_GetData(m);
	int len = natsMsg_GetDataLength(m);

	if (!km)
		return NULL;
	km->priv = m;
	km->name = natsMsg_GetSubject(m);
	km->data = p;
	km->len = len > 0 ? (size_t)len : 0;
	if (len >= HDR_LEN && p[0] == HDR_MAGIC && p[1] == HDR_VERSION) {
		km->type = (uint16_t)get_le(p + 2, 2);
		km->generation = (uint32_t)get_le(p + 4, 4);
		km->request_id = get_le(p + 8, 8);
		km->data = p + HDR_LEN;
		km->len = (size_t)len - HDR_LEN;
	}
	return km;
}

void keel_node_msg_free(struct keel_node_msg *msg)
{
	if (!msg)
		return;
	natsMsg_Destroy(msg->priv);
	free(msg);
}

void keel_node_msg_drop(void *msg, void *arg)
{
	(void)arg;
	keel_node_msg_free(msg);
}

/* Publish keel's header and `data` to `subject` (loop thread). */
static int publish(struct keel_node *n, const char *subject, const char *reply,
		   uint16_t type, uint64_t req, const void *data, size_t len)
{
	natsConnection *nc = atomic_load(&n->nc);

	if (!subject || (len && !data) || len > INT32_MAX - HDR_LEN)
		return -EINVAL;
	if (atomic_load(&n->state) == KEEL_NODE_CLOSED)
		return -EPIPE;
	if (!nc)
		return -ENOTCONN;
	if (n->scratch_len < HDR_LEN + len) {
		size_t want = HDR_LEN + len < 4096 ? 4096 : HDR_LEN + len;
		unsigned char *p = realloc(n->scratch, want);

		if (!p)
			return -ENOMEM;
		n->scratch = p;
		n->scratch_len = want;
	}
	n->scratch[0] = HDR_MAGIC;
	n->scratch[1] = HDR_VERSION;
	put16(n->scratch + 2, type);
	put32(n->scratch + 4, n->generation);
	put64(n->scratch + 8, req);
	if (len)
		memcpy(n->scratch + HDR_LEN, data, len);
	/* PublishRequest refuses a NULL reply. */
	natsStatus s =
	    reply ? natsConnection_PublishRequest(
			nc, subject, reply, n->scratch, (int)(HDR_LEN + len))
		  : natsConnection_Publish(nc, subject, n->scratch,
					   (int)(HDR_LEN + len));
	int err = errno_of(s);

	if (err == -ENOBUFS)
		count(&n->c.send_nobufs);
	else if (err)
		count(&n->c.send_failed);
	return err;
}

int keel_node_tell(struct keel_node *node, const char *name, uint16_t type,
		   const void *data, size_t len)
{
	int err = type >= KEEL_NODE_TYPE_RESERVED
		      ? -EINVAL
		      : publish(node, name, NULL, type, 0, data, len);

	if (!err)
		count(&node->c.tells);
	return err;
}

int keel_node_reply(struct keel_node *node, const struct keel_node_msg *req,
		    uint16_t type, const void *data, size_t len)
{
	const char *to = req && req->priv ? natsMsg_GetReply(req->priv) : NULL;

	if (!to || !*to || type >= KEEL_NODE_TYPE_RESERVED)
		return -EINVAL;
	int err = publish(node, to, NULL, type, req->request_id, data, len);

	if (!err)
		count(&node->c.tells);
	return err;
}

void keel_node_set_generation(struct keel_node *node, uint32_t generation)
{
	node->generation = generation;
}

/* ---- asks ----
 *
 * One subscription per node takes every reply, <inbox>.> (as cnats's own
 * "new style" request does), and an ask's reply subject names its slot in
 * the node's table and its sequence number, <inbox>.<slot>.<seq> in hex:
 * a reply finds its ask without a subscription of its own (no SUB and
 * UNSUB per ask), and a late one, whose slot is free or was reused (the
 * sequence differs), is dropped.
 *
 * No responders is the catch: the server answers a request that nobody
 * serves with a status message to its reply subject, which
 * natsSubscription_NextMsg reports as NATS_NO_RESPONDERS and destroys,
 * subject and all: which ask it was for is not said. The order of the
 * server's output says it. The server sends the status while it processes
 * the request, so statuses come in the order of our requests, and a fence
 * (the node's own publish to <inbox>.z.<k>, echoed back) comes after the
 * statuses of every request published before it. Asks fall into epochs,
 * the fences between them, and an epoch holds at most one ask that may
 * still get a status: an ask published while the previous one is neither
 * answered nor its status seen (it waits, or gave up) publishes a fence
 * first. A status seen after fence k is then the one such ask of epoch k.
 * Asks one at a time need no fence; concurrent ones cost a small publish
 * and its echo each.
 */

#define NO_SLOT UINT32_MAX

/* The slot of ask `seq`, if that ask still has one. */
static struct pending *slot_of(struct keel_node *n, uint64_t i, uint64_t seq)
{
	struct pending *p = i < n->nslots ? &n->slots[i] : NULL;

	return p && p->os && p->seq == seq ? p : NULL;
}

static void slot_free(struct keel_node *n, struct pending *p)
{
	keel_oneshot_release(p->os);
	p->os = NULL;
	p->next_free = n->free_slot;
	n->free_slot = (uint32_t)(p - n->slots);
}

static int slots_grow(struct keel_node *n)
{
	uint32_t cap = n->nslots ? n->nslots * 2 : 8;
	struct pending *s;

	if (cap <= n->nslots || !(s = realloc(n->slots, cap * sizeof(*s))))
		return -ENOMEM;
	n->slots = s;
	for (uint32_t i = cap; i-- > n->nslots;) {
		s[i].os = NULL;
		s[i].next_free = n->free_slot;
		n->free_slot = i;
	}
	n->nslots = cap;
	return 0;
}

/* A free slot's index. When none is free, asks given up that no status
 * can reach any more are freed (the reply that would free their slots may
 * never come), and the table grows if that freed less than a quarter. */
static int slot_new(struct keel_node *n, uint32_t *out)
{
	if (n->free_slot == NO_SLOT) {
		uint32_t freed = 0;

		for (uint32_t i = 0; i < n->nslots; i++) {
			struct pending *p = &n->slots[i];

			if (p->os && p->epoch < n->fence_seen &&
			    keel_oneshot_is_closed(p->os)) {
				slot_free(n, p);
				freed++;
			}
		}
		if ((!freed || freed * 4 < n->nslots) && slots_grow(n) &&
		    !freed)
			return -ENOMEM;
	}
	*out = n->free_slot;
	n->free_slot = n->slots[*out].next_free;
	return 0;
}

/* Ask `slot`/`seq` is now the last of the current epoch. */
static int candidate_note(struct keel_node *n, uint32_t slot, uint64_t seq)
{
	struct candidate *c;

	if (n->ncands) {
		c = &n->cands[(n->cand_head + n->ncands - 1) % n->cand_cap];
		if (c->epoch == n->fences_sent)
			goto set; /* its previous last was answered */
	}
	if (n->ncands == n->cand_cap) {
		uint32_t cap = n->cand_cap ? n->cand_cap * 2 : 8;
		struct candidate *r = malloc(cap * sizeof(*r));

		if (!r)
			return -ENOMEM;
		for (uint32_t i = 0; i < n->ncands; i++)
			r[i] = n->cands[(n->cand_head + i) % n->cand_cap];
		free(n->cands);
		n->cands = r;
		n->cand_cap = cap;
		n->cand_head = 0;
	}
	c = &n->cands[(n->cand_head + n->ncands++) % n->cand_cap];
set:
	c->epoch = n->fences_sent;
	c->slot = slot;
	c->seq = seq;
	return 0;
}

/* Whether the next ask must open an epoch: the current one's last ask may
 * still get a status. */
static bool fence_needed(struct keel_node *n)
{
	const struct candidate *c;

	if (n->must_fence)
		return true;
	if (!n->ncands)
		return false;
	c = &n->cands[(n->cand_head + n->ncands - 1) % n->cand_cap];
	return c->epoch == n->fences_sent && slot_of(n, c->slot, c->seq);
}

static int fence(struct keel_node *n, natsConnection *nc)
{
	char subj[sizeof(n->inbox) + 24];
	int err;

	/* 'z': no slot index (hex) starts with it. */
	snprintf(subj, sizeof(subj), "%s.z.%" PRIx64, n->inbox,
		 n->fences_sent + 1);
	err = errno_of(natsConnection_Publish(nc, subj, NULL, 0));
	if (!err) {
		n->fences_sent++;
		n->must_fence = false;
	}
	return err;
}

/* Fence k came back: the statuses of every ask before it came too. */
static void fence_back(struct keel_node *n, uint64_t k)
{
	if (k <= n->fence_seen)
		return;
	n->fence_seen = k;
	while (n->ncands && n->cands[n->cand_head].epoch < k) {
		struct candidate *c = &n->cands[n->cand_head];
		struct pending *p = slot_of(n, c->slot, c->seq);

		if (p && keel_oneshot_is_closed(p->os))
			slot_free(n, p); /* given up; no status can come */
		n->cand_head = (n->cand_head + 1) % n->cand_cap;
		n->ncands--;
	}
}

/* A status: for the ask of the epoch the last fence seen opened. */
static void no_responders(struct keel_node *n)
{
	const struct candidate *c;
	struct pending *p;

	/* Replies were lost (slow consumer): a fence published since must
	 * come back before a status can be placed again. */
	if (n->fence_seen < n->blind_until || !n->ncands)
		return;
	c = &n->cands[n->cand_head];
	if (c->epoch != n->fence_seen || !(p = slot_of(n, c->slot, c->seq)))
		return;
	if (!keel_oneshot_is_closed(p->os))
		count(&n->c.ask_no_resp);
	keel_oneshot_fail(p->os, -EPIPE);
	slot_free(n, p);
}

static void reply_in(struct keel_node *n, natsMsg *m)
{
	const char *s = natsMsg_GetSubject(m) + n->inbox_len + 1;
	struct keel_node_msg *km;
	struct pending *p;
	char *end;

	if (s[0] == 'z' && s[1] == '.') {
		fence_back(n, strtoull(s + 2, NULL, 16));
		natsMsg_Destroy(m);
		return;
	}
	uint64_t slot = strtoull(s, &end, 16);

	p = *end == '.' ? slot_of(n, slot, strtoull(end + 1, NULL, 16)) : NULL;
	if (!p) {
		natsMsg_Destroy(m); /* late: its ask is gone */
		return;
	}
	km = wrap(m);
	if (!km) {
		natsMsg_Destroy(m);
		keel_oneshot_fail(p->os, -ENOMEM);
	} else if (keel_oneshot_send(p->os, km) < 0) {
		keel_node_msg_free(km); /* its task gave up */
	}
	slot_free(n, p);
}

/* Hand replies and no-responders to their asks. */
static void drain_replies(struct keel_node *n)
{
	natsMsg *m;
	natsStatus s;

	while (n->replies && (s = natsSubscription_NextMsg(
				  &m, n->replies, 0)) != NATS_TIMEOUT) {
		if (s == NATS_OK) {
			reply_in(n, m);
		} else if (s == NATS_NO_RESPONDERS) {
			no_responders(n);
		} else if (s == NATS_SLOW_CONSUMER) {
			n->blind_until = n->fences_sent + 1;
			n->must_fence = true;
		} else {
			break;
		}
	}
}

/* Fail every ask waiting (the link to the server is gone, or the node
 * closes). Statuses still on their way are for asks no longer there: the
 * next ask opens an epoch of its own. */
static void fail_asks(struct keel_node *n, int err)
{
	for (uint32_t i = 0; i < n->nslots; i++) {
		struct pending *p = &n->slots[i];

		if (!p->os)
			continue;
		if (!keel_oneshot_is_closed(p->os))
			count(&n->c.ask_no_resp);
		keel_oneshot_fail(p->os, err);
		slot_free(n, p);
	}
	n->ncands = 0;
	n->must_fence = true;
}

static int replies_open(struct keel_node *n, natsConnection *nc)
{
	char subj[sizeof(n->inbox) + 2];
	natsInbox *inbox = NULL;
	natsStatus s = natsInbox_Create(&inbox);

	if (s == NATS_OK) {
		n->inbox_len =
		    (size_t)snprintf(n->inbox, sizeof(n->inbox), "%s", inbox);
		snprintf(subj, sizeof(subj), "%s.>", n->inbox);
		s = natsConnection_SubscribeSync(&n->replies, nc, subj);
	}
	natsInbox_Destroy(inbox);
	if (s == NATS_OK)
		s = natsSubscription_SetPendingLimits(
		    n->replies, (int)n->pending_msgs, (int)n->pending_bytes);
	if (s != NATS_OK && n->replies) {
		natsSubscription_Unsubscribe(n->replies);
		natsSubscription_Destroy(n->replies);
		n->replies = NULL;
	}
	return errno_of(s);
}

static void replies_close(struct keel_node *n)
{
	if (!n->replies)
		return;
	/* Unsubscribing a closed connection's subscription fails; it is
	 * gone with the connection anyway. */
	natsSubscription_Unsubscribe(n->replies);
	natsSubscription_Destroy(n->replies);
	n->replies = NULL;
}

static void drain_served(struct keel_node *n)
{
	for (struct served *s = n->served; s; s = s->next) {
		natsMsg *m;
		natsStatus st;

		/* NextMsg says NATS_SLOW_CONSUMER once, before the messages
		 * still queued, when cnats dropped some: go on draining. */
		while ((st = natsSubscription_NextMsg(&m, s->sub, 0)) ==
			   NATS_OK ||
		       st == NATS_SLOW_CONSUMER) {
			if (st != NATS_OK)
				continue;
			struct keel_node_msg *km = wrap(m);
			int r;

			if (!km) {
				natsMsg_Destroy(m);
				count(&n->c.dropped);
				continue;
			}
			if (km->type == T_HEARTBEAT && km->request_id) {
				const char *to = natsMsg_GetReply(m);

				/* A closed mailbox: its actor is gone. */
				if (!keel_mb_is_closed(s->mb) && to && *to)
					publish(n, to, NULL, T_HEARTBEAT,
						km->request_id, NULL, 0);
				keel_node_msg_free(km);
				continue;
			}
			/* Never waits: a full BLOCK mailbox drops too. */
			r = keel_mb_try_send(s->mb, km);
			if (r == 0) {
				count(&n->c.received);
				continue;
			}
			count(&n->c.dropped);
			if (r < 0)
				keel_node_msg_free(km);
		}
	}
}

static void msg_drop(void *msg, void *arg)
{
	(void)arg;
	keel_node_msg_free(msg);
}

/* Publish the request; on 0, c->os awaits the reply. */
static int ask_start(struct keel_node *n, struct keel_node_call *c,
		     const char *name, uint16_t type, const void *data,
		     size_t len)
{
	natsConnection *nc = atomic_load(&n->nc);
	char reply[sizeof(n->inbox) + 40];
	struct pending *p;
	uint32_t slot;
	int err;

	switch (atomic_load(&n->state)) {
	case KEEL_NODE_CONNECTED:
		break;
	case KEEL_NODE_RECONNECTING:
		count(&n->c.ask_no_resp);
		return -EPIPE;
	default:
		return -ENOTCONN;
	}
	if (!nc || n->closed_once)
		return -ENOTCONN;
	if (!n->replies && (err = replies_open(n, nc)))
		return err;
	if (fence_needed(n) && (err = fence(n, nc)))
		return err;
	err = keel_oneshot_new(n->loop, msg_drop, NULL, &c->os);
	if (err)
		return err;
	err = slot_new(n, &slot);
	if (err) {
		keel_oneshot_release(c->os);
		c->os = NULL;
		return err;
	}
	p = &n->slots[slot];
	p->os = keel_oneshot_ref(c->os);
	p->seq = ++n->next_req;
	p->epoch = n->fences_sent;
	snprintf(reply, sizeof(reply), "%s.%x.%" PRIx64, n->inbox, slot,
		 p->seq);
	err = publish(n, name, reply, type, p->seq, data, len);
	if (!err)
		err = candidate_note(n, slot, p->seq);
	if (err) {
		/* A request that may have gone out opens no epoch's last. */
		n->must_fence = true;
		slot_free(n, p);
		keel_oneshot_release(c->os);
		c->os = NULL;
		return err;
	}
	count(&n->c.asks);
	return 0;
}

/* Await the reply. The task lets go of its reference on the slot at once
 * (the wait holds one of its own), so that a task killed mid-ask leaves
 * nothing behind: the node's reference goes with the slot. */
static int await_reply(struct keel_task *t, struct keel_node_call *c,
		       uint64_t deadline_ns)
{
	int r = keel_oneshot_recv_until(t, c->os, &c->val, deadline_ns);

	keel_oneshot_release(c->os);
	c->os = NULL;
	return r;
}

static int ask_call(struct keel_task *t, struct keel_node_call *call,
		    struct keel_node *node, const char *name, uint16_t type,
		    const void *data, size_t len, uint64_t timeout_ns,
		    struct keel_node_msg **reply)
{
	KEEL_BEGIN(&call->r);
	call->os = NULL;
	call->val = NULL;
	call->err = ask_start(node, call, name, type, data, len);
	if (call->err)
		KEEL_ROUTINE_RETURN(&call->r, t, call->err);
	KEEL_AWAIT(
	    &call->r,
	    await_reply(t, call,
			timeout_ns >= UINT64_MAX - keel_loop_now(node->loop)
			    ? UINT64_MAX
			    : keel_loop_now(node->loop) + timeout_ns));
	call->err = keel_res(t);
	if (call->err == -ETIMEDOUT)
		count(&node->c.ask_timeouts);
	if (!call->err)
		*reply = call->val;
	KEEL_ROUTINE_RETURN(&call->r, t, call->err);
}

int keel_node_ask(struct keel_task *t, struct keel_node_call *call,
		  struct keel_node *node, const char *name, uint16_t type,
		  const void *data, size_t len, uint64_t timeout_ns,
		  struct keel_node_msg **reply)
{
	/* The same type is passed on every call of one await: refused on
	 * the first, there is no other. */
	if (type >= KEEL_NODE_TYPE_RESERVED) {
		t->res = -EINVAL;
		return KEEL_READY;
	}
	return ask_call(t, call, node, name, type, data, len, timeout_ns,
			reply);
}

/* ---- remote supervision ---- */

static uint64_t sat_add(uint64_t a, uint64_t b)
{
	return a >= UINT64_MAX - b ? UINT64_MAX : a + b;
}

int keel_node_monitor(struct keel_task *t, struct keel_node_monitor *mon,
		      struct keel_node *node, const char *name,
		      uint64_t interval_ns, uint64_t deadline_ns)
{
	/* Arguments of an await are read on its first call only. */
	uint64_t now = 0, until = 0;

	KEEL_BEGIN(&mon->r);
	if (!node || !name || !*name || !interval_ns || !deadline_ns)
		KEEL_ROUTINE_RETURN(&mon->r, t, -EINVAL);
	mon->name = name;
	mon->interval_ns = interval_ns;
	mon->deadline_ns = deadline_ns;
	mon->last_ok = keel_loop_now(node->loop);
	for (;;) {
		/* A heartbeat waits one interval at most: one sent to a
		 * process that just died is never answered, and the next
		 * one learns at once that nobody serves the name. */
		now = keel_loop_now(node->loop);
		until = sat_add(mon->last_ok, mon->deadline_ns);
		if (now >= until)
			break;
		KEEL_AWAIT_CALL(&mon->r,
				ask_call(t, &mon->call, node, mon->name,
					 T_HEARTBEAT, NULL, 0,
					 until - now < mon->interval_ns
					     ? until - now
					     : mon->interval_ns,
					 &mon->reply));
		mon->err = keel_res(t);
		if (mon->err == -ETIMEDOUT)
			continue; /* unanswered: again, until the deadline */
		/* No responders is trusted unless our link was down since
		 * the last answer: then the serving node may not have
		 * subscribed again yet, and the deadline decides. */
		if (mon->err == -EPIPE &&
		    keel_node_state(node) != KEEL_NODE_RECONNECTING &&
		    node->link_up_at <= mon->last_ok)
			break; /* nobody serves it */
		if (mon->err && mon->err != -EPIPE)
			KEEL_ROUTINE_RETURN(&mon->r, t, mon->err);
		if (!mon->err) {
			keel_node_msg_free(mon->reply);
			mon->reply = NULL;
			mon->last_ok = keel_loop_now(node->loop);
		}
		/* Answered, or our own link is or was down (the name may
		 * be alive: the reconnect has until the deadline). */
		KEEL_AWAIT(&mon->r, keel_sleep(t, mon->interval_ns));
		mon->err = keel_res(t);
		if (mon->err < 0 && mon->err != -ETIMEDOUT)
			KEEL_ROUTINE_RETURN(&mon->r, t, mon->err);
	}
	KEEL_ROUTINE_RETURN(&mon->r, t, -EPIPE);
}

/* ---- served names ---- */

int keel_node_serve(struct keel_node *node, const char *name, const char *queue,
		    struct keel_mailbox *mb)
{
	natsConnection *nc = atomic_load(&node->nc);
	struct served *s;
	natsStatus st;

	if (!name || !*name || !mb)
		return -EINVAL;
	if (!nc)
		return -ENOTCONN;
	for (s = node->served; s; s = s->next)
		if (!strcmp(s->name, name))
			return -EEXIST;
	s = calloc(1, sizeof(*s));
	if (!s || !(s->name = strdup(name))) {
		free(s);
		return -ENOMEM;
	}
	st = queue ? natsConnection_QueueSubscribeSync(&s->sub, nc, name, queue)
		   : natsConnection_SubscribeSync(&s->sub, nc, name);
	if (st == NATS_OK)
		st = natsSubscription_SetPendingLimits(
		    s->sub, (int)node->pending_msgs, (int)node->pending_bytes);
	if (st != NATS_OK) {
		natsSubscription_Destroy(s->sub);
		free(s->name);
		free(s);
		return errno_of(st);
	}
	s->mb = keel_mailbox_ref(mb);
	s->next = node->served;
	node->served = s;
	return 0;
}

static void served_free(struct served *s)
{
	natsSubscription_Unsubscribe(s->sub);
	natsSubscription_Destroy(s->sub);
	keel_mailbox_release(s->mb);
	free(s->name);
	free(s);
}

int keel_node_unserve(struct keel_node *node, const char *name)
{
	for (struct served **sp = &node->served; *sp; sp = &(*sp)->next) {
		struct served *s = *sp;

		if (name && !strcmp(s->name, name)) {
			*sp = s->next;
			served_free(s);
			return 0;
		}
	}
	return -ENOENT;
}

/* ---- the driver: the loop's side of the adapter ---- */

struct driver {
	struct keel_task task;
	struct keel_node *node;
	struct keel_select sel;
	void *msg;
	int fd;
	int in, out;
};

static int driver_step(struct keel_task *t);
static KEEL_TASK_TYPE(driver_task, struct driver, task, driver_step);

static int poll_in(struct keel_task *t, void *arg)
{
	return keel_poll(t, ((struct driver *)arg)->fd, POLLIN);
}

static int poll_out(struct keel_task *t, void *arg)
{
	return keel_poll(t, ((struct driver *)arg)->fd, POLLOUT);
}

static const char *const state_names[] = {"idle", "connected", "reconnecting",
					  "closed"};

/* The state is stored where it becomes known (connect_job stores
 * CONNECTED on the pool, so that it holds when keel_node_connect returns);
 * on_state hears of each change once, on the loop, in order. */
static void set_state(struct keel_node *n, enum keel_node_state st)
{
	atomic_store(&n->state, (int)st);
	if (n->reported == st)
		return;
	n->reported = st;
	if (keel_trace_enabled()) {
		char mark[128];

		snprintf(mark, sizeof(mark), "keel_node %s: %s", n->name,
			 state_names[st]);
		keel_trace_mark(mark, st);
	}
	if (n->on_state)
		n->on_state(n, st, n->state_arg);
}

static void node_destroy(struct keel_node *n)
{
	struct served *s;
	natsConnection *nc = atomic_load(&n->nc);

	fail_asks(n, -EPIPE);
	replies_close(n);
	while ((s = n->served)) {
		n->served = s->next;
		served_free(s);
	}
	if (nc)
		natsConnection_Destroy(nc);
	natsOptions_Destroy(n->opts);
	keel_mb_close(n->ctl);
	keel_mailbox_release(n->ctl);
	free(n->slots);
	free(n->cands);
	free(n->scratch);
	free(n->label);
	free(n->name);
	free(n);
}

static void node_put(struct keel_node *n)
{
	if (--n->refs == 0)
		node_destroy(n);
}

/* What cnats's threads said since the last time. */
static void driver_events(struct keel_node *n)
{
	unsigned ev = atomic_exchange(&n->events, 0);

	if ((ev & EV_CONNECTED) && atomic_load(&n->state) != KEEL_NODE_CLOSED)
		set_state(n, KEEL_NODE_CONNECTED);
	if (ev & EV_DISCONNECT) {
		count(&n->c.disconnects);
		if (atomic_load(&n->state) != KEEL_NODE_CLOSED)
			set_state(n, KEEL_NODE_RECONNECTING);
		/* A reply may yet come after a reconnect, but an ask must
		 * not wait on a link known to be down (keel_node_ask(3)). */
		fail_asks(n, -EPIPE);
	}
	if (ev & EV_RECONNECT) {
		count(&n->c.reconnects);
		n->link_up_at = keel_loop_now(n->loop);
		if (atomic_load(&n->state) != KEEL_NODE_CLOSED)
			set_state(n, KEEL_NODE_CONNECTED);
	}
	if (ev & EV_CLOSED) {
		set_state(n, KEEL_NODE_CLOSED);
		fail_asks(n, -EPIPE);
	}
	if (ev & EV_STOP)
		n->stopping = true;
}

static int driver_step(struct keel_task *t)
{
	struct driver *d = keel_container_of(t, struct driver, task);
	struct keel_node *n = d->node;
	natsConnection *nc;
	int r;

	KEEL_BEGIN(t);
	while (!n->stopping) {
		keel_select_init(&d->sel, t, KEEL_SELECT_BIASED);
		keel_select_recv(&d->sel, n->ctl, &d->msg);
		d->fd = atomic_load(&n->fd);
		d->in = d->out = -1;
		if (d->fd >= 0 && atomic_load(&n->want_read))
			d->in = keel_select_op(&d->sel, poll_in, d);
		if (d->fd >= 0 && atomic_load(&n->want_write))
			d->out = keel_select_op(&d->sel, poll_out, d);
		KEEL_AWAIT(t, keel_select(t, &d->sel));
		r = keel_res(t);
		if (r < 0 && r != -EPIPE)
			break; /* cancelled: the loop is going away */
		driver_events(n);
		nc = atomic_load(&n->nc);
		if (!nc || atomic_load(&n->fd) != d->fd || d->fd < 0)
			continue;
		if (d->in >= 0 && keel_select_res(&d->sel, d->in) > 0) {
			natsConnection_ProcessReadEvent(nc);
			drain_served(n);
			drain_replies(n);
		}
		/* Flush what the loop published since the last turn at
		 * once: the socket is writable more often than not, and a
		 * POLLOUT round would cost a wake-up per batch. */
		if ((d->out >= 0 && keel_select_res(&d->sel, d->out) > 0) ||
		    (r == 0 && atomic_load(&n->want_write)))
			natsConnection_ProcessWriteEvent(nc);
	}
	node_put(n);
	KEEL_END(t);
}

/* ---- life ---- */

/* `name` as a Prometheus label value: backslash, double quote and newline
 * escaped. (libkeel's own writer, sched/prom.c, is internal to libkeel:
 * the libraries on top of it link its public API only.) */
static char *label_of(const char *name)
{
	size_t len = 1;
	char *out, *o;

	for (const char *p = name; *p; p++)
		len += strchr("\\\"\n", *p) ? 2 : 1;
	out = o = malloc(len);
	if (!out)
		return NULL;
	for (const char *p = name; *p; p++) {
		if (strchr("\\\"\n", *p)) {
			*o++ = '\\';
			*o++ = *p == '\n' ? 'n' : *p;
		} else {
			*o++ = *p;
		}
	}
	*o = '\0';
	return out;
}

int keel_node_new(struct keel_loop *loop, const struct keel_node_opts *opts,
		  struct keel_node **out)
{
	struct keel_mailbox_opts mo = {.capacity = 4, .policy = KEEL_MB_FAIL};
	struct keel_node *n;
	struct driver *d;
	natsStatus s;
	int err;

	if (!loop || !opts || !opts->url || !out)
		return -EINVAL;
	if (!keel_loop_has_op(loop, IORING_OP_POLL_ADD))
		return -EOPNOTSUPP;
	n = calloc(1, sizeof(*n));
	if (!n)
		return -ENOMEM;
	n->loop = loop;
	n->free_slot = NO_SLOT;
	atomic_init(&n->fd, -1);
	n->name = strdup(opts->name ? opts->name : "node");
	n->on_state = opts->on_state;
	n->state_arg = opts->state_arg;
	n->rc_min_ms =
	    opts->reconnect_min_ns ? opts->reconnect_min_ns / 1000000 : 50;
	n->rc_max_ms =
	    opts->reconnect_max_ns ? opts->reconnect_max_ns / 1000000 : 2000;
	if (!n->rc_min_ms)
		n->rc_min_ms = 1;
	if (n->rc_max_ms < n->rc_min_ms)
		n->rc_max_ms = n->rc_min_ms;
	n->pending_msgs = opts->pending_msgs ? opts->pending_msgs : 65536;
	n->pending_bytes =
	    opts->pending_bytes ? opts->pending_bytes : 64u << 20;
	n->label = n->name ? label_of(n->name) : NULL;
	if (!n->label) {
		free(n->name);
		free(n);
		return -ENOMEM;
	}
	err = keel_mailbox_new(loop, &mo, &n->ctl);
	if (err) {
		free(n->label);
		free(n->name);
		free(n);
		return err;
	}
	s = natsOptions_Create(&n->opts);
	if (s == NATS_OK)
		s = natsOptions_SetURL(n->opts, opts->url);
	if (s == NATS_OK)
		s = natsOptions_SetName(n->opts, n->name);
	if (s == NATS_OK)
		s = natsOptions_SetEventLoop(n->opts, n, ev_attach, ev_read,
					     ev_write, ev_detach);
	if (s == NATS_OK)
		s = natsOptions_SetMaxReconnect(
		    n->opts, opts->max_reconnect < 0	? 0
			     : opts->max_reconnect == 0 ? -1
							: opts->max_reconnect);
	if (s == NATS_OK)
		s = natsOptions_SetCustomReconnectDelay(n->opts,
							reconnect_delay, n);
	if (s == NATS_OK)
		s = natsOptions_SetReconnectBufSize(
		    n->opts,
		    opts->reconnect_buf ? (int)opts->reconnect_buf : 1 << 20);
	if (s == NATS_OK)
		s = natsOptions_SetTimeout(
		    n->opts, opts->connect_timeout_ns
				 ? (int64_t)(opts->connect_timeout_ns / 1000000)
				 : 2000);
	/* No flusher thread: a publish asks for a write (ev_write) at once,
	 * and the driver flushes what the loop's turn published. */
	if (s == NATS_OK)
		s = natsOptions_SetSendAsap(n->opts, true);
	if (s == NATS_OK)
		s = natsOptions_SetDisconnectedCB(n->opts, on_disconnected, n);
	if (s == NATS_OK)
		s = natsOptions_SetReconnectedCB(n->opts, on_reconnected, n);
	if (s == NATS_OK)
		s = natsOptions_SetClosedCB(n->opts, on_closed, n);
	if (s == NATS_OK)
		s = natsOptions_SetErrorHandler(n->opts, on_error, n);
	d = s == NATS_OK ? keel_spawn(loop, &driver_task, KEEL_PRIO_HIGH)
			 : NULL;
	if (!d) {
		err = s == NATS_OK ? -ENOMEM : errno_of(s);
		natsOptions_Destroy(n->opts);
		keel_mailbox_release(n->ctl);
		free(n->label);
		free(n->name);
		free(n);
		return err;
	}
	d->node = n;
	n->refs = 2;
	*out = n;
	return 0;
}

static int connect_job(void *arg)
{
	struct keel_node *n = arg;
	natsConnection *nc = NULL;
	natsStatus s = natsConnection_Connect(&nc, n->opts);

	if (s != NATS_OK)
		return errno_of(s);
	atomic_store(&n->nc, nc);
	atomic_store(&n->state, KEEL_NODE_CONNECTED);
	post(n, EV_CONNECTED);
	return 0;
}

int keel_node_connect(struct keel_task *t, struct keel_node *node)
{
	if (atomic_load(&node->nc) || node->closed_once) {
		t->res = -EALREADY;
		return KEEL_READY;
	}
	/* cnats's connect reads and writes its socket blocking until the
	 * handshake is done: on the pool, never on the loop. */
	return keel_blocking(t, connect_job, node);
}

static int close_job(void *arg)
{
	struct keel_node *n = arg;
	natsConnection *nc = atomic_load(&n->nc);

	if (nc) {
		natsConnection_Close(nc);
		/* cnats posts its callbacks to a thread of its own, in
		 * order; the closed one comes last. Bounded: 5 s. */
		for (int i = 0; i < 5000 && !atomic_load(&n->closed_cb); i++)
			usleep(1000);
	}
	/* As connect_job: the state holds when keel_node_close returns. */
	atomic_store(&n->state, KEEL_NODE_CLOSED);
	post(n, EV_CLOSED);
	return 0;
}

int keel_node_close(struct keel_task *t, struct keel_node *node)
{
	struct served *s;

	if (node->closed_once) {
		t->res = 0;
		return KEEL_READY;
	}
	node->closed_once = true;
	fail_asks(node, -EPIPE);
	replies_close(node);
	while ((s = node->served)) {
		node->served = s->next;
		served_free(s);
	}
	/* natsConnection_Close joins cnats's reconnect thread: blocking. */
	return keel_blocking(t, close_job, node);
}

void keel_node_free(struct keel_node *node)
{
	if (!node)
		return;
	post(node, EV_STOP);
	node_put(node);
}

enum keel_node_state keel_node_state(const struct keel_node *node)
{
	return (enum keel_node_state)atomic_load(&node->state);
}

void keel_node_stats(const struct keel_node *node, struct keel_node_stats *out)
{
	const struct counters *c = &node->c;
	struct keel_node_stats st = {
	    .state = keel_node_state(node),
	    .disconnects = load(&c->disconnects),
	    .reconnects = load(&c->reconnects),
	    .tells = load(&c->tells),
	    .asks = load(&c->asks),
	    .send_nobufs = load(&c->send_nobufs),
	    .send_failed = load(&c->send_failed),
	    .ask_timeouts = load(&c->ask_timeouts),
	    .ask_no_resp = load(&c->ask_no_resp),
	    .received = load(&c->received),
	    .dropped = load(&c->dropped),
	    .slow_consumer = load(&c->slow_consumer),
	    .wake_drops = load(&c->wake_drops),
	};

	*out = st;
}

/* ---- metrics ---- */

struct counter_row {
	const char *name;
	const char *help;
	size_t off;
};

#define ROW(f, h)                                                              \
	{                                                                      \
#f, h, offsetof(struct keel_node_stats, f)                     \
	}
static const struct counter_row rows[] = {
    ROW(disconnects, "Times the NATS server went away."),
    ROW(reconnects, "Times the NATS connection came back."),
    ROW(tells, "Tells and replies published."),
    ROW(asks, "Asks published."),
    ROW(send_nobufs, "Sends refused: the reconnect buffer was full."),
    ROW(send_failed, "Sends refused for another reason."),
    ROW(ask_timeouts, "Asks that reached their deadline."),
    ROW(ask_no_resp, "Asks nobody served, or whose link was lost."),
    ROW(received, "Messages handed to served mailboxes."),
    ROW(dropped, "Messages a served mailbox dropped (full or closed)."),
    ROW(slow_consumer, "NATS slow-consumer errors."),
    ROW(wake_drops, "Wake-ups of the loop lost to a full control box."),
};

#define OUT(...)                                                               \
	do {                                                                   \
		int k_ =                                                       \
		    snprintf(buf ? buf + used : NULL,                          \
			     buf && used < len ? len - used : 0, __VA_ARGS__); \
		if (k_ > 0)                                                    \
			used += (size_t)k_;                                    \
	} while (0)

size_t keel_node_metrics_render(struct keel_node *const *nodes, unsigned n,
				char *buf, size_t len)
{
	size_t used = 0;

	if (buf && len)
		buf[0] = '\0';
	if (!n)
		return 0;
	OUT("# HELP keel_node_state Connection state of the node to NATS.\n"
	    "# TYPE keel_node_state gauge\n");
	for (unsigned i = 0; i < n; i++)
		for (int s = 0; s < 4; s++)
			OUT("keel_node_state{node=\"%s\",state=\"%s\"} %d\n",
			    nodes[i]->label, state_names[s],
			    (int)keel_node_state(nodes[i]) == s);
	for (size_t r = 0; r < sizeof(rows) / sizeof(rows[0]); r++) {
		OUT("# HELP keel_node_%s_total %s\n"
		    "# TYPE keel_node_%s_total counter\n",
		    rows[r].name, rows[r].help, rows[r].name);
		for (unsigned i = 0; i < n; i++) {
			struct keel_node_stats st;
			uint64_t v;

			keel_node_stats(nodes[i], &st);
			memcpy(&v, (const char *)&st + rows[r].off, sizeof(v));
			OUT("keel_node_%s_total{node=\"%s\"} %" PRIu64 "\n",
			    rows[r].name, nodes[i]->label, v);
		}
	}
	return used;
}
