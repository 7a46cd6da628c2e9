#!/usr/bin/env python3
"""Checks torch_reference.py's hand-written backward (the Linear / ExpertLinear / Embedding autograd functions that
name the dgrad and wgrad GEMMs and accumulate into main grads, the named backward ranges, the reentrant full
recompute) against plain autograd on the same model: the main grads of one step must equal the .grad autograd
computes with F.linear / F.embedding, to bf16 rounding. Runs on CPU (Debian's python3-torch is enough).
Usage: check_grads.py SCHEDULE... (small one-GPU schedules; see README.md). Exit 1 if any relative error > 1 %."""
import contextlib
import sys

import torch
import torch.nn.functional as F

from ref_layers import Embedding, sdpa_probe
from ref_linear import Linear
from ref_model import Model
from ref_moe import ExpertLinear
from ref_optimizer import Optimizer
from ref_shapes import shapes_from_schedule


def check(schedule, grad_dtype):
    d = shapes_from_schedule(schedule)
    dev = torch.device("cpu")
    model = Model(d, dev, False, sdpa_probe(dev, d, contextlib.nullcontext))
    opt = Optimizer(model, grad_dtype)
    ids = torch.randint(0, d["vocab"], (d["mbs"], d["seq"]))
    labels = torch.randint(0, d["vocab"], (d["mbs"], d["seq"]))
    opt.zero()
    model.forward_backward(ids, labels, 0)
    opt.fold_autograd_grads()
    custom = [p.main_grad.clone() for p in model.params]

    # Plain autograd in place of the hand-written backward (the classes' own apply is inherited: deleting the
    # override restores it for the next check).
    plain = {Linear: lambda x, w, prefix, fp8: F.linear(x, w),
             ExpertLinear: lambda x, w, splits, prefix, fp8: torch.cat(
                 [F.linear(c, w[e]) for e, c in enumerate(x.split(splits))]),
             Embedding: lambda i, w, name: F.embedding(i, w)}
    for cls, fn in plain.items():
        cls.apply = staticmethod(fn)
    try:
        for p in model.params:
            p.grad = None
        model.forward_backward(ids, labels, 0)
    finally:
        for cls in plain:
            del cls.apply
    worst = 0.0
    for p, c in zip(model.params, custom):
        ref = p.grad.float()
        worst = max(worst, float((ref - c).norm() / ref.norm().clamp(min=1e-30)))
    print(f"{schedule}: {len(custom)} parameters, {grad_dtype} main grads: worst relative error {worst:.2e}")
    return worst


def main():
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    torch.manual_seed(0)
    worst = max(check(s, g) for s in sys.argv[1:] for g in (torch.float32, torch.bfloat16))
    sys.exit(0 if worst < 0.01 else 1)


if __name__ == "__main__":
    main()
