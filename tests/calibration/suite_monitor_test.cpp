// run_suite copies the backend's GPU monitor context keys ("gpu_monitor*": SM clock, power, power-cap share) into
// each raw group line, prefix dropped, and the raw file still reads back.
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "calibration/suite.hpp"
#include "tests/catch.hpp"

namespace cal = twinstep::calibration;
namespace sch = twinstep::schedule;

TEST_CASE("calibration::run_suite: each raw group line carries the trace's gpu_monitor figures", "[calibration]") {
  cal::BenchGroup g;
  g.name = "compute.gemm";
  g.schedule.name = "one gemm";
  g.schedule.world_size = 1;
  g.schedule.ranks = {0};
  g.schedule.streams = {{"compute", 0}};
  sch::Op op;
  op.id = 0;
  op.rank = 0;
  op.stream = 0;
  op.name = "gemm";
  op.body = sch::Compute{sch::Gemm{1024, 1024, 1024, 1, sch::DType::kBF16}, 0};
  g.schedule.ops.push_back(op);
  g.probes.push_back({"gemm.m1024", "gemm", cal::Metric::kDuration, {0}, sch::kNoOp, 2.0 * 1024 * 1024 * 1024, {}});

  auto execute = [](const sch::Schedule& s) {
    sch::Trace t;
    t.producer = "backend";
    t.schedule = s;
    t.records.push_back({0, 0, 0, 1000, 51000});
    t.context = {{"gpu", "NVIDIA H200"},
                 {"gpu_monitor", "nvml: sampled"},
                 {"gpu_monitor.sm_clock_mhz.median", "1515"},
                 {"gpu_monitor.power_cap_fraction", "0.8"},
                 {"gpu_monitorish", "not the monitor's"}};
    return t;
  };
  const std::string path = (std::filesystem::temp_directory_path() / "twinstep_suite_monitor_test.jsonl").string();
  cal::RunOptions o;
  o.raw_path = path;
  REQUIRE(cal::run_suite("default", {g}, execute, o) == 1);
  std::ifstream in(path);
  std::string header, line;
  std::getline(in, header);
  std::getline(in, line);
  const auto raw = cal::read_raw(path);
  std::filesystem::remove(path);

  const auto j = nlohmann::json::parse(line);
  REQUIRE(j.contains("gpu_monitor"));
  const auto& m = j.at("gpu_monitor");
  CHECK(m.size() == 3);
  CHECK(m.at("status") == "nvml: sampled");
  CHECK(m.at("sm_clock_mhz.median") == "1515");
  CHECK(m.at("power_cap_fraction") == "0.8");
  REQUIRE(raw.measurements.size() == 1);
  CHECK(raw.measurements[0].value_s == Approx(50e-6));
}

TEST_CASE("calibration::run_suite: a trace without monitor keys writes no gpu_monitor field", "[calibration]") {
  cal::BenchGroup g;
  g.name = "host.issue";
  g.schedule.name = "empty";
  g.schedule.world_size = 1;
  g.schedule.ranks = {0};
  const std::string path = (std::filesystem::temp_directory_path() / "twinstep_suite_monitor_test2.jsonl").string();
  cal::RunOptions o;
  o.raw_path = path;
  cal::run_suite(
      "default", {g},
      [](const sch::Schedule& s) {
        return sch::Trace{"sim", {{"gpu", "x"}}, {}, {0}, s};
      },
      o);
  std::ifstream in(path);
  std::string header, line;
  std::getline(in, header);
  std::getline(in, line);
  std::filesystem::remove(path);
  CHECK_FALSE(nlohmann::json::parse(line).contains("gpu_monitor"));
}
