// Ranking, exports and the HTML report of a sweep. The charts (stacked bars, line chart, heat map, scatter) are
// inline SVG built from common/html.hpp's shapes, which escape every string from the inputs; the ranked tables sort
// in the browser with its inline script. Fixed number formats, ordered maps: the same results give the same bytes.
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

using html::escape;
using html::px;
std::string fmt(const char* f, double v) { return html::format(f, v); }

/// Layout plus dispatcher: what "a different layout" means for the runner-up and the speedup table.
std::string layout_id(const Result& r) { return r.point.layout.describe() + " " + r.point.dispatcher; }

using GroupKey = std::tuple<std::string, std::string, std::string, std::uint32_t, std::uint32_t, std::uint32_t>;
GroupKey group_of(const Result& r) {
  return {r.point.model, r.point.cluster, r.point.fidelity, r.point.seq, r.point.gbs, r.point.gpus};
}

bool better(const Result& a, const Result& b) {
  return a.step_time_s != b.step_time_s ? a.step_time_s < b.step_time_s : a.index < b.index;
}

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string out = "\"";
  for (char c : s) {
    if (c == '"') out += '"';
    out += c;
  }
  return out + "\"";
}

const char* category_color(const std::string& cat, std::size_t i) {
  if (cat == "compute") return "#4f81bd";
  if (cat == "bubble") return "#bfbfbf";
  if (cat == "host-bound") return "#8e6bbf";
  static const char* kComm[] = {"#e08a2c", "#c0504d", "#9bbb59", "#f2c314", "#4bacc6", "#d16aa5", "#7f6000"};
  return kComm[i % (sizeof kComm / sizeof kComm[0])];
}

const char* series_color(std::size_t i) {
  static const char* kColors[] = {"#333333", "#3b6fb6", "#e08a2c", "#2e9d57", "#c0504d", "#8e6bbf", "#8c564b"};
  return kColors[i % (sizeof kColors / sizeof kColors[0])];
}

/// The rules this report adds to the shared style (common/html.hpp).
constexpr const char* kStyle = R"(.chart text { fill: #444; font-size: 11px; }
table.sortable th { cursor: pointer; } table.sortable td { white-space: nowrap; } table.sortable td.wrap { white-space: normal; }
.scroll { overflow-x: auto; }
table.sortable th[data-sort=asc]::after { content: " \25B2"; } table.sortable th[data-sort=desc]::after { content: " \25BC"; }
details { margin: 8px 0; } summary { cursor: pointer; color: #444; }
)";

/// A 10x10 legend swatch.
std::string swatch(double x, double y, const std::string& fill) { return html::svg_rect(x, y, 10, 10, fill).str(); }

/// Stacked horizontal bars: one bar per row, segments per category.
std::string stacked_bars(const std::string& id, const std::vector<std::pair<std::string, const Result*>>& rows) {
  std::vector<std::string> cats{"compute"};
  std::set<std::string> seen{"compute", "bubble", "host-bound"};
  for (const auto& [name, r] : rows) {
    for (const auto& [c, s] : r->breakdown_s) {
      if (seen.insert(c).second) cats.push_back(c);
    }
  }
  cats.push_back("bubble");
  cats.push_back("host-bound");
  double max_s = 0;
  for (const auto& [name, r] : rows) max_s = std::max(max_s, r->step_time_s);
  if (max_s <= 0) max_s = 1;
  const double left = 170, width = 620, bar_h = 20, gap = 8, top = 10;
  const double height = top + rows.size() * (bar_h + gap) + 50;
  std::ostringstream o;
  double y = top;
  for (const auto& [name, r] : rows) {
    o << html::svg_text(left - 6, y + 14, "end").text(name).str() << "\n";
    double x = left;
    std::size_t ci = 0;
    for (const auto& c : cats) {
      const auto it = r->breakdown_s.find(c);
      const double s = it == r->breakdown_s.end() ? 0 : it->second;
      const double w = width * s / max_s;
      if (w > 0)
        o << html::svg_rect(x, y, w, bar_h, category_color(c, ci)).title(c + ": " + format_seconds(s)).str() << "\n";
      x += w;
      ++ci;
    }
    o << html::svg_text(x + 6, y + 14).text(format_seconds(r->step_time_s)).str() << "\n";
    y += bar_h + gap;
  }
  double lx = left;
  std::size_t ci = 0;
  for (const auto& c : cats) {
    o << swatch(lx, y + 12, category_color(c, ci++)) << html::svg_text(lx + 14, y + 21).text(c).str() << "\n";
    lx += 24 + 7.0 * static_cast<double>(c.size());
  }
  return html::svg_chart(id, 960, height, o.str());
}

