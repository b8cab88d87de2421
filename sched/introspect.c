/* SPDX-License-Identifier: MIT */
/*
 * introspect.c: task dumps, the stall watchdog, and Prometheus metrics.
 *
 * A dump is built in memory and written under a process-wide lock, so that
 * the dumps of several loops (SIGUSR1 in a runtime) do not mix on stderr.
 *
 * The stall detector costs the loop nothing per step beyond two relaxed
 * stores (the step counter and the resume site, sched/loop.c): a watchdog
 * thread, started with the first loop, samples every registered loop each
 * half threshold; the last loop to go stops and joins it (so no thread
 * outlives the loops, e.g. under valgrind), and a new loop starts another. A
 * loop whose step counter has not moved while a task is running, for longer
 * than its threshold, is stalled: the watchdog writes one line to stderr at
 * once (at most once a second per loop), so a step that never returns is still
 * reported, and flags the loop (a task's first step, its startup work, only
 * past ten thresholds); after the step the loop emits the STALL trace
 * event and calls the user's reporter. (Timing each step instead would cost a
 * clock read, 15-40 ns here, per step.)
 */
#include "loop.h"
#include "prom.h"

#include <errno.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- stall watchdog -------------------------------------------------- */

static struct {
	pthread_mutex_t lock;
	pthread_cond_t wake;
	struct keel_loop *loops; /* linked through watch.next */
	bool running;		 /* `thread` is the current watchdog */
	pthread_t thread;
	/* Bumped to retire the current thread: it runs while this is the
	 * value it was started with, so a loop added before it noticed
	 * cannot keep a retired thread (which someone joins) alive. */
	uintptr_t epoch;
	uint64_t ticks; /* samples taken: for tests */
} watchdog = {
    .lock = PTHREAD_MUTEX_INITIALIZER,
    .wake = PTHREAD_COND_INITIALIZER,
};

/* Set (atomically) while the thread sleeps for want of a loop that could
 * stall: see all_parked(). A global of its own, read inline by every
 * unpark (sched/loop.h). */
int keel__watchdog_idle;

/*
 * A task's first step is its startup work (a listener creating a buffer ring
 * with MAP_POPULATE, an actor's on_start): it may take longer than a step of
 * the steady state, so it is reported only past this many thresholds.
 */
#define FIRST_STEP_THRESHOLDS 10

static void watch_one(struct keel_loop *loop, uint64_t now)
{
	struct keel__loop_watch *w = &loop->watch;
	struct keel__core *c = &loop->io.core;
	uint64_t steps = __atomic_load_n(&c->count.steps, __ATOMIC_RELAXED);
	struct keel_task *t = __atomic_load_n(&c->current, __ATOMIC_RELAXED);
	uint64_t threshold =
	    __atomic_load_n(&w->threshold_ns, __ATOMIC_RELAXED);

	if (!t || steps != w->seen_steps || !threshold) {
		w->seen_steps = steps;
		w->since = now;
		w->reported = false;
		return;
	}
	if (w->reported)
		return;
	/* Stored before the step began: the step counter has not moved. */
	const struct keel_await_point *at =
	    __atomic_load_n(&c->current_site, __ATOMIC_RELAXED);

	if (!at && threshold < UINT64_MAX / FIRST_STEP_THRESHOLDS)
		threshold *= FIRST_STEP_THRESHOLDS;
	if (now - w->since < threshold)
		return;
	w->reported = true;
	__atomic_store_n(&c->stall_flag, now - w->since, __ATOMIC_RELAXED);
	__atomic_add_fetch(&w->stalls, 1, __ATOMIC_RELAXED);
	if (w->fn || now - w->last_report < 1000000000u)
		return;
	w->last_report = now;
	const struct keel_task_type *type =
	    __atomic_load_n(&c->current_type, __ATOMIC_RELAXED);

	/* Only static data: the task itself may be freed under us. */
	char site[256] = "in its first step";

	if (at)
		snprintf(site, sizeof(site), "resumed from %s:%d %s", at->file,
			 at->line, at->what);
	fprintf(stderr,
		"keel: stall: task %s has run one step for over %llu "
		"ms (%s)\n",
		type ? type->name : "?",
		(unsigned long long)((now - w->since) / 1000000u), site);
}

