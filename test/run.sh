#!/bin/sh
# run.sh: run every Criterion test binary given as an argument, then the
# install/pkg-config test, and print one closing line with the totals.
# Each Criterion test carries its own timeout (.timeout in the test); the
# whole binary is also bounded here so that nothing can hang CI.
set -u
# Leaks of the Criterion runner itself are not ours (see lsan.supp).
LSAN_OPTIONS="suppressions=$(pwd)/test/lsan.supp${LSAN_OPTIONS:+:$LSAN_OPTIONS}"
export LSAN_OPTIONS
pass=0
fail=0
failed=""
for t in "$@"; do
	name=$(basename "$t")
	log="${BUILD:-build}/test/$name.log"
	case "$name" in
	mt_*) args= ;;     # plain programs: "name: N passed, N failed"
	*) args="--jobs 2" ;; # Criterion
	esac
	# shellcheck disable=SC2086
	if timeout 600 "$t" $args >"$log" 2>&1; then
		status=ok
	else
		status=FAIL
	fi
	case "$name" in
	mt_*)
		line=$(grep -a -E '[0-9]+ passed, [0-9]+ failed' "$log" | tail -n 1)
		passing=$(echo "$line" | sed -n 's/.* \([0-9]*\) passed.*/\1/p')
		failing=$(echo "$line" | sed -n 's/.* \([0-9]*\) failed.*/\1/p')
		tested=$((${passing:-0} + ${failing:-0}))
		;;
	*)
		# Criterion: "Synthesis: Tested: N | Passing: N | Failing: N | Crashing: N"
		syn=$(grep -a 'Synthesis' "$log" | tail -n 1)
		tested=$(echo "$syn" | sed -n 's/.*Tested: \([0-9]*\).*/\1/p')
		passing=$(echo "$syn" | sed -n 's/.*Passing: \([0-9]*\).*/\1/p')
		;;
	esac
	tested=${tested:-0}
	passing=${passing:-0}
	if [ "$status" = FAIL ] || [ "$tested" = 0 ]; then
		fail=$((fail + tested - passing))
		# A binary that failed with every test passing (a sanitizer's
		# report at exit, a crash between tests) or ran none still fails.
		[ "$tested" = "$passing" ] && fail=$((fail + 1))
		failed="$failed $name"
		echo "FAIL $name ($passing/$tested passed)"
		grep -a -E '\[(FAIL|----)\]|Assertion|error|ERROR|SUMMARY' "$log" | head -n 40
	else
		echo "ok   $name ($tested tests)"
	fi
	pass=$((pass + passing))
done
# Shell tests (test/test_*.sh): each ends with "NAME: N passed, M failed".
for s in test/test_*.sh; do
	[ -f "$s" ] || continue
	name=$(basename "$s" .sh)
	log="${BUILD:-build}/test/$name.log"
	if BUILD=${BUILD:-build} timeout 600 sh "$s" >"$log" 2>&1; then
		status=ok
	else
		status=FAIL
	fi
	line=$(grep -a -E '[0-9]+ passed, [0-9]+ failed' "$log" | tail -n 1)
	passing=$(echo "$line" | sed -n 's/.* \([0-9]*\) passed.*/\1/p')
	failing=$(echo "$line" | sed -n 's/.* \([0-9]*\) failed.*/\1/p')
	passing=${passing:-0}
	failing=${failing:-0}
	if [ "$status" = FAIL ] || [ "$failing" != 0 ] || [ "$passing" = 0 ]; then
		[ "$failing" = 0 ] && failing=1
		echo "FAIL $name ($passing passed)"
		tail -n 20 "$log"
		fail=$((fail + failing))
		failed="$failed $name"
	else
		echo "ok   $name ($passing checks)"
	fi
	pass=$((pass + passing))
done
if sh test/install_test.sh >"${BUILD:-build}/test/install.log" 2>&1; then
	echo "ok   install + pkg-config consumer"
	pass=$((pass + 1))
else
	echo "FAIL install + pkg-config consumer"
	tail -n 20 "${BUILD:-build}/test/install.log"
	fail=$((fail + 1))
	failed="$failed install"
fi
echo "tests: $pass passed, $fail failed"
[ "$fail" = 0 ]
