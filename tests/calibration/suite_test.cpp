// The default suite's grouped-GEMM microbenchmarks (MoE experts): the zoo's expert shapes of qwen3-30b-a3b at a
// sweep of tokens per expert with the 64 local experts of EP2, each probe sized by kernel_math's FLOPs.
#include "calibration/suite.hpp"

#include <set>
#include <tuple>

#include "schedule/kernel_math.hpp"
#include "tests/catch.hpp"

using twinstep::calibration::make_suite;
namespace sch = twinstep::schedule;

TEST_CASE("calibration::make_suite: default holds grouped GEMMs at qwen3-30b-a3b's expert shapes", "[calibration]") {
  for (std::uint32_t world : {1u, 2u}) {
    const auto suite = make_suite("default", world);
    const twinstep::calibration::BenchGroup* grouped = nullptr;
    for (const auto& g : suite) {
      if (g.name == "compute.grouped_gemm") grouped = &g;
    }
    REQUIRE(grouped != nullptr);
    // (groups, rows per group, n, k) of the sweep, balanced rows
    std::set<std::tuple<std::uint64_t, std::uint64_t, std::uint64_t, std::uint64_t>> found;
    for (const auto& p : grouped->probes) {
      CHECK(p.family == "grouped_gemm");
      REQUIRE(p.ops.size() == 1);
      const auto& op = grouped->schedule.ops[p.ops[0]];
      CHECK(op.rank == 0);
      const auto& k = std::get<sch::GroupedGemm>(std::get<sch::Compute>(op.body).kernel);
      CHECK(p.size == sch::kernel_flops(sch::Kernel{k}));
      CHECK(p.params.at("groups") == static_cast<double>(k.m.size()));
      bool balanced = true;
      for (auto m : k.m) balanced = balanced && m == k.m.front();
      if (balanced) found.insert({k.m.size(), k.m.front(), k.n, k.k});
    }
    for (std::uint64_t rows : {16, 32, 64, 128, 256, 512, 1024}) {
      for (auto [n, k] :
           {std::pair<std::uint64_t, std::uint64_t>{1536, 2048}, {2048, 768}, {2048, 1536}, {768, 2048}}) {
        INFO("64 groups of " << rows << " rows, n " << n << " k " << k);
        CHECK(found.count({64, rows, n, k}) == 1);
      }
    }
    for (const auto& t : found) CHECK(std::get<0>(t) != 128);  // one group count per FLOP-keyed table (suite.cpp)
    // Every rank runs the group's kernels (so a multi-GPU run measures each GPU under the same load).
    CHECK(grouped->schedule.ops.size() == grouped->probes.size() * world);
  }
  // The quick suite has no MoE configuration and so no grouped GEMMs.
  for (const auto& g : make_suite("quick", 2)) CHECK(g.name != "compute.grouped_gemm");
}
