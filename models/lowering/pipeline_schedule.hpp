// Pipeline schedules (megatron-overlap.md section 4b): the virtual-id table of the interleaved schedule, its
// warm-up length, the P2P exchange flags, and the per-rank bookkeeping of interleaved 1F1B. The RankLowering
// members that run the schedules (no pipelining, 1F1B, interleaved) live in pipeline_schedule.cpp.
#pragma once

#include <cstdint>
#include <set>
#include <utility>
#include <vector>

namespace twinstep::models::lowering {

/// (micro-batch, chunk) of each forward virtual id of the interleaved schedule.
struct VirtualTable {
  std::vector<std::pair<std::uint32_t, std::uint32_t>> entries;
};

/// MCore's order: groups of `group` micro-batches, each run through the `vpp` chunks in turn.
[[nodiscard]] VirtualTable schedule_table(std::uint32_t microbatches, std::uint32_t vpp, std::uint32_t group);

/// Forward steps before the first backward on pipeline rank `pp_rank` of the interleaved schedule,
/// 2 (pp - pp_rank - 1) + (vpp - 1) group, and one more for the combined 1F1B of EP overlap. Not capped at the
/// schedule's length (the callers do).
[[nodiscard]] inline std::uint32_t interleaved_warmup(std::uint32_t pp, std::uint32_t pp_rank, std::uint32_t vpp,
                                                      std::uint32_t group, bool ep_overlap) {
  return 2 * (pp - pp_rank - 1) + (vpp - 1) * group + (ep_overlap ? 1 : 0);
}

/// The P2P ops of one exchange between neighbouring pipeline ranks, and the chunks the received tensors are for.
struct Exchange {
  bool send_next = false, recv_prev = false, send_prev = false, recv_next = false;
  std::uint32_t recv_prev_chunk = 0, recv_next_chunk = 0;
};

/// Interleaved 1F1B on one pipeline rank: virtual ids -> (micro-batch, chunk), phase lengths, and the chunks whose
/// grads were already reduced.
struct Interleaving {
  std::uint32_t pp = 1, vpp = 1, pp_rank = 0, microbatches = 1;
  VirtualTable table;
  std::uint32_t total = 0, warmup = 0, remaining = 0;
  bool all_warmup = false;         ///< Every forward runs before the first backward.
  std::set<std::uint32_t> synced;  ///< Chunks whose aligned grad reduction was dispatched.

  [[nodiscard]] std::uint32_t fchunk(std::uint32_t vid) const { return table.entries[vid % total].second; }
  [[nodiscard]] std::uint32_t fmb(std::uint32_t vid) const { return table.entries[vid].first; }
  [[nodiscard]] std::uint32_t bchunk(std::uint32_t vid) const { return vpp - 1 - table.entries[vid % total].second; }
  [[nodiscard]] std::uint32_t bmb(std::uint32_t vid) const { return table.entries[vid].first; }
  /// recv_tensor_from_previous_stage (MCore): whether a tensor arrives after virtual id `vid`, and for which chunk.
  void from_prev(std::uint32_t vid, bool forward, bool& recv, std::uint32_t& next_chunk) const;
};

}  // namespace twinstep::models::lowering
