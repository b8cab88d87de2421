/* SPDX-License-Identifier: MIT */
/*
 * supervised: a key-value server that keeps serving while its workers
 * crash, under a supervision tree (keel/supervisor.h); and its client.
 *
 *	supervised [--threads N] [--shards S] [--panic-rate P]
 *		   [--storm-at SECS] [--stats] ADDR PORT
 *	supervised --client [--threads N] [--conns C] [--rate R]
 *		   [--duration SECS] [--every SECS] ADDR PORT
 *	supervised --nats URL --role shards --shard-set K/M [--threads N]
 *		   [--shards S] [--panic-rate P] [--storm-at SECS] [--stats]
 *	supervised --nats URL --role front [--threads N] [--shards S]
 *		   [--stats] ADDR PORT
 *
 * The protocol is lines: "SET key value" answers "OK", "GET key" answers
 * "VALUE value" or "NOTFOUND"; a request that could not be served answers
 * "ERR reason". Keys and values are words of at most 64 bytes.
 *
 * The tree:
 *
 *	top                 one_for_one, loop 0
 *	  shards            one_for_one, with backoff
 *	    shard-0..S-1    actors holding the data, on loops i % N
 *	  front-0..N-1      rest_for_one, on loop i
 *	    conns-i         simple_one_for_one: one task per connection
 *	    acceptor-i      accepts on loop i's listener, hands each
 *	                    connection to conns-i
 *
 * Faults: with --panic-rate P a shard panics on a request with
 * probability P (the "bug"). Its supervisor restarts it, empty: the keys
 * it held are lost (a client then reads NOTFOUND; a real shard would
 * rebuild its state from a log in its start function). The request it
 * was handling, and those queued behind it, fail with "ERR shard down";
 * so do requests that come while it is down (its backoff). --storm-at T:
 * at T seconds every shard request panics, until the shards supervisor
 * exceeds its restart intensity and gives up (an escalation): top then
 * restarts it, with fresh shards, and the storm is over.
 *
 * SIGTERM or SIGINT: the tree stops, children in reverse order (the
 * connections are cancelled, the shards stopped), the server prints what
 * happened and exits 0 (1 if the tree itself gave up).
 *
 * --client drives the server at a fixed rate (R requests a second over C
 * connections, each waiting for its answer), checks every value it reads
 * back, and prints the error rate it saw (with --every, also what it saw
 * in each period of SECS). An answer that does not come within 2 s is
 * counted as unanswered (a hang), and the connection made again.
 *
 * Across processes, over NATS (--nats URL; libkeel-nats, keel/node.h):
 * the shards live in shard processes, the connections in a front, and
 * the same requests travel as NATS asks. A shard process (--role shards
 * --shard-set K/M) runs the shards i of S with i % M == K, under the tree
 * above, and serves each under the name kv.shard.<i> in the queue group
 * "kv": a link task per shard hands what the name receives to the shard's
 * actor, which answers the ask through the node. A second copy of a shard
 * process shares the load, and the front does not see one copy die; but
 * each copy has data of its own (a key set through one is not in the
 * other: a real shard would replicate, or rebuild from a log). A front (--role
 *front, the same S) holds no shard: a connection asks kv.shard.<i> with the
 *same deadline, and an ask that fails answers "ERR timeout" or "ERR shard down"
 *to that client only. Beside the fronts, a supervisor has one child per shard
 * that pings its name and then watches it (keel_node_monitor, heartbeats
 * every 100 ms): when the name is no longer served, or stops answering
 * for 1 s, the child exits with -EPIPE, and until its supervisor has
 * restarted it (with backoff) and its ping is answered again, requests
 * for that shard answer "ERR shard down" at once. Each loop has a node
 * (a connection to NATS) of its own, which only that loop's tasks use.
 *
 *	top (front)           one_for_one, loop 0
 *	  remotes             one_for_one, with backoff
 *	    remote-0..S-1     on loops i % N
 *	  front-0..N-1        as above
 *
 *	top (shard process)   one_for_one, loop 0
 *	  shards              as above, the shards of the set, on loops
 *	    shard-i           (i / M) % N
 *	  links               one_for_one
 *	    link-i            beside shard-i: serves its name
 *
 * Loopback only: both sides refuse any other address (the NATS URL's
 * too).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <keel.h>
#include <keel/node.h>

#define WORD_MAX	64
#define LINE_MAX	(2 * WORD_MAX + 16)
#define MAX_SHARDS	64
#define MAX_LOOPS	64
#define BUCKETS		1024
#define REQUEST_NS	(1000ull * 1000 * 1000) /* a shard's time to answer */
#define POLL_NS		(1000ull * 1000)
#define STORM_NS_MAX	(3000ull * 1000 * 1000)
#define NS		1000000000ull
#define LISTEN_BACKLOG	1024
#define ACCEPT_RETRY_NS (10ull * 1000 * 1000)
#define PROBE_NS	(500ull * 1000 * 1000) /* a remote shard's ping */
#define HEARTBEAT_NS	(100ull * 1000 * 1000)
#define SILENCE_NS	NS /* unanswered heartbeats: the shard is down */
#define QUEUE_GROUP	"kv"

/* Message types over NATS: a request line and its answer line ("\n"
 * included), and a ping a shard's link answers. */
#define T_KV   1
#define T_PING 2

/* ---- shared ------------------------------------------------------------- */

enum role {
	ROLE_ALONE,  /* shards and fronts in this process */
	ROLE_SHARDS, /* --role shards: the shard set, served over NATS */
	ROLE_FRONT,  /* --role front: the fronts, asking over NATS */
};

static struct {
	const char *host;
	uint16_t port;
	unsigned loops;
	unsigned shards;
	double panic_rate;
	double storm_at; /* seconds after start; < 0: none */
	bool stats;
	int listen_fd[MAX_LOOPS];
	char shard_name[MAX_SHARDS][24]; /* "shard-" and any unsigned */
	struct keel_sup *top;
	uint64_t start_ns;
	/* Over NATS. A process holds the shards i with i % set_count ==
	 * set_index (all of them alone: 0/1). */
	const char *nats; /* the URL; NULL: one process */
	enum role role;
	unsigned set_index, set_count;
	char subject[MAX_SHARDS][24];	   /* "kv.shard." and any unsigned */
	struct keel_node *node[MAX_LOOPS]; /* loop i's; only it uses it */
	/* Closed by server_main when the tree has stopped: then loop i's
	 * keeper closes its node (a reference). */
	struct keel_oneshot *node_stop[MAX_LOOPS];
	int node_err; /* why a node could not connect (atomic) */
	/* Atomics, from every loop. */
	int storm;
	uint64_t requests;
	uint64_t errors;
	uint64_t connections;
	uint64_t nodes_up, nodes_down; /* keepers connected / done */
	int remote_up[MAX_SHARDS];     /* the front's view of shard i */
} app;

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * NS + (uint64_t)ts.tv_nsec;
}

static void count(uint64_t *counter)
{
	__atomic_add_fetch(counter, 1, __ATOMIC_RELAXED);
}

static uint64_t read_count(uint64_t *counter)
{
	return __atomic_load_n(counter, __ATOMIC_RELAXED);
}

/* `start` (a now_ns() time) on the wall clock, so that a script can place
 * what a process prints in its own time. */
static void print_started_at(const char *who, uint64_t start)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	printf("%s: started at %.3f s (Unix time)\n", who,
	       (double)ts.tv_sec + (double)ts.tv_nsec / 1e9 -
		   (double)(now_ns() - start) / 1e9);
	fflush(stdout);
}

static bool is_loopback(const char *host)
{
	struct in_addr a4;
	struct in6_addr a6;

	if (inet_pton(AF_INET, host, &a4) == 1)
		return (ntohl(a4.s_addr) >> 24) == 127;
	return inet_pton(AF_INET6, host, &a6) == 1 && IN6_IS_ADDR_LOOPBACK(&a6);
}

/* ---- shards: actors holding the data ------------------------------------ */

enum op { OP_SET, OP_GET };

/*
 * A request told to a shard. It belongs to the shard from a successful
 * tell on; the answer goes back through `reply`, a oneshot the connection
 * awaits (with a deadline): "OK"/"NOTFOUND" as tags, a value as a string
 * the connection frees. A request that came over NATS has `remote`
 * instead: the ask, answered with the answer's line through `node` (the
 * node of the shard's loop).
 */
struct kv_request {
	enum op op;
	char key[WORD_MAX + 1];
	char value[WORD_MAX + 1];
	struct keel_oneshot *reply; /* a reference */
	struct keel_node_msg *remote;
	struct keel_node *node;
};

static char tag_ok, tag_notfound;

