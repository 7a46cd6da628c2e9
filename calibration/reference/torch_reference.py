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

The step's parts are modules beside this file: the shapes (ref_shapes.py), the named backward ranges
(ref_ranges.py), fp8 casting (ref_fp8.py), the linear layers' GEMMs (ref_linear.py), the MoE block (ref_moe.py), the
other layers (ref_layers.py), the model (ref_model.py) and the optimizer (ref_optimizer.py); this file has the command
line, the timed steps and the JSON it prints.
"""
import argparse
import contextlib
import json
import math
import statistics
import sys
import time

import torch
from torch.autograd.profiler import record_function

from ref_fp8 import E4M3
from ref_layers import ELEMENTWISE, fuse_elementwise, fused_sdpa, sdpa_probe
from ref_linear import probe_fp32_accumulation
from ref_model import Model
from ref_moe import probe_grouped_mm
from ref_optimizer import ZERO_GRAD_RANGE, Optimizer
from ref_shapes import fail, shapes_from_flags, shapes_from_schedule


def parse_args():
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
    return ap.parse_args()


def attention_context(sdpa_backend, device):
    """The context the step's attention runs in: the backend asked for, else (CUDA) SDPA's fused kernels only."""
    if sdpa_backend != "auto":
        from torch.nn.attention import SDPBackend, sdpa_kernel
        backend = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
                   "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}[sdpa_backend]
        return lambda: sdpa_kernel(backend)
    if device.type == "cuda":
        return fused_sdpa
    return contextlib.nullcontext


def training_step(model, opt, d, device):
    """One training step as the schedule's: zero the grad buffers, every micro-batch's forward and backward, the
    optimizer. Returns the step function (it returns the last micro-batch's loss)."""
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

    return step


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


def profile_step(step, path, schedule, cuda, sync):
    """One more step under the PyTorch profiler, its Chrome trace written to path (with the schedule's identity as
    metadata where torch can add it). Returns the attention ops the step ran."""
    from torch.profiler import ProfilerActivity, profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts, record_shapes=True) as prof:
        with record_function("step"):
            step()
        sync()
    if hasattr(prof, "add_metadata_json") and schedule:
        prof.add_metadata_json("twinstep_schedule", json.dumps(schedule))
    prof.export_chrome_trace(path)
    return sorted({e.key for e in prof.key_averages() if e.key.startswith("aten::_scaled_dot_product")
                   or e.key.startswith("aten::_flash_attention") or e.key.startswith("aten::_efficient")})


def device_memory():
    """The CUDA caching allocator's peaks and the device's used memory after the steps."""
    free, total = torch.cuda.mem_get_info()
    return {"max_allocated_bytes": torch.cuda.max_memory_allocated(),
            "max_reserved_bytes": torch.cuda.max_memory_reserved(),
            "device_used_bytes": total - free, "device_total_bytes": total}


def write_json(result, path):
    text = json.dumps(result, indent=2)
    print(text)
    if path:
        with open(path, "w") as f:
            f.write(text + "\n")


def exit_out_of_memory(e, d, path):
    """The JSON of a step that ran out of memory, then exit 3."""
    result = {"schema_version": 1, "bench": "torch_reference", "error": "out of memory",
              "detail": str(e).splitlines()[0], "shapes": {k: v for k, v in d.items() if k != "expert_splits"},
              "memory": {"max_allocated_bytes": torch.cuda.max_memory_allocated(),
                         "max_reserved_bytes": torch.cuda.max_memory_reserved()}}
    write_json(result, path)
    sys.exit(3)


