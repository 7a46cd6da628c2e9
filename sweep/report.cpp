// Ranking a sweep's results, the printed table, the CSV and JSON exports and measured traces matched to points.
// The HTML report is report_html.cpp. Fixed number formats, ordered maps: the same results give the same bytes.
#include "sweep/report.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <tuple>

#include "common/error.hpp"
#include "common/html.hpp"
#include "common/io.hpp"
#include "common/units.hpp"
#include "schedule/analysis.hpp"
#include "schedule/json.hpp"
#include "sim/simulate.hpp"

namespace twinstep::sweep {
namespace {

std::string fmt(const char* f, double v) { return html::format(f, v); }

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string out = "\"";
  for (char c : s) {
    if (c == '"') out += '"';
    out += c;
  }
  return out + "\"";
}

}  // namespace

std::string layout_id(const Result& r) { return r.point.layout.describe() + " " + to_string(r.point.dispatcher); }

/// A layout as the table shows it: the dispatcher only where it matters (EP > 1) or is not the default.
std::string layout_label(const Point& p) {
  return p.layout.describe() +
         (p.dispatcher != models::TokenDispatcher::kAllToAll || p.layout.ep > 1 ? " " + to_string(p.dispatcher) : "");
}

GroupKey group_of(const Point& p) { return {p.model, p.cluster, p.fidelity, p.seq, p.gbs, p.gpus}; }

GroupKey group_of(const Result& r) { return group_of(r.point); }

bool better(const Result& a, const Result& b) {
  return a.step_time_s != b.step_time_s ? a.step_time_s < b.step_time_s : a.index < b.index;
}

std::string largest_difference(const Result& winner, const Result& loser) {
  std::set<std::string> cats;
  for (const auto& [c, s] : winner.breakdown_s) cats.insert(c);
  for (const auto& [c, s] : loser.breakdown_s) cats.insert(c);
  std::string best_cat;
  double best_d = -1e300;
  for (const auto& c : cats) {
    const auto a = winner.breakdown_s.find(c);
    const auto b = loser.breakdown_s.find(c);
    const double d = (b == loser.breakdown_s.end() ? 0 : b->second) - (a == winner.breakdown_s.end() ? 0 : a->second);
    if (d > best_d) {
      best_d = d;
      best_cat = c;
    }
  }
  if (best_cat.empty()) return "";
  return best_cat + " " + (best_d >= 0 ? "+" : "-") + format_seconds(std::abs(best_d));
}

std::vector<std::optional<double>> speedups_vs_none(const std::vector<Result>& results) {
  // The point with its overlap blanked out identifies "the same point"; its none variant is the reference.
  auto without_overlap = [](const Result& r) {
    Point p = r.point;
    p.overlap = {};
    return point_key(p);
  };
  std::map<std::string, std::size_t> none_of;
  for (std::size_t i = 0; i < results.size(); ++i) {
    const Result& r = results[i];
    if (r.status == PointStatus::kOk && r.point.overlap.none()) none_of.emplace(without_overlap(r), i);
  }
  std::vector<std::optional<double>> out(results.size());
  if (none_of.empty()) return out;
  for (std::size_t i = 0; i < results.size(); ++i) {
    const Result& r = results[i];
    if (r.status != PointStatus::kOk || r.point.overlap.none() || r.step_time_s <= 0) continue;
    const auto it = none_of.find(without_overlap(r));
    if (it != none_of.end()) out[i] = results[it->second].step_time_s / r.step_time_s;
  }
  return out;
}

std::string kept_points_note(std::size_t count, const std::string& results_file) {
  return std::to_string(count) + " other point" + (count == 1 ? "" : "s") + " (earlier sweeps into " + results_file +
         ") are kept in that file and not shown here; `twinstep merge " + results_file +
         " -o all.jsonl --report all.html` reports every point of the file.";
}

