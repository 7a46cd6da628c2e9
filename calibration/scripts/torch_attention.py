#!/usr/bin/env python3
"""torch.nn.functional.scaled_dot_product_attention side of the attention comparison, with the protocol of
bench/backend/attention_bench: per sequence length (bf16, [batch, heads, seq, head_dim], causal, grouped-query
K/V) at least --warmup-ms of back-to-back forward + backward, then --steps timed runs of the forward alone and of
forward + backward, each bracketed by cudaEvents; time = median over the runs; backward = (forward + backward) -
forward. Inputs carry the backend's fill pattern (torch_gemm.pattern). One row per torch backend: `default` (what
torch picks with enable_gqa=True), `cudnn` (SDPBackend.CUDNN_ATTENTION; where it refuses grouped K/V, K and V are
expanded to every query head before timing, which adds their gradient's group sum to nothing it times), `flash`
(SDPBackend.FLASH_ATTENTION)."""
import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_gemm import pattern  # noqa: E402  the backend's fill pattern, one definition

BACKENDS = {"default": None, "cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}


def tensor(b, h, s, d, data):
    return pattern(b * h * s, d, data).view(b, h, s, d).requires_grad_(True)


def timed(fn, steps):
    out = []
    for _ in range(steps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        out.append(start.elapsed_time(end))
    return statistics.median(out)


def measure(name, seq, a):
    q = tensor(a.batch, a.heads_q, seq, a.head_dim, a.data)
    k = tensor(a.batch, a.heads_kv, seq, a.head_dim, a.data)
    v = tensor(a.batch, a.heads_kv, seq, a.head_dim, a.data)
    dout = pattern(a.batch * a.heads_q * seq, a.head_dim, a.data).view(a.batch, a.heads_q, seq, a.head_dim)
    backend = BACKENDS[name]
    gqa = True

    def fwd():
        return F.scaled_dot_product_attention(q, k, v, is_causal=not a.full, enable_gqa=gqa)

    def both():
        fwd().backward(dout)

    def run(fn):
        if backend is None:
            return fn()
        with sdpa_kernel([backend]):
            return fn()

    note = ""
    try:
        run(both)
    except RuntimeError as e:
        if name != "cudnn" or a.heads_q == a.heads_kv:
            return {"seq": seq, "backend": name, "error": str(e).splitlines()[0]}
        g = a.heads_q // a.heads_kv
        k = k.detach().repeat_interleave(g, dim=1).requires_grad_(True)
        v = v.detach().repeat_interleave(g, dim=1).requires_grad_(True)
        gqa = False
        note = "K/V expanded to every query head (cuDNN refused enable_gqa)"
        try:
            run(both)
        except RuntimeError as e2:
            return {"seq": seq, "backend": name, "error": str(e2).splitlines()[0]}
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < a.warmup_ms * 1e-3:
        run(both)
        torch.cuda.synchronize()
    tf = timed(lambda: run(fwd), a.steps)
    tfb = timed(lambda: run(both), a.steps)
    gemm = 2.0 * a.batch * a.heads_q * seq * seq * a.head_dim * (1.0 if a.full else 0.5)
    row = {"seq": seq, "backend": name, "fwd_ms": tf, "bwd_ms": tfb - tf, "fwd_bwd_ms": tfb,
           "fwd_tflops": 2 * gemm / (tf * 1e-3) / 1e12, "bwd_tflops": 5 * gemm / ((tfb - tf) * 1e-3) / 1e12}
    if note:
        row["note"] = note
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seq", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384, 32768])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--heads-q", type=int, default=32)
    ap.add_argument("--heads-kv", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--full", action="store_true", help="no causal mask")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup-ms", type=float, default=1000.0)
    ap.add_argument("--backends", nargs="+", default=list(BACKENDS))
    ap.add_argument("--data", choices=["pattern", "randn"], default="pattern")
    ap.add_argument("-o", default="torch_attention.json")
    a = ap.parse_args()
    results = []
    print(f"{'seq':>8s} {'backend':>8s} {'fwd_ms':>10s} {'bwd_ms':>10s} {'fwd+bwd_ms':>12s} {'fwd_TF/s':>10s}")
    for seq in a.seq:
        for name in a.backends:
            r = measure(name, seq, a)
            results.append(r)
            if "error" in r:
                print(f"{seq:8d} {name:>8s} error: {r['error'][:80]}")
            else:
                print(f"{seq:8d} {name:>8s} {r['fwd_ms']:10.3f} {r['bwd_ms']:10.3f} {r['fwd_bwd_ms']:12.3f} "
                      f"{r['fwd_tflops']:10.1f}")
            torch.cuda.empty_cache()
    ctx = {"torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": str(torch.backends.cudnn.version()),
           "gpu": torch.cuda.get_device_name(), "command": " ".join(sys.argv)}
    with open(a.o, "w") as f:
        json.dump({"schema_version": 1, "bench": "torch_attention", "context": ctx, "results": results}, f, indent=2)
    print("wrote", a.o)


if __name__ == "__main__":
    main()
