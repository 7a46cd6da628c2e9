// The backend's GEMM call (one cuBLAS strided-batched GEMM in row-major terms, as compute ops issue it) and the
// mapping of IR dtypes to CUDA's and to the backend kernels'.
#pragma once

#include <cublas_v2.h>

#include <cstdint>
#include <optional>

#include "backend/kernels.hpp"
#include "schedule/schedule.hpp"

namespace twinstep::backend {

/// Row-major C[m,n] = alpha op(A)[m,k] op(B)[k,n] + beta C, `batch` products `stride_*` elements apart; fp32
/// accumulation. Leading dimensions are row strides in elements.
struct GemmCall {
  bool trans_a = false, trans_b = false;
  std::uint64_t m = 0, n = 0, k = 0, batch = 1;
  const void* a = nullptr;
  const void* b = nullptr;
  void* c = nullptr;
  std::uint64_t lda = 0, ldb = 0, ldc = 0;
  long long stride_a = 0, stride_b = 0, stride_c = 0;
  float beta = 0.0f;
  cudaDataType_t type = CUDA_R_16BF;    ///< A's and B's element type.
  cudaDataType_t c_type = CUDA_R_16BF;  ///< C's: `type`, or fp32 for an accumulating GEMM (accumulate_into_fp32).
};

/// Issues `g` on the handle's stream (cublasGemmEx, or cublasGemmStridedBatchedEx when batch > 1). Empty GEMMs
/// issue nothing.
void run_gemm(cublasHandle_t h, const GemmCall& g);

/// A GEMM over contiguous, densely packed operands (leading dimensions from the shape).
[[nodiscard]] GemmCall plain_gemm(std::uint64_t m, std::uint64_t n, std::uint64_t k, bool ta, bool tb, const void* a,
                                  const void* b, void* c, std::uint64_t batch, cudaDataType_t type);

/// Makes `g` add its product into an fp32 C (IR accumulate_fp32: C fp32, beta 1), as Megatron's fused wgrad
/// accumulation does (cublasGemmEx with an fp32 C).
void accumulate_into_fp32(GemmCall& g);
/// Makes `g` add its product into its C of the output dtype (IR accumulate: beta 1), as the fused wgrad
/// accumulation into bf16 main grads does (Apex wgrad_gemm_accum_fp16).
void accumulate_into_c(GemmCall& g);

/// cuBLAS element type of an IR dtype (bf16, fp16; fp32 otherwise).
[[nodiscard]] cudaDataType_t cuda_dtype(schedule::DType t);

/// The backend kernels' element type of an IR dtype; nullopt where they have none.
[[nodiscard]] std::optional<KernelDType> kernel_dtype(schedule::DType t);

}  // namespace twinstep::backend
