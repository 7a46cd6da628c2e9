// A lower bound on the simulated step time from the longest paths of one rank per stage (evaluate/bound.hpp).
#include "evaluate/bound.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <map>
#include <utility>

#include "common/error.hpp"
#include "common/units.hpp"
#include "evaluate/critical_path.hpp"
#include "evaluate/periodic.hpp"

namespace twinstep::evaluate {
namespace {

CriticalPath path_at(const models::ModelSpec& model, const sim::CostModel& costs, const models::RunConfig& config,
                     bool count_comm, std::uint64_t micro_batches) {
  models::RunConfig c = config;
  c.global_batch_size =
      static_cast<std::uint32_t>(micro_batches * config.micro_batch_size * models::derived_dp(config));
  models::LowerOptions o;
  o.one_rank_per_stage = true;
  // No op names, as the sweep's simulation lowers without them (sweep/evaluate_point.cpp): both then price every
  // kernel by its class table, so the bound stays a bound of what the sweep simulates, and building every op's name
  // (a profile with per-op tables, e.g. h100x1's eager MoE routing ones, once turned this on) cost the GPT-3 175B
  // grid a quarter of its CPU time.
  o.op_names = false;
  return critical_path(models::lower(model, c, o).schedule, costs, count_comm);
}

std::string describe(const StreamPath& p) {
  char buf[240];
  const std::string through = p.stream == kHostThreadStream ? "the host thread" : "stream " + std::to_string(p.stream);
  std::snprintf(buf, sizeof buf,
                "the path through %s of rank %u at solo times: %.3f ms before its first op, %.3f ms from its first "
                "op's start to its last op's end, %.3f ms after",
                through.c_str(), p.rank, static_cast<double>(p.head_ns) * 1e-6, static_cast<double>(p.local_ns) * 1e-6,
                static_cast<double>(p.tail_ns) * 1e-6);
  return buf;
}

std::string describe_sum(const StreamPath& p) {
  return p.stream == kHostThreadStream
             ? "the kernel launches and host ops of rank " + std::to_string(p.rank) + "'s host thread"
             : "the ops of stream " + std::to_string(p.stream) + " of rank " + std::to_string(p.rank) +
                   " at their solo times";
}

/// The bound from one lowering alone (at `at` micro-batches; `more` = m - at further ones): each (rank, stream)'s
/// path and sum there, plus `more` times the least any one micro-batch adds to the stream (StreamPath::
/// microbatch_min_ns). At most the two-lowering bound where it rests on the same assumptions: the rank's own path
/// grows per micro-batch by at least its stream's sum does (it runs through every op of the stream), and that sum by
/// one micro-batch's ops, no fewer than those of the least of the `at` (of which those between the first and the last
/// are alike: `at` >= 3).
StepBound one_lowering_bound(const CriticalPath& a, std::uint64_t at, std::uint64_t more) {
  StepBound out;
  for (const StreamPath& p : a.streams) {
    const double extra = static_cast<double>(more) * static_cast<double>(p.microbatch_min_ns);
    const double path = (static_cast<double>(p.head_ns + p.local_ns + p.tail_ns) + extra) * 1e-9;
    const double sum = (static_cast<double>(p.sum_ns) + extra) * 1e-9;
    if (std::max(path, sum) <= out.seconds) continue;
    out.seconds = std::max(path, sum);
    StreamPath shown = p;
    shown.local_ns += static_cast<Nanos>(extra);
    out.what = (path >= sum ? describe(shown) : describe_sum(p)) + "; the " + std::to_string(more) +
               " micro-batches past the lowering's " + std::to_string(at) +
               " each at the least one of those adds there";
  }
  return out;
}

}  // namespace

StepBound step_lower_bound(const models::ModelSpec& model, const sim::CostModel& costs, const models::RunConfig& config,
                           sim::Fidelity fidelity, double stop_above_s) {
  const bool count_comm = fidelity == sim::Fidelity::kAnalytic;
  try {
    const std::uint64_t per_step = std::uint64_t{config.micro_batch_size} * models::derived_dp(config);
    if (per_step == 0 || config.global_batch_size % per_step != 0) return {};
    const std::uint64_t m = config.global_batch_size / per_step;
    // The first two short runs of steady-state periodicity: the pipeline full, warm-up and cool-down complete.
    const std::uint32_t group = config.microbatch_group_size_per_vp_stage == 0
                                    ? config.pipeline_model_parallel_size
                                    : config.microbatch_group_size_per_vp_stage;
    const auto counts = periodic_counts(UINT32_MAX, config.pipeline_model_parallel_size,
                                        config.virtual_pipeline_model_parallel_size, group);
    StepBound out;
    if (!counts || m <= (*counts)[1]) {
      const CriticalPath at_m = path_at(model, costs, config, count_comm, m);
      out.seconds = to_seconds(at_m.step_ns);
      out.what = "the longest path through one rank per stage at solo times";
      return out;
    }
    const std::uint64_t g = (*counts)[0], dg = (*counts)[1] - (*counts)[0];
    const CriticalPath a = path_at(model, costs, config, count_comm, g);
    // When the first lowering alone already exceeds the threshold (it needs at least 3 micro-batches: pp + 1 or 2 g),
    // the second is not needed.
    if (g >= 3 && std::isfinite(stop_above_s)) {
      StepBound one = one_lowering_bound(a, g, m - g);
      if (one.seconds > stop_above_s) return one;
    }
    const CriticalPath b = path_at(model, costs, config, count_comm, g + dg);
    std::map<std::pair<schedule::RankId, schedule::StreamId>, const StreamPath*> at_g;
    for (const StreamPath& p : a.streams) at_g[{p.rank, p.stream}] = &p;
    for (const StreamPath& pb : b.streams) {
      const auto it = at_g.find({pb.rank, pb.stream});
      if (it == at_g.end()) continue;  // a stream without ops at g: no line through two lowerings
      const StreamPath& pa = *it->second;
      StreamPath p = pb;
      p.head_ns = std::min(pa.head_ns, pb.head_ns);
      p.tail_ns = std::min(pa.tail_ns, pb.tail_ns);
      // Affine in the micro-batch count: the value at g plus (m - g) times the increment per micro-batch.
      const double local = static_cast<double>(pa.local_ns) + static_cast<double>(pb.local_ns - pa.local_ns) *
                                                                  static_cast<double>(m - g) / static_cast<double>(dg);
      const double path = (static_cast<double>(p.head_ns) + local + static_cast<double>(p.tail_ns)) * 1e-9;
      const double sum = (static_cast<double>(pa.sum_ns) + static_cast<double>(pb.sum_ns - pa.sum_ns) *
                                                               static_cast<double>(m - g) / static_cast<double>(dg)) *
                         1e-9;
      if (std::max(path, sum) <= out.seconds) continue;
      out.seconds = std::max(path, sum);
      if (path >= sum) {
        p.local_ns = static_cast<Nanos>(local);
        out.what = describe(p);
      } else {
        out.what = describe_sum(p);
      }
    }
    return out;
  } catch (const Error&) {
    return {};  // a probe is not a valid layout: no bound
  }
}

}  // namespace twinstep::evaluate
