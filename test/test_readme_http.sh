#!/bin/sh
# SPDX-License-Identifier: MIT
# test_readme_http.sh: the HTTP service in README.md still works, as a new
# user would find it. Extracts the C block between the "begin hello.c" and
# "end hello.c" markers, compiles it against $BUILD/libkeel-http.a,
# $BUILD/libkeel-tls.a and $BUILD/libkeel.a with the project's CFLAGS
# (TEST_CFLAGS) and -Werror,
# runs it on a free loopback port (port 0) and talks to it with python3's
# http.client: /hello twice on one kept-alive connection, /health, a path
# with no route (404), a POST to a GET route (405); then SIGTERM with a
# connection still open must give exit status 0 (the drain closes it).
# Last line: "readme_http: N passed, M failed"; exit status 1 on any failure.
set -u
BUILD=${BUILD:-build}
CC=${CC:-cc}
# make check passes its CFLAGS and LDFLAGS as TEST_CFLAGS and TEST_LDFLAGS.
CFLAGS=${TEST_CFLAGS:--O2 -g -std=gnu11 -pthread -Wall -Wextra}
LDFLAGS=${TEST_LDFLAGS:-}
SUITE=readme_http
. test/helpers/checks.sh
pid=
trap '[ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null; rm -rf "$dir"' EXIT

if [ ! -f "$BUILD/libkeel-http.a" ] || ! command -v python3 >/dev/null; then
	bad "$BUILD/libkeel-http.a and python3 are needed (run make first)"
	finish
fi

sed -n '/^<!-- begin hello.c/,/^<!-- end hello.c/p' README.md |
	sed -e '1,/^```c$/d' -e '/^```$/,$d' >"$dir/hello.c"
if grep -q 'keel_http_server_start' "$dir/hello.c"; then
	ok "README.md has the HTTP service between its markers"
else
	bad "README.md has the HTTP service between its markers"
	finish
fi

# shellcheck disable=SC2086 # word splitting of the flags is intended
if $CC $CFLAGS -Werror -Iinclude -o "$dir/hello" "$dir/hello.c" \
	$LDFLAGS "$BUILD/libkeel-http.a" "$BUILD/libkeel-tls.a" "$BUILD/libkeel.a" \
	-lhttp_parser -lssl -lcrypto -luring -ljemalloc -lpthread \
	>"$dir/cc.log" 2>&1; then
	ok "it compiles without a warning"
else
	cat "$dir/cc.log"
	bad "it compiles without a warning"
	finish
fi

"$dir/hello" 0 >"$dir/out" 2>"$dir/err" &
pid=$!
port=
for _ in $(seq 100); do
	port=$(sed -n 's/^hello: on 127\.0\.0\.1:\([0-9][0-9]*\)$/\1/p' "$dir/out")
	[ -n "$port" ] && break
	kill -0 "$pid" 2>/dev/null || break
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
import http.client, sys

port, case = int(sys.argv[1]), sys.argv[2]
c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

def get(path, method="GET"):
    c.request(method, path)
    r = c.getresponse()
    return r.status, r.read()

if case == "hello":
    assert get("/hello") == (200, b"hello\n")
    sock = c.sock
    assert get("/hello") == (200, b"hello\n")
    assert c.sock is sock, "the connection was not kept alive"
elif case == "health":
    assert get("/health") == (200, b"ok\n")
elif case == "404":
    assert get("/nothing-here")[0] == 404
elif case == "405":
    assert get("/hello", "POST")[0] == 405
PY
}

for c in hello health 404 405; do
	if client "$c" >"$dir/$c.log" 2>&1; then
		ok "client: $c"
	else
		cat "$dir/$c.log"
		bad "client: $c"
	fi
done

# A kept-alive connection left open across the shutdown: the drain closes
# it (the client sees the end of the stream) and the program exits 0.
python3 - "$port" "$dir/connected" >"$dir/holder.log" 2>&1 <<'PY' &
import http.client, sys
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=20)
c.request("GET", "/hello")
assert c.getresponse().read() == b"hello\n"
open(sys.argv[2], "w").close()
assert c.sock.recv(100) == b""
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
	ok "SIGTERM: an idle kept-alive connection is closed"
else
	cat "$dir/holder.log"
	bad "SIGTERM: an idle kept-alive connection is closed"
fi
finish
