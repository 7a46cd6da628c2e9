// evaluate::critical_path against a brute-force longest path: the happens-before graph of docs/ir.md's execution
// semantics (the edges evaluate/critical_path.hpp lists) built explicitly here, every event relaxed until nothing
// changes, on hand-built schedules (streams that cross between two ranks, host ops, host syncs, deps, one hardware
// queue) and lowered ones (TP, PP, interleaving, DP and the TP userbuffer ring, MoE with host syncs).
#include "evaluate/critical_path.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <variant>
#include <vector>

#include "models/lower.hpp"
#include "models/model_spec.hpp"
#include "models/recipe.hpp"
#include "schedule/builder.hpp"
#include "schedule/matching.hpp"
#include "schedule/op_kind.hpp"
#include "schedule/validate.hpp"
#include "tests/catch.hpp"
#include "tests/support/run_configs.hpp"
#include "topologies/cluster.hpp"

using namespace twinstep;
using schedule::kNoOp;
using schedule::OpId;
using schedule::OpKind;

namespace {

constexpr Nanos kNone = std::numeric_limits<Nanos>::min() / 4;

Nanos floor_ns(double seconds) { return std::max<Nanos>(0, static_cast<Nanos>(std::floor(seconds * 1e9 - 1e-3))); }

/// Which walks take an edge: every one, the global graph only (into and out of a coupled group), or a rank's own
/// path only (a coupled op's end at its own duration after its own start, not waiting for the other members).
enum class Scope : std::uint8_t { kBoth, kGlobal, kOwn };

struct Edge {
  std::uint32_t from, to;
  Nanos w;
  Scope scope;
};

/// The explicit graph: per op issue 3 o, start 3 o + 1, end 3 o + 2; per coupled group one node after those.
struct Graph {
  std::uint32_t nodes = 0;
  std::vector<Edge> edges;
  std::vector<Nanos> duration, launch;  ///< By op (a host op's duration is its launch).
  std::vector<Nanos> tail;              ///< By op: host time after its launch (a grouped GEMM's other groups).
};

bool on_host(OpKind k) { return k == OpKind::kHost || k == OpKind::kHostSync; }

/// Durations as critical_path.hpp states them: solo times floored to whole ns 1e-3 ns below, communication only with
/// `comm` (all-to-all 0; a coupled recv its send's); launches from the cost model.
void durations(const schedule::Schedule& s, const schedule::Matching& m, const sim::CostModel& costs, bool comm,
               Graph& g) {
  const auto n = s.ops.size();
  g.duration.assign(n, 0);
  g.launch.assign(n, 0);
  g.tail.assign(n, 0);
  for (OpId o = 0; o < n; ++o) {
    const schedule::Op& op = s.ops[o];
    if (const auto* h = std::get_if<schedule::Host>(&op.body)) {
      g.launch[o] = h->duration_ns;
      continue;
    }
    g.launch[o] = costs.launch_ns(op);
    g.tail[o] = costs.host_tail_ns(op);
    if (const auto* c = std::get_if<schedule::Compute>(&op.body)) {
      g.duration[o] = floor_ns(costs.kernel_cost(*c).solo_time_s());
    } else if (const auto* k = std::get_if<schedule::Collective>(&op.body);
               k != nullptr && comm && k->kind != schedule::CollectiveKind::kAllToAll) {
      g.duration[o] = floor_ns(
          costs.collective_cost(k->kind, static_cast<double>(k->bytes), costs.span(s.communicators[k->comm])).time_s());
    } else if (const auto* snd = std::get_if<schedule::Send>(&op.body); snd != nullptr && comm) {
      const auto bytes = static_cast<double>(snd->bytes);
      g.duration[o] = floor_ns(snd->transport == schedule::Transport::kCopyEngine
                                   ? costs.copy_engine_cost(bytes, op.rank, snd->peer).time_s()
                                   : costs.p2p_cost(bytes, op.rank, snd->peer).time_s());
    }
  }
  for (OpId o = 0; o < n; ++o) {
    const OpId r = m.partner.empty() ? kNoOp : m.partner[o];
    if (std::holds_alternative<schedule::Send>(s.ops[o].body) && r != kNoOp && s.ops[r].rank != s.ops[o].rank) {
      g.duration[r] = g.duration[o];
    }
  }
}

Graph graph_of(const schedule::Schedule& s, const sim::CostModel& costs, bool comm) {
  const auto n = static_cast<std::uint32_t>(s.ops.size());
  const schedule::Matching m = schedule::match(s);
  Graph g;
  g.nodes = 3 * n;
  durations(s, m, costs, comm, g);
  std::vector<bool> coupled(n, false);
  auto couple = [&](const std::vector<OpId>& members) {
    const std::uint32_t node = g.nodes++;
    for (const OpId p : members) {
      coupled[p] = true;
      g.edges.push_back({3 * p + 1, node, 0, Scope::kGlobal});
      g.edges.push_back({node, 3 * p + 2, g.duration[p], Scope::kGlobal});
    }
  };
  for (const auto& inst : m.collectives) {
    std::vector<OpId> present;
    for (const OpId p : inst.ops) {
      if (p != kNoOp) present.push_back(p);
    }
    if (present.size() > 1) couple(present);
  }
  for (OpId o = 0; o < n; ++o) {
    const OpId r = m.partner.empty() ? kNoOp : m.partner[o];
    if (std::holds_alternative<schedule::Send>(s.ops[o].body) && r != kNoOp && s.ops[r].rank != s.ops[o].rank) {
      couple({o, r});
    }
  }
  std::vector<OpId> prev(s.world_size, kNoOp), queue(s.world_size, kNoOp);
  std::vector<std::vector<OpId>> on_stream(s.world_size, std::vector<OpId>(s.streams.size(), kNoOp));
  const bool one_queue = schedule::hardware_queues(s) == 1u;
  for (OpId o = 0; o < n; ++o) {
    const schedule::Op& op = s.ops[o];
    auto add = [&](std::uint32_t from, std::uint32_t to, Nanos w) { g.edges.push_back({from, to, w, Scope::kBoth}); };
    if (const OpId p = prev[op.rank]; p != kNoOp) {  // the host thread
      const bool host = on_host(schedule::kind_of(s.ops[p].body));
      add(host ? 3 * p + 2 : 3 * p, 3 * o, host ? 0 : g.launch[p] + g.tail[p]);
    }
    prev[op.rank] = o;
    if (on_host(schedule::kind_of(op.body))) {
      add(3 * o, 3 * o + 1, 0);
      add(3 * o + 1, 3 * o + 2, g.launch[o]);
      if (const auto* hs = std::get_if<schedule::HostSync>(&op.body)) add(3 * hs->target + 2, 3 * o + 2, g.launch[o]);
      continue;
    }
    add(3 * o, 3 * o + 1, g.launch[o]);
    if (on_stream[op.rank][op.stream] != kNoOp) add(3 * on_stream[op.rank][op.stream] + 2, 3 * o + 1, 0);
    on_stream[op.rank][op.stream] = o;
    if (one_queue && queue[op.rank] != kNoOp) add(3 * queue[op.rank] + 1, 3 * o + 1, 0);
    queue[op.rank] = o;
    for (const OpId d : op.deps) add(3 * d + 2, 3 * o + 1, 0);
    g.edges.push_back({3 * o + 1, 3 * o + 2, g.duration[o], coupled[o] ? Scope::kOwn : Scope::kBoth});
  }
  return g;
}

/// Longest paths from `source` (at 0; from every node where kNoSource) by relaxing every edge until nothing changes;
/// `forward` off: along the reversed edges. `global`: the graph's edges, else a rank's own (Scope).
constexpr std::uint32_t kNoSource = UINT32_MAX;
std::vector<Nanos> relax(const Graph& g, std::uint32_t source, bool forward, bool global) {
  std::vector<Nanos> t(g.nodes, source == kNoSource ? 0 : kNone);
  if (source != kNoSource) t[source] = 0;
  for (bool changed = true; changed;) {
    changed = false;
    for (std::size_t i = 0; i < g.edges.size(); ++i) {
      const Edge& e = g.edges[forward ? i : g.edges.size() - 1 - i];  // mostly in the direction of the walk
      if (e.scope == (global ? Scope::kOwn : Scope::kGlobal)) continue;
      const std::uint32_t a = forward ? e.from : e.to, b = forward ? e.to : e.from;
      if (t[a] != kNone && t[a] + e.w > t[b]) {
        t[b] = t[a] + e.w;
        changed = true;
      }
    }
  }
  return t;
}

/// Checks critical_path(s) against the brute force: the step, and per (rank, stream) and host thread its head, own
/// path, tail, sum and least micro-batch's sum.
void check_against_brute_force(const schedule::Schedule& s, const sim::CostModel& costs, bool comm) {
  const evaluate::CriticalPath cp = evaluate::critical_path(s, costs, comm);
  const Graph g = graph_of(s, costs, comm);
  const std::vector<Nanos> t = relax(g, kNoSource, true, true);
  const std::vector<Nanos> q = relax(g, kNoSource, false, true);
  CHECK(cp.step_ns == *std::max_element(t.begin(), t.end()));
  std::size_t paths = 0;
  for (const schedule::RankId r : s.ranks) {
    std::vector<OpId> ops;
    for (const auto& op : s.ops) {
      if (op.rank == r) ops.push_back(op.id);
    }
    if (ops.empty()) continue;
    std::vector<schedule::StreamId> streams;
    for (std::size_t st = 0; st < s.streams.size(); ++st) streams.push_back(static_cast<schedule::StreamId>(st));
    streams.push_back(evaluate::kHostThreadStream);
    for (const schedule::StreamId st : streams) {
      const bool host = st == evaluate::kHostThreadStream;
      std::vector<OpId> on;
      for (const OpId o : ops) {
        if (host || (!on_host(schedule::kind_of(s.ops[o].body)) && s.ops[o].stream == st)) on.push_back(o);
      }
      if (on.empty()) continue;
      INFO("rank " << r << " stream " << st);
      const auto it = std::find_if(cp.streams.begin(), cp.streams.end(),
                                   [&](const evaluate::StreamPath& p) { return p.rank == r && p.stream == st; });
      REQUIRE(it != cp.streams.end());
      ++paths;
      const std::uint32_t source = host ? 3 * on.front() : 3 * on.front() + 1;
      CHECK(it->head_ns == t[source]);
      CHECK(it->tail_ns == q[3 * on.back() + 2]);
      CHECK(it->local_ns == std::max<Nanos>(0, relax(g, source, true, false)[3 * on.back() + 2]));
      Nanos sum = 0;
      for (const OpId o : on) sum += host ? g.launch[o] + g.tail[o] : g.duration[o];
      CHECK(it->sum_ns == sum);
      // The least over the micro-batches 0 .. the schedule's largest tag of the stream's ops tagged with it.
      std::int32_t n_mb = 0;
      for (const auto& op : s.ops) n_mb = std::max(n_mb, op.tags.microbatch + 1);
      Nanos least = n_mb == 0 ? 0 : std::numeric_limits<Nanos>::max();
      for (std::int32_t mb = 0; mb < n_mb; ++mb) {
        Nanos of_mb = 0;
        for (const OpId o : on) {
          if (s.ops[o].tags.microbatch == mb) of_mb += host ? g.launch[o] + g.tail[o] : g.duration[o];
        }
        least = std::min(least, of_mb);
      }
      CHECK(it->microbatch_min_ns == least);
    }
  }
  CHECK(paths == cp.streams.size());
}

/// A 4-layer model's schedule at `layout` on H100s, every rank (or one per stage), at `overlap`.
schedule::Schedule lowered(const char* model_name, testing::Parallel layout, const char* overlap,
                           bool one_rank_per_stage) {
  models::ModelSpec m = models::load_model(model_name);
  m.num_layers = 4;
  models::RunConfig c = testing::run_config(layout);
  c.gpu_memory_bytes = 80.0 * (1ULL << 30);
  (void)models::apply_recipe_defaults(c, {"global_batch_size"});
  c = testing::with_overlap(c, overlap);
  models::LowerOptions o;
  o.one_rank_per_stage = one_rank_per_stage;
  return models::lower(m, c, o).schedule;
}

}  // namespace