std::vector<NotRunReason> reasons_not_run(const std::vector<Result>& results) {
  // A number standing alone ("needs 93.2 GiB", "size 8 does not divide 12") becomes "#"; names with digits
  // ("llama3-8b", "tp2") stay.
  auto pattern = [](const std::string& reason) {
    std::string out;
    for (std::size_t i = 0; i < reason.size();) {
      const bool starts = std::isdigit(static_cast<unsigned char>(reason[i])) &&
                          (i == 0 || !std::isalnum(static_cast<unsigned char>(reason[i - 1])));
      std::size_t j = i;
      while (starts && j < reason.size() &&
             (std::isdigit(static_cast<unsigned char>(reason[j])) ||
              (reason[j] == '.' && j + 1 < reason.size() && std::isdigit(static_cast<unsigned char>(reason[j + 1]))))) {
        ++j;
      }
      if (starts && (j == reason.size() || !std::isalpha(static_cast<unsigned char>(reason[j])))) {
        out += '#';
        i = j;
      } else {
        out += reason[i++];
      }
    }
    return out;
  };
  // Keyed by the status's spelling, then the reason: equally frequent reasons are listed in that order.
  std::map<std::pair<std::string, std::string>, NotRunReason> by;
  for (std::size_t i = 0; i < results.size(); ++i) {
    const Result& r = results[i];
    if (r.status == PointStatus::kOk) continue;
    auto& e = by[{to_string(r.status), pattern(r.reason)}];
    if (e.count++ == 0) {
      e.status = r.status;
      e.reason = pattern(r.reason);
      e.example = i;
    } else if (r.reason != results[e.example].reason) {
      e.numbers_differ = true;
    }
  }
  std::vector<NotRunReason> out;
  for (auto& [k, e] : by) out.push_back(std::move(e));
  std::stable_sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.count > b.count; });
  return out;
}

std::vector<Ranking> rank_results(const std::vector<Result>& results) {
  std::map<GroupKey, std::vector<std::size_t>> groups;
  for (std::size_t i = 0; i < results.size(); ++i) groups[group_of(results[i])].push_back(i);
  std::vector<Ranking> out;
  for (const auto& [key, members] : groups) {
    Ranking g;
    std::tie(g.model, g.cluster, g.fidelity, g.seq, g.gbs, g.gpus) = key;
    for (std::size_t i : members) {
      const Result& r = results[i];
      switch (r.status) {
        case PointStatus::kOk:
          ++g.ok;
          if (!g.best || better(r, results[*g.best])) g.best = i;
          break;
        case PointStatus::kInvalid:
          ++g.invalid;
          break;
        case PointStatus::kDoesNotFit:
          ++g.does_not_fit;
          break;
        case PointStatus::kCannotWin:
          ++g.cannot_win;
          break;
        case PointStatus::kError:
          ++g.errors;
          break;
      }
    }
    if (g.best) {
      const Result& best = results[*g.best];
      const std::string best_layout = layout_id(best);
      std::optional<double> none_s;
      for (std::size_t i : members) {
        const Result& r = results[i];
        if (r.status == PointStatus::kCannotWin && r.lower_bound_s > 0 && layout_id(r) == best_layout &&
            r.point.overlap.none() && !none_s) {
          g.none_bound_s = r.lower_bound_s;  // the none variant was pruned: its step is at least its bound
        }
        if (r.status != PointStatus::kOk) continue;
        if (layout_id(r) != best_layout) {
          if (!g.runner_up || better(r, results[*g.runner_up])) g.runner_up = i;
        } else if (r.point.overlap.none()) {
          none_s = r.step_time_s;
          g.none_bound_s = 0;
        }
      }
      if (!none_s && g.none_bound_s > 0) none_s = g.none_bound_s;
      if (none_s) {
        for (std::size_t i : members) {
          const Result& r = results[i];
          if (r.status == PointStatus::kOk && layout_id(r) == best_layout && r.step_time_s > 0) {
            g.speedup_vs_none.emplace_back(models::to_string(r.point.overlap), *none_s / r.step_time_s);
          }
        }
      }
      if (g.runner_up) g.runner_up_loses = largest_difference(best, results[*g.runner_up]);
    }
    for (std::size_t i : members) {
      if (results[i].status == PointStatus::kOk) g.ranked.push_back(i);
    }
    std::sort(g.ranked.begin(), g.ranked.end(),
              [&](std::size_t a, std::size_t b) { return better(results[a], results[b]); });
    out.push_back(std::move(g));
  }
  return out;
}

std::set<std::string> profiles_used(const std::vector<Result>& results) {
  std::set<std::string> out;
  for (const auto& r : results) {
    if (!r.profile.empty()) out.insert(r.profile);
  }
  return out;
}

