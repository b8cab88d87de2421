#!/bin/sh
# deps.sh: install the Debian packages keel's build, tests and demo need,
# when they are missing. Runs `apt-get update` first (a fresh machine has no
# package lists). When not root, prints the exact command instead.
# scdoc builds the man pages; man-db (and the groff it brings) checks them.
# `deps.sh fuzz` also installs what `make fuzz` needs: clang, and libFuzzer
# (libclang_rt.fuzzer, in libclang-rt-dev). `deps.sh bench`: also what
# `make bench`'s TLS part needs (h2load, from nghttp2-client: full TLS
# handshakes; the openssl tool: the certificate and the probe).
# libnats-dev (cnats) builds libkeel-nats; nats-server runs its tests.
set -eu
PKGS="build-essential pkg-config liburing-dev libjemalloc-dev libcriterion-dev
python3 python3-prometheus-client scdoc man-db libhttp-parser-dev curl wrk
libssl-dev openssl libnats-dev nats-server"
if [ "${1:-}" = fuzz ]; then
	PKGS="$PKGS clang libclang-rt-dev"
fi
if [ "${1:-}" = bench ]; then
	PKGS="$PKGS nghttp2-client openssl"
fi
missing=""
for p in $PKGS; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
		missing="$missing $p"
done
[ -z "$missing" ] && exit 0
cmd="apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends$missing"
if [ "$(id -u)" != 0 ]; then
	echo "keel: missing packages:$missing" >&2
	echo "keel: run as root:  sudo sh -c '$cmd'" >&2
	exit 1
fi
echo "keel: installing$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get -o DPkg::Lock::Timeout=300 update -qq
apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends $missing >/dev/null
