// evaluate::step_lower_bound: never above the simulated step (full simulation of every rank and micro-batch, and the
// reduced, extrapolated one a sweep compares with; both fidelities) and never below the per-stream sums it replaced,
// on layouts that cover DP, TP, 1F1B, interleaved, uneven stages, the CP ring (where one CP rank is lowered for it),
// Ulysses CP, every dense overlap mode and MoE with EP and EP overlap; not vacuous (a compute-bound layout's bound is
// most of its step, a pipeline's bound sees its bubble); and which path gives it.
#include "evaluate/bound.hpp"

#include <algorithm>
#include <map>
#include <string>
#include <tuple>
#include <utility>
#include <variant>

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

/// The bound with every stop threshold passed: from one lowering alone where that applies.
evaluate::StepBound one_lowering_bound(const Layout& l, sim::Fidelity fidelity) {
  models::ModelSpec m = models::load_model(l.model);
  m.num_layers = l.layers;
  const auto cluster = topologies::load_cluster("dgx-h100", {0, l.gpus});
  const sim::CostModel costs(cluster, sim::Profile::datasheet_defaults());
  return evaluate::step_lower_bound(m, costs, config_of(l), fidelity, 0.0);
}

/// The bound this one replaced, as an oracle: per (rank, stream) of one rank per stage the solo times of its ops
/// (communication under analytic only, all-to-all left out), per rank its host thread's launches and host ops; the
/// largest, at the step's micro-batch count along the line through two lowerings (the sums are affine in it).
double per_stream_sums(const Layout& l, sim::Fidelity fidelity) {
  models::ModelSpec model = models::load_model(l.model);
  model.num_layers = l.layers;
  const auto cluster = topologies::load_cluster("dgx-h100", {0, l.gpus});
  const sim::CostModel costs(cluster, sim::Profile::datasheet_defaults());
  const models::RunConfig config = config_of(l);
  const bool comm = fidelity == sim::Fidelity::kAnalytic;
  auto sums_at = [&](std::uint64_t mbs) {
    models::RunConfig c = config;
    c.global_batch_size = static_cast<std::uint32_t>(mbs * c.micro_batch_size * models::derived_dp(c));
    models::LowerOptions o;
    o.one_rank_per_stage = true;
    const schedule::Schedule s = models::lower(model, c, o).schedule;
    std::map<std::pair<schedule::RankId, int>, double> sums;  // stream -1: the host thread
    for (const auto& op : s.ops) {
      if (const auto* h = std::get_if<schedule::Host>(&op.body)) {
        sums[{op.rank, -1}] += to_seconds(h->duration_ns);
        continue;
      }
      sums[{op.rank, -1}] += to_seconds(costs.launch_ns(op));
      double& stream = sums[{op.rank, op.stream}];
      if (const auto* k = std::get_if<schedule::Compute>(&op.body)) {
        stream += costs.kernel_cost(*k).solo_time_s();
      } else if (const auto* snd = std::get_if<schedule::Send>(&op.body); snd != nullptr && comm) {
        stream += costs.p2p_cost(static_cast<double>(snd->bytes), op.rank, snd->peer).time_s();
      } else if (const auto* rcv = std::get_if<schedule::Recv>(&op.body); rcv != nullptr && comm) {
        stream += costs.p2p_cost(static_cast<double>(rcv->bytes), rcv->peer, op.rank).time_s();
      } else if (const auto* coll = std::get_if<schedule::Collective>(&op.body);
                 coll != nullptr && comm && coll->kind != schedule::CollectiveKind::kAllToAll) {
        stream +=
            costs.collective_cost(coll->kind, static_cast<double>(coll->bytes), costs.span(s.communicators[coll->comm]))
                .time_s();
      }
    }
    return sums;
  };
  const std::uint64_t m = config.global_batch_size / (config.micro_batch_size * models::derived_dp(config));
  // g: the interleaving group (a lowering needs a whole one), 1 without.
  const std::uint64_t g = config.virtual_pipeline_model_parallel_size > 1 ? config.pipeline_model_parallel_size : 1;
  if (m <= 2 * g) {
    double out = 0;
    for (const auto& [key, v] : sums_at(m)) out = std::max(out, v);
    return out;
  }
  const auto a = sums_at(g), b = sums_at(2 * g);
  double out = 0;
  for (const auto& [key, vb] : b) {
    const double va = a.count(key) != 0 ? a.at(key) : 0.0;
    out = std::max(out, va + (vb - va) * static_cast<double>(m - g) / static_cast<double>(g));
  }
  return out;
}

