// Symmetry reduction of lowered schedules under the analytic model: one representative per DP replica, TP rank 0 of
// it only (TP ranks mirror too, their userbuffer ring sends and recvs paired on the rank itself), and CP rank 0 where
// CP ranks are symmetric (Ulysses a2a) give the same step time and mean breakdown as the full schedule, for dense
// layouts with every overlap mode, interleaved and uneven pipeline stages, and MoE (EP, expert-DP); a skewed routing
// falls back to every rank. Under the flow model, one representative per DP replica where every link is one GPU's.
#include <string>

#include "models/lower.hpp"
#include "models/model_spec.hpp"
#include "models/run_config.hpp"
#include "schedule/analysis.hpp"
#include "schedule/validate.hpp"
#include "sim/simulate.hpp"
#include "tests/catch.hpp"
#include "tests/support/run_configs.hpp"
#include "topologies/cluster.hpp"

using namespace twinstep;

namespace {

schedule::Breakdown predict(const models::ModelSpec& m, const models::RunConfig& c, const topologies::Cluster& cl,
                            int reduce, std::size_t* ranks = nullptr,
                            sim::Fidelity fidelity = sim::Fidelity::kAnalytic) {
  models::LowerOptions o;
  o.representatives_only = reduce > 0;
  o.mirror_tp = reduce > 1;
  o.mirror_cp = reduce > 2;
  models::Lowered low = models::lower(m, c, o);
  if (ranks != nullptr) *ranks = low.schedule.ranks.size();
  const auto problems = schedule::validate(low.schedule);
  INFO((problems.empty() ? std::string() : problems.front().message));
  REQUIRE(problems.empty());
  const sim::CostModel costs(cl, sim::Profile::datasheet_defaults());
  sim::Options so;
  so.fidelity = fidelity;
  return schedule::analyze(sim::simulate(std::move(low.schedule), cl, costs, so));
}

void check_equal(const schedule::Breakdown& a, const schedule::Breakdown& b, double rel = 1e-9) {
  CHECK(a.step_time_s == Approx(b.step_time_s).epsilon(rel));
  CHECK(a.mean.compute_s == Approx(b.mean.compute_s).epsilon(rel));
  CHECK(a.mean.bubble_s == Approx(b.mean.bubble_s).margin(rel));
  CHECK(a.mean.busy_comm_s == Approx(b.mean.busy_comm_s).epsilon(rel));
  CHECK(a.mean.exposed_comm_s.size() == b.mean.exposed_comm_s.size());
  for (const auto& [k, v] : b.mean.exposed_comm_s) {
    INFO(k);
    CHECK(a.mean.exposed_comm_s.count(k) == 1);
    if (a.mean.exposed_comm_s.count(k) == 1) CHECK(a.mean.exposed_comm_s.at(k) == Approx(v).margin(rel));
  }
}

}  // namespace

