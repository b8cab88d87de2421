/* SPDX-License-Identifier: MIT */
/*
 * cancel.c: cancellation and kill storms. Workers on connected socket
 * pairs send and receive (each pair has one sender and one receiver),
 * sleep, and run nops, many of these under linked timeouts; they observe
 * group tokens. A killer, at PRNG-chosen moments, cancels a group token,
 * gives one a deadline, cancels one worker, or kills one outright, while
 * their ops are in flight in the simulated kernel; at the end it cancels
 * every group.
 *
 * Checked: the bytes of each pair arrive in order with none lost or
 * repeated, whatever was cancelled: a send or recv that completed before
 * its cancellation must report what it did (an op that reports
 * -ECANCELED or -ETIMEDOUT must not have moved data, or the receiver sees
 * a gap or a repeat); ops end only with a result, a timeout or a
 * cancellation; every worker ends; nothing is left.
 */
#include "scenario.h"

#include <errno.h>
#include <string.h>

#define PAIRS	8
#define WORKERS (2 * PAIRS + 8)
#define GROUPS	4

enum role { SENDER, RECEIVER, SLEEPER, NOPPER };

struct pair {
	int cfd, sfd;
	uint64_t sent, received; /* bytes reported moved */
};

struct world {
	struct scn *s;
	int lfd;
	struct pair pairs[PAIRS];
	struct keel_token *groups[GROUPS];
	struct keel_task *workers[WORKERS]; /* NULL once ended */
	unsigned nworkers;
};

struct main_task {
	struct keel_task task;
	struct world *w;
	unsigned i;
	struct keel_scope scope;
	struct keel_task *killer; /* joinable: it uses the groups */
	struct sockaddr_storage ss;
	socklen_t sslen;
};

struct worker {
	struct keel_task task;
	struct world *w;
	unsigned id, rounds;
	enum role role;
	struct pair *pair;
	size_t n;
	char buf[4096];
};

struct killer {
	struct keel_task task;
	struct world *w;
	unsigned rounds;
};

static int main_step(struct keel_task *t);
static int worker_step(struct keel_task *t);
static int killer_step(struct keel_task *t);
static KEEL_TASK_TYPE(storm_main, struct main_task, task, main_step);
static KEEL_TASK_TYPE(storm_worker, struct worker, task, worker_step);
static KEEL_TASK_TYPE(storm_killer, struct killer, task, killer_step);

static void worker_gone(void *arg)
{
	struct worker *wk = arg;

	wk->w->workers[wk->id] = NULL;
}

/* What an op may end with here besides its own result. */
static bool expected(int res)
{
	return res >= 0 || res == -ECANCELED || res == -ETIMEDOUT;
}

static void maybe_timeout(struct keel_task *t, struct scn *s)
{
	if (scn_pct(s, 40))
		keel_op_timeout(t, scn_range(s, 1, 5000) * 1000);
}

