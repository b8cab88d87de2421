/* SPDX-License-Identifier: MIT */
/*
 * test_runtime.c: the multi-thread runtime and the blocking pool. The main
 * task runs on loop 0 on the calling thread and its exit status is what
 * keel_runtime_run returns; keel_spawn_on from a plain thread and from a
 * task; graceful shutdown with tasks mid-I/O and asleep on every loop
 * (each sees -ECANCELED, no op is left, run returns), started by the main
 * task, by a plain thread, or by the main task exiting; the blocking pool
 * under saturation (exact -EAGAIN count, each job's own result) and a
 * cancelled task that still waits for its job (its arg is written by the
 * job until then: ASan checks the ownership); and, in forked children,
 * SIGTERM/SIGINT giving a graceful exit 0, a second signal killing the
 * process, and SIGUSR1 writing a task dump to stderr.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <keel.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helpers/keel_test.h"

#define MSG(v) ((void *)(uintptr_t)(v))
#define VAL(p) ((uintptr_t)(p))

#define UNSET 12345 /* a result nobody wrote yet */

/*
 * Every test runs in its own process, so these start zeroed. Tasks record
 * what they saw here (a frame is freed when its task exits); checks made
 * on loop threads are CHECK()s (helpers/check.h), asserted at the end.
 */
static struct keel_runtime *g_rt;

static struct keel_runtime *rt_new(unsigned threads)
{
	struct keel_runtime_opts o = {.threads = threads, .no_signals = true};
	struct keel_runtime *rt = NULL;
	int err = keel_runtime_create(&rt, &o);

	cr_assert_eq(err, 0, "keel_runtime_create: %s (%s)", strerror(-err),
		     keel_loop_explain(err));
	cr_assert_not_null(rt);
	cr_assert_eq(keel_runtime_size(rt), threads);
	g_rt = rt;
	return rt;
}

/* ---- a worker that cannot create its loop ---------------------------------
 */

/* The number of descriptors open now (not counting the listing's own). */
static int open_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	int n = 0;

	cr_assert_not_null(d);
	while ((e = readdir(d)))
		n += e->d_name[0] != '.' && atoi(e->d_name) != dirfd(d);
	closedir(d);
	return n;
}

/* A descriptor limit that leaves exactly `n` free descriptors. */
static rlim_t room_for(int n)
{
	int fd = 0;

	for (;; fd++)
		if (fcntl(fd, F_GETFD) < 0 && --n == 0)
			return (rlim_t)fd + 1;
}

static long proc_status(const char *key)
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[256];
	long v = -1;

	cr_assert_not_null(f);
	while (fgets(line, sizeof(line), f))
		if (!strncmp(line, key, strlen(key)))
			v = atol(line + strlen(key));
	fclose(f);
	return v;
}

/*
 * RLIMIT_NOFILE leaves room for exactly one loop's descriptors: loop 0 (on
 * this thread) gets them, the worker's loop fails with -EMFILE. Every
 * thread the failed create started must have been joined, so none is left
 * (a thread nobody joined also waited on the freed runtime's lock).
 */
Test(runtime, create_failing_in_a_worker_joins_every_thread, .timeout = 20)
{
	struct keel_runtime_opts o = {.threads = 2, .no_signals = true};
	int fds = open_fds();
	struct keel_loop *probe = kt_loop_new(NULL);
	struct rlimit old, lim;
	long threads = proc_status("Threads:");

	fds = open_fds() - fds;
	keel_loop_destroy(probe);
	lim.rlim_cur = room_for(fds);
	cr_assert_eq(getrlimit(RLIMIT_NOFILE, &old), 0);
	lim.rlim_max = old.rlim_max;
	for (int i = 0; i < 4; i++) {
		struct keel_runtime *rt = NULL;
		int err;

		cr_assert_eq(setrlimit(RLIMIT_NOFILE, &lim), 0);
		err = keel_runtime_create(&rt, &o);
		cr_assert_eq(setrlimit(RLIMIT_NOFILE, &old), 0);
		cr_assert_eq(err, -EMFILE, "create: %d", err);
		cr_assert_null(rt);
		/* A joined thread may linger in the kernel a moment. */
		for (int ms = 0; ms < 5000; ms++) {
			if (proc_status("Threads:") <= threads)
				break;
			usleep(1000);
		}
		cr_assert_leq(proc_status("Threads:"), threads);
	}
}

/* ---- the main task and its exit status ---------------------------------- */

static pthread_t g_test_thread;
static int g_main_on_loop0 = UNSET;
static int g_main_on_test_thread = UNSET;
static int g_main_rt = UNSET;

struct status_main {
	struct keel_task task;
	int status;
};

static int status_main_step(struct keel_task *t);
static KEEL_TASK_TYPE(status_main_task, struct status_main, task,
		      status_main_step);

static void status_init(void *frame, void *arg)
{
	struct status_main *m = frame;

	m->status = *(int *)arg;
}

static int status_main_step(struct keel_task *t)
{
	struct status_main *m = keel_container_of(t, struct status_main, task);

	KEEL_BEGIN(t);
	g_main_on_loop0 = keel_task_loop(t) == keel_runtime_loop(g_rt, 0) &&
			  keel_loop_current() == keel_task_loop(t);
	g_main_on_test_thread = pthread_equal(pthread_self(), g_test_thread);
	g_main_rt = keel_runtime_current() == g_rt;
	KEEL_AWAIT(t, keel_nop(t));
	KEEL_AWAIT(t, keel_sleep(t, KT_MS(1)));
	KEEL_EXIT(t, m->status);
}

static void run_status(unsigned threads, int status)
{
	struct keel_runtime *rt = rt_new(threads);
	int ret;

	g_test_thread = pthread_self();
	for (unsigned i = 0; i < threads; i++)
		cr_assert_not_null(keel_runtime_loop(rt, i));
	cr_assert_null(keel_runtime_loop(rt, threads));
	ret = keel_runtime_run(rt, &status_main_task, status_init, &status);
	cr_assert_eq(ret, status, "keel_runtime_run returned %d, expected %d",
		     ret, status);
	cr_assert_eq(g_main_on_loop0, 1, "main runs on loop 0");
	cr_assert_eq(g_main_on_test_thread, 1, "on the calling thread");
	cr_assert_eq(g_main_rt, 1, "keel_runtime_current() in main");
	cr_assert_null(keel_runtime_current(), "no runtime after run");
	keel_runtime_destroy(rt);
}

Test(runtime, run_returns_main_exit_status, .timeout = 10)
{
	run_status(3, 42);
}

Test(runtime, run_returns_zero_status_single_loop, .timeout = 10)
{
	run_status(1, 0);
}

Test(runtime, run_returns_negative_main_status, .timeout = 10)
{
	run_status(2, -7);
}

