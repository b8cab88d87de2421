/* SPDX-License-Identifier: MIT */
/*
 * trace.c: the tracer's recording side (the format is in keel/trace.h).
 *
 * Each loop appends 32-byte events to its current buffer: no lock, no
 * atomic, one clock read. A full buffer is queued for the process's writer
 * thread and the loop takes a fresh one from a shared pool; if the pool is
 * empty (the writer fell behind), the loop drops events and counts them
 * until a buffer comes back, and the count is written with its next
 * buffer. Only these handoffs (one per KEEL__TRACE_BUF events), the first
 * sight of a string, and attach/detach take the tracer's mutex.
 *
 * When tracing is off, a loop's `trace` pointer is NULL and every event
 * site costs one predictable branch (KEEL__TRACE in core.h). Loops notice
 * that tracing was started or stopped at the start of their next turn.
 */
#include "core.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define POOL_PER_LOOP 8

struct trace_buf {
	struct trace_buf *next;
	uint32_t loop;
	uint32_t n;
	uint64_t dropped_before;
	struct keel_trace_event ev[KEEL__TRACE_BUF];
};

/* A queued record: an events buffer, a string, or a loop's name. */
struct trace_item {
	struct trace_item *next;
	uint32_t kind;
	uint32_t loop;
	uint32_t count;
	uint32_t extra;
	struct trace_buf *buf; /* EVENTS */
	char text[];	       /* STRING */
};

struct keel__trace_loop {
	struct trace_buf *cur;
	uint32_t loop;
	uint64_t dropped; /* since the last buffer handed over */
	/* Interned strings: key pointer -> id, open addressing. */
	const void **keys;
	uint32_t *ids;
	uint32_t cap;
	uint32_t n;
};

static struct {
	pthread_mutex_t lock;
	pthread_cond_t wake;
	pthread_cond_t returned; /* the writer gave a buffer back */
	pthread_t writer;
	bool writer_running;
	bool stopping;
	int fd;
	uint64_t start_ns;
	struct trace_item *head, *tail;
	struct trace_buf *pool;
	uint32_t next_string;
	uint32_t next_loop;
	uint32_t attached;
	uint64_t dropped_total;
	int write_error;
} tracer = {
    .lock = PTHREAD_MUTEX_INITIALIZER,
    .wake = PTHREAD_COND_INITIALIZER,
    .returned = PTHREAD_COND_INITIALIZER,
    .fd = -1,
};

/*
 * The trace clock: the TSC, calibrated against CLOCK_MONOTONIC when the
 * trace starts, where the CPU says it is constant and non-stop (14 ns a
 * read here, against 40 ns for clock_gettime, and an echo request records
 * about ten events); clock_gettime elsewhere.
 */
static struct {
	bool tsc;
	uint64_t tsc0;
	uint64_t mult; /* ns per tick, 32.32 fixed point */
} tclock;

#if defined(__x86_64__)
#include <x86intrin.h>

static bool tsc_is_invariant(void)
{
	FILE *f = fopen("/proc/cpuinfo", "r");
	char line[4096];
	bool constant = false, nonstop = false;

	if (!f)
		return false;
	while (fgets(line, sizeof(line), f) && strncmp(line, "flags", 5))
		;
	constant = strstr(line, " constant_tsc") != NULL;
	nonstop = strstr(line, " nonstop_tsc") != NULL;
	fclose(f);
	return constant && nonstop;
}

/*
 * A (clock, TSC) pair taken as close together as possible: the tightest of
 * a few TSC-clock-TSC triples, so that a preemption in between (likely on a
 * loaded machine) does not skew the calibration.
 */
static void tclock_pair(uint64_t *t, uint64_t *c)
{
	uint64_t best = UINT64_MAX;

	for (int i = 0; i < 16; i++) {
		uint64_t a = __rdtsc(), now = keel__clock_now(), b = __rdtsc();

		if (b - a < best) {
			best = b - a;
			*t = now;
			*c = a + (b - a) / 2;
		}
	}
}