static int worker_step(struct keel_task *t)
{
	struct worker *wk = keel_container_of(t, struct worker, task);
	struct scn *s = wk->w->s;
	struct pair *p = wk->pair;
	size_t ok;

	KEEL_BEGIN(t);
	for (; wk->rounds; wk->rounds--) {
		switch (wk->role) {
		case SENDER:
			wk->n = (size_t)scn_range(s, 1, sizeof(wk->buf));
			scn_fill((uint64_t)(p - wk->w->pairs) + 1, p->sent,
				 wk->buf, wk->n);
			maybe_timeout(t, s);
			KEEL_AWAIT(t, keel_send(t, p->cfd, wk->buf, wk->n,
						MSG_NOSIGNAL));
			if (keel_res(t) > 0)
				p->sent += (uint64_t)keel_res(t);
			break;
		case RECEIVER:
			maybe_timeout(t, s);
			KEEL_AWAIT(t, keel_recv(t, p->sfd, wk->buf,
						(size_t)scn_range(
						    s, 1, sizeof(wk->buf)),
						0));
			if (keel_res(t) == 0) {
				scn_fail(s, "pair %u: EOF",
					 (unsigned)(p - wk->w->pairs));
				KEEL_EXIT(t, -EIO);
			}
			if (keel_res(t) < 0)
				break;
			ok = scn_verify((uint64_t)(p - wk->w->pairs) + 1,
					p->received, wk->buf,
					(size_t)keel_res(t));
			if (ok != (size_t)keel_res(t)) {
				scn_fail(
				    s, "pair %u: byte %llu differs",
				    (unsigned)(p - wk->w->pairs),
				    (unsigned long long)(p->received + ok));
				KEEL_EXIT(t, -EIO);
			}
			p->received += (uint64_t)keel_res(t);
			s->bytes_checked += (uint64_t)keel_res(t);
			break;
		case SLEEPER:
			maybe_timeout(t, s);
			KEEL_AWAIT(t,
				   keel_sleep(t, scn_range(s, 1, 5000) * 1000));
			break;
		default:
			maybe_timeout(t, s);
			KEEL_AWAIT(t, keel_nop(t));
			break;
		}
		if (!expected(keel_res(t))) {
			if (!scn_faulted(s, keel_res(t)))
				scn_fail(s, "worker %u (role %d): %s", wk->id,
					 (int)wk->role,
					 keel_strerror(keel_res(t)));
			KEEL_EXIT(t, keel_res(t));
		}
		if (keel_res(t) == -ECANCELED ||
		    keel_token_cancelled(keel_task_token(t)))
			KEEL_EXIT(t, -ECANCELED);
	}
	KEEL_END(t);
}

static int killer_step(struct keel_task *t)
{
	struct killer *k = keel_container_of(t, struct killer, task);
	struct world *w = k->w;
	struct scn *s = w->s;
	struct keel_task *victim;
	unsigned g;

	KEEL_BEGIN(t);
	for (; k->rounds; k->rounds--) {
		KEEL_AWAIT(t, keel_sleep(t, scn_range(s, 1, 3000) * 1000));
		victim = w->workers[scn_below(s, w->nworkers)];
		g = (unsigned)scn_below(s, GROUPS);
		switch (scn_below(s, 4)) {
		case 0:
			keel_token_cancel(w->groups[g]);
			break;
		case 1:
			keel_token_set_timeout(w->groups[g],
					       scn_range(s, 0, 2000) * 1000);
			break;
		case 2:
			if (victim)
				keel_task_cancel(victim);
			break;
		default:
			if (victim && keel_task_kill(victim) == 0)
				scn_sample(s);
			break;
		}
	}
	for (g = 0; g < GROUPS; g++)
		keel_token_cancel(w->groups[g]);
	KEEL_END(t);
}