/* The answer line to a request: the shard's `value`, or why there is none
 * (keel_res `res` of the wait for it). */
static size_t answer_line(char *out, size_t size, int res, const void *value)
{
	int n;

	if (res == 0 && value == &tag_ok)
		n = snprintf(out, size, "OK\n");
	else if (res == 0 && value == &tag_notfound)
		n = snprintf(out, size, "NOTFOUND\n");
	else if (res == 0 && value)
		n = snprintf(out, size, "VALUE %s\n", (const char *)value);
	else
		n = snprintf(out, size, "ERR %s\n",
			     res == -ETIMEDOUT ? "timeout"
			     : res == 0	       ? "out of memory"
					       : "shard down");
	return n < 0 ? 0 : (size_t)n < size ? (size_t)n : size - 1;
}

static void value_free(void *value)
{
	if (value != &tag_ok && value != &tag_notfound)
		free(value);
}

/* Answer an ask received over NATS with `line`, and free it. On the
 * node's loop. A reply that cannot go is the asker's deadline. */
static void reply_line(struct keel_node *node, struct keel_node_msg *ask,
		       const char *line)
{
	keel_node_reply(node, ask, T_KV, line, strlen(line));
	keel_node_msg_free(ask);
}

struct entry {
	struct entry *next;
	char key[WORD_MAX + 1];
	char value[WORD_MAX + 1];
};

/* One incarnation's state: built empty by the start function. */
struct shard {
	unsigned index;
	uint64_t rng;
	struct kv_request *current; /* being handled: answered if we panic */
	struct entry *buckets[BUCKETS];
};

static uint64_t hash(const char *s)
{
	uint64_t h = 1469598103934665603ull; /* FNV-1a */

	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 1099511628211ull;
	return h;
}

static double random01(struct shard *sh)
{
	sh->rng ^= sh->rng << 13;
	sh->rng ^= sh->rng >> 7;
	sh->rng ^= sh->rng << 17;
	return (double)(sh->rng >> 11) / (double)(1ull << 53);
}

static void request_fail(struct kv_request *req)
{
	if (req->remote) {
		count(&app.errors); /* a front counts those it answers */
		reply_line(req->node, req->remote, "ERR shard down\n");
	} else {
		keel_oneshot_close(req->reply); /* the connection: -EPIPE */
		keel_oneshot_release(req->reply);
	}
	free(req);
}

static void request_answer(struct kv_request *req, void *value)
{
	char line[LINE_MAX + 32];

	if (req->remote) {
		answer_line(line, sizeof(line), 0, value);
		reply_line(req->node, req->remote, line);
		value_free(value);
		free(req);
		return;
	}
	/* The connection gave up (its deadline): the answer is ours. */
	if (keel_oneshot_send(req->reply, value))
		value_free(value);
	keel_oneshot_release(req->reply);
	free(req);
}

static struct entry **lookup(struct shard *sh, const char *key)
{
	struct entry **e = &sh->buckets[hash(key) % BUCKETS];

	while (*e && strcmp((*e)->key, key))
		e = &(*e)->next;
	return e;
}

static int shard_behave(struct keel_actor_ctx *ctx, struct keel_envelope *msg)
{
	struct shard *sh = ctx->state;
	struct kv_request *req = msg->payload;
	struct entry **e;

	sh->current = req;
	/* The injected bug. */
	if (__atomic_load_n(&app.storm, __ATOMIC_RELAXED) ||
	    (app.panic_rate > 0 && random01(sh) < app.panic_rate))
		keel_panic("injected fault in shard %u", sh->index);
	e = lookup(sh, req->key);
	if (req->op == OP_SET) {
		if (!*e && (*e = calloc(1, sizeof(**e))))
			snprintf((*e)->key, sizeof((*e)->key), "%s", req->key);
		if (*e)
			snprintf((*e)->value, sizeof((*e)->value), "%s",
				 req->value);
		sh->current = NULL;
		request_answer(req, *e ? (void *)&tag_ok : NULL);
	} else {
		sh->current = NULL;
		request_answer(req, *e ? strdup((*e)->value)
				       : (void *)&tag_notfound);
	}
	return 0;
}

/* After the last message (and after a panic): its state goes with it. */
static void shard_stop(struct keel_actor_ctx *ctx, int reason)
{
	struct shard *sh = ctx->state;

	(void)reason;
	if (sh->current)
		request_fail(sh->current); /* it panicked on this one */
	for (unsigned b = 0; b < BUCKETS; b++)
		while (sh->buckets[b]) {
			struct entry *e = sh->buckets[b];

			sh->buckets[b] = e->next;
			free(e);
		}
	free(sh);
}

/* Requests still queued when a shard goes down. */
static void request_dropped(void *payload, void *arg)
{
	(void)arg;
	request_fail(payload);
}

static int shard_start(struct keel_child_start *cs, void *arg)
{
	struct shard *sh = calloc(1, sizeof(*sh));
	struct keel_actor_spec spec = {
	    .name = "shard",
	    .behaviour = shard_behave,
	    .on_stop = shard_stop,
	    .mailbox = {.capacity = 4096,
			.policy = KEEL_MB_FAIL,
			.on_drop = request_dropped},
	};
	int err;

	if (!sh)
		return -ENOMEM;
	sh->index = (unsigned)(uintptr_t)arg;
	sh->rng =
	    now_ns() ^ ((uint64_t)sh->index << 32) ^ 0x9e3779b97f4a7c15ull;
	err = keel_child_spawn_actor(cs, &spec, sh);
	if (err)
		free(sh);
	return err;
}

/* The current actor of shard i (a reference), or NULL while it is down. */
static struct keel_actor *shard_actor(unsigned i)
{
	struct keel_child_id id;
	struct keel_sup *shards;
	struct keel_actor *a = NULL;

	if (keel_sup_child_id(app.top, "shards", &id))
		return NULL;
	shards = keel_sup_child_sup(app.top, id);
	if (!shards)
		return NULL;
	if (!keel_sup_child_id(shards, app.shard_name[i], &id))
		a = keel_sup_child_actor(shards, id);
	keel_sup_release(shards);
	return a;
}

/* ---- connections -------------------------------------------------------- */

struct conn {
	struct keel_task task;
	int fd;
	unsigned loop; /* its loop's index (its node's) */
	char in[4096];
	size_t len;
	char out[LINE_MAX + 32];
	size_t outlen;
	struct keel_oneshot *reply;
	void *value;
	/* A front's ask: the request's line, to the name of its shard. */
	unsigned shard;
	char line[LINE_MAX];
	size_t linelen;
	struct keel_node_call call;
	struct keel_node_msg *answer;
};

static void close_fd(void *arg)
{
	close((int)(intptr_t)arg);
}

/* Parse one request line into a new request; NULL: a protocol error. */
static struct kv_request *parse(char *line)
{
	struct kv_request *req;
	char *save = NULL; /* strtok_r: connections run on several threads */
	char *op = strtok_r(line, " \r", &save);
	char *key = strtok_r(NULL, " \r", &save);
	char *value = strtok_r(NULL, " \r", &save);

	if (!op || !key || strlen(key) > WORD_MAX ||
	    (value && strlen(value) > WORD_MAX) || strtok_r(NULL, " \r", &save))
		return NULL;
	if (!strcmp(op, "SET") && value) {
		req = calloc(1, sizeof(*req));
		if (req) {
			req->op = OP_SET;
			memcpy(req->value, value, strlen(value) + 1);
		}
	} else if (!strcmp(op, "GET") && !value) {
		req = calloc(1, sizeof(*req));
		if (req)
			req->op = OP_GET;
	} else {
		return NULL;
	}
	if (req)
		memcpy(req->key, key, strlen(key) + 1);
	return req;
}

/* The shard of a key: the high bits of its hash (the low ones pick its
 * bucket in the shard). */
static unsigned shard_of(const char *key)
{
	return (unsigned)((hash(key) >> 32) % app.shards);
}

/* Hand the request to its shard. Returns 0 (the shard has it), or an
 * error (the request is freed: c->out holds the answer). */
static int dispatch(struct conn *c, struct kv_request *req)
{
	struct keel_actor *a = shard_actor(shard_of(req->key));
	int r = -EPIPE;

	if (keel_oneshot_new(keel_task_loop(&c->task), NULL, NULL, &c->reply))
		r = -ENOMEM;
	else if (a) {
		req->reply = keel_oneshot_ref(c->reply);
		r = keel_actor_tell(a, req);
	}
	if (a)
		keel_actor_release(a);
	if (r == 0)
		return 0;
	/* Not sent: the request is still ours. */
	if (req->reply)
		keel_oneshot_release(req->reply);
	if (c->reply)
		keel_oneshot_release(c->reply);
	c->reply = NULL;
	free(req);
	c->outlen = (size_t)snprintf(c->out, sizeof(c->out), "ERR %s\n",
				     r == -EAGAIN ? "busy" : "shard down");
	return r;
}

