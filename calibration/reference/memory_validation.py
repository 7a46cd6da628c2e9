#!/usr/bin/env python3
"""The memory model (`twinstep lower --summary`, docs/memory.md) against the PyTorch reference's measured peaks.

For each case folder of calibration/scripts/run_reference_h100x1.sh (OUT/r/<case>/torch.json: the shapes, the main
grads' dtype, the recompute layers, torch's max_memory_allocated / max_memory_reserved), lowers the case again with
THIS tree's twinstep and the flags run_case() passes (4-layer Llama-3-8B or 2-layer Qwen3-30B-A3B, one GPU, MBS 1,
full uniform recompute of 1 layer, fp8 tensorwise), plus --grad-reduce-in-fp32 where the reference ran fp32 main
grads (its schedule's recipe default then), and prints the estimate against the measured allocated peak.

Beside it, the terms the reference allocates that Megatron (and so the model) does not, each a closed form from
the reference's code (docs/memory.md "Validation" derives them; none is fitted to the measured peaks):
  - fp32 master grads kept for the whole step (ref_optimizer.py until session 15: `m.grad = zeros_like(m)` at init),
    with bf16 main grads only: 4 N. Megatron allocates them in the optimizer step (`_copy_model_grads_to_main_grads`)
    and frees them at the next zero_grad; the model counts them in the optimizer step only. Since session 15 the
    reference does the same (its JSON says so in `fp32_master_grads`): 0;
  - the loss: torch.compile'd F.cross_entropy(logits.float()) saves the bf16 logits (the model's TE figure, 2 B per
    logit) but writes a separate bf16 gradient (TE: in place), and the Python-held logits live through the output
    layer's dgrad: 2 T V + the dgrad output 2 T h at that dgrad, where the model (since session 16) holds the dgrad
    output alone; the column is the reference's working memory there, beside the model's at its own peak;
  - attention: v is a view of the QKV GEMM's output, so SDPA keeps that whole buffer beside RoPE's q and k copies:
    + 2 T (n_q + n_kv) d_h per layer;
  - the RoPE cos/sin tables, 2 x 2 T d_h; ids and labels, 16 T; the MoE routing indices, 24 T k: small. (RMSNorm's
    fp32 rstd and the second cuBLAS workspace of autograd's thread are the model's since session 16.) The GEMM
    workspaces: every GEMM of the reference is a torch one, on the main thread (forward) and autograd's (backward),
    two PyTorch cuBLAS workspaces; the model's `workspaces` counts those and Transformer Engine's (32 MiB; + 4 x 32
    MiB for grouped expert GEMMs), which the reference does not run: 2 x 32 MiB - the model's `workspaces`;
  - MoE (eager in the reference): the SiLU output beside fc1's output and the product (2 T k f_e per layer), the
    weighted rows y p that the unpermute's out-of-place index_add saves as its source (torch's generated
    IndexAddBackward0 keeps `source_`; the combine's rows y are saved by the multiply as in Megatron), 2 T k h per
    layer, the fp32 normalised top-k probabilities and their sum (4 T k + 4 T) and the bf16 probabilities (2 T k);
  - fp8 (dense layers): the reference casts each weight in every forward and keeps only its transposed fp8 copy for
    dgrad (ref_linear.py: `quantize_t(w)`, `qw_t` saved), 1 B per linear weight element, where Transformer Engine
    caches the fp8 weight and its transpose (the model's `fp8_weights`, 2 B): - N_l. The reference before commit
    563e330 (session 8's H200 run; its torch.json has no `experts_gemm`) saved each linear layer's bf16 input and
    weight and cast both again in the backward (`Linear.forward`: `ctx.save_for_backward(x, w)`): no fp8 weight
    copy or scaling state, bf16 inputs: - `fp8_weights` - `fp8_scaling` + (`(inputs in bf16)` - `activations`).

Usage: memory_validation.py TWINSTEP CASE_DIR... (or folders of case folders); prints markdown.
"""
import json
import os
import re
import subprocess
import sys
import tempfile

from reference_table import case_dirs

GIB = 1024.0 ** 3
MIB = 1024.0 ** 2
MODELS = {"llama3-8b": 4, "qwen3-30b-a3b": 2}


def fail(msg):
    print(f"memory_validation.py: error: {msg}", file=sys.stderr)
    sys.exit(2)


