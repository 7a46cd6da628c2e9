// The worker pool end to end on a tiny model: results per point, invalid and non-fitting points with reasons,
// resume after a kill (a truncated output file), shards merged equal the single run, merge dedupe; pruning in
// rising bound order against the sequential rule, with any number of workers, after kills and in shards.
#include "sweep/runner.hpp"

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <filesystem>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "common/error.hpp"
#include "common/io.hpp"
#include "schedule/json.hpp"
#include "sim/simulate.hpp"
#include "sweep/grid.hpp"
#include "sweep/report.hpp"
#include "tests/catch.hpp"
#include "topologies/cluster.hpp"

using namespace twinstep;

namespace {

const std::string kTiny = std::string(TWINSTEP_SOURCE_DIR) + "/tests/sweep/data/tiny.json";

std::string temp_dir(const std::string& name) {
  const auto dir =
      std::filesystem::temp_directory_path() / ("twinstep_sweep_" + name + "_" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir.string();
}

std::vector<sweep::Point> tiny_points() {
  sweep::Spec s;
  s.models = {kTiny};
  s.clusters = {"dgx-h100"};
  s.gpus = {2, 4};
  s.gbs = {8};
  s.seq = {256};
  s.auto_layout = false;
  s.tp = {1, 2, 3};
  s.pp = {1, 2};
  s.overlaps = {models::parse_overlap_variant("none", "overlap"), models::parse_overlap_variant("dp", "overlap")};
  return sweep::expand(s);
}

sweep::RunOptions opts(const std::string& path, unsigned jobs = 2) {
  sweep::RunOptions o;
  o.output = path;
  o.jobs = jobs;
  o.progress = false;
  o.max_points_per_worker = 3;
  return o;
}

std::size_t count_lines(const std::string& text) {
  return static_cast<std::size_t>(std::count(text.begin(), text.end(), '\n'));
}

}  // namespace

TEST_CASE("sweep::run_sweep: one line per point, in point order, with reasons", "[sweep]") {
  const std::string dir = temp_dir("run");
  const auto points = tiny_points();
  sweep::RunStats st;
  const auto results = sweep::run_sweep(points, opts(dir + "/out.jsonl"), &st);
  REQUIRE(results.size() == points.size());
  CHECK(st.evaluated == points.size());
  CHECK(st.resumed == 0);
  CHECK(st.wall_s > 0);  // the summary's "evaluated in"
  CHECK(count_lines(read_file(dir + "/out.jsonl")) == points.size());
  std::size_t ok = 0;
  for (std::size_t i = 0; i < results.size(); ++i) {
    const auto& r = results[i];
    CHECK(r.index == points[i].index);
    CHECK(r.key == sweep::point_key(points[i]));
    if (points[i].gpus % (points[i].layout.tp * points[i].layout.pp) != 0) {
      CHECK(r.status == sweep::PointStatus::kInvalid);
      CHECK(r.reason.find("does not divide") != std::string::npos);
    } else {
      REQUIRE(r.status == sweep::PointStatus::kOk);
      ++ok;
      CHECK(r.step_time_s > 0);
      CHECK(r.mfu > 0);
      CHECK(r.mfu < 1);
      CHECK(r.memory_gib > 0);
      double sum = 0;
      for (const auto& [c, s] : r.breakdown_s) sum += s;
      CHECK(sum == Approx(r.step_time_s).epsilon(1e-6));
    }
  }
  CHECK(ok == 14);  // (3 layouts on 2 GPUs + 4 on 4 GPUs) x 2 overlaps; tp3 never divides
}

TEST_CASE("sweep::run_sweep: rejection reasons the caller computed are taken as they are, not computed again",
          "[sweep]") {
  const std::string dir = temp_dir("rejections");
  const auto points = tiny_points();
  std::vector<std::string> reasons;
  for (const auto& p : points) reasons.push_back(sweep::rejection_reason(p));
  (void)sweep::run_sweep(points, opts(dir + "/own.jsonl"));
  auto given = opts(dir + "/given.jsonl");
  given.rejections = &reasons;
  (void)sweep::run_sweep(points, given);
  CHECK(read_file(dir + "/given.jsonl") == read_file(dir + "/own.jsonl"));
  // The reasons given are the ones used: a valid point marked invalid by the caller is recorded with its reason.
  const auto valid = std::find(reasons.begin(), reasons.end(), std::string());
  REQUIRE(valid != reasons.end());
  const auto k = static_cast<std::size_t>(valid - reasons.begin());
  reasons[k] = "marked invalid by the caller";
  auto marked = opts(dir + "/marked.jsonl");
  marked.rejections = &reasons;
  const auto results = sweep::run_sweep(points, marked);
  CHECK(results[k].status == sweep::PointStatus::kInvalid);
  CHECK(results[k].reason == "marked invalid by the caller");
}

TEST_CASE("sweep::run_sweep: mixed analytic and flow points give the lines evaluate_point gives", "[sweep]") {
  // Workers take points one at a time and stay up for several analytic points; a flow point needs a process of its
  // own. The lines must not depend on which worker evaluated what.
  const std::string dir = temp_dir("mixed");
  auto points = tiny_points();
  for (std::size_t i = 0; i < points.size(); i += 3) points[i].fidelity = sim::Fidelity::kFlow;
  for (const unsigned jobs : {1u, 2u}) {
    const std::string path = dir + "/out" + std::to_string(jobs) + ".jsonl";
    const auto results = sweep::run_sweep(points, opts(path, jobs));
    REQUIRE(results.size() == points.size());
    std::size_t flow_ok = 0;
    for (std::size_t i = 0; i < points.size(); ++i) {
      CHECK(results[i].line == sweep::evaluate_point(points[i]));
      flow_ok += points[i].fidelity == sim::Fidelity::kFlow && results[i].status == sweep::PointStatus::kOk;
    }
    if (sim::flow_model_available()) CHECK(flow_ok > 0);
  }
}

TEST_CASE("sweep::run_sweep: resume after a kill equals an uninterrupted run", "[sweep]") {
  const std::string dir = temp_dir("resume");
  const auto points = tiny_points();
  (void)sweep::run_sweep(points, opts(dir + "/plain.jsonl"));
  const std::string plain = read_file(dir + "/plain.jsonl");
  // A line of another sweep (the first point with batch 16) in the file before the run: kept, in (index, key) order.
  std::string foreign = plain.substr(0, plain.find('\n') + 1);
  REQUIRE(foreign.find("\"gbs\":8,") != std::string::npos);
  foreign.replace(foreign.find("\"gbs\":8,"), 8, "\"gbs\":16,");
  write_file_atomic(dir + "/full.jsonl", foreign);
  sweep::RunStats st;
  (void)sweep::run_sweep(points, opts(dir + "/full.jsonl"), &st);
  CHECK(st.kept == 1);
  const std::string full = read_file(dir + "/full.jsonl");
  CHECK(full.size() == plain.size() + foreign.size());
  CHECK(full.find(foreign) != std::string::npos);

  // A killed run: the first half of the lines, the other sweep's line, then half of the next line (torn write).
  std::size_t cut = 0;
  for (std::size_t n = 0; n < points.size() / 2; ++n) cut = plain.find('\n', cut) + 1;
  const std::size_t next_end = plain.find('\n', cut);
  const std::string killed = plain.substr(0, cut) + foreign + plain.substr(cut, (next_end - cut) / 2);
  write_file_atomic(dir + "/resumed.jsonl", killed);

  const auto results = sweep::run_sweep(points, opts(dir + "/resumed.jsonl", 1), &st);
  CHECK(results.size() == points.size());
  CHECK(st.resumed == points.size() / 2);
  CHECK(st.evaluated == points.size() - points.size() / 2);
  CHECK(st.torn == 1);
  CHECK(st.kept == 1);
  CHECK(read_file(dir + "/resumed.jsonl") == full);

  // A second rerun evaluates nothing.
  const auto again = sweep::run_sweep(points, opts(dir + "/resumed.jsonl"), &st);
  CHECK(st.evaluated == 0);
  CHECK(st.resumed == points.size());
  CHECK(read_file(dir + "/resumed.jsonl") == full);
}

TEST_CASE("sweep::run_sweep: a second, different sweep into the same file keeps the first one's points", "[sweep]") {
  // Issue 20 item 2: `sweep --gpus 8 ... -o s.jsonl` then `sweep --gpus 16 ... -o s.jsonl` must leave both.
  const std::string dir = temp_dir("union");
  std::vector<sweep::Point> first, second;
  for (const auto& p : tiny_points()) (p.gpus == 2 ? first : second).push_back(p);
  REQUIRE(!first.empty());
  REQUIRE(!second.empty());
  const std::string path = dir + "/s.jsonl";
  sweep::RunStats st;
  (void)sweep::run_sweep(first, opts(path), &st);
  const std::string after_first = read_file(path);
  const auto results = sweep::run_sweep(second, opts(path), &st);
  CHECK(results.size() == second.size());  // this run's points only
  for (std::size_t i = 0; i < second.size(); ++i) CHECK(results[i].key == sweep::point_key(second[i]));
  CHECK(st.kept == first.size());
  CHECK(st.evaluated == second.size());
  const auto in_file = sweep::read_results(path);
  CHECK(in_file.size() == first.size() + second.size());
  std::size_t lines_in = 0;
  for (const auto& r : in_file) lines_in += after_first.find(r.line) != std::string::npos;
  CHECK(lines_in == first.size());  // the first sweep's lines, byte for byte
  // The file is the union in merge order: what merging the two sweeps' own outputs gives.
  (void)sweep::run_sweep(second, opts(dir + "/second_alone.jsonl"));
  write_file_atomic(dir + "/first_alone.jsonl", after_first);
  CHECK(read_file(path) == sweep::merge_results({dir + "/first_alone.jsonl", dir + "/second_alone.jsonl"}));

  // Running the first sweep again resumes all of it and keeps the second's: the file does not change.
  const std::string both = read_file(path);
  (void)sweep::run_sweep(first, opts(path), &st);
  CHECK(st.evaluated == 0);
  CHECK(st.resumed == first.size());
  CHECK(st.kept == second.size());
  CHECK(read_file(path) == both);
}

TEST_CASE("sweep::rejection_reason: the lowering's checks before lowering, word for word", "[sweep]") {
  for (const auto& p : tiny_points()) {
    const std::string reason = sweep::rejection_reason(p);
    const auto r = sweep::result_from_line(sweep::evaluate_point(p), "test");
    if (r.status == sweep::PointStatus::kInvalid) {
      CHECK(reason == r.reason);
    } else {
      CHECK(reason.empty());
    }
  }
  // Passes the layout rules, rejected by the lowering (dp 2 does not divide the batch 3).
  sweep::Point p;
  p.model = kTiny;
  p.cluster = "dgx-h100";
  p.gpus = 2;
  p.gbs = 3;
  p.seq = 256;
  REQUIRE(p.invalid_reason.empty());
  const std::string reason = sweep::rejection_reason(p);
  CHECK(reason.find("global_batch_size 3") != std::string::npos);
  CHECK(reason == sweep::result_from_line(sweep::evaluate_point(p), "test").reason);
  // Unknown inputs are the evaluation's error to report, not a rejection.
  p.model = "no-such-model";
  CHECK(sweep::rejection_reason(p).empty());
  CHECK(sweep::result_from_line(sweep::evaluate_point(p), "test").status == sweep::PointStatus::kError);
}

TEST_CASE("sweep::merge_results: shards merged equal the single run", "[sweep]") {
  const std::string dir = temp_dir("shards");
  const auto points = tiny_points();
  (void)sweep::run_sweep(points, opts(dir + "/single.jsonl"));
  std::vector<std::string> shards;
  for (std::uint32_t i = 0; i < 3; ++i) {
    const std::string path = dir + "/shard" + std::to_string(i) + ".jsonl";
    (void)sweep::run_sweep(sweep::select_shard(points, {i, 3}), opts(path, 1));
    shards.push_back(path);
  }
  // Reversed input order and a duplicated shard change nothing.
  std::vector<std::string> inputs{shards[2], shards[0], shards[1], shards[0]};
  std::size_t lines_in = 0;
  std::vector<std::string> conflicts;
  const std::string merged = sweep::merge_results(inputs, &lines_in, &conflicts);
  CHECK(merged == read_file(dir + "/single.jsonl"));
  CHECK(lines_in == points.size() + sweep::select_shard(points, {0, 3}).size());
  CHECK(conflicts.empty());

  // A different line for the same key: the first wins and the conflict is reported.
  std::string other = read_file(shards[1]);
  const auto pos = other.find("\"status\":\"");
  REQUIRE(pos != std::string::npos);
  other.replace(pos, std::string("\"status\":\"").size(), "\"reason_x\":1,\"status\":\"");
  write_file_atomic(dir + "/other.jsonl", other);
  conflicts.clear();
  (void)sweep::merge_results({shards[1], dir + "/other.jsonl"}, nullptr, &conflicts);
  CHECK(conflicts.size() == 1);
  CHECK_THROWS_AS(sweep::merge_results({dir + "/missing.jsonl"}), Error);
}

TEST_CASE("sweep::evaluate_point: not fitting, unknown inputs and bad lines", "[sweep]") {
  sweep::Point p;
  p.model = "llama3-70b";
  p.cluster = "dgx-h100";
  p.gpus = 1;
  p.gbs = 1;
  p.seq = 4096;
  const auto r = sweep::result_from_line(sweep::evaluate_point(p), "test");
  CHECK(r.status == sweep::PointStatus::kDoesNotFit);
  CHECK(r.reason.find("GiB per GPU (memory estimate), the GPU has") != std::string::npos);
  CHECK(r.memory_gib > r.capacity_gib);

  p.model = kTiny;
  p.gpus = 2;
  p.gbs = 3;  // dp 2 does not divide 3: the lowering rejects it
  p.seq = 256;
  const auto bad = sweep::result_from_line(sweep::evaluate_point(p), "test");
  CHECK(bad.status == sweep::PointStatus::kInvalid);
  CHECK(bad.reason.find("global_batch_size 3") != std::string::npos);

  CHECK_THROWS_WITH(sweep::result_from_line("{\"x\":1}", "f.jsonl:3"), twinstep_contains("f.jsonl:3"));
  const std::string dir = temp_dir("bad");
  write_file_atomic(dir + "/bad.jsonl", "garbage\n" + sweep::evaluate_point(p) + "\n");
  CHECK_THROWS_WITH(sweep::read_results(dir + "/bad.jsonl"), twinstep_contains("bad.jsonl:1"));
}

TEST_CASE("sweep::PointStatus: read back as written, and an unknown status names the line and the field", "[sweep]") {
  const sweep::PointStatus all[] = {sweep::PointStatus::kOk, sweep::PointStatus::kInvalid,
                                    sweep::PointStatus::kDoesNotFit, sweep::PointStatus::kCannotWin,
                                    sweep::PointStatus::kError};
  for (const auto status : all) {
    CHECK(sweep::parse_point_status(sweep::to_string(status), "status") == status);
    sweep::Point p;
    p.model = kTiny;
    p.cluster = "dgx-h100";
    CHECK(sweep::result_from_line(sweep::status_line(p, status, "why"), "test").status == status);
  }
  CHECK(sweep::to_string(sweep::PointStatus::kDoesNotFit) == "does_not_fit");
  sweep::Point p;
  p.model = kTiny;
  p.cluster = "dgx-h100";
  std::string line = sweep::status_line(p, sweep::PointStatus::kError, "why");
  const std::string error = "\"status\":\"error\"";
  const auto pos = line.find(error);
  REQUIRE(pos != std::string::npos);
  line.replace(pos, error.size(), "\"status\":\"failed\"");
  try {
    (void)sweep::result_from_line(line, "f.jsonl:7");
    FAIL("expected a ParseError");
  } catch (const ParseError& e) {
    CHECK(e.file() == "f.jsonl:7");
    CHECK(e.pointer() == "/status");
    CHECK(std::string(e.what()).find("unknown value \"failed\" (use one of: \"ok\", \"invalid\", \"does_not_fit\", "
                                     "\"cannot_win\", \"error\")") != std::string::npos);
  }
}

TEST_CASE("sweep::read_measured: a measured trace matches the point whose full schedule it ran", "[sweep]") {
  const std::string dir = temp_dir("measured");
  const auto points = tiny_points();
  const auto results = sweep::run_sweep(points, opts(dir + "/out.jsonl"));
  // A "measured" trace of the tp2 pp1 / dp point on 4 GPUs: its full schedule lowered and replayed by the simulator
  // (any trace carrying the executed schedule will do; the sweep itself simulated it TP- and DP-reduced).
  std::size_t want = points.size();
  for (std::size_t i = 0; i < points.size(); ++i) {
    const auto& p = points[i];
    if (p.gpus == 4 && p.layout.tp == 2 && p.layout.pp == 1 &&
        p.overlap == models::parse_overlap_variant("dp", "overlap"))
      want = i;
  }
  REQUIRE(want < points.size());
  REQUIRE(results[want].status == sweep::PointStatus::kOk);
  models::Lowered low = sweep::lower_point(points[want]);
  const std::string fp = sim::schedule_fingerprint(low.schedule);
  const auto cluster = topologies::load_cluster("dgx-h100", {0, 4});
  const auto trace =
      sim::simulate(std::move(low.schedule), cluster, sim::CostModel(cluster, sim::Profile::datasheet_defaults()));
  std::filesystem::create_directories(dir + "/measured");
  schedule::write_trace(trace, dir + "/measured/run.trace.json");
  write_file_atomic(dir + "/measured/notes.json", "{\"not\": \"a trace\"}\n");
  const auto m = sweep::read_measured(dir + "/measured", results);
  REQUIRE(m.size() == 1);
  CHECK(m[0].fingerprint == fp);
  REQUIRE(m[0].match);
  CHECK(*m[0].match == want);
}

/// Every layout of the tiny model on 8 GPUs (--parallel auto), GBS 32, sequence 1024.
sweep::Spec tiny_auto_layouts() {
  sweep::Spec s;
  s.models = {kTiny};
  s.clusters = {"dgx-h100"};
  s.gpus = {8};
  s.gbs = {32};
  s.seq = {1024};
  s.auto_layout = true;
  return s;
}

/// The statuses the sequential rule of pruning gives (sweep/bound_order.hpp), from each point's bound (screen_point,
/// in this process) and its step simulated in full (`all`): per ranking group, in rising bound order (ties in point
/// order), simulated while the bound is no more than the best step before it; pruned against that best after.
/// Returns per point the best it is pruned against, or none when simulated (or not screened to a bound).
std::vector<std::optional<double>> sequential_rule(const std::vector<sweep::Point>& points,
                                                   const std::vector<sweep::Result>& all,
                                                   std::vector<sweep::Screened>& screened) {
  std::map<sweep::GroupKey, std::vector<std::size_t>> groups;
  screened.clear();
  for (std::size_t i = 0; i < points.size(); ++i) {
    screened.push_back(sweep::screen_point(points[i]));
    if (screened[i].line.empty()) groups[sweep::group_of(points[i])].push_back(i);
  }
  std::vector<std::optional<double>> pruned_against(points.size());
  for (auto& [g, members] : groups) {
    std::stable_sort(members.begin(), members.end(),
                     [&](std::size_t a, std::size_t b) { return screened[a].bound_s < screened[b].bound_s; });
    double best = std::numeric_limits<double>::infinity();
    bool cut = false;
    for (const std::size_t i : members) {
      cut = cut || screened[i].bound_s > best;
      if (cut) {
        pruned_against[i] = best;
      } else if (all[i].status == sweep::PointStatus::kOk) {
        best = std::min(best, all[i].step_time_s);
      }
    }
  }
  return pruned_against;
}

/// Runs `points` with pruning (one worker and three) and without, and checks that pruning changed nothing but the
/// pruned points' lines: the same best point, the same line for every point not pruned, and exactly the points the
/// sequential rule prunes pruned, each with its bound, above the best of its group, and below its own simulated step.
/// The output is the same bytes with any number of workers and after a resume from any prefix of it. At least
/// `min_pruned` are pruned.
void check_pruning(const std::vector<sweep::Point>& points, const std::string& name, std::size_t min_pruned) {
  const std::string dir = temp_dir(name);
  sweep::RunOptions o = opts(dir + "/pruned.jsonl", 1);
  o.prune = true;
  const auto pruned = sweep::run_sweep(points, o);
  const auto all = sweep::run_sweep(points, opts(dir + "/all.jsonl"));
  REQUIRE(pruned.size() == all.size());
  // The best of the pruned run is the best of the full one.
  const auto best_of = [](const std::vector<sweep::Result>& rs) {
    const auto rankings = sweep::rank_results(rs);
    REQUIRE(rankings.size() == 1);
    REQUIRE(rankings[0].best);
    return rs[*rankings[0].best];
  };
  const sweep::Result best = best_of(all);
  CHECK(best_of(pruned).key == best.key);
  CHECK(best_of(pruned).step_time_s == best.step_time_s);
  std::vector<sweep::Screened> screened;
  const auto rule = sequential_rule(points, all, screened);
  std::size_t cannot_win = 0;
  for (std::size_t i = 0; i < pruned.size(); ++i) {
    const auto& r = pruned[i];
    INFO(r.key << ": " << r.reason);
    CHECK((r.status == sweep::PointStatus::kCannotWin) == rule[i].has_value());
    if (r.status != sweep::PointStatus::kCannotWin) {
      CHECK(r.line == all[i].line);  // a point not pruned gives the same line
      continue;
    }
    ++cannot_win;
    const nlohmann::json j = nlohmann::json::parse(r.line);
    const double bound = j.at("lower_bound_s").get<double>(), best_so_far = j.at("best_so_far_s").get<double>();
    CHECK(bound == screened[i].bound_s);
    CHECK(bound > best_so_far);
    CHECK(best_so_far == best.step_time_s);  // one ranking group: pruned against its best
    CHECK(r.reason.find("pruned before simulating") != std::string::npos);
    // The bound holds: simulated after all, the point takes at least that long, so it could not have won.
    REQUIRE(all[i].status == sweep::PointStatus::kOk);
    CHECK(all[i].step_time_s >= bound);
    CHECK(all[i].step_time_s > best.step_time_s);
  }
  CHECK(cannot_win >= min_pruned);
  // The report counts them.
  const auto rankings = sweep::rank_results(pruned);
  CHECK(rankings[0].cannot_win == cannot_win);

  // Three workers: points simulated ahead of the bound order are discarded; the same bytes.
  const std::string one_worker = read_file(dir + "/pruned.jsonl");
  o.output = dir + "/three.jsonl";
  o.jobs = 3;
  (void)sweep::run_sweep(points, o);
  CHECK(read_file(o.output) == one_worker);
  // Killed at any moment: the file holds some of the lines (here the first k of the final file, whose order is the
  // points', and half of the next one); the resumed run ends with the same bytes.
  std::vector<std::size_t> ends;  // end of each line
  for (std::size_t at = one_worker.find('\n'); at != std::string::npos; at = one_worker.find('\n', at + 1)) {
    ends.push_back(at + 1);
  }
  for (const std::size_t k : {std::size_t{0}, ends.size() / 3, ends.size() / 2, ends.size() - 1}) {
    const std::size_t from = k == 0 ? 0 : ends[k - 1];
    o.output = dir + "/resumed" + std::to_string(k) + ".jsonl";
    o.jobs = 2;
    write_file_atomic(o.output, one_worker.substr(0, from) + one_worker.substr(from, (ends[k] - from) / 2));
    sweep::RunStats st;
    (void)sweep::run_sweep(points, o, &st);
    INFO("resumed from " << k << " lines");
    CHECK(st.resumed == k);
    CHECK(read_file(o.output) == one_worker);
  }
  // Killed for real: a run in a child process killed once its file has some lines (appended as points are decided),
  // then resumed here.
  for (const std::size_t k : {std::size_t{1}, ends.size() / 2}) {
    o.output = dir + "/killed" + std::to_string(k) + ".jsonl";
    std::filesystem::remove(o.output);
    const pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) {
      try {
        (void)sweep::run_sweep(points, o);
      } catch (...) {
        ::_exit(1);
      }
      ::_exit(0);
    }
    int status = 0;
    while (::waitpid(child, &status, WNOHANG) == 0) {
      if (std::filesystem::exists(o.output) && count_lines(read_file(o.output)) >= k) {
        ::kill(child, SIGKILL);
        ::waitpid(child, &status, 0);
        break;
      }
      ::usleep(200);
    }
    (void)sweep::run_sweep(points, o);
    INFO("killed after " << k << " lines");
    CHECK(read_file(o.output) == one_worker);
  }
  // Two shards, each pruning within its own points, merged: the same best line; each simulated line the full run's.
  std::vector<std::string> shards;
  for (std::uint32_t i = 0; i < 2; ++i) {
    o.output = dir + "/shard" + std::to_string(i) + ".jsonl";
    (void)sweep::run_sweep(sweep::select_shard(points, {i, 2}), o);
    shards.push_back(o.output);
  }
  write_file_atomic(dir + "/merged.jsonl", sweep::merge_results(shards));
  const auto merged = sweep::read_results(dir + "/merged.jsonl");
  REQUIRE(merged.size() == all.size());
  CHECK(best_of(merged).line == best.line);
  for (std::size_t i = 0; i < merged.size(); ++i) {
    if (merged[i].status != sweep::PointStatus::kCannotWin) CHECK(merged[i].line == all[i].line);
  }
}

TEST_CASE("sweep::run_sweep: pruning skips points that cannot win, each with a bound above the best", "[sweep]") {
  // Every layout of the tiny model on 8 GPUs: the CP rings over 64- and 128-token chunks launch many tiny kernels
  // and cannot beat the layouts without CP.
  check_pruning(sweep::expand(tiny_auto_layouts()), "prune", 1);
}

TEST_CASE("sweep::run_sweep: pruning pipelines by their fill, drain and exposed communication keeps the best point",
          "[sweep]") {
  // Every layout of the tiny model on 8 GPUs with each dense overlap variant: 1F1B and interleaved pipelines, TP with
  // and without its userbuffer ring, CP rings, DP; most of them cannot beat the best.
  sweep::Spec s = tiny_auto_layouts();
  s.overlaps = sweep::split_modes("none,dp,tp,all", "overlaps", models::parse_overlap_variant);
  check_pruning(sweep::expand(s), "prune-pipelines", 10);
}
