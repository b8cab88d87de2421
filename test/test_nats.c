/* SPDX-License-Identifier: MIT */
/*
 * test_nats.c: libkeel-nats against a real nats-server on loopback, which
 * each test starts on a free port (skipped, saying so, where nats-server
 * is not installed: `make deps`). Served names live in forked processes
 * with their own loop and node: tell and ask across processes, a deadline
 * (-ETIMEDOUT), no responders (-EPIPE, long before the deadline), a queue
 * group whose two members both get a share, the server killed and
 * restarted under tells (the node reconnects, the reconnect buffer
 * bounds what is kept and refuses the rest with -ENOBUFS, the state shows
 * in the metrics), a slow consumer and a full served mailbox, counted, and
 * remote supervision: a monitor of a served name stays quiet over many
 * heartbeats while the serving process is healthy, and fires (-EPIPE)
 * when it is killed or stopped (SIGSTOP: heartbeats go unanswered), and a
 * supervisor whose child monitors the name restarts it as a local
 * stand-in that serves the name itself. Asks that end early (a task
 * killed or cancelled mid-ask, a deadline before a late reply) leave the
 * node working (ASan: no use after free) and the late reply reaches no
 * other ask; asks side by side, one to a name nobody serves,
 * each get their own outcome (the no-responders status names no ask).
 * Heartbeats of a served name go unanswered once its mailbox is closed.
 * The metrics escape the node's name in their label, and each change of
 * a node's state is a mark in the trace.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <keel.h>
#include <keel/node.h>
#include <keel/trace.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "helpers/keel_test.h"
#include "helpers/nats_server.h"

#define T_ECHO	 1 /* ask: the reply is the payload */
#define T_COUNT	 2 /* tell: counted */
#define T_TOTAL	 3 /* ask: the reply is the count so far */
#define T_WHO	 4 /* ask: the reply is the server's id */
#define T_SILENT 5 /* ask: never answered */
#define T_LATE	 6 /* ask: answered with the payload 200 ms later */

#define SEC 1000000000ull

static uint16_t server_port;
static pid_t server_pid = -1;
static pid_t children[2] = {-1, -1};
static char url[64];
static uint64_t child_reconnect_ns = 20000000;

static bool have_server(void)
{
	return system("command -v nats-server >/dev/null 2>&1") == 0;
}

static uint16_t free_port(void)
{
	struct sockaddr_in a = {.sin_family = AF_INET,
				.sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t al = sizeof(a);
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	cr_assert(fd >= 0);
	cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	cr_assert_eq(getsockname(fd, (struct sockaddr *)&a, &al), 0);
	close(fd);
	return ntohs(a.sin_port);
}

static void server_start(void)
{
	server_pid = nats_server_start(server_port);
	cr_assert(server_pid > 0, "nats-server did not listen");
}

static void server_kill(void)
{
	nats_server_kill(server_pid);
	server_pid = -1;
}

static void setup(void)
{
	if (!have_server())
		cr_skip_test("nats-server is not installed (make deps)");
	server_port = free_port();
	snprintf(url, sizeof(url), "nats://127.0.0.1:%u", server_port);
	server_start();
}

static void teardown(void)
{
	for (int i = 0; i < 2; i++)
		if (children[i] > 0) {
			kill(children[i], SIGKILL);
			waitpid(children[i], NULL, 0);
		}
	server_kill();
}

/* ---- the serving process ---- */

struct server {
	struct keel_task task;
	struct keel_node *node;
	struct keel_mailbox *mb;
	const char *name, *queue;
	int id;
	uint64_t count;
	void *msg;
	char who[16];
};

static int server_step(struct keel_task *t)
{
	struct server *s = keel_container_of(t, struct server, task);
	struct keel_node_msg *m;

	KEEL_BEGIN(t);
	KEEL_AWAIT(t, keel_node_connect(t, s->node));
	if (keel_res(t))
		_exit(10);
	if (keel_node_serve(s->node, s->name, s->queue, s->mb))
		_exit(11);
	for (;;) {
		KEEL_AWAIT(t, keel_mb_recv(t, s->mb, &s->msg));
		if (keel_res(t))
			_exit(12);
		m = s->msg;
		switch (m->type) {
		case T_ECHO:
			keel_node_reply(s->node, m, T_ECHO, m->data, m->len);
			break;
		case T_COUNT:
			s->count++;
			break;
		case T_TOTAL:
			keel_node_reply(s->node, m, T_TOTAL, &s->count,
					sizeof(s->count));
			break;
		case T_WHO:
			keel_node_reply(s->node, m, T_WHO, &s->id,
					sizeof(s->id));
			break;
		case T_LATE:
			KEEL_AWAIT(t, keel_sleep(t, 200000000));
			m = s->msg;
			keel_node_reply(s->node, m, T_LATE, m->data, m->len);
			break;
		default:
			break;
		}
		keel_node_msg_free(s->msg);
	}
	KEEL_END(t);
}
static KEEL_TASK_TYPE(server_task, struct server, task, server_step);

/* Fork a process serving `name` (in `queue`, if any) until killed. */
static void serve_in_child(int slot, const char *name, const char *queue)
{
	pid_t pid = fork();

	cr_assert(pid >= 0);
	if (pid) {
		children[slot] = pid;
		return;
	}
	struct keel_loop *loop;
	struct keel_node_opts o = {.url = url,
				   .name = "server",
				   .reconnect_min_ns = child_reconnect_ns};
	struct keel_mailbox_opts mo = {.capacity = 4096,
				       .policy = KEEL_MB_DROP_NEWEST,
				       .on_drop = keel_node_msg_drop};
	struct server *s;

	if (keel_loop_create(&loop, NULL))
		_exit(2);
	s = keel_spawn(loop, &server_task, KEEL_PRIO_NORMAL);
	if (!s || keel_node_new(loop, &o, &s->node) ||
	    keel_mailbox_new(loop, &mo, &s->mb))
		_exit(3);
	s->name = name;
	s->queue = queue;
	s->id = slot;
	keel_loop_run(loop);
	_exit(0);
}

/* ---- the asking side ---- */

struct client {
	struct keel_task task;
	struct keel_node *node;
	struct keel_node_call call;
	struct keel_node_msg *reply;
	int (*body)(struct keel_task *t);
	struct keel_routine r, r2;
	int i, n, res, seen[2];
	int fired; /* a watcher's result; 1 while it watches */
	uint64_t t0, total;
	struct keel_node_stats st;
};

/* Ask `name` until it answers (the child may not have subscribed yet):
 * keel_res 0 and c->reply set, or the last error after ~10 s. */
static int ask_ready(struct keel_task *t, struct client *c, const char *name,
		     uint16_t type)
{
	KEEL_BEGIN(&c->r2);
	for (c->i = 0; c->i < 500; c->i++) {
		KEEL_AWAIT_CALL(&c->r2,
				keel_node_ask(t, &c->call, c->node, name, type,
					      "hi", 2, SEC, &c->reply));
		c->res = keel_res(t);
		if (c->res != -EPIPE)
			break;
		KEEL_AWAIT(&c->r2, keel_sleep(t, 20000000));
	}
	KEEL_ROUTINE_RETURN(&c->r2, t, c->res);
}

static int client_step(struct keel_task *t)
{
	struct client *c = keel_container_of(t, struct client, task);

	KEEL_BEGIN(t);
	KEEL_AWAIT(t, keel_node_connect(t, c->node));
	cr_assert_eq(keel_res(t), 0, "connect: %s", strerror(-keel_res(t)));
	cr_assert_eq(keel_node_state(c->node), KEEL_NODE_CONNECTED);
	KEEL_AWAIT_CALL(t, c->body(t));
	KEEL_AWAIT(t, keel_node_close(t, c->node));
	cr_assert_eq(keel_node_state(c->node), KEEL_NODE_CLOSED);
	keel_node_free(c->node);
	KEEL_END(t);
}
static KEEL_TASK_TYPE(client_task, struct client, task, client_step);

static void run_client(int (*body)(struct keel_task *t),
		       const struct keel_node_opts *opts)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_node_opts o = {.url = url, .name = "client"};
	struct client *c = kt_spawn(loop, &client_task, KEEL_PRIO_NORMAL);

	if (opts)
		o = *opts;
	o.url = url;
	cr_assert_eq(keel_node_new(loop, &o, &c->node), 0);
	c->body = body;
	kt_loop_run(loop);
	keel_loop_destroy(loop);
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * SEC + (uint64_t)ts.tv_nsec;
}

