// Peer-mapped transfers, the CUDA side: one rank's end of the copy_engine / sm_kernel links of a run, bound to the
// layout and protocol of peer_memory.hpp. This rank's allocation (flags and receive slots) is exported as a CUDA IPC
// handle, the handles travel through the MPI bootstrap, and each peer's allocation is opened here; a send is a
// cudaMemcpyAsync (copy_engine) or a copy kernel on sm_count SMs (sm_kernel) into the peer's slot. Flags are raised
// and awaited by one-thread kernels (kernels.hpp), as Transformer Engine's userbuffers do: a stream memory wait
// (cuStreamWaitValue32) would block every stream that shares its hardware queue (CUDA_DEVICE_MAX_CONNECTIONS), so
// a GEMM behind a waiting recv could not start, or a send behind it never come. Backend-internal: execute.cpp only.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "backend/handles.hpp"
#include "backend/peer_memory.hpp"

namespace twinstep::backend {

class MpiGroup;

/// What this rank finds about every rank of the group (collective: two all_gathers over the bootstrap): its host
/// and whether its GPU can map each other rank's, judged by PCI bus id (the same GPU, or a GPU visible here with
/// cudaDeviceCanAccessPeer true).
[[nodiscard]] std::vector<RankView> gather_rank_views(MpiGroup& mpi, const std::string& host, int device);

/// This rank's end of every link of a layout. Constructing and close() are collective over the group; between them
/// send() and recv() issue the protocol's steps on a stream, in each link's message order.
class PeerLinks {
 public:
  /// Allocates and zeroes this rank's flags and slots, exchanges the handles through `exchange` and opens the
  /// allocation of every rank this one writes into.
  PeerLinks(const PeerLayout& layout, schedule::RankId me, HandleExchange& exchange);
  /// Without close(): a peer may still be writing into this rank's allocation, so it is leaked, not freed (a run
  /// that throws leaks its peer buffers).
  ~PeerLinks();
  PeerLinks(const PeerLinks&) = delete;
  PeerLinks& operator=(const PeerLinks&) = delete;

  [[nodiscard]] const PeerLayout& layout() const { return layout_; }
  /// Issues the next message of `op`'s link (op is a send of it): waits for the slot's credit, copies `bytes` from
  /// `src` into the receiver's slot, raises the slot's ready flag. Errors name the op and the rank.
  void send(const schedule::Op& op, const void* src, std::uint64_t bytes, cudaStream_t stream);
  /// Issues the next recv of `op`'s link: waits for the slot's ready flag, hands the slot's credit back.
  void recv(const schedule::Op& op, cudaStream_t stream);
  /// Where the next recv of `link` receives (this rank's slot).
  [[nodiscard]] void* next_recv_slot(std::uint32_t link) const;
  /// Messages sent and received so far on `link`, by this rank.
  [[nodiscard]] std::uint64_t sent(std::uint32_t link) const { return sent_[link]; }
  [[nodiscard]] std::uint64_t received(std::uint32_t link) const { return received_[link]; }
  /// Collective, once every rank's streams have drained: closes the peers' allocations, waits at `barrier` for every
  /// rank to have closed this one's (freeing an exported allocation still open elsewhere is undefined), frees it.
  void close(const std::function<void()>& barrier);

 private:
  [[nodiscard]] std::uint32_t* flag(schedule::RankId owner, std::uint64_t offset, std::uint64_t slot) const;

  PeerLayout layout_;
  schedule::RankId me_;
  DeviceMemory own_;                  ///< This rank's flags and slots (empty when it has none).
  std::vector<IpcMapping> imported_;  ///< Per rank: its allocation opened here (empty for this rank and non-peers).
  std::vector<char*> base_;           ///< Per rank: where its allocation lies in this process (null: not mapped).
  std::vector<std::uint64_t> sent_, received_;  ///< Per link: messages issued by this rank so far.
  bool closed_ = false;
};

}  // namespace twinstep::backend
