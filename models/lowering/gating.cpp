// Gating (megatron-overlap.md section 7): one function per group of rules, applied in a fixed order so that the
// first broken rule is the one reported. Layout sizes, widths, pipeline and P2P flags, TP overlap and CDMC, CP
// type, recompute, DP overlap, then the MoE rules (expert layout, dispatcher, EP and shared-expert overlap).
#include "models/lowering/gating.hpp"

#include <algorithm>
#include <cstdint>

namespace twinstep::models::lowering {
namespace {

/// Gated DeltaNet (linear attention) layers: TP must divide their heads, CP is not supported, and the scan is a
/// stand-in (warned).
void gate_linear_attention(const ModelSpec& model, const Dims& k, std::vector<std::string>& warnings) {
  bool linear = false;
  for (std::uint32_t i = 0; i < model.num_layers; ++i) linear = linear || model.is_linear_attention_layer(i);
  if (linear) {
    if (model.linear_num_key_heads % k.tp != 0 || model.linear_num_value_heads % k.tp != 0) {
      fail("linear_num_key_heads and linear_num_value_heads must be divisible by tensor_model_parallel_size",
           "choose a TP size that divides " + str(model.linear_num_key_heads));
    }
    if (k.cp > 1) {
      fail("context parallelism with Gated DeltaNet (linear attention) layers is not supported",
           "use context_parallel_size 1 for " + model.name);
    }
    warnings.push_back(
        "Gated DeltaNet layers: the chunked recurrent scan is lowered as a stand-in (batched GEMMs "
        "over 64-token chunks: intra-chunk scores, state update, state output); its cost is an "
        "estimate, not a measured kernel");
  }
}

/// A dense model: no expert parallelism, and the MoE overlap knobs are off (warned).
void gate_dense_moe_knobs(const ModelSpec& model, const RunConfig& cfg, Dims& k, std::vector<std::string>& warnings) {
  if (k.ep > 1) {
    fail("expert_model_parallel_size " + str(k.ep) + " > 1 but model \"" + model.name + "\" has no MoE layers",
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
  k.etp = 1;
}

/// The expert layout (MCore expert rank generator): EP x ETP divides the ranks of a pipeline stage, EP divides the
/// experts, ETP divides the expert FFN, TP divides the shared expert; MoE with TP > 1 needs SP.
void gate_expert_layout(const ModelSpec& model, Dims& k) {
  const std::uint64_t stage = static_cast<std::uint64_t>(k.tp) * k.cp * k.dp;  // ranks per pipeline stage
  if (stage % (static_cast<std::uint64_t>(k.etp) * k.ep) != 0) {
    fail("tensor x context x data parallel size per pipeline stage (" + str(stage) +
             ") must be divisible by expert_tensor_parallel_size x expert_model_parallel_size (" +
             str(static_cast<std::uint64_t>(k.etp) * k.ep) + ") (MCore expert rank generator)",
         "choose EP x ETP dividing the GPUs per pipeline stage");
  }
  k.expert_dp = static_cast<std::uint32_t>(stage / (static_cast<std::uint64_t>(k.etp) * k.ep));
  k.experts = model.num_moe_experts;
  if (k.experts % k.ep != 0) {
    fail("num_moe_experts " + str(k.experts) + " must be divisible by expert_model_parallel_size " + str(k.ep) +
             " (MCore assert)",
         "choose an EP size that divides the experts (at most " + str(k.experts) + ")");
  }
  k.local_experts = k.experts / k.ep;
  k.topk = model.moe_router_topk;
  k.expert_ffn = model.moe_ffn_hidden_size;
  if (k.expert_ffn % k.etp != 0)
    fail("moe_ffn_hidden_size must be divisible by expert_tensor_parallel_size", "change ETP");
  k.expert_ffn1 = model.gated_linear_unit ? 2 * k.expert_ffn : k.expert_ffn;
  k.shared_ffn = static_cast<std::uint64_t>(model.moe_shared_expert_count) * model.moe_shared_expert_intermediate_size;
  if (k.shared_ffn % k.tp != 0)
    fail("shared expert width must be divisible by tensor_model_parallel_size", "change TP");
  if (k.tp > 1 && !k.sp) {
    fail(
        "MoE with tensor_model_parallel_size > 1 needs sequence_parallel (MCore raises at the MoE forward in "
        "training)",
        "add --sp");
  }
}

/// The token dispatcher (alltoall, allgather, flex; flex falls back on old GPUs) and the routing model's knobs.
void gate_dispatcher(const RunConfig& cfg, Dims& k, std::vector<std::string>& warnings) {
  k.dispatcher = cfg.moe_token_dispatcher_type;
  if (k.dispatcher == TokenDispatcher::kFlex && cfg.gpu_compute_capability_major < 8) {
    warnings.push_back("flex dispatcher (DeepEP/HybridEP) is not supported on this GPU (sm" +
                       str(cfg.gpu_compute_capability_major) + "x); Megatron-Bridge falls back to alltoall");
    k.dispatcher = TokenDispatcher::kAllToAll;
  }
  k.skew = cfg.moe_routing_skew;
  if (!(k.skew >= 1.0)) fail("moe_routing_skew must be >= 1 (1 = balanced)", "set --routing-skew 1 or more");
  if (k.skew > static_cast<double>(k.ep)) {
    fail("moe_routing_skew " + std::to_string(k.skew) + " exceeds expert_model_parallel_size " + str(k.ep) +
             " (the busiest EP rank cannot receive more than every token)",
         "use a skew in [1, EP]");
  }
  k.flex_sms = cfg.moe_flex_num_sms;
  if (k.dispatcher == TokenDispatcher::kFlex && k.flex_sms == 0)
    fail("moe_flex_num_sms must be >= 1 for flex", "set --flex-sms");
}

/// Shared-expert overlap, EP overlap (the combined 1F1B schedule) and delay_wgrad_compute: MCore's asserts and
/// Megatron-Bridge's silent disables (megatron-overlap.md sections 6d and 7).
void gate_moe_overlap(const ModelSpec& model, const RunConfig& cfg, Dims& k, std::vector<std::string>& warnings) {
  k.shared_overlap = cfg.moe_shared_expert_overlap;
  k.ep_overlap = cfg.overlap_moe_expert_parallel_comm;
  k.delay_wgrad = cfg.delay_wgrad_compute;
  if (k.shared_overlap && k.dispatcher == TokenDispatcher::kAllGather) {
    fail("moe_shared_expert_overlap with the allgather dispatcher (MCore ValueError)",
         "use moe_token_dispatcher_type alltoall or flex, or drop shared_expert overlap");
  }
  if (k.shared_overlap && k.dispatcher == TokenDispatcher::kFlex) {
    warnings.push_back(
        "flex dispatcher: Megatron-Bridge apply_flex_dispatcher_backend forces "
        "moe_shared_expert_overlap=False: shared-expert overlap is off");
    k.shared_overlap = false;
  }
  if (k.shared_overlap && k.shared_ffn == 0) {
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
    if (k.ep <= 1) fail(rule + "expert_model_parallel_size > 1 (MCore assert)", "set --ep 2 or more, or drop ep");
    if (k.experts <= 1) fail(rule + "num_moe_experts > 1 (Bridge assert)", "drop ep overlap");
    if (k.dispatcher == TokenDispatcher::kAllGather) {
      fail(rule + "moe_token_dispatcher_type alltoall or flex, not \"" + to_string(k.dispatcher) +
               "\" (a flex backend alone is not enough: the dispatcher type must be flex) (MCore assert)",
           "use --dispatcher alltoall or flex");
    }
    if (cfg.dtype != schedule::DType::kBF16 && cfg.dtype != schedule::DType::kFP16 &&
        cfg.dtype != schedule::DType::kFP8) {
      fail(rule + "bf16 or fp16 (MCore assert)", "use --dtype bf16");
    }
    if (k.pp > 1 && k.vpp == 1) {
      fail(rule + "virtual_pipeline_model_parallel_size when pipeline_model_parallel_size > 1 (MCore assert)",
           "set --vpp 2 or more");
    }
    if (cfg.recompute_granularity == RecomputeGranularity::kFull) {
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

/// MoE layout and the EP-overlap / dispatcher gating rules (megatron-overlap.md sections 6d and 7).
void gate_moe(const ModelSpec& model, const RunConfig& cfg, Dims& k, std::vector<std::string>& warnings) {
  for (std::uint32_t i = 0; i < model.num_layers; ++i) k.moe = k.moe || model.is_moe_layer(i);
  gate_linear_attention(model, k, warnings);
  k.ep = cfg.expert_model_parallel_size;
  k.etp = cfg.expert_tensor_parallel_size == 0 ? k.tp : cfg.expert_tensor_parallel_size;
  if (k.ep == 0) fail("expert_model_parallel_size must be >= 1", "set --ep 1 or more");
  if (!k.moe) {
    gate_dense_moe_knobs(model, cfg, k, warnings);
    return;
  }
  gate_expert_layout(model, k);
  k.router_fusion = cfg.moe_router_fusion;
  k.permute_fusion = cfg.moe_permute_fusion;
  k.aux_loss = model.moe_aux_loss_coeff > 0;
  gate_dispatcher(cfg, k, warnings);
  gate_moe_overlap(model, cfg, k, warnings);
}

/// Parallel sizes, sequence parallelism, micro-batch and the micro-batches per step (global batch divisibility).
void gate_sizes(const RunConfig& cfg, Dims& k, std::vector<std::string>& warnings) {
  k.tp = cfg.tensor_model_parallel_size;
  k.pp = cfg.pipeline_model_parallel_size;
  k.vpp = std::max<std::uint32_t>(1, cfg.virtual_pipeline_model_parallel_size);
  k.cp = cfg.context_parallel_size;
  if (k.tp == 0 || k.pp == 0 || k.cp == 0) fail("parallel sizes must be >= 1", "set tp/pp/cp to at least 1");
  k.dp = derived_dp(cfg);
  k.sp = cfg.sequence_parallel && k.tp > 1;
  if (cfg.sequence_parallel && k.tp == 1) {
    warnings.push_back("sequence_parallel with tensor_model_parallel_size=1 has no effect (Megatron disables it)");
  }
  k.micro_batch = cfg.micro_batch_size;
  k.seq = cfg.seq_length;
  if (k.micro_batch == 0 || k.seq == 0) fail("micro_batch_size and seq_length must be >= 1", "set them");
  const std::uint64_t per_step = static_cast<std::uint64_t>(k.micro_batch) * k.dp;
  if (cfg.global_batch_size == 0 || cfg.global_batch_size % per_step != 0) {
    fail("global_batch_size " + str(cfg.global_batch_size) +
             " is not divisible by micro_batch_size x dp = " + str(per_step),
         "choose global_batch_size as a multiple of " + str(per_step));
  }
  k.microbatches = static_cast<std::uint32_t>(cfg.global_batch_size / per_step);
}

/// A sequence longer than the model's context (max_position_embeddings, when the model file gives one): Megatron
/// asserts max_position_embeddings >= seq_length, so such a run needs a model configured for the longer context.
/// Lowered as asked, with the model's position table unchanged, and said in a warning rather than refused: planners
/// ask what a longer-context training of the same shapes would cost (RoPE layers hold no per-position weights).
void gate_context_length(const ModelSpec& model, const RunConfig& cfg, std::vector<std::string>& warnings) {
  const std::uint64_t context = model.max_position_embeddings;
  if (context == 0 || cfg.seq_length <= context) return;
  std::string w = "seq_length " + str(cfg.seq_length) + " exceeds " + (model.name.empty() ? "the model" : model.name) +
                  "'s max_position_embeddings " + str(context) +
                  " (Megatron asserts max_position_embeddings >= seq_length): lowered as asked, for a model configured "
                  "with the longer context; set max_position_embeddings in the model file, or --seq " +
                  str(context) + " or less";
  if (model.position_embedding_type == "learned_absolute") {
    w += "; the learned position table keeps its " + str(context) + " rows here";
  }
  warnings.push_back(std::move(w));
}

/// Head and width divisibility by TP, tokens per CP rank (and per TP rank with SP), padded vocabulary, dtypes.
void gate_widths(const ModelSpec& model, const RunConfig& cfg, Dims& k) {
  if (model.num_attention_heads % k.tp != 0 || model.num_query_groups % k.tp != 0) {
    fail("num_attention_heads (" + str(model.num_attention_heads) + ") and num_query_groups (" +
             str(model.num_query_groups) + ") must be divisible by tensor_model_parallel_size " + str(k.tp),
         "choose a TP size that divides the KV groups");
  }
  if (k.cp > 1 && k.seq % (2ull * k.cp) != 0) {
    fail("seq_length " + str(k.seq) + " must be divisible by 2 x context_parallel_size = " + str(2ull * k.cp),
         "change seq_length or context_parallel_size");
  }
  k.tokens = k.seq * k.micro_batch / k.cp;
  if (k.sp && k.tokens % k.tp != 0) {
    fail("sequence_parallel needs seq_length x micro_batch_size / cp (" + str(k.tokens) +
             ") divisible by tensor_model_parallel_size " + str(k.tp),
         "change seq_length or TP");
  }
  k.tokens_sp = k.sp ? k.tokens / k.tp : k.tokens;
  k.hidden = model.hidden_size;
  k.ffn = model.ffn_hidden_size;
  k.ffn1 = model.gated_linear_unit ? 2 * k.ffn : k.ffn;
  if (k.ffn % k.tp != 0) fail("ffn_hidden_size must be divisible by tensor_model_parallel_size", "change TP");
  k.heads = model.num_attention_heads;
  k.kv_groups = model.num_query_groups;
  k.head_dim = model.kv_channels;
  const std::uint64_t mult = static_cast<std::uint64_t>(model.make_vocab_size_divisible_by) * k.tp;
  k.vocab_padded = (model.vocab_size + mult - 1) / mult * mult;
  // fp8: linear-layer GEMMs in fp8 (Dims::fp8); activations, attention, norms and communication stay bf16.
  k.fp8 = cfg.dtype == schedule::DType::kFP8;
  k.dtype = k.fp8 ? schedule::DType::kBF16 : cfg.dtype;
  k.fp8_current = k.fp8 && cfg.fp8_recipe == Fp8Recipe::kTensorwise;
  if (k.fp8 && !k.fp8_current && cfg.fp8_amax_history_len == 0) {
    fail("fp8_amax_history_len must be >= 1 with the delayed fp8 recipe (TE keeps that many amax rows)",
         "set --fp8-amax-history-len (Megatron-Bridge's fp8 recipe: 1024)");
  }
  if (cfg.fp8_param_gather && !k.fp8) {
    fail("fp8_param_gather keeps fp8 parameters, which only dtype fp8 has",
         "use --dtype fp8 or drop --fp8-param-gather (run config field fp8_param_gather)");
  }
  if (cfg.fp8_param_gather && !cfg.use_distributed_optimizer) {
    fail(
        "fp8_param_gather needs the distributed optimizer (Megatron: '--fp8-param-gather only supported with "
        "distributed optimizer'; it re-quantizes the fp32 main-parameter shards into the fp8 parameters)",
        "add --distributed-optimizer (use_distributed_optimizer) or drop --fp8-param-gather");
  }
  k.fp8_param_gather = cfg.fp8_param_gather;
  k.act_bytes = schedule::dtype_bytes(k.dtype);
  k.grad_bytes = cfg.grad_reduce_in_fp32 ? 4 : k.act_bytes;
  k.wgrad_accumulate_fp32 = cfg.gradient_accumulation_fusion && k.grad_bytes == 4;
  k.wgrad_accumulate_output = cfg.gradient_accumulation_fusion && k.grad_bytes != 4;
  k.linear_main_grad_add = !cfg.gradient_accumulation_fusion;
  k.main_grad_add_bytes_per_element = 2 * k.grad_bytes + k.act_bytes;
}

/// The interleaved schedule's micro-batch grouping and the P2P flags (section 7).
void gate_pipeline(const RunConfig& cfg, Dims& k, std::vector<std::string>& warnings) {
  // Pipeline: interleaving needs PP > 1 (MCore).
  if (k.vpp > 1 && k.pp == 1) {
    fail("virtual_pipeline_model_parallel_size > 1 needs pipeline_model_parallel_size > 1 (MCore)",
         "set --pp > 1 or --vpp 1");
  }
  k.microbatch_group = cfg.microbatch_group_size_per_vp_stage == 0 ? k.pp : cfg.microbatch_group_size_per_vp_stage;
  if (k.vpp > 1) {
    if (k.microbatch_group < k.pp || k.microbatch_group > k.microbatches) {
      fail("interleaved schedule: microbatch_group_size_per_vp_stage " + str(k.microbatch_group) +
               " must be in [pp, micro-batches] = [" + str(k.pp) + ", " + str(k.microbatches) + "] (MCore ValueError)",
           "raise global_batch_size so that micro-batches per rank >= pp");
    }
    if (k.microbatches % k.microbatch_group != 0 && k.microbatches % k.microbatch_group < k.pp) {
      fail("interleaved schedule: micro-batches " + str(k.microbatches) + " mod group size " + str(k.microbatch_group) +
               " must be 0 or >= pp (MCore RuntimeError)",
           "make the number of micro-batches a multiple of " + str(k.microbatch_group));
    }
  }
  // P2P gating (section 7).
  k.p2p_overlap = cfg.overlap_p2p_comm;
  k.batch_p2p = cfg.batch_p2p_comm;
  if (k.p2p_overlap && k.vpp == 1) {
    warnings.push_back(
        "overlap_p2p_comm needs the interleaved schedule (virtual_pipeline_model_parallel_size > 1); "
        "MLM sets it to False when VPP is None: P2P overlap is off");
    k.p2p_overlap = false;
  }
  if (k.p2p_overlap && k.batch_p2p) {
    fail("overlap_p2p_comm and batch_p2p_comm are both set (MCore interleaved schedule raises ValueError)",
         "set batch_p2p_comm=false (--no-batch-p2p-comm) with overlap_p2p_comm");
  }
  if (k.vpp > 1 && !k.p2p_overlap && k.pp <= 2) {
    fail("interleaved schedule without overlap_p2p_comm needs pipeline_model_parallel_size > 2 (MLM assert)",
         "set overlap_p2p_comm=true (with batch_p2p_comm=false) or use pp > 2");
  }
  if (k.pp == 1) {
    k.p2p_overlap = false;
    k.batch_p2p = false;
  }
}

/// TE userbuffer overlap and CUDA_DEVICE_MAX_CONNECTIONS (MLM args).
void gate_tp_overlap(const RunConfig& cfg, Dims& k, std::vector<std::string>& warnings) {
  // TP overlap (Bridge _get_model_comm_overlap_cfgs): silently off when t < 2 or without SP.
  k.tp_overlap = cfg.tp_comm_overlap;
  if (k.tp_overlap && k.tp < 2) {
    warnings.push_back(
        "tp_comm_overlap needs tensor_model_parallel_size >= 2; Megatron-Bridge disables it: TP "
        "overlap is off");
    k.tp_overlap = false;
  }
  if (k.tp_overlap && !cfg.sequence_parallel) {
    warnings.push_back("tp_comm_overlap needs sequence_parallel; Megatron-Bridge disables it: TP overlap is off");
    k.tp_overlap = false;
  }
  k.ring_transport = cfg.tp_comm_overlap_ring_exchange_transport;
  k.ring_sms = k.ring_transport == schedule::Transport::kSmKernel ? cfg.tp_comm_overlap_ring_exchange_num_sm : 0;
  if (k.tp_overlap && k.ring_transport == schedule::Transport::kSmKernel && k.ring_sms == 0) {
    fail("tp_comm_overlap_ring_exchange_transport sm_kernel needs tp_comm_overlap_ring_exchange_num_sm >= 1",
         "set tp_comm_overlap_ring_exchange_num_sm (Transformer Engine's ring_exchange default is 1)");
  }
  if (k.tp_overlap && (k.tokens % (std::uint64_t{kPipelinedRsSplits} * k.tp) != 0)) {
    fail("tp_comm_overlap: tokens per CP rank (" + str(k.tokens) + ") must split into " + str(kPipelinedRsSplits) +
             " pipelined chunks and " + str(k.tp) + " ring chunks",
         "choose seq_length x micro_batch_size / cp divisible by " + str(kPipelinedRsSplits * k.tp));
  }
  // CDMC (MLM args): TP or CP > 1 on Hopper needs CUDA_DEVICE_MAX_CONNECTIONS=1.
  if ((k.tp > 1 || k.cp > 1) && cfg.gpu_compute_capability_major < 10 && cfg.cuda_device_max_connections != 1) {
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
}

/// cp_comm_type and its head divisibility rules; a2a+p2p's two-level group sizes.
void gate_context_parallel(const RunConfig& cfg, Dims& k) {
  // CP type (section 5 and 7).
  k.cp_type = cfg.cp_comm_type;
  if (k.cp > 1 && k.cp_type == CpCommType::kA2a && ((k.heads / k.tp) % k.cp != 0 || (k.kv_groups / k.tp) % k.cp != 0)) {
    fail(
        "cp_comm_type a2a needs attention heads and KV groups per TP rank divisible by context_parallel_size "
        "(TE assert): heads/tp = " +
            str(k.heads / k.tp) + ", groups/tp = " + str(k.kv_groups / k.tp) + ", cp = " + str(k.cp),
        "use cp_comm_type p2p or a CP size that divides the KV groups per TP rank");
  }
  if (k.cp > 1 && k.cp_type == CpCommType::kA2aP2p) {
    // Hierarchical CP (TE AttnFuncWithCPAndKVP2P with cp_group = [a2a group, p2p group]; megatron-overlap.md 5):
    // Megatron builds the groups from hierarchical_context_parallel_sizes, the first level of consecutive CP ranks.
    const auto& hs = cfg.hierarchical_context_parallel_sizes;
    std::uint64_t prod = 1;
    for (auto x : hs) prod *= x;
    if (hs.empty() || prod != k.cp) {
      fail(
          "cp_comm_type a2a+p2p needs hierarchical_context_parallel_sizes whose product is context_parallel_size "
          "(Megatron assert)",
          "set hierarchical_context_parallel_sizes, e.g. [2, " + str(std::max<std::uint32_t>(1, k.cp / 2)) + "]");
    }
    if (hs.size() != 2) {
      fail(
          "cp_comm_type a2a+p2p uses two levels (TE takes [a2a group, p2p group]); hierarchical_context_parallel_"
          "sizes has " +
              str(hs.size()) + " entries",
          "give [a2a size, p2p size], e.g. [2, " + str(std::max<std::uint32_t>(1, k.cp / 2)) + "]");
    }
    k.cp_a2a_size = hs[0];
    k.cp_p2p_size = hs[1];
    if ((k.heads / k.tp) % k.cp_a2a_size != 0 || (k.kv_groups / k.tp) % k.cp_a2a_size != 0) {
      fail(
          "cp_comm_type a2a+p2p needs attention heads and KV groups per TP rank divisible by the a2a size "
          "hierarchical_context_parallel_sizes[0] (TE assert): heads/tp = " +
              str(k.heads / k.tp) + ", groups/tp = " + str(k.kv_groups / k.tp) + ", a2a size = " + str(k.cp_a2a_size),
          "choose an a2a size that divides the KV groups per TP rank");
    }
  }
}

/// Full recompute needs a layer count.
void gate_recompute(const RunConfig& cfg) {
  if (cfg.recompute_granularity == RecomputeGranularity::kFull) {
    if (cfg.recompute_num_layers == 0) {
      fail("recompute_granularity full needs recompute_num_layers >= 1 (MLM assert)", "set recompute_num_layers");
    }
  }
}

/// Grad-reduce and param-gather overlap (section 2 and 7).
void gate_data_parallel(const RunConfig& cfg, Dims& k, std::vector<std::string>& warnings) {
  // DP (section 2 and 7).
  k.grad_overlap = cfg.overlap_grad_reduce;
  k.param_overlap = cfg.overlap_param_gather;
  if (k.param_overlap && !(cfg.use_distributed_optimizer && cfg.overlap_grad_reduce)) {
    fail("overlap_param_gather needs use_distributed_optimizer and overlap_grad_reduce (MLM assert)",
         "enable --distributed-optimizer and --overlap-grad-reduce, or drop --overlap-param-gather");
  }
  if (static_cast<std::uint64_t>(k.dp) * k.cp == 1) {
    if (k.grad_overlap || k.param_overlap) {
      warnings.push_back(
          "overlap_grad_reduce/overlap_param_gather with data-parallel x context-parallel size 1: "
          "there is nothing to reduce; DP overlap is off");
    }
    k.grad_overlap = false;
    k.param_overlap = false;
  }
  // align_param_gather: Bridge sets it when p > 1 and v > 1; MLM forces it off without VPP.
  k.aligned_param_gather = k.param_overlap && k.pp > 1 && k.vpp > 1;
}

}  // namespace

Dims gate(const ModelSpec& model, const RunConfig& cfg, std::vector<std::string>& warnings) {
  Dims k;
  gate_sizes(cfg, k, warnings);
  gate_widths(model, cfg, k);
  gate_context_length(model, cfg, warnings);
  gate_pipeline(cfg, k, warnings);
  gate_tp_overlap(cfg, k, warnings);
  gate_context_parallel(cfg, k);
  gate_recompute(cfg);
  gate_data_parallel(cfg, k, warnings);
  gate_moe(model, cfg, k, warnings);
  return k;
}

}  // namespace twinstep::models::lowering
