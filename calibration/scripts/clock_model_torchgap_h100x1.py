#!/usr/bin/env python3
"""The power-cap clock model judged on the six one-H100 torchgap cases (docs/calibration.md section 8.1).

Usage: clock_model_torchgap_h100x1.py OUT [--twinstep build/cli/twinstep] [--profile calibration/profiles/h100x1.json]

Per case, as calibration/scripts/run_reference_h100x1.sh lowers and predicts it (llama3-8b with 4 layers, qwen3-30b-a3b
with 2, one GPU, MBS 1): `twinstep lower ... --profile P`, then `twinstep simulate --cluster dgx-h100 --gpus 1
--profile P --clock-model none|power-cap`, and an "oracle": P's tables rescaled as the simulator rescales them
(efficiency x (f / f_c)^b, at most 1) to the clock the backend held. Prints a markdown table against session 12's
PyTorch and backend step times (calibration/measured/h100x1/session12/torchgap_check/table.md). No GPU needed.
Backend clocks (GPU monitor median): session 12's note (docs/import-trace.md) for the dense lengths, session 11's
traces (calibration/measured/h100x1/session11/torchgap_check/torchgap.tgz) for all six."""
import argparse
import json
import os
import re
import subprocess

CASES = [("dense_s2048", "llama3-8b", 4, 2048, "bf16"), ("dense_s4096", "llama3-8b", 4, 4096, "bf16"),
         ("dense_s8192", "llama3-8b", 4, 8192, "bf16"), ("dense_s16384", "llama3-8b", 4, 16384, "bf16"),
         ("dense_s4096_fp8", "llama3-8b", 4, 4096, "fp8"), ("moe_s4096", "qwen3-30b-a3b", 2, 4096, "bf16")]
CLOCK_S12 = {"dense_s2048": 1725, "dense_s4096": 1560, "dense_s8192": 1530, "dense_s16384": 1440}
CLOCK_S11 = {"dense_s2048": 1935, "dense_s4096": 1725, "dense_s8192": 1575, "dense_s16384": 1485,
             "dense_s4096_fp8": 1785, "moe_s4096": 1980}
MEASURED = "calibration/measured/h100x1/session12/torchgap_check/table.md"


def step_and_clock(args, cmd):
    out = subprocess.run([args.twinstep] + cmd, capture_output=True, text=True, check=True).stdout
    clock = re.search(r"SM clock ([0-9.]+) MHz", out)
    return float(re.search(r"step time: ([0-9.]+) ms", out).group(1)), clock.group(1) if clock else "-"


def oracle_profile(profile, f, path):
    p = json.loads(json.dumps(profile))
    cm = p.pop("clock_model")
    for table, ref in cm["measured_mhz"].items():
        if table in p["compute"]:
            p["compute"][table] = [[w, min(1.0, e * (f / ref) ** cm["time_exponent"])] for w, e in p["compute"][table]]
    json.dump(p, open(path, "w"))


def pct(a, b):
    return f"{100 * (a / b - 1):+.1f} %"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--twinstep", default="build/cli/twinstep")
    ap.add_argument("--profile", default="calibration/profiles/h100x1.json")
    args = ap.parse_args()
    profile = json.load(open(args.profile))
    measured = {}
    for line in open(MEASURED):
        c = [x.strip() for x in line.strip().strip("|").split("|")]
        if len(c) > 2 and c[0].startswith(("dense", "moe")):
            measured[c[0]] = (float(c[1]), float(c[2]))
    os.makedirs(args.out, exist_ok=True)
    print("| case | backend MHz (s12 / s11) | none ms | power-cap ms | solved MHz | oracle ms (s12 / s11) | "
          "none / power-cap / oracle vs PyTorch | vs backend |\n|---|---|---:|---:|---:|---|---|---|")
    for name, zoo, layers, seq, dtype in CASES:
        model = os.path.join(args.out, f"{zoo}-{layers}l.json")
        m = json.load(open(f"models/zoo/{zoo}.json"))
        m["name"], m["num_layers"] = f"{zoo}-{layers}l", layers
        json.dump(m, open(model, "w"), indent=1)
        step = os.path.join(args.out, name + ".step.json")
        lower = ["lower", "--model", model, "--gpus", "1", "--mbs", "1", "--seq", str(seq), "--profile", args.profile]
        if dtype == "fp8":
            lower += ["--dtype", "fp8", "--fp8-recipe", "tensorwise"]
        subprocess.run([args.twinstep] + lower + ["-o", step], capture_output=True, check=True)
        sim = ["simulate", step, "--cluster", "dgx-h100", "--gpus", "1", "--profile"]
        none, _ = step_and_clock(args, sim + [args.profile, "--clock-model", "none"])
        cap, solved = step_and_clock(args, sim + [args.profile, "--clock-model", "power-cap"])
        oracle = []
        for f in (CLOCK_S12.get(name), CLOCK_S11[name]):
            if f is None:
                continue
            path = os.path.join(args.out, f"{name}.oracle_{f}.profile.json")
            oracle_profile(profile, f, path)
            oracle.append(step_and_clock(args, sim + [path])[0])
        torch, backend = measured[name]
        errs = [" / ".join(pct(p, ref) for p in [none, cap] + oracle) for ref in (torch, backend)]
        print(f"| {name} | {CLOCK_S12.get(name, '-')} / {CLOCK_S11[name]} | {none:.1f} | {cap:.1f} | {solved} | "
              f"{' / '.join(f'{o:.1f}' for o in oracle)} | {errs[0]} | {errs[1]} |")


if __name__ == "__main__":
    main()