/* ---- tell and ask across processes ---- */

static int tell_ask_body(struct keel_task *t)
{
	struct client *c = keel_container_of(t, struct client, task);
	uint64_t total = 0;

	KEEL_BEGIN(&c->r);
	KEEL_AWAIT_CALL(&c->r, ask_ready(t, c, "svc", T_ECHO));
	cr_assert_eq(keel_res(t), 0, "ask: %s", strerror(-keel_res(t)));
	cr_assert_eq(c->reply->type, T_ECHO);
	cr_assert_eq(c->reply->len, 2);
	cr_assert_eq(memcmp(c->reply->data, "hi", 2), 0);
	cr_assert_neq(c->reply->request_id, 0);
	keel_node_msg_free(c->reply);

	/* Round trips, one at a time: the figure the report quotes. */
	c->n = 2000;
	c->t0 = now_ns();
	for (c->i = 0; c->i < c->n; c->i++) {
		KEEL_AWAIT_CALL(&c->r, keel_node_ask(t, &c->call, c->node,
						     "svc", T_ECHO, "ping", 4,
						     5 * SEC, &c->reply));
		cr_assert_eq(keel_res(t), 0, "ask %d: %s", c->i,
			     strerror(-keel_res(t)));
		keel_node_msg_free(c->reply);
	}
	fprintf(stderr, "test_nats: ask round trip %.1f us (%d asks)\n",
		(double)(now_ns() - c->t0) / c->n / 1000.0, c->n);

	/* Tells, then ask the total until every one has arrived. */
	c->n = 50000;
	c->t0 = now_ns();
	for (c->i = 0; c->i < c->n; c->i++) {
		cr_assert_eq(keel_node_tell(c->node, "svc", T_COUNT, "x", 1),
			     0);
		if (c->i % 256 == 255)
			KEEL_AWAIT(&c->r,
				   keel_yield(t)); /* let the driver flush */
	}
	for (c->i = 0; c->i < 1000; c->i++) {
		KEEL_AWAIT_CALL(&c->r, keel_node_ask(t, &c->call, c->node,
						     "svc", T_TOTAL, NULL, 0,
						     5 * SEC, &c->reply));
		cr_assert_eq(keel_res(t), 0);
		cr_assert_eq(c->reply->len, sizeof(total));
		memcpy(&total, c->reply->data, sizeof(total));
		keel_node_msg_free(c->reply);
		if (total == (uint64_t)c->n)
			break;
		KEEL_AWAIT(&c->r, keel_sleep(t, 10000000));
	}
	cr_assert_eq(total, (uint64_t)c->n, "%d tells, %llu arrived", c->n,
		     (unsigned long long)total);
	fprintf(stderr, "test_nats: %.0f tells/s (%d, delivered)\n",
		c->n / ((double)(now_ns() - c->t0) / SEC), c->n);
	keel_node_stats(c->node, &c->st);
	cr_assert_geq(c->st.tells, (uint64_t)c->n);
	cr_assert_eq(c->st.send_nobufs + c->st.send_failed, 0);
	KEEL_ROUTINE_RETURN(&c->r, t, 0);
}

