#!/bin/sh
# SPDX-License-Identifier: MIT
# test_exports.sh: the shared library exports exactly the public API.
# Three sets must be equal: the names keel.map lists, the functions
# `nm -D --defined-only` finds in $BUILD/libkeel.so.*, and the functions
# the public headers declare (keel.h preprocessed, then every top-level
# declaration whose declarator is a keel_* name: static inline functions
# and typedefs excluded). No set may hold an internal keel__* name.
# The same for libkeel-http: keel-http.map, `nm -D` of
# $BUILD/libkeel-http.so.* and what include/keel/http.h itself declares,
# every name a keel_http_* one; and for libkeel-tls (keel-tls.map,
# libkeel-tls.so.*, include/keel/tls.h, keel_tls_* names).
# Builds nothing (BUILD defaults to build). Prints each difference; last
# line "exports: N passed, M failed"; exit status 1 on any failure.
set -u
BUILD=${BUILD:-build}
CC=${CC:-cc}
SUITE=exports
. test/helpers/checks.sh

so=$(ls "$BUILD"/libkeel.so.*.*.* 2>/dev/null | head -n 1)
if [ -z "$so" ]; then
	bad "no $BUILD/libkeel.so.*.*.* (run make first)"
	finish
fi

# The version script: every `name;` line (the `local: *;` is no name).
grep -oE '^[[:space:]]*[A-Za-z_][A-Za-z0-9_]*;' keel.map | tr -d ' \t;' |
	sort -u >"$dir/map"
# The library: defined dynamic symbols, without their @@VERSION (and
# without the version node itself, an absolute symbol).
nm -D --defined-only "$so" | awk '$2 != "A" { sub(/@.*/, "", $3); print $3 }' |
	sort -u >"$dir/nm"
# The headers: brace blocks (struct bodies, inline function bodies) are
# dropped, the rest split into declarations at ';'.
# shellcheck disable=SC2086
if ! $CC -E -P -D_GNU_SOURCE -Iinclude include/keel.h >"$dir/keel.i"; then
	bad "preprocessing include/keel.h"
fi
# decls FILE [HEADER]: the keel_* functions FILE (preprocessed) declares,
# one per line; with HEADER, only those declared in that header (FILE then
# keeps cpp's line markers, which say where each line comes from).
decls() {
	python3 - "$@" <<'PY'
import re, sys
lines, keep = [], len(sys.argv) < 3
for line in open(sys.argv[1]):
    m = re.match(r'# \d+ "([^"]*)"', line)
    if m:
        keep = len(sys.argv) < 3 or m.group(1).endswith(sys.argv[2])
    elif keep:
        lines.append(line)
src = ''.join(lines)
out, depth = [], 0
for ch in src:
    if ch == '{':
        depth += 1
    elif ch == '}':
        depth -= 1
        if depth == 0:
            out.append(';')  # a definition must not run into what follows
    elif depth == 0:
        out.append(ch)
names = set()
for decl in ''.join(out).split(';'):
    decl = ' '.join(decl.split())
    if decl.startswith(('typedef', 'static')):
        continue
    m = re.search(r'\b(keel_\w+)\s*\(', decl)
    if m:
        names.add(m.group(1))
print('\n'.join(sorted(names)))
PY
}
decls "$dir/keel.i" >"$dir/hdr"
sort -u -o "$dir/hdr" "$dir/hdr"

# same A B WHAT: A and B hold the same names; else print the difference.
same() {
	if cmp -s "$dir/$1" "$dir/$2"; then
		ok "$3 ($(wc -l <"$dir/$1") names)"
	else
		bad "$3"
		comm -23 "$dir/$1" "$dir/$2" | sed "s/^/  only in $1: /"
		comm -13 "$dir/$1" "$dir/$2" | sed "s/^/  only in $2: /"
	fi
}

[ -s "$dir/hdr" ] && ok "headers declare functions" || bad "no function found in the headers"
same map nm "keel.map = nm -D $(basename "$so")"
same nm hdr "nm -D = functions declared in include/keel/*.h"
# only SETS PREFIX: no set names an internal keel__ symbol, and every name
# starts with PREFIX.
only() {
	prefix=$1
	shift
	for s in "$@"; do
		if grep -q '^keel__' "$dir/$s"; then
			bad "$s names internal symbols:"
			grep '^keel__' "$dir/$s" | sed 's/^/  /'
		else
			ok "$s names no keel__ symbol"
		fi
		if grep -v -q "^$prefix" "$dir/$s"; then
			bad "$s names symbols outside $prefix*:"
			grep -v "^$prefix" "$dir/$s" | sed 's/^/  /'
		else
			ok "$s names only $prefix* symbols"
		fi
	done
}
only keel_ map nm hdr

