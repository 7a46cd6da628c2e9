// twinstep import-trace on the fixtures of tests/calibration/data/import (make_fixtures.py writes them with a known
// timeline): every record equals the timeline's, both formats (PyTorch profiler JSON, Nsight Systems SQLite), one
// and two ranks, matching by name and by kind/shape/order, the round trip through the trace JSON and `compare`, and
// the refusals (truncated file, another model, clock skew, wrong rank, not a trace).
#include "calibration/trace_import/import.hpp"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <variant>

#include "calibration/compare.hpp"
#include "calibration/fit_trace.hpp"
#include "common/error.hpp"
#include "schedule/json.hpp"
#include "schedule/kernel_math.hpp"
#include "sim/cost_model.hpp"
#include "sim/simulate.hpp"
#include "tests/catch.hpp"
#include "tests/support/schedule_builder.hpp"
#include "topologies/cluster.hpp"

namespace ti = twinstep::calibration::trace_import;
namespace ts = twinstep::schedule;
namespace fs = std::filesystem;

namespace {

const fs::path kData = fs::path(TWINSTEP_SOURCE_DIR) / "tests/calibration/data/import";

nlohmann::json read_json(const fs::path& p) {
  std::ifstream f(p);
  return nlohmann::json::parse(f);
}

ti::ImportResult import_file(const std::string& trace, const std::string& schedule) {
  const auto s = ts::read_schedule((kData / schedule).string());
  return ti::import_trace(s, ti::read_trace_files((kData / trace).string()));
}

/// The message of the twinstep::Error that importing `trace` against `schedule` throws (exit code 2), or FAILs.
std::string import_error(const std::string& trace, const std::string& schedule) {
  try {
    (void)import_file(trace, schedule);
  } catch (const twinstep::Error& e) {
    CHECK(e.code() == twinstep::ExitCode::kBadInput);
    return e.what();
  }
  FAIL("import accepted " << trace);
  return {};
}

void check_records(const ts::Trace& t, const nlohmann::json& expected) {
  std::size_t checked = 0;
  for (const auto& [id, v] : expected.items()) {
    const auto& r = t.records.at(std::stoul(id));
    INFO("op " << id << " " << t.schedule.ops.at(std::stoul(id)).name);
    CHECK(r.issue_ns == v[0].get<std::int64_t>());
    CHECK(r.start_ns == v[1].get<std::int64_t>());
    CHECK(r.end_ns == v[2].get<std::int64_t>());
    ++checked;
  }
  CHECK(checked > 50);
}

}  // namespace

TEST_CASE("import-trace: a PyTorch profiler trace of two MoE steps gives the timeline's per-op medians") {
  const auto r = import_file("kineto_moe.json", "moe.schedule.json");
  const auto expected = read_json(kData / "expected_moe.json");
  CHECK(r.report.steps == 2);
  CHECK(r.report.matched_ops == r.report.ops);
  CHECK(r.report.by_name_ops == r.report.ops);
  CHECK(r.report.unmatched_ops.empty());
  CHECK(r.report.unmatched_activities.empty());
  CHECK(r.report.match_rate() == Approx(1.0));
  CHECK(r.trace.producer == "import");
  CHECK(r.trace.context.at("gpu") == "NVIDIA H100 80GB HBM3");
  REQUIRE(r.trace.step_times_ns.size() == 2);
  CHECK(r.trace.step_times_ns[0] == expected["step_times_ns"][0].get<std::int64_t>());
  CHECK(r.trace.step_times_ns[1] == expected["step_times_ns"][1].get<std::int64_t>());
  check_records(r.trace, expected["records"]);
  // The host_sync is the host's wait inside its target copy's range.
  bool saw_sync = false;
  for (const auto& op : r.trace.schedule.ops) {
    if (!std::holds_alternative<ts::HostSync>(op.body)) continue;
    saw_sync = true;
    const auto& rec = r.trace.records[op.id];
    CHECK(rec.end_ns > rec.start_ns);
    CHECK(rec.end_ns >= r.trace.records[std::get<ts::HostSync>(op.body).target].end_ns);
  }
  CHECK(saw_sync);
}

