// Matching a profiler trace's activities to a schedule's ops and writing the measured trace (import.hpp).
#include "calibration/trace_import/import.hpp"

#include <algorithm>
#include <array>
#include <cctype>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <regex>
#include <set>

#include "common/error.hpp"
#include "common/stats.hpp"
#include "schedule/matching.hpp"

namespace twinstep::calibration::trace_import {
namespace {

namespace fs = std::filesystem;
using schedule::OpId;
using schedule::RankId;

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}
bool contains(const std::string& s, const char* what) { return s.find(what) != std::string::npos; }

/// (m, n, k, batch) of a GEMM from its launching op's Input Dims; nullopt for other ops or missing shapes.
std::optional<std::array<std::uint64_t, 4>> gemm_shape(const LaunchOp& op) {
  const auto& d = op.dims;
  auto u = [](std::int64_t v) { return static_cast<std::uint64_t>(std::max<std::int64_t>(v, 0)); };
  auto leading = [&](const std::vector<std::int64_t>& x) {
    std::uint64_t p = 1;
    for (std::size_t i = 0; i + 1 < x.size(); ++i) p *= u(x[i]);
    return p;
  };
  const std::string& n = op.name;
  if ((n == "aten::mm" || n == "aten::_scaled_mm") && d.size() >= 2 && d[0].size() == 2 && d[1].size() == 2) {
    return std::array<std::uint64_t, 4>{u(d[0][0]), u(d[1][1]), u(d[0][1]), 1};
  }
  if ((n == "aten::addmm" || n == "aten::addmm_") && d.size() >= 3 && d[1].size() == 2 && d[2].size() == 2) {
    return std::array<std::uint64_t, 4>{u(d[1][0]), u(d[2][1]), u(d[1][1]), 1};
  }
  if (n == "aten::bmm" && d.size() >= 2 && d[0].size() == 3 && d[1].size() == 3) {
    return std::array<std::uint64_t, 4>{u(d[0][1]), u(d[1][2]), u(d[0][2]), u(d[0][0])};
  }
  if (n == "aten::matmul" && d.size() >= 2 && d[0].size() >= 2 && d[1].size() == 2) {
    return std::array<std::uint64_t, 4>{leading(d[0]), u(d[1][1]), u(d[0].back()), 1};
  }
  if (n == "aten::linear" && d.size() >= 2 && !d[0].empty() && d[1].size() == 2) {
    return std::array<std::uint64_t, 4>{leading(d[0]), u(d[1][0]), u(d[0].back()), 1};
  }
  return std::nullopt;
}

/// A GEMM's activity: launched by a GEMM op (its Input Dims read as one), or a kernel named as cuBLAS / CUTLASS GEMMs
/// are (a trace without shapes). cuBLAS's workspace memsets come from the GEMM op and count as its.
bool gemm_activity(const GpuActivity& a) {
  if (gemm_shape(a.op)) return true;
  if (a.kind != ActivityKind::kKernel) return false;
  const std::string l = lower(a.name);
  return contains(l, "gemm") || l.rfind("nvjet", 0) == 0 || contains(l, "xmma") || contains(l, "grouped_mm");
}

bool attention_op(const std::string& name) {
  return contains(name, "scaled_dot_product") || contains(name, "flash_attention") ||
         contains(name, "efficient_attention") || contains(name, "cudnn_attention");
}
bool attention_kernel(const std::string& name) {
  const std::string l = lower(name);
  return contains(l, "flash") || contains(l, "fmha") || contains(l, "attention") || contains(l, "sdpa");
}
/// A memory fill: a memset, or a kernel of a fill/zero op (PyTorch's FillFunctor for tensor.zero_()).
bool fill_activity(const GpuActivity& a) {
  return a.kind == ActivityKind::kMemset || contains(a.name, "FillFunctor") || a.op.name == "aten::zero_" ||
         a.op.name == "aten::fill_";
}
bool backward_word(const std::string& name) {
  const std::string l = lower(name);
  return contains(l, "backward") || contains(l, "bwd");
}

/// The collective kind of an NCCL kernel ("ncclDevKernel_AllReduce_Sum_bf16_RING_LL"), "p2p" for send/recv and
/// all-to-all, empty for other kernels.
std::string nccl_kind(const std::string& name) {
  if (name.rfind("nccl", 0) != 0) return {};
  if (contains(name, "AllReduce")) return "all_reduce";
  if (contains(name, "AllGather")) return "all_gather";
  if (contains(name, "ReduceScatter")) return "reduce_scatter";
  if (contains(name, "Broadcast")) return "broadcast";
  if (contains(name, "SendRecv") || contains(name, "AllToAll") || contains(name, "Send") || contains(name, "Recv")) {
    return "p2p";
  }
  return "nccl";
}
std::string op_comm_kind(const schedule::Op& op) {
  if (const auto* c = std::get_if<schedule::Collective>(&op.body)) {
    switch (c->kind) {
      case schedule::CollectiveKind::kAllReduce:
        return "all_reduce";
      case schedule::CollectiveKind::kAllGather:
        return "all_gather";
      case schedule::CollectiveKind::kReduceScatter:
        return "reduce_scatter";
      case schedule::CollectiveKind::kBroadcast:
        return "broadcast";
      case schedule::CollectiveKind::kAllToAll:
        return "p2p";
    }
  }
  if (std::holds_alternative<schedule::Send>(op.body) || std::holds_alternative<schedule::Recv>(op.body)) return "p2p";
  return {};
}

const schedule::Kernel* kernel_of(const schedule::Op& op) {
  const auto* c = std::get_if<schedule::Compute>(&op.body);
  return c == nullptr ? nullptr : &c->kernel;
}

/// The op of Megatron's DistributedDataParallel.zero_grad_buffer() (models/lowering/data_parallel.cpp): a fill.
bool zero_grad_op(const schedule::Op& op) {
  const auto* k = kernel_of(op);
  return k != nullptr && std::holds_alternative<schedule::Elementwise>(*k) && op.name.ends_with(".zero_grad_buffer");
}
std::string shape_text(const std::array<std::uint64_t, 4>& s) {
  std::string t = std::to_string(s[0]) + "x" + std::to_string(s[1]) + "x" + std::to_string(s[2]);
  return s[3] > 1 ? std::to_string(s[3]) + " x " + t : t;
}
std::string dims_text(const LaunchOp& op) {
  std::string t = op.name + " Input Dims [";
  for (std::size_t i = 0; i < op.dims.size(); ++i) {
    t += i ? ", [" : "[";
    for (std::size_t j = 0; j < op.dims[i].size(); ++j) t += (j ? "," : "") + std::to_string(op.dims[i][j]);
    t += "]";
  }
  return t + "]";
}

bool same_gemm(const schedule::Gemm& g, const std::array<std::uint64_t, 4>& s) {
  const bool mnk = g.m == s[0] && g.n == s[1] && g.k == s[2];
  const bool nmk = g.n == s[0] && g.m == s[1] && g.k == s[2];  // the same product computed transposed
  return (mnk || nmk) && g.batch == s[3];
}

/// One op's hits: per step, the activities (and host waits) attributed to it.
struct OpHits {
  std::map<Nanos, std::vector<const GpuActivity*>> named;  // by the start of the range that named them
  std::vector<std::vector<const GpuActivity*>> ordered;    // by claim
  std::map<Nanos, const HostWait*> waits;                  // host_sync ops, by range start
  std::vector<std::vector<const GpuActivity*>> steps() const {
    std::vector<std::vector<const GpuActivity*>> out;
    for (const auto& [start, v] : named) out.push_back(v);
    if (out.empty()) out = ordered;
    return out;
  }
};

Nanos issue_of(const GpuActivity& a) { return a.launch_ns >= 0 ? a.launch_ns : a.start_ns; }

/// "L12.mb3.fwd.qkv" -> (12, 3); "mb1.bwd.output_dgrad" -> (-1, 1); other names -> (-1, -1).
std::pair<int, int> layer_and_microbatch(const std::string& name) {
  static const std::regex kName(R"(^(?:L(\d+)\.)?mb(\d+)\.(?:fwd|bwd|recompute|wgrad)\.[A-Za-z0-9_]+$)");
  std::smatch m;
  if (!std::regex_match(name, m, kName)) return {-1, -1};
  return {m[1].matched ? std::stoi(m[1].str()) : -1, std::stoi(m[2].str())};
}

class Matcher {
 public:
  Matcher(const schedule::Schedule& s, const std::vector<RankEvents>& ranks) : s_(s), ranks_(ranks) {
    hits_.resize(s.ops.size());
  }

