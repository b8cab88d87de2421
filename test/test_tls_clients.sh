#!/bin/sh
# SPDX-License-Identifier: MIT
# test_tls_clients.sh: examples/tls_echo (libkeel-tls) against clients
# nobody here wrote. openssl s_client: TLS 1.2 and 1.3 (the echo comes
# back, the certificate verifies), ALPN (the server's preference, and none
# when nothing is shared), SNI (the wildcard certificate for www.b.test,
# the default for a name it does not cover), resumption with -sess_out /
# -sess_in (1.2 and 1.3) and -reconnect (1.2). python3's ssl module: a
# verified client with ALPN that sends 256 KiB, reads it back and closes
# with close_notify; one that drops the connection without it
# (truncated); raw sockets sending garbage instead of a ClientHello and
# stalling mid-handshake (closed by the handshake deadline). SIGTERM: exit
# 0 and counters that saw all of the above. And the one-line errors for a
# missing certificate and a key that does not match. Loopback only; no
# timing assertion.
# Builds nothing: runs $BUILD/examples/tls_echo (BUILD defaults to build).
# Last line: "tls_clients: N passed, M failed"; exit status 1 on any
# failure.
set -u
BUILD=${BUILD:-build}
bin=$BUILD/examples/tls_echo
SUITE=tls_clients
. test/helpers/checks.sh

for c in python3 openssl; do
	command -v $c >/dev/null || bad "$c is needed (make deps)"
done
[ -x "$bin" ] || bad "$bin is needed (run make first)"
[ "$fail" = 0 ] || finish

# Certificates: a (a.test, localhost) is the default; b (*.b.test) is
# chosen by SNI; the clients trust both.
cert() {
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
		-keyout "$dir/$1.key" -out "$dir/$1.pem" -days 2 -subj "/CN=$2" \
		-addext "subjectAltName=$3" 2>/dev/null
}
cert a a.test DNS:a.test,DNS:localhost
cert b b.test 'DNS:*.b.test'
cat "$dir/a.pem" "$dir/b.pem" >"$dir/trust.pem"

# The one-line errors, exit status 1.
"$bin" --cert "$dir/none.pem" --key "$dir/a.key" 0 >"$dir/e1.out" 2>&1
st=$?
check "a missing certificate: exit 1" [ "$st" = 1 ]
check "a missing certificate: one line naming it" \
	grep -qx "tls_echo: $dir/none.pem: No such file or directory" \
	"$dir/e1.out"
"$bin" --cert "$dir/a.pem" --key "$dir/b.key" 0 >"$dir/e2.out" 2>&1
st=$?
check "a key of another certificate: exit 1" [ "$st" = 1 ]
check "a key of another certificate: one line" \
	grep -qx "tls_echo: $dir/b.key: does not match the certificate in $dir/a.pem" \
	"$dir/e2.out"
"$bin" --cert "$dir/a.pem" --tls-min 1.1 0 >"$dir/e3.out" 2>&1
st=$?
check "a bad option: exit 2" [ "$st" = 2 ]

"$bin" --cert "$dir/a.pem" --key "$dir/a.key" \
	--sni "$dir/b.pem,$dir/b.key" --alpn h2,http/1.1 \
	--handshake-timeout 300 0 >"$dir/srv.out" 2>"$dir/srv.err" &
pid=$!
port=
for _ in $(seq 100); do
	port=$(sed -n 's/^tls_echo: listening on 127\.0\.0\.1:\([0-9]*\) .*/\1/p' \
		"$dir/srv.out")
	[ -n "$port" ] && break
	kill -0 $pid 2>/dev/null || break
	sleep 0.1
done
if [ -z "$port" ]; then
	bad "tls_echo did not start"
	cat "$dir/srv.out" "$dir/srv.err"
	finish
fi
check "describe says why kTLS is off or on" grep -q 'kTLS: ' "$dir/srv.out"

# sc NAME ARGS...: s_client with a line to echo, its output in $dir/NAME
# (the sleep keeps stdin open until the echo and any tickets came).
sc() {
	name=$1
	shift
	(printf 'hello %s\n' "$name"; sleep 0.5) |
		timeout 10 openssl s_client -connect "127.0.0.1:$port" \
			-CAfile "$dir/trust.pem" "$@" >"$dir/$name" 2>&1
}
has() {
	grep -q -- "$2" "$dir/$1"
}

sc v13 -tls1_3 -servername a.test -verify_hostname a.test -verify_return_error
check "s_client TLS 1.3: echo" has v13 "^hello v13"
check "s_client TLS 1.3: version" has v13 "Protocol  : TLSv1.3"
check "s_client TLS 1.3: verified" has v13 "Verify return code: 0 (ok)"
sc v12 -tls1_2 -servername a.test -verify_hostname a.test -verify_return_error
check "s_client TLS 1.2: echo" has v12 "^hello v12"
check "s_client TLS 1.2: version" has v12 "Protocol  : TLSv1.2"