Test(nats, tell_and_ask_across_processes, .init = setup, .fini = teardown,
     .timeout = 120)
{
	serve_in_child(0, "svc", NULL);
	run_client(tell_ask_body, NULL);
}

/* ---- deadline, no responders ---- */

static int deadline_body(struct keel_task *t)
{
	struct client *c = keel_container_of(t, struct client, task);

	KEEL_BEGIN(&c->r);
	KEEL_AWAIT_CALL(&c->r, ask_ready(t, c, "svc", T_ECHO));
	cr_assert_eq(keel_res(t), 0);
	keel_node_msg_free(c->reply);
	/* Served, never answered: the deadline ends the wait. */
	KEEL_AWAIT_CALL(&c->r,
			keel_node_ask(t, &c->call, c->node, "svc", T_SILENT,
				      NULL, 0, 100000000, &c->reply));
	cr_assert_eq(keel_res(t), -ETIMEDOUT);
	/* Nobody serves it: -EPIPE, not the deadline's -ETIMEDOUT. */
	KEEL_AWAIT_CALL(&c->r,
			keel_node_ask(t, &c->call, c->node, "nobody", T_ECHO,
				      "x", 1, 60 * SEC, &c->reply));
	cr_assert_eq(keel_res(t), -EPIPE);
	keel_node_stats(c->node, &c->st);
	cr_assert_eq(c->st.ask_timeouts, 1);
	cr_assert_geq(c->st.ask_no_resp, 1);
	KEEL_ROUTINE_RETURN(&c->r, t, 0);
}

Test(nats, deadline_and_no_responders, .init = setup, .fini = teardown,
     .timeout = 60)
{
	serve_in_child(0, "svc", NULL);
	run_client(deadline_body, NULL);
}

/* ---- queue group ---- */

static int queue_body(struct keel_task *t)
{
	struct client *c = keel_container_of(t, struct client, task);
	int who;

	KEEL_BEGIN(&c->r);
	KEEL_AWAIT_CALL(&c->r, ask_ready(t, c, "qsvc", T_WHO));
	cr_assert_eq(keel_res(t), 0);
	keel_node_msg_free(c->reply);
	/* Both members subscribed: until then one may take every ask. */
	for (c->n = 0; c->n < 400 && !(c->seen[0] && c->seen[1]); c->n++) {
		KEEL_AWAIT_CALL(&c->r, keel_node_ask(t, &c->call, c->node,
						     "qsvc", T_WHO, NULL, 0,
						     5 * SEC, &c->reply));
		cr_assert_eq(keel_res(t), 0);
		memcpy(&who, c->reply->data, sizeof(who));
		keel_node_msg_free(c->reply);
		cr_assert(who == 0 || who == 1);
		c->seen[who]++;
		if (!(c->seen[0] && c->seen[1]))
			KEEL_AWAIT(&c->r, keel_sleep(t, 10000000));
	}
	c->seen[0] = c->seen[1] = 0;
	for (c->i = 0; c->i < 200; c->i++) {
		KEEL_AWAIT_CALL(&c->r, keel_node_ask(t, &c->call, c->node,
						     "qsvc", T_WHO, NULL, 0,
						     5 * SEC, &c->reply));
		cr_assert_eq(keel_res(t), 0);
		memcpy(&who, c->reply->data, sizeof(who));
		keel_node_msg_free(c->reply);
		c->seen[who]++;
	}
	cr_assert_gt(c->seen[0], 0, "member 0 got none of 200");
	cr_assert_gt(c->seen[1], 0, "member 1 got none of 200");
	KEEL_ROUTINE_RETURN(&c->r, t, 0);
}

Test(nats, queue_group_balances, .init = setup, .fini = teardown, .timeout = 60)
{
	serve_in_child(0, "qsvc", "workers");
	serve_in_child(1, "qsvc", "workers");
	run_client(queue_body, NULL);
}

/* ---- the server killed and restarted under tells ---- */

static enum keel_node_state states[16];
static int nstates;

static void on_state(struct keel_node *node, enum keel_node_state st, void *arg)
{
	(void)node;
	(void)arg;
	if (nstates < 16)
		states[nstates++] = st;
}

