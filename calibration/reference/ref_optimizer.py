"""The optimizer of torch_reference.py: Megatron's mixed-precision optimizer step on one GPU, in the schedule's op
ranges."""
import torch
from torch.autograd.profiler import record_function

MAX_GRAD_NORM = 1.0


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
    norm, clipping, Adam (torch's fused kernel on CUDA), and the copy back into the bf16 weights. With bf16 main grads
    the masters' fp32 grads live as Megatron's do: allocated by the optimizer step's cast
    (`_copy_model_grads_to_main_grads`: `main_param.grad = main_grad.float()`) and freed by the next step's
    zero_grad (set_to_none), so they are not held through the forward and backward (docs/memory.md "Validation")."""

    def __init__(self, model, grad_dtype):
        self.params = model.params
        for p in self.params:
            p.main_grad = torch.zeros_like(p, dtype=grad_dtype)
        self.masters = [p.detach().float() for p in self.params]
        for m, p in zip(self.masters, self.params):
            m.grad = p.main_grad if grad_dtype == torch.float32 else None
        fused = {"fused": True} if model.device.type == "cuda" else {}
        self.adam = torch.optim.Adam(self.masters, lr=1e-5, betas=(0.9, 0.95), eps=1e-8, **fused)
        self.grads = [p.main_grad for p in self.params]
        self.masters_grads = [m.grad for m in self.masters]
        self.cast = grad_dtype != torch.float32

    def zero(self):
        for g in self.grads:
            g.zero_()
        if self.cast:  # Megatron's optimizer.zero_grad(set_to_none=True) on the fp32 masters
            for m in self.masters:
                m.grad = None
            self.masters_grads = []

    def _allocate_master_grads(self):
        """The fp32 grads the cast writes (allocation only: the copy stays the one multi-tensor kernel it was)."""
        if not self.masters_grads:
            for m in self.masters:
                m.grad = torch.empty_like(m)
            self.masters_grads = [m.grad for m in self.masters]

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
        if self.cast:
            self._allocate_master_grads()
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
