# SPDX-License-Identifier: MIT
# keel: hand-written GNU Makefile. Quiet unless V=1.
#
#   make                 libkeel.a, libkeel.so.0.1.0, examples, tools
#   make test            install missing packages, build, run every test
#   make check-layers    no lower layer calls a higher one (also in check)
#   make demo            install missing packages, run the echo demo
#   make demo-supervised the supervision-tree demo (a KV server that crashes)
#   make demo-cluster    that server across processes over NATS, one of
#                        them killed and restarted under load
#   make bench           keel's micro-benchmarks (+ the peer harness if found)
#   make man             the man pages (scdoc) into $(BUILD)/man
#   make install/uninstall   honour DESTDIR, prefix, libdir, includedir, mandir
#                        (libkeel, libkeel-http, libkeel-tls, headers, .pc,
#                        man pages)
#   SANITIZE=address,undefined make test    (or SANITIZE=thread)
#   make format          clang-format the tree
#   make sim             the simulation scenarios over SIM_SEEDS seeds each
#                        (from SIM_FROM), then SIM_FAULT_SEEDS under faults;
#                        make sim-ci: fewer, under ASan+UBSan
#   make fuzz            each libFuzzer target of fuzz/ for FUZZ_TIME s (60)
#   make fuzz-ci         the same, 20 s each (CI)
#
# Sanitizer builds go to their own build directory and use libc malloc for
# frames (KEEL_ALLOC_LIBC) so that the sanitizer sees every frame's lifetime.

VERSION := 0.1.0
SOVERSION := 0
prefix ?= /usr/local
libdir ?= $(prefix)/lib
includedir ?= $(prefix)/include
mandir ?= $(prefix)/share/man
DESTDIR ?=
PEERS ?= $(wildcard ../shared/bench/peers)

CC ?= cc
ifeq ($(origin CC),default)
CC := gcc
endif

ifeq ($(V),1)
Q :=
else
Q := @
endif
MAKEFLAGS += --no-print-directory

SANITIZE ?=
ifeq ($(SANITIZE),)
BUILD ?= build
else
BUILD ?= build/san-$(subst $(comma),-,$(SANITIZE))
endif
comma := ,

WARN := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
	-Wpointer-arith -Wformat=2 -Wundef -Wwrite-strings -Wvla \
	-Wno-unused-parameter
OPT ?= -O2
CPPFLAGS += -D_GNU_SOURCE -Iinclude
# Layers: core <- io <- sched <- supervise <- sim <- tools, examples. Everything
# sees the public headers (include/); each layer's folder is compiled with
# only its own and lower layers' private paths, so an upward #include does
# not compile; `make check-layers` does the same for calls
# (tools/check-layers.sh). Examples and tools use the public API only; the
# tests also use internal headers (loop.h: struct keel_loop).
LAYERS := core io sched supervise sim
INC_core := -Icore
INC_io := $(INC_core) -Iio
INC_sched := $(INC_io) -Isched
INC_supervise := $(INC_sched) -Isupervise
# The simulated kernel (keel/sim.h) sits on top: it creates loops.
INC_sim := $(INC_supervise) -Isim
INC_test := $(INC_sim) -Itest
CFLAGS ?= $(OPT) -g
CFLAGS += -std=gnu11 -pthread -fPIC $(WARN) $(EXTRA_CFLAGS)
LIBS := -luring -ljemalloc -lpthread
LDFLAGS ?=

ifneq ($(SANITIZE),)
CFLAGS += -fsanitize=$(SANITIZE) -fno-omit-frame-pointer
CPPFLAGS += -DKEEL_ALLOC_LIBC
LDFLAGS += -fsanitize=$(SANITIZE)
SO_DEFS :=
else
SO_DEFS := -Wl,-z,defs
endif