/*
 * Every loop waits in the kernel (parked, sched/remote.c): none runs a
 * step, so none can stall, and the thread need not wake every half
 * threshold (an idle process would wake 200 times a second for it). It
 * sleeps until a loop unparks (keel__remote_unpark()). The two sides
 * are Dekker's: the thread stores `idle` then reads each `parked`, a loop
 * stores `parked` = 0 then reads `idle`, all sequentially consistent, so
 * at least one sees the other: the thread stays up, or the loop wakes it.
 */
static bool all_parked(void)
{
	for (struct keel_loop *l = watchdog.loops; l; l = l->watch.next)
		if (!__atomic_load_n(&l->inbox.parked, __ATOMIC_SEQ_CST))
			return false;
	return watchdog.loops != NULL;
}

/* Sleep while every loop is parked; true if it slept. */
static bool idle_while_parked(uintptr_t epoch)
{
	if (!all_parked())
		return false;
	__atomic_store_n(&keel__watchdog_idle, 1, __ATOMIC_SEQ_CST);
	if (!all_parked()) {
		__atomic_store_n(&keel__watchdog_idle, 0, __ATOMIC_SEQ_CST);
		return false;
	}
	while (__atomic_load_n(&keel__watchdog_idle, __ATOMIC_SEQ_CST) &&
	       watchdog.epoch == epoch)
		pthread_cond_wait(&watchdog.wake, &watchdog.lock);
	return true;
}

void keel__watchdog_wake(void)
{
	pthread_mutex_lock(&watchdog.lock);
	__atomic_store_n(&keel__watchdog_idle, 0, __ATOMIC_SEQ_CST);
	pthread_cond_broadcast(&watchdog.wake);
	pthread_mutex_unlock(&watchdog.lock);
}

uint64_t keel__watchdog_ticks(void)
{
	return __atomic_load_n(&watchdog.ticks, __ATOMIC_RELAXED);
}

static void *watchdog_main(void *arg)
{
	uintptr_t epoch = (uintptr_t)arg;

	pthread_mutex_lock(&watchdog.lock);
	while (watchdog.epoch == epoch) {
		uint64_t tick = UINT64_MAX;

		for (struct keel_loop *l = watchdog.loops; l;
		     l = l->watch.next) {
			uint64_t th = __atomic_load_n(&l->watch.threshold_ns,
						      __ATOMIC_RELAXED);

			if (th && th / 2 < tick)
				tick = th / 2;
		}
		if (tick < 1000000u)
			tick = 1000000u;
		if (tick == UINT64_MAX)
			tick = 1000000000u;
		struct timespec ts;

		clock_gettime(CLOCK_REALTIME, &ts);
		uint64_t until = (uint64_t)ts.tv_sec * 1000000000u +
				 (uint64_t)ts.tv_nsec + tick;

		ts.tv_sec = (time_t)(until / 1000000000u);
		ts.tv_nsec = (long)(until % 1000000000u);
		pthread_cond_timedwait(&watchdog.wake, &watchdog.lock, &ts);
		uint64_t now = keel__clock_now();

		__atomic_add_fetch(&watchdog.ticks, 1, __ATOMIC_RELAXED);
		for (struct keel_loop *l = watchdog.loops; l; l = l->watch.next)
			watch_one(l, now);
		idle_while_parked(epoch);
	}
	pthread_mutex_unlock(&watchdog.lock);
	return NULL;
}

void keel__watchdog_add(struct keel_loop *loop)
{
	loop->watch.threshold_ns = KEEL_STALL_DEFAULT_NS;
	pthread_mutex_lock(&watchdog.lock);
	loop->watch.next = watchdog.loops;
	watchdog.loops = loop;
	/* Not parked yet: the thread must watch it. */
	__atomic_store_n(&keel__watchdog_idle, 0, __ATOMIC_SEQ_CST);
	pthread_cond_broadcast(&watchdog.wake);
	if (!watchdog.running) {
		/* Without it the loop runs undetected; nothing else breaks. */
		watchdog.running =
		    pthread_create(&watchdog.thread, NULL, watchdog_main,
				   (void *)watchdog.epoch) == 0;
	}
	pthread_mutex_unlock(&watchdog.lock);
}

void keel__watchdog_remove(struct keel_loop *loop)
{
	pthread_mutex_lock(&watchdog.lock);
	for (struct keel_loop **p = &watchdog.loops; *p; p = &(*p)->watch.next)
		if (*p == loop) {
			*p = loop->watch.next;
			break;
		}
	bool last = !watchdog.loops && watchdog.running;
	pthread_t th = watchdog.thread;

	if (last) {
		/* Retire the thread, wake it to notice, and join it (outside
		 * the lock, which it needs to leave). */
		watchdog.epoch++;
		watchdog.running = false;
		pthread_cond_broadcast(&watchdog.wake);
	}
	pthread_mutex_unlock(&watchdog.lock);
	if (last)
		pthread_join(th, NULL);
}

