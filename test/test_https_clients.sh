#!/bin/sh
# SPDX-License-Identifier: MIT
# test_https_clients.sh: examples/http over TLS (--cert/--key) with
# clients nobody here wrote: curl, openssl s_client and python3's
# http.client/ssl. Certificates are made here (ECDSA P-256, with
# subjectAltName): one for 127.0.0.1/localhost (the default) and one for
# other.test (--sni-cert). It checks start-up errors (a missing or bad file:
# one line, exit 2), the listening line, GET/keep-alive (curl reuses the
# connection)/POST/HEAD/a file and a range of it (small and large), ALPN
# http/1.1, SNI, TLS 1.2 and 1.3, resumption, keep-alive from python,
# then what must be closed and counted without stopping the others:
# garbage instead of a ClientHello, a plain HTTP request, a client that
# says nothing (the handshake timeout), and at last SIGTERM with an idle
# TLS connection open: the client gets close_notify, the server exits 0.
# Last line: "https_clients: N passed, M failed".
set -u
BUILD=${BUILD:-build}
SUITE=https_clients
. test/helpers/checks.sh
HTTP=$BUILD/examples/http
pid=
trap '[ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null; rm -rf "$dir"' EXIT

for tool in python3 curl openssl; do
	if ! command -v $tool >/dev/null; then
		bad "$tool is needed"
		finish
	fi
done
if [ ! -x "$HTTP" ]; then
	bad "$HTTP is needed (run make first)"
	finish
fi

# cert NAME SAN: a self-signed ECDSA P-256 certificate and its key.
cert() {
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
		-days 2 -subj "/CN=$1" -addext "subjectAltName=$2" \
		-keyout "$dir/$1.key" -out "$dir/$1.pem" >/dev/null 2>&1
}
cert localhost "DNS:localhost,IP:127.0.0.1"
cert other.test "DNS:other.test"
CA=$dir/localhost.pem

# ---- start-up errors: one line, exit 2 ----
"$HTTP" --threads 1 --cert "$dir/none.pem" --key "$dir/localhost.key" 0 \
	>/dev/null 2>"$dir/err"
status=$?
if [ "$status" = 2 ] && [ "$(wc -l <"$dir/err")" = 1 ] &&
	grep -q "^http: .*none.pem" "$dir/err"; then
	ok "a missing certificate: exit 2, one line naming it"
else
	cat "$dir/err"
	bad "a missing certificate: exit 2, one line naming it (got $status)"
fi
"$HTTP" --threads 1 --cert "$dir/localhost.pem" \
	--key "$dir/other.test.key" 0 >/dev/null 2>"$dir/err"
status=$?
if [ "$status" = 2 ] && [ "$(wc -l <"$dir/err")" = 1 ] &&
	grep -q "^http: .*other.test.key" "$dir/err"; then
	ok "a key that does not match: exit 2, one line"
else
	cat "$dir/err"
	bad "a key that does not match: exit 2, one line (got $status)"
fi
"$HTTP" --threads 1 --cert "$dir/localhost.pem" 0 >/dev/null 2>"$dir/err"
status=$?
if [ "$status" = 2 ] && grep -q "^http: HTTPS wants --cert FILE and --key FILE" "$dir/err"; then
	ok "--cert without --key: exit 2"
else
	cat "$dir/err"
	bad "--cert without --key: exit 2 (got $status)"
fi

# ---- the server ----
mkdir -p "$dir/www"
python3 -c "
import sys
open(sys.argv[1] + '/small.txt', 'wb').write(bytes(range(256)) * 8)
open(sys.argv[1] + '/large.bin', 'wb').write(bytes((i * 7) % 251 for i in range(300000)))
" "$dir/www"
"$HTTP" --threads 1 --test-routes --root "$dir/www" \
	--cert "$dir/localhost.pem" --key "$dir/localhost.key" \
	--sni-cert "$dir/other.test.pem" --sni-key "$dir/other.test.key" \
	--handshake-timeout 500 --idle-timeout 5000 0 >"$dir/out" 2>"$dir/err" &
pid=$!
port=
for _ in $(seq 100); do
	port=$(sed -n 's/^http: listening on 127\.0\.0\.1:\([0-9][0-9]*\) (1 threads, TLS: .*)$/\1/p' "$dir/out")
	[ -n "$port" ] && break
	kill -0 "$pid" 2>/dev/null || break
	sleep 0.1
done
if [ -n "$port" ] && [ "$port" != 0 ]; then
	ok "the listening line says TLS: $(sed -n 's/.*TLS: //p' "$dir/out")"
else
	cat "$dir/out" "$dir/err"
	bad "the listening line with the real port and TLS"
	finish
fi
URL=https://127.0.0.1:$port

# ---- curl ----
check "curl: GET /hello" \
	sh -c "[ \"\$(curl -sS --max-time 10 --cacert '$CA' $URL/hello)\" = hello ]"
