// Ranking, runner-up reason, speedups, CSV/JSON and the HTML report on hand-made results (closed-form oracles).
#include "sweep/report.hpp"

#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "tests/catch.hpp"

using namespace twinstep;

namespace {

sweep::Result make(std::size_t index, std::uint32_t gpus, std::uint32_t tp, std::uint32_t pp,
                   const std::string& overlap, double compute, double dp_comm, double bubble,
                   const std::string& status = "ok", std::uint32_t ep = 1, std::uint32_t gbs = 64) {
  sweep::Point p;
  p.index = index;
  p.model = "m<1>";
  p.cluster = "c";
  p.gpus = gpus;
  p.gbs = gbs;
  p.seq = 4096;
  p.layout = sweep::Layout{tp, pp, 1, 1, ep, gpus / (tp * pp), 1};
  p.overlap = models::parse_overlap_variant(overlap, "overlap");
  nlohmann::ordered_json j;
  j["point"] = index;
  j["key"] = sweep::point_inputs(p);
  j["status"] = status;
  j["reason"] = status == "ok" ? "" : "because";
  if (status == "ok") {
    j["step_time_s"] = compute + dp_comm + bubble;
    j["mfu"] = 0.5;
    j["tflops_per_gpu"] = 400.0;
    j["memory_gib_per_gpu"] = 40.0;
    j["breakdown_s"] = {{"compute", compute}, {"exposed dp", dp_comm}, {"bubble", bubble}};
  }
  return sweep::result_from_line(j.dump(), "test");
}

std::vector<sweep::Result> sample() {
  return {
      make(0, 8, 1, 1, "none", 1.0, 0.30, 0.0),   // layout A none: 1.30
      make(1, 8, 1, 1, "dp", 1.0, 0.05, 0.0),     // layout A dp:   1.05 (best)
      make(2, 8, 2, 2, "none", 0.9, 0.10, 0.40),  // layout B none: 1.40
      make(3, 8, 2, 2, "dp", 0.9, 0.02, 0.40),    // layout B dp:   1.32 (runner-up: loses on bubble)
      make(4, 8, 8, 2, "none", 0, 0, 0, "invalid"),
      make(5, 16, 1, 1, "none", 0.6, 0.20, 0.0, "ok", 1, 64),
      make(6, 16, 1, 1, "dp", 0.6, 0.02, 0.0, "ok", 1, 64),
      make(7, 16, 1, 1, "none", 0, 0, 0, "does_not_fit", 1, 64),
  };
}

}  // namespace

TEST_CASE("sweep::rank_results: best, runner-up with reason, speedup vs none", "[sweep]") {
  const auto results = sample();
  const auto rankings = sweep::rank_results(results);
  REQUIRE(rankings.size() == 2);
  const auto& g = rankings[0];
  CHECK(g.gpus == 8);
  CHECK(g.ok == 4);
  CHECK(g.invalid == 1);
  REQUIRE(g.best);
  CHECK(results[*g.best].index == 1);
  REQUIRE(g.runner_up);
  CHECK(results[*g.runner_up].index == 3);  // the best point with another layout
  CHECK(g.runner_up_loses == "bubble +400.000 ms");
  REQUIRE(g.speedup_vs_none.size() == 2);
  CHECK(g.speedup_vs_none[0].first == "none");
  CHECK(g.speedup_vs_none[0].second == Approx(1.0));
  CHECK(g.speedup_vs_none[1].first == "dp");
  CHECK(g.speedup_vs_none[1].second == Approx(1.30 / 1.05));
  CHECK(rankings[1].gpus == 16);
  CHECK(rankings[1].does_not_fit == 1);
  CHECK_FALSE(rankings[1].runner_up);

  // Every simulated point of the group, best first: A dp 1.05, A none 1.30, B dp 1.32, B none 1.40.
  CHECK(g.ranked == std::vector<std::size_t>{1, 0, 3, 2});
  CHECK(rankings[1].ranked == std::vector<std::size_t>{6, 5});

  const std::string table = sweep::format_table(rankings, results);
  CHECK(table.find("runner-up: tp2 pp2 vpp1 cp1 ep1 dp2 mbs1 dp") != std::string::npos);
  CHECK(table.find("loses on bubble +400.000 ms") != std::string::npos);
  CHECK(table.find("1 x invalid: because") != std::string::npos);
  CHECK(table.find("1 x does_not_fit: because") != std::string::npos);
}

