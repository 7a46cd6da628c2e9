"""The non-GEMM layers of torch_reference.py: embedding (Megatron's backward: a dense table gradient, then added into
the main grad), the reentrant full-recompute checkpoint, the elementwise blocks (RMSNorm, RoPE, SwiGLU, cross
entropy; eager or compiled) and attention (SDPA)."""
import math

import torch
import torch.nn.functional as F
from torch.autograd.profiler import record_function

from ref_fp8 import FP8_CAST
from ref_ranges import Segment

NORM_EPS = 1e-5


class Embedding(torch.autograd.Function):
    """Token embedding with the backward Megatron runs (VocabParallelEmbedding's F.embedding differentiates through
    torch's embedding_dense_backward, then DDP's hook adds param.grad into the main grad): a zero-filled gradient of
    the whole table in the parameters' dtype (`<name>_zero`), the token rows' gradients summed into it (`<name>`),
    and that table added into the main grad (`<name>_main_grad_add`); the lowering's three ops of the same names."""

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
        with record_function(ctx.name + "_zero"):
            table = torch.zeros_like(w)
        with record_function(ctx.name):
            table.index_add_(0, ids.reshape(-1), g.reshape(-1, g.shape[-1]).to(table.dtype))
        with record_function(ctx.name + "_main_grad_add"):
            w.main_grad.add_(table)
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



def attention(q, k, v, sdpa):
    """Causal attention on the path sdpa_probe() chose."""
    if sdpa == "sdpa_gqa":
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    if sdpa == "sdpa_mha":
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    if sdpa == "sdpa_repeat_kv":
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    s = q.shape[2]
    att = (q @ k.transpose(-1, -2)).float() / math.sqrt(q.shape[-1])
    att = att.masked_fill(torch.ones(s, s, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    return att.softmax(-1).to(q.dtype) @ v
