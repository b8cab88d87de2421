#!/bin/sh
# SPDX-License-Identifier: MIT
# tls_cost.sh: instructions (callgrind) per 4 KiB record (encrypt +
# decrypt) and per TLS 1.3 handshake (client + server, ECDSA P-256),
# libkeel-tls's engine against a plain OpenSSL memory-BIO loop
# (tools/bench/tls_cost.c). Builds the program against $BUILD (default
# build; run make first) in a scratch directory.
#   sh tools/bench/tls_cost.sh [RECORDS [HANDSHAKES]]
set -eu
BUILD=${BUILD:-build}
recs=${1:-400}
hss=${2:-20}
command -v valgrind >/dev/null || { echo "tls_cost: valgrind is needed" >&2; exit 1; }
[ -f "$BUILD/libkeel-tls.a" ] || { echo "tls_cost: $BUILD/libkeel-tls.a is needed (run make)" >&2; exit 1; }
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cc -O2 -Iinclude -o "$dir/tls_cost" tools/bench/tls_cost.c \
	"$BUILD/libkeel-tls.a" "$BUILD/libkeel.a" -lssl -lcrypto -luring \
	-ljemalloc -lpthread
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
	-keyout "$dir/key.pem" -out "$dir/cert.pem" -days 2 -subj /CN=localhost \
	2>/dev/null
ir() {
	valgrind --tool=callgrind --callgrind-out-file=/dev/null \
		"$dir/tls_cost" "$@" "$dir/cert.pem" "$dir/key.pem" 2>&1 |
		sed -n 's/.*Collected : \([0-9]*\)/\1/p'
}
per() { # WAY KIND N
	a=$(ir "$1" "$2" 0)
	b=$(ir "$1" "$2" "$3")
	echo $(((b - a) / $3))
}
kr=$(per keel rec "$recs")
pr=$(per plain rec "$recs")
kh=$(per keel hs "$hss")
ph=$(per plain hs "$hss")
printf '%-34s %12s %12s %7s\n' "instructions (callgrind)" keel plain ratio
printf '%-34s %12s %12s %7s\n' "per 4 KiB record (enc+dec)" "$kr" "$pr" \
	"$(awk -v a="$kr" -v b="$pr" 'BEGIN { printf "%.2f", a / b }')"
printf '%-34s %12s %12s %7s\n' "per TLS 1.3 handshake (both ends)" "$kh" "$ph" \
	"$(awk -v a="$kh" -v b="$ph" 'BEGIN { printf "%.2f", a / b }')"
