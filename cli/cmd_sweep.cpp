// `twinstep sweep` (a grid of model x cluster x GPU count x batch x layout x overlap x dispatcher x fidelity,
// evaluated in forked worker processes, resumable, shardable) and `twinstep merge` (joins shard outputs). Flags and
// printing only: the work is in sweep/.
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "cli/commands.hpp"
#include "common/error.hpp"
#include "common/io.hpp"
#include "common/process.hpp"
#include "common/units.hpp"
#include "models/recipe.hpp"
#include "sim/clock_model.hpp"
#include "sim/profile_choice.hpp"
#include "sweep/grid.hpp"
#include "sweep/report.hpp"
#include "sweep/runner.hpp"
#include "topologies/cluster.hpp"

namespace twinstep::cli {
namespace {

struct SweepFlags {
  std::string sweep_file;
  std::string models, clusters, gpus, gbs, seq, mbs, tp, pp, vpp, cp, ep, parallel, overlap, dispatcher, fidelity;
  std::string profile, config, clock_model;
  std::string output = "sweep.jsonl";
  unsigned jobs = 0;
  std::string shard;
  bool quiet = false;
  bool dry_run = false;
  bool no_extrapolate = false;
  std::size_t top = 10;
};

struct OutputFlags {
  std::string csv, json, report, measured;
};

/// Fails (exit 2) unless `path` can be written: its folder exists and is writable, and it is not a folder.
void check_writable(const std::string& flag, const std::string& path) {
  if (path.empty() || path == "-") return;
  namespace fs = std::filesystem;
  const fs::path p(path);
  const fs::path dir = p.has_parent_path() ? p.parent_path() : fs::path(".");
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    throw Error(flag + " " + path + ": the folder " + dir.string() +
                " does not exist; create it or give a path in an existing folder");
  }
  if (fs::is_directory(p, ec)) throw Error(flag + " " + path + ": is a folder; give a file path");
  if (::access(dir.c_str(), W_OK) != 0) {
    throw Error(flag + " " + path + ": the folder " + dir.string() + " is not writable (" + std::strerror(errno) +
                "); give a path in a writable folder");
  }
}

/// Every output and the --measured folder checked before a point is evaluated: a typo must not cost a sweep.
void check_outputs(const std::string& output, const OutputFlags& f) {
  check_writable("-o/--output", output);
  check_writable("--csv", f.csv);
  check_writable("--json", f.json);
  check_writable("--report", f.report);
  if (!f.measured.empty()) sweep::check_measured_folder(f.measured);
}

void add_output_flags(CLI::App* sub, OutputFlags& f) {
  sub->add_option("--csv", f.csv, "Write every point as CSV");
  sub->add_option("--json", f.json, "Write the rankings and every point as one JSON document");
  sub->add_option("--report", f.report, "Write a self-contained HTML report with charts");
  sub->add_option("--measured", f.measured, "Folder of measured traces (twinstep run) to compare in the report");
}

void write_outputs(const std::vector<sweep::Result>& results, const OutputFlags& f, bool quiet, std::size_t top,
                   const sweep::ReportNotes& notes = {}) {
  const auto rankings = sweep::rank_results(results);
  std::vector<sweep::Measured> measured;
  if (!f.measured.empty()) measured = sweep::read_measured(f.measured, results);
  std::string text = sweep::format_table(rankings, results, top);
  if (!f.csv.empty()) {
    write_file_atomic(f.csv, sweep::to_csv(results));
    text += "CSV written to " + f.csv + "\n";
  }
  if (!f.json.empty()) {
    write_file_atomic(f.json, sweep::to_json(rankings, results, notes));
    text += "JSON written to " + f.json + "\n";
  }
  if (!f.report.empty()) {
    write_file_atomic(f.report, sweep::render_html(results, rankings, measured, notes));
    text += "report written to " + f.report + "\n";
  }
  if (!measured.empty()) {
    std::size_t matched = 0;
    for (const auto& m : measured) matched += m.match.has_value();
    text += std::to_string(matched) + " of " + std::to_string(measured.size()) +
            " measured traces matched a point (same lowered schedule)\n";
  }
  if (!quiet || !f.report.empty() || !f.csv.empty() || !f.json.empty()) std::fputs(text.c_str(), stdout);
}

sweep::Spec build_spec(const SweepFlags& f) {
  sweep::Spec s;
  if (!f.sweep_file.empty()) s = sweep::spec_from_json(read_file(f.sweep_file), f.sweep_file);
  if (!f.models.empty()) s.models = sweep::split_list(f.models, "--model");
  if (!f.clusters.empty()) s.clusters = sweep::split_list(f.clusters, "--cluster");
  if (!f.gpus.empty()) s.gpus = sweep::split_uints(f.gpus, "--gpus");
  if (!f.gbs.empty()) s.gbs = sweep::split_uints(f.gbs, "--gbs");
  if (!f.seq.empty()) s.seq = sweep::split_uints(f.seq, "--seq");
  if (!f.mbs.empty()) s.mbs = sweep::split_uints(f.mbs, "--mbs");
  if (!f.tp.empty()) s.tp = sweep::split_uints(f.tp, "--tp");
  if (!f.pp.empty()) s.pp = sweep::split_uints(f.pp, "--pp");
  if (!f.vpp.empty()) s.vpp = sweep::split_uints(f.vpp, "--vpp");
  if (!f.cp.empty()) s.cp = sweep::split_uints(f.cp, "--cp");
  if (!f.ep.empty()) s.ep = sweep::split_uints(f.ep, "--ep");
  if (!f.overlap.empty()) s.overlaps = sweep::split_modes(f.overlap, "--overlap", models::parse_overlap_variant);
  if (!f.dispatcher.empty()) {
    s.dispatchers = sweep::split_modes(f.dispatcher, "--dispatcher", models::parse_token_dispatcher);
  }
  if (!f.fidelity.empty()) s.fidelities = sweep::split_modes(f.fidelity, "--fidelity", sim::parse_fidelity);
  if (!f.profile.empty()) s.profile = f.profile;
  if (!f.config.empty()) s.base_config = f.config;
  if (!f.clock_model.empty()) s.clock_model = sim::parse_clock_mode(f.clock_model, "--clock-model");
  // power-cap needs each cluster's profile to have a clock_model section: refused before anything runs.
  if (s.clock_model) {
    for (const auto& cluster : s.clusters) {
      sim::check_clock_mode(*s.clock_model, sim::choose_profile(s.profile, topologies::load_cluster(cluster)).profile,
                            "--clock-model");
    }
  }
  if (!f.parallel.empty()) {
    if (f.parallel == "auto") {
      s.auto_layout = true;
    } else if (f.parallel == "explicit") {
      s.auto_layout = false;
    } else {
      throw Error("--parallel \"" + f.parallel +
                  "\": use auto (every valid layout) or explicit (the --tp/--pp/... "
                  "lists)");
    }
  }
  const bool layout_lists = !f.tp.empty() || !f.pp.empty() || !f.vpp.empty() || !f.cp.empty() || !f.ep.empty();
  // No layout given anywhere: every valid layout (a planner's question), not the single TP1 PP1 point.
  if (f.parallel.empty() && !layout_lists && f.sweep_file.empty()) s.auto_layout = true;
  if (s.auto_layout && layout_lists) {
    throw Error(
        "--parallel auto enumerates the layouts itself; drop --tp/--pp/--vpp/--cp/--ep or use --parallel "
        "explicit");
  }
  return s;
}

std::string with_rank_suffix(const std::string& path, const sweep::Shard& s) {
  const std::string tag = ".rank" + std::to_string(s.index);
  const auto dot = path.rfind('.');
  const auto slash = path.rfind('/');
  if (dot == std::string::npos || (slash != std::string::npos && dot < slash)) return path + tag;
  return path.substr(0, dot) + tag + path.substr(dot);
}

/// Exit 2 when no point of the whole sweep can run (every one breaks a layout rule or the lowering's checks): the
/// reasons, the layout flags to change and their usable values (sweep::invalid_layout_fixes). A shard whose own points
/// are all invalid fails only when the other shards' points are too. Nothing is written.
void fail_if_all_invalid(const sweep::Spec& spec, const std::vector<sweep::Point>& all,
                         const std::vector<sweep::Point>& points, const std::vector<std::string>& reasons) {
  if (points.empty()) return;
  for (const auto& r : reasons) {
    if (r.empty()) return;
  }
  if (points.size() < all.size()) {
    for (const auto& p : all) {
      if (sweep::rejection_reason(p).empty()) return;
    }
  }
  std::vector<std::pair<std::string, std::size_t>> counts;  // distinct reasons in order of first appearance
  for (const auto& p : all) {
    const std::string r = sweep::rejection_reason(p);
    auto it = std::find_if(counts.begin(), counts.end(), [&](const auto& c) { return c.first == r; });
    if (it == counts.end()) {
      counts.emplace_back(r, 1);
    } else {
      ++it->second;
    }
  }
  std::string msg = "sweep: every one of the " + std::to_string(all.size()) +
                    " points is invalid, nothing to simulate (nothing written):\n";
  std::size_t shown = 0;
  for (const auto& [r, n] : counts) {
    if (++shown > 5) {
      msg += "  ... " + std::to_string(counts.size() - 5) + " more reasons (--dry-run lists every point's)\n";
      break;
    }
    msg += "  " + std::to_string(n) + " x " + r + "\n";
  }
  for (const auto& fix : sweep::invalid_layout_fixes(spec)) msg += "fix: " + fix + "\n";
  msg += "or --parallel auto to sweep every valid layout; --dry-run lists each point with its reason";
  throw Error(msg);
}

void run_sweep_command(const SweepFlags& f, const OutputFlags& of) {
  const auto started = std::chrono::steady_clock::now();  // the summary's "in all": what the user waits for
  const sweep::Spec spec = build_spec(f);
  const std::vector<sweep::Point> all = sweep::expand(spec);
  sweep::Shard shard;
  std::string output = f.output;
  if (!f.shard.empty()) {
    shard = sweep::parse_shard(f.shard);
  } else {
    shard = sweep::shard_from_env();
    if (shard.count > 1) output = with_rank_suffix(output, shard);  // one file per MPI rank
  }
  const std::vector<sweep::Point> points = sweep::select_shard(all, shard);
  if (!f.dry_run) check_outputs(output, of);
  // Rejected before lowering: by the layout rules (grid), or by the lowering's own checks (gating, divisibility),
  // the same reasons the run gives them. Whether a point fits in memory is known only once it is lowered.
  std::size_t by_layout = 0, by_checks = 0;
  std::vector<std::string> reasons(points.size());
  for (std::size_t i = 0; i < points.size(); ++i) {
    reasons[i] = sweep::rejection_reason(points[i]);
    by_layout += !points[i].invalid_reason.empty();
    by_checks += points[i].invalid_reason.empty() && !reasons[i].empty();
  }
  std::string head = "twinstep sweep: " + std::to_string(all.size()) + " points";
  if (shard.count > 1) {
    head += ", shard " + std::to_string(shard.index) + "/" + std::to_string(shard.count) + " runs " +
            std::to_string(points.size());
  }
  head += " (" + std::to_string(by_layout + by_checks) + " invalid: " + std::to_string(by_layout) +
          " by the layout rules, " + std::to_string(by_checks) + " by the lowering's checks) -> " + output + "\n";
  if (f.dry_run) {
    for (std::size_t i = 0; i < points.size(); ++i) {
      head += std::to_string(points[i].index) + " " + sweep::point_key(points[i]) +
              (reasons[i].empty() ? "" : "  INVALID: " + reasons[i]) + "\n";
    }
    head += std::to_string(points.size() - by_layout - by_checks) +
            " points to simulate; whether each fits in GPU memory is known only once it is lowered (the memory "
            "estimate), so some may still be reported as not fitting\n";
    std::fputs(head.c_str(), stdout);
    std::fflush(stdout);
    fail_if_all_invalid(spec, all, points, reasons);
    return;
  }
  fail_if_all_invalid(spec, all, points, reasons);
  if (!f.quiet) {
    std::fputs(head.c_str(), stdout);
    std::fflush(stdout);
  }
  sweep::RunOptions opts;
  opts.output = output;
  opts.jobs = f.jobs > 0 ? f.jobs : std::max(1u, std::thread::hardware_concurrency());
  opts.progress = !f.quiet;
  opts.extrapolate = !f.no_extrapolate;
  opts.prune = spec.auto_layout;
  opts.rejections = &reasons;
  sweep::RunStats stats;
  const auto results = sweep::run_sweep(points, opts, &stats);
  if (!f.quiet) {
    char buf[256];
    // A sweep of small points takes milliseconds: format_seconds keeps three digits rather than printing "0.0 s".
    // From the process's creation where /proc tells it: loading the program and its libraries counts too.
    const double since_command_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    const double age_s = process_age_s();
    const double all_s = std::max(since_command_s, age_s);
    std::snprintf(buf, sizeof buf,
                  "%zu points: %zu resumed from the file, %zu evaluated with %u jobs in %s (%s since the process "
                  "started: program loaded, models loaded, layouts checked, points evaluated, results written)\n",
                  stats.total, stats.resumed, stats.evaluated, opts.jobs, format_seconds(stats.wall_s).c_str(),
                  format_seconds(all_s).c_str());
    std::string note = buf;
    std::size_t cannot_fit = 0, cannot_win = 0;
    for (const auto& r : results) {
      cannot_fit += r.status == sweep::PointStatus::kDoesNotFit && r.reason.rfind("pruned before lowering", 0) == 0;
      cannot_win += r.status == sweep::PointStatus::kCannotWin;
    }
    if (cannot_fit + cannot_win > 0) {
      std::snprintf(buf, sizeof buf,
                    "pruned: %zu that cannot fit (memory estimate above the GPU's, before lowering), %zu that cannot "
                    "win (step lower bound above the best step simulated before it in rising bound order)\n",
                    cannot_fit, cannot_win);
      note += buf;
    }
    if (stats.discarded > 0) {
      std::snprintf(buf, sizeof buf,
                    "%zu simulations ran ahead of the bound order (parallel workers) and were discarded: those points "
                    "cannot win\n",
                    stats.discarded);
      note += buf;
    }
    if (stats.torn > 0) note += "a torn last line (interrupted write) was removed and its point re-run\n";
    if (stats.duplicates > 0) {
      note += std::to_string(stats.duplicates) + " repeated lines of the same point in " + output +
              " were joined (the first kept)\n";
    }
    if (shard.count > 1) note += "this is one shard: join the shard outputs with `twinstep merge ... -o all.jsonl`\n";
    std::fputs(note.c_str(), stdout);
  }
  if (stats.kept > 0 && !f.quiet) {
    std::fputs((sweep::kept_points_note(stats.kept, output) + "\n").c_str(), stdout);
  }
  write_outputs(results, of, f.quiet, f.top, sweep::ReportNotes{stats.kept, output});
}

void run_merge_command(const std::vector<std::string>& inputs, const std::string& output, const OutputFlags& of) {
  check_outputs(output, of);
  std::size_t lines_in = 0;
  std::vector<std::string> conflicts;
  const std::string merged = sweep::merge_results(inputs, &lines_in, &conflicts);
  write_file_atomic(output, merged);
  std::string text;
  for (const auto& c : conflicts) text += "note: " + c + "\n";
  std::vector<sweep::Result> results = sweep::read_results(output);
  text += "merged " + std::to_string(lines_in) + " lines from " + std::to_string(inputs.size()) + " files into " +
          std::to_string(results.size()) + " points -> " + output + "\n";
  std::fputs(text.c_str(), stdout);
  if (!of.csv.empty() || !of.json.empty() || !of.report.empty()) write_outputs(results, of, true, 10);
}

}  // namespace