LIB_SRC := $(foreach l,$(LAYERS),$(wildcard $(l)/*.c))
LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/obj/%.o)
# libkeel-http (http/, keel/http.h): its own library on keel's public API
# (http/ sees only the public headers and its own) and Debian's
# http-parser, so that libkeel itself needs only liburing and jemalloc.
HTTP_SRC := $(wildcard http/*.c)
HTTP_OBJ := $(HTTP_SRC:%.c=$(BUILD)/obj/%.o)
INC_http := -Ihttp
HTTP_LIBS := -lhttp_parser
HTTP_STATIC := $(BUILD)/libkeel-http.a
HTTP_SHARED := $(BUILD)/libkeel-http.so.$(VERSION)
# libkeel-tls (tls/, keel/tls.h): TLS on OpenSSL 3, the same way: keel's
# public API only (tls/ sees the public headers and its own), so that
# neither libkeel nor libkeel-http needs libssl.
TLS_SRC := $(wildcard tls/*.c)
TLS_OBJ := $(TLS_SRC:%.c=$(BUILD)/obj/%.o)
INC_tls := -Itls
TLS_LIBS := -lssl -lcrypto
TLS_STATIC := $(BUILD)/libkeel-tls.a
TLS_SHARED := $(BUILD)/libkeel-tls.so.$(VERSION)
# libkeel-nats (nats/, keel/node.h): remote actors over NATS, the same way:
# keel's public API only, and Debian's cnats (libnats-dev), which no other
# library links.
NATS_SRC := $(wildcard nats/*.c)
NATS_OBJ := $(NATS_SRC:%.c=$(BUILD)/obj/%.o)
INC_nats := -Inats
NATS_LIBS := -lnats
NATS_STATIC := $(BUILD)/libkeel-nats.a
NATS_SHARED := $(BUILD)/libkeel-nats.so.$(VERSION)
EXAMPLES := $(patsubst examples/%.c,$(BUILD)/examples/%,$(wildcard examples/*.c))
# An example of several files is a folder: examples/NAME/*.c -> NAME.
EXAMPLE_DIRS := $(patsubst examples/%/,%,$(sort $(dir $(wildcard examples/*/*.c))))
EXAMPLES += $(EXAMPLE_DIRS:%=$(BUILD)/examples/%)
TOOLS := $(patsubst tools/%.c,$(BUILD)/tools/%,$(wildcard tools/*.c))
# keel-trace is several files (tools/trace/); its HTML page is built in.
TRACE_OBJ := $(patsubst %.c,$(BUILD)/obj/%.o,$(wildcard tools/trace/*.c)) \
	$(BUILD)/obj/tools/trace/report.o
TOOLS += $(BUILD)/tools/keel-trace
# keel-sim, the simulation runner: the scenarios (sim/scenarios/, public
# API only) and the parts of keel-trace that read and decode a trace.
SIM_OBJ := $(patsubst %.c,$(BUILD)/obj/%.o,$(wildcard sim/scenarios/*.c))
TRACE_READER_OBJ := $(patsubst %,$(BUILD)/obj/tools/trace/%.o,read decode util)
TOOLS += $(BUILD)/tools/keel-sim
# keel-seccomp (tools/seccomp/): runs a command under keel's seccomp
# profile. keel.syscalls is the one list; gen.sh makes the committed
# Docker/OCI and systemd profiles and the launcher's tables from it
# (`make seccomp` remakes the profiles; a test checks they are current).
SECCOMP_LIST := tools/seccomp/keel.syscalls
SECCOMP_PROFILES := tools/seccomp/keel.json tools/seccomp/keel-seccomp.conf
SECCOMP_GEN := $(BUILD)/gen/seccomp_keel.h $(BUILD)/gen/seccomp_table.h
TOOLS += $(BUILD)/tools/keel-seccomp
TEST_SRC := $(wildcard test/test_*.c)
TESTS := $(TEST_SRC:test/%.c=$(BUILD)/test/%)
# Plain multi-thread test programs (no Criterion: it cannot start under
# ThreadSanitizer, Criterion issue #274); they print "N passed, N failed".
MT_TESTS := $(patsubst test/%.c,$(BUILD)/test/%,$(wildcard test/mt_*.c))
# Helpers under test/helpers: keel_test.c asserts through Criterion; the
# others (checks from any thread, scenarios) do not, so mt_* link them too.
TEST_HELPERS := $(wildcard test/helpers/*.c)
PLAIN_HELPERS := $(filter-out test/helpers/keel_test.c,$(TEST_HELPERS))
TEST_HELPER_HEADERS := $(wildcard test/helpers/*.h)
STATIC := $(BUILD)/libkeel.a
SHARED := $(BUILD)/libkeel.so.$(VERSION)
HEADERS := include/keel.h $(wildcard include/keel/*.h)

# Man pages: man/<name>.<section>.scd -> $(BUILD)/man/man<section>/<name>.<s>.
# Every other name on a page's NAME line ("a, b, c - what") gets an alias
# page ".so man<s>/<name>.<s>", as liburing ships them. man_names lists a
# source's names; MAN_FILES is every page and alias, relative to mandir.
MAN_SRC := $(wildcard man/*.scd)
man_sect = $(subst .,,$(suffix $(basename $(1))))
MAN_PAGES := $(foreach s,$(MAN_SRC),\
	$(BUILD)/man/man$(call man_sect,$(s))/$(basename $(notdir $(s))))
man_names = $(shell awk '/^\# NAME/ { f = 1; next } \
	f && NF { sub(/ - .*/, ""); gsub(/,/, " "); print; exit }' $(1))
