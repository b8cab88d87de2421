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
 *
 * A detachable job (keel__job_submit, for keel_resolve) is the exception:
 * its awaiter may leave it (keel__job_detach) and end its op at once, so
 * its argument is on the heap, not in a frame. A job left while queued is
 * dropped; one left while running no longer counts in loop->jobs and is
 * freed by its pool thread when it returns, without touching the loop; one
 * left after it was posted back is freed by the loop when the post is run.
 * All three cases are told apart under the pool's lock (job->state).
 */
#include "loop.h"

#include <errno.h>
#include <keel/loop.h>
#include <pthread.h>
#include <stdlib.h>

enum job_state { JOB_QUEUED, JOB_RUNNING, JOB_POSTED };

struct keel__job {
	struct keel__job *next;
	keel_blocking_fn fn;
	void *arg;
	int result;
	uint8_t state; /* enum job_state, under the pool's lock */
	/* NULL for keel_blocking(); else a detachable job's callbacks. */
	const struct keel__job_class *cls;
	struct keel_loop *loop; /* NULL: left while running */
	struct keel__op *op;	/* NULL: left (its op has ended) */
	struct keel__remote_item done;
};

static struct {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	pthread_cond_t posted; /* a loop's last job was posted back */
	struct keel__job *head, *tail;
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

static void job_free(struct keel__job *job)
{
	if (job->cls)
		job->cls->release(job->arg);
	free(job);
}

static void job_done(struct keel_loop *loop, struct keel__remote_item *it)
{
	struct keel__job *job = keel_container_of(it, struct keel__job, done);

	if (!job->op)
		; /* left by its awaiter: nobody waits for the result */
	else if (job->cls)
		job->cls->finish(loop, job->op, job->arg, job->result);
	else
		keel__op_user_done(&loop->io, job->op, job->result);
	job_free(job);
}

static void *pool_main(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&pool.lock);
	for (;;) {
		while (!pool.head)
			pthread_cond_wait(&pool.cond, &pool.lock);
		struct keel__job *job = pool.head;

		pool.head = job->next;
		if (!pool.head)
			pool.tail = NULL;
		pool.len--;
		job->state = JOB_RUNNING;
		pthread_mutex_unlock(&pool.lock);

		int result = job->fn(job->arg);

		pthread_mutex_lock(&pool.lock);
		job->result = result;

		struct keel_loop *loop = job->loop;

		if (!loop) { /* left by its awaiter: the loop may be gone */
			pthread_mutex_unlock(&pool.lock);
			job_free(job);
			pthread_mutex_lock(&pool.lock);
			continue;
		}
		/* Post under the lock: the loop is not destroyed until its
		 * count drops, which is after the post is done with it. */
		job->state = JOB_POSTED;
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
	struct keel__job *dropped = NULL, **link = &pool.head;

	/* Cancel every op first: a detachable job's awaiter then leaves it
	 * (its op ends at once), so that a job that cannot be stopped (a
	 * getaddrinfo waiting for a name server) does not hold the loop. */
	keel__io_cancel_all(&loop->io);
	pthread_mutex_lock(&pool.lock);
	pool.tail = NULL;
	while (*link) {
		struct keel__job *job = *link;

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
		struct keel__job *job = dropped;

		dropped = job->next;
		job->result = -ECANCELED;
		job_done(loop, &job->done);
	}
	keel__remote_drain(loop); /* the results of the jobs that ran */
}

/* Queue `job` (its fields set but `next`); -EAGAIN if the queue is full. */
static int job_queue(struct keel_loop *loop, struct keel__job *job)
{
	pthread_mutex_lock(&pool.lock);
	if (!pool.started)
		start_threads();
	if (!pool.started || pool.len >= pool.queue) {
		pthread_mutex_unlock(&pool.lock);
		return -EAGAIN;
	}
	job->next = NULL;
	job->state = JOB_QUEUED;
	job->loop = loop;
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
	return 0;
}

int keel__job_submit(struct keel_loop *loop, struct keel__op *op,
		     const struct keel__job_class *cls, void *arg,
		     struct keel__job **out)
{
	struct keel__job *job = malloc(sizeof(*job));

	if (!job)
		return -ENOMEM;
	job->fn = cls->run;
	job->arg = arg;
	job->result = 0;
	job->cls = cls;
	job->op = op;
	*out = job;
	int err = job_queue(loop, job);

	if (err)
		free(job);
	return err;
}

void keel__job_detach(struct keel_loop *loop, struct keel__job *job)
{
	bool drop = false;

	pthread_mutex_lock(&pool.lock);
	job->op = NULL;
	switch (job->state) {
	case JOB_QUEUED: { /* never run it */
		struct keel__job *prev = NULL, **link = &pool.head;

		while (*link != job) {
			prev = *link;
			link = &prev->next;
		}
		*link = job->next;
		if (pool.tail == job)
			pool.tail = prev;
		pool.len--;
		loop->jobs--;
		drop = true;
		break;
	}
	case JOB_RUNNING: /* its thread frees it */
		job->loop = NULL;
		loop->jobs--;
		break;
	default: /* posted: job_done() frees it */
		break;
	}
	pthread_mutex_unlock(&pool.lock);
	if (drop)
		job_free(job);
}

int keel_blocking(struct keel_task *t, keel_blocking_fn fn, void *arg)
{
	struct keel_loop *loop = t->loop;
	int cause = keel__task_cancel_cause(t);

	if (cause)
		return keel__task_ready(t, cause);
	struct keel__job *job = malloc(sizeof(*job));

	if (!job)
		return keel__task_ready(t, -ENOMEM);
	struct keel__op *op =
	    keel__op_new(&loop->io, t, KEEL__OP_USER, KEEL__OPCODE_BLOCKING);

	if (!op) {
		free(job);
		return keel__task_ready(t, -ENOMEM);
	}
	op->pending = 1;
	op->u.user.cancel = job_cancel;
	job->fn = fn;
	job->arg = arg;
	job->result = 0;
	job->cls = NULL;
	job->op = op;
	int err = job_queue(loop, job);

	if (err) {
		free(job);
		keel__op_release_quiet(&loop->io, op);
		return keel__task_ready(t, err);
	}
	return keel__task_suspend(t);
}
