#!/usr/bin/env python3
"""calibration/scripts/cross_fit_check.sh end to end on the committed session-11 H100 reference run.

Usage: cross_fit_check_test.py TWINSTEP SOURCE_DIR OUT. Checks what holds by construction: the fitted case's row
predicts with its own fit (the cross-fit error equals the own-fit error, the two host costs are one, its host-time
ratio is 1 and the host-scaled figure is its error); the other lengths carry a ratio and a scaled figure; fp8 and
MoE (other framework code) carry none; and the committed figures of docs/import-trace.md's session-11 rows.
Exit 0 when every check holds, 1 otherwise.
"""
import os
import shutil
import subprocess
import sys

twinstep, source, out = sys.argv[1:4]
runs = os.path.join(source, "calibration", "measured", "h100x1", "session11", "reference", "r")
shutil.rmtree(out, ignore_errors=True)
r = subprocess.run(["bash", os.path.join(source, "calibration", "scripts", "cross_fit_check.sh"), twinstep, out, runs,
                    "dense_s4096"], cwd=source, capture_output=True, text=True)
failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAILED:", what)


check(r.returncode == 0, f"cross_fit_check.sh exits 0 (got {r.returncode}: {r.stderr[-2000:]})")
rows = {}
for line in r.stdout.splitlines()[1:]:
    f = line.split()
    if len(f) >= 10:
        keys = ["torch", "trace", "pred", "error", "own", "host", "own_host", "ratio", "scaled"]
        rows[f[0]] = dict(zip(keys, f[1:10]))
check(set(rows) == {"dense_s2048", "dense_s4096", "dense_s8192", "dense_s16384", "dense_s4096_fp8", "moe_s4096"},
      f"one row per case ({sorted(rows)})")
fit = rows.get("dense_s4096", {})
check(fit.get("error") == fit.get("own") and fit.get("host") == fit.get("own_host"),
      f"the fitted case predicts with its own fit ({fit})")
check(fit.get("ratio") == "1.000" and fit.get("scaled") == fit.get("error"), f"the fitted case's ratio is 1 ({fit})")
for c in ("dense_s2048", "dense_s8192", "dense_s16384"):
    check(rows.get(c, {}).get("ratio", "-") != "-" and rows.get(c, {}).get("scaled", "-") != "-",
          f"{c}: same framework code, a host-time ratio and a scaled figure ({rows.get(c)})")
for c in ("dense_s4096_fp8", "moe_s4096"):
    check(rows.get(c, {}).get("ratio") == "-" and rows.get(c, {}).get("scaled") == "-",
          f"{c}: other framework code, no ratio ({rows.get(c)})")
# docs/import-trace.md's session-11 figures (the reference run's 2k process ran its host at 0.979 of 4k's).
check(rows.get("dense_s2048", {}).get("ratio") == "0.979", f"2k host-time ratio 0.979 ({rows.get('dense_s2048')})")
check(rows.get("dense_s2048", {}).get("error") == "+3.3%", f"2k cross-fit +3.3% ({rows.get('dense_s2048')})")
sys.exit(1 if failures else 0)
