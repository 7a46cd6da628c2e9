// The one schedule builder: it creates the ranks, streams and communicators and appends ops in program order with
// dense ids and their deps, so the code that builds a schedule by hand reads like the timeline it describes. Used by
// calibration's microbenchmark suites (calibration/suite.cpp), the tests of every module and the device benchmarks
// of bench/backend/. Header-only, on schedule.hpp alone. Validity is the caller's to check (schedule/validate.hpp).
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "common/units.hpp"
#include "schedule/schedule.hpp"

namespace twinstep::schedule {

/// The streams a builder declares unless told otherwise: compute (0) and comm (1, priority -1).
inline std::vector<StreamDecl> default_streams() { return {{"compute", 0}, {"comm", -1}}; }

/// A GEMM kernel m x n x k (one batch) in `dtype`.
inline Compute gemm_kernel(std::uint64_t m, std::uint64_t n, std::uint64_t k, DType dtype = DType::kBF16) {
  return Compute{Gemm{m, n, k, 1, dtype}, 0};
}

/// A bandwidth-bound kernel reading and writing `bytes`.
inline Compute elementwise_kernel(std::uint64_t bytes) { return Compute{Elementwise{bytes, 0}, 0}; }

/// Appends ops (and communicators) to a schedule; each append returns the new op's (or communicator's) id.
class ScheduleBuilder {
 public:
  /// Appends to `s` as it is (its ranks, streams and communicators).
  explicit ScheduleBuilder(Schedule s) : s_(std::move(s)) {}
  /// `world` ranks, all present, the given streams, no communicator yet (world() and comm() add them).
  explicit ScheduleBuilder(std::uint32_t world, std::vector<StreamDecl> streams = default_streams(),
                           std::string name = "test") {
    s_.name = std::move(name);
    s_.world_size = world;
    for (RankId r = 0; r < world; ++r) s_.ranks.push_back(r);
    s_.streams = std::move(streams);
  }

  CommId comm(const std::string& name, const std::string& kind, std::vector<RankId> members) {
    s_.communicators.push_back(Communicator{name, kind, std::move(members)});
    return static_cast<CommId>(s_.communicators.size() - 1);
  }
  /// A communicator named "world" of kind `kind` holding every rank of the world.
  CommId world(const std::string& kind = "world") { return comm("world", kind, every_rank()); }
  /// Ranks 0 .. world_size - 1: the member list of a communicator over the whole world.
  [[nodiscard]] std::vector<RankId> every_rank() const {
    std::vector<RankId> all;
    for (RankId r = 0; r < s_.world_size; ++r) all.push_back(r);
    return all;
  }

  OpId add(RankId rank, std::string name, StreamId stream, Body body, DepList deps = {}, Tags tags = {}) {
    Op op;
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
  OpId gemm(RankId r, std::string name, StreamId st, std::uint64_t m, std::uint64_t n, std::uint64_t k,
            DepList deps = {}, Tags tags = {}) {
    return add(r, std::move(name), st, gemm_kernel(m, n, k), std::move(deps), std::move(tags));
  }
  OpId collective(RankId r, std::string name, StreamId st, CollectiveKind kind, CommId comm, std::uint64_t bytes,
                  DepList deps = {}) {
    Collective c;
    c.kind = kind;
    c.comm = comm;
    c.bytes = bytes;
    return add(r, std::move(name), st, c, std::move(deps));
  }
  OpId all_reduce(RankId r, std::string name, StreamId st, CommId comm, std::uint64_t bytes, DepList deps = {}) {
    return collective(r, std::move(name), st, CollectiveKind::kAllReduce, comm, bytes, std::move(deps));
  }
  OpId send(RankId r, std::string name, StreamId st, CommId comm, RankId peer, std::uint64_t bytes, std::uint32_t tag,
            DepList deps = {}) {
    return add(r, std::move(name), st, Send{comm, peer, bytes, tag}, std::move(deps));
  }
  OpId recv(RankId r, std::string name, StreamId st, CommId comm, RankId peer, std::uint64_t bytes, std::uint32_t tag,
            DepList deps = {}) {
    return add(r, std::move(name), st, Recv{comm, peer, bytes, tag}, std::move(deps));
  }
  /// A host op of `ns` on stream 0.
  OpId host(RankId r, std::string name, Nanos ns) { return add(r, std::move(name), 0, Host{ns}); }

  /// The id the next appended op gets.
  [[nodiscard]] OpId next_id() const { return static_cast<OpId>(s_.ops.size()); }
  Schedule& schedule() { return s_; }
  Schedule take() { return std::move(s_); }

 private:
  Schedule s_;
};

}  // namespace twinstep::schedule
