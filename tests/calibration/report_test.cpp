// The HTML report: written atomically to a file, self-contained (no scripts, no external resources), holding the
// three SVG charts and the tables, with every string from the input files escaped.
#include "calibration/report.hpp"

#include <unistd.h>

#include <filesystem>
#include <string>

#include "calibration/compare.hpp"
#include "common/error.hpp"
#include "common/io.hpp"
#include "tests/calibration/traces.hpp"
#include "tests/catch.hpp"

namespace cal = twinstep::calibration;
namespace ts = twinstep::schedule;
namespace fs = std::filesystem;

namespace {

std::size_t count(const std::string& text, const std::string& what) {
  std::size_t n = 0;
  for (auto pos = text.find(what); pos != std::string::npos; pos = text.find(what, pos + what.size())) ++n;
  return n;
}

/// A fresh temporary folder, removed at scope exit.
struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::temp_directory_path() / ("twinstep_report_test." + std::to_string(::getpid()));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

/// The test traces with hostile strings in an op name, the schedule name and the context.
cal::Comparison hostile_comparison() {
  ts::Trace p = cal::testing::predicted_trace();
  ts::Trace m = cal::testing::measured_trace();
  for (ts::Trace* t : {&p, &m}) {
    t->schedule.name = "s<b>&\"'";
    t->schedule.ops[5].name = "<script>alert(1)</script>";
  }
  m.context["host"] = "<img src=x onerror=alert(2)>";
  return cal::compare(p, m);
}

}  // namespace

TEST_CASE("calibration::html_escape: the five special characters", "[calib]") {
  CHECK(cal::html_escape("a<b>&\"c'") == "a&lt;b&gt;&amp;&quot;c&#39;");
  CHECK(cal::html_escape("plain L3.mb2.fwd") == "plain L3.mb2.fwd");
  CHECK(cal::html_escape("").empty());
}

TEST_CASE("calibration::write_report: a self-contained HTML file with the charts and tables", "[calib]") {
  TempDir dir;
  const std::string path = (dir.path / "report.html").string();
  const cal::Comparison c = cal::compare(cal::testing::predicted_trace(), cal::testing::measured_trace());
  cal::ReportOptions options;
  options.predicted_label = "pred.json";
  options.measured_label = "meas.json";
  cal::write_report(c, path, options);
  const std::string html = twinstep::read_file(path);
  CHECK(html == cal::render_report(c, options));  // deterministic
  // Atomic write: no temporary file left behind.
  std::size_t files = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(dir.path)) ++files;
  CHECK(files == 1);

  CHECK(html.rfind("<!DOCTYPE html>", 0) == 0);
  CHECK(html.find("<style>") != std::string::npos);
  CHECK(count(html, "<svg ") == 3);
  CHECK(count(html, "</svg>") == 3);
  CHECK(html.find("<svg id=\"breakdown-chart\"") != std::string::npos);
  CHECK(html.find("<svg id=\"class-chart\"") != std::string::npos);
  CHECK(html.find("<svg id=\"scatter-chart\"") != std::string::npos);
  // Breakdown: two bars (predicted, measured) per category: compute, 2 exposed kinds, host_bound, bubble.
  CHECK(count(html, "<rect class=\"bar pred\"") == 5);
  CHECK(count(html, "<rect class=\"bar meas\"") == 5);
  // Class chart: one bar per class, all six underpredicted or exact except the send.
  CHECK(count(html, "<rect class=\"bar over\"") + count(html, "<rect class=\"bar under\"") == 6);
  // Scatter: one point per op (all durations > 0) and the y = x diagonal.
  CHECK(count(html, "<circle class=\"op\"") == 10);
  // Coloured by family: 4 compute (blue), 4 communication (red), 2 host (grey); the legend has one of each.
  CHECK(count(html, "<circle class=\"legend\"") == 3);
  CHECK(count(html, "r=\"2.5\" fill=\"#3b6fb6\"") == 4);
  CHECK(count(html, "r=\"2.5\" fill=\"#d0473a\"") == 4);
  CHECK(count(html, "r=\"2.5\" fill=\"#7a7a7a\"") == 2);
  // Decade ticks from 1 ns (5 ns is the shortest op) to 1 us (150 ns the longest), on both axes.
  for (const char* tick : {"1 ns", "10 ns", "100 ns", "1 us"}) {
    CHECK(count(html, std::string("class=\"tick\">") + tick + "<") == 2);
  }
  CHECK(count(html, "class=\"tick\">") == 8);
  CHECK(count(html, "class=\"diag\"") == 1);
  CHECK(html.find("<table id=\"worst-table\">") != std::string::npos);
  CHECK(count(html, "<td class=\"name\">") == 10);
  CHECK(html.find("pred.json") != std::string::npos);
  CHECK(html.find("NVIDIA H200") != std::string::npos);
  CHECK(html.find("datasheet defaults") != std::string::npos);
  // Self-contained: no scripts and no external resources.
  CHECK(html.find("<script") == std::string::npos);
  CHECK(html.find("src=") == std::string::npos);
  CHECK(html.find("href=") == std::string::npos);
  CHECK(html.find("@import") == std::string::npos);
}

TEST_CASE("calibration::render_report: escapes names and context values from the input files", "[calib]") {
  const std::string html = cal::render_report(hostile_comparison());
  CHECK(html.find("<script") == std::string::npos);
  CHECK(html.find("&lt;script&gt;alert(1)&lt;/script&gt;") != std::string::npos);
  CHECK(html.find("<img") == std::string::npos);
  CHECK(html.find("&lt;img src=x onerror=alert(2)&gt;") != std::string::npos);
  CHECK(html.find("s&lt;b&gt;&amp;&quot;&#39;") != std::string::npos);
  CHECK(html.find("s<b>") == std::string::npos);
}

TEST_CASE("calibration::render_report: thins the scatter of a large schedule by a fixed stride", "[calib]") {
  cal::Comparison c;
  c.op_count = 1000;
  for (ts::OpId i = 0; i < 1000; ++i) c.ops.push_back({i, 100 + i, 100 + 2 * i});
  c.ops[7].measured_ns = 0;  // not placeable on log axes
  cal::OpResidual worst;
  worst.op = 506;  // index 505 after the zero is dropped: off the stride, kept because it is a worst op
  worst.name = "kept";
  c.worst_ops.push_back(worst);
  cal::ReportOptions options;
  options.max_scatter_points = 100;
  const std::string html = cal::render_report(c, options);
  // 999 placeable points, stride ceil(999 / 100) = 10: indices 0, 10, ..., 990 (100 points) plus the worst op.
  CHECK(count(html, "<circle class=\"op\"") == 101);
  CHECK(html.find("op 506 kept:") != std::string::npos);
  CHECK(html.find("101 of 1000 ops shown; 1 with a zero duration") != std::string::npos);
}

TEST_CASE("calibration::write_report: an unwritable path is a twinstep::Error naming it", "[calib]") {
  const cal::Comparison c = cal::compare(cal::testing::predicted_trace(), cal::testing::measured_trace());
  const std::string path = "/nonexistent-folder-twinstep/report.html";
  try {
    cal::write_report(c, path);
    FAIL("write_report wrote into a missing folder");
  } catch (const twinstep::Error& e) {
    CHECK(std::string(e.what()).find(path) != std::string::npos);
  }
}
