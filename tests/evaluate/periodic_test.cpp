// Steady-state periodicity (evaluate/periodic.hpp): the choice of the short runs, the line through them and its
// check (closed forms), the breakdown's flat values round trip, and evaluate::evaluate end to end: a step extrapolated
// by its period equals the full simulation (1e-9 relative) for 1F1B, interleaved, uneven stages, CP, DP overlap and
// MoE with EP overlap; a kept trace or --no-reduce simulates every micro-batch.
#include "evaluate/periodic.hpp"

#include <string>

#include "evaluate/evaluate.hpp"
#include "models/model_spec.hpp"
#include "models/recipe.hpp"
#include "models/run_config.hpp"
#include "tests/catch.hpp"
#include "tests/support/run_configs.hpp"
#include "topologies/cluster.hpp"

using namespace twinstep;

TEST_CASE("evaluate::periodic_counts: from pp + 1 by 1 (1F1B), from two groups by a group (interleaved)",
          "[evaluate]") {
  using Counts = std::array<std::uint32_t, 3>;
  CHECK(evaluate::periodic_counts(64, 4, 1, 4) == Counts{5, 6, 7});
  CHECK(evaluate::periodic_counts(128, 4, 2, 4) == Counts{8, 12, 16});
  CHECK(evaluate::periodic_counts(128, 4, 2, 6) == Counts{12, 18, 24});  // a larger group size
  CHECK(evaluate::periodic_counts(10, 1, 1, 1) == Counts{2, 3, 4});
  // Only when the three runs simulate fewer micro-batches than the full run.
  CHECK(evaluate::periodic_counts(9, 1, 1, 1) == std::nullopt);
  CHECK(evaluate::periodic_counts(18, 4, 1, 4) == std::nullopt);
  CHECK(evaluate::periodic_counts(19, 4, 1, 4) == Counts{5, 6, 7});
  CHECK(evaluate::periodic_counts(36, 4, 2, 4) == std::nullopt);
  CHECK(evaluate::periodic_counts(37, 4, 2, 4) == Counts{8, 12, 16});
  CHECK(evaluate::periodic_counts(1, 1, 1, 0) == std::nullopt);
}

TEST_CASE("evaluate::extrapolate: the line through the samples, and non-periodic steps refused", "[evaluate]") {
  auto sample = [](std::uint32_t m, double fixed, double per_mb) {
    return evaluate::MicroBatchSample{m, {{"step", fixed + per_mb * m}, {"compute", per_mb * m}, {"bubble", fixed}}};
  };
  std::string why;
  const auto v =
      evaluate::extrapolate({sample(8, 0.5, 0.01), sample(9, 0.5, 0.01), sample(10, 0.5, 0.01)}, 100, 1e-9, &why);
  REQUIRE(v);
  CHECK(v->at("step") == Approx(0.5 + 0.01 * 100).epsilon(1e-12));
  CHECK(v->at("compute") == Approx(1.0).epsilon(1e-12));
  CHECK(v->at("bubble") == Approx(0.5).epsilon(1e-12));

  // The second period is 10 ns longer (1e-6 of it): not periodic at 1e-9, within the integer-ns rounding allowance
  // (4 ns) it would be.
  auto bent = sample(10, 0.5, 0.01);
  bent.values["step"] += 10e-9;
  CHECK_FALSE(evaluate::extrapolate({sample(8, 0.5, 0.01), sample(9, 0.5, 0.01), bent}, 100, 1e-9, &why));
  CHECK(why.find("not periodic") != std::string::npos);
  auto rounded = sample(10, 0.5, 0.01);
  rounded.values["step"] += 2e-9;
  CHECK(evaluate::extrapolate({sample(8, 0.5, 0.01), sample(9, 0.5, 0.01), rounded}, 100, 1e-9, &why));

  // A category shrinking per micro-batch would go negative far out.
  auto shrink = [](std::uint32_t m) {
    return evaluate::MicroBatchSample{m, {{"step", 1.0 + 0.01 * m}, {"compute", 0.02 * m}, {"bubble", 1.0 - 0.01 * m}}};
  };
  CHECK_FALSE(evaluate::extrapolate({shrink(8), shrink(9), shrink(10)}, 1000, 1e-9, &why));
  CHECK(why.find("bubble") != std::string::npos);
}

