// A run config: parallel layout, batch, precision, recompute and overlap knobs, with Megatron-Core /
// Megatron-Bridge names so a training recipe carries over unchanged. Parsed from JSON (--config) and from CLI
// flags (cli/run_flags.hpp); the two share these field names.
#pragma once

#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "common/units.hpp"
#include "schedule/schedule.hpp"

namespace twinstep::models {

/// Host-side costs the lowering emits as explicit `host` ops (framework overhead; per-piece costs of the
/// EP-overlap path). Defaults are stated in docs and replaced by a profile's framework section when given.
struct HostCosts {
  Nanos per_module_call_ns = 0;    ///< Python/PyTorch overhead per module forward/backward call.
  Nanos per_kernel_launch_ns = 0;  ///< Framework overhead per op launched (on top of the raw launch cost).
  Nanos event_record_ns = 0;       ///< torch.cuda.Event record / stream wait_event, per call.
  Nanos optimizer_step_ns = 0;     ///< Host work of the optimizer step outside kernels.
  // EP-overlap path (combined 1F1B, megatron-overlap.md 6c item 2): explicit host ops per schedule node.
  Nanos ep_node_ns = 0;           ///< Per node: stream switch, detach/retain-grad, record_stream, state release.
  Nanos ep_backward_call_ns = 0;  ///< Per backward node: its own autograd-engine call (run_backward).
};

struct RunConfig {
  // Cluster size and layout (Megatron names). dp is derived: world / (tp * pp * cp) unless set.
  std::uint32_t world_size = 1;
  std::uint32_t tensor_model_parallel_size = 1;
  std::uint32_t pipeline_model_parallel_size = 1;
  std::uint32_t virtual_pipeline_model_parallel_size = 1;  ///< 1 = no interleaving.
  std::uint32_t context_parallel_size = 1;
  std::uint32_t expert_model_parallel_size = 1;
  std::uint32_t expert_tensor_parallel_size = 0;  ///< 0 = same as TP.
  std::uint32_t data_parallel_size = 0;           ///< 0 = derived; if set it must agree.
  bool sequence_parallel = false;

  // Uneven pipeline layouts.
  std::int32_t decoder_first_pipeline_num_layers = -1;  ///< -1 = even split.
  std::int32_t decoder_last_pipeline_num_layers = -1;
  bool account_for_embedding_in_pipeline_split = false;
  bool account_for_loss_in_pipeline_split = false;

  // Batch and precision.
  std::uint32_t micro_batch_size = 1;
  std::uint32_t global_batch_size = 1;
  std::uint32_t seq_length = 4096;
  schedule::DType dtype = schedule::DType::kBF16;
  /// dtype fp8: Megatron's fp8_recipe with the HYBRID format (e4m3 forward, e5m2 gradients): "delayed" (scales
  /// from the amax history) or "tensorwise" (per-tensor current scaling: an amax pass before each cast).
  std::string fp8_recipe = "delayed";
  bool grad_reduce_in_fp32 = false;

  // Recompute: granularity "none" | "selective" | "full"; method "uniform" | "block".
  std::string recompute_granularity = "none";
  std::string recompute_method = "uniform";
  std::uint32_t recompute_num_layers = 0;

  // DP.
  bool use_distributed_optimizer = false;
  bool overlap_grad_reduce = false;
  bool overlap_param_gather = false;
  std::uint64_t bucket_size = 0;  ///< Parameters per DP bucket; 0 = Megatron's default max(40M, 1M * dp).

  // TP / PP / CP.
  bool tp_comm_overlap = false;
  bool overlap_p2p_comm = false;
  bool batch_p2p_comm = true;
  std::string cp_comm_type = "p2p";  ///< "p2p" | "all_gather" | "a2a" | "a2a+p2p".
  std::uint32_t cuda_device_max_connections = 8;
  bool batch_p2p_sync = true;  ///< torch.cuda.synchronize() after every batched P2P exchange (MCore default).
  std::uint32_t microbatch_group_size_per_vp_stage = 0;  ///< 0 = pipeline_model_parallel_size (MCore default).
  bool align_grad_reduce = true;  ///< VPP: dispatch a chunk's grad reduction at the same time on all PP ranks.
  std::vector<std::uint32_t> hierarchical_context_parallel_sizes;  ///< For cp_comm_type "a2a+p2p": {inner, outer}.
  std::uint32_t gpu_compute_capability_major = 9;  ///< 9 = Hopper; >= 10 lifts the CDMC == 1 requirement.

  // MoE (lowered by the MoE issue; knobs present so configs round-trip).
  std::string moe_token_dispatcher_type = "alltoall";  ///< "alltoall" | "allgather" | "flex".
  bool overlap_moe_expert_parallel_comm = false;
  bool delay_wgrad_compute = false;
  bool moe_shared_expert_overlap = false;
  double moe_routing_skew = 1.0;        ///< 1 = balanced; s > 1: the busiest peer receives s x the mean.
  std::uint32_t moe_flex_num_sms = 20;  ///< SMs the fused flex dispatch/combine kernels hold.

  HostCosts host;
  double gpu_memory_bytes = 80.0 * 1024 * 1024 * 1024;  ///< For the fit verdict (from the cluster's GPU).
};

/// Reads a run config JSON (Megatron field names; unknown fields are errors naming the field). When `present` is not
/// null it receives the top-level field names the file sets (what models/recipe.hpp's defaults must not override).
[[nodiscard]] RunConfig read_run_config(const std::string& path, std::set<std::string>* present = nullptr);

/// Applies an overlap variant ("none", "all", or "+"-joined modes: dp, tp, pp, cp, ep, delay_wgrad,
/// shared_expert) to `base`: sets the Megatron knobs the modes map to and clears the others.
/// Throws twinstep::Error for an unknown mode name.
[[nodiscard]] RunConfig apply_overlap_variant(const RunConfig& base, const std::string& variant);

/// Parses a run config JSON text; `source` names it in errors. Fields absent from the text keep `base`'s values;
/// `present` (if not null) receives the top-level field names the text sets.
[[nodiscard]] RunConfig run_config_from_json(const std::string& text, const std::string& source,
                                             const RunConfig& base = RunConfig{},
                                             std::set<std::string>* present = nullptr);

/// Writes a run config as JSON with the same field names (round trip with run_config_from_json).
[[nodiscard]] std::string run_config_to_json(const RunConfig& config);

/// The derived data-parallel size world / (tp * pp * cp); throws twinstep::Error naming the field if the world
/// is not divisible or a set data_parallel_size disagrees.
[[nodiscard]] std::uint32_t derived_dp(const RunConfig& config);

}  // namespace twinstep::models
