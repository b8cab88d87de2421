/* SPDX-License-Identifier: MIT */
/*
 * http/files.c: static files (keel_http_route_files, keel_http_send_file):
 * the FILES responder routine and each loop's open-file cache.
 *
 * A request runs, in the connection's (or a handler's) task:
 *   1. method (GET/HEAD, else 405) and path (files_parse.c: decoded,
 *      no "..", no NUL; 400 otherwise);
 *   2. the loop's open-file cache: a hit younger than FILES_VALID_NS is
 *      used as is; an older one is revalidated (reopened and statx'ed,
 *      the bytes kept when nothing changed); a miss opens the file;
 *   3. conditionals (If-None-Match, else If-Modified-Since: 304) and one
 *      Range (206, 416);
 *   4. a small body (at most FILES_SMALL bytes, kept in the cache) goes
 *      in the same sendmsg as the head: a cached 4 KiB file costs one
 *      sendmsg and no open, statx, read or close. A large body goes by
 *      splice, file -> pipe -> socket, so its bytes never enter user
 *      space; the pipes are pooled per loop. Over TLS (the kernel cannot
 *      encrypt without kTLS) it is read into the connection's staging
 *      buffer and encrypted from there (tls.c).
 *
 * Opening: openat2(2) with RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS, so
 * neither "..", nor an absolute symlink, nor a /proc magic link inside
 * the root can lead out of it (a check of our own on each component
 * would race with renames; the kernel's does not). io_uring's OPENAT2 is
 * not reachable through keel's public API, so it is a system call made
 * first with RESOLVE_CACHED: that one never blocks (it fails with EAGAIN
 * unless every component is in the dentry cache), and only then is the
 * open handed to keel's blocking pool (keel_blocking). So the loop never
 * waits for a disk; it pays a thread hop on a cold miss only. The statx
 * that follows is a system call on the open fd: the inode is in memory
 * once open returned (on a local file system), where io_uring's STATX
 * always goes through an io-wq worker, a thread hop to read memory.
 *
 * Cache entries are counted references: the cache holds one while an
 * entry is in its table, and each response using it one more (its fd or
 * its bytes may be in the kernel's hands during a send), so replacing or
 * evicting an entry never pulls a file out from under a response.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "files.h"
#include "internal.h"

#define FILES_SMALL	(16 * 1024)   /* bodies kept and sent with the head */
#define FILES_VALID_NS	1000000000ull /* revalidate an entry after 1 s */
#define FILES_MAX	256	      /* entries per loop (LRU beyond) */
#define FILES_BUCKETS	512	      /* hash buckets, a power of two */
#define FILES_PIPES	8	      /* idle pipes kept per loop */
#define FILES_PIPE_SIZE (1 << 20)     /* asked of F_SETPIPE_SZ */
#define FILES_PATH_MAX	1024	      /* decoded path, NUL included */
#define FILES_HEAD	512	      /* inline head buffer */

struct files_entry {
	struct files_entry *hnext;	 /* hash chain */
	struct files_entry *prev, *next; /* LRU, most recent first */
	uint64_t hash;
	unsigned refs;	  /* the table's (while linked) + responses' */
	bool linked;	  /* in the table */
	int fd;		  /* O_RDONLY, the file (or the dir's index) */
	uint64_t checked; /* loop time of the last open or revalidation */
	uint64_t size;
	uint64_t mtime_ns;
	uint64_t dev, ino; /* revalidation: the same file? */
	const char *content_type;
	char *body; /* the bytes (size <= FILES_SMALL), else NULL */
	char etag[40];
	char last_modified[30];
	int dirfd;
	size_t key_len;
	char key[]; /* the decoded path */
};

struct files_pipe {
	int fd[2];
	unsigned size; /* F_GETPIPE_SZ */
};

/* One per loop, in sh->files. */
struct files_cache {
	struct files_entry *buckets[FILES_BUCKETS];
	struct files_entry *head, *tail; /* LRU */
	unsigned count;
	unsigned npipes;
	struct files_pipe pipes[FILES_PIPES];
};

