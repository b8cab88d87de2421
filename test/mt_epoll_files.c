/* SPDX-License-Identifier: MIT */
/*
 * mt_epoll_files.c: the epoll backend's worker threads and loops of both
 * backends in one process, for ThreadSanitizer (a plain program:
 * Criterion cannot start under TSan, Criterion issue #274). Scenarios:
 *   - files: epoll loops on threads, each with tasks that create, write,
 *     read back, fsync, statx and close files of their own, so the
 *     process-wide pool serves every loop at once;
 *   - fifo: two tasks of one epoll loop open a FIFO's two ends (blocking
 *     opens: O_CREAT), one reads what the other writes;
 *   - mixed: a loop on io_uring and a loop on epoll play request/reply
 *     through two mailboxes (io_uring -> epoll and back); skipped, saying
 *     so, where io_uring is refused.
 * A watchdog ends the program (as a failure) if a scenario stalls.
 * Prints "mt_epoll_files: N passed, M failed".
 */
#include <errno.h>
#include <fcntl.h>
#include <keel.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "helpers/scenario.h"

#define MSG(v) ((void *)(uintptr_t)(v))
#define VAL(p) ((uintptr_t)(p))

static char dir[] = "/tmp/mt_epoll_files.XXXXXX";

/* A loop of the given backend on a thread, running `setup`'s tasks. */
struct lthread {
	pthread_t th;
	unsigned backend;
	int index;
	void (*setup)(struct keel_loop *loop, int index);
	int create_err, run_err;
	bool started;
};

static void *lthread_main(void *arg)
{
	struct lthread *lt = arg;
	struct keel_loop_opts o = {.backend = lt->backend};
	struct keel_loop *loop;

	lt->create_err = keel_loop_create(&loop, &o);
	if (lt->create_err)
		return NULL;
	lt->setup(loop, lt->index);
	lt->run_err = keel_loop_run(loop);
	keel_loop_destroy(loop);
	return NULL;
}

static void lthread_start(struct lthread *lt)
{
	lt->started = pthread_create(&lt->th, NULL, lthread_main, lt) == 0;
	CHECK(lt->started);
}

static void lthread_join(struct lthread *lt)
{
	if (!lt->started)
		return;
	pthread_join(lt->th, NULL);
	CHECK_EQ(lt->create_err, 0);
	CHECK_EQ(lt->run_err, 0);
}

/* ---- files ---------------------------------------------------------- */

#define FILE_LOOPS  3
#define FILE_TASKS  4
#define FILE_ROUNDS 20

static int files_done;

struct filer {
	struct keel_task task;
	char path[128];
	char out[64], in[64];
	struct statx stx;
	int fd, round, len;
};

static int filer_step(struct keel_task *t);
static KEEL_TASK_TYPE(filer_task, struct filer, task, filer_step);

static int filer_step(struct keel_task *t)
{
	struct filer *f = keel_container_of(t, struct filer, task);

	KEEL_BEGIN(t);
	for (f->round = 0; f->round < FILE_ROUNDS; f->round++) {
		KEEL_AWAIT(t,
			   keel_openat(t, AT_FDCWD, f->path,
				       O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC,
				       0600));
		if (keel_res(t) < 0) {
			CHECK_EQ(keel_res(t), 0);
			break;
		}
		f->fd = keel_res(t);
		f->len = snprintf(f->out, sizeof(f->out), "%s round %d",
				  f->path, f->round);
		KEEL_AWAIT(t,
			   keel_write(t, f->fd, f->out, (unsigned)f->len, 0));
		CHECK_EQ(keel_res(t), f->len);
		KEEL_AWAIT(t, keel_fsync(t, f->fd, 0));
		CHECK_EQ(keel_res(t), 0);
		memset(f->in, 0, sizeof(f->in));
		KEEL_AWAIT(t, keel_read(t, f->fd, f->in, sizeof(f->in), 0));
		CHECK_EQ(keel_res(t), f->len);
		CHECK(!memcmp(f->in, f->out, (size_t)f->len));
		KEEL_AWAIT(t, keel_statx(t, AT_FDCWD, f->path, 0, STATX_SIZE,
					 &f->stx));
		CHECK_EQ(keel_res(t), 0);
		CHECK_EQ(f->stx.stx_size, (unsigned)f->len);
		KEEL_AWAIT(t, keel_close(t, f->fd));
		CHECK_EQ(keel_res(t), 0);
	}
	kt_add(&files_done, 1);
	KEEL_END(t);
}

