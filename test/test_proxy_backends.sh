#!/bin/sh
# SPDX-License-Identifier: MIT
# test_proxy_backends.sh: examples/proxy with several backends, as a black
# box over loopback. The backends are examples/echo and examples/http,
# started here; clients are python3 sockets, /metrics is read with curl.
# - bad --balance / --health: exit 2, one line; a name that does not
#   resolve: one line with the reason, exit 1 when it is the only backend,
#   and the proxy starts (that backend down) when another resolves;
# - rr over three backends (one named localhost:PORT): 30 connections,
#   10 each; leastconn: a connection held on one backend steers the next
#   ones to the other;
# - a backend killed under load: no client hangs (each is bounded), the
#   TCP check takes it out (stderr and /metrics say DOWN), the clients go
#   on being served by the others, and once it is restarted on its port
#   the check puts it back (UP) and it gets connections again;
# - --health http:/PATH against examples/http: a path that 404s is DOWN
#   with the status, /hello stays up;
# - /metrics: Prometheus text with every per-backend family and the
#   loop metrics.
# Last line: "proxy_backends: N passed, M failed".
set -u
BUILD=${BUILD:-build}
SUITE=proxy_backends
. test/helpers/checks.sh
PROXY=$BUILD/examples/proxy
ECHO=$BUILD/examples/echo
HTTP=$BUILD/examples/http
pids=
trap 'for p in $pids; do kill -KILL "$p" 2>/dev/null; done; rm -rf "$dir"' EXIT

if [ ! -x "$PROXY" ] || [ ! -x "$ECHO" ] || [ ! -x "$HTTP" ] ||
	! command -v python3 >/dev/null || ! command -v curl >/dev/null; then
	bad "$PROXY, $ECHO, $HTTP, python3 and curl are needed (run make first)"
	finish
fi

# start_echo NAME [PORT]: an echo backend; sets its pid in ${NAME}_pid and
# its port in ${NAME}_port.
start_echo() {
	# A restarted echo (e2) left its (dead) port in the file until the
	# background redirection truncates it: gone, echo_port waits.
	rm -f "$dir/$1.out"
	"$ECHO" --threads 1 "${2:-0}" >"$dir/$1.out" 2>&1 &
	eval "$1_pid=$!"
	pids="$pids $!"
	eval "$1_port=\$(echo_port $! \"$dir/$1.out\")"
}

# start_proxy ARGS...: the proxy with its listener and metrics on free
# ports; sets proxy_pid, port, mport (empty if it did not start).
start_proxy() {
	rm -f "$dir/proxy.out" # the last proxy's port: see start_echo
	"$PROXY" -l 0 --metrics 0 "$@" >"$dir/proxy.out" 2>"$dir/proxy.err" &
	proxy_pid=$!
	pids="$pids $!"
	port=
	mport=
	for _ in $(seq 100); do
		port=$(sed -n 's/^proxy: listening on 127\.0\.0\.1:\([0-9]*\) .*/\1/p' \
			"$dir/proxy.out" 2>/dev/null)
		mport=$(sed -n 's|^proxy: metrics on http://127\.0\.0\.1:\([0-9]*\)/metrics$|\1|p' \
			"$dir/proxy.out" 2>/dev/null)
		[ -n "$port" ] && [ -n "$mport" ] && break
		kill -0 "$proxy_pid" 2>/dev/null || break
		sleep 0.1
	done
}

# stop_proxy: SIGTERM; it must exit 0 with its summary line.
stop_proxy() {
	kill -TERM "$proxy_pid"
	wait "$proxy_pid"
	st=$?
	grep -q "^proxy: served " "$dir/proxy.out" && [ "$st" = 0 ]
}

scrape() {
	curl -sf --max-time 10 "http://127.0.0.1:$mport/metrics"
}

# metric NAME BACKEND: one per-backend value from /metrics (-1 if none).
metric() {
	v=$(scrape | sed -n "s/^$1{backend=\"$2\"} \([0-9]*\)$/\1/p")
	echo "${v:--1}"
}

