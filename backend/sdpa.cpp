// Which attention kernel runs (see sdpa.hpp): pure host code, the same in every build but for cudnn_sdpa_built().
#include "backend/sdpa.hpp"

#include "backend/error.hpp"

namespace twinstep::backend {

const char* attention_kernel_name(AttentionKernel k) {
  return k == AttentionKernel::kCudnnSdpa ? "cudnn_sdpa" : "gemm_softmax";
}

bool cudnn_sdpa_built() {
#ifdef TWINSTEP_HAVE_CUDNN
  return true;
#else
  return false;
#endif
}

std::string cudnn_sdpa_refusal(const schedule::Attention& a) {
  if (a.dtype != schedule::DType::kBF16 && a.dtype != schedule::DType::kFP16) {
    return std::string("dtype ") + (a.dtype == schedule::DType::kFP8 ? "fp8" : "fp32") + " (bf16 and fp16 only)";
  }
  if (a.head_dim == 0 || a.head_dim % 8 != 0 || a.head_dim > 256) {
    return "head_dim " + std::to_string(a.head_dim) + " (a multiple of 8 up to 256)";
  }
  if (a.heads_kv == 0 || a.heads_q % a.heads_kv != 0) return "heads_q not a multiple of heads_kv";
  if (a.seq_q == 0 || a.seq_kv == 0 || a.seq_q % 128 != 0 || a.seq_kv % 128 != 0) {
    return "sequence lengths " + std::to_string(a.seq_q) + "/" + std::to_string(a.seq_kv) + " (multiples of 128)";
  }
  if (a.causal && a.seq_q != a.seq_kv) return "causal with seq_q != seq_kv";
  return "";
}

AttentionKernel attention_kernel(const schedule::Attention& a) {
  return cudnn_sdpa_built() && cudnn_sdpa_refusal(a).empty() ? AttentionKernel::kCudnnSdpa
                                                             : AttentionKernel::kGemmSoftmax;
}

SdpaBufferBytes sdpa_buffer_bytes(const schedule::Attention& a) {
  const std::uint64_t e = schedule::dtype_bytes(a.dtype);
  SdpaBufferBytes b;
  b.q = a.batch * a.heads_q * a.seq_q * a.head_dim * e;
  b.kv = a.batch * a.heads_kv * a.seq_kv * a.head_dim * e;
  b.stats = a.batch * a.heads_q * a.seq_q * 4;
  return b;
}

#ifndef TWINSTEP_HAVE_CUDNN
// A build without cuDNN: attention_kernel() never picks the fused path, so these are never reached in a run.
struct CudnnSdpa::Impl {};
CudnnSdpa::CudnnSdpa() {
  throw_call_error("cudnn", 0, "this build has no cuDNN (configure with -DTWINSTEP_CUDNN=ON where cuDNN 9 is)",
                   "CudnnSdpa()", __FILE__, __LINE__);
}
CudnnSdpa::~CudnnSdpa() = default;
void CudnnSdpa::prepare(const schedule::Attention& /*a*/) {}
void CudnnSdpa::run(const schedule::Attention& /*a*/, const SdpaBuffers& /*buffers*/, cudaStream_t /*stream*/) {}
std::string CudnnSdpa::version() const { return ""; }
std::size_t CudnnSdpa::cached_plans() const { return 0; }
#endif

}  // namespace twinstep::backend