TEST_CASE("sweep::to_csv and to_json: every point, categories as columns", "[sweep]") {
  const auto results = sample();
  const std::string csv = sweep::to_csv(results);
  CHECK(static_cast<std::size_t>(std::count(csv.begin(), csv.end(), '\n')) == results.size() + 1);
  CHECK(csv.rfind("point,model,cluster,fidelity,gpus,gbs,seq,tp,pp,vpp,cp,ep,dp,mbs,dispatcher,overlap,status,", 0) ==
        0);
  CHECK(csv.find(",bubble_s,compute_s,exposed dp_s,reason\n") != std::string::npos);
  CHECK(csv.find("\n1,m<1>,c,analytic,8,64,4096,1,1,1,1,1,8,1,alltoall,dp,ok,1.05,") != std::string::npos);
  const auto j = nlohmann::json::parse(sweep::to_json(sweep::rank_results(results), results));
  CHECK(j["schema_version"] == 1);
  CHECK(j["points"].size() == results.size());
  CHECK(j["rankings"][0]["best_point"] == 1);
  CHECK(j["rankings"][0]["runner_up_loses_on"] == "bubble +400.000 ms");
  CHECK(j["rankings"][0]["speedup_vs_none"]["dp"].get<double>() == Approx(1.30 / 1.05));
  CHECK_FALSE(j.contains("other_points_kept"));
  const auto kept = nlohmann::json::parse(sweep::to_json(sweep::rank_results(results), results, {3, "s.jsonl"}));
  CHECK(kept["other_points_kept"] == 3);
  CHECK(kept["results_file"] == "s.jsonl");
}

TEST_CASE("sweep::render_html: charts present, input strings escaped", "[sweep]") {
  const auto results = sample();
  const std::string html = sweep::render_html(results, sweep::rank_results(results));
  CHECK(html.find("<svg class=\"chart\" id=\"variants-1\"") != std::string::npos);
  CHECK(html.find("<svg class=\"chart\" id=\"scaling-1\"") != std::string::npos);
  CHECK(html.find("<svg class=\"chart\" id=\"heat-1\"") != std::string::npos);
  CHECK(html.find("<polyline") != std::string::npos);
  CHECK(html.find("m&lt;1&gt;") != std::string::npos);
  CHECK(html.find("m<1>") == std::string::npos);
  // Heat cell for 8 GPUs, EP 1, batch 64: fastest layout A, benefit 1.30 / 1.05 - 1 = +23.8%.
  CHECK(html.find("+23.8%") != std::string::npos);
  CHECK(html == sweep::render_html(results, sweep::rank_results(results)));  // deterministic bytes
}

namespace {

/// The fields of the CSV line of point `index`.
std::vector<std::string> csv_row(const std::string& csv, std::size_t index) {
  std::istringstream in(csv);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(std::to_string(index) + ",", 0) != 0) continue;
    std::vector<std::string> fields;
    std::size_t start = 0;
    for (std::size_t comma; (comma = line.find(',', start)) != std::string::npos; start = comma + 1) {
      fields.push_back(line.substr(start, comma - start));
    }
    fields.push_back(line.substr(start));
    return fields;
  }
  return {};
}

}  // namespace