def fewer_layer_models(out, script=None):
    """The zoo models with the reference's layer counts (every layer's shapes the zoo's) as OUT/<zoo>-<layers>l.json,
    their `source` naming `script` where given; the reference scripts' too (device_env.sh fewer_layer_models)."""
    paths = {}
    for zoo, layers in MODELS.items():
        with open(f"models/zoo/{zoo}.json") as f:
            m = json.load(f)
        m["name"], m["num_layers"] = f"{zoo}-{layers}l", layers
        if script:
            m["source"] = f"models/zoo/{zoo}.json with num_layers {layers} ({script})"
        paths[zoo] = os.path.join(out, f"{zoo}-{layers}l.json")
        with open(paths[zoo], "w") as f:
            json.dump(m, f, indent=1)
    return paths


UNITS = {"B": 1.0, "KiB": 1024.0, "MiB": MIB, "GiB": GIB}


def summary_terms(twinstep, flags):
    """The memory terms of `twinstep lower --summary` (bytes) and its peak phase; "total" is the "= allocator
    reserved" line (no profile: allocator overhead 0, so reserved = allocated)."""
    r = subprocess.run([twinstep, "lower", *flags, "-o", os.devnull, "--summary"], capture_output=True, text=True)
    phase = re.search(r"memory, tightest rank \(peak in ([^)]*)\):", r.stdout)
    if r.returncode != 0 or not phase:
        fail(f"`twinstep lower {' '.join(flags)}` gave no estimate (exit {r.returncode}): {r.stderr.strip()[:300]}")
    terms = {"phase": phase.group(1)}
    for m in re.finditer(r"^\s+(=? ?\(?[a-z_0-9 ]+?\)?)\s+([0-9.]+) (B|KiB|MiB|GiB)$", r.stdout, re.M):
        key = "total" if m.group(1).startswith("=") else m.group(1).strip("()")
        terms[key] = float(m.group(2)) * UNITS[m.group(3)]
    return terms


def forward_backward_terms(twinstep, flags, bf16_grads, n_params):
    """The model's forward/backward phase: with bf16 main grads the model may peak in the optimizer step (its fp32
    grad copy), so the phase comes from the same case with fp32 grads (which always peaks in forward/backward: no
    copy), its grads term back at 2 B per parameter; the activations and working memory are the same."""
    if not bf16_grads:
        return summary_terms(twinstep, flags)
    t = summary_terms(twinstep, [f for f in flags if f != "--no-grad-reduce-in-fp32"] + ["--grad-reduce-in-fp32"])
    if t["phase"] != "forward/backward":
        fail(f"the fp32-grads variant of {flags} peaks in {t['phase']}")
    t["total"] -= 2.0 * n_params
    return t


def reference_only_bytes(s, n_params, megatron_master_grads, cast_per_forward, terms):
    """What the reference allocates beyond Megatron's terms at its peak (the closed forms of the docstring); `terms`:
    the model's forward/backward phase (its `workspaces`, fp8 terms and activations)."""
    if "workspaces" not in terms:
        fail("this twinstep's `lower --summary` has no `workspaces` line (a binary older than session 16): rebuild it")
    T, h, dh = s["seq"] * s["mbs"], s["hidden"], s["head_dim"]
    nq, nkv, V, L = s["heads"], s["kv_heads"], s["vocab"], s["layers"]
    moe = set(s.get("moe_layers", []))
    rc = set(s.get("recompute_layers", []))
    k, fe = s.get("topk", 0), s.get("moe_ffn", 0)
    masters = 4.0 * n_params if s["grad_bytes"] == 2 and not megatron_master_grads else 0.0
    loss = 2.0 * T * V + 2.0 * T * h
    kept = [i for i in range(L) if i not in rc]  # recomputed layers keep their input only
    qkv_view = sum(2.0 * T * (nq + nkv) * dh for _ in kept)
    moe_extra = sum(2.0 * T * k * fe + 2.0 * T * k * h + 4.0 * T * k + 4.0 * T + 2.0 * T * k for i in kept if i in moe)
    small = 4.0 * T * dh + 16.0 * T + (24.0 * T * k if moe else 0.0) + 2 * 32 * MIB - terms["workspaces"]
    if s["fp8"] and moe:
        fail("an fp8 MoE case: the reference's per-expert fp8 casts have no closed form here yet")
    linear = h * (nq + 2 * nkv) * dh + nq * dh * h + 3.0 * h * s["ffn"]  # qkv, proj, fc1 (2 f), fc2 per dense layer
    fp8 = 0.0
    if s["fp8"] and cast_per_forward:
        fp8 = -linear * L
    elif s["fp8"]:  # before 563e330: bf16 inputs saved, every cast redone in the backward
        fp8 = -terms["fp8_weights"] - terms["fp8_scaling"] + terms["inputs in bf16"] - terms["activations"]
    return {"masters": masters, "loss": loss, "qkv_view": qkv_view, "moe": moe_extra, "fp8": fp8, "small": small}