TEST_CASE("sim::symmetry: per-DP and per-TP-group representatives equal the full schedule (analytic)",
          "[sim][symmetry]") {
  const topologies::Cluster cl = topologies::load_cluster("h100-superpod", {0, 64});
  struct Case {
    const char* model;
    std::uint32_t layers, tp, pp, vpp, cp, ep;
    const char* cp_type;
    const char* overlap;
    std::int32_t first_stage_layers = -1;  ///< decoder_first_pipeline_num_layers (uneven stages)
    std::size_t cp_mirrored_ranks = 0;     ///< Ranks simulated with CP mirrored too (0: CP ranks not symmetric).
  };
  const Case cases[] = {
      {"llama3-8b", 4, 4, 2, 1, 2, 1, "p2p", "none"},
      {"llama3-8b", 4, 4, 2, 1, 2, 1, "p2p", "all"},
      {"llama3-8b", 4, 2, 2, 2, 4, 1, "p2p", "all"},
      {"llama3-8b", 4, 8, 2, 1, 1, 1, "p2p", "tp+dp"},
      {"llama3-8b", 4, 2, 1, 1, 4, 1, "a2a", "all", -1, 1},
      {"llama3-8b", 8, 2, 2, 2, 4, 1, "a2a", "all", -1, 2},  // interleaved, CP mirrored
      {"llama3-8b", 4, 2, 1, 1, 4, 1, "all_gather", "cp"},
      {"llama3-8b", 5, 2, 2, 1, 2, 1, "p2p", "all", 3},  // uneven stages: 3 + 2 layers
      {"qwen3-30b-a3b", 4, 2, 1, 1, 1, 8, "p2p", "all"},
      {"qwen3-30b-a3b", 8, 1, 4, 2, 2, 4, "p2p", "ep+dp"},
      {"qwen3-30b-a3b", 4, 1, 2, 1, 2, 4, "a2a", "dp", -1, 2},  // EP with expert-DP 4, CP mirrored
  };
  for (const auto& cs : cases) {
    models::ModelSpec m = models::load_model(cs.model);
    m.num_layers = cs.layers;
    models::RunConfig c = testing::production(
        testing::run_config({64, cs.tp, cs.pp, cs.vpp, cs.cp, cs.ep, 1, 64 / (cs.tp * cs.pp * cs.cp) * 4, 4096}));
    c.cp_comm_type = models::parse_cp_comm_type(cs.cp_type, "cp_type");
    c.decoder_first_pipeline_num_layers = cs.first_stage_layers;
    c = testing::with_overlap(c, cs.overlap);
    INFO(cs.model << " tp" << cs.tp << " pp" << cs.pp << " vpp" << cs.vpp << " cp" << cs.cp << " (" << cs.cp_type
                  << ") ep" << cs.ep << " overlap " << cs.overlap);
    const auto full = predict(m, c, cl, 0);
    for (int level : {1, 2, 3}) {
      INFO("reduction level " << level);
      std::size_t ranks = 0;
      check_equal(predict(m, c, cl, level, &ranks), full);
      if (level == 3) CHECK(ranks == (cs.cp_mirrored_ranks > 0 ? cs.cp_mirrored_ranks : std::size_t{cs.pp} * cs.cp));
    }
  }
}

TEST_CASE("sim::symmetry: a skewed MoE routing falls back to every rank and equals the full schedule",
          "[sim][symmetry]") {
  const topologies::Cluster cl = topologies::load_cluster("dgx-h100", {0, 16});
  models::ModelSpec m = models::load_model("qwen3-30b-a3b");
  m.num_layers = 2;
  models::RunConfig c;
  c.world_size = 16;
  c.tensor_model_parallel_size = 2;
  c.expert_model_parallel_size = 8;
  c.expert_tensor_parallel_size = 1;
  c.sequence_parallel = true;
  c.micro_batch_size = 1;
  c.global_batch_size = 16;
  c.seq_length = 2048;
  c.cuda_device_max_connections = 1;
  c.moe_routing_skew = 2.0;
  models::LowerOptions o;
  o.representatives_only = o.mirror_tp = o.mirror_cp = true;
  const models::Lowered red = models::lower(m, c, o);
  CHECK(red.schedule.ranks.size() == 16);
  CHECK(red.schedule.meta.at("representatives").rfind("all (skewed", 0) == 0);
  // Balanced, the same layout reduces to one rank.
  c.moe_routing_skew = 1.0;
  CHECK(models::lower(m, c, o).schedule.ranks.size() == 1);
  c.moe_routing_skew = 2.0;
  std::size_t ranks = 0;
  check_equal(predict(m, c, cl, 3, &ranks), predict(m, c, cl, 0));
  CHECK(ranks == 16);
}

