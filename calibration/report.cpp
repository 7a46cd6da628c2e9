// Renders a Comparison as one self-contained HTML page: inline CSS and SVG drawn here (bar charts, a log-log
// scatter), no JavaScript, no external resources. Everything that came from an input file goes through
// html_escape. Numbers are printed with fixed precision, so the same comparison gives the same bytes.
#include "calibration/report.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <set>
#include <sstream>
#include <utility>
#include <vector>

#include "common/io.hpp"

namespace twinstep::calibration {

namespace {

constexpr const char* kPredColor = "#3b6fb6";
constexpr const char* kMeasColor = "#e08a2c";

std::string fmt(const char* format, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, format, v);
  return buf;
}

/// SVG coordinate with one decimal.
std::string px(double v) { return fmt("%.1f", v); }

std::string percent(double rel) {
  if (std::isinf(rel)) return rel > 0 ? "+inf" : "-inf";
  if (std::isnan(rel)) return "n/a";
  return fmt("%+.2f%%", rel * 100.0);
}

std::string seconds(double s) { return html_escape(format_seconds(s)); }

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
  o << "<svg id=\"" << id << "\" class=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" width=\"" << px(width)
    << "\" height=\"" << px(height) << "\" viewBox=\"0 0 " << px(width) << ' ' << px(height) << "\">\n";
  o << "<rect x=\"" << px(label_w) << "\" y=\"6\" width=\"12\" height=\"10\" fill=\"" << kPredColor << "\"/>"
    << "<text x=\"" << px(label_w + 16) << "\" y=\"15\" class=\"legend\">predicted</text>"
    << "<rect x=\"" << px(label_w + 100) << "\" y=\"6\" width=\"12\" height=\"10\" fill=\"" << kMeasColor << "\"/>"
    << "<text x=\"" << px(label_w + 116) << "\" y=\"15\" class=\"legend\">measured</text>\n";
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const auto& r = rows[i];
    const double y = top + row_h * static_cast<double>(i);
    o << "<text x=\"" << px(label_w - 8) << "\" y=\"" << px(y + 19) << "\" text-anchor=\"end\">"
      << html_escape(r.category) << "</text>\n";
    const double values[2] = {r.predicted_s, r.measured_s};
    const char* cls[2] = {"bar pred", "bar meas"};
    const char* color[2] = {kPredColor, kMeasColor};
    for (int k = 0; k < 2; ++k) {
      const double w = std::max(0.0, values[k]) / max_v * bar_w;
      const double by = y + 3 + 14 * k;
      o << "<rect class=\"" << cls[k] << "\" x=\"" << px(label_w) << "\" y=\"" << px(by) << "\" width=\"" << px(w)
        << "\" height=\"13\" fill=\"" << color[k] << "\"><title>" << html_escape(r.category) << ' '
        << (k == 0 ? "predicted " : "measured ") << seconds(values[k]) << "</title></rect>"
        << "<text x=\"" << px(label_w + w + 4) << "\" y=\"" << px(by + 11) << "\" class=\"value\">"
        << seconds(values[k]) << "</text>\n";
    }
  }
  o << "</svg>\n";
  return o.str();
}

