// Built-in GPU, node and fabric types (datasheet figures with sources) and the cluster JSON loader.
// Figures are datasheet values or NCCL's own constants; nothing here is fitted to end-to-end step times.
#include "topologies/cluster.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "common/error.hpp"
#include "common/io.hpp"
#include "common/json.hpp"
#include "common/units.hpp"

namespace twinstep::topologies {
namespace {

GpuSpec h100_sxm() {
  GpuSpec g;
  g.name = "H100 SXM5";
  g.sm_count = 132;
  g.hbm_capacity_bytes = 80 * kGiB;
  g.hbm_bytes_per_s = 3.35e12;
  g.peak_bf16_flop_per_s = 989.4e12;
  g.peak_fp8_flop_per_s = 1978.9e12;
  g.peak_tf32_flop_per_s = 494.7e12;
  g.peak_fp32_flop_per_s = 66.9e12;
  g.source = "NVIDIA H100 SXM5 datasheet (dense = half the sparse figures); reference/hardware.md 1.1";
  return g;
}

GpuSpec h200_sxm() {
  GpuSpec g = h100_sxm();  // same GH100 die, same SMs and clocks (hardware.md 1.1)
  g.name = "H200 SXM";
  g.hbm_capacity_bytes = 141e9;
  g.hbm_bytes_per_s = 4.8e12;
  g.source = "NVIDIA H200 SXM spec: H100 compute, 141 GB HBM3e at 4.8 TB/s; reference/hardware.md 1.1";
  return g;
}

GpuSpec a100_80gb() {
  GpuSpec g;
  g.name = "A100 SXM4 80GB";
  g.sm_count = 108;
  g.hbm_capacity_bytes = 80 * kGiB;
  g.hbm_bytes_per_s = 2.039e12;
  g.peak_bf16_flop_per_s = 312e12;
  g.peak_fp8_flop_per_s = 0;  // no FP8 tensor cores: FP8 runs at the BF16 rate
  g.peak_tf32_flop_per_s = 156e12;
  g.peak_fp32_flop_per_s = 19.5e12;
  g.source = "NVIDIA A100 80GB SXM datasheet (dense figures)";
  return g;
}

NodeSpec dgx_h100() {
  NodeSpec n;
  n.name = "dgx-h100";
  n.gpu = h100_sxm();
  n.gpus_per_node = 8;
  n.nvlink_links_per_gpu = 18;
  n.nvlink_bytes_per_s = 450e9;             // 18 x 25 GB/s per direction [DS]
  n.nvlink_nccl_bytes_per_s = 18 * 20.6e9;  // SM90_NVLINK_BW 20.6 GB/s per link, NCCL src/graph/topo.h [SRC]
  n.pcie_bytes_per_s = 64e9;                // Gen5 x16, per direction [DS]
  n.nics_per_gpu = 1;
  n.nic_bytes_per_s = 50e9;             // ConnectX-7 400 Gb/s NDR [DS]
  n.nic_achievable_bytes_per_s = 48e9;  // 48-49 GB/s per NIC in nccl-tests (NVIDIA/nccl-tests#267)
  n.source = "DGX H100: 8 x H100 SXM5, 4 x NVSwitch gen3, 8 x CX-7 400G (DGX BasePOD core components); hardware.md 2";
  return n;
}

NodeSpec hgx_h200() {
  NodeSpec n = dgx_h100();
  n.name = "hgx-h200";
  n.gpu = h200_sxm();
  n.source = "HGX H200: 8 x H200 SXM on the HGX H100 baseboard (same NVLink4/NVSwitch), one 400G NIC per GPU";
  return n;
}

NodeSpec dgx_a100() {
  NodeSpec n;
  n.name = "dgx-a100";
  n.gpu = a100_80gb();
  n.gpus_per_node = 8;
  n.nvlink_links_per_gpu = 12;
  n.nvlink_bytes_per_s = 300e9;             // NVLink3: 12 x 25 GB/s per direction [DS]
  n.nvlink_nccl_bytes_per_s = 12 * 20.0e9;  // SM80_NVLINK_BW 20.0 GB/s per link, NCCL src/graph/topo.h [SRC]
  n.pcie_bytes_per_s = 32e9;                // Gen4 x16, per direction [DS]
  n.nics_per_gpu = 1;
  n.nic_bytes_per_s = 25e9;             // ConnectX-6 200 Gb/s HDR [DS]
  n.nic_achievable_bytes_per_s = 24e9;  // 192 GB/s ring busbw over 8 NICs, 2 nodes (NVIDIA/nccl#812)
  n.source = "DGX A100: 8 x A100 80GB, 6 x NVSwitch gen2, 8 x CX-6 200G HDR (DGX A100 user guide)";
  return n;
}

NodeSpec h200x2_nvlink() {
  NodeSpec n = dgx_h100();
  n.name = "h200x2-nvlink";
  n.gpu = h200_sxm();
  n.gpus_per_node = 2;
  n.nics_per_gpu = 0;  // a single box: no compute fabric
  n.nic_bytes_per_s = 0;
  n.nic_achievable_bytes_per_s = 0;
  n.source = "project test box: two H200 SXM joined by 18 NVLinks (NV18), NCCL 2.28; hardware.md 10";
  return n;
}

Fabric single_switch() {
  Fabric f;
  f.kind = FabricKind::kSingleSwitch;
  f.hop_latency_s = 0.2e-6;  // QM9700 port-to-port, quoted 130-330 ns [UNVERIFIED], hardware.md 3.1
  f.source = "one non-blocking switch hop between nodes";
  return f;
}

/// DGX SuperPOD H100 rail-optimized fabric: SU of 32 nodes with 8 rail leaves, non-blocking; spine counts from
/// the reference architecture's Table 4 (1..4 SU); a core tier from 16 SUs on (B200 RA table).
Fabric superpod(std::uint32_t nodes, std::uint32_t rails) {
  Fabric f;
  f.kind = FabricKind::kFatTree;
  f.nodes_per_group = 32;
  const std::uint32_t sus = (nodes + 31) / 32;
  f.leaf_switches = rails * sus;
  static constexpr std::uint32_t kSpinesBySu[] = {0, 4, 8, 16, 16};
  f.spine_switches = sus <= 4 ? kSpinesBySu[sus] : 4 * sus;
  f.core_switches = sus >= 16 ? 4 * sus : 0;
  f.oversubscription = 1.0;
  f.hop_latency_s = 0.2e-6;  // [UNVERIFIED] 130-330 ns per QM9700 hop, hardware.md 3.1
  f.source = "DGX SuperPOD H100 RA, network fabrics, Table 4; hardware.md 3";
  return f;
}

struct BuiltinCluster {
  const char* id;
  const char* node;
  bool fat_tree;
};

constexpr BuiltinCluster kBuiltins[] = {
    {"dgx-h100", "dgx-h100", false},           {"hgx-h200", "hgx-h200", false},     {"dgx-a100", "dgx-a100", false},
    {"h200x2-nvlink", "h200x2-nvlink", false}, {"h100-superpod", "dgx-h100", true}, {"h200-superpod", "hgx-h200", true},
    {"a100-superpod", "dgx-a100", true},
};

/// Applies --nodes / --gpus to a node type. Fewer GPUs than one node uses a partial node.
std::uint32_t resolve_nodes(NodeSpec& node, const ClusterSize& size, std::uint32_t file_nodes,
                            const std::string& where) {
  if (size.nodes != 0 && size.gpus != 0) {
    throw Error(where + ": give either --nodes or --gpus, not both");
  }
  std::uint32_t nodes = file_nodes == 0 ? 1 : file_nodes;
  if (size.nodes != 0) nodes = size.nodes;
  if (size.gpus != 0) {
    if (size.gpus < node.gpus_per_node) {
      node.gpus_per_node = size.gpus;  // part of one node
      nodes = 1;
    } else if (size.gpus % node.gpus_per_node != 0) {
      throw Error(where + ": --gpus " + std::to_string(size.gpus) + " is not a multiple of the " +
                  std::to_string(node.gpus_per_node) + " GPUs per node of " + node.name +
                  "; use a multiple, or --nodes");
    } else {
      nodes = size.gpus / node.gpus_per_node;
    }
  }
  if (nodes == 0 || nodes > kMaxNodes) {
    throw Error(where + ": " + std::to_string(nodes) + " nodes is outside the supported 1.." +
                std::to_string(kMaxNodes) + "; pass --nodes in that range");
  }
  if (nodes > 1 && node.nics_per_gpu == 0) {
    throw Error(where + ": node type " + node.name + " has no compute fabric (no NICs), so it cannot be used with " +
                std::to_string(nodes) + " nodes; use --nodes 1");
  }
  return nodes;
}

// ---- JSON ----

using Json = nlohmann::json;

/// Cluster files on top of the shared field reader: fields looked up by key, required or with a fallback, and the
/// GPU, node and fabric sections.
class Reader : public JsonReader {
 public:
  using JsonReader::JsonReader;