# ---- libkeel-http: keel-http.map = nm -D libkeel-http.so = keel/http.h --
# keel/http.h includes keel/task.h, whose functions are libkeel's: only
# what http.h itself declares counts.
so=$(ls "$BUILD"/libkeel-http.so.*.*.* 2>/dev/null | head -n 1)
if [ -z "$so" ]; then
	bad "no $BUILD/libkeel-http.so.*.*.* (run make first)"
	finish
fi
grep -oE '^[[:space:]]*[A-Za-z_][A-Za-z0-9_]*;' keel-http.map | tr -d ' \t;' |
	sort -u >"$dir/http_map"
nm -D --defined-only "$so" | awk '$2 != "A" { sub(/@.*/, "", $3); print $3 }' |
	sort -u >"$dir/http_nm"
if ! $CC -E -D_GNU_SOURCE -Iinclude include/keel/http.h >"$dir/http.i"; then
	bad "preprocessing include/keel/http.h"
fi
decls "$dir/http.i" include/keel/http.h | sort -u >"$dir/http_hdr"
[ -s "$dir/http_hdr" ] && ok "keel/http.h declares functions" ||
	bad "no function found in keel/http.h"
same http_map http_nm "keel-http.map = nm -D $(basename "$so")"
same http_nm http_hdr "nm -D $(basename "$so") = functions declared in include/keel/http.h"
only keel_http_ http_map http_nm http_hdr

# ---- libkeel-tls: keel-tls.map = nm -D libkeel-tls.so = keel/tls.h ----
so=$(ls "$BUILD"/libkeel-tls.so.*.*.* 2>/dev/null | head -n 1)
if [ -z "$so" ]; then
	bad "no $BUILD/libkeel-tls.so.*.*.* (run make first)"
	finish
fi
grep -oE '^[[:space:]]*[A-Za-z_][A-Za-z0-9_]*;' keel-tls.map | tr -d ' \t;' |
	sort -u >"$dir/tls_map"
nm -D --defined-only "$so" | awk '$2 != "A" { sub(/@.*/, "", $3); print $3 }' |
	sort -u >"$dir/tls_nm"
if ! $CC -E -D_GNU_SOURCE -Iinclude include/keel/tls.h >"$dir/tls.i"; then
	bad "preprocessing include/keel/tls.h"
fi
decls "$dir/tls.i" include/keel/tls.h | sort -u >"$dir/tls_hdr"
[ -s "$dir/tls_hdr" ] && ok "keel/tls.h declares functions" ||
	bad "no function found in keel/tls.h"
same tls_map tls_nm "keel-tls.map = nm -D $(basename "$so")"
same tls_nm tls_hdr "nm -D $(basename "$so") = functions declared in include/keel/tls.h"
only keel_tls_ tls_map tls_nm tls_hdr

# ---- libkeel-nats: keel-nats.map = nm -D libkeel-nats.so = keel/node.h --
so=$(ls "$BUILD"/libkeel-nats.so.*.*.* 2>/dev/null | head -n 1)
if [ -z "$so" ]; then
	bad "no $BUILD/libkeel-nats.so.*.*.* (run make first)"
	finish
fi
grep -oE '^[[:space:]]*[A-Za-z_][A-Za-z0-9_]*;' keel-nats.map | tr -d ' \t;' |
	sort -u >"$dir/nats_map"
nm -D --defined-only "$so" | awk '$2 != "A" { sub(/@.*/, "", $3); print $3 }' |
	sort -u >"$dir/nats_nm"
if ! $CC -E -D_GNU_SOURCE -Iinclude include/keel/node.h >"$dir/nats.i"; then
	bad "preprocessing include/keel/node.h"
fi
decls "$dir/nats.i" include/keel/node.h | sort -u >"$dir/nats_hdr"
[ -s "$dir/nats_hdr" ] && ok "keel/node.h declares functions" ||
	bad "no function found in keel/node.h"
same nats_map nats_nm "keel-nats.map = nm -D $(basename "$so")"
same nats_nm nats_hdr "nm -D $(basename "$so") = functions declared in include/keel/node.h"
only keel_node_ nats_map nats_nm nats_hdr
finish