TEST_CASE("evaluate::breakdown_values: a breakdown round-trips through its flat values", "[evaluate]") {
  schedule::Breakdown b;
  b.step_time_s = 2.5;
  b.flops = 7e15;
  for (schedule::RankId r : {0U, 8U}) {
    schedule::RankBreakdown rb;
    rb.rank = r;
    rb.compute_s = 1.0 + r;
    rb.bubble_s = 0.25;
    rb.host_bound_s = 0.125;
    rb.busy_comm_s = 3.0;
    rb.exposed_comm_s = {{"tp", 0.5}, {"dp", 0.0625 * (r + 1)}};
    b.ranks.push_back(rb);
  }
  b.mean = b.ranks[1];
  b.mean.rank = 0;
  const auto v = evaluate::breakdown_values(b, 1.75);
  CHECK(v.at("r1.exposed.dp") == 0.0625 * 9);
  double solo = 0;
  const auto back = evaluate::breakdown_from_values(v, b, &solo);
  CHECK(solo == 1.75);
  CHECK(back.step_time_s == b.step_time_s);
  CHECK(back.flops == b.flops);
  REQUIRE(back.ranks.size() == 2);
  for (std::size_t i = 0; i < 2; ++i) {
    CHECK(back.ranks[i].rank == b.ranks[i].rank);
    CHECK(back.ranks[i].compute_s == b.ranks[i].compute_s);
    CHECK(back.ranks[i].bubble_s == b.ranks[i].bubble_s);
    CHECK(back.ranks[i].host_bound_s == b.ranks[i].host_bound_s);
    CHECK(back.ranks[i].busy_comm_s == b.ranks[i].busy_comm_s);
    CHECK(back.ranks[i].exposed_comm_s == b.ranks[i].exposed_comm_s);
  }
  CHECK(back.mean.exposed_comm_s == b.mean.exposed_comm_s);
}

namespace {

struct Layout {
  const char* model;
  std::uint32_t layers, gpus, tp, pp, vpp, cp, ep, gbs;
  const char* overlap;
  std::int32_t first_stage_layers;  ///< decoder_first_pipeline_num_layers (-1: even)
};

models::RunConfig config_of(const Layout& l) {
  models::RunConfig c = testing::run_config({l.gpus, l.tp, l.pp, l.vpp, l.cp, l.ep, 1, l.gbs, 1024});
  c.decoder_first_pipeline_num_layers = l.first_stage_layers;
  c.gpu_memory_bytes = 80.0 * (1ULL << 30);
  (void)models::apply_recipe_defaults(c, {"global_batch_size"});
  return testing::with_overlap(c, l.overlap);
}

}  // namespace

