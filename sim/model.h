/* SPDX-License-Identifier: MIT */
/*
 * model.h: the objects behind simulated descriptors: TCP-like sockets on an
 * in-memory loopback (net.c), pipes (pipe.c) and files in an in-memory file
 * system (fs.c). Each implements struct sim_file_ops (sim.h): an operation
 * is tried now and returns a result, a negative errno, or -EAGAIN for "not
 * ready" (the engine parks the op and retries it when the object calls
 * sim__file_wake()).
 *
 * The entry points the engine calls are declared in sim.h ("The model");
 * this header is the models' own interface, for the opcodes (ops_net.c,
 * ops_fs.c) and the unit tests. A machine's struct sim_net and struct
 * sim_fs are made on first use (s->net, s->fs) and freed, with whatever
 * is still open, by sim__model_fini(). Objects made here start with one
 * reference (sim__file_init), which the caller hands on (sim__fd_install)
 * or drops (sim__file_put); ops->release runs when the last one goes.
 */
#ifndef KEEL_SIM_MODEL_H
#define KEEL_SIM_MODEL_H

#include "sim.h"

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

/* Bytes through the byte streams of one machine (sockets and pipes), so
 * that "no byte lost or duplicated" can be checked: at every moment
 * sent == received + lost + buffered. */
struct sim_bytes {
	uint64_t sent;	   /* accepted by a send or a write */
	uint64_t received; /* delivered by a recv or a read (not by a peek) */
	uint64_t lost;	   /* destroyed (a close with unread data) */
	uint64_t buffered; /* accepted and not yet delivered or destroyed */
};

/* A bounded FIFO of bytes (a socket's receive queue, a pipe). */
struct sim_bq {
	char *data;
	uint32_t cap, head, len;
};

int sim__bq_init(struct sim_bq *q, uint32_t cap);
void sim__bq_free(struct sim_bq *q);
/* Append n bytes; n must fit (n <= cap - len). */
size_t sim__bq_put(struct sim_bq *q, const void *src, size_t n);
/* Take (or with peek, copy) up to n bytes: the count. */
size_t sim__bq_get(struct sim_bq *q, void *dst, size_t n, bool peek);
/* n, or with probability ppm / 10^6 a count in 1..n-1 (the PRNG's). */
size_t sim__short(struct keel__sim *s, unsigned ppm, size_t n);

/* The loopback of one machine: bound listeners and their ports. */
struct sim_net {
	struct keel__sim *sim;
	unsigned sndbuf;    /* bytes per direction of a connection */
	unsigned short_ppm; /* chance per million of a short transfer */
	uint16_t next_port; /* the next ephemeral port */
	struct keel__list listeners; /* struct sim_sock, in bind order */
	uint64_t conns;		     /* connections established, ever */
	uint32_t open;		     /* sockets and pipe ends not released */
	struct keel__list socks;     /* every socket not released */
	struct keel__list pipes;     /* every pipe with an end not released */
	uint64_t wakes;		     /* sim__file_wake calls made */
	struct sim_bytes bytes;
};

/* The machine's loopback (made on first use, with the machine's sndbuf
 * and short_ppm), or NULL when out of memory. */
struct sim_net *sim__net(struct keel__sim *s);
/* 0, or -1 with a one-line reason: the byte counts do not add up, or a
 * socket or pipe end is still open. */
int sim__net_check(const struct sim_net *n, char *why, size_t len);
/* Whether the object of `f` may be ready now: wake its parked ops. */
void sim__net_wake(struct sim_net *n, struct sim_file *f);
/* Bytes accepted by a send, delivered by a recv, destroyed. */
void sim__net_count(struct sim_net *n, uint64_t sent, uint64_t received,
		    uint64_t lost);

/* socket(2): AF_INET, AF_INET6 or AF_UNIX with SOCK_STREAM (type flags
 * SOCK_CLOEXEC / SOCK_NONBLOCK ignored); -EAFNOSUPPORT, -EINVAL otherwise. */
int sim__sock_create(struct sim_net *n, int domain, int type,
		     struct sim_file **out);
/* A listening socket bound to `sa` (the port or, for AF_UNIX, the path is
 * the key; port 0 picks one) with `backlog`: -EADDRINUSE when the key is
 * taken. */
int sim__sock_listen(struct sim_net *n, const struct sockaddr *sa,
		     socklen_t len, int backlog, struct sim_file **out);
/* Fill getsockname(2) (peer false) or getpeername(2) (peer true) of `f`
 * into sa and len as the kernel does (truncated to *len, *len set to the
 * full size): 0, -ENOTSOCK, or -ENOTCONN for an unconnected peer. */
int sim__sock_name(struct sim_file *f, bool peer, struct sockaddr *sa,
		   socklen_t *len);
/* Reset the connection of `f` now, as an RST arriving at both ends
 * (keel_sim_reset): 0, -ENOTSOCK, or -ENOTCONN. */
int sim__sock_reset(struct sim_file *f);
/* The counters of the connection of `f`, in the direction `f` sends
 * (out) and in the direction it receives (in): 0 or -ENOTSOCK. */
struct sim_conn_bytes {
	uint64_t sent, received, lost;
};
int sim__sock_bytes(struct sim_file *f, struct sim_conn_bytes *out,
		    struct sim_conn_bytes *in);
/* Put a connection accept() took back at the head of the listener's
 * queue (its descriptor could not be installed: -EMFILE keeps it queued,
 * as Linux allocates the fd first). -EINVAL, the connection reset, if
 * the listener has stopped meanwhile. */
int sim__sock_unaccept(struct sim_file *listener, struct sim_file *conn);
bool sim__is_sock(const struct sim_file *f);

/* pipe(2): the read end and the write end, one reference each. */
int sim__pipe_create(struct sim_net *n, struct sim_file **rd,
		     struct sim_file **wr);
bool sim__is_pipe(const struct sim_file *f);

/* pipe.c's part of sim__model_fini: free a pipe left open. */
void sim__pipe_free(struct sim_net *n, struct keel__link *link);

/* The in-memory file system: a flat map from path to content. */
struct sim_fs {
	struct keel__sim *sim;
	struct keel__list inodes; /* in creation order */
	struct keel__list files;  /* open files not released */
	uint32_t open;		  /* open files not released */
};

/* The machine's file system (made on first use), or NULL. */
struct sim_fs *sim__fs(struct keel__sim *s);
/* Free the file system, open files included. */
void sim__fs_fini(struct sim_fs *fs);
/* Create (or replace) the file at `path` with `len` bytes of `data`. */
int sim__fs_put(struct sim_fs *fs, const char *path, const void *data,
		size_t len);
/* openat(2) of `path` (O_RDONLY / O_WRONLY / O_RDWR, O_CREAT, O_EXCL,
 * O_TRUNC, O_APPEND; others ignored): -ENOENT for a missing path without
 * O_CREAT, -EEXIST for O_CREAT | O_EXCL on an existing one. */
int sim__fs_open(struct sim_fs *fs, const char *path, int flags,
		 struct sim_file **out);
/* statx(2) of `path` (no descriptor): -ENOENT when missing. */
int sim__fs_statx(struct sim_fs *fs, const char *path, struct statx *st);
bool sim__is_file(const struct sim_file *f);

#endif
