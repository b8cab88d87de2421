#!/bin/sh
# SPDX-License-Identifier: MIT
# demo-supervised.sh: what `make demo-supervised` runs. Starts
# examples/supervised (a key-value server whose shards are actors under a
# supervision tree) on a free loopback port, with shards that panic on 1%
# of requests and a fault storm after 2 s; drives it with the example's own
# client for a few seconds; stops it with SIGTERM (it must exit 0); prints
# what clients saw (their error rate, keys lost to restarts, wrong values:
# none allowed) and what the tree did (restarts, escalations), from the
# server and from its trace (keel-trace summary).
#
#   BUILD=build sh tools/demo-supervised.sh
#
# Knobs: DEMO_SECS (client run, default 5), DEMO_RATE (requests/s, 2000),
# DEMO_PANIC_RATE (0.01), DEMO_STORM_AT (2). Loopback only; the server is
# the only process this script stops, by its PID.
set -u

BUILD=${BUILD:-build}
BIN=$BUILD/examples/supervised
TRACE=$BUILD/tools/keel-trace
SECS=${DEMO_SECS:-5}
RATE=${DEMO_RATE:-2000}
PANIC=${DEMO_PANIC_RATE:-0.01}
STORM=${DEMO_STORM_AT:-2}

for bin in "$BIN" "$TRACE"; do
	if [ ! -x "$bin" ]; then
		echo "demo-supervised: $bin is missing: run make first" >&2
		exit 1
	fi
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/keel-demo-sup.XXXXXX") || exit 1
server_pid=""

cleanup() {
	if [ -n "$server_pid" ] && kill -TERM "$server_pid" 2>/dev/null; then
		tries=0
		while kill -0 "$server_pid" 2>/dev/null && [ "$tries" -lt 20 ]; do
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

if command -v timeout >/dev/null 2>&1; then
	bounded="timeout $((SECS + 60))"
else
	bounded=""
fi

# The first port from 21000 up (offset by our PID) the server can bind;
# it prints "listening on" once its whole tree is up.
base=$((21000 + $$ % 1000))
port=$base
while [ "$port" -lt $((base + 100)) ]; do
	: >"$tmp/server.log"
	KEEL_TRACE="$tmp/server.ktrace" "$BIN" --threads 2 --shards 4 \
		--panic-rate "$PANIC" --storm-at "$STORM" \
		127.0.0.1 "$port" >"$tmp/server.log" 2>&1 &
	server_pid=$!
	tries=0
	while [ "$tries" -lt 50 ] && kill -0 "$server_pid" 2>/dev/null; do
		grep -q "listening on" "$tmp/server.log" && break
		sleep 0.1
		tries=$((tries + 1))
	done
	grep -q "listening on" "$tmp/server.log" && break
	kill -TERM "$server_pid" 2>/dev/null
	wait "$server_pid" 2>/dev/null
	server_pid=""
	port=$((port + 1))
done
if [ -z "$server_pid" ]; then
	echo "demo-supervised: the server did not start:" >&2
	cat "$tmp/server.log" >&2
	exit 1
fi

pct=$(awk "BEGIN { print $PANIC * 100 }")
echo "== supervised: a key-value server on 127.0.0.1:$port; its 4 shards"
echo "   (actors, under a supervisor) panic on $pct% of requests, and"
echo "   a fault storm starts ${STORM} s in; a client sends $RATE requests/s"
echo "   over 16 connections for ${SECS} s and checks every value read back."
echo
# shellcheck disable=SC2086
$bounded "$BIN" --client --conns 16 --rate "$RATE" --duration "$SECS" \
	127.0.0.1 "$port" >"$tmp/client.log" 2>&1
client_status=$?

kill -TERM "$server_pid"
tries=0
while kill -0 "$server_pid" 2>/dev/null && [ "$tries" -lt 50 ]; do
	sleep 0.1
	tries=$((tries + 1))
done
if kill -0 "$server_pid" 2>/dev/null; then
	echo "demo-supervised: the server did not stop within 5 s of SIGTERM" >&2
	exit 1
fi
wait "$server_pid"
server_status=$?
server_pid=""

echo "-- what the server saw"
sed 's/^supervised: /  /' "$tmp/server.log"
echo "-- what the clients saw"
sed 's/^client: /  /' "$tmp/client.log"
echo "-- the server's trace (keel-trace summary)"
"$TRACE" summary "$tmp/server.ktrace" 2>/dev/null |
	sed -n '/^restarts:/,/^$/p' | sed '/^$/d; s/^/  /'
echo
echo "server exit status on SIGTERM: $server_status; client: $client_status"
if [ "$server_status" != 0 ] || [ "$client_status" != 0 ]; then
	echo "demo-supervised: FAILED" >&2
	exit 1
fi
