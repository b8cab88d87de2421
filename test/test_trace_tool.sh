#!/bin/sh
# SPDX-License-Identifier: MIT
# test_trace_tool.sh: check tools/keel-trace on traces that
# test/trace/gen_trace.py writes: the summary's numbers for the scripted
# fixture; the Chrome JSON against the Trace Event Format's rules; the HTML
# report is self-contained (and, if chromium is installed, its script runs);
# a truncated, empty or foreign file, a directory or a FIFO gives exit 1
# and one line on stderr (a FIFO at once, without waiting for a writer);
# bad arguments give exit 2; damaged files never crash it.
# Builds nothing: runs $BUILD/tools/keel-trace (BUILD defaults to build).
# Last line: "trace-tool: N passed, M failed"; exit status 1 on any failure.
set -u
BUILD=${BUILD:-build}
tool=$BUILD/tools/keel-trace
gen=test/trace/gen_trace.py
SUITE=trace-tool
. test/helpers/checks.sh

if [ ! -x "$tool" ] || ! command -v python3 >/dev/null; then
	bad "$tool and python3 are needed (run make first)"
	finish
fi

fix=$dir/fixture.ktrace
python3 $gen fixture "$fix" || bad "gen_trace.py fixture"
python3 $gen load "$dir/load.ktrace" --loops 3 --conns 8 --ms 40 ||
	bad "gen_trace.py load"

# ---- summary: the numbers the fixture's script states -----------------

"$tool" summary "$fix" >"$dir/summary.txt" 2>"$dir/summary.err"
check "summary exits 0" [ $? = 0 ]
# Compare with runs of spaces squeezed, so that column widths may change.
tr -s ' ' <"$dir/summary.txt" >"$dir/summary.sq"
# shellcheck disable=SC2317 # run through check()
has() {
	grep -q -F -x -- "$1" "$dir/summary.sq" ||
		grep -q -F -x -- " $1" "$dir/summary.sq"
}
for line in \
	'duration 25.1ms, 2 loops, 116 events, 3 dropped' \
	'0 1001 2 1 13 25.0ms 20 3' \
	'1 1002 3 1 4 4.30us 1 0' \
	'recv 10 1 5.00us 9.00us 10.0us 10.0us' \
	'send 9 0 2.00us 2.00us 2.00us 2.00us' \
	'nop 1 0 500ns 500ns 500ns 500ns' \
	'accept 1 0 7.50us 7.50us 7.50us 7.50us' \
	'[ 512ns, 1.02us) 14 ########################################' \
	'[ 16.8ms, 33.6ms) 1 ###' \
	'17 steps, busy 25.0ms, longest 25.0ms' \
	'25.0ms 44.6us 0 1 conn echo.c:40 recv' \
	'2.00us 12.2us 1 0 pool (first step)' \
	'stalls: 1 (longest first)' \
	'25.0ms 25.0ms 0 1 conn echo.c:44 send' \
	'restarts: 2, escalations: 1' \
	'restart worker 2x (restart count up to 2), first on loop 1 at 16.6us' \
	'escalate pool 1x, first on loop 1 at 16.9us' \
	'aborts: 1' \
	'1x "boom: bad header" at echo.c:52 (first: task conn, loop 0, 25.1ms)' \
	'faults injected: 3' \
	'recv ECONNRESET 2x, first on loop 1 at 14.6us' \
	'send short 1x, first on loop 1 at 14.7us' \
	'drops: 3 events dropped (loop 0: 3)'; do
	check "summary has: $line" has "$line"
done
# The busiest opcode comes first.
check "summary lists recv first" sh -c \
	"grep -A1 '^ *opcode' '$dir/summary.sq' | tail -n 1 | grep -q '^ recv '"
check "summary writes nothing on stderr" [ ! -s "$dir/summary.err" ]

# ---- chrome: the Trace Event Format's rules -----------------------------

cat >"$dir/validate.py" <<'PY'
import json, sys
from collections import Counter, defaultdict

