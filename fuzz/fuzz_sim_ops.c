/* SPDX-License-Identifier: MIT */
/*
 * fuzz_sim_ops.c: sequences of ops on the simulated kernel (keel/sim.h),
 * spelled by the input. Each input builds a fresh machine (its seed, its
 * latency and short-transfer rate, one or two loops: the first bytes),
 * connects two socket pairs, then reads commands: spawn a worker (it
 * sleeps, receives, sends, runs a nop, or closes a socket, some under a
 * linked timeout, in a loop), cancel or kill a worker, make one panic or
 * exit at its next resume, reset a connection, let virtual time pass.
 * Workers may sit on either loop; the sockets are the machine's, so ops
 * of both loops race on them.
 *
 * At the end every loop's root token is cancelled, a cleanup task closes
 * what is left open, and the machine runs until nothing is alive. Then,
 * as at the end of every seed of `make sim`: no task or zombie left, no
 * op in flight, no timer armed, no ring buffer or frame held, every
 * descriptor closed (keel_sim_check); and every result a worker saw was
 * one its op may return. A broken promise aborts (libFuzzer keeps the
 * input); the sanitizers catch a frame freed while the kernel still holds
 * an op that writes into it.
 */
#include "program.h"

#include <keel/sim.h>

#define MAX_WORKERS 16
#define PAIRS	    2
#define PORT	    7400
#define MS	    1000000ull

enum role { SLEEP, RECV, SEND, NOP, CLOSE, NROLES };

struct world {
	struct keel_sim *sim;
	struct keel_loop *loops[2];
	unsigned nloops;
	int fds[2 * PAIRS]; /* client, server of each pair; -1: closed */
	int lfd;
	struct keel_task *workers[MAX_WORKERS]; /* NULL once ended */
	bool setup_done;
};

struct worker {
	struct keel_task task;
	struct world *w;
	unsigned id, rounds;
	enum role role;
	int fd;
	uint64_t ns;
	bool timeout;
	bool panic_next, exit_next;
	char buf[512];
};

struct setup {
	struct keel_task task;
	struct world *w;
	unsigned i;
	struct sockaddr_storage ss;
	socklen_t sslen;
};

struct cleanup {
	struct keel_task task;
	struct world *w;
	unsigned i;
};

static int worker_step(struct keel_task *t);
static int setup_step(struct keel_task *t);
static int cleanup_step(struct keel_task *t);
static KEEL_TASK_TYPE(fz_worker, struct worker, task, worker_step);
static KEEL_TASK_TYPE(fz_setup, struct setup, task, setup_step);
static KEEL_TASK_TYPE(fz_cleanup, struct cleanup, task, cleanup_step);

static void worker_gone(void *arg)
{
	struct worker *wk = arg;

	wk->w->workers[wk->id] = NULL;
}

/* What each role's op may end with (on top of its own count). */
static void check_result(const struct worker *wk, int res)
{
	switch (res) {
	case 0:
	case -ECANCELED:
	case -ETIMEDOUT:
		return;
	case -EBADF:	  /* its socket was closed under it */
	case -ECONNRESET: /* reset */
	case -EPIPE:	  /* reset, then a send */
	case -ENOTCONN:	  /* reset, then a recv */
		if (wk->role == RECV || wk->role == SEND || wk->role == CLOSE)
			return;
		break;
	default:
		if (res > 0 && (wk->role == RECV || wk->role == SEND) &&
		    (size_t)res <= sizeof(wk->buf))
			return;
		break;
	}
	violation("worker %u (role %d): result %d (%s)", wk->id, (int)wk->role,
		  res, keel_strerror(res));
}