static int restart_body(struct keel_task *t)
{
	struct client *c = keel_container_of(t, struct client, task);
	char buf[1024];
	char metrics[8192];
	int r;

	KEEL_BEGIN(&c->r);
	KEEL_AWAIT_CALL(&c->r, ask_ready(t, c, "svc", T_ECHO));
	cr_assert_eq(keel_res(t), 0);
	keel_node_msg_free(c->reply);
	server_kill();
	/* Tell until the node notices; then until the buffer is full. */
	memset(buf, 'b', sizeof(buf));
	for (c->i = 0;
	     c->i < 1000 && keel_node_state(c->node) != KEEL_NODE_RECONNECTING;
	     c->i++) {
		keel_node_tell(c->node, "svc", T_COUNT, buf, sizeof(buf));
		KEEL_AWAIT(&c->r, keel_sleep(t, 10000000));
	}
	cr_assert_eq(keel_node_state(c->node), KEEL_NODE_RECONNECTING);
	keel_node_metrics_render(&c->node, 1, metrics, sizeof(metrics));
	cr_assert(strstr(metrics, "keel_node_state{node=\"client\","
				  "state=\"reconnecting\"} 1"),
		  "%s", metrics);
	for (c->n = 0; c->n < 10000; c->n++) {
		r = keel_node_tell(c->node, "svc", T_COUNT, buf, sizeof(buf));
		if (r == -ENOBUFS)
			break;
		cr_assert_eq(r, 0, "tell while away: %s", strerror(-r));
	}
	/* 64 KiB of buffer: about 60 tells of 1 KiB fit, no more. */
	cr_assert_lt(c->n, 100, "%d tells were kept", c->n);
	keel_node_stats(c->node, &c->st);
	cr_assert_gt(c->st.send_nobufs, 0);
	cr_assert_geq(c->st.disconnects, 1);
	/* An ask while away fails at once. */
	KEEL_AWAIT_CALL(&c->r,
			keel_node_ask(t, &c->call, c->node, "svc", T_ECHO, "x",
				      1, 60 * SEC, &c->reply));
	cr_assert_eq(keel_res(t), -EPIPE);

	server_start();
	for (c->i = 0;
	     c->i < 1000 && keel_node_state(c->node) != KEEL_NODE_CONNECTED;
	     c->i++)
		KEEL_AWAIT(&c->r, keel_sleep(t, 10000000));
	cr_assert_eq(keel_node_state(c->node), KEEL_NODE_CONNECTED);
	KEEL_AWAIT_CALL(&c->r, ask_ready(t, c, "svc", T_ECHO));
	cr_assert_eq(keel_res(t), 0, "after restart: %s",
		     strerror(-keel_res(t)));
	keel_node_msg_free(c->reply);
	keel_node_stats(c->node, &c->st);
	cr_assert_geq(c->st.reconnects, 1);
	keel_node_metrics_render(&c->node, 1, metrics, sizeof(metrics));
	cr_assert(strstr(metrics, "keel_node_reconnects_total{node=\"client\"}"
				  " 1"),
		  "%s", metrics);
	KEEL_ROUTINE_RETURN(&c->r, t, 0);
}

/* The KEEL_EV_MARK events of a trace file, "name=arg" each, in order
 * (at most `max`; the strings they name come before them in the file). */
static int trace_marks(const char *path, char marks[][96], int max)
{
	FILE *f = fopen(path, "rb");
	char hdr[32], *strings[4096] = {0};
	uint32_t rec[4];
	int n = 0;

	cr_assert_not_null(f);
	cr_assert_eq(fread(hdr, 1, sizeof(hdr), f), sizeof(hdr));
	cr_assert_eq(memcmp(hdr, KEEL_TRACE_MAGIC, 8), 0);
	while (fread(rec, sizeof(rec), 1, f) == 1) {
		if (rec[0] == KEEL_TRACE_REC_STRING) {
			size_t padded = (rec[2] + 7u) & ~7u;
			char *text = calloc(1, padded + 1);

			cr_assert_not_null(text);
			cr_assert_eq(fread(text, 1, padded, f), padded);
			if (rec[3] < 4096)
				strings[rec[3]] = text;
			else
				free(text);
			continue;
		}
		for (uint32_t i = 0;
		     rec[0] == KEEL_TRACE_REC_EVENTS && i < rec[2]; i++) {
			struct keel_trace_event ev;

			cr_assert_eq(fread(&ev, sizeof(ev), 1, f), 1);
			if (ev.type == KEEL_EV_MARK && n < max)
				snprintf(
				    marks[n++], sizeof(marks[0]), "%s=%lld",
				    ev.a < 4096 && strings[ev.a] ? strings[ev.a]
								 : "?",
				    (long long)ev.b);
		}
	}
	fclose(f);
	for (int i = 0; i < 4096; i++)
		free(strings[i]);
	return n;
}

Test(nats, server_restart_reconnects_bounded, .init = setup, .fini = teardown,
     .timeout = 90)
{
	struct keel_node_opts o = {.name = "client",
				   .reconnect_min_ns = 20000000,
				   .reconnect_max_ns = 100000000,
				   .reconnect_buf = 64 * 1024,
				   .on_state = on_state};
	char dir[256], path[300], marks[16][96];
	int n;

	serve_in_child(0, "svc", NULL);
	/* Traced from here: the serving child must not inherit it. */
	kt_tmpdir_make(dir, sizeof(dir));
	snprintf(path, sizeof(path), "%s/nats.trace", dir);
	cr_assert_eq(keel_trace_start(path), 0);
	run_client(restart_body, &o);
	keel_trace_stop();
	cr_assert_geq(nstates, 3);
	cr_assert_eq(states[0], KEEL_NODE_CONNECTED);
	cr_assert_eq(states[1], KEEL_NODE_RECONNECTING);
	cr_assert_eq(states[2], KEEL_NODE_CONNECTED);
	cr_assert_eq(states[nstates - 1], KEEL_NODE_CLOSED);
	/* Each change of state is a mark in the trace, as on_state saw it. */
	n = trace_marks(path, marks, 16);
	cr_assert_eq(n, nstates, "%d marks for %d states", n, nstates);
	cr_assert_str_eq(marks[0], "keel_node client: connected=1");
	cr_assert_str_eq(marks[1], "keel_node client: reconnecting=2");
	cr_assert_str_eq(marks[2], "keel_node client: connected=1");
	cr_assert_str_eq(marks[n - 1], "keel_node client: closed=3");
	kt_tmpdir_remove(dir);
}

/* ---- slow consumer, full served mailbox ---- */

