// The analytic model's shortcuts around its per-op records: a collective whose only present member is the op that
// starts it (a reduced schedule's) takes that op's GPU without reading the instance's member list. Every op must
// still get its own cost: each is checked against the full schedule or a simulation of it alone.
#include <cstdint>
#include <string>
#include <vector>

#include "sim/simulate.hpp"
#include "tests/catch.hpp"
#include "tests/sim/builder.hpp"

using namespace twinstep;
using namespace twinstep::sim;
using namespace twinstep::sim::testing;

namespace {

Nanos duration(const Trace& t, OpId op) { return t.records.at(op).end_ns - t.records.at(op).start_ns; }

/// Datasheet defaults without launch costs: each op starts when its conditions hold.
Profile no_launch_costs() {
  Profile p = Profile::datasheet_defaults();
  for (auto& [cls, s] : p.launch_s) s = 0;
  return p;
}

}  // namespace

TEST_CASE("sim: a collective whose only present member starts it shares that GPU's NIC as in the full schedule",
          "[sim][tables]") {
  // Two all-reduces across nodes (members 0 and 8) on two streams of each member: they share each member's NIC.
  // Reduced to rank 0 (rank 8 mirrors it), each instance has one present member, which starts it alone; its GPU
  // must still be rank 0's, whose NIC the two share as in the full schedule.
  const auto cluster = topologies::load_cluster("dgx-h100", {2, 0});
  const CostModel costs(cluster, no_launch_costs());
  auto run = [&](bool reduced, bool two) {
    Builder b(16, {{"a", 0}, {"b", 0}});
    const CommId c = b.comm("dp", "dp", {0, 8});
    for (RankId r : {0u, 8u}) {
      if (reduced && r == 8) continue;
      b.all_reduce(r, "ar0", 0, c, 1ull << 30);
      if (two) b.all_reduce(r, "ar1", 1, c, 1ull << 30);
    }
    Schedule s = b.schedule();
    s.ranks = reduced ? std::vector<RankId>{0} : std::vector<RankId>{0, 8};
    return simulate(s, cluster, costs);
  };
  const Trace full = run(false, true), reduced = run(true, true), one = run(true, false);
  REQUIRE(
      costs.collective_cost(CollectiveKind::kAllReduce, 1 << 30, costs.span(full.schedule.communicators[0])).uses_nic);
  CHECK(duration(reduced, 0) == duration(full, 0));
  CHECK(duration(reduced, 1) == duration(full, 1));
  CHECK(duration(reduced, 0) > duration(one, 0));  // the NIC share is what the two have in common
}
