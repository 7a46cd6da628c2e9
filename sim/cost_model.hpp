// Cost models of the simulator: a calibration profile (versioned JSON; datasheet defaults when none is given)
// and the CostModel that turns ops into solo durations and resource demands: roofline compute with per-class
// efficiency tables, NCCL-faithful collective times (algorithm, protocol, channels, ring/tree steps), all-to-all
// and send/recv per peer, and launch costs. Sharing between concurrent activities is the resource model's job.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/units.hpp"
#include "schedule/schedule.hpp"
#include "topologies/cluster.hpp"

namespace twinstep::sim {

/// Efficiency (fraction of peak) over a size axis (FLOPs for GEMM/attention classes, bytes for memory-bound
/// ones), interpolated linearly in log(size) between points and clamped at both ends.
struct EfficiencyTable {
  std::vector<std::pair<double, double>> points;  ///< (size, efficiency), size ascending, efficiency in (0, 1].
  [[nodiscard]] double at(double size) const;
};

/// NCCL's algorithms and protocols, spelled in profiles as NCCL_ALGO / NCCL_PROTO name them, lower case ("ring",
/// "tree"; "ll", "ll128", "simple"): read only by parse_nccl_algo / parse_nccl_proto, written only by to_string.
enum class NcclAlgo : std::uint8_t { kRing, kTree };
enum class NcclProto : std::uint8_t { kLL, kLL128, kSimple };

/// Throw UnknownNameError naming `field` and the accepted spellings.
[[nodiscard]] NcclAlgo parse_nccl_algo(std::string_view text, std::string_view field);
[[nodiscard]] NcclProto parse_nccl_proto(std::string_view text, std::string_view field);
[[nodiscard]] std::string to_string(NcclAlgo algo);
[[nodiscard]] std::string to_string(NcclProto proto);

/// What a measured collective line applies to, spelled in profiles as the "kind" field: a ring collective
/// ("all_reduce", "all_gather", "reduce_scatter", "broadcast"), "any" (those four), or "all_to_all" / "send_recv"
/// (algorithm ring; protocol ll or simple; per-peer round latency and per-GPU bandwidth).
enum class CollectiveParamsKind : std::uint8_t {
  kAny,
  kAllReduce,
  kAllGather,
  kReduceScatter,
  kBroadcast,
  kAllToAll,
  kSendRecv
};
/// Where a measured collective line applies, spelled in profiles as the "span" field: "intra" (within one node) or
/// "inter" (across nodes).
enum class Span : std::uint8_t { kIntra, kInter };

/// Throw UnknownNameError naming `field` and the accepted spellings.
[[nodiscard]] CollectiveParamsKind parse_collective_params_kind(std::string_view text, std::string_view field);
[[nodiscard]] Span parse_span(std::string_view text, std::string_view field);
[[nodiscard]] std::string to_string(CollectiveParamsKind kind);
[[nodiscard]] std::string to_string(Span span);
/// The line kind of an IR collective (all_to_all for kAllToAll; never kAny or kSendRecv).
[[nodiscard]] CollectiveParamsKind params_kind_of(schedule::CollectiveKind kind);

/// An op's name less its layer and micro-batch ("L3.mb2.bwd.fc1_wgrad" -> "bwd.fc1_wgrad", "mb0.fwd.output" ->
/// "fwd.output", "optim.adam" unchanged): what every layer and micro-batch's instance of one op shares, the key of
/// Profile::op_compute. A view into `name`.
[[nodiscard]] std::string_view op_stem(std::string_view name);

/// Whether a profile's measured `gemm_accumulate` table (fp32 epilogue included) prices this kernel where the
/// profile has one: a bf16/fp16 Gemm with accumulate_fp32 (the table is over FLOPs at the bf16 peak; fp8 and grouped
/// accumulating GEMMs, and those accumulating into a C of their output dtype (`accumulate`, which the table did not
/// measure), add the epilogue's bytes to their class's time). A trace fit puts such ops' points there.
[[nodiscard]] bool reads_accumulate_table(const schedule::Kernel& kernel);
/// The same for a profile's measured `gemm_accumulate_bf16` table (calibration's bf16-C probes, the C read and
/// written in bf16 included): a bf16/fp16 Gemm with `accumulate` (gradient_accumulation_fusion with bf16 main grads).
/// Without that table (profiles measured before the probes existed) such a GEMM keeps its class's time plus the
/// epilogue's bytes. Trace fits leave it alone (their points of these ops go to the gemm table, epilogue taken off).
[[nodiscard]] bool reads_accumulate_bf16_table(const schedule::Kernel& kernel);

/// HBM bytes an accumulating GEMM's epilogue moves beyond a plain GEMM's: per C element a read and a write of C
/// (fp32 with accumulate_fp32, the output dtype with accumulate) instead of one write of the output dtype: 6 bytes
/// for a bf16 output into fp32, 2 into bf16; 0 for any other kernel. The cost model adds them, at HBM
/// bandwidth x the profile's memory_efficiency, to a time read from a table measured without the epilogue; a trace
/// fit takes the same seconds off such an op's measured time before its point joins that table (fit_trace.cpp).
[[nodiscard]] double accumulate_epilogue_extra_bytes(const schedule::Kernel& kernel);

/// A measured override of NCCL's latency/bandwidth model for one (collective, algorithm, protocol, span).
/// Negative fields keep the model's value. `kind` kAny matches every ring collective.
struct CollectiveParams {
  CollectiveParamsKind kind = CollectiveParamsKind::kAny;
  NcclAlgo algo = NcclAlgo::kRing;
  NcclProto proto = NcclProto::kSimple;
  Span span = Span::kIntra;
  /// Group size (ranks) it was measured at; 0 = any size. An entry for the collective's own size wins over 0.
  std::uint32_t ranks = 0;
  double base_latency_s = -1;   ///< Paid once per collective.
  double step_latency_s = -1;   ///< Paid per algorithm step (ring: 2(n-1) for all_reduce).
  double bus_bytes_per_s = -1;  ///< Bus bandwidth (nccl-tests busbw) with all channels.
  /// Optional: the achieved fraction of bus_bytes_per_s over message bytes (ring collectives: the IR bytes; all_to_all:
  /// the bytes one GPU moves; send_recv: the bytes sent), measured, interpolated like the compute tables. Empty: 1.
  /// The fit writes it where a protocol's measured bandwidth changes with size more than its line allows.
  EfficiencyTable bus_efficiency;
};

/// NCCL configuration the model follows (defaults: NCCL 2.2x on Hopper with NVLS off).
struct NcclConfig {
  std::vector<NcclAlgo> algorithms{NcclAlgo::kRing, NcclAlgo::kTree};
  std::vector<NcclProto> protocols{NcclProto::kLL, NcclProto::kLL128, NcclProto::kSimple};
  std::uint32_t channels_intra = 24;       ///< Collective channels (CTAs) within a node.
  std::uint32_t channels_inter = 16;       ///< Collective channels across nodes.
  std::uint32_t p2p_channels_nvlink = 32;  ///< CTAs of a send/recv or all-to-all over NVLink.
  std::uint32_t p2p_channels_net = 4;      ///< CTAs per network peer (NCCL_NCHANNELS_PER_NET_PEER).
  std::uint32_t p2p_peers_per_round = 8;   ///< NCCL_MAX_DEV_WORK_P2P_PER_BATCH.
  double net_overhead_s = 1e-6;            ///< Per network post (Intel host), x3 for Simple.

