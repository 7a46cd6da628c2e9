// Hand-built schedules and cost settings for the simulator tests: a small builder that appends ops in program
// order, and helpers for profiles that reduce the NCCL model to closed forms (no launch costs, fixed channels).
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "schedule/schedule.hpp"
#include "sim/cost_model.hpp"
#include "topologies/cluster.hpp"

namespace twinstep::sim::testing {

using namespace twinstep::schedule;

class Builder {
 public:
  Builder(std::uint32_t world, std::vector<StreamDecl> streams) {
    s_.name = "test";
    s_.world_size = world;
    for (RankId r = 0; r < world; ++r) s_.ranks.push_back(r);
    s_.streams = std::move(streams);
  }
  CommId comm(const std::string& name, const std::string& kind, std::vector<RankId> members) {
    s_.communicators.push_back(Communicator{name, kind, std::move(members)});
    return static_cast<CommId>(s_.communicators.size() - 1);
  }
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
            std::vector<OpId> deps = {}, Tags tags = {}) {
    return add(r, std::move(name), st, Compute{Gemm{m, n, k, 1, DType::kBF16}, 0}, std::move(deps), std::move(tags));
  }
  OpId collective(RankId r, std::string name, StreamId st, CollectiveKind kind, CommId comm, std::uint64_t bytes,
                  std::vector<OpId> deps = {}) {
    Collective c;
    c.kind = kind;
    c.comm = comm;
    c.bytes = bytes;
    return add(r, std::move(name), st, c, std::move(deps));
  }
  OpId send(RankId r, std::string name, StreamId st, CommId comm, RankId peer, std::uint64_t bytes, std::uint32_t tag,
            std::vector<OpId> deps = {}) {
    return add(r, std::move(name), st, Send{comm, peer, bytes, tag}, std::move(deps));
  }
  OpId recv(RankId r, std::string name, StreamId st, CommId comm, RankId peer, std::uint64_t bytes, std::uint32_t tag,
            std::vector<OpId> deps = {}) {
    return add(r, std::move(name), st, Recv{comm, peer, bytes, tag}, std::move(deps));
  }
  Schedule& schedule() { return s_; }

 private:
  Schedule s_;
};

/// One node of `gpus` H100-like GPUs whose NCCL NVLink bandwidth is `bus_bytes_per_s` (a uniform ring).
inline topologies::Cluster uniform_node(std::uint32_t gpus, double bus_bytes_per_s) {
  topologies::Cluster c = topologies::load_cluster("dgx-h100");
  c.node.gpus_per_node = gpus;
  c.node.nvlink_nccl_bytes_per_s = bus_bytes_per_s;
  c.num_nodes = 1;
  return c;
}

/// Datasheet defaults without launch costs, ring/simple only, one channel, no HBM interference.
inline Profile closed_form_profile() {
  Profile p = Profile::datasheet_defaults();
  for (auto& [cls, s] : p.launch_s) s = 0;
  p.nccl.algorithms = {NcclAlgo::kRing};
  p.nccl.protocols = {NcclProto::kSimple};
  p.nccl.channels_intra = 1;
  p.nccl.channels_inter = 1;
  p.interference.comm_hbm_bytes_per_bus_byte = 0;
  return p;
}

}  // namespace twinstep::sim::testing
