/* SPDX-License-Identifier: MIT */
/*
 * keel-trace: turn a keel trace file (format in include/keel/trace.h) into
 * a text summary, Chrome Trace Event JSON (Perfetto, chrome://tracing) or
 * a self-contained HTML report.
 *
 *	keel-trace summary FILE
 *	keel-trace chrome FILE [-o OUT.json]
 *	keel-trace html FILE [-o OUT.html]
 *
 * The file is streamed, at most twice. The first pass checks every record
 * against the file's size before reading it, so a truncated, empty or
 * foreign file gives one line on stderr and exit 1 before any output is
 * written; it also gathers what the summary needs. The second pass (chrome,
 * html) writes the events out. Memory: the strings, one entry per task
 * slot, 8 bytes per op completion (percentiles are exact), and for `chrome`
 * 40 bytes per message or mailbox event, to pair senders with receivers.
 *
 * A decoder turns raw events into what the outputs talk about (steps with
 * their task's name and the await site they resumed from, task lifetimes)
 * and hands them to a sink: the statistics (first pass), the Chrome writer
 * or the HTML timeline (second pass).
 *
 * Exit status: 0; 1 for a bad trace file or an output error; 2 for bad
 * arguments.
 */
#include <errno.h>
#include <inttypes.h>
#include <liburing.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <keel/trace.h>

#define HEADER_BYTES 32
#define RECORD_BYTES 16
#define EVENT_BYTES  32
#define CHUNK_EVENTS 4096 /* events read per fread */
/* A larger loop index is corruption: loops are threads of one process. */
#define MAX_LOOPS    4096
#define NO_TASK	     UINT32_MAX
#define NOT_FOUND    UINT32_MAX
#define LIST_ROWS    10	   /* rows per list in the summary */
#define HTML_STEPS   20000 /* longest steps drawn one by one in the report */
#define HTML_BINS    1600  /* busy-fraction bins per loop in the report */
#define HTML_MARKS   2000  /* stalls, aborts, restarts marked on the timeline */
#define HTML_TASKS   15	   /* task names in the "top tasks" chart */
#define MB_TRACKS    64	   /* mailbox depth counters in the Chrome output */
#define HIST_BUCKETS 65	   /* log2 buckets of a 64-bit ns value, and 0 */

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

_Static_assert(sizeof(struct keel_trace_event) == EVENT_BYTES,
	       "trace.h's event is 32 bytes");

/* ---- errors, memory, growable arrays ---------------------------------- */

static const char *trace_path = "keel-trace"; /* named in every error */
/* A regular output file, removed if we fail half-way through it. */
static const char *out_path;

static void __attribute__((format(printf, 1, 2), noreturn))
die(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "keel-trace: %s: ", trace_path);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	if (out_path)
		unlink(out_path);
	exit(1);
}

static void *xrealloc(void *p, size_t n, size_t size)
{
	size_t bytes;

	if (size && n > SIZE_MAX / size)
		die("out of memory");
	bytes = n * size;
	p = realloc(p, bytes ? bytes : 1); /* realloc(p, 0) may free p */
	if (!p)
		die("out of memory");
	return p;
}

static void *xcalloc(size_t n, size_t size)
{
	void *p = calloc(n ? n : 1, size ? size : 1);

	if (!p)
		die("out of memory");
	return p;
}

/* Make room for `need` elements of `size` bytes in *p (capacity *cap). */
static void *grow(void *p, size_t *cap, size_t need, size_t size)
{
	size_t n = *cap ? *cap : 16;

	if (need <= *cap)
		return p;
	while (n < need)
		n *= 2;
	*cap = n;
	return xrealloc(p, n, size);
}

/* qsort, which must not be handed the NULL of an empty array. */
static void sort(void *v, size_t n, size_t size,
		 int (*cmp)(const void *, const void *))
{
	if (n > 1)
		qsort(v, n, size, cmp);
}

#define VEC(type)                                                              \
	struct {                                                               \
		type *v;                                                       \
		size_t n, cap;                                                 \
	}
/* Append one zeroed element and return a pointer to it. */
#define vec_push(vec)                                                          \
	((vec)->v =                                                            \
	     grow((vec)->v, &(vec)->cap, (vec)->n + 1, sizeof(*(vec)->v)),     \
	 memset(&(vec)->v[(vec)->n], 0, sizeof(*(vec)->v)),                    \
	 &(vec)->v[(vec)->n++])

/* ---- a map from 64-bit keys to 32-bit values (open addressing) -------- */

struct map {
	uint64_t *keys;
	uint32_t *vals; /* NOT_FOUND marks an empty slot */
	size_t cap, n;	/* cap: a power of two, or 0 */
};

static size_t map_hash(uint64_t key, size_t cap)
{
	key ^= key >> 33; /* murmur3's finalizer: ids and slots are dense */
	key *= 0xff51afd7ed558ccdull;
	key ^= key >> 33;
	return (size_t)key & (cap - 1);
}

static size_t map_find(const struct map *m, uint64_t key)
{
	size_t i = map_hash(key, m->cap);

	while (m->vals[i] != NOT_FOUND && m->keys[i] != key)
		i = (i + 1) & (m->cap - 1);
	return i;
}

static uint32_t map_get(const struct map *m, uint64_t key)
{
	return m->cap ? m->vals[map_find(m, key)] : NOT_FOUND;
}

static void map_put(struct map *m, uint64_t key, uint32_t val);

static void map_rehash(struct map *m)
{
	struct map old = *m;

	m->cap = old.cap ? old.cap * 2 : 64;
	m->n = 0;
	m->keys = xcalloc(m->cap, sizeof(*m->keys));
	m->vals = xrealloc(NULL, m->cap, sizeof(*m->vals));
	memset(m->vals, 0xff, m->cap * sizeof(*m->vals));
	for (size_t i = 0; i < old.cap; i++)
		if (old.vals[i] != NOT_FOUND)
			map_put(m, old.keys[i], old.vals[i]);
	free(old.keys);
	free(old.vals);
}

static void map_put(struct map *m, uint64_t key, uint32_t val)
{
	size_t i;

	if ((m->n + 1) * 4 > m->cap * 3) /* keep probes short: <= 3/4 full */
		map_rehash(m);
	i = map_find(m, key);
	if (m->vals[i] == NOT_FOUND)
		m->n++;
	m->keys[i] = key;
	m->vals[i] = val;
}

static void map_free(struct map *m)
{
	free(m->keys);
	free(m->vals);
	memset(m, 0, sizeof(*m));
}

/* ---- names and numbers ------------------------------------------------ */

/* IORING_OP_* names, in liburing 2.3's order (the ABI's numbers). */
static const char *const op_names[] = {
    [IORING_OP_NOP] = "nop",
    [IORING_OP_READV] = "readv",
    [IORING_OP_WRITEV] = "writev",
    [IORING_OP_FSYNC] = "fsync",
    [IORING_OP_READ_FIXED] = "read_fixed",
    [IORING_OP_WRITE_FIXED] = "write_fixed",
    [IORING_OP_POLL_ADD] = "poll_add",
    [IORING_OP_POLL_REMOVE] = "poll_remove",
    [IORING_OP_SYNC_FILE_RANGE] = "sync_file_range",
    [IORING_OP_SENDMSG] = "sendmsg",
    [IORING_OP_RECVMSG] = "recvmsg",
    [IORING_OP_TIMEOUT] = "timeout",
    [IORING_OP_TIMEOUT_REMOVE] = "timeout_remove",
    [IORING_OP_ACCEPT] = "accept",
    [IORING_OP_ASYNC_CANCEL] = "async_cancel",
    [IORING_OP_LINK_TIMEOUT] = "link_timeout",
    [IORING_OP_CONNECT] = "connect",
    [IORING_OP_FALLOCATE] = "fallocate",
    [IORING_OP_OPENAT] = "openat",
    [IORING_OP_CLOSE] = "close",
    [IORING_OP_FILES_UPDATE] = "files_update",
    [IORING_OP_STATX] = "statx",
    [IORING_OP_READ] = "read",
    [IORING_OP_WRITE] = "write",
    [IORING_OP_FADVISE] = "fadvise",
    [IORING_OP_MADVISE] = "madvise",
    [IORING_OP_SEND] = "send",
    [IORING_OP_RECV] = "recv",
    [IORING_OP_OPENAT2] = "openat2",
    [IORING_OP_EPOLL_CTL] = "epoll_ctl",
    [IORING_OP_SPLICE] = "splice",
    [IORING_OP_PROVIDE_BUFFERS] = "provide_buffers",
    [IORING_OP_REMOVE_BUFFERS] = "remove_buffers",
    [IORING_OP_TEE] = "tee",
    [IORING_OP_SHUTDOWN] = "shutdown",
    [IORING_OP_RENAMEAT] = "renameat",
    [IORING_OP_UNLINKAT] = "unlinkat",
    [IORING_OP_MKDIRAT] = "mkdirat",
    [IORING_OP_SYMLINKAT] = "symlinkat",
    [IORING_OP_LINKAT] = "linkat",
    [IORING_OP_MSG_RING] = "msg_ring",
    [IORING_OP_FSETXATTR] = "fsetxattr",
    [IORING_OP_SETXATTR] = "setxattr",
    [IORING_OP_FGETXATTR] = "fgetxattr",
    [IORING_OP_GETXATTR] = "getxattr",
    [IORING_OP_SOCKET] = "socket",
    [IORING_OP_URING_CMD] = "uring_cmd",
    [IORING_OP_SEND_ZC] = "send_zc",
    [IORING_OP_SENDMSG_ZC] = "sendmsg_zc",
};

/* An opcode's name; a number liburing 2.3 does not know is "op<N>". */
static const char *op_name(unsigned op, char buf[16])
{
	if (op < ARRAY_SIZE(op_names) && op_names[op])
		return op_names[op];
	snprintf(buf, 16, "op%u", op);
	return buf;
}

/* ns as text with three significant digits: 850ns, 12.3us, 1.05ms, 2.00s. */
static const char *fmt_ns(uint64_t ns, char buf[24])
{
	static const struct {
		double div;
		const char *unit;
	} units[] = {{1e9, "s"}, {1e6, "ms"}, {1e3, "us"}};

	for (size_t i = 0; i < ARRAY_SIZE(units); i++) {
		double v = (double)ns / units[i].div;

		if (v < 1.0)
			continue;
		snprintf(buf, 24, "%.*f%s",
			 v < 10	   ? 2
			 : v < 100 ? 1
				   : 0,
			 v, units[i].unit);
		return buf;
	}
	snprintf(buf, 24, "%" PRIu64 "ns", ns);
	return buf;
}

/* floor(log2(v)) + 1, and 0 for 0: bucket k holds [2^(k-1), 2^k). */
static unsigned log2_bucket(uint64_t v)
{
	return v ? 64 - (unsigned)__builtin_clzll(v) : 0;
}

/* The lowest value of a log2 bucket. */
static uint64_t bucket_floor(unsigned k)
{
	return k ? 1ull << (k - 1) : 0;
}

static uint16_t le16(const unsigned char *p)
{
	return (uint16_t)(p[0] | p[1] << 8);
}

static uint32_t le32(const unsigned char *p)
{
	return (uint32_t)le16(p) | (uint32_t)le16(p + 2) << 16;
}

static uint64_t le64(const unsigned char *p)
{
	return (uint64_t)le32(p) | (uint64_t)le32(p + 4) << 32;
}

/* ---- JSON text -------------------------------------------------------- */

/* Length of the valid UTF-8 sequence at s, 0 if it is not one. */
static size_t utf8_len(const unsigned char *s)
{
	size_t n = s[0] < 0x80	 ? 1
		   : s[0] < 0xc2 ? 0
		   : s[0] < 0xe0 ? 2
		   : s[0] < 0xf0 ? 3
		   : s[0] < 0xf5 ? 4
				 : 0;
	uint32_t cp = n == 2 ? s[0] & 0x1f : n == 3 ? s[0] & 0x0f : s[0] & 7;

	for (size_t i = 1; i < n; i++) {
		if ((s[i] & 0xc0) != 0x80) /* also stops at the NUL */
			return 0;
		cp = cp << 6 | (s[i] & 0x3f);
	}
	/* Overlong forms, surrogates and code points past U+10FFFF. */
	if ((n == 3 && (cp < 0x800 || (cp >= 0xd800 && cp < 0xe000))) ||
	    (n == 4 && (cp < 0x10000 || cp > 0x10ffff)))
		return 0;
	return n;
}

/*
 * A JSON string. Trace strings should be UTF-8, but a damaged file must
 * still give valid JSON, so a bad byte becomes U+FFFD. '<', '>' and '&'
 * are escaped so that the same text is safe inside an HTML <script>.
 */
static void json_str(FILE *f, const char *s)
{
	const unsigned char *p = (const unsigned char *)s;

	fputc('"', f);
	while (*p) {
		size_t n = utf8_len(p);

		if (n == 0) {
			fputs("\\ufffd", f);
			p++;
		} else if (*p == '"' || *p == '\\') {
			fprintf(f, "\\%c", *p++);
		} else if (*p < 0x20 || *p == '<' || *p == '>' || *p == '&') {
			fprintf(f, "\\u%04x", *p++);
		} else {
			fwrite(p, 1, n, f);
			p += n;
		}
	}
	fputc('"', f);
}

/* ns as microseconds, exactly: Chrome's ts and dur are in us. */
static void json_us(FILE *f, uint64_t ns)
{
	fprintf(f, "%" PRIu64 ".%03u", ns / 1000, (unsigned)(ns % 1000));
}

/* ---- the string table ------------------------------------------------- */

/*
 * Strings by id. A writer may give one text several ids (keel interns per
 * loop, and gives each abort message its own): such ids share one entry,
 * and the decoder replaces them by the first, so that counts by name or
 * message count the text.
 */
struct strings {
	struct map ids;	     /* string id -> index in `at` */
	struct map texts;    /* hash of a text -> index in `at` */
	VEC(size_t) at;	     /* each text's offset in `blob` */
	VEC(uint32_t) first; /* each text's first id */
	VEC(char) blob;	     /* the texts, each ending in NUL */
};

/* The string with this id, or NULL if the file has not defined it. */
static const char *str_find(const struct strings *s, uint64_t id)
{
	uint32_t i = id > UINT32_MAX ? NOT_FOUND : map_get(&s->ids, id);

	return i == NOT_FOUND ? NULL : s->blob.v + s->at.v[i];
}

/* The first id of the same text; an undefined id stays as it is. */
static uint32_t str_canonical(const struct strings *s, uint32_t id)
{
	uint32_t i = map_get(&s->ids, id);

	return i == NOT_FOUND ? id : s->first.v[i];
}

