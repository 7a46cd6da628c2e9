// The modelled cluster: GPU type, node type (NVLink/NVSwitch, PCIe, NICs), fabric (single switch or rail-optimized
// fat-tree) and the number of nodes; rank placement in Megatron order. Plain data plus a loader: no timing model
// lives here (sim/ derives times from these figures).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "schedule/schedule.hpp"

namespace twinstep::topologies {

/// One GPU model. Peak figures are dense (no sparsity).
struct GpuSpec {
  std::string name;  ///< "H100 SXM5".
  std::uint32_t sm_count = 0;
  double hbm_capacity_bytes = 0;
  double hbm_bytes_per_s = 0;       ///< Datasheet HBM bandwidth.
  double peak_bf16_flop_per_s = 0;  ///< Dense tensor-core BF16 (= FP16).
  double peak_fp8_flop_per_s = 0;   ///< Dense FP8; 0 if the GPU has no FP8 tensor cores (A100 uses BF16).
  double peak_tf32_flop_per_s = 0;  ///< Dense TF32 tensor cores, used for FP32 GEMMs.
  double peak_fp32_flop_per_s = 0;  ///< Non-tensor FP32.
  std::string source;               ///< Where the figures come from.

  /// Dense tensor peak for a dtype (FP32 -> TF32; FP8 on a GPU without FP8 -> BF16; integer types -> FP32).
  [[nodiscard]] double peak_flop_per_s(schedule::DType dtype) const;
};

/// One node type: GPUs joined by NVLink/NVSwitch, each behind PCIe with its own NIC(s).
struct NodeSpec {
  std::string name;  ///< "dgx-h100".
  GpuSpec gpu;
  std::uint32_t gpus_per_node = 0;
  std::uint32_t nvlink_links_per_gpu = 0;
  double nvlink_bytes_per_s = 0;          ///< Per GPU, per direction, line rate (H100: 450 GB/s).
  double nvlink_nccl_bytes_per_s = 0;     ///< Per GPU, per direction, what NCCL's model uses (links x SM90_NVLINK_BW).
  double pcie_bytes_per_s = 0;            ///< Per GPU, per direction.
  std::uint32_t nics_per_gpu = 0;         ///< 0: the node has no compute fabric (a single-node box).
  double nic_bytes_per_s = 0;             ///< Per NIC, per direction, line rate.
  double nic_achievable_bytes_per_s = 0;  ///< Per NIC, per direction, what NCCL achieves.
  std::string source;
};

enum class FabricKind : std::uint8_t {
  kSingleSwitch,  ///< Every node one switch hop from every other, non-blocking.
  kFatTree        ///< Rail-optimized fat-tree: NIC i of every node of a group on leaf i; spine between groups.
};

struct Fabric {
  FabricKind kind = FabricKind::kSingleSwitch;
  std::uint32_t nodes_per_group = 0;  ///< Fat-tree: nodes under one set of rail leaves (a SuperPOD SU: 32).
  std::uint32_t leaf_switches = 0;
  std::uint32_t spine_switches = 0;
  std::uint32_t core_switches = 0;  ///< Third tier (SuperPOD at >= 16 SUs); 0 = two tiers.
  double oversubscription = 1.0;    ///< Leaf down/up ratio: traffic leaving a group gets 1/oversubscription.
  double hop_latency_s = 0;         ///< Per switch traversal.
  std::string source;
};

/// A path between two nodes through the fabric.
struct FabricPath {
  std::uint32_t switch_hops = 0;  ///< 0 inside a node.
  double bandwidth_factor = 1.0;  ///< Multiplies the NIC bandwidth (1 / oversubscription when crossing groups).
};

struct Cluster {
  std::string name;  ///< The id or file it was loaded from, plus its size: "dgx-h100 x2".
  NodeSpec node;
  Fabric fabric;
  std::uint32_t num_nodes = 0;
  /// The cluster file's "profile", as written: a shipped profile id ("h100x1") or a path relative to the file's
  /// folder (`source_dir`); empty for built-in ids and files without one. sim::choose_profile resolves it.
  std::string profile;
  std::string source_dir;  ///< The folder of the cluster file ("" for built-in ids).

  [[nodiscard]] std::uint32_t num_gpus() const { return num_nodes * node.gpus_per_node; }
  /// Megatron placement: rank r runs on node r / gpus_per_node, local GPU r % gpus_per_node.
  [[nodiscard]] std::uint32_t node_of(schedule::RankId rank) const { return rank / node.gpus_per_node; }
  [[nodiscard]] std::uint32_t local_of(schedule::RankId rank) const { return rank % node.gpus_per_node; }
  /// Fabric path between two nodes (same node: zero hops).
  [[nodiscard]] FabricPath path(std::uint32_t node_a, std::uint32_t node_b) const;
  /// One line: "dgx-h100 x2 (16 x H100 SXM5, single switch)".
  [[nodiscard]] std::string describe() const;
};

/// Size request from the command line: at most one of the two is non-zero; both zero = the file's own size
/// (or 1 node).
struct ClusterSize {
  std::uint32_t nodes = 0;
  std::uint32_t gpus = 0;
};

/// Largest shipped cluster, in nodes.
inline constexpr std::uint32_t kMaxNodes = 2048;

/// Built-in ids: node types ("dgx-h100", "hgx-h200", "dgx-a100", "h200x2-nvlink") on a single switch, and
/// SuperPOD-style fat-trees of them ("h100-superpod", "h200-superpod", "a100-superpod").
[[nodiscard]] std::vector<std::string> builtin_cluster_ids();

/// A built-in id or a path to a cluster JSON (topologies/clusters/*.json shows the format), sized by `size`.
/// Throws twinstep::Error / ParseError naming the file, the field and the fix.
[[nodiscard]] Cluster load_cluster(const std::string& id_or_path, const ClusterSize& size = {});

/// Parses cluster JSON text; `source` names it in errors.
[[nodiscard]] Cluster cluster_from_json(const std::string& text, const std::string& source,
                                        const ClusterSize& size = {});

/// Built-in GPU and node types by id ("h100-sxm", "h200-sxm", "a100-80gb"; node ids as above). Throw Error if unknown.
[[nodiscard]] GpuSpec builtin_gpu(const std::string& id);
[[nodiscard]] NodeSpec builtin_node(const std::string& id);

}  // namespace twinstep::topologies
