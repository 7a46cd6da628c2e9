// Peer-mapped buffers for send/recv whose transport is copy_engine or sm_kernel (Transformer Engine userbuffers'
// ring exchange, docs/ir.md "Transports"): which buffers each rank exposes to its peers, and the exchange of their
// memory handles (cudaIpcMemHandle_t, or a cuMem VMM shareable handle) at start-up through the MPI bootstrap.
// Planning and the handle encoding are pure host code (tests/backend/peer_memory_test.cpp). The CUDA side (export,
// import and map the peer's buffer, cudaMemcpyAsync into it) is not built yet: it needs two GPUs to test. Until it
// is, the executor runs such ops as NCCL send/recv and the trace's context says so (`transport_ran`).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "schedule/schedule.hpp"

namespace twinstep::backend {

/// A buffer a rank exposes for one peer to write into (the receiving side of a copy-engine or sm_kernel pair): the
/// sender copies its message straight into it, so the receiver owns it, sized for the largest message.
struct PeerBuffer {
  schedule::CommId comm = 0;
  schedule::RankId peer = 0;  ///< The rank that writes into it.
  schedule::Transport transport = schedule::Transport::kCopyEngine;
  std::uint64_t bytes = 0;  ///< The largest message received from `peer` over it.
  bool operator==(const PeerBuffer&) const = default;
};

/// The peer buffers of `rank`, one per (communicator, sending peer, transport) of its non-NCCL recvs, in that order.
[[nodiscard]] std::vector<PeerBuffer> plan_peer_buffers(const schedule::Schedule& schedule, schedule::RankId rank);

/// Device bytes of `rank`'s peer buffers (part of what the run needs beyond the role buffers).
[[nodiscard]] std::uint64_t peer_buffer_bytes(const std::vector<PeerBuffer>& buffers);

/// An exported device-memory handle: opaque bytes (64 for cudaIpcMemHandle_t) and the size of the allocation.
struct MemHandle {
  std::string bytes;
  std::uint64_t size = 0;
  bool operator==(const MemHandle&) const = default;
};

/// How handles travel at start-up: each process contributes its handle, all receive every process's, in rank order.
/// The runtime's implementation is the MPI bootstrap's all_gather of strings (MpiGroup) over encode/decode below.
class HandleExchange {
 public:
  virtual ~HandleExchange() = default;
  [[nodiscard]] virtual std::vector<MemHandle> all_gather(const MemHandle& mine) = 0;
};

class MpiGroup;

/// The exchange over the MPI bootstrap: MpiGroup::all_gather of encode_handle's strings, decoded.
class MpiHandleExchange final : public HandleExchange {
 public:
  explicit MpiHandleExchange(MpiGroup& mpi) : mpi_(mpi) {}
  [[nodiscard]] std::vector<MemHandle> all_gather(const MemHandle& mine) override;

 private:
  MpiGroup& mpi_;
};

/// A handle as one string (8-byte little-endian size, then the handle's bytes) and back; decode throws
/// twinstep::Error on a string that is not one.
[[nodiscard]] std::string encode_handle(const MemHandle& handle);
[[nodiscard]] MemHandle decode_handle(std::string_view text);

/// For the trace's context: per transport the schedule uses other than nccl, what ran it ("copy_engine" -> "nccl":
/// until the peer-mapped path is built every transport runs as NCCL send/recv). Empty when all are nccl.
[[nodiscard]] std::map<std::string, std::string> transports_ran(const schedule::Schedule& schedule);

}  // namespace twinstep::backend
