// The backward of a layer's input norms as Megatron with Transformer Engine runs it (docs/megatron-kernels.md,
// sections 2 and 3): TE's fused norm backward (x, dy, rstd and gamma read; dx and dgamma written), then autograd's
// add of the skip connection's gradient into the norm input's gradient, after ln2 and after ln1 of every layer, dense
// and MoE; the final norm has no skip connection. Bytes in closed form.
#include <cstdint>
#include <string>
#include <variant>
#include <vector>

#include "tests/catch.hpp"
#include "tests/models/test_util.hpp"

using namespace twinstep::models;
using twinstep::models::test::config;
using twinstep::models::test::count_ops;
using twinstep::models::test::moe_model;
using twinstep::models::test::problems;
using twinstep::models::test::shrink;
namespace sch = twinstep::schedule;

namespace {

/// Rank 0's elementwise compute ops in issue order: name and bytes.
std::vector<std::pair<std::string, std::uint64_t>> compute_ops(const sch::Schedule& s) {
  std::vector<std::pair<std::string, std::uint64_t>> out;
  for (const auto& op : s.ops) {
    const auto* c = std::get_if<sch::Compute>(&op.body);
    if (op.rank != 0 || c == nullptr) continue;
    const auto* e = std::get_if<sch::Elementwise>(&c->kernel);
    out.emplace_back(op.name, e != nullptr ? e->bytes : 0);
  }
  return out;
}

/// Bytes of the op named `name` and of the compute op right after it on rank 0 (its name in `next`).
std::uint64_t bytes_then(const sch::Schedule& s, const std::string& name, std::string* next,
                         std::uint64_t* next_bytes) {
  const auto ops = compute_ops(s);
  for (std::size_t i = 0; i + 1 < ops.size(); ++i) {
    if (ops[i].first != name) continue;
    *next = ops[i + 1].first;
    *next_bytes = ops[i + 1].second;
    return ops[i].second;
  }
  FAIL("no op " << name);
  return 0;
}

}  // namespace

TEST_CASE("models::lower: a dense layer's norm backward and the skip gradient's add", "[lower][norm]") {
  const ModelSpec m = shrink(load_model("llama3-8b"), 2);
  for (const std::uint32_t tp : {1U, 2U}) {
    CAPTURE(tp);
    RunConfig c = config(tp, tp, 1);
    c.seq_length = 2048;
    c.sequence_parallel = tp > 1;
    const Lowered l = lower(m, c);
    REQUIRE(problems(l.schedule).empty());
    const std::uint64_t rows = 2048 / tp, h = 4096;
    // x, dy read and dx written (bf16), rstd read (fp32 per row), gamma read and dgamma written (bf16).
    const std::uint64_t norm = 3 * 2 * rows * h + 4 * rows + 2 * 2 * h;
    const std::uint64_t add = 3 * 2 * rows * h;
    for (const char* ln : {"ln1", "ln2"}) {
      for (const char* layer : {"L0", "L1"}) {
        CAPTURE(ln, layer);
        std::string next;
        std::uint64_t next_bytes = 0;
        CHECK(bytes_then(l.schedule, std::string(layer) + ".mb0.bwd." + ln + "_bwd", &next, &next_bytes) == norm);
        CHECK(next == std::string(layer) + ".mb0.bwd." + ln + "_residual_grad_add");
        CHECK(next_bytes == add);
      }
    }
    // Two adds per layer and micro-batch; the final norm has none after it.
    CHECK(count_ops(l.schedule, "residual_grad_add") == 2 * 2 * l.schedule.ranks.size() * c.global_batch_size);
    std::string next;
    std::uint64_t next_bytes = 0;
    CHECK(bytes_then(l.schedule, "mb0.bwd.final_norm_bwd", &next, &next_bytes) == norm);
    CHECK(next.find("residual_grad_add") == std::string::npos);
  }
}

TEST_CASE("models::lower: an MoE layer's pre-MLP norm backward and the skip gradient's add", "[lower][norm][moe]") {
  const ModelSpec m = moe_model("qwen3-30b-a3b", 2);
  RunConfig c = config(2, 1, 1);
  c.expert_model_parallel_size = 2;
  c.global_batch_size = 2;
  c.seq_length = 2048;
  const Lowered l = lower(m, c);
  REQUIRE(problems(l.schedule).empty());
  const std::uint64_t rows = 2048, h = m.hidden_size;
  std::string next;
  std::uint64_t next_bytes = 0;
  CHECK(bytes_then(l.schedule, "L1.mb0.bwd.ln2_bwd", &next, &next_bytes) == 3 * 2 * rows * h + 4 * rows + 4 * h);
  CHECK(next == "L1.mb0.bwd.ln2_residual_grad_add");
  CHECK(next_bytes == 3 * 2 * rows * h);
  // The residual add's own backward passes the gradient on: no kernel of its own.
  CHECK(count_ops(l.schedule, "residual2_bwd") == 0);
}

TEST_CASE("models::lower: LayerNorm's backward also reads the mean and writes dbeta", "[lower][norm]") {
  ModelSpec m = shrink(load_model("llama3-8b"), 1);
  m.normalization = "LayerNorm";
  RunConfig c = config(1, 1, 1);
  c.seq_length = 2048;
  const Lowered l = lower(m, c);
  const std::uint64_t rows = 2048, h = 4096;
  std::string next;
  std::uint64_t next_bytes = 0;
  CHECK(bytes_then(l.schedule, "L0.mb0.bwd.ln2_bwd", &next, &next_bytes) ==
        3 * 2 * rows * h + 2 * 4 * rows + 3 * 2 * h);
}
