// GEMM throughput through the backend's GEMM path (cuBLAS, row-major C[m,n] = A[m,k] B[k,n], fp32 accumulate):
// per shape a schedule of `iters` GEMMs on one stream. A first step estimates the GEMM time; then the shape runs
// back to back for at least --warmup-ms (warm-up steps, so the GPU clock and power state are those of sustained
// GEMM work, not of the idle gap before) and --steps measured steps. time = median over the ops of their per-op
// cudaEvent durations (each already the median over the measured steps); TFLOP/s = 2mnk / time.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "backend/executor.hpp"
#include "bench/backend/bench_util.hpp"
#include "schedule/builder.hpp"

namespace sch = twinstep::schedule;
namespace be = twinstep::backend;

int main(int argc, char** argv) {
  CLI::App app{"bf16 or fp8 GEMM TFLOP/s through the twinstep backend"};
  int iters = 20;
  int steps = 10;
  double warmup_ms = 1000;
  std::string out = "gemm_sweep.json";
  std::vector<std::string> shapes{"4096x4096x4096", "8192x8192x8192",  "16384x2048x2048",
                                  "4096x768x2048",  "2048x2048x768",   "4096x5120x8192",
                                  "4096x8192x4096", "4096x28672x8192", "4096x8192x14336"};
  app.add_option("-n", iters, "GEMMs per step");
  app.add_option("--steps", steps, "measured steps per shape");
  app.add_option("--warmup-ms", warmup_ms, "back-to-back GEMMs of the shape before measuring, in ms");
  app.add_option("-s,--shapes", shapes, "MxNxK shapes");
  std::string dtype = "bf16", a_format = "e4m3";
  app.add_option("--dtype", dtype, "bf16 | fp8 (cuBLASLt, B stored [n,k], bf16 output, gemm_fp8.hpp)")
      ->check(CLI::IsMember({"bf16", "fp8"}));
  app.add_option("--a-format", a_format, "fp8 format of A: e4m3 (forward, fast accumulation) | e5m2 (a gradient)")
      ->check(CLI::IsMember({"e4m3", "e5m2"}));
  app.add_option("-o", out, "JSON output");
  CLI11_PARSE(app, argc, argv);

  be::Runtime rt(be::ProcessGroup::kSelf);
  nlohmann::json doc;
  bool first = true;
  std::printf("%-20s %10s %10s %8s\n", "shape (MxNxK)", "time_us", "TFLOP/s", "warm-up");
  for (const auto& shape : shapes) {
    unsigned long long m = 0, n = 0, k = 0;
    if (std::sscanf(shape.c_str(), "%llux%llux%llu", &m, &n, &k) != 3) {
      std::fprintf(stderr, "bad shape %s (want MxNxK)\n", shape.c_str());
      return 2;
    }
    twinstep::schedule::ScheduleBuilder b(1, {{"compute", 0}}, "gemm_sweep");
    for (int i = 0; i < iters; ++i) {
      sch::Gemm g{m, n, k, 1, dtype == "fp8" ? sch::DType::kFP8 : sch::DType::kBF16};
      if (a_format == "e5m2") g.a_format = sch::Fp8Format::kE5M2;
      b.add(0, "gemm." + shape + "." + std::to_string(i), 0, sch::Compute{g, 0});
    }
    const sch::Schedule& s = b.schedule();
    be::Options probe;
    probe.warmup_steps = 1;
    probe.steps = 1;
    const double t_est = twinstep::median(twinstep::bench::op_durations_s(rt.execute(s, probe), 0));
    be::Options o;
    o.warmup_steps =
        static_cast<int>(std::clamp(std::ceil(warmup_ms * 1e-3 / std::max(1e-9, t_est * iters)), 1.0, 10000.0));
    o.steps = std::max(1, steps);
    const auto trace = rt.execute(s, o);
    if (first) {
      doc = twinstep::bench::envelope("gemm_sweep", trace.context, twinstep::bench::command_line(argc, argv));
      doc["protocol"] =
          "per shape: >= warmup_ms of back-to-back GEMMs of the shape (warm-up steps of n), then `steps` measured "
          "steps of n back-to-back GEMMs; time = median over the n ops of the per-op cudaEvent duration (median "
          "over the steps); bf16 in/out (fp8: A and B fp8 read as the same fill bytes, bf16 out), fp32 accumulate; "
          "inputs: random sign, magnitude in [2^-7, 2)";
      doc["dtype"] = dtype;
      if (dtype == "fp8") doc["a_format"] = a_format;
      doc["iters"] = iters;
      doc["steps"] = steps;
      doc["warmup_ms"] = warmup_ms;
      first = false;
    }
    const double t = twinstep::median(twinstep::bench::op_durations_s(trace, 0));
    const double tflops = 2.0 * static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k) / t / 1e12;
    std::printf("%-20s %10.2f %10.1f %8d\n", shape.c_str(), t * 1e6, tflops, o.warmup_steps);
    doc["results"].push_back({{"m", m},
                              {"n", n},
                              {"k", k},
                              {"dtype", dtype},
                              {"time_us", t * 1e6},
                              {"tflops", tflops},
                              {"warmup_steps", o.warmup_steps}});
  }
  twinstep::write_file_atomic(out, doc.dump(2) + "\n");
  return 0;
}