TEST_CASE("import-trace: the imported trace round-trips through JSON and compares against a prediction") {
  const auto r = import_file("kineto_moe.json", "moe.schedule.json");
  const fs::path out = fs::temp_directory_path() / "twinstep_import_roundtrip.json";
  ts::write_trace(r.trace, out.string());
  const ts::Trace back = ts::read_trace(out.string());
  fs::remove(out);
  CHECK(back == r.trace);
  // Against itself: no error anywhere.
  const auto self = twinstep::calibration::compare(back, back);
  CHECK(self.step.rel_error() == Approx(0.0));
  // Against the simulator's prediction of the same schedule: compare joins them op by op.
  const auto cluster = twinstep::topologies::load_cluster("dgx-h100", twinstep::topologies::ClusterSize{0, 1});
  const twinstep::sim::CostModel costs(cluster, twinstep::sim::Profile::datasheet_defaults());
  const ts::Trace predicted = twinstep::sim::simulate(back.schedule, cluster, costs);
  const auto c = twinstep::calibration::compare(predicted, back);
  CHECK(c.op_count == back.schedule.ops.size());
  CHECK(c.measured_step_count == 2);
  CHECK(c.step.measured_s == Approx(0.5e-9 * static_cast<double>(back.step_times_ns[0] + back.step_times_ns[1])));
}

TEST_CASE("import-trace: an Nsight Systems SQLite export of the step gives the same records") {
  const auto r = import_file("nsys_moe.sqlite", "moe.schedule.json");
  const auto expected = read_json(kData / "expected_moe.json");
  CHECK(r.report.steps == 1);
  CHECK(r.report.matched_ops == r.report.ops);
  CHECK(r.report.match_rate() == Approx(1.0));
  CHECK(r.trace.context.at("format") == "nsys-sqlite");
  CHECK(r.trace.context.at("gpu") == "NVIDIA H100 80GB HBM3");
  check_records(r.trace, expected["records_step0"]);
}

TEST_CASE("import-trace: without ranges, GEMMs and attention match by shape and order, the rest is reported") {
  const auto r = import_file("kineto_moe_unnamed.json", "moe.schedule.json");
  const auto expected = read_json(kData / "expected_moe.json")["records_step0"];
  std::size_t gemm_or_attention = 0;
  for (const auto& op : r.trace.schedule.ops) {
    const auto* c = std::get_if<ts::Compute>(&op.body);
    if (c == nullptr) continue;
    const bool by_shape =
        std::holds_alternative<ts::Gemm>(c->kernel) || std::holds_alternative<ts::Attention>(c->kernel);
    const auto& rec = r.trace.records[op.id];
    const auto& want = expected[std::to_string(op.id)];
    INFO(op.name);
    if (by_shape) {
      ++gemm_or_attention;
      CHECK(rec.end_ns - rec.start_ns == want[2].get<std::int64_t>() - want[1].get<std::int64_t>());
    } else {
      CHECK(rec.end_ns == rec.start_ns);  // not guessed: zero length, and listed
    }
  }
  CHECK(r.report.by_order_ops == gemm_or_attention);
  CHECK(r.report.by_name_ops == 0);
  CHECK(r.report.match_rate() < 1.0);
  CHECK_FALSE(r.report.unmatched_activities.empty());
  CHECK(r.report.unmatched_ops.size() == r.report.ops - gemm_or_attention);
  const std::string text = ti::format_report(r.report);
  CHECK(text.find("unmatched GPU activities") != std::string::npos);
  CHECK(text.find("vectorized_elementwise_kernel") != std::string::npos);
}

TEST_CASE("import-trace: two ranks from a folder share one clock and match the timeline") {
  const auto r = import_file("tp2", "tp2.schedule.json");
  const auto expected = read_json(kData / "expected_tp2.json");
  CHECK(r.report.matched_ops == r.report.ops);
  CHECK(r.report.match_rate() == Approx(1.0));
  CHECK(r.trace.step_times_ns.at(0) == expected["step_times_ns"][0].get<std::int64_t>());
  check_records(r.trace, expected["records"]);
}