MAN_FILES := $(foreach s,$(MAN_SRC),$(foreach n,$(call man_names,$(s)),\
	man$(call man_sect,$(s))/$(n).$(call man_sect,$(s))))

.SECONDEXPANSION:

.PHONY: all lib examples tools tests man check check-layers test demo demo-supervised \
	demo-cluster \
	bench deps install uninstall clean format format-check fuzz fuzz-ci \
	fuzz-targets sim sim-ci

all: lib examples tools man

lib: $(STATIC) $(SHARED) $(HTTP_STATIC) $(HTTP_SHARED) $(TLS_STATIC) \
	$(TLS_SHARED)
lib: $(NATS_STATIC) $(NATS_SHARED)
examples: $(EXAMPLES)
tools: $(TOOLS)
tests: $(TESTS) $(MT_TESTS)
man: $(MAN_PAGES)

# A library object gets the include paths of its folder's layer.
$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CC      $<")
	$(Q)$(CC) $(CPPFLAGS) $(INC_$(firstword $(subst /, ,$*))) $(CFLAGS) \
		-MMD -MP -c -o $@ $<

$(STATIC): $(LIB_OBJ)
	@$(if $(Q),echo "  AR      $@")
	$(Q)rm -f $@ && ar rcs $@ $^

$(SHARED): $(LIB_OBJ) keel.map
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(CFLAGS) -shared -Wl,-soname,libkeel.so.$(SOVERSION) \
		-Wl,--version-script=keel.map $(SO_DEFS) $(LDFLAGS) \
		-o $@ $(LIB_OBJ) $(LIBS)
	$(Q)ln -sf libkeel.so.$(VERSION) $(BUILD)/libkeel.so.$(SOVERSION)
	$(Q)ln -sf libkeel.so.$(SOVERSION) $(BUILD)/libkeel.so

$(HTTP_STATIC): $(HTTP_OBJ)
	@$(if $(Q),echo "  AR      $@")
	$(Q)rm -f $@ && ar rcs $@ $^

# libkeel-http serves HTTPS through libkeel-tls (keel_http_opts.tls).
$(HTTP_SHARED): $(HTTP_OBJ) keel-http.map $(SHARED) $(TLS_SHARED)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(CFLAGS) -shared -Wl,-soname,libkeel-http.so.$(SOVERSION) \
		-Wl,--version-script=keel-http.map $(SO_DEFS) $(LDFLAGS) \
		-o $@ $(HTTP_OBJ) -L$(BUILD) -lkeel-tls -lkeel $(HTTP_LIBS) \
		$(LIBS)
	$(Q)ln -sf libkeel-http.so.$(VERSION) \
		$(BUILD)/libkeel-http.so.$(SOVERSION)
	$(Q)ln -sf libkeel-http.so.$(SOVERSION) $(BUILD)/libkeel-http.so

$(TLS_STATIC): $(TLS_OBJ)
	@$(if $(Q),echo "  AR      $@")
	$(Q)rm -f $@ && ar rcs $@ $^

$(TLS_SHARED): $(TLS_OBJ) keel-tls.map $(SHARED)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(CFLAGS) -shared -Wl,-soname,libkeel-tls.so.$(SOVERSION) \
		-Wl,--version-script=keel-tls.map $(SO_DEFS) $(LDFLAGS) \
		-o $@ $(TLS_OBJ) -L$(BUILD) -lkeel $(TLS_LIBS) $(LIBS)
	$(Q)ln -sf libkeel-tls.so.$(VERSION) \
		$(BUILD)/libkeel-tls.so.$(SOVERSION)
	$(Q)ln -sf libkeel-tls.so.$(SOVERSION) $(BUILD)/libkeel-tls.so

# The page, then an alias page for each other name on its NAME line.
define MAN_RECIPE
@mkdir -p $(@D)
@$(if $(Q),echo "  SCDOC   $<")
$(Q)scdoc <$< >$@.tmp
$(Q)for n in $(filter-out $*,$(call man_names,$<)); do \
	echo ".so $(notdir $(@D))/$(notdir $@)" >$(@D)/$$n$(suffix $@); \
done
$(Q)mv $@.tmp $@
endef

$(BUILD)/man/man3/%.3: man/%.3.scd
	$(MAN_RECIPE)

