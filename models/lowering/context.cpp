// The run context: gating, pipeline layout, parameters and DP buckets per (pipeline rank, chunk), and the
// schedule's streams. Rank-independent: computed once, then read by every rank's lowering.
#include "models/lowering/context.hpp"

#include "models/lowering/data_parallel.hpp"
#include "models/lowering/gating.hpp"
#include "models/lowering/pipeline_layout.hpp"

namespace twinstep::models::lowering {

Ctx build_ctx(const ModelSpec& model, const RunConfig& cfg, std::vector<std::string>& warnings) {
  Ctx x;
  x.model = &model;
  x.cfg = &cfg;
  x.k = gate(model, cfg, warnings);
  x.vs_layers = virtual_stage_layers(model, cfg);
  x.recompute_full = cfg.recompute_granularity == RecomputeGranularity::kFull;
  x.recompute_selective = cfg.recompute_granularity == RecomputeGranularity::kSelective;
  const Dims& k = x.k;
  x.params.resize(k.pp);
  x.buckets.resize(k.pp);
  for (std::uint32_t r = 0; r < k.pp; ++r) {
    for (std::uint32_t c = 0; c < k.vpp; ++c) {
      x.params[r].push_back(chunk_params(model, k, r, c, x.vs_layers[c * k.pp + r]));
      auto b = make_buckets(x.params[r][c], cfg, static_cast<std::uint64_t>(k.dp) * k.cp, r, c, false);
      if (k.moe) {  // the expert buffer comes after the dense one (MCore: one buffer per (dtype, is_expert))
        auto eb = make_buckets(x.params[r][c], cfg, k.expert_dp, r, c, true);
        b.insert(b.end(), eb.begin(), eb.end());
      }
      x.buckets[r].push_back(std::move(b));
    }
  }
  x.layer_param_names.resize(model.num_layers);
  for (std::uint32_t l = 0; l < model.num_layers; ++l) {
    std::vector<Param> ps;
    layer_params_of(model, k, l, ps);
    for (const auto& p : ps) x.layer_param_names[l].push_back(p.name);
  }
  return x;
}

void add_streams(Ctx& x, schedule::Schedule& s) {
  const Dims& k = x.k;
  const ModelSpec& model = *x.model;
  const std::uint32_t world = x.cfg->world_size;
  // Streams: compute, then the comm streams this layout uses (NCCL streams high priority: TORCH_NCCL_HIGH_PRIORITY=1).
  auto add_stream = [&](const std::string& name, int prio) {
    s.streams.push_back({name, prio});
    return static_cast<StreamId>(s.streams.size() - 1);
  };
  x.st.compute = add_stream("compute", 0);
  if (k.tp > 1) x.st.tp = add_stream("tp", -1);
  if (k.tp_overlap) {
    x.st.tp_send = add_stream("tp_send", -1);
    x.st.tp_recv = add_stream("tp_recv", -1);
  }
  if (k.cp > 1) {
    x.st.cp = add_stream("cp", -1);
    if (k.cp_type == CpCommType::kP2p || k.cp_type == CpCommType::kA2aP2p) x.st.cp_recv = add_stream("cp_recv", -1);
    if (k.cp_type == CpCommType::kA2aP2p) x.st.cp_a2a = add_stream("cp_a2a", -1);
  }
  const bool tied_pp = model.share_embeddings_and_output_weights && k.pp > 1;
  const bool need_dp_stream = static_cast<std::uint64_t>(k.dp) * k.cp > 1 || tied_pp || world > 1;
  if (need_dp_stream) x.st.dp = add_stream("dp", -1);
  if (k.moe) {
    x.st.ep = add_stream("ep", -1);
    if (k.etp * k.ep > 1) x.st.tp_ep = add_stream("tp_ep", -1);
    if (k.etp > 1) x.st.etp = add_stream("etp", -1);
    x.st.dtoh = add_stream("dtoh", 0);
    if (k.shared_overlap) x.st.shared = add_stream("shared_expert", 0);
  }
  if (k.pp > 1) {  // per peer direction, as PyTorch keeps one NCCL stream per P2P peer pair
    x.st.pp_send_next = add_stream("pp_send_next", -1);
    x.st.pp_recv_prev = add_stream("pp_recv_prev", -1);
    x.st.pp_send_prev = add_stream("pp_send_prev", -1);
    x.st.pp_recv_next = add_stream("pp_recv_next", -1);
  }
}

}  // namespace twinstep::models::lowering
