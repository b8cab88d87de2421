/* SPDX-License-Identifier: MIT */
/*
 * test_trace.c: the tracer, task dumps and metrics, on real runs. A scripted
 * task (sleep, recv, panic) decodes to exactly the expected event sequence
 * (a decoder here checks the file format as it goes: header, records,
 * strings defined before use); keel_trace_stop() keeps the events of the
 * loop of the thread that stops it; tools/keel-trace turns that real trace
 * into Chrome JSON that obeys the Trace Event Format's rules, and rejects a
 * truncated copy; a writer that falls behind (a FIFO nobody reads) makes
 * the loop drop events, and the drops are counted, returned by
 * keel_trace_stop() and carried by the EVENTS records' `extra`; the
 * Prometheus text passes a format check and reports its full length when
 * cut; a task dump names a task blocked in recv, its await site and its op;
 * the stall detector reports a 30 ms step once (and never when off, nor a
 * 25 ms first step), and traces it; keel_opcode_name() names every opcode up to
 * IORING_OP_PIPE; an idle recv stream's parked poll completes with its real
 * latency.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <keel.h>
#include <liburing.h>
#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "helpers/keel_test.h"

#define NO_TASK UINT32_MAX

/* Each test's files: a fresh directory, removed after the test even when
 * an assertion ended it. */
static char g_dir[256];

static void remove_dir(void)
{
	kt_tmpdir_remove(g_dir);
}

TestSuite(trace, .fini = remove_dir);

/* ---- a trace decoder ---------------------------------------------------- */

struct tr_event {
	uint32_t loop;
	uint32_t record; /* index of its EVENTS record in the file */
	struct keel_trace_event ev;
};

struct tr {
	uint64_t start_mono;
	uint64_t start_real;
	struct tr_event *ev;
	size_t nev, cap;
	char **str; /* by id; str[0] is NULL ("no string") */
	uint32_t nstr;
	uint32_t loop_tid[16];
	uint32_t nloops; /* LOOP records */
	size_t nrec_events;
	uint64_t extra_sum;	  /* drops carried by EVENTS records */
	size_t first_extra_rec;	  /* EVENTS record index, SIZE_MAX: none */
	size_t events_with_extra; /* EVENTS records with extra != 0 */
};

static uint32_t rd32(const unsigned char *p)
{
	uint32_t v;

	memcpy(&v, p, sizeof(v));
	return v;
}

static uint64_t rd64(const unsigned char *p)
{
	uint64_t v;

	memcpy(&v, p, sizeof(v));
	return v;
}

static const char *tr_str(const struct tr *t, uint64_t id)
{
	if (!id || id >= t->nstr)
		return NULL;
	return t->str[id];
}

/* A string an event refers to must be defined by an earlier record. */
static void check_ref(const struct tr *t, const struct keel_trace_event *ev,
		      uint64_t id, const char *field)
{
	cr_assert(id == 0 || (id < t->nstr && t->str[id]),
		  "event type %u task %u: %s = string %llu, not defined "
		  "before it",
		  ev->type, ev->task, field, (unsigned long long)id);
}

static void tr_decode(const unsigned char *p, size_t len, struct tr *t)
{
	size_t off = 32;

	memset(t, 0, sizeof(*t));
	t->first_extra_rec = SIZE_MAX;
	cr_assert_geq(len, 32, "trace of %zu bytes: no header", len);
	cr_assert_eq(memcmp(p, KEEL_TRACE_MAGIC, 8), 0, "bad magic");
	cr_assert_eq(rd32(p + 8), KEEL_TRACE_VERSION);
	cr_assert_eq(rd32(p + 12), sizeof(struct keel_trace_event));
	t->start_mono = rd64(p + 16);
	t->start_real = rd64(p + 24);
	while (off < len) {
		cr_assert_geq(len - off, 16, "truncated record at %zu", off);
		uint32_t kind = rd32(p + off), loop = rd32(p + off + 4);
		uint32_t count = rd32(p + off + 8), extra = rd32(p + off + 12);

		off += 16;
		if (kind == KEEL_TRACE_REC_EVENTS) {
			size_t body = (size_t)count * 32;

			cr_assert_geq(len - off, body,
				      "truncated EVENTS record at %zu", off);
			if (extra) {
				if (t->first_extra_rec == SIZE_MAX)
					t->first_extra_rec = t->nrec_events;
				t->events_with_extra++;
			}
			t->extra_sum += extra;
			if (t->nev + count > t->cap) {
				t->cap = (t->nev + count) * 2;
				t->ev = realloc(t->ev, t->cap * sizeof(*t->ev));
				cr_assert_not_null(t->ev);
			}
			for (uint32_t i = 0; i < count; i++) {
				struct tr_event *e = &t->ev[t->nev++];

				e->loop = loop;
				e->record = (uint32_t)t->nrec_events;
				memcpy(&e->ev, p + off + (size_t)i * 32, 32);
				switch (e->ev.type) {
				case KEEL_EV_SPAWN:
				case KEEL_EV_WAIT:
				case KEEL_EV_SUP_RESTART:
				case KEEL_EV_SUP_ESCALATE:
				case KEEL_EV_MARK:
					check_ref(t, &e->ev, e->ev.a, "a");
					break;
				case KEEL_EV_ABORT:
					check_ref(t, &e->ev, e->ev.a, "a");
					check_ref(t, &e->ev, e->ev.b, "b");
					break;
				case KEEL_EV_STALL:
					check_ref(t, &e->ev, e->ev.b, "b");
					break;
				}
				cr_assert(e->ev.type >= KEEL_EV_SPAWN &&
					      e->ev.type <= KEEL_EV_MARK,
					  "unknown event type %u", e->ev.type);
			}
			t->nrec_events++;
			off += body;
		} else if (kind == KEEL_TRACE_REC_STRING) {
			size_t padded = ((size_t)count + 7) & ~(size_t)7;

			cr_assert_geq(len - off, padded,
				      "truncated STRING record at %zu", off);
			cr_assert_neq(extra, 0, "string id 0");
			if (extra >= t->nstr) {
				uint32_t n = extra + 64;

				t->str = realloc(t->str, n * sizeof(*t->str));
				cr_assert_not_null(t->str);
				memset(t->str + t->nstr, 0,
				       (n - t->nstr) * sizeof(*t->str));
				t->nstr = n;
			}
			cr_assert_null(t->str[extra], "string id %u twice",
				       extra);
			t->str[extra] = strndup((const char *)p + off, count);
			cr_assert_eq(strlen(t->str[extra]), count,
				     "NUL inside string %u", extra);
			off += padded;
		} else if (kind == KEEL_TRACE_REC_LOOP) {
			cr_assert_eq(count, 0, "LOOP record with a body");
			cr_assert_lt(loop, 16);
			t->loop_tid[loop] = extra;
			t->nloops++;
		} else {
			cr_assert_fail("unknown record kind %u at %zu", kind,
				       off - 16);
		}
	}
	cr_assert_eq(off, len);
}

static void tr_free(struct tr *t)
{
	for (uint32_t i = 0; i < t->nstr; i++)
		free(t->str[i]);
	free(t->str);
	free(t->ev);
	memset(t, 0, sizeof(*t));
}

static unsigned char *slurp(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	unsigned char *buf = NULL;
	size_t cap = 0, n = 0;

	cr_assert_not_null(f, "fopen(%s): %s", path, strerror(errno));
	for (;;) {
		if (n == cap) {
			cap = cap ? cap * 2 : 65536;
			buf = realloc(buf, cap);
			cr_assert_not_null(buf);
		}
		size_t got = fread(buf + n, 1, cap - n, f);

		if (!got)
			break;
		n += got;
	}
	fclose(f);
	*len = n;
	return buf;
}

static void tr_load(const char *path, struct tr *t)
{
	size_t len;
	unsigned char *p = slurp(path, &len);

	tr_decode(p, len, t);
	free(p);
}

/* The slot that a SPAWN naming `name` gave; asserts there is exactly one. */
static uint32_t tr_slot_of(const struct tr *t, const char *name)
{
	uint32_t slot = NO_TASK;

	for (size_t i = 0; i < t->nev; i++) {
		const struct keel_trace_event *ev = &t->ev[i].ev;
		const char *s = tr_str(t, ev->a);

		if (ev->type != KEEL_EV_SPAWN || !s || strcmp(s, name))
			continue;
		cr_assert_eq(slot, NO_TASK, "%s spawned twice", name);
		slot = ev->task;
	}
	cr_assert_neq(slot, NO_TASK, "no SPAWN of %s in the trace", name);
	return slot;
}

/* Within each loop, timestamps never go back. */
static void tr_check_clock(const struct tr *t)
{
	uint64_t last[16] = {0};

	for (size_t i = 0; i < t->nev; i++) {
		const struct tr_event *e = &t->ev[i];

		cr_assert_lt(e->loop, 16);
		cr_assert_geq(e->ev.ts, last[e->loop],
			      "event %zu of loop %u goes back in time", i,
			      e->loop);
		last[e->loop] = e->ev.ts;
	}
}

