// Parameter shapes per layer kind (GQA / gated attention, MLA, Gated DeltaNet, dense MLP, MoE experts and shared
// expert) and per chunk (embedding, final norm, output layer, tied or not), as Megatron registers them.
#include "models/lowering/parameters.hpp"

namespace twinstep::models::lowering {

void layer_params_of(const ModelSpec& model, const Dims& k, std::uint32_t l, std::vector<Param>& out) {
  const std::uint64_t t = k.tp, h = k.hidden;
  const std::string L = "L" + str(l) + ".";
  const std::uint64_t norm = model.normalization == "LayerNorm" ? 2 * h : h;
  const bool bias = model.add_bias_linear;
  // A TE linear module: `weight` fp8 GEMM operand elements plus `extra` that stay bf16 (bias, a fused norm's weight).
  auto linear = [&out](std::string name, std::uint64_t weight, std::uint64_t extra, std::uint32_t gemms = 1,
                       bool expert = false, bool sp_reduce = false) {
    out.push_back({std::move(name), weight + extra, false, expert, sp_reduce, weight, gemms});
  };
  out.push_back({L + "ln1", norm, false, false, true});
  if (model.is_linear_attention_layer(l)) {  // Gated DeltaNet
    const std::uint64_t nk = model.linear_num_key_heads, nv = model.linear_num_value_heads;
    const std::uint64_t dk = model.linear_key_head_dim, dv = model.linear_value_head_dim;
    const std::uint64_t conv_dim = 2 * nk * dk + nv * dv;
    linear(L + "in_proj", h * (2 * nk * dk + 2 * nv * dv + 2 * nv) / t, 0);
    out.push_back({L + "conv", (conv_dim * model.linear_conv_kernel_dim + 2 * nv) / t + dv});
    linear(L + "out_proj", nv * dv / t * h, 0);
  } else if (model.uses_mla()) {
    const std::uint64_t nq = k.heads, qk = model.qk_head_dim, rope = model.qk_pos_emb_head_dim, v = model.v_head_dim;
    if (model.q_lora_rank > 0) {
      linear(L + "q_down", h * model.q_lora_rank, model.q_lora_rank, 1, false, true);
      linear(L + "q_up", model.q_lora_rank * nq * (qk + rope) / t, 0);
    } else {
      linear(L + "q_up", h * nq * (qk + rope) / t, 0);
    }
    linear(L + "kv_down", h * (model.kv_lora_rank + rope), model.kv_lora_rank, 1, false, true);
    linear(L + "kv_up", model.kv_lora_rank * nq * (qk + v) / t, 0);
    linear(L + "proj", nq * v / t * h, 0);
  } else {
    const std::uint64_t qkv_out = ((model.attention_output_gate ? 2 : 1) * k.heads + 2 * k.kv_groups) * k.head_dim / t;
    linear(L + "qkv", h * qkv_out, (bias || model.add_qkv_bias) ? qkv_out : 0);
    linear(L + "proj", k.heads * k.head_dim / t * h, bias ? h : 0);
  }
  out.push_back({L + "ln2", norm, false, false, true});
  if (model.is_moe_layer(l)) {
    out.push_back({L + "router", h * k.experts});
    const auto experts = static_cast<std::uint32_t>(k.local_experts);
    linear(L + "experts.fc1", k.local_experts * h * k.expert_ffn1 / k.etp, 0, experts, true);
    linear(L + "experts.fc2", k.local_experts * k.expert_ffn / k.etp * h, 0, experts, true);
    if (k.shared_ffn > 0) {
      const std::uint64_t sf1 = model.gated_linear_unit ? 2 * k.shared_ffn : k.shared_ffn;
      linear(L + "shared.fc1", h * sf1 / t, model.moe_shared_expert_gate ? h : 0);
      linear(L + "shared.fc2", k.shared_ffn / t * h, 0);
    }
  } else {
    linear(L + "fc1", h * k.ffn1 / t, bias ? k.ffn1 / t : 0);
    linear(L + "fc2", k.ffn / t * h, bias ? h : 0);
  }
}

std::vector<Param> chunk_params(const ModelSpec& model, const Dims& k, std::uint32_t pp_rank, std::uint32_t chunk,
                                const std::vector<std::uint32_t>& layers) {
  std::vector<Param> out;
  const std::uint64_t t = k.tp, h = k.hidden;
  const bool first = pp_rank == 0 && chunk == 0;
  const bool last = pp_rank == k.pp - 1 && chunk == k.vpp - 1;
  const std::uint64_t norm = model.normalization == "LayerNorm" ? 2 * h : h;
  if (first) {
    out.push_back({"embedding", k.vocab_padded / t * h, model.share_embeddings_and_output_weights && k.pp > 1});
    if (model.position_embedding_type == "learned_absolute") {
      out.push_back({"position_embedding", model.max_position_embeddings * h, false});
    }
  }
  for (auto l : layers) layer_params_of(model, k, l, out);
  if (last) {
    out.push_back({"final_norm", norm, false, false, true});
    if (!model.share_embeddings_and_output_weights || k.pp > 1) {
      out.push_back({"output", k.vocab_padded / t * h, model.share_embeddings_and_output_weights});
    }
  }
  return out;
}

}  // namespace twinstep::models::lowering