static void count_error_answer(const struct conn *c)
{
	if (strncmp(c->out, "ERR", 3) == 0)
		count(&app.errors);
}

/* The answer `res` (keel_res of the wait), as a line in c->out. */
static void answer(struct conn *c, int res)
{
	c->outlen = answer_line(c->out, sizeof(c->out), res, c->value);
	if (res == 0)
		value_free(c->value);
	c->value = NULL;
	count_error_answer(c);
}

/* A front: the request as a line for its shard's name. Returns 0, or
 * -EPIPE when the shard is known to be down (c->out holds the answer).
 * The request is freed. */
static int remote_request(struct conn *c, struct kv_request *req)
{
	int n;

	c->shard = shard_of(req->key);
	if (!__atomic_load_n(&app.remote_up[c->shard], __ATOMIC_RELAXED)) {
		free(req);
		c->outlen = (size_t)snprintf(c->out, sizeof(c->out),
					     "ERR shard down\n");
		return -EPIPE;
	}
	n = snprintf(c->line, sizeof(c->line), "%s %s%s%s",
		     req->op == OP_SET ? "SET" : "GET", req->key,
		     req->op == OP_SET ? " " : "", req->value);
	c->linelen = (size_t)n;
	free(req);
	return 0;
}

/* Whether a remote answer is one line: printable enough to pass on. */
static bool is_line(const char *p, size_t len, size_t max)
{
	return len >= 2 && len <= max && memchr(p, '\n', len) == p + len - 1 &&
	       !memchr(p, '\0', len);
}

/* The ask's result `res` as a line in c->out: the shard's answer, or why
 * there is none. */
static void remote_answer(struct conn *c, int res)
{
	struct keel_node_msg *m = res == 0 ? c->answer : NULL;

	if (m && m->type == T_KV && is_line(m->data, m->len, sizeof(c->out))) {
		memcpy(c->out, m->data, m->len);
		c->outlen = m->len;
	} else {
		c->outlen = (size_t)snprintf(
		    c->out, sizeof(c->out), "ERR %s\n",
		    m			? "bad answer"
		    : res == -ETIMEDOUT ? "timeout"
		    : res == -EPIPE	? "shard down" /* nobody serves */
		    : res == -ENOTCONN	? "shard down" /* no NATS yet */
					: keel_strerror(res));
	}
	keel_node_msg_free(m);
	c->answer = NULL;
	count_error_answer(c);
}

static int conn_step(struct keel_task *t)
{
	struct conn *c = keel_container_of(t, struct conn, task);
	char *nl;

	KEEL_BEGIN(t);
	/* Closed whatever ends this task: a kill, a cancellation, EOF. */
	if (keel_defer(t, close_fd, (void *)(intptr_t)c->fd))
		KEEL_EXIT(t, -ENOMEM);
	keel_tcp_nodelay(c->fd);
	for (;;) {
		while (!(nl = memchr(c->in, '\n', c->len))) {
			if (c->len == sizeof(c->in))
				KEEL_EXIT(t, -EMSGSIZE);
			KEEL_AWAIT(t, keel_recv(t, c->fd, c->in + c->len,
						sizeof(c->in) - c->len, 0));
			if (keel_res(t) <= 0) /* EOF, error or shutdown */
				KEEL_EXIT(t, keel_res(t) < 0 ? keel_res(t) : 0);
			c->len += (size_t)keel_res(t);
		}
		*nl = '\0';
		count(&app.requests);
		{
			struct kv_request *req = parse(c->in);
			size_t used = (size_t)(nl + 1 - c->in);

			memmove(c->in, nl + 1, c->len - used);
			c->len -= used;
			if (!req) {
				count(&app.errors);
				c->outlen = (size_t)snprintf(
				    c->out, sizeof(c->out), "ERR protocol\n");
			} else if (app.role == ROLE_FRONT) {
				if (remote_request(c, req) == 0)
					goto ask;
				count(&app.errors);
			} else if (dispatch(c, req) == 0) {
				goto wait;
			} else {
				count(&app.errors);
			}
		}
		goto send;
	wait:
		KEEL_AWAIT(t, keel_oneshot_recv_until(t, c->reply, &c->value,
						      now_ns() + REQUEST_NS));
		keel_oneshot_release(c->reply);
		c->reply = NULL;
		if (keel_res(t) == -ECANCELED)
			KEEL_EXIT(t, 0); /* the server is stopping */
		answer(c, keel_res(t));
		goto send;
	ask:
		KEEL_AWAIT_CALL(t, keel_node_ask(t, &c->call, app.node[c->loop],
						 app.subject[c->shard], T_KV,
						 c->line, c->linelen,
						 REQUEST_NS, &c->answer));
		if (keel_res(t) == -ECANCELED)
			KEEL_EXIT(t, 0);
		remote_answer(c, keel_res(t));
	send:
		KEEL_AWAIT(t, keel_send_all(t, c->fd, c->out, c->outlen,
					    MSG_NOSIGNAL));
		if (keel_res(t) < 0)
			KEEL_EXIT(t, 0);
	}
}

static KEEL_TASK_TYPE(conn_task, struct conn, task, conn_step);

/* conns-i's template: `extra` is the accepted fd, now the child's; `arg`
 * is i. */
static int conn_start(struct keel_child_start *cs, void *arg)
{
	struct conn *c = keel_child_spawn(cs, &conn_task, KEEL_PRIO_NORMAL);

	if (!c)
		return -ENOMEM;
	c->fd = (int)(intptr_t)keel_child_start_extra(cs);
	c->loop = (unsigned)(uintptr_t)arg;
	count(&app.connections);
	return 0;
}

/* ---- acceptors ---------------------------------------------------------- */

struct acceptor {
	struct keel_task task;
	int fd;
	struct keel_sup *conns; /* its sibling pool (a reference) */
	struct keel_child_id id;
	int client;
};

static void release_sup(void *arg)
{
	keel_sup_release(arg);
}

static int acceptor_step(struct keel_task *t)
{
	struct acceptor *a = keel_container_of(t, struct acceptor, task);

	KEEL_BEGIN(t);
	if (keel_defer(t, release_sup, a->conns)) {
		keel_sup_release(a->conns);
		KEEL_EXIT(t, -ENOMEM);
	}
	for (;;) {
		KEEL_AWAIT(t, keel_accept(t, a->fd, NULL, NULL, 0));
		a->client = keel_res(t);
		if (a->client == -ECANCELED)
			break; /* stopped by its supervisor */
		if (a->client == -EMFILE || a->client == -ENFILE ||
		    a->client == -ENOBUFS || a->client == -ENOMEM) {
			KEEL_AWAIT(t, keel_sleep(t, ACCEPT_RETRY_NS));
			continue;
		}
		if (a->client < 0)
			continue;
		/* The pool owns the connection once its start succeeded. */
		KEEL_AWAIT(t, keel_sup_start_child(t, a->conns,
						   (void *)(intptr_t)a->client,
						   &a->id));
		if (keel_res(t) != 0)
			close(a->client);
		if (keel_res(t) == -ECANCELED)
			break;
	}
	KEEL_END(t);
}

static KEEL_TASK_TYPE(acceptor_task, struct acceptor, task, acceptor_step);

/* acceptor-i: loop i's listener, and the pool beside it in front-i. */
static int acceptor_start(struct keel_child_start *cs, void *arg)
{
	unsigned i = (unsigned)(uintptr_t)arg;
	struct keel_sup *front = keel_child_start_sup(cs);
	struct keel_child_id id;
	char name[24];
	struct acceptor *a;
	struct keel_sup *conns;

	snprintf(name, sizeof(name), "conns-%u", i);
	if (keel_sup_child_id(front, name, &id))
		return -ENOENT;
	conns = keel_sup_child_sup(front, id);
	if (!conns)
		return -ESRCH;
	a = keel_child_spawn(cs, &acceptor_task, KEEL_PRIO_HIGH);
	if (!a) {
		keel_sup_release(conns);
		return -ENOMEM;
	}
	a->fd = app.listen_fd[i];
	a->conns = conns;
	return 0;
}

static int sup_start(struct keel_child_start *cs, void *arg)
{
	return keel_child_spawn_supervisor(cs, arg);
}

/* ---- over NATS: nodes, links (shard processes), remotes (fronts) -------- */

/*
 * Loop i's keeper: connects loop i's node before the tree starts, and
 * closes it once the tree has stopped. It holds the loop until then: a
 * shutdown does not cancel the loop's tasks (the tree's, which use the
 * node) before server_main has stopped the tree.
 */
