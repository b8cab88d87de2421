/* SPDX-License-Identifier: MIT */
/*
 * keel/node.h: libkeel-nats: a process's connection to NATS (a node),
 * driven by a keel loop, and remote actors over it: a local mailbox served
 * under a name, tells (fire and forget) and asks (request/reply with a
 * deadline) to names served anywhere on the NATS cluster.
 *
 * Threads: the node's socket is polled through the loop's ring and every
 * read and write of it runs on the loop's thread (cnats's event-loop
 * adapter), and so does the delivery of messages: cnats's synchronous
 * subscriptions are drained by the loop after each read, so no cnats
 * delivery thread exists. cnats still runs, with an external loop, its
 * timer thread (pings), a reconnect thread while the server is away, and
 * a thread for the connection callbacks; they reach the loop only through
 * a bounded mailbox (keel/sync.h) whose sends never wait, and never call
 * a loop-thread function. keel_node_connect() and keel_node_close() run
 * cnats's blocking connect and close on keel's blocking pool.
 *
 * Messages are bytes: keel adds a 16-byte header of its own (type,
 * generation, request id) and imposes no serialization.
 *
 * Everything is bounded: what is published while the server is away
 * (opts.reconnect_buf bytes; then a send fails with -ENOBUFS, counted),
 * what waits for a served mailbox in cnats (opts.pending_msgs/bytes; more
 * is NATS's slow-consumer case, counted), and the served mailbox itself
 * (its capacity and policy; a full one drops, counted).
 *
 * Link with libkeel-nats (pkg-config keel-nats), which links cnats;
 * libkeel itself does not.
 */
#ifndef KEEL_NODE_H
#define KEEL_NODE_H

#include <stddef.h>
#include <stdint.h>

#include <keel/sync.h>
#include <keel/task.h>

