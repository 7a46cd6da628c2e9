// The microbenchmark suites, built as schedules, and how a probe's figure is read from a group's trace. Shapes: regular
// sweeps plus those the zoo's lowering emits. Running a suite into its raw JSON-lines file is raw_file.cpp's.
#include "calibration/suite.hpp"

#include <algorithm>
#include <cmath>
#include <set>
#include <sstream>
#include <tuple>

#include "common/assert.hpp"
#include "common/error.hpp"
#include "common/units.hpp"
#include "models/lower.hpp"
#include "models/model_spec.hpp"
#include "models/run_config.hpp"
#include "schedule/builder.hpp"
#include "schedule/json.hpp"
#include "schedule/kernel_math.hpp"

namespace twinstep::calibration {
namespace {

using schedule::OpId;
using schedule::RankId;

/// Builds one group: its schedule on the shared builder (streams "compute" and "comm", both priority 0, a "world"
/// communicator, span communicators) and its probes.
class GroupBuilder : public schedule::ScheduleBuilder {
 public:
  GroupBuilder(std::string name, std::uint32_t world)
      : ScheduleBuilder(world, {{"compute", 0}, {"comm", 0}}, "calibration." + name), name_(std::move(name)) {
    ScheduleBuilder::world();
    schedule().meta["generator"] = "twinstep calibrate (calibration/suite.cpp)";
  }

  /// Communicators of `span` consecutive ranks covering the world ("span<N>.<i>"); returns their ids.
  std::vector<schedule::CommId> span_comms(std::uint32_t span) {
    std::vector<schedule::CommId> ids;
    for (std::uint32_t g = 0; g < schedule().world_size / span; ++g) {
      std::vector<RankId> members;
      for (std::uint32_t i = 0; i < span; ++i) members.push_back(g * span + i);
      ids.push_back(comm("span" + std::to_string(span) + "." + std::to_string(g), "span", std::move(members)));
    }
    return ids;
  }

  void probe(Probe p) { probes_.push_back(std::move(p)); }
  BenchGroup take_group() { return BenchGroup{std::move(name_), take(), std::move(probes_)}; }

