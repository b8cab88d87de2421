#!/bin/sh
# SPDX-License-Identifier: MIT
# test_example_http.sh: examples/http as its README describes it. Start-up
# errors give one line naming what to fix (a port in use names the
# address; a --root that is not a directory; a bad option value: status
# 2); started with --threads 2 and --test-routes on port 0, it prints its
# listening line with the real port, serves /hello, /health, /metrics,
# /sleep?ms=N, POST /echo (the body back, chunked) and /panic (500; the
# server goes on), and exits 0 on SIGTERM. (The HTTP protocol itself is tested with real clients in
# test_http_*.sh.) Last line: "example_http: N passed, M failed".
set -u
BUILD=${BUILD:-build}
SUITE=example_http
. test/helpers/checks.sh
HTTP=$BUILD/examples/http
pid=
trap '[ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null; rm -rf "$dir"' EXIT

if [ ! -x "$HTTP" ] || ! command -v python3 >/dev/null; then
	bad "$HTTP and python3 are needed (run make first)"
	finish
fi

# A port held by a plain listener (no SO_REUSEPORT): binding it fails.
python3 - "$dir/held" <<'PY' &
import socket, sys, time
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(1)
open(sys.argv[1] + ".tmp", "w").write(str(s.getsockname()[1]))
__import__("os").rename(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(30)
PY
holder=$!
for _ in $(seq 100); do
	[ -f "$dir/held" ] && break
	sleep 0.1
done
held=$(cat "$dir/held" 2>/dev/null)
"$HTTP" --threads 1 "$held" >/dev/null 2>"$dir/err"
status=$?
kill "$holder" 2>/dev/null
wait "$holder" 2>/dev/null
if [ "$status" = 1 ] && grep -q "^http: cannot listen on 127.0.0.1:$held: " "$dir/err"; then
	ok "a port in use: exit 1, the address in the message"
else
	cat "$dir/err"
	bad "a port in use: exit 1, the address in the message (got $status)"
fi

"$HTTP" --threads 1 --root "$dir/none" 0 >/dev/null 2>"$dir/err"
status=$?
if [ "$status" = 1 ] && grep -q "^http: cannot serve files from $dir/none: " "$dir/err"; then
	ok "--root that does not exist: exit 1, one line"
else
	cat "$dir/err"
	bad "--root that does not exist: exit 1, one line (got $status)"
fi

"$HTTP" --threads zero 0 >/dev/null 2>"$dir/err"
status=$?
if [ "$status" = 2 ] && grep -q "^http: bad value for --threads: zero" "$dir/err"; then
	ok "a bad option value: exit 2"
else
	cat "$dir/err"
	bad "a bad option value: exit 2 (got $status)"
fi

"$HTTP" --threads 2 --test-routes 0 >"$dir/out" 2>"$dir/err" &
pid=$!
port=
for _ in $(seq 100); do
	port=$(sed -n 's/^http: listening on 127\.0\.0\.1:\([0-9][0-9]*\) (2 threads)$/\1/p' "$dir/out")
	[ -n "$port" ] && break
	kill -0 "$pid" 2>/dev/null || break
	sleep 0.1
done
if [ -n "$port" ] && [ "$port" != 0 ]; then
	ok "it prints its listening line with the real port"
else
	cat "$dir/out" "$dir/err"
	bad "it prints its listening line with the real port"
	finish
fi

# client CASE: one scenario against the running server; exit 0 if it holds.
client() {
	python3 - "$port" "$1" <<'PY'
import http.client, sys

port, case = int(sys.argv[1]), sys.argv[2]
c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

def req(method, path, body=None, headers={}):
    c.request(method, path, body=body, headers=headers)
    r = c.getresponse()
    return r.status, r.read(), r

if case == "hello":
    assert req("GET", "/hello")[:2] == (200, b"hello")
elif case == "health":
    assert req("GET", "/health")[:2] == (200, b"ok\n")
elif case == "metrics":
    st, body, r = req("GET", "/metrics")
    assert st == 200 and r.getheader("Content-Type").startswith("text/plain")
elif case == "sleep":
    assert req("GET", "/sleep?ms=50")[:2] == (200, b"slept 50 ms\n")
elif case == "echo":
    data = b"".join(b"line %d\n" % i for i in range(2000))
    st, body, r = req("POST", "/echo", data)
    assert st == 200 and body == data, (st, len(body))
    assert r.getheader("Transfer-Encoding") == "chunked"
    assert req("POST", "/echo", b"")[:2] == (200, b"")
elif case == "panic":
    assert req("GET", "/panic")[0] == 500
    assert req("GET", "/hello")[:2] == (200, b"hello")
PY
}

for c in hello health metrics sleep echo panic; do
	if client "$c" >"$dir/$c.log" 2>&1; then
		ok "client: $c"
	else
		cat "$dir/$c.log"
		bad "client: $c"
	fi
done

kill -TERM "$pid"
wait "$pid"
status=$?
pid=
if [ "$status" = 0 ] && grep -q '^http: served [0-9]* requests' "$dir/out"; then
	ok "SIGTERM: exit status 0 and the closing line"
else
	cat "$dir/out" "$dir/err"
	bad "SIGTERM: exit status 0 and the closing line (got $status)"
fi
finish
