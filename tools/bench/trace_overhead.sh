#!/usr/bin/env bash
# trace_overhead.sh: what the tracer costs the echo server, in server CPU
# time per request, measured in one run:
#   notrace  the event sites compiled out (-DKEEL_NO_TRACE): the baseline
#   off      the normal build, tracing off (one branch per event site)
#   on       the normal build with KEEL_TRACE=<file>
# The server runs one loop pinned to CPU 1, keel-load 64 connections of 64 B
# pinned to CPU 0, loopback only. Runs are interleaved, REPS times; the
# ratios are medians of per-repetition ratios (they cancel the VM's drift).
set -uo pipefail
cd "$(dirname "$0")/../.."
BUILD=${BUILD:-build}
REPS=${REPS:-5}
SECS=${SECS:-2}
PORT=${PORT:-21400}
NOTRACE=$BUILD/notrace
out=$(mktemp -d)
trap 'rm -rf "$out"; [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null' EXIT

make -s BUILD="$NOTRACE" EXTRA_CFLAGS=-DKEEL_NO_TRACE "$NOTRACE/examples/echo" >/dev/null || exit 1
make -s "$BUILD/examples/echo" "$BUILD/tools/keel-load" >/dev/null || exit 1

# cpu_ticks PID: user+system clock ticks of the process so far.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# one VARIANT: prints "ns_per_req" for one run of VARIANT.
one() {
	local bin=$BUILD/examples/echo env=()
	case $1 in
	notrace) bin=$NOTRACE/examples/echo ;;
	on) env=(KEEL_TRACE="$out/t.ktrace") ;;
	esac
	PORT=$((PORT + 1)) # a fresh port each run: no wait for the last one
	env "${env[@]}" taskset -c 1 "$bin" --threads 1 127.0.0.1 "$PORT" >"$out/srv.log" 2>&1 &
	pid=$!
	for _ in $(seq 50); do grep -q listening "$out/srv.log" && break; sleep 0.1; done
	local t0 r t1
	t0=$(cpu_ticks "$pid")
	r=$(taskset -c 0 "$BUILD/tools/keel-load" -p "$PORT" -c 64 -s 64 -d "$SECS" -w 0 | sed -n 's/.* reqs=\([0-9]*\).*/\1/p')
	t1=$(cpu_ticks "$pid")
	kill -TERM "$pid"; wait "$pid" 2>/dev/null; pid=
	awk -v a="$t0" -v b="$t1" -v r="$r" -v hz="$(getconf CLK_TCK)" \
		'BEGIN { printf "%.1f\n", (b - a) * 1e9 / hz / r }'
}

for rep in $(seq "$REPS"); do
	n=$(one notrace); f=$(one off); o=$(one on)
	echo "$rep $n $f $o" | tee -a "$out/raw"
done
python3 - "$out/raw" <<'PY'
import statistics, sys
rows = [list(map(float, l.split()[1:])) for l in open(sys.argv[1]) if 'nan' not in l]
med = lambda xs: statistics.median(xs)
n, f, o = zip(*rows)
print(f"server CPU ns/request (median of {len(rows)}): notrace {med(n):.0f}, off {med(f):.0f}, on {med(o):.0f}")
print(f"tracing off: {100 * (med([b / a for a, b, _ in rows]) - 1):+.1f}%   "
      f"tracing on: {100 * (med([c / a for a, _, c in rows]) - 1):+.1f}%   (paired medians vs notrace)")
PY
