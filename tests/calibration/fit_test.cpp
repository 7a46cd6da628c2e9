// Calibration suite and fitting: the suite's schedules are valid, a suite "measured" by the simulator under a known
// profile is fitted back to figures that reproduce it, raw files survive interruption and resume, bad input errors.
#include "calibration/fit.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <string>
#include <variant>
#include <vector>

#include "calibration/fit_framework.hpp"
#include "calibration/raw_file.hpp"
#include "calibration/suite.hpp"
#include "common/error.hpp"
#include "common/io.hpp"
#include "schedule/validate.hpp"
#include "sim/simulate.hpp"
#include "tests/catch.hpp"

using namespace twinstep;
using namespace twinstep::calibration;

namespace {

std::string temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("twinstep_fit_test_" + name)).string();
}

/// The "hardware": the simulator with a profile the fit does not see.
sim::Profile truth_profile() {
  sim::Profile p = sim::Profile::datasheet_defaults();
  p.launch_s["compute"] = 6e-6;
  p.launch_s["collective"] = 9e-6;
  p.interference.comm_hbm_bytes_per_bus_byte = 2.0;
  return p;
}

RawResults measure_quick(const std::string& path, const sim::Profile& truth = truth_profile()) {
  const auto cluster = topologies::load_cluster("h200x2-nvlink", topologies::ClusterSize{0, 2});
  const sim::CostModel costs(cluster, truth);
  const auto suite = make_suite("quick", 2);
  RunOptions o;
  o.raw_path = path;
  o.context = {{"gpu", "simulated H200"}};
  run_suite(
      "quick", suite, [&](const schedule::Schedule& s) { return sim::simulate(s, cluster, costs); }, o);
  return read_raw(path);
}

/// The profile fitted from the quick suite run on synthetic hardware `truth` whose waiting recv holds 0.5 SMs per
/// channel (the raw file, `file` under the temp folder, is removed again).
FitResult fit_recv_wait_truth(sim::Profile truth, const std::string& file) {
  const auto cluster = topologies::load_cluster("h200x2-nvlink", topologies::ClusterSize{0, 2});
  truth.interference.waiting_sms_per_channel = 0.5;
  const std::string path = temp_path(file);
  const RawResults raw = measure_quick(path, truth);
  std::filesystem::remove(path);
  return fit_profile(raw, cluster, "test", "", FrameworkInput{});
}

/// Checks every fit log line that starts with `prefix` (one shape's measured and simulated slowdown, the relative
/// error in parentheses last): the simulated slowdown within 1 % of the measured one.
void check_logged_slowdowns(const std::vector<std::string>& log, const std::string& prefix) {
  for (const auto& line : log) {
    if (line.rfind(prefix, 0) != 0) continue;
    INFO(line);
    const auto pct = line.rfind('(');
    REQUIRE(pct != std::string::npos);
    CHECK(std::abs(std::stod(line.substr(pct + 1))) < 1.0);
  }
}

}  // namespace

TEST_CASE("calibration::suite: every group is a valid schedule with probes on its ops", "[calibration]") {
  for (std::uint32_t world : {1u, 2u}) {
    const auto suite = make_suite("quick", world);
    REQUIRE(suite.size() >= 4);
    for (const auto& g : suite) {
      INFO(g.name);
      CHECK(schedule::validate(g.schedule).empty());
      CHECK_FALSE(g.probes.empty());
      for (const auto& p : g.probes) {
        for (auto id : p.ops) CHECK(id < g.schedule.ops.size());
      }
    }
  }
  CHECK_THROWS_AS(make_suite("huge", 2), Error);
}

TEST_CASE("calibration::fit: a suite measured under a known profile fits back to it", "[calibration]") {
  const std::string path = temp_path("roundtrip.jsonl");
  const RawResults raw = measure_quick(path);
  CHECK(raw.suite == "quick");
  CHECK(raw.world_size == 2);
  CHECK(raw.context.at("gpu") == "simulated H200");
  const auto cluster = topologies::load_cluster("h200x2-nvlink", topologies::ClusterSize{0, 2});
  const FitResult r = fit_profile(raw, cluster, "test", "abc", FrameworkInput{});
  // Host costs come back exactly (the simulator issues at the launch cost when nothing blocks).
  CHECK(r.profile.launch_s.at("compute") == Approx(6e-6).epsilon(0.02));
  CHECK(r.profile.launch_s.at("collective") == Approx(9e-6).epsilon(0.02));
  // Every fit reproduces its microbenchmarks; collectives within the 5 % bar at every size.
  REQUIRE_FALSE(r.profile.fits.empty());
  for (const auto& f : r.profile.fits) {
    INFO(f.name << " mean " << f.mean_abs_rel_error << " max " << f.max_abs_rel_error);
    if (f.name.rfind("coll.", 0) == 0 || f.name == "gemm" || f.name.rfind("attention", 0) == 0) {
      CHECK(f.max_abs_rel_error < 0.05);
    }
  }
  // The profile text reads back through the simulator's reader with the same content.
  const sim::Profile back = sim::profile_from_json(r.json, "fitted.json");
  CHECK(back.collectives.size() == r.profile.collectives.size());
  CHECK(back.memory_tables_by_bytes);
  CHECK_FALSE(back.attention_full_scores);  // the backend's causal attention runs the lower triangle only
  CHECK(back.context.at("fit_git_revision") == "abc");
  CHECK(back.fits.size() == r.profile.fits.size());
  // No waiting SMs in the truth: 0 is in the equally good range (a few SMs change no wave count of the quick suite).
  CHECK(back.interference.waiting_sms_per_channel < 0.25);
  CHECK(std::any_of(r.log.begin(), r.log.end(), [](const std::string& l) {
    return l.find("waiting_sms_per_channel = ") != std::string::npos &&
           l.find("equally good 0.00..") != std::string::npos;
  }));
  std::filesystem::remove(path);
}

