// Model zoo loading (JSON with ModelSpec's field names) and parameter counting per layer type
// (dense/MoE MLP, standard/MLA/gated-DeltaNet attention), used for memory, 6*N*T and DP buckets.
#include "models/model_spec.hpp"

#include <algorithm>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "common/error.hpp"
#include "common/io.hpp"
#include "common/json.hpp"

#ifndef TWINSTEP_ZOO_DIR
#error "TWINSTEP_ZOO_DIR must name the source tree's models/zoo folder (set by models/CMakeLists.txt)"
#endif

namespace twinstep::models {
namespace {

using Json = nlohmann::json;

template <typename T>
void read_field(const Json& j, const std::string& source, const char* key, T& out, bool& seen) {
  seen = false;
  auto it = j.find(key);
  if (it == j.end()) return;
  seen = true;
  try {
    out = it->get<T>();
  } catch (const Json::exception& e) {
    throw ParseError(source, std::string("/") + key, std::string("wrong type: ") + json_error_message(e));
  }
}

}  // namespace

ModelSpec model_from_json(const std::string& text, const std::string& source) {
  const Json j = parse_json(text, source);
  if (!j.is_object()) throw ParseError(source, "", "a model file must be a JSON object");
  ModelSpec m;
  std::vector<std::string> known;
  bool seen = false;
#define TWINSTEP_FIELD(name)                    \
  do {                                          \
    known.emplace_back(#name);                  \
    read_field(j, source, #name, m.name, seen); \
  } while (0)
  TWINSTEP_FIELD(name);
  TWINSTEP_FIELD(source);
  TWINSTEP_FIELD(num_layers);
  TWINSTEP_FIELD(hidden_size);
  TWINSTEP_FIELD(ffn_hidden_size);
  TWINSTEP_FIELD(num_attention_heads);
  TWINSTEP_FIELD(num_query_groups);
  TWINSTEP_FIELD(kv_channels);
  TWINSTEP_FIELD(vocab_size);
  TWINSTEP_FIELD(num_moe_experts);
  TWINSTEP_FIELD(moe_router_topk);
  TWINSTEP_FIELD(moe_ffn_hidden_size);
  TWINSTEP_FIELD(moe_shared_expert_intermediate_size);
  TWINSTEP_FIELD(moe_aux_loss_coeff);
  TWINSTEP_FIELD(normalization);
  TWINSTEP_FIELD(gated_linear_unit);
  TWINSTEP_FIELD(add_bias_linear);
  TWINSTEP_FIELD(add_qkv_bias);
  TWINSTEP_FIELD(qk_layernorm);
  TWINSTEP_FIELD(share_embeddings_and_output_weights);
  TWINSTEP_FIELD(position_embedding_type);
  TWINSTEP_FIELD(max_position_embeddings);
  TWINSTEP_FIELD(rotary_base);
  TWINSTEP_FIELD(make_vocab_size_divisible_by);
  TWINSTEP_FIELD(first_k_dense_replace);
  TWINSTEP_FIELD(moe_layer_freq);
  TWINSTEP_FIELD(moe_shared_expert_count);
  TWINSTEP_FIELD(moe_shared_expert_gate);
  TWINSTEP_FIELD(mtp_num_layers);
  TWINSTEP_FIELD(q_lora_rank);
  TWINSTEP_FIELD(kv_lora_rank);
  TWINSTEP_FIELD(qk_head_dim);
  TWINSTEP_FIELD(qk_pos_emb_head_dim);
  TWINSTEP_FIELD(v_head_dim);
  TWINSTEP_FIELD(full_attention_interval);
  TWINSTEP_FIELD(attention_output_gate);
  TWINSTEP_FIELD(linear_num_key_heads);
  TWINSTEP_FIELD(linear_num_value_heads);
  TWINSTEP_FIELD(linear_key_head_dim);
  TWINSTEP_FIELD(linear_value_head_dim);
  TWINSTEP_FIELD(linear_conv_kernel_dim);
  TWINSTEP_FIELD(recipe_source);
  TWINSTEP_FIELD(recipe_grad_reduce_in_fp32);
  m.has_recipe_grad_reduce_in_fp32 = seen;
  TWINSTEP_FIELD(recipe_moe_router_fusion);
  m.has_recipe_moe_router_fusion = seen;
  TWINSTEP_FIELD(recipe_moe_permute_fusion);
  m.has_recipe_moe_permute_fusion = seen;
#undef TWINSTEP_FIELD
  known.emplace_back("notes");  // free-text remarks (disagreements between sources)
  refuse_unknown_keys(j, source, "", known);
  auto require = [&](bool ok, const char* field, const char* what) {
    if (!ok) throw ParseError(source, std::string("/") + field, what);
  };
  require(!m.has_recipe_grad_reduce_in_fp32 || !m.recipe_source.empty(), "recipe_source",
          "must name the published config recipe_grad_reduce_in_fp32 comes from");
  require(!(m.has_recipe_moe_router_fusion || m.has_recipe_moe_permute_fusion) || !m.recipe_source.empty(),
          "recipe_source",
          "must name the published config recipe_moe_router_fusion / recipe_moe_permute_fusion come from");
  require(m.moe_aux_loss_coeff >= 0, "moe_aux_loss_coeff", "must be >= 0 (0: no load-balancing loss)");
  require(m.num_layers > 0, "num_layers", "must be > 0");
  require(m.hidden_size > 0, "hidden_size", "must be > 0");
  require(m.num_attention_heads > 0, "num_attention_heads", "must be > 0");
  if (m.num_query_groups == 0) m.num_query_groups = m.num_attention_heads;
  if (m.kv_channels == 0) m.kv_channels = static_cast<std::uint32_t>(m.hidden_size / m.num_attention_heads);
  require(m.num_attention_heads % m.num_query_groups == 0, "num_query_groups", "must divide num_attention_heads");
  require(m.vocab_size > 0, "vocab_size", "must be > 0");
  require(m.normalization == "RMSNorm" || m.normalization == "LayerNorm", "normalization",
          "must be \"RMSNorm\" or \"LayerNorm\"");
  require(m.position_embedding_type == "rope" || m.position_embedding_type == "learned_absolute" ||
              m.position_embedding_type == "none",
          "position_embedding_type", "must be \"rope\", \"learned_absolute\" or \"none\"");
  require(m.num_moe_experts > 0 || m.ffn_hidden_size > 0, "ffn_hidden_size", "must be > 0 for a dense model");
  if (m.num_moe_experts > 0) {
    require(m.moe_router_topk > 0 && m.moe_router_topk <= m.num_moe_experts, "moe_router_topk",
            "must be in [1, num_moe_experts]");
    require(m.moe_ffn_hidden_size > 0, "moe_ffn_hidden_size", "must be > 0 for an MoE model");
  }
  require(m.make_vocab_size_divisible_by > 0, "make_vocab_size_divisible_by", "must be > 0");
  return m;
}

std::vector<std::string> zoo_ids() {
  std::vector<std::string> ids;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(TWINSTEP_ZOO_DIR, ec)) {
    if (entry.path().extension() == ".json") ids.push_back(entry.path().stem().string());
  }
  std::sort(ids.begin(), ids.end());
  return ids;
}

ModelSpec load_model(const std::string& id_or_path) {
  const bool is_path = id_or_path.find('/') != std::string::npos ||
                       (id_or_path.size() > 5 && id_or_path.substr(id_or_path.size() - 5) == ".json");
  std::string path = id_or_path;
  if (!is_path) {
    path = std::string(TWINSTEP_ZOO_DIR) + "/" + id_or_path + ".json";
    if (!std::filesystem::exists(path)) {
      std::string list;
      for (const auto& id : zoo_ids()) list += (list.empty() ? "" : ", ") + id;
      throw Error("unknown model \"" + id_or_path + "\"; zoo ids: " + list + " (or pass a path to a model JSON)");
    }
  }
  ModelSpec m = model_from_json(read_file(path), path);
  if (m.name.empty()) m.name = std::filesystem::path(path).stem().string();
  return m;
}

namespace {

double norm_params(const ModelSpec& m, double width) { return m.normalization == "LayerNorm" ? 2 * width : width; }

double attention_params(const ModelSpec& m, std::uint32_t layer) {
  const double h = static_cast<double>(m.hidden_size);
  double p = norm_params(m, h);  // input layernorm
  if (m.is_linear_attention_layer(layer)) {
    // Gated DeltaNet: in_proj_qkvz, in_proj_ba, depthwise conv, A_log, dt_bias, gated norm, out_proj.
    const double nk = m.linear_num_key_heads, nv = m.linear_num_value_heads;
    const double dk = m.linear_key_head_dim, dv = m.linear_value_head_dim;
    const double conv_dim = 2 * nk * dk + nv * dv;
    p += h * (2 * nk * dk + 2 * nv * dv) + h * 2 * nv + conv_dim * m.linear_conv_kernel_dim + 2 * nv + dv + nv * dv * h;
    return p;
  }
  const double nq = m.num_attention_heads;
  if (m.uses_mla()) {
    const double qk = m.qk_head_dim, rope = m.qk_pos_emb_head_dim, v = m.v_head_dim;
    if (m.q_lora_rank > 0) {
      p += h * m.q_lora_rank + m.q_lora_rank + m.q_lora_rank * nq * (qk + rope);
    } else {
      p += h * nq * (qk + rope);
    }
    p += h * (m.kv_lora_rank + rope) + m.kv_lora_rank + m.kv_lora_rank * nq * (qk + v);
    p += nq * v * h;
    return p;
  }
  const double nkv = m.num_query_groups, d = m.kv_channels;
  const double q_out = nq * d * (m.attention_output_gate ? 2 : 1);
  p += h * (q_out + 2 * nkv * d) + nq * d * h;
  if (m.add_bias_linear || m.add_qkv_bias) p += q_out + 2 * nkv * d;
  if (m.add_bias_linear) p += h;
  if (m.qk_layernorm) p += 2 * d;
  return p;
}

double mlp_params(const ModelSpec& m, std::uint32_t layer) {
  const double h = static_cast<double>(m.hidden_size);
  const double glu = m.gated_linear_unit ? 3 : 2;
  double p = norm_params(m, h);  // pre-MLP layernorm
  if (!m.is_moe_layer(layer)) {
    const double f = static_cast<double>(m.ffn_hidden_size);
    p += glu * h * f;
    if (m.add_bias_linear) p += (m.gated_linear_unit ? 2 * f : f) + h;
    return p;
  }
  const double e = m.num_moe_experts, fe = static_cast<double>(m.moe_ffn_hidden_size);
  p += h * e;  // router
  p += e * glu * h * fe;
  p += m.moe_shared_expert_count * glu * h * static_cast<double>(m.moe_shared_expert_intermediate_size);
  if (m.moe_shared_expert_gate) p += h;
  return p;
}

}  // namespace

double layer_params(const ModelSpec& model, std::uint32_t layer) {
  return attention_params(model, layer) + mlp_params(model, layer);
}

double total_params(const ModelSpec& model) {
  const double h = static_cast<double>(model.hidden_size);
  const double v = static_cast<double>(model.vocab_size);
  double p = v * h;                                            // input embedding
  if (!model.share_embeddings_and_output_weights) p += v * h;  // output layer
  if (model.position_embedding_type == "learned_absolute") p += static_cast<double>(model.max_position_embeddings) * h;
  for (std::uint32_t i = 0; i < model.num_layers; ++i) p += layer_params(model, i);
  p += norm_params(model, h);  // final norm
  // MTP module: enorm, hnorm, eh_proj [2h, h], one transformer layer (as the last layer), its final norm;
  // embedding and output head are shared with the main model.
  for (std::uint32_t i = 0; i < model.mtp_num_layers; ++i) {
    p += 3 * norm_params(model, h) + 2 * h * h + layer_params(model, model.num_layers - 1);
  }
  return p;
}

double matmul_params(const ModelSpec& model) {
  const double h = static_cast<double>(model.hidden_size);
  double p = static_cast<double>(model.vocab_size) * h;  // output layer (tied or not)
  for (std::uint32_t i = 0; i < model.num_layers; ++i) {
    p += layer_params(model, i) - 2 * norm_params(model, h);  // norms are elementwise
    if (model.qk_layernorm) p -= 2.0 * model.kv_channels;
  }
  return p;
}

}  // namespace twinstep::models
