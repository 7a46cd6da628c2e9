// Channels: the NCCL communicators a schedule runs on, derived from the cross-rank matching of schedule::match
// (the one matching of the codebase). Pure host code, tested without a GPU (tests/backend/channels_test.cpp).
//
// The IR lets ops on different streams of one communicator proceed independently; NCCL serializes the operations
// of one communicator in issue order on each rank, and an ungrouped send waits for its recv, so sharing one NCCL
// communicator would add orders the IR does not have (the ring exchange of tp_comm_overlap: each rank's recv
// queued behind its own send -> deadlock). So a collective runs on a communicator per (IR communicator, streams of
// its instance's members); a send/recv on one per (IR communicator, sender -> receiver, sender's stream,
// receiver's stream), plus the tag where tags reorder a direction (NCCL matches by order only). Within a channel
// each rank's ops lie on one stream, so NCCL's order is the stream's FIFO order, which the IR has anyway.
// Send/recv whose transport is copy_engine or sm_kernel get no channel: they run over peer-mapped memory
// (peer_memory.hpp; the runtime turns those between ranks that cannot map each other into NCCL ones first).
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "schedule/matching.hpp"
#include "schedule/schedule.hpp"

namespace twinstep::backend {

/// One NCCL communicator of a run.
struct CommChannel {
  std::string key;                        ///< Deterministic description, e.g. `coll "tp.0" streams tp,tp [0,1]`.
  std::vector<schedule::RankId> members;  ///< Global ranks; the NCCL rank of a member is its position here.
  bool point_to_point = false;            ///< Carries the sends of one sender to one receiver.
  bool all_to_all = false;                ///< Carries an all_to_all (grouped send/recv between all members).
  schedule::RankId src = 0, dst = 0;      ///< Sender and receiver (point-to-point channels only).
};

inline constexpr std::uint32_t kNoChannel = 0xFFFFFFFFu;

/// Every channel a schedule needs and which one each communication op uses.
struct ChannelPlan {
  std::vector<CommChannel> channels;         ///< In order of first use by op id: identical on every rank.
  std::vector<std::uint32_t> channel_of_op;  ///< Per op: index into `channels`, or kNoChannel.
};

/// Derives the channels from the schedule alone (every rank holds it in full, so every rank gets the same list).
/// A collective's channel is keyed by the streams of the ops of its instance in `matching`; a send/recv's by its
/// own stream and its partner's.
[[nodiscard]] ChannelPlan plan_channels(const schedule::Schedule& schedule, const schedule::Matching& matching);
/// The same, matching the schedule first.
[[nodiscard]] ChannelPlan plan_channels(const schedule::Schedule& schedule);

/// One ncclCommSplit call of the world communicator: member-disjoint channels created together, each with the
/// color of its position in `channels`.
struct SplitRound {
  std::vector<std::uint32_t> channels;  ///< Indices into ChannelPlan::channels.
};

/// Groups channels `todo` (indices into plan.channels, in that order) into split rounds: each channel goes to the
/// first round none of whose channels shares a member with it (members >= world_size are ignored). Every rank
/// computes the same rounds, so the split calls match across ranks.
[[nodiscard]] std::vector<SplitRound> split_rounds(const ChannelPlan& plan, std::span<const std::uint32_t> todo,
                                                   std::uint32_t world_size);

/// What rank `me` passes to the round's ncclCommSplit: the color and key of the channel it is a member of
/// (key = its position in the members, so that NCCL rank = position), or nullopt (NCCL_SPLIT_NOCOLOR).
struct SplitArgs {
  int color = 0;
  int key = 0;
  std::uint32_t channel = kNoChannel;  ///< The channel the new communicator serves.
};
[[nodiscard]] std::optional<SplitArgs> split_args(const ChannelPlan& plan, const SplitRound& round,
                                                  schedule::RankId me);

/// The position of `rank` in the channel's members (its NCCL rank there), or -1.
[[nodiscard]] int channel_rank(const CommChannel& channel, schedule::RankId rank);

}  // namespace twinstep::backend
