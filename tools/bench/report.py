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
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
