/* SPDX-License-Identifier: MIT */
/*
 * pipe.c: pipes on the simulated machine: a bounded byte queue (sndbuf
 * bytes) between a read end and a write end, each its own sim_file.
 *
 * As pipe(7): a read of an empty pipe waits while a writer is open and
 * returns 0 (EOF) after the last one closed; a write whose reader has
 * closed fails with -EPIPE; writes of at most PIPE_BUF bytes are atomic
 * (all or wait), longer ones may be partial. Bytes left unread when the
 * reader closes are lost. The counters join the machine's (struct
 * sim_bytes) so the same identity holds for sockets and pipes.
 */
#include "model.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

struct sim_pipe;

struct sim_pipe_end {
	struct sim_file file; /* first: the engine sees a sim_file */
	struct sim_pipe *pipe;
	bool writer;
};

struct sim_pipe {
	struct sim_net *net;
	struct sim_bq q;
	struct sim_pipe_end *rd, *wr; /* NULL once released */
	struct keel__link node;	      /* net->pipes */
};

static const struct sim_file_ops pipe_ops;

static struct sim_pipe_end *end_of(struct sim_file *f)
{
	return (struct sim_pipe_end *)f;
}

bool sim__is_pipe(const struct sim_file *f)
{
	return f && f->ops == &pipe_ops;
}

static struct sim_pipe_end *end_new(struct sim_pipe *p, bool writer)
{
	struct sim_pipe_end *e = calloc(1, sizeof(*e));

	if (!e)
		return NULL;
	sim__file_init(&e->file, p->net->sim, &pipe_ops);
	e->pipe = p;
	e->writer = writer;
	return e;
}

int sim__pipe_create(struct sim_net *n, struct sim_file **rd,
		     struct sim_file **wr)
{
	struct sim_pipe *p = calloc(1, sizeof(*p));

	if (!p)
		return -ENOMEM;
	p->net = n;
	p->rd = end_new(p, false);
	p->wr = end_new(p, true);
	if (!p->rd || !p->wr || sim__bq_init(&p->q, n->sndbuf)) {
		free(p->rd);
		free(p->wr);
		free(p);
		return -ENOMEM;
	}
	n->open += 2;
	keel__list_push_back(&n->pipes, &p->node);
	*rd = &p->rd->file;
	*wr = &p->wr->file;
	return 0;
}

static int pipe_read(struct sim_file *f, void *buf, size_t len, int64_t off)
{
	struct sim_pipe_end *e = end_of(f);
	struct sim_pipe *p = e->pipe;
	struct sim_net *n = p->net;

	if (e->writer)
		return -EBADF;
	if (!len)
		return 0;
	if (!p->q.len)
		return p->wr ? -EAGAIN : 0;
	size_t k = len < p->q.len ? len : p->q.len;

	k = sim__bq_get(&p->q, buf, sim__short(n->sim, n->short_ppm, k), false);
	sim__net_count(n, 0, k, 0);
	if (p->wr)
		sim__net_wake(n, &p->wr->file);
	return (int)k;
}

static int pipe_write(struct sim_file *f, const void *buf, size_t len,
		      int64_t off)
{
	struct sim_pipe_end *e = end_of(f);
	struct sim_pipe *p = e->pipe;
	struct sim_net *n = p->net;

	if (!e->writer)
		return -EBADF;
	if (!p->rd)
		return -EPIPE;
	if (!len)
		return 0;
	size_t room = p->q.cap - p->q.len;

	/* PIPE_BUF bytes or fewer go in whole or wait. */
	if (!room || (len <= PIPE_BUF && room < len))
		return -EAGAIN;
	size_t k = len < room ? len : room;

	if (len > PIPE_BUF)
		k = sim__short(n->sim, n->short_ppm, k);
	sim__bq_put(&p->q, buf, k);
	sim__net_count(n, k, 0, 0);
	sim__net_wake(n, &p->rd->file);
	return (int)k;
}

static unsigned pipe_poll(struct sim_file *f)
{
	struct sim_pipe_end *e = end_of(f);
	struct sim_pipe *p = e->pipe;

	if (!e->writer)
		return (p->q.len ? POLLIN : 0) | (p->wr ? 0 : POLLHUP);
	if (!p->rd)
		return POLLOUT | POLLERR;
	return p->q.cap - p->q.len >= PIPE_BUF ? POLLOUT : 0;
}

static int pipe_statx(struct sim_file *f, struct statx *st)
{
	memset(st, 0, sizeof(*st));
	st->stx_mask = STATX_TYPE | STATX_MODE | STATX_NLINK | STATX_SIZE;
	st->stx_mode = S_IFIFO | 0600;
	st->stx_nlink = 1;
	st->stx_blksize = 4096;
	return 0;
}

static int pipe_fsync(struct sim_file *f)
{
	return -EINVAL;
}

static void pipe_release(struct sim_file *f)
{
	struct sim_pipe_end *e = end_of(f);
	struct sim_pipe *p = e->pipe;
	struct sim_net *n = p->net;

	n->open--;
	if (e->writer) {
		p->wr = NULL;
		if (p->rd)
			sim__net_wake(n, &p->rd->file);
	} else {
		p->rd = NULL;
		sim__net_count(n, 0, 0, p->q.len);
		p->q.len = 0;
		if (p->wr)
			sim__net_wake(n, &p->wr->file);
	}
	free(e);
	if (!p->rd && !p->wr) {
		keel__list_remove(&n->pipes, &p->node);
		sim__bq_free(&p->q);
		free(p);
	}
}

void sim__pipe_free(struct sim_net *n, struct keel__link *link)
{
	struct sim_pipe *p = keel__list_entry(link, struct sim_pipe, node);

	keel__list_remove(&n->pipes, link);
	free(p->rd);
	free(p->wr);
	sim__bq_free(&p->q);
	free(p);
}

static const struct sim_file_ops pipe_ops = {
    .read = pipe_read,
    .write = pipe_write,
    .fsync = pipe_fsync,
    .statx = pipe_statx,
    .poll = pipe_poll,
    .release = pipe_release,
};
