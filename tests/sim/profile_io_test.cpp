// The profile's read and write in one module (sim/profile.cpp): profile_to_json() writes back every committed
// profile byte for byte, what a file leaves to the datasheet is recorded, and profile_warnings() reports it and a
// profile measured on another GPU model than the cluster's.
#include <filesystem>
#include <string>
#include <vector>

#include "common/error.hpp"
#include "common/io.hpp"
#include "sim/cost_model.hpp"
#include "sim/profile_choice.hpp"
#include "tests/catch.hpp"
#include "topologies/cluster.hpp"

using namespace twinstep;
using namespace twinstep::sim;

namespace {

const std::string kSource = TWINSTEP_SOURCE_DIR;

std::vector<std::string> committed_profiles() {
  std::vector<std::string> out;
  for (const auto& e : std::filesystem::directory_iterator(kSource + "/calibration/profiles")) {
    const std::string name = e.path().filename().string();
    // Profiles only: not the raw measurements (.raw.jsonl) nor the torch script's inputs (.framework.json).
    if (e.path().extension() == ".json" && name.find(".framework.") == std::string::npos && name != "defaults.json") {
      out.push_back(e.path().string());
    }
  }
  return out;
}

}  // namespace

TEST_CASE("sim::profile_to_json: every committed profile writes back byte for byte", "[sim]") {
  const auto paths = committed_profiles();
  REQUIRE(paths.size() >= 2);  // h200x2.json, h200x4.json
  for (const auto& path : paths) {
    INFO(path);
    const Profile p = read_profile(path);
    CHECK(p.missing_fields.empty());
    CHECK(profile_to_json(p) == read_file(path));
  }
}

TEST_CASE("sim::profile_from_json: the fields a file lacks are listed, and writing leaves them out", "[sim]") {
  const Profile p = read_profile(kSource + "/tests/sim/data/profile_example.json");
  // It gives gemm and elementwise tables, memory_efficiency and launch compute, collective and host_sync.
  const std::vector<std::string> missing = {"compute.attention_bwd", "compute.attention_fwd", "compute.grouped_gemm",
                                            "launch.memcpy",         "launch.recv",           "launch.send"};
  CHECK(p.missing_fields == missing);
  CHECK(p.declared_name == "example h200x2");
  // The datasheet values stand in for them.
  CHECK(p.launch_s.at("send") == Profile::datasheet_defaults().launch_s.at("send"));
  const Profile back = profile_from_json(profile_to_json(p), "back.json");
  CHECK(back.missing_fields == missing);
  CHECK(back.compute.at("gemm").points == p.compute.at("gemm").points);
  CHECK(back.nccl.channels_intra == 24);
  CHECK(back.nccl.protocols == p.nccl.protocols);
  CHECK(back.memory_efficiency == p.memory_efficiency);
  CHECK(back.collectives.at(0).bus_bytes_per_s == p.collectives.at(0).bus_bytes_per_s);
  CHECK(back.interference.comm_hbm_bytes_per_bus_byte == 2.0);
  CHECK(Profile::datasheet_defaults().missing_fields.empty());
}

TEST_CASE("sim::profile_warnings: another GPU model, and the fields left to the datasheet", "[sim]") {
  const auto h100 = topologies::load_cluster("dgx-h100");
  const auto h200 = topologies::load_cluster("h200x2-nvlink");
  const Profile measured = read_profile(kSource + "/calibration/profiles/h200x2.json");  // context.gpu "NVIDIA H200"
  CHECK(profile_warnings(measured, h200).empty());
  const auto other = profile_warnings(measured, h100);
  REQUIRE(other.size() == 1);
  CHECK(other[0].find("was measured on NVIDIA H200, but the cluster's GPU is H100 SXM5") != std::string::npos);
  CHECK(other[0].rfind("profile two H200", 0) == 0);

  const Profile example = read_profile(kSource + "/tests/sim/data/profile_example.json");  // "H200 SXM"
  const auto w = profile_warnings(example, h200);
  REQUIRE(w.size() == 1);
  CHECK(w[0].find("lacks compute.attention_bwd, compute.attention_fwd, compute.grouped_gemm, launch.memcpy, "
                  "launch.recv, launch.send: datasheet values used") != std::string::npos);
  CHECK(profile_warnings(example, h100).size() == 2);
  CHECK(profile_warnings(Profile::datasheet_defaults(), h100).empty());
}

