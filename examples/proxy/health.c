/* SPDX-License-Identifier: MIT */
/*
 * health.c: active health checks (--health tcp|http[:PATH]|off). One task
 * per backend, backend i on loop i % loops, checks it every
 * --health-every: a TCP connect, or an HTTP GET of PATH whose status line
 * must say 2xx or 3xx, all within --health-timeout. --fall failures in a
 * row take an up backend out of the rotation, --rise successes in a row
 * bring a down one back; each change is one line on stderr and counted.
 *
 * A backend's task is the only writer of its `up` flag (once the loops
 * run), so the runs of successes and failures are plain fields of the
 * task's frame. The checks use their own sockets, never a session's, and
 * wake each loop once per check: the data path does not see them.
 *
 * Backends start up (the proxy does not wait for checks to let traffic
 * in; a session that finds one dead tries the next): the first check runs
 * at once, so a backend dead at start is out after --fall checks.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backends.h"

struct health {
	struct keel_task task;
	struct backend *b;
	int fd;
	unsigned ok_run, fail_run; /* successes, failures in a row */
	int result;		   /* this check: 0, -errno, or an HTTP status */
	const char *stage;	   /* where it failed: "connect", "http"... */
	uint64_t deadline;
	/* Handed to the kernel: in the frame. */
	struct sockaddr_storage ss;
	socklen_t len;
	char req[320];
	size_t req_len;
	char resp[128];
	size_t got;
};

static int health_step(struct keel_task *t);
static KEEL_TASK_TYPE(health_task, struct health, task, health_step);

/* What is left of this check's --health-timeout (0: none). */
static uint64_t remaining(struct health *h)
{
	uint64_t now = keel_loop_now(keel_task_loop(&h->task));

	return now < h->deadline ? h->deadline - now : 0;
}

/* Give the next op what is left of the deadline; false: nothing is. */
static bool with_deadline(struct health *h)
{
	uint64_t left = remaining(h);

	if (!left)
		return false;
	keel_op_timeout(&h->task, left);
	return true;
}

/*
 * The status of an HTTP response from its first bytes ("HTTP/1.x NNN"):
 * NNN, -EAGAIN while fewer have arrived, -EPROTO for anything else.
 */
static int status_line(const char *p, size_t len)
{
	if (len < 13)
		return memchr(p, '\n', len) ? -EPROTO : -EAGAIN;
	if (memcmp(p, "HTTP/1.", 7) || p[8] != ' ' || p[9] < '1' ||
	    p[9] > '5' || p[10] < '0' || p[10] > '9' || p[11] < '0' ||
	    p[11] > '9' || (p[12] != ' ' && p[12] != '\r'))
		return -EPROTO;
	return (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
}

/* One check's outcome: count it, and change the state after a run of
 * --fall failures or --rise successes. */
static void health_record(struct health *h)
{
	struct backend *b = h->b;
	char why[160];
	bool ok = h->result == 0;

	atomic_fetch_add_explicit(&b->checks, 1, memory_order_relaxed);
	if (ok) {
		h->fail_run = 0;
		h->ok_run++;
		if (!backend_is_up(b) && h->ok_run >= backends_conf.rise) {
			snprintf(why, sizeof(why), "%u successes", h->ok_run);
			backend_set_up(b, true, why);
		}
		return;
	}
	atomic_fetch_add_explicit(&b->check_failures, 1, memory_order_relaxed);
	h->ok_run = 0;
	h->fail_run++;
	if (backend_is_up(b) && h->fail_run >= backends_conf.fall) {
		if (h->result > 0)
			snprintf(why, sizeof(why), "%s: status %d, %u failures",
				 h->stage, h->result, h->fail_run);
		else
			snprintf(why, sizeof(why), "%s: %s, %u failures",
				 h->stage, keel_strerror(h->result),
				 h->fail_run);
		backend_set_up(b, false, why);
	}
}

static int health_step(struct keel_task *t)
{
	struct health *h = keel_container_of(t, struct health, task);

	KEEL_BEGIN(t);
	if (backends_conf.health == HEALTH_HTTP)
		h->req_len = (size_t)snprintf(
		    h->req, sizeof(h->req),
		    "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: keel-proxy "
		    "health check\r\nConnection: close\r\n\r\n",
		    backends_conf.health_path, h->b->name);
	for (;;) {
		/* A name not resolved yet: nothing to check (it is down,
		 * with the resolver's reason). */
		if (!backend_current(h->b, &h->ss, &h->len))
			goto next;
		h->deadline = keel_loop_now(keel_task_loop(t)) +
			      backends_conf.health_timeout_ns;
		h->stage = "connect";
		h->fd = keel_tcp_socket(h->ss.ss_family);
		if (h->fd < 0) {
			h->result = h->fd;
			goto done;
		}
		keel_op_timeout(t, backends_conf.health_timeout_ns);
		KEEL_AWAIT(t, keel_connect(t, h->fd, (struct sockaddr *)&h->ss,
					   h->len));
		h->result = keel_res(t);
		if (h->result < 0 || backends_conf.health != HEALTH_HTTP)
			goto close;
		h->stage = "http";
		if (!with_deadline(h)) {
			h->result = -ETIMEDOUT;
			goto close;
		}
		KEEL_AWAIT(t, keel_send_all(t, h->fd, h->req, h->req_len,
					    MSG_NOSIGNAL));
		h->result = keel_res(t) < 0 ? keel_res(t) : -EAGAIN;
		h->got = 0;
		while (h->result == -EAGAIN) {
			if (h->got == sizeof(h->resp) || !with_deadline(h)) {
				h->result = h->got == sizeof(h->resp)
						? -EPROTO
						: -ETIMEDOUT;
				break;
			}
			KEEL_AWAIT(t, keel_recv(t, h->fd, h->resp + h->got,
						sizeof(h->resp) - h->got, 0));
			if (keel_res(t) <= 0) {
				h->result = keel_res(t) ? keel_res(t)
							: -ECONNRESET;
				break;
			}
			h->got += (size_t)keel_res(t);
			h->result = status_line(h->resp, h->got);
		}
		if (h->result >= 200 && h->result < 400)
			h->result = 0;
	close:
		KEEL_AWAIT(t, keel_close(t, h->fd));
	done:
		/* Stopping: a check cut short says nothing of the backend. */
		if (keel_token_cancelled(keel_task_token(t)))
			break;
		health_record(h);
	next:
		KEEL_AWAIT(t, keel_sleep(t, backends_conf.health_every_ns));
		if (keel_res(t) < 0)
			break;
	}
	KEEL_END(t);
}

static void health_init(void *frame, void *arg)
{
	((struct health *)frame)->b = arg;
}

int health_start(struct keel_runtime *rt)
{
	if (!health_on())
		return 0;
	for (unsigned i = 0; i < nbackends; i++) {
		struct keel_loop *loop =
		    keel_runtime_loop(rt, i % keel_runtime_size(rt));
		int err = keel_spawn_on(loop, &health_task, KEEL_PRIO_LOW,
					health_init, &backends[i]);

		if (err)
			return err;
	}
	return 0;
}