/*
 * Without the signalfd that reads SIGINT and SIGTERM (blocked in every
 * runtime thread), a service could only be killed: run must fail instead.
 */
Test(runtime, run_fails_when_no_signalfd_can_be_made, .timeout = 10)
{
	struct keel_runtime_opts o = {.threads = 1};
	struct keel_runtime *rt = NULL;
	struct rlimit lim;
	int status = 5, fds = 0, ret;

	cr_assert_eq(keel_runtime_create(&rt, &o), 0);
	/* Use up every descriptor this process may have (its own fork). */
	cr_assert_eq(getrlimit(RLIMIT_NOFILE, &lim), 0);
	lim.rlim_cur = 64;
	cr_assert_eq(setrlimit(RLIMIT_NOFILE, &lim), 0);
	while (dup(0) >= 0)
		fds++;
	ret = keel_runtime_run(rt, &status_main_task, status_init, &status);
	cr_assert_eq(ret, -EMFILE, "keel_runtime_run returned %d", ret);
	cr_assert_gt(fds, 0);
	keel_runtime_destroy(rt);
}

/* ---- counters read from another thread during shutdown --------------- */

static int g_poll_stop;
static int g_polls;

/* Reads every loop's counters, as fast as it can, until told to stop. */
static void *stats_poller(void *arg)
{
	struct keel_runtime *rt = arg;

	while (!kt_load(&g_poll_stop)) {
		for (unsigned i = 0; i < keel_runtime_size(rt); i++) {
			struct keel_loop_stats st;

			CHECK_EQ(keel_runtime_loop_stats(rt, i, &st), 0);
			CHECK(st.exited <= st.spawned);
		}
		__atomic_add_fetch(&g_polls, 1, __ATOMIC_RELAXED);
	}
	return NULL;
}

/*
 * Each worker destroys its loop at the end of the run while another
 * thread keeps asking for the counters: the reader must never touch a
 * destroyed loop (ASan), nor race with the loop's own counters (TSan).
 */
Test(runtime, loop_stats_polled_during_shutdown_never_reads_a_dead_loop,
     .timeout = 30)
{
	for (int round = 0; round < 5; round++) {
		struct keel_runtime *rt = rt_new(3);
		struct keel_loop_stats st;
		pthread_t th;
		int status = 0;

		g_test_thread = pthread_self();
		__atomic_store_n(&g_poll_stop, 0, __ATOMIC_RELAXED);
		cr_assert_eq(pthread_create(&th, NULL, stats_poller, rt), 0);
		while (!kt_load(&g_polls))
			sched_yield();
		cr_assert_eq(keel_runtime_run(rt, &status_main_task,
					      status_init, &status),
			     0);
		/* Still polling the final counters for a while. */
		for (int start = kt_load(&g_polls);
		     kt_load(&g_polls) < start + 10;)
			sched_yield();
		__atomic_store_n(&g_poll_stop, 1, __ATOMIC_RELAXED);
		pthread_join(th, NULL);
		kt_expect_no_failures();
		/* The final counters: main ran and exited on loop 0. */
		cr_assert_eq(keel_runtime_loop_stats(rt, 0, &st), 0);
		cr_assert_geq(st.spawned, 1);
		cr_assert_eq(st.exited, st.spawned);
		cr_assert_gt(st.turns, 0);
		keel_runtime_destroy(rt);
	}
}

/* ---- keel_spawn_on ----------------------------------------------------------
 */

static struct keel_mailbox *g_mb;
static pthread_t g_plain_thread;
static pthread_t g_init_thread, g_step_thread;
static int g_init_loop_ok = UNSET, g_step_loop_ok = UNSET;
static int g_hello_arg;
static int g_local_init_ran;

struct hello {
	struct keel_task task;
	int value;
};

static int hello_step(struct keel_task *t);
static KEEL_TASK_TYPE(hello_task, struct hello, task, hello_step);

static void hello_init(void *frame, void *arg)
{
	struct hello *h = frame;

	g_init_thread = pthread_self();
	g_init_loop_ok = keel_loop_current() == keel_runtime_loop(g_rt, 1);
	h->value = *(int *)arg;
}

static int hello_step(struct keel_task *t)
{
	struct hello *h = keel_container_of(t, struct hello, task);

	KEEL_BEGIN(t);
	g_step_thread = pthread_self();
	g_step_loop_ok = keel_task_loop(t) == keel_runtime_loop(g_rt, 1) &&
			 keel_loop_current() == keel_task_loop(t);
	KEEL_AWAIT(t, keel_mb_send(t, g_mb, MSG(h->value)));
	CHECK_EQ(keel_res(t), 0);
	KEEL_END(t);
}

static void *spawner_thread(void *arg)
{
	(void)arg;
	CHECK_EQ(keel_spawn_on(keel_runtime_loop(g_rt, 1), &hello_task,
			       KEEL_PRIO_NORMAL, hello_init, &g_hello_arg),
		 0);
	return NULL;
}

/* A task that does nothing; its init marks that it ran. */
struct noop {
	struct keel_task task;
};

static int noop_step(struct keel_task *t);
static KEEL_TASK_TYPE(noop_task, struct noop, task, noop_step);

static int noop_step(struct keel_task *t)
{
	KEEL_BEGIN(t);
	KEEL_END(t);
}

static void local_init(void *frame, void *arg)
{
	(void)frame;
	(void)arg;
	g_local_init_ran = 1;
}

struct spawn_main {
	struct keel_task task;
	void *msg;
};

static int spawn_main_step(struct keel_task *t);
static KEEL_TASK_TYPE(spawn_main_task, struct spawn_main, task,
		      spawn_main_step);

static int spawn_main_step(struct keel_task *t)
{
	struct spawn_main *m = keel_container_of(t, struct spawn_main, task);

	KEEL_BEGIN(t);
	/* On the caller's own loop the spawn (and init) happen at once. */
	CHECK_EQ(keel_spawn_on(keel_task_loop(t), &noop_task, KEEL_PRIO_NORMAL,
			       local_init, NULL),
		 0);
	CHECK_EQ(g_local_init_ran, 1);
	CHECK_EQ(keel_mailbox_new(keel_task_loop(t), NULL, &g_mb), 0);
	CHECK_EQ(pthread_create(&g_plain_thread, NULL, spawner_thread, NULL),
		 0);
	KEEL_AWAIT(t, keel_mb_recv(t, g_mb, &m->msg));
	CHECK_EQ(keel_res(t), 0);
	pthread_join(g_plain_thread, NULL);
	KEEL_EXIT(t, (int)VAL(m->msg));
}

