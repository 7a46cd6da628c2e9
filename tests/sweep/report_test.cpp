// Ranking, runner-up reason, speedups, CSV/JSON and the HTML report on hand-made results (closed-form oracles).
#include "sweep/report.hpp"

#include <nlohmann/json.hpp>
#include <string>

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
  p.overlap = overlap;
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
  CHECK(html.find("<script") == std::string::npos);
  // Heat cell for 8 GPUs, EP 1, batch 64: fastest layout A, benefit 1.30 / 1.05 - 1 = +23.8%.
  CHECK(html.find("+23.8%") != std::string::npos);
  CHECK(html == sweep::render_html(results, sweep::rank_results(results)));  // deterministic bytes
}