static int worker_step(struct keel_task *t)
{
	struct worker *wk = keel_container_of(t, struct worker, task);

	KEEL_BEGIN(t);
	for (; wk->rounds; wk->rounds--) {
		if (wk->panic_next)
			keel_panic("worker %u panics", wk->id);
		if (wk->exit_next)
			KEEL_EXIT(t, 0);
		if (wk->timeout)
			keel_op_timeout(t, wk->ns / 2 + 1);
		switch (wk->role) {
		case SLEEP:
			KEEL_AWAIT(t, keel_sleep(t, wk->ns));
			break;
		case RECV:
			KEEL_AWAIT(t, keel_recv(t, wk->fd, wk->buf,
						sizeof(wk->buf), 0));
			break;
		case SEND:
			memset(wk->buf, (int)wk->rounds, sizeof(wk->buf));
			KEEL_AWAIT(t, keel_send(t, wk->fd, wk->buf,
						sizeof(wk->buf), MSG_NOSIGNAL));
			break;
		case NOP:
			KEEL_AWAIT(t, keel_nop(t));
			break;
		default:
			KEEL_AWAIT(t, keel_close(t, wk->fd));
			/*
			 * Closed whatever it reports (but -EAGAIN/-ENOMEM:
			 * never submitted): the cleanup does not close it
			 * again, so a close the kernel failed to run is a
			 * descriptor keel_sim_check finds open. No socket is
			 * made after the setup, so a number closed twice is
			 * -EBADF, never another socket.
			 */
			if (keel_res(t) != 0 && keel_res(t) != -EBADF &&
			    keel_res(t) != -EAGAIN && keel_res(t) != -ENOMEM)
				violation("worker %u: close: %s", wk->id,
					  keel_strerror(keel_res(t)));
			if (keel_res(t) != -EAGAIN && keel_res(t) != -ENOMEM)
				for (unsigned i = 0; i < 2 * PAIRS; i++)
					if (wk->w->fds[i] == wk->fd)
						wk->w->fds[i] = -1;
			KEEL_EXIT(t, 0);
		}
		check_result(wk, keel_res(t));
		if (keel_token_cancelled(keel_task_token(t)))
			KEEL_EXIT(t, -ECANCELED);
		/* a reset or closed socket: nothing more to do with it */
		if (keel_res(t) < 0 && keel_res(t) != -ETIMEDOUT &&
		    keel_res(t) != -ECANCELED)
			KEEL_EXIT(t, keel_res(t));
		if (keel_res(t) == 0 && wk->role == RECV)
			KEEL_EXIT(t, 0);
	}
	KEEL_END(t);
}

static int setup_step(struct keel_task *t)
{
	struct setup *s = keel_container_of(t, struct setup, task);
	struct world *w = s->w;

	KEEL_BEGIN(t);
	keel_net_parse_addr("127.0.0.1", PORT, &s->ss, &s->sslen);
	for (s->i = 0; s->i < PAIRS; s->i++) {
		KEEL_AWAIT(t, keel_socket(t, AF_INET, SOCK_STREAM, 0));
		if (keel_res(t) < 0)
			violation("socket: %s", keel_strerror(keel_res(t)));
		w->fds[2 * s->i] = keel_res(t);
		KEEL_AWAIT(t,
			   keel_connect(t, w->fds[2 * s->i],
					(struct sockaddr *)&s->ss, s->sslen));
		if (keel_res(t) < 0)
			violation("connect: %s", keel_strerror(keel_res(t)));
		KEEL_AWAIT(t, keel_accept(t, w->lfd, NULL, NULL, 0));
		if (keel_res(t) < 0)
			violation("accept: %s", keel_strerror(keel_res(t)));
		w->fds[2 * s->i + 1] = keel_res(t);
	}
	w->setup_done = true;
	KEEL_END(t);
}

/* Runs under the cancelled root token: keel_close still works there. */
static int cleanup_step(struct keel_task *t)
{
	struct cleanup *c = keel_container_of(t, struct cleanup, task);
	struct world *w = c->w;
	int fd;

	KEEL_BEGIN(t);
	for (c->i = 0; c->i < 2 * PAIRS; c->i++) {
		fd = w->fds[c->i];
		if (fd < 0)
			continue;
		w->fds[c->i] = -1;
		KEEL_AWAIT(t, keel_close(t, fd));
	}
	if (w->lfd >= 0) {
		fd = w->lfd;
		w->lfd = -1;
		KEEL_AWAIT(t, keel_close(t, fd));
	}
	KEEL_END(t);
}

static void spawn_worker(struct world *w, struct program *pr)
{
	uint8_t a = next_byte(pr), b = next_byte(pr), c = next_byte(pr);
	unsigned id;

	for (id = 0; id < MAX_WORKERS && w->workers[id]; id++)
		;
	if (id == MAX_WORKERS)
		return;
	struct keel_loop *loop = w->loops[(a >> 7) % w->nloops];
	struct worker *wk = keel_spawn(loop, &fz_worker, KEEL_PRIO_NORMAL);

	if (!wk)
		violation("keel_spawn: out of memory");
	wk->w = w;
	wk->id = id;
	wk->role = (enum role)(a % NROLES);
	wk->fd = w->fds[(a >> 3) % (2 * PAIRS)];
	wk->rounds = 1 + b % 8;
	wk->timeout = b & 0x80;
	wk->ns = (uint64_t)c * 50000;
	if (wk->fd < 0 && wk->role >= RECV && wk->role != NOP)
		wk->role = SLEEP; /* its socket is closed already */
	w->workers[id] = keel_task_of(&fz_worker, wk);
	/* At the spawn, not in its first step: a worker killed before it
	 * ever ran must still leave its slot. */
	if (keel_defer(w->workers[id], worker_gone, wk))
		violation("keel_defer: out of memory");
}

