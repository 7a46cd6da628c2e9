#!/usr/bin/env python3
"""torch.matmul side of the GEMM comparison, with the protocol of bench/backend/gemm_sweep_bench: per shape
(MxNxK: [M,K] @ [K,N], bf16) at least --warmup-ms of back-to-back matmuls, then --steps steps of n matmuls each
bracketed by cudaEvents; time = per op the median over the steps, then the median over the n ops; TFLOP/s = 2MNK /
time. By default (--data pattern) the inputs carry the backend's fill pattern bit for bit in distribution (bf16
words 0x3C00 | random low 10 bits | random sign: magnitudes in [2^-7, 2)), so that both sides multiply data of the
same bit statistics: under the 700 W cap the data changes the GEMM's power draw and so its clock. --data randn
draws torch.randn instead. --side-stream issues on a non-default stream (the backend's streams are non-blocking).
--dtype fp8: torch._scaled_mm on A [M,K] and B stored [N,K] (the TN layout FP8 tensor cores need), fp8 bytes
the same fill words reinterpreted (as the backend's buffers are), per-tensor scales 1, bf16 output; fast
accumulation for e4m3 x e4m3 as the backend (Transformer Engine's forward), not with --a-format e5m2."""
import argparse
import json
import statistics
import time

import torch

SHAPES = ["4096x4096x4096", "8192x8192x8192", "16384x2048x2048", "4096x768x2048", "2048x2048x768",
          "4096x5120x8192", "4096x8192x4096", "4096x28672x8192", "4096x8192x14336"]


def pattern(rows, cols, data):
    if data == "randn":
        return torch.randn(rows, cols, device="cuda", dtype=torch.bfloat16)
    bits = torch.randint(0, 1 << 16, (rows, cols), device="cuda", dtype=torch.int32)
    word = 0x3C00 | (bits & 0x03FF) | (bits & 0x8000)
    return torch.where(word >= 0x8000, word - 0x10000, word).to(torch.int16).view(torch.bfloat16)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=20)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup-ms", type=float, default=1000.0)
    ap.add_argument("-s", "--shapes", nargs="+", default=SHAPES)
    ap.add_argument("--data", choices=["pattern", "randn"], default="pattern")
    ap.add_argument("--side-stream", action="store_true")
    ap.add_argument("--dtype", choices=["bf16", "fp8"], default="bf16")
    ap.add_argument("--a-format", choices=["e4m3", "e5m2"], default="e4m3")
    ap.add_argument("-o", default="torch_gemm.json")
    a = ap.parse_args()
    if a.side_stream:
        torch.cuda.set_stream(torch.cuda.Stream())
    results = []
    print(f"{'shape (MxNxK)':20s} {'time_us':>10s} {'TFLOP/s':>10s}")
    for shape in a.shapes:
        m, n, k = map(int, shape.split("x"))
        if a.dtype == "fp8":
            fa = torch.float8_e5m2 if a.a_format == "e5m2" else torch.float8_e4m3fn
            x = pattern(m, k // 2, a.data).view(torch.uint8).view(fa)
            w = pattern(n, k // 2, a.data).view(torch.uint8).view(torch.float8_e4m3fn).t()  # [K,N], column-major
            one = torch.ones((), device="cuda", dtype=torch.float32)
            fast = a.a_format == "e4m3"

            def mm(x=x, w=w, one=one, fast=fast):
                return torch._scaled_mm(x, w, one, one, out_dtype=torch.bfloat16, use_fast_accum=fast)
        else:
            x = pattern(m, k, a.data)
            w = pattern(k, n, a.data)

            def mm(x=x, w=w):
                return torch.matmul(x, w)
        mm()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < a.warmup_ms * 1e-3:
            for _ in range(a.n):
                mm()
            torch.cuda.synchronize()
        per_op = [[] for _ in range(a.n)]
        for _ in range(a.steps):
            starts = [torch.cuda.Event(enable_timing=True) for _ in range(a.n)]
            ends = [torch.cuda.Event(enable_timing=True) for _ in range(a.n)]
            for i in range(a.n):
                starts[i].record()
                mm()
                ends[i].record()
            torch.cuda.synchronize()
            for i in range(a.n):
                per_op[i].append(starts[i].elapsed_time(ends[i]) * 1e-3)
        t = statistics.median(statistics.median(v) for v in per_op)
        tflops = 2.0 * m * n * k / t / 1e12
        print(f"{shape:20s} {t * 1e6:10.2f} {tflops:10.1f}", flush=True)
        results.append({"m": m, "n": n, "k": k, "dtype": a.dtype, "time_us": t * 1e6, "tflops": tflops})
    ctx = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(0), "cuda_runtime": torch.version.cuda,
           "cublas": str(torch.backends.cuda.preferred_blas_library()), "data": a.data,
           "side_stream": a.side_stream, "dtype": a.dtype}
    if a.dtype == "fp8":
        ctx["a_format"] = a.a_format
    with open(a.o, "w") as f:
        json.dump({"schema_version": 1, "bench": "torch_gemm", "context": ctx, "iters": a.n, "steps": a.steps,
                   "warmup_ms": a.warmup_ms,
                   "protocol": "per shape: >= warmup_ms of back-to-back matmuls, then `steps` steps of n matmuls "
                               "each bracketed by cudaEvents; per-op median over steps, median over ops",
                   "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
