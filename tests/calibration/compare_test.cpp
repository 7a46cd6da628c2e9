// calibration::compare on hand-made traces with closed-form residuals (tests/calibration/traces.hpp): step-time
// error, per-class residuals, per-communicator busy time, worst-op ordering, schedule mismatches, text and JSON.
#include "calibration/compare.hpp"

#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>

#include "common/error.hpp"
#include "schedule/analysis.hpp"
#include "schedule/builder.hpp"
#include "tests/calibration/traces.hpp"
#include "tests/catch.hpp"

namespace cal = twinstep::calibration;
namespace ts = twinstep::schedule;
using cal::testing::measured_trace;
using cal::testing::predicted_trace;

namespace {

const cal::ClassResidual& find_class(const cal::Comparison& c, const std::string& name) {
  for (const auto& r : c.classes) {
    if (r.op_class == name) return r;
  }
  FAIL("no class " << name);
  return c.classes.front();
}

/// The message of the twinstep::Error that compare throws, or FAILs.
std::string compare_error(const ts::Trace& p, const ts::Trace& m) {
  try {
    (void)cal::compare(p, m);
  } catch (const twinstep::Error& e) {
    CHECK(e.code() == twinstep::ExitCode::kBadInput);
    return e.what();
  }
  FAIL("compare accepted mismatched traces");
  return {};
}

}  // namespace

TEST_CASE("calibration::step_time_s: median of step_times_ns, else the span of the records", "[calib]") {
  ts::Trace t = predicted_trace();
  CHECK(cal::step_time_s(t) == Approx(205e-9).epsilon(1e-12));
  t.step_times_ns = {500, 100, 300};
  CHECK(cal::step_time_s(t) == Approx(300e-9).epsilon(1e-12));
  t.step_times_ns = {400, 100, 300, 200};
  CHECK(cal::step_time_s(t) == Approx(250e-9).epsilon(1e-12));
  t.step_times_ns.clear();
  t.records.clear();
  CHECK(cal::step_time_s(t) == 0.0);
}

TEST_CASE("calibration::relative_error: signs, zero measured", "[calib]") {
  CHECK(cal::relative_error(110, 100) == Approx(0.1));
  CHECK(cal::relative_error(90, 100) == Approx(-0.1));
  CHECK(cal::relative_error(0, 0) == 0.0);
  CHECK(cal::relative_error(1, 0) == std::numeric_limits<double>::infinity());
}

TEST_CASE("calibration::op_class: kernel class, collective kind and communicator kind, p2p, host", "[calib]") {
  const ts::Schedule s = cal::testing::small_schedule();
  CHECK(cal::op_class(s, s.ops[0]) == "gemm");
  CHECK(cal::op_class(s, s.ops[1]) == "elementwise");
  CHECK(cal::op_class(s, s.ops[2]) == "collective:all_reduce:dp");
  CHECK(cal::op_class(s, s.ops[3]) == "send");
  CHECK(cal::op_class(s, s.ops[4]) == "host");
  CHECK(cal::op_class(s, s.ops[8]) == "recv");
  ts::Op sync = s.ops[4];
  sync.body = ts::HostSync{0};
  CHECK(cal::op_class(s, sync) == "host_sync");
}

TEST_CASE("calibration::compare: step-time error against the median measured step", "[calib]") {
  const cal::Comparison c = cal::compare(predicted_trace(), measured_trace());
  CHECK(c.op_count == 10);
  CHECK(c.rank_count == 2);
  CHECK(c.measured_step_count == 4);
  CHECK(c.step.predicted_s == Approx(205e-9).epsilon(1e-12));
  CHECK(c.step.measured_s == Approx(295e-9).epsilon(1e-12));
  CHECK(c.step.abs_error_s() == Approx(-90e-9).epsilon(1e-9));
  CHECK(c.step.rel_error() == Approx(-90.0 / 295.0).epsilon(1e-9));
  CHECK(c.predicted_producer == "sim");
  CHECK(c.measured_context.at("gpu") == "NVIDIA H200");
}

