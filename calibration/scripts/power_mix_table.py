#!/usr/bin/env python3
"""Tabulates a power-mix session (calibration/scripts/power_mix_schedules.py run by the backend): per run, the GPU
monitor's SM clock and power, the measured share of the step each kernel class kept the GPU busy, and the median
duration of the heavy kernel (GEMM or attention) next to what 1/clock scaling from the fastest run would give.

Usage: power_mix_table.py DIR   (DIR/a and DIR/b: the two passes, <name>.trace.json each)"""
import json
import os
import statistics
import sys


def name_kind(path):
    """The heavy kernel's class of a run named <kind>_<share>_<filler>[_b<ms>ms] or shape_MxNxK."""
    kind = os.path.basename(path).split("_")[0]
    return {"shape": "gemm", "attnnc": "attention"}.get(kind, kind)


def load(path):
    t = json.load(open(path))
    ops = {o["id"]: o for o in t["schedule"]["ops"]}
    c = t["context"]
    busy, heavy = {}, []
    for r in t["records"]:
        o = ops[r["op"]]
        if o.get("kind") != "compute":
            continue
        cls = o["kernel"]["class"]
        d = r["end"] - r["start"]
        busy[cls] = busy.get(cls, 0) + d
        if cls == name_kind(path):
            heavy.append(d)
    step = statistics.median(t["step_times_ns"])
    return {
        "clock": float(c.get("gpu_monitor.sm_clock_mhz.median", "nan")),
        "power": float(c.get("gpu_monitor.power_w_mean", "nan")),
        "cap": float(c.get("gpu_monitor.power_cap_fraction", "nan")),
        "share": {k: v / step for k, v in busy.items()},
        "heavy_us": statistics.median(heavy) / 1e3 if heavy else float("nan"),
        "step_ms": step / 1e6,
    }


def main():
    d = sys.argv[1]
    names = [n[: -len(".trace.json")] for n in sorted(os.listdir(os.path.join(d, "a"))) if n.endswith(".trace.json")]
    rows = []
    for n in names:
        runs = [load(os.path.join(d, p, n + ".trace.json")) for p in ("a", "b")
                if os.path.exists(os.path.join(d, p, n + ".trace.json"))]
        rows.append((n, runs))
    fastest = {}
    for n, runs in rows:
        kind = n.split("_")[0] if not n.startswith("shape_") else n
        for r in runs:
            if kind not in fastest or r["heavy_us"] < fastest[kind][0]:
                fastest[kind] = (r["heavy_us"], r["clock"])
    print("| mix | pass | step ms | heavy share | filler share | SM clock MHz | power W | cap share | heavy kernel us |"
          " 1/clock from fastest us |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n, runs in rows:
        kind = n.split("_")[0] if not n.startswith("shape_") else n
        for p, r in zip("ab", runs):
            hs = r["share"].get(name_kind(n), 0)
            fs = r["share"].get("elementwise", 0)
            f_us, f_clk = fastest[kind]
            print(f"| {n} | {p} | {r['step_ms']:.1f} | {hs:.3f} | {fs:.3f} | {r['clock']:.0f} | {r['power']:.0f} | "
                  f"{r['cap']:.2f} | {r['heavy_us']:.1f} | {f_us * f_clk / r['clock']:.1f} |")


if __name__ == "__main__":
    main()
