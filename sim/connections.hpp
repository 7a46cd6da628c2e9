// NCCL connections per transfer: the weight with which concurrent transfers share a link (a NIC or an NVLink
// port). A NIC serves its active queue pairs round-robin, one connection (QP) per NCCL channel and peer
// (NCCL_IB_QPS_PER_CONNECTION = 1), so two collectives on one NIC get bandwidth in proportion to the connections
// each has open on it, not half each. Used by both resource models: the flow model weights each SimGrid flow
// (sim/engine/flow_model.cpp), the analytic model each activity's share of a GPU's NIC (sim/analytic_model.cpp).
// Figures come from the profile's NCCL configuration (NcclConfig: channels, NCCL_NCHANNELS_PER_NET_PEER and its
// halving on large communicators, NCCL_MAX_DEV_WORK_P2P_PER_BATCH), never fitted.
#pragma once

#include <algorithm>
#include <cstdint>

#include "sim/cost_model.hpp"

namespace twinstep::sim {

/// One edge of a ring collective: its channels are spread over `rings` rings (one per NIC rail used), so each
/// ring edge stands for channels / rings connections.
[[nodiscard]] inline double ring_edge_connections(const CommCost& cost, std::uint32_t rings) {
  return static_cast<double>(std::max<std::uint32_t>(1, cost.channels)) / std::max<std::uint32_t>(1, rings);
}

/// One peer of an all-to-all among `peers` + 1 members: NCCL works on peers_per_round peers at a time, a network
/// peer with the communicator's channels per network peer (NcclConfig::net_channels_per_peer: p2p_channels_net,
/// halved on large communicators), NVLink peers sharing the kernel's p2p_channels_nvlink channels; averaged over the
/// collective, a peer holds its connections a round's share of the time (peers_per_round / peers).
[[nodiscard]] inline double all_to_all_peer_connections(const NcclConfig& nc, std::uint32_t peers, bool network) {
  const double p = std::max<std::uint32_t>(1, peers);
  const double round = std::min(p, static_cast<double>(std::max<std::uint32_t>(1, nc.p2p_peers_per_round)));
  if (network) return static_cast<double>(nc.net_channels_per_peer(peers + 1)) * round / p;
  return static_cast<double>(std::max<std::uint32_t>(1, nc.p2p_channels_nvlink)) / p;
}

/// A send/recv: its channels (p2p_channels_net across nodes, p2p_channels_nvlink within).
[[nodiscard]] inline double p2p_connections(const CommCost& cost) {
  return static_cast<double>(std::max<std::uint32_t>(1, cost.channels));
}

}  // namespace twinstep::sim