/* What the routine does next (the steps of the file comment). */
enum files_step {
	STEP_OPEN,  /* a miss not in the dentry cache: the blocking pool */
	STEP_READ,  /* a small file: read its bytes into the entry */
	STEP_SEND,  /* head (and small body) in one sendmsg */
	STEP_SPLICE /* head, then the body by splice */
};

/* The routine's state, in keel__http_scratch(): it lives across awaits. */
struct files_state {
	enum files_step step;
	int status;
	int err;		 /* < 0: the connection closes */
	struct files_entry *e;	 /* referenced, or NULL */
	struct files_entry *old; /* a stale entry being revalidated */
	uint64_t first, len;	 /* the body: a range of e's bytes */
	uint64_t sent;		 /* body bytes sent */
	char *head;		 /* head_buf, or malloc'ed when larger */
	size_t head_len;
	struct iovec iov[2];
	struct msghdr msg;
	struct files_pipe pipe; /* fd[0] = -1: none */
	bool deferred;		/* files_abandon is on the task's defer stack */
	struct files_job *job;	/* STEP_OPEN's, referenced */
	unsigned defer_mark;
	unsigned in_pipe; /* bytes in the pipe, not yet sent */
	bool index;	  /* the file opened is a directory's index */
	struct statx stx;
	char err_body[48];
	char head_buf[FILES_HEAD];
};

/* ---- opening ------------------------------------------------------------ */

static int openat2_beneath(int dirfd, const char *path, bool cached)
{
	struct open_how how = {
	    .flags = O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK,
	    .resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS |
		       (cached ? RESOLVE_CACHED : 0),
	};
	long fd = syscall(SYS_openat2, dirfd, path, &how, sizeof(how));

	if (fd >= 0)
		return (int)fd;
	/* RESOLVE_CACHED is Linux 5.12: before, it is EINVAL; go the slow
	 * way then. */
	if (cached && errno == EINVAL)
		return -EAGAIN;
	return -errno;
}

/*
 * Open `path` beneath `dirfd` and statx it; a directory is its
 * "index.html" (O_NONBLOCK: a FIFO in the tree must not hang the open; it
 * is refused as not a regular file afterwards). Returns the fd or -errno;
 * -EAGAIN when `cached` and the kernel would have to read a disk;
 * -EISDIR for a directory without an index. *index says whether it
 * opened a directory's index (its content type is then html's).
 */
static int files_open(int dirfd, const char *path, bool cached,
		      struct statx *stx, bool *index)
{
	const unsigned mask =
	    STATX_TYPE | STATX_MODE | STATX_SIZE | STATX_MTIME | STATX_INO;
	int fd = openat2_beneath(dirfd, *path ? path : ".", cached), err;

	if (fd < 0)
		return fd;
	if (statx(fd, "", AT_EMPTY_PATH, mask, stx) < 0)
		goto fail;
	*index = S_ISDIR(stx->stx_mode);
	if (*index) {
		int ifd = openat2_beneath(fd, "index.html", cached);

		close(fd);
		if (ifd < 0)
			return ifd == -ENOENT ? -EISDIR : ifd;
		fd = ifd;
		if (statx(fd, "", AT_EMPTY_PATH, mask, stx) < 0)
			goto fail;
	}
	return fd;
fail:
	err = -errno;
	close(fd);
	return err;
}

/*
 * The blocking pool's job: the same open without RESOLVE_CACHED. It owns
 * what it reads and writes, not the exchange's scratch block: a handler
 * task killed while the job runs lets its exchange go, and the job must
 * not write into that. Whichever of the job and the response lets go of
 * it last frees it (and closes an fd nobody claimed).
 */
struct files_job {
	atomic_uint refs; /* the job's, the response's */
	int dirfd;
	int fd;	  /* the result; -1 once the response took it */
	bool ran; /* else the pool refused or dropped it: one put is ours */
	bool index;
	struct statx stx;
	char path[];
};

static void job_put(struct files_job *j)
{
	if (atomic_fetch_sub(&j->refs, 1) != 1)
		return;
	if (j->fd >= 0)
		close(j->fd);
	free(j);
}

