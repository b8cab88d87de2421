/* SPDX-License-Identifier: MIT */
/*
 * idle.c: recv streams that go idle long enough for the loop's sweep to
 * park them on a poll that holds no ledger op (io/stream.c, "Parked
 * streams"), and what may happen to a parked stream: data or the peer's
 * end of file wakes it, its task is cancelled or killed, it is closed, or
 * its task exits with it open. Feeders send in bursts with idle gaps on
 * both sides of the sweep's period, and the actions come at PRNG-chosen
 * times, so that they race the poll's completion and its cancel.
 *
 * Checked: every byte a stream delivers is the next of its stream (none
 * lost, duplicated or reordered, as long as it ran), each stream ends as
 * its action says, the frames outlive their polls (the sanitizer build
 * sees a write into a freed frame), and the runner's checks: no task,
 * zombie, op (a parked poll counts as one) or ring buffer left.
 */
#include "scenario.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>

#define PAIRS 6

/* What happens to a connection's stream, besides its feeder's data. */
enum action { EOF_ENDS, CANCEL, KILL, CLOSE, EXIT_OPEN, NACTIONS };

struct world {
	struct scn *s;
	int lfd;
	int cfd[PAIRS], sfd[PAIRS];
	struct keel_bufring *ring;
	struct keel_task *conns[PAIRS]; /* NULL once gone */
	unsigned conns_left, feeders_left;
	uint64_t parked; /* idle polls at the end: the scenario's point */
};

struct main_task {
	struct keel_task task;
	struct world *w;
	unsigned i;
	struct sockaddr_storage ss;
	socklen_t sslen;
};

struct conn {
	struct keel_task task;
	struct world *w;
	unsigned i;
	enum action action;
	uint64_t off; /* bytes received */
	struct keel_recv_stream rs;
	struct keel_buf buf;
};

struct feeder {
	struct keel_task task;
	struct world *w;
	unsigned i, rounds;
	uint64_t off; /* bytes sent */
	size_t n;
	char buf[512];
};

/* Cancels or kills its connection at a PRNG-chosen time. */
struct actor {
	struct keel_task task;
	struct world *w;
	unsigned i;
	enum action action;
};

static int main_step(struct keel_task *t);
static int conn_step(struct keel_task *t);
static int feeder_step(struct keel_task *t);
static int actor_step(struct keel_task *t);
static KEEL_TASK_TYPE(idle_main, struct main_task, task, main_step);
static KEEL_TASK_TYPE(idle_conn, struct conn, task, conn_step);
static KEEL_TASK_TYPE(idle_feeder, struct feeder, task, feeder_step);
static KEEL_TASK_TYPE(idle_actor, struct actor, task, actor_step);

static void conn_gone(void *arg)
{
	struct conn *c = arg;

	c->w->conns[c->i] = NULL;
	c->w->conns_left--;
}

static void release_chunk(void *arg)
{
	keel_buf_release(arg);
}

/* An idle gap: under the sweep's period, or long enough to park. */
static uint64_t idle_gap(struct scn *s)
{
	return scn_pct(s, 50) ? scn_below(s, 200 * MS)
			      : scn_range(s, 300, 1500) * MS;
}

static int conn_step(struct keel_task *t)
{
	struct conn *c = keel_container_of(t, struct conn, task);
	struct world *w = c->w;
	struct scn *s = w->s;
	int err;

	KEEL_BEGIN(t);
	if (keel_defer(t, release_chunk, &c->buf))
		KEEL_EXIT(t, -ENOMEM);
	err = keel_recv_stream_open(t, &c->rs, w->sfd[c->i], w->ring, 0);
	if (err) {
		if (!scn_faulted(s, err))
			scn_fail(s, "recv_stream_open: %s", keel_strerror(err));
		KEEL_EXIT(t, err);
	}
	if (c->action == CLOSE || c->action == EXIT_OPEN) {
		/* Idle, parked or not, then closed (or left to the exit). */
		KEEL_AWAIT(t, keel_sleep(t, idle_gap(s)));
		if (c->action == EXIT_OPEN)
			KEEL_EXIT(t, 0);
		keel_recv_stream_close(&c->rs);
		KEEL_AWAIT(t, keel_recv_next(t, &c->rs, &c->buf));
		if (keel_res(t) != -EBADF)
			scn_fail(s, "conn %u: recv_next after close: %d", c->i,
				 keel_res(t));
		KEEL_EXIT(t, 0);
	}
	for (;;) {
		KEEL_AWAIT(t, keel_recv_next(t, &c->rs, &c->buf));
		if (keel_res(t) <= 0)
			break;
		if (scn_verify(c->i, c->off, c->buf.data, c->buf.len) !=
		    c->buf.len)
			scn_fail(s, "conn %u: bad byte near offset %llu", c->i,
				 (unsigned long long)c->off);
		c->off += c->buf.len;
		s->bytes_checked += c->buf.len;
		keel_buf_release(&c->buf);
	}
	err = keel_res(t);
	if (err < 0 && !(err == -ECANCELED && c->action == CANCEL) &&
	    !scn_faulted(s, err))
		scn_fail(s, "conn %u (action %d): stream ended with %d", c->i,
			 (int)c->action, err);
	keel_recv_stream_close(&c->rs);
	KEEL_END(t);
}

