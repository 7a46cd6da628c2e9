#!/usr/bin/env python3
"""Memory the framework needs beyond the tensors a memory model counts, measured on this GPU (issue 21 item 2):

1. the CUDA context: device memory in use (NVML, read before this process touches CUDA) before and after
   torch.cuda.init() and a tiny op, less what the caching allocator reserved;
2. cuBLAS: the workspace torch's caching allocator keeps after the first bf16 / fp32 GEMM (inside the allocator) and
   what the handle and its kernels take outside it;
3. NCCL: device memory outside the allocator taken by the first communicator (a 1-rank group when run as one
   process; under torchrun / mpirun with N ranks, the N-rank group, and then the per-channel figure from NCCL's own
   channel count) and by a second communicator on the same ranks;
4. the caching allocator over a realistic training step: a Llama-3-8B-shaped model of a few layers (bf16 params,
   fp32 main gradients filled by post-accumulate hooks, fp32 master weights, fused fp32 Adam, flash SDPA, fp32
   logits + cross entropy), per case in a fresh process: peak allocated and reserved per phase (forward, backward,
   optimizer step) and reserved/allocated at the peak. Default cases are the issue's 4/8-layer MBS 1 seq 4096/8192
   steps plus one with full recompute.

Prints one JSON object (and writes it with -o) whose "memory_overhead" section is what
`twinstep calibrate --memory FILE` takes into the profile's memory_overhead section; "raw" and "steps" keep
every reading for the docs and for validating the memory model (steps[].peak_allocated_bytes).

Usage (one GPU):   python3 calibration/scripts/torch_memory_overhead.py -o memory.json
       (two GPUs): torchrun --nproc-per-node 2 calibration/scripts/torch_memory_overhead.py -o memory.json
       cases:      --cases 4x4096 8x4096 4x8192 4x4096:full   (layers x seq[:full = full recompute per layer])
"""
import argparse
import ctypes
import json
import os
import re
import subprocess
import sys
import tempfile
import time

GIB = float(1 << 30)


# ---- NVML through ctypes (no pynvml dependency): device memory in use before CUDA is initialised --------------
class _NvmlMemory(ctypes.Structure):
    _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong), ("used", ctypes.c_ulonglong)]


class Nvml:
    def __init__(self, index):
        self.lib = None
        self.handle = None
        try:
            self.lib = ctypes.CDLL("libnvidia-ml.so.1")
            if self.lib.nvmlInit_v2() != 0:
                self.lib = None
                return
            h = ctypes.c_void_p()
            if self.lib.nvmlDeviceGetHandleByIndex_v2(ctypes.c_uint(index), ctypes.byref(h)) != 0:
                self.lib = None
                return
            self.handle = h
        except OSError:
            self.lib = None

    def memory(self):
        """(total, free, used) bytes of the device as NVML sees it, or None."""
        if self.lib is None:
            return None
        m = _NvmlMemory()
        if self.lib.nvmlDeviceGetMemoryInfo(self.handle, ctypes.byref(m)) != 0:
            return None
        return {"total": m.total, "free": m.free, "used": m.used}


def nvml_index(local_rank):
    """NVML enumerates physical devices; CUDA_VISIBLE_DEVICES (numeric) maps this process's device to one."""
    vis = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    ids = [v.strip() for v in vis.split(",") if v.strip()]
    if ids and all(i.isdigit() for i in ids) and local_rank < len(ids):
        return int(ids[local_rank])
    return local_rank


