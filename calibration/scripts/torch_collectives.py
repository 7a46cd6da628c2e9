#!/usr/bin/env python3
"""torch.distributed side of the collective comparison: same kinds, sizes, warm-up and iterations as
bench/backend/coll_sweep_bench (nccl-tests protocol, per-op cudaEvent time, median, max over ranks).
Run one process per GPU: `mpirun -np 2 python3 torch_collectives.py -o torch_coll.json` (Open MPI env vars) or
torchrun. send_recv is one-directional (rank 0 sends, rank 1 receives), busbw = algbw."""
import argparse
import json
import os
import statistics

import torch
import torch.distributed as dist


def bus_factor(kind, n):
    if kind == "all_reduce":
        return 2.0 * (n - 1) / n
    if kind == "send_recv":
        return 1.0
    return (n - 1) / n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-b", type=int, default=8 << 10)
    ap.add_argument("-e", type=int, default=1 << 30)
    ap.add_argument("-f", type=int, default=2)
    ap.add_argument("-n", type=int, default=20)
    ap.add_argument("-k", "--kinds", nargs="+",
                    default=["all_reduce", "all_gather", "reduce_scatter", "all_to_all", "send_recv"])
    ap.add_argument("-o", default="torch_coll.json")
    a = ap.parse_args()
    rank = int(os.environ.get("OMPI_COMM_WORLD_RANK", os.environ.get("RANK", "0")))
    world = int(os.environ.get("OMPI_COMM_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    local = int(os.environ.get("OMPI_COMM_WORLD_LOCAL_RANK", os.environ.get("LOCAL_RANK", "0")))
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29511")
    torch.cuda.set_device(local)
    dev = torch.device("cuda", local)
    dist.init_process_group("nccl", rank=rank, world_size=world, device_id=dev)
    results = []
    if rank == 0:
        print(f"{'kind':15s} {'bytes':>12s} {'time_us':>10s} {'algbw':>10s} {'busbw':>10s}")
    for kind in a.kinds:
        size = a.b
        while size <= a.e:
            el = size // 2  # bf16
            if kind == "all_reduce":
                x = torch.randn(el, dtype=torch.bfloat16, device=dev)
                op = lambda: dist.all_reduce(x)
            elif kind == "all_gather":
                x = torch.randn(el // world, dtype=torch.bfloat16, device=dev)
                y = torch.empty(el, dtype=torch.bfloat16, device=dev)
                op = lambda: dist.all_gather_into_tensor(y, x)
            elif kind == "reduce_scatter":
                x = torch.randn(el, dtype=torch.bfloat16, device=dev)
                y = torch.empty(el // world, dtype=torch.bfloat16, device=dev)
                op = lambda: dist.reduce_scatter_tensor(y, x)
            elif kind == "all_to_all":
                x = torch.randn(el, dtype=torch.bfloat16, device=dev)
                y = torch.empty(el, dtype=torch.bfloat16, device=dev)
                op = lambda: dist.all_to_all_single(y, x)
            else:
                x = torch.randn(el, dtype=torch.bfloat16, device=dev)
                op = (lambda: dist.send(x, 1)) if rank == 0 else (lambda: dist.recv(x, 0))
            active = kind != "send_recv" or rank < 2
            starts = [torch.cuda.Event(enable_timing=True) for _ in range(a.n)]
            ends = [torch.cuda.Event(enable_timing=True) for _ in range(a.n)]
            if active:
                for _ in range(a.n):  # warm-up: as many ops as measured (one warm-up step in the backend)
                    op()
                torch.cuda.synchronize()
            dist.barrier(device_ids=[local])
            if active:
                for i in range(a.n):
                    starts[i].record()
                    op()
                    ends[i].record()
                torch.cuda.synchronize()
                t = statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends)) * 1e-3
            else:
                t = 0.0
            tt = torch.tensor([t], dtype=torch.float64, device=dev)
            dist.all_reduce(tt, op=dist.ReduceOp.MAX)
            t = tt.item()
            algbw = size / t / 1e9
            busbw = algbw * bus_factor(kind, world)
            if rank == 0:
                print(f"{kind:15s} {size:12d} {t * 1e6:10.2f} {algbw:10.2f} {busbw:10.2f}", flush=True)
                results.append({"kind": kind, "bytes": size, "time_us": t * 1e6, "algbw_GBps": algbw,
                                "busbw_GBps": busbw})
            size *= a.f
    if rank == 0:
        ctx = {"torch": torch.__version__, "nccl": ".".join(map(str, torch.cuda.nccl.version())),
               "gpu": torch.cuda.get_device_name(dev), "cuda_runtime": torch.version.cuda,
               "world_size": str(world)}
        doc = {"schema_version": 1, "bench": "torch_collectives", "context": ctx, "iters": a.n,
               "protocol": "per size: n warm-up ops, barrier, n ops each bracketed by cudaEvents on the current "
                           "stream; time = median per-op duration, max over ranks; busbw per nccl-tests",
               "results": results}
        with open(a.o, "w") as f:
            json.dump(doc, f, indent=2)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