  /// Channels per peer (p2pnChannelsPerPeer) of the p2p operations of a communicator of `ranks` ranks across nodes:
  /// the fewest of any peer, a network peer's p2p_channels_net, then halved while channels x ceil(ranks /
  /// p2p_peers_per_round) exceeds the p2p channels (p2p_channels_nvlink), down to 1, so that every peer fits in one
  /// round of the channels (NCCL src/graph/paths.cc, ncclTopoComputeP2pChannels, when NCCL_NCHANNELS_PER_NET_PEER is
  /// not set). Defaults: 4 up to 64 ranks, 2 up to 128, 1 beyond.
  [[nodiscard]] std::uint32_t net_channels_per_peer(std::uint32_t ranks) const {
    std::uint32_t c = p2p_channels_net < p2p_channels_nvlink ? p2p_channels_net : p2p_channels_nvlink;
    const std::uint32_t per_round = p2p_peers_per_round > 0 ? p2p_peers_per_round : 1;
    const std::uint32_t rounds = (ranks + per_round - 1) / per_round;
    while (c > 1 && c * rounds > p2p_channels_nvlink) c /= 2;
    return c > 0 ? c : 1;
  }
};

/// Interference coefficients (sharing of one GPU between concurrent kernels).
struct Interference {
  double comm_hbm_bytes_per_bus_byte = 2.5;  ///< HBM traffic of a comm kernel per byte of bus traffic.
  std::uint32_t gemm_tile_m = 128;           ///< Output tile of one CTA, for wave quantization.
  std::uint32_t gemm_tile_n = 256;
  /// Query rows per CTA of an attention kernel, for wave quantization; 0: its time scales with the SMs it gets
  /// (no wave steps), as for an attention made of several kernels whose partial waves do not line up (the backend's
  /// causal attention is batched GEMMs and softmax over blocks of the triangle of different sizes,
  /// backend/attention.cpp). The fit chooses by corun.recv_wait's attention shapes.
  std::uint32_t attention_tile_q = 128;
  /// SMs a comm kernel holds per NCCL channel while it waits for its peers (launched, rendezvous not complete: a
  /// recv posted early on its own stream spins until the peer's send arrives). 1 = every CTA resident (NCCL launches
  /// one CTA per channel); 0 = not modelled. Default 0 until measured: the microbenchmark is a GEMM alone and with
  /// a recv waiting on a side stream (calibration/validation/h200x2/REPORT.md names it).
  double waiting_sms_per_channel = 0.0;
  /// SMs per NCCL channel of each further comm kernel waiting on a GPU where one already waits (the first holds
  /// waiting_sms_per_channel x its channels, the one with the most channels counting as the first). Negative: the same
  /// as waiting_sms_per_channel (every waiting kernel holds its own share). Measured: two H200, 1-4 recvs waiting
  /// beside the same kernels, the GPU's slowdown grows less with each further kernel than with the first
  /// (calibration/measured/h200x2/recv_wait_n/README.md); the suite's corun.recv_wait4 group sizes it.
  double waiting_sms_per_channel_more = -1.0;
  /// SMs held by the comm kernels waiting on one GPU, given each one's NCCL channels.
  [[nodiscard]] std::uint32_t waiting_sms(const std::vector<std::uint32_t>& channels) const;
};

/// Host overhead of a training framework (PyTorch eager) on top of the raw launch costs, measured with the
/// framework itself (calibration/scripts/torch_framework.py, fitted by calibration/fit_framework.cpp). Used when
/// lowering Megatron runs (models::RunConfig::host), never for backend-run predictions (the backend has no framework).
/// Negative = not measured. Every field is one key of the profile's "framework" section (kFrameworkFields).
struct FrameworkCosts {
  double per_kernel_launch_s = -1;  ///< Forward: host time per kernel a module launches, beyond the raw launch.
  double per_module_call_s = -1;    ///< Forward: fixed host time of one nn.Module call (the fit's intercept).
  /// Host time of one torch.cuda.Event record or stream wait_event (the EP-overlap path's per-node events).
  /// Optional key "event_record"; without it the lowering keeps 0 ns (no datasheet figure exists for a host cost).
  double event_record_s = -1;
  double per_autograd_node_s = -1;    ///< Backward: host time per autograd node, beyond its kernels' launches.
  double per_kernel_backward_s = -1;  ///< Backward: host time per kernel a node launches, beyond the raw launch.
  double backward_call_s = -1;        ///< Fixed host time of one torch.autograd.backward call.
  double host_sync_s = -1;            ///< One .item() / .tolist() sync with the GPU idle, beyond the raw wake-up.
  double optimizer_step_s = -1;       ///< Fused Adam step(): fixed part.
  double optimizer_per_param_s = -1;  ///< Fused Adam step(): per parameter tensor.
  double optimizer_per_group_s = -1;  ///< Fused Adam step(): per parameter group.
  /// The alltoall dispatcher's host pieces of one MoE forward (router, preprocess with its D2H count sync,
  /// permute, unpermute), each the measured host time less the raw launches of the kernels it launched.
  double moe_router_s = -1;
  double moe_preprocess_s = -1;
  double moe_permute_s = -1;
  double moe_unpermute_s = -1;
  /// One combined-1F1B schedule node beyond its two events and its body: stream switch, detach/requires_grad,
  /// record_stream, state release (the plain-torch proxy of torch_framework.py).
  double ep_node_s = -1;
  /// Optional key "moe_routing_calls": the eager MoE routing's host time per torch call from its microbenchmark
  /// (calibration/fit_moe_routing.hpp), by "fwd.<group>" (EagerKernel::group) and "bwd.<segment>" (one segment's
  /// backward), as [experts, seconds] points: the measured host time less what the lowering and the simulator charge
  /// apart (raw launches, a sync's wake-up, framework share and GPU wait; a backward's call and per-node costs).
  std::map<std::string, EfficiencyTable> moe_routing_calls;
  std::string source;  ///< How it was measured (script, framework version).
};

/// The profile keys of FrameworkCosts' figures, in file order, with their members: one list for reading,
/// writing, the fit and the lowering's host costs.
struct FrameworkField {
  const char* key;
  double FrameworkCosts::*member;
  const char* what;  ///< Shown in outputs ("per kernel launch").
};
inline constexpr FrameworkField kFrameworkFields[] = {
    {"per_kernel_launch", &FrameworkCosts::per_kernel_launch_s, "per kernel launch"},
    {"per_module_call", &FrameworkCosts::per_module_call_s, "per module call"},
    {"event_record", &FrameworkCosts::event_record_s, "per event record/wait"},
    {"per_autograd_node", &FrameworkCosts::per_autograd_node_s, "per autograd node"},
    {"per_kernel_backward", &FrameworkCosts::per_kernel_backward_s, "per backward kernel"},
    {"backward_call", &FrameworkCosts::backward_call_s, "per autograd backward call"},
    {"host_sync", &FrameworkCosts::host_sync_s, "per host sync"},
    {"optimizer_step", &FrameworkCosts::optimizer_step_s, "optimizer step"},
    {"optimizer_per_param", &FrameworkCosts::optimizer_per_param_s, "optimizer per parameter"},
    {"optimizer_per_group", &FrameworkCosts::optimizer_per_group_s, "optimizer per group"},
    {"moe_router", &FrameworkCosts::moe_router_s, "MoE router"},
    {"moe_preprocess", &FrameworkCosts::moe_preprocess_s, "MoE preprocess"},
    {"moe_permute", &FrameworkCosts::moe_permute_s, "MoE permute"},
    {"moe_unpermute", &FrameworkCosts::moe_unpermute_s, "MoE unpermute"},
    {"ep_node", &FrameworkCosts::ep_node_s, "per EP-overlap node"},
};

/// Device memory the framework and the runtime take beyond the model's tensors, measured on the GPU by
/// calibration/scripts/torch_memory_overhead.py (`twinstep calibrate --memory`). Negative = not measured: the
/// lowering keeps its datasheet default (models::MemoryCosts, docs/memory.md).
struct MemoryOverhead {
  double cuda_context_bytes = -1;                 ///< CUDA context and library modules, outside the allocator.
  double cublas_workspace_bytes = -1;             ///< cuBLAS workspace held in the caching allocator.
  double nccl_buffer_bytes_per_channel = -1;      ///< NCCL buffers per channel of a communicator.
  double allocator_reserved_over_allocated = -1;  ///< The caching allocator's reserved / allocated at the peak.
  std::string source;                             ///< How it was measured (script, torch/CUDA/NCCL versions, GPU).
};

/// The copy engine's peer copy (send/recv transport copy_engine: TE userbuffers' ring exchange with use_ce): the
/// fraction of the node's NVLink line rate (per direction) one cudaMemcpyPeerAsync between two GPUs reaches. Measured
/// by calibrate's `p2p.copy_engine` group on two GPUs (calibration/fit_collectives.cpp); the default is the published
/// HGX H100 figure, 371-377 GB/s of 450 GB/s (CUDA samples' p2pBandwidthLatencyTest, P2P writes, NVIDIA/nccl#1264).
struct CopyEngine {
  static constexpr double kDefaultNvlinkEfficiency = 376.0 / 450.0;
  static constexpr const char* kDefaultSource =
      "datasheet: 376/450 of the NVLink line rate, HGX H100 cudaMemcpyPeerAsync 371-377 GB/s (NVIDIA/nccl#1264)";
  double nvlink_efficiency = kDefaultNvlinkEfficiency;
  std::string source = kDefaultSource;  ///< Where the figure comes from (profile JSON "copy_engine.source").
};

/// The quality of one fit, recorded in the profile: relative error of the fitted model at every point.
struct FitSummary {
  std::string name;  ///< "compute.gemm", "coll.all_reduce.span2", "launch.compute", "interference", ...
  std::uint32_t points = 0;
  double mean_abs_rel_error = 0;
  double max_abs_rel_error = 0;
  std::string note;
};

/// Whether predict and simulate solve the SM clock under the power cap (sim/clock_model.hpp).
enum class ClockMode : std::uint8_t { kNone, kPowerCap };

/// Optional ("clock_model"): the SM clock under the board's power cap, from the power and clock microbenchmarks
/// (docs/calibration.md section 8; never from step times). Power figures are above idle at max_mhz.
struct ClockModel {
  ClockMode mode = ClockMode::kNone;  ///< The profile's default; `--clock-model` overrides it.
  double power_limit_w = 0;           ///< 0: no clock model in the profile.
  double idle_w = 0;
  double max_mhz = 0;
  double min_mhz = 300;          ///< Lower end of the clock search.
  double power_exponent = 0;     ///< Power of a compute-bound class ~ f^power_exponent.
  double time_exponent = 0;      ///< Duration of a compute-bound class ~ f^-time_exponent.
  EfficiencyTable gemm_power_w;  ///< (FLOPs of one GEMM, W above idle at max_mhz), interpolated as the tables are.
  double attention_w = 0;
  double memory_w = 0;  ///< elementwise, optimizer, memcpy (their time does not depend on the clock).
  double comm_w = 0;    ///< Collectives, sends and receives, over their whole span (waiting included).
  /// The clock each compute table was measured at (the suite groups' GPU monitor), by table name; a table not named
  /// here is not rescaled and its class draws memory_w.
  std::map<std::string, double> measured_mhz;
  std::string source;

