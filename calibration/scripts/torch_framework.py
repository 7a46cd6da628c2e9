#!/usr/bin/env python3
# Framework (PyTorch eager) host costs for the profile's framework group, measured on one GPU:
#   module_fwd     one nn.Module call under autograd against the number of kernels its forward launches
#   function_fwd   the same ops without the module wrapper (the module call's own cost is the difference)
#   backward       one torch.autograd.backward call over a graph of k kernels (engine call + per node)
#   backward_fn    one torch.autograd.backward call over k nodes of a Python torch.autograd.Function (as Transformer
#                  Engine's modules and Megatron's comm functions are), each launching j = 1, 2, 4 kernels in its
#                  backward: the fit separates the engine's cost per node from the cost per kernel a node launches
#   syncs          .item(), .cpu() of the expert counts, and the alltoall dispatcher's path (non_blocking D2H on a
#                  side stream, event record, event.synchronize()), each with the GPU idle: the host cost of the
#                  sync itself; the wait for the GPU is the simulator's host_sync
#   events         Event.record, Stream.wait_event, entering+leaving torch.cuda.stream(s), Tensor.record_stream
#   optimizer      fused Adam step() (multi-tensor apply) against parameter tensors and parameter groups
#   moe            the alltoall dispatcher's host pieces of one MoE layer forward (router, preprocess with its D2H
#                  count sync, permute, unpermute) at EP 1 (no collective: the lowering emits those), with the
#                  kernels each piece launched (torch.profiler), so the fit can check fixed + per-kernel on them
#   ep_node        a plain-torch proxy of one combined-1F1B schedule node (megatron-overlap.md 6c item 2): wait
#                  event, stream switch, detach + requires_grad_, the body, record event, record_stream, and for
#                  backward nodes its own autograd.backward call; against the kernels of the body
# The GPU work of every probe is tiny, so the host loop is the bottleneck and its time per iteration, read before the
# final synchronize, is the host cost; every sample also carries its wall time (after the synchronize), so a sample
# whose GPU could not keep up (wall > host) is visible. Writes JSON for `twinstep calibrate --framework`.
# The line probes (kernels 1..32) run in --rounds rounds, each over the kernel counts in another order, and keep each
# count's fastest round: a slower phase of the host lasting seconds (session 6's H100 run: some counts ran at 1.5x
# the host time per kernel of their neighbours) then cannot bend the line. Run it alone on the machine (no build
# beside it), pinned to one core: taskset -c 2 python3 torch_framework.py -o framework.json
# Usage: python3 torch_framework.py -o framework.json [-n 2000] [--rounds 3] [--device cuda|cpu]
#   --device cpu is a smoke test of the script (no CUDA-only probes); its figures mean nothing for a profile.
import argparse
import json
import os
import platform
import time

import torch
import torch.nn.functional as F

SCHEMA = "twinstep.torch_framework/1"
KERNELS = [1, 2, 4, 8, 16, 32]  # kernels per module forward / per backward graph