$(BUILD)/man/man7/%.7: man/%.7.scd
	$(MAN_RECIPE)

$(BUILD)/examples/%: examples/%.c $(HTTP_STATIC) $(TLS_STATIC) $(STATIC)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CCLD    $@")
	$(Q)$(CC) $(CPPFLAGS) $(CFLAGS) $(LDFLAGS) -o $@ $< $(HTTP_STATIC) \
		$(TLS_STATIC) $(STATIC) $(HTTP_LIBS) $(TLS_LIBS) $(LIBS) -lm

$(BUILD)/examples/%: examples/%/main.c $$(wildcard examples/%/*.c) \
		$$(wildcard examples/%/*.h) $(HTTP_STATIC) $(TLS_STATIC) $(STATIC)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CCLD    $@")
	$(Q)$(CC) $(CPPFLAGS) $(CFLAGS) $(LDFLAGS) -o $@ \
		$(filter %.c,$^) $(HTTP_STATIC) $(TLS_STATIC) $(STATIC) \
		$(HTTP_LIBS) $(TLS_LIBS) $(LIBS) -lm

# examples/supervised also runs across processes over NATS (--nats): it
# links libkeel-nats, and so cnats.
$(BUILD)/examples/supervised: examples/supervised.c $(NATS_STATIC) $(STATIC)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CCLD    $@")
	$(Q)$(CC) $(CPPFLAGS) $(CFLAGS) $(LDFLAGS) -o $@ $< $(NATS_STATIC) \
		$(STATIC) $(NATS_LIBS) $(LIBS) -lm

$(BUILD)/tools/%: tools/%.c $(STATIC)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CCLD    $@")
	$(Q)$(CC) $(CPPFLAGS) $(CFLAGS) $(LDFLAGS) -o $@ $< $(STATIC) $(LIBS) -lm

# keel-natsbench (issue 18's benchmark) links libkeel-nats, and so cnats,
# for its keel side and cnats alone for the floor.
$(BUILD)/tools/keel-natsbench: tools/keel-natsbench.c $(NATS_STATIC) $(STATIC)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CCLD    $@")
	$(Q)$(CC) $(CPPFLAGS) $(CFLAGS) $(LDFLAGS) -o $@ $< $(NATS_STATIC) \
		$(STATIC) $(NATS_LIBS) $(LIBS) -lm

$(BUILD)/obj/tools/trace/%.o: tools/trace/%.c
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CC      $<")
	$(Q)$(CC) $(CPPFLAGS) $(CFLAGS) -MMD -MP -c -o $@ $<

# .incbin finds the page through -I; the object depends on it by name.
$(BUILD)/obj/tools/trace/report.o: tools/trace/report.S tools/trace/report.html
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  AS      $<")
	$(Q)$(CC) $(CFLAGS) -Wa,-Itools/trace -c -o $@ $<

$(BUILD)/tools/keel-trace: $(TRACE_OBJ) $(STATIC)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CCLD    $@")
	$(Q)$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $(TRACE_OBJ) $(STATIC) $(LIBS) -lm

.PHONY: seccomp
seccomp: $(SECCOMP_PROFILES)

tools/seccomp/keel.json: $(SECCOMP_LIST) tools/seccomp/gen.sh
	@$(if $(Q),echo "  GEN     $@")
	$(Q)sh tools/seccomp/gen.sh json $< >$@.tmp && mv $@.tmp $@

tools/seccomp/keel-seccomp.conf: $(SECCOMP_LIST) tools/seccomp/gen.sh
	@$(if $(Q),echo "  GEN     $@")
	$(Q)sh tools/seccomp/gen.sh systemd $< >$@.tmp && mv $@.tmp $@

$(BUILD)/gen/seccomp_keel.h: $(SECCOMP_LIST) tools/seccomp/gen.sh
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  GEN     $@")
	$(Q)sh tools/seccomp/gen.sh header $< >$@.tmp && mv $@.tmp $@

$(BUILD)/gen/seccomp_table.h: tools/seccomp/gen.sh
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  GEN     $@")
	$(Q)sh tools/seccomp/gen.sh table "$(CC)" >$@.tmp && mv $@.tmp $@

# No keel in it: a filter and an execvp.
$(BUILD)/tools/keel-seccomp: tools/seccomp/launcher.c $(SECCOMP_GEN) \
		$(SECCOMP_PROFILES)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CCLD    $@")
	$(Q)$(CC) $(CPPFLAGS) -I$(BUILD)/gen $(CFLAGS) $(LDFLAGS) -o $@ $<

$(BUILD)/obj/sim/scenarios/%.o: sim/scenarios/%.c
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CC      $<")
	$(Q)$(CC) $(CPPFLAGS) -Itools/trace $(CFLAGS) -MMD -MP -c -o $@ $<

$(BUILD)/tools/keel-sim: $(SIM_OBJ) $(TRACE_READER_OBJ) $(STATIC)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CCLD    $@")
	$(Q)$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $(SIM_OBJ) $(TRACE_READER_OBJ) \
		$(STATIC) $(LIBS) -lm

$(NATS_STATIC): $(NATS_OBJ)
	@$(if $(Q),echo "  AR      $@")
	$(Q)rm -f $@ && ar rcs $@ $^

$(NATS_SHARED): $(NATS_OBJ) keel-nats.map $(SHARED)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(CFLAGS) -shared -Wl,-soname,libkeel-nats.so.$(SOVERSION) \
		-Wl,--version-script=keel-nats.map $(SO_DEFS) $(LDFLAGS) \
		-o $@ $(NATS_OBJ) -L$(BUILD) -lkeel $(NATS_LIBS) $(LIBS)
	$(Q)ln -sf libkeel-nats.so.$(VERSION) \
		$(BUILD)/libkeel-nats.so.$(SOVERSION)
	$(Q)ln -sf libkeel-nats.so.$(SOVERSION) $(BUILD)/libkeel-nats.so

# test_nats and mt_nats link libkeel-nats (and so cnats); no other test
# does.
$(BUILD)/test/test_nats: test/test_nats.c $(TEST_HELPERS) \
		$(TEST_HELPER_HEADERS) $(NATS_STATIC) $(STATIC)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CCLD    $@")
	$(Q)$(CC) $(CPPFLAGS) $(INC_test) $(CFLAGS) $(LDFLAGS) -o $@ $< \
		$(TEST_HELPERS) $(NATS_STATIC) $(STATIC) -lcriterion \
		$(NATS_LIBS) $(LIBS) -lm

$(BUILD)/test/mt_nats: test/mt_nats.c $(PLAIN_HELPERS) \
		$(TEST_HELPER_HEADERS) $(NATS_STATIC) $(STATIC)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CCLD    $@")
	$(Q)$(CC) $(CPPFLAGS) $(INC_test) $(CFLAGS) $(LDFLAGS) -o $@ $< \
		$(PLAIN_HELPERS) $(NATS_STATIC) $(STATIC) $(NATS_LIBS) $(LIBS)

$(BUILD)/test/%: test/%.c $(TEST_HELPERS) $(TEST_HELPER_HEADERS) \
		$(HTTP_STATIC) $(TLS_STATIC) $(STATIC)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CCLD    $@")
	$(Q)$(CC) $(CPPFLAGS) $(INC_test) $(INC_http) $(INC_tls) $(CFLAGS) \
		$(LDFLAGS) -o $@ $< $(TEST_HELPERS) $(HTTP_STATIC) \
		$(TLS_STATIC) $(STATIC) -lcriterion $(HTTP_LIBS) $(TLS_LIBS) \
		$(LIBS) -lm

$(BUILD)/test/mt_%: test/mt_%.c $(PLAIN_HELPERS) $(TEST_HELPER_HEADERS) \
		$(HTTP_STATIC) $(TLS_STATIC) $(STATIC)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CCLD    $@")
	$(Q)$(CC) $(CPPFLAGS) $(INC_test) $(INC_http) $(INC_tls) $(CFLAGS) \
		$(LDFLAGS) -o $@ $< $(PLAIN_HELPERS) $(HTTP_STATIC) \
		$(TLS_STATIC) $(STATIC) $(HTTP_LIBS) $(TLS_LIBS) $(LIBS)

# test_resolve and mt_resolve stand in for a name server: getaddrinfo and
# freeaddrinfo are wrapped (a name that hangs, the resolver's errors).
RESOLVE_WRAP := -Wl,--wrap=getaddrinfo -Wl,--wrap=freeaddrinfo
$(BUILD)/test/test_resolve $(BUILD)/test/mt_resolve: private LDFLAGS += \
	$(RESOLVE_WRAP)

# No object of a lower layer may reference a symbol defined in a higher
# one (the layers are in LAYERS, lowest first).
# libkeel-http and libkeel-tls see only the public headers (their include
# paths); at link level, neither may reference one of libkeel's internal
# keel__* symbols.
check-layers: $(LIB_OBJ) $(HTTP_OBJ) $(TLS_OBJ) $(NATS_OBJ)
	$(Q)LAYERS="$(LAYERS)" sh tools/check-layers.sh $(LIB_OBJ)
	$(Q)nm -g --defined-only $(LIB_OBJ) | awk '$$3 ~ /^keel__/ { print $$3 }' | \
		sort -u >$(BUILD)/keel-internal.syms
	$(Q)for o in $(HTTP_OBJ) $(TLS_OBJ) $(NATS_OBJ); do \
		nm -u $$o | awk '{ print $$2 }' | sort -u | \
		comm -12 - $(BUILD)/keel-internal.syms | \
		sed "s|^|check-layers: $$o uses libkeel's internal |"; \
	done | awk '{ print } END { exit NR > 0 }'

# Check the layers, run every test binary (Criterion; each test under a
# timeout), then the install/pkg-config test. Fails if any fails.
check: all tests check-layers
	$(Q)BUILD=$(BUILD) CC="$(CC)" SANITIZE="$(SANITIZE)" \
		TEST_CFLAGS="$(CFLAGS)" TEST_LDFLAGS="$(LDFLAGS)" \
		sh test/run.sh $(if $(findstring thread,$(SANITIZE)),,$(TESTS)) \
		$(MT_TESTS)

test:
	$(Q)$(MAKE) deps
	$(Q)$(MAKE) check

demo:
	$(Q)$(MAKE) deps
	$(Q)$(MAKE) all
	$(Q)BUILD=$(BUILD) sh tools/demo.sh

demo-supervised:
	$(Q)$(MAKE) deps
	$(Q)$(MAKE) all
	$(Q)BUILD=$(BUILD) sh tools/demo-supervised.sh

demo-cluster:
	$(Q)$(MAKE) deps
	$(Q)$(MAKE) all
	$(Q)BUILD=$(BUILD) sh tools/demo-cluster.sh

bench:
	$(Q)sh tools/deps.sh bench
	$(Q)$(MAKE) all
	$(Q)BUILD=$(BUILD) PEERS="$(PEERS)" sh tools/bench.sh

deps:
	$(Q)sh tools/deps.sh

# The simulation runner over every scenario: SIM_SEEDS seeds each from
# SIM_FROM, every 10th seed twice (the determinism check); then a faults
# pass, SIM_FAULT_SEEDS seeds each under injected faults (--fault-mix: a
# spec per seed, resets, short transfers, EMFILE and ECONNREFUSED,
# ENOBUFS, ECANCELED, EIO, delay and reorder). sim-ci runs fewer under
# ASan+UBSan (LeakSanitizer also finds a token never freed).
SIM_SEEDS ?= 1000
SIM_FAULT_SEEDS ?= 500
SIM_FROM ?= 1
SIM_CI_SEEDS ?= 150
SIM_CI_FAULT_SEEDS ?= 100

sim: $(BUILD)/tools/keel-sim
	$(Q)$(BUILD)/tools/keel-sim --from $(SIM_FROM) --seeds $(SIM_SEEDS) \
		--recheck 10
	$(Q)$(BUILD)/tools/keel-sim --from $(SIM_FROM) \
		--seeds $(SIM_FAULT_SEEDS) --recheck 10 --fault-mix

sim-ci:
	$(Q)$(MAKE) SANITIZE=address,undefined sim SIM_SEEDS=$(SIM_CI_SEEDS) \
		SIM_FAULT_SEEDS=$(SIM_CI_FAULT_SEEDS)
# Fuzzing (fuzz/, libFuzzer): clang builds the library and keel-trace's
# parts with coverage and ASan + UBSan, which abort on the first report, in
# their own directory; tools/fuzz.sh runs each target on a copy of its
# corpus (fuzz/corpus/<target>/) for FUZZ_TIME seconds. keel-trace's reader
# target links every part of it but main.c (it has its own die()).
FUZZ_BUILD := build/fuzz
FUZZ_SANITIZE := fuzzer-no-link,address,undefined
FUZZ_TIME ?= 60
FUZZ_TARGETS := $(patsubst fuzz/%.c,%,$(wildcard fuzz/fuzz_*.c))

fuzz:
	$(Q)sh tools/deps.sh fuzz
	$(Q)$(MAKE) CC=clang BUILD=$(FUZZ_BUILD) SANITIZE=$(FUZZ_SANITIZE) \
		EXTRA_CFLAGS=-fno-sanitize-recover=all fuzz-targets
	$(Q)BUILD=$(FUZZ_BUILD) FUZZ_TIME=$(FUZZ_TIME) sh tools/fuzz.sh \
		$(FUZZ_TARGETS)

fuzz-ci:
	$(Q)$(MAKE) fuzz FUZZ_TIME=20

fuzz-targets: $(FUZZ_TARGETS:%=$(BUILD)/fuzz/%)
	@:

$(BUILD)/fuzz/fuzz_trace_reader: fuzz/fuzz_trace_reader.c \
		$(filter-out %/main.o,$(TRACE_OBJ)) $(STATIC)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CCLD    $@")
	$(Q)$(CC) $(CPPFLAGS) -Itools/trace $(CFLAGS) -fsanitize=fuzzer \
		$(LDFLAGS) -o $@ $< $(filter-out %/main.o,$(TRACE_OBJ)) \
		$(STATIC) $(LIBS) -lm

# fuzz_http serves on the simulated kernel: its listening socket is the
# machine's (keel_sim_listen), handed to the server by a wrapper of
# keel_tcp_listen, which makes a real socket.
$(BUILD)/fuzz/fuzz_http: FUZZ_LDFLAGS := -Wl,--wrap=keel_tcp_listen

# fuzz_tls links libkeel-tls and OpenSSL (and reads the engine's SSL
# through tls/internal.h, as test_tls does).
$(BUILD)/fuzz/fuzz_tls: fuzz/fuzz_tls.c $(wildcard fuzz/*.h) $(TLS_STATIC) \
		$(STATIC)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CCLD    $@")
	$(Q)$(CC) $(CPPFLAGS) $(CFLAGS) -fsanitize=fuzzer $(LDFLAGS) -o $@ $< \
		$(TLS_STATIC) $(STATIC) $(TLS_LIBS) $(LIBS) -lm

$(BUILD)/fuzz/fuzz_%: fuzz/fuzz_%.c $(wildcard fuzz/*.h) $(HTTP_STATIC) \
		$(TLS_STATIC) $(STATIC)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CCLD    $@")
	$(Q)$(CC) $(CPPFLAGS) $(INC_http) $(CFLAGS) -fsanitize=fuzzer \
		$(LDFLAGS) $(FUZZ_LDFLAGS) -o $@ $< $(HTTP_STATIC) \
		$(TLS_STATIC) $(STATIC) $(HTTP_LIBS) $(TLS_LIBS) $(LIBS) -lm

install: lib man
	$(Q)install -d $(DESTDIR)$(includedir)/keel $(DESTDIR)$(libdir)/pkgconfig \
		$(DESTDIR)$(mandir)/man3 $(DESTDIR)$(mandir)/man7
	$(Q)for f in $(MAN_FILES); do \
		install -m 644 $(BUILD)/man/$$f $(DESTDIR)$(mandir)/$$f || exit 1; \
	done
	$(Q)install -m 644 include/keel.h $(DESTDIR)$(includedir)/keel.h
	$(Q)install -m 644 $(wildcard include/keel/*.h) $(DESTDIR)$(includedir)/keel/
	$(Q)install -m 644 $(STATIC) $(DESTDIR)$(libdir)/libkeel.a
	$(Q)install -m 755 $(SHARED) $(DESTDIR)$(libdir)/libkeel.so.$(VERSION)
	$(Q)ln -sf libkeel.so.$(VERSION) $(DESTDIR)$(libdir)/libkeel.so.$(SOVERSION)
	$(Q)ln -sf libkeel.so.$(SOVERSION) $(DESTDIR)$(libdir)/libkeel.so
	$(Q)sed -e 's|@prefix@|$(prefix)|' -e 's|@libdir@|$(libdir)|' \
		-e 's|@includedir@|$(includedir)|' -e 's|@VERSION@|$(VERSION)|' \
		keel.pc.in > $(DESTDIR)$(libdir)/pkgconfig/keel.pc
	$(Q)install -m 644 $(HTTP_STATIC) $(DESTDIR)$(libdir)/libkeel-http.a
	$(Q)install -m 755 $(HTTP_SHARED) \
		$(DESTDIR)$(libdir)/libkeel-http.so.$(VERSION)
	$(Q)ln -sf libkeel-http.so.$(VERSION) \
		$(DESTDIR)$(libdir)/libkeel-http.so.$(SOVERSION)
	$(Q)ln -sf libkeel-http.so.$(SOVERSION) $(DESTDIR)$(libdir)/libkeel-http.so
	$(Q)sed -e 's|@prefix@|$(prefix)|' -e 's|@libdir@|$(libdir)|' \
		-e 's|@includedir@|$(includedir)|' -e 's|@VERSION@|$(VERSION)|' \
		keel-http.pc.in > $(DESTDIR)$(libdir)/pkgconfig/keel-http.pc
	$(Q)install -m 644 $(TLS_STATIC) $(DESTDIR)$(libdir)/libkeel-tls.a
	$(Q)install -m 755 $(TLS_SHARED) \
		$(DESTDIR)$(libdir)/libkeel-tls.so.$(VERSION)
	$(Q)ln -sf libkeel-tls.so.$(VERSION) \
		$(DESTDIR)$(libdir)/libkeel-tls.so.$(SOVERSION)
	$(Q)ln -sf libkeel-tls.so.$(SOVERSION) $(DESTDIR)$(libdir)/libkeel-tls.so
	$(Q)sed -e 's|@prefix@|$(prefix)|' -e 's|@libdir@|$(libdir)|' \
		-e 's|@includedir@|$(includedir)|' -e 's|@VERSION@|$(VERSION)|' \
		keel-tls.pc.in > $(DESTDIR)$(libdir)/pkgconfig/keel-tls.pc
	$(Q)install -m 644 $(NATS_STATIC) $(DESTDIR)$(libdir)/libkeel-nats.a
	$(Q)install -m 755 $(NATS_SHARED) \
		$(DESTDIR)$(libdir)/libkeel-nats.so.$(VERSION)
	$(Q)ln -sf libkeel-nats.so.$(VERSION) \
		$(DESTDIR)$(libdir)/libkeel-nats.so.$(SOVERSION)
	$(Q)ln -sf libkeel-nats.so.$(SOVERSION) $(DESTDIR)$(libdir)/libkeel-nats.so
	$(Q)sed -e 's|@prefix@|$(prefix)|' -e 's|@libdir@|$(libdir)|' \
		-e 's|@includedir@|$(includedir)|' -e 's|@VERSION@|$(VERSION)|' \
		keel-nats.pc.in > $(DESTDIR)$(libdir)/pkgconfig/keel-nats.pc

uninstall:
	$(Q)rm -f $(DESTDIR)$(includedir)/keel.h \
		$(addprefix $(DESTDIR)$(includedir)/keel/,$(notdir $(wildcard include/keel/*.h))) \
		$(DESTDIR)$(libdir)/libkeel.a $(DESTDIR)$(libdir)/libkeel.so \
		$(DESTDIR)$(libdir)/libkeel.so.$(SOVERSION) \
		$(DESTDIR)$(libdir)/libkeel.so.$(VERSION) \
		$(DESTDIR)$(libdir)/pkgconfig/keel.pc \
		$(DESTDIR)$(libdir)/libkeel-http.a \
		$(DESTDIR)$(libdir)/libkeel-http.so \
		$(DESTDIR)$(libdir)/libkeel-http.so.$(SOVERSION) \
		$(DESTDIR)$(libdir)/libkeel-http.so.$(VERSION) \
		$(DESTDIR)$(libdir)/pkgconfig/keel-http.pc \
		$(DESTDIR)$(libdir)/libkeel-tls.a \
		$(DESTDIR)$(libdir)/libkeel-tls.so \
		$(DESTDIR)$(libdir)/libkeel-tls.so.$(SOVERSION) \
		$(DESTDIR)$(libdir)/libkeel-tls.so.$(VERSION) \
		$(DESTDIR)$(libdir)/pkgconfig/keel-tls.pc \
		$(DESTDIR)$(libdir)/libkeel-nats.a \
		$(DESTDIR)$(libdir)/libkeel-nats.so \
		$(DESTDIR)$(libdir)/libkeel-nats.so.$(SOVERSION) \
		$(DESTDIR)$(libdir)/libkeel-nats.so.$(VERSION) \
		$(DESTDIR)$(libdir)/pkgconfig/keel-nats.pc \
		$(addprefix $(DESTDIR)$(mandir)/,$(MAN_FILES))
	$(Q)rmdir $(DESTDIR)$(includedir)/keel 2>/dev/null || true

format:
	$(Q)clang-format -i $$(git ls-files '*.c' '*.h')

format-check:
	$(Q)clang-format --dry-run --Werror $$(git ls-files '*.c' '*.h')

clean:
	$(Q)rm -rf build

-include $(NATS_OBJ:.o=.d)
-include $(LIB_OBJ:.o=.d) $(HTTP_OBJ:.o=.d) $(TLS_OBJ:.o=.d) $(TRACE_OBJ:.o=.d) \
	$(SIM_OBJ:.o=.d)
