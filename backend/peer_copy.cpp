// Runtime::measure_peer_copies: a bare cudaMemcpyPeerAsync from rank 0's GPU to rank 1's, timed with CUDA events,
// for calibrate's copy-engine group (calibration/suite.hpp kCopyEngineGroup, fitted into the profile's
// copy_engine.nvlink_efficiency). It is not the executor's send/recv: copy_engine pairs run as NCCL there until the
// peer-mapped path is built (peer_memory.hpp), and an NCCL kernel is not the copy engine.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "backend/error.hpp"
#include "backend/runtime.hpp"
#include "common/error.hpp"

namespace twinstep::backend {
namespace {

namespace sch = twinstep::schedule;

/// Copies before the timed ones (the first copy maps the peer's pages), and copies timed per size: the figure is
/// their mean, nccl-tests' protocol (warm-up, then -n timed iterations between two events).
constexpr int kWarmupCopies = 3;
constexpr int kTimedCopies = 20;

/// rank 0's part: the mean time (ns) of a cudaMemcpyPeerAsync of each of `sends`' sizes from GPU `src` to GPU `dst`.
std::vector<std::int64_t> time_peer_copies(int src, int dst, const std::string& group,
                                           const std::vector<std::pair<std::uint32_t, std::uint64_t>>& sends) {
  std::vector<std::int64_t> ns(sends.size(), 0);
  int can = 0;
  TWINSTEP_CUDA_CHECK(cudaDeviceCanAccessPeer(&can, src, dst));
  if (can == 0 || src == dst) {
    throw NotFeasibleError("calibration group " + group + ": GPU " + std::to_string(src) + " cannot copy to GPU " +
                           std::to_string(dst) +
                           " as a peer (both ranks must see every GPU of the node: do not restrict "
                           "CUDA_VISIBLE_DEVICES per rank)");
  }
  TWINSTEP_CUDA_CHECK(cudaSetDevice(src));
  const cudaError_t enabled = cudaDeviceEnablePeerAccess(dst, 0);
  if (enabled == cudaErrorPeerAccessAlreadyEnabled) {
    (void)cudaGetLastError();  // clear the (non-sticky) error the call recorded
  } else {
    TWINSTEP_CUDA_CHECK(enabled);
  }
  std::uint64_t most = 1;
  for (const auto& send : sends) most = std::max(most, send.second);
  DeviceMemory from = device_alloc(most);
  TWINSTEP_CUDA_CHECK(cudaMemset(from.get(), 0x5a, most));  // a pattern, never zeros
  TWINSTEP_CUDA_CHECK(cudaSetDevice(dst));
  DeviceMemory to = device_alloc(most);
  TWINSTEP_CUDA_CHECK(cudaSetDevice(src));
  CudaStream stream = make_stream(0);
  CudaEvent begin = make_event();
  CudaEvent end = make_event();
  for (std::size_t i = 0; i < sends.size(); ++i) {
    const std::uint64_t bytes = sends[i].second;
    for (int w = 0; w < kWarmupCopies; ++w) {
      TWINSTEP_CUDA_CHECK(cudaMemcpyPeerAsync(to.get(), dst, from.get(), src, bytes, stream.get()));
    }
    TWINSTEP_CUDA_CHECK(cudaEventRecord(begin.get(), stream.get()));
    for (int c = 0; c < kTimedCopies; ++c) {
      TWINSTEP_CUDA_CHECK(cudaMemcpyPeerAsync(to.get(), dst, from.get(), src, bytes, stream.get()));
    }
    TWINSTEP_CUDA_CHECK(cudaEventRecord(end.get(), stream.get()));
    TWINSTEP_CUDA_CHECK(cudaEventSynchronize(end.get()));
    float ms = 0;
    TWINSTEP_CUDA_CHECK(cudaEventElapsedTime(&ms, begin.get(), end.get()));
    ns[i] = std::llround(static_cast<double>(ms) * 1e6 / kTimedCopies);
  }
  return ns;
}

}  // namespace

sch::Trace Runtime::measure_peer_copies(const sch::Schedule& s) {
  Impl& im = *impl_;
  if (im.mpi.size() < 2) {
    throw NotFeasibleError(
        "calibration group " + s.name +
        ": a peer copy needs two GPUs (rank 0 and rank 1); run calibrate under mpirun -np 2 or more");
  }
  const std::vector<std::int64_t> devices = im.mpi.all_gather(std::vector<std::int64_t>{im.device});
  const std::vector<std::string> hosts = im.mpi.all_gather(im.host);
  // The sends of rank 0 to rank 1, in op order: the sizes to time.
  std::vector<std::pair<std::uint32_t, std::uint64_t>> sends;
  for (const auto& op : s.ops) {
    const auto* send = std::get_if<sch::Send>(&op.body);
    if (send != nullptr && op.rank == 0 && send->peer == 1) sends.emplace_back(send->tag, send->bytes);
  }
  std::vector<std::int64_t> ns(sends.size(), 0);
  std::string problem;
  if (rank() == 0) {
    try {
      if (hosts[0] != hosts[1]) {
        throw NotFeasibleError("calibration group " + s.name + ": ranks 0 and 1 run on " + hosts[0] + " and " +
                               hosts[1] +
                               "; a peer copy needs both GPUs in one node (place ranks 0 and 1 on one host)");
      }
      ns = time_peer_copies(im.device, static_cast<int>(devices[1]), s.name, sends);
    } catch (const Error& e) {
      problem = e.what();
    }
  }
  // Rank 0's verdict first, so no rank waits for figures that will not come.
  std::int64_t failed = problem.empty() ? 0 : 1;
  im.mpi.broadcast(&failed, sizeof failed, 0);
  if (failed != 0) {
    throw NotFeasibleError(rank() == 0 ? problem
                                       : "calibration group " + s.name +
                                             ": rank 0 could not time the peer copies (its error says why)");
  }
  // Every rank gets the figures: the suite's runner reads the trace on every rank.
  if (!ns.empty()) im.mpi.broadcast(ns.data(), ns.size() * sizeof(std::int64_t), 0);

  std::map<std::uint32_t, std::int64_t> by_pair;  // by tag: a send and its recv share it
  for (std::size_t i = 0; i < sends.size(); ++i) by_pair[sends[i].first] = ns[i];
  sch::Trace t;
  t.producer = "backend";
  t.schedule = s;
  cudaDeviceProp prop{};
  TWINSTEP_CUDA_CHECK(cudaGetDeviceProperties(&prop, im.device));
  t.context["gpu"] = prop.name;
  t.context["measure"] = "cudaMemcpyPeerAsync from GPU " + std::to_string(devices[0]) + " (rank 0) to GPU " +
                         std::to_string(devices[1]) + " (rank 1) on " + hosts[0] + ": mean of " +
                         std::to_string(kTimedCopies) + " copies between CUDA events after " +
                         std::to_string(kWarmupCopies) + " warm-up copies, per size";
  // One record per op in id order: each transfer back to back on a common time line, a send and its recv alike.
  Nanos at = 0, total = 0;
  std::map<std::uint32_t, Nanos> start_of;
  for (const auto& [key, d] : by_pair) {
    start_of[key] = at;
    at += d;
    total += d;
  }
  for (const auto& op : s.ops) {
    sch::OpRecord rec{op.id, op.rank, 0, 0, 0};
    std::uint32_t tag = 0;
    bool transfer = false;
    if (const auto* send = std::get_if<sch::Send>(&op.body)) {
      tag = send->tag;
      transfer = true;
    } else if (const auto* recv = std::get_if<sch::Recv>(&op.body)) {
      tag = recv->tag;
      transfer = true;
    }
    const auto found = by_pair.find(tag);
    if (transfer && found != by_pair.end()) {
      rec.issue_ns = rec.start_ns = start_of[found->first];
      rec.end_ns = rec.start_ns + found->second;
    }
    t.records.push_back(rec);
  }
  t.step_times_ns = {total};
  return t;
}

}  // namespace twinstep::backend