static int main_step(struct keel_task *t)
{
	struct main_task *m = keel_container_of(t, struct main_task, task);
	struct world *w = m->w;
	struct scn *s = w->s;
	struct worker *wk;
	struct killer *k;

	KEEL_BEGIN(t);
	/* Connect the pairs one by one, so that the i-th accept is the
	 * i-th connection. */
	scn_addr(7200, &m->ss, &m->sslen);
	for (m->i = 0; m->i < PAIRS; m->i++) {
		KEEL_AWAIT(t, keel_socket(t, AF_INET, SOCK_STREAM, 0));
		if (keel_res(t) < 0)
			goto fail;
		w->pairs[m->i].cfd = keel_res(t);
		KEEL_AWAIT(t,
			   keel_connect(t, w->pairs[m->i].cfd,
					(struct sockaddr *)&m->ss, m->sslen));
		if (keel_res(t) < 0)
			goto fail;
		KEEL_AWAIT(t, keel_accept(t, w->lfd, NULL, NULL, 0));
		if (keel_res(t) < 0)
			goto fail;
		w->pairs[m->i].sfd = keel_res(t);
	}
	if (keel_scope_init(t, &m->scope, KEEL_SCOPE_COLLECT))
		goto oom;
	for (unsigned i = 0; i < WORKERS; i++) {
		wk = keel_scope_spawn(&m->scope, &storm_worker,
				      KEEL_PRIO_NORMAL);
		if (!wk)
			goto oom_scope;
		wk->w = w;
		wk->id = i;
		wk->role = i < 2 * PAIRS
			       ? (i & 1 ? RECEIVER : SENDER)
			       : (enum role)scn_range(s, SLEEPER, NOPPER);
		wk->pair = i < 2 * PAIRS ? &w->pairs[i / 2] : NULL;
		wk->rounds = (unsigned)scn_range(s, 1, 60);
		w->workers[i] = keel_task_of(&storm_worker, wk);
		w->nworkers = i + 1;
		/* At the spawn: a worker killed before its first step must
		 * leave the list too. */
		if (keel_defer(w->workers[i], worker_gone, wk)) {
			w->workers[i] = NULL;
			goto oom_scope;
		}
		if (keel_task_set_token(keel_task_of(&storm_worker, wk),
					w->groups[scn_below(s, GROUPS)]))
			goto oom_scope;
	}
	k = keel_spawn(keel_task_loop(t), &storm_killer,
		       KEEL_PRIO_NORMAL | KEEL_SPAWN_JOINABLE);
	if (!k)
		goto oom_scope;
	k->w = w;
	k->rounds = (unsigned)scn_range(s, 0, 40);
	m->killer = keel_task_of(&storm_killer, k);
	KEEL_AWAIT(t, keel_scope_join(t, &m->scope));
	keel_scope_fini(&m->scope);
	KEEL_AWAIT(t, keel_join(t, m->killer));
	goto close;
oom_scope:
	scn_fail(s, "out of memory");
	for (unsigned g = 0; g < GROUPS; g++)
		keel_token_cancel(w->groups[g]);
	KEEL_AWAIT(t, keel_scope_join(t, &m->scope));
	keel_scope_fini(&m->scope);
	goto close;
oom:
	scn_fail(s, "out of memory");
	goto close;
fail:
	if (!scn_faulted(s, keel_res(t)))
		scn_fail(s, "setting up pair %u: %s", m->i,
			 keel_strerror(keel_res(t)));
close:
	for (m->i = 0; m->i < PAIRS; m->i++) {
		if (w->pairs[m->i].cfd >= 0)
			KEEL_AWAIT(t, keel_close(t, w->pairs[m->i].cfd));
		if (w->pairs[m->i].sfd >= 0)
			KEEL_AWAIT(t, keel_close(t, w->pairs[m->i].sfd));
	}
	KEEL_AWAIT(t, keel_close(t, w->lfd));
	for (unsigned g = 0; g < GROUPS; g++) {
		keel_token_release(w->groups[g]);
		w->groups[g] = NULL;
	}
	KEEL_END(t);
}

static void cancel_run(struct scn *s)
{
	struct world *w = scn_world(s, sizeof(*w));
	struct keel_loop *loop = scn_loop(s);
	char addr[32];

	if (!w || !loop)
		return;
	w->s = s;
	for (unsigned i = 0; i < PAIRS; i++)
		w->pairs[i].cfd = w->pairs[i].sfd = -1;
	w->lfd = keel_sim_listen(s->sim, scn_addr_text(7200, addr), PAIRS);
	if (w->lfd < 0) {
		scn_fail(s, "keel_sim_listen: %s", keel_strerror(w->lfd));
		return;
	}
	for (unsigned g = 0; g < GROUPS; g++)
		if (keel_token_new(loop, NULL, &w->groups[g])) {
			scn_fail(s, "out of memory");
			return;
		}
	struct main_task *m = keel_spawn(loop, &storm_main, KEEL_PRIO_NORMAL);

	if (!m) {
		scn_fail(s, "out of memory");
		return;
	}
	m->w = w;
	scn_run(s, 600 * SEC);
}

const struct scenario scn_cancel = {
    .name = "cancel",
    .what = "cancellation and kill storms on tasks with ops in flight",
    .run = cancel_run,
};
