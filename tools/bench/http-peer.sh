#!/bin/sh
# SPDX-License-Identifier: MIT
# http-peer.sh nginx|h2o ROOT PORT: serve the files under ROOT on
# 127.0.0.1:PORT with nginx (one worker) or h2o (one thread), configured
# as the peer harness's own nginx and h2o peers are (nginx-static.conf.in,
# h2o-static.conf.in beside this script). tools/bench.sh hands it to
# run-http.sh as an EXTRA_HTTP command, for the files the harness's peers
# do not serve (a 4 KiB file). The server replaces this shell (exec), so
# the harness's PID, CPU accounting and stop are the server's own.
set -eu
kind=$1 root=$2 port=$3
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$root" && pwd)
dir=$root.$kind.$port
mkdir -p "$dir"
sed -e "s|@DIR@|$dir|g" -e "s|@ROOT@|$root|g" -e "s|@PORT@|$port|g" \
	"$here/$kind-static.conf.in" >"$dir/$kind.conf"
case $kind in
nginx) exec nginx -e "$dir/error.log" -p "$dir/" -c "$dir/nginx.conf" ;;
h2o) exec h2o -c "$dir/h2o.conf" ;;
*)
	echo "http-peer.sh: unknown server '$kind' (nginx or h2o)" >&2
	exit 2
	;;
esac
