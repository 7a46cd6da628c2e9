// The default suite's grouped-GEMM microbenchmarks (MoE experts): the zoo's expert shapes of qwen3-30b-a3b at a
// sweep of tokens per expert with the 64 local experts of EP2, each probe sized by kernel_math's FLOPs; on eight GPUs,
// collectives over spans 2, 4 and 8 and co-runs at span 8, fitted to one set of collective lines per span.
#include "calibration/suite.hpp"

#include <algorithm>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <tuple>

#include "calibration/fit.hpp"
#include "calibration/raw_file.hpp"
#include "common/error.hpp"
#include "common/hash.hpp"
#include "schedule/json.hpp"
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

TEST_CASE("calibration::make_suite: eight GPUs measure collectives over spans 2, 4 and 8 and co-runs at span 8",
          "[calibration]") {
  const auto suite = make_suite("default", 8);
  std::set<std::string> names;
  for (const auto& g : suite) names.insert(g.name);
  for (const char* kind :
       {"all_reduce", "all_gather", "reduce_scatter", "broadcast", "all_to_all", "all_to_all_uneven"}) {
    for (std::uint32_t span : {2u, 4u, 8u}) {
      const std::string name = std::string("coll.") + kind + ".span" + std::to_string(span);
      INFO(name);
      const auto it = std::find_if(suite.begin(), suite.end(), [&](const auto& g) { return g.name == name; });
      REQUIRE(it != suite.end());
      CHECK(twinstep::schedule::validate(it->schedule).empty());
      // Every rank takes part, in a group of `span` consecutive ranks; the probe carries the span. (Each rank's
      // sweep opens with a GEMM gate, the one compute op.)
      std::set<sch::RankId> ranks;
      for (const auto& op : it->schedule.ops) {
        if (std::holds_alternative<sch::Compute>(op.body)) continue;
        const auto& c = std::get<sch::Collective>(op.body);
        const auto& members = it->schedule.communicators[c.comm].members;
        REQUIRE(members.size() == span);
        CHECK(members.front() == op.rank / span * span);
        ranks.insert(op.rank);
      }
      CHECK(ranks.size() == 8);
      for (const auto& p : it->probes) CHECK(p.params.at("span") == static_cast<double>(span));
    }
    CHECK(names.count(std::string("coll.") + kind + ".span16") == 0);
  }
  // Co-runs: each collective spans the whole node (the world communicator, 8 members) beside a GEMM on every rank.
  std::size_t coruns = 0;
  for (const auto& g : suite) {
    if (g.name.rfind("corun.", 0) != 0 || g.name == twinstep::calibration::kRecvWaitGroup ||
        g.name == twinstep::calibration::kRecvWait4Group) {
      continue;
    }
    ++coruns;
    for (const auto& op : g.schedule.ops) {
      if (const auto* c = std::get_if<sch::Collective>(&op.body)) {
        CHECK(g.schedule.communicators[c->comm].members.size() == 8);
      }
    }
  }
  CHECK(coruns == 4);
}