TEST_CASE("sim::profile: the memory_overhead section reads, writes back, and names a bad field", "[sim][profile]") {
  const std::string text =
      R"({"schema_version": 1, "name": "m", "memory_overhead": {"cuda_context_bytes": "512 MiB",
          "allocator_reserved_over_allocated": 1.04, "source": "script"}})";
  const Profile p = profile_from_json(text, "m.json");
  CHECK(p.memory_overhead.cuda_context_bytes == 512.0 * 1024 * 1024);
  CHECK(p.memory_overhead.allocator_reserved_over_allocated == 1.04);
  CHECK(p.memory_overhead.nccl_buffer_bytes_per_channel < 0);  // absent: not measured
  CHECK(p.memory_overhead.source == "script");
  const Profile back = profile_from_json(profile_to_json(p), "back.json");
  CHECK(back.memory_overhead.cuda_context_bytes == p.memory_overhead.cuda_context_bytes);
  CHECK(back.memory_overhead.allocator_reserved_over_allocated == 1.04);
  CHECK(back.memory_overhead.cublas_workspace_bytes < 0);
  // No section: nothing written, nothing measured.
  CHECK(profile_to_json(Profile::datasheet_defaults()).find("memory_overhead") == std::string::npos);
  CHECK_THROWS_WITH(
      profile_from_json(R"({"schema_version": 1, "memory_overhead": {"allocator_reserved_over_allocated": 0.9}})",
                        "bad.json"),
      Catch::Contains("bad.json") && Catch::Contains("/memory_overhead/allocator_reserved_over_allocated"));
  CHECK_THROWS_WITH(profile_from_json(R"({"schema_version": 1, "memory_overhead": {"context": 1}})", "bad.json"),
                    Catch::Contains("/memory_overhead"));
}

TEST_CASE("sim::profile: the copy_engine section reads, writes back, defaults to 376/450, names a bad field",
          "[sim][profile]") {
  // Absent: the published HGX H100 figure with its source, and nothing written (committed profiles stay as they are).
  const Profile d = Profile::datasheet_defaults();
  CHECK(d.copy_engine.nvlink_efficiency == 376.0 / 450.0);
  CHECK(d.copy_engine.source.find("NVIDIA/nccl#1264") != std::string::npos);
  CHECK(profile_to_json(d).find("copy_engine") == std::string::npos);
  const std::string text =
      R"({"schema_version": 1, "name": "m", "copy_engine": {"nvlink_efficiency": 0.81, "source": "measured"}})";
  const Profile p = profile_from_json(text, "m.json");
  CHECK(p.copy_engine.nvlink_efficiency == 0.81);
  CHECK(p.copy_engine.source == "measured");
  const Profile back = profile_from_json(profile_to_json(p), "back.json");
  CHECK(back.copy_engine.nvlink_efficiency == 0.81);
  CHECK(back.copy_engine.source == "measured");
  CHECK_THROWS_WITH(
      profile_from_json(R"({"schema_version": 1, "copy_engine": {"nvlink_efficiency": 1.2}})", "b.json"),
      Catch::Contains("b.json") && Catch::Contains("/copy_engine/nvlink_efficiency") && Catch::Contains("(0, 1]"));
  CHECK_THROWS_WITH(profile_from_json(R"({"schema_version": 1, "copy_engine": {"bandwidth": 1}})", "b.json"),
                    Catch::Contains("/copy_engine"));
}

TEST_CASE("sim::NcclAlgo and NcclProto: spellings read back as written and an unknown one names the field",
          "[sim][profile]") {
  for (const auto a : {NcclAlgo::kRing, NcclAlgo::kTree}) CHECK(parse_nccl_algo(to_string(a), "algorithm") == a);
  for (const auto p : {NcclProto::kLL, NcclProto::kLL128, NcclProto::kSimple}) {
    CHECK(parse_nccl_proto(to_string(p), "protocol") == p);
  }
  CHECK(to_string(NcclProto::kLL128) == "ll128");
  const Profile p = profile_from_json(
      R"({"schema_version": 1, "nccl": {"algorithms": ["tree"], "protocols": ["simple", "ll"]}})", "p.json");
  CHECK(p.nccl.algorithms == std::vector<NcclAlgo>{NcclAlgo::kTree});
  CHECK(p.nccl.protocols == std::vector<NcclProto>{NcclProto::kSimple, NcclProto::kLL});
  CHECK_THROWS_WITH(
      profile_from_json(R"({"schema_version": 1, "nccl": {"algorithms": ["ring", "nvls"]}})", "p.json"),
      twinstep_contains("p.json") && twinstep_contains("/nccl/algorithms/1") &&
          twinstep_contains(R"(unknown value "nvls" (use one of: "ring", "tree"); NVLS is not modelled)"));
  CHECK_THROWS_WITH(
      profile_from_json(
          R"({"schema_version": 1, "collectives": [{"algorithm": "ring", "protocol": "LL", "span": "intra"}]})",
          "p.json"),
      twinstep_contains("/collectives/0/protocol") &&
          twinstep_contains(R"(unknown value "LL" (use one of: "ll", "ll128", "simple"))"));
}

