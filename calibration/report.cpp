// Renders a Comparison as one self-contained HTML page (common/html.hpp): inline CSS and SVG (bar charts, a log-log
// scatter), no JavaScript, no external resources. Everything that came from an input file is escaped. Numbers are
// printed with fixed precision, so the same comparison gives the same bytes.
#include "calibration/report.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <set>
#include <sstream>
#include <utility>
#include <vector>

#include "common/html.hpp"
#include "common/io.hpp"

namespace twinstep::calibration {

namespace {

constexpr const char* kPredColor = "#3b6fb6";
constexpr const char* kMeasColor = "#e08a2c";

using html::escape;
using html::px;
std::string fmt(const char* format, double v) { return html::format(format, v); }

std::string percent(double rel) {
  if (std::isinf(rel)) return rel > 0 ? "+inf" : "-inf";
  if (std::isnan(rel)) return "n/a";
  return fmt("%+.2f%%", rel * 100.0);
}

std::string seconds(double s) { return escape(format_seconds(s)); }

std::string signed_seconds(double s) { return (s > 0 ? "+" : "") + seconds(s); }

/// "1 ns", "10 ns", ..., "100 ms", "1 s", "10 s": the label of the decade 10^d ns.
std::string decade_label(int d) {
  static constexpr const char* kUnits[] = {"ns", "us", "ms", "s"};
  const int unit = std::clamp(d >= 0 ? d / 3 : -((2 - d) / 3), 0, 3);
  const int exponent = d - 3 * unit;
  if (exponent < 0) return fmt("%g ", std::pow(10.0, exponent)) + kUnits[unit];
  std::string digits = "1";
  for (int i = 0; i < exponent; ++i) digits += '0';
  return digits + " " + kUnits[unit];
}

/// Fill colour of a scatter point.
const char* family_color(OpFamily f) {
  switch (f) {
    case OpFamily::kCompute:
      return kPredColor;
    case OpFamily::kComm:
      return "#d0473a";
    case OpFamily::kHost:
      return "#7a7a7a";
  }
  return kPredColor;
}

/// Grouped horizontal bars, predicted above measured, one group per row.
std::string bar_chart(const std::string& id, const std::vector<BreakdownRow>& rows) {
  const double label_w = 190, bar_w = 470, value_w = 100, row_h = 34, top = 28;
  double max_v = 0;
  for (const auto& r : rows) max_v = std::max({max_v, r.predicted_s, r.measured_s});
  if (max_v <= 0) max_v = 1;
  const double height = top + row_h * static_cast<double>(rows.size()) + 10;
  const double width = label_w + bar_w + value_w;
  std::ostringstream o;
  o << html::svg_rect(label_w, 6, 12, 10, kPredColor).str()
    << html::svg_text(label_w + 16, 15).attr("class", "legend").text("predicted").str()
    << html::svg_rect(label_w + 100, 6, 12, 10, kMeasColor).str()
    << html::svg_text(label_w + 116, 15).attr("class", "legend").text("measured").str() << "\n";
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const auto& r = rows[i];
    const double y = top + row_h * static_cast<double>(i);
    o << html::svg_text(label_w - 8, y + 19, "end").text(r.category).str() << "\n";
    const double values[2] = {r.predicted_s, r.measured_s};
    const char* cls[2] = {"bar pred", "bar meas"};
    const char* color[2] = {kPredColor, kMeasColor};
    for (int k = 0; k < 2; ++k) {
      const double w = std::max(0.0, values[k]) / max_v * bar_w;
      const double by = y + 3 + 14 * k;
      o << html::svg_rect(label_w, by, w, 13, color[k])
               .attr("class", cls[k])
               .title(r.category + (k == 0 ? " predicted " : " measured ") + format_seconds(values[k]))
               .str()
        << html::svg_text(label_w + w + 4, by + 11).attr("class", "value").text(format_seconds(values[k])).str()
        << "\n";
    }
  }
  return html::svg_chart(id, width, height, o.str());
}

/// Diverging bars of each class's relative error of total duration, clipped at +-100%.
std::string class_chart(const std::vector<ClassResidual>& classes) {
  const double label_w = 230, half_w = 240, value_w = 90, row_h = 22, top = 24;
  const double height = top + row_h * static_cast<double>(classes.size()) + 10;
  const double width = label_w + 2 * half_w + value_w;
  const double zero_x = label_w + half_w;
  std::ostringstream o;
  o << html::svg_text(label_w, 14).attr("class", "legend").text("-100%").str()
    << html::svg_text(zero_x, 14).attr("class", "legend").attr("text-anchor", "middle").text("0").str()
    << html::svg_text(zero_x + half_w, 14).attr("class", "legend").attr("text-anchor", "end").text("+100%").str()
    << "\n";
  for (std::size_t i = 0; i < classes.size(); ++i) {
    const auto& c = classes[i];
    const double y = top + row_h * static_cast<double>(i);
    const double rel = c.rel_error();
    const double shown = std::isnan(rel) ? 0.0 : std::clamp(rel, -1.0, 1.0);
    const double w = std::fabs(shown) * half_w;
    const double x = shown >= 0 ? zero_x : zero_x - w;
    o << html::svg_text(label_w - 8, y + 15, "end").text(c.op_class).str()
      << html::svg_rect(x, y + 4, w, 14, shown >= 0 ? "#c0504d" : "#4f81bd")
             .attr("class", shown >= 0 ? "bar over" : "bar under")
             .title(c.op_class + ": " + std::to_string(c.count) + " ops, predicted " +
                    format_seconds(to_seconds(c.predicted_ns)) + ", measured " +
                    format_seconds(to_seconds(c.measured_ns)))
             .str()
      << html::svg_text(zero_x + half_w + 6, y + 15).attr("class", "value").text(percent(rel)).str() << "\n";
  }
  o << html::svg_line(zero_x, top, zero_x, height - 8, "#333").attr("class", "axis").str() << "\n";
  return html::svg_chart("class-chart", width, height, o.str());
}

/// Log-log scatter of per-op durations with the y = x diagonal; ops with a zero duration cannot be placed.
std::string scatter(const Comparison& c, const ReportOptions& options, std::size_t& shown, std::size_t& zero) {
  std::vector<const OpPoint*> points;
  zero = 0;
  for (const auto& p : c.ops) {
    if (p.predicted_ns <= 0 || p.measured_ns <= 0) {
      ++zero;
    } else {
      points.push_back(&p);
    }
  }
  // Thin by a fixed stride (deterministic), keeping the worst ops.
  const std::size_t limit = std::max<std::size_t>(options.max_scatter_points, 1);
  if (points.size() > limit) {
    std::set<schedule::OpId> worst;
    for (const auto& w : c.worst_ops) worst.insert(w.op);
    const std::size_t stride = (points.size() + limit - 1) / limit;
    std::vector<const OpPoint*> kept;
    for (std::size_t i = 0; i < points.size(); ++i) {
      if (i % stride == 0 || worst.count(points[i]->op) > 0) kept.push_back(points[i]);
    }
    points = std::move(kept);
  }
  shown = points.size();

  double lo = 1.0, hi = 10.0;  // ns, snapped to decades below
  if (!points.empty()) {
    lo = hi = static_cast<double>(points.front()->predicted_ns);
    for (const auto* p : points) {
      for (const double v : {static_cast<double>(p->predicted_ns), static_cast<double>(p->measured_ns)}) {
        lo = std::min(lo, v);
        hi = std::max(hi, v);
      }
    }
  }
  const int d_lo = static_cast<int>(std::floor(std::log10(lo)));
  int d_hi = static_cast<int>(std::ceil(std::log10(hi)));
  if (d_hi <= d_lo) d_hi = d_lo + 1;
  const double margin = 70, size = 460;
  const double span = d_hi - d_lo;
  auto sx = [&](double ns) { return margin + (std::log10(ns) - d_lo) / span * size; };
  auto sy = [&](double ns) { return 20 + size - (std::log10(ns) - d_lo) / span * size; };

  std::vector<std::string> names(c.ops.size());
  for (const auto& w : c.worst_ops) {
    if (w.op < names.size()) names[w.op] = w.name;
  }

  std::ostringstream o;
  const double width = margin + size + 40;
  const double height = 20 + size + 46;
  o << html::svg_rect(margin, 20, size, size, "none").attr("class", "frame").attr("stroke", "#999").str() << "\n";
  double legend_x = margin + 40;
  for (const auto& [family, name] : {std::pair{OpFamily::kCompute, "compute"},
                                     std::pair{OpFamily::kComm, "communication"}, std::pair{OpFamily::kHost, "host"}}) {
    o << html::svg_circle(legend_x + 5, 10, "4", family_color(family)).attr("class", "legend").str()
      << html::svg_text(legend_x + 13, 14).attr("class", "legend").text(name).str();
    legend_x += 110;
  }
  o << "\n";
  for (int d = d_lo; d <= d_hi; ++d) {
    const double ns = std::pow(10.0, d);
    const std::string label = decade_label(d);
    o << html::svg_line(sx(ns), 20, sx(ns), 20 + size, "#e4e4e4").attr("class", "grid").str()
      << html::svg_text(sx(ns), 20 + size + 16, "middle").attr("class", "tick").text(label).str()
      << html::svg_line(margin, sy(ns), margin + size, sy(ns), "#e4e4e4").attr("class", "grid").str()
      << html::svg_text(margin - 6, sy(ns) + 4, "end").attr("class", "tick").text(label).str() << "\n";
  }
  const double a = std::pow(10.0, d_lo), b = std::pow(10.0, d_hi);
  o << html::svg_line(sx(a), sy(a), sx(b), sy(b), "#999").attr("class", "diag").attr("stroke-dasharray", "4 3").str()
    << "\n";
  const double mid = 20 + size / 2;
  o << html::svg_text(margin + size / 2, 20 + size + 38, "middle")
           .attr("class", "legend")
           .text("measured duration")
           .str()
    << html::svg_text(12, mid, "middle")
           .attr("class", "legend")
           .attr("transform", "rotate(-90 12 " + px(mid) + ")")
           .text("predicted duration")
           .str()
    << "\n";
  for (const auto* p : points) {
    const double m = static_cast<double>(p->measured_ns);
    const double q = static_cast<double>(p->predicted_ns);
    std::string tip = "op " + std::to_string(p->op);
    if (!names[p->op].empty()) tip += " " + names[p->op];
    tip += ": predicted " + format_seconds(q * 1e-9) + ", measured " + format_seconds(m * 1e-9);
    o << html::svg_circle(sx(m), sy(q), "2.5", family_color(p->family))
             .attr("class", "op")
             .attr("fill-opacity", "0.55")
             .title(tip)
             .str()
      << "\n";
  }
  return html::svg_chart("scatter-chart", width, height, o.str());
}

std::string context_block(const std::string& title, const std::string& label, const std::string& producer,
                          const std::map<std::string, std::string>& context) {
  std::ostringstream o;
  o << "<div class=\"context\"><h3>" << escape(title) << "</h3>";
  if (!label.empty()) o << "<p class=\"path\">" << escape(label) << "</p>";
  o << "<table><tr><th>producer</th><td>" << escape(producer) << "</td></tr>\n";
  for (const auto& [k, v] : context) {
    o << "<tr><th>" << escape(k) << "</th><td>" << escape(v) << "</td></tr>\n";
  }
  o << "</table></div>\n";
  return o.str();
}

/// The rules this report adds to the shared style (common/html.hpp).
constexpr const char* kStyle = R"(td.name { word-break: break-all; }
.chart text.value, .chart text.tick, .chart text.legend { fill: #555; font-size: 11px; }
.chart .over { fill: #c0504d; } .chart .under { fill: #4f81bd; }
.chart .axis { stroke: #333; } .chart .grid { stroke: #eee; } .chart .frame { fill: none; stroke: #999; }
.chart .diag { stroke: #999; stroke-dasharray: 4 3; } .chart circle { fill-opacity: 0.6; }
.contexts { display: flex; gap: 32px; flex-wrap: wrap; } .context th { text-align: left; color: #555; }
.path { font-family: ui-monospace, monospace; color: #555; }
.big { font-size: 18px; }
)";

}  // namespace

std::string render_report(const Comparison& c, const ReportOptions& options) {
  std::ostringstream o;
  const std::string title = "twinstep compare: " + c.schedule_name;
  o << html::page_begin(title, kStyle);
  o << "<p>" << c.op_count << " ops on " << c.rank_count << " ranks; predicted by " << escape(c.predicted_producer)
    << ", measured by " << escape(c.measured_producer);
  if (c.measured_step_count > 0) o << " (median of " << c.measured_step_count << " measured steps)";
  o << ".</p>\n";

  o << "<h2>Step time</h2>\n<table id=\"step-table\"><tr><th></th><th>predicted</th><th>measured</th><th>error</th>"
    << "<th>relative error</th></tr>\n<tr class=\"big\"><td>step</td><td>" << seconds(c.step.predicted_s) << "</td><td>"
    << seconds(c.step.measured_s) << "</td><td>" << signed_seconds(c.step.abs_error_s()) << "</td><td>"
    << percent(c.step.rel_error()) << "</td></tr>\n<tr><td>analyzed (records)</td><td>"
    << seconds(c.predicted_analyzed_step_s) << "</td><td>" << seconds(c.measured_analyzed_step_s) << "</td><td>"
    << signed_seconds(c.predicted_analyzed_step_s - c.measured_analyzed_step_s) << "</td><td>"
    << percent(relative_error(c.predicted_analyzed_step_s, c.measured_analyzed_step_s)) << "</td></tr></table>\n";

  o << "<h2>Breakdown (mean over ranks)</h2>\n" << bar_chart("breakdown-chart", c.breakdown);
  o << "<table id=\"breakdown-table\"><tr><th>category</th><th>predicted</th><th>measured</th><th>error</th>"
    << "<th>relative error</th></tr>\n";
  for (const auto& r : c.breakdown) {
    o << "<tr><td>" << escape(r.category) << "</td><td>" << seconds(r.predicted_s) << "</td><td>"
      << seconds(r.measured_s) << "</td><td>" << signed_seconds(r.predicted_s - r.measured_s) << "</td><td>"
      << percent(relative_error(r.predicted_s, r.measured_s)) << "</td></tr>\n";
  }
  o << "</table>\n";

  o << "<h2>Communicators (mean over ranks)</h2>\n<table id=\"comm-table\"><tr><th>kind</th><th>busy predicted</th>"
    << "<th>busy measured</th><th>busy error</th><th>exposed predicted</th><th>exposed measured</th>"
    << "<th>exposed error</th></tr>\n";
  for (const auto& r : c.comms) {
    o << "<tr><td>" << escape(r.kind) << "</td><td>" << seconds(r.predicted_busy_s) << "</td><td>"
      << seconds(r.measured_busy_s) << "</td><td>" << percent(relative_error(r.predicted_busy_s, r.measured_busy_s))
      << "</td><td>" << seconds(r.predicted_exposed_s) << "</td><td>" << seconds(r.measured_exposed_s) << "</td><td>"
      << percent(relative_error(r.predicted_exposed_s, r.measured_exposed_s)) << "</td></tr>\n";
  }
  o << "</table>\n";

  o << "<h2>Op classes: relative error of total duration</h2>\n" << class_chart(c.classes);
  o << "<table id=\"class-table\"><tr><th>class</th><th>ops</th><th>predicted</th><th>measured</th>"
    << "<th>relative error</th><th>mean |error| per op</th></tr>\n";
  for (const auto& r : c.classes) {
    o << "<tr><td>" << escape(r.op_class) << "</td><td>" << r.count << "</td><td>"
      << seconds(to_seconds(r.predicted_ns)) << "</td><td>" << seconds(to_seconds(r.measured_ns)) << "</td><td>"
      << percent(r.rel_error()) << "</td><td>" << seconds(r.mean_abs_error_ns() * 1e-9) << "</td></tr>\n";
  }
  o << "</table>\n";

  std::size_t shown = 0, zero = 0;
  const std::string chart = scatter(c, options, shown, zero);
  o << "<h2>Per-op durations, predicted vs measured (log axes)</h2>\n"
    << chart << "<p>" << shown << " of " << c.op_count << " ops shown";
  if (zero > 0) o << "; " << zero << " with a zero duration cannot be placed on log axes";
  o << ". Points above the dashed diagonal are overpredicted.</p>\n";

  o << "<h2>Worst ops by |predicted - measured| duration</h2>\n<table id=\"worst-table\"><tr><th>op</th>"
    << "<th>name</th><th>rank</th><th>class</th><th>predicted</th><th>measured</th><th>error</th></tr>\n";
  for (const auto& r : c.worst_ops) {
    o << "<tr><td>" << r.op << "</td><td class=\"name\">" << escape(r.name) << "</td><td>" << r.rank << "</td><td>"
      << escape(r.op_class) << "</td><td>" << seconds(to_seconds(r.predicted_ns)) << "</td><td>"
      << seconds(to_seconds(r.measured_ns)) << "</td><td>" << signed_seconds(to_seconds(r.error_ns()))
      << "</td></tr>\n";
  }
  o << "</table>\n";

  o << "<h2>Context</h2>\n<div class=\"contexts\">\n"
    << context_block("predicted", options.predicted_label, c.predicted_producer, c.predicted_context)
    << context_block("measured", options.measured_label, c.measured_producer, c.measured_context) << "</div>\n";
  o << html::page_end();
  return o.str();
}

void write_report(const Comparison& c, const std::string& path, const ReportOptions& options) {
  write_file_atomic(path, render_report(c, options));
}

}  // namespace twinstep::calibration