  ImportResult run();

 private:
  /// Per step: the first launch and the last end of what was matched, all ranks on one clock.
  struct StepWindows {
    std::vector<Nanos> origin;
    std::vector<Nanos> finish;
  };

  void check_ranks();
  void match_rank(const RankEvents& r);
  /// The ops the lowering emits for a GEMM's inputs (`<gemm>_fp8_cast`: Transformer Engine's amax / cast kernels)
  /// have no range of their own in a framework's trace: their kernels run inside the GEMM's range. Per step, the
  /// non-GEMM activities of that range launched before its last GEMM kernel become the input op's (the activities
  /// after it, such as a main-grad accumulation, stay the GEMM's). `order`: the rank's ops in schedule order.
  void split_gemm_inputs(const std::vector<OpId>& order);
  void check_shapes(const RankEvents& r, const std::map<std::string, OpId>& by_name);
  /// How many steps the trace holds: the most any op was matched in.
  [[nodiscard]] std::size_t count_steps() const;
  /// Throws Error when nothing matched, or no GEMM matched by shape and no range named an op (another model).
  void check_matched(std::size_t steps) const;
  void check_skew(std::size_t steps);
  [[nodiscard]] StepWindows step_windows(std::size_t steps) const;
  /// Each op's record: medians over the steps of its matched activities (or waits), relative to the step's window;
  /// an op matched in no step gets a zero-length record after its predecessor. The trace's step times.
  void write_records(const StepWindows& w, schedule::Trace& t, ImportReport& rep) const;
  /// The GPU time inside the step windows, and the activities in them no op claimed, costliest first.
  void count_gpu_time(const StepWindows& w, ImportReport& rep) const;
  /// The measured trace's context: sources, format, GPU, steps, how ops were timed, the match figures.
  void describe(std::size_t steps, const ImportReport& rep, schedule::Trace& t) const;

