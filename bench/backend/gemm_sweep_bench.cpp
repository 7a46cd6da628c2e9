// GEMM throughput through the backend's GEMM path (cuBLAS, row-major C[m,n] = A[m,k] B[k,n], fp32 accumulate):
// per shape a schedule of `iters` GEMMs on one stream, one warm-up step, one measured step; time = median per-op
// cudaEvent duration; TFLOP/s = 2mnk / time.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <string>
#include <vector>

#include "backend/executor.hpp"
#include "bench/backend/bench_util.hpp"

namespace sch = twinstep::schedule;
namespace be = twinstep::backend;

int main(int argc, char** argv) {
  CLI::App app{"bf16 GEMM TFLOP/s through the twinstep backend"};
  int iters = 20;
  std::string out = "gemm_sweep.json";
  std::vector<std::string> shapes{"4096x4096x4096", "8192x8192x8192",  "16384x2048x2048",
                                  "4096x768x2048",  "2048x2048x768",   "4096x5120x8192",
                                  "4096x8192x4096", "4096x28672x8192", "4096x8192x14336"};
  app.add_option("-n", iters, "timed GEMMs per shape (the warm-up step runs as many)");
  app.add_option("-s,--shapes", shapes, "MxNxK shapes");
  app.add_option("-o", out, "JSON output");
  CLI11_PARSE(app, argc, argv);

  be::Runtime rt(be::ProcessGroup::kSelf);
  nlohmann::json doc;
  bool first = true;
  std::printf("%-20s %10s %10s\n", "shape (MxNxK)", "time_us", "TFLOP/s");
  for (const auto& shape : shapes) {
    unsigned long long m = 0, n = 0, k = 0;
    if (std::sscanf(shape.c_str(), "%llux%llux%llu", &m, &n, &k) != 3) {
      std::fprintf(stderr, "bad shape %s (want MxNxK)\n", shape.c_str());
      return 2;
    }
    sch::Schedule s;
    s.name = "gemm_sweep";
    s.world_size = 1;
    s.ranks = {0};
    s.streams = {{"compute", 0}};
    for (int i = 0; i < iters; ++i) {
      sch::Op op;
      op.id = static_cast<sch::OpId>(i);
      op.name = "gemm." + shape + "." + std::to_string(i);
      op.body = sch::Compute{sch::Gemm{m, n, k, 1, sch::DType::kBF16}, 0};
      s.ops.push_back(op);
    }
    be::Options o;
    o.warmup_steps = 1;
    o.steps = 1;
    const auto trace = rt.execute(s, o);
    if (first) {
      doc = twinstep::bench::envelope("gemm_sweep", trace.context, twinstep::bench::command_line(argc, argv));
      doc["protocol"] =
          "per shape: one warm-up step of n GEMMs, one measured step of n back-to-back GEMMs; time = "
          "median per-op cudaEvent duration; bf16 in/out, fp32 accumulate";
      doc["iters"] = iters;
      first = false;
    }
    const double t = twinstep::bench::median_of(twinstep::bench::op_durations_s(trace, 0));
    const double tflops = 2.0 * static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k) / t / 1e12;
    std::printf("%-20s %10.2f %10.1f\n", shape.c_str(), t * 1e6, tflops);
    doc["results"].push_back(
        {{"m", m}, {"n", n}, {"k", k}, {"dtype", "bf16"}, {"time_us", t * 1e6}, {"tflops", tflops}});
  }
  twinstep::write_file_atomic(out, doc.dump(2) + "\n");
  return 0;
}
