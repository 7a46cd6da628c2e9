#!/usr/bin/env python3
# Host overhead of PyTorch eager on this machine: host time per tiny CUDA op (dispatcher + launch) and per
# nn.Module call beyond the functional call it wraps, and per CUDA event call (Event.record / Stream.wait_event, the
# EP-overlap schedule's per-node events). The GPU work is tiny, so the host loop is the bottleneck
# and its time per iteration is the host cost. Writes JSON for `twinstep calibrate --framework`.
# Usage: python3 torch_host_overhead.py -o framework.json [-n 20000]
import argparse, json, time

import torch
import torch.nn.functional as F


def per_iter_s(fn, n):
    for _ in range(200):
        fn()
    torch.cuda.synchronize()
    best = None
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        t1 = time.perf_counter()
        torch.cuda.synchronize()
        v = (t1 - t0) / n
        best = v if best is None else min(best, v)
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("-n", type=int, default=20000)
    a = ap.parse_args()
    x = torch.randn(16, 64, device="cuda", dtype=torch.bfloat16)
    lin = torch.nn.Linear(64, 64, device="cuda", dtype=torch.bfloat16)
    w, b = lin.weight, lin.bias
    with torch.no_grad():
        op_s = per_iter_s(lambda: torch.add(x, 1.0), a.n)
        functional_s = per_iter_s(lambda: F.linear(x, w, b), a.n)
        module_s = per_iter_s(lambda: lin(x), a.n)
        ev = torch.cuda.Event()
        side = torch.cuda.Stream()

        def record_and_wait():
            ev.record()
            side.wait_event(ev)

        event_pair_s = per_iter_s(record_and_wait, a.n)
    out = {
        "eager_op_host_s": op_s,
        "functional_linear_host_s": functional_s,
        "module_linear_host_s": module_s,
        # Per kernel: the eager op's whole host cost; twinstep calibrate subtracts the backend's raw launch cost.
        "per_kernel_launch_s": op_s,
        "per_module_call_s": max(0.0, module_s - functional_s),
        # One event call: a record and a wait_event per iteration, halved.
        "event_record_s": event_pair_s / 2,
        "source": "calibration/scripts/torch_host_overhead.py, torch %s, CUDA %s, %s, n=%d, best of 5" % (
            torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0), a.n),
    }
    with open(a.output, "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
