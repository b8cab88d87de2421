# SPDX-License-Identifier: MIT
# checks.sh: what every shell test shares. A test sets SUITE (the name on
# its closing line), then sources this file (`. test/helpers/checks.sh`,
# from the top of the tree, where test/run.sh runs it) and gets: a scratch
# directory $dir removed on exit, the pass/fail counters, ok/bad/check, and
# echo_port, and finish, which prints "SUITE: N passed, M failed" (the line test/run.sh
# tallies) and exits 1 when anything failed.
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
trap 'exit 1' INT TERM
pass=0
fail=0

ok() {
	pass=$((pass + 1))
	echo "ok   $1"
}

bad() {
	fail=$((fail + 1))
	echo "FAIL $1"
}

# check NAME CMD...: one test, passed if CMD succeeds.
check() {
	name=$1
	shift
	if "$@"; then ok "$name"; else bad "$name"; fi
}

# echo_port PID OUT: the port examples/echo (PID, its stdout in OUT) says
# it listens on, once it says so (10 s at most); empty if it exits first.
echo_port() {
	for _ in $(seq 100); do
		p=$(sed -n 's/^echo: listening on 127.0.0.1:\([0-9]*\) .*/\1/p' \
			"$2" 2>/dev/null)
		[ -n "$p" ] && break
		kill -0 "$1" 2>/dev/null || break
		sleep 0.1
	done
	echo "$p"
}

finish() {
	echo "$SUITE: $pass passed, $fail failed"
	[ "$fail" = 0 ]
	exit
}