TEST_CASE(
    "calibration::fit: the compute.gemm_accumulate group fits a table per C dtype (fp32, bf16) that reproduces it",
    "[calibration]") {
  const std::string path = temp_path("accumulate.jsonl");
  const RawResults raw = measure_quick(path);
  const auto cluster = topologies::load_cluster("h200x2-nvlink", topologies::ClusterSize{0, 2});
  const FitResult r = fit_profile(raw, cluster, "test", "abc", FrameworkInput{});
  REQUIRE(r.profile.compute.count("gemm_accumulate") == 1);
  REQUIRE(r.profile.compute.count("gemm_accumulate_bf16") == 1);
  CHECK(r.profile.context.count("compute.gemm_accumulate_bf16") == 0);  // measured: no fallback note
  // The truth has no such tables (the gemm table plus the epilogue's bytes: 6 B per C element into fp32, 2 B into
  // bf16); the fitted tables reproduce the suite's accumulating GEMMs, each dearer than the plain GEMM of its shape,
  // the fp32 accumulation dearer than the bf16 one.
  const sim::CostModel truth(cluster, truth_profile()), fitted(cluster, r.profile);
  std::map<std::string, std::size_t> probes;
  std::map<std::string, double> fitted_s;  // by shape
  for (const auto& g : make_suite("quick", 2)) {
    if (g.name != "compute.gemm_accumulate") continue;
    for (const auto& pr : g.probes) {
      const auto& c = std::get<schedule::Compute>(g.schedule.ops[pr.ops[0]].body);
      const auto& gemm = std::get<schedule::Gemm>(c.kernel);
      INFO(pr.name);
      CHECK(pr.family == (gemm.accumulate_fp32 ? "gemm_accumulate" : "gemm_accumulate_bf16"));
      CHECK(gemm.accumulate_fp32 != gemm.accumulate);
      CHECK(fitted.kernel_cost(c).solo_time_s() == Approx(truth.kernel_cost(c).solo_time_s()).epsilon(0.05));
      schedule::Compute plain = c;
      std::get<schedule::Gemm>(plain.kernel).accumulate_fp32 = false;
      std::get<schedule::Gemm>(plain.kernel).accumulate = false;
      CHECK(fitted.kernel_cost(c).solo_time_s() > fitted.kernel_cost(plain).solo_time_s());
      const std::string shape = pr.name.substr(pr.name.find('.'));
      if (gemm.accumulate) {
        CHECK(fitted.kernel_cost(c).solo_time_s() < fitted_s.at(shape));  // the fp32 twin comes first
      } else {
        fitted_s[shape] = fitted.kernel_cost(c).solo_time_s();
      }
      ++probes[pr.family];
    }
  }
  CHECK(probes == std::map<std::string, std::size_t>{{"gemm_accumulate", 2}, {"gemm_accumulate_bf16", 2}});

  // A raw file measured before the bf16-C probes existed: no table, today's pricing, and the context says so.
  RawResults old = raw;
  old.measurements.erase(std::remove_if(old.measurements.begin(), old.measurements.end(),
                                        [](const auto& m) { return m.family == "gemm_accumulate_bf16"; }),
                         old.measurements.end());
  const FitResult o = fit_profile(old, cluster, "test", "abc", FrameworkInput{});
  CHECK(o.profile.compute.count("gemm_accumulate_bf16") == 0);
  CHECK(o.profile.compute.count("gemm_accumulate") == 1);
  REQUIRE(o.profile.context.count("compute.gemm_accumulate_bf16") == 1);
  CHECK_THAT(o.profile.context.at("compute.gemm_accumulate_bf16"), twinstep_contains("not measured"));
  std::filesystem::remove(path);
}

TEST_CASE("calibration::suite: the copy-engine group times the TP ring chunks from rank 0 to 1, on 2 GPUs only",
          "[calibration]") {
  const auto has_group = [](const std::vector<BenchGroup>& suite) {
    return std::any_of(suite.begin(), suite.end(), [](const BenchGroup& g) { return g.name == kCopyEngineGroup; });
  };
  // One GPU: left out, and calibrate says why.
  CHECK_FALSE(has_group(make_suite("quick", 1)));
  REQUIRE(skipped_groups(1).size() == 1);
  CHECK(skipped_groups(1)[0].rfind(std::string(kCopyEngineGroup) + ": skipped on 1 GPU", 0) == 0);
  CHECK(skipped_groups(2).empty());
  const auto suite = make_suite("quick", 2);
  REQUIRE(has_group(suite));
  const BenchGroup& g =
      *std::find_if(suite.begin(), suite.end(), [](const BenchGroup& x) { return x.name == kCopyEngineGroup; });
  CHECK(g.schedule.meta.at("measure") == kPeerCopyMeasure);
  // Quick: 1 MiB and the chunks T_sp x h x 2 B of seq 4096, h 4096 / 8192, TP 2 / 4 / 8: 4, 8, 16, 32 MiB.
  std::vector<double> sizes;
  for (const auto& p : g.probes) {
    CHECK(p.family == "copy_engine");
    REQUIRE(p.ops.size() == 2);
    const auto& send = std::get<schedule::Send>(g.schedule.ops[p.ops[0]].body);
    const auto& recv = std::get<schedule::Recv>(g.schedule.ops[p.ops[1]].body);
    CHECK(g.schedule.ops[p.ops[0]].rank == 0);
    CHECK(send.peer == 1);
    CHECK(recv.peer == 0);
    CHECK(send.transport == schedule::Transport::kCopyEngine);
    CHECK(recv.transport == schedule::Transport::kCopyEngine);
    CHECK(static_cast<double>(send.bytes) == p.size);
    sizes.push_back(p.size);
  }
  const double mib = 1024.0 * 1024.0;
  CHECK(sizes == std::vector<double>{1 * mib, 4 * mib, 8 * mib, 16 * mib, 32 * mib});
}

