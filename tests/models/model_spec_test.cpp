// Model zoo: every model loads, parameter counts match the published totals, errors name the field / list the ids.
#include "models/model_spec.hpp"

#include "common/error.hpp"
#include "tests/catch.hpp"

using namespace twinstep;
using namespace twinstep::models;

TEST_CASE("models::zoo: parameter counts match the published totals", "[zoo]") {
  // Published totals: Llama 3 model cards, GPT-3 paper, Qwen/Mixtral/DeepSeek model cards (DeepSeek-V3: 671B main
  // model + the MTP module, 685B on Hugging Face), the Nemotron-4 340B report (341B).
  const std::vector<std::pair<const char*, double>> expected = {
      {"llama3-8b", 8.03e9},      {"llama3-70b", 70.55e9},    {"llama3.1-405b", 405.85e9},
      {"gpt3-175b", 175.0e9},     {"qwen3-30b-a3b", 30.53e9}, {"qwen3-next-80b-a3b", 80.0e9},
      {"deepseek-v3", 684.5e9},   {"mixtral-8x7b", 46.7e9},   {"qwen3-235b-a22b", 235.1e9},
      {"nemotron4-340b", 341.0e9}};
  for (const auto& [id, total] : expected) {
    INFO(id);
    ModelSpec m = load_model(id);
    CHECK(m.name == id);
    CHECK_FALSE(m.source.empty());
    CHECK(std::abs(total_params(m) - total) / total < 0.015);
  }
  CHECK(zoo_ids().size() == 10);
}

TEST_CASE("models::zoo: MoE layer pattern and hybrid attention", "[zoo]") {
  ModelSpec ds = load_model("deepseek-v3");
  CHECK_FALSE(ds.is_moe_layer(2));
  CHECK(ds.is_moe_layer(3));
  CHECK(ds.uses_mla());
  ModelSpec qn = load_model("qwen3-next-80b-a3b");
  CHECK(qn.is_linear_attention_layer(0));
  CHECK_FALSE(qn.is_linear_attention_layer(3));
  int full = 0;
  for (std::uint32_t i = 0; i < qn.num_layers; ++i) full += qn.is_linear_attention_layer(i) ? 0 : 1;
  CHECK(full == 12);
}

TEST_CASE("models::zoo: unknown ids list the zoo, bad files name the field", "[zoo]") {
  CHECK_THROWS_WITH(load_model("llama4"),
                    twinstep_contains("unknown model \"llama4\"") && twinstep_contains("llama3-70b"));
  CHECK_THROWS_WITH(model_from_json(R"({"num_layers": 2, "hidden_size": 8, "num_attention_heads": 2,
      "ffn_hidden_size": 16, "vocab_size": 10, "hiden": 3})",
                                    "m.json"),
                    twinstep_contains("m.json: /hiden: unknown field \"hiden\" (accepted here: ") &&
                        twinstep_contains("hidden_size"));
  CHECK_THROWS_WITH(
      model_from_json(R"({"num_layer": 2, "hidden_size": 8, "num_attention_heads": 2,
      "ffn_hidden_size": 16, "vocab_size": 10})",
                      "m.json"),
      twinstep_contains("m.json: /num_layer: unknown field") && twinstep_contains("did you mean \"num_layers\"?"));
  CHECK_THROWS_WITH(model_from_json(R"({"num_layers": 2, "hidden_size": 8, "num_attention_heads": 3,
      "num_query_groups": 2, "ffn_hidden_size": 16, "vocab_size": 10})",
                                    "m.json"),
                    twinstep_contains("/num_query_groups"));
  CHECK_THROWS_AS(model_from_json("{", "m.json"), ParseError);
  // A published recipe default must name its source.
  CHECK_THROWS_WITH(model_from_json(R"({"num_layers": 2, "hidden_size": 8, "num_attention_heads": 2,
      "ffn_hidden_size": 16, "vocab_size": 10, "recipe_grad_reduce_in_fp32": false})",
                                    "m.json"),
                    twinstep_contains("m.json: /recipe_source"));
  // A path loads the same file as the id.
  ModelSpec by_path = load_model(std::string(TWINSTEP_SOURCE_DIR) + "/models/zoo/llama3-8b.json");
  CHECK(by_path.hidden_size == 4096);
  CHECK(by_path.num_query_groups == 8);
}
