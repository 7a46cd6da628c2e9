#!/usr/bin/env python3
"""torch.matmul side of the GEMM comparison: same shapes (MxNxK: [M,K] @ [K,N], bf16), warm-up and iterations as
bench/backend/gemm_sweep_bench; per-op cudaEvent time, median; TFLOP/s = 2MNK / time."""
import argparse
import json
import statistics

import torch

SHAPES = ["4096x4096x4096", "8192x8192x8192", "16384x2048x2048", "4096x768x2048", "2048x2048x768",
          "4096x5120x8192", "4096x8192x4096", "4096x28672x8192", "4096x8192x14336"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=20)
    ap.add_argument("-s", "--shapes", nargs="+", default=SHAPES)
    ap.add_argument("-o", default="torch_gemm.json")
    a = ap.parse_args()
    results = []
    print(f"{'shape (MxNxK)':20s} {'time_us':>10s} {'TFLOP/s':>10s}")
    for shape in a.shapes:
        m, n, k = map(int, shape.split("x"))
        x = torch.randn(m, k, dtype=torch.bfloat16, device="cuda")
        w = torch.randn(k, n, dtype=torch.bfloat16, device="cuda")
        for _ in range(a.n):
            torch.matmul(x, w)
        torch.cuda.synchronize()
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(a.n)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(a.n)]
        for i in range(a.n):
            starts[i].record()
            torch.matmul(x, w)
            ends[i].record()
        torch.cuda.synchronize()
        t = statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends)) * 1e-3
        tflops = 2.0 * m * n * k / t / 1e12
        print(f"{shape:20s} {t * 1e6:10.2f} {tflops:10.1f}", flush=True)
        results.append({"m": m, "n": n, "k": k, "dtype": "bf16", "time_us": t * 1e6, "tflops": tflops})
    ctx = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(0), "cuda_runtime": torch.version.cuda,
           "cublas": str(torch.backends.cuda.preferred_blas_library())}
    with open(a.o, "w") as f:
        json.dump({"schema_version": 1, "bench": "torch_gemm", "context": ctx, "iters": a.n,
                   "protocol": "n warm-up matmuls, then n matmuls each bracketed by cudaEvents; median",
                   "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