TEST_CASE("calibration::fit: the copy engine's fraction of the NVLink line rate is recovered, else left at 376/450",
          "[calibration]") {
  const std::string path = temp_path("copy_engine.jsonl");
  sim::Profile truth = truth_profile();
  truth.copy_engine.nvlink_efficiency = 0.78;
  const RawResults raw = measure_quick(path, truth);
  const auto cluster = topologies::load_cluster("h200x2-nvlink", topologies::ClusterSize{0, 2});
  const FitResult r = fit_profile(raw, cluster, "test", "abc", FrameworkInput{});
  // The simulated copies are bandwidth only: the median over the transfers >= 16 MiB is the truth.
  CHECK(r.profile.copy_engine.nvlink_efficiency == Approx(0.78).epsilon(1e-3));
  CHECK(r.profile.copy_engine.source.rfind("measured: cudaMemcpyPeerAsync", 0) == 0);
  CHECK(r.json.find("\"copy_engine\"") != std::string::npos);
  const auto fit = std::find_if(r.profile.fits.begin(), r.profile.fits.end(),
                                [](const sim::FitSummary& f) { return f.name == "copy_engine"; });
  REQUIRE(fit != r.profile.fits.end());
  CHECK(fit->points == 5);
  CHECK(fit->max_abs_rel_error < 0.01);
  CHECK(sim::profile_from_json(r.json, "fitted.json").copy_engine.nvlink_efficiency == Approx(0.78).epsilon(1e-3));
  // A raw file without the group (one GPU, or measured before it existed): the default, and nothing written.
  RawResults without = raw;
  std::erase_if(without.measurements, [](const Measurement& m) { return m.group == kCopyEngineGroup; });
  const FitResult d = fit_profile(without, cluster, "test", "abc", FrameworkInput{});
  CHECK(d.profile.copy_engine.nvlink_efficiency == sim::CopyEngine::kDefaultNvlinkEfficiency);
  CHECK(d.json.find("\"copy_engine\"") == std::string::npos);
  std::filesystem::remove(path);
}

TEST_CASE("calibration::fit: waiting_sms_per_channel is recovered from corun.recv_wait", "[calibration]") {
  const auto cluster = topologies::load_cluster("h200x2-nvlink", topologies::ClusterSize{0, 2});
  for (const double truth_value : {0.25, 0.5, 1.0}) {
    INFO("truth " << truth_value);
    const std::string path = temp_path("recv_wait.jsonl");
    sim::Profile truth = truth_profile();
    truth.interference.waiting_sms_per_channel = truth_value;
    const RawResults raw = measure_quick(path, truth);
    // The synthetic hardware does slow the kernels beside the waiting recv.
    double solo = 0, waiting = 0;
    for (const auto& m : raw.measurements) {
      if (m.family == "recv_wait.solo") solo += m.value_s;
      if (m.family == "recv_wait.waiting") waiting += m.value_s;
    }
    CHECK(waiting > 1.02 * solo);
    const FitResult r = fit_profile(raw, cluster, "test", "", FrameworkInput{});
    // Whole SMs and wave quantization make a range of values equally good: the truth lies in the logged range and
    // the fitted value is its middle.
    const std::string head = std::string(kRecvWaitGroup) + ": waiting_sms_per_channel = ";
    const auto fit_line =
        std::find_if(r.log.begin(), r.log.end(), [&](const std::string& l) { return l.rfind(head, 0) == 0; });
    REQUIRE(fit_line != r.log.end());
    double value = -1, lo = -1, hi = -1;
    REQUIRE(std::sscanf(fit_line->c_str() + head.size(), "%lf (equally good %lf..%lf", &value, &lo, &hi) == 3);
    CHECK(lo <= truth_value + 1e-9);
    CHECK(hi >= truth_value - 0.01 - 1e-9);  // the grid step
    CHECK(r.profile.interference.waiting_sms_per_channel == Approx(0.5 * (lo + hi)).margin(1e-3));
    CHECK(value == Approx(r.profile.interference.waiting_sms_per_channel).margin(1e-3));
    CHECK(sim::profile_from_json(r.json, "fitted.json").interference.waiting_sms_per_channel ==
          r.profile.interference.waiting_sms_per_channel);
    // One log line per shape (6 GEMMs, attention fwd and bwd), each within 1 % of its measured slowdown.
    int shapes = 0;
    for (const auto& line : r.log) {
      if (line.rfind(std::string(kRecvWaitGroup) + ".", 0) == 0 &&
          line.find("measured slowdown") != std::string::npos) {
        ++shapes;
        const auto pct = line.rfind('(');
        REQUIRE(pct != std::string::npos);
        CHECK(std::abs(std::stod(line.substr(pct + 1))) < 1.0);
      }
    }
    CHECK(shapes == 8);
    std::filesystem::remove(path);
  }
}

TEST_CASE("calibration::fit: attention's SM scaling beside a waiting recv (waves or proportional) is recovered",
          "[calibration]") {
  // The synthetic hardware times attention in waves of 128 query rows or in proportion to its SMs
  // (attention_tile_q 0); the fit keeps the one that reproduces corun.recv_wait's attention shapes, logs both errors,
  // and writes attention_tile_q only when it is not the default.
  for (const std::uint32_t tile_q : {128u, 0u}) {
    INFO("truth attention_tile_q " << tile_q);
    sim::Profile truth = truth_profile();
    truth.interference.attention_tile_q = tile_q;
    const FitResult r = fit_recv_wait_truth(truth, "recv_wait_attention.jsonl");
    CHECK(r.profile.interference.attention_tile_q == tile_q);
    CHECK(sim::profile_from_json(r.json, "fitted.json").interference.attention_tile_q == tile_q);
    CHECK((r.json.find("\"attention_tile_q\"") != std::string::npos) == (tile_q != 128));
    CHECK(std::any_of(r.log.begin(), r.log.end(), [](const std::string& l) {
      return l.find("attention beside the waiting recv: in waves of 128 query rows") != std::string::npos;
    }));
    check_logged_slowdowns(r.log, std::string(kRecvWaitGroup) + ".attention");
  }
}

