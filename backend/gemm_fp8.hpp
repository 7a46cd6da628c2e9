// FP8 GEMMs (IR dtype fp8) through cuBLASLt, as Transformer Engine runs them on Hopper: both operands K-contiguous
// (the "TN" layout FP8 tensor cores need: activations [m,k], weights [n,k] as nn.Linear stores them; the backward
// GEMMs read the transposed fp8 copies the cast-transpose kernels made), per-tensor scales (device floats, the
// inverse of the quantization scale: CUBLASLT_MATMUL_DESC_A/B_SCALE_POINTER), bf16 output, fp32 accumulation.
// Operand formats from the IR: e4m3 x e4m3 forward, e5m2 gradients against e4m3 in the backward (e5m2 x e5m2 has
// no Hopper kernel). `fast_accum` is TE's fprop setting (no split accumulator); off for dgrad/wgrad.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "schedule/schedule.hpp"

namespace twinstep::backend {

/// Row-major C[m,n] (bf16) = A[m,k] B[n,k]^T, A and B fp8 of the given formats; with `accumulate_fp32`,
/// C[m,n] (fp32) += A B^T (beta 1: Transformer Engine's wgrad GEMM into the fp32 main grad); with `accumulate`,
/// C[m,n] (bf16) += A B^T (into a bf16 main grad).
struct Fp8GemmShape {
  std::uint64_t m = 0, n = 0, k = 0;
  schedule::Fp8Format a = schedule::Fp8Format::kE4M3, b = schedule::Fp8Format::kE4M3;
  bool fast_accum = false;
  bool accumulate_fp32 = false;
  bool accumulate = false;
};

/// A cuBLASLt FP8 matmul of one shape: descriptors and the heuristic's algorithm, made once (at bind time), run many
/// times. Move-only.
class Fp8Gemm {
 public:
  /// BackendError when cuBLASLt has no algorithm for the shape within `workspace_bytes`.
  Fp8Gemm(cublasLtHandle_t lt, const Fp8GemmShape& shape, std::uint64_t workspace_bytes);
  ~Fp8Gemm();
  Fp8Gemm(Fp8Gemm&& other) noexcept;
  Fp8Gemm& operator=(Fp8Gemm&&) = delete;
  Fp8Gemm(const Fp8Gemm&) = delete;
  Fp8Gemm& operator=(const Fp8Gemm&) = delete;

  /// Issues C = (a_scale A)(b_scale B)^T (C += with accumulate_fp32 or accumulate) on `stream`; scales are device
  /// floats.
  void run(const void* a, const void* b, void* c, const float* a_scale, const float* b_scale, void* workspace,
           cudaStream_t stream) const;
  [[nodiscard]] const Fp8GemmShape& shape() const { return shape_; }

 private:
  cublasLtHandle_t lt_ = nullptr;
  Fp8GemmShape shape_;
  std::uint64_t workspace_bytes_ = 0;
  cublasLtMatmulDesc_t op_ = nullptr;
  cublasLtMatrixLayout_t la_ = nullptr, lb_ = nullptr, lc_ = nullptr;
  cublasLtMatmulAlgo_t algo_{};
};

/// Floats between A's and B's scale where both share one allocation: each scale on its own 16-byte boundary.
inline constexpr std::size_t kFp8ScaleStride = 4;

/// CUDA's element type of an fp8 format.
[[nodiscard]] cudaDataType_t fp8_cuda_type(schedule::Fp8Format f);

}  // namespace twinstep::backend
