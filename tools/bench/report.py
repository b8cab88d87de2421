#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""report.py: the tables of tools/bench.sh (`make bench`).

  report.py keel FILE
      keel-micro's output (RESULT/INFO lines) -> markdown table: ns per op,
      spread of the 5 runs, and what the loop did per op (turns, io_uring_enter
      calls, task steps, SQEs).
  report.py callgrind DIR BENCH N1 N2
      DIR/BENCH.N1.out and DIR/BENCH.N2.out are callgrind profiles of
      `keel-micro --callgrind N =BENCH`. Prints the exact instructions per op,
      (Ir(N2) - Ir(N1)) / (N2 - N1) (setup cost cancels), and the functions
      that account for them (per-function Ir difference / (N2 - N1), from
      callgrind_annotate); appends "BENCH<TAB>Ir_per_op" to DIR/ir.tsv.
  report.py summary KEEL_OUT IR_TSV [MICRO_RAW_TSV]
      The targets table: keel's ns/op (and Ir/op) next to the targets and,
      when the peer run happened, tokio-ct / go-p1 from the same run.
  report.py http HTTP_RAW_TSV [FLOOR_RAW_TSV]
      run-http.sh's raw.tsv (keel's examples/http next to nginx and h2o) ->
      the HTTP table: req/s, p50, p99 and server CPU per request (srv_cpu% /
      100 / req/s) per peer and wrk connection count (medians over the
      repetitions); keel/nginx and keel/h2o ratios (paired: the median over
      repetitions of the ratio of cells run back to back) against the
      issue's goals; and the echo floor, the raw liburing echo server at
      c=64, 64 B, from run.sh's raw.tsv (FLOOR_RAW_TSV).
  report.py pairs RAW_TSV GOAL A/B [A/B ...]
      A run.sh-shaped raw.tsv (the echo matrix, run-proxy.sh) -> paired
      ratios A / B per config (req/s, p99, server CPU per request; medians
      over repetitions of cells run back to back), and, if GOAL is not "-",
      the first pair's CPU per request held against it (<= GOAL): keel on
      the epoll backend against the harness's plain epoll server.
  report.py tls TLS_RAW_TSV [PROBE_TSV]
      tools/bench/tls.sh's raw.tsv -> the TLS tables: full handshakes per
      second (and the server's CPU per handshake), HTTPS keep-alive (keel's
      examples/http vs nginx), the TLS-terminating proxy (keel's
      examples/proxy vs haproxy) and the plain proxy with health checks on
      vs off; medians over the repetitions, ratios paired as in `http`, the
      issue's goals. PROBE_TSV: what each server negotiated.
  report.py nats RESULTS
      tools/keel-natsbench's RESULT lines, each prefixed "rep=R " by
      bench.sh's NATS part -> issue 18's table: ask round trip p50 and p99
      and tells delivered per second, keel's node against the floor (plain
      cnats between two processes), medians over the repetitions, ratios
      paired per repetition (keel and the floor run back to back), held
      against the goals: <= 1.1x the floor's latency, >= 0.9x its
      throughput; and the asking process's CPU time per ask (no goal).
  report.py table RES_DIR
      Issue 17's table, every row from figures of this run (RES_DIR is
      bench.sh's output directory): what, keel, Ir/op (callgrind, micro
      rows), floor / peer, goal, met?. Inputs: keel-micro.out, callgrind/
      ir.tsv, micro/raw.tsv (tokio-ct, c), echo/raw.tsv (keel / uring,
      paired), enters-keel-default.log, enters-keel-0.log and enters-strace.txt, idle/table.md,
      proxy/raw.tsv (keel / haproxy, paired), loop-rss.txt (the fallback
      when keel-micro has no loop_fresh_rss). A row whose input is missing
      says "not measured (why)".