TEST_CASE("calibration::fit: an eight-GPU suite fits collective lines per span, read back by the simulator",
          "[calibration]") {
  namespace cal = twinstep::calibration;
  // The "hardware": all_reduce over 2 ranks at half the bus bandwidth of the larger groups.
  auto truth = twinstep::sim::Profile::datasheet_defaults();
  truth.nccl.algorithms = {twinstep::sim::NcclAlgo::kRing};
  truth.nccl.protocols = {twinstep::sim::NcclProto::kLL, twinstep::sim::NcclProto::kSimple};
  twinstep::sim::CollectiveParams wide;
  wide.kind = twinstep::sim::CollectiveParamsKind::kAllReduce;
  wide.base_latency_s = 12e-6;
  wide.bus_bytes_per_s = 300e9;
  twinstep::sim::CollectiveParams pair = wide;
  pair.ranks = 2;
  pair.base_latency_s = 6e-6;
  pair.bus_bytes_per_s = 150e9;
  // all_to_all whose bandwidth grows with the bytes each member exchanges (so a table read at the wrong key misses).
  twinstep::sim::CollectiveParams a2a;
  a2a.kind = twinstep::sim::CollectiveParamsKind::kAllToAll;
  a2a.base_latency_s = 10e-6;
  a2a.bus_bytes_per_s = 300e9;
  a2a.bus_efficiency.points = {{1e3, 0.05}, {1e6, 0.4}, {1e9, 1.0}};
  truth.collectives = {wide, pair, a2a};
  const auto cluster = twinstep::topologies::load_cluster("hgx-h200", twinstep::topologies::ClusterSize{0, 8});
  const twinstep::sim::CostModel costs(cluster, truth);
  const std::string path = (std::filesystem::temp_directory_path() / "twinstep_suite_test_span8.jsonl").string();
  cal::RunOptions o;
  o.raw_path = path;
  cal::run_suite(
      "quick", make_suite("quick", 8),
      [&](const sch::Schedule& s) { return twinstep::sim::simulate(s, cluster, costs); }, o);
  const auto raw = cal::read_raw(path);
  std::filesystem::remove(path);
  REQUIRE(raw.world_size == 8);
  const auto r = cal::fit_profile(raw, cluster, "span test", "", cal::FrameworkInput{});
  // The written profile keys the smaller spans' lines by "ranks"; the largest span's lines hold for any size.
  const auto j = nlohmann::json::parse(r.json);
  std::set<std::pair<std::string, std::uint32_t>> keys;
  for (const auto& e : j.at("collectives")) {
    if (e.at("protocol") != "simple") continue;
    keys.insert({e.at("kind").get<std::string>(), e.contains("ranks") ? e.at("ranks").get<std::uint32_t>() : 0u});
  }
  for (const char* kind : {"all_reduce", "all_gather", "reduce_scatter", "broadcast", "all_to_all"}) {
    for (std::uint32_t ranks : {0u, 2u, 4u}) {
      INFO(kind << " ranks " << ranks);
      CHECK(keys.count({kind, ranks}) == 1);
    }
    CHECK(keys.count({kind, 8u}) == 0);
  }
  // Read back through the simulator's reader: the same entries, and the fitted bandwidths are the truth's per span.
  const auto& back = r.profile;
  REQUIRE(back.collectives.size() == j.at("collectives").size());
  auto bus = [&](std::uint32_t ranks) {
    for (const auto& c : back.collectives) {
      if (c.kind == twinstep::sim::CollectiveParamsKind::kAllReduce && c.proto == twinstep::sim::NcclProto::kSimple &&
          c.ranks == ranks) {
        return c.bus_bytes_per_s;
      }
    }
    return -1.0;
  };
  CHECK(bus(2) == Approx(150e9).epsilon(0.05));
  CHECK(bus(4) == Approx(300e9).epsilon(0.05));
  CHECK(bus(0) == Approx(300e9).epsilon(0.05));
  // all_to_all is reproduced in-sample at every span (its bus_efficiency table passes through its points): the table
  // is keyed by the bytes a member exchanges with the peers of its own group, and a probe of span < 8 holds the ops
  // of several groups, each with its own communicator.
  std::size_t a2a_fits = 0;
  for (const auto& f : back.fits) {
    if (f.name.rfind("coll.all_to_all", 0) != 0) continue;
    INFO(f.name);
    ++a2a_fits;
    CHECK(f.max_abs_rel_error < 0.01);
  }
  CHECK(a2a_fits == 6);
  // A group size below 2 is refused with the field named.
  auto bad = j;
  bad["collectives"][0]["ranks"] = 1;
  try {
    (void)twinstep::sim::profile_from_json(bad.dump(), "bad.json");
    FAIL("ranks 1 accepted");
  } catch (const twinstep::Error& e) {
    CHECK(std::string(e.what()).find("/collectives/0/ranks") != std::string::npos);
  }
}

