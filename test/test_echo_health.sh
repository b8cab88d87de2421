#!/bin/sh
# SPDX-License-Identifier: MIT
# test_echo_health.sh: examples/echo's /health on its --metrics port, read
# by clients nobody here wrote (curl for the status code, python3's
# http.client and json for the body). Two loops each report "loop N"
# accepting: 200 and valid JSON, healthy. With --max-conns 1, a second
# connection is refused: "connections" turns degraded with its reason,
# still 200 (a degraded server serves); once a connection is admitted
# again, healthy. /metrics still answers Prometheus text. Loopback only.
# Builds nothing: runs $BUILD/examples/echo (BUILD defaults to build).
# Last line: "echo_health: N passed, M failed"; exit status 1 on failure.
set -u
BUILD=${BUILD:-build}
echo_bin=$BUILD/examples/echo
SUITE=echo_health
. test/helpers/checks.sh

if [ ! -x "$echo_bin" ] || ! command -v python3 >/dev/null ||
	! command -v curl >/dev/null; then
	bad "$echo_bin, python3 and curl are needed (run make first)"
	finish
fi

mport=$(python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])')

"$echo_bin" --threads 2 --max-conns 1 --metrics "$mport" 127.0.0.1 0 \
	>"$dir/echo.out" 2>"$dir/echo.err" &
pid=$!
port=$(echo_port $pid "$dir/echo.out")
check "echo starts" [ -n "$port" ]
[ -n "$port" ] || finish

url="http://127.0.0.1:$mport"
code=$(curl -s --max-time 10 -o "$dir/h1" -w '%{http_code}' "$url/health")
check "curl /health: 200 (got $code)" [ "$code" = 200 ]

# The JSON, checked with python's own parser; then the cap.
timeout 60 python3 - "$port" "$mport" >"$dir/py.out" 2>&1 <<'PY'
import http.client, json, socket, sys, time
port, mport = int(sys.argv[1]), int(sys.argv[2])

def health():
    c = http.client.HTTPConnection("127.0.0.1", mport, timeout=10)
    c.request("GET", "/health")
    r = c.getresponse()
    body = r.read()
    c.close()
    assert r.getheader("Content-Type") == "application/json", r.getheaders()
    return r.status, json.loads(body)

def wait_for(pred, what):
    for _ in range(100):
        st, h = health()
        if pred(h):
            return st, h
        time.sleep(0.1)
    raise SystemExit("never %s: %r" % (what, h))

def comps(h):
    return {c["name"]: c for c in h["components"]}

# Each loop reports once its acceptor runs.
st, h = wait_for(lambda h: len(h["components"]) == 2, "two loops")
assert st == 200 and h["status"] == "healthy", (st, h)
assert set(comps(h)) == {"loop 0", "loop 1"}, h
assert all(c["reason"] == "accepting" for c in h["components"]), h
print("healthy: two loops accepting")

held = socket.create_connection(("127.0.0.1", port), timeout=10)
held.sendall(b"k")
assert held.recv(1) == b"k"
s = socket.create_connection(("127.0.0.1", port), timeout=10)
try:
    assert s.recv(1) == b"", "the second connection was served"
except ConnectionResetError:
    pass
s.close()
st, h = wait_for(lambda h: "connections" in comps(h), "degraded")
c = comps(h)["connections"]
assert st == 200 and h["status"] == "degraded", (st, h)
assert c["status"] == "degraded", h
assert c["reason"] == "refusing connections at --max-conns 1", h
print("degraded at the cap, still 200")

held.close()
# The held connection's task may take a moment to go: retry until one is
# admitted (and echoed), which reports healthy again.
for _ in range(100):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        s.sendall(b"k")
        if s.recv(1) == b"k":
            break
    except OSError:
        pass
    s.close()
    time.sleep(0.1)
st, h = health()
assert st == 200 and h["status"] == "healthy", (st, h)
assert comps(h)["connections"]["status"] == "healthy", h
print("healthy again once admitted")
PY
st=$?
sed 's/^/    /' "$dir/py.out"
check "python http.client: JSON, degraded at the cap, healthy again" [ $st = 0 ]

code=$(curl -s --max-time 10 -o "$dir/m" -w '%{http_code}' "$url/metrics")
check "/metrics still served (got $code)" \
	sh -c "[ '$code' = 200 ] && grep -q '^keel_' '$dir/m'"

kill -TERM $pid 2>/dev/null
wait $pid
check "echo exits 0 on SIGTERM" [ $? = 0 ]
finish