  double quantity(const Json& j, const std::string& ptr, const char* key, Dimension dim, bool required,
                  double fallback = 0) const {
    if (!j.contains(key)) {
      if (required) fail(ptr + "/" + key, std::string("missing required field \"") + key + "\"");
      return fallback;
    }
    return JsonReader::quantity(j.at(key), ptr + "/" + key, dim);
  }

  std::uint32_t count(const Json& j, const std::string& ptr, const char* key, bool required,
                      std::uint32_t fallback = 0) const {
    if (!j.contains(key)) {
      if (required) fail(ptr + "/" + key, std::string("missing required field \"") + key + "\"");
      return fallback;
    }
    return JsonReader::count(j.at(key), ptr + "/" + key, 0, 1000000);
  }

  std::string text(const Json& j, const std::string& ptr, const char* key, bool required) const {
    if (!j.contains(key)) {
      if (required) fail(ptr + "/" + key, std::string("missing required field \"") + key + "\"");
      return {};
    }
    return JsonReader::text(j.at(key), ptr + "/" + key);
  }

  GpuSpec gpu(const Json& j, const std::string& ptr) const {
    if (j.is_string()) {
      try {
        return builtin_gpu(j.get<std::string>());
      } catch (const Error& e) {
        fail(ptr, e.what());
      }
    }
    keys(j, ptr,
         {"name", "sm_count", "hbm_capacity", "hbm_bandwidth", "peak_bf16", "peak_fp8", "peak_tf32", "peak_fp32",
          "source"});
    GpuSpec g;
    g.name = text(j, ptr, "name", true);
    g.sm_count = count(j, ptr, "sm_count", true);
    if (g.sm_count == 0) fail(ptr + "/sm_count", "must be at least 1");
    g.hbm_capacity_bytes = quantity(j, ptr, "hbm_capacity", Dimension::kBytes, true);
    g.hbm_bytes_per_s = quantity(j, ptr, "hbm_bandwidth", Dimension::kBandwidth, true);
    g.peak_bf16_flop_per_s = quantity(j, ptr, "peak_bf16", Dimension::kFlopRate, true);
    g.peak_fp8_flop_per_s = quantity(j, ptr, "peak_fp8", Dimension::kFlopRate, false);
    g.peak_tf32_flop_per_s = quantity(j, ptr, "peak_tf32", Dimension::kFlopRate, false, g.peak_bf16_flop_per_s / 2);
    g.peak_fp32_flop_per_s = quantity(j, ptr, "peak_fp32", Dimension::kFlopRate, false, g.peak_tf32_flop_per_s);
    g.source = text(j, ptr, "source", false);
    if (g.hbm_bytes_per_s <= 0) fail(ptr + "/hbm_bandwidth", "must be positive, e.g. \"3.35 TB/s\"");
    if (g.peak_bf16_flop_per_s <= 0) fail(ptr + "/peak_bf16", "must be positive, e.g. \"989.4 TFLOP/s\"");
    return g;
  }

