// One process's share of a run (runtime.hpp): its GPU, the NCCL world communicator and the channel communicators
// split from it, cuBLAS handles, the buffer pool, and their release (or deliberate leak after an abort).
//
// The world communicator is created with the first schedule that runs anything on NCCL (a schedule of peer-mapped
// send/recv only never creates one). All channels are split from it up front, in the same order on every rank, with
// NCCL_RUNTIME_CONNECT=0 and a warm-up exchange per channel, because a lazy connection blocks the issuing thread
// until the peer arrives. Not covered: the IR's eager send (a send completing before its recv starts) holds in NCCL
// only for messages that fit its buffers; a schedule that needs it for larger messages on one stream hangs and is
// caught by the watchdog.
#include "backend/runtime.hpp"

#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdlib>

#include "backend/error.hpp"
#include "backend/gemm_fp8.hpp"
#include "backend/kernels.hpp"

namespace twinstep::backend {

namespace sch = twinstep::schedule;

namespace {

constexpr std::uint64_t kWarmChunk = 4096;  // bytes per peer of a connection warm-up exchange
constexpr std::uint64_t kWarmPeers = 64;    // warm-up slots (peers beyond reuse them)
constexpr std::uint64_t kWarmBytes = 2 * kWarmPeers * kWarmChunk;

std::string host_name() {
  char buf[256] = {0};
  if (gethostname(buf, sizeof buf - 1) != 0) return "unknown";
  return buf;
}

}  // namespace

DeviceResources::~DeviceResources() { cudaDeviceSynchronize(); }

Runtime::Impl::Impl(bool self) : mpi(self) {
  set_error_context_rank(mpi.rank());
  host = host_name();
  int count = 0;
  TWINSTEP_CUDA_CHECK(cudaGetDeviceCount(&count));
  if (count < 1) throw NotFeasibleError("rank " + std::to_string(mpi.rank()) + ": no CUDA GPU is visible");
  device = mpi.local_rank() % count;
  TWINSTEP_CUDA_CHECK(cudaSetDevice(device));
  dev = std::make_unique<DeviceResources>();
  dev->aux = make_stream(0);
  dev->warm = device_alloc(kWarmBytes);
  watchdog = std::make_unique<Watchdog>(device, mpi.rank());
  monitor = std::make_unique<GpuMonitor>(device);
}

std::vector<GpuSeries> Runtime::Impl::gather_monitor_series() {
  std::vector<GpuSeries> out;
  for (const auto& text : mpi.all_gather(encode_series(monitor->series()))) out.push_back(decode_series(text));
  return out;
}

Runtime::Impl::~Impl() {
  watchdog.reset();
  // Kernels of aborted communicators may never finish: leak rather than hang.
  if (broken) (void)dev.release();
}

void Runtime::Impl::ensure_buffers(const RoleSizes& sizes) {
  for (std::size_t r = 0; r < kRoles; ++r) {
    auto& b = dev->pool[r];
    if (sizes[r] <= b.bytes) continue;
    b = PoolBuffer{};
    // Round up to 2 MiB so that sweeps over growing sizes reallocate rarely.
    const std::uint64_t bytes = (sizes[r] + (2ull << 20) - 1) & ~((2ull << 20) - 1);
    if (static_cast<Role>(r) == Role::kCopyHost) {
      b.pinned = pinned_alloc(bytes);
    } else {
      b.device = device_alloc(bytes);
      launch_fill_pattern(b.device.get(), bytes, static_cast<std::uint32_t>(r * 7919 + 17), dev->aux.get());
    }
    b.bytes = bytes;
  }
  TWINSTEP_CUDA_CHECK(cudaStreamSynchronize(dev->aux.get()));
}

cublasLtHandle_t Runtime::Impl::lt() {
  if (!dev->lt) dev->lt = make_cublaslt();
  return dev->lt.get();
}

const float* Runtime::Impl::fp8_scales() {
  if (!dev->fp8_scales) {
    // A's scale at element 0, B's at kFp8ScaleStride: each on its own 16-byte boundary.
    std::array<float, 2 * kFp8ScaleStride> ones{};
    ones[0] = ones[kFp8ScaleStride] = 1.0f;
    dev->fp8_scales = device_alloc(sizeof ones);
    TWINSTEP_CUDA_CHECK(cudaMemcpy(dev->fp8_scales.get(), ones.data(), sizeof ones, cudaMemcpyHostToDevice));
  }
  return static_cast<const float*>(dev->fp8_scales.get());
}

CudnnSdpa& Runtime::Impl::sdpa() {
  if (!dev->sdpa) dev->sdpa = std::make_unique<CudnnSdpa>();
  return *dev->sdpa;
}

void Runtime::Impl::ensure_blas(std::size_t n) {
  while (dev->blas.size() < n) dev->blas.push_back(make_blas_slot(kCublasWorkspaceBytes));
}

const GroupedGemmStreams& Runtime::Impl::grouped() {
  if (!dev->grouped) dev->grouped = std::make_unique<GroupedGemmStreams>();
  return *dev->grouped;
}

void Runtime::Impl::ensure_world() {
  if (dev->world) return;
  ncclUniqueId id{};
  if (mpi.rank() == 0) TWINSTEP_NCCL_CHECK(ncclGetUniqueId(&id));
  mpi.broadcast(&id, sizeof id, 0);
  // Connect every algorithm's transport when a communicator is created, not lazily inside the first collective:
  // a lazy connection blocks the issuing thread until every member reaches the same collective, which would
  // order ops of different channels (channels.hpp). The user's own setting wins.
  setenv("NCCL_RUNTIME_CONNECT", "0", 0);
  dev->world = nccl_init_rank(mpi.size(), id, mpi.rank());
}

void Runtime::Impl::ensure_channels(const ChannelPlan& plan) {
  // A schedule with nothing on NCCL (peer-mapped send/recv only) creates no communicator at all, so its ranks may
  // share a GPU (NCCL refuses two ranks on one).
  if (plan.channels.empty()) return;
  ensure_world();
  std::vector<std::uint32_t> todo;  // indices into plan.channels
  for (std::size_t i = 0; i < plan.channels.size(); ++i) {
    if (dev->channels.count(plan.channels[i].key) == 0) todo.push_back(static_cast<std::uint32_t>(i));
  }
  // Member-disjoint channels share one ncclCommSplit call (color = index within the round, key = position in the
  // member list, so NCCL rank = position).
  const auto me = static_cast<sch::RankId>(mpi.rank());
  for (const auto& round : split_rounds(plan, todo, static_cast<std::uint32_t>(mpi.size()))) {
    const auto args = split_args(plan, round, me);
    NcclComm comm = nccl_split(dev->world.get(), args ? args->color : NCCL_SPLIT_NOCOLOR, args ? args->key : 0);
    for (auto idx : round.channels) {
      NcclComm& slot = dev->channels[plan.channels[idx].key];
      // One idx of the round is this rank's channel, so `comm` is moved at most once; the loop also creates the
      // (empty) slots of the round's other channels.
      if (args && idx == args->channel) slot = std::move(comm);  // NOLINT(bugprone-use-after-move)
    }
  }
  // Point-to-point connections are always made lazily by NCCL, inside the first send/recv between two ranks, and
  // that call blocks the issuing thread until the peer makes the matching one. Make them here, channel by channel
  // in list order on every rank (the first channel not done yet has all its members at it: no cycle), on one
  // stream, with a small exchange of the same kind as the channel's ops.
  for (auto i : todo) {
    const ncclComm_t c = dev->channels.at(plan.channels[i].key).get();
    if (c != nullptr) warm_up(plan.channels[i], c);
  }
}

void Runtime::Impl::warm_up(const CommChannel& ch, ncclComm_t c) {
  const auto me = static_cast<sch::RankId>(mpi.rank());
  const int pos = channel_rank(ch, me);
  const int n = static_cast<int>(ch.members.size());
  char* sb = static_cast<char*>(dev->warm.get());
  char* rb = sb + kWarmBytes / 2;
  cudaStream_t aux = dev->aux.get();
  if (ch.point_to_point) {
    const bool i_send = ch.src == me;
    const bool i_recv = ch.dst == me;
    const int peer = n == 1 ? 0 : 1 - pos;
    TWINSTEP_NCCL_CHECK(ncclGroupStart());
    if (i_send) TWINSTEP_NCCL_CHECK(ncclSend(sb, kWarmChunk, ncclUint8, peer, c, aux));
    if (i_recv) TWINSTEP_NCCL_CHECK(ncclRecv(rb, kWarmChunk, ncclUint8, peer, c, aux));
    TWINSTEP_NCCL_CHECK(ncclGroupEnd());
    return;
  }
  TWINSTEP_NCCL_CHECK(ncclAllReduce(sb, rb, kWarmChunk / 4, ncclFloat32, ncclSum, c, aux));
  if (ch.all_to_all) {
    TWINSTEP_NCCL_CHECK(ncclGroupStart());
    for (int j = 0; j < n; ++j) {
      const std::uint64_t off = static_cast<std::uint64_t>(j % kWarmPeers) * kWarmChunk;
      TWINSTEP_NCCL_CHECK(ncclSend(sb + off, kWarmChunk, ncclUint8, j, c, aux));
      TWINSTEP_NCCL_CHECK(ncclRecv(rb + off, kWarmChunk, ncclUint8, j, c, aux));
    }
    TWINSTEP_NCCL_CHECK(ncclGroupEnd());
  }
}

std::vector<ncclComm_t> Runtime::Impl::all_comms() const {
  std::vector<ncclComm_t> out;
  if (dev->world) out.push_back(dev->world.get());
  for (const auto& [key, c] : dev->channels) {
    if (c) out.push_back(c.get());
  }
  return out;
}

void Runtime::Impl::abort_all() {
  if (broken) return;
  broken = true;
  // ncclCommAbort frees each communicator: their owners give them up first.
  std::vector<ncclComm_t> comms;
  if (dev->world) comms.push_back(dev->world.release());
  for (auto& [key, c] : dev->channels) {
    if (c) comms.push_back(c.release());
  }
  (void)abort_concurrently(comms, kAbortWait_s);
}

Runtime::Runtime(ProcessGroup group) : impl_(std::make_unique<Impl>(group == ProcessGroup::kSelf)) {}
Runtime::~Runtime() = default;
int Runtime::rank() const { return impl_->mpi.rank(); }
int Runtime::size() const { return impl_->mpi.size(); }

void Runtime::check_on_rank0(const std::function<void()>& check) {
  std::string error;
  if (rank() == 0) {
    try {
      check();
    } catch (const Error& e) {
      error = e.what();
      if (error.empty()) error = "rank 0's check failed";
    }
  }
  const std::vector<std::string> all = impl_->mpi.all_gather(error);
  if (!all.front().empty()) throw Error(all.front());
}

DeviceInfo Runtime::device_info() {
  DeviceInfo info;
  info.processes = impl_->mpi.size();
  info.local_processes = static_cast<int>(impl_->mpi.all_max(static_cast<std::uint64_t>(impl_->mpi.local_size())));
  TWINSTEP_CUDA_CHECK(cudaGetDeviceCount(&info.device_count));
  std::size_t free_b = 0, total_b = 0;
  TWINSTEP_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  std::uint64_t held = 0;
  for (const auto& b : impl_->dev->pool) {
    if (b.device) held += b.bytes;
  }
  info.free_bytes = impl_->mpi.all_min(free_b + held);
  cudaDeviceProp prop{};
  TWINSTEP_CUDA_CHECK(cudaGetDeviceProperties(&prop, impl_->device));
  info.gpu_name = prop.name;
  return info;
}

}  // namespace twinstep::backend
