#!/bin/sh
# SPDX-License-Identifier: MIT
# test_seccomp.sh: keel's seccomp profile (tools/seccomp/) and the
# launcher that installs it, keel-seccomp.
# - The committed profiles are what gen.sh makes of keel.syscalls now;
#   the Docker/OCI JSON parses (python3 -m json.tool), refuses with EPERM
#   by default and allows exactly the list, io_uring included; systemd
#   knows every name and takes the unit lines without a warning
#   (systemd-analyze syscall-filter and verify, if present).
# - The launcher filters: under --profile keel a call off the list
#   (mkfifo's mknodat) fails with EPERM, and works without the filter;
#   a call of another ABI (i386's int 0x80, x32) kills with SIGSYS in
#   both modes; bad usage and a bad list are one line and exit status 2.
# - Under --profile keel: examples/echo (keel-load, itself under the
#   profile, and /metrics with curl), examples/http plain (--root,
#   --test-routes: curl, python3's http.client) and with --cert (curl,
#   python3's ssl), examples/proxy (a backend by name, to the http
#   example; curl) and examples/tls_echo (openssl s_client) start, serve
#   correct answers, print nothing about a refused call and exit 0 on
#   SIGTERM.
# - Under --deny-io-uring (Docker's default: io_uring_setup, _enter and
#   _register fail with EPERM) echo, http and proxy must say they run on
#   epoll, serve and exit 0 on SIGTERM. A libkeel without the epoll
#   backend (no KEEL_BACKEND in it) can only exit 1 with
#   keel_loop_explain()'s message: that is checked, and the serving
#   checks are skipped, saying so.
# Loopback only; no timing assertion. Builds nothing: runs $BUILD's
# examples and tools (BUILD defaults to build).
# Last line: "seccomp: N passed, M failed"; exit status 1 on any failure.
set -u
BUILD=${BUILD:-build}
SUITE=seccomp
. test/helpers/checks.sh
LAUNCH=$BUILD/tools/keel-seccomp
GEN="sh tools/seccomp/gen.sh"
LIST=tools/seccomp/keel.syscalls
pids=
trap 'for p in $pids; do kill -KILL "$p" 2>/dev/null; done; rm -rf "$dir"' EXIT

for c in python3 curl openssl; do
	command -v $c >/dev/null || bad "$c is needed (make deps)"
done
for b in "$LAUNCH" "$BUILD/tools/keel-load" "$BUILD/examples/echo" \
	"$BUILD/examples/http" "$BUILD/examples/proxy" \
	"$BUILD/examples/tls_echo"; do
	[ -x "$b" ] || bad "$b is needed (run make first)"
done
[ "$fail" = 0 ] || finish
# Under ASan, LeakSanitizer's check at exit stops the threads with ptrace,
# which keel's profile refuses (and must): a sanitizer build runs the
# examples without it (the other tests check their leaks).
if grep -q __asan_init "$BUILD/examples/echo"; then
	ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0"
	export ASAN_OPTIONS
	echo "note: an ASan build: no leak check under the filters"
fi

# --- the profiles ---
$GEN json "$LIST" >"$dir/keel.json"
check "keel.json is what gen.sh makes of keel.syscalls (make seccomp)" \
	cmp -s "$dir/keel.json" tools/seccomp/keel.json
$GEN systemd "$LIST" >"$dir/keel-seccomp.conf"
check "keel-seccomp.conf is what gen.sh makes of keel.syscalls" \
	cmp -s "$dir/keel-seccomp.conf" tools/seccomp/keel-seccomp.conf
check "keel.json is valid JSON (python3 -m json.tool)" \
	python3 -m json.tool tools/seccomp/keel.json "$dir/pretty.json"
$GEN names "$LIST" >"$dir/names"
check "the list names io_uring_setup, _enter and _register" \
	[ "$(grep -c '^io_uring_\(setup\|enter\|register\)$' "$dir/names")" = 3 ]
check "keel.json: EPERM by default, x86_64 (+ x86, x32), the list allowed" \
	python3 - tools/seccomp/keel.json "$dir/names" <<'PY'
