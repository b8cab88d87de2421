#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# bench.sh: what `make bench` runs. Three parts, each bounded in time:
#
#  1. keel's microbenchmarks: build/tools/keel-micro (ns per op, the peers'
#     method: runs of >= 0.3 s, median of 5), printed as a table.
#  2. Exact instruction counts: keel-micro's fixed-count mode under callgrind
#     for a few benchmarks, twice (N1 and N2 ops), so that setup cost cancels:
#     Ir/op = (Ir(N2) - Ir(N1)) / (N2 - N1); with the functions that make up
#     those instructions.
#  3. The peer harness (PEERS, default ../shared/bench/peers), if present:
#     copied into $BUILD/peers (the shared folder is never written to), built
#     there, then the runtime microbenchmarks with keel as one more column,
#     the echo matrix with keel's examples/echo next to the raw io_uring and
#     epoll servers, io_uring_enter calls per request (keel's counters and
#     strace -c), the proxy run (keel's examples/proxy in both modes next to
#     haproxy and a direct connection) and the idle-connection memory run
#     (10,000 idle connections; keel's row parks idle recv streams on a
#     poll, keel-msrecv keeps the multishot recv armed: --no-idle-poll), and the HTTP table: keel's examples/http
#     next to nginx and h2o (run-http.sh, wrk at 1, 64 and 256 connections;
#     a 5-byte answer and a 4 KiB static file) with keel/nginx ratios and
#     the echo floor. Then the TLS tables (tools/bench/tls.sh, section 3g):
#     full handshakes per second and HTTPS keep-alive, keel's examples/http
#     against nginx; the TLS-terminating proxy, keel's examples/proxy
#     against haproxy, in front of one plain nginx backend; the plain proxy
#     with health checks off and on; one ECDSA P-256 certificate (made in
#     the output directory) and one TLS 1.3 suite for all. A keel binary
#     without the option a row needs leaves the row out, with a line.
#     Loopback only. A peer that fails to build is skipped. keel's rows
#     also run on the epoll backend (KEEL_BACKEND=epoll: keel-epoll,
#     keel-splice-epoll, keel-http-epoll, keel-http-4k-epoll), with paired
#     ratios against the plain epoll server (CPU per request, goal <= 1.1x),
#     keel on io_uring, haproxy and nginx.
#  4. NATS (issue 18): tools/keel-natsbench over one loopback nats-server
#     started here on a free port: ask round trips one at a time (p50, p99)
#     and tells delivered per second, keel's node against the floor, plain
#     cnats (natsConnection_Request / Publish) between two processes, and
#     the asking process's CPU time per ask.
#
# Knobs (environment):
#   BENCH_QUICK=1     short runs everywhere (a smoke test of the whole thing)
#   SKIP_CALLGRIND=1  SKIP_PEERS=1  SKIP_ECHO=1  SKIP_ENTERS=1  SKIP_PROXY=1
#   SKIP_IDLE=1  SKIP_MICRO=1 (the peers' runtime microbenchmarks)
#   BENCH_HTTP=0      no HTTP part; HTTP_CONFIGS="1 64 256" (wrk connections),
#                     HTTP_REPS (default REPS, else 5), FLOOR_REPS (3)
#   BENCH_TLS=0       no TLS part; BENCH_TLS=only: the TLS part alone (no
#                     keel-micro, callgrind, other peer runs or summary);
#                     TLS_CONFIGS="1 64" (wrk connections), TLS_HS_CONNS=64
#                     (clients per handshake round), TLS_REPS (default REPS,
#                     else 5), TLS_DUR=2 (s per cell), TLS_SUITE, TLS_GROUP,
#                     KEEL_HEALTH_OPTS (examples/proxy's health check options)
#   SKIP_NATS=1       no NATS part; BENCH_NATS=only: the NATS part alone;
#                     NATS_REPS (default 3), NATS_ASKS (20000), NATS_TELLS
#                     (200000)
#   FILTER=substr     only benchmarks whose name contains it (keel and peers)
#   REPS              repetitions for the peer runs (MICRO_REPS, ECHO_REPS
#                     override it per run; defaults 1 and 7)
#   MICRO_PEERS="tokio-ct tokio-mt go-p1 go-p2 c"   peer columns of the micro run
#   ECHO_PEERS="uring epoll"                        peers of the echo matrix
#   ECHO_BUF=16384    keel's --buf-size in the echo matrix (the floor's size)
#   ECHO_CONFIGS="1x64 64x64 64x4096"  CONNSxBYTES cells of the echo matrix
#                     (BENCH_TABLE=only adds 4x64 16x64 256x64)
#   IDLE_PEERS="uring epoll uv tokio-ct go"  peers of the idle run; IDLE_N=10000
#   CG_BENCHES="spawn_join ..."  benchmarks counted under callgrind (default:
#                     spawn_join spawn_yield_join yield await_ready
#                     timer_arm_cancel timer_100k_wall nop_b1)
#   DUR WARM CONFIGS PIN ...  passed through to the peers' run.sh
#   BENCH_OUT=dir     where results go (default $BUILD/bench/<timestamp>)
#   BENCH_TABLE=only  just the inputs of issue 17's table, short (no part 1:
#                     keel's column of the micro run instead; callgrind of
#                     the table's micro rows; micro: tokio-ct and c; echo:
#                     3 reps; proxy: 3 reps of 64x64 (PROXY_CONFIGS); idle:
#                     uring and epoll, 1 rep of 2,000 connections; no HTTP,
#                     no TLS; ~15 min with the peers built, on 2 busy vCPUs);
#                     BENCH_TABLE=0: no table. The table ("the
#                     table" at the end, report.py table) holds every row of
#                     issue 17 against its floor and goal, from this run.
#
# Make runs this with `sh`; the script needs bash.
if [ -z "${BASH_VERSION:-}" ]; then exec bash "$0" "$@"; fi
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
BUILD="${BUILD:-build}"
[[ -d "$BUILD" ]] || { echo "bench: no build directory '$BUILD': run make" >&2; exit 1; }
BUILD="$(cd "$BUILD" && pwd)"
MICRO="$BUILD/tools/keel-micro"
ECHO_BIN="$BUILD/examples/echo"
PROXY_BIN="$BUILD/examples/proxy"
HTTP_BIN="$BUILD/examples/http"
REPORT="$HERE/bench/report.py"
[[ -x "$MICRO" ]] || { echo "bench: $MICRO not built: run make" >&2; exit 1; }

