// Transformer Engine's multi-stream grouped GEMM (grouped_gemm.hpp): side streams, fork and join.
#include "backend/grouped_gemm.hpp"

#include <algorithm>

#include "backend/error.hpp"
#include "backend/plan.hpp"

namespace twinstep::backend {

GroupedGemmStreams::GroupedGemmStreams() : fork_(make_event()) {
  int least = 0, greatest = 0;
  TWINSTEP_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
  for (std::size_t i = 0; i < kGroupedGemmStreams; ++i) {
    GroupedSideStream side{make_stream(greatest), make_blas_slot(kCublasWorkspaceBytes), make_event()};
    TWINSTEP_CUBLAS_CHECK(cublasSetStream(side.blas.handle.get(), side.stream.get()));
    sides_.push_back(std::move(side));
  }
}

std::size_t GroupedGemmStreams::streams_used(std::size_t groups) { return std::min(groups, kGroupedGemmStreams); }

void GroupedGemmStreams::run(cudaStream_t origin, std::size_t groups, const GroupIssue& issue) const {
  const std::size_t used = streams_used(groups);
  if (used == 0) return;
  TWINSTEP_CUDA_CHECK(cudaEventRecord(fork_.get(), origin));
  for (std::size_t s = 0; s < used; ++s)
    TWINSTEP_CUDA_CHECK(cudaStreamWaitEvent(sides_[s].stream.get(), fork_.get(), 0));
  for (std::size_t g = 0; g < groups; ++g) issue(g, sides_[g % kGroupedGemmStreams]);
  for (std::size_t s = 0; s < used; ++s) {
    TWINSTEP_CUDA_CHECK(cudaEventRecord(sides_[s].done.get(), sides_[s].stream.get()));
    TWINSTEP_CUDA_CHECK(cudaStreamWaitEvent(origin, sides_[s].done.get(), 0));
  }
}

std::string grouped_gemm_note(std::size_t ops, std::size_t max_groups) {
  return std::to_string(ops) + " grouped-GEMM ops: per-group cuBLAS GEMMs (fp8: cuBLASLt) over " +
         std::to_string(std::min(max_groups, kGroupedGemmStreams)) + " side streams (up to " +
         std::to_string(max_groups) + " groups per op, group i on stream i mod " + std::to_string(kGroupedGemmStreams) +
         "), forked from and joined to the op's stream by events, as Transformer Engine's GroupedLinear "
         "(nvte_multi_stream_cublas_gemm); each op's record spans fork to join";
}

}  // namespace twinstep::backend
