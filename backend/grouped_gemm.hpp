// A grouped-GEMM op as Transformer Engine runs it for Megatron's --moe-grouped-gemm (TEGroupedMLP -> TE
// GroupedLinear -> general_grouped_gemm -> nvte_multi_stream_cublas_gemm, transformer_engine/common/gemm/
// cublaslt_gemm.cu): one cuBLAS GEMM per group, group i on compute stream i mod N of a fixed set of N streams
// (transformer_engine/common/util/multi_stream.{h,cpp}: num_compute_streams = 4, non-blocking, priority -1), each
// with its own workspace; the streams used wait on an event recorded on the caller's stream, and the caller's stream
// waits on each one's end event. Empty groups take their stream slot and issue nothing.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <functional>
#include <string>
#include <vector>

#include "backend/handles.hpp"
#include "schedule/grouped_gemm_streams.hpp"

namespace twinstep::backend {

/// Transformer Engine's compute-stream count of its multi-stream grouped GEMM (the IR's, which the simulator prices).
using schedule::kGroupedGemmStreams;

/// One side stream of the grouped GEMMs: the stream, a cuBLAS handle bound to it with its own workspace, and the
/// event it records when its share of an op is done.
struct GroupedSideStream {
  CudaStream stream;
  BlasSlot blas;
  CudaEvent done;
};

/// Issues one group's GEMM on `side`'s stream (with its handle and workspace); `group` is the group's index.
using GroupIssue = std::function<void(std::size_t group, const GroupedSideStream& side)>;

/// The kGroupedGemmStreams side streams of one device (made at the device's greatest priority) and the fork event.
class GroupedGemmStreams {
 public:
  GroupedGemmStreams();
  /// Issues `groups` GEMMs through `issue`: forked from `origin` (everything issued on it before runs first) and
  /// joined back to it (what is issued on it after waits for every group).
  void run(cudaStream_t origin, std::size_t groups, const GroupIssue& issue) const;
  /// Streams a grouped op of `groups` groups uses: min(groups, kGroupedGemmStreams).
  [[nodiscard]] static std::size_t streams_used(std::size_t groups);

 private:
  std::vector<GroupedSideStream> sides_;
  CudaEvent fork_;
};

/// What a trace's context says ran grouped-GEMM ops (`ops` of them, the largest with `max_groups` groups).
[[nodiscard]] std::string grouped_gemm_note(std::size_t ops, std::size_t max_groups);

}  // namespace twinstep::backend
