#!/bin/sh
# SPDX-License-Identifier: MIT
# test_echo.sh: examples/echo under pressure. Out of descriptors (a low
# `ulimit -n`, the echo port filled with idle connections), a client of
# the --metrics port must not make echo spin on accept: its CPU time over
# two seconds, read from /proc, stays under a tenth of a CPU. A spin
# detector, not a timing test: a spinning echo takes what it can get (a
# third of a CPU on a loaded two-core machine), a waiting one about none.
# Then the metrics must be served again once the idle connections go.
# --max-conns: connections over the cap are closed (with --direct too: a
# registered socket's slot must be released, not leaked), and once under
# the cap again, connections are served. Hibernation: an idle connection
# wakes for its next message, counts under the cap while hibernated, and
# goes at the shutdown. Loopback only.
# Builds nothing: runs $BUILD/examples/echo (BUILD defaults to build).
# Last line: "echo: N passed, M failed"; exit status 1 on any failure.
set -u
BUILD=${BUILD:-build}
echo_bin=$BUILD/examples/echo
SUITE=echo
. test/helpers/checks.sh

if [ ! -x "$echo_bin" ] || ! command -v python3 >/dev/null; then
	bad "$echo_bin and python3 are needed (run make first)"
	finish
fi

# A free loopback port for the metrics (echo itself takes port 0).
mport=$(python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])')

(ulimit -n 64 && exec "$echo_bin" --threads 1 --metrics "$mport" \
	127.0.0.1 0) >"$dir/echo.out" 2>"$dir/echo.err" &
pid=$!
port=$(echo_port $pid "$dir/echo.out")
check "echo starts with ulimit -n 64" [ -n "$port" ]
[ -n "$port" ] || finish

# Fill the descriptors, ask for the metrics, sample echo's CPU time, free
# the descriptors, then read the answer and ask once more.
timeout 60 python3 - "$pid" "$port" "$mport" >"$dir/client.out" <<'PY'
import os, socket, sys, time
pid, port, mport = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
hz = os.sysconf("SC_CLK_TCK")

def cpu():
    with open("/proc/%s/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime

def get_metrics(s):
    s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            return data
        data += chunk

idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(100)]
time.sleep(0.5)  # echo accepts until it is out of descriptors
m = socket.create_connection(("127.0.0.1", mport))
m.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
time.sleep(0.5)
t0, c0 = time.monotonic(), cpu()
time.sleep(2)
t1, c1 = time.monotonic(), cpu()
print("cpu %.3f" % ((c1 - c0) / hz / (t1 - t0)))
for s in idle:
    s.close()
m.settimeout(20)
data = b""
try:
    while True:
        chunk = m.recv(65536)
        if not chunk:
            break
        data += chunk
except OSError:
    pass
print("first", data.split(b"\r\n", 1)[0].decode(errors="replace"))
s = socket.create_connection(("127.0.0.1", mport), timeout=20)
data = get_metrics(s)
print("second", data.split(b"\r\n", 1)[0].decode(errors="replace"),
      "keel" in data.decode(errors="replace"))
PY
cat "$dir/client.out"
ratio=$(sed -n 's/^cpu //p' "$dir/client.out")
check "out of fds, a metrics client does not make echo spin (cpu ${ratio:-?})" \
	python3 -c "import sys; sys.exit(not (0 <= float('${ratio:-9}') < 0.1))"
check "the waiting metrics client is served once fds are free" \
	grep -q '^first HTTP/1.0 200' "$dir/client.out"
check "a new metrics client is served" \
	grep -q '^second HTTP/1.0 200 OK True' "$dir/client.out"

kill -TERM $pid 2>/dev/null
wait $pid
check "echo exits 0 on SIGTERM" [ $? = 0 ]

# --max-conns 1: a second connection is refused through the path a failed
# spawn of its task takes, which must release the socket. With --direct
# the socket is a slot in the ring's file table, which close(2) does not
# know: the slot and the socket would stay (the refused client waiting, the
# table filling up). Each refused client must see its connection end.
for mode in --direct --plain fds; do
	opt=$mode
	[ "$mode" = fds ] && opt=
	echo "echo --max-conns 1 $opt"
	# The last mode's output holds the last (dead) echo's port until
	# this one's redirection truncates it: gone, echo_port waits.
	rm -f "$dir/cap.out"
	# shellcheck disable=SC2086 # $opt is empty or one word
	"$echo_bin" --threads 1 --max-conns 1 $opt 127.0.0.1 0 \
		>"$dir/cap.out" 2>"$dir/cap.err" &
	pid=$!
	port=$(echo_port $pid "$dir/cap.out")
	check "echo --max-conns 1 $opt starts" [ -n "$port" ]
	if [ -z "$port" ]; then
		cat "$dir/cap.err"
		continue
	fi
	timeout 120 python3 - "$port" >"$dir/cap.client" <<'PY'
