// Lowering of (dense) model x run config to one training step as a schedule, the way Megatron-Core executes it:
// rank order TP fastest then CP, DP, PP; per-layer ops of megatron-overlap.md section 1; TP/SP collectives and TE
// userbuffer overlap (section 3); CP exchanges per cp_comm_type (section 5); 1F1B and interleaved 1F1B with Megatron's
// P2P flags (section 4); DP buckets and grad/param overlap (section 2); gating rules (section 7); MoE layers with
// EP / expert-TP / expert-DP, the alltoall / allgather / flex dispatchers and a routing-skew model, MLA and Gated
// DeltaNet attention, and the EP-overlap combined 1F1B schedule with delay_wgrad_compute (sections 1 and 6).
// Each rank is lowered by a function of its coordinates alone (RankLowering), so that a symmetry-reduced schedule can
// emit only representative ranks.
#include "models/lower.hpp"

#include <algorithm>
#include <cmath>
#include <deque>
#include <numeric>
#include <set>
#include <string_view>
#include <type_traits>
#include <variant>

#include "common/assert.hpp"
#include "common/error.hpp"
#include "schedule/kernel_math.hpp"

namespace twinstep::models {
namespace {

using schedule::Attention;
using schedule::Body;
using schedule::CollectiveKind;
using schedule::CommId;
using schedule::Compute;
using schedule::Elementwise;
using schedule::Gemm;
using schedule::OpId;
using schedule::Phase;
using schedule::RankId;
using schedule::StreamId;

constexpr std::uint64_t kMcoreMinBucket = 40000000;             // MCore: max(40M, 1M * dp) when bucket_size is None
constexpr std::uint64_t kNcclBufferBytesPerComm = 64ull << 20;  // estimate: channels x NCCL_BUFFSIZE per communicator
constexpr std::uint32_t kUbSites = 10;           // TE userbuffer names: {qkv,proj,fc1,fc2}_fprop, 4 dgrad, 2 wgrad
constexpr std::uint32_t kPipelinedRsSplits = 4;  // TE default num_splits for pipelined GEMM+RS (proj/fc2 fprop)

std::string str(std::uint64_t v) { return std::to_string(v); }

// ---------------------------------------------------------------------------------------------------------------
// Validated layout figures.

struct Dims {
  std::uint32_t t = 1, p = 1, v = 1, c = 1, d = 1, m = 1, g = 1;
  bool sp = false;
  std::uint64_t s = 0, b = 1;
  std::uint64_t tokens = 0;     // T = s*b/c: tokens per CP rank (gathered over TP)
  std::uint64_t tokens_sp = 0;  // T / t with SP, else T
  std::uint64_t h = 0, f = 0, ffn1 = 0, nq = 0, nkv = 0, dh = 0, vocab_padded = 0;
  std::uint64_t act_bytes = 2, grad_bytes = 2;
  schedule::DType dtype = schedule::DType::kBF16;
  // Effective overlap switches after gating.
  bool tp_overlap = false, p2p_overlap = false, batch_p2p = true, grad_overlap = false, param_overlap = false;
  bool aligned_param_gather = false;
  std::string cp_type = "p2p";
  std::uint32_t ca = 1, cpo = 1;  // a2a+p2p: inner a2a group size, outer p2p ring size (ca * cpo = c)
  // MoE (megatron-overlap.md sections 1, 6, 7). e = EP, te = expert TP, de = expert DP = t*c*d / (te*e).
  bool moe = false;  // the model has MoE layers
  std::uint32_t e = 1, te = 1, de = 1;
  std::uint64_t experts = 0, local_experts = 0, topk = 0, fe = 0, ffn1e = 0, shared_f = 0;
  std::string dispatcher = "alltoall";
  bool ep_overlap = false, delay_wgrad = false, shared_overlap = false;
  double skew = 1.0;
  std::uint32_t flex_sms = 0;
};

void fail(const std::string& rule, const std::string& fix) { throw Error(rule + "; " + fix); }

/// MoE layout and the EP-overlap / dispatcher gating rules (megatron-overlap.md sections 6d and 7).
void gate_moe(const ModelSpec& model, const RunConfig& cfg, Dims& k, std::vector<std::string>& warnings) {
  bool linear = false;
  for (std::uint32_t i = 0; i < model.num_layers; ++i) {
    k.moe = k.moe || model.is_moe_layer(i);
    linear = linear || model.is_linear_attention_layer(i);
  }
  if (linear) {
    if (model.linear_num_key_heads % k.t != 0 || model.linear_num_value_heads % k.t != 0) {
      fail("linear_num_key_heads and linear_num_value_heads must be divisible by tensor_model_parallel_size",
           "choose a TP size that divides " + str(model.linear_num_key_heads));
    }
    if (k.c > 1) {
      fail("context parallelism with Gated DeltaNet (linear attention) layers is not supported",
           "use context_parallel_size 1 for " + model.name);
    }
    warnings.push_back(
        "Gated DeltaNet layers: the chunked recurrent scan is lowered as a stand-in (batched GEMMs "
        "over 64-token chunks: intra-chunk scores, state update, state output); its cost is an "
        "estimate, not a measured kernel");
  }
  k.e = cfg.expert_model_parallel_size;
  k.te = cfg.expert_tensor_parallel_size == 0 ? k.t : cfg.expert_tensor_parallel_size;
  if (k.e == 0) fail("expert_model_parallel_size must be >= 1", "set --ep 1 or more");
  const std::uint64_t stage = static_cast<std::uint64_t>(k.t) * k.c * k.d;  // ranks per pipeline stage
  if (!k.moe) {
    if (k.e > 1) {
      fail("expert_model_parallel_size " + str(k.e) + " > 1 but model \"" + model.name + "\" has no MoE layers",
           "use --ep 1 for a dense model");
    }
    for (bool on : {cfg.overlap_moe_expert_parallel_comm, cfg.delay_wgrad_compute, cfg.moe_shared_expert_overlap}) {
      if (on) {
        warnings.push_back(
            "MoE overlap knobs (overlap_moe_expert_parallel_comm, delay_wgrad_compute, "
            "moe_shared_expert_overlap) have no effect on a dense model: they are off");
        break;
      }
    }
    k.te = 1;
    return;
  }
  if (stage % (static_cast<std::uint64_t>(k.te) * k.e) != 0) {
    fail("tensor x context x data parallel size per pipeline stage (" + str(stage) +
             ") must be divisible by expert_tensor_parallel_size x expert_model_parallel_size (" +
             str(static_cast<std::uint64_t>(k.te) * k.e) + ") (MCore expert rank generator)",
         "choose EP x ETP dividing the GPUs per pipeline stage");
  }
  k.de = static_cast<std::uint32_t>(stage / (static_cast<std::uint64_t>(k.te) * k.e));
  k.experts = model.num_moe_experts;
  if (k.experts % k.e != 0) {
    fail("num_moe_experts " + str(k.experts) + " must be divisible by expert_model_parallel_size " + str(k.e) +
             " (MCore assert)",
         "choose an EP size that divides the experts (at most " + str(k.experts) + ")");
  }
  k.local_experts = k.experts / k.e;
  k.topk = model.moe_router_topk;
  k.fe = model.moe_ffn_hidden_size;
  if (k.fe % k.te != 0) fail("moe_ffn_hidden_size must be divisible by expert_tensor_parallel_size", "change ETP");
  k.ffn1e = model.gated_linear_unit ? 2 * k.fe : k.fe;
  k.shared_f = static_cast<std::uint64_t>(model.moe_shared_expert_count) * model.moe_shared_expert_intermediate_size;
  if (k.shared_f % k.t != 0) fail("shared expert width must be divisible by tensor_model_parallel_size", "change TP");
  if (k.t > 1 && !k.sp) {
    fail(
        "MoE with tensor_model_parallel_size > 1 needs sequence_parallel (MCore raises at the MoE forward in "
        "training)",
        "add --sp");
  }
  k.dispatcher = cfg.moe_token_dispatcher_type;
  if (k.dispatcher != "alltoall" && k.dispatcher != "allgather" && k.dispatcher != "flex") {
    fail("moe_token_dispatcher_type \"" + k.dispatcher + "\" is unknown", "use alltoall, allgather or flex");
  }
  if (k.dispatcher == "flex" && cfg.gpu_compute_capability_major < 8) {
    warnings.push_back("flex dispatcher (DeepEP/HybridEP) is not supported on this GPU (sm" +
                       str(cfg.gpu_compute_capability_major) + "x); Megatron-Bridge falls back to alltoall");
    k.dispatcher = "alltoall";
  }
  k.skew = cfg.moe_routing_skew;
  if (!(k.skew >= 1.0)) fail("moe_routing_skew must be >= 1 (1 = balanced)", "set --routing-skew 1 or more");
  if (k.skew > static_cast<double>(k.e)) {
    fail("moe_routing_skew " + std::to_string(k.skew) + " exceeds expert_model_parallel_size " + str(k.e) +
             " (the busiest EP rank cannot receive more than every token)",
         "use a skew in [1, EP]");
  }
  k.flex_sms = cfg.moe_flex_num_sms;
  if (k.dispatcher == "flex" && k.flex_sms == 0) fail("moe_flex_num_sms must be >= 1 for flex", "set --flex-sms");
  k.shared_overlap = cfg.moe_shared_expert_overlap;
  k.ep_overlap = cfg.overlap_moe_expert_parallel_comm;
  k.delay_wgrad = cfg.delay_wgrad_compute;
  if (k.shared_overlap && k.dispatcher == "allgather") {
    fail("moe_shared_expert_overlap with the allgather dispatcher (MCore ValueError)",
         "use moe_token_dispatcher_type alltoall or flex, or drop shared_expert overlap");
  }
  if (k.shared_overlap && k.dispatcher == "flex") {
    warnings.push_back(
        "flex dispatcher: Megatron-Bridge apply_flex_dispatcher_backend forces "
        "moe_shared_expert_overlap=False: shared-expert overlap is off");
    k.shared_overlap = false;
  }
  if (k.shared_overlap && k.shared_f == 0) {
    warnings.push_back("moe_shared_expert_overlap: model \"" + model.name +
                       "\" has no shared expert; nothing to "
                       "overlap");
    k.shared_overlap = false;
  }
  if (k.delay_wgrad && !k.ep_overlap) {
    fail("delay_wgrad_compute needs overlap_moe_expert_parallel_comm (MCore assert)",
         "enable EP overlap (variant ep+delay_wgrad) or drop delay_wgrad");
  }
  if (k.ep_overlap) {
    const std::string rule = "overlap_moe_expert_parallel_comm needs ";
    if (k.e <= 1) fail(rule + "expert_model_parallel_size > 1 (MCore assert)", "set --ep 2 or more, or drop ep");
    if (k.experts <= 1) fail(rule + "num_moe_experts > 1 (Bridge assert)", "drop ep overlap");
    if (k.dispatcher != "alltoall" && k.dispatcher != "flex") {
      fail(rule + "moe_token_dispatcher_type alltoall or flex, not \"" + k.dispatcher +
               "\" (a flex backend alone is not enough: the dispatcher type must be flex) (MCore assert)",
           "use --dispatcher alltoall or flex");
    }
    if (cfg.dtype != schedule::DType::kBF16 && cfg.dtype != schedule::DType::kFP16 &&
        cfg.dtype != schedule::DType::kFP8) {
      fail(rule + "bf16 or fp16 (MCore assert)", "use --dtype bf16");
    }
    if (k.p > 1 && k.v == 1) {
      fail(rule + "virtual_pipeline_model_parallel_size when pipeline_model_parallel_size > 1 (MCore assert)",
           "set --vpp 2 or more");
    }
    if (cfg.recompute_granularity == "full") {
      fail(rule + "recompute_granularity != full (MCore assert)", "use --recompute none or selective");
    }
    if (k.shared_overlap) {
      fail("overlap_moe_expert_parallel_comm and moe_shared_expert_overlap are mutually exclusive (MCore assert)",
           "drop one of ep and shared_expert");
    }
    if (model.mtp_num_layers > 1) fail(rule + "mtp_num_layers in {0, 1} (MCore assert)", "set mtp_num_layers <= 1");
    if (cfg.cuda_device_max_connections == 1) {
      warnings.push_back(
          "EP overlap with CUDA_DEVICE_MAX_CONNECTIONS=1: comm and compute kernels start in issue "
          "order (MCore README: CDMC > 1 is required for a benefit)");
    }
  }
  if (model.mtp_num_layers > 0) {
    warnings.push_back("multi-token prediction (mtp_num_layers " + str(model.mtp_num_layers) +
                       ") is not lowered: its layer and loss are left out of the step");
  }
}

/// Applies Megatron's gating rules (warnings for silent disables, errors for assertions) and checks divisibility.
Dims gate(const ModelSpec& model, const RunConfig& cfg, std::vector<std::string>& warnings) {
  Dims k;
  k.t = cfg.tensor_model_parallel_size;
  k.p = cfg.pipeline_model_parallel_size;
  k.v = std::max<std::uint32_t>(1, cfg.virtual_pipeline_model_parallel_size);
  k.c = cfg.context_parallel_size;
  if (k.t == 0 || k.p == 0 || k.c == 0) fail("parallel sizes must be >= 1", "set tp/pp/cp to at least 1");
  k.d = derived_dp(cfg);
  k.sp = cfg.sequence_parallel && k.t > 1;
  if (cfg.sequence_parallel && k.t == 1) {
    warnings.push_back("sequence_parallel with tensor_model_parallel_size=1 has no effect (Megatron disables it)");
  }
  k.b = cfg.micro_batch_size;
  k.s = cfg.seq_length;
  if (k.b == 0 || k.s == 0) fail("micro_batch_size and seq_length must be >= 1", "set them");
  const std::uint64_t per_step = static_cast<std::uint64_t>(k.b) * k.d;
  if (cfg.global_batch_size == 0 || cfg.global_batch_size % per_step != 0) {
    fail("global_batch_size " + str(cfg.global_batch_size) +
             " is not divisible by micro_batch_size x dp = " + str(per_step),
         "choose global_batch_size as a multiple of " + str(per_step));
  }
  k.m = static_cast<std::uint32_t>(cfg.global_batch_size / per_step);
  if (model.num_attention_heads % k.t != 0 || model.num_query_groups % k.t != 0) {
    fail("num_attention_heads (" + str(model.num_attention_heads) + ") and num_query_groups (" +
             str(model.num_query_groups) + ") must be divisible by tensor_model_parallel_size " + str(k.t),
         "choose a TP size that divides the KV groups");
  }
  if (k.c > 1 && k.s % (2ull * k.c) != 0) {
    fail("seq_length " + str(k.s) + " must be divisible by 2 x context_parallel_size = " + str(2ull * k.c),
         "change seq_length or context_parallel_size");
  }
  k.tokens = k.s * k.b / k.c;
  if (k.sp && k.tokens % k.t != 0) {
    fail("sequence_parallel needs seq_length x micro_batch_size / cp (" + str(k.tokens) +
             ") divisible by tensor_model_parallel_size " + str(k.t),
         "change seq_length or TP");
  }
  k.tokens_sp = k.sp ? k.tokens / k.t : k.tokens;
  k.h = model.hidden_size;
  k.f = model.ffn_hidden_size;
  k.ffn1 = model.gated_linear_unit ? 2 * k.f : k.f;
  if (k.f % k.t != 0) fail("ffn_hidden_size must be divisible by tensor_model_parallel_size", "change TP");
  k.nq = model.num_attention_heads;
  k.nkv = model.num_query_groups;
  k.dh = model.kv_channels;
  const std::uint64_t mult = static_cast<std::uint64_t>(model.make_vocab_size_divisible_by) * k.t;
  k.vocab_padded = (model.vocab_size + mult - 1) / mult * mult;
  k.dtype = cfg.dtype == schedule::DType::kFP8 ? schedule::DType::kBF16 : cfg.dtype;  // fp8 GEMMs: not modelled
  if (cfg.dtype == schedule::DType::kFP8) {
    warnings.push_back("dtype fp8: GEMMs and activations are lowered in bf16 (fp8 recipes are not modelled yet)");
  }
  k.act_bytes = schedule::dtype_bytes(k.dtype);
  k.grad_bytes = cfg.grad_reduce_in_fp32 ? 4 : k.act_bytes;

  // Pipeline: interleaving needs PP > 1 (MCore).
  if (k.v > 1 && k.p == 1) {
    fail("virtual_pipeline_model_parallel_size > 1 needs pipeline_model_parallel_size > 1 (MCore)",
         "set --pp > 1 or --vpp 1");
  }
  k.g = cfg.microbatch_group_size_per_vp_stage == 0 ? k.p : cfg.microbatch_group_size_per_vp_stage;
  if (k.v > 1) {
    if (k.g < k.p || k.g > k.m) {
      fail("interleaved schedule: microbatch_group_size_per_vp_stage " + str(k.g) +
               " must be in [pp, micro-batches] = [" + str(k.p) + ", " + str(k.m) + "] (MCore ValueError)",
           "raise global_batch_size so that micro-batches per rank >= pp");
    }
    if (k.m % k.g != 0 && k.m % k.g < k.p) {
      fail("interleaved schedule: micro-batches " + str(k.m) + " mod group size " + str(k.g) +
               " must be 0 or >= pp (MCore RuntimeError)",
           "make the number of micro-batches a multiple of " + str(k.g));
    }
  }
  // P2P gating (section 7).
  k.p2p_overlap = cfg.overlap_p2p_comm;
  k.batch_p2p = cfg.batch_p2p_comm;
  if (k.p2p_overlap && k.v == 1) {
    warnings.push_back(
        "overlap_p2p_comm needs the interleaved schedule (virtual_pipeline_model_parallel_size > 1); "
        "MLM sets it to False when VPP is None: P2P overlap is off");
    k.p2p_overlap = false;
  }
  if (k.p2p_overlap && k.batch_p2p) {
    fail("overlap_p2p_comm and batch_p2p_comm are both set (MCore interleaved schedule raises ValueError)",
         "set batch_p2p_comm=false (--no-batch-p2p-comm) with overlap_p2p_comm");
  }
  if (k.v > 1 && !k.p2p_overlap && k.p <= 2) {
    fail("interleaved schedule without overlap_p2p_comm needs pipeline_model_parallel_size > 2 (MLM assert)",
         "set overlap_p2p_comm=true (with batch_p2p_comm=false) or use pp > 2");
  }
  if (k.p == 1) {
    k.p2p_overlap = false;
    k.batch_p2p = false;
  }
  // TP overlap (Bridge _get_model_comm_overlap_cfgs): silently off when t < 2 or without SP.
  k.tp_overlap = cfg.tp_comm_overlap;
  if (k.tp_overlap && k.t < 2) {
    warnings.push_back(
        "tp_comm_overlap needs tensor_model_parallel_size >= 2; Megatron-Bridge disables it: TP "
        "overlap is off");
    k.tp_overlap = false;
  }
  if (k.tp_overlap && !cfg.sequence_parallel) {
    warnings.push_back("tp_comm_overlap needs sequence_parallel; Megatron-Bridge disables it: TP overlap is off");
    k.tp_overlap = false;
  }
  if (k.tp_overlap && (k.tokens % (std::uint64_t{kPipelinedRsSplits} * k.t) != 0)) {
    fail("tp_comm_overlap: tokens per CP rank (" + str(k.tokens) + ") must split into " + str(kPipelinedRsSplits) +
             " pipelined chunks and " + str(k.t) + " ring chunks",
         "choose seq_length x micro_batch_size / cp divisible by " + str(kPipelinedRsSplits * k.t));
  }
  // CDMC (MLM args): TP or CP > 1 on Hopper needs CUDA_DEVICE_MAX_CONNECTIONS=1.
  if ((k.t > 1 || k.c > 1) && cfg.gpu_compute_capability_major < 10 && cfg.cuda_device_max_connections != 1) {
    if (cfg.overlap_moe_expert_parallel_comm) {
      warnings.push_back("CUDA_DEVICE_MAX_CONNECTIONS != 1 with TP/CP > 1 (allowed with EP overlap; MLM warns)");
    } else {
      fail(
          "tensor or context parallelism > 1 on pre-Blackwell GPUs requires CUDA_DEVICE_MAX_CONNECTIONS=1 (MLM "
          "assert); cuda_device_max_connections is " +
              str(cfg.cuda_device_max_connections),
          "set cuda_device_max_connections=1 (--cdmc 1)");
    }
  }
  // CP type (section 5 and 7).
  k.cp_type = cfg.cp_comm_type;
  if (k.cp_type != "p2p" && k.cp_type != "all_gather" && k.cp_type != "a2a" && k.cp_type != "a2a+p2p") {
    fail("cp_comm_type \"" + k.cp_type + "\" is unknown", "use p2p, all_gather, a2a or a2a+p2p");
  }
  if (k.c > 1 && k.cp_type == "a2a" && ((k.nq / k.t) % k.c != 0 || (k.nkv / k.t) % k.c != 0)) {
    fail(
        "cp_comm_type a2a needs attention heads and KV groups per TP rank divisible by context_parallel_size "
        "(TE assert): heads/tp = " +
            str(k.nq / k.t) + ", groups/tp = " + str(k.nkv / k.t) + ", cp = " + str(k.c),
        "use cp_comm_type p2p or a CP size that divides the KV groups per TP rank");
  }
  if (k.c > 1 && k.cp_type == "a2a+p2p") {
    // Hierarchical CP (TE AttnFuncWithCPAndKVP2P with cp_group = [a2a group, p2p group]; megatron-overlap.md 5):
    // Megatron builds the groups from hierarchical_context_parallel_sizes, the first level of consecutive CP ranks.
    const auto& hs = cfg.hierarchical_context_parallel_sizes;
    std::uint64_t prod = 1;
    for (auto x : hs) prod *= x;
    if (hs.empty() || prod != k.c) {
      fail(
          "cp_comm_type a2a+p2p needs hierarchical_context_parallel_sizes whose product is context_parallel_size "
          "(Megatron assert)",
          "set hierarchical_context_parallel_sizes, e.g. [2, " + str(std::max<std::uint32_t>(1, k.c / 2)) + "]");
    }
    if (hs.size() != 2) {
      fail(
          "cp_comm_type a2a+p2p uses two levels (TE takes [a2a group, p2p group]); hierarchical_context_parallel_"
          "sizes has " +
              str(hs.size()) + " entries",
          "give [a2a size, p2p size], e.g. [2, " + str(std::max<std::uint32_t>(1, k.c / 2)) + "]");
    }
    k.ca = hs[0];
    k.cpo = hs[1];
    if ((k.nq / k.t) % k.ca != 0 || (k.nkv / k.t) % k.ca != 0) {
      fail(
          "cp_comm_type a2a+p2p needs attention heads and KV groups per TP rank divisible by the a2a size "
          "hierarchical_context_parallel_sizes[0] (TE assert): heads/tp = " +
              str(k.nq / k.t) + ", groups/tp = " + str(k.nkv / k.t) + ", a2a size = " + str(k.ca),
          "choose an a2a size that divides the KV groups per TP rank");
    }
  }
  // Recompute.
  if (cfg.recompute_granularity != "none" && cfg.recompute_granularity != "selective" &&
      cfg.recompute_granularity != "full") {
    fail("recompute_granularity \"" + cfg.recompute_granularity + "\" is unknown", "use none, selective or full");
  }
  if (cfg.recompute_granularity == "full") {
    if (cfg.recompute_method != "uniform" && cfg.recompute_method != "block") {
      fail("recompute_method \"" + cfg.recompute_method + "\" is unknown", "use uniform or block");
    }
    if (cfg.recompute_num_layers == 0) {
      fail("recompute_granularity full needs recompute_num_layers >= 1 (MLM assert)", "set recompute_num_layers");
    }
  }
  // DP (section 2 and 7).
  k.grad_overlap = cfg.overlap_grad_reduce;
  k.param_overlap = cfg.overlap_param_gather;
  if (k.param_overlap && !(cfg.use_distributed_optimizer && cfg.overlap_grad_reduce)) {
    fail("overlap_param_gather needs use_distributed_optimizer and overlap_grad_reduce (MLM assert)",
         "enable --distributed-optimizer and --overlap-grad-reduce, or drop --overlap-param-gather");
  }
  if (static_cast<std::uint64_t>(k.d) * k.c == 1) {
    if (k.grad_overlap || k.param_overlap) {
      warnings.push_back(
          "overlap_grad_reduce/overlap_param_gather with data-parallel x context-parallel size 1: "
          "there is nothing to reduce; DP overlap is off");
    }
    k.grad_overlap = false;
    k.param_overlap = false;
  }
  // align_param_gather: Bridge sets it when p > 1 and v > 1; MLM forces it off without VPP.
  k.aligned_param_gather = k.param_overlap && k.p > 1 && k.v > 1;
  gate_moe(model, cfg, k, warnings);
  return k;
}

// ---------------------------------------------------------------------------------------------------------------
// Pipeline layout.

/// Layers of every virtual stage (index chunk * p + pp_rank).
std::vector<std::vector<std::uint32_t>> virtual_stage_layers(const ModelSpec& model, const RunConfig& cfg) {
  const std::uint32_t p = std::max<std::uint32_t>(1, cfg.pipeline_model_parallel_size);
  const std::uint32_t v = std::max<std::uint32_t>(1, cfg.virtual_pipeline_model_parallel_size);
  const std::uint32_t stages = p * v;
  const std::uint32_t L = model.num_layers;
  std::vector<std::uint32_t> count(stages, 0);
  const bool acc_emb = cfg.account_for_embedding_in_pipeline_split;
  const bool acc_loss = cfg.account_for_loss_in_pipeline_split;
  const bool uneven = cfg.decoder_first_pipeline_num_layers >= 0 || cfg.decoder_last_pipeline_num_layers >= 0;
  if ((acc_emb || acc_loss) && uneven) {
    fail("account_for_embedding/loss_in_pipeline_split cannot be combined with decoder_first/last_pipeline_num_layers",
         "use one way of making the pipeline uneven");
  }
  if (acc_emb || acc_loss) {
    const std::uint32_t slots = L + (acc_emb ? 1 : 0) + (acc_loss ? 1 : 0);
    if (slots % stages != 0) {
      fail("num_layers " + str(L) + " plus embedding/loss slots (" + str(slots) +
               ") must be divisible by pp x vpp = " + str(stages) + " (account_for_*_in_pipeline_split)",
           "change pp/vpp or the account_for_* flags");
    }
    std::fill(count.begin(), count.end(), slots / stages);
    if (acc_emb) count[0] -= 1;
    if (acc_loss) count[stages - 1] -= 1;
  } else if (uneven) {
    std::vector<std::int64_t> per_rank(p, -1);
    std::uint32_t fixed = 0, fixed_ranks = 0;
    if (cfg.decoder_first_pipeline_num_layers >= 0) {
      per_rank[0] = cfg.decoder_first_pipeline_num_layers;
      fixed += static_cast<std::uint32_t>(cfg.decoder_first_pipeline_num_layers);
      ++fixed_ranks;
    }
    if (cfg.decoder_last_pipeline_num_layers >= 0) {
      if (p == 1 && per_rank[0] >= 0) fail("pp=1 cannot have both first and last stage sizes", "drop one");
      per_rank[p - 1] = cfg.decoder_last_pipeline_num_layers;
      fixed += static_cast<std::uint32_t>(cfg.decoder_last_pipeline_num_layers);
      ++fixed_ranks;
    }
    if (fixed > L) fail("decoder_first/last_pipeline_num_layers exceed num_layers", "lower them");
    const std::uint32_t middle = p - fixed_ranks;
    const std::uint32_t rest = L - fixed;
    if ((middle == 0 && rest != 0) || (middle > 0 && rest % middle != 0)) {
      fail("the " + str(rest) + " layers left after decoder_first/last_pipeline_num_layers must split evenly over " +
               str(middle) + " middle pipeline stages",
           "adjust decoder_first/last_pipeline_num_layers");
    }
    for (std::uint32_t r = 0; r < p; ++r) {
      if (per_rank[r] < 0) per_rank[r] = middle ? rest / middle : 0;
      if (per_rank[r] % v != 0) {
        fail("pipeline stage " + str(r) + " has " + str(per_rank[r]) + " layers, not divisible by vpp " + str(v),
             "choose stage sizes divisible by virtual_pipeline_model_parallel_size");
      }
      for (std::uint32_t j = 0; j < v; ++j) count[j * p + r] = static_cast<std::uint32_t>(per_rank[r] / v);
    }
  } else {
    if (L % stages != 0) {
      fail("num_layers " + str(L) + " is not divisible by pp x vpp = " + str(stages),
           "use decoder_first/last_pipeline_num_layers or account_for_embedding/loss_in_pipeline_split (e.g. "
           "126 layers on pp=16: --account-for-embedding --account-for-loss)");
    }
    std::fill(count.begin(), count.end(), L / stages);
  }
  std::vector<std::vector<std::uint32_t>> out(stages);
  std::uint32_t next = 0;
  for (std::uint32_t vs = 0; vs < stages; ++vs) {
    for (std::uint32_t i = 0; i < count[vs]; ++i) out[vs].push_back(next++);
  }
  TWINSTEP_ASSERT(next == L, "layout assigned %u of %u layers", next, L);
  return out;
}

// ---------------------------------------------------------------------------------------------------------------
// Parameters of a chunk in registration order, for DP buckets and memory.

struct Param {
  std::string name;
  std::uint64_t numel = 0;
  bool shared_embedding = false;
  bool expert = false;     // MoE expert weights: the expert buffer, reduced over expert-DP
  bool sp_reduce = false;  // replicated over TP with SP (norms, MLA down projections): TP all-reduce in finalize
};

/// Parameters of transformer layer `l` on one rank (TP- and EP-sharded), in registration order.
void layer_params_of(const ModelSpec& model, const Dims& k, std::uint32_t l, std::vector<Param>& out) {
  const std::uint64_t t = k.t, h = k.h;
  const std::string L = "L" + str(l) + ".";
  const std::uint64_t norm = model.normalization == "LayerNorm" ? 2 * h : h;
  const bool bias = model.add_bias_linear;
  out.push_back({L + "ln1", norm, false, false, true});
  if (model.is_linear_attention_layer(l)) {  // Gated DeltaNet
    const std::uint64_t nk = model.linear_num_key_heads, nv = model.linear_num_value_heads;
    const std::uint64_t dk = model.linear_key_head_dim, dv = model.linear_value_head_dim;
    const std::uint64_t conv_dim = 2 * nk * dk + nv * dv;
    out.push_back({L + "in_proj", h * (2 * nk * dk + 2 * nv * dv + 2 * nv) / t});
    out.push_back({L + "conv", (conv_dim * model.linear_conv_kernel_dim + 2 * nv) / t + dv});
    out.push_back({L + "out_proj", nv * dv / t * h});
  } else if (model.uses_mla()) {
    const std::uint64_t nq = k.nq, qk = model.qk_head_dim, rope = model.qk_pos_emb_head_dim, v = model.v_head_dim;
    if (model.q_lora_rank > 0) {
      out.push_back({L + "q_down", h * model.q_lora_rank + model.q_lora_rank, false, false, true});
      out.push_back({L + "q_up", model.q_lora_rank * nq * (qk + rope) / t});
    } else {
      out.push_back({L + "q_up", h * nq * (qk + rope) / t});
    }
    out.push_back({L + "kv_down", h * (model.kv_lora_rank + rope) + model.kv_lora_rank, false, false, true});
    out.push_back({L + "kv_up", model.kv_lora_rank * nq * (qk + v) / t});
    out.push_back({L + "proj", nq * v / t * h});
  } else {
    const std::uint64_t qkv_out = ((model.attention_output_gate ? 2 : 1) * k.nq + 2 * k.nkv) * k.dh / t;
    out.push_back({L + "qkv", h * qkv_out + ((bias || model.add_qkv_bias) ? qkv_out : 0)});
    out.push_back({L + "proj", k.nq * k.dh / t * h + (bias ? h : 0)});
  }
  out.push_back({L + "ln2", norm, false, false, true});
  if (model.is_moe_layer(l)) {
    out.push_back({L + "router", h * k.experts});
    out.push_back({L + "experts.fc1", k.local_experts * h * k.ffn1e / k.te, false, true});
    out.push_back({L + "experts.fc2", k.local_experts * k.fe / k.te * h, false, true});
    if (k.shared_f > 0) {
      const std::uint64_t sf1 = model.gated_linear_unit ? 2 * k.shared_f : k.shared_f;
      out.push_back({L + "shared.fc1", h * sf1 / t + (model.moe_shared_expert_gate ? h : 0)});
      out.push_back({L + "shared.fc2", k.shared_f / t * h});
    }
  } else {
    out.push_back({L + "fc1", h * k.ffn1 / t + (bias ? k.ffn1 / t : 0)});
    out.push_back({L + "fc2", k.f / t * h + (bias ? h : 0)});
  }
}

std::vector<Param> chunk_params(const ModelSpec& model, const RunConfig& cfg, const Dims& k, std::uint32_t pp_rank,
                                std::uint32_t chunk, const std::vector<std::uint32_t>& layers) {
  std::vector<Param> out;
  const std::uint64_t t = k.t, h = k.h;
  const bool first = pp_rank == 0 && chunk == 0;
  const bool last = pp_rank == k.p - 1 && chunk == k.v - 1;
  const std::uint64_t norm = model.normalization == "LayerNorm" ? 2 * h : h;
  if (first) {
    out.push_back({"embedding", k.vocab_padded / t * h, model.share_embeddings_and_output_weights && k.p > 1});
    if (model.position_embedding_type == "learned_absolute") {
      out.push_back({"position_embedding", model.max_position_embeddings * h, false});
    }
  }
  for (auto l : layers) layer_params_of(model, k, l, out);
  if (last) {
    out.push_back({"final_norm", norm, false, false, true});
    if (!model.share_embeddings_and_output_weights || k.p > 1) {
      out.push_back({"output", k.vocab_padded / t * h, model.share_embeddings_and_output_weights});
    }
  }
  (void)cfg;
  return out;
}

std::uint64_t round_up(std::uint64_t x, std::uint64_t m) { return (x + m - 1) / m * m; }

/// Buckets of one buffer (dense params, or expert params when `expert`); `dpc` is the buffer's reduction group
/// size (DP x CP for dense, expert-DP for experts), which sets the default bucket size and the padding.
std::vector<DpBucket> make_buckets(const std::vector<Param>& all, const RunConfig& cfg, std::uint64_t dpc,
                                   std::uint32_t pp_rank, std::uint32_t chunk, bool expert) {
  std::vector<Param> params;
  for (const auto& p : all) {
    if (p.expert == expert) params.push_back(p);
  }
  // bucket_size: None without overlap_grad_reduce, or on PP rank > 0, or for chunk > 0 (disable_bucketing).
  std::uint64_t bucket_size = 0;  // 0 = unbounded (one bucket)
  if (cfg.overlap_grad_reduce && pp_rank == 0 && chunk == 0) {
    bucket_size = cfg.bucket_size != 0 ? cfg.bucket_size : std::max<std::uint64_t>(kMcoreMinBucket, 1000000ull * dpc);
  }
  const bool distopt = cfg.use_distributed_optimizer;
  const std::uint64_t end_pad = std::lcm(dpc, std::uint64_t{128});
  std::vector<DpBucket> buckets;
  DpBucket cur;
  cur.expert = expert;
  std::uint64_t bucket_start = 0, pos = 0;
  auto close = [&](std::uint64_t end) {
    const std::uint64_t padded_end = distopt ? round_up(end, end_pad) : end;
    cur.numel = padded_end - bucket_start;
    buckets.push_back(cur);
    cur = DpBucket{};
    cur.expert = expert;
    bucket_start = padded_end;
    pos = padded_end;
  };
  for (auto it = params.rbegin(); it != params.rend(); ++it) {
    if (distopt) pos = round_up(pos, 64);
    if (it->shared_embedding && !cur.params.empty()) close(pos);  // shared embedding gets its own bucket
    if (cur.params.empty()) bucket_start = pos;
    const std::uint64_t end = pos + it->numel;
    cur.params.push_back(it->name);
    cur.param_numel += it->numel;
    if ((bucket_size != 0 && end - bucket_start >= bucket_size) || it->shared_embedding) {
      close(end);
    } else {
      pos = end;
    }
  }
  if (!cur.params.empty()) close(pos);
  return buckets;
}

// ---------------------------------------------------------------------------------------------------------------
// Pipeline orders (section 4b).

struct VirtualTable {
  std::vector<std::pair<std::uint32_t, std::uint32_t>> entries;  // (microbatch, chunk) per forward virtual id
};

VirtualTable schedule_table(std::uint32_t m, std::uint32_t v, std::uint32_t g) {
  VirtualTable table;
  for (std::uint32_t lo = 0; lo < m; lo += g) {
    const std::uint32_t hi = lo + g >= m ? m : lo + g;
    for (std::uint32_t c = 0; c < v; ++c) {
      for (std::uint32_t mb = lo; mb < hi; ++mb) table.entries.emplace_back(mb, c);
    }
    if (hi == m) break;
  }
  return table;
}

// ---------------------------------------------------------------------------------------------------------------
// Global structure shared by all ranks: streams, communicators, per-chunk layers and buckets.

struct Streams {
  StreamId compute = 0, tp = 0, tp_send = 0, tp_recv = 0, cp = 0, cp_recv = 0, cp_a2a = 0, dp = 0;
  StreamId pp_send_next = 0, pp_recv_prev = 0, pp_send_prev = 0, pp_recv_next = 0;
  // MoE: ep = EP all-to-alls (the NCCL ep stream; with EP overlap the comm_stream of the combined schedule, which
  // also runs the combine node's unpermute/residual kernels); tp_ep = count/token all-gathers over expert-TP x EP;
  // etp = expert-TP collectives; dtoh = cuda_dtoh_stream (D2H copies of split sizes); shared = SharedExpertMLP.stream.
  StreamId ep = 0, tp_ep = 0, etp = 0, dtoh = 0, shared = 0;
};

struct Ctx {
  const ModelSpec* model = nullptr;
  const RunConfig* cfg = nullptr;
  Dims k;
  Streams st;
  std::vector<std::vector<std::uint32_t>> vs_layers;        // [chunk * p + pp] -> layers
  std::vector<std::vector<std::vector<DpBucket>>> buckets;  // [pp][chunk]
  std::vector<std::vector<std::vector<Param>>> params;      // [pp][chunk]
  // Communicator id per rank and kind (kNone if the kind is unused).
  std::vector<CommId> tp_of, cp_of, dp_of, pp_of, norm_of, embd_of;
  std::vector<CommId> cpa_of, cpp_of;                  // a2a+p2p: inner a2a group, outer p2p ring (kNone where unused)
  std::vector<std::uint32_t> comm_size;                // [CommId] -> members
  std::vector<CommId> ep_of, etp_of, tpep_of, edp_of;  // MoE expert layout (kNone where unused)
  std::vector<std::vector<std::string>> layer_param_names;  // [layer] -> parameter names (param-gather waits)
  bool recompute_full = false, recompute_selective = false;
  bool op_names = true;  // LowerOptions::op_names
};

constexpr CommId kNone = 0xFFFFFFFFu;

struct Coords {
  std::uint32_t tp = 0, cp = 0, dp = 0, pp = 0;
};

Coords coords_of(const Dims& k, RankId r) {
  Coords co;
  co.tp = r % k.t;
  co.cp = (r / k.t) % k.c;
  co.dp = (r / (k.t * k.c)) % k.d;
  co.pp = r / (k.t * k.c * k.d);
  return co;
}

RankId rank_of(const Dims& k, const Coords& co) { return co.tp + k.t * (co.cp + k.c * (co.dp + k.d * co.pp)); }

/// Expert layout (MCore expert rank generator, order etp-ep-edp-pp): within a pipeline stage the local index
/// i = rank mod (t*c*d) splits into expert-TP (fastest), EP, then expert-DP.
struct ExpertCoords {
  std::uint32_t etp = 0, ep = 0, edp = 0, pp = 0;
};

ExpertCoords expert_coords_of(const Dims& k, RankId r) {
  const std::uint32_t stage = k.t * k.c * k.d;
  const std::uint32_t i = r % stage;
  return ExpertCoords{i % k.te, (i / k.te) % k.e, i / (k.te * k.e), r / stage};
}

RankId expert_rank_of(const Dims& k, const ExpertCoords& co) {
  return co.etp + k.te * (co.ep + k.e * co.edp) + k.t * k.c * k.d * co.pp;
}

/// Token copies one rank sends to each EP position (routing model): balanced by default; with skew s the busiest
/// position (0, holding the hottest experts) gets s x the mean and the rest share the remainder evenly. Every rank
/// routes the same way, so position j receives e x split[j]. The entries sum to `total`.
std::vector<std::uint64_t> ep_split(const Dims& k, std::uint64_t total) {
  const std::uint32_t e = k.e;
  if (e == 1) return {total};
  std::vector<std::uint64_t> out(e, 0);
  std::uint64_t hot = static_cast<std::uint64_t>(std::llround(static_cast<double>(total) * k.skew / e));
  hot = std::min(hot, total);
  if (k.skew == 1.0) hot = total / e + (total % e > 0 ? 1 : 0);
  out[0] = hot;
  const std::uint64_t rest = total - hot;
  for (std::uint32_t j = 1; j < e; ++j) out[j] = rest / (e - 1) + ((j - 1) < rest % (e - 1) ? 1 : 0);
  return out;
}

// ---------------------------------------------------------------------------------------------------------------
// Per-rank lowering.

/// A name assembled only where it is used: head, tail, then num (if >= 0), then after; {"qkv", "_ub_send", 3} is
/// "qkv_ub_send3". Op names are built only with LowerOptions::op_names and parameter names only when a grad hook or
/// a held wgrad needs them, so a lowering without names (sweeps) builds no strings. The views must outlive the call
/// that takes the Name: literals, members, or temporaries of the caller's full expression.
struct Name {
  std::string_view head, tail;
  std::int64_t num = -1;
  std::string_view after;
  // Implicit on purpose: a literal, view or string is a Name of one part.
  Name(const char* s) : head(s) {}
  Name(std::string_view s) : head(s) {}
  Name(const std::string& s) : head(s) {}
  Name(std::string_view h, std::string_view t, std::int64_t n = -1, std::string_view a = {})
      : head(h), tail(t), num(n), after(a) {}
  void append_to(std::string& out) const {
    out += head;
    out += tail;
    if (num >= 0) out += std::to_string(num);
    out += after;
  }
  [[nodiscard]] std::string str() const {
    std::string s;
    append_to(s);
    return s;
  }
};

class RankLowering {
 public:
  /// Appends the rank's ops to `out` (the schedule's ops: ids are global, the rank's first op is out.size()).
  RankLowering(const Ctx& ctx, RankId rank, std::vector<schedule::Op>& out)
      : x_(ctx),
        k_(ctx.k),
        rank_(rank),
        co_(coords_of(ctx.k, rank)),
        ops_(out),
        first_op_(static_cast<OpId>(out.size())),
        eco_(expert_coords_of(ctx.k, rank)) {
    fwd_recv_.resize(k_.v);
    bwd_recv_.resize(k_.v);
    aq_ = k_.nq;
    akv_ = k_.nkv;
    adh_ = k_.dh;
    init_routing();
  }