/// The step a sweep compares the bound with: symmetry-reduced, extrapolated by periodicity where it applies.
double sweep_step(const Layout& l, sim::Fidelity fidelity) {
  models::ModelSpec m = models::load_model(l.model);
  m.num_layers = l.layers;
  const auto cluster = topologies::load_cluster("dgx-h100", {0, l.gpus});
  const sim::CostModel costs(cluster, sim::Profile::datasheet_defaults());
  evaluate::Options o;
  o.fidelity = fidelity;
  o.op_names = false;
  return evaluate::evaluate(m, cluster, costs, config_of(l), o).step_s;
}

}  // namespace

TEST_CASE("evaluate::step_lower_bound: never above the simulated step", "[evaluate]") {
  using models::CpCommType;
  const Layout layouts[] = {
      {"llama3-8b", 4, 8, 2, 2, 1, 1, 1, 32, 1024, "none", -1},  // 1F1B, DP 2, extrapolated from 3 and 4
      {"llama3-8b", 4, 8, 2, 2, 1, 1, 1, 32, 1024, "all", -1},   // every dense overlap mode
      {"llama3-8b", 4, 8, 2, 2, 1, 1, 1, 32, 1024, "tp", -1},    // TP userbuffer ring (copy engine)
      {"llama3-8b", 4, 8, 2, 2, 1, 1, 1, 32, 1024, "pp", -1},    // overlap_p2p_comm
      {"llama3-8b", 8, 8, 1, 4, 1, 1, 1, 24, 1024, "dp", -1},    // 1F1B PP 4: fill and drain
      {"llama3-8b", 8, 8, 1, 2, 2, 1, 1, 64, 1024, "all", -1},   // interleaved, from 4 and 6 micro-batches
      {"llama3-8b", 8, 8, 1, 4, 2, 1, 1, 32, 1024, "none", -1},  // interleaved without overlap
      {"llama3-8b", 8, 8, 2, 4, 2, 1, 1, 16, 1024, "dp", -1},    // interleaved PP 4, 16 of at least 8 micro-batches
      {"llama3-8b", 4, 8, 1, 2, 1, 1, 1, 4, 1024, "dp", -1},     // 4 micro-batches: its own longest path
      {"llama3-8b", 5, 8, 2, 2, 1, 1, 1, 32, 1024, "dp", 3},     // uneven stages (3 + 2 layers)
      {"llama3-8b", 4, 8, 1, 2, 1, 4, 1, 16, 1024, "cp", -1},    // CP 4 ring: one CP rank lowered for the bound
      {"llama3-8b", 4, 8, 1, 1, 1, 8, 1, 8, 512, "none", -1},    // CP 8 ring on short chunks: launches dominate
      {"llama3-8b", 4, 8, 1, 2, 1, 4, 1, 16, 1024, "none", -1, CpCommType::kA2a},  // Ulysses CP
      {"qwen3-30b-a3b", 4, 8, 1, 2, 1, 1, 4, 32, 1024, "dp", -1},                  // MoE, EP 4, 1F1B
      {"qwen3-30b-a3b", 4, 8, 1, 1, 1, 1, 8, 24, 1024, "ep+dp", -1},               // MoE, EP-overlap combined schedule
      {"qwen3-30b-a3b", 4, 8, 2, 2, 1, 1, 2, 32, 1024, "dp+tp", -1},               // MoE with TP, EP, PP, overlaps
  };
  std::size_t from_one = 0;  // bounds from one lowering alone
  for (const auto& l : layouts) {
    INFO(l.model << " tp" << l.tp << " pp" << l.pp << " vpp" << l.vpp << " cp" << l.cp << " ep" << l.ep << " gbs "
                 << l.gbs << " seq " << l.seq << " overlap " << l.overlap);
    for (const auto fidelity : {sim::Fidelity::kAnalytic, sim::Fidelity::kFlow}) {
      if (fidelity == sim::Fidelity::kFlow && !sim::flow_model_available()) continue;
      const auto [bound, step] = bound_and_step(l, fidelity);
      const double reduced = sweep_step(l, fidelity), sums = per_stream_sums(l, fidelity);
      INFO(sim::to_string(fidelity) << ": bound " << bound.seconds << " s (" << bound.what << "), step " << step
                                    << " s, reduced and extrapolated " << reduced << " s, per-stream sums " << sums
                                    << " s");
      CHECK(bound.seconds > 0);
      CHECK(bound.seconds <= step);
      CHECK(bound.seconds <= reduced);
      CHECK(sums <= bound.seconds * (1 + 1e-9));  // never weaker than the sums it replaced
      CHECK_FALSE(bound.what.empty());
      // The one-lowering bound (taken when it is above the threshold: 0 here): no higher than the two lowerings'.
      const evaluate::StepBound first = one_lowering_bound(l, fidelity);
      INFO("one lowering's bound " << first.seconds << " s (" << first.what << ")");
      CHECK(first.seconds > 0);
      CHECK(first.seconds <= bound.seconds * (1 + 1e-12));
      CHECK(first.seconds <= step);
      CHECK(first.seconds <= reduced);
      if (first.what.find("micro-batches past the lowering") != std::string::npos) ++from_one;
    }
  }
  CHECK(from_one >= 10);
}

