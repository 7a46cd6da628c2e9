#!/usr/bin/env python3
"""Two-GPU schedules for the waiting-SM interference with several comm kernels waiting at once: rank 0 runs the
kernels of the suite's corun.recv_wait group solo, then posts N recvs of 16 MiB (each on its own stream, each its own
NCCL kernel) whose sends rank 1 delays by 20 ms of host work, and runs the same kernels beside them. N = 1 is the
suite's group; N = 2, 3, 4 measure how the slowdown grows with the number of waiting kernels (the analytic model sums
waiting_sms_per_channel x channels over them; the four-GPU traces say the GPU's slowdown grows less,
calibration/validation/h200x4/REPORT.md section 4).

Usage: recv_wait_n_schedules.py OUTDIR   (writes OUTDIR/recv_wait_<N>.json)"""
import json
import os
import sys

GEMMS = [(2048, 3072, 4096), (1024, 4096, 7168), (4096, 4096, 4096), (4096, 4096, 14336), (4096, 28672, 4096),
         (8192, 8192, 8192)]
MIB = 1 << 20


def kernels():
    out = [(f"gemm.m{m}.n{n}.k{k}", {"class": "gemm", "m": m, "n": n, "k": k, "batch": 1, "dtype": "bf16"})
           for m, n, k in GEMMS]
    for bwd in (False, True):
        out.append((f"attention_{'bwd' if bwd else 'fwd'}", {
            "class": "attention", "batch": 1, "heads_q": 16, "heads_kv": 4, "seq_q": 4096, "seq_kv": 4096,
            "head_dim": 128, "causal": True, "backward": bwd, "dtype": "bf16"}))
    return out


def schedule(n):
    streams = [{"name": "compute", "priority": 0}, {"name": "tp_send", "priority": 0}]
    streams += [{"name": f"recv{i}", "priority": -1} for i in range(n)]
    ops = []

    def add(**op):
        op["id"] = len(ops)
        op.setdefault("deps", [])
        ops.append(op)
        return op["id"]

    ks = kernels()
    add(rank=0, name="warmup", kind="compute", stream="compute",
        kernel={"class": "gemm", "m": 8192, "n": 8192, "k": 8192, "batch": 1, "dtype": "bf16"})
    solo = [add(rank=0, name=f"{label}.solo", kind="compute", stream="compute", kernel=k) for label, k in ks]
    hs = add(rank=0, name="handshake.send", kind="send", stream="tp_send", comm="world", peer=1, bytes=4096, tag=100,
             deps=[solo[-1]])
    for i in range(n):
        add(rank=0, name=f"recv{i}", kind="recv", stream=f"recv{i}", comm="world", peer=1, bytes=16 * MIB, tag=i,
            deps=[hs])
    first = True
    for label, k in ks:
        add(rank=0, name=f"{label}.waiting", kind="compute", stream="compute", kernel=k, deps=[hs] if first else [])
        first = False
    hr = add(rank=1, name="handshake.recv", kind="recv", stream="recv0", comm="world", peer=0, bytes=4096, tag=100)
    add(rank=1, name="handshake.wait", kind="host_sync", target=hr)
    add(rank=1, name="peer_delay", kind="host", duration_ns=20_000_000)
    for i in range(n):
        add(rank=1, name=f"send{i}", kind="send", stream="tp_send", comm="world", peer=0, bytes=16 * MIB, tag=i)
    return {"schema_version": 1, "name": f"recv_wait with {n} waiting recvs", "world_size": 2, "ranks": [0, 1],
            "streams": streams, "communicators": [{"name": "world", "kind": "world", "members": [0, 1]}],
            "ops": ops, "meta": {"generator": "calibration/scripts/recv_wait_n_schedules.py"}, "warnings": []}


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    for n in (1, 2, 3, 4):
        json.dump(schedule(n), open(os.path.join(out, f"recv_wait_{n}.json"), "w"))
    print(f"4 schedules in {out}")


if __name__ == "__main__":
    main()