static const char *const ev_names[] = {
    "?",	 "SPAWN",     "STEP_BEGIN", "STEP_END",	   "WAIT",
    "EXIT",	 "ABORT",     "OP_SUBMIT",  "OP_COMPLETE", "TIMER_FIRE",
    "LOOP_IDLE", "LOOP_WAKE", "MB_SEND",    "MB_RECV",	   "MB_FULL",
    "MB_DROP",	 "MSG_SEND",  "MSG_RECV",   "SUP_RESTART", "SUP_ESCALATE",
    "STALL",	 "INFLIGHT",
};

/*
 * One line per event of the task `name` (its slot's events from its SPAWN
 * to the slot's next SPAWN), with the fields that identify it; timing
 * fields are left out.
 */
static char *tr_render_task(const struct tr *t, const char *name)
{
	uint32_t slot = tr_slot_of(t, name);
	size_t cap = 8192, n = 0;
	char *out = malloc(cap);
	bool live = false;

	cr_assert_not_null(out);
	out[0] = '\0';
	for (size_t i = 0; i < t->nev; i++) {
		const struct keel_trace_event *ev = &t->ev[i].ev;
		char line[768];
		const char *s;

		if (ev->task != slot)
			continue;
		if (ev->type == KEEL_EV_SPAWN) {
			s = tr_str(t, ev->a);
			live = s && !strcmp(s, name);
		}
		if (!live)
			continue;
		const char *tn = ev->type < sizeof(ev_names) / sizeof(*ev_names)
				     ? ev_names[ev->type]
				     : "?";

		switch (ev->type) {
		case KEEL_EV_SPAWN:
			snprintf(line, sizeof(line), "%s %s spawner=%llu", tn,
				 tr_str(t, ev->a), (unsigned long long)ev->b);
			break;
		case KEEL_EV_STEP_END:
			snprintf(line, sizeof(line), "%s %llu", tn,
				 (unsigned long long)ev->a);
			break;
		case KEEL_EV_WAIT:
			s = tr_str(t, ev->a);
			snprintf(line, sizeof(line), "%s %s", tn,
				 s ? s : "(none)");
			break;
		case KEEL_EV_EXIT:
			snprintf(line, sizeof(line), "%s %lld", tn,
				 (long long)(int64_t)ev->a);
			break;
		case KEEL_EV_ABORT:
			s = tr_str(t, ev->a);
			snprintf(line, sizeof(line), "%s %s", tn,
				 s ? s : "(none)");
			break;
		case KEEL_EV_OP_SUBMIT:
			snprintf(line, sizeof(line), "%s op=%u", tn, ev->op);
			break;
		case KEEL_EV_OP_COMPLETE:
			snprintf(line, sizeof(line), "%s op=%u res=%lld", tn,
				 ev->op, (long long)(int64_t)ev->a);
			break;
		default:
			snprintf(line, sizeof(line), "%s", tn);
			break;
		}
		size_t l = strlen(line);

		if (n + l + 2 > cap) {
			cap = (n + l + 2) * 2;
			out = realloc(out, cap);
			cr_assert_not_null(out);
		}
		memcpy(out + n, line, l);
		n += l;
		out[n++] = '\n';
		out[n] = '\0';
	}
	return out;
}

/* Index of the first event of `slot` with `type` (from `from`), or -1. */
static long tr_find(const struct tr *t, size_t from, uint32_t slot,
		    uint8_t type, uint8_t op)
{
	for (size_t i = from; i < t->nev; i++) {
		const struct keel_trace_event *ev = &t->ev[i].ev;

		if (ev->task == slot && ev->type == type && ev->op == op)
			return (long)i;
	}
	return -1;
}

/* ---- the scripted run ---------------------------------------------------- */

static int g_sleep_line, g_recv_line;
static int g_join_status = 12345;
static int g_writer_sent = -1;

/* Sleeps 1 ms, receives what the writer sent, then panics. */
struct scripted {
	struct keel_task task;
	int fd;
	char buf[16];
};

static int scripted_step(struct keel_task *t);
static KEEL_TASK_TYPE(scripted_task, struct scripted, task, scripted_step);

static int scripted_step(struct keel_task *t)
{
	struct scripted *s = keel_container_of(t, struct scripted, task);

	KEEL_BEGIN(t);
	g_sleep_line = __LINE__ + 1;
	KEEL_AWAIT(t, keel_sleep(t, 1000000));
	g_recv_line = __LINE__ + 1;
	KEEL_AWAIT(t, keel_recv(t, s->fd, s->buf, sizeof(s->buf), 0));
	keel_panic("scripted panic after %d bytes", keel_res(t));
	KEEL_END(t);
}

/* Sends five bytes to the scripted task's socket, then exits. */
struct writer {
	struct keel_task task;
	int fd;
};

static int writer_step(struct keel_task *t);
static KEEL_TASK_TYPE(writer_task, struct writer, task, writer_step);

static int writer_step(struct keel_task *t)
{
	struct writer *w = keel_container_of(t, struct writer, task);

	KEEL_BEGIN(t);
	KEEL_AWAIT(t, keel_send(t, w->fd, "hello", 5, 0));
	g_writer_sent = keel_res(t);
	KEEL_END(t);
}

/* Joins the scripted task. */
struct joiner {
	struct keel_task task;
	struct keel_task *target;
};

static int joiner_step(struct keel_task *t);
static KEEL_TASK_TYPE(joiner_task, struct joiner, task, joiner_step);

static int joiner_step(struct keel_task *t)
{
	struct joiner *j = keel_container_of(t, struct joiner, task);

	KEEL_BEGIN(t);
	KEEL_AWAIT(t, keel_join(t, j->target));
	g_join_status = keel_res(t);
	KEEL_END(t);
}

enum end_order {
	DESTROY_THEN_STOP, /* the loop's destruction flushes its events */
	STOP_THEN_DESTROY, /* keel_trace_stop() on the loop's own thread */
};

/* Trace the scripted run to `path`. */
static void record_scripted(const char *path, enum end_order order)
{
	struct keel_loop *loop;
	struct scripted *s;
	struct writer *w;
	struct joiner *j;
	int sv[2];

	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	cr_assert_eq(keel_trace_start(path), 0);
	cr_assert(keel_trace_enabled());
	loop = kt_loop_new(NULL);
	s = kt_spawn(loop, &scripted_task,
		     KEEL_PRIO_NORMAL | KEEL_SPAWN_JOINABLE);
	s->fd = sv[0];
	w = kt_spawn(loop, &writer_task, KEEL_PRIO_NORMAL);
	w->fd = sv[1];
	j = kt_spawn(loop, &joiner_task, KEEL_PRIO_NORMAL);
	j->target = keel_task_of(&scripted_task, s);
	kt_loop_run(loop);
	cr_assert_eq(g_writer_sent, 5);
	cr_assert_eq(g_join_status, KEEL_ABORTED);
	if (order == STOP_THEN_DESTROY) {
		cr_assert_eq(keel_trace_stop(), 0, "nothing was dropped");
		keel_loop_destroy(loop);
	} else {
		keel_loop_destroy(loop);
		cr_assert_eq(keel_trace_stop(), 0, "nothing was dropped");
	}
	cr_assert_not(keel_trace_enabled());
	close(sv[0]);
	close(sv[1]);
}

/* The expected lines of tr_render_task() for the scripted task. */
static void scripted_expected(char *buf, size_t len)
{
	snprintf(buf, len,
		 "SPAWN scripted_task spawner=0\n"
		 "STEP_BEGIN\n"
		 "STEP_END 1\n"
		 "WAIT %s:%d keel_sleep(t, 1000000)\n"
		 /* A sleep is a user-space op: no OP_SUBMIT; its timer
		  * completes it with the opcode of a timeout. */
		 "OP_COMPLETE op=%u res=0\n"
		 "STEP_BEGIN\n"
		 "OP_SUBMIT op=%u\n"
		 "STEP_END 1\n"
		 "WAIT %s:%d keel_recv(t, s->fd, s->buf, sizeof(s->buf), 0)\n"
		 "OP_COMPLETE op=%u res=5\n"
		 "STEP_BEGIN\n"
		 /* The panic happens inside the step: ABORT, then the step
		  * ends aborted (a = 3), then the task exits. */
		 "ABORT scripted panic after 5 bytes\n"
		 "STEP_END 3\n"
		 "EXIT %d\n",
		 __FILE__, g_sleep_line, IORING_OP_TIMEOUT, IORING_OP_RECV,
		 __FILE__, g_recv_line, IORING_OP_RECV, KEEL_ABORTED);
}

/*
 * The scripted task's events, in order and exactly (events of the other
 * tasks and of the loop interleave; they are filtered out by slot). The
 * supervision events (SUP_RESTART, SUP_ESCALATE) belong to the supervision
 * issue and are not emitted yet, so none is expected here.
 */
