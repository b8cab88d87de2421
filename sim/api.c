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

int keel_sim_loop_create(struct keel_sim *sim, struct keel_loop **out,
			 const struct keel_loop_opts *opts)
{
	return -ENOSYS;
}

uint64_t keel_sim_now(const struct keel_sim *sim)
{
	return ((const struct keel__sim *)sim)->now;
}

int keel_sim_run(struct keel_sim *sim, uint64_t for_ns)
{
	return -ENOSYS;
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
