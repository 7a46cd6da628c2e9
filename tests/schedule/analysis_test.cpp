// Trace analysis against a hand-computed timeline: 2 ranks, a compute/all_reduce overlap, a host-bound gap,
// a bubble waiting for the peer and a host_sync whose wait is not host-bound time.
#include "schedule/analysis.hpp"

#include <algorithm>
#include <cmath>
#include <string>

#include "schedule/kernel_math.hpp"
#include "tests/catch.hpp"
#include "tests/schedule/samples.hpp"

namespace ts = twinstep::schedule;
using ts::testing::Builder;

namespace {

/// Timeline (ns), streams compute/comm, communicator "world" of kind dp:
///   rank 0: host   [0,100]   gemm issue 100 run [110,400]   all_reduce issue 120 run [300,600]
///   rank 1: gemm issue 0 run [10,200]   all_reduce issue 10 run [350,600]   host_sync(all_reduce) issue 20 wait
///   [20,600]
/// All members have arrived at 350, so the transfer is [350,600] on both ranks.
///   rank 0: host-bound [0,110) = 110, compute [110,400) = 290, exposed dp [400,600) = 200, bubble 0
///   rank 1: host-bound [0,10) = 10, compute [10,200) = 190, bubble [200,350) = 150, exposed dp [350,600) = 250
ts::Trace hand_trace() {
  Builder b(ts::testing::skeleton(2));
  b.host(0, "r0.host", 100);
  b.gemm(0, "r0.gemm", 0, 128, 256, 512);
  b.all_reduce(0, "r0.ar", 1, 0, 1 << 20);
  b.gemm(1, "r1.gemm", 0, 64, 64, 64);
  const auto ar1 = b.all_reduce(1, "r1.ar", 1, 0, 1 << 20);
  b.add(1, "r1.sync", 0, ts::HostSync{ar1});
  ts::Trace t;
  t.producer = "sim";
  t.schedule = b.take();
  t.records = {{0, 0, 0, 0, 100},  {1, 0, 100, 110, 400}, {2, 0, 120, 300, 600},
               {3, 1, 0, 10, 200}, {4, 1, 10, 350, 600},  {5, 1, 20, 20, 600}};
  return t;
}

}  // namespace

TEST_CASE("schedule::analyze: hand-computed two-rank timeline", "[schedule]") {
  const ts::Trace t = hand_trace();
  const ts::Breakdown b = ts::analyze(t);
  CHECK(b.step_time_s == Approx(600e-9).epsilon(1e-12));
  REQUIRE(b.ranks.size() == 2);
  const auto& r0 = b.ranks[0];
  CHECK(r0.rank == 0);
  CHECK(r0.compute_s == Approx(290e-9).epsilon(1e-12));
  CHECK(r0.exposed_comm_s.at("dp") == Approx(200e-9).epsilon(1e-12));
  CHECK(r0.host_bound_s == Approx(110e-9).epsilon(1e-12));
  CHECK(r0.bubble_s == 0.0);
  CHECK(r0.busy_comm_s == Approx(250e-9).epsilon(1e-12));
  const auto& r1 = b.ranks[1];
  CHECK(r1.compute_s == Approx(190e-9).epsilon(1e-12));
  CHECK(r1.exposed_comm_s.at("dp") == Approx(250e-9).epsilon(1e-12));
  CHECK(r1.host_bound_s == Approx(10e-9).epsilon(1e-12));
  CHECK(r1.bubble_s == Approx(150e-9).epsilon(1e-12));
  CHECK(b.mean.compute_s == Approx(240e-9).epsilon(1e-12));
  CHECK(b.mean.exposed_comm_s.at("dp") == Approx(225e-9).epsilon(1e-12));
  CHECK(b.mean.host_bound_s == Approx(60e-9).epsilon(1e-12));
  CHECK(b.mean.bubble_s == Approx(75e-9).epsilon(1e-12));
  for (const auto& rb : b.ranks) CHECK(std::abs(rb.total_s() - b.step_time_s) <= 1e-9 * b.step_time_s);
  CHECK(std::abs(b.mean.total_s() - b.step_time_s) <= 1e-9 * b.step_time_s);
  CHECK(b.flops == Approx(2.0 * 128 * 256 * 512 + 2.0 * 64 * 64 * 64));
}

