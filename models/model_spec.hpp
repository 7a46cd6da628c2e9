// Model architecture as read from the zoo (models/zoo/*.json) or a user's JSON.
// Fields keep Megatron-Core TransformerConfig names where they exist; the JSON uses the same names.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace twinstep::models {

struct ModelSpec {
  std::string name;    ///< Zoo id, e.g. "llama3-70b".
  std::string source;  ///< Where the figures come from (HF config, paper, Megatron example script).
  /// The published performance config's grad_reduce_in_fp32 for this model, the recipe default for it
  /// (models/recipe.hpp) when a run does not set it; without one (has_recipe_grad_reduce_in_fp32 false) the generic
  /// default. recipe_source names the config it comes from.
  bool recipe_grad_reduce_in_fp32 = true;
  bool has_recipe_grad_reduce_in_fp32 = false;
  std::string recipe_source;
  /// The published recipe's moe_router_fusion / moe_permute_fusion (Megatron-Bridge; recipe_source names it), the
  /// recipe default for runs that do not set them (models/recipe.hpp); without one, MCore's default (off).
  bool recipe_moe_router_fusion = false;
  bool has_recipe_moe_router_fusion = false;
  bool recipe_moe_permute_fusion = false;
  bool has_recipe_moe_permute_fusion = false;
  std::uint32_t num_layers = 0;
  std::uint64_t hidden_size = 0;
  std::uint64_t ffn_hidden_size = 0;
  std::uint32_t num_attention_heads = 0;
  std::uint32_t num_query_groups = 0;
  std::uint32_t kv_channels = 0;  ///< Head dim.
  std::uint64_t vocab_size = 0;
  // MoE: 0 experts = dense.
  std::uint32_t num_moe_experts = 0;
  std::uint32_t moe_router_topk = 0;
  std::uint64_t moe_ffn_hidden_size = 0;
  std::uint64_t moe_shared_expert_intermediate_size = 0;
  /// MCore's moe_aux_loss_coeff (default 0: no load-balancing loss): > 0, the router computes the aux-loss terms
  /// (their kernels: models/lowering/moe_eager.hpp); the value itself changes no cost.
  double moe_aux_loss_coeff = 0;

  // Block details that change cost or parameter count.
  std::string normalization = "RMSNorm";  ///< "RMSNorm" | "LayerNorm" (LayerNorm has a bias too).
  bool gated_linear_unit = true;          ///< SwiGLU: fc1 is [h, 2f]; false: GeLU, fc1 is [h, f].
  bool add_bias_linear = false;           ///< Biases on qkv/proj/fc1/fc2 (GPT-3).
  bool add_qkv_bias = false;              ///< Bias on qkv only (Qwen2-style).
  bool qk_layernorm = false;
  bool share_embeddings_and_output_weights = false;
  std::string position_embedding_type = "rope";  ///< "rope" | "learned_absolute" (adds max_pos x h params).
  std::uint64_t max_position_embeddings = 0;
  double rotary_base = 10000;
  std::uint32_t make_vocab_size_divisible_by = 128;  ///< Megatron pads V to a multiple of this x TP.

  // MoE layer pattern: layer i is MoE iff num_moe_experts > 0, i >= first_k_dense_replace and
  // (moe_layer_freq == 1 or i % moe_layer_freq == 0).
  std::uint32_t first_k_dense_replace = 0;
  std::uint32_t moe_layer_freq = 1;
  std::uint32_t moe_shared_expert_count = 0;  ///< Shared experts (each moe_shared_expert_intermediate_size wide).
  bool moe_shared_expert_gate = false;        ///< Qwen3-Next: sigmoid gate on the shared expert output.
  std::uint32_t mtp_num_layers = 0;           ///< Multi-token-prediction modules (DeepSeek-V3: 1).

  // Multi-latent attention (DeepSeek-V3). 0 kv_lora_rank = standard attention.
  std::uint32_t q_lora_rank = 0;
  std::uint32_t kv_lora_rank = 0;
  std::uint32_t qk_head_dim = 0;
  std::uint32_t qk_pos_emb_head_dim = 0;
  std::uint32_t v_head_dim = 0;

  // Hybrid linear attention (Qwen3-Next: Gated DeltaNet, one full-attention layer every
  // full_attention_interval layers; the full-attention layers use an output gate).
  std::uint32_t full_attention_interval = 0;  ///< 0 = every layer is full attention.
  bool attention_output_gate = false;
  std::uint32_t linear_num_key_heads = 0;
  std::uint32_t linear_num_value_heads = 0;
  std::uint32_t linear_key_head_dim = 0;
  std::uint32_t linear_value_head_dim = 0;
  std::uint32_t linear_conv_kernel_dim = 0;

  /// True for layer i (0-based) being an MoE layer.
  [[nodiscard]] bool is_moe_layer(std::uint32_t layer) const {
    if (num_moe_experts == 0 || layer < first_k_dense_replace) return false;
    return moe_layer_freq <= 1 || layer % moe_layer_freq == 0;
  }
  /// True for layer i using (linear) Gated DeltaNet attention instead of full attention.
  [[nodiscard]] bool is_linear_attention_layer(std::uint32_t layer) const {
    return full_attention_interval > 1 && (layer + 1) % full_attention_interval != 0;
  }
  [[nodiscard]] bool uses_mla() const { return kv_lora_rank > 0; }
};

/// A zoo id ("qwen3-30b-a3b") or a path to a model JSON. Throws twinstep::ParseError / Error.
/// A string containing '/' or ending in ".json" is a path; anything else is looked up in the zoo
/// (the source tree's models/zoo, compiled in as TWINSTEP_ZOO_DIR). Unknown ids list the zoo's ids.
[[nodiscard]] ModelSpec load_model(const std::string& id_or_path);

/// Parses a model JSON text; `source` names it in errors.
[[nodiscard]] ModelSpec model_from_json(const std::string& text, const std::string& source);

/// Ids of the models in the zoo, sorted.
[[nodiscard]] std::vector<std::string> zoo_ids();

/// Parameter count of the whole model (all experts), for 6*N*T and memory.
[[nodiscard]] double total_params(const ModelSpec& model);

/// Parameters of one transformer layer (all experts), excluding embeddings and the final norm.
[[nodiscard]] double layer_params(const ModelSpec& model, std::uint32_t layer);

/// Parameters that take part in matrix products per token in a dense model: every layer's linear weights and
/// the output layer; the input embedding table (a lookup) is excluded unless tied to the output layer.
[[nodiscard]] double matmul_params(const ModelSpec& model);

}  // namespace twinstep::models
