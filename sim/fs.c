/* SPDX-License-Identifier: MIT */
/*
 * fs.c: the simulated machine's file system: a flat map from path to
 * content, kept in memory, and the open files (descriptions) on it.
 *
 * Paths are keys: no directories, the directory descriptor of openat and
 * statx is not looked at (every path is taken as given). Reads and writes
 * complete at once (a file is always ready); a read at or past the end
 * returns 0; a write past the end fills the gap with zeros; O_APPEND
 * writes go to the end whatever the offset (as pwrite(2) on Linux).
 * Inodes stay until the machine goes away (there is no unlink).
 */
#include "model.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

struct sim_inode {
	struct keel__link link; /* fs->inodes */
	char *path;
	char *data;
	size_t size, cap;
	uint64_t ino;
};

struct sim_ofile {
	struct sim_file file; /* first: the engine sees a sim_file */
	struct sim_fs *fs;
	struct sim_inode *inode;
	int flags;		/* open flags: access mode, O_APPEND */
	uint64_t pos;		/* the file position (offset -1) */
	struct keel__link node; /* fs->files */
};

static const struct sim_file_ops file_ops;

static struct sim_ofile *ofile_of(struct sim_file *f)
{
	return (struct sim_ofile *)f;
}

bool sim__is_file(const struct sim_file *f)
{
	return f && f->ops == &file_ops;
}

struct sim_fs *sim__fs(struct keel__sim *s)
{
	struct sim_fs *fs = s->fs;

	if (fs)
		return fs;
	fs = calloc(1, sizeof(*fs));
	if (!fs)
		return NULL;
	fs->sim = s;
	keel__list_init(&fs->inodes);
	keel__list_init(&fs->files);
	s->fs = fs;
	return fs;
}

void sim__fs_fini(struct sim_fs *fs)
{
	struct keel__link *it;

	while ((it = keel__list_pop_front(&fs->files)))
		free(keel__list_entry(it, struct sim_ofile, node));
	while ((it = keel__list_pop_front(&fs->inodes))) {
		struct sim_inode *i =
		    keel__list_entry(it, struct sim_inode, link);

		free(i->path);
		free(i->data);
		free(i);
	}
	free(fs);
}

static struct sim_inode *lookup(struct sim_fs *fs, const char *path)
{
	struct keel__link *it;

	keel__list_for_each (it, &fs->inodes) {
		struct sim_inode *i =
		    keel__list_entry(it, struct sim_inode, link);

		if (!strcmp(i->path, path))
			return i;
	}
	return NULL;
}

static struct sim_inode *inode_new(struct sim_fs *fs, const char *path)
{
	struct sim_inode *i = calloc(1, sizeof(*i));

	if (!i || !(i->path = strdup(path))) {
		free(i);
		return NULL;
	}
	/* Numbered in creation order: deterministic, unlike an address. */
	i->ino = 2;
	if (!keel__list_empty(&fs->inodes))
		i->ino = keel__list_entry(keel__list_last(&fs->inodes),
					  struct sim_inode, link)
			     ->ino +
			 1;
	keel__list_push_back(&fs->inodes, &i->link);
	return i;
}

/* Room for `size` bytes, the new ones zeroed. */
static int inode_resize(struct sim_inode *i, size_t size)
{
	if (size > i->cap) {
		size_t cap = i->cap ? i->cap : 4096;

		while (cap < size)
			cap *= 2;
		char *data = realloc(i->data, cap);

		if (!data)
			return -ENOMEM;
		i->data = data;
		i->cap = cap;
	}
	if (size > i->size)
		memset(i->data + i->size, 0, size - i->size);
	i->size = size;
	return 0;
}

int sim__fs_put(struct sim_fs *fs, const char *path, const void *data,
		size_t len)
{
	if (!path || !*path)
		return -ENOENT;
	struct sim_inode *i = lookup(fs, path);

	if (!i && !(i = inode_new(fs, path)))
		return -ENOMEM;
	i->size = 0;
	int err = inode_resize(i, len);

	if (!err && len)
		memcpy(i->data, data, len);
	return err;
}

int sim__fs_open(struct sim_fs *fs, const char *path, int flags,
		 struct sim_file **out)
{
	if (!path || !*path)
		return -ENOENT;
	int mode = flags & O_ACCMODE;