TEST_CASE("schedule::analyze: records in any order give the op-ordered trace's breakdown", "[schedule]") {
  // A simulator writes record i for op i (analyze then needs no index); a measured trace may list them in any order.
  const ts::Trace in_order = hand_trace();
  ts::Trace shuffled = in_order;
  std::reverse(shuffled.records.begin(), shuffled.records.end());
  std::swap(shuffled.records[1], shuffled.records[4]);
  REQUIRE(shuffled.records.front().op == 5);
  const ts::Breakdown a = ts::analyze(in_order), b = ts::analyze(shuffled);
  CHECK(b.step_time_s == a.step_time_s);
  REQUIRE(b.ranks.size() == a.ranks.size());
  for (std::size_t i = 0; i < a.ranks.size(); ++i) {
    CHECK(b.ranks[i].compute_s == a.ranks[i].compute_s);
    CHECK(b.ranks[i].exposed_comm_s == a.ranks[i].exposed_comm_s);
    CHECK(b.ranks[i].host_bound_s == a.ranks[i].host_bound_s);
    CHECK(b.ranks[i].bubble_s == a.ranks[i].bubble_s);
    CHECK(b.ranks[i].busy_comm_s == a.ranks[i].busy_comm_s);
  }
  CHECK(b.ranks[1].bubble_s == Approx(150e-9).epsilon(1e-12));
  // Without rank 1's all_reduce record its host_sync's peer has none: the transfer runs from rank 0's own arrival.
  ts::Trace missing = in_order;
  missing.records.erase(missing.records.begin() + 4);
  std::reverse(missing.records.begin(), missing.records.end());
  const ts::Breakdown m = ts::analyze(missing);
  REQUIRE(m.ranks.size() == 2);
  CHECK(m.ranks[0].exposed_comm_s.at("dp") == Approx(200e-9).epsilon(1e-12));
  CHECK(m.ranks[0].busy_comm_s == Approx(300e-9).epsilon(1e-12));
}

TEST_CASE("schedule::analyze: exposed comm goes to the earliest-started transfer's communicator kind", "[schedule]") {
  ts::Schedule s = ts::testing::skeleton(1);
  s.streams.push_back({"ep", 0});
  s.communicators = {{"tp.0", "tp", {0}}, {"ep.0", "ep", {0}}};
  Builder b(std::move(s));
  b.all_reduce(0, "tp_ar", 1, 0, 64);
  b.all_reduce(0, "ep_ar", 2, 1, 64);
  ts::Trace t;
  t.schedule = b.take();
  t.records = {{0, 0, 0, 100, 300}, {1, 0, 0, 50, 200}};  // ep starts first: [50,200) ep, [200,300) tp
  const ts::Breakdown br = ts::analyze(t);
  CHECK(br.ranks[0].exposed_comm_s.at("ep") == Approx(150e-9).epsilon(1e-12));
  CHECK(br.ranks[0].exposed_comm_s.at("tp") == Approx(100e-9).epsilon(1e-12));
  CHECK(br.ranks[0].host_bound_s == 0.0);  // issue took no time
  CHECK(br.ranks[0].bubble_s == Approx(50e-9).epsilon(1e-12));
}

TEST_CASE("schedule::analyze: a zero-length transfer leaves no exposed comm behind", "[schedule]") {
  // Regression: a transfer whose start equals its end used to stay "active" and turn the rest of the rank's
  // timeline into exposed comm.
  ts::Schedule s = ts::testing::skeleton(1);
  s.communicators = {{"tp.0", "tp", {0}}};
  Builder b(std::move(s));
  // Many of them, so that the event sort takes its unstable (introsort) path, as in real traces.
  const int n = 200;
  ts::Trace t;
  for (int i = 0; i < n; ++i) {
    const auto id = b.all_reduce(0, "empty_ar" + std::to_string(i), 1, 0, 0);
    t.records.push_back({id, 0, 0, 100 + i % 7, 100 + i % 7});
  }
  const auto g = b.gemm(0, "g", 0, 64, 64, 64);
  t.records.push_back({g, 0, 0, 200, 300});  // [0,200) idle, [200,300) compute
  t.schedule = b.take();
  const ts::Breakdown br = ts::analyze(t);
  CHECK(br.ranks[0].exposed_comm_s.count("tp") == 0);
  CHECK(br.ranks[0].compute_s == Approx(100e-9).epsilon(1e-12));
  CHECK(br.ranks[0].bubble_s == Approx(200e-9).epsilon(1e-12));
  CHECK(std::abs(br.ranks[0].total_s() - br.step_time_s) <= 1e-9 * br.step_time_s);
}

TEST_CASE("schedule::format_breakdown: aligned table with one row per rank", "[schedule]") {
  const std::string text = ts::format_breakdown(ts::analyze(hand_trace()));
  CHECK(text.find("step time: ") == 0);
  CHECK(text.find("exposed dp") != std::string::npos);
  CHECK(text.find("\nmean") != std::string::npos);
  CHECK(text.find("\n0 ") != std::string::npos);
  CHECK(text.find("\n1 ") != std::string::npos);
  const std::string limited = ts::format_breakdown(ts::analyze(hand_trace()), 1);
  CHECK(limited.find("1 more ranks not shown") != std::string::npos);
  CHECK(limited.find("\n0 ") != std::string::npos);  // rank 0 has more compute
}
