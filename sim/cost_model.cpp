// Solo costs: roofline compute with efficiency tables, and NCCL's own cost model for collectives (constants of
// src/graph/tuning.cc for Hopper, as listed in reference/hardware.md 4.3), all-to-all and send/recv per peer.
// Datasheet defaults are stated here with their sources; a calibration profile replaces any of them.
#include "sim/cost_model.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <set>
#include <type_traits>
#include <variant>

#include "common/assert.hpp"
#include "common/enum_names.hpp"
#include "common/hash.hpp"
#include "schedule/grouped_gemm_streams.hpp"
#include "schedule/json.hpp"
#include "schedule/kernel_math.hpp"
#include "schedule/op_kind.hpp"

namespace twinstep::sim {
namespace {

constexpr double kUs = 1e-6;
constexpr double kGBps = 1e9;

// NCCL baseLatencies[algo][proto] (us), tuning.cc; hardware.md 4.3. Index: [Ring, Tree][LL, LL128, Simple].
constexpr double kBaseLatUs[2][3] = {{6.6, 14.0, 8.4}, {6.8, 14.0, 8.4}};
// hwLatencies[NVLINK][algo][proto] and hwLatencies[NET][algo][proto] (us).
constexpr double kNvlinkLatUs[2][3] = {{0.6, 1.9, 3.4}, {0.6, 1.25, 4.0}};
constexpr double kNetLatUs[2][3] = {{2.7, 4.0, 14.0}, {5.0, 8.5, 14.0}};
// Per-channel caps on Hopper (GB/s), by node count N1 / N2 / N4+.
constexpr double kRingLL128PerChGBps = 36.7;
constexpr double kTreeSimplePerChGBps[3] = {38.7, 41.4, 36.0};
constexpr double kTreeLL128PerChGBps[3] = {36.7, 36.7, 29.0};
// NCCL P2P: a transfer uses LL when bytes <= channels x 16 KiB (NCCL_P2P_LL_THRESHOLD), enqueue.cc.
constexpr double kP2pLLThresholdBytes = 16384;
// Ring graph search within a node (search.cc; hardware.md 4.3): per-channel speeds tried on sm90 (GB/s) and the most
// search channels (MAXCHANNELS / 2).
constexpr double kSearchSpeedsIntraSm90GBps[] = {60, 50, 40, 30, 24, 20, 15, 12, 11, 6, 3};
constexpr double kMaxSearchChannels = 32;

/// The intra-node ring bandwidth NCCL's tuning model uses: its graph search packs channels of one of its per-channel
/// speeds into the path bandwidth, so the total is the best speed x channels that fits, not the path bandwidth itself.
/// Two H200 over NV18 (370.8 GB/s): 360 GB/s, as NCCL 2.28.9 prints (Ring Simple 360.0 in its TUNING table,
/// calibration/measured/h200x2/nccl_tuning.log). sm90's speeds serve every GPU here: DGX A100's 12 x 20 GB/s path is a
/// whole number of channels at sm80's speeds and at these alike.
double nccl_graph_bytes_per_s(double path_bytes_per_s) {
  const double path_gbps = path_bytes_per_s / kGBps;
  double best = 0;
  for (const double speed : kSearchSpeedsIntraSm90GBps) {
    best = std::max(best, speed * std::min(kMaxSearchChannels, std::floor(path_gbps / speed + 1e-9)));
  }
  return best > 0 ? best * kGBps : path_bytes_per_s;
}

int node_class(std::uint32_t nodes) { return nodes <= 1 ? 0 : (nodes == 2 ? 1 : 2); }

double ll_max_bytes_per_s(std::uint32_t nodes) {
  // llMaxBws for Hopper: single node 141 GB/s; multi-node Intel host 39.0 (2 nodes), 20.4 (>= 3 nodes).
  if (nodes <= 1) return 141.0 * kGBps;
  return (nodes == 2 ? 39.0 : 20.4) * kGBps;
}

}  // namespace

namespace {
constexpr NameTable<NcclAlgo, 2> kNcclAlgos{{{"ring", NcclAlgo::kRing}, {"tree", NcclAlgo::kTree}}};
constexpr NameTable<NcclProto, 3> kNcclProtos{
    {{"ll", NcclProto::kLL}, {"ll128", NcclProto::kLL128}, {"simple", NcclProto::kSimple}}};
constexpr NameTable<CollectiveParamsKind, 7> kCollectiveParamsKinds{
    {{"all_reduce", CollectiveParamsKind::kAllReduce},
     {"all_gather", CollectiveParamsKind::kAllGather},
     {"reduce_scatter", CollectiveParamsKind::kReduceScatter},
     {"broadcast", CollectiveParamsKind::kBroadcast},
     {"all_to_all", CollectiveParamsKind::kAllToAll},
     {"send_recv", CollectiveParamsKind::kSendRecv},
     {"any", CollectiveParamsKind::kAny}}};
constexpr NameTable<Span, 2> kSpans{{{"intra", Span::kIntra}, {"inter", Span::kInter}}};
}  // namespace

NcclAlgo parse_nccl_algo(std::string_view text, std::string_view field) { return parse_name(kNcclAlgos, text, field); }
NcclProto parse_nccl_proto(std::string_view text, std::string_view field) {
  return parse_name(kNcclProtos, text, field);
}
std::string to_string(NcclAlgo algo) { return name_of(kNcclAlgos, algo); }
std::string to_string(NcclProto proto) { return name_of(kNcclProtos, proto); }
CollectiveParamsKind parse_collective_params_kind(std::string_view text, std::string_view field) {
  return parse_name(kCollectiveParamsKinds, text, field);
}
Span parse_span(std::string_view text, std::string_view field) { return parse_name(kSpans, text, field); }
std::string to_string(CollectiveParamsKind kind) { return name_of(kCollectiveParamsKinds, kind); }
std::string to_string(Span span) { return name_of(kSpans, span); }

CollectiveParamsKind params_kind_of(schedule::CollectiveKind kind) {
  switch (kind) {
    case schedule::CollectiveKind::kAllReduce:
      return CollectiveParamsKind::kAllReduce;
    case schedule::CollectiveKind::kAllGather:
      return CollectiveParamsKind::kAllGather;
    case schedule::CollectiveKind::kReduceScatter:
      return CollectiveParamsKind::kReduceScatter;
    case schedule::CollectiveKind::kAllToAll:
      return CollectiveParamsKind::kAllToAll;
    case schedule::CollectiveKind::kBroadcast:
      return CollectiveParamsKind::kBroadcast;
  }
  TWINSTEP_ASSERT(false, "unknown collective kind");
}

double EfficiencyTable::at(double size) const {
  if (points.empty()) return 1.0;
  if (size <= points.front().first || points.size() == 1) return points.front().second;
  if (size >= points.back().first) return points.back().second;
  for (std::size_t i = 1; i < points.size(); ++i) {
    if (size <= points[i].first) {
      const auto& [x0, y0] = points[i - 1];
      const auto& [x1, y1] = points[i];
      const double t = (std::log(size) - std::log(x0)) / (std::log(x1) - std::log(x0));
      return y0 + t * (y1 - y0);
    }
  }
  return points.back().second;
}

std::uint32_t Interference::waiting_sms(const std::vector<std::uint32_t>& channels) const {
  if (channels.empty() || waiting_sms_per_channel <= 0) return 0;
  std::uint64_t total = 0;
  std::uint32_t first = 0;
  for (auto ch : channels) {
    total += ch;
    first = std::max(first, ch);
  }
  const double more = waiting_sms_per_channel_more < 0 ? waiting_sms_per_channel : waiting_sms_per_channel_more;
  return static_cast<std::uint32_t>(
      std::lround(waiting_sms_per_channel * first + more * static_cast<double>(total - first)));
}

Profile Profile::datasheet_defaults() {
  Profile p;
  p.name = "datasheet defaults";
  // GEMM efficiency by FLOPs: bf16 GEMMs measured on the project's H200 with PyTorch/cuBLAS (hardware.md 10):
  // 2048x2048x768 239, 4096x768x2048 359, 4096^3 682 TFLOP/s, and 8192^3 798 TFLOP/s (hardware.md 1.2),
  // each divided by the 989.4 TFLOP/s dense peak. Microbenchmarks, not end-to-end figures.
  const EfficiencyTable gemm{{{6.44e9, 239.0 / 989.4},
                              {1.29e10, 359.0 / 989.4},
                              {1.37e11, 682.0 / 989.4},
                              {2.0 * 8192 * 8192 * 8192, 798.0 / 989.4}}};
  p.compute["gemm"] = gemm;
  p.compute["grouped_gemm"] = gemm;
  // FlashAttention-3 forward, up to 740 TFLOP/s of 989 on H100 (arXiv 2407.08608). No backward figure in the
  // reference: the forward efficiency is used for both until calibration measures it.
  p.compute["attention_fwd"] = EfficiencyTable{{{1e9, 0.5}, {1e11, 740.0 / 989.4}}};
  p.compute["attention_bwd"] = EfficiencyTable{{{1e9, 0.5}, {1e11, 740.0 / 989.4}}};
  // Streaming kernels: device-to-device copy reaches ~3.0 of 3.35 TB/s (H100), 4.24 of 4.8 (H200): ~0.9.
  p.memory_efficiency = 0.9;
  // Launch: an empty CUDA kernel from C++ costs 4.24 us per launch on the H200 machine (hardware.md 10); NCCL
  // calls and copies are taken as one launch each. host_sync wake-up: not measured yet (0).
  p.launch_s = {{"compute", 4.24 * kUs}, {"memcpy", 4.24 * kUs}, {"collective", 4.24 * kUs},
                {"send", 4.24 * kUs},    {"recv", 4.24 * kUs},   {"host_sync", 0.0}};
  return p;
}

std::size_t ComputeHash::operator()(const schedule::Compute& c) const {
  std::uint64_t h = kFnvOffsetBasis;
  fnv_mix(h, c.kernel.index());
  fnv_mix(h, c.sm_count);
  std::visit(
      [&](const auto& k) {
        using T = std::decay_t<decltype(k)>;
        if constexpr (std::is_same_v<T, schedule::Gemm>) {
          fnv_mix(h, k.m), fnv_mix(h, k.n), fnv_mix(h, k.k), fnv_mix(h, k.batch),
              fnv_mix(h, static_cast<std::uint64_t>(k.dtype)), fnv_mix(h, k.accumulate_fp32 ? 1u : 0u),
              fnv_mix(h, k.accumulate ? 1u : 0u);
        } else if constexpr (std::is_same_v<T, schedule::GroupedGemm>) {
          for (auto m : k.m) fnv_mix(h, m);
          fnv_mix(h, k.n), fnv_mix(h, k.k), fnv_mix(h, static_cast<std::uint64_t>(k.dtype));
          fnv_mix(h, k.accumulate_fp32 ? 1u : 0u), fnv_mix(h, k.accumulate ? 1u : 0u);
        } else if constexpr (std::is_same_v<T, schedule::Attention>) {
          fnv_mix(h, k.batch), fnv_mix(h, k.heads_q), fnv_mix(h, k.heads_kv), fnv_mix(h, k.seq_q), fnv_mix(h, k.seq_kv);
          fnv_mix(h, k.head_dim), fnv_mix(h, (k.causal ? 1u : 0u) | (k.backward ? 2u : 0u));
          fnv_mix(h, static_cast<std::uint64_t>(k.dtype));
        } else if constexpr (std::is_same_v<T, schedule::Elementwise>) {
          fnv_mix(h, k.bytes), fnv_mix(h, k.flops);
        } else if constexpr (std::is_same_v<T, schedule::Optimizer>) {
          fnv_mix(h, k.params), fnv_mix(h, static_cast<std::uint64_t>(k.param_dtype));
        } else {
          fnv_mix(h, k.bytes), fnv_mix(h, static_cast<std::uint64_t>(k.kind));
        }
      },
      c.kernel);
  return h;
}

double KernelCost::solo_time_s() const {
  const double mem = mem_bytes_per_s > 0 ? mem_bytes / mem_bytes_per_s : 0.0;
  return std::max(flop_time_s, mem);
}

namespace {
constexpr const char* kLaunchClasses[6] = {"compute", "memcpy", "collective", "send", "recv", "host_sync"};
constexpr int kGemmAccumulateSlot = 7;
constexpr int kGemmAccumulateBf16Slot = 8;
constexpr int kAttentionNoncausalSlot = 9;  // + 1 for the backward

/// A kernel's slot in kComputeTableNames: one overload per Kernel alternative and no catch-all, so a new kernel class
/// does not compile until it has a slot.
struct KernelClassIndex {
  int operator()(const schedule::Gemm& /*unused*/) const { return 0; }
  int operator()(const schedule::GroupedGemm& /*unused*/) const { return 1; }
  int operator()(const schedule::Attention& a) const { return a.backward ? 3 : 2; }
  int operator()(const schedule::Elementwise& /*unused*/) const { return 4; }
  int operator()(const schedule::Optimizer& /*unused*/) const { return 5; }
  int operator()(const schedule::Memcpy& /*unused*/) const { return 6; }
};

int kernel_class_index(const schedule::Kernel& k) { return std::visit(KernelClassIndex{}, k); }

}  // namespace

double accumulate_epilogue_extra_bytes(const schedule::Kernel& kernel) {
  // Per C element: the accumulating epilogue's bytes (C read and written, fp32 or the output dtype) less one write.
  const auto extra = [](const auto& g, double c_elements) {
    if (!g.accumulate_fp32 && !g.accumulate) return 0.0;
    const double per =
        schedule::gemm_epilogue_bytes(g.dtype, g.accumulate_fp32, g.accumulate) - schedule::gemm_output_bytes(g.dtype);
    return per * c_elements;
  };
  if (const auto* g = std::get_if<schedule::Gemm>(&kernel)) {
    return extra(*g, static_cast<double>(g->m) * static_cast<double>(g->n) * static_cast<double>(g->batch));
  }
  if (const auto* g = std::get_if<schedule::GroupedGemm>(&kernel)) {
    double rows = 0;
    for (auto m : g->m) rows += static_cast<double>(m);
    return extra(*g, rows * static_cast<double>(g->n));
  }
  return 0.0;
}

CostModel::CostModel(const topologies::Cluster& cluster, Profile profile)
    : cluster_(cluster), profile_(std::move(profile)) {
  for (int i = 0; i < 6; ++i) {
    const auto it = profile_.launch_s.find(kLaunchClasses[i]);
    launch_by_class_[i] = it == profile_.launch_s.end() ? 0 : to_nanos(it->second);
  }
  const auto group = profile_.launch_s.find(kGroupedGemmGroupLaunch);
  grouped_group_ns_ = group == profile_.launch_s.end() ? launch_by_class_[0] : to_nanos(group->second);
  const auto event = profile_.launch_s.find(kEventLaunch);
  event_ns_ = event == profile_.launch_s.end() ? 0 : to_nanos(event->second);
  for (int i = 0; i < kKernelTableSlots; ++i) {
    const auto it = profile_.compute.find(kComputeTableNames[static_cast<std::size_t>(i)]);
    eff_by_class_[i] = it == profile_.compute.end() ? nullptr : &it->second;
  }
}

Nanos CostModel::launch_ns(const schedule::Op& op) const {
  // Slots of kLaunchClasses.
  switch (schedule::kind_of(op.body)) {
    case schedule::OpKind::kCompute:
      return launch_by_class_[std::holds_alternative<schedule::Memcpy>(std::get<schedule::Compute>(op.body).kernel)
                                  ? 1
                                  : 0];
    case schedule::OpKind::kCollective:
      return launch_by_class_[2];
    case schedule::OpKind::kSend:
      return launch_by_class_[3];
    case schedule::OpKind::kRecv:
      return launch_by_class_[4];
    case schedule::OpKind::kHostSync:
      return launch_by_class_[5];
    case schedule::OpKind::kHost:
      return 0;  // host ops carry their own duration
  }
  return 0;  // not reached: the switch names every kind
}

Nanos CostModel::host_tail_ns(const schedule::Op& op) const {
  const auto* c = std::get_if<schedule::Compute>(&op.body);
  const auto* g = c == nullptr ? nullptr : std::get_if<schedule::GroupedGemm>(&c->kernel);
  if (g == nullptr || g->m.empty()) return 0;
  const auto nonempty = static_cast<Nanos>(std::count_if(g->m.begin(), g->m.end(), [](auto m) { return m != 0; }));
  const auto streams = static_cast<Nanos>(std::min<std::size_t>(g->m.size(), schedule::kGroupedGemmStreams));
  return std::max<Nanos>(0, nonempty - 1) * grouped_group_ns_ + (1 + 3 * streams) * event_ns_;
}

std::string_view op_stem(std::string_view name) {
  // Strips "L<digits>." then "mb<digits>." where present.
  auto strip = [&name](std::string_view head) {
    if (!name.starts_with(head)) return;
    std::size_t i = head.size();
    while (i < name.size() && name[i] >= '0' && name[i] <= '9') ++i;
    if (i > head.size() && i < name.size() && name[i] == '.') name.remove_prefix(i + 1);
  };
  strip("L");
  strip("mb");
  return name;
}

bool reads_accumulate_table(const schedule::Kernel& kernel) {
  const auto* gemm = std::get_if<schedule::Gemm>(&kernel);
  return gemm != nullptr && gemm->accumulate_fp32 && gemm->dtype != schedule::DType::kFP8;
}

bool reads_accumulate_bf16_table(const schedule::Kernel& kernel) {
  const auto* gemm = std::get_if<schedule::Gemm>(&kernel);
  return gemm != nullptr && gemm->accumulate && !gemm->accumulate_fp32 && gemm->dtype != schedule::DType::kFP8;
}

const EfficiencyTable* CostModel::op_table(std::string_view op_name) const {
  if (profile_.op_compute.empty() || op_name.empty()) return nullptr;
  const auto it = profile_.op_compute.find(std::string(op_stem(op_name)));
  return it == profile_.op_compute.end() ? nullptr : &it->second;
}

KernelCost CostModel::kernel_cost(const schedule::Compute& c, std::string_view op_name) const {
  const auto& gpu = cluster_.node.gpu;
  KernelCost k;
  k.reserved_sms = std::min(c.sm_count, gpu.sm_count);
  double flops = schedule::kernel_flops(c.kernel);
  double table_size = -1;  // where the efficiency table is read, when not at `flops` (grouped GEMMs per group)
  const double bytes = schedule::kernel_bytes(c.kernel);
  // The table: the op stem's where the profile has one (the op as a real step ran it, an accumulating GEMM's fp32
  // epilogue included), else the measured gemm_accumulate (fp32 C) or gemm_accumulate_bf16 (bf16 C) table where it
  // prices this kernel, else its class's.
  const EfficiencyTable* own = op_table(op_name);
  const EfficiencyTable* accumulate_table = own != nullptr                     ? nullptr
                                            : reads_accumulate_table(c.kernel) ? eff_by_class_[kGemmAccumulateSlot]
                                            : reads_accumulate_bf16_table(c.kernel)
                                                ? eff_by_class_[kGemmAccumulateBf16Slot]
                                                : nullptr;
  // A non-causal attention kernel reads the measured non-causal table where the profile has one: on the backend a
  // causal kernel is many smaller blocks of the triangle (backend/attention.cpp), a non-causal one a single block, so
  // at equal FLOPs they run at different efficiencies (calibration/validation/h200x2/REPORT.md, 2026-12-07).
  const EfficiencyTable* noncausal_table = nullptr;
  if (const auto* a = std::get_if<schedule::Attention>(&c.kernel); a != nullptr && !a->causal && own == nullptr) {
    noncausal_table = eff_by_class_[kAttentionNoncausalSlot + (a->backward ? 1 : 0)];
  }
  const EfficiencyTable* eff_table = own != nullptr                ? own
                                     : accumulate_table != nullptr ? accumulate_table
                                     : noncausal_table != nullptr  ? noncausal_table
                                                                   : eff_by_class_[kernel_class_index(c.kernel)];
  const bool epilogue_measured = own != nullptr || accumulate_table != nullptr;
  const Interference& itf = profile_.interference;
  const bool memory_bound =
      std::holds_alternative<schedule::Elementwise>(c.kernel) || std::holds_alternative<schedule::Optimizer>(c.kernel);
  auto ceil_div = [](std::uint64_t a, std::uint64_t b) { return b == 0 ? 0 : (a + b - 1) / b; };
  std::visit(
      [&](const auto& kern) {
        using T = std::decay_t<decltype(kern)>;
        double peak = gpu.peak_flop_per_s(schedule::DType::kBF16);
        if constexpr (std::is_same_v<T, schedule::Gemm>) {
          peak = gpu.peak_flop_per_s(kern.dtype);
          k.tiles = ceil_div(kern.m, itf.gemm_tile_m) * ceil_div(kern.n, itf.gemm_tile_n) * kern.batch;
        } else if constexpr (std::is_same_v<T, schedule::GroupedGemm>) {
          peak = gpu.peak_flop_per_s(kern.dtype);
          std::uint64_t groups = 0;
          for (auto m : kern.m) {
            k.tiles += ceil_div(m, itf.gemm_tile_m) * ceil_div(kern.n, itf.gemm_tile_n);
            groups += m > 0 ? 1 : 0;
          }
          if (profile_.grouped_gemm_per_group && groups > 0) table_size = flops / static_cast<double>(groups);
        } else if constexpr (std::is_same_v<T, schedule::Attention>) {
          peak = gpu.peak_flop_per_s(kern.dtype);
          k.tiles =
              itf.attention_tile_q == 0 ? 0 : kern.batch * kern.heads_q * ceil_div(kern.seq_q, itf.attention_tile_q);
          if (profile_.attention_full_scores && !kern.causal && noncausal_table == nullptr) {
            // The implementation does the same work for a causal and a non-causal kernel of this shape; the tables
            // are over the causal FLOPs of their (causal) probes.
            schedule::Attention as_causal = kern;
            as_causal.causal = true;
            flops = schedule::kernel_flops(as_causal);
          }
        } else if constexpr (std::is_same_v<T, schedule::Elementwise> || std::is_same_v<T, schedule::Optimizer>) {
          peak = gpu.peak_fp32_flop_per_s;  // CUDA cores, not tensor cores
        }
        if constexpr (std::is_same_v<T, schedule::Memcpy>) {
          if (kern.kind == schedule::CopyKind::kD2D) {
            k.mem_bytes = 2.0 * static_cast<double>(kern.bytes);  // read + write
            k.mem_bytes_per_s = gpu.hbm_bytes_per_s * profile_.memory_efficiency;
          } else {
            k.uses_hbm = false;
            k.mem_bytes = static_cast<double>(kern.bytes);
            k.mem_bytes_per_s = cluster_.node.pcie_bytes_per_s;
          }
        } else if (memory_bound && profile_.memory_tables_by_bytes) {
          // Schema addition "memory_tables": "bytes": the class table is HBM efficiency over bytes moved.
          k.flop_time_s = peak > 0 ? flops / peak : 0.0;
          k.mem_bytes = bytes;
          const double eff = eff_table != nullptr ? std::max(1e-4, eff_table->at(bytes)) : profile_.memory_efficiency;
          k.mem_bytes_per_s = gpu.hbm_bytes_per_s * eff;
        } else {
          const double eff =
              eff_table != nullptr ? std::max(1e-3, eff_table->at(table_size > 0 ? table_size : flops)) : 1.0;
          k.flop_time_s = peak > 0 ? flops / (peak * eff) : 0.0;
          k.mem_bytes = bytes;
          k.mem_bytes_per_s = gpu.hbm_bytes_per_s * profile_.memory_efficiency;
          // An accumulating GEMM (gradient_accumulation_fusion) read from a table measured without the epilogue:
          // the GEMM time plus its epilogue's extra HBM traffic, an fp32 read and write of C instead of the output
          // dtype's write (docs/calibration.md, "Accumulating GEMMs").
          if (!epilogue_measured && k.mem_bytes_per_s > 0) {
            k.flop_time_s += accumulate_epilogue_extra_bytes(c.kernel) / k.mem_bytes_per_s;
          }
        }
      },
      c.kernel);
  // No kernel finishes faster than the measured floor (launch-to-completion of a tiny kernel); carried as compute
  // time so that SM sharing stretches it like any other kernel's work.
  if (profile_.kernel_floor_s > 0 && k.reserved_sms == 0) {
    const double mem_s = k.mem_bytes_per_s > 0 ? k.mem_bytes / k.mem_bytes_per_s : 0.0;
    if (std::max(k.flop_time_s, mem_s) < profile_.kernel_floor_s) k.flop_time_s = profile_.kernel_floor_s;
  }
  return k;
}

CommSpan CostModel::span(const schedule::Communicator& comm) const {
  CommSpan s;
  s.ranks = static_cast<std::uint32_t>(comm.members.size());
  std::map<std::uint32_t, std::uint32_t> per_node;
  for (auto r : comm.members) ++per_node[cluster_.node_of(r)];
  s.nodes = static_cast<std::uint32_t>(per_node.size());
  for (const auto& [node, count] : per_node) s.per_node = std::max(s.per_node, count);
  if (s.nodes > 1) {
    // Worst path between the first node and any other (fat-tree paths depend only on the group).
    const std::uint32_t first = per_node.begin()->first;
    for (const auto& [node, count] : per_node) {
      (void)count;
      if (node == first) continue;
      const auto p = cluster_.path(first, node);
      s.switch_hops = std::max(s.switch_hops, p.switch_hops);
      s.fabric_factor = std::min(s.fabric_factor, p.bandwidth_factor);
    }
  }
  return s;
}

const CollectiveParams* CostModel::override_for(CollectiveParamsKind kind, NcclAlgo algo, NcclProto proto, bool inter,
                                                std::uint32_t ranks) const {
  const bool p2p = kind == CollectiveParamsKind::kAllToAll || kind == CollectiveParamsKind::kSendRecv;
  const Span span = inter ? Span::kInter : Span::kIntra;
  // Rank of a match, best first: own kind at this group size, own kind at any size, "any" at this size, "any".
  const CollectiveParams* best = nullptr;
  int best_rank = 4;
  for (const auto& p : profile_.collectives) {
    if (p.algo != algo || p.proto != proto || p.span != span) continue;
    if (p.ranks != 0 && p.ranks != ranks) continue;
    int rank = 4;
    if (p.kind == kind) rank = p.ranks != 0 ? 0 : 1;
    if (p.kind == CollectiveParamsKind::kAny && !p2p) rank = p.ranks != 0 ? 2 : 3;
    if (rank < best_rank) {
      best = &p;
      best_rank = rank;
    }
  }
  return best;
}

CommCost CostModel::evaluate(schedule::CollectiveKind kind, double bytes, const CommSpan& span, NcclAlgo algo,
                             NcclProto proto, bool measured) const {
  const auto& node = cluster_.node;
  const NcclConfig& nc = profile_.nccl;
  const int a = algo == NcclAlgo::kRing ? 0 : 1;
  const int p = static_cast<int>(proto);
  const std::uint32_t n = span.ranks;
  const bool inter = span.nodes > 1;
  const int ncls = node_class(span.nodes);
  CommCost c;
  c.algo = algo;
  c.proto = proto;
  c.uses_nic = inter;
  const std::uint32_t max_channels = std::max<std::uint32_t>(1, inter ? nc.channels_inter : nc.channels_intra);

  // Graph bandwidth: NVLink inside a node, and per node the NICs of the members there (one ring per NIC rail).
  double graph_bw = std::numeric_limits<double>::infinity();
  if (span.per_node > 1) graph_bw = node.nvlink_nccl_bytes_per_s;
  if (inter) {
    graph_bw = std::min(graph_bw, span.per_node * std::max<std::uint32_t>(node.nics_per_gpu, 1) *
                                      node.nic_achievable_bytes_per_s * span.fabric_factor);
  }
  if (!std::isfinite(graph_bw)) graph_bw = node.nvlink_nccl_bytes_per_s;
  // NCCL's own estimate (the one it picks the algorithm and protocol by) sees the bandwidth its graph search found.
  if (!measured && !inter) graph_bw = nccl_graph_bytes_per_s(graph_bw);

  // Bus bandwidth refinements per (algo, proto) (tuning.cc; hardware.md 4.3).
  double bus = graph_bw;
  const double chans = static_cast<double>(max_channels);
  if (algo == NcclAlgo::kRing) {
    if (proto == NcclProto::kLL) bus = std::min(ll_max_bytes_per_s(span.nodes), bus * 0.5);
    if (proto == NcclProto::kLL128) bus = std::min(bus * 0.92, chans * kRingLL128PerChGBps * kGBps);
  } else {
    if (proto == NcclProto::kSimple) bus = std::min(bus * 0.92, chans * kTreeSimplePerChGBps[ncls] * kGBps);
    if (proto == NcclProto::kLL) bus = std::min(bus / 3.8, ll_max_bytes_per_s(span.nodes));
    if (proto == NcclProto::kLL128) {
      bus = std::min(bus * (inter ? 120.0 / 128.0 : 7.0 / 9.0), chans * kTreeLL128PerChGBps[ncls] * kGBps);
    }
  }

  // Steps.
  double nsteps = 0, ninter = 0, ratio = 1;
  const double nn = static_cast<double>(n);
  switch (kind) {
    case schedule::CollectiveKind::kAllReduce:
      nsteps = 2 * (nn - 1);
      ninter = inter ? 2.0 * (span.nodes - 1) : 0;
      ratio = nn / nsteps;
      break;
    case schedule::CollectiveKind::kAllGather:
    case schedule::CollectiveKind::kReduceScatter:
      nsteps = nn - 1;
      ninter = inter ? span.nodes - 1.0 : 0;
      ratio = nn / nsteps;
      break;
    default:  // broadcast: a pipelined chain of n - 1 hops, algbw = busbw. NCCL 2.28.9's tuning table on two H200
              // prints Ring Broadcast latencies LL 7.2 / Simple 11.8 us = base + 1 x hop (NCCL_DEBUG_SUBSYS=TUNING,
              // calibration/measured/h200x2/nccl_tuning.log), i.e. n - 1 steps (hardware.md 4.3's "others n" is older)
      nsteps = nn - 1;
      ninter = inter ? span.nodes - 1.0 : 0;
      ratio = 1;
      break;
  }
  const double hop_s = span.switch_hops * cluster_.fabric.hop_latency_s;
  double intra_lat = kNvlinkLatUs[a][p] * kUs;
  double step_inter = kNetLatUs[a][p] * kUs + hop_s;
  double base = kBaseLatUs[a][p] * kUs;
  // Ring steps inside a node of a multi-node ring pay at least the network post overhead (tuning.cc).
  if (inter && algo == NcclAlgo::kRing) {
    intra_lat = std::max(intra_lat, nc.net_overhead_s * (proto == NcclProto::kSimple ? 3.0 : 1.0));
  }
  // A measured override for this span replaces the base, every step's latency and the bus bandwidth.
  const CollectiveParams* o = measured ? override_for(params_kind_of(kind), algo, proto, inter, n) : nullptr;
  if (o != nullptr) {
    if (o->base_latency_s >= 0) base = o->base_latency_s;
    if (o->step_latency_s >= 0) intra_lat = step_inter = o->step_latency_s;
    if (o->bus_bytes_per_s > 0) bus = o->bus_bytes_per_s;
    if (!o->bus_efficiency.points.empty()) bus *= o->bus_efficiency.at(bytes);
  }

  if (algo == NcclAlgo::kRing) {
    c.latency_s = base + (nsteps - ninter) * intra_lat + ninter * step_inter;
    // Multi-node ring/Simple all-reduce pays 1.4x latency once it is bandwidth-bound ("plateau" effect).
    if (inter && kind == schedule::CollectiveKind::kAllReduce && proto == NcclProto::kSimple &&
        bytes / (chans * nn) >= 64) {
      c.latency_s *= 1.4;
    }
  } else {
    const double ppn = static_cast<double>(span.per_node);
    c.latency_s = base + 2.0 * ((ppn - 1) * intra_lat + std::log2(static_cast<double>(span.nodes)) * step_inter);
    ratio = 0.5;
  }

  // Fewer channels for small messages (enqueue.cc): threads x per-thread threshold bytes per channel.
  double per_channel_bytes = 512.0 * 64.0;                            // Simple: 512 threads x 64 B
  if (proto == NcclProto::kLL128) per_channel_bytes = 640.0 * 8.0;    // LL128: 640 threads x 8 B
  if (proto == NcclProto::kLL) per_channel_bytes = 512.0 * 8.0 * nn;  // LL: 8 B x nRanks per thread
  const double used = std::clamp(std::floor(bytes / per_channel_bytes), 1.0, chans);
  c.channels = static_cast<std::uint32_t>(used);
  c.bus_bytes_per_s = bus * used / chans;
  const double alg_bw = c.bus_bytes_per_s * ratio;
  c.bandwidth_time_s = alg_bw > 0 ? bytes / alg_bw : 0.0;
  return c;
}

CommCost CostModel::collective_cost(schedule::CollectiveKind kind, double bytes, const CommSpan& span) const {
  TWINSTEP_ASSERT(kind != schedule::CollectiveKind::kAllToAll, "all_to_all goes through all_to_all_cost");
  if (span.ranks <= 1) return CommCost{};  // NCCL with one rank: a local copy, nothing on the bus
  const auto& nc = profile_.nccl;
  double best_time = std::numeric_limits<double>::infinity();
  double best_full_bw_time = std::numeric_limits<double>::infinity();
  NcclAlgo best_algo = NcclAlgo::kRing;
  NcclProto best_proto = NcclProto::kSimple;
  for (auto algo : nc.algorithms) {
    if (algo == NcclAlgo::kTree && kind != schedule::CollectiveKind::kAllReduce) continue;  // tree: all_reduce only
    for (auto proto : nc.protocols) {
      // NCCL's estimate, from its own constants: the measured overrides say how long the chosen pair takes, not
      // which pair NCCL picks (NCCL never sees them). NCCL chooses with all channels (the shrink comes after).
      const CommCost c = evaluate(kind, bytes, span, algo, proto, false);
      const double chans = std::max<std::uint32_t>(1, span.nodes > 1 ? nc.channels_inter : nc.channels_intra);
      const double full_bw_time = c.latency_s + c.bandwidth_time_s * c.channels / chans;
      if (full_bw_time < best_full_bw_time) {
        best_full_bw_time = full_bw_time;
        best_algo = algo;
        best_proto = proto;
        best_time = c.time_s();
      }
    }
  }
  TWINSTEP_ASSERT(std::isfinite(best_time), "no NCCL algorithm/protocol enabled for %s",
                  schedule::collective_name(kind));
  return evaluate(kind, bytes, span, best_algo, best_proto, true);
}

CommCost CostModel::all_to_all_cost(double max_intra_bytes, double max_inter_bytes, std::uint32_t peers,
                                    double max_peer_bytes, const CommSpan& span) const {
  CommCost c;
  if (peers == 0) return c;
  const auto& node = cluster_.node;
  const auto& nc = profile_.nccl;
  const bool inter = max_inter_bytes > 0 || span.nodes > 1;
  const std::uint32_t channels = nc.p2p_channels_nvlink;
  // NCCL picks LL for a peer's transfer when its bytes <= p2pnChannelsPerPeer x NCCL_P2P_LL_THRESHOLD (enqueue.cc),
  // and p2pnChannelsPerPeer is the fewest channels any peer of the communicator gets (init.cc: the minimum of
  // ncclTopoGetNchannels over the peers, NCCL_NCHANNELS_PER_NET_PEER for a peer on another node), halved on large
  // communicators (NcclConfig::net_channels_per_peer). One network peer therefore lowers the threshold for every
  // peer of a multi-node all-to-all, as in p2p_cost across nodes.
  const std::uint32_t ll_channels = inter ? nc.net_channels_per_peer(span.ranks) : channels;
  const bool ll = max_peer_bytes <= ll_channels * kP2pLLThresholdBytes;
  const int p = ll ? 0 : 2;
  const double eff = ll ? 0.5 : 1.0;  // LL: half the wire carries flags
  const double rounds = std::ceil(static_cast<double>(peers) / std::max<std::uint32_t>(1, nc.p2p_peers_per_round));
  const double step = std::max(span.per_node > 1 ? kNvlinkLatUs[0][p] : 0.0, inter ? kNetLatUs[0][p] : 0.0) * kUs +
                      (inter ? span.switch_hops * cluster_.fabric.hop_latency_s : 0.0);
  c.latency_s = kBaseLatUs[0][p] * kUs + rounds * step;
  double nvl = node.nvlink_nccl_bytes_per_s * eff;
  // alltoall cannot aggregate NICs: one NIC per GPU (nccl-tests#267); PXN keeps traffic on the rail.
  double nic =
      std::max<std::uint32_t>(node.nics_per_gpu, 1) * node.nic_achievable_bytes_per_s * eff * span.fabric_factor;
  const NcclProto proto = ll ? NcclProto::kLL : NcclProto::kSimple;
  if (const auto* o = override_for(CollectiveParamsKind::kAllToAll, NcclAlgo::kRing, proto, inter, span.ranks)) {
    const double b = o->base_latency_s >= 0 ? o->base_latency_s : kBaseLatUs[0][p] * kUs;
    c.latency_s = b + rounds * (o->step_latency_s >= 0 ? o->step_latency_s : step);
    if (o->bus_bytes_per_s > 0) (inter ? nic : nvl) = o->bus_bytes_per_s;
    if (!o->bus_efficiency.points.empty())
      (inter ? nic : nvl) *= o->bus_efficiency.at(max_intra_bytes + max_inter_bytes);
  }
  const double t_intra = max_intra_bytes > 0 ? max_intra_bytes / nvl : 0.0;
  const double t_inter = max_inter_bytes > 0 && nic > 0 ? max_inter_bytes / nic : 0.0;
  c.bandwidth_time_s = std::max(t_intra, t_inter);
  c.channels = channels;
  c.uses_nic = max_inter_bytes > 0;
  c.bus_bytes_per_s = c.bandwidth_time_s > 0 ? (max_intra_bytes + max_inter_bytes) / c.bandwidth_time_s : 0.0;
  c.algo = NcclAlgo::kRing;
  c.proto = proto;
  return c;
}

CommCost CostModel::copy_engine_cost(double bytes, schedule::RankId a, schedule::RankId b) const {
  const auto& node = cluster_.node;
  const std::uint32_t na = cluster_.node_of(a), nb = cluster_.node_of(b);
  TWINSTEP_ASSERT(na == nb, "copy-engine transfer between ranks %u and %u of different nodes", a, b);
  CommCost c;
  // No kernel: no SMs. It shares a GPU's NVLink ports as one NCCL p2p transfer does (the flow model's weight).
  c.holds_sms = false;
  c.channels = profile_.nccl.p2p_channels_nvlink;
  c.hbm_bytes_per_bus_byte = 1.0;
  // Latency: the launch is the op's issue cost (launch_ns); the DMA start-up is not modelled until measured.
  c.latency_s = 0;
  const double bw = node.nvlink_bytes_per_s * profile_.copy_engine.nvlink_efficiency;
  c.bandwidth_time_s = bw > 0 ? bytes / bw : 0.0;
  c.bus_bytes_per_s = bw;
  c.uses_nic = false;
  return c;
}

CommCost CostModel::p2p_cost(double bytes, schedule::RankId a, schedule::RankId b) const {
  const auto& node = cluster_.node;
  const auto& nc = profile_.nccl;
  CommCost c;
  const std::uint32_t na = cluster_.node_of(a), nb = cluster_.node_of(b);
  const bool inter = na != nb;
  c.channels = inter ? nc.p2p_channels_net : nc.p2p_channels_nvlink;
  const bool ll = bytes <= c.channels * kP2pLLThresholdBytes;
  const int p = ll ? 0 : 2;
  const double eff = ll ? 0.5 : 1.0;
  const auto path = cluster_.path(na, nb);
  const double step =
      (inter ? kNetLatUs[0][p] : kNvlinkLatUs[0][p]) * kUs + path.switch_hops * cluster_.fabric.hop_latency_s;
  c.latency_s = kBaseLatUs[0][p] * kUs + step;
  double bw = inter ? std::max<std::uint32_t>(node.nics_per_gpu, 1) * node.nic_achievable_bytes_per_s *
                          path.bandwidth_factor * eff
                    : node.nvlink_nccl_bytes_per_s * eff;
  if (const auto* o = override_for(CollectiveParamsKind::kSendRecv, NcclAlgo::kRing,
                                   ll ? NcclProto::kLL : NcclProto::kSimple, inter, 2)) {
    c.latency_s = (o->base_latency_s >= 0 ? o->base_latency_s : kBaseLatUs[0][p] * kUs) +
                  (o->step_latency_s >= 0 ? o->step_latency_s : step);
    if (o->bus_bytes_per_s > 0) bw = o->bus_bytes_per_s;
    if (!o->bus_efficiency.points.empty()) bw *= o->bus_efficiency.at(bytes);
  }
  c.bandwidth_time_s = bw > 0 ? bytes / bw : 0.0;
  c.uses_nic = inter;
  c.bus_bytes_per_s = bw;
  c.proto = ll ? NcclProto::kLL : NcclProto::kSimple;
  return c;
}

}  // namespace twinstep::sim
