// Grid expansion, auto layouts (hand-counted case; every auto layout lowers to a valid schedule), point keys,
// sweep-file parsing and shards.
#include "sweep/grid.hpp"

#include <cstdlib>
#include <set>
#include <string>

#include "common/error.hpp"
#include "models/lower.hpp"
#include "models/model_spec.hpp"
#include "schedule/validate.hpp"
#include "sim/simulate.hpp"
#include "tests/catch.hpp"
#include "tests/support/run_configs.hpp"

using namespace twinstep;

namespace {

models::OverlapVariant overlap(const char* text) { return models::parse_overlap_variant(text, "overlap"); }

const std::string kTiny = std::string(TWINSTEP_SOURCE_DIR) + "/tests/sweep/data/tiny.json";

sweep::ModelShape tiny_shape() { return sweep::ModelShape{4, 8, 4, 0, 512}; }

sweep::Spec tiny_spec() {
  sweep::Spec s;
  s.models = {kTiny};
  s.clusters = {"dgx-h100"};
  s.gpus = {4};
  s.gbs = {8};
  s.seq = {256};
  s.auto_layout = true;
  return s;
}

}  // namespace

TEST_CASE("sweep::auto_layouts: hand-counted tiny case", "[sweep]") {
  // 4 layers, 8 heads, 4 groups, 4 GPUs, node of 8, seq 256, mbs 1. By hand (docs in the test source):
  // tp1: pp1 x cp{1,2,4} = 3; pp2 x vpp{1,2} x cp{1,2} = 4; pp4 = 1 -> 8. tp2: pp1 x cp{1,2} = 2; pp2 x vpp{1,2} = 2
  // -> 4. tp4: 1. Total 13 with gbs 8 (every dp divides 8 and micro-batches are multiples of pp).
  std::vector<std::pair<sweep::Layout, std::string>> rejected;
  const auto layouts = sweep::auto_layouts(tiny_shape(), 4, 8, 8, 256, {1}, &rejected);
  CHECK(layouts.size() == 13);
  CHECK(rejected.empty());
  std::set<std::string> unique;
  for (const auto& l : layouts) {
    CHECK(l.tp * l.pp * l.cp * l.dp == 4);
    unique.insert(l.describe());
  }
  CHECK(unique.size() == 13);

  // gbs 6: tp1 pp1 cp1 (dp 4) and tp1 pp2 vpp2 cp1 (dp 2, 3 micro-batches) are rejected, with the reason.
  rejected.clear();
  const auto six = sweep::auto_layouts(tiny_shape(), 4, 8, 6, 256, {1}, &rejected);
  CHECK(six.size() == 11);
  REQUIRE(rejected.size() == 2);
  CHECK(rejected[0].first.describe() == "tp1 pp1 vpp1 cp1 ep1 dp4 mbs1");
  CHECK(rejected[0].second == "global batch 6 is not divisible by mbs x dp = 4");
  CHECK(rejected[1].first.describe() == "tp1 pp2 vpp2 cp1 ep1 dp2 mbs1");
  CHECK(rejected[1].second.find("3 micro-batches per rank to be a multiple of pp 2") != std::string::npos);

  // TP never exceeds a node: with 2 GPUs per node, tp4 disappears.
  for (const auto& l : sweep::auto_layouts(tiny_shape(), 4, 2, 8, 256, {1})) CHECK(l.tp <= 2);
}

TEST_CASE("sweep::auto_layouts: every auto layout lowers to a valid schedule", "[sweep]") {
  const models::ModelSpec model = models::load_model(kTiny);
  const auto layouts = sweep::auto_layouts(tiny_shape(), 4, 8, 8, 256, {1, 2});
  REQUIRE(layouts.size() > 13);
  for (const auto& l : layouts) {
    // "all" turns on overlap_p2p_comm, which interleaving on pp <= 2 needs.
    const models::RunConfig c = testing::with_overlap(
        testing::production(testing::run_config({4, l.tp, l.pp, l.vpp, l.cp, 1, l.mbs, 8, 256})), "all");
    INFO(l.describe());
    const models::Lowered lowered = models::lower(model, c);
    CHECK(schedule::validate(lowered.schedule).empty());
    CHECK(lowered.schedule.ranks.size() == 4);
  }
}

