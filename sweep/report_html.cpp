// The HTML report of a sweep (render_html): tables, and charts (stacked bars, line chart, heat map, scatter) as
// inline SVG built from common/html.hpp's shapes, which escape every string from the inputs; the ranked tables sort
// in the browser with its inline script. Fixed number formats, ordered maps: the same results give the same bytes.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <tuple>

#include "common/html.hpp"
#include "common/units.hpp"
#include "schedule/analysis.hpp"
#include "sim/simulate.hpp"
#include "sweep/report.hpp"

namespace twinstep::sweep {
namespace {

using html::escape;
using html::px;
std::string fmt(const char* f, double v) { return html::format(f, v); }

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
            "vs best", "MFU", "TFLOP/s / GPU", "memory / GPU", "usable", "gain vs none", "point"},
           "sortable");
  for (const auto& g : rankings) {
    for (std::size_t k = 0; k < g.ranked.size(); ++k) {
      const Result& r = results[g.ranked[k]];
      const Result& best = results[g.ranked[0]];
      const std::optional<double> gain =
          speedups[g.ranked[k]] ? std::optional<double>(*speedups[g.ranked[k]] - 1) : std::nullopt;
      const std::optional<double> capacity = r.usable_gib > 0 ? std::optional<double>(r.usable_gib) : std::nullopt;
      const double vs_best = best.step_time_s > 0 ? r.step_time_s / best.step_time_s - 1 : 0.0;
      o << "<tr><td>" << k + 1 << "</td><td class=\"name wrap\">"
        << escape(g.model + " / " + g.cluster + " (" + to_string(g.fidelity) + ")") << "</td><td>" << g.seq
        << "</td><td>" << g.gbs << "</td><td>" << g.gpus << "</td><td class=\"name\">"
        << escape(r.point.layout.describe()) << "</td><td>" << escape(to_string(r.point.dispatcher)) << "</td><td>"
        << escape(models::to_string(r.point.overlap)) << "</td>"
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
    o << "<tr><td>" << e.count << "</td><td>" << escape(to_string(e.status)) << "</td><td class=\"name wrap\">"
      << escape(e.reason) << "</td><td class=\"name wrap\">"
      << escape("point " + std::to_string(ex.index) + ": " + ex.reason) << "</td></tr>\n";
  }
  o << "</table>\n<details id=\"not-run-details\"><summary>every point not run (" << not_run << ")</summary>\n"
    << html::table_begin("not-run", {"point", "model / GPUs", "layout", "overlap", "status", "reason"}, "sortable");
  std::size_t listed = 0;
  for (const auto& r : results) {
    if (r.status == PointStatus::kOk) continue;
    if (++listed > 500) continue;
    o << "<tr><td>" << r.index << "</td><td class=\"name\">" << escape(r.point.model) << " / " << r.point.gpus
      << "</td><td class=\"name\">" << escape(r.point.layout.describe()) << "</td><td>"
      << escape(models::to_string(r.point.overlap)) << "</td><td>" << escape(to_string(r.status))
      << "</td><td class=\"name wrap\">" << escape(r.reason) << "</td></tr>\n";
  }
  o << "</table>\n";
  if (listed > 500) o << "<p class=\"note\">" << not_run - 500 << " more in the CSV and JSON lines.</p>\n";
  o << "</details>\n";
  return o.str();
}

/// The best layout and overlap of each group, with the speedups and what the runner-up loses on.
std::string best_table(const std::vector<Result>& results, const std::vector<Ranking>& rankings) {
  std::ostringstream o;
  // Ranked table.
  o << "<h2>Best layout and overlap per GPU count</h2>\n<table id=\"ranking\"><tr><th>model / cluster</th><th>seq</th>"
       "<th>batch</th><th>GPUs</th><th>best layout</th><th>overlap</th><th>step time</th><th>MFU</th>"
       "<th>memory / GPU</th><th>speedup vs none</th><th>runner-up loses on</th></tr>\n";
  for (const auto& g : rankings) {
    o << "<tr><td class=\"name\">" << escape(g.model + " / " + g.cluster + " (" + to_string(g.fidelity) + ")")
      << "</td><td>" << g.seq << "</td><td>" << g.gbs << "</td><td>" << g.gpus << "</td>";
    if (!g.best) {
      o << "<td class=\"name\" colspan=\"7\">no point ran (" << g.invalid << " invalid, " << g.does_not_fit
        << " do not fit, " << g.cannot_win << " cannot win, " << g.errors << " errors)</td></tr>\n";
      continue;
    }
    const Result& b = results[*g.best];
    std::string sp;
    for (const auto& [v, s] : g.speedup_vs_none) sp += v + (g.none_bound_s > 0 ? " >= " : " ") + fmt("%.3fx", s) + "; ";
    o << "<td class=\"name\">" << escape(b.point.layout.describe() + " " + to_string(b.point.dispatcher)) << "</td><td>"
      << escape(models::to_string(b.point.overlap)) << "</td><td>" << escape(format_seconds(b.step_time_s))
      << "</td><td>" << fmt("%.1f%%", 100 * b.mfu) << "</td><td>" << fmt("%.1f GiB", b.memory_gib) << "</td><td>"
      << escape(sp) << "</td><td>" << escape(g.runner_up_loses) << "</td></tr>\n";
  }
  o << "</table>\n";
  return o.str();
}

