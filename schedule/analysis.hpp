// Trace analysis shared by both producers: step time and per-rank breakdowns whose categories sum to the step.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "schedule/matching.hpp"
#include "schedule/trace.hpp"

namespace twinstep::schedule {

/// Where one rank's step went. Over [0, step_time] every instant falls in exactly one category, so
/// compute + sum(exposed_comm) + host_bound + bubble == step time:
/// - compute: some compute kernel is running on the rank;
/// - exposed_comm[kind]: no compute; a collective/send/recv is transferring (all members have arrived);
///   attributed to the communicator kind of the earliest-started such op (ties: lower op id);
/// - host_bound: the GPU runs nothing while the host thread is busy (issuing ops, or in a host op): the
///   GPU waits for the host;
/// - bubble: everything else: waiting for other ranks (a comm op started but peers not arrived, pipeline
///   bubbles), the host blocked in a host_sync with the GPU idle, and the tail after the rank's last op.
/// The host thread is busy from an op's issue_ns to the next op's issue_ns, except while a host_sync waits.
struct RankBreakdown {
  RankId rank = 0;
  double compute_s = 0;
  std::map<std::string, double> exposed_comm_s;  ///< By communicator kind ("tp", "dp", "ep", "pp", ...).
  double host_bound_s = 0;
  double bubble_s = 0;
  double busy_comm_s = 0;  ///< Total transfer time of comm ops, hidden or not (for "hidden" = busy - exposed).
  [[nodiscard]] double total_s() const;
};

struct Breakdown {
  double step_time_s = 0;            ///< max(end) - min(issue) over all records.
  std::vector<RankBreakdown> ranks;  ///< One per rank present, ascending.
  RankBreakdown mean;                ///< Mean over ranks (its categories still sum to step_time_s).
  double flops = 0;                  ///< Total FLOPs over present ranks.
};

[[nodiscard]] Breakdown analyze(const Trace& trace);

/// analyze() with the schedule's matching (schedule::match of trace.schedule) already at hand, e.g. from the
/// simulation that produced the trace (sim::Options::matching_out).
[[nodiscard]] Breakdown analyze(const Trace& trace, const Matching& matching);

/// The human table `twinstep analyze` prints: step time, then the mean breakdown and one row per rank
/// (at most `max_rank_rows`, the slowest-compute ranks first if more).
[[nodiscard]] std::string format_breakdown(const Breakdown& b, std::size_t max_rank_rows = 16);

}  // namespace twinstep::schedule