  const schedule::Schedule& s_;
  const std::vector<RankEvents>& ranks_;
  std::vector<OpHits> hits_;
  std::set<const GpuActivity*> used_;
  std::set<std::string> unknown_ranges_;
  std::set<OpId> split_ops_;  ///< Input ops timed from their GEMM's range (split_gemm_inputs).
  std::size_t order_gemm_tried_ = 0;
  std::size_t order_gemm_matched_ = 0;
  std::string first_unmatched_gemm_;
};

void Matcher::check_ranks() {
  std::set<RankId> seen;
  for (const auto& r : ranks_) {
    if (std::find(s_.ranks.begin(), s_.ranks.end(), r.rank) == s_.ranks.end()) {
      throw Error(r.source + ": rank " + std::to_string(r.rank) + " is not in schedule \"" + s_.name + "\" (ranks 0-" +
                  std::to_string(s_.ranks.empty() ? 0 : s_.ranks.back()) +
                  "): a trace of another layout, or files named with the wrong rank");
    }
    if (!seen.insert(r.rank).second) {
      throw Error(r.source + ": a second trace of rank " + std::to_string(r.rank) +
                  "; give one file per rank (distributedInfo.rank, or \"rank<N>\" in the file name)");
    }
    if (const auto it = r.context.find("schedule_name"); it != r.context.end() && it->second != s_.name) {
      throw Error(r.source + ": recorded for schedule \"" + it->second + "\" (its twinstep_schedule metadata), not \"" +
                  s_.name + "\": a trace of another model or layout; import it with the schedule it ran");
    }
  }
}

void Matcher::check_shapes(const RankEvents& r, const std::map<std::string, OpId>& by_name) {
  // Layers and micro-batches the schedule has on this rank: a range naming others is another model or layout.
  int max_layer = -1, max_mb = -1;
  for (const auto& [name, id] : by_name) {
    max_layer = std::max(max_layer, s_.ops[id].tags.layer);
    max_mb = std::max(max_mb, s_.ops[id].tags.microbatch);
  }
  for (const auto& name : r.range_names) {
    if (by_name.count(name)) continue;
    const auto [layer, mb] = layer_and_microbatch(name);
    if ((layer >= 0 && layer > max_layer) || mb > max_mb) {
      throw Error(r.source + ": range \"" + name + "\" names " +
                  (layer > max_layer ? "layer " + std::to_string(layer) : "micro-batch " + std::to_string(mb)) +
                  ", but schedule \"" + s_.name + "\" has layers 0-" + std::to_string(max_layer) +
                  " and micro-batches 0-" + std::to_string(max_mb) + " on rank " + std::to_string(r.rank) +
                  ": a trace of another model or layout; lower the schedule of the traced run (same model, layout, "
                  "--seq, --mbs)");
    }
    unknown_ranges_.insert(name);
  }
  for (const auto& a : r.activities) {
    if (a.ranges.empty()) continue;
    const auto it = by_name.find(a.ranges.back());
    if (it == by_name.end()) continue;
    const auto& op = s_.ops[it->second];
    const auto* k = kernel_of(op);
    if (k == nullptr) continue;
    if (const auto* g = std::get_if<schedule::Gemm>(k)) {
      const auto sh = gemm_shape(a.op);
      if (sh && !same_gemm(*g, *sh)) {
        throw Error(a.where + ": op \"" + op.name + "\" (rank " + std::to_string(op.rank) + ") runs a " +
                    shape_text(*sh) + " GEMM (" + dims_text(a.op) + ") where schedule \"" + s_.name + "\" has " +
                    shape_text({g->m, g->n, g->k, g->batch}) +
                    ": a trace of another model or layout; lower the schedule of the traced run");
      }
    } else if (const auto* at = std::get_if<schedule::Attention>(k)) {
      if (attention_op(a.op.name) && !a.op.dims.empty() && a.op.dims[0].size() == 4) {
        // The query (forward) or the output gradient (backward): [batch, heads, seq, head_dim] for the SDPA ops,
        // [batch, seq, heads, head_dim] for the flash/efficient kernels' own ops; either layout is this op's.
        const auto& q = a.op.dims[0];
        const std::array<std::uint64_t, 4> want{at->batch, at->heads_q, at->seq_q, at->head_dim};
        const std::array<std::uint64_t, 4> bshd{at->batch, at->seq_q, at->heads_q, at->head_dim};
        bool bhsd_ok = true, bshd_ok = true;
        for (std::size_t i = 0; i < 4; ++i) {
          bhsd_ok = bhsd_ok && static_cast<std::uint64_t>(q[i]) == want[i];
          bshd_ok = bshd_ok && static_cast<std::uint64_t>(q[i]) == bshd[i];
        }
        for (std::size_t i = 0; i < 4 && !bhsd_ok && !bshd_ok; ++i) {
          if (static_cast<std::uint64_t>(q[i]) != want[i]) {
            throw Error(a.where + ": op \"" + op.name + "\" (rank " + std::to_string(op.rank) +
                        ") attends over a [batch, heads, seq, head_dim] = [" + std::to_string(q[0]) + "," +
                        std::to_string(q[1]) + "," + std::to_string(q[2]) + "," + std::to_string(q[3]) + "] query (" +
                        a.op.name + ") where schedule \"" + s_.name + "\" has [" + std::to_string(want[0]) + "," +
                        std::to_string(want[1]) + "," + std::to_string(want[2]) + "," + std::to_string(want[3]) +
                        "]: a trace of another model or layout");
          }
        }
      }
    }
  }
}

void Matcher::match_rank(const RankEvents& r) {
  std::map<std::string, OpId> by_name;
  std::vector<OpId> order;
  for (const auto& op : s_.ops) {
    if (op.rank != r.rank) continue;
    by_name.emplace(op.name, op.id);
    order.push_back(op.id);
  }
  check_shapes(r, by_name);

  // 1. By name: the innermost open range that names an op of this rank.
  for (const auto& a : r.activities) {
    for (std::size_t i = a.ranges.size(); i-- > 0;) {
      const auto it = by_name.find(a.ranges[i]);
      if (it == by_name.end()) continue;
      hits_[it->second].named[a.range_starts[i]].push_back(&a);
      used_.insert(&a);
      break;
    }
  }
  for (const auto& w : r.waits) {
    for (std::size_t i = w.ranges.size(); i-- > 0;) {
      const auto it = by_name.find(w.ranges[i]);
      if (it == by_name.end()) continue;
      // A wait inside the range of op T belongs to the host_sync that targets T (or to a host_sync so named).
      for (const OpId id : order) {
        const auto* hs = std::get_if<schedule::HostSync>(&s_.ops[id].body);
        if (hs != nullptr && (hs->target == it->second || id == it->second)) {
          hits_[id].waits.emplace(w.range_starts[i], &w);
          break;
        }
      }
      break;
    }
  }

  split_gemm_inputs(order);

  // 2. By kind, shape and order, for activities no range named, against ops no range named. Where ranges named
  // ops, they tell how many steps the trace holds: no op takes more claims than that (a fill elsewhere in the step
  // is not a second step of the grad zeroing).
  std::size_t named_steps = 0;
  for (const OpId id : order) named_steps = std::max({named_steps, hits_[id].named.size(), hits_[id].waits.size()});
  std::map<OpId, std::size_t> claims;
  auto candidate = [&](auto&& fits) -> std::optional<OpId> {
    std::optional<OpId> best;
    for (const OpId id : order) {
      if (!hits_[id].named.empty() || !fits(s_.ops[id])) continue;
      if (named_steps > 0 && claims[id] >= named_steps) continue;
      if (!best || claims[id] < claims[*best]) best = id;
    }
    return best;
  };
  const GpuActivity* last_act = nullptr;
  std::optional<OpId> last_claim;
  auto same_range = [](const GpuActivity& x, const GpuActivity& y) {
    return !x.ranges.empty() && !y.ranges.empty() && x.ranges.back() == y.ranges.back() &&
           x.range_starts.back() == y.range_starts.back();
  };
  for (const auto& a : r.activities) {
    if (used_.count(&a)) continue;
    const LaunchOp* last_op = last_act != nullptr ? &last_act->op : nullptr;
    const bool same_call = last_op != nullptr && !a.op.name.empty() && a.op.start_ns >= 0 &&
                           a.op.start_ns == last_op->start_ns && a.op.name == last_op->name &&
                           a.op.dims == last_op->dims;
    // The fills of one zeroing (one per parameter tensor in eager PyTorch) under one host range are one op's.
    const bool same_zeroing = last_act != nullptr && zero_grad_op(s_.ops[*last_claim]) && fill_activity(a) &&
                              fill_activity(*last_act) && same_range(a, *last_act);
    if (last_claim && (same_call || same_zeroing)) {
      // A further kernel of the same call of the launching op (split-K reduction, flash backward's parts): same op.
      hits_[*last_claim].ordered.back().push_back(&a);
      used_.insert(&a);
      last_act = &a;
      continue;
    }
    std::optional<OpId> pick;
    if (const auto sh = gemm_shape(a.op)) {
      ++order_gemm_tried_;
      pick = candidate([&](const schedule::Op& op) {
        const auto* k = kernel_of(op);
        const auto* g = k ? std::get_if<schedule::Gemm>(k) : nullptr;
        return g != nullptr && same_gemm(*g, *sh);
      });
      if (pick) {
        ++order_gemm_matched_;
      } else if (first_unmatched_gemm_.empty()) {
        first_unmatched_gemm_ = a.where + ": a " + shape_text(*sh) + " GEMM (" + dims_text(a.op) + ")";
      }
    } else if (attention_op(a.op.name) || attention_kernel(a.name)) {
      const bool bwd = backward_word(a.op.name) || backward_word(a.name);
      pick = candidate([&](const schedule::Op& op) {
        const auto* k = kernel_of(op);
        const auto* at = k ? std::get_if<schedule::Attention>(k) : nullptr;
        return at != nullptr && at->backward == bwd;
      });
    } else if (const std::string kind = nccl_kind(a.name); !kind.empty()) {
      pick = candidate([&](const schedule::Op& op) { return op_comm_kind(op) == kind; });
    } else if (fill_activity(a)) {
      pick = candidate(zero_grad_op);
    }
    if (!pick) continue;
    hits_[*pick].ordered.push_back({&a});
    ++claims[*pick];
    used_.insert(&a);
    last_claim = pick;
    last_act = &a;
  }
}

void Matcher::split_gemm_inputs(const std::vector<OpId>& order) {
  for (std::size_t i = 0; i < order.size(); ++i) {
    const schedule::Op& in = s_.ops[order[i]];
    const auto* ik = kernel_of(in);
    if (ik == nullptr || !std::holds_alternative<schedule::Elementwise>(*ik) || !hits_[in.id].named.empty()) continue;
    // Its GEMM: the next op of its stream, named as its prefix.
    const schedule::Op* gemm = nullptr;
    for (std::size_t j = i + 1; j < order.size() && gemm == nullptr; ++j) {
      if (s_.ops[order[j]].stream == in.stream) gemm = &s_.ops[order[j]];
    }
    if (gemm == nullptr || !in.name.starts_with(gemm->name + "_")) continue;
    const auto* gk = kernel_of(*gemm);
    if (gk == nullptr ||
        !(std::holds_alternative<schedule::Gemm>(*gk) || std::holds_alternative<schedule::GroupedGemm>(*gk)))
      continue;
    for (auto& [start, acts] : hits_[gemm->id].named) {
      std::sort(acts.begin(), acts.end(),
                [](const GpuActivity* a, const GpuActivity* b) { return a->start_ns < b->start_ns; });
      std::size_t last_gemm = acts.size();
      for (std::size_t k = acts.size(); k-- > 0 && last_gemm == acts.size();) {
        if (gemm_activity(*acts[k])) last_gemm = k;
      }
      if (last_gemm == acts.size()) continue;  // no GEMM kernel in this step's range: nothing to tell apart
      std::vector<const GpuActivity*> keep, moved;
      for (std::size_t k = 0; k < acts.size(); ++k) {
        (k < last_gemm && !gemm_activity(*acts[k]) ? moved : keep).push_back(acts[k]);
      }
      if (moved.empty()) continue;
      acts = std::move(keep);
      hits_[in.id].named[start] = std::move(moved);
      split_ops_.insert(in.id);
    }
  }
}

void Matcher::check_skew(std::size_t steps) {
  if (ranks_.size() < 2 || steps == 0) return;
  const auto m = schedule::match(s_);
  for (const auto& inst : m.collectives) {
    Nanos lo = 0, hi = 0, shortest = 0;
    RankId lo_rank = 0, hi_rank = 0;
    bool any = false;
    std::string name;
    for (const OpId id : inst.ops) {
      if (id == schedule::kNoOp) continue;
      const auto st = hits_[id].steps();
      if (st.empty() || st[0].empty()) continue;
      Nanos end = 0, start = st[0].front()->start_ns;
      for (const auto* a : st[0]) {
        end = std::max(end, a->end_ns);
        start = std::min(start, a->start_ns);
      }
      if (!any || end < lo) lo = end, lo_rank = s_.ops[id].rank;
      if (!any || end > hi) hi = end, hi_rank = s_.ops[id].rank;
      shortest = any ? std::min(shortest, end - start) : end - start;
      name = s_.ops[id].name;
      any = true;
    }
    // One collective ends on every member within a few microseconds; 100 us plus half the shortest member's kernel
    // is far beyond that and far below the skew of unsynchronised hosts.
    if (any && hi - lo > 100000 + shortest / 2) {
      char buf[160];
      std::snprintf(buf, sizeof buf, "%.1f us apart (its shortest member kernel lasts %.1f us)", (hi - lo) * 1e-3,
                    shortest * 1e-3);
      throw Error("clock skew between ranks: collective \"" + name + "\" ends on rank " + std::to_string(lo_rank) +
                  " and rank " + std::to_string(hi_rank) + " " + buf +
                  ": the traces' clocks disagree (ranks on different hosts?); import each host's ranks with its own "
                  "schedule view, or synchronise the hosts' clocks (PTP) before profiling");
    }
  }
}

std::size_t Matcher::count_steps() const {
  std::size_t steps = 0;
  for (const auto& h : hits_) steps = std::max({steps, h.steps().size(), h.waits.size()});
  return steps;
}

void Matcher::check_matched(std::size_t steps) const {
  if (steps == 0) {
    std::string first_range = "none";
    for (const auto& r : ranks_) {
      if (!r.range_names.empty()) {
        first_range = "\"" + r.range_names.front() + "\"";
        break;
      }
    }
    throw Error((ranks_.empty() ? std::string("the trace") : ranks_.front().source) + ": nothing matches schedule \"" +
                s_.name + "\": no host range names one of its ops (its first op is \"" +
                (s_.ops.empty() ? std::string() : s_.ops.front().name) + "\", the trace's first range " + first_range +
                ") and no kernel matched by kind and shape" +
                (first_unmatched_gemm_.empty() ? std::string() : " (first GEMM: " + first_unmatched_gemm_ + ")") +
                ": a trace of another model or layout, or one without record_function/NVTX ranges and shapes "
                "(profile with record_shapes=True)");
  }
  if (order_gemm_tried_ > 0 && order_gemm_matched_ == 0 && !first_unmatched_gemm_.empty()) {
    bool named_any = false;
    for (const auto& h : hits_) named_any = named_any || !h.named.empty();
    if (!named_any) {
      throw Error(first_unmatched_gemm_ + " matches no GEMM of schedule \"" + s_.name +
                  "\": a trace of another model or layout; lower the schedule of the traced run");
    }
  }
}

Matcher::StepWindows Matcher::step_windows(std::size_t steps) const {
  StepWindows w{std::vector<Nanos>(steps, 0), std::vector<Nanos>(steps, 0)};
  std::vector<bool> seen(steps, false);
  auto widen = [&](std::size_t st, Nanos issue, Nanos end) {
    if (!seen[st]) w.origin[st] = issue, w.finish[st] = end, seen[st] = true;
    w.origin[st] = std::min(w.origin[st], issue);
    w.finish[st] = std::max(w.finish[st], end);
  };
  for (const auto& h : hits_) {
    const auto st = h.steps();
    for (std::size_t i = 0; i < st.size(); ++i) {
      for (const auto* a : st[i]) widen(i, issue_of(*a), a->end_ns);
    }
    std::size_t i = 0;
    for (const auto& [start, wait] : h.waits) widen(i++, wait->start_ns, wait->end_ns);
  }
  return w;
}

void Matcher::write_records(const StepWindows& w, schedule::Trace& t, ImportReport& rep) const {
  const std::size_t steps = w.origin.size();
  t.records.resize(s_.ops.size());
  std::map<std::pair<RankId, schedule::StreamId>, Nanos> stream_end;
  std::map<RankId, Nanos> last_issue;
  for (const auto& op : s_.ops) {
    auto& rec = t.records[op.id];
    rec.op = op.id;
    rec.rank = op.rank;
    const auto& h = hits_[op.id];
    const auto st = h.steps();
    std::vector<Nanos> is, ss, es;
    for (std::size_t i = 0; i < st.size() && i < steps; ++i) {
      Nanos iss = issue_of(*st[i].front()), s0 = st[i].front()->start_ns, e0 = st[i].front()->end_ns;
      for (const auto* a : st[i]) {
        iss = std::min(iss, issue_of(*a));
        s0 = std::min(s0, a->start_ns);
        e0 = std::max(e0, a->end_ns);
        rep.matched_gpu_time_s += static_cast<double>(a->end_ns - a->start_ns) * 1e-9;
      }
      is.push_back(iss - w.origin[i]);
      ss.push_back(s0 - w.origin[i]);
      es.push_back(e0 - w.origin[i]);
    }
    std::size_t i = 0;
    for (const auto& [start, wait] : h.waits) {
      if (i >= steps) break;
      is.push_back(wait->start_ns - w.origin[i]);
      ss.push_back(wait->start_ns - w.origin[i]);
      es.push_back(wait->end_ns - w.origin[i]);
      ++i;
    }
    const bool host =
        std::holds_alternative<schedule::Host>(op.body) || std::holds_alternative<schedule::HostSync>(op.body);
    const auto key = std::make_pair(op.rank, op.stream);
    if (!es.empty()) {
      rec.issue_ns = median(is);
      rec.start_ns = median(ss);
      rec.end_ns = std::max(median(es), rec.start_ns);
      if (es.size() == steps) {
        ++rep.matched_ops;
        (h.named.empty() && h.waits.empty() ? rep.by_order_ops : rep.by_name_ops) += 1;
        if (split_ops_.count(op.id)) ++rep.split_ops;
      } else {
        rep.unmatched_ops.push_back("rank " + std::to_string(op.rank) + " op " + std::to_string(op.id) + " " + op.name +
                                    ": matched in " + std::to_string(es.size()) + " of " + std::to_string(steps) +
                                    " steps (record: medians of those)");
      }
    } else {
      // Not guessed: a zero-length record right after its predecessor (stream, or host thread for host ops).
      const Nanos at = host ? last_issue[op.rank] : std::max(stream_end[key], last_issue[op.rank]);
      rec.issue_ns = last_issue[op.rank];
      rec.start_ns = rec.end_ns = at;
      std::string why = std::holds_alternative<schedule::HostSync>(op.body)
                            ? "no synchronising call (cudaStreamSynchronize, ...) inside its target's range"
                        : host ? "host work is not in GPU traces"
                               : "no activity in a range of this name";
      if (!host && std::holds_alternative<schedule::Compute>(op.body) && !h.named.empty()) why = "empty range";
      rep.unmatched_ops.push_back("rank " + std::to_string(op.rank) + " op " + std::to_string(op.id) + " " + op.name +
                                  ": " + why + " (zero-length record)");
    }
    last_issue[op.rank] = std::max(last_issue[op.rank], rec.issue_ns);
    if (!host) stream_end[key] = std::max(stream_end[key], rec.end_ns);
  }
  for (std::size_t i = 0; i < steps; ++i) t.step_times_ns.push_back(w.finish[i] - w.origin[i]);
}

void Matcher::count_gpu_time(const StepWindows& w, ImportReport& rep) const {
  const std::size_t steps = w.origin.size();
  std::map<std::string, std::pair<std::size_t, Nanos>> unmatched;
  for (const auto& r : ranks_) {
    for (const auto& a : r.activities) {
      bool inside = false;
      for (std::size_t i = 0; i < steps && !inside; ++i) {
        inside = a.start_ns >= w.origin[i] && a.start_ns <= w.finish[i];
      }
      if (!inside) continue;
      rep.gpu_time_s += static_cast<double>(a.end_ns - a.start_ns) * 1e-9;
      if (used_.count(&a)) continue;
      const char* kind = a.kind == ActivityKind::kKernel   ? "kernel"
                         : a.kind == ActivityKind::kMemcpy ? "memcpy"
                                                           : "memset";
      const std::string name = a.name.size() > 90 ? a.name.substr(0, 87) + "..." : a.name;
      auto& u = unmatched[std::string(kind) + " " + name + " in range " +
                          (a.ranges.empty() ? std::string("(none)") : "\"" + a.ranges.back() + "\"")];
      ++u.first;
      u.second += a.end_ns - a.start_ns;
    }
  }
  std::vector<std::pair<Nanos, std::string>> rows;
  for (const auto& [what, cnt] : unmatched) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%zu x ", cnt.first);
    char ms[48];
    std::snprintf(ms, sizeof ms, ": %.3f ms", static_cast<double>(cnt.second) * 1e-6);
    rows.emplace_back(cnt.second, buf + what + ms);
  }
  std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  for (auto& [ns, text] : rows) rep.unmatched_activities.push_back(std::move(text));
}