TEST_CASE("sim::profile: a collective line's kind and span are enums, read and written by one name table each",
          "[sim][profile]") {
  for (const auto k : {CollectiveParamsKind::kAny, CollectiveParamsKind::kAllReduce, CollectiveParamsKind::kAllGather,
                       CollectiveParamsKind::kReduceScatter, CollectiveParamsKind::kBroadcast,
                       CollectiveParamsKind::kAllToAll, CollectiveParamsKind::kSendRecv}) {
    CHECK(parse_collective_params_kind(to_string(k), "kind") == k);
  }
  CHECK(to_string(CollectiveParamsKind::kSendRecv) == "send_recv");
  CHECK(parse_span(to_string(Span::kInter), "span") == Span::kInter);
  CHECK(to_string(Span::kIntra) == "intra");
  CHECK(params_kind_of(schedule::CollectiveKind::kAllToAll) == CollectiveParamsKind::kAllToAll);
  CHECK(params_kind_of(schedule::CollectiveKind::kReduceScatter) == CollectiveParamsKind::kReduceScatter);

  // Read (the kind absent: "any"), written back with the same spellings.
  const Profile p = profile_from_json(
      R"({"schema_version": 1, "collectives": [
            {"kind": "all_to_all", "algorithm": "ring", "protocol": "simple", "span": "inter", "bus_bandwidth": "40 GB/s"},
            {"algorithm": "ring", "protocol": "ll", "span": "intra", "bus_bandwidth": "300 GB/s", "base_latency": "5 us"}]})",
      "p.json");
  REQUIRE(p.collectives.size() == 2);
  CHECK(p.collectives[0].kind == CollectiveParamsKind::kAllToAll);
  CHECK(p.collectives[0].span == Span::kInter);
  CHECK(p.collectives[1].kind == CollectiveParamsKind::kAny);
  CHECK(p.collectives[1].span == Span::kIntra);
  const Profile back = profile_from_json(profile_to_json(p), "back.json");
  REQUIRE(back.collectives.size() == 2);
  CHECK(back.collectives[0].kind == CollectiveParamsKind::kAllToAll);
  CHECK(back.collectives[0].span == Span::kInter);
  CHECK(back.collectives[1].kind == CollectiveParamsKind::kAny);

  // An unknown spelling names the file, the field's pointer and every accepted name.
  CHECK_THROWS_WITH(
      profile_from_json(
          R"({"schema_version": 1, "collectives": [{"kind": "alltoall", "algorithm": "ring", "protocol": "ll", "span": "intra"}]})",
          "p.json"),
      twinstep_contains("p.json: /collectives/0/kind: unknown value \"alltoall\"") &&
          twinstep_contains("\"send_recv\", \"any\""));
  CHECK_THROWS_WITH(
      profile_from_json(
          R"({"schema_version": 1, "collectives": [{"algorithm": "ring", "protocol": "ll", "span": "cross"}]})",
          "p.json"),
      twinstep_contains("p.json: /collectives/0/span: unknown value \"cross\" (use one of: \"intra\", \"inter\")"));
  CHECK_THROWS_WITH(
      profile_from_json(R"({"schema_version": 1, "collectives": [{"algorithm": "ring", "protocol": "ll"}]})", "p.json"),
      twinstep_contains("p.json: /collectives/0/span: missing required field \"span\""));
}

TEST_CASE("sim::profile: a collective line's latencies and bus bandwidth are optional both ways", "[sim][profile]") {
  // Read without them: unknown (negative), the cost model keeps its own figures.
  const Profile p = profile_from_json(
      R"({"schema_version": 1, "collectives": [{"algorithm": "ring", "protocol": "ll", "span": "intra"},
            {"algorithm": "tree", "protocol": "simple", "span": "inter", "bus_bandwidth": "40 GB/s"}]})",
      "p.json");
  REQUIRE(p.collectives.size() == 2);
  CHECK(p.collectives[0].bus_bytes_per_s < 0);
  CHECK(p.collectives[0].base_latency_s < 0);
  CHECK(p.collectives[0].step_latency_s < 0);
  // Written without them, and read back to the same line.
  const std::string written = profile_to_json(p);
  const auto count = [&](const std::string& key) {
    std::size_t n = 0;
    for (auto at = written.find(key); at != std::string::npos; at = written.find(key, at + 1)) ++n;
    return n;
  };
  CHECK(count("\"bus_bandwidth\"") == 1);  // the second line's only
  CHECK(count("\"base_latency\"") == 0);
  CHECK(count("\"step_latency\"") == 0);
  const Profile back = profile_from_json(profile_to_json(p), "back.json");
  REQUIRE(back.collectives.size() == 2);
  CHECK(back.collectives[0].bus_bytes_per_s == p.collectives[0].bus_bytes_per_s);
  CHECK(back.collectives[0].base_latency_s == p.collectives[0].base_latency_s);
  CHECK(back.collectives[1].bus_bytes_per_s == 40e9);
  CHECK(profile_to_json(back) == profile_to_json(p));
  // Present, it must be a positive bandwidth: the message names the file, the field and the fix.
  for (const char* bad : {"0", "\"0 GB/s\"", "-5"}) {
    CAPTURE(bad);
    CHECK_THROWS_WITH(
        profile_from_json(std::string(R"({"schema_version": 1, "collectives": [{"algorithm": "ring", "protocol": "ll",
            "span": "intra", "bus_bandwidth": )") +
                              bad + "}]}",
                          "p.json"),
        twinstep_contains("p.json: /collectives/0/bus_bandwidth: must be positive") &&
            twinstep_contains("leave the field out to keep the topology's link bandwidth"));
  }
}