struct keeper {
	struct keel_task task;
	unsigned loop;
	struct keel_oneshot *stop;
	void *unused;
	struct keel_shield shield;
	int err;
};

static int keeper_open(struct keeper *k, struct keel_loop *loop)
{
	char name[32];
	struct keel_node_opts o = {.url = app.nats, .name = name};
	int err;

	snprintf(name, sizeof(name), "%s-%u",
		 app.role == ROLE_FRONT ? "front" : "shards", k->loop);
	err = keel_oneshot_new(loop, NULL, NULL, &k->stop);
	if (!err)
		err = keel_node_new(loop, &o, &app.node[k->loop]);
	return err;
}

static int keeper_step(struct keel_task *t)
{
	struct keeper *k = keel_container_of(t, struct keeper, task);
	struct keel_loop *loop = keel_task_loop(t);

	KEEL_BEGIN(t);
	keel_loop_hold(loop);
	k->err = keeper_open(k, loop);
	if (k->err)
		goto done;
	app.node_stop[k->loop] = keel_oneshot_ref(k->stop);
	KEEL_AWAIT(t, keel_node_connect(t, app.node[k->loop]));
	k->err = keel_res(t);
	if (k->err)
		goto done;
	/* node[i] is written before: tasks the tree starts later read it. */
	__atomic_add_fetch(&app.nodes_up, 1, __ATOMIC_RELEASE);
	KEEL_AWAIT(t, keel_oneshot_recv(t, k->stop, &k->unused));
	keel_shield_begin(t, &k->shield, UINT64_MAX);
	KEEL_AWAIT(t, keel_node_close(t, app.node[k->loop]));
	keel_shield_end(t, &k->shield);
done:
	if (k->err) /* several keepers may fail: one of them is told */
		__atomic_store_n(&app.node_err, k->err, __ATOMIC_RELAXED);
	keel_node_free(app.node[k->loop]);
	app.node[k->loop] = NULL;
	if (k->stop)
		keel_oneshot_release(k->stop);
	keel_loop_release(loop);
	__atomic_add_fetch(&app.nodes_down, 1, __ATOMIC_RELEASE);
	KEEL_END(t);
}

static KEEL_TASK_TYPE(keeper_task, struct keeper, task, keeper_step);

static void keeper_init(void *frame, void *arg)
{
	((struct keeper *)frame)->loop = (unsigned)(uintptr_t)arg;
}

/*
 * link-i, in a shard process: serves shard i's name, and tells the shard
 * the requests it receives. Same loop as the shard: its actor answers
 * through the node of its loop.
 */
struct link {
	struct keel_task task;
	unsigned shard;
	struct keel_node *node;
	struct keel_mailbox *mb;
	void *msg;
};

static void link_close(void *arg)
{
	struct link *l = arg;

	/* What is still queued is dropped: its askers' deadlines answer. */
	keel_node_unserve(l->node, app.subject[l->shard]);
	keel_mailbox_release(l->mb);
}

static void link_handle(struct link *l, struct keel_node_msg *m)
{
	char line[LINE_MAX + 1];
	struct kv_request *req = NULL;
	struct keel_actor *a;
	int r;

	if (m->type == T_PING) {
		keel_node_reply(l->node, m, T_PING, NULL, 0);
		keel_node_msg_free(m);
		return;
	}
	count(&app.requests);
	if (m->type == T_KV && m->len < sizeof(line) &&
	    !memchr(m->data, '\0', m->len)) {
		memcpy(line, m->data, m->len);
		line[m->len] = '\0';
		req = parse(line);
	}
	if (!req) {
		count(&app.errors);
		reply_line(l->node, m, "ERR protocol\n");
		return;
	}
	req->remote = m;
	req->node = l->node;
	a = shard_actor(l->shard);
	r = a ? keel_actor_tell(a, req) : -EPIPE;
	if (a)
		keel_actor_release(a);
	if (r == 0)
		return;
	/* Not told: the request is still ours. */
	count(&app.errors);
	reply_line(l->node, m,
		   r == -EAGAIN ? "ERR busy\n" : "ERR shard down\n");
	free(req);
}

static int link_step(struct keel_task *t)
{
	struct link *l = keel_container_of(t, struct link, task);
	struct keel_mailbox_opts mo = {.capacity = 4096,
				       .policy = KEEL_MB_DROP_NEWEST,
				       .on_drop = keel_node_msg_drop};
	int err;

	KEEL_BEGIN(t);
	err = keel_mailbox_new(keel_task_loop(t), &mo, &l->mb);
	if (err)
		KEEL_EXIT(t, err);
	if (keel_defer(t, link_close, l)) {
		keel_mailbox_release(l->mb);
		KEEL_EXIT(t, -ENOMEM);
	}
	err =
	    keel_node_serve(l->node, app.subject[l->shard], QUEUE_GROUP, l->mb);
	if (err)
		KEEL_EXIT(t, err);
	for (;;) {
		KEEL_AWAIT(t, keel_mb_recv(t, l->mb, &l->msg));
		if (keel_res(t) < 0)
			KEEL_EXIT(t, keel_res(t)); /* stopped */
		link_handle(l, l->msg);
	}
}

static KEEL_TASK_TYPE(link_task, struct link, task, link_step);

/* The loop of shard i, and of what goes with it (its link, its remote). */
static unsigned shard_loop(unsigned i)
{
	return i / app.set_count % app.loops;
}

static int link_start(struct keel_child_start *cs, void *arg)
{
	struct link *l = keel_child_spawn(cs, &link_task, KEEL_PRIO_NORMAL);

	if (!l)
		return -ENOMEM;
	l->shard = (unsigned)(uintptr_t)arg;
	l->node = app.node[shard_loop(l->shard)];
	return 0;
}

/*
 * remote-i, in a front: shard i is up from the answer to a ping of its
 * name until the monitor of that name fires (or the child stops). The
 * monitor says at once that nobody serves a name, but never that someone
 * does: hence the ping first. Down, the child exits with -EPIPE (or the
 * ping's -ETIMEDOUT) and its supervisor restarts it, with backoff.
 */
struct remote {
	struct keel_task task;
	unsigned shard;
	struct keel_node *node;
	struct keel_node_call call;
	struct keel_node_msg *reply;
	struct keel_node_monitor mon;
};

static void remote_down(void *arg)
{
	__atomic_store_n(&app.remote_up[(uintptr_t)arg], 0, __ATOMIC_RELAXED);
}

static int remote_step(struct keel_task *t)
{
	struct remote *r = keel_container_of(t, struct remote, task);

	KEEL_BEGIN(t);
	if (keel_defer(t, remote_down, (void *)(uintptr_t)r->shard))
		KEEL_EXIT(t, -ENOMEM);
	KEEL_AWAIT_CALL(t, keel_node_ask(t, &r->call, r->node,
					 app.subject[r->shard], T_PING, NULL, 0,
					 PROBE_NS, &r->reply));
	if (keel_res(t) < 0)
		KEEL_EXIT(t, keel_res(t));
	keel_node_msg_free(r->reply);
	__atomic_store_n(&app.remote_up[r->shard], 1, __ATOMIC_RELAXED);
	KEEL_AWAIT_CALL(t, keel_node_monitor(t, &r->mon, r->node,
					     app.subject[r->shard],
					     HEARTBEAT_NS, SILENCE_NS));
	KEEL_EXIT(t, keel_res(t)); /* never 0 */
}

static KEEL_TASK_TYPE(remote_task, struct remote, task, remote_step);

static int remote_start(struct keel_child_start *cs, void *arg)
{
	struct remote *r = keel_child_spawn(cs, &remote_task, KEEL_PRIO_HIGH);

	if (!r)
		return -ENOMEM;
	r->shard = (unsigned)(uintptr_t)arg;
	r->node = app.node[shard_loop(r->shard)];
	return 0;
}

/* ---- the tree, and watching it ------------------------------------------ */

static struct keel_child_spec shard_specs[MAX_SHARDS];
static struct keel_sup_spec shards_spec;
/* link-i (shard processes) or remote-i (fronts), and their supervisor */
static struct keel_child_spec peer_specs[MAX_SHARDS];
static char peer_names[MAX_SHARDS][24];
static struct keel_sup_spec peers_spec;
static struct keel_child_spec front_children[MAX_LOOPS][2];
static struct keel_sup_spec front_specs[MAX_LOOPS], conns_specs[MAX_LOOPS];
static struct keel_child_spec conn_tmpl[MAX_LOOPS];
static char front_names[MAX_LOOPS][3][24]; /* front-, conns-, acceptor-i */
static struct keel_child_spec top_children[2 + MAX_LOOPS];
static unsigned ntop; /* top's children */

