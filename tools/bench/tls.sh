#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# tls.sh: section 3g of tools/bench.sh (`make bench`), TLS. Everything in
# one run, so that each ratio pairs cells run back to back:
#
#  hs   full TLS handshakes per second, a new connection per request:
#       keel's examples/http (--cert/--key) vs nginx. h2load --h1 in rounds
#       of -c C -n C (each client one connection, one request, then gone),
#       for TLS_DUR seconds. h2load, not wrk: wrk keeps its TLS session
#       across reconnects (SSL_clear keeps it), so its `Connection: close`
#       handshakes are resumptions; h2load's new clients have no session to
#       offer. h2load reports no latency percentiles.
#  res  the same with wrk -H 'Connection: close' (resumed handshakes where
#       the server issues tickets; the probe line says whether it did).
#  ka   HTTPS keep-alive: wrk -t1 -cC (C in TLS_CONFIGS), keel vs nginx.
#  tp   TLS-terminating proxy: wrk https through haproxy 2.6 and through
#       keel's examples/proxy (--cert/--key), both in front of the same
#       plain nginx backend; the CPU is the proxy's alone.
#  pp   the plain TCP proxy with health checks off and on: wrk http through
#       keel's examples/proxy, the same backend.
#
# The certificate (ECDSA P-256, self-signed) is generated into OUT. nginx
# and haproxy are configured with TLS 1.3 only, TLS_SUITE (default
# TLS_AES_128_GCM_SHA256) and TLS_GROUP (X25519); the clients offer only
# those too (wrk through an OpenSSL config, h2load by --tls13-ciphers), so
# keel negotiates the same whatever its defaults. A probe (openssl
# s_client) records what each server negotiated and whether it resumes.
#
# Servers and proxies (and the backend) run on SRV_CPU, one thread each;
# the clients on LG_CPU. CPU per request is the server's (or the proxy's)
# on-CPU time over the cell (schedstat, its threads and direct children)
# divided by the requests the client counted.
#
# Environment: PEERS_DIR (the built peer harness: scripts/lib.sh, loadgen),
# OUT, HTTP_BIN, PROXY_BIN, TLS_CONFIGS ("1 64"), TLS_HS_CONNS (64),
# TLS_REPS (5), TLS_DUR (2 s; whole seconds, wrk's unit), QUICK=1 (1 rep,
# 1 s), SRV_CPU (1), LG_CPU (0), KEEL_HEALTH_OPTS (examples/proxy's health
# check options for the pp row), KEEL_TLS_PROXY_BIN (the proxy of the tp
# row, default PROXY_BIN: e.g. another build's). Writes OUT/raw.tsv, OUT/probe.tsv,
# OUT/meta.tsv (the pp rows' options) and OUT/logs/; every process it starts is stopped at exit.
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
: "${PEERS_DIR:?tls.sh: PEERS_DIR (the peer harness) is not set}"
# shellcheck source=/dev/null
source "$PEERS_DIR/scripts/lib.sh"

OUT="${OUT:?tls.sh: OUT is not set}"
mkdir -p "$OUT/logs" && OUT="$(cd "$OUT" && pwd)"
HTTP_BIN="${HTTP_BIN:-}"
PROXY_BIN="${PROXY_BIN:-}"
CONFIGS="${TLS_CONFIGS:-1 64}"
HS_CONNS="${TLS_HS_CONNS:-64}"
REPS="${TLS_REPS:-5}"
DUR="${TLS_DUR:-2}"
if [[ "${QUICK:-0}" == 1 ]]; then
	REPS="${TLS_REPS:-1}" DUR="${TLS_DUR:-1}"
fi
SRV_CPU="${SRV_CPU:-1}"
LG_CPU="${LG_CPU:-0}"
SUITE="${TLS_SUITE:-TLS_AES_128_GCM_SHA256}"
GROUP="${TLS_GROUP:-X25519}"
# The pp rows: health checks off, and on as KEEL_HEALTH_OPTS says (an HTTP
# GET of the nginx backend every second; haproxy's `check` default is 2 s).
HEALTH="${KEEL_HEALTH_OPTS:---health http --health-every 1000}"
BASE_PORT="${BASE_PORT:-24000}"
# shellcheck disable=SC2034 # (read by lib.sh's alloc_port)
NEXT_PORT="$BASE_PORT"

for t in wrk h2load openssl nginx haproxy; do
	command -v $t >/dev/null ||
		{ log "tls.sh: $t is not installed (tools/deps.sh bench)"; exit 2; }
