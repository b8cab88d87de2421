#!/bin/sh
# SPDX-License-Identifier: MIT
# test_readme.sh: the complete program in README.md still works, as a new
# user would find it. Extracts the C block between the "begin lines.c" and
# "end lines.c" markers, compiles it against $BUILD/libkeel.a with the
# project's CFLAGS (TEST_CFLAGS) and -Werror, runs it on a free loopback
# port with a 300 ms idle deadline, and talks to it with python3's socket
# module: whole lines come back (a line split across sends too), several
# connections at once are served, an idle connection is closed by the
# server, and SIGTERM (with a connection still open) gives exit status 0.
# Last line: "readme: N passed, M failed"; exit status 1 on any failure.
set -u
BUILD=${BUILD:-build}
CC=${CC:-cc}
# make check passes its CFLAGS and LDFLAGS as TEST_CFLAGS and TEST_LDFLAGS.
CFLAGS=${TEST_CFLAGS:--O2 -g -std=gnu11 -pthread -Wall -Wextra}
LDFLAGS=${TEST_LDFLAGS:-}
SUITE=readme
. test/helpers/checks.sh
pid=
trap '[ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null; rm -rf "$dir"' EXIT

if [ ! -f "$BUILD/libkeel.a" ] || ! command -v python3 >/dev/null; then
	bad "$BUILD/libkeel.a and python3 are needed (run make first)"
	finish
fi

sed -n '/^<!-- begin lines.c/,/^<!-- end lines.c/p' README.md |
	sed -e '1,/^```c$/d' -e '/^```$/,$d' >"$dir/lines.c"
if grep -q 'keel_runtime_run' "$dir/lines.c"; then
	ok "README.md has the complete program between its markers"
else
	bad "README.md has the complete program between its markers"
	finish
fi

# shellcheck disable=SC2086 # word splitting of the flags is intended
if $CC $CFLAGS -Werror -Iinclude -o "$dir/lines" "$dir/lines.c" \
	$LDFLAGS "$BUILD/libkeel.a" -luring -ljemalloc -lpthread \
	>"$dir/cc.log" 2>&1; then
	ok "it compiles without a warning"
else
	cat "$dir/cc.log"
	bad "it compiles without a warning"
	finish
fi

"$dir/lines" 0 300 >"$dir/out" 2>"$dir/err" &
pid=$!
port=
for _ in $(seq 100); do
	port=$(sed -n 's/^lines: on 127\.0\.0\.1:\([0-9][0-9]*\)$/\1/p' "$dir/out")
	[ -n "$port" ] && break
	sleep 0.1
done
if [ -n "$port" ]; then
	ok "it starts and prints its port"
else
	cat "$dir/err"
	bad "it starts and prints its port"
	finish
fi

# client CASE: one scenario against the running server; exit 0 if it holds.
client() {
	python3 - "$port" "$1" <<'PY'
import socket, sys, threading

port, case = int(sys.argv[1]), sys.argv[2]

def conn():
    return socket.create_connection(("127.0.0.1", port), timeout=10)

def read_until(s, want):
    got = b""
    while len(got) < len(want):
        chunk = s.recv(4096)
        if not chunk:
            break
        got += chunk
    return got

if case == "lines":
    s = conn()
    s.sendall(b"hello\nwor")
    assert read_until(s, b"hello\n") == b"hello\n"
    s.sendall(b"ld\n")
    assert read_until(s, b"world\n") == b"world\n"
    s.close()
elif case == "many":
    errors = []
    def one(i):
        try:
            s = conn()
            for j in range(20):
                line = b"conn %d line %d\n" % (i, j)
                s.sendall(line)
                got = read_until(s, line)
                assert got == line, (line, got)
            s.close()
        except Exception as e:
            errors.append(e)
    th = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in th:
        t.start()
    for t in th:
        t.join()
    assert not errors, errors
elif case == "idle":
    s = conn()
    s.sendall(b"ping\n")
    assert read_until(s, b"ping\n") == b"ping\n"
    # Silent now: the server's idle deadline must close the connection
    # (recv returns b""), well before our own 10 s timeout.
    assert s.recv(100) == b""
PY
}

for c in lines many idle; do
	if client "$c" >"$dir/$c.log" 2>&1; then
		ok "client: $c"
	else
		cat "$dir/$c.log"
		bad "client: $c"
	fi
done

# A connection left open across the shutdown: its recv is cancelled, and
# the client then sees the server close it.
python3 - "$port" "$dir/connected" >"$dir/holder.log" 2>&1 <<'PY' &
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
s.sendall(b"still here\n")
assert s.recv(100) == b"still here\n"
open(sys.argv[2], "w").close()
assert s.recv(100) == b""
PY
holder=$!
for _ in $(seq 100); do
	[ -f "$dir/connected" ] && break
	sleep 0.1
done
kill -TERM "$pid"
wait "$pid"
status=$?
pid=
if [ "$status" = 0 ]; then
	ok "SIGTERM: exit status 0"
else
	cat "$dir/err"
	bad "SIGTERM: exit status 0 (got $status)"
fi
if wait "$holder"; then
	ok "SIGTERM: an open connection is closed"
else
	cat "$dir/holder.log"
	bad "SIGTERM: an open connection is closed"
fi
finish
