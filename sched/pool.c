/* SPDX-License-Identifier: MIT */
/*
 * pool.c: the blocking pool: threads for work io_uring cannot do.
 *
 * A job is a user-space op in its task's ledger, so the task's frame (and
 * the `arg` in it) outlives the task until the job has returned, exactly as
 * for a kernel op; cancelling the task cannot stop a running job, so the
 * op completes when the job does. The result travels back through the
 * task's loop's inbox (one doorbell if the loop is parked).
 *
 * The queue is bounded: a full queue fails the await with -EAGAIN at once.
 *
 * A job never outlives its loop: loop->jobs counts the jobs not yet posted
 * back, and keel_loop_destroy() waits (keel__blocking_drain) until it is
 * zero, however long a running job takes: a job cannot be stopped, and
 * posting its result to a freed loop would corrupt memory. Jobs still in
 * the queue are taken out and never run.
 */
#include "loop.h"

#include <errno.h>
#include <keel/loop.h>
#include <pthread.h>
#include <stdlib.h>

/* The opcode a dump shows for a blocking job (no io_uring opcode). */
#define BLOCKING_OPCODE 0xfe

struct job {
	struct job *next;
	keel_blocking_fn fn;
	void *arg;
	int result;
	struct keel_loop *loop;
	struct keel__op *op;
	struct keel__remote_item done;
};

static struct {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	pthread_cond_t posted; /* a loop's last job was posted back */
	struct job *head, *tail;
	unsigned len;
	unsigned queue;
	unsigned threads;
	unsigned started;
} pool = {
    .lock = PTHREAD_MUTEX_INITIALIZER,
    .cond = PTHREAD_COND_INITIALIZER,
    .posted = PTHREAD_COND_INITIALIZER,
    .queue = 1024,
    .threads = 4,
};

int keel_blocking_pool_config(unsigned threads, unsigned queue)
{
	int err = 0;

	pthread_mutex_lock(&pool.lock);
	if (pool.started)
		err = -EBUSY;
	else {
		if (threads)
			pool.threads = threads;
		if (queue)
			pool.queue = queue;
	}
	pthread_mutex_unlock(&pool.lock);
	return err;
}

static void job_done(struct keel_loop *loop, struct keel__remote_item *it)
{
	struct job *job = keel_container_of(it, struct job, done);

	keel__op_user_done(&loop->io, job->op, job->result);
	free(job);
}

static void *pool_main(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&pool.lock);
	for (;;) {
		while (!pool.head)
			pthread_cond_wait(&pool.cond, &pool.lock);
		struct job *job = pool.head;

		pool.head = job->next;
		if (!pool.head)
			pool.tail = NULL;
		pool.len--;
		pthread_mutex_unlock(&pool.lock);
		job->result = job->fn(job->arg);

		struct keel_loop *loop = job->loop;

		/* Post under the lock: the loop is not destroyed until its
		 * count drops, which is after the post is done with it. */
		pthread_mutex_lock(&pool.lock);
		keel__remote_post(loop, &job->done);
		if (--loop->jobs == 0)
			pthread_cond_broadcast(&pool.posted);
	}
	return NULL;
}

/* Start the threads on first use (lock held). */
static void start_threads(void)
{
	pthread_attr_t attr;

	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	while (pool.started < pool.threads) {
		pthread_t th;

		if (pthread_create(&th, &attr, pool_main, NULL))
			break;
		pool.started++;
	}
	pthread_attr_destroy(&attr);
}

/* Cancelling cannot stop a running job: the op ends when it returns. */
static void job_cancel(struct keel__op *op)
{
	(void)op;
}

void keel__blocking_drain(struct keel_loop *loop)
{
	struct job *dropped = NULL, **link = &pool.head;

	pthread_mutex_lock(&pool.lock);
	pool.tail = NULL;
	while (*link) {
		struct job *job = *link;

		if (job->loop != loop) {
			pool.tail = job;
			link = &job->next;
			continue;
		}
		*link = job->next;
		pool.len--;
		loop->jobs--;
		job->next = dropped;
		dropped = job;
	}
	while (loop->jobs)
		pthread_cond_wait(&pool.posted, &pool.lock);
	pthread_mutex_unlock(&pool.lock);
	while (dropped) {
		struct job *job = dropped;

		dropped = job->next;
		job->result = -ECANCELED;
		job_done(loop, &job->done);
	}
	keel__remote_drain(loop); /* the results of the jobs that ran */
}

int keel_blocking(struct keel_task *t, keel_blocking_fn fn, void *arg)
{
	struct keel_loop *loop = t->loop;
	int cause = keel__task_cancel_cause(t);

	if (cause)
		return keel__task_ready(t, cause);
	struct job *job = malloc(sizeof(*job));

	if (!job)
		return keel__task_ready(t, -ENOMEM);
	pthread_mutex_lock(&pool.lock);
	if (!pool.started)
		start_threads();
	if (!pool.started || pool.len >= pool.queue) {
		pthread_mutex_unlock(&pool.lock);
		free(job);
		return keel__task_ready(t, -EAGAIN);
	}
	struct keel__op *op =
	    keel__op_new(&loop->io, t, KEEL__OP_USER, BLOCKING_OPCODE);

	if (!op) {
		pthread_mutex_unlock(&pool.lock);
		free(job);
		return keel__task_ready(t, -ENOMEM);
	}
	op->pending = 1;
	op->u.user.cancel = job_cancel;
	job->next = NULL;
	job->fn = fn;
	job->arg = arg;
	job->loop = loop;
	job->op = op;
	job->done.run = job_done;
	if (pool.tail)
		pool.tail->next = job;
	else
		pool.head = job;
	pool.tail = job;
	pool.len++;
	loop->jobs++;
	pthread_cond_signal(&pool.cond);
	pthread_mutex_unlock(&pool.lock);
	return keel__task_suspend(t);
}
