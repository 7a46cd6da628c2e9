// Collective::sm_count: a fused communication kernel holds its own SM budget while it runs (DeepEP/HybridEP's
// moe_flex_num_sms), in place of one CTA per NCCL channel; compute beside it slows accordingly.
#include "schedule/analysis.hpp"
#include "sim/simulate.hpp"
#include "tests/catch.hpp"
#include "tests/sim/builder.hpp"

using namespace twinstep;
using namespace twinstep::sim;
using namespace twinstep::sim::testing;

namespace {

/// End of rank 0's GEMM (ns) while a 1 GiB all-reduce with `sm_count` runs beside it on both GPUs.
Nanos gemm_end_beside_allreduce(std::uint32_t sm_count) {
  Builder b(2, {{"compute", 0}, {"comm", -1}});
  const CommId world = b.comm("world", "dp", {0, 1});
  for (RankId r = 0; r < 2; ++r) {
    Collective c;
    c.kind = CollectiveKind::kAllReduce;
    c.comm = world;
    c.bytes = 1ull << 30;
    c.sm_count = sm_count;
    b.add(r, "ar", 1, c);
    b.gemm(r, "gemm", 0, 8192, 8192, 8192);
  }
  const auto cluster = uniform_node(2, 100e9);
  const auto trace = simulate(b.schedule(), cluster, CostModel(cluster, closed_form_profile()));
  return trace.records.at(1).end_ns;
}

}  // namespace

TEST_CASE("sim: a collective with sm_count holds that many SMs instead of its channels", "[sim]") {
  // closed_form_profile: one NCCL channel, so by default the all-reduce holds one SM of the H100's 132.
  const Nanos by_channels = gemm_end_beside_allreduce(0);
  const Nanos one = gemm_end_beside_allreduce(1);
  const Nanos fused = gemm_end_beside_allreduce(66);
  CHECK(one == by_channels);
  // Half the SMs held: the GEMM's waves double (8192^2 / (128x256 tiles) = 2048 tiles over 66 instead of 131 SMs).
  CHECK(static_cast<double>(fused) > 1.8 * static_cast<double>(by_channels));
}
