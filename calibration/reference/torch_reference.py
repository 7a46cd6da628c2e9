#!/usr/bin/env python3
"""Plain PyTorch (eager, bf16, SDPA) training step of the same shapes as a lowered one-GPU twinstep schedule.

The shapes come from the schedule's ops (`--schedule step.json`, written by `twinstep lower ... --gpus 1`) or from
explicit flags. The step is built as the lowering models it (models/lowering/): per layer RMSNorm, QKV GEMM, RoPE,
causal SDPA with GQA, output projection, residual, RMSNorm, then a SwiGLU MLP (dense layers) or a MoE block (router
GEMM, softmax top-k, token-count D2H + sync, permute, chunk sort, the expert GEMMs (grouped, or a loop), unsort,
unpermute);
embedding, final norm, output layer and an fp32 cross-entropy; full recompute per layer where the schedule has it
(a reentrant checkpoint as Megatron's CheckpointFunction); main grads in the dtype the schedule's grad_norm implies
(bf16, or fp32 with grad_reduce_in_fp32), accumulated in the wgrad GEMM as Megatron's gradient accumulation fusion
does; grad norm, clipping and torch's fused Adam on fp32 master weights, copied back to the bf16 weights.

Every op runs inside a torch.profiler record_function range named like the schedule's op (`L3.mb0.fwd.qkv`,
`L3.mb0.bwd.qkv_dgrad`, `L3.mb0.recompute.attn`, `optim.adam`, ...), so a profiler trace of the step can be matched
to the schedule by name (`twinstep import-trace`). Prints JSON: median step time over --steps steps after --warmup
steps (CUDA events), peak memory (max_memory_allocated, max_memory_reserved, cudaMemGetInfo used), versions, GPU.

--fp8: the linear layers of the transformer layers (QKV, projection, MLP, experts) run torch._scaled_mm with
per-tensor current scaling (e4m3 activations and weights forward, e5m2 gradients backward, bf16 outputs); the
router, the output layer, attention, norms and the optimizer stay bf16/fp32. The dense layers cast each tensor once
with its transposed copy (TE's cast-transpose; torch.compile fuses the cast with --fuse-elementwise); the experts
cast per expert GEMM.
"""
import argparse
import contextlib
import hashlib
import json
import math
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch.autograd.profiler import record_function

ROPE_BASE = 500000.0
NORM_EPS = 1e-5
MAX_GRAD_NORM = 1.0


def fail(msg):
    print(f"torch_reference.py: error: {msg}", file=sys.stderr)
    sys.exit(2)


# ---------------------------------------------------------------------------------------------------------------
# Shapes: from a schedule or from flags