done
RAW="$OUT/raw.tsv"
PROBE="$OUT/probe.tsv"
printf 'test\tpeer\tconns\trep\trps\tp50_us\tp99_us\terrors\treqs\tcpu_ns\twall_s\tcore_pct\n' >"$RAW"
printf 'peer\tprotocol\tsuite\tgroup\talpn\tresumes\tcert_sha256\n' >"$PROBE"
trap 'cleanup_ours; exit 130' INT TERM
trap 'cleanup_ours' EXIT
qos_hold

# --- the certificate and the clients' TLS settings ------------------------------
CERT="$OUT/cert.pem" KEY="$OUT/key.pem" PEM="$OUT/cert+key.pem"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
	-keyout "$KEY" -out "$CERT" -days 7 -subj /CN=localhost \
	-addext subjectAltName=DNS:localhost,IP:127.0.0.1 >"$OUT/logs/openssl-req.log" 2>&1 ||
	{ log "tls.sh: openssl could not make the certificate (see $OUT/logs/openssl-req.log)"; exit 1; }
cat "$CERT" "$KEY" >"$PEM"
# wrk has no TLS options: it reads OpenSSL's configuration, which offers
# only SUITE and GROUP (given to wrk alone, not to the servers).
CLIENT_CNF="$OUT/client-openssl.cnf"
cat >"$CLIENT_CNF" <<EOF
openssl_conf = openssl_init
[openssl_init]
ssl_conf = ssl_sect
[ssl_sect]
system_default = system_default_sect
[system_default_sect]
MinProtocol = TLSv1.3
Ciphersuites = $SUITE
Groups = $GROUP
EOF

# --- servers ----------------------------------------------------------------------
declare -A PORT=() PID=() URLPATH=() SCHEME=()
# up NAME PATH SCHEME PORT CMD...: start CMD on SRV_CPU ({port} in CMD is
# PORT), wait until it listens on PORT.
up() {
	local name="$1" path="$2" scheme="$3" port="$4"
	shift 4
	local cmd=("${@//\{port\}/$port}")
	start_bg "$OUT/logs/$name.log" "$SRV_CPU" "${cmd[@]}"
	if wait_port "$port" 10; then
		PORT[$name]=$port PID[$name]=$BG_PID URLPATH[$name]=$path SCHEME[$name]=$scheme
	else
		log "  $name did not start: $(head -c 300 "$OUT/logs/$name.log")"
		stop_pid "$BG_PID"
	fi
}
nginx_conf() { # dir ssl|plain -> prints the config's path
	local dir="$1" ssl=ssl
	mkdir -p "$dir"
	[[ "$2" == plain ]] && ssl=""
	sed -e "s|@DIR@|$dir|g" -e "s|@SSL@|$ssl|g" -e "s|@CERT@|$CERT|g" \
		-e "s|@KEY@|$KEY|g" -e "s|@SUITE@|$SUITE|g" -e "s|@GROUP@|$GROUP|g" \
		"$HERE/nginx-tls.conf.in" >"$dir/nginx.conf"
	[[ -z "$ssl" ]] && sed -i '/^ *ssl_/d' "$dir/nginx.conf"
	echo "$dir/nginx.conf"
}
# An option of a keel example, from its usage line.
has_opt() { [[ -x "$1" ]] && "$1" --help 2>&1 | grep -q -- "$2"; }

alloc_port || exit 1
conf=$(nginx_conf "$OUT/nginx-https" ssl)
sed -i "s|@PORT@|$ALLOC_PORT|" "$conf"
up nginx-https / https $ALLOC_PORT nginx -e "$OUT/nginx-https/error.log" -p "$OUT/nginx-https/" -c "$conf"

if has_opt "$HTTP_BIN" --cert; then
	alloc_port || exit 1
	up keel-https /hello https $ALLOC_PORT "$HTTP_BIN" --port '{port}' --threads 1 --cert "$CERT" --key "$KEY"
else
	log "  keel-https: skipped: ${HTTP_BIN:-examples/http} has no --cert option: no keel row"
fi

alloc_port || exit 1
bp=$ALLOC_PORT
conf=$(nginx_conf "$OUT/nginx-backend" plain)
sed -i "s|@PORT@|$bp|" "$conf"
up backend / http $bp nginx -e "$OUT/nginx-backend/error.log" -p "$OUT/nginx-backend/" -c "$conf"
[[ -n "${PORT[backend]:-}" ]] || log "  the plain nginx backend did not start: no proxy rows"