Test(trace, scripted_run_decodes_to_the_expected_event_sequence, .timeout = 10)
{
	char path[300], want[2048];
	struct tr t;

	kt_tmpdir_make(g_dir, sizeof(g_dir));
	snprintf(path, sizeof(path), "%s/run.ktrace", g_dir);
	uint64_t real0 = (uint64_t)time(NULL);

	record_scripted(path, DESTROY_THEN_STOP);
	tr_load(path, &t);

	/* Header: the realtime start is now (give or take a minute). */
	cr_assert_geq(t.start_real / 1000000000u + 60, real0);
	cr_assert_leq(t.start_real / 1000000000u, real0 + 60);
	/* One loop, named by the thread that created it (this one). */
	cr_assert_eq(t.nloops, 1);
	cr_assert_eq(t.loop_tid[0], (uint32_t)syscall(SYS_gettid));
	cr_assert_eq(t.extra_sum, 0, "no drops");
	tr_check_clock(&t);

	char *got = tr_render_task(&t, "scripted_task");

	scripted_expected(want, sizeof(want));
	cr_assert_str_eq(
	    got, want, "scripted task's events:\n%s\nexpected:\n%s", got, want);
	free(got);

	/* The fields left out above. */
	uint32_t slot = tr_slot_of(&t, "scripted_task");
	long tmo = tr_find(&t, 0, slot, KEEL_EV_OP_COMPLETE, IORING_OP_TIMEOUT);
	long sub = tr_find(&t, 0, slot, KEEL_EV_OP_SUBMIT, IORING_OP_RECV);
	long ab = tr_find(&t, 0, slot, KEEL_EV_ABORT, 0);

	cr_assert_gt(tmo, 0);
	/* The sleep's latency is recorded (on the trace's own clock; its
	 * value is a timing, which a test does not assert: it read 0.83 ms
	 * for this 1 ms sleep once on a loaded CI machine)... */
	cr_assert_gt(t.ev[tmo].ev.b, 0, "sleep latency %llu ns",
		     (unsigned long long)t.ev[tmo].ev.b);
	/* ...and its timer fired just before, on the loop (no task). */
	cr_assert_eq(t.ev[tmo - 1].ev.type, KEEL_EV_TIMER_FIRE,
		     "event before the sleep's completion: type %u",
		     t.ev[tmo - 1].ev.type);
	cr_assert_eq(t.ev[tmo - 1].ev.task, NO_TASK);
	cr_assert_gt(sub, 0);
	cr_assert_lt(t.ev[sub].ev.a, 1u << 20, "op id %llu",
		     (unsigned long long)t.ev[sub].ev.a);
	/* The abort's site is a site of this file. */
	cr_assert_gt(ab, 0);
	const char *site = tr_str(&t, t.ev[ab].ev.b);

	cr_assert_not_null(site, "ABORT without a site");
	cr_assert_eq(strncmp(site, __FILE__ ":", strlen(__FILE__) + 1), 0,
		     "abort site: %s", site);

	/* The others: the writer spawned by nobody; the joiner exits 0 after
	 * the scripted task's EXIT. */
	uint32_t js = tr_slot_of(&t, "joiner_task");
	long sx = tr_find(&t, 0, slot, KEEL_EV_EXIT, 0);
	long jx = tr_find(&t, 0, js, KEEL_EV_EXIT, 0);

	(void)tr_slot_of(&t, "writer_task");
	cr_assert_gt(jx, sx, "joiner exited before the task it joined");
	cr_assert_eq(t.ev[jx].ev.a, 0);
	tr_free(&t);
}

/*
 * keel_trace_stop() on the thread that ran the loop, after keel_loop_run()
 * returned and before keel_loop_destroy(): the loop's buffered events are
 * in the file (this is how a single-loop program ends its trace).
 */
Test(trace, stop_after_run_keeps_the_loops_buffered_events, .timeout = 10)
{
	char path[300], want[2048];
	struct tr t;

	kt_tmpdir_make(g_dir, sizeof(g_dir));
	snprintf(path, sizeof(path), "%s/run.ktrace", g_dir);
	record_scripted(path, STOP_THEN_DESTROY);
	tr_load(path, &t);
	cr_assert_gt(t.nev, 0, "the trace holds no event at all");
	char *got = tr_render_task(&t, "scripted_task");

	scripted_expected(want, sizeof(want));
	cr_assert_str_eq(
	    got, want, "scripted task's events:\n%s\nexpected:\n%s", got, want);
	free(got);
	tr_free(&t);
}

/* Yields `n` times; with `stop_at`, stops the trace after that many. */
struct yielder {
	struct keel_task task;
	int n;
	int stop_at;
	int i;
};

/* What keel_trace_stop() returned inside a yielder (its frame is freed at
 * exit, so the result lives here). */
static int64_t g_stopped = -1;

static int yielder_step(struct keel_task *t);
static KEEL_TASK_TYPE(yielder_task, struct yielder, task, yielder_step);

static int g_yield_line;

static int yielder_step(struct keel_task *t)
{
	struct yielder *y = keel_container_of(t, struct yielder, task);

	KEEL_BEGIN(t);
	for (y->i = 0; y->i < y->n; y->i++) {
		if (y->stop_at && y->i == y->stop_at)
			g_stopped = keel_trace_stop();
		g_yield_line = __LINE__ + 1;
		KEEL_YIELD(t);
	}
	KEEL_END(t);
}

/* ---- keel_trace_mark --------------------------------------------------- */

struct marker {
	struct keel_task task;
};

static int marker_step(struct keel_task *t)
{
	KEEL_BEGIN(t);
	keel_trace_mark("state: up", -7);
	keel_trace_mark(NULL, 1); /* nothing */
	KEEL_END(t);
}
static KEEL_TASK_TYPE(marker_task, struct marker, task, marker_step);

/* A mark from a task of a traced loop: its name, its argument and the
 * task; one from a thread that runs no loop records nothing. */
Test(trace, mark_records_name_argument_and_task, .timeout = 10)
{
	char path[300];
	struct keel_loop *loop;
	struct tr t;
	int marks = 0;

	kt_tmpdir_make(g_dir, sizeof(g_dir));
	snprintf(path, sizeof(path), "%s/mark.ktrace", g_dir);
	cr_assert_eq(keel_trace_start(path), 0);
	keel_trace_mark("off any loop", 1);
	loop = kt_loop_new(NULL);
	kt_spawn(loop, &marker_task, KEEL_PRIO_NORMAL);
	kt_loop_run(loop);
	keel_loop_destroy(loop);
	keel_trace_stop();
	tr_load(path, &t);
	for (size_t i = 0; i < t.nev; i++) {
		const struct keel_trace_event *ev = &t.ev[i].ev;

		if (ev->type != KEEL_EV_MARK)
			continue;
		marks++;
		cr_assert_str_eq(tr_str(&t, ev->a), "state: up");
		cr_assert_eq((int64_t)ev->b, -7);
		cr_assert_eq(ev->task, tr_slot_of(&t, "marker_task"));
	}
	cr_assert_eq(marks, 1);
	tr_free(&t);
}

/* From inside a task: the loop's events up to the call are in the file. */
Test(trace, stop_from_a_task_flushes_its_loop, .timeout = 10)
{
	char path[300];
	struct keel_loop *loop;
	struct yielder *y;
	struct tr t;

	kt_tmpdir_make(g_dir, sizeof(g_dir));
	snprintf(path, sizeof(path), "%s/run.ktrace", g_dir);
	cr_assert_eq(keel_trace_start(path), 0);
	cr_assert_eq(keel_trace_start(path), -EALREADY);
	loop = kt_loop_new(NULL);
	y = kt_spawn(loop, &yielder_task, KEEL_PRIO_NORMAL);
	y->n = 10;
	y->stop_at = 3;
	kt_loop_run(loop);
	cr_assert_eq(g_stopped, 0);
	cr_assert_not(keel_trace_enabled());
	keel_loop_destroy(loop);
	tr_load(path, &t);

	char *got = tr_render_task(&t, "yielder_task");
	char want[1024];
	int n = snprintf(want, sizeof(want), "SPAWN yielder_task spawner=0\n");

	for (int i = 0; i < 3; i++)
		n += snprintf(want + n, sizeof(want) - (size_t)n,
			      "STEP_BEGIN\nSTEP_END 1\nWAIT %s:%d "
			      "keel_yield(t)\n",
			      __FILE__, g_yield_line);
	snprintf(want + n, sizeof(want) - (size_t)n, "STEP_BEGIN\n");
	cr_assert_str_eq(got, want, "yielder's events:\n%s\nexpected:\n%s", got,
			 want);
	free(got);
	tr_free(&t);
}

/* ---- keel-trace on a real trace ---------------------------------------- */

static const char *tool_path(char *buf, size_t len)
{
	const char *build = getenv("BUILD");

	snprintf(buf, len, "%s/tools/keel-trace",
		 build && *build ? build : "build");
	return buf;
}

