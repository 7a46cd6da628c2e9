// The one hand-built schedule of tests and benches: it creates the ranks, streams and communicators and appends ops
// in program order with dense ids and their deps, so a test reads like the timeline it describes. Header-only, on
// schedule/ alone (CMake target twinstep::test_support): the schedule/, sim/, evaluate/, calibration/ and backend
// tests and the device benchmarks of bench/backend/ build their schedules with it. Validity is the caller's to check.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "schedule/schedule.hpp"

namespace twinstep::testing {

/// The streams a builder declares unless told otherwise: compute (0) and comm (1, priority -1).
inline std::vector<schedule::StreamDecl> default_streams() { return {{"compute", 0}, {"comm", -1}}; }

/// A GEMM kernel m x n x k (one batch) in `dtype`.
inline schedule::Compute gemm_kernel(std::uint64_t m, std::uint64_t n, std::uint64_t k,
                                     schedule::DType dtype = schedule::DType::kBF16) {
  return schedule::Compute{schedule::Gemm{m, n, k, 1, dtype}, 0};
}

/// A bandwidth-bound kernel reading and writing `bytes`.
inline schedule::Compute elementwise_kernel(std::uint64_t bytes) {
  return schedule::Compute{schedule::Elementwise{bytes, 0}, 0};
}

/// Tags with only the layer set (the backend's GPU tests key their data hooks' reference values on it).
inline schedule::Tags layer_tag(int layer) {
  schedule::Tags t;
  t.layer = layer;
  return t;
}

/// Appends ops (and communicators) to a schedule; each append returns the new op's (or communicator's) id.
class ScheduleBuilder {
 public:
  /// Appends to `s` as it is (its ranks, streams and communicators).
  explicit ScheduleBuilder(schedule::Schedule s) : s_(std::move(s)) {}
  /// `world` ranks, all present, the given streams, no communicator yet (world() and comm() add them).
  explicit ScheduleBuilder(std::uint32_t world, std::vector<schedule::StreamDecl> streams = default_streams(),
                           std::string name = "test") {
    s_.name = std::move(name);
    s_.world_size = world;
    for (schedule::RankId r = 0; r < world; ++r) s_.ranks.push_back(r);
    s_.streams = std::move(streams);
  }

  schedule::CommId comm(const std::string& name, const std::string& kind, std::vector<schedule::RankId> members) {
    s_.communicators.push_back(schedule::Communicator{name, kind, std::move(members)});
    return static_cast<schedule::CommId>(s_.communicators.size() - 1);
  }
  /// A communicator named "world" of kind `kind` holding every rank of the world.
  schedule::CommId world(const std::string& kind = "world") { return comm("world", kind, every_rank()); }
  /// Ranks 0 .. world_size - 1: the member list of a communicator over the whole world.
  [[nodiscard]] std::vector<schedule::RankId> every_rank() const {
    std::vector<schedule::RankId> all;
    for (schedule::RankId r = 0; r < s_.world_size; ++r) all.push_back(r);
    return all;
  }

  schedule::OpId add(schedule::RankId rank, std::string name, schedule::StreamId stream, schedule::Body body,
                     std::vector<schedule::OpId> deps = {}, schedule::Tags tags = {}) {
    schedule::Op op;
    op.id = next_id();
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
    return add(r, std::move(name), st, gemm_kernel(m, n, k), std::move(deps), std::move(tags));
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

  /// The id the next appended op gets.
  [[nodiscard]] schedule::OpId next_id() const { return static_cast<schedule::OpId>(s_.ops.size()); }
  schedule::Schedule& schedule() { return s_; }
  schedule::Schedule take() { return std::move(s_); }

 private:
  schedule::Schedule s_;
};

}  // namespace twinstep::testing