TEST_CASE("sweep::layout_problem: Megatron's rules give reasons", "[sweep]") {
  sweep::Point p;
  p.gpus = 8;
  p.gbs = 16;
  p.seq = 256;
  auto why = [&](sweep::Layout l, sweep::ModelShape m = tiny_shape()) {
    p.layout = l;
    return sweep::layout_problem(m, p, 8, true);
  };
  CHECK(why({1, 1, 1, 1, 1, 8, 1}).empty());
  CHECK(why({3, 1, 1, 1, 1, 0, 1}) == "tp x pp x cp = 3 does not divide 8 GPUs");
  CHECK(why({8, 1, 1, 1, 1, 1, 1}).find("does not divide num_attention_heads 8 and num_query_groups 4") !=
        std::string::npos);
  CHECK(why({1, 8, 1, 1, 1, 1, 1}) == "pp 8 does not divide num_layers 4");
  CHECK(why({1, 1, 2, 1, 1, 8, 1}) == "vpp 2 needs pp > 1 (interleaving)");
  CHECK(why({1, 2, 4, 1, 1, 4, 1}) == "vpp 4 does not divide the 2 layers per pipeline stage");
  CHECK(why({1, 1, 1, 1, 2, 8, 1}) == "ep 2 > 1 needs an MoE model");
  CHECK(why({1, 1, 1, 1, 4, 8, 1}, sweep::ModelShape{4, 8, 4, 6, 512}) == "ep 4 does not divide num_moe_experts 6");
  p.seq = 250;
  CHECK(why({1, 1, 1, 2, 1, 4, 1}) == "seq_length 250 is not divisible by 2 x cp = 4");
}

TEST_CASE("sweep::expand: order, keys and invalid points", "[sweep]") {
  sweep::Spec s = tiny_spec();
  s.auto_layout = false;
  s.tp = {1, 3};
  s.gpus = {4, 8};
  s.overlaps = {overlap("none"), overlap("dp")};
  s.dispatchers = {models::TokenDispatcher::kAllToAll,
                   models::TokenDispatcher::kFlex};  // a dense model is swept with the first dispatcher only
  const auto points = sweep::expand(s);
  REQUIRE(points.size() == 2 * 2 * 2);  // gpus x tp x overlap
  std::set<std::string> keys;
  for (std::size_t i = 0; i < points.size(); ++i) {
    CHECK(points[i].index == i);
    CHECK(points[i].dispatcher == models::TokenDispatcher::kAllToAll);
    keys.insert(sweep::point_key(points[i]));
  }
  CHECK(keys.size() == points.size());
  CHECK(points[0].overlap.none());
  CHECK(points[1].overlap == overlap("dp"));
  CHECK(points[0].layout.tp == 1);
  CHECK(points[2].layout.tp == 3);
  CHECK(points[2].invalid_reason == "tp x pp x cp = 3 does not divide 4 GPUs");
  CHECK(points[4].gpus == 8);
  // Keys are canonical JSON and round-trip.
  const sweep::Point back = sweep::point_from_inputs(nlohmann::json::parse(sweep::point_key(points[1])), "test");
  CHECK(sweep::point_key(back) == sweep::point_key(points[1]));
  CHECK(sweep::point_key(points[1]).find("\"cluster\":\"dgx-h100\",\"config\":\"\",\"cp\":1") != std::string::npos);
  CHECK(back.overlap == overlap("dp"));
  nlohmann::json bad_key = sweep::point_inputs(points[1]);
  bad_key["overlap"] = "dp+fsdp";
  CHECK_THROWS_WITH(sweep::point_from_inputs(bad_key, "results.jsonl: line 3"),
                    twinstep_contains("results.jsonl: line 3: /key/overlap: unknown overlap mode \"fsdp\""));

  // A GPU count the cluster cannot have is one invalid point with the loader's reason.
  s.gpus = {12};
  const auto odd = sweep::expand(s);
  REQUIRE(!odd.empty());
  CHECK(!odd[0].invalid_reason.empty());

  s.models = {"no-such-model"};
  CHECK_THROWS_AS(sweep::expand(s), Error);
  // An overlap variant is parsed where it is read: the sweep file names its pointer, the flag itself.
  CHECK_THROWS_WITH(sweep::spec_from_json(R"({"overlap": ["none", "dp+warp"]})", "s.json"),
                    twinstep_contains("s.json: /overlap: unknown overlap mode \"warp\" in variant \"dp+warp\""));
  CHECK_THROWS_WITH(sweep::split_modes("none,warp", "--overlap", models::parse_overlap_variant),
                    twinstep_contains("--overlap: unknown overlap mode \"warp\""));
}

