#!/bin/sh
# SPDX-License-Identifier: MIT
# test_proxy_tls.sh: examples/proxy with TLS, against clients and servers
# nobody here wrote (curl, openssl s_client and s_server, python3), over
# loopback, with certificates made here (ECDSA P-256).
# - the options: --cert without --key, TLS with --mode splice, a
#   certificate file that is not there: exit 2, one line;
# - termination (--cert/--key: client TLS -> plain examples/http): curl
#   and s_client get /hello; --alpn is what s_client is told; --sni-cert
#   is the certificate a client asking for its name gets;
# - garbage instead of a ClientHello: that connection is closed and
#   counted, the next client is served;
# - origination (--backend-tls: plain client -> openssl s_server -www):
#   verified with --backend-ca and --backend-sni; a name the certificate
#   does not have fails (a backend failure, the client closed), unless
#   --backend-insecure.
# Last line: "proxy_tls: N passed, M failed".
set -u
BUILD=${BUILD:-build}
SUITE=proxy_tls
. test/helpers/checks.sh
PROXY=$BUILD/examples/proxy
HTTP=$BUILD/examples/http
pids=
trap 'for p in $pids; do kill -KILL "$p" 2>/dev/null; done; rm -rf "$dir"' EXIT

for c in curl openssl python3; do
	if ! command -v $c >/dev/null; then
		bad "$c is needed"
		finish
	fi
done
if [ ! -x "$PROXY" ] || [ ! -x "$HTTP" ]; then
	bad "$PROXY and $HTTP are needed (run make first)"
	finish
fi

# cert NAME CN: a self-signed ECDSA P-256 certificate for CN (also
# 127.0.0.1) in $dir/NAME.pem, its key in $dir/NAME.key.
cert() {
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
		-keyout "$dir/$1.key" -out "$dir/$1.pem" -days 2 -subj "/CN=$2" \
		-addext "subjectAltName=DNS:$2,IP:127.0.0.1" 2>/dev/null
}
cert main localhost
cert other other.example

# port_of FILE: the port in the "listening on ADDR:PORT" line in FILE
# (10 s at most).
port_of() {
	for _ in $(seq 100); do
		p=$(sed -n 's/.*listening on [^ ]*:\([0-9]*\) .*/\1/p' "$1" 2>/dev/null |
			head -n 1)
		[ -n "$p" ] && break
		sleep 0.1
	done
	echo "$p"
}

# start_proxy ARGS...: the proxy in the background (-l 127.0.0.1:0);
# sets ppid and pport. Its stdout in $dir/out, stderr in $dir/err.
start_proxy() {
	# The last proxy left its (dead) port in $dir/out until the
	# background redirection truncates it: gone, port_of waits.
	rm -f "$dir/out"
	"$PROXY" --threads 1 -l 127.0.0.1:0 "$@" >"$dir/out" 2>"$dir/err" &
	ppid=$!
	pids="$pids $ppid"
	pport=$(port_of "$dir/out")
}

# stop_proxy: SIGTERM; its summary line is in $dir/out.
stop_proxy() {
	kill -TERM "$ppid"
	wait "$ppid"
	pstatus=$?
}

# count WORDS: the number before WORDS in the proxy's summary line.
count() {
	tail -n 1 "$dir/out" | sed -n "s/.* \([0-9]*\) $1.*/\1/p"
}

# ---- options --------------------------------------------------------------

# one_line_exit2 NAME ARGS...: the proxy exits 2 with one line on stderr.
one_line_exit2() {
	name=$1
	shift
	"$PROXY" --threads 1 -l 127.0.0.1:0 -b 127.0.0.1:9 "$@" \
		>/dev/null 2>"$dir/err"
	status=$?
	if [ "$status" = 2 ] && [ "$(wc -l <"$dir/err")" = 1 ]; then
		ok "$name: exit 2, one line ($(cat "$dir/err"))"
	else
		cat "$dir/err"
		bad "$name: exit 2, one line (got $status)"
	fi
}
one_line_exit2 "--cert without --key" --cert "$dir/main.pem"
one_line_exit2 "TLS with --mode splice" --mode splice \
	--cert "$dir/main.pem" --key "$dir/main.key"
one_line_exit2 "a certificate file that is not there" \
	--cert "$dir/none.pem" --key "$dir/main.key"
if grep -q "none.pem" "$dir/err"; then
	ok "the missing file is named"
else
	bad "the missing file is named"
fi

# ---- termination ------------------------------------------------------------

"$HTTP" --threads 1 0 >"$dir/http.out" 2>&1 &
hpid=$!
pids="$pids $hpid"
hport=$(port_of "$dir/http.out")
if [ -z "$hport" ]; then
	bad "examples/http did not start"
	finish
fi

start_proxy -b "127.0.0.1:$hport" --cert "$dir/main.pem" \
	--key "$dir/main.key" --sni-cert "$dir/other.pem" \
	--sni-key "$dir/other.key" --alpn http/1.1