Test(runtime, spawn_on_from_plain_thread_runs_init_and_task_on_that_loop,
     .timeout = 10)
{
	struct keel_runtime *rt = rt_new(2);
	int ret;

	g_test_thread = pthread_self();
	g_hello_arg = 77;
	ret = keel_runtime_run(rt, &spawn_main_task, NULL, NULL);
	kt_expect_no_failures();
	cr_assert_eq(ret, 77, "main got %d from the spawned task", ret);
	cr_assert_eq(g_init_loop_ok, 1, "init ran on the target loop");
	cr_assert_eq(g_step_loop_ok, 1, "the task ran on the target loop");
	cr_assert(pthread_equal(g_init_thread, g_step_thread),
		  "init and task on the same thread");
	cr_assert(!pthread_equal(g_init_thread, g_test_thread));
	cr_assert(!pthread_equal(g_init_thread, g_plain_thread));
	keel_mailbox_release(g_mb);
	keel_runtime_destroy(rt);
}

/* ---- graceful shutdown ----------------------------------------------------
 */

#define MAX_LOOPS 4

static int g_sv[MAX_LOOPS][2];
static int g_started;
static int g_io_res[MAX_LOOPS];
static int g_sleep_res[MAX_LOOPS];
static int g_exited[MAX_LOOPS];
static int g_checker_res[MAX_LOOPS];
static int g_checked[MAX_LOOPS];
static struct keel_loop_stats g_final[MAX_LOOPS];
static int g_main_wait_res = UNSET;

/* A recv on an idle socket: it waits until cancelled. */
struct idle_io {
	struct keel_task task;
	int i;
	char buf[64];
};

static int idle_io_step(struct keel_task *t);
static KEEL_TASK_TYPE(idle_io_task, struct idle_io, task, idle_io_step);

static int idle_io_step(struct keel_task *t)
{
	struct idle_io *w = keel_container_of(t, struct idle_io, task);

	KEEL_BEGIN(t);
	kt_add(&g_started, 1);
	KEEL_AWAIT(t, keel_recv(t, g_sv[w->i][0], w->buf, sizeof(w->buf), 0));
	kt_store(&g_io_res[w->i], keel_res(t));
	kt_add(&g_exited[w->i], 1);
	KEEL_END(t);
}

/* A long sleep: it ends only when cancelled. */
struct sleeper {
	struct keel_task task;
	int i;
};

static int sleeper_step(struct keel_task *t);
static KEEL_TASK_TYPE(sleeper_task, struct sleeper, task, sleeper_step);

static int sleeper_step(struct keel_task *t)
{
	struct sleeper *s = keel_container_of(t, struct sleeper, task);

	KEEL_BEGIN(t);
	kt_add(&g_started, 1);
	KEEL_AWAIT(t, keel_sleep(t, KT_MS(3600 * 1000)));
	kt_store(&g_sleep_res[s->i], keel_res(t));
	kt_add(&g_exited[s->i], 1);
	KEEL_END(t);
}

/*
 * Once cancelled, spins (yields) until its loop's recv and sleep tasks
 * have exited and the loop owns no op and no zombie, then records the
 * loop's counters.
 */
struct checker {
	struct keel_task task;
	int i;
	uint64_t until;
};

static int checker_step(struct keel_task *t);
static KEEL_TASK_TYPE(checker_task, struct checker, task, checker_step);

static int checker_step(struct keel_task *t)
{
	struct checker *c = keel_container_of(t, struct checker, task);
	struct keel_loop_stats st;

	KEEL_BEGIN(t);
	kt_add(&g_started, 1);
	KEEL_AWAIT(t, keel_sleep(t, KT_MS(3600 * 1000)));
	kt_store(&g_checker_res[c->i], keel_res(t));
	c->until = kt_now_ns() + KT_MS(5000);
	for (;;) {
		keel_loop_stats(keel_task_loop(t), &st);
		if (kt_load(&g_exited[c->i]) == 2 && !st.ops_inflight &&
		    !st.zombies)
			break;
		if (kt_now_ns() > c->until)
			break;
		KEEL_YIELD(t);
	}
	keel_loop_stats(keel_task_loop(t), &g_final[c->i]);
	kt_store(&g_checked[c->i], 1);
	KEEL_END(t);
}

static void idle_io_init(void *frame, void *arg)
{
	((struct idle_io *)frame)->i = (int)(intptr_t)arg;
}

static void sleeper_init(void *frame, void *arg)
{
	((struct sleeper *)frame)->i = (int)(intptr_t)arg;
}

static void checker_init(void *frame, void *arg)
{
	((struct checker *)frame)->i = (int)(intptr_t)arg;
}

enum shutdown_by {
	BY_MAIN,	 /* the main task calls keel_runtime_shutdown */
	BY_PLAIN_THREAD, /* a plain thread does */
	BY_MAIN_EXIT,	 /* the main task just exits */
};

static enum shutdown_by g_by;
static pthread_t g_shutdown_thread;

static void *shutdown_thread(void *arg)
{
	(void)arg;
	keel_runtime_shutdown(g_rt);
	keel_runtime_shutdown(g_rt); /* twice is harmless */
	return NULL;
}

struct shutdown_main {
	struct keel_task task;
	unsigned n, i;
};

static int shutdown_main_step(struct keel_task *t);
static KEEL_TASK_TYPE(shutdown_main_task, struct shutdown_main, task,
		      shutdown_main_step);

static int shutdown_main_step(struct keel_task *t)
{
	struct shutdown_main *m =
	    keel_container_of(t, struct shutdown_main, task);

	KEEL_BEGIN(t);
	m->n = keel_runtime_size(g_rt);
	for (m->i = 0; m->i < m->n; m->i++) {
		struct keel_loop *loop = keel_runtime_loop(g_rt, m->i);
		void *arg = (void *)(intptr_t)m->i;

		CHECK_EQ(keel_spawn_on(loop, &idle_io_task, KEEL_PRIO_NORMAL,
				       idle_io_init, arg),
			 0);
		CHECK_EQ(keel_spawn_on(loop, &sleeper_task, KEEL_PRIO_NORMAL,
				       sleeper_init, arg),
			 0);
		CHECK_EQ(keel_spawn_on(loop, &checker_task, KEEL_PRIO_NORMAL,
				       checker_init, arg),
			 0);
	}
	/* Everyone waits in its await before the shutdown starts. */
	for (m->i = 0; kt_load(&g_started) < (int)(3 * m->n) && m->i < 5000;
	     m->i++)
		KEEL_AWAIT(t, keel_sleep(t, KT_MS(1)));
	CHECK_EQ(kt_load(&g_started), 3 * m->n);
	KEEL_AWAIT(t, keel_sleep(t, KT_MS(10)));
	if (g_by == BY_MAIN_EXIT)
		KEEL_EXIT(t, 9);
	if (g_by == BY_MAIN)
		keel_runtime_shutdown(g_rt);
	else
		CHECK_EQ(pthread_create(&g_shutdown_thread, NULL,
					shutdown_thread, NULL),
			 0);
	KEEL_AWAIT(t, keel_sleep(t, KT_MS(3600 * 1000)));
	g_main_wait_res = keel_res(t);
	KEEL_EXIT(t, keel_res(t) == -ECANCELED ? 5 : 6);
}