  void run();

 private:
  // ---- op emission ----
  /// Appends an op with body type B on `stream`: id, rank, stream and `deps` (plus the pending waits when it is GPU
  /// work on the compute stream), sorted and deduplicated. The caller sets the body (the op holds a default
  /// Compute{Gemm{}} until then), and name and tags with label().
  template <typename B>
  schedule::Op& open(StreamId stream, std::vector<OpId> deps) {
    constexpr bool on_gpu = !std::is_same_v<B, schedule::Host> && !std::is_same_v<B, schedule::HostSync>;
    const auto id = static_cast<OpId>(ops_.size());
    if (on_gpu && stream == x_.st.compute && !pending_.empty()) {
      deps.insert(deps.end(), pending_.begin(), pending_.end());
      pending_.clear();
    }
    sort_unique(deps);
    if (std::is_same_v<B, Compute> && stream == x_.st.compute) last_compute_ = id;
    schedule::Op& op = ops_.emplace_back();
    op.id = id;
    op.rank = rank_;
    op.stream = stream;
    op.deps = std::move(deps);
    return op;
  }
  static void sort_unique(std::vector<OpId>& deps) {
    if (deps.size() == 2) {  // the common case: no call into sort and unique
      if (deps[0] > deps[1]) std::swap(deps[0], deps[1]);
      if (deps[0] == deps[1]) deps.pop_back();
    } else if (deps.size() > 2) {
      std::sort(deps.begin(), deps.end());
      deps.erase(std::unique(deps.begin(), deps.end()), deps.end());
    }
  }
  /// Name (only with op names on) and tags of the op being emitted, from the current layer, micro-batch, chunk.
  void label(schedule::Op& op, const Name& what, Phase ph, std::string_view overlap) const {
    if (x_.op_names) op.name = nm(what);
    op.tags.layer = cur_layer_;
    op.tags.microbatch = cur_mb_;
    op.tags.chunk = cur_chunk_;
    op.tags.phase = ph;
    if (!overlap.empty()) op.tags.overlap = overlap;
  }
  template <typename B>
  OpId emit(StreamId stream, const Name& what, B&& body, std::vector<OpId> deps, Phase ph,
            std::string_view overlap = {}) {
    using T = std::decay_t<B>;
    schedule::Op& op = open<T>(stream, std::move(deps));
    label(op, what, ph, overlap);
    op.body.template emplace<T>(std::forward<B>(body));
    return op.id;
  }
  schedule::Tags tags(Phase ph, std::string_view overlap = {}) const {
    schedule::Tags t;
    t.layer = cur_layer_;
    t.microbatch = cur_mb_;
    t.chunk = cur_chunk_;
    t.phase = ph;
    t.overlap = overlap;
    return t;
  }
  std::string nm(const Name& what) const {
    if (!x_.op_names) return {};
    std::string s;
    if (cur_layer_ >= 0) {
      s += 'L';
      s += str(static_cast<std::uint64_t>(cur_layer_));
      s += '.';
    }
    if (cur_mb_ >= 0) {
      s += "mb";
      s += str(static_cast<std::uint64_t>(cur_mb_));
      s += '.';
    }
    s += prefix_;
    what.append_to(s);
    return s;
  }
  /// A compute kernel on `stream` holding `sm_count` SMs (0: what the GPU gives it), built in place in the op.
  template <typename K>
  OpId kernel_on(StreamId stream, const Name& what, K&& kern, Phase ph, std::vector<OpId> deps = {},
                 std::string_view overlap = {}, std::uint32_t sm_count = 0) {
    schedule::Op& op = open<Compute>(stream, std::move(deps));
    label(op, what, ph, overlap);
    auto& c = std::get<Compute>(op.body);
    c.kernel.template emplace<std::decay_t<K>>(std::forward<K>(kern));
    c.sm_count = sm_count;
    return op.id;
  }
  template <typename K>
  OpId kernel(const Name& what, K&& kern, Phase ph, std::vector<OpId> deps = {}, std::string_view overlap = {}) {
    return kernel_on(x_.st.compute, what, std::forward<K>(kern), ph, std::move(deps), overlap);
  }
  OpId gemm(const Name& what, std::uint64_t m, std::uint64_t n, std::uint64_t kk, Phase ph, std::vector<OpId> deps = {},
            std::string_view overlap = {}) {
    return kernel(what, Gemm{m, n, kk, 1, k_.dtype}, ph, std::move(deps), overlap);
  }
  OpId elementwise(const Name& what, std::uint64_t bytes, Phase ph, std::vector<OpId> deps = {}) {
    return kernel(what, Elementwise{bytes, 0}, ph, std::move(deps));
  }
  /// A collective on `stream`: waits for the compute stream at launch (PyTorch syncs the NCCL stream with the
  /// current stream), plus `deps`. Blocking ones make the next compute op wait for it.
  OpId collective(StreamId stream, const Name& what, CollectiveKind kind, CommId comm, std::uint64_t bytes, Phase ph,
                  bool blocking, std::vector<OpId> deps = {}, std::string_view overlap = {},
                  schedule::DType dtype = schedule::DType::kBF16) {
    TWINSTEP_ASSERT(comm != kNone, "collective %s on an unused communicator", what.str().c_str());
    if (last_compute_ != schedule::kNoOp) deps.push_back(last_compute_);
    schedule::Op& op = open<schedule::Collective>(stream, std::move(deps));
    label(op, what, ph, overlap);
    auto& c = op.body.emplace<schedule::Collective>();
    c.kind = kind;
    c.comm = comm;
    c.bytes = bytes;
    c.dtype = dtype;
    if (kind == CollectiveKind::kAllToAll) {
      const std::uint32_t n = x_.comm_size[comm];  // only CP uses this all_to_all in dense lowering
      c.send_bytes.assign(n, bytes / n);
    }
    if (blocking) pending_.push_back(op.id);
    return op.id;
  }
  OpId send(StreamId stream, const Name& what, CommId comm, RankId peer, std::uint64_t bytes, std::uint32_t tag,
            Phase ph, std::vector<OpId> deps, std::string_view overlap = {}) {
    return emit(stream, what, schedule::Send{comm, peer, bytes, tag}, std::move(deps), ph, overlap);
  }
  OpId recv(StreamId stream, const Name& what, CommId comm, RankId peer, std::uint64_t bytes, std::uint32_t tag,
            Phase ph, std::string_view overlap = {}) {
    return emit(stream, what, schedule::Recv{comm, peer, bytes, tag}, {}, ph, overlap);
  }
  void host(const Name& what, Nanos ns, Phase ph) {
    if (ns > 0) emit(x_.st.compute, what, schedule::Host{ns}, {}, ph);
  }
  void host_sync(const Name& what, OpId target, Phase ph) {
    emit(x_.st.compute, what, schedule::HostSync{target}, {}, ph);
  }

