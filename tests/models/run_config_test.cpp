// Run config JSON (round trip, unknown fields named) and overlap variants.
#include "models/run_config.hpp"

#include <string_view>
#include <utility>
#include <vector>

#include "common/enum_names.hpp"
#include "common/error.hpp"
#include "tests/catch.hpp"
#include "tests/support/run_configs.hpp"

using namespace twinstep;
using namespace twinstep::models;

TEST_CASE("models::run_config: JSON round trip with Megatron names", "[run_config]") {
  RunConfig c;
  c.world_size = 64;
  c.tensor_model_parallel_size = 4;
  c.pipeline_model_parallel_size = 4;
  c.virtual_pipeline_model_parallel_size = 5;
  c.context_parallel_size = 2;
  c.sequence_parallel = true;
  c.recompute_granularity = models::RecomputeGranularity::kFull;
  c.recompute_num_layers = 3;
  c.bucket_size = 134217728;
  c.cp_comm_type = models::CpCommType::kA2a;
  c.hierarchical_context_parallel_sizes = {2, 4};
  c.host.per_module_call_ns = 1500;
  c.exp_avg_dtype = schedule::DType::kBF16;
  c.exp_avg_sq_dtype = schedule::DType::kFP8;
  const std::string text = run_config_to_json(c);
  RunConfig back = run_config_from_json(text, "c.json");
  CHECK(run_config_to_json(back) == text);
  CHECK(back.virtual_pipeline_model_parallel_size == 5);
  CHECK(back.host.per_module_call_ns == 1500);
  CHECK(back.hierarchical_context_parallel_sizes == std::vector<std::uint32_t>{2, 4});
  CHECK(back.main_params_dtype == schedule::DType::kFP32);
  CHECK(back.exp_avg_dtype == schedule::DType::kBF16);
  CHECK(back.exp_avg_sq_dtype == schedule::DType::kFP8);
  CHECK(text.find("\"exp_avg_dtype\": \"bf16\"") != std::string::npos);
}

TEST_CASE("models::run_config: optimizer state dtypes take fp32, fp16, bf16, fp8 and name the field otherwise",
          "[run_config]") {
  CHECK(parse_optimizer_state_dtype("fp32", "f") == schedule::DType::kFP32);
  CHECK(parse_optimizer_state_dtype("fp16", "f") == schedule::DType::kFP16);
  CHECK(parse_optimizer_state_dtype("bf16", "f") == schedule::DType::kBF16);
  CHECK(parse_optimizer_state_dtype("fp8", "f") == schedule::DType::kFP8);
  CHECK_THROWS_AS(parse_optimizer_state_dtype("int32", "f"), ParseError);  // a schedule dtype, not a state dtype
  CHECK_THROWS_WITH(run_config_from_json(R"({"main_params_dtype": "float32"})", "r.json"),
                    twinstep_contains("r.json: /main_params_dtype: unknown value \"float32\" (use one of: "
                                      "\"fp32\", \"fp16\", \"bf16\", \"fp8\")"));
}

TEST_CASE("models::run_config: unknown fields and wrong types are errors naming the field", "[run_config]") {
  CHECK_THROWS_WITH(run_config_from_json(R"({"tensor_parallel_size": 2})", "r.json"),
                    twinstep_contains("r.json: /tensor_parallel_size: unknown field") &&
                        twinstep_contains("did you mean \"tensor_model_parallel_size\"?"));
  CHECK_THROWS_WITH(run_config_from_json(R"({"host": {"launch_ns": 2}})", "r.json"),
                    twinstep_contains("/host/launch_ns: unknown field \"launch_ns\" (accepted here: "));
  CHECK_THROWS_WITH(run_config_from_json(R"({"sequence_parallel": "yes"})", "r.json"),
                    twinstep_contains("/sequence_parallel: wrong type"));
  CHECK_THROWS_WITH(run_config_from_json(R"({"dtype": "int3"})", "r.json"), twinstep_contains("/dtype"));
}