static int files_open_job(void *arg)
{
	struct files_job *j = arg;
	int fd = files_open(j->dirfd, j->path, false, &j->stx, &j->index);

	j->fd = fd;
	j->ran = true;
	job_put(j); /* the pool does not touch arg after this returns */
	return fd;
}

static struct files_job *job_new(int dirfd, const char *path, size_t len)
{
	struct files_job *j = malloc(sizeof(*j) + len + 1);

	if (!j)
		return NULL;
	atomic_init(&j->refs, 2);
	j->dirfd = dirfd;
	j->fd = -1;
	j->ran = false;
	j->index = false;
	memcpy(j->path, path, len + 1);
	return j;
}

static int errno_status(int err)
{
	switch (err) {
	case -ENOENT:
	case -ENOTDIR:
		return 404;
	case -EACCES:
	case -EPERM:
	case -EISDIR: /* a directory without index.html */
	case -EXDEV:  /* RESOLVE_BENEATH: it would leave the root */
	case -ELOOP:  /* a symlink loop, or a magic link */
		return 403;
	case -ENAMETOOLONG:
		return 414;
	case -EAGAIN: /* the blocking pool's queue is full */
		return 503;
	default:
		return 500;
	}
}

/* ---- the cache ---------------------------------------------------------- */

static uint64_t files_hash(int dirfd, const char *key, size_t len)
{
	uint64_t h = 14695981039346656037ull ^ (uint64_t)(unsigned)dirfd;

	for (size_t i = 0; i < len; i++)
		h = (h ^ (unsigned char)key[i]) * 1099511628211ull;
	return h;
}

static struct files_cache *files_cache(struct keel__http_shard *sh)
{
	if (!sh->files)
		sh->files = calloc(1, sizeof(struct files_cache));
	return sh->files;
}

static void entry_put(struct files_entry *e)
{
	if (--e->refs)
		return;
	if (e->fd >= 0)
		close(e->fd);
	free(e->body);
	free(e);
}

static void lru_unlink(struct files_cache *c, struct files_entry *e)
{
	if (e->prev)
		e->prev->next = e->next;
	else
		c->head = e->next;
	if (e->next)
		e->next->prev = e->prev;
	else
		c->tail = e->prev;
	e->prev = e->next = NULL;
}

static void lru_push(struct files_cache *c, struct files_entry *e)
{
	e->prev = NULL;
	e->next = c->head;
	if (c->head)
		c->head->prev = e;
	else
		c->tail = e;
	c->head = e;
}

/* Take `e` out of the table (responses using it keep it alive). */
static void cache_remove(struct files_cache *c, struct files_entry *e)
{
	struct files_entry **p = &c->buckets[e->hash & (FILES_BUCKETS - 1)];

	while (*p != e)
		p = &(*p)->hnext;
	*p = e->hnext;
	lru_unlink(c, e);
	e->linked = false;
	c->count--;
	entry_put(e);
}

static struct files_entry *cache_find(struct files_cache *c, int dirfd,
				      const char *key, size_t len,
				      uint64_t hash)
{
	struct files_entry *e = c->buckets[hash & (FILES_BUCKETS - 1)];

	for (; e; e = e->hnext)
		if (e->hash == hash && e->dirfd == dirfd && e->key_len == len &&
		    !memcmp(e->key, key, len))
			return e;
	return NULL;
}

/* Put a complete entry in the table, replacing one of the same key and
 * evicting the least recently used beyond FILES_MAX. */
static void cache_insert(struct files_cache *c, struct files_entry *e)
{
	struct files_entry *old =
	    cache_find(c, e->dirfd, e->key, e->key_len, e->hash);
	struct files_entry **b = &c->buckets[e->hash & (FILES_BUCKETS - 1)];

	if (old)
		cache_remove(c, old);
	while (c->count >= FILES_MAX && c->tail)
		cache_remove(c, c->tail);
	e->hnext = *b;
	*b = e;
	lru_push(c, e);
	e->linked = true;
	e->refs++;
	c->count++;
}

static struct files_entry *entry_new(int dirfd, const char *key, size_t len,
				     uint64_t hash)
{
	struct files_entry *e = calloc(1, sizeof(*e) + len + 1);

	if (!e)
		return NULL;
	e->refs = 1; /* the response's */
	e->fd = -1;
	e->dirfd = dirfd;
	e->hash = hash;
	e->key_len = len;
	memcpy(e->key, key, len);
	return e;
}