"""
import os
import re
import statistics
import subprocess
import sys

# bench -> target ns/op (the goals) and tokio-ct's measured ns/op
TARGETS = [
    ("spawn_join", 15, 117),
    ("yield", 10, 282),
    ("timer_arm_cancel", 25, 466),
    ("timer_100k_cpu", 150, 2220),
    ("timer_100k_wall", 150, 2220),
]


def fmt(ns):
    if ns >= 10000:
        return f"{ns:,.0f}"
    if ns >= 100:
        return f"{ns:.0f}"
    return f"{ns:.1f}"


def kv_line(line):
    out = {}
    for tok in line.split()[1:]:
        if "=" in tok:
            k, v = tok.split("=", 1)
            out[k] = v
    return out


def parse_keel(path):
    """-> (order, results, runs, loopstats, info)"""
    order, res, runs, loop, info = [], {}, {}, {}, {}
    with open(path) as f:
        for line in f:
            if line.startswith("RESULT "):
                kv = kv_line(line)
                n = kv.get("name")
                if n not in res:
                    order.append(n)
                res[n] = (float(kv["ns_per_op"]), int(kv.get("ops", 0)))
            elif line.startswith("INFO "):
                kv = kv_line(line)
                n = kv.get("name")
                if "runs_ns_per_op" in kv:
                    runs[n] = [float(x) for x in kv["runs_ns_per_op"].split(",") if x]
                elif "turns_per_op" in kv:
                    loop[n] = kv
                else:
                    info[n] = kv
    return order, res, runs, loop, info


def cmd_keel(path):
    order, res, runs, loop, info = parse_keel(path)
    print("| bench | ns/op | runs spread | ops/run | turns/op | enters/op | steps/op | SQEs/op |")
    print("|---|--:|--:|--:|--:|--:|--:|--:|")
    for n in order:
        ns, ops = res[n]
        r = runs.get(n, [])
        spread = f"{100 * (max(r) - min(r)) / ns:.0f} %" if r and ns > 0 else ""
        base = n[:-4] + "_wall" if n.endswith("_cpu") else n
        ls = loop.get(base, {}) if n == base else {}
        cols = [ls.get(k, "") for k in ("turns_per_op", "enters_per_op", "steps_per_op", "sqes_per_op")]
        print(f"| {n} | {fmt(ns)} | {spread} | {ops:,} | " + " | ".join(cols) + " |")
    for n, kv in info.items():
        rest = " ".join(f"{k}={v}" for k, v in kv.items() if k != "name")
        print(f"\n{n}: {rest}")


def cg_total(path):
    with open(path) as f:
        for line in f:
            if line.startswith("summary:") or line.startswith("totals:"):
                return int(line.split()[1])
    raise SystemExit(f"{path}: no summary line")


ANN = re.compile(r"^\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(.*?)\s*(\[[^\]]*\])?\s*$")


def cg_functions(path):
    """callgrind_annotate's per-function self cost: {file:function: Ir}."""
    out = subprocess.run(
        ["callgrind_annotate", "--threshold=100", "--auto=no", path],
        capture_output=True, text=True, timeout=120, check=False).stdout
    funcs, started = {}, False
    for line in out.splitlines():
        if "file:function" in line:
            started = True
            continue
        if not started:
            continue
        m = ANN.match(line)
        if m and "PROGRAM TOTALS" not in line:
            name = m.group(2)
            if name.startswith("???") and m.group(3):
                # no debug info: say which object it is in
                name += " " + os.path.basename(m.group(3).strip("[]"))
            funcs[name] = funcs.get(name, 0) + int(m.group(1).replace(",", ""))
    return funcs


def short(fn):
    # "/abs/path/core/task.c:keel_spawn" -> "core/task.c:keel_spawn"
    if fn.startswith("???"):
        return fn
    file, _, func = fn.rpartition(":")
    parts = file.split("/")
    return ("/".join(parts[-2:]) if len(parts) > 1 else file) + ":" + func


def cmd_callgrind(d, bench, n1, n2, top=12):
    n1, n2 = int(n1), int(n2)
    p1 = os.path.join(d, f"{bench}.{n1}.out")
    p2 = os.path.join(d, f"{bench}.{n2}.out")
    i1, i2 = cg_total(p1), cg_total(p2)
    per = (i2 - i1) / (n2 - n1)
    print(f"### {bench}: {per:.1f} instructions per op"
          f"  (Ir {i1:,} @ {n1:,} ops, {i2:,} @ {n2:,} ops)")
    f1, f2 = cg_functions(p1), cg_functions(p2)
    diff = sorted(((f2.get(k, 0) - f1.get(k, 0)) / (n2 - n1), k)
                  for k in set(f1) | set(f2))
    diff.reverse()
    print()
    print("| Ir/op | function (self cost per op) |")
    print("|--:|---|")
    shown = 0
    for v, k in diff:
        if v < 0.5 or shown == top:
            break
        print(f"| {v:.1f} | {short(k)} |")
        shown += 1
    print()
    with open(os.path.join(d, "ir.tsv"), "a") as f:
        f.write(f"{bench}\t{per:.1f}\n")


def cmd_nats(path):
    runs = {}  # (rep, side, what) -> {key: value}
    with open(path) as f:
        for line in f:
            if " RESULT " not in line or not line.startswith("rep="):
                continue
            rep = line.split()[0].split("=", 1)[1]
            kv = kv_line(line.split(" ", 1)[1])
            runs[(rep, kv.get("side"), kv.get("what"))] = kv
    reps = sorted({r for r, _, _ in runs})
    rows = [("ask p50 (us)", "ask", "p50_us", "<=", 1.1),
            ("ask p99 (us)", "ask", "p99_us", "<=", 1.1),
            ("tells/s delivered", "tell", "per_s", ">=", 0.9),
            ("asking CPU per ask (us)", "ask", "cpu_us_per_ask", None, None)]
    print("| what | keel | floor (cnats) | keel / floor | goal | met? |")
    print("|---|--:|--:|--:|---|---|")
    for name, what, key, op, goal in rows:
        vals = {"keel": [], "floor": []}
        ratios = []
        for r in reps:
            k = runs.get((r, "keel", what), {}).get(key)
            fl = runs.get((r, "floor", what), {}).get(key)
            if k is not None:
                vals["keel"].append(float(k))
            if fl is not None:
                vals["floor"].append(float(fl))
            if k is not None and fl is not None and float(fl) > 0:
                ratios.append(float(k) / float(fl))
        if not ratios:
            print(f"| {name} | - | - | not measured | - | - |")
            continue
        ratio = statistics.median(ratios)
        cells = (f"| {name} | {statistics.median(vals['keel']):,.1f} "
                 f"| {statistics.median(vals['floor']):,.1f} | {ratio:.2f}x ")
        if op is None:
            print(cells + "| - | - |")
            continue
        met = ratio <= goal if op == "<=" else ratio >= goal
        print(cells + f"| {op} {goal}x | {'yes' if met else 'NO'} |")
    lost = [(r, s, kv["delivered"], kv["n"]) for (r, s, w), kv in runs.items()
            if w == "tell" and kv.get("delivered") != kv.get("n")]
    for r, side, d, n in sorted(lost):
        print(f"\n(rep {r}, {side}: {d} of {n} tells delivered)")