static int slow_body(struct keel_task *t)
{
	struct client *c = keel_container_of(t, struct client, task);
	static struct keel_mailbox *mb;
	struct keel_mailbox_opts mo = {.capacity = 16,
				       .policy = KEEL_MB_DROP_NEWEST,
				       .on_drop = keel_node_msg_drop};
	char buf[64];

	KEEL_BEGIN(&c->r);
	/* The node serves a mailbox nobody reads, with room for 8 messages
	 * in cnats: a burst of tells from the child overflows both. */
	cr_assert_eq(keel_mailbox_new(keel_task_loop(t), &mo, &mb), 0);
	cr_assert_eq(keel_node_serve(c->node, "slow", NULL, mb), 0);
	keel_mailbox_release(mb);
	KEEL_AWAIT_CALL(&c->r, ask_ready(t, c, "svc", T_ECHO));
	cr_assert_eq(keel_res(t), 0);
	keel_node_msg_free(c->reply);
	memset(buf, 's', sizeof(buf));
	for (c->i = 0; c->i < 20000; c->i++) {
		cr_assert_eq(
		    keel_node_tell(c->node, "slow", 0, buf, sizeof(buf)), 0);
		if (c->i % 256 == 255)
			KEEL_AWAIT(&c->r, keel_yield(t));
	}
	for (c->i = 0; c->i < 500; c->i++) {
		keel_node_stats(c->node, &c->st);
		if (c->st.slow_consumer && c->st.dropped)
			break;
		KEEL_AWAIT(&c->r, keel_sleep(t, 10000000));
	}
	cr_assert_gt(c->st.slow_consumer, 0);
	cr_assert_gt(c->st.dropped, 0, "received %llu, slow consumer %llu",
		     (unsigned long long)c->st.received,
		     (unsigned long long)c->st.slow_consumer);
	cr_assert_leq(c->st.received, 16);
	KEEL_ROUTINE_RETURN(&c->r, t, 0);
}

Test(nats, slow_consumer_counted, .init = setup, .fini = teardown,
     .timeout = 60)
{
	struct keel_node_opts o = {.name = "client", .pending_msgs = 8};

	serve_in_child(0, "svc", NULL);
	run_client(slow_body, &o);
}

/* ---- remote supervision ---- */

#define HB_INTERVAL 20000000ull	 /* 20 ms */
#define HB_DEADLINE 300000000ull /* 300 ms */

static int watch_signal;
static uint64_t watch_deadline = HB_DEADLINE;

struct watcher {
	struct keel_task task;
	struct keel_node *node;
	struct keel_node_monitor mon;
	struct client *c;
};

static int watcher_step(struct keel_task *t)
{
	struct watcher *w = keel_container_of(t, struct watcher, task);

	KEEL_BEGIN(t);
	KEEL_AWAIT_CALL(t, keel_node_monitor(t, &w->mon, w->node, "svc",
					     HB_INTERVAL, watch_deadline));
	w->c->fired = keel_res(t);
	w->c->total = now_ns(); /* when it fired */
	KEEL_END(t);
}
static KEEL_TASK_TYPE(watcher_task, struct watcher, task, watcher_step);

static int monitor_body(struct keel_task *t)
{
	struct client *c = keel_container_of(t, struct client, task);
	struct watcher *w;

	KEEL_BEGIN(&c->r);
	KEEL_AWAIT_CALL(&c->r, ask_ready(t, c, "svc", T_ECHO));
	cr_assert_eq(keel_res(t), 0);
	keel_node_msg_free(c->reply);
	w = keel_spawn(keel_task_loop(t), &watcher_task, KEEL_PRIO_NORMAL);
	cr_assert_not_null(w);
	w->node = c->node;
	w->c = c;
	c->fired = 1; /* not fired */
	/* Healthy: 50 intervals, no exit. */
	for (c->i = 0; c->i < 50; c->i++)
		KEEL_AWAIT(&c->r, keel_sleep(t, HB_INTERVAL));
	cr_assert_eq(c->fired, 1, "the monitor fired (%d) on a healthy name",
		     c->fired);
	/* keel's own types are refused to senders. */
	cr_assert_eq(
	    keel_node_tell(c->node, "svc", KEEL_NODE_TYPE_RESERVED, NULL, 0),
	    -EINVAL);
	if (watch_signal)
		cr_assert_eq(kill(children[0], watch_signal), 0);
	else
		server_kill(); /* our own link goes: the deadline applies */
	c->t0 = now_ns();
	/* A bound to catch a monitor that never fires, not a timing. */
	for (c->i = 0; c->i < 1000 && c->fired == 1; c->i++)
		KEEL_AWAIT(&c->r, keel_sleep(t, 10000000));
	cr_assert_eq(c->fired, -EPIPE, "monitor: %d", c->fired);
	fprintf(stderr,
		"test_nats: monitor fired %.1f ms after %s (deadline %llu "
		"ms)\n",
		(double)(c->total - c->t0) / 1e6,
		watch_signal == SIGKILL	  ? "SIGKILL"
		: watch_signal == SIGSTOP ? "SIGSTOP"
					  : "losing the NATS server",
		HB_DEADLINE / 1000000);
	KEEL_ROUTINE_RETURN(&c->r, t, 0);
}

Test(nats, monitor_fires_when_server_process_killed, .init = setup,
     .fini = teardown, .timeout = 60)
{
	watch_signal = SIGKILL;
	serve_in_child(0, "svc", NULL);
	run_client(monitor_body, NULL);
}

Test(nats, monitor_fires_when_server_process_stopped, .init = setup,
     .fini = teardown, .timeout = 60)
{
	watch_signal = SIGSTOP;
	serve_in_child(0, "svc", NULL);
	run_client(monitor_body, NULL);
}

Test(nats, monitor_fires_when_own_link_lost, .init = setup, .fini = teardown,
     .timeout = 60)
{
	watch_signal = 0;
	serve_in_child(0, "svc", NULL);
	run_client(monitor_body, NULL);
}

/* The NATS server restarts within the deadline: both nodes reconnect,
 * in either order, and the monitor does not fire (a no-responders before
 * the serving node subscribed again is not trusted). */
