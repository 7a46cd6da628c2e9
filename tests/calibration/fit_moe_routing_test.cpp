// The eager MoE routing fit (calibration/fit_moe_routing.hpp): torch_moe_routing.py's JSON (a small committed fixture:
// a --device cpu run whose CPU seconds stand in for GPU seconds) read and fitted into op_compute tables that give
// every measured call back its time (the kernels of one call at its efficiency sum to it), forward and backward; a
// malformed file is a ParseError naming the field.
#include "calibration/fit_moe_routing.hpp"

#include <functional>
#include <nlohmann/json.hpp>
#include <string>

#include "common/error.hpp"
#include "common/io.hpp"
#include "models/lowering/moe_eager.hpp"
#include "tests/catch.hpp"

using namespace twinstep;
using namespace twinstep::calibration;
namespace ml = twinstep::models::lowering;

namespace {

const std::string kFixture = std::string(TWINSTEP_SOURCE_DIR) + "/tests/calibration/data/moe_routing_fixture.json";
constexpr double kHbm = 3.35e12;  // any positive bandwidth: the tables are relative to it

/// Seconds the fitted tables give `kernels` (of `group` when not empty): bytes / (HBM x the stem's efficiency).
double priced(const sim::Profile& p, const char* phase, const std::vector<ml::EagerKernel>& kernels,
              const std::string& group = "") {
  double t = 0;
  for (const auto& k : kernels) {
    if (k.kind != ml::EagerKind::kKernel || (!group.empty() && k.group != group)) continue;
    const auto& table = p.op_compute.at(std::string(phase) + "." + k.name);
    t += static_cast<double>(k.bytes) / (kHbm * table.at(static_cast<double>(k.bytes)));
  }
  return t;
}

/// The fixture with `edit` applied, written to a temporary file; returns its path.
std::string edited(const std::function<void(nlohmann::json&)>& edit) {
  nlohmann::json j = nlohmann::json::parse(read_file(kFixture));
  edit(j);
  std::string path = "moe_routing_edited.json";
  write_file_atomic(path, j.dump());
  return path;
}

}  // namespace

TEST_CASE("calibration::moe_routing: the fitted tables give every measured call and backward its time",
          "[calibration][moe_routing]") {
  const MoeRoutingInput in = read_moe_routing(kFixture);
  REQUIRE(in.cases.size() == 2);
  sim::Profile p;
  std::vector<std::string> log;
  fit_moe_routing(in, kHbm, p, log);
  CHECK(p.context.at("moe_routing_source").find("synthetic") != std::string::npos);
  CHECK(p.fits.back().name == "moe_routing");
  // A recomputed forward (full recompute: "L.mb.recompute.<op>") runs the same kernels: the same tables.
  CHECK(p.op_compute.at("recompute.router_logits_topk").points == p.op_compute.at("fwd.router_logits_topk").points);
  CHECK(p.op_compute.count("recompute.router_logits_topk_bwd") == 0);
  for (const MoeRoutingCase& c : in.cases) {
    INFO("T " << c.tokens << " E " << c.experts);
    const ml::RoutingShape shape{c.tokens, c.experts, c.topk, c.hidden, 2, c.tokens * c.topk, c.aux_loss};
    // Forward: calls of one kernel and of several (the out-of-place scatter: copy + scatter; masked_select).
    for (const char* group : {"router_logits_topk", "router_map_scatter", "router_aux_counts"}) {
      const auto k = ml::routing_kernels(ml::RoutingSegment::kRouter, shape, false, false);
      CHECK(priced(p, "fwd", k, group) == Approx(c.fwd_gpu_s.at(group)).epsilon(1e-9));
    }
    for (const char* group : {"permute_idx_select", "permute_tokens"}) {
      const auto k = ml::routing_kernels(ml::RoutingSegment::kPermute, shape, false, false);
      CHECK(priced(p, "fwd", k, group) == Approx(c.fwd_gpu_s.at(group)).epsilon(1e-9));
    }
    // Backward: a segment's kernels sum to its one autograd.backward call. The router's aux-loss scalars (the same
    // bytes at every shape) share one point, their cases' median: its sum is exact up to their spread.
    for (const auto seg : {ml::RoutingSegment::kPermute, ml::RoutingSegment::kUnpermute, ml::RoutingSegment::kSort}) {
      const auto k = ml::routing_kernels(seg, shape, false, true);
      CHECK(priced(p, "bwd", k) == Approx(c.bwd_gpu_s.at(ml::segment_key(seg))).epsilon(1e-9));
    }
    const auto router = ml::routing_kernels(ml::RoutingSegment::kRouter, shape, false, true);
    CHECK(priced(p, "bwd", router) == Approx(c.bwd_gpu_s.at("router")).epsilon(1e-2));
  }
  // The log lists every figure: one line per forward call and backward segment, and the host times.
  std::size_t lines = 0;
  for (const auto& l : log) lines += l.starts_with("moe_routing fwd router_logits_topk") ? 1 : 0;
  CHECK(lines == 2);
}