static uint64_t stx_ns(const struct statx_timestamp *ts)
{
	return (uint64_t)ts->tv_sec * 1000000000ull + ts->tv_nsec;
}

/* Fill `e` from an open fd and its statx: what every response needs. */
static void entry_fill(struct files_entry *e, int fd, const struct statx *stx,
		       bool index, uint64_t now)
{
	e->fd = fd;
	e->checked = now;
	e->size = stx->stx_size;
	e->mtime_ns = stx_ns(&stx->stx_mtime);
	e->dev = (uint64_t)stx->stx_dev_major << 32 | stx->stx_dev_minor;
	e->ino = stx->stx_ino;
	e->content_type = index ? keel__http_content_type("index.html", 10)
				: keel__http_content_type(e->key, e->key_len);
	keel__http_etag(e->etag, sizeof(e->etag), e->mtime_ns, e->size);
	keel__http_date_format(e->last_modified,
			       (int64_t)stx->stx_mtime.tv_sec);
}

static bool entry_same(const struct files_entry *e, const struct statx *stx)
{
	return e->size == stx->stx_size &&
	       e->mtime_ns == stx_ns(&stx->stx_mtime) &&
	       e->ino == stx->stx_ino &&
	       e->dev ==
		   ((uint64_t)stx->stx_dev_major << 32 | stx->stx_dev_minor);
}

/* ---- the pipes ---------------------------------------------------------- */

static int pipe_get(struct files_cache *c, struct files_pipe *p)
{
	int size;

	if (c->npipes) {
		*p = c->pipes[--c->npipes];
		return 0;
	}
	if (pipe2(p->fd, O_CLOEXEC) < 0)
		return -errno;
	/* 1 MiB moves a large file in few splices; an unprivileged process
	 * over pipe-max-size or its user's pipe pages gets EPERM and keeps
	 * the default 64 KiB, which works too. */
	(void)fcntl(p->fd[1], F_SETPIPE_SZ, FILES_PIPE_SIZE);
	size = fcntl(p->fd[1], F_GETPIPE_SZ);
	p->size = size > 0 ? (unsigned)size : 65536;
	return 0;
}

/* A pipe with bytes left in it (a send broke off) is closed, not pooled:
 * the next response would send them. */
static void pipe_put(struct files_cache *c, struct files_pipe *p, bool clean)
{
	if (p->fd[0] < 0)
		return;
	if (clean && c && c->npipes < FILES_PIPES) {
		c->pipes[c->npipes++] = *p;
	} else {
		close(p->fd[0]);
		close(p->fd[1]);
	}
	p->fd[0] = p->fd[1] = -1;
}

/* ---- the response ------------------------------------------------------- */

/* Build the head into st (growing past the inline buffer when the
 * handler added many headers). false: out of memory. */
static bool build_head(struct keel_http_exchange *x, struct files_state *st,
		       int status, const char *ctype, int64_t clen)
{
	size_t n = keel__http_head(x, status, ctype, clen, st->head_buf,
				   sizeof(st->head_buf));

	st->head = st->head_buf;
	if (n > sizeof(st->head_buf)) {
		st->head = malloc(n);
		if (!st->head)
			return false;
		n = keel__http_head(x, status, ctype, clen, st->head, n);
	}
	st->head_len = n;
	st->iov[0].iov_base = st->head;
	st->iov[0].iov_len = n;
	st->msg.msg_iov = st->iov;
	st->msg.msg_iovlen = 1;
	return true;
}

/* An error (or 405) answer: the reason phrase as a text body;
 * STEP_SEND. */
static enum files_step respond_error(struct keel_http_exchange *x,
				     struct files_state *st, int status)
{
	int len = snprintf(st->err_body, sizeof(st->err_body), "%s\n",
			   keel_http_reason(status));

