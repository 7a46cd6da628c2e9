// --dtype fp8 lowering (Transformer Engine's HYBRID recipe): every linear layer's GEMMs in fp8 with e4m3 forward
// and an e5m2 gradient operand in dgrad/wgrad, one cast kernel before each forward and dgrad GEMM (tensorwise
// scaling reads the input once more), attention, the output layer and the router in bf16, the same FLOPs as bf16,
// no warning, and fp8_recipe values it does not model refused.
#include <string>
#include <variant>

#include "tests/catch.hpp"
#include "tests/models/test_util.hpp"

using namespace twinstep::models;
using twinstep::models::test::config;
using twinstep::models::test::count_ops;
using twinstep::models::test::problems;
using twinstep::models::test::shrink;
namespace sch = twinstep::schedule;

namespace {

/// The kernel of the first compute op whose name ends with `name` (rank 0's: ranks come in order).
const sch::Kernel* kernel_of(const sch::Schedule& s, const std::string& name) {
  for (const auto& op : s.ops) {
    if (!op.name.ends_with(name)) continue;
    if (const auto* c = std::get_if<sch::Compute>(&op.body)) return &c->kernel;
  }
  return nullptr;
}

std::uint64_t elementwise_bytes(const sch::Schedule& s, const std::string& name) {
  const auto* k = kernel_of(s, name);
  return k != nullptr && std::holds_alternative<sch::Elementwise>(*k) ? std::get<sch::Elementwise>(*k).bytes : 0;
}

}  // namespace

TEST_CASE("models::lower: --dtype fp8 runs linear layers as fp8 GEMMs (e4m3 forward, e5m2 gradients)", "[lower][fp8]") {
  const ModelSpec m = shrink(load_model("llama3-8b"), 2);
  RunConfig c = config(2, 2, 1);
  c.sequence_parallel = true;
  const Lowered bf16 = lower(m, c);
  c.dtype = sch::DType::kFP8;
  const Lowered fp8 = lower(m, c);
  INFO(problems(fp8.schedule));
  REQUIRE(problems(fp8.schedule).empty());
  for (const auto& w : fp8.warnings) CHECK(w.find("fp8") == std::string::npos);
  auto gemm = [&](const std::string& name) {
    const auto* k = kernel_of(fp8.schedule, name);
    REQUIRE(k != nullptr);
    REQUIRE(std::holds_alternative<sch::Gemm>(*k));
    return std::get<sch::Gemm>(*k);
  };
  for (const char* fwd : {"qkv", "proj", "fc1", "fc2"}) {
    const sch::Gemm g = gemm(std::string("L0.mb0.fwd.") + fwd);
    CHECK(g.dtype == sch::DType::kFP8);
    CHECK(g.a_format == sch::Fp8Format::kE4M3);
    CHECK(g.b_format == sch::Fp8Format::kE4M3);
    CHECK(count_ops(fp8.schedule, std::string("L0.mb0.fwd.") + fwd + "_fp8_cast") >= 1);
  }
  for (const char* bwd : {"fc2_dgrad", "fc2_wgrad", "qkv_dgrad", "qkv_wgrad"}) {
    const sch::Gemm g = gemm(std::string("L0.mb0.bwd.") + bwd);
    CHECK(g.dtype == sch::DType::kFP8);
    CHECK(g.a_format == sch::Fp8Format::kE5M2);  // the gradient
    CHECK(g.b_format == sch::Fp8Format::kE4M3);
  }
  CHECK(count_ops(fp8.schedule, "wgrad_fp8_cast") == 0);  // wgrad reads the transposed copies of the casts
  CHECK(gemm("fwd.output").dtype == sch::DType::kBF16);
  CHECK(gemm("bwd.output_dgrad").dtype == sch::DType::kBF16);
  const auto* at = kernel_of(fp8.schedule, "L0.mb0.fwd.attn");
  REQUIRE(at != nullptr);
  CHECK(std::get<sch::Attention>(*at).dtype == sch::DType::kBF16);
  // The same GEMM FLOPs as bf16 (the casts are bandwidth kernels).
  CHECK(twinstep::models::test::total_flops(fp8.schedule) ==
        Approx(twinstep::models::test::total_flops(bf16.schedule)).epsilon(1e-9));
  CHECK(count_ops(bf16.schedule, "_fp8_cast") == 0);
  // fc1's forward cast: tokens x hidden input elements and, on the step's first micro-batch, the rank's fc1 weight
  // (hidden x 2 ffn / tp), bf16 read + e4m3 row-wise and column-wise written (2 + 1 + 1 B).
  const std::uint64_t fc1_in = c.seq_length * m.hidden_size;
  const std::uint64_t fc1_w = m.hidden_size * 2 * m.ffn_hidden_size / 2;
  CHECK(elementwise_bytes(fp8.schedule, "L0.mb0.fwd.fc1_fp8_cast") == (fc1_in + fc1_w) * 4);
  // Tensorwise (current) scaling reads the input once more for its amax.
  c.fp8_recipe = twinstep::models::Fp8Recipe::kTensorwise;
  const Lowered cur = lower(m, c);
  CHECK(elementwise_bytes(cur.schedule, "L0.mb0.fwd.fc1_fp8_cast") == (fc1_in + fc1_w) * 6);
  // A recipe Megatron has but the lowering does not model is refused where it is read.
  CHECK_THROWS_WITH(twinstep::models::parse_fp8_recipe("mxfp8", "fp8_recipe"), twinstep_contains("mxfp8"));
}

TEST_CASE("models::lower: --dtype fp8 casts each linear weight once a step, on the first micro-batch's forward",
          "[lower][fp8]") {
  // Transformer Engine quantizes a bf16 weight when is_first_microbatch (Megatron sets it per step) and reuses the
  // fp8 copy for later micro-batches, recomputation and backward; fp8 primary weights (fp8_param_gather) need none.
  const ModelSpec m = shrink(load_model("llama3-8b"), 2);
  RunConfig c = config(1, 1, 1);
  c.global_batch_size = 2;  // two micro-batches
  c.dtype = sch::DType::kFP8;
  c.recompute_granularity = RecomputeGranularity::kFull;
  c.recompute_num_layers = 1;
  const Lowered l = lower(m, c);
  REQUIRE(problems(l.schedule).empty());
  const std::uint64_t in = c.seq_length * m.hidden_size;  // qkv's input
  const std::uint64_t w = m.hidden_size * (m.hidden_size + 2 * std::uint64_t{m.kv_channels} * m.num_query_groups);
  CHECK(elementwise_bytes(l.schedule, "L0.mb0.fwd.qkv_fp8_cast") == (in + w) * 4);
  CHECK(elementwise_bytes(l.schedule, "L0.mb1.fwd.qkv_fp8_cast") == in * 4);
  CHECK(elementwise_bytes(l.schedule, "L0.mb0.recompute.qkv_fp8_cast") == in * 4);
  CHECK(elementwise_bytes(l.schedule, "L0.mb0.bwd.qkv_dgrad_fp8_cast") ==
        elementwise_bytes(l.schedule, "L0.mb1.bwd.qkv_dgrad_fp8_cast"));
}
