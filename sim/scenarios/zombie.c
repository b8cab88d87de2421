/* SPDX-License-Identifier: MIT */
/*
 * zombie.c: tasks that end while the simulated kernel still holds their
 * ops. Victims on connected sockets open a recv stream and exit at once,
 * or take a chunk and panic, or wait in a recv (into their frame) or a
 * linked-timeout recv until a killer kills them; feeders keep sending
 * into the sockets meanwhile, so that completions, provided buffers and
 * data land on the zombies. The kernel's latency (PRNG-chosen) decides
 * how long each frame must outlive its task.
 *
 * Checked: a zombie's frame stays until its last CQE (under the sanitizer
 * build a write into a freed frame is a use after free), every ring
 * buffer comes back, every victim's defer runs, and no zombie is left.
 */
#include "scenario.h"

#include <errno.h>
#include <string.h>

#define PAIRS 8

enum kind { STREAM_EXIT, STREAM_PANIC, RECV_KILLED, TIMED_KILLED, NKINDS };

struct world {
	struct scn *s;
	int lfd;
	int cfd[PAIRS], sfd[PAIRS];
	struct keel_bufring *ring;
	struct keel_task *victims[PAIRS]; /* NULL once ended */
	unsigned victims_left, feeders_left;
};

struct main_task {
	struct keel_task task;
	struct world *w;
	unsigned i;
	struct sockaddr_storage ss;
	socklen_t sslen;
};

struct victim {
	struct keel_task task;
	struct world *w;
	unsigned i;
	enum kind kind;
	struct keel_recv_stream rs;
	struct keel_buf buf;
	char rbuf[2048];
};

struct feeder {
	struct keel_task task;
	struct world *w;
	unsigned i, rounds;
	size_t n;
	char buf[2048];
};

struct killer {
	struct keel_task task;
	struct world *w;
	unsigned i;
};

static int main_step(struct keel_task *t);
static int victim_step(struct keel_task *t);
static int feeder_step(struct keel_task *t);
static int killer_step(struct keel_task *t);
static KEEL_TASK_TYPE(zombie_main, struct main_task, task, main_step);
static KEEL_TASK_TYPE(zombie_victim, struct victim, task, victim_step);
static KEEL_TASK_TYPE(zombie_feeder, struct feeder, task, feeder_step);
static KEEL_TASK_TYPE(zombie_killer, struct killer, task, killer_step);

static void victim_gone(void *arg)
{
	struct victim *v = arg;

	v->w->victims[v->i] = NULL;
	v->w->victims_left--;
}

/* A chunk taken is the task's to give back, panic or not. */
static void release_chunk(void *arg)
{
	keel_buf_release(arg);
}

static int victim_step(struct keel_task *t)
{
	struct victim *v = keel_container_of(t, struct victim, task);
	struct world *w = v->w;
	int err;

	KEEL_BEGIN(t);
	switch (v->kind) {
	case STREAM_EXIT:
	case STREAM_PANIC:
		err =
		    keel_recv_stream_open(t, &v->rs, w->sfd[v->i], w->ring, 0);
		if (err) {
			scn_fail(w->s, "recv_stream_open: %s",
				 keel_strerror(err));
			KEEL_EXIT(t, err);
		}
		if (v->kind == STREAM_EXIT)
			KEEL_EXIT(t, 0); /* the stream's op is still armed */
		if (keel_defer(t, release_chunk, &v->buf))
			KEEL_EXIT(t, -ENOMEM);
		KEEL_AWAIT(t, keel_recv_next(t, &v->rs, &v->buf));
		/* dies holding a chunk, with the stream re-armed */
		keel_panic("victim %u panics with a chunk", v->i);
	case RECV_KILLED:
		KEEL_AWAIT(
		    t, keel_recv(t, w->sfd[v->i], v->rbuf, sizeof(v->rbuf), 0));
		break;
	default:
		keel_op_timeout(t, scn_range(w->s, 1, 20) * MS);
		KEEL_AWAIT(
		    t, keel_recv(t, w->sfd[v->i], v->rbuf, sizeof(v->rbuf), 0));
		break;
	}
	/* Not killed in time: wait to be. */
	KEEL_AWAIT(t, keel_sleep(t, 3600 * SEC));
	KEEL_END(t);
}

static int feeder_step(struct keel_task *t)
{
	struct feeder *f = keel_container_of(t, struct feeder, task);
	struct world *w = f->w;

	KEEL_BEGIN(t);
	for (; f->rounds; f->rounds--) {
		f->n = (size_t)scn_range(w->s, 1, sizeof(f->buf));
		memset(f->buf, (int)f->rounds, f->n);
		/* Nobody may read: give up rather than wait forever. */
		keel_op_timeout(t, 5 * MS);
		KEEL_AWAIT(
		    t, keel_send(t, w->cfd[f->i], f->buf, f->n, MSG_NOSIGNAL));
		if (keel_res(t) < 0 && keel_res(t) != -ETIMEDOUT &&
		    !scn_faulted(w->s, keel_res(t)))
			scn_fail(w->s, "feeder: %s",
				 keel_strerror(keel_res(t)));
		if (keel_res(t) < 0)
			break;
		KEEL_AWAIT(t, keel_sleep(t, scn_below(w->s, 2 * MS)));
	}
	w->feeders_left--;
	KEEL_END(t);
}

