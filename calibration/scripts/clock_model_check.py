#!/usr/bin/env python3
"""The power-cap clock model of docs/calibration.md section 8, checked outside the simulator (issues 21/17/19).

Usage: clock_model_check.py TRACES PROFILE OUT [--twinstep T] [--cluster C] [--comm-w W] [--gemm-w W]
  TRACES: measured traces carrying gpu_monitor.* (the clock each rank held), e.g. the two-H200 re-measure at df225ea
  (`git show b8c1c89:calibration/validation/measured_df225ea/<case>.trace.json`).

Per case, three predictions with `twinstep simulate` (analytic, the schedule embedded in the trace), tabulated by
validation_table.py: OUT/base (PROFILE as it is), OUT/model (PROFILE rescaled to the clock the model solves),
OUT/oracle (PROFILE rescaled to the lowest clock any rank of the case held: what a perfect clock model could give;
only for traces with gpu_monitor.*).
OUT/clocks.md: solved and measured clock per case.

The model. Per rank of the base prediction: busy time t_c per class (compute ops by class, comm ops apart); the
compute tables were measured at the clocks MEASURED_MHZ (the suite groups' GPU monitor); at clock f a compute-bound
class takes t_c (f_c / f)^BETA, memory-bound classes and comm do not change; the step T(f) changes by the sum of
those. Power P(f) = P_IDLE + sum_c t_c(f) / T(f) * W_c * (f / F_MAX)^GAMMA_c; the clock is F_MAX where P(F_MAX) <=
LIMIT, else where P(f) = LIMIT (bisection). The case's clock is the lowest over its ranks (the slowest stage sets the
step: an approximation; the simulator takes one profile for every rank). Parameters, none from step times:
- P_IDLE 116 W, GAMMA 1.9 (GEMM power ~ f^1.9 between 1575 and 1980 MHz), BETA 0.74 (the 4096^3 GEMM's duration
  ~ f^-0.74), attention 429 W and HBM-bound kernels 384 W above idle at 1980 MHz: the power-mix microbenchmark on one
  H200 (calibration/measured/h200x1/power_mix/README.md).
- GEMM power per shape: each of the validation model's GEMM shapes alone on the two-H200 machine settles at
  f_s = 1425-1530 MHz at ~690 W (calibration/measured/h200x2/power/README.md); W_s = (P_s - P_IDLE) (F_MAX / f_s)^
  GAMMA = 948-1077 W above idle at 1980 MHz, interpolated in log(FLOPs) per op (grouped GEMMs too); --gemm-w W
  replaces the table by one figure (884 W: the 4096^3 GEMM on the one-H200 machine).
- comm ops: --comm-w (default 0: a simulated comm op spans its wait for the peer, when the GPU draws little; the
  collective sweeps' ~200 W above idle, calibration/measured/h200x2/coll_gate_a.raw.jsonl, is the other bound).
- MEASURED_MHZ: the suite's compute groups with the monitor on the two-H200 machine
  (`git show b8c1c89:calibration/validation/measured_df225ea/compute_groups_monitor.raw.jsonl`): gemm 1500,
  grouped_gemm 1890 (1950/1830), attention 1980; memory groups 1980 (not rescaled)."""
import argparse
import bisect
import json
import math
import os
import statistics
import subprocess
import sys

P_IDLE, LIMIT, F_MAX, GAMMA, BETA = 116.0, 700.0, 1980.0, 1.9, 0.74
W_OTHER = {"attention": 429.0, "memory": 384.0}
MEASURED_MHZ = {"gemm": 1500.0, "grouped_gemm": 1890.0, "attention_fwd": 1980.0, "attention_bwd": 1980.0}
# (m, n, k, settled MHz, mean W) of each shape alone, two passes averaged (h200x2/power/README.md).
SHAPES = [(4096, 6144, 4096, 1492.5, 692.0), (4096, 4096, 4096, 1522.5, 691.0), (4096, 28672, 4096, 1455, 689.5),
          (4096, 4096, 14336, 1492.5, 691.5), (4096, 128256, 4096, 1425, 692.5), (128256, 4096, 4096, 1440, 691.5)]


def gemm_power_table():
    pts = sorted((math.log(2.0 * m * n * k), (p - P_IDLE) * (F_MAX / f) ** GAMMA) for m, n, k, f, p in SHAPES)
    return [x for x, _ in pts], [w for _, w in pts]


def gemm_w(flops, table, fixed):
    if fixed:
        return fixed
    xs, ws = table
    x = math.log(flops)
    if x <= xs[0]:
        return ws[0]
    if x >= xs[-1]:
        return ws[-1]
    i = bisect.bisect_right(xs, x)
    return ws[i - 1] + (ws[i] - ws[i - 1]) * (x - xs[i - 1]) / (xs[i] - xs[i - 1])