static const char validate_py[] =
    "import json, sys\n"
    "from collections import defaultdict\n"
    "d = json.load(open(sys.argv[1], encoding='utf-8'))\n"
    "errs = []\n"
    "evs = d.get('traceEvents') if isinstance(d, dict) else None\n"
    "if not isinstance(evs, list) or not evs:\n"
    "    print('no traceEvents list'); sys.exit(1)\n"
    "life = defaultdict(list)\n"
    "named, used = {}, set()\n"
    "for i, e in enumerate(evs):\n"
    "    w = 'event %d %s' % (i, json.dumps(e)[:120])\n"
    "    if any(k not in e for k in ('ph', 'ts', 'pid', 'tid')):\n"
    "        errs.append(w + ': lacks one of ph/ts/pid/tid'); continue\n"
    "    if not isinstance(e['ts'], (int, float)) or e['ts'] < 0:\n"
    "        errs.append(w + ': bad ts')\n"
    "    ph = e['ph']\n"
    "    if ph == 'M':\n"
    "        if e.get('name') == 'thread_name':\n"
    "            named[e['tid']] = e.get('args', {}).get('name', '')\n"
    "        continue\n"
    "    used.add(e['tid'])\n"
    "    if ph == 'X':\n"
    "        if not isinstance(e.get('dur'), (int, float)) or e['dur'] < 0:\n"
    "            errs.append(w + ': X needs dur >= 0')\n"
    "    elif ph in ('b', 'e'):\n"
    "        if 'id' not in e or 'cat' not in e:\n"
    "            errs.append(w + ': b/e needs cat and id')\n"
    "        life[(e.get('cat'), e.get('id'))].append("
    "(ph, e['ts'], e.get('name')))\n"
    "for k, v in life.items():\n"
    "    if sorted(p for p, _, _ in v) != ['b', 'e']:\n"
    "        errs.append('async %s: not one b and one e: %s' % (k, v))\n"
    "    elif len({n for _, _, n in v}) != 1:\n"
    "        errs.append('async %s: b and e names differ' % (k,))\n"
    "    elif dict((p, t) for p, t, _ in v)['e'] < "
    "dict((p, t) for p, t, _ in v)['b']:\n"
    "        errs.append('async %s: ends before it begins' % (k,))\n"
    "for tid in sorted(used):\n"
    "    if not named.get(tid, '').startswith('loop %d' % tid):\n"
    "        errs.append('tid %d: no thread_name \"loop %d\"' % (tid, tid))\n"
    "names = {n for (p, _, n) in sum(life.values(), []) if p == 'b'}\n"
    "for n in ('scripted_task', 'writer_task', 'joiner_task'):\n"
    "    if n not in names:\n"
    "        errs.append('no lifetime of ' + n)\n"
    "steps = [e for e in evs if e['ph'] == 'X' and "
    "e.get('name') == 'scripted_task']\n"
    "if len(steps) != 3:\n"
    "    errs.append('%d steps of scripted_task, 3 expected' % len(steps))\n"
    "elif steps[-1].get('args', {}).get('then') != 'aborted':\n"
    "    errs.append('last scripted_task step: then != aborted')\n"
    "if not any(e['ph'] == 'i' and e.get('name') == "
    "'abort: scripted panic after 5 bytes' for e in evs):\n"
    "    errs.append('no abort instant')\n"
    "for e in errs[:20]:\n"
    "    print(e)\n"
    "sys.exit(1 if errs else 0)\n";

static bool have_python3(void)
{
	return system("command -v python3 >/dev/null 2>&1") == 0;
}

/* Run a shell command; its exit status (-1 if it did not exit). */
static int run(const char *cmd)
{
	int st = system(cmd);

	return st != -1 && WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

Test(trace, keel_trace_chrome_json_of_a_real_trace_follows_the_rules,
     .timeout = 30)
{
	char tool[256], path[300], json[300], py[300], cmd[1400];

	tool_path(tool, sizeof(tool));
	if (access(tool, X_OK))
		cr_skip_test("%s is not built", tool);
	if (!have_python3())
		cr_skip_test("python3 is not installed");
	kt_tmpdir_make(g_dir, sizeof(g_dir));
	snprintf(path, sizeof(path), "%s/run.ktrace", g_dir);
	snprintf(json, sizeof(json), "%s/run.json", g_dir);
	snprintf(py, sizeof(py), "%s/validate.py", g_dir);
	record_scripted(path, DESTROY_THEN_STOP);

	FILE *f = fopen(py, "w");

	cr_assert_not_null(f);
	fputs(validate_py, f);
	cr_assert_eq(fclose(f), 0);
	snprintf(cmd, sizeof(cmd), "'%s' chrome '%s' -o '%s'", tool, path,
		 json);
	int st = run(cmd);

	cr_assert_eq(st, 0, "%s: exit %d", cmd, st);
	snprintf(cmd, sizeof(cmd), "python3 '%s' '%s' 2>&1", py, json);
	FILE *p = popen(cmd, "r");
	char out[4096];
	size_t n;

	cr_assert_not_null(p);
	n = fread(out, 1, sizeof(out) - 1, p);
	out[n] = '\0';
	st = pclose(p);
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0,
		  "the JSON breaks the rules:\n%s", out);
}

Test(trace, keel_trace_rejects_a_truncated_real_trace, .timeout = 30)
{
	char tool[256], path[300], cut[300], err[300], out[300];
	char cmd[1400];

	tool_path(tool, sizeof(tool));
	if (access(tool, X_OK))
		cr_skip_test("%s is not built", tool);
	kt_tmpdir_make(g_dir, sizeof(g_dir));
	snprintf(path, sizeof(path), "%s/run.ktrace", g_dir);
	snprintf(cut, sizeof(cut), "%s/cut.ktrace", g_dir);
	snprintf(err, sizeof(err), "%s/stderr", g_dir);
	snprintf(out, sizeof(out), "%s/stdout", g_dir);
	record_scripted(path, DESTROY_THEN_STOP);

	/* Cut the last record in the middle. */
	size_t len;
	unsigned char *data = slurp(path, &len);
	FILE *f = fopen(cut, "wb");

	cr_assert_gt(len, 32 + 16 + 7);
	cr_assert_not_null(f);
	cr_assert_eq(fwrite(data, 1, len - 7, f), len - 7);
	cr_assert_eq(fclose(f), 0);
	free(data);

	snprintf(cmd, sizeof(cmd), "'%s' chrome '%s' >'%s' 2>'%s'", tool, cut,
		 out, err);
	int st = run(cmd);
	size_t elen, olen;
	unsigned char *e = slurp(err, &elen);
	unsigned char *o = slurp(out, &olen);

	e = realloc(e, elen + 1);
	e[elen] = '\0';
	cr_assert_eq(st, 1, "exit status %d, stderr: %s", st, (char *)e);
	cr_assert_eq(strncmp((char *)e, "keel-trace:", 11), 0, "stderr: %s",
		     (char *)e);
	cr_assert(elen > 0 && e[elen - 1] == '\n' && !memchr(e, '\n', elen - 1),
		  "not one line on stderr: %s", (char *)e);
	cr_assert_eq(olen, 0, "output written for a bad trace");
	free(e);
	free(o);
}

/* ---- drops -------------------------------------------------------------- */

/* Reads a FIFO to its end, into memory. */
struct drain {
	int fd;
	unsigned char *buf;
	size_t len, cap;
	size_t total; /* read so far (atomic) */
	int err;
	pthread_t th;
};

static void *drain_main(void *arg)
{
	struct drain *d = arg;

	for (;;) {
		if (d->cap - d->len < 65536) {
			size_t cap = d->cap ? d->cap * 2 : 1 << 20;
			unsigned char *b = realloc(d->buf, cap);

			if (!b) {
				d->err = ENOMEM;
				break;
			}
			d->buf = b;
			d->cap = cap;
		}
		ssize_t n = read(d->fd, d->buf + d->len, d->cap - d->len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			d->err = errno;
			break;
		}
		if (n == 0)
			break;
		d->len += (size_t)n;
		__atomic_store_n(&d->total, d->len, __ATOMIC_RELEASE);
	}
	return NULL;
}

#define TRACE_BUF_EVENTS 4096 /* events per loop buffer (core/trace.c) */
#define TRACE_POOL	 8    /* buffers per loop */
#define YIELDS		 200000

/*
 * Trace into a FIFO that nobody reads yet: the writer blocks on the first
 * buffer, the loop fills its 8 buffers and then drops. Returns the FIFO's
 * read end; the loop (with a yielder that ran YIELDS times) in *loopp.
 */