# PEERS is the harness's location here (from the Makefile; empty: absent).
# The harness's own scripts use PEERS for a list of peer names, so it must
# not leak into their environment.
PEERS_SRC="${PEERS-$ROOT/../shared/bench/peers}"
unset PEERS

QUICK="${BENCH_QUICK:-0}"
[[ "$QUICK" == 1 ]] || QUICK=0
FILTER="${FILTER:-}"
RES="${BENCH_OUT:-$BUILD/bench/$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$RES" && RES="$(cd "$RES" && pwd)"
T0=$(date +%s)
FAILED=()
TABLES=()
TLS_ONLY=0
# --- BENCH_TABLE=only: the table's inputs alone (see the knobs above) ---------
TABLE_ONLY=0
if [[ "${BENCH_TABLE:-1}" == only ]]; then
	TABLE_ONLY=1
	BENCH_HTTP=0 BENCH_TLS=0
	: "${CG_BENCHES:=spawn_join chan_2tasks pingpong_2tasks timer_100k_wall nop_b1 nop_b8 nop_b32 nop_b128}"
	: "${MICRO_PEERS:=tokio-ct c}" "${ECHO_REPS:=3}" "${PROXY_REPS:=3}"
	: "${IDLE_PEERS:=uring epoll}" "${IDLE_REPS:=1}" "${IDLE_N:=2000}"
	: "${PROXY_CONFIGS:=64x64}"
	# Batching by default must win at c=64 and lose nothing at c=1..16.
	: "${ECHO_CONFIGS:=1x64 4x64 16x64 64x64 256x64 64x4096}"
fi
# ------------------------------------------------------------------------------
NATS_ONLY=0
if [[ "${BENCH_NATS:-1}" == only ]]; then
	NATS_ONLY=1
	SKIP_CALLGRIND=1 SKIP_PEERS=1 BENCH_TABLE=0
fi
if [[ "${BENCH_TLS:-1}" == only ]]; then
	TLS_ONLY=1
	SKIP_CALLGRIND=1 SKIP_MICRO=1 SKIP_ECHO=1 SKIP_ENTERS=1 SKIP_PROXY=1
	SKIP_IDLE=1 BENCH_HTTP=0
fi

say() { printf '\n== %s\n' "$*"; }
elapsed() { echo "$(($(date +%s) - $1)) s"; }
on() { [[ -n "${1:-}" && "$1" != 0 ]]; }

say "keel bench: results in $RES${FILTER:+; filter: $FILTER}$([[ $QUICK == 1 ]] && echo '; quick')"
echo "machine: $(uname -r), $(nproc) CPUs ($(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo))"
rev="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)" &&
	{ git -C "$ROOT" diff --quiet HEAD -- 2>/dev/null || rev="$rev+changes"; }
echo "keel: ${rev:-unknown revision}"
# Busy share of all CPUs over one second: ns/op numbers taken on a busy
# machine are noise (instruction counts are not).
busy=$(
	snap() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat; }
	a=$(snap); sleep 1; b=$(snap)
	awk -v a="$a" -v b="$b" 'BEGIN{split(a,x," "); split(b,y," "); d=y[2]-x[2]; if (d<=0) d=1; printf "%.0f", 100*(y[1]-x[1])/d}'
)
echo "machine busy before the run: ${busy}% of all CPUs"
((busy > 10)) && echo "WARNING: the machine is not idle: ns/op numbers will be noisy"

