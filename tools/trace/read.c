/* SPDX-License-Identifier: MIT */
/*
 * read.c: the trace file. Every record is checked against the file's size
 * before it is read, so a truncated, empty or foreign file (or anything but
 * a regular file, a FIFO without waiting for its writer) is refused with
 * one line before any output is written. Also the string table: STRING
 * records in, text by id out.
 */
#include "keel-trace.h"

#define HEADER_BYTES 32
#define RECORD_BYTES 16
/* A larger loop index is corruption: loops are threads of one process. */
#define MAX_LOOPS 4096

/* ---- the string table ------------------------------------------------- */

/* The string with this id, or NULL if the file has not defined it. */
const char *str_find(const struct strings *s, uint64_t id)
{
	uint32_t i = id > UINT32_MAX ? NOT_FOUND : map_get(&s->ids, id);

	return i == NOT_FOUND ? NULL : s->blob.v + s->at.v[i];
}

/* The first id of the same text; an undefined id stays as it is. */
uint32_t str_canonical(const struct strings *s, uint32_t id)
{
	uint32_t i = map_get(&s->ids, id);

	return i == NOT_FOUND ? id : s->first.v[i];
}

/* Text for an id that names something; `none` if the id is 0. */
const char *str_or(const struct strings *s, uint64_t id, const char *none)
{
	const char *p = id ? str_find(s, id) : none;

	return p ? p : "(unknown string)";
}

/* ---- the reader: records, checked against the file's size ------------- */

void reader_read(struct reader *r, void *buf, size_t n)
{
	if (fread(buf, 1, n, r->f) != n)
		die("read error at byte %" PRIu64 ": %s", r->off,
		    ferror(r->f) ? strerror(errno) : "the file shrank");
	r->off += n;
}

void reader_skip(struct reader *r, uint64_t n)
{
	if (n > INT64_MAX || fseeko(r->f, (off_t)n, SEEK_CUR) != 0)
		die("seek error at byte %" PRIu64 ": %s", r->off,
		    strerror(errno));
	r->off += n;
}

static void reader_header(struct reader *r)
{
	unsigned char h[HEADER_BYTES];
	size_t got = r->size < HEADER_BYTES ? (size_t)r->size : HEADER_BYTES;
	uint32_t version, event_size;

	if (got == 0)
		die("empty file");
	reader_read(r, h, got);
	if (memcmp(h, KEEL_TRACE_MAGIC, got < 8 ? got : 8) != 0)
		die("bad magic (not a keel trace)");
	if (got < HEADER_BYTES)
		die("truncated header (%zu of %d bytes)", got, HEADER_BYTES);
	version = le32(h + 8);
	event_size = le32(h + 12);
	if (version != KEEL_TRACE_VERSION)
		die("unsupported version %" PRIu32, version);
	if (event_size != EVENT_BYTES)
		die("unsupported event size %" PRIu32 " (expected %d)",
		    event_size, EVENT_BYTES);
	r->start_mono = le64(h + 16);
	r->start_real = le64(h + 24);
}

void reader_open(struct reader *r, const char *path)
{
	/* O_NONBLOCK: opening a FIFO would wait for a writer. The type is
	 * checked on what was opened (fstat), so the path cannot change
	 * under us between a check and the open; O_NONBLOCK means nothing
	 * for the regular file we go on to read. */
	int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);

	if (fd < 0)
		die("%s", strerror(errno));
	if (fstat(fd, &r->st) != 0)
		die("%s", strerror(errno));
	/* Two passes need a file we can read again from the start. */
	if (!S_ISREG(r->st.st_mode))
		die("not a regular file");
	r->f = fdopen(fd, "rb");
	if (!r->f)
		die("%s", strerror(errno));
	setvbuf(r->f, NULL, _IOFBF, 1 << 16);
	reader_start(r, r->f, (uint64_t)r->st.st_size);
}

/* Everything after the open: the fuzz target reads a buffer this way. */
void reader_start(struct reader *r, FILE *f, uint64_t size)
{
	r->f = f;
	r->size = size;
	r->off = 0;
	reader_header(r);
}

