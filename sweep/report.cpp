// Ranking, exports and the HTML report of a sweep. The charts are inline SVG drawn here (stacked bars, line chart,
// heat map, scatter); strings from inputs go through html::escape. Fixed number formats, ordered maps: the same
// results give the same bytes.
#include "sweep/report.hpp"

#include <algorithm>
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

std::string html_escape(std::string_view text) { return html::escape(text); }

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}
std::string px(double v) { return fmt("%.1f", v); }

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

constexpr const char* kStyle = R"(
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px auto; max-width: 1150px; color: #222; }
h1 { font-size: 22px; } h2 { font-size: 17px; margin-top: 28px; border-bottom: 1px solid #ddd; }
h3 { font-size: 15px; margin-bottom: 2px; }
table { border-collapse: collapse; margin: 8px 0; }
th, td { padding: 3px 8px; border-bottom: 1px solid #eee; text-align: right; }
th:first-child, td:first-child, td.name { text-align: left; }
td.name { font-family: ui-monospace, monospace; }
.chart { display: block; margin: 8px 0; font-size: 12px; }
.chart text { fill: #444; font-size: 11px; }
.note { color: #666; }
)";

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
  o << "<svg class=\"chart\" id=\"" << id << "\" width=\"960\" height=\"" << px(height) << "\" role=\"img\">\n";
  double y = top;
  for (const auto& [name, r] : rows) {
    o << "<text x=\"" << px(left - 6) << "\" y=\"" << px(y + 14) << "\" text-anchor=\"end\">" << html_escape(name)
      << "</text>\n";
    double x = left;
    std::size_t ci = 0;
    for (const auto& c : cats) {
      const auto it = r->breakdown_s.find(c);
      const double s = it == r->breakdown_s.end() ? 0 : it->second;
      const double w = width * s / max_s;
      if (w > 0) {
        o << "<rect x=\"" << px(x) << "\" y=\"" << px(y) << "\" width=\"" << px(w) << "\" height=\"" << px(bar_h)
          << "\" fill=\"" << category_color(c, ci) << "\"><title>" << html_escape(c) << ": "
          << html_escape(format_seconds(s)) << "</title></rect>\n";
      }
      x += w;
      ++ci;
    }
    o << "<text x=\"" << px(x + 6) << "\" y=\"" << px(y + 14) << "\">" << html_escape(format_seconds(r->step_time_s))
      << "</text>\n";
    y += bar_h + gap;
  }
  double lx = left;
  std::size_t ci = 0;
  for (const auto& c : cats) {
    o << "<rect x=\"" << px(lx) << "\" y=\"" << px(y + 12) << "\" width=\"10\" height=\"10\" fill=\""
      << category_color(c, ci++) << "\"/><text x=\"" << px(lx + 14) << "\" y=\"" << px(y + 21) << "\">"
      << html_escape(c) << "</text>\n";
    lx += 24 + 7.0 * static_cast<double>(c.size());
  }
  o << "</svg>\n";
  return o.str();
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
  o << "<svg class=\"chart\" id=\"" << id << "\" width=\"960\" height=\"" << px(top + h + 50) << "\" role=\"img\">\n";
  o << "<line x1=\"" << px(left) << "\" y1=\"" << px(top + h) << "\" x2=\"" << px(left + w) << "\" y2=\"" << px(top + h)
    << "\" stroke=\"#333\"/>\n<line x1=\"" << px(left) << "\" y1=\"" << px(top) << "\" x2=\"" << px(left) << "\" y2=\""
    << px(top + h) << "\" stroke=\"#333\"/>\n";
  for (int t = 0; t <= 4; ++t) {
    const double v = max_y * 1.1 * t / 4;
    const double y = top + h - h * t / 4.0;
    o << "<line x1=\"" << px(left) << "\" y1=\"" << px(y) << "\" x2=\"" << px(left + w) << "\" y2=\"" << px(y)
      << "\" stroke=\"#eee\"/><text x=\"" << px(left - 6) << "\" y=\"" << px(y + 4) << "\" text-anchor=\"end\">"
      << html_escape(format_seconds(v)) << "</text>\n";
  }
  auto xpos = [&](std::size_t i) {
    return left + (xs.size() == 1 ? w / 2 : w * static_cast<double>(i) / (xs.size() - 1));
  };
  for (std::size_t i = 0; i < xs.size(); ++i) {
    o << "<text x=\"" << px(xpos(i)) << "\" y=\"" << px(top + h + 16) << "\" text-anchor=\"middle\">" << xs[i]
      << "</text>\n";
  }
  o << "<text x=\"" << px(left + w / 2) << "\" y=\"" << px(top + h + 34) << "\" text-anchor=\"middle\">GPUs</text>\n";
  std::size_t si = 0;
  for (const auto& [name, pts] : series) {
    std::string poly;
    for (std::size_t i = 0; i < xs.size(); ++i) {
      const auto it = pts.find(xs[i]);
      if (it == pts.end()) continue;
      const double x = xpos(i), y = top + h - h * it->second / (max_y * 1.1);
      poly += px(x) + "," + px(y) + " ";
      o << "<circle cx=\"" << px(x) << "\" cy=\"" << px(y) << "\" r=\"3.5\" fill=\"" << series_color(si) << "\"><title>"
        << html_escape(name) << " @ " << xs[i] << " GPUs: " << html_escape(format_seconds(it->second))
        << "</title></circle>\n";
    }
    if (!poly.empty()) {
      o << "<polyline points=\"" << poly << "\" fill=\"none\" stroke=\"" << series_color(si)
        << "\" stroke-width=\"2\"/>\n";
    }
    const double ly = top + 10 + 16.0 * static_cast<double>(si);
    o << "<rect x=\"" << px(left + w + 20) << "\" y=\"" << px(ly - 9) << "\" width=\"10\" height=\"10\" fill=\""
      << series_color(si) << "\"/><text x=\"" << px(left + w + 34) << "\" y=\"" << px(ly) << "\">" << html_escape(name)
      << "</text>\n";
    ++si;
  }
  o << "</svg>\n";
  return o.str();
}

/// Heat map: rows x cols of values (NaN = no data), white -> green by value / max.
std::string heat_map(const std::string& id, const std::vector<std::uint32_t>& rows, const std::string& row_label,
                     const std::vector<std::uint32_t>& cols, const std::string& col_label,
                     const std::map<std::pair<std::uint32_t, std::uint32_t>, std::pair<double, std::string>>& cells) {
  double max_v = 0;
  for (const auto& [k, v] : cells) max_v = std::max(max_v, v.first);
  const double left = 90, top = 30, cw = 90, ch = 30;
  std::ostringstream o;
  o << "<svg class=\"chart\" id=\"" << id << "\" width=\"" << px(left + cw * cols.size() + 20) << "\" height=\""
    << px(top + ch * rows.size() + 30) << "\" role=\"img\">\n";
  o << "<text x=\"" << px(left) << "\" y=\"12\">" << html_escape(col_label) << " &#8594;</text>\n";
  for (std::size_t c = 0; c < cols.size(); ++c) {
    o << "<text x=\"" << px(left + cw * (c + 0.5)) << "\" y=\"" << px(top - 4) << "\" text-anchor=\"middle\">"
      << cols[c] << "</text>\n";
  }
  for (std::size_t r = 0; r < rows.size(); ++r) {
    o << "<text x=\"" << px(left - 6) << "\" y=\"" << px(top + ch * (r + 0.5) + 4) << "\" text-anchor=\"end\">"
      << html_escape(row_label) << " " << rows[r] << "</text>\n";
    for (std::size_t c = 0; c < cols.size(); ++c) {
      const auto it = cells.find({rows[r], cols[c]});
      const double x = left + cw * c, y = top + ch * r;
      if (it == cells.end()) {
        o << "<rect x=\"" << px(x) << "\" y=\"" << px(y) << "\" width=\"" << px(cw - 2) << "\" height=\"" << px(ch - 2)
          << "\" fill=\"#f4f4f4\"><title>no valid point</title></rect>\n";
        continue;
      }
      const double t = max_v > 0 ? std::clamp(it->second.first / max_v, 0.0, 1.0) : 0.0;
      const int g = static_cast<int>(255 - 120 * t), rb = static_cast<int>(255 - 200 * t);
      char color[16];
      std::snprintf(color, sizeof color, "#%02x%02x%02x", rb, g, rb);
      o << "<rect x=\"" << px(x) << "\" y=\"" << px(y) << "\" width=\"" << px(cw - 2) << "\" height=\"" << px(ch - 2)
        << "\" fill=\"" << color << "\"><title>" << html_escape(it->second.second) << "</title></rect>\n";
      o << "<text x=\"" << px(x + cw / 2 - 1) << "\" y=\"" << px(y + ch / 2 + 3) << "\" text-anchor=\"middle\">"
        << fmt("%+.1f%%", 100.0 * it->second.first) << "</text>\n";
    }
  }
  o << "</svg>\n";
  return o.str();
}

std::string scatter(const std::string& id, const std::vector<std::pair<double, double>>& pts) {
  double max_v = 0;
  for (const auto& [a, b] : pts) max_v = std::max({max_v, a, b});
  if (max_v <= 0) max_v = 1;
  max_v *= 1.1;
  const double left = 80, top = 10, s = 300;
  std::ostringstream o;
  o << "<svg class=\"chart\" id=\"" << id << "\" width=\"" << px(left + s + 40) << "\" height=\"" << px(top + s + 50)
    << "\" role=\"img\">\n<rect x=\"" << px(left) << "\" y=\"" << px(top) << "\" width=\"" << px(s) << "\" height=\""
    << px(s) << "\" fill=\"none\" stroke=\"#999\"/>\n<line x1=\"" << px(left) << "\" y1=\"" << px(top + s) << "\" x2=\""
    << px(left + s) << "\" y2=\"" << px(top) << "\" stroke=\"#999\" stroke-dasharray=\"4 3\"/>\n";
  o << "<text x=\"" << px(left + s / 2) << "\" y=\"" << px(top + s + 18) << "\" text-anchor=\"middle\">measured "
    << html_escape(format_seconds(max_v)) << " full scale</text>\n<text x=\"" << px(left - 6) << "\" y=\""
    << px(top + s / 2) << "\" text-anchor=\"end\">predicted</text>\n";
  for (const auto& [meas, pred] : pts) {
    o << "<circle cx=\"" << px(left + s * meas / max_v) << "\" cy=\"" << px(top + s - s * pred / max_v)
      << "\" r=\"4\" fill=\"#3b6fb6\"/>\n";
  }
  o << "</svg>\n";
  return o.str();
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
    out.push_back(std::move(g));
  }
  return out;
}

std::string format_table(const std::vector<Ranking>& rankings, const std::vector<Result>& results) {
  std::ostringstream o;
  std::string last_head;
  for (const auto& g : rankings) {
    const std::string head = g.model + " on " + g.cluster + " (" + g.fidelity + "), seq " + std::to_string(g.seq) +
                             ", global batch " + std::to_string(g.gbs);
    if (head != last_head) {
      o << "\n" << head << "\n";
      char buf[256];
      std::snprintf(buf, sizeof buf, "  %6s  %-38s %-16s %11s %6s %9s  %s\n", "GPUs", "best layout", "overlap",
                    "step time", "MFU", "mem/GPU", "points ok/invalid/no-fit/error");
      o << buf;
      last_head = head;
    }
    char buf[512];
    if (!g.best) {
      std::snprintf(buf, sizeof buf, "  %6u  %-38s %-16s %11s %6s %9s  %zu/%zu/%zu/%zu\n", g.gpus, "(no point ran)", "",
                    "", "", "", g.ok, g.invalid, g.does_not_fit, g.errors);
      o << buf;
      continue;
    }
    const Result& b = results[*g.best];
    const std::string layout =
        b.point.layout.describe() +
        (b.point.dispatcher != "alltoall" || b.point.layout.ep > 1 ? " " + b.point.dispatcher : "");
    std::snprintf(buf, sizeof buf, "  %6u  %-38s %-16s %11s %5.1f%% %7.1fGiB  %zu/%zu/%zu/%zu\n", g.gpus,
                  layout.c_str(), b.point.overlap.c_str(), format_seconds(b.step_time_s).c_str(), 100.0 * b.mfu,
                  b.memory_gib, g.ok, g.invalid, g.does_not_fit, g.errors);
    o << buf;
    if (!g.speedup_vs_none.empty()) {
      o << "          speedup vs none:";
      for (const auto& [v, s] : g.speedup_vs_none) o << " " << v << " " << fmt("%.3fx", s);
      o << "\n";
    }
    if (g.runner_up) {
      const Result& r = results[*g.runner_up];
      o << "          runner-up: " << r.point.layout.describe() << " " << r.point.overlap << " "
        << format_seconds(r.step_time_s) << " (" << fmt("%+.1f%%", 100.0 * (r.step_time_s / b.step_time_s - 1))
        << "), loses on " << g.runner_up_loses << "\n";
    }
  }
  // Points that did not run, by reason (first 160 characters), most frequent first.
  std::map<std::string, std::size_t> reasons;
  for (const auto& r : results) {
    if (r.status != "ok") reasons[r.status + ": " + r.reason.substr(0, 160)]++;
  }
  if (!reasons.empty()) {
    std::vector<std::pair<std::string, std::size_t>> sorted(reasons.begin(), reasons.end());
    std::stable_sort(sorted.begin(), sorted.end(), [](const auto& a, const auto& b) { return a.second > b.second; });
    o << "\npoints not run ("
      << std::to_string(results.size() -
                        [&] {
                          std::size_t ok = 0;
                          for (const auto& r : results) ok += r.status == "ok";
                          return ok;
                        }())
      << "), by reason (every point is in the JSON lines and CSV):\n";
    std::size_t shown = 0;
    for (const auto& [why, n] : sorted) {
      if (++shown > 25) {
        o << "  ... " << sorted.size() - 25 << " more reasons\n";
        break;
      }
      o << "  " << n << " x " << why << "\n";
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
       "tflops_per_gpu,memory_gib_per_gpu";
  for (const auto& c : cats) o << "," << csv_field(c + "_s");
  o << ",reason\n";
  for (const auto& r : results) {
    const auto& p = r.point;
    const auto& l = p.layout;
    o << r.index << "," << csv_field(p.model) << "," << csv_field(p.cluster) << "," << p.fidelity << "," << p.gpus
      << "," << p.gbs << "," << p.seq << "," << l.tp << "," << l.pp << "," << l.vpp << "," << l.cp << "," << l.ep << ","
      << l.dp << "," << l.mbs << "," << p.dispatcher << "," << csv_field(p.overlap) << "," << r.status << ","
      << fmt("%.9g", r.step_time_s) << "," << fmt("%.6g", r.mfu) << "," << fmt("%.6g", r.tflops_per_gpu) << ","
      << fmt("%.6g", r.memory_gib);
    for (const auto& c : cats) {
      const auto it = r.breakdown_s.find(c);
      o << "," << (it == r.breakdown_s.end() ? std::string() : fmt("%.9g", it->second));
    }
    o << "," << csv_field(r.reason) << "\n";
  }
  return o.str();
}

std::string to_json(const std::vector<Ranking>& rankings, const std::vector<Result>& results) {
  nlohmann::ordered_json j;
  j["schema_version"] = 1;
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

std::vector<Measured> read_measured(const std::string& dir, const std::vector<Result>& results) {
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) {
    throw Error("--measured " + dir + ": not a folder; give a folder of measured trace JSON files");
  }
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

std::string render_html(const std::vector<Result>& results, const std::vector<Ranking>& rankings,
                        const std::vector<Measured>& measured) {
  std::ostringstream o;
  std::set<std::string> models;
  for (const auto& r : results) models.insert(r.point.model);
  std::string title = "twinstep sweep:";
  for (const auto& m : models) title += " " + m;
  o << "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>" << html_escape(title)
    << "</title>\n<style>" << kStyle << "</style>\n</head>\n<body>\n<h1>" << html_escape(title) << "</h1>\n";
  std::size_t ok = 0;
  for (const auto& r : results) ok += r.status == "ok";
  o << "<p>" << results.size() << " points, " << ok << " simulated, " << results.size() - ok
    << " not run (listed at the end with the reason).</p>\n";

  // Ranked table.
  o << "<h2>Best layout and overlap per GPU count</h2>\n<table id=\"ranking\"><tr><th>model / cluster</th><th>seq</th>"
       "<th>batch</th><th>GPUs</th><th>best layout</th><th>overlap</th><th>step time</th><th>MFU</th>"
       "<th>memory / GPU</th><th>speedup vs none</th><th>runner-up loses on</th></tr>\n";
  for (const auto& g : rankings) {
    o << "<tr><td class=\"name\">" << html_escape(g.model + " / " + g.cluster + " (" + g.fidelity + ")") << "</td><td>"
      << g.seq << "</td><td>" << g.gbs << "</td><td>" << g.gpus << "</td>";
    if (!g.best) {
      o << "<td class=\"name\" colspan=\"7\">no point ran (" << g.invalid << " invalid, " << g.does_not_fit
        << " do not fit, " << g.errors << " errors)</td></tr>\n";
      continue;
    }
    const Result& b = results[*g.best];
    std::string sp;
    for (const auto& [v, s] : g.speedup_vs_none) sp += v + " " + fmt("%.3fx", s) + "; ";
    o << "<td class=\"name\">" << html_escape(b.point.layout.describe() + " " + b.point.dispatcher) << "</td><td>"
      << html_escape(b.point.overlap) << "</td><td>" << html_escape(format_seconds(b.step_time_s)) << "</td><td>"
      << fmt("%.1f%%", 100 * b.mfu) << "</td><td>" << fmt("%.1f GiB", b.memory_gib) << "</td><td>" << html_escape(sp)
      << "</td><td>" << html_escape(g.runner_up_loses) << "</td></tr>\n";
  }
  o << "</table>\n";

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
      << html_escape(g.model + " on " + std::to_string(g.gpus) + " GPUs of " + g.cluster + ", batch " +
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
      << html_escape(std::get<0>(k) + " on " + std::get<1>(k) + " (" + std::get<2>(k) + "), seq " +
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
      << html_escape(std::get<0>(mk) + " on " + std::to_string(std::get<4>(mk)) + " GPUs of " + std::get<1>(mk) + " (" +
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
      o << "<tr><td class=\"name\">" << html_escape(m.path) << "</td>";
      if (m.match) {
        const Result& r = results[*m.match];
        pts.emplace_back(m.step_time_s, r.step_time_s);
        o << "<td class=\"name\">" << html_escape(r.point.layout.describe() + " " + r.point.overlap) << "</td><td>"
          << html_escape(format_seconds(m.step_time_s)) << "</td><td>" << html_escape(format_seconds(r.step_time_s))
          << "</td><td>" << fmt("%+.1f%%", m.step_time_s > 0 ? 100 * (r.step_time_s / m.step_time_s - 1) : 0.0)
          << "</td></tr>\n";
      } else {
        o << "<td colspan=\"4\">no point of this sweep lowers to the same schedule (" << html_escape(m.fingerprint)
          << ")</td></tr>\n";
      }
    }
    o << "</table>\n";
    if (!pts.empty()) o << scatter("measured-scatter", pts);
  }

  // Not run.
  o << "<h2>Points not run</h2>\n<table id=\"not-run\"><tr><th>point</th><th>model / GPUs</th><th>layout</th>"
       "<th>overlap</th><th>status</th><th>reason</th></tr>\n";
  std::size_t listed = 0, not_run = 0;
  for (const auto& r : results) {
    if (r.status == "ok") continue;
    ++not_run;
    if (++listed > 500) continue;
    o << "<tr><td>" << r.index << "</td><td class=\"name\">" << html_escape(r.point.model) << " / " << r.point.gpus
      << "</td><td class=\"name\">" << html_escape(r.point.layout.describe()) << "</td><td>"
      << html_escape(r.point.overlap) << "</td><td>" << html_escape(r.status) << "</td><td class=\"name\">"
      << html_escape(r.reason) << "</td></tr>\n";
  }
  o << "</table>\n";
  if (listed > 500) o << "<p class=\"note\">" << not_run - 500 << " more in the CSV and JSON lines.</p>\n";
  o << "</body>\n</html>\n";
  return o.str();
}

}  // namespace twinstep::sweep