  // ---- building blocks ----
  std::uint64_t act(std::uint64_t tokens, std::uint64_t width) const { return tokens * width * k_.act_bytes; }
  RankId tp_peer(int delta) const {
    Coords c = co_;
    c.tp = static_cast<std::uint32_t>((static_cast<int>(co_.tp) + delta + static_cast<int>(k_.t)) %
                                      static_cast<int>(k_.t));
    return rank_of(k_, c);
  }
  RankId cp_peer(int delta) const {
    Coords c = co_;
    c.cp = static_cast<std::uint32_t>((static_cast<int>(co_.cp) + delta + static_cast<int>(k_.c)) %
                                      static_cast<int>(k_.c));
    return rank_of(k_, c);
  }
  RankId pp_peer(int delta) const {
    Coords c = co_;
    c.pp = static_cast<std::uint32_t>((static_cast<int>(co_.pp) + delta + static_cast<int>(k_.p)) %
                                      static_cast<int>(k_.p));
    return rank_of(k_, c);
  }

  /// Column-parallel linear with SP all-gather of its input (qkv_fprop / fc1_fprop): blocking AG then GEMM, or
  /// with tp_comm_overlap the userbuffer ring exchange (t GEMM chunks, chunk i+1 waits the recv of step i).
  OpId ag_gemm(std::string_view site, std::uint64_t n, std::uint64_t kk, Phase ph) {
    const CommId tp = x_.tp_of[rank_];
    if (k_.t == 1 || !k_.sp) return gemm(site, k_.tokens, n, kk, ph);
    if (!ub()) {
      collective(x_.st.tp, Name{site, "_ag"}, CollectiveKind::kAllGather, tp, act(k_.tokens, kk), ph, true);
      return gemm(site, k_.tokens, n, kk, ph);
    }
    OpId prev_recv = schedule::kNoOp, g = schedule::kNoOp;
    const OpId producer = last_compute_;
    for (std::uint32_t i = 0; i < k_.t; ++i) {
      OpId rv = schedule::kNoOp;
      if (i + 1 < k_.t) {
        std::vector<OpId> d;
        if (i == 0 && producer != schedule::kNoOp) d.push_back(producer);
        if (prev_recv != schedule::kNoOp) d.push_back(prev_recv);
        send(x_.st.tp_send, Name{site, "_ub_send", i}, tp, tp_peer(1), act(k_.tokens_sp, kk), 0, ph, d, "tp");
        rv = recv(x_.st.tp_recv, Name{site, "_ub_recv", i}, tp, tp_peer(-1), act(k_.tokens_sp, kk), 0, ph, "tp");
      }
      std::vector<OpId> d;
      if (prev_recv != schedule::kNoOp) d.push_back(prev_recv);
      g = gemm(Name{site, "_chunk", i}, k_.tokens_sp, n, kk, ph, d, "tp");
      prev_recv = rv;
    }
    return g;
  }

  /// Row-parallel linear whose output is reduce-scattered (SP) or all-reduced (no SP) over TP (proj_fprop /
  /// fc2_fprop): blocking collective after the GEMM, or with tp_comm_overlap the pipelined GEMM+RS (4 chunks, the
  /// last chunk's RS exposed).
  void gemm_rs(std::string_view site, std::uint64_t n, std::uint64_t kk, Phase ph) {
    const CommId tp = x_.tp_of[rank_];
    if (k_.t == 1) {
      gemm(site, k_.tokens, n, kk, ph);
      return;
    }
    if (!ub()) {
      gemm(site, k_.tokens, n, kk, ph);
      collective(x_.st.tp, Name{site, k_.sp ? "_rs" : "_ar"},
                 k_.sp ? CollectiveKind::kReduceScatter : CollectiveKind::kAllReduce, tp, act(k_.tokens, n), ph, true);
      return;
    }
    const std::uint64_t rows = k_.tokens / kPipelinedRsSplits;
    for (std::uint32_t i = 0; i < kPipelinedRsSplits; ++i) {
      gemm(Name{site, "_chunk", i}, rows, n, kk, ph, {}, "tp");
      collective(x_.st.tp, Name{site, "_rs", i}, CollectiveKind::kReduceScatter, tp, act(rows, n), ph, true, {}, "tp");
    }
  }

  /// Backward of a row-parallel linear (proj / fc2): AG of the output grad over TP (SP), dgrad and wgrad GEMMs.
  /// `L` is the layer's parameter prefix ("L3."): the weight is L + site.
  void rowparallel_bwd(std::string_view site, std::uint64_t out, std::uint64_t in, std::string_view L) {
    const CommId tp = x_.tp_of[rank_];
    OpId last_recv = schedule::kNoOp;
    if (k_.t > 1 && k_.sp && ub()) {  // ring-exchange AG + dgrad GEMM (proj_dgrad / fc2_dgrad)
      OpId prev_recv = schedule::kNoOp;
      const OpId producer = last_compute_;
      for (std::uint32_t i = 0; i < k_.t; ++i) {
        OpId rv = schedule::kNoOp;
        if (i + 1 < k_.t) {
          std::vector<OpId> d;
          if (i == 0 && producer != schedule::kNoOp) d.push_back(producer);
          if (prev_recv != schedule::kNoOp) d.push_back(prev_recv);
          send(x_.st.tp_send, Name{site, "_dgrad_ub_send", i}, tp, tp_peer(1), act(k_.tokens_sp, out), 0, Phase::kBwd,
               d, "tp");
          rv = recv(x_.st.tp_recv, Name{site, "_dgrad_ub_recv", i}, tp, tp_peer(-1), act(k_.tokens_sp, out), 0,
                    Phase::kBwd, "tp");
        }
        std::vector<OpId> d;
        if (prev_recv != schedule::kNoOp) d.push_back(prev_recv);
        gemm(Name{site, "_dgrad_chunk", i}, k_.tokens_sp, in, out, Phase::kBwd, d, "tp");
        prev_recv = rv;
        if (rv != schedule::kNoOp) last_recv = rv;
      }
    } else {
      if (k_.t > 1 && k_.sp) {
        collective(x_.st.tp, Name{site, "_dgrad_ag"}, CollectiveKind::kAllGather, tp, act(k_.tokens, out), Phase::kBwd,
                   true);
      }
      gemm(Name{site, "_dgrad"}, k_.tokens, in, out, Phase::kBwd);
    }
    std::vector<OpId> d;
    if (last_recv != schedule::kNoOp) d.push_back(last_recv);
    wgrad_op(Name{site, "_wgrad"}, Gemm{out, in, k_.tokens, 1, k_.dtype}, d, Name{L, site}, ub() ? "tp" : "");
  }

  /// Backward of a column-parallel linear (qkv / fc1) and its layernorm: dgrad GEMM with the async AG of ln_out
  /// (SP) launched before it, async RS (SP) or AR (no SP) of dgrad launched before the wgrad GEMM; the layernorm
  /// backward waits for the RS/AR (TE B4/B5; bulk userbuffer overlap with tp_comm_overlap).
  /// `L` is the layer's parameter prefix ("L3."): the weight is L + site, the layernorm L + ln ("ln1").
  void colparallel_bwd(std::string_view site, std::uint64_t out, std::uint64_t in, std::string_view L,
                       std::string_view ln) {
    const CommId tp = x_.tp_of[rank_];
    const std::string_view ov = ub() ? "tp" : "";
    OpId ag = schedule::kNoOp, red = schedule::kNoOp;
    if (k_.t > 1 && k_.sp) {
      ag = collective(x_.st.tp, Name{site, "_lnout_ag"}, CollectiveKind::kAllGather, tp, act(k_.tokens, in),
                      Phase::kBwd, false, {}, ov);
    }
    const OpId dg = gemm(Name{site, "_dgrad"}, k_.tokens, in, out, Phase::kBwd, {}, ov);
    if (k_.t > 1) {
      red = collective(x_.st.tp, Name{site, k_.sp ? "_dgrad_rs" : "_dgrad_ar"},
                       k_.sp ? CollectiveKind::kReduceScatter : CollectiveKind::kAllReduce, tp, act(k_.tokens, in),
                       Phase::kBwd, false, {dg}, ov);
    }
    std::vector<OpId> wd;
    if (ag != schedule::kNoOp) wd.push_back(ag);
    wgrad_op(Name{site, "_wgrad"}, Gemm{out, in, k_.tokens, 1, k_.dtype}, wd, Name{L, site}, ov);
    std::vector<OpId> ld;
    if (red != schedule::kNoOp) ld.push_back(red);
    const OpId ln_op = elementwise(Name{ln, "_bwd"}, 3 * act(k_.tokens_sp, k_.h), Phase::kBwd, ld);
    grad_ready(Name{L, ln}, ln_op);
  }

  /// One attention kernel on the compute stream.
  OpId attn_kernel(const Name& what, std::uint64_t heads_q, std::uint64_t heads_kv, std::uint64_t sq, std::uint64_t skv,
                   bool causal, bool bwd, Phase ph, std::vector<OpId> deps, std::string_view ov) {
    return kernel(what, Attention{k_.b, heads_q, heads_kv, sq, skv, adh_, causal, bwd, k_.dtype}, ph, std::move(deps),
                  ov);
  }

  /// The KV ring of TE's P2P context parallelism (megatron-overlap.md section 5) over a ring of `n` ranks at
  /// position `pos`: `hq`/`hkv` heads and `s_loc` tokens per rank (two load-balanced chunks). Forward: step i
  /// computes local Q against the KV block of position pos - i while the next block travels (n - 1 transfers);
  /// step 0 "diagonal", i <= pos "lower-triangle", i > pos "upper-triangle"; per-step correction kernels.
  /// `first` are the ops that produce the local KV block (the first send waits for them).
  void cp_ring_fwd(Phase ph, CommId comm, std::uint32_t n, std::uint32_t pos, RankId next, RankId prev,
                   std::uint64_t hq, std::uint64_t hkv, std::uint64_t s_loc, std::vector<OpId> first) {
    const std::uint64_t kv_bytes = 2 * s_loc * k_.b * hkv * adh_ * k_.act_bytes;
    OpId prev_recv = schedule::kNoOp;
    for (std::uint32_t i = 0; i < n; ++i) {
      OpId rv = schedule::kNoOp;
      if (i + 1 < n) {
        std::vector<OpId> d = first;
        if (prev_recv != schedule::kNoOp) d.push_back(prev_recv);
        send(x_.st.cp, Name{"attn_kv_send", {}, i}, comm, next, kv_bytes, 0, ph, d, "cp");
        rv = recv(x_.st.cp_recv, Name{"attn_kv_recv", {}, i}, comm, prev, kv_bytes, 0, ph, "cp");
      }
      std::vector<OpId> d;
      if (prev_recv != schedule::kNoOp) d.push_back(prev_recv);
      if (i == 0) {
        attn_kernel("attn_step0", hq, hkv, s_loc, s_loc, true, false, ph, d, "cp");
      } else if (i <= pos) {
        attn_kernel(Name{"attn_step", {}, i}, hq, hkv, s_loc, s_loc / 2, false, false, ph, d, "cp");
      } else {
        attn_kernel(Name{"attn_step", {}, i}, hq, hkv, s_loc / 2, s_loc, false, false, ph, d, "cp");
      }
      if (i > 0) elementwise(Name{"attn_correction", {}, i}, 3 * s_loc * k_.b * hq * adh_ * 4, ph);
      prev_recv = rv;
    }
  }

  /// Backward of the KV ring: n steps; sends KV at step 0, KV + dKV at steps 1..n-2, dKV at step n-1, i.e.
  /// 2(n-1) KV-sized transfers. Returns the recv of the final dKV (kNoOp when n == 1).
  OpId cp_ring_bwd(CommId comm, std::uint32_t n, std::uint32_t pos, RankId next, RankId prev, std::uint64_t hq,
                   std::uint64_t hkv, std::uint64_t s_loc) {
    const std::uint64_t kv_bytes = 2 * s_loc * k_.b * hkv * adh_ * k_.act_bytes;
    OpId prev_recv = schedule::kNoOp, prev_attn = last_compute_;
    for (std::uint32_t i = 0; i < n; ++i) {
      OpId rv = schedule::kNoOp;
      if (n > 1) {
        const std::uint64_t bytes = (i == 0 || i + 1 == n) ? kv_bytes : 2 * kv_bytes;
        std::vector<OpId> sd;
        if (prev_attn != schedule::kNoOp) sd.push_back(prev_attn);
        if (prev_recv != schedule::kNoOp) sd.push_back(prev_recv);
        send(x_.st.cp, Name{"attn_bwd_send", {}, i}, comm, next, bytes, 1, Phase::kBwd, sd, "cp");
        rv = recv(x_.st.cp_recv, Name{"attn_bwd_recv", {}, i}, comm, prev, bytes, 1, Phase::kBwd, "cp");
      }
      std::vector<OpId> d;
      if (prev_recv != schedule::kNoOp) d.push_back(prev_recv);
      if (i == 0) {
        prev_attn = attn_kernel("attn_bwd_step0", hq, hkv, s_loc, s_loc, true, true, Phase::kBwd, d, "cp");
      } else if (i <= pos) {
        prev_attn =
            attn_kernel(Name{"attn_bwd_step", {}, i}, hq, hkv, s_loc, s_loc / 2, false, true, Phase::kBwd, d, "cp");
      } else {
        prev_attn =
            attn_kernel(Name{"attn_bwd_step", {}, i}, hq, hkv, s_loc / 2, s_loc, false, true, Phase::kBwd, d, "cp");
      }
      prev_recv = rv;
    }
    return prev_recv;
  }

  /// a2a+p2p ring neighbours: the same a2a position, the next/previous p2p position (CP index = outer * ca + inner).
  RankId cp_outer_peer(int delta) const {
    Coords c = co_;
    const int outer = static_cast<int>(co_.cp / k_.ca), n = static_cast<int>(k_.cpo);
    c.cp = static_cast<std::uint32_t>((outer + delta + n) % n) * k_.ca + co_.cp % k_.ca;
    return rank_of(k_, c);
  }

  /// Core attention forward (with its CP exchanges); `recompute` re-runs it in backward.
  void attention_fwd(Phase ph) {
    const std::uint64_t hq = aq_ / k_.t, hkv = akv_ / k_.t, s_loc = k_.s / k_.c, b = k_.b;
    const std::uint64_t kv_bytes = 2 * s_loc * b * hkv * adh_ * k_.act_bytes;
    if (k_.c == 1) {
      attn_kernel("attn", hq, hkv, k_.s, k_.s, true, false, ph, {}, "");
      return;
    }
    if (cp_p2p_) {
      std::vector<OpId> first;
      if (last_compute_ != schedule::kNoOp) first.push_back(last_compute_);
      cp_ring_fwd(ph, x_.cp_of[rank_], k_.c, co_.cp, cp_peer(1), cp_peer(-1), hq, hkv, s_loc, first);
      return;
    }
    if (cp_ag_) {
      collective(x_.st.cp, "attn_kv_ag", CollectiveKind::kAllGather, x_.cp_of[rank_], kv_bytes * k_.c, ph, true);
      const std::uint64_t chunk = k_.s / (2 * k_.c);
      const std::uint32_t owned[2] = {co_.cp, 2 * k_.c - 1 - co_.cp};
      for (std::uint32_t h = 0; h < 2; ++h) {
        if (owned[h] > 0) {
          attn_kernel(Name{"attn_half", {}, h, "_prefix"}, hq, hkv, chunk, chunk * owned[h], false, false, ph, {}, "");
        }
        attn_kernel(Name{"attn_half", {}, h, "_diag"}, hq, hkv, chunk, chunk, true, false, ph, {}, "");
      }
      return;
    }
    // a2a (Ulysses) over the CP group, or over the inner group of a2a+p2p: sequence-sharded -> head-sharded Q, K, V
    // (q, k, v async, the compute stream waits for all three), attention, output back.
    const bool hier = cp_hier_;
    const std::uint32_t na = hier ? k_.ca : k_.c;
    const CommId a2a = hier ? x_.cpa_of[rank_] : x_.cp_of[rank_];
    const StreamId st = hier ? x_.st.cp_a2a : x_.st.cp;
    const std::uint64_t q_bytes = s_loc * b * hq * adh_ * k_.act_bytes;
    const std::uint64_t k_bytes = s_loc * b * hkv * adh_ * k_.act_bytes;
    std::vector<OpId> kv_ready;
    if (na > 1) {
      pending_.push_back(collective(st, "attn_q_a2a", CollectiveKind::kAllToAll, a2a, q_bytes, ph, false));
      kv_ready.push_back(collective(st, "attn_k_a2a", CollectiveKind::kAllToAll, a2a, k_bytes, ph, false));
      pending_.push_back(kv_ready.back());
      kv_ready.push_back(collective(st, "attn_v_a2a", CollectiveKind::kAllToAll, a2a, k_bytes, ph, true));
    }
    if (!hier) {
      attn_kernel("attn", hq / k_.c, hkv / k_.c, k_.s, k_.s, true, false, ph, {}, "");
    } else {
      // p2p ring across the outer group on heads / ca and s / cpo tokens per rank (same KV bytes as plain p2p).
      if (kv_ready.empty() && last_compute_ != schedule::kNoOp) kv_ready.push_back(last_compute_);
      cp_ring_fwd(ph, x_.cpp_of[rank_], k_.cpo, co_.cp / k_.ca, cp_outer_peer(1), cp_outer_peer(-1), hq / na, hkv / na,
                  k_.s / k_.cpo, kv_ready);
    }
    if (na > 1) collective(st, "attn_out_a2a", CollectiveKind::kAllToAll, a2a, q_bytes, ph, true);
  }