void keel_loop_set_stall(struct keel_loop *loop, uint64_t threshold_ns,
			 keel_stall_fn fn, void *arg)
{
	pthread_mutex_lock(&watchdog.lock);
	loop->watch.fn = fn;
	loop->watch.arg = arg;
	__atomic_store_n(&loop->watch.threshold_ns, threshold_ns,
			 __ATOMIC_RELAXED);
	pthread_mutex_unlock(&watchdog.lock);
}

static void stall_deadlocks(struct keel_loop *loop, bool quiet);

/* After a step the watchdog flagged: trace it and tell the reporter. */
void keel__stall_after_step(struct keel_loop *loop, struct keel_task *t,
			    const struct keel_await_point *resumed_from)
{
	struct keel__core *c = &loop->io.core;
	uint64_t ns = __atomic_exchange_n(&c->stall_flag, 0, __ATOMIC_RELAXED);

	KEEL__TRACE(c, KEEL_EV_STALL, 0, t->id, ns,
		    keel__trace_str_site(c, resumed_from));
	pthread_mutex_lock(&watchdog.lock);
	keel_stall_fn fn = loop->watch.fn;
	void *arg = loop->watch.arg;

	pthread_mutex_unlock(&watchdog.lock);
	/* A stall is when to look for tasks stuck for good, too: with the
	 * default reporter the cycles go to stderr after its line; a
	 * reporter of one's own may call keel_loop_deadlocks(). */
	stall_deadlocks(loop, fn != NULL);
	if (!fn)
		return;
	char site[256];

	if (resumed_from)
		snprintf(site, sizeof(site), "%s:%d %s", resumed_from->file,
			 resumed_from->line, resumed_from->what);
	else
		snprintf(site, sizeof(site), "its start");
	fn(loop, t->type->name, site, ns, arg);
}

/* ---- task dump --------------------------------------------------------- */

static const char *task_state(const struct keel_task *t)
{
	if (t->flags & KEEL__T_EXITED)
		return t->inflight ? "zombie" : "exited";
	if (t->flags & KEEL__T_QUEUED)
		return "ready";
	if (t->flags & KEEL__T_WAITING)
		return "waiting";
	return "running";
}

/* Serialises the writes of dumps: loops on several threads (SIGUSR1 in a
 * runtime) dump at the same time to the same stderr. */
static pthread_mutex_t dump_lock = PTHREAD_MUTEX_INITIALIZER;

/* All of `buf`, in as few writes as `fd` takes, none of another dump's in
 * between. */
static int dump_write(int fd, const char *buf, size_t len)
{
	int err = 0;

	pthread_mutex_lock(&dump_lock);
	while (len) {
		ssize_t n = write(fd, buf, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			err = -errno;
			break;
		}
		buf += n;
		len -= (size_t)n;
	}
	pthread_mutex_unlock(&dump_lock);
	return err;
}

/* ---- deadlocks ---------------------------------------------------------- */

int keel_loop_deadlocks(struct keel_loop *loop, char *buf, size_t len)
{
	return keel__deadlock_check(loop, buf, len, NULL);
}

/* The deadlock lines of `loop`, if any, onto `out` (a dump, a report). */
static int deadlocks_to(struct keel_loop *loop, FILE *out)
{
	size_t need = 0;
	int n = keel__deadlock_check(loop, NULL, 0, &need);
	char *text;

	if (n <= 0)
		return n;
	text = malloc(need + 1);
	if (!text)
		return -ENOMEM;
	/* The same graph: nothing ran in between. Counted once, above. */
	n = keel__deadlock_check(loop, text, need + 1, NULL);
	if (n > 0)
		fputs(text, out);
	free(text);
	return n;
}

/* Check after a stall; write the cycles to stderr unless `quiet`. */
static void stall_deadlocks(struct keel_loop *loop, bool quiet)
{
	char *text = NULL;
	size_t len = 0;
	FILE *out = quiet ? NULL : open_memstream(&text, &len);

	if (!out) {
		keel__deadlock_check(loop, NULL, 0, NULL);
		return;
	}
	int n = deadlocks_to(loop, out);

	if (!fclose(out) && n > 0)
		dump_write(STDERR_FILENO, text, len);
	free(text);
}