  NodeSpec node(const Json& j, const std::string& ptr) const {
    if (j.is_string()) {
      try {
        return builtin_node(j.get<std::string>());
      } catch (const Error& e) {
        fail(ptr, e.what());
      }
    }
    keys(j, ptr,
         {"name", "gpu", "gpus_per_node", "nvlink_links_per_gpu", "nvlink_bandwidth", "nvlink_nccl_bandwidth",
          "pcie_bandwidth", "nics_per_gpu", "nic_bandwidth", "nic_achievable_bandwidth", "source"});
    NodeSpec n;
    n.name = text(j, ptr, "name", true);
    if (!j.contains("gpu"))
      fail(ptr + "/gpu", "missing required field \"gpu\" (an id such as \"h100-sxm\" or an object)");
    n.gpu = gpu(j.at("gpu"), ptr + "/gpu");
    n.gpus_per_node = count(j, ptr, "gpus_per_node", true);
    if (n.gpus_per_node == 0) fail(ptr + "/gpus_per_node", "must be at least 1");
    n.nvlink_links_per_gpu = count(j, ptr, "nvlink_links_per_gpu", false);
    n.nvlink_bytes_per_s = quantity(j, ptr, "nvlink_bandwidth", Dimension::kBandwidth, n.gpus_per_node > 1);
    n.nvlink_nccl_bytes_per_s =
        quantity(j, ptr, "nvlink_nccl_bandwidth", Dimension::kBandwidth, false, n.nvlink_bytes_per_s);
    n.pcie_bytes_per_s = quantity(j, ptr, "pcie_bandwidth", Dimension::kBandwidth, true);
    n.nics_per_gpu = count(j, ptr, "nics_per_gpu", false, 1);
    n.nic_bytes_per_s = quantity(j, ptr, "nic_bandwidth", Dimension::kBandwidth, n.nics_per_gpu > 0);
    n.nic_achievable_bytes_per_s =
        quantity(j, ptr, "nic_achievable_bandwidth", Dimension::kBandwidth, false, n.nic_bytes_per_s);
    n.source = text(j, ptr, "source", false);
    if (n.gpus_per_node > 1 && n.nvlink_nccl_bytes_per_s <= 0) {
      fail(ptr + "/nvlink_bandwidth", "must be positive for a node with more than one GPU");
    }
    if (n.pcie_bytes_per_s <= 0) fail(ptr + "/pcie_bandwidth", "must be positive, e.g. \"64 GB/s\"");
    if (n.nics_per_gpu > 0 && n.nic_achievable_bytes_per_s <= 0) {
      fail(ptr + "/nic_bandwidth", "must be positive when nics_per_gpu > 0 (or set nics_per_gpu to 0)");
    }
    return n;
  }

