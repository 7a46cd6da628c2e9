// The accuracy bar in CI: re-predicts every committed validation case (calibration/validation/h200x2) with the
// committed profile (calibration/profiles/h200x2.json, fitted from microbenchmarks only) and fails if the mean
// absolute step-time error exceeds 5 % or an overlap effect larger than 2 % (pairs <base>.off / <base>.on) is
// predicted with the wrong sign. The four-GPU cases (validation/h200x4, profile h200x4.json, cluster hgx-h200) are
// checked for the signs only: their MAE (9.2 %, calibration/validation/h200x4/REPORT.md) is above the bar. The
// two-GPU cases again with the power-cap clock model (sim/clock_model.hpp, docs/calibration.md 8.1): the same bar.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <string>

#include "evaluate/evaluate.hpp"
#include "schedule/json.hpp"
#include "sim/clock_model.hpp"
#include "tests/catch.hpp"
#include "topologies/cluster.hpp"

using namespace twinstep;

namespace {

/// name -> (predicted, measured) step seconds for every <name>.trace.json in `dir`: the measured median step, and
/// the step predicted for the trace's embedded schedule on `cluster` (sized to the trace's world) with `profile`
/// (evaluate::simulate_schedule); `clock`: with the power-cap clock model (evaluate::Options::clock).
std::map<std::string, std::pair<double, double>> repredict(const std::filesystem::path& dir,
                                                           const std::filesystem::path& profile_path,
                                                           const std::string& cluster_id, bool clock = false) {
  const sim::Profile profile = sim::read_profile(profile_path.string());
  std::map<std::string, std::pair<double, double>> cases;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    const std::string file = e.path().filename().string();
    const std::string suffix = ".trace.json";
    if (file.size() <= suffix.size() || file.compare(file.size() - suffix.size(), suffix.size(), suffix) != 0) continue;
    const schedule::Trace measured = schedule::read_trace(e.path().string());
    std::vector<Nanos> steps = measured.step_times_ns;
    REQUIRE_FALSE(steps.empty());
    std::sort(steps.begin(), steps.end());
    const double meas = static_cast<double>(steps[steps.size() / 2]) * 1e-9;
    const auto cluster = topologies::load_cluster(cluster_id, topologies::ClusterSize{0, measured.schedule.world_size});
    const sim::CostModel costs(cluster, profile);
    // evaluate's path, as `twinstep simulate` takes it (the clock model: evaluate::Options::clock).
    evaluate::Options options;
    options.clock = clock ? sim::ClockMode::kPowerCap : sim::ClockMode::kNone;
    const evaluate::Simulated predicted = evaluate::simulate_schedule(measured.schedule, cluster, costs, options);
    if (clock) {
      REQUIRE(predicted.clock);
      REQUIRE(predicted.clock->mhz <= profile.clock_model.max_mhz);
    }
    cases[file.substr(0, file.size() - suffix.size())] = {predicted.breakdown.step_time_s, meas};
  }
  return cases;
}

/// Mean absolute relative step-time error over `cases`.
double mean_abs_error(const std::map<std::string, std::pair<double, double>>& cases) {
  double sum = 0;
  for (const auto& [name, pm] : cases) {
    const double err = (pm.first - pm.second) / pm.second;
    INFO(name << ": predicted " << pm.first << " s, measured " << pm.second << " s, error " << 100 * err << " %");
    sum += std::abs(err);
    CHECK(std::isfinite(err));
  }
  return sum / static_cast<double>(cases.size());
}

/// Checks that every <base>.off -> <base>.on effect measured larger than 2 % is predicted with its sign; returns
/// how many effects were checked.
int check_effect_signs(const std::map<std::string, std::pair<double, double>>& cases) {
  int checked = 0;
  for (const auto& [name, off] : cases) {
    if (name.size() < 4 || name.compare(name.size() - 4, 4, ".off") != 0) continue;
    const auto on = cases.find(name.substr(0, name.size() - 4) + ".on");
    if (on == cases.end()) continue;
    const double measured_effect = (off.second - on->second.second) / off.second;
    const double predicted_effect = (off.first - on->second.first) / off.first;
    INFO(name << ": overlap effect measured " << 100 * measured_effect << " %, predicted " << 100 * predicted_effect
              << " %");
    if (std::abs(measured_effect) > 0.02) {
      CHECK(measured_effect * predicted_effect > 0);
      ++checked;
    }
  }
  return checked;
}

}  // namespace

TEST_CASE("calibration::validation: committed cases within the accuracy bar", "[calibration][slow]") {
  const std::filesystem::path root = std::filesystem::path(TWINSTEP_SOURCE_DIR) / "calibration";
  const auto cases = repredict(root / "validation" / "h200x2", root / "profiles" / "h200x2.json", "h200x2-nvlink");
  REQUIRE(cases.size() >= 6);
  const double mae = mean_abs_error(cases);
  INFO("mean absolute error " << 100 * mae << " % over " << cases.size() << " cases");
  CHECK(mae <= 0.05);
  check_effect_signs(cases);
}

TEST_CASE("calibration::validation: committed cases within the bar with the power-cap clock model",
          "[calibration][slow]") {
  const std::filesystem::path root = std::filesystem::path(TWINSTEP_SOURCE_DIR) / "calibration";
  const auto profile = root / "profiles" / "h200x2.json";
  REQUIRE(sim::read_profile(profile.string()).clock_model.present());
  const auto cases = repredict(root / "validation" / "h200x2", profile, "h200x2-nvlink", true);
  REQUIRE(cases.size() >= 6);
  const double mae = mean_abs_error(cases);
  INFO("mean absolute error " << 100 * mae << " % over " << cases.size() << " cases (2.41 % in docs/calibration.md)");
  CHECK(mae <= 0.05);
  CHECK(check_effect_signs(cases) == 3);  // tp2, moe_ep2, pp2_interleave
}

TEST_CASE("calibration::validation: four-GPU cases keep every overlap effect's sign", "[calibration][slow]") {
  const std::filesystem::path root = std::filesystem::path(TWINSTEP_SOURCE_DIR) / "calibration";
  const auto cases = repredict(root / "validation" / "h200x4", root / "profiles" / "h200x4.json", "hgx-h200");
  REQUIRE(cases.size() == 12);
  const double mae = mean_abs_error(cases);
  INFO("mean absolute error " << 100 * mae << " % over " << cases.size() << " cases (not yet within the 5 % bar)");
  CHECK(std::isfinite(mae));
  // tp4, moe_ep4 and pp2tp2_interleave are measured beyond 2 % (validation/h200x4/REPORT.md); dp4 and pp4_vpp2 are not.
  CHECK(check_effect_signs(cases) == 3);
}
