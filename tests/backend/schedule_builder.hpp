// Small hand-built schedules for the backend tests (planning tests and GPU tests alike): a world communicator,
// declared streams, and ops appended in program order.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "schedule/schedule.hpp"

namespace twinstep::backend::test {

namespace sch = twinstep::schedule;

/// `world` ranks, all present, the given streams, and communicator 0 = "world" holding every rank.
inline sch::Schedule base(std::uint32_t world, std::vector<sch::StreamDecl> streams = {{"compute", 0}, {"comm", -1}}) {
  sch::Schedule s;
  s.name = "test";
  s.world_size = world;
  for (std::uint32_t r = 0; r < world; ++r) s.ranks.push_back(r);
  s.streams = std::move(streams);
  sch::Communicator c;
  c.name = "world";
  c.kind = "world";
  for (std::uint32_t r = 0; r < world; ++r) c.members.push_back(r);
  s.communicators.push_back(c);
  return s;
}

/// Appends an op; `key` goes to tags.layer (the GPU tests' data hooks key their reference values on it).
inline sch::OpId add(sch::Schedule& s, sch::RankId rank, sch::StreamId stream, std::string name, sch::Body body,
                     std::vector<sch::OpId> deps = {}, int key = -1) {
  sch::Op op;
  op.id = static_cast<sch::OpId>(s.ops.size());
  op.rank = rank;
  op.stream = stream;
  op.name = std::move(name);
  op.body = std::move(body);
  op.deps = std::move(deps);
  op.tags.layer = key;
  s.ops.push_back(std::move(op));
  return s.ops.back().id;
}

inline sch::Compute gemm(std::uint64_t m, std::uint64_t n, std::uint64_t k, sch::DType t = sch::DType::kBF16) {
  return sch::Compute{sch::Gemm{m, n, k, 1, t}, 0};
}

inline sch::Compute elementwise(std::uint64_t bytes) { return sch::Compute{sch::Elementwise{bytes, 0}, 0}; }

/// The tp_comm_overlap pattern on two ranks: on each rank a send to the peer on stream "tx" then a recv from it on
/// "rx", `rounds` times, each round after a GEMM; the second round's send and recv carry `tag_of_second`.
inline sch::Schedule ring_exchange(std::uint64_t bytes, int rounds, std::uint32_t tag_of_second = 0) {
  auto s = base(2, {{"compute", 0}, {"tp", -1}, {"tx", -1}, {"rx", -1}});
  for (int k = 0; k < rounds; ++k) {
    for (sch::RankId r = 0; r < 2; ++r) {
      const auto g = add(s, r, 0, "gemm" + std::to_string(k), gemm(2048, 2048, 2048));
      add(s, r, 2, "send" + std::to_string(k), sch::Send{0, 1 - r, bytes, k == 1 ? tag_of_second : 0}, {g}, 1);
      add(s, r, 3, "recv" + std::to_string(k), sch::Recv{0, 1 - r, bytes, k == 1 ? tag_of_second : 0}, {}, 1);
    }
  }
  return s;
}

}  // namespace twinstep::backend::test
