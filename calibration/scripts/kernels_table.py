#!/usr/bin/env python3
"""Side-by-side tables of run_kernels_h100x1.sh (issue 17 item 4) from the folder of its JSON files: attention
forward + backward of the backend against each torch SDPA backend, and GEMM TFLOP/s of the backend against torch
(bf16 matmul, fp8 _scaled_mm per operand format). `ratio` = reference time / backend time (>= 0.95 is the target;
above 1 the backend is faster); the attention reference is the fastest torch backend at that length."""
import json
import os
import sys


def load(folder, name):
    path = os.path.join(folder, name)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def attention(folder):
    be, th = load(folder, "attention_backend.json"), load(folder, "attention_torch.json")
    if be is None or th is None:
        return ["attention: missing " + ("attention_backend.json" if be is None else "attention_torch.json")]
    names = sorted({r["backend"] for r in th["results"]})
    out = [f"### Attention forward + backward, ms (backend kernel: {be['context'].get('attention_kernel', '?')}, "
           f"cuDNN {be['context'].get('cudnn', '-')}; torch {th['context']['torch']}, its cuDNN "
           f"{th['context']['cudnn']})", "",
           "| seq | backend fwd | backend bwd | backend fwd+bwd | " + " | ".join(f"torch {n} fwd+bwd" for n in names) +
           " | best torch | ratio fwd+bwd | ratio fwd |",
           "| ---: | ---: | ---: | ---: | " + " | ".join("---:" for _ in names) + " | --- | ---: | ---: |"]
    for r in be["results"]:
        rows = {t["backend"]: t for t in th["results"] if t["seq"] == r["seq"] and "error" not in t}
        cells = [f"{rows[n]['fwd_bwd_ms']:.3f}" if n in rows else "error" for n in names]
        best = min(rows.values(), key=lambda t: t["fwd_bwd_ms"], default=None)
        best_fwd = min((t["fwd_ms"] for t in rows.values()), default=None)
        ratio = f"{best['fwd_bwd_ms'] / r['fwd_bwd_ms']:.3f}" if best else "-"
        ratio_fwd = f"{best_fwd / r['fwd_ms']:.3f}" if best_fwd else "-"
        out.append(f"| {r['seq']} | {r['fwd_ms']:.3f} | {r['bwd_ms']:.3f} | {r['fwd_bwd_ms']:.3f} | " +
                   " | ".join(cells) + f" | {best['backend'] if best else '-'} | {ratio} | {ratio_fwd} |")
    notes = sorted({t["note"] for t in th["results"] if "note" in t} |
                   {f"{t['backend']}: {t['error']}" for t in th["results"] if "error" in t})
    out += [""] + [f"- {n}" for n in notes]
    return out


def gemm(folder, tag, title):
    be, th = load(folder, f"gemm_{tag}_backend.json"), load(folder, f"gemm_{tag}_torch.json")
    if be is None or th is None:
        return [f"{title}: missing results"]
    out = [f"### {title}, TFLOP/s", "", "| shape (MxNxK) | backend | torch | ratio |", "| --- | ---: | ---: | ---: |"]
    for r in be["results"]:
        t = next((x for x in th["results"] if (x["m"], x["n"], x["k"]) == (r["m"], r["n"], r["k"])), None)
        ratio = f"{t['time_us'] / r['time_us']:.3f}" if t else "-"
        out.append(f"| {r['m']}x{r['n']}x{r['k']} | {r['tflops']:.1f} | {t['tflops'] if t else float('nan'):.1f} | "
                   f"{ratio} |")
    return out


def main():
    folder = sys.argv[1]
    lines = attention(folder) + [""]
    lines += gemm(folder, "fp8_e4m3", "FP8 GEMM e4m3 x e4m3 (forward; fast accumulation), torch._scaled_mm") + [""]
    lines += gemm(folder, "fp8_e5m2", "FP8 GEMM e5m2 x e4m3 (gradient), torch._scaled_mm") + [""]
    lines += gemm(folder, "bf16", "bf16 GEMM, torch.matmul")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
