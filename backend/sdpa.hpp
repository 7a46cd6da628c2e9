// Fused attention (scaled dot-product attention in one flash-style kernel per direction: the score matrix never
// reaches memory) through cuDNN's graph API, built where CMake found cuDNN 9 (TWINSTEP_CUDNN, sdpa_cudnn.cpp). The
// GEMM + softmax path of attention.hpp is the fallback, for builds without cuDNN and shapes cuDNN does not take;
// which one an attention op runs is attention_kernel() (pure host code) and the trace's context names it.
//
// Buffer layout of the fused path (dense, elements of the attention's dtype): Q, O, dO, dQ [batch][heads_q][seq_q]
// [head_dim]; K, V, dK, dV [batch][heads_kv][seq_kv][head_dim] (grouped-query attention through the head
// dimension's broadcast); stats fp32 [batch][heads_q][seq_q]: the row log-sum-exp of the scaled, masked scores,
// written by the forward and read by the backward (which recomputes the probabilities from it).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <string>

#include "schedule/schedule.hpp"

namespace twinstep::backend {

enum class AttentionKernel : std::uint8_t { kCudnnSdpa, kGemmSoftmax };

/// "cudnn_sdpa" or "gemm_softmax" (the trace context's `attention_kernel`).
[[nodiscard]] const char* attention_kernel_name(AttentionKernel k);

/// Whether this build has cuDNN's fused attention (CMake found cuDNN 9).
[[nodiscard]] bool cudnn_sdpa_built();

/// Why cuDNN's fused attention does not take `a` in any build; empty when it does. It takes bf16 and fp16, head_dim
/// a multiple of 8 up to 256, heads_q a multiple of heads_kv, sequences multiples of 128 (older cuDNN 9 releases
/// need padding masks otherwise), causal only with seq_q == seq_kv (the top-left diagonal, as lowering emits it).
[[nodiscard]] std::string cudnn_sdpa_refusal(const schedule::Attention& a);

/// The kernel the backend runs for `a`: kCudnnSdpa where built and taken, kGemmSoftmax otherwise.
[[nodiscard]] AttentionKernel attention_kernel(const schedule::Attention& a);

/// Bytes of each buffer of the fused path: q (also o, dout, dq), kv (k, v, dk, dv), stats.
struct SdpaBufferBytes {
  std::uint64_t q = 0, kv = 0, stats = 0;
};
[[nodiscard]] SdpaBufferBytes sdpa_buffer_bytes(const schedule::Attention& a);

/// Device buffers of one fused attention, in the layout above. dout, dq, dk, dv only for the backward.
struct SdpaBuffers {
  void* q = nullptr;
  void* k = nullptr;
  void* v = nullptr;
  void* o = nullptr;
  void* stats = nullptr;
  void* dout = nullptr;
  void* dq = nullptr;
  void* dk = nullptr;
  void* dv = nullptr;
};

/// One process's cuDNN state: its handle, the execution plans built so far (one per shape and direction, cached:
/// building one takes from tens of milliseconds to seconds) and the workspace they share. The softmax scale is
/// 1/sqrt(head_dim).
class CudnnSdpa {
 public:
  CudnnSdpa();  ///< BackendError in a build without cuDNN.
  ~CudnnSdpa();
  CudnnSdpa(const CudnnSdpa&) = delete;
  CudnnSdpa& operator=(const CudnnSdpa&) = delete;

  /// Builds the plan of `a` unless cached and grows the workspace to it: call before timing. BackendError when
  /// cuDNN offers no plan for the shape.
  void prepare(const schedule::Attention& a);
  /// Issues `a` on `stream` (prepares it first if needed).
  void run(const schedule::Attention& a, const SdpaBuffers& buffers, cudaStream_t stream);
  /// cuDNN's version at run time, e.g. "9.19.0".
  [[nodiscard]] std::string version() const;
  [[nodiscard]] std::size_t cached_plans() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace twinstep::backend
