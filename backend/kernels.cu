// The backend's own CUDA kernels: simple and bandwidth-bound by design (vectorized 16-byte accesses, grid-stride
// loops). They stand in for framework kernels of the same byte traffic; they are not tuned beyond that.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cfloat>

#include "backend/error.hpp"
#include "backend/kernels.hpp"

namespace twinstep::backend {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ std::uint32_t hash32(std::uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  x ^= x >> 33;
  return static_cast<std::uint32_t>(x);
}

__global__ void fill_pattern_kernel(std::uint16_t* p, std::size_t n, std::uint32_t seed) {
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x) {
    const std::uint32_t h = hash32(i * 0x9E3779B97F4A7C15ULL + seed);
    // Sign random, exponent pinned near 1: bf16 in [2^-7, 2), fp16 in [1, 2), fp32 (word pairs) small normals.
    p[i] = static_cast<std::uint16_t>(0x3C00u | (h & 0x03FFu) | (h & 0x8000u));
  }
}

__global__ void elementwise_kernel(const uint4* in, uint4* out, std::size_t n) {
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x) {
    uint4 v = in[i];
    auto* h = reinterpret_cast<__nv_bfloat162*>(&v);
    const __nv_bfloat162 s = __floats2bfloat162_rn(1.0001f, 1.0001f);
#pragma unroll
    for (int j = 0; j < 4; ++j) h[j] = __hmul2(h[j], s);
    out[i] = v;
  }
}

__global__ void elementwise_tail_kernel(const unsigned char* in, unsigned char* out, std::size_t n) {
  const std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x;
  if (i < n) out[i] = in[i];
}

__global__ void empty_kernel() {}

// The sm_kernel transport's copy into a peer-mapped slot: one block per SM it may hold, 16-byte words.
constexpr int kPeerCopyThreads = 512;

// The peer-mapped transports' flags (peer_link.hpp): a one-thread kernel raises a flag after a system-scope fence,
// another spins until a flag reaches its target (a cyclic >=, as the 32-bit counters may wrap), sleeping between
// polls, as Transformer Engine's userbuffers do: a waiting stream holds one block of one thread, never the queue.
__global__ void signal_flag_kernel(std::uint32_t* flag, std::uint32_t value) {
  __threadfence_system();  // what this stream wrote before (the copy) is visible before the flag
  *reinterpret_cast<volatile std::uint32_t*>(flag) = value;
}

__global__ void wait_flag_kernel(const std::uint32_t* flag, std::uint32_t target) {
  while (static_cast<std::int32_t>(*reinterpret_cast<const volatile std::uint32_t*>(flag) - target) < 0) {
    __nanosleep(256);
  }
  __threadfence_system();  // acquire: the stream's later work reads what the flag's writer wrote before it
}

__global__ void peer_copy_kernel(const uint4* src, uint4* dst, std::size_t n) {
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x) {
    dst[i] = src[i];
  }
}