if [[ -n "${PORT[backend]:-}" ]]; then
	alloc_port || exit 1
	hp=$ALLOC_PORT
	mkdir -p "$OUT/haproxy"
	sed -e "s|@PORT@|$hp|g" -e "s|@BACKEND@|$bp|g" -e "s|@PEM@|$PEM|g" \
		-e "s|@SUITE@|$SUITE|g" -e "s|@GROUP@|$GROUP|g" \
		"$HERE/haproxy-tls.cfg.in" >"$OUT/haproxy/haproxy.cfg"
	# -db: foreground, so that the PID is haproxy's own.
	up haproxy-tls / https $hp haproxy -db -f "$OUT/haproxy/haproxy.cfg"

	tproxy="${KEEL_TLS_PROXY_BIN:-$PROXY_BIN}"
	if has_opt "$tproxy" --cert; then
		# ALPN as haproxy's bind line has it.
		alpn=()
		has_opt "$tproxy" --alpn && alpn=(--alpn http/1.1)
		alloc_port || exit 1
		up keel-proxy-tls / https $ALLOC_PORT "$tproxy" --threads 1 -l '127.0.0.1:{port}' \
			-b "127.0.0.1:$bp" --cert "$CERT" --key "$KEY" "${alpn[@]}"
	else
		log "  keel-proxy-tls: skipped: ${tproxy:-examples/proxy} has no --cert option: no keel row"
	fi
	if [[ -x "$PROXY_BIN" ]]; then
		read -ra hopts <<<"$HEALTH"
		off=()
		has_opt "$PROXY_BIN" --health && off=(--health off)
		alloc_port || exit 1
		up keel-proxy / http $ALLOC_PORT "$PROXY_BIN" --threads 1 -l '127.0.0.1:{port}' \
			-b "127.0.0.1:$bp" "${off[@]}"
		printf 'health_off\t%s\nhealth_on\t%s\n' "${off[*]:-(no health options)}" "$HEALTH" >"$OUT/meta.tsv"
		if has_opt "$PROXY_BIN" "${hopts[0]}"; then
			alloc_port || exit 1
			up keel-proxy-health / http $ALLOC_PORT "$PROXY_BIN" --threads 1 -l '127.0.0.1:{port}' \
				-b "127.0.0.1:$bp" "${hopts[@]}"
		else
			log "  keel-proxy-health: skipped: ${PROXY_BIN} has no ${hopts[0]} option (KEEL_HEALTH_OPTS): no health-check row"
		fi
	fi
fi

url() { echo "${SCHEME[$1]}://127.0.0.1:${PORT[$1]}${URLPATH[$1]}"; }

# --- the probe: what each TLS server negotiated, and whether it resumes -------------
probe() {
	local p="$1" req out1 out2 proto suite group alpn res fp
	req="GET ${URLPATH[$p]} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
	local s=(timeout 10 openssl s_client -connect "127.0.0.1:${PORT[$p]}" -servername localhost
		-alpn http/1.1 -ciphersuites "$SUITE" -groups "$GROUP" -ign_eof)
	out1=$(printf "$req" | "${s[@]}" -sess_out "$OUT/probe-$p.sess" 2>&1)
	out2=$(printf "$req" | "${s[@]}" -sess_in "$OUT/probe-$p.sess" 2>&1)
	printf '%s\n===\n%s\n' "$out1" "$out2" >"$OUT/logs/probe-$p.txt"
	proto=$(sed -n 's/^New, \([^,]*\), Cipher is \(.*\)$/\1/p' <<<"$out1" | head -1)
	suite=$(sed -n 's/^New, [^,]*, Cipher is \(.*\)$/\1/p' <<<"$out1" | head -1)
	group=$(sed -n 's/^Server Temp Key: \([^,]*\).*/\1/p' <<<"$out1" | head -1)
	alpn=$(sed -n 's/^ALPN protocol: \(.*\)/\1/p' <<<"$out1" | head -1)
	res=no
	grep -q '^Reused, ' <<<"$out2" && res=yes
	fp=$(sed -n '/-----BEGIN CERTIFICATE-----/,/-----END CERTIFICATE-----/p' <<<"$out1" |
		openssl x509 -noout -fingerprint -sha256 2>/dev/null | sed 's/.*=//; s/://g' | cut -c1-16)
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$p" "${proto:-?}" "${suite:-?}" "${group:-?}" \
		"${alpn:-none}" "$res" "${fp:-?}" >>"$PROBE"
}
for p in nginx-https keel-https haproxy-tls keel-proxy-tls; do
	[[ -n "${PORT[$p]:-}" ]] && probe "$p"
