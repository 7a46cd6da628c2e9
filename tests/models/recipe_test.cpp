// Recipe defaults (models/recipe.hpp) and size limits (models/limits.hpp).
#include "models/recipe.hpp"

#include "models/limits.hpp"
#include "models/model_spec.hpp"
#include "models/run_config.hpp"
#include "tests/catch.hpp"

using namespace twinstep;
using namespace twinstep::models;

namespace {

RunConfig layout(std::uint32_t world, std::uint32_t tp, std::uint32_t cp) {
  RunConfig c;
  c.world_size = world;
  c.tensor_model_parallel_size = tp;
  c.context_parallel_size = cp;
  c.global_batch_size = 64;
  return c;
}

}  // namespace

TEST_CASE("models::recipe: Bridge defaults for every knob the user did not set", "[recipe]") {
  RunConfig c = layout(8, 2, 1);
  CHECK(apply_recipe_defaults(c, {"global_batch_size"}).empty());
  CHECK(c.sequence_parallel);
  CHECK(c.use_distributed_optimizer);
  CHECK(c.grad_reduce_in_fp32);
  CHECK(c.cuda_device_max_connections == 1);
  CHECK(c.global_batch_size == 64);

  RunConfig no_tp = layout(8, 1, 1);
  (void)apply_recipe_defaults(no_tp, {"global_batch_size"});
  CHECK_FALSE(no_tp.sequence_parallel);
  CHECK(no_tp.cuda_device_max_connections == 8);  // RunConfig's default: only TP/CP > 1 need 1
  RunConfig cp = layout(8, 1, 2);
  (void)apply_recipe_defaults(cp, {"global_batch_size"});
  CHECK(cp.cuda_device_max_connections == 1);
}

TEST_CASE("models::recipe: what the user set is kept", "[recipe]") {
  RunConfig c = layout(8, 2, 1);
  c.sequence_parallel = false;
  c.use_distributed_optimizer = false;
  c.cuda_device_max_connections = 4;
  (void)apply_recipe_defaults(c, {"sequence_parallel", "use_distributed_optimizer", "grad_reduce_in_fp32",
                                  "cuda_device_max_connections", "global_batch_size"});
  CHECK_FALSE(c.sequence_parallel);
  CHECK_FALSE(c.use_distributed_optimizer);
  CHECK_FALSE(c.grad_reduce_in_fp32);
  CHECK(c.cuda_device_max_connections == 4);
}

TEST_CASE("models::recipe: grad_reduce_in_fp32 follows the model's published performance config", "[recipe]") {
  // Off where Bridge's performance scripts (or NVIDIA's published Nemotron run) turn it off, on for a model without
  // a published config; what the user set wins either way.
  for (const char* id : {"llama3-8b", "llama3-70b", "llama3.1-405b", "deepseek-v3", "qwen3-30b-a3b", "qwen3-235b-a22b",
                         "qwen3-next-80b-a3b", "nemotron4-340b"}) {
    INFO(id);
    const ModelSpec m = load_model(id);
    CHECK(m.has_recipe_grad_reduce_in_fp32);
    CHECK(m.recipe_source.find("grad") != std::string::npos);
    RunConfig c = layout(8, 2, 1);
    (void)apply_recipe_defaults(c, {"global_batch_size"}, m);
    CHECK_FALSE(c.grad_reduce_in_fp32);
    RunConfig set = layout(8, 2, 1);
    set.grad_reduce_in_fp32 = true;
    (void)apply_recipe_defaults(set, {"global_batch_size", "grad_reduce_in_fp32"}, m);
    CHECK(set.grad_reduce_in_fp32);
  }
  for (const char* id : {"gpt3-175b", "mixtral-8x7b"}) {
    INFO(id);
    const ModelSpec m = load_model(id);
    CHECK_FALSE(m.has_recipe_grad_reduce_in_fp32);
    RunConfig c = layout(8, 2, 1);
    (void)apply_recipe_defaults(c, {"global_batch_size"}, m);
    CHECK(c.grad_reduce_in_fp32);
  }
}

TEST_CASE("models::recipe: global_batch_size defaults to Megatron's micro_batch_size x DP, with a note", "[recipe]") {
  RunConfig c = layout(16, 2, 1);  // dp 8
  c.micro_batch_size = 2;
  const std::string note = apply_recipe_defaults(c, {});
  CHECK(c.global_batch_size == 16);
  CHECK(note.find("= 16") != std::string::npos);
}

TEST_CASE("models::limits: sequence length, micro-batch size and micro-batches per step are bounded", "[recipe]") {
  RunConfig c = layout(8, 1, 1);
  CHECK_NOTHROW(check_limits(c));
  c.seq_length = static_cast<std::uint32_t>(kMaxSeqLength) + 1;
  CHECK_THROWS_WITH(check_limits(c), twinstep_contains("seq_length (--seq) 16777217"));
  c = layout(8, 1, 1);
  c.global_batch_size = static_cast<std::uint32_t>(8 * kMaxMicroBatchesPerStep);
  CHECK_NOTHROW(check_limits(c));
  c.global_batch_size += 8;
  CHECK_THROWS_WITH(check_limits(c), twinstep_contains("micro-batches per step 1048577"));
}

TEST_CASE("models::limits: the op estimate is close to the lowered schedule's op count", "[recipe]") {
  const ModelSpec m = load_model("llama3-8b");
  RunConfig c = layout(4, 1, 1);
  c.pipeline_model_parallel_size = 2;
  c.tensor_model_parallel_size = 2;
  c.sequence_parallel = true;
  c.cuda_device_max_connections = 1;
  c.seq_length = 1024;
  c.global_batch_size = 24;  // 12 micro-batches on each of dp 2
  const double estimate = estimated_ops(m, c, LowerOptions{});
  const double actual = static_cast<double>(lower(m, c).schedule.ops.size());
  CHECK(estimate > 0.9 * actual);
  CHECK(estimate < 1.1 * actual);
}