# wait_for CMD...: until CMD succeeds (60 s at most: only a hang takes it).
wait_for() {
	for _ in $(seq 600); do
		"$@" && return 0
		sleep 0.1
	done
	return 1
}

# clients N: N connections one after another, each sends a line and must
# get it back; prints how many did. Every socket operation is bounded.
clients() {
	python3 - "$port" "$1" <<'PY'
import socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
ok = 0
for i in range(n):
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        msg = b"line %03d\n" % i
        s.sendall(msg)
        got = b""
        while len(got) < len(msg):
            d = s.recv(100)
            if not d:
                break
            got += d
        ok += got == msg
        s.close()
    except OSError:
        pass
print(ok)
PY
}

# ---- bad input ----------------------------------------------------------

"$PROXY" -l 0 -b 127.0.0.1:1 --balance fastest >/dev/null 2>"$dir/err"
st=$?
if [ "$st" = 2 ] && [ "$(wc -l <"$dir/err")" = 1 ] &&
	grep -q "^proxy: bad --balance: fastest (rr or leastconn)$" "$dir/err"; then
	ok "a bad --balance: exit 2, one line"
else
	cat "$dir/err"
	bad "a bad --balance: exit 2, one line (got $st)"
fi

"$PROXY" -l 0 -b 127.0.0.1:1 --health udp >/dev/null 2>"$dir/err"
st=$?
if [ "$st" = 2 ] && grep -q "^proxy: bad --health: udp " "$dir/err"; then
	ok "a bad --health: exit 2"
else
	cat "$dir/err"
	bad "a bad --health: exit 2 (got $st)"
fi

"$PROXY" -l 0 -b no-such-host.invalid:80 >/dev/null 2>"$dir/err"
st=$?
if [ "$st" = 1 ] && [ "$(wc -l <"$dir/err")" = 2 ] &&
	grep -q "^proxy: backend no-such-host.invalid:80 is DOWN (resolve: .\+)$" "$dir/err" &&
	grep -q "^proxy: no backend resolves" "$dir/err"; then
	ok "the only backend does not resolve: its reason, exit 1"
else
	cat "$dir/err"
	bad "the only backend does not resolve: its reason, exit 1 (got $st)"
fi

# ---- rr over three backends, one by name --------------------------------

start_echo e1
start_echo e2
start_echo e3
if [ -z "$e1_port" ] || [ -z "$e2_port" ] || [ -z "$e3_port" ]; then
	bad "the echo backends start"
	finish
fi
b1=127.0.0.1:$e1_port
b2=localhost:$e2_port
b3=127.0.0.1:$e3_port

start_proxy --threads 1 --health off --resolve-every 100 -b "$b1" -b "$b2" \
	-b "$b3" -b no-such-host.invalid:80
if [ -z "$port" ]; then
	cat "$dir/proxy.out" "$dir/proxy.err"
	bad "the proxy starts with three backends and one that does not resolve"
	finish
fi
check "a backend that does not resolve: down, its reason, the proxy starts" \
	grep -q "^proxy: backend no-such-host.invalid:80 is DOWN (resolve: " \
	"$dir/proxy.err"
n=$(clients 30)
check "rr: 30 clients served (got $n)" [ "$n" = 30 ]
s1=$(metric proxy_backend_sessions_total "$b1")
s2=$(metric proxy_backend_sessions_total "$b2")
s3=$(metric proxy_backend_sessions_total "$b3")
check "rr: 10 sessions on each backend (got $s1 $s2 $s3; $b2 by name)" \
	[ "$s1/$s2/$s3" = 10/10/10 ]
check "the backend that does not resolve is down in /metrics" \
	[ "$(metric proxy_backend_up no-such-host.invalid:80)" = 0 ]
# Every 100 ms it is tried again on the blocking pool: counted each time,
# reported once a second at most.
retried() {
	[ "$(metric proxy_backend_resolve_failures_total no-such-host.invalid:80)" -ge 15 ]
}
check "a name that does not resolve is tried again, each failure counted" \
	wait_for retried
