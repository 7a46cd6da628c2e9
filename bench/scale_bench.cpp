// Simulator scale benchmark (issue 6): lowers and predicts one training step per case with each fidelity, each case
// in a forked child so that its peak RSS is its own (flow runs SimGrid in a grandchild: both RSS figures shown).
// Prints wall time (lower / simulate / analyze), peak RSS (getrusage) and simulated ops per second. Asserts nothing.
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
#include "models/lower.hpp"
#include "models/recipe.hpp"
#include "schedule/analysis.hpp"
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
  models::LowerOptions lo;
  lo.representatives_only = cluster.num_gpus() > 512;
  models::Lowered lowered = models::lower(models::load_model(c.model), cfg, lo);
  const double t_lower = since(t0);
  const std::size_t ops = lowered.schedule.ops.size(), ranks = lowered.schedule.ranks.size();
  auto t1 = Clock::now();
  sim::Options o;
  o.fidelity = fidelity;
  const schedule::Trace trace = sim::simulate(std::move(lowered.schedule), cluster, costs, o);
  const double t_sim = since(t1);
  t1 = Clock::now();
  const auto b = schedule::analyze(trace);
  const double t_an = since(t1);
  const double wall = since(t0);
  rusage self{}, kids{};
  getrusage(RUSAGE_SELF, &self);
  getrusage(RUSAGE_CHILDREN, &kids);
  std::printf(
      "%-16s %-8s %6u GPUs, %5zu ranks simulated, %8zu ops | wall %6.2f s (lower %.2f, simulate %.2f, "
      "analyze %.2f) | peak RSS %4ld MB (sim child %4ld MB) | %5.2f M ops/s | step %.3f s, MFU %.1f%%\n",
      c.name.c_str(), to_string(fidelity).c_str(), cluster.num_gpus(), ranks, ops, wall, t_lower, t_sim, t_an,
      self.ru_maxrss / 1024, kids.ru_maxrss / 1024, static_cast<double>(ops) / t_sim / 1e6, b.step_time_s,
      100.0 * lowered.model_flops_per_step /
          (b.step_time_s * cluster.num_gpus() * cluster.node.gpu.peak_flop_per_s(cfg.dtype)));
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