static void run_shutdown(unsigned threads, enum shutdown_by by)
{
	struct keel_runtime *rt = rt_new(threads);
	int ret;

	g_by = by;
	for (unsigned i = 0; i < threads; i++)
		cr_assert_eq(
		    socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, g_sv[i]),
		    0);
	ret = keel_runtime_run(rt, &shutdown_main_task, NULL, NULL);
	if (by == BY_PLAIN_THREAD)
		pthread_join(g_shutdown_thread, NULL);
	kt_expect_no_failures();
	if (by == BY_MAIN_EXIT) {
		cr_assert_eq(ret, 9, "run returned %d", ret);
	} else {
		cr_assert_eq(ret, 5, "run returned %d", ret);
		cr_assert_eq(g_main_wait_res, -ECANCELED);
	}
	for (unsigned i = 0; i < threads; i++) {
		cr_assert_eq(g_io_res[i], -ECANCELED, "loop %u: recv gave %d",
			     i, g_io_res[i]);
		cr_assert_eq(g_sleep_res[i], -ECANCELED,
			     "loop %u: sleep gave %d", i, g_sleep_res[i]);
		cr_assert_eq(g_checker_res[i], -ECANCELED);
		cr_assert_eq(g_checked[i], 1, "loop %u: checker never ended",
			     i);
		cr_assert_eq(g_exited[i], 2, "loop %u: %d tasks exited", i,
			     g_exited[i]);
		cr_assert_eq(g_final[i].ops_inflight, 0,
			     "loop %u: %llu ops left", i,
			     (unsigned long long)g_final[i].ops_inflight);
		cr_assert_eq(g_final[i].zombies, 0, "loop %u: zombies", i);
		/* The recv stole nothing: the socket still works. */
		cr_assert_eq(write(g_sv[i][1], "x", 1), 1);
		char c = 0;

		cr_assert_eq(read(g_sv[i][0], &c, 1), 1);
		cr_assert_eq(c, 'x');
		close(g_sv[i][0]);
		close(g_sv[i][1]);
	}
	keel_runtime_destroy(rt);
}

Test(runtime, shutdown_by_main_cancels_io_and_sleeps_on_every_loop,
     .timeout = 10)
{
	run_shutdown(3, BY_MAIN);
}

Test(runtime, shutdown_from_plain_thread_cancels_every_loop, .timeout = 10)
{
	run_shutdown(3, BY_PLAIN_THREAD);
}

Test(runtime, main_exit_shuts_down_every_loop, .timeout = 10)
{
	run_shutdown(4, BY_MAIN_EXIT);
}

/* ---- the blocking pool
 * -------------------------------------------------------- */

#define JOBS 16

struct job_arg {
	int id;
	int value;
};

static int g_running;	     /* jobs that started */
static int g_release;	     /* lets the jobs return */
static int g_job_runs[JOBS]; /* times each job ran */
static int g_job_done[JOBS]; /* the job has returned */
static int g_job_res[JOBS];
static int g_done_at_resume[JOBS]; /* the job had returned at resume */
static int g_after_res[JOBS];	   /* an await after the job's */
static int g_job_delay_ms;	   /* after the release, before returning */

static int blocking_job(void *p)
{
	struct job_arg *a = p;

	kt_add(&g_running, 1);
	for (int i = 0; i < 10000 && !kt_load(&g_release); i++)
		usleep(1000);
	if (g_job_delay_ms)
		usleep((useconds_t)g_job_delay_ms * 1000);
	/* Still its owner: ASan reports this write if the task freed it. */
	a->value = a->id * 10 + 3;
	kt_add(&g_job_runs[a->id], 1);
	kt_store(&g_job_done[a->id], 1);
	return a->id * 10 + 3;
}

/* Awaits blocking_job(arg) and records the outcome. */
struct jobber {
	struct keel_task task;
	int id;
	struct job_arg *arg;
};

static int jobber_step(struct keel_task *t);
static KEEL_TASK_TYPE(jobber_task, struct jobber, task, jobber_step);

static int jobber_step(struct keel_task *t)
{
	struct jobber *j = keel_container_of(t, struct jobber, task);

	KEEL_BEGIN(t);
	j->arg = malloc(sizeof(*j->arg));
	CHECK(j->arg != NULL);
	j->arg->id = j->id;
	j->arg->value = -1;
	KEEL_AWAIT(t, keel_blocking(t, blocking_job, j->arg));
	kt_store(&g_done_at_resume[j->id], kt_load(&g_job_done[j->id]));
	kt_store(&g_job_res[j->id], keel_res(t));
	if (keel_res(t) >= 0)
		CHECK_EQ(j->arg->value, keel_res(t));
	free(j->arg);
	KEEL_AWAIT(t, keel_nop(t));
	g_after_res[j->id] = keel_res(t);
	KEEL_END(t);
}

static struct jobber *spawn_jobber(struct keel_loop *loop, int id,
				   unsigned flags)
{
	struct jobber *j =
	    keel_spawn(loop, &jobber_task, KEEL_PRIO_NORMAL | flags);

	CHECK(j != NULL);
	if (j)
		j->id = id;
	return j;
}

static void reset_jobs(void)
{
	for (int i = 0; i < JOBS; i++) {
		g_job_res[i] = UNSET;
		g_after_res[i] = UNSET;
	}
}

/*
 * Pool of 2 threads, queue of 4: jobs 0 and 1 occupy both threads; then
 * jobs 2..9 are submitted in one go: 2..5 are queued, 6..9 get -EAGAIN at
 * once; released, every accepted job completes with its own result.
 */
static int g_eagain_before_release;

struct saturator {
	struct keel_task task;
	int i;
};

static int saturator_step(struct keel_task *t);
static KEEL_TASK_TYPE(saturator_task, struct saturator, task, saturator_step);

static int saturator_step(struct keel_task *t)
{
	struct saturator *s = keel_container_of(t, struct saturator, task);

	KEEL_BEGIN(t);
	spawn_jobber(keel_task_loop(t), 0, 0);
	spawn_jobber(keel_task_loop(t), 1, 0);
	for (s->i = 0; kt_load(&g_running) < 2 && s->i < 5000; s->i++)
		KEEL_AWAIT(t, keel_sleep(t, KT_MS(1)));
	CHECK_EQ(kt_load(&g_running), 2);
	for (s->i = 2; s->i < 10; s->i++)
		spawn_jobber(keel_task_loop(t), s->i, 0);
	KEEL_AWAIT(t, keel_sleep(t, KT_MS(20)));
	for (s->i = 0; s->i < JOBS; s->i++)
		if (kt_load(&g_job_res[s->i]) == -EAGAIN)
			g_eagain_before_release++;
	CHECK_EQ(kt_load(&g_running), 2);
	kt_store(&g_release, 1);
	KEEL_END(t);
}

