// Peer-mapped transfers of send/recv whose transport is copy_engine or sm_kernel (Transformer Engine userbuffers'
// ring exchange, docs/ir.md "Transports"), the host-side half: which ranks can map each other's memory (and the
// fallback to NCCL send/recv where they cannot), the layout of each rank's peer-mapped allocation (receive slots and
// flags), the memory-handle exchange at start-up through the MPI bootstrap, and what the trace's context says ran.
// Pure host code (tests/backend/peer_memory_test.cpp); the CUDA side that binds this layout is peer_link.hpp.
//
// The protocol (peer_link.cpp runs it). A link is one direction (communicator, sender, receiver, tag, transport);
// its messages match in program order on both sides (the IR matches send/recv by communicator, peer, tag and
// order). The receiver owns `slots` receive slots of the link's largest message and one ready flag per slot; the
// sender owns one credit flag per slot. Message k of a link (counted from 0 over the whole run, on both sides) goes
// to slot k % slots:
//   sender:   [k >= slots: wait credit[k % slots] >= k - slots + 1]  copy into the peer's slot  ready[k % slots] = k+1
//   receiver: wait ready[k % slots] >= k + 1   credit[k % slots] = k + 1 (written into the sender's flags)
// Waits and flag writes are one-thread kernels on the op's stream (kernels.hpp): a waiting stream holds one block of
// one thread, and a flag is written after a system-scope fence, so the copy before it in stream order is visible. A
// slot is handed back when its recv op completes: the backend's compute ops read their role buffers, not the received
// bytes, so no consumer of a message is tracked.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "schedule/schedule.hpp"

namespace twinstep::backend {

/// Receive slots per link: double buffering (a sender may run one message ahead of its receiver), fewer when the
/// link carries fewer messages per step.
inline constexpr std::uint32_t kPeerSlots = 2;
/// Alignment of every receive slot in a rank's peer allocation (and of the flags block's end).
inline constexpr std::uint64_t kPeerSlotAlign = 4096;
inline constexpr std::uint32_t kNoLink = 0xFFFFFFFFu;

/// One direction of peer-mapped send/recv traffic.
struct PeerLink {
  schedule::CommId comm = 0;
  schedule::RankId src = 0;  ///< The sender: writes into the receiver's slots and ready flags, owns the credits.
  schedule::RankId dst = 0;  ///< The receiver: owns the slots and ready flags, writes the sender's credits.
  std::uint32_t tag = 0;
  schedule::Transport transport = schedule::Transport::kCopyEngine;
  std::uint64_t slot_bytes = 0;     ///< The link's largest message, rounded up to kPeerSlotAlign.
  std::uint32_t slots = 0;          ///< min(kPeerSlots, messages per step).
  std::uint64_t data_offset = 0;    ///< In dst's allocation: slot i at data_offset + i * slot_bytes.
  std::uint64_t ready_offset = 0;   ///< In dst's allocation: `slots` uint32 ready flags.
  std::uint64_t credit_offset = 0;  ///< In src's allocation: `slots` uint32 credit flags.
  bool operator==(const PeerLink&) const = default;
};

/// Every peer-mapped link of a schedule and every rank's allocation: identical on every rank (computed from the
/// whole schedule), so offsets into a peer's allocation need no exchange beyond its base handle.
struct PeerLayout {
  std::vector<PeerLink> links;            ///< Ordered by (comm, src, dst, tag, transport).
  std::vector<std::uint64_t> rank_bytes;  ///< Per rank of the schedule: its allocation (0: none).
  std::vector<std::uint32_t> link_of_op;  ///< Per op: index into `links` of a non-NCCL send/recv, else kNoLink.
  [[nodiscard]] bool empty() const { return links.empty(); }
};

/// The layout of `schedule`'s non-NCCL send/recv (a schedule whose fallbacks were applied: with_fallbacks). Each
/// rank's allocation starts with its flags (ready flags of the links it receives, credit flags of those it sends,
/// in link order), then its receive slots, each kPeerSlotAlign-aligned.
[[nodiscard]] PeerLayout plan_peer_layout(const schedule::Schedule& schedule);

/// The protocol's steps for message `k` of a link (counted from 0 over the run), on the sending side: wait until the
/// slot's credit flag reaches `credit_at_least` (only when `wait_credit`), copy into `slot`, set its ready flag to
/// `ready_value`.
struct PeerSendStep {
  std::uint64_t slot = 0;
  bool wait_credit = false;
  std::uint32_t credit_at_least = 0;
  std::uint32_t ready_value = 0;
};
[[nodiscard]] PeerSendStep send_step(const PeerLink& link, std::uint64_t k);

/// On the receiving side: wait until the slot's ready flag reaches `ready_at_least`, then set the sender's credit flag
/// of the slot to `credit_value`. Flags compare cyclically ((int32)(flag - target) >= 0).
struct PeerRecvStep {
  std::uint64_t slot = 0;
  std::uint32_t ready_at_least = 0;
  std::uint32_t credit_value = 0;
};
[[nodiscard]] PeerRecvStep recv_step(const PeerLink& link, std::uint64_t k);

/// Whether two ranks can map each other's memory, and if not why.
enum class Reach : std::uint8_t { kMappable, kOtherHost, kNoPeerAccess };

/// What each rank found about the others: its host and, per rank of its host, whether its GPU can map that rank's
/// (the same GPU, or cudaDeviceCanAccessPeer true with the peer's GPU visible to it).
struct RankView {
  std::string host;
  std::vector<bool> can_map;  ///< Per rank; read only for ranks of the same host.
};

/// The reach between every two ranks from every rank's view: mappable only when both are on one host and each can
/// map the other (the test is symmetric, so both sides of a pair take the same transport).
[[nodiscard]] std::vector<std::vector<Reach>> reach_matrix(const std::vector<RankView>& views);

/// A pair of ranks whose non-NCCL send/recv run as NCCL send/recv instead.
struct Fallback {
  schedule::RankId a = 0, b = 0;  ///< a < b
  Reach why = Reach::kOtherHost;
};

/// `schedule` with every copy_engine / sm_kernel send/recv between ranks that cannot map each other turned into an
/// NCCL one (sm_count 0); `fallbacks` (if given) receives those pairs, in rank order.
[[nodiscard]] schedule::Schedule with_fallbacks(const schedule::Schedule& schedule,
                                                const std::vector<std::vector<Reach>>& reach,
                                                std::vector<Fallback>* fallbacks = nullptr);

/// Whether any op of `schedule` runs on NCCL (a collective, or a send/recv whose transport is nccl).
[[nodiscard]] bool uses_nccl(const schedule::Schedule& schedule);

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

/// For the trace's context: per transport `asked` uses other than nccl, what ran it: the transport itself where
/// every op of it ran peer-mapped in `ran`, "nccl" where every one fell back, "<transport>+nccl" where some did.
/// Empty when `asked` has none.
[[nodiscard]] std::map<std::string, std::string> transports_ran(const schedule::Schedule& asked,
                                                                const schedule::Schedule& ran);

/// The context's `transport_ran` value: "copy_engine" (ran as asked), "copy_engine:nccl" (fell back), comma-joined.
[[nodiscard]] std::string transport_ran_text(const std::map<std::string, std::string>& ran);

/// One line naming each pair that fell back and why, for the context's `transport_note`; empty when none did.
[[nodiscard]] std::string fallback_text(const std::vector<Fallback>& fallbacks);

}  // namespace twinstep::backend
