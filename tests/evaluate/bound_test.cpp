// evaluate::step_lower_bound: never above the simulated step (full simulation, every micro-batch, both fidelities) on
// layouts that cover 1F1B, interleaved, uneven stages, the CP ring (where one CP rank is lowered for it), Ulysses CP,
// every dense overlap mode and MoE with EP and EP overlap; not vacuous (a compute-bound layout's bound is most of its
// step); and which sum gives it.
#include "evaluate/bound.hpp"

#include <string>

#include "evaluate/evaluate.hpp"
#include "models/model_spec.hpp"
#include "models/recipe.hpp"
#include "models/run_config.hpp"
#include "tests/catch.hpp"
#include "tests/support/run_configs.hpp"
#include "topologies/cluster.hpp"

using namespace twinstep;

namespace {

struct Layout {
  const char* model;
  std::uint32_t layers, gpus, tp, pp, vpp, cp, ep, gbs, seq;
  const char* overlap;
  std::int32_t first_stage_layers;  ///< decoder_first_pipeline_num_layers (-1: even)
  models::CpCommType cp_type = models::CpCommType::kP2p;
};

models::RunConfig config_of(const Layout& l) {
  models::RunConfig c = testing::run_config({l.gpus, l.tp, l.pp, l.vpp, l.cp, l.ep, 1, l.gbs, l.seq});
  c.decoder_first_pipeline_num_layers = l.first_stage_layers;
  c.cp_comm_type = l.cp_type;
  c.gpu_memory_bytes = 80.0 * (1ULL << 30);
  (void)models::apply_recipe_defaults(c, {"global_batch_size", "cp_comm_type"});
  return testing::with_overlap(c, l.overlap);
}

/// The bound and the step of a full simulation (every rank, every micro-batch).
std::pair<evaluate::StepBound, double> bound_and_step(const Layout& l,
                                                      sim::Fidelity fidelity = sim::Fidelity::kAnalytic) {
  models::ModelSpec m = models::load_model(l.model);
  m.num_layers = l.layers;
  const auto cluster = topologies::load_cluster("dgx-h100", {0, l.gpus});
  const sim::CostModel costs(cluster, sim::Profile::datasheet_defaults());
  const models::RunConfig c = config_of(l);
  evaluate::Options o;
  o.reduce = false;
  o.fidelity = fidelity;
  return {evaluate::step_lower_bound(m, costs, c, fidelity), evaluate::evaluate(m, cluster, costs, c, o).step_s};
}

}  // namespace

TEST_CASE("evaluate::step_lower_bound: never above the simulated step", "[evaluate]") {
  using models::CpCommType;
  const Layout layouts[] = {
      {"llama3-8b", 4, 8, 2, 2, 1, 1, 1, 32, 1024, "none", -1},  // 1F1B, DP 2, extrapolated from 1 and 2
      {"llama3-8b", 4, 8, 2, 2, 1, 1, 1, 32, 1024, "all", -1},   // every dense overlap mode
      {"llama3-8b", 8, 8, 1, 2, 2, 1, 1, 64, 1024, "all", -1},   // interleaved, from 2 and 4 micro-batches
      {"llama3-8b", 5, 8, 2, 2, 1, 1, 1, 32, 1024, "dp", 3},     // uneven stages (3 + 2 layers)
      {"llama3-8b", 4, 8, 1, 2, 1, 4, 1, 16, 1024, "cp", -1},    // CP 4 ring: one CP rank lowered for the bound
      {"llama3-8b", 4, 8, 1, 1, 1, 8, 1, 8, 512, "none", -1},    // CP 8 ring on short chunks: launches dominate
      {"llama3-8b", 4, 8, 1, 2, 1, 4, 1, 16, 1024, "none", -1, CpCommType::kA2a},  // Ulysses CP
      {"qwen3-30b-a3b", 4, 8, 1, 2, 1, 1, 4, 32, 1024, "dp", -1},                  // MoE, EP 4, 1F1B
      {"qwen3-30b-a3b", 4, 8, 1, 1, 1, 1, 8, 24, 1024, "ep+dp", -1},               // MoE, EP-overlap combined schedule
  };
  for (const auto& l : layouts) {
    INFO(l.model << " tp" << l.tp << " pp" << l.pp << " vpp" << l.vpp << " cp" << l.cp << " ep" << l.ep << " gbs "
                 << l.gbs << " seq " << l.seq << " overlap " << l.overlap);
    for (const auto fidelity : {sim::Fidelity::kAnalytic, sim::Fidelity::kFlow}) {
      if (fidelity == sim::Fidelity::kFlow && !sim::flow_model_available()) continue;
      const auto [bound, step] = bound_and_step(l, fidelity);
      INFO(sim::to_string(fidelity) << ": bound " << bound.seconds << " s (" << bound.what << "), step " << step
                                    << " s");
      CHECK(bound.seconds > 0);
      CHECK(bound.seconds <= step);
      CHECK_FALSE(bound.what.empty());
    }
  }
}

TEST_CASE("evaluate::step_lower_bound: most of a compute-bound step, the launches where kernels are tiny",
          "[evaluate]") {
  // One GPU, no communication, 1F1B without pipeline: the compute stream is busy almost all the step.
  const auto [dense, dense_step] = bound_and_step({"llama3-8b", 4, 1, 1, 1, 1, 1, 1, 16, 4096, "none", -1});
  INFO(dense.what);
  CHECK(dense.seconds > 0.8 * dense_step);
  CHECK(dense.what.find("ops of stream") != std::string::npos);
  // A 256-wide model on 8 GPUs with a CP 8 ring: every kernel takes far less than its launch (4.24 us).
  const std::string tiny = std::string(TWINSTEP_SOURCE_DIR) + "/tests/sweep/data/tiny.json";
  const auto [ring, ring_step] = bound_and_step({tiny.c_str(), 4, 8, 1, 1, 1, 8, 1, 8, 1024, "none", -1});
  INFO(ring.what);
  CHECK(ring.what.find("host thread") != std::string::npos);
  CHECK(ring.seconds <= ring_step);
  CHECK(ring.seconds > 0.5 * ring_step);
}

TEST_CASE("evaluate::step_lower_bound: no bound for a config that does not lower", "[evaluate]") {
  models::ModelSpec m = models::load_model("llama3-8b");
  m.num_layers = 4;
  const auto cluster = topologies::load_cluster("dgx-h100", {0, 8});
  const sim::CostModel costs(cluster, sim::Profile::datasheet_defaults());
  models::RunConfig c = config_of({"llama3-8b", 4, 8, 3, 1, 1, 1, 1, 8, 1024, "none", -1});  // TP 3 of 8 GPUs
  CHECK(evaluate::step_lower_bound(m, costs, c, sim::Fidelity::kAnalytic).seconds == 0);
}