class Env:
    def __init__(self, device, n, reps, rounds):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.n = n
        self.reps = reps
        self.rounds = rounds

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def time(self, fn, n=None):
        """Host seconds per call of fn (best of reps), and the wall seconds of that repetition (after sync)."""
        n = n or self.n
        for _ in range(max(20, n // 10)):
            fn()
        self.sync()
        best = None
        for _ in range(self.reps):
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            t1 = time.perf_counter()
            self.sync()
            t2 = time.perf_counter()
            s = ((t1 - t0) / n, (t2 - t0) / n)
            best = s if best is None or s[0] < best[0] else best
        return best

    def time_part(self, fn, n=None):
        """As time(), for fn returning the host seconds of its measured part (set-up outside the part)."""
        n = n or self.n
        for _ in range(max(20, n // 10)):
            fn()
        self.sync()
        best = None
        for _ in range(self.reps):
            part = 0.0
            t0 = time.perf_counter()
            for _ in range(n):
                part += fn()
            self.sync()
            t2 = time.perf_counter()
            s = (part / n, (t2 - t0) / n)
            best = s if best is None or s[0] < best[0] else best
        return best

    def kernels(self, fn, calls=4):
        """GPU activities (kernels, memcpy, memset) per call of fn from torch.profiler; None if it cannot tell."""
        if not self.cuda:
            return None
        try:
            from torch.profiler import ProfilerActivity, profile
            fn()
            self.sync()
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                for _ in range(calls):
                    fn()
                self.sync()
            cuda = torch.autograd.DeviceType.CUDA
            count = sum(1 for e in prof.events() if e.device_type == cuda)
            return count / calls
        except Exception as e:  # the profiler is a check only; the fit uses the declared counts
            print("profiler failed (%s); kernel counts are the declared ones only" % e)
            return None


def sample(kernels, host_s, wall_s, **extra):
    d = {"kernels": kernels, "host_s": host_s, "wall_s": wall_s}
    d.update(extra)
    return d


class Chain(torch.nn.Module):
    """k elementwise kernels in the forward (x * c), k in the backward (grad * c)."""

    def __init__(self, k):
        super().__init__()
        self.k = k

    def forward(self, x):
        return chain(x, self.k)


def chain(x, k):
    for _ in range(k):
        x = x * 1.0001
    return x


def cpu_model():
    """The host CPU's model name (/proc/cpuinfo), so samples taken on different hosts can be told apart: the host cost
    of a module call or a backward node depends on the CPU, not the GPU."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def round_orders(rounds):
    """The order of KERNELS in each round: ascending, descending, then rotated, so a slower phase of the host (a
    neighbour's load, a frequency change) that lasts seconds falls on different k in different rounds."""
    orders = []
    for r in range(rounds):
        o = list(KERNELS) if r % 2 == 0 else list(reversed(KERNELS))
        shift = (r // 2) % len(o)
        orders.append(o[shift:] + o[:shift])
    return orders


def keep_best(best, key, k, h, w, **extra):
    """best[key][k]: the sample with the least host time over the rounds; every round's host time kept beside it."""
    cur = best.setdefault(key, {}).get(k)
    rounds = (cur["round_host_s"] if cur else []) + [h]
    if cur is None or h < cur["host_s"]:
        cur = sample(k, h, w, **extra)
    cur["round_host_s"] = rounds
    best[key][k] = cur


def probe_module_and_backward(env):
    x = torch.randn(64, 64, device=env.device, requires_grad=True)
    g = torch.ones(64, 64, device=env.device)
    best = {}
    profiled = {}
    for order in round_orders(env.rounds):
        for k in order:
            m = Chain(k)
            with torch.enable_grad():
                h, w = env.time(lambda: m(x))
                if k not in profiled:
                    profiled[k] = env.kernels(lambda: m(x))
                keep_best(best, "module_fwd", k, h, w, profiled_kernels=profiled[k])
                h, w = env.time(lambda: chain(x, k))
                keep_best(best, "function_fwd", k, h, w)

                def bwd():
                    y = m(x)
                    t0 = time.perf_counter()
                    torch.autograd.backward(y, g)
                    return time.perf_counter() - t0

                h, w = env.time_part(bwd)
                # Backward kernels: one grad * c per op, plus the accumulation into x.grad (fixed per call).
                keep_best(best, "backward", k, h, w)
            x.grad = None
    return {key: [best[key][k] for k in KERNELS] for key in ("module_fwd", "function_fwd", "backward")}


class NodeFn(torch.autograd.Function):
    """One autograd node as Transformer Engine's modules are one: a Python Function, one kernel forward, j backward."""

    @staticmethod
    def forward(ctx, x, j):
        ctx.j = j
        return x * 1.0001

    @staticmethod
    def backward(ctx, g):
        for _ in range(ctx.j):
            g = g * 1.0001
        return g, None


KERNELS_PER_NODE = [1, 2, 4]


def probe_backward_fn(env):
    """Host time of one autograd.backward call over k NodeFn nodes of j kernels each (k in KERNELS, j in
    KERNELS_PER_NODE); a tenth of -n calls per repetition (a call is up to ~3 ms of host time)."""
    x = torch.randn(64, 64, device=env.device, requires_grad=True)
    g = torch.ones(64, 64, device=env.device)
    best = {}
    for order in round_orders(env.rounds):
        for k in order:
            for j in KERNELS_PER_NODE:
                def bwd():
                    y = x
                    for _ in range(k):
                        y = NodeFn.apply(y, j)
                    t0 = time.perf_counter()
                    torch.autograd.backward(y, g)
                    return time.perf_counter() - t0

                with torch.enable_grad():
                    h, w = env.time_part(bwd, n=max(1, env.n // 10))
                keep_best(best, j, k, h, w, nodes=k, kernels_per_node=j)
                x.grad = None
    out = []
    for j in KERNELS_PER_NODE:
        for k in KERNELS:
            s = dict(best[j][k])
            s["kernels"] = k * j
            out.append(s)
    return out


def probe_syncs(env):
    if not env.cuda:
        return {}
    one = torch.ones(1, device=env.device)
    counts = torch.zeros(128, dtype=torch.int64, device=env.device)  # tokens per expert
    side = torch.cuda.Stream()
    pinned = torch.empty(128, dtype=torch.int64, pin_memory=True)
    ev = torch.cuda.Event()

    def dispatcher_sync():
        # The alltoall dispatcher: counts copied to pinned host memory on the D2H stream, the host blocks on an event.
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            pinned.copy_(counts, non_blocking=True)
            ev.record(side)
        ev.synchronize()
        return pinned.tolist()

    r = {}
    for name, fn in (("item", lambda: one.item()), ("cpu", lambda: counts.cpu()), ("dispatcher_d2h", dispatcher_sync)):
        h, w = env.time(fn, n=max(1, env.n // 4))
        r[name] = sample(env.kernels(fn), h, w)
    return r


def probe_events(env):
    if not env.cuda:
        return {}
    ev = torch.cuda.Event()
    s = torch.cuda.Stream()
    t = torch.ones(16, device=env.device)
    ev.record()

    def switch():
        with torch.cuda.stream(s):
            pass

    r = {}
    for name, fn in (("event_record", lambda: ev.record()), ("stream_wait_event", lambda: s.wait_event(ev)),
                     ("stream_switch", switch), ("record_stream", lambda: t.record_stream(s))):
        h, w = env.time(fn)
        r[name] = sample(0, h, w)
    return r


def probe_optimizer(env):
    out = []
    grid = [(p, 1) for p in (1, 4, 16, 64, 256)] + [(64, g) for g in (2, 4, 8)]
    for n_params, n_groups in grid:
        params = [torch.zeros(1024, device=env.device, requires_grad=True) for _ in range(n_params)]
        for p in params:
            p.grad = torch.zeros_like(p)
        per = n_params // n_groups
        groups = [{"params": params[i * per:(i + 1) * per]} for i in range(n_groups)]
        kw = {"fused": True} if env.cuda else {"foreach": False}
        opt = torch.optim.Adam(groups, lr=1e-4, **kw)
        h, w = env.time(opt.step, n=max(1, env.n // 4))
        out.append({"params": n_params, "groups": n_groups, "host_s": h, "wall_s": w,
                    "profiled_kernels": env.kernels(opt.step), "impl": "torch.optim.Adam(%s)" % kw})
    return out


def probe_moe(env, tokens, hidden, experts, topk):
    """Host pieces of one MoE forward with the alltoall dispatcher at EP 1 (no collective)."""
    dev = env.device
    x = torch.randn(tokens, hidden, device=dev, dtype=torch.bfloat16, requires_grad=True)
    w_router = torch.randn(experts, hidden, device=dev, dtype=torch.float32, requires_grad=True)
    side = torch.cuda.Stream() if env.cuda else None
    pinned = torch.empty(experts, dtype=torch.int64, pin_memory=env.cuda)
    ev = torch.cuda.Event() if env.cuda else None
    state = {}

    def router():
        logits = F.linear(x.float(), w_router)
        scores = torch.softmax(logits, dim=-1)
        probs, idx = torch.topk(scores, topk, dim=-1)
        probs = probs / probs.sum(dim=-1, keepdim=True)
        routing_map = torch.zeros(tokens, experts, dtype=torch.bool, device=dev).scatter(1, idx, True)
        dense_probs = torch.zeros(tokens, experts, dtype=probs.dtype, device=dev).scatter(1, idx, probs)
        state.update(routing_map=routing_map, probs=dense_probs)

    def preprocess():
        counts = state["routing_map"].sum(dim=0)
        if env.cuda:
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                pinned.copy_(counts, non_blocking=True)
                ev.record(side)
            ev.synchronize()
        else:
            pinned.copy_(counts)
        state["splits"] = pinned.tolist()

    def permute():
        rm = state["routing_map"].t().contiguous()
        idx = torch.arange(tokens, device=dev).unsqueeze(0).expand(experts, -1)
        sorted_idx = idx.masked_select(rm)
        probs = state["probs"].t().contiguous().masked_select(rm)
        state.update(sorted_idx=sorted_idx, permuted_probs=probs, permuted=x.index_select(0, sorted_idx))

    def unpermute():
        y = state["permuted"] * state["permuted_probs"].unsqueeze(-1).to(state["permuted"].dtype)
        out = torch.zeros(tokens, hidden, device=dev, dtype=y.dtype)
        out.scatter_add_(0, state["sorted_idx"].unsqueeze(1).expand(-1, hidden), y)
        state["out"] = out

    pieces = {"router": router, "preprocess": preprocess, "permute": permute, "unpermute": unpermute}
    res = {"tokens": tokens, "hidden": hidden, "experts": experts, "topk": topk, "pieces": {}}
    with torch.enable_grad():
        for f in pieces.values():
            f()
        for name, f in pieces.items():
            h, w = env.time(f, n=max(1, env.n // 4))
            res["pieces"][name] = sample(None, h, w, profiled_kernels=env.kernels(f),
                                         host_sync=(name == "preprocess"))
    return res


def probe_ep_node(env):
    """Proxy of one combined-1F1B node (forward and backward) around a body of k elementwise kernels."""
    if not env.cuda:
        return {"fwd": [], "bwd": []}
    comp, comm = torch.cuda.current_stream(), torch.cuda.Stream()
    ev_in, ev_out = torch.cuda.Event(), torch.cuda.Event()
    x = torch.randn(64, 64, device=env.device)
    g = torch.ones(64, 64, device=env.device)
    ev_in.record()
    best = {}
    for k in [k for order in round_orders(env.rounds) for k in order]:
        def fwd_node():
            with torch.cuda.stream(comm):
                comm.wait_event(ev_in)
                inp = x.detach().requires_grad_(True)
                y = chain(inp, k)
                ev_out.record(comm)
                y.record_stream(comp)
            return inp, y

        def fwd_node_timed():
            t0 = time.perf_counter()
            fwd_node()
            return time.perf_counter() - t0

        def bwd_node():
            inp, y = fwd_node()
            t0 = time.perf_counter()
            with torch.cuda.stream(comm):
                comm.wait_event(ev_in)
                torch.autograd.backward(y, g)
                ev_out.record(comm)
                inp.grad.record_stream(comp)
            del inp, y  # the node's state released
            return time.perf_counter() - t0

        h, w = env.time_part(fwd_node_timed)
        keep_best(best, "fwd", k, h, w)
        h, w = env.time_part(bwd_node)
        keep_best(best, "bwd", k, h, w)
    return {key: [best[key][k] for k in KERNELS] for key in ("fwd", "bwd")}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("-n", type=int, default=2000, help="calls per timed repetition")
    ap.add_argument("--reps", type=int, default=5, help="timed repetitions; the fastest counts")
    ap.add_argument("--rounds", type=int, default=3,
                    help="rounds over the kernel counts of the line probes (module, function, backward, EP node), "
                         "each in another order; the fastest round counts, every round's host time is kept")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--moe-tokens", default="512,4096", help="tokens per rank of the MoE probes, comma-separated")
    a = ap.parse_args()
    env = Env(a.device, a.n, a.reps, a.rounds)
    torch.manual_seed(0)
    res = {"schema": SCHEMA}
    res.update(probe_module_and_backward(env))
    res["backward_fn"] = probe_backward_fn(env)
    res["syncs"] = probe_syncs(env)
    res["events"] = probe_events(env)
    res["optimizer"] = probe_optimizer(env)
    # Qwen3-30B-A3B's MoE layer (h 2048, 128 experts, top-8) at 512 and 4096 tokens per rank.
    res["moe"] = [probe_moe(env, int(t), 2048, 128, 8) for t in a.moe_tokens.split(",")]
    res["ep_node"] = probe_ep_node(env)
    gpu = torch.cuda.get_device_name(0) if env.cuda else "cpu (smoke test)"
    res["context"] = {"torch": torch.__version__, "cuda": str(torch.version.cuda), "gpu": gpu,
                      "python": platform.python_version(), "cpu": cpu_model(), "cpus": os.cpu_count(),
                      "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
                      "n": a.n, "reps": a.reps, "rounds": a.rounds, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    res["source"] = "calibration/scripts/torch_framework.py, torch %s, CUDA %s, %s, n=%d, best of %d x %d rounds" % (
        torch.__version__, torch.version.cuda, gpu, a.n, a.reps, a.rounds)
    with open(a.output, "w") as f:
        json.dump(res, f, indent=1)
    print("wrote", a.output)


if __name__ == "__main__":
    main()
