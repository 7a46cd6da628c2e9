#!/usr/bin/env python3
"""A schedule of only the GEMMs of another one-GPU schedule, back to back on one stream in op-id order, names kept.

Usage: gemm_only_schedule.py SCHEDULE_OR_TRACE.json OUT.json
Run by the backend, it measures the same GEMM shapes the way the calibration suite does (solo, back to back), so the
in-run duration of each GEMM can be set against its solo duration op by op (joined on the op name), with the SM
clock each run held (the trace context's gpu_monitor keys)."""
import json
import sys


def main():
    src, out = sys.argv[1], sys.argv[2]
    doc = json.load(open(src))
    s = doc["schedule"] if "schedule" in doc else doc
    if s["world_size"] != 1:
        sys.exit(f"{src}: world_size {s['world_size']}; this script takes one-GPU schedules")
    stream = s["streams"][0]["name"]
    ops = []
    for op in s["ops"]:
        if op.get("kind") != "compute" or op["kernel"]["class"] != "gemm":
            continue
        g = dict(op)
        g["id"] = len(ops)
        g["deps"] = []
        g["stream"] = stream
        ops.append(g)
    res = {k: v for k, v in s.items() if k != "ops"}
    res["name"] = s["name"] + " (GEMMs only)"
    res["streams"] = [s["streams"][0]]
    res["communicators"] = []
    res["warnings"] = []
    res["ops"] = ops
    json.dump(res, open(out, "w"))
    print(f"{out}: {len(ops)} GEMMs of {len(s['ops'])} ops")


if __name__ == "__main__":
    main()