TEST_CASE("calibration::compare: per-class residuals are exact sums over ops", "[calib]") {
  const cal::Comparison c = cal::compare(predicted_trace(), measured_trace());
  REQUIRE(c.classes.size() == 6);
  // Ordered by class name.
  CHECK(c.classes[0].op_class == "collective:all_reduce:dp");
  CHECK(c.classes[1].op_class == "elementwise");
  CHECK(c.classes[2].op_class == "gemm");
  CHECK(c.classes[3].op_class == "host");
  CHECK(c.classes[4].op_class == "recv");
  CHECK(c.classes[5].op_class == "send");

  const auto& gemm = find_class(c, "gemm");
  CHECK(gemm.count == 2);
  CHECK(gemm.predicted_ns == 200);
  CHECK(gemm.measured_ns == 270);
  CHECK(gemm.rel_error() == Approx(-70.0 / 270.0));
  CHECK(gemm.mean_abs_error_ns() == Approx(35.0));

  const auto& ew = find_class(c, "elementwise");
  CHECK(ew.predicted_ns == 20);
  CHECK(ew.measured_ns == 24);
  CHECK(ew.mean_abs_error_ns() == Approx(2.0));

  const auto& ar = find_class(c, "collective:all_reduce:dp");
  CHECK(ar.count == 2);
  CHECK(ar.predicted_ns == 100);
  CHECK(ar.measured_ns == 140);
  CHECK(ar.rel_error() == Approx(-40.0 / 140.0));
  CHECK(ar.mean_abs_error_ns() == Approx(20.0));

  const auto& send = find_class(c, "send");
  CHECK(send.count == 1);
  CHECK(send.rel_error() == Approx(10.0 / 30.0));
  CHECK(find_class(c, "recv").mean_abs_error_ns() == Approx(5.0));
  const auto& host = find_class(c, "host");
  CHECK(host.rel_error() == 0.0);
  CHECK(host.mean_abs_error_ns() == 0.0);
}

TEST_CASE("calibration::compare: worst ops by |error|, ties broken by op id", "[calib]") {
  const cal::Comparison c = cal::compare(predicted_trace(), measured_trace());
  REQUIRE(c.worst_ops.size() == 10);  // fewer ops than kWorstOpCount: all of them
  // |error|: op5 50, op2 30, op0 20, op3 10 and op7 10 (tie: lower id first), op8 5, op6 4, then zeros by id.
  const ts::OpId expected[] = {5, 2, 0, 3, 7, 8, 6, 1, 4, 9};
  for (std::size_t i = 0; i < 10; ++i) CHECK(c.worst_ops[i].op == expected[i]);
  CHECK(c.worst_ops[0].name == "r1.fwd.gemm");
  CHECK(c.worst_ops[0].rank == 1);
  CHECK(c.worst_ops[0].op_class == "gemm");
  CHECK(c.worst_ops[0].predicted_ns == 100);
  CHECK(c.worst_ops[0].measured_ns == 150);
  CHECK(c.worst_ops[0].error_ns() == -50);
  CHECK(c.worst_ops[3].error_ns() == 10);  // the send, overpredicted
  REQUIRE(c.ops.size() == 10);
  CHECK(c.ops[9].predicted_ns == 5);
}

TEST_CASE("calibration::compare: at most kWorstOpCount worst ops", "[calib]") {
  // 30 compute ops with errors 0..29 ns: the 20 worst are ids 29 down to 10.
  twinstep::schedule::ScheduleBuilder b(1, {{"compute", 0}}, "many");
  std::vector<std::pair<twinstep::Nanos, twinstep::Nanos>> pred, meas;
  for (ts::OpId i = 0; i < 30; ++i) {
    b.add(0, "op" + std::to_string(i), 0, twinstep::schedule::elementwise_kernel(1024));
    const twinstep::Nanos t0 = 1000 * i;
    pred.emplace_back(t0, t0 + 100);
    meas.emplace_back(t0, t0 + 100 + i);
  }
  const cal::Comparison c = cal::compare(cal::testing::make_trace(b.schedule(), "sim", pred),
                                         cal::testing::make_trace(b.schedule(), "b", meas));
  REQUIRE(c.worst_ops.size() == cal::kWorstOpCount);
  for (std::size_t k = 0; k < c.worst_ops.size(); ++k) CHECK(c.worst_ops[k].op == 29 - k);
}