	st->status = status;
	if (status == 405)
		(void)keel_http_add_header(x, "Allow", "GET, HEAD");
	if (!build_head(x, st, status, "text/plain; charset=utf-8",
			(int64_t)len)) {
		st->err = -ENOMEM;
		return STEP_SEND;
	}
	if (!keel__http_is_head(x)) {
		st->iov[1].iov_base = st->err_body;
		st->iov[1].iov_len = (size_t)len;
		st->msg.msg_iovlen = 2;
		st->len = (uint64_t)len;
	}
	return STEP_SEND;
}

/* If-None-Match, else If-Modified-Since (RFC 9110 13.2.2): true for
 * a 304. */
static bool not_modified(struct keel_http_exchange *x,
			 const struct files_entry *e)
{
	size_t len;
	const char *v = keel_http_header(x, "If-None-Match", &len);
	int64_t since;

	if (v)
		return keel__http_etag_match(v, len, e->etag, strlen(e->etag));
	v = keel_http_header(x, "If-Modified-Since", &len);
	return v && keel__http_date_parse(v, len, &since) == 0 &&
	       (int64_t)(e->mtime_ns / 1000000000ull) <= since;
}

/* If-Range (RFC 9110 13.1.5): a Range counts only when this validator
 * (a strong etag, or the exact Last-Modified date) still holds. */
static bool if_range_holds(struct keel_http_exchange *x,
			   const struct files_entry *e)
{
	size_t len;
	const char *v = keel_http_header(x, "If-Range", &len);

	if (!v)
		return true;
	if (len && v[0] == '"')
		return len == strlen(e->etag) && !memcmp(v, e->etag, len);
	return len == strlen(e->last_modified) &&
	       !memcmp(v, e->last_modified, len);
}

/* With an entry in hand: conditionals, Range, the head and what sends the
 * body. */
static enum files_step respond_entry(struct keel_http_exchange *x,
				     struct files_state *st)
{
	struct files_entry *e = st->e;
	char crange[80];
	size_t len;
	const char *v;
	int r = 0;

	(void)keel_http_add_header(x, "ETag", e->etag);
	(void)keel_http_add_header(x, "Last-Modified", e->last_modified);
	if (not_modified(x, e)) {
		/* No body. keel__http_head writes a Content-Length for any
		 * clen >= 0 (and chunked for -1), so give the length a 200
		 * would have had, as RFC 9110 8.6 allows for a 304. */
		st->status = 304;
		if (!build_head(x, st, 304, NULL, (int64_t)e->size))
			st->err = -ENOMEM;
		return STEP_SEND;
	}
	(void)keel_http_add_header(x, "Accept-Ranges", "bytes");
	st->status = 200;
	st->first = 0;
	st->len = e->size;
	v = keel_http_header(x, "Range", &len);
	if (v && if_range_holds(x, e)) {
		uint64_t a, b;

		r = keel__http_range_parse(v, len, e->size, &a, &b);
		if (r < 0) {
			snprintf(crange, sizeof(crange), "bytes */%llu",
				 (unsigned long long)e->size);
			(void)keel_http_add_header(x, "Content-Range", crange);
			return respond_error(x, st, 416);
		}
		if (r > 0) {
			snprintf(crange, sizeof(crange), "bytes %llu-%llu/%llu",
				 (unsigned long long)a, (unsigned long long)b,
				 (unsigned long long)e->size);
			(void)keel_http_add_header(x, "Content-Range", crange);
			st->status = 206;
			st->first = a;
			st->len = b - a + 1;
		}
	}
	if (!build_head(x, st, st->status, e->content_type, (int64_t)st->len)) {
		st->err = -ENOMEM;
		return STEP_SEND;
	}
	if (keel__http_is_head(x) || st->len == 0) {
		st->len = 0;
		return STEP_SEND;
	}
	if (e->body) {
		st->iov[1].iov_base = e->body + st->first;
		st->iov[1].iov_len = st->len;
		st->msg.msg_iovlen = 2;
		return STEP_SEND;
	}
	return STEP_SPLICE;
}

/*
 * A freshly opened file (fd, or -errno) for st->e: fill it, then read its
 * bytes (small) or put it in the cache (large). When it revalidates a
 * stale entry (st->old, referenced) that is unchanged, the old entry, its
 * fd and bytes serve on.
 */