namespace {

/// Each (spelling, enumerator) pair parses one way and prints the other.
template <typename E>
void check_names(const std::vector<std::pair<const char*, E>>& names, E (*parse)(std::string_view, std::string_view)) {
  for (const auto& [name, value] : names) {
    CAPTURE(name);
    CHECK(parse(name, "f") == value);
    CHECK(to_string(value) == name);
  }
}

}  // namespace

TEST_CASE("models::run_config: every mode name parses to its enumerator and prints back", "[run_config]") {
  // The Megatron spellings, in the order of each enum.
  check_names<RecomputeGranularity>({{"none", RecomputeGranularity::kNone},
                                     {"selective", RecomputeGranularity::kSelective},
                                     {"full", RecomputeGranularity::kFull}},
                                    parse_recompute_granularity);
  check_names<RecomputeMethod>({{"uniform", RecomputeMethod::kUniform}, {"block", RecomputeMethod::kBlock}},
                               parse_recompute_method);
  check_names<CpCommType>({{"p2p", CpCommType::kP2p},
                           {"all_gather", CpCommType::kAllGather},
                           {"a2a", CpCommType::kA2a},
                           {"a2a+p2p", CpCommType::kA2aP2p}},
                          parse_cp_comm_type);
  check_names<TokenDispatcher>({{"alltoall", TokenDispatcher::kAllToAll},
                                {"allgather", TokenDispatcher::kAllGather},
                                {"flex", TokenDispatcher::kFlex}},
                               parse_token_dispatcher);
}

TEST_CASE("models::run_config: an unknown mode name is a ParseError naming the field and the accepted names",
          "[run_config]") {
  try {
    (void)parse_cp_comm_type("ring", "--cp-comm-type");
    FAIL("expected a ParseError");
  } catch (const ParseError& e) {
    CHECK(std::string(e.what()) ==
          "--cp-comm-type: unknown value \"ring\" (use one of: \"p2p\", \"all_gather\", \"a2a\", \"a2a+p2p\")");
    CHECK(e.file() == "--cp-comm-type");
  }
  CHECK_THROWS_AS(parse_token_dispatcher("AllToAll", "d"), ParseError);  // spellings are exact
  CHECK_THROWS_AS(parse_recompute_granularity("", "g"), ParseError);
  CHECK_THROWS_AS(parse_recompute_method("uniform ", "m"), ParseError);
  // In a config file the error names the file and the field's pointer once.
  CHECK_THROWS_WITH(run_config_from_json(R"({"moe_token_dispatcher_type": "deepep"})", "r.json"),
                    twinstep_contains("r.json: /moe_token_dispatcher_type: unknown value \"deepep\" (use one of: "
                                      "\"alltoall\", \"allgather\", \"flex\")"));
  CHECK_THROWS_WITH(run_config_from_json(R"({"recompute_method": 3})", "r.json"),
                    twinstep_contains("r.json: /recompute_method: wrong type"));
}

TEST_CASE("models::run_config: derived dp", "[run_config]") {
  RunConfig c;
  c.world_size = 16;
  c.tensor_model_parallel_size = 2;
  c.pipeline_model_parallel_size = 2;
  CHECK(derived_dp(c) == 4);
  c.data_parallel_size = 8;
  CHECK_THROWS_WITH(derived_dp(c), twinstep_contains("data_parallel_size 8 disagrees"));
}