# --- 1. keel-micro ------------------------------------------------------------
keel_micro() {
	say "1. keel microbenchmarks (build/tools/keel-micro${FILTER:+ $FILTER})"
	t=$(date +%s)
	QOPT=()
	[[ $QUICK == 1 ]] && QOPT=(--quick)
	timeout -k 5 600 "$MICRO" "${QOPT[@]}" ${FILTER:+"$FILTER"} \
		>"$RES/keel-micro.out" 2>"$RES/keel-micro.err"
	rc=$?
	grep '^RESULT' "$RES/keel-micro.out" | sed 's/^/   /'
	if ((rc != 0)); then
		echo "!! keel-micro exited with status $rc:"
		tail -5 "$RES/keel-micro.err"
		FAILED+=("keel-micro")
	fi
	sed 's/^/   /' "$RES/keel-micro.err"
	timeout 60 python3 "$REPORT" keel "$RES/keel-micro.out" >"$RES/keel-micro.md"
	echo
	cat "$RES/keel-micro.md"
	TABLES+=("$RES/keel-micro.md")
	echo "(part 1: $(elapsed "$t"))"
}
if ((TLS_ONLY)); then
	say "1. keel microbenchmarks: skipped (BENCH_TLS=only)"
elif ((TABLE_ONLY)); then
	say "1. keel microbenchmarks: skipped (BENCH_TABLE=only: keel's column of the micro run)"
elif ((NATS_ONLY)); then
	say "1. keel microbenchmarks: skipped (BENCH_NATS=only)"
else
	keel_micro
fi

# --- 2. callgrind -------------------------------------------------------------
CG="$RES/callgrind"
if on "${SKIP_CALLGRIND:-}"; then
	say "2. instruction counts: skipped (SKIP_CALLGRIND)"
else
	say "2. instructions per op (callgrind, exact: (Ir(N2) - Ir(N1)) / (N2 - N1))"
	t=$(date +%s)
	if ! command -v valgrind >/dev/null && [[ "$(id -u)" == 0 ]]; then
		echo "valgrind missing: installing it (Debian package)"
		DEBIAN_FRONTEND=noninteractive timeout 600 apt-get -o DPkg::Lock::Timeout=120 \
			install -y -qq --no-install-recommends valgrind >/dev/null 2>&1 ||
			{ timeout 300 apt-get -o DPkg::Lock::Timeout=120 update -qq &&
			  DEBIAN_FRONTEND=noninteractive timeout 600 apt-get -o DPkg::Lock::Timeout=120 \
				install -y -qq --no-install-recommends valgrind; } >/dev/null 2>&1
	fi
	if ! command -v valgrind >/dev/null; then
		echo "valgrind not installed: skipped (apt-get install valgrind)"
	else
		mkdir -p "$CG"
		: >"$CG/ir.tsv"
		if [[ $QUICK == 1 ]]; then N1=2000 N2=12000; else N1=20000 N2=120000; fi
		for b in ${CG_BENCHES:-spawn_join spawn_yield_join yield await_ready timer_arm_cancel timer_100k_wall nop_b1 ratelimit_acquire mb_recv_ready select_mb2 chan_2tasks pingpong_2tasks nop_b8 nop_b32 nop_b128}; do
			[[ -z "$FILTER" || "$b" == *"$FILTER"* ]] || continue
			n1=$N1 n2=$N2
			# One round of timer_100k is 100k ops; under callgrind every
			# sleep has expired by the time the loop looks (no idle turns).
			[[ "$b" == timer_100k* ]] && n1=100000 n2=200000
			ok=1
			for n in "$n1" "$n2"; do
				# --fair-sched: keel runs a stall watchdog thread, and
				# valgrind's default scheduling can starve the loop behind it.
				timeout -k 5 600 valgrind --tool=callgrind --fair-sched=yes \
					--callgrind-out-file="$CG/$b.$n.out" \
					"$MICRO" --callgrind "$n" "=$b" >"$CG/$b.$n.log" 2>&1 ||
					{ ok=0; echo "!! callgrind $b $n failed:"; tail -5 "$CG/$b.$n.log"; }
			done
			if ((ok)); then
				timeout 300 python3 "$REPORT" callgrind "$CG" "$b" "$n1" "$n2" |
					tee -a "$CG/ir.md"
			else
				FAILED+=("callgrind $b")
			fi
		done
		TABLES+=("$CG/ir.md")
		echo "(profiles: $CG/*.out, e.g. callgrind_annotate $CG/spawn_join.$N2.out)"
	fi
	echo "(part 2: $(elapsed "$t"))"
fi