 private:
  std::string name_;
  std::vector<Probe> probes_;
};

schedule::Body compute(schedule::Kernel k) { return schedule::Compute{std::move(k), 0}; }

std::vector<std::uint64_t> geometric(std::uint64_t lo, std::uint64_t hi, std::uint64_t factor) {
  std::vector<std::uint64_t> v;
  for (std::uint64_t x = lo; x <= hi; x *= factor) v.push_back(x);
  if (v.back() != hi) v.push_back(hi);
  return v;
}

std::string shape_name(const schedule::Gemm& g) {
  return "m" + std::to_string(g.m) + ".n" + std::to_string(g.n) + ".k" + std::to_string(g.k) +
         (g.batch > 1 ? ".b" + std::to_string(g.batch) : "");
}

std::string shape_name(const schedule::Attention& a) {
  return "b" + std::to_string(a.batch) + ".hq" + std::to_string(a.heads_q) + ".hkv" + std::to_string(a.heads_kv) +
         ".s" + std::to_string(a.seq_q) + "x" + std::to_string(a.seq_kv) + ".d" + std::to_string(a.head_dim) +
         (a.causal ? ".causal" : "");
}

/// GEMM, grouped-GEMM and attention shapes of a few zoo configurations (TP-sharded, expert and CP shapes).
struct ZooShapes {
  std::vector<schedule::Gemm> gemms;
  std::vector<schedule::GroupedGemm> grouped;
  std::vector<schedule::Attention> attention;
};

ZooShapes zoo_shapes(bool quick) {
  struct Cfg {
    const char* model;
    std::uint32_t world, tp, cp, ep, seq;
  };
  std::vector<Cfg> cfgs = {
      {"llama3-8b", 1, 1, 1, 1, 4096}, {"llama3-8b", 2, 2, 1, 1, 4096}, {"llama3-8b", 2, 1, 2, 1, 4096}};
  if (!quick) {
    cfgs.push_back({"llama3-70b", 8, 8, 1, 1, 4096});
    cfgs.push_back({"mixtral-8x7b", 2, 1, 1, 2, 4096});
    cfgs.push_back({"qwen3-30b-a3b", 2, 1, 1, 2, 4096});
  }
  std::set<std::tuple<std::uint64_t, std::uint64_t, std::uint64_t, std::uint64_t>> seen_g;
  std::set<std::string> seen_a, seen_gg;
  ZooShapes out;
  for (const auto& c : cfgs) {
    try {
      auto model = models::load_model(c.model);
      model.num_layers = std::min<std::uint32_t>(model.num_layers, 2);
      models::RunConfig rc;
      rc.world_size = c.world;
      rc.tensor_model_parallel_size = c.tp;
      rc.context_parallel_size = c.cp;
      rc.expert_model_parallel_size = c.ep;
      rc.sequence_parallel = c.tp > 1;
      rc.seq_length = c.seq;
      rc.micro_batch_size = 1;
      rc.global_batch_size = c.world / (c.tp * c.cp);
      const auto lowered = models::lower(model, rc);
      for (const auto& op : lowered.schedule.ops) {
        if (op.rank != 0) continue;
        const auto* cmp = std::get_if<schedule::Compute>(&op.body);
        if (cmp == nullptr) continue;
        if (const auto* g = std::get_if<schedule::Gemm>(&cmp->kernel)) {
          if (seen_g.insert({g->m, g->n, g->k, g->batch}).second) out.gemms.push_back(*g);
        } else if (const auto* gg = std::get_if<schedule::GroupedGemm>(&cmp->kernel)) {
          std::ostringstream key;
          for (auto m : gg->m) key << m << ",";
          key << gg->n << "," << gg->k;
          if (seen_gg.insert(key.str()).second) out.grouped.push_back(*gg);
        } else if (const auto* a = std::get_if<schedule::Attention>(&cmp->kernel)) {
          if (seen_a.insert(shape_name(*a) + (a->backward ? "bwd" : "fwd")).second) out.attention.push_back(*a);
        }
      }
    } catch (const Error&) {
      // A zoo configuration this checkout cannot lower yet (e.g. MoE before its lowering lands): skip it.
    }
  }
  return out;
}

/// Grouped GEMMs of MoE experts at a sweep of tokens per expert (the token count an EP rank receives varies with
/// micro-batch, sequence and routing): the expert shapes of qwen3-30b-a3b (the EP2 validation case: 128 experts,
/// hidden 2048, expert ffn 768) with the 64 local experts of EP2, as lowering emits them: fc1 [h -> 2f] and fc2
/// [f -> h] forward (and as weight gradients), their data gradients [2f -> h] and [h -> f]. Balanced rows.
/// One group count: the backend's grouped GEMM (one cuBLAS call per group) costs 5-12 us of host issue per group, so
/// at equal FLOPs 128 groups measured 3x slower than 64 (single-H200 run at 83e495f,
/// calibration/profiles/h200x1.raw.jsonl). The fit keys the grouped_gemm table by FLOPs per group
/// (sim::Profile::grouped_gemm_per_group), so other group counts read it at their own group's shape.
std::vector<schedule::GroupedGemm> expert_sweep() {
  std::vector<schedule::GroupedGemm> out;
  models::ModelSpec model;
  try {
    model = models::load_model("qwen3-30b-a3b");
  } catch (const Error&) {
    return out;  // a checkout without this zoo entry
  }
  const std::uint64_t h = model.hidden_size, f = model.moe_ffn_hidden_size;
  const std::uint64_t f1 = model.gated_linear_unit ? 2 * f : f;
  const std::uint64_t experts = model.num_moe_experts;
  if (experts < 2 || f == 0) return out;
  const std::uint64_t local = experts / 2;
  for (const std::uint64_t rows : {16, 32, 64, 128, 256, 512, 1024}) {
    const std::vector<std::uint64_t> m(local, rows);
    for (const auto& [n, k] : {std::pair{f1, h}, std::pair{h, f}, std::pair{h, f1}, std::pair{f, h}}) {
      out.push_back(schedule::GroupedGemm{m, n, k, schedule::DType::kBF16});
    }
  }
  return out;
}

void add_compute_group(std::vector<BenchGroup>& suite, const std::string& name, std::uint32_t world,
                       const std::vector<std::pair<std::string, schedule::Kernel>>& kernels) {
  GroupBuilder b(name, world);
  std::vector<OpId> rank0;
  for (RankId r = 0; r < world; ++r) {
    for (const auto& [label, k] : kernels) {
      const OpId id = b.add(r, label, 0, compute(k));
      if (r == 0) rank0.push_back(id);
    }
  }
  for (std::size_t i = 0; i < kernels.size(); ++i) {
    const auto& k = kernels[i].second;
    Probe p;
    p.name = kernels[i].first;
    p.family = schedule::kernel_class(k);
    if (const auto* g = std::get_if<schedule::Gemm>(&k); g != nullptr && (g->accumulate_fp32 || g->accumulate))
      p.family = g->accumulate_fp32 ? "gemm_accumulate" : "gemm_accumulate_bf16";
    if (const auto* a = std::get_if<schedule::Attention>(&k); a != nullptr && !a->causal)
      p.family = a->backward ? "attention_noncausal_bwd" : "attention_noncausal_fwd";
    p.ops = {rank0[i]};
    const bool memory_bound = std::holds_alternative<schedule::Elementwise>(k) ||
                              std::holds_alternative<schedule::Optimizer>(k) ||
                              std::holds_alternative<schedule::Memcpy>(k);
    p.size = memory_bound ? schedule::kernel_bytes(k) : schedule::kernel_flops(k);
    if (const auto* g = std::get_if<schedule::Gemm>(&k)) {
      p.params = {{"m", double(g->m)}, {"n", double(g->n)}, {"k", double(g->k)}, {"batch", double(g->batch)}};
    } else if (const auto* gg = std::get_if<schedule::GroupedGemm>(&k)) {
      double rows = 0;
      for (auto m : gg->m) rows += double(m);
      p.params = {{"groups", double(gg->m.size())}, {"rows", rows}, {"n", double(gg->n)}, {"k", double(gg->k)}};
    }
    b.probe(std::move(p));
  }
  suite.push_back(b.take_group());
}

/// all_to_all send sizes for member `pos` of `n`: even, or uneven (member pos sends (1 + (pos+j) mod n) units
/// to member j, so the busiest pair carries n x the smallest).
std::vector<std::uint64_t> a2a_split(std::uint64_t total, std::uint32_t n, std::uint32_t pos, bool uneven) {
  std::vector<std::uint64_t> v(n);
  std::uint64_t units = 0;
  for (std::uint32_t j = 0; j < n; ++j) units += uneven ? 1 + (pos + j) % n : 1;
  const std::uint64_t unit = std::max<std::uint64_t>(16, (total / units) / 16 * 16);
  for (std::uint32_t j = 0; j < n; ++j) v[j] = unit * (uneven ? 1 + (pos + j) % n : 1);
  return v;
}

schedule::Collective make_collective(schedule::CollectiveKind kind, schedule::CommId comm, std::uint64_t bytes,
                                     std::uint32_t n, std::uint32_t pos, bool uneven, RankId root) {
  schedule::Collective c;
  c.kind = kind;
  c.comm = comm;
  c.dtype = schedule::DType::kBF16;
  c.bytes = bytes;
  if (kind == schedule::CollectiveKind::kAllToAll) {
    c.send_bytes = a2a_split(bytes, n, pos, uneven);
    c.bytes = 0;
    for (auto x : c.send_bytes) c.bytes += x;
  }
  if (kind == schedule::CollectiveKind::kBroadcast) c.root = root;
  return c;
}

/// The unprobed GEMM that opens each collective and p2p sweep on the comm stream (about 0.8 ms on an H200): the host
/// issues the whole sweep (21 ops x ~8 us) while it runs, so every probed op starts behind its predecessor on the GPU
/// and its duration is GPU time only. Without it the small sizes (8-20 us each, as long as the host's issue of the
/// next op) carried host jitter: run-to-run spread up to 22 % at 1-64 KiB (calibration/measured/h200x2/coll_oos.md).
schedule::Body sweep_gate() { return compute(schedule::Gemm{8192, 8192, 4096, 1, schedule::DType::kBF16}); }

void add_collective_groups(std::vector<BenchGroup>& suite, std::uint32_t world, bool quick) {
  const auto sizes = quick ? geometric(kKiB, kGiB, 8) : geometric(kKiB, kGiB, 2);
  std::vector<std::uint32_t> spans;
  for (std::uint32_t s = 2; s <= world; s *= 2) spans.push_back(s);
  const std::pair<schedule::CollectiveKind, bool> kinds[] = {
      {schedule::CollectiveKind::kAllReduce, false},     {schedule::CollectiveKind::kAllGather, false},
      {schedule::CollectiveKind::kReduceScatter, false}, {schedule::CollectiveKind::kBroadcast, false},
      {schedule::CollectiveKind::kAllToAll, false},      {schedule::CollectiveKind::kAllToAll, true}};
  for (auto span : spans) {
    for (const auto& [kind, uneven] : kinds) {
      const std::string word = std::string(schedule::collective_name(kind)) + (uneven ? "_uneven" : "");
      GroupBuilder b("coll." + word + ".span" + std::to_string(span), world);
      const auto comms = b.span_comms(span);
      std::vector<std::vector<OpId>> ids(sizes.size());
      for (RankId r = 0; r < world; ++r) {
        const auto comm = comms[r / span];
        const RankId root = (r / span) * span;
        // An unprobed warm-up op of the first size: the first collective of a step absorbs the ranks' exit skew from
        // the step barrier and the host's first NCCL enqueue on an idle stream (measured 22.2 us for a 1 KiB
        // all_reduce whose 2 KiB successor took 8.9 us, h200x2.raw.jsonl of ef0c3f2); the probed ops start behind it.
        // The gate before it lets the host issue the sweep ahead of the GPU.
        b.add(r, word + ".gate", 1, sweep_gate());
        b.add(r, word + ".warmup", 1, make_collective(kind, comm, sizes.front(), span, r % span, uneven, root));
        for (std::size_t i = 0; i < sizes.size(); ++i) {
          const auto c = make_collective(kind, comm, sizes[i], span, r % span, uneven, root);
          ids[i].push_back(b.add(r, word + "." + std::to_string(sizes[i]), 1, c));
        }
      }
      for (std::size_t i = 0; i < sizes.size(); ++i) {
        Probe p;
        p.name = "coll." + word + ".span" + std::to_string(span) + "." + std::to_string(sizes[i]);
        p.family = std::string("coll.") + schedule::collective_name(kind);
        p.ops = ids[i];
        p.size = static_cast<double>(sizes[i]);
        p.params = {{"span", double(span)}, {"uneven", uneven ? 1.0 : 0.0}};
        b.probe(std::move(p));
      }
      suite.push_back(b.take_group());
    }
  }
  // send/recv between rank pairs (0->1, 2->3, ...) over the world communicator.
  GroupBuilder b("p2p.send_recv", world);
  std::vector<std::vector<OpId>> ids(sizes.size());
  for (RankId r = 0; r < world / 2 * 2; ++r) {
    // Unprobed warm-up pair of the first size (as for the collectives above), with a tag no probed pair uses.
    const auto warm_tag = static_cast<std::uint32_t>(sizes.size());
    b.add(r, "p2p.gate", 1, sweep_gate());
    if (r % 2 == 0) {
      b.add(r, "send.warmup", 1, schedule::Send{0, r + 1, sizes.front(), warm_tag});
    } else {
      b.add(r, "recv.warmup", 1, schedule::Recv{0, r - 1, sizes.front(), warm_tag});
    }
    for (std::size_t i = 0; i < sizes.size(); ++i) {
      const auto tag = static_cast<std::uint32_t>(i);
      if (r % 2 == 0) {
        ids[i].push_back(b.add(r, "send." + std::to_string(sizes[i]), 1, schedule::Send{0, r + 1, sizes[i], tag}));
      } else {
        ids[i].push_back(b.add(r, "recv." + std::to_string(sizes[i]), 1, schedule::Recv{0, r - 1, sizes[i], tag}));
      }
    }
  }
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    Probe p;
    p.name = "p2p.send_recv." + std::to_string(sizes[i]);
    p.family = "send_recv";
    p.ops = ids[i];
    p.size = static_cast<double>(sizes[i]);
    b.probe(std::move(p));
  }
  suite.push_back(b.take_group());
}

/// The TP ring exchange's chunk sizes (TE userbuffers: one T_sp x h bf16 shard per ring step, T_sp = seq / TP with
/// micro-batch 1) for the zoo's hidden sizes, sequence lengths and TP sizes, plus 1 MiB for the start-up cost.
std::vector<std::uint64_t> ring_chunk_sizes(bool quick) {
  std::set<std::uint64_t> sizes{kMiB};
  const std::vector<std::uint64_t> hidden =
      quick ? std::vector<std::uint64_t>{4096, 8192} : std::vector<std::uint64_t>{4096, 8192, 16384};
  const std::vector<std::uint64_t> seqs =
      quick ? std::vector<std::uint64_t>{4096} : std::vector<std::uint64_t>{4096, 8192};
  for (auto h : hidden) {
    for (auto seq : seqs) {
      for (std::uint64_t tp : {2, 4, 8}) sizes.insert(seq / tp * h * 2);
    }
  }
  return {sizes.begin(), sizes.end()};
}

/// The copy engine's peer copy (sim::CopyEngine): rank 0 sends each ring chunk size to rank 1 over the copy engine
/// (transport copy_engine). The schedule's meta "measure" asks the runner for a bare cudaMemcpyPeerAsync between the
/// two GPUs (kPeerCopyMeasure; backend Runtime::measure_peer_copies), not the backend's send/recv, which runs
/// copy_engine pairs as NCCL until its peer-mapped path exists (backend/peer_memory.hpp). Two GPUs or more.
void add_copy_engine_group(std::vector<BenchGroup>& suite, std::uint32_t world, bool quick) {
  if (world < 2) return;  // skipped_groups() says so
  GroupBuilder b(kCopyEngineGroup, world);
  b.schedule().meta["measure"] = kPeerCopyMeasure;
  const auto sizes = ring_chunk_sizes(quick);
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    const auto tag = static_cast<std::uint32_t>(i);
    const auto ce = schedule::Transport::kCopyEngine;
    const OpId send = b.add(0, "ce_send." + std::to_string(sizes[i]), 1, schedule::Send{0, 1, sizes[i], tag, ce, 0});
    const OpId recv = b.add(1, "ce_recv." + std::to_string(sizes[i]), 1, schedule::Recv{0, 0, sizes[i], tag, ce, 0});
    Probe p;
    p.name = std::string(kCopyEngineGroup) + "." + std::to_string(sizes[i]);
    p.family = "copy_engine";
    p.ops = {send, recv};
    p.size = static_cast<double>(sizes[i]);
    b.probe(std::move(p));
  }
  suite.push_back(b.take_group());
}