def rank_loads(trace, args):
    """Per rank: {class: (busy s, W at F_MAX, GAMMA, reference MHz or None)}, GEMM power time-weighted over shapes."""
    ops = {o["id"]: o for o in trace["schedule"]["ops"]}
    table = gemm_power_table()
    loads = {}
    for r in trace["records"]:
        o = ops[r["op"]]
        d = (r["end"] - r["start"]) * 1e-9
        if o["kind"] == "compute":
            k = o["kernel"]
            c = k["class"]
            if c in ("gemm", "grouped_gemm"):
                m = k.get("m", 1)
                flops = 2.0 * (sum(m) if isinstance(m, list) else m) * k["n"] * k["k"] * k.get("batch", 1)
                key, w, g, ref = c, gemm_w(flops, table, args.gemm_w), GAMMA, MEASURED_MHZ[c]
            elif c == "attention":
                key = "attention_bwd" if k.get("backward") else "attention_fwd"
                w, g, ref = W_OTHER["attention"], GAMMA, MEASURED_MHZ[key]
            else:
                key, w, g, ref = "memory", W_OTHER["memory"], 0.0, None
        elif o["kind"] in ("collective", "send", "recv"):
            key, w, g, ref = "comm", args.comm_w, 0.0, None
        else:
            continue
        per = loads.setdefault(r["rank"], {})
        t, e, _, _ = per.get(key, (0.0, 0.0, g, ref))
        per[key] = (t + d, e + d * w, g, ref)  # e: W x s, divided by t below
    return {rk: {c: (t, e / t if t else 0.0, g, ref) for c, (t, e, g, ref) in per.items()} for rk, per in loads.items()}


def solve(load, step_s):
    def power(f):
        ts = {c: t * (ref / f) ** BETA if ref else t for c, (t, _, _, ref) in load.items()}
        total = step_s + sum(ts[c] - load[c][0] for c in load)
        return P_IDLE + sum(ts[c] / total * w * (f / F_MAX) ** g for c, (_, w, g, _) in load.items())

    if power(F_MAX) <= LIMIT:
        return F_MAX
    lo, hi = 300.0, F_MAX
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if power(mid) > LIMIT else (mid, hi)
    return lo


def rescaled(profile, f):
    p = json.loads(json.dumps(profile))
    for table, ref in MEASURED_MHZ.items():
        if table in p["compute"]:
            p["compute"][table] = [[w, e * (f / ref) ** BETA] for w, e in p["compute"][table]]
    return p


def simulate(args, sched, gpus, profile_path, out):
    subprocess.run([args.twinstep, "simulate", sched, "--cluster", args.cluster, "--gpus", str(gpus), "--fidelity",
                    "analytic", "--profile", profile_path, "-o", out], check=True, stdout=subprocess.DEVNULL)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("traces")
    ap.add_argument("profile")
    ap.add_argument("out")
    ap.add_argument("--twinstep", default="build/cli/twinstep")
    ap.add_argument("--cluster", default="h200x2-nvlink")
    ap.add_argument("--comm-w", type=float, default=0.0)
    ap.add_argument("--gemm-w", type=float, default=0.0)
    args = ap.parse_args()
    profile = json.load(open(args.profile))
    names = sorted(n[: -len(".trace.json")] for n in os.listdir(args.traces) if n.endswith(".trace.json"))
    rows = []
    for sub in ("base", "model", "oracle"):
        os.makedirs(os.path.join(args.out, sub), exist_ok=True)
    for name in names:
        src = os.path.abspath(os.path.join(args.traces, name + ".trace.json"))
        trace = json.load(open(src))
        sched = os.path.join(args.out, name + ".schedule.json")
        json.dump(trace["schedule"], open(sched, "w"))
        gpus = trace["schedule"]["world_size"]
        monitor = trace["context"].get("gpu_monitor.sm_clock_mhz.median")
        measured = [float(x) for x in monitor.split(",")] if monitor else []
        base = os.path.join(args.out, "base", name + ".pred.json")
        simulate(args, sched, gpus, args.profile, base)
        pred = json.load(open(base))
        step_s = statistics.median(pred["step_times_ns"]) * 1e-9
        solved = {rk: solve(load, step_s) for rk, load in sorted(rank_loads(pred, args).items())}
        clocks = {"model": min(solved.values())}
        if measured:
            clocks["oracle"] = min(measured)
        for sub, f in clocks.items():
            prof = os.path.join(args.out, sub, name + ".profile.json")
            json.dump(rescaled(profile, f), open(prof, "w"))
            simulate(args, sched, gpus, prof, os.path.join(args.out, sub, name + ".pred.json"))
        for sub in ["base"] + list(clocks):
            link = os.path.join(args.out, sub, name + ".trace.json")
            if not os.path.lexists(link):
                os.symlink(src, link)
        rows.append((name, solved, measured))
    with open(os.path.join(args.out, "clocks.md"), "w") as f:
        f.write("| case | solved MHz per rank | measured MHz per rank |\n|---|---|---|\n")
        for name, solved, measured in rows:
            f.write(f"| {name} | {', '.join(f'{v:.0f}' for v in solved.values())} | "
                    f"{', '.join(f'{v:.0f}' for v in measured) or '-'} |\n")
    table = os.path.join(os.path.dirname(os.path.abspath(__file__)), "validation_table.py")
    for sub in ("base", "model", "oracle"):
        if not any(n.endswith(".pred.json") for n in os.listdir(os.path.join(args.out, sub))):
            continue
        print(f"== {sub}")
        sys.stdout.flush()
        subprocess.run([sys.executable, table, os.path.join(args.out, sub)], check=True)
    print(open(os.path.join(args.out, "clocks.md")).read())


if __name__ == "__main__":
    main()
