#!/usr/bin/env python3
"""The ring-exchange check of issue 17 item 4: per message size, the backend's transports (ring_exchange_bench
--mode backend) against the bare cudaMemcpyPeerAsync loop (--mode bare), GB/s per direction and the ratio to the
reference (target >= 95 % for copy_engine). Usage: ring_exchange_table.py BACKEND.json BARE.json"""
import json
import sys

backend = json.load(open(sys.argv[1]))
bare = json.load(open(sys.argv[2]))
ref = {r["bytes"]: r["GBps_per_direction"] for r in bare["results"]}
by = {}
for r in backend["results"]:
    by.setdefault(r["bytes"], {})[r["transport"]] = r
transports = sorted({r["transport"] for r in backend["results"]}, key=lambda t: ["copy_engine", "sm_kernel", "nccl"].index(t) if t in ("copy_engine", "sm_kernel", "nccl") else 9)
print(f"GPU {backend['context'].get('gpu', '?')}, {backend.get('rounds')} messages each way per step")
print("| bytes | cudaMemcpyPeerAsync GB/s | " + " | ".join(f"{t} GB/s (ratio)" for t in transports) + " |")
print("|---:|---:|" + "---:|" * len(transports))
worst = None
for b in sorted(by):
    cells = []
    for t in transports:
        r = by[b].get(t)
        if r is None:
            cells.append("-")
            continue
        ratio = r["GBps_per_direction"] / ref[b] if b in ref else float("nan")
        cells.append(f"{r['GBps_per_direction']:.1f} ({100 * ratio:.0f}%)")
        if t == "copy_engine" and b in ref and b >= 4 << 20:
            worst = ratio if worst is None else min(worst, ratio)
    print(f"| {b} | {ref.get(b, float('nan')):.1f} | " + " | ".join(cells) + " |")
ran = {r["transport"]: r.get("transport_ran") for r in backend["results"]}
print("transport_ran: " + ", ".join(f"{t} -> {v}" for t, v in ran.items()))
if worst is not None:
    print(f"copy_engine, messages >= 4 MiB: worst {100 * worst:.1f}% of cudaMemcpyPeerAsync (target >= 95%): "
          + ("MET" if worst >= 0.95 else "NOT MET"))
