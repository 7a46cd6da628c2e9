// Attention forward and backward through the backend (the kernel attention_kernel() picks: cuDNN's fused
// attention where built, else GEMM + softmax), the side-by-side partner of calibration/scripts/torch_attention.py
// (torch.nn.functional.scaled_dot_product_attention on the same shapes). Per sequence length a schedule of `n`
// forward + backward pairs on one stream (each backward reads the O and statistics its forward wrote, as in
// training), run back to back for at least --warmup-ms before --steps measured steps. time = median over the ops
// of their per-op cudaEvent durations; TFLOP/s counts the causal half of the score GEMMs (2 forward, 5 backward:
// the scores are recomputed), the convention FlashAttention and torch's benchmarks use.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <string>
#include <vector>

#include "backend/executor.hpp"
#include "bench/backend/bench_util.hpp"
#include "schedule/builder.hpp"

namespace sch = twinstep::schedule;
namespace be = twinstep::backend;

int main(int argc, char** argv) {
  CLI::App app{"attention forward/backward time through the twinstep backend"};
  int pairs = 5;
  int steps = 10;
  double warmup_ms = 1000;
  std::uint64_t batch = 1, heads_q = 32, heads_kv = 8, head_dim = 128;
  bool full = false;
  std::string out = "attention_bench.json";
  std::vector<std::uint64_t> seqs{1024, 2048, 4096, 8192, 16384, 32768};
  app.add_option("-n", pairs, "forward + backward pairs per step");
  app.add_option("--steps", steps, "measured steps per sequence length");
  app.add_option("--warmup-ms", warmup_ms, "back-to-back runs of the shape before measuring, in ms");
  app.add_option("--seq", seqs, "sequence lengths");
  app.add_option("--batch", batch, "sequences per micro-batch");
  app.add_option("--heads-q", heads_q, "query heads");
  app.add_option("--heads-kv", heads_kv, "key/value heads (grouped-query attention)");
  app.add_option("--head-dim", head_dim, "head dimension");
  app.add_flag("--full", full, "no causal mask");
  app.add_option("-o", out, "JSON output");
  CLI11_PARSE(app, argc, argv);

  be::Runtime rt(be::ProcessGroup::kSelf);
  nlohmann::json doc;
  bool first = true;
  std::printf("%8s %10s %10s %12s %10s %10s %16s\n", "seq", "fwd_ms", "bwd_ms", "fwd+bwd_ms", "fwd_TF/s", "bwd_TF/s",
              "kernel");
  for (const std::uint64_t seq : seqs) {
    twinstep::schedule::ScheduleBuilder b(1, {{"compute", 0}}, "attention_bench");
    for (int i = 0; i < 2 * pairs; ++i) {
      const bool bwd = i % 2 == 1;
      b.add(
          0, std::string(bwd ? "bwd." : "fwd.") + std::to_string(seq) + "." + std::to_string(i / 2), 0,
          sch::Compute{sch::Attention{batch, heads_q, heads_kv, seq, seq, head_dim, !full, bwd, sch::DType::kBF16}, 0});
    }
    const sch::Schedule& s = b.schedule();
    be::Options probe;
    probe.warmup_steps = 1;
    probe.steps = 1;
    const auto t0 = rt.execute(s, probe);
    double step_s = 0;
    for (const double d : twinstep::bench::op_durations_s(t0, 0)) step_s += d;
    be::Options o;
    o.steps = steps;
    o.warmup_steps = std::max(1, static_cast<int>(warmup_ms * 1e-3 / std::max(step_s, 1e-6)));
    const auto trace = rt.execute(s, o);
    std::vector<double> fwd, bwd;
    for (const auto& r : trace.records) {
      (r.op % 2 == 0 ? fwd : bwd).push_back(static_cast<double>(r.end_ns - r.start_ns) * 1e-9);
    }
    const double tf = twinstep::median(fwd), tb = twinstep::median(bwd);
    const double gemm = 2.0 * static_cast<double>(batch * heads_q * seq * seq * head_dim) * (full ? 1.0 : 0.5);
    const std::string kernel = trace.context.count("attention_kernel") ? trace.context.at("attention_kernel") : "";
    std::printf("%8llu %10.3f %10.3f %12.3f %10.1f %10.1f %16s\n", static_cast<unsigned long long>(seq), tf * 1e3,
                tb * 1e3, (tf + tb) * 1e3, 2 * gemm / tf / 1e12, 5 * gemm / tb / 1e12, kernel.c_str());
    if (first) {
      doc = twinstep::bench::envelope("attention_bench", trace.context, twinstep::bench::command_line(argc, argv));
      first = false;
    }
    doc["results"].push_back({{"seq", seq},
                              {"batch", batch},
                              {"heads_q", heads_q},
                              {"heads_kv", heads_kv},
                              {"head_dim", head_dim},
                              {"causal", !full},
                              {"fwd_ms", tf * 1e3},
                              {"bwd_ms", tb * 1e3},
                              {"fwd_bwd_ms", (tf + tb) * 1e3},
                              {"fwd_tflops", 2 * gemm / tf / 1e12},
                              {"bwd_tflops", 5 * gemm / tb / 1e12},
                              {"attention_kernel", kernel},
                              {"warmup_steps", o.warmup_steps}});
  }
  twinstep::write_file_atomic(out, doc.dump(2) + "\n");
  std::printf("wrote %s\n", out.c_str());
  return 0;
}
