/* SPDX-License-Identifier: MIT */
/*
 * api.c: the simulated machine's public API (keel/sim.h): creating it and
 * its loops, running them on the virtual clock, its counters and
 * invariants.
 */
#include "sim.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int keel_sim_create(struct keel_sim **out, const struct keel_sim_opts *opts)
{
	struct keel__sim *s = calloc(1, sizeof(*s));

	if (!s)
		return -ENOMEM;
	/* Fault injection (keel_loop_inject_faults) is not in this tree
	 * yet: say so rather than run without the faults asked for. */
	if (opts && opts->faults && *opts->faults) {
		free(s);
		return -EOPNOTSUPP;
	}
	if (opts)
		s->opts = *opts;
	if (!s->opts.max_latency_ns)
		s->opts.max_latency_ns = 50000;
	if (!s->opts.sndbuf)
		s->opts.sndbuf = 65536;
	if (!s->opts.fd_limit)
		s->opts.fd_limit = 1024;
	s->rng = s->opts.seed;
	/* Virtual time starts at one second: 0 reads as "no deadline" in
	 * places. */
	s->now = 1000000000ull;
	*out = (struct keel_sim *)s;
	return 0;
}

void keel_sim_destroy(struct keel_sim *sim)
{
	struct keel__sim *s = (struct keel__sim *)sim;

	if (!s)
		return;
	if (s->loops) {
		fprintf(stderr, "keel_sim_destroy: %u loops not destroyed\n",
			s->loops);
		abort();
	}
	sim__model_fini(s);
	sim__kernel_fini(s);
	free(s);
}

/*
 * keel's clock reads the machine's while the machine has loops (and while
 * keel_sim_run runs), from before the first loop's creation (its trace
 * then has virtual timestamps) until the last one's teardown.
 */
static void clock_enter(struct keel__sim *s)
{
	if (keel__virtual_clock == &s->now)
		return;
	s->outer_clock = keel__virtual_clock;
	keel__virtual_clock = &s->now;
}

static void clock_leave(struct keel__sim *s)
{
	if (!s->loops && !s->running && keel__virtual_clock == &s->now)
		keel__virtual_clock = s->outer_clock;
}

int keel_sim_loop_create(struct keel_sim *sim, struct keel_loop **out,
			 const struct keel_loop_opts *opts)
{
	struct keel__sim *s = (struct keel__sim *)sim;
	struct keel__backend *b;
	uint32_t id = s->nrings;
	int err;

	clock_enter(s);
	b = sim__backend_new(s);
	if (!b) {
		clock_leave(s);
		return -ENOMEM;
	}
	err = keel__loop_create_on(out, opts, b);
	if (err) {
		/* Torn down already if its setup had succeeded. */
		if (s->rings[id])
			sim__backend_drop(b);
		clock_leave(s);
		return err;
	}
	sim__ring_set_loop(b, *out);
	return 0;
}

uint64_t keel_sim_now(const struct keel_sim *sim)
{
	return ((const struct keel__sim *)sim)->now;
}

/* The machine's loops, in a PRNG order (Fisher-Yates over ring ids). */
static uint32_t loops_shuffled(struct keel__sim *s, struct keel_loop **v)
{
	uint32_t n = 0;

	for (uint32_t i = 0; i < s->nrings; i++) {
		struct keel_loop *loop = sim__ring_loop(s, i);

		if (loop)
			v[n++] = loop;
	}
	for (uint32_t i = n; i > 1; i--) {
		uint32_t j = (uint32_t)(sim__rand(s) % i);
		struct keel_loop *t = v[i - 1];

		v[i - 1] = v[j];
		v[j] = t;
	}
	return n;
}

/*
 * One round: every loop steps once (never waiting), then the engine's
 * events due now run. Returns 1 when something can happen at once (a loop
 * has work, a CQE to reap, an event ran), 0 when only time can move things
 * on (then *next is when, UINT64_MAX: never), or a step's error.
 */