TEST_CASE("calibration::fit: the GEMM output tile of the wave model is recovered from corun.recv_wait",
          "[calibration]") {
  // The synthetic hardware times GEMMs beside the waiting recv in waves of 128x256 (the default) or 128x128 output
  // tiles; the fit tries 128x256, 128x128 and 64x128 with the waiting coefficient fitted under each, keeps the one that
  // reproduces the group, logs every candidate's error, and writes the tile only when it is not the default.
  for (const std::uint32_t tile_n : {256u, 128u}) {
    INFO("truth tile 128x" << tile_n);
    sim::Profile truth = truth_profile();
    truth.interference.gemm_tile_n = tile_n;
    const FitResult r = fit_recv_wait_truth(truth, "recv_wait_tile.jsonl");
    CHECK(r.profile.interference.gemm_tile_m == 128);
    CHECK(r.profile.interference.gemm_tile_n == tile_n);
    CHECK(sim::profile_from_json(r.json, "fitted.json").interference.gemm_tile_n == tile_n);
    CHECK((r.json.find("\"gemm_tile_n\"") != std::string::npos) == (tile_n != 256));
    const auto line = std::find_if(r.log.begin(), r.log.end(), [](const std::string& l) {
      return l.find("GEMM waves in output tiles of") != std::string::npos;
    });
    REQUIRE(line != r.log.end());
    CHECK(line->find("128x256 ") != std::string::npos);
    CHECK(line->find("64x128 ") != std::string::npos);
    CHECK(line->find("chosen 128x" + std::to_string(tile_n)) != std::string::npos);
    // Under the chosen tile every shape is reproduced (the truth's own model).
    check_logged_slowdowns(r.log, std::string(kRecvWaitGroup) + ".gemm");
  }
}

TEST_CASE("calibration::fit: waiting_sms_per_channel_more is recovered from corun.recv_wait4", "[calibration]") {
  // The synthetic hardware: the first waiting kernel holds 0.5 SMs per channel, each further one 0.25.
  const auto cluster = topologies::load_cluster("h200x2-nvlink", topologies::ClusterSize{0, 2});
  sim::Profile truth = truth_profile();
  truth.interference.waiting_sms_per_channel = 0.5;
  truth.interference.waiting_sms_per_channel_more = 0.25;
  const sim::CostModel costs(cluster, truth);
  std::vector<BenchGroup> groups;
  for (auto& g : make_suite("default", 2)) {
    if (g.name == kRecvWaitGroup || g.name == kRecvWait4Group) groups.push_back(std::move(g));
  }
  REQUIRE(groups.size() == 2);
  // Four recvs wait beside the kernels, each on its own stream.
  std::size_t recvs = 0;
  for (const auto& op : groups[1].schedule.ops)
    recvs += op.rank == 0 && std::holds_alternative<schedule::Recv>(op.body);
  CHECK(recvs == 4);
  const std::string path = temp_path("recv_wait4.jsonl");
  RunOptions o;
  o.raw_path = path;
  run_suite(
      "default", groups, [&](const schedule::Schedule& s) { return sim::simulate(s, cluster, costs); }, o);
  const RawResults raw = read_raw(path);
  std::filesystem::remove(path);
  const FitResult r = fit_profile(raw, cluster, "test", "", FrameworkInput{});
  auto range = [&](const std::string& head) {
    const auto line =
        std::find_if(r.log.begin(), r.log.end(), [&](const std::string& l) { return l.rfind(head, 0) == 0; });
    REQUIRE(line != r.log.end());
    double value = -1, lo = -1, hi = -1;
    REQUIRE(std::sscanf(line->c_str() + head.size(), "%lf (equally good %lf..%lf", &value, &lo, &hi) == 3);
    return std::pair{lo, hi};
  };
  const auto [lo1, hi1] = range(std::string(kRecvWaitGroup) + ": waiting_sms_per_channel = ");
  CHECK(lo1 <= 0.5 + 1e-9);
  CHECK(hi1 >= 0.5 - 0.01 - 1e-9);
  const auto [lo2, hi2] = range(std::string(kRecvWait4Group) + ": waiting_sms_per_channel_more = ");
  CHECK(lo2 <= 0.25 + 1e-9);
  CHECK(hi2 >= 0.25 - 0.01 - 1e-9);
  CHECK(hi2 < 0.5);  // distinguishable from "every waiting kernel holds the first one's share"
  CHECK(sim::profile_from_json(r.json, "fitted.json").interference.waiting_sms_per_channel_more ==
        r.profile.interference.waiting_sms_per_channel_more);
}

TEST_CASE("calibration::fit: the non-causal attention tables come from compute.attention_noncausal", "[calibration]") {
  // The synthetic hardware runs non-causal attention at efficiency 0.30 (fwd) / 0.25 (bwd), causal at the datasheet
  // table: the fit writes attention_noncausal_* tables that reproduce the truth, and none from a raw file without the
  // group.
  const auto cluster = topologies::load_cluster("h200x2-nvlink", topologies::ClusterSize{0, 2});
  sim::Profile truth = truth_profile();
  truth.compute["attention_noncausal_fwd"] = sim::EfficiencyTable{{{1e9, 0.30}, {1e14, 0.30}}};
  truth.compute["attention_noncausal_bwd"] = sim::EfficiencyTable{{{1e9, 0.25}, {1e14, 0.25}}};
  const sim::CostModel costs(cluster, truth);
  std::vector<BenchGroup> groups;
  for (auto& g : make_suite("default", 2)) {
    if (g.name == kAttentionNoncausalGroup) groups.push_back(std::move(g));
  }
  REQUIRE(groups.size() == 1);
  // Only non-causal kernels, the CP2 validation shapes among them, both directions.
  int fwd = 0, bwd = 0;
  for (const auto& p : groups[0].probes) {
    const auto& a =
        std::get<schedule::Attention>(std::get<schedule::Compute>(groups[0].schedule.ops[p.ops[0]].body).kernel);
    CHECK_FALSE(a.causal);
    CHECK(p.family == (a.backward ? "attention_noncausal_bwd" : "attention_noncausal_fwd"));
    (a.backward ? bwd : fwd) += 1;
  }
  CHECK(fwd >= 7);
  CHECK(bwd == fwd);
  const std::string path = temp_path("attention_noncausal.jsonl");
  RunOptions o;
  o.raw_path = path;
  run_suite(
      "default", groups, [&](const schedule::Schedule& s) { return sim::simulate(s, cluster, costs); }, o);
  const RawResults raw = read_raw(path);
  std::filesystem::remove(path);
  const FitResult r = fit_profile(raw, cluster, "test", "", FrameworkInput{});
  const auto back = sim::profile_from_json(r.json, "fitted.json");
  for (const double flops : {1e10, 1e11, 1e12}) {
    CHECK(back.compute.at("attention_noncausal_fwd").at(flops) == Approx(0.30).epsilon(0.01));
    CHECK(back.compute.at("attention_noncausal_bwd").at(flops) == Approx(0.25).epsilon(0.01));
  }
  const FitResult none = fit_profile(measure_quick(path), cluster, "test", "", FrameworkInput{});
  std::filesystem::remove(path);
  CHECK(none.json.find("attention_noncausal") == std::string::npos);
  CHECK(none.profile.compute.count("attention_noncausal_fwd") == 0);
}