static int killer_step(struct keel_task *t)
{
	struct killer *k = keel_container_of(t, struct killer, task);
	struct world *w = k->w;

	KEEL_BEGIN(t);
	while (w->victims_left) {
		KEEL_AWAIT(t, keel_sleep(t, scn_range(w->s, 1, 3000) * 1000));
		k->i = (unsigned)scn_below(w->s, PAIRS);
		if (w->victims[k->i] && keel_task_kill(w->victims[k->i]) == 0)
			scn_sample(w->s);
	}
	KEEL_END(t);
}

static int main_step(struct keel_task *t)
{
	struct main_task *m = keel_container_of(t, struct main_task, task);
	struct world *w = m->w;
	struct scn *s = w->s;

	KEEL_BEGIN(t);
	scn_addr(7300, &m->ss, &m->sslen);
	for (m->i = 0; m->i < PAIRS; m->i++) {
		KEEL_AWAIT(t, keel_socket(t, AF_INET, SOCK_STREAM, 0));
		if (keel_res(t) < 0)
			goto fail;
		w->cfd[m->i] = keel_res(t);
		KEEL_AWAIT(t,
			   keel_connect(t, w->cfd[m->i],
					(struct sockaddr *)&m->ss, m->sslen));
		if (keel_res(t) < 0)
			goto fail;
		KEEL_AWAIT(t, keel_accept(t, w->lfd, NULL, NULL, 0));
		if (keel_res(t) < 0)
			goto fail;
		w->sfd[m->i] = keel_res(t);
	}
	for (m->i = 0; m->i < PAIRS; m->i++) {
		struct victim *v = keel_spawn(keel_task_loop(t), &zombie_victim,
					      KEEL_PRIO_NORMAL);
		struct feeder *f = keel_spawn(keel_task_loop(t), &zombie_feeder,
					      KEEL_PRIO_NORMAL);

		if (!v || !f) {
			scn_fail(s, "out of memory");
			break;
		}
		v->w = f->w = w;
		v->i = f->i = m->i;
		v->kind = (enum kind)scn_below(s, NKINDS);
		f->rounds = (unsigned)scn_range(s, 0, 20);
		w->victims[m->i] = keel_task_of(&zombie_victim, v);
		w->victims_left++;
		w->feeders_left++;
		/* At the spawn: one killed before its first step counts. */
		if (keel_defer(w->victims[m->i], victim_gone, v)) {
			scn_fail(s, "out of memory");
			break;
		}
	}
	struct killer *k =
	    keel_spawn(keel_task_loop(t), &zombie_killer, KEEL_PRIO_NORMAL);

	if (!k) {
		scn_fail(s, "out of memory");
		goto close;
	}
	k->w = w;
	/* Wait for the victims to be gone (their zombies may stay) and the
	 * feeders to be done, sampling the zombies meanwhile. */
	while (w->victims_left || w->feeders_left) {
		KEEL_AWAIT(t, keel_sleep(t, scn_range(s, 100, 1000) * 1000));
		scn_sample(s);
	}
	goto close;
fail:
	if (!scn_faulted(s, keel_res(t)))
		scn_fail(s, "setting up pair %u: %s", m->i,
			 keel_strerror(keel_res(t)));
close:
	for (m->i = 0; m->i < PAIRS; m->i++) {
		if (w->cfd[m->i] >= 0)
			KEEL_AWAIT(t, keel_close(t, w->cfd[m->i]));
		if (w->sfd[m->i] >= 0)
			KEEL_AWAIT(t, keel_close(t, w->sfd[m->i]));
	}
	KEEL_AWAIT(t, keel_close(t, w->lfd));
	KEEL_END(t);
}

static void zombie_run(struct scn *s)
{
	struct world *w = scn_world(s, sizeof(*w));
	struct keel_loop *loop = scn_loop(s);

	if (!w || !loop)
		return;
	w->s = s;
	for (unsigned i = 0; i < PAIRS; i++)
		w->cfd[i] = w->sfd[i] = -1;
	if (!scn_ring_and_listener(s, loop, 7300, PAIRS, &w->ring, &w->lfd))
		return;
	struct main_task *m = keel_spawn(loop, &zombie_main, KEEL_PRIO_NORMAL);

	if (!m) {
		scn_fail(s, "out of memory");
		return;
	}
	m->w = w;
	scn_run(s, 600 * SEC);
}

const struct scenario scn_zombie = {
    .name = "zombie",
    .what = "tasks exiting, panicking and killed with ops in flight",
    .run = zombie_run,
};
