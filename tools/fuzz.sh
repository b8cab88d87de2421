#!/bin/sh
# fuzz.sh TARGET...: run each libFuzzer target ($BUILD/fuzz/TARGET, built
# by `make fuzz`) for FUZZ_TIME seconds on a copy of its corpus: the seeds
# in fuzz/corpus/TARGET/ are read, what the run finds goes to
# $BUILD/fuzz/corpus/TARGET/ (kept between runs), the tree is not written.
# A crash, a leak, a timeout (10 s for one input) or a sanitizer report
# stops that target: its reproducer is kept in $BUILD/fuzz/crashes/ and
# the command that replays it is printed. Prints each target's final
# coverage and speed; exits 1 if any target failed.
set -u
BUILD=${BUILD:-build/fuzz}
FUZZ_TIME=${FUZZ_TIME:-60}
fail=0
mkdir -p "$BUILD/fuzz/crashes"
for t in "$@"; do
	bin=$BUILD/fuzz/$t
	work=$BUILD/fuzz/corpus/$t
	log=$BUILD/fuzz/$t.log
	mkdir -p "$work" "fuzz/corpus/$t"
	echo "== $t: $FUZZ_TIME s"
	"$bin" -max_total_time="$FUZZ_TIME" -timeout=10 -rss_limit_mb=2048 \
		-print_final_stats=1 -artifact_prefix="$BUILD/fuzz/crashes/$t-" \
		"$work" "fuzz/corpus/$t" >"$log" 2>&1
	status=$?
	# libFuzzer's last status line: "#N DONE cov: C ft: F corp: ... exec/s: E".
	grep -a -E '^#[0-9]+' "$log" | tail -n 1 | sed 's/^/   /'
	if [ "$status" = 0 ]; then
		continue
	fi
	fail=1
	grep -a -E 'broken promise|after the input|ERROR|SUMMARY|runtime error' "$log" |
		head -n 20
	# libFuzzer names the input it kept: "Test unit written to PATH".
	repro=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" |
		tail -n 1)
	echo "FAIL $t (exit $status; log: $log)"
	if [ -n "$repro" ]; then
		echo "reproduce: $bin $repro"
	fi
done
exit $fail