static int restart_monitor_body(struct keel_task *t)
{
	struct client *c = keel_container_of(t, struct client, task);
	static struct watcher *w;

	KEEL_BEGIN(&c->r);
	KEEL_AWAIT_CALL(&c->r, ask_ready(t, c, "svc", T_ECHO));
	cr_assert_eq(keel_res(t), 0);
	keel_node_msg_free(c->reply);
	w = keel_spawn(keel_task_loop(t), &watcher_task, KEEL_PRIO_NORMAL);
	cr_assert_not_null(w);
	w->node = c->node;
	w->c = c;
	c->fired = 1; /* not fired */
	KEEL_AWAIT(&c->r, keel_sleep(t, 5 * HB_INTERVAL));
	server_kill();
	server_start();
	for (c->i = 0;
	     c->i < 1000 && keel_node_state(c->node) != KEEL_NODE_CONNECTED;
	     c->i++)
		KEEL_AWAIT(&c->r, keel_sleep(t, 10000000));
	KEEL_AWAIT_CALL(&c->r, ask_ready(t, c, "svc", T_ECHO));
	cr_assert_eq(keel_res(t), 0);
	keel_node_msg_free(c->reply);
	for (c->i = 0; c->i < 10; c->i++)
		KEEL_AWAIT(&c->r, keel_sleep(t, HB_INTERVAL));
	cr_assert_eq(c->fired, 1, "the monitor fired (%d) across a restart",
		     c->fired);
	/* Stop the watch before this frame goes. */
	cr_assert_eq(keel_task_cancel(&w->task), 0);
	for (c->i = 0; c->i < 1000 && c->fired == 1; c->i++)
		KEEL_AWAIT(&c->r, keel_sleep(t, 10000000));
	cr_assert_neq(c->fired, 1);
	KEEL_ROUTINE_RETURN(&c->r, t, 0);
}

Test(nats, monitor_quiet_across_server_restart, .init = setup, .fini = teardown,
     .timeout = 60)
{
	struct keel_node_opts o = {.name = "client",
				   .reconnect_min_ns = 20000000,
				   .reconnect_max_ns = 100000000};

	/* Long enough for any restart: not a timing, a bound. The serving
	 * node reconnects last (its first retry waits 1 s): asked in
	 * between, nobody serves the name. */
	watch_deadline = 20 * SEC;
	child_reconnect_ns = SEC;
	serve_in_child(0, "svc", NULL);
	run_client(restart_monitor_body, &o);
}

/* A supervisor's child "svc": its first incarnation monitors the remote
 * name; after that exit, the restart serves the name locally (the
 * stand-in answers T_WHO with 7). */
static int incarnations;

struct sup_watch {
	struct keel_task task;
	struct keel_node *node;
	struct keel_node_monitor mon;
};

static int sup_watch_step(struct keel_task *t)
{
	struct sup_watch *w = keel_container_of(t, struct sup_watch, task);

	KEEL_BEGIN(t);
	KEEL_AWAIT_CALL(t, keel_node_monitor(t, &w->mon, w->node, "svc",
					     HB_INTERVAL, HB_DEADLINE));
	KEEL_EXIT(t, keel_res(t));
	KEEL_END(t);
}
static KEEL_TASK_TYPE(sup_watch_task, struct sup_watch, task, sup_watch_step);

struct standin {
	struct keel_task task;
	struct keel_node *node;
	struct keel_mailbox *mb;
	void *msg;
};

static int standin_step(struct keel_task *t)
{
	struct standin *s = keel_container_of(t, struct standin, task);
	struct keel_mailbox_opts mo = {.capacity = 64,
				       .policy = KEEL_MB_DROP_NEWEST,
				       .on_drop = keel_node_msg_drop};
	struct keel_node_msg *m;
	int who = 7;

	KEEL_BEGIN(t);
	if (keel_mailbox_new(keel_task_loop(t), &mo, &s->mb))
		KEEL_EXIT(t, -ENOMEM);
	if (keel_node_serve(s->node, "svc", NULL, s->mb)) {
		keel_mailbox_release(s->mb);
		KEEL_EXIT(t, -EIO);
	}
	for (;;) {
		KEEL_AWAIT(t, keel_mb_recv(t, s->mb, &s->msg));
		if (keel_res(t))
			break; /* stopped by the supervisor */
		m = s->msg;
		if (m->type == T_WHO)
			keel_node_reply(s->node, m, T_WHO, &who, sizeof(who));
		keel_node_msg_free(m);
	}
	keel_node_unserve(s->node, "svc");
	keel_mb_close(s->mb);
	keel_mailbox_release(s->mb);
	KEEL_END(t);
}
static KEEL_TASK_TYPE(standin_task, struct standin, task, standin_step);

static int svc_start(struct keel_child_start *cs, void *arg)
{
	struct keel_node *node = arg;

	if (incarnations++ == 0) {
		struct sup_watch *w =
		    keel_child_spawn(cs, &sup_watch_task, KEEL_PRIO_NORMAL);

		if (!w)
			return -ENOMEM;
		w->node = node;
		return 0;
	}
	struct standin *s =
	    keel_child_spawn(cs, &standin_task, KEEL_PRIO_NORMAL);

	if (!s)
		return -ENOMEM;
	s->node = node;
	return 0;
}

static struct keel_sup *sup;