import json, sys
p = json.load(open(sys.argv[1]))
names = open(sys.argv[2]).read().split()
assert p["defaultAction"] == "SCMP_ACT_ERRNO" and p["defaultErrnoRet"] == 1
assert p["archMap"] == [{"architecture": "SCMP_ARCH_X86_64",
    "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]}]
assert len(p["syscalls"]) == 1
assert p["syscalls"][0]["action"] == "SCMP_ACT_ALLOW"
assert p["syscalls"][0]["names"] == names, "not the list"
PY
sed -n 's/^SystemCallFilter=//p' tools/seccomp/keel-seccomp.conf |
	tr ' ' '\n' | LC_ALL=C sort >"$dir/unit-names"
check "the systemd lines allow exactly the list" \
	cmp -s "$dir/unit-names" "$dir/names"
if command -v systemd-analyze >/dev/null &&
	systemd-analyze syscall-filter @known >"$dir/known" 2>/dev/null; then
	sed 's/^ *//' "$dir/known" | LC_ALL=C sort -u >"$dir/known.sorted"
	LC_ALL=C comm -23 "$dir/names" "$dir/known.sorted" >"$dir/unknown"
	cat "$dir/unknown"
	check "systemd-analyze knows every name of the list" \
		[ ! -s "$dir/unknown" ]
	# A unit with the drop-in's lines: verify warns of anything it
	# ignores (a name it cannot parse) but exits 0, so it must be silent.
	{
		printf '[Unit]\nDescription=keel seccomp test\n\n'
		cat tools/seccomp/keel-seccomp.conf
		echo "ExecStart=$(command -v true)"
	} >"$dir/keel-test.service"
	systemd-analyze verify "$dir/keel-test.service" >"$dir/verify" 2>&1
	st=$?
	cat "$dir/verify"
	check "systemd-analyze verify: a unit with keel-seccomp.conf, no warning" \
		[ "$st" = 0 ] && [ ! -s "$dir/verify" ]
else
	echo "SKIP systemd-analyze: not here, the systemd line is not checked by systemd"
fi

# --- the launcher ---
# usage_line NAME STATUS ARGS...: keel-seccomp ARGS exits STATUS and its
# first line says why.
usage_line() {
	name=$1
	want=$2
	shift 2
	"$LAUNCH" "$@" >"$dir/u.out" 2>&1
	st=$?
	if [ "$st" = "$want" ] && head -n 1 "$dir/u.out" | grep -q '^keel-seccomp: '; then
		ok "$name: exit $want, one line"
	else
		cat "$dir/u.out"
		bad "$name: exit $want, one line (got $st)"
	fi
}
usage_line "no mode" 2 -- true
usage_line "both modes" 2 --profile keel --deny-io-uring -- true
usage_line "no command" 2 --profile keel --
usage_line "a list that does not exist" 2 --profile "$dir/none" -- true
printf 'read\nno_such_call\n' >"$dir/bad.list"
usage_line "a list naming no system call" 2 --profile "$dir/bad.list" -- true
usage_line "a command that does not exist" 1 --profile keel -- "$dir/none"
"$LAUNCH" --profile "$dir/bad.list" -- true 2>"$dir/u.err"
check "a bad list: the line names the file, the line and the call" \
	grep -qx "keel-seccomp: $dir/bad.list:2: no system call named no_such_call on x86_64" \
	"$dir/u.err"

# A call off the list fails with EPERM; without the filter it works (so
# the failure is the filter's). mknodat is not on keel's list.
mkfifo "$dir/fifo0"
check "without a filter, mkfifo works" [ -p "$dir/fifo0" ]
"$LAUNCH" --profile keel -- mkfifo "$dir/fifo1" 2>"$dir/mkfifo.err"
st=$?
cat "$dir/mkfifo.err"
check "--profile keel: mkfifo fails" [ "$st" != 0 ] && [ ! -e "$dir/fifo1" ]
check "--profile keel: with EPERM" grep -q 'Operation not permitted' \
	"$dir/mkfifo.err"
# A list of FILE works the same way: mkfifo's own needs plus mknodat.
{
	cat "$LIST"
	echo mknodat
} >"$dir/plus.list"
"$LAUNCH" --profile "$dir/plus.list" -- mkfifo "$dir/fifo2"
check "--profile FILE: what the list adds is allowed" [ -p "$dir/fifo2" ]

# Other ABIs are killed: getpid through int 0x80 (i386: 20) and with the
# x32 bit (39 | 0x40000000). Without a filter each returns (a pid, or
# ENOSYS on a kernel without x32; a kernel without ia32 emulation faults
# on int 0x80, and that half is skipped); under a filter, SIGSYS kills.
cat >"$dir/abi.c" <<'C'
#include <stdio.h>
#include <string.h>
#include <unistd.h>
int main(int argc, char **argv)
{
	long r;

	if (argc == 2 && strcmp(argv[1], "i386") == 0)
		__asm__ volatile("int $0x80" : "=a"(r) : "0"(20L) : "memory");
	else
		__asm__ volatile("syscall" : "=a"(r) : "0"(39L | 0x40000000L)
				 : "rcx", "r11", "memory");
	printf("%ld\n", r);
	return 0;
}
C
if ${CC:-cc} -O1 -o "$dir/abi" "$dir/abi.c" 2>"$dir/abi.err"; then
	for abi in i386 x32; do
		# A kernel without ia32 emulation faults on int 0x80: then
		# there is nothing to refuse.
		if ! "$dir/abi" $abi >/dev/null 2>&1; then
			echo "SKIP $abi: this kernel does not run its calls"
			continue
		fi
		for mode in "--profile keel" --deny-io-uring; do
			# shellcheck disable=SC2086 # $mode is one or two words
			"$LAUNCH" $mode -- "$dir/abi" $abi >/dev/null 2>&1
			st=$?
			check "$abi: a call under $mode kills (SIGSYS, got $st)" \
				[ "$st" = $((128 + 31)) ]
		done
	done
else
	cat "$dir/abi.err"
	bad "the ABI probe compiles"
fi

# --- the examples ---
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
	-keyout "$dir/key.pem" -out "$dir/cert.pem" -days 2 \
	-subj /CN=localhost -addext subjectAltName=DNS:localhost 2>/dev/null
mkdir "$dir/root"
python3 -c 'import sys; sys.stdout.buffer.write(bytes(range(256)) * 4096)' \
	>"$dir/root/big.bin"

# start NAME PATTERN CMD...: run CMD in the background (stdout in
# $dir/NAME.out, stderr in $dir/NAME.err) and wait until stdout has a
# line "PATTERN<port> " or "PATTERN<port>(": sets NAME_pid and NAME_port
# (empty if it exited first; 10 s at most).
start() {
	name=$1
	pattern=$2
	shift 2
	# The last mode's server of this name left its (dead) port in
	# NAME.out; the redirection below truncates it only once the
	# background shell runs: remove it first, so the poll waits.
	rm -f "$dir/$name.out"
	"$@" >"$dir/$name.out" 2>"$dir/$name.err" &
	eval "${name}_pid=$!"
	pids="$pids $!"
	p=
	for _ in $(seq 100); do
		p=$(sed -n "s/^${pattern}\([0-9][0-9]*\)[ (].*/\1/p" \
			"$dir/$name.out" 2>/dev/null | head -n 1)
		[ -n "$p" ] && break
		kill -0 "$(eval echo "\$${name}_pid")" 2>/dev/null || break
		sleep 0.1
	done
	eval "${name}_port=$p"
}

# stop NAME MODE: SIGTERM; it must exit 0 (within 30 s: a process whose
# signalfd was refused would never see SIGTERM) and its stderr must not
# say a call was refused.
stop() {
	pid=$(eval echo "\$${1}_pid")
	kill -TERM "$pid" 2>/dev/null
	for _ in $(seq 300); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -KILL "$pid" 2>/dev/null && echo "$1 still running 30 s after SIGTERM"
	wait "$pid"
	st=$?
	check "$2: $1 exits 0 on SIGTERM (got $st)" [ "$st" = 0 ]
	# The epoll fallback's own line names the refused io_uring_setup, on
	# purpose: any other refusal is a call missing from the profile.
	if grep -v '^keel: io_uring refused: io_uring_setup: ' "$dir/$1.err" |
		grep -qi 'not permitted\|EPERM'; then
		cat "$dir/$1.err"
		bad "$2: $1 says nothing of a refused call"
	else
		ok "$2: $1 says nothing of a refused call"
	fi
}

# started NAME MODE: NAME said its port (else its output, and a failure).
started() {
	if [ -n "$(eval echo "\$${1}_port")" ]; then
		ok "$2: $1 starts"
		return 0
	fi
	cat "$dir/$1.out" "$dir/$1.err"
	bad "$2: $1 starts"
	return 1
}

# serve MODE LAUNCHER-ARGS...: the examples under the launcher; checks
# that each starts, serves and exits 0 on SIGTERM. Under
# --deny-io-uring, each of echo, http and proxy must also say epoll.
serve() {
	mode=$1
	shift
	# echo's metrics port must be free (echo itself takes port 0).
	mport=$(python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])')
	start echo 'echo: listening on 127\.0\.0\.1:' "$LAUNCH" "$@" -- \
		"$BUILD/examples/echo" --threads 2 --metrics "$mport" 127.0.0.1 0
	start http 'http: listening on 127\.0\.0\.1:' "$LAUNCH" "$@" -- \
		"$BUILD/examples/http" --threads 2 --test-routes \
		--root "$dir/root" 0
	start https 'http: listening on 127\.0\.0\.1:' "$LAUNCH" "$@" -- \
		"$BUILD/examples/http" --threads 2 --test-routes \
		--cert "$dir/cert.pem" --key "$dir/key.pem" 0
	start tls 'tls_echo: listening on 127\.0\.0\.1:' "$LAUNCH" "$@" -- \
		"$BUILD/examples/tls_echo" --threads 2 \
		--cert "$dir/cert.pem" --key "$dir/key.pem" 0

	if started echo "$mode"; then
		# keel-load is a keel program too: under the same filter.
		timeout 60 "$LAUNCH" "$@" -- "$BUILD/tools/keel-load" -p "$echo_port" \
			-c 16 -s 3000 -d 1 -w 0 >"$dir/load.out" 2>&1
		st=$?
		tail -n 1 "$dir/load.out"
		check "$mode: keel-load (under the filter too) through echo: every byte back" \
			[ "$st" = 0 ]
		check "$mode: keel-load: no connection failed" \
			grep -q ' errors=0 verify_errors=0 conns_ok=16' \
			"$dir/load.out"
		check "$mode: echo's /metrics (curl)" sh -c \
			"curl -m 30 -sf http://127.0.0.1:$mport/metrics | grep -q '^keel_'"
	fi
	if started http "$mode"; then
		check "$mode: http /hello (curl)" [ "$(curl -m 30 -s \
			"http://127.0.0.1:$http_port/hello")" = hello ]
		check "$mode: http serves a file of --root (curl)" sh -c \
			"curl -m 30 -sf http://127.0.0.1:$http_port/big.bin | cmp -s - '$dir/root/big.bin'"
		check "$mode: http POST /echo (python3 http.client)" \
			python3 - "$http_port" <<'PY'
import http.client, sys
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=20)
data = b"".join(b"line %d\n" % i for i in range(5000))
c.request("POST", "/echo", body=data)
r = c.getresponse()
assert r.status == 200 and r.read() == data
PY
		# The proxy resolves its backend by name (getaddrinfo).
		start proxy 'proxy: listening on 127\.0\.0\.1:' "$LAUNCH" "$@" -- \
			"$BUILD/examples/proxy" --threads 2 -l 0 \
			-b "localhost:$http_port"
		if started proxy "$mode"; then
			if curl -m 30 -sSf "http://127.0.0.1:$proxy_port/big.bin" \
				-o "$dir/big.got" 2>"$dir/curl.err" &&
				cmp -s "$dir/big.got" "$dir/root/big.bin"; then
				ok "$mode: proxy to http, by name (curl)"
			else
				# Rare on epoll (issue 15): say what was seen.
				cat "$dir/curl.err" "$dir/proxy.out" "$dir/proxy.err"
				ls -l "$dir/big.got" "$dir/root/big.bin"
				bad "$mode: proxy to http, by name (curl)"
			fi
			stop proxy "$mode"
		fi
	fi
	if started https "$mode"; then
		check "$mode: https /hello (curl, verified)" [ "$(curl -m 30 -s \
			--cacert "$dir/cert.pem" \
			"https://localhost:$https_port/hello")" = hello ]
		check "$mode: https POST /echo (python3 ssl)" \
			python3 - "$https_port" "$dir/cert.pem" <<'PY'
import http.client, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[2])
c = http.client.HTTPSConnection("localhost", int(sys.argv[1]),
                                context=ctx, timeout=20)
data = b"x" * 200000
c.request("POST", "/echo", body=data)
r = c.getresponse()
assert r.status == 200 and r.read() == data
PY
	fi
	if started tls "$mode"; then
		(
			echo "hello seccomp"
			for _ in $(seq 200); do
				grep -q '^hello seccomp' "$dir/sc.out" && break
				sleep 0.1
			done
		) | timeout 30 openssl s_client -connect "127.0.0.1:$tls_port" \
			-CAfile "$dir/cert.pem" -verify_return_error \
			>"$dir/sc.out" 2>&1
		check "$mode: tls_echo echoes to openssl s_client" \
			grep -q '^hello seccomp' "$dir/sc.out"
	fi
	for n in echo http https tls; do
		[ -n "$(eval echo "\$${n}_port")" ] && stop $n "$mode"
	done
}

serve "--profile keel" --profile keel

# The same profile on the epoll backend: its calls are on the list too.
export KEEL_BACKEND=epoll
serve "--profile keel, KEEL_BACKEND=epoll" --profile keel
unset KEEL_BACKEND

# --deny-io-uring, as Docker's default profile does: the examples must
# fall back to the epoll backend, say so, and serve.
serve "--deny-io-uring" --deny-io-uring
for n in echo http proxy; do
	if grep -qi 'epoll' "$dir/$n.out" "$dir/$n.err"; then
		ok "--deny-io-uring: $n says it runs on epoll"
	else
		cat "$dir/$n.out" "$dir/$n.err"
		bad "--deny-io-uring: $n says it runs on epoll"
	fi
done
# Asked for io_uring by name, it must not fall back.
KEEL_BACKEND=io_uring "$LAUNCH" --deny-io-uring -- \
	"$BUILD/examples/echo" 127.0.0.1 0 >/dev/null 2>"$dir/forced.err"
st=$?
check "--deny-io-uring, KEEL_BACKEND=io_uring: echo exits 1 (got $st)" \
	[ "$st" = 1 ]
check "--deny-io-uring, KEEL_BACKEND=io_uring: the reason" \
	grep -q 'io_uring is not permitted here' "$dir/forced.err"
finish