static int fall_behind(const char *dir, struct keel_loop **loopp)
{
	char fifo[300];
	struct keel_loop *loop;
	struct yielder *y;
	int rfd;

	snprintf(fifo, sizeof(fifo), "%s/trace.fifo", g_dir);
	cr_assert_eq(mkfifo(fifo, 0600), 0, "mkfifo: %s", strerror(errno));
	/* A reader first, so that the tracer's O_WRONLY open does not block. */
	rfd = open(fifo, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
	cr_assert_geq(rfd, 0, "open fifo: %s", strerror(errno));
	/* Small, so that the writer blocks well within the first buffer. */
	(void)fcntl(rfd, F_SETPIPE_SZ, 4096);
	cr_assert_eq(keel_trace_start(fifo), 0);
	loop = kt_loop_new(NULL);
	y = kt_spawn(loop, &yielder_task, KEEL_PRIO_NORMAL);
	y->n = YIELDS;
	kt_loop_run(loop);
	*loopp = loop;
	return rfd;
}

static void drain_start(struct drain *d, int rfd)
{
	int fl = fcntl(rfd, F_GETFL);

	memset(d, 0, sizeof(*d));
	d->fd = rfd;
	cr_assert_eq(fcntl(rfd, F_SETFL, fl & ~O_NONBLOCK), 0);
	cr_assert_eq(pthread_create(&d->th, NULL, drain_main, d), 0);
}

static void drain_finish(struct drain *d)
{
	pthread_join(d->th, NULL);
	close(d->fd);
	cr_assert_eq(d->err, 0, "reading the FIFO: %s", strerror(d->err));
}

/*
 * The drops are counted, returned by keel_trace_stop(), and carried by the
 * first EVENTS record written after them (the loop's next buffer).
 */
Test(trace, drops_when_the_writer_falls_behind_are_counted, .timeout = 30)
{
	const size_t full = 16 + (size_t)TRACE_BUF_EVENTS * 32;
	struct keel_loop *loop;
	struct drain d;
	struct tr t;
	int rfd;

	kt_tmpdir_make(g_dir, sizeof(g_dir));
	rfd = fall_behind(g_dir, &loop);

	/* Now read: the writer catches up and returns the buffers. */
	drain_start(&d, rfd);
	uint64_t until = kt_now_ns() + KT_MS(8000);

	while (__atomic_load_n(&d.total, __ATOMIC_ACQUIRE) <
		   32 + TRACE_POOL * full &&
	       kt_now_ns() < until)
		usleep(1000);
	cr_assert_geq(__atomic_load_n(&d.total, __ATOMIC_ACQUIRE),
		      32 + TRACE_POOL * full, "the writer never caught up");
	usleep(100 * 1000); /* for the last buffer to go back to the pool */

	/* Some more events, in the buffer the loop takes at its next turn;
	 * its destruction hands that buffer, with the drop count, over. */
	struct yielder *y = kt_spawn(loop, &yielder_task, KEEL_PRIO_NORMAL);

	y->n = 10;
	kt_loop_run(loop);
	keel_loop_destroy(loop);
	int64_t dropped = keel_trace_stop();

	drain_finish(&d);
	tr_decode(d.buf, d.len, &t);
	free(d.buf);

	cr_log_info("%lld events dropped, %zu recorded", (long long)dropped,
		    t.nev);
	cr_assert_gt(dropped, 0, "keel_trace_stop() reports no drop");
	/* Every yield is three events (STEP_BEGIN, STEP_END, WAIT); only the
	 * pool's buffers were recorded while the writer was stuck. */
	cr_assert_geq(dropped,
		      3 * (int64_t)YIELDS - TRACE_POOL * TRACE_BUF_EVENTS,
		      "only %lld dropped", (long long)dropped);
	cr_assert_eq(t.extra_sum, (uint64_t)dropped,
		     "EVENTS records carry %llu drops, stop returned %lld",
		     (unsigned long long)t.extra_sum, (long long)dropped);
	/* The eight full buffers first, then the one that carries the count. */
	cr_assert_eq(t.events_with_extra, 1);
	cr_assert_eq(t.first_extra_rec, TRACE_POOL);
	cr_assert_gt(t.nev, TRACE_POOL * TRACE_BUF_EVENTS);
	/* Tracing went on after the drops: the second yielder's ten yields
	 * and its exit are in the buffer after them (its SPAWN, before the
	 * loop's next turn took that buffer, was dropped). */
	int waits = 0, exits = 0;

	for (size_t i = 0; i < t.nev; i++) {
		if (t.ev[i].record < TRACE_POOL)
			continue;
		waits += t.ev[i].ev.type == KEEL_EV_WAIT;
		exits += t.ev[i].ev.type == KEEL_EV_EXIT;
	}
	cr_assert_eq(waits, 10, "%d WAIT events after the drops", waits);
	cr_assert_eq(exits, 1, "%d EXIT events after the drops", exits);
	tr_check_clock(&t);
	tr_free(&t);
}

/*
 * A loop that is destroyed while it is dropping (no buffer came back yet):
 * its drops are still counted, returned by keel_trace_stop() and written.
 */
Test(trace, drops_of_a_loop_destroyed_while_dropping_are_counted, .timeout = 30)
{
	struct keel_loop *loop;
	struct drain d;
	struct tr t;
	int rfd;

	kt_tmpdir_make(g_dir, sizeof(g_dir));
	rfd = fall_behind(g_dir, &loop);
	keel_loop_destroy(loop);
	drain_start(&d, rfd);
	int64_t dropped = keel_trace_stop();

	drain_finish(&d);
	tr_decode(d.buf, d.len, &t);
	free(d.buf);
	cr_assert_eq(t.nev, TRACE_POOL * TRACE_BUF_EVENTS,
		     "%zu events recorded", t.nev);
	cr_assert_gt(dropped, 0, "keel_trace_stop() reports no drop");
	cr_assert_eq(t.extra_sum, (uint64_t)dropped,
		     "EVENTS records carry %llu drops, stop returned %lld",
		     (unsigned long long)t.extra_sum, (long long)dropped);
	tr_free(&t);
}

/* ---- metrics --------------------------------------------------------------
 */

/* Loop 0: nops and a sleep; loop 1: yields and a recv. */
struct busy {
	struct keel_task task;
	int kind;
	int fd;
	int i;
	char buf[8];
};

static int busy_step(struct keel_task *t);
static KEEL_TASK_TYPE(busy_task, struct busy, task, busy_step);

static int busy_step(struct keel_task *t)
{
	struct busy *b = keel_container_of(t, struct busy, task);

	KEEL_BEGIN(t);
	if (b->kind == 0) {
		for (b->i = 0; b->i < 5; b->i++)
			KEEL_AWAIT(t, keel_nop(t));
		KEEL_AWAIT(t, keel_sleep(t, 1000000));
	} else {
		for (b->i = 0; b->i < 7; b->i++)
			KEEL_YIELD(t);
		KEEL_AWAIT(t, keel_recv(t, b->fd, b->buf, sizeof(b->buf), 0));
	}
	KEEL_END(t);
}

struct family {
	char name[128];
	char type[256];
	int help, typ, samples;
	bool loop_seen[2];
	char ops[2][32]; /* an op-labelled family's series (loops merged) */
};

struct hist_state {
	double last_le;
	double last_v;
	bool inf;
	double inf_v;
	int buckets;
};

static bool ends_with(const char *s, const char *suffix)
{
	size_t a = strlen(s), b = strlen(suffix);

	return a >= b && !strcmp(s + a - b, suffix);
}

/* Parse `k="v"` pairs into loop, op and le (empty when absent). */
static void parse_labels(const char *line, const char *p, const char *end,
			 char *loop, char *op, char *le)
{
	loop[0] = op[0] = le[0] = '\0';
	while (p < end) {
		const char *eq = memchr(p, '=', (size_t)(end - p));

		cr_assert_not_null(eq, "bad labels: %s", line);
		cr_assert_eq(eq[1], '"', "unquoted label value: %s", line);
		const char *q = memchr(eq + 2, '"', (size_t)(end - eq - 2));

		cr_assert_not_null(q, "unterminated label value: %s", line);
		size_t kl = (size_t)(eq - p), vl = (size_t)(q - eq - 2);
		char *dst = NULL;

		if (kl == 4 && !memcmp(p, "loop", 4))
			dst = loop;
		else if (kl == 2 && !memcmp(p, "le", 2))
			dst = le;
		else if (kl == 2 && !memcmp(p, "op", 2))
			dst = op;
		cr_assert_not_null(dst, "label other than loop/op/le: %s",
				   line);
		cr_assert_eq(dst[0], '\0', "label twice: %s", line);
		cr_assert_lt(vl, 32);
		memcpy(dst, eq + 2, vl);
		dst[vl] = '\0';
		p = q + 1;
		if (p < end) {
			cr_assert_eq(*p, ',', "labels: %s", line);
			p++;
		}
	}
}

static double parse_value(const char *s, const char *line)
{
	char *end;
	double v;

	if (!strcmp(s, "+Inf"))
		return INFINITY;
	errno = 0;
	v = strtod(s, &end);
	cr_assert(end != s && *end == '\0' && !errno, "bad value in: %s", line);
	return v;
}

/* The Prometheus text format 0.0.4, as keel renders it for two loops. */
static void check_prometheus(char *text)
{
	struct family fam[64];
	struct hist_state hs[64][2];
	int nfam = 0, cur = -1;

	memset(fam, 0, sizeof(fam));
	memset(hs, 0, sizeof(hs));
	cr_assert(ends_with(text, "\n"), "no final newline");
	for (char *save, *line = strtok_r(text, "\n", &save); line;
	     line = strtok_r(NULL, "\n", &save)) {
		char name[128], rest[256];

		if (line[0] == '#') {
			char kw[8];
			int f;

			cr_assert_eq(sscanf(line, "# %7s %127s %255[^\n]", kw,
					    name, rest),
				     3, "bad comment line: %s", line);
			for (f = 0; f < nfam && strcmp(fam[f].name, name); f++)
				;
			if (f == nfam) {
				cr_assert_lt(nfam, 64);
				snprintf(fam[nfam++].name, sizeof(name), "%s",
					 name);
			}
			cr_assert_eq(fam[f].samples, 0,
				     "%s after the samples of %s", kw, name);
			if (!strcmp(kw, "HELP")) {
				cr_assert_eq(fam[f].help++, 0,
					     "two HELP lines for %s", name);
			} else {
				cr_assert_str_eq(kw, "TYPE", "line: %s", line);
				cr_assert_eq(fam[f].typ++, 0,
					     "two TYPE lines for %s", name);
				cr_assert(!strcmp(rest, "counter") ||
					      !strcmp(rest, "gauge") ||
					      !strcmp(rest, "histogram"),
					  "type %s of %s", rest, name);
				snprintf(fam[f].type, sizeof(fam[f].type), "%s",
					 rest);
				cr_assert(strcmp(rest, "counter") ||
					      ends_with(name, "_total"),
					  "counter %s does not end in _total",
					  name);
				cr_assert(!strcmp(rest, "counter") ||
					      !ends_with(name, "_total"),
					  "%s %s ends in _total", rest, name);
			}
			cur = f;
			continue;
		}
		/* A sample: name{labels} value */
		const char *brace = strchr(line, '{');
		const char *close = brace ? strchr(brace, '}') : NULL;

		cr_assert(brace && close && close[1] == ' ' && close[2],
			  "bad sample line: %s", line);
		size_t nl = (size_t)(brace - line);

		cr_assert(nl > 0 && nl < sizeof(name));
		memcpy(name, line, nl);
		name[nl] = '\0';
		for (size_t i = 0; i < nl; i++)
			cr_assert(name[i] == '_' || name[i] == ':' ||
				      (name[i] >= 'a' && name[i] <= 'z') ||
				      (name[i] >= 'A' && name[i] <= 'Z') ||
				      (i && name[i] >= '0' && name[i] <= '9'),
				  "bad metric name: %s", line);
		cr_assert_geq(cur, 0, "sample before any family: %s", line);
		struct family *f = &fam[cur];
		const char *suffix = "";

		if (strcmp(name, f->name)) {
			size_t fl = strlen(f->name);

			cr_assert_str_eq(f->type, "histogram",
					 "sample %s under family %s", name,
					 f->name);
			cr_assert(!strncmp(name, f->name, fl),
				  "sample %s under family %s", name, f->name);
			suffix = name + fl;
			cr_assert(!strcmp(suffix, "_bucket") ||
				      !strcmp(suffix, "_sum") ||
				      !strcmp(suffix, "_count"),
				  "sample %s under family %s", name, f->name);
		} else {
			cr_assert_str_neq(f->type, "histogram",
					  "histogram sample without suffix: %s",
					  line);
		}
		cr_assert(f->help == 1 && f->typ == 1,
			  "sample of %s before its HELP and TYPE", f->name);
		f->samples++;

		char loop[32], op[32], le[32];
		int li;

		parse_labels(line, brace + 1, close, loop, op, le);
		if (op[0]) {
			/* keel_op_duration_seconds: a series per opcode, the
			 * loops merged; here loop 0's nops and loop 1's recv.
			 */
			cr_assert_eq(loop[0], '\0', "op and loop: %s", line);
			for (li = 0;
			     li < 2 && f->ops[li][0] && strcmp(f->ops[li], op);
			     li++)
				;
			cr_assert_lt(li, 2, "a third op: %s", line);
			snprintf(f->ops[li], sizeof(f->ops[li]), "%s", op);
		} else {
			cr_assert(!strcmp(loop, "0") || !strcmp(loop, "1"),
				  "loop label: %s", line);
			li = loop[0] - '0';
		}
		bool bucket = !strcmp(suffix, "_bucket");

		cr_assert_eq(le[0] != '\0', bucket, "le label: %s", line);
		double v = parse_value(close + 2, line);

		cr_assert_geq(v, 0, "negative value: %s", line);
		f->loop_seen[li] = true;
		if (strcmp(f->type, "histogram"))
			continue;
		struct hist_state *h = &hs[cur][li];

		if (bucket) {
			double lev = parse_value(le, line);

			cr_assert_not(h->inf, "bucket after +Inf: %s", line);
			cr_assert(!h->buckets || lev > h->last_le,
				  "le not increasing: %s", line);
			cr_assert(!h->buckets || v >= h->last_v,
				  "buckets not cumulative: %s", line);
			h->last_le = lev;
			h->last_v = v;
			h->buckets++;
			if (isinf(lev)) {
				cr_assert_str_eq(le, "+Inf");
				h->inf = true;
				h->inf_v = v;
			}
		} else if (!strcmp(suffix, "_count")) {
			cr_assert(h->inf, "_count before the +Inf bucket: %s",
				  line);
			cr_assert_eq(v, h->inf_v,
				     "+Inf bucket %g != _count %g (loop %d)",
				     h->inf_v, v, li);
		}
	}
	cr_assert_gt(nfam, 10);
	for (int i = 0; i < nfam; i++) {
		cr_assert(fam[i].help == 1 && fam[i].typ == 1,
			  "%s: %d HELP, %d TYPE", fam[i].name, fam[i].help,
			  fam[i].typ);
		cr_assert(fam[i].loop_seen[0] && fam[i].loop_seen[1],
			  "%s lacks a loop's sample", fam[i].name);
		if (strcmp(fam[i].type, "histogram")) {
			cr_assert_eq(fam[i].samples, 2, "%s: %d samples",
				     fam[i].name, fam[i].samples);
			continue;
		}
		for (int l = 0; l < 2; l++)
			cr_assert(hs[i][l].inf, "%s loop %d: no +Inf bucket",
				  fam[i].name, l);
	}
}

/* The value of `name{loop="i"}` in the text. */
static unsigned long long sample(const char *text, const char *name, int i)
{
	char key[160];
	const char *p;

	snprintf(key, sizeof(key), "\n%s{loop=\"%d\"} ", name, i);
	p = strstr(text, key);
	cr_assert_not_null(p, "no %s for loop %d", name, i);
	return strtoull(p + strlen(key), NULL, 10);
}

Test(trace, prometheus_text_of_two_loops_passes_the_format_check, .timeout = 10)
{
	struct keel_loop *loops[2];
	int sv[2];

	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	cr_assert_eq(write(sv[1], "abc", 3), 3);
	for (int i = 0; i < 2; i++) {
		struct busy *b;

		loops[i] = kt_loop_new(NULL);
		b = kt_spawn(loops[i], &busy_task, KEEL_PRIO_NORMAL);
		b->kind = i;
		b->fd = sv[0];
		kt_loop_run(loops[i]);
	}

	size_t n = keel_metrics_render(loops, 2, NULL, 0);

	cr_assert_gt(n, 0);
	char *full = malloc(n + 1);
	char *copy = malloc(n + 1);

	cr_assert(full && copy);
	cr_assert_eq(keel_metrics_render(loops, 2, full, n + 1), n);
	cr_assert_eq(strlen(full), n);

	/* Cut: the full length is returned, the text is a prefix. */
	char small[100];

	memset(small, 'x', sizeof(small));
	cr_assert_eq(keel_metrics_render(loops, 2, small, sizeof(small)), n);
	cr_assert_eq(strlen(small), sizeof(small) - 1);
	cr_assert_eq(memcmp(small, full, sizeof(small) - 1), 0);
	memset(copy, 'x', n + 1);
	cr_assert_eq(keel_metrics_render(loops, 2, copy, n), n);
	cr_assert_eq(strlen(copy), n - 1, "one byte short: %zu", strlen(copy));
	cr_assert_eq(memcmp(copy, full, n - 1), 0);

	/* The counters agree with keel_loop_stats(). */
	for (int i = 0; i < 2; i++) {
		struct keel_loop_stats st = kt_stats(loops[i]);

		cr_assert_eq(sample(full, "keel_task_steps_total", i),
			     st.steps);
		cr_assert_eq(sample(full, "keel_loop_turns_total", i),
			     st.turns);
		cr_assert_eq(sample(full, "keel_tasks_spawned_total", i), 1);
		cr_assert_eq(sample(full, "keel_tasks_exited_total", i), 1);
		cr_assert_eq(sample(full, "keel_ring_cqes_total", i), st.cqes);
		cr_assert_gt(st.steps, 6);
	}
	cr_assert_eq(sample(full, "keel_timers_fired_total", 0), 1);

	memcpy(copy, full, n + 1);
	check_prometheus(copy);
	free(full);
	free(copy);
	for (int i = 0; i < 2; i++)
		keel_loop_destroy(loops[i]);
	close(sv[0]);
	close(sv[1]);
}

/* ---- task dump ---------------------------------------------------------- */

static int g_dump_recv_line;

static int g_dump_got = -1000;

struct receiver {
	struct keel_task task;
	int fd;
	char buf[8];
};

static int receiver_step(struct keel_task *t);
static KEEL_TASK_TYPE(receiver_task, struct receiver, task, receiver_step);

static int receiver_step(struct keel_task *t)
{
	struct receiver *r = keel_container_of(t, struct receiver, task);

	KEEL_BEGIN(t);
	g_dump_recv_line = __LINE__ + 1;
	KEEL_AWAIT(t, keel_recv(t, r->fd, r->buf, sizeof(r->buf), 0));
	g_dump_got = keel_res(t);
	KEEL_END(t);
}

/* The loop's task dump, of one task, into `out`. */
static void dump_one(struct keel_loop *loop, char *out, size_t size)
{
	int fd = memfd_create("dump", MFD_CLOEXEC), n;

	cr_assert_geq(fd, 0);
	n = keel_loop_dump(loop, fd);
	cr_assert_eq(n, 1, "keel_loop_dump listed %d tasks", n);
	cr_assert_eq(lseek(fd, 0, SEEK_SET), 0);
	ssize_t len = read(fd, out, size - 1);

	cr_assert_gt(len, 0);
	out[len] = '\0';
	close(fd);
}

Test(trace, task_dump_lists_a_task_blocked_in_recv, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct receiver *r;
	int sv[2];
	char out[4096], want[512];

	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	r = kt_spawn(loop, &receiver_task, KEEL_PRIO_NORMAL);
	r->fd = sv[0];
	cr_assert_eq(keel_loop_step(loop, 0), 1);

	dump_one(loop, out, sizeof(out));
	cr_assert(strstr(out, "1 live"), "dump:\n%s", out);
	cr_assert(strstr(out, " receiver_task [waiting"), "dump:\n%s", out);
	snprintf(want, sizeof(want), "test_trace.c:%d keel_recv(",
		 g_dump_recv_line);
	cr_assert(strstr(out, want), "no \"%s\" in the dump:\n%s", want, out);
	snprintf(want, sizeof(want), "\n    op recv fd %d, ", sv[0]);
	cr_assert(strstr(out, want), "no \"%s\" in the dump:\n%s", want + 1,
		  out);

	/* Let it finish. */
	cr_assert_eq(write(sv[1], "x", 1), 1);
	kt_loop_run(loop);
	cr_assert_eq(g_dump_got, 1);
	keel_loop_destroy(loop);
	close(sv[0]);
	close(sv[1]);
}

/* A sleep holds no ledger op (io/sleep.c), but shows as one. */
struct sleeper {
	struct keel_task task;
};

static int sleeper_step(struct keel_task *t)
{
	KEEL_BEGIN(t);
	KEEL_AWAIT(t, keel_sleep(t, 3600ull * 1000000000u));
	g_dump_got = keel_res(t);
	KEEL_END(t);
}

static KEEL_TASK_TYPE(sleeper_task, struct sleeper, task, sleeper_step);

Test(trace, task_dump_lists_a_sleeping_task, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct sleeper *s = kt_spawn(loop, &sleeper_task, KEEL_PRIO_NORMAL);
	char out[4096];

	cr_assert_eq(keel_loop_step(loop, 0), 1);
	cr_assert_eq(kt_stats(loop).ops_inflight, 1);
	dump_one(loop, out, sizeof(out));
	cr_assert(strstr(out, "1 ops in flight"), "dump:\n%s", out);
	cr_assert(strstr(out, " sleeper_task [waiting"), "dump:\n%s", out);
	cr_assert(strstr(out, "\n    op timeout, "), "dump:\n%s", out);

	/* Cancelled, it ends at once with the cause. */
	g_dump_got = -1000;
	cr_assert_eq(keel_task_cancel(&s->task), 0);
	kt_loop_run(loop);
	cr_assert_eq(g_dump_got, -ECANCELED);
	cr_assert_eq(kt_stats(loop).ops_inflight, 0);
	cr_assert_eq(kt_stats(loop).timers_armed, 0);
	keel_loop_destroy(loop);
}

/* ---- stall detector ------------------------------------------------------ */

static int g_stall_yield_line;

struct stall_rec {
	int calls;
	char name[64];
	char site[256];
	uint64_t ns;
	struct keel_loop *loop;
};

static void on_stall(struct keel_loop *loop, const char *task_name,
		     const char *resumed_from, uint64_t step_ns, void *arg)
{
	struct stall_rec *r = arg;

	r->calls++;
	r->loop = loop;
	snprintf(r->name, sizeof(r->name), "%s", task_name);
	snprintf(r->site, sizeof(r->site), "%s", resumed_from);
	r->ns = step_ns;
}

/*
 * Yields once, then busy-waits 30 ms in one step. The watchdog samples the
 * loop every half threshold, so a starved watchdog thread (a loaded
 * machine) could miss a 30 ms step: with `until_seen`, the step goes on
 * (up to 2 s) until the watchdog has flagged it.
 */
struct staller {
	struct keel_task task;
	bool until_seen;
	uint64_t first_ns; /* busy-wait this long in the first step too */
};

static void busy_wait(uint64_t ns)
{
	uint64_t start = kt_now_ns();

	while (kt_now_ns() - start < ns) {
	}
}

static int staller_step(struct keel_task *t);
static KEEL_TASK_TYPE(staller_task, struct staller, task, staller_step);

static int staller_step(struct keel_task *t)
{
	struct staller *s = keel_container_of(t, struct staller, task);

	KEEL_BEGIN(t);
	busy_wait(s->first_ns);
	g_stall_yield_line = __LINE__ + 1;
	KEEL_YIELD(t);
	uint64_t start = kt_now_ns(), now;

	do {
		now = kt_now_ns();
	} while (now - start < KT_MS(30) ||
		 (s->until_seen && !kt_stats(keel_task_loop(t)).stalls &&
		  now - start < KT_MS(2000)));
	KEEL_END(t);
}

static struct keel_loop *run_staller(uint64_t threshold, uint64_t first_ns,
				     struct stall_rec *r)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct staller *s;

	keel_loop_set_stall(loop, threshold, on_stall, r);
	/* The watchdog thread starts with the first loop: let it get going. */
	usleep(20 * 1000);
	s = kt_spawn(loop, &staller_task, KEEL_PRIO_NORMAL);
	s->until_seen = threshold != 0;
	s->first_ns = first_ns;
	kt_loop_run(loop);
	return loop;
}

