#!/usr/bin/env python3
"""Side-by-side table of the PyTorch reference, the backend and the prediction, from the case folders that
calibration/scripts/run_reference_h100x1.sh writes (OUT/r/<case>/: torch.json, backend.analyze.json,
pred_datasheet.analyze.json, pred_profile.analyze.json, lower.txt, *.smi.csv). Arguments: case folders, or folders
holding case folders (OUT/r of several device calls); prints markdown.
Usage: reference_table.py OUT1/r [OUT2/r ...]"""
import csv
import json
import os
import re
import statistics
import sys

GIB = 1024.0 ** 3


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def step_ms(path):
    a = load(path)
    return a["step_time_s"] * 1e3 if a and "step_time_s" in a else None


def smi_peak_gib(path):
    """Peak memory.used (MiB) of the nvidia-smi samples, in GiB; None without samples."""
    peak = None
    try:
        with open(path) as f:
            for row in csv.reader(f):
                if len(row) >= 2 and row[1].strip().isdigit():
                    v = int(row[1]) / 1024.0
                    peak = v if peak is None else max(peak, v)
    except OSError:
        return None
    return peak


def estimate_gib(path):
    """The memory estimate of `twinstep lower --summary` in lower.txt, GiB: the tightest rank's allocator reserve
    ("memory, tightest rank (peak in PHASE):" ... "= allocator reserved  X GiB", session 6 on), or the one-line sum of
    older summaries ("memory, largest rank: ... = X GiB"). None where lower.txt is missing; a lower.txt without either
    form (a failed lower, a changed format) is an error naming the file: a table silently showing "-" hid a stale
    parser for eight sessions."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    m = re.search(r"memory, tightest rank \(peak in [^)]*\):\n(?:.*\n)*?\s*= allocator reserved\s+([0-9.]+) (GiB|MiB)",
                  text) or re.search(r"memory, largest rank:.*= ([0-9.]+) (GiB|MiB)", text)
    if not m:
        print(f"reference_table.py: error: {path}: no memory estimate (neither \"memory, tightest rank (peak in "
              f"...)\" with \"= allocator reserved\" nor \"memory, largest rank:\"); the lower command failed or "
              f"`lower --summary` changed its format: fix estimate_gib()", file=sys.stderr)
        sys.exit(2)
    return float(m.group(1)) / (1024.0 if m.group(2) == "MiB" else 1.0)


def fmt(v, spec=".1f"):
    return "-" if v is None else format(v, spec)


def pct(v, ref):
    return "-" if v is None or not ref else f"{(v / ref - 1) * 100:+.1f} %"


def case_dirs(args, marker="lower.txt"):
    """The case folders among args and their subfolders: those holding `marker`."""
    out = []
    for a in args:
        if os.path.exists(os.path.join(a, marker)):
            out.append(a)
        elif os.path.isdir(a):
            out += sorted(os.path.join(a, d) for d in os.listdir(a) if os.path.exists(os.path.join(a, d, marker)))
    return out


def row(d):
    t = load(os.path.join(d, "torch.json")) or {}
    torch_ms = t["step_time_s"] * 1e3 if "step_time_s" in t else None
    backend = step_ms(os.path.join(d, "backend.analyze.json"))
    ds = step_ms(os.path.join(d, "pred_datasheet.analyze.json"))
    prof = step_ms(os.path.join(d, "pred_profile.analyze.json"))
    own = step_ms(os.path.join(d, "pred_from_trace.analyze.json"))
    cross = step_ms(os.path.join(d, "pred_cross_fit.analyze.json"))
    match = None
    try:
        m = re.search(r"GPU time matched: .*\(([0-9.]+) %\)", open(os.path.join(d, "import.txt")).read())
        match = float(m.group(1)) if m else None
    except OSError:
        pass
    mem = t.get("memory", {})
    alloc = mem.get("max_allocated_bytes")
    reserved = mem.get("max_reserved_bytes")
    estimate = estimate_gib(os.path.join(d, "lower.txt"))
    note = t.get("error", "") if t else "no torch.json"
    if t.get("params_match_schedule") is False:
        note += " params differ from the schedule's"
    return ("| " + " | ".join([
        os.path.basename(os.path.normpath(d)), fmt(torch_ms), fmt(backend), pct(backend, torch_ms), fmt(ds),
        pct(ds, torch_ms), fmt(prof), pct(prof, torch_ms), pct(prof, backend), fmt(match), pct(own, torch_ms),
        pct(cross, torch_ms),
        fmt(alloc / GIB if alloc else None), fmt(reserved / GIB if reserved else None),
        fmt(smi_peak_gib(os.path.join(d, "torch.smi.csv"))), fmt(smi_peak_gib(os.path.join(d, "backend.smi.csv"))),
        fmt(estimate), pct(estimate, alloc / GIB if alloc else None), note]) + " |", torch_ms, backend, prof, cross)


def main():
    dirs = case_dirs(sys.argv[1:])
    if not dirs:
        print(f"reference_table.py: error: no case folders (with lower.txt) under {sys.argv[1:]}", file=sys.stderr)
        sys.exit(2)
    rows = [row(d) for d in dirs]  # every case parsed (and any error raised) before the table starts
    print("| case | PyTorch step ms | backend ms | backend vs PyTorch | predicted (datasheet) ms | vs PyTorch | "
          "predicted (profile) ms | vs PyTorch | vs backend | torch trace GPU time matched % | "
          "predicted (fit from own torch trace) vs PyTorch | predicted (fit from one case's torch trace) vs PyTorch | "
          "torch max allocated GiB | torch max reserved GiB | "
          "torch peak used GiB (nvidia-smi) | backend peak used GiB (nvidia-smi) | lowering estimate GiB | estimate vs allocated | note |")
    print("|" + " --- |" * 19)
    errs = {"backend": [], "profile": [], "cross-fit": []}
    for line, torch_ms, backend, prof, cross in rows:
        print(line)
        if torch_ms and backend:
            errs["backend"].append(abs(backend / torch_ms - 1) * 100)
        if torch_ms and prof:
            errs["profile"].append(abs(prof / torch_ms - 1) * 100)
        if torch_ms and cross:
            errs["cross-fit"].append(abs(cross / torch_ms - 1) * 100)
    if len(dirs) > 1:
        for k, v in errs.items():
            if v:
                print(f"\n{k} vs PyTorch: mean |error| {statistics.mean(v):.1f} % over {len(v)} cases, "
                      f"max {max(v):.1f} %")


if __name__ == "__main__":
    main()