TEST_CASE("evaluate::critical_path: equals the brute-force longest path on hand-built schedules", "[evaluate]") {
  const auto cluster = topologies::load_cluster("dgx-h100", {0, 2});
  const sim::CostModel costs(cluster, sim::Profile::datasheet_defaults());
  // Two ranks exchanging on two streams, with host ops, a host sync, deps and an all-reduce. `crossing`: rank 1
  // issues its send after its receive, which waits for rank 0's send, which rank 0 issues after a kernel that waits
  // for rank 0's receive: in program order neither send comes before its rank's receive ends, and the walk must go
  // on along the other stream (a deadlock with one hardware queue, so not tried there).
  auto build = [](bool crossing) {
    schedule::ScheduleBuilder b(2, {{"compute", 0}, {"a", 0}, {"b", 0}});
    const auto pp = b.comm("pp", "pp", {0, 1});
    const auto world = b.comm("world", "world", {0, 1});
    b.host(0, "r0.host", 3000);
    const OpId r0_recv = b.recv(0, "r0.recv", 1, pp, 1, 1 << 20, 0);
    const OpId r0_k = b.gemm(0, "r0.k", 1, 2048, 2048, 2048);
    b.send(0, "r0.send", 2, pp, 1, 1 << 22, 1);
    b.add(0, "r0.sync", 0, schedule::HostSync{r0_k});
    const OpId r0_g = b.gemm(0, "r0.g", 0, 4096, 4096, 1024, {r0_recv});
    b.all_reduce(0, "r0.ar", 2, world, 1 << 24, {r0_g});
    if (!crossing) b.send(1, "r1.send", 1, pp, 0, 1 << 20, 0);
    const OpId r1_recv = b.recv(1, "r1.recv", 2, pp, 0, 1 << 22, 1);
    b.gemm(1, "r1.k", 2, 1024, 1024, 1024);
    if (crossing) b.send(1, "r1.send", 1, pp, 0, 1 << 20, 0);
    b.host(1, "r1.host", 50000);
    b.gemm(1, "r1.g", 0, 1024, 8192, 1024, {r1_recv});
    b.all_reduce(1, "r1.ar", 2, world, 1 << 24);
    return b.take();
  };
  for (const bool crossing : {true, false}) {
    for (const char* queues : {"8", "1"}) {
      if (crossing && std::string(queues) == "1") continue;
      schedule::Schedule s = build(crossing);
      s.meta[schedule::kHardwareQueuesKey] = queues;
      // Micro-batch tags -1, 0, 1 in turn: unequal micro-batches on every stream (StreamPath::microbatch_min_ns).
      for (auto& op : s.ops) op.tags.microbatch = static_cast<std::int32_t>(op.id % 3) - 1;
      REQUIRE(schedule::validate(s).empty());
      for (const bool comm : {true, false}) {
        INFO((crossing ? "crossing" : "in order")
             << ", cuda_device_max_connections " << queues << ", communication " << (comm ? "counted" : "at 0"));
        check_against_brute_force(s, costs, comm);
      }
    }
  }
}