	if (mode == O_ACCMODE)
		return -EINVAL;
	struct sim_inode *i = lookup(fs, path);

	if (i && (flags & O_CREAT) && (flags & O_EXCL))
		return -EEXIST;
	if (!i && !(flags & O_CREAT))
		return -ENOENT;
	struct sim_ofile *o = calloc(1, sizeof(*o));

	if (!o)
		return -ENOMEM;
	if (!i && !(i = inode_new(fs, path))) {
		free(o);
		return -ENOMEM;
	}
	/* O_TRUNC truncates only a file opened for writing. */
	if ((flags & O_TRUNC) && mode != O_RDONLY)
		i->size = 0;
	sim__file_init(&o->file, fs->sim, &file_ops);
	o->fs = fs;
	o->inode = i;
	o->flags = flags;
	keel__list_push_back(&fs->files, &o->node);
	fs->open++;
	*out = &o->file;
	return 0;
}

static void fill_statx(const struct sim_inode *i, struct statx *st)
{
	memset(st, 0, sizeof(*st));
	st->stx_mask = STATX_BASIC_STATS;
	st->stx_mode = S_IFREG | 0644;
	st->stx_nlink = 1;
	st->stx_ino = i->ino;
	st->stx_size = i->size;
	st->stx_blksize = 4096;
	st->stx_blocks = (i->size + 511) / 512;
}

int sim__fs_statx(struct sim_fs *fs, const char *path, struct statx *st)
{
	struct sim_inode *i = path ? lookup(fs, path) : NULL;

	if (!i)
		return -ENOENT;
	fill_statx(i, st);
	return 0;
}

static int file_read(struct sim_file *f, void *buf, size_t len, int64_t off)
{
	struct sim_ofile *o = ofile_of(f);
	struct sim_inode *i = o->inode;
	uint64_t at = off < 0 ? o->pos : (uint64_t)off;

	if ((o->flags & O_ACCMODE) == O_WRONLY)
		return -EBADF;
	if (len > INT_MAX)
		len = INT_MAX;
	size_t n = at >= i->size ? 0 : i->size - at;

	if (n > len)
		n = len;
	memcpy(buf, i->data + at, n);
	if (off < 0)
		o->pos = at + n;
	return (int)n;
}

static int file_write(struct sim_file *f, const void *buf, size_t len,
		      int64_t off)
{
	struct sim_ofile *o = ofile_of(f);
	struct sim_inode *i = o->inode;
	uint64_t at = off < 0 ? o->pos : (uint64_t)off;

	if ((o->flags & O_ACCMODE) == O_RDONLY)
		return -EBADF;
	if (o->flags & O_APPEND)
		at = i->size;
	if (len > INT_MAX)
		len = INT_MAX;
	if (at + len > i->size && inode_resize(i, at + len))
		return -ENOSPC;
	memcpy(i->data + at, buf, len);
	if (off < 0)
		o->pos = at + len;
	return (int)len;
}

static int file_fsync(struct sim_file *f)
{
	return 0;
}

static int file_statx(struct sim_file *f, struct statx *st)
{
	fill_statx(ofile_of(f)->inode, st);
	return 0;
}

static unsigned file_poll(struct sim_file *f)
{
	return POLLIN | POLLOUT;
}

static void file_release(struct sim_file *f)
{
	struct sim_ofile *o = ofile_of(f);

	keel__list_remove(&o->fs->files, &o->node);
	o->fs->open--;
	free(o);
}

static const struct sim_file_ops file_ops = {
    .read = file_read,
    .write = file_write,
    .fsync = file_fsync,
    .statx = file_statx,
    .poll = file_poll,
    .release = file_release,
};

/* The model's entry points (sim.h). */

int sim__open(struct keel__sim *s, const char *path, int flags, unsigned mode,
	      struct sim_file **out)
{
	struct sim_fs *fs = sim__fs(s);

	return fs ? sim__fs_open(fs, path, flags, out) : -ENOMEM;
}

int sim__file_create(struct keel__sim *s, const char *path, const void *data,
		     size_t len)
{
	struct sim_fs *fs = sim__fs(s);

	return fs ? sim__fs_put(fs, path, data, len) : -ENOMEM;
}
