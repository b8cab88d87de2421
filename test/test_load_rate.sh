#!/bin/sh
# SPDX-License-Identifier: MIT
# test_load_rate.sh: keel-load's open loop (--rate) does not hide a stalled
# server. examples/echo is stopped (SIGSTOP) for 200 ms in the middle of
# the measured window, once under the open loop (2,000 requests per second
# over 4 connections) and once under the closed loop. The open loop counts
# latency from each request's intended send time, so the ~400 requests the
# schedule wanted during the stall each wait up to 200 ms: its p99 is over
# 100 ms. The closed loop only waits on the 4 requests in flight: its max
# sees the stall, its p99 stays under 100 ms. (Counted from the actual send
# time, the open loop's p99 would be as low as the closed loop's: this test
# fails then.) Generous bounds, not timing assertions: on a loaded machine
# a stall only grows. Then a schedule no server can meet says so on the
# RESULT line, and a bad --rate is a usage error. Loopback only.
# Builds nothing: runs $BUILD/examples/echo and $BUILD/tools/keel-load.
# Last line: "load_rate: N passed, M failed"; exit status 1 on any failure.
set -u
BUILD=${BUILD:-build}
echo_bin=$BUILD/examples/echo
load=$BUILD/tools/keel-load
SUITE=load_rate
. test/helpers/checks.sh

if [ ! -x "$echo_bin" ] || [ ! -x "$load" ]; then
	bad "$echo_bin and $load are needed (run make first)"
	finish
fi

"$echo_bin" --threads 1 127.0.0.1 0 >"$dir/echo.out" 2>"$dir/echo.err" &
pid=$!
port=$(echo_port $pid "$dir/echo.out")
check "echo starts" [ -n "$port" ]
[ -n "$port" ] || finish

# field NAME FILE: NAME's value on FILE's RESULT line.
field() {
	sed -n "s/^RESULT.* $1=\([^ ]*\).*/\1/p" "$2"
}

# stalled RUN ARGS...: keel-load with ARGS for 3 s after 0.5 s of warm-up,
# echo stopped for 200 ms from 1.5 s on (inside the window).
stalled() {
	run=$1
	shift
	timeout 60 "$load" -p "$port" -c 4 -w 0.5 -d 3 "$@" \
		>"$dir/$run.out" 2>"$dir/$run.err" &
	lpid=$!
	sleep 1.5
	kill -STOP $pid
	sleep 0.2
	kill -CONT $pid
	wait $lpid
	status=$?
	check "$run: keel-load exits 0" [ $status = 0 ]
	grep RESULT "$dir/$run.out"
}

stalled open --rate 2000
p99=$(field p99_us "$dir/open.out")
check "open loop: p99 ($p99 us) counts the 200 ms stall (> 100 ms)" \
	awk -v v="${p99:-0}" 'BEGIN { exit !(v > 100000) }'
check "open loop: the schedule of 2,000 req/s is met" \
	[ "$(field schedule "$dir/open.out")" = met ]
check "open loop: the rate asked for is reported" \
	[ "$(field rate "$dir/open.out")" = 2000 ]

stalled closed
p99=$(field p99_us "$dir/closed.out")
max=$(field max_us "$dir/closed.out")
check "closed loop: max ($max us) saw the stall (> 100 ms)" \
	awk -v v="${max:-0}" 'BEGIN { exit !(v > 100000) }'
check "closed loop: p99 ($p99 us) does not count it the same (< 100 ms)" \
	awk -v v="${p99:-1e9}" 'BEGIN { exit !(v < 100000) }'
check "closed loop: no schedule on its RESULT line" \
	[ -z "$(field schedule "$dir/closed.out")" ]

# No echo server on loopback answers 10^8 requests per second.
timeout 60 "$load" -p "$port" -c 2 -w 0.2 -d 1 --rate 100000000 \
	>"$dir/missed.out" 2>&1
check "an unreachable schedule: RESULT says schedule=missed" \
	[ "$(field schedule "$dir/missed.out")" = missed ]
check "an unreachable schedule: said on a line of its own" \
	grep -q "MISSED" "$dir/missed.out"

for r in 0 -5 abc 1e9; do
	"$load" -p "$port" --rate "$r" >"$dir/bad.out" 2>&1
	status=$?
	check "--rate $r: usage error (exit 2)" [ $status = 2 ]
done
check "--rate in --help" sh -c "\"$load\" --help | grep -q -- --rate"

kill -TERM $pid
wait $pid
status=$?
check "echo exits 0 on SIGTERM" [ $status = 0 ]
finish