Test(trace, stall_of_a_30ms_step_is_reported_once, .timeout = 10)
{
	struct stall_rec r = {0};
	struct keel_loop *loop = run_staller(KT_MS(10), 0, &r);
	char want[256];

	cr_assert_eq(r.calls, 1, "reporter called %d times", r.calls);
	cr_assert_eq(r.loop, loop);
	cr_assert_str_eq(r.name, "staller_task");
	snprintf(want, sizeof(want), "%s:%d keel_yield(t)", __FILE__,
		 g_stall_yield_line);
	cr_assert_str_eq(r.site, want);
	cr_assert_geq(r.ns, KT_MS(10), "step_ns %llu",
		      (unsigned long long)r.ns);
	cr_assert_leq(r.ns, KT_MS(1000), "step_ns %llu",
		      (unsigned long long)r.ns);
	cr_assert_eq(kt_stats(loop).stalls, 1);
	keel_loop_destroy(loop);
}

/*
 * A 25 ms first step (startup work) is not a stall at a 10 ms threshold: it
 * would have to pass ten thresholds. The second step's 30 ms still is.
 */
Test(trace, stall_detector_allows_a_longer_first_step, .timeout = 10)
{
	struct stall_rec r = {0};
	struct keel_loop *loop = run_staller(KT_MS(10), KT_MS(25), &r);
	char want[256];

	cr_assert_eq(r.calls, 1, "reporter called %d times (last: %s)", r.calls,
		     r.site);
	snprintf(want, sizeof(want), "%s:%d keel_yield(t)", __FILE__,
		 g_stall_yield_line);
	cr_assert_str_eq(r.site, want);
	cr_assert_eq(kt_stats(loop).stalls, 1);
	keel_loop_destroy(loop);
}

