/* SPDX-License-Identifier: MIT */
/*
 * http/files_parse.c: the pure parts of the static-file responder (see
 * files.h): the request path's percent-decoding and the checks that keep
 * it beneath the root, the Range header, entity tags and their
 * If-None-Match comparison, HTTP dates both ways, and content types.
 *
 * Everything here reads a client's bytes, so every parser bounds every
 * index by the length it was given (header values are not NUL-terminated)
 * and answers "ignore" or -EINVAL rather than guess.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "files.h"

/* ---- the path --------------------------------------------------------- */

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/*
 * Segments are checked after decoding, so "%2e%2e" is as much a ".." as
 * "..", and a decoded "%2f" separates segments like '/' (the file system
 * would take it so anyway). The root is also enforced by openat2's
 * RESOLVE_BENEATH in files.c; this check is what turns the plain cases
 * into a clean 400 before the file system is asked.
 */
int keel__http_path_decode(const char *in, size_t len, bool percent, char *out,
			   size_t cap)
{
	size_t o = 0, seg = 0; /* seg: where the current segment starts */
	size_t i;

	if (cap == 0)
		return -ENAMETOOLONG;
	for (i = 0; i <= len; i++) {
		char c;

		if (i == len) {
			c = '/'; /* ends the last segment */
		} else if (in[i] == '%' && percent) {
			int hi, lo;

			if (len - i < 3)
				return -EINVAL;
			hi = hexval(in[i + 1]);
			lo = hexval(in[i + 2]);
			if (hi < 0 || lo < 0)
				return -EINVAL;
			c = (char)(hi << 4 | lo);
			i += 2;
			if (c == '\0')
				return -EINVAL;
		} else {
			c = in[i];
			if (c == '\0')
				return -EINVAL;
		}
		if (c != '/') {
			if (o + 1 >= cap)
				return -ENAMETOOLONG;
			out[o++] = c;
			continue;
		}
		/* a segment ends at out[seg..o) */
		if (o - seg == 2 && out[seg] == '.' && out[seg + 1] == '.')
			return -EINVAL;
		if (o == seg || (o - seg == 1 && out[seg] == '.')) {
			o = seg; /* "" or ".": drop it */
		} else if (i < len) {
			if (o + 1 >= cap)
				return -ENAMETOOLONG;
			out[o++] = '/';
			seg = o;
		}
	}
	/* A '/' that ended the request was kept (appended while i < len):
	 * opening "file/" then fails with ENOTDIR, as it should. */
	out[o] = '\0';
	return (int)o;
}

/* ---- Range -------------------------------------------------------------- */

/* Digits at v[*i..): 0 with *n, or -1 (none, or over 2^63). */
static int parse_u64(const char *v, size_t len, size_t *i, uint64_t *n)
{
	size_t start = *i;
	uint64_t x = 0;

	while (*i < len && v[*i] >= '0' && v[*i] <= '9') {
		if (x > (UINT64_MAX / 2 - 9) / 10)
			return -1;
		x = x * 10 + (uint64_t)(v[*i] - '0');
		(*i)++;
	}
	if (*i == start)
		return -1;
	*n = x;
	return 0;
}

static void skip_ows(const char *v, size_t len, size_t *i)
{
	while (*i < len && (v[*i] == ' ' || v[*i] == '\t'))
		(*i)++;
}

int keel__http_range_parse(const char *v, size_t len, uint64_t size,
			   uint64_t *first, uint64_t *last)
{
	uint64_t a, b;
	size_t i = 0;

	skip_ows(v, len, &i);
	if (len - i < 6 || strncasecmp(v + i, "bytes=", 6) != 0)
		return 0;
	i += 6;
	skip_ows(v, len, &i);
	if (i < len && v[i] == '-') { /* -n: the last n bytes */
		i++;
		if (parse_u64(v, len, &i, &b) < 0)
			return 0;
		skip_ows(v, len, &i);
		if (i != len)
			return 0; /* several ranges, or garbage */
		if (b == 0 || size == 0)
			return -1;
		*first = b >= size ? 0 : size - b;
		*last = size - 1;
		return 1;
	}
	if (parse_u64(v, len, &i, &a) < 0 || i == len || v[i] != '-')
		return 0;
	i++;
	b = UINT64_MAX;
	if (i < len && v[i] >= '0' && v[i] <= '9' &&
	    parse_u64(v, len, &i, &b) < 0)
		return 0;
	skip_ows(v, len, &i);
	if (i != len || b < a)
		return 0; /* RFC 9110 14.1.1: an invalid range-spec is ignored
			   */
	if (a >= size)
		return -1;
	*first = a;
	*last = b >= size ? size - 1 : b;
	return 1;
}

/* ---- entity tags -------------------------------------------------------- */