def micro_raw(path):
    """micro/run.sh raw.tsv -> {(peer, bench): median ns over reps}"""
    cells = {}
    with open(path) as f:
        next(f, None)
        for line in f:
            p = line.rstrip("\n").split("\t")
            if len(p) < 4:
                continue
            try:
                cells.setdefault((p[0], p[2]), []).append(float(p[3]))
            except ValueError:
                pass
    return {k: statistics.median(v) for k, v in cells.items()}


def cmd_summary(keel_out, ir_tsv, raw=None):
    _, res, _, _, _ = parse_keel(keel_out)
    ir = {}
    if ir_tsv and os.path.exists(ir_tsv):
        with open(ir_tsv) as f:
            for line in f:
                b, v = line.split("\t")
                ir[b] = float(v)
    peers = micro_raw(raw) if raw and os.path.exists(raw) else {}
    cols = ["tokio-ct", "go-p1"] if peers else []
    print("| bench | keel ns/op | target | keel Ir/op | "
          + "".join(f"{c} (this run) | " for c in cols)
          + "tokio-ct (issue) | keel vs target |")
    print("|---|--:|--:|--:|" + "--:|" * len(cols) + "--:|---|")
    ir_alias = {"timer_100k_cpu": "timer_100k_wall"}
    for b, target, tokio in TARGETS:
        if b not in res:
            continue
        if b not in ir and ir_alias.get(b) in ir:
            ir[b] = ir[ir_alias[b]]
        ns = res[b][0]
        verdict = "met" if ns <= target else f"{ns / target:.1f}x over"
        row = [b, fmt(ns), str(target), f"{ir[b]:.0f}" if b in ir else ""]
        row += [fmt(peers[(c, b)]) if (c, b) in peers else "" for c in cols]
        row += [str(tokio), verdict]
        print("| " + " | ".join(row) + " |")
    if "timer_100k_wall" in res:
        print()
        print("(timer_100k_wall cannot go below 10 ms / 100k = 100 ns: the"
              " sleeps span 10 ms.)")


def tsv_rows(path):
    with open(path) as f:
        head = next(f).rstrip("\n").split("\t")
        for line in f:
            yield dict(zip(head, line.rstrip("\n").split("\t")))


