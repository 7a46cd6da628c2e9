#!/usr/bin/env python3
"""How fast the host ran in each PyTorch profiler trace, from the ops whose host cost does not depend on the data.

Issue 19's cross-fit check (cross_fit_check.sh) carries a fit's host cost per op (`launch.compute`, the median gap
between op issues in the fitted trace) to other layouts. That figure is the framework's cost on the host that
recorded the trace, so it only transfers when the other layout's run had a host of the same speed. This script
measures the host's speed in each trace from ATen's metadata-only ops (`aten::view`, `aten::as_strided`,
`aten::transpose`, `aten::t`, `aten::unsqueeze`, `aten::detach`, `aten::view_as`): they build a tensor header and
never touch the data or the GPU, so their host time is the same CPU work at every sequence length, micro-batch count
and dtype. The result per trace is the median over those op names (each present at least MIN_CALLS times in every
trace) of that op's median duration divided by the same op's median duration in the reference trace (the first one
given): 1.5 means the same host work took 1.5 times as long as in the reference trace. Compare only traces of the
same framework code (another sequence length or micro-batch count): fp8 or another model calls these ops from
other code paths (session 14's fp8 trace: 0.59 here, while its host cost per op was 0.87 of the bf16 one's).

Usage: trace_host_speed.py [--json] TRACE [TRACE...]   (Kineto JSON, .json or .json.gz; the first is the reference)
Prints one line per trace: the ratio, and the per-op medians in microseconds. Exit 2 on a file that is not a
Kineto trace or when the traces share no metadata op with MIN_CALLS calls each.
"""
import gzip
import json
import statistics
import sys

METADATA_OPS = ("aten::view", "aten::as_strided", "aten::transpose", "aten::t", "aten::unsqueeze", "aten::detach",
                "aten::view_as")
MIN_CALLS = 10


def fail(msg):
    print(f"trace_host_speed.py: {msg}", file=sys.stderr)
    sys.exit(2)


def op_durations(path):
    """Per metadata op name, the durations (us) of its complete `cpu_op` events in the Kineto trace at path."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rt") as f:
            trace = json.load(f)
    except (OSError, ValueError) as e:
        fail(f"{path}: not a readable JSON trace ({e}); give a PyTorch profiler trace (.json or .json.gz)")
    if not isinstance(trace, dict) or not isinstance(trace.get("traceEvents"), list):
        fail(f"{path}: no traceEvents list; give a PyTorch profiler (Kineto) trace")
    durations = {name: [] for name in METADATA_OPS}
    for e in trace["traceEvents"]:
        if e.get("ph") == "X" and e.get("cat") == "cpu_op" and e.get("name") in durations and "dur" in e:
            durations[e["name"]].append(float(e["dur"]))
    return durations


def host_speed(paths):
    """[(path, ratio to the first trace, {op: median us})] over the metadata ops every trace has MIN_CALLS times."""
    per_trace = [op_durations(p) for p in paths]
    names = [n for n in METADATA_OPS if all(len(d[n]) >= MIN_CALLS for d in per_trace)]
    if not names:
        fail(f"no metadata op ({', '.join(METADATA_OPS)}) has {MIN_CALLS} cpu_op events in every trace; "
             "record the trace with torch.profiler's CPU activity on")
    medians = [{n: statistics.median(d[n]) for n in names} for d in per_trace]
    ref = medians[0]
    return [(p, statistics.median(m[n] / ref[n] for n in names), m) for p, m in zip(paths, medians)]


def main(argv):
    as_json = argv[:1] == ["--json"]
    paths = argv[1:] if as_json else argv
    if not paths:
        fail("usage: trace_host_speed.py [--json] TRACE [TRACE...] (the first trace is the reference)")
    rows = host_speed(paths)
    if as_json:
        print(json.dumps([{"trace": p, "host_time_ratio": r, "median_us": m} for p, r, m in rows], indent=1))
        return
    for p, r, m in rows:
        print(f"{r:6.3f}  {p}  " + " ".join(f"{n.split('::')[1]}={v:.2f}" for n, v in m.items()))


if __name__ == "__main__":
    main(sys.argv[1:])