# --- 3. the peers -------------------------------------------------------------
MICRO_RAW=""
run_peers() {
	local src="$1" dst="$BUILD/peers" e t
	say "3. peer harness: $src -> $dst (copied; the source is never written)"
	t=$(date +%s)
	mkdir -p "$dst"
	# Copy everything but earlier results and binaries; an earlier copy's
	# bin/ and cargo target/ dirs are kept, so rebuilds are incremental.
	for e in "$src"/* "$src"/.[!.]*; do
		[[ -e "$e" ]] || continue
		case "${e##*/}" in results | bin) continue ;; esac
		cp -r "$e" "$dst/" || { echo "!! copying $e failed"; return 1; }
	done

	echo "building the peers (log: $RES/peers-build.log) ..."
	(cd "$dst" && timeout -k 10 2400 ./build.sh) >"$RES/peers-build.log" 2>&1 ||
		echo "!! some peers failed to build (they are skipped):"
	grep -E '^(built|failed):|^!!' "$RES/peers-build.log" | sed 's/^/   /'
	(cd "$dst" && timeout -k 10 2400 ./micro/build.sh) >"$RES/peers-micro-build.log" 2>&1 ||
		echo "!! some micro peers failed to build (they are skipped):"
	grep -E '^(built|failed):|^!!' "$RES/peers-micro-build.log" | sed 's/^/   /'
	echo "(build: $(elapsed "$t"))"

	if on "${SKIP_MICRO:-}"; then
		say "3a. runtime microbenchmarks: skipped (SKIP_MICRO)"
	else
		run_micro "$dst"
	fi
	run_echo "$dst"
	run_enters "$dst"
	run_proxy "$dst"
	run_idle "$dst"
	run_http "$dst"
	run_tls "$dst"
}

run_micro() {
	local dst="$1" t
	say "3a. runtime microbenchmarks, keel as a column (micro/run.sh)"
	t=$(date +%s)
	local mpeers="${MICRO_PEERS:-}" kcmd="$MICRO"
	if [[ $QUICK == 1 ]]; then
		mpeers="${MICRO_PEERS:-tokio-ct go-p1 c}"
		kcmd="$MICRO --quick"
	fi
	local envs=(REPS="${MICRO_REPS:-${REPS:-1}}" EXTRA_MICRO="keel|$kcmd"
		OUT="$RES/micro")
	[[ -n "$mpeers" ]] && envs+=(PEERS="$mpeers")
	env "${envs[@]}" timeout -k 10 1800 "$dst/micro/run.sh" 2>&1 |
		tee "$RES/micro-run.log" | grep -v '^   RESULT'
	if [[ -s "$RES/micro/table.md" ]]; then
		TABLES+=("$RES/micro/table.md")
		MICRO_RAW="$RES/micro/raw.tsv"
	else
		echo "!! the micro run produced no table (see $RES/micro-run.log)"
	fi
	echo "(micro: $(elapsed "$t"))"
}

run_echo() {
	local dst="$1" t envs
	if on "${SKIP_ECHO:-}"; then
		say "3b. echo matrix: skipped (SKIP_ECHO)"
		return 0
	fi
	if [[ ! -x "$ECHO_BIN" ]]; then
		say "3b. echo matrix: skipped: $ECHO_BIN is not built (examples/echo.c)"
		return 0
	fi
	say "3b. echo matrix: keel's examples/echo vs ${ECHO_PEERS:-uring epoll} (run.sh)"
	t=$(date +%s)
	# keel's provided buffers as big as the io_uring floor's (16 KiB; the
	# epoll peer reads 64 KiB): with the example's default 4 KiB, a 4 KiB
	# message fills a buffer exactly, and a full read does not prove the
	# socket empty, so the epoll backend reads once more for the EAGAIN.
	local ebuf="${ECHO_BUF:-16384}"
	envs=(PEERS="${ECHO_PEERS:-uring epoll}" REPS="${ECHO_REPS:-${REPS:-7}}"
		EXTRA_PEERS="keel|$ECHO_BIN --threads {threads} --buf-size $ebuf 127.0.0.1 {port};keel-epoll|env KEEL_BACKEND=epoll $ECHO_BIN --threads {threads} --buf-size $ebuf 127.0.0.1 {port}" OUT="$RES/echo")
	[[ -n "${ECHO_CONFIGS:-}" ]] && envs+=(CONFIGS="$ECHO_CONFIGS")
	[[ $QUICK == 1 ]] && envs+=(REPS="${ECHO_REPS:-2}" DUR="${DUR:-0.5}"
		WARM="${WARM:-0.1}" WARMUP_S="${WARMUP_S:-1}")
	env "${envs[@]}" timeout -k 10 1800 "$dst/run.sh" 2>&1 |
		tee "$RES/echo-run.log" | grep -v '^  rep'
	if [[ -s "$RES/echo/table.md" ]]; then
		TABLES+=("$RES/echo/table.md")
		# keel on the epoll backend against the plain epoll server (issue
		# 15's goal: CPU per request within 1.1x) and keel on io_uring.
		echo
		echo "### keel-epoll (examples/echo, KEEL_BACKEND=epoll) against the plain epoll server and keel on io_uring"
		echo
		timeout 60 python3 "$REPORT" pairs "$RES/echo/raw.tsv" 1.1 \
			keel-epoll/epoll keel-epoll/keel keel/uring | tee "$RES/echo-epoll.md"
		TABLES+=("$RES/echo-epoll.md")
	else
		echo "!! the echo run produced no table (see $RES/echo-run.log)"
	fi
	echo "(echo: $(elapsed "$t"))"
}

