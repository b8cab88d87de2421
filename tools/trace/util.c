/* SPDX-License-Identifier: MIT */
/*
 * util.c: keel-trace's small helpers: memory that never returns NULL (an
 * allocation failure is fatal, through die()), growable arrays, a map from
 * 64-bit keys to 32-bit values, and numbers and strings as text and JSON.
 */
#include "keel-trace.h"

/* ---- memory ----------------------------------------------------------- */

void *xrealloc(void *p, size_t n, size_t size)
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

void *xcalloc(size_t n, size_t size)
{
	void *p = calloc(n ? n : 1, size ? size : 1);

	if (!p)
		die("out of memory");
	return p;
}

/* Make room for `need` elements of `size` bytes in *p (capacity *cap). */
void *grow(void *p, size_t *cap, size_t need, size_t size)
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
void sort(void *v, size_t n, size_t size,
	  int (*cmp)(const void *, const void *))
{
	if (n > 1)
		qsort(v, n, size, cmp);
}

/* ---- a map from 64-bit keys to 32-bit values (open addressing) -------- */

static size_t map_hash(uint64_t key, size_t cap)
{
	key ^= key >> 33; /* murmur3's finalizer: ids and slots are dense */
	key *= 0xff51afd7ed558ccdull;
	key ^= key >> 33;
	return (size_t)key & (cap - 1);
}

size_t map_find(const struct map *m, uint64_t key)
{
	size_t i = map_hash(key, m->cap);

	while (m->vals[i] != NOT_FOUND && m->keys[i] != key)
		i = (i + 1) & (m->cap - 1);
	return i;
}

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

void map_put(struct map *m, uint64_t key, uint32_t val)
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

void map_free(struct map *m)
{
	free(m->keys);
	free(m->vals);
	memset(m, 0, sizeof(*m));
}

/* ---- names and numbers ------------------------------------------------ */

/* An opcode's name (the library's table); an unknown one is "op<N>". */
const char *op_name(unsigned op, char buf[16])
{
	const char *name = keel_opcode_name(op);

	if (name)
		return name;
	snprintf(buf, 16, "op%u", op);
	return buf;
}

/* ns as text with three significant digits: 850ns, 12.3us, 1.05ms, 2.00s. */
const char *fmt_ns(uint64_t ns, char buf[24])
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
unsigned log2_bucket(uint64_t v)
{
	return v ? 64 - (unsigned)__builtin_clzll(v) : 0;
}

/* The lowest value of a log2 bucket. */
uint64_t bucket_floor(unsigned k)
{
	return k ? 1ull << (k - 1) : 0;
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
void json_str(FILE *f, const char *s)
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
void json_us(FILE *f, uint64_t ns)
{
	fprintf(f, "%" PRIu64 ".%03u", ns / 1000, (unsigned)(ns % 1000));
}
