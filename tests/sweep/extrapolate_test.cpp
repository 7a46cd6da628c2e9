// Micro-batch extrapolation: the choice of counts, the line and its affinity check (closed forms), and the sweep
// path end to end: extrapolated points equal the full simulation (the step is affine in micro-batches once the
// pipeline is full), for 1F1B, interleaved, DP overlap and MoE EP overlap.
#include "sweep/extrapolate.hpp"

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "sweep/grid.hpp"
#include "sweep/runner.hpp"
#include "tests/catch.hpp"

using namespace twinstep;

TEST_CASE("sweep::extrapolation_counts: from pp + 1 by 1 (1F1B), from two groups by a group (interleaved)", "[sweep]") {
  using Counts = std::array<std::uint32_t, 3>;
  CHECK(sweep::extrapolation_counts(64, 4, 1, 4) == Counts{5, 6, 7});
  CHECK(sweep::extrapolation_counts(128, 4, 2, 4) == Counts{8, 12, 16});
  CHECK(sweep::extrapolation_counts(128, 4, 2, 6) == Counts{12, 18, 24});  // a larger group size
  CHECK(sweep::extrapolation_counts(10, 1, 1, 1) == Counts{2, 3, 4});
  // Only when the three runs simulate fewer micro-batches than the full run.
  CHECK(sweep::extrapolation_counts(9, 1, 1, 1) == std::nullopt);
  CHECK(sweep::extrapolation_counts(18, 4, 1, 4) == std::nullopt);
  CHECK(sweep::extrapolation_counts(19, 4, 1, 4) == Counts{5, 6, 7});
  CHECK(sweep::extrapolation_counts(36, 4, 2, 4) == std::nullopt);
  CHECK(sweep::extrapolation_counts(37, 4, 2, 4) == Counts{8, 12, 16});
  CHECK(sweep::extrapolation_counts(1, 1, 1, 0) == std::nullopt);
}

TEST_CASE("sweep::extrapolate: the line through the samples, and non-affine steps refused", "[sweep]") {
  auto sample = [](std::uint32_t m, double fixed, double per_mb) {
    return sweep::MicroBatchSample{m, {{"step", fixed + per_mb * m}, {"compute", per_mb * m}, {"bubble", fixed}}};
  };
  std::string why;
  const auto v =
      sweep::extrapolate({sample(8, 0.5, 0.01), sample(9, 0.5, 0.01), sample(10, 0.5, 0.01)}, 100, 1e-3, &why);
  REQUIRE(v);
  CHECK(v->at("step") == Approx(0.5 + 0.01 * 100).epsilon(1e-12));
  CHECK(v->at("compute") == Approx(1.0).epsilon(1e-12));
  CHECK(v->at("bubble") == Approx(0.5).epsilon(1e-12));

  // The second slope is 1% larger: not affine.
  auto bent = sample(10, 0.5, 0.01);
  bent.values_s["step"] += 0.0001;
  CHECK_FALSE(sweep::extrapolate({sample(8, 0.5, 0.01), sample(9, 0.5, 0.01), bent}, 100, 1e-3, &why));
  CHECK(why.find("not affine") != std::string::npos);

  // A category shrinking per micro-batch would go negative far out.
  auto shrink = [](std::uint32_t m) {
    return sweep::MicroBatchSample{m, {{"step", 1.0 + 0.01 * m}, {"compute", 0.02 * m}, {"bubble", 1.0 - 0.01 * m}}};
  };
  CHECK_FALSE(sweep::extrapolate({shrink(8), shrink(9), shrink(10)}, 1000, 1e-3, &why));
  CHECK(why.find("bubble") != std::string::npos);
}

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
  s.overlaps = {"none", "all"};
  std::size_t extrapolated = 0, compared = 0;
  for (const auto& p : sweep::expand(s)) {
    if (!p.invalid_reason.empty()) continue;
    const auto a = nlohmann::json::parse(sweep::evaluate_point(p, true));
    if (a["status"] != "ok") continue;
    const auto b = nlohmann::json::parse(sweep::evaluate_point(p, false));
    INFO(p.model << " " << p.layout.describe() << " " << p.overlap << ": " << a.dump());
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
