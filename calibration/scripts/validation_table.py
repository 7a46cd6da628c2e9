#!/usr/bin/env python3
"""Predicted vs measured step time of the validation cases, as the CI test computes it: measured = median step of
DIR/<case>.trace.json, predicted = step 0 of DIR/<case>.pred.json (twinstep simulate, committed profile); MAE and the
sign of every <base>.off -> <base>.on effect. Usage: validation_table.py DIR"""
import glob
import json
import os
import sys

d = sys.argv[1]
cases = {}
for f in sorted(glob.glob(os.path.join(d, "*.trace.json"))):
    name = os.path.basename(f)[: -len(".trace.json")]
    pred = os.path.join(d, name + ".pred.json")
    if not os.path.exists(pred):
        print(f"{name}: no prediction")
        continue
    steps = sorted(json.load(open(f))["step_times_ns"])
    meas = steps[len(steps) // 2] * 1e-9
    p = json.load(open(pred))["step_times_ns"][0] * 1e-9
    cases[name] = (p, meas)
print("| case | measured ms | predicted ms | error |")
print("|---|---:|---:|---:|")
errs = []
for name, (p, m) in cases.items():
    e = (p - m) / m
    errs.append(abs(e))
    print(f"| {name} | {m * 1e3:.2f} | {p * 1e3:.2f} | {100 * e:+.1f}% |")
if errs:
    print(f"MAE {100 * sum(errs) / len(errs):.2f}% over {len(errs)} cases (bar 5%)")
for name, off in cases.items():
    if not name.endswith(".off") or name[:-4] + ".on" not in cases:
        continue
    on = cases[name[:-4] + ".on"]
    me = (off[1] - on[1]) / off[1]
    pe = (off[0] - on[0]) / off[0]
    verdict = "n/a (|measured| <= 2%)" if abs(me) <= 0.02 else ("OK" if me * pe > 0 else "WRONG SIGN")
    print(f"effect {name[:-4]}: measured {100 * me:+.2f}% predicted {100 * pe:+.2f}% -> {verdict}")
