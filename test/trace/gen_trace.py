#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""gen_trace.py: write keel trace files for testing tools/keel-trace.

    gen_trace.py fixture OUT      the scripted trace test_trace_tool.sh checks
    gen_trace.py load OUT [--loops N] [--conns N] [--ms N] [--seed N]
                                  a busy echo-server-like trace, for pictures
                                  and for size (--ms 20000 gives ~100 MB)

The format is the one include/keel/trace.h describes (version 1): a 32-byte
header, then records (u32 kind, loop, count, extra) with EVENTS, STRING and
LOOP bodies, little-endian, events of 32 bytes. The writer here is
independent of the C reader on purpose, so that the two check each other.
"""
import heapq
import random
import struct
import sys

MAGIC = b"KEELTRC1"
REC_EVENTS, REC_STRING, REC_LOOP = 1, 2, 3
(SPAWN, STEP_BEGIN, STEP_END, WAIT, EXIT, ABORT, OP_SUBMIT, OP_COMPLETE,
 TIMER_FIRE, LOOP_IDLE, LOOP_WAKE, MB_SEND, MB_RECV, MB_FULL, MB_DROP,
 MSG_SEND, MSG_RECV, SUP_RESTART, SUP_ESCALATE, STALL, INFLIGHT,
 FAULT) = range(1, 23)
FAULT_ERROR, FAULT_SHORT = 1, 2
# IORING_OP_* numbers (liburing 2.3).
OP_NOP, OP_TIMEOUT, OP_ACCEPT, OP_READ, OP_SEND, OP_RECV = 0, 11, 13, 22, 26, 27
NO_TASK = 0xFFFFFFFF
U64 = (1 << 64) - 1
EVENT = struct.Struct("<QBBHIQQ")


class S(str):
    """A string reference in an event field: written as a STRING record
    before the first record that uses it, and replaced by its id."""


class Fresh(S):
    """A string reference that gets an id of its own even if its text was
    sent before, as keel does (it interns per loop)."""


class Writer:
    def __init__(self, path, start_mono=5_000_000_000,
                 start_real=1_700_000_000_123_456_789):
        self.f = open(path, "wb")
        self.f.write(MAGIC + struct.pack("<IIQQ", 1, 32, start_mono,
                                         start_real))
        self.ids = {}
        self.next_id = 0

    def record(self, kind, loop, count, extra, body=b""):
        self.f.write(struct.pack("<IIII", kind, loop, count, extra) + body)

    def string_id(self, text):
        if text not in self.ids or isinstance(text, Fresh):
            self.next_id += 1
            self.ids[str(text)] = self.next_id
            data = text.encode()
            pad = b"\0" * (-len(data) % 8)
            self.record(REC_STRING, 0, len(data), self.next_id, data + pad)
        return self.ids[str(text)]

    def field(self, v):
        if isinstance(v, S):
            return self.string_id(v)
        return v & U64  # negative results as two's complement

    def loop(self, index, tid):
        self.record(REC_LOOP, index, 0, tid)

    def events(self, loop, evs, dropped=0):
        body = b"".join(EVENT.pack(ts, ty, op, 0, task, self.field(a),
                                   self.field(b))
                        for ts, ty, op, task, a, b in evs)
        self.record(REC_EVENTS, loop, len(evs), dropped, body)

    def close(self):
        self.f.close()


class Loop:
    """Events of one loop, in time order; DROP marks lost events."""

    def __init__(self):
        self.evs = []

    def ev(self, ts, ty, task=NO_TASK, a=0, b=0, op=0):
        self.evs.append((ts, ty, op, task, a, b))

    def drop(self, n):
        self.evs.append(("DROP", n))


def flush(w, loops, per_record):
    """Interleave the loops' events in records of per_record events, as a
    writer thread handed several buffers would."""
    queues = [(i, list(l.evs)) for i, l in enumerate(loops)]
    while any(q for _, q in queues):
        for i, q in queues:
            dropped = 0
            if q and q[0][0] == "DROP":
                dropped = q.pop(0)[1]
            chunk = []
            while q and q[0][0] != "DROP" and len(chunk) < per_record:
                chunk.append(q.pop(0))
            if chunk or dropped:
                w.events(i, chunk, dropped)


def fixture(path):
    """The scripted trace. test_trace_tool.sh checks the numbers the
    comments state."""
    w = Writer(path)
    w.loop(0, 1001)
    w.loop(1, 1002)
    l0, l1 = Loop(), Loop()
    # loop 0: an acceptor (slot 0) accepts once (7.5us) and spawns a
    # connection (slot 1), then messages loop 1 (flow 77).
    l0.ev(1_000, SPAWN, 0, S("acceptor"), 0)
    l0.ev(2_000, STEP_BEGIN, 0)
    l0.ev(2_500, OP_SUBMIT, 0, 1, op=OP_ACCEPT)
    l0.ev(2_600, WAIT, 0, S("keel.c:10 accept"))
    l0.ev(3_000, STEP_END, 0, 1)                      # step: 1.00us
    l0.ev(10_000, OP_COMPLETE, 0, 5, 7_500, op=OP_ACCEPT)
    l0.ev(10_100, STEP_BEGIN, 0)                     # from keel.c:10 accept
    l0.ev(10_200, SPAWN, 1, S("conn"), 1)            # spawner: slot 0
    l0.ev(10_300, MSG_SEND, 0, 77, 1)
    l0.ev(10_400, WAIT, 0, S("keel.c:10 accept"))
    l0.ev(11_000, STEP_END, 0, 1)                    # step: 900ns
    # The connection: 10 recvs of 1..10us (the last fails: -104), 9 sends
    # of 2us. Its steps take 1us, but for the 4th: 25ms, a stall. As keel
    # does, it records its await site (WAIT) just after each step ends.
    t = 20_000
    for i in range(10):
        l0.ev(t, STEP_BEGIN, 1)
        if i > 0:
            l0.ev(t + 100, OP_SUBMIT, 1, 100 + i, op=OP_SEND)
        l0.ev(t + 200, OP_SUBMIT, 1, 200 + i, op=OP_RECV)
        dur = 25_000_000 if i == 3 else 1_000
        l0.ev(t + dur, STEP_END, 1, 1)
        l0.ev(t + dur + 5, WAIT, 1, S("echo.c:40 recv"))
        if i == 3:
            l0.ev(t + dur + 10, STALL, 1, 25_000_000, S("echo.c:44 send"))
        t += dur
        if i > 0:
            l0.ev(t + 2_000, OP_COMPLETE, 1, 64, 2_000, op=OP_SEND)
        res = -104 if i == 9 else 64
        l0.ev(t + 200 + (i + 1) * 1_000, OP_COMPLETE, 1, res,
              (i + 1) * 1_000, op=OP_RECV)
        t += 200 + (i + 1) * 1_000 + 5_000
        if i == 5:
            l0.drop(3)   # the writer fell behind: 3 events lost
    # It panics in its last step (keel ends an aborted step with 3).
    l0.ev(t, STEP_BEGIN, 1)
    l0.ev(t + 500, ABORT, 1, S("boom: bad header"), S("echo.c:52"))
    l0.ev(t + 600, STEP_END, 1, 3)
    l0.ev(t + 700, EXIT, 1, -1)
    end0 = t + 700
    # loop 1: a supervisor "pool" (slot 0) receives the message, spawns a
    # worker (slot 1) and mails it twice (mailbox 5); the worker runs a
    # nop (500ns), exits, is restarted twice, then the pool escalates.
    l1.ev(5_000, SPAWN, 0, S("pool"), 0)
    l1.ev(9_000, LOOP_IDLE, NO_TASK, -1)
    l1.ev(12_000, LOOP_WAKE, NO_TASK, 1)
    l1.ev(12_100, MSG_RECV, NO_TASK, 77, 0)
    l1.ev(12_200, STEP_BEGIN, 0)
    l1.ev(12_300, SPAWN, 1, S("worker"), 1)
    l1.ev(12_400, MB_SEND, 0, 5, 1)
    l1.ev(12_500, MB_SEND, 0, 5, 2)
    l1.ev(12_600, WAIT, 0, S("sup.c:7 child exit"))
    l1.ev(14_200, STEP_END, 0, 1)                    # step: 2.00us
    l1.ev(14_300, STEP_BEGIN, 1)
    l1.ev(14_400, MB_RECV, 1, 5, 1)
    l1.ev(14_500, MB_RECV, 1, 5, 0)
    l1.ev(14_600, OP_SUBMIT, 1, 1, op=OP_NOP)
    l1.ev(14_610, INFLIGHT, NO_TASK, 1)
    # Injected faults (KEEL_FAULTS): two resets of a recv, a short send.
    l1.ev(14_620, FAULT, 1, FAULT_ERROR, 104, op=OP_RECV)
    l1.ev(14_630, FAULT, 1, FAULT_ERROR, 104, op=OP_RECV)
    l1.ev(14_680, FAULT, 1, FAULT_SHORT, 17, op=OP_SEND)
    l1.ev(14_700, WAIT, 1, S("worker.c:20 nop"))
    l1.ev(15_300, STEP_END, 1, 1)                    # step: 1.00us
    l1.ev(15_350, OP_COMPLETE, 1, 0, 500, op=OP_NOP)
    l1.ev(15_360, INFLIGHT, NO_TASK, 0)
    l1.ev(15_400, TIMER_FIRE, NO_TASK, 1_500)
    l1.ev(16_000, STEP_BEGIN, 1)
    l1.ev(16_300, STEP_END, 1, 2)                    # step: 300ns
    l1.ev(16_400, EXIT, 1, 0)
    l1.ev(16_500, STEP_BEGIN, 0)
    l1.ev(16_600, SUP_RESTART, 0, S("worker"), 1)
    # The same texts under new ids: counted as one name all the same.
    l1.ev(16_700, SPAWN, 1, Fresh("worker"), 1)
    l1.ev(16_800, SUP_RESTART, 0, Fresh("worker"), 2)
    l1.ev(16_900, SUP_ESCALATE, 0, S("pool"))
    l1.ev(17_500, STEP_END, 0, 1)                    # step: 1.00us
    w.loop(1, 1002)   # a LOOP record may come again: harmless
    flush(w, [l0, l1], 7)
    w.close()
    return end0


class Sim:
    """One loop of an echo-like server: connections that recv and send,
    a few slow steps, panics and restarts, mailboxes, idle waits."""

    def __init__(self, w, index, conns, end_ns, rng, nloops):
        self.w, self.index, self.rng, self.end = w, index, rng, end_ns
        self.nloops = nloops
        self.buf = []
        self.t = 0
        self.inflight = 0
        self.pending = []   # (completion ts, seq, slot, op, submit ts)
        self.seq = 0
        self.flow = index << 32
        self.conns = conns
        self.depth = 0

    def ev(self, ty, task=NO_TASK, a=0, b=0, op=0, ts=None):
        self.buf.append((self.t if ts is None else ts, ty, op, task, a, b))
        if len(self.buf) >= 2048:
            self.w.events(self.index, self.buf)
            self.buf = []

    def step_time(self):
        r = self.rng.random()
        if r < 0.00002:
            return int(self.rng.uniform(2e6, 12e6))  # a stall
        if r < 0.005:
            return int(self.rng.lognormvariate(10, 0.8))   # ~22us
        return int(self.rng.lognormvariate(7.6, 0.5))      # ~2us

    def submit(self, slot, op):
        lat = {OP_RECV: self.rng.lognormvariate(12.3, 0.9),
               OP_SEND: self.rng.lognormvariate(8.5, 0.4),
               OP_TIMEOUT: 1e6,
               OP_ACCEPT: self.rng.lognormvariate(12, 1)}[op]
        self.ev(OP_SUBMIT, slot, self.seq, op=op)
        heapq.heappush(self.pending,
                       (self.t + int(lat), self.seq, slot, op, self.t))
        self.seq += 1
        self.inflight += 1

    def step(self, slot, name, done=OP_SEND):
        # An echo connection: a completed recv is followed by a send, and
        # a completed send by the next recv.
        op = OP_SEND if done == OP_RECV else OP_RECV
        site = S("echo.c:%d %s" % ((40, "recv") if op == OP_RECV
                                   else (44, "send")))
        self.ev(STEP_BEGIN, slot)
        if self.rng.random() < 0.01:
            self.depth += 1
            self.ev(MB_SEND, slot, 1000 + self.index, self.depth)
        if self.depth and self.rng.random() < 0.02:
            self.depth -= 1
            self.ev(MB_RECV, slot, 1000 + self.index, self.depth)
        if self.nloops > 1 and self.rng.random() < 0.002:
            self.flow += 1
            self.ev(MSG_SEND, slot, self.flow,
                    (self.index + 1) % self.nloops)
        dur = self.step_time()
        if self.rng.random() < 0.0005 and slot:
            self.t += dur // 2
            self.ev(ABORT, slot, S(self.rng.choice(
                ["bad request header", "assertion len <= cap failed",
                 "peer sent garbage"])), S("echo.c:61"))
            self.t += dur // 2
            self.ev(STEP_END, slot, 2)
            self.ev(EXIT, slot, -1)
            self.ev(SUP_RESTART, 0, S(name), self.rng.randint(1, 5))
            self.ev(SPAWN, slot, S(name), 1)
            self.submit(slot, OP_RECV)
            return
        self.submit(slot, op)
        self.ev(WAIT, slot, site)
        self.t += dur
        self.ev(STEP_END, slot, 1)
        if dur > 1_000_000:
            self.ev(STALL, slot, dur, site)

    def run(self):
        names = ["conn", "conn", "conn", "session", "tls"]
        self.ev(SPAWN, 0, S("acceptor"), 0)
        for slot in range(1, self.conns + 1):
            name = S(names[slot % len(names)])
            self.t += 3000
            self.ev(SPAWN, slot, name, 1)
            self.step(slot, name)
        while self.t < self.end:
            when, _, slot, op, sub = heapq.heappop(self.pending)
            if when > self.t + 20_000:
                self.ev(LOOP_IDLE, NO_TASK, -1)
                self.t = when
                self.ev(LOOP_WAKE, NO_TASK, 1)
            self.t = max(self.t, when)
            self.inflight -= 1
            self.ev(OP_COMPLETE, slot, 64, self.t - sub, op=op)
            self.step(slot, S(names[slot % len(names)]), op)
            if self.rng.random() < 0.001:
                self.ev(TIMER_FIRE, NO_TASK, self.rng.randint(0, 50_000))
        if self.buf:
            self.w.events(self.index, self.buf)


def load(path, loops=4, conns=24, ms=400, seed=1):
    rng = random.Random(seed)
    w = Writer(path)
    sims = []
    for i in range(loops):
        w.loop(i, 4000 + i)
        sims.append(Sim(w, i, conns, ms * 1_000_000, rng, loops))
    for s in sims:   # each loop's records in turn: order across loops is free
        s.run()
    w.close()


def main(argv):
    if len(argv) < 3 or argv[1] not in ("fixture", "load"):
        sys.stderr.write(__doc__)
        return 2
    if argv[1] == "fixture":
        fixture(argv[2])
        return 0
    opts = {"--loops": 4, "--conns": 24, "--ms": 400, "--seed": 1}
    args = argv[3:]
    while args:
        if args[0] not in opts or len(args) < 2:
            sys.stderr.write(__doc__)
            return 2
        opts[args[0]] = int(args[1])
        args = args[2:]
    load(argv[2], opts["--loops"], opts["--conns"], opts["--ms"],
         opts["--seed"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