def check(path, fixture):
    d = json.load(open(path, encoding="utf-8"))
    errs = []
    if not isinstance(d, dict) or not isinstance(d.get("traceEvents"), list):
        return ["not the object form {\"traceEvents\": [...]}"]
    if d.get("displayTimeUnit") not in ("ms", "ns"):
        errs.append("displayTimeUnit is not ms or ns")
    life = defaultdict(list)
    flows = defaultdict(list)
    used, named = set(), {}
    count = Counter()
    for i, e in enumerate(d["traceEvents"]):
        where = "event %d %s" % (i, json.dumps(e)[:120])
        if any(k not in e for k in ("ph", "ts", "pid", "tid")):
            errs.append(where + ": lacks one of ph/ts/pid/tid")
            continue
        ph = e["ph"]
        count[ph] += 1
        if not isinstance(e["ts"], (int, float)) or e["ts"] < 0:
            errs.append(where + ": bad ts")
        if e["pid"] != 1 or not isinstance(e["tid"], int):
            errs.append(where + ": pid must be 1, tid the loop")
        if not isinstance(e.get("name"), str):
            errs.append(where + ": no name")
        if ph == "M":
            if e["name"] == "thread_name":
                named[e["tid"]] = e["args"]["name"]
            continue
        used.add(e["tid"])
        if ph == "X":
            if not isinstance(e.get("dur"), (int, float)) or e["dur"] < 0:
                errs.append(where + ": X needs dur >= 0")
        elif ph in "be":
            if "id" not in e or "cat" not in e:
                errs.append(where + ": async event needs cat and id")
            life[(e.get("cat"), e.get("id"))].append((ph, e["ts"], e["name"]))
        elif ph in "sf":
            if "id" not in e or "cat" not in e:
                errs.append(where + ": flow event needs cat and id")
            flows[(e.get("cat"), e["name"], e.get("id"))].append(
                (ph, e["ts"], e.get("bp")))
        elif ph == "C":
            a = e.get("args")
            if not isinstance(a, dict) or not a or not all(
                    isinstance(v, (int, float)) for v in a.values()):
                errs.append(where + ": C needs numeric args")
        elif ph == "i":
            if e.get("s") not in ("t", "p", "g"):
                errs.append(where + ": i needs scope s")
        else:
            errs.append(where + ": unexpected phase")
    for key, v in life.items():
        if sorted(p for p, _, _ in v) != ["b", "e"]:
            errs.append("async id %s: not one b and one e: %s" % (key, v))
        elif len({n for _, _, n in v}) != 1:
            errs.append("async id %s: b and e names differ" % (key,))
        elif dict((p, t) for p, t, _ in v)["e"] < dict(
                (p, t) for p, t, _ in v)["b"]:
            errs.append("async id %s: ends before it begins" % (key,))
    for key, v in flows.items():
        if sorted(p for p, _, _ in v) != ["f", "s"]:
            errs.append("flow %s: not one s and one f: %s" % (key, v))
    for tid in sorted(used):
        if not named.get(tid, "").startswith("loop %d" % tid):
            errs.append("tid %d: no thread_name \"loop %d\"" % (tid, tid))
    if fixture:
        evs = d["traceEvents"]
        want = [
            (count["b"], 5, "task lifetimes (b)"),
            (sum(1 for e in evs if e["ph"] == "X" and e["name"] == "conn"),
             11, "conn steps (X)"),
            (sum(1 for k in flows if k[0] == "message"), 1, "message flows"),
            (sum(1 for k in flows if k[0] == "mailbox"), 2, "mailbox flows"),
            (sum(1 for e in evs if e["ph"] == "i" and
                 e["name"] == "abort: boom: bad header"), 1, "abort instant"),
            (sum(1 for e in evs if e["ph"] == "i" and
                 e["name"] == "restart worker"), 2, "restart instants"),
            (sum(1 for e in evs if e["ph"] == "i" and
                 e["name"].startswith("stall")), 1, "stall instants"),
            (sum(1 for e in evs if e["ph"] == "C" and
                 e["name"] == "mailbox 5"), 4, "mailbox depth counters"),
            (sum(1 for e in evs if e["ph"] == "C" and
                 e["name"] == "loop 1"), 2, "in-flight samples, loop 1"),
            (sum(1 for e in evs if e["ph"] == "X" and e["name"] == "idle"),
             1, "idle slices"),
        ]
        for got, expect, what in want:
            if got != expect:
                errs.append("%s: %d, expected %d" % (what, got, expect))
        step = [e for e in evs if e["ph"] == "X" and e["name"] == "acceptor"]
        if not step or step[0]["ts"] != 2.0 or step[0]["dur"] != 1.0:
            errs.append("first acceptor step: ts 2.0 dur 1.0 expected")
        if step and step[-1]["args"].get("resumed_from") != "keel.c:10 accept":
            errs.append("second acceptor step: wrong resumed_from")
        conn = [e for e in evs if e["ph"] == "X" and e["name"] == "conn"]
        if conn and conn[-1]["args"].get("then") != "aborted":
            errs.append("the conn's last step: \"then\": \"aborted\" expected")
    return errs

