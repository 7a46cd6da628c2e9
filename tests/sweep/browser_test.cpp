// Renders a real sweep's HTML report in headless Chromium and checks that the charts are drawn: a probe script,
// appended to a copy of the report, counts the SVG shapes with a non-empty rendered box per chart and writes the
// counts into the DOM, which `chromium --dump-dom` prints; it also clicks the ranked table's "step time" header
// twice and reports whether the rows came out in ascending, then descending order. Exit 77 (ctest SKIP_RETURN_CODE)
// without chromium. Usage: sweep_browser_test <work folder> [report.html]   (an existing report instead of the tiny
// sweep's)
#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <regex>
#include <string>

#include "common/io.hpp"
#include "sweep/grid.hpp"
#include "sweep/report.hpp"
#include "sweep/runner.hpp"

namespace {

std::string find_chromium() {
  for (const char* name : {"chromium", "chromium-browser", "google-chrome"}) {
    for (const char* dir : {"/usr/bin/", "/usr/local/bin/", "/snap/bin/"}) {
      std::string path = std::string(dir) + name;
      if (std::filesystem::exists(path)) return path;
    }
  }
  return "";
}

int fail(const std::string& why) {
  std::fprintf(stderr, "FAIL: %s\n", why.c_str());
  return 1;
}

/// A real sweep of the tiny test model (two GPU counts, two batches, two overlap variants, one impossible TP) and
/// its report.
std::string tiny_report(const std::string& dir) {
  using namespace twinstep;
  sweep::Spec spec;
  spec.models = {std::string(TWINSTEP_SOURCE_DIR) + "/tests/sweep/data/tiny.json"};
  spec.clusters = {"dgx-h100"};
  spec.gpus = {2, 4};
  spec.gbs = {8, 16};
  spec.seq = {256};
  spec.tp = {1, 2, 3};  // tp 3 divides no GPU count: points not run, listed collapsed
  spec.overlaps = {models::parse_overlap_variant("none", "overlap"), models::parse_overlap_variant("dp", "overlap")};
  sweep::RunOptions opts;
  opts.output = dir + "/sweep.jsonl";
  opts.jobs = 2;
  opts.progress = false;
  const auto results = sweep::run_sweep(sweep::expand(spec), opts);
  return sweep::render_html(results, sweep::rank_results(results));
}

}  // namespace

int main(int argc, char** argv) {
  using namespace twinstep;
  const std::string chromium = find_chromium();
  if (chromium.empty()) {
    std::printf("SKIP: chromium not installed (Debian: apt-get install chromium); the report is not rendered\n");
    return 77;
  }
  const std::string dir = argc > 1 ? argv[1] : (std::filesystem::temp_directory_path() / "twinstep_browser").string();
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);

  // With a second argument, an existing report (e.g. a full sweep's) is rendered and checked instead.
  std::string html;
  if (argc > 2) {
    html = read_file(argv[2]);
  } else {
    html = tiny_report(dir);
  }
  write_file_atomic(dir + "/report.html", html);

  const std::string probe = R"(<script>