TEST_CASE("calibration::suite: resume keeps measured groups and drops a torn line", "[calibration]") {
  const std::string path = temp_path("resume.jsonl");
  const RawResults full = measure_quick(path);
  std::string text = read_file(path);
  // Cut the file in the middle of its last line (an interrupted write).
  const auto last = text.rfind('\n', text.size() - 2);
  write_file_atomic(path, text.substr(0, last + 10));
  const RawResults torn = read_raw(path);
  CHECK(torn.groups.size() == full.groups.size() - 1);
  const auto cluster = topologies::load_cluster("h200x2-nvlink", topologies::ClusterSize{0, 2});
  const sim::CostModel costs(cluster, truth_profile());
  const auto suite = make_suite("quick", 2);
  RunOptions o;
  o.raw_path = path;
  o.resume = true;
  std::size_t executed = 0;
  const auto ran = run_suite(
      "quick", suite,
      [&](const schedule::Schedule& s) {
        ++executed;
        return sim::simulate(s, cluster, costs);
      },
      o);
  CHECK(ran == 1);
  CHECK(executed == 1);
  CHECK(read_raw(path).groups == full.groups);
  // Resuming another suite is refused.
  o.resume = true;
  CHECK_THROWS_WITH(run_suite(
                        "default", make_suite("default", 2),
                        [&](const schedule::Schedule& s) { return sim::simulate(s, cluster, costs); }, o),
                    twinstep_contains("--resume"));
  std::filesystem::remove(path);
}

TEST_CASE("calibration::read_raw: damaged files name the file and line", "[calibration]") {
  const std::string path = temp_path("bad.jsonl");
  write_file_atomic(path, "{\"nope\": 1}\n");
  CHECK_THROWS_WITH(read_raw(path), twinstep_contains("bad.jsonl") && twinstep_contains("header"));
  write_file_atomic(path,
                    "{\"twinstep_calibration_raw\":1,\"suite\":\"quick\",\"world_size\":2,\"context\":{}}\n"
                    "garbage\n{\"group\":\"x\",\"measurements\":[]}\n");
  CHECK_THROWS_WITH(read_raw(path), twinstep_contains("line 2"));
  std::filesystem::remove(path);
}

TEST_CASE("calibration::read_framework: the torch script's JSON, event_record_s optional, into the profile",
          "[calibration]") {
  const std::string with = temp_path("framework_with.json");
  write_file_atomic(with, R"({"per_kernel_launch_s": 7.6e-6, "per_module_call_s": 3.6e-6, "event_record_s": 2.5e-6,
                              "source": "test"})");
  const FrameworkInput f = read_framework(with);
  CHECK(f.per_kernel_launch_s == Approx(7.6e-6));
  CHECK(f.per_module_call_s == Approx(3.6e-6));
  CHECK(f.event_record_s == Approx(2.5e-6));
  const std::string without = temp_path("framework_without.json");
  write_file_atomic(without, R"({"per_kernel_launch_s": 7.6e-6, "per_module_call_s": 3.6e-6})");
  CHECK(read_framework(without).event_record_s < 0);  // not measured: the profile keeps no figure
  const std::string bad = temp_path("framework_bad.json");
  write_file_atomic(bad, R"({"per_module_call_s": 3.6e-6})");
  CHECK_THROWS_AS(read_framework(bad), ParseError);

  // Fitted into the profile's framework section and read back by the simulator.
  const RawResults raw = measure_quick(temp_path("framework_fit.jsonl"));
  const auto cluster = topologies::load_cluster("h200x2-nvlink", topologies::ClusterSize{0, 2});
  const FitResult r = fit_profile(raw, cluster, "test", "", f);
  CHECK(r.profile.framework.event_record_s == Approx(2.5e-6));
  CHECK(r.profile.framework.per_module_call_s == Approx(3.6e-6));
  CHECK(fit_profile(raw, cluster, "test", "", read_framework(without)).profile.framework.event_record_s < 0);
}

TEST_CASE("calibration::read_memory_overhead: the memory script's JSON, null fields not measured", "[calibration]") {
  const std::string path = temp_path("memory.json");
  write_file_atomic(path, R"({"memory_overhead": {"cuda_context_bytes": 500000000, "cuda_libraries_bytes": 20000000,
      "cublas_workspace_bytes": 33554432, "nccl_communicator_bytes": 1000, "nccl_buffer_bytes_per_channel": null,
      "allocator_reserved_over_allocated": 1.03, "device_total_bytes": 85000000000, "source": "test"},
      "raw": {}, "steps": []})");
  const sim::MemoryOverhead m = read_memory_overhead(path);
  CHECK(m.cuda_context_bytes == 520000000.0);  // the context and the libraries' modules, both outside the allocator
  CHECK(m.cublas_workspace_bytes == 33554432.0);
  CHECK(m.nccl_buffer_bytes_per_channel < 0);  // null: a 1-rank run cannot measure it
  CHECK(m.allocator_reserved_over_allocated == 1.03);
  CHECK(m.source == "test");
  // Written into a profile and read back.
  sim::Profile p = sim::Profile::datasheet_defaults();
  p.memory_overhead = m;
  const sim::Profile back = sim::profile_from_json(sim::profile_to_json(p), "back.json");
  CHECK(back.memory_overhead.cuda_context_bytes == 520000000.0);
  CHECK(back.memory_overhead.allocator_reserved_over_allocated == 1.03);
  // Errors name the file and the field.
  write_file_atomic(path, R"({"per_kernel_launch_s": 1e-6})");
  CHECK_THROWS_WITH(read_memory_overhead(path), Catch::Contains("memory.json") && Catch::Contains("/memory_overhead"));
  write_file_atomic(path,
                    R"({"memory_overhead": {"cuda_context_bytes": 1, "allocator_reserved_over_allocated": 0.5}})");
  CHECK_THROWS_WITH(read_memory_overhead(path), Catch::Contains("allocator_reserved_over_allocated"));
  write_file_atomic(path, R"({"memory_overhead": {"cublas_workspace_bytes": 1}})");
  CHECK_THROWS_WITH(read_memory_overhead(path), Catch::Contains("cuda_context_bytes"));
  std::filesystem::remove(path);
}

