"""fp8 casting for torch_reference.py: per-tensor current scaling (e4m3 forward, e5m2 gradients) and Transformer
Engine's cast-transpose, called through FP8_CAST so that --fuse-elementwise can compile the casts."""
import torch

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

# The fp8 dtypes this torch has (none before torch 2.1).
FP8_DTYPES = tuple(t for t in (E4M3, E5M2) if t is not None)
