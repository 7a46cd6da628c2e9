// The power-cap clock model (sim/clock_model.cpp) against closed forms: one class at the limit, the limit not reached,
// a time-weighted mix, a class whose time follows the clock; the per-rank loads of a trace and the lowest rank's
// clock; the tables rescaled from their measured clocks; the profile's "clock_model" section read, written, refused.
#include "sim/clock_model.hpp"

#include <cmath>
#include <string>
#include <vector>

#include "common/error.hpp"
#include "schedule/trace.hpp"
#include "sim/cost_model.hpp"
#include "tests/catch.hpp"

using namespace twinstep;
using namespace twinstep::sim;

namespace {

ClockModel model() {
  ClockModel m;
  m.mode = ClockMode::kPowerCap;
  m.power_limit_w = 700;
  m.idle_w = 100;
  m.max_mhz = 2000;
  m.min_mhz = 300;
  m.power_exponent = 2;
  m.time_exponent = 1;
  m.gemm_power_w.points = {{1e9, 900}, {1e12, 900}};
  m.attention_w = 500;
  m.memory_w = 400;
  m.comm_w = 0;
  m.measured_mhz = {{"gemm", 1500}, {"attention_fwd", 2000}};
  return m;
}

schedule::Op compute_op(schedule::OpId id, schedule::RankId rank, schedule::Kernel kernel) {
  schedule::Op op;
  op.id = id;
  op.rank = rank;
  op.body = schedule::Compute{std::move(kernel), 0};
  return op;
}

schedule::OpRecord record(schedule::OpId op, schedule::RankId rank, Nanos start, Nanos end) {
  return {op, rank, start, start, end};
}

}  // namespace

TEST_CASE("sim::solve_clock_mhz: one class at the limit, P(f) = idle + W (f / f_max)^g", "[sim][clock]") {
  const ClockModel m = model();
  // A GPU busy the whole step with a class of 900 W at 2000 MHz, power ~ f^2, its time not tied to the clock:
  // 100 + 900 (f / 2000)^2 = 700 -> f = 2000 sqrt(600 / 900).
  const double f = solve_clock_mhz(m, {{1.0, 900, 2, 0}}, 1.0);
  CHECK(f == Approx(2000 * std::sqrt(600.0 / 900.0)).epsilon(1e-5));
  // Under the limit at full clock: the clock stays at max_mhz.
  CHECK(solve_clock_mhz(m, {{1.0, 550, 2, 0}}, 1.0) == 2000);
  // Nothing runs: max_mhz.
  CHECK(solve_clock_mhz(m, {}, 1.0) == 2000);
  // The limit not met even at min_mhz: min_mhz.
  CHECK(solve_clock_mhz(m, {{1.0, 900, 0, 0}}, 1.0) == 300);
}

TEST_CASE("sim::solve_clock_mhz: a mix is time-weighted", "[sim][clock]") {
  const ClockModel m = model();
  // Half the step a 1000 W class ~ f^2, half a 400 W class that does not scale:
  // 100 + 0.5 * 1000 x^2 + 0.5 * 400 = 700 -> x^2 = 0.8.
  const double f = solve_clock_mhz(m, {{0.5, 1000, 2, 0}, {0.5, 400, 0, 0}}, 1.0);
  CHECK(f == Approx(2000 * std::sqrt(0.8)).epsilon(1e-5));
  // The same busy times in a step twice as long (idle the rest) draw half the dynamic power: 100 + 0.25 * 1000 x^2 +
  // 0.25 * 400 = 700 -> x^2 = 2 > 1: full clock.
  CHECK(solve_clock_mhz(m, {{0.5, 1000, 2, 0}, {0.5, 400, 0, 0}}, 2.0) == 2000);
}

TEST_CASE("sim::solve_clock_mhz: a class measured at another clock stretches with 1/f", "[sim][clock]") {
  const ClockModel m = model();
  // 0.5 s of work measured at 1500 MHz in a 1 s step, the rest idle, time ~ 1/f: at f it takes u = 0.5 * 1500 / f
  // of a step of 0.5 + u. The solved clock satisfies 100 + u / (0.5 + u) * 1600 (f / 2000)^2 = 700.
  const double f = solve_clock_mhz(m, {{0.5, 1600, 2, 1500}}, 1.0);
  const double u = 0.5 * 1500 / f;
  CHECK(100 + u / (0.5 + u) * 1600 * std::pow(f / 2000, 2) == Approx(700).epsilon(1e-4));
  // Without the stretch (reference 0) the share stays 0.5: 100 + 800 x^2 = 700 -> x^2 = 0.75. Measured at 1500 MHz
  // the work runs faster at that clock, its share is below 0.5, so the clock settles higher.
  CHECK(solve_clock_mhz(m, {{0.5, 1600, 2, 0}}, 1.0) == Approx(2000 * std::sqrt(0.75)).epsilon(1e-5));
  CHECK(f > 2000 * std::sqrt(0.75) + 10);
  CHECK(f < 2000);
}

