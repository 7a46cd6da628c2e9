// Hand-written schedules shared by the schedule/ tests: every op kind and kernel class, valid by construction.
// Builders append ops in program order and return their ids, so tests read like the timelines they describe.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "schedule/schedule.hpp"

namespace twinstep::schedule::testing {

/// Appends ops to a schedule with dense ids.
class Builder {
 public:
  explicit Builder(Schedule s) : s_(std::move(s)) {}

  OpId add(RankId rank, std::string name, StreamId stream, Body body, std::vector<OpId> deps = {}, Tags tags = {}) {
    Op op;
    op.id = static_cast<OpId>(s_.ops.size());
    op.rank = rank;
    op.name = std::move(name);
    op.stream = stream;
    op.body = std::move(body);
    op.deps = std::move(deps);
    op.tags = std::move(tags);
    s_.ops.push_back(std::move(op));
    return s_.ops.back().id;
  }
  OpId gemm(RankId r, std::string name, StreamId st, std::uint64_t m, std::uint64_t n, std::uint64_t k,
            std::vector<OpId> deps = {}) {
    return add(r, std::move(name), st, Compute{Gemm{m, n, k, 1, DType::kBF16}, 0}, std::move(deps));
  }
  OpId all_reduce(RankId r, std::string name, StreamId st, CommId comm, std::uint64_t bytes,
                  std::vector<OpId> deps = {}) {
    Collective c;
    c.kind = CollectiveKind::kAllReduce;
    c.comm = comm;
    c.bytes = bytes;
    return add(r, std::move(name), st, c, std::move(deps));
  }
  OpId host(RankId r, std::string name, Nanos ns) { return add(r, std::move(name), 0, Host{ns}); }

  Schedule& schedule() { return s_; }
  Schedule take() { return std::move(s_); }

 private:
  Schedule s_;
};

/// A `world`-rank skeleton: streams compute (0) and comm (1, priority -1), communicator "world" (kind dp).
inline Schedule skeleton(std::uint32_t world, const std::string& name = "test") {
  Schedule s;
  s.name = name;
  s.world_size = world;
  for (RankId r = 0; r < world; ++r) s.ranks.push_back(r);
  s.streams = {{"compute", 0}, {"comm", -1}};
  Communicator c{"world", "dp", {}};
  c.members = s.ranks;
  s.communicators.push_back(c);
  return s;
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
