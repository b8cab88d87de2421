#!/bin/sh
# install_test.sh: `make install` into a staging DESTDIR, build a tiny
# program against the installed library through `pkg-config keel` (shared
# and static), run it, check the man pages installed and render; the same
# for libkeel-http (`pkg-config keel-http`, keel/http.h); then
# `make uninstall` and check nothing is left.
set -eu
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
prefix=/usr/local
# A plain (unsanitized) build of its own, whatever build ran the tests.
unset SANITIZE
export BUILD=build/install-test
make -s install DESTDIR="$stage" prefix=$prefix
export PKG_CONFIG_PATH="$stage$prefix/lib/pkgconfig"
export PKG_CONFIG_SYSROOT_DIR="$stage"
cat >"$stage/consumer.c" <<'C'
#include <keel.h>
#include <stdio.h>

struct hello {
	struct keel_task task;
	int ticks;
};

static int hello_step(struct keel_task *t)
{
	struct hello *h = keel_container_of(t, struct hello, task);

	KEEL_BEGIN(t);
	for (h->ticks = 0; h->ticks < 3; h->ticks++) {
		KEEL_AWAIT(t, keel_nop(t));
		if (keel_res(t) != 0)
			KEEL_EXIT(t, 1);
	}
	KEEL_END(t);
}

static KEEL_TASK_TYPE(hello_task, struct hello, task, hello_step);

int main(void)
{
	struct keel_loop *loop;
	int err = keel_loop_create(&loop, NULL);

	if (err) {
		fprintf(stderr, "%s\n", keel_loop_explain(err));
		return 1;
	}
	struct hello *h = keel_spawn(loop, &hello_task, KEEL_PRIO_NORMAL);
	if (!h || keel_loop_run(loop))
		return 1;
	printf("ticks=%d\n", h ? 3 : 0);
	keel_loop_destroy(loop);
	return 0;
}
C
cc -o "$stage/consumer" "$stage/consumer.c" $(pkg-config --cflags --libs keel)
LD_LIBRARY_PATH="$stage$prefix/lib" "$stage/consumer" | grep -q 'ticks=3'
# The .so must carry its soname and export no internal symbols.
readelf -d "$stage$prefix/lib/libkeel.so.0.1.0" | grep -q 'SONAME.*libkeel.so.0'
if nm -D --defined-only "$stage$prefix/lib/libkeel.so.0.1.0" | awk '{print $3}' |
	grep -v -E '^(keel_[a-z0-9]|KEEL_)' | grep -q .; then
	echo "libkeel.so exports symbols outside keel_* (or internal keel__*)" >&2
	exit 1
fi
# The man pages: the overview and every function page with its aliases
# under mandir, rendered by man from there (an alias is a .so request that
# man resolves against that tree).
man=$stage$prefix/share/man
[ -f "$man/man7/keel.7" ] || { echo "keel.7 not installed" >&2; exit 1; }
[ -f "$man/man3/keel_spawn.3" ] || { echo "keel_spawn.3 not installed" >&2; exit 1; }
grep -qx '.so man3/keel_join.3' "$man/man3/keel_task_detach.3" ||
	{ echo "alias keel_task_detach.3 missing or wrong" >&2; exit 1; }
MANWIDTH=80 man -l "$man/man7/keel.7" 2>/dev/null | grep -q 'io_uring-native' ||
	{ echo "man -l keel.7 does not render" >&2; exit 1; }
MANWIDTH=80 man -M "$man" 3 keel_task_detach 2>/dev/null | grep -q 'keel_join' ||
	{ echo "man 3 keel_task_detach does not render through its alias" >&2; exit 1; }
# Static: the archive itself plus what `pkg-config --static` says it needs.
cc -o "$stage/consumer-static" "$stage/consumer.c" $(pkg-config --cflags keel) \
	"$stage$prefix/lib/libkeel.a" $(pkg-config --libs-only-l --static keel | sed 's/-lkeel//')
"$stage/consumer-static" | grep -q 'ticks=3'
# libkeel-http: a program using keel/http.h, through `pkg-config
# keel-http` (which brings keel), shared and static.
cat >"$stage/http_consumer.c" <<'C'
#include <keel.h>
#include <keel/http.h>
#include <stdio.h>

int main(void)
{
	struct keel_http_opts o = {.port = 0};
	struct keel_http_server *srv;

	if (keel_http_server_new(&o, &srv))
		return 1;
	if (keel_http_route_text(srv, "GET", "/hello", KEEL_HTTP_EXACT, 200,
				 "text/plain", "hello", 5) ||
	    keel_http_route_metrics(srv, "/metrics") ||
	    keel_http_route_health(srv, "/health"))
		return 1;
	printf("reason=%s\n", keel_http_reason(404));
	keel_http_server_free(srv);
	return 0;
}
C
cc -o "$stage/http_consumer" "$stage/http_consumer.c" $(pkg-config --cflags --libs keel-http)
LD_LIBRARY_PATH="$stage$prefix/lib" "$stage/http_consumer" | grep -qx 'reason=Not Found'
readelf -d "$stage$prefix/lib/libkeel-http.so.0.1.0" | grep -q 'SONAME.*libkeel-http.so.0'
if nm -D --defined-only "$stage$prefix/lib/libkeel-http.so.0.1.0" | awk '{print $3}' |
	grep -v -E '^keel_http_[a-z0-9]' | grep -q .; then
	echo "libkeel-http.so exports symbols outside keel_http_*" >&2
	exit 1
fi
cc -o "$stage/http_consumer-static" "$stage/http_consumer.c" \
	$(pkg-config --cflags keel-http) "$stage$prefix/lib/libkeel-http.a" \
	"$stage$prefix/lib/libkeel-tls.a" "$stage$prefix/lib/libkeel.a" \
	$(pkg-config --libs-only-l --static keel-http |
		sed 's/-lkeel-http//; s/-lkeel-tls//; s/-lkeel\( \|$\)/ /')
"$stage/http_consumer-static" | grep -qx 'reason=Not Found'
[ -f "$man/man7/keel_http.7" ] || { echo "keel_http.7 not installed" >&2; exit 1; }
MANWIDTH=80 man -M "$man" 3 keel_http_server_start 2>/dev/null | grep -q 'keel_http_server_new' ||
	{ echo "man 3 keel_http_server_start does not render through its alias" >&2; exit 1; }
make -s uninstall DESTDIR="$stage" prefix=$prefix
left=$(find "$stage$prefix" -type f | wc -l)
[ "$left" = 0 ] || { echo "uninstall left $left files" >&2; find "$stage$prefix" -type f >&2; exit 1; }
echo "install test passed"