def num(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def cpu_us(r):
    """Server CPU per request in microseconds: srv_cpu% / 100 / (req/s)."""
    c, v = num(r.get("srv_cpu_pct")), num(r.get("rps"))
    return c / 100 / v * 1e6 if c is not None and v else None


def metric(r, key):
    return cpu_us(r) if key == "cpu" else num(r.get(key))


# keel's rows and what they are held against (run-http.sh peer names; the
# 4 KiB rows come from tools/bench/http-peer.sh).
HTTP_PAIRS = [
    ("keel-http", "nginx-w1"), ("keel-http", "h2o-mruby"),
    ("keel-http-4k", "nginx-w1-4k"), ("keel-http-4k", "h2o-4k"),
    # the epoll backend (KEEL_BACKEND=epoll) against io_uring and nginx
    ("keel-http-epoll", "keel-http"), ("keel-http-epoll", "nginx-w1"),
    ("keel-http-4k-epoll", "keel-http-4k"),
]


def cmd_http(raw, floor_raw=None):
    cells, peers, conns = {}, [], []
    for r in tsv_rows(raw):
        p, c = r["peer"], r["config"].split("x")[0]
        if p not in peers:
            peers.append(p)
        if c not in conns:
            conns.append(c)
        cells.setdefault((p, c), []).append(r)

    def med(p, c, key):
        v = [metric(r, key) for r in cells.get((p, c), [])]
        v = [x for x in v if x is not None]
        return statistics.median(v) if v else None

    def paired(p, base, c, key):
        b = {r["rep"]: metric(r, key) for r in cells.get((base, c), [])}
        v = [metric(r, key) / b[r["rep"]] for r in cells.get((p, c), [])
             if metric(r, key) and b.get(r["rep"])]
        return statistics.median(v) if v else None

    def f(v, digits=1):
        return "" if v is None else f"{v:,.{digits}f}"

    def krps(v):
        return "" if v is None else f"{v / 1000:.1f}k"

    print("| peer | " + " | ".join(
        f"c={c} req/s | p50 µs | p99 µs | CPU µs/req" for c in conns) + " |")
    print("|---|" + "--:|--:|--:|--:|" * len(conns))
    for p in peers:
        row = [p]
        for c in conns:
            row += [krps(med(p, c, "rps")), f(med(p, c, "p50_us")),
                    f(med(p, c, "p99_us")), f(med(p, c, "cpu"), 2)]
        print("| " + " | ".join(row) + " |")
    fails = sum(1 for rs in cells.values() for r in rs if r["rps"] == "FAIL")
    errs = sum(int(num(r.get("errors")) or 0) for rs in cells.values()
               for r in rs if r["rps"] != "FAIL")
    print()
    print(f"(wrk errors and non-2xx answers over all cells: {errs}; "
          f"failed cells: {fails})")

    pairs = [(k, b) for k, b in HTTP_PAIRS if k in peers and b in peers]
    if pairs:
        print()
        print("| ratio (paired) | " + " | ".join(
            f"c={c} req/s | p99 | CPU/req" for c in conns) + " |")
        print("|---|" + "--:|--:|--:|" * len(conns))
        for k, b in pairs:
            row = [f"{k} / {b}"]
            for c in conns:
                row += [f(paired(k, b, c, key), 2)
                        for key in ("rps", "p99_us", "cpu")]
            print("| " + " | ".join(row) + " |")
    if "keel-http" in peers and "nginx-w1" in peers and "64" in conns:
        rps = paired("keel-http", "nginx-w1", "64", "rps")
        p99 = paired("keel-http", "nginx-w1", "64", "p99_us")
        cpu = paired("keel-http", "nginx-w1", "64", "cpu")
        h2o = [paired(k, b, "64", "rps") for k, b in pairs
               if b.startswith("h2o")]

        def goal(v, op, g):
            if v is None:
                return "n/a"
            ok = v <= g if op == "<=" else v >= g
            return f"{v:.2f} (goal {op} {g}: {'met' if ok else 'not met'})"
        print()
        print("goals at c=64, keel-http / nginx-w1: req/s " +
              goal(rps, ">=", 1.2) + ", p99 " + goal(p99, "<=", 0.7) +
              ", CPU/req " + goal(cpu, "<=", 0.8) + "; req/s vs h2o: " +
              (", ".join(f"{v:.2f}" for v in h2o if v is not None) or "n/a") +
              " (goal >= 1)")
    if floor_raw and os.path.exists(floor_raw):
        rs = [r for r in tsv_rows(floor_raw)
              if r["peer"] == "uring" and r["config"] == "64x64"]
        fl = {k: [metric(r, k) for r in rs] for k in ("rps", "p99_us", "cpu")}
        fl = {k: statistics.median([x for x in v if x is not None])
              if any(x is not None for x in v) else None
              for k, v in fl.items()}
        print()
        print(f"echo floor (raw liburing echo server, run.sh `uring`, c=64, "
              f"64 B, {len(rs)} reps right after): {krps(fl['rps'])} req/s, "
              f"p99 {f(fl['p99_us'])} µs, {f(fl['cpu'], 2)} µs CPU/req", end="")
        k = med("keel-http", "64", "cpu")
        if k and fl["cpu"]:
            print(f"; keel-http at c=64: {k / fl['cpu']:.2f}x the floor's "
                  f"CPU/req")
        else:
            print()


def cmd_pairs(raw, goal, *pairs):
    cells, configs = {}, []
    for r in tsv_rows(raw):
        if r["config"] not in configs:
            configs.append(r["config"])
        cells.setdefault((r["peer"], r["config"]), []).append(r)

    def paired(p, base, c, key):
        b = {r["rep"]: metric(r, key) for r in cells.get((base, c), [])}
        v = [metric(r, key) / b[r["rep"]] for r in cells.get((p, c), [])
             if metric(r, key) and b.get(r["rep"])]
        return statistics.median(v) if v else None

    def f(v):
        return "" if v is None else f"{v:.2f}"

    pairs = [tuple(x.split("/", 1)) for x in pairs if "/" in x]
    pairs = [(a, b) for a, b in pairs
             if any(k[0] == a for k in cells) and any(k[0] == b for k in cells)]
    if not pairs:
        print("(no pairs to compare)")
        return
    print("| ratio (paired) | " + " | ".join(
        f"{c} req/s | p99 | CPU/req" for c in configs) + " |")
    print("|---|" + "--:|--:|--:|" * len(configs))
    for a, b in pairs:
        row = [f"{a} / {b}"]
        for c in configs:
            row += [f(paired(a, b, c, k)) for k in ("rps", "p99_us", "cpu")]
        print("| " + " | ".join(row) + " |")
    if goal != "-":
        a, b = pairs[0]
        g = float(goal)
        res = []
        for c in configs:
            v = paired(a, b, c, "cpu")
            res.append(f"{c} " + ("n/a" if v is None else
                                  f"{v:.2f} ({'met' if v <= g else 'not met'})"))
        print()
        print(f"goal: server CPU per request {a} / {b} <= {g:g}: " +
              ", ".join(res))


# tools/bench/tls.sh's tests and rows: (test, keel's row, what it is held
# against).
TLS_PAIRS = {
    "hs": ("keel-https", "nginx-https"),
    "res": ("keel-https", "nginx-https"),
    "ka": ("keel-https", "nginx-https"),
    "tp": ("keel-proxy-tls", "haproxy-tls"),
    "pp": ("keel-proxy-health", "keel-proxy"),
}


def tls_metric(r, key):
    if key == "cpu":
        c, n = num(r.get("cpu_ns")), num(r.get("reqs"))
        return c / n / 1e3 if c is not None and n else None
    return num(r.get(key))


def cmd_tls(raw, probe=None):
    cells, peers, conns = {}, {}, {}
    for r in tsv_rows(raw):
        t, p, c = r["test"], r["peer"], r["conns"]
        peers.setdefault(t, [])
        conns.setdefault(t, [])
        if p not in peers[t]:
            peers[t].append(p)
        if c not in conns[t]:
            conns[t].append(c)
        cells.setdefault((t, p, c), []).append(r)

    def good(t, p, c):
        return [r for r in cells.get((t, p, c), []) if r["rps"] != "FAIL"]

    def med(t, p, c, key):
        v = [tls_metric(r, key) for r in good(t, p, c)]
        v = [x for x in v if x is not None]
        return statistics.median(v) if v else None

    def ratios(t, c, key):
        k, b = TLS_PAIRS[t]
        base = {r["rep"]: tls_metric(r, key) for r in good(t, b, c)}
        return [tls_metric(r, key) / base[r["rep"]] for r in good(t, k, c)
                if tls_metric(r, key) and base.get(r["rep"])]

    def paired(t, c, key):
        v = ratios(t, c, key)
        return statistics.median(v) if v else None

    def f(v, digits=1):
        return "" if v is None else f"{v:,.{digits}f}"

    def krps(v):
        return "" if v is None else f"{v / 1000:.2f}k"

    def has_pair(t):
        k, b = TLS_PAIRS[t]
        return k in peers.get(t, []) and b in peers.get(t, [])

    def skipped(t):
        k, _ = TLS_PAIRS[t]
        if t in peers and k not in peers[t]:
            print(f"\n({k}: not run: the binary lacks the option; "
                  "see the bench log)")

    def goal(v, op, g):
        if v is None:
            return "n/a"
        ok = v <= g if op == "<=" else (v < g if op == "<" else v >= g)
        return f"{v:.2f} (goal {op} {g}: {'met' if ok else 'not met'})"

    if probe and os.path.exists(probe):
        rows = list(tsv_rows(probe))
        if rows:
            print("What each TLS server negotiated with `openssl s_client`"
                  " (resumes: a second connection with the first one's"
                  " session was resumed):")
            print()
            print("| server | protocol | suite | group | ALPN | resumes |"
                  " certificate (sha256) |")
            print("|---|---|---|---|---|---|---|")
            for r in rows:
                print("| " + " | ".join(r.get(k, "") for k in (
                    "peer", "protocol", "suite", "group", "alpn", "resumes",
                    "cert_sha256")) + " |")
            print()

    if "hs" in peers or "res" in peers:
        hc = (conns.get("hs") or conns.get("res"))[0]
        print(f"#### TLS handshakes, a new connection per request (c={hc})")
        print()
        print("| server | full handshakes/s (h2load) | server CPU µs/handshake"
              " | server CPU busy % | wrk `Connection: close` req/s | p99 µs |"
              " server CPU µs/conn |")
        print("|---|--:|--:|--:|--:|--:|--:|")
        for p in dict.fromkeys(peers.get("hs", []) + peers.get("res", [])):
            print(f"| {p} | {f(med('hs', p, hc, 'rps'), 0)} | "
                  f"{f(med('hs', p, hc, 'cpu'))} | "
                  f"{f(med('hs', p, hc, 'core_pct'), 0)} | "
                  f"{f(med('res', p, hc, 'rps'), 0)} | "
                  f"{f(med('res', p, hc, 'p99_us'), 0)} | "
                  f"{f(med('res', p, hc, 'cpu'))} |")
        if has_pair("hs"):
            print(f"| keel-https / nginx-https (paired) | "
                  f"{f(paired('hs', hc, 'rps'), 2)} | "
                  f"{f(paired('hs', hc, 'cpu'), 2)} | | "
                  f"{f(paired('res', hc, 'rps'), 2)} | "
                  f"{f(paired('res', hc, 'p99_us'), 2)} | "
                  f"{f(paired('res', hc, 'cpu'), 2)} |")
        print()
        print("(h2load: rounds of -c C -n C, each client one connection and"
              " one request, so every handshake is a full one; h2load gives"
              " no percentiles. wrk reconnects with the session it had, so"
              " its `Connection: close` handshakes are resumptions where the"
              " server resumes (see `resumes` above). Server CPU busy: the"
              " share of the server's CPU in use, by anything; well below"
              " 100 % the client, which also verifies the server's"
              " signature, was the limit: then handshakes/s compares the"
              " client's runs and CPU µs/handshake compares the servers.)")
        skipped("hs")
        if has_pair("hs"):
            print()
            print("goals: keel-https / nginx-https full handshakes/s " +
                  goal(paired("hs", hc, "rps"), ">=", 1) +
                  "; server CPU per handshake " +
                  goal(paired("hs", hc, "cpu"), "<=", 1))
        print()

    def conn_table(t, title, cpu_name, goals):
        cs = conns.get(t, [])
        print(f"#### {title}")
        print()
        print("| peer | " + " | ".join(
            f"c={c} req/s | p50 µs | p99 µs | {cpu_name} µs/req"
            for c in cs) + " |")
        print("|---|" + "--:|--:|--:|--:|" * len(cs))
        for p in peers.get(t, []):
            row = [p]
            for c in cs:
                row += [krps(med(t, p, c, "rps")), f(med(t, p, c, "p50_us")),
                        f(med(t, p, c, "p99_us")), f(med(t, p, c, "cpu"), 2)]
            print("| " + " | ".join(row) + " |")
        if has_pair(t):
            k, b = TLS_PAIRS[t]
            row = [f"{k} / {b} (paired)"]
            for c in cs:
                row += [f(paired(t, c, "rps"), 2), "",
                        f(paired(t, c, "p99_us"), 2),
                        f(paired(t, c, "cpu"), 2)]
            print("| " + " | ".join(row) + " |")
        errs = sum(int(num(r.get("errors")) or 0) for (tt, _, _), rs
                   in cells.items() if tt == t for r in rs if r["rps"] != "FAIL")
        fails = sum(1 for (tt, _, _), rs in cells.items() if tt == t
                    for r in rs if r["rps"] == "FAIL")
        print()
        print(f"(wrk errors and non-2xx answers: {errs}; failed cells: {fails})")
        skipped(t)
        if has_pair(t):
            print()
            goals(cs)
        print()

    def ka_goals(cs):
        print("goals: keel-https / nginx-https req/s " + ", ".join(
            f"c={c}: " + goal(paired("ka", c, "rps"), ">=", 1) for c in cs))

    def tp_goals(cs):
        for c in cs:
            print(f"goals at c={c}, keel-proxy-tls / haproxy-tls: CPU/req " +
                  goal(paired("tp", c, "cpu"), "<=", 0.85) + ", req/s " +
                  goal(paired("tp", c, "rps"), ">=", 1.15) + ", p99 " +
                  goal(paired("tp", c, "p99_us"), "<", 1))
            print()

    def pp_goals(cs):
        parts = []
        for c in cs:
            for key, name in (("cpu", "CPU/req"), ("rps", "req/s")):
                v = ratios("pp", c, key)
                if v:
                    parts.append(f"c={c} {name} {statistics.median(v):.2f}"
                                 f" (reps {min(v):.2f}-{max(v):.2f})")
        print("health checks on / off (goal: no measurable cost, a ratio"
              " of 1 within the run-to-run spread): " + "; ".join(parts))

    if "ka" in peers:
        conn_table("ka", "HTTPS keep-alive: keel's examples/http vs nginx"
                   " (wrk -t1, 5-byte answer)", "server CPU", ka_goals)
    if "tp" in peers:
        conn_table("tp", "TLS-terminating proxy in front of a plain nginx"
                   " backend: keel's examples/proxy vs haproxy (mode tcp),"
                   " wrk -t1 https", "proxy CPU", tp_goals)
    if "pp" in peers:
        meta = {}
        mp = os.path.join(os.path.dirname(raw), "meta.tsv")
        if os.path.exists(mp):
            with open(mp) as fm:
                meta = dict(line.rstrip("\n").split("\t", 1)
                            for line in fm if "\t" in line)
        opts = ""
        if meta:
            opts = (f" (keel-proxy: `{meta.get('health_off', '')}`;"
                    f" keel-proxy-health: `{meta.get('health_on', '')}`)")
        conn_table("pp", "Plain TCP proxy, health checks off and on: keel's"
                   " examples/proxy, wrk -t1 http, the same backend" + opts,
                   "proxy CPU", pp_goals)


# --- issue 17's table (`report.py table`) -------------------------------------


def md_table(path, first_header):
    """A markdown table in PATH whose header starts with FIRST_HEADER ->
    {first column: {header: cell}}."""
    out, head = {}, None
    try:
        with open(path) as f:
            for line in f:
                if not line.startswith("|"):
                    if head is not None and out:
                        break
                    continue
                cells = [c.strip() for c in line.strip().strip("|").split("|")]
                if head is None:
                    if cells and cells[0] == first_header:
                        head = [c.strip("*") for c in cells]
                    continue
                if set(cells[0]) <= set("-: "):
                    continue
                out[cells[0]] = dict(zip(head, cells))
    except OSError:
        pass
    return out


def lead_num(cell):
    """'379 (370–390)' -> 379.0; None when there is no number."""
    m = re.match(r"\s*(-?[\d,]+(?:\.\d+)?)", (cell or "").strip("* "))
    return float(m.group(1).replace(",", "")) if m else None


def run_pairs(raw):
    """run.sh-shaped raw.tsv -> paired(a, b, config, key) (median over reps
    of a/b in the same rep) and med(a, config, key)."""
    cells = {}
    if raw and os.path.exists(raw):
        for r in tsv_rows(raw):
            cells.setdefault((r["peer"], r["config"]), []).append(r)

    def paired(a, b, c, key):
        base = {r["rep"]: metric(r, key) for r in cells.get((b, c), [])}
        v = [metric(r, key) / base[r["rep"]] for r in cells.get((a, c), [])
             if metric(r, key) and base.get(r["rep"])]
        return statistics.median(v) if v else None

    def med(a, c, key):
        v = [metric(r, key) for r in cells.get((a, c), [])]
        v = [x for x in v if x is not None]
        return statistics.median(v) if v else None

    return paired, med


def cmd_table(res):
    def path(*p):
        return os.path.join(res, *p)

    keel_out = path("keel-micro.out")
    kres, kinfo = {}, {}
    if os.path.exists(keel_out):
        _, kres, _, _, kinfo = parse_keel(keel_out)
    ir = {}
    if os.path.exists(path("callgrind", "ir.tsv")):
        with open(path("callgrind", "ir.tsv")) as f:
            for line in f:
                b, _, v = line.rstrip("\n").partition("\t")
                if num(v) is not None:
                    ir[b] = float(v)
    peers = {}
    if os.path.exists(path("micro", "raw.tsv")):
        peers = micro_raw(path("micro", "raw.tsv"))
    # BENCH_TABLE=only skips part 1: keel's column of the micro run then.
    for (peer, bench), v in peers.items():
        if peer == "keel" and bench not in kres:
            kres[bench] = (v, 0)
    rows = []

    def row(what, keel, irc, floor, goal, met):
        rows.append((what, keel, irc, floor, goal,
                     "–" if met is None else ("yes" if met else "no")))

    def nm(why):
        return f"not measured ({why})"

    # Idle connections (run-idle.sh).
    idle = md_table(path("idle", "table.md"), "peer")
    user = {p: lead_num(idle.get(p, {}).get("server RSS B/conn"))
            for p in ("keel", "uring", "epoll")}
    kern = {p: lead_num(idle.get(p, {}).get("other caches"))
            for p in ("keel", "uring", "epoll")}
    why_idle = "no idle run: SKIP_IDLE or no peer harness"

    def b(v):
        return "?" if v is None else f"{v:,.0f} B"

    if user["keel"] is not None:
        row("memory per idle connection, user space", b(user["keel"]), "",
            f"raw liburing {b(user['uring'])}, epoll {b(user['epoll'])}",
            "≤ 96 B", user["keel"] <= 96)
    else:
        row("memory per idle connection, user space", nm(why_idle), "", "",
            "≤ 96 B", None)
    if kern["keel"] is not None:
        row("same, kernel slab outside the socket objects", b(kern["keel"]),
            "", f"epoll {b(kern['epoll'])}, raw liburing {b(kern['uring'])}",
            "≤ epoll's",
            None if kern["epoll"] is None else kern["keel"] <= kern["epoll"])
    else:
        row("same, kernel slab outside the socket objects", nm(why_idle), "",
            "", "≤ epoll's", None)

    # keel-micro against tokio-ct (peers' micro run).
    def micro_row(what, bench, goal, alt=None, ir_bench=None):
        ir_bench = ir_bench or bench
        irc = f"{ir[ir_bench]:.0f}" if ir_bench in ir else "not counted"
        tok = peers.get(("tokio-ct", bench))
        floor = (f"tokio-ct {fmt(tok)}" if tok is not None
                 else nm("no tokio-ct micro run"))
        if bench not in kres:
            row(what, nm(f"keel-micro printed no {bench}"), irc, floor,
                f"≤ {goal}", None)
            return
        ns = kres[bench][0]
        k = fmt(ns)
        if alt and alt in kres:
            k += f" (wall {fmt(kres[alt][0])})"
        row(what, k, irc, floor, f"≤ {goal}", ns <= goal)

    micro_row("100k sleeping tasks, CPU per timer (spawn included)",
              "timer_100k_cpu", 150, alt="timer_100k_wall",
              ir_bench="timer_100k_wall")
    micro_row("spawn + join", "spawn_join", 15)
    micro_row("mailbox send+recv, one loop", "chan_2tasks", 7)
    micro_row("round trip between two tasks, one loop", "pingpong_2tasks", 20)

    # NOPs against the raw C ring, every batch.
    ks, cs, irs, ok = [], [], [], True
    for n in (1, 8, 32, 128):
        bn = f"nop_b{n}"
        kv, cv = kres.get(bn, (None,))[0], peers.get(("c", bn))
        ks.append(fmt(kv) if kv is not None else "?")
        cs.append(fmt(cv) if cv is not None else "?")
        irs.append(f"{ir[bn]:.0f}" if bn in ir else "?")
        ok = ok and kv is not None and cv is not None and kv <= 1.1 * cv
    what = "io_uring NOP through keel, batch 1 / 8 / 32 / 128"
    if all(x == "?" for x in ks):
        row(what, nm("keel-micro printed no nop_b*"), " / ".join(irs),
            "", "≤ 1.1× raw at every batch", None)
    else:
        have_c = any(x != "?" for x in cs)
        row(what, " / ".join(ks), " / ".join(irs),
            "raw C " + " / ".join(cs) if have_c else nm("no c micro run"),
            "≤ 1.1× raw at every batch", ok if have_c else None)

    # io_uring_enter per request (keel's counters, echo c=64, default).
    # enters-keel-default.log is the default; enters-keel-0.log is
    # --batch-wait 0, which is batching off.
    def enters_of(name):
        try:
            with open(path(name)) as f:
                m = re.search(r"([\d.]+) enters and", f.read())
                return float(m.group(1)) if m else None
        except OSError:
            return None

    enters = enters_of("enters-keel-default.log")
    enters_off = enters_of("enters-keel-0.log")
    strace = {}
    try:
        with open(path("enters-strace.txt")) as f:
            for line in f:
                m = re.search(r"strace -c: (\S+)\s.*= ([\d.]+) per request",
                              line)
                if m:
                    strace[m.group(1)] = m.group(2)
    except OSError:
        pass
    what = "io_uring_enter per request, echo c=64, default"
    floor = (f"raw liburing {strace['uring']} under strace (keel "
             f"{strace.get('keel', '?')})" if "uring" in strace
             else "raw liburing: not measured (no strace run)")
    if enters_off is not None:
        floor += f"; keel with batching off {enters_off:.3f}"
    if enters is None:
        row(what, nm("no enters run: SKIP_ENTERS or no peer harness"), "",
            floor, "≤ 0.05 by default", None)
    else:
        row(what, f"{enters:.3f}", "", floor, "≤ 0.05 by default",
            enters <= 0.05)

    # Echo CPU per request, paired against the raw liburing server.
    paired, _ = run_pairs(path("echo", "raw.tsv"))
    cfgs = [("1x64", 1.0), ("64x64", 0.9), ("64x4096", 0.9)]
    kv = [paired("keel", "uring", c, "cpu") for c, _ in cfgs]
    ev = [paired("epoll", "uring", c, "cpu") for c, _ in cfgs]
    what = ("echo server CPU per request vs raw liburing, c=1 / c=64 / "
            "c=64 4 KiB")

    def ratios(v):
        return " / ".join("?" if x is None else f"{x:.2f}" for x in v) + "×"

    if all(x is None for x in kv):
        row(what, nm("no echo matrix with keel and uring"), "", "",
            "≤ 1.0 / 0.9 / 0.9×", None)
    else:
        row(what, ratios(kv), "",
            "epoll " + ratios(ev) if any(x is not None for x in ev)
            else "epoll: not measured",
            "≤ 1.0 / 0.9 / 0.9×",
            all(x is not None and x <= g for x, (_, g) in zip(kv, cfgs)))

    # Batching by default by connections (BENCH_TABLE=only runs these
    # cells): it must lose nothing at c=1..16 and win at c=64.
    bycon = [("1x64", 1.0), ("4x64", 1.0), ("16x64", 1.0), ("64x64", 0.9),
             ("256x64", None)]
    kb = [paired("keel", "uring", c, "cpu") for c, _ in bycon]
    if any(x is not None for x in kb[1:3] + kb[4:]):
        eb = [paired("epoll", "uring", c, "cpu") for c, _ in bycon]
        row("echo CPU per request vs raw liburing by connections, "
            "64 B, c=1 / 4 / 16 / 64 / 256", ratios(kb), "",
            "epoll " + ratios(eb), "≤ 1.0 / 1.0 / 1.0 / 0.9 / –×",
            all(x is not None and x <= g
                for x, (_, g) in zip(kb, bycon) if g is not None))

    # RSS of a fresh loop: keel-micro's loop_fresh_rss, else bench.sh's
    # fallback (loop-rss.txt: "kib=.. how=..").
    what = "RSS of a fresh loop"
    kib, how = None, ""
    if "loop_fresh_rss" in kinfo and num(kinfo["loop_fresh_rss"].get("kib")):
        kib = float(kinfo["loop_fresh_rss"]["kib"])
    else:
        try:
            with open(path("loop-rss.txt")) as f:
                kv2 = kv_line("X " + f.read().strip())
            kib = num(kv2.get("kib"))
            how = " (bench.sh fallback: 8 loops on libkeel.a, no task run)"
        except OSError:
            pass
    if kib is None:
        row(what, nm("keel-micro has no loop_fresh_rss and the fallback "
                     "did not run"), "", "–", "≤ 128 KiB until it is used",
            None)
    else:
        row(what, f"{kib:,.0f} KiB{how}", "", "–",
            "≤ 128 KiB until it is used", kib <= 128)

    # The proxy against haproxy at c=64 (run-proxy.sh, paired).
    paired, med = run_pairs(path("proxy", "raw.tsv"))
    rps = paired("keel", "haproxy", "64x64", "rps")
    p99 = paired("keel", "haproxy", "64x64", "p99_us")
    what = "proxy req/s and p99 vs haproxy, c=64"
    if rps is None or p99 is None:
        row(what, nm("no proxy run with keel and haproxy at 64x64"), "", "",
            "≥ 1.15× req/s, lower p99", None)
    else:
        kr, hr = med("keel", "64x64", "rps"), med("haproxy", "64x64", "rps")
        kp, hp = (med("keel", "64x64", "p99_us"),
                  med("haproxy", "64x64", "p99_us"))
        row(what, f"{rps:.2f}× req/s, p99 {p99:.2f}× ({kr / 1000:.1f}k, "
            f"{kp:.0f} µs)", "",
            f"haproxy {hr / 1000:.1f}k req/s, p99 {hp:.0f} µs",
            "≥ 1.15× req/s, lower p99", rps >= 1.15 and p99 < 1.0)

    print("| what | keel | Ir/op | floor / peer | goal | met? |")
    print("|---|--:|--:|--:|--:|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    met = sum(1 for r in rows if r[5] == "yes")
    unmeasured = sum(1 for r in rows if r[5] == "–")
    print()
    print(f"({met} of {len(rows)} rows met, {unmeasured} not measured; "
          "ns per op unless said; micro figures: keel-micro, median of 5 "
          "runs; Ir/op: callgrind, exact; ratios paired per repetition)")


def main():
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    cmd = sys.argv[1]
    if cmd == "keel":
        cmd_keel(sys.argv[2])
    elif cmd == "callgrind" and len(sys.argv) == 6:
        cmd_callgrind(*sys.argv[2:6])
    elif cmd == "summary" and len(sys.argv) in (4, 5):
        cmd_summary(*sys.argv[2:])
    elif cmd == "http" and len(sys.argv) in (3, 4):
        cmd_http(*sys.argv[2:])
    elif cmd == "pairs" and len(sys.argv) >= 5:
        cmd_pairs(*sys.argv[2:])
    elif cmd == "tls" and len(sys.argv) in (3, 4):
        cmd_tls(*sys.argv[2:])
    elif cmd == "table" and len(sys.argv) == 3:
        cmd_table(sys.argv[2])
    elif cmd == "nats" and len(sys.argv) == 3:
        cmd_nats(sys.argv[2])
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
