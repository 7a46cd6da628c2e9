#!/usr/bin/env python3
"""Backend vs PyTorch reference, op class by op class (issue 17 item 6): reads each case's backend trace
(backend.json, the backend's last step) and the imported PyTorch trace (torch_measured.json) of a
run_reference_h100x1.sh output folder and prints a markdown table of GPU time per gap class (ms) and the GPU-idle
time of the step (step time minus the GPU ops' busy time on the one compute stream: host-bound gaps and bubbles).

Usage: torch_gap_table.py R_FOLDER [CASE...]   (R_FOLDER: OUT/r of run_reference_h100x1.sh)
"""
import json
import os
import sys

# Gap classes, first match wins: (class, test on the op's name and kernel class).
CLASSES = [
    ("adam", lambda n, c: n == "optim.adam"),
    ("optimizer cast + copy", lambda n, c: n in ("optim.main_grad_cast", "optim.main_param_copy")),
    ("optimizer passes", lambda n, c: n.startswith("optim.")),
    ("fp8 casts", lambda n, c: "fp8_cast" in n),
    ("attention", lambda n, c: c.startswith("attention")),
    ("gemm", lambda n, c: c == "gemm"),
    ("grouped gemm", lambda n, c: c == "grouped_gemm"),
    ("norms", lambda n, c: ".ln" in n or "norm" in n.split(".")[-1]),
    ("loss", lambda n, c: "cross_entropy" in n),
    ("moe routing/permute", lambda n, c: any(w in n for w in ("router", "permute", "dispatch", "combine", "moe"))),
    ("other elementwise", lambda n, c: c == "elementwise"),
    ("memcpy/sync", lambda n, c: c in ("memcpy", "host_sync")),
]


def gap_class(op):
    kernel = op.get("kernel") or {}
    c = kernel.get("class", op.get("kind", ""))
    for name, test in CLASSES:
        if test(op["name"], c):
            return name
    return "other"


def per_class(path):
    t = json.load(open(path))
    ops = {o["id"]: o for o in t["schedule"]["ops"]}
    out, busy = {}, 0
    for r in t["records"]:
        op = ops[r["op"]]
        if op["kind"] in ("host", "host_sync"):
            continue
        d = r["end"] - r["start"]
        k = gap_class(op)
        out[k] = out.get(k, 0) + d
        busy += d
    step = t["step_times_ns"][-1]
    out["GPU idle (host gaps)"] = step - busy
    return out, step


def main(argv):
    if len(argv) < 2:
        sys.exit(__doc__)
    root = argv[1]
    have = lambda c: all(os.path.exists(os.path.join(root, c, f)) for f in ("backend.json", "torch_measured.json"))  # noqa: E731
    cases = [c for c in (argv[2:] or sorted(os.listdir(root))) if have(c)]
    if not cases:
        sys.exit(root + ": no case folder with backend.json and torch_measured.json")
    names = [c for c, _ in CLASSES] + ["other", "GPU idle (host gaps)"]
    rows = {}
    steps = {}
    for case in cases:
        b, bs = per_class(os.path.join(root, case, "backend.json"))
        p, ps = per_class(os.path.join(root, case, "torch_measured.json"))
        rows[case] = (b, p)
        steps[case] = (bs, ps)
    print("| class | " + " | ".join(cases) + " |")
    print("| --- |" + " --- |" * len(cases))
    print("| step: backend / PyTorch (ms) | " + " | ".join(
        "%.1f / %.1f (%+.1f)" % (steps[c][0] / 1e6, steps[c][1] / 1e6, (steps[c][0] - steps[c][1]) / 1e6)
        for c in cases) + " |")
    for n in names:
        if not any(n in rows[c][0] or n in rows[c][1] for c in cases):
            continue
        cells = []
        for c in cases:
            b, p = rows[c][0].get(n, 0) / 1e6, rows[c][1].get(n, 0) / 1e6
            cells.append("%.2f / %.2f (%+.2f)" % (b, p, b - p))
        print("| " + n + " | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv)