std::string format_table(const std::vector<Ranking>& rankings, const std::vector<Result>& results, std::size_t top) {
  const auto speedups = speedups_vs_none(results);
  std::ostringstream o;
  for (const auto& name : profiles_used(results)) o << "costs: " << name << "\n";
  std::string last_head;
  for (const auto& g : rankings) {
    const std::string head = g.model + " on " + g.cluster + " (" + to_string(g.fidelity) + "), seq " +
                             std::to_string(g.seq) + ", global batch " + std::to_string(g.gbs);
    if (head != last_head) {
      o << "\n" << head << "\n";
      last_head = head;
    }
    char buf[512];
    std::snprintf(buf, sizeof buf,
                  "  %u GPUs: %zu simulated, %zu invalid, %zu do not fit, %zu cannot win, %zu errors\n", g.gpus, g.ok,
                  g.invalid, g.does_not_fit, g.cannot_win, g.errors);
    o << buf;
    if (!g.best) continue;
    const Result& b = results[*g.best];
    const std::size_t shown = top == 0 ? g.ranked.size() : std::min(top, g.ranked.size());
    // Columns as wide as the longest label shown (two-digit VPP, EP with ETP and a dispatcher), so rows stay aligned.
    int layout_w = 38, overlap_w = 16;
    bool clocked = false;  // an "SM MHz" column only where the power-cap clock model solved a clock
    for (std::size_t k = 0; k < shown; ++k) {
      const Result& r = results[g.ranked[k]];
      layout_w = std::max(layout_w, static_cast<int>(layout_label(r.point).size()));
      overlap_w = std::max(overlap_w, static_cast<int>(models::to_string(r.point.overlap).size()));
      clocked = clocked || r.sm_clock_mhz > 0;
    }
    std::snprintf(buf, sizeof buf, "  %4s  %-*s %-*s %11s %8s %6s %8s %19s %8s%s\n", "#", layout_w, "layout", overlap_w,
                  "overlap", "step time", "vs best", "MFU", "TFLOP/s", "memory (usable)", "vs none",
                  clocked ? "   SM MHz" : "");
    o << buf;
    for (std::size_t k = 0; k < shown; ++k) {
      const std::size_t i = g.ranked[k];
      const Result& r = results[i];
      const std::string layout = layout_label(r.point);
      // Against the usable capacity the fit is decided on (lines from before it was recorded: none shown).
      const std::string memory = r.usable_gib > 0 ? fmt("%.1f", r.memory_gib) + fmt(" (%.1f) GiB", r.usable_gib)
                                                  : fmt("%.1f GiB", r.memory_gib);
      const std::string gain = speedups[i] ? fmt("%+.1f%%", 100.0 * (*speedups[i] - 1)) : "";
      const std::string clock = !clocked             ? ""
                                : r.sm_clock_mhz > 0 ? fmt(" %8.0f", r.sm_clock_mhz)
                                                     : std::string(9, ' ');
      std::snprintf(buf, sizeof buf, "  %4zu  %-*s %-*s %11s %+7.1f%% %5.1f%% %8.1f %19s %8s%s\n", k + 1, layout_w,
                    layout.c_str(), overlap_w, models::to_string(r.point.overlap).c_str(),
                    format_seconds(r.step_time_s).c_str(),
                    b.step_time_s > 0 ? 100.0 * (r.step_time_s / b.step_time_s - 1) : 0.0, 100.0 * r.mfu,
                    r.tflops_per_gpu, memory.c_str(), gain.c_str(), clock.c_str());
      o << buf;
    }
    if (shown < g.ranked.size()) {
      o << "        ... " << g.ranked.size() - shown
        << " more simulated (--top 0 lists all; the CSV, JSON and HTML report have every one)\n";
    }
    o << "        the best alone, with its timeline and causes: " << predict_command(b.point) << " --trace DIR\n";
    if (!g.speedup_vs_none.empty()) {
      const bool at_least = g.none_bound_s > 0;
      o << "        speedup vs none on the best layout:";
      for (const auto& [v, sp] : g.speedup_vs_none) o << " " << v << (at_least ? " >= " : " ") << fmt("%.3fx", sp);
      if (at_least) {
        o << " (none not simulated: it cannot win, its step is at least its bound " << format_seconds(g.none_bound_s)
          << ")";
      }
      o << "\n";
    }
    if (g.runner_up) {
      const Result& r = results[*g.runner_up];
      o << "        runner-up: " << r.point.layout.describe() << " " << models::to_string(r.point.overlap) << " "
        << format_seconds(r.step_time_s) << " (" << fmt("%+.1f%%", 100.0 * (r.step_time_s / b.step_time_s - 1))
        << "), loses on " << g.runner_up_loses << "\n";
    }
  }
  // Points that did not run, by reason, most frequent first.
  const auto reasons = reasons_not_run(results);
  if (!reasons.empty()) {
    std::size_t not_run = 0;
    for (const auto& e : reasons) not_run += e.count;
    o << "\npoints not run (" << not_run << "), by reason (every point is in the JSON lines and CSV):\n";
    std::size_t shown = 0;
    for (const auto& e : reasons) {
      if (++shown > 25) {
        o << "  ... " << reasons.size() - 25 << " more reasons\n";
        break;
      }
      // The example's own words (numbers, not "#"), and whether the others' numbers differ.
      o << "  " << e.count << " x " << to_string(e.status) << ": " << results[e.example].reason.substr(0, 160)
        << (e.numbers_differ ? "  (point " + std::to_string(results[e.example].index) + "; the others' numbers differ)"
                             : "")
        << "\n";
    }
  }
  return o.str();
}