TEST_CASE("import-trace: bad input is refused with the file and the first problem named") {
  SECTION("truncated JSON") {
    const auto e = import_error("kineto_truncated.json", "moe.schedule.json");
    CHECK_THAT(e, twinstep_contains("kineto_truncated.json"));
    CHECK_THAT(e, twinstep_contains("truncated"));
  }
  SECTION("a trace of another model: the first GEMM whose shape differs") {
    const auto e = import_error("kineto_other_model.json", "moe.schedule.json");
    CHECK_THAT(e, twinstep_contains("\"L0.mb0.fwd.qkv\""));
    CHECK_THAT(e, twinstep_contains("another model or layout"));
    CHECK_THAT(e, twinstep_contains("traceEvents["));
  }
  SECTION("clock skew between ranks") {
    const auto e = import_error("tp2_skew", "tp2.schedule.json");
    CHECK_THAT(e, twinstep_contains("clock skew between ranks"));
    CHECK_THAT(e, twinstep_contains("5000.0 us apart"));
  }
  SECTION("ranks the schedule lacks") {
    const auto e = import_error("tp2", "moe.schedule.json");
    CHECK_THAT(e, twinstep_contains("rank 1 is not in schedule"));
  }
  SECTION("JSON that is not a profiler trace") {
    const auto e = import_error("moe.schedule.json", "moe.schedule.json");
    CHECK_THAT(e, twinstep_contains("no \"traceEvents\" array"));
  }
  SECTION("an SQLite file without kernels") {
    const auto e = import_error("nsys_no_kernels.sqlite", "moe.schedule.json");
    CHECK_THAT(e, twinstep_contains("CUPTI_ACTIVITY_KIND_KERNEL"));
  }
  SECTION("an event without a time, and a folder whose files name no rank") {
    const fs::path dir = fs::temp_directory_path() / "twinstep_import_bad";
    fs::remove_all(dir);
    fs::create_directories(dir);
    std::ofstream(dir / "a.json") << R"({"traceEvents": [{"ph": "X", "cat": "kernel", "name": "k", "dur": 1}]})";
    std::string e1, e2;
    try {
      (void)ti::read_trace_files((dir / "a.json").string());
    } catch (const twinstep::Error& e) {
      e1 = e.what();
    }
    CHECK_THAT(e1, twinstep_contains("/traceEvents/0"));
    CHECK_THAT(e1, twinstep_contains("\"ts\""));
    std::ofstream(dir / "a.json", std::ios::trunc) << R"({"traceEvents": []})";
    std::ofstream(dir / "b.json") << R"({"traceEvents": []})";
    try {
      (void)ti::read_trace_files(dir.string());
    } catch (const twinstep::Error& e) {
      e2 = e.what();
    }
    CHECK_THAT(e2, twinstep_contains("cannot tell which rank"));
    fs::remove_all(dir);
  }
}

TEST_CASE("calibrate --from-trace: fits the classes and host costs the imported trace covers, and says so") {
  const auto r = import_file("kineto_moe.json", "moe.schedule.json");
  const auto cluster = twinstep::topologies::load_cluster("dgx-h100", twinstep::topologies::ClusterSize{0, 1});
  const auto base = twinstep::sim::Profile::datasheet_defaults();
  const auto fit = twinstep::calibration::fit_profile_from_trace(r.trace, "moe.json", cluster, base, "from trace");
  const auto& p = fit.profile;
  // make_fixtures.py: every op's host issue is 8 us after the previous one; a host wait ends 1 us after its target.
  CHECK(p.launch_s.at("compute") == Approx(8e-6));
  CHECK(p.launch_s.at("host_sync") == Approx(1e-6));
  CHECK(p.launch_s.at("collective") == base.launch_s.at("collective"));  // not in the trace: the base's
  CHECK(p.context.at("source.compute.gemm") == "moe.json (21 ops)");
  CHECK(p.context.at("source.launch.compute") == "moe.json (87 issue gaps)");
  CHECK(p.context.at("source.base") == "datasheet defaults");
  CHECK(p.context.count("source.compute.memcpy") == 0);
  CHECK(p.grouped_gemm_per_group);
  CHECK(p.memory_tables_by_bytes);
  // The simulator with the fitted tables reproduces the ops of well-posed efficiency (attention, streaming kernels).
  auto residual = [&](const std::string& name) {
    for (const auto& f : p.fits) {
      if (f.name == name) return f.max_abs_rel_error;
    }
    FAIL("no fit " << name);
    return 1.0;
  };
  CHECK(residual("trace.attention_fwd") < 1e-3);
  CHECK(residual("trace.attention_bwd") < 1e-3);
  CHECK(residual("trace.elementwise") < 1e-2);
  // The profile file says it too, and reads back.
  const auto back = twinstep::sim::profile_from_json(fit.json, "fit.json");
  CHECK(back.context.at("source.compute.attention_fwd") == "moe.json (2 ops)");
  CHECK(back.launch_s.at("compute") == Approx(8e-6));
  REQUIRE(back.op_compute.size() == p.op_compute.size());
  for (const auto& [stem, table] : p.op_compute) CHECK(back.op_compute.at(stem).points == table.points);
}

