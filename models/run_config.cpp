// Run config JSON (Megatron field names, unknown fields rejected by name) and overlap variants
// ("none", "all", "dp+tp", ...) mapped onto the Megatron knobs.
#include "models/run_config.hpp"

#include <functional>
#include <nlohmann/json.hpp>

#include "common/enum_names.hpp"
#include "common/error.hpp"
#include "common/io.hpp"
#include "common/json.hpp"
#include "schedule/json.hpp"

namespace twinstep::models {
namespace {

using Json = nlohmann::json;

constexpr NameTable<RecomputeGranularity, 3> kRecomputeGranularities{{{"none", RecomputeGranularity::kNone},
                                                                      {"selective", RecomputeGranularity::kSelective},
                                                                      {"full", RecomputeGranularity::kFull}}};
constexpr NameTable<RecomputeMethod, 2> kRecomputeMethods{
    {{"uniform", RecomputeMethod::kUniform}, {"block", RecomputeMethod::kBlock}}};
constexpr NameTable<CpCommType, 4> kCpCommTypes{{{"p2p", CpCommType::kP2p},
                                                 {"all_gather", CpCommType::kAllGather},
                                                 {"a2a", CpCommType::kA2a},
                                                 {"a2a+p2p", CpCommType::kA2aP2p}}};
constexpr NameTable<TokenDispatcher, 3> kTokenDispatchers{{{"alltoall", TokenDispatcher::kAllToAll},
                                                           {"allgather", TokenDispatcher::kAllGather},
                                                           {"flex", TokenDispatcher::kFlex}}};
constexpr NameTable<schedule::DType, 4> kOptimizerStateDtypes{{{"fp32", schedule::DType::kFP32},
                                                               {"fp16", schedule::DType::kFP16},
                                                               {"bf16", schedule::DType::kBF16},
                                                               {"fp8", schedule::DType::kFP8}}};
constexpr NameTable<OverlapMode, 7> kOverlapModes{{{"dp", OverlapMode::kDp},
                                                   {"tp", OverlapMode::kTp},
                                                   {"pp", OverlapMode::kPp},
                                                   {"cp", OverlapMode::kCp},
                                                   {"ep", OverlapMode::kEp},
                                                   {"delay_wgrad", OverlapMode::kDelayWgrad},
                                                   {"shared_expert", OverlapMode::kSharedExpert}}};
constexpr std::string_view kOverlapNone = "none", kOverlapAll = "all";
constexpr NameTable<Fp8Recipe, 2> kFp8Recipes{
    {{"delayed", Fp8Recipe::kDelayed}, {"tensorwise", Fp8Recipe::kTensorwise}}};
constexpr NameTable<CrossEntropyFusionImpl, 2> kCrossEntropyFusionImpls{
    {{"native", CrossEntropyFusionImpl::kNative}, {"te", CrossEntropyFusionImpl::kTe}}};

/// One JSON field bound to a RunConfig member: how to read it and how to write it.
struct Field {
  const char* name;
  std::function<void(RunConfig&, const Json&)> read;
  std::function<Json(const RunConfig&)> write;
};

template <typename T>
Field plain(const char* name, T RunConfig::*member) {
  return Field{name, [member](RunConfig& c, const Json& j) { c.*member = j.get<T>(); },
               [member](const RunConfig& c) { return Json(c.*member); }};
}

/// A mode field: read with its parse_X, written with to_string.
template <typename E>
Field mode(const char* name, E RunConfig::*member, E (*parse)(std::string_view, std::string_view)) {
  return Field{name,
               [name, member, parse](RunConfig& c, const Json& j) { c.*member = parse(j.get<std::string>(), name); },
               [member](const RunConfig& c) { return Json(to_string(c.*member)); }};
}

/// An optimizer state dtype field: read with parse_optimizer_state_dtype, written with its spelling.
Field optimizer_dtype(const char* name, schedule::DType RunConfig::*member) {
  return Field{name,
               [name, member](RunConfig& c, const Json& j) {
                 c.*member = parse_optimizer_state_dtype(j.get<std::string>(), name);
               },
               [member](const RunConfig& c) { return Json(name_of(kOptimizerStateDtypes, c.*member)); }};
}

template <typename T>
Field host_field(const char* name, T HostCosts::*member) {
  return Field{name, [member](RunConfig& c, const Json& j) { c.host.*member = j.get<T>(); },
               [member](const RunConfig& c) { return Json(c.host.*member); }};
}

const std::vector<Field>& fields() {
  static const std::vector<Field> kFields = {
      plain("world_size", &RunConfig::world_size),
      plain("tensor_model_parallel_size", &RunConfig::tensor_model_parallel_size),
      plain("pipeline_model_parallel_size", &RunConfig::pipeline_model_parallel_size),
      plain("virtual_pipeline_model_parallel_size", &RunConfig::virtual_pipeline_model_parallel_size),
      plain("context_parallel_size", &RunConfig::context_parallel_size),
      plain("expert_model_parallel_size", &RunConfig::expert_model_parallel_size),
      plain("expert_tensor_parallel_size", &RunConfig::expert_tensor_parallel_size),
      plain("data_parallel_size", &RunConfig::data_parallel_size),
      plain("sequence_parallel", &RunConfig::sequence_parallel),
      plain("decoder_first_pipeline_num_layers", &RunConfig::decoder_first_pipeline_num_layers),
      plain("decoder_last_pipeline_num_layers", &RunConfig::decoder_last_pipeline_num_layers),
      plain("account_for_embedding_in_pipeline_split", &RunConfig::account_for_embedding_in_pipeline_split),
      plain("account_for_loss_in_pipeline_split", &RunConfig::account_for_loss_in_pipeline_split),
      plain("micro_batch_size", &RunConfig::micro_batch_size),
      plain("global_batch_size", &RunConfig::global_batch_size),
      plain("seq_length", &RunConfig::seq_length),
      Field{"dtype", [](RunConfig& c, const Json& j) { c.dtype = schedule::parse_dtype(j.get<std::string>()); },
            [](const RunConfig& c) { return Json(schedule::dtype_name(c.dtype)); }},
      mode("fp8_recipe", &RunConfig::fp8_recipe, parse_fp8_recipe),
      plain("fp8_amax_history_len", &RunConfig::fp8_amax_history_len),
      plain("fp8_param_gather", &RunConfig::fp8_param_gather),
      plain("grad_reduce_in_fp32", &RunConfig::grad_reduce_in_fp32),
      plain("gradient_accumulation_fusion", &RunConfig::gradient_accumulation_fusion),
      plain("cross_entropy_loss_fusion", &RunConfig::cross_entropy_loss_fusion),
      mode("cross_entropy_fusion_impl", &RunConfig::cross_entropy_fusion_impl, parse_cross_entropy_fusion_impl),
      optimizer_dtype("main_params_dtype", &RunConfig::main_params_dtype),
      optimizer_dtype("exp_avg_dtype", &RunConfig::exp_avg_dtype),
      optimizer_dtype("exp_avg_sq_dtype", &RunConfig::exp_avg_sq_dtype),
      mode("recompute_granularity", &RunConfig::recompute_granularity, parse_recompute_granularity),
      mode("recompute_method", &RunConfig::recompute_method, parse_recompute_method),
      plain("recompute_num_layers", &RunConfig::recompute_num_layers),
      plain("use_distributed_optimizer", &RunConfig::use_distributed_optimizer),
      plain("overlap_grad_reduce", &RunConfig::overlap_grad_reduce),
      plain("overlap_param_gather", &RunConfig::overlap_param_gather),
      plain("bucket_size", &RunConfig::bucket_size),
      plain("tp_comm_overlap", &RunConfig::tp_comm_overlap),
      mode("tp_comm_overlap_ring_exchange_transport", &RunConfig::tp_comm_overlap_ring_exchange_transport,
           schedule::parse_transport),
      plain("tp_comm_overlap_ring_exchange_num_sm", &RunConfig::tp_comm_overlap_ring_exchange_num_sm),
      plain("overlap_p2p_comm", &RunConfig::overlap_p2p_comm),
      plain("batch_p2p_comm", &RunConfig::batch_p2p_comm),
      mode("cp_comm_type", &RunConfig::cp_comm_type, parse_cp_comm_type),
      plain("cuda_device_max_connections", &RunConfig::cuda_device_max_connections),
      plain("batch_p2p_sync", &RunConfig::batch_p2p_sync),
      plain("microbatch_group_size_per_vp_stage", &RunConfig::microbatch_group_size_per_vp_stage),
      plain("align_grad_reduce", &RunConfig::align_grad_reduce),
      plain("hierarchical_context_parallel_sizes", &RunConfig::hierarchical_context_parallel_sizes),
      plain("gpu_compute_capability_major", &RunConfig::gpu_compute_capability_major),
      mode("moe_token_dispatcher_type", &RunConfig::moe_token_dispatcher_type, parse_token_dispatcher),
      plain("overlap_moe_expert_parallel_comm", &RunConfig::overlap_moe_expert_parallel_comm),
      plain("delay_wgrad_compute", &RunConfig::delay_wgrad_compute),
      plain("moe_shared_expert_overlap", &RunConfig::moe_shared_expert_overlap),
      plain("moe_routing_skew", &RunConfig::moe_routing_skew),
      plain("moe_router_fusion", &RunConfig::moe_router_fusion),
      plain("moe_permute_fusion", &RunConfig::moe_permute_fusion),
      plain("moe_flex_num_sms", &RunConfig::moe_flex_num_sms),
      plain("gpu_memory_bytes", &RunConfig::gpu_memory_bytes),
  };
  return kFields;
}

const std::vector<Field>& host_fields() {
  static const std::vector<Field> kFields = {
      host_field("per_module_call_ns", &HostCosts::per_module_call_ns),
      host_field("per_kernel_launch_ns", &HostCosts::per_kernel_launch_ns),
      host_field("event_record_ns", &HostCosts::event_record_ns),
      host_field("optimizer_step_ns", &HostCosts::optimizer_step_ns),
      host_field("per_autograd_node_ns", &HostCosts::per_autograd_node_ns),
      host_field("per_kernel_backward_ns", &HostCosts::per_kernel_backward_ns),
      host_field("backward_call_ns", &HostCosts::backward_call_ns),
      host_field("host_sync_ns", &HostCosts::host_sync_ns),
      host_field("optimizer_per_param_ns", &HostCosts::optimizer_per_param_ns),
      host_field("optimizer_per_group_ns", &HostCosts::optimizer_per_group_ns),
      host_field("moe_router_ns", &HostCosts::moe_router_ns),
      host_field("moe_preprocess_ns", &HostCosts::moe_preprocess_ns),
      host_field("moe_permute_ns", &HostCosts::moe_permute_ns),
      host_field("moe_unpermute_ns", &HostCosts::moe_unpermute_ns),
      host_field("ep_node_ns", &HostCosts::ep_node_ns),
      host_field("ep_backward_call_ns", &HostCosts::ep_backward_call_ns),
  };
  return kFields;
}

void read_fields(const std::vector<Field>& table, const Json& obj, RunConfig& c, const std::string& source,
                 const std::string& prefix) {
  for (auto it = obj.begin(); it != obj.end(); ++it) {
    const std::string pointer = prefix + "/" + it.key();
    if (prefix.empty() && it.key() == "host") {
      if (!it->is_object()) throw ParseError(source, pointer, "must be an object of host costs in ns");
      read_fields(host_fields(), *it, c, source, pointer);
      continue;
    }
    const Field* found = nullptr;
    for (const auto& f : table) {
      if (it.key() == f.name) found = &f;
    }
    if (found == nullptr) {
      std::vector<std::string> accepted;  // Megatron's names
      for (const auto& f : table) accepted.emplace_back(f.name);
      if (prefix.empty()) accepted.emplace_back("host");
      throw ParseError(source, pointer, unknown_field_message(it.key(), accepted));
    }
    try {
      reading_names(source, pointer, [&] { found->read(c, *it); });
    } catch (const ParseError&) {
      throw;  // an unknown spelling, already naming the file and the field
    } catch (const Json::exception& e) {
      throw ParseError(source, pointer,
                       std::string("wrong type for \"") + found->name + "\": " + json_error_message(e));
    } catch (const Error& e) {
      throw ParseError(source, pointer, e.what());
    }
  }
}

}  // namespace

RecomputeGranularity parse_recompute_granularity(std::string_view text, std::string_view field) {
  return parse_name(kRecomputeGranularities, text, field);
}
RecomputeMethod parse_recompute_method(std::string_view text, std::string_view field) {
  return parse_name(kRecomputeMethods, text, field);
}
CpCommType parse_cp_comm_type(std::string_view text, std::string_view field) {
  return parse_name(kCpCommTypes, text, field);
}
TokenDispatcher parse_token_dispatcher(std::string_view text, std::string_view field) {
  return parse_name(kTokenDispatchers, text, field);
}
std::string to_string(RecomputeGranularity granularity) { return name_of(kRecomputeGranularities, granularity); }
std::string to_string(RecomputeMethod method) { return name_of(kRecomputeMethods, method); }
std::string to_string(CpCommType type) { return name_of(kCpCommTypes, type); }
std::string to_string(TokenDispatcher dispatcher) { return name_of(kTokenDispatchers, dispatcher); }
Fp8Recipe parse_fp8_recipe(std::string_view text, std::string_view field) {
  return parse_name(kFp8Recipes, text, field);
}
std::string to_string(Fp8Recipe recipe) { return name_of(kFp8Recipes, recipe); }
CrossEntropyFusionImpl parse_cross_entropy_fusion_impl(std::string_view text, std::string_view field) {
  return parse_name(kCrossEntropyFusionImpls, text, field);
}
std::string to_string(CrossEntropyFusionImpl impl) { return name_of(kCrossEntropyFusionImpls, impl); }
schedule::DType parse_optimizer_state_dtype(std::string_view text, std::string_view field) {
  return parse_name(kOptimizerStateDtypes, text, field);
}

RunConfig run_config_from_json(const std::string& text, const std::string& source, const RunConfig& base,
                               std::set<std::string>* present) {
  const Json j = parse_json(text, source);
  if (!j.is_object()) throw ParseError(source, "", "a run config must be a JSON object");
  RunConfig c = base;
  read_fields(fields(), j, c, source, "");
  if (present != nullptr) {
    for (auto it = j.begin(); it != j.end(); ++it) present->insert(it.key());
  }
  return c;
}

RunConfig read_run_config(const std::string& path, std::set<std::string>* present) {
  return run_config_from_json(read_file(path), path, RunConfig{}, present);
}

std::string run_config_to_json(const RunConfig& config) {
  Json j = Json::object();
  for (const auto& f : fields()) j[f.name] = f.write(config);
  Json h = Json::object();
  for (const auto& f : host_fields()) h[f.name] = f.write(config);
  j["host"] = h;
  return j.dump(2) + "\n";
}

std::uint32_t derived_dp(const RunConfig& c) {
  const std::uint64_t model = static_cast<std::uint64_t>(c.tensor_model_parallel_size) *
                              c.pipeline_model_parallel_size * c.context_parallel_size;
  if (model == 0) throw Error("tensor/pipeline/context parallel sizes must be >= 1");
  if (c.world_size == 0 || c.world_size % model != 0) {
    throw Error("world_size " + std::to_string(c.world_size) + " is not divisible by tensor x pipeline x context " +
                "parallel size " + std::to_string(model) + "; change the GPU count or the parallel sizes");
  }
  const auto dp = static_cast<std::uint32_t>(c.world_size / model);
  if (c.data_parallel_size != 0 && c.data_parallel_size != dp) {
    throw Error("data_parallel_size " + std::to_string(c.data_parallel_size) + " disagrees with world / (tp*pp*cp) = " +
                std::to_string(dp) + "; leave it unset (0) or fix the GPU count");
  }
  return dp;
}

OverlapVariant parse_overlap_variant(std::string_view text, std::string_view field) {
  OverlapVariant v;
  if (text == kOverlapAll) {
    v.all = true;
  } else if (text != kOverlapNone) {
    std::size_t start = 0;
    while (start <= text.size()) {
      std::size_t end = text.find('+', start);
      if (end == std::string_view::npos) end = text.size();
      const std::string_view mode = text.substr(start, end - start);
      const OverlapMode* m = find_name(kOverlapModes, mode);
      if (m == nullptr) {
        throw UnknownNameError(std::string(field),
                               "unknown overlap mode \"" + std::string(mode) + "\" in variant \"" + std::string(text) +
                                   "\" (use none, all, or +-joined modes from: " + spellings(kOverlapModes) + ")");
      }
      v.modes.push_back(*m);
      start = end + 1;
    }
  }
  return v;
}

std::string to_string(const OverlapVariant& variant) {
  if (variant.all) return std::string(kOverlapAll);
  if (variant.modes.empty()) return std::string(kOverlapNone);
  std::string out;
  for (const OverlapMode m : variant.modes) {
    if (!out.empty()) out += '+';
    out += name_of(kOverlapModes, m);
  }
  return out;
}

RunConfig apply_overlap_variant(const RunConfig& base, const OverlapVariant& variant) {
  bool dp = false, tp = false, pp = false, cp = false, ep = false, delay = false, shared = false;
  if (variant.all) {
    // shared_expert is left out: MCore rejects moe_shared_expert_overlap together with EP overlap.
    dp = tp = pp = cp = ep = delay = true;
  }
  for (const OverlapMode m : variant.modes) {
    switch (m) {
      case OverlapMode::kDp:
        dp = true;
        break;
      case OverlapMode::kTp:
        tp = true;
        break;
      case OverlapMode::kPp:
        pp = true;
        break;
      case OverlapMode::kCp:
        cp = true;
        break;
      case OverlapMode::kEp:
        ep = true;
        break;
      case OverlapMode::kDelayWgrad:
        delay = true;
        break;
      case OverlapMode::kSharedExpert:
        shared = true;
        break;
    }
  }
  RunConfig c = base;
  c.overlap_grad_reduce = dp;
  // overlap_param_gather needs the distributed optimizer (MLM args); without it "dp" means grad reduce only.
  c.overlap_param_gather = dp && base.use_distributed_optimizer;
  c.tp_comm_overlap = tp;
  c.overlap_p2p_comm = pp;
  // overlap_p2p_comm and batch_p2p_comm together is a ValueError in MCore, so P2P overlap un-batches the P2P ops; but
  // only where the overlap takes effect (the interleaved schedule). Without VPP, MLM forces overlap_p2p_comm off and
  // derives batch_p2p_comm = not overlap_p2p_comm, and Bridge sets batch_p2p_comm=True for p > 1, v = 1: batched P2P
  // (with its torch.cuda.synchronize) stays.
  if (pp && base.virtual_pipeline_model_parallel_size > 1) c.batch_p2p_comm = false;
  // CP: the p2p ring is the overlapped form; all_gather is its non-overlapped counterpart. The a2a types (a2a,
  // a2a+p2p) have no overlap toggle and are kept as configured.
  const bool a2a_type = base.cp_comm_type == CpCommType::kA2a || base.cp_comm_type == CpCommType::kA2aP2p;
  if (cp && !a2a_type)
    c.cp_comm_type = CpCommType::kP2p;
  else if (!cp && base.cp_comm_type == CpCommType::kP2p)
    c.cp_comm_type = CpCommType::kAllGather;
  c.overlap_moe_expert_parallel_comm = ep;
  c.delay_wgrad_compute = delay;
  c.moe_shared_expert_overlap = shared;
  return c;
}

bool moe_routing_call_ns(const HostCosts& host, const std::string& call, double experts, Nanos& ns) {
  const auto it = host.moe_routing_call_ns.find(call);
  if (it == host.moe_routing_call_ns.end() || it->second.empty()) return false;
  const auto& v = it->second;
  if (experts <= v.front().first) {
    ns = v.front().second;
  } else if (experts >= v.back().first) {
    ns = v.back().second;
  } else {
    std::size_t i = 1;
    while (v[i].first < experts) ++i;
    const double f = (experts - v[i - 1].first) / (v[i].first - v[i - 1].first);
    ns = v[i - 1].second + static_cast<Nanos>(f * static_cast<double>(v[i].second - v[i - 1].second));
  }
  return true;
}

}  // namespace twinstep::models