#ifdef __cplusplus
extern "C" {
#endif

struct keel_loop;
struct keel_node;

/* A node's connection state (also its metric's `state` label). */
enum keel_node_state {
	KEEL_NODE_IDLE = 0,	    /* created, not connected yet */
	KEEL_NODE_CONNECTED = 1,    /* the server answers */
	KEEL_NODE_RECONNECTING = 2, /* the server went away; retrying */
	KEEL_NODE_CLOSED = 3,	    /* closed, or gave up reconnecting */
};

/* Called on the node's loop thread when the state changes. */
typedef void (*keel_node_state_fn)(struct keel_node *node,
				   enum keel_node_state state, void *arg);

struct keel_node_opts {
	const char *url;  /* "nats://127.0.0.1:4222"; copied */
	const char *name; /* the node's name (metrics, server); copied */
	/* Reconnect backoff: the first wait, doubled up to the cap.
	 * Defaults 50 ms and 2 s. */
	uint64_t reconnect_min_ns;
	uint64_t reconnect_max_ns;
	int max_reconnect;	/* attempts; 0: default (forever); <0: none */
	uint32_t reconnect_buf; /* bytes kept while away; default 1 MiB */
	/* Per served name, what cnats may hold before the loop drains it
	 * (slow consumer beyond). Defaults 65536 messages, 64 MiB. */
	uint32_t pending_msgs;
	uint32_t pending_bytes;
	uint64_t connect_timeout_ns; /* default 2 s */
	keel_node_state_fn on_state; /* may be NULL */
	void *state_arg;
};

/*
 * A remote message, as received from a served mailbox or as an ask's
 * reply. `data` is the payload after keel's header.
 * Ownership: the receiver's; free it with keel_node_msg_free().
 */
struct keel_node_msg {
	const void *data;
	size_t len;
	const char *name;    /* the name it was sent to */
	uint64_t request_id; /* nonzero for an ask (and its reply) */
	uint32_t generation; /* the sender's, as it set it */
	uint16_t type;	     /* the sender's */
	void *priv;	     /* private */
};

/* What a node counted (keel_node_stats()). */
struct keel_node_stats {
	enum keel_node_state state;
	uint64_t disconnects;	/* times the server went away */
	uint64_t reconnects;	/* times it came back */
	uint64_t tells;		/* tells and replies published */
	uint64_t asks;		/* asks published */
	uint64_t send_nobufs;	/* sends refused: reconnect buffer full */
	uint64_t send_failed;	/* other refused sends */
	uint64_t ask_timeouts;	/* asks that saw their deadline */
	uint64_t ask_no_resp;	/* asks nobody served (or link lost) */
	uint64_t received;	/* messages handed to served mailboxes */
	uint64_t dropped;	/* ... dropped by their policy or closed */
	uint64_t slow_consumer; /* NATS slow-consumer errors */
	uint64_t wake_drops;	/* wake-ups lost to a full control box */
};

/*
 * A node on `loop` (call on the loop's thread, or before it runs). No I/O
 * yet: keel_node_connect() connects. Returns 0 and sets *out, -EINVAL
 * (no url), -ENOMEM.
 * Ownership: the caller owns the node: keel_node_close(), then
 * keel_node_free().
 */
int keel_node_new(struct keel_loop *loop, const struct keel_node_opts *opts,
		  struct keel_node **out);

/*
 * Await the connection (the handshake runs on the blocking pool). keel_res:
 * 0, -ECONNREFUSED (no server), -ETIMEDOUT, -EALREADY, -EIO (other).
 */
int keel_node_connect(struct keel_task *t, struct keel_node *node);

/*
 * Await closing: pending asks fail with -EPIPE, served names go. keel_res
 * is 0. The node can only be freed afterwards.
 */
int keel_node_close(struct keel_task *t, struct keel_node *node);

/*
 * Free a closed (or never connected) node. Served mailboxes are released.
 * Ownership: `node` is gone.
 */
void keel_node_free(struct keel_node *node);

enum keel_node_state keel_node_state(const struct keel_node *node);
void keel_node_stats(const struct keel_node *node, struct keel_node_stats *out);

/*
 * Serve `mb` (a mailbox of the node's loop) under `name` (a NATS subject);
 * with `queue` non-NULL, as one of a queue group: each message goes to
 * one member. Messages arrive in `mb` as struct keel_node_msg *; the
 * mailbox's policy applies when it is full (a BLOCK one drops: the loop
 * never waits), and drops are counted. Returns 0, -EEXIST, -ENOTCONN (not
 * connected yet), -EINVAL, -ENOMEM, -EIO.
 * Ownership: the node takes a reference on `mb` until keel_node_unserve()
 * or keel_node_free(); strings are copied.
 */
int keel_node_serve(struct keel_node *node, const char *name, const char *queue,
		    struct keel_mailbox *mb);
int keel_node_unserve(struct keel_node *node, const char *name);

/*
 * Send `len` bytes to `name` without waiting for anything (loop thread).
 * Returns 0 (handed to cnats, or buffered while reconnecting), -ENOBUFS
 * (the reconnect buffer is full), -EPIPE (closed), -EINVAL, -EIO.
 * Ownership: `data` is copied.
 */
int keel_node_tell(struct keel_node *node, const char *name, uint16_t type,
		   const void *data, size_t len);

/*
 * An ask in progress: keep it in the task's frame.
 */
struct keel_node_call {
	struct keel_routine r;
	struct keel_oneshot *os;
	void *val;
	int err;
};

/*
 * Ask `name` and await the reply for at most `timeout_ns`, with
 * KEEL_AWAIT_CALL (the arguments are used on the first call only). keel_res:
 * 0 with *reply set, -ETIMEDOUT, -EPIPE (nobody serves the name, or the
 * link to the server was lost), -ENOTCONN (not connected), the task's
 * cancellation cause, -ENOMEM, -EIO.
 * Ownership: on 0, *reply is the caller's (keel_node_msg_free()). `reply`
 * must stay valid until the await returns (keep it in the frame).
 */
int keel_node_ask(struct keel_task *t, struct keel_node_call *call,
		  struct keel_node *node, const char *name, uint16_t type,
		  const void *data, size_t len, uint64_t timeout_ns,
		  struct keel_node_msg **reply);

/*
 * Answer an ask `req` received from a served mailbox (loop thread): the
 * reply carries req's request id. Returns as keel_node_tell(), or -EINVAL
 * when `req` was a tell.
 * Ownership: `req` stays the caller's; `data` is copied.
 */
int keel_node_reply(struct keel_node *node, const struct keel_node_msg *req,
		    uint16_t type, const void *data, size_t len);

/* Message types from KEEL_NODE_TYPE_RESERVED up are keel's own: a send
 * with one fails with -EINVAL. */
#define KEEL_NODE_TYPE_RESERVED 0xff00u

/*
 * A watch on a remote name, in progress: keep it in the task's frame.
 */
struct keel_node_monitor {
	struct keel_routine r;
	struct keel_node_call call;
	struct keel_node_msg *reply;
	uint64_t last_ok; /* loop time of the last heartbeat answered */
	uint64_t interval_ns, deadline_ns;
	const char *name;
	int err;
};

/*
 * Watch `name` (served by any node) with heartbeats every `interval_ns`,
 * with KEEL_AWAIT_CALL, until it goes: the node serving a name answers
 * keel's heartbeat itself (no actor code runs) while the name is served
 * and its mailbox open; a heartbeat waits one interval at most.
 * keel_res: -EPIPE when nobody serves the name (at once), when no
 * heartbeat was answered for `deadline_ns` (the serving node died, hangs
 * or lost its server), or when this node lost its own server for longer
 * than that (no responders just after our own reconnect is not trusted:
 * the serving node may reconnect later); the task's cancellation cause;
 * -ENOTCONN (not connected, or closed); -EINVAL. Never 0: a supervisor
 * child whose task awaits it exits abnormally when the name goes.
 * Ownership: `name` must stay valid until the await returns.
 */
int keel_node_monitor(struct keel_task *t, struct keel_node_monitor *mon,
		      struct keel_node *node, const char *name,
		      uint64_t interval_ns, uint64_t deadline_ns);

/* Set the generation stamped on what this node sends from now on. */
void keel_node_set_generation(struct keel_node *node, uint32_t generation);

/*
 * Free a received message.
 * Ownership: `msg` is gone.
 */
void keel_node_msg_free(struct keel_node_msg *msg);

/* keel_node_msg_free() as a mailbox's on_drop (keel/sync.h): give it to
 * the mailboxes a node serves, so that what they drop is freed. */
void keel_node_msg_drop(void *msg, void *arg);

/*
 * Render `n` nodes' metrics in Prometheus text format (label node="name")
 * into buf. Returns the length it needed (as snprintf); any thread.
 */
size_t keel_node_metrics_render(struct keel_node *const *nodes, unsigned n,
				char *buf, size_t len);

#ifdef __cplusplus
}
#endif

#endif /* KEEL_NODE_H */
