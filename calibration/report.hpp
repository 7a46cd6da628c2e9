// The HTML report of `twinstep compare --report`: one self-contained file (inline CSS, inline SVG charts built
// with common/html.hpp, no scripts, no external resources) showing a Comparison. Every string taken from input
// files is escaped.
#pragma once

#include <cstddef>
#include <string>

#include "calibration/compare.hpp"

namespace twinstep::calibration {

/// How render_report labels the traces and how many scatter points it draws at most.
struct ReportOptions {
  std::string predicted_label;  ///< Shown as the predicted trace's name (usually its path); may be empty.
  std::string measured_label;
  std::size_t max_scatter_points = 5000;  ///< Larger schedules are thinned by a fixed stride (worst ops always kept).
};

/// The whole report as one HTML document: step time, a breakdown bar chart (predicted vs measured), a per-class
/// relative-error bar chart, a log-log scatter of per-op durations, the residual tables, the worst ops and both
/// traces' context blocks.
[[nodiscard]] std::string render_report(const Comparison& c, const ReportOptions& options = {});

/// render_report + write_file_atomic. Throws twinstep::Error naming `path` if it cannot be written.
void write_report(const Comparison& c, const std::string& path, const ReportOptions& options = {});

}  // namespace twinstep::calibration
