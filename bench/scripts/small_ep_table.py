#!/usr/bin/env python3
# The small-EP table (issue 21 item 5, megatron-overlap.md 6c): Qwen3-30B-A3B with the alltoall dispatcher on two
# DGX H100 nodes (TP2 SP, ETP1, MBS 1, seq 4096 unless --seq), EP 2/4/8/16 x GBS 8/64/1024, each cell predicted with EP overlap
# off (the baseline: DP overlap, as the recipes run), on, and on with delay_wgrad_compute. The change of each variant
# and its dominant mechanism come from `twinstep predict`'s attribution (the terms sum to the change): nothing here
# decides a sign. Writes a markdown table to stdout.
# Usage: python3 bench/scripts/small_ep_table.py [--twinstep build/cli/twinstep] [--profile calibration/profiles/h100x1.json]
#        [--ep 2,4,8,16] [--gbs 8,64,1024] [--seq 4096] [--json-dir DIR] [--overlap-cdmc 32]
# The recipe default is CUDA_DEVICE_MAX_CONNECTIONS=1 (TP2; MLM asserts it without EP overlap); --overlap-cdmc N adds
# two columns: the EP-overlap variants run again with CDMC N (MLM only warns then; Bridge's Qwen3-30B-A3B recipe uses
# 32), against the same CDMC=1 baseline.
import argparse
import json
import os
import subprocess
import sys

VARIANTS = "dp,dp+ep,dp+ep+delay_wgrad"


def predict(a, ep, gbs, seq, variants=VARIANTS, cdmc=None):
    cmd = [a.twinstep, "predict", "--model", "qwen3-30b-a3b", "--cluster", "dgx-h100", "--nodes", "2",
           "--tp", "2", "--sp", "--ep", str(ep), "--etp", "1", "--mbs", "1", "--gbs", str(gbs), "--seq", str(seq),
           "--dispatcher", "alltoall", "--overlap", variants, "--json"]
    if cdmc is not None:
        cmd += ["--cdmc", str(cdmc)]
    if a.profile:
        cmd += ["--profile", a.profile]
    r = subprocess.run(cmd, capture_output=True, text=True)
    # Exit 3: simulated and printed, but no variant fits the memory estimate (marked in the table).
    if r.returncode not in (0, 3) or not r.stdout.strip():
        return None, " ".join(cmd), r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "exit %d" % r.returncode
    return json.loads(r.stdout), " ".join(cmd), None


def mechanism(v):
    """The attribution term that decides the sign of the change: the largest cost if slower, else the largest gain,
    named with the largest term of the other sign beside it."""
    terms = [(t["cause"], t["delta_s"]) for t in v.get("attribution", [])]
    if not terms:
        return ""
    gain = min(terms, key=lambda t: t[1])
    cost = max(terms, key=lambda t: t[1])
    lead, other = (cost, gain) if v["delta_s"] > 0 else (gain, cost)
    short = lambda t: "%s %+.1f ms" % (t[0].split(" (")[0], 1e3 * t[1])
    return short(lead) + ("; against: " + short(other) if other[1] * lead[1] < 0 else "")


def host_change(v, base, top=2):
    """The host-thread causes whose time changed most with the variant (predict's host_work_s)."""
    d = dict(v.get("host_work_s", {}))
    for k, s in base.get("host_work_s", {}).items():
        d[k] = d.get(k, 0.0) - s
    items = sorted((x for x in d.items() if abs(x[1]) > 1e-9), key=lambda x: -abs(x[1]))[:top]
    return ", ".join("%s %+.1f ms" % (k, 1e3 * s) for k, s in items)


def host_busy(v):
    """The host thread's time not blocked in a host sync (step time less predict's "wait ..." host_work_s): issuing
    launches and framework host ops, plus its idle tail after the last issue."""
    return v["step_time_s"] - sum(s for k, s in v.get("host_work_s", {}).items() if k.startswith("wait "))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--twinstep", default="build/cli/twinstep")
    ap.add_argument("--profile", default="calibration/profiles/h100x1.json")
    ap.add_argument("--ep", default="2,4,8,16")
    ap.add_argument("--gbs", default="8,64,1024")
    ap.add_argument("--seq", default="4096", help="sequence lengths, comma-separated (a column when more than one)")
    ap.add_argument("--json-dir", default="", help="keep each cell's predict --json output here")
    ap.add_argument("--overlap-cdmc", type=int, default=0,
                    help="also run the EP-overlap variants with this CUDA_DEVICE_MAX_CONNECTIONS (two more columns)")
    a = ap.parse_args()
    seqs = [int(x) for x in a.seq.split(",")]
    seq_col = len(seqs) > 1
    extra = ("EP overlap, CDMC %d | EP overlap + delay_wgrad, CDMC %d | " % (a.overlap_cdmc, a.overlap_cdmc)
             if a.overlap_cdmc else "")
    print("| %sEP | GBS | step, EP overlap off | EP overlap | EP overlap + delay_wgrad | %shost-bound (off / on) | "
          "host busy / step (off / on) | dominant mechanism of EP overlap (predict's attribution) | "
          "host time, largest changes |" % ("seq | " if seq_col else "", extra))
    print("| %s--- | --- | --- | --- | --- | %s--- | --- | --- | --- |" % ("--- | " if seq_col else "",
                                                                       "--- | --- | " if a.overlap_cdmc else ""))
    host_costs = None
    for seq in seqs:
        for ep in [int(x) for x in a.ep.split(",")]:
            for gbs in [int(x) for x in a.gbs.split(",")]:
                lead = ("| %d | %d | %d |" % (seq, ep, gbs)) if seq_col else ("| %d | %d |" % (ep, gbs))
                j, cmd, err = predict(a, ep, gbs, seq)
                if j is None:
                    print("%s not run: %s | | | | | | |" % (lead, err.replace("|", "/")))
                    continue
                if a.json_dir:
                    os.makedirs(a.json_dir, exist_ok=True)
                    with open(os.path.join(a.json_dir, "s%d_ep%d_gbs%d.json" % (seq, ep, gbs)), "w") as f:
                        json.dump(j, f, indent=1)
                host_costs = j.get("host_costs", host_costs)
                base, ov, dw = j["variants"]
                pct = lambda v: "%+.1f %%" % (100.0 * v["delta_s"] / base["step_time_s"])
                hb = lambda v: v["breakdown"]["host_bound_s"]
                busy = lambda v: "%.0f %%" % (100.0 * host_busy(v) / v["step_time_s"])
                fits = "" if base["fits"] else " (memory estimate %.0f GiB > 80)" % base["memory_gib_per_gpu"]
                more = ""
                if a.overlap_cdmc:
                    jc, _, errc = predict(a, ep, gbs, seq, "dp+ep,dp+ep+delay_wgrad", a.overlap_cdmc)
                    if jc is None:
                        more = "not run: %s | | " % errc.replace("|", "/")
                    else:
                        rel = lambda v: "%+.1f %%" % (100.0 * (v["step_time_s"] / base["step_time_s"] - 1))
                        more = "%s | %s | " % (rel(jc["variants"][0]), rel(jc["variants"][1]))
                print("%s %.1f ms%s | %s | %s | %s%.1f / %.1f ms | %s / %s | %s | %s |" % (
                    lead, 1e3 * base["step_time_s"], fits, pct(ov), pct(dw), more, 1e3 * hb(base), 1e3 * hb(ov),
                    busy(base), busy(ov), mechanism(ov), host_change(ov, base)))
                sys.stdout.flush()
    print()
    print("Host costs: %s" % host_costs)


if __name__ == "__main__":
    main()