/// Host issue cost per op class and host_sync wake-up, on every rank.
void add_host_groups(std::vector<BenchGroup>& suite, std::uint32_t world, bool quick) {
  const int n = quick ? 100 : 400;
  {
    GroupBuilder b("host.issue", world);
    std::vector<OpId> compute_ids, memcpy_ids, coll_ids;
    for (RankId r = 0; r < world; ++r) {
      for (int i = 0; i < n; ++i) {
        const OpId id = b.add(r, "issue.compute." + std::to_string(i), 0, compute(schedule::Elementwise{4096, 0}));
        if (r == 0) compute_ids.push_back(id);
      }
      for (int i = 0; i < n; ++i) {
        const OpId id =
            b.add(r, "issue.memcpy." + std::to_string(i), 0, compute(schedule::Memcpy{4096, schedule::CopyKind::kD2D}));
        if (r == 0) memcpy_ids.push_back(id);
      }
      if (world > 1) {
        for (int i = 0; i < n; ++i) {
          const OpId id =
              b.add(r, "issue.collective." + std::to_string(i), 1,
                    schedule::Collective{schedule::CollectiveKind::kAllReduce, 0, 4096, schedule::DType::kBF16, {}, 0});
          if (r == 0) coll_ids.push_back(id);
        }
      }
    }
    b.probe({"host.issue.compute", "launch.compute", Metric::kIssue, compute_ids, schedule::kNoOp, 0, {}});
    b.probe({"host.issue.memcpy", "launch.memcpy", Metric::kIssue, memcpy_ids, schedule::kNoOp, 0, {}});
    if (world > 1) {
      b.probe({"host.issue.collective", "launch.collective", Metric::kIssue, coll_ids, schedule::kNoOp, 0, {}});
    }
    suite.push_back(b.take_group());
  }
  {
    GroupBuilder b("host.sync", world);
    const int m = quick ? 10 : 40;
    for (RankId r = 0; r < world; ++r) {
      for (int i = 0; i < m; ++i) {
        // A kernel long enough (64 MiB streamed) that the host is already waiting when it ends.
        const OpId k = b.add(r, "sync.kernel." + std::to_string(i), 0, compute(schedule::Elementwise{64 * kMiB, 0}));
        const OpId s = b.add(r, "sync.wait." + std::to_string(i), 0, schedule::HostSync{k});
        if (r == 0) b.probe({"host.sync." + std::to_string(i), "host_sync", Metric::kWake, {s}, k, 0, {}});
      }
    }
    suite.push_back(b.take_group());
  }
}