lines=$(grep -c "^proxy: backend no-such-host.invalid:80: cannot resolve: .* failures; down)$" \
	"$dir/proxy.err")
failures=$(metric proxy_backend_resolve_failures_total no-such-host.invalid:80)
check "... and reported once a second at most ($lines lines, $failures failures)" \
	[ "$lines" -ge 1 -a "$lines" -lt "$failures" ]

# /metrics: every family, with HELP and TYPE, and the loops' metrics.
scrape >"$dir/metrics"
curl -s -o /dev/null -w '%{content_type}' "http://127.0.0.1:$mport/metrics" \
	>"$dir/ctype"
check "/metrics is Prometheus text 0.0.4" grep -q "^text/plain; version=0.0.4" \
	"$dir/ctype"
missing=
for f in up:gauge transitions_total:counter sessions_total:counter \
	active_sessions:gauge bytes_up_total:counter bytes_down_total:counter \
	connect_failures_total:counter connect_seconds:histogram \
	health_checks_total:counter health_check_failures_total:counter \
	resolve_failures_total:counter; do
	grep -q "^# TYPE proxy_backend_${f%%:*} ${f#*:}$" "$dir/metrics" ||
		missing="$missing ${f%%:*}"
done
check "/metrics: every per-backend family (missing:$missing)" [ -z "$missing" ]
check "/metrics: the latency histogram counts every connect of $b1" \
	grep -q "^proxy_backend_connect_seconds_count{backend=\"$b1\"} 10$" \
	"$dir/metrics"
# Bytes are counted when a session ends, after its client has its echo.
bytes_up() {
	[ "$(metric proxy_backend_bytes_up_total "$b1")" = 90 ]
}
check "/metrics: bytes up to $b1 (10 lines of 9 bytes)" wait_for bytes_up
check "/metrics: keel's loop metrics follow" \
	grep -q '^keel_.*{loop="0"}' "$dir/metrics"
check "the proxy stops with its summary, exit 0" stop_proxy

# ---- leastconn: a held connection steers the next ones away -------------

start_proxy --threads 1 --balance leastconn --health off -b "$b1" -b "$b3"
python3 - "$port" "$dir/held" <<'PY' &
import socket, sys, time, os
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=30)
s.sendall(b"held\n")
assert s.recv(10) == b"held\n"
open(sys.argv[2], "w").write("1")
# Held until killed below: ten rounds of clients take over 30 s on a
# loaded machine, and a hold that ended sooner failed every wait_for.
time.sleep(600)
PY
holder=$!
pids="$pids $holder"
check "leastconn: a connection is held" wait_for [ -f "$dir/held" ]
# The held one is on the backend with a session open; the rest each end
# (the proxy has let go of it) before the next starts.
active_total() {
	a=$(metric proxy_backend_active_sessions "$b1")
	c=$(metric proxy_backend_active_sessions "$b3")
	[ "$((a + c))" = 1 ]
}
n=0
for _ in $(seq 10); do
	n=$((n + $(clients 1)))
	wait_for active_total
done
s1=$(metric proxy_backend_sessions_total "$b1")
s3=$(metric proxy_backend_sessions_total "$b3")
check "leastconn: 10 clients served (got $n)" [ "$n" = 10 ]
check "leastconn: the held backend got 1, the other 10 (got $s1, $s3)" \
	[ "$s1/$s3" = 1/10 -o "$s1/$s3" = 10/1 ]
kill "$holder" 2>/dev/null
wait "$holder" 2>/dev/null
check "the proxy stops with its summary, exit 0" stop_proxy

# ---- a backend dies under load, and comes back --------------------------

start_proxy --threads 2 --health-every 100 --health-timeout 500 --fall 2 \
	--rise 2 -b "$b1" -b "$b2" -b "$b3"
