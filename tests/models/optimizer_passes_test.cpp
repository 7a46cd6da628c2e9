// MCore's MixedPrecisionOptimizer.step() as the lowering emits it on one rank: with bf16 main grads the cast into
// fp32 grads first (2 + 4 B a param), the grad norm (4 B) and the clipping (read + write, 8 B) on those fp32 grads,
// the fused Adam pass, then the copy of the fp32 main params into the bf16 working params (4 + 2 B); with fp32 main
// grads no cast; with lower-precision optimizer states (the precision-aware optimizer) neither the cast nor the copy.
// Bytes in closed form from the Adam op's parameter count; with the distributed optimizer the same on the shard.
#include <cstdint>
#include <string>
#include <variant>
#include <vector>

#include "tests/catch.hpp"
#include "tests/models/test_util.hpp"

using namespace twinstep::models;
using twinstep::models::test::config;
using twinstep::models::test::problems;
using twinstep::models::test::shrink;
namespace sch = twinstep::schedule;

namespace {

struct OptimOps {
  std::vector<std::string> names;  // the optim.* compute ops of rank 0, in issue order
  std::uint64_t params = 0;        // the Adam op's
  std::uint64_t cast = 0, norm = 0, clip = 0, copy = 0;
};

OptimOps optim_ops(const sch::Schedule& s) {
  OptimOps o;
  for (const auto& op : s.ops) {
    const auto* c = std::get_if<sch::Compute>(&op.body);
    if (op.rank != 0 || c == nullptr || !op.name.starts_with("optim.")) continue;
    o.names.push_back(op.name);
    if (const auto* a = std::get_if<sch::Optimizer>(&c->kernel)) o.params = a->params;
    const auto* e = std::get_if<sch::Elementwise>(&c->kernel);
    if (e == nullptr) continue;
    if (op.name == "optim.main_grad_cast") o.cast = e->bytes;
    if (op.name == "optim.grad_norm") o.norm = e->bytes;
    if (op.name == "optim.clip_grads") o.clip = e->bytes;
    if (op.name == "optim.main_param_copy") o.copy = e->bytes;
  }
  return o;
}

OptimOps lowered(const RunConfig& c) {
  const Lowered l = lower(shrink(load_model("llama3-8b"), 2), c);
  REQUIRE(problems(l.schedule).empty());
  return optim_ops(l.schedule);
}

}  // namespace

TEST_CASE("models::lower: the optimizer step runs MCore's passes around the fused Adam", "[lower][optimizer]") {
  RunConfig c = config(1, 1, 1);
  SECTION("bf16 main grads: cast, norm and clip on fp32 grads, Adam, copy into the bf16 params") {
    const OptimOps o = lowered(c);
    REQUIRE(o.params > 0);
    CHECK(o.names == std::vector<std::string>{"optim.main_grad_cast", "optim.grad_norm", "optim.clip_grads",
                                              "optim.adam", "optim.main_param_copy"});
    CHECK(o.cast == o.params * (2 + 4));
    CHECK(o.norm == o.params * 4);
    CHECK(o.clip == o.params * 8);
    CHECK(o.copy == o.params * (4 + 2));
  }
  SECTION("fp32 main grads: no cast (`.float()` of an fp32 grad is the grad itself)") {
    c.grad_reduce_in_fp32 = true;
    const OptimOps o = lowered(c);
    CHECK(o.names ==
          std::vector<std::string>{"optim.grad_norm", "optim.clip_grads", "optim.adam", "optim.main_param_copy"});
    CHECK(o.norm == o.params * 4);
    CHECK(o.copy == o.params * (4 + 2));
  }
  SECTION("precision-aware optimizer (bf16 moments): the fused Adam writes the working params itself") {
    c.exp_avg_dtype = sch::DType::kBF16;
    const OptimOps o = lowered(c);
    CHECK(o.names == std::vector<std::string>{"optim.grad_norm", "optim.clip_grads", "optim.adam"});
    CHECK(o.norm == o.params * 2);
    CHECK(o.clip == o.params * 4);
  }
  SECTION("distributed optimizer over DP 2: every pass on this rank's shard") {
    RunConfig d = config(2, 1, 1);
    d.use_distributed_optimizer = true;
    d.global_batch_size = 2;
    const OptimOps o = lowered(d);
    const OptimOps whole = lowered(c);
    CHECK(o.params * 2 == whole.params);
    CHECK(o.cast == o.params * 6);
    CHECK(o.copy == o.params * 6);
  }
}