done
log "  certificate: $(openssl x509 -in "$CERT" -noout -fingerprint -sha256 | sed 's/.*=//; s/://g' | cut -c1-16) (sha256, first 16 hex)"
column -t -s $'\t' "$PROBE" | sed 's/^/  /' >&2

# --- cells ------------------------------------------------------------------------------
to_us() { awk -v v="$1" 'BEGIN{ if (v ~ /us$/) {sub(/us$/,"",v); print v+0}
	else if (v ~ /ms$/) {sub(/ms$/,"",v); print v*1000} else if (v ~ /s$/) {sub(/s$/,"",v); print v*1e6} else print "" }'; }
now() { date +%s.%N; }

# row TEST PEER CONNS REP RPS P50 P99 ERRORS REQS CPU_NS T1 T2 CORE1 CORE2
row() {
	local wall core
	wall=$(awk -v a="${11}" -v b="${12}" 'BEGIN{printf "%.3f", b-a}')
	core=$(awk -v a="${13}" -v b="${14}" 'BEGIN{split(a,x," "); split(b,y," "); d=y[2]-x[2]; if(d<=0)d=1; printf "%.0f", 100*(y[1]-x[1])/d}')
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" \
		"$6" "$7" "$8" "$9" "${10}" "$wall" "$core" >>"$RAW"
	log "  rep$4 $(printf '%-3s %-17s c=%-3s' "$1" "$2" "$3") rps=${5%.*} p99=${7:-n/a}us err=$8 cpu/req=$(awk -v c="${10}" -v n="$9" 'BEGIN{if (n > 0) printf "%.1f", c/n/1e3; else printf "n/a"}')us core=${core}%"
}
fail() { printf '%s\t%s\t%s\t%s\tFAIL\t\t\t\t\t\t\t\n' "$1" "$2" "$3" "$4" >>"$RAW"; }

# wrk_cell TEST PEER CONNS REP [wrk options...]
wrk_cell() {
	local t="$1" p="$2" c="$3" rep="$4"
	shift 4
	local pid="${PID[$p]}" out t1 t2 s1 s2 k1 k2
	local w=(env OPENSSL_CONF="$CLIENT_CNF" taskset -c "$LG_CPU" wrk -t1 -c"$c" -d"${DUR}s"
		--latency "$@" "$(url "$p")")
	sleep 0.05
	t1=$(tree_ns "$pid") s1=$(now) k1=$(core_snap "$SRV_CPU")
	out=$(timeout $((DUR + 20)) "${w[@]}" 2>&1)
	t2=$(tree_ns "$pid") s2=$(now) k2=$(core_snap "$SRV_CPU")
	printf '%s\n' "$out" >"$OUT/logs/wrk.$t.$p.c$c.rep$rep.txt"
	local rps reqs p50 p99 errs
	rps=$(awk '/^Requests\/sec:/{print $2}' <<<"$out")
	reqs=$(awk '/ requests in /{print $1}' <<<"$out")
	p50=$(to_us "$(awk '$1=="50%"{print $2}' <<<"$out")")
	p99=$(to_us "$(awk '$1=="99%"{print $2}' <<<"$out")")
	errs=$(awk '/Socket errors:/{gsub(/,/,""); s+=$4+$6+$8+$10} /Non-2xx/{s+=$NF} END{print s+0}' <<<"$out")
	if [[ -z "$rps" || -z "$reqs" ]]; then
		log "  rep$rep $t $p c=$c: wrk gave no result: $(head -c 200 <<<"$out")"
		fail "$t" "$p" "$c" "$rep"
		return
	fi
	row "$t" "$p" "$c" "$rep" "$rps" "$p50" "$p99" "$errs" "$reqs" $((t2 - t1)) "$s1" "$s2" "$k1" "$k2"
}

