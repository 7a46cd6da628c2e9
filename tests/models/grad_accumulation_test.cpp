// gradient_accumulation_fusion: with fp32 main grads every linear layer's wgrad GEMM (TP linears, the output layer,
// MoE expert grouped GEMMs; fp8 ones too) accumulates into the fp32 main grad (Gemm::accumulate_fp32), no forward or
// dgrad GEMM does; with bf16 main grads they accumulate into the bf16 main grad (Gemm::accumulate), and with the knob
// off nothing accumulates. With the knob off every linear wgrad
// GEMM is followed by DDP's main_grad.add_ (an elementwise op of closed-form bytes), and its temporary is counted.
// In both modes the gradients that plain torch ops compute (the router's linear, the embeddings' dense gradient)
// reach the main grad through that add.
#include "tests/support/grad_accumulation.hpp"

#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "tests/catch.hpp"
#include "tests/models/test_util.hpp"

using namespace twinstep::models;
using twinstep::models::test::config;
using twinstep::models::test::count_ops;
using twinstep::models::test::problems;
using twinstep::models::test::shrink;
using twinstep::testing::dense_tp2_case;
using twinstep::testing::for_fused_and_unfused;
using twinstep::testing::moe_ep2_case;
namespace sch = twinstep::schedule;

namespace {

/// Per GEMM role (by op name): how many GEMMs and how many of them accumulate.
struct Counts {
  int wgrad = 0, wgrad_acc = 0, other = 0, other_acc = 0;
  int wgrad_acc_out = 0, other_acc_out = 0;  ///< Accumulating into the output dtype (Gemm::accumulate).
};

Counts count(const sch::Schedule& s) {
  Counts c;
  for (const auto& op : s.ops) {
    const auto* comp = std::get_if<sch::Compute>(&op.body);
    if (comp == nullptr) continue;
    bool acc = false, acc_out = false;
    if (const auto* g = std::get_if<sch::Gemm>(&comp->kernel)) {
      acc = g->accumulate_fp32;
      acc_out = g->accumulate;
    } else if (const auto* gg = std::get_if<sch::GroupedGemm>(&comp->kernel)) {
      acc = gg->accumulate_fp32;
      acc_out = gg->accumulate;
    } else {
      continue;
    }
    const bool wgrad = op.name.ends_with("_wgrad");
    (wgrad ? c.wgrad : c.other) += 1;
    (wgrad ? c.wgrad_acc : c.other_acc) += acc ? 1 : 0;
    (wgrad ? c.wgrad_acc_out : c.other_acc_out) += acc_out ? 1 : 0;
  }
  return c;
}

/// Whether the first GEMM named `tail` accumulates.
bool accumulates(const sch::Schedule& s, const std::string& tail) {
  for (const auto& op : s.ops) {
    if (!op.name.ends_with(tail)) continue;
    const auto& k = std::get<sch::Compute>(op.body).kernel;
    if (const auto* g = std::get_if<sch::Gemm>(&k)) return g->accumulate_fp32;
    return std::get<sch::GroupedGemm>(k).accumulate_fp32;
  }
  FAIL("no op named *" << tail);
  return false;
}

}  // namespace

