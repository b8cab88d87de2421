#!/bin/sh
# SPDX-License-Identifier: MIT
# test_headers.sh: each public header compiles on its own, without a
# warning, as users compile: in a C translation unit (-std=c11 and
# -std=gnu11, -Wall -Wextra -Wpedantic and more, -Werror) and a C++ one
# (-std=c++17 -Wall -Wextra -Wpedantic -Werror); and a task using every
# resume macro compiles as cleanly (strict ISO mode included: the macros
# mark their GNU extension) at -O0 and -O2, in C and C++. With $CC and
# $CXX (default cc and g++), and with clang/clang++ too when installed.
# Last line: "headers: N passed, M failed"; exit status 1 on any failure.
set -u
CC=${CC:-cc}
SUITE=headers
. test/helpers/checks.sh
CWARN="-Wall -Wextra -Wpedantic -Wshadow -Wstrict-prototypes \
-Wmissing-prototypes -Wundef -Wconversion -Wsign-conversion -Werror"
CXXWARN="-Wall -Wextra -Wpedantic -Werror"

# quiet NAME CMD...: one test, passed if CMD succeeds without output
# (a warning is a failure).
quiet() {
	name=$1
	shift
	if "$@" >"$dir/log" 2>&1 && [ ! -s "$dir/log" ]; then
		ok "$name"
	else
		bad "$name"
		head -n 20 "$dir/log"
	fi
}

cat >"$dir/macros.c" <<'C'
/* Every resume macro, as a user writes them. */
#include <keel.h>

struct sub {
	struct keel_routine r;
	int i;
};

struct frame {
	struct keel_task task;
	struct sub sub;
	int fd;
};

static int sub_run(struct keel_task *t, struct sub *s)
{
	KEEL_BEGIN(&s->r);
	for (s->i = 0; s->i < 2; s->i++)
		KEEL_AWAIT(&s->r, keel_yield(t));
	KEEL_ROUTINE_RETURN(&s->r, t, 7);
}

static int frame_step(struct keel_task *t)
{
	struct frame *f = keel_container_of(t, struct frame, task);

	KEEL_BEGIN(t);
	keel_op_timeout(t, 1000);
	KEEL_AWAIT(t, keel_nop(t));
	KEEL_AWAIT_CALL(t, sub_run(t, &f->sub));
	KEEL_YIELD(t);
	KEEL_ASSERT(keel_res(t) >= 0);
	if (keel_res(t) < 0)
		keel_panic("unexpected %s", keel_strerror(keel_res(t)));
	if (f->fd < 0)
		KEEL_EXIT(t, -EBADF);
	KEEL_END(t);
}

static KEEL_TASK_TYPE(frame_task, struct frame, task, frame_step);

const struct keel_task_type *keel_test_macros(void);
const struct keel_task_type *keel_test_macros(void)
{
	return &frame_task;
}
C

cxx=${CXX:-}
if [ -z "$cxx" ]; then
	for c in g++ c++ clang++; do
		command -v $c >/dev/null && cxx=$c && break
	done
fi
ccs=$CC
cxxs=$cxx
if command -v clang >/dev/null && [ "$CC" != clang ]; then
	ccs="$ccs clang"
	command -v clang++ >/dev/null && cxxs="$cxxs clang++"
fi

for h in include/keel.h include/keel/*.h; do
	name=${h#include/}
	printf '#include <%s>\n' "$name" >"$dir/one.c"
	cp "$dir/one.c" "$dir/one.cc"
	for c in $ccs; do
		for std in c11 gnu11; do
			# shellcheck disable=SC2086 # the flags split on purpose
			quiet "$name alone, $c -std=$std" \
				$c -std=$std $CWARN -Iinclude -fsyntax-only \
				"$dir/one.c"
		done
	done
	for c in $cxxs; do
		# shellcheck disable=SC2086
		quiet "$name alone, $c -std=c++17" \
			$c -std=c++17 $CXXWARN -Iinclude -fsyntax-only "$dir/one.cc"
	done
done

cp "$dir/macros.c" "$dir/macros.cc"
for c in $ccs; do
	for o in -O0 -O2; do
		# shellcheck disable=SC2086
		quiet "resume macros, $c -std=c11 $o" \
			$c -std=c11 $o $CWARN -Iinclude -c -o "$dir/m.o" \
			"$dir/macros.c"
	done
done
for c in $cxxs; do
	# shellcheck disable=SC2086
	quiet "resume macros, $c -std=c++17" \
		$c -std=c++17 -O2 $CXXWARN -Iinclude -c -o "$dir/m.o" \
		"$dir/macros.cc"
done
[ -n "$cxx" ] || echo "note: no C++ compiler found, C++ checks skipped"
finish