# io_uring_enter calls per request at c=64, 64 B: keel's own counters (its
# exit summary), then the same run under strace -c for keel and the raw
# io_uring server (strace slows every syscall, so batches grow: compare the
# two strace figures with each other, not with the counter).
run_enters() {
	local dst="$1" t port=23990 pid n
	if on "${SKIP_ENTERS:-}"; then
		say "3c. enters per request: skipped (SKIP_ENTERS)"
		return 0
	fi
	say "3c. io_uring_enter calls per request (c=64, 64 B, 1 loop)"
	t=$(date +%s)
	local dur=3
	[[ $QUICK == 1 ]] && dur=1
	# Default (completion batching on: keel_loop_opts.batch_wait_ns), then
	# with batching off (--batch-wait 0).
	local bw
	for bw in default 0; do
		local bwarg=(--batch-wait "$bw")
		[[ $bw == default ]] && bwarg=()
		taskset -c 1 "$ECHO_BIN" --threads 1 "${bwarg[@]}" 127.0.0.1 $port \
			>"$RES/enters-keel-$bw.log" 2>&1 &
		pid=$!
		"$dst/bin/loadgen" -P -p $port -d 5 >/dev/null 2>&1
		taskset -c 0 "$dst/bin/loadgen" -p $port -c 64 -s 64 -d $dur -w 0.2 -q 2>&1 |
			tail -1 >"$RES/enters-load-$bw.log"
		kill -TERM $pid 2>/dev/null
		wait $pid
		grep 'ring:' "$RES/enters-keel-$bw.log" |
			sed "s/^/   keel counters (--batch-wait $bw): /"
	done
	if command -v strace >/dev/null; then
		for srv in keel uring; do
			local cmd=("$ECHO_BIN" --threads 1 127.0.0.1 $port)
			[[ $srv == uring ]] && cmd=("$dst/bin/uring-echo" $port 1)
			strace -f -c -e trace=io_uring_enter -o "$RES/enters-strace-$srv.txt" \
				taskset -c 1 "${cmd[@]}" >/dev/null 2>&1 &
			pid=$!
			"$dst/bin/loadgen" -P -p $port -d 5 >/dev/null 2>&1
			local res reqs calls
			res=$(taskset -c 0 "$dst/bin/loadgen" -p $port -c 64 -s 64 -d $dur -w 0 -q 2>&1 | tail -1)
			kill -TERM $pid 2>/dev/null
			sleep 0.5
			pkill -TERM -P $pid 2>/dev/null
			wait $pid 2>/dev/null
			reqs=$(sed -n 's/.* reqs=\([0-9]*\).*/\1/p' <<<"$res")
			calls=$(awk '$NF=="io_uring_enter"{print $4}' "$RES/enters-strace-$srv.txt")
			[[ -n "$reqs" && -n "$calls" && "$reqs" -gt 0 ]] &&
				awk -v s=$srv -v c="$calls" -v r="$reqs" \
					'BEGIN{printf "   under strace -c: %-5s %d enters / %d requests = %.3f per request\n", s, c, r, c/r}' |
				tee -a "$RES/enters-strace.txt"
		done
	else
		echo "   (strace not installed: no cross-check)"
	fi
	echo "(enters: $(elapsed "$t"))"
}

run_proxy() {
	local dst="$1" t
	if on "${SKIP_PROXY:-}" || [[ ! -x "$PROXY_BIN" ]]; then
		say "3d. proxy: skipped"
		return 0
	fi
	say "3d. proxy: keel's examples/proxy (buffers, splice) vs haproxy vs direct (run-proxy.sh)"
	t=$(date +%s)
	local envs=(REPS="${PROXY_REPS:-${REPS:-5}}" OUT="$RES/proxy"
		EXTRA_PROXIES="keel|$PROXY_BIN --threads {threads} -l 127.0.0.1:{port} -b 127.0.0.1:{backend_port};keel-splice|$PROXY_BIN --threads {threads} --mode splice -l 127.0.0.1:{port} -b 127.0.0.1:{backend_port};keel-epoll|env KEEL_BACKEND=epoll $PROXY_BIN --threads {threads} -l 127.0.0.1:{port} -b 127.0.0.1:{backend_port};keel-splice-epoll|env KEEL_BACKEND=epoll $PROXY_BIN --threads {threads} --mode splice -l 127.0.0.1:{port} -b 127.0.0.1:{backend_port}")
	[[ $QUICK == 1 ]] && envs+=(REPS="${PROXY_REPS:-2}" DUR="${DUR:-0.5}" WARM="${WARM:-0.1}")
	[[ -n "${PROXY_CONFIGS:-}" ]] && envs+=(CONFIGS="$PROXY_CONFIGS")
	env "${envs[@]}" timeout -k 10 1200 "$dst/run-proxy.sh" 2>&1 |
		tee "$RES/proxy-run.log" | grep -v '^  rep'
	if [[ -s "$RES/proxy/table.md" ]]; then
		TABLES+=("$RES/proxy/table.md")
		echo
		echo "### keel's proxy on the epoll backend (KEEL_BACKEND=epoll) against io_uring and haproxy"
		echo
		timeout 60 python3 "$REPORT" pairs "$RES/proxy/raw.tsv" - \
			keel-epoll/keel keel-splice-epoll/keel-splice keel-epoll/haproxy |
			tee "$RES/proxy-epoll.md"
		TABLES+=("$RES/proxy-epoll.md")
	else
		echo "!! the proxy run produced no table (see $RES/proxy-run.log)"
	fi
	echo "(proxy: $(elapsed "$t"))"
}

