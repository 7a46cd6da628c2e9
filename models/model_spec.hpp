// Model architecture as read from the zoo (models/zoo/*.json) or a user's JSON.
// The models owner completes this struct; fields keep Megatron / Hugging Face names where they exist.
#pragma once

#include <cstdint>
#include <string>

namespace twinstep::models {

struct ModelSpec {
  std::string name;    ///< Zoo id, e.g. "llama3-70b".
  std::string source;  ///< Where the figures come from (HF config, paper, Megatron example script).
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
};

/// A zoo id ("qwen3-30b-a3b") or a path to a model JSON. Throws twinstep::ParseError / Error.
[[nodiscard]] ModelSpec load_model(const std::string& id_or_path);

/// Parameter count of the whole model (all experts), for 6*N*T and memory.
[[nodiscard]] double total_params(const ModelSpec& model);

}  // namespace twinstep::models