TEST_CASE("evaluate::critical_path: equals the brute-force longest path on lowered schedules", "[evaluate]") {
  struct Case {
    const char* model;
    testing::Parallel layout;
    const char* overlap;
    bool one_rank_per_stage;
    OpKind has;  ///< An op kind the case is there for.
  };
  const Case cases[] = {
      {"llama3-8b", {8, 2, 2, 1, 1, 1, 1, 16, 1024}, "all", false, OpKind::kSend},  // TP ring, DP, PP, one queue
      {"llama3-8b", {4, 1, 2, 2, 1, 1, 1, 8, 1024}, "pp", false, OpKind::kRecv},    // interleaved, P2P overlap, DP 2
      {"llama3-8b", {8, 2, 2, 1, 2, 1, 1, 8, 1024}, "cp", true, OpKind::kSend},     // one rank per stage: peers absent
      {"qwen3-30b-a3b", {4, 1, 2, 1, 1, 2, 1, 8, 1024}, "dp", false, OpKind::kHostSync},    // MoE, EP all-to-all
      {"qwen3-30b-a3b", {4, 1, 1, 1, 1, 4, 1, 8, 1024}, "ep+dp", false, OpKind::kHostSync}  // EP-overlap schedule
  };
  for (const Case& c : cases) {
    const schedule::Schedule s = lowered(c.model, c.layout, c.overlap, c.one_rank_per_stage);
    const auto cluster = topologies::load_cluster("dgx-h100", {0, c.layout.gpus});
    const sim::CostModel costs(cluster, sim::Profile::datasheet_defaults());
    CHECK(std::any_of(s.ops.begin(), s.ops.end(),
                      [&](const schedule::Op& op) { return schedule::kind_of(op.body) == c.has; }));
    if (c.layout.tp > 1) CHECK(schedule::hardware_queues(s) == 1u);  // one hardware queue
    for (const bool comm : {true, false}) {
      INFO(c.model << " tp" << c.layout.tp << " pp" << c.layout.pp << " overlap " << c.overlap << " (" << s.ops.size()
                   << " ops), communication " << (comm ? "counted" : "at 0"));
      check_against_brute_force(s, costs, comm);
    }
  }
}
