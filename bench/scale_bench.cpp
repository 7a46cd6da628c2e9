// Simulator scale benchmark (issues 6 and 18): predicts one training step of one case at one fidelity through the
// one evaluation path of `twinstep predict` (evaluate::evaluate: lowering with sim::reduction_policy, simulation,
// analysis) and prints wall time and peak RSS (getrusage: this process, and the forked child that runs a flow
// simulation). One case per invocation, so that a case stopped by `timeout` or `ulimit -v` loses no other
// (bench/scripts/scale_cases.sh runs them all; bench/results/scale.md has the figures). Asserts nothing.
// Usage: scale_bench CASE [analytic|flow]    (no argument: lists the cases)
#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include "evaluate/evaluate.hpp"
#include "models/recipe.hpp"
#include "sim/simulate.hpp"
#include "topologies/cluster.hpp"

using namespace twinstep;
using Clock = std::chrono::steady_clock;

namespace {

struct Case {
  std::string name, model, cluster;  ///< model: a zoo id or a file under bench/models/.
  std::uint32_t gpus, tp, pp, vpp, cp, ep, etp, gbs, seq;
  bool account_embedding_loss;  ///< Megatron's embedding/loss slots in the pipeline split (126 or 94 layers).
  std::string what;             ///< The case as issue 18's table names it.
};

const std::vector<Case>& cases() {
  static const std::vector<Case> all{
      {"llama70b-64", "llama3-70b", "h100-superpod", 64, 2, 4, 2, 4, 1, 0, 512, 8192, false,
       "Llama-3-70B, 64 H100, TP2 PP4 VPP2 CP4, GBS 512, seq 8192"},
      {"llama405b-512", "llama3.1-405b", "h100-superpod", 512, 8, 8, 8, 2, 1, 0, 2048, 8192, true,
       "Llama-3.1-405B, 512 H100, TP8 PP8 VPP8 CP2, GBS 2048, seq 8192"},
      {"gpt3-1t-512", "bench/models/gpt3-1t.json", "a100-superpod", 512, 8, 64, 1, 1, 1, 0, 512, 2048, false,
       "GPT-3 1T-class (128 layers, hidden 25600), 512 A100, TP8 PP64, GBS 512, seq 2048"},
      {"qwen235b-256", "bench/models/qwen3-235b-a22b.json", "h100-superpod", 256, 2, 8, 4, 1, 32, 1, 1024, 4096, true,
       "Qwen3-235B-A22B, 256 H100, TP2 PP8 VPP4 EP32 (expert TP 1), GBS 1024, seq 4096"},
      {"llama405b-16k", "llama3.1-405b", "h100-superpod", 16384, 8, 16, 1, 1, 1, 0, 2048, 8192, true,
       "Llama-3.1-405B, 16,384 H100, TP8 PP16, GBS 2048, seq 8192"},
      {"qwen3-30b-ep16", "qwen3-30b-a3b", "dgx-h100", 16, 1, 1, 1, 1, 16, 0, 256, 4096, false,
       "Qwen3-30B-A3B, 16 H100, EP16, GBS 256, seq 4096"},
      {"deepseek-v3-1k", "deepseek-v3", "h100-superpod", 1024, 1, 1, 1, 1, 64, 0, 1024, 4096, false,
       "DeepSeek-V3, 1,024 H100, EP64, GBS 1024, seq 4096"},
  };
  return all;
}

double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

/// Peak RSS in MB of this process and of its largest reaped child (the flow simulation), and the CPU seconds (user +
/// system) of both: on a shared machine the CPU time is the steadier figure.
struct Usage {
  long self_mb = 0, child_mb = 0;
  double cpu_s = 0;
};
Usage usage() {
  rusage self{}, kids{};
  getrusage(RUSAGE_SELF, &self);
  getrusage(RUSAGE_CHILDREN, &kids);
  double cpu = 0;
  for (const rusage* u : {&self, &kids}) {
    cpu += static_cast<double>(u->ru_utime.tv_sec + u->ru_stime.tv_sec) +
           1e-6 * static_cast<double>(u->ru_utime.tv_usec + u->ru_stime.tv_usec);
  }
  return {self.ru_maxrss / 1024, kids.ru_maxrss / 1024, cpu};
}

std::string model_path(const std::string& m) {
  return m.rfind("bench/", 0) == 0 ? std::string(TWINSTEP_SOURCE_DIR) + "/" + m : m;
}

int run_case(const Case& c, sim::Fidelity fidelity) {
  const auto t0 = Clock::now();
  const auto cluster = topologies::load_cluster(c.cluster, {0, c.gpus});
  const sim::CostModel costs(cluster, sim::Profile::datasheet_defaults());
  models::RunConfig cfg;
  cfg.world_size = cluster.num_gpus();
  cfg.tensor_model_parallel_size = c.tp;
  cfg.pipeline_model_parallel_size = c.pp;
  if (c.vpp > 1) cfg.virtual_pipeline_model_parallel_size = c.vpp;
  cfg.context_parallel_size = c.cp;
  cfg.expert_model_parallel_size = c.ep;
  cfg.expert_tensor_parallel_size = c.etp;
  cfg.micro_batch_size = 1;
  cfg.global_batch_size = c.gbs;
  cfg.seq_length = c.seq;
  cfg.overlap_grad_reduce = true;
  cfg.overlap_param_gather = true;
  cfg.gpu_memory_bytes = cluster.node.gpu.hbm_capacity_bytes;
  cfg.account_for_embedding_in_pipeline_split = c.account_embedding_loss;
  cfg.account_for_loss_in_pipeline_split = c.account_embedding_loss;
  (void)models::apply_recipe_defaults(cfg, {"global_batch_size"});
  evaluate::Options opts;
  opts.fidelity = fidelity;
  opts.check_size = false;  // measure the simulation itself, not predict's size refusal
  const evaluate::Result r = evaluate::evaluate(models::load_model(model_path(c.model)), cluster, costs, cfg, opts);
  const double wall = since(t0);
  const Usage u = usage();
  std::printf(
      "%-15s %-8s %6u GPUs | wall %7.2f s, CPU %7.2f s | peak RSS %5ld MB (flow child %5ld MB) | step %.4f s, MFU "
      "%.1f%%\n",
      c.name.c_str(), to_string(fidelity).c_str(), c.gpus, wall, u.cpu_s, u.self_mb, u.child_mb, r.step_s,
      100.0 * r.mfu);
  for (const auto& n : r.sim.notes) std::printf("  note: %s\n", n.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || argc > 3) {
    std::printf("usage: scale_bench CASE [analytic|flow]\ncases:\n");
    for (const auto& c : cases()) std::printf("  %-15s %s\n", c.name.c_str(), c.what.c_str());
    return argc == 1 ? 0 : 2;
  }
  const std::string name = argv[1];
  const std::string fidelity_name = argc == 3 ? argv[2] : "analytic";
  for (const auto& c : cases()) {
    if (c.name != name) continue;
    const auto t0 = Clock::now();
    try {
      return run_case(c, sim::parse_fidelity(fidelity_name, "FIDELITY"));
    } catch (const std::exception& e) {  // std::bad_alloc under `ulimit -v` included
      const Usage u = usage();
      std::printf(
          "%-15s %-8s %6u GPUs | failed after %.2f s, CPU %.2f s | peak RSS %5ld MB (flow child %5ld MB) | %s\n",
          c.name.c_str(), fidelity_name.c_str(), c.gpus, since(t0), u.cpu_s, u.self_mb, u.child_mb, e.what());
      return 1;
    }
  }
  std::fprintf(stderr, "scale_bench: unknown case \"%s\" (no argument lists them)\n", name.c_str());
  return 2;
}