static void tclock_calibrate(void)
{
	uint64_t t0, c0, t1, c1;

	tclock.tsc = false;
	if (!tsc_is_invariant())
		return;
	tclock_pair(&t0, &c0);
	do { /* 10 ms between two tight pairs: an error of about 1e-5 */
		tclock_pair(&t1, &c1);
	} while (t1 - t0 < 10000000u);
	if (c1 <= c0)
		return;
	tclock.mult =
	    (uint64_t)(((unsigned __int128)(t1 - t0) << 32) / (c1 - c0));
	tclock.tsc0 =
	    c0 - (uint64_t)(((unsigned __int128)(t0 - tracer.start_ns) << 32) /
			    tclock.mult);
	tclock.tsc = true;
}

/* ns since the trace started. */
static inline uint64_t tclock_now(void)
{
	if (tclock.tsc && !keel__virtual_clock)
		return (
		    uint64_t)(((unsigned __int128)(__rdtsc() - tclock.tsc0) *
			       tclock.mult) >>
			      32);
	return keel__clock_now() - tracer.start_ns;
}
#else
static void tclock_calibrate(void)
{
	tclock.tsc = false;
}

static inline uint64_t tclock_now(void)
{
	return keel__clock_now() - tracer.start_ns;
}
#endif

uint64_t keel__trace_clock(void)
{
	return tclock_now();
}

/* The loop this thread runs (between turns too): keel_trace_stop()
 * flushes it. Set when it attaches, cleared when it detaches. */
static __thread struct keel__core *thread_loop;

/* Bumped (under the lock) by start and stop; loops compare at each turn
 * (keel__trace_turn(), core.h). */
uint32_t keel__tracer_gen;
static bool tracer_on;

static void enqueue_locked(struct trace_item *it)
{
	it->next = NULL;
	if (tracer.tail)
		tracer.tail->next = it;
	else
		tracer.head = it;
	tracer.tail = it;
	pthread_cond_signal(&tracer.wake);
}

static int write_all(int fd, const void *p, size_t len)
{
	const char *c = p;

	while (len) {
		ssize_t n = write(fd, c, len);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		c += n;
		len -= (size_t)n;
	}
	return 0;
}

static void write_item(struct trace_item *it)
{
	uint32_t hdr[4] = {it->kind, it->loop, it->count, it->extra};
	int err = write_all(tracer.fd, hdr, sizeof(hdr));

	if (!err && it->kind == KEEL_TRACE_REC_EVENTS && it->count)
		err = write_all(tracer.fd, it->buf->ev,
				it->count * sizeof(struct keel_trace_event));
	if (!err && it->kind == KEEL_TRACE_REC_STRING) {
		size_t padded = (it->count + 7u) & ~7u;

		err = write_all(tracer.fd, it->text, padded);
	}
	if (err && !tracer.write_error)
		tracer.write_error = err;
}

/* The writer thread: drains the queue; buffers go back to the pool. */
static void *writer_main(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&tracer.lock);
	for (;;) {
		while (!tracer.head && !tracer.stopping)
			pthread_cond_wait(&tracer.wake, &tracer.lock);
		if (!tracer.head && tracer.stopping)
			break;
		struct trace_item *it = tracer.head;

		tracer.head = tracer.tail = NULL;
		pthread_mutex_unlock(&tracer.lock);
		while (it) {
			struct trace_item *next = it->next;

			write_item(it);
			if (it->buf) {
				pthread_mutex_lock(&tracer.lock);
				it->buf->next = tracer.pool;
				tracer.pool = it->buf;
				pthread_cond_broadcast(&tracer.returned);
				pthread_mutex_unlock(&tracer.lock);
			}
			free(it);
			it = next;
		}
		pthread_mutex_lock(&tracer.lock);
	}
	pthread_mutex_unlock(&tracer.lock);
	return NULL;
}