  Fabric fabric(const Json& j, const std::string& ptr, std::uint32_t nodes, std::uint32_t rails) const {
    if (j.is_string()) {
      const std::string kind = j.get<std::string>();
      if (kind == "single_switch") return single_switch();
      if (kind == "superpod") return superpod(nodes, rails);
      fail(ptr, "unknown fabric \"" + kind + "\"; use \"single_switch\", \"superpod\" or an object");
    }
    keys(j, ptr,
         {"kind", "nodes_per_group", "leaf_switches", "spine_switches", "core_switches", "oversubscription",
          "hop_latency", "source"});
    Fabric f;
    const std::string kind = text(j, ptr, "kind", true);
    if (kind == "single_switch") {
      f.kind = FabricKind::kSingleSwitch;
    } else if (kind == "fat_tree") {
      f.kind = FabricKind::kFatTree;
    } else {
      fail(ptr + "/kind", "unknown fabric kind \"" + kind + "\"; use \"single_switch\" or \"fat_tree\"");
    }
    f.nodes_per_group = count(j, ptr, "nodes_per_group", f.kind == FabricKind::kFatTree);
    if (f.kind == FabricKind::kFatTree && f.nodes_per_group == 0) {
      fail(ptr + "/nodes_per_group", "must be at least 1 (nodes under one set of rail leaves, e.g. 32)");
    }
    f.leaf_switches = count(j, ptr, "leaf_switches", false);
    f.spine_switches = count(j, ptr, "spine_switches", false);
    f.core_switches = count(j, ptr, "core_switches", false);
    f.oversubscription = quantity(j, ptr, "oversubscription", Dimension::kDimensionless, false, 1.0);
    if (f.oversubscription < 1.0) fail(ptr + "/oversubscription", "must be >= 1 (1 = non-blocking, 7 = 7:1)");
    f.hop_latency_s = quantity(j, ptr, "hop_latency", Dimension::kTime, false, 0.2e-6);
    f.source = text(j, ptr, "source", false);
    return f;
  }
};

}  // namespace

double GpuSpec::peak_flop_per_s(schedule::DType dtype) const {
  switch (dtype) {
    case schedule::DType::kBF16:
    case schedule::DType::kFP16:
      return peak_bf16_flop_per_s;
    case schedule::DType::kFP8:
      return peak_fp8_flop_per_s > 0 ? peak_fp8_flop_per_s : peak_bf16_flop_per_s;
    case schedule::DType::kFP32:
      return peak_tf32_flop_per_s > 0 ? peak_tf32_flop_per_s : peak_fp32_flop_per_s;
    case schedule::DType::kInt64:
    case schedule::DType::kInt32:
      return peak_fp32_flop_per_s;
  }
  return peak_bf16_flop_per_s;
}

FabricPath Cluster::path(std::uint32_t node_a, std::uint32_t node_b) const {
  FabricPath p;
  if (node_a == node_b) return p;
  if (fabric.kind == FabricKind::kSingleSwitch || fabric.nodes_per_group == 0) {
    p.switch_hops = 1;
    return p;
  }
  if (node_a / fabric.nodes_per_group == node_b / fabric.nodes_per_group) {
    p.switch_hops = 1;  // rail-aligned: one leaf (PXN keeps the traffic on the destination's rail)
    return p;
  }
  p.switch_hops = fabric.core_switches > 0 ? 5 : 3;
  p.bandwidth_factor = 1.0 / fabric.oversubscription;
  return p;
}

std::string Cluster::describe() const {
  std::string fab = fabric.kind == FabricKind::kSingleSwitch ? "single switch" : "rail-optimized fat-tree";
  if (num_nodes == 1) fab = "one node";
  return name + " (" + std::to_string(num_gpus()) + " x " + node.gpu.name + ", " + std::to_string(num_nodes) + " node" +
         (num_nodes == 1 ? "" : "s") + ", " + fab + ")";
}

std::vector<std::string> builtin_cluster_ids() {
  std::vector<std::string> ids;
  for (const auto& b : kBuiltins) ids.emplace_back(b.id);
  return ids;
}

GpuSpec builtin_gpu(const std::string& id) {
  if (id == "h100-sxm") return h100_sxm();
  if (id == "h200-sxm") return h200_sxm();
  if (id == "a100-80gb") return a100_80gb();
  throw Error("unknown GPU type \"" + id + "\"; built-in GPU types: h100-sxm, h200-sxm, a100-80gb");
}

NodeSpec builtin_node(const std::string& id) {
  if (id == "dgx-h100") return dgx_h100();
  if (id == "hgx-h200") return hgx_h200();
  if (id == "dgx-a100") return dgx_a100();
  if (id == "h200x2-nvlink") return h200x2_nvlink();
  throw Error("unknown node type \"" + id + "\"; built-in node types: dgx-h100, hgx-h200, dgx-a100, h200x2-nvlink");
}

Cluster cluster_from_json(const std::string& text, const std::string& source, const ClusterSize& size) {
  const Json j = parse_json(text, source);
  const Reader r(source);
  r.keys(j, "", {"schema_version", "name", "node", "fabric", "nodes", "source", "profile"});
  if (!j.contains("schema_version") || !j.at("schema_version").is_number_integer() ||
      j.at("schema_version").get<int>() != 1) {
    r.fail("/schema_version", "expected \"schema_version\": 1");
  }
  Cluster c;
  c.name = r.text(j, "", "name", true);
  if (!j.contains("node")) r.fail("/node", "missing required field \"node\" (an id such as \"dgx-h100\" or an object)");
  c.node = r.node(j.at("node"), "/node");
  const std::uint32_t file_nodes = r.count(j, "", "nodes", false, 1);
  c.num_nodes = resolve_nodes(c.node, size, file_nodes, source);
  const std::uint32_t rails = c.node.gpus_per_node * std::max<std::uint32_t>(c.node.nics_per_gpu, 1);
  c.fabric = j.contains("fabric") ? r.fabric(j.at("fabric"), "/fabric", c.num_nodes, rails) : single_switch();
  c.name += " x" + std::to_string(c.num_nodes);
  c.profile = r.text(j, "", "profile", false);
  c.source_dir = std::filesystem::path(source).parent_path().string();
  return c;
}

Cluster load_cluster(const std::string& id_or_path, const ClusterSize& size) {
  for (const auto& b : kBuiltins) {
    if (id_or_path != b.id) continue;
    Cluster c;
    c.node = builtin_node(b.node);
    c.num_nodes = resolve_nodes(c.node, size, 1, std::string("--cluster ") + b.id);
    const std::uint32_t rails = c.node.gpus_per_node * c.node.nics_per_gpu;
    c.fabric = b.fat_tree ? superpod(c.num_nodes, rails) : single_switch();
    c.name = std::string(b.id) + " x" + std::to_string(c.num_nodes);
    return c;
  }
  std::error_code ec;
  if (!std::filesystem::is_regular_file(id_or_path, ec)) {
    std::string ids;
    for (const auto& b : kBuiltins) ids += std::string(ids.empty() ? "" : ", ") + b.id;
    throw Error("--cluster \"" + id_or_path +
                "\" is neither a built-in cluster id nor a readable file; built-in ids: " + ids +
                " (or a path to a cluster JSON like topologies/clusters/dgx-h100.json)");
  }
  return cluster_from_json(read_file(id_or_path), id_or_path, size);
}

}  // namespace twinstep::topologies
