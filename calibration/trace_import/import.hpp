// `twinstep import-trace`: a real training step's profiler trace (PyTorch profiler / Kineto JSON, one file per rank
// or a folder of them; Nsight Systems SQLite export) matched to the ops of the schedule of that step, written as
// the IR's measured trace, so `compare` and `analyze` read it as they read the backend's. Matching, per rank:
//   1. by name: an activity belongs to the op named like the innermost host range (record_function, NVTX) that was
//      open when the host launched it (Megatron-style NVTX names or calibration/reference/torch_reference.py's);
//   1b. a GEMM's input op (`<gemm>_fp8_cast`) with no range of its own: the non-GEMM kernels of its GEMM's range
//      launched before the GEMM's last kernel (Transformer Engine casts inside the linear layer's range);
//   2. by kind, shape and order, for activities outside any named range: GEMM kernels to GEMM ops of the shape
//      their launching op's Input Dims give, attention kernels to attention ops, NCCL kernels to collectives of
//      their kind, each to the earliest such op of the rank not yet matched.
// What cannot be matched is reported, not guessed: an op with no activity gets a zero-length record after its
// stream predecessor and is listed; activities matched to no op are listed with their time. docs/import-trace.md.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "calibration/trace_import/events.hpp"
#include "schedule/schedule.hpp"
#include "schedule/trace.hpp"

namespace twinstep::calibration::trace_import {

/// What the import matched and what it did not.
struct ImportReport {
  std::size_t ops = 0;           ///< Ops of the schedule (all ranks).
  std::size_t matched_ops = 0;   ///< Ops with at least one activity (or host wait) in every imported step.
  std::size_t by_name_ops = 0;   ///< Of those, matched through a named range.
  std::size_t by_order_ops = 0;  ///< Of those, matched by kind, shape and order.
  std::size_t split_ops = 0;     ///< Of the by-name ones, GEMM input ops timed from their GEMM's range.
  std::size_t steps = 0;
  double gpu_time_s = 0;                          ///< GPU activity time inside the imported steps, all ranks.
  double matched_gpu_time_s = 0;                  ///< The part of it attributed to ops.
  std::vector<std::string> unmatched_ops;         ///< "rank R op ID NAME: why", in op order.
  std::vector<std::string> unmatched_activities;  ///< Grouped: "N x KIND NAME in range RANGE: T ms", most time first.
  std::vector<std::string> unknown_ranges;        ///< Range names that name no op of the schedule.
  [[nodiscard]] double match_rate() const { return gpu_time_s > 0 ? matched_gpu_time_s / gpu_time_s : 0.0; }
};

struct ImportResult {
  schedule::Trace trace;
  ImportReport report;
};

/// Reads the trace file(s) at `path`: a Kineto JSON file, a folder of them (one per rank: the rank from the file's
/// distributedInfo, else the number after "rank" in the file name), or an Nsight Systems SQLite export (by its
/// SQLite header). Throws ParseError / Error naming the file on bad input.
[[nodiscard]] std::vector<RankEvents> read_trace_files(const std::string& path);

/// Matches `ranks` to `schedule` (see the file comment) and builds the measured trace (producer "import", the
/// schedule embedded, one record per op). Throws Error when the trace is of another model or layout (the first
/// mismatch named: a GEMM or attention shape, a layer or micro-batch the schedule lacks, a rank it lacks), when
/// nothing matches, or when the ranks' clocks disagree around a collective.
[[nodiscard]] ImportResult import_trace(const schedule::Schedule& schedule, const std::vector<RankEvents>& ranks);

/// The report as text: counts, match rate, then the unmatched ops, activities and ranges (at most `max_rows` each).
[[nodiscard]] std::string format_report(const ImportReport& report, std::size_t max_rows = 20);

}  // namespace twinstep::calibration::trace_import
