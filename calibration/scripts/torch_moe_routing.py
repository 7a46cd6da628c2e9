#!/usr/bin/env python3
# Megatron-Core's eager (unfused) MoE routing, timed op by op on one GPU (issue 21 items 3, 5; issue 17): what runs
# with `moe_router_fusion = False` and `moe_permute_fusion = False` (TransformerConfig's defaults), written after
# megatron/core/transformer/moe/router.py (TopKRouter.routing: top-k on the logits then softmax over the k scores
# (use_pre_softmax False), the dense probs and the routing map by scatter, and with an aux-loss coefficient the
# aux-loss scores (softmax over all experts, top-k, their map), tokens per expert, switch_load_balancing_loss_func,
# the loss tracker and MoEAuxLossAutoScaler) and moe_utils.py (permute with probs: the map transposed, token
# indices and probs by masked_select, the tokens by index_select; unpermute without probs (the alltoall dispatcher
# applies them in the experts): zeros + scatter_add_; sort_chunks_by_idxs: split + cat of the tokens and the probs).
# Transformer Engine's fused kernels are not measured here (TE is not on the GPU machines).
#
# Segments and their steps (one step = one torch call; a step's name is the op group the lowering emits for it,
# models/lowering/moe_eager.cpp, so the fit can price each group's kernels):
#   router     the steps after the gating GEMM (priced by the GEMM tables), forward; backward from the dense probs'
#              gradient to the logits' gradient (the gating GEMM's backward not included)
#   permute    the alltoall dispatcher's permute of tokens and probs, forward and backward
#   unpermute  the combine's unpermute (no probs), forward and backward
#   sort       sort_chunks_by_idxs of the tokens and the probs over E chunks (EP x local experts), forward and backward
# Per step: host seconds of one call with the GPU idle before it (synchronize, then time the call: the framework's
# host cost; a step that syncs inside (masked_select's nonzero) includes its wait), the GPU seconds from CUDA events
# around the call with the GPU kept busy before it (torch.cuda._sleep), so the events time the kernels and not the
# launches; for the steps that sync inside, the events would time the host's wake-up too, so their gpu_s is the sum
# of the kernels' durations from torch.profiler (both are kept). Per segment: the same for the whole forward and for
# one torch.autograd.backward call over it, with the kernels the profiler saw (names, count, durations).
# Cases: T in --tokens x E in --experts at top-k --topk, plus --extra cases (Mixtral-like E 8 top-2).
# Usage: python3 torch_moe_routing.py -o moe_routing.json [-n 30] [--device cuda|cpu] [--tokens 1024,4096,16384]
#   --device cpu is a smoke test of the script (no events, no profiler); its figures mean nothing for a profile.
import argparse
import json
import os
import platform
import statistics
import time

import torch

from torch_framework import cpu_model  # this directory: the host CPU's model name

SCHEMA = "twinstep.torch_moe_routing/1"
AUX_COEFF = 1e-3  # Qwen3's router_aux_loss_coef; the value does not change the kernels


