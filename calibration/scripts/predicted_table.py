#!/usr/bin/env python3
"""Tabulates predictions made by predict_hgx.sh: per case the step time at the analytic and the flow fidelity, the
analytic breakdown (mean over ranks, as twinstep simulate prints it) and the memory estimate, then the predicted
effect of every <base>.off -> <base>.on pair (step-time reduction, the sign convention of validation_table.py).
Usage: predicted_table.py DIR (DIR/<case>.{analytic,flow}.log and <case>.lower.log)"""
import glob
import os
import re
import sys

d = sys.argv[1]


def parse(log):
    step, parts = None, []
    if not os.path.exists(log):
        return step, parts
    lines = open(log).read().splitlines()
    header = []
    for line in lines:
        m = re.match(r"step time: ([\d.]+) ms", line)
        if m:
            step = float(m.group(1))
        if line.startswith("rank "):
            header = re.split(r"\s{2,}", line.strip())[1:]
        if line.startswith("mean ") and header:
            vals = re.findall(r"([\d.]+ (?:ms|us|ns|s))\s+([\d.]+%)", line)
            parts = [f"{h} {v} ({p})" for h, (v, p) in zip(header, vals) if h != "comm busy" and p != "0.0%"]
            busy = [f"comm busy {v}" for h, (v, p) in zip(header, vals) if h == "comm busy"]
            parts += busy
    return step, parts


order = []
cases_file = os.path.join(os.path.dirname(__file__), "..", "validation", "h200x8", "cases.txt")
if os.path.exists(cases_file):
    for line in open(cases_file):
        if line.strip() and not line.startswith("#"):
            order.append(line.split("|")[0].strip())
names = [n for n in order if os.path.exists(os.path.join(d, n + ".analytic.log"))]
for f in sorted(glob.glob(os.path.join(d, "*.analytic.log"))):
    n = os.path.basename(f)[: -len(".analytic.log")]
    if n not in names:
        names.append(n)
rows = {}
print("| case | analytic ms | flow ms | analytic breakdown (mean over ranks; zero parts left out) | memory |")
print("|---|---:|---:|---|---|")
for n in names:
    a, parts = parse(os.path.join(d, n + ".analytic.log"))
    fl, _ = parse(os.path.join(d, n + ".flow.log"))
    mem = ""
    lower = os.path.join(d, n + ".lower.log")
    if os.path.exists(lower):
        m = re.search(r"fits: ([\d.]+ GiB)", open(lower).read())
        mem = m.group(1) if m else "?"
    rows[n] = (a, fl)
    fmt = lambda x: f"{x:.2f}" if x is not None else "failed"
    print(f"| {n} | {fmt(a)} | {fmt(fl)} | {'; '.join(parts)} | {mem} |")
print()
print("| pair (off -> on, step-time reduction) | analytic | flow |")
print("|---|---:|---:|")
for n in names:
    if not n.endswith(".off") or n[:-4] + ".on" not in rows:
        continue
    off, on = rows[n], rows[n[:-4] + ".on"]
    eff = [f"{100 * (o - x) / o:+.2f}%" if o and x else "n/a" for o, x in zip(off, on)]
    print(f"| {n[:-4]} | {eff[0]} | {eff[1]} |")
