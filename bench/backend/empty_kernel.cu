// The bare reference loop of the issue-overhead bench: kernel launches with no executor around them.
#include <cuda_runtime.h>

__global__ void twinstep_bench_empty_kernel() {}

/// Launches the empty kernel on `stream`; returns the launch status.
cudaError_t twinstep_bench_launch_empty(cudaStream_t stream) {
  twinstep_bench_empty_kernel<<<1, 1, 0, stream>>>();
  return cudaGetLastError();
}
