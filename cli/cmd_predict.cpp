// `twinstep predict` (model x cluster x layout x overlap variants -> step time, MFU, breakdown per variant) and
// `twinstep simulate` (a schedule file on a cluster -> trace). Printing only: the work is evaluate::evaluate (one
// point: lower, simulate, analyse; the same path as sweep) and evaluate::simulate_schedule.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "cli/commands.hpp"
#include "cli/run_flags.hpp"
#include "common/error.hpp"
#include "common/io.hpp"
#include "common/units.hpp"
#include "evaluate/evaluate.hpp"
#include "models/lower.hpp"
#include "models/model_spec.hpp"
#include "schedule/analysis.hpp"
#include "schedule/json.hpp"
#include "schedule/perfetto.hpp"
#include "schedule/validate.hpp"
#include "sim/clock_model.hpp"
#include "sim/profile_choice.hpp"
#include "sim/simulate.hpp"
#include "sweep/grid.hpp"
#include "topologies/cluster.hpp"

namespace twinstep::cli {
namespace {

struct ClusterFlags {
  std::string cluster;
  std::uint32_t nodes = 0;
  std::uint32_t gpus = 0;
  std::string profile;
  sim::Fidelity fidelity = sim::default_fidelity();
  std::string clock_model;  ///< --clock-model; empty: the profile's clock_model.mode.
};

void add_cluster_flags(CLI::App* sub, ClusterFlags& f, bool cluster_required = true) {
  auto* cluster = sub->add_option("--cluster", f.cluster,
                                  "Cluster id (dgx-h100, hgx-h200, dgx-a100, h200x2-nvlink, h100-superpod, ...) "
                                  "or a cluster JSON path");
  if (cluster_required) cluster->required();
  auto* nodes = sub->add_option("--nodes", f.nodes, "Number of nodes (1..2048)")->check(CLI::Range(1u, 2048u));
  auto* gpus =
      sub->add_option("--gpus", f.gpus, "Number of GPUs (a multiple of the GPUs per node, or fewer than one node)")
          ->check(CLI::Range(1u, 1u << 24));
  nodes->excludes(gpus);
  sub->add_option(
      "--profile", f.profile,
      "Calibration profile: a JSON path, a shipped id (h100x1, h200x2) or \"datasheet\" (default: the measured "
      "profile of the cluster's GPU, calibration/profiles/defaults.json)");
  sub->add_option_function<std::string>(
      "--fidelity", [&f](const std::string& v) { f.fidelity = sim::parse_fidelity(v, "--fidelity"); },
      "Resource model: analytic (own event queue; shares only each GPU's NIC between transfers) or flow "
      "(SimGrid max-min flows on NVLink ports, NICs and fabric links; one child process per "
      "simulation). Default: " +
          to_string(sim::default_fidelity()) + ", as in sweep" +
          (sim::flow_model_available() ? " (flow: " + sim::flow_engine_version() + " built in)"
                                       : " (this build has no SimGrid, so no flow)"));
  sub->add_option("--clock-model", f.clock_model,
                  "SM clock under the power cap: none (the profile's tables as measured) or power-cap (solve the "
                  "clock each rank settles at from the simulated step, rescale the compute tables to the lowest, "
                  "simulate again; needs the profile's clock_model, docs/calibration.md section 8). Default: the "
                  "profile's clock_model.mode, else none")
      ->check(CLI::IsMember({"none", "power-cap"}));
}

struct Setup {
  topologies::Cluster cluster;
  sim::ProfileChoice choice;  ///< The profile, why it was chosen, its warnings (another GPU, datasheet fields).
  sim::ClockMode clock = sim::ClockMode::kNone;  ///< --clock-model, else the profile's.
  [[nodiscard]] const sim::Profile& profile() const { return choice.profile; }
};

Setup load_setup(const ClusterFlags& f) {
  Setup s{topologies::load_cluster(f.cluster, {f.nodes, f.gpus}), {}};
  s.choice = sim::choose_profile(f.profile, s.cluster);
  sim::check_available(f.fidelity);
  s.clock =
      f.clock_model.empty() ? s.profile().clock_model.mode : sim::parse_clock_mode(f.clock_model, "--clock-model");
  sim::check_clock_mode(s.clock, s.profile(), "--clock-model");
  return s;
}

struct VariantResult {
  std::string name;
  double step_s = 0;
  double tflops_per_gpu = 0;
  double mfu = 0;
  double memory_gib = 0;
  bool fits = true;
  models::MemoryEstimate memory;  ///< The tightest rank's breakdown.
  schedule::Breakdown breakdown;
  double solo_compute_s = 0;  ///< Mean over ranks of the compute kernels' solo times (cost model, nothing beside).
  std::map<std::string, double> host_work_s;  ///< Host thread time by cause (evaluate::Simulated::host_work_s).
  std::vector<std::string> warnings;
  std::vector<std::string> notes;           ///< What the resource model leaves out, symmetry reduction.
  std::optional<sim::ClockSolution> clock;  ///< The power-cap clock it was simulated at (--clock-model power-cap).
};

nlohmann::ordered_json breakdown_json(const schedule::RankBreakdown& b) {
  nlohmann::ordered_json j;
  j["compute_s"] = b.compute_s;
  nlohmann::ordered_json comm = nlohmann::ordered_json::object();
  for (const auto& [kind, s] : b.exposed_comm_s) comm[kind] = s;
  j["exposed_comm_s"] = comm;
  j["bubble_s"] = b.bubble_s;
  j["host_bound_s"] = b.host_bound_s;
  j["busy_comm_s"] = b.busy_comm_s;
  return j;
}

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

/// A variant's step-time change against the baseline, split into its causes. The terms sum exactly to the change:
/// the breakdown's categories sum to the step, so each category's change is one cause.
struct Attribution {
  std::vector<std::pair<std::string, double>> terms;  ///< (cause, seconds; > 0 slower).
};

Attribution attribute(const VariantResult& r, const VariantResult& base) {
  Attribution a;
  const auto& m = r.breakdown.mean;
  const auto& b = base.breakdown.mean;
  std::map<std::string, double> exposed;
  for (const auto& [kind, s] : b.exposed_comm_s) exposed[kind] -= s;
  for (const auto& [kind, s] : m.exposed_comm_s) exposed[kind] += s;
  for (const auto& [kind, d] : exposed) {
    if (d != 0) a.terms.emplace_back((d < 0 ? "communication hidden: exposed " : "communication exposed: ") + kind, d);
  }
  const double work = r.solo_compute_s - base.solo_compute_s;
  a.terms.emplace_back("kernel work (solo kernel time, e.g. chunked or moved GEMMs)", work);
  a.terms.emplace_back("kernel slowdown by concurrent communication (SMs, HBM) and kernel overlap",
                       (m.compute_s - b.compute_s) - work);
  a.terms.emplace_back("host-bound time (launches, framework host ops, host syncs)", m.host_bound_s - b.host_bound_s);
  a.terms.emplace_back("pipeline bubble and waiting for peers", m.bubble_s - b.bubble_s);
  return a;
}

/// The host thread's time by cause in `r` less that in `base` (base null: `r`'s own), the largest first; the
/// causes of the host-bound term: which module calls, syncs and schedule nodes take the host's time. Not additive to
/// the step (host work overlaps GPU work unless the GPU waits for it).
std::vector<std::pair<std::string, double>> host_causes(const VariantResult& r, const VariantResult* base,
                                                        std::size_t top) {
  std::map<std::string, double> d = r.host_work_s;
  if (base != nullptr) {
    for (const auto& [cause, s] : base->host_work_s) d[cause] -= s;
  }
  std::vector<std::pair<std::string, double>> v(d.begin(), d.end());
  std::erase_if(v, [](const auto& e) { return std::abs(e.second) < 1e-9; });
  std::stable_sort(v.begin(), v.end(),
                   [](const auto& a, const auto& b) { return std::abs(a.second) > std::abs(b.second); });
  if (v.size() > top) v.resize(top);
  return v;
}

/// One time unit for a whole table, chosen from its longest step: s, ms or us.
struct TimeUnit {
  const char* name;
  double per_second;
};

TimeUnit unit_for(double longest_s) {
  if (longest_s >= 10.0) return {"s", 1.0};
  if (longest_s >= 0.01) return {"ms", 1e3};
  return {"us", 1e6};
}

std::string format_table(const std::vector<VariantResult>& results, const std::string& header,
                         const std::string& legend) {
  std::string out = header;
  const double base = results.front().step_s;
  double longest = 0;
  for (const auto& r : results) longest = std::max(longest, r.step_s);
  const TimeUnit u = unit_for(longest);
  auto t = [&](double s) { return fmt("%10.3f ", s * u.per_second) + u.name; };
  for (const auto& r : results) {
    out += "\nvariant " + r.name + "\n";
    out += "  step time       " + t(r.step_s);
    if (&r != &results.front()) {
      out += "  (" + fmt("%+.3f ", (r.step_s - base) * u.per_second) + u.name + ", " +
             fmt("%+.1f%%", 100.0 * (r.step_s - base) / base) + " vs " + results.front().name + ")";
    }
    out += "\n  TFLOP/s per GPU " + fmt("%10.1f", r.tflops_per_gpu) + "   MFU " + fmt("%.1f%%", 100.0 * r.mfu) + "\n";
    out += "  memory per GPU  " + fmt("%10.1f GiB", r.memory_gib) + " of " +
           fmt("%.1f GiB usable", r.memory.usable_bytes() / kGiB) +
           (r.fits ? "  (fits, margin " : "  (DOES NOT FIT, ") + fmt("%+.1f GiB)", r.memory.margin_bytes() / kGiB) +
           "\n";
    out += models::memory_breakdown_text(r.memory, "  ");
    const auto& m = r.breakdown.mean;
    auto pct = [&](double s) { return fmt("%5.1f%%", r.step_s > 0 ? 100.0 * s / r.step_s : 0.0); };
    auto row = [&](const std::string& label, double s) {
      out += "    " + label + std::string(label.size() < 16 ? 16 - label.size() : 1, ' ') + t(s) + "  " + pct(s) + "\n";
    };
    out += "  breakdown (mean over ranks):\n";
    row("compute", m.compute_s);
    for (const auto& [kind, s] : m.exposed_comm_s) row("exposed " + kind, s);
    row("bubble", m.bubble_s);
    row("host-bound", m.host_bound_s);
    const bool first = &r == &results.front();
    if (!first) {
      out += "  change vs " + results.front().name + " by cause (sums to the change):\n";
      for (const auto& [cause, s] : attribute(r, results.front()).terms) {
        out += "    " + fmt("%+10.3f ", s * u.per_second) + u.name + "  " + cause + "\n";
      }
    }
    const auto causes = host_causes(r, first ? nullptr : &results.front(), 6);
    if (!causes.empty()) {
      out += first ? "  host thread time per rank by cause (largest; overlaps GPU work unless host-bound):\n"
                   : "  host thread time per rank by cause, change vs " + results.front().name + " (largest):\n";
      for (const auto& [cause, s] : causes) {
        out += "    " + fmt(first ? "%10.3f " : "%+10.3f ", s * u.per_second) + u.name + "  " + cause + "\n";
      }
    }
    for (const auto& w : r.warnings) out += "  warning: " + w + "\n";
    for (const auto& n : r.notes) out += "  note: " + n + "\n";
  }
  return out + "\n" + legend;
}

/// Everything `twinstep predict` takes.
struct PredictArgs {
  RunFlags flags;
  ClusterFlags cf;
  std::string overlap = "none";
  bool json = false;
  std::string trace_dir;
  bool no_reduce = false;
};

/// The predict options (run flags, cluster flags, --overlap --json --trace --no-reduce) on `sub`.
void add_predict_options(CLI::App* sub, PredictArgs& a, bool cluster_required) {
  add_run_flags(*sub, a.flags);
  add_cluster_flags(sub, a.cf, cluster_required);
  sub->add_option("--overlap", a.overlap,
                  "Comma-separated variants: none, all, or +-joined modes (dp, tp, pp, cp, ep, delay_wgrad, "
                  "shared_expert); the first is the baseline");
  sub->add_flag("--json", a.json, "Print one JSON object with a variants array");
  sub->add_option("--trace", a.trace_dir, "Folder for <variant>.trace.json and <variant>.perfetto.json");
  sub->add_flag("--no-reduce", a.no_reduce,
                "Simulate every rank. By default (as in sweep) analytic simulates one representative per pipeline "
                "stage and CP rank, and flow one per DP replica where every fabric link is one GPU's (one switch, or "
                "one fat-tree group) and above " +
                    std::to_string(sim::kSymmetryReductionAboveGpus) +
                    " GPUs (symmetry reduction: absent members of a communicator mirror present ones)");
}

/// One prediction, as the table text and as the --json object.
struct Prediction {
  std::string text;
  nlohmann::ordered_json json;
  bool none_fits = false;  ///< No variant fits in memory: exit 3 after printing.
};

/// Exit 3 (not feasible) when no variant of `p` fits, after its table or JSON was printed.
void fail_if_none_fits(const Prediction& p) {
  if (p.none_fits) {
    throw Error(
        "no variant fits in GPU memory (see the memory lines above); use more GPUs, more TP/PP/CP/EP, "
        "recompute, or a smaller micro-batch",
        ExitCode::kNotFeasible);
  }
}

/// One overlap variant of `base` evaluated (evaluate::evaluate), its trace and Perfetto files written under
/// `trace_dir` when one is given. An error names the variant.
VariantResult evaluate_variant(const PredictArgs& args, const Setup& setup, const sim::CostModel& costs,
                               const models::ModelSpec& model, const models::RunConfig& base,
                               const models::OverlapVariant& variant) {
  const std::string v = models::to_string(variant);
  evaluate::Options opts;
  opts.fidelity = args.cf.fidelity;
  opts.reduce = !args.no_reduce;
  opts.keep_trace = !args.trace_dir.empty();
  opts.clock = setup.clock;
  opts.context["variant"] = v;
  opts.context["model"] = model.name;
  const models::RunConfig config = models::apply_overlap_variant(base, variant);
  evaluate::Result e;
  try {
    e = evaluate::evaluate(model, setup.cluster, costs, config, opts);
  } catch (const Error& err) {
    throw Error("variant " + v + ": " + err.what(), err.code());
  }
  VariantResult r;
  r.name = v;
  r.breakdown = std::move(e.sim.breakdown);
  r.solo_compute_s = e.sim.solo_compute_s;
  r.host_work_s = std::move(e.sim.host_work_s);
  r.step_s = e.step_s;
  r.tflops_per_gpu = e.tflops_per_gpu;
  r.mfu = e.mfu;
  r.memory_gib = e.peak_memory.total_bytes() / kGiB;
  r.fits = e.fits;
  r.memory = e.peak_memory;
  r.warnings = std::move(e.warnings);
  r.notes = std::move(e.sim.notes);
  r.clock = e.sim.clock;
  if (e.sim.trace) {
    const std::string stem = (std::filesystem::path(args.trace_dir) / v).string();
    schedule::write_trace(*e.sim.trace, stem + ".trace.json");
    write_file_atomic(stem + ".perfetto.json", schedule::to_perfetto_json(*e.sim.trace));
  }
  return r;
}

/// One variant's entry of `predict --json`; `first` is the baseline its delta and attribution are against.
nlohmann::ordered_json variant_json(const VariantResult& r, const VariantResult& first) {
  nlohmann::ordered_json e;
  e["name"] = r.name;
  e["step_time_s"] = r.step_s;
  e["delta_s"] = r.step_s - first.step_s;
  e["tflops_per_gpu"] = r.tflops_per_gpu;
  e["mfu"] = r.mfu;
  e["memory_gib_per_gpu"] = r.memory_gib;
  e["fits"] = r.fits;
  nlohmann::ordered_json mem = nlohmann::ordered_json::object();
  for (const auto& [key, bytes] : models::memory_terms(r.memory)) mem[key + "_gib"] = bytes / kGiB;
  mem["allocator_reserved_gib"] = r.memory.total_bytes() / kGiB;
  mem["usable_capacity_gib"] = r.memory.usable_bytes() / kGiB;
  mem["margin_gib"] = r.memory.margin_bytes() / kGiB;
  mem["peak_phase"] = r.memory.peak_phase;
  e["memory"] = mem;
  e["breakdown"] = breakdown_json(r.breakdown.mean);
  nlohmann::ordered_json hw = nlohmann::ordered_json::object();
  for (const auto& [cause, sec] : r.host_work_s) hw[cause] = sec;
  e["host_work_s"] = hw;
  if (&r != &first) {
    nlohmann::ordered_json terms = nlohmann::ordered_json::array();
    for (const auto& [cause, sec] : attribute(r, first).terms) {
      terms.push_back(nlohmann::ordered_json{{"cause", cause}, {"delta_s", sec}});
    }
    e["attribution"] = terms;
  }
  if (r.clock) {
    e["sm_clock_mhz"] = r.clock->mhz;
    nlohmann::ordered_json per_rank = nlohmann::ordered_json::object();
    for (const auto& [rank, mhz] : r.clock->per_rank_mhz) per_rank[std::to_string(rank)] = mhz;
    e["sm_clock_mhz_per_rank"] = per_rank;
  }
  e["warnings"] = r.warnings;
  e["notes"] = r.notes;
  return e;
}

/// The whole of `predict --json`: the setup, then each variant (variant_json).
nlohmann::ordered_json prediction_json(const PredictArgs& args, const Setup& setup, const models::ModelSpec& model,
                                       const ResolvedRun& resolved, const std::vector<VariantResult>& results) {
  const models::RunConfig& base = resolved.config;
  nlohmann::ordered_json j;
  j["model"] = model.name;
  j["cluster"] = setup.cluster.describe();
  j["gpus"] = setup.cluster.num_gpus();
  j["profile"] = setup.profile().name;
  j["profile_reason"] = setup.choice.reason;
  j["fidelity"] = to_string(args.cf.fidelity);
  j["host_costs"] = resolved.host_costs;
  j["notes"] = resolved.notes;
  j["warnings"] = setup.choice.warnings;
  j["peak_flop_per_s"] = setup.cluster.node.gpu.peak_flop_per_s(base.dtype);
  j["memory_capacity_gib"] = base.gpu_memory_bytes / kGiB;
  nlohmann::ordered_json arr = nlohmann::ordered_json::array();
  for (const auto& r : results) arr.push_back(variant_json(r, results.front()));
  j["variants"] = arr;
  return j;
}

/// The printed prediction: the setup's lines, the variants' table (format_table) and the legend of its columns.
std::string prediction_text(const PredictArgs& args, const Setup& setup, const models::ModelSpec& model,
                            const ResolvedRun& resolved, const std::vector<VariantResult>& results) {
  const models::RunConfig& base = resolved.config;
  const double peak = setup.cluster.node.gpu.peak_flop_per_s(base.dtype);
  std::string header = "twinstep predict: " + model.name + " on " + setup.cluster.describe() + "\n";
  header += "layout: tp " + std::to_string(base.tensor_model_parallel_size) + ", pp " +
            std::to_string(base.pipeline_model_parallel_size) + ", cp " + std::to_string(base.context_parallel_size) +
            ", ep " + std::to_string(base.expert_model_parallel_size) + ", mbs " +
            std::to_string(base.micro_batch_size) + ", gbs " + std::to_string(base.global_batch_size) + ", seq " +
            std::to_string(base.seq_length) + "\n";
  header += "costs: " + setup.profile().name + " [" + setup.choice.reason + "], fidelity " +
            to_string(args.cf.fidelity) + "\n";
  header += "host costs: " + resolved.host_costs + "\n";
  for (const auto& n : resolved.notes) header += "note: " + n + "\n";
  for (const auto& w : setup.choice.warnings) header += "warning: " + w + "\n";
  const std::string legend =
      "compute: some kernel runs; exposed <kind>: communication of that kind (tp, cp, dp, ep, pp, expt_dp; world: the "
      "grad-norm all-reduce over all GPUs; mp: the same over the model-parallel group) with no compute beside it; "
      "bubble: waiting for other ranks, pipeline bubbles, host syncs; host-bound: the GPU idle while the host issues.\n"
      "MFU: model FLOPs (no recompute) / (step time x GPUs x " +
      fmt("%.0f", peak / 1e12) + " TFLOP/s, the GPU's dense " + schedule::dtype_name(base.dtype) +
      " peak). fits: the tightest rank's allocator reserve at its peak phase against " +
      fmt("%.1f GiB", base.gpu_memory_bytes / kGiB) +
      " per GPU (the GPU's HBM) less the CUDA context, NCCL's and "
      "TE's userbuffers (memory costs: " +
      base.memory.source + ").\n";
  return format_table(results, header, legend);
}

Prediction run_predict(const PredictArgs& args) {
  const RunFlags& flags = args.flags;
  const ClusterFlags& cf = args.cf;
  if (cf.cluster.empty()) throw Error("--cluster is required (a cluster id such as dgx-h100, or a cluster JSON path)");
  if (flags.model.empty()) throw Error("--model is required (a zoo id such as llama3-70b, or a model JSON path)");
  const Setup setup = load_setup(cf);
  const sim::CostModel costs(setup.cluster, setup.profile());
  const models::ModelSpec model = models::load_model(flags.model);
  const ResolvedRun resolved = resolve_run(flags, setup.cluster.num_gpus(), setup.cluster.node.gpu.hbm_capacity_bytes,
                                           setup.choice.measured ? &setup.profile() : nullptr, model);
  if (!args.trace_dir.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(args.trace_dir, ec);
    if (ec) throw Error("--trace " + args.trace_dir + ": cannot create the folder: " + ec.message());
  }
  std::vector<VariantResult> results;
  for (const auto& variant : sweep::split_modes(args.overlap, "--overlap", models::parse_overlap_variant)) {
    results.push_back(evaluate_variant(args, setup, costs, model, resolved.config, variant));
  }
  Prediction out;
  out.json = prediction_json(args, setup, model, resolved, results);
  out.text = prediction_text(args, setup, model, resolved, results);
  out.none_fits = std::none_of(results.begin(), results.end(), [](const VariantResult& r) { return r.fits; });
  return out;
}

/// A built-in example: predict run on a flag set written in code (the same path as the command line).
struct Example {
  const char* id;
  const char* title;
  std::vector<std::string> args;  ///< predict arguments; "twinstep predict <args>" is the equivalent command
};

const std::vector<Example>& examples() {
  static const std::vector<Example> kExamples = {
      {"qwen",
       "Qwen3-30B-A3B (MoE, 128 experts, top-8) on 2 nodes of 8 H100, EP 16, distributed optimizer: EP overlap "
       "variants. seq 2048 keeps --example short; the production seq 4096 fits too (--seq 4096)",
       {"--model", "qwen3-30b-a3b", "--cluster", "dgx-h100", "--nodes", "2", "--ep", "16", "--distributed-optimizer",
        "--mbs", "1", "--gbs", "256", "--seq", "2048", "--overlap", "none,ep,ep+delay_wgrad"}},
      {"llama",
       "Llama-3-70B (dense) on 4 nodes of 8 H100, TP 8 + SP, PP 4 with 2 virtual stages, distributed optimizer: "
       "dense overlap modes. gbs 32 rather than 64 keeps --example under a minute on 2 cores (same per-micro-batch "
       "work, half the micro-batches)",
       {"--model",   "llama3-70b",
        "--cluster", "dgx-h100",
        "--nodes",   "4",
        "--tp",      "8",
        "--pp",      "4",
        "--vpp",     "2",
        "--sp",      "--distributed-optimizer",
        "--mbs",     "1",
        "--gbs",     "32",
        "--seq",     "4096",
        "--overlap", "none,dp,tp,pp,all"}},
  };
  return kExamples;
}

/// `predict --example [qwen|llama]`: each example's title line, its equivalent command line and its prediction.
void run_examples(const std::string& which, const PredictArgs& outer) {
  if (!outer.flags.model.empty() || !outer.cf.cluster.empty()) {
    throw Error(
        "--example runs the built-in examples with their own model and cluster; drop --model/--cluster, or "
        "drop --example and give the full command");
  }
  std::vector<const Example*> chosen;
  for (const auto& e : examples()) {
    if (which.empty() || which == "all" || which == e.id) chosen.push_back(&e);
  }
  if (chosen.empty()) throw Error("--example \"" + which + "\": use qwen, llama or all (default: all)");
  nlohmann::ordered_json all = nlohmann::ordered_json::array();
  for (const Example* e : chosen) {
    std::vector<std::string> args = e->args;
    if (outer.cf.fidelity != sim::default_fidelity()) {
      args.push_back("--fidelity");
      args.push_back(to_string(outer.cf.fidelity));
    }
    std::string command = "twinstep predict";
    for (const auto& a : args) command += " " + a;
    PredictArgs a;
    CLI::App app("example");
    add_predict_options(&app, a, true);
    std::vector<std::string> reversed(args.rbegin(), args.rend());  // CLI11 parses a reversed vector
    app.parse(reversed);
    a.json = outer.json;
    const Prediction p = run_predict(a);
    if (outer.json) {
      nlohmann::ordered_json j;
      j["example"] = e->id;
      j["title"] = e->title;
      j["command"] = command;
      for (auto it = p.json.begin(); it != p.json.end(); ++it) j[it.key()] = it.value();
      all.push_back(j);
    } else {
      const std::string head = "=== example " + std::string(e->id) + ": " + e->title + "\n" + command + "\n\n";
      std::fputs((head + p.text + (e == chosen.back() ? "" : "\n")).c_str(), stdout);
      std::fflush(stdout);
    }
  }
  if (outer.json) {
    nlohmann::ordered_json j;
    j["examples"] = all;
    std::fputs((j.dump(2) + "\n").c_str(), stdout);
  }
}

void run_simulate(const std::string& path, const ClusterFlags& cf, const std::string& out) {
  const Setup setup = load_setup(cf);
  const sim::CostModel costs(setup.cluster, setup.profile());
  for (const auto& w : setup.choice.warnings) std::fprintf(stderr, "warning: %s\n", w.c_str());
  schedule::Schedule s = schedule::read_schedule(path);
  schedule::check(s);
  evaluate::Options opts;
  opts.fidelity = cf.fidelity;
  opts.context["schedule_file"] = path;
  opts.keep_trace = true;
  opts.clock = setup.clock;
  const evaluate::Simulated simulated = evaluate::simulate_schedule(std::move(s), setup.cluster, costs, opts);
  const schedule::Trace& trace = *simulated.trace;
  if (out == "-") {
    schedule::write_trace(trace, out);
    return;
  }
  if (!out.empty()) schedule::write_trace(trace, out);
  const schedule::Breakdown& b = simulated.breakdown;
  std::fputs(
      ("simulated " + path + " on " + setup.cluster.describe() + " (" + setup.profile().name + ", fidelity " +
       to_string(cf.fidelity) +
       (simulated.clock ? ", SM clock " + std::to_string(std::lround(simulated.clock->mhz)) + " MHz (power-cap)" : "") +
       ")\n" + schedule::format_breakdown(b) +
       (out.empty() ? "no trace written (-o FILE writes it, -o - to stdout)\n" : "trace written to " + out + "\n"))
          .c_str(),
      stdout);
}

}  // namespace

void register_sim_commands(CLI::App& app) {
  {
    auto* sub = app.add_subcommand("predict", "Predict the step time per overlap variant (model x cluster x layout)");
    auto args = std::make_shared<PredictArgs>();
    auto example = std::make_shared<std::string>();
    add_predict_options(sub, *args, false);
    auto* ex = sub->add_option("--example", *example,
                               "Run the built-in examples (qwen: Qwen3-30B-A3B EP overlap on 2 x 8 H100; llama: "
                               "Llama-3-70B dense overlap modes on 4 x 8 H100; default all), each with its title and "
                               "equivalent command line; --json and --fidelity apply")
                   ->expected(0, 1);
    sub->callback([=]() {
      if (ex->count() > 0) {
        run_examples(*example, *args);
        return;
      }
      const Prediction p = run_predict(*args);
      std::fputs(args->json ? (p.json.dump(2) + "\n").c_str() : p.text.c_str(), stdout);
      std::fflush(stdout);
      fail_if_none_fits(p);
    });
  }
  {
    auto* sub = app.add_subcommand("simulate", "Simulate a schedule file on a cluster and write the trace");
    auto path = std::make_shared<std::string>();
    auto cf = std::make_shared<ClusterFlags>();
    auto out = std::make_shared<std::string>();
    sub->add_option("schedule", *path, "Schedule JSON")->required();
    add_cluster_flags(sub, *cf);
    sub->add_option("-o,--output", *out, "Trace JSON to write (- for stdout); without it only the breakdown prints");
    sub->callback([=]() { run_simulate(*path, *cf, *out); });
  }
}

}  // namespace twinstep::cli