TEST_CASE("sweep::invalid_layout_fixes: the flag at fault and the sizes the valid layouts use", "[sweep]") {
  // tiny: 8 heads, 4 query groups, ffn 512, 4 layers; 4 GPUs of one 8-GPU node, gbs 8, seq 256.
  sweep::Spec s = tiny_spec();
  s.auto_layout = false;
  s.tp = {3};
  const auto tp3 = sweep::invalid_layout_fixes(s);
  REQUIRE(tp3.size() == 1);
  CHECK(tp3[0] == "--tp 3 (sweep file: parallel/tp): no valid layout of " + kTiny +
                      " on 4 GPUs (gbs 8, seq 256) has tp 3; the valid layouts use tp 1, 2, 4");
  // Two lists at fault at once: each named.
  s.pp = {3, 5};
  const auto both = sweep::invalid_layout_fixes(s);
  REQUIRE(both.size() == 2);
  CHECK(both[1].rfind("--pp 3, 5 (sweep file: parallel/pp): ", 0) == 0);
  CHECK(both[1].find("the valid layouts use pp 1, 2, 4") != std::string::npos);
  // Each list has a usable size, their product does not divide the GPUs: one valid layout instead.
  s.tp = {4};
  s.pp = {2};
  const auto combo = sweep::invalid_layout_fixes(s);
  REQUIRE(combo.size() == 1);
  CHECK(combo[0] == "no combination of the --tp/--pp/--vpp/--cp/--ep lists is valid for " + kTiny +
                        " on 4 GPUs (gbs 8, seq 256); a valid one: tp1 pp1 vpp1 cp1 ep1 dp4 mbs1");
  // Auto layouts have nothing to fix.
  CHECK(sweep::invalid_layout_fixes(tiny_spec()).empty());
}

TEST_CASE("sweep::spec_from_json: fields, scalars for lists, errors", "[sweep]") {
  const auto s = sweep::spec_from_json(
      R"({"models": "llama3-8b", "clusters": ["dgx-h100"], "gpus": [8, 16], "gbs": 64,
          "parallel": {"tp": [1, 2], "pp": [2]}, "overlap": ["none", "all"]})",
      "s.json");
  CHECK(s.models == std::vector<std::string>{"llama3-8b"});
  CHECK(s.gpus == std::vector<std::uint32_t>{8, 16});
  CHECK(s.gbs == std::vector<std::uint32_t>{64});
  CHECK(s.tp == std::vector<std::uint32_t>{1, 2});
  CHECK(s.pp == std::vector<std::uint32_t>{2});
  CHECK(s.overlaps == std::vector<models::OverlapVariant>{overlap("none"), overlap("all")});
  CHECK_FALSE(s.auto_layout);
  CHECK(sweep::spec_from_json(R"({"parallel": "auto"})", "s.json").auto_layout);
  CHECK_THROWS_WITH(
      sweep::spec_from_json(R"({"gpu": [8]})", "s.json"),
      twinstep_contains("s.json: /gpu: unknown field \"gpu\"") && twinstep_contains("did you mean \"gpus\"?"));
  // A new user's "model" (the field is "models"): the key, every accepted key and the fix.
  CHECK_THROWS_WITH(
      sweep::spec_from_json(R"({"model": 3})", "s.json"),
      twinstep_contains("s.json: /model: unknown field \"model\" (accepted here: models, clusters, gpus, "
                        "gbs, seq, mbs, parallel, overlap, dispatcher, fidelity, profile, config, clock_model); "
                        "did you mean \"models\"?"));
  CHECK_THROWS_WITH(sweep::spec_from_json(R"({"gpus": [0]})", "s.json"),
                    twinstep_contains("/gpus: expected a positive integer"));
  CHECK_THROWS_WITH(sweep::spec_from_json(R"({"parallel": {"xp": [1]}})", "s.json"),
                    twinstep_contains("/parallel/xp: unknown field \"xp\" (accepted here: tp, pp, vpp, cp, ep)"));
  CHECK_THROWS_AS(sweep::spec_from_json("{", "s.json"), ParseError);
}