TEST_CASE("calibrate --from-trace: accumulating bf16 GEMMs fit the gemm_accumulate table, the others the gemm table") {
  auto r = import_file("kineto_moe.json", "moe.schedule.json");
  // The fixture's dense wgrad GEMMs (qkv, proj, router, output) as gradient_accumulation_fusion lowers them.
  std::size_t timed_gemms = 0, accumulating = 0;
  for (auto& op : r.trace.schedule.ops) {
    auto* c = std::get_if<ts::Compute>(&op.body);
    auto* g = c == nullptr ? nullptr : std::get_if<ts::Gemm>(&c->kernel);
    const auto& rec = r.trace.records[op.id];
    if (g == nullptr || rec.end_ns <= rec.start_ns) continue;
    ++timed_gemms;
    if (op.name.ends_with("_wgrad")) {
      g->accumulate_fp32 = true;
      ++accumulating;
    }
  }
  REQUIRE(accumulating > 0);
  REQUIRE(accumulating < timed_gemms);
  const auto cluster = twinstep::topologies::load_cluster("dgx-h100", twinstep::topologies::ClusterSize{0, 1});
  const auto base = twinstep::sim::Profile::datasheet_defaults();
  const auto p = twinstep::calibration::fit_profile_from_trace(r.trace, "moe.json", cluster, base, "t").profile;
  CHECK(p.context.at("source.compute.gemm_accumulate") == "moe.json (" + std::to_string(accumulating) + " ops)");
  CHECK(p.context.at("source.compute.gemm") == "moe.json (" + std::to_string(timed_gemms - accumulating) + " ops)");
  REQUIRE(p.compute.count("gemm_accumulate") == 1);
  // Read back from the profile's JSON: the table's name is one the reader accepts.
  CHECK(twinstep::sim::profile_from_json(twinstep::sim::profile_to_json(p), "fit.json")
            .compute.count("gemm_accumulate") == 1);
}

TEST_CASE("calibrate --from-trace: fp8, grouped and bf16-C accumulating GEMMs' epilogue is not counted twice") {
  // A step whose GEMMs all accumulate into the main grads and are priced from their class table plus the epilogue's
  // bytes (fp8 and grouped into fp32; a bf16 one into its bf16 C, IR accumulate): timed by the datasheet profile,
  // fitted back, and costed under other names (no op table).
  // The fitted class tables are the GEMMs without the epilogue, so the cost model's epilogue is added once: the
  // truth's time comes back, and the plain GEMM of the same shape is cheaper by the epilogue's seconds.
  twinstep::testing::ScheduleBuilder b(1, {ts::StreamDecl{"compute", 0}});
  ts::Gemm fp8{8192, 4096, 16384, 1, ts::DType::kFP8};
  fp8.accumulate_fp32 = true;
  b.add(0, "L0.mb0.bwd.fc1_wgrad", 0, ts::Compute{fp8, 0});
  ts::GroupedGemm grouped{{8192, 8192, 8192, 8192}, 2048, 4096, ts::DType::kBF16};
  grouped.accumulate_fp32 = true;
  b.add(0, "L0.mb0.bwd.experts_fc1_wgrad", 0, ts::Compute{grouped, 0});
  ts::Gemm bf16_c{4096, 4096, 8192, 1, ts::DType::kBF16};
  bf16_c.accumulate = true;
  b.add(0, "L0.mb0.bwd.fc2_wgrad", 0, ts::Compute{bf16_c, 0});
  const auto cluster = twinstep::topologies::load_cluster("dgx-h100", twinstep::topologies::ClusterSize{0, 1});
  const auto truth = twinstep::sim::Profile::datasheet_defaults();
  const twinstep::sim::CostModel truth_costs(cluster, truth);
  const ts::Trace measured = twinstep::sim::simulate(b.schedule(), cluster, truth_costs);
  const auto fitted = twinstep::calibration::fit_profile_from_trace(measured, "t.json", cluster, truth, "t").profile;
  REQUIRE(fitted.compute.count("gemm") == 1);
  REQUIRE(fitted.compute.count("grouped_gemm") == 1);
  const twinstep::sim::CostModel costs(cluster, fitted);
  for (const auto& op : measured.schedule.ops) {
    INFO(op.name);
    const auto& c = std::get<ts::Compute>(op.body);
    const double t = (measured.records[op.id].end_ns - measured.records[op.id].start_ns) * 1e-9;
    REQUIRE(twinstep::sim::accumulate_epilogue_extra_bytes(c.kernel) > 0);
    CHECK(costs.kernel_cost(c, op.name).solo_time_s() == Approx(t).epsilon(1e-3));  // its own stem table
    CHECK(costs.kernel_cost(c, "other").solo_time_s() == Approx(t).epsilon(1e-3));  // the class table + epilogue
    ts::Compute plain = c;
    std::visit(
        [](auto& k) {
          if constexpr (requires { k.accumulate_fp32; }) k.accumulate_fp32 = k.accumulate = false;
        },
        plain.kernel);
    const double epilogue_s = twinstep::sim::accumulate_epilogue_extra_bytes(c.kernel) /
                              (cluster.node.gpu.hbm_bytes_per_s * fitted.memory_efficiency);
    CHECK(costs.kernel_cost(plain, "other").solo_time_s() == Approx(t - epilogue_s).epsilon(1e-3));
  }
}

