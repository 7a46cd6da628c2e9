// The public entry of the lowering (lower.hpp): build the run context, the schedule's ranks, streams and
// communicators, lower every present rank (models/lowering/rank_lowering.hpp), estimate memory and model FLOPs.
// The lowering itself lives in models/lowering/, one concept per file (docs/architecture.md lists them).
#include "models/lower.hpp"

#include <algorithm>

#include "models/lowering/context.hpp"
#include "models/lowering/memory.hpp"
#include "models/lowering/rank_lowering.hpp"

namespace twinstep::models {
namespace {

using lowering::Coords;
using lowering::Ctx;
using lowering::Dims;
using lowering::str;
using schedule::RankId;

/// "llama3-8b tp2 pp2 cp1 dp2": the schedule's name.
std::string schedule_name(const ModelSpec& model, const Dims& k) {
  return model.name + " tp" + str(k.tp) + " pp" + str(k.pp) + (k.vpp > 1 ? " vpp" + str(k.vpp) : "") + " cp" +
         str(k.cp) + " dp" + str(k.dp) + (k.moe ? " ep" + str(k.ep) + (k.etp != k.tp ? " etp" + str(k.etp) : "") : "");
}

/// Whether the ranks of a DP replica or TP group issue the same ops: not under a skewed MoE routing, where EP
/// position 0 receives more tokens than the others (models/lowering/moe_routing.hpp).
bool symmetric_routing(const Dims& k) { return !k.moe || k.skew == 1.0; }

/// Whether CP ranks are mirrored (LowerOptions::mirror_cp): asked for, and the CP ranks are symmetric (a2a).
bool mirrors_cp(const Dims& k, const LowerOptions& options) {
  return symmetric_routing(k) && options.representatives_only && options.mirror_tp && options.mirror_cp && k.cp > 1 &&
         k.cp_type == CpCommType::kA2a;
}

/// The ranks lower() emits: every rank, or the representatives (dp 0; also tp 0 with mirror_tp, cp 0 with mirror_cp).
/// A skewed routing falls back to every rank (the EP positions differ and span the DP and TP coordinates).
std::vector<RankId> present_ranks(const Dims& k, std::uint32_t world, const LowerOptions& options) {
  std::vector<RankId> ranks;
  const bool cp0 = mirrors_cp(k, options);
  for (RankId r = 0; r < world; ++r) {
    const Coords co = lowering::coords_of(k, r);
    if (options.one_rank_per_stage) {
      if (co.dp == 0 && co.tp == 0 && co.cp == 0) ranks.push_back(r);
      continue;
    }
    if (!options.representatives_only || !symmetric_routing(k) ||
        (co.dp == 0 && (!options.mirror_tp || co.tp == 0) && (!cp0 || co.cp == 0))) {
      ranks.push_back(r);
    }
  }
  return ranks;
}

/// The ops of every present rank, and its memory estimate.
void lower_ranks(const Ctx& x, Lowered& out) {
  const Dims& k = x.k;
  schedule::Schedule& s = out.schedule;
  // Ops, rank by rank (each rank is a function of its coordinates alone, so only present ranks are built).
  // Room for the ops, so that the vector of (large) ops is not moved and its fresh pages not touched twice while it
  // grows. Before the first rank, a generous guess of its ops (a hint only: more ops just grow the vector; room that
  // is never written costs no memory; capped): kOpsPerLayerStep per layer and micro-batch (a dense layer without TP
  // overlap lowers to about 40 ops, an MoE layer to about 50), kOpsPerStep per (micro-batch, chunk), the optimizer.
  // Ranks lower to about as many ops each, in proportion to their layers (plus the embedding on the first stage,
  // the output layer and loss on the last): once the first rank is known, room for all of them, each scaled by the
  // most layers a stage holds over the first rank's stage, with a rank's worth and 1/8 to spare.
  constexpr std::size_t kOpsPerLayerStep = 64, kOpsPerStep = 32, kOpsPerRank = 512, kMaxGuess = std::size_t{1} << 22;
  std::vector<std::size_t> stage_layers(k.pp, 0);
  for (std::uint32_t pp = 0; pp < k.pp; ++pp) {
    for (std::uint32_t c = 0; c < k.vpp; ++c) stage_layers[pp] += x.vs_layers[c * k.pp + pp].size();
  }
  const std::size_t most_layers = *std::max_element(stage_layers.begin(), stage_layers.end());
  const std::size_t first_layers = s.ranks.empty() ? 0 : stage_layers[lowering::coords_of(k, s.ranks.front()).pp];
  s.ops.reserve(std::min(
      kMaxGuess, static_cast<std::size_t>(k.microbatches) * (first_layers * kOpsPerLayerStep + k.vpp * kOpsPerStep) +
                     kOpsPerRank));
  for (RankId r : s.ranks) {
    lowering::RankLowering(x, r, s.ops).run();
    if (r == s.ranks.front() && s.ranks.size() > 1) {
      const std::size_t per_rank = s.ops.size() * (most_layers + 1) / (first_layers + 1) + 1;
      const std::size_t n = s.ranks.size();
      s.ops.reserve(per_rank * (n + 1) + per_rank * n / 8);
    }
    out.memory_per_rank.push_back(lowering::estimate_memory(x, r));
  }
}

double model_flops_per_step(const ModelSpec& model, const RunConfig& cfg, const Dims& k) {
  // model_flops_per_step = 6 * N_matmul * tokens + attention, tokens = global_batch_size * seq_length;
  // attention per layer = 3.5 x forward (kernel_math: backward 2.5x), forward = 4 * b * s^2 * n_q * d_h / 2 (causal).
  // MoE: only the top-k routed experts (and the shared ones) are active per token, so the (E - k) idle experts'
  // weights are taken out of N. MLA: QK^T over qk + rope dims and PV over v dims. Gated DeltaNet layers have no
  // quadratic attention term (their scan is linear in s and left out, as the stand-in kernel is an estimate).
  const double tokens = static_cast<double>(cfg.global_batch_size) * static_cast<double>(k.seq);
  double active = matmul_params(model);
  double attn_fwd_sum = 0;
  const double bs2 =
      static_cast<double>(cfg.global_batch_size) * static_cast<double>(k.seq) * static_cast<double>(k.seq);
  for (std::uint32_t l = 0; l < model.num_layers; ++l) {
    if (model.is_moe_layer(l)) {
      const double per_expert =
          static_cast<double>(model.hidden_size) * static_cast<double>(k.expert_ffn1 + k.expert_ffn);
      active -= static_cast<double>(k.experts - k.topk) * per_expert;
    }
    if (model.is_linear_attention_layer(l)) continue;
    if (model.uses_mla()) {
      attn_fwd_sum += 2.0 * bs2 * static_cast<double>(k.heads) *
                      static_cast<double>(model.qk_head_dim + model.qk_pos_emb_head_dim + model.v_head_dim) * 0.5;
    } else {
      attn_fwd_sum += 4.0 * bs2 * static_cast<double>(k.heads * k.head_dim) * 0.5;
    }
  }
  return 6.0 * active * tokens + 3.5 * attn_fwd_sum;
}

/// The schedule's meta: generator, model, layout, micro-batches, MoE layout, representative rule.
void describe(schedule::Schedule& s, const ModelSpec& model, const Dims& k, const LowerOptions& options) {
  s.meta["generator"] = "twinstep lower";
  s.meta["model"] = model.name;
  s.meta["layout"] = "tp" + str(k.tp) + " pp" + str(k.pp) + " vpp" + str(k.vpp) + " cp" + str(k.cp) + " dp" +
                     str(k.dp) + (k.sp ? " sp" : "");
  s.meta["micro_batches"] = str(k.microbatches);
  if (k.moe) {
    s.meta["moe"] = "ep" + str(k.ep) + " etp" + str(k.etp) + " expt_dp" + str(k.expert_dp) + " dispatcher " +
                    to_string(k.dispatcher) + (k.ep_overlap ? " ep_overlap" : "") +
                    (k.delay_wgrad ? " delay_wgrad" : "") + (k.shared_overlap ? " shared_expert_overlap" : "") +
                    " routing_skew " + std::to_string(k.skew);
  }
  if (options.one_rank_per_stage) {
    s.meta["representatives"] = "tp0 cp0 dp0 of each stage (not for simulation: absent peers' traffic unpaired)";
  } else if (!symmetric_routing(k)) {
    if (options.representatives_only) s.meta["representatives"] = "all (skewed MoE routing: the EP positions differ)";
  } else if (mirrors_cp(k, options)) {
    const std::uint64_t tc = static_cast<std::uint64_t>(k.tp) * k.cp;
    s.meta["representatives"] = "tp0 cp0 dp0";
    s.meta["representative_of"] =
        "r - (r mod " + str(tc) + ") - ((r / " + str(tc) + ") mod " + str(k.dp) + ") * " + str(tc);
  } else if (options.representatives_only && options.mirror_tp) {
    const std::uint64_t tc = static_cast<std::uint64_t>(k.tp) * k.cp;
    s.meta["representatives"] = "tp0 dp0";
    s.meta["representative_of"] =
        "r - (r mod " + str(k.tp) + ") - ((r / " + str(tc) + ") mod " + str(k.dp) + ") * " + str(tc);
  } else if (options.representatives_only) {
    // An absent rank r mirrors the present rank with the same tp, cp and pp coordinates and dp = 0:
    // representative(r) = r - dp(r) * tp * cp, with dp(r) = (r / (tp * cp)) mod dp (Megatron rank order).
    s.meta["representatives"] = "dp0";
    s.meta["representative_of"] = "r - ((r / " + str(static_cast<std::uint64_t>(k.tp) * k.cp) + ") mod " + str(k.dp) +
                                  ") * " + str(static_cast<std::uint64_t>(k.tp) * k.cp);
  }
}

}  // namespace

Lowered lower(const ModelSpec& model, const RunConfig& cfg) { return lower(model, cfg, LowerOptions{}); }

std::vector<std::string> check_config(const ModelSpec& model, const RunConfig& cfg) {
  std::vector<std::string> warnings;
  (void)lowering::build_ctx(model, cfg, warnings);
  return warnings;
}

MemoryEstimate estimate_peak_memory(const ModelSpec& model, const RunConfig& cfg) {
  std::vector<std::string> warnings;
  Ctx x = lowering::build_ctx(model, cfg, warnings);
  LowerOptions representatives;
  representatives.representatives_only = true;
  representatives.mirror_tp = true;
  schedule::Schedule s;  // the communicators only: the estimate counts each rank's NCCL buffers
  s.world_size = cfg.world_size;
  s.ranks = present_ranks(x.k, cfg.world_size, representatives);
  lowering::add_streams(x, s);
  lowering::add_communicators(x, s);
  MemoryEstimate peak;
  for (std::size_t i = 0; i < s.ranks.size(); ++i) {
    const MemoryEstimate m = lowering::estimate_memory(x, s.ranks[i]);
    if (i == 0 || m.margin_bytes() < peak.margin_bytes()) peak = m;  // as lower() picks Lowered::peak_memory
  }
  return peak;
}

Lowered lower(const ModelSpec& model, const RunConfig& cfg, const LowerOptions& options) {
  Lowered out;
  Ctx x = lowering::build_ctx(model, cfg, out.warnings);
  x.op_names = options.op_names;
  schedule::Schedule& s = out.schedule;
  s.name = schedule_name(model, x.k);
  s.world_size = cfg.world_size;
  s.ranks = present_ranks(x.k, cfg.world_size, options);
  lowering::add_streams(x, s);
  lowering::add_communicators(x, s);
  lower_ranks(x, out);
  for (std::size_t i = 0; i < out.memory_per_rank.size(); ++i) {
    const auto& m = out.memory_per_rank[i];
    if (i == 0 || m.margin_bytes() < out.peak_memory.margin_bytes()) out.peak_memory = m;
  }
  out.fits = out.peak_memory.margin_bytes() >= 0;

  out.model_flops_per_step = model_flops_per_step(model, cfg, x.k);
  describe(s, model, x.k, options);
  // The hardware queues the GPU ops of a rank go through (CUDA_DEVICE_MAX_CONNECTIONS): with one, kernels of all
  // streams start in issue order; the simulator honours it (sim/core.cpp).
  s.meta[schedule::kHardwareQueuesKey] = str(cfg.cuda_device_max_connections);
  s.warnings = out.warnings;
  return out;
}

}  // namespace twinstep::models