void Matcher::describe(std::size_t steps, const ImportReport& rep, schedule::Trace& t) const {
  std::string sources, gpu;
  for (const auto& r : ranks_) {
    sources += (sources.empty() ? "" : ", ") + r.source;
    if (gpu.empty() && r.context.count("gpu")) gpu = r.context.at("gpu");
  }
  t.context["source"] = sources;
  if (!ranks_.empty() && ranks_.front().context.count("format"))
    t.context["format"] = ranks_.front().context.at("format");
  if (!gpu.empty()) t.context["gpu"] = gpu;
  t.context["steps"] = std::to_string(steps);
  t.context["timing"] =
      "per op: first launch, first start and last end of the GPU activities matched to it in a step, relative to the "
      "step's first launch; medians over the steps in the trace";
  t.context["import.matched_ops"] = std::to_string(rep.matched_ops) + " of " + std::to_string(rep.ops);
  if (rep.split_ops > 0) {
    t.context["import.split_ops"] = std::to_string(rep.split_ops) +
                                    " GEMM input ops (<gemm>_fp8_cast) timed from the non-GEMM kernels of their GEMM's "
                                    "range before its last GEMM kernel";
  }
  char rate[32];
  std::snprintf(rate, sizeof rate, "%.4f", rep.match_rate());
  t.context["import.gpu_time_matched"] = rate;
  t.context["import.unmatched_ops"] = std::to_string(rep.unmatched_ops.size()) + " (zero-length records)";
}