errs = check(sys.argv[1], len(sys.argv) > 2)
for e in errs[:20]:
    print("  " + e)
sys.exit(1 if errs else 0)
PY
"$tool" chrome "$fix" -o "$dir/fix.json"
check "chrome exits 0" [ $? = 0 ]
check "chrome JSON (fixture) loads and keeps the format's rules" \
	python3 "$dir/validate.py" "$dir/fix.json" fixture
"$tool" chrome "$dir/load.ktrace" >"$dir/load.json"
check "chrome to stdout exits 0" [ $? = 0 ]
check "chrome JSON (busy trace) loads and keeps the format's rules" \
	python3 "$dir/validate.py" "$dir/load.json"

# ---- html: one self-contained file with its data ------------------------

"$tool" html "$fix" -o "$dir/fix.html"
check "html exits 0" [ $? = 0 ]
"$tool" html "$dir/load.ktrace" -o "$dir/load.html"
check "html (busy trace) exits 0" [ $? = 0 ]
for f in fix load; do
	check "html ($f) has no http:// or https:// reference" \
		sh -c "! grep -q -i -E 'https?://' '$dir/$f.html'"
	check "html ($f) loads no external script, style or image" \
		sh -c "! grep -q -i -E '<(script|img|iframe)[^>]* src=|<link' \
			'$dir/$f.html'"
	check "html ($f) has a canvas, a script and its data" \
		sh -c "grep -q '<canvas' '$dir/$f.html' &&
			grep -q '<script type=\"application/json\" id=\"data\">' \
			'$dir/$f.html'"
done
check "html data parses, with the fixture's numbers" python3 -c '
import json, re, sys
page = open(sys.argv[1], encoding="utf-8").read()
d = json.loads(re.search(r"id=\"data\">(.*?)</script>", page, re.S).group(1))
s = d["summary"]
assert (s["loops"], s["steps"], s["stalls"], s["aborts"], s["restarts"],
        s["dropped"]) == (2, 17, 1, 1, 2, 3), s
assert d["steps_total"] == 17 and len(d["steps"]) == 17
assert [o["name"] for o in d["ops"]][0] == "recv"
assert d["str"][str(d["tasks"][0]["name"])] == "conn"
' "$dir/fix.html"
chromium=$(command -v chromium || command -v chromium-browser || true)
if [ -n "$chromium" ]; then
	# The cards and tables exist only if the page's script ran to the end.
	timeout 60 "$chromium" --headless --no-sandbox --disable-gpu \
		--disable-background-networking --disable-component-update \
		--disable-sync --no-first-run --user-data-dir="$dir/chromium" \
		--virtual-time-budget=5000 --dump-dom "file://$dir/load.html" \
		>"$dir/dom.html" 2>/dev/null
	check "html script runs in chromium (cards and tables drawn)" sh -c \
		"grep -q '<div class=\"card' '$dir/dom.html' &&
		 grep -q '<table>' '$dir/dom.html'"