/// GEMM + collective co-runs: a solo GEMM, a solo collective, then both at once on two streams.
void add_corun_groups(std::vector<BenchGroup>& suite, std::uint32_t world) {
  if (world < 2) return;
  const schedule::Gemm gemm{8192, 8192, 8192, 1, schedule::DType::kBF16};
  const std::pair<schedule::CollectiveKind, std::uint64_t> colls[] = {
      {schedule::CollectiveKind::kAllReduce, 512 * kMiB},
      {schedule::CollectiveKind::kAllGather, 1 * kGiB},
      {schedule::CollectiveKind::kReduceScatter, 1 * kGiB},
      {schedule::CollectiveKind::kAllToAll, 1 * kGiB}};
  for (const auto& [kind, bytes] : colls) {
    const std::string word = schedule::collective_name(kind);
    GroupBuilder b("corun." + word, world);
    std::vector<OpId> g_solo, c_solo, g_co, c_co;
    for (RankId r = 0; r < world; ++r) {
      const auto c = make_collective(kind, 0, bytes, world, r, false, 0);
      const OpId g1 = b.add(r, "gemm.solo", 0, compute(gemm));
      const OpId c1 = b.add(r, word + ".solo", 1, c, {g1});
      const OpId g2 = b.add(r, "gemm.corun", 0, compute(gemm), {c1});
      const OpId c2 = b.add(r, word + ".corun", 1, c);
      g_solo.push_back(g1);
      c_solo.push_back(c1);
      g_co.push_back(g2);
      c_co.push_back(c2);
    }
    const double gflops = schedule::kernel_flops(gemm);
    b.probe({"corun." + word + ".gemm_solo",
             "corun.gemm_solo",
             Metric::kDuration,
             {g_solo[0]},
             schedule::kNoOp,
             gflops,
             {}});
    b.probe({"corun." + word + ".gemm_corun", "corun.gemm", Metric::kDuration, {g_co[0]}, schedule::kNoOp, gflops, {}});
    b.probe({"corun." + word + ".comm_solo",
             "corun.comm_solo",
             Metric::kDuration,
             c_solo,
             schedule::kNoOp,
             double(bytes),
             {}});
    b.probe(
        {"corun." + word + ".comm_corun", "corun.comm", Metric::kDuration, c_co, schedule::kNoOp, double(bytes), {}});
    suite.push_back(b.take_group());
  }
}