TEST_CASE(
    "calibrate --from-trace: each op stem gets its own table and the base continues the tables outside the trace") {
  const auto r = import_file("kineto_moe.json", "moe.schedule.json");
  const auto cluster = twinstep::topologies::load_cluster("dgx-h100", twinstep::topologies::ClusterSize{0, 1});
  const auto base = twinstep::sim::Profile::datasheet_defaults();
  const auto fit = twinstep::calibration::fit_profile_from_trace(r.trace, "moe.json", cluster, base, "from trace");
  const auto& p = fit.profile;
  REQUIRE_FALSE(p.op_compute.empty());
  CHECK(p.context.count("source.op_compute") == 1);
  // Every timed compute op has its stem's table; costed alone with it, an op of well-posed efficiency (attention,
  // streaming kernels: the fixture's tiny GEMMs run below the cost model's 0.1 % floor) takes the time the trace
  // gave it (the fixture's ops of one stem share one shape).
  const twinstep::sim::CostModel costs(cluster, p);
  std::size_t checked = 0;
  for (const auto& op : r.trace.schedule.ops) {
    const auto* c = std::get_if<ts::Compute>(&op.body);
    const auto& rec = r.trace.records[op.id];
    if (c == nullptr || rec.end_ns <= rec.start_ns || std::holds_alternative<ts::Memcpy>(c->kernel)) continue;
    REQUIRE(costs.op_table(op.name) != nullptr);
    if (std::holds_alternative<ts::Gemm>(c->kernel) || std::holds_alternative<ts::GroupedGemm>(c->kernel)) continue;
    if (costs.op_table(op.name)->points.front().second >= 1.0) continue;  // faster than the roofline: clamped
    INFO(op.name);
    CHECK(costs.kernel_cost(*c, op.name).solo_time_s() == Approx((rec.end_ns - rec.start_ns) * 1e-9).epsilon(1e-6));
    ++checked;
  }
  CHECK(checked > 10);
  // Outside the GEMM FLOPs the trace has, the gemm table is the base's, scaled to meet the trace's table at each end.
  double x_min = 0, x_max = 0;
  for (const auto& op : r.trace.schedule.ops) {
    const auto* c = std::get_if<ts::Compute>(&op.body);
    const auto& rec = r.trace.records[op.id];
    if (c == nullptr || !std::holds_alternative<ts::Gemm>(c->kernel) || rec.end_ns <= rec.start_ns) continue;
    const double f = ts::kernel_flops(c->kernel);
    x_min = x_min == 0 ? f : std::min(x_min, f);
    x_max = std::max(x_max, f);
  }
  const auto& g = p.compute.at("gemm");
  const auto& b = base.compute.at("gemm");
  std::pair<double, double> lo{0, 0}, hi{0, 0};  // the trace's own first and last points
  for (const auto& pt : g.points) {
    if (pt.first < x_min / 1.02 || pt.first > x_max * 1.02) continue;
    if (lo.first == 0) lo = pt;
    hi = pt;
  }
  REQUIRE(lo.first > 0);
  std::size_t outside = 0;
  for (const auto& [x, e] : b.points) {
    if (x >= x_min / 1.02 && x <= x_max * 1.02) continue;
    const auto& edge = x < x_min ? lo : hi;
    INFO("base point " << x);
    CHECK(g.at(x) == Approx(std::min(1.0, e * edge.second / b.at(edge.first))));
    ++outside;
  }
  CHECK(outside > 0);
}

namespace {

ti::GpuActivity kernel(const std::string& name, twinstep::Nanos launch, twinstep::Nanos start, twinstep::Nanos end,
                       const std::string& range, twinstep::Nanos range_start, const std::string& op) {
  ti::GpuActivity a;
  a.name = name;
  a.launch_ns = launch;
  a.start_ns = start;
  a.end_ns = end;
  if (!range.empty()) {
    a.ranges = {range};
    a.range_starts = {range_start};
  }
  a.op.name = op;
  a.op.start_ns = launch - 1;  // one framework call per kernel
  a.where = "test: kernel " + name;
  return a;
}

}  // namespace

