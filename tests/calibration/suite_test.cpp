// The default suite's grouped-GEMM microbenchmarks (MoE experts): the zoo's expert shapes of qwen3-30b-a3b at a
// sweep of tokens per expert with the 64 local experts of EP2, each probe sized by kernel_math's FLOPs.
#include "calibration/suite.hpp"

#include <algorithm>
#include <set>
#include <string>
#include <tuple>

#include "schedule/kernel_math.hpp"
#include "schedule/validate.hpp"
#include "sim/simulate.hpp"
#include "tests/catch.hpp"
#include "topologies/cluster.hpp"

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

namespace {

/// The trace of `g` simulated on two H200s with the datasheet profile and `waiting_sms_per_channel`.
twinstep::schedule::Trace simulate_h200x2(const twinstep::calibration::BenchGroup& g, double waiting_sms_per_channel) {
  const auto cluster = twinstep::topologies::load_cluster("h200x2-nvlink", twinstep::topologies::ClusterSize{0, 2});
  auto profile = twinstep::sim::Profile::datasheet_defaults();
  profile.interference.waiting_sms_per_channel = waiting_sms_per_channel;
  const twinstep::sim::CostModel costs(cluster, profile);
  return twinstep::sim::simulate(g.schedule, cluster, costs);
}

}  // namespace

TEST_CASE("calibration::make_suite: corun.recv_wait runs a compute list solo and beside a waiting recv",
          "[calibration]") {
  using twinstep::calibration::kRecvWaitGroup;
  for (const auto& name : {"default", "quick"}) {
    INFO(name);
    for (const auto& g : make_suite(name, 1)) CHECK(g.name != kRecvWaitGroup);  // needs a peer
    const auto suite = make_suite(name, 2);
    const twinstep::calibration::BenchGroup* rw = nullptr;
    for (const auto& g : suite) {
      if (g.name == kRecvWaitGroup) rw = &g;
    }
    REQUIRE(rw != nullptr);
    const auto& s = rw->schedule;
    CHECK(twinstep::schedule::validate(s).empty());
    // Rank 0: one 16 MiB recv from rank 1 on tp_recv (priority -1); rank 1 runs no kernel and sends it after 20 ms.
    const sch::Op* recv = nullptr;
    const sch::Op* send = nullptr;
    std::size_t rank1_host_ns = 0;
    for (const auto& op : s.ops) {
      if (const auto* r = std::get_if<sch::Recv>(&op.body); r != nullptr && r->bytes == 16u << 20) recv = &op;
      if (const auto* x = std::get_if<sch::Send>(&op.body); x != nullptr && x->bytes == 16u << 20) send = &op;
      if (const auto* h = std::get_if<sch::Host>(&op.body)) rank1_host_ns += static_cast<std::size_t>(h->duration_ns);
      if (op.rank == 1) CHECK_FALSE(std::holds_alternative<sch::Compute>(op.body));
    }
    REQUIRE(recv != nullptr);
    REQUIRE(send != nullptr);
    CHECK(recv->rank == 0);
    CHECK(s.streams[recv->stream].name == "tp_recv");
    CHECK(s.streams[recv->stream].priority == -1);
    CHECK(send->rank == 1);
    CHECK(s.streams[send->stream].name == "tp_send");
    CHECK(rank1_host_ns == 20'000'000);
    // Probes: 6 GEMMs and attention fwd/bwd, each solo and waiting on the same kernel, plus the recv.
    std::vector<std::pair<sch::OpId, sch::OpId>> pairs;
    for (const auto& p : rw->probes) {
      REQUIRE(p.ops.size() == 1);
      if (p.family != "recv_wait.waiting") continue;
      const std::string base = p.name.substr(0, p.name.size() - std::string(".waiting").size());
      const auto solo = std::find_if(rw->probes.begin(), rw->probes.end(),
                                     [&](const twinstep::calibration::Probe& q) { return q.name == base + ".solo"; });
      REQUIRE(solo != rw->probes.end());
      CHECK(solo->family == "recv_wait.solo");
      const auto& a = s.ops[solo->ops[0]];
      const auto& b = s.ops[p.ops[0]];
      CHECK(a.rank == 0);
      CHECK(b.rank == 0);
      CHECK(std::get<sch::Compute>(a.body).kernel == std::get<sch::Compute>(b.body).kernel);
      pairs.emplace_back(a.id, b.id);
    }
    CHECK(pairs.size() == 8);
    CHECK(rw->probes.size() == 2 * pairs.size() + 1);
    // Simulated with every waiting CTA holding an SM (the strongest slowdown, the longest list): the solo list ends
    // before the recv is posted, and the whole waiting list runs while the recv still waits (~20 ms).
    const auto t = simulate_h200x2(*rw, 1.0);
    const auto& rec = t.records[recv->id];
    CHECK(rec.end_ns - rec.start_ns >= 19'000'000);
    bool slower = false;
    for (const auto& [solo, waiting] : pairs) {
      CHECK(t.records[solo].end_ns <= rec.start_ns);
      CHECK(t.records[waiting].start_ns >= rec.start_ns);
      CHECK(t.records[waiting].end_ns < rec.end_ns - 5'000'000);
      const auto d_solo = t.records[solo].end_ns - t.records[solo].start_ns;
      const auto d_wait = t.records[waiting].end_ns - t.records[waiting].start_ns;
      CHECK(d_wait >= d_solo);
      slower = slower || d_wait > d_solo * 11 / 10;
    }
    CHECK(slower);
    // Without waiting SMs the two lists take the same time.
    const auto t0 = simulate_h200x2(*rw, 0.0);
    for (const auto& [solo, waiting] : pairs) {
      CHECK(t0.records[waiting].end_ns - t0.records[waiting].start_ns ==
            t0.records[solo].end_ns - t0.records[solo].start_ns);
    }
  }
}
