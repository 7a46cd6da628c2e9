// A hand-built schedule for tests, written once for the schedule/ and sim/ tests: ops appended in program order
// with dense ids, so a test reads like the timeline it describes. Header-only; validity is the test's to check.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "schedule/schedule.hpp"

namespace twinstep::testing {

/// Appends ops (and communicators) to a schedule; each append returns the new op's id.
class ScheduleBuilder {
 public:
  /// Appends to `s` as it is (its ranks, streams and communicators).
  explicit ScheduleBuilder(schedule::Schedule s) : s_(std::move(s)) {}
  /// `world` ranks, all present, the given streams, no communicator yet (comm() adds them).
  ScheduleBuilder(std::uint32_t world, std::vector<schedule::StreamDecl> streams) {
    s_.name = "test";
    s_.world_size = world;
    for (schedule::RankId r = 0; r < world; ++r) s_.ranks.push_back(r);
    s_.streams = std::move(streams);
  }

  schedule::CommId comm(const std::string& name, const std::string& kind, std::vector<schedule::RankId> members) {
    s_.communicators.push_back(schedule::Communicator{name, kind, std::move(members)});
    return static_cast<schedule::CommId>(s_.communicators.size() - 1);
  }
  schedule::OpId add(schedule::RankId rank, std::string name, schedule::StreamId stream, schedule::Body body,
                     std::vector<schedule::OpId> deps = {}, schedule::Tags tags = {}) {
    schedule::Op op;
    op.id = static_cast<schedule::OpId>(s_.ops.size());
    op.rank = rank;
    op.name = std::move(name);
    op.stream = stream;
    op.body = std::move(body);
    op.deps = std::move(deps);
    op.tags = std::move(tags);
    s_.ops.push_back(std::move(op));
    return s_.ops.back().id;
  }
  /// A bf16 GEMM m x n x k.
  schedule::OpId gemm(schedule::RankId r, std::string name, schedule::StreamId st, std::uint64_t m, std::uint64_t n,
                      std::uint64_t k, std::vector<schedule::OpId> deps = {}, schedule::Tags tags = {}) {
    return add(r, std::move(name), st, schedule::Compute{schedule::Gemm{m, n, k, 1, schedule::DType::kBF16}, 0},
               std::move(deps), std::move(tags));
  }
  schedule::OpId collective(schedule::RankId r, std::string name, schedule::StreamId st, schedule::CollectiveKind kind,
                            schedule::CommId comm, std::uint64_t bytes, std::vector<schedule::OpId> deps = {}) {
    schedule::Collective c;
    c.kind = kind;
    c.comm = comm;
    c.bytes = bytes;
    return add(r, std::move(name), st, c, std::move(deps));
  }
  schedule::OpId all_reduce(schedule::RankId r, std::string name, schedule::StreamId st, schedule::CommId comm,
                            std::uint64_t bytes, std::vector<schedule::OpId> deps = {}) {
    return collective(r, std::move(name), st, schedule::CollectiveKind::kAllReduce, comm, bytes, std::move(deps));
  }
  schedule::OpId send(schedule::RankId r, std::string name, schedule::StreamId st, schedule::CommId comm,
                      schedule::RankId peer, std::uint64_t bytes, std::uint32_t tag,
                      std::vector<schedule::OpId> deps = {}) {
    return add(r, std::move(name), st, schedule::Send{comm, peer, bytes, tag}, std::move(deps));
  }
  schedule::OpId recv(schedule::RankId r, std::string name, schedule::StreamId st, schedule::CommId comm,
                      schedule::RankId peer, std::uint64_t bytes, std::uint32_t tag,
                      std::vector<schedule::OpId> deps = {}) {
    return add(r, std::move(name), st, schedule::Recv{comm, peer, bytes, tag}, std::move(deps));
  }
  /// A host op of `ns` on stream 0.
  schedule::OpId host(schedule::RankId r, std::string name, Nanos ns) {
    return add(r, std::move(name), 0, schedule::Host{ns});
  }

  schedule::Schedule& schedule() { return s_; }
  schedule::Schedule take() { return std::move(s_); }

 private:
  schedule::Schedule s_;
};

}  // namespace twinstep::testing