class Env:
    def __init__(self, device, n, sleep_us):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.n = n
        self.sleep_cycles = 0
        if self.cuda:  # cycles at a nominal 1980 MHz (H100 SXM's max SM clock); only needs to outlast the launches
            self.sleep_cycles = int(sleep_us * 1980)

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def host(self, fn, prepare=None):
        """Median host seconds of one call of fn with the GPU idle before it (prepare() runs untimed first)."""
        out = []
        for i in range(self.n + 3):
            if prepare:
                prepare()
            self.sync()
            t0 = time.perf_counter()
            fn()
            t1 = time.perf_counter()
            if i >= 3:
                out.append(t1 - t0)
        self.sync()
        return statistics.median(out)

    def gpu(self, fn, prepare=None):
        """Median GPU seconds of one call of fn from CUDA events, the GPU busy (a sleep kernel) before the call."""
        if not self.cuda:
            return None
        pairs = []
        for i in range(self.n + 3):
            if prepare:
                prepare()
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda._sleep(self.sleep_cycles)
            e0.record()
            fn()
            e1.record()
            if i >= 3:
                pairs.append((e0, e1))
        self.sync()
        return statistics.median(e0.elapsed_time(e1) * 1e-3 for e0, e1 in pairs)

    def kernels(self, fn, prepare=None, calls=3):
        """GPU activities of one call of fn seen by torch.profiler: [[name, seconds], ...] averaged over calls."""
        if not self.cuda:
            return None
        try:
            from torch.profiler import ProfilerActivity, profile
            acts = []
            for _ in range(calls):
                if prepare:
                    prepare()
                self.sync()
                with profile(activities=[ProfilerActivity.CUDA]) as prof:
                    fn()
                    self.sync()
                cuda = torch.autograd.DeviceType.CUDA
                acts.append([(e.name, e.time_range.elapsed_us() * 1e-6)
                             for e in prof.events() if e.device_type == cuda])
            first = acts[0]
            if any(len(a) != len(first) for a in acts):
                return [[n, s] for n, s in first]
            return [[first[i][0], statistics.median(a[i][1] for a in acts)] for i in range(len(first))]
        except Exception as e:  # a check only; gpu_s comes from the events unless the step syncs
            print("profiler failed (%s)" % e)
            return None


class AuxLossAutoScaler(torch.autograd.Function):
    """As MCore's MoEAuxLossAutoScaler: returns the activation, and in the backward the aux loss's gradient, a ones
    tensor times the main loss's scale."""

    @staticmethod
    def forward(ctx, output, aux_loss):
        ctx.save_for_backward(aux_loss)
        return output

    @staticmethod
    def backward(ctx, grad_output):
        (aux_loss,) = ctx.saved_tensors
        return grad_output, torch.ones_like(aux_loss) * AuxLossAutoScaler.scale


AuxLossAutoScaler.scale = None


def routing_map_steps(prefix, idx_key, out_key, k):
    """MCore's `torch.zeros_like(logits).int().scatter(1, top_indices, 1).bool()`, one step per torch call."""
    return [
        (prefix + "_zeros", lambda s: s.__setitem__(prefix + "0", torch.zeros_like(s["logits"]))),
        (prefix + "_int", lambda s: s.__setitem__(prefix + "1", s[prefix + "0"].int())),
        (prefix + "_scatter", lambda s: s.__setitem__(prefix + "2", s[prefix + "1"].scatter(1, s[idx_key], 1))),
        (prefix + "_bool", lambda s: s.__setitem__(out_key, s[prefix + "2"].bool())),
    ]


def router_steps(T, E, k, aux):
    steps = [
        ("router_logits_topk", lambda s: s.update(zip(("top_vals", "top_idx"), torch.topk(s["logits"], k, dim=1)))),
        ("router_topk_softmax", lambda s: s.__setitem__("top_probs", torch.softmax(s["top_vals"], dim=-1,
                                                                               dtype=torch.float32))),
        ("router_probs_zeros", lambda s: s.__setitem__("probs0", torch.zeros_like(s["logits"]))),
        ("router_probs_scatter", lambda s: s.__setitem__("probs", s["probs0"].scatter(1, s["top_idx"],
                                                                                       s["top_probs"]))),
    ] + routing_map_steps("router_map", "top_idx", "map", k)
    if not aux:
        return steps
    scale = E * AUX_COEFF / (k * T * T)
    steps += [
        ("router_aux_softmax", lambda s: s.__setitem__("scores", torch.softmax(s["logits"], dim=-1,
                                                                               dtype=torch.float32))),
        ("router_aux_topk", lambda s: s.__setitem__("aux_idx", torch.topk(s["scores"], k, dim=1)[1])),
    ] + routing_map_steps("router_aux_map", "aux_idx", "aux_map", k) + [
        ("router_aux_counts", lambda s: s.__setitem__("tpe", s["aux_map"].sum(dim=0))),
        ("router_aux_probs_sum", lambda s: s.__setitem__("agg", s["scores"].sum(dim=0))),
        ("router_aux_mul", lambda s: s.__setitem__("aux0", s["agg"] * s["tpe"])),
        ("router_aux_sum", lambda s: s.__setitem__("aux1", torch.sum(s["aux0"]))),
        ("router_aux_scale", lambda s: s.__setitem__("aux_loss", s["aux1"] * scale)),
        ("router_aux_log", lambda s: s.__setitem__("aux_log", s["aux_loss"] / AUX_COEFF)),
        ("router_aux_track", lambda s: s["tracker"][0].add_(s["aux_log"].detach())),
        ("router_aux_attach", lambda s: s.__setitem__("probs", AuxLossAutoScaler.apply(s["probs"], s["aux_loss"]))),
    ]
    return steps