/// A recv waiting for its peer beside compute (calibration/validation/h200x2/REPORT.md section 2): rank 0 runs a list
/// of GEMM and attention shapes solo, then again while a 16 MiB recv from rank 1 (stream tp_recv, priority -1) is
/// posted and waits ~20 ms: its NCCL kernel is resident and spins, holding SMs. Rank 1 keeps its GPU idle: it waits
/// (host) for a tiny handshake from rank 0 sent when the solo list is done, runs 20 ms of host work, then sends. The
/// handshake starts the wait on both ranks at the same moment, independent of how long the solo list took. The fit
/// takes interference.waiting_sms_per_channel from the slowdowns (waiting / solo per shape).
/// The recv-wait co-run group (kRecvWaitGroup) with `waiting` recvs waiting at once beside the compute list
/// (kRecvWait4Group: 4), each on its own stream, so each its own NCCL communicator and kernel.
void add_recv_wait_group(std::vector<BenchGroup>& suite, std::uint32_t world, const char* group,
                         std::uint32_t waiting_recvs) {
  if (world < 2) return;
  GroupBuilder b(group, world);
  auto& s = b.schedule();
  const auto tp_send = static_cast<schedule::StreamId>(s.streams.size());
  s.streams.push_back({"tp_send", 0});
  const auto tp_recv = static_cast<schedule::StreamId>(s.streams.size());
  s.streams.push_back({"tp_recv", -1});
  std::vector<schedule::StreamId> more_recv;  // the further recvs' streams ("tp_recv1", ...)
  for (std::uint32_t i = 1; i < waiting_recvs; ++i) {
    more_recv.push_back(static_cast<schedule::StreamId>(s.streams.size()));
    s.streams.push_back({"tp_recv" + std::to_string(i), -1});
  }
  std::vector<std::pair<std::string, schedule::Kernel>> kernels;
  for (const auto& g : {schedule::Gemm{2048, 3072, 4096, 1, schedule::DType::kBF16},
                        schedule::Gemm{1024, 4096, 7168, 1, schedule::DType::kBF16},
                        schedule::Gemm{4096, 4096, 4096, 1, schedule::DType::kBF16},
                        schedule::Gemm{4096, 4096, 14336, 1, schedule::DType::kBF16},
                        schedule::Gemm{4096, 28672, 4096, 1, schedule::DType::kBF16},
                        schedule::Gemm{8192, 8192, 8192, 1, schedule::DType::kBF16}}) {
    kernels.emplace_back("gemm." + shape_name(g), g);
  }
  for (bool bwd : {false, true}) {
    const schedule::Attention a{1, 16, 4, 4096, 4096, 128, true, bwd, schedule::DType::kBF16};
    kernels.emplace_back(std::string(bwd ? "attention_bwd." : "attention_fwd.") + shape_name(a), a);
  }
  constexpr std::uint64_t kRecvBytes = 16 * kMiB;
  constexpr std::uint64_t kHandshakeBytes = 4 * kKiB;
  constexpr Nanos kPeerDelayNs = 20'000'000;  // 20 ms of host work on rank 1 before its send
  // Rank 0: a warm-up GEMM (unprobed: the first kernel of a step after the barrier runs on an idle-clocked GPU,
  // measured about x2 slower on the two-H200 machine), the solo list, the handshake, then the recv and the same list
  // beside it.
  std::vector<OpId> solo, waiting;
  b.add(0, "warmup", 0, compute(schedule::Gemm{8192, 8192, 8192, 1, schedule::DType::kBF16}));
  for (const auto& [label, k] : kernels) solo.push_back(b.add(0, label + ".solo", 0, compute(k)));
  const OpId handshake = b.add(0, "handshake.send", tp_send, schedule::Send{0, 1, kHandshakeBytes, 1}, {solo.back()});
  const OpId recv = b.add(0, "recv", tp_recv, schedule::Recv{0, 1, kRecvBytes, 0}, {handshake});
  // Further recvs: tags 10, 11, ... (the handshake has tag 1).
  for (std::uint32_t i = 0; i < more_recv.size(); ++i) {
    b.add(0, "recv" + std::to_string(i + 1), more_recv[i], schedule::Recv{0, 1, kRecvBytes, 10 + i}, {handshake});
  }
  for (const auto& [label, k] : kernels) {
    waiting.push_back(b.add(0, label + ".waiting", 0, compute(k),
                            waiting.empty() ? std::vector<OpId>{handshake} : std::vector<OpId>{}));
  }
  // Rank 1: wait for the handshake, 20 ms of host work, then the matching send. Other ranks stay idle.
  const OpId hs_recv = b.add(1, "handshake.recv", tp_recv, schedule::Recv{0, 0, kHandshakeBytes, 1});
  b.add(1, "handshake.wait", 0, schedule::HostSync{hs_recv});
  b.add(1, "peer_delay", 0, schedule::Host{kPeerDelayNs});
  b.add(1, "send", tp_send, schedule::Send{0, 0, kRecvBytes, 0});
  for (std::uint32_t i = 0; i < more_recv.size(); ++i) {
    b.add(1, "send" + std::to_string(i + 1), tp_send, schedule::Send{0, 0, kRecvBytes, 10 + i});
  }
  // Families: "recv_wait.solo" / ".waiting" for the one-recv group, "recv_wait4.solo" / ... for four.
  const std::string family = waiting_recvs == 1 ? "recv_wait" : "recv_wait" + std::to_string(waiting_recvs);
  for (std::size_t i = 0; i < kernels.size(); ++i) {
    const auto& [label, k] = kernels[i];
    const double flops = schedule::kernel_flops(k);
    const std::string base = std::string(group) + "." + label;
    b.probe({base + ".solo", family + ".solo", Metric::kDuration, {solo[i]}, schedule::kNoOp, flops, {}});
    b.probe({base + ".waiting", family + ".waiting", Metric::kDuration, {waiting[i]}, schedule::kNoOp, flops, {}});
  }
  b.probe({std::string(group) + ".recv",
           family + ".recv",
           Metric::kDuration,
           {recv},
           schedule::kNoOp,
           double(kRecvBytes),
           {}});
  suite.push_back(b.take_group());
}

}  // namespace