Test(runtime, blocking_pool_saturated_queue_gives_eagain, .timeout = 10)
{
	struct keel_loop *loop;

	cr_assert_eq(keel_blocking_pool_config(2, 4), 0);
	loop = kt_loop_new(NULL);
	reset_jobs();
	kt_spawn(loop, &saturator_task, KEEL_PRIO_NORMAL);
	kt_loop_run(loop);
	kt_expect_no_failures();
	cr_assert_eq(g_eagain_before_release, 4, "%d sends got -EAGAIN",
		     g_eagain_before_release);
	for (int id = 0; id < 10; id++) {
		if (id >= 6) {
			cr_assert_eq(g_job_res[id], -EAGAIN,
				     "job %d: %d (queue full)", id,
				     g_job_res[id]);
			cr_assert_eq(g_job_runs[id], 0);
		} else {
			cr_assert_eq(g_job_res[id], id * 10 + 3, "job %d: %d",
				     id, g_job_res[id]);
			cr_assert_eq(g_job_runs[id], 1, "job %d ran %d times",
				     id, g_job_runs[id]);
			cr_assert_eq(g_done_at_resume[id], 1);
		}
		cr_assert_eq(g_after_res[id], 0);
	}
	cr_assert_eq(g_running, 6);
	/* The pool exists now: it can no longer be resized. */
	cr_assert_eq(keel_blocking_pool_config(8, 8), -EBUSY);
	struct keel_loop_stats st = kt_stats(loop);

	cr_assert_eq(st.ops_inflight, 0);
	cr_assert_eq(st.zombies, 0);
	keel_loop_destroy(loop);
}

/*
 * A task cancelled while its job runs (or, with one pool thread busy,
 * while its job is still queued) resumes only after the job returned, with
 * the job's result (or its cause); its later awaits see the cause.
 */
static int g_resumed_early = UNSET;
static int g_blocker_id = -1;

struct job_canceller {
	struct keel_task task;
	struct jobber *j;
	int i;
};

static int job_canceller_step(struct keel_task *t);
static KEEL_TASK_TYPE(job_canceller_task, struct job_canceller, task,
		      job_canceller_step);

static int job_canceller_step(struct keel_task *t)
{
	struct job_canceller *c =
	    keel_container_of(t, struct job_canceller, task);

	KEEL_BEGIN(t);
	if (g_blocker_id >= 0) {
		/* Occupy the only pool thread first. */
		spawn_jobber(keel_task_loop(t), g_blocker_id, 0);
		for (c->i = 0; kt_load(&g_running) < 1 && c->i < 5000; c->i++)
			KEEL_AWAIT(t, keel_sleep(t, KT_MS(1)));
	}
	c->j = spawn_jobber(keel_task_loop(t), 0, KEEL_SPAWN_JOINABLE);
	KEEL_YIELD(t); /* it submits its job */
	for (c->i = 0; kt_load(&g_running) < 1 && c->i < 5000; c->i++)
		KEEL_AWAIT(t, keel_sleep(t, KT_MS(1)));
	CHECK(c->j != NULL);
	CHECK_EQ(keel_task_cancel(&c->j->task), 0);
	KEEL_AWAIT(t, keel_sleep(t, KT_MS(30)));
	g_resumed_early = kt_load(&g_job_res[0]) != UNSET;
	kt_store(&g_release, 1);
	KEEL_AWAIT(t, keel_join(t, &c->j->task));
	CHECK_EQ(keel_res(t), 0);
	KEEL_END(t);
}

static void run_job_cancel(unsigned threads, int blocker)
{
	struct keel_loop *loop;

	cr_assert_eq(keel_blocking_pool_config(threads, 4), 0);
	loop = kt_loop_new(NULL);
	reset_jobs();
	g_blocker_id = blocker;
	g_job_delay_ms = 20;
	kt_spawn(loop, &job_canceller_task, KEEL_PRIO_NORMAL);
	kt_loop_run(loop);
	kt_expect_no_failures();
	cr_assert_eq(g_resumed_early, 0,
		     "the cancelled task resumed while its job ran");
	cr_assert_eq(g_done_at_resume[0], 1,
		     "the task resumed before its job returned");
	cr_assert(g_job_res[0] == 3 || g_job_res[0] == -ECANCELED,
		  "the cancelled task got %d", g_job_res[0]);
	cr_assert_eq(g_job_runs[0], 1);
	cr_assert_eq(g_after_res[0], -ECANCELED,
		     "an await after the cancel gave %d", g_after_res[0]);
	if (blocker >= 0)
		cr_assert_eq(g_job_res[blocker], blocker * 10 + 3);
	struct keel_loop_stats st = kt_stats(loop);

	cr_assert_eq(st.ops_inflight, 0);
	cr_assert_eq(st.zombies, 0);
	keel_loop_destroy(loop);
}

Test(runtime, cancelled_task_waits_for_its_running_job, .timeout = 10)
{
	run_job_cancel(2, -1);
}

Test(runtime, cancelled_task_waits_for_its_queued_job, .timeout = 10)
{
	run_job_cancel(1, 5);
}

/*
 * Jobs from tasks on every loop of a runtime: each result comes back to
 * its own task on its own loop (runtime opts size the pool).
 */
#define POOL_TASKS_PER_LOOP 4
#define POOL_JOBS_PER_TASK  25

static int g_pool_ok;
static int g_pool_bad;

static int square_job(void *p)
{
	int *v = p;

	return *v * *v;
}

struct pool_user {
	struct keel_task task;
	int i, v;
	struct keel_loop *home;
};

static int pool_user_step(struct keel_task *t);
static KEEL_TASK_TYPE(pool_user_task, struct pool_user, task, pool_user_step);

static int pool_user_step(struct keel_task *t)
{
	struct pool_user *u = keel_container_of(t, struct pool_user, task);

	KEEL_BEGIN(t);
	u->home = keel_loop_current();
	for (u->i = 0; u->i < POOL_JOBS_PER_TASK; u->i++) {
		u->v = (int)(intptr_t)u->home % 1000 + u->i;
		KEEL_AWAIT(t, keel_blocking(t, square_job, &u->v));
		if (keel_res(t) == u->v * u->v &&
		    keel_loop_current() == u->home)
			kt_add(&g_pool_ok, 1);
		else
			kt_add(&g_pool_bad, 1);
	}
	KEEL_END(t);
}

struct pool_main {
	struct keel_task task;
	unsigned i, k;
};

