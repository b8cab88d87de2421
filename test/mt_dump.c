/* SPDX-License-Identifier: MIT */
/*
 * mt_dump.c: task dumps of two loops on two threads, written at the same
 * time to one pipe (what SIGUSR1 does to stderr in a runtime). Each dump is
 * larger than a stdio buffer and than the pipe, so the writers block in the
 * middle of it; the reader must still find every dump whole: a header, then
 * exactly its loop's task lines, never a line of the other loop's dump (or
 * half of one) in between. A plain program (no Criterion), so that it runs
 * under ThreadSanitizer too.
 */
#include <fcntl.h>
#include <keel.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "helpers/scenario.h"

#define TASKS  300 /* about 12 KiB of dump per loop */
#define ROUNDS 40

struct idle {
	struct keel_task task;
};

static int idle_step(struct keel_task *t)
{
	KEEL_BEGIN(t);
	KEEL_END(t);
}

/* Two types, so that a line says which loop's dump it is from. */
static KEEL_TASK_TYPE(alpha_task, struct idle, task, idle_step);
static KEEL_TASK_TYPE(beta_task, struct idle, task, idle_step);

static int g_wfd;
static pthread_barrier_t g_start;

static void *dumper_main(void *arg)
{
	const struct keel_task_type *type = arg;
	struct keel_loop *loop;

	CHECK(keel_loop_create(&loop, NULL) == 0);
	keel_loop_set_stall(loop, 0, NULL, NULL);
	for (int i = 0; i < TASKS; i++)
		CHECK(keel_spawn(loop, type, KEEL_PRIO_NORMAL) != NULL);
	pthread_barrier_wait(&g_start);
	for (int r = 0; r < ROUNDS; r++)
		CHECK_EQ(keel_loop_dump(loop, g_wfd), TASKS);
	CHECK(keel_loop_run(loop) == 0);
	keel_loop_destroy(loop);
	return NULL;
}

struct text {
	int fd;
	char *buf;
	size_t len, cap;
};

static void *reader_main(void *arg)
{
	struct text *x = arg;
	ssize_t n;

	for (;;) {
		if (x->cap - x->len < 4096) {
			x->cap = x->cap ? 2 * x->cap : 65536;
			x->buf = realloc(x->buf, x->cap + 1);
			CHECK(x->buf != NULL);
			if (!x->buf)
				return NULL;
		}
		n = read(x->fd, x->buf + x->len, x->cap - x->len);
		if (n <= 0)
			break;
		x->len += (size_t)n;
	}
	x->buf[x->len] = '\0';
	return NULL;
}

/* Every dump whole: a header, then TASKS lines of one type. */
static void check_dumps(char *text)
{
	int dumps = 0, lines = TASKS, bad = 0;
	const char *type = NULL;

	for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
		if (lines == TASKS) {
			if (strncmp(line, "keel: task dump: ", 17) != 0) {
				if (!bad++)
					fprintf(stderr, "not a header: %s\n",
						line);
				continue;
			}
			dumps++;
			lines = 0;
			type = NULL;
			continue;
		}
		const char *this = strstr(line, " alpha_task [")  ? "alpha"
				   : strstr(line, " beta_task [") ? "beta"
								  : NULL;

		if (strncmp(line, "  task ", 7) != 0 || !this ||
		    (type && this != type)) {
			if (!bad++)
				fprintf(stderr, "line %d of a dump: %s\n",
					lines, line);
		}
		type = type ? type : this;
		lines++;
	}
	CHECK_EQ(bad, 0);
	CHECK_EQ(dumps, 2 * ROUNDS);
	CHECK_EQ(lines, TASKS);
}

int main(void)
{
	pthread_t dumpers[2], reader;
	struct text x = {0};
	int p[2];

	kt_scenarios_start("mt_dump");
	kt_scenario_begin("two loops dumping at once to one pipe");
	CHECK(pipe2(p, O_CLOEXEC) == 0);
	/* A small pipe: the writers block mid-dump, the reader in between. */
	(void)fcntl(p[1], F_SETPIPE_SZ, 4096);
	g_wfd = p[1];
	x.fd = p[0];
	CHECK(pthread_barrier_init(&g_start, NULL, 2) == 0);
	CHECK(pthread_create(&reader, NULL, reader_main, &x) == 0);
	CHECK(pthread_create(&dumpers[0], NULL, dumper_main,
			     (void *)&alpha_task) == 0);
	CHECK(pthread_create(&dumpers[1], NULL, dumper_main,
			     (void *)&beta_task) == 0);
	for (int i = 0; i < 2; i++)
		pthread_join(dumpers[i], NULL);
	close(p[1]);
	pthread_join(reader, NULL);
	close(p[0]);
	if (x.buf)
		check_dumps(x.buf);
	free(x.buf);
	pthread_barrier_destroy(&g_start);
	kt_scenario_end();
	return kt_scenarios_finish();
}