TEST_CASE("models::lower: gradient_accumulation_fusion with fp32 main grads accumulates every linear wgrad GEMM",
          "[lower]") {
  auto [m, c] = dense_tp2_case(1024, 1);
  c.grad_reduce_in_fp32 = true;
  CHECK(c.gradient_accumulation_fusion);  // Megatron's default
  const Lowered on = lower(m, c);
  REQUIRE(problems(on.schedule).empty());
  const Counts n = count(on.schedule);
  CHECK(n.wgrad > 0);
  CHECK(n.wgrad_acc == n.wgrad);  // qkv, proj, fc1, fc2 of each layer and the output layer
  CHECK(n.other > 0);
  CHECK(n.other_acc == 0);  // forward and dgrad GEMMs write their output
  CHECK(n.wgrad_acc_out + n.other_acc_out == 0);
  CHECK(accumulates(on.schedule, "output_wgrad"));
  // fp8: Transformer Engine hands the fp32 main grad to the fp8 wgrad GEMM as its accumulated output.
  c.dtype = sch::DType::kFP8;
  const Lowered fp8 = lower(m, c);
  CHECK(accumulates(fp8.schedule, "L0.mb0.bwd.fc2_wgrad"));
  const Counts n8 = count(fp8.schedule);
  CHECK(n8.wgrad_acc == n8.wgrad);
  CHECK(n8.other_acc == 0);
  c.dtype = sch::DType::kBF16;
  // bf16 main grads: the same wgrad GEMMs accumulate into the bf16 main grad (Apex wgrad_gemm_accum_fp16; TE's
  // accumulate=True), fp8 ones too, still no forward or dgrad GEMM.
  c.grad_reduce_in_fp32 = false;
  for (const auto dtype : {sch::DType::kBF16, sch::DType::kFP8}) {
    c.dtype = dtype;
    const Counts b = count(lower(m, c).schedule);
    CHECK(b.wgrad_acc == 0);
    CHECK(b.wgrad_acc_out == b.wgrad);
    CHECK(b.other_acc_out == 0);
  }
  c.dtype = sch::DType::kBF16;
  // The knob off: plain GEMMs, then the main_grad.add_ ops (the next test case).
  for (const bool fp32 : {true, false}) {
    c.grad_reduce_in_fp32 = fp32;
    c.gradient_accumulation_fusion = false;
    const Counts n_off = count(lower(m, c).schedule);
    CHECK(n_off.wgrad_acc + n_off.wgrad_acc_out == 0);
  }
  c.grad_reduce_in_fp32 = true;
  const Lowered off = lower(m, c);
  CHECK(count(off.schedule).wgrad_acc == 0);
  CHECK(off.schedule.ops.size() ==
        on.schedule.ops.size() + count_ops(off.schedule, "_main_grad_add") - count_ops(on.schedule, "_main_grad_add"));
}

TEST_CASE("models::lower: MoE expert wgrad grouped GEMMs accumulate into fp32 main grads", "[lower][moe]") {
  auto [m, c] = moe_ep2_case(256, 2);  // one micro-batch per data-parallel rank
  c.grad_reduce_in_fp32 = true;
  const Lowered low = lower(m, c);
  REQUIRE(problems(low.schedule).empty());
  CHECK(accumulates(low.schedule, "experts_fc1_wgrad"));
  CHECK(accumulates(low.schedule, "experts_fc2_wgrad"));
  CHECK_FALSE(accumulates(low.schedule, "router_wgrad"));  // a plain torch linear: autograd grad, then main_grad
}

