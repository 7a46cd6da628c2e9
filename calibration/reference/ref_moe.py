"""The MoE block of torch_reference.py: the routing the schedule wrote, the expert GEMMs (one grouped GEMM per
direction where torch has torch._grouped_mm, else per-expert GEMMs) and the block's named forward ops."""
import torch
import torch.nn.functional as F
from torch.autograd.profiler import record_function

from ref_fp8 import E4M3, E5M2
from ref_linear import Linear, accumulate_wgrad, mm
from ref_ranges import Segment, bwd_range
from ref_shapes import fail


# How the bf16 expert GEMMs run: one grouped GEMM per direction (torch._grouped_mm, torch >= 2.8 on sm90: a CUTLASS
# grouped GEMM over the expert-sorted tokens; Transformer Engine's GroupedLinear / Megatron's TEGroupedMLP run such a
# kernel only with NVTE_USE_CUTLASS_GROUPED_GEMM=1 on Hopper: by default one cuBLAS GEMM per expert over TE's compute
# streams, as the backend does, backend/grouped_gemm.hpp; TE's nvte_multi_tensor_gemm), else a loop of per-expert GEMMs
# (Megatron's SequentialMLP). Set by probe_grouped_mm().
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


class Routing:
    """The lowering's routing: the per-expert token counts it wrote (balanced unless --moe-routing-skew). The
    tokens x topk slots are dealt round-robin over the experts that still have room, so each expert gets exactly its
    count and a token's top-k experts are distinct (as a router's are) while counts allow. idx: each token's experts
    [tokens, topk]; order: the slots sorted by expert (stable); token: each sorted slot's token."""

    def __init__(self, d, device):
        tokens, k, e = d["mbs"] * d["seq"], d["topk"], d["experts"]
        if sum(d["expert_splits"]) != tokens * k:
            fail(f"expert splits sum to {sum(d['expert_splits'])}, not tokens x topk = {tokens * k}")
        left, idx, cur = list(d["expert_splits"]), [], 0
        for _ in range(tokens * k):
            while left[cur % e] == 0:
                cur += 1
            idx.append(cur % e)
            left[cur % e] -= 1
            cur += 1
        self.idx = torch.tensor(idx, device=device).view(tokens, k)
        self.order = torch.sort(self.idx.reshape(-1).cpu(), stable=True)[1].to(device)
        self.token = self.order // k


def moe_block(h, p, d, routing, pre, bwd, fp8):
    """One MoE block of a layer (p: its parameters), ops named pre.<op> (forward or recompute), backward ranges
    bwd.<op>_bwd."""
    tokens, k = d["mbs"] * d["seq"], d["topk"]
    h2 = h.reshape(tokens, -1)
    with record_function(pre + ".router"):
        logits = Linear.apply(h2, p["router"], bwd + ".router", False)
    with record_function(pre + ".router_topk"):
        scores = logits.float().softmax(-1)
        top, _ = scores.topk(k, dim=-1)  # computed as the router does; the slots follow the schedule's splits
        probs = scores.gather(1, routing.idx)
        probs = bwd_range(bwd + ".router_topk_bwd", (probs / probs.sum(-1, keepdim=True)).to(h.dtype))
        counts = torch.bincount(routing.idx.reshape(-1), minlength=d["experts"])
        del top
    with record_function(pre + ".moe_splits_d2h"):
        splits = counts.cpu().tolist()  # the D2H copy and the host's wait for it (moe_splits_sync)
    with record_function(pre + ".moe_permute"):
        xp = bwd_range(bwd + ".moe_permute_bwd", h2.index_select(0, routing.token))
        pp = probs.reshape(-1).index_select(0, routing.order)
    with record_function(pre + ".moe_sort"):
        xs = bwd_range(bwd + ".moe_sort_bwd", torch.cat(xp.split(splits)))
    with record_function(pre + ".experts_fc1"):
        u = ExpertLinear.apply(xs, p["experts_fc1"], splits, bwd + ".experts_fc1", fp8)
    with record_function(pre + ".experts_act"):
        a, g = u.chunk(2, dim=-1)
        u = bwd_range(bwd + ".experts_act_bwd", F.silu(a) * g)
    with record_function(pre + ".experts_fc2"):
        y = ExpertLinear.apply(u, p["experts_fc2"], splits, bwd + ".experts_fc2", fp8)
    with record_function(pre + ".moe_unsort"):
        y = bwd_range(bwd + ".moe_unsort_bwd", torch.cat(y.split(splits)))
    with record_function(pre + ".moe_unpermute"):
        out = torch.zeros_like(h2).index_add(0, routing.token, y * pp.unsqueeze(-1))
        return bwd_range(bwd + ".moe_unpermute_bwd", out.view_as(h))
