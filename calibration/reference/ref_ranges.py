"""Named backward ranges for torch_reference.py: each region's backward kernels run inside a torch.profiler range named
as the schedule's backward op, so a profiler trace of the step matches the schedule by name."""
import torch
from torch.autograd.profiler import record_function

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