/// Diverging bars of each class's relative error of total duration, clipped at +-100%.
std::string class_chart(const std::vector<ClassResidual>& classes) {
  const double label_w = 230, half_w = 240, value_w = 90, row_h = 22, top = 24;
  const double height = top + row_h * static_cast<double>(classes.size()) + 10;
  const double width = label_w + 2 * half_w + value_w;
  const double zero_x = label_w + half_w;
  std::ostringstream o;
  o << "<svg id=\"class-chart\" class=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" width=\"" << px(width)
    << "\" height=\"" << px(height) << "\" viewBox=\"0 0 " << px(width) << ' ' << px(height) << "\">\n";
  o << "<text x=\"" << px(label_w) << "\" y=\"14\" class=\"legend\">-100%</text>"
    << "<text x=\"" << px(zero_x) << "\" y=\"14\" class=\"legend\" text-anchor=\"middle\">0</text>"
    << "<text x=\"" << px(zero_x + half_w) << "\" y=\"14\" class=\"legend\" text-anchor=\"end\">+100%</text>\n";
  for (std::size_t i = 0; i < classes.size(); ++i) {
    const auto& c = classes[i];
    const double y = top + row_h * static_cast<double>(i);
    const double rel = c.rel_error();
    const double shown = std::isnan(rel) ? 0.0 : std::clamp(rel, -1.0, 1.0);
    const double w = std::fabs(shown) * half_w;
    const double x = shown >= 0 ? zero_x : zero_x - w;
    o << "<text x=\"" << px(label_w - 8) << "\" y=\"" << px(y + 15) << "\" text-anchor=\"end\">"
      << html_escape(c.op_class) << "</text>"
      << "<rect class=\"bar " << (shown >= 0 ? "over" : "under") << "\" fill=\"" << (shown >= 0 ? "#c0504d" : "#4f81bd")
      << "\" x=\"" << px(x) << "\" y=\"" << px(y + 4) << "\" width=\"" << px(w) << "\" height=\"14\"><title>"
      << html_escape(c.op_class) << ": " << c.count << " ops, predicted " << seconds(to_seconds(c.predicted_ns))
      << ", measured " << seconds(to_seconds(c.measured_ns)) << "</title></rect>"
      << "<text x=\"" << px(zero_x + half_w + 6) << "\" y=\"" << px(y + 15) << "\" class=\"value\">" << percent(rel)
      << "</text>\n";
  }
  o << "<line x1=\"" << px(zero_x) << "\" y1=\"" << px(top) << "\" x2=\"" << px(zero_x) << "\" y2=\"" << px(height - 8)
    << "\" class=\"axis\" stroke=\"#333\"/>\n</svg>\n";
  return o.str();
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
  o << "<svg id=\"scatter-chart\" class=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" width=\"" << px(width)
    << "\" height=\"" << px(height) << "\" viewBox=\"0 0 " << px(width) << ' ' << px(height) << "\">\n";
  o << "<rect x=\"" << px(margin) << "\" y=\"20\" width=\"" << px(size) << "\" height=\"" << px(size)
    << "\" class=\"frame\" fill=\"none\" stroke=\"#999\"/>\n";
  double legend_x = margin + 40;
  for (const auto& [family, name] : {std::pair{OpFamily::kCompute, "compute"},
                                     std::pair{OpFamily::kComm, "communication"}, std::pair{OpFamily::kHost, "host"}}) {
    o << "<circle class=\"legend\" cx=\"" << px(legend_x + 5) << "\" cy=\"10\" r=\"4\" fill=\"" << family_color(family)
      << "\"/><text x=\"" << px(legend_x + 13) << "\" y=\"14\" class=\"legend\">" << name << "</text>";
    legend_x += 110;
  }
  o << "\n";
  for (int d = d_lo; d <= d_hi; ++d) {
    const double ns = std::pow(10.0, d);
    const std::string label = decade_label(d);
    o << "<line x1=\"" << px(sx(ns)) << "\" y1=\"20\" x2=\"" << px(sx(ns)) << "\" y2=\"" << px(20 + size)
      << "\" class=\"grid\" stroke=\"#e4e4e4\"/><text x=\"" << px(sx(ns)) << "\" y=\"" << px(20 + size + 16)
      << "\" text-anchor=\"middle\" class=\"tick\">" << label << "</text>"
      << "<line x1=\"" << px(margin) << "\" y1=\"" << px(sy(ns)) << "\" x2=\"" << px(margin + size) << "\" y2=\""
      << px(sy(ns)) << "\" class=\"grid\" stroke=\"#e4e4e4\"/><text x=\"" << px(margin - 6) << "\" y=\""
      << px(sy(ns) + 4) << "\" text-anchor=\"end\" class=\"tick\">" << label << "</text>\n";
  }
  const double a = std::pow(10.0, d_lo), b = std::pow(10.0, d_hi);
  o << "<line class=\"diag\" stroke=\"#999\" stroke-dasharray=\"4 3\" x1=\"" << px(sx(a)) << "\" y1=\"" << px(sy(a))
    << "\" x2=\"" << px(sx(b)) << "\" y2=\"" << px(sy(b)) << "\"/>\n";
  const double mid = 20 + size / 2;
  o << "<text x=\"" << px(margin + size / 2) << "\" y=\"" << px(20 + size + 38)
    << "\" text-anchor=\"middle\" class=\"legend\">measured duration</text>"
    << "<text x=\"12\" y=\"" << px(mid) << "\" text-anchor=\"middle\" class=\"legend\" transform=\"rotate(-90 12 "
    << px(mid) << ")\">predicted duration</text>\n";
  for (const auto* p : points) {
    const double m = static_cast<double>(p->measured_ns);
    const double q = static_cast<double>(p->predicted_ns);
    o << "<circle class=\"op\" cx=\"" << px(sx(m)) << "\" cy=\"" << px(sy(q)) << "\" r=\"2.5\" fill=\""
      << family_color(p->family) << "\" fill-opacity=\"0.55\"><title>op " << p->op;
    if (!names[p->op].empty()) o << ' ' << html_escape(names[p->op]);
    o << ": predicted " << seconds(q * 1e-9) << ", measured " << seconds(m * 1e-9) << "</title></circle>\n";
  }
  o << "</svg>\n";
  return o.str();
}

std::string context_block(const std::string& title, const std::string& label, const std::string& producer,
                          const std::map<std::string, std::string>& context) {
  std::ostringstream o;
  o << "<div class=\"context\"><h3>" << html_escape(title) << "</h3>";
  if (!label.empty()) o << "<p class=\"path\">" << html_escape(label) << "</p>";
  o << "<table><tr><th>producer</th><td>" << html_escape(producer) << "</td></tr>\n";
  for (const auto& [k, v] : context) {
    o << "<tr><th>" << html_escape(k) << "</th><td>" << html_escape(v) << "</td></tr>\n";
  }
  o << "</table></div>\n";
  return o.str();
}