def permute_steps(T, E):
    return [
        ("permute_map_t", lambda s: s.__setitem__("map_t", s["map"].bool().T.contiguous())),
        ("permute_arange", lambda s: s.__setitem__("ar", torch.arange(T, device=s["map"].device))),
        ("permute_idx_select", lambda s: s.__setitem__("sorted_idx", s["ar"].unsqueeze(0).expand(E, -1)
                                                       .masked_select(s["map_t"]))),
        ("permute_probs_t", lambda s: s.__setitem__("probs_t", s["probs"].T.contiguous())),
        ("permute_probs_select", lambda s: s.__setitem__("perm_probs", s["probs_t"].masked_select(s["map_t"]))),
        ("permute_tokens", lambda s: s.__setitem__("permuted", s["tokens"].index_select(0, s["sorted_idx"]))),
    ]


LEAVES = ("logits", "probs_leaf", "tokens", "expert_out", "sort_in", "sort_probs_in")
SYNCS = {"permute_idx_select", "permute_probs_select"}  # masked_select: nonzero copies its count to the host


def unpermute_steps(T, h):
    return [
        ("unpermute_zeros", lambda s: s.__setitem__("out0", torch.zeros(T, h, dtype=s["expert_out"].dtype,
                                                                        device=s["expert_out"].device))),
        ("unpermute_scatter_add", lambda s: s.__setitem__("out", s["out0"].scatter_add_(
            0, s["sorted_idx"].unsqueeze(1).expand(-1, h), s["expert_out"]))),
    ]


def sort_steps():
    def cat(key, out):
        def f(s):
            chunks = torch.split(s[key], s["split_sizes"].tolist(), dim=0)
            s[out] = torch.cat([chunks[i] for i in s["sorted_idxs"].tolist()], dim=0)
        return f
    return [("sort_tokens", cat("sort_in", "sorted")), ("sort_probs", cat("sort_probs_in", "sorted_probs"))]