TEST_CASE("import-trace: the grad zeroing's fills are one op, matched by kind when no range names it") {
  // A trace recorded before the schedule had Megatron's zero_grad_buffer op: eager PyTorch zeroes each main grad
  // with its own fill kernel inside a range that names no op ("zero_grad"); a later fill of the loss backward
  // lies outside any range. The fills of the one zeroing are one op's record; the later fill is not a second step.
  twinstep::testing::ScheduleBuilder b(1, {{"compute", 0}}, "zeroing");
  for (const char* name : {"dp.chunk0.zero_grad_buffer", "mb0.fwd.norm", "mb0.bwd.loss_bwd"}) {
    b.add(0, name, 0, twinstep::testing::elementwise_kernel(1 << 20));
  }
  const ts::Schedule& s = b.schedule();
  const std::string fill = "void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>>";
  ti::RankEvents r;
  r.source = "zeroing.json";
  r.rank_known = true;
  r.activities = {kernel(fill, 10, 100, 400, "zero_grad", 5, "aten::fill_"),
                  kernel(fill, 20, 400, 450, "zero_grad", 5, "aten::fill_"),
                  kernel(fill, 30, 450, 900, "zero_grad", 5, "aten::fill_"),
                  kernel("rms_norm_kernel", 40, 900, 1000, "mb0.fwd.norm", 35, "aten::rms_norm"),
                  kernel(fill, 50, 1000, 1600, "", 0, "aten::zero_"),
                  kernel("nll_backward", 60, 1600, 1700, "mb0.bwd.loss_bwd", 55, "aten::nll_loss_backward")};
  r.range_names = {"mb0.bwd.loss_bwd", "mb0.fwd.norm", "zero_grad"};
  const auto res = ti::import_trace(s, {r});
  CHECK(res.report.steps == 1);
  CHECK(res.report.by_order_ops == 1);
  CHECK(res.report.by_name_ops == 2);
  // The step starts at the first fill's launch (10): the zeroing runs from the first fill's start to the last's end.
  const auto& z = res.trace.records[0];
  CHECK(z.issue_ns == 0);
  CHECK(z.start_ns == 90);
  CHECK(z.end_ns == 890);
  // 800 + 100 + 100 ns of 1600 ns matched; the stray fill (600 ns) is reported, not taken as a second zeroing.
  CHECK(res.report.matched_gpu_time_s == Approx(1000e-9));
  CHECK(res.report.gpu_time_s == Approx(1600e-9));
  REQUIRE(res.report.unmatched_activities.size() == 1);
  CHECK(res.report.unmatched_activities[0].find("in range (none)") != std::string::npos);
}

TEST_CASE("import-trace: a GEMM's fp8 cast op is timed from the non-GEMM kernels of its GEMM's range") {
  // Transformer Engine (and torch_reference.py) casts a linear layer's inputs inside the layer's range: the schedule's
  // `<gemm>_fp8_cast` op has no range of its own. Its kernels (amax, cast) launched before the GEMM's kernel are its;
  // the GEMM keeps its own launch (cuBLAS's memset, the GEMM) and what follows it (a main-grad add). An elementwise
  // op not named after the GEMM that follows it gets nothing from that GEMM's range.
  twinstep::testing::ScheduleBuilder b(1, {{"compute", 0}}, "fp8 casts");
  const ts::Compute fp8_gemm = twinstep::testing::gemm_kernel(64, 128, 32, ts::DType::kFP8);
  b.add(0, "L0.mb0.fwd.fc1_fp8_cast", 0, twinstep::testing::elementwise_kernel(1 << 20));
  b.add(0, "L0.mb0.fwd.fc1", 0, fp8_gemm);
  b.add(0, "L0.mb0.fwd.swiglu", 0, twinstep::testing::elementwise_kernel(1 << 20));
  b.add(0, "L0.mb0.fwd.fc2", 0, fp8_gemm);
  const ts::Schedule& s = b.schedule();
  auto scaled_mm = [](const std::string& name, twinstep::Nanos launch, twinstep::Nanos start, twinstep::Nanos end,
                      const std::string& range, twinstep::Nanos range_start) {
    ti::GpuActivity a = kernel(name, launch, start, end, range, range_start, "aten::_scaled_mm");
    a.op.dims = {{64, 32}, {32, 128}};
    return a;
  };
  ti::RankEvents r;
  r.source = "fp8.json";
  r.rank_known = true;
  r.activities = {
      kernel("triton_red_fused_abs_amax_0", 10, 100, 150, "L0.mb0.fwd.fc1", 5, "CompiledFxGraph"),
      kernel("triton_poi_fused__to_copy_clamp_mul_1", 20, 170, 260, "L0.mb0.fwd.fc1", 5, "CompiledFxGraph"),
      scaled_mm("Memset", 30, 270, 272, "L0.mb0.fwd.fc1", 5),
      scaled_mm("nvjet_sm90_qqtst_128x256_128x4_2x1_v_bz_coopA_TNN", 31, 275, 700, "L0.mb0.fwd.fc1", 5),
      kernel("vectorized_elementwise_kernel<CUDAFunctor_add>", 40, 700, 800, "L0.mb0.fwd.fc1", 5, "aten::add_"),
      kernel("silu_mul_kernel", 50, 800, 850, "L0.mb0.fwd.fc2", 45, "aten::mul"),
      scaled_mm("nvjet_sm90_qqtst_128x256_128x4_2x1_v_bz_coopA_TNN", 60, 860, 1000, "L0.mb0.fwd.fc2", 45)};
  r.activities[4].op.start_ns = 39;
  r.range_names = {"L0.mb0.fwd.fc1", "L0.mb0.fwd.fc2"};
  const auto res = ti::import_trace(s, {r});
  CHECK(res.report.matched_ops == 3);
  CHECK(res.report.by_name_ops == 3);
  CHECK(res.report.split_ops == 1);
  CHECK(res.trace.context.count("import.split_ops") == 1);
  // The step starts at the first launch (10).
  const auto& cast = res.trace.records[0];
  CHECK(cast.issue_ns == 0);
  CHECK(cast.start_ns == 90);
  CHECK(cast.end_ns == 250);
  const auto& fc1 = res.trace.records[1];
  CHECK(fc1.issue_ns == 20);
  CHECK(fc1.start_ns == 260);
  CHECK(fc1.end_ns == 790);
  // swiglu is not fc2's input op: no record taken from fc2's range, which keeps all its kernels.
  CHECK(res.trace.records[2].end_ns == res.trace.records[2].start_ns);
  REQUIRE(res.report.unmatched_ops.size() == 1);
  CHECK(res.report.unmatched_ops[0].find("L0.mb0.fwd.swiglu") != std::string::npos);
  CHECK(res.trace.records[3].start_ns == 790);
  CHECK(res.trace.records[3].end_ns == 990);
  CHECK(res.report.match_rate() == Approx(1.0));
  CHECK(ti::format_report(res.report).find("of them 1 from their GEMM's range") != std::string::npos);
}