TEST_CASE("sweep::format_table: the top-N simulated layouts of each GPU count, ranked, with the gain vs none",
          "[sweep]") {
  const auto results = sample();
  const auto rankings = sweep::rank_results(results);
  const std::string all = sweep::format_table(rankings, results, 0);
  // Rank 1 (A dp) gains 1.30 / 1.05 - 1 = +23.8% on its none variant; rank 3 (B dp) 1.40 / 1.32 - 1 = +6.1%.
  CHECK(all.find("     1  tp1 pp1 vpp1 cp1 ep1 dp8 mbs1") != std::string::npos);
  const auto row = [&](const std::string& prefix) {
    const auto at = all.find(prefix);
    REQUIRE(at != std::string::npos);
    return all.substr(at, all.find('\n', at) - at);
  };
  CHECK(row("     1  tp1 pp1").find("+23.8%") != std::string::npos);
  CHECK(row("     1  tp1 pp1").find("+0.0%") != std::string::npos);   // vs best
  CHECK(row("     2  tp1 pp1").find("+23.8%") != std::string::npos);  // 1.30 vs 1.05 best
  CHECK(row("     3  tp2 pp2").find("+6.1%") != std::string::npos);
  CHECK(row("     4  tp2 pp2").find("+33.3%") != std::string::npos);  // 1.40 / 1.05 - 1
  CHECK(all.find("8 GPUs: 4 simulated, 1 invalid, 0 do not fit, 0 cannot win, 0 errors") != std::string::npos);
  CHECK(all.find("more simulated") == std::string::npos);
  const std::string top2 = sweep::format_table(rankings, results, 2);
  CHECK(top2.find("     2  tp1 pp1") != std::string::npos);
  CHECK(top2.find("     3  tp2 pp2") == std::string::npos);
  CHECK(top2.find("... 2 more simulated (--top 0 lists all") != std::string::npos);
}

TEST_CASE("sweep::format_table: columns stay aligned for long layouts (two-digit VPP, EP) and overlap names",
          "[sweep]") {
  std::vector<sweep::Result> results = {
      make(0, 1024, 8, 16, "none", 1.0, 0.1, 0.1, "ok", 1, 1024),
      make(1, 1024, 8, 16, "dp+tp+pp+cp", 1.0, 0.05, 0.1, "ok", 1, 1024),
      make(2, 1024, 2, 16, "dp", 1.0, 0.2, 0.1, "ok", 32, 1024),
  };
  // Layouts of 39 and more characters: "tp8 pp16 vpp12 cp16 ep1 dp1 mbs1", and EP with its dispatcher.
  results[0].point.layout.vpp = 12;
  results[0].point.layout.cp = 16;
  results[1].point.layout.vpp = 12;
  results[1].point.layout.cp = 16;
  results[2].point.layout.vpp = 12;
  results[2].point.layout.cp = 128;
  const std::string table = sweep::format_table(sweep::rank_results(results), results, 0);
  std::istringstream in(table);
  std::string line;
  std::size_t header_overlap = std::string::npos, header_step = std::string::npos, rows = 0;
  while (std::getline(in, line)) {
    if (line.find("  #  layout") != std::string::npos) {
      header_overlap = line.find("overlap");
      header_step = line.find("step time") + std::string("step time").size();
      continue;
    }
    const auto first = line.find_first_not_of(' ');
    if (first != 5 || line.compare(6, 4, "  tp") != 0) continue;  // rows 1-9: "     1  tp..."
    REQUIRE(header_overlap != std::string::npos);
    INFO(table);
    // The overlap starts under its header, and the step time ends where its header does (right-aligned, " s").
    const std::string overlap = line.substr(header_overlap, line.find(' ', header_overlap) - header_overlap);
    CHECK((overlap == "none" || overlap == "dp+tp+pp+cp" || overlap == "dp"));
    CHECK(line.compare(header_step - 2, 2, " s") == 0);
    ++rows;
  }
  CHECK(rows == 3);
}

TEST_CASE("sweep::to_csv and format_table: the solved SM clock only where the power-cap clock model ran", "[sweep]") {
  std::vector<sweep::Result> results = sample();
  const std::string plain_csv = sweep::to_csv(results);
  CHECK(plain_csv.find("sm_clock_mhz") == std::string::npos);
  CHECK(sweep::format_table(sweep::rank_results(results), results, 0).find("SM MHz") == std::string::npos);
  // The line's own field is what result_from_line reads.
  auto j = nlohmann::json::parse(results[1].line);
  j["sm_clock_mhz"] = 1612.4;
  results[1] = sweep::result_from_line(j.dump(), "test");
  REQUIRE(results[1].sm_clock_mhz == Approx(1612.4));
  const std::string csv = sweep::to_csv(results);
  std::istringstream in(csv);
  std::string header, row0, row1;
  std::getline(in, header);
  std::getline(in, row0);
  std::getline(in, row1);
  const auto column = [](const std::string& line, const std::string& name_or_index, const std::string& head) {
    std::vector<std::string> names, cells;
    std::string cell;
    for (std::istringstream h(head); std::getline(h, cell, ',');) names.push_back(cell);
    for (std::istringstream l(line); std::getline(l, cell, ',');) cells.push_back(cell);
    for (std::size_t i = 0; i < names.size(); ++i) {
      if (names[i] == name_or_index) return i < cells.size() ? cells[i] : std::string();
    }
    return std::string("(no column)");
  };
  CHECK(column(row1, "sm_clock_mhz", header) == "1612");
  CHECK(column(row0, "sm_clock_mhz", header).empty());  // no clock solved for that point
  CHECK(column(row1, "compute_s", header) == "1");      // the columns after it did not shift
  const std::string table = sweep::format_table(sweep::rank_results(results), results, 0);
  CHECK(table.find("SM MHz") != std::string::npos);
  CHECK(table.find("     1  tp1 pp1") != std::string::npos);
  const auto at = table.find("     1  tp1 pp1");
  CHECK(table.substr(at, table.find('\n', at) - at).find(" 1612") != std::string::npos);
}

