#!/bin/sh
# SPDX-License-Identifier: MIT
# test_man.sh: the man pages cover the library and render cleanly.
#  - every function the shared library exports (nm -D) is named on the
#    NAME line of some page, checked header by header (keel.map groups its
#    names by header) so that a miss says which header's pages lack it;
#    the same for libkeel-http (keel/http.h: what libkeel-http.so exports
#    and what keel-http.map lists) and libkeel-tls (keel/tls.h,
#    keel-tls.map);
#  - every page follows the convention: first line `name(s) "keel 0.1"
#    "keel manual"` matching its file name, a one-line NAME section whose
#    first name is the page's, sections in the agreed order; no name is on
#    two pages;
#  - every page built into $BUILD/man renders without a warning (preconv,
#    tbl, groff -ww -z: what man -l runs), and every alias page points at a page that exists.
# Builds nothing: reads man/*.scd and the pages `make man` built under
# $BUILD/man (BUILD defaults to build). Last line "man: N passed, M
# failed"; exit status 1 on any failure.
set -u
BUILD=${BUILD:-build}
SUITE=man
. test/helpers/checks.sh

# The names on a source's NAME line, one per line.
names() {
	awk '/^# NAME/ { f = 1; next }
		f && NF { sub(/ - .*/, ""); gsub(/,/, " "); print; exit }' "$1" |
		tr ' ' '\n' | grep .
}

# ---- conventions, per source ----
: >"$dir/named"
for src in man/*.scd; do
	[ -f "$src" ] || continue
	base=$(basename "$src" .scd) # keel_spawn.3
	name=${base%.*}
	sect=${base##*.}
	problems=
	head -n 1 "$src" | grep -qxF "$name($sect) \"keel 0.1\" \"keel manual\"" ||
		problems="$problems; first line is not: $name($sect) \"keel 0.1\" \"keel manual\""
	# NAME: exactly one line, "a, b - what", the page's own name first.
	nameline=$(awk '/^# NAME/ { f = 1; next } /^# / { f = 0 } f && NF' "$src")
	[ "$(printf '%s\n' "$nameline" | grep -c .)" = 1 ] ||
		problems="$problems; NAME is not exactly one line"
	printf '%s\n' "$nameline" | grep -qE '^[A-Za-z_][A-Za-z0-9_]*(, [A-Za-z_][A-Za-z0-9_]*)* - .' ||
		problems="$problems; NAME is not \"name, name - description\""
	[ "$(names "$src" | head -n 1)" = "$name" ] ||
		problems="$problems; NAME does not start with $name"
	# Sections: in the agreed order (those that are there).
	grep '^# ' "$src" | sed 's/^# //' >"$dir/sections"
	if [ "$sect" = 3 ]; then
		order="NAME SYNOPSIS DESCRIPTION OWNERSHIP RETURN_VALUE ERRORS NOTES EXAMPLE SEE_ALSO"
		for s in NAME SYNOPSIS DESCRIPTION SEE_ALSO; do
			grep -qxF "$(echo $s | tr _ ' ')" "$dir/sections" ||
				problems="$problems; no $(echo $s | tr _ ' ') section"
		done
		last=0
		while read -r s; do
			i=0
			pos=
			# One tr per section, not one per name in $order: forks
			# are slow on a loaded machine (it once took 600 s).
			s_=$(echo "$s" | tr ' ' _)
			for o in $order; do
				i=$((i + 1))
				[ "$o" = "$s_" ] && pos=$i
			done
			if [ -z "$pos" ]; then
				problems="$problems; unknown section $s"
			elif [ "$pos" -le "$last" ]; then
				problems="$problems; section $s out of order"
			else
				last=$pos
			fi
		done <"$dir/sections"
	else
		head -n 1 "$dir/sections" | grep -qx NAME ||
			problems="$problems; NAME is not the first section"
	fi
	if [ -z "$problems" ]; then
		ok "$src follows the convention"
	else
		bad "$src:${problems#;}"
	fi
	names "$src" | sed "s|\$| $src|" >>"$dir/named"
done
dups=$(awk '{ print $1 }' "$dir/named" | sort | uniq -d)
if [ -z "$dups" ]; then
	ok "no name is on two pages"
else
	bad "names on more than one page:"
	for d in $dups; do grep "^$d " "$dir/named" | sed 's/^/  /'; done
fi

# ---- coverage: every exported function, by header ----
so=$(ls "$BUILD"/libkeel.so.*.*.* 2>/dev/null | head -n 1)
if [ -z "$so" ]; then
	bad "no $BUILD/libkeel.so.*.*.* (run make first)"
else
	nm -D --defined-only "$so" | awk '$2 == "T" { sub(/@.*/, "", $3); print $3 }' |
		sort -u >"$dir/exported"
	awk '{ print $1 }' "$dir/named" | sort -u >"$dir/names"
	comm -23 "$dir/exported" "$dir/names" >"$dir/missing"
	# keel.map lists its names under a "/* keel/<header> */" comment.
	for h in $(sed -n 's|^[[:space:]]*/\* \(keel/[a-z]*\.h\) \*/$|\1|p' keel.map); do
		awk -v h="/* $h */" '$0 ~ /\/\*/ { f = (index($0, h) > 0); next }
			f && /;/ { sub(/;.*/, ""); gsub(/[[:space:]]/, ""); print }' \
			keel.map | sort -u >"$dir/hdr"
		miss=$(comm -12 "$dir/hdr" "$dir/missing")
		if [ -z "$miss" ]; then
			ok "every exported function of $h is on a page's NAME line"
		else
			bad "exported functions of $h on no page's NAME line:"
			printf '%s\n' "$miss" | sed 's/^/  /'
		fi
	done