# hs_cell PEER CONNS REP: rounds of h2load -c C -n C (one request per
# client, a full handshake each) until DUR seconds have passed.
hs_cell() {
	local p="$1" c="$2" rep="$3" pid="${PID[$1]}" t1 t2 s1 s2 k1 k2 end out
	local ok=0 bad=0 rounds=0 s f e
	local h=(taskset -c "$LG_CPU" h2load --h1 --tls13-ciphers="$SUITE" -c "$c" -n "$c" "$(url "$p")")
	sleep 0.05
	t1=$(tree_ns "$pid") s1=$(now) k1=$(core_snap "$SRV_CPU")
	end=$(awk -v s="$s1" -v d="$DUR" 'BEGIN{printf "%.3f", s+d}')
	while awk -v n="$(now)" -v e="$end" 'BEGIN{exit !(n < e)}'; do
		out=$(timeout 30 "${h[@]}" 2>&1)
		rounds=$((rounds + 1))
		# "requests: 64 total, 64 started, 64 done, 64 succeeded, 0 failed, 0 errored, 0 timeout"
		read -r s f e < <(awk '/^requests:/{gsub(/,/,""); print $8, $10, $12}' <<<"$out")
		if [[ -z "${s:-}" ]]; then
			bad=$((bad + c))
			printf '%s\n' "$out" >"$OUT/logs/h2load.$p.c$c.rep$rep.failed.txt"
			break
		fi
		ok=$((ok + s)) bad=$((bad + f + e))
	done
	t2=$(tree_ns "$pid") s2=$(now) k2=$(core_snap "$SRV_CPU")
	printf '%s\n' "$out" >"$OUT/logs/h2load.$p.c$c.rep$rep.txt"
	if ((ok == 0)); then
		log "  rep$rep hs $p c=$c: no handshake completed: $(grep -m1 -i 'error\|fail' <<<"$out")"
		fail hs "$p" "$c" "$rep"
		return
	fi
	local rps
	rps=$(awk -v n=$ok -v a="$s1" -v b="$s2" 'BEGIN{printf "%.1f", n/(b-a)}')
	row hs "$p" "$c" "$rep" "$rps" "" "" "$bad" "$ok" $((t2 - t1)) "$s1" "$s2" "$k1" "$k2"
}

# Warm-up: a second of keep-alive load on each server.
for p in "${!PORT[@]}"; do
	[[ "$p" == backend ]] && continue
	env OPENSSL_CONF="$CLIENT_CNF" timeout 15 taskset -c "$LG_CPU" wrk -t1 -c16 -d1s "$(url "$p")" >/dev/null 2>&1
done

present() { # NAME...: those that are running
	local p
	for p in "$@"; do [[ -n "${PORT[$p]:-}" ]] && printf '%s ' "$p"; done
}
read -ra HTTPS <<<"$(present nginx-https keel-https)"
read -ra TPROXY <<<"$(present haproxy-tls keel-proxy-tls)"
read -ra PPROXY <<<"$(present keel-proxy keel-proxy-health)"
log "TLS peers: ${HTTPS[*]} | ${TPROXY[*]} | ${PPROXY[*]}; conns: $CONFIGS (handshakes: $HS_CONNS); reps: $REPS; ${DUR}s per cell; suite $SUITE, group $GROUP"

# One test's peers in an order that rotates with the repetition.
rot() { # REP NAME...
	local rep=$1 i n
	shift
	n=$#
	local a=("$@")
	for ((i = 0; i < n; i++)); do printf '%s ' "${a[$(((i + rep - 1) % n))]}"; done
}
alive() { kill -0 "${PID[$1]}" 2>/dev/null; }
for rep in $(seq 1 "$REPS"); do
	for p in $(rot "$rep" "${HTTPS[@]}"); do
		if alive "$p"; then hs_cell "$p" "$HS_CONNS" "$rep"; else fail hs "$p" "$HS_CONNS" "$rep"; fi
	done
	for p in $(rot "$rep" "${HTTPS[@]}"); do
		if alive "$p"; then
			wrk_cell res "$p" "$HS_CONNS" "$rep" -H 'Connection: close'
		else fail res "$p" "$HS_CONNS" "$rep"; fi
	done
	for c in $CONFIGS; do
		for p in $(rot "$rep" "${HTTPS[@]}"); do
			if alive "$p"; then wrk_cell ka "$p" "$c" "$rep"; else fail ka "$p" "$c" "$rep"; fi
		done
		for p in $(rot "$rep" "${TPROXY[@]}"); do
			if alive "$p"; then wrk_cell tp "$p" "$c" "$rep"; else fail tp "$p" "$c" "$rep"; fi
		done
		for p in $(rot "$rep" "${PPROXY[@]}"); do
			if alive "$p"; then wrk_cell pp "$p" "$c" "$rep"; else fail pp "$p" "$c" "$rep"; fi
		done
	done
done
for p in "${!PID[@]}"; do stop_pid "${PID[$p]}"; done
log "raw data: $RAW"