static void add_sup(const char *name, struct keel_sup_spec *spec,
		    struct keel_loop *loop)
{
	top_children[ntop++] = (struct keel_child_spec){
	    .name = name,
	    .start = sup_start,
	    .arg = spec,
	    .type = KEEL_SUPERVISOR,
	    .loop = loop,
	};
}

/* A child that goes with shard i (the shard, its link, its remote): its
 * start function gets i. */
static struct keel_child_spec shard_child(const char *name,
					  keel_child_start_fn start, unsigned i,
					  struct keel_loop *loop)
{
	return (struct keel_child_spec){
	    .name = name,
	    .start = start,
	    .arg = (void *)(uintptr_t)i,
	    .loop = loop,
	};
}

/* "shards": the shards this process holds; in a shard process, "links"
 * beside it. */
static void build_shards(struct keel_runtime *rt)
{
	unsigned n = 0;

	for (unsigned i = app.set_index; i < app.shards; i += app.set_count) {
		struct keel_loop *loop = keel_runtime_loop(rt, shard_loop(i));

		snprintf(app.shard_name[i], sizeof(app.shard_name[i]),
			 "shard-%u", i);
		shard_specs[n] =
		    shard_child(app.shard_name[i], shard_start, i, loop);
		snprintf(peer_names[n], sizeof(peer_names[n]), "link-%u", i);
		peer_specs[n] = shard_child(peer_names[n], link_start, i, loop);
		n++;
	}
	/* A shard crash is restarted at once, then with backoff if it keeps
	 * crashing; more than 50 restarts in a second: give up. */
	shards_spec = (struct keel_sup_spec){
	    .name = "shards",
	    .strategy = KEEL_ONE_FOR_ONE,
	    .intensity = 50,
	    .period_ms = 1000,
	    .children = shard_specs,
	    .nchildren = n,
	    .backoff = {.min_ms = 1, .max_ms = 20, .jitter_pct = 20},
	};
	add_sup("shards", &shards_spec, NULL);
	if (app.role != ROLE_SHARDS)
		return;
	peers_spec = (struct keel_sup_spec){
	    .name = "links",
	    .strategy = KEEL_ONE_FOR_ONE,
	    .intensity = 10,
	    .period_ms = 1000,
	    .children = peer_specs,
	    .nchildren = n,
	    .backoff = {.min_ms = 10, .max_ms = 500, .jitter_pct = 20},
	};
	add_sup("links", &peers_spec, NULL);
}

/* A front's "remotes": one child per shard, watching its name. While a
 * shard process is away its children fail at each restart, about twice a
 * second each once the backoff is at its cap: the intensity allows that
 * for every shard, as long as it lasts. */
static void build_remotes(struct keel_runtime *rt)
{
	for (unsigned i = 0; i < app.shards; i++) {
		snprintf(peer_names[i], sizeof(peer_names[i]), "remote-%u", i);
		peer_specs[i] =
		    shard_child(peer_names[i], remote_start, i,
				keel_runtime_loop(rt, shard_loop(i)));
	}
	peers_spec = (struct keel_sup_spec){
	    .name = "remotes",
	    .strategy = KEEL_ONE_FOR_ONE,
	    .intensity = 8 * app.shards,
	    .period_ms = 1000,
	    .children = peer_specs,
	    .nchildren = app.shards,
	    .backoff = {.min_ms = 20, .max_ms = 500, .jitter_pct = 20},
	};
	add_sup("remotes", &peers_spec, NULL);
}

static void build_fronts(struct keel_runtime *rt)
{
	for (unsigned i = 0; i < app.loops; i++) {
		snprintf(front_names[i][0], 24, "front-%u", i);
		snprintf(front_names[i][1], 24, "conns-%u", i);
		snprintf(front_names[i][2], 24, "acceptor-%u", i);
		conn_tmpl[i] = (struct keel_child_spec){
		    .name = "conn",
		    .start = conn_start,
		    .arg = (void *)(uintptr_t)i,
		    .restart = KEEL_TEMPORARY, /* the client reconnects */
		    .shutdown_ms = 1000,
		};
		conns_specs[i] = (struct keel_sup_spec){
		    .name = front_names[i][1],
		    .strategy = KEEL_SIMPLE_ONE_FOR_ONE,
		    .intensity = 10,
		    .period_ms = 1000,
		    .children = &conn_tmpl[i],
		    .nchildren = 1,
		};
		front_children[i][0] = (struct keel_child_spec){
		    .name = front_names[i][1],
		    .start = sup_start,
		    .arg = &conns_specs[i],
		    .type = KEEL_SUPERVISOR,
		};
		front_children[i][1] = (struct keel_child_spec){
		    .name = front_names[i][2],
		    .start = acceptor_start,
		    .arg = (void *)(uintptr_t)i,
		};
		front_specs[i] = (struct keel_sup_spec){
		    .name = front_names[i][0],
		    .strategy = KEEL_REST_FOR_ONE,
		    .intensity = 3,
		    .period_ms = 1000,
		    .children = front_children[i],
		    .nchildren = 2,
		};
		add_sup(front_names[i][0], &front_specs[i],
			keel_runtime_loop(rt, i));
	}
}

static int build_tree(struct keel_runtime *rt)
{
	struct keel_sup_spec top = {
	    .name = "top",
	    .strategy = KEEL_ONE_FOR_ONE,
	    .intensity = 5,
	    .period_ms = 10000,
	    .children = top_children,
	};

	for (unsigned i = 0; i < app.shards; i++)
		snprintf(app.subject[i], sizeof(app.subject[i]), "kv.shard.%u",
			 i);
	if (app.role == ROLE_FRONT)
		build_remotes(rt);
	else
		build_shards(rt);
	if (app.role != ROLE_SHARDS)
		build_fronts(rt);
	top.nchildren = ntop;
	return keel_sup_start(keel_runtime_loop(rt, 0), &top, &app.top);
}

/* What the shards supervisors did, summed over their incarnations. */
static struct {
	struct keel_sup *current; /* a reference */
	uint64_t restarts, dropped;
	uint64_t escalations;
} seen;

/* Follow "shards" across its incarnations: when top has replaced it, the
 * old one has exited and its counters are final. */
static void watch_shards(void)
{
	struct keel_child_id id;
	struct keel_sup *now = NULL;
	struct keel_sup_stats st;

	if (!keel_sup_child_id(app.top, "shards", &id))
		now = keel_sup_child_sup(app.top, id);
	if (now == seen.current) {
		if (now)
			keel_sup_release(now);
		return;
	}
	if (seen.current) {
		keel_sup_stats(seen.current, &st);
		seen.restarts += st.restarts;
		seen.dropped += st.dropped;
		if (st.escalated) {
			seen.escalations++;
			printf("supervised: %.2f s: the shards supervisor "
			       "exceeded its restart intensity and gave up "
			       "(escalation %llu); top restarted it\n",
			       (double)(now_ns() - app.start_ns) / 1e9,
			       (unsigned long long)seen.escalations);
			fflush(stdout);
		}
		keel_sup_release(seen.current);
	}
	seen.current = now;
}

static void shards_totals(uint64_t *restarts, uint64_t *dropped)
{
	struct keel_sup_stats st = {0};

	if (seen.current)
		keel_sup_stats(seen.current, &st);
	*restarts = seen.restarts + st.restarts;
	*dropped = seen.dropped + st.dropped;
}

static bool tree_up(void)
{
	struct keel_child_info c[2 + MAX_LOOPS];
	uint32_t n = keel_sup_which_children(app.top, c, 2 + MAX_LOOPS);

	for (uint32_t i = 0; i < n; i++)
		if (c[i].state != KEEL_CHILD_RUNNING)
			return false;
	return n == ntop;
}

static double elapsed(void)
{
	return (double)(now_ns() - app.start_ns) / 1e9;
}

/* A front's shards as server_main last saw them: it prints each change. */
static struct {
	int up[MAX_SHARDS];
	uint64_t ups, downs;
} remotes_seen;

static void watch_remotes(void)
{
	for (unsigned i = 0; i < app.shards; i++) {
		int up = __atomic_load_n(&app.remote_up[i], __ATOMIC_RELAXED);

		if (up == remotes_seen.up[i])
			continue;
		remotes_seen.up[i] = up;
		if (up)
			remotes_seen.ups++;
		else
			remotes_seen.downs++;
		printf("supervised: %.2f s: shard %u %s (%s)\n", elapsed(), i,
		       up ? "up" : "down", app.subject[i]);
		fflush(stdout);
	}
}