  [[nodiscard]] bool present() const { return power_limit_w > 0; }
};

/// A calibration profile: everything the cost model takes from measurements. `datasheet_defaults()` holds the
/// documented defaults; a profile file overrides any part of it.
struct Profile {
  static constexpr int kSchemaVersion = 1;
  std::string name = "datasheet defaults";         ///< Shown in outputs: "datasheet defaults" or the file path.
  std::map<std::string, std::string> context;      ///< GPU, driver, NCCL, date... of the measurements.
  std::map<std::string, EfficiencyTable> compute;  ///< By kernel class (schedule::kernel_class names).
  /// Optional ("op_compute"): by op stem (op_stem(): the op's name less its layer and micro-batch, "fwd.rope",
  /// "bwd.fc1_wgrad"), the efficiency of that op as one framework implements it, over the same size as its class
  /// table; it wins over the class table for ops so named. Fitted from a real step's trace (calibrate --from-trace):
  /// a framework's op (eager RoPE: several kernels) moves a multiple of the bytes the IR counts that the class
  /// table, shared by every op of the class, cannot hold.
  std::map<std::string, EfficiencyTable> op_compute;
  double memory_efficiency = 0.9;          ///< Achievable fraction of HBM bandwidth for streaming kernels.
  std::map<std::string, double> launch_s;  ///< Host issue cost by op class (see CostModel::launch_ns).
  std::vector<CollectiveParams> collectives;
  NcclConfig nccl;
  Interference interference;
  /// Shortest GPU time of any kernel (launch-to-completion of an empty-ish kernel); 0 = none.
  double kernel_floor_s = 0;
  /// false (schema 1 default): every compute table is over FLOPs. true ("memory_tables": "bytes"): the tables of
  /// the memory-bound classes (elementwise, optimizer, memcpy) are HBM efficiency over bytes moved, replacing
  /// memory_efficiency for that class.
  bool memory_tables_by_bytes = false;
  /// false (default; FlashAttention semantics): a causal attention kernel skips the masked half of the scores, so
  /// its time follows its causal FLOPs. true ("attention_causal_work": "full"): the measured implementation computes
  /// the whole s_q x s_kv score matrix whether causal or not (twinstep's backend: S = QK^T, softmax, PV over the full
  /// matrix, backend/executor.cpp), so a kernel's time depends on its shape only; the attention tables, fitted from
  /// causal probes, are then looked up with every kernel's causal FLOPs count.
  bool attention_full_scores = false;
  /// false (schema 1 default): the grouped_gemm table is over a grouped GEMM's total FLOPs. true
  /// ("grouped_gemm_table": "per_group"): it is over FLOPs per non-empty group, and a grouped GEMM of g groups takes
  /// g times the time of one group at that efficiency. The backend runs a grouped GEMM as one cuBLAS GEMM per group,
  /// issued by the host one after the other (launch.compute each), so its time follows the group's shape and the
  /// group count, not the total FLOPs: at equal total FLOPs, 32 groups of twice the rows take about half the time of
  /// 64 groups when the issue of each group's call bounds it.
  bool grouped_gemm_per_group = false;
  FrameworkCosts framework;
  MemoryOverhead memory_overhead;
  CopyEngine copy_engine;
  std::vector<FitSummary> fits;
  ClockModel clock_model;  ///< Optional ("clock_model"); absent: present() is false.
  /// The file's "name" field, which profile_to_json() writes (`name` adds the file path for display); empty: none.
  std::string declared_name;
  /// Fields that datasheet_defaults() sets and the profile file lacks ("compute.attention_bwd", "memory_efficiency",
  /// "launch.memcpy"), so their datasheet values are used; profile_to_json() leaves them out. Empty for
  /// datasheet_defaults() itself.
  std::vector<std::string> missing_fields;

