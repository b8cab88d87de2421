/* SPDX-License-Identifier: MIT */
/*
 * keel-natsbench: issue 18's benchmark, remote asks and tells over one
 * loopback nats-server, keel's node against the floor: plain cnats
 * (natsConnection_Request, natsConnection_Publish and an async
 * subscription, cnats's own threads) between two processes.
 *
 *   keel-natsbench keel-serve URL     serve "kb" with a keel node: echo
 *                                     asks, count tells, answer the total
 *   keel-natsbench keel-ask URL N     N asks of 4 bytes, one at a time
 *   keel-natsbench keel-tell URL N    N tells of 4 bytes, then ask the
 *                                     total until every one arrived
 *   keel-natsbench cnats-serve URL    the same three with plain cnats
 *   keel-natsbench cnats-ask URL N    (subjects "fb.ask", "fb.tell",
 *   keel-natsbench cnats-tell URL N   "fb.total")
 *
 * The asking modes print one line, read by tools/bench/report.py nats:
 *   RESULT side=keel what=ask n=N p50_us=.. p99_us=.. mean_us=..
 *   RESULT side=keel what=tell n=N delivered=D per_s=..
 * and cpu_us_per_ask, the asking process's CPU time (all threads, user
 * and system) per ask. A serving mode runs until killed. (Not under
 * valgrind: the keel side hangs there before its first ask, not
 * investigated.)
 */
#include <errno.h>
#include <inttypes.h>
#include <keel.h>
#include <keel/node.h>
#include <nats/nats.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#define T_ECHO	1 /* ask: the reply is the payload */
#define T_COUNT 2 /* tell: counted */
#define T_TOTAL 3 /* ask: the reply is the count so far */

#define SEC	 1000000000ull
#define NAME	 "kb"
#define TELL_GAP 256 /* tells between two yields: the driver flushes */

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * SEC + (uint64_t)ts.tv_nsec;
}