size_t keel__http_etag(char *buf, size_t cap, uint64_t mtime_ns, uint64_t size)
{
	int n =
	    snprintf(buf, cap, "\"%llx-%llx\"", (unsigned long long)mtime_ns,
		     (unsigned long long)size);

	return n < 0 ? 0 : (size_t)n;
}

/* The opaque tag (quotes included) of our own etag, W/ removed. */
static void opaque(const char **s, size_t *len)
{
	if (*len >= 2 && (*s)[0] == 'W' && (*s)[1] == '/') {
		*s += 2;
		*len -= 2;
	}
}

bool keel__http_etag_match(const char *v, size_t len, const char *etag,
			   size_t etag_len)
{
	size_t i = 0;

	opaque(&etag, &etag_len);
	for (;;) {
		size_t start;

		while (i < len && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
			i++;
		if (i == len)
			return false;
		if (v[i] == '*') /* any current representation: we have one */
			return true;
		if (len - i >= 2 && v[i] == 'W' && v[i + 1] == '/')
			i += 2;
		if (i == len || v[i] != '"')
			return false;
		start = i++;
		while (i < len && v[i] != '"')
			i++;
		if (i == len)
			return false;
		i++;
		if (i - start == etag_len && !memcmp(v + start, etag, etag_len))
			return true;
		skip_ows(v, len, &i);
		if (i < len && v[i] != ',')
			return false;
	}
}

/* ---- dates -------------------------------------------------------------- */

static const char wday_name[7][4] = {"Sun", "Mon", "Tue", "Wed",
				     "Thu", "Fri", "Sat"};
static const char *const wday_long[7] = {"Sunday",    "Monday",	  "Tuesday",
					 "Wednesday", "Thursday", "Friday",
					 "Saturday"};
static const char month_name[12][4] = {"Jan", "Feb", "Mar", "Apr",
				       "May", "Jun", "Jul", "Aug",
				       "Sep", "Oct", "Nov", "Dec"};

/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
 * days_from_civil), and back: no time zone, no lock, no locale. */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
	int64_t era;
	unsigned yoe, doy, doe;

	y -= m <= 2;
	era = (y >= 0 ? y : y - 399) / 400;
	yoe = (unsigned)(y - era * 400);
	doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
	doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	return era * 146097 + (int64_t)doe - 719468;
}

static void civil_from_days(int64_t z, int64_t *y, unsigned *m, unsigned *d)
{
	int64_t era;
	unsigned doe, yoe, doy, mp;

	z += 719468;
	era = (z >= 0 ? z : z - 146096) / 146097;
	doe = (unsigned)(z - era * 146097);
	yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
	doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
	mp = (5 * doy + 2) / 153;
	*d = doy - (153 * mp + 2) / 5 + 1;
	*m = mp < 10 ? mp + 3 : mp - 9;
	*y = (int64_t)yoe + era * 400 + (*m <= 2);
}

static char *two(char *p, unsigned v)
{
	*p++ = (char)('0' + v / 10 % 10);
	*p++ = (char)('0' + v % 10);
	return p;
}

void keel__http_date_format(char buf[30], int64_t t)
{
	int64_t days, secs, y;
	unsigned m, d;
	char *p = buf;

	/* An IMF-fixdate has a four-digit year: clamp to years 0-9999. */
	if (t < -62167219200)
		t = -62167219200;
	if (t > 253402300799)
		t = 253402300799;
	days = t >= 0 ? t / 86400 : -((-t + 86399) / 86400);
	secs = t - days * 86400;
	civil_from_days(days, &y, &m, &d);
	memcpy(p, wday_name[((days % 7) + 11) % 7], 3);
	p += 3;
	*p++ = ',';
	*p++ = ' ';
	p = two(p, d);
	*p++ = ' ';
	memcpy(p, month_name[m - 1], 3);
	p += 3;
	*p++ = ' ';
	p = two(p, (unsigned)(y / 100));
	p = two(p, (unsigned)(y % 100));
	*p++ = ' ';
	p = two(p, (unsigned)(secs / 3600));
	*p++ = ':';
	p = two(p, (unsigned)(secs / 60 % 60));
	*p++ = ':';
	p = two(p, (unsigned)(secs % 60));
	memcpy(p, " GMT", 5);
}

/* A cursor over a header value: each step checks the bytes left. */
struct cur {
	const char *v;
	size_t len, i;
	bool bad;
};

static void lit(struct cur *c, const char *s)
{
	size_t n = strlen(s);

	if (c->bad || c->len - c->i < n || memcmp(c->v + c->i, s, n))
		c->bad = true;
	else
		c->i += n;
}

