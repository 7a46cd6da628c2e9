// A grouped GEMM's per-group launches on the host thread (CostModel::host_tail_ns, sim/core.cpp): it may start when
// its first group's launch ends, and the host issues its other groups and its fork/join events before the next op's
// launch. Closed forms after a host sync (the host issues in lockstep) and a GPU-bound case where nothing moves.
#include <string>
#include <utility>
#include <vector>

#include "sim/simulate.hpp"
#include "tests/catch.hpp"
#include "tests/sim/builder.hpp"

using namespace twinstep;
using namespace twinstep::sim;
using namespace twinstep::sim::testing;

namespace {

constexpr double kLaunchS = 4e-6;  // launch.compute
constexpr double kGroupS = 10e-6;  // launch.grouped_gemm_group
constexpr double kEventS = 1e-6;   // launch.event

Profile launch_profile(bool group_key, bool event_key) {
  Profile p = closed_form_profile();
  p.launch_s["compute"] = kLaunchS;
  if (group_key) p.launch_s[kGroupedGemmGroupLaunch] = kGroupS;
  if (event_key) p.launch_s[kEventLaunch] = kEventS;
  return p;
}

Trace run(const Schedule& s, const Profile& p, Fidelity fidelity) {
  const auto cluster = topologies::load_cluster("dgx-h100");
  Options o;
  o.fidelity = fidelity;
  return simulate(s, cluster, CostModel(cluster, p), o);
}

std::vector<Fidelity> fidelities() {
  std::vector<Fidelity> f{Fidelity::kAnalytic};
  if (flow_model_available()) f.push_back(Fidelity::kFlow);
  return f;
}

/// 16 non-empty groups of 64 rows and one empty one (17 groups: min(17, 4) = 4 side streams).
Compute small_grouped() {
  std::vector<std::uint64_t> m(16, 64);
  m.push_back(0);
  return Compute{GroupedGemm{m, 256, 256, DType::kBF16}, 0};
}

Op op_of(Compute c) {
  Op op;
  op.body = std::move(c);
  return op;
}

}  // namespace

TEST_CASE("grouped launch: host_tail_ns counts the other groups and the fork/join events", "[sim][launch]") {
  const auto cluster = topologies::load_cluster("dgx-h100");
  const Op grouped = op_of(small_grouped());
  const Op plain = op_of(Compute{Gemm{64, 256, 256}, 0});
  const CostModel both(cluster, launch_profile(true, true));
  // (16 - 1) groups + (1 fork record + 4 waits + 4 join records + 4 waits) events.
  CHECK(both.host_tail_ns(grouped) == 15 * to_nanos(kGroupS) + 13 * to_nanos(kEventS));
  CHECK(both.host_tail_ns(plain) == 0);
  // Without the keys: launch.compute per group, events free (not measured).
  const CostModel defaults(cluster, launch_profile(false, false));
  CHECK(defaults.host_tail_ns(grouped) == 15 * to_nanos(kLaunchS));
  const Op one = op_of(Compute{GroupedGemm{{0, 128, 0}, 256, 256, DType::kBF16}, 0});
  CHECK(both.host_tail_ns(one) == (1 + 3 * 3) * to_nanos(kEventS));  // one group: no other launch; 3 streams
}

TEST_CASE("grouped launch: after a host sync the next op waits for every group's launch", "[sim][launch]") {
  // A GEMM, a host_sync on it (wake-up 0), the grouped GEMM and a small GEMM after it. With the GPU drained the host
  // issues in lockstep: the grouped GEMM starts at S + L (S: the sync's end, L: launch.compute), the host is busy
  // until S + L + (G - 1) Lg + (1 + 3 x 4) E, and the small GEMM starts one launch later:
  //   start(next) = S + L + (G - 1) Lg + 13 E + L, with G = 16, Lg = 10 us, E = 1 us, L = 4 us: S + 151 us,
  // its GPU time (a few us of tiny GEMMs) being shorter than the host's issue.
  Builder b(1, {{"compute", 0}});
  const OpId g0 = b.gemm(0, "g0", 0, 1024, 1024, 1024);
  const OpId sync = b.add(0, "sync", 0, HostSync{g0});
  const OpId grouped = b.add(0, "grouped", 0, small_grouped());
  const OpId next = b.gemm(0, "next", 0, 64, 256, 256);
  const Schedule s = b.schedule();
  const Nanos l = to_nanos(kLaunchS), lg = to_nanos(kGroupS), e = to_nanos(kEventS);
  for (const Fidelity f : fidelities()) {
    CAPTURE(to_string(f));
    const Trace t = run(s, launch_profile(true, true), f);
    const Nanos sync_end = t.records[sync].end_ns;
    CHECK(sync_end == t.records[g0].end_ns);
    CHECK(t.records[grouped].issue_ns == sync_end);
    CHECK(t.records[grouped].start_ns == sync_end + l);
    REQUIRE(t.records[grouped].end_ns < sync_end + l + 15 * lg);  // host-bound: the GPU waits for the launches
    CHECK(t.records[next].issue_ns == sync_end + l + 15 * lg + 13 * e);
    CHECK(t.records[next].start_ns == sync_end + l + 15 * lg + 13 * e + l);
    // The profile without the keys: launch.compute per group, no event cost.
    const Trace d = run(s, launch_profile(false, false), f);
    CHECK(d.records[next].start_ns == d.records[sync].end_ns + l + 15 * l + l);
  }
}

TEST_CASE("grouped launch: with the host ahead of the GPU nothing moves", "[sim][launch]") {
  // A long GEMM first: the host issues the grouped GEMM and the next op long before the GPU reaches them, so their
  // GPU times are those of a run that charges no per-group launches.
  Builder b(1, {{"compute", 0}});
  b.gemm(0, "long", 0, 8192, 8192, 8192);
  const OpId grouped = b.add(0, "grouped", 0, small_grouped());
  const OpId next = b.gemm(0, "next", 0, 64, 256, 256);
  const Schedule s = b.schedule();
  Profile no_tail = launch_profile(true, true);
  no_tail.launch_s[kGroupedGemmGroupLaunch] = 0;
  no_tail.launch_s[kEventLaunch] = 0;
  for (const Fidelity f : fidelities()) {
    CAPTURE(to_string(f));
    const Trace with = run(s, launch_profile(true, true), f), without = run(s, no_tail, f);
    CHECK(with.records[next].issue_ns ==
          without.records[next].issue_ns + 15 * to_nanos(kGroupS) + 13 * to_nanos(kEventS));
    for (const OpId op : {OpId{0}, grouped, next}) {
      CHECK(with.records[op].start_ns == without.records[op].start_ns);
      CHECK(with.records[op].end_ns == without.records[op].end_ns);
    }
    CHECK(with.records[next].start_ns == with.records[grouped].end_ns);
    CHECK(with.step_times_ns.at(0) == without.step_times_ns.at(0));
  }
}
