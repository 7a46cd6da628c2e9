// NCCL's algorithm/protocol choice and channel shrink in closed form at the switch points NCCL 2.28.9 showed on two
// H200 (NCCL_DEBUG=INFO, calibration/measured/h200x2/nccl_tuning.log: Ring LL up to 1 MiB, Ring Simple from 2 MiB,
// LL channels 1 up to 8 KiB then bytes / 8 KiB), the choice's independence from measured overrides, and the
// optional bus_efficiency table of a profile entry.
#include <string>

#include "common/error.hpp"
#include "sim/cost_model.hpp"
#include "tests/catch.hpp"

using namespace twinstep;
using namespace twinstep::sim;
using schedule::CollectiveKind;

namespace {

CommSpan pair_span(const CostModel& costs) { return costs.span(schedule::Communicator{"g", "tp", {0, 1}}); }

Profile ring_ll_simple() {
  Profile p = Profile::datasheet_defaults();
  p.nccl.algorithms = {NcclAlgo::kRing};
  p.nccl.protocols = {NcclProto::kLL, NcclProto::kLL128, NcclProto::kSimple};
  return p;
}

}  // namespace

TEST_CASE("sim::CostModel: two-rank ring collectives switch LL -> Simple where NCCL's estimates cross", "[sim][nccl]") {
  const auto cluster = topologies::load_cluster("h200x2-nvlink");
  const CostModel costs(cluster, ring_ll_simple());
  const auto span = pair_span(costs);
  // NCCL's estimates (hardware.md 4.3), with the ring bandwidth its graph search finds on NV18: 360 GB/s (18 links
  // of 20.6 GB/s give 370.8; the search packs channels of 30 GB/s: 12 x 30), as NCCL 2.28.9 prints it. all_reduce:
  // LL 6.6 + 2 x 0.6 us at min(141, 360 / 2) GB/s; Simple 8.4 + 2 x 3.4 us at 360 GB/s; LL128 14 + 2 x 1.9 us at
  // 0.92 x 360 never wins.
  const double x_star = (15.2e-6 - 7.8e-6) / (1.0 / 141e9 - 1.0 / 360e9);  // 1.715 MB
  CHECK(x_star == Approx(1.7152e6).epsilon(1e-3));
  const auto below = costs.collective_cost(CollectiveKind::kAllReduce, 0.99 * x_star, span);
  const auto above = costs.collective_cost(CollectiveKind::kAllReduce, 1.01 * x_star, span);
  CHECK(below.proto == NcclProto::kLL);
  CHECK(above.proto == NcclProto::kSimple);
  CHECK(below.latency_s == Approx(7.8e-6));
  CHECK(above.latency_s == Approx(15.2e-6));
  // all_gather / reduce_scatter (n - 1 = 1 step, algbw = 2 x busbw; IR bytes = the gathered total): LL 7.2 us at
  // 282 GB/s, Simple 11.8 us at 720 GB/s, crossing at 2.132 MB; broadcast (1 step, algbw = busbw): LL 7.2 us at
  // 141, Simple 11.8 us at 360, crossing at 1.066 MB.
  const double ag_star = (11.8e-6 - 7.2e-6) / (1.0 / 282e9 - 1.0 / 720e9);
  const double bc_star = (11.8e-6 - 7.2e-6) / (1.0 / 141e9 - 1.0 / 360e9);
  CHECK(ag_star == Approx(2.1324e6).epsilon(1e-3));
  CHECK(bc_star == Approx(1.0662e6).epsilon(1e-3));
  for (auto kind : {CollectiveKind::kAllGather, CollectiveKind::kReduceScatter}) {
    CHECK(costs.collective_cost(kind, 0.99 * ag_star, span).proto == NcclProto::kLL);
    CHECK(costs.collective_cost(kind, 1.01 * ag_star, span).proto == NcclProto::kSimple);
  }
  CHECK(costs.collective_cost(CollectiveKind::kBroadcast, 0.99 * bc_star, span).proto == NcclProto::kLL);
  CHECK(costs.collective_cost(CollectiveKind::kBroadcast, 1.01 * bc_star, span).proto == NcclProto::kSimple);
  // The suite's sizes, as NCCL 2.28.9 ran them on two H200 (nccl_tuning.log): all_reduce and broadcast LL up to
  // 1 MiB, all_gather and reduce_scatter LL up to 2 MiB (NCCL logs 1 MiB per rank), Simple above; never LL128.
  for (double bytes = 1024; bytes <= 1024.0 * 1024 * 1024; bytes *= 2) {
    INFO(bytes);
    const double mib = 1024.0 * 1024;
    const auto proto = [&](CollectiveKind k) { return costs.collective_cost(k, bytes, span).proto; };
    CHECK(proto(CollectiveKind::kAllReduce) == (bytes <= mib ? NcclProto::kLL : NcclProto::kSimple));
    CHECK(proto(CollectiveKind::kBroadcast) == (bytes <= mib ? NcclProto::kLL : NcclProto::kSimple));
    CHECK(proto(CollectiveKind::kAllGather) == (bytes <= 2 * mib ? NcclProto::kLL : NcclProto::kSimple));
    CHECK(proto(CollectiveKind::kReduceScatter) == (bytes <= 2 * mib ? NcclProto::kLL : NcclProto::kSimple));
  }
  // The time of the chosen protocol keeps the cluster's 370.8 GB/s (no profile entry): only the choice sees 360.
  const double big = 1024.0 * 1024 * 1024;
  CHECK(costs.collective_cost(CollectiveKind::kAllReduce, big, span).bandwidth_time_s == Approx(big / 370.8e9));
}