def result_json(a, d, run):
    """The printed JSON; run: what the step measured and how it ran (times, losses, memory, params, main-grad dtype,
    wgrad accumulation, experts GEMM, attention path and ops, fp8, cuda, device)."""
    cuda = run["cuda"]
    shapes = {k: v for k, v in d.items() if k not in ("schedule", "expert_splits")}
    return {
        "schema_version": 1, "bench": "torch_reference",
        "step_time_s": statistics.median(run["times"]), "step_times_s": run["times"], "warmup": a.warmup,
        "steps": a.steps,
        "timing": "CUDA events around each step (host issue included), median over the steps" if cuda
                  else "time.perf_counter around each step, median over the steps",
        "loss": run["losses"][-1], "memory": run["memory"], "shapes": shapes, "schedule": d["schedule"],
        "params": run["params"],
        "params_match_schedule": None if d["schedule_params"] is None else run["params"] == d["schedule_params"],
        "main_grad_dtype": str(run["grad_dtype"]).replace("torch.", ""),
        "fp32_master_grads": "the fp32 main grads themselves" if run["grad_dtype"] == torch.float32 else
                             "from the optimizer step's cast to the next zero_grad (Megatron's lifetime)",
        "wgrad_accumulation": run["wgrad_accumulation"],
        "experts_gemm": run["experts_gemm"],
        "elementwise": ("torch.compile (fused kernels) of " + ", ".join(ELEMENTWISE)) if a.fuse_elementwise
                       else "eager",
        "attention": {"path": run["sdpa"], "sdpa_backends": "fused only (cuDNN, flash, efficient; no math fallback)"
                      if a.sdpa_backend == "auto" and cuda else a.sdpa_backend,
                      "ops_in_profiled_step": run["attention_ops"]},
        "fp8": ("linear layers of the transformer layers (qkv, proj, fc1, fc2, experts) via torch._scaled_mm, "
                "per-tensor current scaling, e4m3 forward / e5m2 gradients; router, output layer, attention, "
                "norms, cross-entropy and the optimizer bf16/fp32") if run["fp8"] else None,
        "context": {"torch": torch.__version__, "cuda": torch.version.cuda,
                    "cudnn": torch.backends.cudnn.version() if cuda else None,
                    "gpu": torch.cuda.get_device_name(run["device"]) if cuda else "cpu",
                    "device": str(run["device"])},
    }


def main():
    a = parse_args()
    d = shapes_from_schedule(a.schedule) if a.schedule else shapes_from_flags(a)
    fp8 = a.fp8 or d["fp8"]
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        fail("--device cuda: no CUDA device visible to torch; use --device cpu for a smoke run")
    if fp8 and (E4M3 is None or not hasattr(torch, "_scaled_mm") or device.type != "cuda"):
        fail("--fp8 needs torch >= 2.1 with torch._scaled_mm on a CUDA device of compute capability >= 8.9")
    sdpa_ctx = attention_context(a.sdpa_backend, device)
    sdpa = sdpa_probe(device, d, sdpa_ctx)
    grad_dtype = torch.float32 if d["grad_bytes"] == 4 else torch.bfloat16
    wgrad_accumulation = probe_fp32_accumulation(device) if grad_dtype == torch.float32 else \
        "in the GEMM (bf16 main grads, addmm_)"
    if a.fuse_elementwise:
        fuse_elementwise()
    experts_gemm = probe_grouped_mm(device) if d["experts"] else None

    model = Model(d, device, fp8, sdpa)
    opt = Optimizer(model, grad_dtype)
    step = training_step(model, opt, d, device)

    attention_ctx = sdpa_ctx()
    attention_ctx.__enter__()

    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    try:
        times, losses = timed_steps(step, a, cuda, sync)
    except RuntimeError as e:  # torch.cuda.OutOfMemoryError is a RuntimeError
        if "out of memory" not in str(e):
            raise
        exit_out_of_memory(e, d, a.output)
    losses = [float(x) for x in losses]
    if not all(math.isfinite(x) for x in losses):
        fail(f"the loss is not finite ({losses}): the step is broken, its time would be meaningless")
    memory = device_memory() if cuda else {}
    attention_ops = profile_step(step, a.profile_trace, d["schedule"], cuda, sync) if a.profile_trace else None

    attention_ctx.__exit__(None, None, None)

    run = {"times": times, "losses": losses, "memory": memory, "params": model.count, "grad_dtype": grad_dtype,
           "wgrad_accumulation": wgrad_accumulation, "experts_gemm": experts_gemm, "sdpa": sdpa,
           "attention_ops": attention_ops, "fp8": fp8, "cuda": cuda, "device": device}
    write_json(result_json(a, d, run), a.output)


if __name__ == "__main__":
    main()