void reader_rewind(struct reader *r)
{
	if (fseeko(r->f, HEADER_BYTES, SEEK_SET) != 0)
		die("seek error: %s", strerror(errno));
	r->off = HEADER_BYTES;
}

/* The body's length in bytes; a record that cannot be read is fatal. */
uint64_t record_body(const struct reader *r, const struct record *rec)
{
	uint64_t body;

	switch (rec->kind) {
	case KEEL_TRACE_REC_EVENTS:
		body = (uint64_t)rec->count * EVENT_BYTES;
		break;
	case KEEL_TRACE_REC_STRING:
		body = ((uint64_t)rec->count + 7) & ~7ull; /* padded to 8 */
		break;
	case KEEL_TRACE_REC_LOOP:
		if (rec->count != 0)
			die("LOOP record at byte %" PRIu64 " has count %" PRIu32
			    " (expected 0)",
			    rec->at, rec->count);
		body = 0;
		break;
	default:
		die("unknown record kind %" PRIu32 " at byte %" PRIu64,
		    rec->kind, rec->at);
	}
	if (body > r->size - r->off)
		die("truncated record at byte %" PRIu64 " (body of %" PRIu64
		    " bytes, %" PRIu64 " left)",
		    rec->at, body, r->size - r->off);
	if (rec->kind != KEEL_TRACE_REC_STRING && rec->loop >= MAX_LOOPS)
		die("record at byte %" PRIu64 ": loop index %" PRIu32
		    " out of range",
		    rec->at, rec->loop);
	return body;
}

/* The next record's header, or false at the end of the file. */
bool reader_record(struct reader *r, struct record *rec)
{
	unsigned char h[RECORD_BYTES];

	if (r->off == r->size)
		return false;
	rec->at = r->off;
	if (r->size - r->off < RECORD_BYTES)
		die("truncated record at byte %" PRIu64 " (%" PRIu64
		    " of %d header bytes)",
		    rec->at, r->size - r->off, RECORD_BYTES);
	reader_read(r, h, RECORD_BYTES);
	rec->kind = le32(h);
	rec->loop = le32(h + 4);
	rec->count = le32(h + 8);
	rec->extra = le32(h + 12);
	return true;
}

static uint64_t text_hash(const char *p)
{
	uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */

	while (*p)
		h = (h ^ (unsigned char)*p++) * 0x100000001b3ull;
	return h;
}

/* Keep the text just read at the end of the blob, or share an equal one. */
static void add_string(struct strings *s, uint32_t id, size_t len)
{
	const char *text = s->blob.v + s->blob.n;
	uint64_t hash = text_hash(text);
	uint32_t i = map_get(&s->texts, hash);

	if (i != NOT_FOUND && !strcmp(s->blob.v + s->at.v[i], text)) {
		map_put(&s->ids, id, i);
		return;
	}
	i = (uint32_t)s->at.n;
	map_put(&s->ids, id, i);
	if (map_get(&s->texts, hash) == NOT_FOUND) /* else: a collision */
		map_put(&s->texts, hash, i);
	*vec_push(&s->at) = s->blob.n;
	*vec_push(&s->first) = id;
	s->blob.n += len + 1;
}

/* Read a STRING record's body into the table (first definition wins). */
void read_string(struct reader *r, struct strings *s, const struct record *rec,
		 uint64_t body)
{
	char *p;

	if (rec->extra == 0)
		die("STRING record at byte %" PRIu64 " has id 0", rec->at);
	if (map_get(&s->ids, rec->extra) != NOT_FOUND ||
	    s->at.n >= NOT_FOUND - 1) {
		reader_skip(r, body);
		return;
	}
	s->blob.v =
	    grow(s->blob.v, &s->blob.cap, s->blob.n + rec->count + 1, 1);
	p = s->blob.v + s->blob.n;
	reader_read(r, p, rec->count);
	p[rec->count] = '\0';
	/* Control characters (and NULs) would garble the text outputs. */
	for (uint32_t i = 0; i < rec->count; i++)
		if ((unsigned char)p[i] < 0x20 || p[i] == 0x7f)
			p[i] = '?';
	add_string(s, rec->extra, rec->count);
	reader_skip(r, body - rec->count);
}
