// Run config JSON (round trip, unknown fields named) and overlap variants.
#include "models/run_config.hpp"

#include "common/error.hpp"
#include "tests/catch.hpp"

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
  c.recompute_granularity = "full";
  c.recompute_num_layers = 3;
  c.bucket_size = 134217728;
  c.cp_comm_type = "a2a";
  c.hierarchical_context_parallel_sizes = {2, 4};
  c.host.per_module_call_ns = 1500;
  const std::string text = run_config_to_json(c);
  RunConfig back = run_config_from_json(text, "c.json");
  CHECK(run_config_to_json(back) == text);
  CHECK(back.virtual_pipeline_model_parallel_size == 5);
  CHECK(back.host.per_module_call_ns == 1500);
  CHECK(back.hierarchical_context_parallel_sizes == std::vector<std::uint32_t>{2, 4});
}

TEST_CASE("models::run_config: unknown fields and wrong types are errors naming the field", "[run_config]") {
  CHECK_THROWS_WITH(run_config_from_json(R"({"tensor_parallel_size": 2})", "r.json"),
                    twinstep_contains("r.json: /tensor_parallel_size: unknown field"));
  CHECK_THROWS_WITH(run_config_from_json(R"({"host": {"launch_ns": 2}})", "r.json"),
                    twinstep_contains("/host/launch_ns"));
  CHECK_THROWS_WITH(run_config_from_json(R"({"sequence_parallel": "yes"})", "r.json"),
                    twinstep_contains("/sequence_parallel: wrong type"));
  CHECK_THROWS_WITH(run_config_from_json(R"({"dtype": "int3"})", "r.json"), twinstep_contains("/dtype"));
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
  RunConfig none = apply_overlap_variant(base, "none");
  CHECK_FALSE(none.overlap_grad_reduce);
  CHECK_FALSE(none.tp_comm_overlap);
  CHECK(none.cp_comm_type == "all_gather");
  RunConfig dp_tp = apply_overlap_variant(base, "dp+tp");
  CHECK(dp_tp.overlap_grad_reduce);
  CHECK(dp_tp.overlap_param_gather);
  CHECK(dp_tp.tp_comm_overlap);
  CHECK_FALSE(dp_tp.overlap_p2p_comm);
  RunConfig interleaved = base;  // P2P overlap takes effect only with VPP (the next test case)
  interleaved.virtual_pipeline_model_parallel_size = 2;
  RunConfig pp = apply_overlap_variant(interleaved, "pp+cp");
  CHECK(pp.overlap_p2p_comm);
  CHECK_FALSE(pp.batch_p2p_comm);
  CHECK(pp.cp_comm_type == "p2p");
  RunConfig hier = base;
  hier.cp_comm_type = "a2a+p2p";  // the a2a types have no overlap toggle: kept by every variant
  CHECK(apply_overlap_variant(hier, "cp").cp_comm_type == "a2a+p2p");
  CHECK(apply_overlap_variant(hier, "none").cp_comm_type == "a2a+p2p");
  hier.cp_comm_type = "a2a";
  CHECK(apply_overlap_variant(hier, "all").cp_comm_type == "a2a");
  RunConfig all = apply_overlap_variant(base, "all");
  CHECK(all.overlap_moe_expert_parallel_comm);
  CHECK(all.delay_wgrad_compute);
  CHECK_FALSE(all.moe_shared_expert_overlap);
  base.use_distributed_optimizer = false;
  CHECK_FALSE(apply_overlap_variant(base, "dp").overlap_param_gather);
  CHECK_THROWS_WITH(apply_overlap_variant(base, "dp+fsdp"), twinstep_contains("unknown overlap mode \"fsdp\""));
}

TEST_CASE("models::apply_overlap_variant: pp un-batches P2P only where the overlap takes effect (VPP)",
          "[run_config]") {
  RunConfig c;
  c.pipeline_model_parallel_size = 4;
  // No VPP: MLM forces overlap_p2p_comm off and keeps batch_p2p_comm = not overlap_p2p_comm; Bridge sets it True.
  CHECK(apply_overlap_variant(c, "pp").batch_p2p_comm);
  CHECK(apply_overlap_variant(c, "all").batch_p2p_comm);
  c.virtual_pipeline_model_parallel_size = 2;
  CHECK_FALSE(apply_overlap_variant(c, "pp").batch_p2p_comm);
  CHECK(apply_overlap_variant(c, "pp").overlap_p2p_comm);
  CHECK(apply_overlap_variant(c, "dp").batch_p2p_comm);
}