int keel_loop_dump(struct keel_loop *loop, int fd)
{
	struct keel__core *c = &loop->io.core;
	struct keel__ledger *l = &loop->io.ledger;
	uint64_t now = keel__clock_now();
	char *text = NULL;
	size_t len = 0;
	/* Built in memory, then written at once (a stdio stream on `fd`
	 * would flush it a buffer at a time, between another loop's). */
	FILE *out = open_memstream(&text, &len);
	int listed = 0, err;

	if (!out)
		return -errno;
	fprintf(out,
		"keel: task dump: %llu live, %llu zombies, %u ops in "
		"flight, %u timers\n",
		(unsigned long long)keel__tasks_live(c),
		(unsigned long long)c->count.zombies, l->inuse, c->timers.n);
	for (uint32_t i = 0; i < c->nslots; i++) {
		struct keel_task *t = c->slots[i].task;

		if (!t)
			continue;
		listed++;
		fprintf(out, "  task %u %s [%s, prio %u]", i, t->type->name,
			task_state(t), t->prio);
		if (t->at)
			fprintf(out, " at %s:%d %s", t->at->file, t->at->line,
				t->at->what);
		fputc('\n', out);
		for (uint32_t o = t->ops; o; o = keel__op_at(l, o - 1)->next) {
			const struct keel__op *op = keel__op_at(l, o - 1);

			const char *name = keel_opcode_name(op->opcode);

			if (name)
				fprintf(out, "    op %s", name);
			else
				fprintf(out, "    op %u", op->opcode);
			if (op->fd >= 0)
				fprintf(out, " fd %d", op->fd);
			fprintf(out, ", %.3f ms%s\n",
				(double)(now - op->start_ns) / 1e6,
				op->flags & KEEL__OP_CANCEL_SENT
				    ? ", cancelling"
				    : "");
		}
		/* A sleep holds no ledger op (io/sleep.c): shown as one. */
		const struct keel__sleep *s = keel__sleep_of(c, t);

		if (s)
			fprintf(out, "    op %s, %.3f ms\n",
				keel_opcode_name(IORING_OP_TIMEOUT),
				(double)(now - s->start_ns) / 1e6);
	}
	deadlocks_to(loop, out);
	if (fclose(out)) {
		err = -errno;
		free(text);
		return err;
	}
	err = dump_write(fd, text, len);
	free(text);
	return err ? err : listed;
}

/* ---- metrics ------------------------------------------------------------ */

struct metric {
	const char *name;
	enum keel__prom_type type; /* counter or gauge */
	const char *help;
	size_t offset; /* into struct keel_loop_stats */
};

#define STAT(field) offsetof(struct keel_loop_stats, field)