TEST_CASE("calibration::compare: busy and exposed time per communicator kind", "[calib]") {
  const cal::Comparison c = cal::compare(predicted_trace(), measured_trace());
  REQUIRE(c.comms.size() == 2);
  CHECK(c.comms[0].kind == "dp");
  CHECK(c.comms[0].predicted_busy_s == Approx(50e-9).epsilon(1e-9));
  CHECK(c.comms[0].measured_busy_s == Approx(53e-9).epsilon(1e-9));
  CHECK(c.comms[1].kind == "pp");
  CHECK(c.comms[1].predicted_busy_s == Approx(40e-9).epsilon(1e-9));
  CHECK(c.comms[1].measured_busy_s == Approx(30.5e-9).epsilon(1e-9));
  // No compute overlaps any transfer in these traces, so exposed == busy (analysis.hpp's definition).
  for (const auto& r : c.comms) {
    CHECK(r.predicted_exposed_s == Approx(r.predicted_busy_s).epsilon(1e-9));
    CHECK(r.measured_exposed_s == Approx(r.measured_busy_s).epsilon(1e-9));
  }
}

TEST_CASE("calibration::compare: breakdown rows are analyze()'s mean, and each column sums to its step", "[calib]") {
  const ts::Trace p = predicted_trace();
  const ts::Trace m = measured_trace();
  const cal::Comparison c = cal::compare(p, m);
  const ts::Breakdown pb = ts::analyze(p);
  const ts::Breakdown mb = ts::analyze(m);
  REQUIRE(c.breakdown.size() == 5);
  CHECK(c.breakdown[0].category == "compute");
  CHECK(c.breakdown[1].category == "exposed_comm:dp");
  CHECK(c.breakdown[2].category == "exposed_comm:pp");
  CHECK(c.breakdown[3].category == "host_bound");
  CHECK(c.breakdown[4].category == "bubble");
  CHECK(c.breakdown[0].predicted_s == pb.mean.compute_s);
  CHECK(c.breakdown[0].measured_s == mb.mean.compute_s);
  CHECK(c.breakdown[4].measured_s == mb.mean.bubble_s);
  // Compute: predicted 110 ns on both ranks; measured (130 + 164) / 2 = 147 ns.
  CHECK(c.breakdown[0].predicted_s == Approx(110e-9).epsilon(1e-9));
  CHECK(c.breakdown[0].measured_s == Approx(147e-9).epsilon(1e-9));
  double sum_p = 0, sum_m = 0;
  for (const auto& r : c.breakdown) {
    sum_p += r.predicted_s;
    sum_m += r.measured_s;
  }
  CHECK(sum_p == Approx(c.predicted_analyzed_step_s).epsilon(1e-9));
  CHECK(sum_m == Approx(c.measured_analyzed_step_s).epsilon(1e-9));
  CHECK(c.predicted_analyzed_step_s == Approx(205e-9).epsilon(1e-9));
  CHECK(c.measured_analyzed_step_s == Approx(274e-9).epsilon(1e-9));
}