TEST_CASE("import-trace: a trace of another layout is refused at its first range, shape or rank that differs") {
  // Issue 19 item 4, the refusals of a trace recorded for another model or layout that the fixtures above do not
  // hold: each names the source, the record and the mismatch.
  const auto s = ts::read_schedule((kData / "moe.schedule.json").string());
  auto refusal = [&](const std::vector<ti::RankEvents>& ranks) {
    try {
      (void)ti::import_trace(s, ranks);
    } catch (const twinstep::Error& e) {
      CHECK(e.code() == twinstep::ExitCode::kBadInput);
      return std::string(e.what());
    }
    FAIL("import accepted the trace");
    return std::string();
  };
  ti::RankEvents r;
  r.source = "other.json";
  r.rank_known = true;
  SECTION("a range naming a layer the schedule lacks (a deeper model)") {
    r.activities = {kernel("k", 10, 20, 30, "L9.mb0.fwd.qkv", 5, "aten::mm")};
    r.range_names = {"L9.mb0.fwd.qkv"};
    const auto e = refusal({r});
    CHECK_THAT(e, twinstep_contains("other.json: range \"L9.mb0.fwd.qkv\" names layer 9"));
    CHECK_THAT(e, twinstep_contains("layers 0-1"));
  }
  SECTION("a range naming a micro-batch the schedule lacks (more micro-batches)") {
    r.range_names = {"L0.mb3.fwd.qkv"};
    CHECK_THAT(refusal({r}), twinstep_contains("names micro-batch 3"));
  }
  SECTION("attention over another shape under the op's own range") {
    auto a = kernel("cudnn_attn_fwd", 10, 20, 30, "L0.mb0.fwd.attn", 5, "aten::_scaled_dot_product_cudnn_attention");
    a.op.dims = {{1, 32, 128, 64}, {1, 32, 128, 64}, {1, 32, 128, 64}};
    r.activities = {a};
    r.range_names = {"L0.mb0.fwd.attn"};
    const auto e = refusal({r});
    CHECK_THAT(e, twinstep_contains("test: kernel cudnn_attn_fwd: op \"L0.mb0.fwd.attn\""));
    CHECK_THAT(e, twinstep_contains("[1,32,128,64]"));
    CHECK_THAT(e, twinstep_contains("[1,4,128,64]"));
  }
  SECTION("metadata naming another schedule") {
    r.context["schedule_name"] = "llama3-8b tp1 pp1 cp1 dp1";
    CHECK_THAT(refusal({r}), twinstep_contains("other.json: recorded for schedule \"llama3-8b tp1 pp1 cp1 dp1\""));
  }
  SECTION("two traces of one rank") {
    ti::RankEvents again = r;
    again.source = "again.json";
    CHECK_THAT(refusal({r, again}), twinstep_contains("again.json: a second trace of rank 0"));
  }
}