else
	echo "skip html script run: no chromium"
fi

# ---- bad files: one line on stderr, exit 1, no output ---------------------

# bad_file NAME FILE WHAT: each command must refuse FILE saying WHAT (an
# extended regex), before it writes any output.
bad_file() {
	for cmd in summary chrome html; do
		rm -f "$dir/out"
		if [ $cmd = summary ]; then
			"$tool" summary "$2" >"$dir/bad.out" 2>"$dir/bad.err"
		else
			"$tool" $cmd "$2" -o "$dir/out" >"$dir/bad.out" \
				2>"$dir/bad.err"
		fi
		status=$?
		lines=$(wc -l <"$dir/bad.err")
		msg=$(cat "$dir/bad.err")
		case "$msg" in
		"keel-trace: $2: "*) prefix=yes ;;
		*) prefix=no ;;
		esac
		if [ "$status" = 1 ] && [ "$lines" = 1 ] && [ $prefix = yes ] &&
			echo "$msg" | grep -q -E -- "$3" &&
			[ ! -s "$dir/bad.out" ] && [ ! -e "$dir/out" ]; then
			ok "$cmd refuses $1: $msg"
		else
			bad "$cmd refuses $1 (exit $status, $lines lines: $msg)"
		fi
	done
}

size=$(wc -c <"$fix")
head -c $((size - 5)) "$fix" >"$dir/cut-body.ktrace"
bad_file "a file cut in a record's body" "$dir/cut-body.ktrace" \
	"truncated record at byte [0-9]*"
head -c 40 "$fix" >"$dir/cut-head.ktrace"
bad_file "a file cut in a record header" "$dir/cut-head.ktrace" \
	"truncated record at byte 32"
head -c 20 "$fix" >"$dir/cut-header.ktrace"
bad_file "a file cut in its header" "$dir/cut-header.ktrace" \
	"truncated header"
: >"$dir/empty.ktrace"
bad_file "an empty file" "$dir/empty.ktrace" "empty file"
printf '%s\n' '{"traceEvents": []}' 'not a keel trace at all' \
	>"$dir/foreign.ktrace"
bad_file "a foreign file" "$dir/foreign.ktrace" "bad magic"
python3 - "$fix" "$dir" <<'PY'
import struct, sys
data = open(sys.argv[1], "rb").read()
def put(name, blob):
    open(sys.argv[2] + "/" + name, "wb").write(blob)
put("v7.ktrace", data[:8] + struct.pack("<I", 7) + data[12:])
put("esize.ktrace", data[:12] + struct.pack("<I", 48) + data[16:])
put("kind.ktrace", data[:32] + struct.pack("<I", 9) + data[36:])
put("huge.ktrace", data[:32] + struct.pack("<IIII", 1, 0, 0xFFFFFFFF, 0) +
    data[48:])
PY
bad_file "version 7" "$dir/v7.ktrace" "unsupported version 7"
bad_file "48-byte events" "$dir/esize.ktrace" "unsupported event size 48"
bad_file "an unknown record kind" "$dir/kind.ktrace" \
	"unknown record kind 9 at byte 32"
bad_file "a record longer than the file" "$dir/huge.ktrace" \
	"truncated record at byte 32"
bad_file "a missing file" "$dir/none.ktrace" "No such file"
bad_file "a directory" "$dir" "not a regular file"
# A FIFO must be refused, not opened: opening one for reading blocks
# until a writer comes (the timeout turns that hang into a failure).
mkfifo "$dir/fifo.ktrace"
for cmd in summary chrome html; do
	rm -f "$dir/out"
	out="-o $dir/out"
	[ $cmd = summary ] && out=
	# shellcheck disable=SC2086 # $out is two words or none
	timeout 10 "$tool" $cmd "$dir/fifo.ktrace" $out >"$dir/bad.out" \
		2>"$dir/bad.err"
	status=$?
	check "$cmd: a FIFO is refused at once (exit 1, one line)" sh -c \
		"[ $status = 1 ] && [ \$(wc -l <'$dir/bad.err') = 1 ] &&
		grep -q 'not a regular file' '$dir/bad.err' && [ ! -e '$dir/out' ]"