/// Step time per overlap variant on the best layout of each group (stacked breakdown), 24 groups at most.
std::string variant_charts(const std::vector<Result>& results, const std::vector<Ranking>& rankings) {
  std::ostringstream o;
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
      if (r.status == PointStatus::kOk && group_of(r) == group_of(b) && layout_id(r) == layout_id(b)) {
        rows.emplace_back(models::to_string(r.point.overlap), &r);
      }
    }
    o << "<h3>"
      << escape(g.model + " on " + std::to_string(g.gpus) + " GPUs of " + g.cluster + ", batch " +
                std::to_string(g.gbs) + ", seq " + std::to_string(g.seq) + ": " + b.point.layout.describe())
      << "</h3>\n"
      << stacked_bars("variants-" + std::to_string(chart), rows);
  }
  return o.str();
}

/// Scaling curves: per (model, cluster, fidelity, seq, gbs), best step time over layouts per overlap variant.
std::string scaling_curves(const std::vector<Result>& results) {
  std::ostringstream o;
  // Scaling curves: per (model, cluster, fidelity, seq, gbs), best step time over layouts per overlap variant.
  o << "<h2>Scaling over GPU count (best layout per variant)</h2>\n";
  using CurveKey = std::tuple<std::string, std::string, sim::Fidelity, std::uint32_t, std::uint32_t>;
  std::map<CurveKey, std::map<std::string, std::map<std::uint32_t, double>>> curves;
  std::map<CurveKey, std::vector<std::string>> variant_order;
  for (const auto& r : results) {
    if (r.status != PointStatus::kOk) continue;
    const CurveKey k{r.point.model, r.point.cluster, r.point.fidelity, r.point.seq, r.point.gbs};
    auto& vs = variant_order[k];
    const std::string variant = models::to_string(r.point.overlap);
    if (std::find(vs.begin(), vs.end(), variant) == vs.end()) vs.push_back(variant);
    auto& cell = curves[k][variant];
    const auto it = cell.find(r.point.gpus);
    if (it == cell.end() || r.step_time_s < it->second) cell[r.point.gpus] = r.step_time_s;
  }
  std::size_t chart = 0;
  for (const auto& [k, by_variant] : curves) {
    std::set<std::uint32_t> xs_set;
    std::vector<std::pair<std::string, std::map<std::uint32_t, double>>> series;
    for (const auto& v : variant_order[k]) {
      series.emplace_back(v, by_variant.at(v));
      for (const auto& [x, y] : by_variant.at(v)) xs_set.insert(x);
    }
    o << "<h3>"
      << escape(std::get<0>(k) + " on " + std::get<1>(k) + " (" + to_string(std::get<2>(k)) + "), seq " +
                std::to_string(std::get<3>(k)) + ", batch " + std::to_string(std::get<4>(k)))
      << "</h3>\n"
      << line_chart("scaling-" + std::to_string(++chart), std::vector<std::uint32_t>(xs_set.begin(), xs_set.end()),
                    series);
  }
  return o.str();
}