int keel_trace_start(const char *path)
{
	struct {
		char magic[8];
		uint32_t version;
		uint32_t event_size;
		uint64_t start_mono;
		uint64_t start_real;
	} hdr;
	struct timespec rt;
	int err = 0;

	pthread_mutex_lock(&tracer.lock);
	if (tracer_on) {
		pthread_mutex_unlock(&tracer.lock);
		return -EALREADY;
	}
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);

	if (fd < 0) {
		err = -errno;
		pthread_mutex_unlock(&tracer.lock);
		return err;
	}
	memcpy(hdr.magic, KEEL_TRACE_MAGIC, 8);
	hdr.version = KEEL_TRACE_VERSION;
	hdr.event_size = sizeof(struct keel_trace_event);
	tracer.start_ns = keel__clock_now();
	/* Under a virtual clock the TSC is never read (tclock_now): skip
	 * the 10 ms of calibration, which a simulation runner tracing every
	 * seed would pay thousands of times. */
	if (keel__virtual_clock)
		tclock.tsc = false;
	else
		tclock_calibrate();
	clock_gettime(CLOCK_REALTIME, &rt);
	hdr.start_mono = tracer.start_ns;
	hdr.start_real =
	    (uint64_t)rt.tv_sec * 1000000000u + (uint64_t)rt.tv_nsec;
	err = write_all(fd, &hdr, sizeof(hdr));
	if (!err && pthread_create(&tracer.writer, NULL, writer_main, NULL))
		err = -EAGAIN;
	if (err) {
		close(fd);
		pthread_mutex_unlock(&tracer.lock);
		return err;
	}
	tracer.fd = fd;
	tracer.writer_running = true;
	tracer.stopping = false;
	tracer.next_string = 1;
	tracer.next_loop = 0;
	tracer.dropped_total = 0;
	tracer.write_error = 0;
	__atomic_store_n(&tracer_on, true, __ATOMIC_RELEASE);
	__atomic_add_fetch(&keel__tracer_gen, 1, __ATOMIC_RELEASE);
	pthread_mutex_unlock(&tracer.lock);
	return 0;
}

int keel_trace_enabled(void)
{
	return __atomic_load_n(&tracer_on, __ATOMIC_ACQUIRE);
}

/* Hand the loop's current buffer to the writer (lock held). */
static void flush_locked(struct keel__trace_loop *tl)
{
	struct trace_buf *buf = tl->cur;

	tl->cur = NULL;
	if (!buf) {
		/* Dropping when it ends: still count them, in a record of no
		 * events that carries the number. */
		struct trace_item *it =
		    tl->dropped && tracer.writer_running && !tracer.stopping
			? calloc(1, sizeof(*it))
			: NULL;

		if (it) {
			it->kind = KEEL_TRACE_REC_EVENTS;
			it->loop = tl->loop;
			it->extra =
			    (uint32_t)(tl->dropped > UINT32_MAX ? UINT32_MAX
								: tl->dropped);
			enqueue_locked(it);
		}
		tracer.dropped_total += tl->dropped;
		tl->dropped = 0;
		return;
	}
	if (!tracer.writer_running || tracer.stopping) {
		free(buf); /* detached after the trace was stopped */
		return;
	}
	if (!buf->n && !tl->dropped) {
		buf->next = tracer.pool;
		tracer.pool = buf;
		return;
	}
	struct trace_item *it = calloc(1, sizeof(*it));

	if (!it) {
		tl->dropped += buf->n;
		buf->next = tracer.pool;
		tracer.pool = buf;
		return;
	}
	it->kind = KEEL_TRACE_REC_EVENTS;
	it->loop = tl->loop;
	it->count = buf->n;
	it->extra =
	    (uint32_t)(tl->dropped > UINT32_MAX ? UINT32_MAX : tl->dropped);
	tracer.dropped_total += tl->dropped;
	tl->dropped = 0;
	it->buf = buf;
	enqueue_locked(it);
}

static void take_buffer_locked(struct keel__trace_loop *tl)
{
	struct trace_buf *buf = tracer.pool;

	if (!buf)
		return;
	tracer.pool = buf->next;
	buf->n = 0;
	buf->loop = tl->loop;
	tl->cur = buf;
}

static void attach(struct keel__core *c)
{
	struct keel__trace_loop *tl = calloc(1, sizeof(*tl));

	if (!tl)
		return;
	pthread_mutex_lock(&tracer.lock);
	if (!tracer_on) {
		pthread_mutex_unlock(&tracer.lock);
		free(tl);
		return;
	}
	tl->loop = tracer.next_loop++;
	for (int i = 0; i < POOL_PER_LOOP; i++) {
		struct trace_buf *b = malloc(sizeof(*b));

		if (!b)
			break;
		b->next = tracer.pool;
		tracer.pool = b;
	}
	tracer.attached++;
	thread_loop = c;
	struct trace_item *it = calloc(1, sizeof(*it));

	if (it) {
		it->kind = KEEL_TRACE_REC_LOOP;
		it->loop = tl->loop;
		it->extra = (uint32_t)syscall(SYS_gettid);
		enqueue_locked(it);
	}
	take_buffer_locked(tl);
	pthread_mutex_unlock(&tracer.lock);
	c->trace = tl;
	c->op_slow.why.trace = 1;
}

