// `twinstep calibrate`: runs a microbenchmark suite through the backend (under mpirun, one process per GPU),
// appending raw measurements as each group finishes (--resume continues), then fits a profile the simulator
// reads. `--fit RAW` fits from an existing raw file on any machine (no GPUs). Logic: calibration/suite, fit.
#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>

#include "calibration/fit.hpp"
#include "calibration/fit_framework.hpp"
#include "calibration/fit_moe_routing.hpp"
#include "calibration/fit_trace.hpp"
#include "calibration/raw_file.hpp"
#include "calibration/suite.hpp"
#include "cli/commands.hpp"
#include "common/error.hpp"
#include "common/io.hpp"
#include "schedule/json.hpp"
#include "sim/cost_model.hpp"
#include "sim/profile_choice.hpp"
#include "topologies/cluster.hpp"

#if defined(TWINSTEP_HAVE_BACKEND)
#include "backend/executor.hpp"
#endif

namespace twinstep::cli {
namespace {

struct CalibrateArgs {
  std::string suite = "default";
  std::string output;
  std::string raw;
  std::string fit_from;
  std::string from_trace;
  std::string base_profile;
  std::string cluster = "h200x2-nvlink";
  std::string framework;
  std::string memory;
  std::string moe_routing;
  std::string borrow;
  std::string name;
  bool resume = false;
  int warmup = 2;
  int steps = 7;
};

void fit_and_write(const CalibrateArgs& a, const calibration::RawResults& raw) {
  const auto cluster = topologies::load_cluster(a.cluster, topologies::ClusterSize{0, raw.world_size});
  calibration::FrameworkInput fw;
  if (!a.framework.empty()) fw = calibration::read_framework(a.framework);
  const auto rev = raw.context.count("git_revision") ? raw.context.at("git_revision") : std::string();
  auto r = calibration::fit_profile(raw, cluster, a.name.empty() ? "twinstep calibrate --suite " + raw.suite : a.name,
                                    rev, fw);
  if (!a.borrow.empty()) {
    const auto taken = calibration::borrow_comm_fields(r, sim::read_profile(a.borrow));
    std::string list;
    for (const auto& t : taken) list += (list.empty() ? "" : ", ") + t;
    r.log.push_back("borrowed from " + a.borrow + ": " +
                    (list.empty() ? "nothing (the raw file measured it all)" : list));
  }
  if (!a.memory.empty()) {
    r.profile.memory_overhead = calibration::read_memory_overhead(a.memory);
    r.json = sim::profile_to_json(r.profile);
    r.log.push_back("memory_overhead: from " + a.memory + " (" + r.profile.memory_overhead.source + ")");
  }
  if (!a.moe_routing.empty()) {
    calibration::fit_moe_routing(calibration::read_moe_routing(a.moe_routing), cluster.node.gpu.hbm_bytes_per_s,
                                 r.profile, r.log);
    r.json = sim::profile_to_json(r.profile);
  }
  write_file_atomic(a.output, r.json);
  std::fprintf(stderr, "twinstep calibrate: fitted %zu measurements (suite %s, %u GPU(s)) -> %s\n",
               raw.measurements.size(), raw.suite.c_str(), raw.world_size, a.output.c_str());
  for (const auto& line : r.log) std::fprintf(stderr, "  %s\n", line.c_str());
}

/// --from-trace: the figures a real step's measured trace covers, on the base profile (calibration/fit_trace.hpp).
void fit_from_trace(const CalibrateArgs& a) {
  const schedule::Trace measured = schedule::read_trace(a.from_trace);
  const auto cluster =
      topologies::load_cluster(a.cluster, topologies::ClusterSize{0, std::max(1u, measured.schedule.world_size)});
  // The base as predict chooses its profile: --profile, else the cluster's, else the GPU's measured default.
  const sim::ProfileChoice base = sim::choose_profile(a.base_profile, cluster);
  for (const auto& w : base.warnings) std::fprintf(stderr, "warning: base profile: %s\n", w.c_str());
  const auto r = calibration::fit_profile_from_trace(
      measured, a.from_trace, cluster, base.profile,
      a.name.empty() ? "twinstep calibrate --from-trace " + a.from_trace : a.name, base.reason);
  write_file_atomic(a.output, r.json);
  std::fprintf(stderr, "twinstep calibrate: fitted from the trace %s (%zu ops, base: %s [%s]) -> %s\n",
               a.from_trace.c_str(), measured.schedule.ops.size(), base.profile.name.c_str(), base.reason.c_str(),
               a.output.c_str());
  for (const auto& line : r.log) std::fprintf(stderr, "  %s\n", line.c_str());
  for (const auto& w : sim::profile_warnings(r.profile, cluster)) std::fprintf(stderr, "warning: %s\n", w.c_str());
}

void calibrate_command(const CalibrateArgs& a) {
  if (!a.from_trace.empty()) {
    if (!a.fit_from.empty()) throw Error("--from-trace and --fit each give what to fit from: use one");
    fit_from_trace(a);
    return;
  }
  if (!a.base_profile.empty()) throw Error("--profile (the base profile) goes with --from-trace only");
  if (!a.fit_from.empty()) {
    fit_and_write(a, calibration::read_raw(a.fit_from));
    return;
  }
#if defined(TWINSTEP_HAVE_BACKEND)
  if (a.steps < 1 || a.warmup < 0) throw Error("--steps must be >= 1 and --warmup >= 0");
  backend::Runtime runtime;
  const auto world = static_cast<std::uint32_t>(runtime.size());
  const auto suite = calibration::make_suite(a.suite, world);
  backend::Options options;
  options.warmup_steps = a.warmup;
  options.steps = a.steps;
  options.timeout_s = 120;
  // Context (GPU, driver, CUDA, NCCL, cuBLAS, hosts, date, revision) from a first run of the smallest group.
  calibration::RunOptions ro;
  ro.raw_path = a.raw.empty() ? a.output + ".raw.jsonl" : a.raw;
  ro.resume = a.resume;
  ro.writer = runtime.rank() == 0;
  {
    const schedule::Trace t = runtime.execute(suite.back().schedule, options);
    ro.context = t.context;
    for (const char* k : {"warmup_steps", "steps", "timing", "clock_alignment", "producer"}) ro.context.erase(k);
  }
  ro.context["command"] = "twinstep calibrate --suite " + a.suite + " --warmup " + std::to_string(a.warmup) +
                          " --steps " + std::to_string(a.steps);
  if (runtime.rank() == 0) {
    ro.progress = [](const std::string& line) {
      std::fprintf(stderr, "calibrate %s\n", line.c_str());
      std::fflush(stderr);
    };
    std::fprintf(stderr, "calibrate: suite %s, %zu groups on %u GPU(s), raw measurements -> %s\n", a.suite.c_str(),
                 suite.size(), world, ro.raw_path.c_str());
  }
  if (runtime.rank() == 0) {
    for (const auto& line : calibration::skipped_groups(world)) std::fprintf(stderr, "calibrate %s\n", line.c_str());
  }
  // The copy-engine group asks for a bare cudaMemcpyPeerAsync (its meta "measure"); every other group is executed.
  const auto run = [&](const schedule::Schedule& s) {
    const auto measure = s.meta.find("measure");
    if (measure != s.meta.end() && measure->second == calibration::kPeerCopyMeasure) {
      return runtime.measure_peer_copies(s);
    }
    return runtime.execute(s, options);
  };
  calibration::run_suite(a.suite, suite, run, ro);
  if (runtime.rank() == 0) fit_and_write(a, calibration::read_raw(ro.raw_path));
#else
  throw Error(
      "this twinstep was built without the CUDA/NCCL backend, so it cannot measure: rebuild with "
      "`cmake -DTWINSTEP_BACKEND=ON` on the GPU machine and run `mpirun -np N twinstep calibrate ...`, or fit an "
      "existing raw file here with `twinstep calibrate --fit RAW.jsonl -o PROFILE`");
#endif
}

}  // namespace

void register_calibrate_command(CLI::App& app) {
  auto a = std::make_shared<CalibrateArgs>();
  CLI::App* sub = app.add_subcommand(
      "calibrate", "Measure microbenchmarks on GPUs (under mpirun) and fit a calibration profile for the simulator");
  sub->add_option("--suite", a->suite, "default (full sweeps, collectives 1 KiB-1 GiB) or quick")
      ->capture_default_str();
  sub->add_option("-o,--output", a->output, "Profile JSON to write (read by predict/simulate --profile)")->required();
  sub->add_option("--raw", a->raw, "Raw measurements, JSON lines (default: OUTPUT.raw.jsonl)");
  sub->add_flag("--resume", a->resume, "Keep the groups already in the raw file and measure the rest");
  sub->add_option("--fit", a->fit_from, "Fit from this raw file only (no GPUs needed)");
  add_input_file(sub, "--from-trace", a->from_trace,
                 "Fit what a real step's measured trace covers (from `twinstep import-trace`; no GPUs needed): "
                 "compute tables per class, host issue cost per op, host_sync wake-up");
  sub->add_option("--profile", a->base_profile,
                  "With --from-trace: the base profile, whose tables the trace's figures anchor and whose other "
                  "figures the result keeps: a JSON path, a shipped id (h100x1, h200x2) or \"datasheet\" (default: "
                  "the measured profile of the cluster's GPU, calibration/profiles/defaults.json, as predict)");
  sub->add_option("--cluster", a->cluster, "Cluster whose GPU peaks the efficiencies refer to")->capture_default_str();
  sub->add_option("--framework", a->framework,
                  "JSON from calibration/scripts/torch_host_overhead.py: the profile's framework section");
  sub->add_option("--memory", a->memory,
                  "JSON from calibration/scripts/torch_memory_overhead.py: the profile's memory_overhead section");
  sub->add_option("--moe-routing", a->moe_routing,
                  "JSON from calibration/scripts/torch_moe_routing.py: op_compute tables of the eager MoE router and "
                  "permute kernels (moe_router_fusion / moe_permute_fusion off)");
  sub->add_option(
      "--borrow", a->borrow,
      "Profile measured on several GPUs of the same NVLink generation: the collective, send/recv and co-run "
      "figures a one-GPU raw file lacks come from it (the context records them)");
  sub->add_option("--name", a->name, "Profile name");
  sub->add_option("--warmup", a->warmup, "Warm-up steps per group")->capture_default_str();
  sub->add_option("--steps", a->steps, "Measured steps per group (per-op medians)")->capture_default_str();
  sub->callback([a] { calibrate_command(*a); });
}

}  // namespace twinstep::cli
