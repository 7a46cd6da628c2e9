#!/usr/bin/env python3
"""GPU check of `twinstep run --monitor-series` (label gpu): a one-GPU schedule of 20 GEMMs (~1 ms each), 3 measured
steps at TWINSTEP_GPU_MONITOR_INTERVAL_MS=1; the CSV must hold rank 0's samples with strictly increasing t_ns, steps
0..2 in order, 0 <= t_step_ns <= t_ns, and as many samples as the trace's gpu_monitor.samples.

usage: monitor_series_check.py TWINSTEP OUT_DIR"""
import csv
import json
import os
import subprocess
import sys


def main():
    twinstep, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    ops = [{"id": i, "rank": 0, "name": f"gemm.{i}", "kind": "compute", "stream": "compute", "deps": [],
            "kernel": {"class": "gemm", "m": 8192, "n": 8192, "k": 8192, "batch": 1, "dtype": "bf16"}}
           for i in range(20)]
    schedule = {"schema_version": 1, "name": "series_check", "world_size": 1, "ranks": [0],
                "streams": [{"name": "compute", "priority": 0}], "communicators": [], "ops": ops, "meta": {},
                "warnings": []}
    sched, trace, series = (os.path.join(out, n) for n in ("series_schedule.json", "series_trace.json", "series.csv"))
    with open(sched, "w") as f:
        json.dump(schedule, f)
    env = dict(os.environ, TWINSTEP_GPU_MONITOR_INTERVAL_MS="1")
    subprocess.run([twinstep, "run", sched, "-o", trace, "--warmup", "1", "--steps", "3", "--monitor-series", series],
                   check=True, env=env)
    with open(series) as f:
        lines = f.read().splitlines()
    comments = [l for l in lines if l.startswith("#")]
    assert any(l.startswith("# rank 0: ") and "every 1 ms" in l for l in comments), comments
    rows = list(csv.DictReader(l for l in lines if not l.startswith("#")))
    ctx = json.load(open(trace))["context"]
    assert len(rows) == int(ctx["gpu_monitor.samples"]), (len(rows), ctx["gpu_monitor.samples"])
    assert len(rows) >= 15, len(rows)
    prev_t, prev_step = -1, 0
    for r in rows:
        t, step, ts = int(r["t_ns"]), int(r["step"]), int(r["t_step_ns"])
        assert r["rank"] == "0" and t > prev_t and prev_step <= step <= 2 and 0 <= ts <= t, r
        assert 300 < float(r["sm_clock_mhz"]) < 2500 and float(r["power_w"]) > 50, r
        prev_t, prev_step = t, step
    assert prev_step == 2, "no sample in the last measured step"
    print(f"ok: {len(rows)} samples over 3 steps, last t_ns {prev_t}")


if __name__ == "__main__":
    main()
