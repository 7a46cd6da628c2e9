// A transformer layer (attention block, then dense MLP or MoE), the embedding and the output layer + loss, and a
// model chunk's forward and backward on one rank: P2P receive waits, param-gather waits, full recompute groups.
#include <algorithm>

#include "models/lowering/cross_entropy.hpp"
#include "models/lowering/rank_lowering.hpp"

namespace twinstep::models::lowering {

// ---- MLP blocks ----
void RankLowering::dense_mlp_fwd(Phase ph) {
  fwd_piece(Piece::kMlp, [&] {
    fwd_module("host_mlp", ph, [&] {
      fwd_module(
          "host_fc1", ph,
          [&] {  // TE LayerNormLinear: the norm and fc1 in one module
            elementwise("ln2", 2 * act(k_.tokens_sp, k_.hidden), ph);
            ag_gemm("fc1", k_.ffn1 / k_.tp, k_.hidden, ph);
          },
          Nodes::kOne);
      elementwise(x_.model->gated_linear_unit ? "swiglu" : "gelu",
                  act(k_.tokens, k_.ffn1 / k_.tp) + act(k_.tokens, k_.ffn / k_.tp), ph);
      fwd_module(
          "host_fc2", ph, [&] { gemm_rs("fc2", k_.hidden, k_.ffn / k_.tp, ph); }, Nodes::kOne);
    });
    elementwise("residual2", 3 * act(k_.tokens_sp, k_.hidden), ph);
  });
}

void RankLowering::dense_mlp_bwd(std::string_view L) {
  rowparallel_bwd("fc2", k_.hidden, k_.ffn / k_.tp, L);
  elementwise(Name{x_.model->gated_linear_unit ? "swiglu" : "gelu", "_bwd"},
              2 * act(k_.tokens, k_.ffn1 / k_.tp) + act(k_.tokens, k_.ffn / k_.tp), Phase::kBwd);
  colparallel_bwd("fc1", k_.ffn1 / k_.tp, k_.hidden, L, "ln2");
}

void RankLowering::layer_fwd(std::uint32_t layer, Phase ph) {
  cur_layer_ = static_cast<std::int32_t>(layer);
  fwd_module("host_layer", ph, [&] {  // TransformerLayer; its submodules are calls of their own
    attn_block_fwd(layer, ph);
    if (x_.model->is_moe_layer(layer)) {
      moe_pre_fwd(ph);
      moe_dispatch_fwd(ph);
      moe_experts_fwd(ph);
      moe_combine_fwd(ph);
    } else {
      dense_mlp_fwd(ph);
    }
  });
  cur_layer_ = -1;
}

void RankLowering::layer_bwd(std::uint32_t layer) {
  cur_layer_ = static_cast<std::int32_t>(layer);
  const std::string L = "L" + str(layer) + ".";
  const std::uint64_t nodes =
      nodes_of({Piece::kAttn, Piece::kMoePre, Piece::kDispatch, Piece::kExperts, Piece::kCombine, Piece::kMlp});
  bwd_ops("host_bwd", nodes, [&] {
    if (x_.model->is_moe_layer(layer)) {  // the residual add's backward passes the gradient on: no kernel
      moe_combine_bwd();
      moe_experts_bwd(L);
      moe_dispatch_bwd();
      moe_pre_bwd(L);
    } else {
      dense_mlp_bwd(L);
    }
    attn_block_bwd(layer);
  });
  cur_layer_ = -1;
}

void RankLowering::embedding_fwd() {
  fwd_piece(Piece::kEmbedding, [&] {
    fwd_module("host_embedding", Phase::kFwd, [&] {
      const CommId tp = x_.tp_of[rank_];
      elementwise("embedding", 2 * act(k_.tokens, k_.hidden), Phase::kFwd);
      if (x_.model->position_embedding_type == "learned_absolute") {
        elementwise("position_embedding", 3 * act(k_.tokens, k_.hidden), Phase::kFwd);
      }
      if (k_.tp > 1) {
        collective(x_.st.tp, k_.sp ? "embedding_rs" : "embedding_ar",
                   k_.sp ? CollectiveKind::kReduceScatter : CollectiveKind::kAllReduce, tp, act(k_.tokens, k_.hidden),
                   Phase::kFwd, true);
      }
    });
  });
}

void RankLowering::embedding_bwd() {
  const CommId tp = x_.tp_of[rank_];
  if (k_.tp > 1 && k_.sp) {
    collective(x_.st.tp, "embedding_grad_ag", CollectiveKind::kAllGather, tp, act(k_.tokens, k_.hidden), Phase::kBwd,
               true);
  }
  // VocabParallelEmbedding's F.embedding, and LanguageModelEmbedding's position nn.Embedding, differentiate
  // through torch's dense embedding backward (embedding_dense_backward): a zero-filled gradient of the whole table in
  // the parameters' dtype, then the token rows' gradients summed into it; DDP's hook then adds that table into the
  // main grad in both modes (the embedding is no fused-accumulate linear).
  const auto table_grad = [&](std::string_view name, std::uint64_t rows) {
    const Name wgrad{name, "_wgrad"};
    elementwise(Name{name, "_wgrad_zero"}, act(rows, k_.hidden), Phase::kWgrad);
    elementwise(wgrad, 3 * act(k_.tokens, k_.hidden), Phase::kWgrad);
    grad_ready(name, main_grad_add(wgrad, rows * k_.hidden, Phase::kWgrad));
  };
  table_grad("embedding", k_.vocab_padded / k_.tp);
  if (x_.model->position_embedding_type == "learned_absolute") {
    table_grad("position_embedding", x_.model->max_position_embeddings);
  }
}

void RankLowering::output_fwd() {
  fwd_piece(Piece::kOutput, [&] {
    const CommId tp = x_.tp_of[rank_];
    const std::uint64_t vt = k_.vocab_padded / k_.tp;
    fwd_module("host_final_norm", Phase::kFwd,
               [&] { elementwise("final_norm", 2 * act(k_.tokens_sp, k_.hidden), Phase::kFwd); });
    fwd_module(
        "host_output_layer", Phase::kFwd,
        [&] {
          if (k_.tp > 1 && k_.sp) {
            collective(x_.st.tp, "output_ag", CollectiveKind::kAllGather, tp, act(k_.tokens, k_.hidden), Phase::kFwd,
                       true);
          }
          kernel("output", Gemm{k_.tokens, vt, k_.hidden, 1, k_.dtype}, Phase::kFwd);  // bf16 under fp8 too (TE recipe)
        },
        Nodes::kOne);  // ColumnParallelLinear: one LinearWithGradAccumulationAndAsyncCommunication
    fwd_ops(
        "host_loss", Phase::kFwd,
        [&] {  // the loss: a function, no module (cross_entropy.hpp: the bytes of each implementation)
          const CrossEntropyTraffic ce = cross_entropy_traffic(cross_entropy_path(*x_.cfg), k_.act_bytes, k_.tp);
          elementwise("cross_entropy", k_.tokens * vt * ce.fwd_bytes_per_logit, Phase::kFwd);
          if (k_.tp > 1) {
            for (const auto& c : ce.tp_collectives) {
              collective(x_.st.tp, c.name, c.kind, tp, k_.tokens * c.bytes_per_token, Phase::kFwd, true, {}, "",
                         schedule::DType::kFP32);
            }
          }
        },
        Nodes::kOne);  // _VocabParallelCrossEntropy / TE's CrossEntropyFunction: one autograd.Function
  });
}

void RankLowering::output_bwd() {
  const CommId tp = x_.tp_of[rank_];
  const std::uint64_t vt = k_.vocab_padded / k_.tp;
  const CrossEntropyTraffic ce = cross_entropy_traffic(cross_entropy_path(*x_.cfg), k_.act_bytes, k_.tp);
  elementwise("cross_entropy_bwd", k_.tokens * vt * ce.bwd_bytes_per_logit, Phase::kBwd);
  kernel("output_dgrad", Gemm{k_.tokens, k_.hidden, vt, 1, k_.dtype}, Phase::kBwd);
  // A ColumnParallelLinear: its wgrad accumulates into the main grad as the TP linears' do (bf16 under fp8 too).
  Gemm wg{vt, k_.hidden, k_.tokens, 1, k_.dtype};
  wg.accumulate_fp32 = k_.wgrad_accumulate_fp32;
  wg.accumulate = k_.wgrad_accumulate_output;
  const OpId w = kernel("output_wgrad", wg, Phase::kWgrad);
  const OpId add = linear_main_grad_add("output_wgrad", wg, Phase::kWgrad);
  grad_ready(x_.model->share_embeddings_and_output_weights && k_.pp == 1 ? "embedding" : "output",
             add != schedule::kNoOp ? add : w);
  if (k_.tp > 1) {
    collective(x_.st.tp, k_.sp ? "output_dgrad_rs" : "output_dgrad_ar",
               k_.sp ? CollectiveKind::kReduceScatter : CollectiveKind::kAllReduce, tp, act(k_.tokens, k_.hidden),
               Phase::kBwd, true);
  }
  // The last layer's output feeds the final norm only: no skip gradient to add.
  const OpId ln = elementwise("final_norm_bwd", norm_bwd_bytes(k_.tokens_sp, k_.hidden), Phase::kBwd);
  grad_ready("final_norm", ln);
}

// ---- norm backward ----
std::uint64_t RankLowering::norm_bwd_bytes(std::uint64_t rows, std::uint64_t width) const {
  const bool layernorm = x_.model->normalization == "LayerNorm";
  const std::uint64_t per_row = layernorm ? 2 * 4 : 4;  // rstd (and the mean), fp32
  const std::uint64_t weights = layernorm ? 2 : 1;      // gamma (and beta): read gamma, write each gradient
  return 3 * act(rows, width) + per_row * rows + (1 + weights) * act(1, width);
}

void RankLowering::input_norm_bwd(std::string_view ln, std::string_view L, DepList deps) {
  const OpId norm =
      elementwise(Name{ln, "_bwd"}, norm_bwd_bytes(k_.tokens_sp, k_.hidden), Phase::kBwd, std::move(deps));
  grad_ready(Name{L, ln}, norm);
  // The norm's input is also the skip connection's: autograd sums the two gradients (read both, write one).
  elementwise(Name{ln, "_residual_grad_add"}, 3 * act(k_.tokens_sp, k_.hidden), Phase::kBwd);
}

std::vector<std::vector<std::uint32_t>> RankLowering::recompute_groups(std::uint32_t chunk) const {
  std::vector<std::vector<std::uint32_t>> groups;
  if (!x_.recompute_full) return groups;
  const auto& layers = layers_of(chunk);
  const std::uint32_t n = x_.cfg->recompute_num_layers;
  if (x_.cfg->recompute_method == RecomputeMethod::kUniform) {
    for (std::size_t i = 0; i < layers.size(); i += n) {
      groups.emplace_back(layers.begin() + static_cast<std::ptrdiff_t>(i),
                          layers.begin() + static_cast<std::ptrdiff_t>(std::min<std::size_t>(layers.size(), i + n)));
    }
  } else {
    for (std::size_t i = 0; i < layers.size() && i < n; ++i) groups.push_back({layers[i]});
  }
  return groups;
}

void RankLowering::chunk_fwd(std::uint32_t mb, std::uint32_t chunk) {
  cur_mb_ = static_cast<std::int32_t>(mb);
  cur_chunk_ = static_cast<std::int32_t>(chunk);
  prefix_ = "fwd.";
  if (!first_vs(chunk)) {
    TWINSTEP_ASSERT(!fwd_recv_[chunk].empty(), "rank %u: no activation received for mb %u chunk %u", rank_, mb, chunk);
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

void RankLowering::chunk_bwd(std::uint32_t mb, std::uint32_t chunk) {
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
  // One torch.autograd.backward call per micro-batch and chunk (the schedule's backward_step).
  host("autograd_backward_call", x_.cfg->host.backward_call_ns, Phase::kBwd);
  if (last_vs(chunk)) bwd_ops("host_bwd", nodes_of({Piece::kOutput}), [&] { output_bwd(); });
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
  if (first_vs(chunk)) bwd_ops("host_bwd", nodes_of({Piece::kEmbedding}), [&] { embedding_bwd(); });
  last_bwd_output_ = last_compute_;
  hooks_on_ = false;
  cur_mb_ = cur_chunk_ = -1;
  prefix_.clear();
}

}  // namespace twinstep::models::lowering