  void attention_bwd() {
    const std::uint64_t hq = aq_ / k_.t, hkv = akv_ / k_.t, s_loc = k_.s / k_.c, b = k_.b;
    const std::uint64_t kv_bytes = 2 * s_loc * b * hkv * adh_ * k_.act_bytes;
    if (k_.c == 1) {
      attn_kernel("attn_bwd", hq, hkv, k_.s, k_.s, true, true, Phase::kBwd, {}, "");
      return;
    }
    if (cp_p2p_) {
      const OpId last = cp_ring_bwd(x_.cp_of[rank_], k_.c, co_.cp, cp_peer(1), cp_peer(-1), hq, hkv, s_loc);
      pending_.push_back(last);  // the final dKV arrives before the qkv dgrad
      return;
    }
    if (cp_ag_) {
      const CommId cp = x_.cp_of[rank_];
      collective(x_.st.cp, "attn_bwd_kv_ag", CollectiveKind::kAllGather, cp, kv_bytes * k_.c, Phase::kBwd, true);
      const std::uint64_t chunk = k_.s / (2 * k_.c);
      const std::uint32_t owned[2] = {co_.cp, 2 * k_.c - 1 - co_.cp};
      for (std::uint32_t h = 0; h < 2; ++h) {
        if (owned[h] > 0) {
          attn_kernel(Name{"attn_bwd_half", {}, h, "_prefix"}, hq, hkv, chunk, chunk * owned[h], false, true,
                      Phase::kBwd, {}, "");
        }
        attn_kernel(Name{"attn_bwd_half", {}, h, "_diag"}, hq, hkv, chunk, chunk, true, true, Phase::kBwd, {}, "");
      }
      collective(x_.st.cp, "attn_bwd_dkv_rs", CollectiveKind::kReduceScatter, cp, kv_bytes * k_.c, Phase::kBwd, true);
      return;
    }
    const bool hier = cp_hier_;
    const std::uint32_t na = hier ? k_.ca : k_.c;
    const CommId a2a = hier ? x_.cpa_of[rank_] : x_.cp_of[rank_];
    const StreamId st = hier ? x_.st.cp_a2a : x_.st.cp;
    const std::uint64_t q_bytes = s_loc * b * hq * adh_ * k_.act_bytes;
    const std::uint64_t k_bytes = s_loc * b * hkv * adh_ * k_.act_bytes;
    if (na > 1) collective(st, "attn_bwd_do_a2a", CollectiveKind::kAllToAll, a2a, q_bytes, Phase::kBwd, true);
    std::vector<OpId> dkv;
    if (!hier) {
      attn_kernel("attn_bwd", hq / k_.c, hkv / k_.c, k_.s, k_.s, true, true, Phase::kBwd, {}, "");
    } else {
      const OpId last = cp_ring_bwd(x_.cpp_of[rank_], k_.cpo, co_.cp / k_.ca, cp_outer_peer(1), cp_outer_peer(-1),
                                    hq / na, hkv / na, k_.s / k_.cpo);
      if (last != schedule::kNoOp) dkv.push_back(last);  // dK, dV complete only when the last dKV block arrived
    }
    if (na > 1) {
      pending_.push_back(
          collective(st, "attn_bwd_dq_a2a", CollectiveKind::kAllToAll, a2a, q_bytes, Phase::kBwd, false));
      pending_.push_back(
          collective(st, "attn_bwd_dk_a2a", CollectiveKind::kAllToAll, a2a, k_bytes, Phase::kBwd, false, dkv));
      collective(st, "attn_bwd_dv_a2a", CollectiveKind::kAllToAll, a2a, k_bytes, Phase::kBwd, true, dkv);
    } else if (!dkv.empty()) {
      pending_.push_back(dkv.front());
    }
  }

  std::uint64_t layer_kernel_count_estimate() const { return 12; }
  /// Framework host time of one layer's forward or backward: its module calls and kernel launches (the same in the
  /// plain and the combined EP-overlap schedule).
  Nanos layer_host_ns() const {
    return x_.cfg->host.per_module_call_ns * 6 +
           x_.cfg->host.per_kernel_launch_ns * static_cast<Nanos>(layer_kernel_count_estimate());
  }

  // ---- helpers for MoE, attention variants and delayed wgrad ----
  bool ub() const { return k_.tp_overlap && !no_ub_; }
  std::vector<OpId> take_node_deps() {
    std::vector<OpId> d = std::move(node_deps_);
    node_deps_.clear();
    return d;
  }
  /// A kernel on the EP comm stream inside a comm node (combined schedule), else on the compute stream.
  OpId ep_elementwise(const Name& what, std::uint64_t bytes, Phase ph, std::vector<OpId> deps = {}) {
    if (!comm_node_) return elementwise(what, bytes, ph, std::move(deps));
    auto d = take_node_deps();
    d.insert(d.end(), deps.begin(), deps.end());
    return kernel_on(x_.st.ep, what, Elementwise{bytes, 0}, ph, std::move(d), "ep");
  }
  /// A fused flex (DeepEP/HybridEP) kernel holding moe_flex_num_sms SMs, on the EP stream (its internal comm
  /// stream); outside a comm node it waits for the compute stream at launch.
  /// Representation of the fused dispatch/combine: this kernel (its local pack/unpack work, holding the dedicated
  /// SMs) followed on the same stream by the all_to_all that carries the bytes over NVLink/IB, which holds the
  /// same moe_flex_num_sms SMs while it runs (Collective::sm_count; an NCCL all_to_all would hold one CTA per
  /// channel).
  template <typename K>
  OpId flex_kernel(const Name& what, K&& kern, Phase ph) {
    std::vector<OpId> d = comm_node_ ? take_node_deps() : std::vector<OpId>{};
    if (!comm_node_ && last_compute_ != schedule::kNoOp) d.push_back(last_compute_);
    const std::uint32_t sms = std::is_same_v<std::decay_t<K>, schedule::Memcpy> ? 0 : k_.flex_sms;
    return kernel_on(x_.st.ep, what, std::forward<K>(kern), ph, std::move(d), comm_node_ ? "ep" : "", sms);
  }
  /// An EP all-to-all with per-peer splits (token copies x bytes per copy). Outside a comm node it is a blocking
  /// NCCL call (the compute stream waits for it); inside, it runs on the comm stream after the node's event.
  /// `sm_count` > 0: the fused flex kernel's transfer, holding its dedicated SMs instead of NCCL channels.
  OpId ep_a2a(const Name& what, const std::vector<std::uint64_t>& copies, std::uint64_t bytes_per_copy,
              schedule::DType dtype, Phase ph, std::uint32_t sm_count = 0) {
    std::vector<OpId> d = comm_node_ ? take_node_deps() : std::vector<OpId>{};
    if (!comm_node_ && last_compute_ != schedule::kNoOp) d.push_back(last_compute_);
    schedule::Op& op = open<schedule::Collective>(x_.st.ep, std::move(d));
    label(op, what, ph, comm_node_ ? "ep" : "");
    auto& c = op.body.emplace<schedule::Collective>();
    c.kind = CollectiveKind::kAllToAll;
    c.sm_count = sm_count;
    c.comm = x_.ep_of[rank_];
    c.dtype = dtype;
    c.send_bytes.reserve(copies.size());
    for (auto n : copies) c.send_bytes.push_back(n * bytes_per_copy);
    for (auto b : c.send_bytes) c.bytes += b;
    const OpId id = op.id;
    if (!comm_node_) pending_.push_back(id);
    return id;
  }
  /// A weight-gradient kernel: emitted now, or held for the W node of the combined schedule (delay_wgrad_compute).
  template <typename K>
  void wgrad_op(const Name& what, K&& kern, std::vector<OpId> deps, const Name& param, std::string_view overlap = {}) {
    if (defer_wgrad_) {
      deferred_.push_back(Deferred{nm(what), schedule::Kernel(std::forward<K>(kern)), std::move(deps), param.str(),
                                   tags(Phase::kWgrad, "ep")});
      return;
    }
    const OpId w = kernel(what, std::forward<K>(kern), Phase::kWgrad, std::move(deps), overlap);
    grad_ready(param, w);
  }
  void flush_wgrads() {
    auto items = std::move(deferred_);
    deferred_.clear();
    for (auto& it : items) {
      schedule::Op& op = open<Compute>(x_.st.compute, std::move(it.deps));
      op.name = std::move(it.name);
      op.tags = std::move(it.tags);
      std::get<Compute>(op.body).kernel = std::move(it.kernel);
      grad_ready(it.param, op.id);
    }
  }
  void set_attention_dims(std::uint32_t layer) {
    aq_ = k_.nq;
    akv_ = k_.nkv;
    adh_ = k_.dh;
    if (x_.model->uses_mla() && !x_.model->is_linear_attention_layer(layer)) {
      akv_ = k_.nq;  // MLA: every head has its own K and V after the up projection
      adh_ = x_.model->qk_head_dim + x_.model->qk_pos_emb_head_dim;  // QK dim; V is v_head_dim (same cost order)
    }
  }

  // ---- MoE token counts (routing model) ----
  // The routing model is a function of the layout and the rank's EP position alone: computed once per rank
  // (init_routing) and read by every MoE layer and micro-batch.
  std::uint64_t moe_tokens() const { return k_.tokens_sp; }  // T_m: tokens entering the router on this rank
  const std::vector<std::uint64_t>& dispatch_copies() const { return dispatch_copies_; }
  /// Token copies this rank received from each EP peer (= what it sends back in the combine).
  const std::vector<std::uint64_t>& combine_copies() const { return combine_copies_; }
  /// Rows the grouped GEMMs process on this rank (after the expert-TP all-gather): e x split[position] x t_e.
  std::uint64_t expert_rows() const { return dispatch_copies_[eco_.ep] * k_.e * k_.te; }
  const std::vector<std::uint64_t>& expert_groups() const { return expert_groups_; }
  const std::vector<std::uint64_t>& flex_copies() const { return flex_copies_; }
  const std::vector<std::uint64_t>& flex_combine_copies() const { return flex_combine_copies_; }
  void init_routing() {
    if (!k_.moe) return;
    dispatch_copies_ = ep_split(k_, moe_tokens() * k_.topk);
    combine_copies_.assign(k_.e, dispatch_copies_[eco_.ep]);
    const std::uint64_t n = expert_rows(), g = k_.local_experts;
    expert_groups_.assign(g, n / g);
    for (std::uint64_t i = 0; i < n % g; ++i) expert_groups_[i] += 1;
    // flex: one copy per (token, destination rank): R = e (1 - C(E - E/e, k) / C(E, k)) under uniform routing.
    double none = 1.0;
    for (std::uint64_t i = 0; i < k_.topk; ++i) {
      none *= static_cast<double>(k_.experts - k_.local_experts - std::min(i, k_.experts - k_.local_experts)) /
              static_cast<double>(k_.experts - i);
    }
    const double r = static_cast<double>(k_.e) * (1.0 - none);
    flex_copies_ = ep_split(k_, static_cast<std::uint64_t>(std::llround(static_cast<double>(moe_tokens()) * r)));
    flex_combine_copies_.assign(k_.e, flex_copies_[eco_.ep]);
  }

  // ---- attention blocks (standard / gated GQA, MLA, Gated DeltaNet) ----
  void attn_block_fwd(std::uint32_t layer, Phase ph) {
    set_attention_dims(layer);
    elementwise("ln1", 2 * act(k_.tokens_sp, k_.h), ph);
    const ModelSpec& m = *x_.model;
    if (m.is_linear_attention_layer(layer)) {
      gdn_fwd(ph);
    } else if (m.uses_mla()) {
      mla_fwd(ph);
    } else {
      const std::uint64_t qkv_out = ((m.attention_output_gate ? 2 : 1) * k_.nq + 2 * k_.nkv) * k_.dh / k_.t;
      ag_gemm("qkv", qkv_out, k_.h, ph);
      elementwise("rope", 2 * act(k_.tokens, (k_.nq + k_.nkv) * k_.dh / k_.t), ph);
      attention_fwd(ph);
      if (m.attention_output_gate) elementwise("attn_gate", 3 * act(k_.tokens, k_.nq * k_.dh / k_.t), ph);
      gemm_rs("proj", k_.h, k_.nq * k_.dh / k_.t, ph);
    }
    elementwise("residual1", 3 * act(k_.tokens_sp, k_.h), ph);
  }

  void attn_block_bwd(std::uint32_t layer) {
    set_attention_dims(layer);
    const std::string L = "L" + str(layer) + ".";
    const ModelSpec& m = *x_.model;
    if (m.is_linear_attention_layer(layer)) {
      gdn_bwd(L);
      return;
    }
    if (m.uses_mla()) {
      mla_bwd(L);
      return;
    }
    const std::uint64_t qkv_out = ((m.attention_output_gate ? 2 : 1) * k_.nq + 2 * k_.nkv) * k_.dh / k_.t;
    rowparallel_bwd("proj", k_.h, k_.nq * k_.dh / k_.t, L);
    if (m.attention_output_gate) elementwise("attn_gate_bwd", 4 * act(k_.tokens, k_.nq * k_.dh / k_.t), Phase::kBwd);
    if (x_.recompute_selective) {
      const std::string saved = prefix_;
      prefix_ = "recompute.";
      attention_fwd(Phase::kBwd);
      prefix_ = saved;
    }
    attention_bwd();
    elementwise("rope_bwd", 2 * act(k_.tokens, (k_.nq + k_.nkv) * k_.dh / k_.t), Phase::kBwd);
    colparallel_bwd("qkv", qkv_out, k_.h, L, "ln1");
  }

  /// Multi-latent attention (DeepSeek-V3): down projections (replicated over TP, on the SP shard), all-gather of
  /// the latents over TP, latent norms, column-parallel up projections, attention over n_q/t heads with head dims
  /// qk + rope, row-parallel output projection.
  void mla_fwd(Phase ph) {
    const ModelSpec& m = *x_.model;
    const std::uint64_t nqt = k_.nq / k_.t, qk = m.qk_head_dim, rope = m.qk_pos_emb_head_dim, v = m.v_head_dim;
    const std::uint64_t ql = m.q_lora_rank, kvl = m.kv_lora_rank;
    no_ub_ = true;
    if (ql > 0) gemm("q_down", k_.tokens_sp, ql, k_.h, ph);
    gemm("kv_down", k_.tokens_sp, kvl + rope, k_.h, ph);
    if (k_.t > 1 && k_.sp) {
      collective(x_.st.tp, "mla_latent_ag", CollectiveKind::kAllGather, x_.tp_of[rank_],
                 act(k_.tokens, ql + kvl + rope), ph, true);
    }
    elementwise("mla_latent_norm", 2 * act(k_.tokens, ql + kvl), ph);
    if (ql > 0)
      gemm("q_up", k_.tokens, nqt * (qk + rope), ql, ph);
    else
      ag_gemm("q_up", nqt * (qk + rope), k_.h, ph);
    gemm("kv_up", k_.tokens, nqt * (qk + v), kvl, ph);
    elementwise("rope", 2 * act(k_.tokens, nqt * rope + rope), ph);
    no_ub_ = false;
    attention_fwd(ph);
    gemm_rs("proj", k_.h, nqt * v, ph);
  }

  void mla_bwd(std::string_view L) {
    const ModelSpec& m = *x_.model;
    const std::uint64_t nqt = k_.nq / k_.t, qk = m.qk_head_dim, rope = m.qk_pos_emb_head_dim, v = m.v_head_dim;
    const std::uint64_t ql = m.q_lora_rank, kvl = m.kv_lora_rank;
    rowparallel_bwd("proj", k_.h, nqt * v, L);
    if (x_.recompute_selective) {
      const std::string saved = prefix_;
      prefix_ = "recompute.";
      attention_fwd(Phase::kBwd);
      prefix_ = saved;
    }
    attention_bwd();
    no_ub_ = true;
    elementwise("rope_bwd", 2 * act(k_.tokens, nqt * rope + rope), Phase::kBwd);
    gemm("kv_up_dgrad", k_.tokens, kvl, nqt * (qk + v), Phase::kBwd);
    wgrad_op("kv_up_wgrad", Gemm{nqt * (qk + v), kvl, k_.tokens, 1, k_.dtype}, {}, Name{L, "kv_up"});
    if (ql > 0) {
      gemm("q_up_dgrad", k_.tokens, ql, nqt * (qk + rope), Phase::kBwd);
      wgrad_op("q_up_wgrad", Gemm{nqt * (qk + rope), ql, k_.tokens, 1, k_.dtype}, {}, Name{L, "q_up"});
    } else {
      colparallel_bwd("q_up", nqt * (qk + rope), k_.h, L, "ln1");
    }
    if (k_.t > 1) {
      collective(x_.st.tp, k_.sp ? "mla_latent_grad_rs" : "mla_latent_grad_ar",
                 k_.sp ? CollectiveKind::kReduceScatter : CollectiveKind::kAllReduce, x_.tp_of[rank_],
                 act(k_.tokens, ql + kvl + rope), Phase::kBwd, true);
    }
    elementwise("mla_latent_norm_bwd", 3 * act(k_.tokens_sp, ql + kvl), Phase::kBwd);
    gemm("kv_down_dgrad", k_.tokens_sp, k_.h, kvl + rope, Phase::kBwd);
    wgrad_op("kv_down_wgrad", Gemm{kvl + rope, k_.h, k_.tokens_sp, 1, k_.dtype}, {}, Name{L, "kv_down"});
    if (ql > 0) {
      gemm("q_down_dgrad", k_.tokens_sp, k_.h, ql, Phase::kBwd);
      wgrad_op("q_down_wgrad", Gemm{ql, k_.h, k_.tokens_sp, 1, k_.dtype}, {}, Name{L, "q_down"});
    }
    no_ub_ = false;
    if (ql > 0) {
      const OpId ln = elementwise("ln1_bwd", 3 * act(k_.tokens_sp, k_.h), Phase::kBwd);
      grad_ready(Name{L, "ln1"}, ln);
    }
  }

  /// Gated DeltaNet (Qwen3-Next linear attention): in_proj (q, k, v, z, beta, alpha), causal conv1d, the chunked
  /// gated delta-rule scan, gated RMSNorm, out_proj. STAND-IN: no measured kernel exists for the scan (a Triton
  /// kernel in FLA); it is lowered as the chunked algorithm's batched GEMMs over 64-token chunks per value head
  /// (intra-chunk scores [C,dk]x[dk,C], state update [dk,C]x[C,dv], state output [C,dk]x[dk,dv]); lower() warns.
  void gdn_fwd(Phase ph) {
    const ModelSpec& m = *x_.model;
    const std::uint64_t nk = m.linear_num_key_heads, nv = m.linear_num_value_heads;
    const std::uint64_t dk = m.linear_key_head_dim, dv = m.linear_value_head_dim;
    no_ub_ = true;
    ag_gemm("in_proj", (2 * nk * dk + 2 * nv * dv + 2 * nv) / k_.t, k_.h, ph);
    elementwise("gdn_conv1d", 2 * act(k_.tokens, (2 * nk * dk + nv * dv) / k_.t), ph);
    gdn_scan("gdn_scan", ph, 1);
    elementwise("gdn_gated_norm", 3 * act(k_.tokens, nv * dv / k_.t), ph);
    gemm_rs("out_proj", k_.h, nv * dv / k_.t, ph);
    no_ub_ = false;
  }
  void gdn_scan(std::string_view what, Phase ph, std::uint64_t factor) {
    const ModelSpec& m = *x_.model;
    const std::uint64_t dk = m.linear_key_head_dim, dv = m.linear_value_head_dim, kC = 64;
    const std::uint64_t batch = k_.b * ((k_.s + kC - 1) / kC) * (m.linear_num_value_heads / k_.t) * factor;
    kernel(Name{what, "_scores"}, Gemm{kC, kC, dk, batch, k_.dtype}, ph);
    kernel(Name{what, "_state"}, Gemm{dk, dv, kC, batch, k_.dtype}, ph);
    kernel(Name{what, "_out"}, Gemm{kC, dv, dk, batch, k_.dtype}, ph);
  }
  void gdn_bwd(std::string_view L) {
    const ModelSpec& m = *x_.model;
    const std::uint64_t nk = m.linear_num_key_heads, nv = m.linear_num_value_heads;
    const std::uint64_t dk = m.linear_key_head_dim, dv = m.linear_value_head_dim;
    no_ub_ = true;
    rowparallel_bwd("out_proj", k_.h, nv * dv / k_.t, L);
    elementwise("gdn_gated_norm_bwd", 4 * act(k_.tokens, nv * dv / k_.t), Phase::kBwd);
    gdn_scan("gdn_scan_bwd", Phase::kBwd, 2);  // dq/dk/dv and the state gradient: about twice the forward
    const OpId c = elementwise("gdn_conv1d_bwd", 3 * act(k_.tokens, (2 * nk * dk + nv * dv) / k_.t), Phase::kBwd);
    grad_ready(Name{L, "conv"}, c);
    colparallel_bwd("in_proj", (2 * nk * dk + 2 * nv * dv + 2 * nv) / k_.t, k_.h, L, "ln1");
    no_ub_ = false;
  }

  // ---- MLP blocks ----
  void dense_mlp_fwd(Phase ph) {
    elementwise("ln2", 2 * act(k_.tokens_sp, k_.h), ph);
    ag_gemm("fc1", k_.ffn1 / k_.t, k_.h, ph);
    elementwise(x_.model->gated_linear_unit ? "swiglu" : "gelu",
                act(k_.tokens, k_.ffn1 / k_.t) + act(k_.tokens, k_.f / k_.t), ph);
    gemm_rs("fc2", k_.h, k_.f / k_.t, ph);
    elementwise("residual2", 3 * act(k_.tokens_sp, k_.h), ph);
  }
  void dense_mlp_bwd(std::string_view L) {
    rowparallel_bwd("fc2", k_.h, k_.f / k_.t, L);
    elementwise(Name{x_.model->gated_linear_unit ? "swiglu" : "gelu", "_bwd"},
                2 * act(k_.tokens, k_.ffn1 / k_.t) + act(k_.tokens, k_.f / k_.t), Phase::kBwd);
    colparallel_bwd("fc1", k_.ffn1 / k_.t, k_.h, L, "ln2");
  }

  std::uint64_t shared_fc1_width() const {
    return (x_.model->gated_linear_unit ? 2 * k_.shared_f : k_.shared_f) / k_.t;
  }
  /// Shared expert forward on the compute stream (TP-parallel MLP with SP all-gather / reduce-scatter; expert
  /// linears never use userbuffers).
  void shared_expert_fwd(Phase ph) {
    const CommId tp = x_.tp_of[rank_];
    if (k_.t > 1) collective(x_.st.tp, "shared_ag", CollectiveKind::kAllGather, tp, act(k_.tokens, k_.h), ph, true);
    gemm("shared_fc1", k_.tokens, shared_fc1_width(), k_.h, ph);
    elementwise("shared_act", act(k_.tokens, shared_fc1_width()) + act(k_.tokens, k_.shared_f / k_.t), ph);
    gemm("shared_fc2", k_.tokens, k_.h, k_.shared_f / k_.t, ph);
    if (k_.t > 1) {
      collective(x_.st.tp, "shared_rs", CollectiveKind::kReduceScatter, tp, act(k_.tokens, k_.h), ph, true);
    }
  }