Test(trace, stall_detector_off_reports_nothing, .timeout = 10)
{
	struct stall_rec r = {0};
	struct keel_loop *loop = run_staller(0, 0, &r);

	cr_assert_eq(r.calls, 0, "reporter called %d times", r.calls);
	cr_assert_eq(kt_stats(loop).stalls, 0);
	keel_loop_destroy(loop);
}

/* The STALL event: inside the step, with its length and resume site. */
Test(trace, stall_is_traced_inside_the_step, .timeout = 10)
{
	char path[300], want[512];
	struct stall_rec r = {0};
	struct keel_loop *loop;
	struct tr t;

	kt_tmpdir_make(g_dir, sizeof(g_dir));
	snprintf(path, sizeof(path), "%s/stall.ktrace", g_dir);
	cr_assert_eq(keel_trace_start(path), 0);
	loop = run_staller(KT_MS(10), 0, &r);
	keel_loop_destroy(loop);
	cr_assert_eq(keel_trace_stop(), 0);
	tr_load(path, &t);

	char *got = tr_render_task(&t, "staller_task");

	snprintf(want, sizeof(want),
		 "SPAWN staller_task spawner=0\nSTEP_BEGIN\nSTEP_END 1\n"
		 "WAIT %s:%d keel_yield(t)\nSTEP_BEGIN\nEXIT 0\nSTALL\n"
		 "STEP_END 2\n",
		 __FILE__, g_stall_yield_line);
	cr_assert_str_eq(got, want, "staller's events:\n%s\nexpected:\n%s", got,
			 want);
	free(got);

	uint32_t slot = tr_slot_of(&t, "staller_task");
	long s = tr_find(&t, 0, slot, KEEL_EV_STALL, 0);
	long w = tr_find(&t, 0, slot, KEEL_EV_WAIT, 0);

	cr_assert_geq(s, 0);
	cr_assert_geq(t.ev[s].ev.a, KT_MS(10));
	cr_assert_eq(t.ev[s].ev.b, t.ev[w].ev.a, "STALL site != WAIT site");
	tr_free(&t);
}