def shapes_from_schedule(path):
    """The model shapes of a one-GPU schedule, read from its ops (names as models/lowering/ writes them)."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
        s = json.loads(raw)
    except (OSError, ValueError) as e:
        fail(f"{path}: cannot read the schedule JSON ({e}); write one with `twinstep lower ... --gpus 1 -o {path}`")
    ranks = s.get("ranks", [])
    if len(ranks) != 1:
        fail(f"{path}: field ranks: the schedule has {len(ranks)} ranks; this script runs one-GPU schedules "
             "(lower with --gpus 1)")
    ops = {o["name"]: o for o in s.get("ops", []) if o.get("kind") == "compute"}

    def op(name):
        if name not in ops:
            fail(f"{path}: op {name} not found; the script expects the op names models/lowering/ writes")
        return ops[name]["kernel"]

    micro_batches = sorted({o["tags"]["microbatch"] for o in ops.values() if "microbatch" in o.get("tags", {})})
    layers = sorted({o["tags"]["layer"] for o in ops.values() if "layer" in o.get("tags", {})})
    qkv, attn = op("L0.mb0.fwd.qkv"), op("L0.mb0.fwd.attn")
    out = op("mb0.fwd.output")
    d = {
        "layers": len(layers), "hidden": qkv["k"], "heads": attn["heads_q"], "kv_heads": attn["heads_kv"],
        "head_dim": attn["head_dim"], "vocab": out["n"], "seq": attn["seq_q"], "mbs": attn["batch"],
        "micro_batches": len(micro_batches), "rope": "L0.mb0.fwd.rope" in ops, "causal": attn["causal"],
        "fp8": qkv.get("dtype") == "fp8", "ffn": 0, "experts": 0, "topk": 0, "moe_ffn": 0, "expert_splits": [],
        "moe_layers": [], "recompute_layers": [],
    }
    if qkv["n"] != (d["heads"] + 2 * d["kv_heads"]) * d["head_dim"]:
        fail(f"{path}: op L0.mb0.fwd.qkv: n={qkv['n']} is not (heads_q + 2 heads_kv) x head_dim of L0.mb0.fwd.attn "
             "(a TP > 1 schedule?); lower with --gpus 1")
    if attn["seq_q"] != attn["seq_kv"]:
        fail(f"{path}: op L0.mb0.fwd.attn: seq_q != seq_kv (context parallelism?); lower with --gpus 1")
    tokens = d["mbs"] * d["seq"]
    for layer in layers:
        if f"L{layer}.mb0.fwd.router" in ops:
            d["moe_layers"].append(layer)
            fc1, fc2 = op(f"L{layer}.mb0.fwd.experts_fc1"), op(f"L{layer}.mb0.fwd.experts_fc2")
            d["experts"] = op(f"L{layer}.mb0.fwd.router")["n"]
            d["expert_splits"] = list(fc1["m"])
            d["moe_ffn"] = fc2["k"]
            d["topk"] = sum(fc1["m"]) // tokens
            if fc1["n"] != 2 * fc2["k"]:
                fail(f"{path}: op L{layer}.mb0.fwd.experts_fc1: n={fc1['n']} is not 2 x the expert FFN; "
                     "only gated (SwiGLU) experts are built")
            if any(n.startswith(f"L{layer}.mb0.fwd.shared") for n in ops):
                fail(f"{path}: layer {layer} has shared experts, which this script does not build")
        else:
            fc1 = op(f"L{layer}.mb0.fwd.fc1")
            if f"L{layer}.mb0.fwd.swiglu" not in ops:
                fail(f"{path}: layer {layer} has no swiglu op; only gated (SwiGLU) MLPs are built")
            d["ffn"] = fc1["n"] // 2
        if f"L{layer}.mb0.recompute.ln1" in ops:
            d["recompute_layers"].append(layer)
        elif any(n.startswith(f"L{layer}.mb0.recompute.") for n in ops):
            fail(f"{path}: layer {layer} recomputes part of the layer (selective recompute); only full-layer "
                 "recompute is built")
    optim_params = op("optim.adam")["params"]
    # The main-grad dtype: MCore's optimizer casts bf16 main grads to fp32 first (optim.main_grad_cast, 2 + 4 B a
    # param), then norms and clips the fp32 grads; a schedule without the cast norms the main grads themselves.
    if "optim.main_grad_cast" in ops:
        d["grad_bytes"] = op("optim.main_grad_cast")["bytes"] // optim_params - 4
    else:
        d["grad_bytes"] = op("optim.grad_norm")["bytes"] // optim_params
    d["megatron_optimizer_passes"] = "optim.main_param_copy" in ops
    d["schedule_params"] = optim_params
    d["schedule"] = {"path": path, "sha256": hashlib.sha256(raw).hexdigest(), "name": s.get("name"),
                     "meta": s.get("meta", {})}
    return d


def shapes_from_flags(a):
    for field in ("layers", "hidden", "heads", "kv_heads", "vocab", "seq"):
        if getattr(a, field) is None:
            fail(f"--{field.replace('_', '-')} is required without --schedule")
    tokens = a.mbs * a.seq
    experts = a.experts or 0
    if experts and (a.topk is None or a.moe_ffn is None):
        fail("--experts needs --topk and --moe-ffn")
    if experts and (tokens * a.topk) % experts:
        fail(f"--experts {experts}: mbs x seq x topk = {tokens * a.topk} tokens do not split evenly over the experts")
    if not experts and a.ffn is None:
        fail("--ffn is required for dense layers")
    layers = list(range(a.layers))
    return {
        "layers": a.layers, "hidden": a.hidden, "heads": a.heads, "kv_heads": a.kv_heads,
        "head_dim": a.head_dim or a.hidden // a.heads, "vocab": a.vocab, "seq": a.seq, "mbs": a.mbs,
        "micro_batches": a.micro_batches, "rope": not a.no_rope, "causal": True, "fp8": False, "ffn": a.ffn or 0,
        "experts": experts, "topk": a.topk or 0, "moe_ffn": a.moe_ffn or 0,
        "expert_splits": [tokens * (a.topk or 0) // experts] * experts if experts else [],
        "moe_layers": layers if experts else [], "recompute_layers": layers if a.recompute == "full" else [],
        "grad_bytes": 4 if a.main_grad_dtype == "fp32" else 2, "schedule_params": None, "schedule": None,
        "megatron_optimizer_passes": True,
    }


# ---------------------------------------------------------------------------------------------------------------
# Named backward ranges. A range opens where the gradient enters a forward region (an identity node on the region's
# outputs) and closes when the next region, a linear layer's own dgrad/wgrad ranges, or the backward ends: autograd
# runs a layer's backward as a chain in reverse creation order, so each open range holds exactly that region's
# backward kernels.


class Segment:
    current = None

    @staticmethod
    def open(name):
        Segment.close()
        Segment.current = record_function(name)
        Segment.current.__enter__()

    @staticmethod
    def close():
        if Segment.current is not None:
            Segment.current.__exit__(None, None, None)
            Segment.current = None


class _OpenOnBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, name, *xs):
        ctx.name = name
        return tuple(x.view_as(x) for x in xs)

    @staticmethod
    def backward(ctx, *grads):
        Segment.open(ctx.name)
        return (None,) + grads


def bwd_range(name, *xs):
    """Marks xs (a region's outputs) so that the region's backward runs inside the range `name`."""
    if not torch.is_grad_enabled():
        return xs if len(xs) > 1 else xs[0]
    out = _OpenOnBackward.apply(name, *xs)
    return out if len(out) > 1 else out[0]


# ---------------------------------------------------------------------------------------------------------------
# GEMMs: bf16 or fp8 (torch._scaled_mm, per-tensor current scaling)

E4M3, E5M2 = getattr(torch, "float8_e4m3fn", None), getattr(torch, "float8_e5m2", None)


def quantize(x, fmt):
    """Per-tensor current scaling: x in fmt and the dequantisation scale (1 / scale)."""
    amax = x.abs().amax().float().clamp(min=1e-12)
    scale = torch.finfo(fmt).max / amax
    return (x.float() * scale).to(fmt), scale.reciprocal()


def quantize_t(x, fmt):
    """quantize() plus the transposed fp8 copy with the same scale (Transformer Engine's cast-transpose: the copy the
    other GEMM of the backward reads as its column-major operand)."""
    q, s = quantize(x, fmt)
    return q, q.t().contiguous(), s


# The fp8 casts the linear layers call through this table: eager by default; --fuse-elementwise compiles them (one or
# two fused kernels per cast, as TE's fused cast / cast-transpose kernels), see fuse_elementwise().
FP8_CAST = {"quantize": quantize, "quantize_t": quantize_t}


FP8_DTYPES = tuple(t for t in (E4M3, E5M2) if t is not None)


def gemm(a, b, scales=None, fast_accum=False):
    """The one GEMM of the linear layers, its kernel chosen by the operands' dtype: a [M,K] @ b [K,N]. fp8 operands
    (already cast; scales: their dequantisation scales (scale_a, scale_b)) run torch._scaled_mm, which wants a
    row-major and b column-major (a row-major [N,K] tensor transposed), bf16 output, fast accumulation where asked;
    other dtypes a plain matmul."""
    if a.dtype in FP8_DTYPES:
        sa, sb = scales
        return torch._scaled_mm(a, b, scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16, use_fast_accum=fast_accum)
    return a @ b


def mm(a, b_t, fp8, fmt_a=None, fmt_b=None, fast_accum=False):
    """a [M,K] @ b_t.T where b_t is [N,K] (a weight as stored): bf16, or cast to fp8 here with the given formats."""
    if not fp8:
        return gemm(a, b_t.t())
    qa, sa = FP8_CAST["quantize"](a.contiguous(), fmt_a)
    qb, sb = FP8_CAST["quantize"](b_t, fmt_b)
    return gemm(qa, qb.t(), (sa, sb), fast_accum)


# How the bf16 weight-gradient GEMM accumulates into fp32 main grads: inside the GEMM (addmm with an fp32 output,
# torch >= 2.8 on CUDA: cuBLAS with an fp32 C and beta 1, as Megatron's gradient accumulation fusion does), else a
# bf16 GEMM and an add. Set by probe_fp32_accumulation().
FP32_ACCUMULATE_IN_GEMM = False


def probe_fp32_accumulation(device):
    global FP32_ACCUMULATE_IN_GEMM
    if device.type != "cuda":
        return "bf16 GEMM + add (not CUDA)"
    try:
        acc = torch.zeros(16, 16, device=device)
        a = torch.ones(16, 32, device=device, dtype=torch.bfloat16)
        torch.addmm(acc, a, a.t(), out_dtype=torch.float32, out=acc)
        FP32_ACCUMULATE_IN_GEMM = bool(torch.all(acc == 32.0))
    except (TypeError, RuntimeError) as e:
        return f"bf16 GEMM + add (this torch has no fp32-output addmm: {str(e).splitlines()[0]})"
    return "in the GEMM (addmm, bf16 inputs, fp32 output and accumulator)" if FP32_ACCUMULATE_IN_GEMM else \
        "bf16 GEMM + add (the fp32-output addmm gave a wrong result)"


def accumulate_wgrad(main_grad, g2, x2, fp8):
    """main_grad += g2^T x2: in the GEMM itself when main_grad has the GEMM's dtype (bf16 main grads) or when this
    torch has the fp32-output addmm, else a bf16 GEMM and an add into the fp32 main grad."""
    if fp8:
        main_grad.add_(mm(g2.t().contiguous(), x2.t().contiguous(), True, E5M2, E4M3))
    elif main_grad.dtype == g2.dtype:
        main_grad.addmm_(g2.t(), x2)
    elif FP32_ACCUMULATE_IN_GEMM:
        torch.addmm(main_grad, g2.t(), x2, out_dtype=torch.float32, out=main_grad)
    else:
        main_grad.add_(gemm(g2.t(), x2))


class Linear(torch.autograd.Function):
    """y = x W^T with Megatron's backward: dgrad and wgrad as two named GEMMs, wgrad accumulated into W.main_grad.
    fp8 as Transformer Engine runs it: the forward casts the weight and the input once each with a transposed copy
    (cast-transpose) and keeps the fp8 copies the backward's GEMMs read (W^T for dgrad, x^T for wgrad); the backward
    casts the gradient once the same way."""

    @staticmethod
    def forward(ctx, x, w, prefix, fp8):
        ctx.prefix, ctx.fp8 = prefix, fp8
        x2 = x.reshape(-1, x.shape[-1])
        if not fp8:
            ctx.save_for_backward(x, w)
            return gemm(x2, w.t()).view(*x.shape[:-1], w.shape[0])
        qw, qw_t, sw = FP8_CAST["quantize_t"](w, E4M3)
        qx, qx_t, sx = FP8_CAST["quantize_t"](x2.contiguous(), E4M3)
        ctx.save_for_backward(qx_t, sx, qw_t, sw, w)
        ctx.x_shape = x.shape
        y = gemm(qx, qw.t(), (sx, sw), fast_accum=True)
        return y.view(*x.shape[:-1], w.shape[0])

    @staticmethod
    def backward(ctx, g):
        Segment.close()
        g2 = g.reshape(-1, g.shape[-1])
        if not ctx.fp8:
            x, w = ctx.saved_tensors
            x2 = x.reshape(-1, x.shape[-1])
            with record_function(ctx.prefix + "_dgrad"):
                dx = gemm(g2, w).view(x.shape)
            with record_function(ctx.prefix + "_wgrad"):
                accumulate_wgrad(w.main_grad, g2, x2, False)
            return dx, None, None, None
        qx_t, sx, qw_t, sw, w = ctx.saved_tensors
        with record_function(ctx.prefix + "_dgrad"):
            qg, qg_t, sg = FP8_CAST["quantize_t"](g2.contiguous(), E5M2)
            # dx [M,K] = g [M,N] @ W [N,K]: W as the column-major operand is qw_t [K,N] row-major, transposed.
            dx = gemm(qg, qw_t.t(), (sg, sw)).view(ctx.x_shape)
        with record_function(ctx.prefix + "_wgrad"):
            # dW [N,K] = g^T [N,M] @ x [M,K]: g^T row-major is qg_t; x column-major is qx_t [K,M] transposed.
            w.main_grad.add_(gemm(qg_t, qx_t.t(), (sg, sx)))
        return dx, None, None, None


# How the bf16 expert GEMMs run: one grouped GEMM per direction (torch._grouped_mm, torch >= 2.8 on sm90: CUTLASS
# grouped GEMM over the expert-sorted tokens, as Transformer Engine's GroupedLinear / Megatron's TEGroupedMLP run
# them), else a loop of per-expert GEMMs (Megatron's SequentialMLP). Set by probe_grouped_mm().
GROUPED_MM = False


def grouped_offsets(splits, device):
    """torch._grouped_mm's offs: the cumulative end row of each group, int32 on the device."""
    ends, row = [], 0
    for n in splits:
        row += n
        ends.append(row)
    return torch.tensor(ends, device=device, dtype=torch.int32)


def probe_grouped_mm(device):
    """Checks torch._grouped_mm in the three forms the experts use (fprop, dgrad, wgrad) against per-group GEMMs."""
    global GROUPED_MM
    if device.type != "cuda" or not hasattr(torch, "_grouped_mm"):
        return "per-expert GEMMs in a loop (this torch has no torch._grouped_mm)"
    try:
        gen = torch.Generator(device="cpu").manual_seed(3)
        splits, n, k = [32, 64, 16], 48, 80
        x = torch.randn(sum(splits), k, generator=gen).to(device, torch.bfloat16)
        w = torch.randn(len(splits), n, k, generator=gen).to(device, torch.bfloat16)
        g = torch.randn(sum(splits), n, generator=gen).to(device, torch.bfloat16)
        offs = grouped_offsets(splits, device)
        y = torch._grouped_mm(x, w.transpose(-2, -1), offs=offs)
        dx = torch._grouped_mm(g, w, offs=offs)
        dw = torch._grouped_mm(g.t(), x, offs=offs)
        rows = [0]
        for m in splits:
            rows.append(rows[-1] + m)
        ok = True
        for e in range(len(splits)):
            a, b = rows[e], rows[e + 1]
            ok &= torch.allclose(y[a:b].float(), (x[a:b].float() @ w[e].float().t()), rtol=3e-2, atol=0.5)
            ok &= torch.allclose(dx[a:b].float(), (g[a:b].float() @ w[e].float()), rtol=3e-2, atol=0.5)
            ok &= torch.allclose(dw[e].float(), (g[a:b].float().t() @ x[a:b].float()), rtol=3e-2, atol=0.5)
        GROUPED_MM = bool(ok)
    except (TypeError, RuntimeError) as e:
        return f"per-expert GEMMs in a loop (torch._grouped_mm failed: {str(e).splitlines()[0]})"
    return "grouped GEMM (torch._grouped_mm) per direction" if GROUPED_MM else \
        "per-expert GEMMs in a loop (torch._grouped_mm gave a wrong result)"


class ExpertLinear(torch.autograd.Function):
    """Expert GEMMs over expert-sorted tokens, W is [experts, out, in]: one grouped GEMM per direction (bf16, when
    probe_grouped_mm() found torch._grouped_mm), else per-expert GEMMs in a loop (Megatron's SequentialMLP; fp8)."""

    @staticmethod
    def forward(ctx, x, w, splits, prefix, fp8):
        ctx.save_for_backward(x, w)
        ctx.splits, ctx.prefix, ctx.fp8 = splits, prefix, fp8
        ctx.grouped = GROUPED_MM and not fp8 and all(splits)
        if ctx.grouped:
            ctx.offs = grouped_offsets(splits, x.device)
            return torch._grouped_mm(x, w.transpose(-2, -1), offs=ctx.offs)
        y = x.new_empty(x.shape[0], w.shape[1])
        row = 0
        for e, n in enumerate(splits):
            if n and fp8:
                y[row:row + n] = mm(x[row:row + n], w[e], True, E4M3, E4M3, fast_accum=True)
            elif n:
                torch.mm(x[row:row + n], w[e].t(), out=y[row:row + n])
            row += n
        return y

    @staticmethod
    def backward(ctx, g):
        Segment.close()
        x, w = ctx.saved_tensors
        if ctx.grouped:
            g = g.contiguous()
            with record_function(ctx.prefix + "_dgrad"):
                dx = torch._grouped_mm(g, w, offs=ctx.offs)
            with record_function(ctx.prefix + "_wgrad"):
                dw = torch._grouped_mm(g.t(), x, offs=ctx.offs)
                if w.main_grad.dtype == dw.dtype:
                    w.main_grad.add_(dw)
                else:
                    w.main_grad.add_(dw.to(w.main_grad.dtype))
            return dx, None, None, None, None
        dx = torch.empty_like(x)
        with record_function(ctx.prefix + "_dgrad"):
            row = 0
            for e, n in enumerate(ctx.splits):
                if n and ctx.fp8:
                    dx[row:row + n] = mm(g[row:row + n], w[e].t().contiguous(), True, E5M2, E4M3)
                elif n:
                    torch.mm(g[row:row + n], w[e], out=dx[row:row + n])
                row += n
        with record_function(ctx.prefix + "_wgrad"):
            row = 0
            for e, n in enumerate(ctx.splits):
                if n:
                    accumulate_wgrad(w.main_grad[e], g[row:row + n], x[row:row + n], ctx.fp8)
                row += n
        return dx, None, None, None, None


class Embedding(torch.autograd.Function):
    """Token embedding; its backward scatters the gradient straight into the table's main grad (embedding_wgrad)."""

    @staticmethod
    def forward(ctx, ids, w, name):
        ctx.save_for_backward(ids)
        ctx.w, ctx.name = w, name
        return F.embedding(ids, w)

    @staticmethod
    def backward(ctx, g):
        Segment.close()
        (ids,) = ctx.saved_tensors
        w = ctx.w
        with record_function(ctx.name):
            w.main_grad.index_add_(0, ids.reshape(-1), g.reshape(-1, g.shape[-1]).to(w.main_grad.dtype))
        return None, None, None


class Checkpoint(torch.autograd.Function):
    """Full recompute of one layer, reentrant as Megatron's CheckpointFunction: forward without saving activations,
    backward reruns the layer (ops named `recompute`) and backpropagates through it."""

    @staticmethod
    def forward(ctx, run, x):
        ctx.run = run
        ctx.save_for_backward(x)
        with torch.no_grad():
            return run(x, "fwd")

    @staticmethod
    def backward(ctx, g):
        Segment.close()
        (x,) = ctx.saved_tensors
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            y = ctx.run(x, "recompute")
        torch.autograd.backward(y, g)
        Segment.close()
        return None, x.grad


# ---------------------------------------------------------------------------------------------------------------
# The model


def rms_norm(x, w):
    if hasattr(F, "rms_norm"):
        return F.rms_norm(x, (x.shape[-1],), w, NORM_EPS)
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + NORM_EPS)).to(x.dtype) * w