std::string to_csv(const std::vector<Result>& results) {
  std::set<std::string> cats;
  bool clocked = false;  // a sm_clock_mhz column only where the power-cap clock model solved a clock
  for (const auto& r : results) {
    for (const auto& [c, s] : r.breakdown_s) cats.insert(c);
    clocked = clocked || r.sm_clock_mhz > 0;
  }
  std::ostringstream o;
  o << "point,model,cluster,fidelity,gpus,gbs,seq,tp,pp,vpp,cp,ep,dp,mbs,dispatcher,overlap,status,step_time_s,mfu,"
       "tflops_per_gpu,memory_gib_per_gpu,memory_capacity_gib,memory_usable_gib";
  if (clocked) o << ",sm_clock_mhz";
  for (const auto& c : cats) o << "," << csv_field(c + "_s");
  o << ",reason\n";
  for (const auto& r : results) {
    const auto& p = r.point;
    const auto& l = p.layout;
    o << r.index << "," << csv_field(p.model) << "," << csv_field(p.cluster) << "," << to_string(p.fidelity) << ","
      << p.gpus << "," << p.gbs << "," << p.seq << "," << l.tp << "," << l.pp << "," << l.vpp << "," << l.cp << ","
      << l.ep << "," << l.dp << "," << l.mbs << "," << to_string(p.dispatcher) << ","
      << csv_field(models::to_string(p.overlap)) << "," << to_string(r.status) << ",";
    // Only a simulated point has a step time, MFU and TFLOP/s; one that does not fit has its memory estimate.
    const bool ran = r.status == PointStatus::kOk;
    const bool has_memory = ran || r.status == PointStatus::kDoesNotFit;
    o << (ran ? fmt("%.9g", r.step_time_s) : "") << "," << (ran ? fmt("%.6g", r.mfu) : "") << ","
      << (ran ? fmt("%.6g", r.tflops_per_gpu) : "") << "," << (has_memory ? fmt("%.6g", r.memory_gib) : "") << ","
      << (has_memory && r.capacity_gib > 0 ? fmt("%.6g", r.capacity_gib) : "") << ","
      << (has_memory && r.usable_gib > 0 ? fmt("%.6g", r.usable_gib) : "");
    if (clocked) o << "," << (ran && r.sm_clock_mhz > 0 ? fmt("%.0f", r.sm_clock_mhz) : "");
    for (const auto& c : cats) {
      const auto it = r.breakdown_s.find(c);
      o << "," << (it == r.breakdown_s.end() ? std::string() : fmt("%.9g", it->second));
    }
    o << "," << csv_field(r.reason) << "\n";
  }
  return o.str();
}