TEST_CASE("calibration::compare: rejects traces of different schedules, naming the first differing op", "[calib]") {
  const ts::Trace p = predicted_trace();

  SECTION("a renamed op") {
    ts::Trace m = measured_trace();
    m.schedule.ops[6].name = "r1.fwd.gelu";
    const std::string msg = compare_error(p, m);
    CHECK(msg.find("op 6") != std::string::npos);
    CHECK(msg.find("\"r1.fwd.act\"") != std::string::npos);
    CHECK(msg.find("\"r1.fwd.gelu\"") != std::string::npos);
    CHECK(msg.find("re-run predict/run on the same schedule file") != std::string::npos);
  }
  SECTION("another op kind") {
    ts::Trace m = measured_trace();
    m.schedule.ops[4].body = ts::HostSync{0};
    const std::string msg = compare_error(p, m);
    CHECK(msg.find("op 4") != std::string::npos);
    CHECK(msg.find("host_sync") != std::string::npos);
  }
  SECTION("the same op with another shape") {
    ts::Trace m = measured_trace();
    std::get<ts::Gemm>(std::get<ts::Compute>(m.schedule.ops[5].body).kernel).k = 2048;
    const std::string msg = compare_error(p, m);
    CHECK(msg.find("op 5 \"r1.fwd.gemm\"") != std::string::npos);
    CHECK(msg.find("compute body") != std::string::npos);
  }
  SECTION("a different op count") {
    ts::Trace m = measured_trace();
    m.schedule.ops.pop_back();
    m.records.pop_back();
    const std::string msg = compare_error(p, m);
    CHECK(msg.find("10 ops") != std::string::npos);
    CHECK(msg.find('9') != std::string::npos);
    CHECK(msg.find("re-run predict/run on the same schedule file") != std::string::npos);
  }
  SECTION("a missing record") {
    ts::Trace m = measured_trace();
    m.records.erase(m.records.begin() + 3);
    const std::string msg = compare_error(p, m);
    CHECK(msg.find("measured trace has no record for op 3 \"r0.pp.send\"") != std::string::npos);
  }
  SECTION("a record that ends before it starts") {
    ts::Trace m = measured_trace();
    m.records[2].end_ns = m.records[2].start_ns - 1;
    CHECK(compare_error(p, m).find("op 2") != std::string::npos);
  }
}

TEST_CASE("calibration::format_comparison: aligned tables with every section", "[calib]") {
  const std::string text = cal::format_comparison(cal::compare(predicted_trace(), measured_trace()));
  CHECK(text.find("schedule \"calib_small\", 10 ops on 2 ranks") != std::string::npos);
  CHECK(text.find("median of 4 steps") != std::string::npos);
  CHECK(text.find("-30.51%") != std::string::npos);  // step: (205 - 295) / 295
  CHECK(text.find("exposed_comm:dp") != std::string::npos);
  CHECK(text.find("collective:all_reduce:dp") != std::string::npos);
  CHECK(text.find("r1.fwd.gemm") != std::string::npos);
  // Columns align: in the class table, every row's "ops" column ends at the same offset as its header.
  const auto header = text.find("  class ");
  REQUIRE(header != std::string::npos);
  const auto line_end = text.find('\n', header);
  const std::string head_line = text.substr(header, line_end - header);
  const auto ops_end = head_line.find("ops") + 3;
  const auto row = text.find("  gemm ", line_end);
  REQUIRE(row != std::string::npos);
  const std::string row_line = text.substr(row, text.find('\n', row) - row);
  CHECK(row_line.substr(0, ops_end).back() == '2');
  CHECK(row_line[ops_end] == ' ');
}

TEST_CASE("calibration::comparison_to_json: the same figures as one object, infinities become null", "[calib]") {
  ts::Trace p = predicted_trace();
  ts::Trace m = measured_trace();
  // The send measured at 0 ns: its class's relative error is infinite.
  m.records[3].end_ns = m.records[3].start_ns;
  const auto j = nlohmann::json::parse(cal::comparison_to_json(cal::compare(p, m)));
  CHECK(j.at("schema_version") == 1);
  CHECK(j.at("schedule") == "calib_small");
  CHECK(j.at("step_time").at("measured_s").get<double>() == Approx(295e-9));
  CHECK(j.at("worst_ops").size() == 10);
  CHECK(j.at("worst_ops")[0].at("op") == 5);
  CHECK(j.at("worst_ops")[0].at("error_ns") == -50);
  bool saw_send = false;
  for (const auto& cl : j.at("classes")) {
    if (cl.at("class") == "send") {
      saw_send = true;
      CHECK(cl.at("rel_error").is_null());  // 40 ns predicted vs 0 measured
      CHECK(cl.at("measured_ns") == 0);
    }
  }
  CHECK(saw_send);
  CHECK(j.at("communicators").size() == 2);
  CHECK(j.at("breakdown")[0].at("category") == "compute");
}
