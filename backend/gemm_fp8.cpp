// cuBLASLt FP8 GEMMs (see gemm_fp8.hpp).
#include "backend/gemm_fp8.hpp"

#include <cstdint>
#include <utility>

#include "backend/error.hpp"

namespace twinstep::backend {

cudaDataType_t fp8_cuda_type(schedule::Fp8Format f) {
  return f == schedule::Fp8Format::kE5M2 ? CUDA_R_8F_E5M2 : CUDA_R_8F_E4M3;
}

Fp8Gemm::Fp8Gemm(cublasLtHandle_t lt, const Fp8GemmShape& shape, std::uint64_t workspace_bytes)
    : lt_(lt), shape_(shape), workspace_bytes_(workspace_bytes) {
  // Column-major view: C^T[n,m] = B[n,k] A[m,k]^T, i.e. cuBLASLt's A is our B read transposed (op T over a
  // k x n column-major matrix), its B our A (op N over k x m): the TN layout.
  const auto m = shape.m, n = shape.n, k = shape.k;
  TWINSTEP_CUBLAS_CHECK(cublasLtMatmulDescCreate(&op_, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t t = CUBLAS_OP_T, nt = CUBLAS_OP_N;
  const std::int8_t fast = shape.fast_accum ? 1 : 0;
  TWINSTEP_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op_, CUBLASLT_MATMUL_DESC_TRANSA, &t, sizeof t));
  TWINSTEP_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op_, CUBLASLT_MATMUL_DESC_TRANSB, &nt, sizeof nt));
  TWINSTEP_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op_, CUBLASLT_MATMUL_DESC_FAST_ACCUM, &fast, sizeof fast));
  // Per-tensor scaling selects other kernels than an unscaled FP8 product, so the heuristic must see the scale
  // pointers set: placeholders here (aligned, never dereferenced by the heuristic), the real ones bound per run.
  static constexpr std::uintptr_t kPlaceholderScale = 256;
  const void* placeholder = reinterpret_cast<const void*>(kPlaceholderScale);  // NOLINT(performance-no-int-to-ptr)
  TWINSTEP_CUBLAS_CHECK(
      cublasLtMatmulDescSetAttribute(op_, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &placeholder, sizeof placeholder));
  TWINSTEP_CUBLAS_CHECK(
      cublasLtMatmulDescSetAttribute(op_, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &placeholder, sizeof placeholder));
  TWINSTEP_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&la_, fp8_cuda_type(shape.b), k, n, static_cast<std::int64_t>(k)));
  TWINSTEP_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&lb_, fp8_cuda_type(shape.a), k, m, static_cast<std::int64_t>(k)));
  const cudaDataType_t c_type = shape.accumulate_fp32 ? CUDA_R_32F : CUDA_R_16BF;
  TWINSTEP_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&lc_, c_type, n, m, static_cast<std::int64_t>(n)));
  cublasLtMatmulPreference_t pref = nullptr;
  TWINSTEP_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  const std::uint64_t ws = workspace_bytes;
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  const cublasStatus_t st1 =
      cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws);
  const cublasStatus_t st2 = st1 == CUBLAS_STATUS_SUCCESS ? cublasLtMatmulAlgoGetHeuristic(lt_, op_, la_, lb_, lc_, lc_,
                                                                                           pref, 1, &result, &found)
                                                          : st1;
  (void)cublasLtMatmulPreferenceDestroy(pref);
  TWINSTEP_CUBLAS_CHECK(st2);
  if (found == 0) {
    throw_call_error("cublasLt", 0,
                     "no FP8 algorithm for " + std::to_string(m) + "x" + std::to_string(n) + "x" + std::to_string(k),
                     "cublasLtMatmulAlgoGetHeuristic", __FILE__, __LINE__);
  }
  algo_ = result.algo;
}

Fp8Gemm::~Fp8Gemm() {
  if (lc_ != nullptr) (void)cublasLtMatrixLayoutDestroy(lc_);
  if (lb_ != nullptr) (void)cublasLtMatrixLayoutDestroy(lb_);
  if (la_ != nullptr) (void)cublasLtMatrixLayoutDestroy(la_);
  if (op_ != nullptr) (void)cublasLtMatmulDescDestroy(op_);
}

Fp8Gemm::Fp8Gemm(Fp8Gemm&& o) noexcept
    : lt_(o.lt_),
      shape_(o.shape_),
      workspace_bytes_(o.workspace_bytes_),
      op_(std::exchange(o.op_, nullptr)),
      la_(std::exchange(o.la_, nullptr)),
      lb_(std::exchange(o.lb_, nullptr)),
      lc_(std::exchange(o.lc_, nullptr)),
      algo_(o.algo_) {}

void Fp8Gemm::run(const void* a, const void* b, void* c, const float* a_scale, const float* b_scale, void* workspace,
                  cudaStream_t stream) const {
  if (shape_.m == 0 || shape_.n == 0 || shape_.k == 0) return;
  // cuBLASLt's A is our B and its B our A (see the constructor): the scales follow.
  TWINSTEP_CUBLAS_CHECK(
      cublasLtMatmulDescSetAttribute(op_, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &b_scale, sizeof b_scale));
  TWINSTEP_CUBLAS_CHECK(
      cublasLtMatmulDescSetAttribute(op_, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &a_scale, sizeof a_scale));
  const float alpha = 1.0f, beta = shape_.accumulate_fp32 || shape_.accumulate ? 1.0f : 0.0f;
  TWINSTEP_CUBLAS_CHECK(cublasLtMatmul(lt_, op_, &alpha, b, la_, a, lb_, &beta, c, lc_, c, lc_, &algo_, workspace,
                                       workspace_bytes_, stream));
}

}  // namespace twinstep::backend