curl -sSv --max-time 10 --cacert "$CA" "$URL/hello" "$URL/health" \
	"$URL/hello" >"$dir/curl.out" 2>"$dir/curl.err"
if [ "$(cat "$dir/curl.out")" = "hellook
hello" ] && [ "$(grep -c "Re-using existing connection" "$dir/curl.err")" = 2 ]; then
	ok "curl: three requests on one kept-alive connection"
else
	cat "$dir/curl.out" "$dir/curl.err"
	bad "curl: three requests on one kept-alive connection"
fi
head -c 100000 /dev/urandom >"$dir/body"
curl -sS --max-time 10 --cacert "$CA" --data-binary "@$dir/body" \
	"$URL/echo" -o "$dir/echoed"
check "curl: POST /echo, 100 kB back (chunked)" cmp -s "$dir/body" "$dir/echoed"
curl -sSI --max-time 10 --cacert "$CA" "$URL/small.txt" >"$dir/head"
if grep -q "^HTTP/1.1 200" "$dir/head" && grep -qi "^content-length: 2048" "$dir/head"; then
	ok "curl: HEAD of a file"
else
	cat "$dir/head"
	bad "curl: HEAD of a file"
fi
curl -sS --max-time 10 --cacert "$CA" "$URL/small.txt" -o "$dir/small"
check "curl: a small file" cmp -s "$dir/small" "$dir/www/small.txt"
curl -sS --max-time 10 --cacert "$CA" "$URL/large.bin" -o "$dir/large"
check "curl: a large file (read and encrypted, no splice)" \
	cmp -s "$dir/large" "$dir/www/large.bin"
curl -sS --max-time 10 --cacert "$CA" -r 1000-200999 "$URL/large.bin" \
	-o "$dir/range" -w '%{http_code}' >"$dir/code"
tail -c +1001 "$dir/www/large.bin" | head -c 200000 >"$dir/want"
if [ "$(cat "$dir/code")" = 206 ] && cmp -s "$dir/range" "$dir/want"; then
	ok "curl: a range of a large file (206)"
else
	bad "curl: a range of a large file (206; got $(cat "$dir/code"))"
fi
curl -sS --max-time 10 --cacert "$CA" -r 10-19 "$URL/small.txt" -o "$dir/range" \
	-w '%{http_code}' >"$dir/code"
tail -c +11 "$dir/www/small.txt" | head -c 10 >"$dir/want"
if [ "$(cat "$dir/code")" = 206 ] && cmp -s "$dir/range" "$dir/want"; then
	ok "curl: a range of a small file (206)"
else
	bad "curl: a range of a small file (206; got $(cat "$dir/code"))"
fi

# ---- openssl s_client ----
# sclient ARGS...: a GET /hello through s_client; its output in $dir/sc.
sclient() {
	printf 'GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n' |
		timeout 10 openssl s_client -connect "127.0.0.1:$port" \
			-CAfile "$CA" -ign_eof "$@" >"$dir/sc" 2>&1
}
sclient -alpn http/1.1
if grep -q "^ALPN protocol: http/1.1" "$dir/sc" && grep -q "^hello" "$dir/sc"; then
	ok "s_client: ALPN http/1.1"
else
	cat "$dir/sc"
	bad "s_client: ALPN http/1.1"
fi
sclient -servername other.test
if grep -q "subject=CN *= *other.test" "$dir/sc" && grep -q "^hello" "$dir/sc"; then
	ok "s_client: -servername other.test gets the SNI certificate"
else
	cat "$dir/sc"
	bad "s_client: -servername other.test gets the SNI certificate"
fi
sclient -servername localhost
if grep -q "subject=CN *= *localhost" "$dir/sc"; then
	ok "s_client: another name gets the default certificate"
else
	cat "$dir/sc"
	bad "s_client: another name gets the default certificate"
fi
for v in 1_2 1_3; do
	sclient -tls$v
	if grep -q "Protocol *: TLSv$(echo $v | tr _ .)" "$dir/sc" && grep -q "^hello" "$dir/sc"; then
		ok "s_client: -tls$v"
	else
		cat "$dir/sc"
		bad "s_client: -tls$v"
	fi
done
timeout 20 openssl s_client -connect "127.0.0.1:$port" -CAfile "$CA" \
	-tls1_2 -reconnect </dev/null >"$dir/sc" 2>&1
if [ "$(grep -c "^Reused, TLSv1.2" "$dir/sc")" -ge 4 ]; then
	ok "s_client: -reconnect -tls1_2 resumes (Reused)"
else
	grep -E "^(New|Reused)," "$dir/sc"
	bad "s_client: -reconnect -tls1_2 resumes (Reused)"
fi
# TLS 1.3's ticket comes after the handshake: -reconnect's first
# connection ends before reading it, so a request is made (-ign_eof reads
# to the close) and the session saved, then offered.
sclient -tls1_3 -sess_out "$dir/sess"
sclient -tls1_3 -sess_in "$dir/sess"
if grep -q "^Reused, TLSv1.3" "$dir/sc" && grep -q "^hello" "$dir/sc"; then
	ok "s_client: -tls1_3 -sess_in resumes (Reused)"
else
	grep -E "^(New|Reused)," "$dir/sc"
	bad "s_client: -tls1_3 -sess_in resumes (Reused)"
fi
sclient -alpn h2
if grep -q "^hello" "$dir/sc" && grep -q "No ALPN negotiated" "$dir/sc"; then
	ok "s_client: a client offering only h2 gets no ALPN and HTTP/1.1"
else
	cat "$dir/sc"
	bad "s_client: a client offering only h2 gets no ALPN and HTTP/1.1"
fi

# ---- python3: keep-alive, then what is closed and counted ----
client() {
	python3 - "$port" "$CA" "$1" <<'PY'
import http.client, socket, ssl, sys, time

port, ca, case = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ctx = ssl.create_default_context(cafile=ca)

def metric(name):
    c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    c.close()
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.split()[-1])
    raise SystemExit("no %s in /metrics" % name)

def closed_quickly(s, limit=5):
    # The server closes: EOF (or a reset) within `limit` seconds.
    s.settimeout(limit)
    try:
        while s.recv(4096):
            pass
    except ConnectionResetError:
        pass

def hello():
    c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
    c.request("GET", "/hello")
    assert c.getresponse().read() == b"hello"

if case == "keepalive":
    c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
    socks = set()
    for i in range(5):
        c.request("GET", "/hello")
        r = c.getresponse()
        assert r.status == 200 and r.read() == b"hello"
        socks.add(id(c.sock))
    c.request("POST", "/echo", body=b"x" * 50000)
    r = c.getresponse()
    assert r.read() == b"x" * 50000
    socks.add(id(c.sock))
    assert len(socks) == 1, socks
elif case == "pipelined":
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)),
                        server_hostname="127.0.0.1")
    s.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n" * 3 +
              b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    got = b""
    s.settimeout(10)
    while True:
        d = s.recv(65536)
        if not d:
            break
        got += d
    assert got.count(b"HTTP/1.1 200 OK") == 4, got
