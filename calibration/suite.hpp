// Microbenchmark suites as schedules: GEMM/attention/elementwise sweeps (with the shapes the zoo's lowering
// produces), every collective over sizes and spans, send/recv, uneven all-to-all, issue and host-sync costs and
// GEMM+collective co-runs, and the probes that read their figures from a trace. Running a suite into its raw
// JSON-lines file, and reading it back: raw_file.hpp.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "schedule/schedule.hpp"
#include "schedule/trace.hpp"

namespace twinstep::calibration {

/// How a probe's figure is read from a measured (or simulated) trace.
enum class Metric : std::uint8_t {
  kDuration,  ///< min over `ops` of end - start (the member that arrived last sees the bare collective).
  kIssue,     ///< (issue of the last op - issue of the first) / (count - 1): host cost per issued op.
  kWake,      ///< end of the host_sync `ops[0]` - end of its target `ref`: host wake-up after completion.
};

/// One figure of a benchmark group: what it measures and where to read it.
struct Probe {
  std::string name;    ///< Unique in the suite, e.g. "gemm.m4096.n4096.k4096".
  std::string family;  ///< "gemm", "attention_fwd", "attention_bwd", "elementwise", "coll.all_reduce", ...
  Metric metric = Metric::kDuration;
  std::vector<schedule::OpId> ops;
  schedule::OpId ref = schedule::kNoOp;
  double size = 0;                       ///< FLOPs (compute classes) or bytes (memory-bound kernels and communication).
  std::map<std::string, double> params;  ///< Shape and other parameters, for the raw file and reports.
};

/// A schedule run once by the backend and the probes read from its trace.
struct BenchGroup {
  std::string name;
  schedule::Schedule schedule;
  std::vector<Probe> probes;
};

/// One measured figure.
struct Measurement {
  std::string group;
  std::string probe;
  std::string family;
  double size = 0;
  double value_s = 0;
};

/// Non-causal attention kernels (families attention_noncausal_fwd / _bwd), measured apart from the causal ones.
inline constexpr const char* kAttentionNoncausalGroup = "compute.attention_noncausal";
/// The co-run group of a compute list beside a recv that waits for its peer (probes "<group>.<kernel>.solo" and
/// "<group>.<kernel>.waiting", families "recv_wait.solo" / "recv_wait.waiting", and "<group>.recv").
inline constexpr const char* kRecvWaitGroup = "corun.recv_wait";
/// The same with four recvs waiting at once (default suite only): sizes Interference::waiting_sms_per_channel_more.
inline constexpr const char* kRecvWait4Group = "corun.recv_wait4";

/// The copy engine's peer-copy group (probes "p2p.copy_engine.<bytes>", family "copy_engine": the TP ring
/// exchange's chunk sizes from rank 0 to rank 1), on two GPUs or more. Its schedule's meta "measure" is
/// kPeerCopyMeasure: the runner times a bare cudaMemcpyPeerAsync between the two GPUs for each send instead of
/// executing the schedule (backend Runtime::measure_peer_copies), and fills the trace of the schedule's ops with it.
inline constexpr const char* kCopyEngineGroup = "p2p.copy_engine";
inline constexpr const char* kPeerCopyMeasure = "cudaMemcpyPeerAsync";

/// The suites: "default" (the full sweep: collectives 1 KiB..1 GiB) and "quick" (a few points of each).
/// `world_size` >= 1 is the number of GPUs (communication benchmarks need 2 or more). Deterministic.
[[nodiscard]] std::vector<BenchGroup> make_suite(const std::string& suite, std::uint32_t world_size);

/// The groups `make_suite` leaves out on `world_size` GPUs, one line each saying why (printed by calibrate).
[[nodiscard]] std::vector<std::string> skipped_groups(std::uint32_t world_size);

/// The probe figures of `group` read from `trace` (a trace of `group.schedule`). Throws Error if records miss.
[[nodiscard]] std::vector<Measurement> extract(const BenchGroup& group, const schedule::Trace& trace);

}  // namespace twinstep::calibration
