#!/usr/bin/env python3
"""Side-by-side tables from calibration/scripts/run_h200x1.sh's repetitions: per shape, the backend's and
torch.matmul's TFLOP/s in every repetition, their ratios and the median ratio; the issue overhead per repetition;
and the SM clock / power seen during the GEMM runs (nvidia-smi samples). Writes gemm.md/.json and
issue_overhead.md/.json. Usage: reps_tables.py RUN_DIR OUT_DIR COMMAND_TEXT MACHINE_TEXT"""
import csv
import glob
import json
import os
import statistics
import sys


def load(path):
    with open(path) as f:
        return json.load(f)


def clock_summary(run):
    path = os.path.join(run, "clocks.csv")
    if not os.path.exists(path):
        return None
    sm, pw = [], []
    with open(path) as f:
        for row in csv.reader(f):
            if len(row) < 4 or not row[1].strip().split(" ")[0].isdigit():
                continue
            sm.append(float(row[1].strip().split(" ")[0]))
            try:
                pw.append(float(row[3].strip().split(" ")[0]))
            except ValueError:
                pass
    busy = [s for s, p in zip(sm, pw) if p > 300]  # samples under GEMM load
    return {"samples": len(sm), "sm_mhz_min": min(sm), "sm_mhz_max": max(sm),
            "sm_mhz_median_under_load": statistics.median(busy) if busy else None,
            "sm_mhz_min_under_load": min(busy) if busy else None, "power_w_max": max(pw) if pw else None}


def main():
    run, out, command, machine = sys.argv[1:5]
    reps = sorted(int(p.split(".")[-2]) for p in glob.glob(os.path.join(run, "gemm_backend.*.json")))
    ours = {r: load(os.path.join(run, f"gemm_backend.{r}.json")) for r in reps}
    theirs = {r: load(os.path.join(run, f"gemm_torch.{r}.json")) for r in reps}
    shapes = [(x["m"], x["n"], x["k"]) for x in ours[reps[0]]["results"]]
    clocks = clock_summary(run)
    rows = []
    head = "| M x N x K | " + " | ".join(f"rep {r}: backend / torch TFLOP/s (ratio)" for r in reps) + \
        " | median ratio | min ratio |"
    md = [f"# bf16 GEMM TFLOP/s: twinstep backend (cuBLAS) vs torch.matmul, {len(reps)} repetitions in one call", "",
          f"Machine: {machine}", "", f"Command: `{command}`", "",
          f"Backend context: {json.dumps(ours[reps[0]]['context'])}", "",
          f"torch context: {json.dumps(theirs[reps[0]]['context'])}", "",
          f"Protocol (both sides): {ours[reps[0]]['protocol']}. n = {ours[reps[0]]['iters']}, steps = "
          f"{ours[reps[0]]['steps']}, warm-up >= {ours[reps[0]]['warmup_ms']} ms per shape. Odd repetitions run the "
          "backend first, even ones torch first.", "", head,
          "| --- | " + " | ".join("---:" for _ in reps) + " | ---: | ---: |"]
    for (m, n, k) in shapes:
        cells, ratios, per_rep = [], [], []
        for r in reps:
            b = next(x for x in ours[r]["results"] if (x["m"], x["n"], x["k"]) == (m, n, k))
            t = next(x for x in theirs[r]["results"] if (x["m"], x["n"], x["k"]) == (m, n, k))
            ratio = b["tflops"] / t["tflops"]
            ratios.append(ratio)
            per_rep.append({"rep": r, "backend_tflops": b["tflops"], "torch_tflops": t["tflops"], "ratio": ratio,
                            "backend_time_us": b["time_us"], "torch_time_us": t["time_us"]})
            cells.append(f"{b['tflops']:.1f} / {t['tflops']:.1f} ({ratio:.3f})")
        rows.append({"m": m, "n": n, "k": k, "reps": per_rep, "median_ratio": statistics.median(ratios),
                     "min_ratio": min(ratios)})
        md.append(f"| {m}x{n}x{k} | " + " | ".join(cells) +
                  f" | {statistics.median(ratios):.3f} | {min(ratios):.3f} |")
    worst_median = min(r["median_ratio"] for r in rows)
    worst_any = min(r["min_ratio"] for r in rows)
    md += ["", f"Worst median ratio over shapes (target >= 0.95): {worst_median:.3f} "
           f"({'met' if worst_median >= 0.95 else 'MISSED'}); worst single repetition: {worst_any:.3f}.", ""]
    if clocks:
        md += [f"GPU clocks during the run (nvidia-smi every 100 ms): {json.dumps(clocks)}", ""]
    with open(os.path.join(out, "gemm.md"), "w") as f:
        f.write("\n".join(md))
    with open(os.path.join(out, "gemm.json"), "w") as f:
        json.dump({"schema_version": 2, "machine": machine,
                   "context": {"backend": ours[reps[0]]["context"], "torch": theirs[reps[0]]["context"],
                               "command": command, "protocol": ours[reps[0]]["protocol"]},
                   "clocks": clocks, "worst_median_ratio": worst_median, "worst_ratio_any_rep": worst_any,
                   "results": rows}, f, indent=2)

    iss = {r: load(os.path.join(run, f"issue.{r}.json")) for r in reps if os.path.exists(os.path.join(run, f"issue.{r}.json"))}
    if not iss:
        return
    first = iss[min(iss)]
    kinds = ["bare_launch", "bare_launch_2_events", "backend_issue", "backend_gpu_span_per_op"]
    md = [f"# Per-op issue overhead of an empty kernel, {len(iss)} repetitions in one call", "",
          f"Machine: {machine}", "", f"Command: `{command}`", "", f"Context: {json.dumps(first['context'])}", "",
          f"Protocol: {first['protocol']}. n = {first['n']}, repetitions inside each run = {first['reps']}.", "",
          "| path | " + " | ".join(f"run {r} us/op" for r in iss) + " |", "| --- | " + " | ".join("---:" for _ in iss) + " |"]
    for k in kinds:
        md.append(f"| {k} | " + " | ".join(
            f"{next(x for x in iss[r]['results'] if x['what'] == k)['us_per_op']:.2f}" for r in iss) + " |")
    ratios = [next(x for x in iss[r]["results"] if x["what"] == "backend_issue")["ratio_vs_bare_2_events"] for r in iss]
    md += ["", "Backend / bare loop with two event records: " + ", ".join(f"{x:.3f}" for x in ratios) +
           f" (worst {max(ratios):.3f}; target <= 1.3: {'met' if max(ratios) <= 1.3 else 'MISSED'})", ""]
    with open(os.path.join(out, "issue_overhead.md"), "w") as f:
        f.write("\n".join(md))
    with open(os.path.join(out, "issue_overhead.json"), "w") as f:
        json.dump({"schema_version": 2, "machine": machine, "command": command, "ratios": ratios,
                   "runs": {str(r): iss[r] for r in iss}}, f, indent=2)


if __name__ == "__main__":
    main()