template <typename T>
__device__ __forceinline__ float to_f(T v) {
  return static_cast<float>(v);
}
template <>
__device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}
template <>
__device__ __forceinline__ float to_f<__half>(__half v) {
  return __half2float(v);
}
template <typename T>
__device__ __forceinline__ T from_f(float v) {
  return static_cast<T>(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) {
  return __float2bfloat16(v);
}
template <>
__device__ __forceinline__ __half from_f<__half>(float v) {
  return __float2half(v);
}

__device__ float block_reduce(float v, bool is_max) {
  __shared__ float shared[kThreads / 32];
  for (int off = 16; off > 0; off >>= 1) {
    const float o = __shfl_xor_sync(0xffffffffu, v, off);
    v = is_max ? fmaxf(v, o) : v + o;
  }
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = (threadIdx.x < kThreads / 32) ? shared[threadIdx.x] : (is_max ? -FLT_MAX : 0.0f);
  if (warp == 0) {
    for (int off = 16; off > 0; off >>= 1) {
      const float o = __shfl_xor_sync(0xffffffffu, v, off);
      v = is_max ? fmaxf(v, o) : v + o;
    }
    if (lane == 0) shared[0] = v;
  }
  __syncthreads();
  const float r = shared[0];
  __syncthreads();
  return r;
}

// One block per row of attention scores: softmax over the keys the row sees, zeros over the masked ones computed.
template <typename T>
__global__ void attention_softmax_kernel(T* data, SoftmaxShape sh, std::uint64_t row_base) {
  const std::uint64_t r_all = row_base + blockIdx.x;
  const std::uint64_t mat = r_all / sh.rows, r = r_all % sh.rows;
  T* row = data + mat * sh.mat_stride + r * sh.ld;
  std::uint64_t seen = sh.cols, computed = sh.cols;
  if (sh.causal) {
    const std::uint64_t i = r / sh.group;
    const std::uint64_t see = i + sh.key_offset + 1, end = (i / sh.leaf + 1) * sh.leaf + sh.key_offset;
    seen = see < sh.cols ? see : sh.cols;
    computed = end < sh.cols ? end : sh.cols;
  }
  float mx = -FLT_MAX;
  for (std::uint64_t c = threadIdx.x; c < seen; c += blockDim.x) mx = fmaxf(mx, to_f(row[c]));
  mx = block_reduce(mx, true);
  float sum = 0.0f;
  for (std::uint64_t c = threadIdx.x; c < seen; c += blockDim.x) sum += __expf(to_f(row[c]) - mx);
  sum = block_reduce(sum, false);
  const float inv = 1.0f / sum;
  for (std::uint64_t c = threadIdx.x; c < seen; c += blockDim.x) row[c] = from_f<T>(__expf(to_f(row[c]) - mx) * inv);
  for (std::uint64_t c = seen + threadIdx.x; c < computed; c += blockDim.x) row[c] = from_f<T>(0.0f);
}

template <typename T>
__global__ void adam_kernel(T* param, float* master, const T* grad, float* m, float* v, std::size_t n) {
  constexpr float kLr = 1e-4f, kBeta1 = 0.9f, kBeta2 = 0.95f, kEps = 1e-8f, kWeightDecay = 0.1f;
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x) {
    const float g = to_f(grad[i]);
    const float mi = kBeta1 * m[i] + (1.0f - kBeta1) * g;
    const float vi = kBeta2 * v[i] + (1.0f - kBeta2) * g * g;
    float w = master[i];
    w -= kLr * (mi / (sqrtf(fabsf(vi)) + kEps) + kWeightDecay * w);
    m[i] = mi;
    v[i] = vi;
    master[i] = w;
    param[i] = from_f<T>(w);
  }
}

unsigned grid_for(std::size_t n, int sm_count) {
  const std::size_t want = (n + kThreads - 1) / kThreads;
  const std::size_t cap = static_cast<std::size_t>(std::max(sm_count, 1)) * 16;
  return static_cast<unsigned>(std::max<std::size_t>(1, std::min(want, cap)));
}

}  // namespace

void launch_fill_pattern(void* ptr, std::size_t bytes, std::uint32_t seed, cudaStream_t stream) {
  const std::size_t n = bytes / 2;
  if (n == 0) return;
  fill_pattern_kernel<<<grid_for(n, 132), kThreads, 0, stream>>>(static_cast<std::uint16_t*>(ptr), n, seed);
  TWINSTEP_CUDA_CHECK(cudaGetLastError());
}

void launch_elementwise(const void* in, void* out, std::size_t bytes_read, int sm_count, cudaStream_t stream) {
  if (bytes_read == 0) {
    empty_kernel<<<1, 1, 0, stream>>>();
    TWINSTEP_CUDA_CHECK(cudaGetLastError());
    return;
  }
  const std::size_t words = bytes_read / sizeof(uint4);
  if (words > 0) {
    elementwise_kernel<<<grid_for(words, sm_count), kThreads, 0, stream>>>(static_cast<const uint4*>(in),
                                                                           static_cast<uint4*>(out), words);
    TWINSTEP_CUDA_CHECK(cudaGetLastError());
  }
  const std::size_t tail = bytes_read - words * sizeof(uint4);
  if (tail > 0) {
    const auto* src = static_cast<const unsigned char*>(in) + words * sizeof(uint4);
    auto* dst = static_cast<unsigned char*>(out) + words * sizeof(uint4);
    elementwise_tail_kernel<<<1, kThreads, 0, stream>>>(src, dst, tail);
    TWINSTEP_CUDA_CHECK(cudaGetLastError());
  }
}

