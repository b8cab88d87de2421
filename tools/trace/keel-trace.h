/* SPDX-License-Identifier: MIT */
/*
 * keel-trace.h: what the parts of keel-trace share: the limits, the
 * growable arrays and the map, the reader's and the decoder's state, the
 * statistics of the first pass, and each part's entry points.
 *
 * The parts, in the order data flows through them:
 *	read.c     the file: its header, records checked against its size,
 *	           the string table
 *	decode.c   events into steps and task lifetimes, handed to a sink
 *	stats.c    the first pass's sink: counts, latencies, the longest
 *	           steps; and a trace: the file and what that pass learnt
 *	summary.c  the text summary
 *	chrome.c   Chrome Trace Event JSON (Perfetto)
 *	html.c     the HTML report (its page is report.html, built in)
 *	main.c     arguments, the output file, errors
 *	util.c     memory, the map, numbers and JSON text
 * Any error in any part ends the program through die(): one line on
 * stderr, exit 1. (fuzz/fuzz_trace_reader.c links every part but main.c
 * and has a die() of its own, which returns to the fuzzer instead.)
 */
#ifndef KEEL_TRACE_TOOL_H
#define KEEL_TRACE_TOOL_H

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
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

#define EVENT_BYTES  32
#define CHUNK_EVENTS 4096 /* events read per fread */
#define NO_TASK	     UINT32_MAX
#define NOT_FOUND    UINT32_MAX
#define LIST_ROWS    10	   /* rows per list in the summary */
#define HTML_STEPS   20000 /* longest steps drawn one by one in the report */
#define HTML_MARKS   2000  /* stalls, aborts, restarts marked on the timeline */
#define HIST_BUCKETS 65	   /* log2 buckets of a 64-bit ns value, and 0 */

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

_Static_assert(sizeof(struct keel_trace_event) == EVENT_BYTES,
	       "trace.h's event is 32 bytes");

/* ---- errors, memory, growable arrays ---------------------------------- */

extern const char *trace_path; /* named in every error */
/* A regular output file, removed if we fail half-way through it. */
extern const char *out_path;

/* One line "keel-trace: <trace_path>: <message>" on stderr, exit 1. */
void __attribute__((format(printf, 1, 2), noreturn)) die(const char *fmt, ...);
void *xrealloc(void *p, size_t n, size_t size);
void *xcalloc(size_t n, size_t size);
/* Make room for `need` elements of `size` bytes in *p (capacity *cap). */
void *grow(void *p, size_t *cap, size_t need, size_t size);
/* qsort, which must not be handed the NULL of an empty array. */
void sort(void *v, size_t n, size_t size,
	  int (*cmp)(const void *, const void *));

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

/* The slot that holds `key`, or the empty slot where it would go (cap > 0). */
size_t map_find(const struct map *m, uint64_t key);

/* The value under `key`, or NOT_FOUND. Inline: the decoder's hot path. */
static inline uint32_t map_get(const struct map *m, uint64_t key)
{
	return m->cap ? m->vals[map_find(m, key)] : NOT_FOUND;
}

void map_put(struct map *m, uint64_t key, uint32_t val);
void map_free(struct map *m);

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

/* ---- a trace: the file and what the first pass learnt ----------------- */

struct trace {
	struct reader r;
	struct strings strings;
	struct decoder d; /* the first pass's: its loops' counters */
	struct loop all;  /* those counters summed over the loops */
	uint32_t loops;	  /* loops seen */
	struct stats st;
};

/* ---- numbers and JSON text (util.c) ----------------------------------- */

/* An opcode's name (keel_opcode_name()); an unknown one is "op<N>", in buf. */
const char *op_name(unsigned op, char buf[16]);
/* ns as text with three significant digits: 850ns, 12.3us, 1.05ms, 2.00s. */
const char *fmt_ns(uint64_t ns, char buf[24]);
/* floor(log2(v)) + 1, and 0 for 0: bucket k holds [2^(k-1), 2^k). */
unsigned log2_bucket(uint64_t v);
/* The lowest value of a log2 bucket. */
uint64_t bucket_floor(unsigned k);
/* A JSON string; bytes that are not UTF-8 become U+FFFD. */
void json_str(FILE *f, const char *s);
/* ns as microseconds, exactly: Chrome's ts and dur are in us. */
void json_us(FILE *f, uint64_t ns);

