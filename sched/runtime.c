/* SPDX-License-Identifier: MIT */
/*
 * runtime.c: N loops on N threads (semantics in keel/loop.h).
 *
 * Each loop is created on the thread that runs it (a SINGLE_ISSUER ring
 * belongs to its creator). Runtime loops are `persistent`: idle, they
 * block in the kernel until another thread posts to their inbox, instead
 * of returning. Shutdown posts an item to every loop that clears
 * `persistent` and begins its two-phase stop (the stop token now, the root
 * token once the loop's holds are gone or the grace has passed), so each
 * loop returns once its tasks have exited and their ops drained.
 *
 * Signals: SIGINT, SIGTERM and SIGUSR1 are blocked in every runtime thread
 * and read from a signalfd by a task on loop 0. The first SIGINT/SIGTERM
 * restores their default action (so a second one kills the process) and
 * starts the shutdown.
 */
#include "loop.h"

#include <errno.h>
#include <keel/loop.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>

struct worker {
	struct keel_runtime *rt;
	unsigned index;
	int cpu; /* -1: not pinned */
	pthread_t thread;
	bool joinable; /* thread was created: join it */
	struct keel_loop *loop;
	int err;
	struct keel__remote_item shutdown;
	struct keel__remote_item dump;
	int dump_posted;
	/*
	 * Loop i's counters for other threads: the loop's own fields are
	 * plain, so only its thread reads them; a reader posts `publish`,
	 * which copies them here with atomic stores, and reads the last copy.
	 * The final copy is taken just before the loop goes; `gone` (under
	 * rt->lock) then says nothing may be posted to it any more.
	 */
	struct keel__remote_item publish;
	bool publish_posted; /* under rt->lock */
	bool gone;	     /* under rt->lock */
	struct keel_loop_stats published;
};

struct keel_runtime {
	unsigned n;
	struct worker *w;
	struct keel_runtime_opts opts;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	unsigned started; /* workers that created their loop (or failed) */
	unsigned stopped; /* loops whose run returned */
	bool go;	  /* keel_runtime_run: workers may run */
	int shutting_down;
	int main_status;
	bool signals;
	sigset_t old_mask;
};

static __thread struct keel_runtime *current_runtime;

struct keel_runtime *keel_runtime_current(void)
{
	return current_runtime;
}

unsigned keel_runtime_size(const struct keel_runtime *rt)
{
	return rt->n;
}

struct keel_loop *keel_runtime_loop(struct keel_runtime *rt, unsigned i)
{
	return i < rt->n ? rt->w[i].loop : NULL;
}

#define NSTATS (sizeof(struct keel_loop_stats) / sizeof(uint64_t))

static void publish_stats(struct worker *w)
{
	struct keel_loop_stats st;
	uint64_t *from = (uint64_t *)&st, *to = (uint64_t *)&w->published;

	keel_loop_stats(w->loop, &st);
	for (size_t k = 0; k < NSTATS; k++)
		__atomic_store_n(&to[k], from[k], __ATOMIC_RELAXED);
}

static void publish_run(struct keel_loop *loop, struct keel__remote_item *it)
{
	struct worker *w = keel_container_of(it, struct worker, publish);

	pthread_mutex_lock(&w->rt->lock);
	w->publish_posted = false;
	pthread_mutex_unlock(&w->rt->lock);
	publish_stats(w);
	(void)loop;
}

/* The last copy, and the loop asked for a fresh one unless it is gone. */
int keel_runtime_loop_stats(struct keel_runtime *rt, unsigned i,
			    struct keel_loop_stats *out)
{
	if (i >= rt->n)
		return -EINVAL;
	struct worker *w = &rt->w[i];
	uint64_t *to = (uint64_t *)out;

	pthread_mutex_lock(&rt->lock);
	if (!w->gone && w->loop && keel__current_core == &w->loop->io.core) {
		pthread_mutex_unlock(&rt->lock);
		keel_loop_stats(w->loop, out); /* the loop's own thread */
		return 0;
	}
	if (!w->gone && w->loop && !w->publish_posted) {
		w->publish_posted = true;
		keel__remote_post(w->loop, &w->publish);
	}
	pthread_mutex_unlock(&rt->lock);
	for (size_t k = 0; k < NSTATS; k++)
		to[k] = __atomic_load_n(&((uint64_t *)&w->published)[k],
					__ATOMIC_RELAXED);
	return 0;
}

/* Take the final counters; nothing is posted to the loop after this. */
static void loop_going(struct worker *w)
{
	publish_stats(w);
	pthread_mutex_lock(&w->rt->lock);
	w->gone = true;
	pthread_mutex_unlock(&w->rt->lock);
}

