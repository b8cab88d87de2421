/* SPDX-License-Identifier: MIT */
/*
 * trace_check.h: the runner's check of a trace file (trace.c).
 */
#ifndef KEEL_SIM_TRACE_CHECK_H
#define KEEL_SIM_TRACE_CHECK_H

#include <stdbool.h>
#include <stdint.h>

struct sim_trace_check {
	bool failed;
	char why[256];	 /* the first thing wrong with it */
	uint64_t hash;	 /* of every event and the text it names */
	uint64_t events; /* events read */
	uint64_t ops;	 /* ops submitted */
	uint64_t tasks;	 /* task lifetimes */
	uint32_t loops;
};

/* Read and check the trace at `path` (see trace.c for what is checked). */
void sim_trace_check(const char *path, struct sim_trace_check *out);

#endif
