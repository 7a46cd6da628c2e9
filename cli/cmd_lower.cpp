// `twinstep lower`: model x run config -> one training step as a schedule JSON, with an optional summary
// (ops per kind, bytes per communicator kind, FLOPs, memory per rank and the fit verdict, gating warnings).
#include <cstdio>
#include <map>
#include <memory>
#include <string>

#include "cli/commands.hpp"
#include "cli/run_flags.hpp"
#include "common/error.hpp"
#include "common/units.hpp"
#include "models/lower.hpp"
#include "schedule/json.hpp"
#include "schedule/kernel_math.hpp"
#include "sim/profile_choice.hpp"

namespace twinstep::cli {
namespace {

struct LowerArgs {
  RunFlags run;
  std::uint32_t gpus = 0;
  double gpu_memory_gib = 0;
  std::string output;
  std::string profile;
  bool summary = false;
  bool representatives = false;
  bool per_tp_group = false;
};

void print_summary(const models::Lowered& low, const std::string& host_costs) {
  const schedule::Schedule& s = low.schedule;
  std::map<std::string, std::size_t> kinds;
  std::map<std::string, double> comm_bytes;
  double flops = 0;
  for (const auto& op : s.ops) {
    std::string kind = schedule::kind_name(op.body);
    if (const auto* c = std::get_if<schedule::Compute>(&op.body))
      kind += "/" + std::string(schedule::kernel_class(c->kernel));
    ++kinds[kind];
    flops += schedule::op_flops(op);
    if (const auto* c = std::get_if<schedule::Collective>(&op.body)) {
      comm_bytes[s.communicators[c->comm].kind + " " + schedule::collective_name(c->kind)] +=
          static_cast<double>(c->bytes);
    } else if (const auto* snd = std::get_if<schedule::Send>(&op.body)) {
      comm_bytes[s.communicators[snd->comm].kind + " send"] += static_cast<double>(snd->bytes);
    }
  }
  std::printf("schedule %s: %zu ranks, %zu ops, %zu streams, %zu communicators\n", s.name.c_str(), s.ranks.size(),
              s.ops.size(), s.streams.size(), s.communicators.size());
  std::printf("ops per kind:\n");
  for (const auto& [k, n] : kinds) std::printf("  %-28s %zu\n", k.c_str(), n);
  std::printf("bytes per communicator kind (all ranks, per step):\n");
  for (const auto& [k, b] : comm_bytes) std::printf("  %-28s %s\n", k.c_str(), format_bytes(b).c_str());
  std::printf("FLOPs per step: %.4g in the schedule (recompute included), model FLOPs %.4g (6*N*tokens + attention)\n",
              flops, low.model_flops_per_step);
  std::printf("%s", models::memory_breakdown_text(low.peak_memory).c_str());
  std::size_t host_ops = 0;
  Nanos host_ns = 0;
  for (const auto& op : s.ops) {
    if (const auto* h = std::get_if<schedule::Host>(&op.body)) {
      ++host_ops;
      host_ns += h->duration_ns;
    }
  }
  std::printf("host costs: %s\n", host_costs.c_str());
  std::printf("host ops: %zu, %s of host time in all\n", host_ops, format_seconds(to_seconds(host_ns)).c_str());
  for (const auto& w : low.warnings) std::printf("warning: %s\n", w.c_str());
}

}  // namespace

void register_model_commands(CLI::App& app) {
  auto args = std::make_shared<LowerArgs>();
  CLI::App* sub = app.add_subcommand("lower", "lower a model and run config to one training step as a schedule");
  add_run_flags(*sub, args->run);
  sub->add_option("--gpus", args->gpus, "world size (GPUs); default: the config's world_size");
  sub->add_option("--gpu-memory-gib", args->gpu_memory_gib, "GPU memory for the fit verdict (default 80 GiB)");
  sub->add_option("-o,--output", args->output, "schedule JSON to write ('-' for stdout)")->required();
  sub->add_option("--profile", args->profile,
                  "calibration profile JSON: host costs (per kernel launch, per module call) from its framework "
                  "section; --event-record-ns, --ep-node-ns, ... override");
  sub->add_flag("--summary", args->summary, "print ops per kind, bytes per communicator, FLOPs, memory, warnings");
  sub->add_flag("--representatives", args->representatives,
                "emit only the representative ranks (data-parallel index 0); communicators keep all members");
  sub->add_flag("--per-tp-group", args->per_tp_group,
                "with --representatives: TP rank 0 only (TP ranks mirror too; sends and recvs to absent peers "
                "pair on the rank itself; simulate with --fidelity analytic)");
  sub->callback([args]() {
    if (args->run.model.empty()) throw Error("lower: --model is required (a zoo id such as llama3-8b, or a path)");
    const models::ModelSpec model = models::load_model(args->run.model);
    const std::string profile_file = args->profile.empty() ? "" : sim::profile_path(args->profile);
    const sim::Profile profile = profile_file.empty() ? sim::Profile{} : sim::read_profile(profile_file);
    const ResolvedRun resolved = resolve_run(args->run, args->gpus, args->gpu_memory_gib * kGiB,
                                             profile_file.empty() ? nullptr : &profile, model);
    const models::RunConfig& cfg = resolved.config;
    models::LowerOptions options;
    options.representatives_only = args->representatives;
    options.mirror_tp = args->per_tp_group;
    if (args->per_tp_group && !args->representatives) throw Error("lower: --per-tp-group needs --representatives");
    const models::Lowered low = models::lower(model, cfg, options);
    schedule::write_schedule(low.schedule, args->output);
    if (args->summary) print_summary(low, resolved.host_costs);
    const models::MemoryEstimate& m = low.peak_memory;
    const std::string verdict = format_bytes(m.total_bytes()) + " per GPU (tightest rank, " + m.peak_phase +
                                ") against " + format_bytes(m.usable_bytes()) + " usable of " +
                                format_bytes(cfg.gpu_memory_bytes);
    if (!low.fits) {
      throw NotFeasibleError("does not fit: needs " + verdict + " (schedule written to " + args->output + ")");
    }
    if (args->output != "-") {
      std::fprintf(stderr, "fits: %s\nhost costs: %s\n", verdict.c_str(), resolved.host_costs.c_str());
    }
  });
}

}  // namespace twinstep::cli
