// The sweep's use of steady-state periodicity (evaluate/periodic.hpp, tested in tests/evaluate/periodic_test.cpp) end
// to end: extrapolated points equal the full simulation, for 1F1B, interleaved, DP overlap and MoE EP overlap.
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "sweep/grid.hpp"
#include "sweep/runner.hpp"
#include "tests/catch.hpp"

using namespace twinstep;

TEST_CASE("sweep::evaluate_point: extrapolated points equal the full simulation", "[sweep]") {
  sweep::Spec s;
  s.models = {"llama3-8b", "qwen3-30b-a3b"};
  s.clusters = {"dgx-h100"};
  s.gpus = {8};
  s.gbs = {128};
  s.seq = {1024};
  s.tp = {2};
  s.pp = {1, 2};
  s.vpp = {1, 2};
  s.ep = {1, 2, 4};  // Qwen3-30B at EP 1 and TP2 PP2 holds 89 GiB (fp32 main grads of unsharded experts): no fit
  s.overlaps = {models::parse_overlap_variant("none", "overlap"), models::parse_overlap_variant("all", "overlap")};
  std::size_t extrapolated = 0, compared = 0;
  for (const auto& p : sweep::expand(s)) {
    if (!p.invalid_reason.empty()) continue;
    const auto a = nlohmann::json::parse(sweep::evaluate_point(p, true));
    if (a["status"] != "ok") continue;
    const auto b = nlohmann::json::parse(sweep::evaluate_point(p, false));
    INFO(p.model << " " << p.layout.describe() << " " << models::to_string(p.overlap) << ": " << a.dump());
    REQUIRE(b["status"] == "ok");
    CHECK_FALSE(b.contains("extrapolated_from_micro_batches"));
    ++compared;
    if (!a.contains("extrapolated_from_micro_batches")) continue;
    ++extrapolated;
    CHECK(a["step_time_s"].get<double>() == Approx(b["step_time_s"].get<double>()).epsilon(1e-9));
    CHECK(a["mfu"].get<double>() == Approx(b["mfu"].get<double>()).epsilon(1e-9));
    CHECK(a["memory_gib_per_gpu"] == b["memory_gib_per_gpu"]);
    CHECK(a["warnings"] == b["warnings"]);
    for (const auto& [k, v] : b["breakdown_s"].items()) {
      CHECK(a["breakdown_s"][k].get<double>() == Approx(v.get<double>()).margin(1e-9));
    }
  }
  CHECK(compared >= 8);
  CHECK(extrapolated >= 6);
}