  /// Pre-dispatch part of an MoE layer (node A of the combined schedule, after attention): pre-MLP norm, shared
  /// expert (before the router unless moe_shared_expert_overlap), router, dispatch preprocess.
  void moe_pre_fwd(Phase ph) {
    const OpId ln2 = elementwise("ln2", 2 * act(k_.tokens_sp, k_.h), ph);
    ln2_op_ = ln2;
    if (k_.shared_f > 0 && !k_.shared_overlap) shared_expert_fwd(ph);
    const std::uint64_t T = moe_tokens();
    gemm("router", T, k_.experts, k_.h, ph);
    elementwise("router_topk", T * k_.experts * 4 * 3, ph);
    const std::uint32_t span = k_.te * k_.e;
    if (dispatch_a2a_) {
      // preprocess: all-gather of per-expert counts over TP x EP, D2H copy of the splits (host syncs on it later).
      OpId counts = last_compute_;
      if (span > 1) {
        counts = collective(x_.st.tp_ep, "moe_count_ag", CollectiveKind::kAllGather, x_.tpep_of[rank_],
                            k_.experts * 8 * span, ph, false, {}, "", schedule::DType::kInt64);
      }
      d2h_ =
          kernel_on(x_.st.dtoh, "moe_splits_d2h",
                    schedule::Memcpy{2ull * k_.e * 8 + k_.local_experts * 8, schedule::CopyKind::kD2H}, ph, {counts});
      elementwise("moe_permute", 2 * act(T * k_.topk, k_.h), ph);
    } else if (dispatch_ag_) {
      if (span > 1) {
        collective(x_.st.tp_ep, "moe_hidden_ag", CollectiveKind::kAllGather, x_.tpep_of[rank_], act(T, k_.h) * span, ph,
                   true);
        collective(x_.st.tp_ep, "moe_probs_map_ag", CollectiveKind::kAllGather, x_.tpep_of[rank_],
                   T * k_.experts * 5 * span, ph, true, {}, "", schedule::DType::kFP32);
      }
      elementwise("moe_permute", act(T * span, k_.h) + act(expert_rows(), k_.h), ph);
      // TE's grouped GEMM takes m_splits on the host: tokens_per_expert.tolist() syncs [inf].
      d2h_ = kernel("moe_counts_d2h", schedule::Memcpy{k_.local_experts * 8, schedule::CopyKind::kD2H}, ph);
      host_sync("moe_counts_sync", d2h_, ph);
    }
  }

  /// Dispatch (node D): host sync on the split sizes, token and probs all-to-alls (flex: notify, count sync, fused
  /// dispatch kernel holding moe_flex_num_sms SMs and its transfer).
  void moe_dispatch_fwd(Phase ph) {
    if (dispatch_a2a_) {
      host_sync("moe_splits_sync", d2h_, ph);  // cuda_sync_point before_ep_alltoall
      if (k_.e > 1) ep_a2a("moe_dispatch_a2a", dispatch_copies(), k_.h * k_.act_bytes, k_.dtype, ph);
      if (k_.shared_overlap) shared_overlap_fc1(ph);
      if (k_.e > 1) ep_a2a("moe_probs_a2a", dispatch_copies(), 4, schedule::DType::kFP32, ph);
    } else if (dispatch_flex_) {
      flex_kernel("flex_notify", Elementwise{std::uint64_t{k_.e} * k_.experts * 4 * 2, 0}, ph);
      const OpId cp =
          flex_kernel("flex_counts_d2h", schedule::Memcpy{k_.local_experts * 8, schedule::CopyKind::kD2H}, ph);
      host_sync("flex_counts_sync", cp, ph);  // DeepEP: the CPU waits for the received-count signal
      std::uint64_t copies = 0;
      for (auto c : flex_copies()) copies += c;
      const OpId kd = flex_kernel("flex_dispatch", Elementwise{2 * act(copies, k_.h), 0}, ph);
      if (k_.e > 1)
        ep_a2a("flex_dispatch_a2a", flex_copies(), k_.h * k_.act_bytes, k_.dtype, ph, k_.flex_sms);
      else if (!comm_node_)
        pending_.push_back(kd);
    }
  }

  /// Shared expert on its own stream (moe_shared_expert_overlap): fc1 right after the token all-to-all.
  void shared_overlap_fc1(Phase ph) {
    std::vector<OpId> d{ln2_op_};
    if (k_.t > 1) {
      schedule::Collective c{CollectiveKind::kAllGather, x_.tp_of[rank_], act(k_.tokens, k_.h), k_.dtype, {}, 0};
      d = {emit(x_.st.tp, "shared_ag", std::move(c), {ln2_op_}, ph, "shared_expert")};
    }
    kernel_on(x_.st.shared, "shared_fc1", Gemm{k_.tokens, shared_fc1_width(), k_.h, 1, k_.dtype}, ph, d,
              "shared_expert");
    kernel_on(x_.st.shared, "shared_act",
              Elementwise{act(k_.tokens, shared_fc1_width()) + act(k_.tokens, k_.shared_f / k_.t), 0}, ph, {},
              "shared_expert");
  }
  /// ... and fc2 right after the combine all-to-all; the unpermute-add waits for it.
  OpId shared_overlap_fc2(Phase ph) {
    OpId last = kernel_on(x_.st.shared, "shared_fc2", Gemm{k_.tokens, k_.h, k_.shared_f / k_.t, 1, k_.dtype}, ph, {},
                          "shared_expert");
    if (k_.t > 1) {
      schedule::Collective c{CollectiveKind::kReduceScatter, x_.tp_of[rank_], act(k_.tokens, k_.h), k_.dtype, {}, 0};
      last = emit(x_.st.tp, "shared_rs", std::move(c), {last}, ph, "shared_expert");
    }
    return last;
  }

  /// Experts (node M): expert-TP all-gather, sort by local expert, grouped GEMMs sized by the tokens this rank
  /// received, unsort, expert-TP reduce-scatter.
  void moe_experts_fwd(Phase ph) {
    const std::uint64_t n = expert_rows();
    const CommId etp = k_.te > 1 ? x_.etp_of[rank_] : kNone;
    if (k_.te > 1) {
      collective(x_.st.etp, "moe_etp_ag", CollectiveKind::kAllGather, etp, act(n, k_.h), ph, true);
      collective(x_.st.etp, "moe_etp_probs_ag", CollectiveKind::kAllGather, etp, n * 4, ph, true, {}, "",
                 schedule::DType::kFP32);
    }
    if (k_.local_experts > 1) elementwise("moe_sort", 2 * act(n, k_.h), ph);
    const auto& groups = expert_groups();
    kernel("experts_fc1", schedule::GroupedGemm{groups, k_.ffn1e / k_.te, k_.h, k_.dtype}, ph);
    elementwise("experts_act", act(n, k_.ffn1e / k_.te) + act(n, k_.fe / k_.te) + n * 4, ph);
    kernel("experts_fc2", schedule::GroupedGemm{groups, k_.h, k_.fe / k_.te, k_.dtype}, ph);
    if (k_.local_experts > 1) elementwise("moe_unsort", 2 * act(n, k_.h), ph);
    if (k_.te > 1) collective(x_.st.etp, "moe_etp_rs", CollectiveKind::kReduceScatter, etp, act(n, k_.h), ph, true);
  }

  /// Combine (node C): combine all-to-all, unpermute (weighted sum), shared-expert add, residual.
  void moe_combine_fwd(Phase ph) {
    const std::uint64_t T = moe_tokens();
    std::vector<OpId> add_deps;
    if (dispatch_a2a_) {
      if (k_.e > 1) ep_a2a("moe_combine_a2a", combine_copies(), k_.h * k_.act_bytes, k_.dtype, ph);
      if (k_.shared_overlap) add_deps.push_back(shared_overlap_fc2(ph));
    } else if (dispatch_flex_) {
      std::uint64_t copies = 0;
      for (auto c : flex_combine_copies()) copies += c;
      const OpId kc = flex_kernel("flex_combine", Elementwise{2 * act(copies, k_.h), 0}, ph);
      if (k_.e > 1)
        ep_a2a("flex_combine_a2a", flex_combine_copies(), k_.h * k_.act_bytes, k_.dtype, ph, k_.flex_sms);
      else if (!comm_node_)
        pending_.push_back(kc);
    } else {
      elementwise("moe_unpermute_local", act(expert_rows(), k_.h) + act(T * k_.te * k_.e, k_.h), ph);
      if (k_.te * k_.e > 1) {
        collective(x_.st.tp_ep, "moe_output_rs", CollectiveKind::kReduceScatter, x_.tpep_of[rank_],
                   act(T, k_.h) * k_.te * k_.e, ph, true);
      }
    }
    if (!dispatch_ag_) ep_elementwise("moe_unpermute", act(T * k_.topk, k_.h) + act(T, k_.h), ph);
    if (k_.shared_f > 0) ep_elementwise("shared_add", 3 * act(T, k_.h), ph, add_deps);
    ep_elementwise("residual2", 3 * act(k_.tokens_sp, k_.h), ph);
  }

  // Backward pieces, in backward order: C_b, M_b, D_b, A_b.
  void moe_combine_bwd() {
    const Phase ph = Phase::kBwd;
    const std::uint64_t T = moe_tokens();
    if (dispatch_ag_) {
      if (k_.te * k_.e > 1) {
        collective(x_.st.tp_ep, "moe_output_grad_ag", CollectiveKind::kAllGather, x_.tpep_of[rank_],
                   act(T, k_.h) * k_.te * k_.e, ph, true);
      }
      elementwise("moe_unpermute_local_bwd", act(expert_rows(), k_.h) + act(T * k_.te * k_.e, k_.h), ph);
      return;
    }
    ep_elementwise("moe_unpermute_bwd", act(T * k_.topk, k_.h) + act(T, k_.h) + T * k_.topk * 4, ph);
    if (dispatch_a2a_) {  // combine's gradient goes the dispatch direction
      if (k_.e > 1) ep_a2a("moe_combine_grad_a2a", dispatch_copies(), k_.h * k_.act_bytes, k_.dtype, ph);
    } else {
      std::uint64_t copies = 0;
      for (auto c : flex_copies()) copies += c;
      const OpId kd = flex_kernel("flex_combine_bwd", Elementwise{2 * act(copies, k_.h), 0}, ph);
      if (k_.e > 1)
        ep_a2a("flex_combine_grad_a2a", flex_copies(), k_.h * k_.act_bytes, k_.dtype, ph, k_.flex_sms);
      else if (!comm_node_)
        pending_.push_back(kd);
    }
  }
  void moe_experts_bwd(std::string_view L) {
    const Phase ph = Phase::kBwd;
    const std::uint64_t n = expert_rows();
    const CommId etp = k_.te > 1 ? x_.etp_of[rank_] : kNone;
    if (k_.te > 1) collective(x_.st.etp, "moe_etp_grad_ag", CollectiveKind::kAllGather, etp, act(n, k_.h), ph, true);
    if (k_.local_experts > 1) elementwise("moe_unsort_bwd", 2 * act(n, k_.h), ph);
    const auto& groups = expert_groups();
    // Weight gradients as grouped GEMMs with the same FLOPs (GroupedGemm has one k; the token count varies).
    kernel("experts_fc2_dgrad", schedule::GroupedGemm{groups, k_.fe / k_.te, k_.h, k_.dtype}, ph);
    wgrad_op("experts_fc2_wgrad", schedule::GroupedGemm{groups, k_.fe / k_.te, k_.h, k_.dtype}, {},
             Name{L, "experts.fc2"});
    elementwise("experts_act_bwd", 2 * act(n, k_.ffn1e / k_.te) + act(n, k_.fe / k_.te) + n * 4, ph);
    kernel("experts_fc1_dgrad", schedule::GroupedGemm{groups, k_.h, k_.ffn1e / k_.te, k_.dtype}, ph);
    wgrad_op("experts_fc1_wgrad", schedule::GroupedGemm{groups, k_.ffn1e / k_.te, k_.h, k_.dtype}, {},
             Name{L, "experts.fc1"});
    if (k_.local_experts > 1) elementwise("moe_sort_bwd", 2 * act(n, k_.h), ph);
    if (k_.te > 1) {
      collective(x_.st.etp, "moe_etp_grad_rs", CollectiveKind::kReduceScatter, etp, act(n, k_.h), ph, true);
    }
  }
  void moe_dispatch_bwd() {
    const Phase ph = Phase::kBwd;
    if (dispatch_a2a_) {  // token and probs gradients go the combine direction
      if (k_.e > 1) {
        ep_a2a("moe_dispatch_grad_a2a", combine_copies(), k_.h * k_.act_bytes, k_.dtype, ph);
        ep_a2a("moe_probs_grad_a2a", combine_copies(), 4, schedule::DType::kFP32, ph);
      }
    } else if (dispatch_flex_) {
      std::uint64_t copies = 0;
      for (auto c : flex_combine_copies()) copies += c;
      const OpId kd = flex_kernel("flex_dispatch_bwd", Elementwise{2 * act(copies, k_.h), 0}, ph);
      if (k_.e > 1)
        ep_a2a("flex_dispatch_grad_a2a", flex_combine_copies(), k_.h * k_.act_bytes, k_.dtype, ph, k_.flex_sms);
      else if (!comm_node_)
        pending_.push_back(kd);
    } else if (k_.te * k_.e > 1) {
      collective(x_.st.tp_ep, "moe_hidden_grad_rs", CollectiveKind::kReduceScatter, x_.tpep_of[rank_],
                 act(moe_tokens(), k_.h) * k_.te * k_.e, ph, true);
    }
  }
  void moe_pre_bwd(std::string_view L) {
    const Phase ph = Phase::kBwd;
    const std::uint64_t T = moe_tokens();
    if (!dispatch_flex_) elementwise("moe_permute_bwd", 2 * act(T * k_.topk, k_.h), ph);
    elementwise("router_topk_bwd", T * k_.experts * 4 * 3, ph);
    gemm("router_dgrad", T, k_.h, k_.experts, ph);
    wgrad_op("router_wgrad", Gemm{k_.experts, k_.h, T, 1, k_.dtype}, {}, Name{L, "router"});
    if (k_.shared_f > 0) {
      const CommId tp = x_.tp_of[rank_];
      if (k_.t > 1) {
        collective(x_.st.tp, "shared_grad_ag", CollectiveKind::kAllGather, tp, act(k_.tokens, k_.h), ph, true);
      }
      gemm("shared_fc2_dgrad", k_.tokens, k_.shared_f / k_.t, k_.h, ph);
      wgrad_op("shared_fc2_wgrad", Gemm{k_.h, k_.shared_f / k_.t, k_.tokens, 1, k_.dtype}, {}, Name{L, "shared.fc2"});
      elementwise("shared_act_bwd", 2 * act(k_.tokens, shared_fc1_width()) + act(k_.tokens, k_.shared_f / k_.t), ph);
      gemm("shared_fc1_dgrad", k_.tokens, k_.h, shared_fc1_width(), ph);
      wgrad_op("shared_fc1_wgrad", Gemm{shared_fc1_width(), k_.h, k_.tokens, 1, k_.dtype}, {}, Name{L, "shared.fc1"});
      if (k_.t > 1) {
        collective(x_.st.tp, "shared_grad_rs", CollectiveKind::kReduceScatter, tp, act(k_.tokens, k_.h), ph, true);
      }
    }
    const OpId ln = elementwise("ln2_bwd", 3 * act(k_.tokens_sp, k_.h), ph);
    grad_ready(Name{L, "ln2"}, ln);
  }

  void layer_fwd(std::uint32_t layer, Phase ph) {
    cur_layer_ = static_cast<std::int32_t>(layer);
    host("host_fwd", layer_host_ns(), ph);
    attn_block_fwd(layer, ph);
    if (x_.model->is_moe_layer(layer)) {
      moe_pre_fwd(ph);
      moe_dispatch_fwd(ph);
      moe_experts_fwd(ph);
      moe_combine_fwd(ph);
    } else {
      dense_mlp_fwd(ph);
    }
    cur_layer_ = -1;
  }

  void layer_bwd(std::uint32_t layer) {
    cur_layer_ = static_cast<std::int32_t>(layer);
    const std::string L = "L" + str(layer) + ".";
    host("host_bwd", layer_host_ns(), Phase::kBwd);
    if (x_.model->is_moe_layer(layer)) {
      elementwise("residual2_bwd", 2 * act(k_.tokens_sp, k_.h), Phase::kBwd);
      moe_combine_bwd();
      moe_experts_bwd(L);
      moe_dispatch_bwd();
      moe_pre_bwd(L);
    } else {
      dense_mlp_bwd(L);
    }
    attn_block_bwd(layer);
    cur_layer_ = -1;
  }

  void embedding_fwd() {
    const CommId tp = x_.tp_of[rank_];
    elementwise("embedding", 2 * act(k_.tokens, k_.h), Phase::kFwd);
    if (x_.model->position_embedding_type == "learned_absolute") {
      elementwise("position_embedding", 3 * act(k_.tokens, k_.h), Phase::kFwd);
    }
    if (k_.t > 1) {
      collective(x_.st.tp, k_.sp ? "embedding_rs" : "embedding_ar",
                 k_.sp ? CollectiveKind::kReduceScatter : CollectiveKind::kAllReduce, tp, act(k_.tokens, k_.h),
                 Phase::kFwd, true);
    }
  }
  void embedding_bwd() {
    const CommId tp = x_.tp_of[rank_];
    if (k_.t > 1 && k_.sp) {
      collective(x_.st.tp, "embedding_grad_ag", CollectiveKind::kAllGather, tp, act(k_.tokens, k_.h), Phase::kBwd,
                 true);
    }
    const OpId w = elementwise("embedding_wgrad", 3 * act(k_.tokens, k_.h), Phase::kWgrad);
    grad_ready("embedding", w);
    if (x_.model->position_embedding_type == "learned_absolute") grad_ready("position_embedding", w);
  }
  void output_fwd() {
    const CommId tp = x_.tp_of[rank_];
    const std::uint64_t vt = k_.vocab_padded / k_.t;
    elementwise("final_norm", 2 * act(k_.tokens_sp, k_.h), Phase::kFwd);
    if (k_.t > 1 && k_.sp) {
      collective(x_.st.tp, "output_ag", CollectiveKind::kAllGather, tp, act(k_.tokens, k_.h), Phase::kFwd, true);
    }
    gemm("output", k_.tokens, vt, k_.h, Phase::kFwd);
    elementwise("cross_entropy", k_.tokens * vt * (k_.act_bytes + 4), Phase::kFwd);
    if (k_.t > 1) {
      for (const char* what : {"ce_max_ar", "ce_sumexp_ar", "ce_target_ar"}) {
        collective(x_.st.tp, what, CollectiveKind::kAllReduce, tp, k_.tokens * 4, Phase::kFwd, true, {}, "",
                   schedule::DType::kFP32);
      }
    }
  }
  void output_bwd() {
    const CommId tp = x_.tp_of[rank_];
    const std::uint64_t vt = k_.vocab_padded / k_.t;
    elementwise("cross_entropy_bwd", k_.tokens * vt * (k_.act_bytes + 4), Phase::kBwd);
    gemm("output_dgrad", k_.tokens, k_.h, vt, Phase::kBwd);
    const OpId w = gemm("output_wgrad", vt, k_.h, k_.tokens, Phase::kWgrad);
    grad_ready(x_.model->share_embeddings_and_output_weights && k_.p == 1 ? "embedding" : "output", w);
    if (k_.t > 1) {
      collective(x_.st.tp, k_.sp ? "output_dgrad_rs" : "output_dgrad_ar",
                 k_.sp ? CollectiveKind::kReduceScatter : CollectiveKind::kAllReduce, tp, act(k_.tokens, k_.h),
                 Phase::kBwd, true);
    }
    const OpId ln = elementwise("final_norm_bwd", 3 * act(k_.tokens_sp, k_.h), Phase::kBwd);
    grad_ready("final_norm", ln);
  }

  // ---- chunks ----
  const std::vector<std::uint32_t>& layers_of(std::uint32_t chunk) const { return x_.vs_layers[chunk * k_.p + co_.pp]; }
  bool first_vs(std::uint32_t chunk) const { return co_.pp == 0 && chunk == 0; }
  bool last_vs(std::uint32_t chunk) const { return co_.pp == k_.p - 1 && chunk == k_.v - 1; }

  /// Layers of `chunk` whose forward is fully recomputed, grouped: each group is recomputed together before the
  /// backward of its last layer (uniform: consecutive groups of N; block: the first N layers, one group each).
  std::vector<std::vector<std::uint32_t>> recompute_groups(std::uint32_t chunk) const {
    std::vector<std::vector<std::uint32_t>> groups;
    if (!x_.recompute_full) return groups;
    const auto& layers = layers_of(chunk);
    const std::uint32_t n = x_.cfg->recompute_num_layers;
    if (x_.cfg->recompute_method == "uniform") {
      for (std::size_t i = 0; i < layers.size(); i += n) {
        groups.emplace_back(layers.begin() + static_cast<std::ptrdiff_t>(i),
                            layers.begin() + static_cast<std::ptrdiff_t>(std::min<std::size_t>(layers.size(), i + n)));
      }
    } else {
      for (std::size_t i = 0; i < layers.size() && i < n; ++i) groups.push_back({layers[i]});
    }
    return groups;
  }

  void chunk_fwd(std::uint32_t mb, std::uint32_t chunk) {
    cur_mb_ = static_cast<std::int32_t>(mb);
    cur_chunk_ = static_cast<std::int32_t>(chunk);
    prefix_ = "fwd.";
    if (!first_vs(chunk)) {
      TWINSTEP_ASSERT(!fwd_recv_[chunk].empty(), "rank %u: no activation received for mb %u chunk %u", rank_, mb,
                      chunk);
      pending_.push_back(fwd_recv_[chunk].front());
      fwd_recv_[chunk].pop_front();
    }
    param_gather_wait(chunk, "embedding", mb);
    if (first_vs(chunk)) embedding_fwd();
    for (auto l : layers_of(chunk)) {
      for (const auto& name : x_.layer_param_names[l]) param_gather_wait(chunk, name, mb);
      layer_fwd(l, Phase::kFwd);
    }
    if (last_vs(chunk)) {
      param_gather_wait(chunk, "final_norm", mb);
      param_gather_wait(chunk, "output", mb);
      output_fwd();
    }
    last_fwd_output_ = last_compute_;
    cur_mb_ = cur_chunk_ = -1;
    prefix_.clear();
  }