TEST_CASE("evaluate::evaluate: a step extrapolated by its period equals the full simulation", "[evaluate]") {
  const Layout layouts[] = {
      {"llama3-8b", 4, 8, 2, 2, 1, 1, 1, 64, "none", -1},       // 1F1B, DP 2
      {"llama3-8b", 4, 8, 2, 2, 1, 1, 1, 64, "all", -1},        // 1F1B, every dense overlap mode
      {"llama3-8b", 8, 8, 1, 2, 2, 1, 1, 128, "all", -1},       // interleaved, DP 4
      {"llama3-8b", 5, 8, 2, 2, 1, 1, 1, 64, "dp", 3},          // uneven stages (3 + 2 layers)
      {"llama3-8b", 4, 8, 2, 2, 1, 2, 1, 64, "cp", -1},         // CP 2 ring attention
      {"qwen3-30b-a3b", 4, 8, 1, 2, 1, 1, 4, 64, "dp", -1},     // MoE, EP 4, 1F1B
      {"qwen3-30b-a3b", 4, 8, 1, 1, 1, 1, 8, 96, "ep+dp", -1},  // MoE, EP-overlap combined schedule at pp 1
  };
  for (const auto& l : layouts) {
    INFO(l.model << " tp" << l.tp << " pp" << l.pp << " vpp" << l.vpp << " cp" << l.cp << " ep" << l.ep << " gbs "
                 << l.gbs << " overlap " << l.overlap);
    models::ModelSpec m = models::load_model(l.model);
    m.num_layers = l.layers;
    const auto cluster = topologies::load_cluster("dgx-h100", {0, l.gpus});
    const sim::CostModel costs(cluster, sim::Profile::datasheet_defaults());
    models::RunConfig c = config_of(l);
    // Framework host costs (about h100x1.json's), so the host thread's time by cause has host ops to extrapolate.
    c.host.per_module_call_ns = 3800;
    c.host.per_kernel_launch_ns = 7300;
    c.host.per_kernel_backward_ns = 22000;
    c.host.backward_call_ns = 72000;
    c.host.host_sync_ns = 6500;
    c.host.event_record_ns = 8900;
    c.host.ep_node_ns = 15000;
    c.host.moe_router_ns = 117000;
    c.host.moe_permute_ns = 129000;
    evaluate::Options o;
    const evaluate::Result periodic = evaluate::evaluate(m, cluster, costs, c, o);
    o.periodic = false;
    const evaluate::Result full = evaluate::evaluate(m, cluster, costs, c, o);
    INFO("fallback: " << periodic.periodic_fallback);
    REQUIRE(periodic.periodic_from.size() == 3);
    CHECK(full.periodic_from.empty());
    CHECK(periodic.sim.notes.back().find("steady-state periodicity") != std::string::npos);
    CHECK(periodic.step_s == Approx(full.step_s).epsilon(1e-9));
    CHECK(periodic.mfu == Approx(full.mfu).epsilon(1e-9));
    CHECK(periodic.model_flops_per_step == Approx(full.model_flops_per_step).epsilon(1e-12));
    CHECK(periodic.sim.solo_compute_s == Approx(full.sim.solo_compute_s).epsilon(1e-9));
    CHECK(periodic.peak_memory.total_bytes() == full.peak_memory.total_bytes());
    CHECK(periodic.warnings == full.warnings);
    const auto& a = periodic.sim.breakdown.mean;
    const auto& b = full.sim.breakdown.mean;
    CHECK(a.compute_s == Approx(b.compute_s).epsilon(1e-9));
    CHECK(a.bubble_s == Approx(b.bubble_s).margin(1e-8));
    CHECK(a.host_bound_s == Approx(b.host_bound_s).margin(1e-8));
    CHECK(a.busy_comm_s == Approx(b.busy_comm_s).epsilon(1e-9));
    for (const auto& [kind, s] : b.exposed_comm_s) {
      INFO(kind);
      CHECK(a.exposed_comm_s.count(kind) == 1);
      CHECK(a.exposed_comm_s.at(kind) == Approx(s).margin(1e-8));
    }
    REQUIRE(periodic.sim.breakdown.ranks.size() == full.sim.breakdown.ranks.size());
    // The host thread's time by cause (host ops, waits in host syncs) is extrapolated with the breakdown.
    CHECK(!full.sim.host_work_s.empty());
    REQUIRE(periodic.sim.host_work_s.size() == full.sim.host_work_s.size());
    for (const auto& [cause, s] : full.sim.host_work_s) {
      INFO(cause);
      REQUIRE(periodic.sim.host_work_s.count(cause) == 1);
      CHECK(periodic.sim.host_work_s.at(cause) == Approx(s).epsilon(1e-9).margin(1e-8));
    }
  }
}

TEST_CASE("evaluate::evaluate: a kept trace or --no-reduce simulates every micro-batch", "[evaluate]") {
  models::ModelSpec m = models::load_model("llama3-8b");
  m.num_layers = 2;
  const auto cluster = topologies::load_cluster("dgx-h100", {0, 8});
  const sim::CostModel costs(cluster, sim::Profile::datasheet_defaults());
  const models::RunConfig c = config_of({"llama3-8b", 2, 8, 2, 2, 1, 1, 1, 64, "none", -1});
  evaluate::Options o;
  o.keep_trace = true;
  const auto traced = evaluate::evaluate(m, cluster, costs, c, o);
  CHECK(traced.periodic_from.empty());
  REQUIRE(traced.sim.trace);
  CHECK(traced.sim.trace->schedule.meta.at("micro_batches") == "32");
  o.keep_trace = false;
  o.reduce = false;
  CHECK(evaluate::evaluate(m, cluster, costs, c, o).periodic_from.empty());
  o.reduce = true;
  CHECK(evaluate::evaluate(m, cluster, costs, c, o).periodic_from.size() == 3);
}
