// Hand-built schedules and cost settings for the simulator tests: a small builder that appends ops in program
// order, and helpers for profiles that reduce the NCCL model to closed forms (no launch costs, fixed channels).
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "schedule/builder.hpp"
#include "schedule/schedule.hpp"
#include "sim/cost_model.hpp"
#include "topologies/cluster.hpp"

namespace twinstep::sim::testing {

using namespace twinstep::schedule;

using Builder = twinstep::schedule::ScheduleBuilder;

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