void launch_peer_copy(void* dst, const void* src, std::size_t bytes, int blocks, cudaStream_t stream) {
  if (bytes == 0) return;
  const bool aligned = reinterpret_cast<std::uintptr_t>(dst) % sizeof(uint4) == 0 &&
                       reinterpret_cast<std::uintptr_t>(src) % sizeof(uint4) == 0;
  const std::size_t words = aligned ? bytes / sizeof(uint4) : 0;
  if (words > 0) {
    peer_copy_kernel<<<static_cast<unsigned>(std::max(blocks, 1)), kPeerCopyThreads, 0, stream>>>(
        static_cast<const uint4*>(src), static_cast<uint4*>(dst), words);
    TWINSTEP_CUDA_CHECK(cudaGetLastError());
  }
  const std::size_t done = words * sizeof(uint4);
  if (done < bytes) {
    const std::size_t tail = bytes - done;
    const unsigned grid = static_cast<unsigned>(
        std::min<std::size_t>((tail + kThreads - 1) / kThreads, static_cast<std::size_t>(std::max(blocks, 1))));
    // elementwise_tail_kernel copies one byte per thread of its grid: loop over grid-sized pieces.
    for (std::size_t off = done; off < bytes; off += static_cast<std::size_t>(grid) * kThreads) {
      const std::size_t n = std::min<std::size_t>(bytes - off, static_cast<std::size_t>(grid) * kThreads);
      elementwise_tail_kernel<<<grid, kThreads, 0, stream>>>(static_cast<const unsigned char*>(src) + off,
                                                             static_cast<unsigned char*>(dst) + off, n);
      TWINSTEP_CUDA_CHECK(cudaGetLastError());
    }
  }
}

void launch_signal_flag(std::uint32_t* flag, std::uint32_t value, cudaStream_t stream) {
  signal_flag_kernel<<<1, 1, 0, stream>>>(flag, value);
  TWINSTEP_CUDA_CHECK(cudaGetLastError());
}

void launch_wait_flag(const std::uint32_t* flag, std::uint32_t target, cudaStream_t stream) {
  wait_flag_kernel<<<1, 1, 0, stream>>>(flag, target);
  TWINSTEP_CUDA_CHECK(cudaGetLastError());
}

void launch_attention_softmax(void* scores, const SoftmaxShape& shape, KernelDType dtype, cudaStream_t stream) {
  const std::uint64_t rows = shape.mats * shape.rows;
  if (rows == 0 || shape.cols == 0) return;
  constexpr std::uint64_t kMaxGrid = 2147483647u;
  for (std::uint64_t r0 = 0; r0 < rows; r0 += kMaxGrid) {
    const auto n = static_cast<unsigned>(std::min(kMaxGrid, rows - r0));
    switch (dtype) {
      case KernelDType::kBF16:
        attention_softmax_kernel<<<n, kThreads, 0, stream>>>(static_cast<__nv_bfloat16*>(scores), shape, r0);
        break;
      case KernelDType::kFP16:
        attention_softmax_kernel<<<n, kThreads, 0, stream>>>(static_cast<__half*>(scores), shape, r0);
        break;
      case KernelDType::kFP32:
        attention_softmax_kernel<<<n, kThreads, 0, stream>>>(static_cast<float*>(scores), shape, r0);
        break;
    }
    TWINSTEP_CUDA_CHECK(cudaGetLastError());
  }
}

void launch_adam(void* param, float* master, const void* grad, float* m, float* v, std::size_t n,
                 KernelDType param_dtype, int sm_count, cudaStream_t stream) {
  if (n == 0) return;
  const unsigned grid = grid_for(n, sm_count);
  switch (param_dtype) {
    case KernelDType::kBF16:
      adam_kernel<<<grid, kThreads, 0, stream>>>(static_cast<__nv_bfloat16*>(param), master,
                                                 static_cast<const __nv_bfloat16*>(grad), m, v, n);
      break;
    case KernelDType::kFP16:
      adam_kernel<<<grid, kThreads, 0, stream>>>(static_cast<__half*>(param), master, static_cast<const __half*>(grad),
                                                 m, v, n);
      break;
    case KernelDType::kFP32:
      adam_kernel<<<grid, kThreads, 0, stream>>>(static_cast<float*>(param), master, static_cast<const float*>(grad), m,
                                                 v, n);
      break;
  }
  TWINSTEP_CUDA_CHECK(cudaGetLastError());
}

}  // namespace twinstep::backend
