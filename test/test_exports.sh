#!/bin/sh
# SPDX-License-Identifier: MIT
# test_exports.sh: the shared library exports exactly the public API.
# Three sets must be equal: the names keel.map lists, the functions
# `nm -D --defined-only` finds in $BUILD/libkeel.so.*, and the functions
# the public headers declare (keel.h preprocessed, then every top-level
# declaration whose declarator is a keel_* name: static inline functions
# and typedefs excluded). No set may hold an internal keel__* name.
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
python3 - "$dir/keel.i" >"$dir/hdr" <<'PY'
import re, sys
src = open(sys.argv[1]).read()
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
for s in map nm hdr; do
	if grep -q '^keel__' "$dir/$s"; then
		bad "$s names internal symbols:"
		grep '^keel__' "$dir/$s" | sed 's/^/  /'
	else
		ok "$s names no keel__ symbol"
	fi
	if grep -v -q '^keel_' "$dir/$s"; then
		bad "$s names symbols outside keel_*:"
		grep -v '^keel_' "$dir/$s" | sed 's/^/  /'
	else
		ok "$s names only keel_* symbols"
	fi
done
finish