fi

# ---- coverage: the protocol libraries (keel-LIB.map, their header) ----
# Each its own library and version script, checked the same way: what the
# .so exports, and every name its map lists (so that a function missing
# from the build is not missed here).
awk '{ print $1 }' "$dir/named" | sort -u >"$dir/names"
# lib_pages LIB HEADER: libkeel-http keel/http.h
lib_pages() {
	k=${1#libkeel-}
	so=$(ls "$BUILD"/$1.so.*.*.* 2>/dev/null | head -n 1)
	if [ -z "$so" ]; then
		bad "no $BUILD/$1.so.*.*.* (run make first)"
		return
	fi
	nm -D --defined-only "$so" |
		awk '$2 == "T" { sub(/@.*/, "", $3); print $3 }' |
		sort -u >"$dir/exported_$k"
	grep -oE '^[[:space:]]*[A-Za-z_][A-Za-z0-9_]*;' keel-$k.map |
		tr -d ' \t;' | sort -u >>"$dir/exported_$k"
	sort -u -o "$dir/exported_$k" "$dir/exported_$k"
	miss=$(comm -23 "$dir/exported_$k" "$dir/names")
	if [ -z "$miss" ]; then
		ok "every exported function of $2 ($1) is on a page's NAME line"
	else
		bad "exported functions of $2 ($1) on no page's NAME line:"
		printf '%s\n' "$miss" | sed 's/^/  /'
	fi
}
lib_pages libkeel-http keel/http.h
lib_pages libkeel-tls keel/tls.h
lib_pages libkeel-nats keel/node.h

# ---- rendering ----
built=0
for page in "$BUILD"/man/man[37]/*.[37]; do
	[ -f "$page" ] || continue
	if head -n 1 "$page" | grep -q '^\.so '; then
		target=$(head -n 1 "$page" | sed 's/^\.so //')
		if [ -f "$BUILD/man/$target" ]; then
			ok "alias $(basename "$page") -> $target"
		else
			bad "alias $(basename "$page") -> $target: no such page"
		fi
		continue
	fi
	built=$((built + 1))
	# What `MANWIDTH=80 man --warnings -l` runs, without man-db's own
	# start-up (three times the cost, and this loop has 100+ pages).
	warn=$(preconv -e UTF-8 "$page" 2>&1 | tbl 2>&1 |
		groff -ww -z -Tutf8 -rLL=80n -man 2>&1)
	if [ -z "$warn" ]; then
		ok "$(basename "$page") renders without warnings"
	else
		bad "$(basename "$page") renders with warnings:"
		printf '%s\n' "$warn" | head -n 10 | sed 's/^/  /'
	fi
done
srcs=$(ls man/*.scd 2>/dev/null | wc -l)
if [ "$built" = "$srcs" ] && [ "$srcs" != 0 ]; then
	ok "$BUILD/man holds a page for each of the $srcs sources"
else
	bad "$BUILD/man holds $built pages for $srcs sources (run make man)"
fi
finish