/// Heat maps of the overlap benefit over EP and global batch.
std::string heat_maps(const std::vector<Result>& results) {
  std::ostringstream o;
  // Heat maps: per (model, cluster, fidelity, seq, gpus): rows EP, columns global batch; cell = benefit of the best
  // overlap variant against none on the fastest layout with that EP and batch.
  o << "<h2>Overlap benefit over EP and global batch</h2>\n<p class=\"note\">Cell: step(none) / step(best variant) - 1 "
       "on the fastest layout with that EP size and batch (same layout for both).</p>\n";
  using MapKey = std::tuple<std::string, std::string, sim::Fidelity, std::uint32_t, std::uint32_t>;
  std::map<MapKey, std::map<std::pair<std::uint32_t, std::uint32_t>, std::pair<double, std::string>>> maps;
  std::map<MapKey, std::pair<std::set<std::uint32_t>, std::set<std::uint32_t>>> axes;
  {
    // Per layout (and everything but the overlap): step of none and of the best other variant.
    std::map<std::string, std::pair<std::optional<std::size_t>, std::optional<std::size_t>>> per_layout;
    for (std::size_t i = 0; i < results.size(); ++i) {
      const Result& r = results[i];
      if (r.status != PointStatus::kOk) continue;
      Point p = r.point;
      p.overlap = {};
      auto& [none_i, best_i] = per_layout[point_key(p)];
      if (r.point.overlap.none()) {
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
        op.overlap = {};
        const auto& old_pair = per_layout[point_key(op)];
        const double old_step = std::min(old.step_time_s, results[*old_pair.second].step_time_s);
        if (old_step < step || (old_step == step && old.index < n.index)) continue;
      }
      fastest[{mk, cell}] = *none_i;
      const Result& b = results[*best_i];
      maps[mk][cell] = {n.step_time_s / b.step_time_s - 1.0,
                        n.point.layout.describe() + ": none " + format_seconds(n.step_time_s) + ", " +
                            models::to_string(b.point.overlap) + " " + format_seconds(b.step_time_s)};
      axes[mk].first.insert(cell.first);
      axes[mk].second.insert(cell.second);
    }
  }
  if (maps.empty()) {
    o << "<p class=\"note\">No heat map: it needs the variant \"none\" and at least one other variant.</p>\n";
  }
  std::size_t chart = 0;
  for (const auto& [mk, cells] : maps) {
    const auto& [eps, gbss] = axes[mk];
    o << "<h3>"
      << escape(std::get<0>(mk) + " on " + std::to_string(std::get<4>(mk)) + " GPUs of " + std::get<1>(mk) + " (" +
                to_string(std::get<2>(mk)) + "), seq " + std::to_string(std::get<3>(mk)))
      << "</h3>\n"
      << heat_map("heat-" + std::to_string(++chart), std::vector<std::uint32_t>(eps.begin(), eps.end()), "EP",
                  std::vector<std::uint32_t>(gbss.begin(), gbss.end()), "global batch", cells);
  }
  return o.str();
}

/// Predicted vs measured: a table of the measured traces and a scatter of the matched ones.
std::string measured_section(const std::vector<Result>& results, const std::vector<Measured>& measured) {
  std::ostringstream o;
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
        o << "<td class=\"name\">" << escape(r.point.layout.describe() + " " + models::to_string(r.point.overlap))
          << "</td><td>" << escape(format_seconds(m.step_time_s)) << "</td><td>"
          << escape(format_seconds(r.step_time_s)) << "</td><td>"
          << fmt("%+.1f%%", m.step_time_s > 0 ? 100 * (r.step_time_s / m.step_time_s - 1) : 0.0) << "</td></tr>\n";
      } else {
        o << "<td colspan=\"4\">no point of this sweep lowers to the same schedule (" << escape(m.fingerprint)
          << ")</td></tr>\n";
      }
    }
    o << "</table>\n";
    if (!pts.empty()) o << scatter("measured-scatter", pts);
  }
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
  for (const auto& r : results) ok += r.status == PointStatus::kOk;
  o << "<p>" << results.size() << " points, " << ok << " simulated, " << results.size() - ok
    << " not run (counted by reason at the end).</p>\n";
  for (const auto& name : profiles_used(results)) o << "<p>costs: " << escape(name) << "</p>\n";
  if (notes.other_points_kept > 0) {
    o << "<p class=\"note\" id=\"kept-note\">" << escape(kept_points_note(notes.other_points_kept, notes.results_file))
      << "</p>\n";
  }

  o << best_table(results, rankings) << ranked_table(results, rankings) << variant_charts(results, rankings)
    << scaling_curves(results) << heat_maps(results) << measured_section(results, measured) << not_run_section(results);
  o << html::sortable_tables_script() << html::page_end();
  return o.str();
}

}  // namespace twinstep::sweep
