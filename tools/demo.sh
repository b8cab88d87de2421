#!/bin/sh
# SPDX-License-Identifier: MIT
# demo.sh: what `make demo` runs. Starts the echo example on a free loopback
# port, drives it with keel-load (1 and 64 connections, 64 B and 4 KiB
# messages), prints a table of the results, then stops the server with
# SIGTERM and checks that it exits cleanly (status 0) within 5 s.
#
#   BUILD=build sh tools/demo.sh
#
# Exits non-zero if anything failed. Loopback only; the server is the only
# process this script stops, by its PID.
set -u

BUILD=${BUILD:-build}
ECHO=$BUILD/examples/echo
TRACE=$BUILD/tools/keel-trace
LOAD=$BUILD/tools/keel-load
SECS=${DEMO_SECS:-3}

for bin in "$ECHO" "$LOAD" "$TRACE"; do
	if [ ! -x "$bin" ]; then
		echo "demo: $bin is missing: run make first" >&2
		exit 1
	fi
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/keel-demo.XXXXXX") || exit 1
server_pid=""
failed=0

# Whatever happens, do not leave the server running: on an early exit, ask
# it to stop (SIGTERM), and kill it if it has not within 2 s.
cleanup() {
	if [ -n "${traced_pid:-}" ]; then
		kill -TERM "$traced_pid" 2>/dev/null
		sleep 0.5
		kill -KILL "$traced_pid" 2>/dev/null
	fi
	if [ -n "$server_pid" ] && kill -TERM "$server_pid" 2>/dev/null; then
		tries=0
		while kill -0 "$server_pid" 2>/dev/null &&
			[ "$tries" -lt 20 ]; do
			sleep 0.1
			tries=$((tries + 1))
		done
		kill -KILL "$server_pid" 2>/dev/null
		wait "$server_pid" 2>/dev/null
	fi
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# keel-load has its own time limits; this is a second line of defence.
if command -v timeout >/dev/null 2>&1; then
	bounded="timeout 120"
else
	bounded=""
fi

# Start the server on the first port from 20000 up (offset by our PID, so
# that two demos at once rarely collide) that it can listen on. Trying the
# real bind is race-free, unlike checking for a free port first. The server
# prints "listening on" once its listener is up, so connections from then
# on wait in the backlog.
start_server() {
	base=$((20000 + $$ % 1000))
	port=$base
	while [ "$port" -lt $((base + 100)) ]; do
		# Created here: the server's own redirection may come later.
		: >"$tmp/server.log"
		"$ECHO" 127.0.0.1 "$port" >"$tmp/server.log" 2>&1 &
		server_pid=$!
		tries=0
		while [ "$tries" -lt 50 ]; do # up to ~5 s
			if grep -q "listening on" "$tmp/server.log"; then
				PORT=$port
				return 0
			fi
			kill -0 "$server_pid" 2>/dev/null || break
			sleep 0.1
			tries=$((tries + 1))
		done
		if kill -0 "$server_pid" 2>/dev/null; then
			echo "demo: echo did not start listening within 5 s" >&2
			return 1
		fi
		wait "$server_pid" 2>/dev/null
		server_pid=""
		if ! grep -q "Address already in use" "$tmp/server.log"; then
			echo "demo: echo failed to start:" >&2
			cat "$tmp/server.log" >&2
			return 1
		fi
		port=$((port + 1))
	done
	echo "demo: no free loopback port in $base..$((base + 99))" >&2
	return 1
}

# run NAME CONNS BYTES: one keel-load run; its RESULT line goes to the table.
run() {
	name=$1
	out="$tmp/load-$name.log"
	echo "demo: keel-load -c $2 -s $3 -d $SECS ($name)"
	if ! $bounded "$LOAD" -h 127.0.0.1 -p "$PORT" -c "$2" -s "$3" \
		-d "$SECS" >"$out" 2>&1; then
		echo "demo: keel-load $name failed:" >&2
		sed 's/^/    /' "$out" >&2
		failed=1
	fi
	result=$(grep '^RESULT ' "$out" | tail -n 1)
	[ -n "$result" ] || result="RESULT (none)"
	echo "$name $result" >>"$tmp/results"
}

# field KEY LINE: the value of KEY=... in a RESULT line, or "-".
field() {
	v=$(echo "$2" | tr ' ' '\n' | sed -n "s/^$1=//p")
	echo "${v:--}"
}

# The trace: a second echo server (one loop) runs with KEEL_TRACE=<file>
# under a short load of its own (8 connections, 1 s), so that the trace
# stays small; keel-trace then writes its summary and HTML report.
trace_step() {
	outdir=$BUILD/demo
	mkdir -p "$outdir"
	ktrace=$outdir/echo.ktrace
	html=$outdir/echo-trace.html
	tport=$((PORT + 1))
	while [ "$tport" -lt $((PORT + 50)) ]; do
		: >"$tmp/traced.log"
		KEEL_TRACE=$ktrace "$ECHO" --threads 1 127.0.0.1 "$tport" \
			>"$tmp/traced.log" 2>&1 &
		traced_pid=$!
		tries=0
		while [ "$tries" -lt 50 ] && ! grep -q "listening on" "$tmp/traced.log"; do
			kill -0 "$traced_pid" 2>/dev/null || break
			sleep 0.1
			tries=$((tries + 1))
		done
		grep -q "listening on" "$tmp/traced.log" && break
		wait "$traced_pid" 2>/dev/null
		traced_pid=""
		grep -q "Address already in use" "$tmp/traced.log" || break
		tport=$((tport + 1))
	done
	if [ -z "$traced_pid" ]; then
		echo "demo: the traced echo server did not start:" >&2
		cat "$tmp/traced.log" >&2
		return 1
	fi
	echo "demo: tracing: keel-load -c 8 -s 64 -d 1 against a traced echo"
	$bounded "$LOAD" -h 127.0.0.1 -p "$tport" -c 8 -s 64 -d 1 -w 0.2 \
		>"$tmp/load-traced.log" 2>&1 || {
		echo "demo: traced load failed:" >&2
		cat "$tmp/load-traced.log" >&2
	}
	kill -TERM "$traced_pid" 2>/dev/null
	wait "$traced_pid"
	status=$?
	traced_pid=""
	if [ "$status" -ne 0 ]; then
		echo "demo: FAIL: the traced echo exited with status $status" >&2
		return 1
	fi
	if ! "$TRACE" summary "$ktrace" >"$outdir/echo-trace.txt" ||
		! "$TRACE" html "$ktrace" -o "$html" ||
		! "$TRACE" chrome "$ktrace" -o "$outdir/echo-trace.json"; then
		echo "demo: FAIL: keel-trace could not read the trace" >&2
		return 1
	fi
	sed -n '1,12p' "$outdir/echo-trace.txt"
	echo "demo: trace:       $ktrace ($(wc -c <"$ktrace") bytes)"
	echo "demo: summary:     $outdir/echo-trace.txt"
	echo "demo: HTML report: $html"
	echo "demo: Perfetto:    $outdir/echo-trace.json (open in ui.perfetto.dev or chrome://tracing)"
}

stop_server() {
	kill -TERM "$server_pid" 2>/dev/null
	tries=0
	while kill -0 "$server_pid" 2>/dev/null && [ "$tries" -lt 50 ]; do
		sleep 0.1
		tries=$((tries + 1))
	done
	if kill -0 "$server_pid" 2>/dev/null; then
		echo "demo: FAIL: echo still running 5 s after SIGTERM;" \
			"killing it" >&2
		kill -KILL "$server_pid" 2>/dev/null
		wait "$server_pid" 2>/dev/null
		server_pid=""
		return 1
	fi
	wait "$server_pid"
	status=$?
	server_pid=""
	if [ "$status" -ne 0 ]; then
		echo "demo: FAIL: echo exited with status $status" \
			"after SIGTERM" >&2
		sed 's/^/    /' "$tmp/server.log" >&2
		return 1
	fi
	sed -n 's/^echo: served/demo: echo served/p' "$tmp/server.log"
	return 0
}

start_server || exit 1
echo "demo: echo listening on 127.0.0.1:$PORT (pid $server_pid)"

# Idle vCPUs of a VM can take 30-40 us to wake, which c=1 round trips would
# measure instead of the server: like the peer harness, ask the kernel for
# no idle latency (PM-QoS 0 us) while the demo runs, when we may. The
# request lasts as long as the file stays open, and ends with the script.
# (Tried in a subshell first: a failed redirection on exec would end sh.)
if (: >/dev/cpu_dma_latency) 2>/dev/null; then
	exec 9>/dev/cpu_dma_latency
	printf '\000\000\000\000' >&9
	echo "demo: holding PM-QoS 0 us (/dev/cpu_dma_latency) for the run"
fi

run c1-64B 1 64
run c64-64B 64 64
run c64-4KiB 64 4096
trace_step || failed=1

echo
printf '%-10s %12s %10s %10s %10s %8s %8s\n' run req/s p50_us p99_us \
	p999_us errors verify
while read -r name result; do
	printf '%-10s %12s %10s %10s %10s %8s %8s\n' "$name" \
		"$(field rps "$result")" "$(field p50_us "$result")" \
		"$(field p99_us "$result")" "$(field p999_us "$result")" \
		"$(field errors "$result")" "$(field verify_errors "$result")"
done <"$tmp/results"
echo

stop_server || failed=1

if [ "$failed" -ne 0 ]; then
	echo "demo: FAILED"
	exit 1
fi
echo "demo: ok"