static void files_setup(struct keel_loop *loop, int index)
{
	for (int i = 0; i < FILE_TASKS; i++) {
		struct filer *f =
		    keel_spawn(loop, &filer_task, KEEL_PRIO_NORMAL);

		CHECK(f != NULL);
		if (f)
			snprintf(f->path, sizeof(f->path), "%s/f%d.%d", dir,
				 index, i);
	}
}

static void scenario_files(void)
{
	struct lthread lts[FILE_LOOPS];

	for (int i = 0; i < FILE_LOOPS; i++) {
		lts[i] = (struct lthread){.backend = KEEL_BACKEND_EPOLL,
					  .index = i,
					  .setup = files_setup};
		lthread_start(&lts[i]);
	}
	for (int i = 0; i < FILE_LOOPS; i++)
		lthread_join(&lts[i]);
	CHECK_EQ(kt_load(&files_done), FILE_LOOPS * FILE_TASKS);
}

/* ---- fifo ----------------------------------------------------------- */

static char fifo[64];
static int fifo_got;

struct fifo_end {
	struct keel_task task;
	bool writer;
	char buf[16];
	int fd;
};

static int fifo_step(struct keel_task *t);
static KEEL_TASK_TYPE(fifo_task, struct fifo_end, task, fifo_step);

static int fifo_step(struct keel_task *t)
{
	struct fifo_end *e = keel_container_of(t, struct fifo_end, task);

	KEEL_BEGIN(t);
	/* O_CREAT: a blocking open, on a worker; it returns once the other
	 * task of this loop has opened the other end. */
	KEEL_AWAIT(t, keel_openat(t, AT_FDCWD, fifo,
				  (e->writer ? O_WRONLY : O_RDONLY) | O_CREAT |
				      O_CLOEXEC,
				  0600));
	CHECK(keel_res(t) >= 0);
	if (keel_res(t) < 0)
		KEEL_EXIT(t, 0);
	e->fd = keel_res(t);
	if (e->writer) {
		KEEL_AWAIT(t,
			   keel_write(t, e->fd, "fifo!", 5, KEEL_OFF_CURRENT));
		CHECK_EQ(keel_res(t), 5);
	} else {
		KEEL_AWAIT(t, keel_read(t, e->fd, e->buf, sizeof(e->buf),
					KEEL_OFF_CURRENT));
		CHECK_EQ(keel_res(t), 5);
		if (keel_res(t) == 5 && !memcmp(e->buf, "fifo!", 5))
			kt_store(&fifo_got, 1);
	}
	KEEL_AWAIT(t, keel_close(t, e->fd));
	KEEL_END(t);
}

static void fifo_setup(struct keel_loop *loop, int index)
{
	(void)index;
	for (int w = 0; w < 2; w++) {
		struct fifo_end *e =
		    keel_spawn(loop, &fifo_task, KEEL_PRIO_NORMAL);

		CHECK(e != NULL);
		if (e)
			e->writer = w;
	}
}

static void scenario_fifo(void)
{
	struct lthread lt = {.backend = KEEL_BACKEND_EPOLL,
			     .setup = fifo_setup};

	snprintf(fifo, sizeof(fifo), "%s/fifo", dir);
	CHECK_EQ(mkfifo(fifo, 0600), 0);
	lthread_start(&lt);
	lthread_join(&lt);
	CHECK_EQ(kt_load(&fifo_got), 1);
}

/* ---- mixed ---------------------------------------------------------- */

#define MIXED_ROUNDS 1000

static struct keel_mailbox *to_epoll, *to_uring;
static int epoll_ready, mixed_bad, mixed_done;

/* On the epoll loop: answers each request v with 2v + 1. */
struct answerer {
	struct keel_task task;
	void *msg;
	int n;
};

static int answerer_step(struct keel_task *t);
static KEEL_TASK_TYPE(answerer_task, struct answerer, task, answerer_step);