TEST_CASE("calibrate --from-trace: a trace's points anchor the base's table instead of replacing it") {
  using twinstep::calibration::anchored_table;
  using Table = twinstep::sim::EfficiencyTable;
  const Table base{{{1, 0.2}, {10, 0.4}, {100, 0.6}, {1000, 0.7}, {10000, 0.72}}};
  // Measured 1.25x the base at size 10 and 1.0x at 1000.
  const Table trace{{{10, 0.5}, {1000, 0.7}}};
  const Table t = anchored_table(trace, &base);
  // The trace's points as measured.
  CHECK(t.at(10) == Approx(0.5));
  CHECK(t.at(1000) == Approx(0.7));
  // Between them the base's shape times the ratio interpolated over log size (1.125 halfway): 0.6 x 1.125, where the
  // trace's own table would have interpolated its two points (0.6).
  CHECK(t.at(100) == Approx(0.675));
  CHECK(trace.at(100) == Approx(0.6));
  // Beyond them the ratio is held: 1.25 below, 1.0 above.
  CHECK(t.at(1) == Approx(0.25));
  CHECK(t.at(3.1622776601683795) == Approx(base.at(3.1622776601683795) * 1.25));
  CHECK(t.at(10000) == Approx(0.72));
  // One point (a trace of one shape) scales the whole base table by its ratio; efficiencies stay within (0, 1].
  const Table one = anchored_table(Table{{{100, 0.9}}}, &base);
  CHECK(one.at(1) == Approx(0.3));
  CHECK(one.at(1000) == Approx(1.0));  // 0.7 x 1.5 clamped
  CHECK(one.points.size() == base.points.size());
  // A base point within 2 % of a trace point leaves the trace's point alone, and the table stays ascending.
  const Table near = anchored_table(Table{{{101, 0.66}}}, &base);
  CHECK(near.at(101) == Approx(0.66));
  for (std::size_t i = 1; i < near.points.size(); ++i) CHECK(near.points[i].first > near.points[i - 1].first);
  // Without a base table the trace's table is what it is.
  CHECK(anchored_table(trace, nullptr).points == trace.points);
  const Table empty;
  CHECK(anchored_table(trace, &empty).points == trace.points);
}

TEST_CASE("calibrate --from-trace: the fitted tables anchor the base's and the context says by what ratio") {
  const auto r = import_file("kineto_moe.json", "moe.schedule.json");
  const auto cluster = twinstep::topologies::load_cluster("dgx-h100", twinstep::topologies::ClusterSize{0, 1});
  const auto base = twinstep::sim::read_profile(std::string(TWINSTEP_SOURCE_DIR) + "/calibration/profiles/h100x1.json");
  const auto fit = twinstep::calibration::fit_profile_from_trace(r.trace, "moe.json", cluster, base, "t", "why");
  const auto& p = fit.profile;
  CHECK(p.context.at("source.base") == base.name + " [why]");
  CHECK_THAT(p.context.at("anchor.compute.gemm"), twinstep_contains("the base's table x the trace's measured/base"));
  // Every base point of the gemm table comes back scaled by the ratio the trace has at its GEMM sizes, interpolated
  // between them and held beyond.
  const auto& g = p.compute.at("gemm");
  const auto& b = base.compute.at("gemm");
  std::vector<double> sizes;
  for (const auto& op : r.trace.schedule.ops) {
    const auto* c = std::get_if<ts::Compute>(&op.body);
    const auto& rec = r.trace.records[op.id];
    if (c != nullptr && std::holds_alternative<ts::Gemm>(c->kernel) && rec.end_ns > rec.start_ns)
      sizes.push_back(ts::kernel_flops(c->kernel));
  }
  std::sort(sizes.begin(), sizes.end());
  twinstep::sim::EfficiencyTable ratio;
  for (const double x : sizes) {
    if (ratio.points.empty() || x > ratio.points.back().first * 1.02) ratio.points.emplace_back(x, g.at(x) / b.at(x));
  }
  REQUIRE(ratio.points.size() > 1);
  std::size_t checked = 0;
  for (const auto& point : b.points) {
    const double x = point.first, e = point.second;  // named: a lambda cannot capture a structured binding (clang 14)
    if (std::any_of(sizes.begin(), sizes.end(), [&](double f) { return x >= f / 1.03 && x <= f * 1.03; })) continue;
    INFO("base point " << x);
    CHECK(g.at(x) == Approx(std::clamp(e * ratio.at(x), 1e-4, 1.0)).epsilon(1e-9));
    ++checked;
  }
  CHECK(checked > 10);
  // Each op stem anchors its class's base table: the context names the class and the ratio.
  CHECK_THAT(p.context.at("anchor.op_compute.fwd.qkv"), twinstep_contains("gemm base x "));
}
