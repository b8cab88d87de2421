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

# ---- the protocol libraries: LIB.map = nm -D libLIB.so = its header ----
# Each header includes keel/task.h (and more), whose functions are
# libkeel's: only what the library's own header declares counts.
# lib_exports LIB HEADER PREFIX: libkeel-http keel/http.h keel_http_
lib_exports() {
	lib=$1 hdr=include/$2 prefix=$3 k=${1#libkeel-}
	so=$(ls "$BUILD"/$lib.so.*.*.* 2>/dev/null | head -n 1)
	if [ -z "$so" ]; then
		bad "no $BUILD/$lib.so.*.*.* (run make first)"
		finish
	fi
	grep -oE '^[[:space:]]*[A-Za-z_][A-Za-z0-9_]*;' keel-$k.map |
		tr -d ' \t;' | sort -u >"$dir/${k}_map"
	nm -D --defined-only "$so" |
		awk '$2 != "A" { sub(/@.*/, "", $3); print $3 }' |
		sort -u >"$dir/${k}_nm"
	if ! $CC -E -D_GNU_SOURCE -Iinclude "$hdr" >"$dir/$k.i"; then
		bad "preprocessing $hdr"
	fi
	decls "$dir/$k.i" "$hdr" | sort -u >"$dir/${k}_hdr"
	[ -s "$dir/${k}_hdr" ] && ok "$2 declares functions" ||
		bad "no function found in $2"
	same ${k}_map ${k}_nm "keel-$k.map = nm -D $(basename "$so")"
	same ${k}_nm ${k}_hdr "nm -D $(basename "$so") = functions declared in $hdr"
	only $prefix ${k}_map ${k}_nm ${k}_hdr
}
lib_exports libkeel-http keel/http.h keel_http_
lib_exports libkeel-tls keel/tls.h keel_tls_
lib_exports libkeel-nats keel/node.h keel_node_
finish