/*
 * keel_opcode_name(): one name for every opcode up to IORING_OP_PIPE (62,
 * the last one Linux 6.18 knows), spelt as the constant without
 * IORING_OP_ in lower case; none for a number past that.
 */
Test(trace, opcode_name_names_every_opcode_up_to_pipe, .timeout = 10)
{
	static const struct {
		unsigned op;
		const char *name;
	} spot[] = {
	    {IORING_OP_NOP, "nop"},
	    {IORING_OP_ACCEPT, "accept"},
	    {IORING_OP_RECV, "recv"},
	    {IORING_OP_SEND, "send"},
	    {IORING_OP_MSG_RING, "msg_ring"},
	    {IORING_OP_SENDMSG_ZC, "sendmsg_zc"}, /* liburing 2.3's last */
	    {49, "read_multishot"},
	    {51, "futex_wait"},
	    {57, "listen"},
	    {62, "pipe"},
	};

	for (size_t i = 0; i < sizeof(spot) / sizeof(spot[0]); i++)
		cr_assert_str_eq(keel_opcode_name(spot[i].op), spot[i].name,
				 "opcode %u", spot[i].op);
	for (unsigned op = 0; op <= 62; op++) {
		const char *name = keel_opcode_name(op);

		cr_assert_not_null(name, "opcode %u has no name", op);
		cr_assert_gt(strlen(name), 0);
		cr_assert_eq(
		    strspn(name, "abcdefghijklmnopqrstuvwxyz0123456789_"),
		    strlen(name), "opcode %u: \"%s\"", op, name);
		for (unsigned other = 0; other < op; other++)
			cr_assert_str_neq(keel_opcode_name(other), name,
					  "opcodes %u and %u share a name",
					  other, op);
	}
	cr_assert_null(keel_opcode_name(63));
	cr_assert_null(keel_opcode_name(255));
	cr_assert_null(keel_opcode_name(UINT32_MAX));
	/* A static string: the same pointer every time. */
	cr_assert_eq(keel_opcode_name(IORING_OP_RECV),
		     keel_opcode_name(IORING_OP_RECV));
}

/*
 * KEEL_TRACE naming a file that cannot be created: the loops run without
 * a trace, and stderr says so once, in one line, with the reason (the
 * documented exception to "library code never prints": the environment
 * has no caller to return the error to). In a child, because the
 * variable is read once per process.
 */
Test(trace, env_path_that_cannot_be_written_says_so_once, .timeout = 30)
{
	char tmpl[] = "/tmp/keel-trace-env-XXXXXX";
	char path[128], errpath[128];

	cr_assert_not_null(mkdtemp(tmpl));
	snprintf(path, sizeof(path), "%s/no-such-dir/t.ktrace", tmpl);
	snprintf(errpath, sizeof(errpath), "%s/stderr", tmpl);

	pid_t pid = fork();

	cr_assert_geq(pid, 0);
	if (pid == 0) {
		int fd = open(errpath, O_WRONLY | O_CREAT | O_TRUNC, 0600);

		if (fd < 0 || dup2(fd, 2) < 0)
			_exit(3);
		setenv("KEEL_TRACE", path, 1);
		for (int i = 0; i < 2; i++) {
			struct keel_loop *loop;

			if (keel_loop_create(&loop, NULL))
				_exit(4);
			keel_loop_destroy(loop);
		}
		_exit(keel_trace_stop() == 0 ? 0 : 5);
	}
	int status;

	cr_assert_eq(waitpid(pid, &status, 0), pid);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0,
		  "the child failed (status %#x)", status);

	char buf[1024] = {0};
	FILE *f = fopen(errpath, "r");

	cr_assert_not_null(f);
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);

	fclose(f);
	unlink(errpath);
	rmdir(tmpl);
	cr_assert_gt(n, 0, "nothing on stderr");
	cr_assert_eq(strchr(buf, '\n'), buf + n - 1, "not one line: %s", buf);
	cr_assert_not_null(strstr(buf, "KEEL_TRACE"), "%s", buf);
	cr_assert_not_null(strstr(buf, path), "%s", buf);
	cr_assert_not_null(strstr(buf, strerror(ENOENT)), "%s", buf);
}

/*
 * An idle recv stream parks on a poll (io/stream.c), holding no op: the
 * poll's completion carries its real latency, the wait from its submit to
 * its completion (as the stream keeps it: in 2^16 ns units), not 0.
 */
struct parker {
	struct keel_task task;
	struct keel_recv_stream rs;
	struct keel_buf buf;
	struct keel_bufring *ring;
	int fd, peer, i;
};

static uint64_t parker_polls(struct keel_task *t)
{
	struct keel_loop_stats st;

	keel_loop_stats(keel_task_loop(t), &st);
	return st.idle_polls;
}

static int parker_step(struct keel_task *t)
{
	struct parker *p = keel_container_of(t, struct parker, task);

	KEEL_BEGIN(t);
	if (keel_recv_stream_open(t, &p->rs, p->fd, p->ring, 0))
		KEEL_EXIT(t, 1);
	/* Parked within two sweep periods (250-500 ms), 10 s at most. */
	for (p->i = 0; p->i < 100 && !parker_polls(t); p->i++)
		KEEL_AWAIT(t, keel_sleep(t, KT_MS(100)));
	KEEL_AWAIT(t, keel_sleep(t, KT_MS(20)));
	cr_assert_eq(write(p->peer, "x", 1), 1);
	KEEL_AWAIT(t, keel_recv_next(t, &p->rs, &p->buf));
	keel_buf_release(&p->buf);
	keel_recv_stream_close(&p->rs);
	KEEL_END(t);
}

static KEEL_TASK_TYPE(parker_task, struct parker, task, parker_step);

Test(trace, parked_poll_completes_with_its_real_latency, .timeout = 30)
{
	struct keel_bufring_opts ro = {.count = 4, .size = 64};
	struct keel_bufring *ring = NULL;
	struct keel_loop *loop;
	struct parker *p;
	char path[300];
	struct tr t;
	int sv[2];

	kt_tmpdir_make(g_dir, sizeof(g_dir));
	snprintf(path, sizeof(path), "%s/parked.ktrace", g_dir);
	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	cr_assert_eq(keel_trace_start(path), 0);
	loop = kt_loop_new(NULL);
	if (!keel_loop_has_op(loop, IORING_OP_POLL_ADD)) {
		fprintf(stderr, "skipped: this ring runs no POLL_ADD\n");
		keel_loop_destroy(loop);
		keel_trace_stop();
		return;
	}
	cr_assert_eq(keel_bufring_create(loop, &ro, &ring), 0);
	p = kt_spawn(loop, &parker_task, KEEL_PRIO_NORMAL);
	p->fd = sv[0];
	p->peer = sv[1];
	p->ring = ring;
	kt_loop_run(loop);
	cr_assert_eq(kt_stats(loop).idle_polls, 1);
	keel_loop_destroy(loop);
	cr_assert_eq(keel_trace_stop(), 0, "nothing was dropped");
	close(sv[0]);
	close(sv[1]);

	tr_load(path, &t);
	uint32_t slot = tr_slot_of(&t, "parker_task");
	long sub = tr_find(&t, 0, slot, KEEL_EV_OP_SUBMIT, IORING_OP_POLL_ADD);
	long done =
	    tr_find(&t, 0, slot, KEEL_EV_OP_COMPLETE, IORING_OP_POLL_ADD);

	cr_assert_geq(sub, 0, "no POLL_ADD submitted");
	cr_assert_gt(done, sub, "no POLL_ADD completed");
	cr_assert_gt(t.ev[done].ev.a, 0, "the poll's result");
	/* The events' own times bound it: within one unit (and the clock
	 * reads between) of the wait they show. */
	uint64_t shown = t.ev[done].ev.ts - t.ev[sub].ev.ts;
	uint64_t lat = t.ev[done].ev.b;

	cr_assert_gt(lat, 0, "the parked poll's latency is 0");
	cr_assert_lt(lat, shown + (2u << 16), "latency %llu ns, shown %llu ns",
		     (unsigned long long)lat, (unsigned long long)shown);
	cr_assert_gt(lat + (2u << 16), shown, "latency %llu ns, shown %llu ns",
		     (unsigned long long)lat, (unsigned long long)shown);
	tr_free(&t);
}