constexpr const char* kStyle = R"(
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px auto; max-width: 1100px; color: #222; }
h1 { font-size: 22px; } h2 { font-size: 17px; margin-top: 28px; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 8px 0; }
th, td { padding: 3px 10px; border-bottom: 1px solid #eee; text-align: right; }
th:first-child, td:first-child, td.name { text-align: left; }
td.name { font-family: ui-monospace, monospace; word-break: break-all; }
.chart { display: block; margin: 8px 0; font-size: 12px; }
.chart text.value, .chart text.tick, .chart text.legend { fill: #555; font-size: 11px; }
.chart .over { fill: #c0504d; } .chart .under { fill: #4f81bd; }
.chart .axis { stroke: #333; } .chart .grid { stroke: #eee; } .chart .frame { fill: none; stroke: #999; }
.chart .diag { stroke: #999; stroke-dasharray: 4 3; } .chart circle { fill-opacity: 0.6; }
.contexts { display: flex; gap: 32px; flex-wrap: wrap; } .context th { text-align: left; color: #555; }
.path { font-family: ui-monospace, monospace; color: #555; }
.big { font-size: 18px; }
)";

}  // namespace

std::string html_escape(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (const char ch : text) {
    switch (ch) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out += ch;
    }
  }
  return out;
}

std::string render_report(const Comparison& c, const ReportOptions& options) {
  std::ostringstream o;
  const std::string title = "twinstep compare: " + c.schedule_name;
  o << "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>" << html_escape(title)
    << "</title>\n<style>" << kStyle << "</style>\n</head>\n<body>\n";
  o << "<h1>" << html_escape(title) << "</h1>\n";
  o << "<p>" << c.op_count << " ops on " << c.rank_count << " ranks; predicted by " << html_escape(c.predicted_producer)
    << ", measured by " << html_escape(c.measured_producer);
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
    o << "<tr><td>" << html_escape(r.category) << "</td><td>" << seconds(r.predicted_s) << "</td><td>"
      << seconds(r.measured_s) << "</td><td>" << signed_seconds(r.predicted_s - r.measured_s) << "</td><td>"
      << percent(relative_error(r.predicted_s, r.measured_s)) << "</td></tr>\n";
  }
  o << "</table>\n";

  o << "<h2>Communicators (mean over ranks)</h2>\n<table id=\"comm-table\"><tr><th>kind</th><th>busy predicted</th>"
    << "<th>busy measured</th><th>busy error</th><th>exposed predicted</th><th>exposed measured</th>"
    << "<th>exposed error</th></tr>\n";
  for (const auto& r : c.comms) {
    o << "<tr><td>" << html_escape(r.kind) << "</td><td>" << seconds(r.predicted_busy_s) << "</td><td>"
      << seconds(r.measured_busy_s) << "</td><td>" << percent(relative_error(r.predicted_busy_s, r.measured_busy_s))
      << "</td><td>" << seconds(r.predicted_exposed_s) << "</td><td>" << seconds(r.measured_exposed_s) << "</td><td>"
      << percent(relative_error(r.predicted_exposed_s, r.measured_exposed_s)) << "</td></tr>\n";
  }
  o << "</table>\n";

  o << "<h2>Op classes: relative error of total duration</h2>\n" << class_chart(c.classes);
  o << "<table id=\"class-table\"><tr><th>class</th><th>ops</th><th>predicted</th><th>measured</th>"
    << "<th>relative error</th><th>mean |error| per op</th></tr>\n";
  for (const auto& r : c.classes) {
    o << "<tr><td>" << html_escape(r.op_class) << "</td><td>" << r.count << "</td><td>"
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
    o << "<tr><td>" << r.op << "</td><td class=\"name\">" << html_escape(r.name) << "</td><td>" << r.rank << "</td><td>"
      << html_escape(r.op_class) << "</td><td>" << seconds(to_seconds(r.predicted_ns)) << "</td><td>"
      << seconds(to_seconds(r.measured_ns)) << "</td><td>" << signed_seconds(to_seconds(r.error_ns()))
      << "</td></tr>\n";
  }
  o << "</table>\n";

  o << "<h2>Context</h2>\n<div class=\"contexts\">\n"
    << context_block("predicted", options.predicted_label, c.predicted_producer, c.predicted_context)
    << context_block("measured", options.measured_label, c.measured_producer, c.measured_context) << "</div>\n";
  o << "</body>\n</html>\n";
  return o.str();
}

void write_report(const Comparison& c, const std::string& path, const ReportOptions& options) {
  write_file_atomic(path, render_report(c, options));
}

}  // namespace twinstep::calibration