/* Over NATS: a keeper on each loop, which connects its node. */
static void start_keepers(struct keel_runtime *rt)
{
	for (unsigned i = 0; i < app.loops; i++)
		if (keel_spawn_on(keel_runtime_loop(rt, i), &keeper_task, 0,
				  keeper_init, (void *)(uintptr_t)i)) {
			__atomic_store_n(&app.node_err, -ENOMEM,
					 __ATOMIC_RELAXED);
			__atomic_add_fetch(&app.nodes_down, 1,
					   __ATOMIC_RELEASE);
		}
}

static uint64_t nodes(uint64_t *counter)
{
	return __atomic_load_n(counter, __ATOMIC_ACQUIRE);
}

/* Over NATS, once the tree has stopped: each keeper closes its node. */
static void stop_keepers(void)
{
	for (unsigned i = 0; i < app.loops; i++)
		if (app.node_stop[i]) {
			keel_oneshot_close(app.node_stop[i]);
			keel_oneshot_release(app.node_stop[i]);
			app.node_stop[i] = NULL;
		}
}

static void print_started(void)
{
	if (app.role == ROLE_SHARDS)
		printf("supervised: serving shards %u/%u of %u on %s (%u "
		       "loops, panic rate %g%s)\n",
		       app.set_index, app.set_count, app.shards, app.nats,
		       app.loops, app.panic_rate,
		       app.storm_at >= 0 ? ", fault storm scheduled" : "");
	else
		printf(
		    "supervised: listening on %s:%u (%u loops, %u shards%s%s, "
		    "panic rate %g%s)\n",
		    app.host, app.port, app.loops, app.shards,
		    app.nats ? " over " : "", app.nats ? app.nats : "",
		    app.panic_rate,
		    app.storm_at >= 0 ? ", fault storm scheduled" : "");
	/* The times of its shards going down and up, in a script's time. */
	if (app.nats)
		print_started_at("supervised", app.start_ns);
	fflush(stdout);
}

struct server_main {
	struct keel_task task;
	uint64_t next_stats, storm_start;
	uint64_t storm_escalations;
	struct keel_shield shield;
	int status;
};

static int server_status;

static int server_step(struct keel_task *t)
{
	struct server_main *m = keel_container_of(t, struct server_main, task);
	struct keel_token *stopping = keel_loop_stop_token(keel_task_loop(t));
	uint64_t restarts, dropped;

	KEEL_BEGIN(t);
	app.start_ns = now_ns();
	if (app.nats) {
		start_keepers(keel_runtime_current());
		while (nodes(&app.nodes_up) + nodes(&app.nodes_down) <
		       app.loops)
			KEEL_AWAIT(t, keel_sleep(t, POLL_NS));
		if (nodes(&app.nodes_down)) {
			fprintf(stderr,
				"supervised: cannot connect to %s: %s\n",
				app.nats,
				keel_strerror(__atomic_load_n(
				    &app.node_err, __ATOMIC_RELAXED)));
			m->status = 1;
			goto stop;
		}
	}
	if (build_tree(keel_runtime_current())) {
		m->status = 1;
		goto stop;
	}
	while (!tree_up()) {
		KEEL_AWAIT(t, keel_sleep(t, POLL_NS));
		if (keel_res(t) == -ECANCELED || keel_token_cancelled(stopping))
			goto stop;
	}
	print_started();
	m->next_stats = now_ns() + NS;
	for (;;) {
		KEEL_AWAIT(t, keel_sleep(t, POLL_NS));
		/* SIGTERM: the runtime is shutting down (over NATS the
		 * keepers hold the loops: only the stop token says so). */
		if (keel_res(t) == -ECANCELED || keel_token_cancelled(stopping))
			break;
		watch_shards();
		if (app.role == ROLE_FRONT)
			watch_remotes();
		if (app.storm_at >= 0 && !m->storm_start &&
		    now_ns() - app.start_ns >= (uint64_t)(app.storm_at * 1e9)) {
			m->storm_start = now_ns();
			m->storm_escalations = seen.escalations;
			__atomic_store_n(&app.storm, 1, __ATOMIC_RELAXED);
			printf("supervised: %.2f s: fault storm: every shard "
			       "request panics\n",
			       (double)(m->storm_start - app.start_ns) / 1e9);
			fflush(stdout);
		}
		/* The storm ends with the escalation it causes (or at most
		 * after 3 s, if the load is too light to cause one). */
		if (__atomic_load_n(&app.storm, __ATOMIC_RELAXED) &&
		    (seen.escalations > m->storm_escalations ||
		     now_ns() - m->storm_start > STORM_NS_MAX)) {
			__atomic_store_n(&app.storm, 0, __ATOMIC_RELAXED);
			printf("supervised: %.2f s: fault storm over\n",
			       elapsed());
			fflush(stdout);
		}
		if (app.stats && now_ns() >= m->next_stats) {
			shards_totals(&restarts, &dropped);
			printf("supervised: %.0f s: %llu requests, %llu "
			       "errors, %llu shard restarts\n",
			       elapsed(),
			       (unsigned long long)read_count(&app.requests),
			       (unsigned long long)read_count(&app.errors),
			       (unsigned long long)restarts);
			fflush(stdout);
			m->next_stats += NS;
		}
		{
			struct keel_sup_stats st;

			/* The tree gave up by itself: nothing left to serve. */
			keel_sup_stats(app.top, &st);
			if (st.state == KEEL_SUP_EXITED)
				break;
		}
	}
stop:
	keel_shield_begin(t, &m->shield, UINT64_MAX);
	if (app.top) {
		/* Alone, the tree stops by itself (its token was cancelled
		 * with ours); over NATS it is stopped here, and then the
		 * keepers close the nodes it used. */
		if (app.nats)
			keel_sup_stop(app.top);
		KEEL_AWAIT(t, keel_sup_wait(t, app.top));
		server_status = keel_res(t);
		watch_shards();
	}
	stop_keepers();
	while (nodes(&app.nodes_down) < (app.nats ? app.loops : 0))
		KEEL_AWAIT(t, keel_sleep(t, POLL_NS));
	keel_shield_end(t, &m->shield);
	keel_runtime_shutdown(keel_runtime_current());
	KEEL_EXIT(t, m->status);
}

static KEEL_TASK_TYPE(server_main_task, struct server_main, task, server_step);

static int run_server(void)
{
	struct keel_runtime_opts ropts = {.threads = app.loops};
	struct keel_runtime *rt;
	struct keel_sup_stats st;
	uint64_t restarts, dropped;
	int err = keel_runtime_create(&rt, &ropts);

	if (err) {
		fprintf(stderr, "supervised: %s\n", keel_loop_explain(err));
		return 1;
	}
	/* The listeners belong to the process, not to an acceptor's life:
	 * a restarted acceptor accepts on the same socket. A shard process
	 * has none. */
	for (unsigned i = 0; i < app.loops && app.role != ROLE_SHARDS; i++) {
		int fd = keel_tcp_listen(app.host, app.port, LISTEN_BACKLOG,
					 KEEL_NET_REUSEPORT);

		if (fd < 0) {
			fprintf(stderr,
				"supervised: cannot listen on %s:%u: %s\n",
				app.host, app.port, keel_strerror(fd));
			return 1;
		}
		if (app.port == 0)
			app.port = (uint16_t)keel_net_local_port(fd);
		app.listen_fd[i] = fd;
	}
	err = keel_runtime_run(rt, &server_main_task, NULL, NULL);
	keel_runtime_destroy(rt);
	for (unsigned i = 0; i < app.loops && app.role != ROLE_SHARDS; i++)
		close(app.listen_fd[i]);
	if (!app.top) {
		if (!app.node_err) /* that one was said */
			fprintf(stderr,
				"supervised: could not start the tree: %d\n",
				err);
		return 1;
	}
	keel_sup_stats(app.top, &st);
	shards_totals(&restarts, &dropped);
	if (app.role == ROLE_SHARDS)
		printf("supervised: served %llu requests over NATS, answered "
		       "%llu with an error\n",
		       (unsigned long long)read_count(&app.requests),
		       (unsigned long long)read_count(&app.errors));
	else
		printf("supervised: served %llu requests on %llu connections, "
		       "answered %llu with an error\n",
		       (unsigned long long)read_count(&app.requests),
		       (unsigned long long)read_count(&app.connections),
		       (unsigned long long)read_count(&app.errors));
	if (app.role == ROLE_FRONT)
		printf("supervised: remote shards went down %llu times and "
		       "came up %llu times (at start too)\n",
		       (unsigned long long)remotes_seen.downs,
		       (unsigned long long)remotes_seen.ups);
	else
		printf("supervised: shards restarted %llu times (%llu "
		       "requests lost at panics), the shards supervisor "
		       "escalated %llu time%s\n",
		       (unsigned long long)restarts,
		       (unsigned long long)dropped,
		       (unsigned long long)seen.escalations,
		       seen.escalations == 1 ? "" : "s");
	printf("supervised: top exited with %d (%s: %s)%s\n", server_status,
	       keel_exit_kind_name(keel_exit_kind_of(server_status)),
	       keel_strerror(server_status),
	       st.escalated ? ": the tree gave up" : "");
	if (seen.current)
		keel_sup_release(seen.current);
	keel_sup_release(app.top);
	/* A signal stops the tree with -ESHUTDOWN: that is a clean exit. */
	return st.escalated || err < 0 ? 1 : 0;
}