run_idle() {
	local dst="$1" t
	if on "${SKIP_IDLE:-}"; then
		say "3e. idle connections: skipped (SKIP_IDLE)"
		return 0
	fi
	say "3e. server memory per idle connection (run-idle.sh, ${IDLE_N:-10000} connections)"
	t=$(date +%s)
	local envs=(PEERS="${IDLE_PEERS:-uring epoll uv tokio-ct go}" N="${IDLE_N:-10000}"
		REPS="${IDLE_REPS:-3}" OUT="$RES/idle"
		EXTRA_PEERS="keel|$ECHO_BIN --threads {threads} 127.0.0.1 {port};keel-msrecv|$ECHO_BIN --no-idle-poll --threads {threads} 127.0.0.1 {port}")
	[[ $QUICK == 1 ]] && envs+=(REPS="${IDLE_REPS:-1}" N="${IDLE_N:-2000}")
	env "${envs[@]}" timeout -k 10 1200 "$dst/run-idle.sh" 2>&1 |
		tee "$RES/idle-run.log" | grep -v '^  rep'
	if [[ -s "$RES/idle/table.md" ]]; then
		TABLES+=("$RES/idle/table.md")
	else
		echo "!! the idle run produced no table (see $RES/idle-run.log)"
	fi
	echo "(idle: $(elapsed "$t"))"
}

# keel's examples/http next to the harness's nginx and h2o (run-http.sh,
# wrk -t1, server pinned to one CPU, one thread each), all in one run so
# that the ratios pair cells run back to back: keel's /hello (a fixed
# answer) against nginx's `return 200` and h2o's mruby handler, and a 4 KiB
# static file from keel, nginx and h2o (the harness's own static peers
# serve a 5-byte file; tools/bench/http-peer.sh runs nginx and h2o with its
# configs on a directory holding the 4 KiB file). Then the echo floor: the
# raw liburing echo server at c=64, 64 B (run.sh), right after.
run_http() {
	local dst="$1" t www envs
	if ! on "${BENCH_HTTP:-1}"; then
		say "3f. HTTP: skipped (BENCH_HTTP=0)"
		return 0
	fi
	if [[ ! -x "$HTTP_BIN" ]]; then
		say "3f. HTTP: skipped: $HTTP_BIN is not built (examples/http.c)"
		return 0
	fi
	say "3f. HTTP: keel's examples/http vs nginx and h2o (run-http.sh, wrk)"
	t=$(date +%s)
	www="$RES/http-www"
	mkdir -p "$www"
	head -c 4096 /dev/zero | tr '\0' k >"$www/4k.txt"
	local keel="$HTTP_BIN --port {port} --threads {threads}"
	local peer="$HERE/bench/http-peer.sh"
	envs=(PEERS="nginx-w1 nginx-w1-static h2o-static h2o-mruby"
		CONFIGS="${HTTP_CONFIGS:-1 64 256}" REPS="${HTTP_REPS:-${REPS:-5}}"
		OUT="$RES/http"
		EXTRA_HTTP="keel-http|$keel|/hello;keel-http-4k|$keel --root $www|/4k.txt;keel-http-epoll|env KEEL_BACKEND=epoll $keel|/hello;keel-http-4k-epoll|env KEEL_BACKEND=epoll $keel --root $www|/4k.txt;nginx-w1-4k|$peer nginx $www {port}|/4k.txt;h2o-4k|$peer h2o $www {port}|/4k.txt")
	[[ $QUICK == 1 ]] && envs+=(REPS="${HTTP_REPS:-1}" WARMUP_S=1)
	env "${envs[@]}" timeout -k 10 900 "$dst/run-http.sh" 2>&1 |
		tee "$RES/http-run.log" | grep -v '^  rep'
	if [[ ! -s "$RES/http/raw.tsv" ]]; then
		echo "!! the HTTP run produced no data (see $RES/http-run.log)"
		FAILED+=("http")
		return 0
	fi
	envs=(PEERS=uring CONFIGS=64x64 REPS="${FLOOR_REPS:-3}" OUT="$RES/http-floor")
	[[ $QUICK == 1 ]] && envs+=(REPS="${FLOOR_REPS:-1}" WARMUP_S=1)
	env "${envs[@]}" timeout -k 10 300 "$dst/run.sh" >"$RES/http-floor.log" 2>&1 ||
		echo "!! the echo floor run failed (see $RES/http-floor.log)"
	echo
	echo "### keel's HTTP (examples/http) vs nginx and h2o: wrk -t1, keep-alive, median of ${HTTP_REPS:-${REPS:-5}} runs"
	echo
	timeout 60 python3 "$REPORT" http "$RES/http/raw.tsv" "$RES/http-floor/raw.tsv" |
		tee "$RES/http.md"
	# A server that did not start (e.g. a --root keel cannot serve) leaves
	# an empty row: say why, from its log.
	local f name
	for f in "$RES"/http/logs/x-*.log; do
		[[ -e "$f" ]] || continue
		name="${f##*/x-}" name="${name%.log}"
		awk -F'\t' -v p="$name" '$1 == p && $4 == "FAIL" { f = 1 } END { exit !f }' \
			"$RES/http/raw.tsv" &&
			echo "!! $name did not run: $(head -c 300 "$f")"
	done
	TABLES+=("$RES/http.md")
	echo "(http: $(elapsed "$t"))"
}

