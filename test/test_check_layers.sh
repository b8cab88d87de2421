#!/bin/sh
# SPDX-License-Identifier: MIT
# test_check_layers.sh: tools/check-layers.sh passes on the library's own
# objects and fails, naming the object and the symbol, when a scratch
# object of a lower layer calls into a higher one: a copy of the core
# layer's objects with one that calls keel_runtime_create (sched), an io
# object that calls a supervise function. Calls within a layer or down are
# not reported; an object outside the layers' folders is a usage error.
# Needs the objects of `make lib` in $BUILD/obj (BUILD defaults to build).
# Last line: "check-layers: N passed, M failed"; exit status 1 on failure.
set -u
BUILD=${BUILD:-build}
CC=${CC:-cc}
check=tools/check-layers.sh
SUITE=check-layers
. test/helpers/checks.sh

# The library's objects, from its sources (as the Makefile's LIB_OBJ), so
# that stale objects of deleted sources do not count.
objs() {
	for s in "$1"/*.c; do
		o=$BUILD/obj/${s%.c}.o
		[ -f "$o" ] || return 1
		echo "$o"
	done
}
for l in core io sched supervise; do
	if ! objs $l >"$dir/$l.list"; then
		bad "objects of $l/ missing in $BUILD/obj (run make first)"
		finish
	fi
done
core=$(cat "$dir/core.list")
io=$(cat "$dir/io.list")
sched=$(cat "$dir/sched.list")
supervise=$(cat "$dir/supervise.list")

# run NAME OBJECT...: run the check, keep its output and exit status.
run() {
	name=$1
	shift
	sh $check "$@" >"$dir/$name.out" 2>&1
	echo $? >"$dir/$name.rc"
}

rc() { cat "$dir/$1.rc"; }

# scratch LAYER NAME SOURCE: compile SOURCE as $dir/LAYER/NAME.o.
scratch() {
	mkdir -p "$dir/$1"
	printf '%s\n' "$3" >"$dir/$1/$2.c"
	$CC -Iinclude -c -o "$dir/$1/$2.o" "$dir/$1/$2.c"
}

# ---- the tree as built -------------------------------------------------

# shellcheck disable=SC2086 # lists of paths without spaces
run tree $core $io $sched $supervise
if [ "$(rc tree)" = 0 ] && [ ! -s "$dir/tree.out" ]; then
	ok "the library's objects pass, silently"
else
	bad "the library's objects pass, silently"
	cat "$dir/tree.out"
fi

# ---- a core object calling up into sched -------------------------------

# Also calls keel_spawn (core) and keel_nop (io, up too): each upward
# reference gets its line, the one within core none.
scratch core probe_up '#include <keel.h>
int probe_up(void);
int probe_up(void)
{
	struct keel_runtime *rt;

	return keel_runtime_create(&rt, 0) + keel_nop(0) +
	       (keel_spawn(0, 0, 0) != 0);
}' || bad "compile the core scratch object"
mkdir -p "$dir/core"
# shellcheck disable=SC2086
cp $core "$dir/core/"
# shellcheck disable=SC2086
run up "$dir"/core/*.o $io $sched $supervise
if [ "$(rc up)" = 1 ]; then
	ok "an upward call from core fails the check (exit 1)"
else
	bad "an upward call from core fails the check (exit $(rc up))"
fi
if grep -q -x 'check-layers: core/probe_up.o (core) uses keel_runtime_create of sched/runtime.o (sched)' "$dir/up.out"; then
	ok "the line names the object, the symbol and where it lives"
else
	bad "the line names the object, the symbol and where it lives"
	cat "$dir/up.out"
fi
if grep -q 'core/probe_up.o (core) uses keel_nop of io/' "$dir/up.out"; then
	ok "core calling io is upward too"
else
	bad "core calling io is upward too"
fi
if [ "$(wc -l <"$dir/up.out")" = 2 ] && ! grep -q keel_spawn "$dir/up.out"; then
	ok "one line per upward reference, none for a call within core"
else
	bad "one line per upward reference, none for a call within core"
	cat "$dir/up.out"
fi

# ---- an io object calling up into supervise; a sched one calling down ----

scratch io probe_sup '#include <keel.h>
int probe_sup(void);
int probe_sup(void)
{
	return keel_actor_tell(0, 0);
}' || bad "compile the io scratch object"
# shellcheck disable=SC2086
run sup $core $io "$dir/io/probe_sup.o" $sched $supervise
if [ "$(rc sup)" = 1 ] &&
	grep -q '^check-layers: io/probe_sup.o (io) uses keel_actor_tell of supervise/' "$dir/sup.out"; then
	ok "an upward call from io to supervise fails the check"
else
	bad "an upward call from io to supervise fails the check"
	cat "$dir/sup.out"
fi

scratch sched probe_down '#include <keel.h>
int probe_down(void);
int probe_down(void)
{
	return keel_nop(0) + (keel_spawn(0, 0, 0) != 0);
}' || bad "compile the sched scratch object"
# shellcheck disable=SC2086
run down $core $io $sched "$dir/sched/probe_down.o" $supervise
if [ "$(rc down)" = 0 ] && [ ! -s "$dir/down.out" ]; then
	ok "calls down (sched to io and core) pass"
else
	bad "calls down (sched to io and core) pass"
	cat "$dir/down.out"
fi

# ---- usage -------------------------------------------------------------

mkdir -p "$dir/tools"
cp "$dir/sched/probe_down.o" "$dir/tools/"
# shellcheck disable=SC2086
run usage $core "$dir/tools/probe_down.o"
if [ "$(rc usage)" = 2 ] && grep -q 'not in a layer' "$dir/usage.out"; then
	ok "an object outside the layers' folders is a usage error (exit 2)"
else
	bad "an object outside the layers' folders is a usage error"
fi
run none
if [ "$(rc none)" = 2 ]; then
	ok "no objects is a usage error"
else
	bad "no objects is a usage error"
fi
finish