static enum files_step opened(struct keel_task *t, struct keel_http_exchange *x,
			      struct files_state *st, int fd)
{
	struct files_cache *c = keel__http_shard(x)->files;
	struct files_entry *old = st->old;
	uint64_t now = keel_loop_now(keel_task_loop(t));
	enum files_step step;

	st->old = NULL;
	if (fd >= 0 && !S_ISREG(st->stx.stx_mode)) {
		close(fd);
		fd = -EACCES; /* a FIFO, a device, a socket: 403 */
	}
	if (fd < 0) {
		if (old && old->linked)
			cache_remove(c, old);
		step = respond_error(x, st, errno_status(fd));
	} else if (old && entry_same(old, &st->stx)) {
		close(fd);
		old->checked = now;
		entry_put(st->e);
		st->e = old; /* our reference moves to st->e */
		old = NULL;
		step = respond_entry(x, st);
	} else {
		entry_fill(st->e, fd, &st->stx, st->index, now);
		st->e->body = st->e->size > 0 && st->e->size <= FILES_SMALL
				  ? malloc(st->e->size)
				  : NULL;
		if (st->e->body) {
			step = STEP_READ; /* cached once the bytes are in */
		} else {
			cache_insert(c, st->e);
			step = respond_entry(x, st);
		}
	}
	if (old)
		entry_put(old);
	return step;
}

/* The bytes of a small file arrived (`n`, or -errno). */
static enum files_step read_done(struct keel_http_exchange *x,
				 struct files_state *st, int n)
{
	if (n < 0 || (uint64_t)n != st->e->size) {
		/* Changed under us (or an I/O error): do not cache it. */
		return respond_error(x, st, 500);
	}
	cache_insert(keel__http_shard(x)->files, st->e);
	return respond_entry(x, st);
}

/*
 * Everything before the first await: method, path, the cache. Returns the
 * next step, with st->e referenced (or, for an error answer, the head
 * built).
 */
static enum files_step begin(struct keel_task *t, struct keel_http_exchange *x,
			     struct files_state *st, int dirfd,
			     const char *path, size_t plen, bool encoded)
{
	struct keel__http_shard *sh = keel__http_shard(x);
	const char *m = keel_http_method(x);
	uint64_t now, hash;
	struct files_cache *c;
	struct files_entry *e;
	char key[FILES_PATH_MAX];
	int n, fd;

	/* The scratch block is zeroed when new, but a handler's earlier
	 * routine may have used it: set every field the steps read. */
	memset(&st->msg, 0, sizeof(st->msg));
	st->e = st->old = NULL;
	st->err = 0;
	st->sent = st->len = st->first = 0;
	st->head = NULL;
	st->pipe.fd[0] = st->pipe.fd[1] = -1;
	st->in_pipe = 0;
	st->deferred = false;
	st->job = NULL;
	if (strcmp(m, "GET") && strcmp(m, "HEAD"))
		return respond_error(x, st, 405);
	n = keel__http_path_decode(path, plen, encoded, key, sizeof(key));
	if (n < 0)
		return respond_error(x, st, n == -EINVAL ? 400 : 414);
	c = files_cache(sh);
	if (!c)
		return respond_error(x, st, 500);
	now = keel_loop_now(keel_task_loop(t));
	hash = files_hash(dirfd, key, (size_t)n);
	e = cache_find(c, dirfd, key, (size_t)n, hash);
	if (e && now - e->checked < FILES_VALID_NS) {
		lru_unlink(c, e);
		lru_push(c, e);
		e->refs++;
		st->e = e;
		return respond_entry(x, st);
	}
	/* A miss, or a stale entry to revalidate: open anew. */
	if (e) {
		e->refs++; /* it may be evicted while we wait */
		st->old = e;
	}
	st->e = entry_new(dirfd, key, (size_t)n, hash);
	if (!st->e)
		return opened(t, x, st, -ENOMEM); /* drops st->old */
	fd = files_open(dirfd, st->e->key, true, &st->stx, &st->index);
	if (fd == -EAGAIN)
		return STEP_OPEN;
	return opened(t, x, st, fd);
}

