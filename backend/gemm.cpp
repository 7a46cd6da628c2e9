// cuBLAS GEMM issue for compute ops (see gemm.hpp).
#include "backend/gemm.hpp"

#include "backend/error.hpp"

namespace twinstep::backend {

void run_gemm(cublasHandle_t h, const GemmCall& g) {
  if (g.m == 0 || g.n == 0 || g.k == 0 || g.batch == 0) return;
  const float alpha = 1.0f;
  const float beta = g.beta;
  // Column-major view: C^T[N,M] = op(B)^T op(A)^T, where a row-major buffer is its own transpose.
  const cublasOperation_t ob = g.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t oa = g.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  const auto m = static_cast<int>(g.n), n = static_cast<int>(g.m), k = static_cast<int>(g.k);
  if (g.batch == 1) {
    TWINSTEP_CUBLAS_CHECK(cublasGemmEx(h, ob, oa, m, n, k, &alpha, g.b, g.type, static_cast<int>(g.ldb), g.a, g.type,
                                       static_cast<int>(g.lda), &beta, g.c, g.c_type, static_cast<int>(g.ldc),
                                       CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  } else {
    TWINSTEP_CUBLAS_CHECK(cublasGemmStridedBatchedEx(
        h, ob, oa, m, n, k, &alpha, g.b, g.type, static_cast<int>(g.ldb), g.stride_b, g.a, g.type,
        static_cast<int>(g.lda), g.stride_a, &beta, g.c, g.c_type, static_cast<int>(g.ldc), g.stride_c,
        static_cast<int>(g.batch), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  }
}

GemmCall plain_gemm(std::uint64_t m, std::uint64_t n, std::uint64_t k, bool ta, bool tb, const void* a, const void* b,
                    void* c, std::uint64_t batch, cudaDataType_t type) {
  GemmCall g;
  g.trans_a = ta;
  g.trans_b = tb;
  g.m = m;
  g.n = n;
  g.k = k;
  g.batch = batch;
  g.a = a;
  g.b = b;
  g.c = c;
  g.lda = ta ? m : k;
  g.ldb = tb ? k : n;
  g.ldc = n;
  g.stride_a = static_cast<long long>(m * k);
  g.stride_b = static_cast<long long>(k * n);
  g.stride_c = static_cast<long long>(m * n);
  g.type = type;
  g.c_type = type;
  return g;
}

void accumulate_into_fp32(GemmCall& g) {
  g.c_type = CUDA_R_32F;
  g.beta = 1.0f;
}

void accumulate_into_c(GemmCall& g) { g.beta = 1.0f; }

cudaDataType_t cuda_dtype(schedule::DType t) {
  switch (t) {
    case schedule::DType::kBF16:
      return CUDA_R_16BF;
    case schedule::DType::kFP16:
      return CUDA_R_16F;
    default:
      return CUDA_R_32F;
  }
}

std::optional<KernelDType> kernel_dtype(schedule::DType t) {
  switch (t) {
    case schedule::DType::kBF16:
      return KernelDType::kBF16;
    case schedule::DType::kFP16:
      return KernelDType::kFP16;
    case schedule::DType::kFP32:
      return KernelDType::kFP32;
    default:
      return std::nullopt;
  }
}

}  // namespace twinstep::backend