std::string to_json(const std::vector<Ranking>& rankings, const std::vector<Result>& results,
                    const ReportNotes& notes) {
  nlohmann::ordered_json j;
  j["schema_version"] = 1;
  if (notes.other_points_kept > 0) {
    j["results_file"] = notes.results_file;
    j["other_points_kept"] = notes.other_points_kept;
  }
  nlohmann::ordered_json rs = nlohmann::ordered_json::array();
  for (const auto& g : rankings) {
    nlohmann::ordered_json e;
    e["model"] = g.model;
    e["cluster"] = g.cluster;
    e["fidelity"] = to_string(g.fidelity);
    e["gpus"] = g.gpus;
    e["gbs"] = g.gbs;
    e["seq"] = g.seq;
    e["points"] = {{to_string(PointStatus::kOk), g.ok},
                   {to_string(PointStatus::kInvalid), g.invalid},
                   {to_string(PointStatus::kDoesNotFit), g.does_not_fit},
                   {to_string(PointStatus::kCannotWin), g.cannot_win},
                   {to_string(PointStatus::kError), g.errors}};
    e["best_point"] = g.best ? nlohmann::ordered_json(results[*g.best].index) : nlohmann::ordered_json();
    if (g.best) {
      const Result& b = results[*g.best];
      e["best"] = {{"layout", b.point.layout.describe()},
                   {"dispatcher", to_string(b.point.dispatcher)},
                   {"overlap", models::to_string(b.point.overlap)},
                   {"step_time_s", b.step_time_s},
                   {"mfu", b.mfu},
                   {"memory_gib_per_gpu", b.memory_gib}};
      if (b.sm_clock_mhz > 0) e["best"]["sm_clock_mhz"] = b.sm_clock_mhz;
    }
    nlohmann::ordered_json sp = nlohmann::ordered_json::object();
    for (const auto& [v, s] : g.speedup_vs_none) sp[v] = s;
    e["speedup_vs_none"] = sp;
    if (g.none_bound_s > 0) e["speedup_vs_none_at_least_from_bound_s"] = g.none_bound_s;
    e["runner_up_point"] = g.runner_up ? nlohmann::ordered_json(results[*g.runner_up].index) : nlohmann::ordered_json();
    e["runner_up_loses_on"] = g.runner_up_loses;
    rs.push_back(e);
  }
  j["rankings"] = rs;
  nlohmann::ordered_json ps = nlohmann::ordered_json::array();
  for (const auto& r : results) ps.push_back(nlohmann::ordered_json::parse(r.line));
  j["points"] = ps;
  return j.dump(2) + "\n";
}

void check_measured_folder(const std::string& dir) {
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) {
    throw Error("--measured " + dir + ": not a folder; give a folder of measured trace JSON files");
  }
}

std::vector<Measured> read_measured(const std::string& dir, const std::vector<Result>& results) {
  check_measured_folder(dir);
  // Candidates for a trace: simulated points with its world size and layout; their full schedules are lowered and
  // fingerprinted only when a trace asks (sweep points are simulated reduced and extrapolated).
  std::map<std::size_t, std::string> fingerprints;
  auto fingerprint_of = [&](std::size_t i) -> const std::string& {
    auto it = fingerprints.find(i);
    if (it == fingerprints.end()) {
      std::string fp;
      try {
        fp = sim::schedule_fingerprint(lower_point(results[i].point).schedule);
      } catch (const Error&) {
        // no schedule: never matches
      }
      it = fingerprints.emplace(i, fp).first;
    }
    return it->second;
  };
  std::vector<std::string> files;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    if (e.is_regular_file() && e.path().extension() == ".json") files.push_back(e.path().string());
  }
  std::sort(files.begin(), files.end());
  std::vector<Measured> out;
  for (const auto& f : files) {
    schedule::Trace t;
    try {
      t = schedule::read_trace(f);
    } catch (const Error&) {
      continue;  // not a trace (a schedule, a table): skipped
    }
    Measured m;
    m.path = f;
    m.fingerprint = sim::schedule_fingerprint(t.schedule);
    m.step_time_s = schedule::analyze(t).step_time_s;
    const auto layout = t.schedule.meta.find("layout");
    for (std::size_t i = 0; i < results.size() && !m.match; ++i) {
      const Result& r = results[i];
      if (r.status != PointStatus::kOk || r.point.gpus != t.schedule.world_size) continue;
      const Layout& l = r.point.layout;
      const std::string prefix = "tp" + std::to_string(l.tp) + " pp" + std::to_string(l.pp) + " vpp" +
                                 std::to_string(l.vpp) + " cp" + std::to_string(l.cp) + " dp" + std::to_string(l.dp);
      if (layout != t.schedule.meta.end() && layout->second.rfind(prefix, 0) != 0) continue;
      if (fingerprint_of(i) == m.fingerprint) m.match = i;
    }
    out.push_back(std::move(m));
  }
  if (out.empty()) throw Error("--measured " + dir + ": no trace JSON found (twinstep run writes them)");
  return out;
}

}  // namespace twinstep::sweep