/* ---- the client --------------------------------------------------------- */

#define KEYS_PER_CONN 16

static struct {
	unsigned conns;
	double rate; /* requests a second, over all connections */
	double duration;
	struct sockaddr_storage addr;
	socklen_t addrlen;
	uint64_t end_ns;
	double every; /* print each period of this many seconds; 0: never */
	/* Atomics, from every loop. */
	uint64_t requests, ok, errors, down, timeouts, conn_errors, lost, wrong;
	uint64_t unanswered;
	unsigned done;
} cli;

struct client_conn {
	struct keel_task task;
	unsigned id;
	int fd;
	uint64_t seq, next_ns;
	char out[LINE_MAX];
	size_t outlen;
	char in[LINE_MAX + 32];
	size_t inlen;
	/* The value each key must have: the last SET answered OK; unknown
	 * after a SET that failed (it may or may not have been applied). */
	uint64_t expect[KEYS_PER_CONN];
	bool unknown[KEYS_PER_CONN];
	unsigned key;
	bool set;
};

/* Read the answer's line; true when it holds. */
static bool client_line(struct client_conn *c)
{
	char *nl = memchr(c->in, '\n', c->inlen);

	if (!nl)
		return false;
	*nl = '\0';
	return true;
}

static void client_check(struct client_conn *c)
{
	unsigned k = c->key;
	uint64_t v;

	count(&cli.requests);
	if (!strncmp(c->in, "ERR", 3)) {
		count(&cli.errors);
		if (strstr(c->in, "down"))
			count(&cli.down);
		else if (strstr(c->in, "timeout"))
			count(&cli.timeouts);
		if (c->set)
			c->unknown[k] = true;
		return;
	}
	count(&cli.ok);
	if (c->set) {
		c->expect[k] = c->seq;
		c->unknown[k] = false;
	} else if (!strcmp(c->in, "NOTFOUND")) {
		if (c->expect[k] && !c->unknown[k])
			count(&cli.lost); /* its shard was restarted */
		c->expect[k] = 0;
	} else if (sscanf(c->in, "VALUE v%llu", (unsigned long long *)&v) ==
		   1) {
		if (!c->unknown[k] && v != c->expect[k])
			count(&cli.wrong);
		c->expect[k] = v;
		c->unknown[k] = false;
	} else {
		count(&cli.wrong);
	}
}

static int client_step(struct keel_task *t)
{
	struct client_conn *c = keel_container_of(t, struct client_conn, task);

	KEEL_BEGIN(t);
	c->next_ns = now_ns();
	while (now_ns() < cli.end_ns) {
		KEEL_AWAIT(t,
			   keel_socket(t, cli.addr.ss_family, SOCK_STREAM, 0));
		c->fd = keel_res(t);
		if (c->fd < 0)
			goto failed;
		KEEL_AWAIT(t,
			   keel_connect(t, c->fd, (struct sockaddr *)&cli.addr,
					cli.addrlen));
		if (keel_res(t) < 0)
			goto failed;
		keel_tcp_nodelay(c->fd);
		c->inlen = 0;
		while (now_ns() < cli.end_ns) {
			/* At its rate: one request every conns/rate s. */
			c->next_ns += (uint64_t)(cli.conns / cli.rate * 1e9);
			if (c->next_ns > now_ns())
				KEEL_AWAIT(t, keel_sleep_until(t, c->next_ns));
			/* SET a key, then GET it back: requests 2n-1, 2n. */
			c->seq++;
			c->key = (unsigned)((c->seq - 1) / 2 % KEYS_PER_CONN);
			c->set = c->seq % 2;
			c->outlen = (size_t)snprintf(
			    c->out, sizeof(c->out),
			    c->set ? "SET c%uk%u v%llu\n" : "GET c%uk%u\n",
			    c->id, c->key, (unsigned long long)c->seq);
			KEEL_AWAIT(t, keel_send_all(t, c->fd, c->out, c->outlen,
						    MSG_NOSIGNAL));
			if (keel_res(t) < 0)
				goto failed;
			c->inlen = 0;
			while (!client_line(c)) {
				keel_op_timeout(t, 2 * NS);
				KEEL_AWAIT(
				    t,
				    keel_recv(t, c->fd, c->in + c->inlen,
					      sizeof(c->in) - 1 - c->inlen, 0));
				if (keel_res(t) == -ETIMEDOUT)
					count(&cli.unanswered);
				if (keel_res(t) <= 0 ||
				    c->inlen + (size_t)keel_res(t) >=
					sizeof(c->in) - 1)
					goto failed;
				c->inlen += (size_t)keel_res(t);
			}
			client_check(c);
		}
		KEEL_AWAIT(t, keel_close(t, c->fd));
		break;
	failed:
		/* The server went away or is restarting its front: count it
		 * as a failed request, and connect again. */
		count(&cli.requests);
		count(&cli.errors);
		count(&cli.conn_errors);
		if (c->fd >= 0)
			KEEL_AWAIT(t, keel_close(t, c->fd));
		c->fd = -1;
		KEEL_AWAIT(t, keel_sleep(t, 10 * POLL_NS));
		c->next_ns = now_ns();
	}
	__atomic_add_fetch(&cli.done, 1, __ATOMIC_RELEASE);
	KEEL_END(t);
}

static KEEL_TASK_TYPE(client_conn_task, struct client_conn, task, client_step);

static void client_init(void *frame, void *arg)
{
	struct client_conn *c = frame;

	c->id = (unsigned)(uintptr_t)arg;
	c->fd = -1;
}

/* What the client saw: its counters, or what they added in a period. */
struct client_seen {
	uint64_t ok, errors, down, timeouts, conn_errors, unanswered;
};

static struct client_seen client_seen_now(void)
{
	return (struct client_seen){
	    .ok = read_count(&cli.ok),
	    .errors = read_count(&cli.errors),
	    .down = read_count(&cli.down),
	    .timeouts = read_count(&cli.timeouts),
	    .conn_errors = read_count(&cli.conn_errors),
	    .unanswered = read_count(&cli.unanswered),
	};
}

/* --every: what the period that ends `at` s in added, on one line. */
static void print_period(double at, const struct client_seen *now,
			 const struct client_seen *before)
{
	printf("client: %.2f s: %llu ok, %llu errors (%llu shard down, %llu "
	       "timeouts, %llu connections lost, %llu unanswered)\n",
	       at, (unsigned long long)(now->ok - before->ok),
	       (unsigned long long)(now->errors - before->errors),
	       (unsigned long long)(now->down - before->down),
	       (unsigned long long)(now->timeouts - before->timeouts),
	       (unsigned long long)(now->conn_errors - before->conn_errors),
	       (unsigned long long)(now->unanswered - before->unanswered));
	fflush(stdout);
}

struct client_main {
	struct keel_task task;
	unsigned i;
	uint64_t start_ns, next_period;
	struct client_seen last;
};

static int client_main_step(struct keel_task *t)
{
	struct client_main *m = keel_container_of(t, struct client_main, task);
	struct keel_runtime *rt = keel_runtime_current();

	struct client_seen now;

	KEEL_BEGIN(t);
	m->start_ns = now_ns();
	if (cli.every > 0)
		print_started_at("client", m->start_ns);
	m->next_period = m->start_ns + (uint64_t)(cli.every * 1e9);
	cli.end_ns = m->start_ns + (uint64_t)(cli.duration * 1e9);
	for (m->i = 0; m->i < cli.conns; m->i++)
		if (keel_spawn_on(
			keel_runtime_loop(rt, m->i % keel_runtime_size(rt)),
			&client_conn_task, 0, client_init,
			(void *)(uintptr_t)m->i))
			KEEL_EXIT(t, -ENOMEM);
	while (__atomic_load_n(&cli.done, __ATOMIC_ACQUIRE) < cli.conns) {
		KEEL_AWAIT(t, keel_sleep(t, 10 * POLL_NS));
		if (keel_res(t) == -ECANCELED)
			break;
		if (cli.every > 0 && now_ns() >= m->next_period) {
			now = client_seen_now();
			print_period((double)(now_ns() - m->start_ns) / 1e9,
				     &now, &m->last);
			m->last = now;
			m->next_period += (uint64_t)(cli.every * 1e9);
		}
	}
	now = client_seen_now();
	/* The last period, cut short, if anything came in it. */
	if (cli.every > 0 && memcmp(&now, &m->last, sizeof(now)))
		print_period((double)(now_ns() - m->start_ns) / 1e9, &now,
			     &m->last);
	KEEL_END(t);
}

