#!/usr/bin/env python3
"""The power-cap clock model's figures from one GPU's power-mix table (docs/calibration.md section 8.1).

Usage: clock_model_derive.py TABLE [--limit W] [--max-mhz F] [--series DIR]
  TABLE: power_mix_table.py's table.md (e.g. calibration/measured/h100x1/session13/power_mix/table.md).
  DIR: the unpacked results.tgz's r/ of power_mix_1gpu.sh, holding PASS/NAME.series.csv (`twinstep run
  --monitor-series`, 1 ms samples) beside PASS/NAME.trace.json; then the clock and power within a step are printed
  too, per quarter of a block (the heavy share comes first in each block, power_mix_schedules.py).

Derived as section 8.1 derives them, from the table only (no step time):
- idle: intercept of mean power against the 4096^3 GEMM's share beside idle (gemm_{25,40,55}_idle, uncapped);
- g (power ~ f^g): that line's GEMM-busy power above idle at max clock against the GEMM alone (gemm_100_idle), capped;
- b (duration ~ f^-b): the GEMM's kernel time in those uncapped mixes against alone;
- W per GEMM shape (by FLOPs): (P - idle) (max / f)^g of each shape_MxNxK alone (orientations of one FLOP count averaged);
- attention: causal attention alone (attention_100_idle), scaled likewise; HBM-bound: elementwise_100_idle alone.
Then the check: the model's steady time-weighted power per mix (its measured shares, time ~ f^-b from its clock) and
the clock it solves, against the measured clock and power."""
import argparse
import csv
import glob
import json
import math
import os
import re
import statistics

GEMM_IDLE_MIXES = ("gemm_25_idle", "gemm_40_idle", "gemm_55_idle")


def read_table(path):
    rows = {}
    for line in open(path):
        c = [x.strip() for x in line.strip().strip("|").split("|")]
        if len(c) != 10 or c[0] == "mix" or c[0].startswith("-"):
            continue
        rows.setdefault(c[0], []).append({"share": float(c[3]), "fill": float(c[4]), "mhz": float(c[5]),
                                          "w": float(c[6]), "us": float(c[8])})
    return rows


def mean(rows, name, key):
    return statistics.mean(r[key] for r in rows[name])


