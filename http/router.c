/* SPDX-License-Identifier: MIT */
/*
 * http/router.c: the server's routes: adding them (keel_http_route_task,
 * keel_http_route_text and keel__http_route_add, which files.c and
 * metrics.c use too) and finding the one for a request.
 *
 * Routes are frozen once the server has started (srv->started): they are
 * read by every loop without a lock, so adding one later is -EBUSY. The
 * table is a plain array searched in order; servers have a handful of
 * routes and the first ones (the hot ones, by the user's own order) are
 * found after a few compares.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

static void route_free(struct keel__http_route *r)
{
	free(r->method);
	free(r->path);
	free(r->content_type);
	free(r->body);
	free(r->head);
}

int keel__http_route_add(struct keel_http_server *srv,
			 const struct keel__http_route *r)
{
	if (!srv || !r || !r->path || r->path[0] != '/' ||
	    (r->flags & ~KEEL_HTTP_PREFIX))
		return -EINVAL;
	if (atomic_load(&srv->started))
		return -EBUSY;
	if (srv->nroutes == srv->routes_cap) {
		unsigned cap = srv->routes_cap ? srv->routes_cap * 2 : 8;
		struct keel__http_route *routes =
		    realloc(srv->routes, cap * sizeof(*routes));

		if (!routes)
			return -ENOMEM;
		srv->routes = routes;
		srv->routes_cap = cap;
	}
	struct keel__http_route n = *r;

	/* What the caller passed is copied; head, content_type and body
	 * are already ours when set (keel_http_route_text builds them). */
	n.method = r->method ? strdup(r->method) : NULL;
	n.method_len = r->method ? strlen(r->method) : 0;
	n.path = strdup(r->path);
	n.path_len = strlen(r->path);
	n.index = srv->nroutes;
	if ((r->method && !n.method) || !n.path) {
		free(n.method);
		free(n.path);
		return -ENOMEM;
	}
	srv->routes[srv->nroutes++] = n;
	return 0;
}

static bool path_matches(const struct keel__http_route *r, const char *path,
			 size_t len)
{
	if (r->flags & KEEL_HTTP_PREFIX)
		return len >= r->path_len &&
		       !memcmp(path, r->path, r->path_len);
	return len == r->path_len && !memcmp(path, r->path, len);
}

static bool method_matches(const struct keel__http_route *r, const char *method,
			   size_t len)
{
	if (!r->method)
		return true;
	if (r->method_len == len && !memcmp(r->method, method, len))
		return true;
	/* A GET route answers HEAD (without the body). */
	return len == 4 && r->method_len == 3 && !memcmp(method, "HEAD", 4) &&
	       !memcmp(r->method, "GET", 3);
}

const struct keel__http_route *
keel__http_route_find(const struct keel_http_server *srv, const char *method,
		      size_t method_len, const char *path, size_t path_len,
		      int *status)
{
	bool path_seen = false;

	for (unsigned i = 0; i < srv->nroutes; i++) {
		const struct keel__http_route *r = &srv->routes[i];

		if (!path_matches(r, path, path_len))
			continue;
		if (method_matches(r, method, method_len))
			return r;
		path_seen = true;
	}
	*status = path_seen ? 405 : 404;
	return NULL;
}

size_t keel__http_route_allow(const struct keel_http_server *srv,
			      const char *path, size_t path_len, char *buf,
			      size_t cap)
{
	size_t off = 0;

	if (!cap)
		return 0;
	buf[0] = '\0';
	for (unsigned i = 0; i < srv->nroutes; i++) {
		const struct keel__http_route *r = &srv->routes[i];
		const char *m[2] = {r->method, NULL};
		size_t ml[2] = {r->method_len, 0};

		if (!r->method || !path_matches(r, path, path_len))
			continue; /* a route for any method would have matched
				   */
		if (r->method_len == 3 && !memcmp(r->method, "GET", 3)) {
			m[1] = "HEAD";
			ml[1] = 4;
		}
		for (int k = 0; k < 2 && m[k]; k++) {
			bool seen = false;

			/* Listed once: scan what is already there. */
			for (const char *q = buf; q < buf + off;) {
				const char *e = strchr(q, ',');
				size_t n = e ? (size_t)(e - q) : strlen(q);

				if (n == ml[k] && !memcmp(q, m[k], n))
					seen = true;
				q += n + (e ? 2 : 0);
			}
			if (seen || off + (off ? 2 : 0) + ml[k] + 1 > cap)
				continue;
			if (off) {
				memcpy(buf + off, ", ", 2);
				off += 2;
			}
			memcpy(buf + off, m[k], ml[k]);
			off += ml[k];
			buf[off] = '\0';
		}
	}
	return off;
}

int keel_http_route_task(struct keel_http_server *srv, const char *method,
			 const char *path, unsigned flags,
			 const struct keel_task_type *type, void *arg)
{
	if (!type)
		return -EINVAL;
	struct keel__http_route r = {
	    .method = (char *)method,
	    .path = (char *)path,
	    .flags = flags,
	    .kind = KEEL__HTTP_R_TASK,
	    .type = type,
	    .arg = arg,
	    .root_fd = -1,
	};

	r.shed_type = *type;
	r.shed_type.step = keel__http_shed_step;
	return keel__http_route_add(srv, &r);
}

int keel_http_route_text(struct keel_http_server *srv, const char *method,
			 const char *path, unsigned flags, int status,
			 const char *content_type, const void *body, size_t len)
{
	if (status < 100 || status > 999 || (!body && len))
		return -EINVAL;
	struct keel__http_route r = {
	    .method = (char *)method,
	    .path = (char *)path,
	    .flags = flags,
	    .kind = KEEL__HTTP_R_TEXT,
	    .status = status,
	    .body_len = len,
	    .root_fd = -1,
	};
	/* The head up to the Date line, built once: the fast path copies it
	 * as it is. */
	char head[512];
	int n;

	if (content_type)
		n = snprintf(head, sizeof(head),
			     "HTTP/1.1 %d %s\r\nContent-Type: %s\r\n"
			     "Content-Length: %zu\r\n",
			     status, keel_http_reason(status), content_type,
			     len);
	else
		n = snprintf(head, sizeof(head),
			     "HTTP/1.1 %d %s\r\nContent-Length: %zu\r\n",
			     status, keel_http_reason(status), len);
	if (n < 0 || (size_t)n >= sizeof(head) ||
	    (content_type && strpbrk(content_type, "\r\n")))
		return -EINVAL;
	r.head = malloc((size_t)n + 1);
	r.content_type = content_type ? strdup(content_type) : NULL;
	r.body = malloc(len ? len : 1);
	if (!r.head || (content_type && !r.content_type) || !r.body) {
		route_free(&r);
		return -ENOMEM;
	}
	memcpy(r.head, head, (size_t)n + 1);
	r.head_len = (size_t)n;
	if (len)
		memcpy(r.body, body, len);
	int err = keel__http_route_add(srv, &r);

	if (err) {
		r.method = NULL;
		r.path = NULL;
		route_free(&r);
	}
	return err;
}

void keel__http_routes_free(struct keel_http_server *srv)
{
	for (unsigned i = 0; i < srv->nroutes; i++) {
		struct keel__http_route *r = &srv->routes[i];

		if (r->kind == KEEL__HTTP_R_FILES && r->root_fd >= 0)
			close(r->root_fd);
		route_free(r);
	}
	free(srv->routes);
	srv->routes = NULL;
	srv->nroutes = srv->routes_cap = 0;
}