std::vector<BenchGroup> make_suite(const std::string& suite_name, std::uint32_t world) {
  if (suite_name != "default" && suite_name != "quick") {
    throw Error("unknown calibration suite \"" + suite_name + "\"; use --suite default or --suite quick");
  }
  if (world < 1) throw Error("calibration needs at least one GPU");
  const bool quick = suite_name == "quick";
  std::vector<BenchGroup> suite;

  // GEMMs: a square sweep, skinny sweeps (m = tokens, narrow n or k as TP/EP shard them) and the zoo's shapes.
  std::vector<std::pair<std::string, schedule::Kernel>> gemms;
  std::set<std::tuple<std::uint64_t, std::uint64_t, std::uint64_t, std::uint64_t>> seen;
  auto add_gemm = [&](schedule::Gemm g) {
    if (seen.insert({g.m, g.n, g.k, g.batch}).second) gemms.emplace_back("gemm." + shape_name(g), g);
  };
  for (auto s : geometric(256, 16384, quick ? 4 : 2)) add_gemm({s, s, s, 1, schedule::DType::kBF16});
  if (!quick) {
    for (std::uint64_t m : {1024, 4096, 16384}) {
      for (std::uint64_t nk : {512, 1024, 2048, 7168, 14336}) {
        add_gemm({m, nk, 4096, 1, schedule::DType::kBF16});
        add_gemm({m, 4096, nk, 1, schedule::DType::kBF16});
      }
    }
  }
  const ZooShapes zoo = zoo_shapes(quick);
  for (const auto& g : zoo.gemms) add_gemm(g);
  add_compute_group(suite, "compute.gemm", world, gemms);

  // Weight-gradient GEMMs accumulating into the main grad (Megatron's gradient_accumulation_fusion): C[out, in]
  // += dY^T[out, tokens] X[tokens, in], the reduction over the tokens; the zoo's dense layer shapes at TP 1 and 8.
  // Each shape twice: into an fp32 C (fp32 main grads, TE's wgrad_gemm_accum_fp32; family gemm_accumulate) and into
  // a bf16 C (bf16 main grads: the GEMM's beta 1 on its own output dtype; family gemm_accumulate_bf16).
  std::vector<std::pair<std::string, schedule::Kernel>> accumulating;
  std::size_t shapes = 0;
  for (const auto& [out, in] : std::vector<std::pair<std::uint64_t, std::uint64_t>>{
           {6144, 4096}, {4096, 4096}, {28672, 4096}, {4096, 14336}, {3584, 4096}, {4096, 1792}}) {
    for (std::uint64_t tokens : {4096, 16384}) {
      if (quick && tokens != 4096) continue;
      schedule::Gemm g{out, in, tokens, 1, schedule::DType::kBF16};
      g.accumulate_fp32 = true;
      accumulating.emplace_back("gemm_accumulate." + shape_name(g), g);
      g.accumulate_fp32 = false;
      g.accumulate = true;
      accumulating.emplace_back("gemm_accumulate_bf16." + shape_name(g), g);
      ++shapes;
    }
    if (quick && shapes == 2) break;
  }
  add_compute_group(suite, "compute.gemm_accumulate", world, accumulating);

  std::vector<std::pair<std::string, schedule::Kernel>> grouped;
  std::set<std::string> seen_gg;
  auto add_grouped = [&](const schedule::GroupedGemm& g) {
    std::uint64_t rows = 0;
    for (auto m : g.m) rows += m;
    const std::string name = "grouped_gemm.g" + std::to_string(g.m.size()) + ".rows" + std::to_string(rows) + ".n" +
                             std::to_string(g.n) + ".k" + std::to_string(g.k);
    if (seen_gg.insert(name).second) grouped.emplace_back(name, g);
  };
  for (const auto& g : zoo.grouped) add_grouped(g);
  if (!quick) {
    for (const auto& g : expert_sweep()) add_grouped(g);
  }
  if (!grouped.empty()) add_compute_group(suite, "compute.grouped_gemm", world, grouped);

  std::vector<std::pair<std::string, schedule::Kernel>> attn;
  std::set<std::string> seen_a;
  auto add_attn = [&](schedule::Attention a) {
    const std::string name = std::string(a.backward ? "attention_bwd." : "attention_fwd.") + shape_name(a);
    if (seen_a.insert(name).second) attn.emplace_back(name, a);
  };
  for (std::uint64_t seq : geometric(1024, quick ? 4096 : 16384, 2)) {
    for (bool bwd : {false, true}) {
      add_attn({1, 32, 8, seq, seq, 128, true, bwd, schedule::DType::kBF16});
      if (!quick) add_attn({1, 16, 4, seq, seq, 128, true, bwd, schedule::DType::kBF16});
    }
  }
  // Non-causal attention (CP chunks: the ring's off-diagonal blocks, the all-gather path's prefix blocks) in a group
  // of its own (families attention_noncausal_*, their own tables): on the backend a causal kernel is many smaller
  // blocks of the triangle and a non-causal one a single block, so at equal FLOPs they run at different
  // efficiencies. Llama-3-8B heads (32 query, 8 KV groups, d 128) at the CP2 validation shapes, both directions.
  std::vector<std::pair<std::string, schedule::Kernel>> attn_noncausal;
  auto add_noncausal = [&](const schedule::Attention& a) {
    const std::string name = std::string(a.backward ? "attention_bwd." : "attention_fwd.") + shape_name(a);
    if (seen_a.insert(name).second) attn_noncausal.emplace_back(name, a);
  };
  for (const auto& a : zoo.attention) {
    if (a.causal) {
      add_attn(a);
    } else {
      add_noncausal(a);
    }
  }
  add_compute_group(suite, "compute.attention", world, attn);
  if (!quick) {
    const std::pair<std::uint64_t, std::uint64_t> noncausal_shapes[] = {
        {1024, 1024}, {2048, 2048}, {2048, 4096}, {2048, 6144}, {4096, 2048}, {4096, 4096}, {8192, 8192}};
    for (const auto& [sq, skv] : noncausal_shapes) {
      for (bool bwd : {false, true}) add_noncausal({1, 32, 8, sq, skv, 128, false, bwd, schedule::DType::kBF16});
    }
  }
  if (!attn_noncausal.empty()) add_compute_group(suite, kAttentionNoncausalGroup, world, attn_noncausal);

  std::vector<std::pair<std::string, schedule::Kernel>> mem;
  for (auto bytes : geometric(kKiB, kGiB, quick ? 16 : 4)) {
    mem.emplace_back("elementwise." + std::to_string(bytes), schedule::Elementwise{bytes, 0});
  }
  for (std::uint64_t params : {std::uint64_t{1} << 20, std::uint64_t{1} << 24, std::uint64_t{1} << 28}) {
    mem.emplace_back("optimizer." + std::to_string(params), schedule::Optimizer{params, schedule::DType::kBF16});
  }
  add_compute_group(suite, "compute.memory", world, mem);

  if (world > 1) add_collective_groups(suite, world, quick);
  add_copy_engine_group(suite, world, quick);
  add_host_groups(suite, world, quick);
  add_corun_groups(suite, world);
  add_recv_wait_group(suite, world, kRecvWaitGroup, 1);
  if (!quick) add_recv_wait_group(suite, world, kRecvWait4Group, 4);
  return suite;
}