import socket, sys, time
port = int(sys.argv[1])

def echoes(s):
    try:
        s.sendall(b"k")
        return s.recv(1) == b"k"
    except OSError:
        return False

held = socket.create_connection(("127.0.0.1", port), timeout=20)
print("held", echoes(held))
for i in range(3):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        end = "closed" if s.recv(1) == b"" else "data"
    except ConnectionResetError:
        end = "closed"
    except socket.timeout:
        end = "still open after 10 s"
    print("refused", i, end)
    s.close()
held.close()
# Its task ends asynchronously: retry (bounded).
for i in range(200):
    s = socket.create_connection(("127.0.0.1", port), timeout=20)
    ok = echoes(s)
    s.close()
    if ok:
        break
    time.sleep(0.05)
print("after", ok)
PY
	cat "$dir/cap.client"
	check "$mode: the connection under the cap is served" \
		grep -q '^held True' "$dir/cap.client"
	check "$mode: connections over the cap are closed" \
		[ "$(grep -c '^refused [0-9] closed$' "$dir/cap.client")" = 3 ]
	check "$mode: once the first has gone, a new one is served" \
		grep -q '^after True' "$dir/cap.client"
	kill -TERM $pid 2>/dev/null
	wait $pid
	check "$mode: echo exits 0 on SIGTERM" [ $? = 0 ]
	cat "$dir/cap.out"
	# (and those the retries found still over the cap)
	refused=$(sed -n 's/.*, refused \([0-9]*\) connections$/\1/p' \
		"$dir/cap.out")
	check "$mode: echo counts the refused connections (${refused:-?})" \
		[ "${refused:-0}" -ge 3 ]
done

# Hibernation (the default): a connection idle for --idle-ms hands its
# socket to the loop and its task ends; the next message wakes it into a
# fresh task. A hibernated connection still counts under --max-conns 1
# (another is refused) until its peer closes; SIGTERM with one hibernated
# closes it (the callback's -ECANCELED) and echo exits 0.
for mode in --direct fds; do
	opt=$mode
	[ "$mode" = fds ] && opt=
	rm -f "$dir/hib.out" # see cap.out above
	# shellcheck disable=SC2086 # $opt is empty or one word
	"$echo_bin" --threads 1 --max-conns 1 --idle-ms 10 $opt 127.0.0.1 0 \
		>"$dir/hib.out" 2>"$dir/hib.err" &
	pid=$!
	port=$(echo_port $pid "$dir/hib.out")
	check "hibernate $mode: echo starts" [ -n "$port" ]
	if [ -z "$port" ]; then
		cat "$dir/hib.err"
		continue
	fi
	timeout 120 python3 - "$port" >"$dir/hib.client" <<'PY'
import socket, sys, time
port = int(sys.argv[1])

def echoes(s, m):
    try:
        s.sendall(m)
        return s.recv(len(m)) == m
    except OSError:
        return False

a = socket.create_connection(("127.0.0.1", port), timeout=20)
ok = echoes(a, b"one")
time.sleep(0.5)  # idle: hibernated
ok = ok and echoes(a, b"two")
time.sleep(0.5)
print("woken", ok)
b = socket.create_connection(("127.0.0.1", port), timeout=10)
try:
    end = "closed" if b.recv(1) == b"" else "data"
except ConnectionResetError:
    end = "closed"
print("over the cap", end)
a.close()
for i in range(200):  # the wake for a's end frees the cap
    c = socket.create_connection(("127.0.0.1", port), timeout=20)
    ok = echoes(c, b"three")
    if ok:
        break
    c.close()
    time.sleep(0.05)
print("after", ok)
time.sleep(0.5)  # c hibernates, then the shutdown
PY
	cat "$dir/hib.client"
	check "hibernate $mode: a woken connection echoes" \
		grep -q '^woken True' "$dir/hib.client"
	check "hibernate $mode: a hibernated connection counts under the cap" \
		grep -q '^over the cap closed' "$dir/hib.client"
	check "hibernate $mode: its end frees the cap" \
		grep -q '^after True' "$dir/hib.client"
	kill -TERM $pid 2>/dev/null
	wait $pid
	check "hibernate $mode: echo exits 0 on SIGTERM" [ $? = 0 ]
	cat "$dir/hib.out"
	hib=$(sed -n 's/.*idle connections: \([0-9]*\) hibernations, \([0-9]*\) wakes$/\1 \2/p' \
		"$dir/hib.out")
	check "hibernate $mode: echo counts hibernations and wakes (${hib:-?})" \
		[ "${hib%% *}" -ge 3 ] && [ "${hib##* }" -ge 2 ]
done
finish