static void run(struct world *w, uint64_t ns)
{
	int err = keel_sim_run(w->sim, ns);

	if (err && err != -ETIME && err != -EDEADLK)
		violation("keel_sim_run: %s", keel_strerror(err));
}

static void check_loops(struct world *w)
{
	for (unsigned i = 0; i < w->nloops; i++) {
		struct keel_loop_stats st;

		keel_loop_stats(w->loops[i], &st);
		if (st.tasks_live || st.zombies || st.ops_inflight ||
		    st.timers_armed || st.bufs_in_use || st.frames_live)
			violation(
			    "loop %u at the end: %llu tasks, %llu zombies, "
			    "%llu ops, %llu timers, %llu buffers, %llu "
			    "frames",
			    i, (unsigned long long)st.tasks_live,
			    (unsigned long long)st.zombies,
			    (unsigned long long)st.ops_inflight,
			    (unsigned long long)st.timers_armed,
			    (unsigned long long)st.bufs_in_use,
			    (unsigned long long)st.frames_live);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct program pr = {data, size};
	struct keel_sim_opts so = {0};
	struct world w = {.lfd = -1};
	char why[256];
	int err;

	so.seed = next_byte(&pr) | (uint64_t)next_byte(&pr) << 8;
	so.max_latency_ns = (uint64_t)next_byte(&pr) * 1000;
	so.short_ppm = (unsigned)(next_byte(&pr) % 4) * 100000;
	w.nloops = 1 + next_byte(&pr) % 2;
	if (keel_sim_create(&w.sim, &so))
		violation("keel_sim_create failed");
	for (unsigned i = 0; i < w.nloops; i++) {
		err = keel_sim_loop_create(w.sim, &w.loops[i], NULL);
		if (err)
			violation("keel_sim_loop_create: %s",
				  keel_strerror(err));
	}
	for (unsigned i = 0; i < 2 * PAIRS; i++)
		w.fds[i] = -1;
	w.lfd = keel_sim_listen(w.sim, "127.0.0.1:7400", PAIRS);
	if (w.lfd < 0)
		violation("keel_sim_listen: %s", keel_strerror(w.lfd));
	struct setup *su = keel_spawn(w.loops[0], &fz_setup, KEEL_PRIO_NORMAL);

	if (!su)
		violation("keel_spawn: out of memory");
	su->w = &w;
	run(&w, 0);
	if (!w.setup_done)
		violation("the sockets never connected");

	while (pr.n) {
		uint8_t cmd = next_byte(&pr);
		struct keel_task *victim =
		    w.workers[next_byte(&pr) % MAX_WORKERS];
		struct worker *wk =
		    victim ? keel_container_of(victim, struct worker, task)
			   : NULL;

		switch (cmd % 8) {
		case 0:
		case 1:
			spawn_worker(&w, &pr);
			break;
		case 2:
			if (victim)
				keel_task_cancel(victim);
			break;
		case 3:
			if (victim)
				keel_task_kill(victim);
			break;
		case 4:
			if (wk)
				wk->panic_next = true;
			break;
		case 5:
			if (wk)
				wk->exit_next = true;
			break;
		case 6: {
			int fd = w.fds[next_byte(&pr) % (2 * PAIRS)];

			if (fd >= 0)
				keel_sim_reset(w.sim, fd);
			break;
		}
		default:
			run(&w, (uint64_t)next_byte(&pr) * 100000 + 1);
			break;
		}
	}
	/* The end: stop everything, close what is open, run it out. */
	for (unsigned i = 0; i < w.nloops; i++)
		keel_token_cancel(keel_loop_token(w.loops[i]));
	struct cleanup *cu =
	    keel_spawn(w.loops[0], &fz_cleanup, KEEL_PRIO_NORMAL);

	if (!cu)
		violation("keel_spawn: out of memory");
	cu->w = &w;
	err = keel_sim_run(w.sim, 0);
	if (err)
		violation("the machine does not wind down: %s",
			  keel_strerror(err));
	check_loops(&w);
	for (unsigned i = w.nloops; i-- > 0;)
		keel_loop_destroy(w.loops[i]);
	if (keel_sim_check(w.sim, why, sizeof(why)))
		violation("keel_sim_check: %s", why);
	keel_sim_destroy(w.sim);
	return 0;
}