/// Line chart over categorical x values (GPU counts), one series per overlap variant.
std::string line_chart(const std::string& id, const std::vector<std::uint32_t>& xs,
                       const std::vector<std::pair<std::string, std::map<std::uint32_t, double>>>& series) {
  double max_y = 0;
  for (const auto& [name, pts] : series) {
    for (const auto& [x, y] : pts) max_y = std::max(max_y, y);
  }
  if (max_y <= 0) max_y = 1;
  const double left = 80, top = 15, w = 600, h = 260;
  std::ostringstream o;
  o << html::svg_line(left, top + h, left + w, top + h, "#333").str() << "\n"
    << html::svg_line(left, top, left, top + h, "#333").str() << "\n";
  for (int t = 0; t <= 4; ++t) {
    const double v = max_y * 1.1 * t / 4;
    const double y = top + h - h * t / 4.0;
    o << html::svg_line(left, y, left + w, y, "#eee").str()
      << html::svg_text(left - 6, y + 4, "end").text(format_seconds(v)).str() << "\n";
  }
  auto xpos = [&](std::size_t i) {
    return left + (xs.size() == 1 ? w / 2 : w * static_cast<double>(i) / (xs.size() - 1));
  };
  for (std::size_t i = 0; i < xs.size(); ++i) {
    o << html::svg_text(xpos(i), top + h + 16, "middle").text(std::to_string(xs[i])).str() << "\n";
  }
  o << html::svg_text(left + w / 2, top + h + 34, "middle").text("GPUs").str() << "\n";
  std::size_t si = 0;
  for (const auto& [name, pts] : series) {
    std::string poly;
    for (std::size_t i = 0; i < xs.size(); ++i) {
      const auto it = pts.find(xs[i]);
      if (it == pts.end()) continue;
      const double x = xpos(i), y = top + h - h * it->second / (max_y * 1.1);
      poly += px(x) + "," + px(y) + " ";
      o << html::svg_circle(x, y, "3.5", series_color(si))
               .title(name + " @ " + std::to_string(xs[i]) + " GPUs: " + format_seconds(it->second))
               .str()
        << "\n";
    }
    if (!poly.empty()) {
      o << html::Tag("polyline")
               .attr("points", poly)
               .attr("fill", "none")
               .attr("stroke", series_color(si))
               .attr("stroke-width", "2")
               .str()
        << "\n";
    }
    const double ly = top + 10 + 16.0 * static_cast<double>(si);
    o << swatch(left + w + 20, ly - 9, series_color(si)) << html::svg_text(left + w + 34, ly).text(name).str() << "\n";
    ++si;
  }
  return html::svg_chart(id, 960, top + h + 50, o.str());
}

/// Heat map: rows x cols of values (NaN = no data), white -> green by value / max.
std::string heat_map(const std::string& id, const std::vector<std::uint32_t>& rows, const std::string& row_label,
                     const std::vector<std::uint32_t>& cols, const std::string& col_label,
                     const std::map<std::pair<std::uint32_t, std::uint32_t>, std::pair<double, std::string>>& cells) {
  double max_v = 0;
  for (const auto& [k, v] : cells) max_v = std::max(max_v, v.first);
  const double left = 90, top = 30, cw = 90, ch = 30;
  std::ostringstream o;
  o << html::svg_text(left, 12).text(col_label).raw(" &#8594;").str() << "\n";
  for (std::size_t c = 0; c < cols.size(); ++c) {
    o << html::svg_text(left + cw * (c + 0.5), top - 4, "middle").text(std::to_string(cols[c])).str() << "\n";
  }
  for (std::size_t r = 0; r < rows.size(); ++r) {
    o << html::svg_text(left - 6, top + ch * (r + 0.5) + 4, "end").text(row_label + " " + std::to_string(rows[r])).str()
      << "\n";
    for (std::size_t c = 0; c < cols.size(); ++c) {
      const auto it = cells.find({rows[r], cols[c]});
      const double x = left + cw * c, y = top + ch * r;
      if (it == cells.end()) {
        o << html::svg_rect(x, y, cw - 2, ch - 2, "#f4f4f4").title("no valid point").str() << "\n";
        continue;
      }
      const double t = max_v > 0 ? std::clamp(it->second.first / max_v, 0.0, 1.0) : 0.0;
      const int g = static_cast<int>(255 - 120 * t), rb = static_cast<int>(255 - 200 * t);
      char color[16];
      std::snprintf(color, sizeof color, "#%02x%02x%02x", rb, g, rb);
      o << html::svg_rect(x, y, cw - 2, ch - 2, color).title(it->second.second).str() << "\n";
      o << html::svg_text(x + cw / 2 - 1, y + ch / 2 + 3, "middle").text(fmt("%+.1f%%", 100.0 * it->second.first)).str()
        << "\n";
    }
  }
  return html::svg_chart(id, left + cw * cols.size() + 20, top + ch * rows.size() + 30, o.str());
}

