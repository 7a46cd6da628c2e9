// Evaluating one point: a model, a cluster, a run config -> lowered (with the symmetry-reduction policy), checked
// against the size limits, simulated and analysed, with step time, MFU, memory and the figures attribution needs.
// The one path of `twinstep predict` (per overlap variant) and `twinstep sweep` (per point and per extrapolation
// sample); `twinstep simulate` uses its second half (simulate_schedule) on a schedule file. Both solve the SM clock
// under the power cap when asked (Options::clock, sim/clock_model.hpp).
#pragma once

#include <cstddef>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "models/lower.hpp"
#include "schedule/analysis.hpp"
#include "schedule/trace.hpp"
#include "sim/clock_model.hpp"
#include "sim/cost_model.hpp"
#include "sim/simulate.hpp"
#include "topologies/cluster.hpp"

namespace twinstep::evaluate {

/// Wall seconds of evaluate's phases (Options::phases), for the benchmarks: they time evaluate's own path rather
/// than lowering and simulating themselves. The seconds add up over every lowering and simulation one evaluate call
/// runs (with periodicity: the three short runs, and the full step when the check fails); ops and ranks are those of
/// the last simulated schedule.
struct Phases {
  double lower_s = 0;     ///< models::lower (after the size checks).
  double simulate_s = 0;  ///< sim::simulate, whole: matching, run, trace assembly and context.
  double analyze_s = 0;   ///< schedule::analyze.
  sim::Timings sim;       ///< simulate's parts.
  std::size_t ops = 0;    ///< Of the simulated schedule.
  std::size_t ranks = 0;  ///< Ranks the simulated schedule contains (fewer than the GPUs under symmetry reduction).
  std::size_t simulations = 0;  ///< Schedules lowered and simulated.
};

struct Options {
  sim::Fidelity fidelity = sim::default_fidelity();
  /// Symmetry reduction by sim::reduction_policy and steady-state periodicity (evaluate/periodic.hpp); predict's
  /// --no-reduce clears it: every rank and every micro-batch simulated.
  bool reduce = true;
  /// Steady-state periodicity (evaluate/periodic.hpp) when `reduce` is on and no trace is kept (a sweep's
  /// --no-extrapolate clears it).
  bool periodic = true;
  /// Human-readable op names (a sweep, which keeps no trace, turns them off); without them simulate_schedule
  /// collects no Simulated::host_work_s (keyed by op names).
  bool op_names = true;
  bool keep_trace = false;                ///< Return the trace (predict --trace).
  bool schedule_hash = true;              ///< sim::Options::schedule_hash.
  bool simulate_when_not_fitting = true;  ///< false: a point that does not fit in memory is not simulated.
  /// Refuse a simulation estimated above models::kMaxSimulatedOps ops (models::estimated_ops, of the largest short
  /// run with periodicity) before lowering; a sweep, which never refuses a point for size, turns it off.
  /// models::check_limits (figures that would overflow the clock) is checked either way.
  bool check_size = true;
  /// kPowerCap: the step is simulated with the costs' tables as measured; each simulated rank's busy time per class
  /// of work in it (sim::rank_loads, taken from the records before the trace is dropped; with periodicity,
  /// extrapolated with the breakdown) gives the clock it settles at (sim::solve_clock); the step is simulated again
  /// with the compute tables rescaled to the lowest (sim::at_clock), and Simulated::clock says which. Needs the costs'
  /// profile's clock_model section (Error, exit 2, otherwise).
  sim::ClockMode clock = sim::ClockMode::kNone;
  std::map<std::string, std::string> context;  ///< Copied into the trace's context.
  Phases* phases = nullptr;                    ///< When set, receives the phases' wall seconds.
};

/// What a simulated schedule gives.
struct Simulated {
  schedule::Breakdown breakdown;
  double solo_compute_s = 0;       ///< Mean over simulated ranks of the compute kernels' solo times (cost model).
  std::vector<std::string> notes;  ///< What the resource model leaves out; the symmetry reduction applied.
  /// Mean over simulated ranks of the host thread's time by cause: each host op's duration under its name's last
  /// part ("host_moe_router", "node_A", "moe_splits_sync_host", "autograd_backward_call"; digits dropped), and the
  /// time blocked in each host sync as "wait <sync name>". Empty without op names.
  std::map<std::string, double> host_work_s;
  std::optional<schedule::Trace> trace;
  /// The power-cap clock the step was simulated at (Options::clock; also in the trace's context and the notes).
  std::optional<sim::ClockSolution> clock;
  /// With Options::clock: per simulated rank, its busy time per class of work in the step simulated at the tables as
  /// measured, what `clock` was solved from (sim::rank_loads; with periodicity, extrapolated). Empty otherwise.
  sim::RankLoads loads;
};

/// One evaluated point.
struct Result {
  models::MemoryEstimate peak_memory;
  bool fits = true;
  bool simulated = false;             ///< false only for a point that does not fit with simulate_when_not_fitting off.
  std::vector<std::string> warnings;  ///< Gating warnings of the lowering.
  double model_flops_per_step = 0;
  double step_s = 0, tflops_per_gpu = 0, mfu = 0;
  Simulated sim;
  /// The micro-batch counts of the three short runs when the step was extrapolated by periodicity (empty: the full
  /// step was simulated).
  std::vector<std::uint32_t> periodic_from;
  std::string periodic_fallback;  ///< Why periodicity was tried and the full step simulated instead ("" otherwise).
};

/// Fills RunConfig::host from a calibration profile's framework section (every figure of sim::kFrameworkFields it
/// measured; the others stay 0 and are listed as not measured) and says so; `profile` null: none (the datasheet
/// defaults have no host costs). Returns the "host costs" text predict and lower print. predict and sweep both take
/// host costs this way.
[[nodiscard]] std::string host_costs_from_profile(const sim::Profile* profile, models::HostCosts& host);

/// Fills RunConfig::memory from a calibration profile: its memory_overhead section (the fields the GPU measured) and
/// NCCL's channels per communicator (nccl.channels_intra); `profile` null: the datasheet defaults stay. Sets and
/// returns MemoryCosts::source. predict, lower and sweep take the memory model's figures this way.
std::string memory_costs_from_profile(const sim::Profile* profile, models::MemoryCosts& memory);

/// Simulates `schedule` on `cluster` and analyses the trace (the trace kept with `options.keep_trace`); with
/// options.clock, twice (the second at the solved clock).
[[nodiscard]] Simulated simulate_schedule(schedule::Schedule schedule, const topologies::Cluster& cluster,
                                          const sim::CostModel& costs, const Options& options);

/// Lowers `config` (after models::check_limits and a refusal above models::kMaxSimulatedOps estimated ops of what is
/// simulated, exit 2, unless options.check_size is off), simulates and analyses it. A step of many micro-batches is
/// simulated at three short micro-batch counts and extrapolated by its period (evaluate/periodic.hpp), checked, with
/// a note saying so; when the check fails, the full step is simulated and a note says why. With options.clock, all
/// of that twice: first at the tables as measured, then at the clock solved from that step. Throws Error for an
/// invalid config.
[[nodiscard]] Result evaluate(const models::ModelSpec& model, const topologies::Cluster& cluster,
                              const sim::CostModel& costs, const models::RunConfig& config, const Options& options);

}  // namespace twinstep::evaluate