TEST_CASE(
    "calibration::fit: collective lines follow NCCL's protocol choice, a size-dependent bus bandwidth comes "
    "back as bus_efficiency",
    "[calibration]") {
  // The "hardware": ring all_reduce on LL (9 us, 120 GB/s) and Simple (20 us, 400 GB/s at 1 GiB, half of it at 4 MiB,
  // log-linear in between), as NCCL 2.28.9 ran it on two H200: LL up to 1 MiB, Simple from 2 MiB.
  sim::Profile truth = truth_profile();
  truth.nccl.algorithms = {sim::NcclAlgo::kRing};
  sim::CollectiveParams ll;
  ll.kind = sim::CollectiveParamsKind::kAllReduce;
  ll.proto = sim::NcclProto::kLL;
  ll.base_latency_s = 9e-6;
  ll.step_latency_s = 0;
  ll.bus_bytes_per_s = 120e9;
  sim::CollectiveParams simple = ll;
  simple.proto = sim::NcclProto::kSimple;
  simple.base_latency_s = 20e-6;
  simple.bus_bytes_per_s = 400e9;
  simple.bus_efficiency.points = {{4194304.0, 0.5}, {1073741824.0, 1.0}};
  truth.collectives = {ll, simple};
  const std::string path = temp_path("proto_split.jsonl");
  const RawResults raw = measure_quick(path, truth);
  std::filesystem::remove(path);
  const auto cluster = topologies::load_cluster("h200x2-nvlink", topologies::ClusterSize{0, 2});
  const FitResult r = fit_profile(raw, cluster, "test", "", FrameworkInput{});
  // The per-size log names NCCL's protocol: LL for the quick suite's 1 KiB..512 KiB, Simple for 4 MiB..1 GiB.
  int ll_lines = 0, simple_lines = 0;
  for (const auto& line : r.log) {
    if (line.find("coll.all_reduce.span2 ") == std::string::npos || line.find(" B  measured") == std::string::npos) {
      continue;
    }
    const double bytes = std::stod(line.substr(line.find("span2") + 5));
    INFO(line);
    const bool is_ll = line.find("ring/ll ") != std::string::npos;
    CHECK(is_ll == (bytes <= 1024.0 * 1024));
    (is_ll ? ll_lines : simple_lines)++;
    const auto pct = line.find('%');
    CHECK(std::abs(std::stod(line.substr(line.rfind(' ', pct - 1) + 1))) < 0.5);
  }
  CHECK(ll_lines == 4);
  CHECK(simple_lines == 4);
  // The Simple entry carries the measured efficiency. Between measured sizes (8x apart in the quick suite) the
  // interpolation is close but not exact: the fitted latency is the line's intercept, not the truth's 20 us, so the
  // table holds a slightly different efficiency curve through the same measured points.
  const sim::Profile back = sim::profile_from_json(r.json, "fitted.json");
  const auto it = std::find_if(back.collectives.begin(), back.collectives.end(), [](const sim::CollectiveParams& c) {
    return c.kind == sim::CollectiveParamsKind::kAllReduce && c.proto == sim::NcclProto::kSimple && c.ranks == 0;
  });
  REQUIRE(it != back.collectives.end());
  CHECK(it->bus_efficiency.points.size() == 4);
  const sim::CostModel fitted(cluster, back), real(cluster, truth);
  const auto span = fitted.span(schedule::Communicator{"g", "tp", {0, 1}});
  for (const double mib : {16.0, 128.0, 700.0}) {
    INFO(mib << " MiB");
    const double bytes = mib * 1024 * 1024;
    const double f = fitted.collective_cost(schedule::CollectiveKind::kAllReduce, bytes, span).time_s();
    const double t = real.collective_cost(schedule::CollectiveKind::kAllReduce, bytes, span).time_s();
    CHECK(f == Approx(t).epsilon(0.10));
  }
}

TEST_CASE("calibration::fit_framework: the autograd engine's per node and per kernel from backward_fn",
          "[calibration][framework]") {
  // backward over k nodes of j kernels: 70 us + k (15 us + j x 8 us); the raw launch 5 us.
  auto nodes_line = [](double j) {
    std::vector<FrameworkSample> v;
    for (double k : {1.0, 2.0, 4.0, 8.0, 16.0, 32.0}) v.push_back({k, 1e-6 * (70 + k * (15 + j * 8)), 0});
    return v;
  };
  FrameworkInput in;
  for (double k : {1.0, 2.0, 4.0}) in.module_fwd.push_back({k, 1e-6 * (10 + 7 * k), 0});
  for (double k : {1.0, 2.0, 4.0, 8.0}) in.backward.push_back({k, 1e-6 * (70 + 30 * k), 0});  // one kernel a node
  const std::map<std::string, double> launch = {{"compute", 5e-6}};
  // Without backward_fn: the one-kernel line's 30 us less the launch, all per node.
  FrameworkFit f = fit_framework(in, launch);
  CHECK(f.costs.backward_call_s == Approx(70e-6));
  CHECK(f.costs.per_autograd_node_s == Approx(25e-6));
  CHECK(f.costs.per_kernel_backward_s == Approx(0.0).margin(1e-12));
  // With lines at 1, 2 and 4 kernels per node: 15 us per node, 8 - 5 = 3 us per kernel beyond the raw launch.
  for (double j : {1.0, 2.0, 4.0}) in.backward_fn[j] = nodes_line(j);
  f = fit_framework(in, launch);
  CHECK(f.costs.backward_call_s == Approx(70e-6));
  CHECK(f.costs.per_autograd_node_s == Approx(15e-6));
  CHECK(f.costs.per_kernel_backward_s == Approx(3e-6));
  // One kernels-per-node value only: not separable, as without backward_fn.
  in.backward_fn.erase(2.0);
  in.backward_fn.erase(4.0);
  f = fit_framework(in, launch);
  CHECK(f.costs.per_autograd_node_s == Approx(25e-6));
  CHECK(f.costs.per_kernel_backward_s == Approx(0.0).margin(1e-12));
}