sc alpn_h2 -alpn http/1.1,h2
check "ALPN: the server's preference (h2)" has alpn_h2 "ALPN protocol: h2"
sc alpn_11 -alpn http/1.1
check "ALPN: http/1.1 alone" has alpn_11 "ALPN protocol: http/1.1"
sc alpn_none -alpn spdy/3
check "ALPN: nothing shared, no ALPN" has alpn_none "No ALPN negotiated"
check "ALPN: nothing shared, the echo still works" has alpn_none "^hello alpn_none"

sc sni_b -servername www.b.test -verify_hostname www.b.test -verify_return_error
check "SNI: www.b.test gets the wildcard certificate" has sni_b "subject=CN = b.test"
check "SNI: and it verifies" has sni_b "Verify return code: 0 (ok)"
sc sni_other -servername other.test
check "SNI: another name gets the default" has sni_other "subject=CN = a.test"

for v in 1_2 1_3; do
	sc "sess_out$v" -tls$v -sess_out "$dir/sess$v.pem"
	sc "sess_in$v" -tls$v -sess_in "$dir/sess$v.pem"
	check "resumption TLS 1.${v#1_}: -sess_in reuses" has "sess_in$v" "^Reused, TLSv1\.${v#1_}"
done
sc reconnect -tls1_2 -reconnect
n=$(grep -c '^Reused, TLSv1.2' "$dir/reconnect")
check "resumption: -reconnect reuses (TLS 1.2; $n of 5)" [ "$n" -ge 4 ]

# python3's ssl module.
cat >"$dir/client.py" <<'PY'
import socket, ssl, sys
port, trust, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3]
def connect():
    return socket.create_connection(("127.0.0.1", port), timeout=10)
if mode == "echo":
    ctx = ssl.create_default_context(cafile=trust)
    ctx.set_alpn_protocols(["http/1.1"])
    s = ctx.wrap_socket(connect(), server_hostname="a.test")
    data = bytes(i * 7 % 251 for i in range(256 * 1024))
    s.sendall(data)
    got = b""
    while len(got) < len(data):
        b = s.recv(65536)
        if not b:
            break
        got += b
    assert got == data, "echo differs (%d bytes)" % len(got)
    assert s.selected_alpn_protocol() == "http/1.1", s.selected_alpn_protocol()
    version = s.version()
    s.unwrap()  # close_notify both ways
    print("ok", version)
elif mode == "drop":
    ctx = ssl.create_default_context(cafile=trust)
    s = ctx.wrap_socket(connect(), server_hostname="a.test")
    s.sendall(b"x")
    assert s.recv(1) == b"x"
    s.close()  # close() sends no close_notify (unwrap() would)
    print("ok")
elif mode == "garbage":
    s = connect()
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    while s.recv(4096):
        pass  # an alert perhaps, then the end
    print("ok closed")
elif mode == "stall":
    s = connect()
    s.sendall(b"\x16\x03\x01\x02\x00")  # a record header, then nothing
    while s.recv(4096):
        pass
    print("ok closed")
PY
py() {
	timeout 20 python3 "$dir/client.py" "$port" "$dir/trust.pem" "$1" \
		>"$dir/py_$1" 2>&1
}
py echo
check "python ssl: 256 KiB echoed, ALPN, close_notify" grep -q '^ok TLSv1.3' "$dir/py_echo"
py drop
check "python ssl: a client that drops the connection" grep -q '^ok' "$dir/py_drop"
py garbage
check "garbage instead of a ClientHello: closed" grep -q '^ok closed' "$dir/py_garbage"
py stall
check "a stalled handshake: closed by the deadline" grep -q '^ok closed' "$dir/py_stall"
sc after -tls1_3
check "still serving after all that" has after "^hello after"

kill -TERM $pid
wait $pid
st=$?
check "SIGTERM: exit 0" [ "$st" = 0 ]
stats=$(grep '^tls_echo: handshakes=' "$dir/srv.out")
echo "     $stats"
num() {
	echo "$stats" | sed -n "s/.* $1=\([0-9]*\).*/\1/p; s/^tls_echo: $1=\([0-9]*\).*/\1/p" | head -n 1
}
check "counted: handshakes" [ "$(num handshakes)" -ge 15 ]
check "counted: resumed" [ "$(num resumed)" -ge 6 ]
check "counted: failed (garbage)" [ "$(num failed)" -ge 1 ]
check "counted: timeouts (the stall)" [ "$(num timeouts)" -ge 1 ]
check "counted: clean closes (python's unwrap)" [ "$(num clean_closes)" -ge 1 ]
check "counted: truncated" [ "$(num truncated)" -ge 1 ]
finish