std::string scatter(const std::string& id, const std::vector<std::pair<double, double>>& pts) {
  double max_v = 0;
  for (const auto& [a, b] : pts) max_v = std::max({max_v, a, b});
  if (max_v <= 0) max_v = 1;
  max_v *= 1.1;
  const double left = 80, top = 10, s = 300;
  std::ostringstream o;
  o << html::svg_rect(left, top, s, s, "none").attr("stroke", "#999").str() << "\n"
    << html::svg_line(left, top + s, left + s, top, "#999").attr("stroke-dasharray", "4 3").str() << "\n";
  o << html::svg_text(left + s / 2, top + s + 18, "middle")
           .text("measured " + format_seconds(max_v) + " full scale")
           .str()
    << "\n"
    << html::svg_text(left - 6, top + s / 2, "end").text("predicted").str() << "\n";
  for (const auto& [meas, pred] : pts) {
    o << html::svg_circle(left + s * meas / max_v, top + s - s * pred / max_v, "4", "#3b6fb6").str() << "\n";
  }
  return html::svg_chart(id, left + s + 40, top + s + 50, o.str());
}

}  // namespace

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
    p.overlap = "";
    return point_key(p);
  };
  std::map<std::string, std::size_t> none_of;
  for (std::size_t i = 0; i < results.size(); ++i) {
    const Result& r = results[i];
    if (r.status == "ok" && r.point.overlap == "none") none_of.emplace(without_overlap(r), i);
  }
  std::vector<std::optional<double>> out(results.size());
  if (none_of.empty()) return out;
  for (std::size_t i = 0; i < results.size(); ++i) {
    const Result& r = results[i];
    if (r.status != "ok" || r.point.overlap == "none" || r.step_time_s <= 0) continue;
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
  std::map<std::pair<std::string, std::string>, NotRunReason> by;
  for (std::size_t i = 0; i < results.size(); ++i) {
    const Result& r = results[i];
    if (r.status == "ok") continue;
    auto& e = by[{r.status, pattern(r.reason)}];
    if (e.count++ == 0) {
      e.status = r.status;
      e.reason = pattern(r.reason);
      e.example = i;
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
      if (r.status == "ok") {
        ++g.ok;
        if (!g.best || better(r, results[*g.best])) g.best = i;
      } else if (r.status == "invalid") {
        ++g.invalid;
      } else if (r.status == "does_not_fit") {
        ++g.does_not_fit;
      } else {
        ++g.errors;
      }
    }
    if (g.best) {
      const Result& best = results[*g.best];
      const std::string best_layout = layout_id(best);
      std::optional<double> none_s;
      for (std::size_t i : members) {
        const Result& r = results[i];
        if (r.status != "ok") continue;
        if (layout_id(r) != best_layout) {
          if (!g.runner_up || better(r, results[*g.runner_up])) g.runner_up = i;
        } else if (r.point.overlap == "none") {
          none_s = r.step_time_s;
        }
      }
      if (none_s) {
        for (std::size_t i : members) {
          const Result& r = results[i];
          if (r.status == "ok" && layout_id(r) == best_layout && r.step_time_s > 0) {
            g.speedup_vs_none.emplace_back(r.point.overlap, *none_s / r.step_time_s);
          }
        }
      }
      if (g.runner_up) g.runner_up_loses = largest_difference(best, results[*g.runner_up]);
    }
    for (std::size_t i : members) {
      if (results[i].status == "ok") g.ranked.push_back(i);
    }
    std::sort(g.ranked.begin(), g.ranked.end(),
              [&](std::size_t a, std::size_t b) { return better(results[a], results[b]); });
    out.push_back(std::move(g));
  }
  return out;
}

namespace {

/// The calibration profiles the simulated points used, in name order.
std::set<std::string> profiles_used(const std::vector<Result>& results) {
  std::set<std::string> out;
  for (const auto& r : results) {
    if (!r.profile.empty()) out.insert(r.profile);
  }
  return out;
}

}  // namespace