void keel__trace_detach(struct keel__core *c)
{
	struct keel__trace_loop *tl = c->trace;

	if (!tl)
		return;
	pthread_mutex_lock(&tracer.lock);
	flush_locked(tl);
	tracer.attached--;
	pthread_mutex_unlock(&tracer.lock);
	free(tl->keys);
	free(tl->ids);
	free(tl);
	c->trace = NULL;
	c->op_slow.why.trace = 0;
	if (thread_loop == c)
		thread_loop = NULL;
}

void keel__trace_turn_slow(struct keel__core *c)
{
	uint32_t gen = __atomic_load_n(&keel__tracer_gen, __ATOMIC_ACQUIRE);

	if (gen != c->trace_gen) {
		c->trace_gen = gen;
		keel__trace_detach(c);
		if (keel_trace_enabled())
			attach(c);
		return;
	}
	if (c->trace && !c->trace->cur) {
		/* Dropping since the pool ran dry: try again once a turn. */
		pthread_mutex_lock(&tracer.lock);
		take_buffer_locked(c->trace);
		pthread_mutex_unlock(&tracer.lock);
	}
}

void keel__trace_emit(struct keel__core *c, uint8_t type, uint8_t op,
		      uint32_t task, uint64_t a, uint64_t b)
{
	struct keel__trace_loop *tl = c->trace;
	struct trace_buf *buf = tl->cur;

	if (!buf) {
		tl->dropped++;
		return;
	}
	struct keel_trace_event *ev = &buf->ev[buf->n++];

	ev->ts = tclock_now();
	ev->type = type;
	ev->op = op;
	ev->flags = 0;
	ev->task = task;
	ev->a = a;
	ev->b = b;
	if (buf->n == KEEL__TRACE_BUF) {
		pthread_mutex_lock(&tracer.lock);
		flush_locked(tl);
		take_buffer_locked(tl);
		/*
		 * Under a virtual clock (the simulated kernel) wait for the
		 * writer rather than drop: a simulation's trace must be
		 * complete to be checked and compared run against run, and
		 * no time passes for the loop while it waits.
		 */
		while (!tl->cur && keel__virtual_clock &&
		       tracer.writer_running && !tracer.stopping) {
			pthread_cond_wait(&tracer.returned, &tracer.lock);
			take_buffer_locked(tl);
		}
		pthread_mutex_unlock(&tracer.lock);
	}
}

/* Queue a string record and return its id (0 when out of memory). */
__attribute__((format(printf, 1, 2))) static uint32_t
add_string(const char *fmt, ...)
{
	char tmp[512];
	va_list ap;

	va_start(ap, fmt);
	int len = vsnprintf(tmp, sizeof(tmp), fmt, ap);

	va_end(ap);
	if (len < 0)
		return 0;
	if ((size_t)len >= sizeof(tmp))
		len = sizeof(tmp) - 1;
	size_t padded = ((size_t)len + 7u) & ~(size_t)7u;
	struct trace_item *it = calloc(1, sizeof(*it) + padded + 1);

	if (!it)
		return 0;
	memcpy(it->text, tmp, (size_t)len);
	it->kind = KEEL_TRACE_REC_STRING;
	it->count = (uint32_t)len;
	pthread_mutex_lock(&tracer.lock);
	it->extra = tracer.next_string++;
	uint32_t id = it->extra;

	enqueue_locked(it);
	pthread_mutex_unlock(&tracer.lock);
	return id;
}

static uint32_t intern_slot(struct keel__trace_loop *tl, const void *key)
{
	uint32_t h = (uint32_t)(((uintptr_t)key >> 3) * 2654435761u);

	for (uint32_t i = h & (tl->cap - 1);; i = (i + 1) & (tl->cap - 1))
		if (!tl->keys[i] || tl->keys[i] == key)
			return i;
}

