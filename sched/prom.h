/* SPDX-License-Identifier: MIT */
/*
 * prom.h: the one Prometheus text writer (exposition format 0.0.4) behind
 * keel_metrics_render() (sched/introspect.c) and keel_sup_metrics_render()
 * (supervise/sup_info.c). Private to the library.
 *
 * It writes into a caller's buffer as snprintf does: what does not fit is
 * cut, the text stays NUL-terminated, and keel__prom_end() returns the
 * length the whole text needs. It escapes what the format says must be
 * escaped; naming (counters end in _total, times in _seconds) and bounded
 * label sets are the caller's part, checked by the tests.
 */
#ifndef KEEL_SCHED_PROM_H
#define KEEL_SCHED_PROM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum keel__prom_type {
	KEEL__PROM_COUNTER,
	KEEL__PROM_GAUGE,
	KEEL__PROM_HISTOGRAM,
};

struct keel__prom {
	char *buf;
	size_t len;
	size_t need;   /* the length of the whole text so far */
	bool labelled; /* the sample being written has its '{' open */
};

/* Start writing into buf (len may be 0, buf then NULL). */
void keel__prom_init(struct keel__prom *p, char *buf, size_t len);

/* A family's "# HELP" and "# TYPE" lines; its samples follow. */
void keel__prom_family(struct keel__prom *p, const char *name,
		       enum keel__prom_type type, const char *help);

/*
 * One sample in three steps: keel__prom_sample() writes the name (with a
 * suffix such as "_bucket", or NULL), keel__prom_label*() add labels, and
 * keel__prom_value() ends the line.
 */
void keel__prom_sample(struct keel__prom *p, const char *name,
		       const char *suffix);
void keel__prom_label(struct keel__prom *p, const char *key, const char *value);
void keel__prom_label_uint(struct keel__prom *p, const char *key,
			   uint64_t value);
void keel__prom_value(struct keel__prom *p, uint64_t value);

/* keel__prom_value() for a time: `ns` written as seconds. */
void keel__prom_value_ns(struct keel__prom *p, uint64_t ns);

/* The length the whole text needs (>= len: it was cut). */
size_t keel__prom_end(const struct keel__prom *p);

#endif
