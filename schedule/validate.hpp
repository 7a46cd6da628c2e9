// Validation of a schedule before anything runs: every problem at once, each naming the op and the field and
// saying what would fix it. After validation passes, executors trust the schedule (a broken invariant is a bug).
#pragma once

#include <string>
#include <vector>

#include "schedule/schedule.hpp"

namespace twinstep::schedule {

struct Diagnostic {
  OpId op = kNoOp;      ///< The op concerned, or kNoOp for schedule-level problems.
  std::string field;    ///< JSON-ish path of the field ("deps", "body.comm", "communicators[3].members").
  std::string message;  ///< What is wrong and what to do.
};

/// All problems (empty means valid): ids not dense, unknown ranks/streams/communicators, ranks not members of
/// the communicator they use, mismatched collective sequences/kinds/sizes/dtypes across members, all_to_all
/// split lists of the wrong size, unmatched send/recv (by comm, peer, tag, order), size and transport mismatches,
/// a sm_kernel transfer without SMs (whether a copy_engine pair shares an NVLink domain needs the cluster: the
/// simulator checks it, sim::simulate), deps
/// and host_sync targets that are not earlier ops of the same rank, and potential deadlocks (a cycle in the
/// wait-for graph of program order, stream order, deps and rendezvous), spelled out op by op.
[[nodiscard]] std::vector<Diagnostic> validate(const Schedule& schedule);

/// One line: `op 412 "L3.mb2.fwd.qkv" (rank 5) deps: dep 977 is not an earlier op of rank 5 (...)`.
[[nodiscard]] std::string format_diagnostic(const Diagnostic& d, const Schedule& schedule);

/// Throws twinstep::ValidationError with every formatted diagnostic if validate() finds any.
void check(const Schedule& schedule);

}  // namespace twinstep::schedule