static int supervise_body(struct keel_task *t)
{
	struct client *c = keel_container_of(t, struct client, task);
	struct keel_child_spec child = {.name = "svc",
					.start = svc_start,
					.arg = c->node,
					.restart = KEEL_PERMANENT,
					.shutdown_ms = 1000};
	struct keel_sup_spec spec = {.name = "remote",
				     .strategy = KEEL_ONE_FOR_ONE,
				     .intensity = 3,
				     .period_ms = 5000,
				     .children = &child,
				     .nchildren = 1};
	struct keel_sup_stats st;
	int who = -1;

	KEEL_BEGIN(&c->r);
	KEEL_AWAIT_CALL(&c->r, ask_ready(t, c, "svc", T_WHO));
	cr_assert_eq(keel_res(t), 0);
	memcpy(&who, c->reply->data, sizeof(who));
	keel_node_msg_free(c->reply);
	cr_assert_eq(who, 0);
	cr_assert_eq(keel_sup_start(keel_task_loop(t), &spec, &sup), 0);
	for (c->i = 0; c->i < 25; c->i++)
		KEEL_AWAIT(&c->r, keel_sleep(t, HB_INTERVAL));
	keel_sup_stats(sup, &st);
	cr_assert_eq(st.restarts, 0, "restarted while the name was healthy");
	cr_assert_eq(incarnations, 1);
	cr_assert_eq(kill(children[0], SIGKILL), 0);
	waitpid(children[0], NULL, 0);
	children[0] = -1;
	/* The stand-in answers once the supervisor has restarted it. */
	for (c->i = 0; c->i < 500; c->i++) {
		KEEL_AWAIT_CALL(&c->r,
				keel_node_ask(t, &c->call, c->node, "svc",
					      T_WHO, NULL, 0, SEC, &c->reply));
		if (keel_res(t) == 0) {
			memcpy(&who, c->reply->data, sizeof(who));
			keel_node_msg_free(c->reply);
			if (who == 7)
				break;
		}
		KEEL_AWAIT(&c->r, keel_sleep(t, 10000000));
	}
	cr_assert_eq(who, 7, "the stand-in never answered");
	keel_sup_stats(sup, &st);
	cr_assert_eq(st.restarts, 1);
	cr_assert_eq(incarnations, 2);
	keel_sup_stop(sup);
	KEEL_AWAIT(&c->r, keel_sup_wait(t, sup));
	cr_assert_eq(keel_res(t), 0);
	keel_sup_release(sup);
	KEEL_ROUTINE_RETURN(&c->r, t, 0);
}

Test(nats, supervisor_restarts_local_standin, .init = setup, .fini = teardown,
     .timeout = 60)
{
	serve_in_child(0, "svc", NULL);
	run_client(supervise_body, NULL);
}

/* ---- asks that end early, late replies, asks side by side ---- */

/* What an asker saw; outside its frame, which goes when it exits. */
struct asked {
	int res; /* 1 while it waits */
	char got[8];
};

struct asker {
	struct keel_task task;
	struct keel_node *node;
	struct keel_node_call call;
	struct keel_node_msg *reply;
	const char *name;
	uint16_t type;
	struct asked *out;
};

static int asker_step(struct keel_task *t)
{
	struct asker *a = keel_container_of(t, struct asker, task);

	KEEL_BEGIN(t);
	KEEL_AWAIT_CALL(t, keel_node_ask(t, &a->call, a->node, a->name, a->type,
					 "late", 4, 5 * SEC, &a->reply));
	a->out->res = keel_res(t);
	if (!a->out->res) {
		memcpy(a->out->got, a->reply->data,
		       a->reply->len < sizeof(a->out->got)
			   ? a->reply->len
			   : sizeof(a->out->got) - 1);
		keel_node_msg_free(a->reply);
	}
	KEEL_END(t);
}
static KEEL_TASK_TYPE(asker_task, struct asker, task, asker_step);

static struct asker *asker_spawn(struct keel_task *t, struct client *c,
				 const char *name, uint16_t type,
				 struct asked *out)
{
	struct asker *a =
	    keel_spawn(keel_task_loop(t), &asker_task, KEEL_PRIO_NORMAL);

	cr_assert_not_null(a);
	a->node = c->node;
	a->name = name;
	a->type = type;
	a->out = out;
	memset(out, 0, sizeof(*out));
	out->res = 1;
	return a;
}

/* A task killed while its ask waits, one cancelled, one whose deadline
 * passes before the reply comes: the node goes on (the sanitizer build
 * checks for a use after free), the late reply is dropped, and the next
 * ask gets its own reply, not that one. (The killed task's reference on
 * its reply slot used to stay; LSan did not report that leak when tried,
 * probably because the killed frame's memory, still holding the pointer,
 * stays with keel's frame allocator.) */
static int ended_body(struct keel_task *t)
{
	struct client *c = keel_container_of(t, struct client, task);
	static struct asker *a[2];
	static struct asked out[2];

	KEEL_BEGIN(&c->r);
	KEEL_AWAIT_CALL(&c->r, ask_ready(t, c, "svc", T_ECHO));
	cr_assert_eq(keel_res(t), 0);
	keel_node_msg_free(c->reply);
	a[0] = asker_spawn(t, c, "svc", T_SILENT, &out[0]);
	a[1] = asker_spawn(t, c, "svc", T_SILENT, &out[1]);
	KEEL_AWAIT(&c->r, keel_sleep(t, 50000000));
	cr_assert_eq(out[0].res, 1);
	cr_assert_eq(out[1].res, 1);
	cr_assert_eq(keel_task_kill(&a[0]->task), 0);
	cr_assert_eq(keel_task_cancel(&a[1]->task), 0);
	for (c->n = 0; c->n < 1000 && out[1].res == 1; c->n++)
		KEEL_AWAIT(&c->r, keel_sleep(t, 1000000));
	cr_assert_eq(out[0].res, 1, "a killed task ran on");
	cr_assert_eq(out[1].res, -ECANCELED);

	KEEL_AWAIT_CALL(&c->r,
			keel_node_ask(t, &c->call, c->node, "svc", T_LATE,
				      "late", 4, 50000000, &c->reply));
	cr_assert_eq(keel_res(t), -ETIMEDOUT);
	KEEL_AWAIT_CALL(&c->r,
			keel_node_ask(t, &c->call, c->node, "svc", T_ECHO,
				      "mine", 4, 5 * SEC, &c->reply));
	cr_assert_eq(keel_res(t), 0);
	cr_assert_eq(c->reply->type, T_ECHO);
	cr_assert_eq(c->reply->len, 4);
	cr_assert_eq(memcmp(c->reply->data, "mine", 4), 0);
	keel_node_msg_free(c->reply);
	KEEL_ROUTINE_RETURN(&c->r, t, 0);
}

