// Memory estimate: 2 B params and grads (4 B grads with fp32 reduction), 12 B/param fp32 master weights and Adam
// moments (sharded with the distributed optimizer), activations saved per layer (flash attention, no s^2 term;
// full recompute keeps the layer input), the peak over the pipeline order, NCCL and userbuffer buffers.
#include "models/lowering/memory.hpp"

#include <algorithm>

namespace twinstep::models::lowering {
namespace {

constexpr std::uint64_t kNcclBufferBytesPerComm = 64ull << 20;  // estimate: channels x NCCL_BUFFSIZE per communicator
constexpr std::uint32_t kUbSites = 10;  // TE userbuffer names: {qkv,proj,fc1,fc2}_fprop, 4 dgrad, 2 wgrad

}  // namespace

MemoryEstimate estimate_memory(const Ctx& x, RankId rank) {
  const Dims& k = x.k;
  const Coords co = coords_of(k, rank);
  const RunConfig& cfg = *x.cfg;
  MemoryEstimate e;
  double numel = 0, expert_numel = 0;
  for (std::uint32_t c = 0; c < k.vpp; ++c) {
    for (const auto& p : x.params[co.pp][c]) (p.expert ? expert_numel : numel) += static_cast<double>(p.numel);
  }
  const double dpc = static_cast<double>(k.dp) * k.cp;
  e.params_bytes = (numel + expert_numel) * static_cast<double>(k.act_bytes);
  e.grads_bytes = (numel + expert_numel) * static_cast<double>(k.grad_bytes);
  // fp32 master weights + Adam moments (12 B/param), sharded over DP x CP (experts: expert-DP) with distopt.
  e.optimizer_bytes = numel * 12.0 / (cfg.use_distributed_optimizer ? dpc : 1.0) +
                      expert_numel * 12.0 / (cfg.use_distributed_optimizer ? static_cast<double>(k.expert_dp) : 1.0);
  // Activations saved per layer per micro-batch (flash attention: no s^2 term), bytes:
  //   attention: ln1 input + ln_out (T_sp h each), Q/K/V (T (nq+2nkv) dh / t), output (T nq dh / t) + fp32 LSE;
  //   MLP: ln2 input + fc1 input (T_sp h each), fc1 output (T ffn1 / t), activation output (T f / t).
  const double B = static_cast<double>(k.act_bytes), T = static_cast<double>(k.tokens),
               Tsp = static_cast<double>(k.tokens_sp), t = k.tp;
  const double per_layer = B * (4 * Tsp * static_cast<double>(k.hidden) +
                                T * static_cast<double>((k.heads + 2 * k.kv_groups) * k.head_dim) / t +
                                T * static_cast<double>(k.heads * k.head_dim) / t +
                                T * static_cast<double>(k.ffn1) / t + T * static_cast<double>(k.ffn) / t) +
                           4.0 * T * static_cast<double>(k.heads) / t;
  const double per_layer_ckpt = B * Tsp * static_cast<double>(k.hidden);  // full recompute keeps only the layer input
  // MoE layers replace the dense MLP terms: router input, permuted tokens (T_m k h), received rows N_r (expert
  // input, fc1 output N_r ffn1_e / t_e, activation N_r f_e / t_e, fc2 output), probs, and the shared expert.
  const double Tm = Tsp, k_top = static_cast<double>(k.topk);
  const double n_r = Tm * k_top * k.etp * k.skew;  // the busiest EP rank under skew
  const double moe_layer =
      per_layer - B * (T * static_cast<double>(k.ffn1) / t + T * static_cast<double>(k.ffn) / t) +
      B * (Tm * k_top * static_cast<double>(k.hidden) +
           n_r * (2 * static_cast<double>(k.hidden) + static_cast<double>(k.expert_ffn1 + k.expert_ffn) / k.etp)) +
      4.0 * n_r + B * T * static_cast<double>(2 * k.shared_ffn + k.shared_ffn) / t;
  auto layer_bytes = [&](std::uint32_t l) { return x.model->is_moe_layer(l) ? moe_layer : per_layer; };
  auto chunk_bytes = [&](std::uint32_t chunk) {
    const auto& layers = x.vs_layers[chunk * k.pp + co.pp];
    std::size_t recomputed = 0;
    if (x.recompute_full) {
      recomputed = cfg.recompute_method == RecomputeMethod::kUniform
                       ? layers.size()
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
    for (const auto& step : combined_order(cfg, co.pp, k.microbatches)) {
      if (step.has_forward) live += chunk_bytes(step.forward.chunk);
      peak = std::max(peak, live);
      if (step.has_backward) live -= chunk_bytes(step.backward.chunk);
    }
  } else {
    for (const auto& step : pipeline_order(cfg, co.pp, k.microbatches)) {
      live += step.forward ? chunk_bytes(step.chunk) : -chunk_bytes(step.chunk);
      peak = std::max(peak, live);
    }
  }
  double transient = 0;
  if (x.recompute_full) transient = per_layer * static_cast<double>(cfg.recompute_num_layers);
  if (co.pp == k.pp - 1) {  // logits and fp32 softmax of one micro-batch
    transient += T * static_cast<double>(k.vocab_padded) / t * (B + 4);
  }
  e.activations_bytes = peak + transient;
  std::uint32_t comms = 0;
  for (const auto* v : {&x.tp_of, &x.cp_of, &x.cpa_of, &x.cpp_of, &x.dp_of, &x.pp_of, &x.norm_of, &x.embd_of, &x.ep_of,
                        &x.etp_of, &x.tpep_of, &x.edp_of}) {
    if ((*v)[rank] != kNone) ++comms;
  }
  e.comm_buffers_bytes = static_cast<double>(comms) * static_cast<double>(kNcclBufferBytesPerComm);
  if (k.tp_overlap) e.comm_buffers_bytes += kUbSites * T * static_cast<double>(k.hidden) * B;
  if (k.pp > 1) e.comm_buffers_bytes += 2.0 * Tsp * static_cast<double>(k.hidden) * B * (k.vpp > 1 ? 2 : 1);
  return e;
}

}  // namespace twinstep::models::lowering
