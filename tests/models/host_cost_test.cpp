// The framework host costs the lowering emits: the autograd engine's backward time per node, with the nodes counted
// from the forward ops the lowering emitted (one per op, one per torch.autograd.Function such as a TE module).
#include <string>

#include "tests/catch.hpp"
#include "tests/models/test_util.hpp"

using namespace twinstep;
using namespace twinstep::models;

namespace {

/// Duration of the host op named `name` on rank 0 (0 if absent).
Nanos host_ns(const schedule::Schedule& s, const std::string& name) {
  for (const auto& op : s.ops) {
    if (op.rank == 0 && op.name == name) return std::get<schedule::Host>(op.body).duration_ns;
  }
  return 0;
}

/// GPU ops of `layer`, micro-batch 0, in the backward (dgrad and wgrad) on rank 0: what its backward region launches.
Nanos backward_gpu_ops(const schedule::Schedule& s, std::int32_t layer) {
  Nanos n = 0;
  for (const auto& op : s.ops) {
    const bool gpu =
        !std::holds_alternative<schedule::Host>(op.body) && !std::holds_alternative<schedule::HostSync>(op.body);
    const bool bwd = op.tags.phase == schedule::Phase::kBwd || op.tags.phase == schedule::Phase::kWgrad;
    if (op.rank == 0 && gpu && bwd && op.tags.layer == layer && op.tags.microbatch == 0) ++n;
  }
  return n;
}

}  // namespace

TEST_CASE("models::lower: a dense layer's backward host time is per autograd node of its forward + per kernel",
          "[models][host]") {
  // Llama-3 layer forward: LayerNormLinear qkv, RoPE, core attention, Linear proj, residual add (5 nodes);
  // LayerNormLinear fc1, SwiGLU, Linear fc2, residual add (4 nodes). TP2 + SP adds collectives inside the TE modules:
  // more kernels in the backward, no more nodes.
  const ModelSpec m = test::shrink(load_model("llama3-8b"), 1);
  for (const std::uint32_t tp : {1u, 2u}) {
    RunConfig c = test::config(tp, tp, 1);
    c.sequence_parallel = tp > 1;
    c.host.per_autograd_node_ns = 1000;
    c.host.per_kernel_backward_ns = 1;
    const Lowered low = lower(m, c);
    const Nanos kernels = backward_gpu_ops(low.schedule, 0);
    CHECK(kernels > 9);
    CHECK(host_ns(low.schedule, "L0.mb0.bwd.host_bwd") == 9 * 1000 + kernels);
  }
}

TEST_CASE("models::lower: an MoE layer's autograd nodes, plain and split over the EP-overlap schedule's nodes",
          "[models][host][moe]") {
  // Qwen3-30B-A3B layer at EP2 (alltoall), MCore's eager router and permute (moe_eager.hpp): attention 5 nodes;
  // pre-MLP norm, router GEMM, the eager router's 9 (top-k, softmax, probs scatter; aux loss: softmax, probs.sum, mul,
  // sum, scale, MoEAuxLossAutoScaler; the routing maps and counts are integer/bool: none), permute's 3 (probs
  // transposed, probs masked_select, tokens index_select; the token indices are integers; the count all-gather and
  // its D2H copy too) (14); token and probs all-to-all (2); sort of tokens and probs (2), grouped fc1, activation,
  // grouped fc2, unsort (6); combine all-to-all, unpermute's scatter_add_, residual add (3): 30.
  const ModelSpec m = test::moe_model("qwen3-30b-a3b", 2);
  RunConfig c = test::config(2, 1, 1);
  c.seq_length = 256;
  c.expert_model_parallel_size = 2;
  c.cuda_device_max_connections = 32;
  c.global_batch_size = 4;
  c.host.per_autograd_node_ns = 1000;  // no per-kernel cost: the host ops are the nodes alone
  const Lowered plain = lower(m, c);
  CHECK(host_ns(plain.schedule, "L1.mb0.bwd.host_bwd") == 30 * 1000);
  CHECK(host_ns(plain.schedule, "L0.mb1.bwd.host_bwd") == 30 * 1000);
  // The combined 1F1B schedule runs the same nodes in its backward nodes C, M, D, A (W: backward_dw, none).
  c.overlap_moe_expert_parallel_comm = true;
  c.delay_wgrad_compute = true;
  const Lowered overlap = lower(m, c);
  for (const char* mb : {"mb0", "mb1"}) {
    const std::string p = std::string("L0.") + mb + ".bwd.host_bwd_";
    CHECK(host_ns(overlap.schedule, p + "C") == 3 * 1000);
    CHECK(host_ns(overlap.schedule, p + "M") == 6 * 1000);
    CHECK(host_ns(overlap.schedule, p + "D") == 2 * 1000);
    CHECK(host_ns(overlap.schedule, p + "A") == 19 * 1000);
    CHECK(host_ns(overlap.schedule, p + "WA") == 0);
  }
}
