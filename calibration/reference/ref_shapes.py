"""torch_reference.py's shapes: read from a lowered one-GPU schedule's ops or from the command line's flags, and the
script's one error exit (exit 2, the message naming the file, op or flag and the fix)."""
import hashlib
import json
import sys


def fail(msg):
    print(f"torch_reference.py: error: {msg}", file=sys.stderr)
    sys.exit(2)


# ---------------------------------------------------------------------------------------------------------------
# Shapes: from a schedule or from flags


def shapes_from_schedule(path):
    """The model shapes of a one-GPU schedule, read from its ops (names as models/lowering/ writes them)."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
        s = json.loads(raw)
    except (OSError, ValueError) as e:
        fail(f"{path}: cannot read the schedule JSON ({e}); write one with `twinstep lower ... --gpus 1 -o {path}`")
    ranks = s.get("ranks", [])
    if len(ranks) != 1:
        fail(f"{path}: field ranks: the schedule has {len(ranks)} ranks; this script runs one-GPU schedules "
             "(lower with --gpus 1)")
    ops = {o["name"]: o for o in s.get("ops", []) if o.get("kind") == "compute"}

    def op(name):
        if name not in ops:
            fail(f"{path}: op {name} not found; the script expects the op names models/lowering/ writes")
        return ops[name]["kernel"]

    micro_batches = sorted({o["tags"]["microbatch"] for o in ops.values() if "microbatch" in o.get("tags", {})})
    layers = sorted({o["tags"]["layer"] for o in ops.values() if "layer" in o.get("tags", {})})
    qkv, attn = op("L0.mb0.fwd.qkv"), op("L0.mb0.fwd.attn")
    out = op("mb0.fwd.output")
    d = {
        "layers": len(layers), "hidden": qkv["k"], "heads": attn["heads_q"], "kv_heads": attn["heads_kv"],
        "head_dim": attn["head_dim"], "vocab": out["n"], "seq": attn["seq_q"], "mbs": attn["batch"],
        "micro_batches": len(micro_batches), "rope": "L0.mb0.fwd.rope" in ops, "causal": attn["causal"],
        "fp8": qkv.get("dtype") == "fp8", "ffn": 0, "experts": 0, "topk": 0, "moe_ffn": 0, "expert_splits": [],
        "moe_layers": [], "recompute_layers": [],
    }
    if qkv["n"] != (d["heads"] + 2 * d["kv_heads"]) * d["head_dim"]:
        fail(f"{path}: op L0.mb0.fwd.qkv: n={qkv['n']} is not (heads_q + 2 heads_kv) x head_dim of L0.mb0.fwd.attn "
             "(a TP > 1 schedule?); lower with --gpus 1")
    if attn["seq_q"] != attn["seq_kv"]:
        fail(f"{path}: op L0.mb0.fwd.attn: seq_q != seq_kv (context parallelism?); lower with --gpus 1")
    tokens = d["mbs"] * d["seq"]
    for layer in layers:
        if f"L{layer}.mb0.fwd.router" in ops:
            d["moe_layers"].append(layer)
            fc1, fc2 = op(f"L{layer}.mb0.fwd.experts_fc1"), op(f"L{layer}.mb0.fwd.experts_fc2")
            d["experts"] = op(f"L{layer}.mb0.fwd.router")["n"]
            d["expert_splits"] = list(fc1["m"])
            d["moe_ffn"] = fc2["k"]
            d["topk"] = sum(fc1["m"]) // tokens
            if fc1["n"] != 2 * fc2["k"]:
                fail(f"{path}: op L{layer}.mb0.fwd.experts_fc1: n={fc1['n']} is not 2 x the expert FFN; "
                     "only gated (SwiGLU) experts are built")
            if any(n.startswith(f"L{layer}.mb0.fwd.shared") for n in ops):
                fail(f"{path}: layer {layer} has shared experts, which this script does not build")
        else:
            fc1 = op(f"L{layer}.mb0.fwd.fc1")
            if f"L{layer}.mb0.fwd.swiglu" not in ops:
                fail(f"{path}: layer {layer} has no swiglu op; only gated (SwiGLU) MLPs are built")
            d["ffn"] = fc1["n"] // 2
        if f"L{layer}.mb0.recompute.ln1" in ops:
            d["recompute_layers"].append(layer)
        elif any(n.startswith(f"L{layer}.mb0.recompute.") for n in ops):
            fail(f"{path}: layer {layer} recomputes part of the layer (selective recompute); only full-layer "
                 "recompute is built")
    optim_params = op("optim.adam")["params"]
    # The main-grad dtype: MCore's optimizer casts bf16 main grads to fp32 first (optim.main_grad_cast, 2 + 4 B a
    # param), then norms and clips the fp32 grads; a schedule without the cast norms the main grads themselves.
    if "optim.main_grad_cast" in ops:
        d["grad_bytes"] = op("optim.main_grad_cast")["bytes"] // optim_params - 4
    else:
        d["grad_bytes"] = op("optim.grad_norm")["bytes"] // optim_params
    d["megatron_optimizer_passes"] = "optim.main_param_copy" in ops
    d["schedule_params"] = optim_params
    d["schedule"] = {"path": path, "sha256": hashlib.sha256(raw).hexdigest(), "name": s.get("name"),
                     "meta": s.get("meta", {})}
    return d


def shapes_from_flags(a):
    for field in ("layers", "hidden", "heads", "kv_heads", "vocab", "seq"):
        if getattr(a, field) is None:
            fail(f"--{field.replace('_', '-')} is required without --schedule")
    tokens = a.mbs * a.seq
    experts = a.experts or 0
    if experts and (a.topk is None or a.moe_ffn is None):
        fail("--experts needs --topk and --moe-ffn")
    if experts and (tokens * a.topk) % experts:
        fail(f"--experts {experts}: mbs x seq x topk = {tokens * a.topk} tokens do not split evenly over the experts")
    if not experts and a.ffn is None:
        fail("--ffn is required for dense layers")
    layers = list(range(a.layers))
    return {
        "layers": a.layers, "hidden": a.hidden, "heads": a.heads, "kv_heads": a.kv_heads,
        "head_dim": a.head_dim or a.hidden // a.heads, "vocab": a.vocab, "seq": a.seq, "mbs": a.mbs,
        "micro_batches": a.micro_batches, "rope": not a.no_rope, "causal": True, "fp8": False, "ffn": a.ffn or 0,
        "experts": experts, "topk": a.topk or 0, "moe_ffn": a.moe_ffn or 0,
        "expert_splits": [tokens * (a.topk or 0) // experts] * experts if experts else [],
        "moe_layers": layers if experts else [], "recompute_layers": layers if a.recompute == "full" else [],
        "grad_bytes": 4 if a.main_grad_dtype == "fp32" else 2, "schedule_params": None, "schedule": None,
        "megatron_optimizer_passes": True,
    }
