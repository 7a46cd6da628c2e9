// The trace: what happened (sim) or was measured (backend) for every op of a schedule.
// Both executors write it; analysis (schedule/analysis.hpp) and calibration/compare read it.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "common/units.hpp"
#include "schedule/schedule.hpp"

namespace twinstep::schedule {

/// Times of one op on one rank, integer ns from the step's common origin. `issue` is when the host thread
/// issued it (for host ops: began it); `start`/`end` when it ran on its stream (for host ops: the host work;
/// for host_sync: the wait). A collective's start is when this member's stream reached it, so start..end
/// includes waiting for the other members.
struct OpRecord {
  OpId op = 0;
  RankId rank = 0;
  Nanos issue_ns = 0;
  Nanos start_ns = 0;
  Nanos end_ns = 0;

  bool operator==(const OpRecord&) const = default;  ///< Field-wise (round-trip tests).
};

struct Trace {
  static constexpr int kSchemaVersion = 1;
  std::string producer;                        ///< "sim" or "backend".
  std::map<std::string, std::string> context;  ///< Versions, GPU, topology, profile, input hashes, date.
  std::vector<OpRecord> records;               ///< One per op of `schedule`, ordered by op id.
  std::vector<Nanos> step_times_ns;            ///< Backend: every measured step; sim: the one step.
  Schedule schedule;                           ///< The schedule that was executed, so a trace stands alone.

  bool operator==(const Trace&) const = default;  ///< Field-wise (round-trip tests).
};

}  // namespace twinstep::schedule