def make_state(T, E, k, h, dev):
    g = torch.Generator(device="cpu").manual_seed(0)
    logits = torch.randn(T, E, generator=g).to(dev)
    top_idx = torch.topk(logits, k, dim=1)[1]
    rmap = torch.zeros(T, E, dtype=torch.bool, device=dev).scatter(1, top_idx, True)
    probs = torch.zeros(T, E, device=dev).scatter(1, top_idx, torch.rand(T, k, device=dev))
    sorted_idx = torch.arange(T, device=dev).unsqueeze(0).expand(E, -1).masked_select(rmap.T.contiguous())
    rows = T * k
    sizes = torch.full((E,), rows // E, dtype=torch.int64)
    sizes[: rows % E] += 1
    # The alltoall dispatcher's order: chunks arrive EP-rank-major and are sorted expert-major (EP 4 here).
    ep = 4 if E % 4 == 0 else 1
    order = torch.arange(E).view(ep, E // ep).T.reshape(-1)
    return {
        "logits": logits.requires_grad_(True), "map": rmap, "probs_leaf": probs.requires_grad_(True),
        "tokens": torch.randn(T, h, device=dev, dtype=torch.bfloat16).requires_grad_(True),
        "expert_out": torch.randn(rows, h, device=dev, dtype=torch.bfloat16).requires_grad_(True),
        "sorted_idx_fixed": sorted_idx, "tracker": torch.zeros(1, device=dev),
        "sort_in": torch.randn(rows, h, device=dev, dtype=torch.bfloat16).requires_grad_(True),
        "sort_probs_in": torch.rand(rows, device=dev).requires_grad_(True),
        "split_sizes": sizes, "sorted_idxs": order,
    }


def run_segment(env, name, steps, state, reset, outputs):
    """Times each step and the whole forward, then one backward over it. reset(state) puts the segment's inputs
    back; outputs(state) gives (tensors, gradients) for the backward."""
    def forward():
        for _, fn in steps:
            fn(state)

    with torch.enable_grad():
        reset(state)
        forward()
        res = {"fwd": {"steps": []}}
        for op, fn in steps:
            # Each step alone, its inputs from one forward of the steps before it (kept in state).
            rec = {"op": op, "syncs": op in SYNCS}
            rec["host_s"] = env.host(lambda: fn(state))
            rec["gpu_event_s"] = env.gpu(lambda: fn(state))
            ks = env.kernels(lambda: fn(state), calls=3 if op in SYNCS else 1)
            rec["kernels"] = None if ks is None else len(ks)
            rec["kernel_list"] = ks
            rec["kernel_s"] = None if ks is None else sum(s or 0.0 for _, s in ks)
            rec["gpu_s"] = rec["kernel_s"] if (op in SYNCS and ks is not None) else rec["gpu_event_s"]
            res["fwd"]["steps"].append(rec)
        prep = lambda: reset(state)
        res["fwd"]["host_s"] = env.host(forward, prep)
        res["fwd"]["gpu_wall_s"] = env.gpu(forward, prep)
        res["fwd"]["gpu_s"] = (None if not env.cuda else sum(s["gpu_s"] for s in res["fwd"]["steps"]))

        def prep_bwd():
            # The inputs are leaves here (activations in the model): no .grad to accumulate into, so the backward runs
            # no AccumulateGrad add the model would not run.
            for key in LEAVES:
                state[key].grad = None
            reset(state)
            forward()

        def backward():
            t, g = outputs(state)
            torch.autograd.backward(t, g)

        res["bwd"] = {"host_s": env.host(backward, prep_bwd), "gpu_s": env.gpu(backward, prep_bwd)}
        ks = env.kernels(backward, prep_bwd)
        res["bwd"]["kernels"] = None if ks is None else len(ks)
        res["bwd"]["kernel_list"] = ks
        res["bwd"]["kernel_s"] = None if ks is None else sum(s or 0.0 for _, s in ks)
        res["bwd"]["leaf_accumulations"] = 0  # read by the fit (files before this field: one add per leaf)
    for key in LEAVES:
        state[key].grad = None
    print("  %-9s fwd host %.1f us gpu %s us | bwd host %.1f us gpu %s us" % (
        name, res["fwd"]["host_s"] * 1e6, fmt_us(res["fwd"]["gpu_s"]), res["bwd"]["host_s"] * 1e6,
        fmt_us(res["bwd"]["gpu_s"])), flush=True)
    return res


def fmt_us(s):
    return "-" if s is None else "%.1f" % (s * 1e6)


def run_case(env, T, E, k, h, aux):
    dev = env.device
    state = make_state(T, E, k, h, dev)
    grads = {
        "router": torch.randn(T, E, device=dev),
        "permuted": torch.randn(T * k, h, device=dev, dtype=torch.bfloat16),
        "perm_probs": torch.randn(T * k, device=dev),
        "out": torch.randn(T, h, device=dev, dtype=torch.bfloat16),
        "sorted": torch.randn(T * k, h, device=dev, dtype=torch.bfloat16),
        "sorted_probs": torch.randn(T * k, device=dev),
    }
    AuxLossAutoScaler.scale = torch.tensor(1.0, device=dev)

    def reset_permute(s):
        s["probs"] = s["probs_leaf"]

    def reset_unpermute(s):
        s["sorted_idx"] = s["sorted_idx_fixed"]

    case = {"tokens": T, "experts": E, "topk": k, "hidden": h, "aux_loss": aux, "segments": {}}
    seg = case["segments"]
    seg["router"] = run_segment(env, "router", router_steps(T, E, k, aux), state, lambda s: None,
                                lambda s: ([s["probs"]], [grads["router"]]))
    seg["permute"] = run_segment(env, "permute", permute_steps(T, E), state, reset_permute,
                                 lambda s: ([s["permuted"], s["perm_probs"]], [grads["permuted"], grads["perm_probs"]]))
    seg["unpermute"] = run_segment(env, "unpermute", unpermute_steps(T, h), state, reset_unpermute,
                                   lambda s: ([s["out"]], [grads["out"]]))
    seg["sort"] = run_segment(env, "sort", sort_steps(), state, lambda s: None,
                              lambda s: ([s["sorted"], s["sorted_probs"]], [grads["sorted"], grads["sorted_probs"]]))
    return case


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("-n", type=int, default=30, help="timed calls per step (median counts)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tokens", default="1024,4096,16384", help="tokens per rank T, comma-separated")
    ap.add_argument("--experts", default="64,128", help="experts E, comma-separated, at --topk")
    ap.add_argument("--topk", type=int, default=8)
    ap.add_argument("--extra", default="8:2", help="further E:k cases at every T (Mixtral-like 8:2), comma-separated")
    ap.add_argument("--hidden", type=int, default=2048, help="hidden size of the tokens (Qwen3-30B-A3B's 2048)")
    ap.add_argument("--no-aux-loss", action="store_true", help="routers without the aux-loss terms")
    ap.add_argument("--budget-s", type=float, default=1e9, help="start no further case after this many seconds")
    ap.add_argument("--sleep-us", type=float, default=300.0,
                    help="GPU sleep queued before each timed call, longer than a call's launches")
    a = ap.parse_args()
    env = Env(a.device, a.n, a.sleep_us)
    torch.manual_seed(0)
    shapes = [(int(e), a.topk) for e in a.experts.split(",")]
    shapes += [tuple(int(x) for x in c.split(":")) for c in a.extra.split(",") if c]
    res = {"schema": SCHEMA, "cases": []}
    t_start = time.time()
    for T in (int(t) for t in a.tokens.split(",")):
        for E, k in shapes:
            if time.time() - t_start > a.budget_s:
                print("budget of %.0f s spent: T %d E %d k %d not run" % (a.budget_s, T, E, k), flush=True)
                continue
            print("T %d E %d k %d (%.0f s)" % (T, E, k, time.time() - t_start), flush=True)
            res["cases"].append(run_case(env, T, E, k, a.hidden, not a.no_aux_loss))
            write(a, env, res, t_start)  # after every case: a run cut short keeps what it measured
    write(a, env, res, t_start)
    print("wrote", a.output)


def write(a, env, res, t_start):
    gpu = torch.cuda.get_device_name(0) if env.cuda else "cpu (smoke test)"
    res["context"] = {"torch": torch.__version__, "cuda": str(torch.version.cuda), "gpu": gpu,
                      "python": platform.python_version(), "cpu": cpu_model(), "cpus": os.cpu_count(),
                      "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
                      "n": a.n, "sleep_us": a.sleep_us, "aux_loss_coeff": AUX_COEFF,
                      "seconds": round(time.time() - t_start, 1),
                      "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    res["source"] = "calibration/scripts/torch_moe_routing.py, torch %s, CUDA %s, %s, median of %d calls" % (
        torch.__version__, torch.version.cuda, gpu, a.n)
    with open(a.output + ".tmp", "w") as f:
        json.dump(res, f, indent=1)
    os.replace(a.output + ".tmp", a.output)


if __name__ == "__main__":
    main()
