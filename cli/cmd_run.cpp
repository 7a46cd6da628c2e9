// `twinstep run`: executes a schedule on real GPUs through the CUDA/NCCL backend, one process per GPU under
// mpirun/srun (or one process for a one-GPU schedule), and writes the measured trace (rank 0 writes it).
// Without the backend in the binary, `run` still exists and says how to build it (exit 2).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "cli/commands.hpp"
#include "common/error.hpp"
#include "schedule/json.hpp"
#include "schedule/schedule.hpp"
#include "schedule/validate.hpp"
#include "sim/simulate.hpp"

#if defined(TWINSTEP_HAVE_BACKEND)
#include "backend/executor.hpp"
#include "backend/mpi_group.hpp"
#endif

namespace twinstep::cli {

namespace {

struct RunArgs {
  std::string schedule_path;
  std::string trace_path;
  std::string series_path;  // --monitor-series: empty for none
  int warmup = 2;
  int steps = 5;
  double timeout_s = 120.0;
};

/// The hardware queues the schedule was lowered for (meta `cuda_device_max_connections`, models/lower.cpp; the
/// simulator starts a rank's GPU ops in issue order with one) are the ones the run gets: CUDA reads
/// CUDA_DEVICE_MAX_CONNECTIONS when it creates the context, so it is set here, before the backend touches CUDA. A
/// different value already in the environment is refused: the run would not be the schedule's. Returns the value the
/// run uses, for the trace.
[[maybe_unused]] std::string apply_hardware_queues(const schedule::Schedule& s, const std::string& path) {
  const char* env = std::getenv("CUDA_DEVICE_MAX_CONNECTIONS");  // NOLINT(concurrency-mt-unsafe): single-threaded
  const std::optional<std::uint32_t> queues = schedule::hardware_queues(s, path);
  if (!queues) return env != nullptr ? std::string(env) : std::string("unset (CUDA's default, 8)");
  std::string want = std::to_string(*queues);
  if (env != nullptr && want != env) {
    throw Error(path + ": the schedule was lowered for CUDA_DEVICE_MAX_CONNECTIONS=" + want +
                " (meta.cuda_device_max_connections) but the environment sets it to " + env +
                "; unset it (twinstep run sets it from the schedule) or lower with --cdmc " + env);
  }
  if (env == nullptr &&
      ::setenv("CUDA_DEVICE_MAX_CONNECTIONS", want.c_str(), 1) != 0) {  // NOLINT(concurrency-mt-unsafe)
    throw Error("cannot set CUDA_DEVICE_MAX_CONNECTIONS in the environment");
  }
  return want;
}

void run_command(const RunArgs& a) {
#if defined(TWINSTEP_HAVE_BACKEND)
  if (a.steps < 1) throw Error("--steps must be at least 1 (measured steps)");
  if (a.warmup < 0) throw Error("--warmup must be 0 or more");
  if (a.timeout_s <= 0) throw Error("--timeout-s must be positive (seconds per step)");
  (void)backend::monitor_interval_ms_from_env();  // a bad TWINSTEP_GPU_MONITOR_INTERVAL_MS: exit 2 before MPI, CUDA
  const schedule::Schedule s = schedule::read_schedule(a.schedule_path);
  schedule::check(s);
  const std::string queues = apply_hardware_queues(s, a.schedule_path);
  backend::Runtime runtime;
  if (!a.series_path.empty()) {
    runtime.check_on_rank0([&] { backend::check_series_path(a.series_path, "--monitor-series"); });
  }
  backend::Options options;
  options.warmup_steps = a.warmup;
  options.steps = a.steps;
  options.timeout_s = a.timeout_s;
  std::vector<backend::GpuSeries> series;
  if (!a.series_path.empty()) options.monitor_series = &series;
  schedule::Trace trace = runtime.execute(s, options);
  trace.context["schedule_file"] = a.schedule_path;
  trace.context[schedule::kHardwareQueuesKey] = queues;
  trace.context["command"] = "twinstep run --warmup " + std::to_string(a.warmup) + " --steps " +
                             std::to_string(a.steps) + " --timeout-s " + std::to_string(a.timeout_s) +
                             (a.series_path.empty() ? "" : " --monitor-series " + a.series_path);
  if (runtime.rank() == 0) {
    schedule::write_trace(trace, a.trace_path);
    if (!a.series_path.empty()) backend::write_series_csv(series, a.series_path, "--monitor-series");
    double best = 0;
    for (auto t : trace.step_times_ns) best = (best == 0 || t < best) ? static_cast<double>(t) : best;
    std::fprintf(stderr, "twinstep run: %zu ops on %d GPU(s), %zu measured steps, fastest step %.3f ms -> %s\n",
                 s.ops.size(), runtime.size(), trace.step_times_ns.size(), best * 1e-6, a.trace_path.c_str());
  }
#else
  (void)a;
  throw Error(
      "this twinstep was built without the CUDA/NCCL backend, so it cannot run schedules on GPUs: rebuild on a "
      "machine with nvcc, NCCL and MPI with `cmake -DTWINSTEP_BACKEND=ON` (for example `cmake -S . -B build -G Ninja "
      "-DTWINSTEP_BACKEND=ON -DCMAKE_CUDA_ARCHITECTURES=90`), then start it under `mpirun -np N twinstep run ...`");
#endif
}

/// `twinstep info`: what this binary was built with, and which library its MPI calls bind to.
std::string build_info() {
  std::string out = "twinstep 0.1.0\n";
  out += "flow model: " +
         (sim::flow_model_available() ? sim::flow_engine_version() : std::string("not built (no SimGrid)")) + "\n";
  out += "default fidelity: " + to_string(sim::default_fidelity()) + "\n";
#if defined(TWINSTEP_HAVE_BACKEND)
  const std::string mpi = backend::mpi_init_provider();
  out += "backend: CUDA/NCCL\n";
  out += "MPI_Init_thread from: " + (mpi.empty() ? std::string("(no MPI library loaded)") : mpi) + "\n";
#else
  out += "backend: not built\n";
#endif
  return out;
}

}  // namespace

void register_backend_commands(CLI::App& app) {
  app.add_subcommand("info", "Print what this binary was built with (flow model, backend, the MPI library it binds)")
      ->callback([] { std::fputs(build_info().c_str(), stdout); });
  auto args = std::make_shared<RunArgs>();
  CLI::App* run = app.add_subcommand(
      "run", "Execute a schedule on GPUs and measure every op (under mpirun/srun: one process per GPU)");
  run->add_option("schedule", args->schedule_path, "Schedule JSON (from `twinstep lower`)")->required();
  run->add_option("-o,--output", args->trace_path, "Measured trace JSON, written by rank 0")->required();
  run->add_option("--warmup", args->warmup, "Warm-up steps, run and discarded")->capture_default_str();
  run->add_option("--steps", args->steps, "Measured steps; the trace holds per-op medians")->capture_default_str();
  run->add_option("--timeout-s", args->timeout_s, "Watchdog limit per step in seconds")->capture_default_str();
  run->add_option("--monitor-series", args->series_path,
                  "CSV of every rank's GPU monitor samples against time (SM clock, power, clock event reasons; "
                  "interval TWINSTEP_GPU_MONITOR_INTERVAL_MS, default 5, range 0.1-1000), written by rank 0 "
                  "(docs/calibration.md 8.1)");
  run->callback([args] { run_command(*args); });
}

}  // namespace twinstep::cli
