/* SPDX-License-Identifier: MIT */
/*
 * supervised: a key-value server that keeps serving while its workers
 * crash, under a supervision tree (keel/supervisor.h); and its client.
 *
 *	supervised [--threads N] [--shards S] [--panic-rate P]
 *		   [--storm-at SECS] [--stats] ADDR PORT
 *	supervised --client [--threads N] [--conns C] [--rate R]
 *		   [--duration SECS] ADDR PORT
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
 * back, and prints the error rate it saw.
 *
 * Loopback only: both sides refuse any other address.
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

/* ---- shared ------------------------------------------------------------- */

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
	/* Atomics, from every loop. */
	int storm;
	uint64_t requests;
	uint64_t errors;
	uint64_t connections;
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
 * the connection frees.
 */
struct kv_request {
	enum op op;
	char key[WORD_MAX + 1];
	char value[WORD_MAX + 1];
	struct keel_oneshot *reply; /* a reference */
};

static char tag_ok, tag_notfound;

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
	keel_oneshot_close(req->reply); /* the connection sees -EPIPE */
	keel_oneshot_release(req->reply);
	free(req);
}

static void request_answer(struct kv_request *req, void *value)
{
	/* The connection gave up (its deadline): the answer is ours. */
	if (keel_oneshot_send(req->reply, value) && value != &tag_ok &&
	    value != &tag_notfound)
		free(value);
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
	char in[4096];
	size_t len;
	char out[LINE_MAX + 32];
	size_t outlen;
	struct keel_oneshot *reply;
	void *value;
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

/* Hand the request to its shard. Returns 0 (the shard has it), or an
 * error (the request is freed: c->out holds the answer). */
static int dispatch(struct conn *c, struct kv_request *req)
{
	/* The high bits pick the shard, the low ones its bucket. */
	struct keel_actor *a =
	    shard_actor((unsigned)((hash(req->key) >> 32) % app.shards));
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

/* The answer `res` (keel_res of the wait), as a line in c->out. */
static void answer(struct conn *c, int res)
{
	if (res == 0 && c->value == &tag_ok)
		c->outlen = (size_t)snprintf(c->out, sizeof(c->out), "OK\n");
	else if (res == 0 && c->value == &tag_notfound)
		c->outlen =
		    (size_t)snprintf(c->out, sizeof(c->out), "NOTFOUND\n");
	else if (res == 0 && c->value)
		c->outlen = (size_t)snprintf(c->out, sizeof(c->out),
					     "VALUE %s\n", (char *)c->value);
	else
		c->outlen = (size_t)snprintf(c->out, sizeof(c->out), "ERR %s\n",
					     res == -ETIMEDOUT ? "timeout"
					     : res == 0	       ? "out of memory"
							       : "shard down");
	if (res == 0 && c->value != &tag_ok && c->value != &tag_notfound)
		free(c->value);
	c->value = NULL;
	if (strncmp(c->out, "ERR", 3) == 0)
		count(&app.errors);
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
	send:
		KEEL_AWAIT(t, keel_send_all(t, c->fd, c->out, c->outlen,
					    MSG_NOSIGNAL));
		if (keel_res(t) < 0)
			KEEL_EXIT(t, 0);
	}
}

static KEEL_TASK_TYPE(conn_task, struct conn, task, conn_step);

/* conns-i's template: `extra` is the accepted fd, now the child's. */
static int conn_start(struct keel_child_start *cs, void *arg)
{
	struct conn *c = keel_child_spawn(cs, &conn_task, KEEL_PRIO_NORMAL);

	(void)arg;
	if (!c)
		return -ENOMEM;
	c->fd = (int)(intptr_t)keel_child_start_extra(cs);
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

/* ---- the tree, and watching it ------------------------------------------ */

static struct keel_child_spec shard_specs[MAX_SHARDS];
static struct keel_sup_spec shards_spec;
static struct keel_child_spec front_children[MAX_LOOPS][2];
static struct keel_sup_spec front_specs[MAX_LOOPS], conns_specs[MAX_LOOPS];
static struct keel_child_spec conn_tmpl[MAX_LOOPS];
static char front_names[MAX_LOOPS][3][24]; /* front-, conns-, acceptor-i */
static struct keel_child_spec top_children[1 + MAX_LOOPS];

static int build_tree(struct keel_runtime *rt)
{
	struct keel_sup_spec top = {
	    .name = "top",
	    .strategy = KEEL_ONE_FOR_ONE,
	    .intensity = 5,
	    .period_ms = 10000,
	    .children = top_children,
	    .nchildren = 1 + app.loops,
	};

	for (unsigned i = 0; i < app.shards; i++) {
		snprintf(app.shard_name[i], sizeof(app.shard_name[i]),
			 "shard-%u", i);
		shard_specs[i] = (struct keel_child_spec){
		    .name = app.shard_name[i],
		    .start = shard_start,
		    .arg = (void *)(uintptr_t)i,
		    .loop = keel_runtime_loop(rt, i % app.loops),
		};
	}
	/* A shard crash is restarted at once, then with backoff if it keeps
	 * crashing; more than 50 restarts in a second: give up. */
	shards_spec = (struct keel_sup_spec){
	    .name = "shards",
	    .strategy = KEEL_ONE_FOR_ONE,
	    .intensity = 50,
	    .period_ms = 1000,
	    .children = shard_specs,
	    .nchildren = app.shards,
	    .backoff = {.min_ms = 1, .max_ms = 20, .jitter_pct = 20},
	};
	top_children[0] = (struct keel_child_spec){
	    .name = "shards",
	    .start = sup_start,
	    .arg = &shards_spec,
	    .type = KEEL_SUPERVISOR,
	};
	for (unsigned i = 0; i < app.loops; i++) {
		struct keel_loop *loop = keel_runtime_loop(rt, i);

		snprintf(front_names[i][0], 24, "front-%u", i);
		snprintf(front_names[i][1], 24, "conns-%u", i);
		snprintf(front_names[i][2], 24, "acceptor-%u", i);
		conn_tmpl[i] = (struct keel_child_spec){
		    .name = "conn",
		    .start = conn_start,
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
		top_children[1 + i] = (struct keel_child_spec){
		    .name = front_names[i][0],
		    .start = sup_start,
		    .arg = &front_specs[i],
		    .type = KEEL_SUPERVISOR,
		    .loop = loop,
		};
	}
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
	struct keel_child_info c[1 + MAX_LOOPS];
	uint32_t n = keel_sup_which_children(app.top, c, 1 + MAX_LOOPS);

	for (uint32_t i = 0; i < n; i++)
		if (c[i].state != KEEL_CHILD_RUNNING)
			return false;
	return n == 1 + app.loops;
}

struct server_main {
	struct keel_task task;
	uint64_t next_stats, storm_start;
	uint64_t storm_escalations;
	struct keel_shield shield;
};

static int server_status;

static int server_step(struct keel_task *t)
{
	struct server_main *m = keel_container_of(t, struct server_main, task);
	uint64_t restarts, dropped;

	KEEL_BEGIN(t);
	app.start_ns = now_ns();
	if (build_tree(keel_runtime_current()))
		KEEL_EXIT(t, 1);
	while (!tree_up()) {
		KEEL_AWAIT(t, keel_sleep(t, POLL_NS));
		if (keel_res(t) == -ECANCELED)
			goto stop;
	}
	printf("supervised: listening on %s:%u (%u loops, %u shards, panic "
	       "rate %g%s)\n",
	       app.host, app.port, app.loops, app.shards, app.panic_rate,
	       app.storm_at >= 0 ? ", fault storm scheduled" : "");
	fflush(stdout);
	m->next_stats = now_ns() + NS;
	for (;;) {
		KEEL_AWAIT(t, keel_sleep(t, POLL_NS));
		if (keel_res(t) == -ECANCELED)
			break; /* SIGTERM: the runtime is shutting down */
		watch_shards();
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
			       (double)(now_ns() - app.start_ns) / 1e9);
			fflush(stdout);
		}
		if (app.stats && now_ns() >= m->next_stats) {
			shards_totals(&restarts, &dropped);
			printf("supervised: %.0f s: %llu requests, %llu "
			       "errors, %llu shard restarts\n",
			       (double)(now_ns() - app.start_ns) / 1e9,
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
	/* The tree stops by itself (its token was cancelled with ours). */
	keel_shield_begin(t, &m->shield, UINT64_MAX);
	KEEL_AWAIT(t, keel_sup_wait(t, app.top));
	server_status = keel_res(t);
	keel_shield_end(t, &m->shield);
	watch_shards();
	keel_runtime_shutdown(keel_runtime_current());
	KEEL_END(t);
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
	 * a restarted acceptor accepts on the same socket. */
	for (unsigned i = 0; i < app.loops; i++) {
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
	for (unsigned i = 0; i < app.loops; i++)
		close(app.listen_fd[i]);
	if (!app.top) {
		fprintf(stderr, "supervised: could not start the tree: %d\n",
			err);
		return 1;
	}
	keel_sup_stats(app.top, &st);
	shards_totals(&restarts, &dropped);
	printf("supervised: served %llu requests on %llu connections, "
	       "answered %llu with an error\n",
	       (unsigned long long)read_count(&app.requests),
	       (unsigned long long)read_count(&app.connections),
	       (unsigned long long)read_count(&app.errors));
	printf("supervised: shards restarted %llu times (%llu requests lost "
	       "at panics), the shards supervisor escalated %llu time%s\n",
	       (unsigned long long)restarts, (unsigned long long)dropped,
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
	/* Atomics, from every loop. */
	uint64_t requests, ok, errors, down, timeouts, conn_errors, lost, wrong;
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

struct client_main {
	struct keel_task task;
	unsigned i;
};

static int client_main_step(struct keel_task *t)
{
	struct client_main *m = keel_container_of(t, struct client_main, task);
	struct keel_runtime *rt = keel_runtime_current();

	KEEL_BEGIN(t);
	cli.end_ns = now_ns() + (uint64_t)(cli.duration * 1e9);
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
	}
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
	       "connections lost)\n",
	       (unsigned long long)cli.requests, secs,
	       (double)cli.requests / secs, (unsigned long long)cli.ok,
	       (unsigned long long)cli.errors, pct,
	       (unsigned long long)cli.down, (unsigned long long)cli.timeouts,
	       (unsigned long long)cli.conn_errors);
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
	    "                  [--duration SECS] ADDR PORT\n"
	    "ADDR must be a loopback address (127.0.0.0/8 or ::1).\n");
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
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	bool client = false, ok = true;
	double v, threads = 2, shards = 4, port;
	int opt;

	app.storm_at = -1;
	cli.conns = 8;
	cli.rate = 2000;
	cli.duration = 5;
	while ((opt = getopt_long(argc, argv, "ct:s:p:S:vn:r:d:h", longopts,
				  NULL)) != -1) {
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
	app.loops = (unsigned)threads;
	app.shards = (unsigned)shards;
	if (client)
		return run_client(app.loops);
	return run_server();
}
