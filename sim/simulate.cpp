// simulate(): checks that the schedule fits the cluster, matches communication ops, runs the semantics core
// against the chosen resource model and assembles the trace with its context (cluster, profile, fidelity, hash).
#include "sim/simulate.hpp"

#include <cstdio>

#include "common/error.hpp"
#include "schedule/json.hpp"
#include "schedule/matching.hpp"

namespace twinstep::sim {

std::string fnv1a_hex(std::string_view text) {
  std::uint64_t h = 1469598103934665603ull;
  for (unsigned char c : text) {
    h ^= c;
    h *= 1099511628211ull;
  }
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

schedule::Trace simulate(const schedule::Schedule& schedule, const topologies::Cluster& cluster,
                         const CostModel& costs, const Options& options) {
  if (options.fidelity == "flow") {
    throw Error("--fidelity flow: the SimGrid flow model lands in issue 6 and is not available in this build; "
                "use --fidelity analytic");
  }
  if (options.fidelity != "analytic") {
    throw Error("--fidelity \"" + options.fidelity + "\" is unknown; use analytic (or flow, from issue 6)");
  }
  std::uint32_t needed = schedule.world_size;
  for (auto r : schedule.ranks) needed = std::max(needed, r + 1);
  for (const auto& op : schedule.ops) needed = std::max(needed, op.rank + 1);
  if (needed > cluster.num_gpus()) {
    const std::uint32_t gpn = cluster.node.gpus_per_node;
    throw NotFeasibleError("schedule \"" + schedule.name + "\" needs " + std::to_string(needed) + " ranks but " +
                           cluster.describe() + " has " + std::to_string(cluster.num_gpus()) +
                           " GPUs; pass --nodes " + std::to_string((needed + gpn - 1) / gpn) + " or more");
  }
  const schedule::Matching matching = schedule::match(schedule);
  const SimContext ctx{schedule, matching, cluster, costs};
  auto model = make_analytic_model(ctx);

  schedule::Trace trace;
  trace.producer = "sim";
  trace.records = run_semantics(ctx, *model);
  Nanos first = 0, last = 0;
  bool any = false;
  for (const auto& r : trace.records) {
    if (!any) {
      first = r.issue_ns;
      last = r.end_ns;
      any = true;
    }
    first = std::min(first, r.issue_ns);
    last = std::max(last, r.end_ns);
  }
  trace.step_times_ns.push_back(last - first);
  trace.context = options.context;
  trace.context["cluster"] = cluster.describe();
  trace.context["gpu"] = cluster.node.gpu.name;
  trace.context["profile"] = costs.profile().name;
  trace.context["fidelity"] = options.fidelity;
  trace.context["schedule_hash"] = "fnv1a64:" + fnv1a_hex(schedule::schedule_to_json(schedule));
  trace.context["simulator"] = "twinstep 0.1.0 sim/analytic";
  trace.schedule = schedule;
  return trace;
}

}  // namespace twinstep::sim