TEST_CASE("sim::profile: the table-convention switches write each spelling they read and refuse others", "[sim]") {
  // Each switch of kTableSwitches: the default profile writes the spelling that clears it, a file with the other
  // spelling reads as set and writes it back; any third spelling names the field and both accepted ones.
  struct Case {
    const char* key;
    const char* on;
    const char* off;
    bool Profile::*field;
  };
  const std::vector<Case> cases = {{"memory_tables", "bytes", "flops", &Profile::memory_tables_by_bytes},
                                   {"attention_causal_work", "full", "half", &Profile::attention_full_scores},
                                   {"grouped_gemm_table", "per_group", "total", &Profile::grouped_gemm_per_group}};
  const std::string defaults = profile_to_json(Profile::datasheet_defaults());
  for (const Case& c : cases) {
    INFO(c.key);
    const std::string quoted_key = std::string("\"") + c.key + "\": ";
    CHECK(defaults.find(quoted_key + "\"" + c.off + "\"") != std::string::npos);
    CHECK_FALSE(Profile::datasheet_defaults().*c.field);
    const Profile set =
        profile_from_json(std::string(R"({"schema_version": 1, )") + quoted_key + "\"" + c.on + "\"}", "on.json");
    CHECK(set.*c.field);
    const std::string written = profile_to_json(set);
    CHECK(written.find(quoted_key + "\"" + c.on + "\"") != std::string::npos);
    CHECK(profile_from_json(written, "again.json").*c.field);
    try {
      (void)profile_from_json(std::string(R"({"schema_version": 1, )") + quoted_key + "\"neither\"}", "bad.json");
      FAIL("expected a ParseError");
    } catch (const Error& e) {
      const std::string msg = e.what();
      CHECK(msg.find(std::string("bad.json: /") + c.key + ": use") == 0);
      CHECK(msg.find(std::string("\"") + c.on + "\"") != std::string::npos);
      CHECK(msg.find(std::string("\"") + c.off + "\"") != std::string::npos);
    }
  }
}

TEST_CASE("choose_profile: the datasheet choices carry the datasheet's tables, the default is the GPU's measured one") {
  const auto h100 = twinstep::topologies::load_cluster("dgx-h100", twinstep::topologies::ClusterSize{0, 8});
  const auto datasheet = twinstep::sim::Profile::datasheet_defaults();
  // --profile datasheet: the documented defaults (a default-constructed Profile has no tables: GEMMs at peak).
  const auto ds = twinstep::sim::choose_profile("datasheet", h100);
  CHECK_FALSE(ds.measured);
  CHECK(ds.reason == "--profile datasheet");
  REQUIRE(ds.profile.compute.size() == datasheet.compute.size());
  for (const auto& [cls, t] : datasheet.compute) CHECK(ds.profile.compute.at(cls).points == t.points);
  CHECK(ds.profile.launch_s == datasheet.launch_s);
  // No flag: the measured profile defaults.json lists for the cluster's GPU.
  const auto measured = twinstep::sim::choose_profile("", h100);
  CHECK(measured.measured);
  CHECK(measured.profile.name.find("calibration/profiles/h100x1.json") != std::string::npos);
  CHECK(measured.reason.find("measured default for H100") != std::string::npos);
  // A GPU without a measured profile: the datasheet's tables, with a warning.
  const auto a100 = twinstep::topologies::load_cluster("dgx-a100", twinstep::topologies::ClusterSize{0, 8});
  const auto fallback = twinstep::sim::choose_profile("", a100);
  CHECK_FALSE(fallback.measured);
  CHECK(fallback.profile.compute.at("gemm").points == datasheet.compute.at("gemm").points);
  CHECK_FALSE(fallback.warnings.empty());
}
