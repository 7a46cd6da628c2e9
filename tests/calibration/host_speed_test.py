#!/usr/bin/env python3
"""calibration/scripts/trace_host_speed.py on synthetic Kineto traces with known host-op durations.

Usage: host_speed_test.py SOURCE_DIR (the repository root). Exit 0 when every check holds, 1 otherwise.
"""
import gzip
import json
import os
import subprocess
import sys
import tempfile

SOURCE = sys.argv[1]
SCRIPT = os.path.join(SOURCE, "calibration", "scripts", "trace_host_speed.py")
META = ["aten::view", "aten::as_strided", "aten::transpose", "aten::t", "aten::unsqueeze", "aten::detach",
        "aten::view_as"]
failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAILED:", what)


def write_trace(path, per_op_us, calls=12, extra=()):
    """A trace whose metadata ops take per_op_us[name] (a list cycled over the calls) plus extra events."""
    events = []
    ts = 0.0
    for name, durs in per_op_us.items():
        for i in range(calls):
            events.append({"ph": "X", "cat": "cpu_op", "name": name, "ts": ts, "dur": durs[i % len(durs)]})
            ts += 50.0
    events.extend(extra)
    text = json.dumps({"schemaVersion": 1, "traceEvents": events})
    if path.endswith(".gz"):
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        with open(path, "w") as f:
            f.write(text)


def run(*paths):
    return subprocess.run([sys.executable, SCRIPT, "--json", *paths], capture_output=True, text=True)


with tempfile.TemporaryDirectory() as tmp:
    ref = os.path.join(tmp, "ref.json")
    base = {name: [1.0 + i, 3.0 + i, 2.0 + i] for i, name in enumerate(META)}  # medians 2+i
    # Host work that is not metadata-only (a GEMM's host side, a kernel) must not count.
    noise = [{"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": 0.0, "dur": 500.0},
             *[{"ph": "X", "cat": "kernel", "name": "aten::view", "ts": 0.0, "dur": 900.0}] * 20]
    write_trace(ref, base, extra=noise)

    # Every metadata op 1.5 times as long, in a gzipped trace: the ratio is 1.5 exactly.
    slow = os.path.join(tmp, "slow.json.gz")
    write_trace(slow, {n: [1.5 * d for d in v] for n, v in base.items()})
    # Per-op multipliers 0.5, 0.6, 0.7, 0.8, 0.9, 1.0 and 3.0 (one op far off): the ratio is their median, 0.8.
    mult = [0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 3.0]
    mixed = os.path.join(tmp, "mixed.json")
    write_trace(mixed, {n: [mult[i] * d for d in v] for i, (n, v) in enumerate(base.items())},
                extra=[{"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": 0.0, "dur": 5000.0}])
    r = run(ref, slow, mixed)
    check(r.returncode == 0, f"three traces: exit 0 (got {r.returncode}: {r.stderr})")
    if r.returncode == 0:
        rows = json.loads(r.stdout)
        check(abs(rows[0]["host_time_ratio"] - 1.0) < 1e-12, "the reference trace's ratio is 1")
        check(abs(rows[1]["host_time_ratio"] - 1.5) < 1e-12, f"all ops 1.5x: 1.5 (got {rows[1]['host_time_ratio']})")
        check(abs(rows[2]["host_time_ratio"] - 0.8) < 1e-12, f"mixed: median 0.8 (got {rows[2]['host_time_ratio']})")
        check(all(abs(rows[0]["median_us"][n] - (2.0 + i)) < 1e-12 for i, n in enumerate(META)),
              f"per-op medians in us, of cpu_op events only ({rows[0]['median_us']})")

    # An op with fewer than 10 calls in one trace is left out of every trace's ratio (aten::view, 9 calls at 150x).
    few = os.path.join(tmp, "few.json")
    write_trace(few, {n: [2.0 * d for d in v] for n, v in base.items() if n != "aten::view"})
    with open(few) as f:
        t = json.load(f)
    t["traceEvents"] += [{"ph": "X", "cat": "cpu_op", "name": "aten::view", "ts": 0.0, "dur": 300.0}] * 9
    with open(few, "w") as f:
        json.dump(t, f)
    r = run(ref, few)
    check(r.returncode == 0, "an op under 10 calls: still exit 0")
    if r.returncode == 0:
        rows = json.loads(r.stdout)
        check("aten::view" not in rows[1]["median_us"], "an op under 10 calls is not used")
        check(abs(rows[1]["host_time_ratio"] - 2.0) < 1e-12, "the other ops give 2.0")

    # Refusals, exit 2, naming the file.
    bad = os.path.join(tmp, "truncated.json")
    with open(bad, "w") as f:
        f.write('{"traceEvents": [')
    r = run(ref, bad)
    check(r.returncode == 2 and "truncated.json" in r.stderr, f"a truncated trace: exit 2 naming it ({r.stderr})")
    nolist = os.path.join(tmp, "nolist.json")
    with open(nolist, "w") as f:
        json.dump({"events": []}, f)
    r = run(nolist)
    check(r.returncode == 2 and "nolist.json" in r.stderr and "traceEvents" in r.stderr, "no traceEvents: exit 2")
    empty = os.path.join(tmp, "no_cpu_ops.json")
    write_trace(empty, {})
    r = run(ref, empty)
    check(r.returncode == 2 and "CPU activity" in r.stderr, f"no metadata ops: exit 2 saying why ({r.stderr})")

sys.exit(1 if failures else 0)