window.addEventListener('load', function () {
  var out = [];
  document.querySelectorAll('svg.chart').forEach(function (svg) {
    var drawn = 0;
    svg.querySelectorAll('rect, polyline, circle, line').forEach(function (e) {
      var b = e.getBBox();
      if (b.width > 0 || b.height > 0) drawn++;
    });
    var r = svg.getBoundingClientRect();
    out.push(svg.id + '=' + drawn + '@' + Math.round(r.width) + 'x' + Math.round(r.height));
  });
  // The ranked table: click "step time" (ascending), then again (descending); the rows must follow the numbers.
  var sorted = 'none';
  var table = document.getElementById('all-points');
  if (table) {
    var col = -1;
    Array.prototype.forEach.call(table.rows[0].cells, function (c, i) { if (c.textContent === 'step time') col = i; });
    var values = function () {
      return Array.prototype.slice.call(table.rows, 1).map(function (r) {
        return Number(r.cells[col].getAttribute('data-v'));
      });
    };
    var monotonic = function (v, sign) {
      for (var i = 1; i < v.length; i++) if (sign * (v[i] - v[i - 1]) < 0) return false;
      return true;
    };
    table.rows[0].cells[col].click();
    var asc = values();
    table.rows[0].cells[col].click();
    var desc = values();
    var moved = asc.join() !== desc.join();
    sorted = (monotonic(asc, 1) && monotonic(desc, -1) && moved ? 'ok' : 'wrong') + ':' + asc.length;
  }
  var details = document.getElementById('not-run-details');
  var collapsed = details ? (details.open ? 'open' : 'closed') : 'absent';
  var pre = document.createElement('pre');
  pre.id = 'probe';
  pre.textContent = 'PRO' + 'BE ' + out.join(' ') + ' SORTED=' + sorted + ' DETAILS=' + collapsed + ' E' + 'ND';
  document.body.appendChild(pre);
});
</script>
)";
  std::string probed = html;
  probed.insert(probed.rfind("</body>"), probe);
  write_file_atomic(dir + "/probed.html", probed);
  const std::string dom = dir + "/dom.html";
  const std::string cmd = "timeout 90 " + chromium +
                          " --headless --no-sandbox --disable-gpu --virtual-time-budget=5000 --dump-dom 'file://" +
                          dir + "/probed.html' > '" + dom + "' 2> '" + dir + "/chromium.log'";
  const int rc = std::system(cmd.c_str());
  if (rc != 0)
    return fail("chromium exited with " + std::to_string(WEXITSTATUS(rc)) + "; see " + dir + "/chromium.log");
  const std::string text = read_file(dom);
  const std::smatch m = [&] {
    std::smatch mm;
    std::regex_search(text, mm, std::regex("PROBE (.*) END"));
    return mm;
  }();
  if (m.empty()) return fail("the probe did not run; " + dom + " has no PROBE line");
  std::printf("charts: %s\n", m[1].str().c_str());
  // Every chart kind is present and drew shapes with a non-empty box, in a non-empty SVG.
  const std::string charts = m[1].str();
  int failures = 0;
  for (const char* prefix : {"variants-", "scaling-", "heat-"}) {
    const std::regex re(std::string(prefix) + "[0-9]+=([0-9]+)@([0-9]+)x([0-9]+)");
    bool found = false;
    for (auto it = std::sregex_iterator(charts.begin(), charts.end(), re); it != std::sregex_iterator(); ++it) {
      found = true;
      const int shapes = std::stoi((*it)[1]), w = std::stoi((*it)[2]), h = std::stoi((*it)[3]);
      if (shapes < 2 || w < 50 || h < 30) {
        std::fprintf(stderr, "FAIL: chart %s drew %d shapes in %dx%d\n", (*it)[0].str().c_str(), shapes, w, h);
        ++failures;
      }
    }
    if (!found) {
      std::fprintf(stderr, "FAIL: no %s chart in the rendered report\n", prefix);
      ++failures;
    }
  }
  // The table of every simulated layout sorts when its header is clicked (both directions), and the points not
  // run are listed collapsed.
  std::smatch sm;
  if (!std::regex_search(charts, sm, std::regex("SORTED=ok:([0-9]+)")) || std::stoi(sm[1]) < 2) {
    std::fprintf(stderr, "FAIL: the ranked table did not sort by step time when clicked (%s)\n", charts.c_str());
    ++failures;
  }
  if (charts.find("DETAILS=open") != std::string::npos) {
    std::fprintf(stderr, "FAIL: the list of points not run is open; it should be collapsed\n");
    ++failures;
  }
  if (failures > 0) return 1;
  std::printf("PASS: the report renders in %s with every chart drawn and the ranked table sorts\n", chromium.c_str());
  return 0;
}