# Load: 4 clients in a loop until told to stop, each connection bounded;
# they count what was served and what was not.
python3 - "$port" "$dir/stop" "$dir/load" <<'PY' &
import os, socket, sys, threading
port, stop, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
served = [0] * 4
failed = [0] * 4
def client(k):
    while not os.path.exists(stop):
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(b"x" * 64)
            got = b""
            while len(got) < 64:
                d = s.recv(64)
                if not d:
                    break
                got += d
            s.close()
            if len(got) == 64:
                served[k] += 1
            else:
                failed[k] += 1
        except socket.timeout:
            open(out + ".hung", "w").write("a client waited 10 s\n")
            return
        except OSError:
            failed[k] += 1
ts = [threading.Thread(target=client, args=(k,)) for k in range(4)]
for t in ts:
    t.start()
for t in ts:
    t.join()
open(out, "w").write("%d %d\n" % (sum(served), sum(failed)))
PY
load=$!
pids="$pids $load"
serving() {
	[ "$(metric proxy_backend_sessions_total "$b2")" -gt 50 ]
}
check "under load, $b2 is serving" wait_for serving
kill -KILL "$e2_pid"
wait "$e2_pid" 2>/dev/null
check "a dead backend is taken out: DOWN on stderr" \
	wait_for grep -q "^proxy: backend $b2 is DOWN (connect: Connection refused, 2 failures)$" \
	"$dir/proxy.err"
check "... and in /metrics" [ "$(metric proxy_backend_up "$b2")" = 0 ]
before=$(metric proxy_backend_sessions_total "$b2")
sleep 0.5
after=$(metric proxy_backend_sessions_total "$b2")
check "... and it gets no sessions while down ($before, then $after)" \
	[ "$before" = "$after" ]
start_echo e2 "$e2_port"
check "restarted, it is put back: UP on stderr" \
	wait_for grep -q "^proxy: backend $b2 is UP (2 successes)$" "$dir/proxy.err"
check "... and in /metrics" [ "$(metric proxy_backend_up "$b2")" = 1 ]
more() {
	[ "$(metric proxy_backend_sessions_total "$b2")" -gt "$after" ]
}
check "... and it gets sessions again" wait_for more
check "... two transitions counted" \
	[ "$(metric proxy_backend_transitions_total "$b2")" = 2 ]
touch "$dir/stop"
wait "$load"
check "no client hung under load" [ ! -f "$dir/load.hung" ]
read -r served failed <"$dir/load"
n=$(clients 20)
check "under load: clients were served ($served, $failed cut when the backend died)" \
	[ "$served" -gt 100 ]
check "... and all 20 clients after it (got $n)" [ "$n" = 20 ]
check "the proxy stops with its summary, exit 0" stop_proxy

# ---- an HTTP check: a path that 404s is DOWN ----------------------------

"$HTTP" --threads 1 0 >"$dir/http.out" 2>&1 &
pids="$pids $!"
hpid=$!
hport=
for _ in $(seq 100); do
	hport=$(sed -n 's/^http: listening on 127\.0\.0\.1:\([0-9]*\) .*/\1/p' "$dir/http.out")
	[ -n "$hport" ] && break
	sleep 0.1
done
start_proxy --threads 1 --health http:/nope --health-every 100 \
	-b "127.0.0.1:$hport"
check "--health http:/PATH that 404s: DOWN with the status" \
	wait_for grep -q "^proxy: backend 127.0.0.1:$hport is DOWN (http: status 404, 3 failures)$" \
	"$dir/proxy.err"
check "the proxy stops with its summary, exit 0" stop_proxy
start_proxy --threads 1 --health http:/hello --health-every 100 \
	-b "127.0.0.1:$hport"
checks() {
	[ "$(metric proxy_backend_health_checks_total "127.0.0.1:$hport")" -ge 5 ]
}
check "--health http:/hello: checked" wait_for checks
check "... and up, no check failed" \
	[ "$(metric proxy_backend_up "127.0.0.1:$hport")/$(metric proxy_backend_health_check_failures_total "127.0.0.1:$hport")" = 1/0 ]
check "the proxy stops with its summary, exit 0" stop_proxy
kill "$hpid"

finish