std::vector<std::string> skipped_groups(std::uint32_t world) {
  std::vector<std::string> out;
  if (world < 2) {
    out.push_back(std::string(kCopyEngineGroup) +
                  ": skipped on 1 GPU (cudaMemcpyPeerAsync needs two GPUs of one node; the profile keeps the "
                  "datasheet copy_engine.nvlink_efficiency, 376/450)");
  }
  return out;
}

std::vector<Measurement> extract(const BenchGroup& group, const schedule::Trace& trace) {
  const auto& recs = trace.records;
  auto rec = [&](OpId id) -> const schedule::OpRecord& {
    if (id >= recs.size() || recs[id].op != id) {
      throw Error("calibration group " + group.name + ": the trace has no record of op " + std::to_string(id) +
                  " (was it produced from this group's schedule?)");
    }
    return recs[id];
  };
  std::vector<Measurement> out;
  for (const auto& p : group.probes) {
    double v = 0;
    switch (p.metric) {
      case Metric::kDuration: {
        double best = -1;
        for (auto id : p.ops) {
          const double d = static_cast<double>(rec(id).end_ns - rec(id).start_ns) * 1e-9;
          best = best < 0 ? d : std::min(best, d);
        }
        v = std::max(0.0, best);
        break;
      }
      case Metric::kIssue: {
        TWINSTEP_ASSERT(p.ops.size() >= 2, "issue probe needs two ops");
        v = static_cast<double>(rec(p.ops.back()).issue_ns - rec(p.ops.front()).issue_ns) * 1e-9 /
            static_cast<double>(p.ops.size() - 1);
        break;
      }
      case Metric::kWake:
        v = static_cast<double>(rec(p.ops.front()).end_ns - rec(p.ref).end_ns) * 1e-9;
        break;
    }
    out.push_back({group.name, p.name, p.family, p.size, v});
  }
  return out;
}

}  // namespace twinstep::calibration
