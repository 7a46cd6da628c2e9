// Symmetry reduction of lowered schedules under the analytic model: one representative per DP replica, and TP rank 0
// of it only (TP ranks mirror too, their userbuffer ring sends and recvs paired on the rank itself), give the same
// step time and mean breakdown as the full schedule, for dense layouts with every overlap mode and for MoE.
#include <string>

#include "models/lower.hpp"
#include "models/model_spec.hpp"
#include "models/run_config.hpp"
#include "schedule/analysis.hpp"
#include "schedule/validate.hpp"
#include "sim/simulate.hpp"
#include "tests/catch.hpp"
#include "topologies/cluster.hpp"

using namespace twinstep;

namespace {

schedule::Breakdown predict(const models::ModelSpec& m, const models::RunConfig& c, const topologies::Cluster& cl,
                            int reduce) {
  models::LowerOptions o;
  o.representatives_only = reduce > 0;
  o.mirror_tp = reduce > 1;
  models::Lowered low = models::lower(m, c, o);
  const auto problems = schedule::validate(low.schedule);
  INFO((problems.empty() ? std::string() : problems.front().message));
  REQUIRE(problems.empty());
  const sim::CostModel costs(cl, sim::Profile::datasheet_defaults());
  return schedule::analyze(sim::simulate(std::move(low.schedule), cl, costs));
}

void check_equal(const schedule::Breakdown& a, const schedule::Breakdown& b) {
  CHECK(a.step_time_s == Approx(b.step_time_s).epsilon(1e-9));
  CHECK(a.mean.compute_s == Approx(b.mean.compute_s).epsilon(1e-9));
  CHECK(a.mean.bubble_s == Approx(b.mean.bubble_s).margin(1e-9));
  CHECK(a.mean.busy_comm_s == Approx(b.mean.busy_comm_s).epsilon(1e-9));
  CHECK(a.mean.exposed_comm_s.size() == b.mean.exposed_comm_s.size());
  for (const auto& [k, v] : b.mean.exposed_comm_s) {
    INFO(k);
    CHECK(a.mean.exposed_comm_s.count(k) == 1);
    if (a.mean.exposed_comm_s.count(k) == 1) CHECK(a.mean.exposed_comm_s.at(k) == Approx(v).margin(1e-9));
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
  };
  const Case cases[] = {
      {"llama3-8b", 4, 4, 2, 1, 2, 1, "p2p", "none"},    {"llama3-8b", 4, 4, 2, 1, 2, 1, "p2p", "all"},
      {"llama3-8b", 4, 2, 2, 2, 4, 1, "p2p", "all"},     {"llama3-8b", 4, 8, 2, 1, 1, 1, "p2p", "tp+dp"},
      {"llama3-8b", 4, 2, 1, 1, 4, 1, "a2a", "all"},     {"llama3-8b", 4, 2, 1, 1, 4, 1, "all_gather", "cp"},
      {"qwen3-30b-a3b", 4, 2, 1, 1, 1, 8, "p2p", "all"}, {"qwen3-30b-a3b", 8, 1, 4, 2, 2, 4, "p2p", "ep+dp"},
  };
  for (const auto& cs : cases) {
    models::ModelSpec m = models::load_model(cs.model);
    m.num_layers = cs.layers;
    models::RunConfig c;
    c.world_size = 64;
    c.tensor_model_parallel_size = cs.tp;
    c.pipeline_model_parallel_size = cs.pp;
    c.virtual_pipeline_model_parallel_size = cs.vpp;
    c.context_parallel_size = cs.cp;
    c.cp_comm_type = models::parse_cp_comm_type(cs.cp_type, "cp_type");
    c.expert_model_parallel_size = cs.ep;
    c.sequence_parallel = cs.tp > 1;
    c.use_distributed_optimizer = true;
    c.micro_batch_size = 1;
    c.cuda_device_max_connections = 1;
    c.seq_length = 4096;
    c.global_batch_size = 64 / (cs.tp * cs.pp * cs.cp) * 4;
    if (cs.vpp > 1) {
      c.batch_p2p_comm = false;
      c.overlap_p2p_comm = true;
    }
    c = models::apply_overlap_variant(c, cs.overlap);
    INFO(cs.model << " tp" << cs.tp << " pp" << cs.pp << " vpp" << cs.vpp << " cp" << cs.cp << " (" << cs.cp_type
                  << ") ep" << cs.ep << " overlap " << cs.overlap);
    const auto full = predict(m, c, cl, 0);
    for (int level : {1, 2}) {
      INFO("reduction level " << level);
      check_equal(predict(m, c, cl, level), full);
    }
  }
}