TEST_CASE("sweep::shards: deterministic partition, flag and MPI environment", "[sweep]") {
  std::vector<sweep::Point> points(10);
  for (std::size_t i = 0; i < points.size(); ++i) points[i].index = i;
  std::set<std::size_t> seen;
  for (std::uint32_t i = 0; i < 3; ++i) {
    for (const auto& p : sweep::select_shard(points, {i, 3})) {
      CHECK(p.index % 3 == i);
      CHECK(seen.insert(p.index).second);
    }
  }
  CHECK(seen.size() == 10);
  CHECK(sweep::parse_shard("2/4").index == 2);
  CHECK(sweep::parse_shard("2/4").count == 4);
  for (const char* bad : {"4/4", "1", "a/2", "-1/2", "1/0", "/2"}) {
    CHECK_THROWS_WITH(sweep::parse_shard(bad), twinstep_contains("--shard"));
  }
  ::setenv("PMI_RANK", "1", 1);
  ::setenv("PMI_SIZE", "5", 1);
  CHECK(sweep::shard_from_env().index == 1);
  CHECK(sweep::shard_from_env().count == 5);
  ::setenv("OMPI_COMM_WORLD_RANK", "3", 1);  // Open MPI's variables win
  ::setenv("OMPI_COMM_WORLD_SIZE", "4", 1);
  CHECK(sweep::shard_from_env().index == 3);
  ::unsetenv("OMPI_COMM_WORLD_RANK");
  ::unsetenv("OMPI_COMM_WORLD_SIZE");
  ::unsetenv("PMI_RANK");
  ::unsetenv("PMI_SIZE");
  CHECK(sweep::shard_from_env().count == 1);
}

TEST_CASE("sweep::split_list: lists from flags", "[sweep]") {
  CHECK(sweep::split_uints("16,32,64", "--gpus") == std::vector<std::uint32_t>{16, 32, 64});
  CHECK_THROWS_WITH(sweep::split_uints("16,x", "--gpus"), twinstep_contains("--gpus: \"x\" is not a positive integer"));
  CHECK_THROWS_WITH(sweep::split_list("none,,dp", "--overlap"), twinstep_contains("empty item"));
  CHECK_THROWS_WITH(sweep::split_list("dp,dp", "--overlap"), twinstep_contains("listed twice"));
}

TEST_CASE("sweep: the default fidelity is predict's, and each point names its predict command", "[sweep]") {
  CHECK(sweep::Spec{}.fidelities == std::vector<sim::Fidelity>{sim::default_fidelity()});
  sweep::Point p;
  p.model = "llama3-70b";
  p.cluster = "dgx-h100";
  p.gpus = 64;
  p.gbs = 512;
  p.seq = 8192;
  p.layout.tp = 2;
  p.layout.pp = 4;
  p.layout.vpp = 2;
  p.layout.cp = 4;
  p.overlap = overlap("all");
  CHECK(sweep::predict_command(p) ==
        "twinstep predict --model llama3-70b --cluster dgx-h100 --gpus 64 --tp 2 --pp 4 --vpp 2 --cp 4 --mbs 1 "
        "--gbs 512 --seq 8192 --fidelity analytic --overlap all");
}
