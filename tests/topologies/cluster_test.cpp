// Cluster tests: built-in types and sizes, Megatron placement, fabric paths, shipped JSON files equal to the
// built-ins, and loader errors that name the file, the field and the fix.
#include "topologies/cluster.hpp"

#include <filesystem>
#include <string>

#include "common/error.hpp"
#include "tests/catch.hpp"

using namespace twinstep;
using namespace twinstep::topologies;
using twinstep::schedule::DType;

namespace {
std::string clusters_dir() { return std::string(TWINSTEP_SOURCE_DIR) + "/topologies/clusters/"; }
std::string load_error(const std::string& id, ClusterSize size = {}) {
  try {
    (void)load_cluster(id, size);
  } catch (const Error& e) {
    return e.what();
  }
  return "no error";
}
std::string json_error(const std::string& text) {
  try {
    (void)cluster_from_json(text, "c.json");
  } catch (const Error& e) {
    return e.what();
  }
  return "no error";
}
}  // namespace

TEST_CASE("topologies::load_cluster: built-in node types carry datasheet figures", "[topo]") {
  const Cluster h100 = load_cluster("dgx-h100");
  CHECK(h100.num_gpus() == 8);
  CHECK(h100.node.gpu.sm_count == 132);
  CHECK(h100.node.gpu.peak_flop_per_s(DType::kBF16) == Approx(989.4e12));
  CHECK(h100.node.gpu.peak_flop_per_s(DType::kFP8) == Approx(1978.9e12));
  CHECK(h100.node.gpu.peak_flop_per_s(DType::kFP32) == Approx(494.7e12));
  CHECK(h100.node.nvlink_nccl_bytes_per_s == Approx(370.8e9));
  CHECK(h100.node.nic_achievable_bytes_per_s == Approx(48e9));
  const Cluster h200 = load_cluster("hgx-h200", {4, 0});
  CHECK(h200.node.gpu.hbm_bytes_per_s == Approx(4.8e12));
  CHECK(h200.num_gpus() == 32);
  const Cluster a100 = load_cluster("dgx-a100");
  CHECK(a100.node.gpu.sm_count == 108);
  CHECK(a100.node.gpu.peak_flop_per_s(DType::kFP8) == Approx(312e12));  // no FP8: BF16 rate
  const Cluster box = load_cluster("h200x2-nvlink");
  CHECK(box.num_gpus() == 2);
  CHECK(box.node.nics_per_gpu == 0);
  CHECK(builtin_cluster_ids().size() == 7);
}

TEST_CASE("topologies::load_cluster: --nodes and --gpus size the cluster, 1 to 2048 nodes", "[topo]") {
  CHECK(load_cluster("dgx-h100", {0, 64}).num_nodes == 8);
  CHECK(load_cluster("h100-superpod", {2048, 0}).num_gpus() == 16384);
  const Cluster part = load_cluster("dgx-h100", {0, 4});
  CHECK(part.num_nodes == 1);
  CHECK(part.num_gpus() == 4);
  CHECK(load_error("dgx-h100", {0, 12}).find("not a multiple of the 8 GPUs per node") != std::string::npos);
  CHECK(load_error("dgx-h100", {4096, 0}).find("outside the supported 1..2048") != std::string::npos);
  CHECK(load_error("dgx-h100", {2, 16}).find("either --nodes or --gpus") != std::string::npos);
  CHECK(load_error("h200x2-nvlink", {2, 0}).find("no compute fabric") != std::string::npos);
  CHECK(load_error("dgx-h900").find("built-in ids: dgx-h100") != std::string::npos);
}

TEST_CASE("topologies::Cluster: Megatron placement and fabric paths", "[topo]") {
  const Cluster c = load_cluster("h100-superpod", {64, 0});
  CHECK(c.node_of(0) == 0);
  CHECK(c.node_of(15) == 1);
  CHECK(c.local_of(15) == 7);
  CHECK(c.fabric.kind == FabricKind::kFatTree);
  CHECK(c.fabric.leaf_switches == 16);  // 2 SUs x 8 rails (SuperPOD RA Table 4)
  CHECK(c.fabric.spine_switches == 8);
  CHECK(c.path(3, 3).switch_hops == 0);
  CHECK(c.path(0, 31).switch_hops == 1);                                           // same SU: one rail leaf
  CHECK(c.path(0, 32).switch_hops == 3);                                           // across SUs: leaf-spine-leaf
  CHECK(load_cluster("h100-superpod", {1024, 0}).path(0, 1000).switch_hops == 5);  // core tier from 16 SUs
  CHECK(load_cluster("dgx-h100", {4, 0}).path(0, 3).switch_hops == 1);
}

