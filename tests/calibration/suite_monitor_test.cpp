// run_suite copies the backend's GPU monitor context keys ("gpu_monitor*": SM clock, power, power-cap share) into
// each raw group line, prefix dropped, and the raw file still reads back.
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>

#include "calibration/raw_file.hpp"
#include "calibration/suite.hpp"
#include "schedule/builder.hpp"
#include "tests/catch.hpp"

namespace cal = twinstep::calibration;
namespace sch = twinstep::schedule;

namespace {

/// A benchmark group `group` running `s`.
cal::BenchGroup group_of(const std::string& group, sch::Schedule s) {
  cal::BenchGroup g;
  g.name = group;
  g.schedule = std::move(s);
  return g;
}

/// What run_suite wrote for one group: the group's raw line and the file read back.
struct Written {
  std::size_t groups = 0;  ///< run_suite's count of measured groups
  std::string line;
  cal::RawResults raw;
};

/// Runs `g` through run_suite with `execute` into a temporary raw file (removed afterwards).
template <class Execute>
Written run_one(const cal::BenchGroup& g, const std::string& file, Execute execute) {
  const std::string path = (std::filesystem::temp_directory_path() / file).string();
  cal::RunOptions o;
  o.raw_path = path;
  Written w;
  w.groups = cal::run_suite("default", {g}, execute, o);
  std::ifstream in(path);
  std::string header;
  std::getline(in, header);
  std::getline(in, w.line);
  w.raw = cal::read_raw(path);
  std::filesystem::remove(path);
  return w;
}

}  // namespace

TEST_CASE("calibration::run_suite: each raw group line carries the trace's gpu_monitor figures", "[calibration]") {
  twinstep::schedule::ScheduleBuilder b(1, {{"compute", 0}}, "one gemm");
  b.gemm(0, "gemm", 0, 1024, 1024, 1024);
  cal::BenchGroup g = group_of("compute.gemm", b.take());
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
  const Written w = run_one(g, "twinstep_suite_monitor_test.jsonl", execute);
  REQUIRE(w.groups == 1);
  const auto& raw = w.raw;

  const auto j = nlohmann::json::parse(w.line);
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
  const Written w = run_one(group_of("host.issue", twinstep::schedule::ScheduleBuilder(1, {}, "empty").take()),
                            "twinstep_suite_monitor_test2.jsonl", [](const sch::Schedule& s) {
                              return sch::Trace{"sim", {{"gpu", "x"}}, {}, {0}, s};
                            });
  CHECK_FALSE(nlohmann::json::parse(w.line).contains("gpu_monitor"));
}
