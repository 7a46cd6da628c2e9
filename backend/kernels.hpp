// Host-side launchers of the backend's own CUDA kernels (kernels.cu): the bandwidth-bound elementwise kernel, the
// row softmax of attention, the fused Adam step, buffer fills, and the peer-mapped transports' copy kernel and flags.
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

/// Copies `bytes` from `src` to `dst` (a peer-mapped slot: the sm_kernel transport, peer_link.hpp) with a kernel of
/// `blocks` blocks, so that it holds at most that many SMs. Zero bytes launches nothing.
void launch_peer_copy(void* dst, const void* src, std::size_t bytes, int blocks, cudaStream_t stream);

/// Writes `value` into `flag` (device or peer-mapped memory) from a one-thread kernel, after a system-scope fence: the
/// stream's earlier writes (a copy into a peer's slot) are visible to whoever sees the flag.
void launch_signal_flag(std::uint32_t* flag, std::uint32_t value, cudaStream_t stream);

/// A one-thread kernel that returns once `flag` has reached `target` (cyclic: (int32)(flag - target) >= 0), polling
/// with a sleep between reads: the stream waits while holding one block of one thread, never the hardware queue
/// (a stream memory wait would block every stream that shares it).
void launch_wait_flag(const std::uint32_t* flag, std::uint32_t target, cudaStream_t stream);

/// The rows of attention's score buffer (backend/attention.hpp): `mats` matrices `mat_stride` elements apart, each
/// `rows` rows of `cols` scores with row stride `ld`. Row r belongs to query position i = r / group; causal, it sees
/// keys [0, min(cols, i + key_offset + 1)) and its computed scores end at min(cols, (i / leaf + 1) * leaf +
/// key_offset) (the diagonal tile it lies in); not causal, it sees all `cols`.
struct SoftmaxShape {
  std::uint64_t mats = 0, rows = 0, cols = 0, ld = 0, mat_stride = 0;
  std::uint64_t group = 1;
  bool causal = false;
  std::uint64_t key_offset = 0;
  std::uint64_t leaf = 1;
};

/// In-place softmax of each row over the keys it sees; the computed scores it must not see are set to zero (so
/// the P V products of a causal attention add nothing for them).
void launch_attention_softmax(void* scores, const SoftmaxShape& shape, KernelDType dtype, cudaStream_t stream);

/// One fused Adam step over `n` parameters: fp32 master weights, moments m and v, gradient and working
/// parameter in `param_dtype`. Reads grad, master, m, v; writes master, m, v, param.
void launch_adam(void* param, float* master, const void* grad, float* m, float* v, std::size_t n,
                 KernelDType param_dtype, int sm_count, cudaStream_t stream);

}  // namespace twinstep::backend