  [[nodiscard]] static Profile datasheet_defaults();
};

/// Reads a profile JSON (format: docs in sim/profile.cpp; example in tests/sim/data). Missing sections keep the
/// datasheet defaults. Throws ParseError naming the file and field.
[[nodiscard]] Profile read_profile(const std::string& path);
[[nodiscard]] Profile profile_from_json(const std::string& text, const std::string& source);

/// The profile as JSON text (2-space indent, keys sorted, a final newline), as calibration writes it:
/// profile_from_json() reads it back to the same profile. Quantities are SI numbers; fields in `missing_fields` are
/// left out, and NCCL and tile settings only where they differ from the defaults.
[[nodiscard]] std::string profile_to_json(const Profile& profile);

/// The GPU model of a GPU name, for matching profiles to clusters: "H200" of "NVIDIA H200" and "H200 SXM", "H100"
/// of "NVIDIA H100 80GB HBM3" (the first word with a digit, upper case); "" when no word has a digit.
[[nodiscard]] std::string gpu_model(const std::string& name);

/// Warnings about using `profile` on `cluster`, one line each (empty when none): a profile measured on another GPU
/// model than the cluster's (context "gpu" against the cluster's GPU name, compared by model, "H200" of "NVIDIA
/// H200" and "H200 SXM"), and the fields it leaves to the datasheet (`missing_fields`).
[[nodiscard]] std::vector<std::string> profile_warnings(const Profile& profile, const topologies::Cluster& cluster);

/// Solo cost of a compute kernel and what it needs from the GPU.
struct KernelCost {
  double flop_time_s = 0;          ///< FLOPs / (peak x efficiency) with every SM.
  double mem_bytes = 0;            ///< Bytes through `mem` at its rate.
  double mem_bytes_per_s = 0;      ///< HBM (x memory efficiency) or PCIe for host copies.
  bool uses_hbm = true;            ///< false for host<->device copies (copy engine over PCIe).
  std::uint64_t tiles = 0;         ///< CTAs of a tiled kernel (wave quantization); 0 = not tiled.
  std::uint32_t reserved_sms = 0;  ///< > 0: the kernel holds these SMs (fused comm kernels).
  [[nodiscard]] double solo_time_s() const;
};

/// Hash of a compute op's kernel and SM reservation: the key of kernel cost caches (the analytic model's per
/// simulation, evaluate/critical_path's), which look a shape's cost up once however often the step repeats it.
struct ComputeHash {
  [[nodiscard]] std::size_t operator()(const schedule::Compute& c) const;
};

/// How a collective (or p2p transfer) runs when nothing else shares its resources.
struct CommCost {
  double latency_s = 0;
  double bandwidth_time_s = 0;
  std::uint32_t channels = 0;  ///< CTAs held on every member GPU (its connections when it holds none).
  /// false: a copy-engine transfer, which holds no SMs (channels then only weigh its share of shared links).
  bool holds_sms = true;
  /// HBM bytes per bus byte on each member: 0 = the profile's comm_hbm_bytes_per_bus_byte (NCCL kernels, their
  /// FIFO traffic included); a copy engine moves each byte once through each side's HBM (1).
  double hbm_bytes_per_bus_byte = 0;
  bool uses_nic = false;       ///< Some member sends or receives over its NIC.
  double bus_bytes_per_s = 0;  ///< Bus bandwidth it runs at (for HBM interference).
  NcclAlgo algo = NcclAlgo::kRing;
  NcclProto proto = NcclProto::kSimple;
  [[nodiscard]] double time_s() const { return latency_s + bandwidth_time_s; }
};

/// Where the members of a communication op sit.
struct CommSpan {
  std::uint32_t ranks = 0;     ///< Communicator size (full size, even in a reduced schedule).
  std::uint32_t nodes = 0;     ///< Distinct nodes spanned.
  std::uint32_t per_node = 0;  ///< Most members on one node.
  std::uint32_t switch_hops = 0;
  double fabric_factor = 1.0;  ///< Bandwidth factor of the worst fabric path (oversubscription).
};

/// Efficiency tables the cost model reads by slot, by their names in a profile's "compute" section: one per kernel
/// class, then the measured accumulating-GEMM tables (slot 7, read for Gemms with accumulate_fp32, slot 8 for those
/// with accumulate into a bf16 C, when the profile has them), the measured non-causal attention tables (slots 9 and
/// 10, read for non-causal attention kernels when the profile has them). The profile reader accepts these names only.
/// Optional "launch" keys beyond the op classes: one extra group's GEMM call of a grouped GEMM, one event record or
/// stream wait (CostModel::host_tail_ns; a grouped GEMM forks to schedule::kGroupedGemmStreams side streams).
inline constexpr const char* kGroupedGemmGroupLaunch = "grouped_gemm_group";
inline constexpr const char* kEventLaunch = "event";

inline constexpr int kKernelTableSlots = 11;
inline constexpr std::array<const char*, kKernelTableSlots> kComputeTableNames = {"gemm",
                                                                                  "grouped_gemm",
                                                                                  "attention_fwd",
                                                                                  "attention_bwd",
                                                                                  "elementwise",
                                                                                  "optimizer",
                                                                                  "memcpy",
                                                                                  "gemm_accumulate",
                                                                                  "gemm_accumulate_bf16",
                                                                                  "attention_noncausal_fwd",
                                                                                  "attention_noncausal_bwd"};

class CostModel {
 public:
  CostModel(const topologies::Cluster& cluster, Profile profile);

