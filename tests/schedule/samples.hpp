// Hand-written schedules shared by the schedule/ tests: every op kind and kernel class, valid by construction.
// Builders append ops in program order and return their ids, so tests read like the timelines they describe.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "schedule/builder.hpp"
#include "schedule/schedule.hpp"

namespace twinstep::schedule::testing {

using Builder = twinstep::schedule::ScheduleBuilder;

/// A `world`-rank skeleton: streams compute (0) and comm (1, priority -1), communicator "world" (kind dp).
inline Schedule skeleton(std::uint32_t world, const std::string& name = "test") {
  Builder b(world, twinstep::schedule::default_streams(), name);
  b.world("dp");
  return b.take();
}

/// Two ranks, every op kind and every kernel class, tags, meta and warnings: valid.
inline Schedule every_kind() {
  Schedule s = skeleton(2, "every_kind");
  s.streams.push_back({"pp_send", 2});
  s.communicators.push_back({"pp.0", "pp", {0, 1}});
  s.meta = {{"generator", "hand"}, {"model", "tiny \"quoted\"\n"}};
  s.warnings = {"tp_comm_overlap disabled: needs sequence_parallel"};
  Builder b(std::move(s));
  for (RankId r = 0; r < 2; ++r) {
    Tags t;
    t.layer = 3;
    t.microbatch = 1;
    t.chunk = 0;
    t.phase = Phase::kFwd;
    t.overlap = "tp";
    b.host(r, "r" + std::to_string(r) + ".host", 1500);
    const OpId g = b.add(r, "gemm", 0, Compute{Gemm{4096, 1024, 512, 2, DType::kFP8}, 0}, {}, t);
    b.add(r, "grouped", 0, Compute{GroupedGemm{{128, 0, 77}, 2048, 1024, DType::kBF16}, 0});
    b.add(r, "attn", 0, Compute{Attention{1, 32, 8, 4096, 4096, 128, true, false, DType::kBF16}, 0});
    b.add(r, "attn_bwd", 0, Compute{Attention{2, 16, 16, 1024, 2048, 64, false, true, DType::kFP16}, 0});
    b.add(r, "ew", 0, Compute{Elementwise{1 << 20, 1 << 18}, 0});
    b.add(r, "adam", 0, Compute{Optimizer{1000000, DType::kFP32}, 0});
    const OpId cp = b.add(r, "d2h", 0, Compute{Memcpy{64, CopyKind::kD2H}, 0});
    b.add(r, "fused_dispatch", 1, Compute{Elementwise{4096, 0}, 24});
    b.add(r, "sync", 0, HostSync{cp});
    b.all_reduce(r, "ar", 1, 0, 1 << 24, {g});
    Collective ag{CollectiveKind::kAllGather, 0, 1 << 20, DType::kFP32, {}, 0};
    b.add(r, "ag", 1, ag);
    Collective rs{CollectiveKind::kReduceScatter, 0, 1 << 20, DType::kBF16, {}, 0};
    b.add(r, "rs", 1, rs);
    Collective a2a{CollectiveKind::kAllToAll, 0, 300, DType::kBF16, {100, 200}, 0, 24};  // a fused kernel of 24 SMs
    if (r == 1) a2a = Collective{CollectiveKind::kAllToAll, 0, 150, DType::kBF16, {50, 100}, 0, 24};
    b.add(r, "a2a", 1, a2a);
    Collective bc{CollectiveKind::kBroadcast, 0, 4096, DType::kInt64, {}, 1};
    b.add(r, "bcast", 1, bc, {g});
    if (r == 0) {
      b.add(r, "send", 2, Send{1, 1, 8192, 7});
    } else {
      b.add(r, "recv", 2, Recv{1, 0, 8192, 7});
    }
  }
  return b.take();
}

}  // namespace twinstep::schedule::testing
