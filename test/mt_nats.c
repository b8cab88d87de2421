/* SPDX-License-Identifier: MIT */
/*
 * mt_nats.c: libkeel-nats where threads meet, for ThreadSanitizer (the
 * Criterion file is test_nats.c). One loop on the main thread runs a node
 * against a loopback nats-server this program starts: connect and close
 * run on the blocking pool; cnats's reconnect thread, callback thread and
 * timer thread wake the loop through the node's control mailbox while the
 * loop asks and tells, and the server is killed and restarted meanwhile.
 * Skipped (saying so, as passed) where nats-server is not installed.
 */
#include <errno.h>
#include <keel.h>
#include <keel/node.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helpers/check.h"
#include "helpers/nats_server.h"
#include "helpers/scenario.h"

#define SEC 1000000000ull

static char g_url[64];
static char g_port[16];
static pid_t g_server = -1;

static void server_start(void)
{
	g_server = nats_server_start((uint16_t)atoi(g_port));
	CHECK(g_server > 0);
}

static void server_kill(void)
{
	nats_server_kill(g_server);
	g_server = -1;
}

struct echo {
	struct keel_task task;
	struct keel_node *node;
	struct keel_mailbox *mb;
	void *msg;
};

static int echo_step(struct keel_task *t)
{
	struct echo *e = keel_container_of(t, struct echo, task);
	struct keel_node_msg *m;

	KEEL_BEGIN(t);
	for (;;) {
		KEEL_AWAIT(t, keel_mb_recv(t, e->mb, &e->msg));
		if (keel_res(t))
			break;
		m = e->msg;
		if (m->request_id)
			keel_node_reply(e->node, m, 1, m->data, m->len);
		keel_node_msg_free(m);
	}
	KEEL_END(t);
}
static KEEL_TASK_TYPE(echo_task, struct echo, task, echo_step);

struct client {
	struct keel_task task;
	struct keel_node *node;
	struct keel_mailbox *mb;
	struct keel_node_call call;
	struct keel_node_msg *reply;
	int i, ok;
};

static int client_step(struct keel_task *t)
{
	struct client *c = keel_container_of(t, struct client, task);
	struct echo *e;

	KEEL_BEGIN(t);
	KEEL_AWAIT(t, keel_node_connect(t, c->node));
	CHECK_EQ(keel_res(t), 0);
	CHECK_EQ(keel_node_serve(c->node, "echo", NULL, c->mb), 0);
	e = keel_spawn(keel_task_loop(t), &echo_task, KEEL_PRIO_NORMAL);
	CHECK(e != NULL);
	e->node = c->node;
	e->mb = c->mb;
	for (c->i = 0; c->i < 200; c->i++) {
		KEEL_AWAIT_CALL(t,
				keel_node_ask(t, &c->call, c->node, "echo", 1,
					      "x", 1, 5 * SEC, &c->reply));
		if (keel_res(t) == 0) {
			c->ok++;
			keel_node_msg_free(c->reply);
		}
		keel_node_tell(c->node, "echo", 2, "y", 1);
	}
	CHECK(c->ok > 0);
	server_kill();
	for (c->i = 0;
	     c->i < 1000 && keel_node_state(c->node) != KEEL_NODE_RECONNECTING;
	     c->i++)
		KEEL_AWAIT(t, keel_sleep(t, 10000000));
	CHECK_EQ(keel_node_state(c->node), KEEL_NODE_RECONNECTING);
	server_start();
	for (c->i = 0;
	     c->i < 1000 && keel_node_state(c->node) != KEEL_NODE_CONNECTED;
	     c->i++)
		KEEL_AWAIT(t, keel_sleep(t, 10000000));
	CHECK_EQ(keel_node_state(c->node), KEEL_NODE_CONNECTED);
	for (c->i = 0, c->ok = 0; c->i < 500 && !c->ok; c->i++) {
		KEEL_AWAIT_CALL(t, keel_node_ask(t, &c->call, c->node, "echo",
						 1, "x", 1, SEC, &c->reply));
		if (keel_res(t) == 0) {
			c->ok = 1;
			keel_node_msg_free(c->reply);
		} else {
			KEEL_AWAIT(t, keel_sleep(t, 10000000));
		}
	}
	CHECK(c->ok);
	keel_mb_close(c->mb);
	KEEL_AWAIT(t, keel_node_close(t, c->node));
	CHECK_EQ(keel_node_state(c->node), KEEL_NODE_CLOSED);
	keel_node_free(c->node);
	keel_mailbox_release(c->mb);
	KEEL_END(t);
}
static KEEL_TASK_TYPE(client_task, struct client, task, client_step);

static void reconnect_under_asks(void)
{
	struct keel_loop *loop;
	struct keel_node_opts o = {.url = g_url,
				   .name = "mt",
				   .reconnect_min_ns = 20000000,
				   .reconnect_max_ns = 100000000};
	struct keel_mailbox_opts mo = {.capacity = 1024,
				       .policy = KEEL_MB_DROP_NEWEST,
				       .on_drop = keel_node_msg_drop};
	struct client *c;

	server_start();
	CHECK_EQ(keel_loop_create(&loop, NULL), 0);
	c = keel_spawn(loop, &client_task, KEEL_PRIO_NORMAL);
	CHECK(c != NULL);
	CHECK_EQ(keel_node_new(loop, &o, &c->node), 0);
	CHECK_EQ(keel_mailbox_new(loop, &mo, &c->mb), 0);
	CHECK_EQ(keel_loop_run(loop), 0);
	keel_loop_destroy(loop);
	server_kill();
}

int main(void)
{
	struct sockaddr_in a = {.sin_family = AF_INET,
				.sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t al = sizeof(a);
	int fd;

	kt_scenarios_start("mt_nats");
	if (system("command -v nats-server >/dev/null 2>&1") != 0) {
		fprintf(stderr,
			"mt_nats: skipped: nats-server is not installed "
			"(make deps)\n");
		return kt_scenarios_finish();
	}
	fd = socket(AF_INET, SOCK_STREAM, 0);
	CHECK(fd >= 0 && !bind(fd, (struct sockaddr *)&a, sizeof(a)) &&
	      !getsockname(fd, (struct sockaddr *)&a, &al));
	close(fd);
	snprintf(g_port, sizeof(g_port), "%u", ntohs(a.sin_port));
	snprintf(g_url, sizeof(g_url), "nats://127.0.0.1:%s", g_port);
	kt_scenario_run("asks and tells across a server restart",
			reconnect_under_asks);
	return kt_scenarios_finish();
}