std::string format_table(const std::vector<Ranking>& rankings, const std::vector<Result>& results, std::size_t top) {
  const auto speedups = speedups_vs_none(results);
  std::ostringstream o;
  for (const auto& name : profiles_used(results)) o << "costs: " << name << "\n";
  std::string last_head;
  for (const auto& g : rankings) {
    const std::string head = g.model + " on " + g.cluster + " (" + g.fidelity + "), seq " + std::to_string(g.seq) +
                             ", global batch " + std::to_string(g.gbs);
    if (head != last_head) {
      o << "\n" << head << "\n";
      last_head = head;
    }
    char buf[512];
    std::snprintf(buf, sizeof buf, "  %u GPUs: %zu simulated, %zu invalid, %zu do not fit, %zu errors\n", g.gpus, g.ok,
                  g.invalid, g.does_not_fit, g.errors);
    o << buf;
    if (!g.best) continue;
    std::snprintf(buf, sizeof buf, "  %4s  %-38s %-16s %11s %8s %6s %8s %19s %8s\n", "#", "layout", "overlap",
                  "step time", "vs best", "MFU", "TFLOP/s", "memory (capacity)", "vs none");
    o << buf;
    const Result& b = results[*g.best];
    const std::size_t shown = top == 0 ? g.ranked.size() : std::min(top, g.ranked.size());
    for (std::size_t k = 0; k < shown; ++k) {
      const std::size_t i = g.ranked[k];
      const Result& r = results[i];
      const std::string layout =
          r.point.layout.describe() +
          (r.point.dispatcher != "alltoall" || r.point.layout.ep > 1 ? " " + r.point.dispatcher : "");
      const std::string memory = r.capacity_gib > 0 ? fmt("%.1f", r.memory_gib) + fmt(" (%.1f) GiB", r.capacity_gib)
                                                    : fmt("%.1f GiB", r.memory_gib);
      const std::string gain = speedups[i] ? fmt("%+.1f%%", 100.0 * (*speedups[i] - 1)) : "";
      std::snprintf(buf, sizeof buf, "  %4zu  %-38s %-16s %11s %+7.1f%% %5.1f%% %8.1f %19s %8s\n", k + 1,
                    layout.c_str(), r.point.overlap.c_str(), format_seconds(r.step_time_s).c_str(),
                    b.step_time_s > 0 ? 100.0 * (r.step_time_s / b.step_time_s - 1) : 0.0, 100.0 * r.mfu,
                    r.tflops_per_gpu, memory.c_str(), gain.c_str());
      o << buf;
    }
    if (shown < g.ranked.size()) {
      o << "        ... " << g.ranked.size() - shown
        << " more simulated (--top 0 lists all; the CSV, JSON and HTML report have every one)\n";
    }
    o << "        the best alone, with its timeline and causes: " << predict_command(b.point) << " --trace DIR\n";
    if (!g.speedup_vs_none.empty()) {
      o << "        speedup vs none on the best layout:";
      for (const auto& [v, sp] : g.speedup_vs_none) o << " " << v << " " << fmt("%.3fx", sp);
      o << "\n";
    }
    if (g.runner_up) {
      const Result& r = results[*g.runner_up];
      o << "        runner-up: " << r.point.layout.describe() << " " << r.point.overlap << " "
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
      o << "  " << e.count << " x " << e.status << ": " << e.reason.substr(0, 160) << "\n";
    }
  }
  return o.str();
}

