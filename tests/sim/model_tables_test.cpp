// The analytic model's per-simulation tables: distinct kernel shapes and distinct communication ops, each looked up
// first as the one that followed the previous op's last time (the ops repeat their shapes layer after layer), and a
// collective whose only present member is the op that starts it (a reduced schedule's). Every op must still get its
// own cost, whatever the order: each is checked against its own cost, the full schedule or a simulation of it alone.
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

/// A fixed pseudo-random sequence (64-bit LCG, Knuth's MMIX constants): the draws repeat runs and break them.
struct Lcg {
  std::uint64_t x = 12345;
  std::uint32_t next(std::uint32_t n) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<std::uint32_t>((x >> 33) % n);
  }
};

Nanos duration(const Trace& t, OpId op) { return t.records.at(op).end_ns - t.records.at(op).start_ns; }

/// Datasheet defaults without launch costs: each op starts when its conditions hold.
Profile no_launch_costs() {
  Profile p = Profile::datasheet_defaults();
  for (auto& [cls, s] : p.launch_s) s = 0;
  return p;
}

}  // namespace

TEST_CASE("sim: kernels in any order, shapes a field apart, each take their own shape's cost", "[sim][tables]") {
  const auto cluster = topologies::load_cluster("dgx-h100");
  Profile prof = Profile::datasheet_defaults();
  prof.op_compute["named"] = EfficiencyTable{{{1e6, 0.3}, {1e15, 0.3}}};  // priced by name and shape
  const CostModel costs(cluster, prof);
  // Six shapes that differ in one field each; "named" ops share shapes with unnamed ones but not their table.
  std::vector<Compute> shapes;
  for (const Gemm& g :
       {Gemm{1024, 1024, 1024}, Gemm{1024, 1024, 2048}, Gemm{2048, 1024, 1024}, Gemm{1024, 2048, 1024}}) {
    shapes.push_back(Compute{g});
  }
  Gemm acc{1024, 1024, 1024};
  acc.accumulate = true;
  shapes.push_back(Compute{acc});
  shapes.push_back(Compute{Gemm{1024, 1024, 1024}, 16});  // reserved SMs
  Builder b(1, {{"compute", 0}});
  Lcg rng;
  double expected = 0;
  std::vector<double> solo_ns;
  for (int i = 0; i < 600; ++i) {
    // Runs of the cycle 0..5 (predicted after the first pass), broken by random draws and named ops.
    const std::uint32_t k = i % 7 == 6 ? rng.next(6) : static_cast<std::uint32_t>(i % 6);
    const std::string name = rng.next(5) == 0 ? "named" : "";
    b.add(0, name, 0, shapes[k]);
    const double solo = costs.kernel_cost(shapes[k], name).solo_time_s();
    expected += solo;
    solo_ns.push_back(solo * 1e9);
  }
  REQUIRE(costs.kernel_cost(shapes[0], "named").solo_time_s() != costs.kernel_cost(shapes[0]).solo_time_s());
  double solo = -1;
  Options o;
  o.solo_compute_out = &solo;
  const Trace t = simulate(b.schedule(), cluster, costs, o);
  CHECK(solo == expected);  // the same additions in the same order: bit for bit
  for (std::size_t i = 0; i < solo_ns.size(); ++i) {
    INFO("op " << i);
    CHECK(static_cast<double>(duration(t, static_cast<OpId>(i))) == Approx(solo_ns[i]).margin(1.0));
  }
}

TEST_CASE("sim: collectives and transfers in any order, sizes and kinds apart, each run as it runs alone",
          "[sim][tables]") {
  const auto cluster = topologies::load_cluster("dgx-h100", {2, 0});
  const CostModel costs(cluster, no_launch_costs());
  struct Comm {
    CollectiveKind kind;
    std::uint64_t bytes;
    std::uint32_t sm_count;
    bool p2p;  ///< A send from the first member to the second instead.
  };
  const Comm kinds[] = {
      {CollectiveKind::kAllReduce, 64ull << 20, 0, false},  {CollectiveKind::kAllReduce, 32ull << 20, 0, false},
      {CollectiveKind::kAllGather, 64ull << 20, 0, false},  {CollectiveKind::kReduceScatter, 64ull << 20, 0, false},
      {CollectiveKind::kAllReduce, 64ull << 20, 16, false}, {CollectiveKind::kAllReduce, 64ull << 20, 0, true},
      {CollectiveKind::kAllReduce, 16ull << 20, 0, true}};
  const std::vector<std::vector<RankId>> groups = {{0, 1}, {0, 8}};  // in a node, across nodes
  auto add = [&](Builder& b, const Comm& c, CommId comm, const std::vector<RankId>& members, std::uint32_t tag) {
    if (c.p2p) {
      b.send(members[0], "s", 0, comm, members[1], c.bytes, tag);
      b.recv(members[1], "r", 0, comm, members[0], c.bytes, tag);
      return;
    }
    for (RankId r : members) {
      const OpId op = b.collective(r, "c", 0, c.kind, comm, c.bytes);
      std::get<Collective>(b.schedule().ops[op].body).sm_count = c.sm_count;
    }
  };
  // The sequence on one stream per rank, op after op: each runs alone, as it does in a schedule of its own.
  Builder b(16);
  const CommId comms[] = {b.comm("a", "dp", groups[0]), b.comm("b", "dp", groups[1])};
  Lcg rng;
  std::vector<std::pair<std::uint32_t, std::uint32_t>> drawn;  // (kind, group)
  for (std::uint32_t i = 0; i < 120; ++i) {
    const std::uint32_t k = i % 5 == 4 ? rng.next(7) : i % 7, g = rng.next(4) == 0 ? 1 : 0;
    drawn.emplace_back(k, g);
    add(b, kinds[k], comms[g], groups[g], i);
  }
  Schedule s = b.schedule();
  s.ranks = {0, 1, 8};
  // Ops per rank in program order: the schedule lists them in draw order, so the i-th draw's first op on the first
  // member is found by counting.
  const Trace t = simulate(s, cluster, costs);
  std::vector<std::uint32_t> seen(16, 0);
  std::vector<std::vector<OpId>> by_rank(16);
  for (const auto& op : t.schedule.ops) by_rank[op.rank].push_back(op.id);
  for (std::size_t i = 0; i < drawn.size(); ++i) {
    const auto [k, g] = drawn[i];
    INFO("draw " << i << ": kind " << k << " on group " << g);
    const RankId first = groups[g][0];
    const OpId op = by_rank[first].at(seen[first]);
    for (RankId r : groups[g]) ++seen[r];
    Builder alone(16);
    const CommId ca = alone.comm("a", "dp", groups[0]), cb = alone.comm("b", "dp", groups[1]);
    add(alone, kinds[k], g == 0 ? ca : cb, groups[g], 0);
    Schedule sa = alone.schedule();
    sa.ranks = {0, 1, 8};
    const Trace ta = simulate(sa, cluster, costs);
    CHECK(duration(t, op) == duration(ta, 0));
  }
}

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