TEST_CASE("calibration::moe_routing: a malformed file is a ParseError naming the field", "[calibration][moe_routing]") {
  CHECK_THROWS_WITH(read_moe_routing(edited([](nlohmann::json& j) { j["schema"] = "other/1"; })),
                    twinstep_contains("/schema"));
  CHECK_THROWS_WITH(read_moe_routing(edited([](nlohmann::json& j) {
                      j["cases"][0]["segments"]["router"]["fwd"]["steps"][0]["gpu_s"] = nullptr;
                    })),
                    twinstep_contains("/cases/0/segments/router/fwd/steps/0/gpu_s: null"));
  CHECK_THROWS_WITH(read_moe_routing(edited([](nlohmann::json& j) { j["cases"][1]["segments"].erase("unpermute"); })),
                    twinstep_contains("/cases/1/segments/unpermute"));
  CHECK_THROWS_WITH(read_moe_routing(edited([](nlohmann::json& j) { j["cases"][0]["tokens"] = -4; })),
                    twinstep_contains("/cases/0/tokens"));
  CHECK_THROWS_AS(
      read_moe_routing(edited([](nlohmann::json& j) { j["cases"][0]["segments"]["sort"]["bwd"]["gpu_s"] = 0; })),
      ParseError);
  // A step the lowering needs and the file lacks: named when fitting.
  sim::Profile p;
  std::vector<std::string> log;
  const auto lacking = read_moe_routing(edited([](nlohmann::json& j) {
    auto& steps = j["cases"][0]["segments"]["permute"]["fwd"]["steps"];
    steps.erase(steps.begin());
  }));
  CHECK_THROWS_WITH(fit_moe_routing(lacking, kHbm, p, log), twinstep_contains("no step \"permute_map_t\""));
}

TEST_CASE("calibration::moe_routing: each call's host figure is its measured host time less what is charged apart",
          "[calibration][moe_routing]") {
  const MoeRoutingInput in = read_moe_routing(kFixture);
  REQUIRE(in.cases.size() == 2);
  REQUIRE(in.cases[0].experts == in.cases[1].experts);  // one expert count: the median of two is their mean
  sim::Profile p = sim::Profile::datasheet_defaults();
  p.launch_s["compute"] = 0.5e-6;
  p.launch_s["memcpy"] = 0.6e-6;
  p.launch_s["host_sync"] = 0.1e-6;
  p.framework.host_sync_s = 0.3e-6;
  p.framework.backward_call_s = 3e-6;
  p.framework.per_autograd_node_s = 0.6e-6;
  std::vector<std::string> log;
  fit_moe_routing_host(in, p, log);
  const auto& calls = p.framework.moe_routing_calls;
  const auto mean = [&](const std::function<double(const MoeRoutingCase&)>& f) {
    return (f(in.cases[0]) + f(in.cases[1])) / 2;
  };
  const auto figure = [&](const std::string& call) {
    const auto& t = calls.at(call);
    REQUIRE(t.points.size() == 1);
    CHECK(t.points[0].first == static_cast<double>(in.cases[0].experts));
    return t.points[0].second;
  };
  // masked_select: 3 kernels and the count's D2H copy, its sync (wake-up + framework share); a CPU run's fixture has
  // no profiler list, so no GPU wait before the copy.
  CHECK(figure("fwd.permute_idx_select") ==
        Approx(mean([](const MoeRoutingCase& c) { return c.fwd_host_s.at("permute_idx_select"); }) - 3 * 0.5e-6 -
               (0.6e-6 + 0.1e-6 + 0.3e-6)));
  // One kernel; the MoEAuxLossAutoScaler node launches none.
  CHECK(figure("fwd.router_topk_softmax") ==
        Approx(mean([](const MoeRoutingCase& c) { return c.fwd_host_s.at("router_topk_softmax"); }) - 0.5e-6));
  CHECK(figure("fwd.router_aux_attach") ==
        Approx(mean([](const MoeRoutingCase& c) { return c.fwd_host_s.at("router_aux_attach"); })));
  // The router's backward with the aux loss: 11 kernels emitted, 9 nodes its forward recorded, one backward call.
  CHECK(figure("bwd.router") == Approx(mean([](const MoeRoutingCase& c) { return c.bwd_host_s.at("router"); }) - 3e-6 -
                                       9 * 0.6e-6 - 11 * 0.5e-6));
  CHECK(calls.count("bwd.sort") == 1);
  CHECK(calls.count("fwd.sort_tokens") == 1);
  // Round trip through the profile's framework section.
  const sim::Profile back = sim::profile_from_json(sim::profile_to_json(p), "roundtrip");
  CHECK(back.framework.moe_routing_calls.at("bwd.router").points == calls.at("bwd.router").points);
  // A launch figure above a call's measured time leaves no positive figure: not written, and the log says so.
  sim::Profile slow = sim::Profile::datasheet_defaults();
  slow.launch_s["compute"] = 1e-3;
  std::vector<std::string> slow_log;
  fit_moe_routing_host(in, slow, slow_log);
  CHECK(slow.framework.moe_routing_calls.count("fwd.router_topk_softmax") == 0);
  CHECK(slow.framework.moe_routing_calls.count("fwd.router_aux_attach") == 1);  // no kernel: nothing to subtract
  bool said = false;
  for (const auto& line : slow_log) said = said || line.find("router_topk_softmax: E 16") != std::string::npos;
  CHECK(said);
}
