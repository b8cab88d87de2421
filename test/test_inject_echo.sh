#!/bin/sh
# SPDX-License-Identifier: MIT
# test_inject_echo.sh: examples/echo, unchanged, under KEEL_FAULTS. It
# says faults are on; loopback clients (python3) that reconnect after a
# reset still get every byte they sent echoed back on the connections
# that were not reset; echo survives (serves a last client, exits 0 on
# SIGTERM); its metrics and the summary of its trace count the faults.
# A bad KEEL_FAULTS stops echo at start with one line saying what is
# wrong. Loopback only.
# Builds nothing: runs $BUILD/examples/echo and $BUILD/tools/keel-trace
# (BUILD defaults to build). Last line: "inject_echo: N passed, M failed";
# exit status 1 on any failure.
set -u
BUILD=${BUILD:-build}
echo_bin=$BUILD/examples/echo
tool=$BUILD/tools/keel-trace
SUITE=inject_echo
. test/helpers/checks.sh

if [ ! -x "$echo_bin" ] || [ ! -x "$tool" ] || ! command -v python3 >/dev/null; then
	bad "$echo_bin, $tool and python3 are needed (run make first)"
	finish
fi

# ---- a bad spec: one line, and no echo ----------------------------------
KEEL_FAULTS='rcv:reset:0.1' timeout 20 "$echo_bin" --threads 1 127.0.0.1 0 \
	>"$dir/bad.out" 2>"$dir/bad.err"
status=$?
check "a bad KEEL_FAULTS stops echo (exit $status)" [ $status != 0 ]
check "... saying which rule is wrong" \
	grep -q "^keel: KEEL_FAULTS: unknown op 'rcv' at 'rcv:reset:0.1'" \
	"$dir/bad.err"
check "... in one line" [ "$(grep -c "KEEL_FAULTS" "$dir/bad.err")" = 1 ]

# ---- echo under faults ---------------------------------------------------
mport=$(python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])')

KEEL_FAULTS='recv:reset:0.4,send:short:0.3,accept:emfile:0.3,accept:ECONNABORTED:0.3,recv:delay=2ms:0.2,send:reorder:0.05' \
KEEL_FAULTS_SEED=7 KEEL_TRACE="$dir/echo.ktrace" \
	"$echo_bin" --threads 1 --metrics "$mport" 127.0.0.1 0 \
	>"$dir/echo.out" 2>"$dir/echo.err" &
pid=$!
port=$(echo_port $pid "$dir/echo.out")
check "echo starts under KEEL_FAULTS" [ -n "$port" ]
[ -n "$port" ] || finish
check "echo says faults are on" \
	grep -q "^keel: KEEL_FAULTS: injecting faults 'recv:reset:0.4," \
	"$dir/echo.err"

# 16 clients, 200 messages each of 1..4000 bytes; a client whose
# connection is reset (or closed) reconnects and goes on. Every message
# answered in full is checked byte for byte.
timeout 120 python3 - "$port" "$mport" >"$dir/client.out" 2>&1 <<'PY'
import random, socket, sys, threading
port, mport = int(sys.argv[1]), int(sys.argv[2])
lock = threading.Lock()
tot = {"ok": 0, "bad": 0, "resets": 0}

def client(seed):
    rng = random.Random(seed)
    s = None
    done = 0
    while done < 200:
        if s is None:
            s = socket.create_connection(("127.0.0.1", port), timeout=30)
        msg = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 4000)))
        try:
            s.sendall(msg)
            got = b""
            while len(got) < len(msg):
                chunk = s.recv(65536)
                if not chunk:
                    raise ConnectionResetError("eof")
                got += chunk
        except (ConnectionResetError, BrokenPipeError):
            with lock:
                tot["resets"] += 1
            s.close()
            s = None
            continue
        with lock:
            tot["ok" if got == msg else "bad"] += 1
        done += 1
    s.close()

ts = [threading.Thread(target=client, args=(i,)) for i in range(16)]
for t in ts:
    t.start()
for t in ts:
    t.join()
print("ok %d bad %d resets %d" % (tot["ok"], tot["bad"], tot["resets"]))
# The metrics connection's recv is under the same faults: try again.
for _ in range(50):
    try:
        s = socket.create_connection(("127.0.0.1", mport), timeout=30)
        s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        s.close()
    except (ConnectionResetError, BrokenPipeError):
        continue
    if b"keel_faults_injected_total" in data:
        break
for line in data.decode(errors="replace").splitlines():
    if line.startswith("keel_faults_injected_total"):
        print("metric", line.split()[-1])
PY
cat "$dir/client.out"
check "every echo answered in full is byte-exact" \
	grep -q '^ok 3200 bad 0 ' "$dir/client.out"
check "some connections were reset by injected faults" \
	python3 -c "import sys, re
m = re.search(r'resets (\d+)', open('$dir/client.out').read())
sys.exit(not (m and int(m.group(1)) > 0))"
check "the metrics count the faults" \
	python3 -c "import sys, re
m = re.search(r'^metric (\d+)', open('$dir/client.out').read(), re.M)
sys.exit(not (m and int(m.group(1)) > 0))"

kill -TERM $pid 2>/dev/null
wait $pid
check "echo exits 0 on SIGTERM" [ $? = 0 ]

"$tool" summary "$dir/echo.ktrace" >"$dir/summary.txt" 2>&1
check "keel-trace summary reads echo's trace" [ $? = 0 ]
check "the summary counts the faults" \
	python3 -c "import sys, re
t = open('$dir/summary.txt').read()
m = re.search(r'^faults injected: (\d+)', t, re.M)
sys.exit(not (m and int(m.group(1)) > 0 and
              re.search(r'^ *recv +ECONNRESET ', t, re.M) and
              re.search(r'^ *send +short ', t, re.M)))"
grep -A8 '^faults injected' "$dir/summary.txt"
finish