def env_ranks():
    rank = int(os.environ.get("OMPI_COMM_WORLD_RANK", os.environ.get("RANK", "0")))
    world = int(os.environ.get("OMPI_COMM_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    local = int(os.environ.get("OMPI_COMM_WORLD_LOCAL_RANK", os.environ.get("LOCAL_RANK", "0")))
    return rank, world, local


# ---- part 1-3: context, cuBLAS, NCCL -----------------------------------------------------------------------------
def overheads(a, rank, world, local):
    nvml = Nvml(nvml_index(local))
    before = nvml.memory()  # before this process creates its context
    import torch  # noqa: E402  (imported after the NVML reading on purpose: no CUDA call before it)

    t0 = time.perf_counter()
    torch.cuda.init()
    torch.cuda.set_device(local)
    dev = torch.device("cuda", local)
    x = torch.ones(1, device=dev)
    (x + 1).sum().item()
    torch.cuda.synchronize()
    init_s = time.perf_counter() - t0
    free, total = torch.cuda.mem_get_info(dev)
    after = nvml.memory()
    reserved0 = torch.cuda.memory_reserved(dev)
    raw = {
        "nvml_before": before,
        "nvml_after_context": after,
        "cuda_total_bytes": total,
        "cuda_free_after_context_bytes": free,
        "allocator_reserved_after_context_bytes": reserved0,
        "context_init_s": init_s,
    }
    if before is not None and after is not None:
        context = after["used"] - before["used"] - reserved0
        raw["context_from"] = "NVML used after - before, less the allocator's reserved bytes"
    else:
        # No NVML: the device's whole use after init (assumes nothing else runs on the GPU).
        context = (total - free) - reserved0
        raw["context_from"] = "cudaMemGetInfo total - free after init, less reserved (no NVML; GPU assumed idle)"

    def outside_allocator():
        f, _ = torch.cuda.mem_get_info(dev)
        return (total - f) - torch.cuda.memory_reserved(dev)

    # cuBLAS: the first GEMM of each dtype creates the handle, loads its kernels and takes a workspace from the
    # caching allocator (torch keeps it per handle and stream).
    out0, alloc0 = outside_allocator(), torch.cuda.memory_allocated(dev)
    for dt in (torch.bfloat16, torch.float32):
        m = torch.randn(4096, 4096, device=dev, dtype=dt)
        (m @ m).sum().item()
        del m
    torch.cuda.synchronize()
    cublas_workspace = torch.cuda.memory_allocated(dev) - alloc0
    cublas_outside = outside_allocator() - out0
    raw["cublas_workspace_config"] = os.environ.get("CUBLAS_WORKSPACE_CONFIG", "(torch default)")

    # NCCL: first communicator (the default group), then a second one over the same ranks.
    nccl = {"world_size": world, "nccl_version": None}
    if not a.skip_nccl and torch.distributed.is_available() and torch.distributed.is_nccl_available():
        import torch.distributed as dist

        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(a.port))
        nccl["nccl_buffsize_env"] = os.environ.get("NCCL_BUFFSIZE", "(default)")
        o0 = outside_allocator()
        r0 = torch.cuda.memory_reserved(dev)
        try:
            dist.init_process_group("nccl", rank=rank, world_size=world, device_id=dev)
        except TypeError:  # torch < 2.3: no device_id (the communicator is created lazily, by the first collective)
            dist.init_process_group("nccl", rank=rank, world_size=world)
        v = torch.cuda.nccl.version()
        nccl["nccl_version"] = ".".join(str(i) for i in v) if isinstance(v, tuple) else str(v)

        def exercise(group, with_p2p):
            # The collective kinds a step uses, small and large, so that each algorithm/protocol connects (the
            # second communicator: collectives only, so its bytes are the collective channels' buffers).
            for n in (1 << 10, 1 << 24):
                t = torch.ones(n * world, device=dev, dtype=torch.bfloat16)
                s = torch.empty(n, device=dev, dtype=torch.bfloat16)
                dist.all_reduce(t, group=group)
                dist.reduce_scatter_tensor(s, t, group=group)
                dist.all_gather_into_tensor(t, s, group=group)
                if world > 1 and with_p2p:
                    dist.all_to_all_single(torch.empty_like(t), t, group=group)
            torch.cuda.synchronize()

        exercise(None, True)
        nccl["first_communicator_bytes"] = outside_allocator() - o0
        nccl["first_communicator_reserved_growth_bytes"] = torch.cuda.memory_reserved(dev) - r0
        o1 = outside_allocator()
        g2 = dist.new_group(list(range(world)))
        exercise(g2, False)
        nccl["second_communicator_bytes"] = outside_allocator() - o1
        debug_file = os.environ.get("NCCL_DEBUG_FILE", "").replace("%h", os.uname().nodename)
        debug_file = debug_file.replace("%p", str(os.getpid()))
        if debug_file and os.path.exists(debug_file):
            with open(debug_file) as f:
                ch = re.findall(r"(\d+) coll channels", f.read())
            if ch:
                nccl["coll_channels"] = int(ch[-1])
        dist.barrier()
        dist.destroy_process_group()
    else:
        nccl["skipped"] = "--skip-nccl or no NCCL in this torch"
    per_channel = None
    if world > 1 and nccl.get("coll_channels"):
        # A collective channel holds the buffers of every protocol for its ring/tree peers: bytes per channel.
        per_channel = nccl["second_communicator_bytes"] / nccl["coll_channels"]
    return {
        "context_bytes": context,
        "cublas_workspace_bytes": cublas_workspace,
        "cublas_outside_allocator_bytes": cublas_outside,
        "nccl": nccl,
        "nccl_buffer_bytes_per_channel": per_channel,
        "raw": raw,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(dev),
    }


# ---- part 4: a training step's allocator behaviour -----------------------------------------------------------------
def run_case(a, case):
    import torch
    import torch.nn.functional as F
    from torch.utils.checkpoint import checkpoint

    layers_s, _, rest = case.partition("x")
    seq_s, _, recompute = rest.partition(":")
    n_layers, seq = int(layers_s), int(seq_s)
    h, nq, nkv, dh, ffn, vocab = a.hidden, a.heads, a.kv_heads, a.hidden // a.heads, a.ffn, a.vocab
    dev = torch.device("cuda", 0)
    torch.cuda.set_device(dev)
    bf16 = torch.bfloat16
    torch.manual_seed(0)

    def w(*shape):
        return torch.nn.Parameter(torch.randn(*shape, device=dev, dtype=bf16) * 0.02)

    params = {"embedding": w(vocab, h), "final_norm": torch.nn.Parameter(torch.ones(h, device=dev, dtype=bf16)),
              "output": w(vocab, h)}
    for i in range(n_layers):
        params[f"L{i}.ln1"] = torch.nn.Parameter(torch.ones(h, device=dev, dtype=bf16))
        params[f"L{i}.qkv"] = w((nq + 2 * nkv) * dh, h)
        params[f"L{i}.proj"] = w(h, nq * dh)
        params[f"L{i}.ln2"] = torch.nn.Parameter(torch.ones(h, device=dev, dtype=bf16))
        params[f"L{i}.fc1"] = w(2 * ffn, h)
        params[f"L{i}.fc2"] = w(h, ffn)
    plist = list(params.values())
    n_params = sum(p.numel() for p in plist)

    gqa = {"mode": None}

    def attention(q, k, v):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]):
            if gqa["mode"] in (None, "native"):
                try:
                    o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
                    gqa["mode"] = "native"
                    return o
                except (RuntimeError, TypeError):
                    gqa["mode"] = "expanded"
            r = nq // nkv
            return F.scaled_dot_product_attention(q, k.repeat_interleave(r, 1), v.repeat_interleave(r, 1),
                                                  is_causal=True)

    def rms_norm(x, weight):
        if hasattr(F, "rms_norm"):  # torch >= 2.4
            return F.rms_norm(x, (h,), weight, 1e-5)
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-5)).to(x.dtype) * weight

    def layer(x, i):
        y = rms_norm(x, params[f"L{i}.ln1"])
        qkv = F.linear(y, params[f"L{i}.qkv"])
        q, k, v = qkv.split([nq * dh, nkv * dh, nkv * dh], dim=-1)
        b, s = x.shape[0], x.shape[1]
        q = q.view(b, s, nq, dh).transpose(1, 2)
        k = k.view(b, s, nkv, dh).transpose(1, 2)
        v = v.view(b, s, nkv, dh).transpose(1, 2)
        o = attention(q, k, v).transpose(1, 2).reshape(b, s, nq * dh)
        x = x + F.linear(o, params[f"L{i}.proj"])
        y = rms_norm(x, params[f"L{i}.ln2"])
        g, u = F.linear(y, params[f"L{i}.fc1"]).chunk(2, dim=-1)
        return x + F.linear(F.silu(g) * u, params[f"L{i}.fc2"])

    def forward(tokens, labels):
        x = F.embedding(tokens, params["embedding"])
        for i in range(n_layers):
            if recompute == "full":
                x = checkpoint(layer, x, i, use_reentrant=False)
            else:
                x = layer(x, i)
        x = rms_norm(x, params["final_norm"])
        logits = F.linear(x, params["output"]).float()
        return F.cross_entropy(logits.view(-1, vocab), labels.view(-1))

    # Megatron's layout for bf16 training: fp32 main grads (one contiguous buffer), fp32 master weights, fp32 Adam.
    main_grad = torch.zeros(n_params, device=dev, dtype=torch.float32)
    master, off = [], 0
    for p in plist:
        p.main_grad = main_grad[off:off + p.numel()].view_as(p)
        off += p.numel()
        m = p.detach().float().clone().requires_grad_(True)
        m.grad = p.main_grad
        master.append(m)

        def hook(param):
            param.main_grad.add_(param.grad)
            param.grad = None

        p.register_post_accumulate_grad_hook(hook)
    opt = torch.optim.Adam(master, lr=1e-5, fused=True)
    tokens = torch.randint(0, vocab, (a.mbs, seq), device=dev)
    labels = torch.randint(0, vocab, (a.mbs, seq), device=dev)

    steps = []
    for step in range(a.steps):
        rec = {}
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(dev)
        main_grad.zero_()
        t0 = time.perf_counter()
        loss = forward(tokens, labels)
        torch.cuda.synchronize()
        rec["after_forward_allocated_bytes"] = torch.cuda.memory_allocated(dev)
        rec["forward_peak_allocated_bytes"] = torch.cuda.max_memory_allocated(dev)
        loss.backward()
        del loss
        torch.cuda.synchronize()
        rec["forward_backward_peak_allocated_bytes"] = torch.cuda.max_memory_allocated(dev)
        rec["forward_backward_peak_reserved_bytes"] = torch.cuda.max_memory_reserved(dev)
        rec["after_backward_allocated_bytes"] = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        opt.step()
        with torch.no_grad():
            for p, m in zip(plist, master):
                p.copy_(m)
        torch.cuda.synchronize()
        rec["optimizer_peak_allocated_bytes"] = torch.cuda.max_memory_allocated(dev)
        rec["optimizer_peak_reserved_bytes"] = torch.cuda.max_memory_reserved(dev)
        rec["step_s"] = time.perf_counter() - t0
        rec["peak_allocated_bytes"] = max(rec["forward_backward_peak_allocated_bytes"],
                                          rec["optimizer_peak_allocated_bytes"])
        rec["peak_reserved_bytes"] = max(rec["forward_backward_peak_reserved_bytes"],
                                         rec["optimizer_peak_reserved_bytes"])
        steps.append(rec)
    st = torch.cuda.memory_stats(dev)
    last = steps[-1]
    free, total = torch.cuda.mem_get_info(dev)
    out = {
        "case": case,
        "layers": n_layers, "seq": seq, "mbs": a.mbs, "recompute": recompute or "none",
        "shape": {"hidden": h, "heads": nq, "kv_heads": nkv, "head_dim": dh, "ffn": ffn, "vocab": vocab},
        "params": n_params,
        "gqa": gqa["mode"],
        "per_step": steps,
        # Steady state (the last step: Adam's state exists, the allocator's pool has settled).
        "peak_allocated_bytes": last["peak_allocated_bytes"],
        "peak_reserved_bytes": last["peak_reserved_bytes"],
        "peak_allocated_gib": last["peak_allocated_bytes"] / GIB,
        "peak_reserved_gib": last["peak_reserved_bytes"] / GIB,
        "reserved_over_allocated": last["peak_reserved_bytes"] / last["peak_allocated_bytes"],
        "run_peak_allocated_bytes": st.get("allocated_bytes.all.peak"),
        "run_peak_reserved_bytes": st.get("reserved_bytes.all.peak"),
        "num_alloc_retries": st.get("num_alloc_retries"),
        "device_used_at_end_bytes": total - free,
        "alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "(default)"),
    }
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-o", "--output", default="")
    ap.add_argument("--cases", nargs="*", default=["4x4096", "8x4096", "4x8192", "4x4096:full"])
    ap.add_argument("--case", default="", help="(internal) run one training case in this process")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--mbs", type=int, default=1)
    ap.add_argument("--hidden", type=int, default=4096)  # Llama-3-8B
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--ffn", type=int, default=14336)
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--skip-nccl", action="store_true")
    ap.add_argument("--port", type=int, default=29517)
    a = ap.parse_args()

    if a.case:
        print(json.dumps(run_case(a, a.case)))
        return

    rank, world, local = env_ranks()
    steps = []
    if world == 1:
        # The training cases first, each in a fresh process (the allocator's pool and the context start clean, as in
        # a training job), before this process touches CUDA: the context reading below starts from an idle GPU.
        for case in a.cases:
            cmd = [sys.executable, os.path.abspath(__file__), "--case", case, "--steps", str(a.steps),
                   "--mbs", str(a.mbs), "--hidden", str(a.hidden), "--heads", str(a.heads),
                   "--kv-heads", str(a.kv_heads), "--ffn", str(a.ffn), "--vocab", str(a.vocab)]
            p = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if p.returncode != 0:
                steps.append({"case": case, "error": p.stderr[-2000:]})
                print(f"case {case}: failed\n{p.stderr[-2000:]}", file=sys.stderr)
                continue
            r = json.loads(p.stdout.strip().splitlines()[-1])
            steps.append(r)
            print(f"case {case}: peak allocated {r['peak_allocated_gib']:.2f} GiB, reserved "
                  f"{r['peak_reserved_gib']:.2f} GiB (x{r['reserved_over_allocated']:.4f}), gqa {r['gqa']}",
                  file=sys.stderr)
    elif not os.environ.get("NCCL_DEBUG"):
        # NCCL's own channel count, for the per-channel buffer figure (several ranks; the cases need one GPU).
        os.environ["NCCL_DEBUG"] = "INFO"
        os.environ["NCCL_DEBUG_SUBSYS"] = "INIT"
        os.environ["NCCL_DEBUG_FILE"] = os.path.join(tempfile.gettempdir(), "twinstep_nccl.%h.%p.log")
    ov = overheads(a, rank, world, local)
    if rank != 0:
        return
    ok = [s for s in steps if "error" not in s]
    ratio = max((s["reserved_over_allocated"] for s in ok), default=None)
    out = {
        "memory_overhead": {
            "cuda_context_bytes": ov["context_bytes"],
            "cuda_libraries_bytes": max(0, ov["cublas_outside_allocator_bytes"]),
            "cublas_workspace_bytes": ov["cublas_workspace_bytes"],
            "nccl_communicator_bytes": ov["nccl"].get("second_communicator_bytes"),
            "nccl_buffer_bytes_per_channel": ov["nccl_buffer_bytes_per_channel"],
            "allocator_reserved_over_allocated": ratio,
            "device_total_bytes": ov["raw"]["cuda_total_bytes"],
            "source": "calibration/scripts/torch_memory_overhead.py, torch %s, CUDA %s, NCCL %s, %s, %d rank(s); "
                      "allocator ratio: largest steady-state peak reserved/allocated of cases [%s]" % (
                          ov["torch"], ov["cuda"], ov["nccl"].get("nccl_version"), ov["device"], world,
                          " ".join(s["case"] for s in ok)),
        },
        "raw": {k: v for k, v in ov.items() if k not in ("torch", "cuda", "device")},
        "steps": steps,
    }
    text = json.dumps(out, indent=1)
    if a.output:
        with open(a.output, "w") as f:
            f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
