// Simulator scale benchmark (issue 6): predicts one training step per case with each fidelity through
// evaluate::evaluate (the path of predict and sweep, with its symmetry reduction: sim::reduction_policy), each case
// in a forked child so that its peak RSS is its own (flow runs SimGrid in a grandchild: both RSS figures shown).
// Prints wall time (lower / simulate / analyze, evaluate::Phases), peak RSS (getrusage) and simulated ops per
// second. Asserts nothing.
// Usage: scale_bench [case...]   cases: llama405b-16k, qwen3-30b-ep16, deepseek-v3-1k (default: all)
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "common/error.hpp"
#include "evaluate/evaluate.hpp"
#include "models/model_spec.hpp"
#include "models/recipe.hpp"
#include "sim/simulate.hpp"
#include "topologies/cluster.hpp"

using namespace twinstep;
using Clock = std::chrono::steady_clock;

namespace {

struct Case {
  std::string name, model, cluster;
  std::uint32_t nodes, tp, pp, ep, gbs, seq, vpp;
};

double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

void run_case(const Case& c, sim::Fidelity fidelity) {
  const auto t0 = Clock::now();
  const auto cluster = topologies::load_cluster(c.cluster, {c.nodes, 0});
  const sim::CostModel costs(cluster, sim::Profile::datasheet_defaults());
  models::RunConfig cfg;
  cfg.world_size = cluster.num_gpus();
  cfg.tensor_model_parallel_size = c.tp;
  cfg.pipeline_model_parallel_size = c.pp;
  cfg.expert_model_parallel_size = c.ep;
  if (c.vpp > 1) cfg.virtual_pipeline_model_parallel_size = c.vpp;
  cfg.micro_batch_size = 1;
  cfg.global_batch_size = c.gbs;
  cfg.seq_length = c.seq;
  cfg.overlap_grad_reduce = true;
  cfg.overlap_param_gather = true;
  cfg.gpu_memory_bytes = cluster.node.gpu.hbm_capacity_bytes;
  cfg.cuda_device_max_connections = 1;  // every case of this bench has TP > 1 or is measured as before
  (void)models::apply_recipe_defaults(cfg, {"global_batch_size", "cuda_device_max_connections"});
  // 126 layers on pp=16: Megatron's embedding/loss accounting makes 128 slots (the 405B recipe).
  cfg.account_for_embedding_in_pipeline_split = c.model == "llama3.1-405b";
  cfg.account_for_loss_in_pipeline_split = c.model == "llama3.1-405b";
  evaluate::Phases ph;
  evaluate::Options o;
  o.fidelity = fidelity;
  o.phases = &ph;
  const evaluate::Result r = evaluate::evaluate(models::load_model(c.model), cluster, costs, cfg, o);
  const double wall = since(t0);
  const std::size_t ops = ph.ops, ranks = ph.ranks;
  rusage self{}, kids{};
  getrusage(RUSAGE_SELF, &self);
  getrusage(RUSAGE_CHILDREN, &kids);
  std::printf(
      "%-16s %-8s %6u GPUs, %5zu ranks simulated, %8zu ops | wall %6.2f s (lower %.2f, simulate %.2f, "
      "analyze %.2f) | peak RSS %4ld MB (sim child %4ld MB) | %5.2f M ops/s | step %.3f s, MFU %.1f%%\n",
      c.name.c_str(), to_string(fidelity).c_str(), cluster.num_gpus(), ranks, ops, wall, ph.lower_s, ph.simulate_s,
      ph.analyze_s, self.ru_maxrss / 1024, kids.ru_maxrss / 1024, static_cast<double>(ops) / ph.simulate_s / 1e6,
      r.step_s, 100.0 * r.mfu);
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<Case> cases{
      {"llama405b-16k", "llama3.1-405b", "h100-superpod", 2048, 8, 16, 1, 2048, 8192, 1},
      {"qwen3-30b-ep16", "qwen3-30b-a3b", "dgx-h100", 2, 1, 1, 16, 256, 4096, 1},
      {"deepseek-v3-1k", "deepseek-v3", "h100-superpod", 128, 1, 1, 64, 1024, 4096, 1},
  };
  std::vector<std::string> want(argv + 1, argv + argc);
  std::vector<sim::Fidelity> fids{sim::Fidelity::kAnalytic};
  if (sim::flow_model_available()) fids.push_back(sim::Fidelity::kFlow);
  for (const auto& c : cases) {
    if (!want.empty() && std::find(want.begin(), want.end(), c.name) == want.end()) continue;
    for (const auto& f : fids) {
      std::fflush(stdout);
      const pid_t pid = fork();
      if (pid == 0) {
        try {
          run_case(c, f);
        } catch (const std::exception& e) {
          std::printf("%-16s %-8s error: %s\n", c.name.c_str(), to_string(f).c_str(), e.what());
        }
        std::fflush(stdout);
        _exit(0);
      }
      int st = 0;
      waitpid(pid, &st, 0);
    }
  }
  return 0;
}
