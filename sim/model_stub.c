/* SPDX-License-Identifier: MIT */
/*
 * model_stub.c: placeholder entry points of the simulated kernel's model
 * (sim.h, "The model") so that the ring engine links before sim-net's
 * objects land. sim-net deletes this file in the commit that defines them.
 */
#include "sim.h"

#include <errno.h>

int sim__socket(struct keel__sim *s, int domain, int type, int protocol,
		struct sim_file **out)
{
	return -EAFNOSUPPORT;
}

int sim__listen(struct keel__sim *s, const char *addr, int backlog,
		struct sim_file **out)
{
	return -EOPNOTSUPP;
}

int sim__reset(struct sim_file *f)
{
	return -EOPNOTSUPP;
}

int sim__open(struct keel__sim *s, const char *path, int flags, unsigned mode,
	      struct sim_file **out)
{
	return -ENOENT;
}

int sim__file_create(struct keel__sim *s, const char *path, const void *data,
		     size_t len)
{
	return -EOPNOTSUPP;
}

int sim__model_check(const struct keel__sim *s, char *why, size_t len)
{
	return 0;
}

void sim__model_fini(struct keel__sim *s)
{
}