TEST_CASE("sweep::rank_results: a pruned none variant gives the best layout's speedups as lower bounds", "[sweep]") {
  std::vector<sweep::Result> results = sample();
  // Layout A's none variant (1.30 s) was pruned in rising bound order with a bound of 1.20 s.
  auto j = nlohmann::json::parse(results[0].line);
  j["status"] = "cannot_win";
  j.erase("step_time_s");
  j["lower_bound_s"] = 1.20;
  results[0] = sweep::result_from_line(j.dump(), "test");
  REQUIRE(results[0].lower_bound_s == Approx(1.20));
  const auto rankings = sweep::rank_results(results);
  const sweep::Ranking& g = rankings[0];
  REQUIRE(g.best == std::optional<std::size_t>(1));
  CHECK(g.none_bound_s == Approx(1.20));
  REQUIRE(g.speedup_vs_none.size() == 1);  // dp only: none did not run
  CHECK(g.speedup_vs_none[0].first == "dp");
  CHECK(g.speedup_vs_none[0].second == Approx(1.20 / 1.05));
  const std::string table = sweep::format_table(rankings, results, 0);
  CHECK(table.find("speedup vs none on the best layout: dp >= 1.143x (none not simulated: it cannot win, its step is "
                   "at least its bound 1.200 s)") != std::string::npos);
  const auto out = nlohmann::json::parse(sweep::to_json(rankings, results, {}));
  CHECK(out["rankings"][0]["speedup_vs_none_at_least_from_bound_s"].get<double>() == Approx(1.20));
  // Where the none variant ran, no bound is used (group of 16 GPUs).
  CHECK(rankings[1].none_bound_s == 0);
  CHECK(out["rankings"][1].count("speedup_vs_none_at_least_from_bound_s") == 0);
}

TEST_CASE("sweep::speedups_vs_none: each variant against the none variant of the same point", "[sweep]") {
  const auto results = sample();
  const auto s = sweep::speedups_vs_none(results);
  REQUIRE(s.size() == results.size());
  CHECK_FALSE(s[0]);  // none itself
  REQUIRE(s[1]);
  CHECK(*s[1] == Approx(1.30 / 1.05));
  REQUIRE(s[3]);
  CHECK(*s[3] == Approx(1.40 / 1.32));
  REQUIRE(s[6]);
  CHECK(*s[6] == Approx(0.80 / 0.62));
  CHECK_FALSE(s[4]);  // did not run
}

TEST_CASE("sweep::to_csv: points that did not run have empty figures, not 0", "[sweep]") {
  const auto results = sample();
  const std::string csv = sweep::to_csv(results);
  CHECK(csv.find(",memory_gib_per_gpu,memory_capacity_gib,") != std::string::npos);
  // Columns: 16 status, 17 step_time_s, 18 mfu, 19 tflops_per_gpu, 20 memory_gib_per_gpu, 21 memory_capacity_gib.
  const auto invalid = csv_row(csv, 4);
  REQUIRE(invalid.size() > 21);
  CHECK(invalid[16] == "invalid");
  for (std::size_t c = 17; c <= 21; ++c) CHECK(invalid[c].empty());
  const auto no_fit = csv_row(csv, 7);
  REQUIRE(no_fit.size() > 21);
  CHECK(no_fit[16] == "does_not_fit");
  CHECK(no_fit[17].empty());
  CHECK(no_fit[18].empty());
  const auto ok = csv_row(csv, 1);
  REQUIRE(ok.size() > 21);
  CHECK(ok[17] == "1.05");
  CHECK(ok[18] == "0.5");
  CHECK(ok[20] == "40");
}