void register_sweep_commands(CLI::App& app) {
  {
    auto* sub = app.add_subcommand(
        "sweep",
        "Evaluate a grid of layouts x overlap variants x GPU counts; rank them; CSV/JSON/HTML outputs.\n"
        "Lists are comma-separated. Results go to --output as JSON lines as they finish; rerunning the same "
        "command resumes. A sweep never removes lines from --output: the points of earlier, different sweeps "
        "into the same file stay there (the file holds the union; this run's table and reports show this "
        "sweep's points and say how many others the file keeps; `twinstep merge FILE -o all.jsonl --report "
        "all.html` reports them all). --shard I/N runs every N-th point (Slurm arrays); under mpirun the rank "
        "and size (OMPI_COMM_WORLD_RANK/SIZE or PMI_RANK/PMI_SIZE) act as --shard, writing "
        "<output>.rank<I>.jsonl. Output paths are checked before any point is evaluated.");
    auto f = std::make_shared<SweepFlags>();
    auto of = std::make_shared<OutputFlags>();
    sub->add_option("--sweep", f->sweep_file, "Sweep file (JSON); flags override its fields");
    sub->add_option("--model", f->models, "Models: zoo ids or JSON paths");
    sub->add_option("--cluster", f->clusters, "Clusters: ids (h100-superpod, dgx-h100, ...) or JSON paths");
    sub->add_option("--gpus", f->gpus, "GPU counts, e.g. 16,32,64,128");
    sub->add_option("--gbs", f->gbs, "Global batch sizes (default 512)");
    sub->add_option("--seq", f->seq, "Sequence lengths (default 4096)");
    sub->add_option("--mbs", f->mbs, "Micro-batch sizes (default 1)");
    sub->add_option("--parallel", f->parallel,
                    "auto: every valid TP/PP/VPP/CP/EP/DP layout (the default when no layout list and no --sweep file "
                    "is given); explicit: the --tp/--pp/--vpp/--cp/--ep lists");
    sub->add_option("--tp", f->tp, "TP sizes (explicit layouts)");
    sub->add_option("--pp", f->pp, "PP sizes (explicit layouts)");
    sub->add_option("--vpp", f->vpp, "Virtual pipeline sizes (explicit layouts)");
    sub->add_option("--cp", f->cp, "CP sizes (explicit layouts)");
    sub->add_option("--ep", f->ep, "EP sizes (explicit layouts)");
    sub->add_option("--overlap", f->overlap,
                    "Overlap variants: none, all, or +-joined modes (dp, tp, pp, cp, ep, "
                    "delay_wgrad, shared_expert); default none");
    sub->add_option("--dispatcher", f->dispatcher, "MoE token dispatchers: alltoall, allgather, flex");
    sub->add_option("--fidelity", f->fidelity, "Fidelities: analytic, flow");
    sub->add_option(
        "--profile", f->profile,
        "Calibration profile: a JSON path, a shipped id (h100x1, h200x2) or \"datasheet\" (default: the measured "
        "profile of each cluster's GPU, calibration/profiles/defaults.json)");
    sub->add_option("--config", f->config, "Base run config JSON every point starts from");
    sub->add_option("--clock-model", f->clock_model,
                    "SM clock under the power cap, as in predict: none or power-cap (each point's step simulated, "
                    "the clock solved from it, the step simulated again with the compute tables at that clock; "
                    "its line gives sm_clock_mhz). Default: the profile's clock_model.mode, else none")
        ->check(CLI::IsMember({"none", "power-cap"}));
    sub->add_option("-o,--output", f->output,
                    "JSON-lines results (default sweep.jsonl); resumed if it exists, other sweeps' lines in it kept");
    sub->add_option("--top", f->top,
                    "Simulated layouts listed per GPU count in the printed table (default 10; 0: all)");
    sub->add_option("-j,--jobs", f->jobs, "Worker processes at once (default: the number of cores)");
    sub->add_option("--shard", f->shard, "Run shard I of N (I/N, 0-based): points with index % N == I");
    sub->add_flag("-q,--quiet", f->quiet, "No progress and no table");
    sub->add_flag("--dry-run", f->dry_run,
                  "List the points with the reason for invalid ones (layout rules and the lowering's checks) and "
                  "stop; whether a point fits in memory is known once it is evaluated (a layout that cannot fit is "
                  "pruned before it is lowered: \"pruned before lowering\")");
    sub->add_flag("--no-extrapolate", f->no_extrapolate,
                  "Simulate every micro-batch. By default (steady-state periodicity, as in predict) a point with many "
                  "micro-batches is simulated at three small counts (1F1B: pp+1 to pp+3; interleaved: 2 to 4 "
                  "micro-batch groups) and its step extrapolated by the period, checked to be the same over both "
                  "pairs");
    add_output_flags(sub, *of);
    sub->footer(std::string(models::recipe_defaults_text()) +
                " The same defaults as `twinstep predict`: each result line holds its equivalent predict command.");
    sub->callback([f, of]() { run_sweep_command(*f, *of); });
  }
  {
    auto* sub = app.add_subcommand("merge", "Join sweep shard outputs (JSON lines): one line per point, sorted");
    auto inputs = std::make_shared<std::vector<std::string>>();
    auto output = std::make_shared<std::string>();
    auto of = std::make_shared<OutputFlags>();
    sub->add_option("inputs", *inputs, "Shard outputs (JSON lines)")->required();
    sub->add_option("-o,--output", *output, "Merged JSON lines")->required();
    add_output_flags(sub, *of);
    sub->callback([=]() { run_merge_command(*inputs, *output, *of); });
  }
}

}  // namespace twinstep::cli
