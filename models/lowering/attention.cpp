// Attention blocks: standard / gated GQA, multi-latent attention (MLA) and Gated DeltaNet, and core attention with
// its context-parallel exchanges (megatron-overlap.md section 5): the P2P KV ring, all-gather, a2a (Ulysses) and
// a2a+p2p (hierarchical), forward, backward and selective recompute.
#include "models/lowering/rank_lowering.hpp"

namespace twinstep::models::lowering {

OpId RankLowering::attn_kernel(const Name& what, std::uint64_t heads_q, std::uint64_t heads_kv, std::uint64_t sq,
                               std::uint64_t skv, bool causal, bool bwd, Phase ph, DepList deps, std::string_view ov) {
  return kernel(what, Attention{k_.micro_batch, heads_q, heads_kv, sq, skv, adh_, causal, bwd, k_.dtype}, ph,
                std::move(deps), ov);
}

void RankLowering::cp_ring_fwd(Phase ph, CommId comm, std::uint32_t n, std::uint32_t pos, RankId next, RankId prev,
                               std::uint64_t hq, std::uint64_t hkv, std::uint64_t s_loc, const DepList& first) {
  const std::uint64_t kv_bytes = 2 * s_loc * k_.micro_batch * hkv * adh_ * k_.act_bytes;
  OpId prev_recv = schedule::kNoOp;
  for (std::uint32_t i = 0; i < n; ++i) {
    OpId rv = schedule::kNoOp;
    if (i + 1 < n) {
      DepList d = first;
      if (prev_recv != schedule::kNoOp) d.push_back(prev_recv);
      send(x_.st.cp, Name{"attn_kv_send", {}, i}, comm, next, kv_bytes, 0, ph, d, "cp");
      rv = recv(x_.st.cp_recv, Name{"attn_kv_recv", {}, i}, comm, prev, kv_bytes, 0, ph, "cp");
    }
    DepList d;
    if (prev_recv != schedule::kNoOp) d.push_back(prev_recv);
    if (i == 0) {
      attn_kernel("attn_step0", hq, hkv, s_loc, s_loc, true, false, ph, d, "cp");
    } else if (i <= pos) {
      attn_kernel(Name{"attn_step", {}, i}, hq, hkv, s_loc, s_loc / 2, false, false, ph, d, "cp");
    } else {
      attn_kernel(Name{"attn_step", {}, i}, hq, hkv, s_loc / 2, s_loc, false, false, ph, d, "cp");
    }
    if (i > 0) elementwise(Name{"attn_correction", {}, i}, 3 * s_loc * k_.micro_batch * hq * adh_ * 4, ph);
    prev_recv = rv;
  }
}

OpId RankLowering::cp_ring_bwd(CommId comm, std::uint32_t n, std::uint32_t pos, RankId next, RankId prev,
                               std::uint64_t hq, std::uint64_t hkv, std::uint64_t s_loc) {
  const std::uint64_t kv_bytes = 2 * s_loc * k_.micro_batch * hkv * adh_ * k_.act_bytes;
  OpId prev_recv = schedule::kNoOp, prev_attn = last_compute_;
  for (std::uint32_t i = 0; i < n; ++i) {
    OpId rv = schedule::kNoOp;
    if (n > 1) {
      const std::uint64_t bytes = (i == 0 || i + 1 == n) ? kv_bytes : 2 * kv_bytes;
      DepList sd;
      if (prev_attn != schedule::kNoOp) sd.push_back(prev_attn);
      if (prev_recv != schedule::kNoOp) sd.push_back(prev_recv);
      send(x_.st.cp, Name{"attn_bwd_send", {}, i}, comm, next, bytes, 1, Phase::kBwd, sd, "cp");
      rv = recv(x_.st.cp_recv, Name{"attn_bwd_recv", {}, i}, comm, prev, bytes, 1, Phase::kBwd, "cp");
    }
    DepList d;
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

RankId RankLowering::cp_outer_peer(int delta) const {
  Coords c = co_;
  const int outer = static_cast<int>(co_.cp / k_.cp_a2a_size), n = static_cast<int>(k_.cp_p2p_size);
  c.cp = static_cast<std::uint32_t>((outer + delta + n) % n) * k_.cp_a2a_size + co_.cp % k_.cp_a2a_size;
  return rank_of(k_, c);
}

void RankLowering::cp_gathered_attention(std::string_view stem, bool bwd, Phase ph, std::uint64_t hq,
                                         std::uint64_t hkv) {
  const std::uint64_t chunk = k_.seq / (2 * k_.cp);
  const std::uint32_t owned[2] = {co_.cp, 2 * k_.cp - 1 - co_.cp};
  for (std::uint32_t h = 0; h < 2; ++h) {
    if (owned[h] > 0) {
      attn_kernel(Name{stem, {}, h, "_prefix"}, hq, hkv, chunk, chunk * owned[h], false, bwd, ph, {}, "");
    }
    attn_kernel(Name{stem, {}, h, "_diag"}, hq, hkv, chunk, chunk, true, bwd, ph, {}, "");
  }
}

RankLowering::A2aGroup RankLowering::cp_a2a_group() const {
  if (cp_hier_) return {k_.cp_a2a_size, x_.cpa_of[rank_], x_.st.cp_a2a};
  return {k_.cp, x_.cp_of[rank_], x_.st.cp};
}

void RankLowering::attention_fwd(Phase ph) {
  const std::uint64_t hq = aq_ / k_.tp, hkv = akv_ / k_.tp, s_loc = k_.seq / k_.cp, b = k_.micro_batch;
  const std::uint64_t kv_bytes = 2 * s_loc * b * hkv * adh_ * k_.act_bytes;
  if (k_.cp == 1) {
    attn_kernel("attn", hq, hkv, k_.seq, k_.seq, true, false, ph, {}, "");
    return;
  }
  if (cp_p2p_) {
    DepList first;
    if (last_compute_ != schedule::kNoOp) first.push_back(last_compute_);
    cp_ring_fwd(ph, x_.cp_of[rank_], k_.cp, co_.cp, cp_peer(1), cp_peer(-1), hq, hkv, s_loc, first);
    return;
  }
  if (cp_ag_) {
    collective(x_.st.cp, "attn_kv_ag", CollectiveKind::kAllGather, x_.cp_of[rank_], kv_bytes * k_.cp, ph, true);
    cp_gathered_attention("attn_half", false, ph, hq, hkv);
    return;
  }
  // a2a (Ulysses) over the CP group, or over the inner group of a2a+p2p: sequence-sharded -> head-sharded Q, K, V
  // (q, k, v async, the compute stream waits for all three), attention, output back.
  const bool hier = cp_hier_;
  const auto [na, a2a, st] = cp_a2a_group();
  const std::uint64_t q_bytes = s_loc * b * hq * adh_ * k_.act_bytes;
  const std::uint64_t k_bytes = s_loc * b * hkv * adh_ * k_.act_bytes;
  DepList kv_ready;
  if (na > 1) {
    pending_.push_back(collective(st, "attn_q_a2a", CollectiveKind::kAllToAll, a2a, q_bytes, ph, false));
    kv_ready.push_back(collective(st, "attn_k_a2a", CollectiveKind::kAllToAll, a2a, k_bytes, ph, false));
    pending_.push_back(kv_ready.back());
    kv_ready.push_back(collective(st, "attn_v_a2a", CollectiveKind::kAllToAll, a2a, k_bytes, ph, true));
  }
  if (!hier) {
    attn_kernel("attn", hq / k_.cp, hkv / k_.cp, k_.seq, k_.seq, true, false, ph, {}, "");
  } else {
    // p2p ring across the outer group on heads / ca and s / cpo tokens per rank (same KV bytes as plain p2p).
    if (kv_ready.empty() && last_compute_ != schedule::kNoOp) kv_ready.push_back(last_compute_);
    cp_ring_fwd(ph, x_.cpp_of[rank_], k_.cp_p2p_size, co_.cp / k_.cp_a2a_size, cp_outer_peer(1), cp_outer_peer(-1),
                hq / na, hkv / na, k_.seq / k_.cp_p2p_size, kv_ready);
  }
  if (na > 1) collective(st, "attn_out_a2a", CollectiveKind::kAllToAll, a2a, q_bytes, ph, true);
}

void RankLowering::selective_recompute() {
  if (!x_.recompute_selective) return;
  const ContextScope recompute(*this, "recompute.");
  attention_fwd(Phase::kBwd);
}

void RankLowering::attention_bwd() {
  const std::uint64_t hq = aq_ / k_.tp, hkv = akv_ / k_.tp, s_loc = k_.seq / k_.cp, b = k_.micro_batch;
  const std::uint64_t kv_bytes = 2 * s_loc * b * hkv * adh_ * k_.act_bytes;
  if (k_.cp == 1) {
    attn_kernel("attn_bwd", hq, hkv, k_.seq, k_.seq, true, true, Phase::kBwd, {}, "");
    return;
  }
  if (cp_p2p_) {
    const OpId last = cp_ring_bwd(x_.cp_of[rank_], k_.cp, co_.cp, cp_peer(1), cp_peer(-1), hq, hkv, s_loc);
    pending_.push_back(last);  // the final dKV arrives before the qkv dgrad
    return;
  }
  if (cp_ag_) {
    const CommId cp = x_.cp_of[rank_];
    collective(x_.st.cp, "attn_bwd_kv_ag", CollectiveKind::kAllGather, cp, kv_bytes * k_.cp, Phase::kBwd, true);
    cp_gathered_attention("attn_bwd_half", true, Phase::kBwd, hq, hkv);
    collective(x_.st.cp, "attn_bwd_dkv_rs", CollectiveKind::kReduceScatter, cp, kv_bytes * k_.cp, Phase::kBwd, true);
    return;
  }
  const bool hier = cp_hier_;
  const auto [na, a2a, st] = cp_a2a_group();
  const std::uint64_t q_bytes = s_loc * b * hq * adh_ * k_.act_bytes;
  const std::uint64_t k_bytes = s_loc * b * hkv * adh_ * k_.act_bytes;
  if (na > 1) collective(st, "attn_bwd_do_a2a", CollectiveKind::kAllToAll, a2a, q_bytes, Phase::kBwd, true);
  DepList dkv;
  if (!hier) {
    attn_kernel("attn_bwd", hq / k_.cp, hkv / k_.cp, k_.seq, k_.seq, true, true, Phase::kBwd, {}, "");
  } else {
    const OpId last = cp_ring_bwd(x_.cpp_of[rank_], k_.cp_p2p_size, co_.cp / k_.cp_a2a_size, cp_outer_peer(1),
                                  cp_outer_peer(-1), hq / na, hkv / na, k_.seq / k_.cp_p2p_size);
    if (last != schedule::kNoOp) dkv.push_back(last);  // dK, dV complete only when the last dKV block arrived
  }
  if (na > 1) {
    pending_.push_back(collective(st, "attn_bwd_dq_a2a", CollectiveKind::kAllToAll, a2a, q_bytes, Phase::kBwd, false));
    pending_.push_back(
        collective(st, "attn_bwd_dk_a2a", CollectiveKind::kAllToAll, a2a, k_bytes, Phase::kBwd, false, dkv));
    collective(st, "attn_bwd_dv_a2a", CollectiveKind::kAllToAll, a2a, k_bytes, Phase::kBwd, true, dkv);
  } else if (!dkv.empty()) {
    pending_.push_back(dkv.front());
  }
}

void RankLowering::set_attention_dims(std::uint32_t layer) {
  aq_ = k_.heads;
  akv_ = k_.kv_groups;
  adh_ = k_.head_dim;
  if (x_.model->uses_mla() && !x_.model->is_linear_attention_layer(layer)) {
    akv_ = k_.heads;  // MLA: every head has its own K and V after the up projection
    adh_ = x_.model->qk_head_dim + x_.model->qk_pos_emb_head_dim;  // QK dim; V is v_head_dim (same cost order)
  }
}

// ---- attention blocks (standard / gated GQA, MLA, Gated DeltaNet) ----
void RankLowering::attn_block_fwd(std::uint32_t layer, Phase ph) {
  fwd_piece(Piece::kAttn, [&] {
    set_attention_dims(layer);
    const ModelSpec& m = *x_.model;
    fwd_module("host_attention", ph, [&] {  // SelfAttention (or the linear-attention / MLA module)
      if (m.is_linear_attention_layer(layer)) {
        elementwise("ln1", 2 * act(k_.tokens_sp, k_.hidden), ph);
        gdn_fwd(ph);
      } else if (m.uses_mla()) {
        elementwise("ln1", 2 * act(k_.tokens_sp, k_.hidden), ph);
        mla_fwd(ph);
      } else {
        const std::uint64_t qkv_out =
            ((m.attention_output_gate ? 2 : 1) * k_.heads + 2 * k_.kv_groups) * k_.head_dim / k_.tp;
        fwd_module(
            "host_qkv", ph,
            [&] {  // TE LayerNormLinear: ln1 and the QKV projection
              elementwise("ln1", 2 * act(k_.tokens_sp, k_.hidden), ph);
              ag_gemm("qkv", qkv_out, k_.hidden, ph);
            },
            Nodes::kOne);
        elementwise("rope", 2 * act(k_.tokens, (k_.heads + k_.kv_groups) * k_.head_dim / k_.tp), ph);
        fwd_module(
            "host_core_attention", ph, [&] { attention_fwd(ph); }, Nodes::kOne);
        if (m.attention_output_gate) elementwise("attn_gate", 3 * act(k_.tokens, k_.heads * k_.head_dim / k_.tp), ph);
        fwd_module(
            "host_proj", ph, [&] { gemm_rs("proj", k_.hidden, k_.heads * k_.head_dim / k_.tp, ph); }, Nodes::kOne);
      }
    });
    elementwise("residual1", 3 * act(k_.tokens_sp, k_.hidden), ph);
  });
}

void RankLowering::attn_block_bwd(std::uint32_t layer) {
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
  const std::uint64_t qkv_out = ((m.attention_output_gate ? 2 : 1) * k_.heads + 2 * k_.kv_groups) * k_.head_dim / k_.tp;
  rowparallel_bwd("proj", k_.hidden, k_.heads * k_.head_dim / k_.tp, L);
  if (m.attention_output_gate)
    elementwise("attn_gate_bwd", 4 * act(k_.tokens, k_.heads * k_.head_dim / k_.tp), Phase::kBwd);
  selective_recompute();
  attention_bwd();
  elementwise("rope_bwd", 2 * act(k_.tokens, (k_.heads + k_.kv_groups) * k_.head_dim / k_.tp), Phase::kBwd);
  colparallel_bwd("qkv", qkv_out, k_.hidden, L, "ln1");
}

void RankLowering::mla_fwd(Phase ph) {
  const ModelSpec& m = *x_.model;
  const std::uint64_t nqt = k_.heads / k_.tp, qk = m.qk_head_dim, rope = m.qk_pos_emb_head_dim, v = m.v_head_dim;
  const std::uint64_t ql = m.q_lora_rank, kvl = m.kv_lora_rank;
  no_ub_ = true;
  if (ql > 0) gemm("q_down", k_.tokens_sp, ql, k_.hidden, ph);
  gemm("kv_down", k_.tokens_sp, kvl + rope, k_.hidden, ph);
  if (k_.tp > 1 && k_.sp) {
    collective(x_.st.tp, "mla_latent_ag", CollectiveKind::kAllGather, x_.tp_of[rank_], act(k_.tokens, ql + kvl + rope),
               ph, true);
  }
  elementwise("mla_latent_norm", 2 * act(k_.tokens, ql + kvl), ph);
  if (ql > 0)
    gemm("q_up", k_.tokens, nqt * (qk + rope), ql, ph);
  else
    autograd_function([&] { ag_gemm("q_up", nqt * (qk + rope), k_.hidden, ph); });
  gemm("kv_up", k_.tokens, nqt * (qk + v), kvl, ph);
  elementwise("rope", 2 * act(k_.tokens, nqt * rope + rope), ph);
  no_ub_ = false;
  autograd_function([&] { attention_fwd(ph); });
  autograd_function([&] { gemm_rs("proj", k_.hidden, nqt * v, ph); });
}

void RankLowering::mla_bwd(std::string_view L) {
  const ModelSpec& m = *x_.model;
  const std::uint64_t nqt = k_.heads / k_.tp, qk = m.qk_head_dim, rope = m.qk_pos_emb_head_dim, v = m.v_head_dim;
  const std::uint64_t ql = m.q_lora_rank, kvl = m.kv_lora_rank;
  rowparallel_bwd("proj", k_.hidden, nqt * v, L);
  selective_recompute();
  attention_bwd();
  no_ub_ = true;
  elementwise("rope_bwd", 2 * act(k_.tokens, nqt * rope + rope), Phase::kBwd);
  gemm("kv_up_dgrad", k_.tokens, kvl, nqt * (qk + v), Phase::kBwd);
  wgrad_op("kv_up_wgrad", linear_gemm(nqt * (qk + v), kvl, k_.tokens, GemmRole::kWgrad), {}, Name{L, "kv_up"});
  if (ql > 0) {
    gemm("q_up_dgrad", k_.tokens, ql, nqt * (qk + rope), Phase::kBwd);
    wgrad_op("q_up_wgrad", linear_gemm(nqt * (qk + rope), ql, k_.tokens, GemmRole::kWgrad), {}, Name{L, "q_up"});
  } else {
    colparallel_bwd("q_up", nqt * (qk + rope), k_.hidden, L, "ln1");
  }
  if (k_.tp > 1) {
    collective(x_.st.tp, k_.sp ? "mla_latent_grad_rs" : "mla_latent_grad_ar",
               k_.sp ? CollectiveKind::kReduceScatter : CollectiveKind::kAllReduce, x_.tp_of[rank_],
               act(k_.tokens, ql + kvl + rope), Phase::kBwd, true);
  }
  elementwise("mla_latent_norm_bwd", 3 * act(k_.tokens_sp, ql + kvl), Phase::kBwd);
  gemm("kv_down_dgrad", k_.tokens_sp, k_.hidden, kvl + rope, Phase::kBwd);
  wgrad_op("kv_down_wgrad", linear_gemm(kvl + rope, k_.hidden, k_.tokens_sp, GemmRole::kWgrad), {}, Name{L, "kv_down"});
  if (ql > 0) {
    gemm("q_down_dgrad", k_.tokens_sp, k_.hidden, ql, Phase::kBwd);
    wgrad_op("q_down_wgrad", linear_gemm(ql, k_.hidden, k_.tokens_sp, GemmRole::kWgrad), {}, Name{L, "q_down"});
  }
  no_ub_ = false;
  if (ql > 0) input_norm_bwd("ln1", L);
}

void RankLowering::gdn_fwd(Phase ph) {
  const ModelSpec& m = *x_.model;
  const std::uint64_t nk = m.linear_num_key_heads, nv = m.linear_num_value_heads;
  const std::uint64_t dk = m.linear_key_head_dim, dv = m.linear_value_head_dim;
  no_ub_ = true;
  autograd_function([&] { ag_gemm("in_proj", (2 * nk * dk + 2 * nv * dv + 2 * nv) / k_.tp, k_.hidden, ph); });
  elementwise("gdn_conv1d", 2 * act(k_.tokens, (2 * nk * dk + nv * dv) / k_.tp), ph);
  autograd_function([&] { gdn_scan("gdn_scan", ph, 1); });  // one chunked delta-rule Function
  elementwise("gdn_gated_norm", 3 * act(k_.tokens, nv * dv / k_.tp), ph);
  autograd_function([&] { gemm_rs("out_proj", k_.hidden, nv * dv / k_.tp, ph); });
  no_ub_ = false;
}

void RankLowering::gdn_scan(std::string_view what, Phase ph, std::uint64_t factor) {
  const ModelSpec& m = *x_.model;
  const std::uint64_t dk = m.linear_key_head_dim, dv = m.linear_value_head_dim, kC = 64;
  const std::uint64_t batch = k_.micro_batch * ((k_.seq + kC - 1) / kC) * (m.linear_num_value_heads / k_.tp) * factor;
  kernel(Name{what, "_scores"}, Gemm{kC, kC, dk, batch, k_.dtype}, ph);
  kernel(Name{what, "_state"}, Gemm{dk, dv, kC, batch, k_.dtype}, ph);
  kernel(Name{what, "_out"}, Gemm{kC, dv, dk, batch, k_.dtype}, ph);
}

void RankLowering::gdn_bwd(std::string_view L) {
  const ModelSpec& m = *x_.model;
  const std::uint64_t nk = m.linear_num_key_heads, nv = m.linear_num_value_heads;
  const std::uint64_t dk = m.linear_key_head_dim, dv = m.linear_value_head_dim;
  no_ub_ = true;
  rowparallel_bwd("out_proj", k_.hidden, nv * dv / k_.tp, L);
  elementwise("gdn_gated_norm_bwd", 4 * act(k_.tokens, nv * dv / k_.tp), Phase::kBwd);
  gdn_scan("gdn_scan_bwd", Phase::kBwd, 2);  // dq/dk/dv and the state gradient: about twice the forward
  const OpId c = elementwise("gdn_conv1d_bwd", 3 * act(k_.tokens, (2 * nk * dk + nv * dv) / k_.tp), Phase::kBwd);
  grad_ready(Name{L, "conv"}, c);
  colparallel_bwd("in_proj", (2 * nk * dk + 2 * nv * dv + 2 * nv) / k_.tp, k_.hidden, L, "ln1");
  no_ub_ = false;
}

}  // namespace twinstep::models::lowering