  void chunk_bwd(std::uint32_t mb, std::uint32_t chunk) {
    cur_mb_ = static_cast<std::int32_t>(mb);
    cur_chunk_ = static_cast<std::int32_t>(chunk);
    prefix_ = "bwd.";
    hooks_on_ = grad_hooks_enabled(mb);
    hook_chunk_ = chunk;
    if (!last_vs(chunk)) {
      TWINSTEP_ASSERT(!bwd_recv_[chunk].empty(), "rank %u: no gradient received for mb %u chunk %u", rank_, mb, chunk);
      pending_.push_back(bwd_recv_[chunk].front());
      bwd_recv_[chunk].pop_front();
    }
    if (last_vs(chunk)) output_bwd();
    const auto groups = recompute_groups(chunk);
    const auto& layers = layers_of(chunk);
    for (auto it = layers.rbegin(); it != layers.rend(); ++it) {
      for (const auto& g : groups) {
        if (g.back() == *it) {
          prefix_ = "recompute.";
          for (auto l : g) layer_fwd(l, Phase::kBwd);
          prefix_ = "bwd.";
        }
      }
      layer_bwd(*it);
    }
    if (first_vs(chunk)) embedding_bwd();
    last_bwd_output_ = last_compute_;
    hooks_on_ = false;
    cur_mb_ = cur_chunk_ = -1;
    prefix_.clear();
  }

  // ---- EP overlap: the combined 1F1B schedule (megatron-overlap.md section 6b) ----
  /// One side of a combined step: the forward or backward of a (micro-batch, chunk), with its CUDA event (the last
  /// op(s) of its previous node; each node waits for it and records it again at its end).
  struct Exchange;  // a P2P exchange (pipeline section below)
  struct Side {
    bool fwd = true;
    std::uint32_t mb = 0, chunk = 0;
    std::vector<OpId> ev;
  };
  void enter(const Side& sd, std::int32_t layer) {
    cur_mb_ = static_cast<std::int32_t>(sd.mb);
    cur_chunk_ = static_cast<std::int32_t>(sd.chunk);
    cur_layer_ = layer;
    prefix_ = sd.fwd ? "fwd." : "bwd.";
    hooks_on_ = !sd.fwd && grad_hooks_enabled(sd.mb);
    hook_chunk_ = sd.chunk;
  }
  /// The host cost of one schedule node: event wait + record, the node's own overhead, and for backward nodes a
  /// separate autograd-engine call (section 6c item 2). Emitted as an explicit host op when the costs are set.
  void node_host(std::string_view node, bool backward) {
    const HostCosts& hc = x_.cfg->host;
    const Nanos ns = 2 * hc.event_record_ns + hc.ep_node_ns + (backward ? hc.ep_backward_call_ns : 0);
    if (ns > 0) {
      emit(x_.st.compute, Name{"node_", node}, schedule::Host{ns}, {}, backward ? Phase::kBwd : Phase::kFwd, "ep");
    }
  }
  bool gpu_op_on(OpId id, StreamId stream) const {
    const auto& op = ops_[id];
    return op.stream == stream && !std::holds_alternative<schedule::Host>(op.body) &&
           !std::holds_alternative<schedule::HostSync>(op.body);
  }
  /// A node on the compute stream (A, M, and the embedding/output pieces).
  template <typename Body>
  void comp_node(Side& sd, std::int32_t layer, std::string_view node, Body&& body) {
    enter(sd, layer);
    node_host(node, !sd.fwd);
    const auto start = static_cast<OpId>(ops_.size());
    pending_.insert(pending_.end(), sd.ev.begin(), sd.ev.end());
    body();
    for (OpId i = static_cast<OpId>(ops_.size()); i-- > start;) {
      if (gpu_op_on(i, x_.st.compute)) {
        sd.ev = {i};
        sd.ev.insert(sd.ev.end(), pending_.begin(), pending_.end());  // blocking comm at the node's tail
        break;
      }
    }
  }
  /// A node on the EP comm stream (D, C).
  template <typename Body>
  void comm_node(Side& sd, std::int32_t layer, std::string_view node, Body&& body) {
    enter(sd, layer);
    node_host(node, !sd.fwd);
    const auto start = static_cast<OpId>(ops_.size());
    comm_node_ = true;
    node_deps_ = sd.ev;
    body();
    comm_node_ = false;
    node_deps_.clear();
    for (OpId i = static_cast<OpId>(ops_.size()); i-- > start;) {
      if (gpu_op_on(i, x_.st.ep)) {
        sd.ev = {i};
        break;
      }
    }
  }
  /// W node (delay_wgrad_compute): the held weight-gradient GEMMs, on the compute stream after the dgrad node.
  void wgrad_node(Side& sd, std::int32_t layer, std::string_view node) {
    if (deferred_.empty()) return;
    enter(sd, layer);
    node_host(node, true);
    flush_wgrads();
  }

  void f_attn(Side& f, std::uint32_t l) {
    comp_node(f, static_cast<std::int32_t>(l), "A", [&] {
      // The layer's forward pre-hooks wait for its param all-gather (overlap_param_gather) right before its first
      // forward use, not at the chunk's start: the other micro-batch's backward pieces issued before stay free.
      for (const auto& name : x_.layer_param_names[l]) param_gather_wait(f.chunk, name, f.mb);
      host("host_fwd", layer_host_ns(), Phase::kFwd);
      attn_block_fwd(l, Phase::kFwd);
      if (x_.model->is_moe_layer(l)) moe_pre_fwd(Phase::kFwd);
    });
  }
  void f_dispatch(Side& f, std::uint32_t l) {
    if (x_.model->is_moe_layer(l))
      comm_node(f, static_cast<std::int32_t>(l), "D", [&] { moe_dispatch_fwd(Phase::kFwd); });
  }
  void f_mlp(Side& f, std::uint32_t l) {
    comp_node(f, static_cast<std::int32_t>(l), "M", [&] {
      if (x_.model->is_moe_layer(l))
        moe_experts_fwd(Phase::kFwd);
      else
        dense_mlp_fwd(Phase::kFwd);
    });
  }
  void f_combine(Side& f, std::uint32_t l) {
    if (x_.model->is_moe_layer(l))
      comm_node(f, static_cast<std::int32_t>(l), "C", [&] { moe_combine_fwd(Phase::kFwd); });
  }
  void b_combine(Side& b, std::uint32_t l) {
    if (!x_.model->is_moe_layer(l)) return;
    comm_node(b, static_cast<std::int32_t>(l), "C", [&] {
      ep_elementwise("residual2_bwd", 2 * act(k_.tokens_sp, k_.h), Phase::kBwd);
      moe_combine_bwd();
    });
  }
  void b_mlp(Side& b, std::uint32_t l) {
    const std::string L = "L" + str(l) + ".";
    comp_node(b, static_cast<std::int32_t>(l), "M", [&] {
      host("host_bwd", layer_host_ns(), Phase::kBwd);
      defer_wgrad_ = k_.delay_wgrad;
      if (x_.model->is_moe_layer(l))
        moe_experts_bwd(L);
      else
        dense_mlp_bwd(L);
      defer_wgrad_ = false;
    });
  }
  void b_dispatch(Side& b, std::uint32_t l) {
    if (x_.model->is_moe_layer(l)) comm_node(b, static_cast<std::int32_t>(l), "D", [&] { moe_dispatch_bwd(); });
  }
  void b_attn(Side& b, std::uint32_t l) {
    const std::string L = "L" + str(l) + ".";
    comp_node(b, static_cast<std::int32_t>(l), "A", [&] {
      defer_wgrad_ = k_.delay_wgrad;
      if (x_.model->is_moe_layer(l)) moe_pre_bwd(L);
      attn_block_bwd(l);
      defer_wgrad_ = false;
    });
  }

  /// One combined step: the chunk-level order of TransformerModelChunkSchedulePlan.run (megatron-overlap.md 6b,
  /// "Chunk level"): pre_forward (wait for the received activation) -> F embedding -> pre_backward (wait for the
  /// received gradient) -> B loss/output-layer backward -> paired layers -> remaining B layers -> remaining F
  /// layers -> post_forward (send/recv forward, issued on the EP comm stream) -> post_backward (send/recv
  /// backward, on the compute stream) -> the last B layer's W_A (overlaps the P2P) -> F output layer + loss -> B
  /// embedding backward. Per (F layer i, B layer n-1-i) pair the host issue order is C_b A_f M_b D_f W_M D_b M_f
  /// C_f A_b W_A. `post_f` / `post_b` are the P2P exchanges of the post_forward / post_backward hooks (interleaved
  /// schedule with overlap_p2p_comm: MCore's pp_post_forward / pp_post_backward); null: none inside the step.
  void combined_step(const PipelineStep* F, const PipelineStep* B, const Exchange* post_f = nullptr,
                     const Exchange* post_b = nullptr) {
    Side f{true, F ? F->microbatch : 0, F ? F->chunk : 0, {}};
    Side b{false, B ? B->microbatch : 0, B ? B->chunk : 0, {}};
    if (F) {  // pre_forward: wait for the received activation (handle.wait(): the compute stream waits), embedding
      enter(f, -1);
      if (!first_vs(f.chunk)) {
        TWINSTEP_ASSERT(!fwd_recv_[f.chunk].empty(), "rank %u: no activation received for mb %u chunk %u", rank_, f.mb,
                        f.chunk);
        f.ev.push_back(fwd_recv_[f.chunk].front());
        pending_.push_back(fwd_recv_[f.chunk].front());
        fwd_recv_[f.chunk].pop_front();
      }
      if (first_vs(f.chunk)) {
        param_gather_wait(f.chunk, "embedding", f.mb);
        comp_node(f, -1, "embedding", [&] { embedding_fwd(); });
      }
    }
    if (B) {  // pre_backward: wait for the received gradient, then the loss/output-layer backward
      enter(b, -1);
      if (!last_vs(b.chunk)) {
        TWINSTEP_ASSERT(!bwd_recv_[b.chunk].empty(), "rank %u: no gradient received for mb %u chunk %u", rank_, b.mb,
                        b.chunk);
        b.ev.push_back(bwd_recv_[b.chunk].front());
        pending_.push_back(bwd_recv_[b.chunk].front());
        bwd_recv_[b.chunk].pop_front();
      }
      if (last_vs(b.chunk)) comp_node(b, -1, "output", [&] { output_bwd(); });
    }
    static const std::vector<std::uint32_t> kNoLayers;
    const auto& lf = F ? layers_of(f.chunk) : kNoLayers;
    const auto& lb = B ? layers_of(b.chunk) : kNoLayers;
    const std::size_t paired = std::min(lf.size(), lb.size());
    std::int32_t held_wa_layer = -1;
    for (std::size_t i = 0; i < paired; ++i) {
      const std::uint32_t fl = lf[i], bl = lb[lb.size() - 1 - i];
      b_combine(b, bl);                                    // 1
      f_attn(f, fl);                                       // 2
      b_mlp(b, bl);                                        // 3
      f_dispatch(f, fl);                                   // 4
      wgrad_node(b, static_cast<std::int32_t>(bl), "WM");  // 5 (delay_wgrad only)
      b_dispatch(b, bl);                                   // 6
      f_mlp(f, fl);                                        // 8
      f_combine(f, fl);                                    // 9
      b_attn(b, bl);                                       // 10
      if (i + 1 == lb.size())
        held_wa_layer = static_cast<std::int32_t>(bl);  // the chunk's last backward layer
      else
        wgrad_node(b, static_cast<std::int32_t>(bl), "WA");  // 11
    }
    for (std::size_t i = paired; i < lb.size(); ++i) {  // remaining B layers
      const std::uint32_t bl = lb[lb.size() - 1 - i];
      b_combine(b, bl);
      b_mlp(b, bl);
      wgrad_node(b, static_cast<std::int32_t>(bl), "WM");
      b_dispatch(b, bl);
      b_attn(b, bl);
      if (i + 1 == lb.size())
        held_wa_layer = static_cast<std::int32_t>(bl);
      else
        wgrad_node(b, static_cast<std::int32_t>(bl), "WA");
    }
    for (std::size_t i = paired; i < lf.size(); ++i) {  // remaining F layers
      f_attn(f, lf[i]);
      f_dispatch(f, lf[i]);
      f_mlp(f, lf[i]);
      f_combine(f, lf[i]);
    }
    cur_mb_ = cur_chunk_ = cur_layer_ = -1;  // the P2P ops carry no micro-batch (as in the other schedules)
    prefix_.clear();
    if (F && post_f != nullptr) {  // post_forward on the comm stream: after the F chain and the comm stream's work
      std::vector<OpId> after = f.ev;
      for (OpId i = static_cast<OpId>(ops_.size()); i-- > first_op_;) {
        if (gpu_op_on(i, x_.st.ep)) {
          after.push_back(i);
          break;
        }
      }
      exchange(*post_f, false, after, {});
    }
    if (B && post_b != nullptr) {  // post_backward on the compute stream: after everything issued there
      std::vector<OpId> after = b.ev;
      if (last_compute_ != schedule::kNoOp) after.push_back(last_compute_);
      exchange(*post_b, false, {}, after);
    }
    if (B && held_wa_layer >= 0) wgrad_node(b, held_wa_layer, "WA");  // after the P2P post-processing
    if (F && last_vs(f.chunk)) {
      enter(f, -1);
      param_gather_wait(f.chunk, "final_norm", f.mb);
      param_gather_wait(f.chunk, "output", f.mb);
      comp_node(f, -1, "output", [&] { output_fwd(); });
    }
    if (B && first_vs(b.chunk)) comp_node(b, -1, "embedding", [&] { embedding_bwd(); });
    if (F && !f.ev.empty()) last_fwd_output_ = f.ev.front();
    if (B && !b.ev.empty()) last_bwd_output_ = b.ev.front();
    hooks_on_ = false;
    cur_mb_ = cur_chunk_ = cur_layer_ = -1;
    prefix_.clear();
  }
  void combined_fwd(std::uint32_t mb, std::uint32_t chunk) {
    const PipelineStep s{true, mb, chunk};
    combined_step(&s, nullptr);
  }
  void combined_bwd(std::uint32_t mb, std::uint32_t chunk) {
    const PipelineStep s{false, mb, chunk};
    combined_step(nullptr, &s);
  }
  void combined_pair(std::uint32_t fmb, std::uint32_t fc, std::uint32_t bmb, std::uint32_t bc,
                     const Exchange* post_f = nullptr, const Exchange* post_b = nullptr) {
    const PipelineStep f{true, fmb, fc}, b{false, bmb, bc};
    combined_step(&f, &b, post_f, post_b);
  }

  // ---- DP ----
  bool grad_hooks_enabled(std::uint32_t mb) const {
    if (!k_.grad_overlap) return false;
    if (k_.v > 1 && x_.cfg->align_grad_reduce) return false;  // dispatched whole-chunk by grad_sync_func
    return mb == k_.m - 1;
  }
  const std::vector<DpBucket>& buckets(std::uint32_t chunk) const { return x_.buckets[co_.pp][chunk]; }

  void grad_ready(const Name& param_name, OpId producer) {
    if (!hooks_on_) return;
    const std::string param = param_name.str();
    const auto& bs = buckets(hook_chunk_);
    for (std::size_t b = 0; b < bs.size(); ++b) {
      const auto& ps = bs[b].params;
      if (std::find(ps.begin(), ps.end(), param) == ps.end()) continue;
      auto& st = bucket_state_[hook_chunk_][b];
      st.ready += 1;
      st.last_producer = producer;
      if (st.ready == ps.size()) dispatch_grad_bucket(hook_chunk_, b, false);
    }
  }

  /// The reduction group of a bucket: DP x CP for the dense buffer, expert-DP for the expert buffer.
  CommId bucket_comm(const DpBucket& bucket) const { return bucket.expert ? x_.edp_of[rank_] : x_.dp_of[rank_]; }
  std::uint64_t bucket_group(const DpBucket& bucket) const {
    return bucket.expert ? k_.de : static_cast<std::uint64_t>(k_.d) * k_.c;
  }

  /// "chunk1.bucket2", the name stem of a bucket's ops (empty with op names off).
  std::string bucket_name(std::uint32_t chunk, std::size_t b) const {
    return x_.op_names ? "chunk" + str(chunk) + ".bucket" + str(b) : std::string();
  }

  void dispatch_grad_bucket(std::uint32_t chunk, std::size_t b, bool blocking) {
    auto& st = bucket_state_[chunk][b];
    if (st.dispatched) return;
    st.dispatched = true;
    if (bucket_group(buckets(chunk)[b]) == 1) return;  // nothing to reduce (expert-DP of 1)
    const auto saved_layer = cur_layer_;
    const auto saved_mb = cur_mb_;
    const auto saved_chunk = cur_chunk_;
    const auto saved_prefix = prefix_;
    cur_layer_ = -1;
    cur_mb_ = -1;
    cur_chunk_ = static_cast<std::int32_t>(chunk);
    prefix_ = "dp.";
    const auto& bucket = buckets(chunk)[b];
    const std::string what = bucket_name(chunk, b);
    const std::string_view ov = blocking ? "" : "dp";
    const Phase ph = Phase::kBwd;
    elementwise(Name{what, ".scale"}, 2 * bucket.numel * k_.grad_bytes, ph);
    const bool distopt = x_.cfg->use_distributed_optimizer;
    st.op = collective(x_.st.dp, Name{what, distopt ? ".grad_rs" : ".grad_ar"},
                       distopt ? CollectiveKind::kReduceScatter : CollectiveKind::kAllReduce, bucket_comm(bucket),
                       bucket.numel * k_.grad_bytes, ph, blocking, {}, ov,
                       k_.grad_bytes == 4 ? schedule::DType::kFP32 : k_.dtype);
    cur_layer_ = saved_layer;
    cur_mb_ = saved_mb;
    cur_chunk_ = saved_chunk;
    prefix_ = saved_prefix;
  }

  void dispatch_chunk(std::uint32_t chunk, bool blocking) {
    for (std::size_t b = 0; b < buckets(chunk).size(); ++b) dispatch_grad_bucket(chunk, b, blocking);
  }

  // Param all-gather overlap (overlap_param_gather): issued at the start of the step (steady state: the params were
  // updated by the previous step's optimizer) and waited by the forward pre-hooks of the first micro-batch.
  OpId issue_param_ag(std::uint32_t chunk, std::size_t b) {
    auto& st = bucket_state_[chunk][b];
    if (st.ag != schedule::kNoOp) return st.ag;
    const auto saved_mb = cur_mb_;
    const auto saved_layer = cur_layer_;
    const auto saved_prefix = prefix_;
    cur_mb_ = -1;
    cur_layer_ = -1;
    prefix_ = "dp.";
    const auto saved_chunk = cur_chunk_;
    cur_chunk_ = static_cast<std::int32_t>(chunk);
    if (bucket_group(buckets(chunk)[b]) == 1) return schedule::kNoOp;
    st.ag = collective(x_.st.dp, Name{bucket_name(chunk, b), ".param_ag"}, CollectiveKind::kAllGather,
                       bucket_comm(buckets(chunk)[b]), buckets(chunk)[b].numel * k_.act_bytes, Phase::kFwd, false, {},
                       "dp");
    cur_chunk_ = saved_chunk;
    cur_mb_ = saved_mb;
    cur_layer_ = saved_layer;
    prefix_ = saved_prefix;
    return st.ag;
  }

  void param_gather_wait(std::uint32_t chunk, std::string_view param, std::uint32_t mb) {
    if (!k_.param_overlap || mb != first_fwd_mb_[chunk]) return;
    const auto& bs = buckets(chunk);
    for (std::size_t b = bs.size(); b-- > 0;) {
      const auto& ps = bs[b].params;
      if (std::find(ps.begin(), ps.end(), param) == ps.end()) continue;
      auto& st = bucket_state_[chunk][b];
      if (st.ag_waited) return;
      if (k_.aligned_param_gather) {
        // Chunk-level: every bucket of the chunk was issued earlier; the first pre-hook waits for all of them.
        for (std::size_t i = 0; i < bs.size(); ++i) {
          const OpId ag = issue_param_ag(chunk, i);
          if (ag != schedule::kNoOp) pending_.push_back(ag);
          bucket_state_[chunk][i].ag_waited = true;
        }
        return;
      }
      // Prefetch depth 1 (reverse bucket order): wait this one (issuing it if nobody did), then issue the next.
      const OpId ag = issue_param_ag(chunk, b);
      if (ag != schedule::kNoOp) pending_.push_back(ag);
      st.ag_waited = true;
      if (b > 0) issue_param_ag(chunk, b - 1);
      return;
    }
  }

  // ---- pipeline P2P ----
  struct Exchange {
    bool send_next = false, recv_prev = false, send_prev = false, recv_next = false;
    std::uint32_t recv_prev_chunk = 0, recv_next_chunk = 0;
  };
  /// Posts the P2P ops of one exchange; blocking: the compute stream waits for all of them (and with
  /// batch_p2p_comm + batch_p2p_sync the host synchronizes the device). The sends wait for the last forward /
  /// backward output, or for `fwd_after` / `bwd_after` when given (the combined schedule's P2P hooks).
  void exchange(const Exchange& ex, bool blocking, std::vector<OpId> fwd_after = {}, std::vector<OpId> bwd_after = {}) {
    const std::uint64_t bytes = act(k_.tokens_sp, k_.h);  // [s/(c t_sp), b, h]
    const CommId pp = x_.pp_of[rank_];
    const std::string_view ov = blocking ? "" : "pp";
    OpId posted[4];  // at most one op per direction
    std::size_t n_posted = 0;
    std::vector<OpId> fwd_producer = std::move(fwd_after), bwd_producer = std::move(bwd_after);
    if (fwd_producer.empty() && last_fwd_output_ != schedule::kNoOp) fwd_producer.push_back(last_fwd_output_);
    if (bwd_producer.empty() && last_bwd_output_ != schedule::kNoOp) bwd_producer.push_back(last_bwd_output_);
    std::string saved_prefix;
    if (x_.op_names) {
      saved_prefix = prefix_;
      prefix_ = "pp.x" + str(exchanges_) + ".";
    }
    ++exchanges_;
    if (ex.send_next) {
      posted[n_posted++] =
          send(x_.st.pp_send_next, "send_fwd", pp, pp_peer(1), bytes, 0, Phase::kFwd, std::move(fwd_producer), ov);
    }
    if (ex.recv_prev) {
      const OpId r = recv(x_.st.pp_recv_prev, "recv_fwd", pp, pp_peer(-1), bytes, 0, Phase::kFwd, ov);
      posted[n_posted++] = r;
      fwd_recv_[ex.recv_prev_chunk].push_back(r);
    }
    if (ex.send_prev) {
      posted[n_posted++] =
          send(x_.st.pp_send_prev, "send_bwd", pp, pp_peer(-1), bytes, 1, Phase::kBwd, std::move(bwd_producer), ov);
    }
    if (ex.recv_next) {
      const OpId r = recv(x_.st.pp_recv_next, "recv_bwd", pp, pp_peer(1), bytes, 1, Phase::kBwd, ov);
      posted[n_posted++] = r;
      bwd_recv_[ex.recv_next_chunk].push_back(r);
    }
    if (blocking) {
      pending_.insert(pending_.end(), posted, posted + n_posted);
      if (k_.batch_p2p && x_.cfg->batch_p2p_sync) {
        for (std::size_t i = 0; i < n_posted; ++i) host_sync("batch_p2p_sync", posted[i], Phase::kNone);
      }
    }
    if (x_.op_names) prefix_ = std::move(saved_prefix);
  }

