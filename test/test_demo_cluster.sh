#!/bin/sh
# SPDX-License-Identifier: MIT
# test_demo_cluster.sh: `make demo-cluster`'s claims, from its output, in a
# short run (tools/demo-cluster.sh: examples/supervised across processes
# over a loopback nats-server; shard process 1/2 killed with SIGKILL under
# load, then started again). The demo passes its own checks; before the
# kill requests are answered; while that process is down the front answers
# "ERR shard down" for its shards (or "ERR timeout" for the requests in
# flight to it, one per connection at most) and still answers for the other
# process's; after the restart settled there are answers and no errors; no
# client waited 2 s for an answer; the front saw the shards go down and
# come back, and exited 0 on SIGTERM.
# Then, with a client of python3's socket module: a front whose shard
# process 1/2 was never started answers "ERR shard down" at once for the
# keys of its shards and serves the others, and serves them all once that
# process has started.
# Skipped (saying so, as passed) where nats-server is not installed.
# Builds nothing: runs $BUILD/examples/supervised (BUILD defaults to
# build). Last line: "demo_cluster: N passed, M failed"; exit 1 on any
# failure.
set -u
BUILD=${BUILD:-build}
SUITE=demo_cluster
. test/helpers/checks.sh
bin=$BUILD/examples/supervised
pids=
trap 'for p in $pids; do kill -KILL "$p" 2>/dev/null; done; rm -rf "$dir"' EXIT

if ! nats=$(PATH="$PATH:/usr/sbin:/sbin" command -v nats-server); then
	ok "skipped: nats-server is not installed (make deps)"
	finish
fi
if [ ! -x "$bin" ] || ! command -v python3 >/dev/null; then
	bad "$bin and python3 are needed (run make first)"
	finish
fi

# ---- the demo, short --------------------------------------------------------
# Settled 2 s after the restart: a loaded machine (a sanitizer build) gets
# more than the demo's 1.5 s.
DEMO_SECS=8 DEMO_KILL_AT=1.5 DEMO_DOWN_SECS=1.5 DEMO_SETTLE_SECS=2 \
	DEMO_RATE=500 BUILD=$BUILD timeout 120 sh tools/demo-cluster.sh \
	>"$dir/demo.out" 2>&1
status=$?
cat "$dir/demo.out"

# phase P N: field N of phase P's line ("  before: S s, OK ok, E errors
# (D shard down, T timeouts, L connections lost, H hangs)", a hang being
# no answer in 2 s); -1 when the demo printed none.
phase() {
	awk -v p="$1:" -v n="$2" '$1 == p { gsub(/[(,)]/, ""); v = $n }
		END { print v == "" ? -1 : v }' "$dir/demo.out"
}
check "the demo passes its own checks (exit 0)" [ "$status" = 0 ]
check "before the kill, requests are answered" [ "$(phase before 4)" -gt 0 ]
check "while a shard process is down, the front answers ERR shard down" \
	[ "$(phase down 8)" -gt 0 ]
check "while it is down, the other process's shards are served" \
	[ "$(phase down 4)" -gt 0 ]
# Errors then are ERR shard down, or the deadline's ERR timeout for the
# requests in flight to the killed process: one per connection at most.
check "while it is down, errors are ERR shard down or timeouts" \
	[ "$(phase down 6)" = $(($(phase down 8) + $(phase down 11))) ]
check "only requests in flight at the kill time out ($(phase down 11))" \
	[ "$(phase down 11)" -le 16 ]
check "after the restart settled, requests are answered" \
	[ "$(phase after 4)" -gt 0 ]
check "after the restart settled, no errors" [ "$(phase after 6)" = 0 ]
hangs=$(awk '$1 ~ /^(before|down|after):$/ { gsub(/[(,)]/, "");
	n += $16 } END { print n + 0 }' "$dir/demo.out")
check "no request went unanswered for 2 s ($hangs)" [ "$hangs" = 0 ]
check "the front saw a shard go down" grep -q ' s: shard [0-9]* down' \
	"$dir/demo.out"
check "the front saw the shards come back (6 ups: 4 at start, 2 after)" \
	[ "$(grep -c ' s: shard [0-9]* up' "$dir/demo.out")" -ge 6 ]
check "the front exited 0 on SIGTERM" \
	grep -q '^  exit status on SIGTERM: 0$' "$dir/demo.out"

# ---- a client nobody here wrote, against a front missing a process ---------
"$nats" -a 127.0.0.1 -p -1 >"$dir/nats.log" 2>&1 &
pids="$pids $!"
for _ in $(seq 100); do
	grep -q 'Listening for client connections' "$dir/nats.log" && break
	sleep 0.1
done
nport=$(sed -n 's/.*Listening for client connections on [^ ]*:\([0-9]*\).*/\1/p' \
	"$dir/nats.log" | head -n 1)
url=nats://127.0.0.1:$nport
"$bin" --nats "$url" --role shards --shard-set 0/2 --threads 1 \
	>"$dir/shards0.log" 2>&1 &
pids="$pids $!"
"$bin" --nats "$url" --role front --threads 1 127.0.0.1 0 \
	>"$dir/front.log" 2>&1 &
front=$!
pids="$pids $front"
for _ in $(seq 100); do
	[ "$(grep -c ' s: shard [0-9]* up' "$dir/front.log")" -ge 2 ] && break
	sleep 0.1
done
port=$(sed -n 's/^supervised: listening on 127\.0\.0\.1:\([0-9]*\) .*/\1/p' \
	"$dir/front.log")
check "a front with half its shards starts and says its port" [ -n "$port" ]
[ -n "$port" ] || finish

# Keys k0..k39 over 4 shards: each answer is OK (a shard of process 0/2)
# or ERR shard down (of 1/2, never started), and never the deadline's.
cat >"$dir/probe.py" <<'PY'
import socket, sys, time
port, want = int(sys.argv[1]), sys.argv[2]
s = socket.create_connection(("127.0.0.1", port), timeout=10)
f = s.makefile("rb")
answers = {}
# Until every key answers OK (want=all), or once (want=half): bounded.
for attempt in range(100):
    for k in range(40):
        s.sendall(b"SET k%d v%d\n" % (k, k))
        answers[k] = f.readline().decode().strip()
    if want == "half" or all(a == "OK" for a in answers.values()):
        break
    time.sleep(0.1)
ok = sum(a == "OK" for a in answers.values())
down = sum(a == "ERR shard down" for a in answers.values())
print("ok %d down %d other %d" % (ok, down, len(answers) - ok - down))
PY
timeout 60 python3 "$dir/probe.py" "$port" half >"$dir/half.out" 2>&1
cat "$dir/half.out"
check "python: keys of the missing process answer ERR shard down" \
	grep -q '^ok [1-9][0-9]* down [1-9][0-9]* other 0$' "$dir/half.out"
"$bin" --nats "$url" --role shards --shard-set 1/2 --threads 1 \
	>"$dir/shards1.log" 2>&1 &
pids="$pids $!"
timeout 60 python3 "$dir/probe.py" "$port" all >"$dir/all.out" 2>&1
cat "$dir/all.out"
check "python: once it has started, every key is served" \
	grep -q '^ok 40 down 0 other 0$' "$dir/all.out"
kill -TERM "$front"
wait "$front"
check "that front exits 0 on SIGTERM" [ $? = 0 ]
finish