  [[nodiscard]] const Profile& profile() const { return profile_; }
  [[nodiscard]] const topologies::Cluster& cluster() const { return cluster_; }

  /// Host time to issue `op`: by class "compute", "memcpy", "collective", "send", "recv"; host_sync: its wake-up
  /// cost after the target completes ("host_sync"); host ops: 0 (they carry their duration).
  [[nodiscard]] Nanos launch_ns(const schedule::Op& op) const;
  /// Host time `op` keeps the host thread busy after its issue (launch_ns): a grouped GEMM of G non-empty groups runs
  /// one GEMM call per group over min(groups, 4) side streams forked from and joined to its stream by events
  /// (backend/grouped_gemm.cpp, Transformer Engine's nvte_multi_stream_cublas_gemm), so after its first group's
  /// launch the host issues the other G - 1 ("launch.grouped_gemm_group" each; default: the profile's
  /// launch.compute) and the fork/join event calls, 1 + 3 x streams ("launch.event" each; default 0, not measured).
  /// 0 for every other op.
  [[nodiscard]] Nanos host_tail_ns(const schedule::Op& op) const;
  /// `op_name`: the op's name, when known; an op whose stem has a table in the profile's op_compute reads that
  /// table instead of its class table.
  [[nodiscard]] KernelCost kernel_cost(const schedule::Compute& c, std::string_view op_name = {}) const;
  /// The op_compute table of the op named `op_name`, or nullptr (no such table, or no name).
  [[nodiscard]] const EfficiencyTable* op_table(std::string_view op_name) const;
  /// Span of a communicator from its members (Megatron placement on the cluster).
  [[nodiscard]] CommSpan span(const schedule::Communicator& comm) const;
  /// NCCL ring/tree collective (all_reduce, all_gather, reduce_scatter, broadcast). `bytes` as in the IR. The
  /// algorithm and protocol are chosen as NCCL chooses them, by its own cost model with its constants (never by the
  /// profile's measured overrides); the returned time is the chosen pair's, with the overrides.
  [[nodiscard]] CommCost collective_cost(schedule::CollectiveKind kind, double bytes, const CommSpan& span) const;
  /// All-to-all: per-peer transfers, NVLink within a node, the NIC across nodes; `out`/`in` are per member the
  /// bytes it sends/receives within its node and across nodes, already maximised over members by the caller.
  [[nodiscard]] CommCost all_to_all_cost(double max_intra_bytes, double max_inter_bytes, std::uint32_t peers,
                                         double max_peer_bytes, const CommSpan& span) const;
  /// One send/recv pair between two ranks.
  [[nodiscard]] CommCost p2p_cost(double bytes, schedule::RankId a, schedule::RankId b) const;
  /// One copy-engine transfer (transport copy_engine) between two GPUs of one node: no SMs, the copy engine's
  /// NVLink bandwidth (the profile's copy_engine.nvlink_efficiency x the node's line rate), each byte once through
  /// both HBMs.
  [[nodiscard]] CommCost copy_engine_cost(double bytes, schedule::RankId a, schedule::RankId b) const;

 private:
  /// `measured`: apply the profile's overrides (the time the collective takes); false: NCCL's own tuning constants
  /// (the estimate NCCL chooses the algorithm and protocol by).
  CommCost evaluate(schedule::CollectiveKind kind, double bytes, const CommSpan& span, NcclAlgo algo, NcclProto proto,
                    bool measured) const;
  const CollectiveParams* override_for(CollectiveParamsKind kind, NcclAlgo algo, NcclProto proto, bool inter,
                                       std::uint32_t ranks) const;
  topologies::Cluster cluster_;
  Profile profile_;
  Nanos launch_by_class_[6] = {};  ///< compute, memcpy, collective, send, recv, host_sync.
  Nanos grouped_group_ns_ = 0;     ///< launch.grouped_gemm_group, else launch.compute.
  Nanos event_ns_ = 0;             ///< launch.event, else 0.
  const EfficiencyTable* eff_by_class_[kKernelTableSlots] =
      {};  ///< By kernel_class order; nullptr = no table (roofline 1.0).
};

}  // namespace twinstep::sim