static int pool_main_step(struct keel_task *t);
static KEEL_TASK_TYPE(pool_main_task, struct pool_main, task, pool_main_step);

static int pool_main_step(struct keel_task *t)
{
	struct pool_main *m = keel_container_of(t, struct pool_main, task);

	KEEL_BEGIN(t);
	for (m->i = 0; m->i < keel_runtime_size(g_rt); m->i++)
		for (m->k = 0; m->k < POOL_TASKS_PER_LOOP; m->k++)
			CHECK_EQ(keel_spawn_on(keel_runtime_loop(g_rt, m->i),
					       &pool_user_task,
					       KEEL_PRIO_NORMAL, NULL, NULL),
				 0);
	m->k =
	    keel_runtime_size(g_rt) * POOL_TASKS_PER_LOOP * POOL_JOBS_PER_TASK;
	for (m->i = 0; kt_load(&g_pool_ok) + kt_load(&g_pool_bad) < (int)m->k &&
		       m->i < 5000;
	     m->i++)
		KEEL_AWAIT(t, keel_sleep(t, KT_MS(1)));
	KEEL_EXIT(t, kt_load(&g_pool_ok));
}

Test(runtime, blocking_jobs_from_every_loop_return_to_their_task, .timeout = 10)
{
	struct keel_runtime_opts o = {
	    .threads = 3,
	    .no_signals = true,
	    .blocking_threads = 3,
	    .blocking_queue = 64,
	};
	int want = 3 * POOL_TASKS_PER_LOOP * POOL_JOBS_PER_TASK;
	int ret;

	cr_assert_eq(keel_runtime_create(&g_rt, &o), 0);
	ret = keel_runtime_run(g_rt, &pool_main_task, NULL, NULL);
	kt_expect_no_failures();
	cr_assert_eq(g_pool_bad, 0, "%d jobs came back wrong", g_pool_bad);
	cr_assert_eq(ret, want, "%d of %d jobs came back", ret, want);
	keel_runtime_destroy(g_rt);
}

/* ---- destroying a loop with blocking jobs out ------------------------------
 */

static int g_slow_runs[2];
static int g_slow_returned;
static int g_slow_release;

static int slow_job(void *p)
{
	int id = (int)(intptr_t)p;

	kt_add(&g_slow_runs[id], 1);
	for (int i = 0; i < 10000 && !kt_load(&g_slow_release); i++)
		usleep(1000);
	kt_store(&g_slow_returned, 1);
	return 7;
}

struct slow_jobber {
	struct keel_task task;
	int id;
};

static int slow_jobber_step(struct keel_task *t)
{
	struct slow_jobber *j = keel_container_of(t, struct slow_jobber, task);

	KEEL_BEGIN(t);
	KEEL_AWAIT(t, keel_blocking(t, slow_job, (void *)(intptr_t)j->id));
	KEEL_END(t);
}

static KEEL_TASK_TYPE(slow_jobber_task, struct slow_jobber, task,
		      slow_jobber_step);

/* Lets the running job return once destroy has long given up on the ops
 * the kernel holds (it waits 1 s for those). */
static void *slow_releaser(void *arg)
{
	(void)arg;
	usleep(1500 * 1000);
	kt_store(&g_slow_release, 1);
	return NULL;
}

/*
 * One pool thread: job 0 runs, job 1 waits in the queue. Destroying the
 * loop drops job 1 and waits for job 0, however long it runs: its result
 * goes to the loop, which must still be there (ASan: no use after free).
 */
Test(runtime, loop_destroy_waits_for_running_job_and_drops_queued_one,
     .timeout = 20)
{
	struct keel_loop *loop;
	pthread_t th;

	cr_assert_eq(keel_blocking_pool_config(1, 0), 0);
	loop = kt_loop_new(NULL);
	for (int id = 0; id < 2; id++) {
		struct slow_jobber *j = kt_spawn(loop, &slow_jobber_task, 0);

		j->id = id;
	}
	for (int i = 0; i < 10000 && !kt_load(&g_slow_runs[0]); i++) {
		keel_loop_step(loop, 0);
		usleep(1000);
	}
	cr_assert_eq(kt_load(&g_slow_runs[0]), 1);
	cr_assert_eq(pthread_create(&th, NULL, slow_releaser, NULL), 0);
	keel_loop_destroy(loop);
	cr_assert_eq(kt_load(&g_slow_returned), 1,
		     "destroy returned while the job was running");
	pthread_join(th, NULL);
	/* The queued job never ran (the pool thread is free for it now). */
	usleep(10 * 1000);
	cr_assert_eq(kt_load(&g_slow_runs[1]), 0);
}

/* ---- signals, in forked children --------------------------------------------
 */

enum child_mode {
	CHILD_PLAIN,	/* main sleeps; a signal shuts the runtime down */
	CHILD_SHIELDED, /* main ignores the shutdown: a 2nd signal kills */
};

static int g_child_fd = -1; /* the child's end of the report pipe */
static int g_reporter_started;
static int g_reporter_res = UNSET;

static void report(char c)
{
	if (write(g_child_fd, &c, 1) != 1)
		_exit(90);
}

/* On loop 1: sleeps until the shutdown cancels it, then reports 'c'. */
struct reporter {
	struct keel_task task;
};

static int reporter_step(struct keel_task *t);
static KEEL_TASK_TYPE(reporter_task, struct reporter, task, reporter_step);

static int reporter_step(struct keel_task *t)
{
	KEEL_BEGIN(t);
	kt_store(&g_reporter_started, 1);
	KEEL_AWAIT(t, keel_sleep(t, KT_MS(3600 * 1000)));
	g_reporter_res = keel_res(t);
	report('c');
	KEEL_END(t);
}

struct sig_main {
	struct keel_task task;
	enum child_mode mode;
	struct keel_shield shield;
	int i;
};

static int sig_main_step(struct keel_task *t);
static KEEL_TASK_TYPE(sig_main_task, struct sig_main, task, sig_main_step);

static void sig_main_init(void *frame, void *arg)
{
	((struct sig_main *)frame)->mode = *(enum child_mode *)arg;
}

static int sig_main_step(struct keel_task *t)
{
	struct sig_main *m = keel_container_of(t, struct sig_main, task);

	KEEL_BEGIN(t);
	if (keel_spawn_on(keel_runtime_loop(keel_runtime_current(), 1),
			  &reporter_task, KEEL_PRIO_NORMAL, NULL, NULL))
		KEEL_EXIT(t, 91);
	for (m->i = 0; !kt_load(&g_reporter_started) && m->i < 5000; m->i++)
		KEEL_AWAIT(t, keel_sleep(t, KT_MS(1)));
	if (m->mode == CHILD_SHIELDED &&
	    keel_shield_begin(t, &m->shield, UINT64_MAX))
		KEEL_EXIT(t, 92);
	report('r');
	KEEL_AWAIT(t, keel_sleep(t, KT_MS(20000)));
	if (m->mode == CHILD_SHIELDED)
		KEEL_EXIT(t, 93); /* never killed: a failure */
	KEEL_EXIT(t, keel_res(t) == -ECANCELED ? 0 : 94);
}

