#!/bin/sh
# SPDX-License-Identifier: MIT
# check-layers.sh: keel's layers are core <- io <- sched <- supervise <- sim; a
# lower layer must not call into a higher one. The include paths stop an
# upward #include at compile time (see the Makefile); this stops an upward
# call at link level: an object of a lower layer that references (nm -u) a
# symbol defined only in a higher layer's objects.
#
# usage: check-layers.sh OBJECT...
#   An object's layer is the folder it is in (build/obj/io/ring.o: io).
#   LAYERS lists the layers, lowest first (default: core io sched
#   supervise sim); an object in any other folder is a usage error.
# Prints one line per offending reference:
#   check-layers: core/x.o (core) uses keel_runtime_create of sched/runtime.o (sched)
# Exit status: 0 clean, 1 upward references, 2 usage error.
set -u
LAYERS=${LAYERS:-core io sched supervise sim}

if [ $# = 0 ]; then
	echo "usage: check-layers.sh OBJECT..." >&2
	exit 2
fi
# layer_of OBJECT: set `layer` (its folder's name) and `rank` (the
# layer's position, lowest 0; empty if the folder is no layer).
layer_of() {
	case $1 in
	*/*) layer=${1%/*} ;;
	*) layer=. ;;
	esac
	layer=${layer##*/}
	rank=
	r=0
	for l in $LAYERS; do
		if [ "$l" = "$layer" ]; then
			rank=$r
			return
		fi
		r=$((r + 1))
	done
}

for o in "$@"; do
	layer_of "$o"
	if [ -z "$rank" ]; then
		echo "check-layers: $o: not in a layer's folder ($LAYERS)" >&2
		exit 2
	fi
	if [ ! -f "$o" ]; then
		echo "check-layers: $o: no such object" >&2
		exit 2
	fi
done
# One nm for all: "obj:addr T name" for a definition, "obj: U name" for
# a reference (U; w, v: weak, undefined). A symbol defined in several
# layers (none today) counts at its lowest.
syms=$(nm -A -g "$@") || exit 2
printf '%s\n' "$syms" | awk -v layers="$LAYERS" '
	BEGIN {
		n = split(layers, L, " ")
		for (i = 1; i <= n; i++)
			rank[L[i]] = i
	}
	{
		obj = $1
		sub(/:[0-9a-fA-F]*$/, "", obj)
		k = split(obj, p, "/")
		name = p[k - 1] "/" p[k]
		r = rank[p[k - 1]]
		if ($2 == "U" || $2 == "w" || $2 == "v") {
			use[++nu] = r " " name " " $3
		} else if (!($3 in def) || r < def[$3]) {
			def[$3] = r
			where[$3] = name
		}
	}
	END {
		bad = 0
		for (i = 1; i <= nu; i++) {
			split(use[i], f, " ")
			s = f[3]
			if ((s in def) && def[s] > f[1]) {
				printf "check-layers: %s (%s) uses %s of %s (%s)\n",
				    f[2], L[f[1]], s, where[s], L[def[s]]
				bad++
			}
		}
		exit bad ? 1 : 0
	}'