TEST_CASE("sim::CostModel: LL channels shrink to bytes / (512 threads x 8 B x nRanks), as NCCL ran them",
          "[sim][nccl]") {
  const auto cluster = topologies::load_cluster("h200x2-nvlink");
  const CostModel costs(cluster, ring_ll_simple());
  const auto span = pair_span(costs);
  // NCCL 2.28.9, two ranks, all_reduce: 1..8 KiB on channel {0..0}, 16 KiB {0..1}, 32 KiB {0..3}, 64 KiB {0..7},
  // 128 KiB {0..15}, 512 KiB and 1 MiB {0..23}; Simple from 2 MiB on all 24.
  const std::pair<double, std::uint32_t> expect[] = {{1024, 1},    {8192, 1},     {16384, 2},
                                                     {32768, 4},   {65536, 8},    {131072, 16},
                                                     {524288, 24}, {1048576, 24}, {2097152, 24}};
  for (const auto& [bytes, channels] : expect) {
    INFO(bytes);
    CHECK(costs.collective_cost(CollectiveKind::kAllReduce, bytes, span).channels == channels);
  }
  // all_gather's IR bytes are the gathered total, which is what the shrink counts (NCCL's 8 KiB per rank: 2 channels).
  CHECK(costs.collective_cost(CollectiveKind::kAllGather, 16384, span).channels == 2u);
}

TEST_CASE("sim::CostModel: ring broadcast pays n - 1 steps (NCCL 2.28.9: LL 7.2 us, Simple 11.8 us on two GPUs)",
          "[sim][nccl]") {
  const auto cluster = topologies::load_cluster("h200x2-nvlink");
  Profile p = ring_ll_simple();
  p.nccl.protocols = {NcclProto::kLL};
  CHECK(CostModel(cluster, p)
            .collective_cost(CollectiveKind::kBroadcast, 1024, pair_span(CostModel(cluster, p)))
            .latency_s == Approx(7.2e-6));
  p.nccl.protocols = {NcclProto::kSimple};
  CHECK(CostModel(cluster, p)
            .collective_cost(CollectiveKind::kBroadcast, 1024, pair_span(CostModel(cluster, p)))
            .latency_s == Approx(11.8e-6));
}