body=$(curl -sS --max-time 20 --cacert "$dir/main.pem" \
	"https://localhost:$pport/hello")
check "termination: curl gets /hello through the proxy" \
	[ "$body" = "hello" ]

printf 'GET /hello HTTP/1.0\r\n\r\n' |
	timeout 20 openssl s_client -connect "127.0.0.1:$pport" \
		-servername localhost -CAfile "$dir/main.pem" -alpn http/1.1 \
		-ign_eof >"$dir/sc" 2>&1
check "termination: s_client gets /hello" grep -q "^hello" "$dir/sc"
check "termination: s_client verified the certificate" \
	grep -q "Verify return code: 0 (ok)" "$dir/sc"
check "--alpn: s_client is told http/1.1" \
	grep -q "ALPN protocol: http/1.1" "$dir/sc"

printf 'GET /hello HTTP/1.0\r\n\r\n' |
	timeout 20 openssl s_client -connect "127.0.0.1:$pport" \
		-servername other.example -CAfile "$dir/other.pem" -ign_eof \
		>"$dir/sc" 2>&1
check "--sni-cert: a client asking for its name gets it" \
	grep -q "subject=CN = other.example" "$dir/sc"
check "--sni-cert: and is served" grep -q "^hello" "$dir/sc"

# Garbage instead of a ClientHello: closed (end of file or a reset, no
# answer of 200), counted; the next client is served.
python3 - "$pport" <<'PY' >"$dir/py" 2>&1
import os, socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=20)
s.sendall(b"\x16\x03\x01\x00\x10" + os.urandom(16) + b"GET / HTTP/1.0\r\n\r\n")
try:
    data = s.recv(4096)
    while data and b"200" not in data:
        data = s.recv(4096)
except ConnectionResetError:
    data = b""
print("closed" if not data else "answered")
PY
check "garbage ClientHello: the connection is closed" grep -q closed "$dir/py"
body=$(curl -sS --max-time 20 --cacert "$dir/main.pem" \
	"https://localhost:$pport/hello")
check "garbage ClientHello: the next client is served" [ "$body" = "hello" ]
stop_proxy
check "termination: exit 0 on SIGTERM" [ "$pstatus" = 0 ]
n=$(count "TLS handshakes failed")
check "garbage ClientHello: counted ($n TLS handshakes failed)" [ "$n" = 1 ]

# A client that stalls mid-handshake (half a ClientHello, then nothing):
# closed after --handshake-timeout, counted, and never connected onward.
start_proxy -b "127.0.0.1:$hport" --cert "$dir/main.pem" \
	--key "$dir/main.key" --handshake-timeout 300
python3 - "$pport" <<'PY' >"$dir/py" 2>&1
import socket, sys
# 5 s: far above the 300 ms asked for, below the library's default 10 s.
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
try:
    data = s.recv(4096)
except ConnectionResetError:
    data = b""
except socket.timeout:
    data = b"hung"
print("closed" if not data else "not closed: %r" % data)
PY
check "--handshake-timeout: a stalled handshake is closed" \
	grep -q "^closed" "$dir/py"
stop_proxy
n=$(count "TLS handshakes failed")
check "--handshake-timeout: counted ($n TLS handshakes failed)" [ "$n" = 1 ]
one_line_exit2 "--handshake-timeout 0" --handshake-timeout 0

# ---- origination ------------------------------------------------------------

# openssl s_server -www on a free port (it answers a GET with a page).
sport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
openssl s_server -accept "127.0.0.1:$sport" -cert "$dir/main.pem" \
	-key "$dir/main.key" -www -quiet >/dev/null 2>&1 &
spid=$!
pids="$pids $spid"
for _ in $(seq 100); do
	python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$sport),1)" \
		2>/dev/null && break
	sleep 0.1
done

start_proxy -b "127.0.0.1:$sport" --backend-tls --backend-ca "$dir/main.pem" \
	--backend-sni localhost
curl -sS --max-time 20 "http://127.0.0.1:$pport/" >"$dir/page" 2>&1
check "origination: a plain client gets s_server's page" \
	grep -q "s_server" "$dir/page"
stop_proxy
check "origination: exit 0 on SIGTERM" [ "$pstatus" = 0 ]

start_proxy -b "127.0.0.1:$sport" --backend-tls --backend-ca "$dir/main.pem" \
	--backend-sni wrong.example
curl -sS --max-time 20 "http://127.0.0.1:$pport/" >"$dir/page" 2>&1
check "origination: a name the certificate lacks is not served" \
	sh -c "! grep -q s_server '$dir/page'"
stop_proxy
n=$(count "backend failures")
check "origination: the failed verification is a backend failure ($n)" \
	[ "$n" = 1 ]

start_proxy -b "127.0.0.1:$sport" --backend-tls --backend-insecure \
	--backend-sni wrong.example
curl -sS --max-time 20 "http://127.0.0.1:$pport/" >"$dir/page" 2>&1
check "origination: --backend-insecure serves it all the same" \
	grep -q "s_server" "$dir/page"
stop_proxy

finish
