/* SPDX-License-Identifier: MIT */
/*
 * keel/trace.h: the bundled tracer: recording, and the file format that
 * tools/keel-trace decodes.
 *
 * Recording is off by default; then every event site costs one predictable
 * branch. Turn it on with keel_trace_start() or the environment variable
 * KEEL_TRACE=<output file> (read when the first loop is created; if the file
 * cannot be written, one line on stderr says so and the loops run untraced).
 * Each loop appends fixed-size binary events to its own buffer (no locks, no
 * atomics on the hot path); full buffers are handed to a writer thread, so
 * the loops never stop to write. When the writer falls behind, events are
 * dropped and counted, and the count is written to the file (loops of the
 * simulated kernel, keel/sim.h, wait for the writer instead: their traces
 * are compared run against run).
 *
 * File format (little-endian), version 1:
 *
 *	file   := header record*
 *	header := "KEELTRC1" u32 version u32 event_size(=32)
 *	          u64 start_monotonic_ns u64 start_realtime_ns
 *	record := u32 kind u32 loop u32 count u32 extra, then a body:
 *	  kind 1 EVENTS  body: `count` events of 32 bytes; `extra`: events the
 *	                 loop dropped just before these (0 if none)
 *	  kind 2 STRING  body: `count` bytes of UTF-8 (no NUL), padded to a
 *	                 multiple of 8; `extra`: the string's id (ids are per
 *	                 file, start at 1; 0 means "no string")
 *	  kind 3 LOOP    body: none; `extra`: the loop's thread id (names the
 *	                 loop's timeline); `count`: 0
 *	An event refers to a string only after that string's record.
 *	A file ends after its last complete record; a truncated record means a
 *	truncated file.
 */
#ifndef KEEL_TRACE_H
#define KEEL_TRACE_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define KEEL_TRACE_MAGIC   "KEELTRC1"
#define KEEL_TRACE_VERSION 1

enum keel_trace_record {
	KEEL_TRACE_REC_EVENTS = 1,
	KEEL_TRACE_REC_STRING = 2,
	KEEL_TRACE_REC_LOOP = 3,
};

/*
 * Event types. `task` is the task's slot in its loop (a slot is reused
 * after a task is freed: a SPAWN starts a new lifetime). Fields a/b:
 */
enum keel_trace_type {
	KEEL_EV_SPAWN = 1, /* a: name string, b: spawner's slot+1 (0: none) */
	KEEL_EV_STEP_BEGIN = 2, /* a: -, b: - */
	KEEL_EV_STEP_END = 3,	/* a: 1 suspended, 2 exited, 3 aborted */
	KEEL_EV_WAIT = 4,	/* after STEP_END a=1; a: await site string */
	KEEL_EV_EXIT = 5,	/* a: exit status (int64) */
	KEEL_EV_ABORT = 6,	/* a: message, b: "file:line" of the panic */
	KEEL_EV_OP_SUBMIT = 7,	/* op: opcode; a: op id */
	KEEL_EV_OP_COMPLETE =
	    8, /* op: opcode; a: result (int64), b: latency ns */
	KEEL_EV_TIMER_FIRE = 9,	   /* a: lateness ns */
	KEEL_EV_LOOP_IDLE = 10,	   /* a: wait asked (ns, -1: until I/O) */
	KEEL_EV_LOOP_WAKE = 11,	   /* a: CQEs reaped */
	KEEL_EV_MB_SEND = 12,	   /* a: mailbox id, b: depth after */
	KEEL_EV_MB_RECV = 13,	   /* a: mailbox id, b: depth after */
	KEEL_EV_MB_FULL = 14,	   /* a: mailbox id, b: policy */
	KEEL_EV_MB_DROP = 15,	   /* a: mailbox id, b: drops so far */
	KEEL_EV_MSG_SEND = 16,	   /* cross-loop; a: flow id, b: target loop */
	KEEL_EV_MSG_RECV = 17,	   /* cross-loop; a: flow id, b: source loop */
	KEEL_EV_SUP_RESTART = 18,  /* a: child name string, b: restarts */
	KEEL_EV_SUP_ESCALATE = 19, /* a: supervisor name string */
	KEEL_EV_STALL = 20,    /* a: step duration ns, b: resume site string */
	KEEL_EV_INFLIGHT = 21, /* a: ops in flight (counter sample) */
	/* An injected fault (keel_loop_inject_faults): op: opcode; a: kind
	 * (KEEL_TRACE_FAULT_*), b: the errno (positive), the shortened
	 * length, or the delay ns (0 for a reorder). */
	KEEL_EV_FAULT = 22,
	/* keel_trace_mark(): a: the name (string), b: the argument (int64). */
	KEEL_EV_MARK = 23,
};

/* KEEL_EV_FAULT kinds. */
enum keel_trace_fault {
	KEEL_TRACE_FAULT_ERROR = 1,   /* the op failed with errno b */
	KEEL_TRACE_FAULT_SHORT = 2,   /* the op asked for only b bytes */
	KEEL_TRACE_FAULT_DELAY = 3,   /* the op was held back b ns */
	KEEL_TRACE_FAULT_REORDER = 4, /* the op was held to the next enter */
};

/* One event: 32 bytes. */
struct keel_trace_event {
	uint64_t ts;  /* ns since the trace started (CLOCK_MONOTONIC) */
	uint8_t type; /* enum keel_trace_type */
	uint8_t op;   /* IORING_OP_* for op events: keel_opcode_name() */
	uint16_t flags;
	uint32_t task; /* task slot, UINT32_MAX: none */
	uint64_t a;
	uint64_t b;
};

/*
 * Start recording every loop of the process to `path` (loops created
 * before and after). Returns 0, -EALREADY if already recording, or a
 * negative errno from opening the file.
 * Ownership: `path` is only read; keel owns the file until
 * keel_trace_stop().
 */
int keel_trace_start(const char *path);

/*
 * Stop recording and close the file. The calling thread's loop (if it runs
 * one, between turns too) is flushed now; a loop on another thread has its
 * events written when it is destroyed or runs a turn before this call, so
 * call it once the loops have stopped (after keel_loop_run() or
 * keel_runtime_run() returned); with KEEL_TRACE it runs at exit. Returns
 * the number of events dropped in all (0 if none).
 * Ownership: the file is closed; it is the caller's to read.
 */
int64_t keel_trace_stop(void);

/*
 * Whether recording is on.
 * Ownership: nothing changes hands.
 */
int keel_trace_enabled(void);

/*
 * Record an instant event, KEEL_EV_MARK, on the loop running on the
 * calling thread (from its tasks and callbacks): `name` (copied into the
 * file) and `arg`, which the caller gives its own meaning; tools/keel-trace
 * shows it at its time on the loop's timeline. For rare moments (a
 * connection's state changed): each mark writes its name into the file
 * anew. A no-op while not recording, off a loop's thread, or when `name`
 * is NULL.
 * Ownership: `name` is only read.
 */
void keel_trace_mark(const char *name, int64_t arg);

/*
 * The name of an io_uring opcode (IORING_OP_*: a trace event's `op`, an op
 * in a task dump), as liburing spells the constant, lower case and without
 * IORING_OP_: "recv", "send_zc", "futex_wait". Every opcode up to
 * IORING_OP_PIPE (62, the last Linux 6.18 knows) has one. Returns NULL for
 * a number it does not know; print the number then.
 * Ownership: the string is static: never free it; it lives as long as the
 * program.
 */
const char *keel_opcode_name(unsigned opcode);

#ifdef __cplusplus
}
#endif
#endif
