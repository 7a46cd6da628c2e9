#!/usr/bin/env python3
"""Tables of the one-H200 clock session (calibration/scripts/clocks_h200x1.sh): per run and per suite group the GPU
monitor's SM clock, power and power-cap share (trace context / raw-line gpu_monitor keys) with nvidia-smi's
20 ms samples over the same windows as a cross-check; per kernel class the ratio of the in-run duration (gpu1.base
measured) to the suite's duration (the same schedule simulated with the profile fitted from this session's suite)
next to the clock ratio; per GEMM shape the in-run duration against the same GEMMs run alone back to back.
Usage: clock_tables.py RESULTS_DIR   (holds run1/run2/gemms .trace.json, pred.json, gemms.pred.json, raw.jsonl,
clocks.csv, marks.txt); prints Markdown."""
import json
import statistics
import sys
import textwrap
from datetime import datetime

D = sys.argv[1]


def load(name):
    return json.load(open(f"{D}/{name}"))


def monitor_of_context(ctx):
    p = "gpu_monitor."
    return {k[len(p):]: v for k, v in ctx.items() if k.startswith(p)}


def kclass(op):
    k = op["kernel"]
    c = k["class"]
    if c == "attention":
        return "attention_bwd" if k.get("backward") else "attention_fwd"
    return c


def durations(trace):
    return {r["op"]: (r["end"] - r["start"]) * 1e-9 for r in trace["records"]}


def smi_window(start, end):
    rows = []
    for line in open(f"{D}/clocks.csv"):
        f = [x.strip() for x in line.split(",")]
        if len(f) < 4 or "MHz" not in f[1]:
            continue
        t = datetime.strptime(f[0], "%Y/%m/%d %H:%M:%S.%f")
        if start <= t <= end:
            rows.append((float(f[1].split()[0]), float(f[2].split()[0]), int(f[3], 16)))
    return rows


def marks():
    m = {}
    for line in open(f"{D}/marks.txt"):
        d, t, name = line.split()
        m[name] = datetime.strptime(f"{d} {t}", "%Y/%m/%d %H:%M:%S.%f")
    return m


