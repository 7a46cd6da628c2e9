// Planning of a backend run, host-only and pure: whether a schedule can run here, the device buffers each rank
// needs, and each rank's issue plan (its ops in program order, their dependencies, channels, NCCL peers and
// communication sizes). Makes no CUDA or NCCL call, so it is tested without a GPU (tests/backend/plan_test.cpp);
// the runtime (runtime.hpp) binds the plan to streams, events, communicators and buffers.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "backend/channels.hpp"
#include "schedule/matching.hpp"
#include "schedule/schedule.hpp"
#include "schedule/validate.hpp"

namespace twinstep::backend {

/// What can_execute() checks a schedule against; Runtime::device_info() measures it (collectively).
struct DeviceInfo {
  int processes = 1;             ///< Processes in the group (one per GPU).
  int local_processes = 1;       ///< Processes on this host (the most over hosts).
  int device_count = 0;          ///< GPUs visible to one process.
  std::uint64_t free_bytes = 0;  ///< Free GPU memory usable for buffers, the least over processes.
  std::string gpu_name;
};

/// Every reason `schedule` cannot run here (empty means it can): ranks versus processes (ranks may share a GPU only
/// when no op runs on NCCL), reduced schedules, kernels and dtypes the backend does not implement, buffers (with
/// the peer-mapped receive slots of peer_memory.hpp) that do not fit in free GPU memory.
[[nodiscard]] std::vector<schedule::Diagnostic> can_execute(const schedule::Schedule& schedule, const DeviceInfo& info);

/// Device memory the backend allocates for rank `rank` of `schedule` (buffers sized by the largest op of each
/// kind, its peer-mapped receive slots and flags, plus cuBLAS workspaces), in bytes.
[[nodiscard]] std::uint64_t required_device_bytes(const schedule::Schedule& schedule, schedule::RankId rank);

inline constexpr std::uint64_t kCublasWorkspaceBytes = 32ull << 20;  ///< Per stream; PyTorch's on Hopper (4 MiB x 8).
inline constexpr std::uint64_t kNcclReserveBytes = 2ull << 30;       ///< NCCL's own buffers and CUDA context headroom.

/// The device buffers of a rank: one per role, shared by every op of that role, sized by the largest of them.
enum class Role : std::uint8_t {
  kGemmA,
  kGemmB,
  kGemmC,
  kAttnQ,
  kAttnK,
  kAttnV,
  kAttnS,
  kAttnO,
  kAttnDO,
  kAttnDQ,  ///< Fused attention (sdpa.hpp) only: its gradients and row statistics; the fallback works in place.
  kAttnDK,
  kAttnDV,
  kAttnStats,
  kElemIn,
  kElemOut,
  kOptParam,
  kOptGrad,
  kOptMaster,
  kOptM,
  kOptV,
  kCopyDev,
  kCopyDev2,
  kCopyHost,  ///< Pinned host memory (the only role not on the device).
  kCommSend,
  kCommRecv,
  kCount
};
inline constexpr std::size_t kRoles = static_cast<std::size_t>(Role::kCount);
using RoleSizes = std::array<std::uint64_t, kRoles>;  ///< Bytes per role.

/// Bytes a communication op reads and writes on its rank.
struct CommBytes {
  std::uint64_t send = 0;               ///< Input: the collective's send buffer or the send's message.
  std::uint64_t recv = 0;               ///< Output: the collective's receive buffer or the recv's message.
  std::vector<std::uint64_t> a2a_recv;  ///< all_to_all: what each member (by position) sends to this rank.
};

/// The bytes of communication op `op` (collective, send or recv; zero for any other op). An all_to_all's receive
/// sizes come from the other members' ops of its instance in `matching`.
[[nodiscard]] CommBytes comm_bytes(const schedule::Schedule& s, const schedule::Matching& matching,
                                   const schedule::Op& op);

/// The buffer sizes rank `rank` needs (zero for roles it does not use).
[[nodiscard]] RoleSizes role_sizes(const schedule::Schedule& s, const schedule::Matching& matching,
                                   schedule::RankId rank);

/// One op of a rank's issue plan.
struct PlannedOp {
  schedule::OpId op = schedule::kNoOp;
  bool gpu = false;                    ///< Runs on a stream (everything but host and host_sync).
  std::vector<std::uint32_t> deps;     ///< GPU ops (indices into RankPlan::ops) whose end its stream waits for.
  std::uint32_t host_sync = 0;         ///< host_sync: the index of its target in RankPlan::ops.
  std::uint32_t channel = kNoChannel;  ///< NCCL communication ops: index into ChannelPlan::channels.
  int peer = 0;          ///< NCCL rank, in the channel, of the send/recv peer or the broadcast root; a peer-mapped
                         ///< (copy_engine, sm_kernel) send/recv has no channel: its peer's global rank.
  int channel_size = 1;  ///< Members of the channel.
  CommBytes bytes;       ///< Communication ops only.
};

/// What one rank issues, in its program order, and the buffers it needs.
struct RankPlan {
  schedule::RankId rank = 0;
  std::vector<PlannedOp> ops;
  RoleSizes buffers{};
};

/// The plan of rank `rank`. The schedule must pass can_execute() (an op outside it is a bug, asserted).
[[nodiscard]] RankPlan plan_rank(const schedule::Schedule& s, const schedule::Matching& matching,
                                 const ChannelPlan& channels, schedule::RankId rank);

/// `op 12 "L0.fwd.qkv"`, as diagnostics and errors name an op.
[[nodiscard]] std::string quote_op(const schedule::Op& op);

/// The op's kind for messages: "compute", "collective all_reduce", "send", ..., "host_sync".
[[nodiscard]] std::string kind_word(const schedule::Op& op);

}  // namespace twinstep::backend
