// Sweep throughput: evaluates the same dense points (auto layouts of a model on a cluster) through run_sweep with
// the analytic fidelity and, when SimGrid is built in, the flow fidelity, and prints configurations per second.
// Plain main(); prints figures, asserts nothing. Untimed analytic warm-up passes come first (printed).
// Usage: sweep_bench [model cluster gpus gbs max_points jobs [fidelity,...] [results_dir]]
//   default: llama3-8b h100-superpod 64 256 6 2 analytic,flow
// With results_dir, each fidelity's JSON lines (no timing fields: identical runs give identical bytes) are kept
// there as <fidelity>.jsonl, to compare the results of two builds with diff.
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "common/error.hpp"
#include "sweep/grid.hpp"
#include "sweep/runner.hpp"

using namespace twinstep;

namespace {

/// Untimed analytic passes before the timed ones (see main).
constexpr int kWarmupPasses = 3;

/// User + system CPU seconds of this process and of its reaped children (the sweep's forked workers).
double cpu_seconds() {
  double total = 0;
  for (int who : {RUSAGE_SELF, RUSAGE_CHILDREN}) {
    rusage u{};
    ::getrusage(who, &u);
    total += static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
             1e-6 * static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec);
  }
  return total;
}

}  // namespace

int main(int argc, char** argv) {
  std::string model = "llama3-8b", cluster = "h100-superpod", fidelities = "analytic,flow", results_dir;
  std::uint32_t gpus = 64, gbs = 256;
  std::size_t max_points = 6;
  unsigned jobs = 2;
  if (argc >= 7) {
    model = argv[1];
    cluster = argv[2];
    gpus = static_cast<std::uint32_t>(std::atoi(argv[3]));
    gbs = static_cast<std::uint32_t>(std::atoi(argv[4]));
    max_points = static_cast<std::size_t>(std::atoi(argv[5]));
    jobs = static_cast<unsigned>(std::atoi(argv[6]));
    if (argc >= 8) fidelities = argv[7];
    if (argc >= 9) results_dir = argv[8];
  } else if (argc != 1) {
    std::fprintf(stderr, "usage: sweep_bench [model cluster gpus gbs max_points jobs [fidelity,...] [results_dir]]\n");
    return 2;
  }
  try {
    sweep::Spec spec;
    spec.models = {model};
    spec.clusters = {cluster};
    spec.gpus = {gpus};
    spec.gbs = {gbs};
    spec.auto_layout = true;
    spec.overlaps = {models::OverlapVariant{}};  // none
    std::vector<sweep::Point> base;
    for (const auto& p : sweep::expand(spec)) {
      // Valid layouts without interleaving or CP: the plain dense configurations.
      if (p.invalid_reason.empty() && p.layout.vpp == 1 && p.layout.cp == 1 && base.size() < max_points)
        base.push_back(p);
    }
    std::printf("sweep_bench: %s on %u GPUs of %s, gbs %u: %zu layouts, %u jobs, %ld cores online\n", model.c_str(),
                gpus, cluster.c_str(), gbs, base.size(), jobs, ::sysconf(_SC_NPROCESSORS_ONLN));
    const auto dir = std::filesystem::temp_directory_path() / ("twinstep_sweep_bench_" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir);
    {
      // Analytic passes first, reported but not the figure: on the machines we measure on, the first ~0.3 s of work
      // after an idle spell runs up to ~50 % slower whatever the build (docs/performance.md); a sweep of thousands of
      // points runs past that. The timed passes below start fresh workers, as any sweep does.
      std::vector<sweep::Point> points = base;
      for (auto& p : points) p.fidelity = sim::Fidelity::kAnalytic;
      sweep::RunOptions opts;
      opts.output = (dir / "warmup.jsonl").string();
      opts.jobs = jobs;
      opts.progress = false;
      for (int pass = 0; pass < kWarmupPasses; ++pass) {
        std::filesystem::remove(opts.output);
        const double cpu0 = cpu_seconds();
        (void)sweep::run_sweep(points, opts);
        std::printf("  warm-up pass %d: analytic, %.1f ms CPU per point (not the figure)\n", pass + 1,
                    1e3 * (cpu_seconds() - cpu0) / static_cast<double>(std::max<std::size_t>(1, points.size())));
      }
    }
    for (const sim::Fidelity mode : sweep::split_modes(fidelities, "fidelity", sim::parse_fidelity)) {
      const std::string fidelity = to_string(mode);
      std::vector<sweep::Point> points = base;
      for (auto& p : points) p.fidelity = mode;
      sweep::RunOptions opts;
      opts.output = (dir / (fidelity + ".jsonl")).string();
      opts.jobs = jobs;
      opts.progress = false;
      const double cpu0 = cpu_seconds();
      const auto t0 = std::chrono::steady_clock::now();
      const auto results = sweep::run_sweep(points, opts);
      const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      const double cpu = cpu_seconds() - cpu0;
      std::size_t ok = 0;
      for (const auto& r : results) ok += r.status == sweep::PointStatus::kOk;
      // CPU seconds (this process and its workers) do not depend on what else runs on the machine; per 2 cores
      // they bound the rate from above.
      std::printf(
          "  %-8s %zu points (%zu ok) in %.2f s wall: %.3f configurations/s; %.2f CPU s, %.1f ms CPU per point "
          "(%.1f configurations/s on 2 idle cores)\n",
          fidelity.c_str(), points.size(), ok, wall, static_cast<double>(points.size()) / wall, cpu,
          1e3 * cpu / static_cast<double>(points.size()), 2.0 * static_cast<double>(points.size()) / cpu);
      if (!results_dir.empty()) {
        std::filesystem::create_directories(results_dir);
        std::filesystem::copy_file(opts.output, std::filesystem::path(results_dir) / (fidelity + ".jsonl"),
                                   std::filesystem::copy_options::overwrite_existing);
      }
      for (const auto& r : results) {
        std::printf("    %-32s %-12s %s\n", r.point.layout.describe().c_str(), sweep::to_string(r.status).c_str(),
                    r.status == sweep::PointStatus::kOk ? std::to_string(r.step_time_s).c_str()
                                                        : r.reason.substr(0, 90).c_str());
      }
    }
    std::filesystem::remove_all(dir);
  } catch (const Error& e) {
    std::fprintf(stderr, "sweep_bench: %s\n", e.what());
    return 2;
  }
  return 0;
}