def main():
    runs = {n: load(f"{n}.trace.json") for n in ("run1", "gemms", "run2")}
    raw_groups = {}
    for line in open(f"{D}/raw.jsonl"):
        j = json.loads(line)
        if "group" in j and "gpu_monitor" in j:
            raw_groups[j["group"]] = j["gpu_monitor"]
    mk = marks()

    print("### SM clock, power and power cap per run and per suite group (GPU monitor, 5 ms, measured steps only)\n")
    print("| run / group | what | step (median) | SM clock median (min-max) MHz | power mean W | SW power cap share "
          "| samples | nvidia-smi median MHz / W over the window |")
    print("|---|---|---:|---|---:|---:|---:|---|")
    what = {"run1": "gpu1.base (llama3-8b 4 layers, 1 GPU)", "gemms": "gpu1.base's 102 GEMMs alone, back to back",
            "run2": "gpu1.base again"}
    for n, t in runs.items():
        m = monitor_of_context(t["context"])
        step = statistics.median(t["step_times_ns"]) * 1e-6
        w = smi_window(mk[f"{n}.start"], mk[f"{n}.end"])
        loaded = [r for r in w if r[1] > 150]
        smi = (f"{statistics.median(r[0] for r in loaded):.0f} / {statistics.median(r[1] for r in loaded):.0f} "
               f"({len(loaded)} samples)") if loaded else "-"
        print(f"| {n} | {what[n]} | {step:.2f} ms | {m['sm_clock_mhz.median']} ({m['sm_clock_mhz.min']}-"
              f"{m['sm_clock_mhz.max']}) | {float(m['power_w_mean']):.0f} | {float(m['power_cap_fraction']):.2f} "
              f"| {m['samples']} | {smi} |")
    w = smi_window(mk["cal.start"], mk["cal.end"])
    loaded = [r for r in w if r[1] > 150]
    for g, m in raw_groups.items():
        smi = (f"{statistics.median(r[0] for r in loaded):.0f} / {statistics.median(r[1] for r in loaded):.0f} "
               f"(all four groups, {len(loaded)} samples)") if g == "compute.gemm" and loaded else ""
        print(f"| suite {g} | calibration suite group | - | {m['sm_clock_mhz.median']} ({m['sm_clock_mhz.min']}-"
              f"{m['sm_clock_mhz.max']}) | {float(m['power_w_mean']):.0f} | {float(m['power_cap_fraction']):.2f} "
              f"| {m['samples']} | {smi} |")

    # Per kernel class: in-run vs the suite's figure (simulated with this session's profile).
    s = runs["run1"]["schedule"]
    pred = durations(load("pred.json"))
    meas = [durations(runs["run1"]), durations(runs["run2"])]
    run_clock = statistics.mean(float(monitor_of_context(runs[n]["context"])["sm_clock_mhz.median"])
                                for n in ("run1", "run2"))
    group_of = {"gemm": "compute.gemm", "attention_fwd": "compute.attention", "attention_bwd": "compute.attention",
                "elementwise": "compute.memory", "optimizer": "compute.memory"}
    print("\n### Per kernel class: in-run duration / suite duration, next to the clock ratio\n")
    print(textwrap.fill(f"In-run: gpu1.base, run1 and run2 (mean SM clock median {run_clock:.0f} MHz). Suite: the "
                        "same ops simulated (analytic) with the profile fitted from this session's suite, i.e. the "
                        "suite's figures interpolated to each shape. Clock ratio = suite group's SM clock / in-run SM "
                        "clock: what in-run / suite would be if duration scaled as 1/clock.", 116) + "\n")
    print("| class | ops | in-run ms (run1, run2) | suite ms | in-run / suite | suite group (clock MHz) "
          "| clock ratio suite/run |")
    print("|---|---:|---|---:|---:|---|---:|")
    classes = {}
    for op in s["ops"]:
        classes.setdefault(kclass(op), []).append(op["id"])
    for c in ("gemm", "attention_fwd", "attention_bwd", "elementwise", "optimizer"):
        ids = classes.get(c, [])
        if not ids:
            continue
        m = [sum(x[i] for i in ids) for x in meas]
        p = sum(pred[i] for i in ids)
        g = group_of[c]
        gclock = float(raw_groups[g]["sm_clock_mhz.median"])
        print(f"| {c} | {len(ids)} | {m[0]*1e3:.2f}, {m[1]*1e3:.2f} | {p*1e3:.2f} | {statistics.mean(m)/p:.3f} "
              f"| {g} ({gclock:.0f}) | {gclock/run_clock:.3f} |")
    tot_m = [statistics.median(runs[n]["step_times_ns"]) * 1e-6 for n in ("run1", "run2")]
    tot_p = load("pred.json")["step_times_ns"][0] * 1e-6
    print(f"| step | {len(s['ops'])} | {tot_m[0]:.2f}, {tot_m[1]:.2f} | {tot_p:.2f} | "
          f"{statistics.mean(tot_m)/tot_p:.3f} | | |")

    # Per GEMM shape: in-run against the same GEMMs alone (joined by op name), and against the suite's figure.
    g = runs["gemms"]
    gd = durations(g)
    gpred = durations(load("gemms.pred.json"))
    gclock = float(monitor_of_context(g["context"])["sm_clock_mhz.median"])
    by_name = {op["name"]: op["id"] for op in s["ops"]}
    shapes = {}
    for op in g["schedule"]["ops"]:
        k = op["kernel"]
        key = (k["m"], k["n"], k["k"])
        rid = by_name[op["name"]]
        e = shapes.setdefault(key, [0, 0.0, 0.0, 0.0])
        e[0] += 1
        e[1] += statistics.mean(x[rid] for x in meas)
        e[2] += gd[op["id"]]
        e[3] += gpred[op["id"]]
    print(f"\n### Per GEMM shape: in-run (gpu1.base, {run_clock:.0f} MHz), the same GEMMs alone ({gclock:.0f} MHz), "
          "the suite's figure\n")
    print(f"Clock ratio alone/in-run: {gclock/run_clock:.3f}.\n")
    print("| m x n x k | ops | in-run ms | alone ms | in-run / alone | suite ms | alone / suite |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    tm = ta = tp = 0.0
    for key in sorted(shapes, key=lambda k: -shapes[k][1]):
        n, m, a, p = shapes[key]
        tm, ta, tp = tm + m, ta + a, tp + p
        print(f"| {key[0]} x {key[1]} x {key[2]} | {n} | {m*1e3:.3f} | {a*1e3:.3f} | {m/a:.3f} | {p*1e3:.3f} "
              f"| {a/p:.3f} |")
    print(f"| all | {sum(v[0] for v in shapes.values())} | {tm*1e3:.3f} | {ta*1e3:.3f} | {tm/ta:.3f} | {tp*1e3:.3f} "
          f"| {ta/tp:.3f} |")


if __name__ == "__main__":
    main()
