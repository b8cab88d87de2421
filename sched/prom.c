/* SPDX-License-Identifier: MIT */
/*
 * prom.c: the Prometheus text writer (format 0.0.4) that renders every
 * keel metric: loops (sched/introspect.c) and supervisors
 * (supervise/sup_info.c).
 *
 * It owns two rules of the format so that no caller has to remember them:
 * escaping (help text: backslash and newline; label values: backslash,
 * double quote and newline) and the shape of a line (name, optional
 * {key="value",...}, one space, the value). Output follows snprintf: the
 * text is cut where the buffer ends, always NUL-terminated when len > 0,
 * and the length the whole text needs is counted on, so that a caller can
 * size a buffer with a first call of len 0.
 */
#include "prom.h"

#include <string.h>

/* Append n bytes, as much as fits; need counts them all. */
static void put(struct keel__prom *p, const char *s, size_t n)
{
	if (p->need + 1 < p->len) {
		size_t room = p->len - 1 - p->need;
		size_t k = n < room ? n : room;

		memcpy(p->buf + p->need, s, k);
		p->buf[p->need + k] = '\0';
	}
	p->need += n;
}

static void put_str(struct keel__prom *p, const char *s)
{
	put(p, s, strlen(s));
}

/* Decimal digits by hand: snprintf's format parsing would be most of the
 * cost of a sample line. */
static void put_uint(struct keel__prom *p, uint64_t v)
{
	char num[20]; /* UINT64_MAX has 20 digits */
	size_t i = sizeof(num);

	do {
		num[--i] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	put(p, num + i, sizeof(num) - i);
}

/* Copy s, writing each byte that `special` names as a backslash escape
 * ('\n' as "\\n"). */
static void put_escaped(struct keel__prom *p, const char *s,
			const char *special)
{
	const char *run = s;

	for (; *s; s++) {
		if (!strchr(special, *s))
			continue;
		put(p, run, (size_t)(s - run));
		put(p, *s == '\n' ? "\\n" : *s == '"' ? "\\\"" : "\\\\", 2);
		run = s + 1;
	}
	put(p, run, (size_t)(s - run));
}

void keel__prom_init(struct keel__prom *p, char *buf, size_t len)
{
	memset(p, 0, sizeof(*p));
	p->buf = buf;
	p->len = buf ? len : 0;
	if (p->len)
		buf[0] = '\0';
}

void keel__prom_family(struct keel__prom *p, const char *name,
		       enum keel__prom_type type, const char *help)
{
	static const char *const types[] = {"counter", "gauge", "histogram"};

	put_str(p, "# HELP ");
	put_str(p, name);
	put_str(p, " ");
	put_escaped(p, help, "\\\n");
	put_str(p, "\n# TYPE ");
	put_str(p, name);
	put_str(p, " ");
	put_str(p, types[type]);
	put_str(p, "\n");
}

void keel__prom_sample(struct keel__prom *p, const char *name,
		       const char *suffix)
{
	put_str(p, name);
	if (suffix)
		put_str(p, suffix);
	p->labelled = false;
}

/* Open the braces, or separate from the previous label; then key=". */
static void label_begin(struct keel__prom *p, const char *key)
{
	put_str(p, p->labelled ? "," : "{");
	p->labelled = true;
	put_str(p, key);
	put_str(p, "=\"");
}

void keel__prom_label(struct keel__prom *p, const char *key, const char *value)
{
	label_begin(p, key);
	put_escaped(p, value, "\\\"\n");
	put_str(p, "\"");
}

void keel__prom_label_uint(struct keel__prom *p, const char *key,
			   uint64_t value)
{
	label_begin(p, key);
	put_uint(p, value);
	put_str(p, "\"");
}

void keel__prom_value(struct keel__prom *p, uint64_t value)
{
	put_str(p, p->labelled ? "} " : " ");
	put_uint(p, value);
	put_str(p, "\n");
	p->labelled = false;
}

/* Seconds from nanoseconds, exactly (no floating point): "S.NNNNNNNNN". */
void keel__prom_value_ns(struct keel__prom *p, uint64_t ns)
{
	char frac[10];
	uint64_t f = ns % 1000000000u;

	put_str(p, p->labelled ? "} " : " ");
	put_uint(p, ns / 1000000000u);
	frac[0] = '.';
	for (int i = 9; i >= 1; i--, f /= 10)
		frac[i] = (char)('0' + f % 10);
	put(p, frac, sizeof(frac));
	put_str(p, "\n");
	p->labelled = false;
}

size_t keel__prom_end(const struct keel__prom *p)
{
	return p->need;
}