static int answerer_step(struct keel_task *t)
{
	struct answerer *a = keel_container_of(t, struct answerer, task);

	KEEL_BEGIN(t);
	for (a->n = 0; a->n < MIXED_ROUNDS; a->n++) {
		KEEL_AWAIT(t, keel_mb_recv(t, to_epoll, &a->msg));
		if (keel_res(t)) {
			CHECK_EQ(keel_res(t), 0);
			break;
		}
		KEEL_AWAIT(t,
			   keel_mb_send(t, to_uring, MSG(2 * VAL(a->msg) + 1)));
		CHECK_EQ(keel_res(t), 0);
	}
	KEEL_END(t);
}

/* On the io_uring loop: asks 1..MIXED_ROUNDS, checks the answers. */
struct asker {
	struct keel_task task;
	void *msg;
	int n;
};

static int asker_step(struct keel_task *t);
static KEEL_TASK_TYPE(asker_task, struct asker, task, asker_step);

static int asker_step(struct keel_task *t)
{
	struct asker *a = keel_container_of(t, struct asker, task);

	KEEL_BEGIN(t);
	for (a->n = 0; !kt_load(&epoll_ready) && a->n < 10000; a->n++)
		KEEL_AWAIT(t, keel_sleep(t, 1000 * 1000));
	CHECK(kt_load(&epoll_ready));
	for (a->n = 1; a->n <= MIXED_ROUNDS; a->n++) {
		KEEL_AWAIT(t, keel_mb_send(t, to_epoll, MSG(a->n)));
		CHECK_EQ(keel_res(t), 0);
		KEEL_AWAIT(t, keel_mb_recv(t, to_uring, &a->msg));
		CHECK_EQ(keel_res(t), 0);
		if (VAL(a->msg) != 2 * (uintptr_t)a->n + 1)
			kt_add(&mixed_bad, 1);
	}
	kt_store(&mixed_done, 1);
	KEEL_END(t);
}

static void mixed_epoll_setup(struct keel_loop *loop, int index)
{
	struct keel_mailbox_opts mo = {.capacity = 2, .policy = KEEL_MB_BLOCK};

	(void)index;
	CHECK_EQ(keel_mailbox_new(loop, &mo, &to_epoll), 0);
	CHECK(keel_spawn(loop, &answerer_task, KEEL_PRIO_NORMAL) != NULL);
	kt_store(&epoll_ready, 1);
}

static void mixed_uring_setup(struct keel_loop *loop, int index)
{
	struct keel_mailbox_opts mo = {.capacity = 2, .policy = KEEL_MB_BLOCK};

	(void)index;
	CHECK_EQ(keel_mailbox_new(loop, &mo, &to_uring), 0);
	CHECK(keel_spawn(loop, &asker_task, KEEL_PRIO_NORMAL) != NULL);
}

static void scenario_mixed(void)
{
	struct keel_loop_opts o = {.backend = KEEL_BACKEND_IO_URING};
	struct keel_loop *probe;
	int err = keel_loop_create(&probe, &o);

	if (err) {
		printf("mt_epoll_files: mixed: skipped, no io_uring here: %s\n",
		       keel_loop_explain(err));
		return;
	}
	keel_loop_destroy(probe);

	struct lthread ep = {.backend = KEEL_BACKEND_EPOLL,
			     .setup = mixed_epoll_setup};
	struct lthread ur = {.backend = KEEL_BACKEND_IO_URING,
			     .setup = mixed_uring_setup};

	lthread_start(&ep);
	lthread_start(&ur);
	lthread_join(&ur);
	lthread_join(&ep);
	CHECK_EQ(kt_load(&mixed_done), 1);
	CHECK_EQ(kt_load(&mixed_bad), 0);
	keel_mailbox_release(to_epoll);
	keel_mailbox_release(to_uring);
}

int main(void)
{
	CHECK(mkdtemp(dir) != NULL);
	kt_scenarios_start("mt_epoll_files");
	kt_scenario_run("files", scenario_files);
	kt_scenario_run("fifo", scenario_fifo);
	kt_scenario_run("mixed", scenario_mixed);
	unlink(fifo);
	for (int l = 0; l < FILE_LOOPS; l++)
		for (int i = 0; i < FILE_TASKS; i++) {
			char p[128];

			snprintf(p, sizeof(p), "%s/f%d.%d", dir, l, i);
			unlink(p);
		}
	rmdir(dir);
	return kt_scenarios_finish();
}
