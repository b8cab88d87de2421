#!/bin/sh
# SPDX-License-Identifier: MIT
# demo-cluster.sh: what `make demo-cluster` runs: examples/supervised
# across processes over NATS (issue 18's example). Starts a loopback
# nats-server on a free port, two shard processes (--role shards, the sets
# 0/2 and 1/2 of 4 shards), a front (--role front) on a free loopback port,
# and the example's client under load. A few seconds in, shard process
# 1/2 is killed with SIGKILL; a few seconds later it is started again.
# Prints what the clients saw in each phase (before the kill; down: from
# the kill until the restarted process has served for a while; after),
# and what the front saw. Fails (exit 1) if the front died, a client
# waited 2 s for an answer (a hang), errors went on after the restart
# settled, a value read back was wrong, or the front or a shard process
# did not exit 0 on SIGTERM.
#
#   BUILD=build sh tools/demo-cluster.sh
#
# Knobs: DEMO_SECS (the client's run, default 12), DEMO_RATE (requests/s,
# 1000), DEMO_KILL_AT (seconds into the run, 3), DEMO_DOWN_SECS (3),
# DEMO_SETTLE_SECS (from the restarted process serving until errors must
# have stopped, 1.5). Loopback only; everything it starts is killed on
# exit, by PID.
set -u

BUILD=${BUILD:-build}
BIN=$BUILD/examples/supervised
SECS=${DEMO_SECS:-12}
RATE=${DEMO_RATE:-1000}
KILL_AT=${DEMO_KILL_AT:-3}
DOWN=${DEMO_DOWN_SECS:-3}
SETTLE=${DEMO_SETTLE_SECS:-1.5}
SHARDS=4

if [ ! -x "$BIN" ]; then
	echo "demo-cluster: $BIN is missing: run make first" >&2
	exit 1
fi
# Debian installs nats-server in /usr/sbin, which a user's PATH may lack.
if ! NATS_SERVER=$(PATH="$PATH:/usr/sbin:/sbin" command -v nats-server); then
	echo "demo-cluster: nats-server is missing: make deps installs it" >&2
	exit 1
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/keel-demo-cluster.XXXXXX") || exit 1
pids=""

