// A lower bound on the simulated step time from each stage's kernels (evaluate/bound.hpp).
#include "evaluate/bound.hpp"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <map>
#include <tuple>
#include <utility>
#include <variant>

#include "common/error.hpp"
#include "common/units.hpp"

namespace twinstep::evaluate {
namespace {

/// The two sums of one lowering: per (rank, stream) the solo times of its ops, per rank its host thread's launches
/// and host ops (seconds). Keys: {rank, stream}; stream kHostThread for the host thread.
constexpr std::uint32_t kHostThread = UINT32_MAX;
using Sums = std::map<std::pair<schedule::RankId, std::uint32_t>, double>;

Sums sums_of(const schedule::Schedule& s, const sim::CostModel& costs, bool count_comm) {
  Sums out;
  std::map<std::tuple<schedule::CommId, schedule::CollectiveKind, std::uint64_t>, double> collective_s;
  for (const auto& op : s.ops) {
    if (const auto* h = std::get_if<schedule::Host>(&op.body)) {
      out[{op.rank, kHostThread}] += to_seconds(h->duration_ns);
      continue;
    }
    out[{op.rank, kHostThread}] += to_seconds(costs.launch_ns(op));
    double& stream = out[{op.rank, op.stream}];
    if (const auto* c = std::get_if<schedule::Compute>(&op.body)) {
      stream += costs.kernel_cost(*c, op.name).solo_time_s();
    } else if (!count_comm) {
      continue;
    } else if (const auto* snd = std::get_if<schedule::Send>(&op.body)) {
      stream += costs.p2p_cost(static_cast<double>(snd->bytes), op.rank, snd->peer).time_s();
    } else if (const auto* rcv = std::get_if<schedule::Recv>(&op.body)) {
      stream += costs.p2p_cost(static_cast<double>(rcv->bytes), rcv->peer, op.rank).time_s();
    } else if (const auto* coll = std::get_if<schedule::Collective>(&op.body);
               coll != nullptr && coll->kind != schedule::CollectiveKind::kAllToAll) {
      const auto key = std::make_tuple(coll->comm, coll->kind, coll->bytes);
      auto it = collective_s.find(key);
      if (it == collective_s.end()) {
        const sim::CommSpan span = costs.span(s.communicators[coll->comm]);
        it = collective_s
                 .emplace(key, costs.collective_cost(coll->kind, static_cast<double>(coll->bytes), span).time_s())
                 .first;
      }
      stream += it->second;
    }
  }
  return out;
}

Sums sums_at(const models::ModelSpec& model, const sim::CostModel& costs, const models::RunConfig& config,
             bool count_comm, std::uint64_t micro_batches) {
  models::RunConfig c = config;
  c.global_batch_size =
      static_cast<std::uint32_t>(micro_batches * config.micro_batch_size * models::derived_dp(config));
  models::LowerOptions o;
  o.one_rank_per_stage = true;
  o.op_names = false;
  return sums_of(models::lower(model, c, o).schedule, costs, count_comm);
}

}  // namespace

StepBound step_lower_bound(const models::ModelSpec& model, const sim::CostModel& costs, const models::RunConfig& config,
                           sim::Fidelity fidelity) {
  const bool count_comm = fidelity == sim::Fidelity::kAnalytic;
  try {
    const std::uint64_t per_step = std::uint64_t{config.micro_batch_size} * models::derived_dp(config);
    if (per_step == 0 || config.global_batch_size % per_step != 0) return {};
    const std::uint64_t m = config.global_batch_size / per_step;
    const std::uint32_t pp = config.pipeline_model_parallel_size;
    const std::uint64_t g =
        config.virtual_pipeline_model_parallel_size > 1
            ? std::max<std::uint32_t>(
                  pp, config.microbatch_group_size_per_vp_stage == 0 ? pp : config.microbatch_group_size_per_vp_stage)
            : 1;
    Sums at_m;
    if (m <= 2 * g) {
      at_m = sums_at(model, costs, config, count_comm, m);
    } else {
      const Sums a = sums_at(model, costs, config, count_comm, g), b = sums_at(model, costs, config, count_comm, 2 * g);
      // Affine in the micro-batch count: the value at g plus (m - g) times the increment per micro-batch.
      for (const auto& [key, vb] : b) {
        const auto it = a.find(key);
        const double va = it == a.end() ? 0.0 : it->second;
        at_m[key] = va + (vb - va) * static_cast<double>(m - g) / static_cast<double>(g);
      }
    }
    StepBound out;
    for (const auto& [key, v] : at_m) {
      if (v <= out.seconds) continue;
      out.seconds = v;
      char buf[160];
      if (key.second == kHostThread) {
        std::snprintf(buf, sizeof buf, "the kernel launches and host ops of rank %u's host thread", key.first);
      } else {
        std::snprintf(buf, sizeof buf, "the ops of stream %u of rank %u at their solo times", key.second, key.first);
      }
      out.what = buf;
    }
    return out;
  } catch (const Error&) {
    return {};  // a probe is not a valid layout: no bound
  }
}

}  // namespace twinstep::evaluate