static int run_round(struct keel__sim *s, struct keel_loop **v, bool *alive,
		     uint64_t *next)
{
	uint32_t n = loops_shuffled(s, v);
	int busy = 0;

	*alive = false;
	*next = UINT64_MAX;
	for (uint32_t i = 0; i < n; i++) {
		int r = keel_loop_step(v[i], 0);

		if (r < 0)
			return r;
		*alive |= r > 0;
	}
	if (sim__run_due(s))
		busy = 1;
	for (uint32_t i = 0; i < n; i++) {
		int64_t t = keel_loop_timeout_ns(v[i]);

		if (t == 0 || sim__ring_has_cqes(v[i]))
			busy = 1;
		else if (t > 0 && s->now + (uint64_t)t < *next)
			*next = s->now + (uint64_t)t;
	}
	if (sim__next_event(s) < *next)
		*next = sim__next_event(s);
	return busy;
}

int keel_sim_run(struct keel_sim *sim, uint64_t for_ns)
{
	struct keel__sim *s = (struct keel__sim *)sim;
	uint64_t end = for_ns ? s->now + for_ns : UINT64_MAX;
	uint32_t cap = s->nrings + 1;
	struct keel_loop **v = calloc(cap, sizeof(*v));
	int ret;

	if (!v)
		return -ENOMEM;
	if (s->running) {
		free(v);
		return -EBUSY; /* called from a task of the machine */
	}
	clock_enter(s);
	s->running = true;
	for (;;) {
		bool alive;
		uint64_t next;

		if (s->nrings >= cap) {
			/* A task made a loop on the machine. */
			struct keel_loop **nv =
			    realloc(v, (s->nrings + 1) * sizeof(*v));

			if (!nv) {
				ret = -ENOMEM;
				break;
			}
			v = nv;
			cap = s->nrings + 1;
		}
		ret = run_round(s, v, &alive, &next);
		if (ret < 0)
			break;
		if (ret)
			continue;
		if (!alive && next == UINT64_MAX) {
			ret = 0;
			break;
		}
		if (next == UINT64_MAX) {
			ret = -EDEADLK; /* tasks wait for what never comes */
			break;
		}
		if (next > end) {
			s->now = end;
			ret = -ETIME;
			break;
		}
		s->now = next;
	}
	s->running = false;
	clock_leave(s);
	free(v);
	return ret;
}

int keel_sim_listen(struct keel_sim *sim, const char *addr, int backlog)
{
	struct keel__sim *s = (struct keel__sim *)sim;
	struct sim_file *f;
	int err = sim__listen(s, addr, backlog, &f);

	if (err)
		return err;
	int fd = sim__fd_install(s, f);

	if (fd < 0)
		sim__file_put(f);
	return fd;
}

int keel_sim_file(struct keel_sim *sim, const char *path, const void *data,
		  size_t len)
{
	struct keel__sim *s = (struct keel__sim *)sim;
	struct sim_file *f;
	int err = sim__file_create(s, path, data, len);

	if (err)
		return err;
	err = sim__open(s, path, 0, 0, &f);
	if (err)
		return err;
	int fd = sim__fd_install(s, f);

	if (fd < 0)
		sim__file_put(f);
	return fd;
}

int keel_sim_reset(struct keel_sim *sim, int fd)
{
	struct sim_file *f = sim__fd_get((struct keel__sim *)sim, fd);

	return f ? sim__reset(f) : -EBADF;
}

void keel_sim_stats(const struct keel_sim *sim, struct keel_sim_stats *out)
{
	const struct keel__sim *s = (const struct keel__sim *)sim;

	memset(out, 0, sizeof(*out));
	out->ops = s->count.ops;
	out->cqes = s->count.cqes;
	out->virtual_ns = s->now;
	out->fds_open = s->fds_open;
	out->conns = s->model.conns;
	out->bytes_sent = s->model.bytes_sent;
	out->bytes_received = s->model.bytes_received;
	out->bytes_lost = s->model.bytes_lost;
	out->cancels_raced = s->count.cancels_raced;
	out->overflows = s->count.overflows;
	out->faults = s->count.faults;
}

int keel_sim_check(const struct keel_sim *sim, char *why, size_t len)
{
	const struct keel__sim *s = (const struct keel__sim *)sim;

	if (s->count.inflight) {
		snprintf(why, len, "%llu ops still in flight",
			 (unsigned long long)s->count.inflight);
		return -1;
	}
	if (s->fds_open) {
		snprintf(why, len, "%u descriptors still open", s->fds_open);
		return -1;
	}
	return sim__model_check(s, why, len);
}