TEST_CASE(
    "calibration::make_suite: every collective and p2p sweep opens with a GEMM gate and an unprobed warm-up of "
    "its first size",
    "[calibration]") {
  namespace cal = twinstep::calibration;
  const auto cluster = twinstep::topologies::load_cluster("h200x2-nvlink", twinstep::topologies::ClusterSize{0, 2});
  const twinstep::sim::CostModel costs(cluster, twinstep::sim::Profile::datasheet_defaults());
  std::size_t groups = 0;
  for (const auto& g : make_suite("default", 2)) {
    if (g.name.rfind("coll.", 0) != 0 && g.name.rfind("p2p.", 0) != 0) continue;
    // The copy-engine group is not executed: calibrate times bare peer copies with their own warm-up copies.
    if (g.name == cal::kCopyEngineGroup) continue;
    INFO(g.name);
    ++groups;
    std::set<sch::OpId> probed;
    for (const auto& p : g.probes) probed.insert(p.ops.begin(), p.ops.end());
    // Each rank's first op: the gate (an unprobed GEMM on the sweep's stream, so that the host issues the sweep while
    // it runs); its second: the warm-up, unprobed, of the same body type and bytes as its first probed op.
    std::map<sch::RankId, sch::OpId> gate, first;
    for (const auto& op : g.schedule.ops) {
      if (gate.emplace(op.rank, op.id).second) continue;
      first.emplace(op.rank, op.id);
    }
    REQUIRE(first.size() == 2);
    for (const auto& [rank, id] : gate) {
      const auto& op = g.schedule.ops[id];
      CHECK(probed.count(id) == 0);
      CHECK(op.stream == g.schedule.ops[first.at(rank)].stream);
      const auto* c = std::get_if<sch::Compute>(&op.body);
      REQUIRE(c != nullptr);
      CHECK(std::holds_alternative<sch::Gemm>(c->kernel));
    }
    auto bytes = [](const sch::Op& op) -> std::uint64_t {
      if (const auto* c = std::get_if<sch::Collective>(&op.body)) return c->bytes;
      if (const auto* s = std::get_if<sch::Send>(&op.body)) return s->bytes;
      return std::get<sch::Recv>(op.body).bytes;
    };
    for (const auto& [rank, id] : first) {
      const auto& warm = g.schedule.ops[id];
      CHECK(probed.count(id) == 0);
      CHECK(warm.name.size() > 7);
      CHECK(warm.name.substr(warm.name.size() - 7) == ".warmup");
      const auto it = std::find_if(g.probes.front().ops.begin(), g.probes.front().ops.end(),
                                   [&, r = rank](sch::OpId o) { return g.schedule.ops[o].rank == r; });
      REQUIRE(it != g.probes.front().ops.end());
      const auto& measured = g.schedule.ops[*it];
      CHECK(warm.body.index() == measured.body.index());
      CHECK(warm.stream == measured.stream);
      CHECK(bytes(warm) == bytes(measured));
    }
    // The backend's first comm op of a step on an idle stream also pays the host's first NCCL enqueue and the ranks'
    // exit skew from the step barrier (measured +13 us at 1 KiB): charged to that op, it leaves every probe unchanged.
    const auto trace = twinstep::sim::simulate(g.schedule, cluster, costs);
    auto charged = trace;
    for (const auto& [rank, id] : first) charged.records[id].start_ns -= 13'000;
    const auto clean = cal::extract(g, trace), skewed = cal::extract(g, charged);
    REQUIRE(clean.size() == skewed.size());
    for (std::size_t i = 0; i < clean.size(); ++i) CHECK(skewed[i].value_s == clean[i].value_s);
  }
  CHECK(groups == 7);
}

namespace {

/// A digest of every group of `suite` on `world` GPUs: group name, the schedule's JSON (every rank, stream,
/// communicator, op, dep and tag) and each probe's fields, in suite order.
std::uint64_t suite_digest(const std::string& suite, std::uint32_t world) {
  twinstep::Fnv1a h;
  for (const auto& g : make_suite(suite, world)) {
    h.text(g.name);
    h.text(sch::schedule_to_json(g.schedule));
    for (const auto& p : g.probes) {
      const nlohmann::json j = {{"name", p.name},    {"family", p.family}, {"metric", static_cast<int>(p.metric)},
                                {"ops", p.ops},      {"ref", p.ref},       {"size", p.size},
                                {"params", p.params}};
      h.text(j.dump());
    }
  }
  return h.digest();
}

}  // namespace

TEST_CASE("calibration::make_suite: the groups' schedules and probes are the committed ones", "[calibration]") {
  // The suite is what calibrate measures and what the committed raw files were measured with: a change to a group's
  // schedule (op order, names, streams, communicators, shapes) or probes must be on purpose. If it is, put the new
  // digests here and say in the commit why the suite changed. The GEMM, grouped-GEMM and attention groups take shapes
  // from lowering zoo models (zoo_shapes, expert_sweep): a lowering or zoo change that moves those shapes moves these
  // digests too (and the golden lowerings with them).
  const std::pair<std::pair<const char*, std::uint32_t>, std::uint64_t> expected[] = {
      {{"quick", 1}, 0x21adfa3d1e9ed826ull},   {{"quick", 2}, 0xfd63dd7eb00fc9bfull},
      {{"quick", 8}, 0xf2129d91f5f43e94ull},   {{"default", 1}, 0x638c358ef52055a8ull},
      {{"default", 2}, 0x35f71cfc3de44a4bull}, {{"default", 8}, 0xdb29dcc8e26e3c04ull},
  };
  for (const auto& [what, digest] : expected) {
    INFO(what.first << " suite on " << what.second << " GPUs");
    CHECK(suite_digest(what.first, what.second) == digest);
  }
}