Test(nats, ask_killed_cancelled_or_late_leaves_nothing, .init = setup,
     .fini = teardown, .timeout = 60)
{
	serve_in_child(0, "svc", NULL);
	run_client(ended_body, NULL);
}

/* Asks side by side, one to a name nobody serves: its no-responders
 * status (which names no ask) goes to it, not to the ask still waiting
 * for its late reply, in either order of publishing. */
static int side_by_side_body(struct keel_task *t)
{
	struct client *c = keel_container_of(t, struct client, task);
	static struct asked late, nobody;

	KEEL_BEGIN(&c->r);
	KEEL_AWAIT_CALL(&c->r, ask_ready(t, c, "svc", T_ECHO));
	cr_assert_eq(keel_res(t), 0);
	keel_node_msg_free(c->reply);
	keel_node_stats(c->node, &c->st);
	c->total = c->st.ask_no_resp;
	for (c->i = 0; c->i < 2; c->i++) {
		if (c->i == 0) {
			asker_spawn(t, c, "svc", T_LATE, &late);
			asker_spawn(t, c, "nobody", T_ECHO, &nobody);
		} else {
			asker_spawn(t, c, "nobody", T_ECHO, &nobody);
			asker_spawn(t, c, "svc", T_LATE, &late);
		}
		/* A bound to catch an ask that never ends, not a timing. */
		for (c->n = 0;
		     c->n < 1000 && (late.res == 1 || nobody.res == 1); c->n++)
			KEEL_AWAIT(&c->r, keel_sleep(t, 10000000));
		cr_assert_eq(nobody.res, -EPIPE, "round %d: nobody: %d", c->i,
			     nobody.res);
		cr_assert_eq(late.res, 0, "round %d: late: %d", c->i, late.res);
		cr_assert_str_eq(late.got, "late");
	}
	keel_node_stats(c->node, &c->st);
	cr_assert_eq(c->st.ask_no_resp, c->total + 2);
	KEEL_ROUTINE_RETURN(&c->r, t, 0);
}

Test(nats, side_by_side_asks_no_responders_placed, .init = setup,
     .fini = teardown, .timeout = 60)
{
	serve_in_child(0, "svc", NULL);
	run_client(side_by_side_body, NULL);
}

/* ---- heartbeats of a name whose mailbox closed ---- */

/* The node serves a mailbox (its actor's) that closes before any message
 * reached it: heartbeats go unanswered from then on, so a monitor of the
 * name fires at its deadline. (They used to be answered until a message
 * found the mailbox closed, which here never comes.) */
static int closed_mailbox_body(struct keel_task *t)
{
	struct client *c = keel_container_of(t, struct client, task);
	struct keel_mailbox_opts mo = {.capacity = 4,
				       .policy = KEEL_MB_DROP_NEWEST,
				       .on_drop = keel_node_msg_drop};
	static struct keel_mailbox *mb;
	struct watcher *w;

	KEEL_BEGIN(&c->r);
	cr_assert_eq(keel_mailbox_new(keel_task_loop(t), &mo, &mb), 0);
	cr_assert_eq(keel_node_serve(c->node, "svc", NULL, mb), 0);
	w = keel_spawn(keel_task_loop(t), &watcher_task, KEEL_PRIO_NORMAL);
	cr_assert_not_null(w);
	w->node = c->node;
	w->c = c;
	c->fired = 1; /* not fired */
	for (c->i = 0; c->i < 25; c->i++)
		KEEL_AWAIT(&c->r, keel_sleep(t, HB_INTERVAL));
	cr_assert_eq(c->fired, 1, "the monitor fired (%d) on an open mailbox",
		     c->fired);
	keel_mb_close(mb); /* the actor died */
	/* A bound to catch a monitor that never fires, not a timing. */
	for (c->i = 0; c->i < 1000 && c->fired == 1; c->i++)
		KEEL_AWAIT(&c->r, keel_sleep(t, 10000000));
	cr_assert_eq(c->fired, -EPIPE, "monitor: %d", c->fired);
	keel_mailbox_release(mb);
	KEEL_ROUTINE_RETURN(&c->r, t, 0);
}

Test(nats, heartbeats_unanswered_once_mailbox_closed, .init = setup,
     .fini = teardown, .timeout = 60)
{
	run_client(closed_mailbox_body, NULL);
}

/* ---- the node's name in the metrics ---- */

Test(nats, metrics_escape_the_node_name, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_node_opts o = {.url = "nats://127.0.0.1:1",
				   .name = "a\"b\\c\nd"};
	struct keel_node *node;
	char buf[8192];

	cr_assert_eq(keel_node_new(loop, &o, &node), 0);
	keel_node_metrics_render(&node, 1, buf, sizeof(buf));
	cr_assert(strstr(buf, "keel_node_state{node=\"a\\\"b\\\\c\\nd\","
			      "state=\"idle\"} 1\n"),
		  "%s", buf);
	cr_assert(strstr(buf, "keel_node_asks_total{node=\"a\\\"b\\\\c\\nd\"} "
			      "0\n"),
		  "%s", buf);
	keel_node_free(node);
	kt_loop_run(loop);
	keel_loop_destroy(loop);
}
