// Profiler traces of a real training step read into one shape, whatever wrote them (PyTorch profiler / Kineto
// Chrome-trace JSON, Nsight Systems SQLite export): per rank, the GPU activities with the host ranges that were open
// when the host launched them and the framework op that launched them, and the host calls that waited for the GPU.
// The matcher (import.hpp) turns that into the IR's measured trace of a schedule.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common/units.hpp"

namespace twinstep::calibration::trace_import {

enum class ActivityKind : std::uint8_t { kKernel, kMemcpy, kMemset };

/// The framework op that launched an activity, with the input shapes the profiler recorded (PyTorch's
/// record_shapes "Input Dims"); empty when the trace has none.
struct LaunchOp {
  std::string name;                             ///< "aten::mm", "aten::_scaled_dot_product_cudnn_attention", ...
  std::vector<std::vector<std::int64_t>> dims;  ///< One shape per input, in the op's argument order.
  Nanos start_ns = -1;                          ///< When the host entered this call: tells two calls apart.
};

/// One kernel, copy or memset on the GPU.
struct GpuActivity {
  ActivityKind kind = ActivityKind::kKernel;
  std::string name;
  std::int64_t stream = 0;
  Nanos start_ns = 0;
  Nanos end_ns = 0;
  Nanos launch_ns = -1;             ///< Start of the host API call that launched it; -1: unknown.
  std::vector<std::string> ranges;  ///< Host ranges (record_function, NVTX) open at the launch, outermost first.
  std::vector<Nanos> range_starts;  ///< Their start times: tell apart the repeats of one name (steps).
  LaunchOp op;
  std::string where;  ///< "FILE: traceEvents[123]" or "FILE: CUPTI_ACTIVITY_KIND_KERNEL rowid 45", for messages.
};

/// A host call that blocked until GPU work had completed (cudaStreamSynchronize, cudaDeviceSynchronize, a
/// synchronous cudaMemcpy), with the ranges open around it.
struct HostWait {
  Nanos start_ns = 0;
  Nanos end_ns = 0;
  std::vector<std::string> ranges;
  std::vector<Nanos> range_starts;
};

/// Everything read for one rank.
struct RankEvents {
  std::uint32_t rank = 0;
  bool rank_known = false;  ///< The file said which rank it is (Kineto distributedInfo); else the caller decides.
  std::string source;       ///< The file.
  std::map<std::string, std::string> context;  ///< GPU name, profiler versions, the schedule the trace names.
  std::vector<GpuActivity> activities;         ///< By start time.
  std::vector<HostWait> waits;                 ///< By start time.
  std::vector<std::string> range_names;        ///< Every distinct host range name, sorted (for the report).
};

/// A host interval on one thread (a range or a framework op) and a host instant on one thread (a launch).
struct HostInterval {
  std::uint64_t thread = 0;
  Nanos start_ns = 0;
  Nanos end_ns = 0;
};
struct HostInstant {
  std::uint64_t thread = 0;
  Nanos at_ns = 0;
};

/// For each instant, the indices of the intervals on its thread that contain it (start <= at <= end), by start
/// time (outermost first for nested ones). Intervals need not nest (a backward range may open in one autograd
/// node and close in a later one). O((intervals + instants) x depth).
[[nodiscard]] std::vector<std::vector<std::size_t>> enclosing(const std::vector<HostInterval>& intervals,
                                                              const std::vector<HostInstant>& instants);

/// One rank's host side as a reader collects it, beside the GPU activities it put in RankEvents::activities.
struct HostSide {
  std::vector<std::optional<HostInstant>> launch;  ///< Per activity, in its order: the API call that launched it.
  std::vector<HostInterval> ranges;                ///< Named host ranges (record_function, NVTX).
  std::vector<std::string> range_names;            ///< Per range.
  std::vector<HostInterval> op_intervals;          ///< Framework ops with recorded shapes (Kineto's cpu_op); or none.
  std::vector<LaunchOp> ops;                       ///< Per op interval.
  std::vector<HostWait> waits;                     ///< Synchronising calls, ranges not yet attached.
  std::vector<HostInstant> wait_at;                ///< Per wait: its thread and start.
};

/// Completes `ev` from `host`, the same for every reader: each activity's launch_ns, the ranges open at its launch
/// (outermost first) and the innermost framework op around it; each wait with the ranges open at its start;
/// activities and waits sorted by start; the distinct range names, sorted.
void attach_host_side(RankEvents& ev, HostSide host);

/// Reads a PyTorch profiler (Kineto) Chrome-trace JSON, as torch 2.x's export_chrome_trace writes it. Throws
/// ParseError naming the file and the event (JSON pointer) on malformed input.
[[nodiscard]] RankEvents read_kineto(const std::string& path);

/// Reads an Nsight Systems SQLite export (`nsys export --type sqlite`): one RankEvents per profiled process that
/// ran GPU work, ordered by the lowest CUDA device id the process used (rank_known false). Throws ParseError
/// naming the file and table.
[[nodiscard]] std::vector<RankEvents> read_nsys_sqlite(const std::string& path);

}  // namespace twinstep::calibration::trace_import