/* CPU time of this process (all its threads), ns. */
static uint64_t cpu_ns(void)
{
	struct rusage ru;

	getrusage(RUSAGE_SELF, &ru);
	return ((uint64_t)ru.ru_utime.tv_sec + (uint64_t)ru.ru_stime.tv_sec) *
		   SEC +
	       ((uint64_t)ru.ru_utime.tv_usec + (uint64_t)ru.ru_stime.tv_usec) *
		   1000;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/* Print the ask line from `n` round trips in ns (sorted here) and the
 * asking process's CPU time over them. */
static void report_asks(const char *side, uint64_t *rtt, long n, uint64_t cpu)
{
	double sum = 0;

	qsort(rtt, (size_t)n, sizeof(*rtt), cmp_u64);
	for (long i = 0; i < n; i++)
		sum += (double)rtt[i];
	printf("RESULT side=%s what=ask n=%ld p50_us=%.1f p99_us=%.1f "
	       "mean_us=%.1f cpu_us_per_ask=%.2f\n",
	       side, n, rtt[n / 2] / 1e3, rtt[n * 99 / 100] / 1e3,
	       sum / (double)n / 1e3, (double)cpu / (double)n / 1e3);
}

static void report_tells(const char *side, long n, uint64_t delivered,
			 uint64_t ns)
{
	printf("RESULT side=%s what=tell n=%ld delivered=%" PRIu64
	       " per_s=%.0f\n",
	       side, n, delivered, (double)delivered / ((double)ns / SEC));
}

/* ---- keel ---- */

struct kserver {
	struct keel_task task;
	struct keel_node *node;
	struct keel_mailbox *mb;
	uint64_t count;
	void *msg;
};

static int kserver_step(struct keel_task *t)
{
	struct kserver *s = keel_container_of(t, struct kserver, task);
	struct keel_node_msg *m;

	KEEL_BEGIN(t);
	KEEL_AWAIT(t, keel_node_connect(t, s->node));
	if (keel_res(t) || keel_node_serve(s->node, NAME, NULL, s->mb)) {
		fprintf(stderr, "keel-serve: cannot serve %s\n", NAME);
		exit(1);
	}
	for (;;) {
		KEEL_AWAIT(t, keel_mb_recv(t, s->mb, &s->msg));
		if (keel_res(t))
			break;
		m = s->msg;
		if (m->type == T_ECHO)
			keel_node_reply(s->node, m, T_ECHO, m->data, m->len);
		else if (m->type == T_COUNT)
			s->count++;
		else if (m->type == T_TOTAL)
			keel_node_reply(s->node, m, T_TOTAL, &s->count,
					sizeof(s->count));
		keel_node_msg_free(m);
	}
	KEEL_END(t);
}
static KEEL_TASK_TYPE(kserver_task, struct kserver, task, kserver_step);

struct kclient {
	struct keel_task task;
	struct keel_node *node;
	struct keel_node_call call;
	struct keel_node_msg *reply;
	bool tell;
	int err;
	long i, n;
	uint64_t t0, cpu0, total, got, *rtt;
};

static int kclient_step(struct keel_task *t)
{
	struct kclient *c = keel_container_of(t, struct kclient, task);

	KEEL_BEGIN(t);
	KEEL_AWAIT(t, keel_node_connect(t, c->node));
	if (keel_res(t)) {
		fprintf(stderr, "keel: connect: %s\n", strerror(-keel_res(t)));
		exit(1);
	}
	/* Until the server answers (it may not have subscribed yet). */
	for (c->i = 0; c->i < 500; c->i++) {
		KEEL_AWAIT_CALL(t, keel_node_ask(t, &c->call, c->node, NAME,
						 T_TOTAL, NULL, 0, SEC,
						 &c->reply));
		if ((c->err = keel_res(t)) == 0)
			break;
		KEEL_AWAIT(t, keel_sleep(t, 20000000));
	}
	if (c->err) {
		fprintf(stderr, "keel: nobody serves %s\n", NAME);
		exit(1);
	}
	memcpy(&c->total, c->reply->data, sizeof(c->total));
	keel_node_msg_free(c->reply);
	c->t0 = now_ns();
	c->cpu0 = cpu_ns();
	for (c->i = 0; c->i < c->n && !c->tell; c->i++) {
		c->rtt[c->i] = now_ns();
		KEEL_AWAIT_CALL(t, keel_node_ask(t, &c->call, c->node, NAME,
						 T_ECHO, "ping", 4, 5 * SEC,
						 &c->reply));
		if (keel_res(t)) {
			fprintf(stderr, "keel: ask: %s\n",
				strerror(-keel_res(t)));
			exit(1);
		}
		c->rtt[c->i] = now_ns() - c->rtt[c->i];
		keel_node_msg_free(c->reply);
	}
	for (c->i = 0; c->i < c->n && c->tell; c->i++) {
		if (keel_node_tell(c->node, NAME, T_COUNT, "tell", 4)) {
			fprintf(stderr, "keel: tell failed\n");
			exit(1);
		}
		if (c->i % TELL_GAP == TELL_GAP - 1)
			KEEL_AWAIT(t, keel_yield(t));
	}
	if (c->tell) {
		/* The total counts earlier runs' tells too: wait for ours. */
		c->total += (uint64_t)c->n;
		for (c->i = 0; c->i < 5000; c->i++) {
			KEEL_AWAIT_CALL(t, keel_node_ask(t, &c->call, c->node,
							 NAME, T_TOTAL, NULL, 0,
							 5 * SEC, &c->reply));
			if (keel_res(t))
				break;
			memcpy(&c->got, c->reply->data, sizeof(c->got));
			keel_node_msg_free(c->reply);
			if (c->got >= c->total)
				break;
			KEEL_AWAIT(t, keel_sleep(t, 1000000));
		}
		report_tells("keel", c->n, c->got - (c->total - c->n),
			     now_ns() - c->t0);
	} else {
		report_asks("keel", c->rtt, c->n, cpu_ns() - c->cpu0);
	}
	KEEL_AWAIT(t, keel_node_close(t, c->node));
	keel_node_free(c->node);
	KEEL_END(t);
}
static KEEL_TASK_TYPE(kclient_task, struct kclient, task, kclient_step);

static int run_keel(const char *mode, const char *url, long n)
{
	struct keel_node_opts o = {.url = url, .name = "natsbench"};
	struct keel_mailbox_opts mo = {.capacity = 65536,
				       .policy = KEEL_MB_DROP_NEWEST,
				       .on_drop = keel_node_msg_drop};
	struct keel_loop *loop;
	struct keel_node *node;

	if (keel_loop_create(&loop, NULL) || keel_node_new(loop, &o, &node))
		return 1;
	if (!strcmp(mode, "keel-serve")) {
		struct kserver *s =
		    keel_spawn(loop, &kserver_task, KEEL_PRIO_NORMAL);

		if (!s || keel_mailbox_new(loop, &mo, &s->mb))
			return 1;
		s->node = node;
	} else {
		struct kclient *c =
		    keel_spawn(loop, &kclient_task, KEEL_PRIO_NORMAL);

		if (!c || !(c->rtt = calloc((size_t)n, sizeof(*c->rtt))))
			return 1;
		c->node = node;
		c->n = n;
		c->tell = !strcmp(mode, "keel-tell");
	}
	keel_loop_run(loop);
	keel_loop_destroy(loop);
	return 0;
}

/* ---- plain cnats: the floor ---- */

static _Atomic uint64_t floor_count;

static void on_floor_msg(natsConnection *nc, natsSubscription *sub, natsMsg *m,
			 void *arg)
{
	const char *subj = natsMsg_GetSubject(m);
	uint64_t total;

	(void)sub;
	(void)arg;
	if (!strcmp(subj, "fb.tell")) {
		floor_count++;
	} else if (!strcmp(subj, "fb.ask")) {
		natsConnection_Publish(nc, natsMsg_GetReply(m),
				       natsMsg_GetData(m),
				       natsMsg_GetDataLength(m));
	} else {
		total = floor_count;
		natsConnection_Publish(nc, natsMsg_GetReply(m), &total,
				       sizeof(total));
	}
	natsMsg_Destroy(m);
}

static uint64_t floor_total(natsConnection *nc)
{
	natsMsg *m = NULL;
	uint64_t total = 0;

	if (natsConnection_Request(&m, nc, "fb.total", NULL, 0, 5000) !=
	    NATS_OK)
		return UINT64_MAX;
	if (natsMsg_GetDataLength(m) == sizeof(total))
		memcpy(&total, natsMsg_GetData(m), sizeof(total));
	natsMsg_Destroy(m);
	return total;
}

static int run_cnats(const char *mode, const char *url, long n)
{
	natsConnection *nc = NULL;
	natsSubscription *sub = NULL;
	natsOptions *opts = NULL;
	uint64_t base = UINT64_MAX, got = 0, t0, cpu0, *rtt;
	natsMsg *m;

	/* cnats at its best for each figure: for round trips each publish
	 * is written at once (SetSendAsap, as keel's node does; the default
	 * flusher thread batches, adding about a millisecond to a round
	 * trip), for tells the flusher's batches (a write per publish would
	 * cost it 5x the throughput). */
	if (natsOptions_Create(&opts) != NATS_OK ||
	    natsOptions_SetURL(opts, url) != NATS_OK ||
	    natsOptions_SetSendAsap(opts, strcmp(mode, "cnats-tell")) !=
		NATS_OK ||
	    natsConnection_Connect(&nc, opts) != NATS_OK)
		return 1;
	if (!strcmp(mode, "cnats-serve")) {
		if (natsConnection_Subscribe(&sub, nc, "fb.*", on_floor_msg,
					     NULL) != NATS_OK)
			return 1;
		natsSubscription_SetPendingLimits(sub, 65536, 64 << 20);
		for (;;)
			pause();
	}
	for (int i = 0; i < 500 && base == UINT64_MAX; i++)
		if ((base = floor_total(nc)) == UINT64_MAX)
			usleep(20000);
	rtt = calloc((size_t)n, sizeof(*rtt));
	if (base == UINT64_MAX || !rtt)
		return 1;
	t0 = now_ns();
	cpu0 = cpu_ns();
	if (!strcmp(mode, "cnats-ask")) {
		for (long i = 0; i < n; i++) {
			rtt[i] = now_ns();
			if (natsConnection_Request(&m, nc, "fb.ask", "ping", 4,
						   5000) != NATS_OK)
				return 1;
			rtt[i] = now_ns() - rtt[i];
			natsMsg_Destroy(m);
		}
		report_asks("floor", rtt, n, cpu_ns() - cpu0);
	} else {
		for (long i = 0; i < n; i++)
			if (natsConnection_Publish(nc, "fb.tell", "tell", 4) !=
			    NATS_OK)
				return 1;
		for (int i = 0; i < 5000; i++) {
			got = floor_total(nc);
			if (got == UINT64_MAX || got >= base + (uint64_t)n)
				break;
			usleep(1000);
		}
		report_tells("floor", n, got - base, now_ns() - t0);
	}
	natsConnection_Destroy(nc);
	natsOptions_Destroy(opts);
	nats_Close();
	free(rtt);
	return 0;
}

int main(int argc, char **argv)
{
	long n = argc > 3 ? atol(argv[3]) : 0;

	if (argc < 3 || (strstr(argv[1], "-serve") == NULL && n <= 0)) {
		fprintf(stderr, "usage: keel-natsbench "
				"{keel,cnats}-{serve,ask,tell} URL [N]\n");
		return 2;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (!strncmp(argv[1], "keel-", 5))
		return run_keel(argv[1], argv[2], n);
	if (!strncmp(argv[1], "cnats-", 6))
		return run_cnats(argv[1], argv[2], n);
	fprintf(stderr, "keel-natsbench: unknown mode %s\n", argv[1]);
	return 2;
}
