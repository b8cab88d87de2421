/* SPDX-License-Identifier: MIT */
/*
 * common.c: the helpers scenarios share (scenario.h): loops on the
 * machine, failures, the scenario's PRNG, running the machine, and the
 * byte streams whose content says where every byte belongs.
 */
#include "scenario.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct keel_loop *scn_loop(struct scn *s)
{
	struct keel_loop *loop = NULL;
	int err;

	if (s->nloops == SCN_MAX_LOOPS) {
		scn_fail(s, "more than %d loops", SCN_MAX_LOOPS);
		return NULL;
	}
	/* Small rings and budgets now and then: a full SQ, CQ overflow,
	 * and turns that leave ready tasks for the next one. */
	static const unsigned sq[] = {0, 0, 4, 16};
	static const unsigned budget[] = {0, 0, 1, 8};
	struct keel_loop_opts lo = {0};

	lo.sq_entries = sq[scn_below(s, 4)];
	if (lo.sq_entries && scn_pct(s, 50))
		lo.cq_entries = lo.sq_entries; /* the least the ring allows */
	lo.budget = budget[scn_below(s, 4)];
	err = keel_sim_loop_create(s->sim, &loop, &lo);
	if (err) {
		scn_fail(s, "keel_sim_loop_create: %s", keel_strerror(err));
		return NULL;
	}
	s->loops[s->nloops++] = loop;
	/* A step's real duration says nothing about the simulated run. */
	keel_loop_set_stall(loop, 0, NULL, NULL);
	if (s->nloops == 1 && s->trace_path) {
		err = keel_trace_start(s->trace_path);
		if (err)
			scn_fail(s, "keel_trace_start %s: %s", s->trace_path,
				 keel_strerror(err));
		s->tracing = !err;
		/* A loop joins a trace started after it at its next turn:
		 * take that turn now, before anything is spawned on it. */
		if (!err)
			keel_loop_step(loop, 0);
	}
	return loop;
}

void *scn_world(struct scn *s, size_t size)
{
	s->world = calloc(1, size);
	if (!s->world)
		scn_fail(s, "out of memory");
	return s->world;
}

void scn_fail(struct scn *s, const char *fmt, ...)
{
	va_list ap;

	if (s->failed)
		return;
	s->failed = true;
	va_start(ap, fmt);
	vsnprintf(s->why, sizeof(s->why), fmt, ap);
	va_end(ap);
}

bool scn_faulted(struct scn *s, int res)
{
	switch (res) {
	case 0:
	case -ECONNRESET:
	case -EPIPE:
	case -ENOTCONN:
	case -ECONNREFUSED:
	case -ENOBUFS:
	case -EIO:
	case -ENOMEM:
	case -ECANCELED:
	case -EMFILE:
	case -ENFILE:
	case -ETIMEDOUT:
		break;
	default:
		return false;
	}
	if (!s->faults)
		return false;
	s->faulted++;
	return true;
}

int scn_writer_failed(struct keel_task *t, struct scn *s, int fd)
{
	if (s->faults && !keel_token_cancelled(keel_task_token(t)))
		keel_sim_reset(s->sim, fd);
	return keel_res(t);
}

uint64_t scn_rand(struct scn *s)
{
	uint64_t z = (s->rng += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

uint64_t scn_below(struct scn *s, uint64_t n)
{
	return scn_rand(s) % n;
}

uint64_t scn_range(struct scn *s, uint64_t lo, uint64_t hi)
{
	return lo + scn_below(s, hi - lo + 1);
}

bool scn_pct(struct scn *s, unsigned pct)
{
	return scn_below(s, 100) < pct;
}

int scn_run(struct scn *s, uint64_t for_ns)
{
	int err = keel_sim_run(s->sim, for_ns);

	if (err == -ETIME)
		scn_fail(s, "still running after %llu ms of virtual time",
			 (unsigned long long)(for_ns / MS));
	else if (err == -EDEADLK)
		scn_fail(s, "deadlock: tasks wait, but nothing can happen");
	else if (err)
		scn_fail(s, "keel_sim_run: %s", keel_strerror(err));
	return err;
}

void scn_sample(struct scn *s)
{
	for (unsigned i = 0; i < s->nloops; i++) {
		struct keel_loop_stats st;

		keel_loop_stats(s->loops[i], &st);
		if (st.zombies > s->zombies_seen)
			s->zombies_seen = st.zombies;
	}
}

static uint64_t mix(uint64_t z)
{
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* Eight bytes of the stream per mix: the word at off / 8. */
static inline uint64_t stream_word(uint64_t stream, uint64_t word)
{
	return mix(stream << 40 ^ word);
}

void scn_fill(uint64_t stream, uint64_t off, void *buf, size_t len)
{
	uint8_t *p = buf;
	uint64_t w = stream_word(stream, off >> 3);

	for (size_t i = 0; i < len; i++, off++) {
		if (i && !(off & 7))
			w = stream_word(stream, off >> 3);
		p[i] = (uint8_t)(w >> ((off & 7) * 8));
	}
}

size_t scn_verify(uint64_t stream, uint64_t off, const void *buf, size_t len)
{
	const uint8_t *p = buf;
	uint64_t w = stream_word(stream, off >> 3);

	for (size_t i = 0; i < len; i++, off++) {
		if (i && !(off & 7))
			w = stream_word(stream, off >> 3);
		if (p[i] != (uint8_t)(w >> ((off & 7) * 8)))
			return i;
	}
	return len;
}

void scn_addr(uint16_t port, struct sockaddr_storage *ss, socklen_t *len)
{
	keel_net_parse_addr("127.0.0.1", port, ss, len);
}

const char *scn_addr_text(uint16_t port, char buf[32])
{
	snprintf(buf, 32, "127.0.0.1:%u", port);
	return buf;
}

bool scn_ring_and_listener(struct scn *s, struct keel_loop *loop, uint16_t port,
			   unsigned backlog, struct keel_bufring **ring,
			   int *lfd)
{
	static const uint32_t counts[] = {2, 8, 64};
	struct keel_bufring_opts ro = {0};
	char addr[32];
	int err;

	ro.count = counts[scn_below(s, 3)];
	ro.size = 1024;
	err = keel_bufring_create(loop, &ro, ring);
	if (err) {
		scn_fail(s, "bufring_create: %s", keel_strerror(err));
		return false;
	}
	*lfd = keel_sim_listen(s->sim, scn_addr_text(port, addr), backlog);
	if (*lfd < 0) {
		scn_fail(s, "keel_sim_listen: %s", keel_strerror(*lfd));
		return false;
	}
	return true;
}