  void run_no_pipelining();
  void run_1f1b();
  void run_interleaved();
  void finalize_and_optimize();

  const Ctx& x_;
  const Dims& k_;
  RankId rank_;
  Coords co_;
  std::vector<schedule::Op>& ops_;  // the schedule's ops, this rank's from first_op_ on
  OpId first_op_;
  std::vector<OpId> pending_;  // deps the next compute-stream op takes (stream wait_event)
  OpId last_compute_ = schedule::kNoOp;
  OpId last_fwd_output_ = schedule::kNoOp;
  OpId last_bwd_output_ = schedule::kNoOp;
  std::uint32_t exchanges_ = 0;
  std::int32_t cur_layer_ = -1, cur_mb_ = -1, cur_chunk_ = -1;
  std::string prefix_;
  std::vector<std::deque<OpId>> fwd_recv_, bwd_recv_;
  bool hooks_on_ = false;
  std::uint32_t hook_chunk_ = 0;
  struct BucketState {
    std::size_t ready = 0;
    bool dispatched = false;
    OpId op = schedule::kNoOp;
    OpId last_producer = schedule::kNoOp;
    OpId ag = schedule::kNoOp;
    bool ag_waited = false;
  };
  std::vector<std::vector<BucketState>> bucket_state_;
  std::vector<std::uint32_t> first_fwd_mb_;
  // MoE / attention variants / EP overlap.
  ExpertCoords eco_;
  std::uint64_t aq_ = 0, akv_ = 0, adh_ = 0;  // attention heads (all TP ranks) and head dim of the current layer
  // Routing model (init_routing): token copies per EP peer for dispatch / combine (flex: per destination rank),
  // rows per local expert.
  std::vector<std::uint64_t> dispatch_copies_, combine_copies_, expert_groups_, flex_copies_, flex_combine_copies_;
  // Dispatcher and CP type as flags (compared once, not per layer).
  const bool dispatch_a2a_ = k_.dispatcher == "alltoall", dispatch_flex_ = k_.dispatcher == "flex";
  const bool dispatch_ag_ = k_.dispatcher == "allgather";
  const bool cp_p2p_ = k_.cp_type == "p2p", cp_ag_ = k_.cp_type == "all_gather", cp_hier_ = k_.cp_type == "a2a+p2p";
  bool no_ub_ = false;           // the current linears are not TE userbuffer sites
  bool comm_node_ = false;       // emitting a D or C node of the combined schedule (EP comm stream)
  std::vector<OpId> node_deps_;  // the node's event: deps of its first op
  bool defer_wgrad_ = false;     // delay_wgrad_compute: hold weight-gradient GEMMs for the W node
  struct Deferred {
    std::string name;
    schedule::Kernel kernel;
    std::vector<OpId> deps;
    std::string param;
    schedule::Tags tags;
  };
  std::vector<Deferred> deferred_;
  OpId d2h_ = schedule::kNoOp;     // D2H copy of the split sizes the dispatch host-syncs on
  OpId ln2_op_ = schedule::kNoOp;  // pre-MLP norm output (the shared expert's input)
};

void RankLowering::run_no_pipelining() {
  if (k_.ep_overlap) {  // combined_1f1b_schedule_for_no_pipelining: F0 | F1+B0 | ... | B(m-1)
    combined_fwd(0, 0);
    for (std::uint32_t mb = 1; mb < k_.m; ++mb) combined_pair(mb, 0, mb - 1, 0);
    combined_bwd(k_.m - 1, 0);
    return;
  }
  for (std::uint32_t mb = 0; mb < k_.m; ++mb) {
    chunk_fwd(mb, 0);
    chunk_bwd(mb, 0);
  }
}

void RankLowering::run_1f1b() {
  const std::uint32_t p = k_.p, r = co_.pp, m = k_.m;
  const bool first = r == 0, last = r == p - 1;
  const std::uint32_t warmup = std::min(p - r - 1, m);
  const std::uint32_t remaining = m - warmup;
  const bool blocking = true;
  std::uint32_t f = 0, bk = 0;
  for (std::uint32_t i = 0; i < warmup; ++i) {
    if (!first) exchange(Exchange{false, true, false, false, 0, 0}, blocking);
    chunk_fwd(f++, 0);
    if (!last) exchange(Exchange{true, false, false, false, 0, 0}, blocking);
  }
  if (remaining > 0 && !first) exchange(Exchange{false, true, false, false, 0, 0}, blocking);
  for (std::uint32_t i = 0; i < remaining; ++i) {
    const bool last_iteration = i + 1 == remaining;
    chunk_fwd(f++, 0);
    if (!last) exchange(Exchange{true, false, false, true, 0, 0}, blocking);  // send_forward_recv_backward
    chunk_bwd(bk++, 0);
    if (!first) {
      exchange(Exchange{false, !last_iteration, true, false, 0, 0}, blocking);  // send_backward(_recv_forward)
    }
  }
  for (std::uint32_t i = 0; i < warmup; ++i) {
    if (!last) exchange(Exchange{false, false, false, true, 0, 0}, blocking);
    chunk_bwd(bk++, 0);
    if (!first) exchange(Exchange{false, false, true, false, 0, 0}, blocking);
  }
  if (k_.grad_overlap) dispatch_chunk(0, false);  // grad_sync_func for stages whose hooks did not fire
}

void RankLowering::run_interleaved() {
  const std::uint32_t p = k_.p, v = k_.v, r = co_.pp, m = k_.m;
  const VirtualTable table = schedule_table(m, v, k_.g);
  const std::uint32_t total = m * v;
  std::uint32_t warmup = 2 * (p - r - 1) + (v - 1) * k_.g + (k_.ep_overlap ? 1 : 0);  // +1: EP overlap
  const bool all_warmup = warmup >= total;
  if (all_warmup) warmup = total;
  const std::uint32_t remaining = total - warmup;
  auto fchunk = [&](std::uint32_t vid) { return table.entries[vid % total].second; };
  auto fmb = [&](std::uint32_t vid) { return table.entries[vid].first; };
  auto bchunk = [&](std::uint32_t vid) { return v - 1 - table.entries[vid % total].second; };
  auto bmb = [&](std::uint32_t vid) { return table.entries[vid].first; };
  const bool ov = k_.p2p_overlap;
  std::set<std::uint32_t> synced;

  auto param_sync = [&](std::uint32_t vid) {  // forward_step_helper: launch param AG of the next chunk (aligned)
    if (!k_.aligned_param_gather) return;
    const std::uint32_t sid = vid + r;
    if (sid < total && fmb(sid) == 0) {
      const std::uint32_t next = fchunk(sid) + 1;
      if (next > 1 && next < v) {
        for (std::size_t b = 0; b < buckets(next).size(); ++b) issue_param_ag(next, b);
      }
    }
  };
  auto grad_sync = [&](std::uint32_t vid) {  // backward_step_helper: aligned whole-chunk grad reduction
    if (!k_.grad_overlap || !x_.cfg->align_grad_reduce) return;
    if (vid < r) return;
    const std::uint32_t gid = vid - r;
    if (bmb(gid) == m - 1) {
      const std::uint32_t c = bchunk(gid);
      dispatch_chunk(c, false);
      synced.insert(c);
    }
  };
  auto fwd = [&](std::uint32_t vid) {
    param_sync(vid);
    if (k_.ep_overlap)
      combined_fwd(fmb(vid), fchunk(vid));
    else
      chunk_fwd(fmb(vid), fchunk(vid));
  };
  auto bwd = [&](std::uint32_t vid) {
    if (k_.ep_overlap)
      combined_bwd(bmb(vid), bchunk(vid));
    else
      chunk_bwd(bmb(vid), bchunk(vid));
    grad_sync(vid);
  };
  // recv_tensor_from_previous_stage (MCore): whether a tensor arrives, and for which chunk.
  auto from_prev = [&](std::uint32_t vid, bool forward, bool& recv, std::uint32_t& next_chunk) {
    recv = true;
    const bool leading = forward ? r == 0 : r == p - 1;
    const std::uint32_t last_chunk = forward ? v - 1 : 0;
    auto chunk_of = [&](std::uint32_t id) { return forward ? fchunk(id) : bchunk(id); };
    if (leading) {
      if (vid < p - 1) {
        recv = false;
        next_chunk = chunk_of(vid + 1);
      } else {
        next_chunk = chunk_of(vid - (p - 1));
        if (next_chunk == last_chunk) recv = false;
        next_chunk = forward ? next_chunk + 1 : next_chunk - 1;
      }
    } else {
      next_chunk = chunk_of(vid + 1);
    }
  };

  if (r != 0) exchange(Exchange{false, true, false, false, 0, 0}, true);
  for (std::uint32_t k = 0; k < warmup; ++k) {
    fwd(k);
    const std::uint32_t next_chunk = fchunk(k + 1);
    bool recv_prev = !(r == 0 && next_chunk == 0);
    if (k + 1 == total) recv_prev = false;
    Exchange ex{!last_vs(fchunk(k)), recv_prev, false, false, next_chunk, 0};
    if (k + 1 == warmup && !all_warmup) {
      ex.recv_next = r != p - 1;
      ex.recv_next_chunk = v - 1;
    }
    exchange(ex, true);
  }
  for (std::uint32_t k = 0; k < remaining; ++k) {
    const std::uint32_t fk = k + warmup, bk = k;
    Exchange fx, bx;
    fx.send_next = !last_vs(fchunk(fk));
    from_prev(fk, true, fx.recv_prev, fx.recv_prev_chunk);
    if (k + 1 == remaining) fx.recv_prev = false;
    bx.send_prev = !first_vs(bchunk(bk));
    from_prev(bk, false, bx.recv_next, bx.recv_next_chunk);
    if (k_.ep_overlap) {  // the F of virtual id fk paired with the B of virtual id bk, layer by layer
      param_sync(fk);
      if (ov) {  // pp_post_forward / pp_post_backward post the P2P inside the combined step
        combined_pair(fmb(fk), fchunk(fk), bmb(bk), bchunk(bk), &fx, &bx);
        grad_sync(bk);
      } else {  // no hooks: send_forward_backward_recv_forward_backward after the step
        combined_pair(fmb(fk), fchunk(fk), bmb(bk), bchunk(bk));
        grad_sync(bk);
        Exchange both = fx;
        both.send_prev = bx.send_prev;
        both.recv_next = bx.recv_next;
        both.recv_next_chunk = bx.recv_next_chunk;
        exchange(both, true);
      }
    } else if (ov) {
      fwd(fk);
      exchange(fx, false);
      bwd(bk);
      exchange(bx, false);
    } else {
      fwd(fk);
      bwd(bk);
      Exchange both = fx;
      both.send_prev = bx.send_prev;
      both.recv_next = bx.recv_next;
      both.recv_next_chunk = bx.recv_next_chunk;
      exchange(both, true);  // send_forward_backward_recv_forward_backward
    }
  }
  if (all_warmup && r != p - 1) exchange(Exchange{false, false, false, true, 0, v - 1}, true);
  for (std::uint32_t k = remaining; k < total; ++k) {
    bwd(k);
    const std::uint32_t next_chunk = k + 1 < total ? bchunk(k + 1) : 0;
    bool recv_next = !(r == p - 1 && next_chunk == v - 1);
    if (k + 1 == total) recv_next = false;
    exchange(Exchange{false, false, !first_vs(bchunk(k)), recv_next, 0, next_chunk}, true);
  }
  if (k_.grad_overlap) {
    for (std::uint32_t c = 0; c < v; ++c) {
      if (!synced.count(c)) dispatch_chunk(c, false);  // remaining grad reductions
    }
  }
}

void RankLowering::finalize_and_optimize() {
  cur_mb_ = cur_layer_ = cur_chunk_ = -1;
  prefix_ = "optim.";
  const bool distopt = x_.cfg->use_distributed_optimizer;
  // finish_grad_sync per chunk: dispatch what is left (blocking), wait for what was dispatched.
  for (std::uint32_t c = 0; c < k_.v; ++c) {
    for (std::size_t b = 0; b < buckets(c).size(); ++b) {
      auto& st = bucket_state_[c][b];
      if (bucket_group(buckets(c)[b]) > 1) {
        if (!st.dispatched)
          dispatch_grad_bucket(c, b, true);
        else if (st.op != schedule::kNoOp)
          pending_.push_back(st.op);
      }
    }
  }
  prefix_ = "optim.";
  std::uint64_t local = 0, norms = 0;
  for (std::uint32_t c = 0; c < k_.v; ++c) {
    for (const auto& p : x_.params[co_.pp][c]) {
      local += p.numel;
      if (p.sp_reduce) norms += p.numel;
    }
  }
  // (2) TP all-reduce of the sequence-parallel layernorm grads.
  if (k_.sp) {
    collective(x_.st.tp, "sp_norm_grad_ar", CollectiveKind::kAllReduce, x_.tp_of[rank_], norms * k_.grad_bytes,
               Phase::kOptim, true);
  }
  // (3) tied embedding grads between the first and last stage.
  if (x_.embd_of[rank_] != kNone) {
    collective(x_.st.dp, "embedding_grad_ar", CollectiveKind::kAllReduce, x_.embd_of[rank_],
               k_.vocab_padded / k_.t * k_.h * k_.grad_bytes, Phase::kOptim, true);
  }
  std::uint64_t shard = 0;
  for (std::uint32_t c = 0; c < k_.v; ++c) {
    for (const auto& b : buckets(c)) shard += distopt ? b.numel / bucket_group(b) : b.numel;
  }
  host("host_optimizer", x_.cfg->host.optimizer_step_ns, Phase::kOptim);
  elementwise("grad_norm", shard * k_.grad_bytes, Phase::kOptim);
  if (x_.norm_of[rank_] != kNone) {
    const OpId ar = collective(x_.st.dp, "grad_norm_ar", CollectiveKind::kAllReduce, x_.norm_of[rank_], 4,
                               Phase::kOptim, true, {}, "", schedule::DType::kFP32);
    host_sync("grad_norm_item", ar, Phase::kOptim);  // clip_grad_norm: total_norm.item()
  }
  elementwise("clip_grads", 2 * shard * k_.grad_bytes, Phase::kOptim);
  kernel("adam", schedule::Optimizer{shard, k_.dtype}, Phase::kOptim);
  if (distopt && !k_.param_overlap) {
    for (std::uint32_t c = 0; c < k_.v; ++c) {
      for (std::size_t b = 0; b < buckets(c).size(); ++b) {
        if (bucket_group(buckets(c)[b]) == 1) continue;
        collective(x_.st.dp, Name{bucket_name(c, b), ".param_ag"}, CollectiveKind::kAllGather,
                   bucket_comm(buckets(c)[b]), buckets(c)[b].numel * k_.act_bytes, Phase::kOptim, true);
      }
    }
  }
  // The step ends when every stream has drained (the next step's forward waits for the param all-gathers).
  if (!pending_.empty()) elementwise("step_end", 0, Phase::kOptim);
}

void RankLowering::run() {
  bucket_state_.resize(k_.v);
  first_fwd_mb_.assign(k_.v, 0);
  for (std::uint32_t c = 0; c < k_.v; ++c) bucket_state_[c].resize(buckets(c).size());
  if (k_.aligned_param_gather) {  // at schedule start: all buckets of chunks 0 and 1
    for (std::uint32_t c = 0; c < std::min<std::uint32_t>(2, k_.v); ++c) {
      for (std::size_t b = 0; b < buckets(c).size(); ++b) issue_param_ag(c, b);
    }
  }
  if (k_.p == 1)
    run_no_pipelining();
  else if (k_.v == 1)
    run_1f1b();
  else
    run_interleaved();
  for (std::uint32_t c = 0; c < k_.v; ++c) {
    TWINSTEP_ASSERT(fwd_recv_[c].empty() && bwd_recv_[c].empty(), "rank %u chunk %u: unconsumed P2P receives", rank_,
                    c);
  }
  finalize_and_optimize();
}

// ---------------------------------------------------------------------------------------------------------------
// Memory.

MemoryEstimate estimate_memory(const Ctx& x, RankId rank) {
  const Dims& k = x.k;
  const Coords co = coords_of(k, rank);
  const RunConfig& cfg = *x.cfg;
  MemoryEstimate e;
  double numel = 0, expert_numel = 0;
  for (std::uint32_t c = 0; c < k.v; ++c) {
    for (const auto& p : x.params[co.pp][c]) (p.expert ? expert_numel : numel) += static_cast<double>(p.numel);
  }
  const double dpc = static_cast<double>(k.d) * k.c;
  e.params_bytes = (numel + expert_numel) * static_cast<double>(k.act_bytes);
  e.grads_bytes = (numel + expert_numel) * static_cast<double>(k.grad_bytes);
  // fp32 master weights + Adam moments (12 B/param), sharded over DP x CP (experts: expert-DP) with distopt.
  e.optimizer_bytes = numel * 12.0 / (cfg.use_distributed_optimizer ? dpc : 1.0) +
                      expert_numel * 12.0 / (cfg.use_distributed_optimizer ? static_cast<double>(k.de) : 1.0);
  // Activations saved per layer per micro-batch (flash attention: no s^2 term), bytes:
  //   attention: ln1 input + ln_out (T_sp h each), Q/K/V (T (nq+2nkv) dh / t), output (T nq dh / t) + fp32 LSE;
  //   MLP: ln2 input + fc1 input (T_sp h each), fc1 output (T ffn1 / t), activation output (T f / t).
  const double B = static_cast<double>(k.act_bytes), T = static_cast<double>(k.tokens),
               Tsp = static_cast<double>(k.tokens_sp), t = k.t;
  const double per_layer =
      B * (4 * Tsp * static_cast<double>(k.h) + T * static_cast<double>((k.nq + 2 * k.nkv) * k.dh) / t +
           T * static_cast<double>(k.nq * k.dh) / t + T * static_cast<double>(k.ffn1) / t +
           T * static_cast<double>(k.f) / t) +
      4.0 * T * static_cast<double>(k.nq) / t;
  const double per_layer_ckpt = B * Tsp * static_cast<double>(k.h);  // full recompute keeps only the layer input
  // MoE layers replace the dense MLP terms: router input, permuted tokens (T_m k h), received rows N_r (expert
  // input, fc1 output N_r ffn1_e / t_e, activation N_r f_e / t_e, fc2 output), probs, and the shared expert.
  const double Tm = Tsp, k_top = static_cast<double>(k.topk);
  const double n_r = Tm * k_top * k.te * k.skew;  // the busiest EP rank under skew
  const double moe_layer = per_layer - B * (T * static_cast<double>(k.ffn1) / t + T * static_cast<double>(k.f) / t) +
                           B * (Tm * k_top * static_cast<double>(k.h) +
                                n_r * (2 * static_cast<double>(k.h) + static_cast<double>(k.ffn1e + k.fe) / k.te)) +
                           4.0 * n_r + B * T * static_cast<double>(2 * k.shared_f + k.shared_f) / t;
  auto layer_bytes = [&](std::uint32_t l) { return x.model->is_moe_layer(l) ? moe_layer : per_layer; };
  auto chunk_bytes = [&](std::uint32_t chunk) {
    const auto& layers = x.vs_layers[chunk * k.p + co.pp];
    std::size_t recomputed = 0;
    if (x.recompute_full) {
      recomputed = cfg.recompute_method == "uniform" ? layers.size()
                                                     : std::min<std::size_t>(layers.size(), cfg.recompute_num_layers);
    }
    double bytes = static_cast<double>(recomputed) * per_layer_ckpt;
    for (std::size_t i = recomputed; i < layers.size(); ++i) bytes += layer_bytes(layers[i]);
    return bytes;
  };
  // In-flight micro-batches from the actual order: forwards whose backward has not run yet (EP overlap: the
  // combined schedule holds the paired forward's activations while the backward runs).
  double live = 0, peak = 0;
  if (k.ep_overlap) {
    for (const auto& step : combined_order(cfg, co.pp, k.m)) {
      if (step.has_forward) live += chunk_bytes(step.forward.chunk);
      peak = std::max(peak, live);
      if (step.has_backward) live -= chunk_bytes(step.backward.chunk);
    }
  } else {
    for (const auto& step : pipeline_order(cfg, co.pp, k.m)) {
      live += step.forward ? chunk_bytes(step.chunk) : -chunk_bytes(step.chunk);
      peak = std::max(peak, live);
    }
  }
  double transient = 0;
  if (x.recompute_full) transient = per_layer * static_cast<double>(cfg.recompute_num_layers);
  if (co.pp == k.p - 1) {  // logits and fp32 softmax of one micro-batch
    transient += T * static_cast<double>(k.vocab_padded) / t * (B + 4);
  }
  e.activations_bytes = peak + transient;
  std::uint32_t comms = 0;
  for (const auto* v : {&x.tp_of, &x.cp_of, &x.cpa_of, &x.cpp_of, &x.dp_of, &x.pp_of, &x.norm_of, &x.embd_of, &x.ep_of,
                        &x.etp_of, &x.tpep_of, &x.edp_of}) {
    if ((*v)[rank] != kNone) ++comms;
  }
  e.comm_buffers_bytes = static_cast<double>(comms) * static_cast<double>(kNcclBufferBytesPerComm);
  if (k.tp_overlap) e.comm_buffers_bytes += kUbSites * T * static_cast<double>(k.h) * B;
  if (k.p > 1) e.comm_buffers_bytes += 2.0 * Tsp * static_cast<double>(k.h) * B * (k.v > 1 ? 2 : 1);
  return e;
}

Ctx build_ctx(const ModelSpec& model, const RunConfig& cfg, std::vector<std::string>& warnings) {
  Ctx x;
  x.model = &model;
  x.cfg = &cfg;
  x.k = gate(model, cfg, warnings);
  x.vs_layers = virtual_stage_layers(model, cfg);
  x.recompute_full = cfg.recompute_granularity == "full";
  x.recompute_selective = cfg.recompute_granularity == "selective";
  const Dims& k = x.k;
  x.params.resize(k.p);
  x.buckets.resize(k.p);
  for (std::uint32_t r = 0; r < k.p; ++r) {
    for (std::uint32_t c = 0; c < k.v; ++c) {
      x.params[r].push_back(chunk_params(model, cfg, k, r, c, x.vs_layers[c * k.p + r]));
      auto b = make_buckets(x.params[r][c], cfg, static_cast<std::uint64_t>(k.d) * k.c, r, c, false);
      if (k.moe) {  // the expert buffer comes after the dense one (MCore: one buffer per (dtype, is_expert))
        auto eb = make_buckets(x.params[r][c], cfg, k.de, r, c, true);
        b.insert(b.end(), eb.begin(), eb.end());
      }
      x.buckets[r].push_back(std::move(b));
    }
  }
  x.layer_param_names.resize(model.num_layers);
  for (std::uint32_t l = 0; l < model.num_layers; ++l) {
    std::vector<Param> ps;
    layer_params_of(model, k, l, ps);
    for (const auto& p : ps) x.layer_param_names[l].push_back(p.name);
  }
  return x;
}

}  // namespace

std::vector<std::uint32_t> chunk_layers(const ModelSpec& model, const RunConfig& cfg, std::uint32_t pp_rank,
                                        std::uint32_t chunk) {
  const auto all = virtual_stage_layers(model, cfg);
  const std::uint32_t p = std::max<std::uint32_t>(1, cfg.pipeline_model_parallel_size);
  return all.at(chunk * p + pp_rank);
}

std::vector<DpBucket> dp_buckets(const ModelSpec& model, const RunConfig& cfg, std::uint32_t pp_rank,
                                 std::uint32_t chunk) {
  std::vector<std::string> warnings;
  const Ctx x = build_ctx(model, cfg, warnings);
  return x.buckets.at(pp_rank).at(chunk);
}

std::vector<PipelineStep> pipeline_order(const RunConfig& cfg, std::uint32_t r, std::uint32_t m) {
  const std::uint32_t p = std::max<std::uint32_t>(1, cfg.pipeline_model_parallel_size);
  const std::uint32_t v = std::max<std::uint32_t>(1, cfg.virtual_pipeline_model_parallel_size);
  std::vector<PipelineStep> out;
  if (p == 1) {
    for (std::uint32_t mb = 0; mb < m; ++mb) {
      out.push_back({true, mb, 0});
      out.push_back({false, mb, 0});
    }
    return out;
  }
  if (v == 1) {
    const std::uint32_t w = std::min(p - r - 1, m);
    std::uint32_t f = 0, b = 0;
    for (std::uint32_t i = 0; i < w; ++i) out.push_back({true, f++, 0});
    for (std::uint32_t i = 0; i < m - w; ++i) {
      out.push_back({true, f++, 0});
      out.push_back({false, b++, 0});
    }
    for (std::uint32_t i = 0; i < w; ++i) out.push_back({false, b++, 0});
    return out;
  }
  const std::uint32_t g = cfg.microbatch_group_size_per_vp_stage == 0 ? p : cfg.microbatch_group_size_per_vp_stage;
  const VirtualTable table = schedule_table(m, v, g);
  const std::uint32_t total = m * v;
  const std::uint32_t w = std::min(total, 2 * (p - r - 1) + (v - 1) * g);
  auto F = [&](std::uint32_t id) { out.push_back({true, table.entries[id].first, table.entries[id].second}); };
  auto B = [&](std::uint32_t id) { out.push_back({false, table.entries[id].first, v - 1 - table.entries[id].second}); };
  for (std::uint32_t i = 0; i < w; ++i) F(i);
  for (std::uint32_t i = 0; i < total - w; ++i) {
    F(w + i);
    B(i);
  }
  for (std::uint32_t i = total - w; i < total; ++i) B(i);
  return out;
}

std::vector<CombinedStep> combined_order(const RunConfig& cfg, std::uint32_t r, std::uint32_t m) {
  const std::uint32_t p = std::max<std::uint32_t>(1, cfg.pipeline_model_parallel_size);
  const std::uint32_t v = std::max<std::uint32_t>(1, cfg.virtual_pipeline_model_parallel_size);
  std::vector<CombinedStep> out;
  auto only_f = [&](PipelineStep f) {
    CombinedStep c;
    c.has_forward = true;
    c.forward = f;
    out.push_back(c);
  };
  auto only_b = [&](PipelineStep b) {
    CombinedStep c;
    c.has_backward = true;
    c.backward = b;
    out.push_back(c);
  };
  if (m == 0) return out;
  if (p == 1) {
    only_f({true, 0, 0});
    for (std::uint32_t mb = 1; mb < m; ++mb) {
      CombinedStep c;
      c.has_forward = c.has_backward = true;
      c.forward = {true, mb, 0};
      c.backward = {false, mb - 1, 0};
      out.push_back(c);
    }
    only_b({false, m - 1, 0});
    return out;
  }
  if (v == 1) throw Error("combined 1F1B with pipeline_model_parallel_size > 1 needs virtual pipelining (MCore)");
  const std::uint32_t g = cfg.microbatch_group_size_per_vp_stage == 0 ? p : cfg.microbatch_group_size_per_vp_stage;
  const VirtualTable table = schedule_table(m, v, g);
  const std::uint32_t total = m * v;
  const std::uint32_t w = std::min(total, 2 * (p - r - 1) + (v - 1) * g + 1);
  auto F = [&](std::uint32_t id) { return PipelineStep{true, table.entries[id].first, table.entries[id].second}; };
  auto B = [&](std::uint32_t id) {
    return PipelineStep{false, table.entries[id].first, v - 1 - table.entries[id].second};
  };
  for (std::uint32_t i = 0; i < w; ++i) only_f(F(i));
  for (std::uint32_t i = 0; i < total - w; ++i) {
    CombinedStep c;
    c.has_forward = c.has_backward = true;
    c.forward = F(w + i);
    c.backward = B(i);
    out.push_back(c);
  }
  for (std::uint32_t i = total - w; i < total; ++i) only_b(B(i));
  return out;
}

Lowered lower(const ModelSpec& model, const RunConfig& cfg) { return lower(model, cfg, LowerOptions{}); }

std::vector<std::string> check_config(const ModelSpec& model, const RunConfig& cfg) {
  std::vector<std::string> warnings;
  (void)build_ctx(model, cfg, warnings);
  return warnings;
}

Lowered lower(const ModelSpec& model, const RunConfig& cfg, const LowerOptions& options) {
  Lowered out;
  Ctx x = build_ctx(model, cfg, out.warnings);
  x.op_names = options.op_names;
  const Dims& k = x.k;
  const std::uint32_t world = cfg.world_size;
  schedule::Schedule& s = out.schedule;
  s.name = model.name + " tp" + str(k.t) + " pp" + str(k.p) + (k.v > 1 ? " vpp" + str(k.v) : "") + " cp" + str(k.c) +
           " dp" + str(k.d) + (k.moe ? " ep" + str(k.e) + (k.te != k.t ? " etp" + str(k.te) : "") : "");
  s.world_size = world;
  for (RankId r = 0; r < world; ++r) {
    const Coords co = coords_of(k, r);
    if (!options.representatives_only || (co.dp == 0 && (!options.mirror_tp || co.tp == 0))) {
      s.ranks.push_back(r);
    }
  }

  // Streams: compute, then the comm streams this layout uses (NCCL streams high priority: TORCH_NCCL_HIGH_PRIORITY=1).
  auto add_stream = [&](const std::string& name, int prio) {
    s.streams.push_back({name, prio});
    return static_cast<StreamId>(s.streams.size() - 1);
  };
  x.st.compute = add_stream("compute", 0);
  if (k.t > 1) x.st.tp = add_stream("tp", -1);
  if (k.tp_overlap) {
    x.st.tp_send = add_stream("tp_send", -1);
    x.st.tp_recv = add_stream("tp_recv", -1);
  }
  if (k.c > 1) {
    x.st.cp = add_stream("cp", -1);
    if (k.cp_type == "p2p" || k.cp_type == "a2a+p2p") x.st.cp_recv = add_stream("cp_recv", -1);
    if (k.cp_type == "a2a+p2p") x.st.cp_a2a = add_stream("cp_a2a", -1);
  }
  const bool tied_pp = model.share_embeddings_and_output_weights && k.p > 1;
  const bool need_dp_stream = static_cast<std::uint64_t>(k.d) * k.c > 1 || tied_pp || world > 1;
  if (need_dp_stream) x.st.dp = add_stream("dp", -1);
  if (k.moe) {
    x.st.ep = add_stream("ep", -1);
    if (k.te * k.e > 1) x.st.tp_ep = add_stream("tp_ep", -1);
    if (k.te > 1) x.st.etp = add_stream("etp", -1);
    x.st.dtoh = add_stream("dtoh", 0);
    if (k.shared_overlap) x.st.shared = add_stream("shared_expert", 0);
  }
  if (k.p > 1) {  // per peer direction, as PyTorch keeps one NCCL stream per P2P peer pair
    x.st.pp_send_next = add_stream("pp_send_next", -1);
    x.st.pp_recv_prev = add_stream("pp_recv_prev", -1);
    x.st.pp_send_prev = add_stream("pp_send_prev", -1);
    x.st.pp_recv_next = add_stream("pp_recv_next", -1);
  }

  // Communicators, with full member lists.
  x.tp_of.assign(world, kNone);
  x.cp_of.assign(world, kNone);
  x.dp_of.assign(world, kNone);
  x.pp_of.assign(world, kNone);
  x.norm_of.assign(world, kNone);
  x.embd_of.assign(world, kNone);
  x.cpa_of.assign(world, kNone);
  x.cpp_of.assign(world, kNone);
  auto add_named_comm = [&](const std::string& name, const std::string& kind, std::vector<RankId> members,
                            std::vector<CommId>& of) {
    const auto id = static_cast<CommId>(s.communicators.size());
    for (auto m : members) of[m] = id;
    s.communicators.push_back({name, kind, std::move(members)});
  };
  auto add_comm = [&](const std::string& kind, std::uint32_t index, std::vector<RankId> members,
                      std::vector<CommId>& of) {
    add_named_comm(kind + "." + str(index), kind, std::move(members), of);
  };
  if (k.t > 1) {
    for (std::uint32_t i = 0; i < world / k.t; ++i) {
      std::vector<RankId> m;
      for (std::uint32_t j = 0; j < k.t; ++j) m.push_back(i * k.t + j);
      add_comm("tp", i, m, x.tp_of);
    }
  }
  if (k.c > 1) {
    std::uint32_t idx = 0, a2a_idx = 0, p2p_idx = 0;
    for (std::uint32_t pp = 0; pp < k.p; ++pp) {
      for (std::uint32_t dp = 0; dp < k.d; ++dp) {
        for (std::uint32_t tp = 0; tp < k.t; ++tp) {
          if (k.cp_type != "a2a+p2p") {
            std::vector<RankId> m;
            for (std::uint32_t cp = 0; cp < k.c; ++cp) m.push_back(rank_of(k, {tp, cp, dp, pp}));
            add_comm("cp", idx++, m, x.cp_of);
            continue;
          }
          // Megatron's hierarchical groups: level 0 = runs of ca consecutive CP ranks, level 1 = stride ca.
          for (std::uint32_t o = 0; o < k.cpo && k.ca > 1; ++o) {
            std::vector<RankId> m;
            for (std::uint32_t i = 0; i < k.ca; ++i) m.push_back(rank_of(k, {tp, o * k.ca + i, dp, pp}));
            add_named_comm("cp_a2a." + str(a2a_idx++), "cp", m, x.cpa_of);
          }
          for (std::uint32_t i = 0; i < k.ca && k.cpo > 1; ++i) {
            std::vector<RankId> m;
            for (std::uint32_t o = 0; o < k.cpo; ++o) m.push_back(rank_of(k, {tp, o * k.ca + i, dp, pp}));
            add_named_comm("cp_p2p." + str(p2p_idx++), "cp", m, x.cpp_of);
          }
        }
      }
    }
  }
  if (static_cast<std::uint64_t>(k.d) * k.c > 1) {  // dense grads reduce over DP x CP (intra_dp_cp)
    std::uint32_t idx = 0;
    for (std::uint32_t pp = 0; pp < k.p; ++pp) {
      for (std::uint32_t tp = 0; tp < k.t; ++tp) {
        std::vector<RankId> m;
        for (std::uint32_t dp = 0; dp < k.d; ++dp) {
          for (std::uint32_t cp = 0; cp < k.c; ++cp) m.push_back(rank_of(k, {tp, cp, dp, pp}));
        }
        add_comm("dp", idx++, m, x.dp_of);
      }
    }
  }
  if (k.p > 1) {
    const std::uint32_t stride = k.t * k.c * k.d;
    for (std::uint32_t i = 0; i < stride; ++i) {
      std::vector<RankId> m;
      for (std::uint32_t pp = 0; pp < k.p; ++pp) m.push_back(i + stride * pp);
      add_comm("pp", i, m, x.pp_of);
    }
  }
  // MoE expert layout (etp fastest, then ep, then expert-DP, per pipeline stage), full member lists.
  x.ep_of.assign(world, kNone);
  x.etp_of.assign(world, kNone);
  x.tpep_of.assign(world, kNone);
  x.edp_of.assign(world, kNone);
  if (k.moe) {
    std::uint32_t ie = 0, it = 0, itpe = 0, id = 0;
    for (std::uint32_t pp = 0; pp < k.p; ++pp) {
      for (std::uint32_t edp = 0; edp < k.de; ++edp) {
        for (std::uint32_t etp = 0; etp < k.te && k.e > 1; ++etp) {
          std::vector<RankId> m;
          for (std::uint32_t ep = 0; ep < k.e; ++ep) m.push_back(expert_rank_of(k, {etp, ep, edp, pp}));
          add_comm("ep", ie++, m, x.ep_of);
        }
        for (std::uint32_t ep = 0; ep < k.e && k.te > 1; ++ep) {
          std::vector<RankId> m;
          for (std::uint32_t etp = 0; etp < k.te; ++etp) m.push_back(expert_rank_of(k, {etp, ep, edp, pp}));
          add_comm("etp", it++, m, x.etp_of);
        }
        if (k.te * k.e > 1) {
          std::vector<RankId> m;
          for (std::uint32_t ep = 0; ep < k.e; ++ep) {
            for (std::uint32_t etp = 0; etp < k.te; ++etp) m.push_back(expert_rank_of(k, {etp, ep, edp, pp}));
          }
          add_comm("tp_ep", itpe++, m, x.tpep_of);
        }
      }
      for (std::uint32_t ep = 0; ep < k.e && k.de > 1; ++ep) {
        for (std::uint32_t etp = 0; etp < k.te; ++etp) {
          std::vector<RankId> m;
          for (std::uint32_t edp = 0; edp < k.de; ++edp) m.push_back(expert_rank_of(k, {etp, ep, edp, pp}));
          add_comm("expt_dp", id++, m, x.edp_of);
        }
      }
    }
  }
  // Grad-norm reduction group: the whole world with the distributed optimizer, else the model-parallel group.
  if (cfg.use_distributed_optimizer) {
    if (world > 1) {
      std::vector<RankId> m(world);
      std::iota(m.begin(), m.end(), 0);
      add_comm("world", 0, m, x.norm_of);
    }
  } else if (k.t * k.p > 1) {
    std::uint32_t idx = 0;
    for (std::uint32_t dp = 0; dp < k.d; ++dp) {
      for (std::uint32_t cp = 0; cp < k.c; ++cp) {
        std::vector<RankId> m;
        for (std::uint32_t pp = 0; pp < k.p; ++pp) {
          for (std::uint32_t tp = 0; tp < k.t; ++tp) m.push_back(rank_of(k, {tp, cp, dp, pp}));
        }
        add_comm("mp", idx++, m, x.norm_of);
      }
    }
  }
  if (tied_pp) {
    std::uint32_t idx = 0;
    for (std::uint32_t dp = 0; dp < k.d; ++dp) {
      for (std::uint32_t cp = 0; cp < k.c; ++cp) {
        for (std::uint32_t tp = 0; tp < k.t; ++tp) {
          add_comm("embd", idx++, {rank_of(k, {tp, cp, dp, 0}), rank_of(k, {tp, cp, dp, k.p - 1})}, x.embd_of);
        }
      }
    }
  }

  for (const auto& comm : s.communicators) x.comm_size.push_back(static_cast<std::uint32_t>(comm.members.size()));

  // Ops, rank by rank (each rank is a function of its coordinates alone, so only present ranks are built).
  // Room for the ops, so that the vector of (large) ops is not moved and its fresh pages not touched twice while it
  // grows. Before the first rank, a generous guess of its ops (a hint only: more ops just grow the vector; room that
  // is never written costs no memory; capped): kOpsPerLayerStep per layer and micro-batch (a dense layer without TP
  // overlap lowers to about 40 ops, an MoE layer to about 50), kOpsPerStep per (micro-batch, chunk), the optimizer.
  // Ranks lower to about as many ops each, in proportion to their layers (plus the embedding on the first stage,
  // the output layer and loss on the last): once the first rank is known, room for all of them, each scaled by the
  // most layers a stage holds over the first rank's stage, with a rank's worth and 1/8 to spare.
  constexpr std::size_t kOpsPerLayerStep = 64, kOpsPerStep = 32, kOpsPerRank = 512, kMaxGuess = std::size_t{1} << 22;
  std::vector<std::size_t> stage_layers(k.p, 0);
  for (std::uint32_t pp = 0; pp < k.p; ++pp) {
    for (std::uint32_t c = 0; c < k.v; ++c) stage_layers[pp] += x.vs_layers[c * k.p + pp].size();
  }
  const std::size_t most_layers = *std::max_element(stage_layers.begin(), stage_layers.end());
  const std::size_t first_layers = s.ranks.empty() ? 0 : stage_layers[coords_of(k, s.ranks.front()).pp];
  s.ops.reserve(std::min(
      kMaxGuess, static_cast<std::size_t>(k.m) * (first_layers * kOpsPerLayerStep + k.v * kOpsPerStep) + kOpsPerRank));
  for (RankId r : s.ranks) {
    RankLowering(x, r, s.ops).run();
    if (r == s.ranks.front() && s.ranks.size() > 1) {
      const std::size_t per_rank = s.ops.size() * (most_layers + 1) / (first_layers + 1) + 1;
      const std::size_t n = s.ranks.size();
      s.ops.reserve(per_rank * (n + 1) + per_rank * n / 8);
    }
    out.memory_per_rank.push_back(estimate_memory(x, r));
  }
  for (const auto& m : out.memory_per_rank) {
    if (m.total_bytes() > out.peak_memory.total_bytes()) out.peak_memory = m;
  }
  out.fits = out.peak_memory.total_bytes() <= cfg.gpu_memory_bytes;

  // model_flops_per_step = 6 * N_matmul * tokens + attention, tokens = global_batch_size * seq_length;
  // attention per layer = 3.5 x forward (kernel_math: backward 2.5x), forward = 4 * b * s^2 * n_q * d_h / 2 (causal).
  // MoE: only the top-k routed experts (and the shared ones) are active per token, so the (E - k) idle experts'
  // weights are taken out of N. MLA: QK^T over qk + rope dims and PV over v dims. Gated DeltaNet layers have no
  // quadratic attention term (their scan is linear in s and left out, as the stand-in kernel is an estimate).
  const double tokens = static_cast<double>(cfg.global_batch_size) * static_cast<double>(k.s);
  double active = matmul_params(model);
  double attn_fwd_sum = 0;
  const double bs2 = static_cast<double>(cfg.global_batch_size) * static_cast<double>(k.s) * static_cast<double>(k.s);
  for (std::uint32_t l = 0; l < model.num_layers; ++l) {
    if (model.is_moe_layer(l)) {
      const double per_expert = static_cast<double>(model.hidden_size) * static_cast<double>(k.ffn1e + k.fe);
      active -= static_cast<double>(k.experts - k.topk) * per_expert;
    }
    if (model.is_linear_attention_layer(l)) continue;
    if (model.uses_mla()) {
      attn_fwd_sum += 2.0 * bs2 * static_cast<double>(k.nq) *
                      static_cast<double>(model.qk_head_dim + model.qk_pos_emb_head_dim + model.v_head_dim) * 0.5;
    } else {
      attn_fwd_sum += 4.0 * bs2 * static_cast<double>(k.nq * k.dh) * 0.5;
    }
  }
  out.model_flops_per_step = 6.0 * active * tokens + 3.5 * attn_fwd_sum;

  s.meta["generator"] = "twinstep lower";
  s.meta["model"] = model.name;
  s.meta["layout"] = "tp" + str(k.t) + " pp" + str(k.p) + " vpp" + str(k.v) + " cp" + str(k.c) + " dp" + str(k.d) +
                     (k.sp ? " sp" : "");
  s.meta["micro_batches"] = str(k.m);
  if (k.moe) {
    s.meta["moe"] = "ep" + str(k.e) + " etp" + str(k.te) + " expt_dp" + str(k.de) + " dispatcher " + k.dispatcher +
                    (k.ep_overlap ? " ep_overlap" : "") + (k.delay_wgrad ? " delay_wgrad" : "") +
                    (k.shared_overlap ? " shared_expert_overlap" : "") + " routing_skew " + std::to_string(k.skew);
  }
  if (options.representatives_only && options.mirror_tp) {
    const std::uint64_t tc = static_cast<std::uint64_t>(k.t) * k.c;
    s.meta["representatives"] = "tp0 dp0";
    s.meta["representative_of"] =
        "r - (r mod " + str(k.t) + ") - ((r / " + str(tc) + ") mod " + str(k.d) + ") * " + str(tc);
  } else if (options.representatives_only) {
    // An absent rank r mirrors the present rank with the same tp, cp and pp coordinates and dp = 0:
    // representative(r) = r - dp(r) * tp * cp, with dp(r) = (r / (tp * cp)) mod dp (Megatron rank order).
    s.meta["representatives"] = "dp0";
    s.meta["representative_of"] = "r - ((r / " + str(static_cast<std::uint64_t>(k.t) * k.c) + ") mod " + str(k.d) +
                                  ") * " + str(static_cast<std::uint64_t>(k.t) * k.c);
  }
  s.warnings = out.warnings;
  return out;
}

}  // namespace twinstep::models