/* Text for an id that names something; `none` if the id is 0. */
static const char *str_or(const struct strings *s, uint64_t id,
			  const char *none)
{
	const char *p = id ? str_find(s, id) : none;

	return p ? p : "(unknown string)";
}

/* ---- the reader: records, checked against the file's size ------------- */

struct record {
	uint64_t at; /* byte offset of the record in the file */
	uint32_t kind, loop, count, extra;
};

struct reader {
	FILE *f;
	struct stat st; /* to refuse to write the output over the trace */
	uint64_t size;	/* bytes in the file */
	uint64_t off;	/* bytes consumed */
	uint64_t start_mono, start_real;
	unsigned char chunk[CHUNK_EVENTS * EVENT_BYTES];
};

static void reader_read(struct reader *r, void *buf, size_t n)
{
	if (fread(buf, 1, n, r->f) != n)
		die("read error at byte %" PRIu64 ": %s", r->off,
		    ferror(r->f) ? strerror(errno) : "the file shrank");
	r->off += n;
}

static void reader_skip(struct reader *r, uint64_t n)
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

static void reader_open(struct reader *r, const char *path)
{
	r->f = fopen(path, "rb");
	if (!r->f)
		die("%s", strerror(errno));
	if (fstat(fileno(r->f), &r->st) != 0)
		die("%s", strerror(errno));
	/* Two passes need a file we can read again from the start. */
	if (!S_ISREG(r->st.st_mode))
		die("not a regular file");
	r->size = (uint64_t)r->st.st_size;
	setvbuf(r->f, NULL, _IOFBF, 1 << 16);
	reader_header(r);
}

static void reader_rewind(struct reader *r)
{
	if (fseeko(r->f, HEADER_BYTES, SEEK_SET) != 0)
		die("seek error: %s", strerror(errno));
	r->off = HEADER_BYTES;
}

/* The body's length in bytes; a record that cannot be read is fatal. */
static uint64_t record_body(const struct reader *r, const struct record *rec)
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
static bool reader_record(struct reader *r, struct record *rec)
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

