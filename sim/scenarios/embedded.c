/* SPDX-License-Identifier: MIT */
/*
 * embedded.c: a loop embedded in a host program, woken from another loop.
 * The host drives both loops of the machine itself, as an embedding
 * program would, instead of keel_sim_run(): it steps the poster loop; it
 * steps the embedded loop only when keel_loop_timeout_ns() says it must
 * not sleep or its keel_loop_fd() is readable; and when both would sleep
 * it lets virtual time pass with a waiting step, for at most the shorter
 * of their timeouts. A poster task on the other loop
 * spawns jobs on the embedded loop (keel_spawn_on: its inbox and the
 * MSG_RING doorbell) at PRNG-chosen times; the jobs do a little work of
 * their own (a nop, a sleep).
 *
 * Checked: whenever work posted to the embedded loop has not run yet, the
 * host is told not to sleep (timeout 0 or the fd readable): a post never
 * waits for an unrelated wake-up; every job runs; nothing is left.
 */
#include "scenario.h"

#include <errno.h>
#include <poll.h>
#include <string.h>
#include <unistd.h>

#define HOST_ROUNDS 2000000 /* a hang of the host's loop, not time */

struct world {
	struct scn *s;
	struct keel_loop *host, *other;
	unsigned jobs, posted, started, finished;
};

struct poster {
	struct keel_task task;
	struct world *w;
	unsigned i;
};

struct job {
	struct keel_task task;
	struct world *w;
};

static int poster_step(struct keel_task *t);
static int job_step(struct keel_task *t);
static KEEL_TASK_TYPE(emb_poster, struct poster, task, poster_step);
static KEEL_TASK_TYPE(emb_job, struct job, task, job_step);

static void job_init(void *frame, void *arg)
{
	struct world *w = arg;

	((struct job *)frame)->w = w;
	w->started++;
}

static int job_step(struct keel_task *t)
{
	struct job *j = keel_container_of(t, struct job, task);

	KEEL_BEGIN(t);
	if (scn_pct(j->w->s, 50))
		KEEL_AWAIT(t, keel_nop(t));
	if (scn_pct(j->w->s, 30))
		KEEL_AWAIT(t, keel_sleep(t, scn_below(j->w->s, 5 * MS)));
	j->w->finished++;
	KEEL_END(t);
}

static int poster_step(struct keel_task *t)
{
	struct poster *p = keel_container_of(t, struct poster, task);
	struct world *w = p->w;

	KEEL_BEGIN(t);
	for (p->i = 0; p->i < w->jobs; p->i++) {
		if (scn_pct(w->s, 70))
			KEEL_AWAIT(t, keel_sleep(t, scn_below(w->s, 20 * MS)));
		if (keel_spawn_on(w->host, &emb_job, KEEL_PRIO_NORMAL, job_init,
				  w)) {
			scn_fail(w->s, "keel_spawn_on failed");
			break;
		}
		w->posted++;
	}
	KEEL_END(t);
}

static bool readable(int fd)
{
	struct pollfd pfd = {.fd = fd, .events = POLLIN};

	return poll(&pfd, 1, 0) == 1;
}

static void drain(int fd)
{
	uint64_t n;

	while (readable(fd) && read(fd, &n, sizeof(n)) == (ssize_t)sizeof(n))
		;
}

static bool idle(struct keel_loop *loop)
{
	struct keel_loop_stats st;

	keel_loop_stats(loop, &st);
	return !st.tasks_live && !st.ops_inflight && !st.timers_armed;
}

/* The shorter of two timeouts (-1: none). */
static int64_t shorter(int64_t a, int64_t b)
{
	if (a < 0)
		return b;
	if (b < 0)
		return a;
	return a < b ? a : b;
}

static void host(struct scn *s, struct world *w, int efd)
{
	int err;

	for (unsigned round = 0; round < HOST_ROUNDS && !s->failed; round++) {
		err = keel_loop_step(w->other, 0);
		if (err < 0) {
			scn_fail(s, "other loop: step: %s", keel_strerror(err));
			return;
		}
		int64_t th = keel_loop_timeout_ns(w->host);
		bool fd_ready = readable(efd);

		if (w->posted > w->started && th != 0 && !fd_ready) {
			scn_fail(s,
				 "%u posts wait, but the embedded loop "
				 "may sleep %lld ns and its fd is quiet",
				 w->posted - w->started, (long long)th);
			return;
		}
		if (th == 0 || fd_ready) {
			drain(efd);
			err = keel_loop_step(w->host, 0);
			if (err < 0) {
				scn_fail(s, "embedded loop: step: %s",
					 keel_strerror(err));
				return;
			}
			continue;
		}
		int64_t to = keel_loop_timeout_ns(w->other);

		if (to == 0)
			continue;
		if (idle(w->other) && idle(w->host) && w->finished == w->jobs)
			return; /* done */
		/*
		 * Both would sleep: let virtual time pass, at most until the
		 * nearer of their timers (keel's timers are the loops' own,
		 * not the machine's events). The embedded loop's waiting step
		 * stands for the host sleeping on its fd; a loop with nothing
		 * pending returns at once, so the other one waits then.
		 */
		err = keel_loop_step(idle(w->host) ? w->other : w->host,
				     shorter(to, th));
		if (err < 0 && err != -ETIME) {
			scn_fail(s, "waiting step: %s (%u of %u jobs done)",
				 keel_strerror(err), w->finished, w->jobs);
			return;
		}
	}
	if (!s->failed)
		scn_fail(s, "the host's loop never ends");
}

static void embedded_run(struct scn *s)
{
	struct world *w = scn_world(s, sizeof(*w));
	int efd;

	if (!w)
		return;
	w->s = s;
	w->other = scn_loop(s);
	w->host = scn_loop(s);
	if (!w->other || !w->host)
		return;
	efd = keel_loop_fd(w->host);
	if (efd < 0) {
		scn_fail(s, "keel_loop_fd: %s", keel_strerror(efd));
		return;
	}
	w->jobs = (unsigned)scn_range(s, 1, 200);
	struct poster *p = keel_spawn(w->other, &emb_poster, KEEL_PRIO_NORMAL);

	if (!p) {
		scn_fail(s, "out of memory");
		return;
	}
	p->w = w;
	host(s, w, efd);
	if (!s->failed && w->finished != w->jobs)
		scn_fail(s, "%u of %u jobs ran", w->finished, w->jobs);
	s->transfers += w->finished;
}

const struct scenario scn_embedded = {
    .name = "embedded",
    .what = "a host-driven loop woken by posts from another loop",
    .run = embedded_run,
};