/* Exactly `n` digits (or, for n == 2 with space_pad, " d"). */
static unsigned num(struct cur *c, unsigned n, bool space_pad)
{
	unsigned x = 0, k;

	if (c->bad || c->len - c->i < n) {
		c->bad = true;
		return 0;
	}
	for (k = 0; k < n; k++) {
		char ch = c->v[c->i + k];

		if (k == 0 && space_pad && ch == ' ')
			continue;
		if (ch < '0' || ch > '9') {
			c->bad = true;
			return 0;
		}
		x = x * 10 + (unsigned)(ch - '0');
	}
	c->i += n;
	return x;
}

static unsigned month(struct cur *c)
{
	unsigned m;

	if (c->bad || c->len - c->i < 3) {
		c->bad = true;
		return 1;
	}
	for (m = 0; m < 12; m++)
		if (!memcmp(c->v + c->i, month_name[m], 3)) {
			c->i += 3;
			return m + 1;
		}
	c->bad = true;
	return 1;
}

static void hms(struct cur *c, unsigned *h, unsigned *mi, unsigned *s)
{
	*h = num(c, 2, false);
	lit(c, ":");
	*mi = num(c, 2, false);
	lit(c, ":");
	*s = num(c, 2, false);
}

int keel__http_date_parse(const char *v, size_t len, int64_t *t)
{
	struct cur c = {v, len, 0, false};
	unsigned d, m, h, mi, s, w;
	int64_t y;

	/* Which form: the weekday is followed by ", " (IMF), "," after a
	 * long name (RFC 850) or " " (asctime). */
	if (len < 4)
		return -EINVAL;
	for (w = 0; w < 7; w++)
		if (!memcmp(v, wday_name[w], 3))
			break;
	if (w == 7)
		return -EINVAL;
	if (v[3] == ',') { /* Sun, 06 Nov 1994 08:49:37 GMT */
		c.i = 4;
		lit(&c, " ");
		d = num(&c, 2, false);
		lit(&c, " ");
		m = month(&c);
		lit(&c, " ");
		y = num(&c, 4, false);
		lit(&c, " ");
		hms(&c, &h, &mi, &s);
		lit(&c, " GMT");
	} else if (v[3] == ' ') { /* Sun Nov  6 08:49:37 1994 */
		c.i = 4;
		m = month(&c);
		lit(&c, " ");
		d = num(&c, 2, true);
		lit(&c, " ");
		hms(&c, &h, &mi, &s);
		lit(&c, " ");
		y = num(&c, 4, false);
	} else { /* Sunday, 06-Nov-94 08:49:37 GMT */
		lit(&c, wday_long[w]);
		lit(&c, ", ");
		d = num(&c, 2, false);
		lit(&c, "-");
		m = month(&c);
		lit(&c, "-");
		y = num(&c, 2, false);
		lit(&c, " ");
		hms(&c, &h, &mi, &s);
		lit(&c, " GMT");
		/*
		 * RFC 9110 5.6.7: a two-digit year more than 50 years in the
		 * future is the most recent past year with those digits. From
		 * now until 2049 that reads 00-49 as 20xx, 50-99 as 19xx;
		 * good enough for a form no client has sent this century.
		 */
		y += y < 50 ? 2000 : 1900;
	}
	if (c.bad || c.i != len || d < 1 || d > 31 || h > 23 || mi > 59 ||
	    s > 60)
		return -EINVAL;
	*t = days_from_civil(y, m, d) * 86400 + h * 3600 + mi * 60 +
	     (s == 60 ? 59 : s);
	return 0;
}

/* ---- content types ------------------------------------------------------ */

static const struct {
	const char *ext;
	const char *type;
} content_types[] = {
    {"html", "text/html; charset=utf-8"},
    {"htm", "text/html; charset=utf-8"},
    {"css", "text/css; charset=utf-8"},
    {"js", "text/javascript; charset=utf-8"},
    {"mjs", "text/javascript; charset=utf-8"},
    {"json", "application/json"},
    {"txt", "text/plain; charset=utf-8"},
    {"png", "image/png"},
    {"jpg", "image/jpeg"},
    {"jpeg", "image/jpeg"},
    {"gif", "image/gif"},
    {"svg", "image/svg+xml"},
    {"ico", "image/x-icon"},
    {"wasm", "application/wasm"},
    {"pdf", "application/pdf"},
};

const char *keel__http_content_type(const char *path, size_t len)
{
	size_t i = len, n;

	while (i > 0 && path[i - 1] != '.' && path[i - 1] != '/')
		i--;
	if (i == 0 || path[i - 1] != '.')
		return "application/octet-stream";
	n = len - i;
	for (size_t k = 0; k < sizeof(content_types) / sizeof(*content_types);
	     k++)
		if (strlen(content_types[k].ext) == n &&
		    !strncasecmp(path + i, content_types[k].ext, n))
			return content_types[k].type;
	return "application/octet-stream";
}
