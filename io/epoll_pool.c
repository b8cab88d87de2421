/* SPDX-License-Identifier: MIT */
/*
 * epoll_pool.c: the epoll backend's worker threads, for the ops that have
 * no readiness to wait for (regular files and block devices, fsync,
 * openat, statx): what io_uring's io-wq does for the kernel's backend.
 *
 * One pool for the process, not one per loop: threads are a process's
 * resource, and a process with a loop per core would otherwise own four
 * times as many threads, most of them idle. The threads start on first
 * use and stay; they block every signal, so that a loop's signal handling
 * never lands on them.
 *
 * A job is embedded in its op, which its loop keeps until the job has
 * been handed back; the job's run() does the system call and the hand-back
 * (the backend's lock and doorbell). Which jobs a worker is running is
 * kept per worker, so that a loop going away waits for exactly its own
 * (keel__ep_pool_drain), however long they take: a job cannot be stopped,
 * and one handed back to a freed loop would corrupt memory.
 *
 * A child of fork(2) has none of the threads: it starts its own on first
 * use, with an empty queue (the parent's jobs are the parent's).
 */
#include "epoll_pool.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>

enum { JOB_QUEUED = 1, JOB_RUNNING, JOB_DONE };

static struct {
	pthread_mutex_t lock;
	pthread_cond_t work;
	pthread_cond_t idle; /* a worker finished a job */
	struct keel__ep_job *head, *tail;
	unsigned len;
	unsigned started;
	const void *running[KEEL__EP_POOL_THREADS]; /* owners, per worker */
} pool = {
    .lock = PTHREAD_MUTEX_INITIALIZER,
    .work = PTHREAD_COND_INITIALIZER,
    .idle = PTHREAD_COND_INITIALIZER,
};

static void *worker_main(void *arg)
{
	unsigned self = (unsigned)(uintptr_t)arg;

	pthread_mutex_lock(&pool.lock);
	for (;;) {
		while (!pool.head)
			pthread_cond_wait(&pool.work, &pool.lock);
		struct keel__ep_job *job = pool.head;

		pool.head = job->next;
		if (!pool.head)
			pool.tail = NULL;
		pool.len--;
		job->state = JOB_RUNNING;
		pool.running[self] = job->owner;
		pthread_mutex_unlock(&pool.lock);

		/* The job is its owner's again once run() has handed it
		 * back: nothing here touches it afterwards. */
		job->run(job);

		pthread_mutex_lock(&pool.lock);
		pool.running[self] = NULL;
		pthread_cond_broadcast(&pool.idle);
	}
	return NULL;
}

static void fork_prepare(void)
{
	pthread_mutex_lock(&pool.lock);
}

static void fork_parent(void)
{
	pthread_mutex_unlock(&pool.lock);
}

static void fork_child(void)
{
	pool.head = pool.tail = NULL;
	pool.len = 0;
	pool.started = 0;
	for (unsigned i = 0; i < KEEL__EP_POOL_THREADS; i++)
		pool.running[i] = NULL;
	pthread_mutex_unlock(&pool.lock);
}

static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void atfork_init(void)
{
	pthread_atfork(fork_prepare, fork_parent, fork_child);
}

/* Start the threads on first use (lock held). */
static void start_threads(void)
{
	pthread_attr_t attr;
	sigset_t all, old;

	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	while (pool.started < KEEL__EP_POOL_THREADS) {
		pthread_t th;

		if (pthread_create(&th, &attr, worker_main,
				   (void *)(uintptr_t)pool.started))
			break;
		pool.started++;
	}
	pthread_attr_destroy(&attr);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
}

int keel__ep_pool_submit(struct keel__ep_job *job)
{
	int err = 0;

	pthread_once(&atfork_once, atfork_init);
	pthread_mutex_lock(&pool.lock);
	if (pool.started < KEEL__EP_POOL_THREADS)
		start_threads();
	if (!pool.started || pool.len >= KEEL__EP_POOL_QUEUE) {
		err = -EAGAIN;
	} else {
		job->next = NULL;
		job->state = JOB_QUEUED;
		if (pool.tail)
			pool.tail->next = job;
		else
			pool.head = job;
		pool.tail = job;
		pool.len++;
		pthread_cond_signal(&pool.work);
	}
	pthread_mutex_unlock(&pool.lock);
	return err;
}

/* Unlink `job` from the queue (lock held; it is queued). */
static void unlink_job(struct keel__ep_job *job)
{
	struct keel__ep_job **link = &pool.head, *prev = NULL;

	while (*link != job) {
		prev = *link;
		link = &prev->next;
	}
	*link = job->next;
	if (pool.tail == job)
		pool.tail = prev;
	pool.len--;
	job->state = JOB_DONE;
}

bool keel__ep_pool_unqueue(struct keel__ep_job *job)
{
	bool queued;

	pthread_mutex_lock(&pool.lock);
	queued = job->state == JOB_QUEUED;
	if (queued)
		unlink_job(job);
	pthread_mutex_unlock(&pool.lock);
	return queued;
}

static bool owner_running(const void *owner)
{
	for (unsigned i = 0; i < KEEL__EP_POOL_THREADS; i++)
		if (pool.running[i] == owner)
			return true;
	return false;
}

void keel__ep_pool_drain(const void *owner)
{
	pthread_mutex_lock(&pool.lock);
	for (struct keel__ep_job *job = pool.head, *next; job; job = next) {
		next = job->next;
		if (job->owner == owner)
			unlink_job(job);
	}
	while (owner_running(owner))
		pthread_cond_wait(&pool.idle, &pool.lock);
	pthread_mutex_unlock(&pool.lock);
}