static KEEL_TASK_TYPE(client_main_task, struct client_main, task,
		      client_main_step);

static int run_client(unsigned threads)
{
	struct keel_runtime_opts ropts = {.threads = threads};
	struct keel_runtime *rt;
	uint64_t start = now_ns();
	double secs, pct;
	int err;

	if (keel_net_parse_addr(app.host, app.port, &cli.addr, &cli.addrlen)) {
		fprintf(stderr, "supervised: bad address %s\n", app.host);
		return 2;
	}
	err = keel_runtime_create(&rt, &ropts);
	if (err) {
		fprintf(stderr, "supervised: %s\n", keel_loop_explain(err));
		return 1;
	}
	err = keel_runtime_run(rt, &client_main_task, NULL, NULL);
	keel_runtime_destroy(rt);
	secs = (double)(now_ns() - start) / 1e9;
	pct = cli.requests ? 100.0 * (double)cli.errors / (double)cli.requests
			   : 0;
	printf("client: %llu requests in %.1f s (%.0f/s): %llu ok, %llu "
	       "errors (%.2f%%: %llu shard down, %llu timeouts, %llu "
	       "connections lost, %llu of them to an answer not come in "
	       "2 s)\n",
	       (unsigned long long)cli.requests, secs,
	       (double)cli.requests / secs, (unsigned long long)cli.ok,
	       (unsigned long long)cli.errors, pct,
	       (unsigned long long)cli.down, (unsigned long long)cli.timeouts,
	       (unsigned long long)cli.conn_errors,
	       (unsigned long long)cli.unanswered);
	printf("client: %llu keys lost to shard restarts, %llu wrong "
	       "values\n",
	       (unsigned long long)cli.lost, (unsigned long long)cli.wrong);
	return err < 0 || cli.wrong || !cli.ok ? 1 : 0;
}

/* ---- main --------------------------------------------------------------- */

static void usage(FILE *out)
{
	fprintf(
	    out,
	    "usage: supervised [--threads N] [--shards S] [--panic-rate P]\n"
	    "                  [--storm-at SECS] [--stats] ADDR PORT\n"
	    "       supervised --client [--threads N] [--conns C] [--rate "
	    "R]\n"
	    "                  [--duration SECS] [--every SECS] ADDR PORT\n"
	    "       supervised --nats URL --role shards --shard-set K/M "
	    "[--threads N]\n"
	    "                  [--shards S] [--panic-rate P] [--storm-at "
	    "SECS] [--stats]\n"
	    "       supervised --nats URL --role front [--threads N] "
	    "[--shards S]\n"
	    "                  [--stats] ADDR PORT\n"
	    "ADDR must be a loopback address (127.0.0.0/8 or ::1), and so\n"
	    "must URL's host (nats://127.0.0.1:4222). A shard process holds\n"
	    "the shards i of S with i %% M == K; fronts and shard processes\n"
	    "must agree on S.\n");
}

/* --shard-set K/M. */
static bool parse_set(const char *s)
{
	unsigned k, m;
	char extra;

	if (sscanf(s, "%u/%u%c", &k, &m, &extra) != 2 || m == 0 || k >= m ||
	    m > MAX_SHARDS)
		return false;
	app.set_index = k;
	app.set_count = m;
	return true;
}

/* Whether a NATS URL's server is on loopback: nats://HOST[:PORT], HOST
 * an address (an IPv6 one in brackets). */
static bool nats_url_is_loopback(const char *url)
{
	const char *p = url + strlen("nats://"), *end;
	char host[INET6_ADDRSTRLEN];

	if (strncmp(url, "nats://", strlen("nats://")))
		return false;
	if (*p == '[')
		end = strchr(++p, ']');
	else
		end = p + strcspn(p, ":");
	if (!end || (size_t)(end - p) >= sizeof(host))
		return false;
	memcpy(host, p, (size_t)(end - p));
	host[end - p] = '\0';
	return is_loopback(host);
}

/* The options that do not go together; NULL when they do. */
static const char *bad_combination(bool client, bool set)
{
	if (client && app.nats)
		return "--client does not take --nats";
	if (!app.nats != (app.role == ROLE_ALONE))
		return "--nats and --role go together";
	if (set != (app.role == ROLE_SHARDS))
		return "--shard-set goes with --role shards, which needs it";
	if (app.nats && !nats_url_is_loopback(app.nats))
		return "the NATS URL must be nats://<a loopback "
		       "address>[:port]";
	if (app.role == ROLE_SHARDS && app.set_index >= app.shards)
		return "this shard set holds none of the shards";
	if (app.role == ROLE_FRONT && (app.panic_rate > 0 || app.storm_at >= 0))
		return "a front holds no shards: no --panic-rate, no "
		       "--storm-at";
	return NULL;
}

static bool parse_double(const char *s, double min, double max, double *out)
{
	char *end;
	double v;

	errno = 0;
	v = strtod(s, &end);
	if (errno || end == s || *end || v < min || v > max)
		return false;
	*out = v;
	return true;
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
	    {"client", no_argument, NULL, 'c'},
	    {"threads", required_argument, NULL, 't'},
	    {"shards", required_argument, NULL, 's'},
	    {"panic-rate", required_argument, NULL, 'p'},
	    {"storm-at", required_argument, NULL, 'S'},
	    {"stats", no_argument, NULL, 'v'},
	    {"conns", required_argument, NULL, 'n'},
	    {"rate", required_argument, NULL, 'r'},
	    {"duration", required_argument, NULL, 'd'},
	    {"every", required_argument, NULL, 'e'},
	    {"nats", required_argument, NULL, 'N'},
	    {"role", required_argument, NULL, 'R'},
	    {"shard-set", required_argument, NULL, 'K'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	bool client = false, set = false, ok = true;
	double v, threads = 2, shards = 4, port;
	const char *why;
	int opt;

	app.storm_at = -1;
	app.set_count = 1;
	cli.conns = 8;
	cli.rate = 2000;
	cli.duration = 5;
	while ((opt = getopt_long(argc, argv, "ct:s:p:S:vn:r:d:e:N:R:K:h",
				  longopts, NULL)) != -1) {
		switch (opt) {
		case 'c':
			client = true;
			break;
		case 't':
			ok = parse_double(optarg, 1, MAX_LOOPS, &threads);
			break;
		case 's':
			ok = parse_double(optarg, 1, MAX_SHARDS, &shards);
			break;
		case 'p':
			ok = parse_double(optarg, 0, 1, &app.panic_rate);
			break;
		case 'S':
			ok = parse_double(optarg, 0, 3600, &app.storm_at);
			break;
		case 'v':
			app.stats = true;
			break;
		case 'n':
			ok = parse_double(optarg, 1, 10000, &v);
			cli.conns = (unsigned)v;
			break;
		case 'r':
			ok = parse_double(optarg, 1, 1e7, &cli.rate);
			break;
		case 'd':
			ok = parse_double(optarg, 0.1, 3600, &cli.duration);
			break;
		case 'e':
			ok = parse_double(optarg, 0.01, 3600, &cli.every);
			break;
		case 'N':
			app.nats = optarg;
			break;
		case 'R':
			ok = !strcmp(optarg, "shards") ||
			     !strcmp(optarg, "front");
			app.role = optarg[0] == 's' ? ROLE_SHARDS : ROLE_FRONT;
			break;
		case 'K':
			ok = set = parse_set(optarg);
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
		if (!ok) {
			fprintf(stderr, "supervised: bad value: %s\n", optarg);
			return 2;
		}
	}
	app.loops = (unsigned)threads;
	app.shards = (unsigned)shards;
	why = bad_combination(client, set);
	if (why) {
		fprintf(stderr, "supervised: %s\n", why);
		return 2;
	}
	/* A shard process takes no address: it only talks to NATS. */
	if (app.role == ROLE_SHARDS) {
		if (argc != optind) {
			usage(stderr);
			return 2;
		}
		return run_server();
	}
	if (argc - optind != 2 ||
	    !parse_double(argv[optind + 1], 0, 65535, &port)) {
		usage(stderr);
		return 2;
	}
	app.host = argv[optind];
	app.port = (uint16_t)port;
	if (!is_loopback(app.host)) {
		fprintf(stderr, "supervised: %s is not a loopback address\n",
			app.host);
		return 2;
	}
	if (client)
		return run_client(app.loops);
	return run_server();
}