/* The child: a runtime with signals; exits with what run returned. */
static void child_main(enum child_mode mode)
{
	struct keel_runtime_opts o = {.threads = 2};
	struct keel_runtime *rt = NULL;
	int ret;

	if (keel_runtime_create(&rt, &o))
		_exit(95);
	ret = keel_runtime_run(rt, &sig_main_task, sig_main_init, &mode);
	keel_runtime_destroy(rt);
	if (ret == 0 && g_reporter_res != -ECANCELED)
		_exit(96);
	_exit(ret < 0 || ret > 255 ? 97 : ret);
}

struct child {
	pid_t pid;
	int report_fd; /* 'r': running, 'c': loop 1 saw the shutdown */
	int err_fd;    /* the child's stderr */
};

static void child_start(struct child *c, enum child_mode mode)
{
	int rp[2], ep[2];

	cr_assert_eq(pipe2(rp, O_CLOEXEC), 0);
	cr_assert_eq(pipe2(ep, O_CLOEXEC), 0);
	c->pid = fork();
	cr_assert_geq(c->pid, 0, "fork: %s", strerror(errno));
	if (c->pid == 0) {
		close(rp[0]);
		close(ep[0]);
		g_child_fd = rp[1];
		if (dup2(ep[1], STDERR_FILENO) < 0)
			_exit(98);
		child_main(mode);
	}
	close(rp[1]);
	close(ep[1]);
	c->report_fd = rp[0];
	c->err_fd = ep[0];
}

/* Wait (at most 5 s) for the child to report `want`. */
static void child_expect(struct child *c, char want)
{
	struct pollfd p = {.fd = c->report_fd, .events = POLLIN};
	char got = 0;

	cr_assert_eq(poll(&p, 1, 5000), 1, "the child never reported '%c'",
		     want);
	cr_assert_eq(read(c->report_fd, &got, 1), 1);
	cr_assert_eq(got, want, "the child reported '%c', expected '%c'", got,
		     want);
}

/* Wait (at most 5 s) for the child to end; SIGKILL it after that. */
static int child_wait(struct child *c)
{
	int status = 0;

	for (int i = 0; i < 5000; i++) {
		pid_t r = waitpid(c->pid, &status, WNOHANG);

		if (r == c->pid) {
			close(c->report_fd);
			close(c->err_fd);
			return status;
		}
		usleep(1000);
	}
	kill(c->pid, SIGKILL);
	waitpid(c->pid, &status, 0);
	close(c->report_fd);
	close(c->err_fd);
	cr_assert_fail("the child did not end within 5 s");
	return status;
}

static void run_graceful_signal(int sig)
{
	struct child c;
	int status;

	child_start(&c, CHILD_PLAIN);
	child_expect(&c, 'r');
	cr_assert_eq(kill(c.pid, sig), 0);
	child_expect(&c, 'c');
	status = child_wait(&c);
	cr_assert(WIFEXITED(status), "the child died of signal %d",
		  WIFSIGNALED(status) ? WTERMSIG(status) : 0);
	cr_assert_eq(WEXITSTATUS(status), 0, "the child exited %d",
		     WEXITSTATUS(status));
}

Test(runtime, sigterm_shuts_down_gracefully_and_exits_0, .timeout = 20)
{
	run_graceful_signal(SIGTERM);
}

Test(runtime, sigint_shuts_down_gracefully_and_exits_0, .timeout = 20)
{
	run_graceful_signal(SIGINT);
}

Test(runtime, second_signal_kills_the_process, .timeout = 20)
{
	struct child c;
	int status;

	child_start(&c, CHILD_SHIELDED);
	child_expect(&c, 'r');
	cr_assert_eq(kill(c.pid, SIGTERM), 0);
	/* Loop 1 saw the shutdown: the first signal was taken. */
	child_expect(&c, 'c');
	cr_assert_eq(kill(c.pid, SIGTERM), 0);
	status = child_wait(&c);
	cr_assert(WIFSIGNALED(status), "the child exited %d instead",
		  WIFEXITED(status) ? WEXITSTATUS(status) : -1);
	cr_assert_eq(WTERMSIG(status), SIGTERM);
}

Test(runtime, sigusr1_writes_task_dump_to_stderr, .timeout = 20)
{
	struct child c;
	char buf[16384];
	size_t len = 0;
	int status, dumps = 0;

	child_start(&c, CHILD_PLAIN);
	child_expect(&c, 'r');
	cr_assert_eq(kill(c.pid, SIGUSR1), 0);
	/* Both loops dump; read until both headers and the main task. */
	for (int i = 0; i < 500; i++) {
		struct pollfd p = {.fd = c.err_fd, .events = POLLIN};
		const char *at = buf;

		if (poll(&p, 1, 10) == 1) {
			ssize_t n =
			    read(c.err_fd, buf + len, sizeof(buf) - 1 - len);

			if (n > 0)
				len += (size_t)n;
		}
		buf[len] = '\0';
		dumps = 0;
		while ((at = strstr(at, "keel: task dump"))) {
			dumps++;
			at++;
		}
		if (dumps >= 2 && strstr(buf, "sig_main_task") &&
		    strstr(buf, "reporter_task"))
			break;
	}
	cr_assert_geq(dumps, 2, "%d dumps in: %s", dumps, buf);
	cr_assert_not_null(strstr(buf, "sig_main_task"), "dump: %s", buf);
	cr_assert_not_null(strstr(buf, "reporter_task"), "dump: %s", buf);
	/* Still running: a dump does not stop anything. */
	cr_assert_eq(kill(c.pid, SIGTERM), 0);
	child_expect(&c, 'c');
	status = child_wait(&c);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0,
		  "the child ended with status %#x", status);
}

/* ---- the two-phase stop: stop token, holds, grace ---------------------
 * The main task sets up the case and exits, which starts the shutdown; a
 * callback on each of loop 0's tokens records the order they were
 * cancelled in, and a waiter observing the stop token looks at the root
 * token when it wakes.
 */

enum { HOLD_NONE, HOLD_RELEASED, HOLD_KEPT };

static int g_hold_case;
static int g_seq;
static int g_stop_seq, g_root_seq;
static uint64_t g_stop_at, g_root_at;
static int g_root_cause;
static int g_waiter_res = UNSET;
static int g_root_at_wake = UNSET; /* root cancelled when the waiter woke */
static int g_root_after_release = UNSET;
static struct keel_token_cb g_stop_cb, g_root_cb;