TEST_CASE("evaluate::step_lower_bound: most of a compute-bound step, the launches where kernels are tiny",
          "[evaluate]") {
  // One GPU, no communication, 1F1B without pipeline: the compute stream is busy almost all the step.
  const auto [dense, dense_step] = bound_and_step({"llama3-8b", 4, 1, 1, 1, 1, 1, 1, 16, 4096, "none", -1});
  INFO(dense.what);
  CHECK(dense.seconds > 0.8 * dense_step);
  CHECK(dense.what.find("stream 0 of rank 0") != std::string::npos);
  // A 256-wide model on 8 GPUs with a CP 8 ring: every kernel takes far less than its launch (4.24 us).
  const std::string tiny = std::string(TWINSTEP_SOURCE_DIR) + "/tests/sweep/data/tiny.json";
  const auto [ring, ring_step] = bound_and_step({tiny.c_str(), 4, 8, 1, 1, 1, 8, 1, 8, 1024, "none", -1});
  INFO(ring.what);
  CHECK(ring.what.find("host thread") != std::string::npos);
  CHECK(ring.seconds <= ring_step);
  CHECK(ring.seconds > 0.5 * ring_step);
}

TEST_CASE("evaluate::step_lower_bound: sees the pipeline's fill and drain and the TP communication kernels wait for",
          "[evaluate]") {
  // PP 4 over 8 micro-batches, 1F1B: every stage idles about 3 micro-batches' forward and backward; TP 2 without
  // overlap: the all-gathers and reduce-scatters of sequence parallelism (their own stream) sit between the
  // kernels. The per-stream sums see neither.
  const Layout l{"llama3-8b", 8, 8, 2, 4, 1, 1, 1, 8, 2048, "none", -1};
  const auto [bound, step] = bound_and_step(l);
  const double sums = per_stream_sums(l, sim::Fidelity::kAnalytic);
  INFO("bound " << bound.seconds << " s (" << bound.what << "), step " << step << " s, per-stream sums " << sums);
  CHECK(bound.seconds <= step);
  CHECK(sums < 0.85 * step);
  CHECK(bound.seconds > 1.1 * sums);
  CHECK(bound.seconds > 0.88 * step);
  CHECK(bound.what.find("before its first op") != std::string::npos);
}

TEST_CASE("evaluate::step_lower_bound: no bound for a config that does not lower", "[evaluate]") {
  models::ModelSpec m = models::load_model("llama3-8b");
  m.num_layers = 4;
  const auto cluster = topologies::load_cluster("dgx-h100", {0, 8});
  const sim::CostModel costs(cluster, sim::Profile::datasheet_defaults());
  models::RunConfig c = config_of({"llama3-8b", 4, 8, 3, 1, 1, 1, 1, 8, 1024, "none", -1});  // TP 3 of 8 GPUs
  CHECK(evaluate::step_lower_bound(m, costs, c, sim::Fidelity::kAnalytic).seconds == 0);
}