done

# ---- output trouble: one line, exit 1 ---------------------------------------

cp "$fix" "$dir/self.ktrace"
"$tool" chrome "$dir/self.ktrace" -o "$dir/self.ktrace" 2>"$dir/self.err"
status=$?
check "-o naming the trace itself: refused, exit 1, trace intact" sh -c \
	"[ $status = 1 ] && cmp -s '$fix' '$dir/self.ktrace' &&
	 grep -q 'output file is the trace file' '$dir/self.err'"
if [ -c /dev/full ]; then
	"$tool" chrome "$fix" -o /dev/full 2>"$dir/full.err"
	status=$?
	check "a write error (/dev/full): exit 1, one line, device kept" sh -c \
		"[ $status = 1 ] && [ -c /dev/full ] &&
		 [ \$(wc -l <'$dir/full.err') = 1 ] &&
		 grep -q '^keel-trace: /dev/full: write error' '$dir/full.err'"
fi

# ---- bad arguments: usage, exit 2 -------------------------------------------

# shellcheck disable=SC2317 # run through check()
usage() {
	"$tool" "$@" >/dev/null 2>"$dir/usage.err"
	status=$?
	[ "$status" = 2 ] && grep -q '^usage: keel-trace summary FILE' \
		"$dir/usage.err"
}
check "no arguments: usage, exit 2" usage
check "an unknown command: exit 2" usage frobnicate "$fix"
check "chrome without a file: exit 2" usage chrome
check "summary does not take -o: exit 2" usage summary "$fix" -o x
check "-o without a file: exit 2" usage html "$fix" -o
check "two trace files: exit 2" usage summary "$fix" "$fix"
check "an unknown option: exit 2" usage summary -x "$fix"

# ---- damaged files never crash it -------------------------------------------

# Every cut of the fixture, and random byte changes: exit 0 or 1 only, and
# on 1 a single line.
python3 - "$fix" "$dir" <<'PY'
import random, sys
data = open(sys.argv[1], "rb").read()
rng = random.Random(7)
for i in range(60):
    b = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        at = rng.randrange(32, len(b))
        b[at] = rng.randrange(256) if rng.random() < 0.7 else 0xFF
    open("%s/mut%02d.ktrace" % (sys.argv[2], i), "wb").write(b)
PY
crashes=0
n=0
cut=0
while [ $cut -lt "$size" ]; do
	head -c $cut "$fix" >"$dir/cut.ktrace"
	"$tool" summary "$dir/cut.ktrace" >/dev/null 2>"$dir/cut.err"
	status=$?
	n=$((n + 1))
	if [ $status -gt 1 ] || { [ $status = 1 ] &&
		[ "$(wc -l <"$dir/cut.err")" != 1 ]; }; then
		crashes=$((crashes + 1))
		echo "  cut at $cut: exit $status"
	fi
	if [ $cut -lt 64 ]; then cut=$((cut + 1)); else cut=$((cut + 13)); fi
done
for f in "$dir"/mut*.ktrace; do
	for cmd in summary chrome html; do
		"$tool" $cmd "$f" >/dev/null 2>"$dir/mut.err"
		status=$?
		n=$((n + 1))
		if [ $status -gt 1 ] || { [ $status = 1 ] &&
			[ "$(wc -l <"$dir/mut.err")" != 1 ]; }; then
			crashes=$((crashes + 1))
			echo "  $cmd $(basename "$f"): exit $status"
		fi
	done
done
check "$n cut or damaged files: exit 0 or 1, never a crash" [ $crashes = 0 ]

finish