/* ---- the file (read.c) ------------------------------------------------ */

/* Little-endian numbers, as the file stores them. */
static inline uint16_t le16(const unsigned char *p)
{
	return (uint16_t)(p[0] | p[1] << 8);
}

static inline uint32_t le32(const unsigned char *p)
{
	return (uint32_t)le16(p) | (uint32_t)le16(p + 2) << 16;
}

static inline uint64_t le64(const unsigned char *p)
{
	return (uint64_t)le32(p) | (uint64_t)le32(p + 4) << 32;
}

/* Open the trace and check its header; any trouble is fatal. */
void reader_open(struct reader *r, const char *path);
/* Take `size` bytes of an open stream `f` (at its start) as the trace and
 * check its header: reader_open() without the file, for fuzz/. */
void reader_start(struct reader *r, FILE *f, uint64_t size);
/* Back to the first record, for the second pass. */
void reader_rewind(struct reader *r);
void reader_read(struct reader *r, void *buf, size_t n);
void reader_skip(struct reader *r, uint64_t n);
/* The next record's header, or false at the end of the file. */
bool reader_record(struct reader *r, struct record *rec);
/* The body's length in bytes; a record that cannot be read is fatal. */
uint64_t record_body(const struct reader *r, const struct record *rec);
/* Read a STRING record's body into the table (first definition wins). */
void read_string(struct reader *r, struct strings *s, const struct record *rec,
		 uint64_t body);
/* The string with this id, or NULL if the file has not defined it. */
const char *str_find(const struct strings *s, uint64_t id);
/* The first id of the same text; an undefined id stays as it is. */
uint32_t str_canonical(const struct strings *s, uint32_t id);
/* Text for an id that names something; `none` if the id is 0. */
const char *str_or(const struct strings *s, uint64_t id, const char *none);

/* ---- the decoder (decode.c) ------------------------------------------- */

/* A string id from an event field; one too large is an unknown string. */
uint32_t string_id(uint64_t v);
/* One pass over the whole file, every event handed to d->sink. */
void scan(struct reader *r, struct decoder *d);
void decoder_free(struct decoder *d);

/* ---- statistics and the trace (stats.c) ------------------------------- */

struct row *table_row(struct table *t, uint64_t key);
void table_free(struct table *t);
/* A table's rows, the most frequent first; the caller frees it. */
struct row *sorted_rows(const struct table *t);
/* Nearest rank: the smallest sample with at least p% at or below it. */
uint64_t percentile(const struct opstat *o, unsigned p);
/* Opcodes with completions, the busiest first; returns how many. */
size_t ops_by_count(const struct stats *st, unsigned order[256]);

/*
 * Open and check the whole file, and gather the statistics (the first
 * pass); keep the `longest` steps, and the endpoints if asked.
 */
void trace_load(struct trace *tr, const char *path, size_t longest,
		bool want_endpoints);
/* The same on a reader already started (reader_start()). */
void trace_check(struct trace *tr, size_t longest, bool want_endpoints);
/* A second pass that hands everything to `sink`. */
void trace_replay(struct trace *tr, struct decoder *d, struct sink sink);
void trace_free(struct trace *tr);
const char *task_name(const struct trace *tr, uint32_t id);
const char *site_name(const struct trace *tr, uint32_t id);
const char *fmt_realtime(uint64_t ns, char buf[64]);

/* ---- the outputs ------------------------------------------------------ */

void print_summary(FILE *f, const struct trace *tr); /* summary.c */
void write_chrome(struct trace *tr, FILE *out);	     /* chrome.c */
void write_html(struct trace *tr, FILE *out);	     /* html.c */

#endif
