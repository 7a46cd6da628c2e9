// The sweep's --clock-model (evaluate::Options::clock through sweep::Point::clock_model): a power-cap point gives the
// step predict gave for it before the clock model moved into evaluate (main at 4570977), extrapolated or not, with
// the solved clock in its line; the mode is in the point's key and predict command only when set; the sweep file's
// "clock_model" field is read and refused by name.
#include <cmath>
#include <nlohmann/json.hpp>
#include <string>

#include "common/error.hpp"
#include "sim/clock_model.hpp"
#include "sweep/grid.hpp"
#include "sweep/runner.hpp"
#include "tests/catch.hpp"

using namespace twinstep;

namespace {

/// Llama-3-8B, TP2 PP2 DP8 on 4 DGX H100 (h100x1's clock model), 16 micro-batches: extrapolated from 3, 4 and 5.
sweep::Point four_nodes() {
  sweep::Spec s;
  s.models = {"llama3-8b"};
  s.clusters = {"dgx-h100"};
  s.gpus = {32};
  s.gbs = {128};
  s.seq = {4096};
  s.tp = {2};
  s.pp = {2};
  s.fidelities = {sim::Fidelity::kAnalytic};
  s.clock_model = sim::ClockMode::kPowerCap;
  const auto points = sweep::expand(s);
  REQUIRE(points.size() == 1);
  return points.front();
}

}  // namespace

TEST_CASE("sweep::evaluate_point: power-cap gives predict's step and the solved clock, extrapolated or not",
          "[sweep][clock]") {
  const sweep::Point p = four_nodes();
  const auto a = nlohmann::json::parse(sweep::evaluate_point(p, true));
  INFO(a.dump());
  REQUIRE(a["status"] == "ok");
  REQUIRE(a.contains("extrapolated_from_micro_batches"));
  // `twinstep predict --model llama3-8b --cluster dgx-h100 --gpus 32 --tp 2 --pp 2 --gbs 128 --seq 4096 --overlap
  // none --fidelity analytic --clock-model power-cap --json` at 4570977 (the clock solved from a full trace there):
  // step_time_s 1.6357208039999995, "SM clock under the power cap: 1810 MHz (per rank 1980,1810; ...)".
  CHECK(a["step_time_s"].get<double>() == Approx(1.6357208039999995).epsilon(1e-12));
  CHECK(std::lround(a["sm_clock_mhz"].get<double>()) == 1810);
  REQUIRE(a["sm_clock_mhz_per_rank"].size() == 2);
  const auto b = nlohmann::json::parse(sweep::evaluate_point(p, false));
  REQUIRE(b["status"] == "ok");
  CHECK_FALSE(b.contains("extrapolated_from_micro_batches"));
  CHECK(b["step_time_s"].get<double>() == Approx(a["step_time_s"].get<double>()).epsilon(1e-9));
  CHECK(std::abs(b["sm_clock_mhz"].get<double>() - a["sm_clock_mhz"].get<double>()) <= 0.01);
  // The profile's mode (none in h100x1.json) when the point does not set one: the tables as measured.
  sweep::Point none = p;
  none.clock_model.reset();
  const auto c = nlohmann::json::parse(sweep::evaluate_point(none, true));
  REQUIRE(c["status"] == "ok");
  CHECK_FALSE(c.contains("sm_clock_mhz"));
  CHECK(c["step_time_s"].get<double>() != Approx(a["step_time_s"].get<double>()).epsilon(1e-6));
}

TEST_CASE("sweep: the clock model in a point's key, predict command and sweep file", "[sweep][clock]") {
  sweep::Point p = four_nodes();
  CHECK(sweep::point_key(p).find("\"clock_model\":\"power-cap\"") != std::string::npos);
  CHECK(sweep::predict_command(p).find(" --clock-model power-cap ") != std::string::npos);
  const sweep::Point back = sweep::point_from_inputs(sweep::point_inputs(p), "test");
  REQUIRE(back.clock_model);
  CHECK(*back.clock_model == sim::ClockMode::kPowerCap);
  CHECK(sweep::point_key(back) == sweep::point_key(p));
  p.clock_model.reset();  // unset: the key and command of a sweep before the flag existed
  CHECK(sweep::point_key(p).find("clock_model") == std::string::npos);
  CHECK(sweep::predict_command(p).find("--clock-model") == std::string::npos);
  CHECK_FALSE(sweep::point_from_inputs(sweep::point_inputs(p), "test").clock_model);
  const std::string head = R"({"models": ["llama3-8b"], "clusters": ["dgx-h100"], "gpus": [8], )";
  CHECK(sweep::spec_from_json(head + R"("clock_model": "none"})", "s.json").clock_model == sim::ClockMode::kNone);
  CHECK_FALSE(sweep::spec_from_json(head + "\"seq\": 1024}", "s.json").clock_model);
  CHECK_THROWS_WITH(sweep::spec_from_json(head + R"("clock_model": "fast"})", "s.json"),
                    Catch::Contains("/clock_model") && Catch::Contains("power-cap"));
}
