// Hand-made predicted and measured traces of one small schedule, with durations chosen so that every residual
// of calibration::compare has a closed form (worked out in the comments below and asserted in compare_test.cpp).
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "schedule/builder.hpp"
#include "schedule/schedule.hpp"
#include "schedule/trace.hpp"

namespace twinstep::calibration::testing {

namespace ts = twinstep::schedule;

/// Two ranks, five ops each (ids 0-4 on rank 0, 5-9 on rank 1):
///   rank 0: gemm, elementwise, all_reduce (dp), send (pp) to rank 1, host
///   rank 1: gemm, elementwise, all_reduce (dp), recv (pp) from rank 0, host
inline ts::Schedule small_schedule() {
  twinstep::schedule::ScheduleBuilder b(2, twinstep::schedule::default_streams(), "calib_small");
  const ts::CommId dp = b.comm("dp.0", "dp", {0, 1});
  b.comm("pp.0", "pp", {0, 1});
  for (ts::RankId r = 0; r < 2; ++r) {
    const std::string p = "r" + std::to_string(r) + ".";
    b.gemm(r, p + "fwd.gemm", 0, 1024, 1024, 1024);
    b.add(r, p + "fwd.act", 0, twinstep::schedule::elementwise_kernel(1 << 20));
    b.all_reduce(r, p + "grad.ar", 1, dp, 1 << 20);
    if (r == 0) {
      b.add(r, p + "pp.send", 1, ts::Send{1, 1, 4096, 0});
    } else {
      b.add(r, p + "pp.recv", 1, ts::Recv{1, 0, 4096, 0});
    }
    b.add(r, p + "host", 0, ts::Host{5});
  }
  return b.take();
}

/// A trace of `s` with the records given as (start, end) per op id; issue = start.
inline ts::Trace make_trace(const ts::Schedule& s, const std::string& producer,
                            const std::vector<std::pair<Nanos, Nanos>>& start_end) {
  ts::Trace t;
  t.producer = producer;
  t.schedule = s;
  for (std::size_t i = 0; i < start_end.size(); ++i) {
    t.records.push_back(
        {static_cast<ts::OpId>(i), s.ops[i].rank, start_end[i].first, start_end[i].first, start_end[i].second});
  }
  return t;
}

/// Predicted: both ranks run back to back, durations gemm 100, act 10, all_reduce 50, send/recv 40, host 5.
/// Step from records: 205 ns. Busy per kind (all members arrive together): dp 50, pp 40 ns.
inline ts::Trace predicted_trace() {
  using Span = std::pair<Nanos, Nanos>;                                                        // (start, end)
  std::vector<Span> spans = {{0, 100}, {100, 110}, {110, 160}, {160, 200}, {200, 205}};        // rank 0: ops 0-4
  const std::vector<Span> rank1 = {{0, 100}, {100, 110}, {110, 160}, {160, 200}, {200, 205}};  // ops 5-9
  spans.insert(spans.end(), rank1.begin(), rank1.end());
  ts::Trace t = make_trace(small_schedule(), "sim", spans);
  t.context = {{"profile", "datasheet defaults"}, {"topology", "h200x2-nvlink"}};
  return t;
}

/// Measured: rank 0 gemm 120, act 10, all_reduce 80, send 30, host 5; rank 1 gemm 150, act 14, all_reduce 60,
/// recv 45, host 5. Step: median of {300, 280, 290, 1000} = 295 ns.
/// dp transfer starts when rank 1 arrives (164): busy rank 0 = 210-164 = 46, rank 1 = 60, mean 53 ns.
/// pp transfer starts at the recv's start (224): send 240-224 = 16, recv 45, mean 30.5 ns.
inline ts::Trace measured_trace() {
  using Span = std::pair<Nanos, Nanos>;                                                        // (start, end)
  std::vector<Span> spans = {{0, 120}, {120, 130}, {130, 210}, {210, 240}, {240, 245}};        // rank 0: ops 0-4
  const std::vector<Span> rank1 = {{0, 150}, {150, 164}, {164, 224}, {224, 269}, {269, 274}};  // ops 5-9
  spans.insert(spans.end(), rank1.begin(), rank1.end());
  ts::Trace t = make_trace(small_schedule(), "backend", spans);
  t.step_times_ns = {300, 280, 290, 1000};
  t.context = {{"gpu", "NVIDIA H200"}, {"nccl", "2.28"}};
  return t;
}

}  // namespace twinstep::calibration::testing