TEST_CASE("sim::symmetry: flow, one representative per DP replica equals the full schedule where links are per GPU",
          "[sim][symmetry][flow]") {
  // The policy: flow reduces where every link is one GPU's (one switch, one fat-tree group) and above 512 GPUs.
  const std::string su4 = std::string(TWINSTEP_SOURCE_DIR) + "/topologies/clusters/h100-superpod-4su.json";
  const auto one_group = topologies::load_cluster(su4, {0, 256});  // 32 nodes of 32 per group
  const auto two_groups = topologies::load_cluster(su4, {0, 512});
  CHECK(sim::flow_links_private(topologies::load_cluster("dgx-h100", {0, 16})));
  CHECK(sim::flow_links_private(one_group));
  CHECK_FALSE(sim::flow_links_private(two_groups));
  CHECK(sim::reduction_policy(one_group, sim::Fidelity::kFlow).representatives_only);
  CHECK_FALSE(sim::reduction_policy(two_groups, sim::Fidelity::kFlow).representatives_only);
  CHECK(sim::reduction_policy(topologies::load_cluster(su4, {0, 1024}), sim::Fidelity::kFlow).representatives_only);
  CHECK_FALSE(sim::reduction_policy(one_group, sim::Fidelity::kFlow).mirror_tp);  // pairs on one rank: analytic only
  CHECK_FALSE(sim::reduction_policy(one_group, sim::Fidelity::kFlow, false).representatives_only);
  if (!sim::flow_model_available()) return;
  struct Case {
    const char* model;
    std::uint32_t gpus, layers, tp, pp, vpp, cp, ep;
    const char* overlap;
    std::size_t ranks;  ///< Simulated when reduced: tp x pp x cp.
  };
  const Case cases[] = {
      {"llama3-8b", 16, 4, 2, 2, 1, 1, 1, "none", 4},      // DP 4 over two nodes
      {"llama3-8b", 16, 4, 2, 2, 1, 1, 1, "all", 4},       // every dense overlap mode
      {"llama3-8b", 32, 4, 8, 2, 1, 1, 1, "dp", 16},       // TP 8 per node, DP 2 across nodes
      {"llama3-8b", 16, 4, 1, 2, 2, 2, 1, "all", 4},       // interleaved, CP 2 ring
      {"qwen3-30b-a3b", 16, 2, 1, 2, 1, 1, 8, "dp", 2},    // MoE: EP 8 spans the DP replicas
      {"qwen3-30b-a3b", 16, 2, 2, 1, 1, 1, 8, "none", 2},  // EP 8 over TP 2 x DP 8, expert-DP 2
      // EP 8 x expert-TP 2 over the 16 GPUs of a stage, two nodes: the all-to-all flows to and from the 7 absent
      // members (3 by NVLink, 4 by NIC) merge per port of the present one (flow_model.cpp merge_flows); with DP and
      // PP traffic on the same ports.
      {"qwen3-30b-a3b", 32, 2, 2, 2, 1, 1, 8, "dp", 4},
      {"qwen3-30b-a3b", 32, 4, 2, 2, 2, 1, 8, "all", 4},  // interleaved, every overlap mode (EP overlap included)
  };
  for (const auto& cs : cases) {
    INFO(cs.model << " on " << cs.gpus << " GPUs: tp" << cs.tp << " pp" << cs.pp << " vpp" << cs.vpp << " cp" << cs.cp
                  << " ep" << cs.ep << " overlap " << cs.overlap);
    const topologies::Cluster cl = topologies::load_cluster("dgx-h100", {0, cs.gpus});
    REQUIRE(sim::reduction_policy(cl, sim::Fidelity::kFlow).representatives_only);
    models::ModelSpec m = models::load_model(cs.model);
    m.num_layers = cs.layers;
    const models::RunConfig c =
        testing::with_overlap(testing::production(testing::run_config({cs.gpus, cs.tp, cs.pp, cs.vpp, cs.cp, cs.ep, 1,
                                                                       cs.gpus / (cs.tp * cs.pp * cs.cp) * 4, 2048})),
                              cs.overlap);
    std::size_t ranks = 0;
    const auto reduced = predict(m, c, cl, 1, &ranks, sim::Fidelity::kFlow);
    CHECK(ranks == cs.ranks);
    check_equal(reduced, predict(m, c, cl, 0, nullptr, sim::Fidelity::kFlow), 1e-6);
  }
}