TEST_CASE("topologies::cluster_from_json: shipped files load and match the built-ins", "[topo]") {
  const Cluster file = load_cluster(clusters_dir() + "dgx-h100.json", {2, 0});
  const Cluster builtin = load_cluster("dgx-h100", {2, 0});
  CHECK(file.num_nodes == 2);
  CHECK(file.node.gpu.sm_count == builtin.node.gpu.sm_count);
  CHECK(file.node.gpu.hbm_capacity_bytes == Approx(builtin.node.gpu.hbm_capacity_bytes));
  CHECK(file.node.gpu.peak_bf16_flop_per_s == Approx(builtin.node.gpu.peak_bf16_flop_per_s));
  CHECK(file.node.nvlink_nccl_bytes_per_s == Approx(builtin.node.nvlink_nccl_bytes_per_s));
  CHECK(file.node.nic_bytes_per_s == Approx(builtin.node.nic_bytes_per_s));
  CHECK(file.node.nic_achievable_bytes_per_s == Approx(builtin.node.nic_achievable_bytes_per_s));
  const Cluster box = load_cluster(clusters_dir() + "h200x2-nvlink.json");
  CHECK(box.num_gpus() == 2);
  CHECK(box.node.gpu.hbm_bytes_per_s == Approx(4.8e12));
  const Cluster meta = load_cluster(clusters_dir() + "meta-h100-7to1.json");
  CHECK(meta.num_nodes == 768);
  CHECK(meta.path(0, 500).bandwidth_factor == Approx(1.0 / 7));
  CHECK(load_cluster(clusters_dir() + "h100-superpod-4su.json").num_gpus() == 1024);
  for (const auto& entry : std::filesystem::directory_iterator(clusters_dir())) {
    CHECK_NOTHROW(load_cluster(entry.path().string()));
  }
}

TEST_CASE("topologies::cluster_from_json: errors name the file, the field and the fix", "[topo]") {
  CHECK(json_error(R"({"schema_version": 1, "name": "x"})").find("c.json: /node: missing required field") == 0);
  CHECK(json_error(R"({"schema_version": 1, "name": "x", "node": "dgx-h100", "color": 1})")
            .find("c.json: /color: unknown field \"color\" (accepted here: schema_version, name, node, fabric, "
                  "nodes, source, profile); remove it or fix its spelling") == 0);
  CHECK(json_error(R"({"schema_version": 1, "name": "x", "node": "dgx-h100", "fabrik": {}})")
            .find("c.json: /fabrik: unknown field \"fabrik\"") == 0);
  CHECK(json_error(R"({"schema_version": 1, "name": "x", "node": "dgx-h100", "fabrik": {}})")
            .find("did you mean \"fabric\"?") != std::string::npos);
  CHECK(json_error(R"({"schema_version": 1, "name": "x", "node": "dgx-h999"})").find("unknown node type") !=
        std::string::npos);
  const std::string bad_bw = R"({"schema_version": 1, "name": "x", "node": {"name": "n", "gpu": "h100-sxm",
      "gpus_per_node": 8, "nvlink_bandwidth": "450 GB", "pcie_bandwidth": "64 GB/s", "nic_bandwidth": "50 GB/s"}})";
  CHECK(json_error(bad_bw).find("c.json: /node/nvlink_bandwidth") == 0);
  const std::string no_sm = R"({"schema_version": 1, "name": "x", "node": {"name": "n", "gpu": {"name": "g"},
      "gpus_per_node": 1, "pcie_bandwidth": "64 GB/s", "nics_per_gpu": 0}})";
  CHECK(json_error(no_sm).find("c.json: /node/gpu/sm_count: missing required field") == 0);
  const std::string bad_fabric = R"({"schema_version": 1, "name": "x", "node": "dgx-h100",
      "fabric": {"kind": "torus"}})";
  CHECK(json_error(bad_fabric).find("/fabric/kind: unknown fabric kind") != std::string::npos);
  const std::string oversub = R"({"schema_version": 1, "name": "x", "node": "dgx-h100",
      "fabric": {"kind": "fat_tree", "nodes_per_group": 4, "oversubscription": 0.5}})";
  CHECK(json_error(oversub).find("/fabric/oversubscription: must be >= 1") != std::string::npos);
  CHECK(json_error("[1,2").find("c.json: line 1, column 5: not valid JSON: syntax error") == 0);
  CHECK(json_error(R"({"name": "x", "node": "dgx-h100"})").find("/schema_version") != std::string::npos);
}