static int feeder_step(struct keel_task *t)
{
	struct feeder *f = keel_container_of(t, struct feeder, task);
	struct world *w = f->w;

	KEEL_BEGIN(t);
	for (; f->rounds; f->rounds--) {
		KEEL_AWAIT(t, keel_sleep(t, idle_gap(w->s)));
		f->n = (size_t)scn_range(w->s, 1, sizeof(f->buf));
		scn_fill(f->i, f->off, f->buf, f->n);
		/* Nobody may read any more: give up rather than wait. */
		keel_op_timeout(t, 5 * MS);
		KEEL_AWAIT(
		    t, keel_send(t, w->cfd[f->i], f->buf, f->n, MSG_NOSIGNAL));
		if (keel_res(t) < 0 && keel_res(t) != -ETIMEDOUT &&
		    !scn_faulted(w->s, keel_res(t)))
			scn_fail(w->s, "feeder: %s",
				 keel_strerror(keel_res(t)));
		if (keel_res(t) < 0)
			break;
		/* A short send leaves a gap in the stream: stop there. */
		f->off += (uint64_t)keel_res(t);
		if ((size_t)keel_res(t) < f->n)
			break;
	}
	/* The end of file wakes a parked stream too. */
	KEEL_AWAIT(t, keel_shutdown(t, w->cfd[f->i], SHUT_WR));
	if (keel_res(t) < 0) {
		/* A faulted shutdown sent no end of file, and the stream
		 * would wait for it for ever: closing the socket sends it
		 * (an injected fault never fails a close). */
		if (!scn_faulted(w->s, keel_res(t)))
			scn_fail(w->s, "feeder: shutdown: %s",
				 keel_strerror(keel_res(t)));
		KEEL_AWAIT(t, keel_close(t, w->cfd[f->i]));
		w->cfd[f->i] = -1;
	}
	w->feeders_left--;
	KEEL_END(t);
}

static int actor_step(struct keel_task *t)
{
	struct actor *a = keel_container_of(t, struct actor, task);
	struct world *w = a->w;
	struct keel_task *c;

	KEEL_BEGIN(t);
	KEEL_AWAIT(t, keel_sleep(t, idle_gap(w->s)));
	c = w->conns[a->i];
	if (!c)
		KEEL_EXIT(t, 0);
	if (a->action == KILL)
		keel_task_kill(c);
	else
		keel_task_cancel(c);
	scn_sample(w->s);
	KEEL_END(t);
}

static int main_step(struct keel_task *t)
{
	struct main_task *m = keel_container_of(t, struct main_task, task);
	struct world *w = m->w;
	struct scn *s = w->s;
	struct keel_loop *loop = keel_task_loop(t);

	KEEL_BEGIN(t);
	scn_addr(7400, &m->ss, &m->sslen);
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
		struct conn *c = keel_spawn(loop, &idle_conn, KEEL_PRIO_NORMAL);
		struct feeder *f =
		    keel_spawn(loop, &idle_feeder, KEEL_PRIO_NORMAL);

		if (!c || !f) {
			scn_fail(s, "out of memory");
			break;
		}
		c->w = f->w = w;
		c->i = f->i = m->i;
		c->action = (enum action)scn_below(s, NACTIONS);
		f->rounds = (unsigned)scn_range(s, 0, 6);
		w->conns[m->i] = keel_task_of(&idle_conn, c);
		w->conns_left++;
		w->feeders_left++;
		/* At the spawn: one killed before its first step counts. */
		if (keel_defer(w->conns[m->i], conn_gone, c)) {
			scn_fail(s, "out of memory");
			break;
		}
		if (c->action == CANCEL || c->action == KILL) {
			struct actor *a =
			    keel_spawn(loop, &idle_actor, KEEL_PRIO_NORMAL);

			if (!a) {
				scn_fail(s, "out of memory");
				break;
			}
			a->w = w;
			a->i = m->i;
			a->action = c->action;
		}
	}
	while (w->conns_left || w->feeders_left) {
		KEEL_AWAIT(t, keel_sleep(t, scn_range(s, 10, 100) * MS));
		scn_sample(s);
	}
	{
		struct keel_loop_stats st;

		keel_loop_stats(loop, &st);
		w->parked = st.idle_polls;
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

static void idle_run(struct scn *s)
{
	struct world *w = scn_world(s, sizeof(*w));
	struct keel_loop *loop = scn_loop(s);

	if (!w || !loop)
		return;
	w->s = s;
	for (unsigned i = 0; i < PAIRS; i++)
		w->cfd[i] = w->sfd[i] = -1;
	if (!scn_ring_and_listener(s, loop, 7400, PAIRS, &w->ring, &w->lfd))
		return;
	struct main_task *m = keel_spawn(loop, &idle_main, KEEL_PRIO_NORMAL);

	if (!m) {
		scn_fail(s, "out of memory");
		return;
	}
	m->w = w;
	scn_run(s, 600 * SEC);
}

const struct scenario scn_idle = {
    .name = "idle",
    .what = "recv streams parked on a poll, woken, cancelled, killed, "
	    "closed and left open by exiting tasks",
    .run = idle_run,
};