def derive(rows, f_max):
    xs = [r["share"] for n in GEMM_IDLE_MIXES for r in rows[n]]
    ys = [r["w"] for n in GEMM_IDLE_MIXES for r in rows[n]]
    mx, my = statistics.mean(xs), statistics.mean(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    idle = my - slope * mx
    f_alone = mean(rows, "gemm_100_idle", "mhz")
    above_alone = (mean(rows, "gemm_100_idle", "w") - idle) / mean(rows, "gemm_100_idle", "share")
    g = math.log(slope / above_alone) / math.log(f_max / f_alone)
    t_max = statistics.mean(r["us"] for n in GEMM_IDLE_MIXES for r in rows[n])
    b = math.log(mean(rows, "gemm_100_idle", "us") / t_max) / math.log(f_max / f_alone)
    print(f"idle {idle:.1f} W; GEMM-busy {slope:.1f} W above idle at {f_max:.0f} MHz, alone {above_alone:.1f} W at "
          f"{f_alone:.0f} MHz: g {g:.3f}; 4096^3 GEMM {t_max:.1f} us at {f_max:.0f}, "
          f"{mean(rows, 'gemm_100_idle', 'us'):.1f} us alone: b {b:.3f}")
    return idle, round(g, 2), round(b, 2)


def class_powers(rows, idle, g, f_max):
    def above(r):
        return (r["w"] - idle) * (f_max / r["mhz"]) ** g

    shapes = {}
    for n, rs in rows.items():
        if n.startswith("shape_"):
            m, nn, k = map(int, n[len("shape_"):].split("x"))
            shapes.setdefault(2.0 * m * nn * k, []).extend(above(r) for r in rs)
    gemm = [[fl, round(statistics.mean(w), 1)] for fl, w in sorted(shapes.items())]
    attention = statistics.mean(above(r) for r in rows["attention_100_idle"])
    memory = statistics.mean(r["w"] - idle for r in rows["elementwise_100_idle"])
    print("gemm_power_w", gemm)
    print(f"attention_w {attention:.1f}, memory_w {memory:.1f}")
    return gemm[0][1], attention, memory


def check(rows, fig, limit, f_max):
    idle, g, b, w_gemm, w_att, w_mem = fig
    heavy_w = {"gemm": w_gemm, "attention": w_att, "elementwise": w_mem}
    print("| mix | GEMM/attention share | elementwise share | measured MHz | solved MHz | model W at measured MHz "
          "| measured W |\n|---|---:|---:|---|---:|---:|---:|")
    for n in sorted(rows):
        parts = n.split("_")
        if parts[0] not in heavy_w:
            continue
        heavy, sh, fm = parts[0], mean(rows, n, "share"), mean(rows, n, "mhz")
        fill = mean(rows, n, "fill") if heavy != "elementwise" else 0.0
        gh, bh = (0.0, 0.0) if heavy == "elementwise" else (g, b)

        def power(f, sh=sh, fill=fill, fm=fm, gh=gh, bh=bh, heavy=heavy):
            th = sh * (fm / f) ** bh
            step = 1 + th - sh
            return idle + th / step * heavy_w[heavy] * (f / f_max) ** gh + fill / step * w_mem

        lo, hi = 300.0, f_max
        if power(f_max) <= limit:
            lo = f_max
        else:
            for _ in range(60):
                mid = (lo + hi) / 2
                lo, hi = (lo, mid) if power(mid) > limit else (mid, hi)
        clocks = ", ".join(str(int(r["mhz"])) for r in rows[n])
        print(f"| {n} | {sh:.3f} | {fill:.3f} | {clocks} | {lo:.0f} | {power(fm):.0f} | {mean(rows, n, 'w'):.0f} |")


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def series(folder, cap_bit=0x4):
    """Per schedule and pass: the 1 ms samples' clock p10/p50/p90, power p50 and SW-power-cap share per quarter of a
    block. The block period is the measured median step over the schedule's blocks (STEP_S / block, as planned)."""
    print("\nwithin a step (series; q1..q4: quarters of a block, heavy kernels first; MHz p10/p50/p90, W p50, cap share)")
    for path in sorted(glob.glob(os.path.join(folder, "*", "*.series.csv"))):
        name = os.path.basename(path)[:-len(".series.csv")]
        with open(path) as f:
            rows = list(csv.DictReader(line for line in f if not line.startswith("#")))
        if not rows:
            continue
        m = re.search(r"_b(\d+)ms$", name)
        blocks = 1 if name.startswith("shape_") else max(1, int(0.25 / (int(m.group(1)) * 1e-3 if m else 10e-3)))
        trace = path[:-len(".series.csv")] + ".trace.json"
        step_ns = statistics.median(json.load(open(trace))["step_times_ns"]) if os.path.exists(trace) else 0.25e9
        period = step_ns / blocks
        quarters = [[] for _ in range(4)]
        for r in rows:
            quarters[min(3, int((int(r["t_step_ns"]) % period) / period * 4))].append(r)
        cells = []
        for q in quarters:
            if not q:
                cells.append("-")
                continue
            mhz, w = [float(r["sm_clock_mhz"]) for r in q], [float(r["power_w"]) for r in q]
            cap = sum(1 for r in q if int(r["event_reasons"]) & cap_bit) / len(q)
            cells.append(f"{pct(mhz, .1):.0f}/{pct(mhz, .5):.0f}/{pct(mhz, .9):.0f} {pct(w, .5):.0f}W {cap:.2f}")
        pass_name = os.path.basename(os.path.dirname(path))
        print(f"{name} {pass_name}: {len(rows)} samples, block {period * 1e-6:.1f} ms | " + " | ".join(cells))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("table")
    ap.add_argument("--limit", type=float, default=700.0)
    ap.add_argument("--max-mhz", type=float, default=1980.0)
    ap.add_argument("--series", help="power_mix_1gpu.sh's unpacked r/ folder with PASS/NAME.series.csv")
    args = ap.parse_args()
    rows = read_table(args.table)
    idle, g, b = derive(rows, args.max_mhz)
    idle = round(idle)
    w_gemm, w_att, w_mem = class_powers(rows, idle, g, args.max_mhz)
    check(rows, (idle, g, b, w_gemm, round(w_att), round(w_mem)), args.limit, args.max_mhz)
    if args.series:
        series(args.series)


if __name__ == "__main__":
    main()
