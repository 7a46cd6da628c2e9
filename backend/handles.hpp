// Owning wrappers of CUDA, cuBLAS and NCCL handles, memory and CUDA IPC mappings: each frees its handle when it goes
// out of scope, so a throw anywhere releases what was created before it. The make_* functions create with a checked
// call (BackendError on failure, nothing left behind). Backend-internal: only backend/*.cpp include this header.
#pragma once

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <nccl.h>

#include <cstdint>
#include <utility>

namespace twinstep::backend {

/// Owns one handle `T` (a pointer type) and releases it with `Destroy` (whose status is ignored: nothing can be
/// done about a failing destroy in a destructor). Move-only; a default-constructed or moved-from handle is empty.
template <typename T, auto Destroy>
class Handle {
 public:
  Handle() = default;
  explicit Handle(T handle) : handle_(handle) {}
  ~Handle() { reset(); }
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  Handle(Handle&& other) noexcept : handle_(other.release()) {}
  Handle& operator=(Handle&& other) noexcept {
    if (this != &other) {
      reset();
      handle_ = other.release();
    }
    return *this;
  }

  [[nodiscard]] T get() const { return handle_; }
  [[nodiscard]] explicit operator bool() const { return handle_ != T{}; }
  /// Gives the handle up without releasing it (an aborted communicator, which ncclCommAbort has freed).
  [[nodiscard]] T release() { return std::exchange(handle_, T{}); }
  void reset() {
    if (handle_ != T{}) (void)Destroy(std::exchange(handle_, T{}));
  }

 private:
  T handle_{};
};

using CudaStream = Handle<cudaStream_t, &cudaStreamDestroy>;
using CudaEvent = Handle<cudaEvent_t, &cudaEventDestroy>;
using CublasHandle = Handle<cublasHandle_t, &cublasDestroy_v2>;
using CublasLtHandle = Handle<cublasLtHandle_t, &cublasLtDestroy>;
using DeviceMemory = Handle<void*, &cudaFree>;
using PinnedMemory = Handle<void*, &cudaFreeHost>;  ///< Page-locked host memory.
/// Another process's device memory opened with cudaIpcOpenMemHandle (peer_link.hpp); closed, never freed, here.
using IpcMapping = Handle<void*, &cudaIpcCloseMemHandle>;
/// Destroyed with ncclCommDestroy; a communicator to abort is released first (abort_concurrently, watchdog.hpp).
using NcclComm = Handle<ncclComm_t, &ncclCommDestroy>;

/// A cuBLAS handle with its own workspace (one per stream); the handle goes before its workspace.
struct BlasSlot {
  DeviceMemory workspace;
  CublasHandle handle;
};

/// A cuBLAS handle using a workspace of `workspace_bytes` of its own (its stream left to the caller).
[[nodiscard]] BlasSlot make_blas_slot(std::uint64_t workspace_bytes);
/// A non-blocking stream of the given priority (already clamped to the device's range).
[[nodiscard]] CudaStream make_stream(int priority);
[[nodiscard]] CudaEvent make_event();
[[nodiscard]] CublasHandle make_cublas();
[[nodiscard]] CublasLtHandle make_cublaslt();
[[nodiscard]] DeviceMemory device_alloc(std::uint64_t bytes);
[[nodiscard]] PinnedMemory pinned_alloc(std::uint64_t bytes);
/// ncclCommInitRank of rank `rank` of `size`.
[[nodiscard]] NcclComm nccl_init_rank(int size, const ncclUniqueId& id, int rank);
/// ncclCommSplit of `parent`; empty for a rank that passes NCCL_SPLIT_NOCOLOR.
[[nodiscard]] NcclComm nccl_split(ncclComm_t parent, int color, int key);

}  // namespace twinstep::backend
