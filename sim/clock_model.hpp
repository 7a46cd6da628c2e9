// The SM clock under the board's power cap (docs/calibration.md section 8): every compute table of a profile holds the
// clock its suite group ran at, and a GPU at its power limit settles at the clock where the time-weighted power of the
// kernels it runs meets the limit. rank_loads() takes each rank's busy time per class of work from a simulated trace,
// solve_clock() the clock from it, at_clock() rescales the profile's compute tables to it; evaluate::evaluate and
// evaluate::simulate_schedule (evaluate::Options::clock: predict, simulate and sweep's `--clock-model power-cap`, or
// the profile's "clock_model": {"mode": "power-cap"}) run the step again with the rescaled profile. Off by default.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "schedule/trace.hpp"
#include "sim/cost_model.hpp"

namespace twinstep::sim {

/// "none" (tables used as measured) or "power-cap"; the spellings are read only by parse_clock_mode and written only
/// by to_string.
[[nodiscard]] ClockMode parse_clock_mode(std::string_view text, std::string_view field);
[[nodiscard]] std::string to_string(ClockMode mode);

/// Throws Error (exit 2) for kPowerCap with a profile that has no "clock_model" section, naming the profile and the
/// fix; `flag` names where the mode came from ("--clock-model").
void check_clock_mode(ClockMode mode, const Profile& profile, const std::string& flag);

/// One class of work on one GPU over a step: its busy time at the clocks the profile's tables were measured at, the
/// power it draws above idle at the maximum clock, how that power scales with the clock (W (f / f_max)^power_exponent)
/// and the clock its time was measured at (reference_mhz; 0: its time does not depend on the SM clock).
struct ClassLoad {
  double busy_s = 0;
  double power_w = 0;
  double power_exponent = 0;
  double reference_mhz = 0;
};

/// The clock (MHz) at which idle + sum_c t_c(f) / T(f) * W_c (f / f_max)^g_c meets the power limit, where a class
/// with a reference clock f_c takes t_c (f_c / f)^time_exponent and the step T(f) = step_s + the change of those
/// times; max_mhz when the step stays under the limit at max_mhz. Bisection to 0.01 MHz between min_mhz and max_mhz.
[[nodiscard]] double solve_clock_mhz(const ClockModel& model, const std::vector<ClassLoad>& loads, double step_s);

/// Per rank, its loads: one entry per distinct (power, exponent, reference clock), in the order first met.
using RankLoads = std::map<schedule::RankId, std::vector<ClassLoad>>;

/// Per rank of a simulated trace, its loads: compute kernels by table (gemm and grouped_gemm drawing the model's
/// gemm_power_w at their FLOPs, attention by attention_w, memory-bound classes by memory_w), communication ops by
/// comm_w. Busy time is the sum of each record's end - start (integer ns, so the sum does not depend on the order).
[[nodiscard]] RankLoads rank_loads(const schedule::Trace& trace, const ClockModel& model);

/// The clock each rank settles at, and the lowest of them (the one profile a simulation takes).
struct ClockSolution {
  double mhz = 0;
  std::map<schedule::RankId, double> per_rank_mhz;
};
/// solve_clock_mhz for each rank of `loads` over a step of `step_s`.
[[nodiscard]] ClockSolution solve_clock(const RankLoads& loads, double step_s, const ClockModel& model);
/// solve_clock over `trace`'s loads and step.
[[nodiscard]] ClockSolution power_cap_clock(const schedule::Trace& trace, const ClockModel& model);

/// The trace context entries that record a solution: "clock_model" ("power-cap"), "clock_model.sm_clock_mhz" (the
/// lowest, rounded to the MHz) and "clock_model.sm_clock_mhz.per_rank" (comma-joined, by rank).
[[nodiscard]] std::map<std::string, std::string> clock_context(const ClockSolution& solution);

/// `profile` with every compute table named in model.measured_mhz rescaled from that clock to `mhz`: efficiency x
/// (mhz / measured)^time_exponent, at most 1. Other tables (memory-bound) unchanged.
[[nodiscard]] Profile at_clock(Profile profile, double mhz);

}  // namespace twinstep::sim