# TLS (tools/bench/tls.sh, which says how each figure is taken): the
# servers and proxies on one CPU, the clients (wrk, h2load) on the other,
# one thread each, cells interleaved per repetition as in run-http.sh.
run_tls() {
	local dst="$1" t envs
	if ! on "${BENCH_TLS:-1}"; then
		say "3g. TLS: skipped (BENCH_TLS=0)"
		return 0
	fi
	say "3g. TLS: handshakes and HTTPS (keel's examples/http vs nginx), TLS-terminating proxy (keel's examples/proxy vs haproxy), health checks (tools/bench/tls.sh)"
	t=$(date +%s)
	envs=(PEERS_DIR="$dst" OUT="$RES/tls" HTTP_BIN="$HTTP_BIN"
		PROXY_BIN="$PROXY_BIN" QUICK="$QUICK")
	[[ -n "${REPS:-}" ]] && envs+=(TLS_REPS="${TLS_REPS:-$REPS}")
	env "${envs[@]}" timeout -k 10 1500 bash "$HERE/bench/tls.sh" 2>&1 |
		tee "$RES/tls-run.log" | grep -v '^  rep'
	if [[ ! -s "$RES/tls/raw.tsv" ]] || (($(wc -l <"$RES/tls/raw.tsv") < 2)); then
		echo "!! the TLS run produced no data (see $RES/tls-run.log)"
		FAILED+=("tls")
		return 0
	fi
	echo
	echo "### TLS: TLS 1.3, ${TLS_SUITE:-TLS_AES_128_GCM_SHA256}, ${TLS_GROUP:-X25519}, one ECDSA P-256 certificate; servers on CPU ${SRV_CPU:-1}, clients on CPU ${LG_CPU:-0}, one thread each; medians of ${TLS_REPS:-${REPS:-$([[ $QUICK == 1 ]] && echo 1 || echo 5)}} runs of ${TLS_DUR:-$([[ $QUICK == 1 ]] && echo 1 || echo 2)} s"
	echo
	timeout 60 python3 "$REPORT" tls "$RES/tls/raw.tsv" "$RES/tls/probe.tsv" |
		tee "$RES/tls.md"
	TABLES+=("$RES/tls.md")
	echo "(tls: $(elapsed "$t"))"
}

if on "${SKIP_PEERS:-}"; then
	say "3. peer harness: skipped (SKIP_PEERS)"
elif [[ -z "$PEERS_SRC" || ! -f "$PEERS_SRC/micro/run.sh" ]]; then
	say "3. peer harness: skipped: not found (PEERS='${PEERS_SRC}'; default ../shared/bench/peers)"
else
	run_peers "$(cd "$PEERS_SRC" && pwd)"
fi