static bool intern_grow(struct keel__trace_loop *tl)
{
	uint32_t cap = tl->cap ? tl->cap * 2 : 256;
	const void **keys = calloc(cap, sizeof(*keys));
	uint32_t *ids = calloc(cap, sizeof(*ids));
	struct keel__trace_loop old = *tl;

	if (!keys || !ids) {
		free(keys);
		free(ids);
		return false;
	}
	tl->keys = keys;
	tl->ids = ids;
	tl->cap = cap;
	for (uint32_t i = 0; i < old.cap; i++)
		if (old.keys[i]) {
			uint32_t s = intern_slot(tl, old.keys[i]);

			tl->keys[s] = old.keys[i];
			tl->ids[s] = old.ids[i];
		}
	free(old.keys);
	free(old.ids);
	return true;
}

/* The id of the string for `key`; `line` < 0: `file` is the whole text,
 * else "file:line what" (an await point). */
static uint32_t intern(struct keel__trace_loop *tl, const void *key,
		       const char *file, int line, const char *what)
{
	if ((tl->n + 1) * 2 > tl->cap && !intern_grow(tl))
		return 0;
	uint32_t i = intern_slot(tl, key);

	if (tl->keys[i])
		return tl->ids[i];
	uint32_t id = line < 0 ? add_string("%s", file)
			       : add_string("%s:%d %s", file, line, what);

	if (id) {
		tl->keys[i] = key;
		tl->ids[i] = id;
		tl->n++;
	}
	return id;
}

uint64_t keel__trace_str_name(struct keel__core *c, const char *name)
{
	return intern(c->trace, name, name, -1, NULL);
}

uint64_t keel__trace_str_site(struct keel__core *c,
			      const struct keel_await_point *at)
{
	if (!at)
		return 0;
	return intern(c->trace, at, at->file, at->line, at->what);
}

uint64_t keel__trace_str_once(struct keel__core *c, const char *text)
{
	(void)c;
	return add_string("%s", text ? text : "");
}

void keel_trace_mark(const char *name, int64_t arg)
{
	struct keel__core *c = keel__current_core;

	if (!c || !name)
		return;
	KEEL__TRACE(c, KEEL_EV_MARK, 0,
		    c->current ? c->current->id : UINT32_MAX,
		    keel__trace_str_once(c, name), arg);
}

int64_t keel_trace_stop(void)
{
	pthread_mutex_lock(&tracer.lock);
	if (!tracer_on) {
		pthread_mutex_unlock(&tracer.lock);
		return 0;
	}
	__atomic_store_n(&tracer_on, false, __ATOMIC_RELEASE);
	__atomic_add_fetch(&keel__tracer_gen, 1, __ATOMIC_RELEASE);
	pthread_mutex_unlock(&tracer.lock);
	/* The calling thread's loop, if it runs one, flushes right now; the
	 * others flush at their next turn or destruction while the writer
	 * runs, or lose their last buffer if that comes after this. */
	if (keel__current_core)
		keel__trace_detach(keel__current_core);
	else if (thread_loop)
		keel__trace_detach(thread_loop);
	pthread_mutex_lock(&tracer.lock);
	tracer.stopping = true;
	pthread_cond_signal(&tracer.wake);
	pthread_cond_broadcast(&tracer.returned); /* simulated loops waiting */
	pthread_mutex_unlock(&tracer.lock);
	pthread_join(tracer.writer, NULL);
	pthread_mutex_lock(&tracer.lock);
	tracer.writer_running = false;
	close(tracer.fd);
	tracer.fd = -1;
	while (tracer.pool) {
		struct trace_buf *b = tracer.pool;

		tracer.pool = b->next;
		free(b);
	}
	int64_t dropped = (int64_t)tracer.dropped_total;

	pthread_mutex_unlock(&tracer.lock);
	return dropped;
}

static void stop_at_exit(void)
{
	keel_trace_stop();
}

static void start_from_env(void)
{
	const char *path = getenv("KEEL_TRACE");

	if (!path || !*path)
		return;
	int err = keel_trace_start(path);

	if (err == 0) {
		atexit(stop_at_exit);
		return;
	}
	/* The one place library code prints: the environment has no caller
	 * to return the error to, and a trace silently missing is worse. */
	if (err != -EALREADY)
		fprintf(stderr,
			"keel: KEEL_TRACE=%s: tracing not started: %s\n", path,
			strerror(-err));
}

void keel__trace_env(void)
{
	static pthread_once_t once = PTHREAD_ONCE_INIT;

	pthread_once(&once, start_from_env);
}
