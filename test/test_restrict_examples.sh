#!/bin/sh
# SPDX-License-Identifier: MIT
# test_restrict_examples.sh: the examples on least-privilege rings, asked
# for from outside with KEEL_RESTRICT (read by keel at every loop's
# creation, like KEEL_FAULTS). examples/echo on net-only rings (also with
# --direct: accepted sockets in the ring's file table) echoes and exits 0
# on SIGTERM; examples/http on rings with every class serves a file from
# --root (openat, statx, read or splice) and on net-only rings refuses it
# (the ring cannot open files) while it goes on serving in-memory routes,
# and exits 0 on SIGTERM; a bad KEEL_RESTRICT stops a start with one line
# naming it. Clients: python3 and curl. Loopback only.
# Last line: "restrict_examples: N passed, M failed".
set -u
BUILD=${BUILD:-build}
SUITE=restrict_examples
. test/helpers/checks.sh
ECHO=$BUILD/examples/echo
HTTP=$BUILD/examples/http
# Ring restrictions are io_uring's (the epoll backend accepts and ignores
# KEEL_RESTRICT): io_uring, whatever backend the suite runs on.
KEEL_BACKEND=io_uring
export KEEL_BACKEND
pid=
trap '[ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null; rm -rf "$dir"' EXIT

if [ ! -x "$ECHO" ] || [ ! -x "$HTTP" ] || ! command -v python3 >/dev/null ||
	! command -v curl >/dev/null; then
	bad "$ECHO, $HTTP, python3 and curl are needed (run make first)"
	finish
fi

# stop NAME: SIGTERM the server $pid; it must exit 0.
stop() {
	kill -TERM "$pid"
	wait "$pid"
	status=$?
	pid=
	check "$1: exits 0 on SIGTERM (got $status)" [ "$status" = 0 ]
}

for mode in "" --direct; do
	# Else echo_port may read the last mode's port before this echo's
	# redirection truncates the file.
	rm -f "$dir/echo.out"
	KEEL_RESTRICT=net "$ECHO" --threads 2 $mode 127.0.0.1 0 \
		>"$dir/echo.out" 2>"$dir/echo.err" &
	pid=$!
	port=$(echo_port $pid "$dir/echo.out")
	check "echo $mode on net-only rings starts" [ -n "$port" ]
	[ -n "$port" ] || { cat "$dir/echo.err"; finish; }
	check "echo $mode on net-only rings echoes" timeout 20 python3 - "$port" <<'PY'
import socket, sys
for i in range(8):
    s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
    msg = b"restricted %d " % i * 1000
    s.sendall(msg)
    got = b""
    while len(got) < len(msg):
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
    assert got == msg, (len(got), len(msg))
    s.close()
PY
	stop "echo $mode on net-only rings"
	check "echo $mode on net-only rings: stderr empty" [ ! -s "$dir/echo.err" ]
done

mkdir "$dir/www"
python3 -c 'import sys; sys.stdout.write("x" * 100000)' >"$dir/www/big.txt"
echo "a small file" >"$dir/www/small.txt"

# http_start CLASSES: examples/http on rings restricted to CLASSES.
http_start() {
	rm -f "$dir/http.out" # the last http's port: see echo.out above
	KEEL_RESTRICT=$1 "$HTTP" --threads 2 --root "$dir/www" 0 \
		>"$dir/http.out" 2>"$dir/http.err" &
	pid=$!
	port=
	for _ in $(seq 100); do
		port=$(sed -n 's/^http: listening on 127\.0\.0\.1:\([0-9][0-9]*\) .*/\1/p' "$dir/http.out" 2>/dev/null)
		[ -n "$port" ] && break
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	check "http on $1 rings starts" [ -n "$port" ]
	[ -n "$port" ] || { cat "$dir/http.err"; finish; }
}

http_start all
for f in small.txt big.txt; do
	curl -s -o "$dir/got" "http://127.0.0.1:$port/$f"
	check "http on all rings serves $f" cmp -s "$dir/got" "$dir/www/$f"
done
stop "http on all rings"

http_start net
code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/small.txt")
check "http on net-only rings cannot serve a file (got $code)" [ "$code" = 500 ]
code=$(curl -s -o "$dir/got" -w '%{http_code}' "http://127.0.0.1:$port/hello")
check "http on net-only rings still serves /hello (got $code)" [ "$code" = 200 ]
stop "http on net-only rings"

KEEL_RESTRICT=disk "$ECHO" --threads 1 127.0.0.1 0 >/dev/null 2>"$dir/err"
status=$?
check "a bad KEEL_RESTRICT: echo exits 1 (got $status)" [ "$status" = 1 ]
check "a bad KEEL_RESTRICT: keel's line names it" \
	grep -q "^keel: KEEL_RESTRICT: 'disk' is not " "$dir/err"

finish