std::string to_csv(const std::vector<Result>& results) {
  std::set<std::string> cats;
  for (const auto& r : results) {
    for (const auto& [c, s] : r.breakdown_s) cats.insert(c);
  }
  std::ostringstream o;
  o << "point,model,cluster,fidelity,gpus,gbs,seq,tp,pp,vpp,cp,ep,dp,mbs,dispatcher,overlap,status,step_time_s,mfu,"
       "tflops_per_gpu,memory_gib_per_gpu,memory_capacity_gib";
  for (const auto& c : cats) o << "," << csv_field(c + "_s");
  o << ",reason\n";
  for (const auto& r : results) {
    const auto& p = r.point;
    const auto& l = p.layout;
    o << r.index << "," << csv_field(p.model) << "," << csv_field(p.cluster) << "," << p.fidelity << "," << p.gpus
      << "," << p.gbs << "," << p.seq << "," << l.tp << "," << l.pp << "," << l.vpp << "," << l.cp << "," << l.ep << ","
      << l.dp << "," << l.mbs << "," << p.dispatcher << "," << csv_field(p.overlap) << "," << r.status << ",";
    // Only a simulated point has a step time, MFU and TFLOP/s; one that does not fit has its memory estimate.
    const bool ran = r.status == "ok";
    const bool has_memory = ran || r.status == "does_not_fit";
    o << (ran ? fmt("%.9g", r.step_time_s) : "") << "," << (ran ? fmt("%.6g", r.mfu) : "") << ","
      << (ran ? fmt("%.6g", r.tflops_per_gpu) : "") << "," << (has_memory ? fmt("%.6g", r.memory_gib) : "") << ","
      << (has_memory && r.capacity_gib > 0 ? fmt("%.6g", r.capacity_gib) : "");
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
    e["fidelity"] = g.fidelity;
    e["gpus"] = g.gpus;
    e["gbs"] = g.gbs;
    e["seq"] = g.seq;
    e["points"] = {{"ok", g.ok}, {"invalid", g.invalid}, {"does_not_fit", g.does_not_fit}, {"error", g.errors}};
    e["best_point"] = g.best ? nlohmann::ordered_json(results[*g.best].index) : nlohmann::ordered_json();
    if (g.best) {
      const Result& b = results[*g.best];
      e["best"] = {{"layout", b.point.layout.describe()},
                   {"dispatcher", b.point.dispatcher},
                   {"overlap", b.point.overlap},
                   {"step_time_s", b.step_time_s},
                   {"mfu", b.mfu},
                   {"memory_gib_per_gpu", b.memory_gib}};
    }
    nlohmann::ordered_json sp = nlohmann::ordered_json::object();
    for (const auto& [v, s] : g.speedup_vs_none) sp[v] = s;
    e["speedup_vs_none"] = sp;
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
      if (r.status != "ok" || r.point.gpus != t.schedule.world_size) continue;
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

namespace {

/// A table cell showing `shown` that sorts by `value` (html::sortable_tables_script); empty when `value` is.
std::string sort_cell(const std::optional<double>& value, const std::string& shown) {
  if (!value) return "<td data-v=\"\"></td>";
  return "<td data-v=\"" + fmt("%.9g", *value) + "\">" + escape(shown) + "</td>";
}

/// Every simulated point, ranked within its group, in one sortable table.
std::string ranked_table(const std::vector<Result>& results, const std::vector<Ranking>& rankings) {
  const auto speedups = speedups_vs_none(results);
  std::ostringstream o;
  o << "<h2>Every simulated layout, ranked</h2>\n<p class=\"note\">Rank: by step time among the points with the same "
       "model, cluster, fidelity, sequence length, batch and GPU count. Gain vs none: step(none) / step(variant) - 1 "
       "for the same layout and dispatcher. Click a header to sort by it.</p>\n"
    << html::table_begin(
           "all-points",
           {"rank", "model / cluster", "seq", "batch", "GPUs", "layout", "dispatcher", "overlap", "step time",
            "vs best", "MFU", "TFLOP/s / GPU", "memory / GPU", "capacity", "gain vs none", "point"},
           "sortable");
  for (const auto& g : rankings) {
    for (std::size_t k = 0; k < g.ranked.size(); ++k) {
      const Result& r = results[g.ranked[k]];
      const Result& best = results[g.ranked[0]];
      const std::optional<double> gain =
          speedups[g.ranked[k]] ? std::optional<double>(*speedups[g.ranked[k]] - 1) : std::nullopt;
      const std::optional<double> capacity = r.capacity_gib > 0 ? std::optional<double>(r.capacity_gib) : std::nullopt;
      const double vs_best = best.step_time_s > 0 ? r.step_time_s / best.step_time_s - 1 : 0.0;
      o << "<tr><td>" << k + 1 << "</td><td class=\"name wrap\">"
        << escape(g.model + " / " + g.cluster + " (" + g.fidelity + ")") << "</td><td>" << g.seq << "</td><td>" << g.gbs
        << "</td><td>" << g.gpus << "</td><td class=\"name\">" << escape(r.point.layout.describe()) << "</td><td>"
        << escape(r.point.dispatcher) << "</td><td>" << escape(r.point.overlap) << "</td>"
        << sort_cell(r.step_time_s, format_seconds(r.step_time_s)) << sort_cell(vs_best, fmt("%+.1f%%", 100 * vs_best))
        << sort_cell(r.mfu, fmt("%.1f%%", 100 * r.mfu)) << sort_cell(r.tflops_per_gpu, fmt("%.1f", r.tflops_per_gpu))
        << sort_cell(r.memory_gib, fmt("%.1f GiB", r.memory_gib))
        << sort_cell(capacity, capacity ? fmt("%.1f GiB", *capacity) : "")
        << sort_cell(gain, gain ? fmt("%+.1f%%", 100 * *gain) : "") << "<td>" << r.index << "</td></tr>\n";
    }
  }
  o << "</table></div>\n";
  return o.str();
}

/// The points that did not run: counted by reason, each point listed in a collapsed table below.
std::string not_run_section(const std::vector<Result>& results) {
  const auto reasons = reasons_not_run(results);
  std::size_t not_run = 0;
  for (const auto& e : reasons) not_run += e.count;
  std::ostringstream o;
  o << "<h2>Points not run</h2>\n";
  if (not_run == 0) {
    o << "<p class=\"note\">Every point was simulated.</p>\n";
    return o.str();
  }
  o << "<p>" << not_run << " points, by status and reason (numbers in a reason shown as #; the example is the first "
    << "such point).</p>\n"
    << html::table_begin("not-run-reasons", {"points", "status", "reason", "example"}, "sortable");
  for (const auto& e : reasons) {
    const Result& ex = results[e.example];
    o << "<tr><td>" << e.count << "</td><td>" << escape(e.status) << "</td><td class=\"name wrap\">" << escape(e.reason)
      << "</td><td class=\"name wrap\">" << escape("point " + std::to_string(ex.index) + ": " + ex.reason)
      << "</td></tr>\n";
  }
  o << "</table>\n<details id=\"not-run-details\"><summary>every point not run (" << not_run << ")</summary>\n"
    << html::table_begin("not-run", {"point", "model / GPUs", "layout", "overlap", "status", "reason"}, "sortable");
  std::size_t listed = 0;
  for (const auto& r : results) {
    if (r.status == "ok") continue;
    if (++listed > 500) continue;
    o << "<tr><td>" << r.index << "</td><td class=\"name\">" << escape(r.point.model) << " / " << r.point.gpus
      << "</td><td class=\"name\">" << escape(r.point.layout.describe()) << "</td><td>" << escape(r.point.overlap)
      << "</td><td>" << escape(r.status) << "</td><td class=\"name wrap\">" << escape(r.reason) << "</td></tr>\n";
  }
  o << "</table>\n";
  if (listed > 500) o << "<p class=\"note\">" << not_run - 500 << " more in the CSV and JSON lines.</p>\n";
  o << "</details>\n";
  return o.str();
}

}  // namespace

std::string render_html(const std::vector<Result>& results, const std::vector<Ranking>& rankings,
                        const std::vector<Measured>& measured, const ReportNotes& notes) {
  std::ostringstream o;
  std::set<std::string> models;
  for (const auto& r : results) models.insert(r.point.model);
  std::string title = "twinstep sweep:";
  for (const auto& m : models) title += " " + m;
  o << html::page_begin(title, kStyle);
  std::size_t ok = 0;
  for (const auto& r : results) ok += r.status == "ok";
  o << "<p>" << results.size() << " points, " << ok << " simulated, " << results.size() - ok
    << " not run (counted by reason at the end).</p>\n";
  for (const auto& name : profiles_used(results)) o << "<p>costs: " << escape(name) << "</p>\n";
  if (notes.other_points_kept > 0) {
    o << "<p class=\"note\" id=\"kept-note\">" << escape(kept_points_note(notes.other_points_kept, notes.results_file))
      << "</p>\n";
  }

  // Ranked table.
  o << "<h2>Best layout and overlap per GPU count</h2>\n<table id=\"ranking\"><tr><th>model / cluster</th><th>seq</th>"
       "<th>batch</th><th>GPUs</th><th>best layout</th><th>overlap</th><th>step time</th><th>MFU</th>"
       "<th>memory / GPU</th><th>speedup vs none</th><th>runner-up loses on</th></tr>\n";
  for (const auto& g : rankings) {
    o << "<tr><td class=\"name\">" << escape(g.model + " / " + g.cluster + " (" + g.fidelity + ")") << "</td><td>"
      << g.seq << "</td><td>" << g.gbs << "</td><td>" << g.gpus << "</td>";
    if (!g.best) {
      o << "<td class=\"name\" colspan=\"7\">no point ran (" << g.invalid << " invalid, " << g.does_not_fit
        << " do not fit, " << g.errors << " errors)</td></tr>\n";
      continue;
    }
    const Result& b = results[*g.best];
    std::string sp;
    for (const auto& [v, s] : g.speedup_vs_none) sp += v + " " + fmt("%.3fx", s) + "; ";
    o << "<td class=\"name\">" << escape(b.point.layout.describe() + " " + b.point.dispatcher) << "</td><td>"
      << escape(b.point.overlap) << "</td><td>" << escape(format_seconds(b.step_time_s)) << "</td><td>"
      << fmt("%.1f%%", 100 * b.mfu) << "</td><td>" << fmt("%.1f GiB", b.memory_gib) << "</td><td>" << escape(sp)
      << "</td><td>" << escape(g.runner_up_loses) << "</td></tr>\n";
  }
  o << "</table>\n";
  o << ranked_table(results, rankings);

  // Step time per overlap variant, best layout of each group.
  o << "<h2>Step time per overlap variant (best layout, stacked breakdown)</h2>\n";
  std::size_t chart = 0;
  for (const auto& g : rankings) {
    if (!g.best) continue;
    if (++chart > 24) {
      o << "<p class=\"note\">(further groups omitted; the CSV has every point)</p>\n";
      break;
    }
    const Result& b = results[*g.best];
    std::vector<std::pair<std::string, const Result*>> rows;
    for (const auto& r : results) {
      if (r.status == "ok" && group_of(r) == group_of(b) && layout_id(r) == layout_id(b)) {
        rows.emplace_back(r.point.overlap, &r);
      }
    }
    o << "<h3>"
      << escape(g.model + " on " + std::to_string(g.gpus) + " GPUs of " + g.cluster + ", batch " +
                std::to_string(g.gbs) + ", seq " + std::to_string(g.seq) + ": " + b.point.layout.describe())
      << "</h3>\n"
      << stacked_bars("variants-" + std::to_string(chart), rows);
  }

  // Scaling curves: per (model, cluster, fidelity, seq, gbs), best step time over layouts per overlap variant.
  o << "<h2>Scaling over GPU count (best layout per variant)</h2>\n";
  using CurveKey = std::tuple<std::string, std::string, std::string, std::uint32_t, std::uint32_t>;
  std::map<CurveKey, std::map<std::string, std::map<std::uint32_t, double>>> curves;
  std::map<CurveKey, std::vector<std::string>> variant_order;
  for (const auto& r : results) {
    if (r.status != "ok") continue;
    const CurveKey k{r.point.model, r.point.cluster, r.point.fidelity, r.point.seq, r.point.gbs};
    auto& vs = variant_order[k];
    if (std::find(vs.begin(), vs.end(), r.point.overlap) == vs.end()) vs.push_back(r.point.overlap);
    auto& cell = curves[k][r.point.overlap];
    const auto it = cell.find(r.point.gpus);
    if (it == cell.end() || r.step_time_s < it->second) cell[r.point.gpus] = r.step_time_s;
  }
  chart = 0;
  for (const auto& [k, by_variant] : curves) {
    std::set<std::uint32_t> xs_set;
    std::vector<std::pair<std::string, std::map<std::uint32_t, double>>> series;
    for (const auto& v : variant_order[k]) {
      series.emplace_back(v, by_variant.at(v));
      for (const auto& [x, y] : by_variant.at(v)) xs_set.insert(x);
    }
    o << "<h3>"
      << escape(std::get<0>(k) + " on " + std::get<1>(k) + " (" + std::get<2>(k) + "), seq " +
                std::to_string(std::get<3>(k)) + ", batch " + std::to_string(std::get<4>(k)))
      << "</h3>\n"
      << line_chart("scaling-" + std::to_string(++chart), std::vector<std::uint32_t>(xs_set.begin(), xs_set.end()),
                    series);
  }

  // Heat maps: per (model, cluster, fidelity, seq, gpus): rows EP, columns global batch; cell = benefit of the best
  // overlap variant against none on the fastest layout with that EP and batch.
  o << "<h2>Overlap benefit over EP and global batch</h2>\n<p class=\"note\">Cell: step(none) / step(best variant) - 1 "
       "on the fastest layout with that EP size and batch (same layout for both).</p>\n";
  using MapKey = std::tuple<std::string, std::string, std::string, std::uint32_t, std::uint32_t>;
  std::map<MapKey, std::map<std::pair<std::uint32_t, std::uint32_t>, std::pair<double, std::string>>> maps;
  std::map<MapKey, std::pair<std::set<std::uint32_t>, std::set<std::uint32_t>>> axes;
  {
    // Per layout (and everything but the overlap): step of none and of the best other variant.
    std::map<std::string, std::pair<std::optional<std::size_t>, std::optional<std::size_t>>> per_layout;
    for (std::size_t i = 0; i < results.size(); ++i) {
      const Result& r = results[i];
      if (r.status != "ok") continue;
      Point p = r.point;
      p.overlap = "";
      auto& [none_i, best_i] = per_layout[point_key(p)];
      if (r.point.overlap == "none") {
        none_i = i;
      } else if (!best_i || better(r, results[*best_i])) {
        best_i = i;
      }
    }
    std::map<std::pair<MapKey, std::pair<std::uint32_t, std::uint32_t>>, std::size_t> fastest;  // -> none index
    for (const auto& [k, pair] : per_layout) {
      const auto& [none_i, best_i] = pair;
      if (!none_i || !best_i) continue;
      const Result& n = results[*none_i];
      const MapKey mk{n.point.model, n.point.cluster, n.point.fidelity, n.point.seq, n.point.gpus};
      const auto cell = std::make_pair(n.point.layout.ep, n.point.gbs);
      const double step = std::min(n.step_time_s, results[*best_i].step_time_s);
      const auto f = fastest.find({mk, cell});
      if (f != fastest.end()) {
        const Result& old = results[f->second];
        Point op = old.point;
        op.overlap = "";
        const auto& old_pair = per_layout[point_key(op)];
        const double old_step = std::min(old.step_time_s, results[*old_pair.second].step_time_s);
        if (old_step < step || (old_step == step && old.index < n.index)) continue;
      }
      fastest[{mk, cell}] = *none_i;
      const Result& b = results[*best_i];
      maps[mk][cell] = {n.step_time_s / b.step_time_s - 1.0, n.point.layout.describe() + ": none " +
                                                                 format_seconds(n.step_time_s) + ", " +
                                                                 b.point.overlap + " " + format_seconds(b.step_time_s)};
      axes[mk].first.insert(cell.first);
      axes[mk].second.insert(cell.second);
    }
  }
  if (maps.empty()) {
    o << "<p class=\"note\">No heat map: it needs the variant \"none\" and at least one other variant.</p>\n";
  }
  chart = 0;
  for (const auto& [mk, cells] : maps) {
    const auto& [eps, gbss] = axes[mk];
    o << "<h3>"
      << escape(std::get<0>(mk) + " on " + std::to_string(std::get<4>(mk)) + " GPUs of " + std::get<1>(mk) + " (" +
                std::get<2>(mk) + "), seq " + std::to_string(std::get<3>(mk)))
      << "</h3>\n"
      << heat_map("heat-" + std::to_string(++chart), std::vector<std::uint32_t>(eps.begin(), eps.end()), "EP",
                  std::vector<std::uint32_t>(gbss.begin(), gbss.end()), "global batch", cells);
  }

  // Predicted vs measured.
  if (!measured.empty()) {
    o << "<h2>Predicted vs measured</h2>\n";
    std::vector<std::pair<double, double>> pts;
    o << "<table id=\"measured\"><tr><th>measured trace</th><th>point</th><th>measured</th><th>predicted</th>"
         "<th>error</th></tr>\n";
    for (const auto& m : measured) {
      o << "<tr><td class=\"name\">" << escape(m.path) << "</td>";
      if (m.match) {
        const Result& r = results[*m.match];
        pts.emplace_back(m.step_time_s, r.step_time_s);
        o << "<td class=\"name\">" << escape(r.point.layout.describe() + " " + r.point.overlap) << "</td><td>"
          << escape(format_seconds(m.step_time_s)) << "</td><td>" << escape(format_seconds(r.step_time_s))
          << "</td><td>" << fmt("%+.1f%%", m.step_time_s > 0 ? 100 * (r.step_time_s / m.step_time_s - 1) : 0.0)
          << "</td></tr>\n";
      } else {
        o << "<td colspan=\"4\">no point of this sweep lowers to the same schedule (" << escape(m.fingerprint)
          << ")</td></tr>\n";
      }
    }
    o << "</table>\n";
    if (!pts.empty()) o << scatter("measured-scatter", pts);
  }

  o << not_run_section(results);
  o << html::sortable_tables_script() << html::page_end();
  return o.str();
}

}  // namespace twinstep::sweep
