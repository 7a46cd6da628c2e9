// Host-side launchers of the backend's own CUDA kernels (kernels.cu): the bandwidth-bound elementwise kernel, the
// row softmax of attention, the fused Adam step, buffer fills, and the empty kernel used to measure issue cost.
// GEMMs are cuBLAS's, collectives NCCL's; these are the only kernels we write.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace twinstep::backend {

/// Element types the kernels accept (GEMM and collective dtypes are mapped separately).
enum class KernelDType : std::uint8_t { kBF16, kFP16, kFP32 };

/// Fills `bytes` with 16-bit words that are small normal numbers when read as bf16, fp16 or fp32 (never zeros:
/// zeros run faster than real data). Deterministic in `seed`.
void launch_fill_pattern(void* ptr, std::size_t bytes, std::uint32_t seed, cudaStream_t stream);

/// Reads `bytes_read` from `in` and writes as many to `out` (out = in * 1.0001 as 16-byte words of bf16 pairs).
/// Zero bytes launches an empty one-thread kernel.
void launch_elementwise(const void* in, void* out, std::size_t bytes_read, int sm_count, cudaStream_t stream);

/// In-place numerically stable softmax over each of `rows` rows of `cols` elements (row-major, contiguous).
void launch_softmax_rows(void* data, std::size_t rows, std::size_t cols, KernelDType dtype, cudaStream_t stream);

/// One fused Adam step over `n` parameters: fp32 master weights, moments m and v, gradient and working
/// parameter in `param_dtype`. Reads grad, master, m, v; writes master, m, v, param.
void launch_adam(void* param, float* master, const void* grad, float* m, float* v, std::size_t n,
                 KernelDType param_dtype, int sm_count, cudaStream_t stream);

/// An empty kernel <<<1, 1>>>: the cost of issuing one op and nothing else.
void launch_empty(cudaStream_t stream);

}  // namespace twinstep::backend