# --- 4. NATS (issue 18) ---------------------------------------------------------
# keel's node (a keel node asking a name another keel process serves)
# against the floor (the same with plain cnats: natsConnection_Request and
# an async subscription), over one loopback nats-server started here on a
# free port; the runs alternate keel and floor per repetition, so that
# report.py pairs cells run back to back. (No callgrind here: the keel
# side hangs under valgrind.)
NATS_BIN="$BUILD/tools/keel-natsbench"
nats_wait_port() {
	local i
	for ((i = 0; i < 100; i++)); do
		(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
		sleep 0.1
	done
	return 1
}
# nats_cell SIDE WHAT N REP: one serving process, one asking; its RESULT
# line, prefixed with the repetition, goes to results.txt.
nats_cell() {
	local side=$1 what=$2 n=$3 rep=$4 spid
	"$NATS_BIN" "$side-serve" "$NATS_URL" >>"$NATS_DIR/serve.log" 2>&1 &
	spid=$!
	timeout -k 5 300 "$NATS_BIN" "$side-$what" "$NATS_URL" "$n" \
		2>>"$NATS_DIR/run.log" | sed "s/^/rep=$rep /" |
		tee -a "$NATS_DIR/results.txt" | sed 's/^/   /'
	kill "$spid" 2>/dev/null
	wait "$spid" 2>/dev/null
}
run_nats() {
	local t port srv rep asks tells reps side what
	if on "${SKIP_NATS:-}"; then
		say "4. NATS: skipped (SKIP_NATS)"
		return 0
	fi
	if ! command -v nats-server >/dev/null || [[ ! -x "$NATS_BIN" ]]; then
		say "4. NATS: skipped: nats-server (make deps) or $NATS_BIN (make tools) missing"
		return 0
	fi
	say "4. NATS: keel's node vs plain cnats, two processes, one loopback nats-server"
	t=$(date +%s)
	NATS_DIR="$RES/nats"
	mkdir -p "$NATS_DIR"
	port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
	nats-server -a 127.0.0.1 -p "$port" >"$NATS_DIR/nats-server.log" 2>&1 &
	srv=$!
	if ! nats_wait_port "$port"; then
		echo "!! nats-server did not listen on $port"
		kill "$srv" 2>/dev/null
		FAILED+=("nats")
		return 0
	fi
	NATS_URL="nats://127.0.0.1:$port"
	reps=${NATS_REPS:-3} asks=${NATS_ASKS:-20000} tells=${NATS_TELLS:-200000}
	[[ $QUICK == 1 ]] && reps=${NATS_REPS:-1} asks=${NATS_ASKS:-2000} tells=${NATS_TELLS:-20000}
	for ((rep = 1; rep <= reps; rep++)); do
		for what in ask tell; do
			for side in keel cnats; do
				local n=$asks
				[[ $what == tell ]] && n=$tells
				nats_cell "$side" "$what" "$n" "$rep"
			done
		done
	done
	echo
	echo "### NATS: ask round trip and tells/s, keel's node vs plain cnats (the floor); medians of $reps runs ($asks asks, $tells tells of 4 bytes; loopback, one machine: figures on a busy machine are indicative)"
	echo
	timeout 60 python3 "$REPORT" nats "$NATS_DIR/results.txt" | tee "$NATS_DIR/table.md"
	TABLES+=("$NATS_DIR/table.md")
	kill "$srv" 2>/dev/null
	wait "$srv" 2>/dev/null
	echo "(nats: $(elapsed "$t"))"
}
((TLS_ONLY || TABLE_ONLY)) || run_nats

# --- issue 17's table ------------------------------------------------------------
# RSS of a fresh loop: keel-micro's loop_fresh_rss when it has one (in part
# 1, or run alone here), else a fallback (a few lines of C on libkeel.a, as
# tools/bench/tls_cost.sh builds): 8 loops made with default options after
# one made and destroyed (code paths and the allocator warm), RSS growth per
# loop, no task run.
loop_rss() {
	[[ -f "$RES/keel-micro.out" ]] &&
		grep -q '^INFO name=loop_fresh_rss' "$RES/keel-micro.out" && return 0
	timeout -k 5 120 "$MICRO" =loop_fresh_rss 2>/dev/null |
		grep '^INFO name=loop_fresh_rss' >>"$RES/keel-micro.out" && return 0
	[[ -f "$BUILD/libkeel.a" ]] || return 0
	cat >"$RES/loop-rss.c" <<'C'
#include <stdio.h>
#include <unistd.h>
#include <keel.h>
static double rss_kib(void)
{
	unsigned long size = 0, res = 0;
	FILE *f = fopen("/proc/self/statm", "r");

	if (!f || fscanf(f, "%lu %lu", &size, &res) != 2)
		return -1;
	fclose(f);
	return (double)res * (double)sysconf(_SC_PAGESIZE) / 1024.0;
}
int main(void)
{
	struct keel_loop *loops[8];
	double r0;

	if (keel_loop_create(&loops[0], NULL) < 0)
		return 1;
	keel_loop_destroy(loops[0]);
	r0 = rss_kib();
	for (int i = 0; i < 8; i++)
		if (keel_loop_create(&loops[i], NULL) < 0)
			return 1;
	printf("kib=%.1f loops=8\n", (rss_kib() - r0) / 8);
	return 0;
}
C
	{ cc -O2 -I"$ROOT/include" -o "$RES/loop-rss" "$RES/loop-rss.c" \
		"$BUILD/libkeel.a" -luring -ljemalloc -lpthread &&
		"$RES/loop-rss" >"$RES/loop-rss.txt"; } 2>"$RES/loop-rss.err" ||
		{ echo "   (loop RSS fallback failed: $(head -c 200 "$RES/loop-rss.err"))"; rm -f "$RES/loop-rss.txt"; }
}
if ! ((TLS_ONLY)) && [[ "${BENCH_TABLE:-1}" != 0 ]]; then
	loop_rss
	say "the table: issue 17, every row from this run (keel, floor / peer, goal)"
	timeout 60 python3 "$REPORT" table "$RES" | tee "$RES/table.md"
	TABLES+=("$RES/table.md")
fi

# --- summary --------------------------------------------------------------------
if ((!TLS_ONLY && !TABLE_ONLY && !NATS_ONLY)); then
	say "summary: keel against the targets (ns per op; Ir = instructions per op)"
	timeout 60 python3 "$REPORT" summary "$RES/keel-micro.out" "$CG/ir.tsv" \
		${MICRO_RAW:+"$MICRO_RAW"} | tee "$RES/summary.md"
	TABLES+=("$RES/summary.md")
fi
if ((${#TABLES[@]})); then
	echo
	echo "result tables:"
	printf '   %s\n' "${TABLES[@]}"
fi
echo "make bench took $(elapsed "$T0")"
if ((${#FAILED[@]})); then
	echo "FAILED: ${FAILED[*]}"
	exit 1
fi