def row(twinstep, models, d):
    with open(os.path.join(d, "torch.json")) as f:
        t = json.load(f)
    s, mem = t.get("shapes"), t.get("memory", {})
    name = os.path.basename(os.path.normpath(d))
    if t.get("error"):  # the reference's own out-of-memory exit: a row that says so
        return f"| {name} | | | {t['error']} | | | | | | |"
    if not s or "max_allocated_bytes" not in mem or "params" not in t:
        fail(f"{d}/torch.json: no shapes, params or memory: not a torch_reference.py result")
    zoo = "qwen3-30b-a3b" if s["experts"] else "llama3-8b"
    flags = ["--model", models[zoo], "--gpus", "1", "--mbs", str(s["mbs"]), "--gbs", str(s["micro_batches"]),
             "--seq", str(s["seq"])]
    if s["recompute_layers"]:
        flags += ["--recompute", "full", "--recompute-method", "uniform", "--recompute-num-layers", "1"]
    if s["fp8"]:
        flags += ["--dtype", "fp8", "--fp8-recipe", "tensorwise"]
    flags.append("--grad-reduce-in-fp32" if s["grad_bytes"] == 4 else "--no-grad-reduce-in-fp32")
    bf16_grads = s["grad_bytes"] == 2
    terms = summary_terms(twinstep, flags)
    est = terms["total"]
    fb = forward_backward_terms(twinstep, flags, bf16_grads, t["params"])
    alloc, reserved = mem["max_allocated_bytes"], mem["max_reserved_bytes"]
    ref = reference_only_bytes(s, t["params"], "fp32_master_grads" in t, "experts_gemm" in t, fb)
    # The reference's loss extra is working memory at the output layer's dgrad: beside the model's working memory
    # of that phase (its larger one counts, as the model takes the phase's largest), the rest adds to the phase.
    transient = fb.get("transient", 0.0)
    with_ref = fb["total"] - transient + max(transient, ref["loss"]) + ref["masters"] + ref["qkv_view"] + ref["moe"] + \
        ref["fp8"] + ref["small"]
    # Where the model peaks in the optimizer step (bf16 grads' fp32 copy), the reference may too: its small terms
    # (the RoPE tables, the batch, its two PyTorch GEMM workspaces for the model's) are there as well, its fp8 weight
    # copies are not (autograd frees them with the backward; TE keeps its cache).
    with_ref = max(with_ref, est + ref["small"] - terms.get("fp8_weights", 0.0) - terms.get("fp8_scaling", 0.0))
    gpu = t.get("context", {}).get("gpu", "?").replace("NVIDIA ", "").replace(" 80GB HBM3", "")
    cells = [name, gpu, "fp32" if s["grad_bytes"] == 4 else "bf16", f"{alloc / GIB:.2f}", f"{reserved / GIB:.2f}",
             f"{est / GIB:.2f}", f"{(est / alloc - 1) * 100:+.1f} %",
             " / ".join(f"{ref[key] / GIB:.2f}" for key in ("masters", "loss", "qkv_view", "moe", "fp8", "small")),
             f"{with_ref / GIB:.2f}", f"{(with_ref / alloc - 1) * 100:+.1f} %"]
    return "| " + " | ".join(cells) + " |"


def main():
    if len(sys.argv) < 3:
        fail("usage: memory_validation.py TWINSTEP CASE_DIR... (run from the repository root)")
    twinstep, dirs = sys.argv[1], case_dirs(sys.argv[2:], "torch.json")
    if not dirs:
        fail(f"no case folders (with torch.json) under {sys.argv[2:]}")
    with tempfile.TemporaryDirectory() as tmp:
        models = fewer_layer_models(tmp)
        rows = [row(twinstep, models, d) for d in dirs]
    print("| case | GPU | main grads | torch max allocated GiB | max reserved GiB | model estimate GiB | "
          "vs allocated | reference-only terms GiB: fp32 master grads / loss / QKV view / MoE / fp8 / small | "
          "model's forward/backward phase + reference-only GiB | vs allocated |")
    print("|" + " --- |" * 10)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
