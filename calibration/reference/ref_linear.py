"""The linear layers of torch_reference.py: the one GEMM (bf16 or fp8 torch._scaled_mm), the wgrad accumulation into
main grads (Megatron's gradient accumulation fusion) and the Linear autograd function with named dgrad/wgrad."""
import torch
from torch.autograd.profiler import record_function

from ref_fp8 import E4M3, E5M2, FP8_CAST, FP8_DTYPES
from ref_ranges import Segment


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