static void decode_event(const unsigned char *p, struct keel_trace_event *ev)
{
	ev->ts = le64(p);
	ev->type = p[8];
	ev->op = p[9];
	ev->flags = le16(p + 10);
	ev->task = le32(p + 12);
	ev->a = le64(p + 16);
	ev->b = le64(p + 24);
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
static void read_string(struct reader *r, struct strings *s,
			const struct record *rec, uint64_t body)
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

/* ---- the decoder: steps and task lifetimes ----------------------------- */

/* A task slot's current occupant, as far as the trace tells. */
struct task {
	uint64_t lifetime; /* 1, 2, ... in file order; 0: SPAWN not traced */
	uint64_t spawn_ts;
	uint32_t loop, slot;
	uint32_t name; /* string id of its name, 0: unknown */
	uint32_t site; /* its last await site: where its next step resumes */
	bool alive;    /* between its SPAWN and its EXIT */
};

/* One step: a task's run from STEP_BEGIN to STEP_END. */
struct step {
	uint64_t begin, dur; /* ns since the trace started */
	uint64_t lifetime;
	uint32_t loop, slot;
	uint32_t name; /* the task's name */
	uint32_t site; /* the await site it resumed from; 0: its first step */
	uint8_t end;   /* STEP_END's a: 1 suspended, 2 exited, 3 aborted */
};

/* What a sink is handed with each event. */
struct moment {
	const struct keel_trace_event *ev;
	uint32_t loop;
	struct task *task; /* NULL if the event is about no task */
	uint64_t key;	   /* message and mailbox events: same in both passes */
	bool in_step;	   /* between a STEP_BEGIN and its STEP_END */
};

struct sink {
	void *ctx;
	void (*event)(void *ctx, const struct moment *m);
	void (*step)(void *ctx, const struct step *s);
	/* status: the exit status, or NULL if the EXIT is not in the trace */
	void (*lifetime_end)(void *ctx, const struct task *t, uint64_t ts,
			     const int64_t *status);
	void (*drops)(void *ctx, uint32_t loop, uint32_t n, uint64_t ts);
};

struct loop {
	bool seen;
	uint64_t tid; /* thread id from its LOOP record; 0: none */
	uint64_t last_ts;
	uint64_t flow_seq; /* its message and mailbox events so far */
	bool step_open;	   /* between a STEP_BEGIN and its STEP_END */
	uint32_t step_slot, step_site;
	uint64_t step_begin;
	/* For the summary. */
	uint64_t events, spawned, exited, steps, busy, ops, dropped;
	uint64_t lost_steps; /* a STEP_BEGIN or STEP_END without its partner */
	uint64_t inflight_samples;
};

struct decoder {
	struct strings *strings;
	bool load_strings; /* false in the second pass: the first loaded them */
	struct loop *loops;
	uint32_t nloops;     /* 1 + the highest loop index seen */
	struct map task_ids; /* loop << 32 | slot -> index in tasks */
	VEC(struct task) tasks;
	uint64_t lifetimes; /* lifetimes begun so far: the last one's id */
	uint64_t end_ts;    /* the latest timestamp seen */
	uint64_t events, unknown;
	struct sink sink;
};

/* A string id from an event field; one too large is an unknown string. */
static uint32_t string_id(uint64_t v)
{
	return v > UINT32_MAX ? UINT32_MAX : (uint32_t)v;
}

static struct loop *decoder_loop(struct decoder *d, uint32_t index)
{
	if (index >= d->nloops) {
		d->loops = xrealloc(d->loops, index + 1, sizeof(*d->loops));
		memset(d->loops + d->nloops, 0,
		       (index + 1 - d->nloops) * sizeof(*d->loops));
		d->nloops = index + 1;
	}
	d->loops[index].seen = true;
	return &d->loops[index];
}

static struct task *task_get(struct decoder *d, uint32_t loop, uint32_t slot)
{
	uint64_t key = (uint64_t)loop << 32 | slot;
	uint32_t i = map_get(&d->task_ids, key);
	struct task *t;

	if (i != NOT_FOUND)
		return &d->tasks.v[i];
	if (d->tasks.n >= NOT_FOUND)
		die("more than %u task slots", NOT_FOUND);
	map_put(&d->task_ids, key, (uint32_t)d->tasks.n);
	t = vec_push(&d->tasks);
	t->loop = loop;
	t->slot = slot;
	return t;
}

static void end_lifetime(struct decoder *d, struct task *t, uint64_t ts,
			 const int64_t *status)
{
	if (t->alive && d->sink.lifetime_end)
		d->sink.lifetime_end(d->sink.ctx, t, ts, status);
	t->alive = false;
}

static void on_spawn(struct decoder *d, struct loop *l, struct task *t,
		     const struct keel_trace_event *ev)
{
	/* Still alive: its EXIT was dropped and the slot was reused. */
	end_lifetime(d, t, ev->ts, NULL);
	t->lifetime = ++d->lifetimes;
	t->spawn_ts = ev->ts;
	t->name = string_id(ev->a);
	t->site = 0;
	t->alive = true;
	l->spawned++;
}

static void on_step_begin(struct loop *l, const struct task *t, uint64_t ts)
{
	if (l->step_open) /* a loop runs one step at a time: END was lost */
		l->lost_steps++;
	l->step_open = true;
	l->step_slot = t->slot;
	l->step_site = t->site;
	l->step_begin = ts;
}

static void on_step_end(struct decoder *d, struct loop *l, const struct task *t,
			const struct keel_trace_event *ev)
{
	struct step s;

	if (!l->step_open || l->step_slot != t->slot ||
	    ev->ts < l->step_begin) {
		l->lost_steps++;
		l->step_open = false;
		return;
	}
	l->step_open = false;
	s = (struct step){
	    .begin = l->step_begin,
	    .dur = ev->ts - l->step_begin,
	    .lifetime = t->lifetime,
	    .loop = t->loop,
	    .slot = t->slot,
	    .name = t->name,
	    .site = l->step_site,
	    .end = ev->a < 4 ? (uint8_t)ev->a : 0,
	};
	l->steps++;
	l->busy += s.dur;
	if (d->sink.step)
		d->sink.step(d->sink.ctx, &s);
}

/* Update the task and loop state that the event changes. */
static void track(struct decoder *d, struct loop *l, struct task *t,
		  const struct keel_trace_event *ev)
{
	switch (ev->type) {
	case KEEL_EV_SPAWN:
		if (t)
			on_spawn(d, l, t, ev);
		break;
	case KEEL_EV_STEP_BEGIN:
		if (t)
			on_step_begin(l, t, ev->ts);
		break;
	case KEEL_EV_STEP_END:
		if (t)
			on_step_end(d, l, t, ev);
		break;
	case KEEL_EV_WAIT:
		if (t)
			t->site = string_id(ev->a);
		break;
	case KEEL_EV_OP_SUBMIT:
		l->ops++;
		break;
	case KEEL_EV_INFLIGHT:
		l->inflight_samples++;
		break;
	default:
		if (ev->type == 0 || ev->type > KEEL_EV_INFLIGHT)
			d->unknown++; /* a newer writer's event: skip it */
		break;
	}
}

/* Replace the event's string ids by the first id of the same text. */
static void canonical_strings(const struct strings *s,
			      struct keel_trace_event *ev)
{
	switch (ev->type) {
	case KEEL_EV_ABORT: /* a: message, b: site */
		ev->b = str_canonical(s, string_id(ev->b));
		/* fall through */
	case KEEL_EV_SPAWN: /* a: name */
	case KEEL_EV_WAIT:  /* a: site */
	case KEEL_EV_SUP_RESTART:
	case KEEL_EV_SUP_ESCALATE:
		ev->a = str_canonical(s, string_id(ev->a));
		break;
	case KEEL_EV_STALL: /* b: site */
		ev->b = str_canonical(s, string_id(ev->b));
		break;
	}
}

static bool is_flow_event(uint8_t type)
{
	return type == KEEL_EV_MSG_SEND || type == KEEL_EV_MSG_RECV ||
	       type == KEEL_EV_MB_SEND || type == KEEL_EV_MB_RECV;
}

static void decoder_event(struct decoder *d, uint32_t loop,
			  struct keel_trace_event *ev)
{
	struct loop *l = &d->loops[loop];
	struct task *t =
	    ev->task == NO_TASK ? NULL : task_get(d, loop, ev->task);
	struct moment m = {.ev = ev, .loop = loop, .task = t};

	canonical_strings(d->strings, ev);
	d->events++;
	l->events++;
	l->last_ts = ev->ts;
	if (ev->ts > d->end_ts)
		d->end_ts = ev->ts;
	if (is_flow_event(ev->type))
		m.key = (uint64_t)loop << 40 | l->flow_seq++;
	track(d, l, t, ev);
	m.in_step = l->step_open;
	if (d->sink.event)
		d->sink.event(d->sink.ctx, &m);
	if (ev->type == KEEL_EV_EXIT && t) {
		int64_t status = (int64_t)ev->a;

		l->exited++;
		end_lifetime(d, t, ev->ts, &status);
	}
}

static void decoder_drops(struct decoder *d, uint32_t loop, uint32_t n,
			  uint64_t ts)
{
	struct loop *l = &d->loops[loop];

	l->dropped += n;
	/*
	 * The lost events may hold this step's END and a later BEGIN of the
	 * same task: pairing across them would make up a long step.
	 */
	if (l->step_open) {
		l->step_open = false;
		l->lost_steps++;
	}
	if (d->sink.drops)
		d->sink.drops(d->sink.ctx, loop, n, ts);
}

/* Lifetimes still open end with the trace. */
static void decoder_finish(struct decoder *d)
{
	for (size_t i = 0; i < d->tasks.n; i++)
		end_lifetime(d, &d->tasks.v[i], d->end_ts, NULL);
	for (uint32_t i = 0; i < d->nloops; i++)
		if (d->loops[i].step_open)
			d->loops[i].lost_steps++;
}

static void decoder_free(struct decoder *d)
{
	free(d->loops);
	map_free(&d->task_ids);
	free(d->tasks.v);
}

static void scan_events(struct reader *r, struct decoder *d,
			const struct record *rec)
{
	struct keel_trace_event ev;
	uint32_t left = rec->count;
	bool first = true;

	while (left) {
		uint32_t n = left < CHUNK_EVENTS ? left : CHUNK_EVENTS;

		reader_read(r, r->chunk, (size_t)n * EVENT_BYTES);
		for (uint32_t i = 0; i < n; i++) {
			decode_event(r->chunk + (size_t)i * EVENT_BYTES, &ev);
			/* Drops are shown where the record's events resume. */
			if (first && rec->extra)
				decoder_drops(d, rec->loop, rec->extra, ev.ts);
			first = false;
			decoder_event(d, rec->loop, &ev);
		}
		left -= n;
	}
	if (first && rec->extra)
		decoder_drops(d, rec->loop, rec->extra,
			      d->loops[rec->loop].last_ts);
}

/* One pass over the whole file. */
static void scan(struct reader *r, struct decoder *d)
{
	struct record rec;

	reader_rewind(r);
	while (reader_record(r, &rec)) {
		uint64_t body = record_body(r, &rec);

		switch (rec.kind) {
		case KEEL_TRACE_REC_EVENTS:
			decoder_loop(d, rec.loop);
			scan_events(r, d, &rec);
			break;
		case KEEL_TRACE_REC_STRING:
			if (d->load_strings)
				read_string(r, d->strings, &rec, body);
			else
				reader_skip(r, body);
			break;
		case KEEL_TRACE_REC_LOOP:
			decoder_loop(d, rec.loop)->tid = rec.extra;
			break;
		}
	}
	decoder_finish(d);
}

/* ---- first pass: statistics ------------------------------------------- */

/* Something counted by a key: an abort message, a child, a task name. */
struct row {
	uint64_t count;
	uint64_t sum, max;   /* task names: step time; children: restarts */
	uint64_t tasks;	     /* task names: tasks spawned under it */
	uint64_t ts;	     /* first seen at */
	uint32_t loop, name; /* first seen on this loop, in this task */
	uint32_t s1, s2;     /* string ids of what is counted */
};

struct table {
	struct map ids; /* key -> index in rows */
	VEC(struct row) rows;
};

static struct row *table_row(struct table *t, uint64_t key)
{
	uint32_t i = map_get(&t->ids, key);

	if (i != NOT_FOUND)
		return &t->rows.v[i];
	map_put(&t->ids, key, (uint32_t)t->rows.n);
	return vec_push(&t->rows);
}

static void table_free(struct table *t)
{
	map_free(&t->ids);
	free(t->rows.v);
}

struct opstat {
	VEC(uint64_t) lat; /* each completion's latency in ns; sorted later */
	uint64_t submits, errors;
};

/* The longest steps: a min-heap of fixed capacity, sorted at the end. */
struct heap {
	struct step *v;
	size_t n, cap;
};

/* A mark on the HTML timeline: a stall, abort, restart, escalation, drop. */
struct mark {
	uint64_t ts, value;
	uint32_t loop, type; /* type: KEEL_EV_*, or 0 for events dropped */
	uint32_t text, name; /* string ids: what happened, in which task */
};

/* A message or mailbox event, kept to pair sends with receives. */
struct endpoint {
	uint64_t key, ts;
	uint64_t chan;	/* flow id (messages) or mailbox id */
	uint64_t depth; /* mailboxes: depth after the event */
	bool mailbox, send;
};

struct stats {
	struct opstat ops[256];
	uint64_t step_hist[HIST_BUCKETS];
	uint64_t steps, busy;
	struct heap longest;
	VEC(struct step) stalls; /* dur: the step's time; site: resume site */
	struct table aborts, restarts, escalations, names;
	VEC(struct mark) marks;
	uint64_t nmarks; /* all of them, also those past HTML_MARKS */
	uint64_t msgs_sent, msgs_received, mb_full, mb_drop;
	uint64_t timers, max_lateness;
	bool want_endpoints; /* only the Chrome output pairs flows */
	VEC(struct endpoint) endpoints;
};

/* Shorter, then (for equal times) later: the heap drops it first. */
static bool step_less(const struct step *a, const struct step *b)
{
	return a->dur < b->dur || (a->dur == b->dur && a->begin > b->begin);
}

static void heap_swap(struct heap *h, size_t i, size_t j)
{
	struct step tmp = h->v[i];

	h->v[i] = h->v[j];
	h->v[j] = tmp;
}

static void heap_down(struct heap *h, size_t i)
{
	for (;;) {
		size_t least = i, l = 2 * i + 1, r = l + 1;

		if (l < h->n && step_less(&h->v[l], &h->v[least]))
			least = l;
		if (r < h->n && step_less(&h->v[r], &h->v[least]))
			least = r;
		if (least == i)
			return;
		heap_swap(h, i, least);
		i = least;
	}
}

static void heap_offer(struct heap *h, const struct step *s)
{
	size_t i = h->n;

	if (h->n == h->cap) {
		if (h->cap && step_less(&h->v[0], s)) {
			h->v[0] = *s;
			heap_down(h, 0);
		}
		return;
	}
	h->v[h->n++] = *s;
	while (i && step_less(&h->v[i], &h->v[(i - 1) / 2])) {
		heap_swap(h, i, (i - 1) / 2);
		i = (i - 1) / 2;
	}
}

static int cmp_longest_first(const void *a, const void *b)
{
	return step_less(b, a) ? -1 : step_less(a, b) ? 1 : 0;
}

static void add_mark(struct stats *st, const struct moment *m, uint32_t text,
		     uint64_t value)
{
	struct mark *k;

	if (st->nmarks++ >= HTML_MARKS)
		return;
	k = vec_push(&st->marks);
	k->ts = m->ev->ts;
	k->value = value;
	k->loop = m->loop;
	k->type = m->ev->type;
	k->text = text;
	k->name = m->task ? m->task->name : 0;
}

/* Count under `key` and remember where it first happened. */
static struct row *count_row(struct table *t, uint64_t key,
			     const struct moment *m)
{
	struct row *r = table_row(t, key);

	if (r->count++ == 0) {
		r->ts = m->ev->ts;
		r->loop = m->loop;
		r->name = m->task ? m->task->name : 0;
	}
	return r;
}

static void stats_supervision(struct stats *st, const struct moment *m)
{
	const struct keel_trace_event *ev = m->ev;
	uint32_t s1 = string_id(ev->a), s2 = string_id(ev->b);
	struct row *r;

	switch (ev->type) {
	case KEEL_EV_ABORT: /* a: message, b: site */
		r = count_row(&st->aborts, (uint64_t)s1 << 32 | s2, m);
		r->s1 = s1;
		r->s2 = s2;
		add_mark(st, m, s1, 0);
		break;
	case KEEL_EV_SUP_RESTART: /* a: child, b: its restarts */
		r = count_row(&st->restarts, s1, m);
		r->s1 = s1;
		r->max = ev->b > r->max ? ev->b : r->max;
		add_mark(st, m, s1, ev->b);
		break;
	case KEEL_EV_SUP_ESCALATE: /* a: supervisor */
		r = count_row(&st->escalations, s1, m);
		r->s1 = s1;
		add_mark(st, m, s1, 0);
		break;
	}
}

static void stats_stall(struct stats *st, const struct moment *m)
{
	struct step *s = vec_push(&st->stalls);

	s->begin = m->ev->ts;
	s->dur = m->ev->a;
	s->loop = m->loop;
	s->slot = m->task ? m->task->slot : NO_TASK;
	s->name = m->task ? m->task->name : 0;
	s->site = string_id(m->ev->b);
	add_mark(st, m, s->site, s->dur);
}

static void stats_endpoint(struct stats *st, const struct moment *m)
{
	const struct keel_trace_event *ev = m->ev;
	struct endpoint *e;

	if (!st->want_endpoints)
		return;
	e = vec_push(&st->endpoints);
	e->key = m->key;
	e->ts = ev->ts;
	e->chan = ev->a;
	e->depth = ev->b;
	e->mailbox = ev->type == KEEL_EV_MB_SEND || ev->type == KEEL_EV_MB_RECV;
	e->send = ev->type == KEEL_EV_MB_SEND || ev->type == KEEL_EV_MSG_SEND;
}

static void stats_op(struct stats *st, const struct keel_trace_event *ev)
{
	struct opstat *o = &st->ops[ev->op];

	if (ev->type == KEEL_EV_OP_SUBMIT) {
		o->submits++;
		return;
	}
	*vec_push(&o->lat) = ev->b;
	if ((int64_t)ev->a < 0) /* a negative errno */
		o->errors++;
}

static void stats_event(void *ctx, const struct moment *m)
{
	struct stats *st = ctx;
	const struct keel_trace_event *ev = m->ev;

	switch (ev->type) {
	case KEEL_EV_OP_SUBMIT:
	case KEEL_EV_OP_COMPLETE:
		stats_op(st, ev);
		break;
	case KEEL_EV_SPAWN:
		if (m->task) {
			struct row *r = table_row(&st->names, m->task->name);

			r->s1 = m->task->name;
			r->tasks++;
		}
		break;
	case KEEL_EV_ABORT:
	case KEEL_EV_SUP_RESTART:
	case KEEL_EV_SUP_ESCALATE:
		stats_supervision(st, m);
		break;
	case KEEL_EV_STALL:
		stats_stall(st, m);
		break;
	case KEEL_EV_MSG_SEND:
	case KEEL_EV_MSG_RECV:
	case KEEL_EV_MB_SEND:
	case KEEL_EV_MB_RECV:
		st->msgs_sent += ev->type == KEEL_EV_MSG_SEND;
		st->msgs_received += ev->type == KEEL_EV_MSG_RECV;
		stats_endpoint(st, m);
		break;
	case KEEL_EV_MB_FULL:
	case KEEL_EV_MB_DROP:
		st->mb_full += ev->type == KEEL_EV_MB_FULL;
		st->mb_drop += ev->type == KEEL_EV_MB_DROP;
		break;
	case KEEL_EV_TIMER_FIRE:
		st->timers++;
		st->max_lateness =
		    ev->a > st->max_lateness ? ev->a : st->max_lateness;
		break;
	}
}

static void stats_step(void *ctx, const struct step *s)
{
	struct stats *st = ctx;
	struct row *r = table_row(&st->names, s->name);

	st->step_hist[log2_bucket(s->dur)]++;
	st->steps++;
	st->busy += s->dur;
	heap_offer(&st->longest, s);
	r->s1 = s->name;
	r->count++;
	r->sum += s->dur;
	r->max = s->dur > r->max ? s->dur : r->max;
}

static void stats_drops(void *ctx, uint32_t loop, uint32_t n, uint64_t ts)
{
	struct stats *st = ctx;
	struct keel_trace_event ev = {.ts = ts, .type = 0};
	struct moment m = {.ev = &ev, .loop = loop};

	add_mark(st, &m, 0, n);
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

static void stats_finish(struct stats *st)
{
	for (size_t i = 0; i < ARRAY_SIZE(st->ops); i++)
		sort(st->ops[i].lat.v, st->ops[i].lat.n, sizeof(uint64_t),
		     cmp_u64);
	sort(st->longest.v, st->longest.n, sizeof(struct step),
	     cmp_longest_first);
	sort(st->stalls.v, st->stalls.n, sizeof(struct step),
	     cmp_longest_first);
}

static void stats_free(struct stats *st)
{
	for (size_t i = 0; i < ARRAY_SIZE(st->ops); i++)
		free(st->ops[i].lat.v);
	free(st->longest.v);
	free(st->stalls.v);
	table_free(&st->aborts);
	table_free(&st->restarts);
	table_free(&st->escalations);
	table_free(&st->names);
	free(st->marks.v);
	free(st->endpoints.v);
}

/* Nearest rank: the smallest sample with at least p% at or below it. */
static uint64_t percentile(const struct opstat *o, unsigned p)
{
	size_t rank = (p * o->lat.n + 99) / 100;

	return o->lat.n ? o->lat.v[rank ? rank - 1 : 0] : 0;
}

/* ---- a trace: the file and what the first pass learnt ----------------- */

struct trace {
	struct reader r;
	struct strings strings;
	struct decoder d; /* the first pass's: its loops' counters */
	struct loop all;  /* those counters summed over the loops */
	uint32_t loops;	  /* loops seen */
	struct stats st;
};

static void sum_loops(struct trace *tr)
{
	struct loop *all = &tr->all;

	for (uint32_t i = 0; i < tr->d.nloops; i++) {
		const struct loop *l = &tr->d.loops[i];

		tr->loops += l->seen;
		all->events += l->events;
		all->spawned += l->spawned;
		all->exited += l->exited;
		all->steps += l->steps;
		all->busy += l->busy;
		all->ops += l->ops;
		all->dropped += l->dropped;
		all->lost_steps += l->lost_steps;
	}
}

/* Open and check the whole file, and gather the statistics. */
static void trace_load(struct trace *tr, const char *path, size_t longest,
		       bool want_endpoints)
{
	trace_path = path;
	reader_open(&tr->r, path);
	tr->st.longest.cap = longest;
	tr->st.longest.v = xcalloc(longest, sizeof(struct step));
	tr->st.want_endpoints = want_endpoints;
	tr->d.strings = &tr->strings;
	tr->d.load_strings = true;
	tr->d.sink = (struct sink){
	    .ctx = &tr->st,
	    .event = stats_event,
	    .step = stats_step,
	    .drops = stats_drops,
	};
	scan(&tr->r, &tr->d);
	stats_finish(&tr->st);
	sum_loops(tr);
}

/* A second pass that hands everything to `sink`. */
static void trace_replay(struct trace *tr, struct decoder *d, struct sink sink)
{
	memset(d, 0, sizeof(*d));
	d->strings = &tr->strings;
	d->end_ts = tr->d.end_ts; /* lifetimes still open end here */
	d->sink = sink;
	scan(&tr->r, d);
}

static void trace_free(struct trace *tr)
{
	decoder_free(&tr->d);
	stats_free(&tr->st);
	map_free(&tr->strings.ids);
	map_free(&tr->strings.texts);
	free(tr->strings.at.v);
	free(tr->strings.first.v);
	free(tr->strings.blob.v);
	fclose(tr->r.f);
}

static const char *task_name(const struct trace *tr, uint32_t id)
{
	return str_or(&tr->strings, id, "(unnamed)");
}

static const char *site_name(const struct trace *tr, uint32_t id)
{
	return str_or(&tr->strings, id, "(first step)");
}

static const char *fmt_realtime(uint64_t ns, char buf[64])
{
	time_t secs = (time_t)(ns / 1000000000u);
	struct tm tm;
	size_t n;

	if (ns == 0 || !gmtime_r(&secs, &tm))
		return "at an unknown time";
	n = strftime(buf, 64, "%Y-%m-%d %H:%M:%S", &tm);
	snprintf(buf + n, 64 - n, ".%06u UTC",
		 (unsigned)(ns % 1000000000u / 1000));
	return buf;
}

/* ---- the summary ------------------------------------------------------ */

static void print_overview(FILE *f, const struct trace *tr)
{
	char when[64], dur[24];
	fprintf(f, "trace %s: version %d, started %s\n", trace_path,
		KEEL_TRACE_VERSION, fmt_realtime(tr->r.start_real, when));
	fprintf(f,
		"duration %s, %" PRIu32 " loops, %" PRIu64 " events, %" PRIu64
		" dropped\n",
		fmt_ns(tr->d.end_ts, dur), tr->loops, tr->d.events,
		tr->all.dropped);
	if (tr->d.unknown)
		fprintf(f, "skipped %" PRIu64 " events of unknown types\n",
			tr->d.unknown);
	if (tr->all.lost_steps)
		fprintf(f,
			"%" PRIu64 " step begin/end events had no partner "
			"(dropped or cut off)\n",
			tr->all.lost_steps);
}

static void print_loops(FILE *f, const struct trace *tr)
{
	char busy[24];

	fprintf(f, "\nloops\n  %4s %8s %8s %8s %9s %9s %9s %8s\n", "loop",
		"thread", "spawned", "exited", "steps", "busy", "submits",
		"dropped");
	for (uint32_t i = 0; i < tr->d.nloops; i++) {
		const struct loop *l = &tr->d.loops[i];

		if (!l->seen)
			continue;
		fprintf(f,
			"  %4" PRIu32 " %8" PRIu64 " %8" PRIu64 " %8" PRIu64
			" %9" PRIu64 " %9s %9" PRIu64 " %8" PRIu64 "\n",
			i, l->tid, l->spawned, l->exited, l->steps,
			fmt_ns(l->busy, busy), l->ops, l->dropped);
	}
}

/* Opcodes with completions, the busiest first. */
static size_t ops_by_count(const struct stats *st, unsigned order[256])
{
	size_t n = 0;

	for (unsigned op = 0; op < 256; op++)
		if (st->ops[op].lat.n)
			order[n++] = op;
	for (size_t i = 1; i < n; i++) /* insertion sort: n <= 256 */
		for (size_t j = i;
		     j && st->ops[order[j]].lat.n > st->ops[order[j - 1]].lat.n;
		     j--) {
			unsigned tmp = order[j];

			order[j] = order[j - 1];
			order[j - 1] = tmp;
		}
	return n;
}

static void print_ops(FILE *f, const struct trace *tr)
{
	unsigned order[256];
	size_t n = ops_by_count(&tr->st, order);
	char b[4][24], name[16];

	fprintf(f, "\nop latency, submit to completion\n");
	if (n == 0) {
		fprintf(f, "  no completions\n");
		return;
	}
	fprintf(f, "  %-16s %9s %8s %9s %9s %9s %9s\n", "opcode", "count",
		"errors", "p50", "p90", "p99", "max");
	for (size_t i = 0; i < n; i++) {
		const struct opstat *o = &tr->st.ops[order[i]];

		fprintf(f, "  %-16s %9zu %8" PRIu64 " %9s %9s %9s %9s\n",
			op_name(order[i], name), o->lat.n, o->errors,
			fmt_ns(percentile(o, 50), b[0]),
			fmt_ns(percentile(o, 90), b[1]),
			fmt_ns(percentile(o, 99), b[2]),
			fmt_ns(o->lat.v[o->lat.n - 1], b[3]));
	}
}

static void print_bucket(FILE *f, unsigned lo, unsigned hi, uint64_t n,
			 uint64_t most)
{
	int bar = (int)((n * 40 + most - 1) / most);
	char b0[24], b1[24];

	fprintf(f, "  [%8s, %8s) %9" PRIu64 "  %.*s\n",
		fmt_ns(bucket_floor(lo), b0),
		hi < 64 ? fmt_ns(bucket_floor(hi + 1), b1) : "max", n, bar,
		"########################################");
}

/* Buckets from the first used to the last; a run of empty ones is a row. */
static void print_histogram(FILE *f, const uint64_t hist[HIST_BUCKETS])
{
	unsigned lo = HIST_BUCKETS, hi = 0;
	uint64_t most = 0;

	for (unsigned k = 0; k < HIST_BUCKETS; k++) {
		if (!hist[k])
			continue;
		lo = k < lo ? k : lo;
		hi = k;
		most = hist[k] > most ? hist[k] : most;
	}
	for (unsigned k = lo, end; k <= hi && lo < HIST_BUCKETS; k = end + 1) {
		for (end = k; !hist[k] && end < hi && !hist[end + 1]; end++)
			;
		print_bucket(f, k, end, hist[k], most);
	}
}

static void print_steps(FILE *f, const struct trace *tr)
{
	const struct stats *st = &tr->st;
	char busy[24], max[24];

	fprintf(f, "\nstep time (log2 buckets)\n");
	print_histogram(f, st->step_hist);
	fprintf(f, "  %" PRIu64 " steps, busy %s, longest %s\n", st->steps,
		fmt_ns(st->busy, busy),
		fmt_ns(st->longest.n ? st->longest.v[0].dur : 0, max));
}

static void print_step_rows(FILE *f, const struct trace *tr,
			    const struct step *v, size_t n)
{
	char dur[24], at[24];

	fprintf(f, "  %9s %9s %4s %6s  %-20s %s\n", "duration", "at", "loop",
		"slot", "task", "resumed from");
	for (size_t i = 0; i < n && i < LIST_ROWS; i++)
		fprintf(f, "  %9s %9s %4" PRIu32 " %6" PRId64 "  %-20s %s\n",
			fmt_ns(v[i].dur, dur), fmt_ns(v[i].begin, at),
			v[i].loop,
			v[i].slot == NO_TASK ? (int64_t)-1 : (int64_t)v[i].slot,
			task_name(tr, v[i].name), site_name(tr, v[i].site));
}

static void print_slowest(FILE *f, const struct trace *tr)
{
	fprintf(f, "\nslowest steps\n");
	if (tr->st.longest.n == 0)
		fprintf(f, "  no steps\n");
	else
		print_step_rows(f, tr, tr->st.longest.v, tr->st.longest.n);
}

static void print_stalls(FILE *f, const struct trace *tr)
{
	fprintf(f, "\nstalls: %zu%s\n", tr->st.stalls.n,
		tr->st.stalls.n ? " (longest first)" : "");
	if (tr->st.stalls.n)
		print_step_rows(f, tr, tr->st.stalls.v, tr->st.stalls.n);
}

static int cmp_row_count(const void *a, const void *b)
{
	const struct row *x = a, *y = b;

	if (x->count != y->count)
		return x->count > y->count ? -1 : 1;
	return x->ts < y->ts ? -1 : x->ts > y->ts;
}

/* A table's rows, the most frequent first; the caller frees it. */
static struct row *sorted_rows(const struct table *t)
{
	struct row *v = xcalloc(t->rows.n, sizeof(*v));

	if (t->rows.n)
		memcpy(v, t->rows.v, t->rows.n * sizeof(*v));
	sort(v, t->rows.n, sizeof(*v), cmp_row_count);
	return v;
}

static void print_aborts(FILE *f, const struct trace *tr)
{
	struct row *v = sorted_rows(&tr->st.aborts);
	uint64_t all = 0;
	char at[24];

	for (size_t i = 0; i < tr->st.aborts.rows.n; i++)
		all += v[i].count;
	fprintf(f, "\naborts: %" PRIu64 "\n", all);
	for (size_t i = 0; i < tr->st.aborts.rows.n && i < LIST_ROWS; i++)
		fprintf(
		    f,
		    "  %6" PRIu64
		    "x \"%s\" at %s (first: task %s, loop %" PRIu32 ", %s)\n",
		    v[i].count, str_or(&tr->strings, v[i].s1, ""),
		    str_or(&tr->strings, v[i].s2, "(no site)"),
		    task_name(tr, v[i].name), v[i].loop, fmt_ns(v[i].ts, at));
	free(v);
}

static void print_supervision(FILE *f, const struct trace *tr)
{
	struct row *r = sorted_rows(&tr->st.restarts);
	struct row *e = sorted_rows(&tr->st.escalations);
	uint64_t restarts = 0, escalations = 0;
	char at[24];

	for (size_t i = 0; i < tr->st.restarts.rows.n; i++)
		restarts += r[i].count;
	for (size_t i = 0; i < tr->st.escalations.rows.n; i++)
		escalations += e[i].count;
	fprintf(f, "\nrestarts: %" PRIu64 ", escalations: %" PRIu64 "\n",
		restarts, escalations);
	for (size_t i = 0; i < tr->st.restarts.rows.n && i < LIST_ROWS; i++)
		fprintf(f,
			"  restart  %-20s %6" PRIu64
			"x (restart count up to %" PRIu64
			"), first on loop %" PRIu32 " at %s\n",
			str_or(&tr->strings, r[i].s1, "(unnamed)"), r[i].count,
			r[i].max, r[i].loop, fmt_ns(r[i].ts, at));
	for (size_t i = 0; i < tr->st.escalations.rows.n && i < LIST_ROWS; i++)
		fprintf(f,
			"  escalate %-20s %6" PRIu64 "x, first on loop %" PRIu32
			" at %s\n",
			str_or(&tr->strings, e[i].s1, "(unnamed)"), e[i].count,
			e[i].loop, fmt_ns(e[i].ts, at));
	free(r);
	free(e);
}

static void print_traffic(FILE *f, const struct trace *tr)
{
	const struct stats *st = &tr->st;
	char late[24];

	fprintf(f,
		"\nmessages: %" PRIu64 " cross-loop sent, %" PRIu64
		" received; mailboxes: %" PRIu64 " full, %" PRIu64
		" drops; timers: %" PRIu64 " fired, latest by %s\n",
		st->msgs_sent, st->msgs_received, st->mb_full, st->mb_drop,
		st->timers, fmt_ns(st->max_lateness, late));
}

static void print_drops(FILE *f, const struct trace *tr)
{
	const char *sep = " (";

	fprintf(f, "\ndrops: %" PRIu64 " events dropped", tr->all.dropped);
	for (uint32_t i = 0; i < tr->d.nloops; i++) {
		if (!tr->d.loops[i].dropped)
			continue;
		fprintf(f, "%sloop %" PRIu32 ": %" PRIu64, sep, i,
			tr->d.loops[i].dropped);
		sep = ", ";
	}
	fprintf(f, "%s\n", *sep == ',' ? ")" : "");
}

static void print_summary(FILE *f, const struct trace *tr)
{
	print_overview(f, tr);
	print_loops(f, tr);
	print_ops(f, tr);
	print_steps(f, tr);
	print_slowest(f, tr);
	print_stalls(f, tr);
	print_supervision(f, tr);
	print_aborts(f, tr);
	print_traffic(f, tr);
	print_drops(f, tr);
}

/* ---- pairing senders with receivers, for Chrome's flow arrows --------- */

struct pairing {
	struct map *flows; /* endpoint key -> flow id */
	uint32_t next;	   /* flow ids given so far */
	size_t *queue;	   /* sends not yet received, by index */
};

/* By channel, then time; at equal times a send comes first. */
static int cmp_endpoint(const void *a, const void *b)
{
	const struct endpoint *x = a, *y = b;

	if (x->mailbox != y->mailbox)
		return x->mailbox ? 1 : -1;
	if (x->chan != y->chan)
		return x->chan < y->chan ? -1 : 1;
	if (x->ts != y->ts)
		return x->ts < y->ts ? -1 : 1;
	if (x->send != y->send)
		return x->send ? -1 : 1;
	return x->key < y->key ? -1 : x->key > y->key;
}

static void pair(struct pairing *p, const struct endpoint *send,
		 const struct endpoint *recv)
{
	if (p->next == NOT_FOUND - 1)
		return;
	p->next++;
	map_put(p->flows, send->key, p->next);
	map_put(p->flows, recv->key, p->next);
}

/* A message's receive pairs with the oldest send of its flow id. */
static void pair_messages(struct pairing *p, const struct endpoint *e, size_t n)
{
	size_t head = 0, tail = 0;

	for (size_t i = 0; i < n; i++) {
		if (e[i].send)
			p->queue[tail++] = i;
		else if (head < tail)
			pair(p, &e[p->queue[head++]], &e[i]);
	}
}

/*
 * A mailbox is FIFO: replay its queue in time order and pair each receive
 * with the send at the head. The depth each event reports checks the
 * replay. Where they disagree (messages queued before the trace began,
 * drops, lost events, equal timestamps in the wrong order), forget the
 * queued sends and go on from the reported depth, so that no arrow is
 * drawn that the trace does not support.
 */
static void pair_mailbox(struct pairing *p, const struct endpoint *e, size_t n)
{
	size_t head = 0, tail = 0;
	int64_t base = 0; /* queued messages whose send is not in the trace */

	for (size_t i = 0; i < n; i++) {
		int64_t expect =
		    base + (int64_t)(tail - head) + (e[i].send ? 1 : -1);

		if (i > 0 && e[i].depth == (uint64_t)expect && expect >= 0) {
			if (e[i].send)
				p->queue[tail++] = i;
			else if (base > 0)
				base--;
			else
				pair(p, &e[p->queue[head++]], &e[i]);
			continue;
		}
		head = tail;
		base = e[i].depth > INT64_MAX ? 0 : (int64_t)e[i].depth;
		if (e[i].send && base > 0) {
			base--;
			p->queue[tail++] = i;
		}
	}
}

static void pair_flows(struct stats *st, struct map *flows)
{
	struct endpoint *e = st->endpoints.v;
	size_t n = st->endpoints.n;
	struct pairing p = {.flows = flows};

	sort(e, n, sizeof(*e), cmp_endpoint);
	p.queue = xcalloc(n, sizeof(*p.queue));
	for (size_t i = 0, j; i < n; i = j) {
		for (j = i + 1; j < n && e[j].mailbox == e[i].mailbox &&
				e[j].chan == e[i].chan;
		     j++)
			;
		if (e[i].mailbox)
			pair_mailbox(&p, e + i, j - i);
		else
			pair_messages(&p, e + i, j - i);
	}
	free(p.queue);
}

/* ---- Chrome Trace Event JSON ------------------------------------------ */

struct chrome_loop {
	int64_t inflight; /* ops submitted and not completed */
	bool sampled;	  /* the loop records INFLIGHT: use that instead */
	bool idle;	  /* between LOOP_IDLE and LOOP_WAKE */
	uint64_t idle_ts, idle_wait;
};

struct chrome {
	FILE *out;
	const struct trace *tr;
	struct map flows;      /* endpoint key -> flow id */
	struct map mb_tracks;  /* mailboxes that have a depth counter */
	uint64_t mb_untracked; /* events of mailboxes past MB_TRACKS */
	struct chrome_loop *loops;
	uint32_t nloops;
	bool first; /* no event written yet */
	bool comma; /* the open object has a member: the next needs a comma */
};

static char *__attribute__((format(printf, 1, 2)))
xasprintf(const char *fmt, ...)
{
	va_list ap;
	char *s;
	int n;

	va_start(ap, fmt);
	n = vasprintf(&s, fmt, ap);
	va_end(ap);
	if (n < 0)
		die("out of memory");
	return s;
}

/* Open an event with the members that every event has. */
static void ce_open(struct chrome *c, const char *ph, uint32_t tid, uint64_t ts,
		    const char *name)
{
	fputs(c->first ? "\n" : ",\n", c->out);
	c->first = false;
	fprintf(c->out,
		"{\"ph\":\"%s\",\"pid\":1,\"tid\":%" PRIu32 ",\"ts\":", ph,
		tid);
	json_us(c->out, ts);
	fputs(",\"name\":", c->out);
	json_str(c->out, name);
	c->comma = true;
}

static void ce_key(struct chrome *c, const char *key)
{
	fprintf(c->out, "%s\"%s\":", c->comma ? "," : "", key);
	c->comma = true;
}

static void ce_str(struct chrome *c, const char *key, const char *val)
{
	ce_key(c, key);
	json_str(c->out, val);
}

static void ce_u64(struct chrome *c, const char *key, uint64_t val)
{
	ce_key(c, key);
	fprintf(c->out, "%" PRIu64, val);
}

static void ce_i64(struct chrome *c, const char *key, int64_t val)
{
	ce_key(c, key);
	fprintf(c->out, "%" PRId64, val);
}

static void ce_us(struct chrome *c, const char *key, uint64_t ns)
{
	ce_key(c, key);
	json_us(c->out, ns);
}

static void ce_args(struct chrome *c)
{
	ce_key(c, "args");
	fputc('{', c->out);
	c->comma = false;
}

static void ce_close_args(struct chrome *c)
{
	fputs("}}", c->out);
}

static void chrome_metadata(struct chrome *c)
{
	ce_open(c, "M", 0, 0, "process_name");
	ce_args(c);
	ce_str(c, "name", "keel");
	ce_close_args(c);
	for (uint32_t i = 0; i < c->tr->d.nloops; i++) {
		const struct loop *l = &c->tr->d.loops[i];
		char name[64];

		if (!l->seen)
			continue;
		if (l->tid)
			snprintf(name, sizeof(name),
				 "loop %" PRIu32 " (tid %" PRIu64 ")", i,
				 l->tid);
		else
			snprintf(name, sizeof(name), "loop %" PRIu32, i);
		ce_open(c, "M", i, 0, "thread_name");
		ce_args(c);
		ce_str(c, "name", name);
		ce_close_args(c);
		ce_open(c, "M", i, 0, "thread_sort_index");
		ce_args(c);
		ce_u64(c, "sort_index", i);
		ce_close_args(c);
	}
}

static void chrome_step(void *ctx, const struct step *s)
{
	struct chrome *c = ctx;

	ce_open(c, "X", s->loop, s->begin, task_name(c->tr, s->name));
	ce_str(c, "cat", "step");
	ce_us(c, "dur", s->dur);
	ce_args(c);
	ce_u64(c, "slot", s->slot);
	if (s->lifetime)
		ce_u64(c, "task_id", s->lifetime);
	ce_str(c, "resumed_from", site_name(c->tr, s->site));
	/* keel ends an aborted step with 3 (trace.h names 1 and 2 only). */
	if (s->end == 2 || s->end == 3)
		ce_str(c, "then", s->end == 2 ? "exited" : "aborted");
	ce_close_args(c);
}

/* A task's lifetime is an async slice; its id is unique per lifetime. */
static void ce_lifetime(struct chrome *c, const struct task *t, const char *ph,
			uint64_t ts)
{
	ce_open(c, ph, t->loop, ts, task_name(c->tr, t->name));
	ce_str(c, "cat", "task");
	ce_u64(c, "id", t->lifetime);
	ce_args(c);
	ce_u64(c, "slot", t->slot);
}

static void chrome_spawn(struct chrome *c, const struct moment *m)
{
	if (!m->task)
		return;
	ce_lifetime(c, m->task, "b", m->ev->ts);
	if (m->ev->b) /* the spawner's slot + 1 */
		ce_u64(c, "spawner_slot", m->ev->b - 1);
	ce_close_args(c);
}

static void chrome_lifetime_end(void *ctx, const struct task *t, uint64_t ts,
				const int64_t *status)
{
	struct chrome *c = ctx;

	/* A damaged clock must not end a lifetime before it began. */
	ce_lifetime(c, t, "e", ts < t->spawn_ts ? t->spawn_ts : ts);
	if (status)
		ce_i64(c, "status", *status);
	else
		ce_str(c, "end", "EXIT not in the trace");
	ce_close_args(c);
}

/* An instant on the loop's thread; the caller adds args and closes it. */
static void ce_instant(struct chrome *c, const struct moment *m,
		       const char *cat, const char *name)
{
	ce_open(c, "i", m->loop, m->ev->ts, name);
	ce_str(c, "cat", cat);
	ce_str(c, "s", "t");
	ce_args(c);
	if (m->task) {
		ce_u64(c, "slot", m->task->slot);
		ce_str(c, "task", task_name(c->tr, m->task->name));
	}
}

static void chrome_supervision(struct chrome *c, const struct moment *m)
{
	const struct strings *s = &c->tr->strings;
	const char *a = str_or(s, m->ev->a, "(unnamed)");
	char *name;

	if (m->ev->type == KEEL_EV_ABORT)
		name = xasprintf("abort: %s", a);
	else if (m->ev->type == KEEL_EV_SUP_RESTART)
		name = xasprintf("restart %s", a);
	else
		name = xasprintf("escalate %s", a);
	ce_instant(c, m, m->ev->type == KEEL_EV_ABORT ? "abort" : "supervisor",
		   name);
	if (m->ev->type == KEEL_EV_ABORT) {
		ce_str(c, "message", a);
		ce_str(c, "site", str_or(s, m->ev->b, "(no site)"));
	} else if (m->ev->type == KEEL_EV_SUP_RESTART) {
		ce_str(c, "child", a);
		ce_u64(c, "restarts", m->ev->b);
	} else {
		ce_str(c, "supervisor", a);
	}
	ce_close_args(c);
	free(name);
}

static void chrome_stall(struct chrome *c, const struct moment *m)
{
	char dur[24], *name = xasprintf("stall %s", fmt_ns(m->ev->a, dur));

	ce_instant(c, m, "stall", name);
	ce_us(c, "step_us", m->ev->a);
	ce_str(c, "site", site_name(c->tr, string_id(m->ev->b)));
	ce_close_args(c);
	free(name);
}

static void chrome_mailbox_trouble(struct chrome *c, const struct moment *m)
{
	bool full = m->ev->type == KEEL_EV_MB_FULL;
	char *name = xasprintf("mailbox %" PRIu64 " %s", m->ev->a,
			       full ? "full" : "drop");

	ce_instant(c, m, "mailbox", name);
	ce_u64(c, "mailbox", m->ev->a);
	ce_u64(c, full ? "policy" : "drops", m->ev->b);
	ce_close_args(c);
	free(name);
}

/* Mailbox depth, as a counter per mailbox (the first MB_TRACKS only). */
static void chrome_depth(struct chrome *c, const struct moment *m)
{
	char name[48];

	if (map_get(&c->mb_tracks, m->ev->a) == NOT_FOUND) {
		/* Thousands of counter tracks would bury everything else. */
		if (c->mb_tracks.n >= MB_TRACKS) {
			c->mb_untracked++;
			return;
		}
		map_put(&c->mb_tracks, m->ev->a, 1);
	}
	snprintf(name, sizeof(name), "mailbox %" PRIu64, m->ev->a);
	ce_open(c, "C", m->loop, m->ev->ts, name);
	ce_args(c);
	ce_u64(c, "depth", m->ev->b);
	ce_close_args(c);
}

static void chrome_flow(struct chrome *c, const struct moment *m)
{
	const struct keel_trace_event *ev = m->ev;
	bool mailbox =
	    ev->type == KEEL_EV_MB_SEND || ev->type == KEEL_EV_MB_RECV;
	bool send = ev->type == KEEL_EV_MSG_SEND || ev->type == KEEL_EV_MB_SEND;
	uint32_t id = map_get(&c->flows, m->key);

	if (mailbox)
		chrome_depth(c, m);
	if (id == NOT_FOUND)
		return;
	ce_open(c, send ? "s" : "f", m->loop, ev->ts,
		mailbox ? "mailbox message" : "message");
	ce_str(c, "cat", mailbox ? "mailbox" : "message");
	ce_u64(c, "id", id);
	/*
	 * A send binds to the step around it. A receive inside a step binds
	 * to it ("e": enclosing); one between steps, to the step that
	 * handles it next (the default for "f").
	 */
	if (send || m->in_step)
		ce_str(c, "bp", "e");
	ce_args(c);
	ce_u64(c, mailbox ? "mailbox" : "flow", ev->a);
	if (!mailbox)
		ce_u64(c, send ? "to_loop" : "from_loop", ev->b);
	ce_close_args(c);
}

static void chrome_inflight(struct chrome *c, const struct moment *m)
{
	struct chrome_loop *cl = &c->loops[m->loop];
	bool sample = m->ev->type == KEEL_EV_INFLIGHT;
	char name[48];

	/* A loop's samples are exact; counting is the fallback. */
	if (cl->sampled != sample)
		return;
	if (!sample) {
		cl->inflight += m->ev->type == KEEL_EV_OP_SUBMIT ? 1 : -1;
		if (cl->inflight < 0) /* submitted before the trace began */
			cl->inflight = 0;
	}
	/* Perfetto names the track "<name> <key>": "loop 0 ops in flight". */
	snprintf(name, sizeof(name), "loop %" PRIu32, m->loop);
	ce_open(c, "C", m->loop, m->ev->ts, name);
	ce_args(c);
	ce_i64(c, "ops in flight", sample ? (int64_t)m->ev->a : cl->inflight);
	ce_close_args(c);
}

/* LOOP_IDLE..LOOP_WAKE: the loop waiting in io_uring_enter. */
static void chrome_idle(struct chrome *c, const struct moment *m)
{
	struct chrome_loop *cl = &c->loops[m->loop];
	uint64_t ts = m->ev->ts;

	if (m->ev->type == KEEL_EV_LOOP_IDLE) {
		cl->idle = true;
		cl->idle_ts = ts;
		cl->idle_wait = m->ev->a;
		return;
	}
	if (!cl->idle || ts < cl->idle_ts)
		return;
	cl->idle = false;
	ce_open(c, "X", m->loop, cl->idle_ts, "idle");
	ce_str(c, "cat", "loop");
	ce_us(c, "dur", ts - cl->idle_ts);
	ce_args(c);
	if ((int64_t)cl->idle_wait < 0)
		ce_str(c, "wait", "until I/O");
	else
		ce_us(c, "wait_us", cl->idle_wait);
	ce_u64(c, "cqes", m->ev->a);
	ce_close_args(c);
}

static void chrome_event(void *ctx, const struct moment *m)
{
	struct chrome *c = ctx;

	if (m->loop >= c->nloops) /* the file changed since the first pass */
		return;
	switch (m->ev->type) {
	case KEEL_EV_SPAWN:
		chrome_spawn(c, m);
		break;
	case KEEL_EV_ABORT:
	case KEEL_EV_SUP_RESTART:
	case KEEL_EV_SUP_ESCALATE:
		chrome_supervision(c, m);
		break;
	case KEEL_EV_STALL:
		chrome_stall(c, m);
		break;
	case KEEL_EV_MB_FULL:
	case KEEL_EV_MB_DROP:
		chrome_mailbox_trouble(c, m);
		break;
	case KEEL_EV_MSG_SEND:
	case KEEL_EV_MSG_RECV:
	case KEEL_EV_MB_SEND:
	case KEEL_EV_MB_RECV:
		chrome_flow(c, m);
		break;
	case KEEL_EV_OP_SUBMIT:
	case KEEL_EV_OP_COMPLETE:
	case KEEL_EV_INFLIGHT:
		chrome_inflight(c, m);
		break;
	case KEEL_EV_LOOP_IDLE:
	case KEEL_EV_LOOP_WAKE:
		chrome_idle(c, m);
		break;
	}
}

static void chrome_drops(void *ctx, uint32_t loop, uint32_t n, uint64_t ts)
{
	struct chrome *c = ctx;
	char name[48];

	snprintf(name, sizeof(name), "dropped %" PRIu32 " events", n);
	ce_open(c, "i", loop, ts, name);
	ce_str(c, "cat", "trace");
	ce_str(c, "s", "t");
	ce_args(c);
	ce_u64(c, "dropped", n);
	ce_close_args(c);
}

static void chrome_footer(struct chrome *c)
{
	char n[24];

	fputs("\n],\n\"displayTimeUnit\":\"ns\",\n\"otherData\":{", c->out);
	c->comma = false;
	ce_str(c, "source", "keel-trace");
	ce_str(c, "trace_file", trace_path);
	snprintf(n, sizeof(n), "%" PRIu64, c->tr->all.dropped);
	ce_str(c, "dropped_events", n);
	snprintf(n, sizeof(n), "%" PRIu64, c->mb_untracked);
	ce_str(c, "mailbox_depth_events_not_shown", n);
	fputs("}}\n", c->out);
}

static void write_chrome(struct trace *tr, FILE *out)
{
	struct chrome c = {.out = out, .tr = tr, .first = true};
	struct decoder d;

	pair_flows(&tr->st, &c.flows);
	c.nloops = tr->d.nloops;
	c.loops = xcalloc(c.nloops, sizeof(*c.loops));
	for (uint32_t i = 0; i < c.nloops; i++)
		c.loops[i].sampled = tr->d.loops[i].inflight_samples > 0;
	fputs("{\"traceEvents\":[", out);
	chrome_metadata(&c);
	trace_replay(tr, &d,
		     (struct sink){
			 .ctx = &c,
			 .event = chrome_event,
			 .step = chrome_step,
			 .lifetime_end = chrome_lifetime_end,
			 .drops = chrome_drops,
		     });
	chrome_footer(&c);
	decoder_free(&d);
	map_free(&c.flows);
	map_free(&c.mb_tracks);
	free(c.loops);
}

/* ---- the HTML report -------------------------------------------------- */

/*
 * The page: inline CSS, the data as JSON, and inline JS that draws it on
 * canvases, so it loads nothing. @TITLE@, @DATA@ and @SUMMARY@ are filled
 * in by html_write().
 */
static const char html_template[] =
    "<!DOCTYPE html>\n"
    "<html lang=\"en\">\n"
    "<head>\n"
    "<meta charset=\"utf-8\">\n"
    "<title>keel trace: @TITLE@</title>\n"
    "<style>\n"
    "body { font: 14px/1.4 system-ui, sans-serif; margin: 0;\n"
    "  background: #f4f5f7; color: #1d232b; }\n"
    "header { background: #1d232b; color: #fff; padding: 12px 24px; }\n"
    "header h1 { margin: 0; font-size: 19px; font-weight: 600; }\n"
    "header .sub { color: #aab4c0; font-size: 13px; }\n"
    "main { padding: 14px 24px; }\n"
    ".cards { display: flex; flex-wrap: wrap; gap: 8px;\n"
    "  margin-bottom: 14px; }\n"
    ".card { background: #fff; border: 1px solid #dde1e6;\n"
    "  border-radius: 6px; padding: 6px 14px; min-width: 92px; }\n"
    ".card .v { font-size: 19px; font-weight: 600; }\n"
    ".card .k { color: #5b6673; font-size: 12px; }\n"
    ".card.bad .v { color: #c0392b; }\n"
    "section { background: #fff; border: 1px solid #dde1e6;\n"
    "  border-radius: 6px; padding: 10px 16px 14px; margin-bottom: 14px; }\n"
    "section h2 { font-size: 15px; margin: 0 0 6px; }\n"
    ".two { display: grid; grid-template-columns: 1fr 1fr; gap: 14px;\n"
    "  margin-bottom: 14px; }\n"
    ".two section { margin-bottom: 0; min-width: 0; }\n"
    ".note { color: #5b6673; font-size: 12px; margin-bottom: 6px; }\n"
    ".key { display: inline-block; width: 10px; height: 10px;\n"
    "  margin: 0 4px 0 10px; vertical-align: -1px; }\n"
    "canvas { display: block; }\n"
    "#tl { cursor: grab; }\n"
    ".grid { display: flex; flex-wrap: wrap; gap: 10px;\n"
    "  margin-bottom: 8px; }\n"
    "table { border-collapse: collapse; font-size: 13px; margin-top: 4px; }\n"
    "td, th { padding: 2px 10px; text-align: right; white-space: nowrap;\n"
    "  border-bottom: 1px solid #eef0f3; }\n"
    "th { background: #f0f2f5; font-weight: 600; }\n"
    "td.l, th.l { text-align: left; }\n"
    "#tip { position: fixed; pointer-events: none; display: none;\n"
    "  background: #1d232b; color: #fff; padding: 6px 8px; z-index: 9;\n"
    "  border-radius: 4px; font-size: 12px; white-space: pre; }\n"
    "pre { font: 12px/1.35 ui-monospace, monospace; overflow: auto; }\n"
    "</style>\n"
    "</head>\n"
    "<body>\n"
    "<header><h1>keel trace: @TITLE@</h1>\n"
    "<div class=\"sub\" id=\"sub\"></div></header>\n"
    "<main>\n"
    "<div class=\"cards\" id=\"cards\"></div>\n"
    "<section><h2>Timeline</h2>\n"
    "<div class=\"note\" id=\"tlnote\"></div>\n"
    "<div id=\"tlbox\"><canvas id=\"tl\"></canvas></div></section>\n"
    "<section>\n"
    "<h2>Op latency by opcode (submit to completion, log2 buckets)</h2>\n"
    "<div class=\"grid\" id=\"ops\"></div>\n"
    "<div id=\"optable\"></div></section>\n"
    "<div class=\"two\">\n"
    "<section><h2>Top tasks by total step time</h2>\n"
    "<div id=\"tasksbox\"><canvas id=\"tasks\"></canvas></div></section>\n"
    "<section><h2>Step time (log2 buckets)</h2>\n"
    "<div id=\"stepbox\"><canvas id=\"steps\"></canvas></div></section>\n"
    "</div>\n"
    "<section><h2>Slowest steps</h2><div id=\"slow\"></div></section>\n"
    "<section><h2>Stalls, aborts, restarts</h2>\n"
    "<div id=\"trouble\"></div></section>\n"
    "<section><details>\n"
    "<summary>Text summary (as keel-trace summary prints it)</summary>\n"
    "<pre>@SUMMARY@</pre></details></section>\n"
    "</main>\n"
    "<div id=\"tip\"></div>\n"
    "<script type=\"application/json\" id=\"data\">@DATA@</script>\n"
    "<script>\n"
    "'use strict';\n"
    "const D = JSON.parse(document.getElementById('data').textContent);\n"
    "const $ = id => document.getElementById(id);\n"
    "/* Marks on the timeline, by event type (0: events dropped). */\n"
    "const KIND = { 0: ['events dropped', '#7f8c8d'],\n"
    "  6: ['abort', '#c0392b'], 18: ['restart', '#8e44ad'],\n"
    "  19: ['escalation', '#111'], 20: ['stall', '#e67e22'] };\n"
    "const END = Math.max(D.duration, 1);\n"
    "\n"
    "function fmt(ns) {\n"
    "  if (ns < 1000) return Math.round(ns) + 'ns';\n"
    "  for (const [d, u] of [[1e9, 's'], [1e6, 'ms'], [1e3, 'us']]) {\n"
    "    if (ns < d) continue;\n"
    "    const v = ns / d;\n"
    "    return v.toFixed(v < 10 ? 2 : v < 100 ? 1 : 0) + u;\n"
    "  }\n"
    "}\n"
    "function str(id, none) {\n"
    "  if (!id) return none;\n"
    "  return D.str[id] === undefined ? '(unknown string)' : D.str[id];\n"
    "}\n"
    "function color(id) {\n"
    "  return 'hsl(' + Math.round(id * 137.508 % 360) + ',58%,52%)';\n"
    "}\n"
    "function setup(c, w, h) {\n"
    "  const r = window.devicePixelRatio || 1;\n"
    "  c.width = Math.round(w * r);\n"
    "  c.height = Math.round(h * r);\n"
    "  c.style.width = w + 'px';\n"
    "  c.style.height = h + 'px';\n"
    "  const g = c.getContext('2d');\n"
    "  g.setTransform(r, 0, 0, r, 0, 0);\n"
    "  g.font = '12px system-ui, sans-serif';\n"
    "  g.textBaseline = 'middle';\n"
    "  return g;\n"
    "}\n"
    "function niceStep(x) {\n"
    "  const p = Math.pow(10, Math.floor(Math.log10(x)));\n"
    "  for (const m of [1, 2, 5]) if (m * p >= x) return m * p;\n"
    "  return 10 * p;\n"
    "}\n"
    "/* Text centred on x, moved inward so that it is not cut at an edge. */\n"
    "function label(g, text, x, y, w) {\n"
    "  const half = g.measureText(text).width / 2 + 1;\n"
    "  g.textAlign = 'center';\n"
    "  g.fillText(text, Math.min(Math.max(x, half), w - half), y);\n"
    "}\n"
    "function el(tag, cls, text) {\n"
    "  const e = document.createElement(tag);\n"
    "  if (cls) e.className = cls;\n"
    "  if (text !== undefined) e.textContent = text;\n"
    "  return e;\n"
    "}\n"
    "/* head: [[title, left-aligned?]]; rows: arrays of cells. */\n"
    "function table(box, head, rows, empty) {\n"
    "  if (!rows.length) {\n"
    "    box.appendChild(el('div', 'note', empty));\n"
    "    return;\n"
    "  }\n"
    "  const t = document.createElement('table');\n"
    "  const tr = t.insertRow();\n"
    "  for (const [h, left] of head)\n"
    "    tr.appendChild(el('th', left && 'l', h));\n"
    "  for (const r of rows) {\n"
    "    const row = t.insertRow();\n"
    "    r.forEach((v, i) => {\n"
    "      const td = row.insertCell();\n"
    "      td.textContent = v;\n"
    "      if (head[i][1]) td.className = 'l';\n"
    "    });\n"
    "  }\n"
    "  box.appendChild(t);\n"
    "}\n"
    "function title(box, text) {\n"
    "  const h = el('div', 'note', text);\n"
    "  h.style.marginTop = '10px';\n"
    "  box.appendChild(h);\n"
    "}\n"
    "\n"
    "function cards() {\n"
    "  const s = D.summary;\n"
    "  const busy = s.loops ?\n"
    "    (100 * s.busy / (END * s.loops)).toFixed(1) + '%' : '-';\n"
    "  const items = [['duration', fmt(D.duration)], ['loops', s.loops],\n"
    "    ['tasks spawned', s.spawned], ['tasks exited', s.exited],\n"
    "    ['steps', s.steps], ['loops busy', busy],\n"
    "    ['ops completed', s.ops], ['events', s.events],\n"
    "    ['events dropped', s.dropped, s.dropped],\n"
    "    ['stalls', s.stalls, s.stalls], ['aborts', s.aborts, s.aborts],\n"
    "    ['restarts', s.restarts, s.restarts],\n"
    "    ['escalations', s.escalations, s.escalations]];\n"
    "  for (const [k, v, bad] of items) {\n"
    "    const d = el('div', 'card' + (bad ? ' bad' : ''));\n"
    "    d.append(el('div', 'v', v), el('div', 'k', k));\n"
    "    $('cards').appendChild(d);\n"
    "  }\n"
    "  $('sub').textContent = 'started ' + D.started + ', ' +\n"
    "    fmt(D.duration) + ', ' + s.events + ' events';\n"
    "}\n"
    "\n"
    "/* The timeline: a lane per loop. The strip at a lane's top is the\n"
    " * loop's busy fraction over all its steps; below are the steps. */\n"
    "const TL = { t0: 0, t1: END, lane: 48, top: 24, left: 100,\n"
    "  right: 10, W: 0, H: 0, drag: null };\n"
    "const lanes = new Map();\n"
    "D.loops.forEach((L, i) => lanes.set(L.index, i));\n"
    "function tlX(t) {\n"
    "  return TL.left + (t - TL.t0) * (TL.W - TL.left - TL.right) /\n"
    "    (TL.t1 - TL.t0);\n"
    "}\n"
    "function tlT(x) {\n"
    "  return TL.t0 + (x - TL.left) * (TL.t1 - TL.t0) /\n"
    "    (TL.W - TL.left - TL.right);\n"
    "}\n"
    "function drawAxis(g) {\n"
    "  const st = niceStep((TL.t1 - TL.t0) / 10);\n"
    "  g.strokeStyle = '#e3e7ec';\n"
    "  g.fillStyle = '#5b6673';\n"
    "  for (let t = Math.ceil(TL.t0 / st) * st; t <= TL.t1; t += st) {\n"
    "    const x = tlX(t);\n"
    "    g.beginPath();\n"
    "    g.moveTo(x, TL.top - 4);\n"
    "    g.lineTo(x, TL.H - 4);\n"
    "    g.stroke();\n"
    "    label(g, fmt(t), x, 10, TL.W);\n"
    "  }\n"
    "}\n"
    "function drawLane(g, L, i) {\n"
    "  const y = TL.top + i * TL.lane, w = TL.W - TL.left - TL.right;\n"
    "  g.textAlign = 'left';\n"
    "  g.fillStyle = '#1d232b';\n"
    "  g.fillText('loop ' + L.index, 8, y + 10);\n"
    "  g.fillStyle = '#6b7683';\n"
    "  g.font = '11px system-ui, sans-serif';\n"
    "  if (L.tid) g.fillText('tid ' + L.tid, 8, y + 24);\n"
    "  g.fillText((100 * L.busy / END).toFixed(1) + '% busy', 8, y + 37);\n"
    "  g.font = '12px system-ui, sans-serif';\n"
    "  g.fillStyle = '#f3f5f8';\n"
    "  g.fillRect(TL.left, y + 2, w, TL.lane - 6);\n"
    "  g.fillStyle = 'rgba(52,101,164,0.7)';\n"
    "  const bw = D.bin_ns;\n"
    "  for (let b = 0; b < L.bins.length; b++) {\n"
    "    const t = b * bw;\n"
    "    if (!L.bins[b] || t + bw < TL.t0 || t > TL.t1) continue;\n"
    "    const h = 10 * L.bins[b] / 1000;\n"
    "    const x0 = Math.max(tlX(t), TL.left);\n"
    "    const x1 = Math.min(tlX(t + bw), TL.W - TL.right);\n"
    "    g.fillRect(x0, y + 13 - h, Math.max(x1 - x0, 0.6), h);\n"
    "  }\n"
    "}\n"
    "function drawSteps(g) {\n"
    "  const sx = (TL.W - TL.left - TL.right) / (TL.t1 - TL.t0);\n"
    "  for (const s of D.steps) {\n"
    "    if (s[1] + s[2] < TL.t0 || s[1] > TL.t1) continue;\n"
    "    const y = TL.top + lanes.get(s[0]) * TL.lane, w = s[2] * sx;\n"
    "    /* A step narrower than a pixel shades it by the time it takes. */\n"
    "    g.globalAlpha = Math.min(Math.max(w, 0.08), 1);\n"
    "    g.fillStyle = color(s[3]);\n"
    "    g.fillRect(tlX(s[1]), y + 16, Math.max(w, 1), TL.lane - 21);\n"
    "  }\n"
    "  g.globalAlpha = 1;\n"
    "}\n"
    "/* Triangles; aborts as diamonds on top (a restart often follows). */\n"
    "function drawMarks(g) {\n"
    "  for (const top of [false, true]) {\n"
    "    for (const m of D.marks) {\n"
    "      if (m[1] < TL.t0 || m[1] > TL.t1 || (m[2] === 6) !== top)\n"
    "        continue;\n"
    "      const x = tlX(m[1]), y = TL.top + lanes.get(m[0]) * TL.lane + 2;\n"
    "      g.fillStyle = (KIND[m[2]] || ['', '#000'])[1];\n"
    "      g.beginPath();\n"
    "      if (top) {\n"
    "        g.moveTo(x, y - 1);\n"
    "        g.lineTo(x + 5, y + 5);\n"
    "        g.lineTo(x, y + 11);\n"
    "        g.lineTo(x - 5, y + 5);\n"
    "      } else {\n"
    "        g.moveTo(x - 5, y);\n"
    "        g.lineTo(x + 5, y);\n"
    "        g.lineTo(x, y + 9);\n"
    "      }\n"
    "      g.fill();\n"
    "    }\n"
    "  }\n"
    "}\n"
    "function drawTimeline() {\n"
    "  TL.W = $('tlbox').clientWidth;\n"
    "  TL.H = TL.top + D.loops.length * TL.lane + 4;\n"
    "  const g = setup($('tl'), TL.W, TL.H);\n"
    "  drawAxis(g);\n"
    "  D.loops.forEach((L, i) => drawLane(g, L, i));\n"
    "  g.save();\n"
    "  g.beginPath();\n"
    "  g.rect(TL.left, 0, TL.W - TL.left - TL.right, TL.H);\n"
    "  g.clip();\n"
    "  drawSteps(g);\n"
    "  drawMarks(g);\n"
    "  g.restore();\n"
    "}\n"
    "/* The text for the mark or step under the pointer, or null. */\n"
    "function tlHit(x, y) {\n"
    "  const i = Math.floor((y - TL.top) / TL.lane);\n"
    "  if (i < 0 || i >= D.loops.length || x < TL.left) return null;\n"
    "  const loop = D.loops[i].index, t = tlT(x);\n"
    "  const slack = 3 * (tlT(1) - tlT(0));\n"
    "  if (y - TL.top - i * TL.lane < 14) {\n"
    "    for (const m of D.marks) {\n"
    "      if (m[0] !== loop || Math.abs(m[1] - t) > 2 * slack) continue;\n"
    "      return (KIND[m[2]] || ['?'])[0] + ' at ' + fmt(m[1]) +\n"
    "        ' on loop ' + loop + '\\n' +\n"
    "        (m[2] ? str(m[3], '') : m[5] + ' events') +\n"
    "        (m[4] ? '\\ntask: ' + str(m[4], '') : '') +\n"
    "        (m[2] === 20 ? '\\nstep took ' + fmt(m[5]) : '');\n"
    "    }\n"
    "  }\n"
    "  let best = null;\n"
    "  for (const s of D.steps) {\n"
    "    if (s[0] === loop && s[1] - slack <= t &&\n"
    "        t <= s[1] + s[2] + slack && (!best || s[2] > best[2]))\n"
    "      best = s;\n"
    "  }\n"
    "  if (!best) return null;\n"
    "  return str(best[3], '(unnamed)') + ' (slot ' + best[5] + ')\\n' +\n"
    "    fmt(best[2]) + ' at ' + fmt(best[1]) + '\\nresumed from ' +\n"
    "    str(best[4], '(first step)');\n"
    "}\n"
    "/* The view is kept in the address (#zoom=START_NS,END_NS). */\n"
    "function zoomed() {\n"
    "  drawTimeline();\n"
    "  history.replaceState(null, '', '#zoom=' + Math.round(TL.t0) +\n"
    "    ',' + Math.round(TL.t1));\n"
    "}\n"
    "function tlHash() {\n"
    "  const m = /^#zoom=(\\d+),(\\d+)$/.exec(location.hash);\n"
    "  if (!m || +m[2] <= +m[1]) return;\n"
    "  TL.t0 = Math.min(+m[1], Math.max(END - 1000, 0));\n"
    "  TL.t1 = Math.min(Math.max(+m[2], TL.t0 + 1000), END);\n"
    "}\n"
    "function tlWheel(e) {\n"
    "  e.preventDefault();\n"
    "  const t = tlT(e.offsetX), span = TL.t1 - TL.t0;\n"
    "  const f = e.deltaY > 0 ? 1.3 : 1 / 1.3;\n"
    "  const ns = Math.min(Math.max(span * f, 1000), END);\n"
    "  TL.t0 = Math.max(0, t - (t - TL.t0) * ns / span);\n"
    "  TL.t1 = Math.min(END, TL.t0 + ns);\n"
    "  TL.t0 = TL.t1 - ns;\n"
    "  zoomed();\n"
    "}\n"
    "function tlMove(e) {\n"
    "  const tip = $('tip');\n"
    "  if (TL.drag) {\n"
    "    const span = TL.t1 - TL.t0;\n"
    "    const dt = tlT(TL.drag[0]) - tlT(e.offsetX);\n"
    "    TL.t0 = Math.min(Math.max(0, TL.drag[1] + dt), END - span);\n"
    "    TL.t1 = TL.t0 + span;\n"
    "    zoomed();\n"
    "    return;\n"
    "  }\n"
    "  const text = tlHit(e.offsetX, e.offsetY);\n"
    "  tip.style.display = text ? 'block' : 'none';\n"
    "  tip.textContent = text || '';\n"
    "  tip.style.left = (e.clientX + 14) + 'px';\n"
    "  tip.style.top = (e.clientY + 10) + 'px';\n"
    "}\n"
    "function tlEvents() {\n"
    "  const c = $('tl');\n"
    "  c.addEventListener('wheel', tlWheel, { passive: false });\n"
    "  c.addEventListener('mousedown', e => {\n"
    "    TL.drag = [e.offsetX, TL.t0];\n"
    "  });\n"
    "  window.addEventListener('mouseup', () => { TL.drag = null; });\n"
    "  c.addEventListener('mousemove', tlMove);\n"
    "  c.addEventListener('mouseleave', () => {\n"
    "    $('tip').style.display = 'none';\n"
    "  });\n"
    "  c.addEventListener('dblclick', () => {\n"
    "    TL.t0 = 0;\n"
    "    TL.t1 = END;\n"
    "    zoomed();\n"
    "  });\n"
    "  window.addEventListener('resize', drawTimeline);\n"
    "}\n"
    "function tlNote() {\n"
    "  const n = $('tlnote');\n"
    "  n.textContent = (D.steps.length < D.steps_total ?\n"
    "    'The ' + D.steps.length + ' longest of ' + D.steps_total +\n"
    "    ' steps are drawn; the' : 'All ' + D.steps_total +\n"
    "    ' steps; the') + ' strip above them is the loop\\u2019s busy' +\n"
    "    ' fraction. Wheel: zoom, drag: pan, double-click: reset. Marks:';\n"
    "  for (const k of [20, 6, 18, 19, 0]) {\n"
    "    const s = el('span', 'key');\n"
    "    s.style.background = KIND[k][1];\n"
    "    n.append(s, KIND[k][0]);\n"
    "  }\n"
    "}\n"
    "\n"
    "/* A log2 histogram: hist is [[bucket, count]], bucket k holds\n"
    " * [2^(k-1), 2^k) ns. lines: [[ns, color, label, side]]. */\n"
    "function histogram(c, w, h, hist, lines, caption) {\n"
    "  const g = setup(c, w, h);\n"
    "  const L = 42, R = 8, T = caption ? 22 : 8, B = 30;\n"
    "  g.fillStyle = '#1d232b';\n"
    "  g.textAlign = 'left';\n"
    "  if (caption) g.fillText(caption, 4, 10);\n"
    "  if (!hist.length) return;\n"
    "  const k0 = hist[0][0];\n"
    "  const k1 = Math.max(hist[hist.length - 1][0], k0 + 5);\n"
    "  const n = k1 - k0 + 1, bw = (w - L - R) / n;\n"
    "  const top = Math.max(...hist.map(x => x[1]));\n"
    "  g.strokeStyle = '#dde1e6';\n"
    "  g.beginPath();\n"
    "  g.moveTo(L, h - B + 0.5);\n"
    "  g.lineTo(w - R, h - B + 0.5);\n"
    "  g.stroke();\n"
    "  g.fillStyle = '#4a78b0';\n"
    "  for (const [k, cnt] of hist) {\n"
    "    const bh = Math.max((h - T - B) * cnt / top, 1);\n"
    "    g.fillRect(L + (k - k0) * bw + 1, h - B - bh,\n"
    "      Math.max(bw - 2, 1), bh);\n"
    "  }\n"
    "  g.fillStyle = '#5b6673';\n"
    "  g.textAlign = 'right';\n"
    "  g.fillText(String(top), L - 4, T + 2);\n"
    "  g.fillText('0', L - 4, h - B);\n"
    "  const labels = Math.max(1, Math.floor((w - L - R) / 50));\n"
    "  const every = Math.ceil(n / labels);\n"
    "  for (let k = k0; k <= k1 + 1; k += every)\n"
    "    label(g, k ? fmt(Math.pow(2, k - 1)) : '0', L + (k - k0) * bw,\n"
    "      h - B + 12, w);\n"
    "  for (const [v, col, text, side] of lines) {\n"
    "    if (!v) continue;\n"
    "    const x = L + (Math.log2(v) + 1 - k0) * bw;\n"
    "    g.strokeStyle = col;\n"
    "    g.fillStyle = col;\n"
    "    g.setLineDash([4, 3]);\n"
    "    g.beginPath();\n"
    "    g.moveTo(x, T);\n"
    "    g.lineTo(x, h - B);\n"
    "    g.stroke();\n"
    "    g.setLineDash([]);\n"
    "    /* Beside the line, on the side where the label fits. */\n"
    "    const tw = g.measureText(text).width;\n"
    "    const left = side === 'left' ? x + 3 + tw < w : x - 3 - tw < 0;\n"
    "    g.textAlign = left ? 'left' : 'right';\n"
    "    g.fillText(text, x + (left ? 3 : -3), h - B + 24);\n"
    "  }\n"
    "}\n"
    "function opCharts() {\n"
    "  for (const op of D.ops) {\n"
    "    const c = document.createElement('canvas');\n"
    "    $('ops').appendChild(c);\n"
    "    histogram(c, 318, 168, op.hist,\n"
    "      [[op.p50, '#2c7a4b', 'p50', 'right'],\n"
    "       [op.p99, '#c0392b', 'p99', 'left']],\n"
    "      op.name + ': ' + op.count + ' ops, p50 ' + fmt(op.p50) +\n"
    "      ', p99 ' + fmt(op.p99));\n"
    "  }\n"
    "  table($('optable'), [['opcode', 1], ['count'], ['errors'],\n"
    "    ['p50'], ['p90'], ['p99'], ['max']],\n"
    "    D.ops.map(o => [o.name, o.count, o.errors, fmt(o.p50),\n"
    "      fmt(o.p90), fmt(o.p99), fmt(o.max)]),\n"
    "    'No op completions in this trace.');\n"
    "}\n"
    "function taskChart() {\n"
    "  const w = $('tasksbox').clientWidth, row = 22, L = 150;\n"
    "  const h = Math.max(D.tasks.length * row + 8, 40);\n"
    "  const g = setup($('tasks'), w, h);\n"
    "  if (!D.tasks.length) {\n"
    "    g.fillStyle = '#5b6673';\n"
    "    g.fillText('No steps in this trace.', 4, 14);\n"
    "    return;\n"
    "  }\n"
    "  const top = D.tasks[0].total || 1;\n"
    "  D.tasks.forEach((t, i) => {\n"
    "    const y = 4 + i * row, name = str(t.name, '(unnamed)');\n"
    "    g.fillStyle = '#1d232b';\n"
    "    g.textAlign = 'right';\n"
    "    g.fillText(name.length > 22 ? name.slice(0, 21) + '\\u2026' : name,\n"
    "      L - 6, y + row / 2);\n"
    "    const bw = Math.max((w - L - 270) * t.total / top, 1);\n"
    "    g.fillStyle = color(t.name);\n"
    "    g.fillRect(L, y + 3, bw, row - 6);\n"
    "    g.fillStyle = '#5b6673';\n"
    "    g.textAlign = 'left';\n"
    "    g.fillText(fmt(t.total) + ' (' + (100 * t.total /\n"
    "      Math.max(D.summary.busy, 1)).toFixed(1) + '%), ' + t.steps +\n"
    "      ' steps, max ' + fmt(t.max), L + bw + 6, y + row / 2);\n"
    "  });\n"
    "}\n"
    "function stepChart() {\n"
    "  const lines = D.steps.length ?\n"
    "    [[D.steps[0][2], '#c0392b', 'longest', 'right']] : [];\n"
    "  histogram($('steps'), $('stepbox').clientWidth, 220, D.step_hist,\n"
    "    lines, D.summary.steps + ' steps, ' + fmt(D.summary.busy) +\n"
    "    ' in all');\n"
    "}\n"
    "const STEP_HEAD = [['duration'], ['at'], ['loop'], ['slot'],\n"
    "  ['task', 1], ['resumed from', 1]];\n"
    "function stepRows(v) {\n"
    "  return v.map(s => [fmt(s[2]), fmt(s[1]), s[0],\n"
    "    s[5] < 0 ? '-' : s[5], str(s[3], '(unnamed)'),\n"
    "    str(s[4], '(first step)')]);\n"
    "}\n"
    "function lists() {\n"
    "  table($('slow'), STEP_HEAD, stepRows(D.steps.slice(0, 10)),\n"
    "    'No steps in this trace.');\n"
    "  const box = $('trouble');\n"
    "  title(box, 'Stalls: ' + D.summary.stalls + ' (longest first)');\n"
    "  table(box, STEP_HEAD, stepRows(D.stalls), 'None.');\n"
    "  title(box, 'Aborts: ' + D.summary.aborts);\n"
    "  table(box, [['count'], ['message', 1], ['site', 1],\n"
    "    ['first in task', 1], ['loop'], ['at']],\n"
    "    D.aborts.map(a => [a[0], str(a[1], ''), str(a[2], '(no site)'),\n"
    "      str(a[5], '(unnamed)'), a[3], fmt(a[4])]), 'None.');\n"
    "  title(box, 'Restarts: ' + D.summary.restarts + ', escalations: ' +\n"
    "    D.summary.escalations);\n"
    "  const rows = D.restarts.map(r => ['restart', str(r[1], '(unnamed)'),\n"
    "    r[0], r[2], r[3], fmt(r[4])]).concat(D.escalations.map(r =>\n"
    "    ['escalate', str(r[1], '(unnamed)'), r[0], '', r[2], fmt(r[3])]));\n"
    "  table(box, [['what', 1], ['name', 1], ['count'], ['restart count'],\n"
    "    ['first on loop'], ['at']], rows, 'None.');\n"
    "}\n"
    "\n"
    "cards();\n"
    "tlNote();\n"
    "tlHash();\n"
    "drawTimeline();\n"
    "tlEvents();\n"
    "opCharts();\n"
    "taskChart();\n"
    "stepChart();\n"
    "lists();\n"
    "</script>\n"
    "</body>\n"
    "</html>\n";

struct html {
	const struct trace *tr;
	FILE *out;
	uint32_t nloops;
	uint64_t bin_ns;
	uint64_t *busy;	 /* [loop][bin]: ns of steps in the bin */
	int64_t *whole;	 /* [loop][bin]: steps covering bins whole, as the
			  * difference of each bin's count from the last */
	struct map used; /* string ids the report names */
};

/*
 * Spread a step's time over the bins it covers. Covered bins are counted
 * through a difference array, so a step costs O(1) however long it is.
 */
static void html_step(void *ctx, const struct step *s)
{
	struct html *h = ctx;
	uint64_t w = h->bin_ns, end = s->begin + s->dur;
	uint64_t b0 = s->begin / w, b1 = end / w;
	uint64_t *busy = h->busy + (size_t)s->loop * HTML_BINS;
	int64_t *whole = h->whole + (size_t)s->loop * (HTML_BINS + 1);

	if (s->loop >= h->nloops || b0 >= HTML_BINS)
		return; /* the file changed since the first pass */
	if (b1 >= HTML_BINS) {
		b1 = HTML_BINS - 1;
		end = HTML_BINS * w;
	}
	if (b0 == b1) {
		busy[b0] += end - s->begin;
		return;
	}
	busy[b0] += (b0 + 1) * w - s->begin;
	busy[b1] += end - b1 * w;
	whole[b0 + 1]++;
	whole[b1]--;
}

static void html_bins(struct html *h, struct trace *tr)
{
	struct decoder d;

	h->nloops = tr->d.nloops;
	h->bin_ns = tr->d.end_ts / HTML_BINS + 1;
	h->busy = xcalloc((size_t)h->nloops * HTML_BINS, sizeof(*h->busy));
	h->whole =
	    xcalloc((size_t)h->nloops * (HTML_BINS + 1), sizeof(*h->whole));
	trace_replay(tr, &d, (struct sink){.ctx = h, .step = html_step});
	decoder_free(&d);
	for (uint32_t l = 0; l < h->nloops; l++) {
		int64_t covered = 0;

		for (size_t b = 0; b < HTML_BINS; b++) {
			covered += h->whole[l * (HTML_BINS + 1) + b];
			h->busy[l * HTML_BINS + b] +=
			    (uint64_t)covered * h->bin_ns;
		}
	}
}

/* A string id the page names: remember to put its text in the page. */
static uint32_t sid(struct html *h, uint32_t id)
{
	if (id)
		map_put(&h->used, id, 1);
	return id;
}

static uint64_t table_count(const struct table *t)
{
	uint64_t n = 0;

	for (size_t i = 0; i < t->rows.n; i++)
		n += t->rows.v[i].count;
	return n;
}

static void html_summary_json(struct html *h)
{
	const struct trace *tr = h->tr;
	uint64_t completions = 0;

	for (size_t i = 0; i < ARRAY_SIZE(tr->st.ops); i++)
		completions += tr->st.ops[i].lat.n;
	fprintf(h->out,
		"\"summary\":{\"loops\":%" PRIu32 ",\"events\":%" PRIu64
		",\"spawned\":%" PRIu64 ",\"exited\":%" PRIu64
		",\"steps\":%" PRIu64 ",\"busy\":%" PRIu64 ",\"ops\":%" PRIu64
		",\"dropped\":%" PRIu64 ",\"stalls\":%zu,\"aborts\":%" PRIu64
		",\"restarts\":%" PRIu64 ",\"escalations\":%" PRIu64 "},\n",
		tr->loops, tr->d.events, tr->all.spawned, tr->all.exited,
		tr->st.steps, tr->st.busy, completions, tr->all.dropped,
		tr->st.stalls.n, table_count(&tr->st.aborts),
		table_count(&tr->st.restarts),
		table_count(&tr->st.escalations));
}

static void html_loops_json(struct html *h)
{
	const char *sep = "";

	fprintf(h->out, "\"bin_ns\":%" PRIu64 ",\n\"loops\":[", h->bin_ns);
	for (uint32_t l = 0; l < h->nloops; l++) {
		const struct loop *lp = &h->tr->d.loops[l];

		if (!lp->seen)
			continue;
		fprintf(h->out,
			"%s\n{\"index\":%" PRIu32 ",\"tid\":%" PRIu64
			",\"busy\":%" PRIu64 ",\"bins\":[",
			sep, l, lp->tid, lp->busy);
		/* Busy fraction per bin, in thousandths. */
		for (size_t b = 0; b < HTML_BINS; b++) {
			uint64_t v =
			    h->busy[l * HTML_BINS + b] * 1000 / h->bin_ns;

			fprintf(h->out, "%s%" PRIu64, b ? "," : "",
				v > 1000 ? 1000 : v);
		}
		fputs("]}", h->out);
		sep = ",";
	}
	fputs("],\n", h->out);
}

/* [loop, begin, dur, name, site, slot], as the page's JS reads them. */
static void html_step_rows(struct html *h, const char *key,
			   const struct step *v, size_t n)
{
	fprintf(h->out, "\"%s\":[", key);
	for (size_t i = 0; i < n; i++)
		fprintf(h->out,
			"%s[%" PRIu32 ",%" PRIu64 ",%" PRIu64 ",%" PRIu32
			",%" PRIu32 ",%" PRId64 "]",
			i ? (i % 8 ? "," : ",\n") : "", v[i].loop, v[i].begin,
			v[i].dur, sid(h, v[i].name), sid(h, v[i].site),
			v[i].slot == NO_TASK ? (int64_t)-1
					     : (int64_t)v[i].slot);
	fputs("],\n", h->out);
}

static void html_marks_json(struct html *h)
{
	const struct stats *st = &h->tr->st;

	fputs("\"marks\":[", h->out);
	for (size_t i = 0; i < st->marks.n; i++) {
		const struct mark *k = &st->marks.v[i];

		fprintf(h->out,
			"%s[%" PRIu32 ",%" PRIu64 ",%" PRIu32 ",%" PRIu32
			",%" PRIu32 ",%" PRIu64 "]",
			i ? "," : "", k->loop, k->ts, k->type, sid(h, k->text),
			sid(h, k->name), k->value);
	}
	fputs("],\n", h->out);
}

static void html_hist_json(FILE *f, const uint64_t hist[HIST_BUCKETS])
{
	const char *sep = "";

	fputs("[", f);
	for (unsigned k = 0; k < HIST_BUCKETS; k++) {
		if (!hist[k])
			continue;
		fprintf(f, "%s[%u,%" PRIu64 "]", sep, k, hist[k]);
		sep = ",";
	}
	fputs("]", f);
}

static void html_ops_json(struct html *h)
{
	unsigned order[256];
	size_t n = ops_by_count(&h->tr->st, order);
	char name[16];

	fputs("\"ops\":[", h->out);
	for (size_t i = 0; i < n; i++) {
		const struct opstat *o = &h->tr->st.ops[order[i]];
		uint64_t hist[HIST_BUCKETS] = {0};

		for (size_t j = 0; j < o->lat.n; j++)
			hist[log2_bucket(o->lat.v[j])]++;
		fprintf(h->out, "%s\n{\"name\":", i ? "," : "");
		json_str(h->out, op_name(order[i], name));
		fprintf(h->out,
			",\"count\":%zu,\"errors\":%" PRIu64 ",\"p50\":%" PRIu64
			",\"p90\":%" PRIu64 ",\"p99\":%" PRIu64
			",\"max\":%" PRIu64 ",\"hist\":",
			o->lat.n, o->errors, percentile(o, 50),
			percentile(o, 90), percentile(o, 99),
			o->lat.v[o->lat.n - 1]);
		html_hist_json(h->out, hist);
		fputs("}", h->out);
	}
	fputs("],\n\"step_hist\":", h->out);
	html_hist_json(h->out, h->tr->st.step_hist);
	fputs(",\n", h->out);
}

static int cmp_row_sum(const void *a, const void *b)
{
	const struct row *x = a, *y = b;

	if (x->sum != y->sum)
		return x->sum > y->sum ? -1 : 1;
	return x->s1 < y->s1 ? -1 : x->s1 > y->s1;
}

/* Task names by their steps' total time. */
static void html_tasks_json(struct html *h)
{
	const struct table *t = &h->tr->st.names;
	struct row *v = sorted_rows(t);
	size_t shown = 0;

	sort(v, t->rows.n, sizeof(*v), cmp_row_sum);
	fputs("\"tasks\":[", h->out);
	for (size_t i = 0; i < t->rows.n && shown < HTML_TASKS; i++) {
		if (!v[i].count) /* spawned, never stepped */
			continue;
		fprintf(h->out,
			"%s\n{\"name\":%" PRIu32 ",\"total\":%" PRIu64
			",\"steps\":%" PRIu64 ",\"max\":%" PRIu64
			",\"tasks\":%" PRIu64 "}",
			shown++ ? "," : "", sid(h, v[i].s1), v[i].sum,
			v[i].count, v[i].max, v[i].tasks);
	}
	fputs("],\n", h->out);
	free(v);
}

/* Aborts, restarts, escalations: the most frequent first. */
static void html_rows_json(struct html *h)
{
	const struct stats *st = &h->tr->st;
	struct row *a = sorted_rows(&st->aborts);
	struct row *r = sorted_rows(&st->restarts);
	struct row *e = sorted_rows(&st->escalations);

	fputs("\"aborts\":[", h->out);
	for (size_t i = 0; i < st->aborts.rows.n && i < LIST_ROWS; i++)
		fprintf(h->out,
			"%s[%" PRIu64 ",%" PRIu32 ",%" PRIu32 ",%" PRIu32
			",%" PRIu64 ",%" PRIu32 "]",
			i ? "," : "", a[i].count, sid(h, a[i].s1),
			sid(h, a[i].s2), a[i].loop, a[i].ts, sid(h, a[i].name));
	fputs("],\n\"restarts\":[", h->out);
	for (size_t i = 0; i < st->restarts.rows.n && i < LIST_ROWS; i++)
		fprintf(h->out,
			"%s[%" PRIu64 ",%" PRIu32 ",%" PRIu64 ",%" PRIu32
			",%" PRIu64 "]",
			i ? "," : "", r[i].count, sid(h, r[i].s1), r[i].max,
			r[i].loop, r[i].ts);
	fputs("],\n\"escalations\":[", h->out);
	for (size_t i = 0; i < st->escalations.rows.n && i < LIST_ROWS; i++)
		fprintf(h->out,
			"%s[%" PRIu64 ",%" PRIu32 ",%" PRIu32 ",%" PRIu64 "]",
			i ? "," : "", e[i].count, sid(h, e[i].s1), e[i].loop,
			e[i].ts);
	fputs("],\n", h->out);
	free(a);
	free(r);
	free(e);
}

/* The text of every string id named above (written last for that). */
static void html_strings_json(struct html *h)
{
	const char *sep = "";

	fputs("\"str\":{", h->out);
	for (size_t i = 0; i < h->used.cap; i++) {
		const char *s;

		if (h->used.vals[i] == NOT_FOUND)
			continue;
		s = str_find(&h->tr->strings, h->used.keys[i]);
		if (!s)
			continue; /* the page says "(unknown string)" */
		fprintf(h->out, "%s\n\"%" PRIu64 "\":", sep, h->used.keys[i]);
		json_str(h->out, s);
		sep = ",";
	}
	fputs("}", h->out);
}

static void html_data(struct html *h)
{
	const struct trace *tr = h->tr;
	char when[64];

	fputs("{\"file\":", h->out);
	json_str(h->out, trace_path);
	fputs(",\"started\":", h->out);
	json_str(h->out, fmt_realtime(tr->r.start_real, when));
	fprintf(h->out, ",\"duration\":%" PRIu64 ",\n", tr->d.end_ts);
	html_summary_json(h);
	html_loops_json(h);
	html_step_rows(h, "steps", tr->st.longest.v, tr->st.longest.n);
	fprintf(h->out, "\"steps_total\":%" PRIu64 ",\n", tr->st.steps);
	html_step_rows(h, "stalls", tr->st.stalls.v,
		       tr->st.stalls.n < LIST_ROWS ? tr->st.stalls.n
						   : LIST_ROWS);
	html_marks_json(h);
	html_ops_json(h);
	html_tasks_json(h);
	html_rows_json(h);
	html_strings_json(h);
	fputs("}", h->out);
}

/* Text in HTML: the characters that could end it or start markup. */
static void html_text(FILE *f, const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		switch (s[i]) {
		case '&':
			fputs("&amp;", f);
			break;
		case '<':
			fputs("&lt;", f);
			break;
		case '>':
			fputs("&gt;", f);
			break;
		case '"':
			fputs("&quot;", f);
			break;
		default:
			fputc(s[i], f);
		}
	}
}

/* The text summary, the same as `keel-trace summary` prints. */
static void html_summary_text(struct html *h)
{
	char *text = NULL;
	size_t n = 0;
	FILE *mem = open_memstream(&text, &n);

	if (!mem)
		die("out of memory");
	print_summary(mem, h->tr);
	if (fclose(mem) != 0)
		die("out of memory");
	html_text(h->out, text, n);
	free(text);
}

static void html_write(struct html *h)
{
	const char *p = html_template, *at, *end;

	while ((at = strchr(p, '@')) && (end = strchr(at + 1, '@'))) {
		size_t len = (size_t)(end - at - 1);

		fwrite(p, 1, (size_t)(at - p), h->out);
		if (len == 5 && !strncmp(at + 1, "TITLE", len))
			html_text(h->out, trace_path, strlen(trace_path));
		else if (len == 4 && !strncmp(at + 1, "DATA", len))
			html_data(h);
		else if (len == 7 && !strncmp(at + 1, "SUMMARY", len))
			html_summary_text(h);
		p = end + 1;
	}
	fputs(p, h->out);
}

static void write_html(struct trace *tr, FILE *out)
{
	struct html h = {.tr = tr, .out = out};

	html_bins(&h, tr);
	html_write(&h);
	free(h.busy);
	free(h.whole);
	map_free(&h.used);
}

/* ---- main ------------------------------------------------------------- */

static const char usage_text[] = "usage: keel-trace summary FILE\n"
				 "       keel-trace chrome FILE [-o OUT.json]\n"
				 "       keel-trace html FILE [-o OUT.html]\n";

static void __attribute__((noreturn)) usage(const char *why)
{
	if (why)
		fprintf(stderr, "keel-trace: %s\n", why);
	fputs(usage_text, stderr);
	exit(2);
}

struct options {
	const char *cmd, *file, *out;
};

static void parse(int argc, char **argv, struct options *o)
{
	if (argc == 2 &&
	    (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help"))) {
		fputs(usage_text, stdout);
		exit(0);
	}
	if (argc < 3)
		usage(NULL);
	o->cmd = argv[1];
	if (strcmp(o->cmd, "summary") && strcmp(o->cmd, "chrome") &&
	    strcmp(o->cmd, "html"))
		usage("unknown command");
	for (int i = 2; i < argc; i++) {
		if (!strcmp(argv[i], "-o") && strcmp(o->cmd, "summary")) {
			if (++i == argc || o->out)
				usage("-o needs one output file");
			o->out = argv[i];
		} else if (argv[i][0] == '-' && argv[i][1]) {
			usage("unknown option");
		} else if (o->file) {
			usage("one trace file only");
		} else {
			o->file = argv[i];
		}
	}
	if (!o->file)
		usage("no trace file");
}

/* The output file, opened only now that the trace has been checked. */
static FILE *open_output(const char *path, const struct stat *in)
{
	struct stat st;
	FILE *f;

	if (!path)
		return stdout;
	/* Opening it would empty the trace that the second pass reads. */
	if (stat(path, &st) == 0 && st.st_dev == in->st_dev &&
	    st.st_ino == in->st_ino)
		die("the output file is the trace file");
	f = fopen(path, "w");
	if (!f || fstat(fileno(f), &st) != 0) {
		trace_path = path;
		die("%s", strerror(errno));
	}
	/* Never remove a device or a pipe (-o /dev/stdout) on failure. */
	if (S_ISREG(st.st_mode))
		out_path = path;
	return f;
}

static void close_output(FILE *f, const char *path)
{
	bool bad = ferror(f) != 0;

	if (fclose(f) != 0 || bad) {
		trace_path = path ? path : "stdout";
		die("write error: %s", strerror(errno));
	}
	out_path = NULL;
}

int main(int argc, char **argv)
{
	struct options o = {0};
	struct trace tr = {0};
	bool chrome, html;
	FILE *out;

	parse(argc, argv, &o);
	chrome = !strcmp(o.cmd, "chrome");
	html = !strcmp(o.cmd, "html");
	trace_load(&tr, o.file, html ? HTML_STEPS : LIST_ROWS, chrome);
	out = open_output(o.out, &tr.r.st);
	if (chrome)
		write_chrome(&tr, out);
	else if (html)
		write_html(&tr, out);
	else
		print_summary(out, &tr);
	close_output(out, o.out);
	trace_free(&tr);
	return 0;
}
