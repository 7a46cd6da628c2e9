"""The model of torch_reference.py: the parameters and one training micro-batch (forward and backward) with every op
inside a record_function range named as the schedule's op."""
import torch
from torch.autograd.profiler import record_function

from ref_layers import ELEMENTWISE, Checkpoint, Embedding, attention
from ref_linear import Linear
from ref_moe import Routing, moe_block
from ref_ranges import Segment, bwd_range

ROPE_BASE = 500000.0


class Model:
    """The step's parameters (bf16, seeded) and one micro-batch's forward and backward as the lowering builds it."""

    def __init__(self, d, device, fp8, sdpa):
        self.d, self.device, self.fp8, self.sdpa = d, device, fp8, sdpa
        self.params = []
        torch.manual_seed(1234)
        gen = None
        h, hd = d["hidden"], d["head_dim"]
        self.embedding = self.param(d["vocab"], h, gen=gen)
        self.layers = []
        for layer in range(d["layers"]):
            p = {"ln1": self.param(h, ones=True), "ln2": self.param(h, ones=True),
                 "qkv": self.param((d["heads"] + 2 * d["kv_heads"]) * hd, h, gen=gen),
                 "proj": self.param(h, d["heads"] * hd, gen=gen)}
            if layer in d["moe_layers"]:
                p["router"] = self.param(d["experts"], h, gen=gen)
                p["experts_fc1"] = self.param(d["experts"], 2 * d["moe_ffn"], h, gen=gen)
                p["experts_fc2"] = self.param(d["experts"], h, d["moe_ffn"], gen=gen)
            else:
                p["fc1"] = self.param(2 * d["ffn"], h, gen=gen)
                p["fc2"] = self.param(h, d["ffn"], gen=gen)
            self.layers.append(p)
        self.final_norm = self.param(h, ones=True)
        self.output = self.param(d["vocab"], h, gen=gen)
        pos = torch.arange(d["seq"], dtype=torch.float32)
        inv = ROPE_BASE ** (-torch.arange(0, hd, 2, dtype=torch.float32) / hd)
        ang = torch.outer(pos, inv).repeat(1, 2)  # [s, d]
        self.cos = ang.cos().to(device, torch.bfloat16)[None, :, None, :]
        self.sin = ang.sin().to(device, torch.bfloat16)[None, :, None, :]
        self.routing = Routing(d, device) if d["moe_layers"] else None
        self.count = sum(p.numel() for p in self.params)

    def param(self, *shape, ones=False, gen=None):
        t = torch.empty(*shape, device=self.device, dtype=torch.bfloat16)
        t = (t.fill_(1.0) if ones else t.normal_(0.0, 0.02)).requires_grad_(True)
        self.params.append(t)
        return t

    # -- one transformer layer, ops named prefix.<op> (prefix = Ll.mbm.fwd or Ll.mbm.recompute)
    def layer(self, x, li, mb, phase):
        d, p = self.d, self.layers[li]
        pre, bwd = f"L{li}.mb{mb}.{phase}", f"L{li}.mb{mb}.bwd"
        b, s, hq, hkv, hd = d["mbs"], d["seq"], d["heads"], d["kv_heads"], d["head_dim"]
        with record_function(pre + ".ln1"):
            # The norm's input also feeds the residual: autograd adds the two gradients of x after the norm's
            # backward, inside this marker's range (the lowering's ln1_residual_grad_add).
            xn = bwd_range(bwd + ".ln1_residual_grad_add", x)
            h = bwd_range(bwd + ".ln1_bwd", ELEMENTWISE["rms_norm"](xn, p["ln1"]))
        with record_function(pre + ".qkv"):
            qkv = Linear.apply(h, p["qkv"], bwd + ".qkv", self.fp8).view(b, s, hq + 2 * hkv, hd)
        q, k, v = qkv.split([hq, hkv, hkv], dim=2)
        if d["rope"]:
            with record_function(pre + ".rope"):
                q, k = ELEMENTWISE["rope"](q, k, self.cos, self.sin)
                q, k, v = bwd_range(bwd + ".rope_bwd", q, k, v)
        with record_function(pre + ".attn"):
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            o = attention(q, k, v, self.sdpa)
            o = bwd_range(bwd + ".attn_bwd", o.transpose(1, 2).reshape(b * s, hq * hd))
        with record_function(pre + ".proj"):
            o = Linear.apply(o, p["proj"], bwd + ".proj", self.fp8)
        with record_function(pre + ".residual1"):
            x = bwd_range(bwd + ".residual1_bwd", x + o)
        with record_function(pre + ".ln2"):
            xn = bwd_range(bwd + ".ln2_residual_grad_add", x)
            h = bwd_range(bwd + ".ln2_bwd", ELEMENTWISE["rms_norm"](xn, p["ln2"]))
        y = moe_block(h, p, d, self.routing, pre, bwd, self.fp8) if li in d["moe_layers"] else \
            self.mlp(h, p, pre, bwd)
        with record_function(pre + ".residual2"):
            return bwd_range(bwd + ".residual2_bwd", x + y)

    def mlp(self, h, p, pre, bwd):
        with record_function(pre + ".fc1"):
            u = Linear.apply(h, p["fc1"], bwd + ".fc1", self.fp8)
        with record_function(pre + ".swiglu"):
            u = bwd_range(bwd + ".swiglu_bwd", ELEMENTWISE["swiglu"](u))
        with record_function(pre + ".fc2"):
            return Linear.apply(u, p["fc2"], bwd + ".fc2", self.fp8)

    def forward_backward(self, ids, labels, mb):
        d = self.d
        pre, bwd = f"mb{mb}.fwd", f"mb{mb}.bwd"
        with record_function(pre + ".embedding"):
            x = Embedding.apply(ids, self.embedding, bwd + ".embedding_wgrad").view(-1, d["hidden"])
        for li in range(d["layers"]):
            if li in d["recompute_layers"]:
                x = Checkpoint.apply(lambda t, phase, li=li: self.layer(t, li, mb, phase), x)
            else:
                x = self.layer(x, li, mb, "fwd")
        with record_function(pre + ".final_norm"):
            x = bwd_range(bwd + ".final_norm_bwd", ELEMENTWISE["rms_norm"](x, self.final_norm))
        with record_function(pre + ".output"):
            logits = Linear.apply(x, self.output, bwd + ".output", False)
        with record_function(pre + ".cross_entropy"):
            loss = ELEMENTWISE["cross_entropy"](logits, labels.reshape(-1), d["micro_batches"])
        # The loss is the backward's root: a range opened by a node on it holds the whole loss backward (the loss
        # scaling, NLL and softmax backward, the cast of the fp32 logits' gradient to bf16) until the output layer's
        # dgrad closes it. Autograd runs the backward on its own thread, so the range must open inside the graph.
        loss = bwd_range(bwd + ".cross_entropy_bwd", loss)
        loss.backward()
        Segment.close()
        return loss