TEST_CASE("calibration::fit_framework: torch_framework.py's samples give back the lines they were made from",
          "[calibration][framework]") {
  // Synthetic samples on exact lines: module forward 12 us + 7 us x kernels, backward 20 us + 4 us x kernels,
  // function call 9 us + 7 us x kernels, EP node forward 9 + 2 x 3 + 5 = 20 us + 7 us x kernels.
  auto line = [](double fixed_us, double per_us) {
    std::vector<FrameworkSample> v;
    for (double k : {1.0, 2.0, 4.0, 8.0, 16.0, 32.0}) v.push_back({k, 1e-6 * (fixed_us + per_us * k), 0});
    return v;
  };
  FrameworkInput in;
  in.module_fwd = line(12, 7);
  in.function_fwd = line(9, 7);
  in.backward = line(20, 4);
  in.ep_node_fwd = line(20, 7);
  in.ep_node_bwd = line(2 * 3 + 5 + 20, 4);
  in.events = {{"event_record", 2.5e-6}, {"stream_wait_event", 3.5e-6}};
  in.syncs = {{"item", 15e-6}};
  // Fused Adam: 30 us + 0.5 us x tensors + 4 us x groups.
  for (auto [p, g] : {std::pair{1.0, 1.0}, {16.0, 1.0}, {256.0, 1.0}, {64.0, 2.0}, {64.0, 8.0}})
    in.optimizer.push_back({p, g, 1e-6 * (30 + 0.5 * p + 4 * g)});
  in.moe = {{"router", {100e-6, 10}}, {"preprocess", {60e-6, 3}}, {"permute", {80e-6, 6}}, {"unpermute", {50e-6, -1}}};
  in.moe_tokens = 512;
  const std::map<std::string, double> launch = {{"compute", 5e-6}, {"memcpy", 6e-6}, {"host_sync", 1e-6}};
  const FrameworkFit f = fit_framework(in, launch);
  const sim::FrameworkCosts& c = f.costs;
  CHECK(c.per_module_call_s == Approx(12e-6));
  CHECK(c.per_kernel_launch_s == Approx(2e-6));  // 7 us slope less the raw 5 us launch
  CHECK(c.backward_call_s == Approx(20e-6));
  // One kernel per node (no backward_fn samples): the slope is all per node; 4 us < the raw launch: nothing left.
  CHECK(c.per_autograd_node_s == Approx(0.0).margin(1e-12));
  CHECK(c.per_kernel_backward_s == Approx(0.0).margin(1e-12));
  CHECK(c.event_record_s == Approx(3e-6));
  CHECK(c.host_sync_s == Approx(8e-6));  // 15 us less the memcpy launch and the wake-up
  CHECK(c.ep_node_s == Approx(5e-6));    // 20 us - 9 us body call - 2 x 3 us events
  CHECK(c.optimizer_step_s == Approx(30e-6));
  CHECK(c.optimizer_per_param_s == Approx(0.5e-6));
  CHECK(c.optimizer_per_group_s == Approx(4e-6));
  CHECK(c.moe_router_s == Approx(50e-6));      // 100 us - 10 raw launches
  CHECK(c.moe_preprocess_s == Approx(37e-6));  // 60 us - 3 raw launches - the 8 us sync share
  CHECK(c.moe_permute_s == Approx(50e-6));
  CHECK(c.moe_unpermute_s == Approx(50e-6));  // kernels unknown: the whole host time
  // Residuals: exact lines fit exactly; the summaries are in the fit list and the log.
  bool found = false;
  for (const auto& s : f.fits) {
    if (s.name == "framework.module_fwd") {
      found = true;
      CHECK(s.points == 6);
      CHECK(s.max_abs_rel_error < 1e-9);
    }
  }
  CHECK(found);
  // A noisy sample shows up as a residual.
  in.module_fwd[2].host_s *= 1.1;
  const FrameworkFit noisy = fit_framework(in, launch);
  CHECK(noisy.fits.front().name == "framework.module_fwd");
  CHECK(noisy.fits.front().max_abs_rel_error > 0.03);
}

TEST_CASE("calibration::fit_framework_line: a line through the medians ignores a minority of slowed samples",
          "[calibration][framework]") {
  // 3 us + 13 us x k, with the k = 4 sample taken while the host ran 1.5x slower (as in session 6's H100 data).
  std::vector<FrameworkSample> v;
  for (double k : {1.0, 2.0, 4.0, 8.0, 16.0, 32.0}) v.push_back({k, 1e-6 * (3 + 13 * k), 0});
  v[2].host_s *= 1.5;
  const Line l = fit_framework_line(v);
  CHECK(l.slope_s == Approx(13e-6));
  CHECK(l.fixed_s == Approx(3e-6));
  // The slowed sample at the largest x, where least squares has the most leverage (its intercept would be -29 us):
  // the medians still give the line of the five others.
  v[2].host_s = 1e-6 * (3 + 13 * 4);
  v[5].host_s *= 1.5;
  const Line last = fit_framework_line(v);
  CHECK(last.slope_s == Approx(13e-6));
  CHECK(last.fixed_s == Approx(3e-6));
  // Two of six slowed (k = 16 and 32) is past what the medians resist (9 of the 15 pairwise slopes hold one): the
  // slope follows them. That is why the module line takes its slope from the function's samples (next test).
  v[4].host_s *= 1.5;
  CHECK(fit_framework_line(v).slope_s > 15e-6);
}