static const struct metric metrics[] = {
    {"keel_loop_turns_total", KEEL__PROM_COUNTER, "Loop turns.", STAT(turns)},
    {"keel_task_steps_total", KEEL__PROM_COUNTER, "Task steps run.",
     STAT(steps)},
    {"keel_tasks_spawned_total", KEEL__PROM_COUNTER, "Tasks spawned.",
     STAT(spawned)},
    {"keel_tasks_exited_total", KEEL__PROM_COUNTER, "Tasks exited.",
     STAT(exited)},
    {"keel_tasks_aborted_total", KEEL__PROM_COUNTER,
     "Tasks aborted by a panic or a fault.", STAT(aborted)},
    {"keel_ring_enters_total", KEEL__PROM_COUNTER, "io_uring_enter calls.",
     STAT(enters)},
    {"keel_ring_sqes_total", KEEL__PROM_COUNTER, "SQEs submitted.", STAT(sqes)},
    {"keel_ring_cqes_total", KEEL__PROM_COUNTER, "CQEs reaped.", STAT(cqes)},
    {"keel_ring_stale_cqes_total", KEEL__PROM_COUNTER,
     "CQEs of a stale generation, dropped.", STAT(stale_cqes)},
    {"keel_ring_sq_full_total", KEEL__PROM_COUNTER,
     "Submits forced by a full SQ.", STAT(sq_full)},
    {"keel_ring_cq_overflows_total", KEEL__PROM_COUNTER,
     "Times the CQ overflowed (nothing lost).", STAT(cq_overflows)},
    {"keel_timers_fired_total", KEEL__PROM_COUNTER, "Timers fired.",
     STAT(timers_fired)},
    {"keel_fault_recoveries_total", KEEL__PROM_COUNTER,
     "Hardware faults turned into task aborts.", STAT(fault_recoveries)},
    {"keel_faults_injected_total", KEEL__PROM_COUNTER,
     "Faults injected into I/O (KEEL_FAULTS).", STAT(faults_injected)},
    {"keel_ops_refused_total", KEEL__PROM_COUNTER,
     "Ops a restricted ring refused before the kernel (KEEL_LOOP_RESTRICT).",
     STAT(ops_refused)},
    {"keel_stalls_total", KEEL__PROM_COUNTER,
     "Steps that ran longer than the stall threshold.", STAT(stalls)},
    {"keel_deadlocks_detected_total", KEEL__PROM_COUNTER,
     "Wait-for cycles among tasks found by deadlock checks.", STAT(deadlocks)},
    {"keel_zc_sends_total", KEEL__PROM_COUNTER, "SEND_ZC requests.",
     STAT(zc_sends)},
    {"keel_zc_copied_total", KEEL__PROM_COUNTER,
     "SEND_ZC requests the kernel copied anyway.", STAT(zc_copied)},
    {"keel_multishot_rearms_total", KEEL__PROM_COUNTER,
     "Multishot streams re-armed after a final CQE.", STAT(multishot_rearms)},
    {"keel_bufring_enobufs_total", KEEL__PROM_COUNTER,
     "Recv streams that found their buffer ring empty.", STAT(enobufs)},
    {"keel_accept_backoffs_total", KEEL__PROM_COUNTER,
     "Accepts paused for lack of descriptors or memory.",
     STAT(accept_backoffs)},
    {"keel_chunks_lent_total", KEEL__PROM_COUNTER,
     "Received chunks handed to tasks.", STAT(chunks_lent)},
    {"keel_bufs_in_use", KEEL__PROM_GAUGE,
     "Ring buffers held by tasks or queued in streams.", STAT(bufs_in_use)},
    {"keel_tasks_live", KEEL__PROM_GAUGE, "Tasks spawned and not exited.",
     STAT(tasks_live)},
    {"keel_tasks_zombie", KEEL__PROM_GAUGE,
     "Exited tasks whose ops are still in flight.", STAT(zombies)},
    {"keel_ops_inflight", KEEL__PROM_GAUGE, "Ops the kernel still owns.",
     STAT(ops_inflight)},
    {"keel_timers_armed", KEEL__PROM_GAUGE, "Timers armed.",
     STAT(timers_armed)},
};

/*
 * A loop's counters as the calling thread may read them: live for its own
 * loop (or a loop of no runtime of this thread: the caller vouches), and
 * for another loop of this thread's runtime the copy it published
 * (keel_runtime_loop_stats()), because reading another thread's live
 * counters is a data race. Returns whether they are live.
 */
static bool stats_for_render(struct keel_loop *l, struct keel_loop_stats *st)
{
	struct keel_runtime *rt = keel_runtime_current();

	if (rt && keel__current_core != &l->io.core)
		for (unsigned j = 0; j < keel_runtime_size(rt); j++)
			if (keel_runtime_loop(rt, j) == l) {
				keel_runtime_loop_stats(rt, j, st);
				return false;
			}
	keel_loop_stats(l, st);
	return true;
}

/* "0.000001024": ns as seconds, exactly, for an le label. */
static void seconds_label(char *out, size_t len, uint64_t ns)
{
	snprintf(out, len, "%llu.%09llu",
		 (unsigned long long)(ns / 1000000000u),
		 (unsigned long long)(ns % 1000000000u));
}

/*
 * Op latency by opcode (io/ledger.c keeps it, struct keel__op_lat), the
 * loops' tables merged: one series per opcode that any of them has used.
 * Each count is read once with a relaxed load (the tables are another
 * thread's single-writer counters), and the cumulative buckets and _count
 * come from those same loads, so what is printed is consistent.
 */
static void render_op_latency(struct keel__prom *p,
			      struct keel_loop *const *loops, unsigned n)
{
	const char *h = "keel_op_duration_seconds";
	char le[32], num[16];
	const char *name;