namespace {

/// Weight elements of a wgrad GEMM: C[m, n] of a Gemm, one [n, k] weight per group of a GroupedGemm.
std::uint64_t weight_elements(const sch::Kernel& k) {
  if (const auto* g = std::get_if<sch::Gemm>(&k)) return g->m * g->n * g->batch;
  const auto& gg = std::get<sch::GroupedGemm>(k);
  return gg.m.size() * gg.n * gg.k;
}

/// Whether an op is a linear layer's wgrad GEMM (the router's is a torch op, the embeddings' elementwise).
bool linear_wgrad(const sch::Op& op) {
  if (!op.name.ends_with("_wgrad") || op.name.ends_with("router_wgrad")) return false;
  const auto& k = std::get<sch::Compute>(op.body).kernel;
  return std::holds_alternative<sch::Gemm>(k) || std::holds_alternative<sch::GroupedGemm>(k);
}

/// Checks every "<wgrad>_main_grad_add" op after a GEMM: it directly follows its wgrad GEMM on the same rank and
/// stream and moves `per_element` bytes per weight element. Returns (linear wgrad GEMMs, adds after linear wgrads).
std::pair<int, int> check_adds(const sch::Schedule& s, std::uint64_t per_element) {
  int gemms = 0, adds = 0;
  for (std::size_t i = 0; i < s.ops.size(); ++i) {
    const auto& op = s.ops[i];
    gemms += linear_wgrad(op) ? 1 : 0;
    if (!op.name.ends_with("_main_grad_add")) continue;
    const auto* ew = std::get_if<sch::Elementwise>(&std::get<sch::Compute>(op.body).kernel);
    REQUIRE(ew != nullptr);
    const sch::Op* gemm = nullptr;  // the previous op of the same rank and stream
    for (std::size_t j = i; j-- > 0;) {
      if (s.ops[j].rank == op.rank && s.ops[j].stream == op.stream) {
        gemm = &s.ops[j];
        break;
      }
    }
    REQUIRE(gemm != nullptr);
    CHECK(gemm->name + "_main_grad_add" == op.name);
    const auto& k = std::get<sch::Compute>(gemm->body).kernel;
    if (std::holds_alternative<sch::Elementwise>(k)) continue;  // an embedding's dense gradient: its own test
    CHECK(ew->bytes == weight_elements(k) * per_element);
    adds += linear_wgrad(*gemm) ? 1 : 0;
  }
  return {gemms, adds};
}

}  // namespace

TEST_CASE("models::lower: without gradient_accumulation_fusion each linear wgrad GEMM is followed by main_grad.add_",
          "[lower]") {
  const auto [m, c] = dense_tp2_case(1024, 1);
  for_fused_and_unfused(c, [&m = m](bool fp32, const RunConfig& fused, const RunConfig& unfused) {
    CAPTURE(fp32);
    const Lowered on = lower(m, fused);
    const Lowered off = lower(m, unfused);
    REQUIRE(problems(off.schedule).empty());
    CHECK(count_ops(on.schedule, "_main_grad_add") == count_ops(on.schedule, "embedding_wgrad_main_grad_add"));
    // Read main grad + read the bf16 gradient + write main grad: 4 + 2 + 4 (fp32 main grads) or 2 + 2 + 2 bytes.
    const std::uint64_t per = fp32 ? 10 : 6;
    const auto [gemms, adds] = check_adds(off.schedule, per);
    // 2 ranks x 1 micro-batch x (2 layers x qkv, proj, fc1, fc2 + the output layer).
    CHECK(gemms == 2 * (2 * 4 + 1));
    CHECK(adds == gemms);
    CHECK(off.schedule.ops.size() == on.schedule.ops.size() + static_cast<std::size_t>(adds));
    CHECK(count_ops(off.schedule, "_main_grad_add") ==
          static_cast<std::size_t>(adds) + count_ops(off.schedule, "embedding_wgrad_main_grad_add"));
    // Closed form for fc2 (TP 2: [h, f / 2]) and the output layer ([V / 2, h], V padded to 128256).
    auto bytes_of = [&](const std::string& name) {
      for (const auto& op : off.schedule.ops) {
        if (op.name == name) return std::get<sch::Elementwise>(std::get<sch::Compute>(op.body).kernel).bytes;
      }
      FAIL("no op " << name);
      return std::uint64_t{0};
    };
    CHECK(bytes_of("L1.mb0.bwd.fc2_wgrad_main_grad_add") == 4096ull * 14336 / 2 * per);
    CHECK(bytes_of("mb0.bwd.output_wgrad_main_grad_add") == 128256ull / 2 * 4096 * per);
    if (!fp32) return;  // bf16 main grads: the optimizer step's fp32 copy of the grads is the peak here
    // The temporary: during the layers' backward the largest linear weight (fc1: [2 f / 2, h]) in bf16, at the last
    // stage the output layer's, in its backward beside the logits' bf16 gradient (T = 1024 tokens x V / 2 logits: the
    // unfused loss's working memory), its dgrad output [T, h] and the SP reduce-scatter's [T / 2, h]. The embedding's
    // dense [V / 2, h] gradient at the first stage (the same rank here) comes after the micro-batch's backward has
    // freed its activations, which outweigh it: not at this peak.
    REQUIRE(on.peak_memory.peak_phase == "forward/backward");
    const double fc1 = 2.0 * 14336 / 2 * 4096 * 2, output = 128256.0 / 2 * 4096 * 2, embedding = output;
    const double loss = unfused.memory.loss_working_bytes_per_logit * 1024.0 * 128256 / 2;
    const double dgrad = 2.0 * 1024 * 4096 + 2.0 * 512 * 4096;
    REQUIRE(on.peak_memory.activations_bytes + loss > embedding);
    CHECK(on.peak_memory.transient_bytes == Approx(loss + dgrad));
    CHECK(off.peak_memory.transient_bytes == Approx(std::max(loss + dgrad + output, fc1)));
  });
}