TEST_CASE("sim::CostModel: LL128 wins mid sizes on eight GPUs of one node, never on two", "[sim][nccl]") {
  const auto cluster = topologies::load_cluster("dgx-h100");
  const CostModel costs(cluster, ring_ll_simple());
  const auto eight = costs.span(schedule::Communicator{"g", "tp", {0, 1, 2, 3, 4, 5, 6, 7}});
  // 8 ranks, 14 steps: LL 15.0 us at 141 x 8/14 GB/s, LL128 40.6 us at 331.2 x 8/14, Simple 56.0 us at 360 x 8/14
  // (NCCL's estimates): LL128 beats LL above 3.6 MB and Simple below 36.4 MB.
  CHECK(costs.collective_cost(CollectiveKind::kAllReduce, 1e6, eight).proto == NcclProto::kLL);
  CHECK(costs.collective_cost(CollectiveKind::kAllReduce, 8e6, eight).proto == NcclProto::kLL128);
  CHECK(costs.collective_cost(CollectiveKind::kAllReduce, 1e8, eight).proto == NcclProto::kSimple);
  const auto h2 = topologies::load_cluster("h200x2-nvlink");
  const CostModel c2(h2, ring_ll_simple());
  for (double bytes = 1024; bytes <= 1024.0 * 1024 * 1024; bytes *= 2) {
    for (auto kind : {CollectiveKind::kAllReduce, CollectiveKind::kAllGather, CollectiveKind::kReduceScatter,
                      CollectiveKind::kBroadcast}) {
      CHECK(c2.collective_cost(kind, bytes, pair_span(c2)).proto != NcclProto::kLL128);
    }
  }
}

TEST_CASE("sim::CostModel: measured overrides set the time of NCCL's choice, never the choice", "[sim][nccl]") {
  const auto cluster = topologies::load_cluster("h200x2-nvlink");
  Profile p = ring_ll_simple();
  // A Simple line far cheaper than LL at 64 KiB: NCCL still runs LL there (its own estimate), at the LL line's time.
  CollectiveParams simple;
  simple.kind = CollectiveParamsKind::kAllReduce;
  simple.proto = NcclProto::kSimple;
  simple.base_latency_s = 1e-6;
  simple.step_latency_s = 0;
  simple.bus_bytes_per_s = 1e12;
  CollectiveParams ll = simple;
  ll.proto = NcclProto::kLL;
  ll.base_latency_s = 9e-6;
  ll.bus_bytes_per_s = 100e9;
  p.collectives = {simple, ll};
  const CostModel costs(cluster, p);
  const auto c = costs.collective_cost(CollectiveKind::kAllReduce, 65536, pair_span(costs));
  CHECK(c.proto == NcclProto::kLL);
  CHECK(c.channels == 8u);
  CHECK(c.latency_s == Approx(9e-6));
  CHECK(c.bandwidth_time_s == Approx(65536 / (100e9 * 8 / 24)));
}

TEST_CASE("sim::CostModel: bus_efficiency scales an entry's bandwidth, interpolated in log bytes", "[sim][nccl]") {
  const std::string entry =
      R"({"kind": "all_reduce", "algorithm": "ring", "protocol": "simple", "span": "intra", "base_latency": "20 us", "step_latency": 0,
          "bus_bandwidth": "400 GB/s", "bus_efficiency": [[4194304, 0.5], [1073741824, 1.0]]})";
  const Profile p = profile_from_json(
      R"({"schema_version": 1, "nccl": {"algorithms": ["ring"], "protocols": ["ll", "simple"]}, "collectives": [)" +
          entry + "]}",
      "p.json");
  REQUIRE(p.collectives.size() == 1);
  const auto cluster = topologies::load_cluster("h200x2-nvlink");
  const CostModel costs(cluster, p);
  const auto span = pair_span(costs);
  // Two ranks: all_reduce algbw = busbw. At 4 MiB: half of 400 GB/s; at 64 MiB (halfway in log): 0.75; clamped above.
  const double mib = 1024.0 * 1024;
  CHECK(costs.collective_cost(CollectiveKind::kAllReduce, 4 * mib, span).bandwidth_time_s == Approx(4 * mib / 200e9));
  CHECK(costs.collective_cost(CollectiveKind::kAllReduce, 64 * mib, span).bandwidth_time_s == Approx(64 * mib / 300e9));
  CHECK(costs.collective_cost(CollectiveKind::kAllReduce, 4096 * mib, span).bandwidth_time_s ==
        Approx(4096 * mib / 400e9));
  CHECK(costs.collective_cost(CollectiveKind::kAllReduce, 64 * mib, span).latency_s == Approx(20e-6));
  // Bad tables name the field.
  std::string bad = entry;
  bad.replace(bad.find("1.0]]"), 3, "1.5");
  CHECK_THROWS_WITH(profile_from_json(R"({"schema_version": 1, "collectives": [)" + bad + "]}", "p.json"),
                    twinstep_contains("p.json") && twinstep_contains("/collectives/0/bus_efficiency/1"));
}
