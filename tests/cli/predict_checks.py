#!/usr/bin/env python3
# Checks of `twinstep predict` that need arithmetic on its --json output (CTest runs them; exit 0 = pass).
# usage: predict_checks.py CHECK TWINSTEP [ARGS...]
#   examples TWINSTEP              predict --example --json: both built-in examples with their exact variant lists
#   ep_host_cost TWINSTEP MODEL    large per-node host costs make EP overlap slower than none (host-bound time grows)
#   attribution TWINSTEP           every variant's causes sum to its change against the baseline
#   sweep_row_equals_predict TWINSTEP OUTDIR
#                                  a sweep row's predict_command gives the row's step time, memory and usable
#                                  capacity (the sweep's table shows that usable capacity)
import json
import subprocess
import sys


def predict(twinstep, *args):
    cmd = [twinstep, "predict", *args, "--json"]
    run = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if run.returncode != 0:
        sys.exit(f"{' '.join(cmd)}: exit {run.returncode}\n{run.stdout}{run.stderr}")
    return json.loads(run.stdout)


def check(cond, what, data):
    if not cond:
        sys.exit(f"FAILED: {what}\n{json.dumps(data, indent=1)[:4000]}")


def examples(twinstep):
    d = predict(twinstep, "--example", "--fidelity", "analytic")
    ex = d["examples"]
    check([e["example"] for e in ex] == ["qwen", "llama"], "examples qwen then llama", d)
    want = {"qwen": ["none", "ep", "ep+delay_wgrad"], "llama": ["none", "dp", "tp", "pp", "all"]}
    for e in ex:
        names = [v["name"] for v in e["variants"]]
        check(names == want[e["example"]], f"{e['example']} variants {names}", e)
        check(e["command"].startswith("twinstep predict --model "), "command line given", e)
        check(e["title"] != "", "title given", e)
        for v in e["variants"]:
            check(v["step_time_s"] > 0 and v["fits"], f"{e['example']} {v['name']}: positive step time and fits", e)
            b = v["breakdown"]
            parts = b["compute_s"] + sum(b["exposed_comm_s"].values()) + b["bubble_s"] + b["host_bound_s"]
            check(abs(parts - v["step_time_s"]) <= 1e-3 * v["step_time_s"], "breakdown sums to the step", v)
    check(ex[0]["gpus"] == 16 and ex[1]["gpus"] == 32, "16 and 32 GPUs", d)
    check("--ep 16" in ex[0]["command"] and "--distributed-optimizer" in ex[0]["command"], "qwen: EP 16, distopt", d)
    check("--tp 8 --pp 4 --vpp 2 --sp" in ex[1]["command"], "llama: tp 8, pp 4, vpp 2, sp", d)


def ep_host_cost(twinstep, model):
    base = ["--model", model, "--cluster", "h200x2-nvlink", "--ep", "2", "--distributed-optimizer", "--gbs", "8",
            "--seq", "4096", "--overlap", "none,ep", "--fidelity", "analytic", "--profile", "datasheet"]
    cheap = predict(twinstep, *base, "--ep-node-ns", "0")
    dear = predict(twinstep, *base, "--ep-node-ns", "1000000")
    none0, ep0 = cheap["variants"]
    none1, ep1 = dear["variants"]
    # The per-node host op exists only in the combined EP-overlap schedule: the baseline does not move.
    check(none0["step_time_s"] == none1["step_time_s"], "baseline unchanged by --ep-node-ns", dear)
    # 1 ms per schedule node: the host thread falls behind, host-bound time grows, and EP overlap loses.
    check(ep1["breakdown"]["host_bound_s"] > ep0["breakdown"]["host_bound_s"] + 1e-3, "host-bound time grows", dear)
    check(ep1["step_time_s"] > ep0["step_time_s"], "EP overlap slower with host costs", dear)
    check(ep1["step_time_s"] > none1["step_time_s"], "EP overlap slower than none with large host costs", dear)
    check("--ep-node-ns from the command line" in dear["host_costs"], "host_costs names the flag", dear)


def attribution(twinstep):
    d = predict(twinstep, "--model", "llama3-8b", "--cluster", "dgx-h100", "--gpus", "8", "--tp", "2", "--pp", "2",
                "--gbs", "16", "--seq", "2048", "--overlap", "none,dp,tp,all")
    base = d["variants"][0]
    check("attribution" not in base, "no attribution on the baseline", base)
    for v in d["variants"][1:]:
        total = sum(t["delta_s"] for t in v["attribution"])
        check(abs(total - v["delta_s"]) <= 1e-9 + 1e-9 * base["step_time_s"], f"{v['name']}: causes sum to delta", v)
        check(abs(v["delta_s"] - (v["step_time_s"] - base["step_time_s"])) <= 1e-12, "delta_s is the change", v)
    tp = d["variants"][2]
    hidden = [t for t in tp["attribution"] if t["cause"] == "communication hidden: exposed tp"]
    check(len(hidden) == 1 and hidden[0]["delta_s"] < 0, "tp overlap hides tp communication", tp)


def sweep_row_equals_predict(twinstep, outdir, *extra):
    """extra: more sweep flags (--clock-model power-cap: the solved clock must be predict's too)."""
    out = f"{outdir}/row_vs_predict{'_'.join([''] + [e.strip('-') for e in extra])}.jsonl"
    cmd = [twinstep, "sweep", "--model", "llama3-8b", "--cluster", "dgx-h100", "--gpus", "16", "--tp", "2",
           "--pp", "2", "--vpp", "2", "--gbs", "64", "--seq", "2048", "--overlap", "all", *extra, "-j", "1", "-q",
           "-o", out]
    subprocess.run(["rm", "-f", out], check=True)
    run = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if run.returncode != 0:
        sys.exit(f"{' '.join(cmd)}: exit {run.returncode}\n{run.stdout}{run.stderr}")
    rows = [json.loads(line) for line in open(out)]
    check(len(rows) == 1 and rows[0]["status"] == "ok", "one simulated row", rows)
    row = rows[0]
    args = row["predict_command"].split()
    check(args[:2] == ["twinstep", "predict"], "predict command", row)
    d = predict(twinstep, *args[2:])
    v = d["variants"][0]
    check(abs(v["step_time_s"] - row["step_time_s"]) <= 1e-6 * row["step_time_s"], "same step time", [row, v])
    check(v["memory_gib_per_gpu"] == row["memory_gib_per_gpu"], "same memory (same recipe defaults)", [row, v])
    if "--clock-model" in extra:
        check("sm_clock_mhz" in row and abs(v["sm_clock_mhz"] - row["sm_clock_mhz"]) <= 0.01, "same solved clock",
              [row, v])
    # One usable capacity: the figure predict compares with is the one the sweep shows and compares with.
    usable = v["memory"]["usable_capacity_gib"]
    check(row.get("memory_usable_gib") == usable, "same usable capacity as predict", [row, v["memory"]])
    check(usable < row["memory_capacity_gib"], "usable is the GPU's memory less the reserve", row)
    # The same sweep again without -q: resumed from the file, its table printed.
    run = subprocess.run(cmd[:-3] + ["-o", out], capture_output=True, text=True, check=False)
    check(f"({usable:.1f}) GiB" in run.stdout, f"the table shows the usable {usable:.1f} GiB", run.stdout)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__ or "usage: predict_checks.py CHECK TWINSTEP [ARGS...]")
    checks = {"examples": examples, "ep_host_cost": ep_host_cost, "attribution": attribution,
              "sweep_row_equals_predict": sweep_row_equals_predict}
    checks[sys.argv[1]](*sys.argv[2:])
