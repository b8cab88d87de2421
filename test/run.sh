#!/bin/sh
# run.sh: run every test binary given as an argument (Criterion binaries,
# and plain mt_* programs), then the shell tests (test/test_*.sh) and the
# install/pkg-config test, and print one closing line with the totals.
# Each Criterion test carries its own timeout (.timeout in the test); each
# program is also bounded here so that nothing can hang CI.
set -u
BUILD=${BUILD:-build}
# Leaks of the Criterion runner itself are not ours (see lsan.supp).
LSAN_OPTIONS="suppressions=$(pwd)/test/lsan.supp${LSAN_OPTIONS:+:$LSAN_OPTIONS}"
export LSAN_OPTIONS
# Races inside OpenSSL, which is not instrumented (see tsan.supp).
TSAN_OPTIONS="suppressions=$(pwd)/test/tsan.supp${TSAN_OPTIONS:+:$TSAN_OPTIONS}"
export TSAN_OPTIONS
# Undefined behaviour fails the test (UBSan only prints by default).
UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
export UBSAN_OPTIONS
pass=0
fail=0

# count LOG KIND: set `passing` and `tested` from the log's closing line:
# Criterion's "Synthesis: Tested: N | Passing: N | ...", or the plain
# "N passed, M failed" of mt_* programs and shell tests.
count() {
	if [ "$2" = criterion ]; then
		line=$(grep -a 'Synthesis' "$1" | tail -n 1)
		tested=$(echo "$line" | sed -n 's/.*Tested: \([0-9]*\).*/\1/p')
		passing=$(echo "$line" | sed -n 's/.*Passing: \([0-9]*\).*/\1/p')
	else
		line=$(grep -a -E '[0-9]+ passed, [0-9]+ failed' "$1" | tail -n 1)
		passing=$(echo "$line" | sed -n 's/.* \([0-9]*\) passed.*/\1/p')
		failing=$(echo "$line" | sed -n 's/.* \([0-9]*\) failed.*/\1/p')
		tested=$((${passing:-0} + ${failing:-0}))
	fi
	tested=${tested:-0}
	passing=${passing:-0}
}

# sanitized LOG: true if a sanitizer reported in LOG. Criterion runs each
# test in a worker process and does not look at how the worker exited, so
# a leak LeakSanitizer reports when a worker exits, or a race TSan reports
# without halting, leaves "Passing" intact: the report itself fails the run.
sanitized() {
	grep -a -q -E 'ERROR: (Leak|Address)Sanitizer|WARNING: ThreadSanitizer|runtime error:' "$1"
}

# tally NAME STATUS LOG: add up one run. A run that failed with every test
# passing (a sanitizer's report at exit, a crash between tests) or that ran
# none counts one failure more.
tally() {
	if [ "$2" = ok ] && [ "$tested" != 0 ] && [ "$passing" = "$tested" ]; then
		echo "ok   $1 ($tested tests)"
	else
		fail=$((fail + tested - passing))
		[ "$tested" = "$passing" ] && fail=$((fail + 1))
		echo "FAIL $1 ($passing/$tested passed)"
		grep -a -E '\[(FAIL|----)\]|Assertion|error|ERROR|WARNING: ThreadSanitizer|SUMMARY|FAIL' "$3" |
			head -n 40
	fi
	pass=$((pass + passing))
}

for t in "$@"; do
	name=$(basename "$t")
	log="$BUILD/test/$name.log"
	case "$name" in
	mt_*) kind=plain args= ;;
	*) kind=criterion args="--jobs 2" ;;
	esac
	# shellcheck disable=SC2086
	if timeout 600 "$t" $args >"$log" 2>&1; then status=ok; else status=FAIL; fi
	sanitized "$log" && status=FAIL
	count "$log" "$kind"
	tally "$name" "$status" "$log"
done
for s in test/test_*.sh; do
	[ -f "$s" ] || continue
	name=$(basename "$s" .sh)
	log="$BUILD/test/$name.log"
	if BUILD=$BUILD timeout 600 sh "$s" >"$log" 2>&1; then status=ok; else status=FAIL; fi
	sanitized "$log" && status=FAIL
	count "$log" plain
	tally "$name" "$status" "$log"
done
log="$BUILD/test/install.log"
if sh test/install_test.sh >"$log" 2>&1; then status=ok; else status=FAIL; fi
tested=1
passing=0
[ "$status" = ok ] && passing=1
tally "install + pkg-config consumer" "$status" "$log"
echo "tests: $pass passed, $fail failed"
[ "$fail" = 0 ]