ImportResult Matcher::run() {
  check_ranks();
  for (const auto& r : ranks_) match_rank(r);
  const std::size_t steps = count_steps();
  check_matched(steps);
  check_skew(steps);
  // Step windows: from the first launch to the last end of what was matched, per step, all ranks on one clock.
  const StepWindows windows = step_windows(steps);
  ImportResult out;
  out.report.ops = s_.ops.size();
  out.trace.producer = "import";
  out.trace.schedule = s_;
  write_records(windows, out.trace, out.report);
  out.report.steps = steps;
  // GPU time inside the step windows, and what of it no op claimed.
  count_gpu_time(windows, out.report);
  out.report.unknown_ranges.assign(unknown_ranges_.begin(), unknown_ranges_.end());
  describe(steps, out.report, out.trace);
  return out;
}

bool sqlite_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  char head[16] = {};
  f.read(head, sizeof head);
  return f.gcount() == 16 && std::string(head, 15) == "SQLite format 3";
}

}  // namespace

std::vector<RankEvents> read_trace_files(const std::string& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) throw Error(path + ": no such file or folder");
  if (fs::is_directory(path, ec)) {
    std::vector<std::string> files;
    for (const auto& e : fs::directory_iterator(path)) {
      const std::string n = e.path().filename().string();
      if (e.is_regular_file() && (n.ends_with(".json") || n.ends_with(".sqlite"))) files.push_back(e.path().string());
    }
    std::sort(files.begin(), files.end());
    if (files.empty()) throw Error(path + ": a folder without .json or .sqlite trace files");
    std::vector<RankEvents> out;
    static const std::regex kRank(R"(rank[_-]?(\d+))", std::regex::icase);
    for (const auto& f : files) {
      if (sqlite_file(f)) {
        auto v = read_nsys_sqlite(f);
        if (files.size() > 1) throw Error(f + ": one Nsight Systems export holds every rank; import it alone");
        return v;
      }
      auto r = read_kineto(f);
      if (!r.rank_known) {
        std::smatch m;
        const std::string n = fs::path(f).filename().string();
        if (!std::regex_search(n, m, kRank)) {
          throw Error(f +
                      ": cannot tell which rank this trace is (no distributedInfo.rank in it, no \"rank<N>\" in its "
                      "name); rename it, e.g. trace_rank0.json");
        }
        r.rank = static_cast<std::uint32_t>(std::stoul(m[1].str()));
        r.rank_known = true;
      }
      out.push_back(std::move(r));
    }
    return out;
  }
  if (sqlite_file(path)) return read_nsys_sqlite(path);
  return {read_kineto(path)};
}