/* The response is over: counters, references, the pipe. */
static void finish(struct keel_http_exchange *x, struct files_state *st)
{
	keel__http_sent(x, st->status, st->sent, st->err);
	pipe_put(keel__http_shard(x)->files, &st->pipe,
		 st->err == 0 && st->in_pipe == 0);
	if (st->e)
		entry_put(st->e);
	st->e = NULL;
	if (st->head != st->head_buf)
		free(st->head);
	st->head = NULL;
}

/*
 * The task died waiting for the blocking pool or in the middle of a splice
 * (killed, or its loop destroyed with it waiting): let go of what the
 * response holds. Not through the cache, which may be gone already: the
 * pipe is closed, the job's and the entry's references dropped.
 */
static void files_abandon(void *arg)
{
	struct files_state *st = arg;

	pipe_put(NULL, &st->pipe, false);
	/* An entry with bytes is left: a read may still write them, a send
	 * read them. A splice's entry has none (its fd the kernel holds). */
	if (st->e && st->step == STEP_SPLICE)
		entry_put(st->e);
	st->e = NULL;
	if (st->job)
		job_put(st->job);
	st->job = NULL;
	/* A head longer than head_buf is left: a send may still read it. */
}

/* Put files_abandon on the task's defer stack (once). */
static int hold(struct keel_task *t, struct files_state *st)
{
	int err;

	if (st->deferred)
		return 0;
	st->defer_mark = keel_defer_mark(t);
	err = keel_defer(t, files_abandon, st);
	st->deferred = err == 0;
	return err;
}

/* The blocking pool answered: `res` is the job's fd or -errno, or the
 * pool's own -errno when the job never ran (-EAGAIN: its queue is full;
 * the task's cancellation; -ECANCELED: dropped with its loop). A
 * cancelled task waits for a running job, so `ran` is settled here. */
static enum files_step job_done(struct keel_task *t,
				struct keel_http_exchange *x,
				struct files_state *st, int res)
{
	struct files_job *j = st->job;
	int fd = res;

	st->job = NULL;
	if (!j->ran) {
		job_put(j); /* the job's own reference */
	} else {
		fd = j->fd;
		j->fd = -1;
		st->stx = j->stx;
		st->index = j->index;
	}
	job_put(j);
	return opened(t, x, st, fd);
}

