// Runtime::Impl: what one process holds across runs (its GPU, MPI group, NCCL world communicator, cached channel
// communicators, cuBLAS handles, buffer pool, watchdog and GPU monitor), every handle owned by an RAII type
// (handles.hpp). Backend-internal: included by runtime.cpp and execute.cpp only.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "backend/channels.hpp"
#include "backend/executor.hpp"
#include "backend/gpu_monitor.hpp"
#include "backend/grouped_gemm.hpp"
#include "backend/handles.hpp"
#include "backend/mpi_group.hpp"
#include "backend/plan.hpp"
#include "backend/sdpa.hpp"
#include "backend/watchdog.hpp"

namespace twinstep::backend {

/// One buffer of the pool: device memory, or pinned host memory for Role::kCopyHost.
struct PoolBuffer {
  DeviceMemory device;
  PinnedMemory pinned;
  std::uint64_t bytes = 0;
  [[nodiscard]] void* ptr() const { return device ? device.get() : pinned.get(); }
};

/// Every device resource a Runtime keeps across runs. The destructor first waits for the device, then the members
/// go in reverse order: channel communicators, the world communicator, fused attention, cuBLASLt, the grouped GEMMs'
/// side streams, cuBLAS, buffers, the warm-up buffer, the internal stream.
struct DeviceResources {
  CudaStream aux;     ///< Internal stream: buffer fills, connection warm-ups, the step origin event.
  DeviceMemory warm;  ///< kWarmBytes for connection warm-up exchanges.
  std::array<PoolBuffer, kRoles> pool{};
  std::vector<BlasSlot> blas;
  std::unique_ptr<GroupedGemmStreams> grouped;  ///< Side streams of the grouped GEMMs; made by the first that runs.
  CublasLtHandle lt;                            ///< FP8 GEMMs (gemm_fp8.hpp); made by the first that runs.
  DeviceMemory fp8_scales;                      ///< Their per-tensor scales, 1: A's at 0, B's at kFp8ScaleStride.
  std::unique_ptr<CudnnSdpa> sdpa;  ///< Fused attention's handle, plans and workspace; made by the first that runs.
  NcclComm world;                   ///< Created by the first schedule with an NCCL op (Impl::ensure_world).
  std::map<std::string, NcclComm> channels;  ///< By CommChannel::key; empty where this rank is not a member.

  DeviceResources() = default;
  DeviceResources(const DeviceResources&) = delete;
  DeviceResources& operator=(const DeviceResources&) = delete;
  ~DeviceResources();
};

struct Runtime::Impl {
  MpiGroup mpi;
  int device = 0;
  std::string host;
  /// The communicators were aborted: their kernels may never finish, so the device resources are leaked rather
  /// than freed (a free waits for every kernel of the device) and the Runtime refuses further work.
  bool broken = false;
  std::unique_ptr<DeviceResources> dev;
  std::unique_ptr<GpuMonitor> monitor;  ///< SM clock and power over the measured steps (gpu_monitor.hpp).
  std::unique_ptr<Watchdog> watchdog;   ///< Declared last: stops first, before the communicators it watches go.

  explicit Impl(bool self);
  ~Impl();
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;

  [[nodiscard]] void* buffer(Role r) const { return dev->pool[static_cast<std::size_t>(r)].ptr(); }
  /// Grows the pool to `sizes` (filled with a pattern: never zeros, which run faster than real data).
  void ensure_buffers(const RoleSizes& sizes);
  /// The cuBLASLt handle of the FP8 GEMMs (made on first use).
  [[nodiscard]] cublasLtHandle_t lt();
  /// Two device floats (1.0): the A and B scales of every FP8 GEMM.
  [[nodiscard]] const float* fp8_scales();
  /// The fused attention state (made on first use; a build without cuDNN never asks).
  [[nodiscard]] CudnnSdpa& sdpa();
  /// The grouped GEMMs' side streams (made on first use).
  [[nodiscard]] const GroupedGemmStreams& grouped();
  /// At least `n` cuBLAS handles, each with a kCublasWorkspaceBytes workspace.
  void ensure_blas(std::size_t n);
  /// The world communicator, created on first use. Collective over the group.
  void ensure_world();
  /// Creates and connects the communicator of every channel of `plan` not created yet (and the world communicator
  /// first, unless `plan` has no channel). Collective over the group.
  void ensure_channels(const ChannelPlan& plan);
  /// The world communicator (once created) and every channel's of this rank.
  [[nodiscard]] std::vector<ncclComm_t> all_comms() const;
  /// Every rank's GPU monitor series of the last run (rank order), on every rank. Collective; after monitor->stop().
  [[nodiscard]] std::vector<GpuSeries> gather_monitor_series();
  /// Aborts every communicator (once) and marks the runtime broken.
  void abort_all();

 private:
  void warm_up(const CommChannel& channel, ncclComm_t comm);
};

}  // namespace twinstep::backend