static void shutdown_run(struct keel_loop *loop, struct keel__remote_item *it)
{
	struct worker *w = keel_container_of(it, struct worker, shutdown);
	uint64_t grace = w->rt->opts.shutdown_grace_ns;

	loop->persistent = false;
	keel__loop_begin_stop(loop, grace ? grace : 30 * 1000000000ull);
}

static void dump_run(struct keel_loop *loop, struct keel__remote_item *it)
{
	struct worker *w = keel_container_of(it, struct worker, dump);

	__atomic_store_n(&w->dump_posted, 0, __ATOMIC_RELEASE);
	keel_loop_dump(loop, STDERR_FILENO);
}

void keel_runtime_shutdown(struct keel_runtime *rt)
{
	if (__atomic_exchange_n(&rt->shutting_down, 1, __ATOMIC_ACQ_REL))
		return;
	for (unsigned i = 0; i < rt->n; i++)
		keel__remote_post(rt->w[i].loop, &rt->w[i].shutdown);
}

static void pin(struct worker *w)
{
	cpu_set_t set;

	if (w->cpu < 0)
		return;
	CPU_ZERO(&set);
	CPU_SET(w->cpu, &set);
	/* Best effort: an unpinned loop still works. */
	pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

/*
 * A loop that has stopped may still be posted to by another that has not
 * (a last notification, a wake): no loop is destroyed until all stopped.
 */
static void all_stopped(struct keel_runtime *rt)
{
	pthread_mutex_lock(&rt->lock);
	rt->stopped++;
	pthread_cond_broadcast(&rt->cond);
	while (rt->stopped < rt->n)
		pthread_cond_wait(&rt->cond, &rt->lock);
	pthread_mutex_unlock(&rt->lock);
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	struct keel_runtime *rt = w->rt;

	pin(w);
	current_runtime = rt;
	w->err = keel_loop_create(&w->loop, &rt->opts.loop);
	if (!w->err) {
		w->loop->persistent = true;
		w->shutdown.run = shutdown_run;
		w->dump.run = dump_run;
		w->publish.run = publish_run;
	}
	pthread_mutex_lock(&rt->lock);
	rt->started++;
	pthread_cond_broadcast(&rt->cond);
	while (!rt->go)
		pthread_cond_wait(&rt->cond, &rt->lock);
	pthread_mutex_unlock(&rt->lock);
	if (!w->err) {
		keel_loop_run(w->loop);
		all_stopped(rt);
		loop_going(w);
		keel_loop_destroy(w->loop);
	}
	return NULL;
}

/* The CPUs this process may run on, in order. */
static int allowed_cpus(int *cpus, int max)
{
	cpu_set_t set;
	int n = 0;

	if (sched_getaffinity(0, sizeof(set), &set))
		return 0;
	for (int c = 0; c < CPU_SETSIZE && n < max; c++)
		if (CPU_ISSET(c, &set))
			cpus[n++] = c;
	return n;
}

/* The signals a runtime takes over: shutdown, and task dumps. */
static void runtime_signals(sigset_t *set)
{
	sigemptyset(set);
	sigaddset(set, SIGINT);
	sigaddset(set, SIGTERM);
	sigaddset(set, SIGUSR1);
}

static void start_workers(struct keel_runtime *rt)
{
	pthread_mutex_lock(&rt->lock);
	rt->go = true;
	pthread_cond_broadcast(&rt->cond);
	pthread_mutex_unlock(&rt->lock);
}

int keel_runtime_create(struct keel_runtime **out,
			const struct keel_runtime_opts *opts)
{
	struct keel_runtime *rt = calloc(1, sizeof(*rt));
	int cpus[CPU_SETSIZE];
	int ncpus = allowed_cpus(cpus, CPU_SETSIZE);
	int err = 0;

	if (!rt)
		return -ENOMEM;
	if (opts)
		rt->opts = *opts;
	rt->n = rt->opts.threads ? rt->opts.threads
				 : (unsigned)(ncpus > 0 ? ncpus : 1);
	rt->w = calloc(rt->n, sizeof(*rt->w));
	if (!rt->w) {
		free(rt);
		return -ENOMEM;
	}
	pthread_mutex_init(&rt->lock, NULL);
	pthread_cond_init(&rt->cond, NULL);
	if (rt->opts.blocking_threads || rt->opts.blocking_queue)
		keel_blocking_pool_config(rt->opts.blocking_threads,
					  rt->opts.blocking_queue);
	/* Block the runtime's signals before any thread inherits the mask. */
	rt->signals = !rt->opts.no_signals;
	if (rt->signals) {
		sigset_t set;

		runtime_signals(&set);
		pthread_sigmask(SIG_BLOCK, &set, &rt->old_mask);
	}
	for (unsigned i = 0; i < rt->n; i++) {
		struct worker *w = &rt->w[i];

		w->rt = rt;
		w->index = i;
		w->cpu = rt->opts.pin && ncpus ? cpus[i % (unsigned)ncpus] : -1;
	}
	/* Loop 0 belongs to the calling thread. */
	pin(&rt->w[0]);
	err = rt->w[0].err = keel_loop_create(&rt->w[0].loop, &rt->opts.loop);
	rt->started = 1;
	for (unsigned i = 1; i < rt->n && !err; i++)
		if (pthread_create(&rt->w[i].thread, NULL, worker_main,
				   &rt->w[i])) {
			rt->w[i].err = -EAGAIN;
			rt->started++;
		} else {
			rt->w[i].joinable = true;
		}
	pthread_mutex_lock(&rt->lock);
	while (!err && rt->started < rt->n)
		pthread_cond_wait(&rt->cond, &rt->lock);
	pthread_mutex_unlock(&rt->lock);
	for (unsigned i = 0; i < rt->n; i++)
		if (!err && rt->w[i].err)
			err = rt->w[i].err;
	if (err) {
		/* Let the loops that exist run dry and go. */
		for (unsigned i = 1; i < rt->n; i++)
			if (rt->w[i].loop)
				rt->w[i].loop->persistent = false;
		start_workers(rt);
		/* Every thread, also one whose loop failed: it still
		 * waits for `go` on rt, which is freed below. */
		for (unsigned i = 1; i < rt->n; i++)
			if (rt->w[i].joinable)
				pthread_join(rt->w[i].thread, NULL);
		if (rt->w[0].loop)
			keel_loop_destroy(rt->w[0].loop);
		if (rt->signals)
			pthread_sigmask(SIG_SETMASK, &rt->old_mask, NULL);
		free(rt->w);
		free(rt);
		return err;
	}
	rt->w[0].loop->persistent = true;
	rt->w[0].shutdown.run = shutdown_run;
	rt->w[0].dump.run = dump_run;
	rt->w[0].publish.run = publish_run;
	*out = rt;
	return 0;
}

void keel_runtime_destroy(struct keel_runtime *rt)
{
	if (!rt)
		return;
	pthread_mutex_destroy(&rt->lock);
	pthread_cond_destroy(&rt->cond);
	free(rt->w);
	free(rt);
}

/* ---- spawning on another loop ---------------------------------------- */

struct spawn_request {
	struct keel__remote_item item;
	const struct keel_task_type *type;
	unsigned flags;
	keel_init_fn init;
	void *arg;
};

static void spawn_run(struct keel_loop *loop, struct keel__remote_item *it)
{
	struct spawn_request *req =
	    keel_container_of(it, struct spawn_request, item);
	void *frame = keel_spawn(loop, req->type, req->flags);

	if (frame && req->init)
		req->init(frame, req->arg);
	free(req);
}

int keel_spawn_on(struct keel_loop *loop, const struct keel_task_type *type,
		  unsigned flags, keel_init_fn init, void *arg)
{
	if (keel__current_core == &loop->io.core) {
		void *frame = keel_spawn(loop, type, flags);

		if (!frame)
			return -ENOMEM;
		if (init)
			init(frame, arg);
		return 0;
	}
	struct spawn_request *req = malloc(sizeof(*req));

	if (!req)
		return -ENOMEM;
	req->item.run = spawn_run;
	req->type = type;
	req->flags = flags;
	req->init = init;
	req->arg = arg;
	keel__remote_post(loop, &req->item);
	return 0;
}

/* ---- the main task and signals ----------------------------------------- */

struct main_task {
	struct keel_task task;
	struct keel_runtime *rt;
	const struct keel_task_type *type;
	keel_init_fn init;
	void *arg;
	void *child;
	struct keel_shield shield;
};

static int main_step(struct keel_task *t)
{
	struct main_task *m = keel_container_of(t, struct main_task, task);

	KEEL_BEGIN(t);
	if (!m->type) {
		/* No main task: the loops serve until a shutdown (a signal,
		 * keel_runtime_shutdown()) cancels this root-token sleep. */
		KEEL_AWAIT(t, keel_sleep(t, UINT64_MAX / 2));
		m->rt->main_status = 0;
		KEEL_END(t);
	}
	m->child = keel_spawn(t->loop, m->type, KEEL_SPAWN_JOINABLE);
	if (!m->child) {
		m->rt->main_status = -ENOMEM;
	} else {
		if (m->init)
			m->init(m->child, m->arg);
		/* Shielded: a shutdown must not cut this join short, it is
		 * what reports the main task's real exit status. */
		if (keel_shield_begin(t, &m->shield, UINT64_MAX))
			m->shield.own = NULL;
		KEEL_AWAIT(t, keel_join(t, keel_task_of(m->type, m->child)));
		m->rt->main_status = keel_res(t);
		if (m->shield.own)
			keel_shield_end(t, &m->shield);
	}
	keel_runtime_shutdown(m->rt);
	KEEL_END(t);
}

static KEEL_TASK_TYPE(runtime_main_task, struct main_task, task, main_step);

struct signal_task {
	struct keel_task task;
	struct keel_runtime *rt;
	int fd;
	int res;
	struct signalfd_siginfo si;
};

static void dump_all(struct keel_runtime *rt)
{
	for (unsigned i = 0; i < rt->n; i++) {
		struct worker *w = &rt->w[i];

		if (!__atomic_exchange_n(&w->dump_posted, 1, __ATOMIC_ACQ_REL))
			keel__remote_post(w->loop, &w->dump);
	}
}

/* A restricted ring without KEEL_OPS_FILES (io/restrict.c). */
static bool reads_refused(struct keel_loop *loop)
{
	return loop->io.restricted &&
	       !keel__op_allowed(&loop->io, IORING_OP_READ);
}

static int signal_step(struct keel_task *t)
{
	struct signal_task *s = keel_container_of(t, struct signal_task, task);

	KEEL_BEGIN(t);
	for (;;) {
		if (!reads_refused(t->loop)) {
			KEEL_AWAIT(t, keel_read(t, s->fd, &s->si, sizeof(s->si),
						KEEL_OFF_CURRENT));
			s->res = keel_res(t);
		} else {
			/* A restricted ring that refuses reads (net only):
			 * wait for readiness, then read it here (the fd is
			 * nonblocking then). */
			KEEL_AWAIT(t, keel__poll_in(t, s->fd));
			s->res = keel_res(t);
			if (s->res >= 0) {
				ssize_t n = read(s->fd, &s->si, sizeof(s->si));

				s->res = n < 0 ? -errno : (int)n;
				if (s->res == -EAGAIN)
					continue;
			}
		}
		if (s->res == (int)sizeof(s->si) &&
		    s->si.ssi_signo == SIGUSR1) {
			dump_all(s->rt);
			continue;
		}
		if (s->res == -ECANCELED)
			break; /* the runtime is shutting down */
		/*
		 * A SIGINT/SIGTERM: the next one kills the process. So does
		 * the first after a read that failed (a seccomp filter that
		 * refuses it, say): better killed than never stopped.
		 */
		sigset_t set;

		sigemptyset(&set);
		sigaddset(&set, SIGINT);
		sigaddset(&set, SIGTERM);
		signal(SIGINT, SIG_DFL);
		signal(SIGTERM, SIG_DFL);
		pthread_sigmask(SIG_UNBLOCK, &set, NULL);
		if (s->res == (int)sizeof(s->si))
			keel_runtime_shutdown(s->rt);
		break;
	}
	KEEL_AWAIT(t, keel_close(t, s->fd));
	KEEL_END(t);
}

static KEEL_TASK_TYPE(runtime_signal_task, struct signal_task, task,
		      signal_step);

int keel_runtime_run(struct keel_runtime *rt,
		     const struct keel_task_type *main_type, keel_init_fn init,
		     void *arg)
{
	struct keel_loop *loop0 = rt->w[0].loop;
	struct signal_task *s = NULL;

	/*
	 * The signals are blocked in every runtime thread: without the
	 * signalfd that reads them, SIGTERM would be ignored for good and
	 * the service could only be killed. So no signalfd, no run.
	 */
	if (rt->signals) {
		sigset_t set;

		runtime_signals(&set);
		/* Nonblocking when the signal task must read it itself. */
		int fd = signalfd(
		    -1, &set,
		    SFD_CLOEXEC | (reads_refused(loop0) ? SFD_NONBLOCK : 0));

		if (fd < 0)
			return -errno;
		s = keel_spawn(loop0, &runtime_signal_task, 0);
		if (!s) {
			close(fd);
			return -ENOMEM;
		}
		s->rt = rt;
		s->fd = fd;
	}
	struct main_task *m = keel_spawn(loop0, &runtime_main_task, 0);

	if (!m) {
		if (s)
			close(s->fd); /* its task never runs: freed unrun */
		return -ENOMEM;
	}
	m->rt = rt;
	m->type = main_type;
	m->init = init;
	m->arg = arg;
	current_runtime = rt;
	start_workers(rt);
	int err = keel_loop_run(loop0);

	all_stopped(rt);
	for (unsigned i = 1; i < rt->n; i++)
		pthread_join(rt->w[i].thread, NULL);
	loop_going(&rt->w[0]);
	keel_loop_destroy(loop0);
	current_runtime = NULL;
	for (unsigned i = 0; i < rt->n; i++)
		rt->w[i].loop = NULL;
	if (rt->signals)
		pthread_sigmask(SIG_SETMASK, &rt->old_mask, NULL);
	return err ? err : rt->main_status;
}