def rotate(x, cos, sin):
    half = x.shape[-1] // 2
    rot = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rot * sin


def rope(q, k, cos, sin):
    return rotate(q, cos, sin), rotate(k, cos, sin)


def swiglu(u):
    a, g = u.chunk(2, dim=-1)
    return F.silu(a) * g


def cross_entropy(logits, labels, micro_batches):
    return F.cross_entropy(logits.float(), labels) / micro_batches


# The elementwise blocks the step calls through this table: eager by default; --fuse-elementwise compiles each
# (torch.compile, one fused Triton kernel per block and direction), as production stacks run them fused
# (Transformer Engine's RMSNorm and fused RoPE, Megatron's fused SwiGLU and cross-entropy loss fusion).
ELEMENTWISE = {"rms_norm": rms_norm, "rope": rope, "swiglu": swiglu, "cross_entropy": cross_entropy}


def fuse_elementwise():
    for table in (ELEMENTWISE, FP8_CAST):
        for name, fn in list(table.items()):
            table[name] = torch.compile(fn, fullgraph=True, dynamic=False)


def fused_sdpa():
    """A context that lets SDPA pick among its fused kernels (cuDNN, flash, memory-efficient) but never the math
    fallback, whose S x S score matrix would change both the time and the memory of the step."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    names = ("CUDNN_ATTENTION", "FLASH_ATTENTION", "EFFICIENT_ATTENTION")
    return sdpa_kernel([getattr(SDPBackend, n) for n in names if hasattr(SDPBackend, n)])


def sdpa_probe(device, d, sdpa_ctx):
    """How this torch runs causal GQA attention: SDPA with enable_gqa (forward and backward on a fused kernel), SDPA on
    repeated KV heads, or (torch < 2.0, CPU smoke runs only) a plain softmax(QK^T)V."""
    if not hasattr(F, "scaled_dot_product_attention"):
        return "manual"
    if d["heads"] == d["kv_heads"]:
        return "sdpa_mha"
    q = torch.randn(1, d["heads"], 256, d["head_dim"], device=device, dtype=torch.bfloat16, requires_grad=True)
    kv = torch.randn(1, d["kv_heads"], 256, d["head_dim"], device=device, dtype=torch.bfloat16, requires_grad=True)
    try:
        with sdpa_ctx():
            F.scaled_dot_product_attention(q, kv, kv, is_causal=True, enable_gqa=True).sum().backward()
        return "sdpa_gqa"
    except (TypeError, RuntimeError):
        return "sdpa_repeat_kv"


class Model:
    def __init__(self, d, device, fp8, sdpa):
        self.d, self.device, self.fp8, self.sdpa = d, device, fp8, sdpa
        self.params = []
        torch.manual_seed(1234)
        gen = None
        h, hd = d["hidden"], d["head_dim"]
        self.embedding = self.param(d["vocab"], h, gen=gen)
        self.layers = []
        for layer in range(d["layers"]):
            p = {"ln1": self.param(h, ones=True), "ln2": self.param(h, ones=True),
                 "qkv": self.param((d["heads"] + 2 * d["kv_heads"]) * hd, h, gen=gen),
                 "proj": self.param(h, d["heads"] * hd, gen=gen)}
            if layer in d["moe_layers"]:
                p["router"] = self.param(d["experts"], h, gen=gen)
                p["experts_fc1"] = self.param(d["experts"], 2 * d["moe_ffn"], h, gen=gen)
                p["experts_fc2"] = self.param(d["experts"], h, d["moe_ffn"], gen=gen)
            else:
                p["fc1"] = self.param(2 * d["ffn"], h, gen=gen)
                p["fc2"] = self.param(h, d["ffn"], gen=gen)
            self.layers.append(p)
        self.final_norm = self.param(h, ones=True)
        self.output = self.param(d["vocab"], h, gen=gen)
        pos = torch.arange(d["seq"], dtype=torch.float32)
        inv = ROPE_BASE ** (-torch.arange(0, hd, 2, dtype=torch.float32) / hd)
        ang = torch.outer(pos, inv).repeat(1, 2)  # [s, d]
        self.cos = ang.cos().to(device, torch.bfloat16)[None, :, None, :]
        self.sin = ang.sin().to(device, torch.bfloat16)[None, :, None, :]
        if d["moe_layers"]:
            tokens, k, e = d["mbs"] * d["seq"], d["topk"], d["experts"]
            if sum(d["expert_splits"]) != tokens * k:
                fail(f"expert splits sum to {sum(d['expert_splits'])}, not tokens x topk = {tokens * k}")
            # The lowering's routing: the per-expert token counts it wrote (balanced unless --moe-routing-skew). The
            # tokens x topk slots are dealt round-robin over the experts that still have room, so each expert gets
            # exactly its count and a token's top-k experts are distinct (as a router's are) while counts allow.
            left, idx, cur = list(d["expert_splits"]), [], 0
            for _ in range(tokens * k):
                while left[cur % e] == 0:
                    cur += 1
                idx.append(cur % e)
                left[cur % e] -= 1
                cur += 1
            self.route_idx = torch.tensor(idx, device=device).view(tokens, k)
            self.route_order = torch.sort(self.route_idx.reshape(-1).cpu(), stable=True)[1].to(device)
            self.route_token = self.route_order // k
        self.count = sum(p.numel() for p in self.params)

    def param(self, *shape, ones=False, gen=None):
        t = torch.empty(*shape, device=self.device, dtype=torch.bfloat16)
        t = (t.fill_(1.0) if ones else t.normal_(0.0, 0.02)).requires_grad_(True)
        self.params.append(t)
        return t

    # -- one transformer layer, ops named prefix.<op> (prefix = Ll.mbm.fwd or Ll.mbm.recompute)
    def layer(self, x, li, mb, phase):
        d, p = self.d, self.layers[li]
        pre, bwd = f"L{li}.mb{mb}.{phase}", f"L{li}.mb{mb}.bwd"
        b, s, hq, hkv, hd = d["mbs"], d["seq"], d["heads"], d["kv_heads"], d["head_dim"]
        with record_function(pre + ".ln1"):
            h = bwd_range(bwd + ".ln1_bwd", ELEMENTWISE["rms_norm"](x, p["ln1"]))
        with record_function(pre + ".qkv"):
            qkv = Linear.apply(h, p["qkv"], bwd + ".qkv", self.fp8).view(b, s, hq + 2 * hkv, hd)
        q, k, v = qkv.split([hq, hkv, hkv], dim=2)
        if d["rope"]:
            with record_function(pre + ".rope"):
                q, k = ELEMENTWISE["rope"](q, k, self.cos, self.sin)
                q, k, v = bwd_range(bwd + ".rope_bwd", q, k, v)
        with record_function(pre + ".attn"):
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            o = self.attention(q, k, v)
            o = bwd_range(bwd + ".attn_bwd", o.transpose(1, 2).reshape(b * s, hq * hd))
        with record_function(pre + ".proj"):
            o = Linear.apply(o, p["proj"], bwd + ".proj", self.fp8)
        with record_function(pre + ".residual1"):
            x = bwd_range(bwd + ".residual1_bwd", x + o)
        with record_function(pre + ".ln2"):
            h = bwd_range(bwd + ".ln2_bwd", ELEMENTWISE["rms_norm"](x, p["ln2"]))
        y = self.moe(h, li, mb, phase) if li in d["moe_layers"] else self.mlp(h, p, pre, bwd)
        with record_function(pre + ".residual2"):
            return bwd_range(bwd + ".residual2_bwd", x + y)

    def attention(self, q, k, v):
        if self.sdpa == "sdpa_gqa":
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        if self.sdpa == "sdpa_mha":
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        if self.sdpa == "sdpa_repeat_kv":
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        s = q.shape[2]
        att = (q @ k.transpose(-1, -2)).float() / math.sqrt(q.shape[-1])
        att = att.masked_fill(torch.ones(s, s, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
        return att.softmax(-1).to(q.dtype) @ v

    def mlp(self, h, p, pre, bwd):
        with record_function(pre + ".fc1"):
            u = Linear.apply(h, p["fc1"], bwd + ".fc1", self.fp8)
        with record_function(pre + ".swiglu"):
            u = bwd_range(bwd + ".swiglu_bwd", ELEMENTWISE["swiglu"](u))
        with record_function(pre + ".fc2"):
            return Linear.apply(u, p["fc2"], bwd + ".fc2", self.fp8)

    def moe(self, h, li, mb, phase):
        d, p = self.d, self.layers[li]
        pre, bwd = f"L{li}.mb{mb}.{phase}", f"L{li}.mb{mb}.bwd"
        tokens, k = d["mbs"] * d["seq"], d["topk"]
        h2 = h.reshape(tokens, -1)
        with record_function(pre + ".router"):
            logits = Linear.apply(h2, p["router"], bwd + ".router", False)
        with record_function(pre + ".router_topk"):
            scores = logits.float().softmax(-1)
            top, _ = scores.topk(k, dim=-1)  # computed as the router does; the slots follow the schedule's splits
            probs = scores.gather(1, self.route_idx)
            probs = bwd_range(bwd + ".router_topk_bwd", (probs / probs.sum(-1, keepdim=True)).to(h.dtype))
            counts = torch.bincount(self.route_idx.reshape(-1), minlength=d["experts"])
            del top
        with record_function(pre + ".moe_splits_d2h"):
            splits = counts.cpu().tolist()  # the D2H copy and the host's wait for it (moe_splits_sync)
        with record_function(pre + ".moe_permute"):
            xp = bwd_range(bwd + ".moe_permute_bwd", h2.index_select(0, self.route_token))
            pp = probs.reshape(-1).index_select(0, self.route_order)
        with record_function(pre + ".moe_sort"):
            xs = bwd_range(bwd + ".moe_sort_bwd", torch.cat(xp.split(splits)))
        with record_function(pre + ".experts_fc1"):
            u = ExpertLinear.apply(xs, p["experts_fc1"], splits, bwd + ".experts_fc1", self.fp8)
        with record_function(pre + ".experts_act"):
            a, g = u.chunk(2, dim=-1)
            u = bwd_range(bwd + ".experts_act_bwd", F.silu(a) * g)
        with record_function(pre + ".experts_fc2"):
            y = ExpertLinear.apply(u, p["experts_fc2"], splits, bwd + ".experts_fc2", self.fp8)
        with record_function(pre + ".moe_unsort"):
            y = bwd_range(bwd + ".moe_unsort_bwd", torch.cat(y.split(splits)))
        with record_function(pre + ".moe_unpermute"):
            out = torch.zeros_like(h2).index_add(0, self.route_token, y * pp.unsqueeze(-1))
            return bwd_range(bwd + ".moe_unpermute_bwd", out.view_as(h))

    def forward_backward(self, ids, labels, mb):
        d = self.d
        pre, bwd = f"mb{mb}.fwd", f"mb{mb}.bwd"
        with record_function(pre + ".embedding"):
            x = Embedding.apply(ids, self.embedding, bwd + ".embedding_wgrad").view(-1, d["hidden"])
        for li in range(d["layers"]):
            if li in d["recompute_layers"]:
                x = Checkpoint.apply(lambda t, phase, li=li: self.layer(t, li, mb, phase), x)
            else:
                x = self.layer(x, li, mb, "fwd")
        with record_function(pre + ".final_norm"):
            x = bwd_range(bwd + ".final_norm_bwd", ELEMENTWISE["rms_norm"](x, self.final_norm))
        with record_function(pre + ".output"):
            logits = Linear.apply(x, self.output, bwd + ".output", False)
        with record_function(pre + ".cross_entropy"):
            loss = ELEMENTWISE["cross_entropy"](logits, labels.reshape(-1), d["micro_batches"])
        # The loss is the backward's root: a range opened by a node on it holds the whole loss backward (the loss
        # scaling, NLL and softmax backward, the cast of the fp32 logits' gradient to bf16) until the output layer's
        # dgrad closes it. Autograd runs the backward on its own thread, so the range must open inside the graph.
        loss = bwd_range(bwd + ".cross_entropy_bwd", loss)
        loss.backward()
        Segment.close()
        return loss


def copy(dst, src):
    with torch.no_grad():
        if hasattr(torch, "_foreach_copy_"):
            torch._foreach_copy_(dst, src)
        else:
            for a, b in zip(dst, src):
                a.copy_(b)


# Megatron's train_step zeroes each model chunk's grad buffers first (DistributedDataParallel.zero_grad_buffer); the
# schedule's op for it on one GPU (one chunk) is named so.
ZERO_GRAD_RANGE = "dp.chunk0.zero_grad_buffer"


class Optimizer:
    """Megatron's mixed-precision optimizer on one GPU: main grads (bf16 or fp32), fp32 master weights, global grad
    norm, clipping, Adam (torch's fused kernel on CUDA), and the copy back into the bf16 weights."""

    def __init__(self, model, grad_dtype):
        self.params = model.params
        for p in self.params:
            p.main_grad = torch.zeros_like(p, dtype=grad_dtype)
        self.masters = [p.detach().float() for p in self.params]
        for m, p in zip(self.masters, self.params):
            m.grad = p.main_grad if grad_dtype == torch.float32 else torch.zeros_like(m)
        fused = {"fused": True} if model.device.type == "cuda" else {}
        self.adam = torch.optim.Adam(self.masters, lr=1e-5, betas=(0.9, 0.95), eps=1e-8, **fused)
        self.grads = [p.main_grad for p in self.params]
        self.masters_grads = [m.grad for m in self.masters]
        self.cast = grad_dtype != torch.float32

    def zero(self):
        for g in self.grads:
            g.zero_()

    def fold_autograd_grads(self):
        """Norm weights get their gradients from autograd (.grad); add them to the main grads."""
        for p in self.params:
            if p.grad is not None:
                p.main_grad.add_(p.grad)
                p.grad = None

    def step(self, megatron_passes=True):
        """megatron_passes: MCore's MixedPrecisionOptimizer.step() order and ranges (the schedule's
        optim.main_grad_cast, grad_norm and clip_grads on the fp32 main grads, adam, main_param_copy); else the older
        schedules' (norm and clip on the main grads, the cast and the copy back inside optim.adam)."""
        grads = self.grads
        if megatron_passes:
            if self.cast:
                with record_function("optim.main_grad_cast"):
                    copy(self.masters_grads, self.grads)
            grads = self.masters_grads
        with record_function("optim.grad_norm"):
            norm = torch.stack([n.float() for n in torch._foreach_norm(grads)]).norm()
        with record_function("optim.clip_grads"):
            coef = (MAX_GRAD_NORM / (norm + 1e-6)).clamp(max=1.0).to(grads[0].dtype)
            try:
                torch._foreach_mul_(grads, coef)
            except (TypeError, RuntimeError):  # torch < 2.1: no tensor-scalar foreach overload
                for g in grads:
                    g.mul_(coef)
        with record_function("optim.adam"):
            if self.cast and not megatron_passes:
                copy(self.masters_grads, self.grads)
            self.adam.step()
            if not megatron_passes:
                copy(self.params, self.masters)
        if megatron_passes:
            with record_function("optim.main_param_copy"):
                copy(self.params, self.masters)


# ---------------------------------------------------------------------------------------------------------------


def timed_steps(step, a, cuda, sync):
    """--warmup steps, then --steps timed ones: CUDA events around each step (host issue included)."""
    for _ in range(a.warmup):
        step()
    sync()
    times, losses = [], []
    for _ in range(a.steps):
        if cuda:
            t0, t1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            t0.record()
            losses.append(step())
            t1.record()
            torch.cuda.synchronize()
            times.append(t0.elapsed_time(t1) * 1e-3)
        else:
            c0 = time.perf_counter()
            losses.append(step())
            times.append(time.perf_counter() - c0)
    return times, losses


def write_json(result, path):
    text = json.dumps(result, indent=2)
    print(text)
    if path:
        with open(path, "w") as f:
            f.write(text + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--schedule", help="one-GPU schedule JSON from `twinstep lower ... --gpus 1 -o FILE`")
    g = ap.add_argument_group("shapes without --schedule")
    g.add_argument("--layers", type=int)
    g.add_argument("--hidden", type=int)
    g.add_argument("--ffn", type=int, help="dense MLP hidden size (SwiGLU: fc1 has 2 x ffn outputs)")
    g.add_argument("--heads", type=int)
    g.add_argument("--kv-heads", type=int)
    g.add_argument("--head-dim", type=int)
    g.add_argument("--vocab", type=int)
    g.add_argument("--seq", type=int)
    g.add_argument("--mbs", type=int, default=1)
    g.add_argument("--micro-batches", type=int, default=1)
    g.add_argument("--experts", type=int, help="MoE in every layer with this many experts")
    g.add_argument("--topk", type=int)
    g.add_argument("--moe-ffn", type=int)
    g.add_argument("--recompute", choices=["none", "full"], default="none")
    g.add_argument("--no-rope", action="store_true")
    g.add_argument("--main-grad-dtype", choices=["bf16", "fp32"], default="fp32")
    ap.add_argument("--fp8", action="store_true", help="fp8 linear layers (torch._scaled_mm); default: as the "
                    "schedule's GEMM dtype")
    ap.add_argument("--fuse-elementwise", action="store_true", help="torch.compile RMSNorm, RoPE, SwiGLU and the "
                    "cross entropy into fused kernels, as Transformer Engine / Megatron run them (default: eager)")
    ap.add_argument("--sdpa-backend", choices=["auto", "cudnn", "flash", "efficient", "math"], default="auto")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--profile-trace", help="write a PyTorch profiler (Kineto) Chrome trace of one more step here")
    ap.add_argument("-o", "--output", help="also write the JSON here")
    a = ap.parse_args()

    d = shapes_from_schedule(a.schedule) if a.schedule else shapes_from_flags(a)
    fp8 = a.fp8 or d["fp8"]
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        fail("--device cuda: no CUDA device visible to torch; use --device cpu for a smoke run")
    if fp8 and (E4M3 is None or not hasattr(torch, "_scaled_mm") or device.type != "cuda"):
        fail("--fp8 needs torch >= 2.1 with torch._scaled_mm on a CUDA device of compute capability >= 8.9")
    sdpa_ctx = contextlib.nullcontext
    if a.sdpa_backend != "auto":
        from torch.nn.attention import SDPBackend, sdpa_kernel
        backend = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
                   "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}[a.sdpa_backend]
        sdpa_ctx = lambda: sdpa_kernel(backend)  # noqa: E731
    elif device.type == "cuda":
        sdpa_ctx = fused_sdpa
    sdpa = sdpa_probe(device, d, sdpa_ctx)
    grad_dtype = torch.float32 if d["grad_bytes"] == 4 else torch.bfloat16
    wgrad_accumulation = probe_fp32_accumulation(device) if grad_dtype == torch.float32 else \
        "in the GEMM (bf16 main grads, addmm_)"
    if a.fuse_elementwise:
        fuse_elementwise()
    experts_gemm = probe_grouped_mm(device) if d["experts"] else None

    model = Model(d, device, fp8, sdpa)
    opt = Optimizer(model, grad_dtype)
    gen = torch.Generator(device="cpu").manual_seed(7)
    batches = [(torch.randint(0, d["vocab"], (d["mbs"], d["seq"]), generator=gen).to(device),
                torch.randint(0, d["vocab"], (d["mbs"], d["seq"]), generator=gen).to(device))
               for _ in range(d["micro_batches"])]

    def step():
        with record_function(ZERO_GRAD_RANGE):
            opt.zero()
        loss = None
        for mb, (ids, labels) in enumerate(batches):
            loss = model.forward_backward(ids, labels, mb)
        with record_function("fold_norm_grads"):
            opt.fold_autograd_grads()
        opt.step(d["megatron_optimizer_passes"])
        return loss

    attention_ctx = sdpa_ctx()
    attention_ctx.__enter__()

    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    try:
        times, losses = timed_steps(step, a, cuda, sync)
    except RuntimeError as e:  # torch.cuda.OutOfMemoryError is a RuntimeError
        if "out of memory" not in str(e):
            raise
        result = {"schema_version": 1, "bench": "torch_reference", "error": "out of memory",
                  "detail": str(e).splitlines()[0], "shapes": {k: v for k, v in d.items() if k != "expert_splits"},
                  "memory": {"max_allocated_bytes": torch.cuda.max_memory_allocated(),
                             "max_reserved_bytes": torch.cuda.max_memory_reserved()}}
        write_json(result, a.output)
        sys.exit(3)
    losses = [float(x) for x in losses]
    if not all(math.isfinite(x) for x in losses):
        fail(f"the loss is not finite ({losses}): the step is broken, its time would be meaningless")

    mem = {}
    if cuda:
        free, total = torch.cuda.mem_get_info()
        mem = {"max_allocated_bytes": torch.cuda.max_memory_allocated(),
               "max_reserved_bytes": torch.cuda.max_memory_reserved(),
               "device_used_bytes": total - free, "device_total_bytes": total}

    attention_ops = None
    if a.profile_trace:
        from torch.profiler import ProfilerActivity, profile
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=acts, record_shapes=True) as prof:
            with record_function("step"):
                step()
            sync()
        if hasattr(prof, "add_metadata_json") and d["schedule"]:
            prof.add_metadata_json("twinstep_schedule", json.dumps(d["schedule"]))
        prof.export_chrome_trace(a.profile_trace)
        attention_ops = sorted({e.key for e in prof.key_averages() if e.key.startswith("aten::_scaled_dot_product")
                                or e.key.startswith("aten::_flash_attention") or e.key.startswith("aten::_efficient")})

    attention_ctx.__exit__(None, None, None)

    shapes = {k: v for k, v in d.items() if k not in ("schedule", "expert_splits")}
    result = {
        "schema_version": 1, "bench": "torch_reference",
        "step_time_s": statistics.median(times), "step_times_s": times, "warmup": a.warmup, "steps": a.steps,
        "timing": "CUDA events around each step (host issue included), median over the steps" if cuda
                  else "time.perf_counter around each step, median over the steps",
        "loss": losses[-1], "memory": mem, "shapes": shapes, "schedule": d["schedule"],
        "params": model.count,
        "params_match_schedule": None if d["schedule_params"] is None else model.count == d["schedule_params"],
        "main_grad_dtype": str(grad_dtype).replace("torch.", ""),
        "wgrad_accumulation": wgrad_accumulation,
        "experts_gemm": experts_gemm,
        "elementwise": ("torch.compile (fused kernels) of " + ", ".join(ELEMENTWISE)) if a.fuse_elementwise
                       else "eager",
        "attention": {"path": sdpa, "sdpa_backends": "fused only (cuDNN, flash, efficient; no math fallback)"
                      if a.sdpa_backend == "auto" and cuda else a.sdpa_backend,
                      "ops_in_profiled_step": attention_ops},
        "fp8": ("linear layers of the transformer layers (qkv, proj, fc1, fc2, experts) via torch._scaled_mm, "
                "per-tensor current scaling, e4m3 forward / e5m2 gradients; router, output layer, attention, "
                "norms, cross-entropy and the optimizer bf16/fp32") if fp8 else None,
        "context": {"torch": torch.__version__, "cuda": torch.version.cuda,
                    "cudnn": torch.backends.cudnn.version() if cuda else None,
                    "gpu": torch.cuda.get_device_name(device) if cuda else "cpu",
                    "device": str(device)},
    }
    write_json(result, a.output)


if __name__ == "__main__":
    main()