TEST_CASE("sim::power_cap_clock: loads per rank from a trace, the lowest rank's clock", "[sim][clock]") {
  const ClockModel m = model();
  schedule::Trace t;
  t.step_times_ns = {1'000'000'000};
  const schedule::Gemm gemm{4096, 4096, 4096};
  t.schedule.ops = {compute_op(0, 0, gemm), compute_op(1, 0, schedule::Elementwise{1 << 20, 0}),
                    compute_op(2, 1, gemm)};
  // Rank 0: GEMM 0.6 s (900 W, measured at 1500 MHz), elementwise 0.4 s (400 W). Rank 1: GEMM 0.2 s.
  t.records = {record(0, 0, 0, 600'000'000), record(1, 0, 600'000'000, 1'000'000'000), record(2, 1, 0, 200'000'000)};
  const auto loads = rank_loads(t, m);
  REQUIRE(loads.at(0).size() == 2);
  CHECK(loads.at(0)[0].busy_s == Approx(0.6));
  CHECK(loads.at(0)[0].power_w == Approx(900));
  CHECK(loads.at(0)[0].reference_mhz == 1500);
  CHECK(loads.at(0)[1].power_w == Approx(400));
  CHECK(loads.at(0)[1].reference_mhz == 0);
  const ClockSolution s = power_cap_clock(t, m);
  CHECK(s.per_rank_mhz.at(0) == Approx(solve_clock_mhz(m, loads.at(0), 1.0)));
  CHECK(s.per_rank_mhz.at(1) == 2000);  // 100 + 0.2 * 900 < 700 even stretched from 1500 MHz.
  CHECK(s.mhz == s.per_rank_mhz.at(0));
  CHECK(s.mhz < 2000);
}

TEST_CASE("sim::at_clock: tables rescaled from their measured clocks, at most 1", "[sim][clock]") {
  Profile p = Profile::datasheet_defaults();
  p.clock_model = model();
  p.compute["gemm"].points = {{1e9, 0.5}, {1e12, 0.9}};
  p.compute["elementwise"].points = {{1e6, 0.4}};
  p.compute["attention_fwd"].points = {{1e9, 0.3}};
  const Profile q = at_clock(p, 1800);
  CHECK(q.compute.at("gemm").points[0].second == Approx(0.5 * 1800 / 1500));
  CHECK(q.compute.at("gemm").points[1].second == 1.0);  // 0.9 x 1.2 capped
  CHECK(q.compute.at("elementwise").points[0].second == 0.4);
  CHECK(q.compute.at("attention_fwd").points[0].second == Approx(0.3 * 1800 / 2000));
}

TEST_CASE("sim::profile: clock_model read, written back, refused with the field named", "[sim][clock]") {
  Profile p = Profile::datasheet_defaults();
  p.clock_model = model();
  p.clock_model.source = "test";
  const Profile back = profile_from_json(profile_to_json(p), "p.json");
  CHECK(back.clock_model.mode == ClockMode::kPowerCap);
  CHECK(back.clock_model.power_limit_w == 700);
  CHECK(back.clock_model.gemm_power_w.points == p.clock_model.gemm_power_w.points);
  CHECK(back.clock_model.measured_mhz == p.clock_model.measured_mhz);
  CHECK(profile_to_json(back) == profile_to_json(p));
  const std::string head = R"({"schema_version": 1, "clock_model": {"power_limit_w": 700, "idle_w": 100, "max_mhz": )"
                           R"(2000, "power_exponent": 2, "time_exponent": 1, "gemm_power_w": [[1e9, 900]], )"
                           R"("attention_w": 500, "memory_w": 400, "comm_w": 0, )";
  CHECK(profile_from_json(head + R"("measured_mhz": {"gemm": 1500}}})", "p.json").clock_model.mode == ClockMode::kNone);
  CHECK_THROWS_WITH(profile_from_json(head + R"("measured_mhz": {"gemmm": 1500}}})", "p.json"),
                    Catch::Contains("/clock_model/measured_mhz/gemmm") && Catch::Contains("not a compute table"));
  CHECK_THROWS_WITH(profile_from_json(head + R"("mode": "on", "measured_mhz": {}}})", "p.json"),
                    Catch::Contains("/clock_model/mode") && Catch::Contains("power-cap"));
  CHECK_THROWS_WITH(
      profile_from_json(R"({"schema_version": 1, "clock_model": {"power_limit_w": 700, "idle_w": 100}})", "p.json"),
      Catch::Contains("/clock_model") && Catch::Contains("max_mhz"));
  CHECK_THROWS_AS(parse_clock_mode("fast", "--clock-model"), ParseError);
  CHECK(to_string(parse_clock_mode("power-cap", "--clock-model")) == "power-cap");
}