cleanup() {
	for p in $pids; do
		kill -KILL "$p" 2>/dev/null
	done
	wait 2>/dev/null
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

now() {
	date +%s.%N
}

# wait_for FILE REGEX PID: until FILE has a line matching REGEX (10 s at
# most, or until PID exits); false if it has none.
wait_for() {
	tries=0
	while [ "$tries" -lt 100 ] && ! grep -q "$2" "$1" 2>/dev/null; do
		kill -0 "$3" 2>/dev/null || break
		sleep 0.1
		tries=$((tries + 1))
	done
	grep -q "$2" "$1" 2>/dev/null
}

# reap PID TENTHS: TENTHS tenths of a second for PID to exit, then
# SIGKILL; its exit status in $reaped.
reap() {
	tries=0
	while kill -0 "$1" 2>/dev/null && [ "$tries" -lt "$2" ]; do
		sleep 0.1
		tries=$((tries + 1))
	done
	kill -KILL "$1" 2>/dev/null
	wait "$1"
	reaped=$?
}

# stop PID: SIGTERM, and 5 s to exit.
stop() {
	kill -TERM "$1" 2>/dev/null
	reap "$1" 50
}

die() {
	echo "demo-cluster: $1" >&2
	for f in "$tmp"/*.log; do
		echo "-- $(basename "$f")" >&2
		cat "$f" >&2
	done
	exit 1
}

# nats-server picks a free port itself (-p -1) and says which.
"$NATS_SERVER" -a 127.0.0.1 -p -1 >"$tmp/nats.log" 2>&1 &
nats_pid=$!
pids="$pids $nats_pid"
wait_for "$tmp/nats.log" "Listening for client connections on" $nats_pid ||
	die "nats-server did not start"
nats_port=$(sed -n 's/.*Listening for client connections on [^ ]*:\([0-9]*\).*/\1/p' \
	"$tmp/nats.log" | head -n 1)
url=nats://127.0.0.1:$nats_port

# start_shards K LOG: shard process K/2; its PID in $shards_pid.
start_shards() {
	"$BIN" --nats "$url" --role shards --shard-set "$1/2" --threads 1 \
		--shards $SHARDS >"$2" 2>&1 &
	shards_pid=$!
	pids="$pids $shards_pid"
	wait_for "$2" "^supervised: serving shards" $shards_pid ||
		die "shard process $1/2 did not start"
}
start_shards 0 "$tmp/shards-0.log"
shards0_pid=$shards_pid
start_shards 1 "$tmp/shards-1.log"
shards1_pid=$shards_pid

"$BIN" --nats "$url" --role front --threads 2 --shards $SHARDS \
	127.0.0.1 0 >"$tmp/front.log" 2>&1 &
front_pid=$!
pids="$pids $front_pid"
wait_for "$tmp/front.log" "^supervised: listening on" $front_pid ||
	die "the front did not start"
port=$(sed -n 's/^supervised: listening on 127\.0\.0\.1:\([0-9]*\) .*/\1/p' \
	"$tmp/front.log")
# Every shard up, as the front sees them, before the load starts.
tries=0
while [ "$(grep -c '^supervised: .* s: shard [0-9]* up' "$tmp/front.log")" \
	-lt $SHARDS ] && [ "$tries" -lt 100 ]; do
	sleep 0.1
	tries=$((tries + 1))
done

echo "== supervised across processes over NATS ($url): shard processes"
echo "   0/2 and 1/2 hold 2 of its $SHARDS shards each; a front on"
echo "   127.0.0.1:$port asks them for its clients. A client sends $RATE"
echo "   requests/s over 16 connections for $SECS s; ${KILL_AT} s in, shard"
echo "   process 1/2 is killed (SIGKILL), and started again ${DOWN} s later."
echo

"$BIN" --client --conns 16 --rate "$RATE" --duration "$SECS" --every 0.5 \
	127.0.0.1 "$port" >"$tmp/client.log" 2>&1 &
client_pid=$!
pids="$pids $client_pid"
wait_for "$tmp/client.log" "^client: started at" $client_pid ||
	die "the client did not start"
start=$(sed -n 's/^client: started at \([0-9.]*\) s.*/\1/p' "$tmp/client.log")

sleep "$KILL_AT"
t_kill=$(now)
kill -KILL "$shards1_pid"
wait "$shards1_pid" 2>/dev/null
sleep "$DOWN"
t_restart=$(now)
start_shards 1 "$tmp/shards-1-again.log"
t_back=$(now)

# The client's run is bounded (--duration); 60 s more is a hang.
reap "$client_pid" 600
client_status=$reaped
front_alive=no
kill -0 "$front_pid" 2>/dev/null && front_alive=yes
stop "$front_pid"
front_status=$reaped
stop "$shards0_pid"
shards_status=$reaped
stop "$shards_pid"
shards_status="$shards_status $reaped"
stop "$nats_pid"

# Each period line of the client ("client: T s: N ok, E errors (D shard
# down, O timeouts, L connections lost, U unanswered)") goes to the phase
# its end falls in, in the client's time.
phases=$(awk -v start="$start" -v kill="$t_kill" -v back="$t_back" \
	-v settle="$SETTLE" '
	function add(p, i) { for (i = 1; i <= 6; i++) sum[p, i] += v[i]; secs[p] += $2 - prev }
	/^client: [0-9.]+ s: / {
		gsub(/[(,)]/, "")
		v[1] = $4; v[2] = $6; v[3] = $8; v[4] = $11; v[5] = $13
		v[6] = $16
		if ($2 <= kill - start) add("before")
		else if ($2 <= back - start + settle) add("down")
		else add("after")
		prev = $2
	}
	END {
		split("before down after", names, " ")
		for (n = 1; n <= 3; n++) {
			p = names[n]
			printf "  %s: %.2f s, %d ok, %d errors (%d shard down, " \
			    "%d timeouts, %d connections lost, %d hangs)\n",
			    p, secs[p], sum[p, 1], sum[p, 2], sum[p, 3],
			    sum[p, 4], sum[p, 5], sum[p, 6]
		}
	}' "$tmp/client.log")

echo "-- what the clients saw, per phase (down: from the kill until the"
echo "   restarted process had served for $SETTLE s; hangs: no answer in 2 s)"
echo "$phases"
echo "-- in all"
grep -v '^client: [0-9.]* s: \|^client: started' "$tmp/client.log" |
	sed 's/^client: /  /'
echo "-- what the front saw (shard process 1/2 killed, restarted" \
	"$(awk -v a="$t_kill" -v b="$t_restart" 'BEGIN { printf "%.2f", b - a }') s" \
	"later)"
# Its times are since its start: placed in ours through its Unix time.
awk -v kill="$t_kill" -v restart="$t_restart" '
	/^supervised: started at / { start = $4 }
	/^supervised: [0-9.]+ s: shard [0-9]+ (up|down) / {
		at = start + $2
		note = ""
		if ($6 == "down" && at >= kill)
			note = sprintf(": %.3f s after the kill", at - kill)
		if ($6 == "up" && at >= kill)
			note = sprintf(": %.3f s after the restart", at - restart)
		sub(/^supervised: /, "")
		print "  " $0 note
	}
	/^supervised: served|^supervised: remote shards/ {
		sub(/^supervised: /, "")
		print "  " $0
	}' "$tmp/front.log"
echo "  exit status on SIGTERM: $front_status"
echo "-- the restarted shard process"
sed 's/^supervised: /  /' "$tmp/shards-1-again.log"

after_errors=$(echo "$phases" | awk '$1 == "after:" { print $6 }')
after_ok=$(echo "$phases" | awk '$1 == "after:" { print $4 }')
hangs=$(echo "$phases" | awk '{ gsub(/[(,)]/, ""); n += $16 } END { print n + 0 }')
failed=""
[ "$front_alive" = yes ] || failed="$failed; the front died"
[ "$hangs" = 0 ] || failed="$failed; $hangs requests unanswered for 2 s"
[ "${after_ok:-0}" -gt 0 ] ||
	failed="$failed; nothing answered after the restart settled"
[ "${after_errors:-1}" = 0 ] ||
	failed="$failed; errors after the restart settled"
[ "$client_status" = 0 ] ||
	failed="$failed; the client failed (wrong values, or none ok)"
[ "$front_status" = 0 ] ||
	failed="$failed; the front exited $front_status on SIGTERM"
[ "$shards_status" = "0 0" ] ||
	failed="$failed; the shard processes exited $shards_status on SIGTERM"
echo
if [ -n "$failed" ]; then
	echo "demo-cluster: FAILED${failed}" | sed 's/FAILED; /FAILED: /' >&2
	exit 1
fi
echo "demo-cluster: ok: the front kept serving, no client hung, and" \
	"errors stopped once the shard process was back"