TEST_CASE("calibration::fit_framework: the module line is the function line plus the wrapper's paired median",
          "[calibration][framework]") {
  // Function: 1 us + 13 us x k; module: the same ops plus a 2.5 us nn.Module call, its k = 16 and 32 samples slowed
  // 1.5x (session 6's H100 run: 19.9 and 19.5 us per kernel where the function took 12.6 and 13.5).
  FrameworkInput in;
  for (double k : {1.0, 2.0, 4.0, 8.0, 16.0, 32.0}) {
    in.function_fwd.push_back({k, 1e-6 * (1 + 13 * k), 0});
    in.module_fwd.push_back({k, 1e-6 * (3.5 + 13 * k) * (k >= 16 ? 1.5 : 1.0), 0});
  }
  const FrameworkFit f = fit_framework(in, {{"compute", 5e-6}});
  CHECK(f.costs.per_module_call_s == Approx(3.5e-6));
  CHECK(f.costs.per_kernel_launch_s == Approx(8e-6));  // 13 us less the raw 5 us launch
  REQUIRE(f.fits.size() >= 2);
  CHECK(f.fits[0].name == "framework.module_fwd");
  CHECK(f.fits[0].max_abs_rel_error > 0.3);  // the slowed samples stand out in the residuals
  CHECK(f.fits[1].name == "framework.function_fwd");
  CHECK(f.fits[1].max_abs_rel_error < 1e-9);
  // Without function samples: the module samples' own line (its unslowed samples: 3.5 us + 13 us x k).
  in.function_fwd.clear();
  in.module_fwd[4].host_s = 1e-6 * (3.5 + 13 * 16);
  const FrameworkFit own = fit_framework(in, {{"compute", 5e-6}});
  CHECK(own.costs.per_module_call_s == Approx(3.5e-6).epsilon(1e-6));
  CHECK(own.costs.per_kernel_launch_s == Approx(8e-6).epsilon(1e-6));
}

TEST_CASE("calibration::read_framework: torch_framework.py's JSON, and errors naming the file", "[calibration]") {
  const std::string path = temp_path("torch_framework.json");
  write_file_atomic(path, R"({"schema": "twinstep.torch_framework/1", "source": "t",
    "module_fwd": [{"kernels": 1, "host_s": 1.9e-5, "wall_s": 2e-5}, {"kernels": 4, "host_s": 4e-5, "wall_s": 4e-5}],
    "backward": [{"kernels": 1, "host_s": 2e-5}, {"kernels": 4, "host_s": 3e-5}],
    "syncs": {"item": {"kernels": 1, "host_s": 1.5e-5, "wall_s": 1.5e-5}},
    "events": {"event_record": {"kernels": 0, "host_s": 2e-6, "wall_s": 2e-6}},
    "optimizer": [{"params": 1, "groups": 1, "host_s": 3e-5, "wall_s": 3e-5}],
    "moe": [{"tokens": 4096, "pieces": {"router": {"host_s": 9e-4, "profiled_kernels": 12}}},
            {"tokens": 512, "pieces": {"router": {"host_s": 1e-4, "profiled_kernels": null}}}],
    "ep_node": {"fwd": [], "bwd": []},
    "backward_fn": [{"nodes": 1, "kernels_per_node": 2, "kernels": 2, "host_s": 9e-5},
                    {"nodes": 4, "kernels_per_node": 2, "kernels": 8, "host_s": 2e-4, "wall_s": 3e-4}]})");
  const FrameworkInput f = read_framework(path);
  REQUIRE(f.backward_fn.count(2.0) == 1);
  CHECK(f.backward_fn.at(2.0).size() == 2);
  CHECK(f.backward_fn.at(2.0)[1].x == 4);  // x: nodes
  CHECK(f.backward_fn.at(2.0)[1].wall_s == Approx(3e-4));
  CHECK(f.module_fwd.size() == 2);
  CHECK(f.module_fwd[0].wall_s == Approx(2e-5));
  CHECK(f.backward[1].wall_s == Approx(3e-5));  // wall_s absent: the host time
  CHECK(f.syncs.at("item") == Approx(1.5e-5));
  CHECK(f.optimizer.size() == 1);
  CHECK(f.moe_tokens == 512);  // the fewest-token case
  CHECK(f.moe.at("router").host_s == Approx(1e-4));
  CHECK(f.moe.at("router").kernels < 0);
  write_file_atomic(path, R"({"schema": "twinstep.torch_framework/1", "module_fwd": [{"kernels": 1}]})");
  CHECK_THROWS_WITH(read_framework(path), twinstep_contains("torch_framework.json") && twinstep_contains("host_s"));
  write_file_atomic(path, R"({"schema": "twinstep.torch_framework/1", "module_fwd": []})");
  CHECK_THROWS_WITH(read_framework(path), twinstep_contains("/module_fwd"));
  // A line needs two different kernel counts (the fit through the medians has no slope otherwise).
  write_file_atomic(path, R"({"schema": "twinstep.torch_framework/1",
    "module_fwd": [{"kernels": 2, "host_s": 1e-5}, {"kernels": 4, "host_s": 2e-5}],
    "backward": [{"kernels": 4, "host_s": 1e-5}, {"kernels": 4, "host_s": 2e-5}]})");
  CHECK_THROWS_WITH(read_framework(path), twinstep_contains("/backward") && twinstep_contains("two different"));
  write_file_atomic(path, R"({"schema": "twinstep.torch_framework/1",
    "module_fwd": [{"kernels": 2, "host_s": 1e-5}, {"kernels": 4, "host_s": 2e-5}],
    "backward_fn": [{"nodes": 4, "kernels_per_node": 1, "host_s": 1e-5},
                    {"nodes": 4, "kernels_per_node": 1, "host_s": 2e-5}]})");
  CHECK_THROWS_WITH(read_framework(path), twinstep_contains("/backward_fn") && twinstep_contains("two different"));
  std::filesystem::remove(path);
}