TEST_CASE("models::lower: without gradient_accumulation_fusion MoE expert wgrads get their main_grad.add_",
          "[lower][moe]") {
  auto [m, c] = moe_ep2_case(256, 2);
  c.gradient_accumulation_fusion = false;
  const Lowered low = lower(m, c);
  REQUIRE(problems(low.schedule).empty());
  const auto [gemms, adds] = check_adds(low.schedule, 6);  // bf16 main grads (the recipe default)
  CHECK(adds == gemms);
  CHECK(count_ops(low.schedule, "experts_fc1_wgrad_main_grad_add") == 2 * 2);  // 2 ranks x 2 layers
  CHECK(count_ops(low.schedule, "router_wgrad_main_grad_add") == 2 * 2);       // a torch op: the hook's add
  // One grouped add over the rank's local experts: 128 / 2 experts x [h, f_e] (fc2) = 64 x 2048 x 768.
  for (const auto& op : low.schedule.ops) {
    if (op.name == "L0.mb0.bwd.experts_fc2_wgrad_main_grad_add") {
      CHECK(std::get<sch::Elementwise>(std::get<sch::Compute>(op.body).kernel).bytes == 64ull * 2048 * 768 * 6);
    }
  }
  // delay_wgrad_compute holds the wgrads for the W node: each held GEMM keeps its add.
  c.overlap_moe_expert_parallel_comm = true;
  c.delay_wgrad_compute = true;
  c.global_batch_size = 4;
  const Lowered held = lower(m, c);
  REQUIRE(problems(held.schedule).empty());
  const auto [held_gemms, held_adds] = check_adds(held.schedule, 6);
  CHECK(held_adds == held_gemms);
  CHECK(held_adds > 0);
}

namespace {

/// The bytes of the elementwise op named `name` (fails when there is none).
std::uint64_t elementwise_bytes(const sch::Schedule& s, const std::string& name) {
  for (const auto& op : s.ops) {
    if (op.name == name) return std::get<sch::Elementwise>(std::get<sch::Compute>(op.body).kernel).bytes;
  }
  FAIL("no op " << name);
  return 0;
}

/// The names of rank `rank`'s ops on the stream of the op named `first`, from it on, `n` of them.
std::vector<std::string> stream_run(const sch::Schedule& s, const std::string& first, std::size_t n) {
  std::vector<std::string> out;
  const sch::Op* head = nullptr;
  for (const auto& op : s.ops) {
    if (head == nullptr && op.name == first) head = &op;
    if (head != nullptr && op.rank == head->rank && op.stream == head->stream && out.size() < n) {
      out.push_back(op.name);
    }
  }
  return out;
}

}  // namespace

