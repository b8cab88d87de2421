/* SPDX-License-Identifier: MIT */
/*
 * http/stubs.c: TEMPORARY stand-ins for the modules other helpers write
 * (files.c; metrics.c and accesslog.c have landed), so that the core links
 * and its tests run before those land. Delete this file when merging them.
 */
#include <errno.h>

#include "internal.h"

int keel_http_route_files(struct keel_http_server *srv, const char *path,
			  const char *root)
{
	(void)srv;
	(void)path;
	(void)root;
	return -ENOSYS;
}

int keel_http_send_file(struct keel_task *t, struct keel_http_exchange *x,
			int dirfd, const char *path)
{
	(void)x;
	(void)dirfd;
	(void)path;
	t->res = -ENOSYS;
	return KEEL_READY;
}

int keel__http_files_serve(struct keel_task *t, struct keel_http_exchange *x,
			   int dirfd, const char *path, size_t len)
{
	(void)x;
	(void)dirfd;
	(void)path;
	(void)len;
	t->res = -ENOSYS;
	return KEEL_READY;
}

void keel__http_files_fini(struct keel__http_shard *sh)
{
	(void)sh;
}