elif case == "garbage":
    before = metric("keel_http_tls_failed_total")
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(bytes(range(7, 250)) * 4)
    closed_quickly(s)
    hello()
    after = metric("keel_http_tls_failed_total")
    assert after > before, (before, after)
elif case == "plain":
    before = metric("keel_http_tls_failed_total")
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
    closed_quickly(s)
    hello()
    after = metric("keel_http_tls_failed_total")
    assert after > before, (before, after)
elif case == "silent":
    before = metric("keel_http_tls_timeouts_total")
    s = socket.create_connection(("127.0.0.1", port))
    t0 = time.monotonic()
    closed_quickly(s)
    took = time.monotonic() - t0
    assert took < 5, took
    hello()
    after = metric("keel_http_tls_timeouts_total")
    assert after > before, (before, after)
PY
}
for c in keepalive pipelined garbage plain silent; do
	if client "$c" >"$dir/$c.log" 2>&1; then
		ok "python3: $c"
	else
		cat "$dir/$c.log"
		bad "python3: $c"
	fi
done

# ---- SIGTERM with an idle keep-alive TLS connection open ----
python3 - "$port" "$CA" "$dir/idle" <<'PY' >"$dir/idle.log" 2>&1 &
import os, socket, ssl, sys

port, ca, flag = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ctx = ssl.create_default_context(cafile=ca)
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)),
                    server_hostname="127.0.0.1", suppress_ragged_eofs=False)
s.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
s.settimeout(20)
got = b""
while not got.endswith(b"hello"):
    got += s.recv(4096)
open(flag, "w").close()
# Idle until the server closes: close_notify reads as b"" (a bare FIN
# would raise SSLEOFError).
assert s.recv(4096) == b"", "data after the response"
print("close_notify")
PY
idle=$!
for _ in $(seq 100); do
	[ -f "$dir/idle" ] && break
	sleep 0.1
done
kill -TERM "$pid"
wait "$pid"
status=$?
pid=
wait "$idle"
if [ "$status" = 0 ] && grep -q '^http: served [0-9]* requests' "$dir/out"; then
	ok "SIGTERM: exit status 0"
else
	cat "$dir/out" "$dir/err"
	bad "SIGTERM: exit status 0 (got $status)"
fi
if grep -q "^close_notify" "$dir/idle.log"; then
	ok "SIGTERM: the idle TLS connection got close_notify"
else
	cat "$dir/idle.log"
	bad "SIGTERM: the idle TLS connection got close_notify"
fi
finish
