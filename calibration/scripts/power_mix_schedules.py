#!/usr/bin/env python3
"""One-GPU schedules that mix a power-hungry kernel (a 4096^3 bf16 GEMM, or the suite's causal attention) with a
lighter one (an HBM-bound elementwise kernel) or with GPU idle time, at set shares of GPU time, in blocks of about
10 ms. Run by the backend with the GPU monitor (trace context gpu_monitor*), they give the SM clock and the board
power the GPU settles at for each mix under its power cap: the microbenchmark a clock model needs (how much power
each kernel class draws at which clock), taken without changing any GPU setting.

Usage: power_mix_schedules.py OUTDIR
Writes OUTDIR/<name>.json and OUTDIR/list.txt (one name per line); also, as shape_MxNxK, each GEMM shape of the
4-layer llama3-8b validation model alone. Shares are planned from nominal kernel times
(GEMM 215 us, attention fwd 1.5 ms, non-causal 0.25 ms (cuDNN), elementwise 512 MiB 0.12 ms); the measured trace
gives the real shares. Heavy kinds: gemm, attention (causal), attnnc (non-causal attention, the CP chunks'),
elementwise."""
import json
import os
import sys

GEMM = {"class": "gemm", "m": 4096, "n": 4096, "k": 4096, "batch": 1, "dtype": "bf16"}
ATTN = {"class": "attention", "batch": 1, "heads_q": 16, "heads_kv": 4, "seq_q": 4096, "seq_kv": 4096,
        "head_dim": 128, "causal": True, "backward": False, "dtype": "bf16"}
ATTN_NONCAUSAL = dict(ATTN, causal=False)
ELEM = {"class": "elementwise", "bytes": 512 << 20, "flops": 0}
KERNELS = {"gemm": GEMM, "attention": ATTN, "attnnc": ATTN_NONCAUSAL, "elementwise": ELEM}
NOMINAL_S = {"gemm": 215e-6, "attention": 1.5e-3, "attnnc": 0.25e-3, "elementwise": 0.12e-3}
BLOCK_S = 10e-3
STEP_S = 0.25


class Sched:
    def __init__(self, name):
        self.name = name
        self.ops = []

    def add(self, **op):
        op["id"] = len(self.ops)
        op["rank"] = 0
        op.setdefault("deps", [])
        self.ops.append(op)
        return op["id"]

    def dump(self, path):
        s = {"schema_version": 1, "name": self.name, "world_size": 1, "ranks": [0],
             "streams": [{"name": "compute", "priority": 0}], "communicators": [], "ops": self.ops,
             "meta": {"generator": "calibration/scripts/power_mix_schedules.py"}, "warnings": []}
        json.dump(s, open(path, "w"))


def block(s, heavy, share, filler, block_s=BLOCK_S):
    """One ~10 ms block: `share` of it in `heavy` kernels, the rest in `filler` (a kernel class, or "idle": the host
    waits for the GPU, then spins, so the GPU has nothing queued)."""
    kern = KERNELS[heavy]
    n_heavy = max(1, round(block_s * share / NOMINAL_S[heavy]))
    last = None
    for _ in range(n_heavy):
        last = s.add(name=f"{heavy}", kind="compute", stream="compute", kernel=kern)
    rest_s = n_heavy * NOMINAL_S[heavy] * (1 - share) / share
    if rest_s <= 0:
        return
    if filler == "idle":
        s.add(name="drain", kind="host_sync", target=last)
        s.add(name="idle", kind="host", duration_ns=int(rest_s * 1e9))
    else:
        for _ in range(max(1, round(rest_s / NOMINAL_S[filler]))):
            s.add(name=filler, kind="compute", stream="compute", kernel=KERNELS[filler])


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    plans = []
    for share in (1.0, 0.85, 0.7, 0.55, 0.4, 0.25):
        plans.append(("gemm", share, "idle"))
    for share in (0.85, 0.7, 0.5, 0.3):
        plans.append(("gemm", share, "elementwise"))
    for share in (1.0, 0.7, 0.4):
        plans.append(("attention", share, "idle"))
    # For the clock model (docs/calibration.md section 8): the non-causal attention of CP chunks alone and at 70 %
    # (its power at full clock), HBM-bound work alone and at 50 % (its power with nothing beside it), causal attention
    # at 70 % beside elementwise (whether attention and memory power add), and GEMM at 85 % beside idle time in blocks
    # of 2 and 50 ms instead of 10 (whether the cap acts on the average over a step or on its phases).
    for share in (1.0, 0.7):
        plans.append(("attnnc", share, "idle"))
    plans += [("elementwise", 1.0, "idle"), ("elementwise", 0.5, "idle"), ("attention", 0.7, "elementwise")]
    plans += [("gemm", 0.85, "idle", 2e-3), ("gemm", 0.85, "idle", 50e-3)]
    names = []
    # GEMM shapes alone (the 4-layer llama3-8b validation model's: attention projections, MLP, LM head), 100 % share:
    # the clock and power each shape settles at by itself (shapes differ: 4096^3 settles higher than the LM head).
    for m, n, k in ((4096, 6144, 4096), (4096, 4096, 4096), (4096, 28672, 4096), (4096, 4096, 14336),
                    (4096, 128256, 4096), (128256, 4096, 4096)):
        kern = dict(GEMM, m=m, n=n, k=k)
        nominal = 2.0 * m * n * k / 650e12
        s = Sched(f"power mix: GEMM {m}x{n}x{k} alone")
        for _ in range(max(1, round(STEP_S / nominal))):
            s.add(name="gemm", kind="compute", stream="compute", kernel=kern)
        name = f"shape_{m}x{n}x{k}"
        s.dump(os.path.join(out, name + ".json"))
        names.append(name)
    for heavy, share, filler, *blk in plans:
        block_s = blk[0] if blk else BLOCK_S
        name = f"{heavy}_{int(round(share * 100))}_{filler}" + (f"_b{int(block_s * 1e3)}ms" if blk else "")
        s = Sched(f"power mix: {heavy} {share:.2f} of GPU time, rest {filler}, blocks of {block_s * 1e3:.0f} ms")
        for _ in range(max(1, int(STEP_S / block_s))):
            block(s, heavy, share, filler, block_s)
        s.dump(os.path.join(out, name + ".json"))
        names.append(name)
    open(os.path.join(out, "list.txt"), "w").write("\n".join(names) + "\n")
    print(f"{len(names)} schedules in {out}")


if __name__ == "__main__":
    main()
