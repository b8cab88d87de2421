/* SPDX-License-Identifier: MIT */
/*
 * kernel.c: the simulated kernel's ring engine: the machine's virtual
 * clock, event queue and PRNG, its descriptor table, and io_uring's three
 * system calls for keel's loops (io/backend.h).
 */
#include "sim.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

uint64_t sim__now(const struct keel__sim *s)
{
	return s->now;
}

uint64_t sim__rand(struct keel__sim *s)
{
	return keel__rand64(&s->rng);
}

bool sim__chance(struct keel__sim *s, unsigned ppm)
{
	return ppm && sim__rand(s) % 1000000u < ppm;
}

/* ---- objects and descriptors ---- */

void sim__file_init(struct sim_file *f, struct keel__sim *s,
		    const struct sim_file_ops *ops)
{
	f->ops = ops;
	f->sim = s;
	f->refs = 1;
	keel__list_init(&f->waiters);
}

void sim__file_get(struct sim_file *f)
{
	f->refs++;
}

void sim__file_put(struct sim_file *f)
{
	if (--f->refs)
		return;
	if (f->ops && f->ops->release)
		f->ops->release(f);
}

int sim__fd_install(struct keel__sim *s, struct sim_file *f)
{
	uint32_t i;

	if (s->fds_open >= s->opts.fd_limit)
		return -EMFILE;
	/* The lowest free number, as Linux gives. */
	for (i = 0; i < s->nfiles && s->files[i]; i++)
		;
	if (i == s->nfiles) {
		struct sim_file **v =
		    realloc(s->files, (s->nfiles + 1) * sizeof(*v));

		if (!v)
			return -ENOMEM;
		s->files = v;
		s->nfiles++;
	}
	s->files[i] = f;
	s->fds_open++;
	return SIM_FD_BASE + (int)i;
}

struct sim_file *sim__fd_get(struct keel__sim *s, int fd)
{
	if (fd < SIM_FD_BASE || (uint32_t)(fd - SIM_FD_BASE) >= s->nfiles)
		return NULL;
	return s->files[fd - SIM_FD_BASE];
}

int sim__fd_close(struct keel__sim *s, int fd)
{
	struct sim_file *f = sim__fd_get(s, fd);

	if (!f)
		return -EBADF;
	s->files[fd - SIM_FD_BASE] = NULL;
	s->fds_open--;
	sim__file_put(f);
	return 0;
}

void sim__file_wake(struct sim_file *f)
{
}

void sim__kernel_fini(struct keel__sim *s)
{
	free(s->files);
	free(s->heap);
	free(s->rings);
}