	keel__prom_family(p, h, KEEL__PROM_HISTOGRAM,
			  "Time from an op's submission to its completion, "
			  "by io_uring opcode, on the loop's clock (to the "
			  "turn); sleeps and multishot streams are left out.");
	for (unsigned op = 0; op < KEEL__LAT_OPCODES; op++) {
		struct keel__op_lat sum = {0};
		bool used = false;
		uint64_t cum = 0;

		for (unsigned i = 0; i < n; i++) {
			const struct keel__op_lat *t = __atomic_load_n(
			    &loops[i]->io.op_lat[op], __ATOMIC_ACQUIRE);

			if (!t)
				continue;
			used = true;
			for (unsigned b = 0; b < KEEL__LAT_BUCKETS; b++)
				sum.bucket[b] += __atomic_load_n(
				    &t->bucket[b], __ATOMIC_RELAXED);
			sum.sum_ns +=
			    __atomic_load_n(&t->sum_ns, __ATOMIC_RELAXED);
		}
		if (!used)
			continue;
		/* An opcode newer than keel's names: its number, still one
		 * label value per opcode. */
		name = keel_opcode_name(op);
		if (!name) {
			snprintf(num, sizeof(num), "op%u", op);
			name = num;
		}
		for (unsigned b = 0; b < KEEL__LAT_BUCKETS; b++) {
			cum += sum.bucket[b];
			keel__prom_sample(p, h, "_bucket");
			keel__prom_label(p, "op", name);
			if (b + 1 < KEEL__LAT_BUCKETS) {
				seconds_label(
				    le, sizeof(le),
				    1ull << (b + KEEL__LAT_UNIT_SHIFT));
				keel__prom_label(p, "le", le);
			} else {
				keel__prom_label(p, "le", "+Inf");
			}
			keel__prom_value(p, cum);
		}
		keel__prom_sample(p, h, "_sum");
		keel__prom_label(p, "op", name);
		keel__prom_value_ns(p, sum.sum_ns);
		keel__prom_sample(p, h, "_count");
		keel__prom_label(p, "op", name);
		keel__prom_value(p, cum);
	}
}

size_t keel_metrics_render(struct keel_loop *const *loops, unsigned n,
			   char *buf, size_t len)
{
	struct keel__prom p;
	struct keel_loop_stats *st = calloc(n ? n : 1, sizeof(*st));
	bool *live = calloc(n ? n : 1, sizeof(*live));

	keel__prom_init(&p, buf, len);
	if (!st || !live) {
		free(st);
		free(live);
		return keel__prom_end(&p);
	}
	for (unsigned i = 0; i < n; i++)
		live[i] = stats_for_render(loops[i], &st[i]);
	for (size_t m = 0; m < sizeof(metrics) / sizeof(metrics[0]); m++) {
		keel__prom_family(&p, metrics[m].name, metrics[m].type,
				  metrics[m].help);
		for (unsigned i = 0; i < n; i++) {
			uint64_t v;

			memcpy(&v, (char *)&st[i] + metrics[m].offset,
			       sizeof(v));
			keel__prom_sample(&p, metrics[m].name, NULL);
			keel__prom_label_uint(&p, "loop", i);
			keel__prom_value(&p, v);
		}
	}
	/* CQEs reaped per wake: how well completions batch. Only for the
	 * loops whose live counters this thread may read (the published
	 * copy has no histogram). */
	const char *h = "keel_ring_cqes_per_wake";

	keel__prom_family(&p, h, KEEL__PROM_HISTOGRAM,
			  "CQEs reaped per wake-up of the loop.");
	for (unsigned i = 0; i < n; i++) {
		const struct keel_loop *l = loops[i];
		uint64_t cum = 0;

		if (!live[i])
			continue;
		for (unsigned b = 0; b < KEEL__WAKE_BUCKETS; b++) {
			cum += l->cqes_per_wake[b];
			keel__prom_sample(&p, h, "_bucket");
			keel__prom_label_uint(&p, "loop", i);
			if (b + 1 < KEEL__WAKE_BUCKETS)
				keel__prom_label_uint(&p, "le", (1u << b) >> 1);
			else
				keel__prom_label(&p, "le", "+Inf");
			keel__prom_value(&p, cum);
		}
		keel__prom_sample(&p, h, "_sum");
		keel__prom_label_uint(&p, "loop", i);
		keel__prom_value(&p, l->io.count.cqes);
		keel__prom_sample(&p, h, "_count");
		keel__prom_label_uint(&p, "loop", i);
		keel__prom_value(&p, cum);
	}
	render_op_latency(&p, loops, n);
	free(st);
	free(live);
	return keel__prom_end(&p);
}
