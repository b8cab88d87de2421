/* SPDX-License-Identifier: MIT */
/*
 * http/files.h: the pure parts of the static-file responder (files.c),
 * apart so that test/test_http_files.c can check them without a server:
 * the request path's decoding, Range, entity tags and HTTP dates, and the
 * content type by extension. None of them allocates or blocks.
 */
#ifndef KEEL_HTTP_FILES_H
#define KEEL_HTTP_FILES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

/*
 * Turn the request path `in` (`len` bytes, the part after the route's
 * prefix; percent-decoded when `percent`, else taken as a file name) into
 * `out`, a path relative to the served root: no leading '/', empty and
 * "." segments dropped, a trailing '/' kept (so a regular file asked for
 * as a directory fails with ENOTDIR), "" for the root itself.
 * NUL-terminated. Returns the length, -EINVAL (a bad %-escape, a NUL, a
 * ".." segment, before or after decoding) or -ENAMETOOLONG (more than
 * cap - 1 bytes).
 */
int keel__http_path_decode(const char *in, size_t len, bool percent, char *out,
			   size_t cap);

/*
 * A Range header's value against a representation of `size` bytes:
 * 1 with [*first, *last] (inclusive) for one satisfiable byte range;
 * -1 for one unsatisfiable range (416); 0 when the header is to be
 * ignored and the whole representation sent (several ranges, another
 * unit, or anything that does not parse, as nginx does).
 */
int keel__http_range_parse(const char *v, size_t len, uint64_t size,
			   uint64_t *first, uint64_t *last);

/*
 * The strong entity tag of a file of `size` bytes last modified at
 * `mtime_ns` (ns since the epoch): "\"<mtime ns hex>-<size hex>\"", like
 * nginx's "\"%xT-%xO\"" with the nanoseconds kept. Returns its length
 * (cap >= 36 is always enough).
 */
size_t keel__http_etag(char *buf, size_t cap, uint64_t mtime_ns, uint64_t size);

/*
 * Does an If-None-Match value (a list of entity tags, or "*") match
 * `etag` by the weak comparison (W/ ignored on both)? A malformed list
 * matches nothing from the first bad member on.
 */
bool keel__http_etag_match(const char *v, size_t len, const char *etag,
			   size_t etag_len);

/* An IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT"): 29 bytes and a NUL
 * into buf[30]. */
void keel__http_date_format(char buf[30], int64_t t);

/*
 * Parse an HTTP date as RFC 9110 says a recipient must: IMF-fixdate, and
 * the obsolete RFC 850 ("Sunday, 06-Nov-94 08:49:37 GMT") and asctime
 * ("Sun Nov  6 08:49:37 1994") forms. Returns 0 with *t (seconds since
 * the epoch) or -EINVAL.
 */
int keel__http_date_parse(const char *v, size_t len, int64_t *t);

/* The Content-Type for a path by its extension (a small table,
 * case-insensitive), else "application/octet-stream". Static string. */
const char *keel__http_content_type(const char *path, size_t len);

#endif