TEST_CASE("models::lower: the embedding's dense gradient is zero-filled, scattered into and added, in both modes",
          "[lower]") {
  const ModelSpec m = shrink(load_model("llama3-8b"), 4);
  RunConfig c = config(4, 2, 2);  // TP 2, PP 2: the embedding on the first stage only
  c.sequence_parallel = true;
  c.global_batch_size = 4;  // 4 micro-batches (DP 1)
  c.grad_reduce_in_fp32 = true;
  const std::uint64_t V_t = 128256 / 2, h = 4096;  // vocab rows per TP rank (padded vocab 128256)
  for (const bool fusion : {true, false}) {
    CAPTURE(fusion);
    c.gradient_accumulation_fusion = fusion;
    const Lowered low = lower(m, c);
    REQUIRE(problems(low.schedule).empty());
    // The zero-fill of the bf16 [V / TP, h] table, the token rows' scatter (T = 1024 tokens: read the gradient, read
    // and write the rows), DDP's add into the fp32 main grad (4 + 2 + 4 bytes per element), in stream order.
    CHECK(elementwise_bytes(low.schedule, "mb0.bwd.embedding_wgrad_zero") == V_t * h * 2);
    CHECK(elementwise_bytes(low.schedule, "mb0.bwd.embedding_wgrad") == 3ull * 1024 * 4096 * 2);
    CHECK(elementwise_bytes(low.schedule, "mb0.bwd.embedding_wgrad_main_grad_add") == V_t * h * 10);
    const std::vector<std::string> run = stream_run(low.schedule, "mb0.bwd.embedding_wgrad_zero", 3);
    CHECK(run == std::vector<std::string>{"mb0.bwd.embedding_wgrad_zero", "mb0.bwd.embedding_wgrad",
                                          "mb0.bwd.embedding_wgrad_main_grad_add"});
    // Two first-stage ranks (TP 2) x 4 micro-batches (GBS 4 over DP 1); none on the last stage.
    CHECK(count_ops(low.schedule, "embedding_wgrad_main_grad_add") == 2 * 4);
    // Memory: the first stage (rank 0) holds the bf16 table gradient until the add; nothing else transient there
    // with the fusion on, beside the largest linear wgrad (fc1, [2 f / 2, h] in bf16) without it.
    const double table = static_cast<double>(V_t * h * 2), fc1 = 2.0 * 14336 / 2 * 4096 * 2;
    CHECK(low.memory_per_rank[0].transient_bytes == Approx(fusion ? table : std::max(table, fc1)));
  }
  // A learned position embedding (GPT-3: [2048, h] positions) has its own dense gradient and add.
  const ModelSpec gpt = shrink(load_model("gpt3-175b"), 2);
  c = config(1, 1, 1);
  c.grad_reduce_in_fp32 = false;  // bf16 main grads: 2 + 2 + 2 bytes per element
  const Lowered low = lower(gpt, c);
  REQUIRE(problems(low.schedule).empty());
  CHECK(elementwise_bytes(low.schedule, "mb0.bwd.position_embedding_wgrad_zero") == 2048ull * 12288 * 2);
  CHECK(elementwise_bytes(low.schedule, "mb0.bwd.position_embedding_wgrad_main_grad_add") == 2048ull * 12288 * 6);
}

TEST_CASE("models::lower: the router's weight gradient is added into the main grad in both modes", "[lower][moe]") {
  auto [m, c] = moe_ep2_case(256, 2);
  for (const bool fusion : {true, false}) {
    CAPTURE(fusion);
    c.gradient_accumulation_fusion = fusion;
    const Lowered low = lower(m, c);
    REQUIRE(problems(low.schedule).empty());
    CHECK(count_ops(low.schedule, "router_wgrad_main_grad_add") == 2 * 2);  // 2 ranks x 2 layers
    // [E, h] = 128 x 2048, bf16 main grads (the recipe's): 6 bytes per element; right after the router's wgrad.
    CHECK(elementwise_bytes(low.schedule, "L1.mb0.bwd.router_wgrad_main_grad_add") == 128ull * 2048 * 6);
    CHECK(stream_run(low.schedule, "L1.mb0.bwd.router_wgrad", 2) ==
          std::vector<std::string>{"L1.mb0.bwd.router_wgrad", "L1.mb0.bwd.router_wgrad_main_grad_add"});
  }
}