static void stop_cancelled(struct keel_token *tok, int cause, void *arg)
{
	CHECK(!keel_token_cancelled(keel_loop_token(arg)));
	g_stop_seq = ++g_seq;
	g_stop_at = keel_loop_now(arg);
	(void)tok;
	(void)cause;
}

static void root_cancelled(struct keel_token *tok, int cause, void *arg)
{
	g_root_seq = ++g_seq;
	g_root_at = keel_loop_now(arg);
	g_root_cause = cause;
	(void)tok;
}

struct stop_waiter {
	struct keel_task task;
};

static int stop_waiter_step(struct keel_task *t)
{
	struct keel_loop *loop = keel_task_loop(t);

	KEEL_BEGIN(t);
	/* Woken by the stop token, not by a timer. */
	KEEL_AWAIT(t, keel_sleep(t, KT_MS(60000)));
	g_waiter_res = keel_res(t);
	g_root_at_wake = keel_token_cancelled(keel_loop_token(loop));
	if (g_hold_case == HOLD_RELEASED) {
		keel_loop_release(loop);
		g_root_after_release =
		    keel_token_cancelled(keel_loop_token(loop));
	}
	KEEL_END(t);
}

static KEEL_TASK_TYPE(stop_waiter_task, struct stop_waiter, task,
		      stop_waiter_step);

struct hold_main {
	struct keel_task task;
};

static int hold_main_step(struct keel_task *t)
{
	struct keel_loop *loop = keel_task_loop(t);
	struct keel_token *stop = keel_loop_stop_token(loop);
	struct stop_waiter *w;

	KEEL_BEGIN(t);
	CHECK(stop != NULL && stop != keel_loop_token(loop));
	CHECK(!keel_token_cancelled(stop));
	keel_token_on_cancel(stop, &g_stop_cb, stop_cancelled, loop);
	keel_token_on_cancel(keel_loop_token(loop), &g_root_cb, root_cancelled,
			     loop);
	if (g_hold_case != HOLD_NONE)
		keel_loop_hold(loop);
	w = keel_spawn(loop, &stop_waiter_task, 0);
	CHECK(w != NULL);
	if (w)
		CHECK_EQ(keel_task_set_token(&w->task, stop), 0);
	KEEL_END(t);
}

static KEEL_TASK_TYPE(hold_main_task, struct hold_main, task, hold_main_step);

static void run_hold_case(int hold_case, uint64_t grace_ns)
{
	struct keel_runtime_opts o = {
	    .threads = 1, .no_signals = true, .shutdown_grace_ns = grace_ns};
	struct keel_runtime *rt = NULL;

	g_hold_case = hold_case;
	cr_assert_eq(keel_runtime_create(&rt, &o), 0);
	g_rt = rt;
	cr_assert_eq(keel_runtime_run(rt, &hold_main_task, NULL, NULL), 0);
	keel_runtime_destroy(rt);
	cr_assert_eq(g_stop_seq, 1, "the stop token is cancelled first");
	cr_assert_eq(g_root_seq, 2, "then the root token");
	cr_assert_eq(g_root_cause, -ECANCELED);
	cr_assert_eq(g_waiter_res, -ECANCELED, "woken by the stop token");
}

Test(runtime, shutdown_without_holds_cancels_root_at_once, .timeout = 10)
{
	run_hold_case(HOLD_NONE, 0);
	/* The root was cancelled with the stop token, before the waiter ran. */
	cr_assert_eq(g_root_at_wake, 1);
}

Test(runtime, shutdown_with_a_hold_cancels_root_when_released, .timeout = 10)
{
	/* A grace far longer than the test's timeout: only the release can
	 * have ended it. */
	run_hold_case(HOLD_RELEASED, UINT64_MAX);
	cr_assert_eq(g_root_at_wake, 0, "the root waits for the hold");
	cr_assert_eq(g_root_after_release, 1, "and goes with the last one");
}

Test(runtime, shutdown_with_a_hold_kept_cancels_root_at_grace, .timeout = 10)
{
	run_hold_case(HOLD_KEPT, KT_MS(50));
	cr_assert_eq(g_root_at_wake, 0, "the root waits for the hold");
	/* A timer never fires early. */
	cr_assert_geq(g_root_at - g_stop_at, KT_MS(50));
}

/* An embedded loop: its stop token is its host's to cancel, and cancelling
 * it cancels nothing else. */
Test(runtime, embedded_loop_stop_token_is_the_hosts, .timeout = 10)
{
	struct keel_loop *loop = NULL;

	cr_assert_eq(keel_loop_create(&loop, NULL), 0);
	struct keel_token *stop = keel_loop_stop_token(loop);

	cr_assert_not_null(stop);
	keel_loop_hold(loop);
	keel_token_cancel(stop);
	cr_assert(keel_token_cancelled(stop));
	cr_assert_not(keel_token_cancelled(keel_loop_token(loop)));
	keel_loop_release(loop);
	cr_assert_not(keel_token_cancelled(keel_loop_token(loop)));
	keel_loop_destroy(loop);
}

/* ---- no main task ----------------------------------------------------- */

struct waiter_until_shutdown {
	struct keel_task task;
};

static int g_no_main_res = 1;

static int no_main_waiter_step(struct keel_task *t)
{
	KEEL_BEGIN(t);
	KEEL_AWAIT(t, keel_sleep(t, UINT64_MAX / 2));
	__atomic_store_n(&g_no_main_res, keel_res(t), __ATOMIC_RELEASE);
	KEEL_END(t);
}

static KEEL_TASK_TYPE(no_main_waiter_task, struct waiter_until_shutdown, task,
		      no_main_waiter_step);

static void *shutdown_later(void *arg)
{
	usleep(50 * 1000);
	keel_runtime_shutdown(arg);
	return NULL;
}

Test(runtime, run_without_main_serves_until_shutdown, .timeout = 10)
{
	struct keel_runtime_opts o = {.threads = 2, .no_signals = true};
	struct keel_runtime *rt;
	pthread_t th;

	cr_assert_eq(keel_runtime_create(&rt, &o), 0);
	cr_assert_eq(keel_spawn_on(keel_runtime_loop(rt, 1),
				   &no_main_waiter_task, 0, NULL, NULL),
		     0);
	cr_assert_eq(pthread_create(&th, NULL, shutdown_later, rt), 0);
	/* No main task: the run lasts until the shutdown, and is 0. */
	cr_expect_eq(keel_runtime_run(rt, NULL, NULL, NULL), 0);
	pthread_join(th, NULL);
	cr_expect_eq(__atomic_load_n(&g_no_main_res, __ATOMIC_ACQUIRE),
		     -ECANCELED);
	keel_runtime_destroy(rt);
}