TEST_CASE("models::run_config: overlap variants map to Megatron knobs", "[run_config]") {
  RunConfig base;
  base.use_distributed_optimizer = true;
  RunConfig none = testing::with_overlap(base, "none");
  CHECK_FALSE(none.overlap_grad_reduce);
  CHECK_FALSE(none.tp_comm_overlap);
  CHECK(none.cp_comm_type == models::CpCommType::kAllGather);
  RunConfig dp_tp = testing::with_overlap(base, "dp+tp");
  CHECK(dp_tp.overlap_grad_reduce);
  CHECK(dp_tp.overlap_param_gather);
  CHECK(dp_tp.tp_comm_overlap);
  CHECK_FALSE(dp_tp.overlap_p2p_comm);
  RunConfig interleaved = base;  // P2P overlap takes effect only with VPP (the next test case)
  interleaved.virtual_pipeline_model_parallel_size = 2;
  RunConfig pp = testing::with_overlap(interleaved, "pp+cp");
  CHECK(pp.overlap_p2p_comm);
  CHECK_FALSE(pp.batch_p2p_comm);
  CHECK(pp.cp_comm_type == models::CpCommType::kP2p);
  RunConfig hier = base;
  hier.cp_comm_type = models::CpCommType::kA2aP2p;  // the a2a types have no overlap toggle: kept by every variant
  CHECK(testing::with_overlap(hier, "cp").cp_comm_type == models::CpCommType::kA2aP2p);
  CHECK(testing::with_overlap(hier, "none").cp_comm_type == models::CpCommType::kA2aP2p);
  hier.cp_comm_type = models::CpCommType::kA2a;
  CHECK(testing::with_overlap(hier, "all").cp_comm_type == models::CpCommType::kA2a);
  RunConfig all = testing::with_overlap(base, "all");
  CHECK(all.overlap_moe_expert_parallel_comm);
  CHECK(all.delay_wgrad_compute);
  CHECK_FALSE(all.moe_shared_expert_overlap);
  base.use_distributed_optimizer = false;
  CHECK_FALSE(testing::with_overlap(base, "dp").overlap_param_gather);
  CHECK_THROWS_WITH(testing::with_overlap(base, "dp+fsdp"), twinstep_contains("unknown overlap mode \"fsdp\""));
}

TEST_CASE("models::parse_overlap_variant: a variant prints as it was spelled and an unknown mode names the field",
          "[run_config]") {
  for (const char* text : {"none", "all", "dp", "tp+dp", "dp+tp+pp+cp+ep+delay_wgrad+shared_expert"}) {
    CHECK(to_string(parse_overlap_variant(text, "--overlap")) == text);
  }
  CHECK(parse_overlap_variant("none", "--overlap").none());
  CHECK_FALSE(parse_overlap_variant("all", "--overlap").none());
  CHECK(parse_overlap_variant("tp+dp", "--overlap").modes ==
        std::vector<OverlapMode>{OverlapMode::kTp, OverlapMode::kDp});
  CHECK(parse_overlap_variant("dp", "x") != parse_overlap_variant("tp", "x"));
  for (const char* bad : {"", "dp+", "+dp", "none+dp", "all+dp", "DP", "dp,tp"}) {
    INFO(bad);
    try {
      (void)parse_overlap_variant(bad, "--overlap");
      FAIL("expected an UnknownNameError");
    } catch (const UnknownNameError& e) {
      CHECK(e.file() == "--overlap");
      CHECK(e.message().find("in variant \"" + std::string(bad) + "\"") != std::string::npos);
      CHECK(e.message().find("\"delay_wgrad\"") != std::string::npos);
    }
  }
}

TEST_CASE("models::apply_overlap_variant: pp un-batches P2P only where the overlap takes effect (VPP)",
          "[run_config]") {
  RunConfig c;
  c.pipeline_model_parallel_size = 4;
  // No VPP: MLM forces overlap_p2p_comm off and keeps batch_p2p_comm = not overlap_p2p_comm; Bridge sets it True.
  CHECK(testing::with_overlap(c, "pp").batch_p2p_comm);
  CHECK(testing::with_overlap(c, "all").batch_p2p_comm);
  c.virtual_pipeline_model_parallel_size = 2;
  CHECK_FALSE(testing::with_overlap(c, "pp").batch_p2p_comm);
  CHECK(testing::with_overlap(c, "pp").overlap_p2p_comm);
  CHECK(testing::with_overlap(c, "dp").batch_p2p_comm);
}