static int files_serve(struct keel_task *t, struct keel_http_exchange *x,
		       int dirfd, const char *path, size_t len, bool encoded)
{
	struct keel_routine *r = keel__http_routine(x);
	struct files_state *st = keel__http_scratch(x, sizeof(*st));
	int fd = keel__http_fd(x);

	if (!st)
		return (t->res = -ENOMEM, KEEL_READY);
	KEEL_BEGIN(r);
	st->step = begin(t, x, st, dirfd, path, len, encoded);
	if (st->step == STEP_OPEN) {
		st->job = job_new(dirfd, st->e->key, st->e->key_len);
		if (!st->job || hold(t, st) < 0) {
			st->step = opened(t, x, st, -ENOMEM);
		} else {
			KEEL_AWAIT(r,
				   keel_blocking(t, files_open_job, st->job));
			st->step = job_done(t, x, st, keel_res(t));
		}
	}
	if (st->step == STEP_READ) {
		KEEL_AWAIT(r, keel_read(t, st->e->fd, st->e->body,
					(unsigned)st->e->size, 0));
		st->step = read_done(x, st, keel_res(t));
	}
	if (st->err)
		goto out;
	if (st->step == STEP_SEND) {
		if (keel__http_is_tls(x))
			KEEL_AWAIT_CALL(r, keel__http_x_tls_sendv(
					       t, x, st->msg.msg_iov,
					       (unsigned)st->msg.msg_iovlen));
		else
			KEEL_AWAIT(
			    r, keel_sendmsg_all(t, fd, &st->msg, MSG_NOSIGNAL));
		if (keel_res(t) < 0)
			st->err = keel_res(t);
		else
			st->sent = st->msg.msg_iovlen > 1 ? st->len : 0;
		goto out;
	}
	/* STEP_SPLICE: the head (MSG_MORE: it leaves with the first body
	 * bytes), then file -> pipe -> socket until st->len is sent: many
	 * awaits, so what they hold is on the defer stack meanwhile. */
	st->err = hold(t, st);
	if (st->err)
		goto out;
	if (keel__http_is_tls(x)) {
		/* TLS: the kernel cannot encrypt, so no splice: the file is
		 * read into the connection's staging buffer (after the
		 * head, for the first record) and encrypted from there. */
		KEEL_AWAIT_CALL(r, keel__http_x_tls_sendfile(
				       t, x, st->head, st->head_len, st->e->fd,
				       st->first, st->len));
		if (keel_res(t) < 0)
			st->err = keel_res(t);
		else
			st->sent = st->len;
		goto out;
	}
	st->err = pipe_get(keel__http_shard(x)->files, &st->pipe);
	if (st->err)
		goto out;
	KEEL_AWAIT(r,
		   keel_sendmsg_all(t, fd, &st->msg, MSG_NOSIGNAL | MSG_MORE));
	if (keel_res(t) < 0) {
		st->err = keel_res(t);
		goto out;
	}
	while (st->sent < st->len) {
		KEEL_AWAIT(r, keel_splice(t, st->e->fd,
					  (int64_t)(st->first + st->sent),
					  st->pipe.fd[1], -1,
					  st->len - st->sent < st->pipe.size
					      ? (unsigned)(st->len - st->sent)
					      : st->pipe.size,
					  SPLICE_F_MOVE));
		if (keel_res(t) <= 0) {
			/* 0: the file shrank after its statx; the head
			 * promised more, so the connection must close. */
			st->err = keel_res(t) < 0 ? keel_res(t) : -EIO;
			goto out;
		}
		st->in_pipe = (unsigned)keel_res(t);
		while (st->in_pipe) {
			KEEL_AWAIT(
			    r, keel_splice(t, st->pipe.fd[0], -1, fd, -1,
					   st->in_pipe,
					   SPLICE_F_MOVE |
					       (st->sent + st->in_pipe < st->len
						    ? SPLICE_F_MORE
						    : 0)));
			if (keel_res(t) <= 0) {
				st->err =
				    keel_res(t) < 0 ? keel_res(t) : -EPIPE;
				goto out;
			}
			st->in_pipe -= (unsigned)keel_res(t);
			st->sent += (unsigned)keel_res(t);
		}
	}
out:
	if (st->deferred)
		keel_defer_drop(t, st->defer_mark);
	finish(x, st);
	KEEL_ROUTINE_RETURN(r, t, st->err);
}

/* ---- the API ------------------------------------------------------------ */

int keel__http_files_serve(struct keel_task *t, struct keel_http_exchange *x,
			   int dirfd, const char *path, size_t len)
{
	return files_serve(t, x, dirfd, path, len, true);
}

int keel_http_send_file(struct keel_task *t, struct keel_http_exchange *x,
			int dirfd, const char *path)
{
	/* A file name, not a request target: no percent-decoding. */
	return files_serve(t, x, dirfd, path, strlen(path), false);
}

int keel_http_route_files(struct keel_http_server *srv, const char *path,
			  const char *root)
{
	struct keel__http_route r = {0};
	int err;

	if (!srv || !path || !root)
		return -EINVAL;
	r.root_fd = open(root, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (r.root_fd < 0)
		return -errno; /* -ENOTDIR: not a directory; -ENOENT... */
	r.method = (char *)"GET";
	r.path = (char *)path;
	r.path_len = strlen(path);
	r.flags = KEEL_HTTP_PREFIX;
	r.kind = KEEL__HTTP_R_FILES;
	err = keel__http_route_add(srv, &r);
	if (err)
		close(r.root_fd);
	return err;
}

void keel__http_files_fini(struct keel__http_shard *sh)
{
	struct files_cache *c = sh->files;

	if (!c)
		return;
	/* The loop is stopping. An entry a response still holds (its task
	 * was killed mid-send) goes when that response's defer drops it. */
	while (c->head)
		cache_remove(c, c->head);
	while (c->npipes) {
		c->npipes--;
		close(c->pipes[c->npipes].fd[0]);
		close(c->pipes[c->npipes].fd[1]);
	}
	free(c);
	sh->files = NULL;
}