TEST_CASE("sweep::reasons_not_run: one line per reason, numbers blanked, most frequent first", "[sweep]") {
  auto results = sample();
  auto no_fit = [&](std::size_t index, const std::string& reason) {
    nlohmann::ordered_json j = nlohmann::json::parse(results[7].line);
    j["point"] = index;
    j["reason"] = reason;
    return sweep::result_from_line(j.dump(), "test");
  };
  results.push_back(no_fit(20, "needs 93.2 GiB per GPU (memory estimate), the GPU has 79.6 GiB"));
  results.push_back(no_fit(21, "needs 120.5 GiB per GPU (memory estimate), the GPU has 79.6 GiB"));
  results.push_back(no_fit(22, "llama3-8b: tp2 needs 8 heads"));
  const auto reasons = sweep::reasons_not_run(results);
  REQUIRE(reasons.size() == 4);
  CHECK(reasons[0].count == 2);
  CHECK(reasons[0].status == sweep::PointStatus::kDoesNotFit);
  CHECK(reasons[0].reason == "needs # GiB per GPU (memory estimate), the GPU has # GiB");
  CHECK(results[reasons[0].example].index == 20);
  CHECK(reasons[0].numbers_differ);
  bool named = false;
  for (const auto& r : reasons) {
    if (r.reason != "llama3-8b: tp2 needs # heads") continue;
    named = true;
    CHECK_FALSE(r.numbers_differ);  // one point: its reason is the example's
  }
  CHECK(named);
  // The table prints the example's numbers, never the "#" pattern.
  const std::string table = sweep::format_table(sweep::rank_results(results), results, 10);
  CHECK(table.find("2 x does_not_fit: needs 93.2 GiB per GPU (memory estimate), the GPU has 79.6 GiB  (point 20; the "
                   "others' numbers differ)") != std::string::npos);
  CHECK(table.find("1 x does_not_fit: llama3-8b: tp2 needs 8 heads\n") != std::string::npos);
  CHECK(table.find("needs # ") == std::string::npos);
}

TEST_CASE("sweep::render_html: a sortable ranked table of every simulated point, not-run points by reason", "[sweep]") {
  const auto results = sample();
  const std::string html = sweep::render_html(results, sweep::rank_results(results), {}, {3, "s.jsonl"});
  // One script (the table sorter), nothing external.
  CHECK(html.find("<script") == html.rfind("<script"));
  CHECK(html.find("<script>") != std::string::npos);
  CHECK(html.find("src=") == std::string::npos);
  CHECK(html.find("href=") == std::string::npos);
  const auto table = html.find("<table id=\"all-points\" class=\"sortable\">");
  REQUIRE(table != std::string::npos);
  const std::string ranked = html.substr(table, html.find("</table>", table) - table);
  std::size_t rows = 0;
  for (auto p = ranked.find("<tr><td>"); p != std::string::npos; p = ranked.find("<tr><td>", p + 1)) ++rows;
  CHECK(rows == 6);  // every simulated point
  // Sort keys: step time in seconds, gain vs none as a fraction, empty for the none variant.
  CHECK(ranked.find("<td data-v=\"1.05\">1.050 s</td>") != std::string::npos);
  CHECK(ranked.find("<td data-v=\"0.238095238\">+23.8%</td>") != std::string::npos);
  CHECK(ranked.find("<td data-v=\"\"></td>") != std::string::npos);
  // Not run: counted by reason first, each point in a collapsed list after.
  const auto reasons = html.find("<table id=\"not-run-reasons\"");
  const auto details = html.find("<details id=\"not-run-details\"><summary>every point not run (2)</summary>");
  REQUIRE(reasons != std::string::npos);
  REQUIRE(details != std::string::npos);
  CHECK(reasons < details);
  CHECK(html.find("<details open") == std::string::npos);
  CHECK(html.find("3 other points (earlier sweeps into s.jsonl) are kept in that file") != std::string::npos);
  CHECK(sweep::render_html(results, sweep::rank_results(results)).find("other points") == std::string::npos);
}