ImportResult import_trace(const schedule::Schedule& schedule, const std::vector<RankEvents>& ranks) {
  Matcher m(schedule, ranks);
  return m.run();
}

std::string format_report(const ImportReport& r, std::size_t max_rows) {
  char buf[512];
  std::string out;
  std::snprintf(buf, sizeof buf,
                "matched %zu of %zu ops (%zu by range name, of them %zu from their GEMM's range; %zu by "
                "kind/shape/order) over %zu step(s)\n"
                "GPU time matched: %.3f of %.3f ms (%.1f %%)\n",
                r.matched_ops, r.ops, r.by_name_ops, r.split_ops, r.by_order_ops, r.steps, r.matched_gpu_time_s * 1e3,
                r.gpu_time_s * 1e3, 100 * r.match_rate());
  out += buf;
  auto list = [&](const char* title, const std::vector<std::string>& rows) {
    if (rows.empty()) return;
    out += std::string(title) + " (" + std::to_string(rows.size()) + "):\n";
    for (std::size_t i = 0; i < rows.size() && i < max_rows; ++i) out += "  " + rows[i] + "\n";
    if (rows.size() > max_rows) out += "  ... " + std::to_string(rows.size() - max_rows) + " more\n";
  };
  list("unmatched GPU activities", r.unmatched_activities);
  list("unmatched ops", r.unmatched_ops);
  list("ranges naming no op", r.unknown_ranges);
  return out;
}

}  // namespace twinstep::calibration::trace_import
